//! Sync and check against a real Synapse, including the seed incident.

use std::time::Duration;

use serde_json::Value;

use crate::harness::faulty_front::FaultyFront;
use crate::harness::{Lifeboat, TestDatabase, TestSynapse, unique};

fn ids(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
}

fn lifeboat_for(synapse: &TestSynapse, registry: &TestDatabase) -> Lifeboat {
    Lifeboat::for_synapse(&synapse.url, &synapse.server_name, &synapse.admin_token(), &registry.url())
}

/// Points the config at the current admin token (a wipe kills the old one).
fn use_token(lifeboat: &mut Lifeboat, token: &str) {
    lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", token);
}

/// An account registered while the listing is read, with a name that sorts
/// before the page being read, shifts the later ones (one is read twice)
/// and is left to the next sync; every account there at the start is read,
/// so the listing stands: on a busy homeserver it would never complete.
#[tokio::test(flavor = "multi_thread")]
async fn an_account_registered_while_the_listing_is_read_does_not_spoil_it() {
    let synapse = TestSynapse::start();
    let mut before = Vec::new();
    for n in 0..5 {
        let localpart = format!("m{n}-{}", unique("p"));
        synapse.create_user(&localpart, &[]).await;
        before.push(synapse.user_id(&localpart));
    }
    let token = secrecy::SecretString::from(synapse.admin_token());
    let client =
        lifeboat::synapse::SynapseClient::new(synapse.url.parse().unwrap(), Some(token), Duration::from_secs(10), 0);
    let mut pages = client.pages(2);
    let mut read: Vec<String> =
        pages.next_page().await.unwrap().unwrap().into_iter().map(|user| user.user_id).collect();
    synapse.create_user("a0-early", &[]).await;
    while let Some(page) = pages.next_page().await.unwrap() {
        read.extend(page.into_iter().map(|user| user.user_id));
    }
    let distinct: std::collections::BTreeSet<&String> = read.iter().collect();
    assert!(read.len() > distinct.len(), "one account was read twice: {read:?}");
    assert!(before.iter().all(|id| distinct.contains(id)), "every earlier account is read: {read:?}");
    assert_eq!(pages.missed_some(distinct.len() as u64), None, "{read:?}");
}

/// An admin token that stops working without a wipe (logged out) first
/// reads as a suspected reset, with the hint that the people's accounts
/// still answer the profile API (which a wipe would have emptied, unless
/// they were registered again). Recovery then lists the server completely,
/// and that listing, not the guess, is the watcher's verdict. When
/// lifeboat's account is there and not its own, nothing can list to tell a
/// revoked token from a wipe after which someone registered lifeboat's ID:
/// the guess stays, and the reason names both.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_that_was_no_wipe_is_not_reported_as_everyone_missing() {
    use lifeboat::reconcile::Verdict;

    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    for n in 0..3 {
        synapse.create_user(&unique(&format!("p{n}")), &[]).await;
    }
    let token = synapse.register_admin(&unique("root"));
    let mut lifeboat = lifeboat_for(&synapse, &registry);
    lifeboat.set_env("LIFEBOAT__HOMESERVER__REGISTRATION_SHARED_SECRET", &synapse.shared_secret);
    // The harness keeps an admin token of its own.
    synapse.register_admin(&unique("ops"));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    log_out(&synapse, &token).await;
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 3, "{check:?}");
    let reason = check.json()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("still exist") && reason.contains("revoked or logged out"), "{reason}");

    let secret = [("LIFEBOAT__HOMESERVER__REGISTRATION_SHARED_SECRET".to_owned(), synapse.shared_secret.clone())];
    let config = lifeboat::config::Config::load(lifeboat.config_path(), secret).unwrap();
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let (lock, stop) = (tokio::sync::Mutex::new(()), tokio_util::sync::CancellationToken::new());
    let (seen, _) = lifeboat::watch::observe(&config, &store, &lock, &stop).await;
    assert!(seen.recovered, "{seen:?}");
    assert_eq!((seen.verdict, seen.missing.len()), (Some(Verdict::Ok), 0), "{seen:?}");

    // lifeboat's account now exists with a token of lifeboat's: revoked too,
    // and its password forgotten, it is an account lifeboat cannot get back.
    sqlx::query("DELETE FROM settings WHERE name = 'service_account_password'").execute(store.pool()).await.unwrap();
    let service_token = store.service_credential(&lifeboat::recover::service_user_id(&config)).await.unwrap().unwrap();
    log_out(&synapse, secrecy::ExposeSecret::expose_secret(&service_token.access_token)).await;
    let (seen, _) = lifeboat::watch::observe(&config, &store, &lock, &stop).await;
    assert!(seen.token_rejected && !seen.recovered, "{seen:?}");
    assert_eq!(seen.verdict, Some(Verdict::SuspectedReset), "{seen:?}");
    assert!(seen.reason.contains("revoked without a wipe") && seen.reason.contains("after a wipe"), "{seen:?}");
    store.close().await;
}

