//! What the watcher saw last: its [`Observation`] of a round, what an alert
//! is about ([`AlertedState`]), and the [`WatchHandle`] through which
//! `/metrics` and the bot's `status` read it. Below `app`, which holds the
//! handle, and `watch`, which fills it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::check::{CheckError, CheckReport, verdict_reason};
use crate::config::Config;
use crate::holds::{UNLOCKED_HELD_REMEDY, UnheldLostIds};
use crate::plural::id_list;
use crate::reconcile::{Report, Verdict};

/// The watcher's last full listing: when it ended and how much of
/// Synapse's time it took (its wall time, times the share it was paced to;
/// without the reading of account details, which a first sync does for
/// every account once and later ones for at most `sync.details_per_round`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LastListing {
    pub ended_ms: i64,
    pub synapse_ms: i64,
}

/// What one round of the watcher saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observation {
    pub at: Option<i64>,
    /// `None`: could not tell (Synapse down, listing failed, not checked yet).
    pub verdict: Option<Verdict>,
    pub reason: String,
    pub missing: Vec<String>,
    pub recreated: Vec<String>,
    /// Every admin token lifeboat knows was rejected as unknown.
    pub token_rejected: bool,
    /// Could not tell for a reason that will not pass by itself (a token
    /// that is not an admin's, `homeserver.url` at another server): the
    /// admins hear of it at once, not after `watch.alert_unchecked_after`.
    pub lasting: bool,
    /// lifeboat got back in through the shared secret in this round.
    pub recovered: bool,
    /// Lost IDs held for their owners in this round.
    pub held: Vec<String>,
    /// What became of lifeboat's own ID, lost too, in this round's hold run.
    pub own: Option<String>,
    /// Lost IDs this round's hold run failed to hold: they keep every
    /// registration token back until a run holds them.
    pub not_held: Option<NotHeld>,
    /// IDs registered again by someone lifeboat cannot vouch for: those
    /// the check found recreated, and those a hold found taken.
    pub taken: Vec<String>,
    /// Of `taken`, those in `bot.admins`.
    pub taken_admins: Vec<String>,
    /// Of `taken`, lifeboat's own ID.
    pub taken_own: Option<String>,
    /// Held IDs whose account someone unlocked outside lifeboat.
    pub unlocked_held: Vec<String>,
    /// This round's listing, for spacing the next one.
    #[serde(skip)]
    pub listing: Option<LastListing>,
}

impl Observation {
    /// A complete listing's classification (the round's sync).
    pub(crate) fn saw(&mut self, report: Report, loss_threshold: f64) {
        self.reason = verdict_reason(&report, loss_threshold);
        self.verdict = Some(report.verdict);
        self.taken = report.recreated.clone();
        self.unlocked_held = report.unlocked_held;
        self.missing = report.missing;
        self.recreated = report.recreated;
    }

    /// What `check` said, or why it could not tell.
    pub(crate) fn checked(&mut self, checked: Result<CheckReport, CheckError>) {
        match checked {
            Ok(checked) => {
                self.saw(checked.report, 0.0);
                self.reason = checked.reason;
            }
            Err(err) => {
                self.lasting = err.is_setup_fault();
                self.reason = err.to_string();
            }
        }
    }

    /// The round could not tell whether accounts are lost, for `why`.
    pub(crate) fn could_not_tell(&mut self, why: impl std::fmt::Display, lasting: bool) {
        self.reason = format!("could not tell: {why}");
        self.lasting = lasting;
    }

