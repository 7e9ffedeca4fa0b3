//! The one send loop every outgoing message goes through: claim a batch of
//! due rows, send them with bounded concurrency, record the outcomes in
//! groups as they finish. How a row leaves is the [`Channel`]'s business;
//! the retry policy is this module's, the same for every kind. Every kind
//! but the notices is queued rendered (`queue_email`) and sent by serve's
//! worker, woken at once ([`QUEUED`]), so a link, a code or an alert
//! outlives a relay outage and a restart.
//!
//! A crash can repeat at most the messages in flight: each holds a permit
//! until its outcome is written, and there are 3 × `concurrency` permits
//! (`concurrency` being sent, the rest waiting for, or in, a registry write).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::dm::{DmError, DmSender};
use crate::email::EmailAddress;
use crate::mail::{MailError, Mailer, OutgoingEmail};
use crate::messages::Rendered;
use crate::registry::{
    self, DeliveryChannel, DeliveryState, EXPIRED, MessageKind, NewMessage, OutboxWriter, Registry, StoredMessage,
    now_ms,
};
use crate::user_id::UserId;

/// Tries of one row within one run before it is left for later.
const ATTEMPTS_PER_RUN: u32 = 3;
/// A message that may have gone out (no answer after the whole of it was
/// sent) waits this long, so that a resend is unlikely to double it.
const LATER: Duration = Duration::from_secs(15 * 60);
/// A row left for a later run waits at least and at most this long;
/// serve's worker also sends it as soon as the channel answers again.
pub const PARKED_MIN: Duration = Duration::from_secs(60);
pub const PARKED_MAX: Duration = Duration::from_secs(5 * 60);
/// How long a run waits for retries that are due soon, rather than ending.
const WAIT_FOR_RETRIES: Duration = Duration::from_secs(30);
/// The most rows one claim takes: about a tenth of a second of sending at
/// the run's rate so far, never fewer than 4 × `concurrency`.
const LARGEST_CLAIM: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The channel itself does not work (SMTP login refused, the sender's
    /// Matrix token rejected, ...): retrying each message cannot help.
    #[error("sending stopped: {0}")]
    Channel(String),
}

/// How one attempt ended.
pub enum Outcome {
    Sent,
    /// Not sent, and not to be: the reason is recorded.
    Skip(&'static str),
    Retry(String),
    /// Retry, but only after `LATER`: it may have been delivered.
    RetryLater(String),
    Failed(String),
    /// A channel failure: the row goes back as due and the run ends with
    /// this error.
    Fatal(SendError),
}

/// Wakes serve's worker when a message is queued, so it leaves at once
/// rather than at the next poll.
pub static QUEUED: Notify = Notify::const_new();

/// Queues an email of `kind` to `to`, worth sending until `expires_at`
/// (ms), and wakes the worker; returns its outbox id. A way back in names
/// its incident and person (see [`NewMessage::user_id`]).
pub async fn queue_email(
    registry: &Registry,
    kind: MessageKind,
    to: &EmailAddress,
    message: &Rendered,
    way_back_for: Option<(i64, &UserId)>,
    expires_at: i64,
) -> Result<i64, registry::Error> {
    let id = registry.queue_message(&new_email(kind, to, message, way_back_for, expires_at)).await?;
    QUEUED.notify_one();
    Ok(id)
}

/// The queued emails, as the send loop sees them.
pub struct QueuedEmails<'a> {
    pub registry: &'a Registry,
    pub mailer: &'a Mailer,
    /// For the Message-ID.
    pub server_name: &'a str,
    /// Lost IDs are held ([`crate::holds::holds_wanted`]): while one is
    /// not, each claim holds back the mail with a token.
    pub holds_on: bool,
    /// What serve's worker asks before a claimed mail with a token goes:
    /// Synapse, whether it lost accounts since the last listing (which this
    /// layer cannot reach).
    pub token_check: Option<&'a dyn TokenMailCheck>,
}

/// Asked when a send run claims a mail with a token ([`QueuedEmails::token_check`]).
pub trait TokenMailCheck: Sync {
    /// Whether mail with a token may go now; if not, it held back the due
    /// ones in the registry.
    fn tokens_may_go(&self) -> futures::future::BoxFuture<'_, Result<bool, registry::Error>>;
}

