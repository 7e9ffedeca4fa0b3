//! `lifeboat serve` with its admin-room bot, watcher and delivery worker,
//! against a real Synapse and a real SMTP server.

use std::time::Duration;

use crate::harness::smtp::ReceivedMail;
use crate::harness::{
    Lifeboat, MatrixUser, RoomSpec, TestDatabase, TestSmtp, TestSynapse, eventually, free_port, unique,
};

const ALERTS_TO: &str = "oncall@example.org";

/// A Synapse with an admin of lifeboat (alice) in an admin room, the bot's
/// account, lifeboat configured for all of it, and (once started) serve.
pub(crate) struct Rig {
    pub(crate) synapse: TestSynapse,
    pub(crate) smtp: TestSmtp,
    registry: TestDatabase,
    pub(crate) lifeboat: Lifeboat,
    pub(crate) alice_localpart: String,
    pub(crate) alice_password: String,
    pub(crate) alice: MatrixUser,
    pub(crate) bot: String,
    pub(crate) admin_room: String,
    pub(crate) web: String,
    /// The operator's address for `/metrics`.
    pub(crate) metrics: String,
    serve: Option<tokio::process::Child>,
}

impl Rig {
    /// The registry serve and the CLI share.
    pub(crate) fn registry_url(&self) -> String {
        self.registry.url()
    }

    /// `people`: accounts (localpart, email) made before the first sync.
    pub(crate) async fn start(smtp: TestSmtp, people: &[(String, String)]) -> Rig {
        Self::start_with(smtp, people, false).await
    }

    /// With an end-to-end encrypted admin room.
    async fn start_encrypted(smtp: TestSmtp) -> Rig {
        Self::start_with(smtp, &[], true).await
    }

    async fn start_with(smtp: TestSmtp, people: &[(String, String)], encrypted: bool) -> Rig {
        let synapse = TestSynapse::start();
        let registry = TestDatabase::sqlite();
        let bot = synapse.register("lifeboat");
        let alice_localpart = unique("alice");
        let alice_account = synapse.register(&alice_localpart);
        let alice = MatrixUser::new(&synapse.url, &alice_account.user_id, &alice_account.access_token);
        let admin_room = alice.create_room_with(&[&bot.user_id], false, encrypted).await;
        for (localpart, email) in people {
            synapse.create_user(localpart, &[email]).await;
        }
        let port = free_port();
        let web = format!("http://127.0.0.1:{port}");
        let metrics_port = free_port();
        let lifeboat = Lifeboat::with_config(&format!(
            "[homeserver]\nurl = \"{url}\"\nserver_name = \"{server}\"\nadmin_token = \"{admin}\"\n\
             registration_shared_secret = \"{secret}\"\nretries = 1\ntimeout = \"10s\"\n\n\
             [registry]\nurl = \"{registry}\"\n\n\
             [email]\nsmtp_url = \"{smtp}\"\nfrom = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n\
             [bot]\nuser_id = \"{bot_id}\"\npassword = \"{bot_password}\"\nadmin_room = \"{admin_room}\"\n\
             admins = [\"{alice_id}\"]\nstore_path = \"bot-store\"\n\n\
             [web]\nbind = \"127.0.0.1:{port}\"\npublic_url = \"{web}\"\n\n\
             [metrics]\nbind = \"127.0.0.1:{metrics_port}\"\n\n\
             [watch]\ninterval = \"2s\"\n\n[alerts]\nemail = [\"{ALERTS_TO}\"]\n",
            url = synapse.url,
            server = synapse.server_name,
            admin = synapse.admin_token(),
            secret = synapse.shared_secret,
            registry = registry.url(),
            smtp = smtp.smtp_url(),
            bot_id = bot.user_id,
            bot_password = bot.password.as_deref().expect("the harness returns the password"),
            alice_id = alice_account.user_id,
        ));
        let sync = lifeboat.run(&["sync"]).await;
        assert_eq!(sync.code, 0, "{sync:?}");
        Rig {
            synapse,
            smtp,
            registry,
            lifeboat,
            alice_localpart,
            alice_password: alice_account.password.clone().expect("the harness returns the password"),
            alice,
            bot: bot.user_id,
            admin_room,
            web,
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            serve: None,
        }
    }

    /// Registers `localpart` on Synapse and syncs it into the registry: an
    /// account lifeboat knows as its person's.
    pub(crate) async fn known_person(&self, localpart: &str) -> MatrixUser {
        let account = self.synapse.register(localpart);
        assert_eq!(self.lifeboat.run(&["sync"]).await.code, 0);
        MatrixUser::new(&self.synapse.url, &account.user_id, &account.access_token)
    }

    /// Starts serve and waits until the bot has joined the admin room.
    /// `person` opens a DM with the bot and waits until the bot is in it.
    pub(crate) async fn dm_with_the_bot(&self, person: &MatrixUser) -> String {
        let dm = person.create_room(&[&self.bot], true).await;
        eventually("the bot joins the DM", Duration::from_secs(30), || async {
            person.membership_of(&dm, &self.bot).await.as_deref() == Some("join")
        })
        .await;
        dm
    }

