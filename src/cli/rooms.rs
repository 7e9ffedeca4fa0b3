//! `lifeboat rooms list|rejoin|recreate`: the room registry, and bringing
//! people back into their rooms after a loss.

use super::output::{ask_yes, print_json};
use super::{Context, Failure, Outcome, exit};
use crate::plain_text::one_line;
use crate::registry::{Actor, Room, RoomState};
use crate::rooms::{RoomsError, bring_back, recreate, to_recreate};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the rooms lifeboat knows, and where each stands.
    ///
    /// here: on the homeserver now. elsewhere: gone from here, but it lives
    /// on on other servers, and its people are joined to it again as they
    /// come back. lost: it lived only here. recreated: lost, and made again
    /// (`rooms recreate`). Every sync keeps this list. A room lifeboat gave
    /// up (it refused lifeboat's join, or never answered) says why, and one
    /// whose aliases or directory entry are not back yet says so.
    List {
        /// Only rooms in this state.
        #[arg(long, value_parser = ["here", "elsewhere", "lost", "recreated"])]
        state: Option<String>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Bring people back into their rooms now (`serve`'s watcher does it every round).
    ///
    /// lifeboat's own account rejoins the surviving rooms people lost; then
    /// each person whose ID is theirs again (claimed) is joined to every
    /// surviving room they were in, and invited to re-created ones; then the
    /// local aliases of the surviving rooms this server is back in point at
    /// them again, and the directory lists them again.
    /// A surviving room waits while a stranger holds a former member's ID,
    /// or (holds on) while one is not held yet: exit 1 then. A room that
    /// refuses lifeboat's own join, and a join (lifeboat's or a person's)
    /// that failed five times, are given up until --retry. Someone the
    /// room's state shows left or removed since lifeboat read it is not
    /// joined again ("left"). lifeboat's account leaves a room it made
    /// again once nobody waits for an invite and an admin of it is back.
    Rejoin {
        /// First give the rooms and joins lifeboat gave up a fresh start:
        /// tried again now, and by serve's later rounds, up to five times
        /// again (a refusal of lifeboat's own join still ends it at once).
        #[arg(long)]
        retry: bool,
    },
    /// Make a room that lived only here again, with the same name, topic,
    /// alias, join rule, directory listing, encryption and type.
    ///
    /// Its former members are invited as each comes back, and get their
    /// power level back when their ID is theirs or held. History does not
    /// come back: it was only on this server. Asks for confirmation first
    /// (pass --yes when stdin is not a terminal).
    Recreate {
        /// The room's ID (from `rooms list --state lost`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        room_id: Option<String>,
        /// Every lost room made by this server's accounts, except lifeboat's
        /// own admin room and DMs, and a person's DM with its bot (spaces last, so they get their re-created
        /// children). A room another server's account made goes only by its ID.
        #[arg(long)]
        all: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(context: &Context, command: Command) -> Outcome {
    let (config, registry) = context.open().await?;
    match command {
        Command::List { state, json } => {
            let state = state.as_deref().and_then(RoomState::from_name);
            let rooms = registry.rooms(state).await?;
            if json {
                print_json(&rooms)?;
            } else if rooms.is_empty() {
                println!(
                    "No rooms known{}: `lifeboat sync` reads them.",
                    state.map(|s| format!(" that are {}", s.as_str())).unwrap_or_default()
                );
            } else {
                print_rooms(&rooms);
            }
            Ok(exit::OK)
        }
        Command::Rejoin { retry } => {
            let client = context.admin_client_recovering(&config, &registry).await?;
            // Never stopped from within: Ctrl-C ends the process.
            let stop = tokio_util::sync::CancellationToken::new();
            let report =
                bring_back(&config, &registry, &client, &Actor::cli(), retry, &stop).await.map_err(Failure::failed)?;
            if report.is_empty() {
                println!("Nobody is waiting to be brought back into a room.");
            } else {
                println!("{}.", report.summary());
            }
            // IDs and refusals from Synapse and other servers: one line each.
            for (who, room, reason) in report.failed.iter().take(10) {
                eprintln!("not yet: {} in {}: {}", one_line(who), one_line(room), one_line(reason));
            }
            for (who, room) in report.left.iter().take(10) {
                eprintln!(
                    "left: {} in {}: the room's state says they left it or were removed since lifeboat read it; not joined again",
                    one_line(who),
                    one_line(room)
                );
            }
            for (room, reason) in report.given_up.iter().take(10) {
                let (room, reason) = (one_line(room), one_line(reason));
                eprintln!("given up: {room}: {reason} (`lifeboat rooms rejoin --retry` tries again)");
            }
            for room in report.held_back.iter().take(10) {
                eprintln!(
                    "held back: {}: a stranger holds a former member's ID (`lifeboat holds list` shows it as recreated; `lifeboat check`, a held one as unlocked)",
                    one_line(room)
                );
            }
            for room in report.waiting_for_holds.iter().take(10) {
                let room = one_line(room);
                eprintln!(
                    "waiting: {room}: a former member's ID is not held yet (`lifeboat holds make` holds it; a member no listing saw waits for `lifeboat sync`)"
                );
            }
            let done = report.failed.is_empty()
                && report.given_up.is_empty()
                && report.held_back.is_empty()
                && report.waiting_for_holds.is_empty();
            Ok(if done { exit::OK } else { exit::FAILED })
        }
        Command::Recreate { room_id, all: _, yes } => {
            let rooms = to_recreate(&config, &registry, room_id.as_deref()).await.map_err(|err| match err {
                RoomsError::UnknownRoom(_) => Failure::failed(format!(
                    "{err}: `lifeboat rooms list --state lost` shows the rooms that can be re-created"
                )),
                err => Failure::failed(err),
            })?;
            if rooms.is_empty() {
                println!("No room is lost: nothing to re-create.");
                return Ok(exit::OK);
            }
            if !yes {
                let question = format!(
                    "Re-create {} ({}) as new, empty rooms, and invite their former members as each comes back? [y/N]",
                    crate::plural::count(rooms.len() as i64, "room", "rooms"),
                    rooms.iter().take(5).map(|room| one_line(room.label())).collect::<Vec<_>>().join(", ")
                );
                if !ask_yes(&question, "pass --yes to re-create rooms without a terminal").await? {
                    println!("Nothing changed.");
                    return Ok(exit::OK);
                }
            }
            let client = context.admin_client_recovering(&config, &registry).await?;
            let mut failed = 0;
            for room in rooms {
                match recreate(&config, &registry, &client, &room, &Actor::cli()).await {
                    Ok(made) => println!("{}", made.summary()),
                    Err(err) => {
                        failed += 1;
                        eprintln!("not re-created: {}: {}", one_line(room.label()), one_line(&err.to_string()));
                    }
                }
            }
            Ok(if failed == 0 { exit::OK } else { exit::FAILED })
        }
    }
}

fn print_rooms(rooms: &[Room]) {
    for room in rooms {
        let kind = if room.is_space() { " (space)" } else { "" };
        let progress = room.progress().join(", ");
        let (room_id, label, progress) = (one_line(&room.room_id), one_line(room.label()), one_line(&progress));
        let line = format!("{:<10} {room_id}  {label}{kind}  {progress}", room.state.as_str());
        println!("{}", line.trim_end());
    }
    if rooms.iter().any(|room| room.restore_error.is_some()) {
        println!("`lifeboat rooms rejoin --retry` tries the rooms lifeboat gave up again.");
    }
    let count = |state: RoomState| rooms.iter().filter(|room| room.state == state).count();
    println!(
        "{} here, {} living on elsewhere, {} lost (lived only here), {} re-created.",
        count(RoomState::Here),
        count(RoomState::Elsewhere),
        count(RoomState::Lost),
        count(RoomState::Recreated)
    );
}
