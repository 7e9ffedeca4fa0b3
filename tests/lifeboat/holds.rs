//! Held IDs: after a wipe every lost ID that is still free is held for its
//! owner, no registration token can take it, and its owner gets the same ID
//! back by following their notice. IDs taken before the hold are strangers.

use std::time::Duration;

use crate::harness::browser::Browser;
use crate::harness::faulty_front::FaultyFront;
use crate::harness::{Lifeboat, MatrixUser, TestDatabase, TestSmtp, TestSynapse, eventually, id, lease_held, unique};
use crate::serve_bot::{Rig, logged_more_than, people};
use crate::web_pages::{form_csrf, post_form};

const POSTMORTEM: &str = "Our database was lost during maintenance.";

/// The held IDs `holds list --json` shows, by state.
async fn ids_in(lifeboat: &Lifeboat, state: &str) -> Vec<String> {
    let listed = lifeboat.run(&["holds", "list", "--json"]).await.json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|hold| hold["state"] == state)
        .map(|hold| hold["user_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `incident open` from the CLI, which holds the lost IDs; it must succeed.
async fn open_incident(lifeboat: &Lifeboat) -> crate::harness::cli::Run {
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    let opened = lifeboat.run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(opened.code, 0, "{opened:?}");
    opened
}

/// Are all these user IDs in `state`?
async fn all_in(lifeboat: &Lifeboat, state: &str, ids: &[String]) -> bool {
    let listed = ids_in(lifeboat, state).await;
    ids.iter().all(|id| listed.contains(id))
}

/// A sync from the CLI while serve runs: the watcher's own sync may hold
/// the lease for a moment (the CLI then says so and leaves), so try again.
pub(crate) async fn sync_beside_serve(lifeboat: &Lifeboat) {
    eventually("a sync beside serve's watcher", Duration::from_secs(60), || async {
        let run = lifeboat.run(&["sync"]).await;
        assert!(run.code == 0 || run.stderr.contains("another sync is running"), "{run:?}");
        run.code == 0
    })
    .await;
}

/// The user IDs of `people` on `synapse`.
fn ids_of(synapse: &TestSynapse, people: &[(String, String)]) -> Vec<String> {
    people.iter().map(|(localpart, _)| synapse.user_id(localpart)).collect()
}

/// Opens an incident from the CLI and sends its notices; returns its id.
async fn open_and_notify(lifeboat: &Lifeboat) -> String {
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    let opened = lifeboat
        .run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md", "--json"])
        .await;
    assert_eq!(opened.code, 0, "{opened:?}");
    let id = opened.json()["id"].to_string();
    let notified = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notified.code, 0, "{notified:?}");
    id
}

/// The one word of a mail's text that contains `needle`.
fn word_with(text: &str, needle: &str) -> String {
    text.split_whitespace()
        .find(|word| word.contains(needle))
        .unwrap_or_else(|| panic!("no {needle} in:\n{text}"))
        .to_owned()
}

fn token_in(text: &str) -> String {
    let line = text.lines().find(|line| line.contains("registration token: ")).expect("the token is in the notice");
    line.split_whitespace().last().unwrap().to_owned()
}

fn notice_to(rig: &Rig, email: &str) -> String {
    let mails = rig.smtp.messages_to(email);
    let notice = mails
        .iter()
        .find(|mail| mail.subject.as_deref().unwrap_or_default().contains("Database lost"))
        .unwrap_or_else(|| panic!("no notice to {email}"));
    notice.text.clone().unwrap()
}

/// Wipes Synapse under serve's watcher and waits until it holds the IDs
/// of `people`; returns them.
async fn wipe_until_held(rig: &Rig, people: &[(String, String)]) -> Vec<String> {
    rig.synapse.wipe();
    let (lifeboat, lost) = (&rig.lifeboat, ids_of(&rig.synapse, people));
    eventually("the lost IDs are held", Duration::from_secs(90), || async { all_in(lifeboat, "held", &lost).await })
        .await;
    lost
}

/// One person's ID wiped and held by serve's watcher, listed since (as
/// lifeboat's own account), and an incident notified: the rig, the lost
/// ID (alone in a list) and the claim link in the person's notice.
async fn one_held_with_a_claim_link() -> (Rig, Vec<String>, String) {
    let people = people(1);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    rig.serve().await;
    let lost = wipe_until_held(&rig, &people).await;
    sync_beside_serve(&rig.lifeboat).await;
    open_and_notify(&rig.lifeboat).await;
    let link = word_with(&notice_to(&rig, &people[0].1), "/claim?");
    (rig, lost, link)
}

/// The claim page's form for `link` as a browser posts it, with `password`
/// (form-encoded) twice: where to post it, the CSRF cookie, the body.
async fn claim_form(http: &reqwest::Client, rig: &Rig, link: &str, password: &str) -> (String, String, String) {
    let (cookie, csrf) = form_csrf(http, link).await;
    let query = link.split_once('?').unwrap().1;
    let form = format!("csrf={csrf}&{query}&password={password}&again={password}");
    (format!("{}/claim", rig.web), cookie, form)
}

/// The HTTP status and page a GET of `url` answers.
async fn get_page(url: &str) -> (u16, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn status_of(url: String) -> u16 {
    get_page(&url).await.0
}

/// Gives `localpart` a display name unlike the one Synapse makes up for a
/// new account (its localpart), so a test can tell the two apart.
async fn rename(synapse: &TestSynapse, localpart: &str, name: &str) {
    let path = format!("/_synapse/admin/v2/users/{}", synapse.user_id(localpart));
    let (status, body) =
        synapse.admin_request(reqwest::Method::PUT, &path, Some(serde_json::json!({"displayname": name}))).await;
    assert_eq!(status, 200, "{body}");
}

async fn display_name_on_synapse(synapse: &TestSynapse, localpart: &str) -> String {
    synapse.user(localpart).await["displayname"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_wipe_lost_ids_are_held_no_token_takes_one_and_each_owner_claims_theirs() {
    let people = people(3);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    let a_name = "Ann of the Harbour";
    rename(&rig.synapse, &people[0].0, a_name).await;
    assert_eq!(rig.lifeboat.run(&["sync"]).await.code, 0);
    rig.serve().await;
    rig.synapse.wipe();

    // serve's watcher (interval 2 s) holds every lost ID, lifeboat's own excepted.
    let (lifeboat, mut lost) = (&rig.lifeboat, ids_of(&rig.synapse, &people));
    lost.push(rig.synapse.user_id(&rig.alice_localpart));
    eventually("the watcher holds the lost IDs", Duration::from_secs(90), || async {
        all_in(lifeboat, "held", &lost).await
    })
    .await;
    assert!(!ids_in(lifeboat, "held").await.contains(&rig.bot), "lifeboat's own account is recovered, not held");
    rig.synapse.register_admin(&unique("root"));
    let (a, a_email) = &people[0];
    // "held" in the registry covers a hold still under way (the ID is
    // already kept from others); the display name follows every hold.
    let synapse = &rig.synapse;
    eventually("the held account is locked with its profile back", Duration::from_secs(30), || async {
        let held = synapse.user(a).await;
        held["locked"] == true && held["displayname"] == a_name
    })
    .await;
    let held = rig.synapse.user(a).await;
    assert_eq!(held["threepids"][0]["address"].as_str(), Some(a_email.as_str()), "the email is back: {held}");

    let smtp = &rig.smtp;
    eventually("the alert says what was held", Duration::from_secs(30), || async {
        smtp.messages_to("oncall@example.org")
            .iter()
            .any(|mail| mail.text.as_deref().unwrap_or_default().contains("Held for their owners"))
    })
    .await;

    open_and_notify(&rig.lifeboat).await;
    let (b, b_email) = &people[1];
    let a_notice = notice_to(&rig, a_email);
    let b_token = token_in(&notice_to(&rig, b_email));

    // B's token cannot take A's ID; it still registers a new name.
    let (status, body) = rig.synapse.register_with_token(a, &b_token).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "{body}");
    let (status, body) = rig.synapse.register_with_token(b, &b_token).await;
    assert_eq!(status, 400, "B's own old ID is held too, for B's claim: {body}");
    let (status, body) = rig.synapse.register_with_token(&unique("b-new"), &b_token).await;
    assert_eq!(status, 200, "the token is for a new name: {body}");

    // B's claim link dies with the address it went to: whoever has that
    // address later (lapsed, and someone else's) cannot take B's ID with it.
    let b_link = word_with(&notice_to(&rig, b_email), "/claim?");
    assert_eq!(status_of(b_link.clone()).await, 200, "B's link works");
    let removed = rig.lifeboat.run(&["contacts", "remove", &rig.synapse.user_id(b), b_email]).await;
    assert_eq!(removed.code, 0, "{removed:?}");
    assert_eq!(status_of(b_link).await, 400, "once B's address is removed");

    // A follows the claim link in A's notice (plain HTTP).
    assert!(a_notice.contains("is kept for you"), "{a_notice}");
    let link = word_with(&a_notice, "/claim?");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // A's network has spent its budget on the open forms (a flood, or
    // neighbours behind one NAT): the claim link, its own gate, still works.
    let token_page = format!("{}/token", rig.web);
    let (token_cookie, token_csrf) = form_csrf(&http, &token_page).await;
    let mut refused = false;
    for _ in 0..30 {
        let junk = format!("csrf={token_csrf}&who=x");
        refused = post_form(&http, &token_page, Some(&token_cookie), &junk).await.0 == 429;
        if refused {
            break;
        }
    }
    assert!(refused, "the token form stops this IP after its budget");
    let (cookie, csrf) = form_csrf(&http, &link).await;
    let query = link.split_once('?').unwrap().1;
    let password = "sea shanty lighthouse";
    let form = format!("csrf={csrf}&{query}&password=too+short&again=too+short");
    let (status, page) = post_form(&http, &format!("{}/claim", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 400, "a weak password is refused with the rule: {page}");
    assert!(page.contains("at least 10 characters"), "{page}");
    let form = format!("csrf={csrf}&{query}&password=sea+shanty+lighthouse&again=sea+shanty+lighthouse");
    let (status, page) = post_form(&http, &format!("{}/claim", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is yours again") && page.contains(&rig.synapse.user_id(a)), "{page}");
    let (status, login) = rig.synapse.login(a, password).await;
    assert_eq!(status, 200, "A signs in as the same ID: {login}");
    assert_eq!(login["user_id"].as_str(), Some(rig.synapse.user_id(a).as_str()));
    let claimed = rig.synapse.user(a).await;
    assert_eq!((claimed["locked"].as_bool(), claimed["displayname"].as_str()), (Some(false), Some(a_name)));
    assert_eq!(ids_in(&rig.lifeboat, "claimed").await, vec![rig.synapse.user_id(a)]);

    // The link worked once.
    let (status, page) = post_form(&http, &format!("{}/claim", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 400, "a used link is refused: {page}");
    assert!(page.contains("does not work"), "{page}");

    // C claims in Chromium, at phone and desktop sizes.
    let (c, c_email) = &people[2];
    let c_link = word_with(&notice_to(&rig, c_email), "/claim?");
    // Not while C's address is opted out of (it may have lapsed, and be
    // someone else's), as the unsubscribe link in a notice does.
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let opt_out = |at: Option<i64>| sqlx::query("UPDATE contacts SET opted_out_at = $1 WHERE address = $2").bind(at);
    assert_eq!(opt_out(Some(1)).bind(c_email).execute(store.pool()).await.unwrap().rows_affected(), 1);
    assert_eq!(status_of(c_link.clone()).await, 400, "once C's address is opted out of");
    opt_out(None).bind(c_email).execute(store.pool()).await.unwrap();
    store.close().await;
    assert_eq!(status_of(c_link.clone()).await, 200, "and again once it takes mail");
    let browser = Browser::start().await;
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.goto(&c_link).await;
    assert_eq!(browser.text("#account").await, rig.synapse.user_id(c));
    browser.screenshot("claim-phone").await;
    browser.client.set_window_size(1024, 900).await.unwrap();
    browser.screenshot("claim-desktop").await;
    browser.fill("#password", "another quiet harbour").await;
    browser.fill("#again", "another quiet harbour").await;
    browser.click("#claim").await;
    assert_eq!(browser.text("#account").await, rig.synapse.user_id(c));
    browser.screenshot("claim-done").await;
    browser.close().await;
    let (status, login) = rig.synapse.login(c, "another quiet harbour").await;
    assert_eq!(status, 200, "{login}");

    // A later sync keeps them claimed, not recreated.
    sync_beside_serve(&rig.lifeboat).await;
    let shown = rig.lifeboat.run(&["users", "show", &rig.synapse.user_id(a), "--json"]).await.json();
    assert_eq!(shown["state"], "claimed", "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_link_that_is_forged_altered_or_for_another_incident_is_refused() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    assert_eq!(status_of(link.clone()).await, 200, "the link as mailed works");
    let sig = link.split("sig=").nth(1).unwrap().to_owned();
    let forged = link.replace(&sig, &"0".repeat(sig.len()));
    assert_eq!(status_of(forged).await, 400, "a forged signature");
    let other_incident = link.replace("incident=1", "incident=2");
    assert_eq!(status_of(other_incident).await, 400, "another incident");
    let other_account = link.replace("person0-", "person1-");
    assert_eq!(status_of(other_account).await, 400, "another account");
    let hold = link.split("hold=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    assert_eq!(status_of(link.replace(&format!("hold={hold}"), "hold=1")).await, 400, "another hold");
    let until = link.split("until=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    assert_eq!(status_of(link.replace(&format!("until={until}"), "until=9999999999999")).await, 400, "a longer life");
    let contact = link.split("contact=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let another = format!("contact={}", contact.parse::<i64>().unwrap() + 1000);
    assert_eq!(status_of(link.replace(&format!("contact={contact}"), &another)).await, 400, "a contact not the link's");
    assert_eq!(status_of(format!("{}/claim", rig.web)).await, 400, "no link at all");

    // Resolving the incident keeps the hold, and ends the link.
    let resolved = rig.lifeboat.run(&["incident", "resolve", "1", "--yes"]).await;
    assert_eq!(resolved.code, 0, "{resolved:?}");
    assert!(all_in(&rig.lifeboat, "held", &lost).await, "the IDs stay held");
    assert_eq!(status_of(link).await, 400, "a link of a resolved incident");
}

/// Sets the custody of `user_id` in the registry straight in SQL: how a
/// hold looks while it is being made (`holding`) and once made (`held`).
async fn set_custody(rig: &Rig, user_id: &str, custody: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&rig.registry_url()).await.unwrap();
    let changed = sqlx::query("UPDATE accounts SET custody = $1 WHERE user_id = $2")
        .bind(custody)
        .bind(user_id)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_link_posted_twice_at_once_is_handed_over_once_with_the_first_password() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    let localpart = lost[0].trim_start_matches('@').split(':').next().unwrap().to_owned();
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
    let (cookie, csrf) = form_csrf(&http, &link).await;
    let (url, query) = (format!("{}/claim", rig.web), link.split_once('?').unwrap().1.to_owned());
    let posted = |password: &str| format!("csrf={csrf}&{query}&password={password}&again={password}");
    let (first, second) = (posted("sea+shanty+lighthouse"), posted("another+long+password"));

    // With Synapse frozen, the first hand-over is still under way when the
    // second one arrives.
    rig.synapse.pause();
    let first_post = tokio::spawn({
        let (http, url, cookie) = (http.clone(), url.clone(), cookie.clone());
        async move { post_form(&http, &url, Some(&cookie), &first).await }
    });
    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let lease = lifeboat::registry::hand_over_lease(&id(&lost[0]));
    eventually("the first hand-over holds its lease", Duration::from_secs(30), || async {
        // A first post that ended early is the failure to show.
        lease_held(&registry, &lease).await || first_post.is_finished()
    })
    .await;
    let (status, page) = post_form(&http, &url, Some(&cookie), &second).await;
    rig.synapse.resume();
    assert_eq!(status, 409, "the second is turned away at once: {page}");
    assert!(page.contains("being handed back right now"), "{page}");
    let (status, page) = first_post.await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(rig.synapse.login(&localpart, "sea shanty lighthouse").await.0, 200, "the first password works");
    assert_ne!(rig.synapse.login(&localpart, "another long password").await.0, 200, "the second was never set");
}

/// A held account found unlocked on Synapse (a hand-over whose answer never
/// came back, or an admin's doing) is no longer held as lifeboat made it:
/// its claim link sets no password over the one chosen then.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_link_sets_no_password_once_the_held_account_was_unlocked_elsewhere() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    let localpart = lost[0].trim_start_matches('@').split(':').next().unwrap().to_owned();
    rig.synapse.register_admin(&unique("root"));
    rig.synapse.unlock_user(&localpart, "chosen before the answer was lost").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (url, cookie, form) = claim_form(&http, &rig, &link, "sea+shanty+lighthouse").await;

    let (status, page) = post_form(&http, &url, Some(&cookie), &form).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("your password may have been set anyway"), "{page}");
    assert_eq!(rig.synapse.login(&localpart, "chosen before the answer was lost").await.0, 200);
    assert_ne!(rig.synapse.login(&localpart, "sea shanty lighthouse").await.0, 200, "no password was set");
}

/// A visitor who closes the tab while their ID is handed over must not
/// cut the hand-over short: it finishes, and is recorded, without them.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_visitor_leaves_mid_hand_over_still_finishes() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    let localpart = lost[0].trim_start_matches('@').split(':').next().unwrap().to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (url, cookie, form) = claim_form(&http, &rig, &link, "sea+shanty+lighthouse").await;

    // With Synapse frozen, the visitor gives up while the hand-over waits.
    rig.synapse.pause();
    let impatient = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    let left = impatient
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .body(form)
        .send()
        .await;
    assert!(left.is_err(), "the visitor left before an answer: {left:?}");
    rig.synapse.resume();

    eventually("the hand-over finishes without its visitor", Duration::from_secs(60), || async {
        let shown = rig.lifeboat.run(&["users", "show", &lost[0], "--json"]).await;
        shown.code == 0 && shown.json()["state"] == "claimed"
    })
    .await;
    assert_eq!(rig.synapse.login(&localpart, "sea shanty lighthouse").await.0, 200, "their password works");
}

#[tokio::test(flavor = "multi_thread")]
async fn while_an_ids_hold_is_being_made_neither_its_claim_link_nor_the_cli_hands_it_over() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    assert_eq!(status_of(link.clone()).await, 200, "the link works while the ID is held");

    // A hold of the same ID is being made again (its lock would undo a claim).
    set_custody(&rig, &lost[0], "holding").await;
    let (status, page) = get_page(&link).await;
    assert_eq!(status, 400, "the link reads as dead: {page}");
    assert!(page.contains("This link does not work"), "{page}");
    let by_hand = rig.lifeboat.run_with_input(&["holds", "claim", &lost[0]], "a-long-enough-passphrase\n").await;
    assert_ne!(by_hand.code, 0, "{by_hand:?}");
    assert!(by_hand.stderr.contains("run this again once the hold is made"), "{by_hand:?}");
    let released = rig.lifeboat.run(&["holds", "release", &lost[0], "--yes"]).await;
    assert!(released.stderr.contains("run this again once the hold is made"), "nor released: {released:?}");

    // Once the hold is made, the same link works again.
    set_custody(&rig, &lost[0], "held").await;
    assert_eq!(status_of(link).await, 200, "the link works again");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_registered_before_its_hold_is_left_alone_and_treated_as_a_stranger_everywhere() {
    let people = people(2);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    rig.synapse.wipe();
    // Before lifeboat sees the wipe, someone registers the admin's ID and a person's.
    let squatter = rig.synapse.register(&rig.alice_localpart);
    let (victim, _) = &people[0];
    let victim_squatter = rig.synapse.register(victim);
    rig.serve_in_background();

    let lifeboat = &rig.lifeboat;
    let taken = vec![squatter.user_id.clone(), victim_squatter.user_id.clone()];
    let others = ids_of(&rig.synapse, &people[1..]);
    eventually("the others are held", Duration::from_secs(90), || async {
        all_in(lifeboat, "recreated", &taken).await && all_in(lifeboat, "held", &others).await
    })
    .await;
    // Never modified: the squatters' passwords still work, nothing is locked.
    for (localpart, registered) in [(&rig.alice_localpart, &squatter), (victim, &victim_squatter)] {
        let (status, _) = rig.synapse.login(localpart, registered.password.as_deref().unwrap()).await;
        assert_eq!(status, 200, "{localpart} is untouched");
    }
    rig.synapse.register_admin(&unique("root"));
    assert_eq!(rig.synapse.user(victim).await["locked"], false);

    // The admins are told, the admin ID by name.
    let smtp = &rig.smtp;
    eventually("the alert names the taken admin ID", Duration::from_secs(60), || async {
        smtp.messages_to("oncall@example.org")
            .iter()
            .any(|mail| mail.text.as_deref().unwrap_or_default().contains("An admin ID was taken"))
    })
    .await;

    // The bot neither invites nor obeys the squatted admin ID.
    let squatted_admin = MatrixUser::new(&rig.synapse.url, &squatter.user_id, &squatter.access_token);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(squatted_admin.invites().await.is_empty(), "no invite to the new admin room");
    // Nor takes it into a DM, where it would tell or take contacts.
    let dm = squatted_admin.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={dm}"), 0).await;
    assert_ne!(squatted_admin.membership_of(&dm, &rig.bot).await.as_deref(), Some("join"));

    // The web page gives a stranger's ID nothing: no token link, no subscription.
    open_and_notify(&rig.lifeboat).await;
    let mails_before = rig.smtp.count();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (cookie, csrf) = form_csrf(&http, &format!("{}/token", rig.web)).await;
    let who = rig.synapse.user_id(victim).replace('@', "%40").replace(':', "%3A");
    let (status, _) =
        post_form(&http, &format!("{}/token", rig.web), Some(&cookie), &format!("csrf={csrf}&who={who}")).await;
    assert_eq!(status, 200);
    let (cookie, csrf) = form_csrf(&http, &format!("{}/subscribe", rig.web)).await;
    let form = format!("csrf={csrf}&matrix_id={who}&email=attacker%40evil.example");
    let (status, _) = post_form(&http, &format!("{}/subscribe", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The subscription mails its address as for any ID (the inbox must
    // not tell which exist), but no code goes to the stranger's ID.
    let sent: Vec<String> = rig.smtp.messages().into_iter().skip(mails_before).flat_map(|mail| mail.rcpt_tos).collect();
    assert!(sent.iter().all(|to| to == "attacker@evil.example"), "no token link for a stranger's ID: {sent:?}");
    assert!(squatted_admin.invites().await.is_empty(), "no code DMed to a stranger's ID");
}

/// Right after a wipe, before any listing has shown it, the registry still
/// has every ID as its person's. Someone who registers an ID in that window
/// is not its person, because their account was made after the one the
/// registry knows: the bot, recovering at once, does not invite them to its
/// new admin room for an admin's ID, nor join their DM on a person's
/// (where contacts are told and taken), and the page DMs them no code.
#[tokio::test(flavor = "multi_thread")]
async fn ids_registered_again_before_any_listing_saw_the_wipe_are_strangers_to_the_bot_and_the_page() {
    let people = people(1);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    // No listing and no probe while the test looks; a second admin, whose
    // account is made only after the wipe: no listing saw that ID, so
    // whoever registered it is a stranger too (not invited).
    let newcomer_localpart = unique("harbourmaster");
    let newcomer_id = rig.synapse.user_id(&newcomer_localpart);
    let config = std::fs::read_to_string(rig.lifeboat.config_path()).unwrap();
    let config = config
        .replace("interval = \"2s\"", "interval = \"1h\"\nprobe_interval = \"0s\"")
        .replace("admins = [\"", &format!("admins = [\"{newcomer_id}\", \""));
    rig.lifeboat.write_config(&config);
    rig.serve().await;

    rig.synapse.wipe();
    let squatter = rig.synapse.register(&rig.alice_localpart);
    let newcomer_account = rig.synapse.register(&newcomer_localpart);
    let newcomer = MatrixUser::new(&rig.synapse.url, &newcomer_account.user_id, &newcomer_account.access_token);
    let (victim, _) = &people[0];
    let victim_squatter = rig.synapse.register(victim);
    let lifeboat = &rig.lifeboat;
    eventually("the bot makes a new admin room", Duration::from_secs(90), || async {
        lifeboat.serve_log().contains("made a new admin room")
    })
    .await;
    // The bot looks for admins to invite every 5 s: two rounds.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let squatted = MatrixUser::new(&rig.synapse.url, &squatter.user_id, &squatter.access_token);
    assert!(squatted.invites().await.is_empty(), "no invite to the admin room:\n{}", lifeboat.serve_log());
    assert!(newcomer.invites().await.is_empty(), "nor for an admin ID no listing saw:\n{}", lifeboat.serve_log());

    let squatted_person = MatrixUser::new(&rig.synapse.url, &victim_squatter.user_id, &victim_squatter.access_token);
    let dm = squatted_person.create_room(&[&rig.bot], true).await;
    logged_more_than(&rig.lifeboat, &format!("declined an invite room={dm}"), 0).await;
    assert_ne!(
        squatted_person.membership_of(&dm, &rig.bot).await.as_deref(),
        Some("join"),
        "no DM to tell contacts in"
    );

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (cookie, csrf) = form_csrf(&http, &format!("{}/subscribe", rig.web)).await;
    let who = victim_squatter.user_id.replace('@', "%40").replace(':', "%3A");
    let form = format!("csrf={csrf}&matrix_id={who}&email=attacker%40evil.example");
    let (status, _) = post_form(&http, &format!("{}/subscribe", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 200);
    eventually("the page mails the typed address", Duration::from_secs(20), || async {
        !rig.smtp.messages_to("attacker@evil.example").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(squatted_person.invites().await.is_empty(), "no code DMed to the ID");

    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    for id in [&squatter.user_id, &victim_squatter.user_id] {
        let known = registry.account(&lifeboat::user_id::UserId::parse(id).unwrap()).await.unwrap().unwrap();
        assert_eq!(known.state, lifeboat::registry::AccountState::Present, "no listing saw the wipe meanwhile");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_an_admin_locked_gets_no_token_and_no_claim_link_from_any_face() {
    let people = people(2);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    let (locked, locked_email) = &people[0];
    rig.synapse.lock_user(locked).await;
    sync_beside_serve(&rig.lifeboat).await;
    rig.serve().await;
    wipe_until_held(&rig, &people).await;
    open_and_notify(&rig.lifeboat).await;
    let notice = notice_to(&rig, locked_email);
    assert!(!notice.contains("/claim?") && !notice.contains("registration token: "), "{notice}");

    let mails_before = rig.smtp.messages_to(locked_email).len();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (cookie, csrf) = form_csrf(&http, &format!("{}/token", rig.web)).await;
    let form = format!("csrf={csrf}&who={}", locked_email.replace('@', "%40"));
    let (status, _) = post_form(&http, &format!("{}/token", rig.web), Some(&cookie), &form).await;
    assert_eq!(status, 200);
    let (_, other_email) = &people[1];
    let (cookie, csrf) = form_csrf(&http, &format!("{}/token", rig.web)).await;
    let form = format!("csrf={csrf}&who={}", other_email.replace('@', "%40"));
    post_form(&http, &format!("{}/token", rig.web), Some(&cookie), &form).await;
    let smtp = &rig.smtp;
    eventually("the other person's link arrives", Duration::from_secs(30), || async {
        smtp.messages_to(other_email).len() >= 2
    })
    .await;
    assert_eq!(rig.smtp.messages_to(locked_email).len(), mails_before, "nothing for the locked account");
    assert!(rig.smtp.messages_to(other_email).last().unwrap().text.as_deref().unwrap().contains("/claim?"));

    // The admin takes their held ID back on the lifeboat host; the bot then
    // trusts it again, invites it, and refuses the locked account a token too.
    let alice_id = rig.synapse.user_id(&rig.alice_localpart);
    let weak = rig.lifeboat.run_with_input(&["holds", "claim", &alice_id], "short\n").await;
    assert_eq!(weak.code, 2, "a weak password is refused: {weak:?}");
    let alice = rig.alice_takes_her_id_back().await;
    let room = alice.first_invite().await;
    alice.join(&room).await;
    alice.send(&room, &format!("!lifeboat token {}", rig.synapse.user_id(locked))).await;
    let refused = alice.wait_for_message(&room, &rig.bot, "nothing to send", Duration::from_secs(60)).await;
    assert!(refused.contains("locked or deactivated"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn holding_a_thousand_ids_stopped_killed_and_waited_for_by_an_incident_holds_each_exactly_once() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let count = 1000;
    let prefix = unique("many");
    synapse
        .create_accounts(
            count,
            |n| format!("{prefix}-{n:04}"),
            |n| serde_json::json!({"displayname": format!("Person {n}")}),
        )
        .await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    // Recovers lifeboat's account and lists the loss; holds come later.
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    // Ctrl-C: the holds under way finish, no new one begins.
    let stopped = lifeboat.spawn_captured(&["holds", "make"]);
    eventually("some are held", Duration::from_secs(120), || async { ids_in(&lifeboat, "held").await.len() >= 100 })
        .await;
    // A second run meanwhile would take the first one's new accounts for
    // strangers'; it leaves the IDs to the first.
    let second = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(second.code, 1, "{second:?}");
    assert!(second.stderr.contains("another hold run is under way"), "{second:?}");
    unsafe { libc::kill(stopped.id().unwrap() as i32, libc::SIGINT) };
    let stopped = stopped.wait_with_output().await.unwrap();
    let said = String::from_utf8_lossy(&stopped.stdout);
    assert_eq!(stopped.status.code(), Some(1), "{said}");
    assert!(said.contains("stopped before the rest, which the next run holds"), "{said}");
    let after_stop = ids_in(&lifeboat, "held").await.len();
    assert!(after_stop < count, "stopped before the end ({after_stop} held)");

    // kill -9: a hold may be left half made.
    let mut first = lifeboat.spawn(&["holds", "make"]);
    eventually("more are held", Duration::from_secs(120), || async {
        ids_in(&lifeboat, "held").await.len() >= after_stop + 100
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let after_kill = ids_in(&lifeboat, "held").await.len();
    assert!(after_kill < count, "killed before the end ({after_kill} held)");

    // An incident opened while another run (another host's, for 8 s) holds
    // waits for it, then holds the rest itself, so its notices find them held.
    let registry_client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let ttl = 8_000;
    let taken = registry_client.take_lease("holds", "another-host:1:1", ttl, None).await.unwrap();
    // Over the killed run's lease, if it is still there.
    if let Err((killed, _)) = taken {
        registry_client.take_lease("holds", "another-host:1:1", ttl, Some(&killed)).await.unwrap().unwrap();
    }
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    let rerun = lifeboat.run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(rerun.code, 0, "{rerun:?}");
    assert!(rerun.stderr.contains("is holding lost IDs; waiting for it to finish"), "{rerun:?}");
    assert_eq!(ids_in(&lifeboat, "held").await.len(), count + 1, "every lost ID held (and the original admin)");
    assert!(ids_in(&lifeboat, "recreated").await.is_empty(), "none taken for a stranger's: {rerun:?}");
    let again = lifeboat.run(&["holds", "make"]).await;
    assert!(again.stdout.contains("No lost ID is waiting"), "{again:?}");
}

/// `incident open` after a big wipe, with nothing holding the lost IDs
/// before it (`recovery.hold = "on-incident"`), holds them first: it says
/// so rather than keep silent for minutes.
#[tokio::test(flavor = "multi_thread")]
async fn an_incident_opened_after_a_big_wipe_says_it_holds_the_lost_ids_first() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let prefix = unique("crowd");
    synapse.create_accounts(150, |n| format!("{prefix}-{n:04}"), |_| serde_json::json!({})).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    holding_at_incidents_only(&lifeboat);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);

    let opened = open_incident(&lifeboat).await;
    assert!(opened.stderr.contains("Holding 151 lost IDs for their owners first"), "{opened:?}");
    assert_eq!(ids_in(&lifeboat, "held").await.len(), 151, "the 150 and the harness's admin");
}

/// Ctrl-C while `incident open`, then `notify`, hold a big wipe's lost IDs
/// first: the holds under way finish, no new one begins, the incident stays
/// open, and nothing is made or sent while an ID is free; the next run holds
/// the rest. Synapse is frozen while the signal arrives, so that the holds
/// under way are still under way.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_lost_ids_are_held_before_an_incident_stops_the_holds_and_sends_nothing() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (prefix, count) = (unique("crowd"), 300);
    let email = |n: usize| format!("{prefix}-{n:04}@example.org");
    let body = |n: usize| serde_json::json!({"threepids": [{"medium": "email", "address": email(n)}]});
    synapse.create_accounts(count, |n| format!("{prefix}-{n:04}"), body).await;
    let lifeboat = recovering_with_mail(&synapse, &registry, &smtp);
    holding_at_incidents_only(&lifeboat);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();

    let interrupted = |args: &'static [&'static str], after: usize, code: i32| {
        let (lifeboat, synapse) = (&lifeboat, &synapse);
        async move {
            let run = lifeboat.spawn_captured(args);
            eventually("more lost IDs are held", Duration::from_secs(120), || async {
                ids_in(lifeboat, "held").await.len() >= after + 20
            })
            .await;
            synapse.pause();
            unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGINT) };
            tokio::time::sleep(Duration::from_secs(1)).await;
            synapse.resume();
            let ended = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output()).await;
            let output = ended.expect("it ends soon after Ctrl-C").unwrap();
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert_eq!(output.status.code(), Some(code), "{said}");
            let held = ids_in(lifeboat, "held").await.len();
            assert!(held < count, "stopped before the end ({held} held): {said}");
            (said, held)
        }
    };
    let open = &["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md"];
    let (said, held) = interrupted(open, 0, 130).await;
    assert!(said.contains("Opened incident 1") && said.contains("stopped before the rest"), "{said}");
    assert!(said.contains("interrupted: incident 1 is open"), "{said}");

    let (said, _) = interrupted(&["notify", "1", "--yes"], held, 130).await;
    assert!(said.contains("stopped before any registration token was made or notice sent"), "{said}");
    synapse.register_admin(&unique("root"));
    assert!(synapse.registration_tokens().await.is_empty(), "no token while IDs are free");
    assert!(smtp.messages().is_empty(), "nothing sent");

    let rest = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(rest.code, 0, "{rest:?}");
    assert_eq!(ids_in(&lifeboat, "held").await.len(), count + 1, "the rest held (and the harness's admin)");
}

/// lifeboat with only Synapse (admin token and shared secret) and a registry.
/// An operator hands a stranger's ID back to its person: whatever the
/// stranger tied to the account to get back in (an email address for a
/// password reset, a single sign-on identity) goes with the password, and
/// the next sync does not take the stranger's address for the person's.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_handed_back_from_a_stranger_keeps_none_of_the_strangers_ways_in() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    let email = format!("{person}@example.org");
    synapse.create_user(&person, &[&email]).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    synapse.wipe();
    synapse.register_admin(&unique("root"));
    synapse.create_user(&person, &["attacker@evil.example"]).await;
    let sso = serde_json::json!({"external_ids": [{"auth_provider": "evil-idp", "external_id": "mallory"}]});
    let path = format!("/_synapse/admin/v2/users/{}", synapse.user_id(&person));
    assert_eq!(synapse.admin_request(reqwest::Method::PUT, &path, Some(sso)).await.0, 200);
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert!(ids_in(&lifeboat, "recreated").await.contains(&synapse.user_id(&person)));
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    // And a device named as lifeboat's own (its ID is public), which the
    // hand-over's logout would spare as the requester's.
    let own = lifeboat::recover::service_user_id(
        &lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap(),
    );
    let own_device = store.service_credential(&own).await.unwrap().unwrap().device_id.unwrap();
    let login = serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": person},
                                   "password": "correct horse battery", "device_id": own_device});
    let logged_in = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", synapse.url))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert!(logged_in.status().is_success(), "{:?}", logged_in.text().await);
    let handed_back = lifeboat::user_id::UserId::parse(&synapse.user_id(&person)).unwrap();
    let seen_before = store.account(&handed_back).await.unwrap().unwrap();

    let claimed =
        lifeboat.run_with_input(&["holds", "claim", &synapse.user_id(&person)], "a-long-enough-passphrase\n").await;
    assert_eq!(claimed.code, 0, "{claimed:?}");
    let devices = format!("/_synapse/admin/v2/users/{}/devices", synapse.user_id(&person));
    let (_, devices) = synapse.admin_request(reqwest::Method::GET, &devices, None).await;
    assert_eq!(devices["total"], 0, "no device of the stranger's stays: {devices}");
    let account = synapse.user(&person).await;
    let addresses: Vec<&str> =
        account["threepids"].as_array().unwrap().iter().filter_map(|threepid| threepid["address"].as_str()).collect();
    assert_eq!(addresses, [email.as_str()], "the person's address, not the stranger's: {account}");
    assert_eq!(account["external_ids"], serde_json::json!([]), "{account}");

    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&person), "--json"]).await.json();
    let contacts = shown["contacts"].as_array().unwrap();
    assert!(contacts.iter().all(|contact| contact["address"] != "attacker@evil.example"), "{shown}");

    // A release the operator confirmed after the ID was handed back (asked
    // at its prompt before) finds it no longer held: nothing is deactivated.
    let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
    let client = lifeboat::recover::admin_access(&config, &store).await.unwrap().working().unwrap();
    let actor = lifeboat::registry::Actor::cli();
    let released = lifeboat::holds::release(&store, &client, &handed_back, &actor).await;
    assert!(released.is_err_and(|err| err.to_string().contains("no longer held")));
    assert_eq!(synapse.user(&person).await["deactivated"], false);
    // Nor does a second hand-back, asked for while the ID was still taken,
    // set another password over the one its person chose meanwhile.
    let again = lifeboat::holds::hand_back(&store, &client, &seen_before, &"operator-pass-1".into(), &actor).await;
    assert!(again.is_err_and(|err| err.to_string().contains("no longer held")));
    assert_eq!(synapse.login(&person, "a-long-enough-passphrase").await.0, 200, "the person's password stands");
}

/// From the operator's hand-back on, the account there is the person's:
/// someone registering the ID after another wipe, before any listing saw
/// the hand-back, is told from them by the account's creation time.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_the_operator_handed_back_is_told_from_a_stranger_on_it_after_another_wipe() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    synapse.create_user(&person, &[&format!("{person}@example.org")]).await;
    let lifeboat = holding_after_a_wipe(&synapse, &registry).await;
    let person_id = synapse.user_id(&person);
    let claimed = lifeboat.run_with_input(&["holds", "claim", &person_id], "a-long-enough-passphrase\n").await;
    assert_eq!(claimed.code, 0, "{claimed:?}");

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let stranger = synapse.register(&person);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(ids_in(&lifeboat, "recreated").await, vec![stranger.user_id]);
}

/// Synapse binds no registration token to a name, so no notice (each
/// carries one) goes out while a lost ID is free: `notify` holds the lost
/// IDs first, and while one still cannot be held it refuses, making no
/// token and sending nothing.
#[tokio::test(flavor = "multi_thread")]
async fn no_notice_goes_out_while_a_lost_id_could_not_be_held() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (first, second) = (unique("first"), unique("second"));
    for person in [&first, &second] {
        synapse.create_user(person, &[&format!("{person}@example.org")]).await;
    }
    let mut lifeboat = recovering_with_mail(&synapse, &registry, &smtp);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    // Synapse is "busy" whenever lifeboat would make the first ID's account.
    let front = FaultyFront::start(&synapse.url, reqwest::Method::PUT, &first, usize::MAX).await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &front.url);
    open_incident(&lifeboat).await;

    let dry = lifeboat.run(&["notify", "1", "--dry-run"]).await;
    let unheld = format!("1 lost ID is not held yet ({}): sending holds them first", synapse.user_id(&first));
    assert!(dry.stderr.contains(&unheld), "{dry:?}");
    let refused = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("not held yet") && refused.stderr.contains(&synapse.user_id(&first)),
        "{refused:?}"
    );
    assert_eq!(smtp.count(), 0, "nothing was mailed");
    let tokens = lifeboat.run(&["tokens", "list", "--json"]).await;
    assert_eq!(tokens.json().as_array().map(Vec::len), Some(0), "no token was made: {tokens:?}");

    // Synapse answers again: the next notify holds the ID, then sends.
    lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &synapse.url);
    let sent = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_eq!(sent.code, 0, "{sent:?}");
    assert!(ids_in(&lifeboat, "held").await.contains(&synapse.user_id(&first)), "{sent:?}");
    assert_eq!(smtp.messages_to(&format!("{first}@example.org")).len(), 1, "{sent:?}");
}

/// A lost ID serve's watcher cannot hold (Synapse is busy whenever
/// lifeboat makes that one account) keeps every registration token back:
/// the admins are told, with the ID and what to do, once and not again
/// each round while nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_id_the_watcher_cannot_hold_is_alerted_once_with_what_it_holds_back() {
    let people = people(2);
    let mut rig = Rig::start(TestSmtp::start(None), &people).await;
    assert_eq!(rig.lifeboat.run(&["sync"]).await.code, 0);
    let front = FaultyFront::start(&rig.synapse.url, reqwest::Method::PUT, &people[0].0, usize::MAX).await;
    rig.lifeboat.set_env("LIFEBOAT__HOMESERVER__URL", &front.url);
    rig.serve().await;
    rig.synapse.wipe();

    let (smtp, stuck) = (&rig.smtp, rig.synapse.user_id(&people[0].0));
    let alerts_not_held = || {
        let alerts = smtp.messages_to("oncall@example.org");
        alerts.into_iter().filter_map(|mail| mail.text.filter(|text| text.contains("not held yet"))).collect::<Vec<_>>()
    };
    eventually("an alert says a lost ID is not held", Duration::from_secs(90), || async {
        !alerts_not_held().is_empty()
    })
    .await;
    let alert = &alerts_not_held()[0];
    assert!(
        alert.contains(&stuck)
            && alert.contains("No registration token goes out")
            && alert.contains("lifeboat holds make"),
        "{alert}"
    );
    let (_, metrics) = Rig::fetch(&rig.metrics, "/metrics").await;
    let gauge = metrics.lines().find_map(|line| line.strip_prefix("lifeboat_lost_ids_not_held "));
    assert!(gauge.and_then(|value| value.parse::<i64>().ok()).is_some_and(|count| count >= 1), "{metrics}");
    assert!(metrics.contains("\nlifeboat_tokens_withheld 1\n"), "{metrics}");

    // Each round tries the ID again and fails again: no news.
    let store = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let rounds = rig.lifeboat.serve_log().matches("watcher round").count();
    logged_more_than(&rig.lifeboat, "watcher round", rounds + 2).await;
    let alerted = store.audit_log(1_000).await.unwrap();
    let not_held: Vec<_> = alerted
        .iter()
        .filter(|entry| {
            entry.action == "alert" && entry.subject.as_deref().unwrap_or_default().contains("not held yet")
        })
        .collect();
    assert_eq!(not_held.len(), 1, "{not_held:?}");
    store.close().await;
}

