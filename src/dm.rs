//! Notices by Matrix DM from lifeboat's service account (matrix-sdk).
//!
//! One DM room per person, remembered in the registry so a rerun never opens
//! a second one. Unencrypted by default, because a person who registers
//! again has no device yet to decrypt a notice; encrypted when configured
//! (`bot.encrypted_notices`), with a crypto store per device under
//! `bot.store_path`. Each message is sent with a transaction ID fixed per
//! delivery, so a resend after a crash is deduplicated by Synapse. 429s are
//! waited out inside matrix-sdk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, OwnedUserId};
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::lease::{Held, Lease};
use crate::registry::Registry;
use crate::user_id::UserId;

/// Whom a DM goes to: the registry's ID and the SDK's, checked once.
type Recipient<'a> = (&'a UserId, OwnedUserId);

/// A Matrix message from Markdown whose `formatted_body` is sanitized HTML
/// (`notice::markdown_to_safe_html`): matrix-sdk's own Markdown passes raw
/// HTML through, so a hostile title or postmortem would reach clients as
/// markup. Every message lifeboat posts is made here. It mentions nobody,
/// said so explicitly: without `m.mentions` clients fall back to matching
/// the body, where a room name or an ID such as `@room:…` would ping
/// everyone in the room.
pub fn safe_message(markdown: &str) -> RoomMessageEventContent {
    RoomMessageEventContent::text_html(markdown, crate::notice::markdown_to_safe_html(markdown))
        .add_mentions(matrix_sdk::ruma::events::Mentions::new())
}

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
    /// Another lifeboat process has the device's crypto store open.
    #[error("device {device}'s crypto store is open in another lifeboat process ({holder}, until {until} at most)")]
    StoreBusy { device: String, holder: String, until: String },
}

/// The registry is lifeboat's own: failing to read or write it is passing.
impl From<crate::registry::Error> for DmError {
    fn from(err: crate::registry::Error) -> Self {
        DmError::Transient(err.to_string())
    }
}

/// A logged-in service account that sends notice DMs.
pub struct DmSender {
    client: Client,
    encrypted: bool,
    /// Set if the device's store lease is lost mid-run (see `Devices`).
    store_lost: Arc<AtomicBool>,
}

/// Where an encrypting sender keeps its keys.
pub struct CryptoStore {
    /// `bot.store_path`; the store itself goes in a folder per device.
    pub dir: PathBuf,
    pub passphrase: SecretString,
}

/// A matrix-sdk client in an existing session (no new device is made),
/// with the device's store when given: the bot's, its drill's and the
/// notice DMs' one way in.
pub async fn restored_client(login: &Login<'_>, store: Option<&CryptoStore>) -> Result<Client, DmError> {
    let Login { homeserver, user_id, access_token, device_id } = *login;
    let user_id: OwnedUserId =
        user_id.try_into().map_err(|err| DmError::Permanent(format!("`{user_id}` is not a Matrix user ID: {err}")))?;
    let mut builder = Client::builder().homeserver_url(homeserver.as_str());
    if let Some(store) = store {
        // A store belongs to one device: a recovered account is a new one.
        let dir = store.dir.join(device_id);
        std::fs::create_dir_all(&dir)
            .map_err(|err| DmError::Sender(format!("cannot create the store {}: {err}", dir.display())))?;
        builder = builder.sqlite_store(&dir, Some(store.passphrase.expose_secret()));
        tracing::info!(device = device_id, "opened the Matrix client and crypto store of a device");
    }
    let client =
        builder.build().await.map_err(|err| DmError::Transient(format!("cannot set up the Matrix client: {err}")))?;
    client
        .restore_session(MatrixSession {
            meta: SessionMeta { user_id, device_id: device_id.into() },
            tokens: SessionTokens { access_token: access_token.expose_secret().to_owned(), refresh_token: None },
        })
        .await
        .map_err(|err| DmError::Transient(format!("cannot restore the session of {device_id}: {err}")))?;
    Ok(client)
}