async fn log_out(synapse: &TestSynapse, token: &str) {
    let url = format!("{}/_matrix/client/v3/logout", synapse.url);
    let logout = reqwest::Client::new().post(url).bearer_auth(token).json(&serde_json::json!({})).send().await;
    assert_eq!(logout.unwrap().status(), 200);
}

/// `recover` only acts after a wipe: while the admin token works there is
/// nothing to do, and no shared secret is needed to say so.
#[tokio::test(flavor = "multi_thread")]
async fn recover_with_a_working_token_has_nothing_to_do_even_without_the_shared_secret() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let lifeboat = lifeboat_for(&synapse, &registry);
    let recover = lifeboat.run(&["recover"]).await;
    assert_eq!(recover.code, 0, "{recover:?}");
    assert!(recover.stdout.contains("Nothing to recover: the configured admin token works."), "{recover:?}");
}

/// An admin who takes the server-admin flag off the account `recover` made
/// for lifeboat leaves it the configured admin token: listings go on with
/// that one, where they failed "not a server admin" for as long as
/// lifeboat's own token lived.
#[tokio::test(flavor = "multi_thread")]
async fn lifeboats_own_account_no_longer_an_admin_leaves_listings_to_the_configured_token() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let mut lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    let recover = lifeboat.run(&["recover"]).await;
    assert_eq!(recover.code, 0, "{recover:?}");

    let ops = synapse.register_admin(&unique("ops"));
    use_token(&mut lifeboat, &ops);
    let own_flag = format!("/_synapse/admin/v1/users/{}/admin", synapse.user_id("lifeboat"));
    let demoted =
        synapse.admin_request(reqwest::Method::PUT, &own_flag, Some(serde_json::json!({"admin": false}))).await;
    assert_eq!(demoted.0, 200, "{demoted:?}");

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    assert!(sync.stderr.contains("lifeboat's own account is no longer a server admin"), "{sync:?}");
}

/// Synapse refusing the admin token while a sync reads emails, after the
/// listing was read and applied: the listing's report stands, so the
/// watcher alerts the wipe it shows rather than "could not tell", and
/// `lifeboat sync` prints it and says the emails were not all read.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_while_emails_are_read_leaves_the_listings_verdict_standing() {
    use lifeboat::reconcile::Verdict;

    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    for n in 0..3 {
        synapse.create_user(&unique(&format!("p{n}")), &[]).await;
    }
    let mut lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    use_token(&mut lifeboat, &synapse.register_admin(&unique("root")));
    // One account's details, not the listing (`/v2/users?from=…`).
    let front =
        FaultyFront::refusing(&synapse.url, reqwest::Method::GET, "/_synapse/admin/v2/users/", usize::MAX).await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &front.url);

    let env = [
        ("LIFEBOAT__HOMESERVER__URL".to_owned(), front.url.clone()),
        ("LIFEBOAT__HOMESERVER__ADMIN_TOKEN".to_owned(), synapse.admin_token()),
    ];
    let config = lifeboat::config::Config::load(lifeboat.config_path(), env).unwrap();
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let (lock, stop) = (tokio::sync::Mutex::new(()), tokio_util::sync::CancellationToken::new());
    let (seen, _) = lifeboat::watch::observe(&config, &store, &lock, &stop).await;
    assert_eq!(seen.verdict, Some(Verdict::SuspectedReset), "{seen:?}");
    assert!(seen.missing.len() >= 3, "{seen:?}");
    store.close().await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stdout.contains("Sync complete") && sync.stdout.contains("rooms: not updated"), "{sync:?}");
    assert!(sync.stderr.contains("the listing was applied, but importing emails stopped"), "{sync:?}");
}

