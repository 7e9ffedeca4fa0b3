//! Admin endpoints beyond the listing: who a token belongs to, registration
//! tokens, shared-secret registration and rate-limit overrides.

use hmac::{Hmac, Mac};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{Error, SynapseClient, found, or_none, urlencode};

#[derive(Debug, Clone, Deserialize)]
pub struct Whoami {
    pub user_id: String,
    pub device_id: Option<String>,
}

/// A registration token as Synapse reports it (Debug without the token).
#[derive(Clone, Deserialize)]
pub struct RegistrationToken {
    pub token: String,
    #[serde(default)]
    pub pending: i64,
    #[serde(default)]
    pub completed: i64,
    /// Milliseconds.
    pub expiry_time: Option<i64>,
}

impl std::fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationToken")
            .field("pending", &self.pending)
            .field("completed", &self.completed)
            .field("expiry_time", &self.expiry_time)
            .finish_non_exhaustive()
    }
}

/// Credentials of an account made through shared-secret registration.
#[derive(Clone, Deserialize)]
pub struct Registered {
    pub user_id: String,
    pub access_token: SecretString,
    pub device_id: Option<String>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SharedSecretError {
    /// The account exists already: Synapse's database was not wiped.
    #[error("the account already exists on Synapse")]
    UserInUse,
    #[error(
        "Synapse refused the shared secret (403): homeserver.registration_shared_secret does not match registration_shared_secret in homeserver.yaml"
    )]
    WrongSecret,
    #[error(transparent)]
    Synapse(#[from] Error),
}

#[derive(Deserialize)]
struct Nonce {
    nonce: String,
}

impl SynapseClient {
    /// `GET /_matrix/client/v3/account/whoami`: does this token still work?
    pub async fn whoami(&self) -> Result<Whoami, Error> {
        const PATH: &str = "/_matrix/client/v3/account/whoami";
        self.get_json(PATH, &[], true).await.map_err(|err| self.not_synapse_if_missing(err, PATH))
    }

    /// Creates a single-use registration token with the given string, so a
    /// retry after a crash finds "already exists" instead of making another.
    pub async fn create_registration_token(&self, token: &str, expiry_time_ms: i64) -> Result<(), Error> {
        let body = json!({"token": token, "uses_allowed": 1, "expiry_time": expiry_time_ms});
        let created: Result<RegistrationToken, Error> =
            self.request_json(Method::POST, "/_synapse/admin/v1/registration_tokens/new", &[], Some(&body), true).await;
        match created {
            Ok(_) => Ok(()),
            // Made by an earlier try whose answer was lost: it gets this
            // expiry too, the one the registry records and the notice states.
            Err(Error::Rejected { message, .. }) if message.to_lowercase().contains("already exists") => {
                self.set_registration_token_expiry(token, expiry_time_ms).await
            }
            Err(err) => Err(err.hiding(token)),
        }
    }

    /// Moves a token's expiry (ms). Idempotent.
    pub async fn set_registration_token_expiry(&self, token: &str, expiry_time_ms: i64) -> Result<(), Error> {
        let path = format!("/_synapse/admin/v1/registration_tokens/{}", urlencode(token));
        let body = json!({"expiry_time": expiry_time_ms});
        self.call(Method::PUT, &path, Some(&body)).await.map_err(|err| err.hiding(token))
    }

    /// Every registration token Synapse has, with its use counts.
    pub async fn registration_tokens(&self) -> Result<Vec<RegistrationToken>, Error> {
        #[derive(Deserialize)]
        struct Listing {
            registration_tokens: Vec<RegistrationToken>,
        }
        let listing: Listing = self.get_json("/_synapse/admin/v1/registration_tokens", &[], true).await?;
        Ok(listing.registration_tokens)
    }

    pub async fn registration_token(&self, token: &str) -> Result<Option<RegistrationToken>, Error> {
        let path = format!("/_synapse/admin/v1/registration_tokens/{}", urlencode(token));
        found(self.get_json(&path, &[], true).await).map_err(|err| err.hiding(token))
    }