/// serve's delivery worker sends only what a notify planned, but a notice
/// carries its person's token all the same: while a lost ID is not held
/// (another loss since, a hold that failed) it holds such notices back, and
/// sends them once the IDs are held.
#[tokio::test(flavor = "multi_thread")]
async fn the_delivery_worker_holds_back_a_notice_with_a_token_until_the_lost_ids_are_held() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let person = unique("wren");
    let address = format!("{person}@example.org");
    synapse.create_user(&person, &[&address]).await;
    let lifeboat = recovering_with_mail(&synapse, &registry, &smtp);
    // Only incidents and notify hold: the watcher leaves the new loss be.
    holding_at_incidents_only(&lifeboat);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    open_incident(&lifeboat).await;
    smtp.spend_quota();
    let notified = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_eq!(notified.code, 1, "the notice waits for the relay: {notified:?}");
    // No [web]: the admin is told before it goes that held IDs get no link.
    assert!(notified.stderr.contains("people whose ID is held get no claim link"), "{notified:?}");

    // Another ID is lost, not held; the waiting notice is due, the relay back.
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let lost = lost_and_not_held(&synapse, &store).await;
    sqlx::query("UPDATE deliveries SET next_attempt_at = 0 WHERE state = 'pending'")
        .execute(store.pool())
        .await
        .unwrap();
    // And a token an admin had the bot mail, waiting in the outbox too.
    let other = token_mailed_by_the_bot(&synapse, &store).await;
    smtp.heal();
    let _serve = lifeboat.spawn_serve();
    eventually("the worker holds the notice and the token back", Duration::from_secs(60), || async {
        let why: Vec<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM deliveries").fetch_all(store.pool()).await.unwrap();
        why.iter().flatten().filter(|why| why.contains(&format!("not held yet ({lost})"))).count() == 2
    })
    .await;
    assert!(smtp.messages_to(&address).is_empty(), "{}", lifeboat.serve_log());
    assert!(smtp.messages_to(&other).is_empty(), "{}", lifeboat.serve_log());

    // Once it is held (here by hand), the notice goes when it is due again
    // (made due again while waiting: a round of the worker that read it
    // before the hold may have put it off once more).
    let held = "UPDATE accounts SET custody = 'held', custody_at = 1, state = 'present' WHERE state = 'missing' AND user_id = $1";
    sqlx::query(held).bind(&lost).execute(store.pool()).await.unwrap();
    eventually("the notice and the token go", Duration::from_secs(60), || async {
        let due = "UPDATE deliveries SET next_attempt_at = 0, not_before = NULL WHERE state = 'pending'";
        sqlx::query(due).execute(store.pool()).await.unwrap();
        smtp.messages_to(&address).len() == 1 && smtp.messages_to(&other).len() == 1
    })
    .await;
}

