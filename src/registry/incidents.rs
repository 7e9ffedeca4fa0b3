//! Incidents: the affected accounts are snapshotted at opening, and each
//! affected person whose account is gone gets one notice token.

use serde::Serialize;

use super::RoomCounts;
use super::accounts::account_columns;
use super::{Account, Actor, DeliveryCounts, Error, HoldCounts, Registry, Result, STANDING_SQL, now_ms};
use crate::checked_text::stored_as_text;
use crate::user_id::UserId;

stored_as_text! {
    /// Who an incident covers.
    pub enum IncidentScope {
        /// Accounts lost (missing, held, or taken) that no incident covered.
        Missing = "missing",
        /// Every account in the registry.
        All = "all",
    }
}

stored_as_text! {
    /// Why a registration token was made.
    pub enum TokenPurpose {
        /// One per affected person, sent with the incident's notice.
        Notice = "notice",
        /// A person asked on the web page, or an admin with the bot's `token`.
        Request = "request",
    }
}

impl IncidentScope {
    /// The accounts it covers, as an SQL condition over `accounts a`. `Missing`: lost accounts
    /// (missing, or held for their owner), and recreated ones (someone else may hold the ID)
    /// that no earlier incident covered.
    fn filter(self) -> String {
        match self {
            IncidentScope::All => "1 = 1".to_owned(),
            IncidentScope::Missing => format!(
                "{STANDING_SQL} IN ('missing', 'held') OR ({STANDING_SQL} = 'recreated' AND NOT EXISTS \
                 (SELECT 1 FROM incident_accounts earlier WHERE earlier.user_id = a.user_id))"
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Incident {
    pub id: i64,
    pub title: String,
    pub postmortem: String,
    pub scope: IncidentScope,
    pub opened_at: i64,
    pub resolved_at: Option<i64>,
}

impl Incident {
    /// The postmortem as people read it under the title: without a first
    /// heading that only repeats the title (`# Database lost` under the
    /// title "Database lost"), which would show it twice.
    pub fn postmortem_body(&self) -> &str {
        let text = self.postmortem.trim_start();
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        let heading = first.trim().strip_prefix("# ").map(str::trim);
        match heading {
            Some(heading) if heading.eq_ignore_ascii_case(self.title.trim()) => rest.trim_start(),
            _ => text,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentSummary {
    #[serde(flatten)]
    pub incident: Incident,
    pub affected: i64,
    /// Affected people with at least one email contact that has not opted out.
    pub reachable_by_email: i64,
    /// Affected people a Matrix DM can reach: their account still exists
    /// (and is theirs), or they have a Matrix-ID contact.
    pub reachable_by_matrix: i64,
    pub unreachable: i64,
    pub tokens: i64,
    /// Held, claimed and taken IDs among the affected.
    pub holds: HoldCounts,
    pub deliveries: DeliveryCounts,
    /// Where the homeserver's rooms stand, and the people back in them.
    pub rooms: RoomCounts,
}

/// A registration token recorded against an affected account.
#[derive(Clone, Serialize, sqlx::FromRow)]
pub struct NoticeToken {
    pub id: i64,
    pub token: String,
    pub incident_id: i64,
    pub user_id: String,
    pub purpose: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub confirmed_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for NoticeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeToken").field("id", &self.id).field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

const TOKEN_COLUMNS: &str =
    "id, token, incident_id, user_id, purpose, created_at, expires_at, confirmed_at, revoked_at";

impl Registry {
    /// Opens an incident and snapshots its affected accounts; refuses when nobody would be
    /// affected, and unless `even_if_covered`, when an open incident covers any of them
    /// (`Error::AlreadyCovered`): checked in the opening transaction, so two opens cannot both pass.
    pub async fn open_incident(
        &self,
        title: &str,
        postmortem: &str,
        scope: IncidentScope,
        even_if_covered: bool,
        actor: &Actor,
    ) -> Result<(Incident, i64)> {
        // Locked for the coverage check only: `--affected all` of a big
        // registry writes long, and a forced one checks nothing.
        let mut tx =
            if even_if_covered { self.begin_write().await? } else { self.begin_write_locking("incidents").await? };
        if !even_if_covered {
            let covering: Vec<(i64, i64)> =
                sqlx::query_as(sqlx::AssertSqlSafe(covering_query(scope))).fetch_all(&mut *tx).await?;
            if !covering.is_empty() {
                tx.rollback().await?;
                return Err(Error::AlreadyCovered(covering));
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO incidents (title, postmortem, scope, opened_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(title)
        .bind(postmortem)
        .bind(scope)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let filter = scope.filter();
        let affected = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO incident_accounts (incident_id, user_id, state_at_opening) \
             SELECT $1, a.user_id, {STANDING_SQL} FROM accounts a WHERE {filter}"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if affected == 0 {
            tx.rollback().await?;
            return Err(match scope {
                IncidentScope::All => Error::NoAccounts,
                IncidentScope::Missing => Error::NobodyMissing,
            });
        }
        let (subject, detail) = (format!("incident {id}"), format!("{title} ({affected} affected)"));
        Self::audit_in(&mut tx, actor, "incident.open", Some(&subject), Some(&detail)).await?;
        tx.commit().await?;
        let incident = self.incident(id).await?.expect("the incident was just created");
        Ok((incident, affected))
    }

    pub async fn incident(&self, id: i64) -> Result<Option<Incident>> {
        Ok(sqlx::query_as("SELECT id, title, postmortem, scope, opened_at, resolved_at FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// An incident that must exist, or a sentence saying it does not.
    pub async fn require_incident(&self, id: i64) -> Result<Incident> {
        self.incident(id).await?.ok_or(Error::NoSuchIncident(id))
    }

    pub async fn incidents(&self) -> Result<Vec<Incident>> {
        Ok(sqlx::query_as(
            "SELECT id, title, postmortem, scope, opened_at, resolved_at FROM incidents ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts as notify sees them: Matrix-reachable are accounts that still
    /// exist and are their person's (not recreated, not lifeboat's own
    /// `service` account) and people with a Matrix-ID contact.
    pub async fn incident_summary(&self, id: i64, service: &UserId) -> Result<IncidentSummary> {
        let incident = self.require_incident(id).await?;
        let (affected, by_email, by_matrix, unreachable, tokens): (i64, i64, i64, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*), \
                    COALESCE(SUM(CASE WHEN has_email THEN 1 ELSE 0 END), 0), \
                    COALESCE(SUM(CASE WHEN on_matrix THEN 1 ELSE 0 END), 0), \
                    COALESCE(SUM(CASE WHEN has_email OR on_matrix THEN 0 ELSE 1 END), 0), \
                    (SELECT COUNT(*) FROM registration_tokens WHERE incident_id = $1) \
             FROM (SELECT EXISTS (SELECT 1 FROM contacts c WHERE c.user_id = ia.user_id AND c.kind = 'email' \
                                  AND c.opted_out_at IS NULL) AS has_email, \
                          (({STANDING_SQL} IN ('present', 'claimed') AND a.user_id <> $2) \
                           OR EXISTS (SELECT 1 FROM contacts m WHERE m.user_id = ia.user_id AND m.kind = 'matrix' \
                                      AND m.opted_out_at IS NULL)) AS on_matrix \
                   FROM incident_accounts ia JOIN accounts a ON a.user_id = ia.user_id \
                   WHERE ia.incident_id = $1) people"
            )))
            .bind(id)
            .bind(service)
            .fetch_one(&self.pool)
            .await?;
        Ok(IncidentSummary {
            incident,
            affected,
            reachable_by_email: by_email,
            reachable_by_matrix: by_matrix,
            unreachable,
            tokens,
            holds: self.incident_hold_counts(id).await?,
            deliveries: self.delivery_counts(id).await?,
            rooms: self.room_counts().await?,
        })
    }

    /// Marks an incident resolved; its unused tokens must then be revoked.
    pub async fn resolve_incident(&self, id: i64, actor: &Actor) -> Result<()> {
        let incident = self.require_incident(id).await?;
        if incident.resolved_at.is_some() {
            return Err(Error::Refused(format!("incident {id} is already resolved")));
        }
        let resolve = sqlx::query("UPDATE incidents SET resolved_at = $2 WHERE id = $1").bind(id).bind(now_ms());
        let subject = format!("incident {id}");
        self.write_audited(resolve, actor, "incident.resolve", &subject, &incident.title).await.map(drop)
    }

    /// Affected accounts without a notice token whose person lost the use of their ID (missing,
    /// held, or recreated), except `service`. Whether each may have one is `Account::may_come_back`.
    pub async fn accounts_without_notice_token(&self, incident_id: i64, service: &UserId) -> Result<Vec<Account>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM incident_accounts ia JOIN accounts a ON a.user_id = ia.user_id \
             WHERE ia.incident_id = $1 AND {STANDING_SQL} IN ('missing', 'held', 'recreated') AND a.user_id <> $2 \
               AND NOT EXISTS (SELECT 1 FROM registration_tokens t WHERE t.incident_id = ia.incident_id \
                               AND t.user_id = ia.user_id AND t.purpose = 'notice') \
             ORDER BY ia.user_id",
            account_columns()
        )))
        .bind(incident_id)
        .bind(service)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Gives tokens not yet created in Synapse a fresh expiry: one recorded
    /// by a run that failed long ago must not be created already expired.
    pub async fn refresh_unconfirmed_tokens(&self, incident_id: i64, expires_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE registration_tokens SET expires_at = $2 \
             WHERE incident_id = $1 AND confirmed_at IS NULL AND revoked_at IS NULL",
        )
        .bind(incident_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a token before it is created in Synapse, so a crash in
    /// between leaves a record to retry rather than a stray token. Returns
    /// its id.
    pub async fn record_token(
        &self,
        purpose: TokenPurpose,
        incident_id: i64,
        user_id: &UserId,
        token: &str,
        expires_at: i64,
    ) -> Result<i64> {
        insert_token(&self.pool, purpose, incident_id, user_id, token, expires_at).await
    }

    /// Records a token `user_id` asked for (as [`Registry::record_token`]),
    /// unless they were issued `limit` already; `None` then. Counted and
    /// recorded under one write lock: links opened at once cannot pass the
    /// limit together. A token withdrawn before it was ever confirmed
    /// (Synapse did not make it) was never theirs and does not count.
    pub async fn record_request_token(
        &self,
        incident_id: i64,
        user_id: &UserId,
        token: &str,
        expires_at: i64,
        limit: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write_locking("registration_tokens").await?;
        let issued: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM registration_tokens WHERE incident_id = $1 AND user_id = $2 \
             AND purpose = 'request' AND NOT (revoked_at IS NOT NULL AND confirmed_at IS NULL)",
        )
        .bind(incident_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if issued >= limit {
            return Ok(None);
        }
        let id = insert_token(&mut *tx, TokenPurpose::Request, incident_id, user_id, token, expires_at).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Is incident `id` open, and does it affect `user_id`?
    pub async fn incident_open_for(&self, id: i64, user_id: &UserId) -> Result<bool> {
        let row: Option<i64> = sqlx::query_scalar(
            "SELECT i.id FROM incidents i JOIN incident_accounts ia ON ia.incident_id = i.id \
             WHERE i.id = $1 AND ia.user_id = $2 AND i.resolved_at IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The newest open incident that affects `user_id`, if any.
    pub async fn open_incident_affecting(&self, user_id: &UserId) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT i.id FROM incidents i JOIN incident_accounts ia ON ia.incident_id = i.id \
             WHERE ia.user_id = $1 AND i.resolved_at IS NULL ORDER BY i.id DESC LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Confirmed, unrevoked notice tokens expiring before `before` whose
    /// person has not been sent a notice yet (a long outage held it back).
    pub async fn tokens_expiring_unsent(&self, incident_id: i64, before: i64) -> Result<Vec<NoticeToken>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM registration_tokens t \
             WHERE t.incident_id = $1 AND t.confirmed_at IS NOT NULL AND t.revoked_at IS NULL AND t.expires_at < $2 \
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.incident_id = t.incident_id \
                               AND d.user_id = t.user_id AND d.kind = 'notice' AND d.state = 'sent') \
             ORDER BY t.user_id"
        )))
        .bind(incident_id)
        .bind(before)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn set_token_expiry(&self, id: i64, expires_at: i64) -> Result<()> {
        sqlx::query("UPDATE registration_tokens SET expires_at = $2 WHERE id = $1")
            .bind(id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that token `id` exists in Synapse. `false` when it must not
    /// stand: revoked, or its incident resolved, while it was being made
    /// (`incident resolve` sweeps the tokens while a request may make one).
    pub async fn confirm_token(&self, id: i64) -> Result<bool> {
        let confirmed = sqlx::query(
            "UPDATE registration_tokens SET confirmed_at = $2 WHERE id = $1 AND revoked_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.id = registration_tokens.incident_id \
                               AND i.resolved_at IS NOT NULL)",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(confirmed.rows_affected() == 1)
    }

    pub async fn mark_token_revoked(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE registration_tokens SET revoked_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Tokens, newest incident first; optionally of one incident.
    pub async fn tokens(&self, incident_id: Option<i64>) -> Result<Vec<NoticeToken>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM registration_tokens WHERE ($1 IS NULL OR incident_id = $1) \
             ORDER BY incident_id DESC, user_id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(incident_id).fetch_all(&self.pool).await?)
    }
}

/// Open incidents that already cover accounts an incident of `scope` would
/// affect now, with how many each: (incident id, accounts).
fn covering_query(scope: IncidentScope) -> String {
    let filter = scope.filter();
    format!(
        "SELECT o.id, COUNT(DISTINCT a.user_id) FROM accounts a \
         JOIN incident_accounts covered ON covered.user_id = a.user_id \
         JOIN incidents o ON o.id = covered.incident_id \
         WHERE o.resolved_at IS NULL AND ({filter}) GROUP BY o.id ORDER BY o.id"
    )
}

/// Records a token (before Synapse makes it, see [`Registry::record_token`]): its id.
async fn insert_token(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    purpose: TokenPurpose,
    incident_id: i64,
    user_id: &UserId,
    token: &str,
    expires_at: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO registration_tokens (token, incident_id, user_id, purpose, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(token)
    .bind(incident_id)
    .bind(user_id)
    .bind(purpose)
    .bind(now_ms())
    .bind(expires_at)
    .fetch_one(executor)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(title: &str, postmortem: &str) -> Incident {
        Incident {
            id: 1,
            title: title.to_owned(),
            postmortem: postmortem.to_owned(),
            scope: IncidentScope::Missing,
            opened_at: 0,
            resolved_at: None,
        }
    }

    #[test]
    fn a_first_heading_that_repeats_the_title_is_shown_once() {
        let doubled = incident("Database lost", "# Database lost\n\nWe lost it.\n");
        assert_eq!(doubled.postmortem_body(), "We lost it.\n");
        let other = incident("Database lost", "# What happened\n\nWe lost it.");
        assert_eq!(other.postmortem_body(), "# What happened\n\nWe lost it.");
        let subheading = incident("Database lost", "## Database lost\nWe lost it.");
        assert_eq!(subheading.postmortem_body(), "## Database lost\nWe lost it.");
    }
}
