//! Typed, layered configuration: TOML file < `LIFEBOAT__SECTION__KEY` env.
//!
//! Loading never writes anything. Every problem is reported as one sentence
//! that names the key (and the env var that could set it), so an admin knows
//! what to change. Secrets are `SecretString`s and each can also be read from
//! a `<key>_file` (Docker/systemd credentials).

mod raw;
pub mod smtp_url;

pub(crate) use raw::lenient::Scalar;

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::email::EmailAddress;
use crate::user_id::UserId;

pub const ENV_PREFIX: &str = "LIFEBOAT__";
pub const DEFAULT_CONFIG_PATH: &str = "lifeboat.toml";

/// A configuration problem, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where a value came from, so errors can point at it.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Env(var) => write!(f, "(from env {var})"),
        }
    }
}

/// The env var that overrides `section.key`.
pub fn env_var_for(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}__{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub homeserver: HomeserverConfig,
    pub registry: RegistryConfig,
    pub sync: SyncConfig,
    pub watch: WatchConfig,
    pub tokens: TokensConfig,
    pub email: Option<EmailConfig>,
    pub bot: Option<BotConfig>,
    pub web: Option<WebConfig>,
    pub alerts: AlertsConfig,
    pub backup: BackupConfig,
    pub recovery: RecoveryConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone)]
pub struct HomeserverConfig {
    pub url: Url,
    /// Where people register again (told in notices); defaults to `url`.
    pub public_url: Url,
    pub server_name: String,
    pub admin_token: Option<Secret>,
    pub registration_shared_secret: Option<Secret>,
    /// Per-request timeout towards Synapse.
    pub timeout: Duration,
    /// How many times a failed request (429, 5xx, timeout) is retried.
    pub retries: u32,
}

/// A secret and where it was read from (shown by `config check`, never the value).
#[derive(Debug, Clone)]
pub struct Secret {
    pub value: SecretString,
    pub from_file: Option<PathBuf>,
}

#[derive(Clone)]
pub struct RegistryConfig {
    /// `sqlite://…` or `postgres://…`, relative SQLite paths resolved against
    /// the config file's folder.
    pub url: String,
}

/// The URL may hold the database's password.
impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig").field("url", &crate::redact::redact_url(&self.url)).finish()
    }
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Accounts per listing page. Synapse counts and offsets over every
    /// account for each page, so a listing costs it about pages × accounts:
    /// large pages are much faster.
    pub page_size: u32,
    /// Parallel user-detail requests when importing emails.
    pub details_concurrency: usize,
    /// Re-fetch an account's details (emails) after between half and all
    /// of this (spread at random, so they do not all come due together).
    pub details_max_age: Duration,
    /// Accounts whose details one sync reads again, at most.
    pub details_per_round: u64,
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often a full listing is read (a round).
    pub interval: Duration,
    /// How often the probe looks between rounds; zero: never.
    pub probe_interval: Duration,
    /// Known accounts the probe looks up each time.
    pub probe_sample: usize,
    /// The share of Synapse's time the watcher's listing may take.
    pub max_synapse_share: f64,
    /// Share of known accounts missing at or above which the verdict is
    /// `suspected_reset` rather than `loss`.
    pub loss_threshold: f64,
    /// How long rounds may go on not telling whether accounts are lost
    /// (Synapse down, say) before the admins hear of it.
    pub alert_unchecked_after: Duration,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub expiry: Duration,
}

/// Debug by hand: `smtp_url` may hold the relay's password.
#[derive(Clone)]
pub struct EmailConfig {
    pub smtp_url: String,
    pub smtp_password: Option<Secret>,
    pub from: String,
    /// SMTP connections a notify run opens at once, each with one message
    /// in flight (default 8).
    pub connections: usize,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &crate::redact::redact_url(&self.smtp_url))
            .field("smtp_password", &self.smtp_password)
            .field("from", &self.from)
            .field("connections", &self.connections)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct BotConfig {
    pub user_id: UserId,
    pub password: Option<Secret>,
    pub access_token: Option<Secret>,
    pub admin_room: Option<String>,
    pub admins: Vec<UserId>,
    pub command_prefix: String,
    pub store_path: PathBuf,
    pub store_passphrase: Option<Secret>,
    /// Send notice DMs end-to-end encrypted (default: unencrypted, because
    /// a person who registers again has no device yet to decrypt them).
    pub encrypted_notices: bool,
}

