//! What people can say to the bot, parsed without side effects (so the
//! grammar is tested on its own). Admin commands come with the prefix in
//! the admin room; people's own contact commands come in a DM, prefix
//! optional.

use crate::email::EmailAddress;
use crate::registry::ContactAddress;
use crate::user_id::UserId;

/// An admin's command in the admin room.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminCommand {
    Help,
    Status,
    Sync,
    Check,
    /// `again`: open it though an open incident covers some of the same people.
    IncidentOpen {
        title: String,
        postmortem: String,
        again: bool,
    },
    IncidentList,
    IncidentShow(i64),
    IncidentResolve {
        id: i64,
        confirm: bool,
    },
    Notify {
        id: i64,
        confirm: bool,
    },
    Token(UserId),
    Holds,
    Rooms,
    /// `room`: a room ID, or `None` for every lost room.
    RoomsRecreate {
        room: Option<String>,
        confirm: bool,
    },
    Release {
        user: UserId,
        confirm: bool,
    },
    ContactAdd(UserId, ContactAddress),
    ContactRemove(UserId, ContactAddress),
}

/// A person's command about their own contacts, in a DM.
#[derive(Debug, Clone, PartialEq)]
pub enum PersonCommand {
    Help,
    ContactAdd(EmailAddress),
    ContactVerify(String),
    ContactList,
    ContactRemove(EmailAddress),
}

pub const ADMIN_USAGE: &[(&str, &str)] = &[
    ("help", "this list"),
    ("status", "registry counts, last sync, verdict, open incidents"),
    ("sync", "read Synapse's listing into the registry now (paced, as the watcher's)"),
    ("check", "compare the registry with Synapse now (read-only)"),
    (
        "incident open [--force] <title>",
        "the postmortem (Markdown) goes on the following lines; `--force` when an open incident already covers some of the same people",
    ),
    ("incident list", "all incidents"),
    ("incident show <id>", "who is affected and reachable, deliveries by state"),
    (
        "incident resolve <id>",
        "close it for good and delete its unused tokens; `incident resolve <id> confirm` does it",
    ),
    ("notify <id>", "show what would be sent; `notify <id> confirm` sends it"),
    ("token <user-id>", "mail one affected person a fresh claim link (if their ID is held) or registration token"),
    ("holds", "lost IDs held for their owners, claimed, taken by someone else, and created for nobody"),
    ("rooms", "rooms after a loss: living on elsewhere, lost, re-created; who is back in them"),
    (
        "rooms recreate <room-id | --all>",
        "make a room that lived only here again; `rooms recreate <room-id | --all> confirm` does it",
    ),
    ("release <user-id>", "end a hold for good (deactivates the ID); `release <user-id> confirm` does it"),
    ("contact add <user-id> <email or Matrix ID>", "add a verified contact (a Matrix ID on another homeserver)"),
    ("contact remove <user-id> <email or Matrix ID>", "remove a contact"),
];

pub const PERSON_USAGE: &[(&str, &str)] = &[
    ("contact add <email>", "get notices at this address if the homeserver ever loses your account"),
    ("contact verify <code>", "confirm the address with the code mailed to it"),
    ("contact list", "your contact addresses"),
    ("contact remove <email>", "stop using an address"),
];

/// The usage line of one command, for "bad arguments" replies.
pub fn usage_of(prefix: &str, name: &str, table: &[(&str, &str)]) -> String {
    let lines: Vec<String> = table
        .iter()
        .filter(|(syntax, _)| syntax.starts_with(name))
        .map(|(syntax, what)| format!("`{prefix}{syntax}`: {what}"))
        .collect();
    format!("Usage: {}", lines.join("; "))
}

/// What a person's DM gets for `help`, or for anything it does not understand.
pub fn person_help() -> String {
    format!("I am lifeboat, the homeserver's safety net. I understand:\n\n{}", help("", PERSON_USAGE))
}

/// The help text as Markdown.
pub fn help(prefix: &str, table: &[(&str, &str)]) -> String {
    table.iter().map(|(syntax, what)| format!("- `{prefix}{syntax}`: {what}")).collect::<Vec<_>>().join("\n")
}

/// Why a message was not a command: the reply says how to write it.
#[derive(Debug, Clone, PartialEq)]
pub struct BadCommand(pub String);

/// `None` when the message is not for the bot (no prefix).
pub fn parse_admin(prefix: &str, body: &str) -> Option<Result<AdminCommand, BadCommand>> {
    strip_prefix(prefix, body).map(|rest| parse_admin_words(prefix, rest))
}

