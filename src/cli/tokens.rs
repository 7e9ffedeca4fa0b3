//! `lifeboat tokens list`

use super::output::{print_json, time};
use super::{Context, Outcome, exit};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List registration tokens issued to affected people.
    ///
    /// Tokens are shown masked; each is meant for its owner only.
    List {
        /// Only this incident's tokens.
        #[arg(long)]
        incident: Option<i64>,
        /// Show the tokens in full.
        #[arg(long)]
        reveal: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn masked(token: &str) -> String {
    format!("{}…", token.chars().take(4).collect::<String>())
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let config = context.config()?;
    let registry = context.registry(&config).await?;
    match command {
        Command::List { incident, reveal, json } => {
            let mut tokens = registry.tokens(incident).await?;
            if !reveal {
                for token in &mut tokens {
                    token.token = masked(&token.token);
                }
            }
            if json {
                print_json(&tokens)?;
            } else if tokens.is_empty() {
                println!("No registration tokens.");
            } else {
                println!("{:>8}  {:<30}  {:<26}  {:<20}  STATE", "INCIDENT", "USER ID", "TOKEN", "EXPIRES");
                for token in tokens {
                    let state = if token.revoked_at.is_some() {
                        "revoked"
                    } else if token.confirmed_at.is_some() {
                        "active"
                    } else {
                        "not yet in Synapse"
                    };
                    println!(
                        "{:>8}  {:<30}  {:<26}  {:<20}  {state}",
                        token.incident_id,
                        token.user_id,
                        token.token,
                        time(Some(token.expires_at))
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}
