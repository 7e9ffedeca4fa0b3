//! `lifeboat backup --out FILE` and `lifeboat restore FILE`

use std::path::PathBuf;

use super::output::progress_count;
use super::{Context, Failure, Outcome, exit};
use crate::backup::{backup, restore};
use crate::plural;
use crate::registry::Actor;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup (replaced atomically when complete);
    /// encrypted to backup.encrypt_to's age keys when it names any.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A file written by `lifeboat backup`.
    file: PathBuf,
    /// The age key file (from `age-keygen`) of one of the keys an encrypted
    /// backup was written to.
    #[arg(long, value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// Empty a registry that already holds data, then restore into it.
    #[arg(long)]
    replace: bool,
}

pub async fn run_backup(context: &Context, args: BackupArgs) -> Outcome {
    let (config, registry) = context.open().await?;
    let server_name = &config.homeserver.server_name;
    let bar = progress_count("rows");
    let keys = &config.backup.encrypt_to;
    let written = backup(&registry, &args.out, keys, server_name, &Actor::cli(), &|rows| bar.set_position(rows)).await;
    bar.finish_and_clear();
    let rows = written.map_err(Failure::failed)?;
    if keys.is_empty() {
        println!("Wrote {rows} rows to {}, not encrypted.", args.out.display());
        println!(
            "It holds lifeboat's admin token and the key that signs claim links: keep it as a secret, on another host than Synapse's database (backup.encrypt_to encrypts it). `lifeboat restore FILE` loads it."
        );
    } else {
        println!(
            "Wrote {rows} rows to {}, encrypted to {}.",
            args.out.display(),
            plural::count(keys.len() as i64, "age key", "age keys")
        );
        println!(
            "Keep it on another host than Synapse's database; `lifeboat restore FILE --identity KEYFILE` loads it."
        );
    }
    Ok(exit::OK)
}

pub async fn run_restore(context: &Context, args: RestoreArgs) -> Outcome {
    let (config, registry) = context.open().await?;
    let bar = progress_count("rows");
    let server_name = &config.homeserver.server_name;
    let identity = args.identity.as_deref();
    let report = |rows| bar.set_position(rows);
    let restored = restore(&registry, &args.file, identity, args.replace, server_name, &Actor::cli(), &report).await;
    bar.finish_and_clear();
    let restored = restored.map_err(|err| Failure::failed(format!("nothing was restored: {err}")))?;
    let kept = if restored.kept_own_credentials { crate::backup::KEPT_OWN_CREDENTIALS } else { "" };
    println!("Restored {} rows from {}{kept}.", restored.rows, args.file.display());
    // The admin may believe the file was safe to keep anywhere.
    if identity.is_some() && !restored.encrypted {
        let advice = if config.backup.encrypt_to.is_empty() {
            "set backup.encrypt_to so that later backups are encrypted"
        } else {
            "backups made now are (backup.encrypt_to is set): delete plain copies"
        };
        eprintln!(
            "note: {} was not encrypted (--identity was not needed): it holds lifeboat's secrets in the clear; {advice}",
            args.file.display()
        );
    }
    Ok(exit::OK)
}
