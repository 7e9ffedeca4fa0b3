//! Notices after an incident: plan the outbox, then send it by email and by
//! Matrix DM with bounded concurrency, marking each delivery the moment the
//! transport accepts it.
//!
//! Resumable: rerunning sends what was not sent and never what was. A
//! process killed mid-send can repeat at most the messages in flight at
//! that moment: those being sent (at most `concurrency`) and those sent but
//! not yet recorded (at most 2 × `concurrency` more: a group filling or
//! being written), 3 × `concurrency` in all, each with the same Message-ID.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use crate::dm::{DmError, DmSender};
use crate::email::EmailAddress;
use crate::holds::claim_link;
use crate::links::UnsubscribeLinks;
use crate::mail::{MailError, Mailer, OutgoingEmail};
use crate::notice::{NoticeContext, NoticeError, RenderedNotice, render_email_notice, render_notice};
use crate::registry::{
    self, AccountState, Delivery, DeliveryCounts, Incident, OutboxWriter, PlannedEmails, Registry, RoomFate, RoomState,
    may_come_back, now_ms,
};

/// Tries of one delivery within one run before it is left for later.
const ATTEMPTS_PER_RUN: u32 = 3;
/// A message that may have gone out (no answer after the whole of it was
/// sent) waits this long, so that a resend is unlikely to double it.
const LATER: Duration = Duration::from_secs(15 * 60);
/// A delivery left for a later run waits at least and at most this long;
/// serve's worker also sends it as soon as the channel answers again.
pub const PARKED_MIN: Duration = Duration::from_secs(60);
pub const PARKED_MAX: Duration = Duration::from_secs(5 * 60);

/// How long a delivery that failed `attempts` times in all waits for a
/// later run: doubling from a minute up to five, so a short outage costs
/// minutes, not a quarter of an hour.
fn parked_for(attempts: i64) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 16)).clamp(PARKED_MIN, PARKED_MAX)
}
/// How long a run waits for retries that are due soon, rather than ending.
const WAIT_FOR_RETRIES: Duration = Duration::from_secs(30);
/// A finished send waits at most this long for its registry write (sooner
/// once 2 × `concurrency` outcomes are waiting): a slow channel still
/// records each message almost at once, a fast one writes them in groups.
const RECORD_WITHIN: Duration = Duration::from_millis(50);
/// The most deliveries one claim takes: about a tenth of a second of
/// sending at the run's rate so far, never fewer than 4 × `concurrency`.
const LARGEST_CLAIM: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("cannot render the notice: {0}")]
    Render(String),
    /// The channel itself does not work (SMTP login refused, the sender's
    /// Matrix token rejected, ...): retrying each message cannot help.
    #[error("sending stopped: {0}")]
    Channel(String),
}

/// What a run would do (the dry run's counts).
#[derive(Debug, Clone, Serialize)]
pub struct NotifyPlan {
    pub affected: i64,
    pub tokens_to_create: usize,
    /// DMs to affected accounts that exist now and to Matrix-ID contacts.
    pub dms: i64,
    /// Affected people neither an email nor a DM can reach.
    pub unreachable: i64,
    #[serde(flatten)]
    pub emails: PlannedEmails,
}

/// `sender`: lifeboat's own account, which gets no DM.
pub async fn plan(registry: &Registry, incident_id: i64, sender: &str) -> Result<NotifyPlan, NotifyError> {
    let summary = registry.incident_summary(incident_id, sender).await?;
    Ok(NotifyPlan {
        affected: summary.affected,
        unreachable: summary.unreachable,
        tokens_to_create: crate::tokens::owed_notice_tokens(registry, incident_id, sender).await?.len(),
        dms: registry.planned_dms(incident_id, sender).await?,
        emails: registry.planned_emails(incident_id).await?,
    })
}

/// Hook for a progress display: `done` of `total` deliveries finished.
pub trait NotifyProgress: Send + Sync {
    fn deliveries(&self, _done: u64, _total: u64) {}
    /// Something the person running it should know (a channel that is off).
    fn note(&self, _text: &str) {}
    /// True once the run should wind down (serve is shutting down): sends in
    /// flight finish and are marked, the rest go back to pending.
    fn stopping(&self) -> bool {
        false
    }
}