    pub(crate) async fn serve(&mut self) {
        // A bot that was in the admin room before is still a member: this
        // run's own login is what says it is up.
        let logins_before = self.lifeboat.serve_log().matches("bot logged in").count();
        self.serve = Some(self.lifeboat.spawn_serve());
        let (alice, room, bot) = (&self.alice, &self.admin_room, &self.bot);
        let joined = tokio::time::timeout(Duration::from_secs(60), async {
            while alice.membership_of(room, bot).await.as_deref() != Some("join") {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
        assert!(joined.is_ok(), "the bot did not join the admin room; serve log:\n{}", self.lifeboat.serve_log());
        logged_more_than(&self.lifeboat, "bot logged in", logins_before).await;
    }

    /// After a wipe: waits until lifeboat holds alice's ID, gives it back to
    /// her on the lifeboat host (`holds claim`, the password on stdin), and
    /// signs her in with it.
    pub(crate) async fn alice_takes_her_id_back(&self) -> MatrixUser {
        let alice_id = self.synapse.user_id(&self.alice_localpart);
        let lifeboat = &self.lifeboat;
        eventually("alice's ID is held", Duration::from_secs(120), || async {
            let held = lifeboat.run(&["users", "show", &alice_id, "--json"]).await;
            held.code == 0 && held.json()["state"] == "held"
        })
        .await;
        // "held" covers a hold still under way; the watcher alerts before
        // it holds, so wait for the lock (a claim before it would be undone
        // by the hold's lock).
        let synapse = &self.synapse;
        synapse.register_admin(&unique("root"));
        eventually("alice's hold is locked", Duration::from_secs(60), || async {
            synapse.user(&self.alice_localpart).await["locked"] == true
        })
        .await;
        let password = "alice takes the helm";
        let claimed = self.lifeboat.run_with_input(&["holds", "claim", &alice_id], &format!("{password}\n")).await;
        assert_eq!(claimed.code, 0, "{claimed:?}");
        let (status, login) = self.synapse.login(&self.alice_localpart, password).await;
        assert_eq!(status, 200, "alice signs in with her ID again: {login}");
        MatrixUser::new(&self.synapse.url, &alice_id, login["access_token"].as_str().unwrap())
    }

    /// Starts serve without waiting for the bot (after a wipe its old admin
    /// room is gone).
    pub(crate) fn serve_in_background(&mut self) {
        self.serve = Some(self.lifeboat.spawn_serve());
    }

    /// The running serve's resident memory, in KiB (from /proc).
    fn serve_rss_kib(&self) -> u64 {
        let pid = self.serve.as_ref().and_then(|child| child.id()).expect("serve is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub(crate) async fn say(&self, text: &str) {
        self.alice.send(&self.admin_room, text).await;
    }

    /// `!lifeboat sync` until the bot says it synced (serve's watcher may
    /// hold the sync lease for a moment); the reply.
    pub(crate) async fn sync_by_bot(&self) -> String {
        for _ in 0..5 {
            self.say("!lifeboat sync").await;
            let synced = self.alice.find_message(&self.admin_room, &self.bot, "Synced:", Duration::from_secs(20)).await;
            if let Some(synced) = synced {
                return synced;
            }
        }
        panic!("the bot did not sync\nserve log:\n{}", self.lifeboat.serve_log())
    }

    pub(crate) async fn reply_containing(&self, needle: &str) -> String {
        let found = self.alice.find_message(&self.admin_room, &self.bot, needle, Duration::from_secs(90)).await;
        if let Some(found) = found {
            return found;
        }
        let got = self.alice.messages_from(&self.admin_room, &self.bot).await;
        panic!("no reply containing {needle:?}; replies {got:?}\nserve log:\n{}", self.lifeboat.serve_log())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        Self::fetch(&self.web, path).await
    }

    pub(crate) async fn fetch(base: &str, path: &str) -> (u16, String) {
        let response =
            reqwest::Client::builder().no_proxy().build().unwrap().get(format!("{base}{path}")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Deletes the bot's device through the admin API (its token dies with
    /// it), and waits until the bot logged in again on a new one.
    async fn delete_the_bots_device(&self) {
        let logins = self.lifeboat.serve_log().matches("bot logged in").count();
        let store = lifeboat::registry::Registry::connect(&self.registry_url()).await.unwrap();
        let session: serde_json::Value =
            serde_json::from_str(&store.setting("bot_session").await.unwrap().unwrap()).unwrap();
        store.close().await;
        let device = session["device_id"].as_str().unwrap();
        let path = format!("/_synapse/admin/v2/users/{}/devices/{device}", self.bot);
        assert_eq!(self.synapse.admin_request(reqwest::Method::DELETE, &path, None).await.0, 200);
        logged_more_than(&self.lifeboat, "bot logged in", logins).await;
    }

    /// Freezes serve (SIGSTOP) or lets it go on (SIGCONT), as a host that
    /// stalls or a process swapped out would.
    fn pause_serve(&self, paused: bool) {
        let pid = self.serve.as_ref().and_then(|child| child.id()).expect("serve is running") as i32;
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Sends SIGTERM and waits for serve to exit; returns its exit code.
    async fn stop_serve(&mut self) -> Option<i32> {
        let mut child = self.serve.take().expect("serve is running");
        let pid = child.id().expect("serve has a pid") as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
            .await
            .expect("serve stops within its shutdown grace after SIGTERM")
            .unwrap();
        status.code()
    }
}

pub(crate) fn people(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|n| {
            let localpart = unique(&format!("person{n}-"));
            let email = format!("{localpart}@example.org");
            (localpart, email)
        })
        .collect()
}

async fn present_accounts(lifeboat: &Lifeboat) -> usize {
    let list = lifeboat.run(&["users", "list", "--json"]).await;
    list.json().as_array().unwrap().iter().filter(|account| account["state"] == "present").count()
}

/// Every line of a Prometheus text exposition: a comment, or
/// `name{labels} value` with a number (or NaN) as the value.
fn assert_prometheus_text(text: &str) {
    for line in text.lines().filter(|line| !line.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        assert!(value == "NaN" || value.parse::<f64>().is_ok(), "not a sample value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "not a metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line:?}");
        }
    }
}

/// A `[bot]` with no password and no access token, on a homeserver that
/// was not wiped, says what to set: lifeboat re-creates its own account
/// only after a wipe, so recovery cannot stand in for them.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_without_credentials_says_which_to_set() {
    let rig = Rig::start(TestSmtp::start(None), &[]).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let without: Vec<&str> = config.lines().filter(|line| !line.starts_with("password = ")).collect();
    rig.lifeboat.write_config(&without.join("\n"));
    let _serve = rig.lifeboat.spawn_serve();
    let lifeboat = &rig.lifeboat;
    eventually("serve names the missing setting", Duration::from_secs(60), || async {
        lifeboat.serve_log().contains("set bot.password or bot.access_token to working credentials")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_gets_the_status_in_the_admin_room_and_a_stranger_gets_nothing_back() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory_account = rig.synapse.register(&unique("mallory"));
    let mallory = MatrixUser::new(&rig.synapse.url, &mallory_account.user_id, &mallory_account.access_token);
    rig.alice.invite(&rig.admin_room, &mallory.user_id).await;
    mallory.join(&rig.admin_room).await;
    // Mallory is in the registry before serve starts, so the count is stable.
    assert_eq!(rig.lifeboat.run(&["sync"]).await.code, 0);
    rig.serve().await;

    rig.say("!lifeboat status").await;
    let status = rig.reply_containing("Registry:").await;
    let present = present_accounts(&rig.lifeboat).await;
    assert!(status.contains(&format!("{present} accounts present")), "{status}");
    assert!(status.contains("Open incidents:** none"), "{status}");

    mallory.send(&rig.admin_room, "!lifeboat status").await;
    mallory.send(&rig.admin_room, "!lifeboat incident list").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert_eq!(replies.iter().filter(|body| body.contains("Registry:")).count(), 1, "{replies:?}");
    assert!(!replies.iter().any(|body| body.contains("No incidents")), "mallory got an answer: {replies:?}");

    let elsewhere = mallory.create_room(&[&rig.bot], false).await;
    eventually("the bot declines mallory's invite", Duration::from_secs(30), || async {
        mallory.membership_of(&elsewhere, &rig.bot).await.as_deref() == Some("leave")
    })
    .await;

    rig.say("!lifeboat incident show seven").await;
    let usage = rig.reply_containing("Usage:").await;
    assert!(usage.contains("incident show <id>"), "{usage}");

    let (code, health) = rig.get("/healthz").await;
    assert_eq!((code, health.trim()), (200, "ok"));
    assert_eq!(rig.get("/metrics").await.0, 404, "the counts are not on the public address");
    let (code, metrics) = Rig::fetch(&rig.metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert_prometheus_text(&metrics);
    assert!(metrics.contains(&format!("lifeboat_accounts{{state=\"present\"}} {present}\n")), "{metrics}");
    assert!(metrics.contains("lifeboat_incidents_open 0\n"), "{metrics}");
    assert!(metrics.contains("lifeboat_lost_ids_not_held 0\n"), "{metrics}");
    assert!(metrics.contains("lifeboat_tokens_withheld 0\n"), "{metrics}");
    assert!(metrics.contains("lifeboat_verdict{verdict=\"ok\"} 1\n"), "{metrics}");
    // Every state has its series from the start, so a graph of held IDs
    // does not begin only at the first hold.
    for state in lifeboat::registry::AccountState::ALL {
        assert!(metrics.contains(&format!("lifeboat_accounts{{state=\"{}\"}} ", state.as_str())), "{metrics}");
    }
    assert!(metrics.contains("lifeboat_verdict{verdict=\"loss\"} 0\n"), "{metrics}");

    assert_eq!(rig.stop_serve().await, Some(0), "serve exits cleanly on SIGTERM:\n{}", rig.lifeboat.serve_log());
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_from_the_bot_sends_nothing_until_an_admin_confirms() {
    let people = people(3);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "# What happened\n\nA drill.\n").unwrap();
    let open = rig
        .lifeboat
        .run(&["incident", "open", "--title", "Drill", "--postmortem", "postmortem.md", "--affected", "all", "--json"])
        .await;
    assert_eq!(open.code, 0, "{open:?}");
    let id = open.json()["id"].to_string();
    rig.serve().await;

    rig.say(&format!("!lifeboat notify {id}")).await;
    let dry_run = rig.reply_containing("To send, reply").await;
    assert!(dry_run.contains("3 emails"), "{dry_run}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.smtp.count(), 0, "a dry run in the room sent mail");

    rig.say(&format!("!lifeboat notify {id} confirm")).await;
    let done = rig.reply_containing("sent,").await;
    // The emails, and DMs to the affected accounts that still exist.
    assert!(done.contains(" sent, 0 failed, 0 skipped, 0 pending"), "{done}");
    for (_, email) in &people {
        assert_eq!(rig.smtp.messages_to(email).len(), 1, "{email} gets exactly one notice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_without_a_recent_dry_run_is_refused() {
    let people = people(1);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "Lost.\n").unwrap();
    let open = rig
        .lifeboat
        .run(&["incident", "open", "--title", "T", "--postmortem", "postmortem.md", "--affected", "all", "--json"])
        .await;
    let id = open.json()["id"].to_string();
    rig.serve().await;
    rig.say(&format!("!lifeboat notify {id} confirm")).await;
    let refused = rig.reply_containing("no recent dry run").await;
    assert!(refused.contains(&format!("notify {id}")), "{refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.smtp.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_wipe_the_bot_comes_back_in_a_new_admin_room_and_the_alert_is_mailed() {
    let mut rig = Rig::start(TestSmtp::start(None), &people(2)).await;
    let kitchen = rig.alice.create_room(&[], false).await;
    rig.serve().await;
    let lifeboat = &rig.lifeboat;
    eventually("the watcher lists alice's room", Duration::from_secs(60), || async {
        lifeboat.run(&["rooms", "list"]).await.stdout.contains(&kitchen)
    })
    .await;

    rig.synapse.wipe();
    let smtp = &rig.smtp;
    eventually("an alert email about the reset", Duration::from_secs(90), || async {
        smtp.messages_to(ALERTS_TO)
            .iter()
            .any(|mail| mail.subject.as_deref().unwrap_or_default().contains("suspected database reset"))
    })
    .await;

    // The admin's ID was held for her; she takes it back on the lifeboat
    // host, and the bot invites her to its new room.
    let alice = rig.alice_takes_her_id_back().await;
    let mut invited = Vec::new();
    for _ in 0..240 {
        invited = alice.invites().await;
        if !invited.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        invited.len(),
        1,
        "one invite to a new admin room; serve log:\n{}\nsynapse:\n{}",
        rig.lifeboat.serve_log(),
        rig.synapse
            .log()
            .lines()
            .filter(|l| l.contains("invite") || l.contains("createRoom") || l.contains("register"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let room = &invited[0];
    assert_ne!(room, &rig.admin_room);
    alice.join(room).await;
    alice.wait_for_message(room, &rig.bot, "lifeboat is back", Duration::from_secs(30)).await;
    alice.wait_for_message(room, &rig.bot, "Suspected database reset", Duration::from_secs(30)).await;

    // And it obeys there.
    alice.send(room, "!lifeboat status").await;
    let status = alice.wait_for_message(room, &rig.bot, "Registry:", Duration::from_secs(60)).await;
    assert!(status.contains("suspected_reset") || status.contains("missing"), "{status}");

    // A room lifeboat makes again has two members (it, and alice back) until
    // its others come back: no DM, so nothing of alice's is answered there.
    let remade = rig.lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(remade.code, 0, "{remade:?}");
    let listed = rig.lifeboat.run(&["rooms", "list", "--json"]).await.json();
    let new_kitchen =
        listed.as_array().unwrap().iter().find(|room| room["room_id"] == kitchen.as_str()).unwrap()["recreated_as"]
            .as_str()
            .unwrap()
            .to_owned();
    alice.join(&new_kitchen).await;
    let before = alice.messages_from(&new_kitchen, &rig.bot).await;
    alice.send(&new_kitchen, "contact list").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = alice.messages_from(&new_kitchen, &rig.bot).await;
    assert_eq!(after, before, "no contact command answered there");
    let alerts = rig.smtp.messages_to(ALERTS_TO);
    assert_eq!(
        alerts
            .iter()
            .filter(|mail| mail.subject.as_deref().unwrap_or_default().contains("suspected database reset"))
            .count(),
        1,
        "one alert per change, not one per interval: {:?}",
        alerts.iter().map(|mail| mail.subject.clone()).collect::<Vec<_>>()
    );
    assert_eq!(rig.stop_serve().await, Some(0));
}

/// The mail server may be down when the homeserver fails: the alert email
/// waits in the outbox, through a restart of serve, until it goes out, once.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_email_that_could_not_go_out_waits_in_the_outbox_through_a_restart() {
    let mut rig = Rig::start(TestSmtp::start(Some(0)), &people(1)).await;
    rig.serve().await;

    rig.synapse.wipe();
    let lifeboat = &rig.lifeboat;
    eventually("the alert email to be deferred", Duration::from_secs(90), || async {
        lifeboat.serve_log().contains("message will be retried")
    })
    .await;
    assert!(rig.smtp.messages().is_empty(), "the mail server refused everything so far");
    assert_eq!(rig.stop_serve().await, Some(0));

    rig.smtp.heal();
    // The admin room went with the wipe: no waiting for the bot there.
    rig.serve = Some(rig.lifeboat.spawn_serve());
    let smtp = &rig.smtp;
    let is_reset_alert =
        |mail: &ReceivedMail| mail.subject.as_deref().unwrap_or_default().contains("suspected database reset");
    eventually("the alert email, sent after the restart", Duration::from_secs(60), || async {
        smtp.messages_to(ALERTS_TO).iter().any(is_reset_alert)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(smtp.messages_to(ALERTS_TO).iter().filter(|mail| is_reset_alert(mail)).count(), 1, "sent once");
    assert_eq!(rig.stop_serve().await, Some(0));
}

/// One account cannot fill the bot's sync with rooms by inviting it to DM
/// after DM: the bot joins a few and declines the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_inviting_the_bot_to_dm_after_dm_gets_a_few_rooms_not_all() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    // Known before serve starts: a sync beside its watcher may find it busy.
    let oscar = rig.known_person(&unique("oscar")).await;
    let eve = rig.known_person(&unique("eve")).await;
    rig.serve().await;
    let mut joined = 0;
    for _ in 0..5 {
        let dm = mallory.create_room(&[&rig.bot], true).await;
        eventually("the bot answers the invite", Duration::from_secs(30), || async {
            mallory.membership_of(&dm, &rig.bot).await.is_some_and(|state| state != "invite")
        })
        .await;
        if mallory.membership_of(&dm, &rig.bot).await.as_deref() == Some("join") {
            joined += 1;
            // Leaving frees no place: the bot stays in the room for good.
            let leave = format!("/_matrix/client/v3/rooms/{dm}/leave");
            mallory.try_call(reqwest::Method::POST, &leave, Some(serde_json::json!({}))).await;
        }
    }
    assert_eq!(joined, 3, "{}", rig.lifeboat.serve_log());

    // Five invites at once, that one sync brings together: three joined.
    let invited = [rig.bot.as_str()];
    let burst: Vec<String> = futures::future::join_all((0..5).map(|_| oscar.create_room(&invited, true))).await;
    let oscar = &oscar;
    eventually("the bot answers every invite", Duration::from_secs(60), || async {
        let states = futures::future::join_all(burst.iter().map(|dm| oscar.membership_of(dm, &rig.bot))).await;
        states.iter().all(|state| state.as_deref().is_some_and(|state| state != "invite"))
    })
    .await;
    let states = futures::future::join_all(burst.iter().map(|dm| oscar.membership_of(dm, &rig.bot))).await;
    let joined = states.iter().filter(|state| state.as_deref() == Some("join")).count();
    assert_eq!(joined, 3, "{states:?}");

    // A room someone else made (a big public one, say), with an invite
    // marked direct: not Mallory's to bring the bot into.
    let hall = eve.create_room(&[&mallory.user_id], false).await;
    mallory.join(&hall).await;
    let direct_invite = serde_json::json!({"membership": "invite", "is_direct": true});
    mallory.set_state(&hall, "m.room.member", &rig.bot, direct_invite).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_ne!(mallory.membership_of(&hall, &rig.bot).await.as_deref(), Some("join"), "{}", rig.lifeboat.serve_log());
}

/// A DM the bot was brought into is left once it is no longer one (a
/// third member invited, or the room opened to anyone), so it is not
/// carried in every sync. Left, it still counts among its person's few.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_leaves_a_dm_that_is_no_longer_one_and_still_counts_it() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob = rig.known_person(&unique("bob")).await;
    rig.serve().await;
    let eve = rig.synapse.register(&unique("eve"));
    let crowded = rig.dm_with_the_bot(&bob).await;
    bob.invite(&crowded, &eve.user_id).await;
    let opened = rig.dm_with_the_bot(&bob).await;
    bob.set_state(&opened, "m.room.join_rules", "", serde_json::json!({"join_rule": "public"})).await;
    for room in [&crowded, &opened] {
        eventually("the bot leaves a DM that is no longer one", Duration::from_secs(30), || async {
            bob.membership_of(room, &rig.bot).await.as_deref() == Some("leave")
        })
        .await;
    }

    let kept = rig.dm_with_the_bot(&bob).await;
    bob.send(&kept, "contact list").await;
    bob.wait_for_message(&kept, &rig.bot, "You have no contact addresses yet", Duration::from_secs(30)).await;
    // Nor does banning the bot from it free a place.
    let ban = format!("/_matrix/client/v3/rooms/{kept}/ban");
    let (status, body) = bob.try_call(reqwest::Method::POST, &ban, Some(serde_json::json!({"user_id": rig.bot}))).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let one_too_many = bob.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={one_too_many}"), 0).await;
    let log = rig.lifeboat.serve_log();
    let declined = log.lines().find(|line| line.contains(&format!("room={one_too_many}"))).unwrap_or_default();
    assert!(declined.contains("as many DM rooms"), "{declined}");
}

/// DMs are for accounts lifeboat knows as their person's: an invite from
/// an account no listing has seen is declined, and asks for a listing, so
/// the next invite is taken. Once the account is not the one the registry
/// knows (registered again after a loss), the bot tells it nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_takes_a_dm_only_from_an_account_a_listing_saw_as_its_persons() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    // No listing but those asked for.
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    rig.lifeboat.write_config(&config.replace("interval = \"2s\"", "interval = \"1h\"\nprobe_interval = \"0s\""));
    rig.serve().await;
    let account = rig.synapse.register(&unique("newcomer"));
    let newcomer = MatrixUser::new(&rig.synapse.url, &account.user_id, &account.access_token);
    let first = newcomer.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={first}"), 0).await;
    logged_more_than(&rig.lifeboat, "the bot asked for a listing", 0).await;

    let invited = [rig.bot.as_str()];
    let dm = dm_taken_once_listed(&rig, &newcomer, || newcomer.create_room(&invited, true)).await;
    newcomer.send(&dm, "contact list").await;
    newcomer.wait_for_message(&dm, &rig.bot, "You have no contact addresses yet", Duration::from_secs(30)).await;

    // The registry's account was made a minute before the one on Synapse now.
    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let older = sqlx::query("UPDATE accounts SET synapse_created_at = synapse_created_at - 60000 WHERE user_id = $1");
    assert_eq!(older.bind(&newcomer.user_id).execute(registry.pool()).await.unwrap().rows_affected(), 1);
    registry.close().await;
    newcomer.send(&dm, "contact list").await;
    newcomer.wait_for_message(&dm, &rig.bot, "not one I know", Duration::from_secs(30)).await;
}

/// The first of the DM rooms `make` makes for `person`, one after another,
/// that the bot takes: an account no listing has seen is declined until
/// the listing its invite asks for (at most every 30 s) has seen it.
async fn dm_taken_once_listed<F, Fut>(rig: &Rig, person: &MatrixUser, make: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    for _ in 0..15 {
        let room = make().await;
        eventually("the bot answers the invite", Duration::from_secs(30), || async {
            person.membership_of(&room, &rig.bot).await.is_some_and(|state| state != "invite")
        })
        .await;
        if person.membership_of(&room, &rig.bot).await.as_deref() == Some("join") {
            return room;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    panic!("the bot took no DM from {}:\n{}", person.user_id, rig.lifeboat.serve_log())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_verifies_a_contact_email_by_dm() {
    let bob_localpart = unique("bob");
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob = rig.known_person(&bob_localpart).await;
    // Known before serve starts: a sync beside its watcher may find it busy.
    let mallory = rig.known_person(&unique("mallory")).await;
    rig.serve().await;

    let dm = rig.dm_with_the_bot(&bob).await;
    let address = format!("{bob_localpart}@example.org");
    bob.send(&dm, &format!("contact add {address}")).await;
    bob.wait_for_message(&dm, &rig.bot, "I am mailing a code", Duration::from_secs(30)).await;
    let smtp = &rig.smtp;
    eventually("the code, mailed", Duration::from_secs(30), || async { !smtp.messages_to(&address).is_empty() }).await;
    let mail = rig.smtp.messages_to(&address).pop().expect("the code is mailed to the address");
    let code = mail.subject.unwrap().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    let text = mail.text.unwrap_or_default();
    assert!(text.contains("works for 30 minutes"), "as long as the bot's reply says: {text}");

    bob.send(&dm, "contact verify 000000x").await;
    bob.wait_for_message(&dm, &rig.bot, "not right", Duration::from_secs(30)).await;
    bob.send(&dm, &format!("contact verify {code}")).await;
    bob.wait_for_message(&dm, &rig.bot, "Confirmed", Duration::from_secs(30)).await;

    let shown = rig.lifeboat.run(&["users", "show", &bob.user_id, "--json"]).await;
    let contacts = shown.json()["contacts"].as_array().unwrap().clone();
    let contact = contacts.iter().find(|c| c["address"] == address.as_str()).expect("the contact is in the registry");
    assert!(contact["verified_at"].is_i64(), "{contact}");
    assert_eq!(contact["source"], "user");

    bob.send(&dm, "contact list").await;
    let listed = bob.wait_for_message(&dm, &rig.bot, "Your contacts", Duration::from_secs(30)).await;
    assert!(listed.contains(&address) && listed.contains("verified"), "{listed}");

    // A "DM" with a third member, invited (who could join and read the
    // history later): the bot answers nothing personal there, and leaves.
    let eve = rig.synapse.register(&unique("eve"));
    let crowded = bob.create_room(&[&rig.bot, &eve.user_id], true).await;
    eventually("the bot leaves the crowded room", Duration::from_secs(30), || async {
        bob.membership_of(&crowded, &rig.bot).await.as_deref() == Some("leave")
    })
    .await;

    // Mallory's room, with the bot in it and then only bob: she made it, so
    // she could read it again. The bot answers bob nothing there, and
    // leaves once it is no longer Mallory's DM.
    let lure = rig.dm_with_the_bot(&mallory).await;
    mallory.invite(&lure, &bob.user_id).await;
    bob.join(&lure).await;
    let leave = format!("/_matrix/client/v3/rooms/{lure}/leave");
    mallory.try_call(reqwest::Method::POST, &leave, Some(serde_json::json!({}))).await;
    bob.send(&lure, "contact list").await;
    eventually("the bot leaves mallory's room", Duration::from_secs(30), || async {
        bob.membership_of(&lure, &rig.bot).await.as_deref() == Some("leave")
    })
    .await;
    let answered = bob.find_message(&lure, &rig.bot, "Your contacts", Duration::from_secs(3)).await;
    assert_eq!(answered, None, "no contact list in mallory's room");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_stopped_by_sigterm_mid_delivery_finishes_after_restart_with_one_email_each() {
    let people = people(60);
    // 100 ms per message over one connection (six seconds in all): the send
    // is still under way when SIGTERM comes, however slow the test is to see it.
    let mut rig = Rig::start(TestSmtp::start_slow(100), &people).await;
    rig.lifeboat.set_env("LIFEBOAT__EMAIL__CONNECTIONS", "1");
    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "# Lost\n\nSorry.\n").unwrap();
    let open = rig
        .lifeboat
        .run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--affected", "all", "--json"])
        .await;
    let id = open.json()["id"].to_string();
    rig.serve().await;
    rig.say(&format!("!lifeboat notify {id}")).await;
    rig.reply_containing("To send, reply").await;
    rig.say(&format!("!lifeboat notify {id} confirm")).await;

    let smtp = &rig.smtp;
    eventually("the first notices go out", Duration::from_secs(60), || async { smtp.count() >= 10 }).await;
    assert_eq!(rig.stop_serve().await, Some(0), "serve exits cleanly:\n{}", rig.lifeboat.serve_log());
    let before_restart = rig.smtp.count();
    assert!(before_restart < people.len(), "SIGTERM came after every notice was sent; the test proves nothing");

    // The delivery worker picks up what was left; the bot keeps its device.
    rig.serve().await;
    let devices = || -> Vec<String> {
        let log = rig.lifeboat.serve_log();
        let logins = log.lines().filter(|line| line.contains("bot logged in"));
        logins.filter_map(|line| line.split("device=").nth(1)?.split_whitespace().next().map(str::to_owned)).collect()
    };
    eventually("the bot logs in again after the restart", Duration::from_secs(60), || async { devices().len() >= 2 })
        .await;
    let devices = devices();
    assert!(devices.iter().all(|device| *device == devices[0]), "one device across restarts: {devices:?}");
    let smtp = &rig.smtp;
    eventually("every notice is delivered after the restart", Duration::from_secs(90), || async {
        smtp.count() >= people.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, email) in &people {
        let mails = rig.smtp.messages_to(email);
        let copies: Vec<(u64, Option<String>)> = mails.iter().map(|mail| (mail.seq, mail.message_id.clone())).collect();
        assert_eq!(
            mails.len(),
            1,
            "{email} gets exactly one notice; copies (seq, id) {copies:?}, {before_restart} accepted before the restart:\n{}",
            rig.lifeboat.serve_log()
        );
    }
    // DMs to the accounts that still exist go out after the emails.
    let lifeboat = &rig.lifeboat;
    eventually("every delivery is done", Duration::from_secs(90), || async {
        let shown = lifeboat.run(&["incident", "show", &id, "--json"]).await.json();
        let deliveries = &shown["deliveries"];
        deliveries["pending"] == 0 && deliveries["sending"] == 0 && deliveries["failed"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drill_checks_that_the_bot_can_post_in_the_admin_room() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let before = rig.lifeboat.run(&["drill", "--json"]).await;
    let bot_line = |report: &serde_json::Value| {
        report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "bot").unwrap().clone()
    };
    let line = bot_line(&before.json());
    assert_eq!(line["status"], "warn", "no session before serve ran: {line}");
    assert!(line["detail"].as_str().unwrap().contains("start `lifeboat serve` once"), "{line}");

    rig.serve().await;
    // A room the bot once made for itself, before bot.admin_room was set:
    // the bot lives in the configured room now, so the drill posts there.
    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    registry.set_setting("bot_admin_room", &format!("!made-before:{}", rig.synapse.server_name)).await.unwrap();
    let drill = rig.lifeboat.run(&["drill", "--json"]).await;
    let line = bot_line(&drill.json());
    assert_eq!(line["status"], "ok", "{line}");
    rig.alice.wait_for_message(&rig.admin_room, &rig.bot, "lifeboat drill", Duration::from_secs(30)).await;
}

/// A real client of `user_id` with its own keys (its store lives in `store`).
async fn e2e_client(
    synapse: &TestSynapse,
    user_id: &str,
    password: &str,
    store: &std::path::Path,
) -> matrix_sdk::Client {
    let client =
        matrix_sdk::Client::builder().homeserver_url(&synapse.url).sqlite_store(store, None).build().await.unwrap();
    client.matrix_auth().login_username(user_id, password).await.unwrap();
    client.sync_once(matrix_sdk::config::SyncSettings::default()).await.unwrap();
    client
}

/// Sends `!lifeboat status` in the encrypted admin room from alice's real
/// client and waits for the bot's reply: whether it came encrypted, and
/// that alice could read it.
async fn status_in_encrypted_room(rig: &Rig, alice: &matrix_sdk::Client, nth: usize) -> bool {
    asked_in_encrypted_room(rig, alice, "!lifeboat status", "Registry:", nth).await
}

/// Alice sends `command` in the encrypted admin room; true once the bot has
/// posted `nth` replies containing `needle`, every one of them encrypted.
async fn asked_in_encrypted_room(
    rig: &Rig,
    alice: &matrix_sdk::Client,
    command: &str,
    needle: &str,
    nth: usize,
) -> bool {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let room_id: matrix_sdk::ruma::OwnedRoomId = rig.admin_room.as_str().try_into().unwrap();
    let room = alice.get_room(&room_id).expect("alice's client knows the admin room");
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted(), "the admin room is encrypted");
    room.send(RoomMessageEventContent::text_plain(command)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        alice.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.unwrap();
        let messages = room.messages(MessagesOptions::backward()).await.unwrap();
        let replies: Vec<bool> = messages
            .chunk
            .iter()
            .filter_map(|event| {
                let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).ok()?;
                let body = json["content"]["body"].as_str()?;
                (json["sender"] == rig.bot.as_str() && body.contains(needle)).then(|| event.encryption_info().is_some())
            })
            .collect();
        if replies.len() >= nth {
            return replies.iter().all(|encrypted| *encrypted);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no decryptable reply from the bot:\n{}",
            rig.lifeboat.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The bot's next session after Synapse was away runs on the same device,
/// so on the same client (see `dm::Devices`): its commands are still
/// answered once each, not once per session it has had.
#[tokio::test(flavor = "multi_thread")]
async fn after_synapse_was_away_the_bot_answers_each_command_once() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    rig.say("!lifeboat status").await;
    rig.reply_containing("Registry:").await;

    rig.synapse.stop();
    let sessions_ended = || rig.lifeboat.serve_log().matches("bot session ended").count();
    eventually("the bot's session ends while Synapse is away", Duration::from_secs(120), || async {
        sessions_ended() > 0
    })
    .await;
    rig.synapse.start_again();
    let logged_in = || rig.lifeboat.serve_log().matches("bot logged in").count();
    eventually("the bot logs in again", Duration::from_secs(120), || async { logged_in() > 1 }).await;

    rig.say("!lifeboat incident list").await;
    rig.reply_containing("No incidents.").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    let answers = replies.iter().filter(|reply| reply.contains("No incidents.")).count();
    let log = rig.lifeboat.serve_log();
    assert_eq!(answers, 1, "one answer to one command: {replies:?}\n{log}");
    let opened = log.matches("opened the Matrix client and crypto store").count();
    assert_eq!(opened, 1, "both sessions ran on the device's one client:\n{log}");

    // Its device logged out by an admin: a session on a new device syncs
    // the room afresh, and runs none of the commands again.
    rig.delete_the_bots_device().await;
    rig.say("!lifeboat help").await;
    rig.reply_containing("rooms recreate").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    let answered = |needle: &str| replies.iter().filter(|reply| reply.contains(needle)).count();
    let log = rig.lifeboat.serve_log();
    assert_eq!((answered("Registry:"), answered("No incidents.")), (1, 1), "{replies:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_of_a_burst_sent_while_the_bot_was_stalled_is_answered() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    rig.say("!lifeboat status").await;
    rig.reply_containing("Registry:").await;

    // More than the ten events a sync brings a room by default.
    rig.pause_serve(true);
    for _ in 0..15 {
        rig.say("!lifeboat incident list").await;
    }
    rig.pause_serve(false);
    let answers = || async {
        let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
        replies.iter().filter(|reply| reply.contains("No incidents.")).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answers().await < 15 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(answers().await, 15, "one answer each:\n{}", rig.lifeboat.serve_log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_cut_off_by_more_messages_than_a_sync_brings_is_owned_up_to() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    rig.say("!lifeboat status").await;
    rig.reply_containing("Registry:").await;

    rig.pause_serve(true);
    // The first may still go out in the sync the bot was waiting on.
    rig.say("good morning").await;
    rig.say("!lifeboat incident list").await;
    for n in 0..100 {
        rig.say(&format!("chatter {n}")).await;
    }
    rig.pause_serve(false);
    rig.reply_containing("send again any command that got no answer").await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!replies.iter().any(|reply| reply.contains("No incidents.")), "it was cut off: {replies:?}");
}

/// A new device syncs the admin room afresh: its last 100 events, all
/// newer than serve's start, and none unread by the device before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_device_rereading_the_admin_rooms_history_says_nothing_went_unread() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    for n in 0..110 {
        rig.say(&format!("chatter {n}")).await;
    }
    rig.say("!lifeboat status").await;
    rig.reply_containing("Registry:").await;

    rig.delete_the_bots_device().await;
    rig.say("!lifeboat incident list").await;
    rig.reply_containing("No incidents.").await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!replies.iter().any(|reply| reply.contains("send again")), "{replies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_and_replies_work_in_an_end_to_end_encrypted_admin_room() {
    let mut rig = Rig::start_encrypted(TestSmtp::start(None)).await;
    rig.serve().await;
    let store = tempfile::tempdir().unwrap();
    let alice = e2e_client(&rig.synapse, &rig.alice.user_id, &rig.alice_password, store.path()).await;
    assert!(status_in_encrypted_room(&rig, &alice, 1).await, "the bot's reply was encrypted");
}

/// The bot on `bot.access_token` (so the notice DMs send from its device)
/// with `encrypted_notices`; Ann is a known account with a password. Ann's
/// localpart, and the device.
async fn bot_device_sends_encrypted_notices(rig: &Rig) -> (String, String) {
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let bot_section = config.find("[bot]").unwrap();
    let password_line = bot_section + config[bot_section..].find("password = \"").unwrap();
    let line_end = password_line + config[password_line..].find('\n').unwrap();
    let password = config[password_line..line_end].trim_start_matches("password = \"").trim_end_matches('"');
    let bot_localpart = rig.bot.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let (status, login) = rig.synapse.login(&bot_localpart, password).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    rig.lifeboat.write_config(&format!(
        "{}access_token = \"{token}\"\nencrypted_notices = true{}",
        &config[..password_line],
        &config[line_end..]
    ));
    let ann = unique("ann");
    rig.synapse.create_user(&ann, &[]).await;
    assert_eq!(rig.lifeboat.run(&["sync"]).await.code, 0);
    (ann, login["device_id"].as_str().unwrap().to_owned())
}

/// Opens an incident affecting everyone; its ID.
async fn incident_lost(rig: &Rig) -> String {
    let args = ["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md", "--affected", "all", "--json"];
    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "# Lost\n\nIt went.\n").unwrap();
    let open = rig.lifeboat.run(&args).await;
    assert_eq!(open.code, 0, "{open:?}");
    open.json()["id"].to_string()
}

/// A bot logged in with `bot.access_token` and the encrypted notice DMs
/// are one device with one store, which one process at a time opens: a
/// CLI notify while serve runs leaves the DMs to serve's worker. They
/// reach their person readable, and the bot still reads and answers its
/// encrypted admin room.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_notices_beside_a_running_bot_on_its_device_leave_both_readable() {
    let mut rig = Rig::start_encrypted(TestSmtp::start(None)).await;
    let (ann, _) = bot_device_sends_encrypted_notices(&rig).await;
    rig.serve().await;
    let stores = tempfile::tempdir().unwrap();
    let alice = e2e_client(&rig.synapse, &rig.alice.user_id, &rig.alice_password, &stores.path().join("alice")).await;
    assert!(status_in_encrypted_room(&rig, &alice, 1).await, "the bot answers before the notices");
    let ann_client =
        e2e_client(&rig.synapse, &rig.synapse.user_id(&ann), "correct horse battery", &stores.path().join("ann")).await;

    let notify = rig.lifeboat.run(&["notify", &incident_lost(&rig).await, "--yes"]).await;
    assert_eq!(notify.code, 0, "{notify:?}");
    assert!(notify.stdout.contains("Matrix DMs are left to the lifeboat process"), "{notify:?}");

    let notice = notice_read_by(&rig, &ann_client).await;
    assert!(notice.1 && notice.0.contains("Lost"), "ann read the encrypted notice: {notice:?}");
    assert!(status_in_encrypted_room(&rig, &alice, 2).await, "the bot still answers, encrypted");
}

/// The bot on `bot.password` (its session kept in the registry) with
/// `encrypted_notices`: inside serve, the bot's `notify` sends encrypted
/// DMs from the bot's own session, on its one client, which opens the
/// device's store once.
#[tokio::test(flavor = "multi_thread")]
async fn notices_the_bot_sends_from_its_own_device_use_its_one_client_and_both_stay_readable() {
    let mut rig = Rig::start_encrypted(TestSmtp::start(None)).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    assert!(!config.contains("access_token = "), "the bot logs in with its password");
    rig.lifeboat.write_config(&config.replace("[bot]\n", "[bot]\nencrypted_notices = true\n"));
    let ann = unique("ann");
    rig.synapse.create_user(&ann, &[]).await;
    assert_eq!(rig.lifeboat.run(&["sync"]).await.code, 0);
    let id = incident_lost(&rig).await;
    rig.serve().await;
    let stores = tempfile::tempdir().unwrap();
    let alice = e2e_client(&rig.synapse, &rig.alice.user_id, &rig.alice_password, &stores.path().join("alice")).await;
    let ann_client =
        e2e_client(&rig.synapse, &rig.synapse.user_id(&ann), "correct horse battery", &stores.path().join("ann")).await;

    let dry_run = format!("!lifeboat notify {id}");
    assert!(asked_in_encrypted_room(&rig, &alice, &dry_run, "To send, reply", 1).await, "an encrypted dry run");
    let confirm = format!("!lifeboat notify {id} confirm");
    assert!(asked_in_encrypted_room(&rig, &alice, &confirm, " sent, ", 1).await, "an encrypted report");

    let notice = notice_read_by(&rig, &ann_client).await;
    assert!(notice.1 && notice.0.contains("Lost"), "ann read the encrypted notice: {notice:?}");
    assert!(status_in_encrypted_room(&rig, &alice, 1).await, "the bot still answers, encrypted");
    let log = rig.lifeboat.serve_log();
    let opened = log.matches("opened the Matrix client and crypto store").count();
    assert_eq!(opened, 1, "the bot and its notices opened the device's store once:\n{log}");
}

/// DMs wait for a device store held elsewhere; they count as done only
/// when a `serve` holds it (its worker sends them), never for another
/// notify, which nothing would follow up.
#[tokio::test(flavor = "multi_thread")]
async fn a_notify_leaves_dms_to_a_serve_holding_the_device_store_and_to_nobody_else() {
    let rig = Rig::start_encrypted(TestSmtp::start(None)).await;
    let (_, device) = bot_device_sends_encrypted_notices(&rig).await;
    let id = incident_lost(&rig).await;
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let lease = format!("matrix-store:{device}");
    let ttl = 60_000;

    store.take_lease(&lease, "elsewhere:4242:1", ttl, None).await.unwrap().unwrap();
    let notify = rig.lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 1, "another notify will not send them: {notify:?}");
    assert!(!notify.stdout.contains("left to"), "{notify:?}");
    assert!(format!("{notify:?}").contains("open in another lifeboat process (elsewhere:4242:1"), "{notify:?}");
    store.release_lease(&lease, "elsewhere:4242:1").await.unwrap();

    store.take_lease(&lease, "elsewhere:4242:2:serve", ttl, None).await.unwrap().unwrap();
    let notify = rig.lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notify.code, 0, "serve's worker sends them: {notify:?}");
    assert!(notify.stdout.contains("Matrix DMs are left to the lifeboat process"), "{notify:?}");
    assert!(notify.stdout.contains("elsewhere:4242:2:serve"), "{notify:?}");
}

/// Waits until serve's log has `needle` more than `count` times.
pub(crate) async fn logged_more_than(lifeboat: &Lifeboat, needle: &str, count: usize) {
    eventually(needle, Duration::from_secs(90), || async { lifeboat.serve_log().matches(needle).count() > count }).await
}

/// Each DM command costs the bot a member list and admin-API calls: one
/// person gets ten answers a minute, however fast they write.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_writing_the_bot_fast_gets_ten_answers_a_minute() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob = rig.known_person(&unique("bob")).await;
    rig.serve().await;
    let dm = rig.dm_with_the_bot(&bob).await;
    // A moment apart, so each comes in a sync of its own (a sync brings
    // the last ten events of a room).
    for _ in 0..15 {
        bob.send(&dm, "contact list").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answers = || async {
        let replies = bob.messages_from(&dm, &rig.bot).await;
        replies.iter().filter(|reply| reply.contains("no contact addresses")).count()
    };
    eventually("ten answers", Duration::from_secs(60), || async { answers().await >= 10 }).await;
    // Answers take a moment each: time for any more to come.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(answers().await, 10);
}

/// Whoever is in the admin room reads what the bot posts there. While
/// someone is in it whose account lifeboat cannot vouch for (one no
/// listing has seen, as a stranger's on a lost ID after a wipe would be),
/// the bot answers with one line naming them and nothing else. It asks the
/// watcher for a listing (an hour away otherwise), and once that listing
/// knows the account as its person's, it answers again.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_posts_nothing_in_the_admin_room_while_someone_it_cannot_vouch_for_is_in_it() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    // No watcher round lists the newcomer before the bot is asked (one did,
    // when the bot was slow to answer, and it answered rightly).
    rig.lifeboat.set_env("LIFEBOAT__WATCH__INTERVAL", "1h");
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "watcher round", 0).await;
    let newcomer = rig.synapse.register(&unique("newcomer"));
    rig.alice.invite(&rig.admin_room, &newcomer.user_id).await;
    rig.synapse.client(&newcomer).join(&rig.admin_room).await;

    rig.say("!lifeboat status").await;
    let refused = rig.reply_containing("I post nothing in this room").await;
    assert!(refused.contains(&newcomer.user_id) && refused.contains("reads the listing again"), "{refused}");
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!replies.iter().any(|reply| reply.contains("Registry:")), "{replies:?}");

    let (alice, room, bot) = (&rig.alice, &rig.admin_room, &rig.bot);
    eventually("the bot answers once a listing has seen the newcomer", Duration::from_secs(150), || async {
        alice.send(room, "!lifeboat status").await;
        alice.find_message(room, bot, "Registry:", Duration::from_secs(10)).await.is_some()
    })
    .await;
    assert!(rig.lifeboat.serve_log().contains("the bot asked for a listing"));
}

/// Whose a member's account is cannot be asked just now (Synapse answers
/// "busy" about that one account): the bot answers no command in the
/// admin room, with one line saying why, rather than posting on trust.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_answers_no_command_while_it_cannot_tell_whose_a_members_account_is() {
    let refused = answer_while_synapse_answers_about_a_member(false).await;
    assert!(refused.contains("send the command again in a minute"), "{refused}");
}

/// Synapse refuses lifeboat's token about a member (as to a token that is
/// not a server admin's): no minute will fix that, and the bot says so,
/// without naming the fault in a room that may hold a stranger.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_names_a_refusal_about_a_member_a_fault_to_fix_not_one_to_wait_out() {
    let refused = answer_while_synapse_answers_about_a_member(true).await;
    assert!(refused.contains("will not pass by itself") && refused.contains("lifeboat check"), "{refused}");
    assert!(!refused.contains("server admin"), "the fault itself stays on the host: {refused}");
}

/// The bot's answer to a command in the admin room while Synapse answers
/// every question about a member with 503 (or 403: `refusing`).
async fn answer_while_synapse_answers_about_a_member(refusing: bool) -> String {
    use crate::harness::faulty_front::FaultyFront;
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let localpart = unique("member");
    let member = rig.known_person(&localpart).await;
    let (url, get) = (&rig.synapse.url, reqwest::Method::GET);
    let front = if refusing {
        FaultyFront::refusing(url, get, &localpart, usize::MAX).await
    } else {
        FaultyFront::start(url, get, &localpart, usize::MAX).await
    };
    rig.lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &front.url);
    rig.serve().await;
    rig.alice.invite(&rig.admin_room, &member.user_id).await;
    member.join(&rig.admin_room).await;

    rig.say("!lifeboat status").await;
    let refused = rig.reply_containing("cannot tell").await;
    assert!(refused.contains("whose accounts are in this room"), "{refused}");
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!replies.iter().any(|reply| reply.contains("Registry:")), "{replies:?}");
    refused
}

/// The alert emails to `alerts.email` whose subject holds `needle`.
fn alerts_about(rig: &Rig, needle: &str) -> Vec<String> {
    let mails = rig.smtp.messages_to(ALERTS_TO);
    let about =
        mails.into_iter().filter(|mail| mail.subject.as_deref().is_some_and(|subject| subject.contains(needle)));
    about.map(|mail| mail.text.unwrap_or_default()).collect()
}

/// A watcher that cannot reach Synapse would let a wipe go unnoticed: once
/// that has lasted `watch.alert_unchecked_after`, the admins hear why (by
/// email: the homeserver is what failed), once, and again when it can tell.
#[tokio::test(flavor = "multi_thread")]
async fn the_admins_hear_when_the_watcher_has_long_been_unable_to_tell_and_when_it_can_again() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.lifeboat.set_env("LIFEBOAT__WATCH__ALERT_UNCHECKED_AFTER", "4s");
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "watcher round", 0).await;

    rig.synapse.stop();
    logged_more_than(&rig.lifeboat, "verdict=\"unknown\"", 0).await;
    assert!(alerts_about(&rig, "cannot tell").is_empty(), "a first round that cannot tell is no alert yet");
    eventually("an alert says the watcher cannot tell", Duration::from_secs(90), || async {
        !alerts_about(&rig, "cannot tell whether accounts are lost").is_empty()
    })
    .await;
    let alert = &alerts_about(&rig, "cannot tell whether accounts are lost")[0];
    assert!(alert.contains("is unavailable") && alert.contains("a loss would go unnoticed"), "{alert}");
    assert!(alert.contains("lifeboat keeps trying"), "{alert}");
    let rounds = rig.lifeboat.serve_log().matches("verdict=\"unknown\"").count();
    logged_more_than(&rig.lifeboat, "verdict=\"unknown\"", rounds + 2).await;
    assert_eq!(audited_alerts(&rig, "cannot tell").await, 1, "once, not every round");

    rig.synapse.start_again();
    eventually("the admins hear that the watcher can tell again", Duration::from_secs(120), || async {
        !alerts_about(&rig, "can tell again").is_empty()
    })
    .await;
    assert_eq!(audited_alerts(&rig, "cannot tell").await, 1);
}

/// How many alerts whose subject holds `needle` the audit log records.
async fn audited_alerts(rig: &Rig, needle: &str) -> usize {
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let entries = store.audit_log(1_000).await.unwrap();
    store.close().await;
    let about = |subject: Option<&str>| subject.is_some_and(|subject| subject.contains(needle));
    entries.iter().filter(|entry| entry.action == "alert" && about(entry.subject.as_deref())).count()
}

/// On a big server listings are hours apart: between them, probes that
/// cannot reach Synapse keep the clock, and the admins hear of it on time.
#[tokio::test(flavor = "multi_thread")]
async fn probes_between_rounds_hours_apart_tell_the_admins_that_nothing_can_tell() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.lifeboat.set_env("LIFEBOAT__WATCH__INTERVAL", "1h");
    rig.lifeboat.set_env("LIFEBOAT__WATCH__PROBE_INTERVAL", "1s");
    rig.lifeboat.set_env("LIFEBOAT__WATCH__ALERT_UNCHECKED_AFTER", "3s");
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "watcher round", 0).await;

    rig.synapse.stop();
    eventually("an alert says the watcher cannot tell", Duration::from_secs(60), || async {
        !alerts_about(&rig, "cannot tell whether accounts are lost").is_empty()
    })
    .await;
    assert_eq!(rig.lifeboat.serve_log().matches("watcher round").count(), 1, "no round since: probes told");
    rig.synapse.start_again();
}

/// The registry cannot be written (here: another process holds SQLite's
/// write lock), so rounds cannot tell, and the outbox cannot take the alert
/// about it: the alert goes straight to the relay.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_the_outbox_cannot_take_goes_straight_to_the_relay() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.lifeboat.set_env("LIFEBOAT__WATCH__ALERT_UNCHECKED_AFTER", "0s");
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "watcher round", 0).await;

    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let mut writer = store.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *writer).await.unwrap();
    eventually("the alert arrives though the registry is locked", Duration::from_secs(120), || async {
        !alerts_about(&rig, "cannot tell whether accounts are lost").is_empty()
    })
    .await;
    let alert = &alerts_about(&rig, "cannot tell whether accounts are lost")[0];
    assert!(alert.contains("database is locked"), "{alert}");
    logged_more_than(&rig.lifeboat, "alert email sent without the outbox", 0).await;
    sqlx::query("ROLLBACK").execute(&mut *writer).await.unwrap();
    drop(writer);
    store.close().await;
}

