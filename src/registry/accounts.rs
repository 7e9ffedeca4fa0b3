//! Accounts: never deleted; an account that vanishes from Synapse is marked
//! missing, with the time it was first found missing.

use serde::Serialize;

use super::{Flag, Registry, Result};
use crate::reconcile::{AccountState, Known, registered_again};
use crate::user_id::UserId;

/// When the account a reconciliation compares with was made, over `accounts`
/// aliased `a`: unknown while lifeboat is making a hold (the registry's time
/// is then the lost account's, not the one being made).
pub(super) const KNOWN_CREATED_SQL: &str = "CASE WHEN a.custody = 'holding' THEN NULL ELSE a.synapse_created_at END";

/// Over `accounts` unaliased: on Synapse and its person's, as far as lifeboat
/// knows (not held, not taken by a stranger).
pub(super) const ITS_PERSONS_PRESENT: &str =
    "state = 'present' AND recreated_at IS NULL AND (custody IS NULL OR custody = 'claimed')";

/// The one rule for an account's [`AccountState`], read by every query and
/// every face: an SQL expression over `accounts` aliased `a` (holding no
/// comma, so it can sit in a column list split on commas). A deactivated
/// listing wins; then lifeboat's custody (a hold being made counts as held);
/// then an ID registered again by someone lifeboat cannot vouch for stays
/// recreated, whatever later syncs see, until an operator settles it.
pub const STANDING_SQL: &str = "CASE WHEN a.state = 'deactivated' THEN 'deactivated' \
     WHEN a.custody = 'holding' OR a.custody = 'held' THEN 'held' \
     WHEN a.state = 'missing' THEN 'missing' \
     WHEN a.custody = 'claimed' THEN 'claimed' \
     WHEN a.recreated_at IS NOT NULL THEN 'recreated' \
     ELSE 'present' END";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    pub user_id: UserId,
    pub display_name: Option<String>,
    #[sqlx(try_from = "Flag")]
    pub admin: bool,
    #[sqlx(try_from = "Flag")]
    pub deactivated: bool,
    #[sqlx(try_from = "Flag")]
    pub locked: bool,
    #[sqlx(try_from = "Flag")]
    pub is_guest: bool,
    pub user_type: Option<String>,
    pub synapse_created_at: Option<i64>,
    pub first_seen_at: i64,
    pub last_seen_present_at: Option<i64>,
    pub state: AccountState,
    pub missing_since: Option<i64>,
    pub recreated_at: Option<i64>,
    pub details_fetched_at: Option<i64>,
    /// When lifeboat's custody last changed (held: the hold's identity).
    pub custody_at: Option<i64>,
    /// Held, with its display name not yet restored on Synapse.
    #[sqlx(try_from = "Flag")]
    pub display_name_due: bool,
    /// Lost, and Synapse refused to create it for a hold with this error.
    pub hold_refused: Option<String>,
}

/// What a registration token leaves a person's old username to (a token
/// binds to no name): said wherever one is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldName {
    /// Lost and free: whoever registers it first has it, and an admin
    /// confirms it is its person before it counts as theirs.
    MayBeFree,
    /// Held for its person, who takes it back another way.
    Kept,
    /// Registered by someone lifeboat cannot vouch for.
    Taken,
    /// Synapse makes it for nobody now.
    NobodyCan,
}

impl OldName {
    /// The one rule, from an ID's standing and whether Synapse refused to
    /// create it for a hold (a notice being rendered has no whole account).
    pub fn of(state: AccountState, hold_refused: bool) -> OldName {
        match state {
            AccountState::Held => OldName::Kept,
            AccountState::Recreated => OldName::Taken,
            AccountState::Missing if hold_refused => OldName::NobodyCan,
            _ => OldName::MayBeFree,
        }
    }
}

impl Account {
    /// May the account on Synapse now act as this ID's registry person? Only
    /// while the ID is its person's (present or claimed), and only if Synapse's
    /// account (made at `created_at_ms`) is the one the registry knows, not
    /// one registered again since (a wipe no listing has shown yet).
    pub fn speaks_for_its_person(&self, created_at_ms: Option<i64>) -> bool {
        self.state.is_its_persons() && !registered_again(self.synapse_created_at, created_at_ms)
    }

    /// May this account's person be handed a way back in (a token, a claim
    /// link)? Not if an admin had locked or deactivated it before the loss:
    /// lifeboat does not undo an admin's decision. One rule for notices, `/token`, the bot.
    pub fn may_come_back(&self) -> bool {
        may_come_back(self.locked, self.deactivated)
    }