/// Everything a notice needs besides the delivery itself.
pub struct NoticeSettings {
    pub server_name: String,
    pub public_url: Url,
    /// Made from `web.public_url` and the link-signing key, when the web
    /// page is configured: then every email carries a one-click
    /// unsubscribe link.
    pub unsubscribe: Option<UnsubscribeLinks>,
    /// The incident's postmortem as sanitized HTML, rendered once.
    pub postmortem_html: String,
    /// Where claim links point, with the key that signs them, and how long
    /// they work: when the web page is configured and lost IDs are held.
    claims: Option<(Url, SecretString, Duration)>,
    expiry_labels: ExpiryLabels,
    /// Each person's rooms, by user ID, as their notice names them.
    rooms: HashMap<String, PersonRooms>,
}

/// What a notice says of one person's rooms.
#[derive(Debug, Clone, Default)]
pub struct PersonRooms {
    pub back: Vec<String>,
    pub gone: Vec<String>,
    pub encrypted: bool,
}

/// Rooms named per list in a notice; more are summed up in one line.
const ROOMS_NAMED: usize = 20;

impl PersonRooms {
    /// From what the registry knows of a person's rooms.
    pub fn from_fates(fates: &[RoomFate]) -> PersonRooms {
        let named = |wanted: &dyn Fn(RoomState) -> bool| {
            let mut labels: Vec<String> =
                fates.iter().filter(|fate| wanted(fate.state)).map(|fate| fate.label.clone()).collect();
            if labels.len() > ROOMS_NAMED {
                let more = labels.len() - ROOMS_NAMED;
                labels.truncate(ROOMS_NAMED);
                labels.push(format!("and {}", crate::plural::count(more as i64, "more room", "more rooms")));
            }
            labels
        };
        PersonRooms {
            back: named(&|state| state.comes_back()),
            gone: named(&|state| !state.comes_back()),
            encrypted: fates.iter().any(|fate| fate.encrypted && fate.state.comes_back()),
        }
    }
}

/// [`human_time`] of token expiries, formatted once per minute: a run's
/// tokens were mostly made together, and formatting a date was a good part
/// of a render.
#[derive(Default)]
struct ExpiryLabels {
    /// The last one shown, by minute.
    last: Mutex<Option<(i64, String)>>,
}

impl ExpiryLabels {
    fn label(&self, ms: i64) -> String {
        let minute = ms.div_euclid(60_000);
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*last {
            Some((shown, label)) if *shown == minute => label.clone(),
            _ => last.insert((minute, human_time(ms))).1.clone(),
        }
    }
}

impl NoticeSettings {
    pub fn new(
        server_name: String,
        public_url: Url,
        web_links: Option<(Url, SecretString)>,
        claim_valid_for: Option<Duration>,
        incident: &Incident,
    ) -> Self {
        let postmortem_html = crate::notice::markdown_to_safe_html(incident.postmortem_body().trim());
        let unsubscribe = web_links.as_ref().map(|(base, key)| UnsubscribeLinks::new(base, key));
        let claims = web_links.zip(claim_valid_for).map(|((base, key), valid)| (base, key, valid));
        NoticeSettings {
            server_name,
            public_url,
            unsubscribe,
            postmortem_html,
            claims,
            expiry_labels: ExpiryLabels::default(),
            rooms: HashMap::new(),
        }
    }

    /// Notices name each person's rooms and what became of them.
    pub fn with_rooms(mut self, fates: HashMap<String, Vec<RoomFate>>) -> Self {
        self.rooms = fates.into_iter().map(|(user_id, fates)| (user_id, PersonRooms::from_fates(&fates))).collect();
        self
    }

    /// The person's link to take their held ID back (`holds::claim_link`).
    fn claim_url(&self, incident: &Incident, delivery: &Delivery, state: AccountState) -> Option<String> {
        let (base, key, valid_for) = self.claims.as_ref()?;
        let may_come_back = may_come_back(delivery.locked != 0, delivery.deactivated != 0);
        let link = claim_link(&delivery.user_id, state, delivery.held_at, may_come_back, incident.id, *valid_for)?;
        Some(link.url(base, key))
    }