/// homeserver.url at the Synapse of another server name (a staging
/// server's, say, or server_name mistyped) lists none of this server's
/// accounts: said in one sentence, never read as every account lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_synapse_answering_for_another_server_name_is_refused_not_read_as_a_reset() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    synapse.create_user(&unique("p"), &[]).await;
    assert_eq!(lifeboat_for(&synapse, &registry).run(&["sync"]).await.code, 0);

    let elsewhere = Lifeboat::for_synapse(&synapse.url, "another.example", &synapse.admin_token(), &registry.url());
    for command in [&["check"][..], &["sync"][..]] {
        let run = elsewhere.run(command).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains("homeserver.url answers for another server"), "{run:?}");
        assert!(run.stderr.contains("homeserver.server_name is another.example"), "{run:?}");
    }
    let known = elsewhere.run(&["users", "list", "--state", "missing", "--json"]).await.json();
    assert_eq!(known.as_array().map(Vec::len), Some(0), "nobody marked missing: {known}");
    // An incident opened by the lifeboat set up right: the misconfigured
    // one's notify makes no token and holds no ID on that Synapse.
    let right = lifeboat_for(&synapse, &registry);
    std::fs::write(right.dir().join("postmortem.md"), "Lost.").unwrap();
    let open = ["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--affected", "all"];
    assert_eq!(right.run(&open).await.code, 0);
    let notify = elsewhere.run(&["notify", "1", "--yes"]).await;
    assert_eq!(notify.code, 1, "{notify:?}");
    assert!(notify.stderr.contains("homeserver.url answers for another server"), "{notify:?}");
    assert!(synapse.registration_tokens().await.is_empty(), "no token made on that server");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_imports_every_account_and_every_email() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    synapse.create_user(&alice, &["Alice@Example.org", "alice.work@example.net"]).await;
    synapse.create_user(&bob, &["bob@example.org"]).await;
    synapse.create_user(&carol, &[]).await;
    let lifeboat = lifeboat_for(&synapse, &registry);

    let sync = lifeboat.run(&["sync", "--json"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    let summary = sync.json();
    assert_eq!(summary["report"]["listed"], 4, "three accounts and the admin: {sync:?}");
    assert_eq!(summary["emails_imported"], 3);

    let users = lifeboat.run(&["users", "list", "--json"]).await.json();
    let listed: Vec<&str> = users.as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    for localpart in [&alice, &bob, &carol] {
        assert!(listed.contains(&synapse.user_id(localpart).as_str()), "{localpart} missing from {listed:?}");
    }
    // The table's columns line up, however long each ID (the admin's and
    // alice's differ in length).
    let table = lifeboat.run(&["users", "list"]).await.stdout;
    let state_columns: Vec<usize> =
        table.lines().filter(|line| line.starts_with('@')).map(|line| line.find("present").unwrap()).collect();
    assert_eq!(state_columns.len(), 4, "{table}");
    assert!(state_columns.iter().all(|&at| at == table.find("STATE").unwrap()), "{table}");
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&alice), "--json"]).await.json();
    let contacts: Vec<(&str, &str)> = shown["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["address"].as_str().unwrap(), c["source"].as_str().unwrap()))
        .collect();
    assert_eq!(contacts, [("alice.work@example.net", "synapse"), ("alice@example.org", "synapse")]);
    assert!(shown["contacts"][0]["verified_at"].is_i64(), "emails from Synapse count as verified");

    let again = lifeboat.run(&["sync", "--json"]).await.json();
    assert_eq!(again["details_fetched"], 0, "fresh details are not fetched again");
    assert_eq!(again["report"]["present"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn locked_and_deactivated_accounts_are_not_reported_missing() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (locked, deactivated, plain) = (unique("locked"), unique("gone"), unique("plain"));
    for localpart in [&locked, &deactivated, &plain] {
        synapse.create_user(localpart, &[]).await;
    }
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    synapse.lock_user(&locked).await;
    synapse.deactivate_user(&deactivated).await;
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 0, "{check:?}");
    let report = check.json();
    assert_eq!(report["verdict"], "ok");
    assert_eq!(ids(&report["missing"]), Vec::<String>::new());
    assert_eq!(ids(&report["deactivated"]), [synapse.user_id(&deactivated)]);

    let sync = lifeboat.run(&["sync", "--json"]).await.json();
    assert_eq!(sync["newly_missing"], 0);
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&locked), "--json"]).await.json();
    assert_eq!((shown["state"].as_str(), shown["locked"].as_bool()), (Some("present"), Some(true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_incident_makes_check_exit_3_with_every_known_account_missing() {
    seed_incident_story(TestDatabase::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_incident_is_detected_with_a_postgres_registry_too() {
    seed_incident_story(TestDatabase::postgres().await).await;
}

async fn seed_incident_story(registry: TestDatabase) {
    let synapse = TestSynapse::start();
    let people = [unique("ann"), unique("ben"), unique("cat")];
    for localpart in &people {
        synapse.create_user(localpart, &[&format!("{localpart}@example.org")]).await;
    }
    let mut lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let known: Vec<String> = lifeboat
        .run(&["users", "list", "--json"])
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(known.len(), 4);

    synapse.wipe();

    // The old admin token died with the database: that alone is a loss signal.
    let with_dead_token = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(with_dead_token.code, 3, "{with_dead_token:?}");
    let report = with_dead_token.json();
    assert_eq!(report["verdict"], "suspected_reset");
    assert_eq!(report["listing_complete"], false);
    assert_eq!(ids(&report["missing"]), known, "the dead token that worked counts every known account lost");
    assert!(!report["reason"].as_str().unwrap().contains("still exist"), "their profiles went too: {report}");

    // With a fresh admin token the listing names every lost account.
    let token = synapse.register_admin("rescuer");
    use_token(&mut lifeboat, &token);
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 3, "{check:?}");
    let report = check.json();
    assert_eq!(report["verdict"], "suspected_reset");
    assert_eq!(ids(&report["missing"]), known);
    assert_eq!(ids(&report["new"]), [synapse.user_id("rescuer")]);

    // Syncing records the loss; nobody is deleted and contacts stay.
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let missing = lifeboat.run(&["users", "list", "--state", "missing", "--json"]).await.json();
    assert_eq!(missing.as_array().unwrap().len(), 4);
    let ann = lifeboat.run(&["users", "show", &synapse.user_id(&people[0]), "--json"]).await.json();
    assert_eq!(ann["state"], "missing");
    assert_eq!(ann["contacts"][0]["address"], format!("{}@example.org", people[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_synapse_makes_check_exit_1_never_3() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    synapse.create_user(&unique("dora"), &[]).await;
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    synapse.stop();
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 1, "{check:?}");
    let report = check.json();
    assert_eq!(report["verdict"], "unknown", "one object that says it could not tell: {check:?}");
    assert_eq!(report["listing_complete"], false, "{check:?}");
    assert!(check.stderr.contains("could not tell whether accounts were lost"), "{check:?}");
    assert!(check.stderr.contains("unavailable"), "{check:?}");
    let sync = lifeboat.run(&["sync", "--json"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("registry was left unchanged"), "{sync:?}");
    let error = sync.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("registry was left unchanged"), "one object for scripts: {sync:?}");

    synapse.start_again();
    let users = lifeboat.run(&["users", "list", "--state", "missing", "--json"]).await.json();
    assert_eq!(users.as_array().unwrap().len(), 0, "a down Synapse never marks anyone missing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reregistered_id_after_the_wipe_is_reported_recreated() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (eve, fay) = (unique("eve"), unique("fay"));
    synapse.create_user(&eve, &["eve@example.org"]).await;
    synapse.create_user(&fay, &[]).await;
    let mut lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    synapse.wipe();
    let token = synapse.register_admin("rescuer");
    use_token(&mut lifeboat, &token);
    synapse.create_user(&eve, &["squatter@example.org"]).await;

    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 3, "{check:?}");
    let report = check.json();
    assert_eq!(ids(&report["recreated"]), [synapse.user_id(&eve)]);
    assert!(ids(&report["missing"]).contains(&synapse.user_id(&fay)));
    assert!(!ids(&report["missing"]).contains(&synapse.user_id(&eve)));

    // Whoever holds the ID now is not taken to be the person we knew.
    let sync = lifeboat.run(&["sync", "--json"]).await;
    assert_eq!(sync.json()["report"]["recreated"], serde_json::json!([synapse.user_id(&eve)]));
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&eve), "--json"]).await.json();
    let addresses: Vec<&str> =
        shown["contacts"].as_array().unwrap().iter().map(|c| c["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, ["eve@example.org"]);
    assert!(shown["recreated_at"].is_i64());
}

/// A sync started while another runs (the watcher's, say) does not fail
/// the other's run: it says who holds the sync and leaves. A holder in this
/// process table whose process is gone is taken over at once; one under
/// this host's name from another table is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_while_another_runs_says_so_and_a_dead_ones_is_taken_over() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let ttl = 60_000;

    store.take_lease("sync", "elsewhere:4242", ttl, None).await.unwrap().unwrap();
    let busy = lifeboat.run(&["sync"]).await;
    assert_eq!(busy.code, 1, "{busy:?}");
    assert!(busy.stderr.contains("another sync is running") && busy.stderr.contains("elsewhere:4242"), "{busy:?}");
    store.release_lease("sync", "elsewhere:4242").await.unwrap();

    // pid_max is at most 2^22 on Linux: this process cannot exist. Under
    // this host's name in another process table (another host of the same
    // name, a container), it may: that lease runs out first.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let namesake = format!("{host}/00000000.1:{}", 1 << 23);
    store.take_lease("sync", &namesake, ttl, None).await.unwrap().unwrap();
    let busy = lifeboat.run(&["sync"]).await;
    assert!(busy.code == 1 && busy.stderr.contains("another sync is running"), "{busy:?}");
    store.release_lease("sync", &namesake).await.unwrap();
    let dead = format!("{}:{}", lifeboat::lease::process_table(), 1 << 23);
    store.take_lease("sync", &dead, ttl, None).await.unwrap().unwrap();
    let taken_over = lifeboat.run(&["sync", "--json"]).await;
    assert_eq!(taken_over.code, 0, "{taken_over:?}");
    assert_eq!(taken_over.json()["report"]["present"], 1, "the admin, listed again");
}

/// Emails the registry holds, all accounts together.
async fn emails_in(store: &lifeboat::registry::Registry) -> i64 {
    store.contact_counts().await.unwrap().iter().map(|(_, count)| count).sum()
}

/// The first sync of a big server reads every account's emails at a share
/// of Synapse's time, which can take hours: Ctrl-C stops it keeping what it
/// read, and the next sync reads only the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_stopped_during_the_email_import_keeps_what_it_read_and_the_next_reads_only_the_rest() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let people = 120;
    let prefix = unique("reader");
    let token = synapse.admin_token();
    let localpart = |n: usize| format!("{prefix}-{n:03}");
    synapse
        .create_accounts(people, localpart, |n| {
            serde_json::json!({"threepids": [{"medium": "email", "address": format!("{}@example.org", localpart(n))}]})
        })
        .await;
    // Two calls at a time, paced to 2% of Synapse's time: the import takes
    // a minute or more, so the stop lands in it.
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{token}\"\n\n\
         [registry]\nurl = \"{}\"\n\n[sync]\npage_size = 500\ndetails_concurrency = 2\n\n\
         [watch]\nmax_synapse_share = 0.02\n",
        synapse.url,
        synapse.server_name,
        registry.url()
    ));
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();

    let first = lifeboat.spawn_captured(&["sync", "--json"]);
    // Answers are written a batch at a time, so Synapse's log shows the
    // reading first.
    let details_asked = format!("/_synapse/admin/v2/users/%40{prefix}");
    crate::harness::eventually("some details read", Duration::from_secs(120), || async {
        synapse.log().matches(&details_asked).count() >= 10
    })
    .await;
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGINT) };
    let output = tokio::time::timeout(Duration::from_secs(30), first.wait_with_output())
        .await
        .expect("Ctrl-C stops the sync promptly")
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("run `lifeboat sync` again"), "{stderr}");
    assert!(!stderr.contains("paced to"), "no note about pacing for a small server: {stderr}");
    let stopped: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stopped["stopped"], true, "{stopped}");
    assert_eq!(stopped["details_due"], people + 1, "everyone and the admin: {stopped}");
    let read_first = stopped["details_fetched"].as_u64().unwrap();
    assert!(read_first > 0 && read_first <= people as u64, "stopped part-way: {stopped}");
    assert_eq!(emails_in(&store).await, stopped["emails_imported"].as_i64().unwrap(), "what it read is kept");
    let ttl = 60_000;
    assert!(store.take_lease("sync", "test", ttl, None).await.unwrap().is_ok(), "the stopped sync let go of its lease");
    store.release_lease("sync", "test").await.unwrap();

    let rerun = lifeboat.run(&["sync", "--json", "--full-speed"]).await;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let rest = rerun.json();
    assert_eq!(rest["stopped"], false);
    assert_eq!(rest["details_due"].as_u64(), Some(people as u64 + 1 - read_first), "only the rest: {rest}");
    assert_eq!(rest["details_fetched"], rest["details_due"], "{rest}");
    assert_eq!(emails_in(&store).await, people as i64, "every email imported");
    assert_eq!(
        stopped["emails_imported"].as_i64().unwrap() + rest["emails_imported"].as_i64().unwrap(),
        people as i64,
        "none read twice"
    );
}

