//! A TCP relay to a real server that a test can cut, as a network failure
//! or a stopped database looks from lifeboat's side: open connections
//! drop and new ones are refused. Or it can go silent, as a server that
//! hangs looks: connections are taken and never answered, and how many
//! were open at once is counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: tokio::task::Id,
    silent: Arc<AtomicBool>,
    /// Silent connections open now, and the most open at once.
    open_silent: Arc<(AtomicUsize, AtomicUsize)>,
    /// Connections taken in all.
    accepted: Arc<AtomicUsize>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let open_silent: Arc<(AtomicUsize, AtomicUsize)> = Arc::default();
        let (relays, hush, open) = (tasks.clone(), silent.clone(), open_silent.clone());
        let accepted: Arc<AtomicUsize> = Arc::default();
        let counted = accepted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                if hush.load(Ordering::SeqCst) {
                    let now = open.0.fetch_add(1, Ordering::SeqCst) + 1;
                    open.1.fetch_max(now, Ordering::SeqCst);
                    let open = open.clone();
                    // Read (and drop) whatever comes until the client hangs up.
                    let unanswered = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
                        open.0.fetch_sub(1, Ordering::SeqCst);
                    });
                    relays.lock().unwrap().push(unanswered);
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                relays.lock().unwrap().push(relay);
            }
        });
        let accept_id = accept.id();
        tasks.lock().unwrap().push(accept);
        TcpProxy { port, tasks, accept: accept_id, silent, open_silent, accepted }
    }

    /// How many connections it has taken.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops the relayed connections, and from now on takes new ones
    /// without ever answering.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.tasks.lock().unwrap().retain(|task| {
            let relay = task.id() != self.accept;
            if relay {
                task.abort();
            }
            !relay
        });
    }

    /// The most connections open at once since [`Self::go_silent`].
    pub fn most_open_while_silent(&self) -> usize {
        self.open_silent.1.load(Ordering::SeqCst)
    }

    /// Drops every relayed connection and stops listening.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
