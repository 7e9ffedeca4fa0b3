//! Admins' commands in the admin room: the CLI's operations, answered in
//! short Markdown that says what to do next. Every command is audited with
//! the admin's Matrix ID.

use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_sdk::Room;
use matrix_sdk::ruma::OwnedUserId;

use super::Bot;
use super::commands::{ADMIN_USAGE, AdminCommand, help};
use crate::campaign::{
    CampaignError, CampaignOptions, CampaignReport, admin_client_recovering, open_incident, resolve_incident,
    run_campaign,
};
use crate::check::check;
use crate::holds::{UNLOCKED_HELD_REMEDY, WayBack, way_back};
use crate::links::LINK_KEY;
use crate::messages::Rendered;
use crate::notice::{defanged, markdown_escape};
use crate::notify::{NotifyProgress, plan};
use crate::plain_text;
use crate::recover::service_user_id;
use crate::registry::{
    AccountState, Actor, ContactSource, IncidentScope, MailableContact, MessageKind, OldName, RoomState, format_time,
    human_time, now_ms,
};
use crate::sync::{Quiet, SyncOptions, sync};
use crate::tokens::{TokenError, token_for_person};
use crate::user_id::UserId;

/// How long a `notify <id>` dry run stays confirmable.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(5 * 60);

/// Notes of a run started from the room, posted after it; the run winds
/// down when serve stops.
#[derive(Default)]
struct Notes {
    notes: std::sync::Mutex<Vec<String>>,
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl NotifyProgress for Notes {
    fn note(&self, text: &str) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(text.to_owned());
        }
    }

    fn stop(&self) -> Option<&tokio_util::sync::CancellationToken> {
        self.stop.as_ref()
    }
}

pub(super) async fn execute(bot: &Arc<Bot>, room: &Room, sender: &OwnedUserId, command: AdminCommand) -> String {
    let actor = Actor::bot(sender.as_str());
    let name = command_name(&command);
    if let Err(err) = bot.state.registry.audit(&actor, "bot.command", Some(&name), None).await {
        return format!("The registry cannot be written, so nothing was done: {err}");
    }
    match run(bot, room, &actor, command).await {
        Ok(reply) => reply,
        Err(reason) => format!("**{name} failed:** {reason}"),
    }
}

/// What the audit log calls a command (arguments that are not secrets).
fn command_name(command: &AdminCommand) -> String {
    match command {
        AdminCommand::Help => "help".into(),
        AdminCommand::Status => "status".into(),
        AdminCommand::Sync => "sync".into(),
        AdminCommand::Check => "check".into(),
        AdminCommand::IncidentOpen { .. } => "incident open".into(),
        AdminCommand::IncidentList => "incident list".into(),
        AdminCommand::IncidentShow(id) => format!("incident show {id}"),
        AdminCommand::IncidentResolve { id, confirm } => format!("incident resolve {id}{}", confirm_word(*confirm)),
        AdminCommand::Notify { id, confirm } => format!("notify {id}{}", confirm_word(*confirm)),
        AdminCommand::Token(user) => format!("token {user}"),
        AdminCommand::Holds => "holds".into(),
        AdminCommand::Rooms => "rooms".into(),
        AdminCommand::RoomsRecreate { room, confirm } => {
            format!("rooms recreate {}{}", room.as_deref().unwrap_or("--all"), confirm_word(*confirm))
        }
        AdminCommand::Release { user, confirm } => format!("release {user}{}", confirm_word(*confirm)),
        AdminCommand::ContactAdd(user, _) => format!("contact add {user}"),
        AdminCommand::ContactRemove(user, _) => format!("contact remove {user}"),
    }
}

fn confirm_word(confirm: bool) -> &'static str {
    if confirm { " confirm" } else { "" }
}

/// Text others chose (a server's refusal, a room's name), shown on one line
/// and cut at [`SHOWN_CHARS`]: no link (addresses defanged as notices show
/// them), emphasis or paragraph of its own in the bot's reply, which must
/// stay within an event's 64 KiB.
fn shown(text: &str) -> String {
    markdown_escape(&defanged(&plain_text::short_line(text, SHOWN_CHARS)))
}

