//! Benchmark: lifeboat's listing phase and `lifeboat sync` against a real
//! Synapse (tools/synapse_harness.py), compared with a bare reqwest loop
//! over the same admin API, and the sync process's peak memory at two
//! account counts.
//!
//! Run with `cargo bench --bench sync_listing` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_ACCOUNTS            accounts at the large size (default 10000)
//!   LIFEBOAT_BENCH_SMALL_ACCOUNTS      accounts at the small size (default ACCOUNTS/10)
//!   LIFEBOAT_BENCH_PAGE_SIZE           listing page size P (default 500)
//!   LIFEBOAT_BENCH_ROUNDS              timed rounds at the large size (default 5)
//!   LIFEBOAT_BENCH_PAIRS               (a)+(b) listing pairs per round (default 4)
//!   LIFEBOAT_BENCH_SYNAPSE_DIR         keep the Synapse servers in DIR/accounts-<n>
//!                                      so reruns skip account creation
//!   LIFEBOAT_BENCH_CREATE_CONCURRENCY  parallel account creations (default 8)
//!   LIFEBOAT_BENCH_PASSWORDS           1: give new accounts passwords (default 0:
//!                                      Synapse's bcrypt makes creation ~20x slower,
//!                                      and nothing measured here reads passwords)
//!   LIFEBOAT_BENCH_BIN                 lifeboat binary (default: the one cargo built)
//!
//! Per size: start Synapse, make sure accounts bench-000000.. exist, then in
//! rounds (a) page through GET /_synapse/admin/v2/users with a plain reqwest
//! loop, (b) drain lifeboat's `SynapseClient::pages`, (c) run
//! `lifeboat --config FILE sync --json` as a child process on a fresh
//! registry (the first run is cold: it imports every account's emails; the
//! later ones are warm) and read its peak RSS from wait4.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::synapse::SynapseClient;
use secrecy::SecretString;
use serde::Deserialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// (b)/(a) at or below this is the goal.
const RATIO_GOAL: f64 = 1.1;
const LISTING_QUERY: &str = "deactivated=true&locked=true&guests=true&order_by=name&dir=f";

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => {
            text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
        }
        _ => default,
    }
}

// ---- Synapse through the harness -------------------------------------------

// Each bench uses part of it.
#[allow(dead_code)]
#[path = "support/synapse.rs"]
mod synapse;
use synapse::{Harness, Info, synapse_python};

