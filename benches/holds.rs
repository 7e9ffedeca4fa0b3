//! Benchmark: holding lost IDs after a wipe, against a real Synapse
//! (tools/synapse_harness.py), compared in the same run with a bare loop of
//! the same admin calls; and the whole way from the wipe to every lost ID
//! held and notified by email.
//!
//! Run with `cargo bench --bench holds` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_HOLD_ACCOUNTS   accounts lost in the wipe (default 2000;
//!                                  at most 99999)
//!   LIFEBOAT_BENCH_ROUNDS          wipe-hold-notify rounds (default 2)
//!   LIFEBOAT_BENCH_SINK            postfix (default) or aiosmtpd, the SMTP sink
//!   LIFEBOAT_BENCH_POSTFIX_DIR     where Debian's postfix .deb is extracted
//!                                  (default target/bench-tools/postfix,
//!                                  fetched with `apt-get download postfix`)
//!   (see benches/support/smtp_sink.rs for the last two)
//!
//! Setup: N accounts `hold-00000..`, each with a display name and an email,
//! inserted as rows into Synapse's database (benches/support/fill.rs: the
//! admin API would take about 25 minutes for 10,000), then synced into a
//! fresh SQLite registry (emails imported). A local SMTP sink
//! (benches/support/smtp_sink.rs) takes the notices. Each round wipes
//! Synapse and then does what `lifeboat incident open` and `lifeboat notify
//! ID --yes` do, each step timed:
//!   1. recovered and synced: lifeboat's account recovered through the
//!      shared secret (`campaign::admin_client_recovering`), then a sync
//!      (everyone missing);
//!   2. the incident opened for the missing accounts (`Registry::open_incident`,
//!      scope `missing`, as `campaign::open_incident` does after its sync);
//!   3. holds: `holds::hold_lost_ids`, two admin calls per account (create;
//!      lock with the emails), 8 accounts at a time, admins first, each hold
//!      recorded in the registry;
//!   4. notify, and beside it the display names restored
//!      (`holds::restore_held_names`, one call per account), as serve's
//!      watcher restores them after its alert while an admin sends the
//!      notices:
//!      accounts at a time, each hold recorded in the registry;
//!   4. notify: `campaign::run_campaign` as `lifeboat notify ID --yes` runs
//!      it: a registration token per person created in Synapse, the email
//!      deliveries planned and sent to the sink (8 SMTP connections), the
//!      DM sender started (no DMs: held accounts get none).
//!
//! Then Synapse is wiped again (both sides start from an empty server) and
//! the bare loop runs: for N fresh IDs, `PUT /_synapse/admin/v2/users/<id>`
//! with `{}`, a lookup of who has its address, then the PUT with
//! `{locked, threepids}` (what a hold sends), then a
//! pass of a lookup (still locked?) and `{displayname}`, 8 accounts at a
//! time, nothing recorded
//! anywhere. The ratio holds / the bare loop's holds is the goal (≤ 1.2);
//! "wipe → all held and notified" is 1 + 2 + 3 + 4 (the names beside 4 and
//! the bare loop left out), the goal under 5 minutes at 10,000. The round's
//! incident is resolved in the registry at its end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::campaign::{CampaignOptions, admin_client_recovering, run_campaign};
use lifeboat::config::Config;
use lifeboat::holds::{HOLD_CONCURRENCY, hold_lost_ids, holds_wanted, restore_held_names};
use lifeboat::notify::NotifyProgress;
use lifeboat::registry::{Actor, IncidentScope, Registry};
use lifeboat::sync::{Quiet, SyncOptions, sync};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[path = "support/common.rs"]
mod common;
// Each bench uses part of it.
#[allow(dead_code)]
#[path = "support/fill.rs"]
mod fill;
#[allow(dead_code)]
#[path = "support/smtp_sink.rs"]
mod smtp_sink;
#[allow(dead_code)]
#[path = "support/synapse.rs"]
mod synapse;
use common::{env_number, http, median};
use synapse::{Harness, Info, lifeboat_config_with, synapse_python};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const RATIO_GOAL: f64 = 1.2;
/// Wipe → every one of 10,000 IDs held and notified (issue 16).
const WHOLE_GOAL_S: f64 = 300.0;

