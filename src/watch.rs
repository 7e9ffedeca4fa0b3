//! The watcher of `lifeboat serve`: every `watch.interval` (on a big server,
//! as often as a listing's cost allows: [`next_listing_due`]) it syncs, and
//! alerts when what it sees changes: accounts missing or recreated, a
//! suspected reset, lifeboat's token rejected. Between listings the probe
//! looks, and brings the next one forward. One alert per change, not per
//! interval, restarts included (the last alerted state is in the registry).
//! The alert goes out before lost IDs are held (at size, holding takes
//! hours); what was held follows in a message of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::check::check;
use crate::config::Config;
use crate::holds::{HoldError, hold_lost_ids, holds_wanted, restore_held_names, tokens_withheld};
use crate::observation::{
    AlertedState, LastListing, Looked, NotHeld, Observation, Unchecked, UncheckedLimits, UncheckedNews, WatchHandle,
};
use crate::probe::{FixedSample, Probe, probe};
use crate::reconcile::Verdict;
use crate::recover::{AdminAccess, RecoverError, admin_access, recover};
use crate::registry::{Actor, Registry, now_ms};
use crate::rooms::{RoomsError, bring_back};
use crate::synapse::SynapseClient;
use crate::sync::{Quiet, SyncError, SyncOptions, sync};

/// Registry setting: what the last alert was about (an [`AlertedState`] as JSON).
const ALERTED_SETTING: &str = "watch_alerted_state";
/// Registry setting: how long nothing could tell (an [`Unchecked`] as JSON).
const UNCHECKED_SETTING: &str = "watch_unchecked";
/// Registry setting: the watcher's last full listing (a [`LastListing`] as JSON).
const LAST_LISTING_SETTING: &str = "watch_last_listing";

/// The share of Synapse's time full listings may take on average, over the
/// gaps between them. A listing's cost grows with the accounts (Synapse
/// counts and skips rows for every page: 22 minutes of its CPU for 1,000,000
/// on SQLite), the probe's does not: on a big server the probe carries
/// detection, and listings come less often than `watch.interval`.
pub const LISTING_SHARE: f64 = 0.03;

/// When the next full listing may start (ms since the epoch): `floor`
/// after the last one ended (`watch.interval`; zero when serve starts, so
/// a restart lists at once on a small server), and never sooner than its
/// cost at [`LISTING_SHARE`] allows. A probe that sees something wrong
/// starts a listing at once all the same.
pub fn next_listing_due(last: LastListing, floor: Duration) -> i64 {
    let cost = Duration::from_millis(last.synapse_ms.max(0) as u64);
    let gap = floor.max(cost.div_f64(LISTING_SHARE));
    last.ended_ms.saturating_add(i64::try_from(gap.as_millis()).unwrap_or(i64::MAX))
}

/// Where alerts go: the admin room (through the bot) and email.
pub trait AlertSink: Send + Sync {
    /// `room_markdown`: what the admin room gets instead of `markdown`, when
    /// it must not see all of it (it may hold someone lifeboat cannot vouch for).
    fn alert(&self, subject: &str, markdown: &str, room_markdown: Option<&str>) -> impl Future<Output = ()> + Send;
}