    pub fn render(&self, incident: &Incident, delivery: &Delivery) -> Result<RenderedNotice, NotifyError> {
        self.render_with(incident, delivery, self.unsubscribe_url(delivery).as_deref(), render_notice)
    }

    /// The signed one-click link for this delivery's contact, if the web
    /// page is configured.
    fn unsubscribe_url(&self, delivery: &Delivery) -> Option<String> {
        match (&self.unsubscribe, delivery.contact_id) {
            (Some(links), Some(contact_id)) => Some(links.url(contact_id)),
            _ => None,
        }
    }

    fn render_with<T>(
        &self,
        incident: &Incident,
        delivery: &Delivery,
        unsubscribe_url: Option<&str>,
        render: impl FnOnce(&NoticeContext) -> Result<T, NoticeError>,
    ) -> Result<T, NotifyError> {
        let expires = delivery.token_expires_at.map(|ms| self.expiry_labels.label(ms));
        let state = AccountState::parse(&delivery.account_state);
        let claim_url = self.claim_url(incident, delivery, state);
        let no_rooms = PersonRooms::default();
        let rooms = self.rooms.get(&delivery.user_id).unwrap_or(&no_rooms);
        let context = NoticeContext {
            server_name: &self.server_name,
            homeserver_url: self.public_url.as_str(),
            user_id: &delivery.user_id,
            display_name: delivery.display_name.as_deref(),
            incident_title: &incident.title,
            postmortem_markdown: incident.postmortem_body(),
            postmortem_html: Some(&self.postmortem_html),
            account_works: state.is_its_persons(),
            token: delivery.token.as_deref(),
            token_expires: expires.as_deref(),
            unsubscribe_url,
            id_held: state == AccountState::Held,
            claim_url: claim_url.as_deref(),
            id_taken: state.is_stranger(),
            locked_out: !may_come_back(delivery.locked != 0, delivery.deactivated != 0),
            rooms_back: &rooms.back,
            rooms_gone: &rooms.gone,
            encrypted_rooms: rooms.encrypted,
        };
        render(&context).map_err(|err| NotifyError::Render(err.to_string()))
    }

    /// The email of one delivery, or why its address cannot be used.
    pub fn email(
        &self,
        incident: &Incident,
        delivery: &Delivery,
    ) -> Result<Result<OutgoingEmail, String>, NotifyError> {
        let to = match EmailAddress::parse(&delivery.address) {
            Ok(to) => to,
            Err(err) => return Ok(Err(err.to_string())),
        };
        // Signed once: the same link goes in the body and the header.
        let list_unsubscribe = self.unsubscribe_url(delivery);
        let rendered = self.render_with(incident, delivery, list_unsubscribe.as_deref(), render_email_notice)?;
        Ok(Ok(OutgoingEmail {
            to,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            // The same for every attempt, so a repeat after a crash can be
            // recognised as the same message.
            message_id: format!("incident-{}.delivery-{}@{}", incident.id, delivery.id, self.server_name),
            list_unsubscribe,
        }))
    }
}

/// "2026-12-09 19:00 UTC"
pub fn human_time(ms: i64) -> String {
    match registry::format_time(ms) {
        Some(stamp) => format!("{} UTC", stamp[..16].replace('T', " ")),
        None => "-".to_owned(),
    }
}

