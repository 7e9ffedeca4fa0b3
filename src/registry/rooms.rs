//! Rooms and local accounts' memberships (see migrations/*/0008_rooms.sql).
//!
//! Where a room stands now is one rule, [`ROOM_STATE_SQL`]: here (in the
//! latest complete room listing), re-created, living on elsewhere (gone
//! from here, but it had joined members on other servers), or lost (it
//! lived only here).

use std::collections::HashMap;

use serde::Serialize;

use super::credentials::set_setting_in;
use super::{AccountState, Flag, Registry, Result, STANDING_SQL, now_ms};
use crate::checked_text::stored_as_text;
use crate::user_id::UserId;

/// Registry setting: when the last complete room listing was applied.
pub const ROOMS_LISTED_SETTING: &str = "rooms.listed_at";

/// Rejoins of one person to one room tried before lifeboat stops trying
/// by itself (`lifeboat rooms rejoin --retry` starts the count over).
pub const MAX_REJOIN_ATTEMPTS: i64 = 5;

stored_as_text! {
    /// Where a room stands (see [`ROOM_STATE_SQL`]).
    #[cfg_attr(test, derive(Default))]
    pub enum RoomState {
        /// On this homeserver now.
        #[cfg_attr(test, default)]
        Here = "here",
        /// Gone from here, alive on other servers: people can rejoin it.
        Elsewhere = "elsewhere",
        /// It lived only on this server and is gone.
        Lost = "lost",
        /// Lost, and made again under a new room ID.
        Recreated = "recreated",
    }
}

impl RoomState {
    /// Does the room come back for a person who comes back?
    pub fn comes_back(self) -> bool {
        matches!(self, RoomState::Here | RoomState::Elsewhere)
    }
}

/// The one rule for a room's [`RoomState`], over `rooms` aliased `r`, with
/// `$1` the time of the latest complete room listing.
const ROOM_STATE_SQL: &str = "CASE WHEN r.recreated_as IS NOT NULL THEN 'recreated' \
     WHEN r.last_seen_at >= $1 THEN 'here' \
     WHEN r.joined_remote > 0 THEN 'elsewhere' \
     ELSE 'lost' END";

/// Whether a surviving room people lost (a former member's account is
/// lost, held, claimed or taken: a room an admin purged on purpose is left
/// alone) is back on this server (in a listing after `listed_before`, an
/// SQL value, not in it) by anyone's join but lifeboat's own, with aliases
/// or a directory entry to put back that are not due yet. Synapse lets a
/// server admin set both from outside the room; until then the registry
/// keeps what the directory lost (see [`record_details`]).
fn back_without_lifeboat(listed_before: &str) -> String {
    format!(
        "(rooms.last_seen_at < {listed_before} AND rooms.restored_at IS NULL AND rooms.recreated_as IS NULL \
          AND rooms.aliases_due_at IS NULL AND (rooms.aliases <> '[]' OR rooms.public <> 0) \
          AND EXISTS (SELECT 1 FROM room_members m JOIN accounts a ON a.user_id = m.user_id \
                      WHERE m.room_id = rooms.room_id AND m.membership = 'join' \
                      AND {}))",
        lost_since_listed()
    )
}

/// An account (`a`) lost since a listing saw it: missing, held, handed
/// back, or taken by a stranger.
fn lost_since_listed() -> String {
    format!("({STANDING_SQL}) IN ('missing', 'held', 'claimed', 'recreated')")
}

/// How many former members of the room `room_id` (an SQL column) a
/// stranger holds the ID of now ([`Room::strangers`]), or whoever can sign
/// in to a held account someone unlocked outside lifeboat. Invited ones
/// count too: the invite is still in the room's state, for whoever has the ID.
fn strangers_among_former_members(room_id: &str) -> String {
    let stranger = format!("(({STANDING_SQL}) = 'recreated' OR {UNLOCKED_HOLD_SQL})");
    former_members_where(room_id, &stranger)
}

/// A held account someone unlocked outside lifeboat: whoever can sign in
/// to it is no one lifeboat knows.
const UNLOCKED_HOLD_SQL: &str = "(a.custody = 'held' AND a.held_unlocked_at IS NOT NULL)";

/// An ID held for its person: the hold made (not under way, when the ID is
/// still free), and the account locked as lifeboat left it.
const HELD_FOR_THEM_SQL: &str = "(a.custody = 'held' AND a.held_unlocked_at IS NULL)";

