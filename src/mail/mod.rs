//! Sending email over SMTP (messages written by `message.rs`; pooled
//! connections).
//!
//! [`Mailer`] is built from `[email]` in the config: `smtp_url` in lettre's
//! URL form (`smtp://` plain, `smtp://…?tls=required` STARTTLS, `smtps://`
//! implicit TLS, optional `user:password@`), `smtp_password(_file)`
//! overriding the URL's password, and `from`. Errors are sorted into
//! [`MailError::Transient`] (retry later), [`MailError::Permanent`] (retrying
//! will not help for this message) and [`MailError::Config`] (fix the
//! config), each one sentence with a hint, never containing the password.
//!
//! The message writer (`message.rs`, with lettre for addresses and header
//! encoding), the SMTP client (`smtp.rs`) and its connection pool
//! (`pool.rs`) are lifeboat's own, for speed: see there.

mod message;
mod pool;
mod smtp;
mod smtp_url;
mod transfer_encoding;

use std::fmt;
use std::sync::Arc;

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};

use pool::{Endpoint, Failure, Pool};
use smtp::{Reply, Setup, SmtpError, Tls};

use crate::config::EmailConfig;
use crate::email::EmailAddress;

pub use message::Composer;
pub use smtp_url::TlsMode;

const URL_HINT: &str = "check email.smtp_url: host, port, and TLS mode (smtp:// vs smtps:// vs ?tls=required)";

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying later: connection refused/reset, timeout, SMTP 4xx.
    #[error("{0}")]
    Transient(String),
    /// Will not work by retrying: SMTP 5xx for this recipient/message,
    /// invalid address.
    #[error("{0}")]
    Permanent(String),
    /// The configuration itself is wrong (bad smtp_url, bad From, login
    /// refused).
    #[error("{0}")]
    Config(String),
    /// The whole message went out but no answer came: the server may have
    /// taken it. Worth retrying, but not soon.
    #[error("{0}")]
    Uncertain(String),
}

impl MailError {
    /// Worth trying again later (`Uncertain` included).
    pub fn is_transient(&self) -> bool {
        matches!(self, MailError::Transient(_) | MailError::Uncertain(_))
    }
}

/// One message to one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    pub to: EmailAddress,
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part (the two go out as multipart/alternative).
    pub html: String,
    /// `left@right` without angle brackets, e.g.
    /// `incident-3.delivery-17@example.org`; a resend keeps the same id.
    pub message_id: String,
    /// One-click unsubscribe URL: adds `List-Unsubscribe: <URL>` and
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub list_unsubscribe: Option<String>,
}

