//! After the seed incident: recover, open an incident, and send every
//! affected person exactly one email with their own working token.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{
    Lifeboat, MatrixUser, TestDatabase, TestSmtp, TestSynapse, eventually, federation_pair, free_port, lease_held,
    unique,
};

const POSTMORTEM: &str =
    "# What happened\n\nOur database was **lost** during maintenance.\n\nRegister again with your token.\n";

/// lifeboat's own account is `bot`, with its token in `[bot]`.
fn sending_as(lifeboat: &Lifeboat, bot: &crate::harness::synapse::Registered) {
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let bot_section = format!("[bot]\nuser_id = \"{}\"\naccess_token = \"{}\"\n", bot.user_id, bot.access_token);
    lifeboat.write_config(&format!("{config}\n{bot_section}"));
}

fn lifeboat_with_mail(synapse: &TestSynapse, registry: &TestDatabase, smtp: &TestSmtp) -> Lifeboat {
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\nregistration_shared_secret = \"{}\"\n\
         retries = 1\ntimeout = \"10s\"\n\n[registry]\nurl = \"{}\"\n\n[email]\nsmtp_url = \"{}\"\n\
         from = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n[web]\npublic_url = \"https://lifeboat.example.org\"\n",
        synapse.url,
        synapse.server_name,
        synapse.admin_token(),
        synapse.shared_secret,
        registry.url(),
        smtp.smtp_url()
    ));
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    lifeboat
}

