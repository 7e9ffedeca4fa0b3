//! Held IDs: lost IDs lifeboat re-created, locked, for their owners.
//!
//! A hold is recorded as `holding` before the account is created and as
//! `held` once it is locked, so a run killed in between is recognised by
//! the next one. A held account is `claimed` when its owner takes it back.

use serde::Serialize;

use super::accounts::STANDING_SQL;
use super::{AccountState, Actor, Registry, Result, now_ms, placeholders};
use crate::email::EmailAddress;
use crate::user_id::UserId;

/// Leases of hand-overs begin with this, the ID follows ([`hand_over_lease`]).
const HAND_OVER_LEASE: &str = "hand-over:";

/// The lease a hand-over of `user_id` (a claim, by link or by an operator)
/// runs under.
pub fn hand_over_lease(user_id: &UserId) -> String {
    format!("{HAND_OVER_LEASE}{user_id}")
}

/// A lost ID to hold, with what the held account gets back of its person.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldCandidate {
    pub user_id: UserId,
    pub display_name: Option<String>,
    /// 1: a hold of it was begun by an earlier run that did not finish.
    pub begun_before: i64,
    /// 1: a server admin before the loss (held before the others).
    pub admin: i64,
}

/// An ID lifeboat holds or held, or one a stranger took.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HoldRow {
    pub user_id: UserId,
    pub display_name: Option<String>,
    /// Held, claimed or recreated; missing for one Synapse refused to create.
    pub state: AccountState,
    /// When it was held or claimed (for `recreated`: when that was seen; for missing: lost).
    pub since: Option<i64>,
    pub missing_since: Option<i64>,
    /// Held, and its display name not back on Synapse yet: since when.
    pub display_name_due_at: Option<i64>,
    /// Lost, and Synapse refused to create it for the hold with this error
    /// (see [`Registry::abandon_hold`]).
    pub hold_refused: Option<String>,
}

/// How the held, claimed and taken IDs of some accounts add up.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct HoldCounts {
    pub held: i64,
    pub claimed: i64,
    /// Registered again by someone lifeboat cannot vouch for.
    pub taken: i64,
}

/// Lost IDs to hold, over `accounts`: missing and not held yet (nor refused
/// by Synapse, see [`Registry::abandon_hold`]), or begun by an earlier run
/// (even if listed since). lifeboat's own ID too: after a wipe the shared
/// secret undoes (`recover`), it is usually there again before any listing
/// finds it lost; otherwise whoever took it could write as lifeboat, and the
/// hold run makes it lifeboat's again. Written as the partial index
/// `accounts_hold_candidates` is (migration 0017), so a planner with
/// statistics can answer it from that index (without them, SQLite takes the
/// state and custody indexes: no whole-table read either way).
const HOLD_CANDIDATES: &str = "((state = 'missing' AND custody IS NULL AND hold_refused IS NULL) \
     OR custody = 'holding')";