/// A token that is not a server admin's will not start working by itself:
/// the watcher's first round says so, whatever `watch.alert_unchecked_after`
/// (in full by email; the admin room, which may hold a stranger, hears that
/// it needs fixing, not what), and a restart of serve does not say it again.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_that_is_not_a_server_admins_is_alerted_at_the_first_round() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    // In the admin room first: the bot joins only at an admin's invite it can vouch for.
    rig.serve().await;
    rig.stop_serve().await;
    let plain = rig.synapse.register(&unique("plain"));
    rig.lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", &plain.access_token);
    let earlier = rig.lifeboat.serve_log().len();
    rig.serve().await;

    eventually("the first round's alert", Duration::from_secs(90), || async {
        !alerts_about(&rig, "cannot tell whether accounts are lost").is_empty()
    })
    .await;
    let alert = &alerts_about(&rig, "cannot tell whether accounts are lost")[0];
    assert!(alert.contains("must belong to a server admin") && alert.contains("will not pass by itself"), "{alert}");
    let log = rig.lifeboat.serve_log()[earlier..].to_owned();
    let second_round = log.match_indices("watcher round").nth(1).map_or(log.len(), |(at, _)| at);
    let raised = log.find("cannot tell whether accounts are lost");
    assert!(raised.is_some_and(|at| at < second_round), "at the first round:\n{log}");
    let posted = rig.reply_containing("cannot tell whether accounts are lost").await;
    assert!(posted.contains("lifeboat check") && !posted.contains("server admin"), "{posted}");

    rig.stop_serve().await;
    let earlier = rig.lifeboat.serve_log().len();
    rig.serve().await;
    // The second round has followed the first one's alert, had there been one.
    eventually("two rounds after the restart", Duration::from_secs(60), || async {
        rig.lifeboat.serve_log()[earlier..].matches("watcher round").count() >= 2
    })
    .await;
    assert_eq!(audited_alerts(&rig, "cannot tell").await, 1, "a restart does not say it again");
}

