//! Alerts from the watcher: to the admin room through the bot, and by
//! email to `alerts.email`, because the homeserver may be what failed. The
//! emails go through the outbox, so they outlast a relay outage and a
//! restart of serve; with the registry down (which an alert may be
//! about), straight to the relay, once.

use std::sync::Arc;
use std::time::Duration;

use crate::app::Services;
use crate::email::EmailAddress;
use crate::mail::OutgoingEmail;
use crate::registry::{MessageKind, now_ms};
use crate::watch::AlertSink;

/// An alert email not sent within a day is given up.
const ALERT_WORTH_SENDING: Duration = Duration::from_secs(24 * 3600);
/// How long an alert email the outbox could not take may take to send.
const UNQUEUED_SEND_LIMIT: Duration = Duration::from_secs(120);

/// serve's services give the registry, the mailer (for an alert the outbox
/// cannot take) and the tracker such a send runs in.
pub struct ServeAlerts {
    services: Arc<Services>,
    room: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Empty without an [email] section.
    to: Vec<EmailAddress>,
}

impl ServeAlerts {
    pub fn new(services: Arc<Services>, room: Option<tokio::sync::mpsc::UnboundedSender<String>>) -> Self {
        let config = &services.config;
        let mut to = config.alerts.email.clone();
        if !to.is_empty() && config.email.is_none() {
            tracing::warn!("alerts.email is set but there is no [email] section: alerts go to the admin room only");
            to.clear();
        }
        ServeAlerts { services, room, to }
    }

    /// One try each, straight to the relay, beside the watcher's rounds:
    /// nothing records it, so nothing retries it.
    fn send_unqueued(&self, recipients: Vec<EmailAddress>, message: &crate::messages::Rendered) {
        let Some(mailer) = self.services.mailer.clone() else {
            tracing::error!("the alert email was not sent: there is no mailer to send it with");
            return;
        };
        let server_name = &self.services.config.homeserver.server_name;
        let emails: Vec<OutgoingEmail> = recipients
            .into_iter()
            .map(|to| OutgoingEmail {
                to,
                subject: message.subject.clone(),
                text: message.text.clone(),
                html: message.html.clone(),
                message_id: format!("alert-unqueued-{}-{:08x}@{}", now_ms(), rand::random::<u32>(), server_name),
                list_unsubscribe: None,
            })
            .collect();
        self.services.background.spawn(async move {
            let sends = emails.iter().map(|email| async {
                let to = email.to.as_str();
                match tokio::time::timeout(UNQUEUED_SEND_LIMIT, mailer.send(email)).await {
                    Ok(Ok(())) => tracing::info!(to, "alert email sent without the outbox"),
                    Ok(Err(err)) => tracing::error!(error = %err, to, "the alert email may not have been sent"),
                    Err(_) => {
                        tracing::error!(to, "the alert email may not have been sent: the mail server took too long")
                    }
                }
            });
            futures::future::join_all(sends).await;
        });
    }
}

impl AlertSink for ServeAlerts {
    async fn alert(&self, subject: &str, markdown: &str, room_markdown: Option<&str>) {
        tracing::warn!(alert = subject, "alert raised");
        if let Some(room) = &self.room {
            let _ = room.send(room_markdown.unwrap_or(markdown).to_owned());
        }
        let message = crate::messages::alert(&self.services.config.homeserver.server_name, subject, markdown);
        let expires_at = now_ms() + ALERT_WORTH_SENDING.as_millis() as i64;
        let mut unqueued = Vec::new();
        for to in &self.to {
            // Once the registry failed, the rest do not wait on it again.
            if !unqueued.is_empty() {
                unqueued.push(to.clone());
                continue;
            }
            let queued =
                crate::outbox::queue_email(&self.services.registry, MessageKind::Alert, to, &message, None, expires_at)
                    .await;
            if let Err(err) = queued {
                tracing::error!(error = %err, to = to.as_str(), "cannot queue the alert email; sending it at once");
                unqueued.push(to.clone());
            }
        }
        if !unqueued.is_empty() {
            self.send_unqueued(unqueued, &message);
        }
    }
}
