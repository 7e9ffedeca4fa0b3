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
//!   LIFEBOAT_BENCH_ROOMS               rooms for the room registry's part (default 5000;
//!                                      0: skip it)
//!   LIFEBOAT_BENCH_ROOM_ACCOUNTS       accounts on the rooms' Synapse (default ACCOUNTS)
//!   LIFEBOAT_BENCH_ROOM_CREATORS       accounts that create the rooms (default 8)
//!   LIFEBOAT_BENCH_ROOM_CONCURRENCY    rooms set up at once (default 8)
//!   LIFEBOAT_BENCH_ROOM_MAX_MEMBERS    local members per room: 1..=this (default 5)
//!   LIFEBOAT_BENCH_ROOM_CHANGES        rooms changed before the "changed" syncs (default 100)
//!   LIFEBOAT_BENCH_ROOM_WARM           warm syncs in the room part (default 3)
//!   LIFEBOAT_BENCH_ONLY_ROOMS          1: skip the account-only sizes
//!
//! Per size: start Synapse, make sure accounts bench-000000.. exist, then in
//! rounds (a) page through GET /_synapse/admin/v2/users with a plain reqwest
//! loop, (b) drain lifeboat's `SynapseClient::pages`, (c) run
//! `lifeboat --config FILE sync --json` as a child process on a fresh
//! registry (the first run is cold: it imports every account's emails; the
//! later ones are warm) and read its peak RSS from wait4.
//!
//! Then the room registry's part, on a Synapse of its own with ROOM_ACCOUNTS
//! accounts and ROOMS rooms: (d) `lifeboat sync` cold (every room's state
//! read), warm (nothing changed: only the listing), after CHANGES topics
//! changed and after CHANGES rooms' members changed; (e) the room part alone
//! (`rooms::sync_rooms` in this process, on the same registry) warm, cold and
//! changed, and a timed copy of its steps.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::registry::{Registry, RoomDetails, RoomRecord};
use lifeboat::rooms::RoomSyncSummary;
use lifeboat::synapse::SynapseClient;
use secrecy::SecretString;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// (b)/(a) at or below this is the goal.
const RATIO_GOAL: f64 = 1.1;

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
use synapse::{BarePage, Harness, Info, LISTING_QUERY, bare_listing, synapse_python};

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

fn bare_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a plain reqwest client builds")
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

// ---- rooms: setup on the bench Synapse -------------------------------------------

/// The room part's sizes and knobs (LIFEBOAT_BENCH_ROOM*).
#[derive(Clone)]
struct RoomSettings {
    rooms: usize,
    /// Accounts on the rooms' Synapse (its own server, so the account-only
    /// figures above stay on servers without rooms).
    accounts: usize,
    /// Accounts bench-000000 .. bench-<creators-1> create the rooms (round
    /// robin), each with its own access token.
    creators: usize,
    /// Rooms set up at once (each: create, then its joins in order).
    concurrency: usize,
    /// Each room gets 1..=max_members local members, its creator included.
    max_members: usize,
    /// Rooms touched for the "changed" syncs.
    changes: usize,
    /// Warm syncs (child process) and warm in-process room syncs.
    warm_runs: usize,
}

/// splitmix64: a fixed, well-mixed choice of members per room.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn room_name(index: usize) -> String {
    format!("bench-room-{index:05}")
}

/// The account that joins and leaves rooms between syncs: right after the
/// creators, never a planned member.
fn changer_index(rs: &RoomSettings) -> usize {
    rs.creators
}

fn may_be_member(index: usize, rs: &RoomSettings) -> bool {
    index > changer_index(rs) && extra_state(index).is_none()
}

/// Room `r`'s planned local members (account indices): its creator first,
/// then 0..max_members-1 others drawn from the whole account range.
fn room_plan(r: usize, rs: &RoomSettings) -> Vec<usize> {
    let count = 1 + (mix(r as u64) % rs.max_members as u64) as usize;
    let mut members = vec![r % rs.creators];
    let mut draw = 0u64;
    while members.len() < count {
        draw += 1;
        let candidate = (mix(((r as u64) << 20) ^ draw) % rs.accounts as u64) as usize;
        if may_be_member(candidate, rs) && !members.contains(&candidate) {
            members.push(candidate);
        }
    }
    members
}

fn user_id(info: &Info, index: usize) -> String {
    format!("@{}:{}", localpart(index), info.server_name)
}

fn enc(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// One JSON request, retried (3 times, backing off) on 5xx and network
/// errors like the account creation above.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut attempt = 0;
    loop {
        let mut request = http.request(method.clone(), url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(response.json().await?),
            Ok(response) if attempt < 3 && response.status().is_server_error() => {}
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(format!("{method} {url}: {status} {text}").into());
            }
            Err(err) if attempt < 3 => eprintln!("sync_listing: retrying {method} {url}: {err}"),
            Err(err) => return Err(err.into()),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
    }
}

