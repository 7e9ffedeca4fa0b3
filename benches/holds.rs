//! Benchmark: holding lost IDs after a wipe, against a real Synapse
//! (tools/synapse_harness.py), compared in the same run with a bare loop of
//! the same admin calls.
//!
//! Run with `cargo bench --bench holds` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_HOLD_ACCOUNTS   accounts lost in the wipe (default 2000)
//!   LIFEBOAT_BENCH_ROUNDS          wipe-and-hold rounds (default 2)
//!
//! Setup: N accounts `hold-00000..`, each with a display name and an email,
//! synced into a fresh SQLite registry (emails imported). Each round wipes
//! Synapse, recovers lifeboat's account, syncs (everyone missing), then,
//! in an order that alternates between rounds:
//!   (a) the bare loop: for N fresh IDs, `PUT /_synapse/admin/v2/users/<id>`
//!       with `{}`, then with `{locked, displayname, threepids}` (what a hold
//!       sends), 8 accounts at a time, nothing recorded anywhere;
//!   (b) lifeboat: `holds::hold_lost_ids`, which makes the same two calls per
//!       account, 8 at a time, and records each hold in the registry.
//! The ratio (b)/(a) is the goal (≤ 1.2); "wipe → all held" adds the
//! recovery and the sync a real round needs first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::config::Config;
use lifeboat::holds::{HOLD_CONCURRENCY, hold_lost_ids};
use lifeboat::recover::{AdminAccess, admin_access, recover};
use lifeboat::registry::{Actor, Registry};
use lifeboat::sync::{Quiet, SyncOptions, sync};
use serde_json::json;

#[path = "support/common.rs"]
mod common;
// Each bench uses part of it.
#[allow(dead_code)]
#[path = "support/synapse.rs"]
mod synapse;
use common::{env_number, http};
use synapse::{Harness, Info, lifeboat_config, synapse_python};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const RATIO_GOAL: f64 = 1.2;

async fn put_user(
    http: &reqwest::Client,
    info: &Info,
    token: &str,
    user_id: &str,
    body: &serde_json::Value,
) -> Result<u16> {
    let url = format!("{}/_synapse/admin/v2/users/{user_id}", info.url);
    let response = http.put(url).bearer_auth(token).json(body).send().await?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("PUT {user_id} answered {status}: {}", response.text().await?).into());
    }
    Ok(status)
}

fn user_id(info: &Info, prefix: &str, n: usize) -> String {
    format!("@{prefix}-{n:05}:{}", info.server_name)
}

/// The accounts that will be lost: a display name and an email each.
async fn create_accounts(info: &Info, count: usize) -> Result<()> {
    let http = http();
    let mut created = futures::stream::iter(0..count)
        .map(|n| {
            let (http, id) = (http.clone(), user_id(info, "hold", n));
            let body = json!({
                "displayname": format!("Person {n}"),
                "threepids": [{"medium": "email", "address": format!("hold-{n:05}@example.org")}],
            });
            async move { put_user(&http, info, &info.admin_token, &id, &body).await }
        })
        .buffer_unordered(8);
    while let Some(result) = created.next().await {
        result?;
    }
    Ok(())
}

