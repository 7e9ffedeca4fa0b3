//! The admin-room bot of `lifeboat serve` (matrix-sdk): obeys only
//! `bot.admins` in its admin room, posts the watcher's alerts there, and
//! lets anyone manage their own contact emails by DM. When a wipe kills its
//! token, it recovers its account through the shared secret, makes a fresh
//! store and admin room, and invites the admins as their accounts come back.

mod admin;
pub mod commands;
pub mod drill;
pub(crate) mod login;
mod people;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::event_handler::Ctx;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent};
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, ServerName, UserId};
use matrix_sdk::sync::SyncResponse;
use matrix_sdk::{Client, LoopCtrl, Room, RoomMemberships, RoomState, SessionChange};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::app::Services;
use crate::config::BotConfig;
use crate::dm::{EVENTS_PER_ROOM_AND_SYNC, safe_message, up_to_enough_events};
use crate::limit::FixedWindows;

/// Registry setting: the admin room the bot made itself (after a wipe, or
/// when none is configured), so a restart goes back to it.
const ROOM_SETTING: &str = "bot_admin_room";
/// Registry setting: `bot.admin_room` when it is an alias, and the room it
/// named when the bot was last there (`<alias> <room ID>`), so a moved alias
/// is noticed: after a wipe anyone may point a freed alias at their room.
const ALIAS_ROOM_SETTING: &str = "bot_admin_room_alias";
/// How often the bot checks whether admins can be invited to a new room.
const INVITE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Alerts kept while the bot has no room to post them in.
const MAX_QUEUED_ALERTS: usize = 20;
/// The first pause before logging in again; it doubles while sessions keep
/// failing, up to [`LONGEST_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(2);
const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(60);
/// The least time between two notices of unread messages in the admin room.
const UNREAD_NOTICE_EVERY: Duration = Duration::from_secs(10 * 60);

/// What the handlers share.
pub(crate) struct Bot {
    state: Arc<Services>,
    config: BotConfig,
    me: OwnedUserId,
    admins: Vec<OwnedUserId>,
    /// `bot.admin_room` as a room ID (aliases resolved at start).
    configured_room: Mutex<Option<OwnedRoomId>>,
    admin_room: Mutex<Option<OwnedRoomId>>,
    /// Commands an admin was asked to confirm ("notify <id>", "release
    /// <user>", "rooms recreate <room>") → when.
    asked_to_confirm: Mutex<HashMap<String, Instant>>,
    /// Admins invited to the current admin room by this process.
    invited: Mutex<HashSet<OwnedUserId>>,
    /// DM rooms being joined now, per inviter: counted with those joined,
    /// so a burst of invites in one sync cannot pass the cap together.
    joining: Mutex<HashMap<OwnedUserId, usize>>,
    /// DM rooms checked since the bot took them ([`leave_what_stopped_being_a_dm`]).
    dms_checked: Mutex<HashSet<OwnedRoomId>>,
    /// Messages sent before this process started are not taken as commands
    /// (they may be stale); later ones are, even if they arrive in the first
    /// sync after a reconnect.
    started_at: MilliSecondsSinceUnixEpoch,
    /// How far the bot read the admin room, and when it last said some
    /// messages went unread ([`tell_of_unread_messages`]).
    unread: Mutex<Unread>,
    /// Commands and DMs already handled by this process: a session on a new
    /// device (the old one logged out) syncs its rooms afresh, and must not
    /// run them again.
    handled: Mutex<Handled>,
    /// DM commands per person in the current minute (each costs a member
    /// list and admin-API calls): past [`DM_COMMANDS_PER_MINUTE`], ignored.
    dm_commands: FixedWindows,
}

/// DM commands one person may send a minute; more are not answered.
const DM_COMMANDS_PER_MINUTE: u32 = 10;

/// The admin room's commands and the DMs handled, remembered apart: anyone
/// can DM the bot, and a flood of DMs must not push the admins' commands
/// out of the memory (a new device would run them again).
#[derive(Default)]
struct Handled {
    commands: HandledEvents,
    dms: HandledEvents,
}

/// The last [`HandledEvents::KEPT`] events handled, to tell one seen again.
#[derive(Default)]
struct HandledEvents {
    order: std::collections::VecDeque<matrix_sdk::ruma::OwnedEventId>,
    seen: HashSet<matrix_sdk::ruma::OwnedEventId>,
}

impl HandledEvents {
    /// More than a first sync brings again (about ten events a room).
    const KEPT: usize = 4096;

