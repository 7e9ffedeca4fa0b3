//! Holding lost IDs for their owners.
//!
//! After a wipe any registration token (or anyone, with registration open)
//! can register a lost ID, and inherit its person's rooms on other servers.
//! So once a loss is known, lifeboat creates each lost ID still free
//! (create-only: it never changes an account it did not create), locks it
//! and gives back its verified emails; admins' IDs first, as the most worth
//! taking. Display names follow once every lost ID is held
//! ([`restore_held_names`]): a name costs Synapse more than the rest of a
//! hold, and until its hold an ID is anyone's. Its owner takes it back with
//! a claim link (`web::claim`), or an operator with `lifeboat holds claim`;
//! either brings a name not restored yet.
//!
//! Resumable after kill -9: a hold is recorded (`holding`) before the
//! create. An ID the rerun finds existing is the killed run's account if it
//! has no device (without a password, locked, nobody could log in), else a
//! stranger's, left alone.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use secrecy::SecretString;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HoldPolicy, RecoveryMode};
use crate::email::EmailAddress;
use crate::lease::{Held, Lease};
use crate::links::ClaimLink;
use crate::recover::{OwnFound, OwnMade, service_user_id};
use crate::registry::{self, Account, AccountState, Actor, ContactKind, HoldCandidate, OldName, Registry, now_ms};
use crate::synapse::{self, Creation, SynapseClient, ThreePid, UserDetails};
use crate::user_id::UserId;

/// Accounts created and locked at once. Synapse is one Python process:
/// more in flight only queue there.
pub const HOLD_CONCURRENCY: usize = 8;

/// What an admin does about held IDs unlocked outside lifeboat, in the
/// same words whichever face (CLI, bot, alert) reports them.
pub const UNLOCKED_HELD_REMEDY: &str =
    "lock them again in Synapse, or hand one to its owner with `lifeboat holds claim <id>` on the lifeboat host";

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(
        "Synapse refuses to create accounts (403), so lost IDs cannot be held: if the homeserver delegates accounts to Matrix Authentication Service, set recovery.mode = \"token\" (registration tokens only, not bound to IDs)"
    )]
    NotAllowed,
    #[error(
        "another hold run is under way ({holder}, until {until} at the latest): it holds every lost ID it finds; `lifeboat holds list` shows its progress"
    )]
    Busy { holder: String, until: String },
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// What a hold run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HoldReport {
    /// Newly held, in ID order.
    pub held: Vec<UserId>,
    /// Registered by someone else before lifeboat could hold them.
    pub taken: Vec<UserId>,
    /// Not held this time, with the reason (tried again on the next run).
    pub failed: Vec<(UserId, String)>,
    /// IDs Synapse makes for nobody (a guest's numeric name, a name it no
    /// longer allows, a bridge's namespace, another ID's case): no token can
    /// register them either. Recorded as such: later runs leave them be
    /// until a sync finds new accounts lost or `lifeboat holds make` tries again.
    pub unregistrable: Vec<UserId>,
    /// Stopped early: the holds begun were finished, the rest wait for the next run.
    pub stopped: bool,
    /// lifeboat's own ID, lost too: made lifeboat's again, not held.
    pub own_made_again: Option<UserId>,
    /// lifeboat's own ID, lost too, made again and locked, with why
    /// lifeboat cannot log in to it.
    pub own_locked: Option<(UserId, String)>,
}

impl HoldReport {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// What became of lifeboat's own ID, if this run took it.
    pub fn own_note(&self) -> Option<String> {
        if let Some(own) = &self.own_made_again {
            return Some(format!("lifeboat's own account {own}, lost too, is lifeboat's again"));
        }
        let (own, why) = self.own_locked.as_ref()?;
        Some(format!(
            "lifeboat's own account {own}, lost too, is made again and locked, but lifeboat cannot log in to it \
             ({why}): unlock it and give lifeboat a token of it in bot.access_token (Synapse's admin API logs in \
             as a user: POST /_synapse/admin/v1/users/<user_id>/login)"
        ))
    }

    pub fn summary(&self) -> String {
        let mut text = format!("Held {} lost IDs for their owners", self.held.len());
        if !self.taken.is_empty() {
            text.push_str(&format!(
                "; {} were registered by someone else first and are treated as strangers: {}",
                self.taken.len(),
                crate::plural::id_list(&self.taken, usize::MAX)
            ));
        }
        if !self.failed.is_empty() {
            text.push_str(&format!("; {} could not be held yet (tried again next time)", self.failed.len()));
        }
        if !self.unregistrable.is_empty() {
            text.push_str(&format!(
                "; {} are IDs Synapse makes for nobody now (nor can a token register them): {}",
                self.unregistrable.len(),
                crate::plural::id_list(&self.unregistrable, 10)
            ));
        }
        if let Some(note) = self.own_note() {
            text.push_str(&format!("; {note}"));
        }
        if self.stopped {
            text.push_str("; stopped before the rest, which the next run holds");
        }
        text
    }
}

/// Holds are made when `policy` says so for this moment: `at_incident` for
/// an incident being opened, else for the watcher seeing a loss.
pub fn holds_wanted(config: &Config, at_incident: bool) -> bool {
    match config.recovery.hold {
        HoldPolicy::Auto => true,
        HoldPolicy::OnIncident => at_incident,
        HoldPolicy::Off => false,
    }
}

/// Lost IDs not held yet, while holds are on: as long as there is one, no
/// registration token goes out (Synapse binds none to a name, so any token
/// could register it). The one rule for notices, the web page and the bot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnheldLostIds {
    pub count: i64,
    /// The first few, in ID order.
    pub first: Vec<UserId>,
    /// When lifeboat got back into a wiped Synapse, if no listing has been
    /// applied since: until one is, nobody knows which IDs were lost, and
    /// every ID may be free.
    pub wipe_unlisted: Option<i64>,
}

