//! The config as written (all optional, strings allowed where env vars give
//! strings), and its validation into the typed [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use matrix_sdk::ruma::{RoomAliasId, RoomId};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::*;

/// Where each `section.key` came from, when not from the file.
pub(super) type Origins = BTreeMap<String, Origin>;

/// More connections than this is a typo or a flood: mail servers limit
/// clients to a few dozen (Postfix: 50 by default).
const MAX_SMTP_CONNECTIONS: usize = 64;

/// Folds `LIFEBOAT__SECTION__KEY=value` into the table as strings; the typed
/// fields accept strings for numbers and lists, so `0.3` or `a,b` work.
/// Returns the keys the environment set.
pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Origins, ConfigError> {
    let mut origins = Origins::new();
    let mut overrides: Vec<(String, String)> =
        env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    overrides.sort();
    for (name, value) in overrides {
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, key)) =
            rest.split_once("__").filter(|(s, k)| !s.is_empty() && !k.is_empty() && !k.contains("__"))
        else {
            return Err(ConfigError(format!(
                "env {name} does not name a config key: use {ENV_PREFIX}<SECTION>__<KEY>, e.g. {}",
                env_var_for("homeserver", "url")
            )));
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError(format!(
                "env {name} cannot be applied: `{section}` is not a section in the config file"
            )));
        };
        section_table.insert(key.clone(), toml::Value::String(value));
        origins.insert(format!("{section}.{key}"), Origin::Env(name));
    }
    Ok(origins)
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    homeserver: Option<RawHomeserver>,
    registry: Option<RawRegistry>,
    sync: RawSync,
    watch: RawWatch,
    tokens: RawTokens,
    email: Option<RawEmail>,
    bot: Option<RawBot>,
    web: Option<RawWeb>,
    alerts: RawAlerts,
    backup: RawBackup,
    recovery: RawRecovery,
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    bind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    mode: Option<String>,
    hold: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeserver {
    url: Option<String>,
    public_url: Option<String>,
    server_name: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    registration_shared_secret: Option<String>,
    registration_shared_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::number")]
    timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    retries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(default, deserialize_with = "lenient::number")]
    page_size: Option<u32>,
    #[serde(default, deserialize_with = "lenient::number")]
    details_concurrency: Option<usize>,
    #[serde(default, deserialize_with = "lenient::number")]
    details_max_age: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    details_per_round: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default, deserialize_with = "lenient::number")]
    interval: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    probe_interval: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    probe_sample: Option<usize>,
    #[serde(default, deserialize_with = "lenient::number")]
    max_synapse_share: Option<f64>,
    #[serde(default, deserialize_with = "lenient::number")]
    loss_threshold: Option<f64>,
    #[serde(default, deserialize_with = "lenient::number")]
    alert_unchecked_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    #[serde(default, deserialize_with = "lenient::number")]
    expiry: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp_url: Option<String>,
    smtp_password: Option<String>,
    smtp_password_file: Option<PathBuf>,
    from: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBot {
    user_id: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    access_token: Option<String>,
    access_token_file: Option<PathBuf>,
    admin_room: Option<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    admins: Option<Vec<String>>,
    command_prefix: Option<String>,
    store_path: Option<PathBuf>,
    store_passphrase: Option<String>,
    store_passphrase_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::flag")]
    encrypted_notices: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    bind: Option<String>,
    public_url: Option<String>,
    admin_contact: Option<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    trusted_proxies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::number")]
    rate_limit_per_ip: Option<u32>,
    #[serde(default, deserialize_with = "lenient::number")]
    rate_limit_per_target: Option<u32>,
    #[serde(default, deserialize_with = "lenient::number")]
    rate_limit_window: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    token_requests_per_person: Option<u32>,
    #[serde(default, deserialize_with = "lenient::number")]
    subscription_mails_per_hour: Option<u32>,
    #[serde(default, deserialize_with = "lenient::number")]
    token_mails_per_hour: Option<u32>,
    client_url: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    max_connections: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default, deserialize_with = "lenient::list")]
    email: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    #[serde(default, deserialize_with = "lenient::list")]
    encrypt_to: Option<Vec<String>>,
}