/// An admin token whose account loses the admin flag between rounds will
/// not work again by itself: the next probe tells the admins at once, not
/// after `watch.alert_unchecked_after`, and the round that then meets the
/// same refusal does not tell them twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_demoted_between_rounds_is_told_by_the_next_probe_and_only_once() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.lifeboat.set_env("LIFEBOAT__WATCH__INTERVAL", "10s");
    rig.lifeboat.set_env("LIFEBOAT__WATCH__PROBE_INTERVAL", "1s");
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "watcher round", 0).await;

    let whoami = rig.synapse.admin_get("/_matrix/client/v3/account/whoami").await;
    let demoted = whoami["user_id"].as_str().unwrap().to_owned();
    rig.synapse.register_admin(&unique("root"));
    let path = format!("/_synapse/admin/v2/users/{demoted}");
    let (status, body) =
        rig.synapse.admin_request(reqwest::Method::PUT, &path, Some(serde_json::json!({"admin": false}))).await;
    assert_eq!(status, 200, "{body}");
    eventually("a probe's alert", Duration::from_secs(60), || async {
        !alerts_about(&rig, "cannot tell whether accounts are lost").is_empty()
    })
    .await;
    let log = rig.lifeboat.serve_log();
    let raised = log.find("cannot tell whether accounts are lost").unwrap();
    assert_eq!(log[..raised].matches("watcher round").count(), 1, "told by a probe, before a round:\n{log}");
    let alert = &alerts_about(&rig, "cannot tell whether accounts are lost")[0];
    assert!(alert.contains("must belong to a server admin"), "{alert}");

    // The third round begins after the second has followed up on its refusal.
    logged_more_than(&rig.lifeboat, "watcher round", 2).await;
    let log = rig.lifeboat.serve_log();
    let second = log.lines().filter(|line| line.contains("watcher round")).nth(1).unwrap();
    assert!(second.contains("must belong to a server admin"), "the round met the refusal too: {second}");
    assert_eq!(audited_alerts(&rig, "cannot tell").await, 1, "the round does not say it again");
}