    pub fn verdict_label(&self) -> &'static str {
        self.verdict.map(Verdict::as_str).unwrap_or("unknown")
    }

    /// What an alert would be about, or `None` when all is well.
    pub fn alerted_state(&self) -> Option<AlertedState> {
        let severity = match self.verdict {
            Some(Verdict::Ok) => return None,
            Some(Verdict::SuspectedReset) => 3,
            Some(Verdict::Loss) => 2,
            None if self.token_rejected => 1,
            None => return None,
        };
        let mut lost: Vec<String> = self.missing.iter().chain(&self.recreated).cloned().collect();
        lost.sort_unstable();
        lost.dedup();
        let mut taken = self.taken.clone();
        taken.sort_unstable();
        Some(AlertedState { severity, lost, taken, unlocked: self.unlocked_held.clone() })
    }

    /// The alert, in Markdown: what happened and what to do next. `in_room`:
    /// the admin room's text, which may reach someone lifeboat cannot vouch
    /// for (it names no unlocked held ID).
    pub fn alert_markdown(&self, server_name: &str, in_room: bool) -> String {
        let reason = self.reason.trim_end_matches('.');
        let mut text = match (self.verdict, self.token_rejected) {
            (Some(Verdict::SuspectedReset), _) => format!("**Suspected database reset on {server_name}.** {reason}."),
            (Some(Verdict::Loss), _) => format!("**Accounts lost on {server_name}.** {reason}."),
            (_, true) => format!("**lifeboat's admin token is rejected by {server_name}.** {reason}."),
            _ => format!("{server_name}: {reason}."),
        };
        if !self.missing.is_empty() {
            text.push_str(&format!("\n\nMissing ({}): {}", self.missing.len(), id_list(&self.missing, 20)));
        }
        if self.recovered {
            text.push_str("\n\nlifeboat re-created its own admin account through the shared secret.");
        }
        if !self.held.is_empty() || self.own.is_some() || self.not_held.is_some() {
            text.push_str("\n\n");
            text.push_str(&self.held_markdown());
        }
        let people: Vec<&String> = self.taken.iter().filter(|id| Some(*id) != self.taken_own.as_ref()).collect();
        if !people.is_empty() {
            text.push_str(&format!(
                "\n\n**Registered again by someone lifeboat cannot vouch for** ({}): {}. lifeboat treats them as strangers (no DMs, no web requests, never obeyed by the bot) and never changes them. If one is its owner, give it back with `lifeboat holds claim <id>` on the lifeboat host; otherwise deactivate it in Synapse.",
                people.len(),
                id_list(&people, 20)
            ));
        }
        if let Some(own) = &self.taken_own {
            text.push_str(&format!(
                "\n\n**lifeboat's own ID {own} was registered again by someone else.** Whoever has it can write as lifeboat to everyone lifeboat ever wrote to: deactivate it in Synapse. lifeboat cannot have it back; give it another account (create one, and put its ID in `bot.user_id` and its password in `bot.password`)."
            ));
        }
        if let Some(unlocked) = self.unlocked_markdown(in_room) {
            text.push_str(&format!("\n\n{unlocked}"));
        }
        if !self.taken_admins.is_empty() {
            text.push_str(&format!(
                "\n\n**An admin ID was taken: {}.** It is in bot.admins, but the bot will neither invite nor obey it until it is settled with `lifeboat holds claim` on the lifeboat host.",
                self.taken_admins.join(", ")
            ));
        }
        if matches!(self.verdict, Some(Verdict::Loss | Verdict::SuspectedReset)) {
            text.push_str(
                "\n\nNext: open an incident (`!lifeboat incident open <title>` with the postmortem below it, or \
                 `lifeboat incident open`), then `notify <id>`.",
            );
        }
        text
    }

    /// What to know and do about held IDs unlocked outside lifeboat, if any.
    /// `in_room`: a count only; whoever signs in to one of them has its
    /// person's ID, so the list goes by email and `lifeboat check` only.
    pub fn unlocked_markdown(&self, in_room: bool) -> Option<String> {
        if in_room && !self.unlocked_held.is_empty() {
            return Some(format!(
                "**Held IDs unlocked outside lifeboat** ({}): the alert email and `lifeboat check` on the lifeboat host name them. To do: {UNLOCKED_HELD_REMEDY}.",
                self.unlocked_held.len()
            ));
        }
        (!self.unlocked_held.is_empty()).then(|| format!(
            "**Held IDs unlocked outside lifeboat** (or by a hand-over lifeboat could not finish) ({}): {}. A held account must stay locked until its owner takes it back: whoever can sign in to one (single sign-on with that name, a password someone set) has that person's ID, and their rooms on other servers. lifeboat treats them as strangers' meanwhile. To do: {UNLOCKED_HELD_REMEDY}.",
            self.unlocked_held.len(),
            id_list(&self.unlocked_held, 20)
        ))
    }

    /// The taken IDs once, in order, and which of them are in `bot.admins`
    /// (named apart in the alert).
    pub(crate) fn settle_taken(&mut self, config: &Config) {
        self.taken.sort_unstable();
        self.taken.dedup();
        let admins: Vec<&str> =
            config.bot.iter().flat_map(|bot| bot.admins.iter().map(|admin| admin.as_str())).collect();
        self.taken_admins = self.taken.iter().filter(|id| admins.contains(&id.as_str())).cloned().collect();
        let own = crate::recover::service_user_id(config);
        self.taken_own = self.taken.iter().find(|id| id.as_str() == own.as_str()).cloned();
    }

    /// What this round held, in Markdown.
    pub fn held_markdown(&self) -> String {
        let held = (!self.held.is_empty()).then(|| format!(
            "Held for their owners ({}): {}. Nobody can register these IDs now; each owner takes theirs back with the claim link in their notice (`lifeboat holds list` shows them).",
            self.held.len(),
            id_list(&self.held, 20)
        ));
        let own = self.own.as_ref().map(|own| format!("{own}."));
        let not_held = self.not_held.as_ref().map(|NotHeld { ids, why }| format!(
            "**{ids}**: {why}. No registration token goes out while a lost ID is free (any token could register it): `notify` refuses, and tokens mailed from the bot wait. The watcher tries again every round; `lifeboat holds make` on the lifeboat host tries now and says why."
        ));
        held.into_iter().chain(own).chain(not_held).collect::<Vec<_>>().join("\n\n")
    }

    /// The subject of the message about this round's hold run.
    pub fn holds_subject(&self, server_name: &str) -> String {
        let held = (!self.held.is_empty()).then(|| {
            format!(
                "{} for their owners",
                crate::plural::count(self.held.len() as i64, "lost ID held", "lost IDs held")
            )
        });
        let not_held = self.not_held.as_ref().map(|NotHeld { ids, .. }| {
            format!(
                "{} not held yet: no registration token goes out",
                crate::plural::count(ids.count, "lost ID", "lost IDs")
            )
        });
        let told: Vec<String> = held.into_iter().chain(not_held).collect();
        if told.is_empty() {
            return format!("[lifeboat] {server_name}: lifeboat's own account was lost; see what became of it");
        }
        format!("[lifeboat] {server_name}: {}", told.join("; "))
    }
}

