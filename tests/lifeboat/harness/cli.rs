//! Runs the real `lifeboat` binary against a config written per test.

use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Lifeboat {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Lifeboat {
    /// A folder with `lifeboat.toml` holding `config`.
    pub fn with_config(config: &str) -> Lifeboat {
        let dir = tempfile::Builder::new().prefix("lifeboat-test-").tempdir().unwrap();
        let path = dir.path().join("lifeboat.toml");
        std::fs::write(&path, config).unwrap();
        Lifeboat { dir, config: path, env: Vec::new() }
    }

    /// Config for a Synapse at `url` and a registry at `registry_url`.
    pub fn for_synapse(url: &str, server_name: &str, token: &str, registry_url: &str) -> Lifeboat {
        Lifeboat::with_config(&format!(
            "[homeserver]\nurl = \"{url}\"\nserver_name = \"{server_name}\"\nadmin_token = \"{token}\"\n\
             retries = 1\ntimeout = \"5s\"\n\n[registry]\nurl = \"{registry_url}\"\n\n[sync]\npage_size = 2\n"
        ))
    }

    /// Config for `synapse` with its admin token and shared secret (so
    /// `recover` works after a wipe), and `registry`.
    pub fn recovering(synapse: &super::TestSynapse, registry: &super::TestDatabase) -> Lifeboat {
        Lifeboat::with_config(&format!(
            "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\n\
             registration_shared_secret = \"{}\"\n\n[registry]\nurl = \"{}\"\n",
            synapse.url,
            synapse.server_name,
            synapse.admin_token(),
            synapse.shared_secret,
            registry.url()
        ))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file.
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
    }

    pub fn env(mut self, name: &str, value: &str) -> Lifeboat {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(existing, _)| existing != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts lifeboat without waiting for it (output discarded).
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut command = self.command(args);
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        command.spawn().expect("lifeboat starts")
    }

    /// Starts a command whose output is kept for `wait_with_output`.
    pub fn spawn_captured(&self, args: &[&str]) -> tokio::process::Child {
        let mut command = self.command(args);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().expect("lifeboat starts")
    }

    /// Starts `lifeboat -v serve`, its log in `serve.log` (appended across
    /// restarts); killed when the child is dropped.
    pub fn spawn_serve(&self) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.serve_log_path()).unwrap();
        let mut command = self.command(&["-v", "serve"]);
        command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log).kill_on_drop(true);
        command.spawn().expect("lifeboat serve starts")
    }

    pub fn serve_log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.serve_log_path()).unwrap_or_default()
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let mut command = self.command(args);
        command.stdin(std::process::Stdio::null());
        let Output { status, stdout, stderr } = command.output().await.expect("lifeboat runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Like [`Self::run`], with `input` on stdin (not a terminal).
    pub async fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut command = self.command(args);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("lifeboat runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let Output { status, stdout, stderr } = child.wait_with_output().await.expect("lifeboat runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        // LIFEBOAT_TEST_BIN: measure with another build (e.g. release).
        let binary = std::env::var("LIFEBOAT_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lifeboat").to_owned());
        let mut command = tokio::process::Command::new(binary);
        command.arg("--config").arg(&self.config).args(args).current_dir(self.dir.path());
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("LIFEBOAT")) {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}
