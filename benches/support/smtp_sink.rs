//! A local SMTP sink for the benchmarks that send email: Postfix's
//! `smtp-sink` (discards messages; a C program, fast enough not to be the
//! bottleneck), fetched with `apt-get download postfix` + `dpkg -x` into
//! `target/bench-tools/postfix` the first time, or, if it cannot be had,
//! aiosmtpd (`tools/smtp_sink.py --no-fsync`), which is itself the
//! bottleneck near 1,000 messages/s. Included by each bench with `#[path]`,
//! like `synapse.rs`.
//!
//! Environment:
//!   LIFEBOAT_BENCH_SINK         postfix (default) or aiosmtpd
//!   LIFEBOAT_BENCH_POSTFIX_DIR  a folder Debian's postfix .deb was extracted into
//!                               (default target/bench-tools/postfix)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

pub struct Sink {
    child: Child,
    /// aiosmtpd's harness stops on EOF.
    stdin: Option<ChildStdin>,
    pub port: u16,
    /// What it is, for the bench's output.
    pub name: String,
}

impl Sink {
    pub fn pid(&self) -> i32 {
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
        "smtp sink: no smtp-sink in {}; fetching Debian's postfix package (`apt-get download postfix` in {})",
        root.display(),
        download.display()
    );
    if let Err(first) = run_quietly(Command::new("apt-get").arg("download").arg("postfix").current_dir(&download)) {
        eprintln!("smtp sink: {first}\nsmtp sink: running `apt-get update` and trying again");
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
    eprintln!("smtp sink: extracting {} with `dpkg -x` into {}", deb.display(), root.display());
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
    eprintln!("smtp sink: getting the Synapse venv's python (tools/synapse-venv.sh) for aiosmtpd");
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

/// The sink `LIFEBOAT_BENCH_SINK` asks for; Postfix's unless it cannot be
/// had (then aiosmtpd, with a warning). `scratch` holds aiosmtpd's folder.
pub fn start_sink(repo: &Path, scratch: &Path) -> Result<Sink> {
    let wanted = std::env::var("LIFEBOAT_BENCH_SINK").unwrap_or_default();
    if wanted != "aiosmtpd" {
        match start_postfix(repo) {
            Ok(sink) => return Ok(sink),
            Err(err) if wanted == "postfix" => return Err(err),
            Err(err) => eprintln!(
                "smtp sink: WARNING: Postfix smtp-sink is not available ({err}); falling back to aiosmtpd, \
                 which is itself the bottleneck near 1,000 messages/s: the figures below measure it, not lifeboat"
            ),
        }
    }
    start_aiosmtpd(repo, &scratch.join("aiosmtpd"))
}
