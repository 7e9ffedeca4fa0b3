//! `lifeboat contacts add|remove`

use super::{Context, Outcome, exit};
use crate::registry::{Actor, AddContact, ContactAddress, ContactSource, now_ms};
use crate::user_id::UserId;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Record a way to reach an account's person (idempotent).
    ///
    /// ADDRESS is an email address, or a Matrix ID on another homeserver
    /// (@alice:example.net) that gets the person's notices by DM. One on
    /// this homeserver is accepted with a note, since a wipe would take it
    /// with the account; the account's own ID is refused. Email addresses
    /// are validated and stored lowercased. Contacts added by an admin count
    /// as verified.
    Add {
        /// The account, like @alice:example.org (it must be in the registry).
        #[arg(value_parser = UserId::parse)]
        user_id: UserId,
        /// An email address, or a Matrix ID on another homeserver.
        #[arg(value_parser = ContactAddress::parse)]
        address: ContactAddress,
    },
    /// Forget a contact of an account (idempotent).
    ///
    /// An email address Synapse itself still holds for the account is
    /// imported again when sync next refreshes the account's details.
    Remove {
        /// The account, like @alice:example.org.
        #[arg(value_parser = UserId::parse)]
        user_id: UserId,
        /// The email address or Matrix ID to forget.
        #[arg(value_parser = ContactAddress::parse)]
        address: ContactAddress,
    },
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (config, registry) = context.open().await?;
    let actor = Actor::cli();
    match command {
        Command::Add { user_id, address } => {
            match registry.add_contact(&user_id, &address, ContactSource::Admin, Some(now_ms()), &actor).await? {
                AddContact::Added => println!("Added {address} to {user_id}."),
                AddContact::AlreadyKnown => println!("{user_id} already has {address}; nothing changed."),
            }
            if let ContactAddress::Matrix(contact) = &address
                && contact.server_name() == config.homeserver.server_name
            {
                println!("Note: {contact} is on this homeserver too, so a wipe would take it with the account.");
            }
        }
        Command::Remove { user_id, address } => {
            if registry.remove_contact(&user_id, &address, &actor).await? {
                println!("Removed {address} from {user_id}.");
            } else {
                println!("{user_id} has no contact {address}; nothing changed.");
            }
        }
    }
    Ok(exit::OK)
}
