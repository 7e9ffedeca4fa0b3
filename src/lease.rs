//! Named leases in the registry: one holder at a time for work that two
//! processes must not do at once (one notify per incident, one sync).
//!
//! A holder is `host/boot.pidns:pid:n[:label]`, `n` counting this process's
//! leases, so a lease excludes other tasks of the same process too (the
//! bot's `notify confirm` and the delivery worker run in one `serve`). It is
//! renewed while held (never taken back once another had it: it is then
//! lost) and expires if the holder vanishes; one in this process table whose
//! process is gone (killed mid-run) is taken over at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;

use crate::registry::{self, Registry};

/// The process table this process is in: the host's name, then the
/// kernel's boot and the PID namespace. Two hosts may share a name (a stock
/// `debian` on a shared PostgreSQL), and a container run with the host's
/// name has PIDs of its own: a PID is looked up in `/proc` only for a holder
/// from the same table.
pub fn process_table() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default().trim().to_owned();
    let host = read("/proc/sys/kernel/hostname");
    let boot: String = read("/proc/sys/kernel/random/boot_id").chars().take(8).collect();
    // `pid:[4026531836]`: the namespace's inode.
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.display().to_string().chars().filter(char::is_ascii_digit).collect::<String>())
        .unwrap_or_default();
    format!("{host}/{boot}.{namespace}")
}

/// Both the boot and the namespace were read: else another table could
/// look the same, and a lease is only taken once it runs out.
fn table_is_known(table: &str) -> bool {
    table
        .rsplit_once('/')
        .and_then(|(_, ids)| ids.split_once('.'))
        .is_some_and(|(boot, namespace)| !boot.is_empty() && !namespace.is_empty())
}

/// Tells apart the leases one process takes.
static NEXT_HOLDER: AtomicU64 = AtomicU64::new(1);

/// Who holds a lease that could not be taken, and until when (at most).
#[derive(Debug, Clone)]
pub struct Held {
    pub holder: String,
    /// `2026-11-26T01:02:03Z`
    pub until: String,
}

pub struct Lease {
    registry: Registry,
    name: String,
    holder: String,
    /// Stopped if the lease is dropped unreleased (its task cancelled, a
    /// panic), so it expires within `TTL_MS` rather than with the process.
    renewer: AbortOnDropHandle<()>,
    /// Set when the lease may be someone else's: a renewal found it gone
    /// (taken, or run out) or the registry has been out of reach for so
    /// long that another could take it soon.
    lost: Arc<AtomicBool>,
}

impl Lease {
    const TTL_MS: i64 = 120_000;
    const TTL: Duration = Duration::from_millis(Self::TTL_MS as u64);
    const RENEW_EVERY: Duration = Duration::from_millis(Self::TTL_MS as u64 / 4);

    /// Takes the lease `name`, or says who holds it.
    pub async fn take(registry: &Registry, name: &str) -> Result<Result<Lease, Held>, registry::Error> {
        Self::take_as(registry, name, None).await
    }

    /// [`Lease::take`], with what the holder is (`host/boot.pidns:pid:n:label`), for
    /// whoever finds the lease held.
    pub async fn take_as(
        registry: &Registry,
        name: &str,
        label: Option<&str>,
    ) -> Result<Result<Lease, Held>, registry::Error> {
        let table = process_table();
        let mut holder = format!("{table}:{}:{}", std::process::id(), NEXT_HOLDER.fetch_add(1, Ordering::Relaxed));
        if let Some(label) = label {
            holder = format!("{holder}:{label}");
        }
        let mut taken = registry.take_lease(name, &holder, Self::TTL_MS, None).await?;
        if let Err((current, _)) = &taken
            && let Some(pid) = current.strip_prefix(&format!("{table}:")).and_then(|rest| rest.split(':').next())
            && table_is_known(&table)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let current = current.clone();
            taken = registry.take_lease(name, &holder, Self::TTL_MS, Some(&current)).await?;
        }
        if let Err((holder, until)) = taken {
            return Ok(Err(Held { holder, until: registry::format_time(until).unwrap_or_default() }));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (registry, name, holder, lost) = (registry.clone(), name.to_owned(), holder.clone(), lost.clone());
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut renewed = Instant::now();
                loop {
                    tokio::time::sleep(Self::RENEW_EVERY).await;
                    match registry.renew_lease(&name, &holder, Self::TTL_MS).await {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => return lost.store(true, Ordering::SeqCst),
                        // Tried again; past one renewal before it runs out,
                        // what it guards is not to be used any more.
                        Err(_) if renewed.elapsed() >= Self::TTL - Self::RENEW_EVERY => {
                            lost.store(true, Ordering::SeqCst)
                        }
                        Err(_) => {}
                    }
                }
            }))
        };
        Ok(Ok(Lease { registry: registry.clone(), name: name.to_owned(), holder, renewer, lost }))
    }

    /// Runs `work` under the lease `name`, released once it is done, or
    /// says who holds it (then `work` never starts: a future does nothing
    /// until awaited).
    pub async fn run<T>(
        registry: &Registry,
        name: &str,
        work: impl Future<Output = T>,
    ) -> Result<Result<T, Held>, registry::Error> {
        let lease = match Lease::take(registry, name).await? {
            Ok(lease) => lease,
            Err(held) => return Ok(Err(held)),
        };
        let outcome = work.await;
        lease.release().await;
        Ok(Ok(outcome))
    }

    /// Up once the lease may be another's (see the field): what it guards
    /// is not to be used any more.
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    pub async fn release(self) {
        self.renewer.abort();
        let _ = self.registry.release_lease(&self.name, &self.holder).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_table_is_known_only_by_its_boot_and_its_pid_namespace_both() {
        assert!(table_is_known("debian/3f2a9c1b.4026531836"));
        assert!(!table_is_known("debian/."), "neither read (not Linux)");
        assert!(!table_is_known("debian/3f2a9c1b."), "no PID namespace");
        assert!(!table_is_known("debian/.4026531836"), "no boot");
        assert!(table_is_known(&process_table()), "this machine's, read here: {}", process_table());
    }
}