/// How a channel's deliveries leave.
#[derive(Clone, Copy)]
pub enum Transport<'a> {
    Email(&'a Mailer),
    Matrix(&'a DmSender),
}

impl Transport<'_> {
    fn channel(&self) -> &'static str {
        match self {
            Transport::Email(_) => "email",
            Transport::Matrix(_) => "matrix",
        }
    }

    /// Sends one delivery. An email is rendered here and handed to its own
    /// task, so building and sending it runs beside this run's bookkeeping.
    async fn deliver(
        self,
        registry: &Registry,
        incident: &Incident,
        settings: &NoticeSettings,
        delivery: &Delivery,
    ) -> Outcome {
        match self {
            Transport::Email(mailer) => match settings.email(incident, delivery) {
                Err(err) => Outcome::Fatal(err),
                Ok(Err(bad_address)) => Outcome::Failed(bad_address),
                Ok(Ok(email)) => match mailer.send(&email).await {
                    Ok(()) => Outcome::Sent,
                    Err(MailError::Transient(reason)) => Outcome::Retry(reason),
                    // Maybe delivered already: not again soon.
                    Err(MailError::Uncertain(reason)) => Outcome::RetryLater(reason),
                    Err(MailError::Config(reason)) => Outcome::Fatal(NotifyError::Channel(reason)),
                    Err(err) => Outcome::Failed(err.to_string()),
                },
            },
            Transport::Matrix(sender) => match settings.render(incident, delivery) {
                Err(err) => Outcome::Fatal(err),
                Ok(notice) => {
                    // Fixed per delivery: Synapse drops a repeat after a crash.
                    let transaction = format!("lifeboat-incident-{}-delivery-{}", incident.id, delivery.id);
                    match sender.send(registry, &delivery.address, &notice.markdown, &transaction).await {
                        Ok(()) => Outcome::Sent,
                        Err(DmError::Transient(reason)) => Outcome::Retry(reason),
                        Err(DmError::Sender(reason)) => Outcome::Fatal(NotifyError::Channel(reason)),
                        Err(DmError::Permanent(reason)) => Outcome::Failed(reason),
                    }
                }
            },
        }
    }

    /// Why a claimed delivery is not sent at all, if it is not.
    fn skip_reason(delivery: &Delivery) -> Option<&'static str> {
        if delivery.opted_out_at.is_some() {
            return Some("the contact opted out");
        }
        if delivery.channel == "email" && delivery.contact_id.is_none() {
            return Some("the contact was removed");
        }
        // Planned when the account survived; since then its ID was lost
        // (held) or registered again by someone lifeboat cannot vouch for.
        if delivery.channel == "matrix"
            && delivery.address == delivery.user_id
            && !AccountState::parse(&delivery.account_state).is_its_persons()
        {
            return Some("the account is no longer its person's (lost, held, or registered again by someone else)");
        }
        None
    }
}

