//! Rooms: the admin listing, one room's state and aliases, and what bringing
//! people back needs (admin joins, aliases, the directory, new rooms).
//!
//! Facts (../shared/SYNAPSE_NOTES.md, "Rooms"): the listing is offset-paged
//! over summary tables and cheap; the state of a room carries its members,
//! power levels, topic, avatar and a space's children in one call.

use std::collections::HashMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::types::lenient_i64;
use super::{Error, SynapseClient, found, or_none, urlencode};

/// One room as the admin listing shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedRoom {
    pub room_id: String,
    pub name: Option<String>,
    pub canonical_alias: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub joined_members: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub joined_local_members: Option<i64>,
    pub creator: Option<String>,
    pub encryption: Option<String>,
    /// Listed in this server's room directory.
    #[serde(default)]
    pub public: bool,
    pub join_rules: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub state_events: Option<i64>,
    pub room_type: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RoomsPage {
    #[serde(default)]
    pub rooms: Vec<ListedRoom>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub next_batch: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub total_rooms: Option<i64>,
}

/// One state event, as much of it as lifeboat reads.
#[derive(Debug, Clone, Deserialize)]
pub struct StateEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: Value,
    #[serde(default)]
    pub sender: Option<String>,
}

/// Who made a room, by its state: the sender of its creation event. Never
/// the event's `creator` field (room versions up to 10), nor Synapse's
/// `creator` column filled from it: a room's own server writes that field,
/// and may name anyone, a local admin or lifeboat included; the sender is
/// signed by the sender's server.
pub fn maker_in(state: &[StateEvent]) -> Option<&str> {
    state.iter().find(|event| event.kind == "m.room.create").and_then(|event| event.sender.as_deref())
}

#[derive(Deserialize)]
struct Joined {
    #[serde(default)]
    joined_rooms: Vec<String>,
}

/// A room an alias points at, or one just made.
#[derive(Deserialize)]
struct RoomId {
    room_id: String,
}

/// What an admin join found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// Refused for good (not allowed in, no server could be reached, the
    /// room is gone): the reason, to record and show.
    Refused(String),
}

impl SynapseClient {
    /// `limit` rooms of the admin listing from offset `from`. Offset paging
    /// repeats or skips rooms that come and go: the caller checks `total_rooms`.
    pub async fn rooms_page(&self, from: i64, limit: u32) -> Result<RoomsPage, Error> {
        let from = from.to_string();
        let limit = limit.to_string();
        let query = [("from", from.as_str()), ("limit", limit.as_str())];
        self.get_json("/_synapse/admin/v1/rooms", &query, true).await
    }

    /// Every state event of a room; `None` when Synapse does not know the room.
    pub async fn room_state(&self, room_id: &str) -> Result<Option<Vec<StateEvent>>, Error> {
        self.state_events(room_id, &[]).await
    }

    /// A room's state events, those of one type when `query` says so.
    async fn state_events(&self, room_id: &str, query: &[(&str, &str)]) -> Result<Option<Vec<StateEvent>>, Error> {
        #[derive(Deserialize)]
        struct State {
            #[serde(default)]
            state: Vec<StateEvent>,
        }
        let path = format!("/_synapse/admin/v1/rooms/{}/state", urlencode(room_id));
        Ok(found(self.get_json::<State>(&path, query, true).await)?.map(|state| state.state))
    }