/// An age public key of `backup.encrypt_to`. Never repeated in the error:
/// what is there may be a secret key pasted by mistake.
fn age_recipient(text: &str) -> Result<age::x25519::Recipient, &'static str> {
    let text = text.trim();
    if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(
            "an entry is an age secret key: put its public key here (`age-keygen -y KEYFILE` prints it), and keep the secret key off this host",
        );
    }
    text.parse().map_err(|_| "an entry is not an age public key (age1…, as `age-keygen` prints)")
}

impl RawRecovery {
    fn validate(self, ctx: &Ctx) -> Result<RecoveryConfig, ConfigError> {
        let mode = match self.mode.as_deref().map(str::trim) {
            None => RecoveryMode::Reclaim,
            Some(text) => RecoveryMode::from_name(text).ok_or_else(|| {
                ctx.invalid(
                    "recovery.mode",
                    format!("`{text}` is not a mode: write \"reclaim\" (hold lost IDs for their owners) or \"token\" (registration tokens only)"),
                )
            })?,
        };
        let hold = match self.hold.as_deref().map(str::trim) {
            None if mode == RecoveryMode::Token => HoldPolicy::Off,
            None => HoldPolicy::Auto,
            Some(text) => HoldPolicy::from_name(text).ok_or_else(|| {
                ctx.invalid(
                    "recovery.hold",
                    format!("`{text}` is not a choice: write \"auto\", \"on-incident\" or \"off\""),
                )
            })?,
        };
        if mode == RecoveryMode::Token && hold != HoldPolicy::Off {
            return Err(ctx.invalid(
                "recovery.hold",
                "holds need recovery.mode = \"reclaim\" (in token mode lifeboat does not create accounts): set hold = \"off\" or remove it",
            ));
        }
        Ok(RecoveryConfig { mode, hold })
    }
}

impl RawEmail {
    fn validate(self, ctx: &Ctx) -> Result<EmailConfig, ConfigError> {
        let smtp_url = self.smtp_url.ok_or_else(|| ctx.missing("email", "smtp_url", "\"smtp://127.0.0.1:25\""))?;
        // Parsed and checked here, by the same rules the mailer
        // uses, so `config check` refuses what sending would.
        let parsed = super::smtp_url::parse(&smtp_url).map_err(|problem| ctx.invalid("email.smtp_url", problem))?;
        let has_password_setting = self.smtp_password.is_some() || self.smtp_password_file.is_some();
        if let Some(problem) = super::smtp_url::login_problem(&parsed, has_password_setting) {
            return Err(ctx.invalid("email.smtp_url", problem));
        }
        let from = self.from.ok_or_else(|| ctx.missing("email", "from", "\"Lifeboat <lifeboat@example.org>\""))?;
        validate_mailbox(&from).map_err(|problem| ctx.invalid("email.from", problem))?;
        let connections = self.connections.unwrap_or(8);
        if !(1..=MAX_SMTP_CONNECTIONS).contains(&connections) {
            return Err(ctx.invalid(
                "email.connections",
                format!("must be between 1 and {MAX_SMTP_CONNECTIONS} (SMTP connections notify opens at once)"),
            ));
        }
        Ok(EmailConfig {
            smtp_url: smtp_url.trim().to_owned(),
            smtp_password: ctx.secret("email.smtp_password", self.smtp_password, self.smtp_password_file)?,
            from,
            connections,
        })
    }
}

