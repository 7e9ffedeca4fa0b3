//! Rooms come back: on two federating Synapses, a wipe of ours loses the
//! rooms that lived only here, while rooms with members on the other server
//! live on there. lifeboat keeps the list, brings each person back into
//! theirs once their ID is theirs again, re-points local aliases, and
//! re-creates the lost rooms with their former members invited.

use std::time::Duration;

use serde_json::Value;

use crate::harness::faulty_front::FaultyFront;
use crate::harness::matrix::encode;
use crate::harness::{
    Lifeboat, MatrixUser, RoomSpec, TestDatabase, TestSmtp, TestSynapse, eventually, federation_pair, lease_held,
    unique,
};

const NEW_PASSWORD: &str = "a boat came back for me";

/// Waits until `synapse`'s room listing counts `joined` members in `room_id`
/// (a join over federation settles a moment after it returns).
async fn joined_members_settle(synapse: &TestSynapse, room_id: &str, joined: i64) {
    eventually(&format!("{room_id} counting {joined} joined members"), Duration::from_secs(30), || async {
        synapse.room(room_id).await.is_some_and(|room| room["joined_members"] == joined)
    })
    .await;
}

/// `rooms list --json`, as (room ID → room).
async fn rooms_by_id(lifeboat: &Lifeboat) -> std::collections::HashMap<String, Value> {
    let listed = lifeboat.run(&["rooms", "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    let rooms = listed.json().as_array().unwrap().clone();
    rooms.into_iter().map(|room| (room["room_id"].as_str().unwrap().to_owned(), room)).collect()
}

async fn state_of(lifeboat: &Lifeboat, room_id: &str) -> String {
    rooms_by_id(lifeboat).await[room_id]["state"].as_str().unwrap().to_owned()
}

/// Hands a held ID back with a new password (`holds claim`, the CLI claim).
async fn claim(lifeboat: &Lifeboat, user_id: &str) {
    let claimed = lifeboat.run_with_input(&["holds", "claim", user_id], &format!("{NEW_PASSWORD}\n")).await;
    assert_eq!(claimed.code, 0, "{claimed:?}");
}

/// Loses the record of the room made in place of `room_id`, as a run that
/// stopped between making it and recording it would.
async fn forget_recreation(registry: &TestDatabase, room_id: &str) {
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    sqlx::query("UPDATE rooms SET recreated_as = NULL WHERE room_id = $1")
        .bind(room_id)
        .execute(direct.pool())
        .await
        .unwrap();
    direct.close().await;
}

/// Signs in as a person who has their ID back.
async fn sign_in(synapse: &TestSynapse, localpart: &str, password: &str) -> MatrixUser {
    let (status, body) = synapse.login(localpart, password).await;
    assert_eq!(status, 200, "{body}");
    MatrixUser::new(&synapse.url, body["user_id"].as_str().unwrap(), body["access_token"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_wipe_people_come_back_into_surviving_rooms_aliases_work_and_lost_rooms_are_recreated() {
    let (ours, theirs) = federation_pair();
    let smtp = TestSmtp::start(None);
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &["alice@example.org"]).await;
    ours.create_user("carol", &["carol@example.org"]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let carol = sign_in(&ours, "carol", "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));

    // A private, encrypted room on their server, with alice in it.
    let across =
        bob.create_room_full(RoomSpec::private().name("Across the water").encrypted().invite(&[&alice.user_id])).await;
    alice.join(&across).await;
    // A public room of ours with a local alias, joined from their server.
    let harbour = alice.create_room_full(RoomSpec::public("harbour").name("Harbour").topic("boats")).await;
    let alias = format!("#harbour:{}", ours.server_name);
    bob.join_via(&alias, &[]).await;
    // A room and a space only on ours, the space in a bigger one (listed
    // first) that holds the room across the water too.
    let kitchen =
        alice.create_room_full(RoomSpec::private().name("Kitchen").topic("tea").invite(&[&carol.user_id])).await;
    carol.join(&kitchen).await;
    let mut levels = alice.state(&kitchen, "m.room.power_levels", "").await.unwrap();
    levels["users"][&carol.user_id] = serde_json::json!(50);
    alice.set_state(&kitchen, "m.room.power_levels", "", levels).await;
    let fleet =
        alice.create_room_full(RoomSpec::private().name("Fleet").space().child(&kitchen, &[&ours.server_name])).await;
    let armada = RoomSpec::private().name("Armada").space().invite(&[&carol.user_id]);
    let armada =
        alice.create_room_full(armada.child(&fleet, &[&ours.server_name]).child(&across, &[&theirs.server_name])).await;
    carol.join(&armada).await;
    joined_members_settle(&ours, &across, 2).await;
    joined_members_settle(&ours, &harbour, 2).await;

    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{url}\"\nserver_name = \"{server}\"\nadmin_token = \"{admin}\"\n\
         registration_shared_secret = \"{secret}\"\nretries = 1\ntimeout = \"60s\"\n\n\
         [registry]\nurl = \"{registry}\"\n\n\
         [email]\nsmtp_url = \"{smtp}\"\nfrom = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n\
         [watch]\ninterval = \"2s\"\n",
        url = ours.url,
        server = ours.server_name,
        admin = ours.admin_token(),
        secret = ours.shared_secret,
        registry = registry.url(),
        smtp = smtp.smtp_url(),
    ));
    let synced = lifeboat.run(&["sync"]).await;
    assert_eq!(synced.code, 0, "{synced:?}");
    assert!(synced.stdout.contains("rooms: 5 on the homeserver"), "{synced:?}");
    let known = rooms_by_id(&lifeboat).await;
    let all = [&across, &harbour, &kitchen, &fleet, &armada];
    assert!(all.iter().all(|room| known[*room]["state"] == "here"), "{known:?}");
    assert_eq!(known[&across]["via_servers"][0], theirs.server_name.as_str(), "rejoins go through their server");
    assert_eq!(known[&harbour]["aliases"][0], alias.as_str());
    assert_eq!(known[&fleet]["children"][0], kitchen.as_str());

    ours.wipe();
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Our database was lost.").unwrap();
    let opened = lifeboat
        .run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md", "--json"])
        .await;
    assert_eq!(opened.code, 0, "{opened:?}");
    let after = rooms_by_id(&lifeboat).await;
    assert_eq!(after[&across]["state"], "elsewhere", "{after:?}");
    assert_eq!(after[&harbour]["state"], "elsewhere");
    assert_eq!(after[&kitchen]["state"], "lost", "it lived only on the wiped server");
    assert_eq!(after[&fleet]["state"], "lost");

    // The notice names each room's fate.
    let id = opened.json()["id"].to_string();
    let notified = lifeboat.run(&["notify", &id, "--yes"]).await;
    assert_eq!(notified.code, 0, "{notified:?}");
    let notice = smtp.messages_to("alice@example.org")[0].text.clone().unwrap();
    let rooms_part = &notice[notice.find("Your rooms").expect("the notice has a rooms part")..];
    let (back, gone) = rooms_part.split_at(rooms_part.find("lived only on").unwrap());
    assert!(back.contains("- Across the water") && back.contains("- Harbour"), "{notice}");
    assert!(back.contains("encrypted rooms from before the loss do not come back"), "{notice}");
    assert!(gone.contains("- Kitchen") && gone.contains("- Fleet"), "{notice}");

    // Alice takes her ID back; one rejoin run brings her and the alias back.
    claim(&lifeboat, &alice.user_id).await;
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "{rejoined:?}");
    assert_eq!(
        ours.resolve_alias(&alias).await.as_deref(),
        Some(harbour.as_str()),
        "the alias points at the room again"
    );
    let alice = sign_in(&ours, "alice", NEW_PASSWORD).await;
    let joined = alice.joined_rooms().await;
    assert!(joined.contains(&across) && joined.contains(&harbour), "{joined:?}");
    assert_eq!(alice.room_name(&across).await.as_deref(), Some("Across the water"));
    alice.send(&across, "back again").await;
    let again = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(again.stdout.contains("Nobody is waiting"), "a second run repeats nothing: {again:?}");

    // The lost rooms are made again; alice is invited now, carol once back.
    let recreated = lifeboat.run(&["rooms", "recreate", "--all", "--yes"]).await;
    assert_eq!(recreated.code, 0, "{recreated:?}");
    let now = rooms_by_id(&lifeboat).await;
    let new_kitchen = now[&kitchen]["recreated_as"].as_str().expect("kitchen was re-created").to_owned();
    let new_fleet = now[&fleet]["recreated_as"].as_str().expect("the space was re-created").to_owned();
    assert!(alice.invites().await.contains(&new_kitchen), "a former member who is back is invited");
    alice.join(&new_kitchen).await;
    let powers = alice.state(&new_kitchen, "m.room.power_levels", "").await.unwrap()["users"].clone();
    assert_eq!(powers[&alice.user_id], 100, "the lost room's maker (above every level in v12) is an admin: {powers}");
    assert_eq!(powers[&carol.user_id], 50, "a moderator whose ID is held is one again: {powers}");
    assert_eq!(alice.room_name(&new_kitchen).await.as_deref(), Some("Kitchen"));
    assert_eq!(alice.room_topic(&new_kitchen).await.as_deref(), Some("tea"));
    alice.join(&new_fleet).await;
    assert!(alice.state(&new_fleet, "m.space.child", &new_kitchen).await.is_some(), "the space has its child back");
    let new_armada = now[&armada]["recreated_as"].as_str().expect("the outer space was re-created").to_owned();
    alice.join(&new_armada).await;
    assert!(alice.state(&new_armada, "m.space.child", &new_fleet).await.is_some(), "made after the space in it");
    let across_child = alice.state(&new_armada, "m.space.child", &across).await.expect("the surviving child");
    assert_eq!(across_child["via"], serde_json::json!([theirs.server_name]), "through the server it lives on");
    let twice = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(twice.code, 1, "{twice:?}");
    assert!(twice.stderr.contains("re-created already"), "{twice:?}");

    // A run that stopped after making the room but before recording it
    // finds the room it made, and makes no second one.
    forget_recreation(&registry, &kitchen).await;
    let resumed = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(rooms_by_id(&lifeboat).await[&kitchen]["recreated_as"], new_kitchen.as_str(), "{resumed:?}");

    // carol's ID is still held: lifeboat stays in Kitchen to invite her.
    let round = lifeboat.run(&["rooms", "rejoin"]).await;
    let lifeboat_in_kitchen = alice.membership_of(&new_kitchen, &ours.user_id("lifeboat")).await;
    assert_eq!(lifeboat_in_kitchen.as_deref(), Some("join"), "{round:?}");

    // serve's watcher brings carol back within a round of her claim.
    let mut serve = lifeboat.spawn_serve();
    claim(&lifeboat, &carol.user_id).await;
    let carol = sign_in(&ours, "carol", NEW_PASSWORD).await;
    eventually("carol is invited to the re-created kitchen", Duration::from_secs(60), || async {
        carol.invites().await.contains(&new_kitchen)
    })
    .await;
    // Nobody waits for Kitchen now, and alice, its admin, is back in it:
    // lifeboat's account leaves the room to its people.
    eventually("lifeboat leaves the kitchen it made", Duration::from_secs(60), || async {
        alice.membership_of(&new_kitchen, &ours.user_id("lifeboat")).await.as_deref() == Some("leave")
    })
    .await;
    serve.kill().await.unwrap();
    assert_eq!(state_of(&lifeboat, &kitchen).await, "recreated");
    // One who needs an invite after that (her ID lost again, say) is named
    // for Kitchen's admins to invite: lifeboat can invite nobody there now.
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    sqlx::query("UPDATE room_members SET rejoin = NULL WHERE room_id = $1 AND user_id = $2")
        .bind(&kitchen)
        .bind(&carol.user_id)
        .execute(store.pool())
        .await
        .unwrap();
    let named = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(named.stderr.contains("an admin of the room invites them"), "{named:?}");

    // The server admin's ID, held through the watcher's syncs, is an admin
    // again once claimed.
    claim(&lifeboat, &ours.user_id("admin")).await;
    ours.register_admin("root");
    assert_eq!(ours.user("admin").await["admin"], true, "the server-admin flag comes back with the ID");

    // A room on their server bearing kitchen's mark, with lifeboat's account
    // in it (as when it rejoins a surviving room), is not taken for the one
    // lifeboat made: once that one is gone, a rerun makes a new room.
    let marked = serde_json::json!({"preset": "public_chat", "creation_content": {"org.lifeboat.recreates": kitchen}});
    let (status, made) = bob.try_call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(marked)).await;
    assert_eq!(status, 200, "{made}");
    let bait = made["room_id"].as_str().unwrap().to_owned();
    let service = ours.user_id("lifeboat");
    let join = format!("/_synapse/admin/v1/join/{}?server_name={}", encode(&bait), encode(&theirs.server_name));
    let (status, joined) =
        ours.admin_request(reqwest::Method::POST, &join, Some(serde_json::json!({"user_id": service}))).await;
    assert_eq!(status, 200, "{joined}");
    let purge = format!("/_synapse/admin/v1/rooms/{}", encode(&new_kitchen));
    let (status, purged) = ours.admin_request(reqwest::Method::DELETE, &purge, Some(serde_json::json!({}))).await;
    assert_eq!(status, 200, "{purged}");
    forget_recreation(&registry, &kitchen).await;
    let remade = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(remade.code, 0, "{remade:?}");
    let now = rooms_by_id(&lifeboat).await[&kitchen]["recreated_as"].as_str().unwrap_or_default().to_owned();
    assert!(now != bait && now != new_kitchen, "a new room, not someone else's: {now}");

    // Lost again in another wipe, the room lifeboat made is one of every
    // lost room to make again, though lifeboat's own account made it.
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    ours.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let again = lifeboat.run(&["rooms", "recreate", "--all", "--yes"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(state_of(&lifeboat, &now).await, "recreated", "{again:?}");
    // Kitchen's people now go to the room made last, not to the one lost.
    let rooms = rooms_by_id(&lifeboat).await;
    assert_eq!(rooms[&kitchen]["recreated_as"], rooms[&now]["recreated_as"], "{again:?}");
}

/// lifeboat with only our Synapse (admin token and shared secret), a
/// registry, and `extra` config.
fn lifeboat_on(ours: &TestSynapse, registry: &TestDatabase, extra: &str) -> Lifeboat {
    Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\nregistration_shared_secret = \"{}\"\n\
         retries = 1\ntimeout = \"60s\"\n\n[registry]\nurl = \"{}\"\n\n{extra}",
        ours.url,
        ours.server_name,
        ours.admin_token(),
        ours.shared_secret,
        registry.url(),
    ))
}

/// `rooms recreate --all` leaves out a lost room another server's account
/// made (its name and topic would come back as lifeboat's words, and
/// lifeboat would invite people into it); its ID re-creates it on purpose.
/// Nor does it make again a person's DM with lifeboat's bot (an empty room
/// with lifeboat in it), though the person opened it.
#[tokio::test(flavor = "multi_thread")]
async fn recreating_all_lost_rooms_leaves_out_those_another_servers_account_made_and_dms_with_the_bot() {
    let (ours, theirs) = federation_pair();
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &[]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));
    let theirs_made = bob.create_room_full(RoomSpec::public("verify-here").name("lifeboat: verify your account")).await;
    alice.join_via(&theirs_made, &[&theirs.server_name]).await;
    joined_members_settle(&ours, &theirs_made, 2).await;
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", encode(&theirs_made));
    assert_eq!(bob.try_call(reqwest::Method::POST, &leave, Some(serde_json::json!({}))).await.0, 200);
    joined_members_settle(&ours, &theirs_made, 1).await;
    let ours_made = alice.create_room_full(RoomSpec::private().name("Kitchen")).await;
    let bot = ours.client(&ours.register("lifeboat"));
    let dm = alice.create_room(&[&bot.user_id], true).await;
    bot.join(&dm).await;
    let lifeboat = lifeboat_on(&ours, &registry, "");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    ours.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(state_of(&lifeboat, &theirs_made).await, "lost");
    let recreated = lifeboat.run(&["rooms", "recreate", "--all", "--yes"]).await;
    assert_eq!(recreated.code, 0, "{recreated:?}");
    assert_eq!(state_of(&lifeboat, &ours_made).await, "recreated", "{recreated:?}");
    assert_eq!(state_of(&lifeboat, &theirs_made).await, "lost", "{recreated:?}");
    assert_eq!(state_of(&lifeboat, &dm).await, "lost", "{recreated:?}");
}

