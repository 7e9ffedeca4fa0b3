//! The delivery worker of `lifeboat serve`: sends what the outbox holds.
//! Queued messages (alerts, the web page's links, codes, mailed tokens) leave
//! at once; due incident notices (retries after SMTP or Synapse trouble, what
//! a stopped run left behind) go under the same per-incident lease as
//! `notify`, so the two never send the same notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::campaign::{CampaignError, CampaignOptions, run_campaign};
use crate::config::Config;
use crate::holds::UnheldLostIds;
use crate::notify::NotifyProgress;
use crate::outbox::{QUEUED, QueuedEmails, TokenMailCheck, send_until_done};
use crate::recover::admin_access;
use crate::registry::{Actor, DeliveryChannel, Registry, now_ms};
use crate::tokens::tokens_withheld_now;

pub const POLL_EVERY: Duration = Duration::from_secs(30);
/// How long an incident's notices wait after a run that could not start.
const PAUSE_AFTER_A_FAILED_RUN: Duration = Duration::from_secs(5 * 60);

/// The lease under which queued messages (alerts, links, codes, tokens an
/// admin had the bot mail) are sent.
pub const QUEUED_MESSAGES_LEASE: &str = "outbox-messages";

/// Progress of a run nobody watches: notes go to the log, and the run winds
/// down when serve stops.
pub struct Background(pub CancellationToken);

impl crate::outbox::Progress for Background {
    fn stopping(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl NotifyProgress for Background {
    fn note(&self, text: &str) {
        tracing::warn!("{text}");
    }

    fn stop(&self) -> Option<&CancellationToken> {
        Some(&self.0)
    }
}

/// The queued messages' run: it winds down when serve stops, or once its
/// lease may be another serve's (paused past the lease, say), which would
/// send the same rows.
struct WhileLeased<'a> {
    stop: &'a CancellationToken,
    lost: Arc<AtomicBool>,
}

impl crate::outbox::Progress for WhileLeased<'_> {
    fn stopping(&self) -> bool {
        self.stop.is_cancelled() || self.lost.load(Ordering::SeqCst)
    }
}

pub async fn run(services: Arc<Services>) {
    let Services { config, registry, shutdown: cancel, .. } = &*services;
    let ask_synapse = AskSynapse { config, registry };
    let mail = match (&config.email, &services.mailer) {
        (Some(email), Some(mailer)) => {
            let (server_name, holds_on) = (&config.homeserver.server_name, crate::holds::holds_wanted(config, true));
            let token_check: Option<&dyn TokenMailCheck> = Some(&ask_synapse);
            Some((email, QueuedEmails { registry, mailer, server_name, holds_on, token_check }))
        }
        _ => {
            tracing::info!("delivery worker: no [email] section (or no mailer): it sends notice DMs only");
            None
        }
    };
    // Probes the relay while mail waits out a backoff: a connection and a greeting, no message.
    let probe = mail.as_ref().and_then(|(email, _)| crate::mail::Mailer::from_config(email, 1).ok());
    let mut releases = Releases { not_before: tokio::time::Instant::now(), gap: FIRST_RELEASE_GAP };
    loop {
        if let Err(err) = registry.skip_expired_messages().await {
            tracing::warn!(error = %err, "delivery worker: registry query failed");
        }
        if let Some((email, queued)) = &mail {
            // One sender of them at a time, whichever serve (two on one
            // registry, as in a restart that overlaps) would each mail them.
            match crate::lease::Lease::take(registry, QUEUED_MESSAGES_LEASE).await {
                Ok(Ok(lease)) => {
                    let progress = WhileLeased { stop: cancel, lost: lease.lost() };
                    if let Err(err) = send_until_done(registry, queued, email.connections, &progress).await {
                        tracing::warn!(error = %err, "delivery worker: queued messages not sent yet");
                    }
                    lease.release().await;
                }
                Ok(Err(held)) => {
                    tracing::debug!(holder = %held.holder, "delivery worker: another sends the queued messages")
                }
                Err(err) => tracing::warn!(error = %err, "delivery worker: registry query failed"),
            }
        }
        match registry.incidents_with_due_deliveries(now_ms()).await {
            Ok(incidents) => {
                for id in incidents {
                    if cancel.is_cancelled() {
                        return;
                    }
                    send_due(&services, id).await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "delivery worker: registry query failed"),
        }
        if let Some(probe) = &probe
            && channel_is_back(registry, probe, &mut releases).await
        {
            continue;
        }
        tokio::select! {
            stopped = crate::watch::pause(POLL_EVERY, cancel) => if stopped { return },
            () = QUEUED.notified() => {}
        }
    }
}

/// [`hold_back_bot_tokens`], asked as each send run claims mail with a
/// token: a retry that comes due during a run is asked about too.
pub struct AskSynapse<'a> {
    pub config: &'a Config,
    pub registry: &'a Registry,
}

impl TokenMailCheck for AskSynapse<'_> {
    fn tokens_may_go(&self) -> futures::future::BoxFuture<'_, Result<bool, crate::registry::Error>> {
        Box::pin(hold_back_bot_tokens(self.config, self.registry))
    }
}