/// How many former members of the room `room_id` have an ID anyone may
/// register now ([`Room::free`]): lost (not one Synapse refused to create
/// for anyone), its hold still being made, or joined but unknown to every
/// listing (until the next listing, or a hold run adopting it as lost).
fn free_among_former_members(room_id: &str) -> String {
    let free = format!(
        "((a.user_id IS NULL AND s.membership = 'join') OR (({STANDING_SQL}) = 'missing' AND a.hold_refused IS NULL) \
          OR a.custody = 'holding')"
    );
    former_members_where(room_id, &free)
}

/// Former members (joined or invited) of the room `room_id` meeting
/// `condition` on their account `a`, whose columns are NULL for an ID no
/// listing saw.
fn former_members_where(room_id: &str, condition: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM room_members s LEFT JOIN accounts a ON a.user_id = s.user_id \
          WHERE s.room_id = {room_id} AND s.membership IN ('join', 'invite') AND {condition})"
    )
}

/// What a sync learned of one room: the listing's summary, and, when the
/// room changed, what its state and aliases say.
#[derive(Debug, Clone, Default)]
pub struct RoomRecord {
    pub room_id: String,
    pub name: Option<String>,
    pub canonical_alias: Option<String>,
    pub join_rule: Option<String>,
    pub public: bool,
    pub encrypted: bool,
    pub room_type: Option<String>,
    pub creator: Option<String>,
    pub joined_local: i64,
    pub joined_remote: i64,
    pub state_events: i64,
    /// Read from the room's state; `None` when it did not change.
    pub details: Option<RoomDetails>,
}

#[derive(Debug, Clone, Default)]
pub struct RoomDetails {
    pub topic: Option<String>,
    pub avatar_url: Option<String>,
    pub aliases: Vec<String>,
    pub children: Vec<String>,
    pub via_servers: Vec<String>,
    /// Local accounts joined or invited: (user ID, membership, power level).
    pub members: Vec<(String, String, i64)>,
    /// Local accounts whose membership is leave or ban now: out of the
    /// room, whatever became of their ID (kicked or banned while it was
    /// lost: not brought back in).
    pub departed: Vec<String>,
    /// Who made the room ([`crate::synapse::maker_in`]): once known, the
    /// listing's `creator` (which the room's own server may have chosen)
    /// no longer replaces it.
    pub maker: Option<String>,
}

/// A room as the registry knows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[cfg_attr(test, derive(Default))] // only unit tests make one by hand
pub struct Room {
    pub room_id: String,
    pub state: RoomState,
    pub name: Option<String>,
    pub canonical_alias: Option<String>,
    pub topic: Option<String>,
    pub avatar_url: Option<String>,
    pub join_rule: Option<String>,
    #[sqlx(try_from = "Flag")]
    pub public: bool,
    #[sqlx(try_from = "Flag")]
    pub encrypted: bool,
    pub room_type: Option<String>,
    pub creator: Option<String>,
    #[sqlx(try_from = "JsonList")]
    pub aliases: Vec<String>,
    #[sqlx(try_from = "JsonList")]
    pub children: Vec<String>,
    #[sqlx(try_from = "JsonList")]
    pub via_servers: Vec<String>,
    pub joined_local: i64,
    pub joined_remote: i64,
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    pub restored_at: Option<i64>,
    pub restore_error: Option<String>,
    /// lifeboat's own joins that went unanswered (given up at the fifth;
    /// `rooms rejoin --retry` starts the count over).
    #[serde(skip)]
    pub restore_attempts: i64,
    /// Since when its aliases and directory entry wait to be put back.
    pub aliases_due_at: Option<i64>,
    pub recreated_as: Option<String>,
    /// Local members the registry knows; `rejoined` and `pending` as in [`RoomCounts`].
    pub members: i64,
    pub rejoined: i64,
    pub pending: i64,
    /// Former members (joined or invited) whose ID a stranger holds now
    /// (`recreated`, or held but unlocked outside lifeboat). The surviving
    /// room still counts them as members: once this server is back in it,
    /// so is the stranger, with the person's power level (or their invite).
    pub strangers: i64,
    /// Former members whose ID is lost and not held yet (`missing`, or its
    /// hold still being made), or joined ones no listing saw: anyone may
    /// register it meanwhile, and would be let in the same way.
    pub free: i64,
}