/// People with one email each (the last one with none), synced into the
/// registry, then the seed incident as the issue tells it: check → loss,
/// recover, incident open (which syncs first, so no sync is run here).
/// Returns the incident id and the people's localparts.
async fn incident_after_wipe(synapse: &TestSynapse, lifeboat: &Lifeboat, people: usize) -> (String, Vec<String>) {
    let names: Vec<String> = (0..people).map(|n| unique(&format!("p{n}"))).collect();
    for (n, name) in names.iter().enumerate() {
        let email = format!("{name}@example.org");
        let emails: Vec<&str> = if n + 1 == people { vec![] } else { vec![&email] };
        synapse.create_user(name, &emails).await;
    }
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    synapse.wipe();
    assert_eq!(lifeboat.run(&["check"]).await.code, 3);
    let recover = lifeboat.run(&["recover"]).await;
    assert_eq!(recover.code, 0, "{recover:?}");
    assert!(recover.stdout.contains("re-created @lifeboat:"), "{recover:?}");

    let open = lifeboat
        .run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md", "--json"])
        .await;
    assert_eq!(open.code, 0, "{open:?}");
    assert!(!open.stderr.contains("note:"), "synced first, nothing to note: {open:?}");
    (open.json()["id"].to_string(), names)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_opened_while_synapse_is_down_says_so_and_uses_the_last_sync() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let name = unique("ann");
    synapse.create_user(&name, &[&format!("{name}@example.org")]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "marks Ann and the old admin missing");
    synapse.stop();

    let open = lifeboat
        .run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md", "--json"])
        .await;
    assert_eq!(open.code, 0, "{open:?}");
    assert!(open.stderr.contains("note: could not sync before opening"), "{open:?}");
    assert!(open.stderr.contains("the last complete sync"), "{open:?}");
    assert_eq!(open.json()["affected"], 2, "Ann and the old admin, as the last sync found: {open:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_wipe_incident_open_recovers_by_itself_and_even_for_everyone_knows_who_is_lost() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let name = unique("ann");
    let address = format!("{name}@example.org");
    synapse.create_user(&name, &[&address]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();

    // No `recover`, no `sync`: opening does both, for `all` as for `missing`.
    let open = open_for_everyone(&lifeboat, "Database lost").await;
    assert_eq!(open.code, 0, "{open:?}");
    assert!(open.stderr.contains("recovering lifeboat's account through the shared secret"), "{open:?}");
    let id = open.json()["id"].to_string();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");

    let mails = smtp.messages_to(&address);
    assert_eq!(mails.len(), 1, "{notify:?}");
    let text = mails[0].text.as_deref().unwrap_or("");
    assert!(!text.contains("still works"), "her account is gone, and her notice knows it: {text}");
    assert!(synapse.token_is_valid(&token_in(text)).await, "with a token that works");
}

/// `incident open --affected all --json` with the postmortem every test here writes.
async fn open_for_everyone(lifeboat: &Lifeboat, title: &str) -> crate::harness::cli::Run {
    let args = ["incident", "open", "--title", title, "--postmortem", "postmortem.md", "--affected", "all", "--json"];
    lifeboat.run(&args).await
}

fn token_in(text: &str) -> String {
    let line = text.lines().find(|line| line.contains("registration token: ")).expect("the token is in the email");
    line.split_whitespace().last().unwrap().trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_seed_incident_each_contact_gets_one_email_with_a_working_token() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 4).await;

    let dry = lifeboat.run(&["notify", &id, "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("3 emails to 3 people"), "{dry:?}");
    assert!(
        dry.stdout.contains("2 affected people have no email contact"),
        "the last person and the old admin: {dry:?}"
    );
    assert!(dry.stdout.contains("Unreachable by any channel: 2 affected people."), "{dry:?}");
    assert!(dry.stdout.contains("Our database was **lost**"), "a rendered sample: {dry:?}");
    // Its links are shown, but signed with nothing that works.
    assert!(dry.stdout.contains("/claim?") && dry.stdout.contains("/unsubscribe?"), "{dry:?}");
    assert_eq!(dry.stdout.matches("sig=SAMPLE-not-valid").count(), 2, "{dry:?}");
    assert!(smtp.messages().is_empty(), "a dry run sends nothing");
    let tokens = lifeboat.run(&["tokens", "list", "--json"]).await.json();
    assert_eq!(tokens, serde_json::json!([]), "a dry run records no token");
    synapse.register_admin("checker");
    assert!(synapse.registration_tokens().await.is_empty(), "a dry run creates no token in Synapse");
    let shown = lifeboat.run(&["incident", "show", &id, "--json"]).await.json();
    assert_eq!(shown["deliveries"]["pending"], 0, "a dry run plans no delivery");
    let dry = lifeboat.run(&["notify", &id, "--dry-run", "--json"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let (plan, sample) = (&dry.json()["plan"], &dry.json()["sample"]);
    assert_eq!((&plan["emails"], &plan["people_with_email"], &plan["unreachable"]), (&3.into(), &3.into(), &2.into()));
    assert!(sample["text"].as_str().unwrap().contains("sig=SAMPLE-not-valid"), "{dry:?}");
    assert_eq!(dry.json()["sent"], serde_json::Value::Null, "{dry:?}");

    let refused = lifeboat.run(&["notify", &id]).await;
    assert_eq!(refused.code, 2, "without --yes and without a terminal it refuses: {refused:?}");
    assert!(refused.stderr.contains("pass --yes"), "{refused:?}");
    let refused = lifeboat.run(&["notify", &id, "--json"]).await;
    assert_eq!(refused.code, 2, "JSON leaves no room for the question: {refused:?}");
    assert!(refused.stderr.contains("--json needs --yes or --dry-run"), "{refused:?}");

    let notify = lifeboat.run(&["notify", &id, "--yes", "--json"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    let sent = &notify.json()["sent"];
    assert_eq!((&sent["deliveries"]["sent"], &sent["deliveries"]["failed"]), (&3.into(), &0.into()), "{notify:?}");
    assert_eq!(sent["tokens_created"], notify.json()["plan"]["tokens_to_create"], "{notify:?}");

    let mails = smtp.messages();
    assert_eq!(mails.len(), 3);
    let link_key = {
        let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
        store.generated_secret(lifeboat::links::LINK_KEY).await.unwrap()
    };
    let mut tokens_by_person = HashMap::new();
    for name in &names[..3] {
        let to_them = smtp.messages_to(&format!("{name}@example.org"));
        assert_eq!(to_them.len(), 1, "exactly one email to {name}");
        let mail = &to_them[0];
        assert!(
            mail.text.as_deref().unwrap_or("").contains("Our database was **lost**"),
            "the postmortem as written: {:?}",
            mail.text
        );
        assert!(
            mail.html.as_deref().unwrap_or("").contains("<strong>lost</strong>"),
            "the postmortem rendered: {:?}",
            mail.html
        );
        assert!(
            mail.list_unsubscribe
                .as_deref()
                .unwrap_or("")
                .contains("https://lifeboat.example.org/unsubscribe?contact=")
        );
        assert_eq!(mail.list_unsubscribe_post.as_deref(), Some("List-Unsubscribe=One-Click"));
        // Signed for this contact and its address, as the page checks it.
        let unsubscribe = url::Url::parse(mail.list_unsubscribe.as_deref().unwrap().trim_matches(['<', '>'])).unwrap();
        let query: HashMap<String, String> = unsubscribe.query_pairs().into_owned().collect();
        let (contact, sig) = (query["contact"].parse().unwrap(), &query["sig"]);
        let address = format!("{name}@example.org");
        assert!(lifeboat::links::verify_unsubscribe(&link_key, contact, &address, sig), "{unsubscribe}");
        assert!(mail.message_id.as_deref().unwrap_or("").contains(&format!("incident-{id}.delivery-")));
        let token = token_in(mail.text.as_deref().unwrap_or(""));
        assert!(mail.html.as_deref().unwrap_or("").contains(&token));
        assert!(synapse.token_is_valid(&token).await, "Synapse accepts {name}'s token");
        tokens_by_person.insert(name.clone(), token);
    }
    let distinct: std::collections::HashSet<&String> = tokens_by_person.values().collect();
    assert_eq!(distinct.len(), 3, "each person has their own token");

    // A person's old ID is held for them, out of any token's reach; their
    // token registers a new name, once.
    let (status, body) = synapse.register_with_token(&names[0], &tokens_by_person[&names[0]]).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "the held ID: {body}");
    let (status, body) = synapse.register_with_token(&unique("new-name"), &tokens_by_person[&names[0]]).await;
    assert_eq!(status, 200, "registration of a new name with the mailed token succeeds: {body}");
    assert!(!synapse.token_is_valid(&tokens_by_person[&names[0]]).await, "single use");

    let again = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(smtp.messages().len(), 3, "a second notify sends nothing new");

    let shown = lifeboat.run(&["incident", "show", &id, "--json"]).await.json();
    assert_eq!(
        (shown["affected"].as_i64(), shown["reachable_by_email"].as_i64()),
        (Some(5), Some(3)),
        "four people and the old admin"
    );
    assert_eq!(shown["deliveries"]["sent"], 3);

    // Never resolved on a guess: without a terminal to ask on, only --yes does.
    let unasked = lifeboat.run(&["incident", "resolve", &id]).await;
    assert_eq!(unasked.code, 2, "{unasked:?}");
    assert!(unasked.stderr.contains("pass --yes to resolve"), "{unasked:?}");
    assert!(synapse.token_is_valid(&tokens_by_person[&names[1]]).await, "nothing was resolved");
    let resolve = lifeboat.run(&["incident", "resolve", &id, "--yes"]).await;
    assert_eq!(resolve.code, 0, "{resolve:?}");
    assert!(resolve.stdout.contains("deleted 4 unused registration tokens in Synapse; 1 had been used"), "{resolve:?}");
    assert!(!synapse.token_is_valid(&tokens_by_person[&names[1]]).await, "unused tokens are deleted");

    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let actions: Vec<String> = client.audit_log(100).await.unwrap().into_iter().map(|entry| entry.action).collect();
    for action in ["recover", "incident.open", "notify", "incident.resolve"] {
        assert!(actions.iter().any(|done| done == action), "{action} is audited: {actions:?}");
    }
}

/// One contact opts out before the notices are planned, another after
/// (while the mail server defers them): neither gets anything.
#[tokio::test(flavor = "multi_thread")]
async fn opted_out_contacts_get_nothing() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(Some(0));
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 4).await;
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let opt_out = |name: &str| {
        let address = format!("{name}@example.org");
        let pool = client.pool().clone();
        async move {
            sqlx::query("UPDATE contacts SET opted_out_at = 1 WHERE address = $1")
                .bind(&address)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    opt_out(&names[0]).await;
    let deferred = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(deferred.code, 1, "the sink deferred every notice: {deferred:?}");
    opt_out(&names[1]).await;

    smtp.heal();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    for name in &names[..2] {
        assert!(smtp.messages_to(&format!("{name}@example.org")).is_empty(), "{name} opted out");
    }
    assert_eq!(smtp.messages().len(), 1, "only the one who did not opt out");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_smtp_fails_part_way_a_second_run_completes_with_one_email_each() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::postgres().await;
    let smtp = TestSmtp::start(Some(2));
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 6).await;

    let first = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(first.code, 1, "some notices could not be sent: {first:?}");
    assert!(first.stderr.contains("run `lifeboat notify"), "{first:?}");
    assert_eq!(smtp.messages().len(), 2);

    smtp.heal();
    let second = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(second.code, 0, "{second:?}");
    for name in &names[..5] {
        assert_eq!(smtp.messages_to(&format!("{name}@example.org")).len(), 1, "exactly one email to {name}");
    }
    registry.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_refused_for_good_are_sent_again_only_with_retry_failed() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    // Three people, the last without an email.
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 3).await;

    smtp.refuse();
    let refused = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("--retry-failed"), "{refused:?}");
    smtp.heal();

    let again = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(smtp.count(), 0, "a plain rerun leaves what failed for good alone: {again:?}");
    let retried = lifeboat.run(&["notify", &id, "--yes", "--retry-failed"]).await;
    assert_eq!(retried.code, 0, "{retried:?}");
    for name in &names[..2] {
        assert_eq!(smtp.messages_to(&format!("{name}@example.org")).len(), 1, "one email to {name}: {retried:?}");
    }
}

/// A relay whose daily allowance is spent refuses every message in a 5xx:
/// that is no reason to fail everyone for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_out_of_its_sending_quota_leaves_the_notices_waiting_not_failed() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 4).await;

    smtp.spend_quota();
    // One connection: the first refusal stops the run before the others
    // were tried, and those wait too (serve's worker must not come back to
    // each of them every round).
    lifeboat.set_env("LIFEBOAT__EMAIL__CONNECTIONS", "1");
    let stopped = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(stopped.code, 1, "{stopped:?}");
    assert!(stopped.stderr.contains("takes no more mail for now"), "{stopped:?}");
    let listed = lifeboat.run(&["incident", "show", &id, "--json"]).await.json();
    assert_eq!(listed["deliveries"]["failed"], 0, "none failed for good: {listed}");
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let (due,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM deliveries WHERE channel = 'email' AND state = 'pending' AND next_attempt_at <= $1",
    )
    .bind(lifeboat::registry::now_ms())
    .fetch_one(direct.pool())
    .await
    .unwrap();
    assert_eq!(due, 0, "every waiting notice waits out the backoff");
    smtp.heal();
    let rerun = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(rerun.code, 0, "a plain rerun sends them: {rerun:?}");
    for name in &names[..3] {
        assert_eq!(smtp.messages_to(&format!("{name}@example.org")).len(), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notify_killed_mid_send_and_rerun_reaches_everyone_repeating_at_most_the_in_flight() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    // Slow enough (8 connections, 100 ms a message) to stop the registry
    // just after the second claim of 32 began.
    let smtp = TestSmtp::start_slow(100);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 151).await;

    let mut child = lifeboat.spawn(&["notify", &id, "--yes"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while smtp.messages().len() < 33 {
        assert!(std::time::Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Then the registry stops taking writes: the sends may run ahead of
    // their records by the bound and no further (not the whole claim),
    // and the kill comes once they have stalled (well inside SQLite's
    // 10 s busy timeout, so notify itself does not give up first).
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let mut writer = client.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *writer).await.unwrap();
    let mut seen = smtp.messages().len();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = smtp.messages().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGKILL) };
    child.wait().await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut *writer).await.unwrap();
    drop(writer);
    client.close().await;
    let before = smtp.messages().len();
    assert!(before < 150, "killed before the end ({before} sent)");

    let rerun = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let mut repeats = 0;
    for name in &names[..150] {
        let count = smtp.messages_to(&format!("{name}@example.org")).len();
        assert!(count >= 1, "{name} got no email");
        repeats += count - 1;
    }
    // notify sends 8 at a time, and up to 16 more may be sent but not yet
    // recorded (the permits in src/outbox.rs): at most those 24 can repeat.
    assert!(repeats <= 24, "at most the messages in flight (8 + 16) repeat, got {repeats}");
    let unique_ids: std::collections::HashSet<Option<String>> =
        smtp.messages().into_iter().map(|m| m.message_id).collect();
    assert_eq!(unique_ids.len(), 150, "a repeat carries the same Message-ID");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_notify_finishes_what_is_in_flight_and_says_to_run_it_again() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start_slow(200);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 41).await;

    let child = lifeboat.spawn_captured(&["notify", &id, "--yes"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while smtp.messages().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains(&format!("run `lifeboat notify {id} --yes` again")),
        "{stderr}"
    );
    let before = smtp.messages().len();
    assert!(before < 40, "stopped before the end ({before} sent)");

    // What was in flight was recorded: the rerun repeats nothing.
    let rerun = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    for name in &names[..40] {
        assert_eq!(smtp.messages_to(&format!("{name}@example.org")).len(), 1, "{name} got exactly one email");
    }
}

/// A token a person's request makes while `incident resolve` sweeps the
/// tokens (the web page and the bot take no lease) does not outlive the
/// incident: one made after the incident was recorded resolved deletes itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_while_its_incident_is_resolved_does_not_outlive_it() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 2).await;
    let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let client = lifeboat::recover::admin_access(&config, &store).await.unwrap().working().unwrap();
    let incident: i64 = id.parse().unwrap();
    // Resolving recorded it while the request was making its token.
    store.resolve_incident(incident, &lifeboat::registry::Actor::cli()).await.unwrap();
    let person = lifeboat::user_id::UserId::parse(&synapse.user_id(&names[0])).unwrap();
    let made = lifeboat::tokens::token_for_person(&config, &store, &client, incident, &person, None).await;
    assert!(matches!(made, Err(lifeboat::tokens::TokenError::IncidentResolved)), "{made:?}");
    synapse.register_admin(&unique("root"));
    assert_eq!(synapse.registration_tokens().await, Vec::<serde_json::Value>::new(), "none left in Synapse");
    store.close().await;
}

/// Gives serve free ports for its web page and metrics, and a watcher that
/// stays out of the way (one round an hour).
fn serve_on_free_ports(lifeboat: &Lifeboat) {
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!(
        "{}\n[watch]\ninterval = \"1h\"\n[metrics]\nbind = \"127.0.0.1:{}\"\n",
        config.replace("[web]\n", &format!("[web]\nbind = \"127.0.0.1:{}\"\n", free_port())),
        free_port()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_short_mail_outage_serve_sends_the_waiting_notices_within_a_minute() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(Some(0));
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 3).await;

    // The relay refuses (451) for a whole run: the notices wait, with
    // tokens made to live the shortest time allowed.
    lifeboat.set_env("LIFEBOAT__TOKENS__EXPIRY", "1h");
    let run = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    lifeboat.set_env("LIFEBOAT__TOKENS__EXPIRY", "14d");
    serve_on_free_ports(&lifeboat);
    let _serve = lifeboat.spawn_serve();

    // The relay is back: serve's worker notices and sends what waits, long
    // before the wait a run set (a minute or more).
    tokio::time::sleep(Duration::from_secs(2)).await;
    smtp.heal();
    eventually("the waiting notices go out", Duration::from_secs(45), || async {
        names[..2].iter().all(|name| !smtp.messages_to(&format!("{name}@example.org")).is_empty())
    })
    .await;
    // With less than half their life left, the tokens got a fresh expiry
    // before the worker sent them.
    let tokens = lifeboat.run(&["tokens", "list", "--json"]).await.json();
    let day_from_now = lifeboat::registry::now_ms() + 24 * 3600 * 1000;
    for token in tokens.as_array().unwrap() {
        assert!(token["expires_at"].as_i64().unwrap_or(0) > day_from_now, "{token}");
    }
}

/// serve's worker whose run cannot start (every admin token rejected, and
/// recovery refused: lifeboat's password changed by an admin) does not try
/// again at every poll, each time a failed login against Synapse: the
/// incident's notices wait a few minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_run_cannot_start_lets_the_notices_wait_before_trying_again() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    drop(smtp);
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 3).await;
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 1, "the relay is away: they wait");
    synapse.register_admin(&unique("root"));
    let path = format!("/_synapse/admin/v2/users/{}", synapse.user_id("lifeboat"));
    let changed = serde_json::json!({"password": "changed-by-an-admin", "logout_devices": true});
    assert_eq!(synapse.admin_request(reqwest::Method::PUT, &path, Some(changed)).await.0, 200);
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    sqlx::query("UPDATE deliveries SET next_attempt_at = 0 WHERE state = 'pending'")
        .execute(direct.pool())
        .await
        .unwrap();

    serve_on_free_ports(&lifeboat);
    let _serve = lifeboat.spawn_serve();
    eventually("the worker's run fails", Duration::from_secs(60), || async {
        lifeboat.serve_log().contains("delivery worker: sending failed")
    })
    .await;
    let soonest = "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'";
    eventually("the notices wait minutes, not a poll", Duration::from_secs(10), || async {
        let soonest: i64 = sqlx::query_scalar(soonest).fetch_one(direct.pool()).await.unwrap();
        soonest > lifeboat::registry::now_ms() + 60_000
    })
    .await;
}