fn parse_admin_words(prefix: &str, rest: &str) -> Result<AdminCommand, BadCommand> {
    let (first_line, more) = rest.split_once('\n').unwrap_or((rest, ""));
    let words: Vec<&str> = first_line.split_whitespace().collect();
    let shown = format!("{prefix} ");
    let usage = |name: &str| BadCommand(usage_of(&shown, name, ADMIN_USAGE));
    let id = |word: &str, name: &str| word.parse::<i64>().map_err(|_| usage(name));
    let user = |word: &str, name: &str| UserId::parse(word).map_err(|_| usage(name));
    let contact = |word: &str, name: &str| ContactAddress::parse(word).map_err(|_| usage(name));
    match words.as_slice() {
        [] | ["help"] => Ok(AdminCommand::Help),
        ["status"] => Ok(AdminCommand::Status),
        ["sync"] => Ok(AdminCommand::Sync),
        ["check"] => Ok(AdminCommand::Check),
        ["incident", "open", ..] => {
            // What follows the first two words, however many spaces part them.
            let after = |text: &str, word: &str| text.trim_start()[word.len()..].to_owned();
            let title = after(&after(first_line, words[0]), words[1]);
            let title = title.trim();
            let (title, again) = match title.strip_prefix("--force") {
                Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (rest.trim(), true),
                _ => (title, false),
            };
            let postmortem = more.trim();
            if title.is_empty() || postmortem.is_empty() {
                Err(usage("incident open"))
            } else {
                Ok(AdminCommand::IncidentOpen { title: title.to_owned(), postmortem: postmortem.to_owned(), again })
            }
        }
        ["incident", "list"] => Ok(AdminCommand::IncidentList),
        ["incident", "show", number] => id(number, "incident show").map(AdminCommand::IncidentShow),
        ["incident", "resolve", number, rest @ ..] if rest.is_empty() || rest == ["confirm"] => {
            id(number, "incident resolve").map(|id| AdminCommand::IncidentResolve { id, confirm: !rest.is_empty() })
        }
        ["notify", number, rest @ ..] if rest.is_empty() || rest == ["confirm"] => {
            id(number, "notify").map(|id| AdminCommand::Notify { id, confirm: !rest.is_empty() })
        }
        ["token", who] => user(who, "token").map(AdminCommand::Token),
        ["holds"] => Ok(AdminCommand::Holds),
        ["rooms"] => Ok(AdminCommand::Rooms),
        ["rooms", "recreate", target, rest @ ..] if rest.is_empty() || rest == ["confirm"] => {
            let room = match *target {
                "--all" => None,
                id if id.starts_with('!') && id.len() > 1 => Some(id.to_owned()),
                _ => return Err(usage("rooms recreate")),
            };
            Ok(AdminCommand::RoomsRecreate { room, confirm: !rest.is_empty() })
        }
        ["release", who, rest @ ..] if rest.is_empty() || rest == ["confirm"] => {
            user(who, "release").map(|user| AdminCommand::Release { user, confirm: !rest.is_empty() })
        }
        ["contact", "add", who, address] => {
            Ok(AdminCommand::ContactAdd(user(who, "contact add")?, contact(address, "contact add")?))
        }
        ["contact", "remove", who, address] => {
            Ok(AdminCommand::ContactRemove(user(who, "contact remove")?, contact(address, "contact remove")?))
        }
        [name, ..] if ADMIN_USAGE.iter().any(|(syntax, _)| syntax.starts_with(name)) => Err(usage(name)),
        _ => Err(BadCommand(format!("Unknown command. Send `{prefix} help` for the list."))),
    }
}

/// A person's DM: every message is for the bot (the prefix may be used).
pub fn parse_person(prefix: &str, body: &str) -> Result<PersonCommand, BadCommand> {
    let rest = strip_prefix(prefix, body).unwrap_or(body);
    let words: Vec<&str> = rest.split_whitespace().collect();
    let usage = |name: &str| BadCommand(usage_of("", name, PERSON_USAGE));
    let email = |word: &str, name: &str| EmailAddress::parse(word).map_err(|_| usage(name));
    match words.as_slice() {
        [] | ["help"] => Ok(PersonCommand::Help),
        ["contact", "add", address] => email(address, "contact add").map(PersonCommand::ContactAdd),
        ["contact", "verify", code] => Ok(PersonCommand::ContactVerify((*code).to_owned())),
        ["contact", "list"] => Ok(PersonCommand::ContactList),
        ["contact", "remove", address] => email(address, "contact remove").map(PersonCommand::ContactRemove),
        ["contact", ..] => Err(usage("contact")),
        _ => Err(BadCommand(person_help())),
    }
}