/// A local alias someone pointed at a room of theirs after the wipe is
/// taken back once lifeboat is in the alias's room again: whoever follows
/// it lands in the community's room, not in a look-alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_alias_a_stranger_took_after_the_wipe_is_taken_back() {
    let (ours, theirs) = federation_pair();
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &[]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));
    let harbour = alice.create_room_full(RoomSpec::public("harbour").name("Harbour")).await;
    let alias = format!("#harbour:{}", ours.server_name);
    let (quay, pier) = (format!("#quay:{}", ours.server_name), format!("#pier:{}", ours.server_name));
    let path = |alias: &str| format!("/_matrix/client/v3/directory/room/{}", encode(alias));
    let point = |room: &str| Some(serde_json::json!({ "room_id": room }));
    for other in [&quay, &pier] {
        assert_eq!(alice.try_call(reqwest::Method::PUT, &path(other), point(&harbour)).await.0, 200);
    }
    bob.join_via(&alias, &[]).await;
    joined_members_settle(&ours, &harbour, 2).await;
    let lifeboat = lifeboat_on(&ours, &registry, "");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let known = rooms_by_id(&lifeboat).await;
    let mut aliases: Vec<String> =
        known[&harbour]["aliases"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    aliases.sort();
    assert_eq!(aliases, [alias.clone(), pier.clone(), quay.clone()], "{known:?}");

    ours.wipe();
    // One stranger's room here, and one of theirs joined by an invite.
    let mallory = ours.client(&ours.register("mallory"));
    let local_lure = mallory.create_room_full(RoomSpec::public("pier").name("Pier")).await;
    let eve = theirs.client(&theirs.register("eve"));
    let lure = eve.create_room_full(RoomSpec::private().name("Harbour").invite(&[&mallory.user_id])).await;
    mallory.join_via(&lure, &[&theirs.server_name]).await;
    assert_eq!(mallory.try_call(reqwest::Method::PUT, &path(&alias), point(&lure)).await.0, 200);
    assert_eq!(ours.resolve_alias(&pier).await.as_deref(), Some(local_lure.as_str()));
    // A server admin gives the other alias to a room of theirs: their choice.
    let root = unique("root");
    let admin = MatrixUser::new(&ours.url, &ours.user_id(&root), &ours.register_admin(&root));
    let admins_room = admin.create_room_full(RoomSpec::private().name("Quay")).await;
    assert_eq!(admin.try_call(reqwest::Method::PUT, &path(&quay), point(&admins_room)).await.0, 200);
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Our database was lost.").unwrap();
    let opened = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(opened.code, 0, "{opened:?}");
    claim(&lifeboat, &alice.user_id).await;
    // A room's own server writes its creation event's `creator` (room
    // versions up to 10), and Synapse's room details repeat it: eve's
    // server could name lifeboat. Only the event's sender counts.
    let opaque = lure.trim_start_matches('!').split(':').next().unwrap().to_owned();
    let forged = format!("{{\"room_id\":\"{lure}\",\"creator\":\"{}\"}}", lifeboat_id(&ours));
    let forged: &'static str = Box::leak(forged.into_boxed_str());
    let front =
        FaultyFront::answering(&ours.url, reqwest::Method::GET, &format!("{opaque}$"), usize::MAX, (200, forged)).await;
    through_front(&lifeboat, &ours, &front);

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "{rejoined:?}");
    assert_eq!(ours.resolve_alias(&alias).await.as_deref(), Some(harbour.as_str()), "{rejoined:?}");
    assert_eq!(ours.resolve_alias(&pier).await.as_deref(), Some(harbour.as_str()), "{rejoined:?}");
    assert_eq!(ours.resolve_alias(&quay).await.as_deref(), Some(admins_room.as_str()), "{rejoined:?}");
}

