//! Notices by Matrix DM from lifeboat's service account (matrix-sdk).
//!
//! One unencrypted DM room per person, remembered in the registry so a rerun
//! never opens a second one; notices go unencrypted because a person who
//! registers again has no device yet to decrypt them. Each message is sent
//! with a transaction ID fixed per delivery, so a resend after a crash is
//! deduplicated by Synapse. 429s are waited out inside matrix-sdk.

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, OwnedUserId};
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// Worth retrying: Synapse down, 5xx, rate limited past the SDK's patience.
    #[error("{0}")]
    Transient(String),
    /// Will not work by retrying (bad user ID, invite refused, ...).
    #[error("{0}")]
    Permanent(String),
    /// The sender itself cannot send (its token was rejected).
    #[error("lifeboat's own account cannot send: {0}")]
    Sender(String),
}

/// A logged-in service account that sends notice DMs.
pub struct DmSender {
    client: Client,
}

impl DmSender {
    /// Restores a session from an access token (no new device is made).
    pub async fn connect(
        homeserver: &Url,
        user_id: &str,
        access_token: &SecretString,
        device_id: &str,
    ) -> Result<DmSender, DmError> {
        let user_id: OwnedUserId = user_id
            .try_into()
            .map_err(|err| DmError::Permanent(format!("`{user_id}` is not a Matrix user ID: {err}")))?;
        let client = Client::builder()
            .homeserver_url(homeserver.as_str())
            .build()
            .await
            .map_err(|err| DmError::Transient(format!("cannot set up the Matrix client: {err}")))?;
        client
            .restore_session(MatrixSession {
                meta: SessionMeta { user_id, device_id: device_id.into() },
                tokens: SessionTokens { access_token: access_token.expose_secret().to_owned(), refresh_token: None },
            })
            .await
            .map_err(|err| DmError::Transient(format!("cannot restore the service account's session: {err}")))?;
        Ok(DmSender { client })
    }

    /// Sends `markdown` to `recipient` in their DM room (made on first use).
    /// `transaction_id` must be the same for every attempt of one delivery.
    pub async fn send(
        &self,
        registry: &Registry,
        recipient: &str,
        markdown: &str,
        transaction_id: &str,
    ) -> Result<(), DmError> {
        let content = RoomMessageEventContent::text_markdown(markdown);
        let stored = registry.dm_room(recipient).await.map_err(|err| DmError::Transient(err.to_string()))?;
        if let Some(room_id) = stored.and_then(|room| OwnedRoomId::try_from(room).ok()) {
            match self.send_in(room_id, &content, transaction_id).await {
                // The room is gone (a wiped homeserver) or lifeboat is no
                // longer in it: make a new one below.
                Err(err) if room_is_gone(&err) => {}
                other => return other.map_err(classify),
            }
        }
        let room_id = self.create_dm_room(registry, recipient).await?;
        self.send_in(room_id, &content, transaction_id).await.map_err(classify)
    }

    async fn send_in(
        &self,
        room_id: OwnedRoomId,
        content: &RoomMessageEventContent,
        transaction_id: &str,
    ) -> Result<(), matrix_sdk::Error> {
        let txn: OwnedTransactionId = transaction_id.into();
        let request =
            send_message_event::v3::Request::new(room_id, txn, content).map_err(matrix_sdk::Error::SerdeJson)?;
        self.client.send(request).await?;
        Ok(())
    }

    async fn create_dm_room(&self, registry: &Registry, recipient: &str) -> Result<OwnedRoomId, DmError> {
        let user: OwnedUserId = recipient
            .try_into()
            .map_err(|err| DmError::Permanent(format!("`{recipient}` is not a Matrix user ID: {err}")))?;
        let mut request = CreateRoomRequest::new();
        request.invite = vec![user.clone()];
        request.is_direct = true;
        request.preset = Some(RoomPreset::TrustedPrivateChat);
        // The plain request: `Client::create_room` waits for a sync that a
        // one-shot sender never runs.
        let room_id = self.client.send(request).await.map_err(|err| classify(err.into()))?.room_id;
        registry.store_dm_room(recipient, room_id.as_str()).await.map_err(|err| DmError::Transient(err.to_string()))?;
        if let Err(err) = self.mark_direct(&user, &room_id).await {
            // The DM works without it; clients just list it as a room.
            tracing::warn!(error = %err, "could not record the DM in m.direct");
        }
        Ok(room_id)
    }

    /// Adds the room to the sender's `m.direct` account data, so clients
    /// show it as a DM (the inviter's side must do this itself).
    async fn mark_direct(&self, user: &OwnedUserId, room_id: &OwnedRoomId) -> Result<(), matrix_sdk::Error> {
        use matrix_sdk::ruma::api::client::config::{get_global_account_data, set_global_account_data};
        use matrix_sdk::ruma::events::GlobalAccountDataEventType;
        use matrix_sdk::ruma::serde::Raw;

        let me = self.client.user_id().expect("a restored session has a user").to_owned();
        let current = self
            .client
            .send(get_global_account_data::v3::Request::new(me.clone(), GlobalAccountDataEventType::Direct))
            .await;
        let mut direct: serde_json::Map<String, serde_json::Value> = match current {
            Ok(response) => serde_json::from_str(response.account_data.json().get()).unwrap_or_default(),
            Err(_) => serde_json::Map::new(),
        };
        let rooms = direct.entry(user.to_string()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(rooms) = rooms.as_array_mut() {
            rooms.push(serde_json::Value::String(room_id.to_string()));
        }
        let raw = serde_json::value::to_raw_value(&direct).map_err(matrix_sdk::Error::SerdeJson)?;
        self.client
            .send(set_global_account_data::v3::Request::new_raw(
                me,
                GlobalAccountDataEventType::Direct,
                Raw::from_json(raw),
            ))
            .await?;
        Ok(())
    }
}

fn room_is_gone(err: &matrix_sdk::Error) -> bool {
    use matrix_sdk::ruma::api::error::ErrorKind;
    matches!(err.client_api_error_kind(), Some(ErrorKind::Forbidden | ErrorKind::NotFound | ErrorKind::Unknown))
}

fn classify(err: matrix_sdk::Error) -> DmError {
    use matrix_sdk::ruma::api::error::ErrorKind;
    match err.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(_)) => DmError::Transient(format!("rate limited: {err}")),
        Some(ErrorKind::UnknownToken(_)) | Some(ErrorKind::MissingToken) => DmError::Sender(err.to_string()),
        Some(_) => DmError::Permanent(err.to_string()),
        // Network failures and 5xx carry no Matrix error code.
        None => DmError::Transient(err.to_string()),
    }
}