/// Rounds (and probes) that could not tell whether accounts are lost, as
/// the admins hear of them: once that has gone on for `alert_after` (at
/// once for a fault of lifeboat's setup, and again when a passing fault
/// becomes one), and once more when a round tells again. Until then a loss
/// would go unnoticed. Kept in the registry, so that a restart of serve
/// neither repeats it nor starts the clock again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unchecked {
    /// The first failure of this spell (ms since the epoch).
    since: Option<i64>,
    /// The last failure: a spell not heard of for long (serve stopped, a
    /// backup restored) starts afresh.
    #[serde(default)]
    last_failed: Option<i64>,
    /// A round failed in this spell: a good probe (which lists nothing)
    /// does not end it then.
    #[serde(default)]
    by_round: bool,
    /// Told, and whether as a setup fault.
    told: Option<bool>,
}

/// What the admins hear about rounds that could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UncheckedNews {
    /// Since `since` (ms since the epoch) nothing could tell.
    CannotTell { since: i64 },
    /// This round told again, after [`UncheckedNews::CannotTell`].
    TellsAgain { since: i64 },
}

/// What [`Unchecked`] is following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looked {
    /// A round, with its listing.
    Round,
    /// A probe between rounds (that could not tell: a good one is [`Unchecked::probe_fine`]).
    Probe,
}

/// How long [`Unchecked`] waits.
#[derive(Debug, Clone, Copy)]
pub struct UncheckedLimits {
    /// A spell this long is told (`watch.alert_unchecked_after`).
    pub alert_after: Duration,
    /// Failures further apart than this are two spells.
    pub stale_after: Duration,
}