/// A surviving room's local alias that could not be put back when lifeboat
/// got back into the room (Synapse busy just then) is put back by a later
/// round, though the room reads as here again by then.
#[tokio::test(flavor = "multi_thread")]
async fn an_alias_that_could_not_be_put_back_at_once_is_put_back_by_a_later_round() {
    let in_square = one_person_in_a_square_of_theirs("alice", "").await;
    let alias = a_local_alias_the_registry_knows(&in_square).await;
    let InSquare { ours, theirs: _theirs, _registry, person: _alice, bob: _bob, square, lifeboat } = in_square;

    wiped_and_held(&ours, &lifeboat).await;
    // Synapse busy for the alias: both of lifeboat's tries (retries = 1) get a 503.
    let front = FaultyFront::start(&ours.url, reqwest::Method::PUT, "/directory/room/", 2).await;
    through_front(&lifeboat, &ours, &front);
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(front.failures_left(), 0, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("not yet: {alias}")), "{rejoined:?}");
    assert_eq!(ours.resolve_alias(&alias).await, None);

    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(state_of(&lifeboat, &square).await, "here");
    let again = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(ours.resolve_alias(&alias).await.as_deref(), Some(square.as_str()), "{again:?}");
    let done = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(done.stdout.contains("Nobody is waiting"), "put back once: {done:?}");
}