/// A room as the admin listing shows it (only what the setup needs).
struct BenchRoom {
    room_id: String,
    name: Option<String>,
    joined_local: i64,
}

/// The whole admin room listing, and Synapse's `total_rooms`.
async fn list_bench_rooms(http: &reqwest::Client, info: &Info) -> Result<(Vec<BenchRoom>, i64)> {
    let mut rooms = Vec::new();
    let mut from = 0i64;
    let mut total = 0;
    loop {
        let url = format!("{}/_synapse/admin/v1/rooms?limit=500&from={from}", info.url);
        let page = call(http, reqwest::Method::GET, &url, &info.admin_token, None).await?;
        total = page["total_rooms"].as_i64().unwrap_or(total);
        for room in page["rooms"].as_array().map(Vec::as_slice).unwrap_or_default() {
            rooms.push(BenchRoom {
                room_id: room["room_id"].as_str().unwrap_or_default().to_owned(),
                name: room["name"].as_str().map(str::to_owned),
                joined_local: room["joined_local_members"].as_i64().unwrap_or(0),
            });
        }
        match page["next_batch"].as_i64() {
            Some(next) if next > from => from = next,
            _ => return Ok((rooms, total)),
        }
    }
}

/// An access token for a local account (admin "login as user").
async fn login_as(http: &reqwest::Client, info: &Info, user: &str) -> Result<String> {
    let url = format!("{}/_synapse/admin/v1/users/{}/login", info.url, enc(user));
    let body = call(http, reqwest::Method::POST, &url, &info.admin_token, Some(&serde_json::json!({}))).await?;
    Ok(body["access_token"].as_str().ok_or("login as a user gave no access_token")?.to_owned())
}

/// The rooms set up for the bench, by room index.
struct RoomSetup {
    /// Room IDs by room index.
    ids: Vec<String>,
    /// Planned local memberships over all rooms (creators included).
    memberships: usize,
    /// Rooms Synapse lists in all (the bench's, plus any left over).
    total: i64,
    created: usize,
    joins: usize,
    setup_time: Duration,
    /// Access tokens of the creators (for the topic changes) and of the
    /// changer account.
    creator_tokens: Vec<String>,
    changer_token: String,
}