/// A bot session that only expired (a homeserver with session lifetimes)
/// is logged in again by password on the same device: the people the bot
/// writes to encrypted see no new device. Synapse keeps an expired
/// session's device, keys and all.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_whose_session_expired_logs_in_again_on_the_same_device() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    rig.stop_serve().await;
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let session = async || -> serde_json::Value {
        serde_json::from_str(&store.setting("bot_session").await.unwrap().unwrap_or_default()).unwrap()
    };
    let device = session().await["device_id"].as_str().unwrap().to_owned();
    let devices_path = format!("/_synapse/admin/v2/users/{}/devices", rig.bot);
    let devices_before = rig.synapse.admin_get(&devices_path).await["total"].clone();
    let expiring = rig.synapse.token_expiring_in(&rig.bot, 1_000).await;
    let stored = serde_json::json!({"user_id": rig.bot, "device_id": device, "access_token": expiring});
    store.set_setting("bot_session", &stored.to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let logins = rig.lifeboat.serve_log().matches("bot logged in").count();
    rig.serve_in_background();
    logged_more_than(&rig.lifeboat, "bot logged in", logins).await;
    let log = rig.lifeboat.serve_log();
    assert!(log.lines().rfind(|line| line.contains("bot logged in")).unwrap().contains(&device), "{log}");
    assert_eq!(session().await["device_id"], device.as_str());
    assert_eq!(rig.synapse.admin_get(&devices_path).await["total"], devices_before, "no new device");
}

/// `bot.admin_room` given as an alias: a wipe frees the alias, and whoever
/// points it at a public room of theirs and invites the bot there does not
/// get it (nor its alerts): not when the bot recovers from the wipe, not
/// by an invite from the admin's ID registered again, and not when serve
/// starts again; the bot keeps the admin room it made.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_room_alias_someone_else_takes_after_a_wipe_does_not_move_the_bot() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let (alias, alias_localpart) = admin_room_by_alias(&mut rig).await;

    // While serve is down: the wipe, and someone registers the admin's ID,
    // points the alias at a public room of theirs and invites the bot.
    rig.synapse.wipe();
    let squatter = rig.synapse.register(&rig.alice_localpart);
    let squatted_admin = MatrixUser::new(&rig.synapse.url, &squatter.user_id, &squatter.access_token);
    let lure = squatted_admin
        .create_room_full(RoomSpec::public(&alias_localpart).name("lifeboat admin").invite(&[&rig.bot]))
        .await;
    assert_eq!(rig.synapse.resolve_alias(&alias).await.as_deref(), Some(lure.as_str()));

    rig.serve_in_background();
    logged_more_than(&rig.lifeboat, "made a new admin room", 0).await;
    logged_more_than(&rig.lifeboat, "declined an invite", 0).await;
    let in_lure = squatted_admin.membership_of(&lure, &rig.bot).await;
    assert_ne!(in_lure.as_deref(), Some("join"), "recovering, the bot stays out:\n{}", rig.lifeboat.serve_log());

    let settled_before = rig.lifeboat.serve_log().matches("in the admin room").count();
    rig.stop_serve().await;
    rig.serve_in_background();
    logged_more_than(&rig.lifeboat, "in the admin room", settled_before).await;
    let log = rig.lifeboat.serve_log();
    let settled = log.lines().rfind(|line| line.contains("in the admin room")).unwrap_or_default();
    assert!(!settled.contains(&lure), "started again, the bot keeps its own room: {settled}");
    let in_lure = squatted_admin.membership_of(&lure, &rig.bot).await;
    assert_ne!(in_lure.as_deref(), Some("join"), "{log}");

    // The drill checks the room the bot lives in, not the one the alias names now.
    let report = rig.lifeboat.run(&["drill", "--json"]).await.json();
    let line = report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "bot").cloned();
    let line = line.unwrap_or_default();
    assert_eq!(line["status"], "ok", "{line}");
    assert!(!line["detail"].as_str().unwrap_or_default().contains(&lure), "{line}");

    // Nor can the squatter bring the bot into a DM to point the alias at:
    // the admin's ID is not its person's now.
    let dm = squatted_admin.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={dm}"), 0).await;
    assert_ne!(squatted_admin.membership_of(&dm, &rig.bot).await.as_deref(), Some("join"));
}

/// The same after a wipe lifeboat did not recover from itself: an admin
/// registered the bot's account again by hand and gave lifeboat its new
/// password. The bot logs in with it, and still stays out of the room the
/// alias names now (it would join that room only on an admin's invite).
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_room_alias_taken_while_the_bot_was_away_does_not_draw_in_a_bot_that_logs_in_by_password() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let (alias, alias_localpart) = admin_room_by_alias(&mut rig).await;

    rig.synapse.wipe();
    let bot_again = rig.synapse.register(rig.bot.trim_start_matches('@').split(':').next().unwrap());
    let new_password = bot_again.password.expect("the harness returns the password");
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let old_password = config.lines().find(|line| line.starts_with("password = ")).unwrap().to_owned();
    rig.lifeboat.write_config(&config.replace(&old_password, &format!("password = \"{new_password}\"")));
    let stranger = rig.synapse.register(&unique("mallory"));
    let stranger = MatrixUser::new(&rig.synapse.url, &stranger.user_id, &stranger.access_token);
    let lure =
        stranger.create_room_full(RoomSpec::public(&alias_localpart).name("lifeboat admin").invite(&[&rig.bot])).await;
    assert_eq!(rig.synapse.resolve_alias(&alias).await.as_deref(), Some(lure.as_str()));

    // serve.log holds the first run's lines too: only this run's count.
    let earlier = rig.lifeboat.serve_log().len();
    rig.serve_in_background();
    let this_run = || rig.lifeboat.serve_log()[earlier..].to_owned();
    eventually("the bot logs in again", Duration::from_secs(90), || async {
        this_run().contains("bot logged in")
            && this_run().contains("names another room than the one the bot was in")
            && this_run().contains("declined an invite")
    })
    .await;
    let log = this_run();
    assert!(log.contains("recovered=false"), "the bot logged in by its password: {log}");
    assert_ne!(stranger.membership_of(&lure, &rig.bot).await.as_deref(), Some("join"), "{log}");

    // Nor with no record of the room the alias named (a registry restored
    // from an older backup, say): an alias of this homeserver is joined
    // only on an admin's invite then.
    rig.stop_serve().await;
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    sqlx::query("DELETE FROM settings WHERE name = 'bot_admin_room_alias'").execute(store.pool()).await.unwrap();
    store.close().await;
    let in_room = rig.lifeboat.serve_log().matches("the bot is not in bot.admin_room").count();
    stranger.invite(&lure, &rig.bot).await;
    rig.serve_in_background();
    logged_more_than(&rig.lifeboat, "the bot is not in bot.admin_room", in_room).await;
    let log = rig.lifeboat.serve_log();
    assert_ne!(stranger.membership_of(&lure, &rig.bot).await.as_deref(), Some("join"), "{log}");

    // Nor can the stranger bring the bot into a DM to point the alias at:
    // with no admin token working, whose an account is cannot be told.
    let dm = stranger.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={dm}"), 0).await;
    assert_ne!(stranger.membership_of(&dm, &rig.bot).await.as_deref(), Some("join"));
}

/// Nor is a DM a person made with the bot, even one (room version 12)
/// naming the bot a creator too; and the drill posts its test message
/// there no more than serve would post its alerts.
#[tokio::test(flavor = "multi_thread")]
async fn an_alias_pointed_at_a_dm_a_person_made_makes_it_neither_the_admin_room_nor_the_drills() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    let (alias, _) = admin_room_by_alias(&mut rig).await;
    rig.serve().await;
    let dm = dm_naming_the_bot_a_creator(&rig, &mallory).await;
    rig.stop_serve().await;

    alias_freed_and_pointed_by(&mut rig, &mallory, &alias, &dm).await;
    let report = rig.lifeboat.run(&["drill", "--json"]).await.json();
    let line = report["lines"].as_array().unwrap().iter().find(|line| line["check"] == "bot").cloned();
    let line = line.unwrap_or_default();
    assert_eq!(line["status"], "warn", "{line}");
    assert!(line["detail"].as_str().unwrap_or_default().contains("no record"), "{line}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posted = mallory.messages_from(&dm, &rig.bot).await;
    assert!(posted.is_empty(), "nothing for the admin room reaches the DM: {posted:?}");
}

/// A DM lifeboat's own account made (here a subscription code's; notices
/// make them too) is no admin room either: with no record of the room the
/// alias named, a person who points the freed alias at it gets nothing the
/// admin room would.
#[tokio::test(flavor = "multi_thread")]
async fn an_alias_pointed_at_a_dm_the_bot_made_does_not_make_that_dm_the_admin_room() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    let (alias, _) = admin_room_by_alias(&mut rig).await;
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("{}/healthz", rig.web);
    eventually("the web page answers", Duration::from_secs(30), || async {
        http.get(&health).send().await.is_ok_and(|response| response.status().is_success())
    })
    .await;
    assert_eq!(subscribe(&rig, &http, &mallory.user_id, &format!("{}@example.org", unique("m"))).await, 200);
    let (dm, _) = code_dmed_to(&rig, &mallory).await;
    rig.stop_serve().await;

    alias_freed_and_pointed_by(&mut rig, &mallory, &alias, &dm).await;
}

/// Nor is a public room an admin is in: anyone may join one and point the
/// freed alias at it, and after a wipe lifeboat's own account is in the
/// public rooms people lost, with the admins among them.
#[tokio::test(flavor = "multi_thread")]
async fn an_alias_pointed_at_a_public_room_an_admin_is_in_does_not_make_it_the_admin_room() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    let (alias, _) = admin_room_by_alias(&mut rig).await;
    let square = public_room_with_the_bot(&rig, &mallory).await;
    rig.alice.join(&square).await;

    alias_freed_and_pointed_by(&mut rig, &mallory, &alias, &square).await;
}