/// Right after a wipe, once lifeboat is back in and before any listing has
/// shown who was lost, every ID may be free: no notice with a token goes
/// out, even for an incident that was open before.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_goes_out_after_a_wipe_until_a_listing_has_shown_who_was_lost() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (lifeboat, address) = one_person_in_an_open_incident(&synapse, &registry, &smtp).await;

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let notified = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_ne!(notified.code, 0, "{notified:?}");
    assert!(
        notified.stderr.contains("no listing since has shown which IDs were lost (`lifeboat sync`")
            && notified.stderr.contains("let a listing show who was lost (")
            && !notified.stderr.contains("holds make"),
        "{notified:?}"
    );
    assert!(smtp.messages_to(&address).is_empty(), "no token for an ID anyone could take");
    synapse.register_admin("checker");
    assert!(synapse.registration_tokens().await.is_empty(), "no token made in the wiped Synapse");

    a_listing_lets_notify_send(&lifeboat, &smtp, &address).await;
}

/// One person with an address, synced, and an incident open for everyone;
/// their address.
async fn one_person_in_an_open_incident(
    synapse: &TestSynapse,
    registry: &TestDatabase,
    smtp: &TestSmtp,
) -> (Lifeboat, String) {
    let person = unique("wren");
    let address = format!("{person}@example.org");
    synapse.create_user(&person, &[&address]).await;
    let lifeboat = recovering_with_mail(synapse, registry, smtp);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    let opened = lifeboat
        .run(&["incident", "open", "--title", "Maintenance", "--postmortem", "postmortem.md", "--affected", "all"])
        .await;
    assert_eq!(opened.code, 0, "{opened:?}");
    (lifeboat, address)
}