impl Unchecked {
    /// Follows one more round, or a probe that could not tell (ended at
    /// `now`); what to tell, if anything.
    pub fn after(
        &mut self,
        seen: &Observation,
        looked: Looked,
        now: i64,
        limits: UncheckedLimits,
    ) -> Option<UncheckedNews> {
        let ms = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        // Every admin token rejected is alerted as such, and tells nothing either way.
        if seen.verdict.is_none() && seen.token_rejected {
            return None;
        }
        if seen.verdict.is_some() {
            let told = self.told.is_some();
            let since = std::mem::take(self).since;
            return since.filter(|_| told).map(|since| UncheckedNews::TellsAgain { since });
        }
        if self.told.is_none() && self.last_failed.is_some_and(|last| now.saturating_sub(last) > ms(limits.stale_after))
        {
            *self = Unchecked::default();
        }
        let since = *self.since.get_or_insert(now);
        // Once told, only a round that tells ends it: no gap matters.
        if self.told.is_none() {
            self.last_failed = Some(now);
        }
        self.by_round |= looked == Looked::Round;
        let lasted = now.saturating_sub(since) >= ms(limits.alert_after);
        let news = match self.told {
            None => seen.lasting || lasted,
            // What was told would pass; this will not: what to fix is news.
            Some(told_lasting) => seen.lasting && !told_lasting,
        };
        if !news {
            return None;
        }
        self.told = Some(seen.lasting);
        Some(UncheckedNews::CannotTell { since })
    }

    /// Worth recording over `kept` (what the registry has): anything but
    /// the last failure changed, or that moved on by `slack`.
    pub fn worth_keeping_over(&self, kept: &Unchecked, slack: Duration) -> bool {
        let slack = i64::try_from(slack.as_millis()).unwrap_or(i64::MAX);
        let moved = match (self.last_failed, kept.last_failed) {
            (Some(now), Some(then)) => now.saturating_sub(then) > slack,
            (now, then) => now != then,
        };
        moved || Unchecked { last_failed: kept.last_failed, ..self.clone() } != *kept
    }

    /// A probe found Synapse, lifeboat's token and the sampled accounts
    /// fine: that ends a spell only probes began, and nobody heard of (one
    /// told ends with a round that tells). True when that changed anything.
    pub fn probe_fine(&mut self) -> bool {
        if self.since.is_none() || self.by_round || self.told.is_some() {
            return false;
        }
        *self = Unchecked::default();
        true
    }
}

impl UncheckedNews {
    /// The subject, the Markdown for email (why, in full), and the Markdown
    /// for the admin room (which may hold someone lifeboat cannot vouch
    /// for: the URL, the accounts and the errors stay out); `seen`: this round.
    pub fn message(&self, seen: &Observation, server_name: &str) -> (String, String, String) {
        let why = ["could not tell whether accounts were lost: ", "could not tell: "]
            .iter()
            .find_map(|prefix| seen.reason.strip_prefix(prefix))
            .unwrap_or(&seen.reason)
            .trim_end_matches('.');
        match *self {
            UncheckedNews::CannotTell { since } => {
                let next = if seen.lasting {
                    "This will not pass by itself: it needs a change to lifeboat's setup."
                } else {
                    "lifeboat keeps trying; you will hear when it can tell again."
                };
                let head = format!(
                    "**lifeboat cannot tell whether accounts are lost on {server_name}** (since {}). Until it can, a loss would go unnoticed. {next}",
                    crate::registry::human_time(since)
                );
                (
                    format!("[lifeboat] {server_name}: cannot tell whether accounts are lost"),
                    format!("{head}\n\nWhy: {why}."),
                    format!(
                        "{head} Why is in the alert email and lifeboat's log; `lifeboat check` on the lifeboat host says it too."
                    ),
                )
            }
            UncheckedNews::TellsAgain { since } => {
                let text = format!(
                    "**lifeboat can tell again whether accounts are lost on {server_name}** (it could not from {} on).",
                    crate::registry::human_time(since)
                );
                (format!("[lifeboat] {server_name}: can tell again whether accounts are lost"), text.clone(), text)
            }
        }
    }
}

/// Lost IDs a hold run left free, and why the first of them was not held.
#[derive(Debug, Clone, Serialize)]
pub struct NotHeld {
    pub ids: UnheldLostIds,
    pub why: String,
}

/// What the last alert was about: how bad (1 token rejected, 2 loss,
/// 3 suspected reset) and which accounts were lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AlertedState {
    pub severity: u8,
    pub lost: Vec<String>,
    /// IDs taken by strangers before lifeboat could hold them.
    #[serde(default)]
    pub taken: Vec<String>,
    /// Held IDs unlocked outside lifeboat.
    #[serde(default)]
    pub unlocked: Vec<String>,
}

