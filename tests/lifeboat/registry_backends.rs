//! The registry behaves the same on SQLite and on PostgreSQL.

use std::future::Future;

use lifeboat::email::EmailAddress;
use lifeboat::registry::{
    AccountState, Actor, AddContact, AskedAs, Contact, ContactSource, MAX_REJOIN_ATTEMPTS, MessageKind, NewWebLink,
    Registry, RejoinOutcome, Room, RoomDetails, RoomRecord, RoomState,
};
use lifeboat::synapse::ListedUser;
use lifeboat::user_id::UserId;
use serde_json::json;

use crate::harness::{TestDatabase, contact, email, id};

/// Runs `story` against a fresh registry on the given backend.
async fn on<F, Fut>(database: TestDatabase, story: F)
where
    F: FnOnce(Registry) -> Fut,
    Fut: Future<Output = ()>,
{
    // Opened twice: the second time the migrations must find nothing to do.
    Registry::connect(&database.url()).await.expect("the registry opens").close().await;
    let registry = Registry::connect(&database.url()).await.expect("the registry opens again");
    story(registry.clone()).await;
    registry.close().await;
    database.drop_database().await;
}

/// Declares the story once per backend.
macro_rules! on_both_backends {
    ($story:ident) => {
        mod $story {
            #[tokio::test]
            async fn on_sqlite() {
                super::on(crate::harness::TestDatabase::sqlite(), super::$story).await;
            }
            #[tokio::test]
            async fn on_postgres() {
                super::on(crate::harness::TestDatabase::postgres().await, super::$story).await;
            }
        }
    };
}

/// A listed account created at second `created` (the listing gives ms).
fn user(id: &str, created: i64) -> ListedUser {
    serde_json::from_value(json!({"name": id, "creation_ts": created * 1000, "displayname": id})).unwrap()
}

/// A sync run's status and error.
async fn sync_run_outcome(registry: &Registry, run: i64) -> (String, Option<String>) {
    let sql = "SELECT status, error FROM sync_runs WHERE id = $1";
    sqlx::query_as(sql).bind(run).fetch_one(registry.pool()).await.unwrap()
}

/// A queued message's state and last error.
async fn message_outcome(registry: &Registry, id: i64) -> (String, Option<String>) {
    let sql = "SELECT state, last_error FROM deliveries WHERE id = $1";
    sqlx::query_as(sql).bind(id).fetch_one(registry.pool()).await.unwrap()
}

/// Stages `users` as one complete listing and applies it.
async fn sync_listing(registry: &Registry, users: &[ListedUser]) -> lifeboat::registry::SyncApplied {
    // Begun a moment after whatever the test did last: a listing begun in
    // the millisecond a custody changed rightly leaves that row to the next.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let run = registry.begin_sync_run().await.unwrap();
    for page in users.chunks(2) {
        registry.stage_listing_page(run, page).await.unwrap();
    }
    registry.apply_listing(run, 0.5, &Actor::cli()).await.unwrap()
}

/// Holds `who` as a hold run does: begun, then made with an account Synapse
/// made at second `created_s` (its display name still to come back).
async fn hold(registry: &Registry, who: &str, created_s: i64) {
    registry.begin_hold(&id(who)).await.unwrap();
    registry.mark_held(&id(who), Some(created_s * 1000), true).await.unwrap();
}

/// One account of each standing: @here present, @lost missing, @taken
/// registered again by someone else, @held held for its person.
async fn one_of_each_standing(registry: &Registry) {
    sync_listing(registry, &[user("@here:x", 1), user("@lost:x", 1), user("@taken:x", 1), user("@held:x", 1)]).await;
    sync_listing(registry, &[user("@here:x", 1), user("@taken:x", 9)]).await;
    hold(registry, "@held:x", 5).await;
}

async fn vanished_accounts_are_marked_missing_never_deleted(registry: Registry) {
    let first = sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@c:x", 1)]).await;
    assert_eq!(first.report.new, ["@a:x", "@b:x", "@c:x"]);
    registry
        .add_contact(&id("@b:x"), &contact("b@example.org"), ContactSource::Admin, None, &Actor::cli())
        .await
        .unwrap();

    let second = sync_listing(&registry, &[user("@a:x", 1), user("@c:x", 9)]).await;
    assert_eq!(second.report.missing, ["@b:x"]);
    assert_eq!(second.report.recreated, ["@c:x"]);
    assert_eq!(second.newly_missing, 1);

    let b = registry.account(&id("@b:x")).await.unwrap().expect("never deleted");
    assert_eq!(b.state, AccountState::Missing);
    assert!(b.missing_since.is_some());
    assert_eq!(registry.contacts_of(&id("@b:x")).await.unwrap().len(), 1, "contacts survive the loss");
    let c = registry.account(&id("@c:x")).await.unwrap().unwrap();
    assert!(c.recreated_at.is_some());
    assert_eq!(c.synapse_created_at, Some(9_000));
    assert_eq!(c.state, AccountState::Recreated);

    let third = sync_listing(&registry, &[user("@a:x", 1), user("@c:x", 9)]).await;
    assert_eq!(third.newly_missing, 0, "already missing is not newly missing");
    assert_eq!(third.report.missing, ["@b:x"]);
    assert_eq!(third.report.recreated, ["@c:x"], "a recreated ID stays recreated until settled");
    let c = registry.account(&id("@c:x")).await.unwrap().unwrap();
    assert_eq!(c.state, AccountState::Recreated, "a later sync does not make it present");
    let back = sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@c:x", 9)]).await;
    assert!(back.report.missing.is_empty());
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!((b.state, b.missing_since), (AccountState::Present, None));
}
on_both_backends!(vanished_accounts_are_marked_missing_never_deleted);

async fn only_an_account_its_person_still_has_speaks_for_them(registry: Registry) {
    one_of_each_standing(&registry).await;
    let speaks = |user_id: &'static str, created: Option<i64>| {
        let registry = registry.clone();
        async move { registry.speaks_for_its_person(&id(user_id), created).await.unwrap() }
    };

    assert!(speaks("@here:x", None).await && speaks("@here:x", Some(1_000)).await, "present, the account known");
    assert!(!speaks("@here:x", Some(9_000)).await, "an account made since the one the registry knows");
    assert!(!speaks("@lost:x", Some(9_000)).await, "lost");
    assert!(!speaks("@taken:x", None).await, "a stranger's");
    assert!(!speaks("@held:x", Some(5_000)).await, "held by lifeboat");
    assert!(speaks("@new:x", Some(9_000)).await, "an ID the registry never saw is new, not taken");
    let hold = registry.account(&id("@held:x")).await.unwrap().unwrap().custody_at.unwrap();
    assert!(registry.claim_hold(&id("@held:x"), hold, &Actor::cli()).await.unwrap());
    assert!(speaks("@held:x", Some(5_000)).await, "claimed: its person's again");
}
on_both_backends!(only_an_account_its_person_still_has_speaks_for_them);

/// A stranger's account on a person's ID does not undo what an admin had
/// done to the person's: a locked or deactivated account gets no way back in.
async fn a_strangers_account_keeps_the_persons_locked_and_deactivated_marks(registry: Registry) {
    let flagged = |id: &str, flag: &str| -> ListedUser {
        serde_json::from_value(json!({"name": id, "creation_ts": 1000, flag: true})).unwrap()
    };
    sync_listing(&registry, &[flagged("@l:x", "locked"), flagged("@d:x", "deactivated")]).await;
    sync_listing(&registry, &[]).await;
    sync_listing(&registry, &[user("@l:x", 9), user("@d:x", 9)]).await;
    for who in ["@l:x", "@d:x"] {
        let account = registry.account(&id(who)).await.unwrap().unwrap();
        assert_eq!(account.state, AccountState::Recreated, "{who}");
        assert!(account.locked || account.deactivated, "{who}: the person's marks stay");
        assert!(!lifeboat::registry::may_come_back(account.locked, account.deactivated), "{who}");
    }
}
on_both_backends!(a_strangers_account_keeps_the_persons_locked_and_deactivated_marks);