impl std::fmt::Display for UnheldLostIds {
    /// "2 lost IDs are not held yet (@a:x, @b:x)"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (0, Some(at)) = (self.count, self.wipe_unlisted) {
            let at = registry::format_time(at).unwrap_or_default();
            return write!(
                f,
                "at {at} lifeboat had to get back into Synapse, or found fewer accounts there than its last listing (as after a lost database), and no listing since has shown which IDs were lost (`lifeboat sync` lists them)"
            );
        }
        let more = self.count - self.first.len() as i64;
        let more = if more > 0 { format!(", and {more} more") } else { String::new() };
        let ids = crate::plural::id_list(&self.first, usize::MAX);
        let count = crate::plural::count(self.count, "lost ID is", "lost IDs are");
        write!(f, "{count} not held yet ({ids}{more})")
    }
}

impl UnheldLostIds {
    /// What an admin does to let tokens go out again.
    pub fn next_step(&self) -> String {
        self.ends_when(
            "hold them first (`lifeboat holds make` says why they are not)",
            "let a listing show who was lost (`lifeboat sync`, or serve's watcher within a round)",
        )
    }

    /// What ends the wait: `holds` while IDs are unheld, `listing` while a
    /// wipe is unlisted, or both.
    fn ends_when(&self, holds: &str, listing: &str) -> String {
        match (self.count > 0, self.wipe_unlisted.is_some()) {
            (false, _) => listing.to_owned(),
            (true, false) => holds.to_owned(),
            (true, true) => format!("{holds}, and {listing}"),
        }
    }
}

/// [`UnheldLostIds`] now, if there are any and holds are on.
pub async fn tokens_withheld(config: &Config, registry: &Registry) -> Result<Option<UnheldLostIds>, registry::Error> {
    if !holds_wanted(config, true) {
        return Ok(None);
    }
    unheld_lost_ids(registry).await
}

/// The lost IDs not held yet, or a wipe no listing has shown yet
/// ([`Registry::wipe_unlisted`]); `None` when there are neither.
async fn unheld_lost_ids(registry: &Registry) -> Result<Option<UnheldLostIds>, registry::Error> {
    let (count, first) = registry.unheld_lost_ids(3).await?;
    let wipe_unlisted = registry.wipe_unlisted().await?;
    Ok((count > 0 || wipe_unlisted.is_some()).then_some(UnheldLostIds { count, first, wipe_unlisted }))
}

/// How long serve's worker holds back mail with a token while lost IDs are
/// still to be held (a hold run takes minutes for a big wipe).
const WAIT_FOR_HOLDS: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Holds back the mail with a registration token that serve's worker was
/// left ([`Registry::hold_back_tokens`]: an incident's notices, or the bot's
/// token mails) while `unheld` are not held; what to log, if any was.
pub async fn hold_back_tokens(
    config: &Config,
    registry: &Registry,
    incident: Option<i64>,
    unheld: &UnheldLostIds,
) -> Result<Option<String>, registry::Error> {
    if hold_back(registry, incident, &held_back_for(unheld)).await? == 0 {
        return Ok(None);
    }
    let holding = match config.recovery.hold {
        HoldPolicy::Auto => "serve's watcher is holding them",
        _ => "with recovery.hold = \"on-incident\" nothing holds them until `lifeboat holds make` (or a notify) runs",
    };
    let ends = unheld.ends_when(holding, "serve's watcher lists Synapse within a round");
    Ok(Some(format!("wait: {unheld}; {ends}")))
}

/// [`hold_back_tokens`] again as a send run claims its next rows, whose
/// start already logged it: mail that came due during the run (a retry
/// waited for) waits too.
pub async fn hold_back_due_tokens(registry: &Registry, incident: Option<i64>) -> Result<(), registry::Error> {
    if let Some(unheld) = unheld_lost_ids(registry).await? {
        hold_back(registry, incident, &held_back_for(&unheld)).await?;
    }
    Ok(())
}

/// IDs an application service had (a bridge's users) that it registered
/// again after a loss are its own, as a survivor's are: Synapse lets only
/// that service register an ID in its namespace. Asked of Synapse for each
/// such ID a listing found taken, at `pace`, until `stop`: those settled.
/// One registered by anyone else is not asked about again; one Synapse
/// cannot tell of now is asked again by the next sync.
pub async fn settle_appservice_ids(
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    pace: Option<f64>,
    stop: &CancellationToken,
) -> Result<Vec<UserId>, registry::Error> {
    let taken = registry.taken_appservice_ids().await?;
    let asked = crate::pace::call_in_paced_groups(taken, HOLD_CONCURRENCY, pace, stop, |(user_id, appservice)| async {
        (client.user_details(user_id.as_str()).await, user_id, appservice)
    });
    let mut asked = std::pin::pin!(asked);
    let mut settled = Vec::new();
    while let Some((details, user_id, appservice)) = asked.next().await {
        match details {
            Ok(Some(details)) if details.appservice_id.as_deref() == Some(appservice.as_str()) => {
                registry.settle_as_its_appservices(&user_id, details.created_at_ms(), actor).await?;
                tracing::info!(user_id = %user_id, appservice, "registered again by its application service");
                settled.push(user_id);
            }
            Ok(Some(_)) => registry.forget_appservice(&user_id).await?,
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(user_id = %user_id, error = %err, "could not ask Synapse who registered an application service's ID again");
            }
        }
    }
    Ok(settled)
}

/// [`hold_back_tokens`] while it cannot be told whether a lost ID is free
/// (`unsure`: why Synapse could not be asked); what to log, if any was.
pub async fn hold_back_tokens_unsure(
    registry: &Registry,
    incident: Option<i64>,
    unsure: &str,
) -> Result<Option<String>, registry::Error> {
    let held = hold_back(registry, incident, &format!("held back: {unsure}")).await?;
    Ok((held > 0).then(|| format!("wait: {unsure}; they are tried again within 5 minutes")))
}

/// The why of a mail with a token held back while `unheld` are not held.
fn held_back_for(unheld: &UnheldLostIds) -> String {
    format!("held back: {unheld}, and its registration token could register one")
}

/// How many of the due mails with a token [`Registry::hold_back_tokens`]
/// held back, for [`WAIT_FOR_HOLDS`], saying `why`.
async fn hold_back(registry: &Registry, incident: Option<i64>, why: &str) -> Result<u64, registry::Error> {
    let until = now_ms() + WAIT_FOR_HOLDS.as_millis() as i64;
    registry.hold_back_tokens(incident, until, why).await
}

