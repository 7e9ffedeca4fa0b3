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
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{} {path} as {}: {status} {value}", "request", self.user_id);
        value
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
        self.call(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{}", encode(room_id)), Some(json!({})))
            .await;
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

    /// Text bodies `sender` sent in `room_id`, oldest first.
    pub async fn messages_from(&self, room_id: &str, sender: &str) -> Vec<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", encode(room_id));
        let page = self.call(reqwest::Method::GET, &path, None).await;
        let mut bodies: Vec<String> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["type"] == "m.room.message" && event["sender"] == sender)
            .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
            .collect();
        bodies.reverse();
        bodies
    }

    /// The `formatted_body` (HTML) of every message `sender` sent in `room_id`.
    pub async fn formatted_from(&self, room_id: &str, sender: &str) -> Vec<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", encode(room_id));
        let page = self.call(reqwest::Method::GET, &path, None).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["type"] == "m.room.message" && event["sender"] == sender)
            .filter_map(|event| event["content"]["formatted_body"].as_str().map(str::to_owned))
            .collect()
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

fn encode(part: &str) -> String {
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
