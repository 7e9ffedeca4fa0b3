//! Backup and restore of the registry as a portable file: one JSON line per
//! row, the same for SQLite and PostgreSQL (so a backup of one restores into
//! the other). The snapshot is read in one transaction while lifeboat runs.
//!
//! File: a header line `{"lifeboat_backup": 1, ...}`, then
//! `{"table": NAME, "row": [...]}` lines in the order restore needs, then
//! `{"end": true, "rows": N}` so a truncated file is refused. With
//! `backup.encrypt_to`, the whole file is age-encrypted to those keys.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;

use crate::registry::{Actor, Registry, SERVICE_PASSWORD_SETTING, now_ms, placeholders};

const FORMAT_VERSION: i64 = 1;
/// Registry setting: when the last backup was written.
pub const LAST_BACKUP_SETTING: &str = "last_backup_at";
/// Registry setting: whether that backup was encrypted ("yes" or "no").
pub const LAST_BACKUP_ENCRYPTED_SETTING: &str = "last_backup_encrypted";

/// How many of a table's last columns were added after format 1 was
/// first written: older backups lack them, and they are restored as NULL.
fn added_later(table: &str) -> usize {
    match table {
        // custody, custody_at (held IDs), details_due_at, display_name_due_at,
        // lost_created_at, hold_refused, appservice_id, held_unlocked_at,
        // stranger_devices
        "accounts" => 9,
        // state_read_at, aliases_due_at, aliases_attempts, restore_attempts,
        // creator_from_state, stepped_aside_at
        "rooms" => 6,
        // kind (a notice, by default), subject, body_text, body_html,
        // expires_at (one outbox for every message), not_before
        "deliveries" => 6,
        _ => 0,
    }
}

/// The tables kept, parents before children; their columns are read from
/// the schema, so a new column is kept without anyone listing it here.
/// Staged listings, leases, pending contact-verification codes and the web
/// page's 30-minute links are run-time state and are not kept, nor are the
/// messages that carry those links and codes.
const TABLES: &[&str] = &[
    "accounts",
    "contacts",
    "dropped_emails",
    "sync_runs",
    "audit_log",
    "incidents",
    "incident_accounts",
    "registration_tokens",
    "deliveries",
    "service_credentials",
    "dm_rooms",
    "settings",
    "rooms",
    "room_members",
];

struct Column {
    name: String,
    /// Read and written as an integer (all others are text).
    integer: bool,
}

/// A table's columns in schema order (the order of a backup's rows).
async fn columns_of(conn: &mut sqlx::AnyConnection, postgres: bool, table: &str) -> Result<Vec<Column>, BackupError> {
    let sql = if postgres {
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
    } else {
        "SELECT name, type FROM pragma_table_info($1) ORDER BY cid"
    };
    let rows: Vec<(String, String)> = sqlx::query_as(sql).bind(table).fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Err(BackupError::Failed(format!("the registry has no table {table}: it is not up to date")));
    }
    Ok(rows.into_iter().map(|(name, kind)| Column { integer: kind.to_lowercase().contains("int"), name }).collect())
}

/// Tables whose `id` PostgreSQL generates (restore must override it).
const IDENTITY_TABLES: &[&str] =
    &["contacts", "sync_runs", "audit_log", "incidents", "registration_tokens", "deliveries"];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
}

impl From<sqlx::Error> for BackupError {
    fn from(err: sqlx::Error) -> Self {
        BackupError::Registry(err.into())
    }
}

fn select_sql(table: &str, columns: &[Column]) -> String {
    let names: Vec<&str> = columns.iter().map(|column| column.name.as_str()).collect();
    let order: Vec<&str> = names.iter().copied().take(if table == "incident_accounts" { 2 } else { 1 }).collect();
    // The mail and DMs of the page's links and of codes: run-time state as
    // their links and codes are, and each carries one.
    let rows = if table == "deliveries" { " WHERE kind NOT IN ('link', 'code')" } else { "" };
    format!("SELECT {} FROM {table}{rows} ORDER BY {}", names.join(", "), order.join(", "))
}

