//! Notices after an incident: planned into the outbox, then sent by email
//! and by Matrix DM through its send loop, each rendered as it leaves.
//! Resumable: a rerun sends what was not sent and never what was. A process
//! killed mid-send repeats at most the messages in flight (3 × `concurrency`,
//! see `outbox`), each with the same Message-ID or DM transaction ID.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::Config;
use crate::dm::DmSender;
use crate::email::EmailAddress;
use crate::holds::{UnheldLostIds, claim_link, dm_reaches_its_person};
use crate::links::UnsubscribeLinks;
use crate::mail::{Mailer, OutgoingEmail};
use crate::notice::{DM_CONTENT_BUDGET, NoticeContext, RenderedNotice, dm_content_bytes, render_notice};
use crate::outbox::Outcome;
use crate::registry::{
    self, Delivery, DeliveryChannel, DeliveryCounts, Incident, OldName, PlannedEmails, Registry, RoomFate, RoomState,
    human_time, may_come_back,
};
use crate::synapse::SynapseClient;
use crate::user_id::UserId;

/// Errors of a notify run: the outbox's.
pub use crate::outbox::SendError as NotifyError;

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
    /// Lost IDs not held (yet), of any incident, while holds are on: a send
    /// holds them first, and sends nothing while one stays free.
    pub unheld_lost_ids: Option<UnheldLostIds>,
}

impl NotifyPlan {
    /// What a dry run should add when the send would hold lost IDs first
    /// and may refuse.
    pub fn holds_first(&self) -> Option<String> {
        let unheld = self.unheld_lost_ids.as_ref()?;
        Some(format!("{unheld}: sending holds them first, and sends nothing while one stays free"))
    }
}

pub async fn plan(config: &Config, registry: &Registry, incident_id: i64) -> Result<NotifyPlan, NotifyError> {
    // Lifeboat's own account gets no DM.
    let sender = &crate::recover::service_user_id(config);
    let summary = registry.incident_summary(incident_id, sender).await?;
    Ok(NotifyPlan {
        affected: summary.affected,
        unreachable: summary.unreachable,
        tokens_to_create: crate::tokens::owed_notice_tokens(registry, incident_id, sender).await?.len(),
        dms: registry.planned_dms(incident_id, sender).await?,
        emails: PlannedEmails {
            emails: registry.planned_emails(incident_id).await?,
            people_with_email: summary.reachable_by_email,
            people_without_channel: summary.affected - summary.reachable_by_email,
        },
        unheld_lost_ids: crate::holds::tokens_withheld(config, registry).await?,
    })
}

/// Hook for a progress display: `done` of `total` deliveries finished.
pub trait NotifyProgress: Send + Sync {
    fn deliveries(&self, _done: u64, _total: u64) {}
    /// Something the person running it should know (a channel that is off).
    fn note(&self, _text: &str) {}
    /// How far long work has got, for whoever watches it happen (a
    /// terminal); not kept for a report afterwards.
    fn passing(&self, _text: &str) {}
    /// Cancelled once the run should wind down (Ctrl-C, serve stopping):
    /// sends in flight finish and are marked, the rest go back to pending.
    /// `None`: nothing stops the run.
    fn stop(&self) -> Option<&CancellationToken> {
        None
    }
    fn stopping(&self) -> bool {
        self.stop().is_some_and(CancellationToken::is_cancelled)
    }
}

/// Everything a notice needs besides the delivery itself.
pub struct NoticeSettings {
    pub server_name: String,
    pub public_url: Url,
    /// Made from `web.public_url` and the link-signing key, when the web page
    /// is configured: then every email carries a one-click unsubscribe link.
    pub unsubscribe: Option<UnsubscribeLinks>,
    /// The incident's postmortem as sanitized HTML, rendered once.
    pub postmortem_html: String,
    /// Where claim links point, with the key that signs them, and how long
    /// they work: when the web page is configured and lost IDs are held.
    claims: Option<(Url, SecretString, Duration)>,
    expiry_labels: ExpiryLabels,
    /// Each person's rooms, by user ID, as their notice names them.
    rooms: HashMap<String, PersonRooms>,
    /// Lost IDs are held ([`crate::holds::holds_wanted`]): while one is
    /// not, a notice with a token waits.
    holds_on: bool,
}

