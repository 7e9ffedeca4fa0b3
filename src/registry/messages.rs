//! The outbox's messages: every kind but incident notices. Each is stored
//! rendered when it is queued, sent by the same loop as the notices
//! (`crate::outbox`), and its text is emptied once it is sent or given up,
//! so a link or a code does not outlive its sending in the registry.

use super::web::MAILABLE;
use super::{DeliveryChannel, Registry, Result, now_ms};
use crate::checked_text::stored_as_text;

/// Why a message that expired unsent was skipped.
pub const EXPIRED: &str = "expired before it could be sent";
/// Why a way back in for a person was not sent after all.
pub const INCIDENT_RESOLVED: &str = "its incident was resolved before it could be sent";
pub const NO_LONGER_MAILABLE: &str =
    "its address was removed from the person's contacts, or opted out, before it could be sent";

stored_as_text! {
    /// What a message is for; each kind has its own template.
    pub enum MessageKind {
        /// The watcher's alert, to `alerts.email`.
        Alert = "alert",
        /// The web page's signed link (a token, a claim, a subscription).
        Link = "link",
        /// An address being proven: the code (mailed for the bot's `contact
        /// add`, DMed for the web page's), or the DM saying it was added.
        Code = "code",
        /// A way back in that an admin had the bot mail.
        Token = "token",
        /// `drill`'s test message.
        Drill = "drill",
    }
}

/// A message to queue, already rendered.
pub struct NewMessage<'a> {
    pub kind: MessageKind,
    pub channel: DeliveryChannel,
    /// An email address, or a Matrix ID for a DM.
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    /// The incident it belongs to, if any.
    pub incident_id: Option<i64>,
    /// The person a way back in is for: it goes only while `to` is still
    /// their mailable contact and the incident is open, however long the
    /// relay was down.
    pub user_id: Option<&'a str>,
    /// After this (ms), sending it is pointless (the link or code no longer
    /// works): it is skipped.
    pub expires_at: i64,
    /// When the send loop may take it (ms): now, or later for one its
    /// caller sends itself.
    pub due_at: i64,
}

/// A queued message as the send loop reads it.
#[derive(Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub id: i64,
    pub kind: MessageKind,
    pub address: String,
    pub attempts: i64,
    pub subject: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub expires_at: Option<i64>,
    /// Set when the message is for a person who may no longer be mailed it.
    withdrawn_by: Option<String>,
}

impl StoredMessage {
    /// Why this message must not go now, although it has not expired.
    pub fn withdrawn(&self) -> Option<&'static str> {
        match self.withdrawn_by.as_deref()? {
            "resolved" => Some(INCIDENT_RESOLVED),
            _ => Some(NO_LONGER_MAILABLE),
        }
    }
}

impl std::fmt::Debug for StoredMessage {
    // The text may hold a link or a code: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessage").field("id", &self.id).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// A stored message as read to send it, asked as it is read whether its
/// person may still be mailed it (by the rule `mailable_contacts_of` keeps).
fn select_messages(condition: &str) -> String {
    format!(
        "SELECT id, kind, address, attempts, subject, body_text, body_html, expires_at, \
                CASE WHEN deliveries.user_id IS NULL THEN NULL \
                     WHEN EXISTS (SELECT 1 FROM incidents i WHERE i.id = deliveries.incident_id \
                                  AND i.resolved_at IS NOT NULL) THEN 'resolved' \
                     WHEN NOT EXISTS (SELECT 1 FROM contacts WHERE contacts.user_id = deliveries.user_id \
                                      AND contacts.address = deliveries.address AND {MAILABLE}) THEN 'contact' \
                END AS withdrawn_by \
         FROM deliveries WHERE {condition}"
    )
}

impl Registry {
    /// Queues a message; returns its id.
    pub async fn queue_message(&self, message: &NewMessage<'_>) -> Result<i64> {
        let now = now_ms();
        Ok(sqlx::query_scalar(
            "INSERT INTO deliveries (kind, incident_id, channel, address, state, next_attempt_at, created_at, \
                                     subject, body_text, body_html, expires_at, user_id) \
             VALUES ($1, $2, $10, $3, 'pending', $4, $5, $6, $7, $8, $9, $11) RETURNING id",
        )
        .bind(message.kind)
        .bind(message.incident_id)
        .bind(message.to)
        .bind(message.due_at)
        .bind(now)
        .bind(message.subject)
        .bind(message.text)
        .bind(message.html)
        .bind(message.expires_at)
        .bind(message.channel)
        .bind(message.user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Up to `limit` due messages on `channel`, the longest due first.
    pub async fn due_messages(&self, channel: DeliveryChannel, limit: i64) -> Result<Vec<StoredMessage>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(select_messages(
            "kind <> 'notice' AND channel = $1 AND state = 'pending' AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, id LIMIT $3",
        )))
        .bind(channel)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One message, if it is still pending (to send it at once).
    pub async fn pending_message(&self, id: i64) -> Result<Option<StoredMessage>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(select_messages("id = $1 AND kind <> 'notice' AND state = 'pending'")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Ends every queued message that expired unsent, on any channel (one
    /// a stopped process was sending at once, say), emptying its text.
    pub async fn skip_expired_messages(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE deliveries SET state = 'skipped', last_error = $2, \
                    subject = NULL, body_text = NULL, body_html = NULL \
             WHERE kind <> 'notice' AND state = 'pending' AND expires_at < $1",
        )
        .bind(now_ms())
        .bind(EXPIRED)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