/// Sends email through one SMTP server with a pool of connections.
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    from: Mailbox,
    composer: Composer,
    redacted_url: String,
    mode: TlsMode,
    /// Scrubbed from error texts, should a server ever echo it.
    password: Option<SecretString>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("smtp_url", &self.inner.redacted_url)
            .field("from", &self.inner.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks `[email]` and prepares a pool of up to `pool_size` connections
    /// (opened on demand, kept open between messages; nothing connects
    /// here, and no runtime is needed).
    pub fn from_config(email: &EmailConfig, pool_size: u32) -> Result<Mailer, MailError> {
        if pool_size == 0 {
            return Err(MailError::Config("the SMTP pool size must be at least 1".to_owned()));
        }
        let from: Mailbox = email.from.trim().parse().map_err(|err| {
            MailError::Config(format!(
                "email.from `{}` is not a mailbox ({err}); write it like \
                 \"Lifeboat <lifeboat@example.org>\" or lifeboat@example.org",
                email.from
            ))
        })?;

        let url = smtp_url::parse(&email.smtp_url)?;
        let password: Option<String> = match &email.smtp_password {
            Some(secret) => Some(secret.value.expose_secret().to_owned()),
            None => url.password.clone(),
        };
        let login = match (&url.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), SecretString::from(password))),
            (None, None) => None,
            (Some(user), None) => {
                return Err(MailError::Config(format!(
                    "email.smtp_url names the user `{user}` but no password; set \
                     email.smtp_password (or email.smtp_password_file), or drop the user to \
                     send without logging in"
                )));
            }
            (None, Some(_)) => {
                let source = if email.smtp_password.is_some() {
                    "email.smtp_password is set"
                } else {
                    "email.smtp_url has a password"
                };
                return Err(MailError::Config(format!(
                    "{source} but email.smtp_url has no user name; write it like \
                     smtp://USER@{}",
                    url.redacted.split("://").nth(1).unwrap_or("host:port")
                )));
            }
        };
        let password_for_scrubbing = login.as_ref().map(|(_, password)| password.clone());

        let tls = match url.mode {
            TlsMode::Plain => None,
            TlsMode::StartTls | TlsMode::Opportunistic | TlsMode::Implicit => {
                Some(Tls::for_host(&url.host).map_err(|err| {
                    MailError::Config(format!(
                        "TLS for email.smtp_url {} cannot be set up ({err}); {URL_HINT}",
                        url.redacted
                    ))
                })?)
            }
        };
        let endpoint = Endpoint {
            host: url.host,
            port: url.port,
            setup: Setup {
                hello_name: url.hello_name.unwrap_or_else(smtp::default_hello_name),
                tls,
                implicit_tls: url.mode == TlsMode::Implicit,
                tls_optional: url.mode == TlsMode::Opportunistic,
                login,
            },
        };

        Ok(Mailer {
            inner: Arc::new(Inner {
                pool: Pool::new(endpoint, pool_size),
                composer: Composer::new(&from),
                from,
                redacted_url: url.redacted,
                mode: url.mode,
                password: password_for_scrubbing,
            }),
        })
    }

    /// The SMTP URL without its password, with the effective port, e.g.
    /// `smtp://lifeboat@mail.example.org:587?tls=required`.
    pub fn smtp_url_redacted(&self) -> &str {
        &self.inner.redacted_url
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.inner.mode
    }

    /// The From mailbox as it appears in the header.
    pub fn from_mailbox(&self) -> String {
        self.inner.from.to_string()
    }

    /// Sends one message; `Ok` once the server accepted it (250 after DATA).
    pub async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let composer = &self.inner.composer;
        let message = composer.compose(email)?;
        self.inner
            .pool
            .send(composer.envelope_from(), email.to.as_str(), &message)
            .await
            .map_err(|failure| self.classify(failure, Some(&email.to)))
    }

    /// Opens a connection (or takes a pooled one) and says hello, logging in
    /// when credentials are configured. For readiness checks.
    pub async fn test_connection(&self) -> Result<(), MailError> {
        match self.inner.pool.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(MailError::Transient(format!(
                "the mail server at {} accepted the connection but did not answer NOOP; {URL_HINT}",
                self.inner.redacted_url
            ))),
            Err(err) => Err(self.classify(err, None)),
        }
    }

    /// Closes the pooled connections politely (QUIT). Later sends fail.
    pub async fn shutdown(&self) {
        self.inner.pool.shutdown().await;
    }

    fn classify(&self, failure: Failure, to: Option<&EmailAddress>) -> MailError {
        let endpoint = &self.inner.redacted_url;
        let error = match failure {
            Failure::Smtp(err) => {
                let what = match to {
                    Some(to) => format!("the message to {to}"),
                    None => "the connection test".to_owned(),
                };
                classify(&err, endpoint, &what)
            }
            // A permanent refusal while connecting is about lifeboat's
            // connection or login, never about one recipient.
            Failure::Setup(err) => match classify(&err, endpoint, "lifeboat's connection") {
                MailError::Permanent(_) => MailError::Config(format!(
                    "the mail server at {endpoint} refused lifeboat's connection ({err}); {URL_HINT}, \
                     and the user and password"
                )),
                other => other,
            },
            Failure::Connect(err) => {
                MailError::Transient(format!("could not connect to the mail server at {endpoint} ({err}); {URL_HINT}"))
            }
            Failure::Timeout(stage) => MailError::Transient(format!(
                "no answer in time while {stage} the mail server at {endpoint}; {URL_HINT}, and whether the server is up"
            )),
            Failure::Closed => {
                MailError::Transient("the mailer was shut down before the message went out; it will be retried".into())
            }
        };
        match &self.inner.password {
            Some(password) => scrub(error, password.expose_secret()),
            None => error,
        }
    }
}