/// Sends an incident's deliveries of one channel until none is due;
/// returns the counts by state (all channels) afterwards. Call
/// `Registry::resume_deliveries` once before a run.
///
/// Up to `concurrency` messages are out at once, all polled by this task
/// (a task per message cost more in hand-offs than it gained). The registry
/// work runs beside the sends: claims (reads, on a pooled connection) read
/// the next deliveries before the queue runs dry, and finished outcomes are
/// recorded in groups of up to 2 × `concurrency`, one statement per group,
/// on a connection kept for the run, one write at a time. A finished
/// message waits for its record at most `RECORD_WITHIN`. No new send starts
/// while 3 × `concurrency` messages are being sent or wait for their
/// record: a crash can repeat at most that many.
pub async fn send_deliveries(
    registry: &Registry,
    transport: Transport<'_>,
    incident: &Incident,
    settings: &NoticeSettings,
    concurrency: usize,
    progress: &dyn NotifyProgress,
) -> Result<DeliveryCounts, NotifyError> {
    let concurrency = concurrency.max(1);
    let counts = registry.delivery_counts(incident.id).await?;
    let total = counts.total() as u64;
    let mut done = (counts.sent + counts.failed + counts.skipped) as u64;
    let mut tries: HashMap<i64, u32> = HashMap::new();
    // Where the next claim starts: the due time and id of the last one read.
    let mut claimed_up_to: (i64, i64) = (i64::MIN, 0);
    let started = Instant::now();
    let mut recorded_this_run: u64 = 0;

    // Claimed, not started yet.
    let mut queue: VecDeque<Delivery> = VecDeque::new();
    let mut sends: FuturesUnordered<BoxFuture<'_, (i64, i64, Outcome)>> = FuturesUnordered::new();
    // Finished attempts waiting for the next registry write.
    let mut unrecorded: Vec<Record> = Vec::new();
    // Its deadline is when the oldest of them has waited `RECORD_WITHIN`;
    // set once per group, not per turn of the loop (each new timer is a
    // registration), and it wakes the loop then.
    let record_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(record_timer);
    // Outcomes are written on a connection kept for the run; while a write
    // is under way, the future holds it (and gives it back).
    let mut writer = Some(registry.outbox_writer().await?);
    let mut writing: Option<BoxFuture<'_, (OutboxWriter, Result<u64, registry::Error>)>> = None;
    let mut being_recorded = 0;
    // The claim under way: a read, on a connection of its own, beside the
    // writes.
    let mut claiming: Option<BoxFuture<'_, Result<Vec<Delivery>, registry::Error>>> = None;
    // The last claim found nothing due.
    let mut exhausted = false;
    // A channel or render failure: no new sends; ends the run with it.
    let mut fatal: Option<NotifyError> = None;

    loop {
        let winding_down = fatal.is_some() || progress.stopping();
        if winding_down {
            // Read but not started: they are still pending in the registry.
            queue.clear();
        }
        // Being sent, or sent and not recorded: what a crash could repeat.
        // Groups of twice the sends: each write (a commit) costs about as
        // much as thirty rows it marks, so halving the writes outweighs the
        // sends' short pause while a full group is written.
        while !winding_down
            && sends.len() < concurrency
            && sends.len() + unrecorded.len() + being_recorded < 3 * concurrency
        {
            let Some(delivery) = queue.pop_front() else { break };
            sends.push(Box::pin(async move {
                let outcome = match Transport::skip_reason(&delivery) {
                    Some(reason) => Outcome::Skip(reason),
                    None => transport.deliver(registry, incident, settings, &delivery).await,
                };
                (delivery.id, delivery.attempts, outcome)
            }));
        }
        let record_due = !unrecorded.is_empty()
            && (unrecorded.len() >= 2 * concurrency
                || sends.is_empty()
                || winding_down
                || tokio::time::Instant::now() >= record_timer.deadline());
        if record_due && let Some(mut outbox) = writer.take() {
            let records = std::mem::take(&mut unrecorded);
            being_recorded = records.len();
            writing = Some(Box::pin(async move {
                let result = record(&mut outbox, records).await;
                (outbox, result)
            }));
        }
        let claim_size = claim_size(concurrency, recorded_this_run, started.elapsed());
        if claiming.is_none() && !winding_down && !exhausted && queue.len() <= claim_size / 2 {
            let (after, limit) = (claimed_up_to, claim_size as i64);
            claiming = Some(Box::pin(registry.due_deliveries(incident.id, transport.channel(), limit, after)));
        }
        if sends.is_empty() && writing.is_none() && claiming.is_none() && unrecorded.is_empty() {
            // Nothing under way, nothing queued, nothing left to record.
            if winding_down {
                break;
            }
            match registry.next_pending_at(incident.id, transport.channel()).await? {
                Some(next) if next - now_ms() <= WAIT_FOR_RETRIES.as_millis() as i64 => {
                    // In slices, so that a shutdown does not wait for it.
                    while now_ms() < next && !progress.stopping() {
                        tokio::time::sleep(Duration::from_millis((next - now_ms()).clamp(10, 250) as u64)).await;
                    }
                    // Nothing is in flight now: read from the start again.
                    exhausted = false;
                    claimed_up_to = (i64::MIN, 0);
                    continue;
                }
                _ => break,
            }
        }
        // Outcomes that wait for the writer to be free or for their group
        // to fill wake the loop when their time is up.
        let wait_for_timer = !unrecorded.is_empty() && !record_due && writing.is_none();

        tokio::select! {
            Some((id, attempts_before, outcome)) = sends.next(), if !sends.is_empty() => {
                let record = match outcome {
                    Outcome::Sent => Record::Sent(id),
                    Outcome::Skip(reason) => Record::Skipped(id, reason),
                    Outcome::Failed(reason) => Record::Failed(id, reason),
                    Outcome::Retry(reason) => {
                        let count = tries.entry(id).or_default();
                        *count += 1;
                        let wait = if *count < ATTEMPTS_PER_RUN {
                            Duration::from_secs(1 << (*count - 1).min(4))
                        } else {
                            parked_for(attempts_before + i64::from(*count))
                        };
                        tracing::warn!(delivery = id, error = %reason, "notice will be retried");
                        Record::Retry(id, reason, now_ms() + wait.as_millis() as i64)
                    }
                    Outcome::RetryLater(reason) => {
                        tracing::warn!(delivery = id, error = %reason, "notice will be retried later");
                        Record::Retry(id, reason, now_ms() + LATER.as_millis() as i64)
                    }
                    Outcome::Fatal(err) => {
                        // Put it back as due: a render or channel failure.
                        let record = Record::Retry(id, err.to_string(), now_ms());
                        fatal.get_or_insert(err);
                        record
                    }
                };
                if unrecorded.is_empty() {
                    record_timer.as_mut().reset(tokio::time::Instant::now() + RECORD_WITHIN);
                }
                unrecorded.push(record);
            }
            (outbox, finished) = async { writing.as_mut().expect("checked by the guard").await }, if writing.is_some() => {
                writing = None;
                writer = Some(outbox);
                // If the registry fails after sends, a rerun repeats the
                // ones not recorded (at most 3 × `concurrency` in all).
                let finished = finished?;
                recorded_this_run += being_recorded as u64;
                being_recorded = 0;
                done += finished;
                progress.deliveries(done, total);
            }
            claimed = async { claiming.as_mut().expect("checked by the guard").await }, if claiming.is_some() => {
                claiming = None;
                let claimed = claimed?;
                exhausted = claimed.is_empty();
                if let Some(last) = claimed.last() {
                    claimed_up_to = (last.next_attempt_at, last.id);
                }
                queue.extend(claimed);
            }
            () = &mut record_timer, if wait_for_timer => {}
        }
    }
    if let Some(err) = fatal {
        return Err(err);
    }
    Ok(registry.delivery_counts(incident.id).await?)
}

