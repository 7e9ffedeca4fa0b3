//! A real Synapse for the benchmarks, through tools/synapse_harness.py (as
//! the tests start theirs). Included by each bench with `#[path]`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

#[derive(Deserialize, Clone)]
pub struct Info {
    pub url: String,
    pub server_name: String,
    pub admin_token: String,
    /// registration_shared_secret from its homeserver.yaml.
    pub shared_secret: String,
    pub pid: i32,
}

/// A running harness. Its stdin stays open while this lives; dropping it
/// closes stdin, which makes the harness stop Synapse and exit.
pub struct Harness {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub info: Info,
}

impl Harness {
    pub fn start(python: &Path, repo: &Path, dir: &Path) -> Result<Harness> {
        let mut child = Command::new(python)
            .arg(repo.join("tools/synapse_harness.py"))
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("cannot start the Synapse harness with {}: {err}", python.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim().is_empty() {
            let status = child.wait()?;
            return Err(format!("the Synapse harness exited ({status}) before reporting; see its log above").into());
        }
        let info: Info = serde_json::from_str(&line)
            .map_err(|err| format!("the harness printed {line:?}, not its JSON line: {err}"))?;
        Ok(Harness { child, stdin, stdout, info })
    }

    /// One harness command (`wipe`, `register-admin NAME`, ...): its answer line.
    pub fn command(&mut self, command: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().ok_or("the harness is stopping")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.starts_with("error") || line.is_empty() {
            return Err(format!("harness command `{command}` failed: {line}").into());
        }
        Ok(line.trim().to_owned())
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // EOF on stdin: the harness stops Synapse gracefully and exits.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("the Synapse harness did not exit in 30 s; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn synapse_python(repo: &Path) -> Result<PathBuf> {
    let output = Command::new(repo.join("tools/synapse-venv.sh")).stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        return Err(format!("tools/synapse-venv.sh failed ({})", output.status).into());
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}
