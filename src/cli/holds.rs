//! `lifeboat holds list|make|claim|release`: the lost IDs lifeboat holds
//! for their owners, and what an operator on the lifeboat host may do with
//! them.

use std::io::{BufRead, IsTerminal};

use secrecy::SecretString;

use super::output::{json_on_failure, print_json, show_progress, time};
use super::{Context, Failure, Outcome, exit};

use crate::config::Config;
use crate::holds::{HoldReport, NamesReport, hand_back, hold_lost_ids, password_problem, release, restore_held_names};
use crate::registry::{Account, AccountState, Actor, Registry};
use crate::user_id::UserId;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List held, claimed and taken IDs, and lost IDs Synapse creates for nobody.
    ///
    /// held: re-created and locked by lifeboat, waiting for its owner's
    /// claim. claimed: handed back. recreated: registered by someone else
    /// before lifeboat could hold it; a stranger until settled with
    /// `holds claim`. missing: lost, and Synapse refused to create it for
    /// anyone (`hold_refused` in the JSON: its error, such as M_EXCLUSIVE
    /// for an appservice's namespace); nothing waits for its hold. A held ID
    /// whose display name is not back on Synapse yet says so
    /// (`display_name_due_at` in the JSON).
    List {
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Hold every lost ID that is still free, now (and, while there are such,
    /// the bot.admins IDs of this homeserver that no listing saw; and, on
    /// every run, the rooms' joined local members no listing saw: held when
    /// Synapse has no account for them, recorded as a stranger's when their
    /// account was made after lifeboat last read a room they are in).
    ///
    /// `serve`'s watcher does this by itself (recovery.hold = "auto"), and
    /// `incident open` too (unless recovery.hold = "off"). Each account is
    /// created only if its ID is free (lifeboat never changes one it did not
    /// create), then locked, with its verified emails; admins' IDs first.
    /// Then the held accounts get their display names back (after every ID
    /// is safe: a name costs Synapse more than the rest of a hold).
    /// Safe to run again: held IDs are skipped, interrupted holds resumed,
    /// and lost IDs Synapse refused to create are tried again (its rules may
    /// have changed since; otherwise only a sync that finds new accounts
    /// lost has them tried again).
    /// Ctrl-C stops it between holds (those under way finish). One hold run
    /// at a time: while another holds (serve's watcher, `incident open`),
    /// this says who and leaves the IDs to it.
    Make {
        /// Print what was done as JSON on stdout (`holds`: held, taken,
        /// failed as [id, reason] pairs, unregistrable, stopped,
        /// own_made_again, own_locked; `display_names`: restored, not_held,
        /// failed, first_failure, stopped, or null when another run restores
        /// them or the holds were stopped).
        #[arg(long)]
        json: bool,
    },
    /// Give an ID to its person with a new password (the CLI way of a claim).
    ///
    /// For a held ID, or one someone else registered again (recreated): the
    /// account is unlocked, gets the new password, every device is logged
    /// out, and the ID is trusted again (the bot obeys it if it is in
    /// bot.admins). The password is read from the terminal (twice, not
    /// shown), or as one line from stdin when that is not a terminal. It is
    /// never stored or logged. One hand-over of an ID at a time: while its
    /// claim link is being used, this says so and changes nothing.
    Claim {
        /// The Matrix ID, e.g. @alice:example.org.
        id: String,
    },
    /// End a hold for good: deactivate the held account, so nobody can ever
    /// register its ID again.
    ///
    /// Synapse cannot delete an account, so this cannot be undone. Asks for
    /// confirmation first (pass --yes when stdin is not a terminal).
    Release {
        /// The Matrix ID, e.g. @alice:example.org.
        id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (config, registry) = context.open().await?;
    match command {
        Command::List { json } => {
            let holds = registry.holds().await?;
            if json {
                print_json(&holds)?;
            } else if holds.is_empty() {
                println!("No held, claimed or taken IDs.");
            } else {
                for hold in &holds {
                    let note = match (&hold.hold_refused, hold.display_name_due_at) {
                        (Some(errcode), _) => format!("  (Synapse creates it for nobody: {errcode})"),
                        (None, Some(_)) => "  (display name not restored yet)".to_owned(),
                        (None, None) => String::new(),
                    };
                    println!("{:<10} {}  {}{note}", hold.state, time(hold.since), hold.user_id);
                }
                let count = |state| holds.iter().filter(|hold| hold.state == state).count();
                println!(
                    "{} held, {} claimed, {} taken by someone else (recreated), {} Synapse creates for nobody (missing).",
                    count(AccountState::Held),
                    count(AccountState::Claimed),
                    count(AccountState::Recreated),
                    count(AccountState::Missing)
                );
            }
            Ok(exit::OK)
        }
        Command::Make { json } => {
            let made = json_on_failure(make(context, &config, &registry).await, json)?;
            if json {
                print_json(&made)?;
            } else {
                show_made(&made);
            }
            Ok(if made.all_done() { exit::OK } else { exit::FAILED })
        }
        Command::Claim { id } => {
            let account = known_account(&registry, &id).await?;
            let user_id = &account.user_id;
            if !matches!(account.state, AccountState::Held | AccountState::Recreated) {
                return Err(Failure::failed(format!(
                    "{user_id} is {}, not held or taken: `lifeboat holds claim` gives back only a held ID or one someone else registered again",
                    account.state.as_str()
                )));
            }
            let password = read_new_password(user_id.as_str()).await?;
            let client = context.admin_client_recovering(&config, &registry).await?;
            hand_back(&registry, &client, &account, &password, &Actor::cli()).await.map_err(Failure::failed)?;
            println!(
                "{user_id} is its person's again: sign in with the new password at {} (every other session was logged out).",
                config.homeserver.public_url
            );
            Ok(exit::OK)
        }
        Command::Release { id, yes } => {
            let account = known_account(&registry, &id).await?;
            let user_id = account.user_id;
            if account.state != AccountState::Held {
                return Err(Failure::failed(format!(
                    "{user_id} is {}, not held: only a held ID can be released",
                    account.state.as_str()
                )));
            }
            if !yes && !confirm_release(user_id.as_str()).await? {
                println!("Nothing changed.");
                return Ok(exit::OK);
            }
            let client = context.admin_client_recovering(&config, &registry).await?;
            release(&registry, &client, &user_id, &Actor::cli()).await.map_err(Failure::failed)?;
            println!("Released {user_id}: the account is deactivated, and its ID can never be registered again.");
            Ok(exit::OK)
        }
    }
}

/// What `holds make` did: the holds, then the held accounts' display names
/// (`None`: another run restores them, or the holds were stopped first).
#[derive(serde::Serialize)]
struct Made {
    holds: HoldReport,
    display_names: Option<NamesReport>,
}

impl Made {
    /// Nothing failed or was stopped: no run is needed again.
    fn all_done(&self) -> bool {
        let names_done = self.display_names.as_ref().is_none_or(|names| names.failed == 0 && !names.stopped);
        self.holds.failed.is_empty() && !self.holds.stopped && names_done
    }
}

/// Holds every lost ID that is still free, then restores the held
/// accounts' display names, with progress bars on a terminal.
async fn make(context: &Context, config: &Config, registry: &Registry) -> Result<Made, Failure> {
    let client = context.admin_client_recovering(config, registry).await?;
    // Ctrl-C stops between holds: those under way finish, the rest wait
    // for the next run.
    let stop = super::stop_on_signal();
    let bar = super::output::progress_bar("holding lost IDs");
    let progress = |done, total| show_progress(&bar, done, total);
    let holds = hold_lost_ids(config, registry, &client, &Actor::cli(), true, &progress, &stop)
        .await
        .map_err(Failure::failed)?;
    bar.finish_and_clear();
    if holds.stopped {
        return Ok(Made { holds, display_names: None });
    }
    let bar = super::output::progress_bar("restoring display names");
    let progress = |done, total| show_progress(&bar, done, total);
    let display_names = restore_held_names(registry, &client, &progress, &stop).await?;
    bar.finish_and_clear();
    Ok(Made { holds, display_names })
}

fn show_made(Made { holds, display_names }: &Made) {
    if holds.is_empty() {
        println!("No lost ID is waiting to be held.");
    } else {
        println!("{}.", holds.summary());
    }
    for (user_id, reason) in holds.failed.iter().take(10) {
        eprintln!("not held yet: {user_id}: {reason}");
    }
    match display_names {
        None if holds.stopped => {}
        None => println!("Display names are being restored by another run."),
        Some(names) => {
            if names.restored > 0 {
                let accounts = crate::plural::count(names.restored as i64, "held account", "held accounts");
                println!("Restored the display names of {accounts}.");
            }
            if names.not_held > 0 {
                let accounts = crate::plural::count(names.not_held as i64, "held account is", "held accounts are");
                println!(
                    "{accounts} no longer held on Synapse (gone, or someone else's account now): their names were left alone; the next sync settles them."
                );
            }
            if let Some(reason) = &names.first_failure {
                eprintln!("{} display names not restored yet (tried again next time): {reason}", names.failed);
            }
        }
    }
}

/// The account of a Matrix ID the registry knows, or the sentence saying why not.
async fn known_account(registry: &Registry, text: &str) -> Result<Account, Failure> {
    let user_id =
        UserId::parse(text).map_err(|err| Failure::new(exit::USAGE, format!("`{text}` is not a Matrix ID: {err}")))?;
    registry.account(&user_id).await?.ok_or_else(|| {
        Failure::failed(format!("{user_id} is not in the registry: `lifeboat holds list` shows the held IDs"))
    })
}

/// From the terminal, twice and unechoed; else one line of stdin.
async fn read_new_password(user_id: &str) -> Result<SecretString, Failure> {
    let user_id = user_id.to_owned();
    let read = tokio::task::spawn_blocking(move || -> Result<String, Failure> {
        let unreadable = |err: std::io::Error| Failure::failed(format!("cannot read the password: {err}"));
        let password = if std::io::stdin().is_terminal() {
            let first = rpassword::prompt_password(format!("New password for {user_id}: ")).map_err(unreadable)?;
            let again = rpassword::prompt_password("The same password again: ").map_err(unreadable)?;
            if first != again {
                return Err(Failure::new(exit::USAGE, "the two passwords are not the same; nothing changed"));
            }
            first
        } else {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(unreadable)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        };
        if let Some(problem) = password_problem(&password, &user_id) {
            return Err(Failure::new(exit::USAGE, format!("{problem} Nothing changed.")));
        }
        Ok(password)
    });
    let password = read.await.map_err(Failure::failed)??;
    Ok(SecretString::from(password))
}

async fn confirm_release(user_id: &str) -> Result<bool, Failure> {
    let answer = super::output::ask(
        &format!(
            "Release {user_id}? Its account is deactivated for good and the ID can never be registered again. Type the ID to confirm:"
        ),
        "stdin is not a terminal, so lifeboat cannot ask before releasing: pass --yes to release",
    )
    .await?;
    Ok(answer == user_id)
}