/// lifeboat's token dies while it puts a room's alias back (Synapse
/// answers 401): no run counts that as the room refusing, so five such runs
/// give nothing up, and once the token works the alias comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_dead_while_aliases_go_back_gives_no_room_up() {
    let in_square = one_person_in_a_square_of_theirs("alice", "").await;
    let alias = a_local_alias_the_registry_knows(&in_square).await;
    let InSquare { ours, theirs: _theirs, _registry, person: _alice, bob: _bob, square, lifeboat } = in_square;
    wiped_and_held(&ours, &lifeboat).await;

    let front =
        FaultyFront::forgetting_the_token(&ours.url, reqwest::Method::PUT, "/directory/room/", usize::MAX).await;
    let config = through_front(&lifeboat, &ours, &front);
    for round in 1..=5 {
        let refused = lifeboat.run(&["rooms", "rejoin"]).await;
        assert_eq!(refused.code, 1, "round {round}: {refused:?}");
    }
    lifeboat.write_config(&config);
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(ours.resolve_alias(&alias).await.as_deref(), Some(square.as_str()), "{rejoined:?}");
}

/// lifeboat's own join of a surviving room fails (Synapse busy just then)
/// while a person's join brings this server back in: the room's local
/// alias is put back all the same (a server admin may set it from outside
/// the room), and its directory entry too, though that failed at first and
/// the next listing read the room as here, and unlisted.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_people_came_back_into_before_lifeboat_gets_its_alias_and_listing_back() {
    let in_square = one_person_in_a_square_of_theirs("alice", "").await;
    let listing = format!("/_matrix/client/v3/directory/list/room/{}", encode(&in_square.square));
    let public = Some(serde_json::json!({"visibility": "public"}));
    assert_eq!(in_square.ours.admin_request(reqwest::Method::PUT, &listing, public).await.0, 200);
    let alias = a_local_alias_the_registry_knows(&in_square).await;
    let InSquare { ours, theirs: _theirs, _registry, person: alice, bob: _bob, square, lifeboat } = in_square;
    assert_eq!(rooms_by_id(&lifeboat).await[&square]["public"], true);
    wiped_and_held(&ours, &lifeboat).await;
    claim(&lifeboat, &alice.user_id).await;

    // lifeboat's join fails once, the directory entry twice (both tries).
    let joins = FaultyFront::start(&ours.url, reqwest::Method::POST, "/client/v3/join/", 1).await;
    let front = FaultyFront::start(&joins.url, reqwest::Method::PUT, "/directory/list/room/", 2).await;
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&config.replace(&format!("url = \"{}\"", ours.url), &format!("url = \"{}\"", front.url)));
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!((joins.failures_left(), front.failures_left()), (0, 0), "{rejoined:?}");
    assert!(rejoined.stdout.contains("(1 aliases re-pointed); 1 memberships restored"), "{rejoined:?}");
    assert!(rejoined.stderr.contains("not yet: directory"), "{rejoined:?}");
    assert_eq!(ours.resolve_alias(&alias).await.as_deref(), Some(square.as_str()), "{rejoined:?}");
    let listed = lifeboat.run(&["rooms", "list"]).await;
    let line = listed.stdout.lines().find(|line| line.contains(&square)).unwrap_or_default().to_owned();
    assert!(line.contains("aliases and directory entry not back yet"), "{listed:?}");

    lifeboat.write_config(&config);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(state_of(&lifeboat, &square).await, "here");
    let again = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let (_, entry) = ours.admin_request(reqwest::Method::GET, &listing, None).await;
    assert_eq!(entry["visibility"], "public", "listed again: {again:?}");
    let done = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(done.stdout.contains("Nobody is waiting"), "{done:?}");
}

/// A person who rejoins a surviving room by themselves (their client, once
/// their ID is theirs again) brings this server back in before lifeboat:
/// the listing that finds it back keeps its alias as known, and the next
/// run puts the alias back.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_a_person_rejoined_by_themselves_gets_its_alias_back() {
    // Every part bound: one dropped here would stop its server.
    let (InSquare { ours, theirs: _theirs, _registry, person: _alice, bob: _bob, square, lifeboat }, alias) =
        a_square_its_person_rejoined_by_themselves().await;
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(ours.resolve_alias(&alias).await.as_deref(), Some(square.as_str()), "{rejoined:?}");
}

/// Aliases due for over a week (lifeboat did not run meanwhile) are left as
/// they are: an admin may have pointed them elsewhere or unlisted the room
/// since, and the old ones would undo that.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_due_for_over_a_week_are_left_as_they_are() {
    let (InSquare { ours, theirs: _theirs, _registry, person: _alice, bob: _bob, square, lifeboat }, alias) =
        a_square_its_person_rejoined_by_themselves().await;
    let store = lifeboat::registry::Registry::connect(&_registry.url()).await.unwrap();
    let eight_days_ago = lifeboat::registry::now_ms() - 8 * 24 * 3600 * 1000;
    sqlx::query("UPDATE rooms SET aliases_due_at = $1 WHERE room_id = $2")
        .bind(eight_days_ago)
        .bind(&square)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(
        rejoined.stdout.contains("the aliases and directory entries of 1 rooms were due for over a week"),
        "{rejoined:?}"
    );
    assert_eq!(ours.resolve_alias(&alias).await, None, "left as it is");
    let listed = lifeboat.run(&["rooms", "list"]).await;
    assert!(!listed.stdout.contains("not back yet"), "{listed:?}");
}

/// After a wipe, the square's person (claimed) rejoins it by themselves,
/// and a sync finds this server back in it with its alias due. Returns
/// the alias.
async fn a_square_its_person_rejoined_by_themselves() -> (InSquare, String) {
    let in_square = one_person_in_a_square_of_theirs("alice", "").await;
    let alias = a_local_alias_the_registry_knows(&in_square).await;
    let InSquare { ours, theirs, person: alice, square, lifeboat, .. } = &in_square;
    wiped_and_held(ours, lifeboat).await;
    claim(lifeboat, &alice.user_id).await;
    let alice = sign_in(ours, "alice", NEW_PASSWORD).await;
    alice.join_via(square, &[&theirs.server_name]).await;
    joined_members_settle(ours, square, 2).await;

    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(state_of(lifeboat, square).await, "here");
    assert_eq!(rooms_by_id(lifeboat).await[square]["aliases"][0], alias.as_str(), "kept as known");
    (in_square, alias)
}

/// Gives the square a local alias (made by its person, who is of ours) and
/// waits until a sync has read it.
async fn a_local_alias_the_registry_knows(InSquare { ours, person, bob, square, lifeboat, .. }: &InSquare) -> String {
    let alias = format!("#{}:{}", unique("square"), ours.server_name);
    let directory = format!("/_matrix/client/v3/directory/room/{}", encode(&alias));
    let point = Some(serde_json::json!({"room_id": square}));
    assert_eq!(person.try_call(reqwest::Method::PUT, &directory, point).await.0, 200);
    // A room's aliases are read with its state, again once that changes
    // (an alias made by a directory call changes none).
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", encode(square));
    let (status, _) = bob.try_call(reqwest::Method::PUT, &topic, Some(serde_json::json!({"topic": "boats"}))).await;
    assert_eq!(status, 200);
    eventually("the registry knows the alias", Duration::from_secs(30), || async {
        assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
        rooms_by_id(lifeboat).await[square]["aliases"][0] == alias.as_str()
    })
    .await;
    alias
}

