//! One notify run for an incident, shared by the CLI, the bot and the
//! delivery worker: get a working admin token (recovering after a wipe),
//! create the missing tokens and deliveries, then send by email and DM
//! under the incident's lease, so two runs never send the same outbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RecoveryMode};
use crate::dm::{CryptoStore, Devices, DmError, DmSender, Login, held_by_serve};
use crate::holds::{HoldError, HoldReport, UnheldLostIds, hold_back_tokens, hold_lost_ids, holds_wanted};
use crate::lease::{Held, Lease};
use crate::links::LINK_KEY;
use crate::mail::Mailer;
use crate::notice::{DM_CONTENT_BUDGET, dm_content_bytes};
use crate::notify::{NoticeSettings, NotifyError, NotifyProgress, Transport, send_deliveries};
use crate::recover::{RecoverError, admin_access, recover, renew_own_token, service_user_id};
use crate::registry::{self, Actor, DeliveryChannel, DeliveryCounts, Incident, IncidentScope, Registry};
use crate::session::store_passphrase;
use crate::synapse::{self, SynapseClient};
use crate::sync::{Quiet, SyncError, SyncOptions, sync};
use crate::tokens::{
    TokenError, ensure_notice_tokens, extend_unsent_tokens, revoke_unused_tokens, tokens_withheld_now,
};
use crate::user_id::UserId;

/// Matrix DMs in flight at once. (Emails: `email.connections`.)
const DM_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error("the recovered admin token does not work either")]
    RecoveredTokenDead,
    #[error("{0}; nothing was sent, run notify again")]
    Tokens(#[from] TokenError),
    #[error("{0}")]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("{0}")]
    BadText(String),
    #[error(
        "another `lifeboat notify {incident}` (or a notify from the bot, or serve's delivery worker) is running ({holder}); let it finish, or if that process is gone, run again after {until}"
    )]
    Busy { incident: i64, holder: String, until: String },
    #[error("incident {0} stays open: {1}")]
    StaysOpen(i64, TokenError),
    #[error("incident {0} was resolved meanwhile: nothing was made or sent")]
    Resolved(i64),
    #[error(
        "{0}, and a registration token in a notice could register any of them: nothing was made or sent; {step}, or set recovery.hold = \"off\" to send tokens anyway",
        step = .0.next_step()
    )]
    NotHeld(UnheldLostIds),
    #[error("stopped before any registration token was made or notice sent; run notify again to send them")]
    Stopped,
    #[error("stopped before the incident was opened: nothing was opened")]
    StoppedOpening,
}

/// What a run did (`notify --json` prints it as its `sent`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CampaignReport {
    pub tokens_created: u64,
    pub tokens_extended: u64,
    #[serde(rename = "deliveries")]
    pub counts: DeliveryCounts,
    /// A few addresses whose deliveries are not done, with the reason.
    pub errors: Vec<(String, String)>,
    /// The DMs left to the `lifeboat serve` that has the device's crypto
    /// store open (its delivery worker sends them): its name, and how many.
    pub dms_left_to: Option<(String, i64)>,
}

impl CampaignReport {
    /// Notices not sent, and not left to another process either.
    pub fn unfinished(&self) -> i64 {
        let left = self.dms_left_to.as_ref().map_or(0, |(_, count)| *count);
        self.counts.pending + self.counts.sending + self.counts.failed - left
    }
}

/// A client with a working admin token; after a wipe, lifeboat's account is
/// recovered through the shared secret first.
pub async fn admin_client_recovering(
    config: &Config,
    registry: &Registry,
    actor: &Actor,
    progress: &dyn NotifyProgress,
) -> Result<SynapseClient, CampaignError> {
    if let Some(client) = admin_access(config, registry).await?.working() {
        return Ok(client);
    }
    progress.note("every admin token is rejected: recovering lifeboat's account through the shared secret");
    recover(config, registry, actor).await?;
    admin_access(config, registry).await?.working().ok_or(CampaignError::RecoveredTokenDead)
}