/// The rooms part of a sync is paced like the accounts, so it can be stopped
/// between its calls; a stop keeps the room registry as it was (a room
/// listing counts only whole), for the next sync to read.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_stopped_while_reading_rooms_leaves_the_room_registry_unchanged() {
    use lifeboat::rooms::{RoomsError, sync_rooms};
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    synapse.client(&synapse.register(&unique("roomy"))).create_room(&[], false).await;
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let token = Some(synapse.admin_token().into());
    let client = lifeboat::synapse::SynapseClient::new(synapse.url.parse().unwrap(), token, Duration::from_secs(10), 0);
    let (day, half) = (Duration::from_secs(86_400), Some(0.5));

    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    let stopped = sync_rooms(&store, &client, &synapse.server_name, day, half, &stop).await;
    assert!(matches!(stopped, Err(RoomsError::Stopped)), "{stopped:?}");
    assert!(store.room_fingerprints().await.unwrap().is_empty(), "nothing of a stopped room sync was kept");

    let read = sync_rooms(&store, &client, &synapse.server_name, day, half, &Default::default()).await.unwrap();
    assert!(read.listed >= 1 && read.refreshed >= 1, "{read:?}");
    assert_eq!(store.room_fingerprints().await.unwrap().len() as u64, read.listed);
}

