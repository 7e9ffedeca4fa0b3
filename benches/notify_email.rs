//! Benchmark: lifeboat's email notify path (`notify::send_deliveries` with
//! `Transport::Email`: claim from the registry, render, SMTP, mark sent)
//! against a minimal SMTP sender written here, both pushing the same notices
//! to the same local SMTP sink in the same run.
//!
//! Run with `cargo bench --bench notify_email` (see benches/README.md).
//! Environment:
//!   LIFEBOAT_BENCH_EMAILS       emails per round (default 10000)
//!   LIFEBOAT_BENCH_ROUNDS       rounds per concurrency, each one lifeboat run and
//!                               one minimal-sender run, alternating which goes
//!                               first (default 3)
//!   LIFEBOAT_BENCH_CONCURRENCY  comma-separated concurrencies = SMTP connections
//!                               (default "8,16"; `lifeboat notify` uses 8)
//!   LIFEBOAT_BENCH_SINK         postfix (default) or aiosmtpd
//!   LIFEBOAT_BENCH_POSTFIX_DIR  a folder Debian's postfix .deb was extracted into
//!                               (default target/bench-tools/postfix, fetched with
//!                               `apt-get download postfix` + `dpkg -x` if absent)
//!   LIFEBOAT_BENCH_PHASES       0 skips the per-phase timing (default 1)
//!   LIFEBOAT_BENCH_ONLY         `lifeboat` runs only lifeboat's rounds (for perf)
//!
//! Data: a SQLite registry (a temporary file) with EMAILS accounts, one email
//! contact each, all marked missing by a second listing, as after a wipe. Each
//! round opens a fresh incident (all accounts affected), gives every account
//! a confirmed notice token (inserted directly: no Synapse here) and plans
//! the deliveries; none of that is timed. Timed:
//!   lifeboat: `send_deliveries(registry, Transport::Email(&mailer), incident, settings, C, progress)`
//!             with `Mailer::from_config(…, C)`, as `lifeboat notify` does;
//!   minimal:  C tokio tasks, one TCP connection each (TCP_NODELAY), EHLO once,
//!             then MAIL FROM / RCPT TO / DATA / body+"." per message, each
//!             step waiting for its reply (four round trips). Its messages are
//!             the same notices rendered and formatted before the clock starts.
//!   minimal, pipelined: the same, but MAIL FROM, RCPT TO and DATA in one
//!             write (RFC 2920, which the sink offers): two round trips.
//!             lifeboat (lettre) pipelines nothing and checks a pooled
//!             connection with NOOP before each message: five.
//! The goal is the floor of issue 18, >= 2,000 msg/s; the ratios to the
//! minimal senders are shown for information (their goal was withdrawn).
//! Both include opening their connections. Before the rounds, one small
//! incident goes through `send_deliveries` to an in-process capture server and
//! its bytes are compared with the minimal sender's for the same deliveries.
//!
//! The sink: Postfix's `smtp-sink` (discards messages; a C program), started
//! and stopped here. If it cannot be had, aiosmtpd (`tools/smtp_sink.py
//! --no-fsync`) is used instead, which is itself the bottleneck near
//! 1,000 messages/s, so the ratio then says little.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lifeboat::config::EmailConfig;
use lifeboat::mail::{Composer, Mailer, OutgoingEmail};
use lifeboat::notify::{NoticeSettings, NotifyProgress, Transport, send_deliveries};
use lifeboat::registry::{Actor, Delivery, Incident, Registry, now_ms};
use lifeboat::synapse::ListedUser;
use rand::Rng;
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use url::Url;

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
async fn build_registry(path: &Path, people: usize) -> Result<Registry> {
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
    Ok(registry)
}