impl Registry {
    /// Keeps of `ids` (held IDs a listing showed unlocked) those still held
    /// here and not being handed over: a claim unlocks the account in
    /// Synapse before it records the claim, so a listing can catch it in
    /// between, and one that ended since reads as claimed. The leases are
    /// read first: a hand-over that ends between the two reads is claimed by
    /// the second. On a registry error the listing's word stands.
    pub async fn keep_still_held(&self, ids: &mut Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let read = async {
            // By the registry's clock, as leases are timed.
            let sql = format!("SELECT name FROM leases WHERE name LIKE $1 AND expires_at >= {}", self.clock_ms());
            let live: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(format!("{HAND_OVER_LEASE}%"))
                .fetch_all(&self.pool)
                .await?;
            // Only the IDs named, not every held one.
            let mut held: Vec<String> = Vec::new();
            for chunk in ids.chunks(500) {
                // Safe: the dynamic part is only numbered placeholders.
                let sql = format!(
                    "SELECT a.user_id FROM accounts a WHERE a.user_id IN ({}) AND ({STANDING_SQL}) = 'held'",
                    placeholders(1..=chunk.len())
                );
                let query = chunk.iter().fold(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), |query, id| query.bind(id));
                held.extend(query.fetch_all(&self.pool).await?);
            }
            Ok::<_, sqlx::Error>((live, held))
        };
        let Ok((live, held)) = read.await else { return };
        let held: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
        let handed_over = |id: &str| live.iter().any(|name| name.strip_prefix(HAND_OVER_LEASE) == Some(id));
        ids.retain(|id| held.contains(id.as_str()) && !handed_over(id));
    }

    /// Records IDs no listing saw as lost, so that a hold run holds them with
    /// the rest (the bot's admin IDs after a wipe, rooms' joined members no
    /// listing saw). Known IDs stay as they are.
    /// Their account's time is 0, so that any account found there before a
    /// hold is made (an abandoned hold, a stopped run) is a stranger's until
    /// an operator settles it.
    pub async fn adopt_as_lost(&self, user_ids: &[&UserId]) -> Result<()> {
        let now = now_ms();
        for user_id in user_ids {
            sqlx::query(
                "INSERT INTO accounts (user_id, first_seen_at, state, missing_since, synapse_created_at) \
                 VALUES ($1, $2, 'missing', $2, 0) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(*user_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Lost IDs to hold ([`HOLD_CANDIDATES`]), and, with `retry_refused`,
    /// those Synapse refused before (a refusal ends only when its hold is
    /// begun again, so a run stopped first leaves the rest as they were).
    pub async fn hold_candidates(&self, retry_refused: bool) -> Result<Vec<HoldCandidate>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT user_id, display_name, CASE WHEN custody = 'holding' THEN 1 ELSE 0 END AS begun_before, admin \
             FROM accounts WHERE {HOLD_CANDIDATES} \
                OR ($1 = 1 AND state = 'missing' AND custody IS NULL AND hold_refused IS NOT NULL) \
             ORDER BY user_id"
        )))
        .bind(i64::from(retry_refused))
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many lost IDs are still to be held ([`HOLD_CANDIDATES`]), with the first `shown` of
    /// them in ID order; without reading them all (a big wipe is held for hours).
    pub async fn unheld_lost_ids(&self, shown: i64) -> Result<(i64, Vec<UserId>)> {
        // One round trip: the count is over every row, before the limit.
        let sql = format!(
            "SELECT user_id, COUNT(*) OVER () AS total FROM accounts WHERE {HOLD_CANDIDATES} ORDER BY user_id LIMIT $1"
        );
        let rows: Vec<(UserId, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(shown.max(1)).fetch_all(&self.pool).await?;
        let count = rows.first().map_or(0, |(_, total)| *total);
        Ok((count, rows.into_iter().map(|(user_id, _)| user_id).take(shown as usize).collect()))
    }

    /// An account's verified emails, to restore on its hold, less any its person opted out of (a
    /// lapsed address, or one a stranger holds now: in Synapse it would reset the password) and
    /// any another account had at the last sync (the person's new one, say): Synapse keeps one
    /// account per address and would move it silently. The hold asks Synapse too, for accounts
    /// registered since.
    pub async fn verified_emails_of(&self, user_id: &UserId) -> Result<Vec<EmailAddress>> {
        Ok(sqlx::query_scalar(
            "SELECT address FROM contacts c WHERE user_id = $1 AND kind = 'email' AND verified_at IS NOT NULL \
               AND opted_out_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM contacts other JOIN accounts a ON a.user_id = other.user_id \
                               WHERE other.kind = 'email' AND other.address = c.address AND other.user_id <> c.user_id \
                                 AND other.source = 'synapse' AND a.state = 'present') \
             ORDER BY address",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every verified email of an account's person, opted out of or not:
    /// whatever a hold may have given its account.
    pub async fn persons_verified_emails(&self, user_id: &UserId) -> Result<Vec<EmailAddress>> {
        Ok(sqlx::query_scalar(
            "SELECT address FROM contacts WHERE user_id = $1 AND kind = 'email' AND verified_at IS NOT NULL \
             ORDER BY address",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Is a hold of `user_id` begun and not yet made? Until it is, its
    /// account must not be handed over: the hold's lock would follow.
    pub async fn hold_under_way(&self, user_id: &UserId) -> Result<bool> {
        let custody: Option<Option<String>> = sqlx::query_scalar("SELECT custody FROM accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(custody.flatten().as_deref() == Some("holding"))
    }

    /// Records that a hold of `user_id` is about to be made (before the
    /// account is created, so a crash leaves a trace to resume from).
    /// `false` when it is no longer a lost ID nobody holds (another hold run
    /// began it meanwhile, or a sync found it back).
    pub async fn begin_hold(&self, user_id: &UserId) -> Result<bool> {
        let begun = sqlx::query(
            "UPDATE accounts SET custody = 'holding', custody_at = $2, hold_refused = NULL \
             WHERE user_id = $1 AND state = 'missing' AND custody IS NULL",
        )
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(begun.rows_affected() == 1)
    }

    /// The account lifeboat created for `user_id` is locked: it is held. `created_at_ms` keeps
    /// later listings from taking it for a stranger's, but not one made after it (another wipe);
    /// unknown, the next listing's stands. `name_due`: its display name is still to be restored.
    /// `false` when the hold was no longer under way (another run settled the ID meanwhile).
    pub async fn mark_held(&self, user_id: &UserId, created_at_ms: Option<i64>, name_due: bool) -> Result<bool> {
        let held = sqlx::query(
            "UPDATE accounts SET custody = 'held', custody_at = $2, state = 'present', \
                    synapse_created_at = $3, last_seen_present_at = $2, recreated_at = NULL, \
                    display_name_due_at = CASE WHEN $4 = 1 THEN $2 ELSE NULL END, held_unlocked_at = NULL, \
                    stranger_devices = NULL \
             WHERE user_id = $1 AND custody = 'holding'",
        )
        .bind(user_id)
        .bind(now_ms())
        .bind(created_at_ms)
        .bind(i64::from(name_due))
        .execute(&self.pool)
        .await?;
        Ok(held.rows_affected() == 1)
    }

    /// lifeboat's own account, made again by a hold run as [`Self::mark_held`] makes a person's,
    /// is lifeboat's own again, not held: nobody claims it, and it is no stranger's.
    pub async fn mark_own_made_again(&self, user_id: &UserId, created_at_ms: Option<i64>) -> Result<bool> {
        let made = sqlx::query(
            "UPDATE accounts SET custody = NULL, custody_at = NULL, state = 'present', \
                    synapse_created_at = $3, last_seen_present_at = $2, recreated_at = NULL \
             WHERE user_id = $1 AND custody = 'holding'",
        )
        .bind(user_id)
        .bind(now_ms())
        .bind(created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(made.rows_affected() == 1)
    }

    /// Held accounts whose display name is still to be restored, with it,
    /// oldest hold first.
    pub async fn held_names_due(&self) -> Result<Vec<(UserId, String)>> {
        Ok(sqlx::query_as(
            "SELECT user_id, display_name FROM accounts \
             WHERE custody = 'held' AND display_name_due_at IS NOT NULL AND display_name IS NOT NULL \
             ORDER BY display_name_due_at, user_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The display name of held `user_id` is back on Synapse.
    pub async fn held_name_restored(&self, user_id: &UserId) -> Result<()> {
        sqlx::query("UPDATE accounts SET display_name_due_at = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Someone registered `user_id` before lifeboat could hold it: the ID is
    /// a stranger's (recreated), and lifeboat does not touch that account.
    /// Only while its hold is still being made: once another hold run held
    /// it (this one paused past its lease), the account there is lifeboat's.
    /// Says whether it was marked.
    pub async fn mark_taken_before_hold(&self, user_id: &UserId, actor: &Actor) -> Result<bool> {
        // The lost account's creation time goes: the next listing brings the new account's.
        let taken = sqlx::query(
            "UPDATE accounts SET custody = NULL, custody_at = NULL, recreated_at = $2, state = 'present', \
                    synapse_created_at = NULL \
             WHERE user_id = $1 AND custody = 'holding'",
        )
        .bind(user_id)
        .bind(now_ms());
        let detail = "registered by someone else before the hold";
        self.write_audited(taken, actor, "hold.taken", user_id.as_str(), detail).await
    }

    /// A hold that cannot be made (Synapse refused to create the account):
    /// the ID is left missing, to be tried again. With `refused`, the error
    /// code Synapse gives every registration of that name alike: nobody can
    /// take the ID, so it is no hold candidate until a sync finds new
    /// accounts lost (what the refusal rested on may be among them) or an
    /// operator asks (`lifeboat holds make`).
    pub async fn abandon_hold(&self, user_id: &UserId, refused: Option<&str>) -> Result<()> {
        // `begin_hold` cleared `hold_refused`: NULL keeps it so.
        sqlx::query(
            "UPDATE accounts SET custody = NULL, custody_at = NULL, hold_refused = $2 \
             WHERE user_id = $1 AND custody = 'holding'",
        )
        .bind(user_id)
        .bind(refused)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hands the hold identified by `held_at` back to its owner: `true` for
    /// the one call that does it (a link works once, however many clicks).
    pub async fn claim_hold(&self, user_id: &UserId, held_at: i64, actor: &Actor) -> Result<bool> {
        let claim = sqlx::query(
            "UPDATE accounts SET custody = 'claimed', custody_at = $3, display_name_due_at = NULL \
             WHERE user_id = $1 AND custody = 'held' AND custody_at = $2",
        )
        .bind(user_id)
        .bind(held_at)
        .bind(now_ms());
        self.write_audited(claim, actor, "hold.claim", user_id.as_str(), "handed back to its owner").await
    }

    /// An operator on the lifeboat host gave the ID to its person (a held
    /// ID, or one a stranger took): it is theirs again.
    /// `created_at_ms` is when the account handed over was made (`None`:
    /// unknown, the next listing brings it, never compared with an older one).
    pub async fn settle_as_claimed(&self, user_id: &UserId, created_at_ms: Option<i64>, actor: &Actor) -> Result<()> {
        // The lost account's creation time stays: if Synapse's old database
        // is restored, the person's own account is known as theirs again.
        let set = "custody = 'claimed', custody_at = $2, recreated_at = NULL, display_name_due_at = NULL, \
                   synapse_created_at = $3, stranger_devices = NULL";
        self.settle(user_id, set, created_at_ms, actor, "hold.claim", "password set by an operator").await
    }

    /// The devices an operator's hand-over of a stranger's account (`holds
    /// claim` of a recreated ID) logged out: should one come back, Synapse
    /// was restored from a backup older than the hand-over.
    pub async fn record_stranger_devices(&self, user_id: &UserId, devices: &[String]) -> Result<()> {
        let devices = serde_json::to_string(devices).expect("a list of strings is JSON");
        sqlx::query("UPDATE accounts SET stranger_devices = $2 WHERE user_id = $1 AND custody = 'claimed'")
            .bind(user_id)
            .bind(devices)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// IDs handed over from a stranger, with when, and the devices it logged out.
    pub async fn handed_over_from_strangers(&self) -> Result<Vec<(UserId, i64, Vec<String>)>> {
        let rows: Vec<(UserId, i64, String)> = sqlx::query_as(
            "SELECT user_id, custody_at, stranger_devices FROM accounts \
             WHERE custody = 'claimed' AND stranger_devices IS NOT NULL AND custody_at IS NOT NULL ORDER BY user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let parsed = |devices: &str| serde_json::from_str(devices).unwrap_or_default();
        Ok(rows.into_iter().map(|(user_id, at, devices)| (user_id, at, parsed(&devices))).collect())
    }

    /// Synapse was restored from a backup older than the hand-over of
    /// `user_id` from a stranger: the stranger has the account again, and
    /// it is theirs (`recreated`) until an operator hands it over once more.
    pub async fn stranger_again(&self, user_id: &UserId, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let again = sqlx::query(
            "UPDATE accounts SET custody = NULL, custody_at = NULL, recreated_at = $2, stranger_devices = NULL \
             WHERE user_id = $1 AND custody = 'claimed' AND stranger_devices IS NOT NULL",
        )
        .bind(user_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if again.rows_affected() == 1 {
            // The restore undid the rejoins since: once handed over again,
            // its person is brought back into the rooms once more.
            sqlx::query(
                "UPDATE room_members SET rejoin = NULL, rejoin_error = NULL, rejoin_attempts = 0, rejoin_at = $2 \
                 WHERE user_id = $1",
            )
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let detail = "a device its hand-over logged out is back: Synapse was restored from before it";
            Self::audit_in(&mut tx, actor, "account.stranger_again", Some(user_id.as_str()), Some(detail)).await?;
        }
        tx.commit().await?;
        Ok(again.rows_affected() == 1)
    }

    /// IDs an application service had that someone registered again: each
    /// with the service recorded, to be asked whether it was that service.
    pub async fn taken_appservice_ids(&self) -> Result<Vec<(UserId, String)>> {
        let sql = format!(
            "SELECT a.user_id, a.appservice_id FROM accounts a \
             WHERE a.appservice_id IS NOT NULL AND ({STANDING_SQL}) = 'recreated' ORDER BY a.user_id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }

    /// The ID is someone else's now: which service had it says nothing more.
    pub async fn forget_appservice(&self, user_id: &UserId) -> Result<()> {
        sqlx::query("UPDATE accounts SET appservice_id = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The application service that had the ID registered it again (a bridge
    /// making its users again after a wipe): it is its own, as a survivor's
    /// is. `created_at_ms`: when the new account was made.
    pub async fn settle_as_its_appservices(
        &self,
        user_id: &UserId,
        created_at_ms: Option<i64>,
        actor: &Actor,
    ) -> Result<()> {
        let set = "custody = NULL, custody_at = NULL, recreated_at = NULL, display_name_due_at = NULL, \
                   lost_created_at = NULL, last_seen_present_at = $2, synapse_created_at = $3";
        let detail = "registered again by the application service that had it";
        self.settle(user_id, set, created_at_ms, actor, "account.appservice", detail).await
    }

    /// A hold ended for good: the account is deactivated on Synapse.
    pub async fn release_hold(&self, user_id: &UserId, actor: &Actor) -> Result<()> {
        let set = "custody = NULL, custody_at = $2, state = 'deactivated', deactivated = 1, \
                   synapse_created_at = COALESCE($3, synapse_created_at)";
        self.settle(user_id, set, None, actor, "hold.release", "deactivated: the ID is retired").await
    }

    /// Sets `set` (`$2` is now, `$3` the creation time given) on the account and audits it, in one
    /// transaction: audited even when the registry has no such account,
    /// since the operator's change on Synapse happened all the same.
    async fn settle(
        &self,
        user_id: &UserId,
        set: &'static str,
        created_at_ms: Option<i64>,
        actor: &Actor,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Safe: `set` is a constant of the caller's.
        let sql = format!("UPDATE accounts SET {set} WHERE user_id = $1");
        let update = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(now_ms()).bind(created_at_ms);
        update.execute(&mut *tx).await?;
        Self::audit_in(&mut tx, actor, action, Some(user_id.as_str()), Some(detail)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Held, claimed and taken IDs, and lost ones Synapse refused to create, in ID order.
    pub async fn holds(&self) -> Result<Vec<HoldRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT user_id, display_name, state, since, missing_since, display_name_due_at, hold_refused FROM \
               (SELECT a.user_id, a.display_name, {STANDING_SQL} AS state, \
                       CASE WHEN a.custody IS NOT NULL THEN a.custody_at \
                            WHEN a.state = 'missing' THEN a.missing_since ELSE a.recreated_at END AS since, \
                       a.missing_since, a.display_name_due_at, a.hold_refused \
                FROM accounts a) x \
             WHERE state IN ('held', 'claimed', 'recreated') OR (state = 'missing' AND hold_refused IS NOT NULL) \
             ORDER BY user_id"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Held, claimed and taken IDs among an incident's affected accounts.
    pub async fn incident_hold_counts(&self, incident_id: i64) -> Result<HoldCounts> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(SUM(CASE WHEN state = 'held' THEN 1 ELSE 0 END), 0) AS held, \
                    COALESCE(SUM(CASE WHEN state = 'claimed' THEN 1 ELSE 0 END), 0) AS claimed, \
                    COALESCE(SUM(CASE WHEN state = 'recreated' THEN 1 ELSE 0 END), 0) AS taken \
             FROM (SELECT {STANDING_SQL} AS state FROM accounts a \
                   WHERE a.user_id IN (SELECT user_id FROM incident_accounts WHERE incident_id = $1)) x"
        )))
        .bind(incident_id)
        .fetch_one(&self.pool)
        .await?)
    }
}
