//! `sync`: a complete listing into the registry, then the emails of new or
//! stale accounts. Pages are staged as they arrive (memory stays flat) and
//! applied only when the listing is complete.

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::email::EmailAddress;
use crate::lease::{Held, Lease};
use crate::registry::{self, Actor, DetailsDue, Registry, SyncApplied, now_ms};
use crate::rooms::{RoomSyncSummary, sync_rooms};
use crate::synapse::{self, LISTING_ATTEMPTS, SynapseClient, ThreePid};

/// Accounts whose details are fetched per registry query.
const DETAILS_BATCH: i64 = 500;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub page_size: u32,
    pub details_concurrency: usize,
    pub details_max_age: Duration,
    pub loss_threshold: f64,
    pub server_name: String,
    /// Accounts whose details are read again per sync, at most (new
    /// accounts are always read).
    pub details_per_round: u64,
    /// The share of Synapse's time a listing may take (the watcher's
    /// listings pace themselves; a sync an admin asks for does not).
    pub pace: Option<f64>,
}

impl SyncOptions {
    pub fn from_config(config: &crate::config::Config) -> Self {
        SyncOptions {
            page_size: config.sync.page_size,
            details_concurrency: config.sync.details_concurrency,
            details_max_age: config.sync.details_max_age,
            loss_threshold: config.watch.loss_threshold,
            server_name: config.homeserver.server_name.clone(),
            details_per_round: config.sync.details_per_round,
            pace: None,
        }
    }

    /// For the watcher: listings that leave Synapse most of its time.
    pub fn paced(mut self, config: &crate::config::Config) -> Self {
        self.pace = Some(config.watch.max_synapse_share);
        self
    }
}

/// How long to wait after a page that took `took`, so that listing takes
/// at most `share` of Synapse's time.
pub fn pause_after(took: Duration, share: f64) -> Duration {
    if !(share > 0.0 && share < 1.0) {
        return Duration::ZERO;
    }
    took.mul_f64((1.0 - share) / share)
}

/// Hooks for showing progress; the CLI draws bars, others ignore them.
pub trait SyncProgress: Send + Sync {
    fn listing(&self, _accounts_seen: u64, _total: Option<u64>) {}
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
    pub details_fetched: u64,
    pub details_failed: u64,
    pub emails_imported: u64,
    /// The room registry's part; `None` when it could not be read (the
    /// accounts were synced all the same).
    pub rooms: Option<RoomSyncSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the listing failed, so the registry was left unchanged: {0}")]
    Listing(#[from] synapse::Error),
    #[error(
        "the account list kept changing while it was read ({listed} accounts read, Synapse counts {total}), so the registry was left unchanged; run sync again"
    )]
    Inconsistent { listed: u64, total: i64 },
    #[error("the listing was applied, but importing emails stopped: {0}")]
    Details(synapse::Error),
    #[error(
        "another sync is running ({holder}, until {until} at the latest), so this one did not start; its result will be as fresh: let it finish"
    )]
    Busy { holder: String, until: String },
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// One sync at a time across every process sharing the registry (the CLI,
/// the watcher, the bot): a second one would fail the first's run.
pub async fn sync(
    registry: &Registry,
    client: &SynapseClient,
    options: &SyncOptions,
    actor: &Actor,
    progress: &dyn SyncProgress,
) -> Result<SyncSummary, SyncError> {
    let lease = match Lease::take(registry, "sync").await? {
        Ok(lease) => lease,
        Err(Held { holder, until }) => return Err(SyncError::Busy { holder, until }),
    };
    let outcome = sync_under_lease(registry, client, options, actor, progress).await;
    lease.release().await;
    outcome
}

