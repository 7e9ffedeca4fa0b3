//! `sync`: a complete listing into the registry, then the emails of new or
//! stale accounts. Pages are staged as they arrive (memory stays flat) and
//! applied only when the listing is complete.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::email::EmailAddress;
use crate::holds::{settle_appservice_ids, strangers_back_by_a_restore};
use crate::lease::{Held, Lease};
use crate::pace::{call_in_paced_groups, rest_after};
use crate::reconcile::registered_again;
use crate::registry::{self, AccountDetails, Actor, DetailsDue, Registry, SyncApplied, now_ms};
use crate::rooms::{RoomSyncSummary, RoomsError, sync_rooms};
use crate::synapse::{self, LISTING_ATTEMPTS, SynapseClient, ThreePid};
use crate::tokens::delete_revived_tokens_when_due;
use crate::user_id::UserId;

/// Accounts whose details are fetched per registry query.
const DETAILS_BATCH: i64 = 500;

/// A sync as the config asks for it (`[sync]`, and the watcher's loss
/// threshold), at its pace, stopped by its token.
#[derive(Clone)]
pub struct SyncOptions<'a> {
    pub config: &'a Config,
    /// The share of Synapse's time the listing and the detail reads may
    /// take (`None`: as fast as Synapse answers).
    pub pace: Option<f64>,
    /// Cancelled to stop the sync early (Ctrl-C, serve stopping). It stops
    /// between calls to Synapse, never inside a registry write: what was
    /// read is kept, and the next sync reads the rest.
    pub stop: CancellationToken,
}

impl<'a> SyncOptions<'a> {
    pub fn from_config(config: &'a Config) -> Self {
        SyncOptions { config, pace: None, stop: CancellationToken::new() }
    }

    /// For the watcher and the CLI: a sync that leaves Synapse most of its
    /// time (`watch.max_synapse_share`), however many accounts it reads.
    pub fn paced(mut self) -> Self {
        self.pace = Some(self.config.watch.max_synapse_share).filter(|share| *share < 1.0);
        self
    }

    pub fn stopped_by(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }
}

/// Hooks for showing progress; the CLI draws bars, others ignore them.
pub trait SyncProgress: Send + Sync {
    fn listing(&self, _accounts_seen: u64, _total: Option<u64>) {}
    /// Once, before the details of `total` accounts are read, at most
    /// `pace` of Synapse's time.
    fn details_start(&self, _total: u64, _pace: Option<f64>) {}
    fn details(&self, _done: u64, _total: u64) {}
}

/// For syncs nobody watches (the watcher, the bot, before an incident opens).
pub struct Quiet;

impl SyncProgress for Quiet {}

#[derive(Debug, Clone, Serialize)]
pub struct SyncSummary {
    pub run_id: i64,
    #[serde(flatten)]
    pub applied: SyncApplied,
    /// Accounts whose details this sync set out to read.
    pub details_due: u64,
    pub details_fetched: u64,
    pub details_failed: u64,
    pub emails_imported: u64,
    /// Stopped during the email import or the rooms: the listing was
    /// applied and what was read is kept; the next sync reads the rest (a
    /// room listing is kept only whole, so the rooms wait for it).
    pub stopped: bool,
    /// Time spent reading account details, rests included: the watcher
    /// spaces listings by their cost without a first sync's one-off import.
    #[serde(skip)]
    pub details_took: Duration,
    /// The room registry's part; `None` when it could not be read (the
    /// accounts were synced all the same).
    pub rooms: Option<RoomSyncSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms_error: Option<String>,
    /// Synapse (or a proxy in front of it) refused the reads of account
    /// details (the listing was applied before, and its report stands): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_refused: Option<String>,
    /// IDs of an application service (a bridge's users) found registered
    /// again by that service, so its own, not strangers'
    /// ([`settle_appservice_ids`]).
    pub appservice_ids_back: Vec<String>,
    /// IDs an operator handed over from a stranger that the stranger has
    /// again after a restore of Synapse ([`strangers_back_by_a_restore`]);
    /// also among the report's `recreated`.
    pub strangers_again: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the listing failed, so the registry was left unchanged: {0}")]
    Listing(#[from] synapse::Error),
    #[error(
        "the account list kept changing while it was read ({listed} accounts read, Synapse counts {total}), so the registry was left unchanged; run sync again"
    )]
    Inconsistent { listed: u64, total: i64 },
    #[error("stopped before the listing was complete, so the registry was left unchanged; run sync again")]
    Stopped,
    #[error(
        "another sync is running ({holder}, until {until} at the latest), so this one did not start; its result will be as fresh: let it finish"
    )]
    Busy { holder: String, until: String },
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