/// A person's rejoin trusts no standing older than Synapse's word: after
/// another wipe, a stranger who registered the claimed person's ID before
/// any listing saw it is not joined into the person's surviving room.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_on_a_claimed_id_before_any_listing_is_joined_into_none_of_its_rooms() {
    let InSquare { ours, theirs: _theirs, _registry, person: alice, bob: _bob, square, lifeboat } =
        one_person_in_a_square_of_theirs("alice", "").await;
    wiped_and_held(&ours, &lifeboat).await;
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "lifeboat is back in Square: {rejoined:?}");
    claim(&lifeboat, &alice.user_id).await;

    ours.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let stranger = ours.client(&ours.register("alice"));
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(!stranger.joined_rooms().await.contains(&square), "{rejoined:?}");
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("held back: {square}")), "said, not left out: {rejoined:?}");
}

/// Another wipe before any listing saw a surviving room back: lifeboat's
/// account rejoins it again, as after the first.
#[tokio::test(flavor = "multi_thread")]
async fn lifeboat_rejoins_a_surviving_room_again_after_a_second_wipe_no_listing_saw_between() {
    let InSquare { ours, theirs: _theirs, _registry, person: _alice, bob: _bob, square, lifeboat } =
        one_person_in_a_square_of_theirs("alice", "").await;
    wiped_and_held(&ours, &lifeboat).await;
    assert_eq!(lifeboat.run(&["rooms", "rejoin"]).await.code, 0, "lifeboat is back in Square");
    assert!(ours.room(&square).await.is_some());

    ours.wipe();
    ours.register_admin(&unique("root"));
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    assert_eq!(lifeboat.run(&["holds", "make"]).await.code, 0);
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "{rejoined:?}");
    assert!(ours.room(&square).await.is_some(), "this server is back in Square: {rejoined:?}");
}

/// The same for a room lifeboat makes again: its former member's ID in a
/// stranger's hands is not invited, whatever the registry last heard.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_on_a_claimed_id_before_any_listing_is_not_invited_into_a_recreated_room() {
    let ours = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &[]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let kitchen = alice.create_room_full(RoomSpec::private().name("Kitchen")).await;
    let lifeboat = lifeboat_on(&ours, &registry, "");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    wiped_and_held(&ours, &lifeboat).await;
    claim(&lifeboat, &alice.user_id).await;

    ours.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let stranger = ours.client(&ours.register("alice"));
    let made = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    assert!(stranger.invites().await.is_empty(), "{made:?}");
    let new_kitchen = rooms_by_id(&lifeboat).await[&kitchen]["recreated_as"].as_str().unwrap().to_owned();
    ours.register_admin(&unique("root"));
    let state = format!("/_synapse/admin/v1/rooms/{}/state", encode(&new_kitchen));
    let state = ours.admin_get(&state).await;
    let levels = state["state"].as_array().unwrap().iter().find(|event| event["type"] == "m.room.power_levels");
    let powers = &levels.expect("the room has power levels")["content"]["users"];
    assert!(powers.get(&alice.user_id).is_none(), "the stranger would rule the room on joining it: {powers}");
}

/// A person removed from a surviving room while their ID was held (kicked
/// by its moderators) is not brought back into it on claim, by the room's
/// state now: no listing read the room since the kick.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_kicked_while_their_id_was_held_is_not_brought_back() {
    let InSquare { ours, theirs: _theirs, _registry, person: alice, bob, square, lifeboat } =
        one_person_in_a_square_of_theirs("alice", "").await;

    wiped_and_held(&ours, &lifeboat).await;
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "lifeboat is back in Square: {rejoined:?}");
    let kick = format!("/_matrix/client/v3/rooms/{}/kick", encode(&square));
    let kicked = bob.try_call(reqwest::Method::POST, &kick, Some(serde_json::json!({"user_id": alice.user_id}))).await;
    assert_eq!(kicked.0, 200, "{kicked:?}");
    // Her membership in this server's copy of the room's state: the member
    // counts Synapse lists may not have counted her join in the first place.
    let state = format!("/_synapse/admin/v1/rooms/{}/state", encode(&square));
    eventually("the kick reaches this server", Duration::from_secs(30), || async {
        let (_, body) = ours.admin_request(reqwest::Method::GET, &state, None).await;
        body["state"].as_array().into_iter().flatten().any(|event| {
            event["type"] == "m.room.member"
                && event["state_key"] == alice.user_id.as_str()
                && event["content"]["membership"] == "leave"
        })
    })
    .await;

    claim(&lifeboat, &alice.user_id).await;
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 0, "{rejoined:?}");
    assert!(rejoined.stderr.contains("they left it or were removed"), "{rejoined:?}");
    let alice = sign_in(&ours, "alice", NEW_PASSWORD).await;
    assert!(!alice.joined_rooms().await.contains(&square), "the room's moderators removed her: {rejoined:?}");
}

/// Our `person` in bob's public Square on the other server, synced by
/// `lifeboat` (with `config_extra`). Bound by name, every one: the servers
/// and the registry must live to the end of the test.
struct InSquare {
    ours: TestSynapse,
    theirs: TestSynapse,
    _registry: TestDatabase,
    person: MatrixUser,
    bob: MatrixUser,
    square: String,
    lifeboat: Lifeboat,
}

/// Our Synapse wiped; lifeboat recovers and opens an incident, which holds
/// the lost IDs.
async fn wiped_and_held(ours: &TestSynapse, lifeboat: &Lifeboat) {
    ours.wipe();
    ours.register_admin(&unique("root"));
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Our database was lost.").unwrap();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let opened = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(opened.code, 0, "{opened:?}");
}