impl Room {
    /// The name people know it by: its name, alias, or ID.
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .filter(|name| !name.is_empty())
            .or(self.canonical_alias.as_deref())
            .or(self.aliases.first().map(String::as_str))
            .unwrap_or(&self.room_id)
    }

    pub fn is_space(&self) -> bool {
        self.room_type.as_deref() == Some("m.space")
    }

    /// How the way back into it stands, in words every face lists (each
    /// adds its own hints): its former members back and waiting, what holds
    /// it back, what lifeboat gave up or still has to put back.
    pub fn progress(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.members > 0 {
            parts.push(format!("{} of {} back, {} waiting", self.rejoined, self.members, self.pending));
        }
        if self.strangers > 0 {
            parts.push(format!("held back: {} former members' IDs are strangers'", self.strangers));
        }
        if self.free > 0 && self.state == RoomState::Elsewhere {
            parts.push(format!("{} former members' IDs not held yet", self.free));
        }
        if let Some(reason) = &self.restore_error {
            parts.push(format!("given up by lifeboat: {reason}"));
        }
        if self.aliases_due_at.is_some() {
            parts.push("aliases and directory entry not back yet".to_owned());
        }
        parts
    }
}

/// A column holding a JSON array of strings.
#[derive(sqlx::Type)]
#[sqlx(transparent)]
struct JsonList(String);

impl From<JsonList> for Vec<String> {
    fn from(json: JsonList) -> Vec<String> {
        serde_json::from_str(&json.0).unwrap_or_default()
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

/// Rooms by state, and memberships brought back or waiting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomCounts {
    pub here: i64,
    pub elsewhere: i64,
    pub lost: i64,
    pub recreated: i64,
    /// People joined again to a surviving room, or invited to a re-created one.
    pub rejoined: i64,
    /// People not back in a room yet (not back themselves, or failed and retried).
    pub pending: i64,
}

/// One person to bring back into one room.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rejoin {
    pub room_id: String,
    pub user_id: UserId,
    #[sqlx(try_from = "JsonList")]
    pub via_servers: Vec<String>,
    /// The room made in place of a lost one: they are invited there.
    pub recreated_as: Option<String>,
    /// lifeboat's account has left that room: it can invite nobody there.
    pub stepped_aside_at: Option<i64>,
}

/// What became of one of a person's rooms, for their notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomFate {
    pub label: String,
    pub state: RoomState,
    pub encrypted: bool,
}

/// The complete account listings that marked someone missing.
const LOSS_LISTINGS: &str = "SELECT s.id FROM sync_runs s WHERE s.status = 'complete' AND s.newly_missing > 0";

impl Registry {
    async fn rooms_listed_at(&self) -> Result<i64> {
        // Before any complete listing, no room counts as here.
        Ok(self.setting(ROOMS_LISTED_SETTING).await?.and_then(|at| at.parse().ok()).unwrap_or(i64::MAX))
    }

    /// Was a loss seen after the room listing applied at `listed_at` (its
    /// sync stopped or failed in its rooms, say)? Then a room here by that
    /// listing's word may be gone from this server since.
    async fn loss_since_rooms_listed(&self, listed_at: i64) -> Result<bool> {
        let sql = format!("{LOSS_LISTINGS} AND s.finished_at > $1 LIMIT 1");
        let loss: Option<i64> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(listed_at).fetch_optional(&self.pool).await?;
        Ok(loss.is_some() || self.wipe_seen_at().await?.is_some_and(|seen| seen > listed_at))
    }

    /// The listing's fingerprint of each known room, to tell which changed:
    /// (state events, joined local, joined remote).
    pub async fn room_fingerprints(&self) -> Result<HashMap<String, (i64, i64, i64)>> {
        let rows: Vec<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT room_id, state_events, joined_local, joined_remote FROM rooms")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(room, events, local, remote)| (room, (events, local, remote))).collect())
    }