impl SyncError {
    /// Will fail the same way until someone changes lifeboat's setup.
    pub fn is_setup_fault(&self) -> bool {
        matches!(self, SyncError::Listing(err) if err.is_setup_fault())
    }
}

/// One sync at a time across every process sharing the registry (the CLI,
/// the watcher, the bot): a second one would fail the first's run.
pub async fn sync(
    registry: &Registry,
    client: &SynapseClient,
    options: &SyncOptions<'_>,
    actor: &Actor,
    progress: &dyn SyncProgress,
) -> Result<SyncSummary, SyncError> {
    let work = async {
        let previous_listing = registry.last_complete_sync().await?.and_then(|run| run.finished_at);
        let mut attempt = 1;
        let (run_id, mut applied) = loop {
            let run_id = registry.begin_sync_run().await?;
            let staged_and_applied = async {
                stage_listing(registry, client, run_id, options, progress).await?;
                registry.adopt_ids_taken_before_the_listing(run_id, &options.config.local_bot_admins()).await?;
                Ok::<_, SyncError>(registry.apply_listing(run_id, options.config.watch.loss_threshold, actor).await?)
            };
            match staged_and_applied.await {
                Ok(applied) => break (run_id, applied),
                Err(err) => {
                    registry.fail_sync_run(run_id, &err.to_string()).await?;
                    if !matches!(err, SyncError::Inconsistent { .. }) || attempt >= LISTING_ATTEMPTS {
                        return Err(err);
                    }
                    tracing::warn!(%err, "reading the listing again");
                    attempt += 1;
                }
            }
        };
        // The loss may be a restore from an older backup, which has the
        // tokens lifeboat deleted since: a listing that sees it deletes them
        // (and every sync after, until that works).
        if let Err(err) = delete_revived_tokens_when_due(registry, client, applied.newly_missing > 0).await {
            tracing::warn!(error = %err, "could not ask Synapse for the registration tokens lifeboat deleted before");
        }
        // Before the emails: such a restore brings the stranger's back too.
        let strangers_again: Vec<String> =
            strangers_back_by_a_restore(registry, client, actor).await?.iter().map(ToString::to_string).collect();
        applied.report.recreated.extend(strangers_again.iter().cloned());
        // Remembered so `check` can tell a dead token that used to work (a
        // wipe) from one that never did (a typo).
        if let Some(fingerprint) = client.token_fingerprint() {
            registry.set_setting(crate::check::WORKING_TOKEN_SETTING, &fingerprint).await?;
        }
        let details_began = Instant::now();
        let quota = refresh_quota(
            options.config.sync.details_per_round,
            options.config.sync.details_max_age,
            applied.report.listed as u64,
            previous_listing.map(|ended| now_ms() - ended),
        );
        // What Synapse no longer has is dropped only while nothing was lost:
        // a Synapse restored from an older backup lacks what was added since.
        let report = &applied.report;
        let drops_trusted = report.missing.is_empty()
            && report.held.is_empty()
            && report.recreated.is_empty()
            && registry.incidents().await?.iter().all(|incident| incident.resolved_at.is_some());
        let counts = DetailCounts::default();
        let mut reads = DetailReads { registry, client, options, progress, actor, drops_trusted, counts };
        let outcome = reads.import_emails(quota).await;
        let (details_took, counts) = (details_began.elapsed(), reads.counts);
        registry.finish_sync_run(run_id, counts.fetched, counts.failed, counts.imported, actor).await?;
        // A refusal now leaves the listing's report standing: a wipe it
        // shows is alerted all the same.
        let details_refused = outcome?.map(|refusal| refusal.to_string());
        let mut stopped = options.stop.is_cancelled();
        // Before the rooms, which a stranger on a former member's ID holds back.
        let mut appservice_ids_back = Vec::new();
        if details_refused.is_none() && !stopped {
            appservice_ids_back = settle_appservice_ids(registry, client, actor, options.pace, &options.stop).await?;
        }
        // Rooms after accounts: a room's local members are matched with the
        // accounts just applied.
        let (mut rooms, mut rooms_error) = (None, None);
        if details_refused.is_some() {
            // The refusal itself (the token's, or a proxy's) is the sync's error.
            rooms_error = Some("the reads of account details were refused (see below)".to_owned());
        } else if !stopped {
            let (server_name, max_age) = (&options.config.homeserver.server_name, options.config.sync.details_max_age);
            match sync_rooms(registry, client, server_name, max_age, options.pace, &options.stop).await {
                Ok(summary) => rooms = Some(summary),
                Err(RoomsError::Stopped) => stopped = true,
                Err(err) => {
                    tracing::warn!(error = %err, "the room registry was not updated");
                    rooms_error = Some(err.to_string());
                }
            }
        }
        registry.keep_still_held(&mut applied.report.unlocked_held).await;
        // Their service's own again: not strangers for the alert, the
        // rooms or whoever reads the report.
        applied.report.recreated.retain(|id| !appservice_ids_back.iter().any(|back| back.as_str() == id));
        Ok::<_, SyncError>(SyncSummary {
            run_id,
            applied,
            details_due: counts.due,
            details_fetched: counts.fetched,
            details_failed: counts.failed,
            emails_imported: counts.imported,
            stopped,
            details_took,
            rooms,
            rooms_error,
            details_refused,
            appservice_ids_back: appservice_ids_back.iter().map(ToString::to_string).collect(),
            strangers_again,
        })
    };
    Lease::run(registry, "sync", work)
        .await?
        .unwrap_or_else(|Held { holder, until }| Err(SyncError::Busy { holder, until }))
}

