//! Benchmark: the watcher and sync at size (issue 21 item 5), against a real
//! Synapse filled quickly by inserting rows into its SQLite database.
//!
//! Run with `cargo bench --bench at_size` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_SIZE_ACCOUNTS  accounts inserted (default 100000; the
//!                                 harness's admin makes N+1)
//!   LIFEBOAT_BENCH_SIZE_DIR       where the filled Synapse is cached
//!                                 (default $CARGO_TARGET_DIR or ./target, + /at-size)
//!   LIFEBOAT_BENCH_SIZE_PAIRS     bare listing / warm sync pairs (default 2;
//!                                 0: one bare listing only, for its cost)
//!   LIFEBOAT_BENCH_SIZE_WARMUP    0: no warm-up listing; the pairs then start
//!                                 with the warm round, so a cold cache counts
//!                                 against lifeboat (default 1; at 1,000,000
//!                                 a listing takes about half an hour). With
//!                                 PAIRS=0 too, no listing at all and no
//!                                 schedule: for the cold sync alone
//!   LIFEBOAT_BENCH_SIZE_COLD      1: cold sync against a bare loop of the
//!                                 same detail calls (default 1 up to 100,000)
//!   LIFEBOAT_BENCH_SIZE_COLD_FIRST  sync (default) or bare: which side of the
//!                                 cold comparison runs first. Synapse is
//!                                 restarted before each side, so neither
//!                                 inherits the other's caches and heap
//!   LIFEBOAT_BENCH_SIZE_PROBES    probes timed one after the other (default 20)
//!   LIFEBOAT_BENCH_SIZE_WATCH_S   seconds the watcher runs with the defaults
//!                                 before the wipe (default 300)
//!   LIFEBOAT_BENCH_SIZE_PAGE_SIZE `sync.page_size`, for the bare listing too
//!                                 (default 2000, lifeboat's default)
//!   LIFEBOAT_BENCH_SIZE_FILL_ONLY 1: fill the cache and stop (default 0)
//!   LIFEBOAT_BENCH_SIZE_SYNAPSE_DB  sqlite (default) or postgres: Synapse's
//!                                 database on the local PostgreSQL
//!                                 (127.0.0.1:5432, user postgres), as large
//!                                 servers run it
//!
//! The fill (once per N and database, cached) is benches/support/fill.rs's:
//! the harness starts Synapse on an empty database and registers its admin;
//! once `background_updates` is empty Synapse is stopped and N rows go into
//! `users` (no password hash, `creation_ts` in seconds), `profiles` and
//! `user_threepids` (one email each) in one INSERT … SELECT per table;
//! `sqlite_stat1` is dropped if present (PostgreSQL: the tables are
//! analyzed). The filled database and the admin's password are kept apart
//! and copied back before each run (the wipe at the end deletes the
//! database); on PostgreSQL the filled database is the template the run's
//! database is created from.
//! The registry is filled the same way: `accounts` and `contacts` from
//! Synapse's rows, details fresh (what a finished cold sync leaves), so the
//! watcher starts warm.
//! Synapse's CPU is its process's; on PostgreSQL plus that of the server
//! processes serving its database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::app::Services;
use lifeboat::config::Config;
use lifeboat::observation::LastListing;
use lifeboat::probe::{FixedSample, Probe, probe};
use lifeboat::registry::{Actor, Registry, now_ms};
use lifeboat::sync::{Quiet, SyncOptions, sync};
use lifeboat::watch::{AlertSink, LISTING_SHARE, next_listing_due};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[path = "support/common.rs"]
mod common;
#[path = "support/fill.rs"]
mod fill;
#[allow(dead_code)]
#[path = "support/synapse.rs"]
mod synapse;
use common::{env_number, http, median};
use fill::{SynapseDb, postgres_url, sqlite};
use synapse::{Harness, Info, bare_listing, lifeboat_config, synapse_python};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Seconds in an hour (and CPU seconds in an hour of one core).
const HOUR_S: f64 = 3600.0;

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
/// `None` once the process is gone.
fn process_cpu(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Wall time and Synapse CPU of one measurement.
#[derive(Clone, Copy, Debug)]
struct Cost {
    wall: f64,
    synapse: f64,
}

/// Whose CPU counts as Synapse's: its process, and on PostgreSQL the
/// server processes (backends) serving its database.
struct SynapseCpu {
    pid: i32,
    database: Option<String>,
}

impl SynapseCpu {
    /// CPU seconds so far, per process.
    async fn now(&self) -> Result<Vec<(i32, f64)>> {
        let mut processes = vec![(self.pid, process_cpu(self.pid).ok_or("Synapse's process is gone")?)];
        if let Some(database) = &self.database {
            let mut conn = sqlx::PgConnection::connect(&postgres_url("postgres")).await?;
            let backends: Vec<(i32,)> =
                sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                    .bind(database)
                    .fetch_all(&mut conn)
                    .await?;
            conn.close().await?;
            processes.extend(backends.into_iter().filter_map(|(pid,)| Some((pid, process_cpu(pid)?))));
        }
        Ok(processes)
    }

    /// CPU seconds between two readings; a backend that started in between
    /// counts from zero (one that ended in between is not seen).
    fn spent(before: &[(i32, f64)], after: &[(i32, f64)]) -> f64 {
        after
            .iter()
            .map(|(pid, cpu)| cpu - before.iter().find(|(then, _)| then == pid).map_or(0.0, |(_, cpu)| *cpu))
            .sum()
    }
}

async fn measured<T>(cpu: &SynapseCpu, work: impl Future<Output = Result<T>>) -> Result<(Cost, T)> {
    let (before, started) = (cpu.now().await?, Instant::now());
    let out = work.await?;
    let wall = started.elapsed().as_secs_f64();
    Ok((Cost { wall, synapse: SynapseCpu::spent(&before, &cpu.now().await?) }, out))
}

fn localpart_sql(db: &SynapseDb) -> &'static str {
    // Two letters spread over the alphabet, so that the probe's rotating
    // sample (from two random letters on) finds accounts everywhere.
    match db {
        SynapseDb::Sqlite => "char(97 + (i * 7) % 26) || char(97 + (i / 26 * 11 + i) % 26) || printf('.user%07d', i)",
        SynapseDb::Postgres(_) => {
            "chr(97 + (i * 7) % 26) || chr(97 + (i / 26 * 11 + i) % 26) || '.user' || lpad(i::text, 7, '0')"
        }
    }
}