/// One round, one listing: a sync (importing new accounts and emails), whose
/// classification gives the verdict. With every token rejected: a check (a
/// wipe, or a typo?), recovery if a secret is configured, then the sync.
/// Returns the client that worked, for [`after_listing`].
pub async fn observe(
    config: &Config,
    registry: &Registry,
    recover_lock: &tokio::sync::Mutex<()>,
    cancel: &CancellationToken,
) -> (Observation, Option<SynapseClient>) {
    let actor = Actor::service("watcher");
    let mut seen = Observation { at: Some(now_ms()), ..Observation::default() };
    let began = Instant::now();
    let (mut share, mut one_off) = (1.0, Duration::ZERO);
    let mut client = match admin_access(config, registry).await {
        Ok(AdminAccess::Working { client, .. }) => client,
        Ok(AdminAccess::Dead { client }) => {
            seen.token_rejected = true;
            client
        }
        Err(err) => {
            seen.could_not_tell(&err, err.is_setup_fault());
            return (seen, None);
        }
    };
    // Paced, a first sync of a big server can take long: serve's stop ends
    // it between calls, keeping what it read.
    let paced = SyncOptions::from_config(config).paced().stopped_by(cancel.clone());
    if !seen.token_rejected {
        // One listing a round: the sync's, classified as `check` would.
        share = paced.pace.unwrap_or(1.0);
        match sync(registry, &client, &paced, &actor, &Quiet).await {
            Ok(summary) => {
                log_emails_stopped(&summary);
                one_off = summary.details_took;
                seen.saw(summary.applied.report, config.watch.loss_threshold);
            }
            // A sync from the CLI or the bot is under way: a read-only
            // check tells this round's verdict without waiting for it.
            Err(err @ SyncError::Busy { .. }) => {
                tracing::info!(reason = %err, "watcher: sync skipped this round");
                share = 1.0;
                seen.checked(check(registry, &client, config).await);
            }
            Err(err) => seen.could_not_tell(&err, err.is_setup_fault()),
        }
    } else {
        // A dead token lists nothing; check tells a wipe from a typo.
        seen.checked(check(registry, &client, config).await);
        if config.homeserver.registration_shared_secret.is_none() {
            if seen.verdict.is_none() {
                seen.reason = format!(
                    "{}; every admin token lifeboat knows is rejected: put a working one in homeserver.admin_token, or set homeserver.registration_shared_secret so lifeboat can get back in by itself",
                    seen.reason
                );
            }
            return (seen, None);
        }
        let guard = recover_lock.lock().await;
        match recover(config, registry, &actor).await {
            Ok(_) => seen.recovered = true,
            // lifeboat's account is there and not lifeboat's own: a token
            // revoked without a wipe, or someone registered lifeboat's ID
            // after one. Nothing can list to tell which, so the guess stays.
            Err(RecoverError::NotAWipe { user_id }) => {
                seen.reason = format!(
                    "{}; lifeboat's account {user_id} exists but is not lifeboat's: either its admin token was revoked without a wipe (put a current one in homeserver.admin_token) or someone registered {user_id} after a wipe",
                    seen.reason
                );
                return (seen, None);
            }
            Err(err) => {
                seen.reason = format!("{}; recovery failed: {err}", seen.reason);
                return (seen, None);
            }
        }
        drop(guard);
        client = match admin_access(config, registry).await {
            Ok(AdminAccess::Working { client, .. }) => client,
            _ => return (seen, None),
        };
        seen.taken = seen.recreated.clone();
        // Paced like every watcher sync: a wiped server lists in moments,
        // but a token can be rejected after a rollback too.
        match sync(registry, &client, &paced, &actor, &Quiet).await {
            // A complete listing: it, not the check's guess, says what was
            // lost (a token logged out, or an old backup restored, loses
            // little); IDs registered again since (the check could not list
            // them) are taken.
            Ok(summary) => {
                log_emails_stopped(&summary);
                let taken_before = std::mem::take(&mut seen.taken);
                seen.saw(summary.applied.report, config.watch.loss_threshold);
                seen.taken.extend(taken_before);
            }
            Err(err @ SyncError::Busy { .. }) => tracing::info!(reason = %err, "watcher: sync skipped this round"),
            Err(err) => tracing::warn!(error = %err, "watcher: sync failed"),
        }
    }
    seen.listing = Some(LastListing {
        ended_ms: now_ms(),
        synapse_ms: i64::try_from(began.elapsed().saturating_sub(one_off).mul_f64(share).as_millis())
            .unwrap_or(i64::MAX),
    });
    seen.settle_taken(config);
    (seen, Some(client))
}