/// Synapse's own database restored after a wipe (the wrong mount put
/// right): a listed account made the very second the person's lost one was
/// is that account back. Its hold, or a stranger's mark, ends; an account
/// made at another second stays a stranger's.
async fn a_persons_own_account_restored_after_a_wipe_ends_its_hold(registry: Registry) {
    sync_listing(&registry, &[user("@held:x", 1), user("@taken:x", 1), user("@other:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@held:x", 50).await;
    sync_listing(&registry, &[user("@held:x", 50), user("@taken:x", 60), user("@other:x", 70)]).await;
    assert_eq!(registry.account(&id("@taken:x")).await.unwrap().unwrap().state, AccountState::Recreated);

    // The old database back; @other's listed account is not the lost one.
    sync_listing(&registry, &[user("@held:x", 1), user("@taken:x", 1), user("@other:x", 2)]).await;
    let expected = [("@held:x", AccountState::Present), ("@taken:x", AccountState::Present)];
    for (who, standing) in expected.into_iter().chain([("@other:x", AccountState::Recreated)]) {
        let account = registry.account(&id(who)).await.unwrap().unwrap();
        assert_eq!(account.state, standing, "{who}");
    }
    let held = registry.account(&id("@held:x")).await.unwrap().unwrap();
    assert_eq!((held.synapse_created_at, held.custody_at), (Some(1_000), None), "the person's own account");

    // Claimed from its hold, then the old database back: theirs too.
    sync_listing(&registry, &[user("@claimed:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@claimed:x", 50).await;
    let held_at = registry.account(&id("@claimed:x")).await.unwrap().unwrap().custody_at.unwrap();
    assert!(registry.claim_hold(&id("@claimed:x"), held_at, &Actor::cli()).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    sync_listing(&registry, &[user("@claimed:x", 50)]).await;
    sync_listing(&registry, &[user("@claimed:x", 1)]).await;
    let claimed = registry.account(&id("@claimed:x")).await.unwrap().unwrap();
    assert_eq!((claimed.state, claimed.synapse_created_at), (AccountState::Present, Some(1_000)), "{claimed:?}");

    // Handed back by an operator (`holds claim`), then the old database back: theirs too.
    sync_listing(&registry, &[user("@handed:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@handed:x", 50).await;
    registry.settle_as_claimed(&id("@handed:x"), Some(50_000), &Actor::cli()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    sync_listing(&registry, &[user("@handed:x", 1)]).await;
    let handed = registry.account(&id("@handed:x")).await.unwrap().unwrap();
    assert_eq!((handed.state, handed.synapse_created_at), (AccountState::Present, Some(1_000)), "{handed:?}");
}
on_both_backends!(a_persons_own_account_restored_after_a_wipe_ends_its_hold);

/// A listing row without a creation time (a Synapse that did not say one)
/// keeps the one known: an account registered again later is still told
/// from the person's.
async fn a_listed_account_without_a_creation_time_keeps_the_known_one(registry: Registry) {
    sync_listing(&registry, &[user("@n:x", 1)]).await;
    let unsaid: ListedUser = serde_json::from_value(json!({"name": "@n:x", "displayname": "@n:x"})).unwrap();
    sync_listing(&registry, &[unsaid]).await;
    assert_eq!(registry.account(&id("@n:x")).await.unwrap().unwrap().synapse_created_at, Some(1_000));
}
on_both_backends!(a_listed_account_without_a_creation_time_keeps_the_known_one);

/// What lifeboat keeps of the person's lost account survives a second wipe
/// of a held ID and a stranger after it, and is not lifeboat's hold: a hold
/// that resumed on the person's own restored account stays a hold (its
/// claim link unlocks it).
async fn the_persons_lost_account_is_known_after_a_second_wipe_and_never_as_the_hold(registry: Registry) {
    sync_listing(&registry, &[user("@y:x", 1), user("@z:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    for (who, hold_s) in [("@y:x", 50), ("@z:x", 1)] {
        hold(&registry, who, hold_s).await;
    }
    sync_listing(&registry, &[user("@y:x", 50), user("@z:x", 1)]).await;
    let z = registry.account(&id("@z:x")).await.unwrap().unwrap();
    assert_eq!(z.state, AccountState::Held, "a hold on the person's own account stays a hold");

    // A second wipe, then a stranger on @y's ID; then the first database back.
    sync_listing(&registry, &[]).await;
    sync_listing(&registry, &[user("@y:x", 80)]).await;
    assert_eq!(registry.account(&id("@y:x")).await.unwrap().unwrap().state, AccountState::Recreated);
    sync_listing(&registry, &[user("@y:x", 1)]).await;
    assert_eq!(registry.account(&id("@y:x")).await.unwrap().unwrap().state, AccountState::Present);
}
on_both_backends!(the_persons_lost_account_is_known_after_a_second_wipe_and_never_as_the_hold);

/// A person who claims back an ID a stranger once held is the ID's again in
/// every way: an admin's later lock reaches the registry.
async fn a_claimed_id_a_stranger_once_held_follows_an_admins_lock(registry: Registry) {
    sync_listing(&registry, &[user("@z:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    sync_listing(&registry, &[user("@z:x", 9)]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@z:x", 50).await;
    let hold = registry.account(&id("@z:x")).await.unwrap().unwrap().custody_at.unwrap();
    assert!(registry.claim_hold(&id("@z:x"), hold, &Actor::cli()).await.unwrap());
    // A listing begun in the claim's own millisecond may have read the ID
    // before it, and is left for the next one: this one begins later.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let locked: ListedUser =
        serde_json::from_value(json!({"name": "@z:x", "creation_ts": 50_000, "locked": true})).unwrap();
    sync_listing(&registry, &[locked]).await;
    let z = registry.account(&id("@z:x")).await.unwrap().unwrap();
    assert!(z.locked && z.state == AccountState::Claimed, "{z:?}");
}
on_both_backends!(a_claimed_id_a_stranger_once_held_follows_an_admins_lock);

/// `/metrics` and the bot's `status` count accounts by where they stand
/// (held, taken), not by the raw listing state, which calls them present.
async fn the_status_counts_each_account_by_its_standing(registry: Registry) {
    one_of_each_standing(&registry).await;
    let counts = registry.status().await.unwrap().accounts;
    let expected = ["held", "missing", "present", "recreated"].map(|standing| (standing.to_owned(), 1));
    assert_eq!(counts, expected, "{counts:?}");
}
on_both_backends!(the_status_counts_each_account_by_its_standing);

/// A hold run paused past its lease finds the account another run made
/// meanwhile and held: that is lifeboat's, never taken for a stranger's.
async fn an_id_another_hold_run_held_meanwhile_is_not_marked_taken(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    hold(&registry, "@b:x", 5).await;
    assert!(!registry.mark_taken_before_hold(&id("@b:x"), &Actor::cli()).await.unwrap());
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!(b.state, AccountState::Held);
    // Nor does a second run begin or record a hold the first one made.
    assert!(!registry.begin_hold(&id("@b:x")).await.unwrap(), "begun by the other run");
    assert!(!registry.mark_held(&id("@b:x"), Some(6_000), false).await.unwrap(), "held by the other run");
    assert_eq!(registry.account(&id("@b:x")).await.unwrap().unwrap().synapse_created_at, Some(5_000));
}
on_both_backends!(an_id_another_hold_run_held_meanwhile_is_not_marked_taken);

/// An account an admin had deactivated gets no way back in while its ID is
/// held: the hold's own account, which is not deactivated, does not clear
/// the person's mark.
async fn a_held_id_keeps_the_deactivation_an_admin_made_before_the_loss(registry: Registry) {
    let deactivated = serde_json::from_value(json!({"name": "@d:x", "creation_ts": 1000, "deactivated": true}));
    sync_listing(&registry, &[deactivated.unwrap()]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@d:x", 5).await;
    sync_listing(&registry, &[user("@d:x", 5)]).await;
    let d = registry.account(&id("@d:x")).await.unwrap().unwrap();
    assert_eq!(d.state, AccountState::Held);
    assert!(d.deactivated && !lifeboat::registry::may_come_back(d.locked, d.deactivated), "{d:?}");
}
on_both_backends!(a_held_id_keeps_the_deactivation_an_admin_made_before_the_loss);

/// A claim made while a sync read the listing is not undone by that
/// listing, which still shows the held account locked.
async fn a_claim_made_while_a_listing_was_read_is_not_undone_by_it(registry: Registry) {
    sync_listing(&registry, &[user("@c:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    hold(&registry, "@c:x", 5).await;
    let run = registry.begin_sync_run().await.unwrap();
    let locked = serde_json::from_value(json!({"name": "@c:x", "creation_ts": 5000, "locked": true}));
    registry.stage_listing_page(run, &[locked.unwrap()]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let held_at = registry.account(&id("@c:x")).await.unwrap().unwrap().custody_at.unwrap();
    assert!(registry.claim_hold(&id("@c:x"), held_at, &Actor::cli()).await.unwrap());
    registry.apply_listing(run, 0.5, &Actor::cli()).await.unwrap();
    let c = registry.account(&id("@c:x")).await.unwrap().unwrap();
    assert!(c.state == AccountState::Claimed && !c.locked, "{c:?}");
}
on_both_backends!(a_claim_made_while_a_listing_was_read_is_not_undone_by_it);

/// While a hold is being made, `check` reads lifeboat's new account as the
/// hold's, not as a stranger's (the registry's time is the lost account's).
async fn an_account_a_hold_run_is_making_is_not_read_as_a_strangers(registry: Registry) {
    sync_listing(&registry, &[user("@h:x", 1)]).await;
    sync_listing(&registry, &[]).await;
    assert!(registry.begin_hold(&id("@h:x")).await.unwrap());
    let known = registry.known_accounts().await.unwrap();
    let listed = lifeboat::reconcile::Listed {
        user_id: "@h:x".into(),
        deactivated: false,
        locked: false,
        created_at_ms: Some(50_000),
    };
    let report = lifeboat::reconcile::merge_join(&known, &[listed], 0.5);
    assert!(report.recreated.is_empty() && report.held == ["@h:x"], "{report:?}");
}
on_both_backends!(an_account_a_hold_run_is_making_is_not_read_as_a_strangers);

/// A bot admin's ID no listing saw, recorded as lost for a hold run: an
/// account found there before lifeboat holds it is a stranger's.
async fn an_admin_id_adopted_as_lost_is_a_strangers_until_held(registry: Registry) {
    registry.adopt_as_lost(&[&id("@adm:x")]).await.unwrap();
    sync_listing(&registry, &[user("@adm:x", 9)]).await;
    assert_eq!(registry.account(&id("@adm:x")).await.unwrap().unwrap().state, AccountState::Recreated);
}
on_both_backends!(an_admin_id_adopted_as_lost_is_a_strangers_until_held);

/// Each link has its own tries at its code: one link's spent tries leave
/// another's whole. What a request needs to know, how many links carry a
/// code and how many codes an account had lately, is counted per account.
async fn each_link_has_its_own_tries_and_codes_are_counted_per_account(registry: Registry) {
    let far = i64::MAX / 2;
    for (link, hash) in [("first", "h"), ("second", "h"), ("third", "other")] {
        let to = email("a@example.org");
        registry.create_web_link(subscription_link(link, &id("@a:x"), &to, Some(hash), far, None)).await.unwrap();
    }
    let to = email("b@example.org");
    registry.create_web_link(subscription_link("bs", &id("@b:x"), &to, Some("h"), far, None)).await.unwrap();
    for _ in 0..2 {
        assert!(registry.spend_web_link_attempt("first", 2).await.unwrap());
    }
    assert!(!registry.spend_web_link_attempt("first", 2).await.unwrap(), "the first link's tries are spent");
    assert!(registry.spend_web_link_attempt("second", 2).await.unwrap(), "the second still has its own");

    let since = lifeboat::registry::now_ms() - 60_000;
    assert_eq!(registry.code_use("subscribe", &id("@a:x"), Some("h"), since).await.unwrap(), (2, 2));
    assert_eq!(registry.code_use("subscribe", &id("@a:x"), None, since).await.unwrap(), (0, 2));
    let later = lifeboat::registry::now_ms() + 60_000;
    assert_eq!(registry.code_use("subscribe", &id("@a:x"), Some("h"), later).await.unwrap(), (2, 0));
}
on_both_backends!(each_link_has_its_own_tries_and_codes_are_counted_per_account);

async fn an_id_an_operator_hands_back_before_any_listing_stays_its_persons(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    // Someone registered it first (at second 9); an operator gives it back.
    registry.begin_hold(&id("@b:x")).await.unwrap();
    assert!(registry.mark_taken_before_hold(&id("@b:x"), &Actor::cli()).await.unwrap());
    registry.settle_as_claimed(&id("@b:x"), None, &Actor::cli()).await.unwrap();
    assert!(registry.speaks_for_its_person(&id("@b:x"), Some(9_000)).await.unwrap(), "its person's now");

    let listed = sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 9)]).await;
    assert!(listed.report.recreated.is_empty(), "{:?}", listed.report);
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!((b.state, b.synapse_created_at), (AccountState::Claimed, Some(9_000)));
}
on_both_backends!(an_id_an_operator_hands_back_before_any_listing_stays_its_persons);

async fn a_held_id_is_never_taken_for_a_recreated_one_and_is_claimed_once(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let candidates = registry.hold_candidates(false).await.unwrap();
    assert_eq!(candidates.iter().map(|c| c.user_id.as_str()).collect::<Vec<_>>(), ["@b:x"]);
    registry.begin_hold(&id("@b:x")).await.unwrap();
    assert_eq!(registry.hold_candidates(false).await.unwrap()[0].begun_before, 1, "resumable");
    // The run was killed after Synapse made the account, and a listing
    // showed it before the rerun: still resumable, not stuck half-held.
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 5)]).await;
    assert_eq!(registry.hold_candidates(false).await.unwrap()[0].begun_before, 1, "still resumable");
    assert!(registry.hold_under_way(&id("@b:x")).await.unwrap(), "no hand-over until the hold is made");
    registry.mark_held(&id("@b:x"), Some(5_000), true).await.unwrap();
    assert!(!registry.hold_under_way(&id("@b:x")).await.unwrap());
    assert!(registry.hold_candidates(false).await.unwrap().is_empty());
    let due = registry.held_names_due().await.unwrap();
    assert_eq!(due, [(id("@b:x"), "@b:x".to_owned())], "its display name is still to restore");

    // Listed again (created by lifeboat at second 5, a few ms later, with
    // the name Synapse gives a new account): held, and still its person's name.
    let mut made_up = user("@b:x", 5);
    made_up.display_name = Some("b".into());
    let listed = sync_listing(&registry, &[user("@a:x", 1), made_up.clone()]).await;
    assert!(listed.report.recreated.is_empty(), "{:?}", listed.report);
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!((b.state, b.display_name.as_deref(), b.display_name_due), (AccountState::Held, Some("@b:x"), true));
    let hold = b.custody_at.unwrap();
    registry.held_name_restored(&id("@b:x")).await.unwrap();
    assert!(registry.held_names_due().await.unwrap().is_empty());

    let actor = Actor::cli();
    assert!(!registry.claim_hold(&id("@b:x"), hold + 1, &actor).await.unwrap(), "another hold's link");
    assert!(registry.claim_hold(&id("@b:x"), hold, &actor).await.unwrap());
    assert!(!registry.claim_hold(&id("@b:x"), hold, &actor).await.unwrap(), "once only");
    // A listing begun in the claim's millisecond is left for the next one.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    sync_listing(&registry, &[user("@a:x", 1), made_up]).await;
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.display_name.as_deref()),
        (AccountState::Claimed, Some("b")),
        "theirs: names follow Synapse"
    );

    // A second loss: missing again, and held anew.
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    assert_eq!(registry.account(&id("@b:x")).await.unwrap().unwrap().state, AccountState::Missing);
    assert_eq!(registry.hold_candidates(false).await.unwrap().len(), 1);
    registry.begin_hold(&id("@b:x")).await.unwrap();
    registry.mark_held(&id("@b:x"), Some(20_000), false).await.unwrap();
    let held_again = sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 20)]).await;
    assert!(held_again.report.recreated.is_empty(), "lifeboat's own account: {:?}", held_again.report);

    // A third loss, and someone registers the ID before lifeboat sees it:
    // the account is no longer lifeboat's, so the ID is a stranger's.
    let taken = sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 30)]).await;
    assert_eq!(taken.report.recreated, ["@b:x"]);
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!((b.state, b.custody_at), (AccountState::Recreated, None), "its hold, and any claim link, end");
}
on_both_backends!(a_held_id_is_never_taken_for_a_recreated_one_and_is_claimed_once);

async fn a_hold_made_while_a_listing_was_read_is_not_lost_by_that_listing(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    // A sync reads the listing (without @b) while @b is being held.
    let run = registry.begin_sync_run().await.unwrap();
    registry.stage_listing_page(run, &[user("@a:x", 1)]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    registry.begin_hold(&id("@b:x")).await.unwrap();
    registry.mark_held(&id("@b:x"), Some(5_000), false).await.unwrap();
    registry.apply_listing(run, 0.5, &Actor::cli()).await.unwrap();
    let b = registry.account(&id("@b:x")).await.unwrap().unwrap();
    assert_eq!(b.state, AccountState::Held, "the older listing cannot say the hold is gone");
    assert!(registry.hold_candidates(false).await.unwrap().is_empty(), "not held a second time");
    // The next listing that should show it and does not: lost again.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    assert_eq!(registry.account(&id("@b:x")).await.unwrap().unwrap().state, AccountState::Missing);
}
on_both_backends!(a_hold_made_while_a_listing_was_read_is_not_lost_by_that_listing);

async fn a_claim_link_works_only_for_its_hold_and_open_incident_until_it_expires(registry: Registry) {
    use lifeboat::holds::{ClaimCheck, check_claim};
    use lifeboat::links::{ClaimLink, LINK_KEY};

    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@c:x", 1)]).await;
    sync_listing(&registry, &[user("@b:x", 1), user("@c:x", 1)]).await;
    let actor = Actor::cli();
    // Where @a:x's links go: an address, an ID elsewhere, an ID here that is
    // its person's (@c:x), one here the registry knows nothing of.
    // Verified, as an admin's contacts are (a claim link dies with its
    // address's mail: opted out of, or never verified).
    let verified = Some(1);
    for address in ["a@example.org", "@a:elsewhere.example", "@c:x", "@nobody:x"] {
        registry.add_contact(&id("@a:x"), &contact(address), ContactSource::Admin, verified, &actor).await.unwrap();
    }
    registry.add_contact(&id("@b:x"), &contact("b@example.org"), ContactSource::Admin, verified, &actor).await.unwrap();
    let contact_of = |user_id: &'static str, address: &'static str| {
        let registry = registry.clone();
        async move {
            let contacts = registry.contacts_of(&id(user_id)).await.unwrap();
            contacts.into_iter().find(|contact| contact.address == address).unwrap()
        }
    };
    let mail = contact_of("@a:x", "a@example.org").await;
    registry.begin_hold(&id("@a:x")).await.unwrap();
    registry.mark_held(&id("@a:x"), Some(5_000), false).await.unwrap();
    let (incident, _) = registry
        .open_incident("Lost", "it went", lifeboat::registry::IncidentScope::Missing, true, &Actor::cli())
        .await
        .unwrap();
    let hold = registry.account(&id("@a:x")).await.unwrap().unwrap().custody_at.unwrap();
    let key = registry.generated_secret(LINK_KEY).await.unwrap();
    let now = lifeboat::registry::now_ms();
    let link = ClaimLink { account: "@a:x".into(), incident: incident.id, hold, until: now + 60_000 };
    let sig_of = |link: &ClaimLink, to: &Contact| {
        let url = link.url(&url::Url::parse("https://l.test").unwrap(), &key, to.id, &to.address);
        let url = url::Url::parse(&url).unwrap();
        url.query_pairs().find(|(name, _)| name == "sig").unwrap().1.into_owned()
    };
    let usable_at = |link: ClaimLink, to: Contact| {
        let (registry, key, sig) = (registry.clone(), key.clone(), sig_of(&link, &to));
        async move { matches!(check_claim(&registry, &key, &link, to.id, &sig).await.unwrap(), ClaimCheck::Usable(_)) }
    };
    let usable = |link: ClaimLink| usable_at(link, mail.clone());
    assert!(usable(link.clone()).await, "signed, live, for the standing hold of an open incident");
    assert!(!usable(ClaimLink { until: now - 1, ..link.clone() }).await, "expired, though signed");
    assert!(!usable(ClaimLink { incident: incident.id + 1, ..link.clone() }).await, "another incident");
    assert!(!usable(ClaimLink { hold: hold - 1, ..link.clone() }).await, "an earlier hold");
    assert!(!usable(ClaimLink { account: "@b:x".into(), ..link.clone() }).await, "an account not held");
    let wrong = check_claim(&registry, &key, &link, mail.id, &"0".repeat(64)).await.unwrap();
    assert!(matches!(wrong, ClaimCheck::Dead), "a forged signature");
    // Only at a contact of the account that reaches its person.
    assert!(usable_at(link.clone(), contact_of("@a:x", "@a:elsewhere.example").await).await, "an ID elsewhere");
    assert!(usable_at(link.clone(), contact_of("@a:x", "@c:x").await).await, "an ID here that is its person's");
    let unknown = contact_of("@a:x", "@nobody:x").await;
    assert!(!usable_at(link.clone(), unknown).await, "an ID here nobody can vouch for");
    let b_mail = contact_of("@b:x", "b@example.org").await;
    assert!(!usable_at(link.clone(), b_mail).await, "a contact of another account");
    registry.remove_contact(&id("@a:x"), &contact("a@example.org"), &actor).await.unwrap();
    assert!(!usable(link.clone()).await, "sent to an address the person no longer has");
    registry.add_contact(&id("@a:x"), &contact("a@example.org"), ContactSource::Admin, None, &actor).await.unwrap();
    let mail = contact_of("@a:x", "a@example.org").await;
    assert!(!usable_at(link.clone(), mail.clone()).await, "added again, not verified: it gets no mail");
    registry.remove_contact(&id("@a:x"), &contact("a@example.org"), &actor).await.unwrap();
    registry.add_contact(&id("@a:x"), &contact("a@example.org"), ContactSource::Admin, verified, &actor).await.unwrap();
    let mail = contact_of("@a:x", "a@example.org").await;
    assert!(usable_at(link.clone(), mail.clone()).await, "a new link to the address added again");
    registry.claim_hold(&id("@a:x"), hold, &Actor::cli()).await.unwrap();
    assert!(!usable_at(link, mail).await, "used up by the claim");
}
on_both_backends!(a_claim_link_works_only_for_its_hold_and_open_incident_until_it_expires);

/// A listing once applied is the last complete sync, dated, while the
/// account details are still to be read: its age is never "never".
async fn an_applied_listing_is_dated_before_its_details_are_read(registry: Registry) {
    let before = lifeboat::registry::now_ms();
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let last = registry.last_complete_sync().await.unwrap().unwrap();
    assert!(last.finished_at.is_some_and(|at| at >= before), "{last:?}");
}
on_both_backends!(an_applied_listing_is_dated_before_its_details_are_read);

async fn a_failed_listing_changes_nothing(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    let run = registry.begin_sync_run().await.unwrap();
    registry.stage_listing_page(run, &[user("@a:x", 1)]).await.unwrap();
    registry.fail_sync_run(run, "page 2 failed").await.unwrap();

    let accounts = registry.accounts(None).await.unwrap();
    assert!(accounts.iter().all(|account| account.state == AccountState::Present));
    let (status, error) = sync_run_outcome(&registry, run).await;
    assert_eq!((status.as_str(), error.as_deref()), ("failed", Some("page 2 failed")));
    assert_eq!(registry.last_complete_sync().await.unwrap().unwrap().listed, 2);
}
on_both_backends!(a_failed_listing_changes_nothing);

/// A sync that lost its run to another (its lease taken while it was
/// paused) and goes on staging has no complete listing: applying it changes
/// nothing, though the pages it staged last happen to count right.
async fn a_sync_whose_run_another_sync_ended_applies_nothing(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@c:x", 1)]).await;
    let paused = registry.begin_sync_run().await.unwrap();
    registry.stage_listing_page(paused, &[user("@a:x", 1), user("@b:x", 1)]).await.unwrap();
    let other = registry.begin_sync_run().await.unwrap();
    registry.stage_listing_page(paused, &[user("@c:x", 1)]).await.unwrap();

    let applied = registry.apply_listing(paused, 0.5, &Actor::cli()).await;
    let refused = applied.err().map(|err| err.to_string()).unwrap_or_default();
    assert!(refused.contains("ended by another sync"), "{refused}");
    let accounts = registry.accounts(None).await.unwrap();
    assert!(accounts.iter().all(|account| account.state == AccountState::Present), "{accounts:?}");
    assert_eq!(sync_run_outcome(&registry, paused).await.0, "failed");
    registry.fail_sync_run(other, "not needed").await.unwrap();
}
on_both_backends!(a_sync_whose_run_another_sync_ended_applies_nothing);

async fn repeated_accounts_in_a_listing_are_staged_once(registry: Registry) {
    let run = registry.begin_sync_run().await.unwrap();
    assert_eq!(registry.stage_listing_page(run, &[user("@a:x", 1), user("@b:x", 1)]).await.unwrap(), 2);
    assert_eq!(registry.stage_listing_page(run, &[user("@b:x", 1), user("@c:x", 1)]).await.unwrap(), 1);
    let applied = registry.apply_listing(run, 0.5, &Actor::cli()).await.unwrap();
    assert_eq!(applied.report.listed, 3);
}
on_both_backends!(repeated_accounts_in_a_listing_are_staged_once);

async fn contacts_are_unique_and_every_change_is_audited(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let actor = Actor { face: "bot", detail: Some("@admin:x".into()) };
    let (a, address) = (id("@a:x"), contact("a@example.org"));
    let add = || registry.add_contact(&a, &address, ContactSource::User, None, &actor);
    assert_eq!(add().await.unwrap(), AddContact::Added);
    assert_eq!(add().await.unwrap(), AddContact::AlreadyKnown);
    assert!(registry.remove_contact(&id("@a:x"), &contact("a@example.org"), &actor).await.unwrap());
    assert!(!registry.remove_contact(&id("@a:x"), &contact("a@example.org"), &actor).await.unwrap());

    let log = registry.audit_log(10).await.unwrap();
    let actions: Vec<(&str, &str, Option<&str>)> =
        log.iter().map(|e| (e.action.as_str(), e.actor.as_str(), e.actor_detail.as_deref())).collect();
    assert_eq!(
        actions,
        [
            ("contact.remove", "bot", Some("@admin:x")),
            ("contact.add", "bot", Some("@admin:x")),
            ("sync.apply", "cli", Actor::cli().detail.as_deref())
        ]
    );
}
on_both_backends!(contacts_are_unique_and_every_change_is_audited);

async fn accounts_are_listed_in_byte_order_of_their_ids(registry: Registry) {
    sync_listing(&registry, &[user("@b:x", 1), user("@B:x", 1), user("@a:x", 1), user("@_z:x", 1)]).await;
    let ids: Vec<String> = registry.known_accounts().await.unwrap().into_iter().map(|k| k.user_id).collect();
    assert_eq!(ids, ["@B:x", "@_z:x", "@a:x", "@b:x"]);
    let listed: Vec<String> =
        registry.accounts(None).await.unwrap().into_iter().map(|a| a.user_id.to_string()).collect();
    assert_eq!(listed, ids);
}
on_both_backends!(accounts_are_listed_in_byte_order_of_their_ids);

#[tokio::test]
async fn sqlite_registries_use_wal_and_enforce_foreign_keys() {
    let database = TestDatabase::sqlite();
    let registry = Registry::connect(&database.url()).await.unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(registry.pool()).await.unwrap();
    assert_eq!(mode, "wal");
    let orphan = sqlx::query("INSERT INTO contacts (user_id, kind, address, source, added_at) VALUES ('@nobody:x', 'email', 'n@example.org', 'admin', 0)")
        .execute(registry.pool())
        .await;
    assert!(orphan.is_err(), "a contact for an unknown account is refused by the foreign key");
}

#[tokio::test]
async fn a_postgresql_error_reads_as_its_message_and_code_without_the_servers_source_line() {
    let database = TestDatabase::postgres().await;
    let registry = Registry::connect(&database.url()).await.unwrap();
    let failed = sqlx::query("SELECT * FROM no_such_table").execute(registry.pool()).await.unwrap_err();
    let text = lifeboat::registry::Error::from(failed).to_string();
    assert_eq!(text, "registry query failed: relation \"no_such_table\" does not exist (code 42P01)");
    database.drop_database().await;
}

async fn a_lease_excludes_another_task_of_the_same_process(registry: Registry) {
    use lifeboat::lease::Lease;
    // As the bot's `notify confirm` and the delivery worker, both in one serve.
    let first = Lease::take(&registry, "notify:incident:1").await.unwrap().expect("free at first");
    let second = Lease::take(&registry, "notify:incident:1").await.unwrap();
    let held = second.err().expect("a second task of this process is refused");
    let this_process = format!("{}:{}:", lifeboat::lease::process_table(), std::process::id());
    assert!(held.holder.starts_with(&this_process) && held.holder.starts_with(&hostname()), "{}", held.holder);
    first.release().await;
    let again = Lease::take(&registry, "notify:incident:1").await.unwrap();
    assert!(again.is_ok(), "free again once released");
    again.unwrap().release().await;
}
on_both_backends!(a_lease_excludes_another_task_of_the_same_process);

async fn a_lease_is_renewed_only_while_its_holder_still_has_it(registry: Registry) {
    let (name, far) = ("matrix-store:DEVICE", 60_000);
    registry.take_lease(name, "here:1:1", far, None).await.unwrap().unwrap();
    // Timed by the registry's clock, which is this machine's here.
    let Err((_, until)) = registry.take_lease(name, "there:2:1", far, None).await.unwrap() else { panic!("held") };
    let expected = lifeboat::registry::now_ms() + far;
    assert!((until - expected).abs() < 5_000, "{until} is not about {expected}");
    assert!(registry.renew_lease(name, "here:1:1", far + 1).await.unwrap(), "its holder renews it");
    assert!(!registry.renew_lease(name, "there:2:1", far).await.unwrap(), "nobody else does");
    // Taken over, then given back: the first holder must learn, not take it back.
    registry.take_lease(name, "there:2:1", far, Some("here:1:1")).await.unwrap().unwrap();
    registry.release_lease(name, "there:2:1").await.unwrap();
    assert!(!registry.renew_lease(name, "here:1:1", far).await.unwrap(), "a lost lease stays lost");
}
on_both_backends!(a_lease_is_renewed_only_while_its_holder_still_has_it);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned()
}

async fn parallel_wrong_codes_spend_the_five_tries_and_no_more(registry: Registry) {
    use lifeboat::registry::{CodeCheck, MAX_CODE_ATTEMPTS};
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let limits = lifeboat::registry::CODE_LIMITS;
    registry.start_contact_verification(&id("@a:x"), &email("a@example.org"), "123456", 600_000, limits).await.unwrap();
    let guesses =
        (0..60).map(|n| {
            let registry = registry.clone();
            async move {
                registry.check_contact_code(&id("@a:x"), &format!("{:06}", 200_000 + n), &Actor::cli()).await.unwrap()
            }
        });
    let answers = futures::future::join_all(guesses).await;
    let wrong = answers.iter().filter(|answer| matches!(answer, CodeCheck::Wrong)).count();
    assert_eq!(wrong as i64, MAX_CODE_ATTEMPTS, "exactly the allowed tries were compared");
    let (attempts,): (i64,) = sqlx::query_as("SELECT attempts FROM contact_verifications WHERE user_id = '@a:x'")
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(attempts, MAX_CODE_ATTEMPTS);
    let late = registry.check_contact_code(&id("@a:x"), "123456", &Actor::cli()).await.unwrap();
    assert!(matches!(late, CodeCheck::NothingPending), "the right code after the tries are spent: {late:?}");
}
on_both_backends!(parallel_wrong_codes_spend_the_five_tries_and_no_more);

/// The bot mails a code to whatever address a person types: one person gets
/// five an hour, however fast they ask, and six a day to one address; one
/// address has at most three waiting, whoever asks (no inbox flooded a few
/// people at a time, or one code after another), and everyone together
/// gets a hundred an hour.
async fn codes_mailed_to_addresses_people_type_are_capped(registry: Registry) {
    let people = [user("@a:x", 1), user("@b:x", 1), user("@c:x", 1), user("@d:x", 1), user("@e:x", 1)];
    sync_listing(&registry, &people).await;
    let limits = lifeboat::registry::CODE_LIMITS;
    let asks = (0..10).map(|n| {
        let registry = registry.clone();
        async move {
            let address = email(&format!("mine{n}@example.org"));
            registry.start_contact_verification(&id("@a:x"), &address, "123456", 600_000, limits).await.unwrap()
        }
    });
    let started = futures::future::join_all(asks).await.into_iter().filter(|started| *started).count();
    assert_eq!(started as i64, limits.per_person_per_hour);
    // Variants of one inbox count as one address.
    let mut to_victim = 0;
    for person in ["@b:x", "@c:x"] {
        for variant in ["victim", "victim+1", "Victim+2"] {
            let victim = email(&format!("{variant}@ｅxample.org"));
            to_victim +=
                registry.start_contact_verification(&id(person), &victim, "1", 600_000, limits).await.unwrap() as i64;
        }
    }
    assert_eq!(to_victim, limits.live_per_address);
    // Many accounts (where anyone may register) each asking for a few:
    // everyone's codes together stop at the hour's cap.
    let few = lifeboat::registry::CodeLimits { in_all_per_hour: 10, ..limits };
    let mut started = 0;
    for person in ["@b:x", "@c:x"] {
        for n in 0..3 {
            let address = email(&format!("{n}-{}@example.org", &person[1..2]));
            started +=
                registry.start_contact_verification(&id(person), &address, "1", 600_000, few).await.unwrap() as i64;
        }
    }
    assert_eq!(started, 2, "8 went out this hour already: 2 more in all");
    // Codes that expire at once leave none waiting, and still one person
    // gets a day's few to one address (the hour's cap aside); another
    // asking for it is not held up by them (it may be theirs).
    let hourly = lifeboat::registry::CodeLimits { per_person_per_hour: 100, ..limits };
    let mut in_a_day = 0;
    for n in 0..10 {
        let daily = email(&format!("daily+{n}@example.org"));
        in_a_day += registry.start_contact_verification(&id("@d:x"), &daily, "1", 0, hourly).await.unwrap() as i64;
    }
    assert_eq!(in_a_day, limits.same_address_per_day);
    let owner = registry.start_contact_verification(&id("@e:x"), &email("daily@example.org"), "1", 0, hourly).await;
    assert!(owner.unwrap(), "another's codes do not use up the owner's day");
}
on_both_backends!(codes_mailed_to_addresses_people_type_are_capped);

/// After a loss no room listing has followed (its sync stopped, or failed
/// in its rooms), a room here by the older listing's word may be gone from
/// this server: a person's join would bring it back with a stranger on
/// another member's ID, so it waits as a room elsewhere does, until a room
/// listing shows it here.
async fn a_room_here_by_a_listing_older_than_a_loss_waits_for_strangers_as_one_elsewhere(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    registry.apply_room_listing(&[room("!shared", 2, &[("@a:x", 0), ("@b:x", 0)])]).await.unwrap();
    sync_listing(&registry, &[]).await;
    sync_listing(&registry, &[user("@a:x", 2), user("@b:x", 2)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().state, RoomState::Here, "by the older listing");
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(), "a stranger is on @b's ID");

    registry.apply_room_listing(&[room("!shared", 2, &[("@a:x", 0), ("@b:x", 0)])]).await.unwrap();
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1, "here by a listing since");
}
on_both_backends!(a_room_here_by_a_listing_older_than_a_loss_waits_for_strangers_as_one_elsewhere);

/// lifeboat's own join into a surviving room stands until a loss comes
/// after it: a listing read before the join landed (a sync beside the
/// watcher's rejoin), or lifeboat kicked out since, does not have it join
/// again every round; another wipe does.
async fn lifeboats_rejoin_of_a_room_is_undone_only_by_a_loss_after_it(registry: Registry) {
    let (p, q) = (user("@p:x", 1), user("@q:x", 1));
    sync_listing(&registry, &[user("@a:x", 1), p.clone(), q.clone()]).await;
    registry.apply_room_listing(&[room("!square", 2, &[("@a:x", 0)])]).await.unwrap();
    sync_listing(&registry, &[p.clone(), q.clone()]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    registry.mark_room_restored("!square", None).await.unwrap();
    let restored = || async { registry.room("!square").await.unwrap().unwrap().restored_at.is_some() };

    sync_listing(&registry, &[p.clone(), q]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    assert!(restored().await, "nothing lost since the join");
    // Someone lost after the join, by a sync that listed no rooms.
    sync_listing(&registry, std::slice::from_ref(&p)).await;
    sync_listing(&registry, std::slice::from_ref(&p)).await;
    registry.apply_room_listing(&[]).await.unwrap();
    assert!(!restored().await, "a loss after the join: lifeboat is to join again");

    registry.mark_room_restored("!square", None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    registry.note_wipe_seen().await.unwrap();
    sync_listing(&registry, &[p]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    assert!(!restored().await, "a wipe noted after the join: lifeboat is to join again");
}
on_both_backends!(lifeboats_rejoin_of_a_room_is_undone_only_by_a_loss_after_it);

/// A person with several addresses opens each mailed token link at once:
/// the per-person cap holds all the same. A token Synapse never made was
/// withdrawn and does not count against it.
async fn tokens_asked_for_at_once_stay_within_the_persons_cap(registry: Registry) {
    use lifeboat::registry::IncidentScope;
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let (incident, _) =
        registry.open_incident("Lost", "it went", IncidentScope::All, true, &Actor::cli()).await.unwrap();
    let tomorrow = lifeboat::registry::now_ms() + 86_400_000;
    let asks = (0..6).map(|n| {
        let registry = registry.clone();
        async move {
            let token = format!("token{n}");
            registry.record_request_token(incident.id, &id("@a:x"), &token, tomorrow, 2).await.unwrap()
        }
    });
    let recorded: Vec<i64> = futures::future::join_all(asks).await.into_iter().flatten().collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    registry.mark_token_revoked(recorded[0]).await.unwrap();
    let again = registry.record_request_token(incident.id, &id("@a:x"), "token9", tomorrow, 2).await.unwrap();
    assert!(again.is_some(), "the withdrawn one, never confirmed, is not counted");
    let past = registry.record_request_token(incident.id, &id("@a:x"), "token10", tomorrow, 2).await.unwrap();
    assert_eq!(past, None);
}
on_both_backends!(tokens_asked_for_at_once_stay_within_the_persons_cap);

fn room(id: &str, remote: i64, members: &[(&str, i64)]) -> RoomRecord {
    RoomRecord {
        room_id: id.to_owned(),
        name: Some(format!("Room {id}")),
        joined_local: members.len() as i64,
        joined_remote: remote,
        state_events: 10 + members.len() as i64,
        details: Some(RoomDetails {
            via_servers: if remote > 0 { vec!["other.net".to_owned()] } else { Vec::new() },
            members: members.iter().map(|(id, power)| (id.to_string(), "join".to_owned(), *power)).collect(),
            ..RoomDetails::default()
        }),
        ..RoomRecord::default()
    }
}

fn states(rooms: &[Room]) -> Vec<(&str, RoomState)> {
    rooms.iter().map(|room| (room.room_id.as_str(), room.state)).collect()
}

/// A person back on their ID waits to be brought back into a surviving
/// room while another former member's ID is free: whoever registered it
/// would be let in too. Not when holds are off (the ID stays free).
async fn a_person_waits_for_a_surviving_room_while_another_members_id_is_free(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    registry.apply_room_listing(&[room("!shared", 2, &[("@a:x", 0), ("@b:x", 0)])]).await.unwrap();
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    sync_listing(&registry, &[user("@a:x", 2)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(), "@b's ID is free");
    assert_eq!(registry.pending_rejoins(false, &id("@lifeboat:x")).await.unwrap().len(), 1, "holds off: no waiting");
    registry.begin_hold(&id("@b:x")).await.unwrap();
    assert!(
        registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(),
        "@b's hold is still being made"
    );
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().free, 1);
    registry.mark_held(&id("@b:x"), Some(5_000), true).await.unwrap();
    assert_eq!(
        registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(),
        1,
        "@b's ID is held: @a comes back"
    );
}
on_both_backends!(a_person_waits_for_a_surviving_room_while_another_members_id_is_free);

/// A room's maker, once its state was read, is the sender of its creation
/// event: the listing's creator (which the room's own server may have
/// chosen) no longer replaces it.
async fn a_rooms_maker_read_from_its_state_outlives_the_listings_creator(registry: Registry) {
    let mut listed = room("!r", 1, &[("@a:x", 0)]);
    listed.creator = Some("@lifeboat:x".to_owned());
    let details = listed.details.take();
    registry.apply_room_listing(std::slice::from_ref(&listed)).await.unwrap();
    let creator = || async { registry.room("!r").await.unwrap().unwrap().creator };
    assert_eq!(creator().await.as_deref(), Some("@lifeboat:x"), "the listing's word until the state is read");
    listed.details = details.map(|details| RoomDetails { maker: Some("@mallory:evil".to_owned()), ..details });
    registry.apply_room_listing(std::slice::from_ref(&listed)).await.unwrap();
    assert_eq!(creator().await.as_deref(), Some("@mallory:evil"));
    listed.details = None;
    registry.apply_room_listing(&[listed]).await.unwrap();
    assert_eq!(creator().await.as_deref(), Some("@mallory:evil"), "a later listing does not undo it");
}

on_both_backends!(a_rooms_maker_read_from_its_state_outlives_the_listings_creator);

/// A surviving room people lost, back in a listing by anyone's join but
/// lifeboat's own, has its aliases and directory entry due, and keeps both
/// as known though Synapse lists neither yet; not a room lifeboat itself
/// got back into, nor one an admin purged while nobody was lost (it is
/// forgotten, so that a later loss does not bring it back).
async fn a_room_back_without_lifeboat_keeps_its_aliases_and_listing_due(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@p:x", 1)]).await;
    let mut square = room("!square", 2, &[("@a:x", 0)]);
    square.public = true;
    square.details.as_mut().unwrap().aliases = vec!["#square:x".to_owned()];
    let mut harbour = square.clone();
    harbour.room_id = "!harbour".to_owned();
    let mut purged = room("!purged", 2, &[("@p:x", 0)]);
    purged.details =
        square.details.clone().map(|details| RoomDetails { members: purged.details.unwrap().members, ..details });
    registry.apply_room_listing(&[square.clone(), harbour.clone(), purged.clone()]).await.unwrap();
    // @a is lost with the two rooms; @p stays, and !purged goes on its own.
    sync_listing(&registry, &[user("@p:x", 1)]).await;
    // A sync whose rooms were not listed (stopped, say) lies between.
    sync_listing(&registry, &[user("@p:x", 1)]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    assert!(registry.room("!purged").await.unwrap().is_some(), "gone as someone was lost: kept");
    registry.mark_room_restored("!harbour", None).await.unwrap();
    registry.aliases_no_longer_due("!harbour").await.unwrap();

    // Back, as Synapse sees them after a wipe: unlisted, no aliases.
    let bare = |mut room: RoomRecord| {
        room.public = false;
        room.details.as_mut().unwrap().aliases.clear();
        room
    };
    registry.apply_room_listing(&[bare(square.clone()), bare(harbour), bare(purged.clone())]).await.unwrap();
    let due: Vec<String> = registry.rooms_with_aliases_due().await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(due, ["!square"], "harbour's were due with lifeboat's own join, and done; nobody lost !purged");
    let known = registry.room("!square").await.unwrap().unwrap();
    assert!(known.public && known.aliases == ["#square:x"], "kept as known: {known:?}");
    let known = registry.room("!harbour").await.unwrap().unwrap();
    assert!(!known.public && known.aliases.is_empty(), "as Synapse lists it: {known:?}");

    registry.aliases_no_longer_due("!square").await.unwrap();
    registry.apply_room_listing(&[bare(square.clone())]).await.unwrap();
    assert!(registry.rooms_with_aliases_due().await.unwrap().is_empty(), "due once, when it came back");

    // Gone while nothing was lost (the accounts listed just before lost
    // nobody new): forgotten, so that a later loss does not bring it back;
    // not one gone with its person, nor one made in place of a lost one.
    let made = room("!made", 0, &[("@p:x", 0)]);
    registry.apply_room_listing(&[bare(square.clone()), bare(purged), made]).await.unwrap();
    registry.mark_room_recreated("!harbour", "!made").await.unwrap();
    sync_listing(&registry, &[user("@p:x", 1)]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    assert!(registry.room("!purged").await.unwrap().is_none(), "gone while none of its people was lost: forgotten");
    assert!(registry.room("!made").await.unwrap().is_some(), "made in place of a lost one: kept");
    assert!(registry.room("!square").await.unwrap().is_some(), "gone with its person: kept");
}
on_both_backends!(a_room_back_without_lifeboat_keeps_its_aliases_and_listing_due);

/// A former member whose ID Synapse creates for nobody (a bridge's puppet,
/// a name it no longer allows) holds no surviving room back, and is not
/// tried again by every hold run; it is once lost again, or when asked.
async fn a_former_member_whose_id_synapse_refuses_to_create_holds_no_room_back(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    registry.apply_room_listing(&[room("!shared", 2, &[("@a:x", 0), ("@b:x", 0)])]).await.unwrap();
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    sync_listing(&registry, &[user("@a:x", 2)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert!(registry.begin_hold(&id("@b:x")).await.unwrap());
    registry.abandon_hold(&id("@b:x"), Some("M_EXCLUSIVE")).await.unwrap();
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().free, 0);
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1, "nobody can take @b's ID");
    assert!(registry.hold_candidates(false).await.unwrap().is_empty(), "not tried again by itself");
    let listed = registry.holds().await.unwrap();
    let b = listed.iter().find(|hold| hold.user_id.as_str() == "@b:x");
    assert_eq!(b.and_then(|b| b.hold_refused.as_deref()), Some("M_EXCLUSIVE"), "{listed:?}");

    assert_eq!(registry.hold_candidates(true).await.unwrap().len(), 1, "asked to try again");
    assert!(registry.hold_candidates(false).await.unwrap().is_empty(), "refused until begun again");
    assert!(registry.begin_hold(&id("@b:x")).await.unwrap());
    registry.abandon_hold(&id("@b:x"), Some("M_EXCLUSIVE")).await.unwrap();
    sync_listing(&registry, &[user("@a:x", 2)]).await;
    assert!(registry.hold_candidates(false).await.unwrap().is_empty(), "nothing new lost");
    sync_listing(&registry, &[]).await;
    let candidates = registry.hold_candidates(false).await.unwrap();
    assert!(candidates.iter().any(|c| c.user_id.as_str() == "@b:x"), "a new loss (@a): tried again");
}
on_both_backends!(a_former_member_whose_id_synapse_refuses_to_create_holds_no_room_back);

/// A former member who was only invited counts as well: the invite is still
/// in the surviving room's state, for whoever has the ID now.
async fn a_stranger_on_an_invited_members_id_holds_a_surviving_room_back(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    let mut shared = room("!shared", 2, &[("@a:x", 0)]);
    shared.details.as_mut().unwrap().members.push(("@b:x".to_owned(), "invite".to_owned(), 0));
    registry.apply_room_listing(&[shared]).await.unwrap();
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    sync_listing(&registry, &[user("@a:x", 2), user("@b:x", 2)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().strangers, 1);
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(), "a stranger has @b's invite");
}
on_both_backends!(a_stranger_on_an_invited_members_id_holds_a_surviving_room_back);

/// A held account someone unlocked outside lifeboat is whoever can sign in
/// to it: its surviving rooms wait as for a stranger, until a listing shows
/// it locked again.
async fn a_held_account_unlocked_outside_lifeboat_holds_its_surviving_rooms_back(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    registry.apply_room_listing(&[room("!shared", 2, &[("@a:x", 0), ("@b:x", 0)])]).await.unwrap();
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    hold(&registry, "@b:x", 5).await;
    let held = |locked: bool| {
        let mut listed = user("@b:x", 5);
        listed.locked = locked;
        listed
    };
    sync_listing(&registry, &[user("@a:x", 2), held(true)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().strangers, 0, "held, and locked");
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1);

    sync_listing(&registry, &[user("@a:x", 2), held(false)]).await;
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().strangers, 1, "unlocked: whoever signs in");
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty());
    sync_listing(&registry, &[user("@a:x", 2), held(true)]).await;
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().strangers, 0, "locked again");
}
on_both_backends!(a_held_account_unlocked_outside_lifeboat_holds_its_surviving_rooms_back);

/// A room's member no account listing saw (registered after the listing,
/// before its rooms were read) has an ID anyone may register after a wipe:
/// free, until a hold run adopts it as lost and holds it. Not one only
/// invited: an invite may name an ID nobody ever had.
async fn a_rooms_member_no_listing_saw_is_free_until_adopted_as_lost(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let mut with_eve = room("!r", 2, &[("@a:x", 0), ("@eve:x", 0)]);
    with_eve.details.as_mut().unwrap().members.push(("@ghost:x".to_owned(), "invite".to_owned(), 0));
    registry.apply_room_listing(&[with_eve]).await.unwrap();
    assert_eq!(registry.room("!r").await.unwrap().unwrap().free, 1);
    let unseen = registry.room_members_no_listing_saw().await.unwrap();
    assert_eq!(unseen.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["@eve:x"]);
    assert!(unseen[0].1.is_some(), "with when its room was read");
    registry.adopt_as_lost(&[&id("@eve:x")]).await.unwrap();
    assert!(registry.room_members_no_listing_saw().await.unwrap().is_empty());
    let candidates = registry.hold_candidates(false).await.unwrap();
    assert_eq!(candidates.iter().map(|c| c.user_id.as_str()).collect::<Vec<_>>(), ["@eve:x"]);
    assert_eq!(registry.room("!r").await.unwrap().unwrap().free, 1, "lost, not held yet");
}
on_both_backends!(a_rooms_member_no_listing_saw_is_free_until_adopted_as_lost);

/// A re-created room gives power back to an ID held for its person; one
/// whose hold is still being made (free to register until it is) or was
/// unlocked outside lifeboat counts as no such ID.
async fn a_former_member_counts_as_held_only_once_the_hold_is_made_and_still_locked(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@c:x", 1)]).await;
    registry.apply_room_listing(&[room("!r", 0, &[("@a:x", 50), ("@b:x", 100), ("@c:x", 50)])]).await.unwrap();
    for (user_id, custody, unlocked_at) in
        [("@a:x", "held", None), ("@b:x", "holding", None), ("@c:x", "held", Some(1))]
    {
        sqlx::query("UPDATE accounts SET custody = $2, custody_at = 1, held_unlocked_at = $3 WHERE user_id = $1")
            .bind(user_id)
            .bind(custody)
            .bind(unlocked_at)
            .execute(registry.pool())
            .await
            .unwrap();
    }
    let members = registry.room_members_back("!r").await.unwrap();
    let held: Vec<(&str, bool, i64)> =
        members.iter().map(|member| (member.user_id.as_str(), member.held, member.power_level)).collect();
    assert_eq!(held, [("@a:x", true, 50), ("@b:x", false, 100), ("@c:x", false, 50)]);
}
on_both_backends!(a_former_member_counts_as_held_only_once_the_hold_is_made_and_still_locked);

async fn rooms_gone_from_a_listing_are_classified_and_a_lost_persons_memberships_wait_for_them(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1)]).await;
    let shared = room("!shared", 2, &[("@a:x", 100), ("@b:x", 0)]);
    let local = room("!local", 0, &[("@a:x", 0)]);
    registry.apply_room_listing(&[shared.clone(), local.clone()]).await.unwrap();
    let known = registry.rooms(None).await.unwrap();
    assert_eq!(states(&known), [("!shared", RoomState::Here), ("!local", RoomState::Here)]);
    assert_eq!(known[0].via_servers, ["other.net"]);
    // A new topic leaves the fingerprint alone: old reads are read again.
    let now = lifeboat::registry::now_ms();
    let mut old = registry.rooms_read_before(now + 1, 10).await.unwrap();
    old.sort();
    assert_eq!(old, ["!local", "!shared"]);
    assert!(registry.rooms_read_before(now - 60_000, 10).await.unwrap().is_empty(), "just read");
    assert_eq!(registry.rooms_read_before(now + 1, 1).await.unwrap().len(), 1, "capped");

    // The wipe: @a is lost, and no room is listed any more.
    sync_listing(&registry, &[user("@b:x", 1)]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    let after = registry.rooms(None).await.unwrap();
    assert_eq!(states(&after), [("!shared", RoomState::Elsewhere), ("!local", RoomState::Lost)]);
    assert_eq!((after[0].members, after[0].pending), (2, 1), "@a waits to come back; @b never left");
    let fates = registry.room_fates().await.unwrap();
    assert_eq!(fates["@a:x"].len(), 2);

    // A later state of the room without either: @b left (here, for good),
    // while lost @a's membership is what their rejoin needs.
    let mut changed = room("!shared", 2, &[]);
    changed.state_events = 99;
    registry.apply_room_listing(&[changed]).await.unwrap();
    registry.apply_room_listing(&[]).await.unwrap();
    assert_eq!(registry.room("!shared").await.unwrap().unwrap().members, 1);
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(), "nobody is back yet");

    // @a registers again, and an operator vouches for them.
    sync_listing(&registry, &[user("@a:x", 2), user("@b:x", 1)]).await;
    assert!(
        registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(),
        "a stranger on the ID is joined nowhere"
    );
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    let pending = registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap();
    assert_eq!(pending.len(), 1, "only the surviving room: {pending:?}");
    assert_eq!(
        (pending[0].room_id.as_str(), pending[0].via_servers.as_slice()),
        ("!shared", &["other.net".to_owned()][..])
    );
    for _ in 0..MAX_REJOIN_ATTEMPTS {
        registry.record_rejoin("!shared", &id("@a:x"), RejoinOutcome::Failed("M_FORBIDDEN")).await.unwrap();
    }
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty(), "given up on by itself");
    assert_eq!(registry.retry_given_up().await.unwrap(), 1, "one join given up");
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1, "retried when asked");
    registry.record_rejoin("!shared", &id("@a:x"), RejoinOutcome::Failed("M_FORBIDDEN")).await.unwrap();
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1, "with as many tries again");

    registry.mark_room_recreated("!local", "!new").await.unwrap();
    let pending = registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap();
    assert_eq!(pending[0].recreated_as.as_deref(), Some("!new"), "invited to the room made again: {pending:?}");
    registry.record_rejoin("!local", &id("@a:x"), RejoinOutcome::Invited).await.unwrap();
    let counts = registry.room_counts().await.unwrap();
    assert_eq!((counts.elsewhere, counts.recreated, counts.rejoined, counts.pending), (1, 1, 1, 1));
}
on_both_backends!(rooms_gone_from_a_listing_are_classified_and_a_lost_persons_memberships_wait_for_them);