async fn one_person_in_a_square_of_theirs(localpart: &str, config_extra: &str) -> InSquare {
    let (ours, theirs) = federation_pair();
    let registry = TestDatabase::sqlite();
    ours.create_user(localpart, &[]).await;
    let person = sign_in(&ours, localpart, "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));
    let square = bob.create_room_full(RoomSpec::public("square").name("Square")).await;
    person.join_via(&square, &[&theirs.server_name]).await;
    joined_members_settle(&ours, &square, 2).await;
    let lifeboat = lifeboat_on(&ours, &registry, config_extra);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    InSquare { ours, theirs, _registry: registry, person, bob, square, lifeboat }
}

/// Without a shared secret lifeboat acts through the configured admin's
/// token: a re-created room a stopped run left unrecorded is found again as
/// that admin's, not made a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_room_recreated_through_an_admins_token_is_found_again_not_made_twice() {
    let ours = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &[]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let kitchen = alice.create_room_full(RoomSpec::private().name("Kitchen")).await;
    let mut lifeboat = Lifeboat::for_synapse(&ours.url, &ours.server_name, &ours.admin_token(), &registry.url());
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    ours.wipe();
    lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", &ours.register_admin(&unique("root")));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    // Not while another run re-creates it: each would make a room.
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let lease = lifeboat::rooms::recreation_lease(&kitchen);
    let other_run = lifeboat::lease::Lease::take(&store, &lease).await.unwrap().unwrap();
    let refused = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("is re-creating Kitchen now"), "{refused:?}");
    other_run.release().await;
    let made = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    let new_kitchen = rooms_by_id(&lifeboat).await[&kitchen]["recreated_as"].as_str().unwrap().to_owned();
    forget_recreation(&registry, &kitchen).await;
    let resumed = lifeboat.run(&["rooms", "recreate", &kitchen, "--yes"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(rooms_by_id(&lifeboat).await[&kitchen]["recreated_as"], new_kitchen.as_str(), "{resumed:?}");
}

/// Synapse lets an account, admins too, make only so many rooms in a row:
/// re-creating more lost rooms than that waits as Synapse asks, and says
/// so, instead of failing past the limit. (lifeboat's own account, once
/// recovered, is exempt; an admin's token is not.)
#[tokio::test(flavor = "multi_thread")]
async fn recreating_more_rooms_than_synapse_allows_in_a_row_waits_and_makes_them_all() {
    let ours = TestSynapse::start_with(&["--rate", "rc_room_creation=0.1:1"]);
    let registry = TestDatabase::sqlite();
    let mut lost = Vec::new();
    // One room each: an account may make one in a row.
    for (localpart, name) in [("alice", "Kitchen"), ("bob", "Pantry")] {
        ours.create_user(localpart, &[]).await;
        let maker = sign_in(&ours, localpart, "correct horse battery").await;
        lost.push(maker.create_room_full(RoomSpec::private().name(name)).await);
    }
    let mut lifeboat = Lifeboat::for_synapse(&ours.url, &ours.server_name, &ours.admin_token(), &registry.url());
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    ours.wipe();
    lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", &ours.register_admin(&unique("root")));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let made = lifeboat.run(&["rooms", "recreate", "--all", "--yes"]).await;
    assert_eq!(made.code, 0, "{made:?}");
    assert!(made.stderr.contains("rate limiting lifeboat; waiting"), "the pause is shown: {made:?}");
    for room_id in &lost {
        assert_eq!(state_of(&lifeboat, room_id).await, "recreated", "{made:?}");
    }
}

/// A surviving room whose servers cannot be reached holds back neither the
/// other rooms nor their people: it waits for the next round, and both
/// lifeboat's tries and its people's are counted, so it is given up in the
/// end rather than tried every round for good. `--retry` gives it a fresh
/// start: five more rounds, not one.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_nobody_can_reach_holds_back_no_other_room() {
    let TwoSquares { ours, _theirs, registry, carol, square, across, lifeboat, .. } = two_squares_after_a_wipe().await;
    // Square's servers, as far as this server can tell: one that is not there.
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    reachable_only_through(&direct, &square, "127.0.0.1:1").await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&square), "{rejoined:?}");
    let carol_again = sign_in(&ours, "carol", NEW_PASSWORD).await;
    let rooms = carol_again.joined_rooms().await;
    assert!(rooms.contains(&across) && !rooms.contains(&square), "{rooms:?} {rejoined:?}");
    assert_eq!(rejoin_attempts(&direct, &square, &carol.user_id).await, 1, "carol's try at Square counts");

    let lifeboat_in_square = format!("not yet: {} in {square}", lifeboat_id(&ours));
    assert!(rejoined.stderr.contains(&lifeboat_in_square), "{rejoined:?}");
    for round in 2..=4 {
        let again = lifeboat.run(&["rooms", "rejoin"]).await;
        assert!(again.stderr.contains(&lifeboat_in_square), "round {round}: {again:?}");
    }
    let fifth = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(
        fifth.stderr.contains(&format!("given up: {square}: the room's servers could not be reached")),
        "{fifth:?}"
    );
    let sixth = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(!sixth.stderr.contains(&square), "Square is no longer tried: {sixth:?}");
    let retried = lifeboat.run(&["rooms", "rejoin", "--retry"]).await;
    assert!(retried.stderr.contains(&lifeboat_in_square), "--retry tries it again: {retried:?}");
    assert!(!retried.stderr.contains("given up"), "and counts from one again: {retried:?}");
    assert!(retried.stderr.contains(&format!("not yet: {} in {square}", carol.user_id)), "carol's too: {retried:?}");
    assert!(retried.stdout.contains("2 given-up rooms and joins started over"), "Square and carol's: {retried:?}");
    let listed = lifeboat.run(&["rooms", "list"]).await;
    assert!(!listed.stdout.contains("given up by lifeboat"), "{listed:?}");
    let next = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(next.stderr.contains(&lifeboat_in_square), "the next round tries it too: {next:?}");
    direct.close().await;
}

/// A surviving room whose one known server takes the connection and never
/// answers: lifeboat's join outlasts homeserver.timeout while our Synapse
/// still answers, so that room waits, and the room after it comes back in
/// the same round (a round that gave up at the first would never reach it).
/// Such a wait is counted, lifeboat's and carol's: at the fifth round the
/// room is given up, rather than costing a timeout every round for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_whose_server_never_answers_holds_back_no_other_room() {
    let TwoSquares { ours, _theirs, registry, carol, square, across, mut lifeboat, .. } =
        two_squares_after_a_wipe().await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__TIMEOUT", "3s");
    let (_silent, silent_server) = a_server_that_never_answers();
    // Rooms are brought back in ID order (both have one local member): the
    // first is the one whose server never answers.
    let (first, second) = if square < across { (&square, &across) } else { (&across, &square) };
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    reachable_only_through(&direct, first, &silent_server).await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("not yet: {} in {first}", lifeboat_id(&ours))), "{rejoined:?}");
    let carol_again = sign_in(&ours, "carol", NEW_PASSWORD).await;
    let rooms = carol_again.joined_rooms().await;
    assert!(rooms.contains(second) && !rooms.contains(first), "{rooms:?} {rejoined:?}");
    assert_eq!(rejoin_attempts(&direct, first, &carol.user_id).await, 1, "carol's wait counts: {rejoined:?}");
    direct.close().await;
    for _ in 2..=4 {
        lifeboat.run(&["rooms", "rejoin"]).await;
    }
    let fifth = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(fifth.stderr.contains(&format!("given up: {first}: the room's servers could not be reached")), "{fifth:?}");
}

/// lifeboat's own joins that went unanswered before come after the others:
/// each costs homeserver.timeout, and everyone's rejoins wait behind them.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_that_went_unanswered_before_are_joined_last() {
    let TwoSquares { ours, _theirs, registry, square, across, mut lifeboat, .. } = two_squares_after_a_wipe().await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__TIMEOUT", "3s");
    let (_silent, silent_server) = a_server_that_never_answers();
    let (first, second) = if square < across { (&square, &across) } else { (&across, &square) };
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    for room in [first, second] {
        reachable_only_through(&direct, room, &silent_server).await;
    }
    let unanswered_twice = "UPDATE rooms SET restore_attempts = 2 WHERE room_id = $1";
    sqlx::query(unanswered_twice).bind(first).execute(direct.pool()).await.unwrap();
    direct.close().await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    let tried = |room: &str| rejoined.stderr.find(&format!("not yet: {} in {room}", lifeboat_id(&ours)));
    assert!(tried(second).unwrap() < tried(first).unwrap(), "{rejoined:?}");
}