    /// Deletes a token; one that is already gone counts as deleted.
    pub async fn delete_registration_token(&self, token: &str) -> Result<(), Error> {
        let path = format!("/_synapse/admin/v1/registration_tokens/{}", urlencode(token));
        found(self.call(Method::DELETE, &path, None).await).map(drop).map_err(|err| err.hiding(token))
    }

    /// Lifts the message rate limits of an account (lifeboat's own, so mass
    /// DMs are not throttled).
    pub async fn override_rate_limit(&self, user_id: &str) -> Result<(), Error> {
        let path = format!("/_synapse/admin/v1/users/{}/override_ratelimit", urlencode(user_id));
        let body = json!({"messages_per_second": 0, "burst_count": 0});
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// Registers an account through `/_synapse/admin/v1/register` with the
    /// shared secret from homeserver.yaml. Works with registration closed and
    /// without any token, which is what is left after a database wipe.
    pub async fn register_with_shared_secret(
        &self,
        shared_secret: &SecretString,
        localpart: &str,
        password: &SecretString,
        admin: bool,
    ) -> Result<Registered, SharedSecretError> {
        let nonce: Nonce = self.get_json("/_synapse/admin/v1/register", &[], false).await?;
        let mac = registration_mac(shared_secret, &nonce.nonce, localpart, password, admin);
        let body = json!({
            "nonce": nonce.nonce,
            "username": localpart,
            "password": password.expose_secret(),
            "admin": admin,
            "mac": mac,
        });
        // Not retried as a whole request: the nonce is single use.
        let registered = self
            .without_retries()
            .request_json::<Registered>(Method::POST, "/_synapse/admin/v1/register", &[], Some(&body), false)
            .await;
        match registered {
            Ok(registered) => Ok(registered),
            Err(Error::Rejected { errcode, .. }) if errcode == "M_USER_IN_USE" => Err(SharedSecretError::UserInUse),
            Err(Error::Forbidden { .. }) => Err(SharedSecretError::WrongSecret),
            Err(err) => Err(err.into()),
        }
    }

    /// Logs in with a password; `None` when Synapse refuses it. On `device`
    /// when named (it keeps its keys), else on a new device.
    pub async fn login_with_password(
        &self,
        localpart: &str,
        password: &SecretString,
        device: Option<&str>,
    ) -> Result<Option<Registered>, Error> {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password.expose_secret(),
            "initial_device_display_name": "lifeboat",
        });
        if let Some(device) = device {
            body["device_id"] = json!(device);
        }
        let login = self
            .without_retries()
            .request_json(Method::POST, "/_matrix/client/v3/login", &[], Some(&body), false)
            .await;
        or_none(login, |err| matches!(err, Error::Forbidden { .. }))
    }

    pub(super) fn without_retries(&self) -> SynapseClient {
        SynapseClient { retries: 0, ..self.clone() }
    }

    /// For a request sent once, whose 429 (nothing done) may be sent again.
    pub(super) fn retrying_only_rate_limits(&self) -> SynapseClient {
        SynapseClient { only_rate_limits_retried: true, ..self.clone() }
    }
}

/// Lowercase hex HMAC-SHA1 over `nonce\0user\0password\0admin|notadmin`.
fn registration_mac(secret: &SecretString, nonce: &str, user: &str, password: &SecretString, admin: bool) -> String {
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(nonce.as_bytes());
    for part in [user, password.expose_secret(), if admin { "admin" } else { "notadmin" }] {
        mac.update(b"\0");
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_mac_matches_synapses_test_vector() {
        let mac = registration_mac(
            &SecretString::from("s3cr3t"),
            "abcdef",
            "companion-bot",
            &SecretString::from("hunter2"),
            true,
        );
        assert_eq!(mac, "be95cfacd2eaf2e4e3e95aa018afaafc834f7bbf");
    }

    #[test]
    fn a_registration_token_printed_for_debugging_hides_the_token() {
        let token = RegistrationToken { token: "SECRET".to_owned(), pending: 0, completed: 1, expiry_time: Some(5) };
        let printed = format!("{token:?}");
        assert!(printed.contains("completed: 1") && !printed.contains("SECRET"), "{printed}");
    }
}