/// A listing shows the loss; holding it, notify sends the one notice.
async fn a_listing_lets_notify_send(lifeboat: &Lifeboat, smtp: &TestSmtp, address: &str) {
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let notified = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_eq!(notified.code, 0, "{notified:?}");
    assert_eq!(smtp.messages_to(address).len(), 1);
}

/// An admin who gets back into a wiped Synapse by hand (a new admin, its
/// token put in the config) leaves lifeboat no recovery to date the wipe
/// by: Synapse counting fewer accounts than the last listing read does.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_goes_out_after_a_wipe_an_admin_got_back_into_by_hand_until_a_listing() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (lifeboat, address) = one_person_in_an_open_incident(&synapse, &registry, &smtp).await;

    wiped_and_got_back_into_by_hand(&synapse, &lifeboat);
    let notified = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_ne!(notified.code, 0, "{notified:?}");
    assert!(
        notified.stderr.contains("found fewer accounts there than its last listing")
            && notified.stderr.contains("let a listing show who was lost ("),
        "{notified:?}"
    );
    assert!(smtp.messages_to(&address).is_empty(), "no token for an ID anyone could take");
    assert!(synapse.registration_tokens().await.is_empty(), "no token made in the wiped Synapse");

    a_listing_lets_notify_send(&lifeboat, &smtp, &address).await;
}