/// Longest postmortem: it goes into every email and DM, and onto the web page.
pub const MAX_POSTMORTEM_BYTES: usize = 64 * 1024;
/// What a notice adds around its postmortem (greeting, token, links), in
/// its text and its HTML both, with room to spare. Room names could take
/// more: a DM that would not fit goes without them (`NoticeSettings::render`).
const NOTICE_AROUND_POSTMORTEM: usize = 8 * 1024;
/// Longest title: it is a subject line.
pub const MAX_TITLE_CHARS: usize = 200;

/// What is wrong with an incident's title or postmortem, if anything: the
/// one rule for every face that opens incidents.
pub fn incident_text_problem(title: &str, postmortem: &str) -> Option<String> {
    let title = title.trim();
    if title.is_empty() {
        return Some("the title is empty: give the incident a short title".to_owned());
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Some(format!("the title is longer than {MAX_TITLE_CHARS} characters: it is a subject line"));
    }
    // Every face shows a title as one line with nothing unseen in it: one
    // that would read otherwise there is refused here, not changed silently.
    if title.chars().any(crate::plain_text::is_hidden_formatting) {
        return Some(
            "the title holds a control or unseen formatting character (a line break, tab, NUL, zero-width space or \
             text-direction override): write it on one line as it should read"
                .into(),
        );
    }
    if postmortem.trim().is_empty() {
        return Some("the postmortem is empty: say what happened and what people should do now".to_owned());
    }
    if postmortem.len() > MAX_POSTMORTEM_BYTES {
        return Some(format!(
            "the postmortem is {} KiB, more than the {} KiB that fit in a notice: shorten it, and link to a longer write-up",
            postmortem.len().div_ceil(1024),
            MAX_POSTMORTEM_BYTES / 1024
        ));
    }
    if postmortem.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Some("the postmortem holds a control character (such as NUL): only text, line breaks and tabs".into());
    }
    let dm = dm_content_bytes(postmortem).saturating_add(NOTICE_AROUND_POSTMORTEM);
    if dm > DM_CONTENT_BUDGET {
        return Some(format!(
            "the postmortem makes a Matrix DM of about {} KiB, more than the {} KiB one can carry (Synapse refuses events over 64 KiB, and encryption adds a third; the DM holds it as text and as HTML): shorten it to about {} KiB, and link to a longer write-up",
            dm.div_ceil(1024),
            DM_CONTENT_BUDGET / 1024,
            (DM_CONTENT_BUDGET - NOTICE_AROUND_POSTMORTEM) / 2 / 1024 * 9 / 10,
        ));
    }
    None
}

/// Opens an incident for `scope`. Unless `again`, refuses when an open
/// incident already covers any of the accounts (a second notice and token
/// for the same people is rarely what an admin means). A sync first (after
/// recovering lifeboat's account if every admin token is rejected: a wipe)
/// makes the snapshot what Synapse holds at opening: who is lost, or (`all`)
/// who exists, which decides whose notice says the account still works.
/// Failing that, a note says why and the last complete sync's view is used.
#[allow(clippy::too_many_arguments)]
pub async fn open_incident(
    config: &Config,
    registry: &Registry,
    title: &str,
    postmortem: &str,
    scope: IncidentScope,
    again: bool,
    actor: &Actor,
    progress: &dyn NotifyProgress,
) -> Result<OpenedIncident, CampaignError> {
    if let Some(problem) = incident_text_problem(title, postmortem) {
        return Err(CampaignError::BadText(problem));
    }
    // One working admin client (recovering after a wipe) for the sync and the holds.
    let client = admin_client_recovering(config, registry, actor, progress).await.map_err(|err| err.to_string());
    let synced = match &client {
        Ok(client) => sync_first(config, registry, client, actor, &stop_of(progress)).await,
        Err(reason) => Err(reason.clone()),
    };
    if progress.stopping() {
        return Err(CampaignError::StoppedOpening);
    }
    if let Err(reason) = synced {
        let last = registry.last_complete_sync().await?.and_then(|run| run.finished_at);
        let when = last.and_then(registry::format_time).unwrap_or_else(|| "never".to_owned());
        let used = if scope == IncidentScope::Missing {
            format!("the affected accounts are those the last complete sync ({when}) marked missing")
        } else {
            format!("the accounts and their states are those of the last complete sync ({when})")
        };
        progress.note(&format!("could not sync before opening ({reason}); {used}"));
    }
    let (incident, affected) = registry.open_incident(title, postmortem, scope, again, actor).await?;
    let holds = match &client {
        _ if !holds_wanted(config, true) => None,
        Ok(client) => hold_waiting_for_others(config, registry, client, actor, progress).await,
        Err(reason) => {
            progress.note(&format!("lost IDs are not held yet: {reason}"));
            None
        }
    };
    Ok(OpenedIncident { incident, affected, holds })
}