/// Sorts an SMTP error into the kinds, with a message and a hint;
/// `recipient` names what was refused ("the message to …").
fn classify(err: &SmtpError, endpoint: &str, recipient: &str) -> MailError {
    match err {
        SmtpError::Refused(reply) => classify_refusal(reply, endpoint, recipient),
        // Every message would be refused the same way.
        SmtpError::SenderRefused(reply) if reply.code / 100 == 5 => MailError::Config(format!(
            "the mail server at {endpoint} refused the sender ({}); check email.from: the server must accept it \
             as a sender address (and for the user lifeboat logs in as)",
            reply.to_line()
        )),
        SmtpError::SenderRefused(reply) => classify_refusal(reply, endpoint, recipient),
        SmtpError::NoAnswer { after_message: true } => MailError::Uncertain(format!(
            "the mail server at {endpoint} gave no answer after {recipient} ({err}): it may have taken it, so it \
             is retried only after a pause"
        )),
        SmtpError::NoAnswer { after_message: false } => MailError::Transient(format!(
            "the mail server at {endpoint} did not answer in time; {URL_HINT}, and whether the server is up"
        )),
        SmtpError::Io(err) if err.kind() == std::io::ErrorKind::TimedOut => MailError::Transient(format!(
            "the mail server at {endpoint} did not answer in time ({err}); {URL_HINT}, and whether the server is up"
        )),
        SmtpError::Io(_) | SmtpError::Protocol(_) => {
            MailError::Transient(format!("could not talk to the mail server at {endpoint} ({err}); {URL_HINT}"))
        }
        // A certificate that is not trusted stays so: fix the config (or
        // the server), retrying will not help.
        SmtpError::Tls(tls) if is_certificate_error(tls) => MailError::Config(format!(
            "the mail server at {endpoint} presented a certificate lifeboat does not trust ({tls}); check the \
             host name in email.smtp_url, or add the CA that signed it (SSL_CERT_FILE)"
        )),
        SmtpError::Tls(err) => MailError::Transient(format!(
            "TLS with the mail server at {endpoint} failed ({err}); {URL_HINT}, and that the server's certificate \
             is valid for its name"
        )),
        SmtpError::Unsupported(what) if what.contains("SMTPUTF8") => {
            MailError::Permanent(format!("the mail server at {endpoint} cannot take {recipient}: {what}"))
        }
        SmtpError::Unsupported(what) => MailError::Config(format!(
            "the mail server at {endpoint} cannot be used as configured: {what}; {URL_HINT}, and the user and \
             password"
        )),
    }
}