/// Holds every lost ID that is not held yet (idempotent: held ones are
/// skipped, interrupted ones resumed), and, when `retry_refused`, those
/// Synapse refused to create before. `progress` hears (done, total).
/// Once `stop` is cancelled no new hold begins; those under way finish
/// (a big wipe takes hours to hold, and serve must be able to stop).
pub async fn hold_lost_ids(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
    retry_refused: bool,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
    stop: &CancellationToken,
) -> Result<HoldReport, HoldError> {
    // One run at a time across processes: a second would find an ID the
    // first just created existing, and record lifeboat's hold as a stranger's.
    let work = async {
        let own_id = &service_user_id(config);
        let mut candidates = registry.hold_candidates(retry_refused).await?;
        let bot_admins = config.bot.as_ref().map_or(&[][..], |bot| bot.admins.as_slice());
        let server_name = &config.homeserver.server_name;
        // When IDs were lost, the bot's admin IDs no listing saw (made after
        // the last one, or not yet) are held too: anyone could register one and
        // command the bot. Its owner takes it back with `holds claim`.
        if !candidates.is_empty() {
            registry.adopt_as_lost(&config.local_bot_admins()).await?;
        }
        // So are rooms' members no listing saw that are lost: whoever
        // registered one would be let into its rooms.
        let lost_members = unseen_room_members_lost(registry, client, server_name).await?;
        let members: Vec<&UserId> = lost_members.iter().collect();
        registry.adopt_as_lost(&members).await?;
        if !candidates.is_empty() || !members.is_empty() {
            candidates = registry.hold_candidates(retry_refused).await?;
        }
        admins_first(&mut candidates, bot_admins);
        let total = candidates.len() as u64;
        let mut report = HoldReport::default();
        // A Synapse that refuses the first creations (accounts delegated to
        // Matrix Authentication Service) refuses them all: no new hold starts.
        // Set only while nothing is held, so at the end it also means "refused,
        // and none held".
        let refused = std::sync::atomic::AtomicBool::new(false);
        let mut outcomes = futures::stream::iter(candidates)
            .take_while(|_| std::future::ready(!stop.is_cancelled() && !refused.load(Ordering::Relaxed)))
            .map(|candidate| async move {
                let user_id = candidate.user_id.clone();
                let own = (user_id == *own_id).then_some(config);
                (user_id, hold_one(registry, client, candidate, own, actor).await)
            })
            .buffer_unordered(HOLD_CONCURRENCY);
        let mut done = 0;
        while let Some((user_id, outcome)) = outcomes.next().await {
            done += 1;
            progress(done, total);
            match outcome {
                Ok(Outcome::Held) => report.held.push(user_id),
                Ok(Outcome::OwnMadeAgain) => report.own_made_again = Some(user_id),
                Ok(Outcome::OwnLocked(why)) => report.own_locked = Some((user_id, why)),
                Ok(Outcome::Taken) => report.taken.push(user_id),
                Ok(Outcome::Failed(reason)) => report.failed.push((user_id, reason)),
                Ok(Outcome::Unregistrable) => report.unregistrable.push(user_id),
                Ok(Outcome::NotAllowed) => {
                    if report.held.is_empty() {
                        refused.store(true, Ordering::Relaxed);
                    }
                    report.failed.push((user_id, "Synapse refused to create it (403)".to_owned()));
                }
                Err(err) => return Err(err.into()),
            }
        }
        report.stopped = done < total;
        if refused.load(Ordering::Relaxed) && report.held.is_empty() {
            return Err(HoldError::NotAllowed);
        }
        report.held.sort_unstable();
        report.taken.sort_unstable();
        report.failed.sort_unstable();
        report.unregistrable.sort_unstable();
        if !report.is_empty() {
            registry.audit(actor, "hold.run", None, Some(&report.summary())).await?;
        }
        Ok::<_, HoldError>(report)
    };
    Lease::run(registry, "holds", work)
        .await?
        .unwrap_or_else(|Held { holder, until }| Err(HoldError::Busy { holder, until }))
}

/// Puts the IDs most worth taking first: the bot's admins (whoever holds
/// one commands the bot), then the server's admins, each in ID order.
fn admins_first(candidates: &mut [HoldCandidate], bot_admins: &[UserId]) {
    let rank = |candidate: &HoldCandidate| (!bot_admins.contains(&candidate.user_id), candidate.admin == 0);
    candidates.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.user_id.as_str().cmp(b.user_id.as_str())));
}

enum Outcome {
    Held,
    /// lifeboat's own account is lifeboat's again ([`crate::recover::make_own_account_lifeboats`]).
    OwnMadeAgain,
    /// lifeboat's own account is made again and locked, and lifeboat cannot log in (why).
    OwnLocked(String),
    Taken,
    Failed(String),
    NotAllowed,
    Unregistrable,
}

/// A stranger's account found where the hold was to be, unless another
/// hold run settled the ID meanwhile.
fn taken(marked: bool) -> Outcome {
    if marked { Outcome::Taken } else { settled_meanwhile() }
}

/// Another hold run (one that outlived its lease, say) began or settled the
/// ID while this one worked on it: this run's account is no hold of record.
fn settled_meanwhile() -> Outcome {
    Outcome::Failed("another hold run settled it meanwhile (`lifeboat holds list` shows how)".to_owned())
}