/// A sync whose email import Synapse refused: its listing stands, and the log says why the emails wait.
fn log_emails_stopped(summary: &crate::sync::SyncSummary) {
    if let Some(why) = &summary.details_refused {
        tracing::warn!(why, "watcher: the listing was applied, but importing emails stopped");
    }
}

/// After the round's alert: holds whatever is lost (`recovery.hold =
/// "auto"`; a wipe of a big server takes a long while to hold, which is
/// why the alert does not wait for it, and why a stop ends it between
/// holds). Returns how many lost IDs are still free once this round's hold run
/// ended, when that is known (a run that ran to its end, not another's).
pub async fn after_listing(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    seen: &mut Observation,
    stop: &CancellationToken,
) -> Option<i64> {
    // Whatever the registry knows to be lost: create-only, so holding on
    // what an earlier sync saw is safe.
    let mut still_free = None;
    if holds_wanted(config, false) {
        let why = match hold_lost_ids(config, registry, client, &Actor::service("watcher"), false, &|_, _| {}, stop)
            .await
        {
            Ok(report) => {
                seen.held = report.held.iter().map(ToString::to_string).collect();
                seen.own = report.own_note();
                seen.taken.extend(report.taken.iter().map(ToString::to_string));
                let why = report.failed.first().map(|(first, why)| format!("{first} could not be held ({why})"));
                if let Some(why) = &why {
                    tracing::warn!(count = report.failed.len(), first = %why, "watcher: some lost IDs could not be held yet");
                }
                // Cut short by serve's stop: the next start holds the rest.
                (!stop.is_cancelled()).then_some(why)
            }
            Err(err @ HoldError::Busy { .. }) => {
                tracing::info!(reason = %err, "watcher: lost IDs are held by another run");
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "watcher: lost IDs are not held");
                Some(Some(format!("the hold run failed ({err})")))
            }
        };
        if let Some(why) = why {
            match tokens_withheld(config, registry).await {
                Ok(ids) => {
                    still_free = Some(ids.as_ref().map_or(0, |ids| ids.count));
                    // Only a failure is news: an ID lost since the run began is the next round's.
                    seen.not_held = ids.zip(why).map(|(ids, why)| NotHeld { ids, why });
                }
                Err(err) => tracing::warn!(error = %err, "watcher: registry query failed"),
            }
        }
    }
    seen.settle_taken(config);
    still_free
}