/// A relay that answers (the worker's probe works) but keeps deferring the
/// messages: serve's worker tries them again after a growing pause, not in
/// a loop that ignores their backoff.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_answers_but_keeps_deferring_is_not_tried_in_a_loop() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(Some(0));
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 3).await;
    let run = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    serve_on_free_ports(&lifeboat);
    let _serve = lifeboat.spawn_serve();
    tokio::time::sleep(Duration::from_secs(40)).await;

    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let (most,): (i64,) = sqlx::query_as("SELECT MAX(attempts) FROM deliveries WHERE kind = 'notice'")
        .fetch_one(direct.pool())
        .await
        .unwrap();
    direct.close().await;
    // notify's 3 tries, then at most three releases of 3 tries each in
    // 40 s (at start, after 10 s, after 20 more); a loop makes dozens.
    assert!((3..=12).contains(&most), "tries of one notice: {most}\n{}", lifeboat.serve_log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_incident_for_the_same_people_is_refused_unless_forced() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 2).await;

    let args = ["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md"];
    let again = lifeboat.run(&args).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains(&format!("open incident {id} already covers")), "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
    let listed = lifeboat.run(&["incident", "list", "--json"]).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing was opened: {listed}");

    let forced = lifeboat.run(&[&args[..], &["--force"]].concat()).await;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stdout.contains("Opened incident"), "{forced:?}");
}

/// The messages `user_id` can read in their one room (the DM they were
/// invited to, joined here if not yet), read with a matrix-sdk client as a
/// person's client would.
/// `user_id`'s matrix-sdk client, as a person's client would be, synced once.
async fn signed_in(synapse: &TestSynapse, user_id: &str) -> matrix_sdk::Client {
    let client = matrix_sdk::Client::builder().homeserver_url(&synapse.url).build().await.unwrap();
    client.matrix_auth().login_username(user_id, "correct horse battery").await.unwrap();
    client.sync_once(matrix_sdk::config::SyncSettings::default()).await.unwrap();
    client
}

/// How many messages `user_id` has in their one DM room, and how many of
/// them came encrypted (the account has no device that could read them).
async fn dm_messages(synapse: &TestSynapse, user_id: &str) -> (usize, usize) {
    let client = signed_in(synapse, user_id).await;
    let room = the_dm_room(&client, user_id).await;
    let messages = room.messages(matrix_sdk::room::MessagesOptions::backward()).await.unwrap();
    let types: Vec<serde_json::Value> = messages
        .chunk
        .iter()
        .filter_map(|event| serde_json::from_str::<serde_json::Value>(event.raw().json().get()).ok())
        .map(|json| json["type"].clone())
        .collect();
    let encrypted = types.iter().filter(|kind| *kind == "m.room.encrypted").count();
    (encrypted + types.iter().filter(|kind| *kind == "m.room.message").count(), encrypted)
}