/// Reads the whole listing into the run's stage. Writing one page overlaps
/// with fetching the next, so the registry adds little to Synapse's time.
async fn stage_listing(
    registry: &Registry,
    client: &SynapseClient,
    run_id: i64,
    options: &SyncOptions<'_>,
    progress: &dyn SyncProgress,
) -> Result<(), SyncError> {
    let mut pages = client.pages(options.config.sync.page_size).local_to(&options.config.homeserver.server_name);
    let mut staged: u64 = 0;
    let mut to_stage: Option<Vec<synapse::ListedUser>> = None;
    loop {
        let write = async {
            match to_stage.take() {
                Some(users) => registry.stage_listing_page(run_id, &users).await,
                None => Ok(0),
            }
        };
        let asked = Instant::now();
        let (fetched, written) = tokio::join!(pages.next_page(), write);
        staged += written?;
        let fetched = fetched?;
        progress.listing(staged, pages.total.map(|total| total.max(0) as u64));
        let Some(users) = fetched else { break };
        to_stage = Some(users);
        // A stop comes between pages, never inside a page's write: the
        // stage is dropped with the failed run.
        if !rest_after(asked, options.pace, &options.stop).await {
            return Err(SyncError::Stopped);
        }
    }
    pages.missed_some(staged).map_or(Ok(()), |total| Err(SyncError::Inconsistent { listed: staged, total }))
}

#[derive(Default)]
struct DetailCounts {
    due: u64,
    fetched: u64,
    failed: u64,
    imported: u64,
}