impl RawBot {
    fn validate(self, ctx: &Ctx, server_name: &str) -> Result<BotConfig, ConfigError> {
        let user_id = match self.user_id {
            Some(text) => UserId::parse(&text).map_err(|err| ctx.invalid("bot.user_id", err))?,
            None => UserId::parse(&format!("@lifeboat:{server_name}"))
                .map_err(|err| ctx.invalid("homeserver.server_name", err))?,
        };
        let admins = ctx.list("bot.admins", self.admins, UserId::parse)?;
        // Commands are the prefix, a space, then the command.
        let command_prefix = self.command_prefix.as_deref().map_or("!lifeboat", str::trim);
        if command_prefix.is_empty() || command_prefix.contains(char::is_whitespace) {
            return Err(ctx.invalid("bot.command_prefix", "must be one word, like \"!lifeboat\""));
        }
        Ok(BotConfig {
            user_id,
            password: ctx.secret("bot.password", self.password, self.password_file)?,
            access_token: ctx.secret("bot.access_token", self.access_token, self.access_token_file)?,
            admin_room: match self.admin_room.as_deref().map(str::trim).filter(|room| !room.is_empty()) {
                // The bot could find no room by anything else, and would wait
                // for an invite there forever.
                Some(room) if RoomId::parse(room).is_err() && RoomAliasId::parse(room).is_err() => {
                    return Err(ctx.invalid(
                        "bot.admin_room",
                        "must be a room ID (!abc…) or an alias with its server (#admins:example.org)",
                    ));
                }
                room => room.map(str::to_owned),
            },
            admins,
            command_prefix: command_prefix.to_owned(),
            store_path: ctx.base_dir.join(self.store_path.unwrap_or_else(|| PathBuf::from("lifeboat-bot-store"))),
            encrypted_notices: self.encrypted_notices.unwrap_or(false),
            store_passphrase: ctx.secret("bot.store_passphrase", self.store_passphrase, self.store_passphrase_file)?,
        })
    }
}

impl RawWeb {
    fn validate(self, ctx: &Ctx) -> Result<WebConfig, ConfigError> {
        let bind = ctx.bind("web.bind", self.bind, "127.0.0.1:8090")?;
        let public_url =
            self.public_url.ok_or_else(|| ctx.missing("web", "public_url", "\"https://lifeboat.example.org\""))?;
        Ok(WebConfig {
            bind,
            trusted_proxies: ctx.list("web.trusted_proxies", self.trusted_proxies, |text| {
                text.trim().parse().map_err(|_| format!("`{text}` is not an IP address like \"127.0.0.1\""))
            })?,
            public_url: ctx.http_url("web.public_url", &public_url)?,
            client_url: self.client_url.map(|url| ctx.http_url("web.client_url", &url)).transpose()?,
            admin_contact: self.admin_contact.map(|text| text.trim().to_owned()).filter(|text| !text.is_empty()),
            rate_limit_per_ip: ctx.at_least_one("web.rate_limit_per_ip", self.rate_limit_per_ip, 20)?,
            rate_limit_per_target: ctx.at_least_one("web.rate_limit_per_target", self.rate_limit_per_target, 3)?,
            subscription_mails_per_hour: ctx.at_least_one(
                "web.subscription_mails_per_hour",
                self.subscription_mails_per_hour,
                100,
            )?,
            token_mails_per_hour: ctx.at_least_one("web.token_mails_per_hour", self.token_mails_per_hour, 1000)?,
            rate_limit_window: ctx.duration(
                "web.rate_limit_window",
                self.rate_limit_window,
                Duration::from_secs(15 * 60),
                AT_LEAST_A_SECOND,
            )?,
            token_requests_per_person: ctx.at_least_one(
                "web.token_requests_per_person",
                self.token_requests_per_person,
                3,
            )?,
            max_connections: ctx.at_least_one("web.max_connections", self.max_connections, 256)?,
        })
    }
}

/// Validation context: names keys and their origin in every error.
struct Ctx<'a> {
    file: &'a Path,
    /// The config file's folder, which relative paths are in (`join` keeps
    /// an absolute one as it is).
    base_dir: &'a Path,
    origins: &'a Origins,
}

