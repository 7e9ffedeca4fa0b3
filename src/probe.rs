//! The watcher's quick look between full listings: Synapse answers, the
//! admin token still works, and a sample of known accounts is still there,
//! unchanged. A wipe takes every account at once, so a small sample sees it
//! for certain, at a cost that does not grow with the number of accounts.
//! The probe never reports a loss itself: what looks wrong only brings the
//! next full listing forward, and the listing decides.

use futures::StreamExt;

use crate::config::Config;
use crate::reconcile::registered_again;
use crate::recover::{AdminAccess, admin_access};
use crate::registry::{self, Registry};

/// Accounts looked up at once.
const CONCURRENCY: usize = 4;
/// Of the sample, the oldest accounts and the admins (the rest rotate).
const FIXED_PART: i64 = 8;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// All as the registry knows it.
    Fine,
    /// Something a loss would cause: list now. The reason, for the log.
    LooksWrong(String),
    /// Synapse or the registry did not answer; the next round will tell.
    /// `lasting`: a setup fault, which will not pass by itself (a token that
    /// is not an admin's), told at once as a round would tell it.
    CouldNotTell { why: String, lasting: bool },
    /// Every admin token lifeboat knows is rejected (a wipe, or a token
    /// revoked): list now, unless the last round saw it already.
    TokenRejected,
}

/// The part of the sample that stays the same between full rounds: the
/// oldest accounts and the admins, read once per round (reading them per
/// probe would cost a scan of the accounts each time).
#[derive(Debug, Clone, Default)]
pub struct FixedSample {
    accounts: Vec<(String, Option<i64>)>,
}

impl FixedSample {
    pub async fn load(registry: &Registry) -> Result<FixedSample, registry::Error> {
        Ok(FixedSample { accounts: registry.probe_sample_fixed(FIXED_PART).await? })
    }
}

/// Looks at Synapse the way a wipe would show: is lifeboat's token still
/// known, and are `size` known accounts (the fixed part, and a rotating
/// random rest) still there with the creation time the registry knows?
pub async fn probe(config: &Config, registry: &Registry, fixed: &FixedSample, size: usize) -> Probe {
    let client = match admin_access(config, registry).await {
        Ok(AdminAccess::Working { client, .. }) => client,
        Ok(AdminAccess::Dead { .. }) => return Probe::TokenRejected,
        Err(err) => return Probe::CouldNotTell { why: err.to_string(), lasting: err.is_setup_fault() },
    };
    let rest = size.saturating_sub(fixed.accounts.len()) as i64;
    let start = format!("@{}", random_localpart_start());
    let rotating = match registry.probe_sample_from(&start, rest).await {
        Ok(rotating) => rotating,
        Err(err) => return Probe::CouldNotTell { why: err.to_string(), lasting: false },
    };
    let mut sample: Vec<(String, Option<i64>)> = fixed.accounts.iter().cloned().chain(rotating).collect();
    sample.sort();
    sample.dedup();
    let client = &client;
    let mut looked = futures::stream::iter(sample)
        .map(|(user_id, created_ms)| async move { (client.user_details(&user_id).await, user_id, created_ms) })
        .buffer_unordered(CONCURRENCY);
    let mut outcome = Probe::Fine;
    while let Some((found, user_id, created_ms)) = looked.next().await {
        match found {
            Ok(None) => return Probe::LooksWrong(format!("{user_id} is gone")),
            // The listing's rule (`reconcile`), on Synapse's seconds.
            Ok(Some(details)) if registered_again(created_ms, details.created_at_ms()) => {
                return Probe::LooksWrong(format!("{user_id} was registered again"));
            }
            Ok(Some(_)) => {}
            // A setup fault is what the admins must hear of, whatever else failed.
            Err(err) if !matches!(outcome, Probe::CouldNotTell { lasting: true, .. }) => {
                outcome = Probe::CouldNotTell { why: err.to_string(), lasting: err.is_setup_fault() };
            }
            Err(_) => {}
        }
    }
    outcome
}

/// Two random lowercase letters: where the rotating part of the sample
/// starts in ID order (an index lookup, whatever the number of accounts).
fn random_localpart_start() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..2).map(|_| rng.random_range(b'a'..=b'z') as char).collect()
}
