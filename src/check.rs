//! `check`: the registry against a complete listing, read-only.
//!
//! Only a complete listing can say an account is missing; Synapse down or a
//! listing failing part-way means "could not tell", never loss. One failure
//! is itself a loss signal, what a database wipe looks like: the admin token
//! of the last complete sync rejected as unknown while Synapse still answers.

use serde::Serialize;

use crate::config::Config;
use crate::reconcile::{AccountState, Known, Listed, Report, Verdict, merge_join};
use crate::registry::{self, Registry};
use crate::synapse::{self, LISTING_ATTEMPTS, SynapseClient};

/// Registry setting: fingerprint of the admin token of the last complete sync.
pub const WORKING_TOKEN_SETTING: &str = "working_admin_token_sha256";
/// Known accounts asked after when the admin token that worked is rejected.
const ACCOUNTS_ASKED_AFTER: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub report: Report,
    /// False when the verdict rests on the token being rejected, not on a
    /// listing: every known account is then counted missing.
    pub listing_complete: bool,
    pub reason: String,
    pub server_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("could not tell whether accounts were lost: {0}")]
    Synapse(#[from] synapse::Error),
    #[error(
        "could not tell whether accounts were lost: the account list kept changing while it was read ({listed} accounts read, Synapse counts {total}); run check again"
    )]
    Inconsistent { listed: usize, total: i64 },
    #[error(
        "could not tell whether accounts were lost: the registry has never completed a sync, so it knows no accounts to compare; run `lifeboat sync` first"
    )]
    NeverSynced,
    #[error("could not tell whether accounts were lost: {0}")]
    Registry(#[from] registry::Error),
}

impl CheckError {
    /// Will fail the same way until someone changes lifeboat's setup.
    pub fn is_setup_fault(&self) -> bool {
        matches!(self, CheckError::Synapse(err) if err.is_setup_fault())
    }
}

/// A check as the config asks for it (the watcher's loss threshold).
pub async fn check(registry: &Registry, client: &SynapseClient, config: &Config) -> Result<CheckReport, CheckError> {
    check_showing(registry, client, config, &|_, _| {}).await
}