/// Holds one lost ID; `own` (the config) when it is lifeboat's own, which is
/// made lifeboat's again instead of held: whoever registered it could write
/// as lifeboat to everyone it ever wrote to.
async fn hold_one(
    registry: &Registry,
    client: &SynapseClient,
    candidate: HoldCandidate,
    own: Option<&Config>,
    actor: &Actor,
) -> Result<Outcome, registry::Error> {
    let user_id = &candidate.user_id;
    let resumed = candidate.begun_before != 0;
    if !resumed && !registry.begin_hold(user_id).await? {
        return Ok(settled_meanwhile());
    }
    let mut creation = client.create_account_if_free(user_id.as_str()).await;
    // "In use" is also what Synapse says when the very ID was registered a
    // moment before (a race with its own check): then it is someone's.
    if let Err(synapse::Error::Rejected { status: 400, errcode, .. }) = &creation
        && errcode == "M_USER_IN_USE"
    {
        match client.user_details(user_id.as_str()).await {
            Ok(Some(_)) => creation = Ok(Creation::Existed),
            // Another ID's case: nobody can have this one.
            Ok(None) => {}
            Err(err) => return Ok(Outcome::Failed(err.to_string())),
        }
    }
    // lifeboat's own account, made by an interrupted run or a recovery,
    // takes the password only lifeboat knows: it is kept as it is.
    if let (Some(config), Ok(Creation::Existed)) = (own, &creation) {
        match crate::recover::own_login(config, registry, None).await {
            Ok(Some(login)) => {
                return Ok(own_made_again(config, registry, client, OwnFound::LoggedIn(login), actor).await);
            }
            Err(err) if err.is_transient() => return Ok(Outcome::Failed(err.to_string())),
            // Password logins refused (turned off, say): as any account found.
            Ok(None) | Err(_) => {}
        }
    }
    let created_at_ms = match creation {
        Ok(Creation::Created { created_at_ms }) => created_at_ms,
        Ok(Creation::Existed) if resumed => match client.device_count(user_id.as_str()).await {
            // An interrupted run's account, unused: keep its creation time
            // as a fresh hold does (the registry's is the lost account's).
            Ok(0) => {
                let details = match client.user_details(user_id.as_str()).await {
                    Ok(Some(details)) => details,
                    Ok(None) => return Ok(Outcome::Failed("its account went away meanwhile".to_owned())),
                    Err(err) => return Ok(Outcome::Failed(err.to_string())),
                };
                let persons = registry.persons_verified_emails(user_id).await?;
                if !may_be_the_interrupted_runs(&details, &persons) {
                    return Ok(taken(registry.mark_taken_before_hold(user_id, actor).await?));
                }
                details.created_at_ms()
            }
            Ok(_) => return Ok(taken(registry.mark_taken_before_hold(user_id, actor).await?)),
            Err(err) => return Ok(Outcome::Failed(err.to_string())),
        },
        Ok(Creation::Existed) => return Ok(taken(registry.mark_taken_before_hold(user_id, actor).await?)),
        Err(synapse::Error::Forbidden { .. }) => {
            registry.abandon_hold(user_id, None).await?;
            return Ok(Outcome::NotAllowed);
        }
        // Synapse's own rule for every new account, registrations too.
        Err(synapse::Error::Rejected { status: 400, ref errcode, .. })
            if matches!(errcode.as_str(), "M_INVALID_USERNAME" | "M_EXCLUSIVE" | "M_USER_IN_USE") =>
        {
            registry.abandon_hold(user_id, Some(errcode)).await?;
            return Ok(Outcome::Unregistrable);
        }
        // Maybe created, maybe not (a timeout): stays `holding`, and the
        // rerun tells which by the devices.
        Err(err) if err.is_transient() => return Ok(Outcome::Failed(err.to_string())),
        Err(err) => {
            registry.abandon_hold(user_id, None).await?;
            return Ok(Outcome::Failed(err.to_string()));
        }
    };
    if let Some(config) = own {
        let display_name = candidate.display_name.clone();
        let made = OwnFound::Made { created_at_ms, display_name };
        return Ok(own_made_again(config, registry, client, made, actor).await);
    }
    let free = match free_emails(registry, client, user_id).await {
        Ok(free) => free,
        Err(HandOverError::Registry(err)) => return Err(err),
        Err(err) => return Ok(Outcome::Failed(err.to_string())),
    };
    // Locked before it counts as held; a failure here is resumed the same way.
    if let Err(err) = client.lock_held_account(user_id.as_str(), &free).await {
        return Ok(Outcome::Failed(err.to_string()));
    }
    if !registry.mark_held(user_id, created_at_ms, candidate.display_name.is_some()).await? {
        return Ok(settled_meanwhile());
    }
    tracing::info!(%user_id, "held a lost ID for its owner");
    Ok(Outcome::Held)
}

