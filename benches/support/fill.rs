//! Filling a bench Synapse with accounts by inserting rows into its SQLite
//! database: minutes faster than the admin API (10,000 accounts by API take
//! about 25 minutes on the bench machine, by rows a few seconds). Included
//! by each bench with `#[path]`, like `synapse.rs`.
//!
//! The recipe: the harness starts Synapse on an empty database and
//! registers its admin; once `background_updates` is empty (Synapse's own
//! schema updates after a first start) Synapse is stopped and `count` rows
//! go into `users` (no password hash, `creation_ts` in seconds), `profiles`
//! and `user_threepids` (one validated email each) in one INSERT … SELECT
//! per table; `sqlite_stat1` is dropped if present, so that the query
//! planner does not go by statistics of the empty database. The caller
//! starts the harness again on the same folder; it logs its admin in with
//! the password it kept.

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

/// Starts a Synapse on an empty database in `dir` (which must not hold
/// one), waits for its background updates, stops it, and inserts `count`
/// accounts. Account `i` (0, 1, …) has the localpart that the SQL
/// expression `localpart` gives for the integer column `i`, the display
/// name `Person i`, the email `<localpart>@example.org` and `creation_ts`
/// 1600000000 + i. Returns Synapse's server name.
pub async fn fill(python: &Path, repo: &Path, dir: &Path, count: usize, localpart: &str) -> Result<String> {
    let harness = Harness::start(python, repo, dir)?;
    let server_name = harness.info.server_name.clone();
    let db = dir.join("homeserver.db");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut conn = sqlite(&db).await?;
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
    let mut conn = sqlite(&db).await?;
    let numbers = format!("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) ", count - 1);
    let lp = localpart;
    let mut tx = conn.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated, shadow_banned, approved, locked, suspended) \
         {numbers} SELECT '@' || {lp} || ':{server_name}', NULL, 1600000000 + i, 0, 0, 0, 0, 1, 0, 0 FROM n"
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
         (1600000000 + i) * 1000, (1600000000 + i) * 1000 FROM n"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let stat: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").fetch_optional(&mut conn).await?;
    if stat.is_some() {
        sqlx::query("DROP TABLE sqlite_stat1").execute(&mut conn).await?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    conn.close().await?;
    Ok(server_name)
}