#[derive(Debug, Clone)]
pub struct WebConfig {
    pub bind: std::net::SocketAddr,
    pub public_url: Url,
    /// A Matrix client people are pointed to after claiming their ID.
    pub client_url: Option<Url>,
    /// How people reach an admin (an email address, a Matrix ID, a URL), shown on every page.
    pub admin_contact: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies); nobody else's.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Form submissions per client IP per window.
    pub rate_limit_per_ip: u32,
    /// Password tries on one account's claim links per window.
    pub rate_limit_per_target: u32,
    pub rate_limit_window: Duration,
    /// Registration tokens a person may get from the web page per incident.
    pub token_requests_per_person: u32,
    /// Subscription links mailed per hour, whoever asks: a flood of
    /// requests must not fill the outbox ahead of way-back links and
    /// notices, nor use up the relay's quota.
    pub subscription_mails_per_hour: u32,
    /// Way-back links (`/token`) mailed per hour, whoever asks, for the same
    /// reason: anyone who knows many people's IDs or addresses can ask.
    pub token_mails_per_hour: u32,
    /// Connections open at once; more wait until one closes.
    pub max_connections: u32,
}

/// `/metrics` (Prometheus) on an address of its own, loopback unless
/// configured: the counts and the verdict are for the operator only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub bind: std::net::SocketAddr,
    /// Set in the config (then a bind failure stops serve), not the default
    /// (then it is logged and serve goes on without metrics).
    pub configured: bool,
}

pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:9464";

/// How people get back in after a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    pub mode: RecoveryMode,
    pub hold: HoldPolicy,
}

crate::checked_text::stored_as_text! {
    pub enum RecoveryMode {
        /// Lost IDs are held and handed back to their owners by claim links;
        /// registration tokens are for new names.
        Reclaim = "reclaim",
        /// Registration tokens only, which Synapse does not bind to an ID (for
        /// homeservers where lifeboat cannot create accounts, e.g. under MAS).
        Token = "token",
    }
}

crate::checked_text::stored_as_text! {
    /// When lost IDs are held.
    pub enum HoldPolicy {
        /// As soon as a loss is seen (the watcher), and at `incident open`.
        Auto = "auto",
        /// Only when an incident is opened.
        OnIncident = "on-incident",
        Off = "off",
    }
}

#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    pub email: Vec<EmailAddress>,
}

#[derive(Debug, Clone, Default)]
pub struct BackupConfig {
    /// The age public keys every backup is encrypted to; none: plain files.
    pub encrypt_to: Vec<age::x25519::Recipient>,
}

impl Config {
    /// `bot.admins` of this homeserver: the IDs a wipe here frees for anyone.
    pub fn local_bot_admins(&self) -> Vec<&UserId> {
        let admins = self.bot.as_ref().map_or(&[][..], |bot| bot.admins.as_slice());
        admins.iter().filter(|admin| admin.server_name() == self.homeserver.server_name).collect()
    }

    /// Loads the file at `path` with `LIFEBOAT__*` overrides from `env`, validated.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                ConfigError(format!(
                    "no config file at {}: copy config.example.toml there and edit it, or pass --config PATH (env LIFEBOAT_CONFIG)",
                    path.display()
                ))
            } else {
                ConfigError(format!("cannot read config file {}: {err}", path.display()))
            }
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Parses `text` as if it had been read from `path`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|err| {
            let place = err
                .span()
                .map(|span| format!(" at line {}", text[..span.start].matches('\n').count() + 1))
                .unwrap_or_default();
            ConfigError(format!("{} is not valid TOML{place}: {}", path.display(), err.message()))
        })?;
        let origins = raw::apply_env_overrides(&mut table, env)?;
        raw::RawConfig::load(table, path, &origins)
    }

    /// The admin token, or a sentence saying how to configure one.
    pub fn require_admin_token(&self) -> Result<&SecretString, ConfigError> {
        self.homeserver
            .admin_token
            .as_ref()
            .map(|secret| &secret.value)
            .ok_or_else(|| {
                ConfigError(format!(
                    "homeserver.admin_token is not set: add admin_token or admin_token_file under [homeserver] in {} (or set {}), with the access token of a Synapse admin",
                    self.source.display(),
                    env_var_for("homeserver", "admin_token")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_config_printed_for_debugging_shows_no_secret() {
        let text = r#"
            [homeserver]
            url = "http://127.0.0.1:8008"
            server_name = "x"
            admin_token = "syt_admin_SECRET1"
            registration_shared_secret = "SECRET2"

            [registry]
            url = "postgres://lifeboat:SECRET3@127.0.0.1/lifeboat?sslpassword=SECRET4"

            [email]
            smtp_url = "smtp://relay:SECRET5@127.0.0.1:2525"
            from = "lifeboat@example.org"

            [bot]
            user_id = "@lifeboat:x"
            password = "SECRET6"
            admin_room = "!room:x"
        "#;
        let config = Config::from_toml(text, Path::new("lifeboat.toml"), []).unwrap();
        let printed = format!("{config:?}");
        assert!(printed.contains("127.0.0.1:2525") && printed.contains("@lifeboat:x"), "{printed}");
        assert!(!printed.contains("SECRET"), "{printed}");
    }
}