impl Channel for QueuedEmails<'_> {
    type Row = StoredMessage;

    async fn claim(&self, limit: usize) -> Result<Vec<StoredMessage>, registry::Error> {
        if self.holds_on {
            crate::holds::hold_back_due_tokens(self.registry, None).await?;
        }
        let mut due = self.registry.due_messages(DeliveryChannel::Email, limit as i64).await?;
        // Asked of what was claimed: a mail that came due just now is asked about too.
        if let Some(check) = self.token_check
            && due.iter().any(|message| message.kind == MessageKind::Token)
            && !check.tokens_may_go().await?
        {
            due.retain(|message| message.kind != MessageKind::Token);
        }
        Ok(due)
    }

    fn scope(&self) -> (Option<i64>, DeliveryChannel) {
        (None, DeliveryChannel::Email)
    }

    fn key(message: &StoredMessage) -> (i64, i64) {
        (message.id, message.attempts)
    }

    async fn deliver(&self, message: &StoredMessage) -> Outcome {
        let text = match sendable_text(message) {
            Ok(text) => text,
            Err(outcome) => return outcome,
        };
        let Some(subject) = &message.subject else { return Outcome::Failed("its text is gone".to_owned()) };
        let to = match EmailAddress::parse(&message.address) {
            Ok(to) => to,
            Err(err) => return Outcome::Failed(err.to_string()),
        };
        let email = OutgoingEmail {
            to,
            subject: subject.clone(),
            text: text.to_owned(),
            html: message.body_html.clone().unwrap_or_default(),
            // The same for every attempt, so a repeat is recognisable; it
            // names only the outbox row, never a link or a code.
            message_id: format!("{}-{}@{}", message.kind, message.id, self.server_name),
            list_unsubscribe: None,
        };
        mail_outcome(self.mailer.send(&email).await)
    }
}

/// Sends a stored message as a DM from lifeboat's own account. Only ever
/// sent at once by whoever queued it (the worker DMs nothing but notices).
pub async fn deliver_dm(registry: &Registry, sender: &DmSender, message: &StoredMessage) -> Outcome {
    let text = match sendable_text(message) {
        Ok(text) => text,
        Err(outcome) => return outcome,
    };
    // Fixed per row: Synapse drops a repeat.
    let transaction = format!("lifeboat-{}-{}", message.kind, message.id);
    dm_outcome(sender.send(registry, &message.address, text, &transaction).await)
}

/// A stored message's text, or why it is not sent: it expired (its link
/// or code no longer works), its person may no longer be mailed it, or its
/// text is gone.
fn sendable_text(message: &StoredMessage) -> Result<&str, Outcome> {
    if message.expires_at.is_some_and(|expires_at| expires_at < now_ms()) {
        return Err(Outcome::Skip(EXPIRED));
    }
    if let Some(reason) = message.withdrawn() {
        return Err(Outcome::Skip(reason));
    }
    message.body_text.as_deref().ok_or_else(|| Outcome::Failed("its text is gone".to_owned()))
}

/// The outbox row of a DM of `kind` to `to`, its Markdown `text`.
pub fn new_dm<'a>(kind: MessageKind, to: &'a str, text: &'a str, expires_at: i64) -> NewMessage<'a> {
    NewMessage {
        kind,
        channel: DeliveryChannel::Matrix,
        to,
        subject: "",
        text,
        html: "",
        incident_id: None,
        user_id: None,
        expires_at,
        due_at: now_ms(),
    }
}

/// The outbox row of an email, due now.
pub fn new_email<'a>(
    kind: MessageKind,
    to: &'a EmailAddress,
    message: &'a Rendered,
    way_back_for: Option<(i64, &'a UserId)>,
    expires_at: i64,
) -> NewMessage<'a> {
    NewMessage {
        kind,
        channel: DeliveryChannel::Email,
        to: to.as_str(),
        subject: &message.subject,
        text: &message.text,
        html: &message.html,
        incident_id: way_back_for.map(|(incident_id, _)| incident_id),
        user_id: way_back_for.map(|(_, user_id)| user_id.as_str()),
        expires_at,
        due_at: now_ms(),
    }
}

/// Queues a message and sends it at once, for a caller that must know
/// whether it went (`drill`, the web page's DMed code); the outcome is
/// recorded, and a failure of any kind is final. It is due only once it
/// expired, when the worker skips it (`Registry::skip_expired_messages`),
/// so nobody else sends it. Returns why it was not sent, if it was not.
pub async fn send_at_once<Fut: Future<Output = Outcome>>(
    registry: &Registry,
    row: NewMessage<'_>,
    deliver: impl FnOnce(StoredMessage) -> Fut,
) -> Result<Result<(), String>, SendError> {
    let id = registry.queue_message(&NewMessage { due_at: row.expires_at, ..row }).await?;
    let Some(stored) = registry.pending_message(id).await? else {
        return Ok(Err("it was no longer waiting to be sent".to_owned()));
    };
    let key = (stored.id, stored.attempts);
    let record = match to_record(key, deliver(stored).await, &mut HashMap::new(), &mut None) {
        // Its caller has said it failed: a later send (of a drill, of a
        // code whose link was never made) would come unasked, or twice.
        Record::Ended { id, state: DeliveryState::Pending, reason, .. } => {
            Record::Ended { id, state: DeliveryState::Failed, reason, due_at: None, not_before: None }
        }
        record => record,
    };
    // Every outcome but a send is recorded with its reason.
    let sent = match &record {
        Record::Sent(_) => Ok(()),
        Record::Ended { reason, .. } => Err(reason.clone()),
    };
    record_surely(registry, &mut None, vec![record]).await?;
    Ok(sent)
}