const SHOWN_CHARS: usize = 400;

/// A room as a reply names it: its label as notices show one (cut short,
/// nothing a linkifier takes for an address), then its ID.
fn room_named(room: &crate::registry::Room) -> String {
    format!(
        "{} {}",
        markdown_escape(&crate::notice::room_label(room.label())),
        crate::notice::markdown_code(&room.room_id)
    )
}

/// An error as the reply says it.
fn text(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// The Synapse admin client for a command, recovering credentials if need be.
async fn admin_client(bot: &Bot, actor: &Actor) -> Result<crate::synapse::SynapseClient, String> {
    admin_client_recovering(&bot.state.config, &bot.state.registry, actor, &Notes::default()).await.map_err(text)
}

async fn run(bot: &Arc<Bot>, room: &Room, actor: &Actor, command: AdminCommand) -> Result<String, String> {
    let state = &bot.state;
    let (config, registry) = (&state.config, &state.registry);
    let prefix = bot.prefix();
    // The registry's refusals, in the bot's words (no CLI flags).
    let said = |err: crate::registry::Error| err.for_bot(prefix);
    match command {
        AdminCommand::Help => Ok(format!("**lifeboat commands**\n\n{}", help(&format!("{prefix} "), ADMIN_USAGE))),
        AdminCommand::Status => status(bot).await,
        AdminCommand::Sync => {
            let client = admin_client(bot, actor).await?;
            // Paced like the CLI's and the watcher's: on a big server a full
            // sync must not take Synapse from its users.
            let options = SyncOptions::from_config(config).paced().stopped_by(state.shutdown.clone());
            let summary = sync(registry, &client, &options, actor, &Quiet).await.map_err(text)?;
            let report = &summary.applied.report;
            let stopped =
                summary.details_refused.map(|why| format!(" Importing emails stopped: {why}")).unwrap_or_default();
            Ok(format!(
                "Synced: {} listed; {} new, {} missing ({} newly), {} held, {} recreated, {} deactivated; {} emails imported.{stopped}",
                report.listed,
                report.new.len(),
                report.missing.len(),
                summary.applied.newly_missing,
                report.held.len(),
                report.recreated.len(),
                report.deactivated.len(),
                summary.emails_imported
            ))
        }
        AdminCommand::Check => {
            let client = admin_client(bot, actor).await?;
            let outcome = check(registry, &client, config).await.map_err(text)?;
            let report = &outcome.report;
            let mut reply =
                format!("Verdict **{}**: {}.", report.verdict.as_str(), outcome.reason.trim_end_matches('.'));
            let unlocked = format!("Held, but unlocked outside lifeboat ({UNLOCKED_HELD_REMEDY})");
            for (label, ids) in
                [("Missing", &report.missing), ("Recreated", &report.recreated), (&*unlocked, &report.unlocked_held)]
            {
                if !ids.is_empty() {
                    reply.push_str(&format!("\n\n{label}: {}", crate::plural::id_list(ids, 20)));
                }
            }
            Ok(reply)
        }
        AdminCommand::IncidentOpen { title, postmortem, again } => {
            let notes = Notes::default();
            let opened = open_incident(config, registry, &title, &postmortem, IncidentScope::Missing, again, actor, &notes)
                .await
                .map_err(|err| match err {
                    CampaignError::Registry(crate::registry::Error::AlreadyCovered(ref covering)) => format!(
                        "{err}. Send that incident's notices (`{prefix} notify {}`), resolve it first, or send the same message with `{prefix} incident open --force` to open another anyway.",
                        covering[0].0
                    ),
                    CampaignError::Registry(err) => said(err),
                    other => text(other),
                })?;
            let (incident, affected) = (opened.incident, opened.affected);
            let mut notes = notes.notes.into_inner().unwrap_or_default();
            if let Some(holds) = opened.holds.filter(|holds| !holds.is_empty()) {
                let names =
                    if holds.held.is_empty() { "" } else { " (display names follow after the watcher's next round)" };
                notes.insert(0, format!("{}{names}", holds.summary()));
            }
            Ok(format!(
                "Opened incident **{}** \"{}\" ({} affected). Next: `{prefix} notify {}` shows what would be sent.{}",
                incident.id,
                markdown_escape(&incident.title),
                crate::plural::count(affected, "account", "accounts"),
                incident.id,
                if notes.is_empty() { String::new() } else { format!("\n\nNotes: {}", notes.join("; ")) }
            ))
        }
        AdminCommand::IncidentList => {
            let incidents = registry.incidents().await.map_err(text)?;
            if incidents.is_empty() {
                return Ok("No incidents.".to_owned());
            }
            let lines: Vec<String> = incidents
                .iter()
                .map(|incident| {
                    let status = match incident.resolved_at {
                        Some(at) => format!("resolved {}", human_time(at)),
                        None => "**open**".to_owned(),
                    };
                    format!(
                        "- {}: {} (opened {}, {status})",
                        incident.id,
                        markdown_escape(&incident.title),
                        human_time(incident.opened_at)
                    )
                })
                .collect();
            Ok(lines.join("\n"))
        }
        AdminCommand::IncidentShow(id) => {
            let summary = registry.incident_summary(id, &service_user_id(config)).await.map_err(said)?;
            let (holds, d, rooms) = (&summary.holds, &summary.deliveries, &summary.rooms);
            let state = if summary.incident.resolved_at.is_some() { "resolved" } else { "open" };
            let (email, matrix) = (summary.reachable_by_email, summary.reachable_by_matrix);
            Ok([
                format!("**Incident {id}: {}** ({state})\n", markdown_escape(&summary.incident.title)),
                format!("- affected: {}", summary.affected),
                format!("- IDs: {} held, {} claimed, {} taken by someone else", holds.held, holds.claimed, holds.taken),
                format!("- reachable: {email} by email, {matrix} on Matrix, {} unreachable", summary.unreachable),
                format!("- tokens: {}", summary.tokens),
                format!(
                    "- deliveries: {} sent, {} pending, {} sending, {} failed, {} skipped",
                    d.sent, d.pending, d.sending, d.failed, d.skipped
                ),
                format!(
                    "- rooms: {} living on elsewhere, {} lost, {} re-created; people back in rooms: {} ({} waiting)",
                    rooms.elsewhere, rooms.lost, rooms.recreated, rooms.rejoined, rooms.pending
                ),
            ]
            .join("\n"))
        }
        AdminCommand::IncidentResolve { id, confirm } => {
            let incident = registry.require_incident(id).await.map_err(said)?;
            // As the CLI asks: it cannot be undone. Resolving one resolved
            // already only sweeps its tokens again.
            let command = format!("incident resolve {id}");
            if incident.resolved_at.is_none() {
                if !confirm {
                    let how = ask_to_confirm(bot, &command);
                    return Ok(format!(
                        "Resolving incident {id} ({}) deletes its unused registration tokens and stops its notices, for good. To do it, {how}.",
                        shown(&incident.title)
                    ));
                }
                confirmed_in_time(bot, &command)?;
            }
            let client = admin_client(bot, actor).await?;
            let (revoked, used) = resolve_incident(registry, &client, id, actor).await.map_err(|err| match err {
                CampaignError::Registry(err) => said(err),
                other => other.to_string(),
            })?;
            Ok(format!(
                "Resolved incident {id}: deleted {revoked} unused registration tokens; {used} were used to register."
            ))
        }
        AdminCommand::Notify { id, confirm } => notify(bot, room, actor, id, confirm).await,
        AdminCommand::Token(user) => token(bot, actor, &user).await,
        AdminCommand::Holds => holds(bot).await,
        AdminCommand::Rooms => rooms(bot).await,
        AdminCommand::RoomsRecreate { room, confirm } => recreate_rooms(bot, actor, room, confirm).await,
        AdminCommand::Release { user, confirm } => release_hold(bot, actor, &user, confirm).await,
        AdminCommand::ContactAdd(user, address) => {
            let added = registry
                .add_contact(&user, &address, ContactSource::Admin, Some(now_ms()), actor)
                .await
                .map_err(said)?;
            Ok(match added {
                crate::registry::AddContact::Added => format!("Added {address} as a contact of {user}."),
                crate::registry::AddContact::AlreadyKnown => format!("{address} was already a contact of {user}."),
            })
        }
        AdminCommand::ContactRemove(user, address) => {
            let removed = registry.remove_contact(&user, &address, actor).await.map_err(said)?;
            Ok(if removed {
                format!("Removed {address} from the contacts of {user}.")
            } else {
                format!("{user} has no contact {address}; the CLI's `lifeboat users show {user}` lists their contacts.")
            })
        }
    }
}

async fn status(bot: &Bot) -> Result<String, String> {
    let registry = &bot.state.registry;
    let counts = registry.status().await.map_err(text)?;
    let last = registry.last_complete_sync().await.map_err(text)?;
    let seen = bot.state.watch.current();
    let count = |rows: &[(String, i64)], key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, n)| *n).unwrap_or(0);
    let accounts = &counts.accounts;
    let mut reply = format!(
        "**Registry:** {} present, {} handed back, {} missing, {} held for their owners, {} taken by strangers, {} deactivated; {} email and {} Matrix contacts.",
        crate::plural::count(count(accounts, "present"), "account", "accounts"),
        count(accounts, "claimed"),
        count(accounts, "missing"),
        count(accounts, "held"),
        count(accounts, "recreated"),
        count(accounts, "deactivated"),
        count(&counts.contacts, "email"),
        count(&counts.contacts, "matrix"),
    );
    match last.and_then(|run| run.finished_at) {
        Some(at) => reply.push_str(&format!(
            "\n\n**Last sync:** {} ({} ago).",
            human_time(at),
            humantime::format_duration(Duration::from_secs(((now_ms() - at).max(0) / 1000) as u64))
        )),
        None => reply.push_str(&format!("\n\n**Last sync:** never; send `{} sync`.", bot.prefix())),
    }
    reply.push_str(&format!("\n\n**Verdict:** {}", seen.verdict_label()));
    if !seen.reason.is_empty() {
        reply.push_str(&format!(" ({})", seen.reason.trim_end_matches('.')));
    }
    if let Some(at) = seen.at.and_then(format_time) {
        reply.push_str(&format!(", checked {at}"));
    }
    reply.push('.');
    let open: Vec<String> = registry
        .incidents()
        .await
        .map_err(text)?
        .into_iter()
        .filter(|incident| incident.resolved_at.is_none())
        .map(|incident| format!("{} \"{}\"", incident.id, markdown_escape(&incident.title)))
        .collect();
    let open = if open.is_empty() { "none".to_owned() } else { open.join(", ") };
    reply.push_str(&format!("\n\n**Open incidents:** {open}."));
    Ok(reply)
}