impl Ctx<'_> {
    /// Where `key` came from; a section the environment alone made (a
    /// misspelled `LIFEBOAT__SECTION__…`) is named by its variable.
    fn origin(&self, key: &str) -> Origin {
        let within = format!("{key}.");
        let set = self
            .origins
            .get(key)
            .or_else(|| self.origins.iter().find(|(set, _)| set.starts_with(&within)).map(|(_, origin)| origin));
        set.cloned().unwrap_or_else(|| Origin::File(self.file.to_path_buf()))
    }

    fn invalid(&self, key: &str, problem: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("config key `{key}` {}: {problem}", self.origin(key)))
    }

    fn missing(&self, section: &str, key: &str, hint: &str) -> ConfigError {
        ConfigError(format!(
            "config key `{section}.{key}` is missing: add `{key} = {hint}` under [{section}] in {} (or set {})",
            self.file.display(),
            env_var_for(section, key)
        ))
    }

    /// `key`'s duration, or `default`; one shorter than `minimum` is refused
    /// with `too_short` (what goes wrong below it).
    fn duration(
        &self,
        key: &str,
        value: Option<String>,
        default: Duration,
        (minimum, too_short): (Duration, &str),
    ) -> Result<Duration, ConfigError> {
        let duration = match value {
            None => default,
            Some(text) => humantime::parse_duration(text.trim()).map_err(|_| {
                self.invalid(key, format!("`{text}` is not a duration: write it like \"30s\", \"15m\" or \"14d\""))
            })?,
        };
        if duration < minimum {
            return Err(self.invalid(key, too_short));
        }
        Ok(duration)
    }

    /// `value`, or `default`; zero is refused.
    fn at_least_one<T: PartialEq + From<u8>>(&self, key: &str, value: Option<T>, default: T) -> Result<T, ConfigError> {
        let value = value.unwrap_or(default);
        if value == T::from(0) {
            return Err(self.invalid(key, "must be at least 1"));
        }
        Ok(value)
    }

    /// `value`, or `default`: a share, above 0 and at most 1.
    fn share(&self, key: &str, value: Option<f64>, default: f64) -> Result<f64, ConfigError> {
        let share = value.unwrap_or(default);
        if !(share > 0.0 && share <= 1.0) {
            return Err(
                self.invalid(key, format!("{share} is not a share between 0 (exclusive) and 1, like {default}"))
            );
        }
        Ok(share)
    }

    fn bind(&self, key: &str, value: Option<String>, default: &str) -> Result<std::net::SocketAddr, ConfigError> {
        let text = value.unwrap_or_else(|| default.to_owned());
        text.trim().parse().map_err(|_| self.invalid(key, format!("`{text}` is not an address like \"{default}\"")))
    }

    fn list<T, E: std::fmt::Display>(
        &self,
        key: &str,
        items: Option<Vec<String>>,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, ConfigError> {
        items.unwrap_or_default().iter().map(|text| parse(text).map_err(|err| self.invalid(key, err))).collect()
    }

    /// Reads `key` inline or from `key_file`, never both.
    fn secret(&self, key: &str, inline: Option<String>, file: Option<PathBuf>) -> Result<Option<Secret>, ConfigError> {
        let file_key = format!("{key}_file");
        // The environment overrides the file, also across `key` / `key_file`.
        let from_env = |name: &str| matches!(self.origins.get(name), Some(Origin::Env(_)));
        let (inline, file) = match (inline, file) {
            (Some(inline), Some(_)) if from_env(key) && !from_env(&file_key) => (Some(inline), None),
            (Some(_), Some(file)) if !from_env(key) && from_env(&file_key) => (None, Some(file)),
            other => other,
        };
        match (inline, file) {
            (Some(_), Some(_)) => {
                Err(ConfigError(format!("config keys `{key}` and `{key}_file` are both set: keep only one of them")))
            }
            (Some(value), None) if value.trim().is_empty() => {
                Err(self.invalid(key, "the value is empty: set the secret or remove the key"))
            }
            (Some(value), None) => {
                Ok(Some(Secret { value: SecretString::from(value.trim().to_owned()), from_file: None }))
            }
            (None, Some(path)) => {
                let path = self.base_dir.join(path);
                let contents = std::fs::read_to_string(&path)
                    .map_err(|err| self.invalid(&file_key, format!("cannot read {}: {err}", path.display())))?;
                if contents.trim().is_empty() {
                    return Err(self.invalid(&file_key, format!("{} is empty", path.display())));
                }
                Ok(Some(Secret { value: SecretString::from(contents.trim().to_owned()), from_file: Some(path) }))
            }
            (None, None) => Ok(None),
        }
    }

    fn http_url(&self, key: &str, text: &str) -> Result<Url, ConfigError> {
        let shown = crate::redact::redact_url(text);
        let url = Url::parse(text.trim()).map_err(|err| {
            self.invalid(key, format!("`{shown}` is not a URL ({err}); write it like \"http://127.0.0.1:8008\""))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(self.invalid(key, format!("`{shown}` must be an http:// or https:// URL with a host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(key, "must not hold a user name or password; secrets have keys of their own"));
        }
        Ok(url)
    }
}

impl RawConfig {
    /// Reads `table`, as read from `file`, into the typed [`Config`].
    pub(super) fn load(table: toml::Table, file: &Path, origins: &Origins) -> Result<Config, ConfigError> {
        let base_dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let ctx = Ctx { file, base_dir, origins };
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let key = err.path().to_string();
            // toml appends "\nin <path>" to its messages; the key is named already.
            let inner = err.into_inner().to_string();
            let inner = inner.lines().next().unwrap_or_default().trim().trim_end_matches('.').to_owned();
            if inner.starts_with("unknown field") {
                ConfigError(unknown_key(&key, &ctx.origin(&key), &inner))
            } else if inner.contains("expected struct Raw") {
                // serde names the Rust type a section is read into.
                ctx.invalid(&key, format!("is a section: write [{key}] on a line of its own, and its keys below it"))
            } else if ["secret", "password", "token", "passphrase"].iter().any(|word| key.ends_with(word)) {
                // serde's message quotes the value, and this one is a secret.
                ctx.invalid(&key, "must be a quoted string")
            } else {
                ctx.invalid(&key, inner)
            }
        })?;
        raw.validate(&ctx)
    }

    fn validate(self, ctx: &Ctx) -> Result<Config, ConfigError> {
        let Some(hs) = self.homeserver else {
            return Err(ConfigError(format!(
                "the [homeserver] section is missing in {}: add it with url and server_name (see config.example.toml)",
                ctx.file.display()
            )));
        };
        let url = hs.url.ok_or_else(|| ctx.missing("homeserver", "url", "\"http://127.0.0.1:8008\""))?;
        let url = ctx.http_url("homeserver.url", &url)?;
        let server_name = hs.server_name.ok_or_else(|| ctx.missing("homeserver", "server_name", "\"example.org\""))?;
        let server_name = server_name.trim().to_owned();
        // It must also make a user ID (lifeboat's own is `@lifeboat:` it):
        // no other whitespace, not too long.
        let as_user_id = crate::user_id::UserId::parse(&format!("@lifeboat:{server_name}"));
        if server_name.is_empty() || server_name.contains(['/', '@']) || as_user_id.is_err() {
            return Err(ctx.invalid(
                "homeserver.server_name",
                format!("`{server_name}` is not a server name like \"example.org\""),
            ));
        }
        let public_url = match hs.public_url {
            Some(text) => ctx.http_url("homeserver.public_url", &text)?,
            None => url.clone(),
        };
        let homeserver = HomeserverConfig {
            url,
            public_url,
            admin_token: ctx.secret("homeserver.admin_token", hs.admin_token, hs.admin_token_file)?,
            registration_shared_secret: ctx.secret(
                "homeserver.registration_shared_secret",
                hs.registration_shared_secret,
                hs.registration_shared_secret_file,
            )?,
            timeout: ctx.duration("homeserver.timeout", hs.timeout, Duration::from_secs(30), AT_LEAST_A_SECOND)?,
            retries: hs.retries.unwrap_or(4),
            server_name,
        };

        let Some(registry) = self.registry else {
            return Err(ConfigError(format!(
                "the [registry] section is missing in {}: add it with url = \"sqlite://lifeboat.db\" (or a postgres:// URL)",
                ctx.file.display()
            )));
        };
        let registry_url = registry.url.ok_or_else(|| ctx.missing("registry", "url", "\"sqlite://lifeboat.db\""))?;
        let registry = RegistryConfig {
            url: resolve_registry_url(&registry_url, ctx.base_dir)
                .map_err(|problem| ctx.invalid("registry.url", problem))?,
        };

        let sync = SyncConfig {
            details_max_age: ctx.duration(
                "sync.details_max_age",
                self.sync.details_max_age,
                Duration::from_secs(7 * 24 * 3600),
                (Duration::from_secs(60), "must be at least 1m: every sync would fetch every account's details again"),
            )?,
            details_per_round: ctx.at_least_one("sync.details_per_round", self.sync.details_per_round, 2000)?,
            page_size: match self.sync.page_size.unwrap_or(2000) {
                0 => {
                    return Err(
                        ctx.invalid("sync.page_size", "must be at least 1 (Synapse pages forever with limit=0)")
                    );
                }
                size => size,
            },
            details_concurrency: ctx.at_least_one("sync.details_concurrency", self.sync.details_concurrency, 8)?,
        };

        let watch = WatchConfig {
            interval: ctx.duration(
                "watch.interval",
                self.watch.interval,
                Duration::from_secs(15 * 60),
                AT_LEAST_A_SECOND,
            )?,
            // 0 turns probing off.
            probe_interval: ctx.duration(
                "watch.probe_interval",
                self.watch.probe_interval,
                Duration::from_secs(30),
                (Duration::ZERO, ""),
            )?,
            max_synapse_share: ctx.share("watch.max_synapse_share", self.watch.max_synapse_share, 0.25)?,
            probe_sample: match self.watch.probe_sample.unwrap_or(32) {
                sample @ 1..=1000 => sample,
                _ => return Err(ctx.invalid("watch.probe_sample", "must be between 1 and 1000 accounts")),
            },
            loss_threshold: ctx.share("watch.loss_threshold", self.watch.loss_threshold, 0.5)?,
            // 0: the first round that cannot tell alerts.
            alert_unchecked_after: ctx.duration(
                "watch.alert_unchecked_after",
                self.watch.alert_unchecked_after,
                Duration::from_secs(3600),
                (Duration::ZERO, ""),
            )?,
        };

        let tokens = TokensConfig {
            expiry: ctx.duration(
                "tokens.expiry",
                self.tokens.expiry,
                Duration::from_secs(14 * 24 * 3600),
                (
                    Duration::from_secs(3600),
                    "must be at least 1h: a token must outlive the time its mail takes to arrive and be read",
                ),
            )?,
        };

        let email = self.email.map(|raw| raw.validate(ctx)).transpose()?;
        let bot = self.bot.map(|raw| raw.validate(ctx, &homeserver.server_name)).transpose()?;
        let web = self.web.map(|raw| raw.validate(ctx)).transpose()?;
        Ok(Config {
            source: ctx.file.to_path_buf(),
            homeserver,
            registry,
            sync,
            watch,
            tokens,
            email,
            bot,
            web,
            alerts: AlertsConfig { email: ctx.list("alerts.email", self.alerts.email, EmailAddress::parse)? },
            backup: BackupConfig { encrypt_to: ctx.list("backup.encrypt_to", self.backup.encrypt_to, age_recipient)? },
            recovery: self.recovery.validate(ctx)?,
            metrics: MetricsConfig {
                configured: self.metrics.bind.is_some(),
                bind: ctx.bind("metrics.bind", self.metrics.bind, DEFAULT_METRICS_BIND)?,
            },
        })
    }
}

/// serde's "unknown field `x`, expected one of …" has the path of the section
/// or of the key itself; this names the full dotted key, quoted, and the keys expected.
fn unknown_key(path: &str, origin: &Origin, serde_message: &str) -> String {
    let field = serde_message.split('`').nth(1).unwrap_or(serde_message);
    let section = path.trim_end_matches(field).trim_end_matches('.');
    let key = if section.is_empty() || section == "." { format!("`{field}`") } else { format!("`{section}.{field}`") };
    let expected = serde_message
        .split_once("expected ")
        .map(|(_, rest)| format!(" (expected {})", rest.replace('`', "")))
        .unwrap_or_default();
    format!("{key} {origin} is not a lifeboat setting{expected}; check its spelling against config.example.toml")
}

/// Makes relative SQLite paths relative to the config file, not the cwd.
fn resolve_registry_url(text: &str, base_dir: &Path) -> Result<String, String> {
    let text = text.trim();
    let shown = crate::redact::redact_url(text);
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let url = Url::parse(text).map_err(|err| format!("`{shown}` is not a valid PostgreSQL URL ({err})"))?;
        // A password's `#` ends the address part for a parser.
        if url.fragment().is_some() {
            return Err(format!(
                "`{shown}` (its password hidden) has a `#` in it, which ends a URL's address: write a `#` in the password as %23"
            ));
        }
        return Ok(text.to_owned());
    }
    let Some(rest) = text.strip_prefix("sqlite:") else {
        return Err(format!(
            "`{shown}` is neither a sqlite:// nor a postgres:// URL; write it like \"sqlite://lifeboat.db\""
        ));
    };
    let rest = rest.trim_start_matches("//");
    if rest.starts_with(":memory:") {
        return Err(
            "an in-memory registry forgets everything when lifeboat exits; name a file, like \"sqlite://lifeboat.db\""
                .to_owned(),
        );
    }
    // The query, if any, keeps its `?`.
    let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    if path.is_empty() {
        return Err("the SQLite URL names no file; write it like \"sqlite://lifeboat.db\"".to_owned());
    }
    Ok(format!("sqlite://{}{query}", base_dir.join(path).display()))
}

/// `Name <addr@host>` or a bare address.
fn validate_mailbox(text: &str) -> Result<(), String> {
    let address = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        (None, None) => text,
        _ => return Err(format!("`{text}` is not a mailbox like \"Lifeboat <lifeboat@example.org>\"")),
    };
    EmailAddress::parse(address).map_err(|err| err.to_string())?;
    // The mailer reads it so (RFC 5322): a display name with a comma or
    // other special characters needs quotes there.
    text.parse::<lettre::message::Mailbox>().map(drop).map_err(|_| {
        format!("`{text}` is not a mailbox mail can carry: put the name in quotes, like \"\\\"Example, Inc.\\\" <lifeboat@example.org>\"")
    })
}

