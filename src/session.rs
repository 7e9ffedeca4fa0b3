//! lifeboat's own stored Matrix session: made by the bot's password login
//! (kept so a restart reuses its device), and read by whatever else sends
//! as lifeboat and has no other token (the notice DMs).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::BotConfig;
use crate::registry::{self, Registry};

/// Registry setting holding the [`StoredSession`] as JSON.
pub const SESSION_SETTING: &str = "bot_session";

/// Registry setting: the generated store passphrase, when the config has none.
pub const STORE_PASSPHRASE: &str = "bot_store_passphrase";

/// The passphrase of the stores under `bot.store_path`: the config's, else one generated once
/// and kept in the registry (the bot and the notice DMs may share a store, so both ask here).
pub async fn store_passphrase(bot: &BotConfig, registry: &Registry) -> Result<SecretString, registry::Error> {
    match &bot.store_passphrase {
        Some(secret) => Ok(secret.value.clone()),
        None => registry.generated_secret(STORE_PASSPHRASE).await,
    }
}

#[derive(Serialize, Deserialize)]
pub struct StoredSession {
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
}

pub async fn stored_session(registry: &Registry) -> Option<SecretString> {
    let stored = registry.setting(SESSION_SETTING).await.ok().flatten().filter(|value| !value.is_empty())?;
    serde_json::from_str::<StoredSession>(&stored).ok().map(|session| SecretString::from(session.access_token))
}