/// How many deliveries to claim at once: enough for about a tenth of a
/// second at the rate of this run so far, so a fast channel claims rarely
/// and a slow one does not hold many tokens it read long before sending.
fn claim_size(concurrency: usize, recorded: u64, elapsed: Duration) -> usize {
    let smallest = concurrency * 4;
    let per_tenth_second = (recorded as f64 / elapsed.as_secs_f64().max(0.001) / 10.0) as usize;
    per_tenth_second.clamp(smallest, LARGEST_CLAIM.max(smallest))
}

/// The end of one attempt, as the registry keeps it.
enum Record {
    Sent(i64),
    Skipped(i64, &'static str),
    Failed(i64, String),
    /// Due again at the given time (ms).
    Retry(i64, String, i64),
}

/// Writes a group of outcomes: every sent one in one statement, the rarer
/// others one by one. Returns how many deliveries ended (sent, skipped or
/// failed).
async fn record(outbox: &mut OutboxWriter, records: Vec<Record>) -> Result<u64, registry::Error> {
    let sent: Vec<i64> =
        records.iter().filter_map(|record| if let Record::Sent(id) = record { Some(*id) } else { None }).collect();
    outbox.mark_sent(&sent).await?;
    let mut finished = sent.len() as u64;
    for record in records {
        match record {
            Record::Sent(_) => {}
            Record::Skipped(id, reason) => {
                outbox.mark_skipped(id, reason).await?;
                finished += 1;
            }
            Record::Failed(id, reason) => {
                outbox.mark_failed(id, &reason).await?;
                finished += 1;
            }
            Record::Retry(id, reason, at) => outbox.mark_retry(id, &reason, at).await?,
        }
    }
    Ok(finished)
}

enum Outcome {
    Sent,
    Skip(&'static str),
    Retry(String),
    /// Retry, but only after `LATER`.
    RetryLater(String),
    Failed(String),
    Fatal(NotifyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_labels_are_formatted_once_a_minute_and_always_say_what_human_time_says() {
        let labels = ExpiryLabels::default();
        let minute = 1_796_000_000_000 / 60_000 * 60_000;
        for ms in [minute, minute + 59_999, minute + 60_000, minute + 1, minute - 1, minute + 61_000, -1, 0] {
            assert_eq!(labels.label(ms), human_time(ms), "at {ms}");
        }
        labels.label(minute);
        assert_eq!(labels.last.lock().unwrap().as_ref().unwrap().0, minute / 60_000);
    }
}