/// `notify <id>` shows the dry run's counts; `notify <id> confirm` within
/// [`CONFIRM_WITHIN`] sends, in the background, and posts the result.
async fn notify(bot: &Arc<Bot>, room: &Room, actor: &Actor, id: i64, confirm: bool) -> Result<String, String> {
    let (config, registry) = (&bot.state.config, &bot.state.registry);
    let incident = registry.require_incident(id).await.map_err(|err| err.for_bot(bot.prefix()))?;
    if incident.resolved_at.is_some() {
        return Err(format!("incident {id} is resolved: notices go out for open incidents only"));
    }
    if !confirm {
        let planned = plan(config, registry, id).await.map_err(text)?;
        let only_dms = match config.email {
            Some(_) => "",
            None if planned.dms > 0 => " There is no [email] section in lifeboat's config: only the DMs go.",
            None => {
                return Err("nothing can be sent: there is no [email] section in lifeboat's config, and no DM to send"
                    .to_owned());
            }
        };
        let how = ask_to_confirm(bot, &format!("notify {id}"));
        let holds_first = planned.holds_first().map(|note| format!(" Note: {note}.")).unwrap_or_default();
        return Ok(format!(
            "Incident {id} \"{}\": {} affected; **{} emails** to {} people, **{} DMs**; {} people unreachable; {} tokens to create.{only_dms}{holds_first}\n\nTo send, {how}.",
            markdown_escape(&incident.title),
            planned.affected,
            planned.emails.emails,
            planned.emails.people_with_email,
            planned.dms,
            planned.unreachable,
            planned.tokens_to_create,
        ));
    }
    confirmed_in_time(bot, &format!("notify {id}"))
        .map_err(|how| format!("there is no recent dry run of incident {id} to confirm: {how}"))?;
    let (bot, state, room, actor) = (bot.clone(), bot.state.clone(), room.clone(), actor.clone());
    let stop = state.shutdown.clone();
    state.clone().background.spawn(async move {
        let notes = Notes { stop: Some(stop), ..Notes::default() };
        let options = CampaignOptions {
            actor,
            plan_new: true,
            retry_failed: false,
            progress: &notes,
            devices: &state.devices,
            mailer: state.mailer.as_deref(),
        };
        let outcome = run_campaign(&state.config, &state.registry, &incident, options).await;
        tracing::info!(incident = id, ok = outcome.is_ok(), "notify from the bot finished");
        let ended = if outcome.is_ok() { "ended" } else { "failed" };
        let reply = match outcome {
            Ok(report) => notify_summary(id, &report),
            Err(err) => format!("**Sending incident {id} failed:** {err}"),
        };
        let notes = notes.notes.into_inner().unwrap_or_default();
        let reply = if notes.is_empty() { reply } else { format!("{reply}\n\nNotes: {}", notes.join("; ")) };
        // Its failures name addresses: asked again who is in the room now.
        // Whether it ended names nobody: said even while unsure who reads it.
        let audience = bot.audience_of(&room).await;
        let reply = match audience.withholds_answers() {
            Some(_) if audience.unvouched.is_empty() => format!(
                "Incident {id}'s run {ended}; I cannot tell right now whose accounts are in this room, so its details are not posted: `{} incident show {id}` has the counts.",
                bot.prefix()
            ),
            Some(why) => why,
            None => reply,
        };
        super::reply_to(&room, &reply).await;
    });
    Ok(format!("Sending the notices of incident {id} now; I will post the result here."))
}