/// What `open_incident` did.
pub struct OpenedIncident {
    pub incident: Incident,
    /// How many accounts it affects.
    pub affected: i64,
    /// The lost IDs held right after opening (when holds are on).
    pub holds: Option<HoldReport>,
}

/// Holds the lost IDs (once an incident is open, and before its notices);
/// a failure is only a note (the watcher, `incident open`, `notify` or
/// `lifeboat holds make` tries again). Waits for a run already holding (the
/// watcher, after the wipe it alerted about), so the notices find the IDs
/// held; its lease ends if its process goes. Once `progress` says the run
/// should wind down (Ctrl-C, serve stopping), the holds under way finish
/// and no new one begins: the next run holds the rest, and meanwhile no
/// token goes out.
async fn hold_waiting_for_others(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    progress: &dyn NotifyProgress,
) -> Option<HoldReport> {
    let stop = stop_of(progress);
    let mut waiting = false;
    // At size this takes minutes: said, and how far it got now and then.
    let last_note = std::sync::Mutex::new(None::<std::time::Instant>);
    let holding = |done: u64, total: u64| {
        let Ok(mut last) = last_note.lock() else { return };
        match *last {
            _ if total < MANY_TO_HOLD => return,
            None => progress.passing(&format!(
                "Holding {total} lost IDs for their owners first (no notice goes out while one is free)."
            )),
            Some(at) if at.elapsed() >= HOLD_NOTE_GAP => progress.passing(&format!("Held {done} of {total} lost IDs.")),
            Some(_) => return,
        }
        *last = Some(std::time::Instant::now());
    };
    loop {
        match hold_lost_ids(config, registry, client, actor, false, &holding, &stop).await {
            Ok(report) => return Some(report),
            // Stopped while waiting: none of them was held by this run.
            Err(HoldError::Busy { .. }) if progress.stopping() => {
                return Some(HoldReport { stopped: true, ..HoldReport::default() });
            }
            Err(HoldError::Busy { holder, .. }) => {
                if !waiting {
                    progress.note(&format!("another run ({holder}) is holding lost IDs; waiting for it to finish"));
                    waiting = true;
                }
                let _ = tokio::time::timeout(HOLD_RUN_POLL, stop.cancelled()).await;
            }
            Err(err) => {
                progress.note(&format!("lost IDs are not held: {err}"));
                return None;
            }
        }
    }
}

/// What stops a sync or hold run of `progress`'s run (a child: the run
/// never stops its caller); one that never fires when nothing stops it.
fn stop_of(progress: &dyn NotifyProgress) -> CancellationToken {
    progress.stop().map_or_else(CancellationToken::new, CancellationToken::child_token)
}

/// From this many lost IDs to hold, `notify` and `incident open` say that
/// they hold them first, and every [`HOLD_NOTE_GAP`] how far they got.
const MANY_TO_HOLD: u64 = 100;
const HOLD_NOTE_GAP: Duration = Duration::from_secs(10);

/// How often `open_incident` looks whether another hold run has ended.
const HOLD_RUN_POLL: Duration = Duration::from_secs(2);

/// How long `open_incident` waits for another process's sync to end.
const WAIT_FOR_OTHER_SYNC: Duration = Duration::from_secs(120);

