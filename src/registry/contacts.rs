//! Contacts: how to reach the person behind an account when the account
//! itself is gone. Addresses are stored normalized (see `email`).

use serde::Serialize;

use super::{Actor, Error, Registry, Result, now_ms};
use crate::checked_text::stored_as_text;
use crate::email::EmailAddress;
use crate::user_id::UserId;

stored_as_text! {
    pub enum ContactKind {
        Email = "email",
        Matrix = "matrix",
    }
}

/// A contact's address as an admin writes it: an email address, or a
/// Matrix ID (it starts with `@`), meant for an account on another
/// homeserver, which a wipe of this one does not take with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactAddress {
    Email(EmailAddress),
    Matrix(UserId),
}

impl ContactAddress {
    /// One sentence when `text` is neither.
    pub fn parse(text: &str) -> std::result::Result<ContactAddress, String> {
        if text.trim_start().starts_with('@') {
            UserId::parse(text).map(ContactAddress::Matrix).map_err(|err| err.to_string())
        } else {
            EmailAddress::parse(text).map(ContactAddress::Email).map_err(|err| err.to_string())
        }
    }

    pub fn kind(&self) -> ContactKind {
        match self {
            ContactAddress::Email(_) => ContactKind::Email,
            ContactAddress::Matrix(_) => ContactKind::Matrix,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ContactAddress::Email(address) => address.as_str(),
            ContactAddress::Matrix(user_id) => user_id.as_str(),
        }
    }
}

impl std::fmt::Display for ContactAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

stored_as_text! {
    /// Who told lifeboat about a contact.
    pub enum ContactSource {
        /// Imported from the account's threepids in Synapse.
        Synapse = "synapse",
        /// Added by an admin.
        Admin = "admin",
        /// Added by the person themself.
        User = "user",
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Contact {
    /// What links sent to it name (not shown: a number of the registry's).
    #[serde(skip)]
    pub id: i64,
    pub user_id: String,
    pub kind: ContactKind,
    pub address: String,
    pub source: ContactSource,
    pub verified_at: Option<i64>,
    pub opted_out_at: Option<i64>,
    pub added_at: i64,
}

/// What `add_contact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddContact {
    Added,
    AlreadyKnown,
}

impl Registry {
    /// The contact `id`, if there is one.
    pub async fn contact(&self, id: i64) -> Result<Option<Contact>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, kind, address, source, verified_at, opted_out_at, added_at FROM contacts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn contacts_of(&self, user_id: &UserId) -> Result<Vec<Contact>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, kind, address, source, verified_at, opted_out_at, added_at \
             FROM contacts WHERE user_id = $1 ORDER BY kind, address",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Accounts present on Synapse with no verified contact that has not
    /// opted out: after a loss, nobody could reach their person.
    pub async fn accounts_without_verified_contact(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT a.user_id FROM accounts a WHERE a.state = 'present' AND NOT EXISTS \
             (SELECT 1 FROM contacts c WHERE c.user_id = a.user_id AND c.verified_at IS NOT NULL \
              AND c.opted_out_at IS NULL) ORDER BY a.user_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Contact counts per account, for listings: (user_id, contacts).
    pub async fn contact_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT user_id, COUNT(*) FROM contacts GROUP BY user_id").fetch_all(&self.pool).await?)
    }

    /// Adds a contact to a known account; adding it again changes nothing.
    pub async fn add_contact(
        &self,
        user_id: &UserId,
        address: &ContactAddress,
        source: ContactSource,
        verified_at: Option<i64>,
        actor: &Actor,
    ) -> Result<AddContact> {
        if *address == ContactAddress::Matrix(user_id.clone()) {
            return Err(Error::Refused(format!(
                "{address} is the account itself, not a contact: lifeboat sends it a DM anyway while it exists"
            )));
        }
        let mut tx = self.begin_write().await?;
        let known = sqlx::query("SELECT 1 FROM accounts WHERE user_id = $1").bind(user_id).fetch_optional(&mut *tx);
        if known.await?.is_none() {
            return Err(Error::UnknownAccount(user_id.to_string()));
        }
        let inserted = sqlx::query(
            "INSERT INTO contacts (user_id, kind, address, source, verified_at, added_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, kind, address) DO NOTHING",
        )
        .bind(user_id)
        .bind(address.kind())
        .bind(address.as_str())
        .bind(source.as_str())
        .bind(verified_at)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Given by its person or an admin as well: no longer Synapse's
            // alone, so it stays should Synapse drop it.
            let claimed = sqlx::query(
                "UPDATE contacts SET source = $4 WHERE user_id = $1 AND kind = $2 AND address = $3 \
                 AND source = 'synapse' AND $4 <> 'synapse'",
            )
            .bind(user_id)
            .bind(address.kind())
            .bind(address.as_str())
            .bind(source.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 1 {
                let detail = format!("{} {address} ({}, was synapse)", address.kind(), source.as_str());
                Self::audit_in(&mut tx, actor, "contact.add", Some(user_id.as_str()), Some(&detail)).await?;
            }
            tx.commit().await?;
            return Ok(AddContact::AlreadyKnown);
        }
        let detail = format!("{} {address} ({})", address.kind(), source.as_str());
        Self::audit_in(&mut tx, actor, "contact.add", Some(user_id.as_str()), Some(&detail)).await?;
        tx.commit().await?;
        Ok(AddContact::Added)
    }

    /// Removes a contact; `false` when there was none to remove.
    pub async fn remove_contact(&self, user_id: &UserId, address: &ContactAddress, actor: &Actor) -> Result<bool> {
        let remove = sqlx::query("DELETE FROM contacts WHERE user_id = $1 AND kind = $2 AND address = $3")
            .bind(user_id)
            .bind(address.kind())
            .bind(address.as_str());
        let detail = format!("{} {address}", address.kind());
        self.write_audited(remove, actor, "contact.remove", user_id.as_str(), &detail).await
    }
}
