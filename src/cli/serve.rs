//! `lifeboat serve`

use tokio_util::sync::CancellationToken;

use super::{Context, Failure, Outcome, exit};

pub async fn run(context: &Context) -> Outcome {
    let (config, registry) = context.open().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(super::stop_on_signal(shutdown.clone()));
    crate::serve::run(config, registry, shutdown).await.map_err(Failure::failed)?;
    Ok(exit::OK)
}
