//! Alerts from the watcher: to the admin room through the bot, and by
//! email to `alerts.email`, because the homeserver may be what failed. The
//! emails go through the outbox, so they outlast a relay outage and a
//! restart of serve; with the registry down (which an alert may be
//! about), straight to the relay, once.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::email::EmailAddress;
use crate::mail::{Mailer, OutgoingEmail};
use crate::registry::{MessageKind, Registry, now_ms};
use crate::watch::AlertSink;

/// An alert email not sent within a day is given up.
const ALERT_WORTH_SENDING: Duration = Duration::from_secs(24 * 3600);

pub struct ServeAlerts {
    room: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    registry: Registry,
    /// Empty without an [email] section.
    to: Vec<EmailAddress>,
    /// serve's mailer, for an alert the outbox cannot take.
    mailer: Option<Arc<Mailer>>,
    server_name: String,
}

impl ServeAlerts {
    pub fn new(
        config: &Config,
        registry: Registry,
        mailer: Option<Arc<Mailer>>,
        room: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Self {
        let mut to = config.alerts.email.clone();
        if !to.is_empty() && config.email.is_none() {
            tracing::warn!("alerts.email is set but there is no [email] section: alerts go to the admin room only");
            to.clear();
        }
        ServeAlerts { room, registry, to, mailer, server_name: config.homeserver.server_name.clone() }
    }
}

impl ServeAlerts {
    /// One try, straight to the relay: nothing records it, so nothing retries it.
    async fn send_unqueued(&self, to: &EmailAddress, message: &crate::messages::Rendered) {
        let Some(mailer) = &self.mailer else { return };
        let email = OutgoingEmail {
            to: to.clone(),
            subject: message.subject.clone(),
            text: message.text.clone(),
            html: message.html.clone(),
            message_id: format!("alert-unqueued-{}-{:08x}@{}", now_ms(), rand::random::<u32>(), self.server_name),
            list_unsubscribe: None,
        };
        match mailer.send(&email).await {
            Ok(()) => tracing::info!(to = to.as_str(), "alert email sent without the outbox"),
            Err(err) => tracing::error!(error = %err, to = to.as_str(), "the alert email was not sent"),
        }
    }
}

impl AlertSink for ServeAlerts {
    async fn alert(&self, subject: &str, markdown: &str, room_markdown: Option<&str>) {
        tracing::warn!(alert = subject, "alert raised");
        if let Some(room) = &self.room {
            let _ = room.send(room_markdown.unwrap_or(markdown).to_owned());
        }
        let message = crate::messages::alert(&self.server_name, subject, markdown);
        let expires_at = now_ms() + ALERT_WORTH_SENDING.as_millis() as i64;
        for to in &self.to {
            let queued =
                crate::outbox::queue_email(&self.registry, MessageKind::Alert, to, &message, None, expires_at).await;
            if let Err(err) = queued {
                tracing::error!(error = %err, to = to.as_str(), "cannot queue the alert email; sending it at once");
                self.send_unqueued(to, &message).await;
            }
        }
    }
}