/// The mail a contact is sent by `token`.
type MessageTo = Box<dyn Fn(&MailableContact) -> Rendered + Send + Sync>;

/// A way back in for one affected person, mailed to their own addresses
/// (never posted in the room: it is theirs): a fresh claim link when their
/// ID is held for them, else a fresh registration token. Who gets what is
/// `holds::way_back`, as on the web page.
async fn token(bot: &Bot, actor: &Actor, user: &UserId) -> Result<String, String> {
    let (config, registry) = (&bot.state.config, &bot.state.registry);
    let (incident_id, claim, old_name) =
        match way_back(config, registry, user, config.tokens.expiry).await.map_err(text)? {
            WayBack::Nothing(reason) => return Err(format!("nothing to send to {user}: {reason}")),
            WayBack::Claim(link) => (link.incident, Some(link), OldName::Kept),
            WayBack::Token { incident, old_name } => (incident, None, old_name),
        };
    if config.email.is_none() {
        return Err("tokens are mailed to the person: add an [email] section to lifeboat's config".to_owned());
    }
    // Who may be mailed is the registry's one rule, as for the web page.
    let contacts = registry.mailable_contacts_of(user).await.map_err(text)?;
    if contacts.is_empty() {
        return Err(format!(
            "{user} has no email contact to send a token to: add one with `{} contact add {user} <email>`",
            bot.prefix()
        ));
    }
    let server = &config.homeserver.server_name;
    // A claim link is made for each address (it works while that address
    // is theirs); a token is the same in every mail.
    let (message_to, what, until): (MessageTo, _, _) = match claim {
        Some(link) => {
            let Some(web) = &config.web else {
                return Err(format!(
                    "{user} is held, and claim links need the web page: add a [web] section, or hand it back on the lifeboat host with `lifeboat holds claim {user}`"
                ));
            };
            let key = registry.generated_secret(LINK_KEY).await.map_err(text)?;
            let (public_url, until) = (web.public_url.clone(), link.until);
            let (server, user) = (server.clone(), user.clone());
            let message_to = move |contact: &MailableContact| {
                let url = link.url(&public_url, &key, contact.id, contact.address.as_str());
                crate::messages::claim_link(&server, user.as_str(), &url, &human_time(link.until))
            };
            (Box::new(message_to), "claim link", until)
        }
        None => {
            let client = admin_client(bot, actor).await?;
            // An admin is not capped; a token still unused is sent again.
            let Some((token, expires)) = token_for_person(config, registry, &client, incident_id, user, None)
                .await
                .map_err(|err| match err {
                    TokenError::Withheld(ref unheld) => format!(
                        "no token for {user} yet: {err}; {}, or set recovery.hold = \"off\"",
                        unheld.next_step()
                    ),
                    err => err.to_string(),
                })?
            else {
                return Err(format!("no token for {user}: the per-person limit"));
            };
            let message = crate::messages::registration_token(
                server,
                user,
                &token,
                &human_time(expires),
                config.homeserver.public_url.as_str(),
                old_name,
            );
            (Box::new(move |_: &MailableContact| message.clone()), "registration token", expires)
        }
    };
    // Worth sending while it works; serve's worker sends it.
    let mut mailed = Vec::new();
    for contact in &contacts {
        let (to, message) = (&contact.address, message_to(contact));
        match crate::outbox::queue_email(registry, MessageKind::Token, to, &message, Some((incident_id, user)), until)
            .await
        {
            Ok(_) => mailed.push(mask(to.as_str())),
            Err(err) => tracing::warn!(error = %err, "could not queue a way back in"),
        }
    }
    registry
        .audit(
            actor,
            "token.issue",
            Some(user.as_str()),
            Some(&format!("incident {incident_id}, {what}, queued for {} address(es)", mailed.len())),
        )
        .await
        .map_err(text)?;
    if mailed.is_empty() {
        return Err(format!(
            "the {what} was made but no email could be queued; check the registry and try `{} token {user}` again",
            bot.prefix()
        ));
    }
    Ok(format!("Mailing a new {what} for {user} (valid until {}) to {}.", human_time(until), mailed.join(", ")))
}