/// Brings people whose ID is theirs again back into their rooms, beside the
/// rounds: a join through servers that take the connection and never answer
/// lasts homeserver.timeout, and rounds waiting for such joins would hold
/// up the probes and the alert of a second wipe. One run at a time.
struct RoomRuns {
    services: Arc<Services>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl RoomRuns {
    /// Starts a run with `client`, unless one is still going.
    fn start(&mut self, client: SynapseClient) {
        if self.running.as_ref().is_some_and(|run| !run.is_finished()) {
            return;
        }
        let services = self.services.clone();
        self.running = Some(self.services.background.spawn(async move {
            let Services { config, registry, shutdown, .. } = &*services;
            rejoin_rooms(config, registry, &client, shutdown).await;
        }));
    }
}

/// One run of [`bring_back`], logged; serve's stop ends it where it waits.
async fn rejoin_rooms(config: &Config, registry: &Registry, client: &SynapseClient, stop: &CancellationToken) {
    match bring_back(config, registry, client, &Actor::service("watcher"), false, stop).await {
        Ok(report) if !report.is_empty() => tracing::info!(summary = %report.summary(), "watcher: rooms"),
        Ok(_) => {}
        Err(err @ RoomsError::Busy { .. }) => tracing::info!(reason = %err, "watcher: rooms skipped this time"),
        Err(err) => tracing::warn!(error = %err, "watcher: could not bring people back into their rooms"),
    }
}

/// Runs rounds until cancelled, alerting once per change.
pub async fn run(services: Arc<Services>, alerts: impl AlertSink) {
    let Services { config, registry, watch: handle, recover_lock, shutdown: cancel, .. } = &*services;
    // When serve starts, only the last listing's cost spaces the first
    // round; later, `watch.interval` after the last round too (one that
    // could not list, with Synapse down, waits like any other).
    let mut last_round: Option<i64> = None;
    // The last round found every admin token rejected and could not get
    // back in: the probe's finding the same is no news until the next round.
    let mut token_rejected = false;
    // How many lost IDs the last alert said were not held: more is news,
    // the same is not (every round retries them).
    let mut alerted_not_held = 0;
    // Rounds that could not tell: the admins hear of it once it lasts.
    let stored = registry.setting(UNCHECKED_SETTING).await.ok().flatten();
    let state: Unchecked = stored.and_then(|stored| serde_json::from_str(&stored).ok()).unwrap_or_default();
    let mut unchecked = Unchecking { kept: state.clone(), state, stale_after: config.watch.interval };
    let mut rooms = RoomRuns { services: services.clone(), running: None };
    loop {
        let interval = if last_round.is_some() { config.watch.interval } else { Duration::ZERO };
        let after_round = last_round.map_or(0, |ended| ended.saturating_add(interval.as_millis() as i64));
        let last = last_listing(registry).await;
        let due = last.map_or(after_round, |last| after_round.max(next_listing_due(last, interval)));
        // Failures further apart than rounds and probes come are two spells.
        unchecked.stale_after =
            gap_after(last, config.watch.interval).max(config.watch.probe_interval).saturating_mul(2);
        let waited = Wait { due, last_round, token_rejected_before: token_rejected };
        if due > now_ms()
            && !wait_for_next_round(config, registry, handle, cancel, waited, (&alerts, &mut unchecked), &mut rooms)
                .await
        {
            return;
        }
        // This round lists: what was asked for until now is done by it.
        handle.take_listing_wish();
        // A round runs to its end even when serve is stopping (its sync stops
        // by itself between calls): dropped inside a sync's transaction, it would
        // leave SQLite locked for what still finishes (a notify marking what it sent).
        let (mut seen, client) = observe(config, registry, recover_lock, cancel).await;
        if cancel.is_cancelled() {
            return;
        }
        tracing::info!(verdict = seen.verdict_label(), reason = %seen.reason, "watcher round");
        if let Some(listing) = seen.listing {
            let stored = serde_json::to_string(&listing).expect("plain data");
            if let Err(err) = registry.set_setting(LAST_LISTING_SETTING, &stored).await {
                tracing::warn!(error = %err, "watcher: could not record the listing's cost");
            }
        }
        handle.set(seen.clone());
        let said = alert_on_change(config, registry, &seen, &alerts).await;
        unchecked.follow(config, registry, &alerts, &seen, Looked::Round, said.is_some()).await;
        token_rejected = seen.token_rejected && client.is_none();
        let Some(client) = client else {
            last_round = Some(now_ms());
            continue;
        };
        let taken_before = seen.taken.clone();
        let still_free = after_listing(config, registry, &client, &mut seen, cancel).await;
        handle.set(seen.clone());
        // Fewer left free (some held, by a round or by hand): a later rise is news again.
        if let Some(count) = still_free {
            alerted_not_held = alerted_not_held.min(count);
        }
        let not_held =
            seen.not_held.as_ref().map(|not_held| not_held.ids.count).filter(|&count| count > alerted_not_held);
        // Taken before its hold: news, alerted with the held IDs (and those not held).
        let told =
            seen.taken != taken_before && alert_on_change(config, registry, &seen, &alerts).await == Some(Said::Alert);
        if !told && (!seen.held.is_empty() || seen.own.is_some() || not_held.is_some()) {
            // What this round's hold run did, in a message of its own; IDs
            // not held only when that is news.
            let message =
                Observation { not_held: seen.not_held.clone().filter(|_| not_held.is_some()), ..seen.clone() };
            let subject = message.holds_subject(&config.homeserver.server_name);
            tell_admins(registry, &alerts, &subject, &message.held_markdown(), None, None).await;
        }
        if let Some(count) = not_held {
            alerted_not_held = count;
        }
        rooms.start(client.clone());
        // Beside the rounds, so that probes go on meanwhile (at 10,000
        // held IDs the names take minutes); one run at a time by its lease.
        let (registry, stop) = (registry.clone(), cancel.clone());
        services.background.spawn(async move { restore_names(&registry, &client, &stop).await });
        last_round = Some(now_ms());
    }
}

/// What the admins hear about rounds (and probes) that cannot tell, and
/// where that stands.
struct Unchecking {
    state: Unchecked,
    /// As last recorded in the registry.
    kept: Unchecked,
    /// Failures further apart than this are two spells.
    stale_after: Duration,
}

impl Unchecking {
    /// Follows `seen` (a round, or a probe that could not tell); `spoke`:
    /// this round alerted already, which says as much as "can tell again".
    async fn follow(
        &mut self,
        config: &Config,
        registry: &Registry,
        alerts: &impl AlertSink,
        seen: &Observation,
        looked: Looked,
        spoke: bool,
    ) {
        let limits = UncheckedLimits { alert_after: config.watch.alert_unchecked_after, stale_after: self.stale_after };
        let news = self.state.after(seen, looked, now_ms(), limits);
        if let Some(news) = news.filter(|news| !(spoke && matches!(news, UncheckedNews::TellsAgain { .. }))) {
            let (subject, email, room) = news.message(seen, &config.homeserver.server_name);
            tell_admins(registry, alerts, &subject, &email, Some(&room), Some(&seen.reason)).await;
        }
        self.keep(registry).await;
    }