    /// The local aliases of a room (a server admin may read any room's).
    pub async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Aliases {
            #[serde(default)]
            aliases: Vec<String>,
        }
        let path = format!("/_matrix/client/v3/rooms/{}/aliases", urlencode(room_id));
        let aliases = or_none(self.get_json::<Aliases>(&path, &[], true).await, unseen)?;
        Ok(aliases.map(|aliases| aliases.aliases).unwrap_or_default())
    }

    /// Joins `user_id` (a local account) to a room through the admin API,
    /// asking the `via` servers (this endpoint reads `server_name`) when this
    /// server is not in it. In a room that is not public it invites from the
    /// admin first, so it is refused once this server is back and the admin
    /// is not: by then the surviving state holds every former local member
    /// as joined ([`Self::joined_rooms`] shows it). Sent once (a 429 waited
    /// out), as [`Self::join`] is: a retry after a timeout only queues a
    /// second join behind the first in Synapse.
    pub async fn admin_join(&self, room_id: &str, user_id: &str, via: &[String]) -> Result<JoinOutcome, Error> {
        let path = format!("/_synapse/admin/v1/join/{}", urlencode(room_id));
        self.join_through(&path, &json!({ "user_id": user_id }), &["server_name"], via).await
    }

    /// The rooms a local account is joined to (as this server sees it).
    pub async fn joined_rooms(&self, user_id: &str) -> Result<Vec<String>, Error> {
        let path = format!("/_synapse/admin/v1/users/{}/joined_rooms", urlencode(user_id));
        Ok(self.get_json::<Joined>(&path, &[], true).await?.joined_rooms)
    }

    /// Joins the token's own account to a room (lifeboat's, after a loss).
    /// Each join is sent once (a 429 waited out): one to servers that do not
    /// answer takes homeserver.timeout each time, and the next round tries
    /// again. A refusal is tried through each other server alone.
    pub async fn join(&self, room_id: &str, via: &[String]) -> Result<JoinOutcome, Error> {
        let path = format!("/_matrix/client/v3/join/{}", urlencode(room_id));
        self.join_through(&path, &json!({}), &["via", "server_name"], via).await
    }

    /// One join sent through all the `via` servers (each named under every
    /// query key the endpoint reads); if refused, through each server after
    /// the first alone. Synapse stops at the first server that refuses
    /// rather than asking the next, and any server in a room may refuse:
    /// one that ranks first must not keep people out of a room the others
    /// would let them into. A dead token, or Synapse itself not answering
    /// (each further try would wait as long), ends the tries with that
    /// error; if no server lets the join in, the first refusal stands.
    async fn join_through(
        &self,
        path: &str,
        body: &Value,
        keys: &[&str],
        via: &[String],
    ) -> Result<JoinOutcome, Error> {
        let once = self.retrying_only_rate_limits();
        let through = |via: &[String]| {
            let (via, once) = (via.to_vec(), &once);
            async move {
                let query: Vec<(&str, &str)> =
                    keys.iter().flat_map(|key| via.iter().map(move |server| (*key, server.as_str()))).collect();
                once.request_json::<Value>(Method::POST, path, &query, Some(body), true).await.map(drop)
            }
        };
        let first = through(via).await;
        if matches!(first, Err(Error::Forbidden { .. } | Error::Rejected { .. })) {
            for server in via.iter().skip(1) {
                match through(std::slice::from_ref(server)).await {
                    Ok(()) => return Ok(JoinOutcome::Joined),
                    Err(err) if err.token_no_longer_works() || matches!(err, Error::WrongUrl { .. }) => {
                        return Err(err);
                    }
                    Err(err @ Error::Unavailable { matrix_error: None, .. }) => return Err(err),
                    Err(_) => {}
                }
            }
        }
        refused_or(first)
    }

    /// Points a local alias at a room. `Ok(false)` when the alias points
    /// elsewhere already (someone made it again): left alone.
    pub async fn set_alias(&self, alias: &str, room_id: &str) -> Result<bool, Error> {
        let path = format!("/_matrix/client/v3/directory/room/{}", urlencode(alias));
        let body = json!({ "room_id": room_id });
        match self.call(Method::PUT, &path, Some(&body)).await {
            Ok(()) => Ok(true),
            Err(Error::Rejected { status: 409, .. }) => Ok(self.alias_target(alias).await?.as_deref() == Some(room_id)),
            Err(err) => Err(err),
        }
    }

    /// Who made a room: the sender of its creation event (no membership
    /// needed, only that event read). For a room this server made (its ID
    /// names `local_server`) and left since, Synapse keeps no state but
    /// its own record of the maker, which is to be trusted: this server
    /// wrote that event. `None` when Synapse cannot tell.
    pub async fn room_maker(&self, room_id: &str, local_server: &str) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Details {
            creator: Option<String>,
        }
        let state = self.state_events(room_id, &[("type", "m.room.create")]).await?;
        if let Some(maker) = state.as_deref().and_then(maker_in) {
            return Ok(Some(maker.to_owned()));
        }
        // An ID without a server (room version 12) is its creation event's
        // hash: Synapse's record of its maker cannot have been made up.
        if room_id.split_once(':').is_some_and(|(_, server)| server != local_server) {
            return Ok(None);
        }
        let path = format!("/_synapse/admin/v1/rooms/{}", urlencode(room_id));
        Ok(found(self.get_json::<Details>(&path, &[], true).await)?.and_then(|details| details.creator))
    }

    /// Each member's membership in a room by this server's copy of its state
    /// (`leave`, `ban`, `join`, ...), by user ID; `None` when Synapse does
    /// not know the room.
    pub async fn memberships(&self, room_id: &str) -> Result<Option<HashMap<String, String>>, Error> {
        let Some(members) = self.state_events(room_id, &[("type", "m.room.member")]).await? else { return Ok(None) };
        Ok(Some(
            members
                .into_iter()
                .filter_map(|event| Some((event.state_key?, event.content["membership"].as_str()?.to_owned())))
                .collect(),
        ))
    }

    /// Deletes a local alias (a server admin may delete any).
    pub async fn delete_alias(&self, alias: &str) -> Result<(), Error> {
        let path = format!("/_matrix/client/v3/directory/room/{}", urlencode(alias));
        self.call(Method::DELETE, &path, None).await
    }

    /// The room a local alias points at, if any.
    pub async fn alias_target(&self, alias: &str) -> Result<Option<String>, Error> {
        let path = format!("/_matrix/client/v3/directory/room/{}", urlencode(alias));
        Ok(found(self.get_json::<RoomId>(&path, &[], true).await)?.map(|target| target.room_id))
    }

    pub async fn list_in_directory(&self, room_id: &str) -> Result<(), Error> {
        let path = format!("/_matrix/client/v3/directory/list/room/{}", urlencode(room_id));
        let body = json!({ "visibility": "public" });
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// Creates a room as the token's account. Sent once, since a retried
    /// create would make a second room, except after a 429 (Synapse allows
    /// an account about one room a minute after a burst of ten).
    pub async fn create_room(&self, body: &Value) -> Result<String, Error> {
        let created: RoomId = self
            .retrying_only_rate_limits()
            .request_json(Method::POST, "/_matrix/client/v3/createRoom", &[], Some(body), true)
            .await?;
        Ok(created.room_id)
    }

    /// Gives each of `users` its power level in a room the token's account
    /// can change them in, on top of the room's power levels as they are
    /// (the maker's own entry kept; from room version 12 it has none).
    pub async fn give_power(&self, room_id: &str, users: &[(String, i64)]) -> Result<(), Error> {
        if users.is_empty() {
            return Ok(());
        }
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", urlencode(room_id));
        let mut levels: Value = self.request_json(Method::GET, &path, &[], None, true).await?;
        for (user_id, level) in users {
            levels["users"][user_id] = json!(level);
        }
        self.call(Method::PUT, &path, Some(&levels)).await
    }

    /// Invites a local account to a room the token's account is in.
    /// An account already joined or invited counts as invited.
    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<JoinOutcome, Error> {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", urlencode(room_id));
        let body = json!({ "user_id": user_id });
        match self.request_json::<Value>(Method::POST, &path, &[], Some(&body), true).await {
            Err(Error::Forbidden { message, .. }) if message.contains("already in the room") => Ok(JoinOutcome::Joined),
            other => refused_or(other),
        }
    }

    /// The token's own account leaves a room.
    pub async fn leave(&self, room_id: &str) -> Result<(), Error> {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", urlencode(room_id));
        self.call(Method::POST, &path, Some(&json!({}))).await
    }

    /// The rooms the token's own account is joined to.
    pub async fn own_joined_rooms(&self) -> Result<Vec<String>, Error> {
        Ok(self.get_json::<Joined>("/_matrix/client/v3/joined_rooms", &[], true).await?.joined_rooms)
    }

    /// A room's creation event (its sender and content), as the token's
    /// account sees it.
    pub async fn creation_event(&self, room_id: &str) -> Result<Option<Value>, Error> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", urlencode(room_id));
        or_none(self.get_json(&path, &[("format", "event")], true).await, unseen)
    }
}

/// Not there, or not visible to this account (Synapse answers 403 for
/// another room's aliases in some setups).
fn unseen(err: &Error) -> bool {
    matches!(err, Error::NotFound | Error::Forbidden { .. })
}

/// A refusal that trying again will not change becomes a recorded reason;
/// anything else (Synapse down, the token dead) stays an error.
fn refused_or<T>(result: Result<T, Error>) -> Result<JoinOutcome, Error> {
    match result {
        Ok(_) => Ok(JoinOutcome::Joined),
        Err(Error::Forbidden { errcode, message } | Error::Rejected { errcode, message, .. }) => {
            Ok(JoinOutcome::Refused(format!("{errcode}: {message}")))
        }
        Err(Error::NotFound) => Ok(JoinOutcome::Refused("no server could be reached that knows the room".to_owned())),
        Err(err) => Err(err),
    }
}
