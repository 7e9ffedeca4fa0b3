//! Reconciliation: the registry's accounts against a complete listing. Each
//! account ID is a pair (known in the registry?, listed by Synapse?):
//! `classify` says what it means; `merge_join` pairs two sorted lists in one pass.

use std::cmp::Ordering;

use serde::Serialize;

use crate::checked_text::stored_as_text;

stored_as_text! {
    /// Who an ID belongs to now, as the registry keeps it (the rule that
    /// decides it is `registry::STANDING_SQL`).
    pub enum AccountState {
        /// Listed by Synapse and its person's, as far as lifeboat knows.
        Present = "present",
        /// Not in the listing: lost.
        Missing = "missing",
        /// Listed as deactivated.
        Deactivated = "deactivated",
        /// Lost, then re-created and locked by lifeboat for its owner.
        Held = "held",
        /// Handed back to its owner after a hold (or settled by an operator).
        Claimed = "claimed",
        /// Registered again by someone lifeboat cannot vouch for: a stranger
        /// until an operator settles it (`lifeboat holds claim`).
        Recreated = "recreated",
    }
}

impl AccountState {
    /// A stranger on every face (a form naming it, the bot's admins, DMs).
    pub fn is_stranger(self) -> bool {
        self == AccountState::Recreated
    }

    /// Is the account on Synapse now its registry person's, so that what
    /// arrives from it (a DM, a form naming it) speaks for that person?
    pub fn is_its_persons(self) -> bool {
        matches!(self, AccountState::Present | AccountState::Claimed)
    }
}

/// An account as the registry knows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Known {
    pub user_id: String,
    /// When the account the registry knows was made; unknown while
    /// lifeboat is making a hold (the registry's time is then the lost
    /// account's, not the one being made).
    pub created_at_ms: Option<i64>,
    /// Who the ID belonged to at the last sync.
    pub standing: AccountState,
    /// When the person's account that was lost had been made, while its ID
    /// is held for them or taken by a stranger.
    pub lost_created_at: Option<i64>,
    /// lifeboat took custody (a hold, a claim) after the listing began, so
    /// the listing may show the account between two of its steps. Known
    /// only to a sync, which reads the registry after the listing.
    #[sqlx(default)]
    pub custody_since_listing: bool,
}

/// An account as a complete listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub user_id: String,
    pub deactivated: bool,
    pub locked: bool,
    pub created_at_ms: Option<i64>,
}

