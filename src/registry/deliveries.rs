//! The outbox, and its notices (every other kind: `messages`). A delivery
//! stays pending until its outcome is recorded, right after the transport
//! confirms (in groups, see `crate::outbox`): a crash repeats only messages in flight.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use sqlx::Any;
use sqlx::pool::PoolConnection;

use super::{AccountState, Registry, Result, STANDING_SQL, now_ms};
use crate::checked_text::stored_as_text;
use crate::user_id::UserId;

stored_as_text! {
    /// How a delivery leaves.
    pub enum DeliveryChannel {
        Email = "email",
        /// A Matrix DM.
        Matrix = "matrix",
    }
}

stored_as_text! {
    pub enum DeliveryState {
        Pending = "pending",
        Sending = "sending",
        Sent = "sent",
        Failed = "failed",
        Skipped = "skipped",
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub skipped: i64,
}

impl DeliveryCounts {
    pub fn total(&self) -> i64 {
        self.pending + self.sending + self.sent + self.failed + self.skipped
    }
}

/// A due delivery, read by a notify run, with what is needed to render it.
#[derive(Clone, Deserialize, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub user_id: String,
    pub channel: DeliveryChannel,
    pub address: String,
    pub attempts: i64,
    /// When it was due (claims are sent in this order, then by id).
    pub next_attempt_at: i64,
    pub display_name: Option<String>,
    /// Who the account's ID belongs to now.
    pub account_state: AccountState,
    /// When lifeboat's custody last changed: for a held ID, the hold a
    /// claim link names.
    pub held_at: Option<i64>,
    /// An admin had locked or deactivated the account before it was lost.
    pub locked: i64,
    pub deactivated: i64,
    /// Lost, and Synapse creates its ID for nobody: the error it gave.
    pub hold_refused: Option<String>,
    pub contact_id: Option<i64>,
    /// For a Matrix-ID contact the registry knows as an account of this
    /// homeserver: who that ID belongs to now.
    pub contact_account_state: Option<AccountState>,
    pub opted_out_at: Option<i64>,
    pub token: Option<String>,
    pub token_expires_at: Option<i64>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("id", &self.id).field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// What an incident's email outbox would hold (for dry runs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlannedEmails {
    pub emails: i64,
    pub people_with_email: i64,
    pub people_without_channel: i64,
}

/// A notice already planned stays as it is (`deliveries_one_notice`).
const ONE_NOTICE_EACH: &str = "ON CONFLICT (incident_id, user_id, channel, address) WHERE kind = 'notice' DO NOTHING";

/// Pending rows of channel `$1` waiting out a backoff between `$2` (now)
/// and `$3`. Not a row that is due only once it expired: one a caller
/// sends at once itself (`outbox::send_at_once`: the drill, a DMed code).
const PARKED: &str = "channel = $1 AND state = 'pending' AND next_attempt_at > $2 AND next_attempt_at <= $3 \
     AND (expires_at IS NULL OR next_attempt_at < expires_at) AND (not_before IS NULL OR not_before <= $2)";

/// Who an incident's notices go to by email: each address of an affected
/// person that has not opted out (`ia`, `c`; the incident is `$1`). The
/// plan and its dry-run count read the same rows.
const PLANNED_EMAILS: &str = "FROM incident_accounts ia JOIN contacts c ON c.user_id = ia.user_id \
     WHERE ia.incident_id = $1 AND c.kind = 'email' AND c.opted_out_at IS NULL";

/// Who gets a DM on their own account: affected people whose account is
/// theirs now (`ia`, `a`), except lifeboat's own (`sender`, a parameter).
fn planned_survivor_dms(sender: &str) -> String {
    format!(
        "FROM incident_accounts ia JOIN accounts a ON a.user_id = ia.user_id \
         WHERE ia.incident_id = $1 AND {STANDING_SQL} IN ('present', 'claimed') AND a.user_id <> {sender}"
    )
}

/// Who gets a DM at a Matrix-ID contact (`ia`, `c`).
const PLANNED_CONTACT_DMS: &str = "FROM incident_accounts ia JOIN contacts c ON c.user_id = ia.user_id \
     WHERE ia.incident_id = $1 AND c.kind = 'matrix' AND c.opted_out_at IS NULL";

