//! One single-use, expiring registration token per affected person, made
//! through Synapse's admin API and recorded against account and incident.

use std::time::Duration;

use futures::StreamExt;
use rand::distr::{Alphanumeric, SampleString};

use crate::config::Config;
use crate::holds::{UnheldLostIds, holds_wanted, tokens_withheld};
use crate::registry::{self, Registry, TokenPurpose, now_ms};
use crate::synapse::{self, SynapseClient};
use crate::user_id::UserId;

/// Parallel admin API calls when creating or deleting tokens.
const CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a registration-token request to Synapse failed: {0}")]
    Synapse(#[from] synapse::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("the incident was resolved while the token was being made, so it was deleted again")]
    IncidentResolved,
    /// Synapse binds no token to a name: none goes out (not even one made
    /// earlier) while a lost ID that should be held is free.
    #[error("{0}, and a registration token could register any lost ID")]
    Withheld(UnheldLostIds),
    #[error(
        "could not ask Synapse how many accounts it has (no token goes out before it is sure none were lost since the last listing): {0}"
    )]
    Count(synapse::Error),
}

/// [`tokens_withheld`], once Synapse was asked whether its database went
/// back since the last listing: where a token is about to be made or
/// handed out.
///
/// Synapse deletes no account, so fewer than the last listing read means
/// its database went back since (a wipe after which an admin put a new
/// token in the config by hand, a restore from an older backup): the lost
/// IDs no listing has shown are free for any token. Noted as a wipe seen
/// now, so that every token guard waits for a listing begun after it, as
/// after `lifeboat recover`.
pub async fn tokens_withheld_now(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
) -> Result<Option<UnheldLostIds>, TokenError> {
    if holds_wanted(config, true)
        && let Some(last) = registry.last_complete_sync().await?
    {
        let count = client.account_count().await.map_err(TokenError::Count)?;
        if count < last.listed && registry.wipe_unlisted().await?.is_none() {
            tracing::warn!(
                accounts = count,
                last_listing = last.listed,
                "Synapse has fewer accounts than the last listing read: its database went back, and no registration token goes out until a listing shows who was lost"
            );
            registry.note_wipe_seen().await?;
            delete_revived_tokens_when_due(registry, client, true).await?;
        }
    }
    Ok(tokens_withheld(config, registry).await?)
}

/// From when a loss is seen (its time and a random part) until Synapse's
/// tokens were checked for revived ones ("no"): a check Synapse did not answer is tried again
/// by every sync until one works.
const REVIVED_TOKENS_CHECK_SETTING: &str = "revived_tokens_check_due";

/// [`delete_revived_tokens`] when a loss was just seen (`loss_seen`), or
/// an earlier one's check has not worked yet; how many it deleted.
pub async fn delete_revived_tokens_when_due(
    registry: &Registry,
    client: &SynapseClient,
    loss_seen: bool,
) -> Result<u64, TokenError> {
    let pending = registry.setting(REVIVED_TOKENS_CHECK_SETTING).await?.filter(|seen| seen != "no");
    let seen = match (loss_seen, pending) {
        (true, _) => {
            // Its own stamp: two processes seeing a loss in the same
            // millisecond must not clear each other's retry.
            let seen = format!("{}-{:08x}", now_ms(), rand::random::<u32>());
            registry.set_setting(REVIVED_TOKENS_CHECK_SETTING, &seen).await?;
            seen
        }
        (false, Some(seen)) => seen,
        (false, None) => return Ok(0),
    };
    let deleted = delete_revived_tokens(registry, client).await?;
    // Not over a loss another process saw meanwhile, whose check may fail.
    registry.replace_setting(REVIVED_TOKENS_CHECK_SETTING, &seen, "no").await?;
    Ok(deleted)
}

