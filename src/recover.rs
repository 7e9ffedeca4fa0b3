//! Getting back in: which admin token works, and re-creating lifeboat's
//! own service account after a database wipe: through the shared secret,
//! or, as a hold run finds it lost, through the admin API.

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::check::WORKING_TOKEN_SETTING;
use crate::config::Config;
use crate::registry::{self, Actor, CredentialFrom, Registry, SERVICE_PASSWORD_SETTING};
use crate::synapse::{self, Registered, SharedSecretError, SynapseClient};
use crate::user_id::UserId;

/// Where the working admin token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Obtained by `recover` and kept in the registry.
    Recovered,
    /// `homeserver.admin_token` from the config.
    Config,
}

pub enum AdminAccess {
    Working {
        client: SynapseClient,
        source: TokenSource,
    },
    /// Every known token is rejected as unknown (as after a wipe). The client
    /// carries the one that worked last (else the configured one), so a wipe
    /// reads as a suspected reset rather than "could not tell".
    Dead {
        client: SynapseClient,
    },
}

impl AdminAccess {
    /// The client, if a token works.
    pub fn working(self) -> Option<SynapseClient> {
        match self {
            AdminAccess::Working { client, .. } => Some(client),
            AdminAccess::Dead { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "lifeboat cannot recover without Synapse's shared secret: set homeserver.registration_shared_secret (or registration_shared_secret_file) to registration_shared_secret from homeserver.yaml"
    )]
    NoSecret,
    #[error(
        "{user_id} still exists on Synapse, so its database was not wiped: the admin token was revoked instead; put a current admin token in homeserver.admin_token (if Synapse's database was wiped after all, someone else registered {user_id} before lifeboat could: deactivate that account (it is a stranger's, and may write as lifeboat), set bot.user_id to another ID and run `lifeboat recover` again)"
    )]
    NotAWipe { user_id: String },
    #[error(
        "{user_id} is not an account of homeserver.server_name, so lifeboat cannot re-create it there; set bot.user_id to an account of that server"
    )]
    Foreign { user_id: String },
    #[error(
        "homeserver.url answers for another server: the admin token there is {user_id}'s, but homeserver.server_name is {server_name}; point homeserver.url at {server_name}'s Synapse (change server_name only where it is mistyped: the registry's accounts are one server's, and another server's listing would show each of them lost)"
    )]
    OtherServer { user_id: String, server_name: String },
    #[error("cannot recover: {0}")]
    SharedSecret(#[from] SharedSecretError),
    #[error("{user_id} refused the password lifeboat has just set on it")]
    OwnPasswordRefused { user_id: String },
    #[error(transparent)]
    Synapse(#[from] synapse::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

impl RecoverError {
    /// Will fail the same way until someone changes lifeboat's setup
    /// ([`synapse::Error::is_setup_fault`], another server's Synapse, an ID
    /// of another server).
    pub fn is_setup_fault(&self) -> bool {
        match self {
            RecoverError::OtherServer { .. } | RecoverError::Foreign { .. } | RecoverError::NoSecret => true,
            RecoverError::Synapse(err) => err.is_setup_fault(),
            _ => false,
        }
    }

    /// Worth another try later: the registry or Synapse failed for now.
    pub fn is_transient(&self) -> bool {
        match self {
            RecoverError::Registry(_) => true,
            RecoverError::Synapse(err) => err.is_transient(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RecoverOutcome {
    /// A token already works: nothing to do.
    AlreadyWorking { source: TokenSource },
    /// The service account was re-created; its token is in the registry.
    Recovered { user_id: String },
}

/// lifeboat's one Matrix identity: `bot.user_id`, else `@lifeboat:<server>`.
pub fn service_user_id(config: &Config) -> UserId {
    match &config.bot {
        Some(bot) => bot.user_id.clone(),
        None => UserId::parse(&format!("@lifeboat:{}", config.homeserver.server_name))
            .expect("a validated server name makes a valid user ID"),
    }
}

/// Finds a working admin token: the recovered one first (it is newer than
/// any token that died with a wipe), then the configured one.
pub async fn admin_access(config: &Config, registry: &Registry) -> Result<AdminAccess, RecoverError> {
    let base = SynapseClient::from_config(&config.homeserver);
    let stored = registry.service_credential(&service_user_id(config)).await?;
    let recovered = stored.map(|stored| (TokenSource::Recovered, stored.access_token));
    let configured =
        config.homeserver.admin_token.as_ref().map(|configured| (TokenSource::Config, configured.value.clone()));
    let has_configured = configured.is_some();
    let (mut dead, mut expired, mut own_expired, mut own_demoted) = (Vec::new(), None, None, None);
    for (source, token) in recovered.into_iter().chain(configured) {
        let client = base.with_token(token);
        // lifeboat's own token beside a configured one: one admin read of its
        // own account says both whether it works and whether it is still an
        // admin's (an admin may take the flag off); else `whoami`.
        let answer = if source == TokenSource::Recovered && has_configured {
            own_token_answer(&client, &service_user_id(config)).await
        } else {
            client.whoami().await.map(|whoami| match of_this_server(config, &whoami.user_id) {
                true => TokenAnswer::Works,
                false => TokenAnswer::OfAnotherServer(whoami.user_id),
            })
        };
        match answer {
            // Its listing would hold none of this server's accounts: every
            // one would read as lost.
            Ok(TokenAnswer::OfAnotherServer(user_id)) => {
                return Err(RecoverError::OtherServer { user_id, server_name: config.homeserver.server_name.clone() });
            }
            // The configured token may still be an admin's.
            Ok(TokenAnswer::NotAnAdmin) => {
                if !DEMOTION_TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("lifeboat's own account is no longer a server admin: using homeserver.admin_token");
                }
                own_demoted = Some(client);
            }
            Ok(TokenAnswer::Works) => {
                // An admin again: a later demotion is news again.
                if source == TokenSource::Recovered {
                    DEMOTION_TOLD.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(AdminAccess::Working { client, source });
            }
            Err(synapse::Error::Unauthorized { .. }) => dead.push(client),
            // lifeboat's own token, expired: `recover` logs in for a new one.
            Err(synapse::Error::Expired { .. }) if source == TokenSource::Recovered => own_expired = Some(client),
            Err(err @ synapse::Error::Expired { .. }) => expired = Some(err),
            // The demoted own token still works for what a non-admin may do.
            Err(err) => {
                return own_demoted
                    .map(|client| AdminAccess::Working { client, source: TokenSource::Recovered })
                    .ok_or(err.into());
            }
        }
    }
    // A token Synapse still knows says its database is there: no wipe. The
    // demoted or expired own one is the client to go on with (a listing
    // with it fails "not a server admin" or says "could not tell", never
    // "everyone is missing").
    if let Some(client) = own_demoted {
        return Ok(AdminAccess::Working { client, source: TokenSource::Recovered });
    }
    if let Some(client) = own_expired {
        return Ok(AdminAccess::Dead { client });
    }
    if let Some(err) = expired {
        return Err(err.into());
    }
    let working = registry.setting(WORKING_TOKEN_SETTING).await.ok().flatten();
    let client = match dead.iter().position(|client| working.is_some() && client.token_fingerprint() == working) {
        Some(index) => dead.swap_remove(index),
        None => dead.pop().unwrap_or(base),
    };
    Ok(AdminAccess::Dead { client })
}

/// Is `user_id` (whose token works at homeserver.url) an account of
/// homeserver.server_name? One that cannot be parsed is not held against it.
fn of_this_server(config: &Config, user_id: &str) -> bool {
    UserId::parse(user_id).ok().is_none_or(|id| id.server_name() == config.homeserver.server_name)
}

/// Said once per demotion: every use of the admin API would say it again.
static DEMOTION_TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What Synapse says of a token [`admin_access`] tries.
enum TokenAnswer {
    Works,
    /// lifeboat's own, known but no longer a server admin's.
    NotAnAdmin,
    /// A user of another server than homeserver.server_name.
    OfAnotherServer(String),
}

/// lifeboat's own token (its account is `user_id`), read as an admin reads
/// that account: only admins may, so a 403 says the token works but is no
/// admin's; a dead or expired token fails as `whoami` would.
async fn own_token_answer(client: &SynapseClient, user_id: &UserId) -> Result<TokenAnswer, synapse::Error> {
    match client.user_details(user_id.as_str()).await {
        Ok(_) => Ok(TokenAnswer::Works),
        Err(synapse::Error::Forbidden { .. }) => Ok(TokenAnswer::NotAnAdmin),
        Err(err) => Err(err),
    }
}

/// lifeboat's own token, expired (a homeserver with session lifetimes)
/// while another admin token keeps `recover` from running: logs in again
/// with the password `recover` set and keeps the new token. `None` when
/// lifeboat keeps no password (its token came from elsewhere) or the login
/// is refused. `same_device` for a token that expired: its device lives on
/// (recipients of encrypted notices see no new one); one logged out lost
/// its device, keys and all, and gets a new one.
pub async fn renew_own_token(
    config: &Config,
    registry: &Registry,
    actor: &Actor,
    same_device: bool,
) -> Result<Option<secrecy::SecretString>, RecoverError> {
    let user_id = service_user_id(config);
    let stored = registry.service_credential(&user_id).await?;
    let device = stored.and_then(|stored| stored.device_id).filter(|_| same_device);
    let Some(renewed) = own_login(config, registry, device.as_deref()).await? else { return Ok(None) };
    keep_own_login(registry, &user_id, &renewed, CredentialFrom::Renewal, actor).await?;
    Ok(Some(renewed.access_token))
}

/// After a wipe: registers the service account again as an admin with the
/// shared secret and keeps its token in the registry; a no-op while a token works.
pub async fn recover(config: &Config, registry: &Registry, actor: &Actor) -> Result<RecoverOutcome, RecoverError> {
    let base = match admin_access(config, registry).await? {
        AdminAccess::Working { source, .. } => return Ok(RecoverOutcome::AlreadyWorking { source }),
        AdminAccess::Dead { client } => client,
    };
    let secret = config.homeserver.registration_shared_secret.as_ref().ok_or(RecoverError::NoSecret)?;
    let user_id = service_user_id(config);
    if user_id.server_name() != config.homeserver.server_name {
        return Err(RecoverError::Foreign { user_id: user_id.to_string() });
    }
    // The password is kept before registering: if lifeboat dies between
    // Synapse's answer and storing the token, the next recover logs in
    // with it instead of taking its own account for a stranger's. Made
    // once, whoever asks first: two recoveries at once use the same one.
    let password = registry.generated_secret(SERVICE_PASSWORD_SETTING).await?;
    let registered = match base.register_with_shared_secret(&secret.value, user_id.localpart(), &password, true).await {
        Ok(registered) => registered,
        Err(SharedSecretError::UserInUse) => match own_login(config, registry, None).await? {
            Some(ours) => ours,
            None => return Err(RecoverError::NotAWipe { user_id: user_id.to_string() }),
        },
        Err(err) => return Err(err.into()),
    };
    // Every ID may be free until a listing says which were lost: no token
    // goes out meanwhile (`holds::tokens_withheld`). Kept before the token:
    // once that works, nothing would come back here to keep it.
    registry.note_wipe_seen().await?;
    keep_own_login(registry, &user_id, &registered, CredentialFrom::Recovery, actor).await?;
    registry.own_account_recreated(&user_id).await?;
    lift_rate_limit(&base.with_token(registered.access_token.clone()), &user_id).await;
    Ok(RecoverOutcome::Recovered { user_id: registered.user_id })
}

/// A login to lifeboat's own account (on `device`, or a new one) with the
/// password only lifeboat knows (set by `recover` or a hold run): if it
/// works, the account is lifeboat's, whichever of them made it. `None`
/// when refused, or when lifeboat keeps no password.
pub async fn own_login(
    config: &Config,
    registry: &Registry,
    device: Option<&str>,
) -> Result<Option<Registered>, RecoverError> {
    let Some(password) = registry.setting(SERVICE_PASSWORD_SETTING).await? else { return Ok(None) };
    let base = SynapseClient::from_config(&config.homeserver);
    Ok(base.login_with_password(service_user_id(config).localpart(), &password.into(), device).await?)
}

/// What a hold run found where lifeboat's own ID was lost.
pub enum OwnFound {
    /// An account lifeboat is logged in to already: made by an interrupted
    /// run or a recovery.
    LoggedIn(Registered),
    /// An account the run made create-only (or an interrupted run's, unused).
    Made { created_at_ms: Option<i64>, display_name: Option<String> },
}

/// What became of lifeboat's own ID.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnMade {
    /// lifeboat's again, its token kept.
    Lifeboats,
    /// Made again and locked, so nobody else has it, but lifeboat cannot log
    /// in to it (why: password logins turned off, say).
    LockedOnly(String),
    /// Another hold run (or a recovery) settled it meanwhile.
    SettledMeanwhile,
}

/// lifeboat's own ID, lost (a wipe the shared secret did not undo first) and
/// taken by a hold run: an account the run made is locked, then made
/// lifeboat's as a recovery makes one (an admin, with the password only
/// lifeboat knows); one lifeboat is logged in to already stays as it is.
/// Its token is kept, and the ID recorded as lifeboat's own.
pub async fn make_own_account_lifeboats(
    config: &Config,
    registry: &Registry,
    admin: &SynapseClient,
    found: OwnFound,
    actor: &Actor,
) -> Result<OwnMade, RecoverError> {
    let user_id = service_user_id(config);
    let (login, created_at_ms) = match found {
        OwnFound::LoggedIn(login) => (login, None),
        OwnFound::Made { created_at_ms, display_name } => {
            // Locked first, as a person's hold is: until lifeboat's password
            // is on it, no other way in (single sign-on, say) opens it.
            admin.lock_held_account(user_id.as_str(), &[]).await?;
            match take_as_lifeboats(config, registry, admin, &user_id, display_name.as_deref()).await {
                Ok(login) => (login, created_at_ms),
                Err(err) if err.is_transient() => return Err(err),
                // Nobody else can have it, locked again (the hand-over may
                // have unlocked it): it holds no token back.
                Err(err) => {
                    admin.lock_held_account(user_id.as_str(), &[]).await?;
                    let marked = registry.mark_own_made_again(&user_id, created_at_ms).await?;
                    return Ok(if marked { OwnMade::LockedOnly(err.to_string()) } else { OwnMade::SettledMeanwhile });
                }
            }
        }
    };
    // The token first: a run stopped before the record below is resumed.
    keep_own_login(registry, &user_id, &login, CredentialFrom::HoldRun, actor).await?;
    if !registry.mark_own_made_again(&user_id, created_at_ms).await? {
        return Ok(OwnMade::SettledMeanwhile);
    }
    lift_rate_limit(admin, &user_id).await;
    Ok(OwnMade::Lifeboats)
}

/// Unlocks lifeboat's own account with the password only lifeboat knows,
/// as an admin (its token is taken for an admin token, as after a
/// shared-secret recovery), and logs in.
async fn take_as_lifeboats(
    config: &Config,
    registry: &Registry,
    admin: &SynapseClient,
    user_id: &UserId,
    display_name: Option<&str>,
) -> Result<Registered, RecoverError> {
    let password = registry.generated_secret(SERVICE_PASSWORD_SETTING).await?;
    admin.hand_over_account(user_id.as_str(), &password, true, display_name, &[]).await?;
    let login = own_login(config, registry, None).await?;
    login.ok_or_else(|| RecoverError::OwnPasswordRefused { user_id: user_id.to_string() })
}

async fn keep_own_login(
    registry: &Registry,
    user_id: &UserId,
    login: &Registered,
    from: CredentialFrom,
    actor: &Actor,
) -> Result<(), registry::Error> {
    let token = login.access_token.expose_secret();
    let device = login.device_id.as_deref();
    registry.store_service_credential(user_id, token, device, from, actor).await
}

/// Mass DMs from a throttled account would crawl; a wipe lost any override.
async fn lift_rate_limit(admin: &SynapseClient, user_id: &UserId) {
    if let Err(err) = admin.override_rate_limit(user_id.as_str()).await {
        tracing::warn!(error = %err, "could not lift the service account's rate limits");
    }
}
