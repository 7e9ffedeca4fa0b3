//! Run-time state kept in the registry, never in the config file: the
//! service account's recovered credentials and generated settings.

use rand::RngCore;
use secrecy::SecretString;

use super::{Actor, Registry, Result, now_ms};
use crate::user_id::UserId;

/// Setting: the password `recover` registers lifeboat's account with.
pub const SERVICE_PASSWORD_SETTING: &str = "service_account_password";

/// How lifeboat got a token of its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialFrom {
    /// `recover` after a wipe (registered again, or logged in).
    Recovery,
    /// A login when the token lifeboat kept had expired.
    Renewal,
    /// A hold run made lifeboat's own account again after a loss.
    HoldRun,
}

/// The service account's access token obtained by recovery.
#[derive(Clone, sqlx::FromRow)]
pub struct ServiceCredential {
    pub user_id: String,
    #[sqlx(try_from = "String")]
    pub access_token: SecretString,
    pub device_id: Option<String>,
}

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredential").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

impl Registry {
    pub async fn service_credential(&self, user_id: &UserId) -> Result<Option<ServiceCredential>> {
        Ok(sqlx::query_as("SELECT user_id, access_token, device_id FROM service_credentials WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Keeps lifeboat's own token, audited as how it was `got`.
    pub async fn store_service_credential(
        &self,
        user_id: &UserId,
        access_token: &str,
        device_id: Option<&str>,
        got: CredentialFrom,
        actor: &Actor,
    ) -> Result<()> {
        let (action, detail) = match got {
            CredentialFrom::Recovery => ("recover", "service account re-created by shared secret"),
            CredentialFrom::Renewal => ("credential.renew", "lifeboat's expired token renewed by logging in again"),
            CredentialFrom::HoldRun => ("recover", "service account made again by a hold run through the admin API"),
        };
        let store = sqlx::query(
            "INSERT INTO service_credentials (user_id, access_token, device_id, obtained_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET access_token = excluded.access_token, \
             device_id = excluded.device_id, obtained_at = excluded.obtained_at",
        )
        .bind(user_id)
        .bind(access_token)
        .bind(device_id)
        .bind(now_ms());
        self.write_audited(store, actor, action, user_id.as_str(), detail).await.map(drop)
    }

    /// lifeboat registered its own account again (a recovery after a wipe):
    /// the ID is lifeboat's, not a stranger's, so the account's old
    /// creation time is dropped and the next listing records the new one
    /// instead of reading the ID as registered again; it is there, and a
    /// hold run has nothing to take.
    pub async fn own_account_recreated(&self, user_id: &UserId) -> Result<()> {
        let sql = "UPDATE accounts SET synapse_created_at = NULL, recreated_at = NULL, \
                   custody = NULL, custody_at = NULL, state = 'present' WHERE user_id = $1";
        sqlx::query(sql).bind(user_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Extends the lease `name` for `ttl_ms` from now while `holder` still
    /// has it; false when it is no longer theirs (taken, or run out and
    /// given up since). Never takes it back: what it guarded may have changed
    /// hands meanwhile.
    pub async fn renew_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let sql = format!("UPDATE leases SET expires_at = {} + $3 WHERE name = $1 AND holder = $2", self.clock_ms());
        let renewed =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).bind(holder).bind(ttl_ms).execute(&self.pool).await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Takes the lease `name` for `holder`, for `ttl_ms` from now, if it is
    /// free, expired, already the holder's, or held by `stale` (a holder
    /// known to be dead). Otherwise returns who holds it and until when.
    /// Times are the registry's clock's: processes on hosts whose clocks
    /// differ share one PostgreSQL registry, and none may find another's
    /// live lease run out by its own clock.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        stale: Option<&str>,
    ) -> Result<Result<(), (String, i64)>> {
        let now = self.clock_ms();
        let sql = format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.expires_at < {now} OR leases.holder = $2 OR leases.holder = $4"
        );
        let taken = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(ttl_ms)
            .bind(stale.unwrap_or(""))
            .execute(&self.pool)
            .await?
            .rows_affected();
        if taken == 1 {
            return Ok(Ok(()));
        }
        let held = sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1").bind(name);
        Ok(Err(held.fetch_one(&self.pool).await?))
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn setting(&self, name: &str) -> Result<Option<String>> {
        let value = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1").bind(name);
        Ok(value.fetch_optional(&self.pool).await?)
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        set_setting_in(&self.pool, name, value).await
    }

    /// Sets `name` to `value` only while it is still `was` (another process
    /// may have set it since it was read); whether it did.
    pub async fn replace_setting(&self, name: &str, was: &str, value: &str) -> Result<bool> {
        let replace = sqlx::query("UPDATE settings SET value = $3 WHERE name = $1 AND value = $2")
            .bind(name)
            .bind(was)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(replace.rows_affected() == 1)
    }

    /// A random secret generated on first use and kept in the registry
    /// (e.g. the key that signs links in emails).
    pub async fn generated_secret(&self, name: &str) -> Result<SecretString> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        // Not DO NOTHING: the no-op update makes RETURNING give the stored value too.
        let keep_stored = "INSERT INTO settings (name, value) VALUES ($1, $2) \
                           ON CONFLICT (name) DO UPDATE SET value = settings.value RETURNING value";
        let value: String =
            sqlx::query_scalar(keep_stored).bind(name).bind(hex::encode(bytes)).fetch_one(&self.pool).await?;
        Ok(SecretString::from(value))
    }
}

/// Writes a setting, on the pool or in a transaction.
pub(crate) async fn set_setting_in(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    name: &str,
    value: &str,
) -> Result<()> {
    let upsert = "INSERT INTO settings (name, value) VALUES ($1, $2) \
                  ON CONFLICT (name) DO UPDATE SET value = excluded.value";
    sqlx::query(upsert).bind(name).bind(value).execute(executor).await?;
    Ok(())
}