/// Opens an incident covering every missing account, gives each a confirmed
/// notice token, and plans the email deliveries (one per account).
async fn open_incident(registry: &Registry, people: usize) -> Result<Incident> {
    let (incident, affected) = registry.open_incident("Database lost", POSTMORTEM, "missing", &Actor::cli()).await?;
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

/// The incident's deliveries as a run reads them (claims only read).
async fn deliveries_of(registry: &Registry, incident_id: i64) -> Result<Vec<Delivery>> {
    Ok(registry.due_deliveries(incident_id, "email", i64::MAX, (i64::MIN, 0)).await?)
}

/// What `notify` renders the incident's notices with.
fn settings(incident: &Incident) -> Result<NoticeSettings> {
    Ok(NoticeSettings::new(
        SERVER_NAME.to_owned(),
        Url::parse("https://matrix.bench.test")?,
        Some((
            Url::parse("https://lifeboat.bench.test")?,
            SecretString::from("bench-link-signing-key-0123456789abcdef".to_owned()),
        )),
        // The notices carry claim links as in reclaim mode (none here: no ID is held).
        Some(std::time::Duration::from_secs(14 * 24 * 3600)),
        incident,
    ))
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

// ---- the messages, prepared for the minimal sender --------------------------------

/// What `send_deliveries` hands the mailer for one delivery.
fn outgoing(settings: &NoticeSettings, incident: &Incident, delivery: &Delivery) -> Result<OutgoingEmail> {
    Ok(settings.email(incident, delivery)??)
}

/// One message ready for the wire: commands and the dot-stuffed DATA with
/// its terminating ".".
struct Prepared {
    mail_from: Vec<u8>,
    rcpt_to: Vec<u8>,
    /// MAIL FROM, RCPT TO and DATA in one buffer, for the pipelined sender.
    pipelined: Vec<u8>,
    data: Vec<u8>,
    /// The DATA content before dot-stuffing (for the byte check).
    content: Vec<u8>,
    message_id: String,
}

/// What goes between DATA and the final ".", as lettre sends it: the
/// formatted message, which ends with CRLF, and one more CRLF (lettre ends
/// DATA with `\r\n.\r\n` whatever the message ends with).
fn data_content(formatted: &[u8]) -> Result<Vec<u8>> {
    if !formatted.ends_with(b"\r\n") {
        return Err("the composed message does not end with CRLF".into());
    }
    Ok([formatted, b"\r\n"].concat())
}

/// Dot-stuffs the DATA content and appends the terminating ".".
fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    let mut line_start = true;
    for &byte in content {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Renders and formats every delivery of an incident, as the minimal
/// sender's payload.
fn prepare(settings: &NoticeSettings, incident: &Incident, deliveries: &[Delivery]) -> Result<Vec<Prepared>> {
    let composer = Composer::new(&FROM.parse()?);
    deliveries
        .iter()
        .map(|delivery| {
            let email = outgoing(settings, incident, delivery)?;
            let message = composer.compose(&email)?;
            let envelope = message.envelope();
            let sender = envelope.from().ok_or("the envelope names no sender")?;
            let recipient = envelope.to().first().ok_or("the envelope names no recipient")?;
            let content = data_content(&message.formatted())?;
            let (mail_from, rcpt_to) = (format!("MAIL FROM:<{sender}>\r\n"), format!("RCPT TO:<{recipient}>\r\n"));
            Ok(Prepared {
                pipelined: format!("{mail_from}{rcpt_to}DATA\r\n").into_bytes(),
                mail_from: mail_from.into_bytes(),
                rcpt_to: rcpt_to.into_bytes(),
                data: dot_stuff(&content),
                content,
                message_id: email.message_id,
            })
        })
        .collect()
}

// ---- the minimal sender -------------------------------------------------------------

async fn read_reply(reader: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>, line: &mut String) -> Result<u16> {
    loop {
        line.clear();
        if reader.read_line(line).await? == 0 {
            return Err("the sink closed the connection".into());
        }
        let bytes = line.as_bytes();
        if bytes.len() < 4 {
            return Err(format!("bad SMTP reply {line:?}").into());
        }
        let code: u16 = line[..3].parse().map_err(|_| format!("bad SMTP reply {line:?}"))?;
        if bytes[3] != b'-' {
            return Ok(code);
        }
    }
}

async fn expect(
    reader: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
    class: u16,
    step: &str,
) -> Result<()> {
    let code = read_reply(reader, line).await?;
    if code / 100 != class {
        return Err(format!("the sink answered {step} with {line:?}").into());
    }
    Ok(())
}

/// Sends every message over `connections` connections; returns how many
/// the sink accepted. `pipelined`: MAIL, RCPT and DATA in one write.
async fn minimal_send(port: u16, messages: Arc<Vec<Prepared>>, connections: usize, pipelined: bool) -> Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let messages = messages.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (read, mut write) = stream.into_split();
            let mut reader = TokioBufReader::new(read);
            let mut line = String::new();
            expect(&mut reader, &mut line, 2, "the connection").await?;
            write.write_all(b"EHLO minimal.bench.test\r\n").await?;
            expect(&mut reader, &mut line, 2, "EHLO").await?;
            let mut sent = 0usize;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(message) = messages.get(index) else { break };
                if pipelined {
                    write.write_all(&message.pipelined).await?;
                } else {
                    write.write_all(&message.mail_from).await?;
                }
                expect(&mut reader, &mut line, 2, "MAIL FROM").await?;
                if !pipelined {
                    write.write_all(&message.rcpt_to).await?;
                }
                expect(&mut reader, &mut line, 2, "RCPT TO").await?;
                if !pipelined {
                    write.write_all(b"DATA\r\n").await?;
                }
                expect(&mut reader, &mut line, 3, "DATA").await?;
                write.write_all(&message.data).await?;
                expect(&mut reader, &mut line, 2, "the message").await?;
                sent += 1;
            }
            // Not waiting for the 221: the messages are all accepted.
            write.write_all(b"QUIT\r\n").await?;
            Ok::<usize, BoxError>(sent)
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok(sent)
}

// ---- the sink ------------------------------------------------------------------------

struct Sink {
    child: Child,
    /// aiosmtpd's harness stops on EOF.
    stdin: Option<ChildStdin>,
    port: u16,
    name: String,
}

impl Sink {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_quietly(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim())
            .into())
    }
}