/// A "DM" anyone may join is no DM: the bot declines the invite, so nobody
/// can fill its sync with a public room's members through it.
#[tokio::test(flavor = "multi_thread")]
async fn the_bot_declines_a_dm_invite_to_a_room_anyone_may_join() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    rig.serve().await;
    let body = serde_json::json!({"preset": "public_chat", "invite": [rig.bot], "is_direct": true});
    let (status, made) = mallory.try_call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await;
    assert_eq!(status, 200, "{made}");
    let room = made["room_id"].as_str().unwrap().to_owned();
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={room}"), 0).await;
    assert_ne!(mallory.membership_of(&room, &rig.bot).await.as_deref(), Some("join"));
}

/// Nor is a public room an admin made, for the same reason.
#[tokio::test(flavor = "multi_thread")]
async fn an_alias_pointed_at_a_public_room_an_admin_made_does_not_make_it_the_admin_room() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let mallory = rig.known_person(&unique("mallory")).await;
    let (alias, _) = admin_room_by_alias(&mut rig).await;
    let square = public_room_with_the_bot(&rig, &rig.alice).await;
    mallory.join(&square).await;

    alias_freed_and_pointed_by(&mut rig, &mallory, &alias, &square).await;
}

/// A public room `maker` makes, which the bot joins (as lifeboat's account
/// joins the public rooms people lost after a wipe).
async fn public_room_with_the_bot(rig: &Rig, maker: &MatrixUser) -> String {
    let public = serde_json::json!({"preset": "public_chat"});
    let (status, made) = maker.try_call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(public)).await;
    assert_eq!(status, 200, "{made}");
    let square = made["room_id"].as_str().unwrap().to_owned();
    let join = format!("/_synapse/admin/v1/join/{}", crate::harness::matrix::encode(&square));
    let bot_joins = serde_json::json!({"user_id": rig.bot});
    let (status, body) = rig.synapse.admin_request(reqwest::Method::POST, &join, Some(bot_joins)).await;
    assert_eq!(status, 200, "{body}");
    square
}

/// The admin room's `alias` freed (by a wipe; here a server admin deletes
/// it), pointed by `taker` at `room`, and no record of the room it named:
/// serve starts again, finds nothing vouching for `room`, and does not
/// settle there.
async fn alias_freed_and_pointed_by(rig: &mut Rig, taker: &MatrixUser, alias: &str, room: &str) {
    let path = format!("/_matrix/client/v3/directory/room/{}", crate::harness::matrix::encode(alias));
    let server_admin = MatrixUser::new(&rig.synapse.url, "@admin", &rig.synapse.admin_token());
    assert_eq!(server_admin.try_call(reqwest::Method::DELETE, &path, None).await.0, 200);
    let (status, body) = taker.try_call(reqwest::Method::PUT, &path, Some(serde_json::json!({"room_id": room}))).await;
    assert_eq!(status, 200, "{body}");
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    sqlx::query("DELETE FROM settings WHERE name = 'bot_admin_room_alias'").execute(store.pool()).await.unwrap();
    store.close().await;
    let unvouched = rig.lifeboat.serve_log().matches("nothing vouches for").count();
    rig.serve_in_background();
    logged_more_than(&rig.lifeboat, "nothing vouches for", unvouched).await;
    let log = rig.lifeboat.serve_log();
    let settled = log.lines().rfind(|line| line.contains("in the admin room")).unwrap_or_default();
    assert!(!settled.contains(room), "{log}");
}

/// `owner` opens a DM with the bot and waits for the bot to join it.
async fn dm_naming_the_bot_a_creator(rig: &Rig, owner: &MatrixUser) -> String {
    // A room version 12 DM that names the bot one of its creators, as its
    // maker may, for anyone, without their say.
    let body = serde_json::json!({
        "preset": "private_chat", "invite": [rig.bot], "is_direct": true, "room_version": "12",
        "creation_content": {"additional_creators": [rig.bot]},
    });
    let make = || async {
        let (status, made) =
            owner.try_call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body.clone())).await;
        assert_eq!(status, 200, "{made}");
        made["room_id"].as_str().unwrap().to_owned()
    };
    dm_taken_once_listed(rig, owner, make).await
}

/// Points an alias at the admin room, makes it `bot.admin_room`, and lets
/// serve settle there once. Returns the alias and its localpart.
async fn admin_room_by_alias(rig: &mut Rig) -> (String, String) {
    let alias_localpart = unique("lifeboat-admin");
    let alias = format!("#{alias_localpart}:{}", rig.synapse.server_name);
    let path = format!("/_matrix/client/v3/directory/room/{}", crate::harness::matrix::encode(&alias));
    let (status, body) =
        rig.alice.try_call(reqwest::Method::PUT, &path, Some(serde_json::json!({"room_id": rig.admin_room}))).await;
    assert_eq!(status, 200, "{body}");
    let config = std::fs::read_to_string(rig.lifeboat.config_path())
        .unwrap()
        .replace(&format!("admin_room = \"{}\"", rig.admin_room), &format!("admin_room = \"{alias}\""));
    rig.lifeboat.write_config(&config);
    rig.serve().await;
    logged_more_than(&rig.lifeboat, "in the admin room", 0).await;
    rig.stop_serve().await;
    (alias, alias_localpart)
}

/// A serve whose store lease ran out and was taken meanwhile (the registry
/// out of reach for longer than the lease) stops using the store, even if
/// the taker is already done with it: the bot steps back while the store
/// is held, then comes back on a fresh client that reads the store again,
/// and answers what was asked meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_bot_whose_store_was_taken_meanwhile_steps_back_until_it_is_free() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let (_, device) = bot_device_sends_encrypted_notices(&rig).await;
    rig.serve().await;
    rig.say("!lifeboat status").await;
    rig.reply_containing("Registry:").await;
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let lease = format!("matrix-store:{device}");
    let ttl = 600_000;
    // Taken and given back before serve's next renewal: serve must not
    // take it back unawares.
    take_from_serve(&store, &lease, ttl).await;
    store.release_lease(&lease, "elsewhere:4242:1").await.unwrap();
    stepped_back(&rig, 1).await;
    eventually("the bot comes back", Duration::from_secs(60), || async {
        rig.lifeboat.serve_log().matches("bot logged in").count() >= 2
    })
    .await;

    take_from_serve(&store, &lease, ttl).await;
    stepped_back(&rig, 2).await;
    rig.say("!lifeboat incident list").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let replies = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!replies.iter().any(|reply| reply.contains("No incidents.")), "no answer while the store is held");
    store.release_lease(&lease, "elsewhere:4242:1").await.unwrap();
    rig.reply_containing("No incidents.").await;
    let log = rig.lifeboat.serve_log();
    let opened = log.matches("opened the Matrix client and crypto store").count();
    assert_eq!(opened, 3, "each time a fresh client read the store again:\n{log}");
}

/// Another process takes the store lease from the `serve` holding it.
async fn take_from_serve(store: &lifeboat::registry::Registry, lease: &str, ttl: i64) {
    let Err((serve, _)) = store.take_lease(lease, "elsewhere:4242:1", ttl, None).await.unwrap() else {
        panic!("serve holds the device's store");
    };
    store.take_lease(lease, "elsewhere:4242:1", ttl, Some(&serve)).await.unwrap().unwrap();
}

/// The bot has stepped back from its store `times` times.
async fn stepped_back(rig: &Rig, times: usize) {
    eventually("the bot steps back from the store", Duration::from_secs(90), || async {
        rig.lifeboat.serve_log().matches("lost the lease on the device's crypto store").count() >= times
    })
    .await
}