/// The text after `prefix` (case-insensitive), when the message starts with it.
fn strip_prefix<'a>(prefix: &str, body: &'a str) -> Option<&'a str> {
    let body = body.trim_start();
    let head = body.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &body[prefix.len()..];
    // "!lifeboatx" is another word, not our prefix.
    if rest.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    Some(rest.trim_start_matches([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(body: &str) -> Option<Result<AdminCommand, BadCommand>> {
        parse_admin("!lifeboat", body)
    }

    #[test]
    fn messages_without_the_prefix_are_not_commands() {
        assert_eq!(admin("hello everyone"), None);
        assert_eq!(admin("!lifeboatstatus"), None);
    }

    #[test]
    fn simple_commands_parse() {
        assert_eq!(admin("!lifeboat status"), Some(Ok(AdminCommand::Status)));
        assert_eq!(admin("  !LIFEBOAT   sync "), Some(Ok(AdminCommand::Sync)));
        assert_eq!(admin("!lifeboat"), Some(Ok(AdminCommand::Help)));
        assert_eq!(admin("!lifeboat notify 3"), Some(Ok(AdminCommand::Notify { id: 3, confirm: false })));
        assert_eq!(admin("!lifeboat notify 3 confirm"), Some(Ok(AdminCommand::Notify { id: 3, confirm: true })));
        assert_eq!(
            admin("!lifeboat incident resolve 3 confirm"),
            Some(Ok(AdminCommand::IncidentResolve { id: 3, confirm: true }))
        );
        assert!(matches!(admin("!lifeboat incident resolve 3 now"), Some(Err(_))));
        assert_eq!(
            admin("!lifeboat rooms recreate !abc:x.org confirm"),
            Some(Ok(AdminCommand::RoomsRecreate { room: Some("!abc:x.org".to_owned()), confirm: true }))
        );
        assert_eq!(
            admin("!lifeboat rooms recreate --all"),
            Some(Ok(AdminCommand::RoomsRecreate { room: None, confirm: false }))
        );
        assert!(matches!(admin("!lifeboat rooms recreate everything"), Some(Err(_))));
    }

    #[test]
    fn incident_open_takes_the_title_from_the_first_line_and_the_postmortem_from_the_rest() {
        let parsed = admin("!lifeboat incident open Database lost on 3 May\n# What happened\n\nA bad mount.");
        assert_eq!(
            parsed,
            Some(Ok(AdminCommand::IncidentOpen {
                title: "Database lost on 3 May".to_owned(),
                postmortem: "# What happened\n\nA bad mount.".to_owned(),
                again: false,
            }))
        );
        assert_eq!(
            admin("!lifeboat incident  open   Lost\nSorry."),
            Some(Ok(AdminCommand::IncidentOpen {
                title: "Lost".to_owned(),
                postmortem: "Sorry.".to_owned(),
                again: false
            })),
            "however many spaces part the words"
        );
        assert_eq!(
            admin("!lifeboat incident open --force Lost again\nSorry."),
            Some(Ok(AdminCommand::IncidentOpen {
                title: "Lost again".to_owned(),
                postmortem: "Sorry.".to_owned(),
                again: true,
            }))
        );
    }

    #[test]
    fn bad_arguments_get_the_usage_line() {
        let Some(Err(BadCommand(text))) = admin("!lifeboat incident show seven") else { panic!("not refused") };
        assert!(text.starts_with("Usage: `!lifeboat incident show <id>`"), "{text}");
        let Some(Err(BadCommand(text))) = admin("!lifeboat incident open Lost everything") else {
            panic!("an incident without a postmortem was accepted")
        };
        assert!(text.contains("postmortem"), "{text}");
        let Some(Err(BadCommand(text))) = admin("!lifeboat token alice") else { panic!("not refused") };
        assert!(text.contains("token <user-id>"), "{text}");
        let Some(Err(BadCommand(text))) = admin("!lifeboat frobnicate") else { panic!("not refused") };
        assert!(text.contains("help"), "{text}");
    }

    #[test]
    fn contact_commands_check_the_user_id_and_the_address() {
        assert!(matches!(
            admin("!lifeboat contact add @alice:example.org alice@example.org"),
            Some(Ok(AdminCommand::ContactAdd(_, ContactAddress::Email(_))))
        ));
        assert!(matches!(
            admin("!lifeboat contact remove @alice:example.org @alice:example.net"),
            Some(Ok(AdminCommand::ContactRemove(_, ContactAddress::Matrix(_))))
        ));
        assert!(matches!(admin("!lifeboat contact add @alice:example.org not-an-address"), Some(Err(_))));
        assert!(matches!(admin("!lifeboat contact add @alice:example.org @alice"), Some(Err(_))));
    }

    #[test]
    fn people_can_manage_their_own_contacts_with_or_without_the_prefix() {
        assert!(matches!(parse_person("!lifeboat", "contact add me@example.org"), Ok(PersonCommand::ContactAdd(_))));
        assert!(matches!(
            parse_person("!lifeboat", "!lifeboat contact verify 123456"),
            Ok(PersonCommand::ContactVerify(code)) if code == "123456"
        ));
        assert_eq!(parse_person("!lifeboat", "contact list"), Ok(PersonCommand::ContactList));
        assert!(parse_person("!lifeboat", "contact add nonsense").is_err());
        assert!(parse_person("!lifeboat", "hello?").unwrap_err().0.contains("contact add <email>"));
    }
}
