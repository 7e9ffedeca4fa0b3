//! The off-server registry: lifeboat's own database (SQLite or PostgreSQL)
//! of accounts, contacts, sync runs and an audit log.
//!
//! Queries are written once against sqlx's `Any` driver with `$n`
//! placeholders, which both backends accept. Times are UTC milliseconds.

mod accounts;
mod audit;
mod contacts;
mod credentials;
mod deliveries;
mod holds;
mod incidents;
mod messages;
mod rooms;
mod status;
mod sync_runs;
mod verifications;
mod web;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};

pub use crate::reconcile::AccountState;
pub use accounts::{Account, OldName, STANDING_SQL, may_come_back};
pub use audit::{Actor, AuditEntry};
pub use contacts::{AddContact, Contact, ContactAddress, ContactKind, ContactSource};
pub(crate) use credentials::set_setting_in;
pub use credentials::{CredentialFrom, SERVICE_PASSWORD_SETTING, ServiceCredential};
pub use deliveries::{Delivery, DeliveryChannel, DeliveryCounts, DeliveryState, OutboxWriter, PlannedEmails};
pub use holds::{HoldCandidate, HoldCounts, HoldRow, hand_over_lease};
pub use incidents::{Incident, IncidentScope, IncidentSummary, NoticeToken, TokenPurpose};
pub use messages::{EXPIRED, INCIDENT_RESOLVED, MessageKind, NO_LONGER_MAILABLE, NewMessage, StoredMessage};
pub use rooms::{
    FormerMember, MAX_REJOIN_ATTEMPTS, ROOMS_LISTED_SETTING, Rejoin, RejoinOutcome, Room, RoomCounts, RoomDetails,
    RoomFate, RoomRecord, RoomState,
};
pub use status::RegistryStatus;
pub use sync_runs::{AccountDetails, DetailsDue, SyncApplied, SyncRun};
pub use verifications::{CODE_LIMITS, CodeCheck, CodeLimits, MAX_CODE_ATTEMPTS, code_hash};
pub use web::{AskedAs, MailableContact, NewWebLink, WebLink};

pub(crate) static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the registry at {url}: {}; check registry.url and that the database is reachable", describe(.source))]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot bring the registry at {url} up to date: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("registry query failed: {}", describe(.0))]
    Query(#[from] sqlx::Error),
    #[error("{0}")]
    Refused(String),
    /// `registry.url` names Synapse's database (shown redacted): a setting
    /// to fix, not a failure to retry.
    #[error(
        "registry.url ({0}) names Synapse's own database: lifeboat needs one of its own, apart from Synapse's (it must outlive it), so nothing was written there"
    )]
    SynapsesOwn(String),
    /// The words are the CLI's; other faces say their own (`Error::hint`).
    #[error("there is no incident {0}: `lifeboat incident list` shows them")]
    NoSuchIncident(i64),
    #[error(
        "no account is marked missing, so nobody would be affected: run `lifeboat sync` (after `lifeboat recover` if Synapse lost its database), or pass --affected all"
    )]
    NobodyMissing,
    #[error("the registry has no accounts: run `lifeboat sync` first")]
    NoAccounts,
    #[error("{0} is not in the registry: check the ID, or run `lifeboat sync` if the account is new")]
    UnknownAccount(String),
    /// Open incidents already cover accounts a new one would affect: (incident, accounts).
    #[error("{}: its people would be notified twice", covering_text(.0))]
    AlreadyCovered(Vec<(i64, i64)>),
}

/// "open incident 1 already covers 5 of the accounts …" (and any others).
fn covering_text(covering: &[(i64, i64)]) -> String {
    let each = covering
        .iter()
        .map(|(id, count)| format!("open incident {id} already covers {count} of the accounts this one would affect"));
    each.collect::<Vec<_>>().join("; ")
}

impl Error {
    /// The sentence for the admin-room bot, whose commands are written
    /// `<prefix> <command>` and which has no command-line flags.
    pub fn for_bot(&self, prefix: &str) -> String {
        match self {
            Error::NoSuchIncident(id) => format!("there is no incident {id}: `{prefix} incident list` shows them"),
            Error::NobodyMissing => format!(
                "no account is marked missing, so nobody would be affected: send `{prefix} sync` first (lifeboat gets back in by itself if Synapse lost its database)"
            ),
            Error::NoAccounts => format!("the registry has no accounts: send `{prefix} sync` first"),
            Error::UnknownAccount(user_id) => {
                format!("{user_id} is not in the registry: check the ID, or send `{prefix} sync` if the account is new")
            }
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database error as one plain clause: its own message and code, without the source location
/// PostgreSQL appends ("at line 3211" of its C code); a pool timeout said as what it means.
pub fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => format!(
            "no connection to the registry within {}s: the database is down, unreachable or overloaded",
            ACQUIRE_TIMEOUT.as_secs()
        ),
        other => other.to_string(),
    }
}

#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
    /// For a plain connection that tells why the pool cannot connect.
    options: Arc<AnyConnectOptions>,
    /// One health check at a time, and the last one's answer: probes
    /// asked for by anyone (the public `/healthz`) wait for the check under
    /// way and share its answer, so a flood of them takes one of the pool's
    /// connections and opens one beside it, not one each.
    health: Arc<tokio::sync::Mutex<Option<HealthCheck>>>,
}