/// Whether the token mails an admin had the bot mail may go now: not while
/// a lost ID is unheld, nor while Synapse cannot be asked. If not, the due
/// ones are held back.
pub async fn hold_back_bot_tokens(config: &Config, registry: &Registry) -> Result<bool, crate::registry::Error> {
    let held = match bot_tokens_withheld(config, registry).await {
        Ok(None) => return Ok(true),
        Ok(Some(unheld)) => crate::holds::hold_back_tokens(config, registry, None, &unheld).await?,
        Err(unsure) => crate::holds::hold_back_tokens_unsure(registry, None, &unsure).await?,
    };
    if let Some(note) = held {
        tracing::warn!("tokens mailed from the bot {note}");
    }
    Ok(false)
}

/// [`crate::holds::tokens_withheld`], with Synapse asked too
/// ([`tokens_withheld_now`]): the bot asked as it made the token, but its
/// mail may have waited out a retry through a wipe or a restore from an
/// older backup. `Err`: why that cannot be told now.
async fn bot_tokens_withheld(config: &Config, registry: &Registry) -> Result<Option<UnheldLostIds>, String> {
    if !crate::holds::holds_wanted(config, true) {
        return Ok(None);
    }
    let access = admin_access(config, registry).await.map_err(|err| err.to_string())?;
    let Some(client) = access.working() else {
        return Err("Synapse rejects every admin token lifeboat has (a wipe?)".to_owned());
    };
    tokens_withheld_now(config, registry, &client).await.map_err(|err| err.to_string())
}

/// The first pause after releasing parked mail before it is released
/// again; it doubles with each release, up to the longest backoff, and
/// starts over once the relay is seen down.
const FIRST_RELEASE_GAP: Duration = Duration::from_secs(10);

/// When parked mail may next be released. A relay that answers the probe
/// yet defers some messages (a full queue, greylisting, a policy limit)
/// would otherwise have them released, and tried, every few seconds.
struct Releases {
    not_before: tokio::time::Instant,
    gap: Duration,
}

/// When mail waits out a backoff and the relay answers again, makes it due
/// now: a short outage then delays notices by one poll, not by the backoff.
async fn channel_is_back(registry: &Registry, probe: &crate::mail::Mailer, releases: &mut Releases) -> bool {
    if tokio::time::Instant::now() < releases.not_before {
        return false;
    }
    let until = now_ms() + crate::outbox::PARKED_MAX.as_millis() as i64;
    let parked = registry.parked_deliveries(DeliveryChannel::Email, until).await;
    if !matches!(parked, Ok(1..)) {
        return false;
    }
    if probe.test_connection().await.is_err() {
        releases.gap = FIRST_RELEASE_GAP;
        return false;
    }
    match registry.release_parked(DeliveryChannel::Email, until).await {
        Ok(released) => {
            tracing::info!(released, "the mail server answers again: waiting notices are due now");
            releases.not_before = tokio::time::Instant::now() + releases.gap;
            releases.gap = (releases.gap * 2).min(crate::outbox::PARKED_MAX);
            released > 0
        }
        Err(err) => {
            tracing::warn!(error = %err, "delivery worker: registry query failed");
            false
        }
    }
}

async fn send_due(services: &Services, incident_id: i64) {
    let Services { config, registry, shutdown: cancel, devices, .. } = services;
    let incident = match registry.require_incident(incident_id).await {
        Ok(incident) => incident,
        Err(err) => return tracing::warn!(error = %err, "delivery worker: incident unreadable"),
    };
    let progress = Background(cancel.clone());
    let options = CampaignOptions {
        actor: Actor::service("worker"),
        plan_new: false,
        retry_failed: false,
        progress: &progress,
        devices,
        mailer: services.mailer.as_deref(),
    };
    match run_campaign(config, registry, &incident, options).await {
        Ok(report) => tracing::info!(
            incident = incident_id,
            sent = report.counts.sent,
            failed = report.counts.failed,
            pending = report.counts.pending + report.counts.sending,
            "delivery worker: round done"
        ),
        // A notify (CLI or bot) is on it, or it was resolved since listed.
        Err(CampaignError::Busy { .. } | CampaignError::Resolved(_)) => {}
        Err(err) => {
            tracing::warn!(incident = incident_id, error = %err, "delivery worker: sending failed");
            // Not again at the next poll: a run that cannot start (every
            // admin token rejected, recovery refused) would try a login
            // against Synapse every 30 s, as a fail2ban jail counts them.
            defer(registry, incident_id, PAUSE_AFTER_A_FAILED_RUN, &err).await;
        }
    }
}

/// The incident's due notices wait `pause`, saying why.
async fn defer(registry: &Registry, incident_id: i64, pause: Duration, why: &CampaignError) {
    let until = now_ms() + pause.as_millis() as i64;
    let why = format!("not sent yet: {why}");
    for channel in [DeliveryChannel::Email, DeliveryChannel::Matrix] {
        if let Err(err) = registry.defer_due(Some(incident_id), channel, until, &why).await {
            tracing::warn!(error = %err, "delivery worker: registry query failed");
        }
    }
}