/// Listing requests Synapse has logged so far.
fn listing_requests(synapse: &TestSynapse) -> usize {
    synapse.log().matches("/_synapse/admin/v2/users?").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_watcher_round_reads_the_account_listing_once() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    for name in ["ann", "ben", "cat"] {
        synapse.create_user(&unique(name), &[]).await;
    }
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let before = listing_requests(&synapse);
    assert_eq!(lifeboat.run(&["check"]).await.code, 0);
    let per_listing = listing_requests(&synapse) - before;
    assert!(per_listing >= 2, "page_size 2 makes a listing of several pages: {per_listing}");

    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!("{config}\n[watch]\ninterval = \"1s\"\n"));
    let started = listing_requests(&synapse);
    let mut serve = lifeboat.spawn_serve();
    let rounds = |log: String| log.matches("watcher round").count();
    crate::harness::eventually("four watcher rounds", Duration::from_secs(60), || async {
        rounds(lifeboat.serve_log()) >= 4
    })
    .await;
    serve.kill().await.unwrap();
    let (rounds, listed) = (rounds(lifeboat.serve_log()), listing_requests(&synapse) - started);
    // The round in flight when serve was stopped may have listed too.
    assert!(listed <= (rounds + 1) * per_listing, "{listed} listing requests in {rounds} rounds of {per_listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wipe_is_seen_by_the_probe_within_seconds_though_the_next_listing_is_minutes_away() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = crate::harness::TestSmtp::start(None);
    synapse.create_user(&unique("ann"), &[]).await;
    let lifeboat = lifeboat_for(&synapse, &registry);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!(
        "{config}\n[watch]\ninterval = \"10m\"\nprobe_interval = \"1s\"\n\n\
         [email]\nsmtp_url = \"{}\"\nfrom = \"lifeboat@example.org\"\n\n[alerts]\nemail = [\"oncall@example.org\"]\n",
        smtp.smtp_url()
    ));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let mut serve = lifeboat.spawn_serve();
    crate::harness::eventually("the first round", Duration::from_secs(60), || async {
        lifeboat.serve_log().contains("watcher round")
    })
    .await;

    synapse.wipe();
    crate::harness::eventually("the reset alert", Duration::from_secs(60), || async {
        smtp.messages_to("oncall@example.org")
            .iter()
            .any(|mail| mail.subject.as_deref().unwrap_or_default().contains("suspected database reset"))
    })
    .await;
    assert!(lifeboat.serve_log().contains("reading the listing now"), "{}", lifeboat.serve_log());
    serve.kill().await.unwrap();
}