/// The held, claimed and taken IDs, and the lost ones Synapse refused to create.
async fn holds(bot: &Bot) -> Result<String, String> {
    let holds = bot.state.registry.holds().await.map_err(text)?;
    if holds.is_empty() {
        return Ok("No held, claimed or taken IDs.".to_owned());
    }
    let mut reply = String::new();
    for (state, label) in [
        (AccountState::Held, "Held for their owners"),
        (AccountState::Claimed, "Claimed (handed back)"),
        (
            AccountState::Recreated,
            "Taken by someone else before the hold (strangers until settled with `lifeboat holds claim`)",
        ),
        (AccountState::Missing, "Lost, and Synapse creates them for nobody (no hold needed)"),
    ] {
        let ids: Vec<&UserId> = holds.iter().filter(|hold| hold.state == state).map(|hold| &hold.user_id).collect();
        group(&mut reply, label, ids.len(), &crate::plural::id_list(&ids, 30));
    }
    Ok(reply.trim_end().to_owned())
}

/// A `**label** (count): list` paragraph, when there is anything to list.
fn group(reply: &mut String, label: &str, count: usize, list: &str) {
    if count > 0 {
        reply.push_str(&format!("**{label}** ({count}): {list}\n\n"));
    }
}

async fn rooms(bot: &Bot) -> Result<String, String> {
    let rooms = bot.state.registry.rooms(None).await.map_err(text)?;
    if rooms.is_empty() {
        return Ok("No rooms known yet: every sync reads them.".to_owned());
    }
    let mut reply = String::new();
    for (state, label) in [
        (RoomState::Elsewhere, "Living on on other servers (people are joined again as they come back)"),
        (RoomState::Lost, "Lost: they lived only here (`PREFIX rooms recreate <room-id | --all>` makes them again)"),
        (RoomState::Recreated, "Re-created"),
    ] {
        let listed: Vec<String> = rooms
            .iter()
            .filter(|room| room.state == state)
            .map(|room| {
                let progress = room.progress().join("; ");
                let progress = if progress.is_empty() { progress } else { format!(" ({})", shown(&progress)) };
                format!("{}{progress}", room_named(room))
            })
            .collect();
        let label = label.replace("PREFIX", bot.prefix());
        group(&mut reply, &label, listed.len(), &listed[..listed.len().min(30)].join(", "));
    }
    let here = rooms.iter().filter(|room| room.state == RoomState::Here).count();
    reply.push_str(&format!("{} on the homeserver now.", crate::plural::count(here as i64, "room", "rooms")));
    Ok(reply)
}

