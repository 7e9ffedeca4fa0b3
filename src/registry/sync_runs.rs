//! Sync runs: a listing is staged page by page, and applied to `accounts`
//! in one transaction only once it is complete. A failed listing leaves the
//! accounts exactly as they were.

use futures::TryStreamExt;
use serde::Serialize;

use super::accounts::ITS_PERSONS_PRESENT;
use super::{Actor, Registry, Result, now_ms, placeholders};
use crate::email::EmailAddress;
use crate::reconcile::AccountState;
use crate::reconcile::{Class, Known, Listed, Report, ReportBuilder, classify};
use crate::registry::accounts::{KNOWN_CREATED_SQL, STANDING_SQL};
use crate::synapse::ListedUser;
use crate::user_id::UserId;

/// Rows per multi-row INSERT: far below every backend's bind-variable limit.
const STAGE_CHUNK: usize = 200;
const STAGE_COLUMNS: usize = 9;
/// IDs per `WHERE user_id IN (...)` when marking accounts.
const MARK_CHUNK: usize = 500;

/// What is read of a complete sync run (`sync_runs.status` is `running`,
/// `complete` or `failed`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRun {
    pub started_at: i64,
    /// When its listing was applied, then when its account details were
    /// read too: a complete run is dated while its details are still read
    /// (hours on a big first sync), or if they never are (a sync killed).
    pub finished_at: Option<i64>,
    pub listed: i64,
}

/// What a sync read of one account: the emails Synapse holds for it, with
/// when each was validated, and when its details are due to be read again.
#[derive(Debug, Clone)]
pub struct AccountDetails {
    pub user_id: UserId,
    pub emails: Vec<(EmailAddress, Option<i64>)>,
    /// Every email address Synapse has for it, as written (lowercased, one
    /// lifeboat cannot read too), when what it no longer has is to be
    /// dropped: `None` leaves its contacts from Synapse as they are.
    pub in_synapse: Option<Vec<String>>,
    pub due_at: i64,
    /// The application service that registered it ([`crate::synapse::UserDetails::appservice_id`]).
    pub appservice_id: Option<String>,
}

/// What applying a complete listing found and changed.
#[derive(Debug, Clone, Serialize)]
pub struct SyncApplied {
    pub report: Report,
    /// Accounts that went missing in this run (not already missing before).
    pub newly_missing: u64,
}

impl Registry {
    /// Starts a run. Runs left `running` by a process that died are closed
    /// as failed and their staged rows dropped (one sync at a time).
    pub async fn begin_sync_run(&self) -> Result<i64> {
        let stale: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM sync_runs WHERE status = 'running'").fetch_all(&self.pool).await?;
        for id in stale {
            self.fail_sync_run(id, "interrupted: the process ended before the listing was applied").await?;
        }
        Ok(sqlx::query_scalar("INSERT INTO sync_runs (started_at, status) VALUES ($1, 'running') RETURNING id")
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Stages one page of the listing. Returns how many accounts were new to
    /// this run: offset paging can repeat an account when others register
    /// mid-listing, and repeats are dropped here.
    pub async fn stage_listing_page(&self, run_id: i64, users: &[ListedUser]) -> Result<u64> {
        let mut staged = 0;
        let mut tx = self.begin_write().await?;
        for chunk in users.chunks(STAGE_CHUNK) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|row| format!("({})", placeholders(row * STAGE_COLUMNS + 1..=(row + 1) * STAGE_COLUMNS)))
                .collect();
            let sql = format!(
                "INSERT INTO listing_stage (run_id, user_id, display_name, admin, deactivated, locked, \
                 is_guest, user_type, synapse_created_at) VALUES {} ON CONFLICT (run_id, user_id) DO NOTHING",
                rows.join(",")
            );
            // Safe: the dynamic part is only numbered placeholders.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for user in chunk {
                query = query
                    .bind(run_id)
                    .bind(&user.user_id)
                    .bind(&user.display_name)
                    .bind(i64::from(user.admin))
                    .bind(i64::from(user.deactivated))
                    .bind(i64::from(user.locked))
                    .bind(i64::from(user.is_guest))
                    .bind(&user.user_type)
                    .bind(user.created_at_ms);
            }
            staged += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(staged)
    }

