//! A person on the test Synapse, speaking the client-server API directly
//! (plain HTTP), so tests see exactly what any Matrix client would.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct MatrixUser {
    pub user_id: String,
    url: String,
    token: String,
    http: reqwest::Client,
    since: std::sync::Mutex<Option<String>>,
    invited: std::sync::Mutex<Vec<String>>,
}

impl MatrixUser {
    pub fn new(url: &str, user_id: &str, token: &str) -> MatrixUser {
        MatrixUser {
            user_id: user_id.to_owned(),
            url: url.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            since: Default::default(),
            invited: Default::default(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.try_call(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "{method} {path} as {}: {status} {value}", self.user_id);
        value
    }

    /// Any request as this user: (status, JSON body or Null).
    pub async fn try_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// A private room with `invite`d people; `direct` marks it a DM.
    pub async fn create_room(&self, invite: &[&str], direct: bool) -> String {
        self.create_room_with(invite, direct, false).await
    }

    /// Like `create_room`; `encrypted` turns on end-to-end encryption.
    pub async fn create_room_with(&self, invite: &[&str], direct: bool, encrypted: bool) -> String {
        let mut body = json!({"preset": "private_chat", "invite": invite, "is_direct": direct});
        if encrypted {
            body["initial_state"] = json!([{
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}
            }]);
        }
        let created = self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await;
        created["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn invite(&self, room_id: &str, user_id: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", encode(room_id));
        self.call(reqwest::Method::POST, &path, Some(json!({"user_id": user_id}))).await;
    }

    pub async fn join(&self, room_id: &str) {
        self.join_via(room_id, &[]).await;
    }

    /// Joins a room by ID or alias through the given servers (`?via=`),
    /// which a room ID needs when this server is not in the room (room IDs
    /// name no server since room version 12).
    pub async fn join_via(&self, room_id_or_alias: &str, via: &[&str]) {
        let (status, body) = self.try_join_via(room_id_or_alias, via).await;
        assert!(
            (200..300).contains(&status),
            "{} joining {room_id_or_alias} via {via:?}: {status} {body}",
            self.user_id
        );
    }

    /// Like `join_via`, for joins that may be refused: (status, body).
    pub async fn try_join_via(&self, room_id_or_alias: &str, via: &[&str]) -> (u16, Value) {
        let mut path = format!("/_matrix/client/v3/join/{}", encode(room_id_or_alias));
        for (i, server) in via.iter().enumerate() {
            path.push_str(if i == 0 { "?via=" } else { "&via=" });
            path.push_str(&encode(server));
        }
        self.try_call(reqwest::Method::POST, &path, Some(json!({}))).await
    }

    /// A room as `spec` describes it; returns its ID.
    pub async fn create_room_full(&self, spec: RoomSpec) -> String {
        let created = self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(spec.body())).await;
        created["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn joined_rooms(&self) -> Vec<String> {
        let body = self.call(reqwest::Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
        serde_json::from_value(body["joined_rooms"].clone()).unwrap()
    }

    /// The content of a state event, `None` if there is none (or no access).
    pub async fn state(&self, room_id: &str, event_type: &str, state_key: &str) -> Option<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{event_type}/{}", encode(room_id), encode(state_key));
        let (status, body) = self.try_call(reqwest::Method::GET, &path, None).await;
        (status == 200).then_some(body)
    }

    pub async fn set_state(&self, room_id: &str, event_type: &str, state_key: &str, content: Value) {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{event_type}/{}", encode(room_id), encode(state_key));
        self.call(reqwest::Method::PUT, &path, Some(content)).await;
    }

    pub async fn room_name(&self, room_id: &str) -> Option<String> {
        self.state(room_id, "m.room.name", "").await.and_then(|c| c["name"].as_str().map(str::to_owned))
    }

    pub async fn room_topic(&self, room_id: &str) -> Option<String> {
        self.state(room_id, "m.room.topic", "").await.and_then(|c| c["topic"].as_str().map(str::to_owned))
    }

    pub async fn set_topic(&self, room_id: &str, topic: &str) {
        self.set_state(room_id, "m.room.topic", "", json!({"topic": topic})).await;
    }

    /// Adds `child` to the space `space` (`m.space.child`, `via` server names).
    pub async fn add_space_child(&self, space: &str, child: &str, via: &[&str]) {
        self.set_state(space, "m.space.child", child, json!({"via": via})).await;
    }

    /// This server's local aliases of a room (server admins may ask for any).
    pub async fn aliases(&self, room_id: &str) -> Vec<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/aliases", encode(room_id));
        let body = self.call(reqwest::Method::GET, &path, None).await;
        serde_json::from_value(body["aliases"].clone()).unwrap()
    }

    pub async fn send(&self, room_id: &str, body: &str) {
        let txn = format!("t{}", crate::harness::unique("m"));
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", encode(room_id));
        self.call(reqwest::Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": body}))).await;
    }

    /// `user_id`'s membership in `room_id` ("join", "invite", "leave", ...).
    pub async fn membership_of(&self, room_id: &str, user_id: &str) -> Option<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", encode(room_id), encode(user_id));
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        if !response.status().is_success() {
            return None;
        }
        let value: Value = response.json().await.unwrap();
        value["membership"].as_str().map(str::to_owned)
    }

