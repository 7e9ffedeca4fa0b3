//! Sending email over SMTP: lettre's async SMTP connection (tokio, rustls)
//! on sockets lifeboat opens, a small pool of our own, and lettre's message
//! builder (`message.rs`). [`Mailer`] is built from `[email]`; its errors are
//! one sentence with a hint, never containing the password.
//!
//! Why not lettre's `AsyncSmtpTransport`: lettre 0.11.23 leaves Nagle's
//! algorithm on and writes a message and its final `\r\n.\r\n` in two
//! writes, so each message waits for the server's delayed ACK (40 ms on
//! Linux): 175 messages/s at 8 connections. Its pool cannot set TCP_NODELAY,
//! so the mailer opens the sockets itself and lettre still speaks all of
//! SMTP. Once a lettre release has PR 1159 (TCP_NODELAY upstream),
//! `AsyncSmtpTransport` can come back.
//!
//! What the mailer adds for a mass mailing:
//! - at most `pool_size` connections, each used by one send at a time and
//!   kept open between messages (dropped when broken or idle too long);
//! - one send checks the setup (TLS, login) before the others go: a refused
//!   login is tried once, not once per connection (a fail2ban jail bans
//!   after five), then reported at once for `LOGIN_REFUSAL_HOLD`;
//! - a 421 (or a refused connection) while other sends are under way lowers
//!   the limit by one, and the message waits its turn instead of failing;
//! - one deadline per send, connecting included (lettre times nothing).

mod message;

use std::error::Error as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use std::{fmt, io};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)] // public, and the only way to TLS-wrap a stream of ours
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::config::EmailConfig;
use crate::config::smtp_url::{self, TlsMode};
use crate::email::EmailAddress;

const URL_HINT: &str = "check email.smtp_url: host, port, and TLS mode (smtp:// vs smtps:// vs ?tls=required)";
const LOGIN_HINT: &str = "check the user in email.smtp_url, email.smtp_password, and the TLS mode \
                          (?tls=required or smtps://)";

/// How long one send may take, connecting included: RFC 5321 4.5.3.2 lets
/// a server take 5 minutes to greet and 10 to answer a whole message.
/// Giving up earlier, on a server still checking the message, is how
/// people get it twice.
const SEND_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// Opening the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After a refused login, sends fail at once for this long; then one tries
/// again (the password may have been fixed on the server).
const LOGIN_REFUSAL_HOLD: Duration = Duration::from_secs(10 * 60);
/// A send refused for too many connections waits this long before it tries
/// again on the lowered limit.
const CROWDED_PAUSE: Duration = Duration::from_millis(500);
/// How long closing the pool may wait for the servers' answers to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// Pooled connections idle for longer are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// lettre's choice when the server offers both.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying later: connection refused/reset, SMTP 4xx.
    #[error("{0}")]
    Transient(String),
    /// Will not work by retrying: SMTP 5xx for this recipient/message,
    /// invalid address.
    #[error("{0}")]
    Permanent(String),
    /// The configuration itself is wrong (bad smtp_url, bad From, login
    /// refused, certificate not trusted).
    #[error("{0}")]
    Config(String),
    /// No answer in time: the server may have taken the message. Worth
    /// retrying, but not soon.
    #[error("{0}")]
    Uncertain(String),
    /// The server refuses every message for now (its sending quota or
    /// limit is spent), in a 5xx: each would fail alike, so the run stops
    /// and what is left waits.
    #[error("{0}")]
    Refusing(String),
}

impl MailError {
    /// Worth trying again later (`Uncertain` included).
    pub fn is_transient(&self) -> bool {
        matches!(self, MailError::Transient(_) | MailError::Uncertain(_) | MailError::Refusing(_))
    }
}

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
    /// Unsubscribe URL: adds `List-Unsubscribe: <URL>`, and for an https
    /// URL `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub list_unsubscribe: Option<String>,
}

/// Sends email through one SMTP server with a pool of connections.
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    server: Server,
    pool: Mutex<Pool>,
    /// A permit per send under way; permits are forgotten when the server
    /// allows fewer connections, and closed by `shutdown`.
    permits: Semaphore,
    /// How many permits exist now (pool_size, less the forgotten ones).
    allowed: Mutex<usize>,
    pool_size: usize,
    setup: tokio::sync::Mutex<Setup>,
    deadline: Duration,
    from: Mailbox,
    redacted_url: String,
    /// Scrubbed from error texts, should a server ever echo it.
    password: Option<SecretString>,
}

struct Server {
    host: String,
    port: u16,
    mode: TlsMode,
    /// For every mode but `Plain`.
    tls: Option<TlsParameters>,
    hello: ClientId,
    login: Option<Credentials>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<(AsyncSmtpConnection, Instant)>,
    shut_down: bool,
}

enum Setup {
    Unchecked,
    Working,
    /// A Config error while connecting: reported as it is until then.
    Refused {
        error: String,
        until: Instant,
    },
}