/// Re-creates lost rooms, after a confirm step.
async fn recreate_rooms(bot: &Bot, actor: &Actor, room: Option<String>, confirm: bool) -> Result<String, String> {
    let (config, registry) = (&bot.state.config, &bot.state.registry);
    let rooms = crate::rooms::to_recreate(config, registry, room.as_deref()).await.map_err(|err| match err {
        crate::rooms::RoomsError::UnknownRoom(_) => format!("{err}: `{} rooms` lists them", bot.prefix()),
        err => shown(&err.to_string()),
    })?;
    if rooms.is_empty() {
        return Ok("No room is lost: nothing to re-create.".to_owned());
    }
    let command = format!("rooms recreate {}", room.as_deref().unwrap_or("--all"));
    if !confirm {
        let how = ask_to_confirm(bot, &command);
        let names: Vec<String> = rooms.iter().take(10).map(room_named).collect();
        return Ok(format!(
            "This makes {} again as new, empty rooms ({}); their history does not come back, and former members are invited as each comes back. To do it, {how}.",
            crate::plural::count(rooms.len() as i64, "room", "rooms"),
            names.join(", "),
        ));
    }
    confirmed_in_time(bot, &command)?;
    let client = admin_client(bot, actor).await?;
    let mut lines = Vec::new();
    for room in rooms {
        match crate::rooms::recreate(config, registry, &client, &room, actor).await {
            // Its room name defanged already; the new ID and alias as they are, to copy.
            Ok(made) => lines.push(markdown_escape(&made.summary())),
            Err(err) => lines.push(format!("Not re-created: {}: {}", room_named(&room), shown(&err.to_string()))),
        }
    }
    Ok(lines.join("\n"))
}

