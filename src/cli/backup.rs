//! `lifeboat backup --out FILE` and `lifeboat restore FILE`

use std::path::PathBuf;

use super::output::progress_count;
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
    let bar = progress_count("rows");
    let written = backup(&registry, &args.out, server_name, &Actor::cli(), &|rows| bar.set_position(rows)).await;
    bar.finish_and_clear();
    let rows = written.map_err(Failure::failed)?;
    println!("Wrote {rows} rows to {}.", args.out.display());
    println!("Keep it on another host than Synapse's database; `lifeboat restore FILE` loads it.");
    Ok(exit::OK)
}

pub async fn run_restore(context: &Context, args: RestoreArgs) -> Outcome {
    let (config, registry) = context.open().await?;
    let bar = progress_count("rows");
    let server_name = &config.homeserver.server_name;
    let restored =
        restore(&registry, &args.file, args.replace, server_name, &Actor::cli(), &|rows| bar.set_position(rows)).await;
    bar.finish_and_clear();
    let restored = restored.map_err(|err| Failure::failed(format!("nothing was restored: {err}")))?;
    let kept = if restored.kept_own_credentials { crate::backup::KEPT_OWN_CREDENTIALS } else { "" };
    println!("Restored {} rows from {}{kept}.", restored.rows, args.file.display());
    Ok(exit::OK)
}