/// The least of most durations: a zero one would spin.
const AT_LEAST_A_SECOND: (Duration, &str) = (Duration::from_secs(1), "must be at least 1s");

/// Deserializers that also take the strings env vars provide.
pub(super) mod lenient {
    use serde::{Deserialize, Deserializer};
    use std::str::FromStr;

    /// Any scalar a config file, the environment or Synapse's JSON gives,
    /// for the reader to take as its setting or field needs.
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a number, true or false, or their text")]
    pub(crate) enum Scalar {
        Bool(bool),
        Integer(i64),
        Float(f64),
        Text(String),
    }

    /// Read as text and parsed by the setting's own type, so a number out of
    /// range (`page_size = -5`) is named as such rather than as a failed
    /// serde variant, and a duration (a `String`) written `30` as one
    /// without a unit rather than as a type mismatch.
    pub fn number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
    {
        let (text, numeric) = match Option::<Scalar>::deserialize(deserializer)? {
            None => return Ok(None),
            Some(Scalar::Bool(value)) => (value.to_string(), false),
            Some(Scalar::Integer(value)) => (value.to_string(), true),
            Some(Scalar::Float(value)) => (value.to_string(), true),
            Some(Scalar::Text(text)) => (text.trim().to_owned(), text.trim().parse::<f64>().is_ok()),
        };
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(if numeric {
                format!("`{text}` is out of range for this setting")
            } else {
                format!("`{text}` is not a number")
            })
        })
    }

    /// true or false, or their text (from env).
    pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
        match Option::<Scalar>::deserialize(deserializer)? {
            None => Ok(None),
            Some(Scalar::Bool(value)) => Ok(Some(value)),
            Some(Scalar::Text(text)) if matches!(text.trim(), "true" | "false") => Ok(Some(text.trim() == "true")),
            Some(_) => Err(serde::de::Error::custom("write true or false")),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a list of strings, or one comma-separated string")]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }

    /// A TOML array, or a comma-separated string (from env).
    pub fn list<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
    where
        D: Deserializer<'de>,
    {
        Ok(match Option::<ListOrText>::deserialize(deserializer)? {
            None => None,
            Some(ListOrText::List(items)) => Some(items),
            Some(ListOrText::Text(text)) => {
                Some(text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect())
            }
        })
    }
}