/// `due_deliveries`'s query, for SQLite and for PostgreSQL: the next due
/// deliveries of one channel, along the pending-only index. A claim comes
/// back as one row holding a JSON array of deliveries. Row by row, sqlx's
/// SQLite driver hands each row from its worker thread to the task through
/// a channel of 50, waking one or the other every few rows, which cost more
/// than the query; one row of JSON costs one hand-off.
static DUE_DELIVERIES: LazyLock<(String, String)> = LazyLock::new(|| {
    let columns = format!(
        "d.id, d.user_id, d.channel, d.address, d.attempts, d.next_attempt_at, \
         a.display_name, {STANDING_SQL} AS account_state, a.custody_at AS held_at, a.locked, \
         a.deactivated, a.hold_refused, c.id AS contact_id, ca.standing AS contact_account_state, c.opted_out_at, t.token, \
         t.expires_at AS token_expires_at"
    );
    let from = format!(
        "FROM (SELECT {columns} FROM deliveries d \
         JOIN accounts a ON a.user_id = d.user_id \
         LEFT JOIN contacts c ON c.user_id = d.user_id AND c.kind = d.channel AND c.address = d.address \
         LEFT JOIN (SELECT a.user_id, {STANDING_SQL} AS standing FROM accounts a) ca \
                ON d.channel = 'matrix' AND ca.user_id = d.address AND d.address <> d.user_id \
         LEFT JOIN registration_tokens t ON t.incident_id = d.incident_id AND t.user_id = d.user_id \
                                        AND t.purpose = 'notice' AND t.confirmed_at IS NOT NULL \
                                        AND t.revoked_at IS NULL \
                                        AND NOT (d.channel = 'matrix' AND d.address = d.user_id) \
         WHERE d.incident_id = $1 AND d.kind = 'notice' AND d.channel = $2 AND d.state = 'pending' \
           AND d.next_attempt_at <= $3 \
         ORDER BY d.next_attempt_at, d.id LIMIT $4) x"
    );
    let fields = json_fields(&columns);
    (
        format!("SELECT json_group_array(json_object({fields})) {from}"),
        format!("SELECT COALESCE(json_agg(json_build_object({fields}))::TEXT, '[]') {from}"),
    )
});

