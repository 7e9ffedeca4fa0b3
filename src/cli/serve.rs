//! `lifeboat serve`

use super::{Context, Failure, Outcome, exit};

pub async fn run(context: &Context) -> Outcome {
    let (config, registry) = context.open().await?;
    crate::serve::run(config, registry, super::stop_on_signal()).await.map_err(Failure::failed)?;
    Ok(exit::OK)
}
