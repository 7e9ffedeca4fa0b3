//! Notices after an incident: plan the outbox, then send it by email and by
//! Matrix DM with bounded concurrency, marking each delivery the moment the
//! transport accepts it.
//!
//! Resumable: rerunning sends what was not sent and never what was. A
//! process killed mid-send can repeat at most the messages in flight at
//! that moment (no more than `concurrency`), each with the same Message-ID.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use crate::dm::{DmError, DmSender};
use crate::email::EmailAddress;
use crate::mail::{MailError, Mailer, OutgoingEmail};
use crate::notice::{NoticeContext, RenderedNotice, render_notice};
use crate::registry::{self, Delivery, DeliveryCounts, Incident, PlannedEmails, Registry, now_ms};

/// Tries of one delivery within one run before it is left for later.
const ATTEMPTS_PER_RUN: u32 = 3;
/// A delivery that failed that often in a run waits this long (a later run
/// or the delivery worker picks it up).
const LATER: Duration = Duration::from_secs(15 * 60);
/// How long a run waits for retries that are due soon, rather than ending.
const WAIT_FOR_RETRIES: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("cannot render the notice: {0}")]
    Render(String),
    /// The channel itself does not work (SMTP login refused, the sender's
    /// Matrix token rejected, ...): retrying each message cannot help.
    #[error("sending stopped: {0}")]
    Channel(String),
}

/// What a run would do (the dry run's counts).
#[derive(Debug, Clone, Serialize)]
pub struct NotifyPlan {
    pub affected: i64,
    pub tokens_to_create: usize,
    /// DMs to affected accounts that exist now and to Matrix-ID contacts.
    pub dms: i64,
    /// Affected people neither an email nor a DM can reach.
    pub unreachable: i64,
    #[serde(flatten)]
    pub emails: PlannedEmails,
}

/// `sender`: lifeboat's own account, which gets no DM.
pub async fn plan(registry: &Registry, incident_id: i64, sender: &str) -> Result<NotifyPlan, NotifyError> {
    let summary = registry.incident_summary(incident_id, sender).await?;
    Ok(NotifyPlan {
        affected: summary.affected,
        unreachable: summary.unreachable,
        tokens_to_create: registry.accounts_needing_notice_token(incident_id, sender).await?.len(),
        dms: registry.planned_dms(incident_id, sender).await?,
        emails: registry.planned_emails(incident_id).await?,
    })
}

/// Hook for a progress display: `done` of `total` deliveries finished.
pub trait NotifyProgress: Send + Sync {
    fn deliveries(&self, _done: u64, _total: u64) {}
    /// Something the person running it should know (a channel that is off).
    fn note(&self, _text: &str) {}
    /// True once the run should wind down (serve is shutting down): sends in
    /// flight finish and are marked, the rest go back to pending.
    fn stopping(&self) -> bool {
        false
    }
}

/// Everything a notice needs besides the delivery itself.
pub struct NoticeSettings {
    pub server_name: String,
    pub public_url: Url,
    /// `web.public_url` and the link-signing key, when the web page is
    /// configured: then every email carries a one-click unsubscribe link.
    pub unsubscribe: Option<(Url, SecretString)>,
    /// The incident's postmortem as sanitized HTML, rendered once.
    pub postmortem_html: String,
}

impl NoticeSettings {
    pub fn new(
        server_name: String,
        public_url: Url,
        unsubscribe: Option<(Url, SecretString)>,
        incident: &Incident,
    ) -> Self {
        let postmortem_html = crate::notice::markdown_to_safe_html(incident.postmortem.trim());
        NoticeSettings { server_name, public_url, unsubscribe, postmortem_html }
    }

    pub fn render(&self, incident: &Incident, delivery: &Delivery) -> Result<RenderedNotice, NotifyError> {
        self.render_with(incident, delivery, self.unsubscribe_url(delivery).as_deref())
    }

    /// The signed one-click link for this delivery's contact, if the web
    /// page is configured.
    fn unsubscribe_url(&self, delivery: &Delivery) -> Option<String> {
        match (&self.unsubscribe, delivery.contact_id) {
            (Some((base, key)), Some(contact_id)) => Some(crate::links::unsubscribe_url(base, key, contact_id)),
            _ => None,
        }
    }