fn hold_refusal(setup: &mut Setup, error: &MailError) {
    *setup = Setup::Refused { error: error.to_string(), until: Instant::now() + LOGIN_REFUSAL_HOLD };
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

        let url = smtp_url::parse(&email.smtp_url).map_err(MailError::Config)?;
        if let Some(problem) = smtp_url::login_problem(&url, email.smtp_password.is_some()) {
            return Err(MailError::Config(problem));
        }
        let password = (email.smtp_password.as_ref().map(|secret| secret.value.clone()))
            .or_else(|| url.password.clone().map(SecretString::from));
        let login = (url.username.clone().zip(password.as_ref()))
            .map(|(user, password)| Credentials::new(user, password.expose_secret().to_owned()));
        let tls = match url.mode {
            TlsMode::Plain => None,
            _ => Some(TlsParameters::builder(url.host.clone()).build_rustls().map_err(|err| {
                MailError::Config(format!(
                    "TLS for email.smtp_url {} cannot be set up ({}); {URL_HINT}",
                    url.redacted,
                    error_chain(&err)
                ))
            })?),
        };
        let server = Server {
            host: url.host.clone(),
            port: url.port,
            mode: url.mode,
            tls,
            hello: url.hello_name.map(ClientId::Domain).unwrap_or_default(),
            login,
        };

        Ok(Mailer {
            inner: Arc::new(Inner {
                server,
                pool: Mutex::new(Pool::default()),
                permits: Semaphore::new(pool_size as usize),
                allowed: Mutex::new(pool_size as usize),
                pool_size: pool_size as usize,
                setup: tokio::sync::Mutex::new(Setup::Unchecked),
                deadline: SEND_DEADLINE,
                from,
                redacted_url: url.redacted,
                password,
            }),
        })
    }

    /// How many connections the mailer opens at once now: the pool size,
    /// less one for each time the server said it allows fewer.
    pub fn connections_allowed(&self) -> usize {
        *self.inner.allowed.lock().unwrap()
    }

    /// Opens up to the pool's size again, for a mailer kept between runs
    /// (serve's): a relay that once allowed fewer connections, restarting
    /// mid-run say, must not limit every later run. Another 421 lowers it.
    pub fn allow_all_again(&self) {
        let mut allowed = self.inner.allowed.lock().unwrap();
        let missing = self.inner.pool_size.saturating_sub(*allowed);
        if missing > 0 && !self.inner.permits.is_closed() {
            self.inner.permits.add_permits(missing);
            *allowed += missing;
        }
    }

    /// Sends one message; `Ok` once the server accepted it (250 after DATA).
    pub async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let message = message::compose(&self.inner.from, email)?;
        let bytes = message.formatted();
        let what = format!("the message to {}", email.to);
        loop {
            let permit = self.permit().await?;
            self.check_setup(false).await?;
            let deadline = self.inner.deadline;
            let attempt = async {
                let mut connection = self.take().await?;
                let sent = connection.send(message.envelope(), &bytes).await;
                self.give_back(connection);
                sent.map(drop).map_err(Failure::from)
            };
            // Running out of time drops the attempt and its connection,
            // which may be mid-conversation: it is never reused.
            let Ok(sent) = tokio::time::timeout(deadline, attempt).await else {
                return Err(MailError::Uncertain(format!(
                    "the mail server at {} gave no answer within {} about {what}: it may have taken it, so it is \
                     retried only after a pause",
                    self.inner.redacted_url,
                    humantime::format_duration(deadline)
                )));
            };
            let Err(err) = sent else { return Ok(()) };
            if is_crowded(&err) && self.allow_fewer(permit) {
                tracing::info!(
                    smtp_url = %self.inner.redacted_url,
                    connections = self.connections_allowed(),
                    "the mail server allows fewer connections; sending over fewer"
                );
                tokio::time::sleep(CROWDED_PAUSE).await;
                continue;
            }
            let error = self.classify(&err, &what);
            if is_login_refusal(&err) {
                hold_refusal(&mut *self.inner.setup.lock().await, &error);
            }
            return Err(error);
        }
    }

    /// Opens a connection (or takes a pooled one) and checks it with NOOP,
    /// logging in when credentials are configured. For readiness checks.
    pub async fn test_connection(&self) -> Result<(), MailError> {
        let _permit = self.permit().await?;
        self.check_setup(true).await
    }

    /// Closes the pooled connections politely (QUIT, each waiting at most
    /// `QUIT_WAIT`). Later sends fail; connections still sending are closed
    /// when their send ends.
    pub async fn shutdown(&self) {
        self.inner.permits.close();
        let idle = {
            let mut pool = self.inner.pool.lock().unwrap();
            pool.shut_down = true;
            std::mem::take(&mut pool.idle)
        };
        futures::future::join_all(idle.into_iter().map(|(connection, _)| quit(connection))).await;
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>, MailError> {
        self.inner.permits.acquire().await.map_err(|_| shut_down())
    }

    /// An idle connection that still answers NOOP (as lettre's pool checks
    /// them), else a new one.
    async fn take(&self) -> Result<AsyncSmtpConnection, Failure> {
        loop {
            let next = {
                let mut pool = self.inner.pool.lock().unwrap();
                if pool.shut_down {
                    return Err(Failure::ShutDown);
                }
                pool.idle.pop()
            };
            let Some((mut connection, since)) = next else { break };
            if since.elapsed() < IDLE_TIMEOUT && connection.test_connected().await {
                return Ok(connection);
            }
            tokio::spawn(quit(connection));
        }
        self.open().await
    }

    /// Keeps a connection for the next send, unless it is broken, the pool
    /// is shut down, or the server now allows fewer connections.
    fn give_back(&self, connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        let mut pool = self.inner.pool.lock().unwrap();
        if pool.shut_down || pool.idle.len() >= self.connections_allowed() {
            drop(pool);
            tokio::spawn(quit(connection));
        } else {
            pool.idle.push((connection, Instant::now()));
        }
    }

    /// Opens a connection: our socket with TCP_NODELAY (see the module
    /// comment), then lettre for greeting, EHLO, TLS and login.
    async fn open(&self) -> Result<AsyncSmtpConnection, Failure> {
        let server = &self.inner.server;
        let connecting = TcpStream::connect((server.host.as_str(), server.port));
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connection timed out")))?;
        socket.set_nodelay(true)?;
        let stream: Box<dyn AsyncTokioStream> = match (&server.tls, server.mode) {
            (Some(tls), TlsMode::Implicit) => {
                #[allow(deprecated)]
                let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(socket));
                stream.upgrade_tls(tls.clone()).await?;
                Box::new(Encrypted(stream.compat()))
            }
            _ => Box::new(socket),
        };
        let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &server.hello).await?;
        match (&server.tls, server.mode) {
            // Fails with lettre's "STARTTLS is not supported" when not offered.
            (Some(tls), TlsMode::StartTls) => connection.starttls(tls.clone(), &server.hello).await?,
            (Some(tls), TlsMode::Opportunistic) if connection.can_starttls() => {
                connection.starttls(tls.clone(), &server.hello).await?
            }
            _ => {}
        }
        if let Some(login) = &server.login {
            connection.auth(&MECHANISMS, login).await?;
        }
        Ok(connection)
    }

    /// Checks that a connection can be set up, unless one was (`again`:
    /// check anyway). One check at a time: the sends that wait for it then
    /// either go on or get its error.
    async fn check_setup(&self, again: bool) -> Result<(), MailError> {
        let mut setup = self.inner.setup.lock().await;
        match &*setup {
            Setup::Working if !again => return Ok(()),
            Setup::Refused { error, until } if Instant::now() < *until => {
                return Err(MailError::Config(error.clone()));
            }
            _ => {}
        }
        let endpoint = &self.inner.redacted_url;
        let check = async {
            let mut connection = self.take().await?;
            let answered = connection.test_connected().await;
            self.give_back(connection);
            Ok::<_, Failure>(answered)
        };
        let Ok(checked) = tokio::time::timeout(self.inner.deadline, check).await else {
            return Err(MailError::Transient(format!(
                "no answer in time while connecting to the mail server at {endpoint}; {URL_HINT}, and whether the \
                 server is up"
            )));
        };
        match checked {
            Ok(true) => {
                *setup = Setup::Working;
                Ok(())
            }
            Ok(false) => Err(MailError::Transient(format!(
                "the mail server at {endpoint} accepted the connection but did not answer NOOP; {URL_HINT}"
            ))),
            Err(err) => {
                let error = match self.classify(&err, "lifeboat's connection") {
                    // A refusal while connecting is about lifeboat's
                    // connection or login, never about one message.
                    MailError::Permanent(_) => self.scrubbed(MailError::Config(format!(
                        "the mail server at {endpoint} refused lifeboat's connection ({}); {URL_HINT}, and the \
                         user and password",
                        err.reply()
                    ))),
                    other => other,
                };
                if matches!(error, MailError::Config(_)) {
                    hold_refusal(&mut setup, &error);
                }
                Err(error)
            }
        }
    }

    /// Lowers the number of connections by one, giving up `permit` for
    /// good, when other sends are under way (so at least one connection
    /// works). False, and `permit` returned, when this send is alone.
    fn allow_fewer(&self, permit: SemaphorePermit<'_>) -> bool {
        let mut allowed = self.inner.allowed.lock().unwrap();
        let under_way = (*allowed).saturating_sub(self.inner.permits.available_permits());
        if under_way > 1 && *allowed > 1 {
            permit.forget();
            *allowed -= 1;
            true
        } else {
            false
        }
    }

    /// Sorts a failure into the kinds, with a message and a hint; `what`
    /// names what was refused ("the message to …").
    fn classify(&self, failure: &Failure, what: &str) -> MailError {
        let endpoint = &self.inner.redacted_url;
        let could_not_talk = |err: &dyn std::error::Error| {
            MailError::Transient(format!(
                "could not talk to the mail server at {endpoint} ({}); {URL_HINT}",
                error_chain(err)
            ))
        };
        let err = match failure {
            Failure::Smtp(err) => err,
            Failure::ShutDown => return shut_down(),
            Failure::Socket(err) => return could_not_talk(err),
        };
        let error = if let Some(code) = err.status().map(u16::from) {
            let reply = failure.reply();
            if code / 100 == 4 {
                MailError::Transient(format!(
                    "the mail server at {endpoint} deferred {what} ({reply}); it will be retried later"
                ))
            } else if is_login_refusal(failure) {
                MailError::Config(format!("the mail server at {endpoint} refused the login ({reply}); {LOGIN_HINT}"))
            } else if is_sender_refusal(err) {
                // Every message would be refused the same way.
                MailError::Config(format!(
                    "the mail server at {endpoint} refused the sender ({reply}); check email.from: the server must \
                     accept it as a sender address (and for the user lifeboat logs in as)"
                ))
            } else if is_quota_refusal(err) {
                MailError::Refusing(format!(
                    "the mail server at {endpoint} takes no more mail for now ({reply}): the rest waits for a later \
                     run; check the relay's sending limits"
                ))
            } else {
                MailError::Permanent(format!(
                    "the mail server at {endpoint} rejected {what} ({reply}); retrying will not help, the reply says \
                     why (usually an unknown or refused address)"
                ))
            }
        } else if err.is_timeout() {
            MailError::Transient(format!(
                "the mail server at {endpoint} did not answer in time ({}); {URL_HINT}, and whether the server is up",
                error_chain(err)
            ))
        } else if let Some(tls) = tls_error(err) {
            // A certificate that is not trusted stays so: fix the config
            // (or the server), retrying will not help.
            if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                MailError::Config(format!(
                    "the mail server at {endpoint} presented a certificate lifeboat does not trust ({tls}); check the \
                     host name in email.smtp_url, or trust the CA that signed it (SSL_CERT_FILE, see the README)"
                ))
            } else {
                MailError::Transient(format!(
                    "TLS with the mail server at {endpoint} failed ({tls}); {URL_HINT}, and that the server's \
                     certificate is valid for its name"
                ))
            }
        } else if err.is_client() {
            classify_unsupported(err, endpoint, what)
        } else if err.is_response() {
            MailError::Transient(format!(
                "the mail server at {endpoint} did not answer in SMTP, or hung up ({}); {URL_HINT}",
                error_chain(err)
            ))
        } else {
            could_not_talk(err)
        };
        self.scrubbed(error)
    }

    fn scrubbed(&self, error: MailError) -> MailError {
        match &self.inner.password {
            Some(password) => scrub(error, password.expose_secret()),
            None => error,
        }
    }
}