/// [`check`], telling `listed` how many accounts the listing has read so
/// far, of how many when Synapse says (a big server's takes minutes).
pub async fn check_showing(
    registry: &Registry,
    client: &SynapseClient,
    config: &Config,
    listed: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<CheckReport, CheckError> {
    let loss_threshold = config.watch.loss_threshold;
    // Unauthenticated and cheap: if this fails Synapse is down, full stop.
    let server_version = client.server_version().await?;
    if registry.last_complete_sync().await?.is_none() {
        return Err(CheckError::NeverSynced);
    }
    let known = registry.known_accounts().await?;
    let listing = match complete_listing(client, config, listed).await {
        Ok(listing) => listing,
        Err(CheckError::Synapse(err)) if err.is_unknown_token() && token_used_to_work(registry, client).await? => {
            // Nobody can be listed, and a wipe loses everyone: count them all.
            let report = merge_join(&known, &[], loss_threshold);
            let mut reason = format!(
                "Synapse {server_version} answers but rejects as unknown (M_UNKNOWN_TOKEN) the admin token that \
                 worked for the last sync: its database was probably reset, so every known account is counted \
                 missing; `lifeboat recover` gets lifeboat back in"
            );
            // A hint, never the verdict: an ID registered again after a
            // wipe answers like the old account.
            if let Some(accounts) = all_still_there(client, &known).await {
                reason.push_str(&format!(
                    ". Yet {} still exist (Synapse's public profiles say so): unless someone registered them again \
                     since, the database was not wiped and the token was revoked or logged out; then put a current \
                     admin token in homeserver.admin_token and sync",
                    accounts.join(", ")
                ));
            }
            return Ok(CheckReport {
                reason,
                report: Report { verdict: Verdict::SuspectedReset, ..report },
                listing_complete: false,
                server_version,
            });
        }
        Err(err) => return Err(err),
    };
    let mut report = merge_join(&known, &listing, loss_threshold);
    registry.keep_still_held(&mut report.unlocked_held).await;
    report.unlocked_held = still_unlocked(client, std::mem::take(&mut report.unlocked_held)).await;
    let reason = verdict_reason(&report, loss_threshold);
    Ok(CheckReport { report, listing_complete: true, reason, server_version })
}

/// How many held IDs a listing showed unlocked are asked about again.
const UNLOCKED_ASKED_AGAIN: usize = 100;

/// Of the held IDs a listing showed unlocked (and the registry still holds),
/// those Synapse still shows unlocked: someone may have locked one again
/// since (`check` is asked by hand, while fixing it). Only a clear answer
/// drops an ID; from the first that cannot be had (and past the first
/// [`UNLOCKED_ASKED_AGAIN`]), the listing's word stands.
async fn still_unlocked(client: &SynapseClient, ids: Vec<String>) -> Vec<String> {
    let (mut ids, mut still) = (ids.into_iter(), Vec::new());
    for id in ids.by_ref().take(UNLOCKED_ASKED_AGAIN) {
        match client.user_details(&id).await {
            Ok(Some(details)) if !details.locked => still.push(id),
            Ok(_) => {}
            Err(_) => {
                still.push(id);
                break;
            }
        }
    }
    still.extend(ids);
    still
}

/// The verdict of a complete listing in one sentence: the one wording for
/// `check` and for the watcher, whose rounds take the sync's listing.
pub fn verdict_reason(report: &Report, loss_threshold: f64) -> String {
    let (missing, held, recreated) = (report.missing.len(), report.held.len(), report.recreated.len());
    let counts = format!("({missing} missing, {held} held for their owners, {recreated} recreated)");
    match report.verdict {
        Verdict::Ok => "every known account is listed".to_owned(),
        Verdict::Loss => format!("{} of {} known accounts are lost {counts}", missing + held + recreated, report.known),
        Verdict::SuspectedReset => format!(
            "{:.0}% of known accounts are lost {counts}, at or above watch.loss_threshold = {loss_threshold}: \
             Synapse's database was probably reset",
            report.lost_share * 100.0
        ),
    }
}

/// A rejected token only signals a wipe if it is the one that worked
/// before; a mistyped or new token says nothing about the accounts.
async fn token_used_to_work(registry: &Registry, client: &SynapseClient) -> Result<bool, CheckError> {
    let working = registry.setting(WORKING_TOKEN_SETTING).await?;
    Ok(working.is_some() && working == client.token_fingerprint())
}

/// A wipe loses every account, a revoked token none: up to
/// [`ACCOUNTS_ASKED_AFTER`] accounts that were their persons', picked at
/// random, asked after without a token. Their IDs when every one is still
/// there; `None` when one is gone or Synapse does not say.
async fn all_still_there(client: &SynapseClient, known: &[Known]) -> Option<Vec<String>> {
    let picked: Vec<String> = {
        use rand::seq::IndexedRandom;
        let persons: Vec<&Known> = known.iter().filter(|account| account.standing == AccountState::Present).collect();
        persons.choose_multiple(&mut rand::rng(), ACCOUNTS_ASKED_AFTER).map(|account| account.user_id.clone()).collect()
    };
    for user_id in &picked {
        match client.has_public_profile(user_id).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(err) => {
                tracing::info!(error = %err, "Synapse does not say whether known accounts still exist");
                return None;
            }
        }
    }
    Some(picked).filter(|picked| !picked.is_empty())
}

/// Every account Synapse lists, sorted bytewise by ID and without repeats.
async fn complete_listing(
    client: &SynapseClient,
    config: &Config,
    listed: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Vec<Listed>, CheckError> {
    let mut attempt = 1;
    loop {
        let mut pages = client.pages(config.sync.page_size).local_to(&config.homeserver.server_name);
        let mut listing: Vec<Listed> = Vec::new();
        while let Some(page) = pages.next_page().await? {
            listing.extend(page.iter().map(Listed::from));
            listed(listing.len() as u64, pages.total.map(|total| total.max(0) as u64));
        }
        listing.sort_unstable_by(|a, b| a.user_id.as_bytes().cmp(b.user_id.as_bytes()));
        listing.dedup_by(|a, b| a.user_id == b.user_id);
        match pages.missed_some(listing.len() as u64) {
            Some(total) if attempt >= LISTING_ATTEMPTS => {
                return Err(CheckError::Inconsistent { listed: listing.len(), total });
            }
            Some(_) => attempt += 1,
            None => return Ok(listing),
        }
    }
}
