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
        Self::start_with(python, repo, dir, &[])
    }

    /// With more of the harness's options (`--postgres DATABASE`, ...).
    pub fn start_with(python: &Path, repo: &Path, dir: &Path, args: &[String]) -> Result<Harness> {
        let mut child = Command::new(python)
            .arg(repo.join("tools/synapse_harness.py"))
            .arg("--dir")
            .arg(dir)
            .args(args)
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

/// The listing's query, as lifeboat asks it: every account, in ID order.
pub const LISTING_QUERY: &str = "deactivated=true&locked=true&guests=true&order_by=name&dir=f";

#[derive(Deserialize)]
pub struct BarePage {
    pub users: Vec<BareUser>,
    #[serde(default)]
    pub next_token: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct BareUser {
    pub name: String,
}

/// The bare loop a benchmark compares lifeboat with: pages until there is
/// no next_token, keeping only the names. Calls `each` with every page's
/// accounts; returns how many there were.
pub async fn bare_listing(
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

/// lifeboat's config for this Synapse, with a SQLite registry at
/// `registry` and listing pages of `page_size`, written to
/// `dir/lifeboat.toml`.
pub fn lifeboat_config(info: &Info, registry: &Path, dir: &Path, page_size: usize) -> Result<lifeboat::config::Config> {
    lifeboat_config_with(info, registry, dir, page_size, "")
}

/// [`lifeboat_config`] with more sections (`extra`, TOML) at its end.
pub fn lifeboat_config_with(
    info: &Info,
    registry: &Path,
    dir: &Path,
    page_size: usize,
    extra: &str,
) -> Result<lifeboat::config::Config> {
    let text = format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\nregistration_shared_secret = \"{}\"\n\n\
         [registry]\nurl = \"sqlite://{}\"\n\n[sync]\npage_size = {page_size}\n{extra}",
        info.url,
        info.server_name,
        info.admin_token,
        info.shared_secret,
        registry.display(),
    );
    let path = dir.join("lifeboat.toml");
    std::fs::write(&path, &text)?;
    Ok(lifeboat::config::Config::from_toml(&text, &path, std::iter::empty())?)
}