/// (a) The same two calls a hold makes, on fresh IDs, with nothing recorded.
async fn bare_loop(info: &Info, token: &str, round: usize, count: usize) -> Result<Duration> {
    let http = http();
    let started = Instant::now();
    let mut done = futures::stream::iter(0..count)
        .map(|n| {
            let (http, id) = (http.clone(), user_id(info, &format!("bare{round}"), n));
            async move {
                let status = put_user(&http, info, token, &id, &json!({})).await?;
                if status != 201 {
                    return Err(format!("{id} existed already").into());
                }
                let lock = json!({
                    "locked": true,
                    "displayname": format!("Person {n}"),
                    "threepids": [{"medium": "email", "address": format!("bare{round}-{n:05}@example.org")}],
                });
                put_user(&http, info, token, &id, &lock).await.map(|_| ())
            }
        })
        .buffer_unordered(HOLD_CONCURRENCY);
    while let Some(result) = done.next().await {
        result?;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let count = env_number("LIFEBOAT_BENCH_HOLD_ACCOUNTS", 2000);
    let rounds = env_number("LIFEBOAT_BENCH_ROUNDS", 2);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = synapse_python(&repo)?;
    let work = tempfile::Builder::new().prefix("lifeboat-bench-holds-").tempdir()?;
    let mut harness = Harness::start(&python, &repo, &work.path().join("synapse"))?;
    let info = harness.info.clone();
    println!("holds: {count} accounts on Synapse at {}, {rounds} rounds", info.url);

    let setup = Instant::now();
    create_accounts(&info, count).await?;
    println!("  created {count} accounts in {:.1} s", setup.elapsed().as_secs_f64());
    let config = lifeboat_config(&info, &work.path().join("registry.db"), work.path(), 2000)?;
    let registry = Registry::connect(&config.registry.url).await?;
    let actor = Actor::cli();
    let client = lifeboat::synapse::SynapseClient::from_config(&config.homeserver);
    sync(&registry, &client, &SyncOptions::from_config(&config), &actor, &Quiet).await?;

    let (mut ours, mut bare, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let wiped = Instant::now();
        harness.command("wipe")?;
        if let AdminAccess::Dead { .. } = admin_access(&config, &registry).await? {
            recover(&config, &registry, &actor).await?;
        }
        let AdminAccess::Working { client, .. } = admin_access(&config, &registry).await? else {
            return Err("no working admin token after recovery".into());
        };
        sync(&registry, &client, &SyncOptions::from_config(&config), &actor, &Quiet).await?;
        // Wipe → recovered and synced: what a real round does before holding.
        let prepared = wiped.elapsed();
        let token = client_token(&config, &registry).await?;
        let mut timed_ours = Duration::ZERO;
        let mut timed_bare = Duration::ZERO;
        // Each round a different one goes first.
        for turn in 0..2 {
            if (turn + round) % 2 == 0 {
                timed_bare = bare_loop(&info, &token, round, count).await?;
            } else {
                let started = Instant::now();
                let report = hold_lost_ids(
                    &config,
                    &registry,
                    &client,
                    &actor,
                    &|_, _| {},
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await?;
                timed_ours = started.elapsed();
                // Every account, and the harness's own admin.
                if report.held.len() != count + 1 || !report.taken.is_empty() || !report.failed.is_empty() {
                    return Err(format!(
                        "round {round}: held {}, taken {}, failed {} (first: {:?})",
                        report.held.len(),
                        report.taken.len(),
                        report.failed.len(),
                        report.failed.first()
                    )
                    .into());
                }
                // Not counting the bare loop when it went first.
                whole.push(prepared + timed_ours);
            }
        }
        // Per account: lifeboat also held the harness's admin.
        let ours_each = timed_ours.as_secs_f64() / (count + 1) as f64;
        let bare_each = timed_bare.as_secs_f64() / count as f64;
        println!(
            "  round {round}: wipe → recovered and synced {:.1} s; lifeboat {:.1} s ({:.0} holds/s), bare loop {:.1} s ({:.0}/s), ratio {:.3}",
            prepared.as_secs_f64(),
            timed_ours.as_secs_f64(),
            1.0 / ours_each,
            timed_bare.as_secs_f64(),
            1.0 / bare_each,
            ours_each / bare_each
        );
        ours.push(ours_each);
        bare.push(bare_each);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let ratios: Vec<f64> = ours.iter().zip(&bare).map(|(ours, bare)| ours / bare).collect();
    let ratio = median(&mut ratios.clone());
    let whole_s: Vec<f64> = whole.iter().map(Duration::as_secs_f64).collect();
    println!(
        "holds: {count} lost IDs; lifeboat {:.0} holds/s, bare loop {:.0}/s; ratio (median of {rounds}) {ratio:.3} (goal <= {RATIO_GOAL}): {}",
        1.0 / median(&mut ours),
        1.0 / median(&mut bare),
        if ratio <= RATIO_GOAL { "met" } else { "missed" }
    );
    println!(
        "  wipe → every ID held (recovery, sync, holds; per round): {}",
        whole_s.iter().map(|s| format!("{s:.1} s")).collect::<Vec<_>>().join(", ")
    );
    drop(registry);
    harness.stop();
    Ok(())
}

/// The recovered admin token, as the bare loop needs it.
async fn client_token(config: &Config, registry: &Registry) -> Result<String> {
    use secrecy::ExposeSecret;
    let service = lifeboat::recover::service_user_id(config);
    let credential = registry.service_credential(&service).await?.ok_or("no recovered token")?;
    Ok(credential.access_token.expose_secret().to_owned())
}
