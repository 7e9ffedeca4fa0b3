//! Benchmark: lifeboat's email notify path (`notify::send_deliveries` with
//! `Transport::Email`: claim from the registry, render, SMTP through lettre,
//! record in groups) pushing an incident's notices to a local SMTP sink.
//!
//! Run with `cargo bench --bench notify_email` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_EMAILS       emails per round (default 10000)
//!   LIFEBOAT_BENCH_ROUNDS       rounds per concurrency (default 3)
//!   LIFEBOAT_BENCH_CONCURRENCY  comma-separated concurrencies = SMTP connections
//!                               (default "8", what `lifeboat notify` uses)
//!   LIFEBOAT_BENCH_HELD         1: every lost ID is held and holds are on, as with
//!                               recovery.hold = "auto": each claim asks whether a lost
//!                               ID is free, each notice carries a claim link (default 0)
//!   LIFEBOAT_BENCH_SINK         postfix (default) or aiosmtpd
//!   LIFEBOAT_BENCH_POSTFIX_DIR  a folder Debian's postfix .deb was extracted into
//!                               (default target/bench-tools/postfix, fetched with
//!                               `apt-get download postfix` + `dpkg -x` if absent)
//!
//! Data: a SQLite registry (a temporary file) with EMAILS accounts, one email
//! contact each, all marked missing by a second listing, as after a wipe. Each
//! round opens a fresh incident (all accounts affected), gives every account
//! a confirmed notice token (inserted directly: no Synapse here) and plans
//! the deliveries; none of that is timed. Timed: `send_deliveries` with
//! `Mailer::from_config(…, C)`, as `lifeboat notify` runs it, opening its
//! connections included. The goal is the floor of issue 18: >= 2,000
//! messages/s at 8 connections.
//!
//! The sink (benches/support/smtp_sink.rs): Postfix's `smtp-sink` (discards
//! messages; a C program), started and stopped here. If it cannot be had,
//! aiosmtpd (`tools/smtp_sink.py --no-fsync`) is used instead, which is
//! itself the bottleneck near 1,000 messages/s, so the figure then says
//! little.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lifeboat::config::EmailConfig;
use lifeboat::mail::Mailer;
use lifeboat::notify::{NoticeSettings, NotifyProgress, Transport, send_deliveries};
use lifeboat::registry::{Actor, Incident, Registry, now_ms};
use lifeboat::synapse::ListedUser;
use rand::Rng;
use secrecy::SecretString;
use url::Url;

#[path = "support/smtp_sink.rs"]
mod smtp_sink;
use smtp_sink::{Sink, start_sink};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const RATE_GOAL: f64 = 2000.0;
const FROM: &str = "Lifeboat <lifeboat@bench.test>";
const SERVER_NAME: &str = "bench.test";
const TOKEN_LIFETIME_MS: i64 = 14 * 24 * 3600 * 1000;

/// A postmortem of a realistic length (about 1.5 kB of Markdown).
const POSTMORTEM: &str = "\
# What happened

On Tuesday evening the disk holding our homeserver's database failed during
routine maintenance, and the most recent backup turned out to be **unusable**.
The server is running again, but it started from an empty database: every
account, room membership and message history stored on it is gone.

## What this means for you

- Your old account no longer exists, and nobody else can take your user ID
  before you do: we reserved it with a personal, single-use registration token.
- Rooms hosted on other servers still exist; once you are back, ask someone
  there to invite you again.
- End-to-end encrypted history can only come back from your own key backup.

## What we are changing

1. Backups are now verified by restoring them every night on a separate machine.
2. The database lives on mirrored disks, with alerts on any disk error.
3. This off-server registry (lifeboat) keeps the list of accounts and how to
   reach their owners, so that a loss like this one can be announced at once.

We are sorry. Questions: reply to this email or write to
[the admins](mailto:admins@bench.test). Status updates: <https://status.bench.test/>.
";

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => {
            text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
        }
        _ => default,
    }
}

fn user_id(n: usize) -> String {
    format!("@person{n:06}:{SERVER_NAME}")
}

fn address(n: usize) -> String {
    format!("person{n:06}@example.org")
}

// ---- the registry ---------------------------------------------------------------

fn listed(user_id: &str, display_name: &str) -> Result<ListedUser> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": user_id, "displayname": display_name, "creation_ts": 1
    }))?)
}