/// An account Synapse lists without a creation time (made before Synapse
/// kept them) is told from its ID registered again after a wipe that no
/// listing saw: that one has a creation time.
async fn an_account_made_before_synapse_kept_creation_times_is_told_from_a_new_one(registry: Registry) {
    let old: ListedUser = serde_json::from_value(json!({"name": "@old:x", "creation_ts": null})).unwrap();
    sync_listing(&registry, &[old.clone(), user("@b:x", 1)]).await;
    let applied = sync_listing(&registry, &[old, user("@b:x", 1)]).await;
    assert!(applied.report.recreated.is_empty(), "listed again as it was: the same account");
    let applied = sync_listing(&registry, &[user("@old:x", 5), user("@b:x", 1)]).await;
    assert_eq!(applied.report.recreated, ["@old:x"], "registered again since");
}
on_both_backends!(an_account_made_before_synapse_kept_creation_times_is_told_from_a_new_one);

/// A link the web page is about to mail, for a subscription.
fn subscription_link<'a>(
    link: &'a str,
    user_id: &'a UserId,
    to: &'a EmailAddress,
    code_hash: Option<&'a str>,
    expires_at: i64,
    asked_from: Option<&'a str>,
) -> NewWebLink<'a> {
    let purpose = "subscribe";
    NewWebLink { id: link, purpose, user_id, address: to, code_hash, expires_at, asked_from, asked_as: None }
}