/// The database of the run's Synapse on PostgreSQL, and the filled one it
/// is made from.
const RUN_DATABASE: &str = "lifeboat_at_size_run";

fn filled_database(count: usize) -> String {
    format!("lifeboat_at_size_{count}_filled")
}

async fn database_exists(name: &str) -> Result<bool> {
    let mut conn = sqlx::PgConnection::connect(&postgres_url("postgres")).await?;
    let found: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1").bind(name).fetch_optional(&mut conn).await?;
    conn.close().await?;
    Ok(found.is_some())
}

/// `DROP DATABASE` (if there) then, with `template`, `CREATE DATABASE`.
async fn remake_database(name: &str, template: Option<&str>) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(&postgres_url("postgres")).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut conn).await?;
    if let Some(template) = template {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {template}")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// Fills the cache for `count` accounts, once (`fill::fill`, then the
/// filled database and the admin's password kept apart).
async fn fill(python: &Path, repo: &Path, cache: &Path, db: &SynapseDb, count: usize) -> Result<()> {
    let done = cache.join("filled");
    let template_there = match db {
        SynapseDb::Sqlite => true,
        SynapseDb::Postgres(_) => database_exists(&filled_database(count)).await?,
    };
    if done.exists() && template_there {
        println!("  the filled Synapse of {count} accounts is cached in {}", cache.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(cache);
    let started = Instant::now();
    let dir = cache.join("synapse");
    if let SynapseDb::Postgres(run) = db {
        remake_database(run, None).await?;
    }
    fill::fill(python, repo, &dir, db, count, localpart_sql(db)).await?;
    match db {
        SynapseDb::Sqlite => {
            std::fs::copy(dir.join("homeserver.db"), cache.join("homeserver.db.filled"))?;
        }
        SynapseDb::Postgres(run) => remake_database(&filled_database(count), Some(run)).await?,
    }
    std::fs::copy(dir.join("admin_password"), cache.join("admin_password.filled"))?;
    std::fs::write(&done, format!("{count}\n"))?;
    println!(
        "  filled Synapse with {count} accounts in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        cache.display()
    );
    Ok(())
}

/// The filled database back in place, as before any run.
async fn restore(cache: &Path, db: &SynapseDb, count: usize) -> Result<()> {
    let dir = cache.join("synapse");
    match db {
        SynapseDb::Sqlite => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(dir.join(format!("homeserver.db{suffix}")));
            }
            std::fs::copy(cache.join("homeserver.db.filled"), dir.join("homeserver.db"))?;
        }
        SynapseDb::Postgres(run) => remake_database(run, Some(&filled_database(count))).await?,
    }
    std::fs::copy(cache.join("admin_password.filled"), dir.join("admin_password"))?;
    Ok(())
}

/// A registry that knows every account with fresh details, as a finished
/// cold sync leaves it.
async fn warm_registry(path: &Path, synapse_dir: &Path, db: &SynapseDb) -> Result<()> {
    let url = format!("sqlite://{}", path.display());
    drop(Registry::connect(&url).await?);
    let mut conn = sqlite(path).await?;
    let now = now_ms();
    let due = now + 30 * 24 * 3600 * 1000;
    if let SynapseDb::Postgres(name) = db {
        warm_registry_from_postgres(&mut conn, name, now, due).await?;
        conn.close().await?;
        return Ok(());
    }
    let synapse_db = synapse_dir.join("homeserver.db");
    sqlx::query("ATTACH DATABASE ? AS syn").bind(synapse_db.display().to_string()).execute(&mut conn).await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO accounts (user_id, display_name, admin, deactivated, locked, is_guest, user_type, synapse_created_at, \
         first_seen_at, last_seen_present_at, state, details_fetched_at, details_due_at) \
         SELECT u.name, p.displayname, u.admin, u.deactivated, u.locked, u.is_guest, u.user_type, u.creation_ts * 1000, \
         $1, $1, 'present', $1, $2 FROM syn.users u LEFT JOIN syn.profiles p ON p.full_user_id = u.name",
    )
    .bind(now)
    .bind(due)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO contacts (user_id, kind, address, source, added_at) \
         SELECT user_id, 'email', address, 'synapse', $1 FROM syn.user_threepids WHERE medium = 'email'",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("DETACH DATABASE syn").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// `warm_registry` from a Synapse on PostgreSQL: the same rows, read from
/// there and written here one by one (no ATTACH across servers).
async fn warm_registry_from_postgres(
    registry: &mut sqlx::SqliteConnection,
    name: &str,
    now: i64,
    due: i64,
) -> Result<()> {
    use futures::TryStreamExt;
    type UserRow = (String, Option<String>, i16, i16, bool, i16, Option<String>, i64);
    let mut synapse = sqlx::PgConnection::connect(&postgres_url(name)).await?;
    let mut tx = registry.begin().await?;
    let mut users = sqlx::query_as::<_, UserRow>(
        "SELECT u.name, p.displayname, u.admin, u.deactivated, COALESCE(u.locked, FALSE), u.is_guest, u.user_type, \
         u.creation_ts FROM users u LEFT JOIN profiles p ON p.full_user_id = u.name",
    )
    .fetch(&mut synapse);
    while let Some((user_id, display_name, admin, deactivated, locked, is_guest, user_type, created)) =
        users.try_next().await?
    {
        sqlx::query(
            "INSERT INTO accounts (user_id, display_name, admin, deactivated, locked, is_guest, user_type, \
             synapse_created_at, first_seen_at, last_seen_present_at, state, details_fetched_at, details_due_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 'present', $9, $10)",
        )
        .bind(user_id)
        .bind(display_name)
        .bind(admin != 0)
        .bind(deactivated != 0)
        .bind(locked)
        .bind(is_guest != 0)
        .bind(user_type)
        .bind(created * 1000)
        .bind(now)
        .bind(due)
        .execute(&mut *tx)
        .await?;
    }
    drop(users);
    let mut emails =
        sqlx::query_as::<_, (String, String)>("SELECT user_id, address FROM user_threepids WHERE medium = 'email'")
            .fetch(&mut synapse);
    while let Some((user_id, address)) = emails.try_next().await? {
        sqlx::query(
            "INSERT INTO contacts (user_id, kind, address, source, added_at) VALUES ($1, 'email', $2, 'synapse', $3)",
        )
        .bind(user_id)
        .bind(address)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    drop(emails);
    tx.commit().await?;
    synapse.close().await?;
    Ok(())
}

/// The bare listing (`synapse::bare_listing`), keeping the names.
async fn bare_names(info: &Info, page_size: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    bare_listing(&http(), info, page_size, |users| names.extend(users.into_iter().map(|user| user.name))).await?;
    Ok(names)
}

/// The bare counterpart of a cold sync: the listing, then every account's
/// details, `concurrency` at a time, parsed and dropped.
async fn bare_cold(info: &Info, page_size: u32, concurrency: usize) -> Result<usize> {
    let names = bare_names(info, page_size).await?;
    let http = http();
    let mut done = futures::stream::iter(names)
        .map(|name| {
            let http = http.clone();
            async move {
                let url = format!("{}/_synapse/admin/v2/users/{name}", info.url);
                let body =
                    http.get(url).bearer_auth(&info.admin_token).send().await?.error_for_status()?.bytes().await?;
                let _: serde_json::Value = serde_json::from_slice(&body)?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(concurrency);
    let mut count = 0;
    while let Some(result) = done.next().await {
        result?;
        count += 1;
    }
    Ok(count)
}

/// Alerts, with the moment each arrived.
struct Recorded(tokio::sync::mpsc::UnboundedSender<(Instant, String)>);

impl AlertSink for Recorded {
    fn alert(&self, subject: &str, _markdown: &str, _room: Option<&str>) -> impl Future<Output = ()> + Send {
        let _ = self.0.send((Instant::now(), subject.to_owned()));
        async {}
    }
}

fn config_for(info: &Info, registry: &Path, dir: &Path) -> Result<Config> {
    lifeboat_config(info, registry, dir, env_number("LIFEBOAT_BENCH_SIZE_PAGE_SIZE", 2000))
}

#[tokio::main]
async fn main() -> Result<()> {
    let count = env_number("LIFEBOAT_BENCH_SIZE_ACCOUNTS", 100_000);
    let pairs = env_number("LIFEBOAT_BENCH_SIZE_PAIRS", 2);
    let warm_up = env_number("LIFEBOAT_BENCH_SIZE_WARMUP", 1) == 1;
    let cold = env_number("LIFEBOAT_BENCH_SIZE_COLD", usize::from(count <= 100_000)) == 1;
    let sync_first = match std::env::var("LIFEBOAT_BENCH_SIZE_COLD_FIRST").as_deref() {
        Err(_) | Ok("sync") => true,
        Ok("bare") => false,
        Ok(other) => return Err(format!("LIFEBOAT_BENCH_SIZE_COLD_FIRST={other:?}: sync or bare").into()),
    };
    let probes = env_number("LIFEBOAT_BENCH_SIZE_PROBES", 20);
    let watch_s = env_number("LIFEBOAT_BENCH_SIZE_WATCH_S", 300) as u64;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"));
    let base = std::env::var_os("LIFEBOAT_BENCH_SIZE_DIR").map(PathBuf::from).unwrap_or_else(|| target.join("at-size"));
    let db = match std::env::var("LIFEBOAT_BENCH_SIZE_SYNAPSE_DB").as_deref() {
        Err(_) | Ok("sqlite") => SynapseDb::Sqlite,
        Ok("postgres") => SynapseDb::Postgres(RUN_DATABASE.to_owned()),
        Ok(other) => return Err(format!("LIFEBOAT_BENCH_SIZE_SYNAPSE_DB={other:?}: sqlite or postgres").into()),
    };
    let cache = match db {
        SynapseDb::Sqlite => base.join(format!("accounts-{count}")),
        SynapseDb::Postgres(_) => base.join(format!("accounts-{count}-postgres")),
    };
    let python = synapse_python(&repo)?;
    println!("at_size: {count} accounts (+ the harness's admin), Synapse on {db:?}");
    fill(&python, &repo, &cache, &db, count).await?;
    if env_number("LIFEBOAT_BENCH_SIZE_FILL_ONLY", 0) == 1 {
        return Ok(());
    }

    restore(&cache, &db, count).await?;
    let work = tempfile::Builder::new().prefix("lifeboat-bench-at-size-").tempdir()?;
    let mut harness = Harness::start_with(&python, &repo, &cache.join("synapse"), &db.harness_args())?;
    let info = harness.info.clone();
    let mut cpu = SynapseCpu {
        pid: info.pid,
        database: match &db {
            SynapseDb::Sqlite => None,
            SynapseDb::Postgres(name) => Some(name.clone()),
        },
    };
    let registry_path = work.path().join("registry.db");
    let started = Instant::now();
    warm_registry(&registry_path, &cache.join("synapse"), &db).await?;
    println!("  registry filled (warm) in {:.1} s", started.elapsed().as_secs_f64());
    let config = config_for(&info, &registry_path, work.path())?;
    let registry = Registry::connect(&config.registry.url).await?;
    let client = lifeboat::synapse::SynapseClient::from_config(&config.homeserver);
    let page_size = config.sync.page_size;
    let actor = Actor::cli();

    // Idle Synapse, for what the watcher's window is measured against.
    let (idle, _) = measured(&cpu, async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    })
    .await?;
    let idle_rate = idle.synapse / idle.wall;
    println!("  Synapse idle: {:.2}% of a core", idle_rate * 100.0);

    // 1. A bare listing against a warm round (an unpaced sync: what the
    // watcher's paced round asks of Synapse, without its rests).
    let (mut bare, mut warm) = (Vec::new(), Vec::new());
    let expect_listed = |listed: usize| {
        if listed == count + 1 { Ok(()) } else { Err(format!("listed {listed} accounts, expected {}", count + 1)) }
    };
    if warm_up {
        let (first, listed) = measured(&cpu, bare_names(&info, page_size)).await?;
        println!(
            "  bare listing (warm-up): {} accounts, {:.1} s, Synapse CPU {:.1} s",
            listed.len(),
            first.wall,
            first.synapse
        );
        expect_listed(listed.len())?;
        if pairs == 0 {
            bare.push(first);
        }
    }
    // Without a warm-up the warm round goes first.
    let bare_turn = usize::from(!warm_up);
    let options = SyncOptions::from_config(&config);
    for pair in 0..pairs {
        for turn in 0..2 {
            if (pair + turn) % 2 == bare_turn {
                let (cost, listed) = measured(&cpu, bare_names(&info, page_size)).await?;
                println!("  pair {}: bare listing {:.2} s, Synapse CPU {:.2} s", pair + 1, cost.wall, cost.synapse);
                expect_listed(listed.len())?;
                bare.push(cost);
            } else {
                let (cost, summary) =
                    measured(&cpu, async { Ok(sync(&registry, &client, &options, &actor, &Quiet).await?) }).await?;
                println!(
                    "  pair {}: warm sync {:.2} s, Synapse CPU {:.2} s (listed {}, details fetched {})",
                    pair + 1,
                    cost.wall,
                    cost.synapse,
                    summary.applied.report.listed,
                    summary.details_fetched
                );
                expect_listed(summary.applied.report.listed)?;
                warm.push(cost);
            }
        }
    }
    let bare_wall = median(&bare.iter().map(|c| c.wall).collect::<Vec<_>>());
    let bare_cpu = median(&bare.iter().map(|c| c.synapse).collect::<Vec<_>>());
    let ratios: Vec<f64> = warm.iter().zip(&bare).map(|(w, b)| w.wall / b.wall).collect();
    if !warm.is_empty() {
        println!(
            "  warm round / bare listing (wall, per pair): {} — median {:.3} (goal <= 1.2); Synapse CPU {:.2} / {:.2} s",
            ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", "),
            median(&ratios),
            median(&warm.iter().map(|c| c.synapse).collect::<Vec<_>>()),
            bare_cpu
        );
    }

    // 2. The probe, as the watcher runs it between listings.
    let fixed = FixedSample::load(&registry).await?;
    let (probe_cost, outcomes) = measured(&cpu, async {
        let mut outcomes = Vec::new();
        for _ in 0..probes {
            outcomes.push(probe(&config, &registry, &fixed, config.watch.probe_sample).await);
        }
        Ok(outcomes)
    })
    .await?;
    if let Some(bad) = outcomes.iter().find(|outcome| **outcome != Probe::Fine) {
        return Err(format!("a probe on the unchanged server said {bad:?}").into());
    }
    let per_probe = Cost { wall: probe_cost.wall / probes as f64, synapse: probe_cost.synapse / probes as f64 };
    println!(
        "  probe ({} accounts): {:.0} ms, Synapse CPU {:.1} ms each (mean of {probes})",
        config.watch.probe_sample,
        per_probe.wall * 1000.0,
        per_probe.synapse * 1000.0
    );

    // 3. The schedule with the defaults, from the measured costs. The
    // watcher's own estimate of a listing's cost is its wall time times the
    // share it was paced to: the unpaced warm sync's (or the bare listing's).
    let listed_at_all = !(warm.is_empty() && bare.is_empty());
    let estimate = if warm.is_empty() { bare_wall } else { median(&warm.iter().map(|c| c.wall).collect::<Vec<_>>()) };
    let listing_cpu =
        if warm.is_empty() { bare_cpu } else { median(&warm.iter().map(|c| c.synapse).collect::<Vec<_>>()) };
    if listed_at_all {
        print_schedule(&config, estimate, listing_cpu, per_probe);
    } else {
        println!("  schedule: not projected (no listing measured: PAIRS=0 and WARMUP=0)");
    }

    // 4. Cold sync: an empty registry, every account's details read,
    // against a bare loop of the same calls.
    if cold {
        let cold_registry = work.path().join("cold.db");
        let cold_config = config_for(&info, &cold_registry, work.path())?;
        let cold_reg = Registry::connect(&cold_config.registry.url).await?;
        let concurrency = cold_config.sync.details_concurrency;
        let options = SyncOptions::from_config(&cold_config);
        let (mut bare_cost, mut cold_cost) = (None, None);
        for side_is_sync in [sync_first, !sync_first] {
            cpu.pid = restart(&mut harness)?;
            if side_is_sync {
                let (cost, summary) =
                    measured(&cpu, async { Ok(sync(&cold_reg, &client, &options, &actor, &Quiet).await?) }).await?;
                println!(
                    "  cold sync: {:.1} s, Synapse CPU {:.1} s ({} details, {} emails)",
                    cost.wall, cost.synapse, summary.details_fetched, summary.emails_imported
                );
                cold_cost = Some(cost);
            } else {
                let (cost, n) = measured(&cpu, bare_cold(&info, page_size, concurrency)).await?;
                println!(
                    "  bare cold loop: listing + {n} detail calls ({concurrency} at a time): {:.1} s, Synapse CPU {:.1} s",
                    cost.wall, cost.synapse
                );
                bare_cost = Some(cost);
            }
        }
        let (bare_cost, cold_cost) = (bare_cost.expect("measured"), cold_cost.expect("measured"));
        println!(
            "  cold sync / bare cold loop ({} first, Synapse restarted before each): {:.3} (goal <= 1.1); Synapse CPU {:.3}",
            if sync_first { "sync" } else { "bare loop" },
            cold_cost.wall / bare_cost.wall,
            cold_cost.synapse / bare_cost.synapse
        );
        drop(cold_reg);
    }

    // 5. The watcher with the defaults, as serve runs it, just after a
    // listing (recorded as the watcher records its own), for a window; then
    // the wipe, and the time until its alert.
    // Without a measured listing the next one is due a plain interval later.
    let listing_ms = if listed_at_all { (estimate * 1000.0) as i64 } else { 0 };
    let just_listed = LastListing { ended_ms: now_ms(), synapse_ms: listing_ms };
    registry.set_setting("watch_last_listing", &serde_json::to_string(&just_listed)?).await?;
    let (sender, mut alerts) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let services = Services::new(Arc::new(config.clone()), registry.clone(), cancel.clone());
    let watcher = tokio::spawn(lifeboat::watch::run(Arc::new(services), Recorded(sender)));
    let (window, _) = measured(&cpu, async {
        tokio::time::sleep(Duration::from_secs(watch_s)).await;
        Ok(())
    })
    .await?;
    let listed_in_window = registry
        .setting("watch_last_listing")
        .await?
        .is_some_and(|now| serde_json::from_str::<LastListing>(&now).map(|now| now != just_listed).unwrap_or(false));
    let share = (window.synapse - idle_rate * window.wall) / window.wall;
    println!(
        "  watcher with the defaults for {:.0} s: Synapse CPU {:.2} s, {:.2}% of a core above idle ({})",
        window.wall,
        window.synapse,
        share * 100.0,
        if listed_in_window { "a listing ran in the window" } else { "probes only" }
    );
    while let Ok((_, subject)) = alerts.try_recv() {
        println!("  (alert before the wipe: {subject})");
    }
    let wiped = Instant::now();
    harness.command("wipe")?;
    let back = wiped.elapsed().as_secs_f64();
    let alert = tokio::time::timeout(Duration::from_secs(600), alerts.recv()).await;
    match alert {
        Ok(Some((at, subject))) => println!(
            "  wipe → alert: {:.1} s ({subject}; Synapse was back after {back:.1} s; goal < 2 × probe_interval = {} s)",
            at.duration_since(wiped).as_secs_f64(),
            2 * config.watch.probe_interval.as_secs()
        ),
        _ => println!("  wipe → alert: none within 600 s"),
    }
    cancel.cancel();
    watcher.abort();
    drop(registry);
    harness.stop();
    Ok(())
}

/// Stops and starts Synapse on the same database: a fresh process, with
/// empty caches. Its new pid.
fn restart(harness: &mut Harness) -> Result<i32> {
    harness.command("stop")?;
    harness.command("start")?;
    let info: serde_json::Value = serde_json::from_str(&harness.command("info")?)?;
    Ok(info["pid"].as_i64().ok_or("the harness reports no pid after a start")? as i32)
}

/// The watcher's schedule with the defaults, from a listing's measured cost:
/// how often it lists, and the Synapse CPU an hour that comes to.
fn print_schedule(config: &Config, estimate: f64, listing_cpu: f64, per_probe: Cost) {
    let last = LastListing { ended_ms: 0, synapse_ms: (estimate * 1000.0) as i64 };
    let gap = next_listing_due(last, config.watch.interval) as f64 / 1000.0;
    let probes_per_hour = HOUR_S / config.watch.probe_interval.as_secs_f64();
    let per_hour = listing_cpu * HOUR_S / gap + per_probe.synapse * probes_per_hour;
    println!(
        "  schedule (defaults): a listing every {:.0} s (interval {} s, cost {:.1} s / {LISTING_SHARE}), {probes_per_hour:.0} probes an hour",
        gap,
        config.watch.interval.as_secs(),
        estimate
    );
    println!(
        "  projected Synapse CPU for lifeboat: {:.0} s an hour = {:.2}% of a core (listings {:.2}%, probes {:.2}%; goal < 5% at 1M)",
        per_hour,
        per_hour / HOUR_S * 100.0,
        listing_cpu / gap * 100.0,
        per_probe.synapse * probes_per_hour / HOUR_S * 100.0
    );
}