/// [`crate::recover::make_own_account_lifeboats`], as a hold's outcome.
async fn own_made_again(
    config: &Config,
    registry: &Registry,
    client: &SynapseClient,
    found: OwnFound,
    actor: &Actor,
) -> Outcome {
    match crate::recover::make_own_account_lifeboats(config, registry, client, found, actor).await {
        Ok(OwnMade::Lifeboats) => Outcome::OwnMadeAgain,
        Ok(OwnMade::LockedOnly(why)) => Outcome::OwnLocked(why),
        Ok(OwnMade::SettledMeanwhile) => settled_meanwhile(),
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

/// Can the unused account found where an interrupted hold run was making
/// one be that run's? A stranger may have registered the ID meanwhile and
/// logged out: an account someone ever used (Synapse remembers when its
/// tokens were last seen, logged out or not), or one bearing an address
/// that is not its person's (`persons`), is not lifeboat's, which uses no
/// held account and gives it only the person's. (Rooms tell nothing:
/// Synapse's `auto_join_rooms` puts a hold in some.)
fn may_be_the_interrupted_runs(details: &UserDetails, persons: &[EmailAddress]) -> bool {
    if details.last_seen_ts.is_some() {
        return false;
    }
    let persons_own = |threepid: &ThreePid| {
        threepid.medium == "email"
            && persons.iter().any(|address| address.as_str().eq_ignore_ascii_case(&threepid.address))
    };
    details.threepids.iter().flatten().all(persons_own)
}

/// What a [`restore_held_names`] run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NamesReport {
    pub restored: u64,
    /// No longer held on Synapse (gone after another wipe, or unlocked: a
    /// stranger's account now): left alone, for the next sync to settle.
    pub not_held: u64,
    /// Not restored this time (tried again on the next run).
    pub failed: u64,
    /// Why the first of those failed.
    pub first_failure: Option<String>,
    /// Asked to stop before every name was restored.
    pub stopped: bool,
}

/// Gives held accounts back their display names (see the module's header).
/// Resumable: a name stays due until Synapse has it. One run at a time
/// across processes: `None` when another is under way (it restores them all).
pub async fn restore_held_names(
    registry: &Registry,
    client: &SynapseClient,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
    stop: &CancellationToken,
) -> Result<Option<NamesReport>, registry::Error> {
    let work = async {
        let due = registry.held_names_due().await?;
        let total = due.len() as u64;
        let mut report = NamesReport::default();
        // A claim meanwhile sets the same name itself; setting it again is harmless.
        let mut outcomes = futures::stream::iter(due)
            .take_while(|_| std::future::ready(!stop.is_cancelled()))
            .map(|(user_id, name)| async move {
                let outcome = restore_name_if_still_held(client, user_id.as_str(), &name).await;
                (user_id, outcome)
            })
            .buffer_unordered(HOLD_CONCURRENCY);
        while let Some((user_id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(true) => {
                    registry.held_name_restored(&user_id).await?;
                    report.restored += 1;
                }
                Ok(false) => report.not_held += 1,
                Err(err) => {
                    report.failed += 1;
                    report.first_failure.get_or_insert_with(|| err.to_string());
                }
            }
            progress(report.restored + report.not_held + report.failed, total);
        }
        report.stopped = report.restored + report.not_held + report.failed < total;
        Ok(report)
    };
    Lease::run(registry, "hold-names", work).await?.map_or(Ok(None), |outcome| outcome.map(Some))
}

/// Sets a held account's display name if Synapse still has it locked (the
/// registry's word is minutes old: after another wipe, whoever registered
/// the ID first must not get the person's name); `false` if not held.
async fn restore_name_if_still_held(client: &SynapseClient, user_id: &str, name: &str) -> Result<bool, synapse::Error> {
    match client.user_details(user_id).await? {
        Some(details) if details.locked => client.set_display_name(user_id, name).await.map(|()| true),
        _ => Ok(false),
    }
}

/// Why it cannot be told whose an account is now.
#[derive(Debug, thiserror::Error)]
pub enum CannotTell {
    #[error("cannot ask Synapse whose account this is now: {0}")]
    Synapse(#[from] synapse::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

impl CannotTell {
    /// Will fail the same way until someone changes lifeboat's setup.
    pub fn is_setup_fault(&self) -> bool {
        matches!(self, CannotTell::Synapse(err) if err.is_setup_fault())
    }
}

/// Is the account on Synapse now the registry's person's under `user_id`
/// ([`Account::speaks_for_its_person`], told by when Synapse made it)?
/// Until a listing shows it, an ID registered again after a wipe still
/// reads as present. No account on Synapse: no. An ID the registry never
/// saw: no, since after a wipe anyone may have registered it; what comes
/// from it (an admin's command, a contact added by DM, a code) must be a
/// person's.
pub async fn its_persons_now(
    registry: &Registry,
    synapse: &SynapseClient,
    user_id: &UserId,
) -> Result<bool, CannotTell> {
    let Some(known) = registry.account(user_id).await? else { return Ok(false) };
    let Some(details) = synapse.user_details(user_id.as_str()).await? else { return Ok(false) };
    Ok(known.speaks_for_its_person(details.created_at_ms()))
}

/// Can only the registry's person read through `user_id` now? Yes while
/// its account is theirs ([`its_persons_now`]), while it has no account on
/// Synapse (a lost ID nobody registered yet), or while lifeboat holds it
/// (locked). No for anyone else's account on the ID: a stranger after a
/// loss, or an account no listing has seen yet.
pub async fn read_by_its_person_or_nobody(
    registry: &Registry,
    synapse: &SynapseClient,
    user_id: &UserId,
) -> Result<bool, CannotTell> {
    let known = registry.account(user_id).await?;
    let Some(details) = synapse.user_details(user_id.as_str()).await? else { return Ok(true) };
    Ok(known.is_some_and(|account| match account.state {
        // lifeboat's hold: locked, and the very account it made (not one
        // registered after another wipe, before a listing saw it).
        AccountState::Held => {
            details.locked && !crate::reconcile::registered_again(account.synapse_created_at, details.created_at_ms())
        }
        _ => account.speaks_for_its_person(details.created_at_ms()),
    }))
}

/// Does a DM to `address` reach the person it is a contact of, as far as
/// the registry knows? A Matrix ID of this homeserver (`server_name`) does
/// only while it is its person's (`standing`): lost, held, registered again
/// by someone else, or unknown, whoever has it reads their token and claim
/// link. One rule for sending a notice and for taking its link.
pub fn dm_reaches_its_person(address: &str, server_name: &str, standing: Option<AccountState>) -> bool {
    let local = UserId::parse(address).is_ok_and(|id| id.server_name() == server_name);
    !local || standing.is_some_and(AccountState::is_its_persons)
}

/// What a person asking again for a way back in (the web page's `/token`,
/// an admin's `token` command) is sent. One rule for every face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WayBack {
    /// Their ID is held for them: a link to take it back.
    Claim(ClaimLink),
    /// A registration token (for a new name when their ID is not theirs to
    /// take back), issued for this incident, and what it leaves their old
    /// username to.
    Token { incident: i64, old_name: OldName },
    /// Nothing, for this reason (for admins; a stranger learns nothing).
    Nothing(&'static str),
}

pub async fn way_back(
    config: &Config,
    registry: &Registry,
    user_id: &UserId,
    claim_valid_for: std::time::Duration,
) -> Result<WayBack, registry::Error> {
    if *user_id == service_user_id(config) {
        return Ok(WayBack::Nothing("it is lifeboat's own account"));
    }
    let Some(account) = registry.account(user_id).await? else {
        return Ok(WayBack::Nothing("the account is not in the registry"));
    };
    let Some(incident) = registry.open_incident_affecting(user_id).await? else {
        return Ok(WayBack::Nothing("the account is not affected by an open incident"));
    };
    if !account.may_come_back() {
        return Ok(WayBack::Nothing("an admin had locked or deactivated the account before it was lost"));
    }
    // As for notices: only a person who lost the use of their ID needs a
    // way back, and any token could take a lost ID that is not held.
    match account.state {
        AccountState::Claimed => return Ok(WayBack::Nothing("the account was handed back to its owner already")),
        AccountState::Present => return Ok(WayBack::Nothing("the account still works: it needs no way back in")),
        _ => {}
    }
    let claim =
        claim_link(account.user_id.as_str(), account.state, account.custody_at, true, incident, claim_valid_for)
            .filter(|_| config.recovery.mode == RecoveryMode::Reclaim);
    Ok(claim.map_or(WayBack::Token { incident, old_name: account.old_name() }, WayBack::Claim))
}

/// The link that hands a held ID back to its person, valid for
/// `valid_for`, when the ID is held and its person may come back; the one
/// rule for notices and for `way_back`.
pub fn claim_link(
    user_id: &str,
    state: AccountState,
    hold: Option<i64>,
    may_come_back: bool,
    incident: i64,
    valid_for: std::time::Duration,
) -> Option<ClaimLink> {
    if state != AccountState::Held || !may_come_back {
        return None;
    }
    Some(ClaimLink {
        account: user_id.to_owned(),
        incident,
        hold: hold?,
        until: now_ms() + valid_for.as_millis() as i64,
    })
}

/// What a claim link finds.
#[derive(Debug)]
pub enum ClaimCheck {
    /// It may be used: the hold it names stands, for an open incident.
    Usable(Box<Account>),
    /// The ID was registered by someone else before lifeboat could hold it.
    Taken,
    /// Forged, expired, used, or for a hold or incident that is over.
    Dead,
}

/// Checks a claim link, as sent to the contact `contact_id`, and what it
/// names (the one place that decides).
pub async fn check_claim(
    registry: &Registry,
    key: &SecretString,
    link: &ClaimLink,
    contact_id: i64,
    sig: &str,
) -> Result<ClaimCheck, registry::Error> {
    if link.account.len() > 255 || link.until <= now_ms() {
        return Ok(ClaimCheck::Dead);
    }
    // Only while the contact it went to is still the person's: an address
    // they or an admin removed (lapsed, and someone else's now, say) must
    // not hand their ID to whoever reads it.
    let contact = registry.contact(contact_id).await?;
    // Verified whether or not there is such a contact: the answer's time
    // tells nobody which contact numbers exist.
    let address = contact.as_ref().map_or("", |contact| contact.address.as_str());
    let signed = link.verify(key, contact_id, address, sig);
    let Some(contact) = contact.filter(|contact| signed && contact.user_id == link.account) else {
        return Ok(ClaimCheck::Dead);
    };
    let Ok(user_id) = UserId::parse(&link.account) else { return Ok(ClaimCheck::Dead) };
    // An address opted out of (or dropped in Synapse) may have lapsed and
    // be someone else's mailbox by now, as for `/token/open`'s links.
    if contact.kind == ContactKind::Email
        && !registry.mailable_contacts_of(&user_id).await?.iter().any(|mailable| mailable.id == contact_id)
    {
        return Ok(ClaimCheck::Dead);
    }
    if contact.kind == ContactKind::Matrix {
        let standing = match UserId::parse(&contact.address) {
            Ok(id) => registry.account(&id).await?.map(|account| account.state),
            Err(_) => None,
        };
        if !dm_reaches_its_person(&contact.address, user_id.server_name(), standing) {
            return Ok(ClaimCheck::Dead);
        }
    }
    if !registry.incident_open_for(link.incident, &user_id).await? {
        return Ok(ClaimCheck::Dead);
    }
    let Some(account) = registry.account(&user_id).await? else { return Ok(ClaimCheck::Dead) };
    // A link made while the hold was under way names a hold that its
    // making replaces, and a claim now would be locked again by it.
    if registry.hold_under_way(&user_id).await? {
        return Ok(ClaimCheck::Dead);
    }
    Ok(match account.state {
        AccountState::Recreated => ClaimCheck::Taken,
        AccountState::Held if account.custody_at == Some(link.hold) && account.may_come_back() => {
            ClaimCheck::Usable(Box::new(account))
        }
        _ => ClaimCheck::Dead,
    })
}

/// Why a new password is refused, if it is; stated the same on the page.
pub fn password_problem(password: &str, user_id: &str) -> Option<&'static str> {
    let localpart = user_id.trim_start_matches('@').split(':').next().unwrap_or_default();
    let distinct: std::collections::HashSet<char> = password.chars().collect();
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Some("The password is too short: use at least 10 characters.")
    } else if password.chars().count() > MAX_PASSWORD_CHARS {
        Some("The password is too long: use at most 512 characters.")
    } else if distinct.len() < 4 {
        Some("The password repeats too few characters: use at least 4 different ones.")
    } else if localpart.chars().count() >= MIN_NAME_IN_PASSWORD
        && password.to_lowercase().contains(&localpart.to_lowercase())
    {
        Some("The password must not contain your user name.")
    } else {
        None
    }
}

pub const MIN_PASSWORD_CHARS: usize = 10;
/// Synapse's own limit, in characters (Python's `len`); the page's
/// `maxlength` counts UTF-16 units, so it is stricter, never laxer.
pub const MAX_PASSWORD_CHARS: usize = 512;

/// A user name shorter than this (`@al`) is no guessable part of a
/// password: refusing every password with its letters in would refuse most.
const MIN_NAME_IN_PASSWORD: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("Synapse did not take the new password: {0}")]
    Synapse(#[from] synapse::Error),
    #[error("could not ask Synapse about the account: {0}")]
    Lookup(synapse::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(
        "lifeboat is holding {0} right now: run this again once the hold is made (`lifeboat holds list` shows it as held)"
    )]
    HoldUnderWay(String),
    #[error(
        "{0} is being handed over right now (by its claim link or another `lifeboat holds claim`): wait a minute, then see `lifeboat holds list`"
    )]
    UnderWay(String),
    #[error("{0} is no longer held or taken as it was (its owner claimed it meanwhile?): nothing was changed")]
    NoLongerHeld(String),
}