impl From<&crate::synapse::ListedUser> for Listed {
    fn from(user: &crate::synapse::ListedUser) -> Self {
        Listed {
            user_id: user.user_id.clone(),
            deactivated: user.deactivated,
            locked: user.locked,
            created_at_ms: user.created_at_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Known and listed, as before.
    Present,
    /// Known, but not in the listing: lost.
    Missing,
    /// Listed as deactivated (by an admin; not a loss).
    Deactivated,
    /// Same ID, newer creation time: registered again, maybe by someone else.
    Recreated,
    /// Listed, not yet known.
    New,
    /// Lost, and held by lifeboat for its owner (still lost to them).
    Held,
    /// Held or taken, and now listed with the person's own lost account,
    /// made that very second (Synapse's database restored): theirs again.
    CameBack,
}

pub fn classify(known: Option<&Known>, listed: Option<&Listed>) -> Option<Class> {
    match (known, listed) {
        (None, None) => None,
        (Some(_), None) => Some(Class::Missing),
        (None, Some(_)) => Some(Class::New),
        (Some(known), Some(listed)) => Some(match known.standing {
            // The person's own lost account back (claimed or not, or lost
            // again in another wipe since); not lifeboat's hold, even when
            // a resumed hold took that very account for its own.
            AccountState::Held | AccountState::Recreated | AccountState::Claimed | AccountState::Missing
                if same_second(known.lost_created_at, listed.created_at_ms)
                    && !(matches!(
                        known.standing,
                        AccountState::Held | AccountState::Claimed | AccountState::Missing
                    ) && same_second(known.created_at_ms, listed.created_at_ms)) =>
            {
                Class::CameBack
            }
            // lifeboat's own hold, unless the one listed now was made after
            // it (lost in another wipe, and registered by someone else first).
            AccountState::Held if registered_again(known.created_at_ms, listed.created_at_ms) => Class::Recreated,
            AccountState::Held => Class::Held,
            // Taken by a stranger: stays so until an operator settles it.
            AccountState::Recreated => Class::Recreated,
            _ if registered_again(known.created_at_ms, listed.created_at_ms) => Class::Recreated,
            _ if listed.deactivated => Class::Deactivated,
            _ => Class::Present,
        }),
    }
}

/// Were both accounts made in the same second? Exactly, not "before the
/// hold": a Synapse clock set back must not pass a stranger off as the owner.
fn same_second(lost: Option<i64>, listed: Option<i64>) -> bool {
    matches!((lost, listed), (Some(lost), Some(listed)) if lost / 1000 == listed / 1000)
}

/// Is `listed` another registration of the ID than `known`? Synapse never
/// changes an account's creation time, so any other second means another
/// account: a later one, or an earlier one from a Synapse whose clock was
/// set back (which must not pass a stranger off as the owner). Compared in
/// whole seconds: Synapse keeps seconds, and lifeboat learns the creation
/// time of an account it holds from an answer in seconds.
pub fn registered_again(known: Option<i64>, listed: Option<i64>) -> bool {
    matches!((known, listed), (Some(_), Some(_))) && !same_second(known, listed)
}

stored_as_text! {
    #[derive(Default)]
    pub enum Verdict {
        #[default]
        Ok = "ok",
        Loss = "loss",
        SuspectedReset = "suspected_reset",
    }
}

/// The outcome of a reconciliation. `present` is a count; the other
/// classes list user IDs in order.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Report {
    pub verdict: Verdict,
    /// Accounts in the registry.
    pub known: usize,
    /// Accounts in the listing.
    pub listed: usize,
    pub present: usize,
    pub missing: Vec<String>,
    pub recreated: Vec<String>,
    pub deactivated: Vec<String>,
    pub new: Vec<String>,
    /// Lost IDs lifeboat holds for their owners (lost to them until claimed).
    pub held: Vec<String>,
    /// Of `held`, those whose account someone unlocked outside lifeboat:
    /// whoever can sign in to one (single sign-on with that name, say)
    /// would have its person's ID, and their rooms elsewhere.
    pub unlocked_held: Vec<String>,
    /// Lost accounts (missing, held, or newly recreated) as a share of known accounts.
    pub lost_share: f64,
}

/// Collects classified pairs into a [`Report`].
#[derive(Debug, Default)]
pub struct ReportBuilder {
    report: Report,
    known_recreated: usize,
}

impl ReportBuilder {
    pub fn add(&mut self, known: Option<&Known>, listed: Option<&Listed>) {
        let class = classify(known, listed);
        // A recreation the registry recorded earlier is still reported, but
        // it is not news: the verdict counts only what this listing found.
        if class == Some(Class::Recreated) && known.is_some_and(|known| known.standing == AccountState::Recreated) {
            self.known_recreated += 1;
        }
        let report = &mut self.report;
        report.known += usize::from(known.is_some());
        report.listed += usize::from(listed.is_some());
        let id = || known.map(|k| &k.user_id).or(listed.map(|l| &l.user_id)).cloned().unwrap_or_default();
        match class {
            None => {}
            Some(Class::Present | Class::CameBack) => report.present += 1,
            Some(Class::Missing) => report.missing.push(id()),
            Some(Class::Deactivated) => report.deactivated.push(id()),
            Some(Class::Recreated) => report.recreated.push(id()),
            Some(Class::New) => report.new.push(id()),
            Some(Class::Held) => {
                // Not a hold being made (its account may not be locked yet),
                // nor one the listing read before lifeboat took custody.
                let made = known.is_some_and(|known| known.created_at_ms.is_some() && !known.custody_since_listing);
                if made && listed.is_some_and(|listed| !listed.locked) {
                    report.unlocked_held.push(id());
                }
                report.held.push(id());
            }
        }
    }

