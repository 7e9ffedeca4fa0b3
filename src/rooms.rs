//! Rooms come back: the room registry kept by every sync; lifeboat's own
//! account (with local aliases and directory listing), then people whose ID
//! is theirs again, back in rooms that survived on other servers; rooms
//! that lived only here made again.
//!
//! A room with joined members on other servers lives on there after a wipe,
//! and its surviving state still holds a returning local account's old
//! membership (../shared/SYNAPSE_NOTES.md, "Rooms").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HoldPolicy};
use crate::lease::{Held, Lease};
use crate::pace::{call_in_paced_groups, rest_after};
use crate::plain_text;
use crate::recover::service_user_id;
use crate::registry::{
    self, Actor, FormerMember, Registry, Rejoin, RejoinOutcome, Room, RoomDetails, RoomRecord, RoomState,
};
use crate::synapse::{self, JoinOutcome, LISTING_ATTEMPTS, ListedRoom, StateEvent, SynapseClient};
use crate::user_id::UserId;

/// Rooms read per listing page. Synapse counts and sorts every room for
/// each page, so few big pages are much cheaper than many small ones
/// (5,000 rooms: 0.37 s in pages of 500, 0.10 s in one; benches/README.md).
const ROOMS_PAGE: u32 = 5000;
/// Rooms whose state is read again per sync because it is old, at most.
const ROOM_REFRESHES_PER_SYNC: i64 = 500;
/// Rooms whose state is read at once, and people joined at once. Synapse
/// is one Python process: more in flight only queue there.
pub const ROOM_CONCURRENCY: usize = 4;
/// `via` servers kept per room: those of its most powerful joined members,
/// then of the most joined members ([`details_from_state`]).
const VIA_SERVERS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    #[error("the room listing failed, so the room registry was left unchanged: {0}")]
    Listing(synapse::Error),
    #[error(transparent)]
    Synapse(#[from] synapse::Error),
    #[error(
        "the room list kept changing while it was read ({listed} rooms read, Synapse counts {total}), so the room registry was left unchanged"
    )]
    Inconsistent { listed: u64, total: i64 },
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{0}")]
    Refused(String),
    /// Each face says where the rooms are listed.
    #[error("{0} is not in the room registry")]
    UnknownRoom(String),
    #[error("stopped before the rooms were read, so the room registry was left unchanged; the next sync reads them")]
    Stopped,
    #[error(
        "another run ({holder}) is bringing people back into their rooms now (serve's watcher does every round); \
         let it finish, or if that process is gone, try again after {until}"
    )]
    Busy { holder: String, until: String },
}

/// What a room sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomSyncSummary {
    /// Rooms on the homeserver now.
    pub listed: u64,
    /// Rooms whose state was read (new or changed since the last sync).
    pub refreshed: u64,
    /// Rooms whose state could not be read (read again next time).
    pub failed: u64,
}

/// Reads the complete room listing, and the state of new or changed rooms,
/// into the registry, paced like the account listing (`pace`: a share of
/// Synapse's time). A listing that fails part-way, or a `stop`, changes
/// nothing: rooms missing from it are never read as gone.
pub async fn sync_rooms(
    registry: &Registry,
    client: &SynapseClient,
    server_name: &str,
    refresh_after: std::time::Duration,
    pace: Option<f64>,
    stop: &CancellationToken,
) -> Result<RoomSyncSummary, RoomsError> {
    let listed = complete_listing(client, pace, stop).await?;
    let known = registry.room_fingerprints().await?;
    // Read again though unchanged by the fingerprint (a new topic or
    // avatar does not change it): the oldest reads, a few hundred a sync.
    let before = crate::registry::now_ms() - refresh_after.as_millis() as i64;
    let old: std::collections::HashSet<String> =
        registry.rooms_read_before(before, ROOM_REFRESHES_PER_SYNC).await?.into_iter().collect();
    let mut summary = RoomSyncSummary { listed: listed.len() as u64, ..RoomSyncSummary::default() };
    let mut records: Vec<RoomRecord> = listed.into_iter().map(record_of).collect();
    let to_read: Vec<(usize, String)> = records
        .iter()
        .enumerate()
        .filter(|(_, room)| {
            known.get(&room.room_id) != Some(&(room.state_events, room.joined_local, room.joined_remote))
                || old.contains(&room.room_id)
        })
        .map(|(index, room)| (index, room.room_id.clone()))
        .collect();
    let details = call_in_paced_groups(to_read, ROOM_CONCURRENCY, pace, stop, |(index, room_id)| async move {
        (index, read_details(client, &room_id, server_name).await)
    });
    let read: Vec<_> = details.collect().await;
    if stop.is_cancelled() {
        return Err(RoomsError::Stopped);
    }
    for (index, outcome) in read {
        match outcome {
            Ok(Some(found)) => {
                records[index].details = Some(found);
                summary.refreshed += 1;
            }
            // Gone since the listing: the next sync will not list it.
            Ok(None) => {}
            Err(err) if err.is_refusal() => return Err(RoomsError::Listing(err)),
            Err(err) => {
                tracing::warn!(room_id = %records[index].room_id, error = %err, "could not read a room's state");
                // A fingerprint no listing has, so the next sync reads it.
                records[index].state_events = -1;
                summary.failed += 1;
            }
        }
    }
    registry.apply_room_listing(&records).await?;
    Ok(summary)
}

async fn complete_listing(
    client: &SynapseClient,
    pace: Option<f64>,
    stop: &CancellationToken,
) -> Result<Vec<ListedRoom>, RoomsError> {
    let mut attempt = 1;
    loop {
        let mut rooms: HashMap<String, ListedRoom> = HashMap::new();
        let mut from = 0;
        let mut total = 0;
        loop {
            let asked = Instant::now();
            let page = client.rooms_page(from, ROOMS_PAGE).await.map_err(RoomsError::Listing)?;
            // The largest count seen: rooms purged meanwhile make the listing
            // come up short (and read again), never complete.
            let Some(page_total) = page.total_rooms else {
                let detail = "a page of the room listing came without its total count";
                return Err(RoomsError::Listing(client.bad_response(detail)));
            };
            total = total.max(page_total);
            rooms.extend(page.rooms.into_iter().map(|room| (room.room_id.clone(), room)));
            match page.next_batch {
                Some(next) if next > from => from = next,
                Some(next) => {
                    let detail = format!("the room listing's next_batch {next} does not move past {from}");
                    return Err(RoomsError::Listing(client.bad_response(detail)));
                }
                None => break,
            }
            // A rest between pages, none after the last.
            if !rest_after(asked, pace, stop).await {
                return Err(RoomsError::Stopped);
            }
        }
        if total <= rooms.len() as i64 {
            return Ok(rooms.into_values().collect());
        }
        if attempt >= LISTING_ATTEMPTS {
            return Err(RoomsError::Inconsistent { listed: rooms.len() as u64, total });
        }
        attempt += 1;
    }
}

/// What the listing alone says of a room (its state not read yet).
pub fn record_of(room: ListedRoom) -> RoomRecord {
    let joined = room.joined_members.unwrap_or(0).max(0);
    let joined_local = room.joined_local_members.unwrap_or(0).clamp(0, joined);
    RoomRecord {
        room_id: room.room_id,
        name: room.name,
        canonical_alias: room.canonical_alias,
        join_rule: room.join_rules,
        public: room.public,
        encrypted: room.encryption.is_some(),
        room_type: room.room_type,
        creator: room.creator,
        joined_local,
        joined_remote: joined - joined_local,
        state_events: room.state_events.unwrap_or(0),
        details: None,
    }
}