/// A command that changes something for good asks first: this records
/// that it asked, for [`confirmed_in_time`], and says how to confirm.
fn ask_to_confirm(bot: &Bot, command: &str) -> String {
    if let Ok(mut pending) = bot.asked_to_confirm.lock() {
        pending.insert(command.to_owned(), Instant::now());
    }
    format!("reply `{} {command} confirm` within {} minutes", bot.prefix(), CONFIRM_WITHIN.as_secs() / 60)
}

/// `command confirm` counts only within [`CONFIRM_WITHIN`] of `command`.
fn confirmed_in_time(bot: &Bot, command: &str) -> Result<(), String> {
    let asked = bot.asked_to_confirm.lock().ok().and_then(|mut pending| pending.remove(command));
    if asked.is_none_or(|at| at.elapsed() > CONFIRM_WITHIN) {
        return Err(format!(
            "send `{} {command}` first, then confirm within {} minutes",
            bot.prefix(),
            CONFIRM_WITHIN.as_secs() / 60
        ));
    }
    Ok(())
}

/// Ends a hold for good, after a confirm step: the account is deactivated.
async fn release_hold(bot: &Bot, actor: &Actor, user: &UserId, confirm: bool) -> Result<String, String> {
    let registry = &bot.state.registry;
    let held = registry.account(user).await.map_err(text)?;
    if !held.is_some_and(|account| account.state == AccountState::Held) {
        return Err(format!("{user} is not held: `{} holds` lists the held IDs", bot.prefix()));
    }
    let command = format!("release {user}");
    if !confirm {
        let how = ask_to_confirm(bot, &command);
        return Ok(format!(
            "Releasing {user} deactivates its account for good: nobody, its owner included, can ever register this ID again. To do it, {how}."
        ));
    }
    confirmed_in_time(bot, &command)?;
    let client = admin_client(bot, actor).await?;
    crate::holds::release(registry, &client, user, actor).await.map_err(text)?;
    Ok(format!("Released {user}: its account is deactivated, and the ID can never be registered again."))
}

