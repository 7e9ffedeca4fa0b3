//! `lifeboat tokens list`

use std::collections::HashMap;

use super::output::{print_json, time};
use super::{Context, Outcome, exit};
use crate::registry::{NoticeToken, now_ms};
use crate::synapse::RegistrationToken;
use crate::tokens::{TokenState, token_state};

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

/// A token as recorded, and its state as Synapse tells it (`None`: Synapse
/// could not be asked).
#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    token: NoticeToken,
    state: Option<TokenState>,
}

fn note_unknown<T>(reason: &str) -> Option<T> {
    eprintln!("note: Synapse could not be asked how the tokens stand ({reason}); their state is unknown");
    None
}

fn masked(token: &str) -> String {
    format!("{}…", token.chars().take(4).collect::<String>())
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (config, registry) = context.open().await?;
    match command {
        Command::List { incident, reveal, json } => {
            if let Some(id) = incident {
                registry.require_incident(id).await?;
            }
            let tokens = registry.tokens(incident).await?;
            // What Synapse says of each: used, unused, expired, gone.
            let in_synapse: Option<HashMap<String, RegistrationToken>> = if tokens.is_empty() {
                Some(HashMap::new())
            } else {
                match context.admin_client(&config, &registry, std::convert::identity).await {
                    Ok(client) => match client.registration_tokens().await {
                        Ok(listed) => Some(listed.into_iter().map(|token| (token.token.clone(), token)).collect()),
                        Err(err) => note_unknown(&err.to_string()),
                    },
                    Err(failure) => note_unknown(&failure.message),
                }
            };
            let now = now_ms();
            let rows: Vec<Row> = tokens
                .into_iter()
                .map(|token| {
                    let state = in_synapse.as_ref().map(|listed| token_state(&token, listed.get(&token.token), now));
                    let shown = if reveal { token.token.clone() } else { masked(&token.token) };
                    Row { token: NoticeToken { token: shown, ..token }, state }
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("No registration tokens.");
            } else {
                println!("{:>8}  {:<30}  {:<26}  {:<20}  STATE", "INCIDENT", "USER ID", "TOKEN", "EXPIRES");
                for Row { token, state } in rows {
                    let state = match state {
                        Some(state) => state.as_str(),
                        None if token.revoked_at.is_some() => "revoked",
                        None => "unknown (Synapse did not answer)",
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
