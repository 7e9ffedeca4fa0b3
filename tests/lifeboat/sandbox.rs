//! The README's newcomer sandbox works end to end: start (our Synapse, a
//! neighbour Synapse federating with it, demo rooms, the SMTP sink,
//! `lifeboat serve`), the mail viewer, the seed incident and its alert mail,
//! the rooms coming back, stop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::repo_root;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn run(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(repo_root().join("tools/sandbox.sh"))
            .args(args)
            .env("LIFEBOAT_SANDBOX_DIR", self.dir.path())
            .env("LIFEBOAT_BIN", env!("CARGO_BIN_EXE_lifeboat"))
            // Free ports, never fixed ones: other tests run in parallel.
            .env("LIFEBOAT_SANDBOX_WEB_PORT", "0")
            .env("LIFEBOAT_SANDBOX_SYNAPSE_PORT", "0")
            .env("LIFEBOAT_SANDBOX_WATCH_INTERVAL", "5s")
            .env("LIFEBOAT_SANDBOX_SAY_WAIT", "30")
            .env_remove("LIFEBOAT_SANDBOX_PROFILE")
            .output()
            .expect("tools/sandbox.sh runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.run(&["stop", "--clean"]);
    }
}

/// The status code of a plain HTTP GET of `path` on 127.0.0.1:`port`.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Subjects and recipients of the mails the sandbox's SMTP sink stored.
fn mails(dir: &Path) -> Vec<(String, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir(dir.join("mail/json")) else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            let mail: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            let to = mail["rcpt_tos"].as_array()?.iter().filter_map(|to| to.as_str().map(str::to_owned)).collect();
            Some((mail["subject"].as_str()?.to_owned(), to))
        })
        .collect()
}

/// A field of the JSON file `name` in the sandbox folder.
fn json_file(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err}")))
        .unwrap()
}

