//! The command line: parses arguments, loads config, runs one command, and
//! turns the outcome into an exit code and one plain sentence on errors.

mod backup;
mod check;
mod config_check;
mod contacts;
mod drill;
mod holds;
mod incident;
mod notify;
pub(crate) mod output;
mod recover;
mod rooms;
mod serve;
mod sync;
mod tokens;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::campaign::admin_client_recovering;
use crate::config::{Config, ConfigError};
use crate::recover::{AdminAccess, RecoverError, admin_access};
use crate::registry::{Actor, Registry};
use crate::synapse::{self, SynapseClient};

/// Exit codes scripts and monitoring rely on (see the README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LOSS: u8 = 3;
    /// Stopped by Ctrl-C or SIGTERM before the end (128 + SIGINT, as shells say).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "lifeboat",
    version,
    about = "Keeps an off-server registry of a Synapse homeserver's accounts and contacts, and detects account loss.",
    long_about = "Keeps an off-server registry of a Synapse homeserver's accounts and contact emails \
(SQLite or PostgreSQL), compares it with Synapse's admin API listing to detect lost accounts, \
and keeps the list of people to reach if the homeserver's database is ever lost. After a loss it \
gets back in through Synapse's shared secret, holds each lost Matrix ID for its owner, and sends \
every affected person a notice by email and Matrix DM: a link to take their held ID back, and a \
single-use registration token for a new name.\n\n\
Exit codes: 0 ok, 1 failed (or `check` could not tell), 2 usage or config error, 3 `check` found a loss, \
130 `incident open` or `notify` stopped by Ctrl-C (the message says what was done), or a second Ctrl-C anywhere.",
    after_help = "Configuration: a TOML file (see config.example.toml); any key can be overridden \
with LIFEBOAT__<SECTION>__<KEY>, e.g. LIFEBOAT__HOMESERVER__URL."
)]
pub struct Cli {
    /// The config file (TOML; see config.example.toml). A relative path is
    /// read from the current directory.
    #[arg(long, global = true, env = "LIFEBOAT_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH, value_name = "PATH")]
    config: PathBuf,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read Synapse's complete account listing into the registry and import emails.
    ///
    /// Accounts that are no longer listed are marked missing, never deleted.
    /// A listing that fails part-way changes nothing. Emails are fetched for
    /// new accounts, and again for older ones spread over
    /// sync.details_max_age (sync.details_per_round a sync, or more when
    /// that would not keep up).
    /// Ctrl-C stops it keeping what was read; run it again to continue.
    Sync(sync::Args),
    /// Compare the registry with Synapse's listing, without changing anything.
    ///
    /// The listing is read at full speed (one call per sync.page_size
    /// accounts), with a progress bar on stderr when it is a terminal.
    ///
    /// Exit 0: no loss. Exit 3: accounts lost, or a suspected database reset.
    /// Exit 1: could not tell (Synapse down, listing failed).
    Check(check::Args),
    /// Show the accounts in the registry.
    #[command(subcommand)]
    Users(users::Command),
    /// Add or remove an account's contacts: email addresses, Matrix IDs elsewhere.
    #[command(subcommand)]
    Contacts(contacts::Command),
    /// Lost IDs held for their owners: list, hold now, hand back, release.
    ///
    /// After a loss anyone could register a lost ID again (Synapse does not
    /// bind registration tokens to names) and inherit its person's rooms
    /// elsewhere. lifeboat re-creates each lost ID that is still free as a
    /// locked account and hands it back only to its owner (their claim link,
    /// or `holds claim` here).
    #[command(subcommand)]
    Holds(holds::Command),
    /// Rooms: where each stands after a loss, bringing people back, re-creating lost ones.
    ///
    /// Every sync keeps a list of the homeserver's rooms and who was in
    /// them. After a loss, rooms that had members on other servers live on
    /// there: lifeboat rejoins them, re-points their local aliases, and
    /// joins each person back as their ID is theirs again. Rooms that lived
    /// only here can be made again.
    #[command(subcommand)]
    Rooms(rooms::Command),
    /// Incidents: open one after a loss, show who can be reached, resolve it.
    #[command(subcommand)]
    Incident(incident::Command),
    /// Send an incident's notices by email and Matrix DM: a claim link and a registration token per person.
    ///
    /// A person whose ID lifeboat holds gets a link to take it back (the
    /// claim page); everyone whose ID is lost to them (held, lost, or taken
    /// by someone else) gets a single-use registration token, which registers
    /// a new name (never a held ID). Unless recovery.hold = "off", it first holds the lost IDs, and
    /// while one is still free refuses, making and sending nothing (any
    /// token could register it); so it does after lifeboat got back into a
    /// wiped Synapse or found fewer accounts there than the last listing
    /// read, until a listing has shown who was lost. Creates the missing tokens and deliveries,
    /// then sends: emails to the affected people's contacts, DMs to affected
    /// accounts that still exist and to Matrix-ID contacts (without an [email]
    /// section, only the DMs). Resumable: running it again sends only what
    /// was not delivered. Encrypted DMs whose device store `lifeboat serve`
    /// has open are left to serve's delivery worker. Exit 0 when every
    /// notice is delivered (or left to serve), 1 otherwise, 2 for usage
    /// errors (e.g. no terminal to confirm on and no --yes), 130 when
    /// Ctrl-C or SIGTERM stopped it before it made any token.
    Notify(notify::Args),
    /// Registration tokens issued to affected people.
    #[command(subcommand)]
    Tokens(tokens::Command),
    /// After a database wipe: re-create lifeboat's own admin account through the shared secret.
    ///
    /// Needs homeserver.registration_shared_secret. Does nothing when an admin
    /// token still works; an account of lifeboat's ID that takes lifeboat's
    /// own password (a hold run made it) is kept; any other refuses it (then
    /// the token was revoked, not the database lost, or someone else
    /// registered the ID). Exit 0 ok, 1 failed.
    Recover(recover::Args),
    /// Rehearse the way back in against the live homeserver, changing nothing there.
    ///
    /// Checks Synapse, the admin token, the shared secret (without creating
    /// an account), registration tokens (one made and deleted), whether
    /// lifeboat may create and lock accounts to hold lost IDs, email (a test
    /// message to alerts.email), the bot (a test message in the admin room,
    /// with a [bot] section), the registry's freshness and coverage, and the
    /// last backup (none, or one over 7 days old, fails; a warning when it
    /// was not encrypted). Exit 0 ready, 1 not.
    Drill(drill::Args),
    /// Write a consistent snapshot of the registry to a portable file (safe while lifeboat runs).
    ///
    /// One JSON line per row; a backup of a SQLite registry restores into
    /// PostgreSQL and back. It holds lifeboat's admin token and the key that
    /// signs claim links: with backup.encrypt_to set it is age-encrypted to
    /// those keys. Exit 0 ok, 1 failed.
    Backup(backup::BackupArgs),
    /// Load a backup into an empty registry (or, with --replace, into one emptied first).
    ///
    /// All or nothing, in one transaction; a truncated file, or a value of
    /// the wrong type, is refused. A registry holding anything a backup
    /// keeps is not empty. --replace keeps lifeboat's own account
    /// credentials when they are newer than the backup's (a `recover` on
    /// this registry since), or lifeboat would be locked out of its account.
    /// An encrypted backup needs --identity. Exit 0 ok, 1 failed, 2 when
    /// --replace could not ask (pass --yes).
    Restore(backup::RestoreArgs),
    /// Run the long-lived service: web page, admin-room bot, watcher and delivery worker.
    ///
    /// Runs each face whose section is configured: [web] (the page plus
    /// /healthz on web.bind; /metrics is on metrics.bind), [bot] with admin_room or admins (the admin-room bot), the
    /// watcher (one listing, a sync, every watch.interval, alerts once per change
    /// to the admin room and alerts.email) and the delivery worker (sends
    /// due retries). SIGINT or SIGTERM stops it gracefully: nothing in
    /// flight is lost or sent twice.
    Serve,
    /// Validate a config file.
    #[command(subcommand)]
    Config(config_check::Command),
}