impl AlertedState {
    /// Worth an alert after `before`: worse than it, or with accounts lost
    /// that it did not name. People coming back (a shrinking list) are not
    /// news; a wipe seen first as a rejected token and then as a listing is
    /// one alert.
    pub fn is_news_after(&self, before: Option<&AlertedState>) -> bool {
        let Some(before) = before else { return true };
        self.severity > before.severity
            || any_new(&self.lost, &before.lost)
            || any_new(&self.taken, &before.taken)
            || any_new(&self.unlocked, &before.unlocked)
    }

    /// The only news after `before` is a held ID unlocked (the alert's
    /// subject then says so, not the loss it was already about).
    pub fn only_unlocked_is_news_after(&self, before: Option<&AlertedState>) -> bool {
        let Some(before) = before else { return false };
        let without = AlertedState { unlocked: before.unlocked.clone(), ..self.clone() };
        any_new(&self.unlocked, &before.unlocked) && !without.is_news_after(Some(before))
    }
}

/// Whether `now` names an ID `before` (sorted) did not.
fn any_new(now: &[String], before: &[String]) -> bool {
    now.iter().any(|id| before.binary_search(id).is_err())
}

/// The latest observation, shared with `/metrics` and the bot's `status`,
/// and the bot's wish for a listing soon.
#[derive(Clone, Default)]
pub struct WatchHandle {
    seen: Arc<RwLock<Observation>>,
    listing_wanted: Arc<(AtomicBool, Notify)>,
}

impl WatchHandle {
    pub fn current(&self) -> Observation {
        self.seen.read().map(|seen| seen.clone()).unwrap_or_default()
    }

    pub(crate) fn set(&self, observation: Observation) {
        if let Ok(mut seen) = self.seen.write() {
            *seen = observation;
        }
    }

    /// Asks the watcher for a listing as soon as its pacing allows (the
    /// bot, for a member of its admin room no listing has seen yet).
    pub fn want_listing(&self) {
        self.listing_wanted.0.store(true, Ordering::Relaxed);
        self.listing_wanted.1.notify_one();
    }

    /// Whether a listing was asked for since the last call.
    pub(crate) fn take_listing_wish(&self) -> bool {
        self.listing_wanted.0.swap(false, Ordering::Relaxed)
    }