/// The folder postfix's .deb is extracted into, fetching it if needed.
fn postfix_dir(repo: &Path) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("LIFEBOAT_BENCH_POSTFIX_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let tools = repo.join("target/bench-tools");
    let root = tools.join("postfix");
    if root.join("usr/sbin/smtp-sink").is_file() {
        return Ok(root);
    }
    let download = tools.join("download");
    std::fs::create_dir_all(&download)?;
    eprintln!(
        "notify_email: no smtp-sink in {}; fetching Debian's postfix package (`apt-get download postfix` in {})",
        root.display(),
        download.display()
    );
    if let Err(first) = run_quietly(Command::new("apt-get").arg("download").arg("postfix").current_dir(&download)) {
        eprintln!("notify_email: {first}\nnotify_email: running `apt-get update` and trying again");
        run_quietly(Command::new("apt-get").arg("update"))?;
        run_quietly(Command::new("apt-get").arg("download").arg("postfix").current_dir(&download))?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("postfix_") && name.ends_with(".deb"))
        })
        .max()
        .ok_or("apt-get download postfix left no postfix_*.deb")?;
    let unpacking = tools.join("postfix.unpacking");
    let _ = std::fs::remove_dir_all(&unpacking);
    eprintln!("notify_email: extracting {} with `dpkg -x` into {}", deb.display(), root.display());
    run_quietly(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacking))?;
    std::fs::rename(&unpacking, &root)?;
    Ok(root)
}