/// A command's failure: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl std::fmt::Display) -> Self {
        Failure { code, message: message.to_string() }
    }

    /// A failure that exits 1, the code of most.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Failure::new(exit::FAILED, message)
    }
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Self {
        Failure::new(exit::USAGE, err)
    }
}

impl From<crate::registry::Error> for Failure {
    fn from(err: crate::registry::Error) -> Self {
        match err {
            crate::registry::Error::SynapsesOwn(_) => Failure::new(exit::USAGE, err),
            err => Failure::failed(err),
        }
    }
}

pub type Outcome = Result<u8, Failure>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // Output piped into `head` ends quietly once the reader is gone, as
        // Unix tools do (Rust ignores SIGPIPE, and println! would panic).
        // Not serve: a closed log pipe must never end the service.
        // SAFETY: resetting a signal to its default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    // The command runs as a task on the runtime's workers, not on this
    // thread: the tasks it spawns (a notify run's sends) then wake it on the
    // same worker instead of across threads (see benches/README.md).
    let outcome = runtime.block_on(async {
        tokio::spawn(run(cli))
            .await
            .unwrap_or_else(|panicked| Err(Failure::failed(format!("lifeboat stopped unexpectedly: {panicked}"))))
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", on_a_terminal(&failure.message));
            ExitCode::from(failure.code)
        }
    }
}

/// A failure's sentence may quote others' words (a room's name, a remote
/// server's refusal): each of its lines with nothing a terminal would act on.
fn on_a_terminal(message: &str) -> String {
    message.lines().map(crate::plain_text::one_line).collect::<Vec<_>>().join("\n")
}