    /// What a registration token leaves this account's username to.
    pub fn old_name(&self) -> OldName {
        OldName::of(self.state, self.hold_refused.is_some())
    }

    /// The display name a hand-over must bring along: the person's, when
    /// its hold has not restored it yet.
    pub fn display_name_to_restore(&self) -> Option<&str> {
        self.display_name.as_deref().filter(|_| self.display_name_due)
    }
}

/// [`Account::may_come_back`] from the two flags (a delivery being rendered has no whole account).
pub fn may_come_back(locked_by_admin: bool, deactivated: bool) -> bool {
    !locked_by_admin && !deactivated
}

/// The `SELECT` list of an [`Account`], its state the standing.
pub(super) fn account_columns() -> String {
    format!(
        "a.user_id, a.display_name, a.admin, a.deactivated, a.locked, a.is_guest, a.user_type, \
         a.synapse_created_at, a.first_seen_at, a.last_seen_present_at, {STANDING_SQL} AS state, \
         a.missing_since, a.recreated_at, a.details_fetched_at, a.custody_at, \
         CASE WHEN a.display_name_due_at IS NULL THEN 0 ELSE 1 END AS display_name_due, a.hold_refused"
    )
}

/// Accounts a probe may look up: on Synapse and their person's, as far as
/// lifeboat knows; `rest` says which of them, and in what order.
fn probed<'q>(rest: &str) -> sqlx::query::QueryAs<'q, sqlx::Any, (String, Option<i64>), sqlx::any::AnyArguments> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, synapse_created_at FROM accounts WHERE {ITS_PERSONS_PRESENT} AND deactivated = 0 AND {rest}"
    )))
}

impl Registry {
    /// The fixed part of a probe's sample: the `each` oldest accounts and
    /// up to `each` admins, with their creation times (ms).
    pub async fn probe_sample_fixed(&self, each: i64) -> Result<Vec<(String, Option<i64>)>> {
        let oldest = "synapse_created_at IS NOT NULL ORDER BY synapse_created_at, user_id LIMIT $1";
        let mut sample = probed(oldest).bind(each).fetch_all(&self.pool).await?;
        sample.extend(probed("admin = 1 ORDER BY user_id LIMIT $1").bind(each).fetch_all(&self.pool).await?);
        Ok(sample)
    }

    /// Up to `limit` accounts in ID order from `start`, wrapping around: a
    /// probe's rotating part, read through the primary key's index.
    pub async fn probe_sample_from(&self, start: &str, limit: i64) -> Result<Vec<(String, Option<i64>)>> {
        let after = probed("user_id >= $1 ORDER BY user_id LIMIT $2");
        let mut sample = after.bind(start).bind(limit).fetch_all(&self.pool).await?;
        let missing = limit - sample.len() as i64;
        if missing > 0 {
            let before = probed("user_id < $1 ORDER BY user_id LIMIT $2");
            sample.extend(before.bind(start).bind(missing).fetch_all(&self.pool).await?);
        }
        Ok(sample)
    }

    pub async fn account(&self, user_id: &UserId) -> Result<Option<Account>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM accounts a WHERE a.user_id = $1",
            account_columns()
        )))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// [`Account::speaks_for_its_person`] by ID; an ID the registry never
    /// saw is new, not taken: yes.
    pub async fn speaks_for_its_person(&self, user_id: &UserId, created_at_ms: Option<i64>) -> Result<bool> {
        Ok(self.account(user_id).await?.is_none_or(|account| account.speaks_for_its_person(created_at_ms)))
    }

    /// Accounts in user-ID order, optionally only those in `state`.
    pub async fn accounts(&self, state: Option<AccountState>) -> Result<Vec<Account>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM accounts a WHERE ($1 = '' OR {STANDING_SQL} = $1) ORDER BY a.user_id",
            account_columns()
        )))
        .bind(state.map_or("", AccountState::as_str))
        .fetch_all(&self.pool)
        .await?)
    }

    /// What reconciliation needs of every known account, sorted bytewise by ID.
    pub async fn known_accounts(&self) -> Result<Vec<Known>> {
        let mut known: Vec<Known> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT a.user_id, {KNOWN_CREATED_SQL} AS created_at_ms, {STANDING_SQL} AS standing, a.lost_created_at \
             FROM accounts a"
        )))
        .fetch_all(&self.pool)
        .await?;
        // Sorted here, not by SQL, so the order never depends on a collation.
        known.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(known)
    }
}
