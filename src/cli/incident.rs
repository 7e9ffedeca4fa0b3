//! `lifeboat incident open|list|show|resolve`

use std::path::PathBuf;

use super::output::{ask_yes, print_json, time};
use super::{Context, Failure, Outcome, exit};
use crate::campaign::{CampaignError, open_incident, resolve_incident};
use crate::notify::NotifyProgress;
use crate::registry::{Actor, IncidentScope, IncidentSummary};
use tokio_util::sync::CancellationToken;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Open an incident: snapshot the affected accounts and keep the postmortem.
    ///
    /// By default the affected accounts are those lost: missing, or held for
    /// their owners, plus recreated ones no incident covered before; with
    /// `--affected all`,
    /// every account. To make that current (and whose account still works,
    /// which the notices say), it syncs first, recovering lifeboat's account
    /// through the shared secret if every admin token is rejected, as after
    /// a wipe; when it cannot, it says why and uses what the last complete
    /// sync found. Then it holds the lost IDs (recovery.hold), first waiting
    /// for another hold run (serve's watcher) to end, so the notices find
    /// them held. Ctrl-C before the incident is recorded opens none; while
    /// its lost IDs are held, the holds under way finish and the rest wait
    /// for `notify` (exit 130 either way; a stop after the holds changes nothing).
    Open {
        /// A short title, e.g. "Database lost on 2026-11-25".
        #[arg(long)]
        title: String,
        /// The postmortem, in Markdown: what happened and what to do now.
        #[arg(long, value_name = "FILE.md")]
        postmortem: PathBuf,
        /// Who is affected.
        #[arg(long, value_enum, default_value = "missing")]
        affected: Scope,
        /// Open it even though an open incident already covers some of the
        /// same accounts (their people then get a second notice and token).
        #[arg(long)]
        force: bool,
        /// Print the new incident as JSON (with its `id`).
        #[arg(long)]
        json: bool,
    },
    /// List incidents, newest first.
    List {
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show an incident: who is affected, who can be reached, deliveries.
    Show {
        /// The incident's number, as `incident list` shows it.
        id: i64,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Resolve an incident and delete its unused registration tokens in Synapse.
    ///
    /// An incident cannot be reopened: its notices stop, and nobody gets a
    /// token from it any more (held IDs stay held). Asks for confirmation
    /// first (pass --yes when stdin is not a terminal).
    Resolve {
        /// The incident's number, as `incident list` shows it.
        id: i64,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Scope {
    /// Lost accounts: missing or held (and recreated ones no incident covered before).
    Missing,
    /// Every account in the registry.
    All,
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (config, registry) = context.open().await?;
    match command {
        Command::Open { title, postmortem, affected, force, json } => {
            let title = title.trim();
            let markdown = std::fs::read_to_string(&postmortem).map_err(|err| {
                Failure::new(exit::USAGE, format!("cannot read the postmortem {}: {err}", postmortem.display()))
            })?;
            let scope = match affected {
                Scope::Missing => IncidentScope::Missing,
                Scope::All => IncidentScope::All,
            };
            // Ctrl-C before the incident is recorded opens none; while its
            // lost IDs are held, the holds under way finish, the rest wait.
            let stop = super::stop_on_signal();
            let notes = StderrNotes { stop: Some(stop.clone()) };
            let opened = open_incident(&config, &registry, title, &markdown, scope, force, &Actor::cli(), &notes)
                .await
                .map_err(|err| match err {
                    CampaignError::Registry(crate::registry::Error::AlreadyCovered(ref covering)) => Failure::new(
                        exit::USAGE,
                        format!(
                            "{err}; send that incident's notices (`lifeboat notify {}`), resolve it first, or pass --force to open another anyway",
                            covering[0].0
                        ),
                    ),
                    // Checked before anything else is done.
                    CampaignError::BadText(_) => Failure::new(exit::USAGE, err),
                    CampaignError::StoppedOpening => Failure::new(exit::INTERRUPTED, err),
                    other => Failure::failed(other),
                })?;
            let (incident, count) = (&opened.incident, opened.affected);
            if json {
                print_json(&serde_json::json!({
                    "id": incident.id,
                    "title": incident.title,
                    "affected": count,
                    "holds": opened.holds,
                }))?;
            } else {
                println!(
                    "Opened incident {} ({} affected).",
                    incident.id,
                    crate::plural::count(count, "account", "accounts")
                );
                if let Some(holds) = opened.holds.as_ref().filter(|holds| !holds.is_empty()) {
                    println!("{}.", holds.summary());
                    if !holds.held.is_empty() {
                        println!(
                            "Their display names follow: serve's watcher restores them after its next round, `lifeboat holds make` now, and a claim its own."
                        );
                    }
                }
                println!("Next: `lifeboat notify {} --dry-run` to see what would be sent.", incident.id);
            }
            if opened.holds.as_ref().is_some_and(|holds| holds.stopped) {
                return Err(Failure::new(
                    exit::INTERRUPTED,
                    format!(
                        "interrupted: incident {id} is open, and lost IDs it did not hold yet are held by `lifeboat notify {id}` (or `lifeboat holds make`) before anything is sent",
                        id = incident.id
                    ),
                ));
            }
            Ok(exit::OK)
        }
        Command::List { json } => {
            let incidents = registry.incidents().await?;
            if json {
                print_json(&incidents)?;
            } else if incidents.is_empty() {
                println!("No incidents.");
            } else {
                println!("{:>4}  {:<20}  {:<28}  title", "id", "opened", "status");
                for incident in incidents {
                    println!(
                        "{:>4}  {}  {:<28}  {}",
                        incident.id,
                        time(Some(incident.opened_at)),
                        status(incident.resolved_at),
                        incident.title
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Show { id, json } => {
            let summary = registry.incident_summary(id, &crate::recover::service_user_id(&config)).await?;
            if json {
                print_json(&summary)?;
            } else {
                print_summary(&summary);
            }
            Ok(exit::OK)
        }
        Command::Resolve { id, yes } => {
            let incident = registry.require_incident(id).await?;
            if !yes && incident.resolved_at.is_none() {
                let question = format!(
                    "Resolve incident {id} ({})? Its unused registration tokens are deleted and its notices stop, for good. [y/N]",
                    crate::plain_text::short_line(&incident.title, 80)
                );
                let without_terminal =
                    "stdin is not a terminal, so lifeboat cannot ask before resolving: pass --yes to resolve";
                if !ask_yes(&question, without_terminal).await? {
                    println!("Nothing changed.");
                    return Ok(exit::OK);
                }
            }
            let client = context.admin_client(&config, &registry, std::convert::identity).await?;
            let (revoked, used) =
                resolve_incident(&registry, &client, id, &Actor::cli()).await.map_err(Failure::failed)?;
            println!(
                "Resolved incident {id}: deleted {revoked} unused registration tokens in Synapse; {used} had been used to register."
            );
            Ok(exit::OK)
        }
    }
}

/// "open", or "resolved" and when.
fn status(resolved_at: Option<i64>) -> String {
    resolved_at.map_or_else(|| "open".to_owned(), |at| format!("resolved {}", time(Some(at))))
}

fn print_summary(summary: &IncidentSummary) {
    let incident = &summary.incident;
    println!("Incident {}: {}", incident.id, incident.title);
    println!("  opened:      {}", time(Some(incident.opened_at)));
    println!("  status:      {}", status(incident.resolved_at));
    println!("  affected:    {} (scope {})", summary.affected, incident.scope);
    let holds = &summary.holds;
    println!(
        "  IDs:         {} held for their owners, {} claimed, {} taken by someone else",
        holds.held, holds.claimed, holds.taken
    );
    println!(
        "  reachable:   {} by email, {} on Matrix now, {} unreachable",
        summary.reachable_by_email, summary.reachable_by_matrix, summary.unreachable
    );
    println!("  tokens:      {}", summary.tokens);
    let d = &summary.deliveries;
    println!(
        "  deliveries:  {} sent, {} pending, {} sending, {} failed, {} skipped",
        d.sent, d.pending, d.sending, d.failed, d.skipped
    );
    let r = &summary.rooms;
    println!(
        "  rooms:       {} living on elsewhere, {} lost, {} re-created, {} here; people back in rooms: {} ({} waiting)",
        r.elsewhere, r.lost, r.recreated, r.here, r.rejoined, r.pending
    );
}

/// Notes (the sync before opening could not run, ...) on stderr; with `stop`, Ctrl-C or SIGTERM asks the work to wind down.
#[derive(Default)]
pub(super) struct StderrNotes {
    pub(super) stop: Option<CancellationToken>,
}

impl NotifyProgress for StderrNotes {
    fn stop(&self) -> Option<&CancellationToken> {
        self.stop.as_ref()
    }

    fn note(&self, text: &str) {
        eprintln!("note: {text}");
    }

    fn passing(&self, text: &str) {
        eprintln!("{text}");
    }
}
