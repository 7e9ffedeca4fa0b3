//! Pending proofs that a person holds an email address (codes mailed by
//! the bot). Codes are stored hashed and expire; a few wrong guesses use
//! a code up.

use sha2::{Digest, Sha256};

use super::{Actor, ContactAddress, ContactKind, ContactSource, Error, Registry, Result, now_ms};
use crate::email::EmailAddress;
use crate::user_id::UserId;

/// Wrong codes tolerated per pending verification.
pub const MAX_CODE_ATTEMPTS: i64 = 5;

/// How a code is stored (the bot's codes here, the web page's in its links).
pub fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.trim().as_bytes()))
}

/// What sending a code back did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// The contact is now verified: this address.
    Verified(String),
    /// Wrong code (the pending verifications lose one attempt).
    Wrong,
    /// Nothing pending (expired, used up, or never asked).
    NothingPending,
}

/// How many codes one person may ask for, and one address may be mailed.
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    /// Codes one person asked for in the last hour (each is an email to an
    /// address they typed: no mail bombing through the bot).
    pub per_person_per_hour: i64,
    /// Codes waiting at one address, whoever asked (else anyone could have
    /// the bot mail one inbox without end, a few people at a time).
    pub live_per_address: i64,
    /// Codes one person asked for to one address in the last day: codes
    /// expire, and one account asking again as each one did would mail an
    /// inbox about 150 times a day. Counted per person, so that others
    /// asking cannot use up the day of the address's owner.
    pub same_address_per_day: i64,
    /// Codes asked for in the last hour by everyone together: where anyone
    /// may register, many new accounts could otherwise spend the mail
    /// relay's quota (and its name) on addresses of their choosing.
    pub in_all_per_hour: i64,
}

pub const CODE_LIMITS: CodeLimits =
    CodeLimits { per_person_per_hour: 5, live_per_address: 3, same_address_per_day: 6, in_all_per_hour: 100 };

impl Registry {
    /// Records a pending verification; `false` (nothing recorded) when
    /// `limits` allow no more.
    pub async fn start_contact_verification(
        &self,
        user_id: &UserId,
        address: &EmailAddress,
        code: &str,
        valid_ms: i64,
        limits: CodeLimits,
    ) -> Result<bool> {
        let now = now_ms();
        // Counted and written under one write lock: a burst of requests
        // cannot each see room for one more.
        let mut tx = self.begin_write_locking("contact_verifications").await?;
        let started = sqlx::query(
            "INSERT INTO contact_verifications (user_id, address, code_sha256, created_at, expires_at, mailbox) \
             SELECT $1, $2, $3, $4, $5, $12 \
             WHERE (SELECT COUNT(*) FROM contact_verifications WHERE user_id = $1 AND created_at > $6) < $7 \
               AND (SELECT COUNT(*) FROM contact_verifications \
                    WHERE mailbox = $12 AND verified_at IS NULL AND expires_at > $4) < $8 \
               AND (SELECT COUNT(*) FROM contact_verifications \
                    WHERE user_id = $1 AND mailbox = $12 AND created_at > $10) < $11 \
               AND (SELECT COUNT(*) FROM contact_verifications WHERE created_at > $6) < $9",
        )
        .bind(user_id)
        .bind(address)
        .bind(code_hash(code))
        .bind(now)
        .bind(now + valid_ms)
        .bind(now - 3_600_000)
        .bind(limits.per_person_per_hour)
        .bind(limits.live_per_address)
        .bind(limits.in_all_per_hour)
        .bind(now - 24 * 3_600_000)
        .bind(limits.same_address_per_day)
        .bind(address.mailbox())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(started.rows_affected() == 1)
    }

    /// Checks a code sent back by `user_id`; on a match the address becomes
    /// a verified email contact of theirs (audited as `actor`).
    pub async fn check_contact_code(&self, user_id: &UserId, code: &str, actor: &Actor) -> Result<CodeCheck> {
        let now = now_ms();
        // One try is spent on every live code before any is compared, in
        // one statement: parallel guesses get MAX_CODE_ATTEMPTS in all.
        let spent: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE contact_verifications SET attempts = attempts + 1 \
             WHERE user_id = $1 AND verified_at IS NULL AND expires_at > $2 AND attempts < $3 \
             RETURNING id, address, code_sha256",
        )
        .bind(user_id)
        .bind(now)
        .bind(MAX_CODE_ATTEMPTS)
        .fetch_all(&self.pool)
        .await?;
        if spent.is_empty() {
            return Ok(CodeCheck::NothingPending);
        }
        let given = code_hash(code);
        // The newest code first, as they were mailed.
        let Some((id, address, _)) = spent.iter().filter(|(_, _, stored)| *stored == given).max_by_key(|(id, ..)| *id)
        else {
            return Ok(CodeCheck::Wrong);
        };
        sqlx::query("UPDATE contact_verifications SET verified_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        // Stored from a checked address when the code was sent.
        let contact =
            EmailAddress::parse(address).map(ContactAddress::Email).map_err(|err| Error::Refused(err.to_string()))?;
        self.add_contact(user_id, &contact, ContactSource::User, Some(now), actor).await?;
        // Known before, unverified (e.g. added by an admin): now it is proven.
        sqlx::query(
            "UPDATE contacts SET verified_at = $4 \
             WHERE user_id = $1 AND kind = $2 AND address = $3 AND verified_at IS NULL",
        )
        .bind(user_id)
        .bind(ContactKind::Email.as_str())
        .bind(address)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(CodeCheck::Verified(address.clone()))
    }
}