/// serve's watcher brings people back beside its rounds: surviving rooms
/// whose server takes the connection and never answers (each join waits
/// for Synapse to give up on it, the run of them twenty seconds here) hold
/// up no round, nor the probes between them that would see a second wipe.
/// serve's stop ends such a run at once, and it gives its lease back.
#[tokio::test(flavor = "multi_thread")]
async fn joins_waiting_on_a_server_that_never_answers_hold_up_no_watcher_round() {
    let TwoSquares { ours: _ours, _theirs, registry, square, across, mut lifeboat, .. } =
        two_squares_after_a_wipe().await;
    let (silent, silent_server) = a_server_that_never_answers();
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    for room in [&square, &across] {
        reachable_only_through(&direct, room, &silent_server).await;
    }
    direct.close().await;
    lifeboat.set_env("LIFEBOAT__WATCH__INTERVAL", "1s");
    let mut serve = lifeboat.spawn_serve();
    eventually("the first run of joins ends", Duration::from_secs(120), || async {
        lifeboat.serve_log().contains("watcher: rooms")
    })
    .await;
    let log = lifeboat.serve_log();
    assert!(!log.contains("could not tell") && !log.contains("could not bring people back"), "{log}");
    let while_joins_waited = &log[..log.find("watcher: rooms").unwrap()];
    assert!(while_joins_waited.matches("watcher round").count() >= 2, "rounds went on meanwhile:\n{log}");
    silent.set_nonblocking(true).unwrap();
    assert!(silent.accept().is_ok(), "the joins waited on the server that never answers");

    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    eventually("the next run of joins", Duration::from_secs(30), || lease_held(&direct, "rooms-rejoin")).await;
    unsafe { libc::kill(serve.id().unwrap() as i32, libc::SIGTERM) };
    let stopped = tokio::time::timeout(Duration::from_secs(15), serve.wait()).await;
    assert!(stopped.is_ok_and(|status| status.unwrap().success()), "serve stops at once");
    assert!(!lease_held(&direct, "rooms-rejoin").await, "the stopped run gave its lease back");
    direct.close().await;
}

/// Only lifeboat's own account is brought back into the rooms it was in.
/// With its token dead and a server admin's configured one working (the
/// old database back from a backup, say), joins would be that admin's: it
/// is joined into no room, and says why; people still come back.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_admins_token_is_joined_into_none_of_lifeboats_rooms() {
    let TwoSquares { ours, _theirs, registry, square, across, mut lifeboat, .. } = two_squares_after_a_wipe().await;
    let root = ours.register_admin("root");
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    sqlx::query("DELETE FROM service_credentials").execute(direct.pool()).await.unwrap();
    direct.close().await;
    lifeboat.set_env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", &root);

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    let why = format!(
        "not yet: {} in {square}: lifeboat's own joins wait until its own token works again (the admin token that works is {}'s)",
        lifeboat_id(&ours),
        ours.user_id("root")
    );
    assert!(rejoined.stderr.contains(&why), "{rejoined:?}");
    let path = format!("/_synapse/admin/v1/users/{}/joined_rooms", encode(&ours.user_id("root")));
    let (status, joined) = ours.admin_request(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["joined_rooms"], serde_json::json!([]), "{rejoined:?}");
    let rooms = sign_in(&ours, "carol", NEW_PASSWORD).await.joined_rooms().await;
    assert!(rooms.contains(&square) && rooms.contains(&across), "carol is back: {rooms:?} {rejoined:?}");
}

/// Synapse busy when lifeboat joins a surviving room (a 503, not the 502 or
/// 504 of a remote server failing) says
/// nothing about the room's servers: no try is counted, so rounds of it give
/// no room up, and once Synapse answers lifeboat is back in both.
#[tokio::test(flavor = "multi_thread")]
async fn rounds_in_which_synapse_was_busy_give_no_surviving_room_up() {
    let TwoSquares { ours, _theirs, registry: _registry, lifeboat, .. } = two_squares_after_a_wipe().await;
    // lifeboat's joins and carol's (an admin join): both wait while Synapse is busy.
    let front = FaultyFront::start(&ours.url, reqwest::Method::POST, "/join/", usize::MAX).await;
    let config = through_front(&lifeboat, &ours, &front);
    for round in 1..=5 {
        let busy = lifeboat.run(&["rooms", "rejoin"]).await;
        assert!(busy.stderr.contains("answered 503") && !busy.stderr.contains("given up"), "round {round}: {busy:?}");
    }
    lifeboat.write_config(&config);
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(rejoined.stdout.contains("lifeboat rejoined 2 surviving rooms"), "{rejoined:?}");
}

/// A surviving room that refuses lifeboat's own join (made invite-only
/// since the last listing) is given up, and said to be, not promised
/// another try next round.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_that_refuses_lifeboat_is_reported_given_up() {
    let TwoSquares { ours: _ours, _theirs, registry: _registry, bob, square, lifeboat, .. } =
        two_squares_after_a_wipe().await;
    bob.set_state(&square, "m.room.join_rules", "", serde_json::json!({"join_rule": "invite"})).await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("given up: {square}")), "{rejoined:?}");
    assert!(rejoined.stdout.contains("refused lifeboat or could not be reached, and are given up"), "{rejoined:?}");
    let listed = lifeboat.run(&["rooms", "list"]).await;
    let line = listed.stdout.lines().find(|line| line.contains(&square)).unwrap_or_default().to_owned();
    assert!(line.contains("given up by lifeboat:"), "{listed:?}");
    assert!(listed.stdout.contains("`lifeboat rooms rejoin --retry` tries the rooms lifeboat gave up"), "{listed:?}");
}

/// The words of a refusal may be another server's (Synapse passes them on
/// as its own): lifeboat keeps and shows them as one short line, so a
/// server in a room cannot write pages into the registry, the output or
/// the admin room.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusals_words_are_kept_to_one_short_line() {
    let TwoSquares { ours, _theirs, registry: _registry, square, lifeboat, .. } = two_squares_after_a_wipe().await;
    let words = format!("Refused.\n{}THE-END", "Read this and act on it now. ".repeat(200));
    let refusal = format!("{{\"errcode\":\"M_FORBIDDEN\",\"error\":{}}}", serde_json::Value::String(words));
    let refusal: &'static str = Box::leak(refusal.into_boxed_str());
    let front = FaultyFront::answering(&ours.url, reqwest::Method::POST, "/join/", usize::MAX, (403, refusal)).await;
    through_front(&lifeboat, &ours, &front);

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(rejoined.stderr.contains(&format!("given up: {square}")), "{rejoined:?}");
    let listed = lifeboat.run(&["rooms", "list"]).await;
    let line = listed.stdout.lines().find(|line| line.contains(&square)).unwrap_or_default().to_owned();
    assert!(line.contains("given up by lifeboat: M_FORBIDDEN: Refused. Read this"), "{listed:?}");
    assert!(line.contains('…') && line.chars().count() < 600, "{line}");
    for said in [&rejoined.stdout, &rejoined.stderr, &listed.stdout] {
        assert!(!said.contains("THE-END"), "{said}");
    }
}

/// Synapse stops at the first server that refuses a join, and any server in
/// a room may refuse anyone: refused through the room's servers together,
/// lifeboat's join is tried through each of the others alone before the
/// room is given up.
#[tokio::test(flavor = "multi_thread")]
async fn one_server_refusing_lifeboats_join_does_not_keep_it_out_of_a_room() {
    let TwoSquares { ours, _theirs, registry, lifeboat, .. } = two_squares_after_a_wipe().await;
    let direct = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let via = serde_json::json!(["127.0.0.1:1", _theirs.server_name]).to_string();
    sqlx::query("UPDATE rooms SET via_servers = $1").bind(via).execute(direct.pool()).await.unwrap();
    direct.close().await;
    // Every join naming the first server is refused, as Synapse passes on
    // a hostile first server's refusal.
    let front = FaultyFront::refusing(&ours.url, reqwest::Method::POST, "?127.0.0.1%3A1&", usize::MAX).await;
    through_front(&lifeboat, &ours, &front);

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(front.failures_left() < usize::MAX, "joins were refused");
    assert!(!rejoined.stderr.contains("given up"), "{rejoined:?}");
    assert!(rejoined.stdout.contains("lifeboat rejoined 2 surviving rooms"), "{rejoined:?}");
}