const TITLE: &str = "Homeserver database lost";
const POSTMORTEM: &str = "\
# The homeserver's database was lost

Last night the server's database could not be recovered after a disk
failure, and it was started again empty. Your account and its history on
this server are gone.

Your user ID is **held for you**: nobody else can register it. Use the
registration token below (or the link, where there is one) to take it back,
set a new password, and ask your contacts to invite you to your rooms again.
Encrypted history comes back only from your own key backup.

We are sorry. Questions: reply to this email.
";

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

/// The bare loop's two passes.
struct Bare {
    holds: Duration,
    names: Duration,
}

/// (a) The same calls holds make, on fresh IDs, with nothing recorded: the
/// two calls of each hold, then the display names.
async fn bare_loop(info: &Info, token: &str, round: usize, count: usize) -> Result<Bare> {
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
                // As lifeboat does: who has the address now (nobody: 404).
                let address = format!("bare{round}-{n:05}@example.org");
                let url = format!("{}/_synapse/admin/v1/threepid/email/users/{address}", info.url);
                let owner = http.get(url).bearer_auth(token).send().await?.status();
                if owner != 404 {
                    return Err(format!("{address}: {owner} from the owner lookup").into());
                }
                let lock = json!({
                    "locked": true,
                    "threepids": [{"medium": "email", "address": address}],
                });
                put_user(&http, info, token, &id, &lock).await.map(|_| ())
            }
        })
        .buffer_unordered(HOLD_CONCURRENCY);
    while let Some(result) = done.next().await {
        result?;
    }
    let holds = started.elapsed();
    let started = Instant::now();
    let mut done = futures::stream::iter(0..count)
        .map(|n| {
            let (http, id) = (http.clone(), user_id(info, &format!("bare{round}"), n));
            async move {
                // As lifeboat does: the account looked up first (still locked?).
                let url = format!("{}/_synapse/admin/v2/users/{id}", info.url);
                let details: serde_json::Value =
                    http.get(url).bearer_auth(token).send().await?.error_for_status()?.json().await?;
                if details["locked"] != true {
                    return Err(format!("{id} is not locked").into());
                }
                put_user(&http, info, token, &id, &json!({"displayname": format!("Person {n}")})).await.map(|_| ())
            }
        })
        .buffer_unordered(HOLD_CONCURRENCY);
    while let Some(result) = done.next().await {
        result?;
    }
    Ok(Bare { holds, names: started.elapsed() })
}

/// Notes from the notify run (recovering, no DMs, ...) go to stderr.
struct Notes;

impl NotifyProgress for Notes {
    fn note(&self, text: &str) {
        eprintln!("  note: {text}");
    }
}

/// The timed steps of lifeboat's part of one round.
struct Steps {
    opened: Duration,
    holds: Duration,
    notify: Duration,
    /// From the end of the holds, beside the notices.
    names: Duration,
    emails: i64,
    tokens: u64,
}

