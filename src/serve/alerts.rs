//! Alerts from the watcher: to the admin room through the bot, and by
//! email to `alerts.email`, because the homeserver may be what failed.

use std::time::{Duration, Instant};

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
        let html = crate::notice::markdown_to_safe_html(markdown);
        let stamp = crate::registry::now_ms();
        let messages = self.to.iter().enumerate().map(|(index, to)| OutgoingEmail {
            to: to.clone(),
            subject: subject.to_owned(),
            text: format!("{markdown}\n\n-- \nlifeboat on {}\n", self.server_name),
            html: html.clone(),
            // The same for every try, so a repeat is recognisable.
            message_id: format!("alert-{stamp}-{index}@{}", self.server_name),
            list_unsubscribe: None,
        });
        let unsent = send_alert_emails(email, messages.collect()).await;
        if !unsent.is_empty() {
            tracing::warn!(count = unsent.len(), "the alert email will be retried in the background");
            tokio::spawn(retry_alert_emails(email.clone(), unsent));
        }
    }
}

/// First wait before emailing an alert again, doubled each time up to
/// `RETRY_AT_MOST`; after `RETRY_FOR` it is given up (and logged).
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_AT_MOST: Duration = Duration::from_secs(300);
const RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

/// Sends each message once; returns those that failed for a reason that
/// may pass (the mail server down or deferring).
async fn send_alert_emails(email: &EmailConfig, messages: Vec<OutgoingEmail>) -> Vec<OutgoingEmail> {
    let mailer = match Mailer::from_config(email, 1) {
        Ok(mailer) => mailer,
        Err(err) => {
            tracing::error!(error = %err, "cannot email the alert");
            return Vec::new();
        }
    };
    let mut unsent = Vec::new();
    for message in messages {
        match mailer.send(&message).await {
            Ok(()) => {}
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, to = message.to.as_str(), "could not email the alert yet");
                unsent.push(message);
            }
            Err(err) => tracing::error!(error = %err, to = message.to.as_str(), "could not email the alert"),
        }
    }
    mailer.shutdown().await;
    unsent
}

/// The mail server may have failed with the homeserver: keep trying for a
/// while in the background, so the watcher's round does not wait. (Lost if
/// serve stops first; the admin room has the alert too.)
async fn retry_alert_emails(email: EmailConfig, mut unsent: Vec<OutgoingEmail>) {
    let give_up = Instant::now() + RETRY_FOR;
    let mut wait = RETRY_FIRST;
    while !unsent.is_empty() && Instant::now() < give_up {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_AT_MOST);
        let before = unsent.len();
        unsent = send_alert_emails(&email, unsent).await;
        if unsent.len() < before {
            tracing::info!(sent = before - unsent.len(), "alert emailed after retrying");
        }
    }
    if !unsent.is_empty() {
        tracing::error!(count = unsent.len(), "gave up emailing the alert after a day of retries");
    }
}