/// The matrix-sdk clients of one process, one per device and store. Two
/// clients on one crypto store would each keep an Olm account in memory and
/// overwrite each other's keys, so the bot, the web page's codes and `serve`'s
/// notices all take the device's client from here, and a store is open in one
/// process at a time (a registry lease, held while the client lives).
#[derive(Default)]
pub struct Devices {
    /// By device and whether it has a store; each locked while its client is
    /// made or synced, so a slow device holds up nobody else.
    slots: std::sync::Mutex<HashMap<(String, bool), Slot>>,
    /// `serve`'s: its leases say so, and its delivery worker sends the DMs left to it.
    serving: bool,
}

/// One device's client, made on first use.
type Slot = Arc<tokio::sync::Mutex<Option<Device>>>;

struct Device {
    client: Client,
    /// Up while the bot's sync loop keeps the client current.
    kept_in_sync: Arc<AtomicBool>,
    /// Puts the bot's handlers on each client of this device once the bot has
    /// used it, so no sync of it (a sender's too) passes over a command.
    bot: Option<AttachBot>,
    /// The store's lease; a client without a store needs none.
    lease: Option<Lease>,
}

/// Puts the bot's event handlers on a client.
pub type AttachBot = Arc<dyn Fn(&Client) + Send + Sync>;

/// A session to restore: who, with which token, on which device.
pub struct Login<'a> {
    pub homeserver: &'a Url,
    pub user_id: &'a str,
    pub access_token: &'a SecretString,
    pub device_id: &'a str,
}

/// The bot's hold on its device's client: the sync loop keeps the client
/// current until this is dropped.
pub struct Syncing {
    pub client: Client,
    kept_in_sync: Arc<AtomicBool>,
    store_lost: Arc<AtomicBool>,
}

impl Syncing {
    /// The device's store may be another process's now (this one's lease
    /// was lost): the client's keys in memory are not to be trusted.
    pub fn store_lost(&self) -> bool {
        self.store_lost.load(Ordering::SeqCst)
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        self.kept_in_sync.store(false, Ordering::SeqCst);
    }
}

/// Longest wait for a sender's first sync (matrix-sdk retries a failing
/// homeserver for up to 15 minutes by itself).
const FIRST_SYNC_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Events a sync brings per room. Synapse's default is ten: more messages
/// than that between two syncs (the bot paused, Synapse slow) and the older
/// ones, commands among them, would never reach the bot. Every sync of a
/// device the bot may use asks for this many, or one that runs between
/// two of the bot's moves its position past what the bot never read.
pub const EVENTS_PER_ROOM_AND_SYNC: u32 = 100;

/// `settings`, bringing up to [`EVENTS_PER_ROOM_AND_SYNC`] events a room,
/// and members lazily. Only rooms with news come in a sync from a position, so the larger limit
/// costs nothing while people write little.
pub fn up_to_enough_events(settings: matrix_sdk::config::SyncSettings) -> matrix_sdk::config::SyncSettings {
    use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
    settings.filter(Filter::FilterDefinition(sync_filter()))
}

fn sync_filter() -> matrix_sdk::ruma::api::client::filter::FilterDefinition {
    use matrix_sdk::ruma::api::client::filter::{FilterDefinition, LazyLoadOptions};
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(EVENTS_PER_ROOM_AND_SYNC.into());
    // A big room's members (lifeboat's own account rejoins public rooms
    // for people) are fetched when needed (an encrypted message, a DM or
    // audience check), not carried in every sync.
    filter.room.state.lazy_load_options = LazyLoadOptions::Enabled { include_redundant_members: false };
    filter
}

/// How `serve` signs the store leases it holds.
const SERVE_HOLDER: &str = "serve";

impl Devices {
    /// `serve`'s clients.
    pub fn serving() -> Devices {
        Devices { serving: true, ..Devices::default() }
    }