    /// The content of every message `sender` sent in `room_id` (of the
    /// last 100 events), newest first.
    pub async fn contents_from(&self, room_id: &str, sender: &str) -> Vec<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", encode(room_id));
        let page = self.call(reqwest::Method::GET, &path, None).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["type"] == "m.room.message" && event["sender"] == sender)
            .map(|event| event["content"].clone())
            .collect()
    }

    /// Text bodies `sender` sent in `room_id`, oldest first.
    pub async fn messages_from(&self, room_id: &str, sender: &str) -> Vec<String> {
        let contents = self.contents_from(room_id, sender).await;
        contents.iter().rev().filter_map(|content| content["body"].as_str().map(str::to_owned)).collect()
    }

    /// The `formatted_body` (HTML) of every message `sender` sent in `room_id`.
    pub async fn formatted_from(&self, room_id: &str, sender: &str) -> Vec<String> {
        let contents = self.contents_from(room_id, sender).await;
        contents.iter().filter_map(|content| content["formatted_body"].as_str().map(str::to_owned)).collect()
    }

    /// Waits for a message from `sender` containing `needle`; `None` when
    /// none came within `within`.
    pub async fn find_message(&self, room_id: &str, sender: &str, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) =
                self.messages_from(room_id, sender).await.into_iter().find(|body| body.contains(needle))
            {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for a message from `sender` containing `needle`; returns it.
    pub async fn wait_for_message(&self, room_id: &str, sender: &str, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) =
                self.messages_from(room_id, sender).await.into_iter().find(|body| body.contains(needle))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no message from {sender} containing {needle:?} within {within:?}; got {:?}",
                self.messages_from(room_id, sender).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rooms this user has been invited to so far. Syncs on from the last
    /// position: Synapse answers a repeated initial sync from a cache.
    pub async fn invites(&self) -> Vec<String> {
        let since = self.since.lock().unwrap().clone();
        let path = match since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={}", encode(&since)),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let sync = self.call(reqwest::Method::GET, &path, None).await;
        *self.since.lock().unwrap() = sync["next_batch"].as_str().map(str::to_owned);
        let mut invited = self.invited.lock().unwrap();
        for room in sync["rooms"]["invite"]
            .as_object()
            .map(|rooms| rooms.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !invited.contains(&room) {
                invited.push(room);
            }
        }
        invited.clone()
    }

    /// The first room this user is invited to, waiting up to a minute.
    pub async fn first_invite(&self) -> String {
        for _ in 0..240 {
            if let Some(room) = self.invites().await.first() {
                return room.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        panic!("{} was not invited to any room within a minute", self.user_id)
    }
}

/// Percent-encodes one path or query part (room IDs, aliases, user IDs).
pub fn encode(part: &str) -> String {
    url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>().replace('+', "%20")
}

/// Polls `condition` until it holds, or fails the test with `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What `MatrixUser::create_room_full` makes. Start with `private()` or
/// `public(alias)`, then add to it:
///
/// ```ignore
/// RoomSpec::private().name("Crew").invite(&[&alice]).encrypted()
/// RoomSpec::public("harbour").name("Harbour")   // #harbour:<server>, listed
/// RoomSpec::private().space().child(&room, &[&server])
/// ```
#[derive(Debug, Clone)]
pub struct RoomSpec {
    body: Value,
    initial_state: Vec<Value>,
}

impl RoomSpec {
    /// Invite-only (`private_chat` preset), not listed.
    pub fn private() -> RoomSpec {
        RoomSpec { body: json!({"preset": "private_chat"}), initial_state: Vec::new() }
    }

    /// Anyone may join; alias `#<alias_localpart>:<server>`, listed in the
    /// room directory (the federating harness allows publishing).
    pub fn public(alias_localpart: &str) -> RoomSpec {
        RoomSpec {
            body: json!({"preset": "public_chat", "room_alias_name": alias_localpart, "visibility": "public"}),
            initial_state: Vec::new(),
        }
    }

    pub fn name(mut self, name: &str) -> RoomSpec {
        self.body["name"] = json!(name);
        self
    }

    pub fn topic(mut self, topic: &str) -> RoomSpec {
        self.body["topic"] = json!(topic);
        self
    }

    pub fn invite(mut self, user_ids: &[&str]) -> RoomSpec {
        self.body["invite"] = json!(user_ids);
        self
    }

    /// End-to-end encrypted (`m.room.encryption` in the initial state).
    pub fn encrypted(mut self) -> RoomSpec {
        self.initial_state.push(json!({
            "type": "m.room.encryption",
            "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}
        }));
        self
    }

    /// A space (`creation_content.type = "m.space"`) rather than a room.
    pub fn space(mut self) -> RoomSpec {
        self.body["creation_content"] = json!({"type": "m.space"});
        self
    }

    /// An `m.space.child` for `room_id`, reachable through `via` servers.
    pub fn child(mut self, room_id: &str, via: &[&str]) -> RoomSpec {
        self.initial_state.push(json!({"type": "m.space.child", "state_key": room_id, "content": {"via": via}}));
        self
    }

    fn body(&self) -> Value {
        let mut body = self.body.clone();
        if !self.initial_state.is_empty() {
            body["initial_state"] = json!(self.initial_state);
        }
        body
    }
}