async fn read_details(
    client: &SynapseClient,
    room_id: &str,
    server_name: &str,
) -> Result<Option<RoomDetails>, synapse::Error> {
    let Some(state) = client.room_state(room_id).await? else { return Ok(None) };
    let aliases = client.room_aliases(room_id).await?;
    Ok(Some(details_from_state(&state, aliases, server_name)))
}

/// What a room's state says about it: topic, avatar, a space's children,
/// local members with their power, and the servers to rejoin through.
pub fn details_from_state(state: &[StateEvent], aliases: Vec<String>, server_name: &str) -> RoomDetails {
    let content_of = |kind: &str| state.iter().find(|event| event.kind == kind).map(|event| &event.content);
    let text = |kind: &str, key: &str| content_of(kind).and_then(|content| content[key].as_str()).map(str::to_owned);
    let power_levels = content_of("m.room.power_levels");
    // A power level may be a number or (older rooms) a string of one.
    let level = |value: &Value| value.as_i64().or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()));
    let default_power = power_levels.and_then(|levels| level(&levels["users_default"])).unwrap_or(0);
    // From room version 12 the creators stand above every power level
    // (before, a creator has what the power levels give them).
    let create = state.iter().find(|event| event.kind == "m.room.create");
    let version = create.and_then(|event| event.content["room_version"].as_str()).unwrap_or("1");
    let creators_rule = version.parse::<u32>().is_ok_and(|version| version >= 12);
    let mut creators: Vec<&str> = Vec::new();
    if creators_rule && let Some(create) = create {
        let others = create.content["additional_creators"].as_array().into_iter().flatten();
        creators.extend(create.sender.as_deref().into_iter().chain(others.filter_map(Value::as_str)));
    }
    let power_of = |user_id: &str| match creators.contains(&user_id) {
        true => i64::MAX,
        false => power_levels.and_then(|levels| level(&levels["users"][user_id])).unwrap_or(default_power),
    };
    let local_suffix = format!(":{server_name}");
    let (mut members, mut departed) = (Vec::new(), Vec::new());
    // Each remote server's most powerful joined member, and how many.
    let mut servers: HashMap<&str, (i64, usize)> = HashMap::new();
    for event in state.iter().filter(|event| event.kind == "m.room.member") {
        let Some(user_id) = event.state_key.as_deref() else { continue };
        let membership = event.content["membership"].as_str().unwrap_or_default();
        if user_id.ends_with(&local_suffix) {
            if matches!(membership, "join" | "invite") {
                members.push((user_id.to_owned(), membership.to_owned(), power_of(user_id)));
            } else if matches!(membership, "leave" | "ban") {
                departed.push(user_id.to_owned());
            }
        } else if membership == "join"
            && let Some((_, server)) = user_id.split_once(':')
        {
            let (power, count) = servers.entry(server).or_insert((i64::MIN, 0));
            *power = (*power).max(power_of(user_id));
            *count += 1;
        }
    }
    // Servers of the room's moderators first: a server that fills the room
    // with accounts of its own does not rank first by that alone.
    let mut via: Vec<(&str, (i64, usize))> = servers.into_iter().collect();
    via.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let children = state
        .iter()
        .filter(|event| event.kind == "m.space.child")
        .filter(|event| event.content["via"].as_array().is_some_and(|via| !via.is_empty()))
        .filter_map(|event| event.state_key.clone())
        .collect();
    RoomDetails {
        topic: text("m.room.topic", "topic"),
        avatar_url: text("m.room.avatar", "url"),
        aliases: aliases.into_iter().filter(|alias| alias.ends_with(&local_suffix)).collect(),
        children,
        via_servers: via.into_iter().take(VIA_SERVERS).map(|(server, _)| server.to_owned()).collect(),
        members,
        departed,
        maker: synapse::maker_in(state).map(str::to_owned),
    }
}

/// What bringing people back did in one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BringBackReport {
    /// Rooms lifeboat's own account is back in.
    pub restored: Vec<String>,
    /// Local aliases pointing at their surviving room again.
    pub aliases: Vec<String>,
    /// People joined to a surviving room again.
    pub rejoined: u64,
    /// People invited to a re-created room.
    pub invited: u64,
    /// (who or which room, room, reason) that did not work this time.
    pub failed: Vec<(String, String, String)>,
    /// (room, reason): surviving rooms that refused lifeboat's own join, or
    /// whose servers never answered it, not tried again until `rooms
    /// rejoin --retry`.
    pub given_up: Vec<(String, String)>,
    /// Surviving rooms nobody is brought back into while a stranger holds
    /// a former member's ID (or a held one was unlocked outside lifeboat):
    /// this server back in the room lets the stranger in too. An operator
    /// settles the ID first (`holds claim`).
    pub held_back: Vec<String>,
    /// (who, room): people the room's state shows left or removed since
    /// lifeboat last read it, not joined again (their membership is
    /// forgotten).
    pub left: Vec<(String, String)>,
    /// Rooms lifeboat made again and has left now: nobody waits to be
    /// invited, and a former admin of the room is back in it.
    pub stepped_aside: Vec<String>,
    /// Surviving rooms lifeboat waits with while a former member's ID is
    /// free, not held yet (or a joined member no listing saw is not known
    /// yet): whoever registered it would be let in too.
    pub waiting_for_holds: Vec<String>,
    /// Rooms and people's joins lifeboat had given up, started over
    /// (`rooms rejoin --retry`).
    pub started_over: u64,
    /// Rooms whose aliases and directory entry were due for longer than
    /// [`ALIASES_DUE_AT_MOST`]: left as they are now, untried.
    pub aliases_left: Vec<String>,
}

impl BringBackReport {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "lifeboat rejoined {} surviving rooms ({} aliases re-pointed); {} memberships restored, {} invitations to re-created rooms",
            self.restored.len(),
            self.aliases.len(),
            self.rejoined,
            self.invited
        );
        // Each count said only when above zero; `{}` stands for it.
        let more = [
            (self.started_over as usize, "{} given-up rooms and joins started over"),
            (self.failed.len(), "{} did not work yet (tried again next round)"),
            (
                self.stepped_aside.len(),
                "lifeboat left {} rooms it made again, their people and an admin of theirs back in them",
            ),
            (
                self.left.len(),
                "{} left a room or were removed from it since lifeboat read it, and are not joined again",
            ),
            (
                self.given_up.len(),
                "{} surviving rooms refused lifeboat or could not be reached, and are given up (`lifeboat rooms rejoin --retry` tries them again)",
            ),
            (
                self.held_back.len(),
                "{} surviving rooms held back: a stranger holds a former member's ID, and would be let in too (settle the ID first)",
            ),
            (
                self.aliases_left.len(),
                "the aliases and directory entries of {} rooms were due for over a week (lifeboat did not run?) and are left as they are now",
            ),
            (
                self.waiting_for_holds.len(),
                "{} surviving rooms wait for their former members' IDs to be held (anyone registering one meanwhile would be let in too)",
            ),
        ];
        for (count, words) in more.into_iter().filter(|(count, _)| *count > 0) {
            text.push_str("; ");
            text.push_str(&words.replacen("{}", &count.to_string(), 1));
        }
        text
    }
}