    /// A sender on the device's client, shared with whatever else uses it
    /// here (a session restored from an access token: no new device is
    /// made). An encrypting one is synced first (it uploads the device's
    /// keys and learns the rooms others made) unless the bot's sync loop
    /// keeps it current.
    pub async fn for_sending(
        &self,
        registry: &Registry,
        login: &Login<'_>,
        store: Option<&CryptoStore>,
    ) -> Result<DmSender, DmError> {
        let slot = self.slot(login.device_id, store.is_some());
        let mut slot = slot.lock().await;
        let device = self.ready(&mut slot, registry, login, store).await?;
        if store.is_some() && !device.kept_in_sync.load(Ordering::SeqCst) {
            let settings =
                up_to_enough_events(matrix_sdk::config::SyncSettings::default().timeout(std::time::Duration::ZERO));
            tokio::time::timeout(FIRST_SYNC_WITHIN, device.client.sync_once(settings))
                .await
                .map_err(|_| DmError::Transient("the homeserver did not answer a sync within a minute".into()))?
                .map_err(classify)?;
        }
        Ok(DmSender { client: device.client.clone(), encrypted: store.is_some(), store_lost: device.store_lost() })
    }

    /// The device's client for the bot's sync loop, with `attach_bot`'s
    /// handlers on it.
    pub async fn for_syncing(
        &self,
        registry: &Registry,
        login: &Login<'_>,
        store: &CryptoStore,
        attach_bot: &AttachBot,
    ) -> Result<Syncing, DmError> {
        let slot = self.slot(login.device_id, true);
        let mut slot = slot.lock().await;
        let device = self.ready(&mut slot, registry, login, Some(store)).await?;
        if device.bot.is_none() {
            attach_bot(&device.client);
            device.bot = Some(attach_bot.clone());
        }
        device.kept_in_sync.store(true, Ordering::SeqCst);
        let (kept_in_sync, store_lost) = (device.kept_in_sync.clone(), device.store_lost());
        Ok(Syncing { client: device.client.clone(), kept_in_sync, store_lost })
    }

    /// Drops a device whose token is dead (a wipe, a logout), giving back
    /// its store's lease.
    pub async fn forget(&self, device_id: &str) {
        let slots: Vec<_> = {
            let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            [true, false].into_iter().filter_map(|store| slots.remove(&(device_id.to_owned(), store))).collect()
        };
        for slot in slots {
            if let Some(lease) = slot.lock().await.take().and_then(|device| device.lease) {
                lease.release().await;
            }
        }
    }

    /// Gives back every store's lease (a CLI run ends).
    pub async fn close(&self) {
        let devices: Vec<String> = {
            let slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.keys().map(|(device, _)| device.clone()).collect()
        };
        for device in devices {
            self.forget(&device).await;
        }
    }