    /// Ends a run whose listing failed: drops what was staged, keeps the error.
    pub async fn fail_sync_run(&self, run_id: i64, error: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM listing_stage WHERE run_id = $1").bind(run_id).execute(&mut *tx).await?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'failed', finished_at = $2, error = $3 WHERE id = $1 AND status = 'running'",
        )
        .bind(run_id)
        .bind(now_ms())
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a complete, staged listing to the accounts in one transaction: classifies every
    /// account, records new and changed ones, marks the unlisted ones missing (never deleting them).
    /// Before run `run_id`'s staged listing is applied: records as lost
    /// (made at 0, as a hold run adopts them) the IDs no listing saw that
    /// someone may have registered since a loss, so that the account the
    /// listing shows on one is classified as a stranger's, not recorded as
    /// a new person's:
    /// - a room's joined member whose account Synapse made after lifeboat
    ///   read that room (the member's own account existed then);
    /// - one of `admins` (the bot's, of this homeserver), while the listing
    ///   shows a loss: an account the registry has as present or lost is
    ///   not in it. A new admin otherwise is recorded as listed.
    ///
    /// A hold run adopts the same IDs once lost IDs wait, but only the
    /// listing after a wipe runs before it, and would record whoever took
    /// one in between as its person.
    pub async fn adopt_ids_taken_before_the_listing(&self, run_id: i64, admins: &[&UserId]) -> Result<u64> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let unseen = "INSERT INTO accounts (user_id, first_seen_at, state, missing_since, synapse_created_at) \
             SELECT s.user_id, $2, 'missing', $2, 0 FROM listing_stage s \
             WHERE s.run_id = $1 AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = s.user_id)";
        let members = format!(
            "{unseen} AND s.synapse_created_at > (SELECT MAX(r.state_read_at) FROM room_members m \
                 JOIN rooms r ON r.room_id = m.room_id WHERE m.user_id = s.user_id AND m.membership = 'join')"
        );
        let mut adopted =
            sqlx::query(sqlx::AssertSqlSafe(members)).bind(run_id).bind(now).execute(&mut *tx).await?.rows_affected();
        let admin = format!(
            "{unseen} AND s.user_id = $3 AND EXISTS (SELECT 1 FROM accounts a WHERE a.state IN ('present', 'missing') \
                 AND NOT EXISTS (SELECT 1 FROM listing_stage l WHERE l.run_id = $1 AND l.user_id = a.user_id))"
        );
        for user_id in admins {
            let query = sqlx::query(sqlx::AssertSqlSafe(admin.clone())).bind(run_id).bind(now).bind(*user_id);
            adopted += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(adopted)
    }

    pub async fn apply_listing(&self, run_id: i64, loss_threshold: f64, actor: &Actor) -> Result<SyncApplied> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        // Still a running run: a sync that lost its lease (paused, or its
        // lease taken over) had its run failed and its pages dropped by the
        // next one, and what it stages after that is no complete listing.
        let running = sqlx::query("UPDATE sync_runs SET status = 'running' WHERE id = $1 AND status = 'running'")
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if running == 0 {
            tx.rollback().await?;
            return Err(super::Error::Refused(format!(
                "sync run {run_id} was ended by another sync while it read the listing, so its listing was not applied"
            )));
        }

