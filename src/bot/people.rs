//! People managing their own contact emails by DM: `contact add` mails a
//! code to the address, `contact verify <code>` proves it, and only then is
//! the address a verified contact. Each person sees and changes only their
//! own contacts.

use matrix_sdk::ruma::OwnedUserId;
use rand::Rng;

use super::admin::mask;
use super::commands::{PersonCommand, person_help};
use super::{Bot, Standing};
use crate::registry::{Actor, CodeCheck, ContactAddress, ContactSource, MAX_CODE_ATTEMPTS, MessageKind, now_ms};

/// How long a mailed code works.
const CODE_VALID_MS: i64 = 30 * 60 * 1000;

/// The reply to one person's DM command (`Err`: a refusal or failure).
pub(super) async fn run(bot: &Bot, sender: &OwnedUserId, command: PersonCommand) -> Result<String, String> {
    let (config, registry) = (&bot.state.config, &bot.state.registry);
    let actor = Actor::bot(sender.as_str());
    // The registry's form of the sender's ID.
    let person = crate::user_id::UserId::from(&**sender);
    fn broken(err: impl std::fmt::Display) -> String {
        tracing::warn!(error = %err, "a DM command failed");
        "Something went wrong on my side; please try again later.".to_owned()
    }
    if command == PersonCommand::Help {
        return Ok(person_help());
    }
    // Contacts belong to accounts lifeboat keeps: this homeserver's, and
    // only while the account is its registry person's (an ID someone else
    // registered again is a stranger, and learns nothing of that person).
    match bot.standing_of_dm_person(sender).await {
        Standing::Theirs => {}
        Standing::NotTheirs => {
            return Err(format!(
                "I keep contacts for accounts of {} only, and {sender} is not one I know yet. New accounts are added each time I list the server's accounts: please try again in a few minutes.",
                config.homeserver.server_name
            ));
        }
        Standing::NoAdminToken => {
            return Err("I cannot reach the homeserver's admin API right now; please try again later.".to_owned());
        }
        Standing::CannotTell(err) => return Err(broken(err)),
    }
    match command {
        PersonCommand::Help => unreachable!("answered above"),
        PersonCommand::ContactAdd(address) => {
            if config.email.is_none() {
                return Err("This lifeboat cannot send email, so it cannot verify addresses; ask an admin.".to_owned());
            }
            let code = format!("{:06}", rand::rng().random_range(0..1_000_000));
            let limits = crate::registry::CODE_LIMITS;
            if !registry
                .start_contact_verification(&person, &address, &code, CODE_VALID_MS, limits)
                .await
                .map_err(broken)?
            {
                return Err(
                    "You asked for several codes in the last hour (or for that address today), codes are already on their way to that address, or many codes went out in the last hour; please wait a while before asking again.".to_owned()
                );
            }
            let message = crate::messages::contact_code(
                &config.homeserver.server_name,
                &person,
                &code,
                CODE_VALID_MS as u64 / 60_000,
            );
            let expires_at = now_ms() + CODE_VALID_MS;
            crate::outbox::queue_email(registry, MessageKind::Code, &address, &message, None, expires_at)
                .await
                .map_err(broken)?;
            Ok(format!(
                "I am mailing a code to {}. Reply `contact verify <code>` within 30 minutes to confirm it is yours.",
                mask(address.as_str())
            ))
        }
        PersonCommand::ContactVerify(code) => {
            match registry.check_contact_code(&person, &code, &actor).await.map_err(broken)? {
                CodeCheck::Verified(address) => Ok(format!(
                    "Confirmed: {address} is now a verified contact of {sender}. If {} ever loses your account, lifeboat will write to you there.",
                    config.homeserver.server_name
                )),
                CodeCheck::Wrong => Err(format!(
                    "That code is not right. Codes work for 30 minutes and {MAX_CODE_ATTEMPTS} tries; `contact add <email>` sends a new one."
                )),
                CodeCheck::NothingPending => {
                    Err("No code is waiting for you (it may have expired): send `contact add <email>` first."
                        .to_owned())
                }
            }
        }
        PersonCommand::ContactList => {
            let contacts = registry.contacts_of(&person).await.map_err(broken)?;
            if contacts.is_empty() {
                return Ok("You have no contact addresses yet. Add one with `contact add <email>`.".to_owned());
            }
            let lines: Vec<String> = contacts
                .iter()
                .map(|contact| {
                    let state = match (contact.verified_at, contact.opted_out_at) {
                        (_, Some(_)) => "unsubscribed",
                        (Some(_), None) => "verified",
                        (None, None) => "not verified",
                    };
                    format!("- {} ({}, {state})", contact.address, contact.kind)
                })
                .collect();
            Ok(format!("Your contacts:\n\n{}", lines.join("\n")))
        }
        PersonCommand::ContactRemove(address) => {
            // One read from the account's own settings on the homeserver
            // comes back with the next read of them: say so.
            let contacts = registry.contacts_of(&person).await.map_err(broken)?;
            let from_synapse = contacts
                .iter()
                .any(|contact| contact.address == address.as_str() && contact.source == ContactSource::Synapse);
            let removed = registry
                .remove_contact(&person, &ContactAddress::Email(address.clone()), &actor)
                .await
                .map_err(broken)?;
            Ok(if removed && from_synapse {
                format!(
                    "Removed {address} from your contacts. It is also in your account's settings on {}, so it comes back when I next read them: remove it there too.",
                    config.homeserver.server_name
                )
            } else if removed {
                format!("Removed {address} from your contacts.")
            } else {
                format!("{address} is not one of your contacts; `contact list` shows them.")
            })
        }
    }
}