fn classify_unsupported(err: &lettre::transport::smtp::Error, endpoint: &str, what: &str) -> MailError {
    let reason = err.source().map(ToString::to_string).unwrap_or_default();
    if reason.contains("SMTPUTF8") || reason.contains("8BITMIME") {
        MailError::Permanent(format!(
            "the mail server at {endpoint} cannot take {what}: the address is not ASCII and the server does not \
             offer SMTPUTF8 ({reason})"
        ))
    } else if reason.contains("STARTTLS") {
        MailError::Config(format!(
            "the mail server at {endpoint} does not offer STARTTLS, and email.smtp_url asks for TLS; {URL_HINT}"
        ))
    } else if reason.contains("authentication mechanism") {
        MailError::Config(format!(
            "the mail server at {endpoint} offers no login method lifeboat speaks (AUTH PLAIN or LOGIN), or none \
             before TLS; {LOGIN_HINT}"
        ))
    } else {
        MailError::Config(format!("the mail server at {endpoint} cannot be used as configured ({reason}); {URL_HINT}"))
    }
}

/// Closes a connection with QUIT, not waiting long for a server that has
/// gone quiet (lettre waits for the answer).
async fn quit(mut connection: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(QUIT_WAIT, connection.quit()).await;
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// Opening the TCP connection (or setting TCP_NODELAY) failed.
    #[error(transparent)]
    Socket(#[from] io::Error),
    #[error("the mailer was shut down")]
    ShutDown,
}

impl Failure {
    fn status(&self) -> Option<u16> {
        match self {
            Failure::Smtp(err) => err.status().map(u16::from),
            _ => None,
        }
    }

    /// `550 5.1.1 no such user`: the code and the server's text.
    fn reply(&self) -> String {
        let text = match self {
            Failure::Smtp(err) => err.source().map(ToString::to_string).unwrap_or_default(),
            _ => String::new(),
        };
        let code = self.status().map(|code| code.to_string()).unwrap_or_default();
        format!("{code} {text}").trim().to_owned()
    }
}

/// lettre's TLS stream (a futures-io stream) as the tokio stream that
/// `connect_with_transport` takes, so that lettre does the TLS of
/// `smtps://` on our socket.
#[allow(deprecated)]
#[derive(Debug)]
struct Encrypted(Compat<AsyncNetworkStream>);

impl AsyncTokioStream for Encrypted {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}

impl AsyncRead for Encrypted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Encrypted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn shut_down() -> MailError {
    MailError::Transient("the mailer was shut down before the message went out; it will be retried".to_owned())
}

/// lettre's error and its sources, each once: `Connection error: …`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    for cause in std::iter::successors(err.source(), |&cause| cause.source()) {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
    }
    text
}

