//! `lifeboat recover`

use super::output::print_json;
use super::{Context, Failure, Outcome, exit};
use crate::recover::{RecoverOutcome, TokenSource, recover};
use crate::registry::Actor;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let (config, registry) = context.open().await?;
    let outcome = recover(&config, &registry, &Actor::cli()).await.map_err(Failure::failed)?;
    if args.json {
        print_json(&outcome)?;
        return Ok(exit::OK);
    }
    match outcome {
        RecoverOutcome::AlreadyWorking { source } => println!(
            "Nothing to recover: the {} admin token works.",
            match source {
                TokenSource::Recovered => "recovered",
                TokenSource::Config => "configured",
            }
        ),
        RecoverOutcome::Recovered { user_id } => {
            println!("Synapse had lost its database: re-created {user_id} as an admin through the shared secret.");
            println!("Its new token is kept in the registry; sync, check and notify use it from now on.");
            println!("Next: `lifeboat sync` to record the loss, then `lifeboat incident open`.");
        }
    }
    Ok(exit::OK)
}
