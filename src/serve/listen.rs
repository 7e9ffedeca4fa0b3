//! serve's HTTP listener: axum's router behind hyper with the limits a
//! public page needs against slow or idle clients (slowloris): a deadline
//! for each request's headers, a deadline for its body, an idle timeout
//! for kept-alive connections, and caps on open connections, in all and
//! per client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Larger than any form lifeboat serves (the pages refuse more than 8 KiB
/// themselves, with their own page).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Limits for one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a request's first byte until its headers are complete.
    pub headers: Duration,
    /// For the whole body once the headers are in.
    pub body: Duration,
    /// Without a byte either way, a connection is closed after this; a
    /// connection being closed is dropped after as long again, its
    /// answer read or not.
    pub idle: Duration,
    /// Connections open at once; more wait in the kernel's queue.
    pub connections: usize,
    /// Connections one client may hold at once (an IPv6 /64 counts as one);
    /// more are closed at once, so one host cannot take every slot.
    pub per_client: usize,
}

/// How many connections one client may hold when `connections` may be open
/// in all: an eighth, so a host needs company to fill the listener, and
/// enough for a few people behind one NAT (a browser opens up to six).
pub fn per_client(connections: usize) -> usize {
    (connections / 8).max(2)
}

/// Open connections per client, and the peers (reverse proxies) not
/// counted, since every visitor comes through them.
struct Clients {
    per_client: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<String, usize>>,
}

/// One admitted connection; its counts go down when it is dropped.
struct Admitted {
    clients: Arc<Clients>,
    keys: Vec<String>,
}

impl Clients {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let peer = peer.to_canonical();
        if self.exempt.contains(&peer) {
            return Some(Admitted { clients: self.clone(), keys: Vec::new() });
        }
        // One host's site (an IPv6 /48) holds twice a client's part.
        let mut caps = vec![(crate::web::guard::client_key(peer), self.per_client)];
        caps.extend(crate::web::guard::site_key(peer).map(|site| (site, 2 * self.per_client)));
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if caps.iter().any(|(key, cap)| open.get(key).is_some_and(|count| count >= cap)) {
            return None;
        }
        let keys: Vec<String> = caps.into_iter().map(|(key, _)| key).collect();
        for key in &keys {
            *open.entry(key.clone()).or_default() += 1;
        }
        Some(Admitted { clients: self.clone(), keys })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in &self.keys {
            if let Some(count) = open.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in
/// flight finish. Connections from `exempt` peers (reverse proxies) are
/// not counted per client.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    exempt: Vec<IpAddr>,
    shutdown: CancellationToken,
) {
    let app = app.layer(axum::middleware::from_fn(move |request, next| body_within(limits.body, request, next)));
    let slots = Arc::new(Semaphore::new(limits.connections));
    let clients = Arc::new(Clients { per_client: limits.per_client, exempt, open: Mutex::default() });
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(admitted) = clients.admit(peer.ip()) else {
            tracing::debug!(%peer, "closed a connection: that client has as many open as it may");
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, shutdown).await;
            drop((admitted, slot));
        });
    }
    connections.close();
    connections.wait().await;
}

/// Reads the whole request body within `limit` before the handler runs: a
/// body trickled a byte at a time never gets to hold a handler (a timeout
/// per chunk would wait on it forever). Bodies here are small forms.
async fn body_within(limit: Duration, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response(),
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response(),
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let last_active = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stream = Watched { inner: stream, last_active: last_active.clone(), started };
    let handling = Arc::new(AtomicUsize::new(0));
    let service = {
        let handling = handling.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let answering = app.clone().oneshot(request);
            let handled = Handling::begin(&handling);
            async move {
                let answer = answering.await;
                drop(handled);
                answer
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.headers);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let idle_since = || started + Duration::from_millis(last_active.load(Ordering::Relaxed));
    // Once closing, an answer made has `limits.idle` to leave: a client
    // that stops reading would hold the connection forever. One still
    // being made (a slow Synapse behind it) is waited for.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = tokio::time::sleep_until(idle_since() + limits.idle), if closing.is_none() => {
                // Bytes moved meanwhile: wait again from then.
                if idle_since().elapsed() >= limits.idle {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(closing.unwrap_or(started) + limits.idle), if closing.is_some() => {
                if handling.load(Ordering::Relaxed) > 0 {
                    closing = Some(Instant::now());
                } else {
                    tracing::debug!(%peer, "closed a connection whose last answer was not read in time");
                    return;
                }
            }
        }
    }
}

/// A request being handled on a connection, counted while it is.
struct Handling(Arc<AtomicUsize>);

impl Handling {
    fn begin(count: &Arc<AtomicUsize>) -> Handling {
        count.fetch_add(1, Ordering::Relaxed);
        Handling(count.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes when a byte last moved, in ms since `started`.
struct Watched {
    inner: TcpStream,
    last_active: Arc<AtomicU64>,
    started: Instant,
}

impl Watched {
    fn touch(&self) {
        self.last_active.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(per_client: usize) -> Arc<Clients> {
        Arc::new(Clients { per_client, exempt: Vec::new(), open: Mutex::default() })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_ipv6_host_holds_no_more_than_twice_a_clients_part_across_its_48() {
        let clients = clients(2);
        // Two connections from each of a /48's /64s, until the /48 has four.
        let held: Vec<Admitted> = ["2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:2::1", "2001:db8:1:2::2"]
            .map(|peer| clients.admit(ip(peer)).unwrap())
            .into();
        assert!(clients.admit(ip("2001:db8:1:1::3")).is_none(), "the /64 has its part");
        assert!(clients.admit(ip("2001:db8:1:3::1")).is_none(), "another /64 of the same /48");
        let elsewhere = clients.admit(ip("2001:db8:2:1::1"));
        assert!(elsewhere.is_some(), "another /48 is another host");
        drop(held);
        assert!(clients.admit(ip("2001:db8:1:3::1")).is_some(), "counted down once closed");
    }

    #[test]
    fn an_ipv4_network_is_not_capped_as_one_host() {
        let clients = clients(2);
        let held: Vec<Admitted> =
            (1..=10).map(|host| clients.admit(ip(&format!("203.0.113.{host}"))).unwrap()).collect();
        let second = clients.admit(ip("203.0.113.1"));
        assert!(second.is_some(), "ten hosts of one /24 hold ten connections, and one of them a second");
        assert!(clients.admit(ip("203.0.113.1")).is_none(), "but not a third");
        drop(held);
    }
}