/// `lifeboat rooms list --json`, as (room ID → room).
fn rooms(config: &Path) -> HashMap<String, serde_json::Value> {
    let listed = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--config")
        .arg(config)
        .args(["rooms", "list", "--json"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let rooms: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    rooms.as_array().unwrap().iter().map(|room| (room["room_id"].as_str().unwrap().to_owned(), room.clone())).collect()
}

/// `lifeboat rooms list --json`, as (room ID → state).
fn room_states(config: &Path) -> HashMap<String, String> {
    rooms(config).into_iter().map(|(id, room)| (id, room["state"].as_str().unwrap().to_owned())).collect()
}

/// Waits up to `seconds` for `done`, which is asked again every second.
fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match done() {
            Ok(()) => return,
            Err(last) if started.elapsed() > Duration::from_secs(seconds) => {
                panic!("{what}: not within {seconds} s; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[test]
fn the_sandbox_tells_the_whole_story() {
    let sandbox = Sandbox { dir: tempfile::Builder::new().prefix("lifeboat-sandbox-").tempdir().unwrap() };
    let dir = sandbox.dir.path();

    let (code, out) = sandbox.run(&["start"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Sync complete: 7 accounts listed (sync run 1)."),
        "the demo accounts, the admin, the bot: {out}"
    );
    assert!(out.contains("rooms: 5 on the homeserver"), "the four demo rooms and the admin room: {out}");
    assert!(out.contains("the neighbour homeserver 127.0.0.1:"), "{out}");
    // Both servers federate, so each is named after its federation listener.
    let ours = json_file(dir, "synapse/harness.json")["server_name"].as_str().unwrap().to_owned();
    let neighbour = json_file(dir, "neighbour/harness.json")["server_name"].as_str().unwrap().to_owned();
    assert!(ours.starts_with("127.0.0.1:") && neighbour.starts_with("127.0.0.1:") && ours != neighbour);
    let demo = json_file(dir, "rooms.json");
    let room = |name: &str| {
        demo["rooms"].as_array().unwrap().iter().find(|room| room["name"] == name).unwrap()["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (across, harbour, kitchen, fleet) = (room("Across the water"), room("Harbour"), room("Kitchen"), room("Fleet"));
    assert_eq!(demo["alias"], format!("#harbour:{ours}"));
    // start synced after making them: lifeboat knows every one, here.
    let config = dir.join("lifeboat.toml");
    let states = room_states(&config);
    for room in [&across, &harbour, &kitchen, &fleet] {
        assert_eq!(states.get(room.as_str()).map(String::as_str), Some("here"), "{room}: {states:?}");
    }
    let (code, seen) = sandbox.run(&["rooms", "alice"]);
    assert_eq!(code, 0, "{seen}");
    assert!(seen.contains(&format!("@alice:{ours} is in 4 room(s)")), "{seen}");
    assert!(seen.contains(&format!("#harbour:{ours} -> {harbour}")), "{seen}");
    assert!(out.contains("lifeboat check: no loss (exit 0)"), "{out}");
    assert!(out.contains("the bot joined the admin room"), "{out}");
    assert!(out.contains("tools/sandbox.sh stop"), "it says how to stop it: {out}");

    // The web page of `lifeboat serve` answers on the port start picked.
    let web_url = std::fs::read_to_string(dir.join("web_url")).expect("start records the web URL");
    assert!(out.contains(web_url.trim()), "start prints the web URL: {out}");
    let port: u16 = web_url.trim().trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(http_status(port, "/healthz"), Some(200), "{web_url}");
    assert_eq!(http_status(port, "/token"), Some(200), "{web_url}");

    // start's drill mailed a test message to the alert address: the viewer shows it.
    let (code, out) = sandbox.run(&["mail"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("admin@example.org") && out.contains("lifeboat drill: test message"), "{out}");
    let (code, out) = sandbox.run(&["mail", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("Subject: [{ours}] lifeboat drill: test message")), "{out}");
    assert!(out.lines().count() > 6, "the text part too: {out}");
    let eml = std::fs::read_dir(dir.join("mail/maildir/new")).unwrap().count();
    assert_eq!(eml, 1, "each mail is also an .eml file");

    // The bot answers the admin in the admin room.
    let (code, out) = sandbox.run(&["say", "!lifeboat incident list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("--- @lifeboat:{ours}")), "the bot replied: {out}");

    let (code, out) = sandbox.run(&["status"]);
    assert_eq!(code, 0, "{out}");
    for part in ["==> Synapse: running", "neighbour Synapse: running", "SMTP sink: running", "lifeboat serve: running"]
    {
        assert!(out.contains(part), "{part}: {out}");
    }

    // The seed incident: the watcher in serve alerts by mail.
    let started = Instant::now();
    let (code, out) = sandbox.run(&["incident"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: suspected_reset"), "{out}");
    assert!(out.contains("made a new admin room"), "the bot came back by itself: {out}");
    assert!(out.contains("the admin took @admin:"), "the admin's held ID is handed back on the host: {out}");
    let alert = loop {
        let found = mails(dir).into_iter().find(|(subject, _)| subject.contains("suspected database reset"));
        if let Some(found) = found {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no alert mail within 2 minutes: {:?}", mails(dir));
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(alert.1, vec!["admin@example.org".to_owned()], "{alert:?}");
    let (_, out) = sandbox.run(&["mail"]);
    assert!(out.contains("suspected database reset"), "{out}");

    // The rooms shared with the neighbour live on there; the rest are lost.
    // The public Harbour is "here" again as soon as serve's watcher has
    // brought lifeboat's own account back into it (restored).
    wait_for("the rooms classified after the wipe", 60, || {
        let known = rooms(&config);
        let state = |room: &str| known.get(room).map(|room| room["state"].as_str().unwrap().to_owned());
        let harbour_ok = match state(&harbour).as_deref() {
            Some("elsewhere") => true,
            Some("here") => !known[&harbour]["restored_at"].is_null(),
            _ => false,
        };
        let rest = [(&across, "elsewhere"), (&kitchen, "lost"), (&fleet, "lost")];
        match harbour_ok && rest.iter().all(|(room, want)| state(room).as_deref() == Some(*want)) {
            true => Ok(()),
            false => Err(format!("{known:?}")),
        }
    });

    // The story goes on from the CLI: an incident and its notices.
    let bin = env!("CARGO_BIN_EXE_lifeboat");
    let postmortem = dir.join("postmortem.md");
    std::fs::write(&postmortem, "# Database lost\n\nRegister again with your token.\n").unwrap();
    let opened = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["incident", "open", "--title", "Database lost", "--postmortem"])
        .arg(&postmortem)
        .output()
        .unwrap();
    assert!(opened.status.success(), "{}", String::from_utf8_lossy(&opened.stderr));
    let notified = Command::new(bin).arg("--config").arg(&config).args(["notify", "1", "--yes"]).output().unwrap();
    assert!(notified.status.success(), "{}", String::from_utf8_lossy(&notified.stderr));
    // As the README shows it: a token for alice, bob and carol, none for dave
    // (his account was locked by an admin) nor for the admin who has theirs.
    let said = String::from_utf8_lossy(&notified.stdout);
    assert!(said.contains("Created 3 registration tokens in Synapse."), "{said}");
    assert!(said.contains("Deliveries: 4 sent, 0 failed"), "{said}");
    let notices = mails(dir);
    for person in ["alice@example.org", "bob@example.org", "carol@example.org"] {
        assert!(
            notices.iter().any(|(subject, to)| subject.contains("Database lost") && to == &vec![person.to_owned()]),
            "{person}: {notices:?}"
        );
    }

    // alice takes her ID back; serve's watcher joins her back into the
    // surviving rooms, and its own account re-points the alias.
    let password = "paper boats float home";
    let mut claim = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["holds", "claim", &format!("@alice:{ours}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(claim.stdin.take().unwrap(), "{password}").unwrap();
    let claimed = claim.wait_with_output().unwrap();
    assert!(claimed.status.success(), "{}", String::from_utf8_lossy(&claimed.stderr));
    wait_for("alice back in the surviving rooms", 90, || {
        let (_, out) = sandbox.run(&["rooms", "alice", password]);
        let back = [&across, &harbour].iter().all(|room| out.contains(&format!("joined   {room}")))
            && out.contains(&format!("#harbour:{ours} -> {harbour}"));
        if back { Ok(()) } else { Err(out) }
    });
    let recreated =
        Command::new(bin).arg("--config").arg(&config).args(["rooms", "recreate", "--all", "--yes"]).output().unwrap();
    let said = String::from_utf8_lossy(&recreated.stdout);
    assert!(recreated.status.success(), "{said}{}", String::from_utf8_lossy(&recreated.stderr));
    assert!(said.contains("Re-created Kitchen as") && said.contains("Re-created Fleet as"), "{said}");
    let states = room_states(&config);
    assert_eq!(states[&kitchen], "recreated", "{states:?}");
    assert_eq!(states[&fleet], "recreated", "{states:?}");
    let (_, out) = sandbox.run(&["rooms", "alice", password]);
    assert!(out.matches("invited  ").count() >= 2, "alice is invited to the re-created rooms: {out}");

    let (code, out) = sandbox.run(&["stop", "--clean"]);
    assert_eq!(code, 0, "{out}");
    for part in
        ["stopping lifeboat serve", "stopping the SMTP sink", "stopping Synapse", "stopping the neighbour Synapse"]
    {
        assert!(out.contains(part), "{part}: {out}");
    }
    assert!(!dir.exists(), "--clean removes the sandbox folder");
}