/// Makes sure rooms bench-room-00000 .. exist with their planned members:
/// a room missing from the listing is created (public_chat, a name, a
/// topic, every 10th an alias) by its creator, and its other members join
/// through the admin API; a room listed with fewer local members than
/// planned gets its joins again (joining twice is a no-op in Synapse).
async fn ensure_rooms(info: &Info, rs: &RoomSettings) -> Result<RoomSetup> {
    let http = bare_client();
    let (listed, _) = list_bench_rooms(&http, info).await?;
    let mut by_name: HashMap<String, &BenchRoom> = HashMap::new();
    for room in &listed {
        if let Some(name) = &room.name {
            by_name.entry(name.clone()).or_insert(room);
        }
    }
    let plans: Vec<Vec<usize>> = (0..rs.rooms).map(|r| room_plan(r, rs)).collect();
    let memberships = plans.iter().map(Vec::len).sum();
    let todo: Vec<(usize, Option<String>)> = (0..rs.rooms)
        .filter_map(|r| match by_name.get(&room_name(r)) {
            None => Some((r, None)),
            Some(room) if (room.joined_local as usize) < plans[r].len() => Some((r, Some(room.room_id.clone()))),
            Some(_) => None,
        })
        .collect();
    let mut creator_tokens = Vec::new();
    for creator in 0..rs.creators {
        creator_tokens.push(login_as(&http, info, &user_id(info, creator)).await?);
    }
    let changer_token = login_as(&http, info, &user_id(info, changer_index(rs))).await?;
    let started = Instant::now();
    let (mut created, mut joins) = (0, 0);
    if todo.is_empty() {
        eprintln!("sync_listing: all {} rooms already exist with their members", rs.rooms);
    } else {
        let to_create = todo.iter().filter(|(_, id)| id.is_none()).count();
        eprintln!(
            "sync_listing: setting up {} rooms ({to_create} to create, {} to complete; {} exist), {} at a time, {} creators",
            todo.len(),
            todo.len() - to_create,
            rs.rooms - todo.len(),
            rs.concurrency,
            rs.creators
        );
        let total = todo.len();
        let mut last_report = Instant::now();
        let mut done = 0;
        let mut results = futures::stream::iter(todo)
            .map(|(r, existing)| {
                let (http, plan, token) = (&http, &plans[r], &creator_tokens[r % rs.creators]);
                async move {
                    let (room_id, made) = match existing {
                        Some(room_id) => (room_id, 0),
                        None => {
                            let mut body = serde_json::json!({
                                "preset": "public_chat",
                                "name": room_name(r),
                                "topic": format!("Topic of bench room {r}"),
                            });
                            if r % 10 == 0 {
                                body["room_alias_name"] = serde_json::json!(room_name(r));
                            }
                            let url = format!("{}/_matrix/client/v3/createRoom", info.url);
                            let answer = call(http, reqwest::Method::POST, &url, token, Some(&body)).await?;
                            let room_id = answer["room_id"].as_str().ok_or("createRoom gave no room_id")?.to_owned();
                            (room_id, 1)
                        }
                    };
                    let url = format!("{}/_synapse/admin/v1/join/{}", info.url, enc(&room_id));
                    for &member in &plan[1..] {
                        let body = serde_json::json!({"user_id": user_id(info, member)});
                        call(http, reqwest::Method::POST, &url, &info.admin_token, Some(&body)).await?;
                    }
                    Ok::<_, BoxError>((made, plan.len() - 1))
                }
            })
            .buffer_unordered(rs.concurrency);
        while let Some(result) = results.next().await {
            let (made, joined) = result?;
            created += made;
            joins += joined;
            done += 1;
            if last_report.elapsed() >= Duration::from_secs(5) || done == total {
                last_report = Instant::now();
                let elapsed = started.elapsed().as_secs_f64();
                let rate = done as f64 / elapsed.max(1e-9);
                eprintln!(
                    "sync_listing: set up {done}/{total} rooms ({created} created, {joins} joins) in {elapsed:.0} s ({rate:.1} rooms/s, about {:.0} s left)",
                    (total - done) as f64 / rate.max(1e-9)
                );
            }
        }
    }
    let setup_time = started.elapsed();
    // Synapse's room statistics (what the listing reads) follow events in
    // the background: wait until every room shows its planned members.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (listed, total) = list_bench_rooms(&http, info).await?;
        let mut by_name: HashMap<&str, Vec<&BenchRoom>> = HashMap::new();
        for room in &listed {
            by_name.entry(room.name.as_deref().unwrap_or_default()).or_default().push(room);
        }
        let mut ids = Vec::with_capacity(rs.rooms);
        let mut short = 0;
        for (r, plan) in plans.iter().enumerate() {
            match by_name.get(room_name(r).as_str()).map(Vec::as_slice) {
                Some([room]) => {
                    if (room.joined_local as usize) < plan.len() {
                        short += 1;
                    }
                    ids.push(room.room_id.clone());
                }
                Some(several) if several.len() > 1 => {
                    return Err(format!(
                        "Synapse lists {} rooms named {} (a creation retried?): remove the kept Synapse directory",
                        several.len(),
                        room_name(r)
                    )
                    .into());
                }
                _ => short += 1,
            }
        }
        if short == 0 {
            if total != rs.rooms as i64 {
                eprintln!("sync_listing: Synapse lists {total} rooms, {} of them the bench's", rs.rooms);
            }
            return Ok(RoomSetup {
                ids,
                memberships,
                total,
                created,
                joins,
                setup_time,
                creator_tokens,
                changer_token,
            });
        }
        if Instant::now() >= deadline {
            return Err(format!("{short} rooms are missing or short of members in Synapse's listing").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Rooms touched by the k-th kind of change: `changes` rooms spread evenly,
/// the two kinds on different rooms.
fn changed_rooms(rs: &RoomSettings, kind: usize) -> Vec<usize> {
    let step = (rs.rooms / rs.changes.max(1)).max(1);
    (0..rs.changes.min(rs.rooms)).map(|i| (i * step + kind * step / 2) % rs.rooms).collect()
}

/// Sets a new topic in each changed room (its creator's token). Synapse's
/// `state_events` count stays the same: a topic replaces a topic.
async fn change_topics(info: &Info, rs: &RoomSettings, setup: &RoomSetup) -> Result<usize> {
    let http = bare_client();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let rooms = changed_rooms(rs, 0);
    let count = rooms.len();
    futures::stream::iter(rooms)
        .map(|r| {
            let http = &http;
            async move {
                let url = format!("{}/_matrix/client/v3/rooms/{}/state/m.room.topic", info.url, enc(&setup.ids[r]));
                let body = serde_json::json!({"topic": format!("Topic of bench room {r}, changed at {stamp}")});
                call(http, reqwest::Method::PUT, &url, &setup.creator_tokens[r % rs.creators], Some(&body)).await
            }
        })
        .buffer_unordered(rs.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    // No listing field changes; give Synapse's background work a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(count)
}

/// The changer account joins each changed room it is not in and leaves the
/// ones it is in: every room's joined-local count changes by one, which is
/// what lifeboat's fingerprint sees. Waits until the listing shows it.
async fn toggle_members(info: &Info, rs: &RoomSettings, setup: &RoomSetup) -> Result<usize> {
    let http = bare_client();
    let token = &setup.changer_token;
    let url = format!("{}/_matrix/client/v3/joined_rooms", info.url);
    let joined: HashSet<String> = call(&http, reqwest::Method::GET, &url, token, None).await?["joined_rooms"]
        .as_array()
        .map(|rooms| rooms.iter().filter_map(|room| room.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let rooms = changed_rooms(rs, 1);
    let (listed, _) = list_bench_rooms(&http, info).await?;
    let before: HashMap<&str, i64> = listed.iter().map(|room| (room.room_id.as_str(), room.joined_local)).collect();
    let mut expect: HashMap<String, i64> = HashMap::new();
    for &r in &rooms {
        let id = &setup.ids[r];
        let now = before.get(id.as_str()).copied().unwrap_or(0);
        expect.insert(id.clone(), if joined.contains(id) { now - 1 } else { now + 1 });
    }
    futures::stream::iter(rooms.iter().copied())
        .map(|r| {
            let (http, id) = (&http, &setup.ids[r]);
            let url = if joined.contains(id) {
                format!("{}/_matrix/client/v3/rooms/{}/leave", info.url, enc(id))
            } else {
                format!("{}/_matrix/client/v3/join/{}", info.url, enc(id))
            };
            async move { call(http, reqwest::Method::POST, &url, token, Some(&serde_json::json!({}))).await }
        })
        .buffer_unordered(rs.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (listed, _) = list_bench_rooms(&http, info).await?;
        let pending =
            listed.iter().filter(|room| expect.get(&room.room_id).is_some_and(|&n| n != room.joined_local)).count();
        if pending == 0 {
            return Ok(rooms.len());
        }
        if Instant::now() >= deadline {
            return Err(format!("{pending} rooms' member counts did not change in Synapse's listing").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- rooms: measurements ---------------------------------------------------------

/// One in-process run of the room part, `lifeboat::rooms::sync_rooms`.
struct RoomPart {
    wall: Duration,
    /// CPU seconds of this process (lifeboat's code, reqwest, SQLite).
    own_cpu: f64,
    synapse_cpu: f64,
    summary: RoomSyncSummary,
}

/// The same steps as `sync_rooms`, each timed: the listing, the
/// registry's fingerprints, the state + alias reads (concurrency
/// `rooms::ROOM_CONCURRENCY`), the registry transaction.
struct Breakdown {
    listing: Duration,
    listing_pages: usize,
    fingerprints: Duration,
    reads: Duration,
    read_count: usize,
    /// Sum over rooms of the state read's and the alias read's latency.
    state_latency: Duration,
    alias_latency: Duration,
    reads_synapse_cpu: f64,
    apply: Duration,
    total: Duration,
}

async fn room_part(registry: &Registry, client: &SynapseClient, info: &Info) -> Result<RoomPart> {
    let synapse_before = process_cpu(info.pid).unwrap_or(f64::NAN);
    let cpu_before = own_cpu();
    let started = Instant::now();
    // Unpaced, as an incident's sync reads them: the cost, not the rests.
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let stop = tokio_util::sync::CancellationToken::new();
    let summary = lifeboat::rooms::sync_rooms(registry, client, &info.server_name, week, None, &stop).await?;
    Ok(RoomPart {
        wall: started.elapsed(),
        own_cpu: own_cpu() - cpu_before,
        synapse_cpu: process_cpu(info.pid).unwrap_or(f64::NAN) - synapse_before,
        summary,
    })
}

/// A copy of `rooms::sync_rooms` (src/rooms.rs) with a clock around each
/// step; the figures are checked against the real one's total.
async fn room_breakdown(registry: &Registry, client: &SynapseClient, info: &Info) -> Result<(Breakdown, usize)> {
    let started = Instant::now();
    let mut listed = Vec::new();
    let mut from = 0;
    let mut pages = 0;
    loop {
        let page = client.rooms_page(from, 500).await?;
        pages += 1;
        listed.extend(page.rooms);
        match page.next_batch {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    let listing = started.elapsed();
    let step = Instant::now();
    let known = registry.room_fingerprints().await?;
    let fingerprints = step.elapsed();
    let mut records: Vec<RoomRecord> = listed.into_iter().map(lifeboat::rooms::record_of).collect();
    let changed: Vec<usize> = (0..records.len())
        .filter(|&i| {
            let room = &records[i];
            known.get(&room.room_id) != Some(&(room.state_events, room.joined_local, room.joined_remote))
        })
        .collect();
    let step = Instant::now();
    let synapse_before = process_cpu(info.pid).unwrap_or(f64::NAN);
    let read: Vec<(usize, Duration, Duration, Option<RoomDetails>)> = futures::stream::iter(changed)
        .map(|index| {
            let room_id = records[index].room_id.clone();
            async move {
                let t = Instant::now();
                let state = client.room_state(&room_id).await?;
                let state_time = t.elapsed();
                let t = Instant::now();
                let aliases = client.room_aliases(&room_id).await?;
                let alias_time = t.elapsed();
                let details =
                    state.map(|state| lifeboat::rooms::details_from_state(&state, aliases, &info.server_name));
                Ok::<_, BoxError>((index, state_time, alias_time, details))
            }
        })
        .buffer_unordered(lifeboat::rooms::ROOM_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let reads = step.elapsed();
    let reads_synapse_cpu = process_cpu(info.pid).unwrap_or(f64::NAN) - synapse_before;
    let read_count = read.len();
    let (mut state_latency, mut alias_latency) = (Duration::ZERO, Duration::ZERO);
    for (index, state_time, alias_time, details) in read {
        state_latency += state_time;
        alias_latency += alias_time;
        records[index].details = details;
    }
    let step = Instant::now();
    registry.apply_room_listing(&records).await?;
    let apply = step.elapsed();
    let breakdown = Breakdown {
        listing,
        listing_pages: pages,
        fingerprints,
        reads,
        read_count,
        state_latency,
        alias_latency,
        reads_synapse_cpu,
        apply,
        total: started.elapsed(),
    };
    Ok((breakdown, records.len()))
}

/// Forgets every room (the registry as before its first room sync), so
/// the next room sync is cold again.
async fn forget_rooms(registry: &Registry) -> Result<()> {
    let mut tx = registry.pool().begin().await?;
    sqlx::query("DELETE FROM room_members").execute(&mut *tx).await?;
    sqlx::query("DELETE FROM rooms").execute(&mut *tx).await?;
    sqlx::query("DELETE FROM settings WHERE name = $1")
        .bind(lifeboat::registry::ROOMS_LISTED_SETTING)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `lifeboat rooms list --json`: the rooms the registry holds, checked
/// against Synapse: as many as it lists, each with as many local members
/// as its listing counts. Returns the rooms and memberships counted.
fn check_registry_rooms(binary: &Path, config: &Path, expect: &HashMap<String, i64>) -> Result<(usize, i64)> {
    let output = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["rooms", "list", "--json"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "`lifeboat rooms list --json` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let rooms: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    if rooms.len() != expect.len() {
        return Err(format!("the registry holds {} rooms, Synapse lists {}", rooms.len(), expect.len()).into());
    }
    let mut members = 0;
    for room in &rooms {
        let id = room["room_id"].as_str().unwrap_or_default();
        let state = room["state"].as_str().unwrap_or_default();
        let (known, joined_local) =
            (room["members"].as_i64().unwrap_or(-1), room["joined_local"].as_i64().unwrap_or(-2));
        let Some(&listed) = expect.get(id) else {
            return Err(format!("the registry holds {id}, which Synapse does not list").into());
        };
        if state != "here" || joined_local != listed || known != listed {
            return Err(format!(
                "room {id} in the registry: state {state}, joined_local {joined_local}, members {known}; Synapse lists {listed} local members"
            )
            .into());
        }
        members += known;
    }
    Ok((rooms.len(), members))
}

/// Synapse's listing as room ID → joined local members.
async fn listed_members(info: &Info) -> Result<HashMap<String, i64>> {
    let (listed, total) = list_bench_rooms(&bare_client(), info).await?;
    if listed.len() as i64 != total {
        return Err(format!("Synapse's listing gave {} rooms of {total}", listed.len()).into());
    }
    Ok(listed.into_iter().map(|room| (room.room_id, room.joined_local)).collect())
}

/// Everything measured on the rooms' Synapse.
struct RoomsResult {
    rs: RoomSettings,
    accounts_listed: usize,
    setup_created: usize,
    setup_joins: usize,
    setup_time: Duration,
    memberships: usize,
    total_rooms: i64,
    /// (label, run) for each child sync.
    syncs: Vec<(String, SyncRun)>,
    /// Memberships counted in the registry after the cold sync and at the end.
    registry_members: Vec<i64>,
    parts_warm: Vec<RoomPart>,
    part_cold: Option<RoomPart>,
    part_changed: Option<RoomPart>,
    breakdowns: Vec<(String, Breakdown)>,
}

fn expect_rooms(run: &SyncRun, label: &str, listed: i64, refreshed: Option<u64>) -> Result<()> {
    let Some((l, r, f)) = run.rooms else {
        return Err(format!(
            "sync {label}: no room summary in its --json output{}",
            run.rooms_error.as_deref().map(|e| format!(" (rooms_error: {e})")).unwrap_or_default()
        )
        .into());
    };
    if l as i64 != listed || f != 0 || refreshed.is_some_and(|want| want != r) {
        return Err(format!(
            "sync {label}: rooms listed {l}, refreshed {r}, failed {f}; expected listed {listed}, refreshed {}, failed 0",
            refreshed.map_or("any".to_owned(), |n| n.to_string())
        )
        .into());
    }
    Ok(())
}

fn bench_rooms(settings: &Settings, rs: &RoomSettings) -> Result<RoomsResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let scratch = tempfile::Builder::new().prefix("lifeboat-bench-rooms-").tempdir()?;
    let synapse_dir = match &settings.keep_dir {
        Some(base) => base.join(format!("accounts-{}-rooms-{}", rs.accounts, rs.rooms)),
        None => scratch.path().join("synapse"),
    };
    std::fs::create_dir_all(&synapse_dir)?;
    eprintln!("sync_listing: starting the rooms' Synapse in {}", synapse_dir.display());
    let harness = Harness::start(&settings.python, &settings.repo, &synapse_dir)?;
    let info = harness.info.clone();
    runtime.block_on(ensure_accounts(&info, rs.accounts, settings))?;
    let accounts_listed = runtime.block_on(bare_listing(&bare_client(), &info, settings.page_size, |_| {}))?;
    let setup = runtime.block_on(ensure_rooms(&info, rs))?;
    let mut expect = runtime.block_on(listed_members(&info))?;
    eprintln!(
        "sync_listing: rooms' Synapse: {accounts_listed} accounts, {} rooms, {} local memberships",
        expect.len(),
        expect.values().sum::<i64>()
    );

    let registry_dir = scratch.path().join("registry");
    std::fs::create_dir_all(&registry_dir)?;
    let config = write_config(&registry_dir, &info, settings.page_size)?;
    let total = expect.len() as i64;
    let mut result = RoomsResult {
        rs: rs.clone(),
        accounts_listed,
        setup_created: setup.created,
        setup_joins: setup.joins,
        setup_time: setup.setup_time,
        memberships: setup.memberships,
        total_rooms: setup.total,
        syncs: Vec::new(),
        registry_members: Vec::new(),
        parts_warm: Vec::new(),
        part_cold: None,
        part_changed: None,
        breakdowns: Vec::new(),
    };
    let sync = |label: &str, refreshed: Option<u64>, result: &mut RoomsResult| -> Result<()> {
        let run = run_sync(&settings.binary, &config, scratch.path(), &format!("rooms-{label}"), info.pid)?;
        eprintln!(
            "sync_listing: rooms, sync {label}: {:.2} s, rooms listed/refreshed/failed {}",
            run.wall.as_secs_f64(),
            run.rooms.map_or("?".to_owned(), |(l, r, f)| format!("{l}/{r}/{f}"))
        );
        if !run.ok {
            return Err(format!("`lifeboat sync` ({label}) failed").into());
        }
        expect_rooms(&run, label, total, refreshed)?;
        result.syncs.push((label.to_owned(), run));
        Ok(())
    };

    // (d) `lifeboat sync` as a child process: cold, warm, after changes.
    sync("cold", Some(total as u64), &mut result)?;
    let (_, members) = check_registry_rooms(&settings.binary, &config, &expect)?;
    result.registry_members.push(members);
    for i in 0..rs.warm_runs {
        sync(&format!("warm-{}", i + 1), Some(0), &mut result)?;
    }
    let topics = runtime.block_on(change_topics(&info, rs, &setup))?;
    // Not checked: Synapse's state_events does not move when a topic is
    // replaced (the result says what lifeboat saw).
    sync(&format!("{topics}-topics-changed"), None, &mut result)?;
    let toggled = runtime.block_on(toggle_members(&info, rs, &setup))?;
    sync(&format!("{toggled}-rooms-members-changed"), Some(toggled as u64), &mut result)?;
    expect = runtime.block_on(listed_members(&info))?;
    let (_, members) = check_registry_rooms(&settings.binary, &config, &expect)?;
    result.registry_members.push(members);

    // (e) The room part alone, in this process, on the same registry.
    runtime.block_on(async {
        let registry = Registry::connect(&format!("sqlite://{}", registry_dir.join("lifeboat.db").display())).await?;
        let client = SynapseClient::new(
            url::Url::parse(&info.url)?,
            Some(SecretString::from(info.admin_token.clone())),
            Duration::from_secs(30),
            4,
        );
        for _ in 0..rs.warm_runs.max(1) {
            let part = room_part(&registry, &client, &info).await?;
            check_part(&part, "warm", total, 0)?;
            result.parts_warm.push(part);
        }
        let (breakdown, _) = room_breakdown(&registry, &client, &info).await?;
        result.breakdowns.push(("warm".to_owned(), breakdown));
        forget_rooms(&registry).await?;
        let part = room_part(&registry, &client, &info).await?;
        check_part(&part, "cold", total, total as u64)?;
        result.part_cold = Some(part);
        forget_rooms(&registry).await?;
        let (breakdown, listed) = room_breakdown(&registry, &client, &info).await?;
        if breakdown.read_count != listed {
            return Err(format!("cold breakdown read {} rooms of {listed}", breakdown.read_count).into());
        }
        result.breakdowns.push(("cold".to_owned(), breakdown));
        let toggled = toggle_members(&info, rs, &setup).await?;
        let part = room_part(&registry, &client, &info).await?;
        check_part(&part, "changed", total, toggled as u64)?;
        result.part_changed = Some(part);
        let toggled = toggle_members(&info, rs, &setup).await?;
        let (breakdown, _) = room_breakdown(&registry, &client, &info).await?;
        if breakdown.read_count != toggled {
            return Err(format!("changed breakdown read {} rooms, {toggled} changed", breakdown.read_count).into());
        }
        result.breakdowns.push((format!("{toggled} changed"), breakdown));
        registry.pool().close().await;
        Ok::<_, BoxError>(())
    })?;
    expect = runtime.block_on(listed_members(&info))?;
    let (_, members) = check_registry_rooms(&settings.binary, &config, &expect)?;
    result.registry_members.push(members);
    harness.stop();
    Ok(result)
}

fn check_part(part: &RoomPart, label: &str, listed: i64, refreshed: u64) -> Result<()> {
    let s = &part.summary;
    eprintln!(
        "sync_listing: rooms, in-process sync_rooms {label}: {:.3} s, listed/refreshed/failed {}/{}/{}",
        part.wall.as_secs_f64(),
        s.listed,
        s.refreshed,
        s.failed
    );
    if s.listed as i64 != listed || s.refreshed != refreshed || s.failed != 0 {
        return Err(format!(
            "in-process sync_rooms ({label}): listed {}, refreshed {}, failed {}; expected {listed}, {refreshed}, 0",
            s.listed, s.refreshed, s.failed
        )
        .into());
    }
    Ok(())
}

fn print_rooms(r: &RoomsResult, accounts_only_warm: Option<(usize, f64)>) {
    let rs = &r.rs;
    println!();
    println!(
        "== rooms: {} bench accounts ({} listed), {} rooms (Synapse lists {}), {} planned local memberships (1..={} per room), on a Synapse of their own{} ==",
        rs.accounts,
        r.accounts_listed,
        rs.rooms,
        r.total_rooms,
        r.memberships,
        rs.max_members,
        if r.setup_created + r.setup_joins > 0 {
            format!(
                "; created {} rooms and {} joins in {:.0} s",
                r.setup_created,
                r.setup_joins,
                r.setup_time.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:>8} {:>9} {:>19}",
        "(d) lifeboat sync (child process)", "wall s", "CPU s", "Synapse s", "RSS MiB", "reg. KiB", "rooms l/r/f"
    );
    for (label, run) in &r.syncs {
        println!(
            "{:<44} {:>8.3} {:>9.3} {:>9.3} {:>8.1} {:>9} {:>19}",
            label,
            run.wall.as_secs_f64(),
            run.cpu,
            run.synapse_cpu,
            run.max_rss_kib as f64 / 1024.0,
            run.registry_kib,
            run.rooms.map_or("?".to_owned(), |(l, rf, f)| format!("{l}/{rf}/{f}"))
        );
    }
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:>19}",
        "(e) room part alone (in-process sync_rooms)", "wall s", "CPU s", "Synapse s", "rooms l/r/f"
    );
    let parts = r
        .parts_warm
        .iter()
        .enumerate()
        .map(|(i, part)| (format!("warm-{}", i + 1), part))
        .chain(r.part_cold.iter().map(|part| ("cold".to_owned(), part)))
        .chain(r.part_changed.iter().map(|part| (format!("{} rooms' members changed", rs.changes), part)));
    for (label, part) in parts {
        println!(
            "{:<44} {:>8.3} {:>9.3} {:>9.3} {:>19}",
            label,
            part.wall.as_secs_f64(),
            part.own_cpu,
            part.synapse_cpu,
            format!("{}/{}/{}", part.summary.listed, part.summary.refreshed, part.summary.failed)
        );
    }
    println!("breakdown of the room part (a timed copy of sync_rooms' steps):");
    for (label, b) in &r.breakdowns {
        let per_read = |d: Duration| d.as_secs_f64() * 1e3 / b.read_count.max(1) as f64;
        println!(
            "    {label:<12} total {:.3} s: listing {:.3} s ({} pages), fingerprints {:.3} s, state+alias reads {:.3} s ({} rooms; per room: state {:.1} ms, aliases {:.1} ms latency; Synapse CPU {:.2} s = {:.1} ms/room), apply {:.3} s",
            b.total.as_secs_f64(),
            b.listing.as_secs_f64(),
            b.listing_pages,
            b.fingerprints.as_secs_f64(),
            b.reads.as_secs_f64(),
            b.read_count,
            per_read(b.state_latency),
            per_read(b.alias_latency),
            b.reads_synapse_cpu,
            b.reads_synapse_cpu * 1e3 / b.read_count.max(1) as f64,
            b.apply.as_secs_f64()
        );
    }
    println!(
        "registry memberships counted by `rooms list --json` (after cold, after changes, at the end): {:?}",
        r.registry_members
    );
    // The share of the room part in a whole sync: the in-process room sync
    // against the child's whole sync in the same state.
    let child = |prefix: &str| -> Vec<f64> {
        r.syncs.iter().filter(|(label, _)| label.starts_with(prefix)).map(|(_, run)| run.wall.as_secs_f64()).collect()
    };
    let mut warm_sync = child("warm");
    let warm_sync = median(&mut warm_sync);
    let mut warm_part: Vec<f64> = r.parts_warm.iter().map(|p| p.wall.as_secs_f64()).collect();
    let warm_part = median(&mut warm_part);
    println!(
        "share of the room part: warm {:.3} s of a {:.3} s sync ({:.0}%)",
        warm_part,
        warm_sync,
        100.0 * warm_part / warm_sync
    );
    if let (Some(cold), Some(cold_sync)) = (&r.part_cold, child("cold").first()) {
        println!(
            "                        cold {:.3} s of a {:.3} s sync ({:.0}%)",
            cold.wall.as_secs_f64(),
            cold_sync,
            100.0 * cold.wall.as_secs_f64() / cold_sync
        );
    }
    if let (Some(changed), Some(changed_sync)) =
        (&r.part_changed, r.syncs.iter().find(|(label, _)| label.ends_with("members-changed")))
    {
        println!(
            "                        {} changed {:.3} s of a {:.3} s sync ({:.0}%)",
            rs.changes,
            changed.wall.as_secs_f64(),
            changed_sync.1.wall.as_secs_f64(),
            100.0 * changed.wall.as_secs_f64() / changed_sync.1.wall.as_secs_f64()
        );
    }
    if let Some((accounts, plain)) = accounts_only_warm
        && accounts == rs.accounts
    {
        println!(
            "cross-check: warm sync of {accounts} accounts on a Synapse without rooms {plain:.3} s (median above), with {} rooms {warm_sync:.3} s: +{:.3} s",
            rs.rooms,
            warm_sync - plain
        );
    }
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
    /// The sync's room summary: (listed, refreshed, failed).
    rooms: Option<(u64, u64, u64)>,
    rooms_error: Option<String>,
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
        // lifeboat's own speed, not the pace it keeps for Synapse's sake.
        .arg("--full-speed")
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
        rooms: summary.as_ref().and_then(|s| {
            let room = |name: &str| s.pointer(&format!("/rooms/{name}")).and_then(|v| v.as_u64());
            Some((room("listed")?, room("refreshed")?, room("failed")?))
        }),
        rooms_error: summary.as_ref().and_then(|s| s["rooms_error"].as_str()).map(str::to_owned),
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
    let rs = RoomSettings {
        rooms: env_number("LIFEBOAT_BENCH_ROOMS", 5_000),
        accounts: env_number("LIFEBOAT_BENCH_ROOM_ACCOUNTS", accounts),
        creators: env_number("LIFEBOAT_BENCH_ROOM_CREATORS", 8).max(1),
        concurrency: env_number("LIFEBOAT_BENCH_ROOM_CONCURRENCY", 8).max(1),
        max_members: env_number("LIFEBOAT_BENCH_ROOM_MAX_MEMBERS", 5).max(1),
        changes: env_number("LIFEBOAT_BENCH_ROOM_CHANGES", 100).max(1),
        warm_runs: env_number("LIFEBOAT_BENCH_ROOM_WARM", 3).max(1),
    };
    let only_rooms = env_number::<u8>("LIFEBOAT_BENCH_ONLY_ROOMS", 0) != 0;
    if rs.rooms > 0 && rs.accounts < rs.creators + 1 + 4 * rs.max_members {
        return Err("LIFEBOAT_BENCH_ROOM_ACCOUNTS is too small for the creators and members".into());
    }
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

    if only_rooms {
        if rs.rooms == 0 {
            return Err("LIFEBOAT_BENCH_ONLY_ROOMS=1 with LIFEBOAT_BENCH_ROOMS=0: nothing to do".into());
        }
        let rooms = bench_rooms(&settings, &rs)?;
        println!();
        println!(
            "sync_listing results, room part only (page size {page_size}; wall times in seconds; CPU is user+system)"
        );
        print_rooms(&rooms, None);
        return Ok(());
    }

    // The small size first: its syncs give the memory baseline.
    let small_result = bench_size(&settings, small, rounds.min(3))?;
    let large_result = bench_size(&settings, accounts, rounds)?;
    let rooms_result = if rs.rooms > 0 { Some(bench_rooms(&settings, &rs)?) } else { None };

    println!();
    println!(
        "sync_listing results (page size {page_size}; wall times in seconds; CPU is user+system; RSS from wait4 ru_maxrss)"
    );
    print_size(&small_result);
    print_size(&large_result);
    if let Some(rooms) = &rooms_result {
        let mut warm: Vec<f64> = large_result.warm.iter().map(|s| s.wall.as_secs_f64()).collect();
        print_rooms(rooms, Some((accounts, median(&mut warm))));
    }

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
