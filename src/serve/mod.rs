//! `lifeboat serve`: one long-running process with the web page (and
//! `/healthz`; `/metrics` on an address of its own), the admin-room bot, the watcher and the delivery
//! worker. Each face runs when its config section is there. SIGINT or
//! SIGTERM stops it within [`SHUTDOWN_GRACE`]: sends in flight finish and
//! are marked, claimed ones go back to pending, nothing is lost or doubled.

mod alerts;
mod http;
mod listen;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::config::Config;
use crate::registry::Registry;

/// What a client gets for sending its request (headers, then body) and
/// for sitting idle between requests: generous for a person on a slow
/// link, short for a slowloris.
const LIMITS: listen::Limits = listen::Limits {
    headers: Duration::from_secs(10),
    body: Duration::from_secs(10),
    idle: Duration::from_secs(15),
    connections: 256,
    per_client: 32,
};

/// How long a shutdown may take before the remaining tasks are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {key} = {bind}: {source}")]
    Bind { key: &'static str, bind: std::net::SocketAddr, source: std::io::Error },
}

/// Runs until `shutdown` is cancelled (the CLI cancels it on SIGINT/SIGTERM).
pub async fn run(config: Config, registry: Registry, shutdown: CancellationToken) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let state = Arc::new(Services::new(config.clone(), registry.clone(), shutdown.clone()));
    let mut tasks = JoinSet::new();

    match &config.web {
        Some(web) => {
            let listener = tokio::net::TcpListener::bind(web.bind).await.map_err(|source| ServeError::Bind {
                key: "web.bind",
                bind: web.bind,
                source,
            })?;
            let pages = crate::web::router(crate::web::WebState::new(&state, web));
            let app = http::public_router(state.clone(), pages);
            let connections = web.max_connections as usize;
            let limits = listen::Limits { connections, per_client: listen::per_client(connections), ..LIMITS };
            tracing::info!(bind = %web.bind, "web server listening");
            let proxies = web.trusted_proxies.clone();
            tasks.spawn(listen::serve(listener, app, limits, proxies, shutdown.clone()));
        }
        None => tracing::info!("web server off: no [web] section (it also serves /healthz)"),
    }
    let metrics = &config.metrics;
    match tokio::net::TcpListener::bind(metrics.bind).await {
        Ok(listener) => {
            // Scrapers and health checks, not the public: no cap per client.
            let limits = listen::Limits { connections: 16, per_client: 16, ..LIMITS };
            tracing::info!(bind = %metrics.bind, "metrics listening");
            let metrics_app = http::metrics_router(state.clone());
            tasks.spawn(listen::serve(listener, metrics_app, limits, Vec::new(), shutdown.clone()));
        }
        Err(source) if metrics.configured => {
            return Err(ServeError::Bind { key: "metrics.bind", bind: metrics.bind, source });
        }
        Err(err) => tracing::warn!(
            bind = %metrics.bind,
            error = %err,
            "/metrics is not served: its default address is taken; set [metrics] bind"
        ),
    }

    let (room_alerts, room_inbox) = tokio::sync::mpsc::unbounded_channel::<String>();
    let bot_on = config.bot.as_ref().is_some_and(|bot| bot.admin_room.is_some() || !bot.admins.is_empty());
    let alerts = alerts::ServeAlerts::new(state.clone(), bot_on.then_some(room_alerts));
    tasks.spawn(crate::watch::run(state.clone(), alerts));
    tasks.spawn(crate::worker::run(state.clone()));
    if bot_on {
        tasks.spawn(crate::bot::run(state.clone(), room_inbox, shutdown.clone()));
    } else {
        drop(room_inbox);
        tracing::info!("bot off: no [bot] section with admin_room or admins");
    }
    tracing::info!("lifeboat serve is running");

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    // Work started on request (a notify confirmed in the bot) winds down
    // too: sends in flight finish and are marked, the rest are released.
    state.background.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
        state.background.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "some tasks did not stop within {}s; deliveries left in flight resume on the next start",
            SHUTDOWN_GRACE.as_secs()
        );
        tasks.abort_all();
    }
    registry.close().await;
    tracing::info!("stopped");
    Ok(())
}