/// The last message in Ann's rooms once one arrives (her DM invite is
/// accepted on the way): its text, and whether it came encrypted.
async fn notice_read_by(rig: &Rig, ann_client: &matrix_sdk::Client) -> (String, bool) {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::room::MessagesOptions;

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        ann_client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.unwrap();
        if let Some(room) = ann_client.invited_rooms().pop() {
            room.join().await.unwrap();
            continue;
        }
        let mut found = None;
        for room in ann_client.joined_rooms() {
            for event in room.messages(MessagesOptions::backward()).await.unwrap().chunk {
                let json: serde_json::Value = serde_json::from_str(event.raw().json().get()).unwrap();
                if json["type"] == "m.room.message" {
                    found = Some((
                        json["content"]["body"].as_str().unwrap_or("").to_owned(),
                        event.encryption_info().is_some(),
                    ));
                }
            }
        }
        if let Some(found) = found {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "no notice reached ann:\n{}", rig.lifeboat.serve_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `address` typed for `user_id` on the subscription page: the link mailed to it.
async fn subscribed_on_the_page(
    rig: &Rig,
    browser: &crate::harness::browser::Browser,
    user_id: &str,
    address: &str,
) -> String {
    browser.goto(&format!("{}/subscribe", rig.web)).await;
    browser.fill("#matrix_id", user_id).await;
    browser.fill("#email", address).await;
    browser.click("button[type=submit]").await;
    assert!(browser.text("main").await.contains("sent a link"), "the same answer for anyone");
    let smtp = &rig.smtp;
    eventually("the confirmation link is mailed", Duration::from_secs(30), || async {
        !smtp.messages_to(address).is_empty()
    })
    .await;
    let text = smtp.messages_to(address).pop().unwrap().text.unwrap();
    text.split_whitespace().find(|word| word.contains("/subscribe/confirm?")).expect("a link").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_subscribes_an_email_on_the_web_page_proven_by_a_mailed_link_and_a_dmed_code() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob_localpart = unique("bob");
    let bob = rig.known_person(&bob_localpart).await;
    rig.serve().await;
    let address = format!("{bob_localpart}@example.org");

    let browser = crate::harness::browser::Browser::start().await;
    let link = subscribed_on_the_page(&rig, &browser, &bob.user_id, &address).await;

    // The code comes to bob's Matrix account by DM.
    let mut invites = Vec::new();
    for _ in 0..120 {
        invites = bob.invites().await;
        if !invites.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dm = invites.first().expect("lifeboat opens a DM with bob").clone();
    bob.join(&dm).await;
    let message = bob.wait_for_message(&dm, &rig.bot, "Your code", Duration::from_secs(30)).await;
    let code = code_in(&message);
    // The link was queued before the code was DMed: how soon it comes must
    // not tell an account that gets a code from one that does not.
    sqlx::any::install_default_drivers();
    let outbox = sqlx::AnyPool::connect(&rig.registry.url()).await.unwrap();
    let order = "SELECT kind FROM deliveries WHERE kind IN ('link', 'code') ORDER BY id";
    let kinds: Vec<String> = sqlx::query_scalar(order).fetch_all(&outbox).await.unwrap();
    assert_eq!(kinds, ["link", "code"]);
    outbox.close().await;
    // Both name the address the code adds, and the page names the account:
    // someone sent a stranger's link would see it adds another's address.
    assert!(message.contains(&format!("`{address}` get incident notices")), "as code, no link: {message}");

    browser.goto(&link).await;
    let page = browser.text("main").await;
    assert!(page.contains(&format!("This adds {address} to the Matrix account {}", bob.user_id)), "{page}");
    browser.fill("#code", &code).await;
    browser.click("button[type=submit]").await;
    let done = browser.text("main").await;
    browser.close().await;
    assert!(!done.contains("not right"), "{done}");

    let shown = rig.lifeboat.run(&["users", "show", &bob.user_id, "--json"]).await.json();
    let contact = shown["contacts"].as_array().unwrap().iter().find(|c| c["address"] == address.as_str()).cloned();
    let contact = contact.unwrap_or_else(|| panic!("the address is a contact of bob now: {shown}\npage: {done}"));
    assert!(contact["verified_at"].is_i64(), "{contact}");
    // Bob is told, with how to take the address off if it was not him.
    let told = bob.wait_for_message(&dm, &rig.bot, "now gets incident notices", Duration::from_secs(30)).await;
    assert!(told.contains(&address) && told.contains(&format!("contact remove {address}")), "{told}");

    // A code entered once the ID is someone else's (a wipe, and a stranger
    // registering it: here, Synapse's account is newer than the registry's)
    // adds the address for its person, and tells the account nothing.
    let second = format!("{bob_localpart}-2@example.org");
    let browser = crate::harness::browser::Browser::start().await;
    let link = subscribed_on_the_page(&rig, &browser, &bob.user_id, &second).await;
    let code = code_in(&bob.wait_for_message(&dm, &rig.bot, &format!("`{second}`"), Duration::from_secs(30)).await);
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let older = "UPDATE accounts SET synapse_created_at = synapse_created_at - 60000 WHERE user_id = $1";
    sqlx::query(older).bind(&bob.user_id).execute(store.pool()).await.unwrap();
    browser.goto(&link).await;
    browser.fill("#code", &code).await;
    browser.click("button[type=submit]").await;
    let done = browser.text("main").await;
    browser.close().await;
    assert!(done.contains("confirmed"), "{done}");
    let lifeboat = &rig.lifeboat;
    eventually("the account is not told", Duration::from_secs(30), || async {
        lifeboat.serve_log().contains("is not its person's account now")
    })
    .await;
    let said = bob.messages_from(&dm, &rig.bot).await;
    assert!(!said.iter().any(|body| body.contains(&format!("`{second}` now gets"))), "{said:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_runs_the_clis_operations_for_an_admin() {
    let people = people(2);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    // The watcher holds no lost ID by itself (the token below waits for one).
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    rig.lifeboat.write_config(&format!(
        "{config}
[recovery]
hold = \"on-incident\"\n"
    ));
    rig.serve().await;

    let synced = rig.sync_by_bot().await;
    assert!(synced.contains("listed"), "{synced}");
    rig.say("!lifeboat check").await;
    let checked = rig.reply_containing("Verdict").await;
    assert!(checked.contains("**ok**"), "{checked}");
    rig.say("!lifeboat rooms").await;
    rig.reply_containing("on the homeserver now").await;
    // Only a room that lived only here can be made again, whoever asks.
    rig.say(&format!("!lifeboat rooms recreate {}", rig.admin_room)).await;
    rig.reply_containing("is on this homeserver: there is nothing to re-create").await;
    // Refusals name the bot's commands, never the CLI's flags.
    rig.say("!lifeboat incident show 99").await;
    rig.reply_containing("`!lifeboat incident list` shows them").await;
    rig.say("!lifeboat incident open Lost\nNobody is lost.").await;
    let refused = rig.reply_containing("nobody would be affected").await;
    assert!(refused.contains("`!lifeboat sync`") && !refused.contains("--affected"), "{refused}");

    // An admin records a second address for the first person.
    let person = rig.synapse.user_id(&people[0].0);
    let second = format!("second-{}", people[0].1);
    rig.say(&format!("!lifeboat contact add {person} {second}")).await;
    rig.reply_containing(&format!("Added {second}")).await;

    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "Lost.\n").unwrap();
    let open = rig
        .lifeboat
        .run(&["incident", "open", "--title", "Drill", "--postmortem", "postmortem.md", "--affected", "all", "--json"])
        .await;
    let id = open.json()["id"].to_string();
    rig.say("!lifeboat incident list").await;
    rig.reply_containing(&format!("{id}: Drill")).await;
    rig.say(&format!("!lifeboat incident show {id}")).await;
    let shown = rig.reply_containing(&format!("Incident {id}: Drill")).await;
    assert!(shown.contains("reachable: 2 by email"), "{shown}");
    assert!(shown.contains("rooms: 0 living on elsewhere"), "{shown}");

    // A person whose account still works needs no way back in.
    rig.say(&format!("!lifeboat token {person}")).await;
    rig.reply_containing("the account still works").await;
    // Here a stranger took the person's ID: a token for a new name is their
    // way back. Not while another lost ID is not held yet: any token could
    // register that one.
    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let lost = rig.synapse.user_id(&unique("lost"));
    let write = |sql: &'static str, id: &str| sqlx::query(sql).bind(id.to_owned()).execute(registry.pool());
    write("UPDATE accounts SET recreated_at = 1 WHERE user_id = $1", &person).await.unwrap();
    write("INSERT INTO accounts (user_id, first_seen_at, state, missing_since) VALUES ($1, 1, 'missing', 1)", &lost)
        .await
        .unwrap();
    rig.say(&format!("!lifeboat token {person}")).await;
    rig.reply_containing(&format!("1 lost ID is not held yet ({lost})")).await;
    write("DELETE FROM accounts WHERE user_id = $1", &lost).await.unwrap();
    registry.close().await;
    // A fresh token goes to the person's own addresses, never into the room.
    rig.say(&format!("!lifeboat token {person}")).await;
    let issued = rig.reply_containing("Mailing a new registration token").await;
    let smtp = &rig.smtp;
    eventually("the token, mailed", Duration::from_secs(30), || async { !smtp.messages_to(&second).is_empty() }).await;
    let mails = rig.smtp.messages_to(&second);
    assert_eq!(mails.len(), 1, "the token is mailed to each address of the person");
    let text = mails[0].text.clone().unwrap();
    let token = text.lines().map(str::trim).find(|line| line.len() == 24 && line.chars().all(char::is_alphanumeric));
    let token = token.expect("the token stands on its own line").to_owned();
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("was registered again since the loss"), "the old name is taken: {text}");
    assert!(rig.synapse.token_is_valid(&token).await, "the mailed token works");
    let room = rig.alice.messages_from(&rig.admin_room, &rig.bot).await;
    assert!(!room.iter().any(|body| body.contains(&token)), "the token never appears in the room: {issued}");

    rig.say(&format!("!lifeboat contact remove {person} {second}")).await;
    rig.reply_containing(&format!("Removed {second}")).await;
    rig.say(&format!("!lifeboat incident resolve {id} confirm")).await;
    rig.reply_containing("then confirm within").await;
    assert!(rig.synapse.token_is_valid(&token).await, "a confirm never asked for resolves nothing");
    rig.say(&format!("!lifeboat incident resolve {id}")).await;
    rig.reply_containing("for good. To do it, reply").await;
    assert!(rig.synapse.token_is_valid(&token).await, "asking resolves nothing");
    rig.say(&format!("!lifeboat incident resolve {id} confirm")).await;
    let resolved = rig.reply_containing(&format!("Resolved incident {id}")).await;
    assert!(resolved.contains("deleted 1 unused"), "{resolved}");
    assert!(!rig.synapse.token_is_valid(&token).await, "resolving deleted the unused token");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_bot_posts_carries_no_markup_from_a_title_or_postmortem() {
    let mut rig = Rig::start(TestSmtp::start(None), &people(1)).await;
    rig.serve().await;
    std::fs::write(rig.lifeboat.dir().join("postmortem.md"), "gone").unwrap();
    let title = "<script>alert(1)</script> <b>Lost</b> <img src=x onerror=alert(2)>";
    let args = ["incident", "open", "--title", title, "--postmortem", "postmortem.md", "--affected", "all"];
    assert_eq!(rig.lifeboat.run(&args).await.code, 0);
    rig.say("!lifeboat incident list").await;
    rig.reply_containing("alert(1)").await;
    rig.say("!lifeboat incident show 1").await;
    rig.reply_containing("Incident 1:").await;
    let html = rig.alice.formatted_from(&rig.admin_room, &rig.bot).await;
    let titled: Vec<&String> = html.iter().filter(|body| body.contains("&lt;script&gt;alert(1)")).collect();
    assert_eq!(titled.len(), 2, "the title shows as the text it is, in the list and in show: {html:?}");
    for body in &html {
        let lower = body.to_lowercase();
        assert!(!lower.contains("<script") && !lower.contains("<b>") && !lower.contains("<img"), "{body}");
    }

    // Any account names its rooms: a name never becomes a link, or a
    // paragraph of its own, in the bot's reply.
    let lure = rig.alice.create_room(&[], false).await;
    let name = "[Your admin session expired, sign in](https://evil.example)\n\nlifeboat says: all is well";
    rig.alice.set_state(&lure, "m.room.name", "", serde_json::json!({"name": name})).await;
    rig.sync_by_bot().await;
    rig.say(&format!("!lifeboat rooms recreate {lure}")).await;
    rig.reply_containing("there is nothing to re-create").await;
    let html = rig.alice.formatted_from(&rig.admin_room, &rig.bot).await;
    let refusal = html.iter().find(|body| body.contains("nothing to re-create")).expect("the refusal");
    assert!(!refusal.contains("<a ") && !refusal.contains("<p>lifeboat says"), "{refusal}");
    // Nor does any text in a reply ping the room (`@room` in a name, say):
    // every message says it mentions nobody.
    for content in rig.alice.contents_from(&rig.admin_room, &rig.bot).await {
        assert_eq!(content["m.mentions"], serde_json::json!({}), "{content}");
    }
}

/// The link in the newest subscription mail to `address`.
/// Subscription requests from anywhere, for any accounts and addresses,
/// mail at most `web.subscription_mails_per_hour` links in all: a flood
/// neither fills the outbox nor spends the relay's quota.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_subscription_requests_mails_no_more_than_the_hours_budget() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    rig.lifeboat.write_config(&config.replace("[web]\n", "[web]\nsubscription_mails_per_hour = 3\n"));
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let prefix = unique("flood");
    let addresses: Vec<String> = (0..6).map(|n| format!("{prefix}-{n}@example.org")).collect();
    for (n, address) in addresses.iter().enumerate() {
        let someone = rig.synapse.user_id(&format!("{prefix}-{n}"));
        assert_eq!(subscribe(&rig, &http, &someone, address).await, 200, "answered as always");
    }
    let smtp = &rig.smtp;
    let mailed = || addresses.iter().filter(|address| !smtp.messages_to(address).is_empty()).count();
    eventually("the hour's three links are mailed", Duration::from_secs(30), || async { mailed() == 3 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mailed(), 3);
    assert!(rig.lifeboat.serve_log().contains("subscription_mails_per_hour reached"));
}

/// One network cannot spend the hour's subscription budget alone: once
/// half of it is spent, requests from a network that had a tenth of it (ten
/// at least) mail nothing, and someone asking from elsewhere still gets a
/// link. An IPv6 network is its /48, whatever /64s its clients use.
#[tokio::test(flavor = "multi_thread")]
async fn one_network_cannot_spend_the_hours_subscription_links_alone() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let web = "[web]\ntrusted_proxies = [\"127.0.0.1\"]\nsubscription_mails_per_hour = 40\n";
    rig.lifeboat.write_config(&config.replace("[web]\n", web));
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let prefix = unique("network");
    let addresses: Vec<String> = (0..23).map(|n| format!("{prefix}-{n}@example.org")).collect();
    let smtp = &rig.smtp;
    let mailed = || addresses[..22].iter().filter(|address| !smtp.messages_to(address).is_empty()).count();
    // Twenty-two clients of one /48, one after another: its share is 10,
    // half the budget 20.
    for (n, address) in addresses[..22].iter().enumerate() {
        let (someone, client) = (rig.synapse.user_id(&format!("{prefix}-{n}")), format!("2001:db8:5:{n:x}::1"));
        assert_eq!(subscribe_from(Some(&client), &rig, &http, &someone, address).await, 200, "answered as always");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while mailed() < (n + 1).min(20) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elsewhere = rig.synapse.user_id(&format!("{prefix}-22"));
    assert_eq!(subscribe_from(Some("2001:db8:6::1"), &rig, &http, &elsewhere, &addresses[22]).await, 200);
    eventually("another network's request is mailed", Duration::from_secs(30), || async {
        smtp.messages_to(&addresses[22]).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mailed(), 20, "past its share while less than half was spent, not after");
    let log = rig.lifeboat.serve_log();
    assert!(log.contains("half of web.subscription_mails_per_hour is spent, and one network had its share"), "{log}");
}

/// Someone types a stranger's address again and again, with a new ID each
/// time: the address gets a few links at once, and a few more as those run
/// out, but no more than six a day, and three at one network's requests.
#[tokio::test(flavor = "multi_thread")]
async fn an_address_typed_again_and_again_gets_six_subscription_links_a_day() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let web = "[web]\nrate_limit_per_ip = 100000\ntrusted_proxies = [\"127.0.0.1\"]\n";
    rig.lifeboat.write_config(&config.replace("[web]\n", web));
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let prefix = unique("typed");
    let victim = format!("{prefix}@example.org");
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    for (batch, network, mailed) in [(0, "203.0.113", 3), (1, "203.0.113", 3), (2, "198.51.100", 6), (3, "192.0.2", 6)]
    {
        for n in 0..4 {
            let someone = rig.synapse.user_id(&format!("{prefix}-{batch}-{n}"));
            let client = format!("{network}.{n}");
            assert_eq!(subscribe_from(Some(&client), &rig, &http, &someone, &victim).await, 200, "answered as always");
        }
        let smtp = &rig.smtp;
        eventually("the batch's links are mailed", Duration::from_secs(60), || async {
            smtp.messages_to(&victim).len() >= mailed
        })
        .await;
        earlier_requests_are_done(&rig, &http, &format!("{prefix}-marker-{batch}@example.org")).await;
        assert_eq!(rig.smtp.messages_to(&victim).len(), mailed, "after batch {batch}");
        // Half an hour on: the links mailed so far have just run out.
        let just_now = lifeboat::registry::now_ms() - 1_000;
        sqlx::query("UPDATE web_links SET expires_at = $1").bind(just_now).execute(store.pool()).await.unwrap();
    }
    store.close().await;
}

/// Someone types address after address at one catch-all domain: one
/// network gets thirty links a day to that domain, whatever the local
/// parts, while another domain from it, or that domain from elsewhere,
/// still gets its links.
#[tokio::test(flavor = "multi_thread")]
async fn one_network_gets_thirty_subscription_links_a_day_to_one_mail_domain() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let web = "[web]\nrate_limit_per_ip = 100000\ntrusted_proxies = [\"127.0.0.1\"]\n";
    rig.lifeboat.write_config(&config.replace("[web]\n", web));
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let prefix = unique("catchall");
    let domain = format!("{prefix}.example.org");
    let at_the_domain: Vec<String> = (0..31).map(|n| format!("a{n}@{domain}")).collect();
    for (n, address) in at_the_domain.iter().enumerate() {
        let someone = rig.synapse.user_id(&format!("{prefix}-{n}"));
        let client = format!("203.0.113.{}", n + 1);
        assert_eq!(subscribe_from(Some(&client), &rig, &http, &someone, address).await, 200, "answered as always");
    }
    let (elsewhere, other_domain) = (format!("b@{domain}"), format!("{prefix}@example.net"));
    let someone = rig.synapse.user_id(&format!("{prefix}-elsewhere"));
    assert_eq!(subscribe_from(Some("198.51.100.7"), &rig, &http, &someone, &elsewhere).await, 200);
    let someone = rig.synapse.user_id(&format!("{prefix}-other"));
    assert_eq!(subscribe_from(Some("203.0.113.99"), &rig, &http, &someone, &other_domain).await, 200);
    let smtp = &rig.smtp;
    eventually("the other network's and the other domain's links", Duration::from_secs(60), || async {
        !smtp.messages_to(&elsewhere).is_empty() && !smtp.messages_to(&other_domain).is_empty()
    })
    .await;
    earlier_requests_are_done(&rig, &http, &format!("{prefix}-marker@example.net")).await;
    let mailed = at_the_domain.iter().filter(|address| !smtp.messages_to(address).is_empty()).count();
    assert_eq!(mailed, 30, "{}", rig.lifeboat.serve_log());
    assert!(rig.lifeboat.serve_log().contains("links to one mail domain today"));
}

/// The code in a subscription DM.
fn code_in(message: &str) -> String {
    let after = message.split("Your code to confirm it: **").nth(1).unwrap_or_else(|| panic!("no code in {message}"));
    after.split("**").next().unwrap().to_owned()
}

fn subscription_link(smtp: &TestSmtp, address: &str) -> String {
    let mail = smtp.messages_to(address).pop().expect("a subscription mail");
    let text = mail.text.expect("a text part");
    text.split_whitespace().find(|word| word.contains("/subscribe/confirm?")).expect("the link").to_owned()
}

/// Posts the subscription form as a fresh visitor would.
async fn subscribe(rig: &Rig, http: &reqwest::Client, matrix_id: &str, email: &str) -> u16 {
    subscribe_from(None, rig, http, matrix_id, email).await
}

/// [`subscribe`], from a client at `ip` (as a trusted proxy tells it) if
/// one is given.
async fn subscribe_from(ip: Option<&str>, rig: &Rig, http: &reqwest::Client, matrix_id: &str, email: &str) -> u16 {
    use crate::web_pages::{form_csrf, post_form, post_form_from};
    let url = format!("{}/subscribe", rig.web);
    let (cookie, csrf) = form_csrf(http, &url).await;
    let form = format!(
        "csrf={csrf}&matrix_id={}&email={}",
        matrix_id.replace('@', "%40").replace(':', "%3A"),
        email.replace('@', "%40")
    );
    match ip {
        Some(ip) => post_form_from(ip, http, &url, Some(&cookie), &form).await.0,
        None => post_form(http, &url, Some(&cookie), &form).await.0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_mails_alike_for_any_account_and_dms_few_codes_without_growing_memory() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob_localpart = unique("bob");
    let bob = rig.known_person(&bob_localpart).await;
    let carol_localpart = unique("carol");
    let carol = rig.known_person(&carol_localpart).await;
    let dave_localpart = unique("dave");
    let dave = rig.known_person(&dave_localpart).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    rig.lifeboat.write_config(&config.replace("[web]\n", "[web]\nrate_limit_per_ip = 100000\n"));
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Requests that arrive together are no different: of carol's eight
    // addresses, six get a link, each with a code of its own (its DM names
    // the address), and the other two nothing: six codes a day.
    let carol_addresses: Vec<String> = (0..8).map(|n| format!("{carol_localpart}-b{n}@example.org")).collect();
    let burst = carol_addresses.iter().map(|address| subscribe(&rig, &http, &carol.user_id, address));
    assert!(futures::future::join_all(burst).await.iter().all(|status| *status == 200));
    let smtp = &rig.smtp;
    let linked = || carol_addresses.iter().filter(|address| smtp.messages_to(address).len() == 1).count();
    eventually("six addresses of the burst get their link", Duration::from_secs(60), || async { linked() == 6 }).await;
    earlier_requests_are_done(&rig, &http, &format!("{carol_localpart}-marker@example.org")).await;
    assert_eq!(linked(), 6, "{:?}", carol_addresses.iter().map(|a| smtp.messages_to(a).len()).collect::<Vec<_>>());
    let mut codes = 0;
    for room in carol.invites().await {
        carol.join(&room).await;
        codes += carol.messages_from(&room, &rig.bot).await.iter().filter(|body| body.contains("Your code")).count();
    }
    assert_eq!(codes, 6, "a code per address, for requests that arrived together too");

    // The inbox cannot tell a known account from an unknown one.
    let (known, unknown) = (format!("{bob_localpart}-1@example.org"), format!("{bob_localpart}-x@example.org"));
    assert_eq!(subscribe(&rig, &http, &bob.user_id, &known).await, 200);
    let nobody = rig.synapse.user_id(&unique("nobody"));
    assert_eq!(subscribe(&rig, &http, &nobody, &unknown).await, 200);
    let smtp = &rig.smtp;
    eventually("both addresses get a link", Duration::from_secs(30), || async {
        smtp.messages_to(&known).len() == 1 && smtp.messages_to(&unknown).len() == 1
    })
    .await;
    let (to_known, to_unknown) = (smtp.messages_to(&known).pop().unwrap(), smtp.messages_to(&unknown).pop().unwrap());
    assert_eq!(to_known.subject, to_unknown.subject);
    assert!(to_unknown.text.as_deref().unwrap_or("").contains("proves only that the address works"));

    // Asking again, whoever asks, mails nothing new and is never refused.
    for _ in 0..4 {
        assert_eq!(subscribe(&rig, &http, &bob.user_id, &known).await, 200, "never a 429");
    }
    let (dm, message) = code_dmed_to(&rig, &bob).await;
    let code = code_in(&message);
    // The DM and the page its link opens name the code by its time: of the
    // codes an account may get, the person knows which one a link takes.
    let until = message.split("It works until ").nth(1).and_then(|rest| rest.split(" UTC").next()).expect("its time");
    let page = http.get(subscription_link(smtp, &known)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("names this address and works until {until} UTC.")), "{page}");

    // Many more requests for bob with other addresses: one client, and a
    // day's few codes, one per address. His first went with his own link.
    let before = rig.serve_rss_kib();
    for n in 0..150 {
        assert_eq!(subscribe(&rig, &http, &bob.user_id, &format!("{bob_localpart}-m{n}@example.org")).await, 200);
    }
    earlier_requests_are_done(&rig, &http, &format!("{bob_localpart}-marker@example.org")).await;
    let grown_mib = rig.serve_rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 30, "serve grew by {grown_mib} MiB over 150 subscription requests");
    assert_eq!(smtp.messages_to(&known).len(), 1, "one live link per address");
    let mailed = || {
        let mailed = (0..150).filter(|n| !smtp.messages_to(&format!("{bob_localpart}-m{n}@example.org")).is_empty());
        mailed.collect::<Vec<_>>()
    };
    // Which addresses get them depends on the order the requests take the
    // lock in, not on the order they were made.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mailed().len() < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(mailed().len(), 5, "six codes, one per address (bob's own link carries the first)");
    let codes = bob.messages_from(&dm, &rig.bot).await.iter().filter(|body| body.contains("Your code")).count();
    assert_eq!(codes, 6, "six codes DMed in a day, however many ask");

    let confirm = |address: String, code: String| {
        let (http, smtp, url) = (http.clone(), &smtp, format!("{}/subscribe/confirm", rig.web));
        async move {
            let link = subscription_link(smtp, &address);
            let (cookie, csrf) = crate::web_pages::form_csrf(&http, &link).await;
            let query: std::collections::HashMap<String, String> =
                url::Url::parse(&link).unwrap().query_pairs().into_owned().collect();
            let form = format!("csrf={csrf}&link={}&sig={}&code={code}", query["link"], query["sig"]);
            crate::web_pages::post_form(&http, &url, Some(&cookie), &form).await
        }
    };
    // A guesser's wrong codes end only the link they guess through: bob's
    // own link still takes his code.
    let wrong = if code == "00000000" { "11111111" } else { "00000000" };
    let guesser = format!("{bob_localpart}-m{}@example.org", mailed()[0]);
    for n in 1..=5 {
        let (status, page) = confirm(guesser.clone(), wrong.to_owned()).await;
        let said = if n < 5 { "That code is not right" } else { "This link does not work" };
        assert!(status == 400 && page.contains(said), "try {n}: {status} {page}");
    }
    let (status, page) = confirm(known.clone(), code.clone()).await;
    assert_eq!(status, 200, "bob's own link: {page}");
    let shown = rig.lifeboat.run(&["users", "show", &bob.user_id, "--json"]).await.json();
    assert!(shown["contacts"].as_array().unwrap().iter().any(|c| c["address"] == known.as_str()), "{shown}");
    // The day's codes are spent: asking from yet another address brings
    // neither a link nor a DM.
    let fresh = format!("{bob_localpart}-fresh@example.org");
    assert_eq!(subscribe(&rig, &http, &bob.user_id, &fresh).await, 200);
    earlier_requests_are_done(&rig, &http, &format!("{bob_localpart}-marker2@example.org")).await;
    assert!(smtp.messages_to(&fresh).is_empty(), "no link past the day's codes");

    // An ID we do not know gets links that behave alike: each has its own
    // tries at a decoy, as bob's have at his code, so guessing tells nothing.
    let unknown_too = format!("{bob_localpart}-y@example.org");
    assert_eq!(subscribe(&rig, &http, &nobody, &unknown_too).await, 200);
    eventually("the second link for the unknown ID is mailed", Duration::from_secs(30), || async {
        smtp.messages_to(&unknown_too).len() == 1
    })
    .await;
    for n in 1..=5 {
        let (status, page) = confirm(unknown.clone(), wrong.to_owned()).await;
        let said = if n < 5 { "That code is not right" } else { "This link does not work" };
        assert!(status == 400 && page.contains(said), "try {n}: {status} {page}");
    }
    let (status, page) = confirm(unknown_too, wrong.to_owned()).await;
    assert!(status == 400 && page.contains("That code is not right"), "its own tries, as bob's: {status} {page}");

    // A code whose only link used up its tries is carried by the next link
    // asked for to that address, with that link's own tries, and is not
    // DMed again.
    let dave_first = format!("{dave_localpart}-1@example.org");
    assert_eq!(subscribe(&rig, &http, &dave.user_id, &dave_first).await, 200);
    let (dave_dm, message) = code_dmed_to(&rig, &dave).await;
    let dave_code = code_in(&message);
    // The DM and the mail go their own ways: the link may come second.
    eventually("dave's first link is mailed", Duration::from_secs(30), || async {
        smtp.messages_to(&dave_first).len() == 1
    })
    .await;
    let wrong = if dave_code == "00000000" { "11111111" } else { "00000000" };
    for n in 1..=5 {
        let (status, page) = confirm(dave_first.clone(), wrong.to_owned()).await;
        let said = if n < 5 { "That code is not right" } else { "This link does not work" };
        assert!(status == 400 && page.contains(said), "try {n}: {status} {page}");
    }
    let dave_again = dave_first.clone();
    assert_eq!(subscribe(&rig, &http, &dave.user_id, &dave_again).await, 200);
    eventually("dave's second link is mailed", Duration::from_secs(30), || async {
        smtp.messages_to(&dave_again).len() == 2
    })
    .await;
    let codes = dave.messages_from(&dave_dm, &rig.bot).await.iter().filter(|body| body.contains("Your code")).count();
    assert_eq!(codes, 1, "no second code DMed");
    let (status, page) = confirm(dave_again, dave_code).await;
    assert_eq!(status, 200, "the code DMed first confirms the new link: {page}");
    let log = rig.lifeboat.serve_log();
    assert!(!log.contains("might have been deleted") && !log.contains("Not sharing message history"), "{log}");
}

/// A request for an ID lifeboat does not know (yet) DMs nothing: once the
/// account is known, its person's own request must bring a code, not
/// reuse the one that went nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_that_went_nowhere_is_never_reused_once_the_account_is_known() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let bob_localpart = unique("bob");
    let bob_id = rig.synapse.user_id(&bob_localpart);
    let early = format!("{bob_localpart}-early@example.org");
    assert_eq!(subscribe(&rig, &http, &bob_id, &early).await, 200);
    eventually("the early link is mailed", Duration::from_secs(30), || async {
        !rig.smtp.messages_to(&early).is_empty()
    })
    .await;

    let bob_account = rig.synapse.register(&bob_localpart);
    let lifeboat = &rig.lifeboat;
    eventually("the watcher knows bob", Duration::from_secs(60), || async {
        let shown = lifeboat.run(&["users", "show", &bob_id, "--json"]).await;
        shown.code == 0 && shown.json()["state"] == "present"
    })
    .await;
    let bob = MatrixUser::new(&rig.synapse.url, &bob_account.user_id, &bob_account.access_token);
    // The same address: the early link, still live, must not stand in.
    assert_eq!(subscribe(&rig, &http, &bob_id, &early).await, 200);
    code_dmed_to(&rig, &bob).await;
    eventually("a link that goes with the code", Duration::from_secs(30), || async {
        rig.smtp.messages_to(&early).len() == 2
    })
    .await;
}