        let mut report = ReportBuilder::default();
        let (mut to_mark_recreated, mut to_mark_missing, mut to_mark_came_back) = (Vec::new(), Vec::new(), Vec::new());
        {
            let mut pairs = sqlx::query_as::<_, PairRow>(sqlx::AssertSqlSafe(format!(
                // A full outer join written as two index lookups: SQLite
                // plans the FULL OUTER JOIN form as a nested loop (quadratic).
                "SELECT a.user_id AS known_id, \
                        {KNOWN_CREATED_SQL} AS known_created, \
                        {STANDING_SQL} AS known_standing, a.state AS known_state, \
                        a.lost_created_at AS known_lost_created, \
                        CASE WHEN a.custody IS NOT NULL \
                                  AND a.custody_at >= (SELECT started_at FROM sync_runs WHERE id = $1) \
                             THEN 1 ELSE 0 END AS custody_since_listing, \
                        s.user_id AS listed_id, s.deactivated AS listed_deactivated, \
                        s.locked AS listed_locked, s.synapse_created_at AS listed_created \
                 FROM accounts a LEFT JOIN listing_stage s ON s.run_id = $1 AND s.user_id = a.user_id \
                 UNION ALL \
                 SELECT NULL, NULL, NULL, NULL, NULL, NULL, s.user_id, s.deactivated, s.locked, s.synapse_created_at \
                 FROM listing_stage s WHERE s.run_id = $1 \
                   AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = s.user_id)"
            )))
            .bind(run_id)
            .fetch(&mut *tx);
            while let Some(pair) = pairs.try_next().await? {
                let known = pair.known_id.map(|user_id| Known {
                    user_id,
                    created_at_ms: pair.known_created,
                    standing: pair.known_standing.unwrap_or(AccountState::Present),
                    lost_created_at: pair.known_lost_created,
                    custody_since_listing: pair.custody_since_listing.unwrap_or(0) != 0,
                });
                let listed = pair.listed_id.map(|user_id| Listed {
                    user_id,
                    deactivated: pair.listed_deactivated.unwrap_or(0) != 0,
                    locked: pair.listed_locked.unwrap_or(0) != 0,
                    created_at_ms: pair.listed_created,
                });
                report.add(known.as_ref(), listed.as_ref());
                let Some(known) = known else { continue };
                let state = pair.known_state.unwrap_or(AccountState::Present);
                match mark_for(&known, listed.as_ref(), state) {
                    Some(Mark::Recreated) => to_mark_recreated.push(known.user_id),
                    Some(Mark::Missing) => to_mark_missing.push(known.user_id),
                    Some(Mark::CameBack) => to_mark_came_back.push(known.user_id),
                    None => {}
                }
            }
        }
        let report = report.finish(loss_threshold);