    /// Records `event`: false if it was handled already.
    fn first_time(&mut self, event: &matrix_sdk::ruma::EventId) -> bool {
        if !self.seen.insert(event.to_owned()) {
            return false;
        }
        self.order.push_back(event.to_owned());
        if self.order.len() > Self::KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

impl Bot {
    /// Whether `user` is an admin the bot obeys (or invites): in `bot.admins`, and
    /// its person's now: not an ID lost, held, or registered again by
    /// someone else after a loss (a stranger holding an admin's ID until an
    /// operator settles it). A local ID is also asked of Synapse: it must
    /// exist, be one a listing saw (after a wipe anyone may register an
    /// admin ID the registry never knew), and not be an account made after
    /// the one the registry knows (right after a wipe, before a listing,
    /// the registry still has such an ID as present). When either cannot
    /// tell, no. For what someone did (a command, an invite), a listed admin
    /// who is not obeyed is told of in the log, with the fix.
    async fn obeys(&self, user: &OwnedUserId) -> bool {
        let Some(why) = self.why_not_obeyed(user).await else { return true };
        if self.admins.contains(user) {
            tracing::warn!(admin = %user, "not obeying an admin: {why}");
        }
        false
    }

    async fn why_not_obeyed(&self, user: &OwnedUserId) -> Option<String> {
        if !self.admins.contains(user) {
            return Some("not in bot.admins".to_owned());
        }
        let standing = if user.server_name() == self.me.server_name() {
            self.standing_of(user).await
        } else {
            let id = crate::user_id::UserId::from(&**user);
            Standing::from(self.state.registry.speaks_for_its_person(&id, None).await.map_err(Into::into))
        };
        match standing {
            Standing::Theirs => None,
            Standing::NotTheirs => Some(
                "no listing has seen the account as its person's (run `lifeboat sync`), or it was registered again after a loss (settle it with `lifeboat holds claim`)".to_owned(),
            ),
            Standing::NoAdminToken => Some(
                "no admin token works, so whose the ID is cannot be told; check homeserver.admin_token".to_owned(),
            ),
            Standing::CannotTell(err) => Some(format!("cannot tell whether the ID changed hands ({err})")),
        }
    }

    /// Whether `user`, an account of this homeserver, is its registry
    /// person's now ([`crate::holds::its_persons_now`]).
    async fn standing_of(&self, user: &UserId) -> Standing {
        let registry = &self.state.registry;
        let access = crate::recover::admin_access(&self.state.config, registry).await;
        let Some(admin) = access.ok().and_then(|access| access.working()) else { return Standing::NoAdminToken };
        Standing::from(crate::holds::its_persons_now(registry, &admin, &crate::user_id::UserId::from(user)).await)
    }

    /// [`Bot::standing_of`] someone who writes or invites the bot to a DM.
    /// An account no listing has seen yet (a new one) asks the watcher for
    /// a listing, so it is known when they try again a few minutes later.
    async fn standing_of_dm_person(&self, person: &UserId) -> Standing {
        let standing = self.standing_of(person).await;
        // Another server's accounts are in no listing here.
        if matches!(standing, Standing::NotTheirs)
            && person.server_name() == self.me.server_name()
            && matches!(self.state.registry.account(&crate::user_id::UserId::from(person)).await, Ok(None))
        {
            self.state.watch.want_listing();
        }
        standing
    }

    /// Who reads the admin room, as far as lifeboat can vouch: this
    /// homeserver's members (joined or invited) through whom someone other
    /// than their registry person could read what is posted there (after a
    /// wipe, a stranger on a lost ID still joined to a surviving admin room:
    /// [`crate::holds::read_by_its_person_or_nobody`]), and whether some
    /// member could not be asked about just now. Another server's members
    /// are its to vouch for.
    async fn audience_of(&self, room: &Room) -> Audience {
        let (config, registry) = (&self.state.config, &self.state.registry);
        let unsure = Audience { unsure: Some(Unsure::NoAnswer), ..Audience::default() };
        let admin = match crate::recover::admin_access(config, registry).await {
            Ok(access) => access.working(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell whose accounts are in the admin room");
                return Audience { unsure: Some(Unsure::because(err.is_setup_fault())), ..Audience::default() };
            }
        };
        let (admin, members) = match (admin, room.members(RoomMemberships::ACTIVE).await) {
            (Some(admin), Ok(members)) => (admin, members),
            (Some(_), Err(err)) => {
                tracing::warn!(error = %err, "cannot tell who is in the admin room");
                return unsure;
            }
            // No admin token works: not a wipe the bot lived through (its own
            // session would have died with it), but a revoked token, which
            // the alerts must be able to tell the admins about. Answers go
            // only where no member of this server could be a stranger.
            (None, Ok(members)) => {
                return Audience::without_admin_token(&self.me, members.iter().map(|member| member.user_id()));
            }
            (None, Err(_)) => return unsure,
        };
        let mut audience = Audience::default();
        for member in members {
            let user = member.user_id();
            if user == self.me || user.server_name() != self.me.server_name() {
                continue;
            }
            let id = crate::user_id::UserId::from(user);
            match crate::holds::read_by_its_person_or_nobody(registry, &admin, &id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(member = %user, "not posting in the admin room: its account is not one lifeboat knows as its person's");
                    audience.unvouched.push(user.to_string());
                    // Made since the last listing (a new colleague, say): the
                    // next listing vouches for it, so one is asked for now.
                    if matches!(registry.account(&id).await, Ok(None)) {
                        self.state.watch.want_listing();
                        audience.listing_asked = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(member = %user, error = %err, "cannot tell whose a member of the admin room is");
                    // A setup fault outranks a passing one: waiting will not help.
                    audience.unsure = audience.unsure.max(Some(Unsure::because(err.is_setup_fault())));
                }
            }
        }
        audience
    }

    fn admin_room(&self) -> Option<OwnedRoomId> {
        self.admin_room.lock().ok().and_then(|room| room.clone())
    }

    fn configured_room(&self) -> Option<OwnedRoomId> {
        self.configured_room.lock().ok().and_then(|room| room.clone())
    }

    /// The room the bot now takes as the admin room, or none.
    fn set_admin_room(&self, room: Option<OwnedRoomId>) {
        if let Ok(mut current) = self.admin_room.lock() {
            *current = room;
        }
    }

    fn prefix(&self) -> &str {
        &self.config.command_prefix
    }
}

/// How a session ended.
enum Ended {
    Cancelled,
    /// The homeserver no longer knows the bot's token.
    TokenDead,
    Failed(String),
}

/// Runs the bot until `cancel`; `alerts` are the watcher's, for the room.
pub async fn run(state: Arc<Services>, mut alerts: UnboundedReceiver<String>, cancel: CancellationToken) {
    let Some(config) = state.config.bot.clone() else { return };
    let me: OwnedUserId = match crate::recover::service_user_id(&state.config).as_str().try_into() {
        Ok(me) => me,
        Err(err) => return tracing::error!(error = %err, "bot off: bot.user_id is not a Matrix user ID"),
    };
    let admins = config.admins.iter().filter_map(|admin| admin.as_str().try_into().ok()).collect();
    let bot = Arc::new(Bot {
        state,
        config,
        me,
        admins,
        configured_room: Mutex::new(None),
        admin_room: Mutex::new(None),
        asked_to_confirm: Mutex::default(),
        invited: Mutex::default(),
        joining: Mutex::default(),
        dms_checked: Mutex::default(),
        started_at: MilliSecondsSinceUnixEpoch::now(),
        unread: Mutex::new(Unread { read_up_to: MilliSecondsSinceUnixEpoch::now(), told_at: None }),
        handled: Mutex::default(),
        dm_commands: FixedWindows::new("bot DM", Duration::from_secs(60)),
    });
    let mut queued = Waiting::default();
    let mut pause = None;
    loop {
        let started = Instant::now();
        let ended = session(&bot, &mut alerts, &mut queued, &cancel).await;
        match &ended {
            Ended::Cancelled => return,
            Ended::TokenDead => {
                tracing::warn!("the bot's token was rejected: logging in again (recovering after a wipe if needed)")
            }
            Ended::Failed(reason) => tracing::warn!(error = %reason, "bot session ended; retrying"),
        }
        let next = retry_pause(pause, &ended, started.elapsed());
        pause = Some(next);
        if crate::watch::pause(next, &cancel).await {
            return;
        }
    }
}

/// The pause before the next login: short after a session that ran a while
/// or whose token died (a wipe wants a quick recovery), doubled after one
/// that failed at once again, so a homeserver that is away is not hammered.
fn retry_pause(last: Option<Duration>, ended: &Ended, lasted: Duration) -> Duration {
    match (last, ended) {
        (_, Ended::TokenDead) => Duration::from_secs(1),
        (Some(last), _) if lasted < LONGEST_RETRY_PAUSE => (last * 2).clamp(FIRST_RETRY_PAUSE, LONGEST_RETRY_PAUSE),
        _ => FIRST_RETRY_PAUSE,
    }
}

/// One login's life: connect, settle the admin room, handle events.
async fn session(
    bot: &Arc<Bot>,
    alerts: &mut UnboundedReceiver<String>,
    queued: &mut Waiting,
    cancel: &CancellationToken,
) -> Ended {
    let state = &bot.state;
    let login = match login::credentials(&state.config, &bot.config, &state.registry, &state.recover_lock).await {
        Ok(login) => login,
        Err(err) => return Ended::Failed(err.to_string()),
    };
    // On before the first sync: a command sent while the bot reconnected
    // arrives in it (older ones are skipped by their timestamp). Once per
    // client, which outlives the session (see `Devices`), so a command in
    // a sync a DM sender made meanwhile is handled too, and only once.
    let attach: crate::dm::AttachBot = {
        let bot = Arc::downgrade(bot);
        Arc::new(move |client: &Client| {
            if let Some(bot) = bot.upgrade() {
                client.add_event_handler_context(bot);
                client.add_event_handler(on_invite);
                client.add_event_handler(on_message);
            }
        })
    };
    let syncing =
        match login::client(&state.config, &bot.config, &state.registry, &login, &state.devices, &attach).await {
            Ok(syncing) => syncing,
            Err(err) => return Ended::Failed(err.to_string()),
        };
    tracing::info!(user = %login.user_id, device = %login.device_id, recovered = login.recovered, "bot logged in");
    let ended = connected(bot, &login, syncing, alerts, queued, cancel).await;
    if let Ended::TokenDead = ended {
        // The device is gone with its token: its client and store lease too.
        state.devices.forget(&login.device_id).await;
    }
    ended
}

/// The session on its device's client: settle the admin room, then handle
/// events until the session ends.
async fn connected(
    bot: &Arc<Bot>,
    login: &login::BotLogin,
    syncing: crate::dm::Syncing,
    alerts: &mut UnboundedReceiver<String>,
    queued: &mut Waiting,
    cancel: &CancellationToken,
) -> Ended {
    let client = syncing.client.clone();
    let mut changes = client.subscribe_to_session_changes();
    // Known before the first sync, which may bring the admin's invite.
    if let Some(configured) = &bot.config.admin_room {
        let resolved = resolve_room(&client, configured).await;
        if let Ok(mut slot) = bot.configured_room.lock() {
            slot.clone_from(&resolved);
        }
    }
    // Until the admin room is settled, the one kept from last time (or the
    // configured one) counts, so a command is never taken for a DM.
    if bot.admin_room().is_none() {
        let registry = &bot.state.registry;
        let stored = room_made_before(registry).await.ok().flatten();
        let by_alias = room_the_alias_named(registry, &bot.config).await.ok().flatten();
        // A local alias with no record vouches for nothing yet (anyone
        // may have pointed it at a room of theirs after a wipe).
        let configured = bot.configured_room().filter(|_| !local_alias(&bot.config, bot.me.server_name()));
        if let Some(room) = stored.or(by_alias).or(configured) {
            bot.set_admin_room(Some(room));
        }
    }
    // A first sync before settling the admin room. From the stored position
    // (kept across restarts) it brings what came while the session was
    // down; messages from before serve started are not taken as commands.
    let first = match client.sync_once(up_to_enough_events(SyncSettings::default().timeout(Duration::ZERO))).await {
        Ok(first) => first,
        Err(err) if is_unknown_token(&err) => return Ended::TokenDead,
        Err(err) => return Ended::Failed(format!("first sync failed: {err}")),
    };
    tell_of_unread_messages(bot, &client, &first);
    let made_new_room = match settle_admin_room(bot, &client, login.recovered).await {
        Ok(made) => made,
        Err(reason) => return Ended::Failed(reason),
    };
    if made_new_room && login.recovered {
        queued.alerts.insert(0, what_happened(bot));
    }
    invite_admins(bot, &client).await;
    // What changed in DMs while serve was down (now that the admin room is known).
    leave_what_stopped_being_a_dm(bot, &client, &first);

    // The sync loop runs in its own task: posting alerts or inviting admins
    // here must never hold it up (matrix-sdk may wait on the sync itself).
    let mut sync = AbortOnDropHandle::new(tokio::spawn({
        let (client, bot) = (client.clone(), bot.clone());
        async move {
            let settings = up_to_enough_events(SyncSettings::default().token(first.next_batch));
            let each = |response| {
                tell_of_unread_messages(&bot, &client, &response);
                leave_what_stopped_being_a_dm(&bot, &client, &response);
                async { LoopCtrl::Continue }
            };
            client.sync_with_callback(settings, each).await
        }
    }));
    let mut invite_check = tokio::time::interval(INVITE_CHECK_EVERY);
    loop {
        flush_alerts(bot, &client, queued).await;
        tokio::select! {
            result = &mut sync => {
                return match result {
                    Ok(Err(err)) if is_unknown_token(&err) => Ended::TokenDead,
                    Ok(Err(err)) => Ended::Failed(format!("sync failed: {err}")),
                    Ok(Ok(())) => Ended::Failed("sync stopped".to_owned()),
                    Err(err) => Ended::Failed(format!("sync task ended: {err}")),
                };
            }
            change = changes.recv() => {
                if let Ok(SessionChange::UnknownToken(_)) = change {
                    return Ended::TokenDead;
                }
            }
            alert = alerts.recv() => if let Some(text) = alert {
                queued.alerts.push(text);
                if queued.alerts.len() > MAX_QUEUED_ALERTS {
                    queued.alerts.remove(0);
                }
            },
            _ = invite_check.tick() => {
                if syncing.store_lost() {
                    return Ended::Failed("lost the lease on the device's crypto store (another lifeboat process may have it)".to_owned());
                }
                invite_admins(bot, &client).await
            }
            _ = cancel.cancelled() => return Ended::Cancelled,
        }
    }
}

fn is_unknown_token(err: &matrix_sdk::Error) -> bool {
    use matrix_sdk::ruma::api::error::ErrorKind;
    matches!(err.client_api_error_kind(), Some(ErrorKind::UnknownToken { .. }))
}

/// Finds the admin room: `bot.admin_room` (joined if invited or public),
/// else the one the bot made (kept in the registry). Makes a new one when
/// none is configured, or when the bot's account was recovered after a
/// wipe (the old room died with the database). Returns whether it made one.
async fn settle_admin_room(bot: &Arc<Bot>, client: &Client, recovered: bool) -> Result<bool, String> {
    let registry = &bot.state.registry;
    let joined = |room_id: &RoomId| client.get_room(room_id).is_some_and(|room| room.state() == RoomState::Joined);
    let configured = bot.configured_room();
    // An alias that names another room than the one the bot was in when it
    // was last settled there may have been taken by anyone after a wipe
    // (also one lifeboat did not recover from): the bot stays where it was,
    // and joins the new room only when an admin invites it.
    let named_before = room_the_alias_named(registry, &bot.config).await.map_err(|err| err.to_string())?;
    let alias_moved = named_before.as_ref().zip(configured.as_ref()).is_some_and(|(before, now)| before != now);
    let local_alias = local_alias(&bot.config, bot.me.server_name());
    // A room the bot is in already is no proof either: anyone's DM with it
    // is one. It is the admin room when the alias could not have been moved
    // there since (not this server's, or naming the room it named when the
    // bot was last settled by it), or, with no such record, when an admin
    // made it or an admin is in it, invite-only (the bot making it proves
    // nothing: its account makes every DM it sends).
    let joined_configured = configured.clone().filter(|room_id| joined(room_id));
    let mut settled = match joined_configured.clone() {
        Some(room_id) if named_for_sure(&bot.config, bot.me.server_name(), named_before.as_deref(), &room_id) => {
            Some(room_id)
        }
        Some(room_id) if named_before.is_none() && vouched_for_by_an_admin(bot, client, &room_id).await => {
            Some(room_id)
        }
        _ => None,
    };
    // The room the bot made itself after a wipe comes before joining the
    // configured one: a wipe frees the configured alias, and whoever points
    // it at a room of theirs must not get the bot and its alerts there.
    if settled.is_none() {
        settled = room_made_before(registry).await.map_err(|err| err.to_string())?.filter(|room_id| joined(room_id));
    }
    if settled.is_none() {
        settled = named_before.clone().filter(|room_id| joined(room_id));
    }
    // An alias of this homeserver is joined uninvited (or on an invite from
    // anyone but an admin) only while it names the room the bot was last in
    // by it: a wipe frees it for anyone, and the bot may not know of the
    // wipe (its account registered again by hand, say). Never right after
    // lifeboat recovered from a wipe itself.
    // With no admins to invite it, a first start still joins as before.
    let alias_vouched =
        !local_alias || (!recovered && !alias_moved && (named_before.is_some() || bot.admins.is_empty()));
    let never = alias_moved || (recovered && local_alias);
    if settled.is_none()
        && let Some(room_id) = configured.filter(|_| !never)
        && (alias_vouched || invited_by_an_admin(bot, client, &room_id).await)
        && client.join_room_by_id(&room_id).await.is_ok()
    {
        settled = Some(room_id);
    }
    if let Some(room_id) = settled {
        tracing::info!(room = %room_id, "in the admin room");
        remember_the_aliass_room(bot, &room_id).await;
        bot.set_admin_room(Some(room_id));
        return Ok(false);
    }
    // Not the admin room, whatever was assumed before settling.
    if joined_configured.is_some() && bot.admin_room() == joined_configured {
        bot.set_admin_room(None);
    }
    if !recovered && let Some(configured) = bot.config.admin_room.as_deref() {
        let why = if joined_configured.is_some() {
            "bot.admin_room's alias names a room the bot is in that nothing vouches for (after a wipe anyone may take an alias): it becomes the admin room once it is invite-only with an admin in it"
        } else if alias_moved {
            "bot.admin_room's alias names another room than the one the bot was in (after a wipe anyone may take an alias): the bot joins it only when an admin invites it"
        } else {
            "the bot is not in bot.admin_room: invite it there from an admin account"
        };
        tracing::warn!(room = configured, "{why}");
        return Ok(false);
    }
    let mut request = CreateRoomRequest::new();
    request.name = Some(format!("lifeboat admin ({})", bot.state.config.homeserver.server_name));
    request.topic = Some(format!("Alerts and commands of lifeboat. Send `{} help`.", bot.prefix()));
    request.preset = Some(RoomPreset::PrivateChat);
    // The plain request: `Client::create_room` would wait for a sync.
    let room_id = client.send(request).await.map_err(|err| format!("cannot create an admin room: {err}"))?.room_id;
    registry.set_setting(ROOM_SETTING, room_id.as_str()).await.map_err(|err| err.to_string())?;
    let _ = client.sync_once(up_to_enough_events(SyncSettings::default().timeout(Duration::ZERO))).await;
    tracing::info!(room = %room_id, "made a new admin room");
    if let Ok(mut invited) = bot.invited.lock() {
        invited.clear();
    }
    bot.set_admin_room(Some(room_id));
    Ok(true)
}

/// The admin room the bot made itself, as the registry keeps it.
async fn room_made_before(registry: &crate::registry::Registry) -> crate::registry::Result<Option<OwnedRoomId>> {
    Ok(registry.setting(ROOM_SETTING).await?.and_then(|id| OwnedRoomId::try_from(id).ok()))
}

/// Is the bot invited to `room_id` by one of the admins it obeys?
async fn invited_by_an_admin(bot: &Bot, client: &Client, room_id: &RoomId) -> bool {
    let Some(room) = client.get_room(room_id).filter(|room| room.state() == RoomState::Invited) else { return false };
    match room.invite_details().await {
        Ok(invite) => bot.obeys(&invite.inviter_id).await,
        Err(_) => false,
    }
}

/// Is `room_id` (a room the bot is in) invite-only, and did an admin the
/// bot obeys make it, or is such an admin in it? A stranger can make
/// neither happen.
/// That the bot made it proves nothing: its account also makes every DM it
/// sends (a notice, a subscription code), and the admin room it made itself
/// is known by the registry's record. Nor does an admin in a room anyone
/// may join, or its maker: lifeboat's own account is in public rooms it
/// rejoined after a wipe, admins' among them, and anyone may join one and
/// point the freed alias at it.
async fn vouched_for_by_an_admin(bot: &Bot, client: &Client, room_id: &RoomId) -> bool {
    let Some(room) = client.get_room(room_id).filter(invite_only) else { return false };
    let maker = maker_of(&room);
    let members = room.members(RoomMemberships::JOIN).await.unwrap_or_default();
    let joined_admins = members.iter().map(|member| member.user_id().to_owned()).filter(|id| bot.admins.contains(id));
    for admin in maker.into_iter().filter(|id| bot.admins.contains(id)).chain(joined_admins) {
        if bot.obeys(&admin).await {
            return true;
        }
    }
    false
}

/// Is `bot.admin_room` an alias of this homeserver (`server`), one a wipe frees?
fn local_alias(config: &BotConfig, server: &ServerName) -> bool {
    configured_alias(config).is_some_and(|alias| alias.server_name() == server)
}

/// Whether `room`, which `bot.admin_room` names and the bot is in, is the
/// admin room on that alone: the setting is a room ID or another server's
/// alias (no wipe here frees those), or its alias named this very room
/// when the bot last settled there (`named_before`). One rule for serve
/// settling and for the drill's test message.
fn named_for_sure(config: &BotConfig, server: &ServerName, named_before: Option<&RoomId>, room: &RoomId) -> bool {
    !local_alias(config, server) || named_before == Some(room)
}

/// `bot.admin_room`, when it is an alias.
fn configured_alias(config: &BotConfig) -> Option<&RoomAliasId> {
    config.admin_room.as_deref().and_then(|room| <&RoomAliasId>::try_from(room).ok())
}

/// The room `bot.admin_room`'s alias named when the bot was last settled
/// there; `None` when it is a room ID or the bot never was.
async fn room_the_alias_named(
    registry: &crate::registry::Registry,
    config: &BotConfig,
) -> crate::registry::Result<Option<OwnedRoomId>> {
    let Some(alias) = configured_alias(config) else { return Ok(None) };
    let stored = registry.setting(ALIAS_ROOM_SETTING).await?.unwrap_or_default();
    Ok(stored
        .split_once(' ')
        .filter(|(stored_alias, _)| *stored_alias == alias.as_str())
        .and_then(|(_, room_id)| OwnedRoomId::try_from(room_id).ok()))
}

/// Keeps the room the configured alias names now, when the bot settles
/// there (by an admin's invite, or as the room it was in before).
async fn remember_the_aliass_room(bot: &Bot, room_id: &RoomId) {
    let Some(alias) = configured_alias(&bot.config) else { return };
    if bot.configured_room().as_deref() != Some(room_id) {
        return;
    }
    if let Err(err) = bot.state.registry.set_setting(ALIAS_ROOM_SETTING, &format!("{alias} {room_id}")).await {
        tracing::warn!(error = %err, "cannot keep the room bot.admin_room's alias names");
    }
}

async fn resolve_room(client: &Client, configured: &str) -> Option<OwnedRoomId> {
    if let Ok(room_id) = OwnedRoomId::try_from(configured) {
        return Some(room_id);
    }
    let alias = <&RoomAliasId>::try_from(configured).ok()?;
    client.resolve_room_alias(alias).await.ok().map(|response| response.room_id)
}

/// Invites the admins who are neither in the admin room nor invited, once
/// their account exists (after a wipe they come back one by one).
async fn invite_admins(bot: &Arc<Bot>, client: &Client) {
    let Some(room) = bot.admin_room().and_then(|id| client.get_room(&id)) else { return };
    for admin in &bot.admins {
        if bot.invited.lock().is_ok_and(|invited| invited.contains(admin)) {
            continue;
        }
        // From the local state only: asking the server here could wait on
        // the sync. An invite to someone already in is answered below.
        let membership = room.get_member_no_sync(admin).await.ok().flatten().map(|m| m.membership().clone());
        if matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
            continue;
        }
        // A local admin once the account exists, and never a stranger
        // holding an admin's ID.
        if bot.why_not_obeyed(admin).await.is_some() {
            continue;
        }
        match room.invite_user_by_id(admin).await {
            Ok(()) => tracing::info!(admin = %admin, "invited an admin to the admin room"),
            // Joined meanwhile (or the member list was stale): nothing to do.
            Err(err) if err.to_string().contains("already in the room") => {}
            Err(err) => {
                tracing::warn!(admin = %admin, error = %err, "could not invite an admin");
                continue;
            }
        }
        if let Ok(mut invited) = bot.invited.lock() {
            invited.insert(admin.clone());
        }
    }
}

struct Unread {
    read_up_to: MilliSecondsSinceUnixEpoch,
    told_at: Option<Instant>,
}

/// Alerts waiting for an admin room to post them in, kept across sessions.
#[derive(Default)]
struct Waiting {
    alerts: Vec<String>,
    /// When they were last held back for someone in the admin room.
    held_back_at: Option<Instant>,
}

/// Posts queued alerts once there is an admin room to post them in, and
/// nobody there lifeboat cannot vouch for (they wait until then).
async fn flush_alerts(bot: &Arc<Bot>, client: &Client, queued: &mut Waiting) {
    let Some(room) = bot.admin_room().and_then(|id| client.get_room(&id)) else { return };
    // While someone there stops them, asked again once a minute, not at
    // every pass of the loop.
    if queued.alerts.is_empty() || queued.held_back_at.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    if !bot.audience_of(&room).await.takes_alerts() {
        queued.held_back_at = Some(Instant::now());
        return;
    }
    while let Some(text) = queued.alerts.first() {
        if let Err(err) = room.send(safe_message(text)).await {
            tracing::warn!(error = %err, "could not post an alert in the admin room; will retry");
            return;
        }
        queued.alerts.remove(0);
    }
}

/// The first message in a room made after a wipe.
fn what_happened(bot: &Bot) -> String {
    let server = &bot.state.config.homeserver.server_name;
    let seen = bot.state.watch.current();
    let mut text = format!(
        "**lifeboat is back after {server} lost its database.** My old token and admin room were gone, so I \
         re-created my account through the shared secret and made this room. Admins are invited as soon as \
         their accounts exist again."
    );
    if seen.verdict.is_some() {
        text.push_str(&format!("\n\nLast check: **{}**: {}.", seen.verdict_label(), seen.reason.trim_end_matches('.')));
    }
    text.push_str(&format!(
        "\n\nNext: `{} status`, then `{0} incident open <title>` with the postmortem on the following lines.",
        bot.prefix()
    ));
    text
}

/// Invites: to the admin room from an admin, or a DM from someone of this
/// homeserver whose account is theirs (people manage their contacts by
/// DM). Everything else is declined.
async fn on_invite(event: StrippedRoomMemberEvent, room: Room, Ctx(bot): Ctx<Arc<Bot>>) {
    if event.state_key != bot.me || event.content.membership != MembershipState::Invite {
        return;
    }
    let room_id = room.room_id().to_owned();
    let to_admin_room = bot.configured_room().as_ref() == Some(&room_id) || bot.admin_room().as_ref() == Some(&room_id);
    tokio::spawn(async move {
        let declined = if to_admin_room {
            (!bot.obeys(&event.sender).await).then_some("not from an admin the bot obeys")
        } else {
            why_not_a_dm(&bot, &room, &event).await
        };
        if let Some(why) = declined {
            tracing::info!(room = %room_id, from = %event.sender, why, "declined an invite");
            let _ = room.leave().await;
            return;
        }
        let mut delay = Duration::from_secs(1);
        let joined = loop {
            match room.join().await {
                Ok(_) => break true,
                Err(err) if delay > Duration::from_secs(60) => {
                    tracing::warn!(room = %room_id, error = %err, "could not join");
                    break false;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        };
        if !to_admin_room {
            bot.done_joining_dm(&event.sender);
        }
        if !joined {
            return;
        }
        if to_admin_room {
            remember_the_aliass_room(&bot, &room_id).await;
            bot.set_admin_room(Some(room_id));
            let hello = format!("lifeboat is here. Send `{} help` for what I can do.", bot.prefix());
            let _ = room.send(safe_message(&hello)).await;
        }
    });
}

/// Why the bot does not take an invite to a DM (`None`: it does, and the
/// room is counted among its inviter's from now on).
async fn why_not_a_dm(bot: &Bot, room: &Room, event: &StrippedRoomMemberEvent) -> Option<&'static str> {
    if !takes_dm_invite(&bot.me, &event.sender, event.content.is_direct) {
        return Some("not a DM from this homeserver");
    }
    if !made_by(room, &event.sender) {
        return Some("a room its inviter did not make");
    }
    if !invite_only(room) {
        return Some("a room anyone may join");
    }
    // Accounts registered while registration is open after a wipe must
    // not grow the bot's sync with rooms, three each.
    match bot.standing_of_dm_person(&event.sender).await {
        Standing::Theirs => {}
        Standing::NotTheirs => return Some("not an account lifeboat knows as its person's (yet)"),
        Standing::NoAdminToken | Standing::CannotTell(_) => {
            return Some("whose the inviter's account is cannot be told now");
        }
    }
    if !bot.start_joining_dm(&room.client(), &event.sender) {
        return Some("its inviter has as many DM rooms with the bot as one may");
    }
    None
}

/// DM rooms one person may have with the bot: each is in its sync while
/// it is a DM, so one account must not fill it by inviting it again and
/// again. More than one, for a person whose first DM broke.
const DM_ROOMS_PER_PERSON: usize = 3;

impl Bot {
    /// Whether the bot may join one more DM room `person` made, counting
    /// those it is joining now; if so, that one is counted from now on.
    fn start_joining_dm(&self, client: &Client, person: &OwnedUserId) -> bool {
        let mut joining = self.joining.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = joining.get(person).copied().unwrap_or(0);
        if dm_rooms_with(self, client, person) + now >= DM_ROOMS_PER_PERSON {
            return false;
        }
        joining.insert(person.clone(), now + 1);
        true
    }

    /// The join is over (the room counts among the joined ones, or failed).
    fn done_joining_dm(&self, person: &OwnedUserId) {
        let mut joining = self.joining.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = joining.get_mut(person) {
            *count -= 1;
            if *count == 0 {
                joining.remove(person);
            }
        }
    }
}

/// Rooms `person` made that the bot is in, the admin room aside, and
/// the DMs of theirs it left ([`leave_what_stopped_being_a_dm`]): counted by
/// maker, which never changes, so leaving a DM or filling it with others
/// does not free a place for one more.
fn dm_rooms_with(bot: &Bot, client: &Client, person: &OwnedUserId) -> usize {
    let admin_room = bot.admin_room();
    let counted = |room: &Room| match room.state() {
        RoomState::Joined => true,
        // A ban comes in a sync as leaving: it frees no place either.
        RoomState::Left => room.direct_targets_length() > 0,
        _ => false,
    };
    let theirs = |room: &Room| made_by(room, person) && admin_room.as_deref() != Some(room.room_id());
    client.rooms().iter().filter(|room| counted(room) && theirs(room)).count()
}

/// Leaves each room a person brought the bot into as a DM once it is no
/// longer one (a third member, joined or invited, or a room opened to
/// anyone, or its person gone): the bot answers nothing there, and would
/// carry its members and messages in every sync. Only the rooms it joined
/// as a DM: its account may be lifeboat's own, which stays in the rooms it
/// rejoined for people and those it made again.
fn leave_what_stopped_being_a_dm(bot: &Arc<Bot>, client: &Client, response: &SyncResponse) {
    // The SDK marks a DM the bot joined in `m.direct` after the join, and
    // the mark comes back in a later sync, maybe with no news of the room:
    // each room it marks is checked once then, and after with its news.
    let marked = response
        .account_data
        .iter()
        .any(|event| event.get_field::<String>("type").ok().flatten().as_deref() == Some("m.direct"));
    let unchecked = |room: &Room| bot.dms_checked.lock().is_ok_and(|checked| !checked.contains(room.room_id()));
    let newly_marked = client.joined_rooms().into_iter().filter(|room| marked && unchecked(room));
    let with_news = response.rooms.joined.keys().filter_map(|room_id| client.get_room(room_id));
    for room in with_news.chain(newly_marked) {
        let Some(person) = person_of_dm(bot, &room) else { continue };
        if let Ok(mut checked) = bot.dms_checked.lock() {
            checked.insert(room.room_id().to_owned());
        }
        let bot = bot.clone();
        bot.state.background.clone().spawn(async move {
            if private_to(&room, &bot.me, &person).await == Some(false) {
                tracing::info!(room = %room.room_id(), "left a DM that is no longer one");
                if let Err(err) = room.leave().await {
                    tracing::warn!(room = %room.room_id(), error = %err, "could not leave a DM that is no longer one");
                }
            }
        });
    }
}

/// Who brought the bot into `room` as a DM: its maker, when the bot took
/// it as one (the SDK marks a room joined on a direct invite in the bot's
/// own `m.direct`) and it is no admin room.
fn person_of_dm(bot: &Bot, room: &Room) -> Option<OwnedUserId> {
    let maker = maker_of(room)?;
    let admin_room = [bot.admin_room(), bot.configured_room()].into_iter().flatten().any(|id| id == room.room_id());
    (maker != bot.me && room.direct_targets_length() > 0 && !admin_room).then_some(maker)
}

/// Whether `person` made the room (from its creation event; unknown counts
/// as no). The bot takes a DM invite only to a room its inviter made: any
/// other room, however big, is not theirs to bring the bot into.
fn made_by(room: &Room, person: &UserId) -> bool {
    maker_of(room).is_some_and(|maker| maker == person)
}

/// Who sent the room's creation event. Not the room's "creators": from room
/// version 12 the maker may name anyone an additional creator, without
/// their say (the bot, an admin, or people to fill their DM cap with).
fn maker_of(room: &Room) -> Option<OwnedUserId> {
    room.create_content().map(|content| content.creator)
}

/// Tells the admin room when a sync brought only its latest
/// [`EVENTS_PER_ROOM_AND_SYNC`] events and some of those cut off are newer
/// than any the bot read there before (or than serve's start): commands
/// among them were never read. History a new device syncs afresh is not.
fn tell_of_unread_messages(bot: &Arc<Bot>, client: &Client, response: &SyncResponse) {
    let Some(room_id) = bot.admin_room() else { return };
    let Some(update) = response.rooms.joined.get(&room_id) else { return };
    let sent_at = |event: &matrix_sdk::deserialized_responses::TimelineEvent| {
        event.raw().get_field::<MilliSecondsSinceUnixEpoch>("origin_server_ts").ok().flatten()
    };
    let (oldest, newest) =
        (update.timeline.events.first().and_then(sent_at), update.timeline.events.last().and_then(sent_at));
    let Ok(mut unread) = bot.unread.lock() else { return };
    let read_up_to = unread.read_up_to;
    unread.read_up_to = read_up_to.max(newest.unwrap_or(read_up_to));
    let missed = update.timeline.limited && oldest.is_some_and(|oldest| oldest > read_up_to);
    if !missed || unread.told_at.is_some_and(|at| at.elapsed() < UNREAD_NOTICE_EVERY) {
        return;
    }
    unread.told_at = Some(Instant::now());
    let Some(room) = client.get_room(&room_id) else { return };
    tracing::warn!("more messages reached the admin room at once than a sync brings: the older ones were not read");
    let bot = bot.clone();
    bot.state.background.clone().spawn(async move {
        if bot.audience_of(&room).await.takes_alerts() {
            let text = format!(
                "More than {EVENTS_PER_ROOM_AND_SYNC} messages reached this room at once, and I read only the \
                 latest {EVENTS_PER_ROOM_AND_SYNC}: send again any command that got no answer."
            );
            reply_to(&room, &text).await;
        }
    });
}

/// Whether only those invited may join `room` (by its state as the invite
/// or the sync showed it): a DM anyone may join could fill the bot's sync
/// with members, and is no private room for a code either.
fn invite_only(room: &Room) -> bool {
    use matrix_sdk::ruma::events::room::join_rules::JoinRule;
    matches!(room.join_rule(), Some(JoinRule::Invite))
}

/// A DM from this homeserver's people: only they have contacts to manage,
/// and nobody elsewhere can fill the bot's sync with rooms by inviting it.
fn takes_dm_invite(me: &OwnedUserId, sender: &OwnedUserId, is_direct: Option<bool>) -> bool {
    is_direct == Some(true) && sender.server_name() == me.server_name()
}

/// Admin commands in the admin room; contact commands in DMs.
async fn on_message(event: OriginalSyncRoomMessageEvent, room: Room, Ctx(bot): Ctx<Arc<Bot>>) {
    if event.sender == bot.me || room.state() != RoomState::Joined || event.origin_server_ts < bot.started_at {
        return;
    }
    let MessageType::Text(text) = &event.content.msgtype else { return };
    let body = text.body.clone();
    let sender = event.sender.clone();
    if bot.admin_room().as_deref() == Some(room.room_id()) {
        if !bot.obeys(&sender).await {
            // No data for anyone else, not even an error.
            if commands::parse_admin(bot.prefix(), &body).is_some() {
                tracing::info!(from = %sender, "ignored a command from someone who is not in bot.admins");
            }
            return;
        }
        let Some(parsed) = commands::parse_admin(bot.prefix(), &body) else { return };
        // Recorded only once parsed, so talk in the room does not push commands out of the memory.
        if !bot.handled.lock().is_ok_and(|mut handled| handled.commands.first_time(&event.event_id)) {
            return;
        }
        // Commands can take long (sync, notify): off the sync loop, and
        // waited for when serve stops.
        bot.state.background.clone().spawn(async move {
            if let Some(why) = bot.audience_of(&room).await.withholds_answers() {
                return reply_to(&room, &why).await;
            }
            let reply = match parsed {
                Ok(command) => admin::execute(&bot, &room, &sender, command).await,
                Err(bad) => bad.0,
            };
            reply_to(&room, &reply).await;
        });
    } else {
        // Cheap first (from the room's state, no request): a room that
        // cannot be a DM costs no member list, however often someone writes.
        if !private_room_of(&room, &bot.me, &sender)
            || !bot.handled.lock().is_ok_and(|mut handled| handled.dms.first_time(&event.event_id))
        {
            return;
        }
        if !bot.dm_commands.hit(sender.to_string(), None, DM_COMMANDS_PER_MINUTE) {
            tracing::debug!(from = %sender, "a DM command past the minute's few: not answered");
            return;
        }
        bot.state.background.clone().spawn(async move {
            if private_to(&room, &bot.me, &sender).await != Some(true) {
                return;
            }
            // A room lifeboat re-created has two members until its other
            // former members come back, and shows them its history then.
            let recreated = bot.state.registry.is_recreated_room(room.room_id().as_str()).await;
            if recreated.unwrap_or(true) {
                return;
            }
            let reply = match commands::parse_person(bot.prefix(), &body) {
                Ok(command) => people::run(&bot, &sender, command).await.unwrap_or_else(|reply| reply),
                Err(bad) => bad.0,
            };
            reply_to(&room, &reply).await;
        });
    }
}

/// A room the sender or the bot made, that nobody joins uninvited and
/// whose history is not open to the world: not a room someone else made,
/// left, and let the sender into, to read the answers later.
fn private_room_of(room: &Room, me: &OwnedUserId, sender: &OwnedUserId) -> bool {
    use matrix_sdk::ruma::events::room::history_visibility::HistoryVisibility;
    invite_only(room)
        && room.history_visibility().is_some_and(|seen| seen != HistoryVisibility::WorldReadable)
        && (made_by(room, sender) || made_by(room, me))
}

/// Whether nobody but `person` and the bot can read `room`: a
/// [`private_room_of`] them whose members, joined or invited, are exactly
/// the two (the member list is fetched when lazy loading left it
/// incomplete). `None` when it cannot be had now. Personal commands are
/// answered only there, and a DM that is no longer one is left.
async fn private_to(room: &Room, me: &OwnedUserId, person: &OwnedUserId) -> Option<bool> {
    if !private_room_of(room, me, person) {
        return Some(false);
    }
    match room.members(RoomMemberships::ACTIVE).await {
        Ok(members) => Some(
            members.len() == 2
                && members.iter().any(|member| member.user_id() == person)
                && members.iter().any(|member| member.user_id() == me),
        ),
        Err(err) => {
            tracing::warn!(room = %room.room_id(), error = %err, "cannot tell who is in a DM");
            None
        }
    }
}

/// Whether an account is its registry person's now, as far as lifeboat
/// can tell: only such accounts are obeyed, and only they have contacts to
/// manage or a DM with the bot.
pub(super) enum Standing {
    Theirs,
    /// Someone else's (registered again after a loss), or an account no
    /// listing has seen yet.
    NotTheirs,
    /// No admin token works, so Synapse cannot be asked.
    NoAdminToken,
    CannotTell(crate::holds::CannotTell),
}

impl From<Result<bool, crate::holds::CannotTell>> for Standing {
    fn from(answer: Result<bool, crate::holds::CannotTell>) -> Standing {
        match answer {
            Ok(true) => Standing::Theirs,
            Ok(false) => Standing::NotTheirs,
            Err(err) => Standing::CannotTell(err),
        }
    }
}

/// Who reads the admin room, as far as lifeboat can vouch ([`Bot::audience_of`]).
#[derive(Default)]
struct Audience {
    /// Members whose account is not their registry person's.
    unvouched: Vec<String>,
    /// Why whose some member's account is cannot be told now.
    unsure: Option<Unsure>,
    /// Some unvouched member is an account no listing has seen: the
    /// watcher was asked for one.
    listing_asked: bool,
}

/// In order of what outranks what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unsure {
    /// The member list, or whose some member's account is, could not be
    /// asked just now (Synapse or the registry failing).
    NoAnswer,
    /// No admin token works, so Synapse cannot be asked at all.
    NoAdminToken,
    /// Asking failed in a way that will not pass by itself (a token that
    /// is not a server admin's, `homeserver.url` at another server).
    Setup,
}

impl Unsure {
    /// Why, from whether the failure is lifeboat's setup.
    fn because(setup_fault: bool) -> Unsure {
        if setup_fault { Unsure::Setup } else { Unsure::NoAnswer }
    }
}

impl Audience {
    /// With no working admin token: sure only when no member is of this
    /// server (another server's are its to vouch for).
    fn without_admin_token<'a>(me: &UserId, mut members: impl Iterator<Item = &'a UserId>) -> Audience {
        let local = members.any(|member| member != me && member.server_name() == me.server_name());
        Audience { unsure: local.then_some(Unsure::NoAdminToken), ..Audience::default() }
    }