fn start_postfix(repo: &Path) -> Result<Sink> {
    let root = postfix_dir(repo)?;
    let binary = root.join("usr/sbin/smtp-sink");
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port()?;
        let mut command = Command::new(&binary);
        command.env("LD_LIBRARY_PATH", root.join("usr/lib/postfix"));
        if as_root {
            // smtp-sink refuses to run as root without dropping to a user.
            command.arg("-u").arg("root");
        }
        let mut child = command
            .arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                last_error = format!("{} exited ({status})", binary.display());
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Sink {
                    child,
                    stdin: None,
                    port,
                    name: format!("Postfix smtp-sink ({})", binary.display()),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                last_error = format!("{} did not listen on port {port} within 5 s", binary.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(last_error.into())
}

fn start_aiosmtpd(repo: &Path, dir: &Path) -> Result<Sink> {
    eprintln!("notify_email: getting the Synapse venv's python (tools/synapse-venv.sh) for aiosmtpd");
    let output = Command::new(repo.join("tools/synapse-venv.sh")).stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        return Err(format!("tools/synapse-venv.sh failed ({})", output.status).into());
    }
    let python = String::from_utf8(output.stdout)?.trim().to_owned();
    let mut child = Command::new(&python)
        .arg(repo.join("tools/smtp_sink.py"))
        .arg("--dir")
        .arg(dir)
        .arg("--no-fsync")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let info: serde_json::Value =
        serde_json::from_str(&line).map_err(|err| format!("smtp_sink.py printed {line:?}: {err}"))?;
    let port = info["port"].as_u64().ok_or("smtp_sink.py reported no port")? as u16;
    Ok(Sink { child, stdin, port, name: "aiosmtpd (tools/smtp_sink.py --no-fsync)".to_owned() })
}

fn start_sink(repo: &Path, scratch: &Path) -> Result<Sink> {
    let wanted = std::env::var("LIFEBOAT_BENCH_SINK").unwrap_or_default();
    if wanted != "aiosmtpd" {
        match start_postfix(repo) {
            Ok(sink) => return Ok(sink),
            Err(err) if wanted == "postfix" => return Err(err),
            Err(err) => eprintln!(
                "notify_email: WARNING: Postfix smtp-sink is not available ({err}); falling back to aiosmtpd, \
                 which is itself the bottleneck near 1,000 messages/s: the figures below measure it, not lifeboat"
            ),
        }
    }
    start_aiosmtpd(repo, &scratch.join("aiosmtpd"))
}

// ---- a capture server, to check both senders send the same bytes -----------------------

/// Accepts SMTP on a free port and keeps every message (un-dot-stuffed).
async fn capture_server() -> Result<(u16, Arc<Mutex<Vec<Vec<u8>>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let store = captured.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = TokioBufReader::new(read);
                let _ = write.write_all(b"220 capture ESMTP\r\n").await;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let verb = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    let reply: &[u8] = if verb.starts_with("EHLO") {
                        b"250-capture\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
                    } else if verb.starts_with("DATA") {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut message = Vec::new();
                        loop {
                            line.clear();
                            match reader.read_until(b'\n', &mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == b".\r\n" {
                                break;
                            }
                            let body = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                            message.extend_from_slice(body);
                        }
                        store.lock().unwrap().push(message);
                        b"250 2.0.0 captured\r\n"
                    } else if verb.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, captured))
}

/// The message with its Date header dropped and its MIME boundary named
/// BOUNDARY: what is left must be the same for both senders.
fn normalized(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Unfold the header lines, drop Date.
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push_str(line);
            }
        } else {
            lines.push(line.to_owned());
        }
    }
    lines.retain(|line| !line.to_ascii_lowercase().starts_with("date:"));
    let mut joined = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
    if let Some(start) = joined.find("boundary=\"") {
        let rest = &joined[start + 10..];
        if let Some(end) = rest.find('"') {
            let boundary = rest[..end].to_owned();
            joined = joined.replace(&boundary, "BOUNDARY");
        }
    }
    joined
}

fn message_id_of(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let line = text.lines().find(|line| line.to_ascii_lowercase().starts_with("message-id:"))?;
    Some(line[11..].trim().trim_matches(['<', '>']).to_owned())
}

/// `send_deliveries` on a small registry to the capture server, compared with
/// what the minimal sender would send for the same deliveries.
async fn check_same_bytes(scratch: &Path) -> Result<String> {
    const PEOPLE: usize = 5;
    let registry = build_registry(&scratch.join("check.db"), PEOPLE).await?;
    let incident = open_incident(&registry, PEOPLE).await?;
    let settings = settings(&incident)?;
    let prepared = prepare(&settings, &incident, &deliveries_of(&registry, incident.id).await?)?;
    let (port, captured) = capture_server().await?;
    let mailer = mailer(port, 2)?;
    let counts = send_deliveries(&registry, Transport::Email(&mailer), &incident, &settings, 2, &NoProgress).await?;
    mailer.shutdown().await;
    registry.close().await;
    if counts.sent != PEOPLE as i64 {
        return Err(format!("the check incident ended with {counts:?}").into());
    }
    let captured = captured.lock().unwrap().clone();
    let mut sizes = Vec::new();
    for ours in &prepared {
        let theirs = captured
            .iter()
            .find(|message| message_id_of(message).as_deref() == Some(ours.message_id.as_str()))
            .ok_or_else(|| format!("lifeboat sent no message with id {}", ours.message_id))?;
        if normalized(theirs) != normalized(&ours.content) {
            return Err(format!(
                "lifeboat's message {} differs from the minimal sender's beyond Date and the MIME boundary:\n\
                 --- lifeboat ---\n{}\n--- minimal ---\n{}",
                ours.message_id,
                normalized(theirs),
                normalized(&ours.content)
            )
            .into());
        }
        sizes.push((theirs.len(), ours.content.len()));
    }
    let (lifeboat_size, minimal_size) = sizes[0];
    Ok(format!(
        "{PEOPLE} messages from send_deliveries match the minimal sender's byte for byte apart from Date and \
         the MIME boundary ({lifeboat_size} vs {minimal_size} bytes for the first)"
    ))
}

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