/// The one DM room `client` is in or invited to, joined.
async fn the_dm_room(client: &matrix_sdk::Client, user_id: &str) -> matrix_sdk::Room {
    let (invited, joined) = (client.invited_rooms(), client.joined_rooms());
    assert_eq!(invited.len() + joined.len(), 1, "{user_id} is in one DM room");
    let room = match invited.first() {
        Some(room) => {
            room.join().await.unwrap();
            room.clone()
        }
        None => joined[0].clone(),
    };
    client.sync_once(matrix_sdk::config::SyncSettings::default()).await.unwrap();
    room
}

async fn dm_bodies(synapse: &TestSynapse, user_id: &str) -> Vec<String> {
    use matrix_sdk::room::MessagesOptions;

    let client = signed_in(synapse, user_id).await;
    let room = the_dm_room(&client, user_id).await;
    let messages = room.messages(MessagesOptions::backward()).await.unwrap();
    messages
        .chunk
        .iter()
        .filter_map(|event| {
            let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).ok()?;
            (json["type"] == "m.room.message").then(|| json["content"]["body"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn people_whose_account_survived_get_a_dm_even_when_synapse_rate_limits() {
    // One message a second after a burst of two: the DMs below hit 429s.
    let synapse = TestSynapse::start_with(&["--rate", "rc_message=1:2"]);
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let bot = synapse.register("lifeboat");
    let people = [unique("ann"), unique("ben"), unique("cat")];
    for name in &people {
        synapse.create_user(name, &[]).await;
    }
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    sending_as(&lifeboat, &bot);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    // A front that will not let lifeboat lift its own rate limits (as a
    // proxy guarding the admin API might).
    let front = crate::harness::faulty_front::FaultyFront::start(
        &synapse.url,
        reqwest::Method::POST,
        "override_ratelimit",
        usize::MAX,
    )
    .await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &front.url);
    let id = open_for_everyone(&lifeboat, "Messages lost").await.json()["id"].to_string();

    let started = std::time::Instant::now();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "429s delay DMs but fail none: {notify:?}");
    assert!(notify.stdout.contains("Matrix DMs: 4"), "the three people and the admin, not lifeboat itself: {notify:?}");
    assert!(notify.stdout.contains("Deliveries: 4 sent, 0 failed"), "{notify:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "the rate limit was in force");
    assert!(synapse.log().contains("429 - Too Many Requests (rc_message)"), "Synapse did answer 429");
    assert!(notify.stderr.contains("could not lift the rate limits"), "{notify:?}");

    let bodies = dm_bodies(&synapse, &synapse.user_id(&people[0])).await;
    assert_eq!(bodies.len(), 1, "one notice: {bodies:?}");
    assert!(
        bodies[0].contains("Our database was **lost**") || bodies[0].contains("Our database was lost"),
        "{bodies:?}"
    );
    assert!(bodies[0].contains("still works"), "a survivor is not told to register again: {bodies:?}");
    // The DM stays theirs and lifeboat's: its recipient can neither open
    // it to others nor bring anyone in (a claim link may be sent there).
    let ann = signed_in(&synapse, &synapse.user_id(&people[0])).await;
    let dm = the_dm_room(&ann, &people[0]).await;
    let public = matrix_sdk::ruma::events::room::join_rules::RoomJoinRulesEventContent::new(
        matrix_sdk::ruma::events::room::join_rules::JoinRule::Public,
    );
    let opened = dm.send_state_event(public).await.map(drop);
    assert!(format!("{opened:?}").contains("status_code: 403"), "{opened:?}");
    let ben = matrix_sdk::ruma::UserId::parse(synapse.user_id(&people[1])).unwrap();
    let invited = dm.invite_user_by_id(&ben).await;
    assert!(format!("{invited:?}").contains("status_code: 403"), "{invited:?}");

    let again = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(dm_bodies(&synapse, &synapse.user_id(&people[1])).await.len(), 1, "a rerun sends no second DM");

    // Cat read the notice and left the room. The next incident's notice is
    // not sent where nobody reads it: Cat is invited back to it.
    let cat = synapse.user_id(&people[2]);
    assert_eq!(dm_bodies(&synapse, &cat).await.len(), 1);
    leave_every_room(&synapse, &cat).await;
    let args = ["incident", "open", "--title", "Media lost", "--postmortem", "postmortem.md", "--affected", "all"];
    let second = lifeboat.run(&[&args[..], &["--force", "--json"]].concat()).await;
    let second_id = second.json()["id"].to_string();
    let notify = lifeboat.run(&["notify", &second_id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    let bodies = dm_bodies(&synapse, &cat).await;
    assert!(bodies.len() == 2 && bodies.iter().any(|body| body.contains("Media lost")), "{bodies:?}");
}

/// DMs planned while lifeboat could send them, and then its token logged
/// out: they wait out a backoff like failed tries, so serve's worker does
/// not come back for them (a whole campaign run) every round.
#[tokio::test(flavor = "multi_thread")]
async fn dms_that_cannot_be_sent_at_all_wait_instead_of_being_due_every_round() {
    let SurvivorAndBot { synapse, registry, smtp: _smtp, bot, lifeboat, id } = a_survivor_and_a_bot().await;
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 0);
    // As if the DMs had not gone out yet when the token was logged out.
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let unsent = "UPDATE deliveries SET state = 'pending', next_attempt_at = 0 WHERE channel = 'matrix'";
    assert!(sqlx::query(unsent).execute(direct.pool()).await.unwrap().rows_affected() > 0);
    log_out(&synapse, &bot.access_token).await;

    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert!(notify.stderr.contains("no Matrix DMs"), "{notify:?}");
    let (due, waiting): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE next_attempt_at <= $1), COUNT(*) FROM deliveries \
         WHERE channel = 'matrix' AND state = 'pending'",
    )
    .bind(lifeboat::registry::now_ms())
    .fetch_one(direct.pool())
    .await
    .unwrap();
    assert!(waiting > 0 && due == 0, "{waiting} waiting, {due} due now: {notify:?}");
}

/// A first notify while lifeboat's account cannot send (its token logged
/// out) plans the DMs all the same: they wait, and the run says they were
/// not delivered, never "all delivered".
#[tokio::test(flavor = "multi_thread")]
async fn a_first_notify_whose_dm_sender_cannot_start_keeps_the_dms_pending_and_says_so() {
    let SurvivorAndBot { synapse, registry, smtp: _smtp, bot, lifeboat, id } = a_survivor_and_a_bot().await;
    log_out(&synapse, &bot.access_token).await;

    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 1, "{notify:?}");
    assert!(notify.stderr.contains("no Matrix DMs"), "{notify:?}");
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let pending = "SELECT COUNT(*) FROM deliveries WHERE channel = 'matrix' AND state = 'pending'";
    let pending: i64 = sqlx::query_scalar(pending).fetch_one(direct.pool()).await.unwrap();
    assert!(pending > 0, "{notify:?}");
}

struct SurvivorAndBot {
    synapse: TestSynapse,
    registry: TestDatabase,
    smtp: TestSmtp,
    bot: crate::harness::synapse::Registered,
    lifeboat: Lifeboat,
    id: String,
}

/// Ann, whose account survived, and lifeboat sending DMs as the bot's
/// account, with an incident for everyone open (not notified yet).
async fn a_survivor_and_a_bot() -> SurvivorAndBot {
    let synapse = TestSynapse::start();
    let (registry, smtp) = (TestDatabase::sqlite(), TestSmtp::start(None));
    let bot = synapse.register("lifeboat");
    synapse.create_user(&unique("ann"), &[]).await;
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    sending_as(&lifeboat, &bot);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let id = open_for_everyone(&lifeboat, "Messages lost").await.json()["id"].to_string();
    SurvivorAndBot { synapse, registry, smtp, bot, lifeboat, id }
}

async fn log_out(synapse: &TestSynapse, token: &str) {
    let logout = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/logout", synapse.url))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(logout.status().is_success());
}

async fn leave_every_room(synapse: &TestSynapse, user_id: &str) {
    let client = signed_in(synapse, user_id).await;
    for room in client.joined_rooms() {
        room.leave().await.unwrap();
    }
}

/// Two federating homeservers, an incident after a wipe of the first, and
/// the first lost person's Matrix contact: her account on the other one.
struct ContactElsewhere {
    synapse: TestSynapse,
    other_server: TestSynapse,
    _registry: TestDatabase,
    smtp: TestSmtp,
    lifeboat: Lifeboat,
    id: String,
    names: Vec<String>,
    lost: String,
    elsewhere: String,
}

async fn contact_elsewhere() -> ContactElsewhere {
    let (synapse, other_server) = federation_pair();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 2).await;
    let lost = synapse.user_id(&names[0]);
    synapse.register_admin(&unique("root"));
    let elsewhere = other_server.create_user(&unique("elsewhere"), &[]).await;
    let added = lifeboat.run(&["contacts", "add", &lost, &elsewhere]).await;
    assert_eq!(added.code, 0, "{added:?}");
    ContactElsewhere { synapse, other_server, _registry: registry, smtp, lifeboat, id, names, lost, elsewhere }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_matrix_contact_gets_the_lost_persons_notice_and_token_by_dm() {
    // Bound by name, every one: the registry and the sink must live to the end.
    let ContactElsewhere { synapse, other_server, _registry, smtp, lifeboat, id, names, lost, elsewhere } =
        contact_elsewhere().await;
    let shown = lifeboat.run(&["incident", "show", &id, "--json"]).await.json();
    let reach = ["affected", "reachable_by_email", "reachable_by_matrix", "unreachable"].map(|key| shown[key].as_i64());
    assert_eq!(reach, [Some(3), Some(1), Some(1), Some(2)], "both people and the old admin; she by both: {shown}");

    let dry = lifeboat.run(&["notify", &id, "--dry-run"]).await;
    assert!(dry.stdout.contains("Matrix DMs: 1 "), "the contact, not the lost accounts: {dry:?}");
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    assert!(notify.stdout.contains("Deliveries: 2 sent, 0 failed"), "one email, one DM: {notify:?}");

    let bodies = dm_bodies(&other_server, &elsewhere).await;
    assert_eq!(bodies.len(), 1, "one notice: {bodies:?}");
    assert!(bodies[0].contains(&format!("your Matrix account {lost}")), "about the lost account: {bodies:?}");
    let token_line = bodies[0].lines().find(|line| line.contains("registration token:")).expect("a token");
    let token = token_line.split_whitespace().last().unwrap().trim_matches(|c: char| !c.is_ascii_alphanumeric());
    assert!(synapse.token_is_valid(token).await, "the DM carries her working token: {token_line}");
    let mailed = smtp.messages_to(&format!("{}@example.org", names[0]));
    assert_eq!(mailed.len(), 1);
    assert_eq!(token_in(mailed[0].text.as_deref().unwrap_or("")), token, "the same token by both channels");

    let again = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(dm_bodies(&other_server, &elsewhere).await.len(), 1, "a rerun sends no second DM");
}

/// A homeserver with no mail relay still gets its notices out by DM: without
/// an `[email]` section notify sends the DMs, and says the emails wait.
#[tokio::test(flavor = "multi_thread")]
async fn without_an_email_section_notify_sends_the_dms_alone() {
    let ContactElsewhere { synapse: _synapse, other_server, _registry, smtp, lifeboat, id, elsewhere, .. } =
        contact_elsewhere().await;
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let (before, rest) = config.split_once("[email]").unwrap();
    let after = &rest[rest.find("[web]").unwrap()..];
    lifeboat.write_config(&format!("{before}{after}"));

    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 1, "an email is not sent: {notify:?}");
    assert!(notify.stderr.contains("only the Matrix DMs go"), "{notify:?}");
    assert!(notify.stderr.contains("1 emails were not sent: there is no [email] section"), "{notify:?}");
    assert!(notify.stdout.contains("Deliveries: 1 sent, 0 failed"), "the DM alone: {notify:?}");
    assert_eq!(dm_bodies(&other_server, &elsewhere).await.len(), 1);
    assert!(smtp.messages().is_empty(), "no mail without a relay");

    // Emails planned while a relay was configured, due when the section is
    // gone: they wait out a backoff, not due again at every worker round.
    lifeboat.write_config(&config.replace(&smtp.smtp_url(), "smtp://127.0.0.1:1"));
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 1, "the relay does not answer");
    let store = lifeboat::registry::Registry::connect(&_registry.url()).await.unwrap();
    let due_emails =
        "SELECT COUNT(*) FROM deliveries WHERE channel = 'email' AND state = 'pending' AND next_attempt_at <= $1";
    sqlx::query("UPDATE deliveries SET next_attempt_at = 0 WHERE channel = 'email'")
        .execute(store.pool())
        .await
        .unwrap();
    lifeboat.write_config(&format!("{before}{after}"));
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 1);
    let (due,): (i64,) =
        sqlx::query_as(due_emails).bind(lifeboat::registry::now_ms()).fetch_one(store.pool()).await.unwrap();
    assert_eq!(due, 0, "the email waits");
    store.close().await;
}