    /// Alerts go while unsure: they may be about that very failure.
    fn takes_alerts(&self) -> bool {
        self.unvouched.is_empty()
    }

    /// Why an answer an admin asked for (it may hold people's data) is not
    /// posted, if it is not.
    fn withholds_answers(&self) -> Option<String> {
        if !self.unvouched.is_empty() {
            return Some(not_posting_while(&self.unvouched, self.listing_asked));
        }
        self.unsure.map(|unsure| match unsure {
            Unsure::NoAnswer => "I cannot tell right now whose accounts are in this room (Synapse or the registry did not answer), so I post no answer: send the command again in a minute.".to_owned(),
            Unsure::NoAdminToken => "I cannot tell whose accounts are in this room: lifeboat has no working admin token to ask Synapse with (`lifeboat check` says why), so I post no answer until it has one.".to_owned(),
            // The room may hold a stranger: what is wrong is for the host's log, not for it.
            Unsure::Setup => "I cannot tell whose accounts are in this room: asking Synapse fails in a way that will not pass by itself (`lifeboat check` on the lifeboat host says what to fix), so I post no answer until it is fixed.".to_owned(),
        })
    }
}

/// The one line an admin gets instead of an answer while someone lifeboat
/// cannot vouch for is in the admin room (it names them, and nothing else).
fn not_posting_while(unvouched: &[String], listing_asked: bool) -> String {
    let new_account = if listing_asked {
        "a new account: lifeboat reads the listing again as soon as its pacing allows, within minutes on most servers, or `lifeboat sync` on the lifeboat host does it now"
    } else {
        "a new account: `lifeboat sync` adds it"
    };
    format!(
        "I post nothing in this room while {} {} in it: no listing has seen {} as its person's account yet ({new_account}), or it was registered again by someone else after a loss (settle it with `lifeboat holds claim`, or remove it from this room).",
        unvouched.join(", "),
        if unvouched.len() == 1 { "is" } else { "are" },
        if unvouched.len() == 1 { "it" } else { "each" },
    )
}