/// The outcome of handing one email to the relay.
pub fn mail_outcome(sent: Result<(), MailError>) -> Outcome {
    match sent {
        Ok(()) => Outcome::Sent,
        Err(MailError::Transient(reason)) => Outcome::Retry(reason),
        // Maybe delivered already: not again soon.
        Err(MailError::Uncertain(reason)) => Outcome::RetryLater(reason),
        Err(MailError::Config(reason) | MailError::Refusing(reason)) => Outcome::Fatal(SendError::Channel(reason)),
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

/// The outcome of one Matrix DM.
pub fn dm_outcome(sent: Result<(), DmError>) -> Outcome {
    match sent {
        Ok(()) => Outcome::Sent,
        Err(DmError::Transient(reason)) => Outcome::Retry(reason),
        Err(DmError::Sender(reason)) => Outcome::Fatal(SendError::Channel(reason)),
        Err(DmError::Permanent(reason)) => Outcome::Failed(reason),
        Err(busy @ DmError::StoreBusy { .. }) => Outcome::Retry(busy.to_string()),
    }
}

/// Where rows come from and how each one leaves.
pub trait Channel: Sync {
    type Row: Send + Sync;
    /// Up to `limit` due rows, the longest due first. Only reads: a row
    /// stays pending until its outcome is recorded.
    fn claim(&self, limit: usize) -> impl Future<Output = Result<Vec<Self::Row>, registry::Error>> + Send;
    /// The row's id and the attempts recorded before this attempt.
    fn key(row: &Self::Row) -> (i64, i64);
    fn deliver(&self, row: &Self::Row) -> impl Future<Output = Outcome> + Send;
    /// Whose pending rows it sends, and by what: an incident's notices, or
    /// (`None`) the queued messages of every other kind.
    fn scope(&self) -> (Option<i64>, DeliveryChannel);
}

/// Hook for a progress display and for winding down.
pub trait Progress: Send + Sync {
    /// `finished` more rows ended (sent, skipped or failed).
    fn recorded(&self, _finished: u64) {}
    /// True once the run should wind down (serve is shutting down): sends in
    /// flight finish and are recorded, the rest stay pending.
    fn stopping(&self) -> bool {
        false
    }
}

/// Sends the channel's due rows until none is due (or only rows due more
/// than `WAIT_FOR_RETRIES` from now).
pub async fn send_until_done<C: Channel>(
    registry: &Registry,
    channel: &C,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<(), SendError> {
    let concurrency = concurrency.max(1);
    let mut run = Run {
        concurrency,
        tries: HashMap::new(),
        fatal: None,
        stop: AtomicBool::new(false),
        writer: Some(registry.outbox_writer().await?),
        registry: registry.clone(),
    };
    let (incident_id, delivery_channel) = channel.scope();
    let started = Instant::now();
    let mut recorded = 0u64;
    while !run.stop.load(Ordering::Relaxed) && !progress.stopping() {
        let batch = channel.claim(claim_size(concurrency, recorded, started.elapsed())).await?;
        if batch.is_empty() {
            match registry.next_pending_at(incident_id, delivery_channel).await? {
                Some(next) if next - now_ms() <= WAIT_FOR_RETRIES.as_millis() as i64 => {
                    // In slices, so that a shutdown does not wait for it.
                    while now_ms() < next && !progress.stopping() {
                        tokio::time::sleep(Duration::from_millis((next - now_ms()).clamp(10, 250) as u64)).await;
                    }
                    continue;
                }
                _ => break,
            }
        }
        recorded += run.send_batch(channel, batch, progress).await?;
    }
    // The channel stopped (a refused login, a spent quota): every row due
    // would fail alike, not only those under way, and each would bring
    // serve's worker back. Unless this run was told to stop (or lost its
    // lease to another process, whose rows they are then).
    if let Some(SendError::Channel(why)) = &run.fatal
        && !progress.stopping()
    {
        registry.defer_due(incident_id, delivery_channel, now_ms() + PARKED_MAX.as_millis() as i64, why).await?;
    }
    run.fatal.map_or(Ok(()), Err)
}

struct Run {
    concurrency: usize,
    /// Attempts per row in this run.
    tries: HashMap<i64, u32>,
    fatal: Option<SendError>,
    /// Set by a fatal outcome: no new sends.
    stop: AtomicBool,
    /// `None` after a write failed: a new connection is taken for the next.
    writer: Option<OutboxWriter>,
    registry: Registry,
}

/// A finished attempt, holding its permit until it is recorded.
type Finished = ((i64, i64), Outcome, OwnedSemaphorePermit);

impl Run {
    /// Sends one batch and returns how many rows ended. Each write takes
    /// every outcome finished meanwhile (up to 2 × `concurrency`), so a slow
    /// registry makes fewer, larger writes.
    async fn send_batch<C: Channel>(
        &mut self,
        channel: &C,
        batch: Vec<C::Row>,
        progress: &dyn Progress,
    ) -> Result<u64, SendError> {
        let concurrency = self.concurrency;
        let permits = Arc::new(Semaphore::new(3 * concurrency));
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
        let stop = &self.stop;
        let sending = futures::stream::iter(batch)
            .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed) && !progress.stopping()))
            .then(|row| {
                let permits = permits.clone();
                async move { permits.acquire_owned().await.ok().map(|permit| (row, permit)) }
            })
            // The registry failed: the permits were closed.
            .take_while(|claimed| std::future::ready(claimed.is_some()))
            .map(|claimed| async move {
                let (row, permit) = claimed.expect("taken while some");
                let outcome = channel.deliver(&row).await;
                if matches!(outcome, Outcome::Fatal(_)) {
                    stop.store(true, Ordering::Relaxed);
                }
                (C::key(&row), outcome, permit)
            })
            .buffer_unordered(concurrency)
            // Moved in: the channel closes when the last send is handed on.
            .for_each(move |finished| {
                let _ = finished_tx.send(finished);
                std::future::ready(())
            });
        let tries = &mut self.tries;
        let fatal = &mut self.fatal;
        let (writer, registry) = (&mut self.writer, &self.registry);
        let recording = async {
            let mut ended = 0u64;
            while let Some(first) = finished_rx.recv().await {
                let mut group = vec![first];
                while group.len() < 2 * concurrency
                    && let Ok(more) = finished_rx.try_recv()
                {
                    group.push(more);
                }
                // The permits are held until the outcomes are written.
                let (records, held): (Vec<Record>, Vec<_>) = group
                    .into_iter()
                    .map(|(key, outcome, permit)| (to_record(key, outcome, tries, fatal), permit))
                    .unzip();
                match record_surely(registry, writer, records).await {
                    Ok(finished) => {
                        ended += finished;
                        progress.recorded(finished);
                    }
                    Err(err) => {
                        // If the registry fails after sends for good, a rerun
                        // repeats the ones not recorded (within the permits).
                        permits.close();
                        return Err(err);
                    }
                }
                drop(held);
            }
            Ok(ended)
        };
        let ((), ended) = tokio::join!(sending, recording);
        Ok(ended?)
    }
}