struct HealthCheck {
    finished: Instant,
    answer: Result<(), String>,
}

/// How long a query waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings every connection gets when it opens.
async fn prepare(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        conn.execute("PRAGMA busy_timeout = 10000").await?;
        // Per connection: SQLite forgets foreign keys otherwise.
        conn.execute("PRAGMA foreign_keys = ON").await?;
        use_wal(conn).await?;
        conn.execute("PRAGMA synchronous = NORMAL").await?;
    }
    Ok(())
}

/// Puts a SQLite file in WAL mode, which it keeps. Setting it takes a lock
/// that `busy_timeout` does not wait for: processes opening a new registry
/// at once (serve and a CLI command) each try again a moment later.
async fn use_wal(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    // SQLITE_BUSY, and its extended codes (the low byte is the primary one).
    let busy = |err: &sqlx::Error| {
        let code = err.as_database_error().and_then(|err| err.code()).and_then(|code| code.parse::<i32>().ok());
        code.is_some_and(|code| code & 0xff == 5)
    };
    let mut tries: u64 = 0;
    loop {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(());
        }
        match conn.execute("PRAGMA journal_mode = WAL").await {
            Err(err) if busy(&err) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10 * tries.min(10))).await;
            }
            done => return done.map(drop),
        }
    }
}

/// Opens, prepares and closes one connection: its error is the real cause.
async fn probe(options: &AnyConnectOptions, backend: Backend) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::AnyConnection::connect_with(options).await?;
    prepare(&mut conn, backend).await?;
    conn.close().await
}

/// Whether the database holds Synapse's own tables (`event_json`, which
/// only Synapse makes): a registry there would be lost with them, and its
/// first migration would half-apply among them.
async fn is_synapses_own(pool: &sqlx::AnyPool, backend: Backend) -> Result<bool, sqlx::Error> {
    let sql = match backend {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'event_json'",
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() \
             AND table_name = 'event_json'"
        }
    };
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await? > 0)
}

/// The file a `sqlite://PATH?…` URL names (none for in-memory databases).
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && !path.starts_with(":memory:")).then_some(path)
}

/// Applies the migrations not applied yet. sqlx locks PostgreSQL for it,
/// not SQLite: two processes started at once (serve and a CLI command after
/// an upgrade) may both apply one, and the second fails ("table already
/// exists", or the migration's row already recorded; each migration's
/// transaction undone). It tries again, and finds the first's work done; a
/// migration that fails for itself fails each time.
async fn migrate(
    migrator: &sqlx::migrate::Migrator,
    pool: &AnyPool,
    backend: Backend,
) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    let mut tries = 0;
    loop {
        match migrator.run(pool).await {
            Err(sqlx::migrate::MigrateError::ExecuteMigration(..) | sqlx::migrate::MigrateError::Execute(..))
                if backend == Backend::Sqlite && tries < 5 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
            }
            done => return done,
        }
    }
}