/// What a notice says of one person's rooms.
#[derive(Debug, Clone, Default)]
pub struct PersonRooms {
    pub back: Vec<String>,
    pub gone: Vec<String>,
    pub encrypted: bool,
    /// How many rooms each list stands for.
    pub counts: (usize, usize),
}

/// Rooms named per list in a notice; more are summed up in one line.
const ROOMS_NAMED: usize = 20;

impl PersonRooms {
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
        let back = fates.iter().filter(|fate| fate.state.comes_back()).count();
        PersonRooms {
            back: named(&|state| state.comes_back()),
            gone: named(&|state| !state.comes_back()),
            encrypted: fates.iter().any(|fate| fate.encrypted && fate.state.comes_back()),
            counts: (back, fates.len() - back),
        }
    }

    /// The same rooms, counted instead of named.
    fn unnamed(&self) -> PersonRooms {
        let counted = |count: usize| match count {
            0 => Vec::new(),
            _ => vec![crate::plural::count(count as i64, "room", "rooms")],
        };
        PersonRooms { back: counted(self.counts.0), gone: counted(self.counts.1), ..self.clone() }
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
            holds_on: false,
        }
    }

    /// With lost IDs held (`holds_on`): each claim of a send run holds back
    /// the notices with a token while one is not.
    pub fn with_holds(mut self, holds_on: bool) -> Self {
        self.holds_on = holds_on;
        self
    }

    /// Notices name each person's rooms and what became of them.
    pub fn with_rooms(mut self, fates: HashMap<String, Vec<RoomFate>>) -> Self {
        self.rooms = fates.into_iter().map(|(user_id, fates)| (user_id, PersonRooms::from_fates(&fates))).collect();
        self
    }

    /// The person's link to take their held ID back (`holds::claim_link`).
    fn claim_url(&self, incident: &Incident, delivery: &Delivery, may_come_back: bool) -> Option<String> {
        let (base, key, valid_for) = self.claims.as_ref()?;
        let state = delivery.account_state;
        let link = claim_link(&delivery.user_id, state, delivery.held_at, may_come_back, incident.id, *valid_for)?;
        Some(link.url(base, key, delivery.contact_id?, &delivery.address))
    }

    /// The notice DM. Room names are whatever the rooms' makers typed: a DM
    /// they would make too large for Synapse counts the rooms instead.
    pub fn render(&self, incident: &Incident, delivery: &Delivery) -> RenderedNotice {
        let unsubscribe_url = self.unsubscribe_url(delivery);
        let rooms = self.rooms_of(delivery);
        let rendered = self.render_with(incident, delivery, unsubscribe_url.as_deref(), true, rooms);
        if rooms.counts == (0, 0) || dm_content_bytes(&rendered.markdown) <= DM_CONTENT_BUDGET {
            return rendered;
        }
        self.render_with(incident, delivery, unsubscribe_url.as_deref(), true, &rooms.unnamed())
    }

    fn rooms_of(&self, delivery: &Delivery) -> &PersonRooms {
        static NONE: PersonRooms = PersonRooms { back: Vec::new(), gone: Vec::new(), encrypted: false, counts: (0, 0) };
        self.rooms.get(&delivery.user_id).unwrap_or(&NONE)
    }

    /// The signed one-click link for this delivery's contact, if the web page is configured.
    fn unsubscribe_url(&self, delivery: &Delivery) -> Option<String> {
        Some(self.unsubscribe.as_ref()?.url(delivery.contact_id?, &delivery.address))
    }

    fn render_with(
        &self,
        incident: &Incident,
        delivery: &Delivery,
        unsubscribe_url: Option<&str>,
        dm: bool,
        rooms: &PersonRooms,
    ) -> RenderedNotice {
        let expires = delivery.token_expires_at.map(|ms| self.expiry_labels.label(ms));
        let state = delivery.account_state;
        let may_come_back = may_come_back(delivery.locked != 0, delivery.deactivated != 0);
        let claim_url = self.claim_url(incident, delivery, may_come_back);
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
            old_name: OldName::of(state, delivery.hold_refused.is_some()),
            claim_url: claim_url.as_deref(),
            locked_out: !may_come_back,
            rooms_back: &rooms.back,
            rooms_gone: &rooms.gone,
            encrypted_rooms: rooms.encrypted,
        };
        render_notice(&context, dm)
    }

    /// The email of one delivery, or why it is not sent (its address
    /// cannot be used).
    fn email(&self, incident: &Incident, delivery: &Delivery) -> Result<OutgoingEmail, Outcome> {
        let to = EmailAddress::parse(&delivery.address).map_err(|err| Outcome::Failed(err.to_string()))?;
        // Signed once: the same link goes in the body and the header.
        let list_unsubscribe = self.unsubscribe_url(delivery);
        let rendered =
            self.render_with(incident, delivery, list_unsubscribe.as_deref(), false, self.rooms_of(delivery));
        Ok(OutgoingEmail {
            to,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            // The same for every attempt, so a repeat after a crash can be
            // recognised as the same message.
            message_id: format!("incident-{}.delivery-{}@{}", incident.id, delivery.id, self.server_name),
            list_unsubscribe,
        })
    }
}