    /// A probe found all fine.
    async fn probe_fine(&mut self, registry: &Registry) {
        if self.state.probe_fine() {
            self.keep(registry).await;
        }
    }

    /// Records where it stands when that changed, or when the last failure
    /// moved on by a quarter of the stale gap: not at every failing probe.
    async fn keep(&mut self, registry: &Registry) {
        if !self.state.worth_keeping_over(&self.kept, self.stale_after / 4) {
            return;
        }
        let stored = serde_json::to_string(&self.state).expect("plain data");
        match registry.set_setting(UNCHECKED_SETTING, &stored).await {
            Ok(()) => self.kept = self.state.clone(),
            Err(err) => tracing::warn!(error = %err, "watcher: could not record how long it could not tell"),
        }
    }
}

/// Sends an alert (`room`: what the admin room gets instead, when it must
/// not see all of it), and records it in the audit log (a failure to record
/// is logged).
async fn tell_admins(
    registry: &Registry,
    alerts: &impl AlertSink,
    subject: &str,
    text: &str,
    room: Option<&str>,
    reason: Option<&str>,
) {
    alerts.alert(subject, text, room).await;
    if let Err(err) = registry.audit(&Actor::service("watcher"), "alert", Some(subject), reason).await {
        tracing::warn!(error = %err, "watcher: could not record the alert");
    }
}

/// After the alert about them: gives held accounts (this round's, or any
/// whose name is still due) their display names back.
async fn restore_names(registry: &Registry, client: &SynapseClient, stop: &CancellationToken) {
    match restore_held_names(registry, client, &|_, _| {}, stop).await {
        Ok(Some(names)) if names.restored > 0 || names.not_held > 0 || names.failed > 0 => {
            tracing::info!(restored = names.restored, not_held = names.not_held, failed = names.failed, first_failure = ?names.first_failure, "watcher: restored held accounts' display names")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "watcher: held accounts' display names are not restored"),
    }
}

/// The watcher's last full listing, as it recorded it.
async fn last_listing(registry: &Registry) -> Option<LastListing> {
    let stored = registry.setting(LAST_LISTING_SETTING).await.ok().flatten()?;
    serde_json::from_str(&stored).ok()
}

/// The gap the watcher keeps between full listings now: `watch.interval`,
/// or longer on a big server ([`next_listing_due`]). For `drill`, which
/// calls a registry stale past twice this.
pub async fn listing_gap(config: &Config, registry: &Registry) -> Duration {
    gap_after(last_listing(registry).await, config.watch.interval)
}

/// The gap between listings after `last`, `interval` at the least.
fn gap_after(last: Option<LastListing>, interval: Duration) -> Duration {
    match last {
        Some(last) => Duration::from_millis(
            u64::try_from(next_listing_due(last, interval).saturating_sub(last.ended_ms)).unwrap_or(0),
        ),
        None => interval,
    }
}

/// The least gap between listings the bot may ask for (more on a big
/// server: [`next_listing_due`] keeps listings to their share of Synapse).
const ASKED_LISTING_GAP: Duration = Duration::from_secs(30);

/// What [`wait_for_next_round`] waits for.
struct Wait {
    /// When the next round is due (ms since the epoch).
    due: i64,
    /// When the last round ended, if one ran since serve started.
    last_round: Option<i64>,
    /// The last round found every admin token rejected.
    token_rejected_before: bool,
}

/// Waits until `due` (ms since the epoch), probing every
/// `watch.probe_interval`; the next round starts early when a probe sees
/// what a loss would cause, or as soon as pacing allows when the bot asks
/// for a listing. Probes that cannot tell keep the clock of
/// [`Unchecking`] (rounds may be hours apart). `false` when cancelled.
async fn wait_for_next_round(
    config: &Config,
    registry: &Registry,
    handle: &WatchHandle,
    cancel: &CancellationToken,
    Wait { due, last_round, token_rejected_before }: Wait,
    (alerts, unchecked): (&impl AlertSink, &mut Unchecking),
    rooms: &mut RoomRuns,
) -> bool {
    let left_ms = u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0);
    let mut next_round = Instant::now() + Duration::from_millis(left_ms);
    let probing = !config.watch.probe_interval.is_zero();
    let fixed = if probing { FixedSample::load(registry).await.unwrap_or_default() } else { FixedSample::default() };
    let mut rooms_due = Instant::now() + config.watch.interval;
    // Deadlines, not pauses: the bot's asks wake this loop, and must not put
    // the next probe off each time.
    let mut probe_due = Instant::now() + config.watch.probe_interval;
    loop {
        let now = Instant::now();
        let left = next_round.saturating_duration_since(now);
        if left.is_zero() {
            return true;
        }
        let mut wait = left.min(rooms_due.saturating_duration_since(now));
        if probing {
            wait = wait.min(probe_due.saturating_duration_since(now));
        }
        let wait = wait.max(Duration::from_millis(10));
        tokio::select! {
            stopped = pause(wait, cancel) => if stopped { return false },
            () = handle.listing_asked() => {
                if handle.take_listing_wish() {
                    // Rounds that list nothing (a failing listing) are spaced too.
                    let after_round = last_round.map_or(0, |ended| ended.saturating_add(ASKED_LISTING_GAP.as_millis() as i64));
                    let listed = last_listing(registry).await.map_or(0, |last| next_listing_due(last, ASKED_LISTING_GAP));
                    let earliest = listed.max(after_round);
                    let after = u64::try_from(earliest.saturating_sub(now_ms())).unwrap_or(0);
                    next_round = next_round.min(Instant::now() + Duration::from_millis(after));
                    tracing::info!(in_seconds = after / 1000, "watcher: the bot asked for a listing");
                }
                continue;
            }
        }
        // Between full listings (hours apart on a big server), each
        // `watch.interval` still brings people whose ID is theirs again back
        // into their rooms: a claim should not wait for the next listing.
        if Instant::now() >= rooms_due {
            if let Ok(AdminAccess::Working { client, .. }) = admin_access(config, registry).await {
                rooms.start(client);
            }
            rooms_due = Instant::now() + config.watch.interval;
        }
        if !probing || Instant::now() < probe_due || Instant::now() >= next_round {
            continue;
        }
        let probed = probe(config, registry, &fixed, config.watch.probe_sample).await;
        // From its end: a slow Synapse gets its rest between probes.
        probe_due = Instant::now() + config.watch.probe_interval;
        match probed {
            Probe::Fine => {
                unchecked.probe_fine(registry).await;
            }
            Probe::TokenRejected if token_rejected_before => {}
            Probe::TokenRejected => {
                tracing::info!("watcher: the probe found every admin token rejected; reading the listing now");
                return true;
            }
            Probe::LooksWrong(why) => {
                tracing::info!(why, "watcher: the probe saw something wrong; reading the listing now");
                return true;
            }
            Probe::CouldNotTell { why, lasting } => {
                tracing::debug!(why, "watcher: the probe could not tell");
                let mut seen = Observation::default();
                seen.could_not_tell(&why, lasting);
                unchecked.follow(config, registry, alerts, &seen, Looked::Probe, false).await;
            }
        }
    }
}