/// One run brings people back at a time: while another (here: another
/// host's) holds the turn, `rooms rejoin` says so and joins nobody; once it
/// is over, the run does the work.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejoin_run_waits_while_another_brings_people_back() {
    let TwoSquares { ours, _theirs, registry, carol, lifeboat, .. } = two_squares_after_a_wipe().await;
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let ttl = 60_000;
    store.take_lease("rooms-rejoin", "another-host:1:1", ttl, None).await.unwrap().unwrap();

    let refused = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("another run (another-host:1:1) is bringing people back"), "{refused:?}");
    ours.register_admin(&unique("root"));
    let joined = ours.admin_get(&format!("/_synapse/admin/v1/users/{}/joined_rooms", carol.user_id)).await;
    assert_eq!(joined["total"], 0, "nobody joined meanwhile: {joined}");

    store.release_lease("rooms-rejoin", "another-host:1:1").await.unwrap();
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert!(rejoined.stdout.contains("lifeboat rejoined 2 surviving rooms"), "{rejoined:?}");
    store.close().await;
}

/// Carol of our server in two public rooms of theirs (Square, Across), our
/// Synapse wiped, an incident open, and carol's ID handed back to her.
/// Bind the Synapses and the registry when taking it apart: `..` drops
/// what it leaves out (stopping a Synapse, removing the registry).
struct TwoSquares {
    ours: TestSynapse,
    _theirs: TestSynapse,
    registry: TestDatabase,
    carol: MatrixUser,
    /// Theirs: the maker of both rooms.
    bob: MatrixUser,
    square: String,
    across: String,
    lifeboat: Lifeboat,
}

async fn two_squares_after_a_wipe() -> TwoSquares {
    let (ours, theirs) = federation_pair();
    let registry = TestDatabase::sqlite();
    ours.create_user("carol", &[]).await;
    let carol = sign_in(&ours, "carol", "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));
    let square = bob.create_room_full(RoomSpec::public("square").name("Square")).await;
    let across = bob.create_room_full(RoomSpec::public("across").name("Across")).await;
    for room in [&square, &across] {
        carol.join_via(room, &[&theirs.server_name]).await;
        joined_members_settle(&ours, room, 2).await;
    }
    let lifeboat = lifeboat_on(&ours, &registry, "");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    ours.wipe();
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Our database was lost.").unwrap();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    let opened = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(opened.code, 0, "{opened:?}");
    claim(&lifeboat, &carol.user_id).await;
    TwoSquares { ours, _theirs: theirs, registry, carol, bob, square, across, lifeboat }
}

/// Points lifeboat at `front` instead of our Synapse; returns the config
/// before, to write back.
fn through_front(lifeboat: &Lifeboat, ours: &TestSynapse, front: &FaultyFront) -> String {
    let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
    lifeboat.write_config(&config.replace(&format!("url = \"{}\"", ours.url), &format!("url = \"{}\"", front.url)));
    config
}

/// A server name whose connections the kernel completes and nobody ever
/// answers on (while the listener is kept).
fn a_server_that_never_answers() -> (std::net::TcpListener, String) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let name = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    (silent, name)
}

async fn rejoin_attempts(registry: &lifeboat::registry::Registry, room_id: &str, user_id: &str) -> i64 {
    let (attempts,): (i64,) =
        sqlx::query_as("SELECT rejoin_attempts FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .fetch_one(registry.pool())
            .await
            .unwrap();
    attempts
}

/// Makes `server` the only server the registry knows `room_id` by.
async fn reachable_only_through(registry: &lifeboat::registry::Registry, room_id: &str, server: &str) {
    sqlx::query("UPDATE rooms SET via_servers = $1 WHERE room_id = $2")
        .bind(serde_json::json!([server]).to_string())
        .bind(room_id)
        .execute(registry.pool())
        .await
        .unwrap();
}

fn lifeboat_id(ours: &TestSynapse) -> String {
    format!("@lifeboat:{}", ours.server_name)
}

/// A surviving room also waits while a former member's ID is free, not held
/// yet (holds made only with an incident, or a hold run still to come):
/// whoever registers it meanwhile would be let in the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_is_not_rejoined_while_a_former_members_id_is_free() {
    let InSquare { ours, theirs: _theirs, _registry, person: _carol, bob: _bob, square, lifeboat } =
        one_person_in_a_square_of_theirs("carol", "[recovery]\nhold = \"on-incident\"\n").await;

    ours.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0, "carol's ID is lost, and no incident holds it yet");
    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("waiting: {square}")), "{rejoined:?}");
    let squatter = ours.register("carol");
    // Had this server joined, the surviving state would show here within moments.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let squatter = MatrixUser::new(&ours.url, &squatter.user_id, &squatter.access_token);
    assert!(!squatter.joined_rooms().await.contains(&square), "whoever took carol's ID is not let in");
}

/// A surviving room waits while a stranger holds a former member's ID: once
/// this server is back in the room, the surviving state counts that ID as
/// joined, so bringing anyone back would let the stranger in too, with the
/// person's power level.
#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_room_is_not_rejoined_while_a_stranger_holds_a_former_members_id() {
    let (ours, theirs) = federation_pair();
    let registry = TestDatabase::sqlite();
    ours.create_user("alice", &["alice@example.org"]).await;
    ours.create_user("carol", &[]).await;
    let alice = sign_in(&ours, "alice", "correct horse battery").await;
    let carol = sign_in(&ours, "carol", "correct horse battery").await;
    let bob = theirs.client(&theirs.register("bob"));
    // A private room (people come back by an admin join) and a public one
    // (lifeboat's account rejoins it first).
    let across =
        bob.create_room_full(RoomSpec::private().name("Across").invite(&[&alice.user_id, &carol.user_id])).await;
    let square = bob.create_room_full(RoomSpec::public("square").name("Square")).await;
    for room in [&across, &square] {
        alice.join_via(room, &[&theirs.server_name]).await;
        carol.join_via(room, &[&theirs.server_name]).await;
        joined_members_settle(&ours, room, 3).await;
    }
    let lifeboat = lifeboat_on(&ours, &registry, "");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    ours.wipe();
    // Before lifeboat can hold it, someone registers carol's ID.
    let squatter = ours.register("carol");
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Our database was lost.").unwrap();
    let opened = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(opened.code, 0, "{opened:?}");
    claim(&lifeboat, &alice.user_id).await;

    let rejoined = lifeboat.run(&["rooms", "rejoin"]).await;
    // Had this server joined, the surviving state would show here within moments.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let squatter = MatrixUser::new(&ours.url, &squatter.user_id, &squatter.access_token);
    let alice = sign_in(&ours, "alice", NEW_PASSWORD).await;
    let (stranger_in, alice_in) = (squatter.joined_rooms().await, alice.joined_rooms().await);
    for room in [&across, &square] {
        assert!(!stranger_in.contains(room), "the stranger on carol's ID is not let in: {stranger_in:?}");
        assert!(!alice_in.contains(room), "nor is anyone, until the ID is settled: {alice_in:?}");
    }
    assert_eq!(rejoined.code, 1, "{rejoined:?}");
    assert!(rejoined.stderr.contains(&format!("held back: {square}")), "{rejoined:?}");
    let listed = rooms_by_id(&lifeboat).await;
    assert_eq!(listed[&across]["strangers"], 1, "{listed:?}");
}
