//! `lifeboat config check`

use super::{Context, Outcome, exit};
use crate::config::{Config, Secret};
use crate::plural::id_list;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Validate the config file and print it with secrets redacted.
    ///
    /// Exit 0 when valid, 2 with one sentence naming the key when not. It
    /// reads the file and the environment only: it reaches neither Synapse,
    /// the registry nor the mail relay (`lifeboat drill` tries them).
    Check,
}

pub fn run(context: &Context, command: Command) -> Outcome {
    match command {
        Command::Check => {
            let config = context.config()?;
            print_summary(&config);
            for warning in placeholders(&config) {
                println!("warning: {warning}");
            }
            Ok(exit::OK)
        }
    }
}

fn secret(secret: &Option<Secret>) -> String {
    match secret {
        None => "(not set)".to_owned(),
        Some(Secret { from_file: Some(path), .. }) => format!("(set, read from {})", path.display()),
        Some(Secret { from_file: None, .. }) => "(set)".to_owned(),
    }
}

/// Values left as config.example.toml has them: valid, but not this server's.
fn placeholders(config: &Config) -> Vec<String> {
    use secrecy::ExposeSecret;
    const EXAMPLE_SECRET: &str = "change-me";
    let mut found = Vec::new();
    let mut secret = |key: &str, value: &Option<Secret>| {
        if value.as_ref().is_some_and(|secret| secret.value.expose_secret() == EXAMPLE_SECRET) {
            found.push(format!("{key} is still the example's placeholder: set the real one"));
        }
    };
    secret("homeserver.admin_token", &config.homeserver.admin_token);
    secret("homeserver.registration_shared_secret", &config.homeserver.registration_shared_secret);
    if let Some(bot) = &config.bot {
        secret("bot.password", &bot.password);
        secret("bot.access_token", &bot.access_token);
    }
    let mut value = |key: &str, shown: &str, example: &str| {
        if shown == example {
            found.push(format!("{key} is the example's \"{example}\": set this server's own"));
        }
    };
    value("homeserver.server_name", &config.homeserver.server_name, "example.org");
    if let Some(bot) = &config.bot {
        value("bot.admin_room", bot.admin_room.as_deref().unwrap_or(""), "!abc:example.org");
        for admin in &bot.admins {
            value("bot.admins", &admin.to_string(), "@alice:example.org");
        }
    }
    if let Some(web) = &config.web {
        value("web.public_url", web.public_url.as_str(), "https://lifeboat.example.org/");
        value("web.admin_contact", web.admin_contact.as_deref().unwrap_or(""), "admin@example.org");
    }
    if let Some(email) = &config.email {
        value("email.from", &email.from, "Lifeboat <lifeboat@example.org>");
    }
    for address in &config.alerts.email {
        value("alerts.email", address.as_str(), "admin@example.org");
    }
    found
}

fn print_summary(config: &Config) {
    let hs = &config.homeserver;
    println!("{} is valid.", config.source.display());
    println!("[homeserver]");
    println!("  url = {}", hs.url);
    println!("  public_url = {}", hs.public_url);
    println!("  server_name = {}", hs.server_name);
    println!("  admin_token = {}", secret(&hs.admin_token));
    println!("  registration_shared_secret = {}", secret(&hs.registration_shared_secret));
    println!("  timeout = {}", humantime::format_duration(hs.timeout));
    println!("  retries = {}", hs.retries);
    println!("[registry]");
    println!("  url = {}", crate::redact::redact_url(&config.registry.url));
    println!("[sync]");
    println!("  page_size = {}", config.sync.page_size);
    println!("  details_concurrency = {}", config.sync.details_concurrency);
    println!("  details_max_age = {}", humantime::format_duration(config.sync.details_max_age));
    println!("  details_per_round = {}", config.sync.details_per_round);
    println!("[watch]");
    println!("  interval = {}", humantime::format_duration(config.watch.interval));
    println!("  probe_interval = {}", humantime::format_duration(config.watch.probe_interval));
    println!("  probe_sample = {}", config.watch.probe_sample);
    println!("  max_synapse_share = {}", config.watch.max_synapse_share);
    println!("  loss_threshold = {}", config.watch.loss_threshold);
    println!("  alert_unchecked_after = {}", humantime::format_duration(config.watch.alert_unchecked_after));
    println!("[tokens]");
    println!("  expiry = {}", humantime::format_duration(config.tokens.expiry));
    match &config.email {
        Some(email) => {
            println!("[email]");
            println!("  smtp_url = {}", crate::redact::redact_url(&email.smtp_url));
            println!("  smtp_password = {}", secret(&email.smtp_password));
            println!("  from = {}", email.from);
            println!("  connections = {}", email.connections);
        }
        None => println!("[email] not configured: notices and alerts by email need smtp_url and from"),
    }
    match &config.bot {
        Some(bot) => {
            println!("[bot]");
            println!("  user_id = {}", bot.user_id);
            println!("  password = {}", secret(&bot.password));
            println!("  access_token = {}", secret(&bot.access_token));
            println!("  admin_room = {}", bot.admin_room.as_deref().unwrap_or("(not set)"));
            println!("  admins = [{}]", id_list(&bot.admins, usize::MAX));
            println!("  command_prefix = {}", bot.command_prefix);
            println!("  store_path = {}", bot.store_path.display());
            println!("  store_passphrase = {}", secret(&bot.store_passphrase));
            println!("  encrypted_notices = {}", bot.encrypted_notices);
        }
        None => println!("[bot] not configured"),
    }
    match &config.web {
        Some(web) => {
            println!("[web]");
            println!("  bind = {}", web.bind);
            println!("  public_url = {}", web.public_url);
            let client_url = web.client_url.as_ref().map_or("(not set)".to_owned(), ToString::to_string);
            println!("  client_url = {client_url}");
            println!("  admin_contact = {}", web.admin_contact.as_deref().unwrap_or("(not set)"));
            println!("  trusted_proxies = [{}]", id_list(&web.trusted_proxies, usize::MAX));
            println!("  rate_limit_per_ip = {}", web.rate_limit_per_ip);
            println!("  rate_limit_per_target = {}", web.rate_limit_per_target);
            println!("  rate_limit_window = {}", humantime::format_duration(web.rate_limit_window));
            println!("  token_requests_per_person = {}", web.token_requests_per_person);
            println!("  subscription_mails_per_hour = {}", web.subscription_mails_per_hour);
            println!("  token_mails_per_hour = {}", web.token_mails_per_hour);
            println!("  max_connections = {}", web.max_connections);
        }
        None => println!("[web] not configured"),
    }
    println!("[metrics]");
    let how = if config.metrics.configured { "" } else { " (default; skipped if taken)" };
    println!("  bind = {}{how}", config.metrics.bind);
    println!("[alerts]");
    println!("  email = [{}]", id_list(&config.alerts.email, usize::MAX));
    println!("[backup]");
    let keys: Vec<String> = config.backup.encrypt_to.iter().map(ToString::to_string).collect();
    let plain = if keys.is_empty() { " (backups are not encrypted)" } else { "" };
    println!("  encrypt_to = [{}]{plain}", keys.join(", "));
    println!("[recovery]");
    println!("  mode = {}", config.recovery.mode.as_str());
    println!("  hold = {}", config.recovery.hold.as_str());
    if hs.admin_token.is_none() {
        println!("note: homeserver.admin_token is not set; sync and check need an admin token");
    }
}