/// What [`alert_on_change`] said.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    /// [`Observation::alert_markdown`], which tells the round's holds too.
    Alert,
    BackToNormal,
}

/// Alerts when what the watcher sees got worse (or is back to normal), and
/// keeps what it alerted about.
async fn alert_on_change(
    config: &Config,
    registry: &Registry,
    seen: &Observation,
    alerts: &impl AlertSink,
) -> Option<Said> {
    // "Could not tell" says nothing new either way: keep the last state.
    if seen.verdict.is_none() && !seen.token_rejected {
        return None;
    }
    let now = seen.alerted_state();
    let before: Option<AlertedState> = match registry.setting(ALERTED_SETTING).await {
        Ok(stored) => stored.and_then(|stored| serde_json::from_str(&stored).ok()),
        Err(err) => {
            tracing::warn!(error = %err, "watcher: could not read the alerted state");
            return None;
        }
    };
    let server = &config.homeserver.server_name;
    let told = match (&now, &before) {
        (Some(state), _) if state.is_news_after(before.as_ref()) => {
            // Only an unlocked hold is new: about it alone (the loss was told).
            let unlocked_only = state.only_unlocked_is_news_after(before.as_ref());
            let text = |in_room| match unlocked_only {
                true => seen.unlocked_markdown(in_room).unwrap_or_default(),
                false => seen.alert_markdown(server, in_room),
            };
            let subject = match (unlocked_only, seen.verdict) {
                (true, _) => format!("[lifeboat] {server}: a held ID was unlocked outside lifeboat"),
                (false, Some(Verdict::SuspectedReset)) => format!("[lifeboat] {server}: suspected database reset"),
                (false, Some(Verdict::Loss)) => format!("[lifeboat] {server}: accounts lost"),
                (false, _) => format!("[lifeboat] {server}: admin token rejected"),
            };
            let (email, room) = (text(false), text(true));
            tell_admins(registry, alerts, &subject, &email, Some(&room), Some(&seen.reason)).await;
            Some(Said::Alert)
        }
        (None, Some(_)) => {
            let text = format!("**{server} is back to normal:** {}.", seen.reason.trim_end_matches('.'));
            let subject = format!("[lifeboat] {server}: back to normal");
            tell_admins(registry, alerts, &subject, &text, None, Some(&seen.reason)).await;
            Some(Said::BackToNormal)
        }
        _ => None,
    };
    let stored = now.as_ref().map(|state| serde_json::to_string(state).expect("plain data")).unwrap_or_default();
    if now != before
        && let Err(err) = registry.set_setting(ALERTED_SETTING, &stored).await
    {
        tracing::warn!(error = %err, "watcher: could not record the alerted state");
    }
    told
}