/// A contact whose homeserver is down cannot be invited: the run does not
/// wait for it for ever, and the DM room made for them is kept and the
/// invite tried again in it, not a new room made (and left behind) at every
/// try. Encrypted DMs alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_dm_to_a_server_that_is_down_waits_and_is_tried_again_in_one_room() {
    dm_to_a_server_that_is_down(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_dm_to_a_server_that_is_down_waits_and_is_tried_again_in_one_room() {
    dm_to_a_server_that_is_down(true).await;
}

async fn dm_to_a_server_that_is_down(encrypted: bool) {
    let ContactElsewhere { synapse, other_server, _registry, smtp: _smtp, lifeboat, id, elsewhere, .. } =
        contact_elsewhere().await;
    if encrypted {
        let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
        lifeboat.write_config(&format!("{config}\n[bot]\nstore_path = \"bot-store\"\nencrypted_notices = true\n"));
    }

    other_server.stop();
    let down = tokio::time::timeout(Duration::from_secs(300), lifeboat.run(&["notify", &id, "--yes"])).await;
    let down = down.expect("the run ends although the contact's server does not answer");
    assert_eq!(down.code, 1, "the DM waits: {down:?}");
    other_server.start_again();
    let again = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains(" 0 failed"), "{again:?}");
    let (messages, encrypted_ones) = dm_messages(&other_server, &elsewhere).await;
    assert_eq!((messages, encrypted_ones), (1, usize::from(encrypted)), "one notice, encrypted if configured");

    let own = synapse.user_id("lifeboat");
    let path = format!("{}/_synapse/admin/v1/users/{own}/joined_rooms", synapse.url);
    let rooms: serde_json::Value =
        reqwest::Client::new().get(path).bearer_auth(synapse.admin_token()).send().await.unwrap().json().await.unwrap();
    assert_eq!(rooms["total"], 1, "one DM room, however many tries: {rooms}");
}