async fn run(cli: Cli) -> Outcome {
    let context = Context { config_path: cli.config };
    match cli.command {
        Command::Sync(args) => sync::run(&context, args).await,
        Command::Check(args) => check::run(&context, args).await,
        Command::Users(command) => users::run(&context, command).await,
        Command::Contacts(command) => contacts::run(&context, command).await,
        Command::Holds(command) => holds::run(&context, command).await,
        Command::Rooms(command) => rooms::run(&context, command).await,
        Command::Incident(command) => incident::run(&context, command).await,
        Command::Notify(args) => notify::run(&context, args).await,
        Command::Tokens(command) => tokens::run(&context, command).await,
        Command::Recover(args) => recover::run(&context, args).await,
        Command::Drill(args) => drill::run(&context, args).await,
        Command::Backup(args) => backup::run_backup(&context, args).await,
        Command::Restore(args) => backup::run_restore(&context, args).await,
        Command::Serve => serve::run(&context).await,
        Command::Config(command) => config_check::run(&context, command),
    }
}

/// What every command may need, loaded on demand.
pub(crate) struct Context {
    config_path: PathBuf,
}

impl Context {
    pub(crate) fn config(&self) -> Result<Config, Failure> {
        Ok(Config::load(&self.config_path, std::env::vars())?)
    }

    /// The config and the registry it names.
    pub(crate) async fn open(&self) -> Result<(Config, Registry), Failure> {
        let config = self.config()?;
        let registry = Registry::connect(&config.registry.url).await?;
        Ok((config, registry))
    }

    /// [`admin_client_recovering`] for the command line: notes on stderr.
    pub(crate) async fn admin_client_recovering(
        &self,
        config: &Config,
        registry: &Registry,
    ) -> Result<SynapseClient, Failure> {
        admin_client_recovering(config, registry, &Actor::cli(), &incident::StderrNotes::default())
            .await
            .map_err(Failure::failed)
    }

    /// A client with a working admin token (recovered or configured). When
    /// every token is rejected as unknown, the one that worked last is used
    /// anyway (the recovered one, after a first wipe), so the caller reports
    /// what Synapse says (check: a suspected reset); the configured one only
    /// when there is no other.
    /// `synapse_failed` words a failure of Synapse itself as the command's.
    pub(crate) async fn admin_client<E: std::fmt::Display>(
        &self,
        config: &Config,
        registry: &Registry,
        synapse_failed: impl FnOnce(synapse::Error) -> E,
    ) -> Result<SynapseClient, Failure> {
        match admin_access(config, registry).await {
            Ok(AdminAccess::Working { client, .. }) => Ok(client),
            Ok(AdminAccess::Dead { client }) if client.token_fingerprint().is_some() => Ok(client),
            Ok(AdminAccess::Dead { client }) => Ok(client.with_token(config.require_admin_token()?.clone())),
            Err(RecoverError::Synapse(err)) => Err(Failure::failed(synapse_failed(err))),
            Err(err) => Err(Failure::failed(err)),
        }
    }
}

/// A token SIGINT (Ctrl-C) or SIGTERM (systemd, kill) cancels, to start a
/// graceful stop: work in flight finishes and is recorded. A second signal
/// ends the process at once.
fn stop_on_signal() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = tokio_util::sync::CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stop lifeboat with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
        // Some steps cannot stop half-way (a recovery, a Synapse call): say that a stop is coming.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("Stopping after the step under way; a second Ctrl-C (or SIGTERM) ends at once.");
        }
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        std::process::exit(exit::INTERRUPTED.into());
    });
    stop
}

/// matrix-sdk lines that sound alarming on a healthy start and need no
/// action here: expected 404s for absent account data (logged as errors), a
/// key backup the bot does not need (every 30 s), "our own device might
/// have been deleted" for a device whose keys lifeboat never published (a
/// DM sender that restores a session), and "not sharing message history"
/// because the bot sets up no cross-signing (it needs none). `-vv` shows all.
const QUIET_MATRIX_SDK: &str = "matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error,\
    matrix_sdk_crypto::identities::manager=error,matrix_sdk::room::shared_room_history=error";

/// sqlx warns of a PostgreSQL URL parameter it does not know with its
/// value, which may be a secret (`sslpassword`, a mistyped `passwd`).
const NO_URL_VALUES: &str = "sqlx_postgres::options=error";

fn init_logging(verbose: u8) {
    let default = match verbose {
        // sqlx's pool warns about connections it drops; the query that
        // needed one reports the failure itself.
        0 => format!("warn,sqlx::pool=off,{QUIET_MATRIX_SDK},{NO_URL_VALUES}"),
        1 => format!("lifeboat=info,warn,{QUIET_MATRIX_SDK},{NO_URL_VALUES}"),
        _ => format!("lifeboat=debug,info,{NO_URL_VALUES}"),
    };
    // RUST_LOG may say what it likes, except to log a URL's parameter values.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        .add_directive(NO_URL_VALUES.parse().expect("a valid directive"));
    // Colours only for a person at a terminal, never in journald or files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_quoting_others_words_reaches_the_terminal_without_its_escapes() {
        let said = "room \u{1b}[2J\u{1b}]52;c;ZXZpbA==\u{7}Boats\r refused\nrun it again";
        let shown = super::on_a_terminal(said);
        assert!(!shown.contains('\u{1b}') && !shown.contains('\r') && !shown.contains('\u{7}'), "{shown:?}");
        assert_eq!(shown.lines().count(), 2, "its own lines stay: {shown:?}");
    }
}