/// Runs `work` under the ID's hand-over lease, one at a time across
/// processes and faces: a second would set another password while the
/// first names one that no longer works.
pub async fn one_hand_over<T>(
    registry: &Registry,
    user_id: &UserId,
    work: impl Future<Output = T>,
) -> Result<T, HandOverError> {
    let lease = Lease::run(registry, &registry::hand_over_lease(user_id), work).await?;
    lease.map_err(|_| HandOverError::UnderWay(user_id.to_string()))
}

/// What a claim link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Handed over: the account is its person's again.
    Done,
    /// Nothing to hand over (another use of the link won, or the held
    /// account is gone or someone else's now).
    Dead,
    /// The held account is unlocked already (a hand-over whose answer never
    /// came back, or an admin's doing): no password is set over it.
    Unlocked,
}

/// Hands a held ID to the person who proved it is theirs by its claim
/// link: unlocks it with their new password (logging out every device),
/// then records it claimed.
pub async fn claim_held(
    registry: &Registry,
    client: &SynapseClient,
    account: &Account,
    password: &SecretString,
    actor: &Actor,
) -> Result<Claim, HandOverError> {
    let Some(hold) = account.custody_at else { return Ok(Claim::Dead) };
    // Read again under the hand-over's lease: a claim that ended a moment
    // ago leaves nothing to hand over.
    let now = registry.account(&account.user_id).await?;
    let Some(now) = now.filter(|now| now.state == AccountState::Held && now.custody_at == Some(hold)) else {
        return Ok(Claim::Dead);
    };
    // Synapse's word too: the account must be the one lifeboat holds, locked.
    // After another wipe it may be gone or a stranger's; after a hand-over
    // whose answer never came (or an admin's unlock) it is unlocked with a
    // password someone chose, and the link must not set another.
    let on_synapse = client.user_details(account.user_id.as_str()).await.map_err(HandOverError::Lookup)?;
    let Some(details) = on_synapse
        .filter(|details| !crate::reconcile::registered_again(now.synapse_created_at, details.created_at_ms()))
    else {
        tracing::warn!(user_id = %account.user_id, "a claim link was used for a held ID whose account is gone from Synapse or someone else's: refused");
        return Ok(Claim::Dead);
    };
    if !details.locked {
        tracing::warn!(user_id = %account.user_id, "a claim link was used for a held ID whose account is unlocked on Synapse (a hand-over whose answer never came back, or an admin's unlock): no password set; settle it with `lifeboat holds claim`");
        return Ok(Claim::Unlocked);
    }
    let name = account.display_name_to_restore();
    let emails = free_emails(registry, client, &account.user_id).await?;
    client.hand_over_account(account.user_id.as_str(), password, account.admin, name, &emails).await?;
    let claimed = registry.claim_hold(&account.user_id, hold, actor).await?;
    Ok(if claimed { Claim::Done } else { Claim::Dead })
}

