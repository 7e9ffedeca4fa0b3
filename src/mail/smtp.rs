//! lifeboat's SMTP client: setting up a connection (greeting, EHLO,
//! STARTTLS or TLS from the first byte, AUTH PLAIN or LOGIN) and sending
//! one message at a time over it. `message.rs` writes the messages.
//!
//! Why not lettre's client: it waits for the reply to each command before
//! writing the next (four round trips per message), copies the body byte
//! by byte into a second buffer, and writes the body and the final dot
//! apart. Here, when the server offers PIPELINING (RFC 2920), MAIL, RCPT and
//! DATA leave in one write and the body with its final dot in one more: two
//! round trips per message. `benches/notify_email.rs` measures it.
//!
//! After a refusal (a 4xx or 5xx reply) the connection is reset with RSET
//! and stays usable; after anything else (network, garbage, timeout) it is
//! marked broken and dropped by the pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest reply line read (RFC 5321 allows 512 bytes; be generous).
const MAX_LINE: u64 = 4096;
/// How long a command's reply, or a write, may take.
const COMMAND_WAIT: Duration = Duration::from_secs(120);
/// How long the reply to a whole message may take: RFC 5321 4.5.3.2.6 says
/// 10 minutes, because giving up earlier, on a server that is still
/// checking the message, is how people get it twice.
const MESSAGE_WAIT: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 600 });
/// Most lines in one reply (EHLO lists one extension per line).
const MAX_LINES: usize = 100;
/// Replies to EHLO that mean "no such command" (500 unrecognized, 502 not
/// implemented): the server speaks only HELO.
const EHLO_UNKNOWN: [u16; 2] = [500, 502];

/// A complete reply: its code and its lines' text, without the codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// `550 5.1.1 no such user` (lines joined by spaces).
    pub fn to_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" ")).trim_end().to_owned()
    }

    /// The text after the code, lines joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// What went wrong on a connection.
#[derive(Debug)]
pub(crate) enum SmtpError {
    /// The server refused: a 4xx or 5xx reply.
    Refused(Reply),
    /// The server refused the envelope sender (MAIL FROM): it would refuse
    /// every message the same way.
    SenderRefused(Reply),
    /// No answer in time. `after_message`: the whole message had been sent,
    /// so the server may have accepted it.
    NoAnswer { after_message: bool },
    /// The socket failed, or the server hung up.
    Io(io::Error),
    /// The TLS handshake failed (certificate, protocol).
    Tls(io::Error),
    /// The server's answer is not what SMTP says it should be.
    Protocol(String),
    /// The server lacks what the configuration or the message needs:
    /// STARTTLS, a login method lifeboat speaks, SMTPUTF8.
    Unsupported(&'static str),
}

impl SmtpError {
    /// A refusal leaves the conversation in step: RSET makes the
    /// connection usable again.
    fn is_refusal(&self) -> bool {
        matches!(self, SmtpError::Refused(_) | SmtpError::SenderRefused(_))
    }

    /// A refusal of MAIL FROM is about the sender.
    fn of_sender(self) -> SmtpError {
        match self {
            SmtpError::Refused(reply) => SmtpError::SenderRefused(reply),
            other => other,
        }
    }
}

impl std::fmt::Display for SmtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmtpError::Refused(reply) | SmtpError::SenderRefused(reply) => f.write_str(&reply.to_line()),
            SmtpError::NoAnswer { after_message: false } => f.write_str("no answer in time"),
            SmtpError::NoAnswer { after_message: true } => {
                write!(f, "no answer within {} minutes after the message", MESSAGE_WAIT.as_secs() / 60)
            }
            SmtpError::Io(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the server closed the connection")
            }
            SmtpError::Io(err) => write!(f, "{err}"),
            SmtpError::Tls(err) => write!(f, "TLS: {err}"),
            SmtpError::Protocol(what) => write!(f, "not SMTP: {what}"),
            SmtpError::Unsupported(what) => f.write_str(what),
        }
    }
}

/// How to protect the connection: `None` for plain SMTP.
#[derive(Clone)]
pub(crate) struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry.
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// The system's trusted roots (the platform verifier; on Linux it
    /// honours SSL_CERT_FILE and SSL_CERT_DIR) and aws-lc-rs.
    pub fn for_host(host: &str) -> Result<Tls, String> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|err| format!("`{host}` is not a TLS server name: {err}"))?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_platform_verifier())
                .map_err(|err| err.to_string())?
                .with_no_client_auth();
        Ok(Tls { config: Arc::new(config), server_name })
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Stream, SmtpError> {
        let stream = TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(SmtpError::Tls)?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// Everything needed to set up a connection on an open socket.
pub(crate) struct Setup {
    pub hello_name: String,
    pub tls: Option<Tls>,
    /// TLS from the first byte (`smtps://`), else STARTTLS when `tls` is set.
    pub implicit_tls: bool,
    /// With STARTTLS: go on in plain text when the server does not offer it.
    pub tls_optional: bool,
    pub login: Option<(String, SecretString)>,
}

/// The hello name when the URL names none: the machine's host name, as
/// RFC 5321 asks, or `localhost`.
pub(crate) fn default_hello_name() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        .unwrap_or_else(|| "localhost".to_owned())
}