    fn render_with(
        &self,
        incident: &Incident,
        delivery: &Delivery,
        unsubscribe_url: Option<&str>,
    ) -> Result<RenderedNotice, NotifyError> {
        let expires = delivery.token_expires_at.map(human_time);
        let context = NoticeContext {
            server_name: &self.server_name,
            homeserver_url: self.public_url.as_str(),
            user_id: &delivery.user_id,
            display_name: delivery.display_name.as_deref(),
            incident_title: &incident.title,
            postmortem_markdown: &incident.postmortem,
            postmortem_html: Some(&self.postmortem_html),
            account_works: delivery.account_state == "present" && delivery.recreated_at.is_none(),
            token: delivery.token.as_deref(),
            token_expires: expires.as_deref(),
            unsubscribe_url,
        };
        render_notice(&context).map_err(|err| NotifyError::Render(err.to_string()))
    }

    fn email(&self, incident: &Incident, delivery: &Delivery) -> Result<Result<OutgoingEmail, String>, NotifyError> {
        let to = match EmailAddress::parse(&delivery.address) {
            Ok(to) => to,
            Err(err) => return Ok(Err(err.to_string())),
        };
        // Signed once: the same link goes in the body and the header.
        let list_unsubscribe = self.unsubscribe_url(delivery);
        let rendered = self.render_with(incident, delivery, list_unsubscribe.as_deref())?;
        Ok(Ok(OutgoingEmail {
            to,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            // The same for every attempt, so a repeat after a crash can be
            // recognised as the same message.
            message_id: format!("incident-{}.delivery-{}@{}", incident.id, delivery.id, self.server_name),
            list_unsubscribe,
        }))
    }
}

/// "2026-12-09 19:00 UTC"
pub fn human_time(ms: i64) -> String {
    match registry::format_time(ms) {
        Some(stamp) => format!("{} UTC", stamp[..16].replace('T', " ")),
        None => "-".to_owned(),
    }
}

/// How a channel's deliveries leave.
#[derive(Clone, Copy)]
pub enum Transport<'a> {
    Email(&'a Mailer),
    Matrix(&'a DmSender),
}

impl Transport<'_> {
    fn channel(&self) -> &'static str {
        match self {
            Transport::Email(_) => "email",
            Transport::Matrix(_) => "matrix",
        }
    }

    async fn deliver(
        self,
        registry: &Registry,
        incident: &Incident,
        settings: &NoticeSettings,
        delivery: &Delivery,
    ) -> Outcome {
        match self {
            Transport::Email(mailer) => match settings.email(incident, delivery) {
                Err(err) => Outcome::Fatal(err),
                Ok(Err(bad_address)) => Outcome::Failed(bad_address),
                Ok(Ok(email)) => match mailer.send(&email).await {
                    Ok(()) => Outcome::Sent,
                    Err(MailError::Transient(reason)) => Outcome::Retry(reason),
                    Err(MailError::Config(reason)) => Outcome::Fatal(NotifyError::Channel(reason)),
                    Err(err) => Outcome::Failed(err.to_string()),
                },
            },
            Transport::Matrix(sender) => match settings.render(incident, delivery) {
                Err(err) => Outcome::Fatal(err),
                Ok(notice) => {
                    // Fixed per delivery: Synapse drops a repeat after a crash.
                    let transaction = format!("lifeboat-incident-{}-delivery-{}", incident.id, delivery.id);
                    match sender.send(registry, &delivery.address, &notice.markdown, &transaction).await {
                        Ok(()) => Outcome::Sent,
                        Err(DmError::Transient(reason)) => Outcome::Retry(reason),
                        Err(DmError::Sender(reason)) => Outcome::Fatal(NotifyError::Channel(reason)),
                        Err(DmError::Permanent(reason)) => Outcome::Failed(reason),
                    }
                }
            },
        }
    }
}