/// The person's verified addresses that no other account has now: Synapse,
/// not the registry (as of the last sync), knows who has an address, and
/// would move it to this account without a word.
async fn free_emails(
    registry: &Registry,
    client: &SynapseClient,
    user_id: &UserId,
) -> Result<Vec<EmailAddress>, HandOverError> {
    let mut free = Vec::new();
    for address in registry.verified_emails_of(user_id).await? {
        match client.user_with_email(&address).await.map_err(HandOverError::Lookup)? {
            Some(owner) if owner != user_id.as_str() => {}
            _ => free.push(address),
        }
    }
    Ok(free)
}

/// An operator on the lifeboat host gives an ID to its person: held, or
/// taken by someone lifeboat could not vouch for (whose devices are logged
/// out). Afterwards the ID is trusted again. `seen` is the account as the
/// operator was shown it: under the hand-over's lease it must still be so
/// (its owner may have claimed it by link while the password was typed).
pub async fn hand_back(
    registry: &Registry,
    client: &SynapseClient,
    seen: &Account,
    password: &SecretString,
    actor: &Actor,
) -> Result<(), HandOverError> {
    let user_id = &seen.user_id;
    let work = async {
        let account = still_as(registry, user_id, |now| {
            matches!(now.state, AccountState::Held | AccountState::Recreated)
                && (now.state, now.custody_at) == (seen.state, seen.custody_at)
        })
        .await?;
        let (was_admin, name) = (account.admin, account.display_name_to_restore());
        let emails = free_emails(registry, client, user_id).await?;
        // Whoever's devices are on it (a stranger's; on a held account,
        // one who signed in once someone unlocked it outside lifeboat),
        // before the new password logs them out: should one come back, so
        // did they. A held account lifeboat kept locked has none.
        let stranger_devices: Vec<String> = match client.devices(user_id.as_str()).await {
            Ok(devices) => devices.into_iter().map(|device| device.device_id).collect(),
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "could not list the account's devices: a restore of Synapse from before this hand-over goes unnoticed");
                Vec::new()
            }
        };
        client.hand_over_account(user_id.as_str(), password, was_admin, name, &emails).await?;
        // The account handed over is the person's from now on: its creation
        // time tells it from one registered after another wipe. Unknown only
        // if Synapse fails this one read; the next listing brings it then.
        let created_at_ms = client.user_details(user_id.as_str()).await.ok().flatten().and_then(|d| d.created_at_ms());
        registry.settle_as_claimed(user_id, created_at_ms, actor).await?;
        // After the claim is recorded: its person has the ID either way.
        match client.delete_every_device(user_id.as_str()).await {
            // Every one of the stranger's is gone now: should one come back, so did the stranger.
            Ok(()) if !stranger_devices.is_empty() => {
                if let Err(err) = registry.record_stranger_devices(user_id, &stranger_devices).await {
                    tracing::warn!(%user_id, error = %err, "handed back, but the stranger's devices were not recorded: a restore of Synapse from before this goes unnoticed");
                }
            }
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "handed back, but a device left on the account could not be deleted: delete it with Synapse's admin API")
            }
        }
        Ok(())
    };
    one_hand_over(registry, user_id, work).await?
}

