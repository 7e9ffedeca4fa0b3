//! The audit log: one row per state-changing operation (who, what, when).

use serde::Serialize;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Transaction};

use super::{Registry, Result, now_ms};

/// Who changed something: the face it came through, and who was behind it
/// (an OS user for the CLI, an admin's Matrix ID for the bot).
#[derive(Debug, Clone)]
pub struct Actor {
    pub face: &'static str,
    pub detail: Option<String>,
}

impl Actor {
    /// The CLI, named after the OS user running it.
    pub fn cli() -> Actor {
        let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).ok().filter(|user| !user.is_empty());
        Actor { face: "cli", detail: user }
    }

    /// `lifeboat serve` acting on its own (the watcher, the delivery
    /// worker, the bot's own recovery): audited as `watcher`, the part in
    /// the detail.
    pub fn service(part: &str) -> Actor {
        Actor { face: "watcher", detail: Some(part.to_owned()) }
    }

    /// The bot, on behalf of the Matrix user who sent the command.
    pub fn bot(sender: &str) -> Actor {
        Actor { face: "bot", detail: Some(sender.to_owned()) }
    }

    /// The web page, with what it knows of the visitor (never a secret).
    pub fn web(detail: Option<String>) -> Actor {
        Actor { face: "web", detail }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub actor_detail: Option<String>,
    pub action: String,
    pub subject: Option<String>,
    pub detail: Option<String>,
}

impl Registry {
    /// Records an operation inside the transaction that performs it, so the
    /// log and the change land together or not at all.
    pub(crate) async fn audit_in(
        tx: &mut Transaction<'_, Any>,
        actor: &Actor,
        action: &str,
        subject: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, actor_detail, action, subject, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms())
        .bind(actor.face)
        .bind(actor.detail.as_deref())
        .bind(action)
        .bind(subject)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Runs one write and, when it changed a row, audits it in the same
    /// transaction. Says whether it changed one.
    pub(super) async fn write_audited(
        &self,
        write: Query<'_, Any, AnyArguments>,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let changed = write.execute(&mut *tx).await?.rows_affected() > 0;
        if changed {
            Self::audit_in(&mut tx, actor, action, Some(subject), Some(detail)).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Records an operation that changed things outside one transaction
    /// (e.g. a notify run: tokens in Synapse, messages sent).
    pub async fn audit(&self, actor: &Actor, action: &str, subject: Option<&str>, detail: Option<&str>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        Self::audit_in(&mut tx, actor, action, subject, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The most recent audit entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, actor_detail, action, subject, detail FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