/// A Synapse restored from an older backup has again the tokens lifeboat
/// deleted since (withdrawn ones, a resolved incident's), and a resolved
/// incident's used tokens unused again (resolving leaves used ones be):
/// each could register any name that is free, a lost ID too. Deletes those
/// Synapse lists; how many.
async fn delete_revived_tokens(registry: &Registry, client: &SynapseClient) -> Result<u64, TokenError> {
    let resolved: std::collections::HashSet<i64> = registry
        .incidents()
        .await?
        .into_iter()
        .filter(|incident| incident.resolved_at.is_some())
        .map(|incident| incident.id)
        .collect();
    let dead: std::collections::HashSet<String> = registry
        .tokens(None)
        .await?
        .into_iter()
        .filter(|token| token.revoked_at.is_some() || resolved.contains(&token.incident_id))
        .map(|token| token.token)
        .collect();
    if dead.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for listed in client.registration_tokens().await? {
        if dead.contains(&listed.token) {
            client.delete_registration_token(&listed.token).await?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::warn!(
            tokens = deleted,
            "Synapse had registration tokens again that lifeboat deleted or saw used before (restored from an older backup?): deleted them"
        );
    }
    Ok(deleted)
}

/// 24 letters and digits: nothing to URL-encode, ~142 bits.
fn new_token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// The affected people who are owed a notice token and have none yet: their
/// ID is lost to them, and they may come back (`Account::may_come_back`).
pub async fn owed_notice_tokens(
    registry: &Registry,
    incident_id: i64,
    service: &UserId,
) -> Result<Vec<UserId>, registry::Error> {
    Ok(registry
        .accounts_without_notice_token(incident_id, service)
        .await?
        .into_iter()
        .filter(|account| account.may_come_back())
        .map(|account| account.user_id)
        .collect())
}

/// Gives every affected person who needs one a notice token, and makes
/// sure each recorded token exists in Synapse. Safe to run again after a
/// crash: recorded-but-unconfirmed tokens are created again, with a fresh
/// expiry (Synapse's "already exists" counts as done). `service` is
/// lifeboat's own account, which needs none. Returns how many were created.
pub async fn ensure_notice_tokens(
    registry: &Registry,
    client: &SynapseClient,
    incident_id: i64,
    expiry: Duration,
    service: &UserId,
) -> Result<u64, TokenError> {
    let expires_at = now_ms() + expiry.as_millis() as i64;
    for user_id in owed_notice_tokens(registry, incident_id, service).await? {
        registry.record_token(TokenPurpose::Notice, incident_id, &user_id, &new_token(), expires_at).await?;
    }
    registry.refresh_unconfirmed_tokens(incident_id, expires_at).await?;
    let unconfirmed: Vec<_> = registry
        .tokens(Some(incident_id))
        .await?
        .into_iter()
        .filter(|token| token.confirmed_at.is_none() && token.revoked_at.is_none())
        .collect();
    let mut created = 0;
    let mut results = futures::stream::iter(unconfirmed)
        .map(|token| async move {
            client.create_registration_token(&token.token, token.expires_at).await.map(|()| (token.id, token.token))
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = results.next().await {
        let (id, token) = result?;
        // Under the notify lease, which `incident resolve` takes too: only a
        // run that lost its lease to a resolve finds its incident resolved.
        if confirm_or_withdraw(registry, client, id, &token).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// The one rule for a token for one person of an incident, whoever asks (the
/// web page: `limit` is its per-person cap; an admin: no cap): none while a
/// lost ID is free ([`TokenError::Withheld`]); else their newest valid token
/// that Synapse says is unused, else a new one while under the cap, with its
/// expiry (UTC ms); `None` when their earlier ones were used or expired and
/// they had as many as `limit` allows.
pub async fn token_for_person(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    incident_id: i64,
    user_id: &UserId,
    limit: Option<i64>,
) -> Result<Option<(String, i64)>, TokenError> {
    if let Some(unheld) = tokens_withheld_now(config, registry, client).await? {
        return Err(TokenError::Withheld(unheld));
    }
    let now = now_ms();
    let mut theirs: Vec<_> = registry
        .tokens(Some(incident_id))
        .await?
        .into_iter()
        .filter(|token| token.user_id == user_id.as_str() && token.confirmed_at.is_some() && token.revoked_at.is_none())
        .filter(|token| token.expires_at > now)
        .collect();
    theirs.sort_by_key(|token| std::cmp::Reverse(token.created_at));
    for token in theirs {
        // Synapse knows whether it was used; the registry does not.
        let seen = client.registration_token(&token.token).await?;
        if token_state(&token, seen.as_ref(), now) == TokenState::Unused {
            return Ok(Some((token.token, token.expires_at)));
        }
    }
    // Recorded first (within the cap), then created in Synapse, then confirmed.
    let token = new_token();
    let expires_at = now_ms() + config.tokens.expiry.as_millis() as i64;
    let id = match limit {
        Some(limit) => match registry.record_request_token(incident_id, user_id, &token, expires_at, limit).await? {
            Some(id) => id,
            None => return Ok(None),
        },
        None => registry.record_token(TokenPurpose::Request, incident_id, user_id, &token, expires_at).await?,
    };
    if let Err(err) = client.create_registration_token(&token, expires_at).await {
        // Withdrawn, so that a Synapse too busy to make it does not use up
        // the person's cap; only once Synapse surely lacks it (it may have
        // made it before failing to answer). Else it stays unconfirmed, and
        // `incident resolve` deletes it.
        if client.delete_registration_token(&token).await.is_ok() {
            registry.mark_token_revoked(id).await?;
        }
        return Err(err.into());
    }
    // `incident resolve` may have swept the tokens meanwhile: one it marked
    // revoked, or one made after it resolved the incident, must not stand
    // (one made before that, it sweeps again after resolving).
    if !confirm_or_withdraw(registry, client, id, &token).await? {
        return Err(TokenError::IncidentResolved);
    }
    Ok(Some((token, expires_at)))
}

/// Confirms token `id`, just made in Synapse; one that must not stand
/// (revoked, or its incident resolved, meanwhile) is deleted there again.
async fn confirm_or_withdraw(
    registry: &Registry,
    client: &SynapseClient,
    id: i64,
    token: &str,
) -> Result<bool, TokenError> {
    if registry.confirm_token(id).await? {
        return Ok(true);
    }
    client.delete_registration_token(token).await?;
    registry.mark_token_revoked(id).await?;
    Ok(false)
}

/// Where a recorded token stands, from what Synapse says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Recorded, not yet created in Synapse (a later notify creates it).
    NotInSynapse,
    Unused,
    /// Someone is registering with it right now (Synapse's `pending`).
    InUse,
    Used,
    Expired,
    /// lifeboat deleted it (the incident was resolved, or it was replaced).
    Revoked,
    /// Created once, but Synapse no longer has it (deleted by hand, or
    /// Synapse lost its database again).
    Gone,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::NotInSynapse => "not yet in Synapse",
            TokenState::Unused => "unused",
            TokenState::InUse => "in use",
            TokenState::Used => "used",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
            TokenState::Gone => "gone from Synapse",
        }
    }
}

/// The one rule for a token's state: `in_synapse` is Synapse's record of
/// it (`None`: Synapse has no such token).
pub fn token_state(
    recorded: &registry::NoticeToken,
    in_synapse: Option<&synapse::RegistrationToken>,
    now: i64,
) -> TokenState {
    if recorded.revoked_at.is_some() {
        return TokenState::Revoked;
    }
    let Some(synapse) = in_synapse else {
        return if recorded.confirmed_at.is_some() { TokenState::Gone } else { TokenState::NotInSynapse };
    };
    if synapse.completed > 0 {
        TokenState::Used
    } else if synapse.pending > 0 {
        TokenState::InUse
    } else if synapse.expiry_time.is_some_and(|expiry| expiry <= now) {
        TokenState::Expired
    } else {
        TokenState::Unused
    }
}

/// Gives a fresh expiry to tokens not yet sent to their person that would
/// expire within half of `expiry` (sending was held back, e.g. by a long
/// SMTP outage): nobody gets a token that is dead or about to be; returns how many.
pub async fn extend_unsent_tokens(
    registry: &Registry,
    client: &SynapseClient,
    incident_id: i64,
    expiry: Duration,
) -> Result<u64, TokenError> {
    let now = now_ms();
    let expires_at = now + expiry.as_millis() as i64;
    let mut extended = 0;
    for token in registry.tokens_expiring_unsent(incident_id, now + expiry.as_millis() as i64 / 2).await? {
        match client.set_registration_token_expiry(&token.token, expires_at).await {
            // Gone from Synapse (another wipe, or deleted there by hand): the
            // notice about to carry it must carry one that works.
            Err(synapse::Error::NotFound) => client.create_registration_token(&token.token, expires_at).await?,
            other => other?,
        }
        registry.set_token_expiry(token.id, expires_at).await?;
        extended += 1;
    }
    Ok(extended)
}

/// Deletes an incident's unused tokens in Synapse (never relying on
/// `uses_allowed: 0`, which Synapse still accepts). Returns (revoked, used).
pub async fn revoke_unused_tokens(
    registry: &Registry,
    client: &SynapseClient,
    incident_id: i64,
) -> Result<(u64, u64), TokenError> {
    let (mut revoked, mut used) = (0, 0);
    for token in registry.tokens(Some(incident_id)).await?.into_iter().filter(|token| token.revoked_at.is_none()) {
        match client.registration_token(&token.token).await? {
            Some(info) if info.completed > 0 => used += 1,
            _ => {
                client.delete_registration_token(&token.token).await?;
                registry.mark_token_revoked(token.id).await?;
                revoked += 1;
            }
        }
    }
    Ok((revoked, used))
}