/// A registry with `people` accounts, one email contact each, all missing
/// (listed once, then absent from a second listing), plus one survivor.
async fn build_registry(path: &Path, people: usize, held: bool) -> Result<Registry> {
    let registry = Registry::connect(&format!("sqlite://{}", path.display())).await?;
    let survivor = listed(&format!("@survivor:{SERVER_NAME}"), "Survivor")?;
    let users: Vec<ListedUser> =
        (0..people).map(|n| listed(&user_id(n), &format!("Bench Person {n}"))).collect::<Result<_>>()?;
    let run = registry.begin_sync_run().await?;
    for page in users.chunks(1000) {
        registry.stage_listing_page(run, page).await?;
    }
    registry.stage_listing_page(run, std::slice::from_ref(&survivor)).await?;
    registry.apply_listing(run, 0.5, &Actor::cli()).await?;

    let now = now_ms();
    let mut tx = registry.pool().begin().await?;
    for n in 0..people {
        sqlx::query(
            "INSERT INTO contacts (user_id, kind, address, source, verified_at, added_at) \
             VALUES ($1, 'email', $2, 'admin', $3, $3)",
        )
        .bind(user_id(n))
        .bind(address(n))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;

    let run = registry.begin_sync_run().await?;
    registry.stage_listing_page(run, &[survivor]).await?;
    let applied = registry.apply_listing(run, 0.5, &Actor::cli()).await?;
    if applied.newly_missing != people as u64 {
        return Err(format!("expected {people} accounts to go missing, got {}", applied.newly_missing).into());
    }
    if held {
        sqlx::query("UPDATE accounts SET custody = 'held', custody_at = $1 WHERE state = 'missing'")
            .bind(now_ms())
            .execute(registry.pool())
            .await?;
    }
    Ok(registry)
}

/// Opens an incident covering every missing account, gives each a confirmed
/// notice token, and plans the email deliveries (one per account).
async fn open_incident(registry: &Registry, people: usize) -> Result<Incident> {
    let (incident, affected) = registry
        .open_incident("Database lost", POSTMORTEM, lifeboat::registry::IncidentScope::Missing, true, &Actor::cli())
        .await?;
    if affected != people as i64 {
        return Err(format!("the incident covers {affected} accounts, expected {people}").into());
    }
    let affected: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM incident_accounts WHERE incident_id = $1 ORDER BY user_id")
            .bind(incident.id)
            .fetch_all(registry.pool())
            .await?;
    let now = now_ms();
    let mut tx = registry.pool().begin().await?;
    for (user,) in &affected {
        let token: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(16).map(char::from).collect();
        sqlx::query(
            "INSERT INTO registration_tokens (token, incident_id, user_id, purpose, created_at, expires_at, confirmed_at) \
             VALUES ($1, $2, $3, 'notice', $4, $5, $4)",
        )
        .bind(token)
        .bind(incident.id)
        .bind(user)
        .bind(now)
        .bind(now + TOKEN_LIFETIME_MS)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let planned = registry.plan_email_deliveries(incident.id).await?;
    if planned != people as u64 {
        return Err(format!("planned {planned} deliveries, expected {people}").into());
    }
    Ok(incident)
}

/// What `notify` renders the incident's notices with.
fn settings(incident: &Incident, held: bool) -> Result<NoticeSettings> {
    Ok(NoticeSettings::new(
        SERVER_NAME.to_owned(),
        Url::parse("https://matrix.bench.test")?,
        Some((
            Url::parse("https://lifeboat.bench.test")?,
            SecretString::from("bench-link-signing-key-0123456789abcdef".to_owned()),
        )),
        // The notices carry claim links as in reclaim mode (only with the IDs held).
        Some(std::time::Duration::from_secs(14 * 24 * 3600)),
        incident,
    )
    .with_holds(held))
}

fn mailer(port: u16, pool_size: u32) -> Result<Mailer> {
    Ok(Mailer::from_config(
        &EmailConfig {
            smtp_url: format!("smtp://127.0.0.1:{port}"),
            smtp_password: None,
            from: FROM.to_owned(),
            connections: pool_size as usize,
        },
        pool_size,
    )?)
}

struct NoProgress;

impl NotifyProgress for NoProgress {}

// ---- CPU accounting --------------------------------------------------------------------

fn own_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn process_cpu(pid: i32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU seconds from a `/proc/…/stat` file (user + system).
fn stat_cpu(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

// ---- rounds ------------------------------------------------------------------------------

struct Measured {
    rate: f64,
    seconds: f64,
    /// This process's CPU per message, µs.
    cpu_us: f64,
    /// The sink's CPU per message, µs.
    sink_cpu_us: f64,
}

async fn measure<F, Fut>(sink: &Sink, messages: usize, run: F) -> Result<Measured>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let (cpu, sink_cpu) = (own_cpu(), process_cpu(sink.pid()));
    let started = Instant::now();
    let sent = run().await?;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, sink_cpu) = (own_cpu() - cpu, process_cpu(sink.pid()) - sink_cpu);
    if sent != messages {
        return Err(format!("{sent} of {messages} messages were accepted").into());
    }
    Ok(Measured {
        rate: messages as f64 / seconds,
        seconds,
        cpu_us: cpu * 1e6 / messages as f64,
        sink_cpu_us: sink_cpu * 1e6 / messages as f64,
    })
}

async fn lifeboat_round(
    registry: &Registry,
    sink: &Sink,
    incident: &Incident,
    settings: &NoticeSettings,
    people: usize,
    concurrency: usize,
) -> Result<Measured> {
    let mailer = mailer(sink.port, concurrency as u32)?;
    let measured = measure(sink, people, || async {
        let (transport, lease_lost) = (Transport::Email(&mailer), AtomicBool::new(false));
        let counts =
            send_deliveries(registry, transport, incident, settings, concurrency, &NoProgress, &lease_lost).await?;
        if counts.sent != people as i64 {
            return Err(format!("send_deliveries ended with {counts:?}").into());
        }
        Ok(counts.sent as usize)
    })
    .await?;
    mailer.shutdown().await;
    Ok(measured)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 }
}

fn show(who: &str, round: usize, measured: &Measured) {
    println!(
        "  round {round} {who:<18} {:>7.0} msg/s  ({:.2} s; CPU per message: bench process {:.0} µs, sink {:.0} µs)",
        measured.rate, measured.seconds, measured.cpu_us, measured.sink_cpu_us
    );
}

// ---- main ---------------------------------------------------------------------------------

async fn bench(repo: &Path) -> Result<bool> {
    let people: usize = env_number("LIFEBOAT_BENCH_EMAILS", 10_000);
    let rounds: usize = env_number("LIFEBOAT_BENCH_ROUNDS", 3);
    let held = env_number("LIFEBOAT_BENCH_HELD", 0) == 1;
    let concurrencies: Vec<usize> = std::env::var("LIFEBOAT_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8".to_owned())
        .split(',')
        .map(|part| part.trim().parse().map_err(|_| format!("LIFEBOAT_BENCH_CONCURRENCY: {part:?} is not a number")))
        .collect::<Result<_, _>>()?;

    let scratch = tempfile::Builder::new().prefix("lifeboat-bench-notify-").tempdir()?;
    let sink = start_sink(repo, scratch.path())?;
    println!("notify_email: sink {} on 127.0.0.1:{}", sink.name, sink.port);

    let started = Instant::now();
    let registry = build_registry(&scratch.path().join("registry.db"), people, held).await?;
    let lost = if held { "lost accounts, held with holds on" } else { "missing accounts" };
    println!(
        "notify_email: SQLite registry with {people} {lost}, one email each, built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut all_met = true;
    let mut summary = Vec::new();
    for &concurrency in &concurrencies {
        println!("notify_email: concurrency {concurrency} ({concurrency} SMTP connections), {people} emails per run");
        let mut rates = Vec::new();
        for round in 1..=rounds {
            let incident = open_incident(&registry, people).await?;
            let measured =
                lifeboat_round(&registry, &sink, &incident, &settings(&incident, held)?, people, concurrency).await?;
            show("lifeboat", round, &measured);
            rates.push(measured.rate);
        }
        let rate = median(&rates);
        let met = concurrency != 8 || rate >= RATE_GOAL;
        all_met &= met;
        let verdict = match (concurrency, met) {
            (8, true) => format!(" (goal >= {RATE_GOAL:.0}: met)"),
            (8, false) => format!(" (goal >= {RATE_GOAL:.0}: MISSED)"),
            _ => String::new(),
        };
        println!("  median: {rate:.0} msg/s{verdict}");
        summary.push(format!("concurrency {concurrency:>2}: {rate:>5.0} msg/s{verdict}"));
    }
    registry.close().await;
    drop(sink);

    println!("notify_email: summary ({people} emails per run, medians of {rounds} rounds, sink as above)");
    for line in summary {
        println!("  {line}");
    }
    Ok(all_met)
}

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let outcome = runtime.block_on(async move {
        tokio::spawn(async move { bench(&repo).await.map_err(|err| err.to_string()) }).await.expect("the bench task")
    });
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            println!("notify_email: below the goal (see above)");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("notify_email: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