/// The record of one outcome under the one retry policy: a few quick
/// retries within the run, then parked for a later one.
fn to_record(
    (id, attempts_before): (i64, i64),
    outcome: Outcome,
    tries: &mut HashMap<i64, u32>,
    fatal: &mut Option<SendError>,
) -> Record {
    let ended = |state, reason, due_at| Record::Ended { id, state, reason, due_at, not_before: None };
    match outcome {
        Outcome::Sent => Record::Sent(id),
        Outcome::Skip(reason) => ended(DeliveryState::Skipped, reason.to_owned(), None),
        Outcome::Failed(reason) => ended(DeliveryState::Failed, reason, None),
        Outcome::Retry(reason) => {
            let count = tries.entry(id).or_default();
            *count += 1;
            let wait = if *count < ATTEMPTS_PER_RUN {
                Duration::from_secs(1 << (*count - 1).min(4))
            } else {
                // Tries recorded before this one, and this one: whole runs.
                parked_for((attempts_before + 1) / i64::from(ATTEMPTS_PER_RUN))
            };
            tracing::warn!(delivery = id, error = %reason, "message will be retried");
            ended(DeliveryState::Pending, reason, Some(now_ms() + wait.as_millis() as i64))
        }
        Outcome::RetryLater(reason) => {
            tracing::warn!(delivery = id, error = %reason, "message will be retried later");
            let later = now_ms() + LATER.as_millis() as i64;
            Record::Ended { id, state: DeliveryState::Pending, reason, due_at: Some(later), not_before: Some(later) }
        }
        Outcome::Fatal(err) => {
            // Put back as due: the channel, not the message, failed, and
            // `send_until_done` parks every due row of it once the run ends.
            let record = ended(DeliveryState::Pending, err.to_string(), Some(now_ms()));
            fatal.get_or_insert(err);
            record
        }
    }
}

