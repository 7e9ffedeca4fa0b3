//! Accounts: never deleted; an account that vanishes from Synapse is marked
//! missing, with the time it was first found missing.

use serde::Serialize;

use super::{Registry, Result};
use crate::reconcile::Known;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountState {
    Present,
    Missing,
    Deactivated,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Present => "present",
            AccountState::Missing => "missing",
            AccountState::Deactivated => "deactivated",
        }
    }

    fn parse(text: &str) -> AccountState {
        match text {
            "missing" => AccountState::Missing,
            "deactivated" => AccountState::Deactivated,
            _ => AccountState::Present,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub user_id: String,
    pub display_name: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub locked: bool,
    pub is_guest: bool,
    pub user_type: Option<String>,
    pub synapse_created_at: Option<i64>,
    pub first_seen_at: i64,
    pub last_seen_present_at: Option<i64>,
    pub state: AccountState,
    pub missing_since: Option<i64>,
    pub recreated_at: Option<i64>,
    pub details_fetched_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    user_id: String,
    display_name: Option<String>,
    admin: i64,
    deactivated: i64,
    locked: i64,
    is_guest: i64,
    user_type: Option<String>,
    synapse_created_at: Option<i64>,
    first_seen_at: i64,
    last_seen_present_at: Option<i64>,
    state: String,
    missing_since: Option<i64>,
    recreated_at: Option<i64>,
    details_fetched_at: Option<i64>,
}

impl From<AccountRow> for Account {
    fn from(row: AccountRow) -> Self {
        Account {
            user_id: row.user_id,
            display_name: row.display_name,
            admin: row.admin != 0,
            deactivated: row.deactivated != 0,
            locked: row.locked != 0,
            is_guest: row.is_guest != 0,
            user_type: row.user_type,
            synapse_created_at: row.synapse_created_at,
            first_seen_at: row.first_seen_at,
            last_seen_present_at: row.last_seen_present_at,
            state: AccountState::parse(&row.state),
            missing_since: row.missing_since,
            recreated_at: row.recreated_at,
            details_fetched_at: row.details_fetched_at,
        }
    }
}

/// The `SELECT` list of an [`AccountRow`], as a literal for `concat!`.
macro_rules! account_columns {
    () => {
        "user_id, display_name, admin, deactivated, locked, is_guest, user_type, synapse_created_at, \
         first_seen_at, last_seen_present_at, state, missing_since, recreated_at, details_fetched_at"
    };
}

impl Registry {
    pub async fn account(&self, user_id: &str) -> Result<Option<Account>> {
        let row: Option<AccountRow> =
            sqlx::query_as(concat!("SELECT ", account_columns!(), " FROM accounts WHERE user_id = $1"))
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Account::from))
    }

    /// Accounts in user-ID order, optionally only those in `state`.
    pub async fn accounts(&self, state: Option<AccountState>) -> Result<Vec<Account>> {
        let rows: Vec<AccountRow> = match state {
            Some(state) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE state = $1 ORDER BY user_id"
                ))
                .bind(state.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(concat!("SELECT ", account_columns!(), " FROM accounts ORDER BY user_id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(Account::from).collect())
    }

    /// What reconciliation needs of every known account, sorted bytewise by ID.
    pub async fn known_accounts(&self) -> Result<Vec<Known>> {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT user_id, synapse_created_at FROM accounts").fetch_all(&self.pool).await?;
        let mut known: Vec<Known> =
            rows.into_iter().map(|(user_id, created_at_ms)| Known { user_id, created_at_ms }).collect();
        // Sorted here, not by SQL, so the order never depends on a collation.
        known.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(known)
    }
}