/// Steps 2-4: the incident opened, the lost IDs held, the notices sent.
async fn lifeboat_turn(
    config: &Config,
    registry: &Registry,
    client: &lifeboat::synapse::SynapseClient,
    round: usize,
    count: usize,
) -> Result<Steps> {
    let actor = Actor::cli();
    let started = Instant::now();
    let (incident, affected) = registry.open_incident(TITLE, POSTMORTEM, IncidentScope::Missing, true, &actor).await?;
    let opened = started.elapsed();
    // Every account and the harness's own admin (lifeboat's own account,
    // made again by the recovery, is lifeboat's, not a stranger's).
    if affected != count as i64 + 1 {
        return Err(format!("round {round}: the incident affects {affected} accounts, expected {}", count + 1).into());
    }
    let started = Instant::now();
    let report = hold_lost_ids(config, registry, client, &actor, false, &|_, _| {}, &CancellationToken::new()).await?;
    let holds = started.elapsed();
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
    config.email.as_ref().ok_or("no [email] in the bench's config")?;
    let started = Instant::now();
    let devices = lifeboat::dm::Devices::default();
    let options = CampaignOptions {
        actor: actor.clone(),
        plan_new: true,
        retry_failed: false,
        progress: &Notes,
        devices: &devices,
        mailer: None,
    };
    let ((sent, notify), (names, names_took)) = tokio::join!(
        async {
            let sent = run_campaign(config, registry, &incident, options).await;
            (sent, started.elapsed())
        },
        async {
            let names = restore_held_names(registry, client, &|_, _| {}, &CancellationToken::new()).await;
            (names, started.elapsed())
        }
    );
    let sent = sent?;
    match names? {
        // Every account's (the harness's admin may have none).
        Some(names) if names.restored >= count as u64 && names.failed == 0 => {}
        other => return Err(format!("round {round}: display names restored: {other:?}").into()),
    }
    // One email per account (the harness's admin has none).
    if sent.counts.sent != count as i64 || sent.unfinished() > 0 {
        return Err(format!("round {round}: notify ended with {:?}, errors {:?}", sent.counts, sent.errors).into());
    }
    registry.resolve_incident(incident.id, &actor).await?;
    Ok(Steps { opened, holds, notify, names: names_took, emails: sent.counts.sent, tokens: sent.tokens_created })
}