async fn sync_under_lease(
    registry: &Registry,
    client: &SynapseClient,
    options: &SyncOptions,
    actor: &Actor,
    progress: &dyn SyncProgress,
) -> Result<SyncSummary, SyncError> {
    let mut attempt = 1;
    let run_id = loop {
        let run_id = registry.begin_sync_run().await?;
        match stage_listing(registry, client, run_id, options, progress).await {
            Ok(()) => break run_id,
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
    let applied = match registry.apply_listing(run_id, options.loss_threshold, actor).await {
        Ok(applied) => applied,
        Err(err) => {
            registry.fail_sync_run(run_id, &err.to_string()).await?;
            return Err(err.into());
        }
    };
    // Remembered so `check` can tell a dead token that used to work (a
    // wipe) from one that never did (a typo).
    if let Some(fingerprint) = client.token_fingerprint() {
        registry.set_setting(crate::check::WORKING_TOKEN_SETTING, &fingerprint).await?;
    }
    let mut counts = DetailCounts::default();
    let outcome = import_emails(registry, client, options, progress, &mut counts).await;
    registry.finish_sync_run(run_id, counts.fetched, counts.failed, counts.imported, actor).await?;
    outcome?;
    // Rooms after accounts: a room's local members are matched with the
    // accounts just applied.
    let (rooms, rooms_error) = match sync_rooms(registry, client, &options.server_name, options.details_max_age).await {
        Ok(rooms) => (Some(rooms), None),
        Err(err) => {
            tracing::warn!(error = %err, "the room registry was not updated");
            (None, Some(err.to_string()))
        }
    };
    Ok(SyncSummary {
        run_id,
        applied,
        details_fetched: counts.fetched,
        details_failed: counts.failed,
        emails_imported: counts.imported,
        rooms,
        rooms_error,
    })
}

/// Reads the whole listing into the run's stage. Writing one page overlaps
/// with fetching the next, so the registry adds little to Synapse's time.
async fn stage_listing(
    registry: &Registry,
    client: &SynapseClient,
    run_id: i64,
    options: &SyncOptions,
    progress: &dyn SyncProgress,
) -> Result<(), SyncError> {
    let mut pages = client.pages(options.page_size).local_to(&options.server_name);
    let mut staged: u64 = 0;
    let mut to_stage: Option<Vec<synapse::ListedUser>> = None;
    loop {
        let writing = to_stage.take();
        let write = async {
            match &writing {
                Some(users) => registry.stage_listing_page(run_id, users).await,
                None => Ok(0),
            }
        };
        let asked = std::time::Instant::now();
        let (fetched, written) = tokio::join!(pages.next_page(), write);
        staged += written?;
        if let Some(share) = options.pace {
            tokio::time::sleep(pause_after(asked.elapsed(), share)).await;
        }
        progress.listing(staged, pages.total.map(|total| total.max(0) as u64));
        match fetched? {
            Some(users) => to_stage = Some(users),
            None => break,
        }
    }
    match pages.missed_some(staged) {
        Some(total) => Err(SyncError::Inconsistent { listed: staged, total }),
        None => Ok(()),
    }
}

#[derive(Default)]
struct DetailCounts {
    fetched: u64,
    failed: u64,
    imported: u64,
}

/// Fetches details of new accounts, then of those due again (at most
/// `details_per_round` of them), with bounded concurrency, and records
/// their emails. Per-account failures are counted, not fatal.
async fn import_emails(
    registry: &Registry,
    client: &SynapseClient,
    options: &SyncOptions,
    progress: &dyn SyncProgress,
    counts: &mut DetailCounts,
) -> Result<(), SyncError> {
    let now = now_ms();
    let again = DetailsDue::Again { now, stale_before: now - options.details_max_age.as_millis() as i64 };
    let new = registry.count_accounts_needing_details(DetailsDue::New).await? as u64;
    let due = (registry.count_accounts_needing_details(again).await? as u64).min(options.details_per_round);
    let total = new + due;
    read_details(registry, client, options, DetailsDue::New, u64::MAX, progress, total, counts).await?;
    read_details(registry, client, options, again, options.details_per_round, progress, total, counts).await
}

/// One pass of [`import_emails`]: up to `cap` accounts that are `due`.
#[allow(clippy::too_many_arguments)]
async fn read_details(
    registry: &Registry,
    client: &SynapseClient,
    options: &SyncOptions,
    due: DetailsDue,
    cap: u64,
    progress: &dyn SyncProgress,
    total: u64,
    counts: &mut DetailCounts,
) -> Result<(), SyncError> {
    let mut after = String::new();
    let mut read = 0u64;
    while read < cap {
        let limit = (cap - read).min(DETAILS_BATCH as u64) as i64;
        let batch = registry.accounts_needing_details(due, &after, limit).await?;
        let Some(last) = batch.last() else { break };
        after = last.clone();
        read += batch.len() as u64;
        let mut results = futures::stream::iter(batch)
            .map(|user_id| async move {
                let details = client.user_details(&user_id).await;
                (user_id, details)
            })
            .buffer_unordered(options.details_concurrency);
        while let Some((user_id, details)) = results.next().await {
            match details {
                Ok(Some(details)) => {
                    let emails = emails_of(&user_id, &details.threepids);
                    counts.imported += registry.record_details(&user_id, &emails, next_due(options)).await?;
                    counts.fetched += 1;
                }
                // Gone since the listing: the next sync will see it missing.
                Ok(None) => counts.fetched += 1,
                Err(err @ (synapse::Error::Unauthorized { .. } | synapse::Error::Forbidden { .. })) => {
                    return Err(SyncError::Details(err));
                }
                Err(err) => {
                    tracing::warn!(user_id = %user_id, error = %err, "could not fetch account details");
                    counts.failed += 1;
                }
            }
            progress.details(counts.fetched + counts.failed, total);
        }
    }
    Ok(())
}

/// When details just read are due again: after between half and all of
/// `details_max_age`, at random, so accounts read together (the first
/// sync) spread their next reads over the period instead of all coming
/// due in one round.
fn next_due(options: &SyncOptions) -> i64 {
    use rand::Rng;
    let max_age = options.details_max_age.as_millis() as i64;
    now_ms() + max_age / 2 + rand::rng().random_range(0..=max_age / 2)
}

fn emails_of(user_id: &str, threepids: &[ThreePid]) -> Vec<(EmailAddress, Option<i64>)> {
    threepids
        .iter()
        .filter(|threepid| threepid.medium == "email")
        .filter_map(|threepid| match EmailAddress::parse(&threepid.address) {
            Ok(email) => Some((email, threepid.validated_at)),
            Err(err) => {
                tracing::warn!(user_id, error = %err, "skipping an email Synapse holds");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_listing_waits_so_that_synapse_spends_at_most_its_share_on_it() {
        let took = Duration::from_millis(100);
        assert_eq!(pause_after(took, 0.25), Duration::from_millis(300), "100 ms of 400 is a quarter");
        assert_eq!(pause_after(took, 0.5), Duration::from_millis(100));
        assert_eq!(pause_after(took, 1.0), Duration::ZERO, "all of its time: no pause");
    }
}
