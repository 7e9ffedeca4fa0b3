//! The README's newcomer sandbox works end to end: start (Synapse, the SMTP
//! sink, `lifeboat serve`), the mail viewer, the seed incident and its alert
//! mail, stop.

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
    assert!(out.contains("Subject: [lifeboat.test] lifeboat drill: test message"), "{out}");
    assert!(out.lines().count() > 6, "the text part too: {out}");
    let eml = std::fs::read_dir(dir.join("mail/maildir/new")).unwrap().count();
    assert_eq!(eml, 1, "each mail is also an .eml file");

    // The bot answers the admin in the admin room.
    let (code, out) = sandbox.run(&["say", "!lifeboat incident list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("--- @lifeboat:lifeboat.test"), "the bot replied: {out}");

    let (code, out) = sandbox.run(&["status"]);
    assert_eq!(code, 0, "{out}");
    for part in ["Synapse: running", "SMTP sink: running", "lifeboat serve: running"] {
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

    // The story goes on from the CLI: an incident and its notices.
    let bin = env!("CARGO_BIN_EXE_lifeboat");
    let config = dir.join("lifeboat.toml");
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
    let notices = mails(dir);
    for person in ["alice@example.org", "bob@example.org", "carol@example.org"] {
        assert!(
            notices.iter().any(|(subject, to)| subject.contains("Database lost") && to == &vec![person.to_owned()]),
            "{person}: {notices:?}"
        );
    }

    let (code, out) = sandbox.run(&["stop", "--clean"]);
    assert_eq!(code, 0, "{out}");
    for part in ["stopping lifeboat serve", "stopping the SMTP sink", "stopping Synapse"] {
        assert!(out.contains(part), "{part}: {out}");
    }
    assert!(!dir.exists(), "--clean removes the sandbox folder");
}