    fn slot(&self, device_id: &str, store: bool) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry((device_id.to_owned(), store)).or_default().clone()
    }

    /// The slot's client, made on first use, or anew when the token changed
    /// (unless the bot syncs the one there: it works) or another process took
    /// the store meanwhile (a new client reads it again, not stale keys).
    async fn ready<'s>(
        &self,
        slot: &'s mut Option<Device>,
        registry: &Registry,
        login: &Login<'_>,
        store: Option<&CryptoStore>,
    ) -> Result<&'s mut Device, DmError> {
        let token = login.access_token.expose_secret();
        let usable = |device: &Device| {
            !device.store_lost().load(Ordering::SeqCst)
                && (device.kept_in_sync.load(Ordering::SeqCst)
                    || device.client.access_token().as_deref() == Some(token))
        };
        if !slot.as_ref().is_some_and(usable) {
            let old = slot.take();
            let bot = old.as_ref().and_then(|old| old.bot.clone());
            // The lease is the device's, not the token's: a new client keeps
            // it, unless it was lost (then it is given back, if still ours).
            let kept = match old.and_then(|old| old.lease) {
                Some(lease) if lease.lost().load(Ordering::SeqCst) => {
                    lease.release().await;
                    None
                }
                kept => kept,
            };
            let lease = match (kept, store) {
                (Some(lease), _) => Some(lease),
                (None, Some(_)) => Some(self.store_lease(registry, login.device_id).await?),
                (None, None) => None,
            };
            match restored_client(login, store).await {
                Ok(client) => {
                    // The bot's handlers at once: a sender's sync may come first.
                    if let Some(attach_bot) = &bot {
                        attach_bot(&client);
                    }
                    *slot = Some(Device { client, kept_in_sync: Arc::default(), bot, lease })
                }
                Err(err) => {
                    if let Some(lease) = lease {
                        lease.release().await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(slot.as_mut().expect("filled above"))
    }

    /// The lease on a device's crypto store, or who holds it.
    async fn store_lease(&self, registry: &Registry, device: &str) -> Result<Lease, DmError> {
        let label = self.serving.then_some(SERVE_HOLDER);
        match Lease::take_as(registry, &format!("matrix-store:{device}"), label).await? {
            Ok(lease) => Ok(lease),
            Err(Held { holder, until }) => Err(DmError::StoreBusy { device: device.to_owned(), holder, until }),
        }
    }
}

impl Device {
    /// Set once the store's lease is lost (never for a client without one).
    fn store_lost(&self) -> Arc<AtomicBool> {
        self.lease.as_ref().map(Lease::lost).unwrap_or_default()
    }
}

/// Whether a store lease's holder is `serve`, whose delivery worker sends
/// what waits for the store.
pub fn held_by_serve(holder: &str) -> bool {
    holder.strip_suffix(SERVE_HOLDER).is_some_and(|rest| rest.ends_with(':'))
}

impl DmSender {
    /// Sends `markdown` to `recipient` in their DM room (made on first use).
    /// `transaction_id` must be the same for every attempt of one delivery.
    pub async fn send(
        &self,
        registry: &Registry,
        recipient: &str,
        markdown: &str,
        transaction_id: &str,
    ) -> Result<(), DmError> {
        if self.store_lost.load(Ordering::SeqCst) {
            return Err(DmError::Transient("another lifeboat process may have the device's crypto store now".into()));
        }
        let content = safe_message(markdown);
        // Checked once here: the outbox keeps every kind of address as text.
        let not_an_id = |err: String| DmError::Permanent(format!("`{recipient}` is not a Matrix user ID: {err}"));
        let user_id = UserId::parse(recipient).map_err(|err| not_an_id(err.to_string()))?;
        let user: OwnedUserId =
            recipient.try_into().map_err(|err: matrix_sdk::ruma::IdParseError| not_an_id(err.to_string()))?;
        let recipient = (&user_id, user);
        let stored = registry.dm_room(&user_id).await?.and_then(|room| OwnedRoomId::try_from(room).ok());
        if self.encrypted {
            return self.send_encrypted(registry, recipient, stored, content, transaction_id).await;
        }
        // A room gone (a wiped homeserver) or one lifeboat is no longer in:
        // a new one is made below. An invite refused is no such thing.
        if let Some(room_id) = stored
            && self.bring_back(&room_id, &recipient.1).await?.is_some()
        {
            match self.send_in(room_id, &content, transaction_id).await {
                Err(err) if room_is_gone(&err) => {}
                other => return other.map_err(classify),
            }
        }
        let room_id = self.create_dm_room(registry, recipient).await?;
        self.send_in(room_id, &content, transaction_id).await.map_err(classify)
    }

    /// Through the room object, so matrix-sdk encrypts for every device of
    /// the room's members.
    async fn send_encrypted(
        &self,
        registry: &Registry,
        (user_id, user): Recipient<'_>,
        stored: Option<OwnedRoomId>,
        content: RoomMessageEventContent,
        transaction_id: &str,
    ) -> Result<(), DmError> {
        let mut known = stored
            .and_then(|room_id| self.client.get_room(&room_id))
            .filter(|room| room.state() == matrix_sdk::RoomState::Joined);
        if let Some(room) = &known {
            match self.bring_back(&room.room_id().to_owned(), &user).await? {
                // The store still lists them as gone: the room key must be
                // shared with them too.
                Some(true) => room.mark_members_missing(),
                Some(false) => {}
                None => known = None,
            }
        }
        let room = match known {
            Some(room) => room,
            None => {
                let room_id = self.create_dm_room(registry, (user_id, user)).await?;
                let room = self.client.get_room(&room_id);
                room.ok_or_else(|| DmError::Transient(format!("the DM room {room_id} just made is not known here")))?
            }
        };
        let txn: OwnedTransactionId = transaction_id.into();
        room.send(content).with_transaction_id(txn).with_request_config(dm_requests()).await.map_err(classify)?;
        Ok(())
    }

    /// Makes sure `user` is in the stored DM room or invited to it, and
    /// invites them again if they left it or turned it down: Synapse takes
    /// a message in a room lifeboat is alone in, so the notice would be
    /// recorded as sent and never read. Whether it invited them; `None`
    /// when the room is gone or lifeboat is not in it.
    async fn bring_back(&self, room_id: &OwnedRoomId, user: &OwnedUserId) -> Result<Option<bool>, DmError> {
        use matrix_sdk::ruma::api::client::state::{get_state_event_for_key, send_state_event};
        use matrix_sdk::ruma::api::error::ErrorKind;
        use matrix_sdk::ruma::events::StateEventType;
        use matrix_sdk::ruma::events::room::member::{MembershipState, RoomMemberEventContent};
        let asked =
            get_state_event_for_key::v3::Request::new(room_id.clone(), StateEventType::RoomMember, user.to_string());
        let asked = self.client.send(asked).with_request_config(dm_requests()).await;
        let membership = match asked.map_err(matrix_sdk::Error::from) {
            Ok(found) => serde_json::from_str::<RoomMemberEventContent>(found.event_or_content.get())
                .ok()
                .map(|content| content.membership),
            // Never a member (an invite that failed when the room was made).
            Err(err) if matches!(err.client_api_error_kind(), Some(ErrorKind::NotFound)) => None,
            Err(err) if room_is_gone(&err) => return Ok(None),
            Err(err) => return Err(classify(err)),
        };
        if matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
            return Ok(Some(false));
        }
        // As a member event, so the invite still says it is a DM.
        let mut invite = RoomMemberEventContent::new(MembershipState::Invite);
        invite.is_direct = Some(true);
        let request = send_state_event::v3::Request::new(room_id.clone(), user, &invite)
            .map_err(|err| classify(matrix_sdk::Error::SerdeJson(err)))?;
        // Refused (their server will not have it): their failure, not the room's.
        let invited = self.client.send(request).with_request_config(dm_requests()).await;
        invited.map_err(|err| classify(err.into()))?;
        Ok(Some(true))
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
        self.client.send(request).with_request_config(dm_requests()).await?;
        Ok(())
    }

    async fn create_dm_room(
        &self,
        registry: &Registry,
        (user_id, user): Recipient<'_>,
    ) -> Result<OwnedRoomId, DmError> {
        // Made, kept, then the invite: an invite that fails (their server
        // is down) is tried again in this room, where one made with the
        // invite would be left behind and another made at every try.
        let mut request = CreateRoomRequest::new();
        request.is_direct = true;
        // Claim links and codes are sent here: only lifeboat may invite (the
        // private presets let any member), and the recipient, invited after
        // the room is made, holds no power to open it up either.
        request.preset = Some(RoomPreset::PrivateChat);
        let invite_only_by_lifeboat =
            serde_json::value::to_raw_value(&serde_json::json!({"invite": 50})).expect("a JSON object serialises");
        request.power_level_content_override = Some(matrix_sdk::ruma::serde::Raw::from_json(invite_only_by_lifeboat));
        let room_id = if self.encrypted {
            let encryption = RoomEncryptionEventContent::with_recommended_defaults();
            request.initial_state = vec![InitialStateEvent::with_empty_state_key(encryption).to_raw_any()];
            // Through the client, so the room is known to it (to encrypt in)
            // before any sync; it retries without end, hence the bound.
            let made = tokio::time::timeout(CREATE_ROOM_WITHIN, self.client.create_room(request)).await;
            let made = made
                .map_err(|_| DmError::Transient("the homeserver did not make a DM room within two minutes".into()))?;
            made.map_err(classify)?.room_id().to_owned()
        } else {
            let sent = self.client.send(request).with_request_config(dm_requests()).await;
            sent.map_err(|err| classify(err.into()))?.room_id
        };
        registry.store_dm_room(user_id, room_id.as_str()).await?;
        // The SDK serialises its m.direct read-modify-write per client.
        if let Err(err) = self.client.account().mark_as_dm(&room_id, std::slice::from_ref(&user)).await {
            // The DM works without it; clients just list it as a room.
            tracing::warn!(error = %err, "could not record the DM in m.direct");
        }
        if self.bring_back(&room_id, &user).await?.is_none() {
            return Err(DmError::Transient(format!("the DM room {room_id} just made is not there")));
        }
        Ok(room_id)
    }
}

/// How often matrix-sdk may retry one DM request by itself (by default it
/// never stops): an invite to a homeserver that is down fails with 502
/// after seconds, and retried for ever it would hold a notify run for good.
/// Three tries, each within the request timeout; what still fails goes
/// back to the outbox, which retries with its backoff.
fn dm_requests() -> matrix_sdk::config::RequestConfig {
    matrix_sdk::config::RequestConfig::short_retry()
}

/// How long an encrypted DM room may take to be made: three tries of a
/// request, as [`dm_requests`] allows the others.
const CREATE_ROOM_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

fn room_is_gone(err: &matrix_sdk::Error) -> bool {
    use matrix_sdk::ruma::api::error::ErrorKind;
    !is_server_error(err) && matches!(err.client_api_error_kind(), Some(ErrorKind::Forbidden | ErrorKind::NotFound))
}

fn classify(err: matrix_sdk::Error) -> DmError {
    use matrix_sdk::ruma::api::error::ErrorKind;
    // Another server's words, as Synapse passed them on: kept to one short
    // line, for the outbox, the log and the admin's terminal.
    let said = crate::plain_text::short_line(&err.to_string(), 300).into_owned();
    match err.client_api_error_kind() {
        // A 5xx is the server's trouble (its database down, say), whatever
        // code it carries (Synapse's is M_UNKNOWN): tried again later.
        _ if is_server_error(&err) => DmError::Transient(said),
        Some(ErrorKind::LimitExceeded(_)) => DmError::Transient(format!("rate limited: {said}")),
        Some(ErrorKind::UnknownToken(_)) | Some(ErrorKind::MissingToken) => DmError::Sender(said),
        Some(_) => DmError::Permanent(said),
        // Network failures carry no Matrix error code.
        None => DmError::Transient(said),
    }
}

fn is_server_error(err: &matrix_sdk::Error) -> bool {
    err.as_client_api_error().is_some_and(|api| api.status_code.is_server_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::ruma::api::error::{
        Error as ApiError, ErrorBody, ErrorKind, FromHttpResponseError, StandardErrorBody,
    };

    fn answered(status: u16, kind: ErrorKind) -> matrix_sdk::Error {
        let body = ErrorBody::Standard(StandardErrorBody::new(kind, "it went wrong".to_owned()));
        let api = ApiError::new(axum::http::StatusCode::from_u16(status).unwrap(), body);
        let response = FromHttpResponseError::Server(matrix_sdk::RumaApiError::MatrixError(api));
        matrix_sdk::Error::Http(Box::new(matrix_sdk::HttpError::Api(Box::new(response))))
    }

    #[test]
    fn a_sync_brings_enough_events_and_members_only_as_needed() {
        let filter = sync_filter();
        assert_eq!(filter.room.timeline.limit, Some(EVENTS_PER_ROOM_AND_SYNC.into()));
        assert!(!filter.room.state.lazy_load_options.is_disabled(), "members are loaded lazily");
    }

    #[test]
    fn a_server_error_with_a_matrix_code_is_tried_again_in_the_same_room() {
        let err = answered(500, ErrorKind::Unknown);
        assert!(!room_is_gone(&err));
        assert!(matches!(classify(err), DmError::Transient(_)));
    }

    #[test]
    fn a_refusal_is_permanent_and_a_forbidden_room_is_left_for_a_new_one() {
        let err = answered(403, ErrorKind::Forbidden);
        assert!(room_is_gone(&err));
        assert!(matches!(classify(err), DmError::Permanent(_)));
    }
}
