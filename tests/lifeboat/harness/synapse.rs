//! A real Synapse per test, started through tools/synapse_harness.py.
//!
//! The Python harness owns the Synapse process: it stops it when its stdin
//! closes, so no Synapse outlives the test binary even after a panic.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Value, json};

use super::matrix::{MatrixUser, encode};

#[derive(Debug, Clone, Deserialize)]
pub struct Started {
    pub url: String,
    /// The TLS federation listener, with `--federation` only.
    #[serde(default)]
    pub federation_port: Option<u16>,
    pub server_name: String,
    pub admin_token: String,
    pub shared_secret: String,
    /// The bridge's token, with `--bridge` only.
    #[serde(default)]
    pub bridge_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub user_id: String,
    pub access_token: String,
    #[serde(default)]
    pub password: Option<String>,
}

pub struct TestSynapse {
    pub url: String,
    pub server_name: String,
    /// Set when started with [`TestSynapse::start_federating`].
    pub federation_port: Option<u16>,
    /// registration_shared_secret from its homeserver.yaml.
    pub shared_secret: String,
    /// Set when started with [`TestSynapse::start_with_a_bridge`].
    pub bridge_token: Option<String>,
    admin_token: Mutex<String>,
    control: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _child: Child,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestSynapse {
    /// Creates `count` accounts through the admin API, 8 at a time: the
    /// `n`th is `@{localpart(n)}:server` with `body(n)` as its admin PUT.
    pub async fn create_accounts(
        &self,
        count: usize,
        localpart: impl Fn(usize) -> String + Sync,
        body: impl Fn(usize) -> serde_json::Value + Sync,
    ) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let token = self.admin_token();
        let (localpart, body) = (&localpart, &body);
        futures::future::join_all((0..8).map(|lane| {
            let (client, token) = (client.clone(), token.clone());
            async move {
                for n in (lane..count).step_by(8) {
                    let id = format!("@{}:{}", localpart(n), self.server_name);
                    let response = client
                        .put(format!("{}/_synapse/admin/v2/users/{id}", self.url))
                        .bearer_auth(&token)
                        .json(&body(n))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success(), "creating {id}: {}", response.status());
                }
            }
        }))
        .await;
    }

    /// Starts a fresh Synapse with an admin account; blocks until it answers.
    pub fn start() -> TestSynapse {
        Self::start_with(&[])
    }

    /// A Synapse that federates with other federating test Synapses on this
    /// machine; its server name is `127.0.0.1:<federation port>`.
    pub fn start_federating() -> TestSynapse {
        Self::start_with(&["--federation"])
    }

    /// A Synapse with a bridge: an application service owning the users
    /// `@puppet_…` (see [`TestSynapse::register_puppet`]).
    pub fn start_with_a_bridge() -> TestSynapse {
        Self::start_with(&["--bridge"])
    }

    /// Registers `@puppet_<name>` as the bridge does (its application
    /// service token); its user ID.
    pub async fn register_puppet(&self, name: &str) -> String {
        let token = self.bridge_token.as_deref().expect("started with a bridge");
        let body = json!({"type": "m.login.application_service", "username": format!("puppet_{name}")});
        let url = format!("{}/_matrix/client/v3/register", self.url);
        let response = self.http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "the bridge registers its puppet: {status} {answer}");
        answer["user_id"].as_str().unwrap().to_owned()
    }

    /// Like [`start`], with more harness arguments (e.g. `--rate rc_message=1:2`).
    pub fn start_with(extra_args: &[&str]) -> TestSynapse {
        let dir = tempfile::Builder::new().prefix("lifeboat-synapse-").tempdir().unwrap();
        let mut child = Command::new(super::venv_python())
            .arg(super::repo_root().join("tools/synapse_harness.py"))
            .arg("--dir")
            .arg(dir.path())
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the Synapse harness starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let started: Started = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("the Synapse harness did not start ({err}): {line:?}"));
        TestSynapse {
            url: started.url,
            server_name: started.server_name,
            federation_port: started.federation_port,
            shared_secret: started.shared_secret,
            bridge_token: started.bridge_token,
            admin_token: Mutex::new(started.admin_token),
            control: Mutex::new((stdin, stdout)),
            _child: child,
            dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn command(&self, command: &str) -> String {
        let mut control = self.control.lock().unwrap();
        writeln!(control.0, "{command}").unwrap();
        control.0.flush().unwrap();
        let mut line = String::new();
        control.1.read_line(&mut line).unwrap();
        assert!(!line.starts_with("error"), "harness command `{command}` failed: {line}");
        line.trim().to_owned()
    }

    pub fn stop(&self) {
        assert_eq!(self.command("stop"), "ok");
    }

    pub fn start_again(&self) {
        assert_eq!(self.command("start"), "ok");
    }

    /// Freezes Synapse (SIGSTOP): requests to it wait until [`Self::resume`].
    pub fn pause(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    fn pid(&self) -> i32 {
        let info: Value = serde_json::from_str(&self.command("info")).unwrap();
        info["pid"].as_i64().expect("synapse is running") as i32
    }

    /// The seed incident: stop Synapse, delete its database, start it again.
    /// Every account and token is gone afterwards.
    pub fn wipe(&self) {
        assert_eq!(self.command("wipe"), "ok");
    }

    /// The nightly backup: a copy of the database as it is now.
    pub fn backup(&self) {
        assert_eq!(self.command("backup"), "ok");
    }

    /// Synapse restored from the copy [`Self::backup`] made: whatever came
    /// since is lost, whatever went since is back.
    pub fn restore(&self) {
        assert_eq!(self.command("restore"), "ok");
    }

    /// Registers a new admin by shared secret and uses its token from now on
    /// (after a wipe the old one is dead). Returns the new token.
    pub fn register_admin(&self, localpart: &str) -> String {
        let registered: Registered =
            serde_json::from_str(&self.command(&format!("register-admin {localpart}"))).unwrap();
        assert_eq!(registered.user_id, self.user_id(localpart));
        *self.admin_token.lock().unwrap() = registered.access_token.clone();
        registered.access_token
    }

    /// Registers an ordinary account by shared secret (password included).
    pub fn register(&self, localpart: &str) -> Registered {
        let registered: Registered = serde_json::from_str(&self.command(&format!("register {localpart}"))).unwrap();
        assert_eq!(registered.user_id, self.user_id(localpart));
        registered
    }

    /// Synapse's own log, to see what it answered.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default()
    }

    pub fn admin_token(&self) -> String {
        self.admin_token.lock().unwrap().clone()
    }

    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    async fn put_user(&self, localpart: &str, body: Value) {
        let url = format!("{}/_synapse/admin/v2/users/{}", self.url, self.user_id(localpart));
        let response = self.http.put(url).bearer_auth(self.admin_token()).json(&body).send().await.unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "creating/updating {localpart} failed: {status} {}",
            response.text().await.unwrap()
        );
    }

    /// Creates an account with these emails through the admin API.
    pub async fn create_user(&self, localpart: &str, emails: &[&str]) -> String {
        let threepids: Vec<Value> = emails.iter().map(|email| json!({"medium": "email", "address": email})).collect();
        self.put_user(
            localpart,
            json!({"password": "correct horse battery", "displayname": localpart, "threepids": threepids}),
        )
        .await;
        self.user_id(localpart)
    }

    /// Every registration token Synapse has (admin API, current admin token).
    pub async fn registration_tokens(&self) -> Vec<Value> {
        let url = format!("{}/_synapse/admin/v1/registration_tokens", self.url);
        let body: Value =
            self.http.get(url).bearer_auth(self.admin_token()).send().await.unwrap().json().await.unwrap();
        body["registration_tokens"].as_array().cloned().unwrap_or_else(|| panic!("no token list in {body}"))
    }

    /// A token for `user_id` (on no device) that Synapse takes for `ms`
    /// milliseconds, then answers 401 soft_logout to (admin API).
    pub async fn token_expiring_in(&self, user_id: &str, ms: i64) -> String {
        let url = format!("{}/_synapse/admin/v1/users/{user_id}/login", self.url);
        let body = serde_json::json!({ "valid_until_ms": lifeboat::registry::now_ms() + ms });
        let minted: Value =
            self.http.post(url).bearer_auth(self.admin_token()).json(&body).send().await.unwrap().json().await.unwrap();
        minted["access_token"].as_str().unwrap_or_else(|| panic!("no token in {minted}")).to_owned()
    }

    /// The rate-limit override of an account (admin API).
    pub async fn rate_limit_override(&self, user_id: &str) -> Value {
        let url = format!("{}/_synapse/admin/v1/users/{user_id}/override_ratelimit", self.url);
        self.http.get(url).bearer_auth(self.admin_token()).send().await.unwrap().json().await.unwrap()
    }

    /// Synapse's own word on a registration token (no auth needed).
    pub async fn token_is_valid(&self, token: &str) -> bool {
        let url = format!("{}/_matrix/client/v1/register/m.login.registration_token/validity", self.url);
        let body: Value = self.http.get(url).query(&[("token", token)]).send().await.unwrap().json().await.unwrap();
        body["valid"].as_bool().unwrap_or_else(|| panic!("no validity in {body}"))
    }

    /// Registers `localpart` through the client API the way a person's
    /// client does with a registration token. Returns the final response.
    pub async fn register_with_token(&self, localpart: &str, token: &str) -> (u16, Value) {
        let url = format!("{}/_matrix/client/v3/register", self.url);
        let post = |body: Value| {
            let request = self.http.post(&url).json(&body);
            async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            }
        };
        let account = json!({"username": localpart, "password": "a new life at sea", "inhibit_login": true});
        let (status, flows) = post(account.clone()).await;
        if status != 401 {
            // Refused before any token is asked for (a taken ID: M_USER_IN_USE).
            return (status, flows);
        }
        let session = flows["session"].as_str().unwrap().to_owned();
        let mut step = account.clone();
        step["auth"] = json!({"type": "m.login.registration_token", "token": token, "session": session});
        let (status, body) = post(step).await;
        if status != 401 {
            return (status, body);
        }
        let mut last = account;
        last["auth"] = json!({"type": "m.login.dummy", "session": session});
        post(last).await
    }

    /// The account as the admin API shows it (`GET /_synapse/admin/v2/users/<id>`).
    pub async fn user(&self, localpart: &str) -> Value {
        let url = format!("{}/_synapse/admin/v2/users/{}", self.url, self.user_id(localpart));
        let response = self.http.get(url).bearer_auth(self.admin_token()).send().await.unwrap();
        assert!(response.status().is_success(), "reading {localpart} failed: {}", response.status());
        response.json().await.unwrap()
    }

    /// Signs in with a password, as a client does: (status, body).
    pub async fn login(&self, localpart: &str, password: &str) -> (u16, Value) {
        let url = format!("{}/_matrix/client/v3/login", self.url);
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password});
        let response = self.http.post(url).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or_default())
    }

    /// A client for an account on this server.
    pub fn client(&self, account: &Registered) -> MatrixUser {
        MatrixUser::new(&self.url, &account.user_id, &account.access_token)
    }

    /// Any request with the current admin token: (status, JSON body or Null).
    pub async fn admin_request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// GET with the admin token (admin or client API); fails the test unless 2xx.
    pub async fn admin_get(&self, path: &str) -> Value {
        let (status, body) = self.admin_request(reqwest::Method::GET, path, None).await;
        assert!((200..300).contains(&status), "GET {path} as admin: {status} {body}");
        body
    }

    /// Every room this server knows (`GET /_synapse/admin/v1/rooms`, all pages).
    pub async fn rooms(&self) -> Vec<Value> {
        let mut rooms = Vec::new();
        let mut from = 0;
        loop {
            let page = self.admin_get(&format!("/_synapse/admin/v1/rooms?from={from}&limit=100")).await;
            rooms.extend(page["rooms"].as_array().unwrap_or_else(|| panic!("no rooms in {page}")).iter().cloned());
            match page["next_batch"].as_i64() {
                Some(next) => from = next,
                None => return rooms,
            }
        }
    }

    /// One room of the admin listing (`joined_members`, `joined_local_members`,
    /// `public`, ...), `None` when this server does not know it.
    pub async fn room(&self, room_id: &str) -> Option<Value> {
        self.rooms().await.into_iter().find(|room| room["room_id"] == room_id)
    }

    /// Joined members, local and remote (`/_synapse/admin/v1/rooms/<id>/members`).
    pub async fn room_members(&self, room_id: &str) -> Vec<String> {
        let body = self.admin_get(&format!("/_synapse/admin/v1/rooms/{}/members", encode(room_id))).await;
        serde_json::from_value(body["members"].clone()).unwrap_or_else(|_| panic!("no members in {body}"))
    }

    /// The room an alias points at (client directory API), `None` if unknown.
    pub async fn resolve_alias(&self, alias: &str) -> Option<String> {
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        let (status, body) = self.admin_request(reqwest::Method::GET, &path, None).await;
        match status {
            200 => Some(body["room_id"].as_str().unwrap().to_owned()),
            404 => None,
            _ => panic!("resolving {alias}: {status} {body}"),
        }
    }

    pub async fn lock_user(&self, localpart: &str) {
        self.put_user(localpart, json!({"locked": true})).await;
    }

    /// Unlocks an account and sets its password, as an admin would.
    pub async fn unlock_user(&self, localpart: &str, password: &str) {
        self.put_user(localpart, json!({"locked": false, "password": password})).await;
    }

    pub async fn deactivate_user(&self, localpart: &str) {
        self.put_user(localpart, json!({"deactivated": true})).await;
    }
}

/// Two federating Synapses, started side by side (each takes a few seconds).
pub fn federation_pair() -> (TestSynapse, TestSynapse) {
    let first = std::thread::spawn(TestSynapse::start_federating);
    let second = TestSynapse::start_federating();
    (first.join().expect("the first federating Synapse starts"), second)
}

/// `prefix-<random>`: names no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}
