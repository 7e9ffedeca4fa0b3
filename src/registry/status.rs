//! Counts for `/metrics` and the bot's `status`: one consistent place that
//! says how big the registry is and how the outbox stands.

use serde::Serialize;

use super::{Registry, Result, STANDING_SQL};

#[derive(Debug, Clone, Default, Serialize)]
pub struct RegistryStatus {
    /// (standing, count) for accounts: present, missing, held, claimed,
    /// recreated, deactivated (as `users list` tells them).
    pub accounts: Vec<(String, i64)>,
    /// (kind, count) for contacts that have not opted out.
    pub contacts: Vec<(String, i64)>,
    /// (state, count) over the deliveries of every incident.
    pub deliveries: Vec<(String, i64)>,
    pub incidents_open: i64,
}

impl Registry {
    pub async fn status(&self) -> Result<RegistryStatus> {
        let accounts = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT standing, COUNT(*) FROM (SELECT {STANDING_SQL} AS standing FROM accounts a) s \
             GROUP BY standing ORDER BY standing"
        )))
        .fetch_all(&self.pool);
        let contacts = sqlx::query_as(
            "SELECT kind, COUNT(*) FROM contacts WHERE opted_out_at IS NULL GROUP BY kind ORDER BY kind",
        )
        .fetch_all(&self.pool);
        let deliveries = sqlx::query_as("SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state")
            .fetch_all(&self.pool);
        let open = sqlx::query_scalar("SELECT COUNT(*) FROM incidents WHERE resolved_at IS NULL").fetch_one(&self.pool);
        let (accounts, contacts, deliveries, incidents_open) =
            futures::try_join!(accounts, contacts, deliveries, open)?;
        Ok(RegistryStatus { accounts, contacts, deliveries, incidents_open })
    }

    /// Incidents that still have deliveries to send (pending or in flight)
    /// whose next attempt is due by `now`: the delivery worker's work list.
    pub async fn incidents_with_due_deliveries(&self, now: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT d.incident_id FROM deliveries d JOIN incidents i ON i.id = d.incident_id \
             WHERE i.resolved_at IS NULL AND d.kind = 'notice' AND d.state IN ('pending', 'sending') \
             AND d.next_attempt_at <= $1 ORDER BY d.incident_id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }
}