/// The web page's caps on mail to one address count the variants of its
/// inbox as that address: someone typing another's address cannot get it
/// a day's mail once per variant. Each network's part of them is counted
/// too, in the registry, so that a restart of serve does not forget it.
async fn web_links_to_variants_of_one_inbox_count_as_links_to_it(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let until = lifeboat::registry::now_ms() + 600_000;
    let variants = ["victim+1@example.org", "Victim@ｅxample.org", "victim@example.org"];
    for (n, (variant, network)) in variants.iter().zip(["net:a", "net:a", "net:b"]).enumerate() {
        let (link, to) = (format!("link-{n}"), email(variant));
        registry.create_web_link(subscription_link(&link, &id("@a:x"), &to, None, until, Some(network))).await.unwrap();
    }
    let victim = email("victim+2@example.org");
    assert_eq!(registry.live_web_links_to("subscribe", &victim).await.unwrap(), 3);
    assert_eq!(registry.web_links_to_since("subscribe", &victim, 0, "net:a", None).await.unwrap(), (3, 2));
    assert_eq!(registry.web_links_to_since("subscribe", &victim, 0, "net:c", None).await.unwrap(), (3, 0));
    let other = email("v.ictim@example.org");
    assert_eq!(registry.live_web_links_to("subscribe", &other).await.unwrap(), 0, "another inbox");
    // A way-back link asked for by Matrix ID counts apart from those asked
    // for by address.
    let person = id("@a:x");
    let by_id = NewWebLink {
        purpose: "token",
        asked_as: Some(AskedAs::Id),
        ..subscription_link("link-id", &person, &victim, None, until, Some("net:a"))
    };
    registry.create_web_link(by_id).await.unwrap();
    assert_eq!(registry.web_links_to_since("token", &victim, 0, "net:a", Some(AskedAs::Id)).await.unwrap(), (1, 1));
    assert_eq!(
        registry.web_links_to_since("token", &victim, 0, "net:a", Some(AskedAs::Address)).await.unwrap(),
        (0, 0)
    );
    // Any inbox at the domain counts among a network's links to the domain.
    assert_eq!(registry.web_links_to_domain_since("subscribe", &other, 0, "net:a").await.unwrap(), 2);
    let elsewhere = email("victim@example.net");
    assert_eq!(registry.web_links_to_domain_since("subscribe", &elsewhere, 0, "net:a").await.unwrap(), 0);
}
on_both_backends!(web_links_to_variants_of_one_inbox_count_as_links_to_it);

