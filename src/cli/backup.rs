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
    /// What it holds and the backup lacks is lost: asks for confirmation
    /// first (pass --yes when stdin is not a terminal).
    #[arg(long)]
    replace: bool,
    /// With --replace: do not ask.
    #[arg(long, requires = "replace")]
    yes: bool,
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
    if args.replace && !args.yes {
        let held = registry.status().await.map_err(Failure::failed)?;
        let count = |rows: &[(String, i64)]| rows.iter().map(|(_, n)| n).sum::<i64>();
        let question = format!(
            "Empty the registry ({}, {}, {}) and load {} in its place? What it holds and the backup lacks is lost. [y/N]",
            plural::count(count(&held.accounts), "account", "accounts"),
            plural::count(count(&held.contacts), "contact", "contacts"),
            plural::count(held.incidents_open, "open incident", "open incidents"),
            args.file.display()
        );
        let without_terminal =
            "stdin is not a terminal, so lifeboat cannot ask before emptying the registry: pass --yes with --replace";
        if !super::output::ask_yes(&question, without_terminal).await? {
            println!("Nothing changed.");
            return Ok(exit::OK);
        }
    }
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