/// Brings back what can come back now: lifeboat's own account first, then
/// every person whose ID is theirs again, into each surviving room they
/// were in, then the local aliases and directory listing of the rooms this
/// server is back in (by lifeboat's join or a person's). `client` acts as
/// lifeboat's account. `retry_given_up`: what lifeboat gave up starts over
/// first ([`Registry::retry_given_up`]). `stop` ends it where it waits (a
/// join in flight is left to the next run, which finds it done or not):
/// what it did is reported and the lease given back.
pub async fn bring_back(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    retry_given_up: bool,
    stop: &CancellationToken,
) -> Result<BringBackReport, RoomsError> {
    let work = async {
        let mut report = BringBackReport::default();
        if retry_given_up {
            report.started_over = registry.retry_given_up().await?;
        }
        rejoin_own(config, registry, client, &mut report, stop).await?;
        // One person's error leaves the rooms already back their aliases (a
        // dead token stops `restore_aliases` itself, counting no try).
        let people = rejoin_people(config, registry, client, &mut report, stop).await;
        let aliases = restore_aliases(config, registry, client, &mut report, stop).await;
        people?;
        aliases?;
        // What it could not do this round is told, and tried next round.
        if let Err(err) = step_aside(config, registry, client, actor, &mut report).await {
            report.failed.push((
                service_user_id(config).to_string(),
                "(rooms it made again)".to_owned(),
                err.to_string(),
            ));
        }
        if !report.is_empty() {
            registry.audit(actor, "rooms.rejoin", None, Some(&report.summary())).await?;
        }
        Ok(report)
    };
    // One run at a time (serve's watcher, `rooms rejoin`): two would count
    // one round's failed joins twice, and give rooms up early.
    Lease::run(registry, "rooms-rejoin", work)
        .await?
        .unwrap_or_else(|Held { holder, until }| Err(RoomsError::Busy { holder, until }))
}