// ---- CPU accounting ----------------------------------------------------------

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
fn process_cpu(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" closing the command name: state is field 3, so
    // utime (14) and stime (15) are the 12th and 13th from there.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// User + system CPU seconds of this (benchmark) process so far.
fn own_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

// ---- listings ----------------------------------------------------------------

#[derive(Deserialize)]
struct BarePage {
    users: Vec<BareUser>,
    #[serde(default)]
    next_token: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct BareUser {
    name: String,
}

fn bare_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a plain reqwest client builds")
}

/// (a) The bare loop: page until there is no next_token, keeping only the
/// names. Calls `each` with every page's names.
async fn bare_listing(
    http: &reqwest::Client,
    info: &Info,
    page_size: u32,
    mut each: impl FnMut(Vec<BareUser>),
) -> Result<usize> {
    let mut from: Option<String> = None;
    let mut count = 0;
    loop {
        let mut url = format!("{}/_synapse/admin/v2/users?limit={page_size}&{LISTING_QUERY}", info.url);
        if let Some(from) = &from {
            url.push_str("&from=");
            url.push_str(&url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>());
        }
        let body = http.get(&url).bearer_auth(&info.admin_token).send().await?.error_for_status()?.bytes().await?;
        let page: BarePage = serde_json::from_slice(&body)?;
        count += page.users.len();
        each(page.users);
        match page.next_token {
            Some(serde_json::Value::String(token)) => from = Some(token),
            Some(serde_json::Value::Number(token)) => from = Some(token.to_string()),
            _ => return Ok(count),
        }
    }
}

/// (b) lifeboat's listing phase: `client.pages(P)` drained.
async fn lifeboat_listing(info: &Info, page_size: u32) -> Result<usize> {
    let client = SynapseClient::new(
        url::Url::parse(&info.url)?,
        Some(SecretString::from(info.admin_token.clone())),
        Duration::from_secs(30),
        4,
    );
    let mut pages = client.pages(page_size);
    let mut count = 0;
    while let Some(page) = pages.next_page().await? {
        count += page.len();
    }
    Ok(count)
}

/// Client-side cost of parsing one listing page, by parser.
struct ParseCost {
    users_per_page: usize,
    bytes_per_page: usize,
    /// Microseconds per page: bare names-only struct, lifeboat's
    /// `UsersPage`, and a generic `serde_json::Value`.
    bare_us: f64,
    lifeboat_us: f64,
    value_us: f64,
}

/// Fetches the first page once and parses it repeatedly in memory, to
/// price JSON parsing apart from the network and Synapse.
async fn parse_cost(info: &Info, page_size: u32) -> Result<ParseCost> {
    let url = format!("{}/_synapse/admin/v2/users?limit={page_size}&{LISTING_QUERY}", info.url);
    let body = bare_client().get(&url).bearer_auth(&info.admin_token).send().await?.error_for_status()?.bytes().await?;
    fn per_page<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<f64> {
        const REPEAT: u32 = 200;
        for _ in 0..10 {
            std::hint::black_box(serde_json::from_slice::<T>(body)?);
        }
        let started = Instant::now();
        for _ in 0..REPEAT {
            std::hint::black_box(serde_json::from_slice::<T>(std::hint::black_box(body))?);
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(REPEAT))
    }
    let users = serde_json::from_slice::<BarePage>(&body)?.users.len();
    Ok(ParseCost {
        users_per_page: users,
        bytes_per_page: body.len(),
        bare_us: per_page::<BarePage>(&body)?,
        lifeboat_us: per_page::<lifeboat::synapse::UsersPage>(&body)?,
        value_us: per_page::<serde_json::Value>(&body)?,
    })
}

// ---- accounts ----------------------------------------------------------------

fn localpart(index: usize) -> String {
    format!("bench-{index:06}")
}

/// A small realistic mix: every 100th account locked, every 200th
/// deactivated (Synapse hides both from a default listing).
fn extra_state(index: usize) -> Option<serde_json::Value> {
    if index % 200 == 199 {
        Some(serde_json::json!({"deactivated": true}))
    } else if index % 100 == 49 {
        Some(serde_json::json!({"locked": true}))
    } else {
        None
    }
}

async fn create_account(http: &reqwest::Client, info: &Info, index: usize, with_password: bool) -> Result<()> {
    let name = localpart(index);
    let user_id = format!("@{name}:{}", info.server_name);
    let url = format!(
        "{}/_synapse/admin/v2/users/{}",
        info.url,
        url::form_urlencoded::byte_serialize(user_id.as_bytes()).collect::<String>()
    );
    let mut body = serde_json::json!({
        "displayname": format!("Bench User {index}"),
        "threepids": [{"medium": "email", "address": format!("{name}@example.org")}],
    });
    if with_password {
        // Synapse bcrypt-hashes it (bcrypt_rounds 12, about 0.2 s of CPU
        // each): that, not the API, is what makes creation slow.
        body["password"] = serde_json::json!(format!("{name}-pw-{}", index * 7919 % 100_003));
    }
    let mut requests = vec![body];
    if let Some(extra) = extra_state(index) {
        // Synapse ignores locked/deactivated on creation: a second PUT.
        requests.push(extra);
    }
    for body in requests {
        let mut attempt = 0;
        loop {
            let result = http.put(&url).bearer_auth(&info.admin_token).json(&body).send().await;
            match result {
                Ok(response) if response.status().is_success() => break,
                Ok(response) if attempt < 3 && response.status().is_server_error() => {}
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(format!("creating {user_id}: {status} {text}").into());
                }
                Err(err) if attempt < 3 => eprintln!("sync_listing: retrying {user_id}: {err}"),
                Err(err) => return Err(err.into()),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
    }
    Ok(())
}

/// Makes sure bench-000000 .. bench-<n-1> exist. Returns how many were
/// created and how long that took.
async fn ensure_accounts(info: &Info, n: usize, settings: &Settings) -> Result<(usize, Duration)> {
    let (concurrency, page_size) = (settings.concurrency, settings.page_size);
    let http = bare_client();
    let mut existing = HashSet::new();
    bare_listing(&http, info, page_size.max(500), |users| {
        existing.extend(users.into_iter().map(|user| user.name));
    })
    .await?;
    let missing: Vec<usize> =
        (0..n).filter(|&i| !existing.contains(&format!("@{}:{}", localpart(i), info.server_name))).collect();
    if missing.is_empty() {
        eprintln!("sync_listing: all {n} accounts already exist");
        return Ok((0, Duration::ZERO));
    }
    let total = missing.len();
    eprintln!("sync_listing: creating {total} accounts ({} exist), {concurrency} in parallel", n - total);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut done = 0;
    let mut results = futures::stream::iter(missing)
        .map(|index| {
            let http = &http;
            async move { create_account(http, info, index, settings.passwords).await }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = results.next().await {
        result?;
        done += 1;
        if last_report.elapsed() >= Duration::from_secs(5) || done == total {
            last_report = Instant::now();
            let elapsed = started.elapsed().as_secs_f64();
            let rate = done as f64 / elapsed.max(1e-9);
            eprintln!(
                "sync_listing: created {done}/{total} accounts in {elapsed:.0} s ({rate:.0}/s, about {:.0} s left)",
                (total - done) as f64 / rate.max(1e-9)
            );
        }
    }
    Ok((total, started.elapsed()))
}

// ---- lifeboat sync as a child process ------------------------------------------

struct SyncRun {
    wall: Duration,
    /// Peak resident set size in KiB (ru_maxrss on Linux).
    max_rss_kib: i64,
    /// CPU seconds of the sync process (user + system).
    cpu: f64,
    /// CPU seconds Synapse spent while the sync ran.
    synapse_cpu: f64,
    /// Size of the registry (database + WAL) after the run, in KiB.
    registry_kib: u64,
    listed: Option<u64>,
    details_fetched: Option<u64>,
    emails_imported: Option<u64>,
    ok: bool,
}

fn write_config(dir: &Path, info: &Info, page_size: u32) -> Result<PathBuf> {
    let registry = dir.join("lifeboat.db");
    let config = format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\n\n\
         [registry]\nurl = \"sqlite://{}\"\n\n[sync]\npage_size = {page_size}\n",
        info.url,
        info.server_name,
        info.admin_token,
        registry.display()
    );
    let path = dir.join("lifeboat.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Runs `lifeboat --config FILE sync --json` and reaps it with wait4 for
/// its own resource usage (peak RSS, CPU).
fn run_sync(binary: &Path, config: &Path, log_dir: &Path, label: &str, synapse_pid: i32) -> Result<SyncRun> {
    let stderr_path = log_dir.join(format!("sync-{label}.stderr"));
    let synapse_before = process_cpu(synapse_pid).unwrap_or(f64::NAN);
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("sync")
        .arg("--json")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
    // Read all of stdout first: the JSON summary lists every new account
    // and would fill the pipe if the child had to wait for us.
    let mut stdout = Vec::new();
    child.stdout.take().expect("piped stdout").read_to_end(&mut stdout)?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 only writes into the two values we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4 on the sync child: {err}").into());
        }
    }
    let wall = started.elapsed();
    let synapse_cpu = process_cpu(synapse_pid).unwrap_or(f64::NAN) - synapse_before;
    let registry_dir = config.parent().unwrap_or(Path::new("."));
    let registry_kib = ["lifeboat.db", "lifeboat.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(registry_dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum::<u64>()
        / 1024;
    // The child is reaped: `child` must not be waited on again.
    drop(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let summary: Option<serde_json::Value> = serde_json::from_slice(&stdout).ok();
    let field = |name: &str| summary.as_ref().and_then(|s| s.get(name)).and_then(|v| v.as_u64());
    let listed = summary.as_ref().and_then(|s| s.pointer("/report/listed")).and_then(|v| v.as_u64());
    if !ok {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        eprintln!(
            "sync_listing: `lifeboat sync` ({label}) exited with wait status {status}; stderr tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(SyncRun {
        wall,
        max_rss_kib: usage.ru_maxrss,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        synapse_cpu,
        registry_kib,
        listed,
        details_fetched: field("details_fetched"),
        emails_imported: field("emails_imported"),
        ok,
    })
}

// ---- measurements ----------------------------------------------------------------

#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    /// CPU seconds of the client (this process) during the listing.
    client_cpu: f64,
    /// CPU seconds of the Synapse process during the listing.
    synapse_cpu: f64,
}

fn measure_listing<F, Fut>(runtime: &tokio::runtime::Runtime, synapse_pid: i32, expect: usize, run: F) -> Result<Sample>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let synapse_before = process_cpu(synapse_pid).unwrap_or(f64::NAN);
    let client_before = own_cpu();
    let started = Instant::now();
    let count = runtime.block_on(run())?;
    let wall = started.elapsed();
    let sample = Sample {
        wall,
        client_cpu: own_cpu() - client_before,
        synapse_cpu: process_cpu(synapse_pid).unwrap_or(f64::NAN) - synapse_before,
    };
    if count != expect {
        return Err(format!("a listing returned {count} accounts, expected {expect}").into());
    }
    Ok(sample)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Everything measured at one account count.
struct SizeResult {
    accounts: usize,
    listed: usize,
    created: usize,
    create_time: Duration,
    bare: Vec<Sample>,
    lifeboat: Vec<Sample>,
    cold: Option<SyncRun>,
    warm: Vec<SyncRun>,
    parse: Option<ParseCost>,
}

struct Settings {
    repo: PathBuf,
    python: PathBuf,
    binary: PathBuf,
    page_size: u32,
    concurrency: usize,
    /// (a)/(b) listing pairs per round.
    pairs: usize,
    passwords: bool,
    keep_dir: Option<PathBuf>,
}

fn bench_size(settings: &Settings, accounts: usize, rounds: usize) -> Result<SizeResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let scratch = tempfile::Builder::new().prefix("lifeboat-bench-").tempdir()?;
    let synapse_dir = match &settings.keep_dir {
        Some(base) => base.join(format!("accounts-{accounts}")),
        None => scratch.path().join("synapse"),
    };
    std::fs::create_dir_all(&synapse_dir)?;
    eprintln!("sync_listing: starting Synapse in {}", synapse_dir.display());
    let harness = Harness::start(&settings.python, &settings.repo, &synapse_dir)?;
    let info = harness.info.clone();
    let (created, create_time) = runtime.block_on(ensure_accounts(&info, accounts, settings))?;

    // The harness's admin account is listed too.
    let http = bare_client();
    let listed = runtime.block_on(bare_listing(&http, &info, settings.page_size, |_| {}))?;
    eprintln!("sync_listing: Synapse lists {listed} accounts (page size {})", settings.page_size);

    // Warm-up, untimed: Synapse's caches, connection setup, page cache.
    runtime.block_on(bare_listing(&http, &info, settings.page_size, |_| {}))?;
    runtime.block_on(lifeboat_listing(&info, settings.page_size))?;

    let registry_dir = scratch.path().join("registry");
    std::fs::create_dir_all(&registry_dir)?;
    let config = write_config(&registry_dir, &info, settings.page_size)?;

    let mut result = SizeResult {
        accounts,
        listed,
        created,
        create_time,
        bare: Vec::new(),
        lifeboat: Vec::new(),
        cold: None,
        warm: Vec::new(),
        parse: Some(runtime.block_on(parse_cost(&info, settings.page_size))?),
    };
    for round in 0..rounds {
        // Alternate which listing goes first, so drift hits both alike.
        // A fresh client each time, as each lifeboat run makes its own.
        let bare = || {
            measure_listing(&runtime, info.pid, listed, || async {
                bare_listing(&bare_client(), &info, settings.page_size, |_| {}).await
            })
        };
        let ours = || measure_listing(&runtime, info.pid, listed, || lifeboat_listing(&info, settings.page_size));
        let (mut round_a, mut round_b) = (Vec::new(), Vec::new());
        for pair in 0..settings.pairs {
            if (round * settings.pairs + pair).is_multiple_of(2) {
                round_a.push(bare()?);
                round_b.push(ours()?);
            } else {
                round_b.push(ours()?);
                round_a.push(bare()?);
            }
        }
        // For the progress line: this round's fastest of each.
        let fastest = |samples: &[Sample]| samples.iter().map(|s| s.wall).min().unwrap_or(Duration::ZERO);
        let (a, b) = (fastest(&round_a), fastest(&round_b));
        result.bare.extend(round_a);
        result.lifeboat.extend(round_b);
        let label = if round == 0 { "cold".to_owned() } else { format!("warm-{round}") };
        let sync = run_sync(&settings.binary, &config, scratch.path(), &label, info.pid)?;
        eprintln!(
            "sync_listing: {accounts} accounts, round {}: fastest listing bare {:.3} s, lifeboat {:.3} s (x{:.3}), sync {label} {:.2} s, peak RSS {} KiB",
            round + 1,
            a.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64(),
            sync.wall.as_secs_f64(),
            sync.max_rss_kib
        );
        if round == 0 {
            result.cold = Some(sync);
        } else {
            result.warm.push(sync);
        }
    }
    harness.stop();
    Ok(result)
}

// ---- report --------------------------------------------------------------------

fn secs(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    format!("{:>8.3} {:>8.3} {:>8.3}", min(values), median(&mut sorted), max(values))
}

fn print_size(r: &SizeResult) {
    println!();
    println!(
        "== {} bench accounts ({} listed, incl. the harness admin){} ==",
        r.accounts,
        r.listed,
        if r.created > 0 {
            format!("; created {} accounts in {:.0} s", r.created, r.create_time.as_secs_f64())
        } else {
            String::new()
        }
    );
    println!(
        "{:<40} {:>5} {:>8} {:>8} {:>8} {:>11} {:>11}",
        "what", "runs", "min s", "median s", "max s", "client CPU", "Synapse CPU"
    );
    for (what, samples) in [("(a) bare reqwest listing", &r.bare), ("(b) lifeboat listing (client.pages)", &r.lifeboat)]
    {
        let walls: Vec<f64> = samples.iter().map(|s| s.wall.as_secs_f64()).collect();
        let mut client: Vec<f64> = samples.iter().map(|s| s.client_cpu).collect();
        let mut synapse: Vec<f64> = samples.iter().map(|s| s.synapse_cpu).collect();
        println!(
            "{:<40} {:>5} {} {:>9.3} s {:>9.3} s",
            what,
            samples.len(),
            secs(&walls),
            median(&mut client),
            median(&mut synapse)
        );
    }
    let syncs: Vec<(&str, Vec<&SyncRun>)> = vec![
        ("(c) lifeboat sync, cold (imports emails)", r.cold.iter().collect()),
        ("(c) lifeboat sync, warm", r.warm.iter().collect()),
    ];
    for (what, runs) in &syncs {
        if runs.is_empty() {
            continue;
        }
        let walls: Vec<f64> = runs.iter().map(|s| s.wall.as_secs_f64()).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|s| s.cpu).collect();
        let mut synapse: Vec<f64> = runs.iter().map(|s| s.synapse_cpu).collect();
        println!(
            "{:<40} {:>5} {} {:>9.3} s {:>9.3} s",
            what,
            runs.len(),
            secs(&walls),
            median(&mut cpu),
            median(&mut synapse)
        );
    }
    for (what, runs) in &syncs {
        for run in runs {
            println!(
                "    {:<36} peak RSS {:>7} KiB ({:>5.1} MiB); registry {:>6} KiB; listed {}, details fetched {}, emails imported {}{}",
                what.trim_start_matches("(c) lifeboat sync, "),
                run.max_rss_kib,
                run.max_rss_kib as f64 / 1024.0,
                run.registry_kib,
                opt(run.listed),
                opt(run.details_fetched),
                opt(run.emails_imported),
                if run.ok { "" } else { "  FAILED" }
            );
        }
    }
    if let Some(parse) = &r.parse {
        let pages = r.listed.div_ceil(parse.users_per_page.max(1)) as f64;
        println!(
            "JSON parsing of one page ({} users, {} KiB): bare {:.0} us, lifeboat UsersPage {:.0} us, serde_json::Value {:.0} us; whole listing ({pages:.0} pages): bare {:.1} ms, lifeboat {:.1} ms",
            parse.users_per_page,
            parse.bytes_per_page / 1024,
            parse.bare_us,
            parse.lifeboat_us,
            parse.value_us,
            parse.bare_us * pages / 1e3,
            parse.lifeboat_us * pages / 1e3
        );
    }
    let (ratio_median, ratio_of_medians, ratio_of_mins) = ratios(r);
    println!(
        "ratio (b)/(a): median of per-pair ratios {ratio_median:.3}, of medians {ratio_of_medians:.3}, of minimums {ratio_of_mins:.3} (goal <= {RATIO_GOAL})"
    );
}

fn ratios(r: &SizeResult) -> (f64, f64, f64) {
    let mut per_round: Vec<f64> =
        r.bare.iter().zip(&r.lifeboat).map(|(a, b)| b.wall.as_secs_f64() / a.wall.as_secs_f64()).collect();
    let mut a: Vec<f64> = r.bare.iter().map(|s| s.wall.as_secs_f64()).collect();
    let mut b: Vec<f64> = r.lifeboat.iter().map(|s| s.wall.as_secs_f64()).collect();
    (median(&mut per_round), median(&mut b) / median(&mut a), min(&b) / min(&a))
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn peak(runs: &[&SyncRun]) -> Option<i64> {
    runs.iter().map(|run| run.max_rss_kib).max()
}

fn main() {
    if let Err(err) = run() {
        eprintln!("sync_listing: error: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let accounts: usize = env_number("LIFEBOAT_BENCH_ACCOUNTS", 10_000);
    let small: usize = env_number("LIFEBOAT_BENCH_SMALL_ACCOUNTS", (accounts / 10).max(1));
    let page_size: u32 = env_number("LIFEBOAT_BENCH_PAGE_SIZE", 500);
    let rounds: usize = env_number("LIFEBOAT_BENCH_ROUNDS", 5).max(2);
    let concurrency: usize = env_number("LIFEBOAT_BENCH_CREATE_CONCURRENCY", 8).max(1);
    let passwords = env_number::<u8>("LIFEBOAT_BENCH_PASSWORDS", 0) != 0;
    let pairs: usize = env_number("LIFEBOAT_BENCH_PAIRS", 4).max(1);
    if page_size == 0 {
        return Err("LIFEBOAT_BENCH_PAGE_SIZE must be at least 1".into());
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::var_os("LIFEBOAT_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lifeboat")));
    let keep_dir = std::env::var_os("LIFEBOAT_BENCH_SYNAPSE_DIR")
        .filter(|dir| !dir.is_empty())
        .map(|dir| std::path::absolute(PathBuf::from(dir)))
        .transpose()?;
    let python = synapse_python(&repo)?;
    let settings = Settings { repo, python, binary, page_size, concurrency, pairs, passwords, keep_dir };
    println!(
        "sync_listing benchmark: {accounts} accounts (and {small} for the memory comparison), page size {page_size}, {rounds} rounds; binary {}",
        settings.binary.display()
    );

    // The small size first: its syncs give the memory baseline.
    let small_result = bench_size(&settings, small, rounds.min(3))?;
    let large_result = bench_size(&settings, accounts, rounds)?;

    println!();
    println!(
        "sync_listing results (page size {page_size}; wall times in seconds; CPU is user+system; RSS from wait4 ru_maxrss)"
    );
    print_size(&small_result);
    print_size(&large_result);

    println!();
    println!("== summary ==");
    let (ratio, _, _) = ratios(&large_result);
    println!(
        "listing overhead at {accounts} accounts: lifeboat/bare = {ratio:.3} (median of per-pair ratios; goal <= {RATIO_GOAL}: {})",
        if ratio <= RATIO_GOAL { "met" } else { "NOT MET" }
    );
    let mut bare: Vec<f64> = large_result.bare.iter().map(|s| s.wall.as_secs_f64()).collect();
    let mut warm: Vec<f64> = large_result.warm.iter().map(|s| s.wall.as_secs_f64()).collect();
    let (bare, warm) = (median(&mut bare), median(&mut warm));
    println!(
        "warm sync at {accounts} accounts: median {warm:.3} s = {:.1}x the bare listing ({bare:.3} s)",
        warm / bare
    );
    let warm_small = peak(&small_result.warm.iter().collect::<Vec<_>>());
    let warm_large = peak(&large_result.warm.iter().collect::<Vec<_>>());
    let cold_small = small_result.cold.as_ref().map(|run| run.max_rss_kib);
    let cold_large = large_result.cold.as_ref().map(|run| run.max_rss_kib);
    for (what, at_small, at_large) in [("warm sync", warm_small, warm_large), ("cold sync", cold_small, cold_large)] {
        if let (Some(s), Some(l)) = (at_small, at_large) {
            let growth = (l - s) as f64 / s as f64;
            let per_account = (l - s) as f64 * 1024.0 / (accounts as f64 - small as f64);
            println!(
                "peak RSS of {what}: {s} KiB at {small} accounts, {l} KiB at {accounts} accounts: {:+.1}% for {:.0}x the accounts ({:+.1} MiB, {per_account:+.0} B per extra account){}",
                growth * 100.0,
                accounts as f64 / small as f64,
                (l - s) as f64 / 1024.0,
                if growth.abs() <= 0.10 { ": flat" } else { "" }
            );
        }
    }
    let failed = small_result
        .cold
        .iter()
        .chain(&small_result.warm)
        .chain(large_result.cold.iter())
        .chain(&large_result.warm)
        .filter(|run| !run.ok)
        .count();
    if failed > 0 {
        println!("{failed} sync runs FAILED (see the stderr tails above)");
        std::process::exit(1);
    }
    Ok(())
}
