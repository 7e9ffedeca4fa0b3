//! The drill's bot line: can the bot post in its admin room right now?
//! Uses the bot's existing session only (no new login, no recovery), and
//! posts one short message saying it is a rehearsal.

use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::membership::joined_rooms;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, ServerName};

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
    let room_id = match admin_room(config, registry, &client).await {
        Ok(Some(room_id)) => room_id,
        Ok(None) => {
            return (
                Status::Fail,
                "the bot has no admin room: set bot.admin_room (and invite the bot there), or start `lifeboat serve` so it makes one"
                    .to_owned(),
            );
        }
        Err(answer) => return answer,
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

/// The room the running bot settles in (`settle_admin_room`), in its
/// order: `bot.admin_room` (an alias resolved) when the bot is in it and
/// it is the admin room by name alone, then the room the bot made itself,
/// then the one the alias named before; else the configured one, which it
/// would join. After a wipe an alias may name anyone's room, even a DM
/// with the bot: the bot is there, but that is no admin room. `Err`: the
/// bot is in the room the alias names, and whether it is the admin room
/// is for serve to tell.
async fn admin_room(
    config: &Config,
    registry: &Registry,
    client: &Client,
) -> Result<Option<OwnedRoomId>, (Status, String)> {
    let failed = |err: &dyn std::fmt::Display| (Status::Fail, err.to_string());
    let Some(bot) = &config.bot else { return Ok(None) };
    let configured = match bot.admin_room.as_deref() {
        Some(configured) => super::resolve_room(client, configured).await,
        None => None,
    };
    let made = super::room_made_before(registry).await.map_err(|err| failed(&err))?;
    let named_before = super::room_the_alias_named(registry, bot).await.map_err(|err| failed(&err))?;
    let joined = client.send(joined_rooms::v3::Request::new()).await.map(|rooms| rooms.joined_rooms);
    let joined = joined.unwrap_or_default();
    let is_joined = |room: &Option<OwnedRoomId>| room.clone().filter(|room| joined.contains(room));
    let server = <&ServerName>::try_from(config.homeserver.server_name.as_str()).map_err(|err| failed(&err))?;
    let sure = |room: &OwnedRoomId| super::named_for_sure(bot, server, named_before.as_deref(), room);
    if let Some(room) = is_joined(&configured) {
        if sure(&room) {
            return Ok(Some(room));
        }
        if named_before.is_none() {
            return Err((
                Status::Warn,
                format!(
                    "not posted: bot.admin_room's alias names {room}, which the bot is in, with no record that it was the admin room; serve settles there only if it is invite-only and an admin made it or is in it (start serve, then run the drill again)"
                ),
            ));
        }
    }
    // In none: the configured one, which serve would join, unless its
    // alias names another room than before (serve stays out of that).
    let joinable = configured.filter(|room| sure(room) || named_before.is_none());
    Ok(is_joined(&made).or(is_joined(&named_before)).or(joinable).or(made))
}