/// Rooms lifeboat's account should be back in: surviving ones that people
/// lost (so a room an admin purged on purpose is left alone) and that it
/// may join: listed, public, or where its old membership stands.
async fn rejoin_own(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    report: &mut BringBackReport,
    stop: &CancellationToken,
) -> Result<(), RoomsError> {
    let service = service_user_id(config);
    // Whose account the token is: asked at the first room to join.
    let mut token_of: Option<String> = None;
    let mut rooms = registry.rooms(Some(RoomState::Elsewhere)).await?;
    // Rooms that went unanswered before come last: each costs up to
    // homeserver.timeout, and people's joins wait for this loop.
    rooms.sort_by_key(|room| room.restore_attempts);
    for room in rooms {
        if stop.is_cancelled() {
            break;
        }
        let waiting = room.restored_at.is_none() && room.restore_error.is_none();
        if !waiting || room.pending == 0 {
            continue;
        }
        if room.strangers > 0 {
            report.held_back.push(room.room_id.clone());
            continue;
        }
        if room.free > 0 && waits_for_holds(config) {
            report.waiting_for_holds.push(room.room_id.clone());
            continue;
        }
        let was_member =
            registry.room_members_back(&room.room_id).await?.iter().any(|member| member.user_id == service);
        let open = room.public || room.join_rule.as_deref() == Some("public");
        if !open && !was_member {
            continue;
        }
        // The join is the token's account's: with lifeboat's own token dead
        // and a human admin's working (the old database back), that admin
        // would be joined into every public room lifeboat was in.
        if token_of.is_none() {
            match client.whoami().await {
                Ok(whoami) => token_of = Some(whoami.user_id),
                // Tried again next round; people's joins go on meanwhile.
                Err(err) if err.is_transient() => {
                    report.failed.push((service.to_string(), room.room_id.clone(), err.to_string()));
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(acting) = token_of.as_deref().filter(|acting| *acting != service.as_str()) {
            let why = format!(
                "lifeboat's own joins wait until its own token works again (the admin token that works is {acting}'s)"
            );
            report.failed.push((service.to_string(), room.room_id.clone(), why));
            continue;
        }
        let Some(joined) = stop.run_until_cancelled(client.join(&room.room_id, &room.via_servers)).await else { break };
        match joined {
            Ok(JoinOutcome::Joined) => {
                // Its aliases and listing are due from now: put back next.
                registry.mark_room_restored(&room.room_id, None).await?;
                report.restored.push(room.room_id.clone());
                tracing::info!(room_id = %room.room_id, "lifeboat is back in a surviving room");
            }
            Ok(JoinOutcome::Refused(reason)) => {
                registry.mark_room_restored(&room.room_id, Some(&reason)).await?;
                report.given_up.push((room.room_id.clone(), reason));
            }
            // This room waits for the next round, the others and their
            // people go on; counted, so a room nobody can reach is given up.
            Err(err) if let Some(reason) = rooms_servers_failed(client, &err).await => {
                if registry.own_rejoin_unanswered(&room.room_id, &reason).await? {
                    report.given_up.push((room.room_id.clone(), reason));
                } else {
                    report.failed.push((service.to_string(), room.room_id.clone(), err.to_string()));
                }
            }
            // Synapse busy (429, a bare 5xx): not an attempt; the next round
            // tries. (A timeout not the room's servers' is Synapse's: down.)
            Err(err) if err.is_transient() && !err.timed_out() && client.server_version().await.is_ok() => {
                report.failed.push((service.to_string(), room.room_id.clone(), err.to_string()));
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// lifeboat's account leaves each room it made again once nobody waits to
/// be invited and a former admin of the room is back in it: the room is its
/// people's, and with the bot on that account its device would go on
/// getting the keys of an encrypted room (from room version 12 nobody could
/// remove it, its maker). Only as lifeboat's own account: the token of the
/// admin who made a room stands for a person, who decides for themselves.
async fn step_aside(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    report: &mut BringBackReport,
) -> Result<(), RoomsError> {
    let service = service_user_id(config);
    let done = registry.recreated_rooms_nobody_waits_for(&service).await?;
    if done.is_empty() || client.whoami().await?.user_id != service.as_str() {
        return Ok(());
    }
    let inside = client.own_joined_rooms().await?;
    for (old_room_id, room_id) in done {
        if !inside.contains(&room_id) {
            // Left already (by hand, say): nothing to do there again.
            registry.mark_stepped_aside(&room_id).await?;
            continue;
        }
        let Some(state) = client.room_state(&room_id).await? else { continue };
        let details = details_from_state(&state, Vec::new(), &config.homeserver.server_name);
        let an_admin_is_back = details.members.iter().any(|(user_id, membership, power)| {
            membership == "join" && user_id != service.as_str() && *power >= ADMIN_POWER
        });
        if !an_admin_is_back {
            continue;
        }
        client.leave(&room_id).await?;
        registry.mark_stepped_aside(&room_id).await?;
        let detail = format!("lifeboat left {room_id}, made for this room: its people are back");
        registry.audit(actor, "rooms.step_aside", Some(&old_room_id), Some(&detail)).await?;
        report.stepped_aside.push(room_id);
    }
    Ok(())
}

/// A room's admin: 100, the most a power level gives (a room version 12
/// creator counts as more).
const ADMIN_POWER: i64 = 100;

/// Points each surviving room's local aliases at it again, and lists it in
/// the directory again if it was, for the rooms this server is back in. Kept
/// due until every step worked (or an admin had pointed an alias
/// elsewhere): by the next round the room reads as here, and nothing else
/// would come back to it. A refusal counts as a try (given up at the
/// [`registry::MAX_REJOIN_ATTEMPTS`]th); Synapse timing out or busy leaves
/// the room due, for a day at most. Due for longer than
/// [`ALIASES_DUE_AT_MOST`], they are left untried.
async fn restore_aliases(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    report: &mut BringBackReport,
    stop: &CancellationToken,
) -> Result<(), RoomsError> {
    let service = service_user_id(config);
    for (room_id, due_since) in registry.rooms_with_aliases_due().await? {
        if stop.is_cancelled() {
            break;
        }
        if due_since < registry::now_ms() - ALIASES_DUE_AT_MOST.as_millis() as i64 {
            registry.aliases_no_longer_due(&room_id).await?;
            tracing::warn!(
                room_id,
                "a room's aliases and directory entry were due for over a week: left as they are now"
            );
            report.aliases_left.push(room_id);
            continue;
        }
        let Some(room) = registry.room(&room_id).await? else { continue };
        let mut failures = Vec::new();
        for alias in &room.aliases {
            let repointed = async {
                // Put back in an earlier round: nothing to do or to report.
                if reclaim_alias(client, alias, Some(&room.room_id), &service).await?.as_deref()
                    == Some(room.room_id.as_str())
                {
                    return Ok(None);
                }
                client.set_alias(alias, &room.room_id).await.map(Some)
            }
            .await;
            match repointed {
                Ok(None) => {}
                Ok(Some(true)) => report.aliases.push(alias.clone()),
                Ok(Some(false)) => tracing::warn!(alias, "an admin pointed the alias at another room: left alone"),
                Err(err) => failures.push((alias.clone(), err)),
            }
        }
        if room.public
            && let Err(err) = client.list_in_directory(&room.room_id).await
        {
            failures.push(("directory".to_owned(), err));
        }
        // lifeboat's token no longer works: no room's try counts.
        if let Some(at) = failures.iter().position(|(_, err)| err.token_no_longer_works()) {
            return Err(failures.swap_remove(at).1.into());
        }
        if failures.is_empty() || due_since < registry::now_ms() - registry::DAY_MS {
            registry.aliases_no_longer_due(&room.room_id).await?;
        } else if !failures.iter().all(|(_, err)| err.is_transient()) {
            registry.aliases_refused(&room.room_id).await?;
        }
        for (what, err) in failures {
            report.failed.push((what, room.room_id.clone(), err.to_string()));
        }
    }
    Ok(())
}

/// How long a room's aliases and directory entry stay due. Past it (lifeboat
/// did not run meanwhile), what the registry knows of them is that old: an
/// admin may have pointed an alias elsewhere or unlisted the room since,
/// and putting back the old ones would undo that.
const ALIASES_DUE_AT_MOST: Duration = Duration::from_secs(7 * 24 * 3600);

/// Lost IDs are held (`recovery.hold` is not "off"): a surviving room waits
/// until its former members' IDs are. With holds off, a lost ID stays free
/// for anyone, and waiting would keep the room away for good.
fn waits_for_holds(config: &Config) -> bool {
    config.recovery.hold != HoldPolicy::Off
}

/// The registry's word is as old as the last listing: Synapse is asked,
/// once a person, whose account each ID is now (another wipe, a restored
/// backup may have given it to a stranger). `Err` with why it cannot tell.
async fn theirs_now(
    registry: &Registry,
    client: &SynapseClient,
    users: impl Iterator<Item = UserId>,
) -> Result<HashMap<UserId, Result<bool, String>>, RoomsError> {
    let people: std::collections::HashSet<UserId> = users.collect();
    futures::stream::iter(people)
        .map(|user| async move {
            match crate::holds::its_persons_now(registry, client, &user).await {
                Ok(theirs) => Ok((user, Ok(theirs))),
                Err(crate::holds::CannotTell::Synapse(err)) => Ok((user, Err(err.to_string()))),
                Err(crate::holds::CannotTell::Registry(err)) => Err(RoomsError::from(err)),
            }
        })
        .buffer_unordered(ROOM_CONCURRENCY)
        .try_collect()
        .await
}

async fn rejoin_people(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    report: &mut BringBackReport,
    stop: &CancellationToken,
) -> Result<(), RoomsError> {
    let pending = registry.pending_rejoins(waits_for_holds(config), &service_user_id(config)).await?;
    // One a stranger registered since the last listing is joined nowhere,
    // and the person's rejoins wait (not an attempt).
    let theirs = theirs_now(registry, client, pending.iter().map(|rejoin| rejoin.user_id.clone())).await?;
    let mut to_do = Vec::new();
    for rejoin in pending {
        match &theirs[&rejoin.user_id] {
            // lifeboat left the room it made (its people were back): only
            // they can invite now. Not an attempt: said each round.
            Ok(true) if let (Some(new_room), Some(_)) = (&rejoin.recreated_as, rejoin.stepped_aside_at) => {
                let why =
                    format!("lifeboat has left {new_room}, its people back in it: an admin of the room invites them");
                report.failed.push((rejoin.user_id.to_string(), rejoin.room_id, why));
            }
            Ok(true) => to_do.push(rejoin),
            // Someone else's account on the ID now: held back like a room
            // a stranger is known to be in, until a listing tells more.
            Ok(false) => {
                if !report.held_back.contains(&rejoin.room_id) {
                    report.held_back.push(rejoin.room_id);
                }
            }
            Err(cannot_tell) => report.failed.push((rejoin.user_id.to_string(), rejoin.room_id, cannot_tell.clone())),
        }
    }
    let memberships = &Memberships::default();
    let mut outcomes = futures::stream::iter(to_do)
        .map(|rejoin| async move {
            let outcome = match &rejoin.recreated_as {
                Some(new_room) => client.invite(new_room, rejoin.user_id.as_str()).await.map(PersonJoin::Done),
                None => join_person(client, memberships, &rejoin).await,
            };
            (rejoin, outcome)
        })
        .buffer_unordered(ROOM_CONCURRENCY);
    while let Some((rejoin, outcome)) = stop.run_until_cancelled(outcomes.next()).await.flatten() {
        let invited = rejoin.recreated_as.is_some();
        let failed = match outcome {
            Ok(PersonJoin::LeftSince) => {
                registry.forget_member(&rejoin.room_id, &rejoin.user_id).await?;
                report.left.push((rejoin.user_id.to_string(), rejoin.room_id));
                continue;
            }
            Ok(PersonJoin::NotYet) => {
                let why = "this server is still fetching the room's state: asked again next round".to_owned();
                report.failed.push((rejoin.user_id.to_string(), rejoin.room_id, why));
                continue;
            }
            Ok(PersonJoin::Done(JoinOutcome::Joined)) => {
                let recorded = if invited { RejoinOutcome::Invited } else { RejoinOutcome::Joined };
                registry.record_rejoin(&rejoin.room_id, &rejoin.user_id, recorded).await?;
                *if invited { &mut report.invited } else { &mut report.rejoined } += 1;
                continue;
            }
            Ok(PersonJoin::Done(JoinOutcome::Refused(reason))) => reason,
            // An attempt, counted as a refusal is.
            Err(ref err) if let Some(reason) = rooms_servers_failed(client, err).await => reason,
            // Synapse down or busy: not an attempt; the next round tries.
            Err(err) if err.is_transient() => {
                report.failed.push((rejoin.user_id.to_string(), rejoin.room_id, err.to_string()));
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        registry.record_rejoin(&rejoin.room_id, &rejoin.user_id, RejoinOutcome::Failed(&failed)).await?;
        report.failed.push((rejoin.user_id.to_string(), rejoin.room_id, failed));
    }
    Ok(())
}

/// Why a join failed if it was for the room's servers, not Synapse: it said
/// a server it asked failed, or the join outlasted homeserver.timeout while
/// Synapse itself still answers (servers that take the connection and never
/// reply). Such a failure counts as an attempt, so a room nobody can reach
/// is given up after a few rounds rather than costing a timeout each round
/// for good; Synapse down or busy (429, a bare 5xx) does not.
async fn rooms_servers_failed(client: &SynapseClient, err: &synapse::Error) -> Option<String> {
    let why = match err.matrix_error_of_a_failure() {
        Some(said) => said.to_owned(),
        None if err.timed_out() && client.server_version().await.is_ok() => {
            "the join outlasted homeserver.timeout while Synapse answers".to_owned()
        }
        None => return None,
    };
    Some(format!("the room's servers could not be reached ({why})"))
}

/// How long a room's state may take to give its memberships.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(5);

/// Each room's memberships by this server's copy of its state, read once a
/// round however many of its people are brought back: a big room's member
/// list is megabytes. `None`: its state did not tell in time. Neither an
/// error nor a room Synapse does not know is kept: the next person of the
/// room asks again (the first one's join brings this server into the room,
/// and its state with it).
#[derive(Default)]
struct Memberships(std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Option<RoomMemberships>>>>>);

/// A room's memberships by user ID.
type RoomMemberships = HashMap<String, String>;

impl Memberships {
    /// `user_id`'s membership in `room_id` (`None` inside: the room's state
    /// has none), or `None` if the state did not tell in time.
    async fn of(
        &self,
        client: &SynapseClient,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<Option<String>>, synapse::Error> {
        let room = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(room_id.to_owned())
            .or_default()
            .clone();
        let members = room
            .get_or_try_init(|| async {
                match tokio::time::timeout(MEMBERSHIP_WAIT, client.memberships(room_id)).await {
                    Ok(Ok(Some(members))) => Ok(Some(members)),
                    Ok(Ok(None)) => Err(None),
                    Ok(Err(err)) => Err(Some(err)),
                    Err(_) => Ok(None),
                }
            })
            .await;
        match members {
            Ok(members) => Ok(members.as_ref().map(|members| members.get(user_id).cloned())),
            Err(None) => Ok(Some(None)),
            Err(Some(err)) => Err(err),
        }
    }
}

/// How bringing one person back into a room went.
enum PersonJoin {
    Done(JoinOutcome),
    /// The room's state says they left it or were removed since lifeboat
    /// last read it (a listing may be hours old): not joined again.
    LeftSince,
    /// The room's state did not say in time: asked again next round, not
    /// counted as an attempt.
    NotYet,
}

/// Joins one person to a surviving room, unless it holds them as joined
/// already (their old membership stands once this server is back in it),
/// or it holds them as gone: a forced join would undo a kick or their own
/// leave. A room whose state this server is still fetching (it joined a
/// big one with part of its state, and gets the rest over hours) tells no
/// membership until it has it all, and their old membership comes with
/// it: past [`MEMBERSHIP_WAIT`] they wait for a later round.
async fn join_person(
    client: &SynapseClient,
    memberships: &Memberships,
    rejoin: &Rejoin,
) -> Result<PersonJoin, synapse::Error> {
    let (room_id, user_id) = (&rejoin.room_id, rejoin.user_id.as_str());
    if client.joined_rooms(user_id).await?.contains(room_id) {
        return Ok(PersonJoin::Done(JoinOutcome::Joined));
    }
    let Some(membership) = memberships.of(client, room_id, user_id).await? else {
        return Ok(PersonJoin::NotYet);
    };
    if matches!(membership.as_deref(), Some("leave" | "ban")) {
        return Ok(PersonJoin::LeftSince);
    }
    Ok(PersonJoin::Done(client.admin_join(room_id, user_id, &rejoin.via_servers).await?))
}

/// What re-creating a room did.
#[derive(Debug, Clone, Serialize)]
pub struct Recreated {
    pub new_room_id: String,
    pub label: String,
    /// Former members invited now (the rest as each comes back).
    pub invited: u64,
    pub waiting: u64,
    /// The local alias given to the new room, if it was free.
    pub alias: Option<String>,
}

impl Recreated {
    pub fn summary(&self) -> String {
        let alias =
            self.alias.as_deref().map(|alias| format!(", alias {}", plain_text::one_line(alias))).unwrap_or_default();
        format!(
            "Re-created {} as {}{alias}: {} invited now, {} as they come back.",
            // Its name as others chose it, as notices show one.
            crate::notice::room_label(&self.label),
            self.new_room_id,
            self.invited,
            self.waiting
        )
    }
}

/// The rooms `rooms recreate` makes again: the one named, if it can be;
/// else every lost room, each space after the lost rooms and spaces in it
/// (so it gets their re-created IDs as children). lifeboat's own rooms (its admin room, its DMs) are left out
/// of "every": lifeboat makes those again by itself as it needs them. The
/// rooms it made in place of lost ones are not its own: lost again (another
/// wipe), they are made again too.
pub async fn to_recreate(config: &Config, registry: &Registry, room_id: Option<&str>) -> Result<Vec<Room>, RoomsError> {
    if let Some(room_id) = room_id {
        let room = registry.room(room_id).await?.ok_or_else(|| RoomsError::UnknownRoom(room_id.to_owned()))?;
        return match recreate_problem(&room) {
            Some(problem) => Err(RoomsError::Refused(problem)),
            None => Ok(vec![room]),
        };
    }
    let service = service_user_id(config);
    let admin_room = config.bot.as_ref().and_then(|bot| bot.admin_room.as_deref());
    let remade: std::collections::HashSet<String> =
        registry.rooms(Some(RoomState::Recreated)).await?.into_iter().filter_map(|room| room.recreated_as).collect();
    let candidates = registry
        .rooms(Some(RoomState::Lost))
        .await?
        .into_iter()
        .filter(|room| room.creator.as_deref() != Some(service.as_str()) || remade.contains(&room.room_id))
        .filter(|room| made_on(room, &config.homeserver.server_name))
        .filter(|room| {
            Some(room.room_id.as_str()) != admin_room
                && !room.aliases.iter().any(|alias| Some(alias.as_str()) == admin_room)
        });
    let mut rooms = Vec::new();
    for room in candidates {
        if !is_a_dm_with_lifeboat(registry, &room, &service).await? {
            rooms.push(room);
        }
    }
    Ok(children_first(rooms))
}

/// A person's DM with lifeboat's bot, which the person opened (lifeboat's
/// own are left out already): an unnamed room of this server with the two
/// of them in it and nobody else, joined or invited. Made again, it would be
/// an empty room with lifeboat in it; the person opens a new DM when they
/// want one.
async fn is_a_dm_with_lifeboat(registry: &Registry, room: &Room, service: &UserId) -> Result<bool, RoomsError> {
    if room.name.as_deref().is_some_and(|name| !name.is_empty())
        || room.is_space()
        || room.joined_remote > 0
        || room.creator.as_deref() == Some(service.as_str())
    {
        return Ok(false);
    }
    let members = registry.room_member_ids(&room.room_id).await?;
    Ok(members.len() == 2 && members.iter().any(|member| member == service.as_str()))
}

/// `rooms` in an order that makes each one after the rooms of `rooms` it
/// holds as children (a space in a space in a space), else as they came.
/// A loop of spaces that hold each other is broken where it is first met.
fn children_first(mut rooms: Vec<Room>) -> Vec<Room> {
    let mut ordered = Vec::with_capacity(rooms.len());
    while !rooms.is_empty() {
        let waiting: std::collections::HashSet<String> = rooms.iter().map(|room| room.room_id.clone()).collect();
        let holds_one_waiting =
            |room: &Room| room.children.iter().any(|child| *child != room.room_id && waiting.contains(child));
        let (mut later, ready): (Vec<Room>, Vec<Room>) = rooms.into_iter().partition(holds_one_waiting);
        if ready.is_empty() {
            let first = on_a_loop(&later);
            ordered.push(later.remove(first));
        }
        ordered.extend(ready);
        rooms = later;
    }
    ordered
}

/// A room of a loop among `rooms`, each of which holds another of them:
/// followed from the first, child by child, the first met twice.
fn on_a_loop(rooms: &[Room]) -> usize {
    let mut seen = vec![false; rooms.len()];
    let mut at = 0;
    while !seen[at] {
        seen[at] = true;
        let holder = &rooms[at];
        let next = holder.children.iter().filter(|child| **child != holder.room_id);
        at = next.filter_map(|child| rooms.iter().position(|room| room.room_id == *child)).next().unwrap_or(at);
    }
    at
}

/// Whether `room` was made on `server_name`, as far as its ID and recorded
/// maker tell. A room made by another server's account would come back
/// with its maker's name and topic as lifeboat's words, and lifeboat would
/// invite people into it: `--all` leaves it for an admin to name by its ID.
fn made_on(room: &Room, server_name: &str) -> bool {
    // Up to room version 11 the ID names the maker's server too (a creator
    // recorded before lifeboat read it from the room's state may be the one
    // its own server made up).
    let id_names_here = room.room_id.split_once(':').is_none_or(|(_, server)| server == server_name);
    id_names_here
        && room
            .creator
            .as_deref()
            .and_then(|creator| UserId::parse(creator).ok())
            .is_none_or(|creator| creator.server_name() == server_name)
}

/// Why a room cannot be re-created, if so: one rule for the CLI and the bot.
/// Its name is others' words: one short line, nothing a terminal acts on.
fn recreate_problem(room: &Room) -> Option<String> {
    let label = plain_text::short_line(room.label(), 200);
    match room.state {
        RoomState::Lost => None,
        RoomState::Recreated => {
            Some(format!("{label} was re-created already, as {}", room.recreated_as.as_deref().unwrap_or("?")))
        }
        RoomState::Here => Some(format!("{label} is on this homeserver: there is nothing to re-create")),
        RoomState::Elsewhere => Some(format!(
            "{label} lives on on other servers: its people are brought back into it as they come back, so it is not re-created"
        )),
    }
}

/// Frees a local alias that someone other than a server admin (or lifeboat)
/// pointed at a room they made: after a wipe any account here may make any
/// alias, and those who follow it would land in that room. One that points
/// at `its_room`, or at a room a local admin or lifeboat made, is left.
/// Returns the room the alias points at afterwards.
async fn reclaim_alias(
    client: &SynapseClient,
    alias: &str,
    its_room: Option<&str>,
    service: &UserId,
) -> Result<Option<String>, synapse::Error> {
    let Some(target) = client.alias_target(alias).await? else { return Ok(None) };
    if Some(target.as_str()) == its_room {
        return Ok(Some(target));
    }
    // Up to room version 11 a room's ID names its maker's server: one made
    // elsewhere is no local admin's, and needs no read. A room whose maker
    // Synapse cannot name is nobody's choice to keep either.
    let local = service.server_name();
    let made_elsewhere = target.split_once(':').is_some_and(|(_, server)| server != local);
    let maker = match made_elsewhere {
        true => None,
        false => client.room_maker(&target, local).await?.and_then(|maker| UserId::parse(&maker).ok()),
    };
    let made_by_an_admin = match &maker {
        Some(maker) if maker == service => true,
        Some(maker) if maker.server_name() == service.server_name() => {
            client.user_details(maker.as_str()).await?.is_some_and(|details| details.admin)
        }
        _ => false,
    };
    if made_by_an_admin {
        return Ok(Some(target));
    }
    client.delete_alias(alias).await?;
    tracing::warn!(alias, room = %target, "took back an alias someone pointed at a room of theirs");
    Ok(None)
}

/// Makes a room that lived only here again (name, topic, alias, join rule,
/// directory listing, encryption, type; a space gets its children back) and
/// invites its former members who are back, the rest as each comes back.
pub async fn recreate(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    room: &Room,
    actor: &Actor,
) -> Result<Recreated, RoomsError> {
    // One run at a time per room, whichever face asks: two at once would
    // each find no room made yet, and make two.
    let work = async {
        // Read again under the lease: another run may have re-created it,
        // or a space's children, since `room` was read.
        let room = &registry.room(&room.room_id).await?.unwrap_or_else(|| room.clone());
        if let Some(problem) = recreate_problem(room) {
            return Err(RoomsError::Refused(problem));
        }
        let service = service_user_id(config);
        let mut alias = None;
        for candidate in aliases_to_try(room) {
            if reclaim_alias(client, candidate, None, &service).await?.is_none() {
                alias = Some(candidate.clone());
                break;
            }
        }
        // Made once: a run that stopped between making the room and recording
        // it finds it by the mark in its creation event.
        let begun = registry.room_recreation_begun(&room.room_id).await?;
        let made_before = match begun {
            // Made by the token's account, which is lifeboat's own only when
            // lifeboat recovered it (else the configured admin's).
            true => made_for(client, &room.room_id, &client.whoami().await?.user_id).await?,
            false => None,
        };
        let new_room_id = match made_before {
            Some(made) => made,
            None => {
                registry.mark_room_recreating(&room.room_id).await?;
                let children = children_now(registry, room, &config.homeserver.server_name).await?;
                let body = creation_body(room, alias.as_deref(), &children);
                client.create_room(&body).await?
            }
        };
        let members: Vec<FormerMember> = registry
            .room_members_back(&room.room_id)
            .await?
            .into_iter()
            .filter(|member| member.user_id != service)
            .collect();
        // Back by the registry's word, and by Synapse's now: a person not
        // invited yet is invited by a later rejoin round.
        let theirs = theirs_now(registry, client, members.iter().filter(|m| m.back).map(|m| m.user_id.clone())).await?;
        let is_theirs = |member: &FormerMember| member.back && theirs.get(&member.user_id) == Some(&Ok(true));
        // Given before the room is recorded as made: a run that stops first
        // (or finds Synapse down) finds the room again and gives them. What
        // Synapse refuses is told and left to an admin of the room: the
        // room and its people come first.
        let mut powers = powers_back(&members, is_theirs);
        if !powers.is_empty() {
            // The maker has its power already (from room version 12 it may
            // have no entry, and must not be given one).
            let maker = client.whoami().await?.user_id;
            powers.retain(|(user_id, _)| *user_id != maker);
        }
        match client.give_power(&new_room_id, &powers).await {
            // Synapse will not let it (the room's own rules): told, not tried again.
            Err(err @ (synapse::Error::Forbidden { .. } | synapse::Error::Rejected { .. })) => {
                tracing::warn!(room = %new_room_id, error = %err, "former moderators' power not given back")
            }
            // Synapse down, the token dead: the next run finds the room and tries.
            Err(err) => return Err(err.into()),
            Ok(()) => {}
        }
        registry.mark_room_recreated(&room.room_id, &new_room_id).await?;
        let mut invited = 0;
        let mut waiting = 0;
        for member in &members {
            let user_id = member.user_id.clone();
            if !is_theirs(member) {
                waiting += 1;
                continue;
            }
            // The room is made and recorded: an invite that fails now is
            // left to a later rejoin round, not reported as no room.
            match client.invite(&new_room_id, user_id.as_str()).await {
                Ok(JoinOutcome::Joined) => {
                    invited += 1;
                    registry.record_rejoin(&room.room_id, &user_id, RejoinOutcome::Invited).await?;
                }
                Ok(JoinOutcome::Refused(reason)) => {
                    registry.record_rejoin(&room.room_id, &user_id, RejoinOutcome::Failed(&reason)).await?;
                }
                Err(err) => {
                    tracing::warn!(room = %new_room_id, user = %user_id, error = %err, "could not invite a former member yet");
                    waiting += 1;
                }
            }
        }
        let detail = format!("{} re-created as {new_room_id}", room.label());
        registry.audit(actor, "rooms.recreate", Some(&room.room_id), Some(&detail)).await?;
        Ok::<_, RoomsError>(Recreated { new_room_id, label: room.label().to_owned(), invited, waiting, alias })
    };
    Lease::run(registry, &recreation_lease(&room.room_id), work).await?.unwrap_or_else(
        |Held { holder, until }| {
            Err(RoomsError::Refused(format!(
                "another run ({holder}) is re-creating {} now; let it finish, or if that process is gone, try again after {until}",
                room.label()
            )))
        },
    )
}

/// The power levels a re-created room gives its former members back (its
/// moderators and admins, a room version 12 creator as an admin): each whose
/// ID is theirs now, or held for them (they get it back by proof). Never a
/// stranger's or a free ID's: whoever has it could walk into a public room
/// and rule it.
fn powers_back(members: &[FormerMember], is_theirs: impl Fn(&FormerMember) -> bool) -> Vec<(String, i64)> {
    members
        .iter()
        .filter(|member| member.power_level > 0 && (member.held || is_theirs(member)))
        .map(|member| (member.user_id.to_string(), member.power_level.min(ADMIN_POWER)))
        .collect()
}

/// A lost room's local aliases in the order its new room tries them: its
/// main alias first, the one people were given, then the others as listed.
fn aliases_to_try(room: &Room) -> Vec<&String> {
    let mut aliases: Vec<&String> = room.aliases.iter().collect();
    aliases.sort_by_key(|alias| Some(*alias) != room.canonical_alias.as_ref());
    aliases
}

/// The lease a re-creation of `room_id` runs under.
pub fn recreation_lease(room_id: &str) -> String {
    format!("room-recreate:{room_id}")
}

/// Marks a re-created room's creation event with the room it replaces.
const RECREATES_KEY: &str = "org.lifeboat.recreates";

/// The room the token's account (`me`) made for `old_room_id` before, if
/// any. Made by that account: anyone can put the mark in a room of theirs
/// on another server, and have lifeboat join it as a surviving room.
async fn made_for(client: &SynapseClient, old_room_id: &str, me: &str) -> Result<Option<String>, RoomsError> {
    for room_id in client.own_joined_rooms().await? {
        let event = client.creation_event(&room_id).await?;
        if event.is_some_and(|event| event["sender"] == me && event["content"][RECREATES_KEY] == old_room_id) {
            return Ok(Some(room_id));
        }
    }
    Ok(None)
}

/// A space's children as they are now, each with the servers to join it
/// through: the surviving room, or the one made in place of a lost one.
/// Children lost and not re-created are left out.
async fn children_now(
    registry: &Registry,
    room: &Room,
    server_name: &str,
) -> Result<Vec<(String, Vec<String>)>, RoomsError> {
    let here = || vec![server_name.to_owned()];
    let mut children = Vec::new();
    for child in &room.children {
        match registry.room(child).await? {
            Some(known) if known.state == RoomState::Recreated => {
                children.extend(known.recreated_as.map(|room_id| (room_id, here())))
            }
            // Gone from here: through the servers it lives on.
            Some(known) if known.state == RoomState::Elsewhere && !known.via_servers.is_empty() => {
                children.push((child.clone(), known.via_servers))
            }
            Some(known) if known.state.comes_back() => children.push((child.clone(), here())),
            Some(_) => {}
            // Not known: a room on another server, named in its ID (up to
            // room version 11), that lives on; or one of this server's
            // that lifeboat forgot (gone while nobody was lost).
            None => match child.split_once(':').map(|(_, server)| server) {
                Some(server) if server == server_name => {}
                Some(server) => children.push((child.clone(), vec![server.to_owned()])),
                None => children.push((child.clone(), here())),
            },
        }
    }
    Ok(children)
}

fn creation_body(room: &Room, alias: Option<&str>, children: &[(String, Vec<String>)]) -> Value {
    let public = room.join_rule.as_deref() == Some("public");
    let mut body = json!({
        "preset": if public { "public_chat" } else { "private_chat" },
        "visibility": if room.public { "public" } else { "private" },
    });
    if let Some(name) = room.name.as_deref().filter(|name| !name.is_empty()) {
        body["name"] = json!(name);
    }
    if let Some(topic) = &room.topic {
        body["topic"] = json!(topic);
    }
    if let Some(alias) = alias {
        let localpart = alias.trim_start_matches('#').split(':').next().unwrap_or_default();
        body["room_alias_name"] = json!(localpart);
    }
    let mut initial_state = Vec::new();
    let mut state = |kind: &str, state_key: &str, content: Value| {
        initial_state.push(json!({"type": kind, "state_key": state_key, "content": content}))
    };
    if room.encrypted {
        state("m.room.encryption", "", json!({"algorithm": "m.megolm.v1.aes-sha2"}));
    }
    if let Some(join_rule) = room.join_rule.as_deref().filter(|rule| !matches!(*rule, "public" | "invite")) {
        state("m.room.join_rules", "", json!({"join_rule": join_rule}));
    }
    if let Some(avatar) = &room.avatar_url {
        state("m.room.avatar", "", json!({"url": avatar}));
    }
    for (child, via) in children {
        state("m.space.child", child, json!({"via": via}));
    }
    if !initial_state.is_empty() {
        body["initial_state"] = json!(initial_state);
    }
    body["creation_content"] = json!({ RECREATES_KEY: room.room_id });
    if room.is_space() {
        body["creation_content"]["type"] = json!("m.space");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreated_room_gives_power_back_only_to_ids_that_are_their_persons_or_held() {
        let member = |id: &str, back: bool, held: bool, power_level: i64| FormerMember {
            user_id: UserId::parse(id).unwrap(),
            back,
            held,
            power_level,
        };
        let members = [
            member("@creator:here.org", true, false, i64::MAX),
            member("@mod:here.org", false, true, 50),
            member("@taken:here.org", true, false, 100),
            member("@free:here.org", false, false, 100),
            member("@plain:here.org", true, false, 0),
        ];
        let theirs = |member: &FormerMember| member.back && member.user_id.as_str() != "@taken:here.org";
        assert_eq!(
            powers_back(&members, theirs),
            [("@creator:here.org".to_owned(), 100), ("@mod:here.org".to_owned(), 50)]
        );
    }

    #[test]
    fn a_recreated_room_tries_its_main_alias_first() {
        let aliases = vec!["#a:here.org".to_owned(), "#main:here.org".to_owned(), "#b:here.org".to_owned()];
        let room = Room { aliases, canonical_alias: Some("#main:here.org".to_owned()), ..Room::default() };
        assert_eq!(aliases_to_try(&room), ["#main:here.org", "#a:here.org", "#b:here.org"]);
        let elsewhere = Room { canonical_alias: Some("#main:there.net".to_owned()), ..room };
        assert_eq!(aliases_to_try(&elsewhere), ["#a:here.org", "#main:here.org", "#b:here.org"], "as listed");
    }

    #[test]
    fn every_lost_room_means_those_made_here_by_their_id_and_their_maker() {
        let room = |room_id: &str, creator: Option<&str>| Room {
            room_id: room_id.to_owned(),
            creator: creator.map(str::to_owned),
            ..Room::default()
        };
        assert!(made_on(&room("!old:here.org", Some("@alice:here.org")), "here.org"));
        assert!(made_on(&room("!v12hash", Some("@alice:here.org")), "here.org"), "a version 12 ID names no server");
        assert!(made_on(&room("!old:here.org", None), "here.org"), "a maker not known yet");
        assert!(!made_on(&room("!old:there.net", Some("@alice:here.org")), "here.org"), "a creator their server wrote");
        assert!(!made_on(&room("!v12hash", Some("@mallory:there.net")), "here.org"));
        assert!(!made_on(&room("!old:here.org:8448", Some("@alice:here.org")), "here.org"), "another port");
    }

    #[test]
    fn a_space_is_made_again_after_the_lost_rooms_and_spaces_it_holds() {
        let room = |room_id: &str, children: &[&str]| Room {
            room_id: room_id.to_owned(),
            children: children.iter().map(|child| child.to_string()).collect(),
            ..Room::default()
        };
        let fleet = room("!fleet:x", &["!deck:x", "!elsewhere:y"]);
        let deck = room("!deck:x", &["!kitchen:x", "!deck:x"]);
        let (kitchen, loop_a, loop_b) = (room("!kitchen:x", &[]), room("!a:x", &["!b:x"]), room("!b:x", &["!a:x"]));
        let (outer, inner) = (room("!outer:x", &["!inner:x"]), room("!inner:x", &["!b:x"]));
        let ordered = children_first(vec![outer, inner, loop_a, fleet, deck, loop_b, kitchen]);
        let ids: Vec<&str> = ordered.iter().map(|room| room.room_id.as_str()).collect();
        assert_eq!(
            ids,
            ["!kitchen:x", "!deck:x", "!fleet:x", "!b:x", "!inner:x", "!a:x", "!outer:x"],
            "a loop is broken inside it, not above it"
        );
    }

    fn event(kind: &str, state_key: &str, content: Value) -> StateEvent {
        StateEvent { kind: kind.to_owned(), state_key: Some(state_key.to_owned()), content, sender: None }
    }

    #[test]
    fn a_rooms_state_gives_its_local_members_with_power_and_the_busiest_remote_servers_first() {
        let state = vec![
            event("m.room.topic", "", json!({"topic": "Boats"})),
            event("m.room.power_levels", "", json!({"users": {"@alice:here.org": 100}, "users_default": 0})),
            event("m.room.member", "@alice:here.org", json!({"membership": "join"})),
            event("m.room.member", "@bob:here.org", json!({"membership": "invite"})),
            event("m.room.member", "@carol:here.org", json!({"membership": "leave"})),
            event("m.room.member", "@x:small.net", json!({"membership": "join"})),
            event("m.room.member", "@y:big.net", json!({"membership": "join"})),
            event("m.room.member", "@z:big.net", json!({"membership": "join"})),
            event("m.room.member", "@gone:left.net", json!({"membership": "leave"})),
            event("m.space.child", "!kept:here.org", json!({"via": ["here.org"]})),
            event("m.space.child", "!removed:here.org", json!({})),
        ];
        let aliases = vec!["#boats:here.org".to_owned(), "#boats:other.net".to_owned()];
        let details = details_from_state(&state, aliases, "here.org");
        assert_eq!(details.topic.as_deref(), Some("Boats"));
        assert_eq!(
            details.members,
            [
                ("@alice:here.org".to_owned(), "join".to_owned(), 100),
                ("@bob:here.org".to_owned(), "invite".to_owned(), 0)
            ]
        );
        assert_eq!(details.via_servers, ["big.net", "small.net"]);
        assert_eq!(details.aliases, ["#boats:here.org"], "only local aliases can be re-pointed here");
        assert_eq!(details.children, ["!kept:here.org"], "a child event without via is a removed child");
    }

    #[test]
    fn a_rooms_moderators_servers_come_first_and_its_maker_is_its_creation_events_sender() {
        let mut create = event("m.room.create", "", json!({"creator": "@lifeboat:here.org"}));
        create.sender = Some("@mallory:evil.net".to_owned());
        let mut state = vec![create, event("m.room.power_levels", "", json!({"users": {"@mod:small.net": 50}}))];
        for member in ["@mod:small.net", "@p1:evil.net", "@p2:evil.net", "@p3:evil.net"] {
            state.push(event("m.room.member", member, json!({"membership": "join"})));
        }
        let details = details_from_state(&state, Vec::new(), "here.org");
        assert_eq!(details.via_servers, ["small.net", "evil.net"], "not by head-count alone");
        assert_eq!(details.maker.as_deref(), Some("@mallory:evil.net"), "not the creator it names");
    }

    #[test]
    fn room_version_12_creators_rank_first_and_power_levels_written_as_strings_count() {
        let state = |version: &str| {
            let content = json!({"room_version": version, "additional_creators": ["@co:far.net"]});
            let mut create = event("m.room.create", "", content);
            create.sender = Some("@maker:maker.net".to_owned());
            let mut state = vec![create, event("m.room.power_levels", "", json!({"users": {"@mod:small.net": "50"}}))];
            for member in ["@co:far.net", "@mod:small.net", "@p1:big.net", "@p2:big.net"] {
                state.push(event("m.room.member", member, json!({"membership": "join"})));
            }
            state
        };
        let via = |version| details_from_state(&state(version), Vec::new(), "here.org").via_servers;
        assert_eq!(via("12"), ["far.net", "small.net", "big.net"]);
        assert_eq!(via("11"), ["small.net", "big.net", "far.net"], "before 12 a creator is anyone");
    }

    #[test]
    fn only_a_room_that_lived_only_here_can_be_recreated() {
        let room = |state| Room {
            room_id: "!r:here.org".to_owned(),
            state,
            name: Some("Boats".to_owned()),
            recreated_as: Some("!new:here.org".to_owned()),
            ..Room::default()
        };
        assert_eq!(recreate_problem(&room(RoomState::Lost)), None);
        for state in [RoomState::Here, RoomState::Elsewhere, RoomState::Recreated] {
            assert!(recreate_problem(&room(state)).unwrap().starts_with("Boats "), "{state:?}");
        }
        // Its name is whatever a room's moderators chose: no escape for the
        // admin's terminal, no line of its own.
        let hostile =
            Room { name: Some("Boats\u{1b}]52;c;ZXZpbA==\u{7}\r\nerror: fake".to_owned()), ..room(RoomState::Here) };
        let problem = recreate_problem(&hostile).unwrap();
        assert!(!problem.chars().any(char::is_control), "{problem:?}");
    }

    #[test]
    fn a_rooms_progress_says_who_is_back_what_holds_it_and_what_lifeboat_still_owes() {
        let waiting =
            Room { state: RoomState::Elsewhere, members: 3, rejoined: 1, pending: 2, free: 1, ..Room::default() };
        assert_eq!(waiting.progress(), ["1 of 3 back, 2 waiting", "1 former members' IDs not held yet"]);
        let given_up = Room {
            state: RoomState::Here,
            free: 1,
            restore_error: Some("M_FORBIDDEN".to_owned()),
            aliases_due_at: Some(1),
            ..Room::default()
        };
        assert_eq!(
            given_up.progress(),
            ["given up by lifeboat: M_FORBIDDEN", "aliases and directory entry not back yet"]
        );
        assert!(Room::default().progress().is_empty());
    }
}