pub(crate) struct Connection {
    io: BufReader<Stream>,
    /// Reused for every write.
    out: Vec<u8>,
    line: Vec<u8>,
    pipelining: bool,
    starttls: bool,
    smtputf8: bool,
    auth_plain: bool,
    auth_login: bool,
    broken: bool,
}

impl Connection {
    /// Reads the greeting, says EHLO, switches to TLS and logs in as `setup`
    /// asks. Timeouts are the caller's.
    pub async fn open(tcp: TcpStream, setup: &Setup) -> Result<Connection, SmtpError> {
        let stream = match (&setup.tls, setup.implicit_tls) {
            (Some(tls), true) => tls.handshake(tcp).await?,
            _ => Stream::Plain(tcp),
        };
        let mut conn = Connection::over(stream);
        conn.expect(220).await?;
        conn.ehlo(&setup.hello_name).await?;
        if let (Some(tls), false) = (&setup.tls, setup.implicit_tls) {
            if conn.starttls {
                conn = conn.start_tls(tls, &setup.hello_name).await?;
            } else if !setup.tls_optional {
                return Err(SmtpError::Unsupported("the server does not offer STARTTLS"));
            } else if setup.login.is_some() {
                return Err(SmtpError::Unsupported(
                    "the server does not offer STARTTLS, and lifeboat does not send a password unencrypted when \
                     ?tls=opportunistic asked for TLS; use ?tls=required, or plain smtp:// if that is meant",
                ));
            }
        }
        if let Some((user, password)) = &setup.login {
            conn.log_in(user, password).await?;
        }
        Ok(conn)
    }

    fn over(stream: Stream) -> Connection {
        Connection {
            io: BufReader::new(stream),
            out: Vec::with_capacity(16 * 1024),
            line: Vec::new(),
            pipelining: false,
            starttls: false,
            smtputf8: false,
            auth_plain: false,
            auth_login: false,
            broken: false,
        }
    }

    /// True once the connection is in an unknown state: do not reuse it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one message from `from` to `to`; `Ok` once the server accepted
    /// it. `message` is the formatted message (CRLF line ends).
    pub async fn send(&mut self, from: &str, to: &str, message: &[u8]) -> Result<(), SmtpError> {
        let result = self.transaction(from, to, message).await;
        match &result {
            // The server refused but the conversation is in step: reset it
            // for the next message.
            Err(err) if err.is_refusal() && !self.broken => {
                if !matches!(self.command(b"RSET\r\n", 250).await, Ok(())) {
                    self.broken = true;
                }
            }
            Err(_) => self.broken = true,
            Ok(()) => {}
        }
        result
    }

    async fn transaction(&mut self, from: &str, to: &str, message: &[u8]) -> Result<(), SmtpError> {
        let international = !from.is_ascii() || !to.is_ascii();
        if international && !self.smtputf8 {
            return Err(SmtpError::Unsupported("the address is not ASCII and the server does not offer SMTPUTF8"));
        }
        let option = if international { " SMTPUTF8" } else { "" };
        self.out.clear();
        self.out.extend_from_slice(format!("MAIL FROM:<{from}>{option}\r\n").as_bytes());
        if self.pipelining {
            self.out.extend_from_slice(format!("RCPT TO:<{to}>\r\nDATA\r\n").as_bytes());
            self.flush_out().await?;
            // Every reply is read before judging any, so the conversation
            // stays in step.
            let mut replies = Vec::with_capacity(3);
            while replies.len() < 3 {
                match self.read_reply().await {
                    Ok(reply) => replies.push(reply),
                    // A server that refused and hung up: the refusal says more.
                    Err(err) => {
                        self.broken = true;
                        return Err(first_refusal(replies).unwrap_or(err));
                    }
                }
            }
            let data = replies.pop().expect("three replies");
            if let Some(refusal) = first_refusal(replies) {
                // Accepted DATA with nobody to deliver to: end it empty.
                if data.code == 354 && self.command(b".\r\n", 0).await.is_err() {
                    self.broken = true;
                }
                return Err(refusal);
            }
            check(data, 354)?;
        } else {
            self.flush_out().await?;
            self.expect(250).await.map_err(SmtpError::of_sender)?;
            self.command(format!("RCPT TO:<{to}>\r\n").as_bytes(), 250).await?;
            self.command(b"DATA\r\n", 354).await?;
        }
        self.out.clear();
        dot_stuff_into(message, &mut self.out);
        self.flush_out().await?;
        check(self.read_reply_within(MESSAGE_WAIT, true).await?, 250).map(drop)
    }

