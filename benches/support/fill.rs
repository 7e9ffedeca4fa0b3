//! Filling a bench Synapse with accounts by inserting rows into its
//! database (SQLite, or PostgreSQL through the harness's `--postgres`):
//! minutes faster than the admin API (10,000 accounts by API take about 25
//! minutes on the bench machine, by rows a few seconds). Included by each
//! bench with `#[path]`, like `synapse.rs`.
//!
//! The recipe: the harness starts Synapse on an empty database and
//! registers its admin; once `background_updates` is empty (Synapse's own
//! schema updates after a first start) Synapse is stopped and `count` rows
//! go into `users` (no password hash, `creation_ts` in seconds), `profiles`
//! and `user_threepids` (one validated email each) in one INSERT … SELECT
//! per table; on SQLite `sqlite_stat1` is dropped if present, so that the
//! query planner does not go by statistics of the empty database, and on
//! PostgreSQL the tables are analyzed, as autovacuum soon would on a real
//! server. The caller starts the harness again on the same folder; it logs
//! its admin in with the password it kept.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::synapse::Harness;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A connection to an existing SQLite database.
pub async fn sqlite(path: &Path) -> Result<sqlx::SqliteConnection> {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(false);
    Ok(sqlx::SqliteConnection::connect_with(&options).await?)
}

/// Where the bench's Synapse keeps its database.
#[derive(Clone, Debug, PartialEq)]
pub enum SynapseDb {
    /// homeserver.db in the harness's folder.
    Sqlite,
    /// This database on the local PostgreSQL (the harness's `--postgres`).
    Postgres(String),
}

impl SynapseDb {
    /// The harness's arguments for it (they count only when its folder is
    /// first set up).
    pub fn harness_args(&self) -> Vec<String> {
        match self {
            SynapseDb::Sqlite => Vec::new(),
            SynapseDb::Postgres(name) => vec!["--postgres".into(), name.clone()],
        }
    }

    /// A connection to Synapse's database (`dir` is the harness's folder).
    pub async fn connect(&self, dir: &Path) -> Result<sqlx::AnyConnection> {
        sqlx::any::install_default_drivers();
        let url = match self {
            SynapseDb::Sqlite => format!("sqlite://{}?mode=rw", dir.join("homeserver.db").display()),
            SynapseDb::Postgres(name) => postgres_url(name),
        };
        Ok(sqlx::AnyConnection::connect(&url).await?)
    }
}

/// The local PostgreSQL's database `name` (trust authentication, as on
/// these machines and in CI).
pub fn postgres_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Starts a Synapse on an empty database in `dir` (which must not hold
/// one), waits for its background updates, stops it, and inserts `count`
/// accounts. Account `i` (0, 1, …) has the localpart that the SQL
/// expression `localpart` gives for the integer column `i` (in `db`'s
/// dialect), the display name `Person i`, the email
/// `<localpart>@example.org` and `creation_ts` 1600000000 + i. Returns
/// Synapse's server name.
pub async fn fill(
    python: &Path,
    repo: &Path,
    dir: &Path,
    db: &SynapseDb,
    count: usize,
    localpart: &str,
) -> Result<String> {
    let harness = Harness::start_with(python, repo, dir, &db.harness_args())?;
    let server_name = harness.info.server_name.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut conn = db.connect(dir).await?;
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM background_updates").fetch_one(&mut conn).await?;
        conn.close().await?;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{left} background updates still pending after 10 minutes").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    harness.stop();
    if count == 0 {
        return Ok(server_name);
    }
    let mut conn = db.connect(dir).await?;
    let numbers = format!("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) ", count - 1);
    let lp = localpart;
    let mut tx = conn.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated, shadow_banned, approved, locked, suspended) \
         {numbers} SELECT '@' || {lp} || ':{server_name}', NULL, 1600000000 + i, 0, 0, 0, FALSE, TRUE, FALSE, FALSE FROM n"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO profiles (user_id, displayname, full_user_id) {numbers} \
         SELECT {lp}, 'Person ' || i, '@' || {lp} || ':{server_name}' FROM n"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) {numbers} \
         SELECT '@' || {lp} || ':{server_name}', 'email', {lp} || '@example.org', \
         CAST(1600000000 + i AS BIGINT) * 1000, CAST(1600000000 + i AS BIGINT) * 1000 FROM n"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let SynapseDb::Postgres(_) = db {
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        conn.close().await?;
        return Ok(server_name);
    }
    let stat: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").fetch_optional(&mut conn).await?;
    if stat.is_some() {
        sqlx::query("DROP TABLE sqlite_stat1").execute(&mut conn).await?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    conn.close().await?;
    Ok(server_name)
}