/// Login refused or required, or TLS required before login.
fn is_login_refusal(failure: &Failure) -> bool {
    matches!(failure.status(), Some(530 | 534 | 535 | 538))
}

/// A refusal of the envelope sender (lettre does not say which command was
/// refused): the enhanced codes for a bad sender (5.1.7, 5.1.8), or a reply
/// that speaks of the sender's address, as Postfix's "Sender address
/// rejected" or a relay's "from address does not match a verified Sender
/// Identity" do. Not a reply about a recipient, nor an address it quotes
/// (`<sender@…>`): one such contact must not stop every run as a config
/// error.
fn is_sender_refusal(err: &lettre::transport::smtp::Error) -> bool {
    let text = err.source().map(ToString::to_string).unwrap_or_default();
    let mut words = String::with_capacity(text.len());
    let mut in_address = false;
    for c in text.chars() {
        match c {
            '<' => in_address = true,
            '>' => in_address = false,
            _ if !in_address => words.push(c),
            _ => {}
        }
    }
    let words = words.to_ascii_lowercase();
    const ABOUT_THE_SENDER: [&str; 5] =
        ["sender address", "sender identity", "sender domain", "from address", "sender rejected"];
    text.starts_with("5.1.7")
        || text.starts_with("5.1.8")
        || (!words.contains("recipient") && ABOUT_THE_SENDER.iter().any(|phrase| words.contains(phrase)))
}