/// How a channel's deliveries leave.
#[derive(Clone, Copy)]
pub enum Transport<'a> {
    Email(&'a Mailer),
    /// DMs, and the admin API that tells whose a local Matrix ID is now.
    Matrix(&'a DmSender, &'a SynapseClient),
}

impl Transport<'_> {
    fn channel(&self) -> DeliveryChannel {
        match self {
            Transport::Email(_) => DeliveryChannel::Email,
            Transport::Matrix(..) => DeliveryChannel::Matrix,
        }
    }

    /// Why a claimed delivery is not sent at all, if it is not.
    fn skip_reason(delivery: &Delivery, server_name: &str) -> Option<&'static str> {
        if delivery.opted_out_at.is_some() {
            return Some("the contact opted out");
        }
        // A contact removed since it was planned (for a DM: any but the
        // person's own account) hears nothing more, the person's token and
        // claim link least of all.
        let to_a_contact = delivery.channel == DeliveryChannel::Email || delivery.address != delivery.user_id;
        if to_a_contact && delivery.contact_id.is_none() {
            return Some("the contact was removed");
        }
        // A Matrix ID on this homeserver, the person's own or a contact's,
        // may have changed hands since it was planned: lost (held), or
        // registered again by someone lifeboat cannot vouch for, who would
        // read the person's token and claim link. One the registry does not
        // know is nobody lifeboat can vouch for either.
        if delivery.channel == DeliveryChannel::Matrix {
            let standing = if delivery.address == delivery.user_id {
                Some(delivery.account_state)
            } else {
                delivery.contact_account_state
            };
            if !dm_reaches_its_person(&delivery.address, server_name, standing) {
                return Some(NOT_ITS_PERSONS);
            }
        }
        None
    }
}

const NOT_ITS_PERSONS: &str =
    "the Matrix ID is not its person's now (lost, held, registered again by someone else, or unknown)";

/// A Matrix ID on this homeserver is asked of Synapse too, just before the
/// DM: the registry learns of one registered again after another wipe only
/// at the next listing, and the notice carries the person's token and
/// claim link.
async fn changed_hands(
    registry: &Registry,
    synapse: &SynapseClient,
    address: &str,
    server_name: &str,
) -> Option<Outcome> {
    let id = UserId::parse(address).ok().filter(|id| id.server_name() == server_name)?;
    match crate::holds::its_persons_now(registry, synapse, &id).await {
        Ok(true) => None,
        Ok(false) => Some(Outcome::Skip(NOT_ITS_PERSONS)),
        // The admin token will not do for the next DM either: the run stops, once.
        Err(crate::holds::CannotTell::Synapse(err)) if err.is_refusal() => {
            Some(Outcome::Fatal(crate::outbox::SendError::Channel(err.to_string())))
        }
        Err(err) => Some(Outcome::Retry(err.to_string())),
    }
}