#[tokio::main]
async fn main() -> Result<()> {
    let count = env_number("LIFEBOAT_BENCH_HOLD_ACCOUNTS", 2000);
    let rounds = env_number("LIFEBOAT_BENCH_ROUNDS", 2);
    if count == 0 || count > 99_999 || rounds == 0 {
        return Err("LIFEBOAT_BENCH_HOLD_ACCOUNTS must be 1 to 99999 and LIFEBOAT_BENCH_ROUNDS at least 1".into());
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = synapse_python(&repo)?;
    let work = tempfile::Builder::new().prefix("lifeboat-bench-holds-").tempdir()?;
    let dir = work.path().join("synapse");

    let setup = Instant::now();
    fill::fill(&python, &repo, &dir, &fill::SynapseDb::Sqlite, count, "'hold-' || printf('%05d', i)").await?;
    println!("holds: filled Synapse with {count} accounts in {:.1} s", setup.elapsed().as_secs_f64());
    let mut harness = Harness::start(&python, &repo, &dir)?;
    let info = harness.info.clone();
    println!("holds: {count} accounts on Synapse at {}, {rounds} rounds", info.url);
    let sink = smtp_sink::start_sink(&repo, work.path())?;
    println!("holds: notices go to {} on 127.0.0.1:{}", sink.name, sink.port);
    let email = format!(
        "\n[email]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"Lifeboat <lifeboat@bench.test>\"\n",
        sink.port
    );
    let config = lifeboat_config_with(&info, &work.path().join("registry.db"), work.path(), 2000, &email)?;
    if !holds_wanted(&config, true) {
        return Err("the bench's config does not hold lost IDs at an incident".into());
    }
    let registry = Registry::connect(&config.registry.url).await?;
    let actor = Actor::cli();
    let client = lifeboat::synapse::SynapseClient::from_config(&config.homeserver);
    let started = Instant::now();
    let synced = sync(&registry, &client, &SyncOptions::from_config(&config), &actor, &Quiet).await?;
    println!("holds: first sync {:.1} s ({} emails imported)", started.elapsed().as_secs_f64(), synced.emails_imported);
    if synced.emails_imported != count as u64 {
        return Err(format!("the first sync imported {} emails, expected {count}", synced.emails_imported).into());
    }

    let (mut ours, mut bare, mut whole, mut notify) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut names_ours, mut names_bare, mut whole_names) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let wiped = Instant::now();
        harness.command("wipe")?;
        let client = admin_client_recovering(&config, &registry, &actor, &Notes).await?;
        sync(&registry, &client, &SyncOptions::from_config(&config), &actor, &Quiet).await?;
        // Wipe → recovered and synced: what `incident open` does before opening.
        let prepared = wiped.elapsed();
        let steps = lifeboat_turn(&config, &registry, &client, round, count).await?;
        // The bare loop on a Synapse wiped again, so that it starts from the
        // same empty server as lifeboat's holds did: run second on one
        // holding N more accounts, either side came out 20-40% slower.
        harness.command("wipe")?;
        admin_client_recovering(&config, &registry, &actor, &Notes).await?;
        let token = client_token(&config, &registry).await?;
        let timed_bare = bare_loop(&info, &token, round, count).await?;
        let held = prepared + steps.opened + steps.holds;
        let total = held + steps.notify;
        let total_names = held + steps.notify.max(steps.names);
        // Per account: lifeboat also held the harness's admin.
        let ours_each = steps.holds.as_secs_f64() / (count + 1) as f64;
        let bare_each = timed_bare.holds.as_secs_f64() / count as f64;
        println!(
            "  round {round}: wipe → recovered and synced {:.1} s; incident opened {:.2} s; \
             holds {:.1} s ({:.0} holds/s), bare loop {:.1} s ({:.0}/s), ratio {:.3}; \
             then notify {:.1} s ({} tokens created, {} emails, {:.0} emails/s) beside the display names {:.1} s \
             (bare loop alone {:.1} s); wipe → all held {:.1} s, and notified {:.1} s, names restored too {:.1} s",
            prepared.as_secs_f64(),
            steps.opened.as_secs_f64(),
            steps.holds.as_secs_f64(),
            1.0 / ours_each,
            timed_bare.holds.as_secs_f64(),
            1.0 / bare_each,
            ours_each / bare_each,
            steps.notify.as_secs_f64(),
            steps.tokens,
            steps.emails,
            steps.emails as f64 / steps.notify.as_secs_f64(),
            steps.names.as_secs_f64(),
            timed_bare.names.as_secs_f64(),
            held.as_secs_f64(),
            total.as_secs_f64(),
            total_names.as_secs_f64()
        );
        ours.push(ours_each);
        bare.push(bare_each);
        whole.push(total.as_secs_f64());
        notify.push(steps.notify.as_secs_f64());
        names_ours.push(steps.names.as_secs_f64());
        names_bare.push(timed_bare.names.as_secs_f64());
        whole_names.push(total_names.as_secs_f64());
    }
    let ratios: Vec<f64> = ours.iter().zip(&bare).map(|(ours, bare)| ours / bare).collect();
    let ratio = median(&ratios);
    let list =
        |values: &[f64], digits: usize| values.iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(", ");
    println!(
        "holds: {count} lost IDs; lifeboat {:.0} holds/s, bare loop {:.0}/s; ratio per round {} (median {ratio:.3}, goal <= {RATIO_GOAL}: {})",
        1.0 / median(&ours),
        1.0 / median(&bare),
        list(&ratios, 3),
        if ratio <= RATIO_GOAL { "met" } else { "missed" }
    );
    let worst = whole.iter().copied().fold(0.0, f64::max);
    println!(
        "  display names beside the notices: {} s (the bare loop's names alone: {} s); wipe → names restored too: {} s",
        list(&names_ours, 1),
        list(&names_bare, 1),
        list(&whole_names, 1)
    );
    println!(
        "  wipe → every ID held and notified (recovery, sync, opening, holds, notify; per round): {} s; notify step {} s{}",
        list(&whole, 1),
        list(&notify, 1),
        if count == 10_000 {
            format!(
                " (goal < {WHOLE_GOAL_S:.0} s at 10,000: {})",
                if worst < WHOLE_GOAL_S { "met in every round" } else { "missed" }
            )
        } else {
            String::new()
        }
    );
    drop(registry);
    harness.stop();
    drop(sink);
    Ok(())
}

/// The recovered admin token, as the bare loop needs it.
async fn client_token(config: &Config, registry: &Registry) -> Result<String> {
    use secrecy::ExposeSecret;
    let service = lifeboat::recover::service_user_id(config);
    let credential = registry.service_credential(&service).await?.ok_or("no recovered token")?;
    Ok(credential.access_token.expose_secret().to_owned())
}