async fn reply_to(room: &Room, markdown: &str) {
    if let Err(err) = room.send(safe_message(markdown)).await {
        tracing::warn!(room = %room.room_id(), error = %err, "could not reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_admin_token_answers_go_only_where_no_member_is_of_this_server() {
        let id = |text: &str| OwnedUserId::try_from(text).unwrap();
        let (me, remote, local) = (id("@lifeboat:ours.example"), id("@ops:theirs.example"), id("@eve:ours.example"));
        let only_remote = Audience::without_admin_token(&me, [&*me, &*remote].into_iter());
        assert!(only_remote.withholds_answers().is_none());
        let with_local = Audience::without_admin_token(&me, [&*me, &*remote, &*local].into_iter());
        assert!(with_local.withholds_answers().unwrap().contains("no working admin token"));
        assert!(with_local.takes_alerts(), "alerts tell of the token");
    }

    fn failed() -> Ended {
        Ended::Failed("homeserver away".into())
    }

    #[test]
    fn quick_failures_double_the_pause_up_to_a_minute() {
        let quick = Duration::from_secs(1);
        let mut pause = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            pause = Some(retry_pause(pause, &failed(), quick));
            seen.push(pause.unwrap().as_secs());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn an_event_is_handled_once_and_only_the_oldest_are_forgotten() {
        let event = |n: usize| matrix_sdk::ruma::OwnedEventId::try_from(format!("$e{n}:x.org")).unwrap();
        let mut handled = HandledEvents::default();
        assert!(handled.first_time(&event(0)));
        assert!(!handled.first_time(&event(0)), "seen again");
        for n in 1..=HandledEvents::KEPT {
            assert!(handled.first_time(&event(n)));
        }
        assert!(handled.first_time(&event(0)), "the oldest is forgotten past KEPT");
        assert!(!handled.first_time(&event(HandledEvents::KEPT)), "the newest are kept");
        assert_eq!(handled.seen.len(), HandledEvents::KEPT);
    }

    #[test]
    fn a_flood_of_dms_does_not_push_an_admins_command_out_of_the_memory() {
        let event = |n: usize| matrix_sdk::ruma::OwnedEventId::try_from(format!("$e{n}:x.org")).unwrap();
        let mut handled = Handled::default();
        assert!(handled.commands.first_time(&event(0)));
        for n in 1..=2 * HandledEvents::KEPT {
            handled.dms.first_time(&event(n));
        }
        assert!(!handled.commands.first_time(&event(0)), "still known: not run again");
    }

    #[test]
    fn a_session_that_ran_a_while_starts_the_pauses_over() {
        let long_ago = Some(LONGEST_RETRY_PAUSE);
        assert_eq!(retry_pause(long_ago, &failed(), Duration::from_secs(3600)), FIRST_RETRY_PAUSE);
    }

    #[test]
    fn the_bot_takes_dm_invites_from_its_own_homeserver_only() {
        let id = |text: &str| OwnedUserId::try_from(text).unwrap();
        let me = id("@lifeboat:example.org");
        assert!(takes_dm_invite(&me, &id("@ann:example.org"), Some(true)));
        assert!(!takes_dm_invite(&me, &id("@ann:example.org"), None), "not a DM");
        assert!(!takes_dm_invite(&me, &id("@mallory:elsewhere.example"), Some(true)), "another server's");
    }

    #[test]
    fn a_dead_token_is_recovered_at_once() {
        let long_ago = Some(LONGEST_RETRY_PAUSE);
        assert_eq!(retry_pause(long_ago, &Ended::TokenDead, Duration::from_secs(1)), Duration::from_secs(1));
    }
}