/// Rooms' joined local members no listing saw ([`Registry::room_members_no_listing_saw`])
/// that are lost: Synapse has no account for the ID, or one made after
/// lifeboat read a room it was in (registered again since a wipe, so a
/// stranger's until an operator settles it). One made before is the member
/// itself, for the next listing to record; one Synapse could not be asked
/// about is asked again by the next hold run.
async fn unseen_room_members_lost(
    registry: &Registry,
    client: &SynapseClient,
    server_name: &str,
) -> Result<Vec<UserId>, registry::Error> {
    let mut lost = Vec::new();
    for (stored, seen_at) in registry.room_members_no_listing_saw().await? {
        // Room state may name anything; an ID lifeboat cannot read is left be.
        let Some(user_id) = UserId::parse(&stored).ok().filter(|id| id.server_name() == server_name) else {
            continue;
        };
        match client.user_details(user_id.as_str()).await {
            Ok(None) => lost.push(user_id),
            Ok(Some(details)) => {
                let made_after = details.created_at_ms().zip(seen_at).is_some_and(|(made, seen)| made > seen);
                if made_after {
                    lost.push(user_id);
                }
            }
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "could not ask Synapse about a room's member no listing saw")
            }
        }
    }
    Ok(lost)
}

/// IDs an operator handed over from a stranger (`holds claim` of a
/// recreated ID) that the stranger has again: a device the hand-over
/// logged out is back, so Synapse was restored from a backup older than
/// the hand-over, with the stranger's password and addresses. Each is a
/// stranger's again (`recreated`), for an operator to hand over once more.
/// An ID Synapse could not be asked about is asked again by the next sync.
pub async fn strangers_back_by_a_restore(
    registry: &Registry,
    client: &SynapseClient,
    actor: &Actor,
) -> Result<Vec<UserId>, registry::Error> {
    let mut back = Vec::new();
    for (user_id, handed_over_at, logged_out) in registry.handed_over_from_strangers().await? {
        // A restored device was last used before the hand-over, or never;
        // one its person's client logs in with again under the same ID
        // (some keep theirs) is used after it.
        let restored = |device: &crate::synapse::Device| {
            logged_out.contains(&device.device_id) && device.last_seen_ts.is_none_or(|seen| seen <= handed_over_at)
        };
        match client.devices(user_id.as_str()).await {
            Ok(devices) if devices.iter().any(restored) => {
                if registry.stranger_again(&user_id, actor).await? {
                    tracing::warn!(%user_id, "a device its hand-over logged out is back: Synapse was restored from before it, and the ID is a stranger's again until `lifeboat holds claim`");
                    back.push(user_id);
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "could not ask Synapse for the devices of an ID handed over from a stranger")
            }
        }
    }
    Ok(back)
}

/// The account of `user_id` as it is now, if `expected` of it still holds
/// and no hold of it is under way: a hold being made counts as held, but is
/// no hold of record yet (its lock would follow a hand-over; lifeboat's own
/// ID is made lifeboat's again, not held).
async fn still_as(
    registry: &Registry,
    user_id: &UserId,
    expected: impl FnOnce(&Account) -> bool,
) -> Result<Account, HandOverError> {
    if registry.hold_under_way(user_id).await? {
        return Err(HandOverError::HoldUnderWay(user_id.to_string()));
    }
    registry.account(user_id).await?.filter(expected).ok_or_else(|| HandOverError::NoLongerHeld(user_id.to_string()))
}

/// Ends a hold for good: the account is deactivated (Synapse cannot delete
/// one), so its ID can never be registered again. Under the hand-over's
/// lease, and only while the ID is still held: its owner may have claimed
/// it while the operator was asked to confirm.
pub async fn release(
    registry: &Registry,
    client: &SynapseClient,
    user_id: &UserId,
    actor: &Actor,
) -> Result<(), HandOverError> {
    let work = async {
        still_as(registry, user_id, |now| now.state == AccountState::Held).await?;
        client.deactivate_account(user_id.as_str()).await?;
        registry.release_hold(user_id, actor).await?;
        Ok(())
    };
    one_hand_over(registry, user_id, work).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, admin: bool) -> HoldCandidate {
        let user_id = UserId::parse(id).unwrap();
        HoldCandidate { user_id, display_name: None, begun_before: 0, admin: i64::from(admin) }
    }

    #[test]
    fn a_password_is_measured_in_characters_as_the_page_and_synapse_count_them() {
        let user = "@wren:example.org";
        assert_eq!(password_problem(&"äöüß".repeat(128), user), None, "512 characters, 1,024 bytes");
        assert!(password_problem(&"äöüß".repeat(128).replace('ä', "ää"), user).is_some_and(|why| why.contains("long")));
        assert!(password_problem("äöüßäöü", user).is_some_and(|why| why.contains("short")));
    }

    #[test]
    fn the_bots_admins_are_held_first_then_the_servers_then_everyone_in_id_order() {
        let mut candidates = vec![
            candidate("@anna:example.org", false),
            candidate("@root:example.org", true),
            candidate("@zoe:example.org", false),
            candidate("@boss:example.org", true),
            candidate("@bea:example.org", false),
        ];
        let bot_admins = [UserId::parse("@zoe:example.org").unwrap()];
        admins_first(&mut candidates, &bot_admins);
        let order: Vec<_> = candidates.iter().map(|candidate| candidate.user_id.as_str()).collect();
        assert_eq!(
            order,
            ["@zoe:example.org", "@boss:example.org", "@root:example.org", "@anna:example.org", "@bea:example.org"]
        );
    }

    #[test]
    fn the_wait_for_tokens_names_the_holds_the_listing_or_both_as_due() {
        let unheld = |count: i64, wipe_unlisted: Option<i64>| UnheldLostIds { count, first: vec![], wipe_unlisted };
        let ends = |unheld: UnheldLostIds| unheld.ends_when("holds", "a listing");
        assert_eq!(ends(unheld(2, None)), "holds");
        assert_eq!(ends(unheld(0, Some(1))), "a listing");
        assert_eq!(ends(unheld(2, Some(1))), "holds, and a listing");
    }
}