/// How long a row that failed through `runs` runs waits for a later one:
/// doubling from a minute up to five, so a short outage costs minutes, not
/// a quarter of an hour.
fn parked_for(runs: i64) -> Duration {
    (PARKED_MIN * (1u32 << (runs - 1).clamp(0, 8))).min(PARKED_MAX)
}

/// How many rows to claim at once: enough for about a tenth of a second at
/// the rate of this run so far, so a fast channel claims rarely and a slow
/// one does not hold rows it read long before sending.
fn claim_size(concurrency: usize, recorded: u64, elapsed: Duration) -> usize {
    let smallest = concurrency * 4;
    let per_tenth_second = (recorded as f64 / elapsed.as_secs_f64().max(0.001) / 10.0) as usize;
    per_tenth_second.clamp(smallest, LARGEST_CLAIM.max(smallest))
}

/// The end of one attempt, as the registry keeps it.
enum Record {
    Sent(i64),
    /// Skipped, failed, or pending again and due at `due_at` (ms), and why.
    Ended {
        id: i64,
        state: DeliveryState,
        reason: String,
        due_at: Option<i64>,
        /// A message that may have gone out: not sent again before this,
        /// whoever asks.
        not_before: Option<i64>,
    },
}

/// How long outcomes of sends already made are tried again to be written
/// (each try may itself wait out the registry's busy or connect timeout): a
/// registry busy (SQLite's lock held by a long write) or reconnecting
/// (PostgreSQL restarted) for a while must not have a rerun send them again.
const RECORD_FOR: Duration = Duration::from_secs(60);

/// Writes `records`, each once, and returns how many rows they ended. While
/// the registry fails, it tries again on a new connection, the rest only,
/// starting tries for [`RECORD_FOR`].
async fn record_surely(
    registry: &Registry,
    writer: &mut Option<OutboxWriter>,
    mut records: Vec<Record>,
) -> Result<u64, registry::Error> {
    let mut finished = 0;
    let give_up_at = Instant::now() + RECORD_FOR;
    let mut wait = Duration::from_millis(250);
    loop {
        let written = async {
            let outbox = match writer {
                Some(outbox) => outbox,
                None => writer.insert(registry.outbox_writer().await?),
            };
            record(outbox, &mut records, &mut finished).await
        };
        let Err(err) = written.await else { return Ok(finished) };
        *writer = None;
        if Instant::now() + wait > give_up_at {
            return Err(err);
        }
        tracing::warn!(error = %err, "outcomes of sends not written yet; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// Writes a group of outcomes: every sent one in one statement, the rarer
/// others one by one, taking each written out of `records` and counting the
/// rows it ended (sent, skipped or failed) in `finished`.
async fn record(
    outbox: &mut OutboxWriter,
    records: &mut Vec<Record>,
    finished: &mut u64,
) -> Result<(), registry::Error> {
    let sent: Vec<i64> =
        records.iter().filter_map(|record| if let Record::Sent(id) = record { Some(*id) } else { None }).collect();
    outbox.mark_sent(&sent).await?;
    records.retain(|record| !matches!(record, Record::Sent(_)));
    *finished += sent.len() as u64;
    while let Some(record) = records.pop() {
        let Record::Ended { id, state, reason, due_at, not_before } = &record else { continue };
        if let Err(err) = outbox.mark_ended(*id, *state, reason, *due_at, *not_before).await {
            records.push(record);
            return Err(err);
        }
        *finished += u64::from(*state != DeliveryState::Pending);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_that_keeps_failing_waits_longer_each_time_but_never_over_five_minutes() {
        let minutes = |runs| parked_for(runs).as_secs() / 60;
        assert_eq!([1, 2, 3, 4, 40].map(minutes), [1, 2, 4, 5, 5]);
        assert_eq!(parked_for(0), PARKED_MIN);
    }

    #[test]
    fn a_claim_is_a_tenth_of_a_second_of_sending_within_its_bounds() {
        assert_eq!(claim_size(8, 0, Duration::ZERO), 32, "at the start: four per connection");
        assert_eq!(claim_size(8, 2_000, Duration::from_secs(1)), 200);
        assert_eq!(claim_size(8, 100_000, Duration::from_secs(1)), LARGEST_CLAIM);
    }
}
