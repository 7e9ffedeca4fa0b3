//! `lifeboat serve`

use tokio_util::sync::CancellationToken;

use super::{Context, Failure, Outcome, exit};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(context: &Context, _args: Args) -> Outcome {
    let config = context.config()?;
    let registry = context.registry(&config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    crate::serve::run(config, registry, shutdown).await.map_err(|err| Failure::new(exit::FAILED, err))?;
    Ok(exit::OK)
}

/// SIGINT (Ctrl-C) or SIGTERM (systemd, kill) starts a graceful shutdown.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop lifeboat serve with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