/// A 5xx about the sender's allowance, not the message: the enhanced code
/// Gmail gives a spent daily quota (5.4.5), or a reply about a sending
/// quota or limit. Not a recipient's full mailbox (5.2.2, "over quota").
fn is_quota_refusal(err: &lettre::transport::smtp::Error) -> bool {
    let text = err.source().map(ToString::to_string).unwrap_or_default().to_ascii_lowercase();
    let about_sending = text.contains("sending") && (text.contains("quota") || text.contains("limit"));
    !text.starts_with("5.2.") && !text.contains("mailbox") && (text.starts_with("5.4.5") || about_sending)
}

/// The server allows no more connections now: 421 (RFC 5321 3.8), or a
/// refused TCP connection.
fn is_crowded(failure: &Failure) -> bool {
    match failure {
        Failure::Socket(err) => err.kind() == io::ErrorKind::ConnectionRefused,
        _ => failure.status() == Some(421),
    }
}

/// The rustls error behind a failed handshake: lettre wraps it in an
/// `io::Error`, whose `source()` skips it, hence `get_ref`.
fn tls_error(err: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    std::iter::successors(err.source(), |&cause| cause.source()).find_map(|cause| {
        cause.downcast_ref::<rustls::Error>().or_else(|| cause.downcast_ref::<io::Error>()?.get_ref()?.downcast_ref())
    })
}