fn is_certificate_error(err: &std::io::Error) -> bool {
    matches!(
        err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

fn classify_refusal(reply: &Reply, endpoint: &str, recipient: &str) -> MailError {
    let code = reply.code;
    let text = reply.text();
    if code / 100 == 4 {
        return MailError::Transient(format!(
            "the mail server at {endpoint} deferred {recipient} ({code} {text}); it will be retried later"
        ));
    }
    // Login refused or required, or TLS required before login: the config
    // is wrong, not the message.
    if matches!(code, 530 | 534 | 535 | 538) {
        return MailError::Config(format!(
            "the mail server at {endpoint} refused the login ({code} {text}); check the user in \
             email.smtp_url, email.smtp_password, and the TLS mode (?tls=required or smtps://)"
        ));
    }
    // Sender address refused (5.1.7 / 5.1.8 bad sender): every message
    // would fail the same way.
    if text.starts_with("5.1.7") || text.starts_with("5.1.8") {
        return MailError::Config(format!(
            "the mail server at {endpoint} refused the sender ({code} {text}); check email.from: the server \
             must accept it as a sender address"
        ));
    }
    MailError::Permanent(format!(
        "the mail server at {endpoint} rejected {recipient} ({code} {text}); retrying will not help, the \
         reply says why (usually an unknown or refused address)"
    ))
}

/// Replaces every occurrence of the password in the error text.
fn scrub(error: MailError, password: &str) -> MailError {
    if password.is_empty() {
        return error;
    }
    let clean = |text: String| {
        if text.contains(password) { text.replace(password, "[redacted]") } else { text }
    };
    match error {
        MailError::Transient(text) => MailError::Transient(clean(text)),
        MailError::Permanent(text) => MailError::Permanent(clean(text)),
        MailError::Config(text) => MailError::Config(clean(text)),
        MailError::Uncertain(text) => MailError::Uncertain(clean(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(smtp_url: &str, password: Option<&str>) -> EmailConfig {
        EmailConfig {
            smtp_url: smtp_url.to_owned(),
            smtp_password: password
                .map(|value| Secret { value: SecretString::from(value.to_owned()), from_file: None }),
            from: "Lifeboat <lifeboat@example.org>".to_owned(),
            connections: 8,
        }
    }

    fn config_error(result: Result<Mailer, MailError>) -> String {
        match result {
            Err(MailError::Config(message)) => message,
            Err(other) => panic!("expected a config error, got {other:?}"),
            Ok(mailer) => panic!("expected a config error, got {mailer:?}"),
        }
    }

    #[test]
    fn builds_without_a_runtime_and_without_connecting() {
        let mailer = Mailer::from_config(&config("smtp://127.0.0.1:1", None), 4).unwrap();
        assert_eq!(mailer.smtp_url_redacted(), "smtp://127.0.0.1:1");
        assert_eq!(mailer.tls_mode(), TlsMode::Plain);
        assert_eq!(mailer.from_mailbox(), "Lifeboat <lifeboat@example.org>");
    }

    #[test]
    fn tls_modes_from_the_url() {
        let starttls = Mailer::from_config(&config("smtp://u:p@mail.example.org?tls=required", None), 1).unwrap();
        assert_eq!(starttls.tls_mode(), TlsMode::StartTls);
        assert_eq!(starttls.smtp_url_redacted(), "smtp://u@mail.example.org:587?tls=required");
        let implicit = Mailer::from_config(&config("smtps://mail.example.org", None), 1).unwrap();
        assert_eq!(implicit.tls_mode(), TlsMode::Implicit);
    }

    #[test]
    fn the_password_setting_overrides_the_url_and_stays_secret() {
        let mailer =
            Mailer::from_config(&config("smtp://lifeboat:fromurl@mail.example.org", Some("s3cr3t-override")), 2)
                .unwrap();
        let debug = format!("{mailer:?}");
        assert!(!debug.contains("s3cr3t-override") && !debug.contains("fromurl"), "{debug}");
        assert_eq!(mailer.inner.password.as_ref().unwrap().expose_secret(), "s3cr3t-override");
        assert!(!mailer.inner.redacted_url.contains("fromurl"));
    }

    #[test]
    fn a_user_needs_a_password_and_a_password_needs_a_user() {
        let message = config_error(Mailer::from_config(&config("smtp://lifeboat@mail.example.org", None), 1));
        assert!(message.contains("email.smtp_password"), "{message}");

        let message = config_error(Mailer::from_config(&config("smtp://mail.example.org:587", Some("hunter2")), 1));
        assert!(message.contains("smtp://USER@mail.example.org:587"), "{message}");
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn bad_from_and_pool_size_are_config_errors() {
        let mut bad_from = config("smtp://127.0.0.1", None);
        bad_from.from = "not an address".to_owned();
        let message = config_error(Mailer::from_config(&bad_from, 1));
        assert!(message.contains("email.from"), "{message}");
        config_error(Mailer::from_config(&config("smtp://127.0.0.1", None), 0));
    }

    #[test]
    fn scrubbing_removes_the_password() {
        let scrubbed = scrub(MailError::Transient("server said: bad password hunter2!".to_owned()), "hunter2");
        assert_eq!(scrubbed.to_string(), "server said: bad password [redacted]!");
    }

    #[tokio::test]
    async fn connection_refused_is_transient_with_a_hint() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mailer =
            Mailer::from_config(&config(&format!("smtp://lifeboat@127.0.0.1:{port}"), Some("hunter2")), 1).unwrap();
        let err = mailer.test_connection().await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("check email.smtp_url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");

        let email = OutgoingEmail {
            to: EmailAddress::parse("alice@example.net").unwrap(),
            subject: "s".into(),
            text: "t".into(),
            html: "<p>h</p>".into(),
            message_id: "m@example.org".into(),
            list_unsubscribe: None,
        };
        assert!(mailer.send(&email).await.unwrap_err().is_transient());
    }

    fn email_to(to: &str) -> OutgoingEmail {
        OutgoingEmail {
            to: EmailAddress::parse(to).unwrap(),
            subject: "s".into(),
            text: "t".into(),
            html: "<p>h</p>".into(),
            message_id: "m@example.org".into(),
            list_unsubscribe: None,
        }
    }

    /// A scripted SMTP server on loopback for reply codes the test sink
    /// cannot produce on demand. `reply` maps a command verb (`GREETING`,
    /// `MAIL`, `RCPT`, `END-OF-DATA`) to the reply line; others get 250.
    /// Returns the port and a count of the connections accepted so far.
    async fn scripted_server(
        reply: fn(&str) -> Option<&'static str>,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let greeting = reply("GREETING").unwrap_or("220 scripted ESMTP");
                    write.write_all(format!("{greeting}\r\n").as_bytes()).await.unwrap();
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            "END-OF-DATA".to_owned()
                        } else {
                            line.split(' ').next().unwrap_or("").to_ascii_uppercase()
                        };
                        let answer = match (reply(&verb), verb.as_str()) {
                            // A server that has gone quiet.
                            (Some("SILENCE"), _) => continue,
                            (Some(answer), _) => answer.to_owned(),
                            (None, "EHLO") => "250-scripted\r\n250 8BITMIME".to_owned(),
                            (None, "DATA") => {
                                in_data = true;
                                "354 go ahead".to_owned()
                            }
                            (None, "QUIT") => "221 bye".to_owned(),
                            (None, _) => "250 ok".to_owned(),
                        };
                        // After 421 a server closes the connection (RFC 5321 3.8).
                        let closes = verb == "QUIT" || answer.starts_with("421");
                        if write.write_all(format!("{answer}\r\n").as_bytes()).await.is_err() || closes {
                            break;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    async fn send_through(reply: fn(&str) -> Option<&'static str>) -> Result<(), MailError> {
        let (port, _) = scripted_server(reply).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        mailer.send(&email_to("alice@example.net")).await
    }

    #[tokio::test]
    async fn the_scripted_server_accepts_when_told_nothing() {
        send_through(|_| None).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_reused_and_bounded_by_the_pool_size() {
        let (port, accepted) = scripted_server(|_| None).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 3).unwrap();
        for _ in 0..5 {
            mailer.send(&email_to("alice@example.net")).await.unwrap();
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection, reused");
        let sends = (0..40).map(|_| {
            let mailer = mailer.clone();
            tokio::spawn(async move { mailer.send(&email_to("bob@example.net")).await })
        });
        for send in sends.collect::<Vec<_>>() {
            send.await.unwrap().unwrap();
        }
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) <= 3, "never more than the pool size");
        mailer.shutdown().await;
        assert!(mailer.send(&email_to("carol@example.net")).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn an_unknown_recipient_is_permanent() {
        let err = send_through(|verb| (verb == "RCPT").then_some("550 5.1.1 no such user")).await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("alice@example.net"), "{message}");
        assert!(message.contains("550 5.1.1 no such user"), "{message}");
    }

    #[tokio::test]
    async fn with_pipelining_a_message_goes_out_and_a_refusal_leaves_the_connection_usable() {
        send_through(|verb| (verb == "EHLO").then_some("250-scripted\r\n250 PIPELINING")).await.unwrap();

        let (port, accepted) = scripted_server(|verb| match verb {
            "EHLO" => Some("250-scripted\r\n250 PIPELINING"),
            "RCPT" => Some("550 5.1.1 no such user"),
            _ => None,
        })
        .await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        for _ in 0..2 {
            let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
            assert!(matches!(err, MailError::Permanent(ref m) if m.contains("550 5.1.1 no such user")), "{err:?}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "reset with RSET and reused");
    }

    #[tokio::test]
    async fn a_pipelined_refusal_is_reported_even_when_the_server_hangs_up_after_it() {
        let err = send_through(|verb| match verb {
            "EHLO" => Some("250-scripted\r\n250 PIPELINING"),
            "MAIL" => Some("421 4.3.2 shutting down"),
            _ => None,
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, MailError::Transient(ref m) if m.contains("deferred") && m.contains("421 4.3.2")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_smtp_is_a_transient_failure() {
        let err = send_through(|verb| (verb == "GREETING").then_some("HTTP/1.1 400 Bad Request")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("not SMTP"), "{err}");
    }

    #[tokio::test]
    async fn a_deferral_is_transient() {
        for verb_to_fail in ["MAIL", "RCPT", "END-OF-DATA"] {
            let reply: fn(&str) -> Option<&'static str> = match verb_to_fail {
                "MAIL" => |verb| (verb == "MAIL").then_some("421 4.3.2 try later"),
                "RCPT" => |verb| (verb == "RCPT").then_some("450 4.2.1 mailbox busy"),
                _ => |verb| (verb == "END-OF-DATA").then_some("451 4.3.0 temporarily unavailable"),
            };
            let err = send_through(reply).await.unwrap_err();
            assert!(err.is_transient(), "{verb_to_fail}: {err:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_sender_is_a_config_error() {
        let err = send_through(|verb| (verb == "MAIL").then_some("553 5.1.8 sender domain does not exist"))
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Config(ref m) if m.contains("email.from")), "{err:?}");
    }

    #[tokio::test]
    async fn any_refusal_of_the_sender_is_a_config_error_pipelined_or_not() {
        let plain = send_through(|verb| (verb == "MAIL").then_some("553 sender rejected")).await.unwrap_err();
        assert!(matches!(plain, MailError::Config(ref m) if m.contains("email.from")), "{plain:?}");
        let pipelined = send_through(|verb| match verb {
            "EHLO" => Some("250-scripted\r\n250 PIPELINING"),
            "MAIL" => Some("553 5.7.1 Sender address rejected: not owned by user"),
            _ => None,
        })
        .await
        .unwrap_err();
        assert!(matches!(pipelined, MailError::Config(ref m) if m.contains("refused the sender")), "{pipelined:?}");
    }

    #[tokio::test]
    async fn a_password_is_never_sent_unencrypted_when_tls_was_asked_for() {
        let (port, _) = scripted_server(|_| None).await;
        let url = format!("smtp://lifeboat:hunter2@127.0.0.1:{port}?tls=opportunistic");
        let mailer = Mailer::from_config(&config(&url, None), 1).unwrap();
        let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
        assert!(matches!(err, MailError::Config(ref m) if m.contains("unencrypted")), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn no_answer_after_the_whole_message_is_uncertain_not_a_quick_retry() {
        let err = send_through(|verb| (verb == "END-OF-DATA").then_some("SILENCE")).await.unwrap_err();
        assert!(matches!(err, MailError::Uncertain(ref m) if m.contains("may have taken it")), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_refusal_while_connecting_is_a_config_error_not_the_recipients_fault() {
        let err =
            send_through(|verb| (verb == "GREETING").then_some("554 5.7.1 no service for you")).await.unwrap_err();
        assert!(matches!(err, MailError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("554 5.7.1 no service for you"), "{err}");
    }
}