impl Registry {
    /// Opens (creating a SQLite file if needed) and migrates the registry.
    pub async fn connect(url: &str) -> Result<Registry> {
        sqlx::any::install_default_drivers();
        let shown = crate::redact::redact_url(url);
        let backend = if url.starts_with("postgres") { Backend::Postgres } else { Backend::Sqlite };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let unreachable = |source| Error::Connect { url: shown.clone(), source };
        if backend == Backend::Sqlite
            && let Some(path) = sqlite_file(&url)
        {
            crate::owner_only::create_if_missing(Path::new(path)).map_err(|err| unreachable(sqlx::Error::Io(err)))?;
        }
        let options = AnyConnectOptions::from_str(&url).map_err(unreachable)?;
        // One plain connection first: the pool would retry a refused
        // connection until its timeout and then report only that it timed out.
        probe(&options, backend).await.map_err(unreachable)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            // Long enough for a busy moment, short enough that a registry
            // gone down is reported rather than waited on.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A SQLite connection cannot go stale, and the check costs a
            // round trip to its worker thread before every statement.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| Box::pin(prepare(conn, backend)))
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        if is_synapses_own(&pool, backend).await.map_err(unreachable)? {
            return Err(Error::SynapsesOwn(shown));
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrate(migrator, &pool, backend).await.map_err(|source| Error::Migrate { url: shown, source })?;
        Ok(Registry { pool, backend, options: Arc::new(options), health: Arc::default() })
    }

    /// For health probes: whether the registry answers within `limit`, and if not, why (the
    /// database's own error, e.g. connection refused, where one plain connection can tell it).
    /// A probe that arrives while a check is under way gets that check's answer.
    pub async fn health(&self, limit: Duration) -> Result<(), String> {
        let asked = Instant::now();
        let mut last = self.health.lock().await;
        if let Some(check) = last.as_ref().filter(|check| check.finished >= asked) {
            return check.answer.clone();
        }
        let answer = self.check_health(limit).await;
        *last = Some(HealthCheck { finished: Instant::now(), answer: answer.clone() });
        answer
    }

    async fn check_health(&self, limit: Duration) -> Result<(), String> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(limit, query).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) if !matches!(err, sqlx::Error::PoolTimedOut) => return Err(describe(&err)),
            _ => {}
        }
        // The pool could not say why: one plain connection can.
        Err(match tokio::time::timeout(limit, probe(&self.options, self.backend)).await {
            Ok(Err(err)) => describe(&err),
            Ok(Ok(())) => "the registry is busy: no connection was free in time".to_owned(),
            Err(_) => format!("the registry did not answer within {}s", limit.as_secs()),
        })
    }

    /// PostgreSQL needs a few statements SQLite does not (and vice versa).
    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// SQL for the registry's own clock now, in ms since the Unix epoch.
    pub(crate) fn clock_ms(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that writes. On SQLite it takes the write lock at BEGIN (IMMEDIATE): a
    /// deferred one that reads, then writes fails at once ("database is locked") if another
    /// connection wrote in between (serve's watcher, a web request); this one waits its turn.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A transaction that writes, with `table` locked against other writers
    /// until it ends (what SQLite's BEGIN IMMEDIATE does already): what it
    /// counts there cannot change before it writes.
    pub(crate) async fn begin_write_locking(&self, table: &str) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write().await?;
        if self.is_postgres() {
            let lock = format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE");
            sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A 0/1 column, read into a bool with `#[sqlx(try_from = "Flag")]`:
/// sqlx's Any driver decodes no integer column as a bool.
#[derive(sqlx::Type)]
#[sqlx(transparent)]
pub(super) struct Flag(i64);

impl From<Flag> for bool {
    fn from(flag: Flag) -> bool {
        flag.0 != 0
    }
}

/// A day, in the milliseconds of [`now_ms`].
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// UTC milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as i64).unwrap_or(0)
}

/// `$first,…,$last`: numbered placeholders for SQL written at run time.
pub(crate) fn placeholders(numbers: std::ops::RangeInclusive<usize>) -> String {
    numbers.map(|n| format!("${n}")).collect::<Vec<_>>().join(",")
}

/// "2026-12-09 19:00 UTC"
pub fn human_time(ms: i64) -> String {
    format_time(ms).map_or_else(|| "-".to_owned(), |stamp| format!("{} UTC", stamp[..16].replace('T', " ")))
}

/// `2026-11-25T19:30:00Z` for UTC milliseconds; `None` for a value no
/// calendar can show (Synapse may send anything).
pub fn format_time(ms: i64) -> Option<String> {
    // Up to the year 9999, which humantime can format.
    if !(0..=253_402_300_799_000).contains(&ms) {
        return None;
    }
    let at = UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn audit(executor: impl sqlx::Executor<'_, Database = sqlx::Any>, action: &str) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, actor, action) VALUES ($1, 'cli', $2)")
            .bind(now_ms())
            .bind(action)
            .execute(executor)
            .await?;
        Ok(())
    }

    /// The race `begin_write` is for: this transaction reads, another
    /// connection writes, then this one writes. Begun deferred, the other
    /// write commits in between and this one fails at once ("database is
    /// locked"); begun IMMEDIATE, the other write waits for this commit.
    #[tokio::test]
    async fn a_write_transaction_that_reads_first_is_not_failed_by_a_write_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let registry =
            Registry::connect(&format!("sqlite://{}", dir.path().join("registry.db").display())).await.unwrap();
        let mut tx = registry.begin_write().await.unwrap();
        let (before,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log").fetch_one(&mut *tx).await.unwrap();

        let pool = registry.pool().clone();
        let other_write = tokio::spawn(async move { audit(&pool, "the other connection's").await });
        // Time for the other write to commit, if nothing holds it back.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        audit(&mut *tx, "this transaction's").await.expect("the write after the read");
        tx.commit().await.unwrap();
        other_write.await.unwrap().expect("the other write, after this commit");

        let actions: Vec<(String,)> =
            sqlx::query_as("SELECT action FROM audit_log ORDER BY id").fetch_all(registry.pool()).await.unwrap();
        let actions: Vec<&str> = actions.iter().map(|(action,)| action.as_str()).collect();
        assert_eq!(before, 0);
        assert_eq!(actions, ["this transaction's", "the other connection's"], "the other write waited its turn");
    }
}
