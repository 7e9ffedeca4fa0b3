//! A small pool of SMTP connections (see `smtp.rs` for the conversation).
//!
//! Every socket has `TCP_NODELAY`: a message's writes must not wait for the
//! server's delayed ACK (about 40 ms on Linux), which would cap a
//! connection at ~22 messages per second.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::smtp::{Connection, Setup, SmtpError};

/// How long connecting (TCP, greeting, EHLO, TLS, AUTH) may take. (Each
/// step of sending a message has its own limit: see `smtp.rs`.)
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection idle for longer is checked with NOOP before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(2);
/// A connection idle for longer is closed rather than reused (servers
/// drop idle clients after a few minutes anyway).
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Where and how to connect.
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub setup: Setup,
}

/// What went wrong, before it is put into words by the mailer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The TCP connection could not be opened (refused, unreachable, DNS).
    Connect(io::Error),
    /// No answer in time; the stage says what was going on.
    Timeout(&'static str),
    /// Sending a message failed: a refusal, or the network.
    Smtp(SmtpError),
    /// Setting up a connection failed (greeting, EHLO, TLS, AUTH): about
    /// the server or the config, not the message.
    Setup(SmtpError),
    /// The pool was shut down.
    Closed,
}

pub(crate) struct Pool {
    endpoint: Endpoint,
    idle: Mutex<Vec<Idle>>,
    /// At most this many connections open at once.
    permits: Semaphore,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Pool {
    pub fn new(endpoint: Endpoint, size: u32) -> Pool {
        Pool { endpoint, idle: Mutex::new(Vec::new()), permits: Semaphore::new(size as usize) }
    }

    /// Sends one message over a pooled connection; `Ok` once the server
    /// accepted it after DATA.
    pub async fn send(&self, from: &str, to: &str, message: &[u8]) -> Result<(), Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Closed)?;
        let mut conn = self.checkout().await?;
        let result = conn.send(from, to, message).await;
        // A connection in an unknown state (a timeout, garbage) is dropped.
        self.checkin(conn);
        result.map_err(Failure::Smtp)
    }

    /// Opens (or reuses) a connection and checks it with NOOP.
    pub async fn test_connection(&self) -> Result<bool, Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Closed)?;
        let mut conn = self.checkout().await?;
        let alive = tokio::time::timeout(CONNECT_TIMEOUT, conn.noop())
            .await
            .map_err(|_| Failure::Timeout("checking the connection to"))?;
        self.checkin(conn);
        Ok(alive)
    }

    /// Closes every idle connection with QUIT; later sends fail.
    pub async fn shutdown(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap());
        for idle in idle {
            let _ = tokio::time::timeout(Duration::from_secs(5), idle.conn.quit()).await;
        }
    }

    fn checkin(&self, conn: Connection) {
        if !conn.is_broken() {
            self.idle.lock().unwrap().push(Idle { conn, since: Instant::now() });
        }
    }

    async fn checkout(&self) -> Result<Connection, Failure> {
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
                let alive = tokio::time::timeout(CONNECT_TIMEOUT, conn.noop()).await;
                if !matches!(alive, Ok(true)) {
                    continue;
                }
            }
            return Ok(conn);
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let endpoint = &self.endpoint;
        let opening = async {
            let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await.map_err(Failure::Connect)?;
            // The point of this module: see the module docs.
            tcp.set_nodelay(true).map_err(Failure::Connect)?;
            Connection::open(tcp, &endpoint.setup).await.map_err(Failure::Setup)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout("connecting to")),
        }
    }
}