/// A code whose DM failed is not kept: the next request DMs one, rather
/// than reusing a code its person never got.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_whose_dm_failed_is_not_reused() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob_localpart = unique("bob");
    let bob = rig.known_person(&bob_localpart).await;
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let address = format!("{bob_localpart}@example.org");

    // Synapse down: the code cannot be DMed, so nothing is mailed either.
    rig.synapse.stop();
    assert_eq!(subscribe(&rig, &http, &bob.user_id, &address).await, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.synapse.start_again();
    assert!(rig.smtp.messages_to(&address).is_empty(), "no link without its code");

    assert_eq!(subscribe(&rig, &http, &bob.user_id, &address).await, 200);
    code_dmed_to(&rig, &bob).await;
}

/// With no [email] section no subscription link can arrive: the form must
/// not become a way for strangers to DM codes to someone at will.
#[tokio::test(flavor = "multi_thread")]
async fn without_mail_the_subscription_form_dms_no_codes() {
    let mut rig = Rig::start(TestSmtp::start(None), &[]).await;
    let bob_localpart = unique("bob");
    let bob = rig.known_person(&bob_localpart).await;
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let email_section = config.find("[email]").unwrap();
    let after = email_section + config[email_section..].find("\n\n").unwrap() + 2;
    let config = format!("{}{}", &config[..email_section], &config[after..]);
    rig.lifeboat.write_config(&config);
    rig.serve().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    for n in 0..3 {
        assert_eq!(subscribe(&rig, &http, &bob.user_id, &format!("{bob_localpart}-{n}@example.org")).await, 200);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(bob.invites().await.is_empty(), "no DM; serve log:\n{}", rig.lifeboat.serve_log());
}

/// The DM room the bot invited `person` to, and the code message in it.
/// Subscription requests are handled after the answer: once one
/// made later (for an ID nobody has, to `marker`) is mailed, and a moment
/// more has passed, the earlier
/// ones are done.
async fn earlier_requests_are_done(rig: &Rig, http: &reqwest::Client, marker: &str) {
    let nobody = rig.synapse.user_id("nobody-here");
    assert_eq!(subscribe(rig, http, &nobody, marker).await, 200);
    let smtp = &rig.smtp;
    eventually("a later request is mailed", Duration::from_secs(60), || async { !smtp.messages_to(marker).is_empty() })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn code_dmed_to(rig: &Rig, person: &MatrixUser) -> (String, String) {
    let dm = eventually_invited(person).await;
    person.join(&dm).await;
    let message = person.wait_for_message(&dm, &rig.bot, "Your code", Duration::from_secs(30)).await;
    (dm, message)
}

async fn eventually_invited(person: &MatrixUser) -> String {
    for _ in 0..120 {
        if let Some(room) = person.invites().await.into_iter().next() {
            return room;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{} was not invited to a DM", person.user_id);
}