    /// `loss_threshold`: the lost share at or above which the verdict is
    /// `suspected_reset` (a mass loss), not `loss`.
    pub fn finish(self, loss_threshold: f64) -> Report {
        let mut report = self.report;
        for ids in [
            &mut report.missing,
            &mut report.recreated,
            &mut report.deactivated,
            &mut report.new,
            &mut report.held,
            &mut report.unlocked_held,
        ] {
            ids.sort_unstable();
        }
        let lost = report.missing.len() + report.held.len() + report.recreated.len() - self.known_recreated;
        report.lost_share = if report.known == 0 { 0.0 } else { lost as f64 / report.known as f64 };
        report.verdict = if lost == 0 {
            Verdict::Ok
        } else if report.lost_share >= loss_threshold {
            Verdict::SuspectedReset
        } else {
            Verdict::Loss
        };
        report
    }
}

/// Pairs two lists sorted by user ID (bytewise) in one pass.
pub fn merge_join(known: &[Known], listed: &[Listed], loss_threshold: f64) -> Report {
    let mut report = ReportBuilder::default();
    let (mut k, mut l) = (known.iter().peekable(), listed.iter().peekable());
    loop {
        let order = match (k.peek(), l.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.user_id.as_bytes().cmp(b.user_id.as_bytes()),
        };
        // The smaller ID goes alone; equal IDs go as a pair.
        report.add(k.next_if(|_| order.is_le()), l.next_if(|_| order.is_ge()));
    }
    report.finish(loss_threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(id: &str, created_s: i64) -> Known {
        Known {
            user_id: id.into(),
            created_at_ms: Some(created_s * 1000),
            standing: AccountState::Present,
            lost_created_at: None,
            custody_since_listing: false,
        }
    }

    fn known_as(id: &str, created_s: i64, standing: AccountState) -> Known {
        Known { standing, ..known(id, created_s) }
    }

    fn listed(id: &str, created_s: i64, deactivated: bool) -> Listed {
        Listed { user_id: id.into(), deactivated, locked: false, created_at_ms: Some(created_s * 1000 + 123) }
    }

    #[test]
    fn a_made_hold_listed_unlocked_is_named_but_one_being_made_is_not() {
        let made = known_as("@a:x", 1, AccountState::Held);
        let being_made = Known { created_at_ms: None, ..known_as("@b:x", 1, AccountState::Held) };
        let locked = Listed { locked: true, ..listed("@c:x", 1, false) };
        let made_while_listed = Known { custody_since_listing: true, ..known_as("@d:x", 1, AccountState::Held) };
        let registry = [made, being_made, known_as("@c:x", 1, AccountState::Held), made_while_listed];
        let listing = [listed("@a:x", 1, false), listed("@b:x", 1, false), locked, listed("@d:x", 1, false)];
        let report = merge_join(&registry, &listing, 0.5);
        assert_eq!(report.held, ["@a:x", "@b:x", "@c:x", "@d:x"]);
        assert_eq!(report.unlocked_held, ["@a:x"]);
    }

    #[test]
    fn every_kind_of_account_is_classified() {
        let registry = [known("@a:x", 1), known("@b:x", 1), known("@c:x", 1), known("@d:x", 1)];
        let listing =
            [listed("@a:x", 1, false), listed("@c:x", 5, false), listed("@d:x", 1, true), listed("@e:x", 9, false)];
        let report = merge_join(&registry, &listing, 0.5);
        assert_eq!(report.present, 1);
        assert_eq!(report.missing, ["@b:x"]);
        assert_eq!(report.recreated, ["@c:x"]);
        assert_eq!(report.deactivated, ["@d:x"]);
        assert_eq!(report.new, ["@e:x"]);
        assert_eq!(report.verdict, Verdict::SuspectedReset, "2 of 4 lost reaches the 0.5 threshold");
    }

    #[test]
    fn a_few_missing_accounts_are_a_loss_not_a_reset() {
        let registry = [known("@a:x", 1), known("@b:x", 1), known("@c:x", 1)];
        let listing = [listed("@a:x", 1, false), listed("@c:x", 1, false)];
        assert_eq!(merge_join(&registry, &listing, 0.5).verdict, Verdict::Loss);
    }

    #[test]
    fn an_empty_registry_sees_only_new_accounts_and_no_loss() {
        let report = merge_join(&[], &[listed("@a:x", 1, false)], 0.5);
        assert_eq!((report.verdict, report.new.len()), (Verdict::Ok, 1));
    }

    #[test]
    fn an_older_creation_time_is_not_a_recreation() {
        let report = merge_join(&[known("@a:x", 5)], &[listed("@a:x", 5, false)], 0.5);
        assert_eq!((report.present, report.verdict), (1, Verdict::Ok));
    }

    #[test]
    fn an_account_lifeboat_holds_is_held_not_recreated_and_still_lost_to_its_owner() {
        let registry = [known_as("@a:x", 9, AccountState::Held), known("@b:x", 1), known("@c:x", 1)];
        let listing = [listed("@a:x", 9, false), listed("@b:x", 1, false), listed("@c:x", 1, false)];
        let report = merge_join(&registry, &listing, 0.5);
        assert_eq!((report.present, report.held.as_slice(), report.recreated.len()), (2, &["@a:x".to_owned()][..], 0));
        assert_eq!(report.verdict, Verdict::Loss, "until its owner claims it");
    }

    #[test]
    fn a_held_id_registered_by_someone_else_after_another_wipe_is_a_strangers() {
        let registry = [known_as("@a:x", 5, AccountState::Held), known("@b:x", 1)];
        let report = merge_join(&registry, &[listed("@a:x", 9, false), listed("@b:x", 1, false)], 0.5);
        assert_eq!((report.recreated.as_slice(), report.held.len()), (&["@a:x".to_owned()][..], 0));
    }

    #[test]
    fn a_persons_own_account_restored_after_its_hold_was_lost_again_came_back() {
        // Lost (made at 1), held (at 5), lost again in another wipe, then
        // Synapse's old database restored: the person's own account.
        let lost_again = Known { lost_created_at: Some(1_000), ..known_as("@a:x", 5, AccountState::Missing) };
        let class = classify(Some(&lost_again), Some(&listed("@a:x", 1, false)));
        assert_eq!(class, Some(Class::CameBack));
        let stranger = classify(Some(&lost_again), Some(&listed("@a:x", 9, false)));
        assert_eq!(stranger, Some(Class::Recreated));
    }

    #[test]
    fn a_taken_id_stays_recreated_but_is_not_news() {
        let registry = [known_as("@a:x", 9, AccountState::Recreated), known("@b:x", 1)];
        let report = merge_join(&registry, &[listed("@a:x", 9, false), listed("@b:x", 1, false)], 0.5);
        assert_eq!(report.recreated, ["@a:x"]);
        assert_eq!(report.verdict, Verdict::Ok, "recorded before, so no new loss");
    }

    #[test]
    fn an_account_made_before_the_known_one_is_another_account() {
        let report = merge_join(&[known("@a:x", 100)], &[listed("@a:x", 50, false)], 0.5);
        assert_eq!(report.recreated, ["@a:x"], "Synapse's clock was set back after a wipe");
    }

    #[test]
    fn creation_times_are_compared_in_whole_seconds() {
        assert!(!registered_again(Some(5_000), Some(5_999)));
        assert!(registered_again(Some(5_999), Some(6_000)));
        assert!(!registered_again(None, Some(6_000)));
        assert!(registered_again(Some(6_000), Some(5_999)), "an earlier account: Synapse's clock set back");
    }
}