/// A bridge's users that the bridge registers again after a wipe are its
/// own, not strangers': Synapse lets only the bridge register an ID in its
/// namespace. One another service had before stays a stranger's.
#[tokio::test(flavor = "multi_thread")]
async fn ids_a_bridge_registers_again_after_a_wipe_are_its_own_not_strangers() {
    let synapse = TestSynapse::start_with_a_bridge();
    let registry = TestDatabase::sqlite();
    let (bridged, other) = (unique("tg"), unique("tg"));
    let bridged_id = synapse.register_puppet(&bridged).await;
    let other_id = synapse.register_puppet(&other).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(synapse.register_puppet(&bridged).await, bridged_id);
    assert_eq!(synapse.register_puppet(&other).await, other_id);
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let another = "UPDATE accounts SET appservice_id = 'another-bridge' WHERE user_id = $1";
    sqlx::query(another).bind(&other_id).execute(store.pool()).await.unwrap();

    let synced = lifeboat.run(&["sync"]).await;
    assert_eq!(synced.code, 0, "{synced:?}");
    assert!(synced.stdout.contains(&format!("application service (bridge) that had them, so its own: {bridged_id}")));
    let recreated = synced.stdout.lines().find(|line| line.contains("recreated (same ID")).unwrap();
    assert!(recreated.contains(&other_id) && !recreated.contains(&bridged_id), "{recreated}");
    let lifeboat = &lifeboat;
    let state = |user_id: String| async move {
        let shown = lifeboat.run(&["users", "show", &user_id, "--json"]).await;
        shown.json()["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(state(bridged_id.clone()).await, "present");
    assert_eq!(state(other_id.clone()).await, "recreated", "not by the service that had it");
    let recorded: Option<String> = sqlx::query_scalar("SELECT appservice_id FROM accounts WHERE user_id = $1")
        .bind(&other_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, None, "not asked about again");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(state(bridged_id).await, "present", "and stays so");
}

/// Synapse wiped, and a new admin made by hand, its token put in lifeboat's
/// config. No shared secret either: lifeboat cannot get back in by itself,
/// so nothing but Synapse's count of accounts can tell it of the wipe.
fn wiped_and_got_back_into_by_hand(synapse: &TestSynapse, lifeboat: &Lifeboat) {
    let old_token = synapse.admin_token();
    synapse.wipe();
    let new_token = synapse.register_admin(&unique("by-hand"));
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    let config: String = config
        .lines()
        .filter(|line| !line.starts_with("registration_shared_secret"))
        .map(|line| format!("{}\n", line.replace(&old_token, &new_token)))
        .collect();
    lifeboat.write_config(&config);
}

/// A Synapse restored from an older backup has again the tokens lifeboat
/// deleted since, and a resolved incident's used ones unused again, and
/// each could register a lost ID: whatever sees the loss deletes them, a
/// token request finding fewer accounts than the last listing read, and a
/// listing finding accounts missing (and each sync after, until it works).
#[tokio::test(flavor = "multi_thread")]
async fn tokens_lifeboat_deleted_that_synapse_has_again_are_deleted_once_a_loss_is_seen() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (lifeboat, address) = one_person_in_an_open_incident(&synapse, &registry, &smtp).await;
    // Two tokens of the incident, resolved since: one lifeboat deleted as
    // resolving does, and one that was used, which resolving leaves be.
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let person = crate::harness::id(&synapse.user_id(address.split('@').next().unwrap()));
    let (revoked, used) = ("RevokedLongAgo", "UsedLongAgo");
    let (purpose, until) = (lifeboat::registry::TokenPurpose::Notice, lifeboat::registry::now_ms() + 3_600_000);
    let recorded = store.record_token(purpose, 1, &person, revoked, until).await.unwrap();
    store.mark_token_revoked(recorded).await.unwrap();
    store.record_token(lifeboat::registry::TokenPurpose::Request, 1, &person, used, until).await.unwrap();
    sqlx::query("UPDATE incidents SET resolved_at = 1").execute(store.pool()).await.unwrap();
    let in_synapse =
        |tokens: Vec<serde_json::Value>| tokens.iter().any(|t| t["token"] == revoked || t["token"] == used);

    // The restore: fewer accounts, and both tokens there again, unused.
    wiped_and_got_back_into_by_hand(&synapse, &lifeboat);
    let revive = || async {
        for token in [revoked, used] {
            let body = serde_json::json!({"token": token, "uses_allowed": 1});
            let path = "/_synapse/admin/v1/registration_tokens/new";
            assert_eq!(synapse.admin_request(reqwest::Method::POST, path, Some(body)).await.0, 200);
        }
    };
    revive().await;
    let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
    let client = lifeboat::recover::admin_access(&config, &store).await.unwrap().working().unwrap();
    let withheld = lifeboat::tokens::tokens_withheld_now(&config, &store, &client).await.unwrap();
    assert!(withheld.is_some(), "fewer accounts than the last listing read");
    assert!(!in_synapse(synapse.registration_tokens().await), "deleted as the count is asked");

    revive().await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert!(!in_synapse(synapse.registration_tokens().await), "deleted by the listing that finds the loss");

    // A check that did not work (Synapse did not answer) is made by the
    // next sync, though it finds no new loss; once it worked, none is.
    revive().await;
    let due = "UPDATE settings SET value = $1 WHERE name = 'revived_tokens_check_due'";
    sqlx::query(due).bind("yes").execute(store.pool()).await.unwrap();
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert!(!in_synapse(synapse.registration_tokens().await), "deleted by the sync after a check that failed");
    revive().await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert!(in_synapse(synapse.registration_tokens().await), "no loss, no check due: Synapse is not asked");
}

/// A token the bot mailed that waited (a retry) through a wipe is held back
/// once due: serve's worker asks Synapse then, as the bot did when it made
/// the token, and holds it back while it cannot.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_mail_from_the_bot_due_after_a_wipe_waits_until_synapse_shows_nothing_lost() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let (lifeboat, _) = one_person_in_an_open_incident(&synapse, &registry, &smtp).await;
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let to = token_mailed_by_the_bot(&synapse, &store).await;
    // Due now, then what the worker's check did with it: why, if held back.
    let held_back = || async {
        let now = lifeboat::registry::now_ms();
        let due = "UPDATE deliveries SET next_attempt_at = $1, not_before = NULL, last_error = NULL";
        sqlx::query(due).bind(now).execute(store.pool()).await.unwrap();
        let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
        let may_go = lifeboat::worker::hold_back_bot_tokens(&config, &store).await.unwrap();
        let (at, why): (i64, Option<String>) =
            sqlx::query_as("SELECT next_attempt_at, last_error FROM deliveries").fetch_one(store.pool()).await.unwrap();
        assert_eq!(may_go, at <= now, "held back exactly when it may not go");
        (at > now).then(|| why.unwrap_or_default())
    };
    assert_eq!(held_back().await, None, "nothing lost yet");

    let old_token = synapse.admin_token();
    synapse.wipe();
    let why = held_back().await;
    assert!(why.as_deref().is_some_and(|why| why.contains("rejects every admin token")), "{why:?}");
    // Asked as a send run claims it too (a retry that comes due during a run).
    let due = "UPDATE deliveries SET next_attempt_at = $1, not_before = NULL, last_error = NULL";
    sqlx::query(due).bind(lifeboat::registry::now_ms()).execute(store.pool()).await.unwrap();
    let config = lifeboat::config::Config::load(lifeboat.config_path(), std::iter::empty()).unwrap();
    let mailer = lifeboat::mail::Mailer::from_config(config.email.as_ref().unwrap(), 1).unwrap();
    let ask = lifeboat::worker::AskSynapse { config: &config, registry: &store };
    let queued = lifeboat::outbox::QueuedEmails {
        registry: &store,
        mailer: &mailer,
        server_name: &synapse.server_name,
        holds_on: true,
        token_check: Some(&ask),
    };
    struct Quiet;
    impl lifeboat::outbox::Progress for Quiet {}
    lifeboat::outbox::send_until_done(&store, &queued, 1, &Quiet).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(smtp.messages_to(&to).is_empty(), "no token mail while Synapse cannot be asked");

    synapse.register_admin(&unique("root"));
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&config.replace(&old_token, &synapse.admin_token()));
    let why = held_back().await;
    assert!(why.as_deref().is_some_and(|why| why.contains("could register one")), "fewer accounts: {why:?}");
}