/// One incident's deliveries on one channel, as the outbox's send loop
/// sees them.
struct IncidentNotices<'a> {
    registry: &'a Registry,
    transport: Transport<'a>,
    incident: &'a Incident,
    settings: &'a NoticeSettings,
}

impl crate::outbox::Channel for IncidentNotices<'_> {
    type Row = Delivery;

    async fn claim(&self, limit: usize) -> Result<Vec<Delivery>, registry::Error> {
        if self.settings.holds_on {
            crate::holds::hold_back_due_tokens(self.registry, Some(self.incident.id)).await?;
        }
        self.registry.due_deliveries(self.incident.id, self.transport.channel(), limit as i64).await
    }

    fn scope(&self) -> (Option<i64>, DeliveryChannel) {
        (Some(self.incident.id), self.transport.channel())
    }

    fn key(delivery: &Delivery) -> (i64, i64) {
        (delivery.id, delivery.attempts)
    }

    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        if let Some(reason) = Transport::skip_reason(delivery, &self.settings.server_name) {
            return Outcome::Skip(reason);
        }
        let (incident, settings) = (self.incident, self.settings);
        match self.transport {
            Transport::Email(mailer) => match settings.email(incident, delivery) {
                Ok(email) => crate::outbox::mail_outcome(mailer.send(&email).await),
                Err(outcome) => outcome,
            },
            Transport::Matrix(sender, synapse) => {
                let address = &delivery.address;
                if let Some(outcome) = changed_hands(self.registry, synapse, address, &settings.server_name).await {
                    return outcome;
                }
                let notice = settings.render(incident, delivery);
                // Fixed per delivery: Synapse drops a repeat after a crash.
                let transaction = format!("lifeboat-incident-{}-delivery-{}", incident.id, delivery.id);
                crate::outbox::dm_outcome(sender.send(self.registry, address, &notice.markdown, &transaction).await)
            }
        }
    }
}

/// A notify run's progress, counted over every channel of the incident.
struct Counted<'a> {
    progress: &'a dyn NotifyProgress,
    /// Up once the run's lease is another's: claim nothing more.
    lost: &'a AtomicBool,
    done: AtomicU64,
    total: u64,
}

impl crate::outbox::Progress for Counted<'_> {
    fn recorded(&self, finished: u64) {
        let done = self.done.fetch_add(finished, Ordering::Relaxed) + finished;
        self.progress.deliveries(done, self.total);
    }

    fn stopping(&self) -> bool {
        self.progress.stopping() || self.lost.load(Ordering::SeqCst)
    }
}

