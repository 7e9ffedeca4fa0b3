//! Alerts from the watcher: to the admin room through the bot, and by
//! email to `alerts.email`, because the homeserver may be what failed. The
//! emails go through the outbox, so they outlast a relay outage and a
//! restart of serve.

use std::time::Duration;

use crate::config::Config;
use crate::email::EmailAddress;
use crate::registry::{MessageKind, Registry, now_ms};
use crate::watch::AlertSink;

/// An alert email not sent within a day is given up.
const ALERT_WORTH_SENDING: Duration = Duration::from_secs(24 * 3600);

pub struct ServeAlerts {
    room: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    registry: Registry,
    /// Empty without an [email] section.
    to: Vec<EmailAddress>,
    server_name: String,
}

impl ServeAlerts {
    pub fn new(config: &Config, registry: Registry, room: Option<tokio::sync::mpsc::UnboundedSender<String>>) -> Self {
        let mut to = config.alerts.email.clone();
        if !to.is_empty() && config.email.is_none() {
            tracing::warn!("alerts.email is set but there is no [email] section: alerts go to the admin room only");
            to.clear();
        }
        ServeAlerts { room, registry, to, server_name: config.homeserver.server_name.clone() }
    }
}

impl AlertSink for ServeAlerts {
    async fn alert(&self, subject: &str, markdown: &str) {
        tracing::warn!(alert = subject, "alert raised");
        if let Some(room) = &self.room {
            let _ = room.send(markdown.to_owned());
        }
        let message = crate::messages::alert(&self.server_name, subject, markdown);
        let expires_at = now_ms() + ALERT_WORTH_SENDING.as_millis() as i64;
        for to in &self.to {
            let queued =
                crate::outbox::queue_email(&self.registry, MessageKind::Alert, to, &message, None, expires_at).await;
            if let Err(err) = queued {
                tracing::error!(error = %err, to = to.as_str(), "cannot queue the alert email");
            }
        }
    }
}