/// A token mail that comes due while a send run waits for it (a retry due
/// in seconds) is held back too while a lost ID is not held: the rule is
/// asked at every claim, not only as the run begins.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_mail_that_comes_due_during_a_send_run_waits_for_the_lost_ids_too() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = recovering_with_mail(&synapse, &registry, &smtp);
    holding_at_incidents_only(&lifeboat);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let lost = lost_and_not_held(&synapse, &store).await;
    // A token an admin had the bot mail, due some seconds after serve's
    // worker begins its first run, which waits for it.
    let other = token_mailed_by_the_bot(&synapse, &store).await;
    let soon = lifeboat::registry::now_ms() + 20_000;
    sqlx::query("UPDATE deliveries SET next_attempt_at = $1").bind(soon).execute(store.pool()).await.unwrap();

    let _serve = lifeboat.spawn_serve();
    eventually("serve runs", Duration::from_secs(15), || async { lifeboat.serve_log().contains("serve is running") })
        .await;
    // Else the worker's first run could begin after the token is due, and
    // the hold-back as a run begins would be all this shows.
    assert!(lifeboat::registry::now_ms() < soon - 5_000, "serve took too long to start to tell");
    eventually("the worker holds the token back once it is due", Duration::from_secs(60), || async {
        let why: Vec<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM deliveries").fetch_all(store.pool()).await.unwrap();
        why.iter().flatten().any(|why| why.contains(&format!("not held yet ({lost})")))
    })
    .await;
    assert!(smtp.messages_to(&other).is_empty(), "{}", lifeboat.serve_log());
}

/// An ID Synapse makes for nobody (a bridge's `_` name, a guest's number,
/// another ID's case) can be neither held nor registered with a token: it
/// holds no notice back.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_id_synapse_makes_for_nobody_holds_no_notice_back_and_its_person_is_told_to_pick_a_new_name() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let person = unique("tern");
    let address = format!("{person}@example.org");
    synapse.create_user(&person, &[&address]).await;
    let lifeboat = recovering_with_mail(&synapse, &registry, &smtp);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let bridged = crate::harness::id(&synapse.user_id(&format!("_bridge_{person}")));
    store.adopt_as_lost(&[&bridged]).await.unwrap();
    store.close().await;
    let bridged_address = format!("bridged-{person}@example.org");
    let added = lifeboat.run(&["contacts", "add", bridged.as_str(), &bridged_address]).await;
    assert_eq!(added.code, 0, "{added:?}");
    open_incident(&lifeboat).await;
    let listed = lifeboat.run(&["holds", "list"]).await;
    assert!(listed.stdout.contains("(Synapse creates it for nobody: M_INVALID_USERNAME)"), "{listed:?}");

    let sent = lifeboat.run(&["notify", "1", "--yes"]).await;
    assert_eq!(sent.code, 0, "{sent:?}");
    assert_eq!(smtp.messages_to(&address).len(), 1, "{sent:?}");
    let told = smtp.messages_to(&bridged_address);
    assert_eq!(told.len(), 1, "{sent:?}");
    let text = told[0].text.as_deref().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("cannot be registered again"), "{text}");
    assert!(!text.contains("can be registered again if nobody took it first"), "{text}");
    let made = lifeboat.run(&["holds", "make"]).await;
    assert!(made.stdout.contains("IDs Synapse makes for nobody"), "asked, it tries again: {made:?}");
    let made = lifeboat.run(&["holds", "make", "--json"]).await;
    assert_eq!(made.code, 0, "nothing failed: {made:?}");
    let (holds, names) = (&made.json()["holds"], &made.json()["display_names"]);
    assert_eq!(holds["unregistrable"], serde_json::json!([bridged.as_str()]), "{made:?}");
    assert_eq!(
        (&holds["failed"], &holds["stopped"], &names["failed"]),
        (&serde_json::json!([]), &false.into(), &0.into())
    );
}

/// lifeboat's own ID, lost in a wipe nobody undid through the shared
/// secret, is taken by the hold run like any lost ID (whoever registered it
/// could write as lifeboat to everyone it ever wrote to), and made
/// lifeboat's again rather than held: its token works, and is kept.
#[tokio::test(flavor = "multi_thread")]
async fn lifeboats_own_id_lost_without_a_shared_secret_is_made_lifeboats_again_by_the_hold_run() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("tern");
    synapse.create_user(&person, &[]).await;
    synapse.create_user("lifeboat", &[]).await;
    let mut lifeboat =
        Lifeboat::for_synapse(&synapse.url, &synapse.server_name, &synapse.admin_token(), &registry.url());
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    let token = synapse.register_admin(&unique("root"));
    lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", &token);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "everyone missing, lifeboat too");

    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    let own = synapse.user_id("lifeboat");
    assert!(made.stdout.contains(&format!("lifeboat's own account {own}, lost too, is lifeboat's again")), "{made:?}");
    let own_account = synapse.user("lifeboat").await;
    assert_eq!((&own_account["locked"], &own_account["admin"]), (&false.into(), &true.into()), "{own_account}");
    let recovered = lifeboat.run(&["recover", "--json"]).await.json();
    let its_own_token_works = serde_json::json!({"outcome": "already_working", "source": "recovered"});
    assert_eq!(recovered, its_own_token_works);
    let synced = lifeboat.run(&["sync"]).await;
    assert_eq!(synced.code, 0, "{synced:?}");
    let held = ids_in(&lifeboat, "held").await;
    assert!(held.contains(&synapse.user_id(&person)) && !held.contains(&own), "lifeboat's own is no hold: {held:?}");
    assert!(ids_in(&lifeboat, "recreated").await.is_empty(), "nor a stranger's");
}

/// Someone unlocks a held account in Synapse (its admin API, an admin
/// console): whoever can sign in to it would have its person's ID. `check`
/// and `sync` name it (and the watcher alerts it, by the same report), but
/// not while it is being handed over (a claim unlocks the account before it
/// records the claim).
#[tokio::test(flavor = "multi_thread")]
async fn a_held_id_unlocked_outside_lifeboat_is_named_by_check_and_sync() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    synapse.create_user(&person, &[]).await;
    let lifeboat = holding_after_a_wipe(&synapse, &registry).await;
    let held = synapse.user_id(&person);
    assert!(ids_in(&lifeboat, "held").await.contains(&held));
    let unlocked = || async { lifeboat.run(&["check", "--json"]).await.json()["unlocked_held"].clone() };
    assert_eq!(unlocked().await, serde_json::json!([]), "held accounts are locked");

    synapse.register_admin(&unique("root"));
    let path = format!("/_synapse/admin/v2/users/{held}");
    let unlock = serde_json::json!({"locked": false});
    assert_eq!(synapse.admin_request(reqwest::Method::PUT, &path, Some(unlock)).await.0, 200);

    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let hand_over = lifeboat::registry::hand_over_lease(&lifeboat::user_id::UserId::parse(&held).unwrap());
    let ttl = 60_000;
    store.take_lease(&hand_over, "another-host:1:1", ttl, None).await.unwrap().unwrap();
    assert_eq!(unlocked().await, serde_json::json!([]), "being handed over");
    let sync = lifeboat.run(&["sync"]).await;
    assert!(!sync.stdout.contains("unlocked outside lifeboat"), "{sync:?}");
    store.release_lease(&hand_over, "another-host:1:1").await.unwrap();
    store.close().await;

    assert_eq!(unlocked().await, serde_json::json!([held]));
    let sync = lifeboat.run(&["sync"]).await;
    assert!(sync.stdout.contains(&format!("held but unlocked outside lifeboat: {held}")), "{sync:?}");

    // Whoever signed in to it meanwhile is back with a restore of Synapse
    // from before its hand-over, and the ID is not its person's again.
    synapse.unlock_user(&person, "the-unlockers-passphrase").await;
    assert_eq!(synapse.login(&person, "the-unlockers-passphrase").await.0, 200);
    synapse.backup();
    let claimed = lifeboat.run_with_input(&["holds", "claim", &held], "a-long-enough-passphrase\n").await;
    assert_eq!(claimed.code, 0, "{claimed:?}");
    synapse.restore();
    let synced = lifeboat.run(&["sync"]).await;
    let again = |line: &str| line.contains("the stranger's again") && line.contains(&held);
    assert!(synced.stdout.lines().any(again), "{synced:?}");
}