    /// NOOP: true when the server answers 250.
    pub async fn noop(&mut self) -> bool {
        let alive = self.command(b"NOOP\r\n", 250).await.is_ok();
        if !alive {
            self.broken = true;
        }
        alive
    }

    /// QUIT, politely; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = self.command(b"QUIT\r\n", 221).await;
    }

    async fn ehlo(&mut self, hello_name: &str) -> Result<(), SmtpError> {
        self.out.clear();
        self.out.extend_from_slice(format!("EHLO {hello_name}\r\n").as_bytes());
        self.flush_out().await?;
        let reply = self.read_reply().await?;
        if EHLO_UNKNOWN.contains(&reply.code) {
            // A server from before ESMTP. It stays where it was after
            // refusing EHLO (RFC 5321 4.1.1.1), and RFC 1869 has the client
            // say HELO then. No extensions: commands go one at a time, and
            // STARTTLS or a login, if configured, fails below as not offered.
            return self.command(format!("HELO {hello_name}\r\n").as_bytes(), 250).await;
        }
        let reply = check(reply, 250)?;
        // The first line is the server's name; each later one an extension.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split([' ', '=']);
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => self.pipelining = true,
                "STARTTLS" => self.starttls = true,
                "SMTPUTF8" => self.smtputf8 = true,
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => self.auth_plain = true,
                            "LOGIN" => self.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn start_tls(mut self, tls: &Tls, hello_name: &str) -> Result<Connection, SmtpError> {
        self.command(b"STARTTLS\r\n", 220).await?;
        // Anything read ahead of the handshake was sent in plain text and
        // could be injected (CVE-2011-0411): refuse it.
        if !self.io.buffer().is_empty() {
            return Err(SmtpError::Protocol("the server sent data right after agreeing to STARTTLS".into()));
        }
        let Stream::Plain(tcp) = self.io.into_inner() else {
            return Err(SmtpError::Protocol("STARTTLS on a connection that already has TLS".into()));
        };
        let mut conn = Connection::over(tls.handshake(tcp).await?);
        // What the server offers may change once encrypted: ask again.
        conn.ehlo(hello_name).await?;
        Ok(conn)
    }

    async fn log_in(&mut self, user: &str, password: &SecretString) -> Result<(), SmtpError> {
        use base64::Engine as _;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let password = password.expose_secret();
        if self.auth_plain {
            let credentials = encode(format!("\0{user}\0{password}").as_bytes());
            self.command(format!("AUTH PLAIN {credentials}\r\n").as_bytes(), 235).await
        } else if self.auth_login {
            self.command(b"AUTH LOGIN\r\n", 334).await?;
            self.command(format!("{}\r\n", encode(user.as_bytes())).as_bytes(), 334).await?;
            self.command(format!("{}\r\n", encode(password.as_bytes())).as_bytes(), 235).await
        } else {
            Err(SmtpError::Unsupported("the server offers no login method lifeboat speaks (AUTH PLAIN or LOGIN)"))
        }
    }

    /// Writes `bytes` and expects a reply with `code` (0: any reply).
    async fn command(&mut self, bytes: &[u8], code: u16) -> Result<(), SmtpError> {
        self.out.clear();
        self.out.extend_from_slice(bytes);
        self.flush_out().await?;
        let reply = self.read_reply().await?;
        if code != 0 {
            check(reply, code)?;
        }
        Ok(())
    }

    async fn expect(&mut self, code: u16) -> Result<(), SmtpError> {
        check(self.read_reply().await?, code).map(drop)
    }

    async fn flush_out(&mut self) -> Result<(), SmtpError> {
        let stream = self.io.get_mut();
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match timeout(COMMAND_WAIT, write).await {
            Ok(written) => written.map_err(SmtpError::Io),
            Err(_) => Err(SmtpError::NoAnswer { after_message: false }),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        self.read_reply_within(COMMAND_WAIT, false).await
    }

    async fn read_reply_within(&mut self, wait: Duration, after_message: bool) -> Result<Reply, SmtpError> {
        match timeout(wait, self.read_reply_now()).await {
            Ok(reply) => reply,
            Err(_) => Err(SmtpError::NoAnswer { after_message }),
        }
    }

    async fn read_reply_now(&mut self) -> Result<Reply, SmtpError> {
        let mut lines = Vec::new();
        loop {
            self.line.clear();
            match (&mut self.io).take(MAX_LINE).read_until(b'\n', &mut self.line).await {
                Ok(0) => return Err(SmtpError::Io(io::ErrorKind::UnexpectedEof.into())),
                // Cut off by the server hanging up, not by the limit.
                Ok(n) if (n as u64) < MAX_LINE && !self.line.ends_with(b"\n") => {
                    return Err(SmtpError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(err) => return Err(SmtpError::Io(err)),
            }
            if !self.line.ends_with(b"\n") {
                return Err(SmtpError::Protocol("a reply line longer than 4 KiB".into()));
            }
            // Some servers greet in Latin-1: the text is only shown to people.
            let line = String::from_utf8_lossy(&self.line);
            let (code, last, text) = parse_line(line.trim_end_matches(['\r', '\n']))?;
            lines.push(text.to_owned());
            if last {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= MAX_LINES {
                return Err(SmtpError::Protocol("a reply of more than 100 lines".into()));
            }
        }
    }
}

/// The first negative reply of a pipelined MAIL, RCPT (a refusal of MAIL is
/// about the sender).
fn first_refusal(replies: Vec<Reply>) -> Option<SmtpError> {
    let (position, reply) = replies.into_iter().enumerate().find(|(_, reply)| reply.code / 100 != 2)?;
    let refusal = judge(reply, 2);
    Some(if position == 0 { refusal.of_sender() } else { refusal })
}

/// `250-text` → (250, false, "text"); `250 text` or `250` → (250, true, …).
fn parse_line(line: &str) -> Result<(u16, bool, &str), SmtpError> {
    let bad = || SmtpError::Protocol(format!("the reply line {:?}", line.chars().take(80).collect::<String>()));
    let digits = line.get(..3).filter(|code| code.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
    let code: u16 = digits.parse().map_err(|_| bad())?;
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    match line.as_bytes().get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(bad()),
    }
}

/// The reply if it is of the `wanted` code's class (2xx, 3xx: what RFC 5321
/// asks clients to look at), else the error it makes.
fn check(reply: Reply, wanted: u16) -> Result<Reply, SmtpError> {
    if reply.code / 100 == wanted / 100 { Ok(reply) } else { Err(judge(reply, wanted / 100)) }
}

/// A reply that is not the one wanted: a refusal when it is 4xx or 5xx,
/// else a protocol error.
fn judge(reply: Reply, wanted_class: u16) -> SmtpError {
    if matches!(reply.code / 100, 4 | 5) {
        SmtpError::Refused(reply)
    } else {
        SmtpError::Protocol(format!("{} where a {wanted_class}xx reply was due", reply.to_line()))
    }
}

/// Appends the DATA section: `message` with every line that starts with a
/// dot given a second one (RFC 5321 4.5.2), then the final `.` line.
fn dot_stuff_into(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + 8);
    let mut rest = message;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(at) = memchr::memmem::find(rest, b"\n.") {
        out.extend_from_slice(&rest[..=at]);
        out.push(b'.');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// A plain or TLS socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff_into(message, &mut out);
        out
    }

    #[test]
    fn lines_starting_with_a_dot_get_a_second_one() {
        assert_eq!(stuffed(b"a\r\n.b\r\n..c\r\nd.e\r\n"), b"a\r\n..b\r\n...c\r\nd.e\r\n.\r\n");
        assert_eq!(stuffed(b".first\r\n"), b"..first\r\n.\r\n");
        assert_eq!(stuffed(b"x\r\n.\r\ny\r\n"), b"x\r\n..\r\ny\r\n.\r\n");
    }

    #[test]
    fn the_final_dot_gets_a_line_of_its_own() {
        assert_eq!(stuffed(b"no line end"), b"no line end\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
    }

    #[test]
    fn reply_lines_are_parsed_and_garbage_refused() {
        assert_eq!(parse_line("250-mail.example.org").unwrap(), (250, false, "mail.example.org"));
        assert_eq!(parse_line("550 5.1.1 no such user").unwrap(), (550, true, "5.1.1 no such user"));
        assert_eq!(parse_line("250").unwrap(), (250, true, ""));
        for garbage in ["", "25", "abc hello", "2500 x", "250x", "099 low", "999 high", "HTTP/1.1 400"] {
            assert!(matches!(parse_line(garbage), Err(SmtpError::Protocol(_))), "{garbage:?}");
        }
    }

    #[test]
    fn only_4xx_and_5xx_are_refusals() {
        let reply = |code| Reply { code, lines: vec!["text".into()] };
        assert!(matches!(check(reply(451), 250), Err(SmtpError::Refused(_))));
        assert!(matches!(check(reply(550), 354), Err(SmtpError::Refused(_))));
        assert!(matches!(check(reply(250), 354), Err(SmtpError::Protocol(_))));
        assert_eq!(check(reply(354), 354).unwrap().code, 354);
        assert_eq!(check(reply(251), 250).unwrap().code, 251, "251 forwards: accepted");
        assert_eq!(reply(550).to_line(), "550 text");
    }
}