/// lifeboat's own token expired (a homeserver with session lifetimes) while
/// the configured admin token works, so no `recover` runs: notify logs in
/// again for a new one and the DMs go, instead of waiting for good.
#[tokio::test(flavor = "multi_thread")]
async fn lifeboats_own_expired_token_is_renewed_for_dms_while_the_configured_one_works() {
    let ContactElsewhere { synapse, other_server, _registry, smtp: _smtp, lifeboat, id, elsewhere, .. } =
        contact_elsewhere().await;
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let working = format!("admin_token = \"{}\"", synapse.admin_token());
    let config: Vec<String> = config
        .lines()
        .map(|line| if line.starts_with("admin_token = ") { working.clone() } else { line.to_owned() })
        .collect();
    lifeboat.write_config(&config.join("\n"));
    // A token for lifeboat's account that expires in a second, kept as its own.
    let own = synapse.user_id("lifeboat");
    let expiring = synapse.token_expiring_in(&own, 1_000).await;
    let store = lifeboat::registry::Registry::connect(&_registry.url()).await.unwrap();
    let actor = lifeboat::registry::Actor::cli();
    store
        .store_service_credential(
            &crate::harness::id(&own),
            &expiring,
            Some("KEEPME"),
            lifeboat::registry::CredentialFrom::Recovery,
            &actor,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let whoami = http.get(format!("{}/_matrix/client/v3/account/whoami", synapse.url)).bearer_auth(&expiring);
    let whoami: serde_json::Value = whoami.send().await.unwrap().json().await.unwrap();
    assert_eq!(whoami["soft_logout"], true, "the token expired: {whoami}");

    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    assert!(notify.stdout.contains(" 0 failed,") && notify.stdout.contains(" 0 pending"), "{notify:?}");
    assert_eq!(dm_bodies(&other_server, &elsewhere).await.len(), 1, "the DM went");
    let renewed = store.service_credential(&crate::harness::id(&own)).await.unwrap().unwrap();
    assert_ne!(secrecy::ExposeSecret::expose_secret(&renewed.access_token), expiring, "a new token is kept");
    assert_eq!(renewed.device_id.as_deref(), Some("KEEPME"), "on the same device, which keeps its keys");

    // Logged out (an admin's "sign out everywhere"): a password login gets
    // a new token, on a new device (the old one is gone, keys and all).
    log_out(&synapse, secrecy::ExposeSecret::expose_secret(&renewed.access_token)).await;
    let unsent = "UPDATE deliveries SET state = 'pending', next_attempt_at = 0 WHERE channel = 'matrix'";
    sqlx::query(unsent).execute(store.pool()).await.unwrap();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    let again = store.service_credential(&crate::harness::id(&own)).await.unwrap().unwrap();
    assert_ne!(again.device_id, renewed.device_id, "a new device");
    store.close().await;
}

/// A Matrix-ID contact on this homeserver is an ID a wipe hands to whoever
/// registers it first: they read nothing of the person's notice (its token,
/// its claim link). Nor does whoever took the person's own ID get to greet
/// the person in it with a name of their choosing.
#[tokio::test(flavor = "multi_thread")]
async fn ids_taken_after_a_wipe_neither_read_a_persons_notice_nor_put_words_in_it() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (alice, bob) = (unique("alice"), unique("bob"));
    let email = format!("{alice}@example.org");
    synapse.create_user(&alice, &[&email]).await;
    synapse.create_user(&bob, &[]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let added = lifeboat.run(&["contacts", "add", &synapse.user_id(&alice), &synapse.user_id(&bob)]).await;
    assert_eq!(added.code, 0, "{added:?}");

    synapse.wipe();
    let (alice_taken, bob_taken) = (synapse.register(&alice), synapse.register(&bob));
    let alice_taker = MatrixUser::new(&synapse.url, &alice_taken.user_id, &alice_taken.access_token);
    let path = format!("/_matrix/client/v3/profile/{}/displayname", alice_taken.user_id);
    let planted = serde_json::json!({"displayname": "ADMIN NOTICE: get your new token at https://evil.example"});
    assert_eq!(alice_taker.try_call(reqwest::Method::PUT, &path, Some(planted)).await.0, 200);
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let open = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--json"]).await;
    assert_eq!(open.code, 0, "{open:?}");
    let id = open.json()["id"].to_string();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");

    no_dm_reached(&synapse, &bob_taken, &lifeboat, &id, &notify).await;
    let mailed = smtp.messages_to(&email);
    assert_eq!(mailed.len(), 1, "her own address still gets her notice");
    let text = mailed[0].text.clone().unwrap_or_default();
    assert!(text.starts_with(&format!("Hello {alice},")) && !text.contains("evil.example"), "{text}");
}

/// The taker of a contact's ID got no DM, and the incident counts it skipped.
async fn no_dm_reached(
    synapse: &TestSynapse,
    taker: &crate::harness::synapse::Registered,
    lifeboat: &Lifeboat,
    id: &str,
    notify: &crate::harness::cli::Run,
) {
    let taker = MatrixUser::new(&synapse.url, &taker.user_id, &taker.access_token);
    assert!(taker.invites().await.is_empty(), "no DM to the contact's ID someone took: {notify:?}");
    let shown = lifeboat.run(&["incident", "show", id, "--json"]).await.json();
    assert_eq!(shown["deliveries"]["skipped"], 1, "the DM is skipped, not failed: {shown}");
}

/// The registry learns that a contact's ID changed hands only at the next
/// listing: a DM to a Matrix ID on this homeserver asks Synapse whose it is
/// just before it goes, so a stranger who registered it after another
/// wipe, before any listing, reads nothing of the person's notice.
#[tokio::test(flavor = "multi_thread")]
async fn a_contacts_id_taken_after_another_wipe_before_any_listing_gets_no_dm() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    // Holds off: notices go as soon as lifeboat is back in (with holds on,
    // none goes before a listing has shown who was lost).
    lifeboat.set_env("LIFEBOAT__RECOVERY__HOLD", "off");
    let (alice, bob) = (unique("alice"), unique("bob"));
    synapse.create_user(&alice, &[&format!("{alice}@example.org")]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    // Bob's account is new since the wipe: his own, and known once listed.
    synapse.register_admin(&unique("root"));
    synapse.create_user(&bob, &[]).await;
    let open = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--json"]).await;
    assert_eq!(open.code, 0, "{open:?}");
    let id = open.json()["id"].to_string();
    let added = lifeboat.run(&["contacts", "add", &synapse.user_id(&alice), &synapse.user_id(&bob)]).await;
    assert_eq!(added.code, 0, "{added:?}");

    synapse.wipe();
    let bob_taken = synapse.register(&bob);
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");

    no_dm_reached(&synapse, &bob_taken, &lifeboat, &id, &notify).await;
}

/// A notify that loses its lease (held up past it: paused, say) stops
/// claiming notices, so that it and the process that took the lease over do
/// not send the same ones: the taker sends the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_notify_that_loses_its_lease_stops_sending() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start_slow(4_000);
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    lifeboat.set_env("LIFEBOAT__EMAIL__CONNECTIONS", "1");
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 12).await;
    let lease = format!("notify:incident:{id}");
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let take_over = async {
        eventually("the run holds its lease", Duration::from_secs(30), || async { lease_held(&direct, &lease).await })
            .await;
        sqlx::query("UPDATE leases SET holder = 'elsewhere:1:1' WHERE name = $1")
            .bind(&lease)
            .execute(direct.pool())
            .await
            .unwrap();
    };
    let args = ["notify", id.as_str(), "--yes"];
    let (notify, ()) = tokio::join!(lifeboat.run(&args), take_over);
    assert_eq!(notify.code, 1, "{notify:?}");
    assert!(notify.stderr.contains("another process took over"), "{notify:?}");
    let sent = smtp.count();
    assert!(sent < 11, "it stopped part-way: {sent} of 11 sent");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(smtp.count(), sent, "and sent nothing after");
}

