//! `lifeboat users list|show`

use std::collections::HashMap;

use serde::Serialize;

use super::output::{print_json, time};
use super::{Context, Failure, Outcome, exit};
use crate::plain_text::one_line;
use crate::registry::{Account, AccountState, Contact};
use crate::synapse::MADE_BEFORE_CREATION_TIMES;
use crate::user_id::UserId;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the accounts in the registry, in ID order.
    List {
        /// Only accounts in this state: present (listed by Synapse), missing
        /// (lost), deactivated, held (lost, held by lifeboat for its
        /// owner), claimed (handed back) or recreated (registered again by
        /// someone lifeboat cannot vouch for).
        #[arg(long, value_enum)]
        state: Option<AccountState>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one account and its contacts.
    Show {
        /// Matrix user ID, like @alice:example.org.
        #[arg(value_parser = UserId::parse)]
        user_id: UserId,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `--state` takes the registry's own names for the states.
impl clap::ValueEnum for AccountState {
    fn value_variants<'a>() -> &'a [Self] {
        AccountState::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// An account with its contacts' count (`list`) or the contacts (`show`).
#[derive(Serialize)]
struct WithContacts<C> {
    #[serde(flatten)]
    account: Account,
    contacts: C,
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (_, registry) = context.open().await?;
    match command {
        Command::List { state, json } => {
            let counts: HashMap<String, i64> = registry.contact_counts().await?.into_iter().collect();
            let accounts: Vec<_> = registry
                .accounts(state)
                .await?
                .into_iter()
                .map(|account| WithContacts {
                    contacts: counts.get(account.user_id.as_str()).copied().unwrap_or(0),
                    account,
                })
                .collect();
            if json {
                print_json(&accounts)?;
            } else if accounts.is_empty() {
                println!(
                    "No accounts in the registry{}; run `lifeboat sync` to read them from Synapse.",
                    if state.is_some() { " in that state" } else { "" }
                );
            } else {
                let width =
                    accounts.iter().map(|a| a.account.user_id.as_str().chars().count()).max().unwrap_or(7).max(7);
                println!("{:<width$}  {:<11}  {:>8}  SINCE", "USER ID", "STATE", "CONTACTS");
                for WithContacts { account, contacts } in &accounts {
                    let since = match account.state {
                        AccountState::Missing => time(account.missing_since),
                        AccountState::Held | AccountState::Claimed => time(account.custody_at),
                        AccountState::Recreated => time(account.recreated_at),
                        _ => time(account.last_seen_present_at),
                    };
                    println!("{:<width$}  {:<11}  {:>8}  {since}", account.user_id, account.state.as_str(), contacts);
                }
                println!("{}", crate::plural::count(accounts.len() as i64, "account", "accounts"));
            }
            Ok(exit::OK)
        }
        Command::Show { user_id, json } => {
            let Some(account) = registry.account(&user_id).await? else {
                return Err(Failure::failed(format!(
                    "{user_id} is not in the registry: check the ID, or run `lifeboat sync` if the account is new"
                )));
            };
            let contacts = registry.contacts_of(&user_id).await?;
            if json {
                print_json(&WithContacts { account, contacts })?;
            } else {
                print_account(&account, &contacts);
            }
            Ok(exit::OK)
        }
    }
}

fn print_account(account: &Account, contacts: &[Contact]) {
    let flag = |on: bool| if on { "yes" } else { "no" };
    println!("{}", account.user_id);
    println!("  display name:     {}", one_line(account.display_name.as_deref().unwrap_or("-")));
    println!("  state:            {}", account.state.as_str());
    if account.state == AccountState::Missing {
        println!("  missing since:    {}", time(account.missing_since));
    }
    println!("  admin:            {}", flag(account.admin));
    println!("  locked:           {}", flag(account.locked));
    println!("  deactivated:      {}", flag(account.deactivated));
    match account.synapse_created_at {
        Some(MADE_BEFORE_CREATION_TIMES) => println!("  created (Synapse): before Synapse kept creation times"),
        created => println!("  created (Synapse): {}", time(created)),
    }
    println!("  first seen:       {}", time(Some(account.first_seen_at)));
    println!("  last seen listed: {}", time(account.last_seen_present_at));
    if account.recreated_at.is_some() {
        println!("  recreated:        {} (same ID registered again)", time(account.recreated_at));
    }
    println!("  emails fetched:   {}", time(account.details_fetched_at));
    if contacts.is_empty() {
        println!("  contacts:         none (add one with `lifeboat contacts add {} EMAIL`)", account.user_id);
    } else {
        println!("  contacts:");
        for contact in contacts {
            let verified = contact
                .verified_at
                .map_or_else(|| "unverified".to_owned(), |at| format!("verified {}", time(Some(at))));
            let mut notes = vec![format!("from {}", contact.source), verified];
            if contact.opted_out_at.is_some() {
                notes.push(format!("opted out {}", time(contact.opted_out_at)));
            }
            println!("    {} {} ({})", contact.kind, contact.address, notes.join(", "));
        }
    }
}