    /// Until a listing is asked for (at once if one was since the last wait).
    pub(crate) async fn listing_asked(&self) {
        self.listing_wanted.1.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_rooms_alert_counts_unlocked_held_ids_and_names_none() {
        let seen = Observation {
            verdict: Some(Verdict::Loss),
            unlocked_held: vec!["@open:x".to_owned()],
            ..Observation::default()
        };
        assert!(seen.alert_markdown("x", false).contains("@open:x"), "the email names them");
        let room = seen.alert_markdown("x", true);
        assert!(room.contains("unlocked outside lifeboat** (1)") && !room.contains("@open:x"), "{room}");
        let alone = seen.unlocked_markdown(true).unwrap();
        assert!(!alone.contains("@open:x") && alone.contains("lifeboat check"), "{alone}");
    }

    #[test]
    fn what_became_of_lifeboats_own_id_is_told_with_the_held_ids_or_alone() {
        let own = "lifeboat's own account @lifeboat:x, lost too, is lifeboat's again".to_owned();
        let alone = Observation { own: Some(own.clone()), ..Observation::default() };
        assert_eq!(alone.held_markdown(), format!("{own}."));
        assert!(alone.alert_markdown("x", false).contains(&own));

        let with_others = Observation { held: vec!["@a:x".to_owned()], ..alone.clone() };
        let told = with_others.held_markdown();
        assert!(
            told.starts_with("Held for their owners (1): @a:x.") && told.ends_with(&format!("\n\n{own}.")),
            "{told}"
        );
    }

    #[test]
    fn lifeboats_own_id_taken_by_a_stranger_is_told_apart_and_never_offered_to_holds_claim() {
        let text = "[homeserver]\nurl = \"http://127.0.0.1:8008\"\nserver_name = \"x\"\n\n[registry]\nurl = \"sqlite://lifeboat.db\"\n";
        let config = Config::from_toml(text, std::path::Path::new("lifeboat.toml"), []).unwrap();
        let mut seen =
            Observation { taken: vec!["@lifeboat:x".to_owned(), "@b:x".to_owned()], ..Observation::default() };
        seen.settle_taken(&config);
        let alert = seen.alert_markdown("x", false);
        assert!(alert.contains("someone lifeboat cannot vouch for** (1): @b:x."), "{alert}");
        assert!(alert.contains("lifeboat's own ID @lifeboat:x was registered again by someone else"), "{alert}");
        assert!(alert.contains("`bot.user_id`"), "{alert}");

        seen.taken.retain(|id| id != "@b:x");
        seen.settle_taken(&config);
        assert!(!seen.alert_markdown("x", false).contains("holds claim"), "{}", seen.alert_markdown("x", false));
    }

    fn cannot_tell(lasting: bool) -> Observation {
        let mut seen = Observation::default();
        seen.could_not_tell("Synapse at http://x is unavailable: refused", lasting);
        seen
    }

    const HOUR: i64 = 3_600_000;
    const LIMITS: UncheckedLimits =
        UncheckedLimits { alert_after: Duration::from_secs(3600), stale_after: Duration::from_secs(2 * 3600) };

    /// A round that saw `seen`, at `now`.
    fn round(unchecked: &mut Unchecked, seen: &Observation, now: i64) -> Option<UncheckedNews> {
        unchecked.after(seen, Looked::Round, now, LIMITS)
    }

    fn ok() -> Observation {
        Observation { verdict: Some(Verdict::Ok), ..Observation::default() }
    }

    #[test]
    fn rounds_that_cannot_tell_are_told_once_they_last_and_once_more_when_one_tells() {
        let (mut unchecked, failing) = (Unchecked::default(), cannot_tell(false));
        assert_eq!(round(&mut unchecked, &failing, 0), None);
        assert_eq!(round(&mut unchecked, &failing, HOUR - 1), None);
        assert_eq!(round(&mut unchecked, &failing, HOUR), Some(UncheckedNews::CannotTell { since: 0 }));
        assert_eq!(round(&mut unchecked, &failing, 2 * HOUR), None, "once");
        assert_eq!(round(&mut unchecked, &ok(), 2 * HOUR + 1), Some(UncheckedNews::TellsAgain { since: 0 }));
        assert_eq!(round(&mut unchecked, &ok(), 2 * HOUR + 2), None);

        // A short spell nobody heard of ends unsaid; the next starts afresh.
        assert_eq!(round(&mut unchecked, &failing, 3 * HOUR), None);
        assert_eq!(round(&mut unchecked, &ok(), 3 * HOUR + 1), None);
        assert_eq!(round(&mut unchecked, &failing, 4 * HOUR), None);
        assert_eq!(round(&mut unchecked, &failing, 5 * HOUR - 1), None);
    }

    #[test]
    fn failures_further_apart_than_the_stale_gap_are_two_spells() {
        // serve stopped for a night in the middle of an untold spell.
        let (mut unchecked, failing) = (Unchecked::default(), cannot_tell(false));
        assert_eq!(round(&mut unchecked, &failing, 0), None);
        assert_eq!(round(&mut unchecked, &failing, 10 * HOUR), None, "the clock starts again");
        assert_eq!(round(&mut unchecked, &failing, 11 * HOUR), Some(UncheckedNews::CannotTell { since: 10 * HOUR }));
        // Once told, a gap does not make it news again.
        assert_eq!(round(&mut unchecked, &failing, 20 * HOUR), None);
    }

    #[test]
    fn failing_probes_are_recorded_when_the_spell_changes_not_every_time() {
        let (mut unchecked, failing) = (Unchecked::default(), cannot_tell(false));
        let slack = Duration::from_secs(60);
        let kept = unchecked.clone();
        unchecked.after(&failing, Looked::Probe, 0, LIMITS);
        assert!(unchecked.worth_keeping_over(&kept, slack), "a spell began");
        let kept = unchecked.clone();
        unchecked.after(&failing, Looked::Probe, 30_000, LIMITS);
        assert!(!unchecked.worth_keeping_over(&kept, slack));
        unchecked.after(&failing, Looked::Probe, 61_000, LIMITS);
        assert!(unchecked.worth_keeping_over(&kept, slack), "the last failure moved on");
        unchecked.after(&failing, Looked::Round, 62_000, LIMITS);
        assert!(unchecked.worth_keeping_over(&kept, slack), "a round failed");
    }

    #[test]
    fn a_good_probe_ends_a_spell_only_probes_began_and_nobody_heard_of() {
        let (mut unchecked, failing) = (Unchecked::default(), cannot_tell(false));
        assert_eq!(unchecked.after(&failing, Looked::Probe, 0, LIMITS), None);
        assert!(unchecked.probe_fine());
        assert_eq!(unchecked.after(&failing, Looked::Probe, HOUR, LIMITS), None, "a new spell");

        // A round failed: the probes' look at a sample is no listing.
        assert_eq!(round(&mut unchecked, &failing, HOUR + 1), None);
        assert!(!unchecked.probe_fine());
        let news = unchecked.after(&failing, Looked::Probe, 2 * HOUR, LIMITS);
        assert_eq!(news, Some(UncheckedNews::CannotTell { since: HOUR }));
        assert!(!unchecked.probe_fine(), "told: a round that tells ends it");
    }

    #[test]
    fn a_setup_fault_is_told_at_once_and_again_when_it_follows_a_passing_one() {
        let mut unchecked = Unchecked::default();
        let seen = cannot_tell(true);
        let news = round(&mut unchecked, &seen, 5);
        assert_eq!(news, Some(UncheckedNews::CannotTell { since: 5 }));
        assert_eq!(round(&mut unchecked, &seen, 10), None);
        let (subject, email, room) = news.unwrap().message(&seen, "x");
        assert_eq!(subject, "[lifeboat] x: cannot tell whether accounts are lost");
        assert!(email.contains("on x** (since 1970-01-01 00:00 UTC). Until it can, a loss would go unnoticed. This will not pass by itself"), "{email}");
        assert!(email.ends_with("Why: Synapse at http://x is unavailable: refused."), "{email}");
        assert!(!room.contains("http://x") && room.contains("`lifeboat check`"), "{room}");

        let mut unchecked = Unchecked::default();
        assert!(round(&mut unchecked, &cannot_tell(false), 0).is_none());
        assert!(round(&mut unchecked, &cannot_tell(false), HOUR).is_some());
        assert_eq!(round(&mut unchecked, &cannot_tell(true), HOUR + 1), Some(UncheckedNews::CannotTell { since: 0 }));
        assert_eq!(round(&mut unchecked, &cannot_tell(false), HOUR + 2), None);
    }

    #[test]
    fn a_rejected_token_neither_ends_nor_continues_a_spell() {
        let rejected = Observation { token_rejected: true, ..Observation::default() };
        let mut unchecked = Unchecked::default();
        assert!(round(&mut unchecked, &cannot_tell(true), 0).is_some());
        let before = unchecked.clone();
        assert_eq!(round(&mut unchecked, &rejected, 10), None);
        assert_eq!(unchecked, before);
    }

    #[test]
    fn lost_ids_a_hold_run_left_free_are_told_with_what_they_hold_back() {
        let ids = UnheldLostIds {
            count: 1,
            first: vec![crate::user_id::UserId::parse("@a:x").unwrap()],
            wipe_unlisted: None,
        };
        let seen = Observation {
            not_held: Some(NotHeld { ids, why: "@a:x could not be held (busy)".to_owned() }),
            ..Observation::default()
        };
        assert_eq!(seen.holds_subject("x"), "[lifeboat] x: 1 lost ID not held yet: no registration token goes out");
        let told = seen.held_markdown();
        assert!(
            told.starts_with(
                "**1 lost ID is not held yet (@a:x)**: @a:x could not be held (busy). No registration token goes out"
            ),
            "{told}"
        );
        let with_held = Observation { held: vec!["@b:x".to_owned()], ..seen };
        assert_eq!(
            with_held.holds_subject("x"),
            "[lifeboat] x: 1 lost ID held for their owners; 1 lost ID not held yet: no registration token goes out"
        );
        assert!(with_held.held_markdown().contains("not held yet"));
    }
}