/// A notify that read its incident before someone resolved it (its admin
/// still at the prompt, serve's worker busy with another incident) makes
/// and sends nothing: resolving deleted the unused tokens, and a token
/// made after it would outlive the incident.
#[tokio::test(flavor = "multi_thread")]
async fn a_notify_that_read_its_incident_before_it_was_resolved_makes_and_sends_nothing() {
    use lifeboat::campaign::{CampaignError, CampaignOptions, run_campaign};
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 3).await;
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let read_before = store.require_incident(id.parse().unwrap()).await.unwrap();
    let resolve = lifeboat.run(&["incident", "resolve", &id, "--yes"]).await;
    assert_eq!(resolve.code, 0, "{resolve:?}");

    let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
    struct Quiet;
    impl lifeboat::notify::NotifyProgress for Quiet {}
    let devices = lifeboat::dm::Devices::default();
    let options = CampaignOptions {
        actor: lifeboat::registry::Actor::cli(),
        plan_new: true,
        retry_failed: false,
        progress: &Quiet,
        devices: &devices,
        mailer: None,
    };
    let outcome = run_campaign(&config, &store, &read_before, options).await;
    assert!(matches!(outcome, Err(CampaignError::Resolved(_))), "{outcome:?}");
    assert!(store.tokens(Some(read_before.id)).await.unwrap().is_empty(), "no token made");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.count(), 0, "nothing sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_an_admin_had_locked_or_deactivated_get_no_token() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (kept, locked, gone) = (unique("kept"), unique("locked"), unique("gone"));
    for name in [&kept, &locked, &gone] {
        synapse.create_user(name, &[&format!("{name}@example.org")]).await;
    }
    synapse.lock_user(&locked).await;
    synapse.deactivate_user(&gone).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    // Deactivation drops the account's emails in Synapse; the admin adds one.
    let add = lifeboat.run(&["contacts", "add", &synapse.user_id(&gone), &format!("{gone}@example.org")]).await;
    assert_eq!(add.code, 0, "{add:?}");

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let open = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--json"]).await;
    let id = open.json()["id"].to_string();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");

    let tokens = lifeboat.run(&["tokens", "list", "--incident", &id, "--json"]).await.json();
    let holders: Vec<&str> = tokens.as_array().unwrap().iter().map(|t| t["user_id"].as_str().unwrap()).collect();
    assert!(holders.contains(&synapse.user_id(&kept).as_str()), "{holders:?}");
    assert!(!holders.contains(&synapse.user_id(&locked).as_str()), "a locked account gets no way back in: {holders:?}");
    assert!(!holders.contains(&synapse.user_id(&gone).as_str()), "nor a deactivated one: {holders:?}");
    assert!(!holders.iter().any(|holder| holder.starts_with("@lifeboat:")), "nor lifeboat itself: {holders:?}");

    // They are still told what happened, without a token.
    let told = smtp.messages_to(&format!("{locked}@example.org"));
    assert_eq!(told.len(), 1);
    assert!(!told[0].text.as_deref().unwrap_or("").contains("Your personal registration token"), "{:?}", told[0].text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recover_interrupted_after_registering_finishes_on_the_next_run() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    synapse.create_user(&unique("dan"), &[]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();

    // A recover that died after Synapse registered the account and before
    // the token was stored: the kept password is all that is left of it.
    let kept = secrecy::SecretString::from("kept-password-of-a-dead-run");
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    store.set_setting("service_account_password", "kept-password-of-a-dead-run").await.unwrap();
    let client = lifeboat::synapse::SynapseClient::new(synapse.url.parse().unwrap(), None, Duration::from_secs(10), 0);
    let secret = secrecy::SecretString::from(synapse.shared_secret.clone());
    client.register_with_shared_secret(&secret, "lifeboat", &kept, true).await.unwrap();

    let recover = lifeboat.run(&["recover"]).await;
    assert_eq!(recover.code, 0, "{recover:?}");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "the token it got works");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_second_wipe_lifeboats_own_account_made_again_is_its_own_not_a_strangers() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let own = format!("@lifeboat:{}", synapse.server_name);
    for wipe in 1..=2 {
        assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
        synapse.wipe();
        let recover = lifeboat.run(&["recover"]).await;
        assert_eq!(recover.code, 0, "wipe {wipe}: {recover:?}");
        // A second apart, so the new account is younger by Synapse's seconds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let check = lifeboat.run(&["check", "--json"]).await;
    assert!(!check.stdout.contains(&own), "lifeboat's own account is not reported: {check:?}");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let shown = lifeboat.run(&["users", "show", &own, "--json"]).await;
    assert_eq!(shown.json()["state"], "present", "{shown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_refuses_when_the_token_was_revoked_rather_than_the_database_lost() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    synapse.register("lifeboat");
    let lifeboat =
        lifeboat_with_mail(&synapse, &registry, &smtp).env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", "syt_revoked");
    let recover = lifeboat.run(&["recover"]).await;
    assert_eq!(recover.code, 1, "{recover:?}");
    assert!(recover.stderr.contains("still exists on Synapse, so its database was not wiped"), "{recover:?}");

    let without_secret = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"syt_revoked\"\n[registry]\nurl = \"{}\"\n",
        synapse.url,
        synapse.server_name,
        registry.url()
    ));
    let recover = without_secret.run(&["recover"]).await;
    assert_eq!(recover.code, 1, "{recover:?}");
    assert!(recover.stderr.contains("set homeserver.registration_shared_secret"), "{recover:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_notify_for_the_same_incident_waits_for_the_first() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, _) = incident_after_wipe(&synapse, &lifeboat, 2).await;
    // A notify of this incident running on another machine holds the lease.
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let ttl = 60_000;
    store.take_lease(&format!("notify:incident:{id}"), "elsewhere:4242", ttl, None).await.unwrap().unwrap();

    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 1, "{notify:?}");
    assert!(
        notify.stderr.contains("another `lifeboat notify") && notify.stderr.contains("elsewhere:4242"),
        "{notify:?}"
    );
    assert!(smtp.messages().is_empty(), "nothing sent twice");
    // Nor is the incident resolved under it: the run could make or send a
    // token that resolving would miss.
    let resolve = lifeboat.run(&["incident", "resolve", &id, "--yes"]).await;
    assert_eq!(resolve.code, 1, "{resolve:?}");
    assert!(resolve.stderr.contains("elsewhere:4242"), "{resolve:?}");

    store.release_lease(&format!("notify:incident:{id}"), "elsewhere:4242").await.unwrap();
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 0);
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_held_back_near_their_expiry_are_renewed_before_they_are_sent() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(Some(0));
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let (id, names) = incident_after_wipe(&synapse, &lifeboat, 2).await;

    // SMTP refuses everything while the tokens, made to live the shortest
    // time allowed, are held back; then they have less than half of the
    // usual life left.
    lifeboat.set_env("LIFEBOAT__TOKENS__EXPIRY", "1h");
    assert_eq!(lifeboat.run(&["notify", &id, "--yes"]).await.code, 1);
    // They are gone from Synapse meanwhile (deleted there by hand, say).
    synapse.register_admin(&unique("root"));
    for token in synapse.registration_tokens().await {
        let path = format!("/_synapse/admin/v1/registration_tokens/{}", token["token"].as_str().unwrap());
        assert_eq!(synapse.admin_request(reqwest::Method::DELETE, &path, None).await.0, 200);
    }

    smtp.heal();
    lifeboat.set_env("LIFEBOAT__TOKENS__EXPIRY", "14d");
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    assert!(notify.stdout.contains("fresh expiry"), "{notify:?}");
    // The last person has no email.
    for name in &names[..names.len() - 1] {
        let mail = &smtp.messages_to(&format!("{name}@example.org"))[0];
        let token = token_in(mail.text.as_deref().unwrap_or(""));
        assert!(synapse.token_is_valid(&token).await, "the token sent to {name} works");
    }
}