/// A pause that ends early when cancelled; true when it was cancelled.
pub async fn pause(duration: Duration, cancel: &CancellationToken) -> bool {
    cancel.run_until_cancelled(tokio::time::sleep(duration)).await.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(severity: u8, lost: &[&str]) -> AlertedState {
        let lost = lost.iter().map(|id| id.to_string()).collect();
        AlertedState { severity, lost, taken: Vec::new(), unlocked: Vec::new() }
    }

    #[test]
    fn the_first_problem_is_news() {
        assert!(state(2, &["@a:x"]).is_news_after(None));
    }

    #[test]
    fn people_coming_back_are_not_news_but_new_losses_and_worse_verdicts_are() {
        let before = state(3, &["@a:x", "@b:x", "@c:x"]);
        assert!(!state(3, &["@a:x", "@c:x"]).is_news_after(Some(&before)));
        assert!(!state(2, &["@a:x"]).is_news_after(Some(&before)));
        assert!(state(3, &["@a:x", "@d:x"]).is_news_after(Some(&before)));
        assert!(state(3, &[]).is_news_after(Some(&state(1, &[]))));
    }

    #[test]
    fn an_id_taken_before_its_hold_is_news_though_it_was_lost_already() {
        let before = state(3, &["@a:x"]);
        let now = AlertedState { taken: vec!["@a:x".to_owned()], ..state(3, &["@a:x"]) };
        assert!(now.is_news_after(Some(&before)));
        assert!(!now.is_news_after(Some(&now.clone())));
    }

    #[test]
    fn a_held_id_unlocked_outside_lifeboat_is_news_once_and_named_in_the_subject() {
        let before = state(3, &["@a:x", "@b:x"]);
        let now = AlertedState { unlocked: vec!["@a:x".to_owned()], ..before.clone() };
        assert!(now.is_news_after(Some(&before)) && now.only_unlocked_is_news_after(Some(&before)));
        assert!(!now.is_news_after(Some(&now.clone())));
        let worse = AlertedState { lost: vec!["@a:x".to_owned(), "@b:x".to_owned(), "@c:x".to_owned()], ..now.clone() };
        assert!(!worse.only_unlocked_is_news_after(Some(&before)), "a new loss leads the subject");
    }

    #[test]
    fn listings_come_every_interval_on_a_small_server_and_by_their_cost_on_a_big_one() {
        let minute = Duration::from_secs(60);
        let after = |synapse_s: i64, floor: Duration| {
            let last = LastListing { ended_ms: 1_000_000, synapse_ms: synapse_s * 1000 };
            Duration::from_millis((next_listing_due(last, floor) - 1_000_000) as u64)
        };
        // 100,000 accounts: a listing costs Synapse ~8 s, the interval rules.
        assert_eq!(after(8, 15 * minute), 15 * minute);
        // 1,000,000: ~566 s, so the next one after 566 s / 3% (~5.2 h): listings
        // then take 3% of a core, wherever the interval is set.
        assert_eq!(after(566, 15 * minute).as_secs(), 18_866);
        assert!(after(566, 15 * minute) > 5 * 60 * minute);
        // serve starting: a small server lists at once, a big one waits its gap.
        assert_eq!(after(0, Duration::ZERO), Duration::ZERO);
        assert_eq!(after(566, Duration::ZERO), after(566, 15 * minute));
    }

    #[test]
    fn an_ok_round_has_nothing_to_alert() {
        let seen = Observation { verdict: Some(Verdict::Ok), ..Observation::default() };
        assert_eq!(seen.alerted_state(), None);
        let rejected = Observation { token_rejected: true, ..Observation::default() };
        assert_eq!(rejected.alerted_state(), Some(state(1, &[])));
    }
}