/// `'id', x.id, 'user_id', x.user_id, …` for each of `columns`, under the
/// name [`Delivery`] gives it.
fn json_fields(columns: &str) -> String {
    columns
        .split(',')
        .map(|column| {
            let name = column.rsplit([' ', '.']).next().expect("a column name").trim();
            format!("'{name}', x.{name}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Registry {
    /// Creates one email delivery per affected account and contact address
    /// that has not opted out; existing ones are left as they are.
    pub async fn plan_email_deliveries(&self, incident_id: i64) -> Result<u64> {
        self.plan_notices(incident_id, now_ms(), "c.user_id, 'email', c.address", PLANNED_EMAILS, None).await
    }

    /// Creates one Matrix DM delivery per affected account that exists on
    /// Synapse now (a survivor; not a recreated ID, which someone else may
    /// hold) and per Matrix-ID contact that has not opted out.
    /// `sender` (lifeboat's own account) never gets one.
    pub async fn plan_matrix_deliveries(&self, incident_id: i64, sender: &UserId) -> Result<u64> {
        let now = now_ms();
        let survivor_dms = planned_survivor_dms("$3");
        let survivors =
            self.plan_notices(incident_id, now, "a.user_id, 'matrix', a.user_id", &survivor_dms, Some(sender)).await?;
        let contacts =
            self.plan_notices(incident_id, now, "c.user_id, 'matrix', c.address", PLANNED_CONTACT_DMS, None).await?;
        Ok(survivors + contacts)
    }

    /// Inserts a pending notice, due `now`, for each row `recipients` (the
    /// `FROM … WHERE` of `PLANNED_EMAILS` and its kin) yields: `who` names
    /// its user ID, channel and address. `sender`, when given, is bound as
    /// `$3`, which `recipients` must then name (`planned_survivor_dms("$3")`).
    async fn plan_notices(
        &self,
        incident_id: i64,
        now: i64,
        who: &str,
        recipients: &str,
        sender: Option<&UserId>,
    ) -> Result<u64> {
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO deliveries (incident_id, user_id, channel, address, state, next_attempt_at, created_at) \
             SELECT ia.incident_id, {who}, 'pending', $2, $2 {recipients} {ONE_NOTICE_EACH}"
        )))
        .bind(incident_id)
        .bind(now);
        if let Some(sender) = sender {
            insert = insert.bind(sender);
        }
        Ok(insert.execute(&self.pool).await?.rows_affected())
    }

    /// The DM room lifeboat uses with `user_id`, if one was made.
    pub async fn dm_room(&self, user_id: &UserId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT room_id FROM dm_rooms WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn store_dm_room(&self, user_id: &UserId, room_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO dm_rooms (user_id, room_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id, created_at = excluded.created_at",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many DMs `plan_matrix_deliveries` would create.
    pub async fn planned_dms(&self, incident_id: i64, sender: &UserId) -> Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT COUNT(*) {}) + (SELECT COUNT(*) {PLANNED_CONTACT_DMS})",
            planned_survivor_dms("$2")
        )))
        .bind(incident_id)
        .bind(sender)
        .fetch_one(&self.pool)
        .await?)
    }

    /// How many emails `plan_email_deliveries` would create, without creating them.
    pub async fn planned_emails(&self, incident_id: i64) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) {PLANNED_EMAILS}");
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(incident_id).fetch_one(&self.pool).await?)
    }

    /// Makes an incident's unfinished deliveries (with `retry_failed`, the failed
    /// ones too) due now, but a message that may have gone out not before its
    /// time. `sending` rows, claimed by an older version that died mid-run,
    /// are taken back: resending is the only way not to lose them. With
    /// `keep_backoff` (serve's worker), pending rows keep the wait a failed
    /// try gave them: one due row must not make every waiting one due. Only
    /// one notify may run per incident at a time.
    pub async fn resume_deliveries(&self, incident_id: i64, retry_failed: bool, keep_backoff: bool) -> Result<u64> {
        let states = if retry_failed { "'pending', 'sending', 'failed'" } else { "'pending', 'sending'" };
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries SET state = 'pending', \
             next_attempt_at = CASE WHEN state = 'pending' AND $3 = 1 THEN next_attempt_at \
                                    WHEN not_before > $2 THEN not_before ELSE $2 END \
             WHERE incident_id = $1 AND kind = 'notice' AND state IN ({states})"
        )))
        .bind(incident_id)
        .bind(now_ms())
        .bind(i64::from(keep_backoff))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Holds back until `until` the due mail that carries a registration
    /// token, saying `why`: `Some(incident)`, that incident's notices whose
    /// person has a notice token (not those to survivors); `None`, the way
    /// back in an admin had the bot mail. Kept apart from the relay's backoff
    /// (`not_before`), so a probe of the relay does not release them.
    /// Returns how many.
    pub async fn hold_back_tokens(&self, incident_id: Option<i64>, until: i64, why: &str) -> Result<u64> {
        let which = match incident_id {
            Some(_) => {
                "kind = 'notice' AND incident_id = $4 \
                 AND EXISTS (SELECT 1 FROM registration_tokens t WHERE t.incident_id = deliveries.incident_id \
                             AND t.user_id = deliveries.user_id AND t.purpose = 'notice')"
            }
            None => "kind = 'token'",
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries SET next_attempt_at = $1, not_before = $1, last_error = $2 \
             WHERE {which} AND state = 'pending' AND next_attempt_at <= $3"
        )))
        .bind(until)
        .bind(why)
        .bind(now_ms());
        let query = match incident_id {
            Some(id) => query.bind(id),
            None => query,
        };
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// Up to `limit` due deliveries of one channel, longest due first, ready
    /// to render. Only reads: the run's lease keeps other senders away, and
    /// what a crashed run had read is still pending, so is read again.
    /// Follows the `deliveries_due` index (pending rows only).
    pub async fn due_deliveries(
        &self,
        incident_id: i64,
        channel: DeliveryChannel,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let (sqlite, postgres) = &*DUE_DELIVERIES;
        let sql = if self.is_postgres() { postgres } else { sqlite };
        let json: String = sqlx::query_scalar(sql.as_str())
            .bind(incident_id)
            .bind(channel)
            .bind(now_ms())
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
        let mut due: Vec<Delivery> = serde_json::from_str(&json).map_err(|err| sqlx::Error::Decode(Box::new(err)))?;
        // Aggregates keep the subquery's order in practice; not left to chance.
        due.sort_unstable_by_key(|delivery| (delivery.next_attempt_at, delivery.id));
        Ok(due)
    }

    /// A connection of its own for recording a run's outcomes ([`OutboxWriter`]).
    pub async fn outbox_writer(&self) -> Result<OutboxWriter> {
        Ok(OutboxWriter { conn: self.pool.acquire().await?, postgres: self.is_postgres() })
    }

    /// Pending deliveries on `channel` waiting out a backoff that ends
    /// before `until`: those a working channel may send now. (A message
    /// that may have gone out waits longer, and is not among them.)
    pub async fn parked_deliveries(&self, channel: DeliveryChannel, until: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM deliveries WHERE {PARKED}")))
            .bind(channel)
            .bind(now_ms())
            .bind(until)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Makes the deliveries [`Registry::parked_deliveries`] counts due now.
    pub async fn release_parked(&self, channel: DeliveryChannel, until: i64) -> Result<u64> {
        let now = now_ms();
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE deliveries SET next_attempt_at = $2 WHERE {PARKED}")))
            .bind(channel)
            .bind(now)
            .bind(until)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Puts due messages on `channel` off until `until`, noting why: an
    /// incident's notices, or (`None`) the queued messages of every other
    /// kind. A channel that cannot send at all now (a refused login, no way
    /// to DM) must not bring serve's worker back to each of them every round.
    pub async fn defer_due(
        &self,
        incident_id: Option<i64>,
        channel: DeliveryChannel,
        until: i64,
        why: &str,
    ) -> Result<u64> {
        let which = if incident_id.is_some() { "kind = 'notice' AND incident_id = $5" } else { "kind <> 'notice'" };
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries SET next_attempt_at = $2, last_error = $3 \
             WHERE {which} AND channel = $1 AND state = 'pending' AND next_attempt_at <= $4"
        )))
        .bind(channel)
        .bind(until)
        .bind(why)
        .bind(now_ms());
        let query = match incident_id {
            Some(id) => query.bind(id),
            None => query,
        };
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// When the next pending message on `channel` is due, if any: of an
    /// incident's notices, or (`None`) of the messages of every other kind.
    pub async fn next_pending_at(&self, incident_id: Option<i64>, channel: DeliveryChannel) -> Result<Option<i64>> {
        let which = if incident_id.is_some() { "kind = 'notice' AND incident_id = $2" } else { "kind <> 'notice'" };
        let query = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE {which} AND channel = $1 AND state = 'pending'"
        )))
        .bind(channel);
        let query = match incident_id {
            Some(id) => query.bind(id),
            None => query,
        };
        Ok(query.fetch_one(&self.pool).await?)
    }

    pub async fn delivery_counts(&self, incident_id: i64) -> Result<DeliveryCounts> {
        let count = |state| format!("COUNT(*) FILTER (WHERE state = '{state}') AS {state}");
        let columns: Vec<String> = DeliveryState::ALL.iter().map(|state| count(state.as_str())).collect();
        let columns = columns.join(", ");
        let sql = format!("SELECT {columns} FROM deliveries WHERE incident_id = $1 AND kind = 'notice'");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(incident_id).fetch_one(&self.pool).await?)
    }

    /// The incident's notices by `channel` not sent yet (due or in flight).
    pub async fn unsent_notices(&self, incident_id: i64, channel: DeliveryChannel) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE incident_id = $1 AND kind = 'notice' AND channel = $2 \
             AND state IN ('pending', 'sending')",
        )
        .bind(incident_id)
        .bind(channel)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The most recent errors of unfinished deliveries, for summaries.
    pub async fn delivery_errors(&self, incident_id: i64, limit: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT address, last_error FROM deliveries WHERE incident_id = $1 AND kind = 'notice' \
             AND last_error IS NOT NULL AND state IN ('pending', 'failed') ORDER BY id LIMIT $2",
        )
        .bind(incident_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every email an incident's notify would send, for a dry run: never
    /// stored, so no id, attempt or token. (The casts give PostgreSQL's
    /// literals the types the Any driver decodes.)
    pub async fn email_recipients(&self, incident_id: i64) -> Result<Vec<Delivery>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(0 AS BIGINT) AS id, a.user_id, c.kind AS channel, c.address, \
                    CAST(0 AS BIGINT) AS attempts, CAST(0 AS BIGINT) AS next_attempt_at, a.display_name, \
                    {STANDING_SQL} AS account_state, a.custody_at AS held_at, a.locked, \
                    a.deactivated, a.hold_refused, c.id AS contact_id, CAST(NULL AS TEXT) AS contact_account_state, \
                    c.opted_out_at, CAST(NULL AS TEXT) AS token, \
                    CAST(NULL AS BIGINT) AS token_expires_at \
             FROM incident_accounts ia JOIN accounts a ON a.user_id = ia.user_id \
             JOIN contacts c ON c.user_id = ia.user_id AND c.kind = 'email' AND c.opted_out_at IS NULL \
             WHERE ia.incident_id = $1 ORDER BY a.user_id, c.address"
        )))
        .bind(incident_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Records a send run's outcomes on one connection kept for the run: one
/// round trip a write, where the pool adds a second (sqlx checks every
/// connection given back, from a task of its own). No transaction is held
/// between writes: each statement commits on its own.
pub struct OutboxWriter {
    conn: PoolConnection<Any>,
    postgres: bool,
}

impl OutboxWriter {
    /// Marks the deliveries a run finished together sent, in one statement.
    /// The IDs go in as one JSON array: SQLite looks parameters up by name in
    /// a list, so binding hundreds of them costs more than the update.
    pub async fn mark_sent(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let listed = if self.postgres {
            "SELECT value::BIGINT FROM json_array_elements_text($2::JSON)"
        } else {
            "SELECT value FROM json_each($2)"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries SET state = 'sent', last_error = NULL, sent_at = $1, attempts = attempts + 1, \
             subject = NULL, body_text = NULL, body_html = NULL WHERE id IN ({listed}) AND state <> 'sent'"
        )))
        .bind(now_ms())
        .bind(serde_json::to_string(ids).expect("a list of integers is JSON"))
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    /// Ends an attempt other than by a send: `Pending` again after a transient
    /// failure (due at `next_attempt_at`), `Failed` or `Skipped`, with the
    /// reason. A message's stored text is kept only while it may still be sent.
    pub async fn mark_ended(
        &mut self,
        id: i64,
        state: DeliveryState,
        error: &str,
        next_attempt_at: Option<i64>,
        not_before: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = $2, last_error = $3, next_attempt_at = COALESCE($4, next_attempt_at), \
             attempts = attempts + $5, not_before = $6, \
             subject = CASE WHEN $2 = 'pending' THEN subject END, \
             body_text = CASE WHEN $2 = 'pending' THEN body_text END, \
             body_html = CASE WHEN $2 = 'pending' THEN body_html END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(error)
        .bind(next_attempt_at)
        // Every state set here ends an attempt, except a skip (nothing was
        // tried).
        .bind(i64::from(state != DeliveryState::Skipped))
        .bind(not_before)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_claimed_column_goes_into_the_claims_json_under_its_own_name() {
        let (sql, _) = &*super::DUE_DELIVERIES;
        assert!(sql.starts_with("SELECT json_group_array(json_object('id', x.id, 'user_id', x.user_id, "), "{sql}");
        assert!(sql.contains("'account_state', x.account_state, "), "{sql}");
        assert!(sql.contains("'contact_id', x.contact_id, "), "{sql}");
        assert!(sql.contains("'token_expires_at', x.token_expires_at)) FROM (SELECT d.id, "), "{sql}");
        assert_eq!(sql.matches(", x.").count(), 17, "one per column: {sql}");
    }
}