    /// Up to `limit` rooms whose state was last read before `before` (or never), oldest first: read
    /// again though their fingerprint is the same (a new topic does not change it).
    pub async fn rooms_read_before(&self, before: i64, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT room_id FROM rooms WHERE state_read_at IS NULL OR state_read_at < $1 \
             ORDER BY COALESCE(state_read_at, 0), room_id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies a complete room listing in one transaction: every listed
    /// room is recorded as seen now; rooms not listed keep what the
    /// registry last knew (they are gone from here), unless they went while
    /// nothing was lost (then they are forgotten).
    pub async fn apply_room_listing(&self, rooms: &[RoomRecord]) -> Result<()> {
        // Asked before the listing's transaction (room listings run one at a
        // time, under the sync lease).
        let nothing_lost = !self.loss_since_rooms_listed(self.rooms_listed_at().await?).await?
            && self.wipe_unlisted().await?.is_none();
        let wipe_seen_at = self.wipe_seen_at().await?.unwrap_or(i64::MIN);
        let mut tx = self.begin_write().await?;
        // Each listing's stamp is later than the last one's, even within a
        // millisecond: a room in the previous listing only must not count
        // as in this one (`ROOM_STATE_SQL` compares the two).
        let previous: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(ROOMS_LISTED_SETTING)
            .fetch_optional(&mut *tx)
            .await?;
        let previous = previous.and_then(|stamp| stamp.parse::<i64>().ok()).unwrap_or(i64::MIN);
        let now = now_ms().max(previous.saturating_add(1));
        // A room back by anyone's join (a person's own, or one a listing
        // applied meanwhile caught before lifeboat recorded it) has its
        // aliases and directory entry due from this listing; one whose entry
        // is due keeps it as known: the directory lacks it only for now.
        let back = back_without_lifeboat("$13");
        let upsert = format!(
            "INSERT INTO rooms (room_id, name, canonical_alias, join_rule, public, encrypted, room_type, creator, \
             joined_local, joined_remote, state_events, first_seen_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (room_id) DO UPDATE SET name = excluded.name, canonical_alias = excluded.canonical_alias, \
             join_rule = excluded.join_rule, encrypted = excluded.encrypted, \
             public = CASE WHEN rooms.public <> 0 AND (rooms.aliases_due_at IS NOT NULL OR {back}) \
                      THEN rooms.public ELSE excluded.public END, \
             aliases_due_at = CASE WHEN {back} THEN excluded.last_seen_at ELSE rooms.aliases_due_at END, \
             aliases_attempts = CASE WHEN {back} THEN 0 ELSE rooms.aliases_attempts END, \
             room_type = excluded.room_type, \
             creator = CASE WHEN rooms.creator_from_state <> 0 THEN rooms.creator ELSE excluded.creator END, \
             joined_local = excluded.joined_local, \
             joined_remote = excluded.joined_remote, state_events = excluded.state_events, \
             last_seen_at = excluded.last_seen_at"
        );
        for room in rooms {
            sqlx::query(sqlx::AssertSqlSafe(upsert.as_str()))
                .bind(&room.room_id)
                .bind(&room.name)
                .bind(&room.canonical_alias)
                .bind(&room.join_rule)
                .bind(room.public as i64)
                .bind(room.encrypted as i64)
                .bind(&room.room_type)
                .bind(&room.creator)
                .bind(room.joined_local)
                .bind(room.joined_remote)
                .bind(room.state_events)
                .bind(now)
                .bind(previous)
                .execute(&mut *tx)
                .await?;
            if let Some(details) = &room.details {
                record_details(&mut tx, &room.room_id, details).await?;
            }
        }
        if nothing_lost {
            // Gone since the previous listing while nothing was lost (no
            // account listing since marked anyone missing, no wipe noted),
            // none of its former members either: an admin purged it, or
            // everyone here left it. Forgotten, so that a later loss does not
            // bring it back. Not a room made in place of a lost one: its
            // people may not be back in it yet.
            let lost = lost_since_listed();
            let forget = format!(
                "DELETE FROM rooms WHERE last_seen_at = $1 AND recreated_as IS NULL \
                 AND room_id NOT IN (SELECT recreated_as FROM rooms WHERE recreated_as IS NOT NULL) AND {} = 0",
                former_members_where("rooms.room_id", &lost),
            );
            sqlx::query(sqlx::AssertSqlSafe(forget)).bind(previous).execute(&mut *tx).await?;
        }
        // Gone since the previous listing, or since lifeboat came back into
        // them if a loss came after its join (another wipe before any
        // listing saw them back): lifeboat's account is to rejoin them again.
        // The loss: a wipe lifeboat noted ($3), or a listing applied since
        // that marked someone missing.
        let reset = format!(
            "UPDATE rooms SET restored_at = NULL, restore_error = NULL, aliases_due_at = NULL, aliases_attempts = 0, \
             restore_attempts = 0 WHERE last_seen_at = $1 \
             OR (last_seen_at < $2 AND restored_at > last_seen_at \
                 AND (restored_at < $3 OR EXISTS ({LOSS_LISTINGS} AND s.finished_at > rooms.restored_at)))"
        );
        sqlx::query(sqlx::AssertSqlSafe(reset)).bind(previous).bind(now).bind(wipe_seen_at).execute(&mut *tx).await?;
        set_setting_in(&mut *tx, ROOMS_LISTED_SETTING, &now.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rooms, most local members first; only those in `state` if given.
    pub async fn rooms(&self, state: Option<RoomState>) -> Result<Vec<Room>> {
        self.select_rooms(state, None).await
    }

    /// One room, read alone (the whole list costs three counts a room).
    pub async fn room(&self, room_id: &str) -> Result<Option<Room>> {
        Ok(self.select_rooms(None, Some(room_id)).await?.pop())
    }

    async fn select_rooms(&self, state: Option<RoomState>, room_id: Option<&str>) -> Result<Vec<Room>> {
        let listed_at = self.rooms_listed_at().await?;
        let sql = format!(
            "SELECT * FROM (SELECT r.*, {ROOM_STATE_SQL} AS state, \
             (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.room_id) AS members, \
             (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.room_id \
                AND m.rejoin IN ('joined', 'invited')) AS rejoined, \
             (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.room_id \
                AND m.membership = 'join' AND (m.rejoin IS NULL OR m.rejoin = 'failed') \
                AND NOT EXISTS (SELECT 1 FROM service_credentials c WHERE c.user_id = m.user_id) \
                AND EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = m.user_id AND {})) AS pending, \
             {} AS strangers, {} AS free \
             FROM rooms r WHERE ($3 = '' OR r.room_id = $3)) AS known WHERE ($2 = '' OR state = $2) \
             ORDER BY joined_local DESC, room_id",
            lost_since_listed(),
            strangers_among_former_members("r.room_id"),
            free_among_former_members("r.room_id"),
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(listed_at)
            .bind(state.map(RoomState::as_str).unwrap_or(""))
            .bind(room_id.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn room_counts(&self) -> Result<RoomCounts> {
        let mut counts = RoomCounts::default();
        for room in self.rooms(None).await? {
            *match room.state {
                RoomState::Here => &mut counts.here,
                RoomState::Elsewhere => &mut counts.elsewhere,
                RoomState::Lost => &mut counts.lost,
                RoomState::Recreated => &mut counts.recreated,
            } += 1;
            counts.rejoined += room.rejoined;
            counts.pending += room.pending;
        }
        Ok(counts)
    }

    /// Records lifeboat's own account back in a room (`error` none), its
    /// aliases and directory listing then due, or why it could not get in
    /// (aliases a person's join made due stay due).
    pub async fn mark_room_restored(&self, room_id: &str, error: Option<&str>) -> Result<()> {
        let restored_at = error.is_none().then(now_ms);
        sqlx::query(
            "UPDATE rooms SET restored_at = $2, restore_error = $3, \
             aliases_due_at = CASE WHEN $3 IS NULL THEN $2 ELSE aliases_due_at END, \
             aliases_attempts = CASE WHEN $3 IS NULL THEN 0 ELSE aliases_attempts END \
             WHERE room_id = $1",
        )
        .bind(room_id)
        .bind(restored_at)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What lifeboat gave up starts over (`rooms rejoin --retry`): rooms that
    /// refused or never answered its own join, and people's joins that
    /// failed too often, are tried again, and given up only after as many
    /// tries again (a refusal of lifeboat's own join at once). Returns how
    /// many rooms and joins.
    pub async fn retry_given_up(&self) -> Result<u64> {
        let rooms = sqlx::query(
            "UPDATE rooms SET restore_error = NULL, restore_attempts = 0 \
             WHERE restored_at IS NULL AND restore_error IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        let joins = sqlx::query(
            "UPDATE room_members SET rejoin_attempts = 0 WHERE rejoin = 'failed' AND rejoin_attempts >= $1",
        )
        .bind(MAX_REJOIN_ATTEMPTS)
        .execute(&self.pool)
        .await?;
        Ok(rooms.rows_affected() + joins.rows_affected())
    }

    /// Counts a try of lifeboat's own account at a surviving room whose
    /// servers did not answer; at the [`MAX_REJOIN_ATTEMPTS`]th the room is
    /// given up for `reason`, as a refusal is. True when given up.
    pub async fn own_rejoin_unanswered(&self, room_id: &str, reason: &str) -> Result<bool> {
        let (attempts,): (i64,) = sqlx::query_as(
            "UPDATE rooms SET restore_attempts = restore_attempts + 1 WHERE room_id = $1 RETURNING restore_attempts",
        )
        .bind(room_id)
        .fetch_one(&self.pool)
        .await?;
        let given_up = attempts >= MAX_REJOIN_ATTEMPTS;
        if given_up {
            self.mark_room_restored(room_id, Some(reason)).await?;
        }
        Ok(given_up)
    }

    /// Rooms this server is back in whose aliases and directory listing
    /// are still to be put back, with since when, longest due first.
    pub async fn rooms_with_aliases_due(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT room_id, aliases_due_at FROM rooms WHERE aliases_due_at IS NOT NULL \
             ORDER BY aliases_due_at, room_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every local member a room's last read found, joined or invited, as
    /// stored (not checked as IDs).
    pub async fn room_member_ids(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM room_members WHERE room_id = $1 ORDER BY user_id")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Rooms lifeboat made again, and has not left, whose former members
    /// nobody waits for any more (each invited, joined, or given up): each
    /// made room once, with a lost room it was made for. `service`,
    /// lifeboat's own account, is no one waited for.
    pub async fn recreated_rooms_nobody_waits_for(&self, service: &UserId) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT MIN(r.room_id), r.recreated_as FROM rooms r \
             WHERE r.recreated_as IS NOT NULL AND r.stepped_aside_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM rooms o JOIN room_members m ON m.room_id = o.room_id \
                 WHERE o.recreated_as = r.recreated_as AND m.membership = 'join' AND m.user_id <> $1 \
                 AND (m.rejoin IS NULL OR (m.rejoin = 'failed' AND m.rejoin_attempts < $2))) \
             GROUP BY r.recreated_as ORDER BY r.recreated_as",
        )
        .bind(service)
        .bind(MAX_REJOIN_ATTEMPTS)
        .fetch_all(&self.pool)
        .await?)
    }

    /// lifeboat's account has left `new_room_id`, a room it made again
    /// (kept with the lost rooms it was made for).
    pub async fn mark_stepped_aside(&self, new_room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET stepped_aside_at = $2 WHERE recreated_as = $1")
            .bind(new_room_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A room's aliases and directory listing are back, or are given up:
    /// listings record its aliases as they find them again.
    pub async fn aliases_no_longer_due(&self, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET aliases_due_at = NULL WHERE room_id = $1")
            .bind(room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Synapse refused to put a room's alias or listing back: given up at
    /// the [`MAX_REJOIN_ATTEMPTS`]th time.
    pub async fn aliases_refused(&self, room_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE rooms SET aliases_attempts = aliases_attempts + 1, \
             aliases_due_at = CASE WHEN aliases_attempts + 1 >= $2 THEN NULL ELSE aliases_due_at END \
             WHERE room_id = $1",
        )
        .bind(room_id)
        .bind(MAX_REJOIN_ATTEMPTS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a room is about to be made in place of a lost one, so
    /// a rerun after a crash looks for it before making another.
    pub async fn mark_room_recreating(&self, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET recreated_at = $2 WHERE room_id = $1 AND recreated_as IS NULL")
            .bind(room_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Was a room being made in place of this one when lifeboat stopped?
    pub async fn room_recreation_begun(&self, room_id: &str) -> Result<bool> {
        let row: Option<(Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT recreated_at, recreated_as FROM rooms WHERE room_id = $1")
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(matches!(row, Some((Some(_), None))))
    }

    /// Records the room made in place of a lost one.
    pub async fn mark_room_recreated(&self, room_id: &str, new_room_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE rooms SET recreated_as = $2, recreated_at = $3, stepped_aside_at = NULL WHERE room_id = $1",
        )
        .bind(room_id)
        .bind(new_room_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        // `room_id` was itself made in place of a room lost before (and is
        // lost now, after another wipe): that room's people go to the new
        // one (invited again: an invite to the lost one is lost with it),
        // and tries at the lost one count for nothing.
        sqlx::query(
            "UPDATE rooms SET recreated_as = $2, stepped_aside_at = NULL WHERE recreated_as = $1 AND room_id <> $1",
        )
        .bind(room_id)
        .bind(new_room_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE room_members SET rejoin = NULL, rejoin_error = NULL, rejoin_attempts = 0 \
             WHERE rejoin IN ('failed', 'invited') AND room_id IN (SELECT room_id FROM rooms WHERE recreated_as = $1)",
        )
        .bind(new_room_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `room_id` is a room lifeboat made again for a lost one.
    pub async fn is_recreated_room(&self, room_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM rooms WHERE recreated_as = $1")
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Rooms' joined local members that no account listing saw (registered
    /// after a listing, before its rooms were read), as stored (not checked
    /// as IDs), each with when lifeboat last read the rooms it was seen in.
    /// Lost in a wipe, such an ID is free for anyone, and its rooms would let
    /// them in. Not invited ones: an invite may name an ID nobody ever had.
    pub async fn room_members_no_listing_saw(&self) -> Result<Vec<(String, Option<i64>)>> {
        Ok(sqlx::query_as(
            "SELECT m.user_id, MAX(r.state_read_at) FROM room_members m JOIN rooms r ON r.room_id = m.room_id \
             LEFT JOIN accounts a ON a.user_id = m.user_id \
             WHERE a.user_id IS NULL AND m.membership = 'join' GROUP BY m.user_id ORDER BY m.user_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// People back on their ID (claimed) not yet back in their rooms that come back or were
    /// re-created, and those who never lost theirs (present) not yet invited into a re-created
    /// room (the invite as it was made failed), but `service`, lifeboat's own account, which made
    /// it. Failures are retried up to [`MAX_REJOIN_ATTEMPTS`] times ([`Self::retry_given_up`]
    /// starts the count over).
    /// Not into a surviving room this server is not in yet while a stranger holds a former
    /// member's ID ([`Room::strangers`]): the join would let the stranger in too. Nor, when
    /// `wait_for_holds`, while a former member's ID is free ([`Room::free`]).
    /// Joins that failed before come last: rooms nobody can reach (many of
    /// one person's, say) hold up nobody else's first try.
    pub async fn pending_rejoins(&self, wait_for_holds: bool, service: &UserId) -> Result<Vec<Rejoin>> {
        let listed_at = self.rooms_listed_at().await?;
        // A room here by a listing older than a loss waits as one elsewhere.
        let unsure_here = self.loss_since_rooms_listed(listed_at).await?;
        let sql = format!(
            "SELECT m.room_id, m.user_id, r.via_servers, r.recreated_as, r.stepped_aside_at \
             FROM room_members m JOIN rooms r ON r.room_id = m.room_id \
             JOIN accounts a ON a.user_id = m.user_id \
             WHERE m.membership = 'join' AND ({ROOM_STATE_SQL}) <> 'lost' \
             AND (({STANDING_SQL}) = 'claimed' \
                  OR (r.recreated_as IS NOT NULL AND ({STANDING_SQL}) = 'present' AND m.user_id <> $5)) \
             AND (m.rejoin IS NULL OR (m.rejoin = 'failed' AND m.rejoin_attempts < $2)) \
             AND ((({ROOM_STATE_SQL}) <> 'elsewhere' AND (({ROOM_STATE_SQL}) <> 'here' OR $4 = 0)) \
                  OR ({} = 0 AND ($3 = 0 OR {} = 0))) \
             ORDER BY m.rejoin_attempts, m.user_id, m.room_id",
            strangers_among_former_members("m.room_id"),
            free_among_former_members("m.room_id"),
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(listed_at)
            .bind(MAX_REJOIN_ATTEMPTS)
            .bind(wait_for_holds as i64)
            .bind(unsure_here as i64)
            .bind(service)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Forgets that `user_id` was in `room_id`: the room's state now says
    /// they left it or were removed, and nothing brings them back into it.
    pub async fn forget_member(&self, room_id: &str, user_id: &UserId) -> Result<()> {
        sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how bringing one person back into one room went.
    pub async fn record_rejoin(&self, room_id: &str, user_id: &UserId, outcome: RejoinOutcome<'_>) -> Result<()> {
        let (rejoin, error) = match outcome {
            RejoinOutcome::Joined => ("joined", None),
            RejoinOutcome::Invited => ("invited", None),
            RejoinOutcome::Failed(reason) => ("failed", Some(reason)),
        };
        sqlx::query(
            "UPDATE room_members SET rejoin = $3, rejoin_error = $4, rejoin_at = $5, \
             rejoin_attempts = rejoin_attempts + 1 WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(rejoin)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if matches!(outcome, RejoinOutcome::Joined) {
            self.aliases_due_once_back(room_id).await?;
        }
        Ok(())
    }

    /// A person's join brought this server back into a surviving room
    /// lifeboat's own join has not (it failed, or is given up): its aliases
    /// and directory listing are due now, not from the next listing.
    async fn aliases_due_once_back(&self, room_id: &str) -> Result<()> {
        let listed_at = self.rooms_listed_at().await?;
        let back = back_without_lifeboat("$3");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE rooms SET aliases_due_at = $2, aliases_attempts = 0 WHERE room_id = $1 AND {back}"
        )))
        .bind(room_id)
        .bind(now_ms())
        .bind(listed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Former members of a room (joined when it was last read): whether
    /// their ID is their person's again, or held for them, and their power.
    pub async fn room_members_back(&self, room_id: &str) -> Result<Vec<FormerMember>> {
        let sql = format!(
            "SELECT m.user_id, ({STANDING_SQL}), CAST(CASE WHEN {HELD_FOR_THEM_SQL} THEN 1 ELSE 0 END AS BIGINT), \
             m.power_level \
             FROM room_members m JOIN accounts a ON a.user_id = m.user_id \
             WHERE m.room_id = $1 AND m.membership = 'join' ORDER BY m.user_id"
        );
        let rows: Vec<(UserId, AccountState, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(room_id).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, standing, held, power_level)| FormerMember {
                user_id,
                back: standing.is_its_persons(),
                held: held == 1,
                power_level,
            })
            .collect())
    }

    /// The rooms each local account was joined to, for their notices.
    pub async fn room_fates(&self) -> Result<HashMap<String, Vec<RoomFate>>> {
        let mut fates: HashMap<String, Vec<RoomFate>> = HashMap::new();
        let rooms: HashMap<String, Room> =
            self.rooms(None).await?.into_iter().map(|room| (room.room_id.clone(), room)).collect();
        let memberships: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, room_id FROM room_members WHERE membership = 'join' ORDER BY room_id")
                .fetch_all(&self.pool)
                .await?;
        for (user_id, room_id) in memberships {
            let Some(room) = rooms.get(&room_id) else { continue };
            // A direct chat or unnamed room says nothing by its ID: left out.
            if room.label() == room.room_id {
                continue;
            }
            fates.entry(user_id).or_default().push(RoomFate {
                label: room.label().to_owned(),
                state: room.state,
                encrypted: room.encrypted,
            });
        }
        Ok(fates)
    }
}

/// A room's former member, as [`Registry::room_members_back`] gives one.
#[derive(Debug, Clone)]
pub struct FormerMember {
    pub user_id: UserId,
    /// Their ID is their person's again (present, or claimed).
    pub back: bool,
    /// Held for them ([`HELD_FOR_THEM_SQL`]).
    pub held: bool,
    /// Their power level in the room when it was last read.
    pub power_level: i64,
}

/// How bringing one person back into one room went.
#[derive(Debug, Clone, Copy)]
pub enum RejoinOutcome<'a> {
    Joined,
    Invited,
    Failed(&'a str),
}

/// A changed room's details and memberships. A membership gone from its state is dropped only
/// for a person here for good (a lost person's rooms are what their rejoin needs), or for one
/// the state shows left or banned (kicked while their ID was lost: not brought back).
async fn record_details(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    room_id: &str,
    details: &RoomDetails,
) -> Result<()> {
    // Aliases still to be put back are kept as known: the directory lacks
    // them only because they are not back yet.
    sqlx::query(
        "UPDATE rooms SET topic = $2, avatar_url = $3, \
         aliases = CASE WHEN aliases_due_at IS NULL THEN $4 ELSE aliases END, children = $5, via_servers = $6, \
         state_read_at = $7, creator = COALESCE($8, creator), \
         creator_from_state = CASE WHEN $8 IS NULL THEN creator_from_state ELSE 1 END WHERE room_id = $1",
    )
    .bind(room_id)
    .bind(&details.topic)
    .bind(&details.avatar_url)
    .bind(json_list(&details.aliases))
    .bind(json_list(&details.children))
    .bind(json_list(&details.via_servers))
    .bind(now_ms())
    .bind(&details.maker)
    .execute(&mut **tx)
    .await?;
    let sql = format!(
        "SELECT m.user_id, m.rejoin, ({STANDING_SQL}) FROM room_members m LEFT JOIN accounts a ON a.user_id = m.user_id \
         WHERE m.room_id = $1"
    );
    let known: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(room_id).fetch_all(&mut **tx).await?;
    for (user_id, rejoin, standing) in known {
        let still_member = details.members.iter().any(|(member, _, _)| *member == user_id);
        let here_for_good = match standing.as_deref() {
            Some("present") | None => true,
            Some("claimed") => rejoin.is_some_and(|rejoin| rejoin != "failed"),
            _ => false,
        };
        if !still_member && (here_for_good || details.departed.contains(&user_id)) {
            sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(&user_id)
                .execute(&mut **tx)
                .await?;
        }
    }
    for (user_id, membership, power_level) in &details.members {
        sqlx::query(
            "INSERT INTO room_members (room_id, user_id, membership, power_level) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, power_level = excluded.power_level",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(membership)
        .bind(power_level)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