/// Replaces every occurrence of the password in the error text.
fn scrub(mut error: MailError, password: &str) -> MailError {
    let (MailError::Transient(text)
    | MailError::Permanent(text)
    | MailError::Config(text)
    | MailError::Uncertain(text)
    | MailError::Refusing(text)) = &mut error;
    if !password.is_empty() {
        *text = text.replace(password, "[redacted]");
    }
    error
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

    #[test]
    fn builds_without_a_runtime_and_without_connecting() {
        let mailer = Mailer::from_config(&config("smtp://127.0.0.1:1", None), 4).unwrap();
        assert_eq!(mailer.inner.redacted_url, "smtp://127.0.0.1:1");
        assert_eq!(mailer.inner.server.mode, TlsMode::Plain);
        assert_eq!(mailer.inner.from.to_string(), "Lifeboat <lifeboat@example.org>");
        assert_eq!(mailer.connections_allowed(), 4);
        let implicit = Mailer::from_config(&config("smtps://mail.example.org", None), 1).unwrap();
        assert_eq!(implicit.inner.server.mode, TlsMode::Implicit);
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

    /// A user without a password, and a login on opportunistic TLS: tests/ (`config check`).
    #[test]
    fn a_password_needs_a_user_and_opportunistic_tls_without_a_login_is_fine() {
        let message = config_error(Mailer::from_config(&config("smtp://mail.example.org:587", Some("hunter2")), 1));
        assert!(message.contains("smtp://USER@mail.example.org:587") && !message.contains("hunter2"), "{message}");
        Mailer::from_config(&config("smtp://127.0.0.1:2525?tls=opportunistic", None), 1).unwrap();
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
        assert!(mailer.send(&email_to("alice@example.net")).await.unwrap_err().is_transient());
    }

    /// How the scripted server answers.
    #[derive(Clone, Copy)]
    struct Script {
        /// The reply to a command verb (`GREETING`, `EHLO`, `MAIL`, `RCPT`,
        /// `END-OF-DATA`, …) given the whole line, or `SILENCE`; `None`: the
        /// usual answer.
        reply: fn(&str, &str) -> Option<&'static str>,
        /// These verbs wait `delay` before their reply.
        slow: &'static [&'static str],
        delay: Duration,
        /// More connections at once get `421` as their greeting.
        most_connections: usize,
    }

    impl Script {
        fn replying(reply: fn(&str, &str) -> Option<&'static str>) -> Script {
            Script { reply, slow: &[], delay: Duration::ZERO, most_connections: usize::MAX }
        }
    }

    /// What the scripted server saw.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        open: AtomicUsize,
        most_open: AtomicUsize,
        /// Every command line, in order (not the message's lines).
        commands: Mutex<Vec<String>>,
    }

    impl Seen {
        fn commands_starting(&self, prefix: &str) -> Vec<String> {
            self.commands.lock().unwrap().iter().filter(|line| line.starts_with(prefix)).cloned().collect()
        }
    }

    /// An SMTP server on loopback for replies the test sink cannot give on
    /// demand. Returns its port and what it saw.
    async fn scripted_server(script: Script) -> (u16, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let seen_by_server = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen_by_server.clone();
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                let open = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most_open.fetch_max(open, Ordering::SeqCst);
                tokio::spawn(async move {
                    converse(socket, script, &seen, open).await;
                    seen.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (port, seen)
    }

    async fn converse(socket: tokio::net::TcpStream, script: Script, seen: &Seen, open: usize) {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let reply = |verb: &str, line: &str, usual: &str| {
            let answer = if verb == "GREETING" && open > script.most_connections {
                Some("421 4.7.0 too many connections")
            } else {
                (script.reply)(verb, line)
            };
            let delay = if script.slow.contains(&verb) { script.delay } else { Duration::ZERO };
            (answer.unwrap_or(usual).to_owned(), delay)
        };
        let mut next = Some(reply("GREETING", "", "220 scripted ESMTP"));
        let mut in_data = false;
        loop {
            if let Some((answer, delay)) = next.take() {
                if answer == "SILENCE" {
                    // A server that has gone quiet, until the client leaves.
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return;
                }
                tokio::time::sleep(delay).await;
                // After 421 a server closes the connection (RFC 5321 3.8);
                // "… then close" closes after an ordinary answer.
                let (answer, closes) = match answer.strip_suffix(" then close") {
                    Some(answer) => (answer.to_owned(), true),
                    None => (answer.clone(), answer.starts_with("421") || answer.starts_with("221")),
                };
                if write.write_all(format!("{answer}\r\n").as_bytes()).await.is_err() || closes {
                    return;
                }
            }
            let Ok(Some(line)) = lines.next_line().await else { return };
            let verb = if in_data {
                if line != "." {
                    continue;
                }
                "END-OF-DATA".to_owned()
            } else {
                seen.commands.lock().unwrap().push(line.clone());
                line.split(' ').next().unwrap_or("").to_ascii_uppercase()
            };
            let usual = match verb.as_str() {
                "EHLO" => "250-scripted\r\n250 8BITMIME",
                "DATA" => "354 go ahead",
                "QUIT" => "221 bye",
                "AUTH" => "235 2.7.0 welcome",
                _ => "250 ok",
            };
            let (answer, delay) = reply(&verb, &line, usual);
            in_data = verb == "DATA" && answer.starts_with("354");
            next = Some((answer, delay));
        }
    }

    async fn send_through(reply: fn(&str, &str) -> Option<&'static str>) -> Result<(), MailError> {
        let (port, _) = scripted_server(Script::replying(reply)).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        mailer.send(&email_to("alice@example.net")).await
    }

    /// `count` messages to bob, all sent at once from tasks of their own.
    async fn send_at_once(mailer: &Mailer, count: usize) -> Vec<Result<(), MailError>> {
        let sends = (0..count).map(|_| {
            let mailer = mailer.clone();
            tokio::spawn(async move { mailer.send(&email_to("bob@example.net")).await })
        });
        futures::future::join_all(sends).await.into_iter().map(Result::unwrap).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_reused_and_bounded_by_the_pool_size() {
        let (port, seen) = scripted_server(Script::replying(|_, _| None)).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 3).unwrap();
        for _ in 0..5 {
            mailer.send(&email_to("alice@example.net")).await.unwrap();
        }
        assert!(seen.accepted.load(Ordering::SeqCst) <= 2, "one connection reused (and the setup check's)");
        for sent in send_at_once(&mailer, 40).await {
            sent.unwrap();
        }
        assert_eq!(seen.commands_starting("DATA").len(), 45);
        let most_open = seen.most_open.load(Ordering::SeqCst);
        assert!(most_open <= 4, "about the pool size at once, not one per message: {most_open}");
        mailer.shutdown().await;
        assert!(mailer.send(&email_to("carol@example.net")).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn an_unknown_recipient_is_permanent_and_the_next_message_still_goes() {
        let (port, seen) = scripted_server(Script::replying(|verb, line| {
            (verb == "RCPT" && line.contains("alice")).then_some("550 5.1.1 no such user")
        }))
        .await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("alice@example.net"), "{message}");
        assert!(message.contains("550 5.1.1 no such user"), "{message}");
        mailer.send(&email_to("bob@example.net")).await.unwrap();
        assert_eq!(seen.commands_starting("DATA").len(), 1);
    }

    /// A relay that drops connections once they have carried a message:
    /// the pooled one is found dead before use (NOOP), not sent into.
    #[tokio::test]
    async fn a_pooled_connection_the_server_dropped_is_replaced_before_the_next_message() {
        let (port, seen) = scripted_server(Script::replying(|verb, _| {
            (verb == "END-OF-DATA").then_some("250 2.0.0 queued then close")
        }))
        .await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        mailer.send(&email_to("alice@example.net")).await.unwrap();
        mailer.send(&email_to("bob@example.net")).await.unwrap();
        assert_eq!(seen.commands_starting("DATA").len(), 2);
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2, "one new connection for the second message");
    }

    #[tokio::test]
    async fn a_deferral_is_transient() {
        for verb_to_fail in ["MAIL", "RCPT", "END-OF-DATA"] {
            let reply: fn(&str, &str) -> Option<&'static str> = match verb_to_fail {
                "MAIL" => |verb, _| (verb == "MAIL").then_some("421 4.3.2 try later"),
                "RCPT" => |verb, _| (verb == "RCPT").then_some("450 4.2.1 mailbox busy"),
                _ => |verb, _| (verb == "END-OF-DATA").then_some("451 4.3.0 temporarily unavailable"),
            };
            let err = send_through(reply).await.unwrap_err();
            assert!(matches!(err, MailError::Transient(ref m) if m.contains("deferred")), "{verb_to_fail}: {err:?}");
        }
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_smtp_is_a_transient_failure() {
        let err = send_through(|verb, _| (verb == "GREETING").then_some("HTTP/1.1 400 Bad Request")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("did not answer in SMTP"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_sender_is_a_config_error() {
        let bad_domain = send_through(|verb, _| (verb == "MAIL").then_some("553 5.1.8 sender domain does not exist"));
        let not_owned =
            send_through(|verb, _| (verb == "MAIL").then_some("553 5.7.1 Sender address rejected: not owned by user"));
        let unverified = send_through(|verb, _| {
            (verb == "MAIL").then_some("550 The from address does not match a verified Sender Identity")
        });
        for (err, reply) in [
            (bad_domain.await.unwrap_err(), "553 5.1.8 sender domain does not exist"),
            (not_owned.await.unwrap_err(), "553 5.7.1 Sender address rejected: not owned by user"),
            (unverified.await.unwrap_err(), "550 The from address does not match a verified Sender Identity"),
        ] {
            assert!(
                matches!(err, MailError::Config(ref m) if m.contains("email.from") && m.contains(reply)),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_spent_sending_quota_stops_the_run_and_a_full_mailbox_fails_only_its_recipient() {
        let quota = send_through(|verb, _| {
            (verb == "MAIL").then_some("550 5.4.5 Daily user sending limit exceeded. For more information, visit …")
        });
        let err = quota.await.unwrap_err();
        assert!(matches!(err, MailError::Refusing(ref m) if m.contains("sending limit")), "{err:?}");
        let full = send_through(|verb, _| (verb == "RCPT").then_some("552 5.2.2 Mailbox full: over quota"));
        let err = full.await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_recipient_whose_address_says_sender_is_that_recipients_failure_alone() {
        let refused = send_through(|verb, _| {
            (verb == "RCPT").then_some("550 5.1.1 <sender@example.net>: Recipient address rejected: User unknown")
        });
        let err = refused.await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(ref m) if m.contains("User unknown")), "{err:?}");
        let group = send_through(|verb, _| {
            (verb == "RCPT").then_some("550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; not allowed")
        });
        let err = group.await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(_)), "a group refusing outsiders: {err:?}");
    }

    #[tokio::test]
    async fn no_answer_in_time_is_uncertain_not_a_quick_retry() {
        let (port, _) = scripted_server(Script::replying(|verb, _| (verb == "END-OF-DATA").then_some("SILENCE"))).await;
        let mut mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        Arc::get_mut(&mut mailer.inner).unwrap().deadline = Duration::from_secs(2);
        let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
        assert!(matches!(err, MailError::Uncertain(ref m) if m.contains("may have taken it")), "{err:?}");
        assert!(err.is_transient());
    }

    /// RFC 5321 4.5.3.2: a server may take minutes to greet and to answer
    /// a whole message; ten seconds each must not be given up on.
    #[tokio::test]
    async fn a_slow_server_still_gets_the_message() {
        let script = Script {
            slow: &["GREETING", "END-OF-DATA"],
            delay: Duration::from_secs(10),
            ..Script::replying(|_, _| None)
        };
        let (port, seen) = scripted_server(script).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        mailer.send(&email_to("alice@example.net")).await.unwrap();
        assert_eq!(seen.commands_starting("DATA").len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_while_connecting_is_a_config_error_not_the_recipients_fault() {
        let err =
            send_through(|verb, _| (verb == "GREETING").then_some("554 5.7.1 no service for you")).await.unwrap_err();
        assert!(matches!(err, MailError::Config(_)), "{err:?}");
        assert!(err.to_string().contains("554 5.7.1 no service for you"), "{err}");
    }

    /// A fail2ban jail bans a host after a few failed logins: a refused
    /// login is tried once, however many messages were waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_login_is_tried_once_not_once_per_connection() {
        let (port, seen) = scripted_server(Script::replying(|verb, _| match verb {
            "EHLO" => Some("250-scripted\r\n250 AUTH PLAIN LOGIN"),
            "AUTH" => Some("535 5.7.8 authentication failed"),
            _ => None,
        }))
        .await;
        let url = format!("smtp://lifeboat@127.0.0.1:{port}");
        let mailer = Mailer::from_config(&config(&url, Some("hunter2")), 8).unwrap();
        for sent in send_at_once(&mailer, 20).await {
            let err = sent.unwrap_err();
            assert!(matches!(err, MailError::Config(ref m) if m.contains("refused the login")), "{err:?}");
            assert!(err.to_string().contains("535 5.7.8"), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert_eq!(seen.commands_starting("AUTH").len(), 1, "{:?}", seen.commands.lock().unwrap());
        assert!(seen.commands_starting("MAIL").is_empty());
    }

    /// A relay that accepts the first login and refuses the later ones
    /// (the password changed, a jail began counting): the refusal is held
    /// like one at setup, so new connections stop trying it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_refused_after_setup_worked_is_not_tried_again_by_every_send() {
        static LOGINS: AtomicUsize = AtomicUsize::new(0);
        let (port, seen) = scripted_server(Script::replying(|verb, _| match verb {
            "EHLO" => Some("250-scripted\r\n250 AUTH PLAIN LOGIN"),
            "AUTH" if LOGINS.fetch_add(1, Ordering::SeqCst) > 0 => Some("535 5.7.8 authentication failed"),
            _ => None,
        }))
        .await;
        let url = format!("smtp://lifeboat@127.0.0.1:{port}");
        let mailer = Mailer::from_config(&config(&url, Some("hunter2")), 4).unwrap();
        mailer.send(&email_to("alice@example.net")).await.unwrap();

        let refused = send_at_once(&mailer, 12).await.into_iter().filter(Result::is_err).count();
        assert!(refused > 0, "the new connections were refused");
        let tries = seen.commands_starting("AUTH").len();
        assert!(tries <= 4, "one try per connection open at once, not one per send: {tries}");
        for sent in send_at_once(&mailer, 12).await {
            let err = sent.unwrap_err();
            assert!(matches!(err, MailError::Config(ref m) if m.contains("refused the login")), "{err:?}");
        }
        assert_eq!(seen.commands_starting("AUTH").len(), tries, "held: no more tries");
    }

    /// A relay that takes two connections at once and answers a third with
    /// 421: the mailer sends over two, and every message goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_allowing_few_connections_gets_every_message_over_fewer() {
        let script = Script {
            most_connections: 2,
            slow: &["END-OF-DATA"],
            delay: Duration::from_millis(20),
            ..Script::replying(|_, _| None)
        };
        let (port, seen) = scripted_server(script).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 8).unwrap();
        for sent in send_at_once(&mailer, 30).await {
            sent.unwrap();
        }
        assert_eq!(seen.commands_starting("DATA").len(), 30);
        let allowed = mailer.connections_allowed();
        assert!((1..=2).contains(&allowed), "{allowed}");
        mailer.allow_all_again();
        assert_eq!(mailer.connections_allowed(), 8, "a later run may try all again");
    }

    #[tokio::test]
    async fn tls_fails_closed() {
        // TLS from the first byte, to a server that speaks plain SMTP.
        let (port, seen) = scripted_server(Script::replying(|_, _| None)).await;
        let mailer = Mailer::from_config(&config(&format!("smtps://127.0.0.1:{port}"), None), 1).unwrap();
        let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
        assert!(matches!(err, MailError::Transient(ref m) if m.contains("TLS")), "{err:?}");

        // STARTTLS required, and not offered.
        let url = format!("smtp://lifeboat@127.0.0.1:{port}?tls=required");
        let mailer = Mailer::from_config(&config(&url, Some("hunter2")), 1).unwrap();
        let err = mailer.send(&email_to("alice@example.net")).await.unwrap_err();
        assert!(matches!(err, MailError::Config(ref m) if m.contains("does not offer STARTTLS")), "{err:?}");
        assert!(seen.commands_starting("MAIL").is_empty() && seen.commands_starting("AUTH").is_empty());
    }

    #[tokio::test]
    async fn an_idn_domain_reaches_a_server_without_smtputf8_in_punycode() {
        let (port, seen) = scripted_server(Script::replying(|_, _| None)).await;
        let mailer = Mailer::from_config(&config(&format!("smtp://127.0.0.1:{port}"), None), 1).unwrap();
        mailer.send(&email_to("anna@bücher.example")).await.unwrap();
        assert_eq!(seen.commands_starting("RCPT"), ["RCPT TO:<anna@xn--bcher-kva.example>"]);

        let err = mailer.send(&email_to("jürgen@example.org")).await.unwrap_err();
        assert!(matches!(err, MailError::Permanent(ref m) if m.contains("SMTPUTF8")), "{err:?}");
    }
}
