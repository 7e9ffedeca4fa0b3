//! Alerts from the watcher: to the admin room through the bot, and by
//! email to `alerts.email`, because the homeserver may be what failed.

use crate::config::{Config, EmailConfig};
use crate::email::EmailAddress;
use crate::mail::{Mailer, OutgoingEmail};
use crate::watch::AlertSink;

pub struct ServeAlerts {
    room: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    email: Option<EmailConfig>,
    to: Vec<EmailAddress>,
    server_name: String,
}

impl ServeAlerts {
    pub fn new(config: &Config, room: Option<tokio::sync::mpsc::UnboundedSender<String>>) -> Self {
        if !config.alerts.email.is_empty() && config.email.is_none() {
            tracing::warn!("alerts.email is set but there is no [email] section: alerts go to the admin room only");
        }
        ServeAlerts {
            room,
            email: config.email.clone(),
            to: config.alerts.email.clone(),
            server_name: config.homeserver.server_name.clone(),
        }
    }
}

impl AlertSink for ServeAlerts {
    async fn alert(&self, subject: &str, markdown: &str) {
        tracing::warn!(alert = subject, "alert raised");
        if let Some(room) = &self.room {
            let _ = room.send(markdown.to_owned());
        }
        let Some(email) = &self.email else { return };
        if self.to.is_empty() {
            return;
        }
        let mailer = match Mailer::from_config(email, 1) {
            Ok(mailer) => mailer,
            Err(err) => return tracing::error!(error = %err, "cannot email the alert"),
        };
        let html = crate::notice::markdown_to_safe_html(markdown);
        let stamp = crate::registry::now_ms();
        for (index, to) in self.to.iter().enumerate() {
            let message = OutgoingEmail {
                to: to.clone(),
                subject: subject.to_owned(),
                text: format!("{markdown}\n\n-- \nlifeboat on {}\n", self.server_name),
                html: html.clone(),
                message_id: format!("alert-{stamp}-{index}@{}", self.server_name),
                list_unsubscribe: None,
            };
            if let Err(err) = mailer.send(&message).await {
                tracing::error!(error = %err, to = to.as_str(), "could not email the alert");
            }
        }
        mailer.shutdown().await;
    }
}
