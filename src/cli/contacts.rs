//! `lifeboat contacts add|remove`

use super::users::parse_user_id;
use super::{Context, Outcome, exit};
use crate::email::EmailAddress;
use crate::registry::{Actor, AddContact, ContactKind, ContactSource, now_ms};
use crate::user_id::UserId;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Record an email address for an account in the registry (idempotent).
    ///
    /// The address is validated and stored lowercased. Contacts added by an
    /// admin count as verified.
    Add {
        /// The account, like @alice:example.org (it must be in the registry).
        #[arg(value_parser = parse_user_id)]
        user_id: UserId,
        /// The email address to reach its person at.
        #[arg(value_parser = parse_email)]
        email: EmailAddress,
    },
    /// Forget an email address of an account (idempotent).
    ///
    /// An address Synapse itself still holds for the account is imported
    /// again when sync next refreshes the account's details.
    Remove {
        /// The account, like @alice:example.org.
        #[arg(value_parser = parse_user_id)]
        user_id: UserId,
        /// The email address to forget.
        #[arg(value_parser = parse_email)]
        email: EmailAddress,
    },
}

fn parse_email(text: &str) -> Result<EmailAddress, String> {
    EmailAddress::parse(text).map_err(|err| err.to_string())
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let config = context.config()?;
    let registry = context.registry(&config).await?;
    let actor = Actor::cli();
    match command {
        Command::Add { user_id, email } => {
            let outcome = registry
                .add_contact(
                    user_id.as_str(),
                    ContactKind::Email,
                    email.as_str(),
                    ContactSource::Admin,
                    Some(now_ms()),
                    &actor,
                )
                .await?;
            match outcome {
                AddContact::Added => println!("Added {email} to {user_id}."),
                AddContact::AlreadyKnown => {
                    println!("{user_id} already has {email}; nothing changed.")
                }
            }
        }
        Command::Remove { user_id, email } => {
            if registry.remove_contact(user_id.as_str(), ContactKind::Email, email.as_str(), &actor).await? {
                println!("Removed {email} from {user_id}.");
            } else {
                println!("{user_id} has no contact {email}; nothing changed.");
            }
        }
    }
    Ok(exit::OK)
}