/// A re-created room's invites go to those who never lost their ID too: one
/// that failed as the room was made is tried again, as a claimed person's
/// is, and all of them again into a room made once more. Never to
/// lifeboat's own account, which made the room.
async fn those_who_kept_their_id_are_invited_into_a_recreated_room_until_it_works(registry: Registry) {
    let everyone = [user("@a:x", 1), user("@b:x", 1), user("@c:x", 1), user("@lifeboat:x", 1)];
    sync_listing(&registry, &everyone).await;
    let local = room("!local", 0, &[("@a:x", 0), ("@b:x", 0), ("@c:x", 0), ("@lifeboat:x", 100)]);
    registry.apply_room_listing(&[local]).await.unwrap();
    // A partial loss: @c and the room are gone; the others kept their IDs.
    sync_listing(&registry, &[user("@a:x", 1), user("@b:x", 1), user("@lifeboat:x", 1)]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    registry.mark_room_recreated("!local", "!new").await.unwrap();
    let service = id("@lifeboat:x");
    let invitees = || async {
        let pending = registry.pending_rejoins(true, &service).await.unwrap();
        pending.into_iter().map(|rejoin| rejoin.user_id.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(invitees().await, ["@a:x", "@b:x"], "neither lost @c nor lifeboat");

    registry.record_rejoin("!local", &id("@a:x"), RejoinOutcome::Invited).await.unwrap();
    registry.record_rejoin("!local", &id("@b:x"), RejoinOutcome::Failed("M_UNKNOWN")).await.unwrap();
    assert_eq!(invitees().await, ["@b:x"], "the failed invite is tried again");

    // The room made again is lost too, and made once more: an invite into
    // it was lost with it.
    registry.mark_room_recreated("!new", "!newer").await.unwrap();
    assert_eq!(invitees().await, ["@a:x", "@b:x"], "both are invited into the room made once more");
}
on_both_backends!(those_who_kept_their_id_are_invited_into_a_recreated_room_until_it_works);

/// Another wipe after people came back: the surviving room is to be
/// rejoined again, and its people brought back again, as after the first.
async fn after_another_wipe_rooms_and_people_are_brought_back_again(registry: Registry) {
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let shared = room("!shared", 2, &[("@a:x", 0)]);
    registry.apply_room_listing(std::slice::from_ref(&shared)).await.unwrap();
    // The first wipe; lifeboat and @a come back into the room.
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    sync_listing(&registry, &[user("@a:x", 2)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    registry.mark_room_restored("!shared", None).await.unwrap();
    registry.record_rejoin("!shared", &id("@a:x"), RejoinOutcome::Joined).await.unwrap();
    registry.apply_room_listing(std::slice::from_ref(&shared)).await.unwrap();
    assert!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().is_empty());

    // Another wipe.
    sync_listing(&registry, &[]).await;
    registry.apply_room_listing(&[]).await.unwrap();
    let again = registry.room("!shared").await.unwrap().unwrap();
    assert_eq!((again.state, again.restored_at, again.pending), (RoomState::Elsewhere, None, 1), "{again:?}");
    sync_listing(&registry, &[user("@a:x", 3)]).await;
    registry.settle_as_claimed(&id("@a:x"), None, &Actor::cli()).await.unwrap();
    assert_eq!(registry.pending_rejoins(true, &id("@lifeboat:x")).await.unwrap().len(), 1, "@a is brought back again");
}
on_both_backends!(after_another_wipe_rooms_and_people_are_brought_back_again);

/// Sends the queued emails to a relay where nothing listens: a send would
/// fail, so a skip is the only way a message ends.
async fn send_queued_emails_to_no_relay(registry: &Registry) {
    use lifeboat::outbox::{Progress, QueuedEmails, send_until_done};
    struct Quiet;
    impl Progress for Quiet {}
    let email = lifeboat::config::EmailConfig {
        smtp_url: "smtp://127.0.0.1:9".to_owned(),
        smtp_password: None,
        from: "Lifeboat <lifeboat@example.org>".to_owned(),
        connections: 1,
    };
    let mailer = lifeboat::mail::Mailer::from_config(&email, 1).unwrap();
    let queued =
        QueuedEmails { registry, mailer: &mailer, server_name: "example.org", holds_on: false, token_check: None };
    send_until_done(registry, &queued, 1, &Quiet).await.unwrap();
}

async fn a_queued_message_past_its_expiry_is_skipped_and_its_text_emptied(registry: Registry) {
    let message = lifeboat::messages::contact_code("example.org", &id("@a:x"), "123456", 30);
    let past = lifeboat::registry::now_ms() - 1;
    let id = lifeboat::outbox::queue_email(&registry, MessageKind::Code, &email("a@example.org"), &message, None, past)
        .await
        .unwrap();
    send_queued_emails_to_no_relay(&registry).await;
    let (state, reason) = message_outcome(&registry, id).await;
    assert_eq!((state.as_str(), reason.as_deref()), ("skipped", Some("expired before it could be sent")));
    let (text,): (Option<String>,) = sqlx::query_as("SELECT body_text FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(text, None, "the code does not stay in the registry");

    // A DM its sender never finished (it stopped): the worker's sweep ends it.
    let dm = lifeboat::outbox::new_dm(MessageKind::Code, "@a:x", "Your code: **12345678**", past);
    let id = registry.queue_message(&dm).await.unwrap();
    assert_eq!(registry.skip_expired_messages().await.unwrap(), 1);
    let (state, _) = message_outcome(&registry, id).await;
    assert_eq!(state, "skipped");
    let (text,): (Option<String>,) = sqlx::query_as("SELECT body_text FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(text, None, "nor does a DMed one");
}

/// A way back in an admin had the bot mail waits in the outbox while the
/// relay is down. It is not sent once its address is no longer the
/// person's, or once its incident is resolved.
async fn a_queued_way_back_in_goes_only_while_its_person_may_be_mailed_it(registry: Registry) {
    use lifeboat::registry::{INCIDENT_RESOLVED, IncidentScope, NO_LONGER_MAILABLE};
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let (a, actor) = (id("@a:x"), Actor::cli());
    for address in ["a@example.org", "b@example.org", "c@example.org"] {
        let verified = Some(lifeboat::registry::now_ms());
        registry.add_contact(&a, &contact(address), ContactSource::Admin, verified, &actor).await.unwrap();
    }
    let (incident, _) = registry.open_incident("Lost", "it went", IncidentScope::All, true, &actor).await.unwrap();
    let message = lifeboat::messages::registration_token(
        "x",
        &id("@a:x"),
        "tok",
        "tomorrow",
        "https://x/",
        lifeboat::registry::OldName::MayBeFree,
    );
    let tomorrow = lifeboat::registry::now_ms() + 86_400_000;
    let (to_a, to_b, to_c) = (email("a@example.org"), email("b@example.org"), email("c@example.org"));
    let queue = |to| {
        lifeboat::outbox::queue_email(&registry, MessageKind::Token, to, &message, Some((incident.id, &a)), tomorrow)
    };

    let to_a_removed_address = queue(&to_a).await.unwrap();
    let to_a_kept_address = queue(&to_b).await.unwrap();
    registry.remove_contact(&a, &contact("a@example.org"), &actor).await.unwrap();
    send_queued_emails_to_no_relay(&registry).await;
    let (state, reason) = message_outcome(&registry, to_a_removed_address).await;
    assert_eq!((state.as_str(), reason.as_deref()), ("skipped", Some(NO_LONGER_MAILABLE)));
    let (state, reason) = message_outcome(&registry, to_a_kept_address).await;
    assert_eq!(state, "pending", "still theirs: tried, and waits for the relay ({reason:?})");
    assert!(reason.unwrap().contains("could not talk to the mail server"));

    let after_the_incident = queue(&to_c).await.unwrap();
    registry.resolve_incident(incident.id, &actor).await.unwrap();
    send_queued_emails_to_no_relay(&registry).await;
    let (state, reason) = message_outcome(&registry, after_the_incident).await;
    assert_eq!((state.as_str(), reason.as_deref()), ("skipped", Some(INCIDENT_RESOLVED)));
}
on_both_backends!(a_queued_way_back_in_goes_only_while_its_person_may_be_mailed_it);

/// serve's worker makes waiting rows due early once the relay answers
/// again; never a row due only at its expiry, which its caller sends at
/// once itself (the drill's test mail): that would send it twice.
async fn a_message_its_caller_sends_itself_is_never_made_due_early(registry: Registry) {
    use lifeboat::registry::{DeliveryChannel, NewMessage};
    let now = lifeboat::registry::now_ms();
    let row = |due_at, expires_at| NewMessage {
        kind: MessageKind::Drill,
        channel: DeliveryChannel::Email,
        to: "ops@example.org",
        subject: "drill",
        text: "A test.",
        html: "",
        incident_id: None,
        user_id: None,
        expires_at,
        due_at,
    };
    let in_four_minutes = now + 4 * 60_000;
    registry.queue_message(&row(in_four_minutes, in_four_minutes)).await.unwrap();
    let within = now + 5 * 60_000;
    assert_eq!(registry.parked_deliveries(DeliveryChannel::Email, within).await.unwrap(), 0);
    registry.queue_message(&row(in_four_minutes, now + 86_400_000)).await.unwrap();
    assert_eq!(registry.parked_deliveries(DeliveryChannel::Email, within).await.unwrap(), 1, "a backoff");
    assert_eq!(registry.release_parked(DeliveryChannel::Email, within).await.unwrap(), 1, "only the backoff");
}
on_both_backends!(a_message_its_caller_sends_itself_is_never_made_due_early);

/// A message sent at once whose send failed, even for a reason worth a
/// retry, is over: its caller said so (the drill, the page whose code did
/// not go out), and nobody sends it later.
async fn a_message_sent_at_once_that_failed_is_not_sent_later(registry: Registry) {
    use lifeboat::outbox::Outcome;
    let tomorrow = lifeboat::registry::now_ms() + 86_400_000;
    let dm = lifeboat::outbox::new_dm(MessageKind::Code, "@a:x", "Your code: **12345678**", tomorrow);
    let deferred = |_| async { Outcome::Retry("Synapse answered 502".to_owned()) };
    let sent = lifeboat::outbox::send_at_once(&registry, dm, deferred).await.unwrap();
    assert_eq!(sent, Err("Synapse answered 502".to_owned()));
    let (state, _): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM deliveries").fetch_one(registry.pool()).await.unwrap();
    assert_eq!(state, "failed");
}
on_both_backends!(a_message_sent_at_once_that_failed_is_not_sent_later);

/// A message that may have gone out (no answer once all of it was sent)
/// waits its time whoever asks: neither a rerun of notify nor serve's
/// worker, once the relay answers again, makes it due sooner.
async fn a_message_that_may_have_gone_out_is_not_sent_again_before_its_time(registry: Registry) {
    use lifeboat::registry::{DeliveryChannel, DeliveryState};
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let now = lifeboat::registry::now_ms();
    let (incident,): (i64,) = sqlx::query_as(
        "INSERT INTO incidents (title, postmortem, scope, opened_at) VALUES ('Lost', 'Lost.', 'missing', 1) RETURNING id",
    )
    .fetch_one(registry.pool())
    .await
    .unwrap();
    let (notice,): (i64,) = sqlx::query_as(
        "INSERT INTO deliveries (kind, incident_id, user_id, channel, address, next_attempt_at, created_at) \
         VALUES ('notice', $1, '@a:x', 'email', 'a@example.org', $2, $2) RETURNING id",
    )
    .bind(incident)
    .bind(now)
    .fetch_one(registry.pool())
    .await
    .unwrap();
    let alert = queue_an_alert(&registry, now).await;
    // Eleven of its fifteen minutes have passed.
    let time = now + 4 * 60_000;
    let mut writer = registry.outbox_writer().await.unwrap();
    for id in [notice, alert] {
        writer
            .mark_ended(id, DeliveryState::Pending, "no answer after it was sent", Some(time), Some(time))
            .await
            .unwrap();
    }
    drop(writer);

    registry.resume_deliveries(incident, false, false).await.unwrap();
    let (due,): (i64,) = sqlx::query_as("SELECT next_attempt_at FROM deliveries WHERE id = $1")
        .bind(notice)
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(due, time, "a rerun of notify leaves it waiting");
    let within = now + 5 * 60_000;
    assert_eq!(registry.parked_deliveries(DeliveryChannel::Email, within).await.unwrap(), 0, "so does the worker");
}
on_both_backends!(a_message_that_may_have_gone_out_is_not_sent_again_before_its_time);

/// An alert to the operators, due at `now`: its outbox row.
async fn queue_an_alert(registry: &Registry, now: i64) -> i64 {
    let alert = lifeboat::registry::NewMessage {
        kind: MessageKind::Alert,
        channel: lifeboat::registry::DeliveryChannel::Email,
        to: "ops@example.org",
        subject: "alert",
        text: "Accounts are missing.",
        html: "",
        incident_id: None,
        user_id: None,
        expires_at: now + 86_400_000,
        due_at: now,
    };
    registry.queue_message(&alert).await.unwrap()
}
on_both_backends!(a_queued_message_past_its_expiry_is_skipped_and_its_text_emptied);

/// Tables and their columns in order (a backup's rows follow it), as the
/// database itself describes them.
async fn schema(registry: &Registry) -> std::collections::BTreeSet<(String, i64, String)> {
    let sql = if registry.is_postgres() {
        "SELECT table_name::text, ordinal_position::bigint, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
    } else {
        "SELECT m.name, p.cid + 1, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT IN ('_sqlx_migrations', 'sqlite_sequence')"
    };
    let rows: Vec<(String, i64, String)> = sqlx::query_as(sql).fetch_all(registry.pool()).await.unwrap();
    rows.into_iter().collect()
}

#[tokio::test]
async fn the_sqlite_and_postgresql_schemas_have_the_same_tables_and_columns_in_the_same_order() {
    let (sqlite, postgres) = (TestDatabase::sqlite(), TestDatabase::postgres().await);
    let on_sqlite = Registry::connect(&sqlite.url()).await.unwrap();
    let on_postgres = Registry::connect(&postgres.url()).await.unwrap();
    let (lite, pg) = (schema(&on_sqlite).await, schema(&on_postgres).await);
    assert!(lite.len() > 50, "the schema was read: {lite:?}");
    let only_sqlite: Vec<_> = lite.difference(&pg).collect();
    let only_postgres: Vec<_> = pg.difference(&lite).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "SQLite only: {only_sqlite:?}; PostgreSQL only: {only_postgres:?}"
    );
    on_postgres.close().await;
    postgres.drop_database().await;
}

/// An address Synapse no longer has for an account that is still its
/// person's stops being a contact (audited): it may be someone else's now.
/// One its person opted out of stays (adding it again must not undo that),
/// as do those added another way, even when Synapse had them too; and
/// nothing goes on an answer that is not to be trusted for it.
async fn an_address_dropped_in_synapse_stops_being_a_contact(registry: Registry) {
    use lifeboat::registry::{AccountDetails, ContactAddress, ContactSource};
    sync_listing(&registry, &[user("@a:x", 1)]).await;
    let read = |emails: &[&str]| AccountDetails {
        user_id: id("@a:x"),
        emails: emails.iter().map(|address| (email(address), None)).collect(),
        in_synapse: Some(emails.iter().map(|address| address.to_string()).collect()),
        due_at: 0,
        appservice_id: None,
    };
    let all = ["old@example.org", "kept@example.org", "quiet@example.org", "both@example.org"];
    registry.record_details(&[read(&all)], &Actor::cli()).await.unwrap();
    sqlx::query("UPDATE contacts SET opted_out_at = 1 WHERE address = 'quiet@example.org'")
        .execute(registry.pool())
        .await
        .unwrap();
    for own in ["own@example.org", "both@example.org"] {
        let own = ContactAddress::Email(email(own));
        registry.add_contact(&id("@a:x"), &own, ContactSource::User, Some(1), &Actor::cli()).await.unwrap();
    }

    let left = || async {
        let contacts = registry.contacts_of(&id("@a:x")).await.unwrap();
        let mut left: Vec<String> =
            contacts.into_iter().map(|contact| contact.address).filter(|address| !address.starts_with('@')).collect();
        left.sort();
        left
    };
    registry.record_details(&[read(&["kept@example.org"])], &Actor::cli()).await.unwrap();
    let expected = ["both@example.org", "kept@example.org", "own@example.org", "quiet@example.org"];
    assert_eq!(left().await, expected);
    let untrusted = AccountDetails { in_synapse: None, ..read(&[]) };
    registry.record_details(&[untrusted], &Actor::cli()).await.unwrap();
    assert_eq!(left().await, expected, "nothing goes on an answer not trusted for it");
    let audited = registry.audit_log(10).await.unwrap();
    assert!(audited.iter().any(|entry| entry.action == "contact.remove"
        && entry.detail.as_deref() == Some("email old@example.org (no longer in Synapse)")));

    // A Synapse restored from an older backup has it again, validated
    // before the drop: it stays dropped. Validated since, it is back.
    let validated = |at: i64| AccountDetails {
        emails: vec![(email("kept@example.org"), None), (email("old@example.org"), Some(at))],
        in_synapse: Some(vec!["kept@example.org".to_owned(), "old@example.org".to_owned()]),
        ..read(&[])
    };
    registry.record_details(&[validated(1_000)], &Actor::cli()).await.unwrap();
    assert_eq!(left().await, expected, "restored from before the drop");
    let since = lifeboat::registry::now_ms() + 1;
    registry.record_details(&[validated(since)], &Actor::cli()).await.unwrap();
    assert!(left().await.contains(&"old@example.org".to_owned()), "validated again since");
}
on_both_backends!(an_address_dropped_in_synapse_stops_being_a_contact);

async fn details_are_read_again_when_due_and_new_accounts_come_first(registry: Registry) {
    use lifeboat::registry::{AccountDetails, DetailsDue};
    sync_listing(&registry, &[user("@new:x", 1), user("@due:x", 1), user("@later:x", 1), user("@old:x", 1)]).await;
    let now = lifeboat::registry::now_ms();
    let read = |user: &str, due_at| AccountDetails {
        user_id: id(user),
        emails: Vec::new(),
        in_synapse: None,
        due_at,
        appservice_id: None,
    };
    registry
        .record_details(
            &[read("@due:x", now - 1), read("@later:x", now + 3_600_000), read("@old:x", now)],
            &Actor::cli(),
        )
        .await
        .unwrap();
    // Read before due times existed: only its fetch time counts.
    sqlx::query("UPDATE accounts SET details_due_at = NULL, details_fetched_at = 5 WHERE user_id = '@old:x'")
        .execute(registry.pool())
        .await
        .unwrap();
    let again = DetailsDue::Again { now, stale_before: now - 60_000 };
    let needing = |due, after: &'static str| {
        let registry = registry.clone();
        async move {
            let found = registry.accounts_needing_details(due, after, 10).await.unwrap();
            found.into_iter().map(|(user_id, _)| user_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(needing(DetailsDue::New, "").await, [id("@new:x")]);
    assert_eq!(needing(again, "").await, [id("@due:x"), id("@old:x")]);
    assert_eq!(needing(again, "@due:x").await, [id("@old:x")], "keyset paging");
    assert_eq!(registry.count_accounts_needing_details(again).await.unwrap(), 2);
    assert_eq!(registry.count_accounts_needing_details(DetailsDue::New).await.unwrap(), 1);
}
on_both_backends!(details_are_read_again_when_due_and_new_accounts_come_first);

async fn of_incidents_opened_at_the_same_moment_for_the_same_people_only_one_opens(registry: Registry) {
    use lifeboat::registry::{Error, IncidentScope};

    let everyone: Vec<ListedUser> = (0..400).map(|n| user(&format!("@p{n:03}:x"), 1)).collect();
    sync_listing(&registry, &everyone).await;
    sync_listing(&registry, &everyone[..1]).await;
    let opens = (0..4).map(|n| {
        let registry = registry.clone();
        async move {
            registry.open_incident(&format!("Lost {n}"), "it went", IncidentScope::Missing, false, &Actor::cli()).await
        }
    });
    let outcomes = futures::future::join_all(opens).await;
    let opened = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(opened, 1, "{outcomes:?}");
    for outcome in &outcomes {
        match outcome {
            Ok((_, affected)) => assert_eq!(*affected, 399),
            Err(Error::AlreadyCovered(covering)) => assert_eq!(covering.len(), 1, "{covering:?}"),
            Err(other) => panic!("refused for another reason: {other}"),
        }
    }
}
on_both_backends!(of_incidents_opened_at_the_same_moment_for_the_same_people_only_one_opens);

/// The outcome of a send already made is written once the registry is free
/// again (another writer held SQLite's lock past its busy timeout), not
/// given up for a later run to send the message a second time.
#[tokio::test]
async fn a_sends_outcome_waits_out_a_registry_locked_past_its_busy_timeout() {
    use lifeboat::outbox::{Channel, Outcome, Progress, send_until_done};
    use lifeboat::registry::DeliveryChannel;
    struct LocksTheRegistryAsItSends {
        locker: Registry,
        due: std::sync::Mutex<Vec<i64>>,
    }
    impl Channel for LocksTheRegistryAsItSends {
        type Row = i64;
        fn claim(&self, _limit: usize) -> impl Future<Output = Result<Vec<i64>, lifeboat::registry::Error>> + Send {
            let due = std::mem::take(&mut *self.due.lock().unwrap());
            async move { Ok(due) }
        }
        fn key(row: &i64) -> (i64, i64) {
            (*row, 0)
        }
        fn deliver(&self, _row: &i64) -> impl Future<Output = Outcome> + Send {
            let locker = self.locker.clone();
            async move {
                let (locked, is_locked) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let mut conn = locker.pool().acquire().await.unwrap();
                    sqlx::query("BEGIN EXCLUSIVE").execute(&mut *conn).await.unwrap();
                    locked.send(()).unwrap();
                    // Past the 10 s busy timeout of the run's own writes.
                    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
                    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
                });
                is_locked.await.unwrap();
                Outcome::Sent
            }
        }
        fn scope(&self) -> (Option<i64>, DeliveryChannel) {
            (None, DeliveryChannel::Email)
        }
    }
    struct Unwatched;
    impl Progress for Unwatched {}

    let database = TestDatabase::sqlite();
    let registry = Registry::connect(&database.url()).await.unwrap();
    let alert = queue_an_alert(&registry, lifeboat::registry::now_ms()).await;
    let locker = Registry::connect(&database.url()).await.unwrap();
    let channel = LocksTheRegistryAsItSends { locker, due: std::sync::Mutex::new(vec![alert]) };
    send_until_done(&registry, &channel, 1, &Unwatched).await.expect("the outcome is written once the lock is gone");
    let (state,): (String,) = sqlx::query_as("SELECT state FROM deliveries WHERE id = $1")
        .bind(alert)
        .fetch_one(registry.pool())
        .await
        .unwrap();
    assert_eq!(state, "sent", "a later run would send it again");
}

/// Processes started at once after an upgrade (serve and a CLI command, say)
/// each migrate a new SQLite registry: none fails for the others' work.
#[tokio::test(flavor = "multi_thread")]
async fn processes_opening_a_new_sqlite_registry_at_once_all_open_it() {
    // Several new registries, for a race that a single one may miss.
    for _ in 0..5 {
        let database = TestDatabase::sqlite();
        let url = database.url();
        let opened = futures::future::join_all((0..8).map(|_| Registry::connect(&url))).await;
        for registry in opened {
            registry.expect("the registry opens, migrated by whichever came first");
        }
    }
}
