//! A real SMTP server per test, started through tools/smtp_sink.py
//! (aiosmtpd on 127.0.0.1, from the same cached venv as Synapse).
//!
//! The sink writes every accepted message to DIR/maildir/new/*.eml and, for
//! the tests, parsed to DIR/json/<seq>.json before answering 250. It exits
//! when its stdin closes, which happens when the `TestSmtp` is dropped, so
//! no sink outlives the test even after a panic.

// Not every test uses every accessor.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde::Deserialize;

/// One accepted message, as tools/smtp_sink.py stored it.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceivedMail {
    /// 1, 2, 3… in the order the sink accepted them.
    pub seq: u64,
    /// The SMTP envelope sender (MAIL FROM).
    pub mail_from: String,
    /// The SMTP envelope recipients (RCPT TO).
    pub rcpt_tos: Vec<String>,
    /// The Message-ID header as sent, angle brackets included: `<id@host>`.
    pub message_id: Option<String>,
    /// Decoded (RFC 2047) subject.
    pub subject: Option<String>,
    pub date: Option<String>,
    /// `<https://…>` as in the header.
    pub list_unsubscribe: Option<String>,
    pub list_unsubscribe_post: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// The decoded text/plain part (newlines as `\n`).
    pub text: Option<String>,
    /// The decoded text/html part (newlines as `\n`).
    pub html: Option<String>,
    /// Every top-level header, decoded; a repeated header has its values
    /// joined by `\n`.
    pub headers: BTreeMap<String, String>,
}

impl ReceivedMail {
    /// A header by name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// Whether `addr` is among the envelope recipients (case-insensitive).
    pub fn is_to(&self, addr: &str) -> bool {
        self.rcpt_tos.iter().any(|rcpt| rcpt.eq_ignore_ascii_case(addr.trim()))
    }
}

pub struct TestSmtp {
    port: u16,
    /// The CA that signed the sink's certificate, under TLS.
    ca_file: Option<std::path::PathBuf>,
    dir: tempfile::TempDir,
    /// The sink's stdin (None once closed) and stdout.
    control: Mutex<(Option<ChildStdin>, BufReader<ChildStdout>)>,
    child: Child,
}

#[derive(Deserialize)]
struct Listening {
    port: u16,
    ca: Option<std::path::PathBuf>,
}

/// How a secured sink speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    /// STARTTLS, required before MAIL.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

impl TestSmtp {
    /// Starts a sink on a free loopback port. With `fail_after: Some(k)`,
    /// every message after the first k gets `451 4.3.0` until [`heal`].
    ///
    /// [`heal`]: TestSmtp::heal
    pub fn start(fail_after: Option<u32>) -> TestSmtp {
        Self::start_with(fail_after, 0, &[])
    }

    /// A sink that takes `delay_ms` to accept each message (a slow server).
    pub fn start_slow(delay_ms: u32) -> TestSmtp {
        Self::start_with(None, delay_ms, &[])
    }

    /// A sink that speaks TLS with a certificate from a throwaway CA
    /// ([`ca_file`]) and wants a login before MAIL, offering only the
    /// mechanism `auth` ("PLAIN" or "LOGIN").
    ///
    /// [`ca_file`]: TestSmtp::ca_file
    pub fn start_secured(tls: SinkTls, auth: &str, user: &str, password: &str) -> TestSmtp {
        let mode = match tls {
            SinkTls::StartTls => "starttls",
            SinkTls::Implicit => "implicit",
        };
        Self::start_with(None, 0, &["--tls", mode, "--auth", &format!("{user}:{password}"), "--auth-only", auth])
    }

    /// A sink that leaves PIPELINING out of its EHLO reply.
    pub fn start_without_pipelining() -> TestSmtp {
        Self::start_with(None, 0, &["--no-pipelining"])
    }

    fn start_with(fail_after: Option<u32>, delay_ms: u32, extra: &[&str]) -> TestSmtp {
        let dir = tempfile::Builder::new().prefix("lifeboat-smtp-").tempdir().unwrap();
        let mut command = Command::new(super::venv_python());
        command.arg(super::repo_root().join("tools/smtp_sink.py")).arg("--dir").arg(dir.path()).args(extra);
        if let Some(k) = fail_after {
            command.arg("--fail-after").arg(k.to_string());
        }
        if delay_ms > 0 {
            command.arg("--delay-ms").arg(delay_ms.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tools/smtp_sink.py starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let listening: Listening =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("the SMTP sink did not start ({err}): {line:?}"));
        TestSmtp { port: listening.port, ca_file: listening.ca, dir, control: Mutex::new((Some(stdin), stdout)), child }
    }

    /// The CA file to trust (SSL_CERT_FILE) for a secured sink.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.as_deref().expect("a sink started with TLS")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:PORT`: plain SMTP, no login.
    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Where the sink stores messages (`maildir/`, `json/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, command: &str) -> String {
        let mut control = self.control.lock().unwrap();
        let stdin = control.0.as_mut().expect("the sink is running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        control.1.read_line(&mut line).unwrap();
        assert!(!line.is_empty() && !line.starts_with("error"), "SMTP sink command `{command}` failed: {line:?}");
        line.trim().to_owned()
    }

    /// Stops answering 451 (or 550): every later message is accepted.
    pub fn heal(&self) {
        assert_eq!(self.command("heal"), "ok");
    }

    /// Refuses every later message for good (`550 5.7.1`) until [`heal`].
    ///
    /// [`heal`]: TestSmtp::heal
    pub fn refuse(&self) {
        assert_eq!(self.command("refuse"), "ok");
    }

    /// Refuses every later message with a spent sending quota
    /// (`550 5.4.5`) until [`heal`].
    ///
    /// [`heal`]: TestSmtp::heal
    pub fn spend_quota(&self) {
        assert_eq!(self.command("quota"), "ok");
    }

    /// How many messages the sink has accepted (answered 250) so far.
    pub fn count(&self) -> usize {
        self.command("count").parse().expect("the sink answers `count` with a number")
    }

    /// Every accepted message, in the order accepted. The JSON for a
    /// message is written before the sink answers 250, so once a send has
    /// returned Ok its message is here.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let json_dir = self.dir.path().join("json");
        let mut messages: Vec<ReceivedMail> = std::fs::read_dir(&json_dir)
            .unwrap_or_else(|err| panic!("reading {}: {err}", json_dir.display()))
            .map(|entry| entry.unwrap().path())
            // Skip the sink's temporary files (".N.json.tmp").
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .map(|path| {
                let bytes = std::fs::read(&path).unwrap();
                serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("parsing {}: {err}", path.display()))
            })
            .collect();
        messages.sort_by_key(|mail| mail.seq);
        messages
    }

    /// The accepted messages with `addr` among the envelope recipients.
    pub fn messages_to(&self, addr: &str) -> Vec<ReceivedMail> {
        self.messages().into_iter().filter(|mail| mail.is_to(addr)).collect()
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        // Closing stdin makes the sink exit; wait for it briefly so its
        // files are closed before the temporary directory is removed.
        if let Ok(control) = self.control.get_mut() {
            control.0.take();
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
