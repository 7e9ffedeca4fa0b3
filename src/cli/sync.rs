//! `lifeboat sync`

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;

use super::output::{
    id_list, json_on_failure, print_json, progress_bar, show_listing, show_progress, unlocked_held_line,
};
use super::{Context, Failure, Outcome, exit};
use crate::registry::Actor;
use crate::sync::{SyncError, SyncOptions, SyncProgress, sync};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Read from Synapse as fast as it answers. By default a sync takes at
    /// most watch.max_synapse_share (0.25) of Synapse's time, resting
    /// between calls, so people using the server notice nothing; the first
    /// sync of a big server then takes about four times as long. At full
    /// speed it ends sooner, but while it runs other requests wait behind
    /// lifeboat's.
    #[arg(long)]
    full_speed: bool,
}

/// From this many accounts to read, the start of a paced import says it is
/// paced (smaller ones are over before anyone wonders).
const BIG_IMPORT: u64 = 10_000;

/// One bar on stderr: accounts listed, then account details fetched.
struct Bar {
    bar: ProgressBar,
    in_details: AtomicBool,
}

impl SyncProgress for Bar {
    fn listing(&self, seen: u64, total: Option<u64>) {
        show_listing(&self.bar, seen, total);
    }

    fn details_start(&self, total: u64, pace: Option<f64>) {
        if let Some(share) = pace.filter(|_| total >= BIG_IMPORT) {
            let note = format!(
                "Reading the emails of {total} accounts, paced to {:.0}% of Synapse's time; --full-speed goes faster.",
                share * 100.0
            );
            self.bar.suspend(|| eprintln!("{note}"));
        }
    }

    fn details(&self, done: u64, total: u64) {
        if !self.in_details.swap(true, Ordering::Relaxed) {
            self.bar.reset();
            self.bar.set_message("emails");
        }
        show_progress(&self.bar, done, total);
    }
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let summary = json_on_failure(synced(context, args.full_speed).await, args.json)?;
    if args.json {
        print_json(&summary)?;
    }
    if summary.stopped {
        return Err(Failure::failed(format!(
            "interrupted: the listing of {} was applied and the emails of {} of {} accounts were read; run `lifeboat sync` again to read the rest and the rooms",
            crate::plural::count(summary.applied.report.listed as i64, "account", "accounts"),
            summary.details_fetched,
            summary.details_due
        )));
    }
    if !args.json {
        let report = &summary.applied.report;
        // The run's number counts every attempt (failed ones, the watcher's,
        // incident open's), so it comes last, as a reference for the audit.
        println!(
            "Sync complete: {} listed (sync run {}).",
            crate::plural::count(report.listed as i64, "account", "accounts"),
            summary.run_id
        );
        println!(
            "  present {}, new {}, missing {} ({} newly), held {}, recreated {}, deactivated {}",
            report.present,
            report.new.len(),
            report.missing.len(),
            summary.applied.newly_missing,
            report.held.len(),
            report.recreated.len(),
            report.deactivated.len()
        );
        println!(
            "  emails: {} new from {} accounts' details ({} could not be fetched)",
            summary.emails_imported, summary.details_fetched, summary.details_failed
        );
        match (&summary.rooms, &summary.rooms_error) {
            (Some(rooms), _) => println!(
                "  rooms: {} on the homeserver, {} read again ({} could not be read)",
                rooms.listed, rooms.refreshed, rooms.failed
            ),
            (None, Some(err)) => println!("  rooms: not updated: {err}"),
            (None, None) => {}
        }
        if !report.missing.is_empty() {
            println!("  missing: {}", id_list(&report.missing, 20));
        }
        // Those a restore gave back to a stranger have a line of their own.
        let newer: Vec<&String> = report.recreated.iter().filter(|id| !summary.strangers_again.contains(id)).collect();
        if !newer.is_empty() {
            println!("  recreated (same ID, newer account): {}", id_list(&newer, 20));
        }
        if !summary.strangers_again.is_empty() {
            let again = id_list(&summary.strangers_again, 20);
            println!(
                "  handed over from a stranger, the stranger's again: Synapse was restored from before the hand-over (`lifeboat holds claim` hands each over once more): {again}"
            );
        }
        if !summary.appservice_ids_back.is_empty() {
            let back = id_list(&summary.appservice_ids_back, 20);
            println!("  registered again by the application service (bridge) that had them, so its own: {back}");
        }
        if let Some(line) = unlocked_held_line(&report.unlocked_held) {
            println!("{line}");
        }
    }
    if let Some(why) = &summary.details_refused {
        return Err(Failure::failed(format!("the listing was applied, but importing emails stopped: {why}")));
    }
    if summary.details_failed > 0 {
        return Err(Failure::failed(format!(
            "the listing was applied, but the details of {} accounts could not be fetched; run sync again to import their emails",
            summary.details_failed
        )));
    }
    Ok(exit::OK)
}

async fn synced(context: &Context, full_speed: bool) -> Result<crate::sync::SyncSummary, Failure> {
    // Ctrl-C stops between calls to Synapse, keeping what was read; a
    // second one ends the process at once (the lease is then taken over).
    let stop = super::stop_on_signal();
    let (config, registry) = context.open().await?;
    let client = context.admin_client(&config, &registry, SyncError::Listing).await?;
    let progress = Bar { bar: progress_bar("accounts"), in_details: AtomicBool::new(false) };
    let mut options = SyncOptions::from_config(&config).stopped_by(stop);
    if !full_speed {
        options = options.paced();
    }
    let result = sync(&registry, &client, &options, &Actor::cli(), &progress).await;
    progress.bar.finish_and_clear();
    result.map_err(Failure::failed)
}