/// How many accounts due again one sync reads: `details_per_round`, or more
/// when that would fall behind. An account is due again after 0.75 ×
/// `details_max_age` on average ([`next_due`]), so a sync `since_last` after
/// the last needs `accounts × since_last / (0.75 × details_max_age)` to keep
/// up, plus a quarter for a backlog: about 99,000 for a million accounts
/// listed ten hours apart, where 2,000 would read each every 31 weeks.
fn refresh_quota(per_round: u64, max_age: Duration, accounts: u64, since_last_ms: Option<i64>) -> u64 {
    let mean_gap_ms = max_age.as_millis().max(1) as f64 * 0.75;
    let keep_up = since_last_ms.map_or(0.0, |ms| accounts as f64 * ms.max(0) as f64 / mean_gap_ms * 1.25);
    per_round.max(keep_up.ceil() as u64)
}

/// The detail reads of one sync: what they need, and what they counted.
struct DetailReads<'a> {
    registry: &'a Registry,
    client: &'a SynapseClient,
    options: &'a SyncOptions<'a>,
    progress: &'a dyn SyncProgress,
    actor: &'a Actor,
    /// Addresses an account no longer has in Synapse are dropped.
    drops_trusted: bool,
    counts: DetailCounts,
}

impl DetailReads<'_> {
    /// Records the emails of new accounts, then of up to `quota` due again
    /// ([`refresh_quota`]); per-account failures are counted, not fatal. New
    /// accounts first, so a sync stopped part-way continues where it stopped.
    /// Synapse's refusal of the admin token ends it (what was read is kept).
    async fn import_emails(&mut self, quota: u64) -> Result<Option<synapse::Error>, registry::Error> {
        let now = now_ms();
        let again =
            DetailsDue::Again { now, stale_before: now - self.options.config.sync.details_max_age.as_millis() as i64 };
        let new = self.registry.count_accounts_needing_details(DetailsDue::New).await? as u64;
        let due = (self.registry.count_accounts_needing_details(again).await? as u64).min(quota);
        self.counts.due = new + due;
        self.progress.details_start(self.counts.due, self.options.pace);
        if let Some(refusal) = self.read_details(DetailsDue::New, u64::MAX).await? {
            return Ok(Some(refusal));
        }
        self.read_details(again, quota).await
    }

    /// One pass of [`Self::import_emails`]: up to `cap` accounts that are
    /// `due`, a batch at a time, each batch written in one transaction while
    /// the next one's calls are in flight (one write per account used to
    /// stall the calls for a tenth of a cold sync at 1,000,000 accounts).
    async fn read_details(&mut self, due: DetailsDue, cap: u64) -> Result<Option<synapse::Error>, registry::Error> {
        let (registry, actor) = (self.registry, self.actor);
        let mut after = String::new();
        let mut taken = 0u64;
        let mut to_write = Vec::new();
        loop {
            let mut batch = Vec::new();
            if taken < cap && !self.options.stop.is_cancelled() {
                let limit = (cap - taken).min(DETAILS_BATCH as u64) as i64;
                batch = registry.accounts_needing_details(due, &after, limit).await?;
                if let Some((last, _)) = batch.last() {
                    after = last.to_string();
                    taken += batch.len() as u64;
                }
            }
            if batch.is_empty() && to_write.is_empty() {
                break;
            }
            let ((read, refused), written) =
                tokio::join!(self.read_batch(batch), registry.record_details(&to_write, actor));
            self.counts.imported += written?;
            to_write = read;
            if let Some(refused) = refused {
                // What was read before the refusal is kept.
                self.counts.imported += registry.record_details(&to_write, actor).await?;
                return Ok(Some(refused));
            }
        }
        Ok(None)
    }

    /// Reads the details of `batch` ([`call_in_paced_groups`]), counting each
    /// answer as it comes; writes nothing. Returns what was read and, if
    /// Synapse refused the admin token, the refusal (the sync stops). An
    /// account Synapse made after the one the registry knows (registered
    /// again since the listing, after a rollback) is not its person's: what
    /// it holds is not read into the person's contacts.
    async fn read_batch(&mut self, batch: Vec<(UserId, Option<i64>)>) -> (Vec<AccountDetails>, Option<synapse::Error>) {
        let (client, options, drops_trusted) = (self.client, self.options, self.drops_trusted);
        let outcomes = call_in_paced_groups(
            batch,
            options.config.sync.details_concurrency,
            options.pace,
            &options.stop,
            |(user_id, known)| async move { (client.user_details(user_id.as_str()).await, user_id, known) },
        );
        let mut outcomes = std::pin::pin!(outcomes);
        let mut read = Vec::new();
        let counts = &mut self.counts;
        while let Some((details, user_id, known)) = outcomes.next().await {
            match details {
                Ok(Some(details)) if registered_again(known, details.created_at_ms()) => {
                    tracing::warn!(user_id = %user_id, "registered again since the listing: its details are not read");
                    counts.fetched += 1;
                }
                Ok(Some(details)) => {
                    let threepids = details.threepids.as_deref().unwrap_or_default();
                    let emails = emails_of(user_id.as_str(), threepids);
                    let in_synapse = details.threepids.as_ref().filter(|_| drops_trusted).map(|threepids| {
                        let emails = threepids.iter().filter(|threepid| threepid.medium == "email");
                        emails.map(|threepid| threepid.address.trim().to_lowercase()).collect()
                    });
                    let appservice_id = details.appservice_id;
                    read.push(AccountDetails { user_id, emails, in_synapse, due_at: next_due(options), appservice_id });
                    counts.fetched += 1;
                }
                // Gone since the listing: the next sync will see it missing.
                Ok(None) => counts.fetched += 1,
                // Every read after would be refused too (a proxy's refusal
                // names no Matrix error: `WrongUrl`).
                Err(err) if err.is_refusal() || matches!(err, synapse::Error::WrongUrl { .. }) => {
                    return (read, Some(err));
                }
                Err(err) => {
                    tracing::warn!(user_id = %user_id, error = %err, "could not fetch account details");
                    counts.failed += 1;
                }
            }
            self.progress.details(counts.fetched + counts.failed, counts.due);
        }
        (read, None)
    }
}