/// Sends an incident's deliveries of one channel until none is due;
/// returns the counts by state (all channels) afterwards. Call
/// `Registry::resume_deliveries` once before a run.
pub async fn send_deliveries(
    registry: &Registry,
    transport: Transport<'_>,
    incident: &Incident,
    settings: &NoticeSettings,
    concurrency: usize,
    progress: &dyn NotifyProgress,
) -> Result<DeliveryCounts, NotifyError> {
    let counts = registry.delivery_counts(incident.id).await?;
    let total = counts.total() as u64;
    let mut done = (counts.sent + counts.failed + counts.skipped) as u64;
    let mut tries: HashMap<i64, u32> = HashMap::new();
    let mut batch_stamp = now_ms();
    loop {
        if progress.stopping() {
            break;
        }
        // Claims are marked with a stamp unique to this claim.
        batch_stamp = (batch_stamp + 1).max(now_ms());
        let batch =
            registry.claim_deliveries(incident.id, transport.channel(), (concurrency * 4) as i64, batch_stamp).await?;
        if batch.is_empty() {
            match registry.next_pending_at(incident.id, transport.channel()).await? {
                Some(next) if next - now_ms() <= WAIT_FOR_RETRIES.as_millis() as i64 && !progress.stopping() => {
                    tokio::time::sleep(Duration::from_millis((next - now_ms()).max(10) as u64)).await;
                    continue;
                }
                _ => break,
            }
        }
        let mut sends = futures::stream::iter(batch)
            .map(|delivery| async move {
                if progress.stopping() {
                    return (delivery, Outcome::Release);
                }
                if delivery.opted_out_at.is_some() {
                    return (delivery, Outcome::Skip("the contact opted out"));
                }
                if delivery.channel == "email" && delivery.contact_id.is_none() {
                    return (delivery, Outcome::Skip("the contact was removed"));
                }
                // Planned when the account survived; its ID has since been
                // registered again, maybe by someone else.
                if delivery.channel == "matrix"
                    && delivery.address == delivery.user_id
                    && delivery.recreated_at.is_some()
                {
                    return (delivery, Outcome::Skip("the account was registered again, maybe by someone else"));
                }
                let outcome = match transport.deliver(registry, incident, settings, &delivery).await {
                    // Marked here, the moment the transport confirms, while
                    // the other sends in flight go on.
                    Outcome::Sent => match registry.mark_delivery_sent(delivery.id).await {
                        Ok(()) => Outcome::Sent,
                        Err(err) => Outcome::Fatal(err.into()),
                    },
                    other => other,
                };
                (delivery, outcome)
            })
            .buffer_unordered(concurrency);
        while let Some((delivery, outcome)) = sends.next().await {
            match outcome {
                Outcome::Sent => done += 1,
                Outcome::Release => {
                    registry.mark_delivery_retry(delivery.id, "not sent yet: lifeboat was shutting down", now_ms()).await?;
                }
                Outcome::Skip(reason) => {
                    registry.mark_delivery_skipped(delivery.id, reason).await?;
                    done += 1;
                }
                Outcome::Failed(reason) => {
                    registry.mark_delivery_failed(delivery.id, &reason).await?;
                    done += 1;
                }
                Outcome::Retry(reason) => {
                    let count = tries.entry(delivery.id).or_default();
                    *count += 1;
                    let wait =
                        if *count < ATTEMPTS_PER_RUN { Duration::from_secs(1 << (*count - 1).min(4)) } else { LATER };
                    tracing::warn!(delivery = delivery.id, error = %reason, "notice will be retried");
                    registry.mark_delivery_retry(delivery.id, &reason, now_ms() + wait.as_millis() as i64).await?;
                }
                Outcome::Fatal(err) => {
                    // Put it back as due: a render or registry failure. (If
                    // the registry failed after a send, the rerun repeats it.)
                    let _ = registry.mark_delivery_retry(delivery.id, &err.to_string(), now_ms()).await;
                    return Err(err);
                }
            }
            progress.deliveries(done, total);
        }
    }
    Ok(registry.delivery_counts(incident.id).await?)
}

enum Outcome {
    Sent,
    /// Claimed but not started before a shutdown: back to pending.
    Release,
    Skip(&'static str),
    Retry(String),
    Failed(String),
    Fatal(NotifyError),
}
