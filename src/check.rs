//! `check`: the registry against a complete listing, read-only.
//!
//! Only a complete listing can say an account is missing. Synapse being
//! down, or a listing failing part-way, means "could not tell" — never loss.
//! One failure is itself a loss signal: the admin token rejected as unknown
//! while Synapse still answers, which is what a database wipe looks like.

use serde::Serialize;

use crate::reconcile::{Listed, Report, Verdict, merge_join};
use crate::registry::{self, Registry};
use crate::synapse::{self, SynapseClient};

const LISTING_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub report: Report,
    /// False when the verdict rests on the token being rejected, not on a
    /// listing: then no account can be named missing yet.
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
    #[error("could not tell whether accounts were lost: {0}")]
    Registry(#[from] registry::Error),
}

pub async fn check(
    registry: &Registry,
    client: &SynapseClient,
    page_size: u32,
    loss_threshold: f64,
) -> Result<CheckReport, CheckError> {
    // Unauthenticated and cheap: if this fails Synapse is down, full stop.
    let server_version = client.server_version().await?;
    let known = registry.known_accounts().await?;
    let listing = match complete_listing(client, page_size).await {
        Ok(listing) => listing,
        Err(CheckError::Synapse(err)) if err.is_unknown_token() => {
            return Ok(CheckReport {
                report: Report {
                    verdict: Verdict::SuspectedReset,
                    known: known.len(),
                    listed: 0,
                    present: 0,
                    missing: Vec::new(),
                    recreated: Vec::new(),
                    deactivated: Vec::new(),
                    new: Vec::new(),
                    lost_share: 0.0,
                },
                listing_complete: false,
                reason: format!(
                    "Synapse {server_version} answers but rejects the admin token as unknown (M_UNKNOWN_TOKEN): \
                     its database was probably reset; with a new admin token, check names the lost accounts"
                ),
                server_version,
            });
        }
        Err(err) => return Err(err),
    };
    let report = merge_join(&known, &listing, loss_threshold);
    let reason = match report.verdict {
        Verdict::Ok => "every known account is listed".to_owned(),
        Verdict::Loss => format!(
            "{} of {} known accounts are lost ({} missing, {} recreated)",
            report.missing.len() + report.recreated.len(),
            report.known,
            report.missing.len(),
            report.recreated.len()
        ),
        Verdict::SuspectedReset => format!(
            "{:.0}% of known accounts are lost ({} missing, {} recreated), at or above watch.loss_threshold = {}: \
             Synapse's database was probably reset",
            report.lost_share * 100.0,
            report.missing.len(),
            report.recreated.len(),
            loss_threshold
        ),
    };
    Ok(CheckReport {
        report,
        listing_complete: true,
        reason,
        server_version,
    })
}

/// Every account Synapse lists, sorted bytewise by ID and without repeats.
async fn complete_listing(
    client: &SynapseClient,
    page_size: u32,
) -> Result<Vec<Listed>, CheckError> {
    let mut attempt = 1;
    loop {
        let mut pages = client.pages(page_size);
        let mut listing: Vec<Listed> = Vec::new();
        while let Some(page) = pages.next_page().await? {
            listing.extend(page.iter().map(Listed::from));
        }
        listing.sort_unstable_by(|a, b| a.user_id.as_bytes().cmp(b.user_id.as_bytes()));
        listing.dedup_by(|a, b| a.user_id == b.user_id);
        match pages.total {
            Some(total) if (listing.len() as i64) < total => {
                if attempt >= LISTING_ATTEMPTS {
                    return Err(CheckError::Inconsistent {
                        listed: listing.len(),
                        total,
                    });
                }
                attempt += 1;
            }
            _ => return Ok(listing),
        }
    }
}
