//! What the web page keeps: signed single-use links (token requests and
//! contact subscriptions), and contacts' opt-outs.

use super::{Actor, Registry, Result, now_ms};
use crate::email::EmailAddress;
use crate::user_id::UserId;

/// An email contact a token-request link may be mailed to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MailableContact {
    pub id: i64,
    pub user_id: UserId,
    pub address: EmailAddress,
}

/// A link the web page is about to mail.
pub struct NewWebLink<'a> {
    pub id: &'a str,
    pub purpose: &'a str,
    pub user_id: &'a UserId,
    pub address: &'a EmailAddress,
    /// What the link's code is, or that it carries none yet (a marker).
    pub code_hash: Option<&'a str>,
    pub expires_at: i64,
    /// The network of whoever asked for it (the web page's network key).
    pub asked_from: Option<&'a str>,
    /// How a way-back request named its person (none for subscriptions).
    pub asked_as: Option<AskedAs>,
}

crate::checked_text::stored_as_text! {
    /// How someone asking for a way back named its person: each way has its
    /// own day of links to one address, so strangers asking by a public
    /// Matrix ID cannot use up the day of its owner typing their address.
    pub enum AskedAs {
        Id = "id",
        Address = "address",
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebLink {
    pub purpose: String,
    pub user_id: UserId,
    pub address: EmailAddress,
    pub code_hash: Option<String>,
    pub attempts: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// Reads [`WebLink`]s.
const SELECT_WEB_LINKS: &str =
    "SELECT purpose, user_id, address, code_hash, attempts, expires_at, used_at FROM web_links";

/// Only verified email contacts that have not opted out are ever written to.
pub(super) const MAILABLE: &str = "kind = 'email' AND verified_at IS NOT NULL AND opted_out_at IS NULL";

/// A live link whose email may still arrive (its delivery was not given up): one that never
/// arrived must not hold back the person's next request.
const MAY_ARRIVE: &str = "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = web_links.delivery_id \
                          AND d.state IN ('failed', 'skipped'))";

impl Registry {
    /// The mailable contacts holding `address` (one per account that has it).
    pub async fn mailable_contacts_by_address(&self, address: &EmailAddress) -> Result<Vec<MailableContact>> {
        self.mailable_contacts("address", address.as_str()).await
    }

    /// The mailable contacts of one account.
    pub async fn mailable_contacts_of(&self, user_id: &UserId) -> Result<Vec<MailableContact>> {
        self.mailable_contacts("user_id", user_id.as_str()).await
    }

    /// Mailable contacts whose `column` (a constant of the caller's) is `value`.
    async fn mailable_contacts(&self, column: &'static str, value: &str) -> Result<Vec<MailableContact>> {
        let sql = format!("SELECT id, user_id, address FROM contacts WHERE {column} = $1 AND {MAILABLE} ORDER BY id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(value).fetch_all(&self.pool).await?)
    }

    /// Records a link before it is mailed. Expired links are swept here, so
    /// the table stays small without a job of its own.
    pub async fn create_web_link(&self, link: NewWebLink<'_>) -> Result<()> {
        let NewWebLink { id, purpose, user_id, address, code_hash, expires_at, asked_from, asked_as } = link;
        let now = now_ms();
        // Kept a day past expiry, so "expired" can still be told from
        // "unknown", and a day's links can be counted.
        sqlx::query("DELETE FROM web_links WHERE expires_at < $1")
            .bind(now - super::DAY_MS)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO web_links \
             (id, purpose, user_id, address, code_hash, created_at, expires_at, mailbox, network, asked_as) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(purpose)
        .bind(user_id)
        .bind(address)
        .bind(code_hash)
        .bind(now)
        .bind(expires_at)
        .bind(address.mailbox())
        .bind(asked_from)
        .bind(asked_as)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The code link `id` stands for, once its DM went out (the link was
    /// recorded before, as one whose code did not); none for a link retired
    /// before any code went out.
    pub async fn set_web_link_code(&self, id: &str, code_hash: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE web_links SET code_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(code_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Which delivery carries link `id`'s email.
    pub async fn set_web_link_delivery(&self, id: &str, delivery_id: i64) -> Result<()> {
        sqlx::query("UPDATE web_links SET delivery_id = $2 WHERE id = $1")
            .bind(id)
            .bind(delivery_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest live link for `purpose` and `user_id`, mailed to
    /// `address`, that still stands a chance of arriving.
    pub async fn live_web_link_to(
        &self,
        purpose: &str,
        user_id: &UserId,
        address: &EmailAddress,
    ) -> Result<Option<WebLink>> {
        self.newest_live_link(purpose, user_id, address, &format!("used_at IS NULL AND {MAY_ARRIVE}")).await
    }

    /// The newest unexpired link for `purpose` and `user_id` carrying a
    /// code, mailed to `address` (a code is for one address), whether or
    /// not the mail arrived, and used or not: the code went by DM and stays the person's while the
    /// link lives, and a link retired by its spent tries still counts among
    /// the few that may carry it.
    pub async fn live_code_link(
        &self,
        purpose: &str,
        user_id: &UserId,
        address: &EmailAddress,
    ) -> Result<Option<WebLink>> {
        self.newest_live_link(purpose, user_id, address, "code_hash IS NOT NULL").await
    }

    /// The newest unexpired link for `purpose` and `user_id`, mailed to
    /// `address`, that also meets `condition` (SQL of the link's columns).
    async fn newest_live_link(
        &self,
        purpose: &str,
        user_id: &UserId,
        address: &EmailAddress,
        condition: &str,
    ) -> Result<Option<WebLink>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_WEB_LINKS} WHERE purpose = $1 AND user_id = $2 AND address = $3 AND expires_at > $4 \
             AND {condition} ORDER BY expires_at DESC LIMIT 1"
        )))
        .bind(purpose)
        .bind(user_id)
        .bind(address)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// How many links for `purpose` were made since `since` (ms).
    pub async fn web_links_made_since(&self, purpose: &str, since: i64) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM web_links WHERE purpose = $1 AND created_at >= $2")
            .bind(purpose)
            .bind(since)
            .fetch_one(&self.pool)
            .await?)
    }

    /// How many links for `purpose` mailed to `address` still work and may
    /// still arrive.
    pub async fn live_web_links_to(&self, purpose: &str, address: &EmailAddress) -> Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM web_links WHERE purpose = $1 AND mailbox = $2 \
             AND used_at IS NULL AND expires_at > $3 AND {MAY_ARRIVE}"
        )))
        .bind(purpose)
        .bind(address.mailbox())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?)
    }

    /// How many links for `purpose` asked for as `asked_as` were made for
    /// `address` since `since`, used, expired or live, whose email was not
    /// given up: in all, and of those, how many were asked from `network`.
    pub async fn web_links_to_since(
        &self,
        purpose: &str,
        address: &EmailAddress,
        since: i64,
        network: &str,
        asked_as: Option<AskedAs>,
    ) -> Result<(i64, i64)> {
        let sql = format!(
            "SELECT COUNT(*), COUNT(CASE WHEN network = $4 THEN 1 END) FROM web_links \
             WHERE purpose = $1 AND mailbox = $2 AND created_at > $3 AND COALESCE(asked_as, '') = $5 AND {MAY_ARRIVE}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(purpose)
            .bind(address.mailbox())
            .bind(since)
            .bind(network)
            .bind(asked_as.map_or("", AskedAs::as_str))
            .fetch_one(&self.pool)
            .await?)
    }

    /// How many links for `purpose` asked from `network` since `since` were
    /// made for addresses at `address`'s mail domain, whose email was not
    /// given up.
    pub async fn web_links_to_domain_since(
        &self,
        purpose: &str,
        address: &EmailAddress,
        since: i64,
        network: &str,
    ) -> Result<i64> {
        let sql = format!(
            "SELECT COUNT(*) FROM web_links WHERE purpose = $1 AND network = $2 AND created_at > $3 \
             AND SUBSTR(mailbox, LENGTH(mailbox) - LENGTH($4) + 1) = $4 AND {MAY_ARRIVE}"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(purpose)
            .bind(network)
            .bind(since)
            .bind(format!("@{}", address.mailbox_domain()))
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn web_link(&self, id: &str) -> Result<Option<WebLink>> {
        let sql = format!("{SELECT_WEB_LINKS} WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?)
    }

    /// Marks a live link used; `false` when it was used already or expired
    /// (one statement, so two clicks at once cannot both win).
    pub async fn use_web_link(&self, id: &str) -> Result<bool> {
        let used =
            sqlx::query("UPDATE web_links SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2")
                .bind(id)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        Ok(used.rows_affected() == 1)
    }

    /// Spends one of a link's `max` tries at its code, before the code is
    /// compared; `false` when none is left (or the link is used). Each link
    /// has its own: a stranger guessing through a link of their own spends
    /// nothing of its owner's. One statement, so parallel guesses share no try.
    pub async fn spend_web_link_attempt(&self, id: &str, max: i64) -> Result<bool> {
        let spent = sqlx::query(
            "UPDATE web_links SET attempts = attempts + 1 WHERE id = $1 AND attempts < $2 AND used_at IS NULL",
        )
        .bind(id)
        .bind(max)
        .execute(&self.pool)
        .await?;
        Ok(spent.rows_affected() == 1)
    }

    /// How far an account's codes for `purpose` went: how many links carry
    /// `code_hash` (used, expired and undelivered ones too), and how many
    /// codes, decoys alike, its links carried since `since` (ms).
    pub async fn code_use(
        &self,
        purpose: &str,
        user_id: &UserId,
        code_hash: Option<&str>,
        since: i64,
    ) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM web_links WHERE purpose = $1 AND user_id = $2 AND code_hash = $3), \
                    (SELECT COUNT(DISTINCT code_hash) FROM web_links \
                     WHERE purpose = $1 AND user_id = $2 AND code_hash IS NOT NULL AND created_at > $4)",
        )
        .bind(purpose)
        .bind(user_id)
        .bind(code_hash)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The address of the contact `contact_id`, if there is one.
    pub async fn contact_address(&self, contact_id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT address FROM contacts WHERE id = $1")
            .bind(contact_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Stops everything to a contact (unsubscribe), while it still has
    /// `address`. Returns `false` when it does not (any more); opting out
    /// twice keeps the first time.
    pub async fn opt_out_contact(&self, contact_id: i64, address: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let user_id: Option<String> = sqlx::query_scalar("SELECT user_id FROM contacts WHERE id = $1 AND address = $2")
            .bind(contact_id)
            .bind(address)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(user_id) = user_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        let changed = sqlx::query("UPDATE contacts SET opted_out_at = $2 WHERE id = $1 AND opted_out_at IS NULL")
            .bind(contact_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 1 {
            Self::audit_in(&mut tx, actor, "contact.opt_out", Some(&user_id), Some(address)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A person confirmed an address they had opted out with: mail to it again.
    pub async fn resubscribe_contact(&self, user_id: &UserId, address: &EmailAddress, actor: &Actor) -> Result<()> {
        let resubscribe = sqlx::query(
            "UPDATE contacts SET opted_out_at = NULL, verified_at = COALESCE(verified_at, $3) \
             WHERE user_id = $1 AND kind = 'email' AND address = $2",
        )
        .bind(user_id)
        .bind(address)
        .bind(now_ms());
        self.write_audited(resubscribe, actor, "contact.resubscribe", user_id.as_str(), address.as_str())
            .await
            .map(drop)
    }
}