/// `alice@example.org` → `a…@example.org`: enough to recognise, not to harvest.
pub(super) fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => format!("{}…@{domain}", local.chars().next().unwrap_or('?')),
        None => "…".to_owned(),
    }
}

/// A notify run's result for the room. The errors are worded by remote mail
/// and Matrix servers, so they are shown as text, never as Markdown.
fn notify_summary(id: i64, report: &CampaignReport) -> String {
    let counts = &report.counts;
    let mut reply = format!(
        "Incident {id}: {} sent, {} failed, {} skipped, {} pending ({} tokens created).",
        counts.sent,
        counts.failed,
        counts.skipped,
        counts.pending + counts.sending,
        report.tokens_created
    );
    for (address, error) in &report.errors {
        reply.push_str(&format!("\n- {}: {}", markdown_escape(address), shown(error)));
    }
    // DMs left to a process holding the device's store wait too; what
    // failed for good is sent again only on request.
    let waiting = counts.pending + counts.sending;
    if waiting > 0 {
        reply.push_str("\n\nWhat is waiting is sent by the delivery worker.");
    }
    if counts.failed > 0 {
        reply.push_str(&format!(
            "\n\nWhat failed for good is not tried again: correct the addresses, then run `lifeboat notify {id} \
             --retry-failed`."
        ));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_servers_error_text_reaches_the_room_as_text_not_markdown() {
        let errors = vec![("a@example.org".to_owned(), "550 [open this](https://evil.example) **now**".to_owned())];
        let summary = notify_summary(7, &CampaignReport { errors, ..CampaignReport::default() });
        let html = crate::notice::markdown_to_safe_html(&summary);
        assert!(!html.contains("<a") && !html.contains("<strong>"), "{html}");
        assert!(summary.starts_with("Incident 7: 0 sent"), "{summary}");
    }

    #[test]
    fn a_rooms_name_and_a_servers_words_are_cut_short_in_a_reply() {
        let name = format!("visit evil.example {}", "x".repeat(60_000));
        let room = crate::registry::Room { room_id: "!a`b:x".into(), name: Some(name), ..Default::default() };
        let named = room_named(&room);
        assert!(named.chars().count() < 200 && named.contains("evil\\[.\\]example"), "{named}");
        assert!(named.ends_with(" ``!a`b:x``"), "an ID with a backtick is a code span all the same: {named}");
        let errors = vec![("a@example.org".to_owned(), format!("550 {}", "no ".repeat(20_000)))];
        let summary = notify_summary(7, &CampaignReport { errors, ..CampaignReport::default() });
        assert!(summary.len() < 1_000, "{}", summary.len());
    }

    #[test]
    fn words_others_chose_reach_the_room_with_no_address_a_client_would_make_a_link_of() {
        let said = shown("M_FORBIDDEN: appeal at evil.example/appeal or https://evil.example");
        assert!(!said.contains("evil.example") && !said.contains("://"), "{said}");
        let made = crate::rooms::Recreated {
            new_room_id: "!new:example.org".into(),
            label: "visit evil.example/fix".into(),
            invited: 0,
            waiting: 1,
            alias: Some("#kitchen:example.org".into()),
        };
        let summary = made.summary();
        assert!(!summary.contains("evil.example"), "the CLI's words too: {summary}");
        assert!(summary.contains("as !new:example.org, alias #kitchen:example.org"), "to copy: {summary}");
    }
}
