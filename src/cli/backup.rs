//! `lifeboat backup --out FILE` and `lifeboat restore FILE`

use std::path::PathBuf;

use super::{Context, Failure, Outcome, exit};
use crate::backup::{backup, restore};
use crate::registry::Actor;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup (replaced atomically when complete).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A file written by `lifeboat backup`.
    file: PathBuf,
    /// Empty a registry that already holds data, then restore into it.
    #[arg(long)]
    replace: bool,
}

pub async fn run_backup(context: &Context, args: BackupArgs) -> Outcome {
    let (config, registry) = context.open().await?;
    let server_name = &config.homeserver.server_name;
    let rows = backup(&registry, &args.out, server_name, &Actor::cli()).await.map_err(Failure::failed)?;
    println!("Wrote {rows} rows to {}.", args.out.display());
    println!("Keep it on another host than Synapse's database; `lifeboat restore FILE` loads it.");
    Ok(exit::OK)
}

pub async fn run_restore(context: &Context, args: RestoreArgs) -> Outcome {
    let (config, registry) = context.open().await?;
    let restored = restore(&registry, &args.file, args.replace, &config.homeserver.server_name, &Actor::cli())
        .await
        .map_err(|err| Failure::failed(format!("nothing was restored: {err}")))?;
    let kept = if restored.kept_own_credentials { crate::backup::KEPT_OWN_CREDENTIALS } else { "" };
    println!("Restored {} rows from {}{kept}.", restored.rows, args.file.display());
    Ok(exit::OK)
}
