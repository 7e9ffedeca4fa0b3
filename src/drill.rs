//! `drill`: a rehearsal of the way back in, against the live homeserver,
//! that changes nothing there. Each line says what is ready and, if not,
//! what to fix.

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use serde::Serialize;

use crate::config::{Config, HoldPolicy, RecoveryMode};
use crate::mail::Mailer;
use crate::outbox::{Channel, QueuedEmails, new_email, send_at_once};
use crate::recover::{AdminAccess, admin_access};
use crate::registry::{Actor, MessageKind, Registry, format_time, now_ms};
use crate::synapse::{self, SharedSecretError};

/// A backup older than this is reported as stale.
const BACKUP_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The drill's test message is sent at once or not at all.
const DRILL_MAIL_WORTH_SENDING: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something deserves attention.
    Warn,
    Fail,
    /// Not checked (the part is not configured).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// Accounts concerned (coverage: those nobody could reach).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
}

impl Line {
    fn new(check: &'static str, (status, detail): (Status, String)) -> Line {
        Line { check, status, detail, accounts: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    pub lines: Vec<Line>,
}

/// `bot_check` is the face's own check that the bot can post in its admin
/// room (it lives with the bot; the drill only reports its line).
pub async fn drill(
    config: &Config,
    registry: &Registry,
    actor: &Actor,
    bot_check: impl Future<Output = (Status, String)>,
) -> Report {
    let mut lines = Vec::new();
    let base = synapse::SynapseClient::from_config(&config.homeserver);

    let synapse = match base.server_version().await {
        Ok(version) => (Status::Ok, format!("Synapse {version} answers")),
        Err(err) => (Status::Fail, err.to_string()),
    };
    lines.push(Line::new("synapse", synapse));

    let fail = |detail: String| (Status::Fail, detail, None);
    let (status, detail, admin) = match admin_access(config, registry).await {
        Ok(AdminAccess::Working { client, source }) => match client.users_page(None, 1).await {
            Ok(_) => {
                (Status::Ok, format!("the {source:?} admin token works and is an admin's").to_lowercase(), Some(client))
            }
            Err(err) => fail(err.to_string()),
        },
        Ok(AdminAccess::Dead { .. }) => fail(
            "no admin token works: put a current one in homeserver.admin_token, or run `lifeboat recover` after a wipe"
                .to_owned(),
        ),
        Err(err) => fail(err.to_string()),
    };
    lines.push(Line::new("admin token", (status, detail)));

    lines.push(Line::new("shared secret", shared_secret(config, admin.as_ref()).await));
    lines.push(Line::new("registration tokens", registration_tokens(admin.as_ref()).await));
    lines.push(Line::new("holds", holds(config, admin.as_ref()).await));
    lines.push(Line::new("email", email(config, registry).await));
    lines.push(Line::new("bot", bot_check.await));
    lines.extend(registry_lines(config, registry).await);

    let ready = lines.iter().all(|line| line.status != Status::Fail);
    let failed = lines.iter().filter(|line| line.status == Status::Fail).count();
    let _ = registry.audit(actor, "drill", None, Some(&format!("ready: {ready} ({failed} failed)"))).await;
    Report { ready, lines }
}

/// Can lost IDs be held? A create-only `PUT {}` on the admin token's own
/// account answers 200 and changes nothing when lifeboat may create and
/// lock accounts (403 under Matrix Authentication Service).
async fn holds(config: &Config, admin: Option<&synapse::SynapseClient>) -> (Status, String) {
    if config.recovery.mode == RecoveryMode::Token {
        return (
            Status::Warn,
            "recovery.mode = \"token\": lost IDs are not held, and Synapse does not bind registration tokens to IDs, so after a loss anyone holding any token can take anyone's ID".into(),
        );
    }
    let Some(admin) = admin else { return (Status::Skip, "not checked: no working admin token".into()) };
    let me = match admin.whoami().await {
        Ok(me) => me.user_id,
        Err(err) => return (Status::Fail, format!("cannot tell whose the admin token is: {err}")),
    };
    match admin.may_create_accounts(&me).await {
        Ok(true) if config.recovery.hold == HoldPolicy::Off => (
            Status::Warn,
            "lifeboat may create and lock accounts, but recovery.hold = \"off\": lost IDs are held only by `lifeboat holds make`".into(),
        ),
        Ok(true) => (
            Status::Ok,
            format!(
                "lifeboat may create and lock accounts (a create-only call on {me} answered that it exists, changing nothing); recovery.hold = \"{}\"",
                config.recovery.hold.as_str()
            ),
        ),
        Ok(false) => (
            Status::Fail,
            "Synapse refuses to create accounts (403), so lost IDs cannot be held: under Matrix Authentication Service set recovery.mode = \"token\"".into(),
        ),
        Err(err) => (Status::Fail, format!("cannot tell whether lifeboat may create accounts: {err}")),
    }
}

/// Synapse checks the MAC before anything else, so registering an account
/// that exists answers "user in use" with the right secret and "HMAC
/// incorrect" with a wrong one: nothing is created either way.
async fn shared_secret(config: &Config, admin: Option<&synapse::SynapseClient>) -> (Status, String) {
    let Some(secret) = &config.homeserver.registration_shared_secret else {
        return (
            Status::Fail,
            "homeserver.registration_shared_secret is not set: without it lifeboat cannot get back in after a wipe"
                .into(),
        );
    };
    let Some(admin) = admin else {
        return (Status::Skip, "not checked: it needs a working admin token to name an existing account".into());
    };
    let existing = match admin.whoami().await {
        Ok(who) => who.user_id,
        Err(err) => return (Status::Fail, err.to_string()),
    };
    let localpart = existing.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
    let throwaway = SecretString::from(Alphanumeric.sample_string(&mut rand::rng(), 32));
    match admin.register_with_shared_secret(&secret.value, &localpart, &throwaway, false).await {
        Err(SharedSecretError::UserInUse) => {
            (Status::Ok, format!("Synapse accepts it (probed with {existing}, which exists)"))
        }
        Err(SharedSecretError::WrongSecret) => (
            Status::Fail,
            "Synapse rejects it (HMAC incorrect): copy registration_shared_secret from homeserver.yaml".into(),
        ),
        Err(err) => (Status::Fail, err.to_string()),
        Ok(_) => (Status::Warn, format!("it works, but {existing} was registered anew")),
    }
}

async fn registration_tokens(admin: Option<&synapse::SynapseClient>) -> (Status, String) {
    let Some(admin) = admin else { return (Status::Skip, "not checked: no working admin token".into()) };
    let token = format!("lifeboat-drill-{}", Alphanumeric.sample_string(&mut rand::rng(), 12));
    let created = admin.create_registration_token(&token, now_ms() + 60_000).await;
    let deleted = admin.delete_registration_token(&token).await;
    match (created, deleted) {
        (Ok(()), Ok(())) => (Status::Ok, "one was created and deleted".into()),
        (Err(err), _) | (_, Err(err)) => (Status::Fail, err.to_string()),
    }
}

async fn email(config: &Config, registry: &Registry) -> (Status, String) {
    let Some(email) = &config.email else {
        return (Status::Fail, "[email] is not configured: after a loss, email is the only way to reach people".into());
    };
    let mailer = match Mailer::from_config(email, 1) {
        Ok(mailer) => mailer,
        Err(err) => return (Status::Fail, err.to_string()),
    };
    if config.alerts.email.is_empty() {
        return match mailer.test_connection().await {
            Ok(()) => {
                (Status::Warn, "the SMTP server answers; set alerts.email to have drill send a test message".into())
            }
            Err(err) => (Status::Fail, err.to_string()),
        };
    }
    // Through the outbox, as every message goes, but sent at once: the
    // drill reports what the relay said, and one that failed is over.
    let message = crate::messages::drill(&config.homeserver.server_name);
    let server_name = &config.homeserver.server_name;
    let queued = QueuedEmails {
        registry,
        mailer: &mailer,
        server_name,
        holds_on: crate::holds::holds_wanted(config, true),
        token_check: None,
    };
    for to in &config.alerts.email {
        let expires_at = now_ms() + DRILL_MAIL_WORTH_SENDING.as_millis() as i64;
        let row = new_email(MessageKind::Drill, to, &message, None, expires_at);
        let queued = &queued;
        let sent = send_at_once(registry, row, |stored| async move { queued.deliver(&stored).await })
            .await
            .unwrap_or_else(|err| Err(err.to_string()));
        if let Err(err) = sent {
            return (Status::Fail, format!("a test message to {to} failed: {err}"));
        }
    }
    mailer.shutdown().await;
    (Status::Ok, format!("a test message went to {} alert address(es)", config.alerts.email.len()))
}

async fn registry_lines(config: &Config, registry: &Registry) -> Vec<Line> {
    let mut lines = Vec::new();
    // Twice the watcher's gap between listings: `watch.interval`, or longer
    // on a big server, where listings are spaced by their cost.
    let max_age = (crate::watch::listing_gap(config, registry).await * 2).max(Duration::from_secs(3600));
    lines.push(match registry.last_complete_sync().await {
        Ok(Some(run)) => {
            let stale = format!("older than {}: run `lifeboat sync` regularly", humantime::format_duration(max_age));
            fresh("registry fresh", "last complete sync", run.started_at, max_age, &stale)
        }
        Ok(None) => Line::new("registry fresh", (Status::Fail, "no complete sync yet: run `lifeboat sync`".into())),
        Err(err) => Line::new("registry fresh", (Status::Fail, err.to_string())),
    });
    // lifeboat's own account needs no contact: nobody is to be reached there.
    let service = crate::recover::service_user_id(config);
    let without_contact = registry
        .accounts_without_verified_contact()
        .await
        .map(|ids| ids.into_iter().filter(|id| id.as_str() != service.as_str()).collect::<Vec<_>>());
    lines.push(match without_contact {
        Ok(ids) if ids.is_empty() => Line::new("coverage", (Status::Ok, "every account has a verified contact".into())),
        Ok(ids) => Line {
            check: "coverage",
            status: Status::Warn,
            detail: format!(
                "{} no verified contact and could not be reached after a loss: add one with `lifeboat contacts add`",
                crate::plural::count(ids.len() as i64, "account has", "accounts have")
            ),
            accounts: ids,
        },
        Err(err) => Line::new("coverage", (Status::Fail, err.to_string())),
    });
    lines.push(match registry.setting(crate::backup::LAST_BACKUP_SETTING).await {
        Ok(Some(at)) => {
            let stale = "over a week ago: run `lifeboat backup --out FILE` regularly";
            fresh("backup", "last backup", at.parse().unwrap_or(0), BACKUP_MAX_AGE, stale)
        }
        Ok(None) => Line::new(
            "backup",
            (Status::Fail, "no backup yet: run `lifeboat backup --out FILE` and keep it on another host".into()),
        ),
        Err(err) => Line::new("backup", (Status::Fail, err.to_string())),
    });
    // A plain backup holds lifeboat's admin token and the link-signing key.
    // Unrecorded (made before lifeboat recorded it): the config says.
    let encrypted = registry.setting(crate::backup::LAST_BACKUP_ENCRYPTED_SETTING).await.ok().flatten();
    let unencrypted = match (encrypted.as_deref(), config.backup.encrypt_to.is_empty()) {
        (Some("yes"), _) | (None, false) => None,
        (_, true) => Some("set backup.encrypt_to"),
        (_, false) => Some("back up again (backup.encrypt_to is set now)"),
    };
    if let (Some(line), Some(fix)) = (lines.last_mut().filter(|line| line.status == Status::Ok), unencrypted) {
        line.status = Status::Warn;
        line.detail
            .push_str(&format!("; it is not encrypted, and whoever reads it could act as a server admin: {fix}"));
    }
    lines
}

/// A `what` done at `at` (ms): fine within `max_age`, else a failure that
/// says it is `stale`.
fn fresh(check: &'static str, what: &str, at: i64, max_age: Duration, stale: &str) -> Line {
    let when = format_time(at).unwrap_or_default();
    if now_ms() - at <= max_age.as_millis() as i64 {
        Line::new(check, (Status::Ok, format!("{what} {when}")))
    } else {
        Line::new(check, (Status::Fail, format!("{what} {when}, {stale}")))
    }
}
