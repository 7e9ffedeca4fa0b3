//! The bot's Matrix session: which credentials to use, and the client with
//! its persistent store (one folder per device under `bot.store_path`, so
//! a restart keeps its device and keys, and a recovered account, which is
//! a new device, starts a fresh store).

use anyhow::{anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{BotConfig, Config};
use crate::dm::{AttachBot, CryptoStore, Devices, Login, Syncing};
use crate::recover::{RecoverOutcome, recover, service_user_id};
use crate::registry::{Actor, Registry};
use crate::session::{SESSION_SETTING, StoredSession, store_passphrase};
use crate::synapse::{self, SynapseClient};
use crate::user_id::UserId;

/// Working credentials for the bot's account.
pub struct BotLogin {
    pub user_id: String,
    pub device_id: String,
    pub access_token: SecretString,
    /// They came from credential recovery (the homeserver lost its
    /// database, so the old admin room is gone too).
    pub recovered: bool,
}

impl BotLogin {
    /// The session to restore on `homeserver`.
    pub fn on<'a>(&'a self, homeserver: &'a url::Url) -> Login<'a> {
        Login { homeserver, user_id: &self.user_id, access_token: &self.access_token, device_id: &self.device_id }
    }
}

/// Credentials that work now, without logging in anew or recovering (so
/// nothing changes on the homeserver): the stored session, the recovered
/// service credentials, or `bot.access_token`. With `forget_dead`, a
/// stored session that does not work is cleared. Beside them, the device
/// of a stored session that only expired (it lives on, keys and all).
pub async fn existing_credentials(
    config: &Config,
    bot: &BotConfig,
    registry: &Registry,
    forget_dead: bool,
) -> anyhow::Result<(Option<BotLogin>, Option<String>)> {
    let base = SynapseClient::from_config(&config.homeserver);
    let me = service_user_id(config);
    let mut expired_device = None;
    if let Some(stored) = registry.setting(SESSION_SETTING).await?.filter(|value| !value.is_empty()) {
        if let Ok(session) = serde_json::from_str::<StoredSession>(&stored) {
            let token = SecretString::from(session.access_token);
            match check(&base, &me, token, Some(session.device_id.clone()), false).await? {
                Checked::Works(login) => return Ok((Some(login), None)),
                Checked::Expired => expired_device = Some(session.device_id),
                Checked::Rejected => {}
            }
        }
        if forget_dead && expired_device.is_none() {
            // Dead (a wipe, or logged out). One that expired is kept until
            // a password login replaces it: its device is to be used again.
            registry.set_setting(SESSION_SETTING, "").await?;
        }
    }
    let login = match recovered(&base, registry, &me).await? {
        Some(login) => Some(login),
        None => match &bot.access_token {
            Some(token) => working(&base, &me, token.value.clone(), None, false).await?,
            None => None,
        },
    };
    Ok((login, expired_device))
}

/// Tries, in order: [`existing_credentials`] (forgetting a dead stored
/// session), then a password login; when every one is rejected and a
/// shared secret is configured, recovers the account.
pub async fn credentials(
    config: &Config,
    bot: &BotConfig,
    registry: &Registry,
    recover_lock: &tokio::sync::Mutex<()>,
) -> anyhow::Result<BotLogin> {
    let (login, expired_device) = existing_credentials(config, bot, registry, true).await?;
    if let Some(login) = login {
        return Ok(login);
    }
    let base = SynapseClient::from_config(&config.homeserver);
    let me = service_user_id(config);
    // After an expiry (a homeserver with session lifetimes) the same device
    // again, as the Matrix spec asks: the people the bot writes to
    // encrypted see no new device. A session logged out or wiped lost its
    // device, and its keys with it: a new one then.
    if let Some(password) = &bot.password
        && let Some(registered) =
            base.login_with_password(me.localpart(), &password.value, expired_device.as_deref()).await?
    {
        let device_id = registered.device_id.clone().unwrap_or_else(|| "LIFEBOAT".to_owned());
        let stored = StoredSession {
            user_id: registered.user_id.clone(),
            device_id: device_id.clone(),
            access_token: registered.access_token.expose_secret().to_owned(),
        };
        registry.set_setting(SESSION_SETTING, &serde_json::to_string(&stored).expect("plain strings")).await?;
        return Ok(BotLogin {
            user_id: registered.user_id,
            device_id,
            access_token: registered.access_token,
            recovered: false,
        });
    }
    if config.homeserver.registration_shared_secret.is_none() {
        bail!(
            "the bot cannot log in as {me}: set bot.password or bot.access_token to working credentials, or homeserver.registration_shared_secret so lifeboat can re-create its account after a wipe"
        );
    }
    let _guard = recover_lock.lock().await;
    // The watcher may have recovered while this waited for the lock.
    if let Some(login) = recovered(&base, registry, &me).await? {
        return Ok(login);
    }
    let outcome = recover(config, registry, &Actor::service("bot"))
        .await
        .map_err(|err| anyhow!("the bot's credentials are rejected and recovery failed: {err}"))?;
    if let RecoverOutcome::AlreadyWorking { .. } = outcome {
        // No wipe: recovery re-creates lifeboat's account only after one.
        bail!("the bot cannot log in as {me}: set bot.password or bot.access_token to working credentials");
    }
    recovered(&base, registry, &me).await?.ok_or_else(|| anyhow!("the recovered credentials do not work yet"))
}

async fn recovered(base: &SynapseClient, registry: &Registry, me: &UserId) -> anyhow::Result<Option<BotLogin>> {
    match registry.service_credential(me).await? {
        Some(stored) => working(base, me, stored.access_token, stored.device_id, true).await,
        None => Ok(None),
    }
}

/// The login, if `token` is alive and belongs to `me`.
async fn working(
    base: &SynapseClient,
    me: &UserId,
    token: SecretString,
    device_id: Option<String>,
    recovered: bool,
) -> anyhow::Result<Option<BotLogin>> {
    Ok(match check(base, me, token, device_id, recovered).await? {
        Checked::Works(login) => Some(login),
        Checked::Expired | Checked::Rejected => None,
    })
}

/// What Synapse says of a token.
enum Checked {
    Works(BotLogin),
    /// Soft logout (a homeserver with session lifetimes): its device lives on.
    Expired,
    Rejected,
}

async fn check(
    base: &SynapseClient,
    me: &UserId,
    token: SecretString,
    device_id: Option<String>,
    recovered: bool,
) -> anyhow::Result<Checked> {
    match base.with_token(token.clone()).whoami().await {
        Ok(who) if who.user_id == me.as_str() => Ok(Checked::Works(BotLogin {
            user_id: who.user_id,
            device_id: who.device_id.or(device_id).unwrap_or_else(|| "LIFEBOAT".to_owned()),
            access_token: token,
            recovered,
        })),
        Ok(who) => bail!("the bot's access token belongs to {}, not to bot.user_id = {me}", who.user_id),
        Err(synapse::Error::Expired { .. }) => Ok(Checked::Expired),
        Err(synapse::Error::Unauthorized { .. }) => Ok(Checked::Rejected),
        Err(err) => Err(err.into()),
    }
}

/// The matrix-sdk client of `login`'s device, with its store: the one the
/// notice DMs use too when they send from this device.
pub async fn client(
    config: &Config,
    bot: &BotConfig,
    registry: &Registry,
    login: &BotLogin,
    devices: &Devices,
    attach_bot: &AttachBot,
) -> anyhow::Result<Syncing> {
    let store = CryptoStore { dir: bot.store_path.clone(), passphrase: store_passphrase(bot, registry).await? };
    devices
        .for_syncing(registry, &login.on(&config.homeserver.url), &store, attach_bot)
        .await
        .map_err(|err| anyhow!("the bot's session: {err}"))
}