/// An ID an operator handed over from a stranger is the stranger's again
/// once Synapse is restored from a backup older than the hand-over: a
/// device the hand-over logged out is back, and so is the stranger's
/// password. Its person's own devices are no such sign.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_handed_over_from_a_stranger_is_the_strangers_again_after_a_restore_from_before() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    let person_id = synapse.create_user(&person, &[]).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    synapse.register(&person);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let lifeboat = &lifeboat;
    let state = || async {
        let shown = lifeboat.run(&["users", "show", &person_id, "--json"]).await;
        shown.json()["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(state().await, "recreated");
    synapse.backup();

    let claimed = lifeboat.run_with_input(&["holds", "claim", &person_id], "a-long-enough-passphrase\n").await;
    assert_eq!(claimed.code, 0, "{claimed:?}");
    assert_eq!(synapse.login(&person, "a-long-enough-passphrase").await.0, 200, "its person signs in");
    let synced = lifeboat.run(&["sync"]).await;
    assert!(!synced.stdout.contains("the stranger's again"), "{synced:?}");
    assert_eq!(state().await, "claimed");

    synapse.restore();
    let synced = lifeboat.run(&["sync"]).await;
    assert_eq!(synced.code, 0, "{synced:?}");
    let again = synced.stdout.lines().find(|line| line.contains("the stranger's again")).unwrap_or_default();
    assert!(again.contains(&person_id), "{synced:?}");
    let newer = |line: &&str| line.contains("recreated (same ID") && line.contains(&person_id);
    assert!(!synced.stdout.lines().any(|line| newer(&line)), "named once, not as a newer account: {synced:?}");
    assert_eq!(state().await, "recreated", "until an operator hands it over once more");
}

/// A room's member no account listing saw (registered after the listing,
/// before its rooms were read) is held with the lost IDs after a wipe:
/// whoever registered it would be let into its rooms. One registered again
/// since lifeboat read the room is a stranger's; one whose account is
/// older than lifeboat's read of its room is the member itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_rooms_member_no_listing_saw_is_held_with_the_lost_ids() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    synapse.create_user(&person, &[]).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let (unseen, taken, newcomer) = (unique("late"), unique("taken"), unique("new"));
    let early = unique("early");
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let room_of = |name: &str, members: &[&str]| lifeboat::registry::RoomRecord {
        room_id: format!("!{name}:{}", synapse.server_name),
        joined_local: members.len() as i64,
        details: Some(lifeboat::registry::RoomDetails {
            members: members.iter().map(|member| (synapse.user_id(member), "join".into(), 0)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let before = room_of("before", &[&person, &unseen, &taken, &early]);
    store.apply_room_listing(std::slice::from_ref(&before)).await.unwrap();

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    // Taken before the first listing after the wipe, which would otherwise
    // record it as a new person's.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    synapse.register(&early);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    synapse.register(&taken);
    synapse.register(&newcomer);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after = room_of("after", &[&newcomer]);
    store.apply_room_listing(&[lifeboat::registry::RoomRecord { details: None, ..before }, after]).await.unwrap();
    store.close().await;
    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    let held = ids_in(&lifeboat, "held").await;
    assert!(held.contains(&synapse.user_id(&unseen)) && held.contains(&synapse.user_id(&person)), "{held:?}");
    let mut recreated = ids_in(&lifeboat, "recreated").await;
    recreated.sort();
    let mut taken_ids = [synapse.user_id(&taken), synapse.user_id(&early)];
    taken_ids.sort();
    assert_eq!(recreated, taken_ids, "registered again since the room was read");
    assert!(!held.contains(&synapse.user_id(&newcomer)), "the room showed this very account: {held:?}");
}

/// lifeboat after `synapse` lost every account it had synced: recovered
/// through the shared secret, the loss listed, the lost IDs held.
async fn holding_after_a_wipe(synapse: &TestSynapse, registry: &TestDatabase) -> Lifeboat {
    let lifeboat = Lifeboat::recovering(synapse, registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(lifeboat.run(&["holds", "make"]).await.code, 0);
    lifeboat
}

/// Lost IDs held when an incident opens or notify runs, not by the watcher.
fn holding_at_incidents_only(lifeboat: &Lifeboat) {
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!("{config}\n[recovery]\nhold = \"on-incident\"\n"));
}

/// An ID the registry has lost and nobody holds (another loss since).
async fn lost_and_not_held(synapse: &TestSynapse, store: &lifeboat::registry::Registry) -> String {
    let lost = synapse.user_id(&unique("lost"));
    sqlx::query("INSERT INTO accounts (user_id, first_seen_at, state, missing_since) VALUES ($1, 1, 'missing', 1)")
        .bind(&lost)
        .execute(store.pool())
        .await
        .unwrap();
    lost
}

/// A registration token an admin had the bot mail, queued in the outbox;
/// the address it goes to.
async fn token_mailed_by_the_bot(synapse: &TestSynapse, store: &lifeboat::registry::Registry) -> String {
    let other = format!("{}@example.org", unique("other"));
    let token = lifeboat::messages::registration_token(
        &synapse.server_name,
        &crate::harness::id(&synapse.user_id("other")),
        "sometoken",
        "tomorrow",
        &synapse.url,
        lifeboat::registry::OldName::MayBeFree,
    );
    let to = lifeboat::email::EmailAddress::parse(&other).unwrap();
    let until = lifeboat::registry::now_ms() + 3_600_000;
    lifeboat::outbox::queue_email(store, lifeboat::registry::MessageKind::Token, &to, &token, None, until)
        .await
        .unwrap();
    other
}

/// [`Lifeboat::recovering`] with `[email]` on `smtp`.
fn recovering_with_mail(synapse: &TestSynapse, registry: &TestDatabase, smtp: &TestSmtp) -> Lifeboat {
    let lifeboat = Lifeboat::recovering(synapse, registry);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!(
        "{config}\n[email]\nsmtp_url = \"{}\"\nfrom = \"Lifeboat <lifeboat@lifeboat.test>\"\n",
        smtp.smtp_url()
    ));
    lifeboat
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_registered_between_the_sync_and_the_hold_is_found_taken_and_never_changed() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (first, second) = (unique("first"), unique("second"));
    synapse.create_user(&first, &[&format!("{first}@example.org")]).await;
    synapse.create_user(&second, &[&format!("{second}@example.org")]).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "everyone missing, nothing held yet");
    let squatter = synapse.register(&first);

    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    assert!(made.stdout.contains("registered by someone else first"), "{made:?}");
    assert_eq!(ids_in(&lifeboat, "recreated").await, vec![squatter.user_id.clone()]);
    assert!(ids_in(&lifeboat, "held").await.contains(&synapse.user_id(&second)));
    let (status, _) = synapse.login(&first, squatter.password.as_deref().unwrap()).await;
    assert_eq!(status, 200, "the squatter's account is left as it was");
    synapse.register_admin(&unique("root"));
    let untouched = synapse.user(&first).await;
    assert_eq!(untouched["locked"], false, "{untouched}");
    assert!(untouched["threepids"].as_array().unwrap().is_empty(), "no email was given to it: {untouched}");
}

/// The bot's admin IDs that no listing saw (made after the last one, or
/// not made yet) are held with the lost IDs after a wipe: otherwise anyone
/// could register one and command the bot. Not before any loss.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_id_no_listing_saw_is_held_with_the_lost_ids() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("person");
    synapse.create_user(&person, &[]).await;
    let ops_localpart = unique("ops");
    let ops = synapse.user_id(&ops_localpart);
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!("{config}\n[bot]\nadmins = [\"{ops}\"]\n"));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let calm = lifeboat.run(&["holds", "make"]).await;
    assert!(calm.stdout.contains("No lost ID is waiting"), "nothing lost, nothing held: {calm:?}");

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    assert!(all_in(&lifeboat, "held", &[synapse.user_id(&person), ops.clone()]).await, "{made:?}");
    synapse.register_admin(&unique("root"));
    let held = synapse.user(&ops_localpart).await;
    assert_eq!(held["locked"], true, "the ID is taken, locked, for its owner: {held}");
}

/// The same ID taken by someone before the first listing after the wipe
/// is a stranger's, not a new admin's: the listing does not record it as
/// its person's, so the bot would neither invite nor obey it.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_id_no_listing_saw_taken_before_the_listing_after_a_wipe_is_a_strangers() {
    let synapse = TestSynapse::start();
    // PostgreSQL, where the room member's case above runs on SQLite.
    let registry = TestDatabase::postgres().await;
    let (person, newcomer) = (unique("person"), unique("newcomer"));
    synapse.create_user(&person, &[]).await;
    let ops_localpart = unique("ops");
    let ops = synapse.user_id(&ops_localpart);
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&format!("{config}\n[bot]\nadmins = [\"{ops}\"]\n"));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    // Before any loss, a new account no listing saw is a new person's.
    synapse.register(&newcomer);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert!(ids_in(&lifeboat, "recreated").await.is_empty());

    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    synapse.register(&ops_localpart);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(ids_in(&lifeboat, "recreated").await, [ops], "the admin's ID is a stranger's");
}

