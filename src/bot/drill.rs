//! The drill's bot line: can the bot post in its admin room right now?
//! Uses the bot's existing session only (no new login, no recovery), and
//! posts one short message saying it is a rehearsal.

use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::membership::joined_rooms;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId};

use super::login::existing_credentials;
use crate::config::Config;
use crate::dm::restored_client;
use crate::drill::Status;
use crate::registry::{Registry, now_ms};

pub async fn post_test_message(config: &Config, registry: &Registry) -> (Status, String) {
    let Some(bot) = &config.bot else { return (Status::Skip, "not checked: no [bot] section".to_owned()) };
    let login = match existing_credentials(config, bot, registry, false).await.map(|(login, _)| login) {
        Ok(Some(login)) => login,
        Ok(None) if bot.password.is_some() => {
            return (
                Status::Warn,
                "the bot has no session yet: start `lifeboat serve` once so it logs in with bot.password".to_owned(),
            );
        }
        Ok(None) => {
            return (
                Status::Fail,
                "the bot cannot log in: set bot.password or bot.access_token to working credentials".to_owned(),
            );
        }
        Err(err) => return (Status::Fail, err.to_string()),
    };
    // No store: a drill must not touch the running bot's keys.
    let client = match restored_client(&login.on(&config.homeserver.url), None).await {
        Ok(client) => client,
        Err(err) => return (Status::Fail, format!("the bot's session: {err}")),
    };
    let Some(room_id) = admin_room(config, registry, &client).await else {
        return (
            Status::Fail,
            "the bot has no admin room: set bot.admin_room (and invite the bot there), or start `lifeboat serve` so it makes one"
                .to_owned(),
        );
    };
    let content = crate::dm::safe_message("lifeboat drill: the bot can post here. (A rehearsal: nothing was changed.)");
    let txn: OwnedTransactionId = format!("lifeboat-drill-{}", now_ms()).into();
    let request = match send_message_event::v3::Request::new(room_id.clone(), txn, &content) {
        Ok(request) => request,
        Err(err) => return (Status::Fail, err.to_string()),
    };
    match tokio::time::timeout(Duration::from_secs(30), client.send(request)).await {
        Ok(Ok(_)) => (Status::Ok, format!("{} posted a test message in {room_id}", login.user_id)),
        Ok(Err(err)) => (
            Status::Fail,
            format!("{} cannot post in {room_id} ({err}): invite the bot there from an admin account", login.user_id),
        ),
        Err(_) => (Status::Fail, format!("posting in {room_id} timed out")),
    }
}

/// The room the running bot settles in (`settle_admin_room`): of
/// `bot.admin_room` (an alias resolved) and the room the bot made itself,
/// the first it is in; else the configured one, which it would join. After
/// a wipe an alias may name someone else's room: the bot is not in that.
async fn admin_room(config: &Config, registry: &Registry, client: &Client) -> Option<OwnedRoomId> {
    let configured = match config.bot.as_ref().and_then(|bot| bot.admin_room.as_deref()) {
        Some(configured) => super::resolve_room(client, configured).await,
        None => None,
    };
    let made = super::room_made_before(registry).await.ok().flatten();
    let joined = client.send(joined_rooms::v3::Request::new()).await.map(|rooms| rooms.joined_rooms);
    let joined = joined.unwrap_or_default();
    let settled = [&configured, &made].into_iter().flatten().find(|room| joined.contains(room)).cloned();
    settled.or(configured).or(made)
}
