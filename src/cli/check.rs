//! `lifeboat check`

use super::output::{id_list, print_json, progress_bar, show_listing, unlocked_held_line};
use super::{Context, Failure, Outcome, exit};
use crate::check::{CheckError, CheckReport, check_showing};
use crate::reconcile::Verdict;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the report as JSON on stdout (verdict, present, missing, recreated, deactivated, new, ...).
    #[arg(long)]
    json: bool,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let outcome = match checked(context).await {
        Ok(outcome) => outcome,
        Err(failure) if args.json && failure.code == exit::FAILED => {
            // Scripts get one object whatever happens: here, that it could not tell.
            print_json(&serde_json::json!({
                "verdict": "unknown",
                "listing_complete": false,
                "reason": failure.message,
            }))?;
            return Err(failure);
        }
        Err(failure) => return Err(failure),
    };
    report(&outcome, args.json)?;
    Ok(match outcome.report.verdict {
        Verdict::Ok => exit::OK,
        Verdict::Loss | Verdict::SuspectedReset => exit::LOSS,
    })
}

async fn checked(context: &Context) -> Result<CheckReport, Failure> {
    let (config, registry) = context.open().await?;
    let client = context.admin_client(&config, &registry, CheckError::Synapse).await?;
    let bar = progress_bar("accounts");
    let checked = check_showing(&registry, &client, &config, &|seen, total| show_listing(&bar, seen, total)).await;
    bar.finish_and_clear();
    checked.map_err(Failure::failed)
}

fn report(outcome: &CheckReport, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(outcome);
    }
    let report = &outcome.report;
    println!("verdict: {} ({})", report.verdict.as_str(), outcome.reason);
    if outcome.listing_complete {
        println!(
            "Synapse {}: {} known, {} listed; present {}, missing {}, held {}, recreated {}, deactivated {}, new {}",
            outcome.server_version,
            report.known,
            report.listed,
            report.present,
            report.missing.len(),
            report.held.len(),
            report.recreated.len(),
            report.deactivated.len(),
            report.new.len()
        );
    }
    for (label, ids) in [
        ("missing", &report.missing),
        ("held for their owners", &report.held),
        ("recreated", &report.recreated),
        ("deactivated", &report.deactivated),
        ("new", &report.new),
    ] {
        if !ids.is_empty() {
            println!("  {label}: {}", id_list(ids, 20));
        }
    }
    if let Some(line) = unlocked_held_line(&report.unlocked_held) {
        println!("{line}");
    }
    if !report.new.is_empty() {
        println!("Run `lifeboat sync` to add the new accounts to the registry.");
    }
    Ok(())
}