#[tokio::test(flavor = "multi_thread")]
async fn display_names_follow_the_holds_and_neither_a_sync_nor_a_claim_before_them_loses_one() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (first, second) = (unique("first"), unique("second"));
    let (first_name, second_name) = ("Fern Lighthouse", "Sam Quayside");
    for (localpart, name) in [(&first, first_name), (&second, second_name)] {
        synapse.create_user(localpart, &[&format!("{localpart}@example.org")]).await;
        rename(&synapse, localpart, name).await;
    }
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    let opened = open_incident(&lifeboat).await;
    assert!(opened.stdout.contains("Their display names follow"), "{opened:?}");
    synapse.register_admin(&unique("root"));
    assert_eq!(synapse.user(&first).await["locked"], true, "held at once");
    assert_eq!(display_name_on_synapse(&synapse, &first).await, first, "the name waits: Synapse's own for now");
    let name_due = |listed: &serde_json::Value, localpart: &str| {
        let id = synapse.user_id(localpart);
        listed.as_array().unwrap().iter().find(|hold| hold["user_id"] == id.as_str()).unwrap()["display_name_due_at"]
            .is_number()
    };
    let listed = lifeboat.run(&["holds", "list", "--json"]).await.json();
    assert!(name_due(&listed, &second), "{listed}");

    // A sync meanwhile lists Synapse's made-up name; the registry keeps the person's.
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&first), "--json"]).await.json();
    assert_eq!(shown["display_name"], first_name, "{shown}");

    // A claim before the name is restored brings it along.
    let claimed =
        lifeboat.run_with_input(&["holds", "claim", &synapse.user_id(&first)], "a-long-enough-passphrase\n").await;
    assert_eq!(claimed.code, 0, "{claimed:?}");
    let first_now = synapse.user(&first).await;
    assert_eq!((first_now["locked"].as_bool(), first_now["displayname"].as_str()), (Some(false), Some(first_name)));

    // `holds make` restores the rest, once.
    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    // The second person's, and the harness's first admin's (lost too).
    assert!(made.stdout.contains("Restored the display names of 2 held accounts"), "{made:?}");
    assert_eq!(display_name_on_synapse(&synapse, &second).await, second_name);
    let listed = lifeboat.run(&["holds", "list", "--json"]).await.json();
    assert!(!name_due(&listed, &second), "{listed}");
    let again = lifeboat.run(&["holds", "make"]).await;
    assert!(!again.stdout.contains("Restored"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_who_takes_a_held_id_after_another_wipe_does_not_get_its_persons_display_name() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("wren");
    synapse.create_user(&person, &[&format!("{person}@example.org")]).await;
    rename(&synapse, &person, "Wren of the Breakwater").await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    open_incident(&lifeboat).await;
    synapse.register_admin(&unique("root"));
    assert_eq!(synapse.user(&person).await["locked"], true, "held, its name still due");

    // Another wipe before the names pass, and a stranger registers the ID
    // before lifeboat has listed the server again.
    synapse.wipe();
    synapse.register_admin(&unique("root"));
    synapse.register(&person);

    let made = lifeboat.run(&["holds", "make"]).await;
    assert!(!made.stdout.contains("Restored"), "{made:?}");
    assert!(made.stdout.contains("no longer held on Synapse"), "{made:?}");
    assert_eq!(display_name_on_synapse(&synapse, &person).await, person, "the stranger keeps Synapse's own name");

    // The next listing sees an account made after lifeboat's hold: no
    // longer held, but a stranger's, with no claim link left to follow.
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(ids_in(&lifeboat, "recreated").await, [synapse.user_id(&person)]);
}

/// A person with an email, synced, then the wipe: the lifeboat, their
/// ID and their address.
async fn one_person_then_a_wipe(synapse: &TestSynapse, registry: &TestDatabase) -> (Lifeboat, String, String) {
    let person = unique("tern");
    let address = format!("{person}@example.org");
    synapse.create_user(&person, &[&address]).await;
    let lifeboat = Lifeboat::recovering(synapse, registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    synapse.register_admin(&unique("root"));
    (lifeboat, person, address)
}

/// [`one_person_then_a_wipe`], the person listed missing, and their hold
/// begun by a run that stopped before it made the account.
async fn a_hold_interrupted_after_a_wipe(synapse: &TestSynapse, registry: &TestDatabase) -> (Lifeboat, String, String) {
    let (lifeboat, person, address) = one_person_then_a_wipe(synapse, registry).await;
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "the person is missing now");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&registry.url()).await.unwrap();
    let interrupted = "UPDATE accounts SET custody = 'holding', custody_at = 1, details_due_at = 0 WHERE user_id = $1";
    let changed = sqlx::query(interrupted).bind(synapse.user_id(&person)).execute(&pool).await.unwrap();
    assert_eq!(changed.rows_affected(), 1);
    pool.close().await;
    (lifeboat, person, address)
}

/// The held ID got no email, and `fresh` kept `address`.
async fn the_address_stayed_with(synapse: &TestSynapse, held: &str, fresh: &str, address: &str) {
    let held = synapse.user(held).await;
    assert_eq!(held["locked"], true, "held: {held}");
    assert!(held["threepids"].as_array().unwrap().is_empty(), "the address stays where it is: {held}");
    let new_account = synapse.user(fresh).await;
    assert_eq!(new_account["threepids"][0]["address"].as_str(), Some(address), "{new_account}");
}

/// An address its person opted out of may have lapsed and gone to someone
/// else: on the held account, and on the account handed back, Synapse would
/// let its new holder reset the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_gives_back_no_email_its_person_opted_out_of() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let person = unique("puffin");
    let (kept, lapsed) = (format!("{person}@example.org"), format!("{person}@old-job.example"));
    synapse.create_user(&person, &[&kept, &lapsed]).await;
    let lifeboat = Lifeboat::recovering(&synapse, &registry);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    // As the unsubscribe link in a notice does.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&registry.url()).await.unwrap();
    let opted_out = sqlx::query("UPDATE contacts SET opted_out_at = 1 WHERE address = $1").bind(&lapsed);
    assert_eq!(opted_out.execute(&pool).await.unwrap().rows_affected(), 1);
    pool.close().await;
    synapse.wipe();
    synapse.register_admin(&unique("root"));
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    let made = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    let held = synapse.user(&person).await;
    assert_eq!(held["locked"], true, "held: {held}");
    let addresses: Vec<&str> =
        held["threepids"].as_array().unwrap().iter().filter_map(|threepid| threepid["address"].as_str()).collect();
    assert_eq!(addresses, [kept.as_str()], "{held}");
}

/// A hold run killed after it gave the account its person's address, and
/// the person opting out of that address before the run is resumed: the
/// resumed run still knows the account for its own, and takes the address
/// off it.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_resumed_after_its_person_opted_out_of_the_address_it_gave_back_is_still_its_own() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (lifeboat, person, address) = one_person_then_a_wipe(&synapse, &registry).await;
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(lifeboat.run(&["holds", "make"]).await.code, 0);
    assert_eq!(synapse.user(&person).await["threepids"][0]["address"].as_str(), Some(address.as_str()));
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&registry.url()).await.unwrap();
    let user_id = synapse.user_id(&person);
    let killed = "UPDATE accounts SET custody = 'holding', custody_at = 1 WHERE user_id = $1";
    assert_eq!(sqlx::query(killed).bind(&user_id).execute(&pool).await.unwrap().rows_affected(), 1);
    let opted_out = sqlx::query("UPDATE contacts SET opted_out_at = 1 WHERE address = $1").bind(&address);
    assert_eq!(opted_out.execute(&pool).await.unwrap().rows_affected(), 1);
    pool.close().await;

    let resumed = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(!resumed.stdout.contains("registered by someone else first"), "{resumed:?}");
    assert!(ids_in(&lifeboat, "held").await.contains(&user_id), "{resumed:?}");
    let held = synapse.user(&person).await;
    assert!(held["threepids"].as_array().unwrap().is_empty(), "{held}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_does_not_take_an_email_from_the_new_account_its_person_made_after_the_wipe() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (lifeboat, person, address) = one_person_then_a_wipe(&synapse, &registry).await;
    // Before any hold, the person starts afresh under a new name, with the
    // same address (Synapse keeps one account per address).
    let fresh = format!("{person}-new");
    synapse.create_user(&fresh, &[&address]).await;

    open_incident(&lifeboat).await;
    the_address_stayed_with(&synapse, &person, &fresh, &address).await;
}

/// A hold run stopped before it made the account leaves the ID being held.
/// A stranger who registers the ID meanwhile, with an address of theirs,
/// and never signs in is still not its person: no sync takes their address
/// for the person's, and the resumed hold finds their account taken, not
/// its own, and gives it nothing of the person's.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_on_an_id_whose_hold_was_interrupted_gets_nothing_of_its_persons() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (lifeboat, person, address) = a_hold_interrupted_after_a_wipe(&synapse, &registry).await;
    let attacker = format!("{person}@evil.example");
    synapse.create_user(&person, &[&attacker]).await;

    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let shown = lifeboat.run(&["users", "show", &synapse.user_id(&person), "--json"]).await.json();
    assert!(!shown.to_string().contains(&attacker), "the stranger's address is not the person's: {shown}");
    let make = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(make.code, 0, "{make:?}");
    assert!(make.stdout.contains("registered by someone else first"), "{make:?}");
    let account = synapse.user(&person).await;
    let addresses: Vec<&str> =
        account["threepids"].as_array().unwrap().iter().filter_map(|threepid| threepid["address"].as_str()).collect();
    assert_eq!(addresses, [attacker.as_str()], "none of the person's ({address}): {account}");
    assert_eq!(account["locked"], false, "left as it was: {account}");
}

/// The same without an address: a stranger who registers the ID while its
/// hold run is stopped, uses it and logs out leaves no device, but Synapse
/// remembers the account was used, which lifeboat's never is.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_who_used_an_id_whose_hold_was_interrupted_and_logged_out_is_found_taken() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (lifeboat, person, _) = a_hold_interrupted_after_a_wipe(&synapse, &registry).await;
    let taken = synapse.register(&person);
    let stranger = MatrixUser::new(&synapse.url, &taken.user_id, &taken.access_token);
    assert_eq!(stranger.try_call(reqwest::Method::GET, "/_matrix/client/v3/account/whoami", None).await.0, 200);
    let (logged_out, _) =
        stranger.try_call(reqwest::Method::POST, "/_matrix/client/v3/logout", Some(serde_json::json!({}))).await;
    assert_eq!(logged_out, 200);
    // Synapse writes when a token was last used a few seconds later.
    eventually("Synapse records the stranger's use", Duration::from_secs(30), || async {
        !synapse.user(&person).await["last_seen_ts"].is_null()
    })
    .await;

    let make = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(make.code, 0, "{make:?}");
    assert!(make.stdout.contains("registered by someone else first"), "{make:?}");
    assert_eq!(synapse.user(&person).await["locked"], false, "left as it was");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_does_not_take_an_email_from_an_account_registered_since_the_last_sync() {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let (lifeboat, person, address) = one_person_then_a_wipe(&synapse, &registry).await;
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "the person is missing now");
    // Registered after that sync: the registry does not know it has the address.
    let fresh = format!("{person}-new");
    synapse.create_user(&fresh, &[&address]).await;

    let make = lifeboat.run(&["holds", "make"]).await;
    assert_eq!(make.code, 0, "{make:?}");
    the_address_stayed_with(&synapse, &person, &fresh, &address).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_over_under_way_in_another_process_turns_away_both_the_claim_link_and_the_cli() {
    let (rig, lost, link) = one_held_with_a_claim_link().await;
    let registry = lifeboat::registry::Registry::connect(&rig.registry_url()).await.unwrap();
    let user_id = lifeboat::user_id::UserId::parse(&lost[0]).unwrap();
    // Another process's hand-over, under way until told to finish.
    let (started, under_way) = tokio::sync::oneshot::channel::<()>();
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let elsewhere = tokio::spawn({
        let (registry, user_id) = (registry.clone(), user_id.clone());
        async move {
            let work = async {
                started.send(()).unwrap();
                finished.await.ok();
            };
            lifeboat::holds::one_hand_over(&registry, &user_id, work).await.unwrap();
        }
    });
    under_way.await.unwrap();

    let by_hand = rig.lifeboat.run_with_input(&["holds", "claim", &lost[0]], "a-long-enough-passphrase\n").await;
    assert_ne!(by_hand.code, 0, "{by_hand:?}");
    assert!(by_hand.stderr.contains("is being handed over right now"), "{by_hand:?}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (url, cookie, form) = claim_form(&http, &rig, &link, "sea+shanty+lighthouse").await;
    let (status, page) = post_form(&http, &url, Some(&cookie), &form).await;
    assert_eq!(status, 409, "{page}");

    // Once that one is done, the link works.
    finish.send(()).unwrap();
    elsewhere.await.unwrap();
    let (status, page) = post_form(&http, &url, Some(&cookie), &form).await;
    assert_eq!(status, 200, "{page}");
    registry.close().await;
}