/// Sends an incident's deliveries of one channel until none is due
/// (`outbox::send_until_done`); returns the counts by state (all channels)
/// afterwards. Call `Registry::resume_deliveries` once before a run. Stops
/// claiming once `lost` is up (the run's lease is another's).
pub async fn send_deliveries(
    registry: &Registry,
    transport: Transport<'_>,
    incident: &Incident,
    settings: &NoticeSettings,
    concurrency: usize,
    progress: &dyn NotifyProgress,
    lost: &AtomicBool,
) -> Result<DeliveryCounts, NotifyError> {
    let counts = registry.delivery_counts(incident.id).await?;
    let counted = Counted {
        progress,
        lost,
        done: AtomicU64::new((counts.sent + counts.failed + counts.skipped) as u64),
        total: counts.total() as u64,
    };
    let notices = IncidentNotices { registry, transport, incident, settings };
    crate::outbox::send_until_done(registry, &notices, concurrency, &counted).await?;
    Ok(registry.delivery_counts(incident.id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::AccountState;

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

    fn dm(to: &str, contact_id: Option<i64>, contact_account_state: Option<AccountState>) -> Delivery {
        Delivery {
            id: 1,
            user_id: "@alice:ours.example".to_owned(),
            channel: DeliveryChannel::Matrix,
            address: to.to_owned(),
            attempts: 0,
            next_attempt_at: 0,
            display_name: None,
            account_state: AccountState::Held,
            held_at: Some(1),
            locked: 0,
            deactivated: 0,
            hold_refused: None,
            contact_id,
            contact_account_state,
            opted_out_at: None,
            token: Some("token".to_owned()),
            token_expires_at: None,
        }
    }

    /// The longest postmortem an incident may have for DMs, with its
    /// settings; `rooms` named `name` (half back, half lost) for alice.
    fn a_long_incident_and_rooms(rooms: usize, name: &str) -> (Incident, NoticeSettings) {
        let postmortem = "We lost the database, and this tells you all about it. ".repeat(290);
        // What `incident_text_problem` lets through: 8 KiB left for the rest.
        assert!(dm_content_bytes(&postmortem) <= DM_CONTENT_BUDGET - 8 * 1024, "a postmortem DMs can carry");
        let incident = Incident {
            id: 1,
            title: "Lost".into(),
            postmortem,
            scope: registry::IncidentScope::All,
            opened_at: 0,
            resolved_at: None,
        };
        let fates = (0..rooms)
            .map(|n| RoomFate {
                label: format!("{n} {name}"),
                state: if n % 2 == 0 { RoomState::Elsewhere } else { RoomState::Lost },
                encrypted: false,
            })
            .collect();
        let settings = NoticeSettings::new(
            "ours.example".into(),
            Url::parse("https://ours.example").unwrap(),
            None,
            None,
            &incident,
        )
        .with_rooms(HashMap::from([("@alice:ours.example".to_owned(), fates)]));
        (incident, settings)
    }

    #[test]
    fn a_dm_names_the_persons_rooms_while_it_fits() {
        let (incident, settings) = a_long_incident_and_rooms(6, "Book club");
        let notice = settings.render(&incident, &dm("@alice:elsewhere.example", Some(7), None));
        assert!(
            notice.markdown.contains("- 4 Book club") && notice.markdown.contains("- 5 Book club"),
            "{}",
            notice.markdown
        );
    }

    #[test]
    fn a_dm_that_room_names_would_make_too_large_for_synapse_counts_the_rooms_instead() {
        // Names that escape to several times their length, in text and HTML.
        let (incident, settings) = a_long_incident_and_rooms(60, &"&<\"'".repeat(40));
        let delivery = dm("@alice:elsewhere.example", Some(7), None);
        let notice = settings.render(&incident, &delivery);
        assert!(dm_content_bytes(&notice.markdown) <= DM_CONTENT_BUDGET);
        assert!(notice.markdown.contains("- 30 rooms"), "{}", notice.markdown);
        let Ok(email) = settings.email(&incident, &delivery_by_email()) else { panic!("the email renders") };
        assert!(email.text.contains("0 &<"), "the email names them: {}", email.text);
    }

    fn delivery_by_email() -> Delivery {
        Delivery { channel: DeliveryChannel::Email, ..dm("alice@example.org", Some(7), None) }
    }

    #[test]
    fn a_notice_dm_goes_only_to_a_contact_still_recorded_and_an_id_still_its_persons() {
        let skip = |delivery: &Delivery| Transport::skip_reason(delivery, "ours.example");
        assert_eq!(skip(&dm("@alice:elsewhere.example", Some(7), None)), None, "her contact elsewhere");
        assert!(skip(&dm("@alice:elsewhere.example", None, None)).is_some(), "a contact removed since");
        assert_eq!(skip(&dm("@bob:ours.example", Some(7), Some(AccountState::Present))), None);
        for taken in [None, Some(AccountState::Recreated), Some(AccountState::Held), Some(AccountState::Missing)] {
            assert!(skip(&dm("@bob:ours.example", Some(7), taken)).is_some(), "a contact here that is {taken:?}");
        }
        assert!(skip(&dm("@alice:ours.example", None, None)).is_some(), "her own ID, held");
    }
}
