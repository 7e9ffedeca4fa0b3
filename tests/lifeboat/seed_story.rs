//! The seed incident end to end, across every face: people with contacts,
//! `serve` running, the database wiped; every lost ID held for its owner,
//! the admin taking hers back on the lifeboat host and finding the bot's
//! alert in a new admin room, notices confirmed from the bot, one email
//! each with a working token (for a new name) and a claim link, a person
//! who lost their notice getting a fresh claim link from the web page,
//! taking their ID back, and the next sync showing it claimed.
//!
//! `LIFEBOAT_SEED_STORY_PEOPLE=1000` (default 12) makes it the measurement
//! the README reports; add `LIFEBOAT_TEST_BIN=target/release/lifeboat` to
//! time a release build, and `-- --nocapture` to see the timings.

use std::time::{Duration, Instant};

use crate::harness::browser::Browser;
use crate::harness::{TestSmtp, eventually};
use crate::serve_bot::{Rig, people};

const POSTMORTEM: &str =
    "# What happened\n\nOur database was lost during maintenance.\n\nUse the token below to register again.";

fn token_in(text: &str) -> String {
    let line = text.lines().find(|line| line.contains("registration token: ")).expect("the token is in the email");
    line.split_whitespace().last().unwrap().trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_wipe_everyone_is_told_once_and_a_person_comes_back_through_the_web_page() {
    let count: usize = std::env::var("LIFEBOAT_SEED_STORY_PEOPLE").ok().and_then(|n| n.parse().ok()).unwrap_or(12);
    let people = people(count);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    rig.serve().await;

    let wiped = Instant::now();
    rig.synapse.wipe();
    let smtp = &rig.smtp;
    eventually("the alert email", Duration::from_secs(120), || async {
        smtp.messages_to("oncall@example.org")
            .iter()
            .any(|mail| mail.subject.as_deref().unwrap_or_default().contains("suspected database reset"))
    })
    .await;
    let alerted = wiped.elapsed();

    // The admin takes her held ID back and finds the bot in a new admin room.
    let alice = rig.alice_takes_her_id_back().await;
    let room = alice.first_invite().await;
    alice.join(&room).await;
    alice.wait_for_message(&room, &rig.bot, "Suspected database reset", Duration::from_secs(30)).await;

    // Wait for the watcher to hold everyone's ID, then open the incident.
    let lifeboat = &rig.lifeboat;
    eventually("the registry holds the people's IDs", Duration::from_secs(120), || async {
        let held = lifeboat.run(&["users", "list", "--state", "held", "--json"]).await;
        held.json().as_array().map(|accounts| accounts.len()).unwrap_or(0) >= count
    })
    .await;
    alice.send(&room, &format!("!lifeboat incident open Database lost\n{POSTMORTEM}")).await;
    let opened = alice.wait_for_message(&room, &rig.bot, "Opened incident", Duration::from_secs(60)).await;
    let after = opened.split("incident ").nth(1).unwrap().trim_start_matches('*');
    let id: String = after.chars().take_while(char::is_ascii_digit).collect();
    alice.send(&room, &format!("!lifeboat notify {id}")).await;
    let dry_run = alice.wait_for_message(&room, &rig.bot, "To send, reply", Duration::from_secs(60)).await;
    assert!(dry_run.contains(&format!("{count} emails")), "{dry_run}");
    let incident_ready = wiped.elapsed();

    let mails_before = smtp.count();
    let confirmed = Instant::now();
    alice.send(&room, &format!("!lifeboat notify {id} confirm")).await;
    eventually("every notice is sent", Duration::from_secs(600), || async { smtp.count() >= mails_before + count })
        .await;
    let sending = confirmed.elapsed();
    let done = alice.wait_for_message(&room, &rig.bot, "sent,", Duration::from_secs(120)).await;
    assert!(done.contains("0 failed"), "{done}");
    eprintln!(
        "seed story, {count} people: wipe → alert mail {:.1} s; wipe → incident ready to confirm {:.1} s \
         (includes the test's own steps); confirm → last notice {:.1} s",
        alerted.as_secs_f64(),
        incident_ready.as_secs_f64(),
        sending.as_secs_f64()
    );

    // Exactly one notice each, with a token Synapse accepts.
    rig.synapse.register_admin(&crate::harness::unique("root"));
    // Read the sink once: per-address lookups would reread every message.
    let mut by_address: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for mail in rig.smtp.messages() {
        for to in &mail.rcpt_tos {
            by_address.entry(to.to_lowercase()).or_default().push(mail.text.clone().unwrap_or_default());
        }
    }
    let mut tokens = Vec::new();
    for (_, email) in &people {
        let mails = by_address.get(&email.to_lowercase()).cloned().unwrap_or_default();
        assert_eq!(mails.len(), 1, "{email} gets exactly one notice");
        tokens.push(token_in(&mails[0]));
    }
    for token in tokens.iter().take(20) {
        assert!(rig.synapse.token_is_valid(token).await, "the token in the notice works");
    }

    // One person lost their notice: the web page mails a fresh claim link,
    // and they take their ID back in the browser.
    let (localpart, email) = &people[0];
    let browser = Browser::start().await;
    browser.goto(&format!("{}/token", rig.web)).await;
    browser.fill("#who", email).await;
    browser.click("button[type=submit]").await;
    assert!(browser.text("main").await.contains("Check your email"));
    eventually("the claim link is mailed", Duration::from_secs(30), || async { smtp.messages_to(email).len() >= 2 })
        .await;
    let mail = rig.smtp.messages_to(email).pop().unwrap();
    let link =
        mail.text.as_deref().unwrap().split_whitespace().find(|word| word.contains("/claim?")).unwrap().to_owned();
    browser.goto(&link).await;
    browser.fill("#password", "back aboard at last").await;
    browser.fill("#again", "back aboard at last").await;
    browser.click("#claim").await;
    assert_eq!(browser.text("#account").await, rig.synapse.user_id(localpart));
    browser.close().await;
    let (code, body) = rig.synapse.login(localpart, "back aboard at last").await;
    assert_eq!(code, 200, "signing in as the same ID works: {body}");

    // serve's watcher syncs every 2 s here: a sync finding one running
    // leaves (its result will be as fresh), so this one tries again.
    let mut sync = rig.lifeboat.run(&["sync"]).await;
    for _ in 0..40 {
        if !sync.stderr.contains("another sync is running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        sync = rig.lifeboat.run(&["sync"]).await;
    }
    assert_eq!(sync.code, 0, "{sync:?}");
    let user_id = rig.synapse.user_id(localpart);
    let shown = rig.lifeboat.run(&["users", "show", &user_id, "--json"]).await.json();
    assert_eq!(shown["state"], "claimed", "the next sync shows them back, as themselves: {shown}");
}
