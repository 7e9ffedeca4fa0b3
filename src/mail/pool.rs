//! A small pool of SMTP connections, speaking SMTP through lettre's
//! `AsyncSmtpConnection` over sockets opened here.
//!
//! Why not lettre's own pooled `AsyncSmtpTransport`: it opens its sockets
//! without `TCP_NODELAY` and writes a message body and the final `.` in two
//! writes, so every message waits for the server's delayed ACK (about 40 ms
//! on Linux): at most ~22 messages per second per connection, far from the
//! 1,000/s lifeboat needs for a mass notice. Here every socket has
//! `TCP_NODELAY`, and everything else (EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA,
//! dot-stuffing) is still lettre's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::TlsMode;

/// How long connecting (TCP, greeting, EHLO, TLS, AUTH) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one message (MAIL, RCPT, DATA, body) may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection idle for longer is checked with NOOP before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(2);
/// A connection idle for longer is closed rather than reused (servers
/// drop idle clients after a few minutes anyway).
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Where and how to connect.
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub mode: TlsMode,
    /// For STARTTLS and implicit TLS.
    pub tls: Option<TlsParameters>,
    pub hello_name: ClientId,
    pub credentials: Option<Credentials>,
}

/// What went wrong, before it is put into words by the mailer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The TCP connection could not be opened (refused, unreachable, DNS).
    Connect(io::Error),
    /// No answer in time; the stage says what was going on.
    Timeout(&'static str),
    /// lettre's SMTP client failed while sending a message: a reply code,
    /// or the network.
    Smtp(lettre::transport::smtp::Error),
    /// lettre's SMTP client failed while setting up a connection (greeting,
    /// EHLO, TLS, AUTH): about the server or the config, not the message.
    Setup(lettre::transport::smtp::Error),
    /// The pool was shut down.
    Closed,
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(err: lettre::transport::smtp::Error) -> Self {
        Failure::Smtp(err)
    }
}

pub(crate) struct Pool {
    endpoint: Endpoint,
    idle: Mutex<Vec<Idle>>,
    /// At most this many connections open at once.
    permits: Semaphore,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl Pool {
    pub fn new(endpoint: Endpoint, size: u32) -> Pool {
        Pool { endpoint, idle: Mutex::new(Vec::new()), permits: Semaphore::new(size as usize) }
    }

    /// Sends one message over a pooled connection; `Ok` once the server
    /// answered 250 to the end of DATA.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Closed)?;
        let mut conn = self.checkout().await?;
        match tokio::time::timeout(SEND_TIMEOUT, conn.send(envelope, message)).await {
            Ok(Ok(_)) => {
                self.checkin(conn);
                Ok(())
            }
            // lettre has already closed the connection after an error.
            Ok(Err(err)) => Err(Failure::Smtp(err)),
            // The connection is in an unknown state: drop it.
            Err(_) => Err(Failure::Timeout("sending a message to")),
        }
    }

    /// Opens (or reuses) a connection and checks it with NOOP.
    pub async fn test_connection(&self) -> Result<bool, Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Closed)?;
        let mut conn = self.checkout().await?;
        let alive = tokio::time::timeout(CONNECT_TIMEOUT, conn.test_connected())
            .await
            .map_err(|_| Failure::Timeout("checking the connection to"))?;
        if alive {
            self.checkin(conn);
        }
        Ok(alive)
    }

    /// Closes every idle connection with QUIT; later sends fail.
    pub async fn shutdown(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap());
        for mut idle in idle {
            let _ = tokio::time::timeout(Duration::from_secs(5), idle.conn.quit()).await;
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        if !conn.has_broken() {
            self.idle.lock().unwrap().push(Idle { conn, since: Instant::now() });
        }
    }

    async fn checkout(&self) -> Result<AsyncSmtpConnection, Failure> {
        loop {
            let idle = self.idle.lock().unwrap().pop();
            let Some(Idle { mut conn, since }) = idle else {
                return self.connect().await;
            };
            let idle_for = since.elapsed();
            if idle_for > MAX_IDLE {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.quit()).await;
                continue;
            }
            if idle_for > CHECK_AFTER {
                let alive = tokio::time::timeout(CONNECT_TIMEOUT, conn.test_connected()).await;
                if !matches!(alive, Ok(true)) {
                    continue;
                }
            }
            return Ok(conn);
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(Failure::Smtp(err))) => Err(Failure::Setup(err)),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Timeout("connecting to")),
        }
    }

    async fn connect_now(&self) -> Result<AsyncSmtpConnection, Failure> {
        let endpoint = &self.endpoint;
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(Failure::Connect)?;
        // The point of this module: see the module docs.
        tcp.set_nodelay(true).map_err(Failure::Connect)?;

        let mut conn = match (endpoint.mode, &endpoint.tls) {
            (TlsMode::Implicit, Some(tls)) => {
                let stream = implicit_tls::wrap(tcp, tls.clone()).await?;
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &endpoint.hello_name).await?
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &endpoint.hello_name).await?,
        };
        match (endpoint.mode, &endpoint.tls) {
            (TlsMode::StartTls, Some(tls)) => conn.starttls(tls.clone(), &endpoint.hello_name).await?,
            (TlsMode::Opportunistic, Some(tls)) if conn.can_starttls() => {
                conn.starttls(tls.clone(), &endpoint.hello_name).await?
            }
            _ => {}
        }
        if let Some(credentials) = &endpoint.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}

/// Implicit TLS (`smtps://`) over a socket opened here.
///
/// lettre's public connection API takes a ready stream and reads the
/// greeting at once, so the TLS handshake has to happen first: it is done
/// with lettre's own (deprecated-as-public but stable in 0.11)
/// `AsyncNetworkStream`, which speaks `futures::io`, and adapted back to the
/// `tokio::io` traits that `connect_with_transport` wants.
#[allow(deprecated)]
mod implicit_tls {
    use super::*;
    use futures::io::{AsyncRead as FuturesRead, AsyncWrite as FuturesWrite};
    use lettre::transport::smtp::client::AsyncNetworkStream;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    #[derive(Debug)]
    pub(super) struct TlsStream {
        inner: AsyncNetworkStream,
        peer: SocketAddr,
    }

    pub(super) async fn wrap(tcp: TcpStream, tls: TlsParameters) -> Result<TlsStream, Failure> {
        let peer = tcp.peer_addr().map_err(Failure::Connect)?;
        let mut inner = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
        inner.upgrade_tls(tls).await?;
        Ok(TlsStream { inner, peer })
    }

    impl AsyncTokioStream for TlsStream {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.peer)
        }
    }

    impl AsyncRead for TlsStream {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let unfilled = buf.initialize_unfilled();
            match Pin::new(&mut self.inner).poll_read(cx, unfilled) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for TlsStream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }
}
