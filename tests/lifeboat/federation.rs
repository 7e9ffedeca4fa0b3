//! Two federating Synapses: rooms that live on more than one server.

use std::time::Duration;

use serde_json::Value;

use crate::harness::matrix::encode;
use crate::harness::{RoomSpec, TestSynapse, eventually, federation_pair};

/// Waits until `synapse`'s admin room listing shows `field: expected` for
/// `room_id`: the listing is kept in summary tables updated in the background.
async fn listing_shows(synapse: &TestSynapse, room_id: &str, field: &str, expected: Value) {
    let what = format!("{}'s room listing showing {field} = {expected} for {room_id}", synapse.server_name);
    eventually(&what, Duration::from_secs(30), || async {
        synapse.room(room_id).await.is_some_and(|room| room[field] == expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_room_from_another_server_counts_one_local_and_two_joined_members() {
    let (a, b) = federation_pair();
    assert_eq!(a.server_name, format!("127.0.0.1:{}", a.federation_port.unwrap()));
    let alice = a.client(&a.register("alice"));
    let bob = b.client(&b.register("bob"));

    let room = bob.create_room_full(RoomSpec::private().name("Across the water").invite(&[&alice.user_id])).await;
    assert_eq!(alice.first_invite().await, room);
    alice.join(&room).await;

    // A joins with partial state first: the counts settle a moment later.
    listing_shows(&a, &room, "joined_members", 2.into()).await;
    assert_eq!(a.room(&room).await.unwrap()["joined_local_members"], 1);
    assert_eq!(a.room_members(&room).await, [alice.user_id.clone(), bob.user_id.clone()]);
    assert_eq!(alice.room_name(&room).await.as_deref(), Some("Across the water"));
    assert_eq!(alice.joined_rooms().await, [room]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_aliases_and_spaces_made_on_one_server_are_reachable_from_the_other() {
    let (a, b) = federation_pair();
    let erin = a.client(&a.register("erin"));
    let bob = b.client(&b.register("bob"));

    let harbour = erin.create_room_full(RoomSpec::public("harbour").name("Harbour").topic("boats")).await;
    let alias = format!("#harbour:{}", a.server_name);
    assert_eq!(a.resolve_alias(&alias).await.as_deref(), Some(harbour.as_str()));
    listing_shows(&a, &harbour, "public", true.into()).await; // In A's room directory.
    assert_eq!(
        a.admin_get(&format!("/_matrix/client/v3/rooms/{}/aliases", encode(&harbour))).await["aliases"][0],
        alias
    );
    assert_eq!(erin.aliases(&harbour).await, std::slice::from_ref(&alias));
    bob.join_via(&alias, &[]).await;
    assert_eq!(bob.room_topic(&harbour).await.as_deref(), Some("boats"));
    erin.set_topic(&harbour, "ships").await;
    eventually("the new topic reaches B", Duration::from_secs(30), || async {
        bob.room_topic(&harbour).await.as_deref() == Some("ships")
    })
    .await;

    let secret = bob.create_room_full(RoomSpec::private().encrypted()).await;
    let space = bob.create_room_full(RoomSpec::public("fleet").space().child(&harbour, &[&a.server_name])).await;
    bob.add_space_child(&space, &secret, &[&b.server_name]).await;
    erin.join_via(&space, &[&b.server_name]).await;
    let child = erin.state(&space, "m.space.child", &secret).await.expect("the space lists its child");
    assert_eq!(child["via"][0], b.server_name);
    listing_shows(&a, &space, "room_type", "m.space".into()).await;
    let (status, refused) = erin.try_join_via(&secret, &[&b.server_name]).await;
    assert_eq!(status, 403, "a private room needs an invite: {refused}");
    listing_shows(&b, &secret, "encryption", "m.megolm.v1.aes-sha2".into()).await;
}