/// A token that is rejected, and that the round could not get past (no
/// shared secret to recover with), is no news to the next probe: rounds
/// stay `watch.interval` apart instead of one every probe.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_last_round_found_rejected_does_not_start_a_round_every_probe() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    synapse.create_user(&unique("ann"), &[]).await;
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let dead = config.replace(&synapse.admin_token(), "syt_revoked_token");
    lifeboat.write_config(&format!("{dead}\n[watch]\ninterval = \"10m\"\nprobe_interval = \"1s\"\n"));
    let mut serve = lifeboat.spawn_serve();
    crate::harness::eventually("the first round", Duration::from_secs(60), || async {
        lifeboat.serve_log().contains("watcher round")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    serve.kill().await.unwrap();
    let log = lifeboat.serve_log();
    assert_eq!(log.matches("watcher round").count(), 1, "{log}");
}

/// A display name is anyone's to choose: `users show` prints it on one
/// line, without the escape sequences that would rewrite the admin's
/// terminal or set its clipboard.
#[tokio::test(flavor = "multi_thread")]
async fn a_display_name_with_terminal_escapes_is_shown_without_them() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("eve");
    synapse.create_user(&person, &[]).await;
    let name = "Eve\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\nroot";
    let path = format!("/_synapse/admin/v2/users/{}", synapse.user_id(&person));
    let (status, body) =
        synapse.admin_request(reqwest::Method::PUT, &path, Some(serde_json::json!({"displayname": name}))).await;
    assert_eq!(status, 200, "{body}");
    let lifeboat = lifeboat_for(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&person)]).await;
    let line = shown.stdout.lines().find(|line| line.contains("display name:")).unwrap_or_default();
    assert!(line.contains("Eve") && line.ends_with("root"), "{shown:?}");
    assert!(!shown.stdout.contains('\u{1b}') && !shown.stdout.contains('\u{7}'), "{shown:?}");
}