/// Every kept row, as the JSON lines a backup holds, in file order.
pub async fn snapshot_lines(
    registry: &Registry,
    mut emit: impl FnMut(String) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut tx = registry.pool().begin().await?;
    if registry.is_postgres() {
        // One consistent view across all tables while others keep writing.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    }
    let mut rows = 0;
    for table in TABLES {
        let columns = columns_of(&mut tx, registry.is_postgres(), table).await?;
        let sql = select_sql(table, &columns);
        let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(row) = stream.try_next().await? {
            let values = columns
                .iter()
                .enumerate()
                .map(|(index, column)| {
                    if column.integer {
                        row.try_get::<Option<i64>, _>(index).map(Value::from)
                    } else {
                        row.try_get::<Option<String>, _>(index).map(Value::from)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            emit(json!({"table": table, "row": values}).to_string())?;
            rows += 1;
        }
    }
    tx.commit().await?;
    Ok(rows)
}

/// How every age-encrypted file begins.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

/// The lines of backup `file`, and whether it is encrypted (then decrypted
/// with a key of the age key file `identity`).
fn open_backup(file: &Path, identity: Option<&Path>) -> Result<(Box<dyn BufRead + Send>, bool), BackupError> {
    let failed = |why: String| BackupError::Failed(why);
    let unreadable = |err: std::io::Error| failed(format!("cannot read {}: {err}", file.display()));
    let mut input = std::io::BufReader::new(std::fs::File::open(file).map_err(unreadable)?);
    if !input.fill_buf().map_err(unreadable)?.starts_with(AGE_MAGIC) {
        return Ok((Box::new(input), false));
    }
    let Some(identity) = identity else {
        return Err(failed(format!(
            "{} is encrypted: pass --identity KEYFILE, the age key file of one of the keys in backup.encrypt_to",
            file.display()
        )));
    };
    let keys = age::IdentityFile::from_file(identity.to_string_lossy().into_owned())
        .and_then(|keys| keys.into_identities().map_err(std::io::Error::other))
        .map_err(|err| failed(format!("cannot read the age key file {}: {err}", identity.display())))?;
    if keys.is_empty() {
        return Err(failed(format!(
            "{} holds no age key (AGE-SECRET-KEY-1…, as `age-keygen` writes)",
            identity.display()
        )));
    }
    let decryptor = age::Decryptor::new_buffered(input).map_err(|err| {
        failed(format!("{} is not a lifeboat backup: its encryption header is damaged ({err})", file.display()))
    })?;
    let plain = decryptor.decrypt(keys.iter().map(|key| key.as_ref() as &dyn age::Identity)).map_err(|err| match err {
        age::DecryptError::NoMatchingKeys => failed(format!(
            "{} is encrypted to other keys than those in {}: pass the key file of one of the keys it was written with",
            file.display(),
            identity.display()
        )),
        err => failed(format!("cannot decrypt {}: {err}", file.display())),
    })?;
    Ok((Box::new(std::io::BufReader::new(plain)), true))
}

/// When the registry's last backup was made, and whether it was encrypted
/// (what `drill` reports), together.
async fn record_backup(tx: &mut sqlx::Transaction<'_, sqlx::Any>, at: i64, encrypted: bool) -> Result<(), BackupError> {
    crate::registry::set_setting_in(&mut **tx, LAST_BACKUP_SETTING, &at.to_string()).await?;
    let encrypted = if encrypted { "yes" } else { "no" };
    crate::registry::set_setting_in(&mut **tx, LAST_BACKUP_ENCRYPTED_SETTING, encrypted).await?;
    Ok(())
}

/// How often a backup or restore reports the rows done so far.
const ROWS_PER_REPORT: u64 = 1_000;

/// Writes a consistent snapshot to `out` (atomically: a temporary file, mode
/// 0600 as it holds secrets, renamed into place), encrypted to `encrypt_to`
/// when it names keys, records when, counts rows. The header names the
/// homeserver (`server_name`) the registry is of. `rows_done` hears the rows
/// written so far, every [`ROWS_PER_REPORT`].
pub async fn backup(
    registry: &Registry,
    out: &Path,
    encrypt_to: &[age::x25519::Recipient],
    server_name: &str,
    actor: &Actor,
    rows_done: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, BackupError> {
    let io = |err: std::io::Error| BackupError::Failed(format!("cannot write {}: {err}", out.display()));
    // Beside `out`: a rename does not cross file systems.
    let dir = out.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Said of the folder: tempfile's own error names a file that never was.
    let temporary = tempfile::NamedTempFile::new_in(dir).map_err(|err| {
        let why = match err.kind() {
            std::io::ErrorKind::NotFound => "there is no such folder".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            other => other.to_string(),
        };
        BackupError::Failed(format!("cannot write {}: cannot make a file in {} ({why})", out.display(), dir.display()))
    })?;
    let mut file = BufWriter::new(temporary);
    let rows = if encrypt_to.is_empty() {
        write_lines(registry, &mut file, server_name, &io, rows_done).await?
    } else {
        let keys = encrypt_to.iter().map(|key| key as &dyn age::Recipient);
        let encryptor = age::Encryptor::with_recipients(keys).map_err(std::io::Error::other).map_err(io)?;
        let mut encrypted = encryptor.wrap_output(&mut file).map_err(io)?;
        let rows = write_lines(registry, &mut encrypted, server_name, &io, rows_done).await?;
        // Its last chunk is what says the file is whole.
        encrypted.finish().map_err(io)?;
        rows
    };
    let file = file.into_inner().map_err(|err| io(err.into_error()))?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(out).map_err(|err| io(err.error))?;
    let mut tx = registry.begin_write().await?;
    record_backup(&mut tx, now_ms(), !encrypt_to.is_empty()).await?;
    tx.commit().await?;
    let detail = format!("{rows} rows, {}", if encrypt_to.is_empty() { "not encrypted" } else { "encrypted" });
    registry.audit(actor, "backup", Some(&out.display().to_string()), Some(&detail)).await?;
    Ok(rows)
}

/// Writes a backup's lines to `writer`: the file, or age's encryption in
/// front of it. Returns the rows; `io` words a failed write.
async fn write_lines(
    registry: &Registry,
    writer: &mut impl Write,
    server_name: &str,
    io: &impl Fn(std::io::Error) -> BackupError,
    rows_done: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, BackupError> {
    let header = json!({
        "lifeboat_backup": FORMAT_VERSION,
        "created_at": now_ms(),
        "tables": TABLES.len(),
        "server_name": server_name,
    });
    writeln!(writer, "{header}").map_err(io)?;
    let mut written: u64 = 0;
    let rows = snapshot_lines(registry, |line| {
        written += 1;
        if written.is_multiple_of(ROWS_PER_REPORT) {
            rows_done(written);
        }
        writeln!(writer, "{line}").map_err(io)
    })
    .await?;
    writeln!(writer, "{}", json!({"end": true, "rows": rows})).map_err(io)?;
    Ok(rows)
}

/// Loads a backup into the registry in one transaction. Refuses a registry
/// that holds anything a backup keeps unless `replace` (which empties it
/// first, keeping lifeboat's own credentials if newer than the backup's:
/// [`keep_own_credentials`]), and a backup of another homeserver's
/// registry than `server_name`'s.
pub async fn restore(
    registry: &Registry,
    file: &Path,
    identity: Option<&Path>,
    replace: bool,
    server_name: &str,
    actor: &Actor,
    rows_done: &(dyn Fn(u64) + Send + Sync),
) -> Result<Restored, BackupError> {
    let unreadable = |err| BackupError::Failed(format!("cannot read {}: {err}", file.display()));
    let (lines, encrypted) = open_backup(file, identity)?;
    let mut lines = lines.lines();
    let invalid = |what: &str| BackupError::Failed(format!("{} is not a lifeboat backup: {what}", file.display()));
    // A read that fails is said as such (a damaged encrypted file fails here).
    let first = lines.next().transpose().map_err(unreadable)?;
    let header: Value =
        first.and_then(|line| serde_json::from_str(&line).ok()).ok_or_else(|| invalid("no header line"))?;
    if header["lifeboat_backup"] != FORMAT_VERSION {
        return Err(invalid(&format!("format {} is not {FORMAT_VERSION}", header["lifeboat_backup"])));
    }
    // Another server's accounts would all read as lost here, and be held
    // and notified as this server's. (Backups before 0.x name no server.)
    if let Some(theirs) = header["server_name"].as_str()
        && theirs != server_name
    {
        return Err(BackupError::Failed(format!(
            "{} is a backup of {theirs}'s registry, and this lifeboat is for {server_name} \
             (homeserver.server_name): restore it into the lifeboat of {theirs}",
            file.display()
        )));
    }

    let mut tx = registry.begin_write().await?;
    // Every kept table: a restore empties them all (a new registry that
    // served a while holds the bot's session and the link-signing key).
    let counts: Vec<String> = TABLES.iter().map(|table| format!("(SELECT COUNT(*) FROM {table})")).collect();
    let (held,): (i64,) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {}", counts.join(" + ")))).fetch_one(&mut *tx).await?;
    if held > 0 && !replace {
        return Err(BackupError::Failed(
            "the registry is not empty: restore into a new one, or pass --replace to empty this one first".to_owned(),
        ));
    }
    let own_now = OwnCredentials::read(&mut tx).await?;
    // Run-time rows that point at accounts go first (they are not kept).
    let emptied = ["web_links", "contact_verifications"].into_iter().chain(TABLES.iter().rev().copied());
    for table in emptied.chain(["listing_stage"]) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *tx).await?;
    }

    let mut rows = 0u64;
    let mut ended = None;
    let mut columns: std::collections::HashMap<&str, Vec<Column>> = std::collections::HashMap::new();
    for line in lines {
        let line = line.map_err(unreadable)?;
        let record: Value = serde_json::from_str(&line).map_err(|_| invalid("a line is not JSON"))?;
        if record["end"] == true {
            ended = record["rows"].as_u64();
            break;
        }
        let table = record["table"].as_str().ok_or_else(|| invalid("a row names no table"))?;
        let table = *TABLES.iter().find(|name| **name == table).ok_or_else(|| invalid("an unknown table"))?;
        if !columns.contains_key(table) {
            columns.insert(table, columns_of(&mut tx, registry.is_postgres(), table).await?);
        }
        let columns = &columns[table];
        let oldest = columns.len() - added_later(table);
        let values = record["row"].as_array().filter(|values| (oldest..=columns.len()).contains(&values.len()));
        let values = values.ok_or_else(|| invalid(&format!("a {table} row has the wrong number of columns")))?;
        // A backup written before the last columns existed leaves them NULL.
        let columns = &columns[..values.len()];
        let names: Vec<&str> = columns.iter().map(|column| column.name.as_str()).collect();
        let overriding =
            if registry.is_postgres() && IDENTITY_TABLES.contains(&table) { " OVERRIDING SYSTEM VALUE" } else { "" };
        let sql = format!(
            "INSERT INTO {table} ({}){overriding} VALUES ({})",
            names.join(", "),
            placeholders(1..=names.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (value, column) in values.iter().zip(columns.iter()) {
            // A value of another type would be stored as NULL: refused, and
            // named by its type only (it may be a secret).
            let (fits, wanted) =
                if column.integer { (value.is_i64(), "a whole number") } else { (value.is_string(), "text") };
            if !value.is_null() && !fits {
                let name = &column.name;
                return Err(invalid(&format!("a {table} row's {name} is {}, not {wanted}", json_kind(value))));
            }
            query =
                if column.integer { query.bind(value.as_i64()) } else { query.bind(value.as_str().map(str::to_owned)) };
        }
        query.execute(&mut *tx).await?;
        rows += 1;
        if rows.is_multiple_of(ROWS_PER_REPORT) {
            rows_done(rows);
        }
    }
    match ended {
        Some(expected) if expected == rows => {}
        Some(expected) => return Err(invalid(&format!("it lists {expected} rows but holds {rows}"))),
        None => return Err(invalid("it ends early (no end line): the file is truncated")),
    }
    if registry.is_postgres() {
        for table in IDENTITY_TABLES {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    // The file holds the backup before it: this registry's last backup is
    // the file itself.
    record_backup(&mut tx, header["created_at"].as_i64().unwrap_or_else(now_ms), encrypted).await?;
    let mut detail = format!("{rows} rows");
    let kept_own_credentials = own_now.keep_if_newer(&mut tx).await?;
    if kept_own_credentials {
        detail.push_str(KEPT_OWN_CREDENTIALS);
    }
    // Recorded with the rows: a restore is never reported failed once committed.
    let restored = file.display().to_string();
    Registry::audit_in(&mut tx, actor, "restore", Some(&restored), Some(&detail)).await?;
    tx.commit().await?;
    Ok(Restored { rows, kept_own_credentials, encrypted })
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub rows: u64,
    /// The registry's own credentials of lifeboat's account were newer than
    /// the backup's, and kept ([`OwnCredentials`]).
    pub kept_own_credentials: bool,
    /// The file was age-encrypted.
    pub encrypted: bool,
}

pub const KEPT_OWN_CREDENTIALS: &str =
    "; lifeboat's own account credentials were kept, being newer than the backup's (a recover since)";

/// lifeboat's own account as the registry knew it before a restore: after
/// a wipe, `recover` registered it again with a new password, and the
/// backup's token and password (or none) would lock lifeboat out of it.
/// The bot's stored session and the crypto stores' passphrase go with
/// them: the session is the newer login's, and its device's store was made
/// with this registry's passphrase.
struct OwnCredentials {
    credentials: Vec<(String, String, Option<String>, i64)>,
    password: Option<String>,
    session: Option<String>,
    store_passphrase: Option<String>,
}

impl OwnCredentials {
    async fn read(conn: &mut sqlx::AnyConnection) -> Result<OwnCredentials, BackupError> {
        let credentials =
            sqlx::query_as("SELECT user_id, access_token, device_id, obtained_at FROM service_credentials")
                .fetch_all(&mut *conn)
                .await?;
        let mut setting = async |name: &str| -> Result<Option<String>, BackupError> {
            let read = "SELECT value FROM settings WHERE name = $1";
            Ok(sqlx::query_scalar(read).bind(name).fetch_optional(&mut *conn).await?)
        };
        Ok(OwnCredentials {
            credentials,
            password: setting(SERVICE_PASSWORD_SETTING).await?,
            session: setting(crate::session::SESSION_SETTING).await?,
            store_passphrase: setting(crate::session::STORE_PASSPHRASE).await?,
        })
    }

    /// Puts back each credential obtained after the restored one (or with
    /// none restored), and the password it was registered with. Whether
    /// any was kept.
    async fn keep_if_newer(self, conn: &mut sqlx::AnyConnection) -> Result<bool, BackupError> {
        let mut kept = false;
        for (user_id, token, device_id, obtained_at) in self.credentials {
            let put_back = sqlx::query(
                "INSERT INTO service_credentials (user_id, access_token, device_id, obtained_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id) DO UPDATE SET access_token = excluded.access_token, \
                 device_id = excluded.device_id, obtained_at = excluded.obtained_at \
                 WHERE service_credentials.obtained_at < excluded.obtained_at",
            )
            .bind(user_id)
            .bind(token)
            .bind(device_id)
            .bind(obtained_at)
            .execute(&mut *conn)
            .await?;
            kept |= put_back.rows_affected() > 0;
        }
        if kept {
            let settings = [
                (SERVICE_PASSWORD_SETTING, self.password),
                (crate::session::SESSION_SETTING, self.session),
                (crate::session::STORE_PASSPHRASE, self.store_passphrase),
            ];
            for (name, value) in settings.into_iter().filter_map(|(name, value)| Some((name, value?))) {
                crate::registry::set_setting_in(&mut *conn, name, &value).await?;
            }
        }
        Ok(kept)
    }
}

/// What a JSON value is, for an error that must not show it.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables that hold run-time state only, deliberately not kept.
    const RUN_TIME_TABLES: &[&str] = &["listing_stage", "leases", "contact_verifications", "web_links"];

    /// Every backup ever written restores: a table's rows may lack exactly
    /// the columns migrations added after the table was made, and no more.
    #[tokio::test]
    async fn every_column_added_since_a_table_was_made_may_be_missing_from_a_backup() {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect("sqlite::memory:").await.unwrap();
        let mut first_width = std::collections::HashMap::new();
        for migration in crate::registry::SQLITE_MIGRATIONS.iter() {
            sqlx::raw_sql(migration.sql.clone()).execute(&mut conn).await.unwrap();
            for table in TABLES {
                if let Ok(columns) = columns_of(&mut conn, false, table).await {
                    first_width.entry(*table).or_insert(columns.len());
                }
            }
        }
        for table in TABLES {
            let width = columns_of(&mut conn, false, table).await.unwrap().len();
            assert_eq!(added_later(table), width - first_width[table], "{table}: update added_later");
        }
    }

    #[tokio::test]
    async fn every_table_of_the_schema_is_either_kept_or_known_as_run_time_state() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let registry = Registry::connect(&url).await.unwrap();
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('_sqlx_migrations', 'sqlite_sequence')",
        )
        .fetch_all(registry.pool())
        .await
        .unwrap();
        for (table,) in tables {
            let known = TABLES.contains(&table.as_str()) || RUN_TIME_TABLES.contains(&table.as_str());
            assert!(known, "{table}: add it to TABLES (kept in backups) or RUN_TIME_TABLES");
        }
    }
}