/// The bot logged in with `bot.access_token` and the notice DMs share a
/// device, so they share its crypto store: the bot runs first here, and
/// the CLI's notices must still open the store it made.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_notice_dms_are_readable_on_the_persons_device_after_the_bot_has_used_the_store() {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;

    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let bot = synapse.register("lifeboat");
    let admin_account = synapse.register(&unique("admin"));
    let admin = MatrixUser::new(&synapse.url, &admin_account.user_id, &admin_account.access_token);
    let admin_room = admin.create_room_with(&[&bot.user_id], false, false).await;
    let ann = unique("ann");
    synapse.create_user(&ann, &[]).await;
    // Ann's client exists before the notice, so it has keys to encrypt for.
    let client = matrix_sdk::Client::builder().homeserver_url(&synapse.url).build().await.unwrap();
    client.matrix_auth().login_username(synapse.user_id(&ann), "correct horse battery").await.unwrap();
    client.sync_once(SyncSettings::default()).await.unwrap();

    let lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!(
        "{config}\n[bot]\nuser_id = \"{}\"\naccess_token = \"{}\"\nstore_path = \"bot-store\"\nencrypted_notices = true\n\
         admin_room = \"{admin_room}\"\nadmins = [\"{}\"]\n",
        bot.user_id, bot.access_token, admin_account.user_id
    ));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let mut serve = lifeboat.spawn_serve();
    eventually("the bot joins the admin room", Duration::from_secs(60), || async {
        admin.membership_of(&admin_room, &bot.user_id).await.as_deref() == Some("join")
    })
    .await;
    unsafe { libc::kill(serve.id().unwrap() as i32, libc::SIGTERM) };
    serve.wait().await.unwrap();
    let id = open_for_everyone(&lifeboat, "Lost").await.json()["id"].to_string();
    let notify = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    let limits = synapse.rate_limit_override(&bot.user_id).await;
    assert_eq!(limits["messages_per_second"], 0, "notify lifted lifeboat's rate limits: {limits}");

    client.sync_once(SyncSettings::default()).await.unwrap();
    let room = client.invited_rooms().pop().expect("Ann is invited to the DM");
    room.join().await.unwrap();
    client.sync_once(SyncSettings::default()).await.unwrap();
    let messages = room.messages(MessagesOptions::backward()).await.unwrap();
    let mut bodies = Vec::new();
    let mut encrypted = false;
    for event in &messages.chunk {
        encrypted |= event.encryption_info().is_some();
        let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).unwrap();
        if json["type"] == "m.room.message" {
            bodies.push(json["content"]["body"].as_str().unwrap_or("").to_owned());
        }
    }
    assert!(encrypted, "the notice arrived encrypted");
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("still works"), "decrypted on Ann's device: {bodies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_passes_on_a_ready_setup_and_changes_nothing_on_synapse() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let mut lifeboat = lifeboat_with_mail(&synapse, &registry, &smtp);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!("{config}\n[alerts]\nemail = [\"ops@example.org\"]\n"));
    let (reachable, silent) = (unique("reachable"), unique("silent"));
    synapse.create_user(&reachable, &[&format!("{reachable}@example.org")]).await;
    synapse.create_user(&silent, &[]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(lifeboat.run(&["backup", "--out", "registry.backup"]).await.code, 0);

    let drill = lifeboat.run(&["drill", "--json"]).await;
    assert_eq!(drill.code, 0, "{drill:?}");
    let report = drill.json();
    let status = |check: &str| {
        report["lines"].as_array().unwrap().iter().find(|line| line["check"] == check).unwrap()["status"].clone()
    };
    for check in ["synapse", "admin token", "shared secret", "registration tokens", "email", "registry fresh"] {
        assert_eq!(status(check), "ok", "{check}: {report}");
    }
    assert_eq!(status("coverage"), "warn");
    let detail = |check: &str| {
        report["lines"].as_array().unwrap().iter().find(|line| line["check"] == check).unwrap()["detail"].clone()
    };
    assert_eq!(status("backup"), "warn", "a fresh backup, not encrypted: {report}");
    assert!(detail("backup").as_str().unwrap().contains("set backup.encrypt_to"), "{report}");
    let uncovered =
        report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "coverage").unwrap()["accounts"]
            .clone();
    assert!(
        uncovered.as_array().unwrap().iter().any(|id| id == &serde_json::json!(synapse.user_id(&silent))),
        "{uncovered}"
    );
    assert_eq!(smtp.messages_to("ops@example.org").len(), 1, "a test message went to the alert address");
    assert!(synapse.registration_tokens().await.is_empty(), "the drill's token was deleted");
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.json()["new"], serde_json::json!([]), "the drill created no account: {check:?}");

    lifeboat.set_env("LIFEBOAT__HOMESERVER__REGISTRATION_SHARED_SECRET", "not-the-secret");
    let wrong = lifeboat.run(&["drill"]).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stdout.contains("[FAIL] shared secret") && wrong.stdout.contains("HMAC incorrect"), "{wrong:?}");

    // The warning follows the last backup, not the config alone.
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let key = age::x25519::Identity::generate().to_public();
    lifeboat.write_config(&format!("{config}\n[backup]\nencrypt_to = [\"{key}\"]\n"));
    let configured = lifeboat.run(&["drill", "--json"]).await.json();
    let backup_line = |report: &serde_json::Value| {
        report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "backup").unwrap().clone()
    };
    assert!(backup_line(&configured)["detail"].as_str().unwrap().contains("back up again"), "{configured}");
    assert_eq!(lifeboat.run(&["backup", "--out", "registry.backup"]).await.code, 0);
    let encrypted = lifeboat.run(&["drill", "--json"]).await.json();
    assert_eq!(backup_line(&encrypted)["status"], "ok", "an encrypted backup: {encrypted}");
}

/// Mail leaves over STARTTLS and over TLS from the first byte, logged in
/// (AUTH PLAIN, AUTH LOGIN), once the server's certificate is trusted; never
/// to a server lifeboat cannot trust, nor with a wrong password, and the
/// password is never shown.
#[tokio::test(flavor = "multi_thread")]
async fn mail_goes_out_over_tls_with_a_login_only_to_a_trusted_server() {
    use crate::harness::smtp::SinkTls;
    for (tls, auth) in [(SinkTls::StartTls, "PLAIN"), (SinkTls::Implicit, "LOGIN")] {
        let password = "s3cret-smtp-pass";
        let smtp = TestSmtp::start_secured(tls, auth, "lifeboat", password);
        let registry = TestDatabase::sqlite();
        let smtp_url = match tls {
            SinkTls::StartTls => format!("smtp://lifeboat@127.0.0.1:{}?tls=required", smtp.port()),
            SinkTls::Implicit => format!("smtps://lifeboat@127.0.0.1:{}", smtp.port()),
        };
        // Nothing listens on port 9 here: the drill's Synapse lines fail
        // fast, and its email line is what this test reads.
        let mut lifeboat = Lifeboat::with_config(&format!(
            "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\nadmin_token = \"t\"\n\
             retries = 1\n\n[registry]\nurl = \"{}\"\n\n[email]\nsmtp_url = \"{smtp_url}\"\n\
             smtp_password = \"{password}\"\nfrom = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n\
             [alerts]\nemail = [\"ops@example.org\"]\n",
            registry.url(),
        ));
        let email_line = |run: &crate::harness::cli::Run| {
            let report = run.json();
            let line = report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "email").cloned();
            let line = line.unwrap_or_else(|| panic!("no email line: {run:?}"));
            assert!(!run.stdout.contains(password) && !run.stderr.contains(password), "{run:?}");
            (line["status"].as_str().unwrap().to_owned(), line["detail"].to_string())
        };

        let untrusted = lifeboat.run(&["drill", "--json"]).await;
        let (status, detail) = email_line(&untrusted);
        assert_eq!(status, "fail", "{tls:?}: {untrusted:?}");
        assert!(detail.contains("invalid peer certificate"), "{tls:?}: {detail}");

        lifeboat.set_env("SSL_CERT_FILE", smtp.ca_file().to_str().unwrap());
        lifeboat.set_env("LIFEBOAT__EMAIL__SMTP_PASSWORD", "not-the-password");
        let wrong_password = lifeboat.run(&["drill", "--json"]).await;
        let (status, detail) = email_line(&wrong_password);
        assert_eq!(status, "fail", "{tls:?}: {wrong_password:?}");
        assert!(detail.contains("refused the login"), "{tls:?}: {detail}");
        assert!(!wrong_password.stdout.contains("not-the-password"), "{wrong_password:?}");

        lifeboat.set_env("LIFEBOAT__EMAIL__SMTP_PASSWORD", password);
        let trusted = lifeboat.run(&["drill", "--json"]).await;
        let (status, detail) = email_line(&trusted);
        assert_eq!(status, "ok", "{tls:?}: {detail}");
        let received = smtp.messages_to("ops@example.org");
        assert_eq!(received.len(), 1, "{tls:?}: one test message, sent once trusted and logged in");
        assert_eq!(received[0].mail_from, "lifeboat@lifeboat.test");
    }
}

#[tokio::test]
async fn mail_reaches_a_server_that_does_not_pipeline() {
    let smtp = TestSmtp::start_without_pipelining();
    let registry = TestDatabase::sqlite();
    // Nothing listens on port 9: the drill's Synapse lines fail fast; its
    // email line sends one message to the alert address.
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\nadmin_token = \"t\"\n\
         retries = 1\n\n[registry]\nurl = \"{}\"\n\n[email]\nsmtp_url = \"{}\"\n\
         from = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n[alerts]\nemail = [\"ops@example.org\"]\n",
        registry.url(),
        smtp.smtp_url(),
    ));
    let drill = lifeboat.run(&["drill", "--json"]).await;
    let report = drill.json();
    let email = report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "email").cloned();
    let email = email.unwrap_or_else(|| panic!("no email line: {drill:?}"));
    assert_eq!(email["status"], "ok", "{email}");
    let received = smtp.messages_to("ops@example.org");
    assert_eq!(received.len(), 1, "the drill's one message");
    assert_eq!(received[0].mail_from, "lifeboat@lifeboat.test");
}
