//! `lifeboat drill [--json]`

use super::output::print_json;
use super::{Context, Outcome, exit};
use crate::drill::{Status, drill};
use crate::registry::Actor;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the checklist as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let (config, registry) = context.open().await?;
    let bot_check = crate::bot::drill::post_test_message(&config, &registry);
    let report = drill(&config, &registry, &Actor::cli(), bot_check).await;
    if args.json {
        print_json(&report)?;
    } else {
        for line in &report.lines {
            let mark = match line.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            println!("[{mark}] {:<20} {}", line.check, line.detail);
            if !line.accounts.is_empty() {
                println!("       {}", super::output::id_list(&line.accounts, 20));
            }
        }
        println!("{}", if report.ready { "Ready." } else { "Not ready: fix the FAIL lines above." });
    }
    Ok(if report.ready { exit::OK } else { exit::FAILED })
}