/// This process's CPU seconds by thread name (`tokio-rt-worker`,
/// `sqlx-sqlite-worker-N` shortened by Linux to 15 bytes, …): where a
/// run's CPU went.
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // The SQLite workers are numbered; one line for all of them.
        let name =
            if name.starts_with("sqlx-sqlite") { "sqlx-sqlite workers".to_owned() } else { name.trim().to_owned() };
        *by_name.entry(name).or_insert(0.0) += stat_cpu(&dir.join("stat").to_string_lossy());
    }
    by_name
}

// ---- rounds ------------------------------------------------------------------------------

struct Measured {
    rate: f64,
    seconds: f64,
    /// This process's CPU per message, µs.
    cpu_us: f64,
    /// The sink's CPU per message, µs.
    sink_cpu_us: f64,
    /// This process's CPU per message by thread name, µs.
    threads_us: Vec<(String, f64)>,
}

async fn measure<F, Fut>(sink: &Sink, messages: usize, run: F) -> Result<Measured>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let (cpu, sink_cpu, threads) = (own_cpu(), process_cpu(sink.pid()), cpu_by_thread());
    let started = Instant::now();
    let sent = run().await?;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, sink_cpu) = (own_cpu() - cpu, process_cpu(sink.pid()) - sink_cpu);
    let threads_us = cpu_by_thread()
        .into_iter()
        .map(|(name, after)| {
            let spent = after - threads.get(&name).copied().unwrap_or(0.0);
            (name, spent * 1e6 / messages as f64)
        })
        .filter(|(_, us)| *us >= 0.5)
        .collect();
    if sent != messages {
        return Err(format!("{sent} of {messages} messages were accepted").into());
    }
    Ok(Measured {
        rate: messages as f64 / seconds,
        seconds,
        cpu_us: cpu * 1e6 / messages as f64,
        sink_cpu_us: sink_cpu * 1e6 / messages as f64,
        threads_us,
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
        let counts =
            send_deliveries(registry, Transport::Email(&mailer), incident, settings, concurrency, &NoProgress).await?;
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
    let threads: Vec<String> = measured.threads_us.iter().map(|(name, us)| format!("{name} {us:.0} µs")).collect();
    println!("        of which by thread: {}", threads.join(", "));
}

// ---- phases ----------------------------------------------------------------------------------

/// Claims every due email delivery of an incident in batches of `batch`, as
/// `send_deliveries` does; returns them, the number of claims and the time
/// spent claiming. Each batch is marked sent before the next claim
/// (untimed), as in the send loop, so that a claim meets only the rows in
/// flight, not every earlier claim's.
async fn claim_all(registry: &Registry, incident_id: i64, batch: usize) -> Result<(Vec<Delivery>, usize, Duration)> {
    let mut claimed: Vec<Delivery> = Vec::new();
    let (mut claims, mut claiming) = (0, Duration::ZERO);
    loop {
        let after = claimed.last().map_or((i64::MIN, 0), |last| (last.next_attempt_at, last.id));
        let started = Instant::now();
        let found = registry.due_deliveries(incident_id, "email", batch as i64, after).await?;
        claiming += started.elapsed();
        if found.is_empty() {
            return Ok((claimed, claims, claiming));
        }
        claims += 1;
        claimed.extend(found);
    }
}

fn per_message(elapsed: Duration, messages: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / messages as f64
}

/// Times lifeboat's phases one after the other on a fresh incident, each
/// for all messages: claim, render, build+format, SMTP through the Mailer
/// (no registry), mark sent.
async fn phases(registry: &Registry, sink: &Sink, people: usize, concurrency: usize) -> Result<()> {
    let incident = open_incident(registry, people).await?;
    let settings = &settings(&incident)?;

    // What send_deliveries claims at once once it runs fast (LARGEST_CLAIM).
    let claim_batch = 512;
    let (claimed, claims, claim) = claim_all(registry, incident.id, claim_batch).await?;

    let started = Instant::now();
    let emails: Vec<OutgoingEmail> =
        claimed.iter().map(|delivery| outgoing(settings, &incident, delivery)).collect::<Result<_>>()?;
    let render = started.elapsed();

    let started = Instant::now();
    for _ in 0..people {
        std::hint::black_box(lifeboat::notice::markdown_to_safe_html(std::hint::black_box(POSTMORTEM.trim())));
    }
    let postmortem = started.elapsed();

    let composer = Composer::new(&FROM.parse()?);
    let started = Instant::now();
    for email in &emails {
        std::hint::black_box(composer.compose(email)?.formatted());
    }
    let build = started.elapsed();

    let mailer = mailer(sink.port, concurrency as u32)?;
    let (started, cpu) = (Instant::now(), own_cpu());
    let mut sends =
        futures::stream::iter(0..emails.len()).map(|index| mailer.send(&emails[index])).buffer_unordered(concurrency);
    while let Some(result) = sends.next().await {
        result?;
    }
    let (smtp, smtp_cpu) = (started.elapsed(), own_cpu() - cpu);
    drop(sends);

    // The same sends, one spawned task per connection instead of one task
    // polling them all.
    let emails = Arc::new(emails);
    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu) = (Instant::now(), own_cpu());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (emails, next, mailer) = (emails.clone(), next.clone(), mailer.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(email) = emails.get(index) else { return Ok::<(), BoxError>(()) };
                mailer.send(email).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (smtp_spawned, smtp_spawned_cpu) = (started.elapsed(), own_cpu() - cpu);
    mailer.shutdown().await;

    // Each recording starts from pending rows, as in a run.
    let back_to_pending = || async {
        sqlx::query("UPDATE deliveries SET state = 'pending' WHERE incident_id = $1")
            .bind(incident.id)
            .execute(registry.pool())
            .await
    };
    let mut outbox = registry.outbox_writer().await?;
    back_to_pending().await?;
    let started = Instant::now();
    for delivery in &claimed {
        outbox.mark_sent(std::slice::from_ref(&delivery.id)).await?;
    }
    let mark = started.elapsed();

    let ids: Vec<i64> = claimed.iter().map(|delivery| delivery.id).collect();
    back_to_pending().await?;
    let started = Instant::now();
    let group_size = 2 * concurrency;
    for group in ids.chunks(group_size) {
        outbox.mark_sent(group).await?;
    }
    let mark_grouped = started.elapsed();

    let n = people;
    println!("  phases of lifeboat's path, each alone over {n} messages (concurrency {concurrency}), µs per message:");
    println!("    {:>6.1}  claim ({claims} claims of up to {claim_batch})", per_message(claim, n));
    println!(
        "    {:>6.1}  render (NoticeSettings::email: the askama render, unsubscribe link)",
        per_message(render, n)
    );
    println!(
        "    {:>6.1}  (not in render: the postmortem's Markdown -> sanitized HTML, done once per incident)",
        per_message(postmortem, n)
    );
    println!(
        "    {:>6.1}  build and format the message (lettre's builder, as Mailer::send does)",
        per_message(build, n)
    );
    println!("    {:>6.1}  mark sent one by one (OutboxWriter::mark_sent of one id)", per_message(mark, n));
    println!(
        "    {:>6.1}  mark sent in groups of {group_size} (OutboxWriter::mark_sent, as send_deliveries does at most)",
        per_message(mark_grouped, n)
    );
    println!(
        "    {:>6.1}  SMTP: Mailer::send (incl. build), buffer_unordered({concurrency}) in one task = {:.0} msg/s, \
         CPU {:.0} µs/message",
        per_message(smtp, n),
        n as f64 / smtp.as_secs_f64(),
        smtp_cpu * 1e6 / n as f64
    );
    println!(
        "    {:>6.1}  SMTP: Mailer::send (incl. build), {concurrency} spawned tasks = {:.0} msg/s, CPU {:.0} µs/message",
        per_message(smtp_spawned, n),
        n as f64 / smtp_spawned.as_secs_f64(),
        smtp_spawned_cpu * 1e6 / n as f64
    );
    Ok(())
}

// ---- main ---------------------------------------------------------------------------------

async fn bench(repo: &Path) -> Result<bool> {
    let people: usize = env_number("LIFEBOAT_BENCH_EMAILS", 10_000);
    let rounds: usize = env_number("LIFEBOAT_BENCH_ROUNDS", 3);
    let concurrencies: Vec<usize> = std::env::var("LIFEBOAT_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8,16".to_owned())
        .split(',')
        .map(|part| part.trim().parse().map_err(|_| format!("LIFEBOAT_BENCH_CONCURRENCY: {part:?} is not a number")))
        .collect::<Result<_, _>>()?;
    let with_phases = env_number("LIFEBOAT_BENCH_PHASES", 1) != 0;
    let only_lifeboat = std::env::var("LIFEBOAT_BENCH_ONLY").is_ok_and(|only| only == "lifeboat");

    let scratch = tempfile::Builder::new().prefix("lifeboat-bench-notify-").tempdir()?;
    let sink = start_sink(repo, scratch.path())?;
    println!("notify_email: sink {} on 127.0.0.1:{}", sink.name, sink.port);

    println!("notify_email: {}", check_same_bytes(scratch.path()).await?);

    let started = Instant::now();
    let registry = build_registry(&scratch.path().join("registry.db"), people).await?;
    println!(
        "notify_email: SQLite registry with {people} missing accounts, one email each, built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut all_met = true;
    let mut summary = Vec::new();
    for &concurrency in &concurrencies {
        println!("notify_email: concurrency {concurrency} ({concurrency} SMTP connections), {people} emails per run");
        let (mut ours, mut theirs, mut pipelined) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            // One fresh incident per round; the minimal sender gets the same
            // notices, rendered and formatted before any clock starts.
            let incident = open_incident(&registry, people).await?;
            let messages = if only_lifeboat {
                None
            } else {
                let deliveries = deliveries_of(&registry, incident.id).await?;
                // Settings of their own, as a notify run makes them.
                Some(Arc::new(prepare(&settings(&incident)?, &incident, &deliveries)?))
            };
            // Each round a different one goes first.
            for turn in 0..3 {
                match ((turn + round) % 3, &messages) {
                    (0, _) => {
                        let measured =
                            lifeboat_round(&registry, &sink, &incident, &settings(&incident)?, people, concurrency)
                                .await?;
                        show("lifeboat", round, &measured);
                        ours.push(measured.rate);
                    }
                    (kind @ (1 | 2), Some(messages)) => {
                        let with_pipelining = kind == 2;
                        let measured = measure(&sink, people, || {
                            minimal_send(sink.port, messages.clone(), concurrency, with_pipelining)
                        })
                        .await?;
                        if with_pipelining {
                            show("minimal, pipelined", round, &measured);
                            pipelined.push(measured.rate);
                        } else {
                            show("minimal", round, &measured);
                            theirs.push(measured.rate);
                        }
                    }
                    _ => {}
                }
            }
            if round == 1
                && let Some(messages) = &messages
            {
                let bytes: usize = messages.iter().map(|m| m.data.len()).sum();
                println!("  (messages of {:.1} kB on average on the wire)", bytes as f64 / people as f64 / 1000.0);
            }
        }
        let ours_median = median(&ours);
        if only_lifeboat {
            println!("  median: lifeboat {ours_median:.0} msg/s");
            summary.push(format!("concurrency {concurrency}: lifeboat {ours_median:.0} msg/s"));
            continue;
        }
        let (theirs_median, pipelined_median) = (median(&theirs), median(&pipelined));
        let (ratio, pipelined_ratio) = (ours_median / theirs_median, ours_median / pipelined_median);
        let met = ours_median >= RATE_GOAL;
        all_met &= met;
        println!(
            "  median: lifeboat {ours_median:.0} msg/s, minimal {theirs_median:.0} msg/s (ratio {ratio:.2}), \
             minimal pipelined {pipelined_median:.0} msg/s (ratio {pipelined_ratio:.2}); goal: >= {RATE_GOAL:.0} \
             msg/s {}",
            if met { "met" } else { "MISSED" }
        );
        summary.push(format!(
            "concurrency {concurrency:>2}: lifeboat {ours_median:>5.0} msg/s, minimal {theirs_median:>5.0} msg/s \
             (ratio {ratio:.2}), minimal pipelined {pipelined_median:>5.0} msg/s (ratio {pipelined_ratio:.2}){}",
            if met { "" } else { "  <- below goal" }
        ));
        if with_phases {
            phases(&registry, &sink, people, concurrency).await?;
        }
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