async fn sync_first(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    stop: &CancellationToken,
) -> Result<(), String> {
    let options = SyncOptions::from_config(config).stopped_by(stop.clone());
    let started = std::time::Instant::now();
    loop {
        match sync(registry, client, &options, actor, &Quiet).await {
            Ok(synced) => {
                let stopped = synced
                    .details_refused
                    .map(|why| format!("the listing was applied, but importing emails stopped: {why}"));
                return stopped.map_or(Ok(()), Err);
            }
            // The watcher's, or an admin's: wait for it, then list again.
            Err(SyncError::Busy { .. }) if started.elapsed() < WAIT_FOR_OTHER_SYNC && !stop.is_cancelled() => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// The settings every notice of `incident` is rendered with.
pub async fn notice_settings(
    config: &Config,
    registry: &Registry,
    incident: &Incident,
) -> Result<NoticeSettings, registry::Error> {
    let unsubscribe = match &config.web {
        Some(web) => Some((web.public_url.clone(), registry.generated_secret(LINK_KEY).await?)),
        None => None,
    };
    // Claim links only where lost IDs are held.
    let claim_valid_for = (config.recovery.mode == RecoveryMode::Reclaim).then_some(config.tokens.expiry);
    Ok(NoticeSettings::new(
        config.homeserver.server_name.clone(),
        config.homeserver.public_url.clone(),
        unsubscribe,
        claim_valid_for,
        incident,
    )
    .with_rooms(registry.room_fates().await?)
    .with_holds(holds_wanted(config, true)))
}

/// Tokens, deliveries, then sending, under the incident's notify lease.
/// `plan_new`: create missing tokens and deliveries (notify); the delivery
/// worker only sends what is already planned.
/// Without an `[email]` section only Matrix DMs go (and no email is planned:
/// a later run with one plans them).
pub async fn run_campaign(
    config: &Config,
    registry: &Registry,
    incident: &Incident,
    options: CampaignOptions<'_>,
) -> Result<CampaignReport, CampaignError> {
    // One notify per incident at a time (see `lease`). A run that loses
    // the lease (paused past it, say) stops claiming: the taker sends on.
    let lease = match Lease::take(registry, &notify_lease(incident.id)).await? {
        Ok(lease) => lease,
        Err(Held { holder, until }) => return Err(CampaignError::Busy { incident: incident.id, holder, until }),
    };
    // Read again under the lease: resolving, which deletes the unused
    // tokens, may have come between its caller's read and now, and a token
    // made after it would outlive the incident.
    let outcome = match registry.require_incident(incident.id).await {
        Ok(now) if now.resolved_at.is_some() => Err(CampaignError::Resolved(now.id)),
        Ok(now) => send_under_lease(config, registry, &now, &options, &lease.lost()).await,
        Err(err) => Err(err.into()),
    };
    lease.release().await;
    outcome
}

/// Resolves an incident: deletes its unused registration tokens in Synapse,
/// then records it resolved, then deletes those made meanwhile (the web
/// page and the bot make one for a person without the lease; one made after
/// this records the incident resolved deletes itself); returns (deleted,
/// used). Under the incident's notify lease, so that no run makes or sends
/// a token meanwhile that resolving would miss.
pub async fn resolve_incident(
    registry: &Registry,
    client: &SynapseClient,
    id: i64,
    actor: &Actor,
) -> Result<(u64, u64), CampaignError> {
    let work = async {
        let (revoked, used) =
            revoke_unused_tokens(registry, client, id).await.map_err(|err| CampaignError::StaysOpen(id, err))?;
        registry.resolve_incident(id, actor).await?;
        let (made_meanwhile, _) = revoke_unused_tokens(registry, client, id).await.unwrap_or_else(|err| {
            tracing::warn!(incident = id, error = %err, "a token made while resolving may still be in Synapse");
            (0, 0)
        });
        Ok((revoked + made_meanwhile, used))
    };
    Lease::run(registry, &notify_lease(id), work)
        .await?
        .unwrap_or_else(|Held { holder, until }| Err(CampaignError::Busy { incident: id, holder, until }))
}

/// One notify of an incident at a time, and no resolving meanwhile.
fn notify_lease(incident_id: i64) -> String {
    format!("notify:incident:{incident_id}")
}

pub struct CampaignOptions<'a> {
    pub actor: Actor,
    pub plan_new: bool,
    pub retry_failed: bool,
    pub progress: &'a dyn NotifyProgress,
    /// The process's Matrix clients (serve's, or the CLI's own).
    pub devices: &'a Devices,
    /// The process's mailer, when it keeps one (serve): a run then shares
    /// its memory of a refused login, instead of trying the login again
    /// with a mailer of its own every worker round (a fail2ban jail bans
    /// after five). `None`: the run makes one and closes it.
    pub mailer: Option<&'a Mailer>,
}

async fn send_under_lease(
    config: &Config,
    registry: &Registry,
    incident: &Incident,
    options: &CampaignOptions<'_>,
    lost: &AtomicBool,
) -> Result<CampaignReport, CampaignError> {
    let progress = options.progress;
    let email = config.email.as_ref();
    let client = admin_client_recovering(config, registry, &options.actor, progress).await?;
    let service = service_user_id(config);
    let mut report = CampaignReport::default();
    // Synapse binds no token to a name: while a lost ID that should be held
    // is free (its hold failed, or was stopped, or another loss came since),
    // a notify sends nothing, and serve's worker no notice with a token.
    if options.plan_new && holds_wanted(config, true) {
        hold_waiting_for_others(config, registry, &client, &options.actor, progress).await;
    }
    // Stopped at the gate (or as it ended): nothing made, nothing sent.
    if options.plan_new && progress.stopping() {
        return Err(CampaignError::Stopped);
    }
    let withheld = tokens_withheld_now(config, registry, &client).await?;
    if let Some(unheld) = withheld.clone() {
        if options.plan_new {
            return Err(CampaignError::NotHeld(unheld));
        }
        // serve's worker sends what a notify planned, but no notice that
        // carries a token; the others (to survivors) go.
        if let Some(note) = hold_back_tokens(config, registry, Some(incident.id), &unheld).await? {
            progress.note(&format!("incident {}: notices with a token {note}", incident.id));
        }
    }
    if options.plan_new {
        report.tokens_created =
            ensure_notice_tokens(registry, &client, incident.id, config.tokens.expiry, &service).await?;
        if email.is_some() {
            registry.plan_email_deliveries(incident.id).await?;
        }
    }
    // Whoever sends (serve's worker too): a notice held back long enough
    // would otherwise carry a token that is dead or about to be. Not while
    // tokens are withheld: none is sent, and none is made again in Synapse.
    if withheld.is_none() {
        report.tokens_extended = extend_unsent_tokens(registry, &client, incident.id, config.tokens.expiry).await?;
    }
    // Email does not depend on DMs: a DM sender that cannot start is a note.
    let mut no_dms = None;
    let found = DmAccount::find(config, registry, &client, &options.actor).await;
    // Planned whenever lifeboat has an account to send from, whether or not
    // it can start now: DMs this run cannot send stay pending, and the run
    // says so (never "all delivered"). With no account at all (none
    // recovered, no bot), this lifeboat sends no DMs: a note says how to.
    let sender = match &found {
        Ok(Some(account)) => Some(&account.user_id),
        Ok(None) => None,
        Err(_) => Some(&service),
    };
    if options.plan_new
        && let Some(sender) = sender
    {
        registry.plan_matrix_deliveries(incident.id, sender).await?;
    }
    let dm_sender = match found {
        Ok(Some(account)) => {
            let sender_id = account.user_id.clone();
            match account.connect(config, registry, options.devices).await {
                Ok(sender) => {
                    // Mass DMs from a throttled account would crawl; 429s
                    // are still waited out if the override cannot be set.
                    if let Err(err) = client.override_rate_limit(sender_id.as_str()).await {
                        progress
                            .note(&format!("could not lift the rate limits of {sender_id} ({err}); DMs may be slowed"));
                    }
                    Some(sender)
                }
                Err(DmError::StoreBusy { holder, .. }) if held_by_serve(&holder) => {
                    report.dms_left_to = Some((holder, 0));
                    None
                }
                Err(err) => {
                    progress.note(&format!("no Matrix DMs this run, they stay pending: {err}"));
                    no_dms = Some(err.to_string());
                    None
                }
            }
        }
        Ok(None) => {
            if options.plan_new && registry.planned_dms(incident.id, &service).await? > 0 {
                progress.note(
                    "no Matrix DMs: lifeboat has no credentials of its own account yet (run `lifeboat recover` after a wipe, or set bot.access_token)",
                );
            }
            no_dms = Some("lifeboat has no credentials of its own account".to_owned());
            None
        }
        Err(reason) => {
            progress.note(&format!("no Matrix DMs this run: {reason}"));
            no_dms = Some(reason.to_string());
            None
        }
    };
    let own_mailer = match (options.mailer, email) {
        (None, Some(email)) => Some(Mailer::from_config(email, email.connections as u32)?),
        _ => None,
    };
    // What an earlier run left unsent (or in flight when it died) is due now;
    // for serve's worker (which plans nothing new) only what a run left in
    // flight: the rest keeps its backoff.
    registry.resume_deliveries(incident.id, options.retry_failed, !options.plan_new).await?;
    let settings = notice_settings(config, registry, incident).await?;
    let emailed = match (options.mailer.or(own_mailer.as_ref()), email) {
        (Some(mailer), Some(email)) => {
            mailer.allow_all_again();
            let email_transport = Transport::Email(mailer);
            send_deliveries(registry, email_transport, incident, &settings, email.connections, progress, lost).await
        }
        _ => Ok(registry.delivery_counts(incident.id).await?),
    };
    // Mail that stopped (a refused login, a spent quota) holds back no DM:
    // for some people a DM is the one way they hear.
    let mut sent = emailed;
    if let (Ok(_) | Err(NotifyError::Channel(_)), Some(sender)) = (&sent, &dm_sender) {
        let dm_transport = Transport::Matrix(sender, &client);
        let messaged =
            send_deliveries(registry, dm_transport, incident, &settings, DM_CONCURRENCY, progress, lost).await;
        sent = match (sent, messaged) {
            (Err(mail_stopped), Ok(_)) => Err(mail_stopped),
            (_, messaged) => messaged,
        };
    }
    if let Some(own) = own_mailer {
        own.shutdown().await;
    }
    // What this run could not even try (DMs without a sender, emails
    // planned before `[email]` went) waits out a backoff, as failed tries
    // would: serve's worker comes back for it then, not every round.
    let no_mail = email.is_none().then(|| "there is no [email] section".to_owned());
    let untried = [(DeliveryChannel::Matrix, no_dms), (DeliveryChannel::Email, no_mail)];
    for (channel, why) in untried {
        if let Some(why) = why.filter(|_| !lost.load(Ordering::SeqCst)) {
            let later = crate::registry::now_ms() + crate::outbox::PARKED_MAX.as_millis() as i64;
            registry.defer_due(Some(incident.id), channel, later, &format!("not sent yet: {why}")).await?;
        }
    }
    if lost.load(Ordering::SeqCst) {
        progress.note("another process took over this incident's notices (this run was held up past its lease): it sends the rest");
    }
    report.counts = sent?;
    if let Some((_, left)) = &mut report.dms_left_to {
        *left = registry.unsent_notices(incident.id, DeliveryChannel::Matrix).await?;
    }
    let detail = format!(
        "tokens created {}; deliveries sent {}, failed {}, skipped {}, pending {}",
        report.tokens_created,
        report.counts.sent,
        report.counts.failed,
        report.counts.skipped,
        report.counts.pending + report.counts.sending
    );
    registry.audit(&options.actor, "notify", Some(&format!("incident {}", incident.id)), Some(&detail)).await?;
    if report.unfinished() > 0 {
        report.errors = registry.delivery_errors(incident.id, 5).await?;
    }
    Ok(report)
}

/// lifeboat's own account as it sends DMs: its working token and device.
pub struct DmAccount {
    pub user_id: UserId,
    token: SecretString,
    device: String,
    encryption: Option<CryptoStore>,
}

impl DmAccount {
    /// The recovered credentials, `bot.access_token`, or the session the bot
    /// made with `bot.password`, checked with Synapse. `None` when lifeboat
    /// has none of them. Recovered credentials that expired are renewed
    /// (audited as `actor`).
    pub async fn find(
        config: &Config,
        registry: &Registry,
        admin: &SynapseClient,
        actor: &Actor,
    ) -> Result<Option<DmAccount>, String> {
        let service = service_user_id(config);
        let stored = registry.service_credential(&service).await.map_err(|err| err.to_string())?;
        let recovered = stored.is_some();
        let mut token = match stored {
            Some(stored) => stored.access_token,
            None => match config.bot.as_ref().and_then(|bot| bot.access_token.as_ref()) {
                Some(token) => token.value.clone(),
                // The bot's password session: its device, its one client in
                // serve, and its store (leased) with encrypted notices too.
                None => match crate::session::stored_session(registry).await {
                    Some(token) => token,
                    None => return Ok(None),
                },
            },
        };
        let mut who = admin.with_token(token.clone()).whoami().await;
        // Expired, or logged out (an admin's "sign out everywhere"): the
        // password `recover` set gets a new token, so the DMs still go.
        let dead = match &who {
            Err(synapse::Error::Expired { .. }) => Some(true),
            Err(synapse::Error::Unauthorized { .. }) => Some(false),
            _ => None,
        };
        if recovered && let Some(same_device) = dead {
            let renewed = renew_own_token(config, registry, actor, same_device).await.map_err(|err| err.to_string())?;
            if let Some(renewed) = renewed {
                who = admin.with_token(renewed.clone()).whoami().await;
                token = renewed;
            }
        }
        let who = who.map_err(|err| format!("lifeboat's own account cannot send DMs: {err}"))?;
        let device = who.device_id.unwrap_or_else(|| "LIFEBOAT".to_owned());
        let encryption = match config.bot.as_ref().filter(|bot| bot.encrypted_notices) {
            Some(bot) => Some(CryptoStore {
                dir: bot.store_path.clone(),
                passphrase: store_passphrase(bot, registry).await.map_err(|err| err.to_string())?,
            }),
            None => None,
        };
        let user_id = UserId::parse(&who.user_id).map_err(|err| err.to_string())?;
        Ok(Some(DmAccount { user_id, token, device, encryption }))
    }

    /// A sender on the device's client, in `devices`.
    pub async fn connect(self, config: &Config, registry: &Registry, devices: &Devices) -> Result<DmSender, DmError> {
        let login = Login {
            homeserver: &config.homeserver.url,
            user_id: self.user_id.as_str(),
            access_token: &self.token,
            device_id: &self.device,
        };
        devices.for_sending(registry, &login, self.encryption.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postmortem_is_text_with_lines_and_tabs_that_fits_in_a_matrix_dm() {
        let fits = "All accounts were lost.\tWe are sorry.\r\n".repeat(12 * 1024 / 40);
        assert_eq!(incident_text_problem("Lost", &fits), None);
        let too_long_for_a_dm = fits.repeat(3);
        let problem = incident_text_problem("Lost", &too_long_for_a_dm).unwrap_or_default();
        assert!(problem.contains("more than the 44 KiB one can carry"), "{problem}");
        // Markup that HTML spells long counts as what it becomes.
        let ampersands = "&".repeat(8 * 1024);
        assert!(incident_text_problem("Lost", &ampersands).is_some_and(|p| p.contains("Matrix DM")));
        let huge = "x".repeat(MAX_POSTMORTEM_BYTES + 1);
        assert!(incident_text_problem("Lost", &huge).is_some_and(|p| p.contains("64 KiB")));
        assert!(incident_text_problem("Lost", "a\0b").is_some_and(|p| p.contains("control character")));
        assert!(incident_text_problem("Lost", " \n ").is_some_and(|p| p.contains("empty")));
    }

    #[test]
    fn a_title_is_one_short_line() {
        assert_eq!(incident_text_problem(&"t".repeat(MAX_TITLE_CHARS), "p"), None);
        assert!(incident_text_problem(&"t".repeat(MAX_TITLE_CHARS + 1), "p").is_some());
        assert!(incident_text_problem("a\nb", "p").is_some_and(|p| p.contains("one line")));
        // Shown reversed where a mail client honours the override.
        assert!(incident_text_problem("Lost \u{202e}txt.exe", "p").is_some_and(|p| p.contains("one line")));
        assert!(incident_text_problem("Lo\u{200b}st", "p").is_some_and(|p| p.contains("unseen")));
        assert_eq!(incident_text_problem("שרת\u{200f} lost", "p"), None, "a right-to-left mark is writing");
        assert!(incident_text_problem("  ", "p").is_some_and(|p| p.contains("empty")));
    }
}
