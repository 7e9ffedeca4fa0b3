//! Making and handing over accounts: what holding a lost ID needs.
//!
//! `PUT /_synapse/admin/v2/users/<id>` creates or modifies. With an empty
//! body it answers 201 when it created the account and 200, changing
//! nothing, when the ID existed: the only create-only call Synapse has, and
//! the one lifeboat uses, so it never changes an account it did not create.

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{Error, SynapseClient, UserDetails, found, or_none, urlencode, user_path};

/// What a create-only `PUT {}` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// lifeboat created the account (201), at this time (ms, whole seconds).
    Created { created_at_ms: Option<i64> },
    /// The ID exists already (200); nothing was changed.
    Existed,
}

#[derive(Deserialize)]
struct Devices {
    #[serde(default)]
    total: i64,
    #[serde(default)]
    devices: Vec<Device>,
}

/// One of an account's devices, as the admin API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    pub device_id: String,
    /// When it was last used (ms); none if never.
    #[serde(default)]
    pub last_seen_ts: Option<i64>,
}

impl SynapseClient {
    /// Creates the account `user_id` if the ID is free, with no password
    /// and no device. Sent once, never retried: a retry of a create that
    /// did happen would answer 200 and look like someone else's account.
    pub async fn create_account_if_free(&self, user_id: &str) -> Result<Creation, Error> {
        // The answer is the account as `GET` shows it ([`Self::user_details`]).
        let (status, created): (StatusCode, UserDetails) = self
            .without_retries()
            .request_json_status(Method::PUT, &user_path(user_id), &[], Some(&json!({})), true)
            .await?;
        Ok(match status {
            StatusCode::CREATED => Creation::Created { created_at_ms: created.created_at_ms() },
            _ => Creation::Existed,
        })
    }

    /// Locks an account lifeboat created and gives it its person's emails
    /// (Synapse ignores `locked` on creation, hence a second call; the
    /// display name follows later, [`Self::set_display_name`]). Idempotent.
    pub async fn lock_held_account(&self, user_id: &str, emails: &[crate::email::EmailAddress]) -> Result<(), Error> {
        let body = json!({"locked": true, "threepids": email_threepids(emails)});
        self.call(Method::PUT, &user_path(user_id), Some(&body)).await
    }

    /// The account that has `address` as an email threepid now, if any
    /// (Synapse keeps one account per address).
    pub async fn user_with_email(&self, address: &crate::email::EmailAddress) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Owner {
            user_id: String,
        }
        let path = format!("/_synapse/admin/v1/threepid/email/users/{}", urlencode(address.as_str()));
        Ok(found(self.get_json::<Owner>(&path, &[], true).await)?.map(|owner| owner.user_id))
    }

    /// Gives an account lifeboat holds its person's display name. On its
    /// own because it is most of what a hold costs Synapse (its user
    /// directory): holds restore names once every lost ID is safe.
    pub async fn set_display_name(&self, user_id: &str, name: &str) -> Result<(), Error> {
        let body = json!({"displayname": name});
        self.call(Method::PUT, &user_path(user_id), Some(&body)).await
    }

    /// Hands an account to its person: unlocks it, sets their password
    /// (logging out every device), gives back the server-admin flag it had
    /// before the loss and, when given, a display name not restored yet,
    /// in one call. Its emails become the person's, and no single sign-on
    /// identity stays tied to it: whoever held the ID before (a stranger
    /// who registered it first) keeps no way to reset the password or log
    /// in. The password is sent only in the body, never logged.
    pub async fn hand_over_account(
        &self,
        user_id: &str,
        password: &SecretString,
        admin: bool,
        display_name: Option<&str>,
        emails: &[crate::email::EmailAddress],
    ) -> Result<(), Error> {
        let mut body = json!({
            "locked": false,
            "password": password.expose_secret(),
            "logout_devices": true,
            "admin": admin,
            "threepids": email_threepids(emails),
            "external_ids": [],
        });
        if let Some(name) = display_name {
            body["displayname"] = json!(name);
        }
        self.call(Method::PUT, &user_path(user_id), Some(&body)).await
    }

    /// Deletes every device an account has left. Handing one over logs out
    /// all but the requester's device ID, which is lifeboat's own and
    /// public: a stranger who logged in to the ID with it keeps a device
    /// (and its keys) there otherwise.
    pub async fn delete_every_device(&self, user_id: &str) -> Result<(), Error> {
        let ids: Vec<String> = self.devices(user_id).await?.into_iter().map(|device| device.device_id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let path = format!("/_synapse/admin/v2/users/{}/delete_devices", urlencode(user_id));
        self.call(Method::POST, &path, Some(&json!({ "devices": ids }))).await
    }

    /// The account's devices.
    pub async fn devices(&self, user_id: &str) -> Result<Vec<Device>, Error> {
        let path = format!("{}/devices", user_path(user_id));
        let devices: Devices = self.get_json(&path, &[], true).await?;
        Ok(devices.devices)
    }

    /// Deactivates an account for good (Synapse cannot delete one): its ID
    /// can never be registered again.
    pub async fn deactivate_account(&self, user_id: &str) -> Result<(), Error> {
        let path = format!("/_synapse/admin/v1/deactivate/{}", urlencode(user_id));
        self.call(Method::POST, &path, Some(&json!({"erase": false}))).await
    }

    /// How many devices an account has. One lifeboat created has none
    /// until someone logs in, which a locked account cannot.
    pub async fn device_count(&self, user_id: &str) -> Result<i64, Error> {
        let path = format!("{}/devices", user_path(user_id));
        let devices: Devices = self.get_json(&path, &[], true).await?;
        Ok(devices.total)
    }

    /// Is lifeboat allowed to create and lock accounts? A create-only
    /// `PUT {}` on an account that exists (its own) must answer 200 and
    /// changes nothing; under Matrix Authentication Service it answers 403.
    pub async fn may_create_accounts(&self, existing_user_id: &str) -> Result<bool, Error> {
        let created = self.create_account_if_free(existing_user_id).await;
        Ok(or_none(created, |err| matches!(err, Error::Forbidden { .. }))?.is_some())
    }
}

fn email_threepids(emails: &[crate::email::EmailAddress]) -> Vec<serde_json::Value> {
    emails.iter().map(|address| json!({"medium": "email", "address": address.as_str()})).collect()
}