/// When details just read are due again: after half to all of
/// `details_max_age`, at random, so accounts read together (the first sync)
/// come due spread over the period, not in one round.
fn next_due(options: &SyncOptions<'_>) -> i64 {
    use rand::Rng;
    let max_age = options.config.sync.details_max_age.as_millis() as i64;
    now_ms() + max_age / 2 + rand::rng().random_range(0..=max_age / 2)
}

fn emails_of(user_id: &str, threepids: &[ThreePid]) -> Vec<(EmailAddress, Option<i64>)> {
    threepids
        .iter()
        .filter(|threepid| threepid.medium == "email")
        .filter_map(|threepid| match EmailAddress::parse(&threepid.address) {
            Ok(email) => Some((email, threepid.validated_at)),
            Err(err) => {
                // The address as Synapse holds it: one line in the log.
                let error = crate::plain_text::one_line(&err.to_string()).into_owned();
                tracing::warn!(user_id, error, "skipping an email Synapse holds");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_server_listed_hours_apart_refreshes_enough_details_to_keep_up_and_a_small_one_its_round() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let hours = |h: i64| Some(h * 3600 * 1000);
        // 1,000,000 accounts, ten hours since the last sync: 1.25 × 1e6 × 10 / (0.75 × 168).
        assert_eq!(refresh_quota(2000, week, 1_000_000, hours(10)), 99_207);
        // 10,000 accounts every 15 minutes need far fewer than the round allows.
        assert_eq!(refresh_quota(2000, week, 10_000, Some(15 * 60 * 1000)), 2000);
        // A first sync has no last one.
        assert_eq!(refresh_quota(2000, week, 1_000_000, None), 2000);
    }
}