        // Both marks end a hold or a claim: a stranger's ID is not held,
        // and an account lost again (a second wipe) is held anew. Each keeps
        // when the person's lost account was made (not lifeboat's hold's,
        // nor a stranger's), to know it if it comes back.
        let keep_lost = "lost_created_at = CASE WHEN custody IN ('holding', 'held') OR recreated_at IS NOT NULL \
                              OR state = 'missing' \
                         THEN lost_created_at ELSE synapse_created_at END";
        let set_recreated = format!(
            "UPDATE accounts SET recreated_at = $1, custody = NULL, custody_at = NULL, display_name_due_at = NULL, \
             {keep_lost}"
        );
        Self::mark_accounts(&mut tx, &set_recreated, now, &to_mark_recreated).await?;
        let set_missing = format!(
            "UPDATE accounts SET state = 'missing', missing_since = $1, custody = NULL, custody_at = NULL, \
             display_name_due_at = NULL, {keep_lost}"
        );
        let newly_missing = Self::mark_accounts(&mut tx, &set_missing, now, &to_mark_missing).await?;
        // A new loss may have taken what Synapse's refusals rested on (the
        // account another ID's case clashed with, say): all are tried again.
        if newly_missing > 0 {
            sqlx::query("UPDATE accounts SET hold_refused = NULL WHERE hold_refused IS NOT NULL")
                .execute(&mut *tx)
                .await?;
        }
        // The person's own account back: the hold, or the stranger's mark, ends.
        let set_came_back = "UPDATE accounts SET custody = NULL, custody_at = NULL, recreated_at = NULL, \
             display_name_due_at = NULL, lost_created_at = NULL, last_seen_present_at = $1";
        Self::mark_accounts(&mut tx, set_came_back, now, &to_mark_came_back).await?;
        // Lost (again, after another wipe): their rooms are to be come back
        // into once more, however it went the last time.
        let rooms_again =
            "UPDATE room_members SET rejoin = NULL, rejoin_error = NULL, rejoin_attempts = 0, rejoin_at = $1";
        for lost in [&to_mark_missing, &to_mark_recreated] {
            Self::mark_accounts(&mut tx, rooms_again, now, lost).await?;
        }
        // A stranger on a person's ID (recreated), like lifeboat's hold,
        // gives that person's record neither the admin flag nor a name (the
        // notices greet the person by it), nor clears what an admin had done
        // to the person's account (locked, deactivated: no way back in for
        // it). An ID whose hold is being made stays missing, with the lost
        // account's creation time: the account listed may be a stranger's,
        // and only the resumed hold run tells. An ID whose custody changed while the
        // listing was read (claimed, released) waits for the next listing:
        // this one shows its account as it was before.
        sqlx::query(
            "INSERT INTO accounts (user_id, display_name, admin, deactivated, locked, is_guest, user_type, \
                                   synapse_created_at, first_seen_at, last_seen_present_at, state, missing_since) \
             SELECT user_id, display_name, admin, deactivated, locked, is_guest, user_type, synapse_created_at, \
                    $2, $2, CASE WHEN deactivated <> 0 THEN 'deactivated' ELSE 'present' END, NULL \
             FROM listing_stage WHERE run_id = $1 \
             ON CONFLICT (user_id) DO UPDATE SET \
                 display_name = CASE WHEN accounts.custody = 'holding' OR accounts.display_name_due_at IS NOT NULL \
                                          OR accounts.recreated_at IS NOT NULL \
                                     THEN accounts.display_name ELSE excluded.display_name END, \
                 admin = CASE WHEN accounts.custody IN ('holding', 'held') OR accounts.recreated_at IS NOT NULL \
                              THEN accounts.admin ELSE excluded.admin END, \
                 deactivated = CASE WHEN accounts.custody IN ('holding', 'held') OR accounts.recreated_at IS NOT NULL \
                                    THEN accounts.deactivated ELSE excluded.deactivated END, \
                 is_guest = excluded.is_guest, \
                 locked = CASE WHEN accounts.custody IN ('holding', 'held') OR accounts.recreated_at IS NOT NULL \
                               THEN accounts.locked ELSE excluded.locked END, \
                 user_type = excluded.user_type, \
                 synapse_created_at = CASE WHEN accounts.custody = 'holding' \
                                           THEN accounts.synapse_created_at \
                                           ELSE COALESCE(excluded.synapse_created_at, accounts.synapse_created_at) END, \
                 last_seen_present_at = excluded.last_seen_present_at, \
                 state = CASE WHEN accounts.custody = 'holding' THEN accounts.state ELSE excluded.state END, \
                 missing_since = CASE WHEN accounts.custody = 'holding' THEN accounts.missing_since END \
             WHERE accounts.custody_at IS NULL \
                OR accounts.custody_at < (SELECT started_at FROM sync_runs WHERE id = $1)",
        )
        .bind(run_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // A held account the listing shows unlocked (by someone outside
        // lifeboat, once its hold was made and before the listing began):
        // whoever can sign in has its person's ID, until it is locked again.
        sqlx::query(
            "UPDATE accounts SET held_unlocked_at = CASE WHEN EXISTS \
                 (SELECT 1 FROM listing_stage s WHERE s.run_id = $1 AND s.user_id = accounts.user_id AND s.locked = 0) \
                 THEN COALESCE(held_unlocked_at, $2) END \
             WHERE custody = 'held' AND synapse_created_at IS NOT NULL \
               AND custody_at < (SELECT started_at FROM sync_runs WHERE id = $1)",
        )
        .bind(run_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM listing_stage WHERE run_id = $1").bind(run_id).execute(&mut *tx).await?;
        let (listed, new, missing) = (report.listed, report.new.len(), report.missing.len());
        let (recreated, deactivated) = (report.recreated.len(), report.deactivated.len());
        sqlx::query(
            "UPDATE sync_runs SET status = 'complete', listed = $2, new_accounts = $3, missing = $4, \
             newly_missing = $5, recreated = $6, deactivated = $7, finished_at = $8 WHERE id = $1",
        )
        .bind(run_id)
        .bind(listed as i64)
        .bind(new as i64)
        .bind(missing as i64)
        .bind(newly_missing as i64)
        .bind(recreated as i64)
        .bind(deactivated as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "listed {listed}, new {new}, missing {missing} ({newly_missing} newly), recreated {recreated}, \
             deactivated {deactivated}"
        );
        Self::audit_in(&mut tx, actor, "sync.apply", Some(&format!("sync run {run_id}")), Some(&detail)).await?;
        tx.commit().await?;
        Ok(SyncApplied { report, newly_missing })
    }

    /// Runs `set` (an UPDATE whose `$1` is `now`) on the given accounts, in
    /// chunks; returns how many rows changed.
    async fn mark_accounts(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        set: &str,
        now: i64,
        user_ids: &[String],
    ) -> Result<u64> {
        let mut changed = 0;
        for chunk in user_ids.chunks(MARK_CHUNK) {
            // Safe: `set` is a constant of the caller's, the rest numbered placeholders.
            let sql = format!("{set} WHERE user_id IN ({})", placeholders(2..=chunk.len() + 1));
            let query = chunk.iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now), |query, id| query.bind(id));
            changed += query.execute(&mut **tx).await?.rows_affected();
        }
        Ok(changed)
    }

    /// The accounts `due` names, in ID order after `after` (keyset paging keeps memory flat
    /// however many accounts there are), each with when Synapse made the account the registry
    /// knows.
    pub async fn accounts_needing_details(
        &self,
        due: DetailsDue,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(UserId, Option<i64>)>> {
        let sql = format!(
            "SELECT user_id, synapse_created_at FROM accounts WHERE {} AND user_id > $3 ORDER BY user_id LIMIT $4",
            due.predicate()
        );
        let (now, stale_before) = due.bounds();
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(stale_before)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn count_accounts_needing_details(&self, due: DetailsDue) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM accounts WHERE {}", due.predicate());
        let (now, stale_before) = due.bounds();
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(now).bind(stale_before).fetch_one(&self.pool).await?)
    }

    /// Stores the emails Synapse knows for each account read (as verified contacts from Synapse)
    /// and notes when they were fetched, in one transaction: a sync writes its answers a batch at
    /// a time. Returns how many addresses were new. An address from Synapse that an account no
    /// longer has (by its `in_synapse`) is removed (and audited): the account is still its
    /// person's (only those are read), and an address they dropped (a lapsed domain, an
    /// employer's, reused) may be someone else's now, who must not get their token or claim
    /// link. One they opted out of stays, so that adding it again does not undo that.
    /// A dropped address comes back only validated after its drop: a Synapse
    /// restored from an older backup has it again, validated before.
    pub async fn record_details(&self, read: &[AccountDetails], actor: &Actor) -> Result<u64> {
        if read.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for account in read {
            for (email, validated_at) in &account.emails {
                added += sqlx::query(
                    "INSERT INTO contacts (user_id, kind, address, source, verified_at, added_at) \
                     SELECT $1, 'email', $2, 'synapse', $3, $4 WHERE NOT EXISTS \
                         (SELECT 1 FROM dropped_emails d WHERE d.user_id = $1 AND d.address = $2 AND d.dropped_at >= $5) \
                     ON CONFLICT (user_id, kind, address) DO NOTHING",
                )
                .bind(&account.user_id)
                .bind(email.as_str())
                .bind(validated_at.unwrap_or(now))
                .bind(now)
                // Not known when validated: not since the drop, as far as lifeboat can tell.
                .bind(validated_at.unwrap_or(0))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            if let Some(in_synapse) = &account.in_synapse {
                Self::drop_emails_gone_from_synapse(&mut tx, &account.user_id, in_synapse, actor).await?;
            }
            let update = "UPDATE accounts SET details_fetched_at = $2, details_due_at = $3, appservice_id = $4 \
                          WHERE user_id = $1";
            sqlx::query(update)
                .bind(&account.user_id)
                .bind(now)
                .bind(account.due_at)
                .bind(account.appservice_id.as_deref())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Removes `user_id`'s contacts from Synapse that are not `in_synapse`
    /// (see [`Self::record_details`]), audited.
    async fn drop_emails_gone_from_synapse(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        user_id: &UserId,
        in_synapse: &[String],
        actor: &Actor,
    ) -> Result<()> {
        const FROM_SYNAPSE: &str = "user_id = $1 AND kind = 'email' AND source = 'synapse' AND opted_out_at IS NULL";
        let stored: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT address FROM contacts WHERE {FROM_SYNAPSE}")))
                .bind(user_id)
                .fetch_all(&mut **tx)
                .await?;
        for gone in stored.iter().filter(|address| !in_synapse.contains(address)) {
            let delete = format!("DELETE FROM contacts WHERE {FROM_SYNAPSE} AND address = $2");
            let dropped = sqlx::query(sqlx::AssertSqlSafe(delete))
                .bind(user_id)
                .bind(gone)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if dropped == 1 {
                sqlx::query(
                    "INSERT INTO dropped_emails (user_id, address, dropped_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, address) DO UPDATE SET dropped_at = excluded.dropped_at",
                )
                .bind(user_id)
                .bind(gone)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
                let detail = format!("email {gone} (no longer in Synapse)");
                Self::audit_in(tx, actor, "contact.remove", Some(user_id.as_str()), Some(&detail)).await?;
            }
        }
        Ok(())
    }

    /// Closes a run after its email import.
    pub async fn finish_sync_run(
        &self,
        run_id: i64,
        fetched: u64,
        failed: u64,
        imported: u64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE sync_runs SET finished_at = $2, details_fetched = $3, details_failed = $4, \
             emails_imported = $5 WHERE id = $1",
        )
        .bind(run_id)
        .bind(now_ms())
        .bind(fetched as i64)
        .bind(failed as i64)
        .bind(imported as i64)
        .execute(&mut *tx)
        .await?;
        if imported > 0 || failed > 0 {
            let detail = format!("details fetched {fetched}, failed {failed}, emails imported {imported}");
            Self::audit_in(&mut tx, actor, "sync.contacts", Some(&format!("sync run {run_id}")), Some(&detail)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The most recent run whose listing was complete.
    pub async fn last_complete_sync(&self) -> Result<Option<SyncRun>> {
        let sql = "SELECT started_at, finished_at, listed FROM sync_runs WHERE status = 'complete' \
                   ORDER BY id DESC LIMIT 1";
        Ok(sqlx::query_as(sql).fetch_optional(&self.pool).await?)
    }

    /// Notes that Synapse's database was lost or went back now (lifeboat had
    /// to get back in, or Synapse has fewer accounts than the last listing
    /// read): until a listing begun later is applied, any ID may be free.
    pub async fn note_wipe_seen(&self) -> Result<()> {
        self.set_setting(WIPE_SEEN_SETTING, &now_ms().to_string()).await
    }

    /// When a wipe was last noted ([`Registry::note_wipe_seen`]; UTC ms).
    pub async fn wipe_seen_at(&self) -> Result<Option<i64>> {
        Ok(self.setting(WIPE_SEEN_SETTING).await?.and_then(|at| at.parse::<i64>().ok()))
    }

    /// When a wipe was last noted, if no complete listing has begun since.
    pub async fn wipe_unlisted(&self) -> Result<Option<i64>> {
        let Some(seen) = self.wipe_seen_at().await? else { return Ok(None) };
        let listed_since = self.last_complete_sync().await?.is_some_and(|run| run.started_at > seen);
        Ok((!listed_since).then_some(seen))
    }
}

/// When a wipe was last seen ([`Registry::note_wipe_seen`]).
const WIPE_SEEN_SETTING: &str = "wipe_seen_at";

#[derive(Debug, PartialEq)]
enum Mark {
    Recreated,
    Missing,
    CameBack,
}

/// What a sync marks on a known account, from its classified pair: one rule, so the writes
/// cannot disagree with the report. `state`: the stored one, beside its standing.
fn mark_for(known: &Known, listed: Option<&Listed>, state: AccountState) -> Option<Mark> {
    match classify(Some(known), listed)? {
        // Newly taken by someone lifeboat cannot vouch for.
        Class::Recreated if known.standing != AccountState::Recreated => Some(Mark::Recreated),
        // Not a hold made since this listing began: the listing is too old to say it is gone, and
        // holding it anew would find lifeboat's own account there and take it for a stranger's.
        Class::Missing if state != AccountState::Missing && !known.custody_since_listing => Some(Mark::Missing),
        Class::CameBack => Some(Mark::CameBack),
        _ => None,
    }
}

#[derive(sqlx::FromRow)]
struct PairRow {
    known_id: Option<String>,
    known_created: Option<i64>,
    known_standing: Option<AccountState>,
    known_state: Option<AccountState>,
    custody_since_listing: Option<i64>,
    known_lost_created: Option<i64>,
    listed_id: Option<String>,
    listed_deactivated: Option<i64>,
    listed_locked: Option<i64>,
    listed_created: Option<i64>,
}

/// Which present accounts' details a sync reads. Recreated IDs never: whoever holds one may not
/// be the person the registry knew, so their emails are not taken as that person's.
#[derive(Debug, Clone, Copy)]
pub enum DetailsDue {
    /// Never read.
    New,
    /// Read before, and due again at `now` (their due time, or, for
    /// accounts read before due times existed, read before `stale_before`).
    Again { now: i64, stale_before: i64 },
}

impl DetailsDue {
    /// Over `accounts`, with `$1` now and `$2` stale_before.
    fn predicate(self) -> String {
        let read = match self {
            DetailsDue::New => "details_fetched_at IS NULL AND $1 = $1 AND $2 = $2",
            DetailsDue::Again { .. } => {
                "details_fetched_at IS NOT NULL \
                 AND (details_due_at <= $1 OR (details_due_at IS NULL AND details_fetched_at < $2))"
            }
        };
        format!("{ITS_PERSONS_PRESENT} AND {read}")
    }

    /// `$1` (now) and `$2` (stale_before) of [`Self::predicate`].
    fn bounds(self) -> (i64, i64) {
        match self {
            DetailsDue::New => (0, 0),
            DetailsDue::Again { now, stale_before } => (now, stale_before),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountState::{Claimed, Held, Missing, Present, Recreated};

    #[test]
    fn a_sync_marks_a_known_account_by_its_classified_pair() {
        // (standing, listed with a creation second, stored state, custody
        // taken since the listing began, the mark); created at second 10.
        let cases = [
            // An ID registered again is marked once.
            (Present, Some(20), Present, false, Some(Mark::Recreated)),
            (Claimed, Some(20), Present, false, Some(Mark::Recreated)),
            (Recreated, Some(20), Present, false, None),
            // The same second is the same registration.
            (Present, Some(10), Present, false, None),
            // A hold under way is never marked a stranger's (its creation
            // time is unknown: the registry's is the lost account's).
            (Held, Some(20), Missing, false, None),
            // A hold made, then lost and registered by someone else.
            (Held, Some(20), Present, false, Some(Mark::Recreated)),
            (Held, Some(10), Present, false, None),
            // An unlisted account is marked missing once.
            (Present, None, Present, false, Some(Mark::Missing)),
            (Missing, None, Missing, false, None),
            // Held, then lost again in a second wipe: held anew.
            (Held, None, Present, false, Some(Mark::Missing)),
            // A hold made while the listing ran is not marked missing.
            (Held, None, Present, true, None),
        ];
        for (standing, listed_s, state, custody_since_listing, mark) in cases {
            let holding = standing == Held && state == Missing;
            let created_at_ms = if holding { None } else { Some(10_000) };
            let known = Known {
                user_id: "@a:x".to_owned(),
                created_at_ms,
                standing,
                lost_created_at: None,
                custody_since_listing,
            };
            let listed = listed_s.map(|created_s: i64| Listed {
                user_id: "@a:x".to_owned(),
                deactivated: false,
                locked: false,
                created_at_ms: Some(created_s * 1000 + 999),
            });
            let marked = mark_for(&known, listed.as_ref(), state);
            assert_eq!(marked, mark, "{standing:?}, listed {listed_s:?}, stored {state:?}, {custody_since_listing}");
        }
    }
}
