//! Benchmark: `lifeboat backup` and `restore` of a SQLite registry of many
//! accounts, plain and age-encrypted (`backup.encrypt_to`), to show what the
//! encryption costs.
//!
//! Run with `cargo bench --bench backup`. Plain `fn main` (harness = false):
//! it prints its own figures. Knobs (environment):
//!   LIFEBOAT_BENCH_BACKUP_ACCOUNTS  accounts in the registry (default 200000)
//!   LIFEBOAT_BENCH_ITERATIONS       timed runs of each step (default 3)
//!
//! The registry is filled the way syncs fill it (listing pages staged and
//! applied), so its rows are those of a real one: one account row each and
//! the sync runs' audit.

use std::time::Instant;

use lifeboat::backup::{backup, restore};
use lifeboat::registry::{Actor, Registry};
use lifeboat::synapse::ListedUser;

#[path = "support/common.rs"]
#[allow(dead_code)] // http(): this bench talks to no server
mod common;

const PAGE: usize = 10_000;

#[tokio::main]
async fn main() {
    let accounts = common::env_number("LIFEBOAT_BENCH_BACKUP_ACCOUNTS", 200_000);
    let iterations = common::env_number("LIFEBOAT_BENCH_ITERATIONS", 3).max(1);
    let dir = tempfile::tempdir().expect("a scratch folder");
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let source = Registry::connect(&url("source.db")).await.expect("the registry opens");
    let filled = Instant::now();
    let run = source.begin_sync_run().await.expect("a sync run");
    for first in (0..accounts).step_by(PAGE) {
        let page: Vec<ListedUser> = (first..(first + PAGE).min(accounts))
            .map(|n| {
                let user = serde_json::json!({"name": format!("@user{n:07}:bench.test"), "creation_ts": 1_700_000_000 + n, "displayname": format!("User {n}")});
                serde_json::from_value(user).expect("a listed user")
            })
            .collect();
        source.stage_listing_page(run, &page).await.expect("a page is staged");
    }
    source.apply_listing(run, 0.5, &Actor::cli()).await.expect("the listing applies");
    println!("registry: {accounts} accounts, filled in {:.1} s", filled.elapsed().as_secs_f64());

    let key = age::x25519::Identity::generate();
    let key_file = dir.path().join("admin.key");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&key_file, format!("{}\n", key.to_string().expose_secret())).expect("the key file");
    }
    for (label, keys, identity) in
        [("plain", Vec::new(), None), ("encrypted", vec![key.to_public()], Some(key_file.as_path()))]
    {
        let file = dir.path().join(format!("{label}.backup"));
        let (mut written, mut rows) = (Vec::new(), 0);
        for _ in 0..iterations {
            let started = Instant::now();
            rows = backup(&source, &file, &keys, "bench.test", &Actor::cli(), &|_| {}).await.expect("a backup");
            written.push(started.elapsed().as_secs_f64());
        }
        let mut restored = Vec::new();
        for round in 0..iterations {
            let target = Registry::connect(&url(&format!("{label}-{round}.db"))).await.expect("a fresh registry");
            let started = Instant::now();
            let (actor, quiet) = (Actor::cli(), |_| {});
            restore(&target, &file, identity, false, "bench.test", &actor, &quiet).await.expect("a restore");
            restored.push(started.elapsed().as_secs_f64());
            target.close().await;
        }
        let size = std::fs::metadata(&file).expect("the backup file").len() as f64 / 1e6;
        let (backup_s, restore_s) = (common::median(&written), common::median(&restored));
        println!(
            "{label:>9}: {rows} rows, {size:.1} MB; backup {backup_s:.2} s ({:.0} rows/s), restore {restore_s:.2} s ({:.0} rows/s); medians of {iterations}",
            rows as f64 / backup_s,
            rows as f64 / restore_s
        );
    }
    source.close().await;
}
