//! Synapse's admin API payloads, parsed leniently: Synapse has sent some
//! booleans as 0/1 in the past, and `next_token` as a number or a string.

use serde::{Deserialize, Deserializer};

use crate::config::Scalar;

/// One account as the admin listing (`/_synapse/admin/v2/users`) shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListedUser {
    #[serde(rename = "name")]
    pub user_id: String,
    #[serde(rename = "displayname")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub admin: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub deactivated: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub locked: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_guest: bool,
    pub user_type: Option<String>,
    /// Milliseconds in the listing (the single-user endpoint uses seconds);
    /// [`MADE_BEFORE_CREATION_TIMES`] when Synapse says none. `None` only
    /// when the listing did not say (the known time then stands).
    #[serde(default, rename = "creation_ts", deserialize_with = "creation_time")]
    pub created_at_ms: Option<i64>,
}

/// When an account Synapse lists with no creation time (`null`: made
/// before Synapse kept them) counts as made: its ID registered again after
/// a wipe, which has one, is then told from it. Read as "not known yet",
/// the next listing's time would be taken as the account's own, whoever
/// made it.
pub const MADE_BEFORE_CREATION_TIMES: i64 = 0;

#[derive(Debug, Deserialize)]
pub struct UsersPage {
    pub users: Vec<ListedUser>,
    #[serde(default, deserialize_with = "lenient_token")]
    pub next_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub total: Option<i64>,
}

/// `GET /_synapse/admin/v2/users/<id>`: only what lifeboat keeps.
#[derive(Debug, Clone, Deserialize)]
pub struct UserDetails {
    /// `None` when the answer carried no list at all.
    #[serde(default)]
    pub threepids: Option<Vec<ThreePid>>,
    /// Seconds in this endpoint's answer (the listing's are milliseconds):
    /// read it as [`UserDetails::created_at_ms`].
    #[serde(default, deserialize_with = "lenient_i64")]
    creation_ts: Option<i64>,
    /// Every account lifeboat holds is locked; a stranger's new one is not.
    #[serde(default)]
    pub locked: bool,
    /// A server admin (only they, or lifeboat, may make any room's alias
    /// theirs on purpose).
    #[serde(default, deserialize_with = "lenient_bool")]
    pub admin: bool,
    /// When a token of the account was last used (Synapse keeps it after
    /// the device is logged out): never, for an account lifeboat made.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub last_seen_ts: Option<i64>,
    /// The application service (a bridge) that registered it, for an ID in
    /// its exclusive namespace (where nobody else may register one).
    #[serde(default)]
    pub appservice_id: Option<String>,
}

/// A creation time past this is in milliseconds already (as seconds it
/// would be in the year 5138; as milliseconds it is 1973).
const ALREADY_MILLISECONDS: i64 = 100_000_000_000;

impl UserDetails {
    /// When the account was made, in milliseconds like the listing's: the
    /// one place this endpoint's seconds are converted, so a Synapse that
    /// answers in milliseconds one day does not make every account look
    /// registered again.
    pub fn created_at_ms(&self) -> Option<i64> {
        self.creation_ts.map(|ts| if ts > ALREADY_MILLISECONDS { ts } else { ts.saturating_mul(1000) })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ThreePid {
    pub medium: String,
    pub address: String,
    /// Milliseconds.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub validated_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct ServerVersion {
    pub server_version: String,
}

/// The `{errcode, error}` body of a Matrix error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MatrixError {
    pub errcode: String,
    pub error: String,
    pub retry_after_ms: Option<u64>,
    /// On a 401: the token expired, and Synapse still knows it.
    pub soft_logout: bool,
}

/// The most of a Matrix error's words lifeboat keeps, and of its code.
const MAX_ERROR_CHARS: usize = 300;
const MAX_ERRCODE_CHARS: usize = 64;

impl MatrixError {
    /// Its words as one short line. They may be another server's: Synapse
    /// passes on a remote server's refusal of a join as its own, and
    /// lifeboat keeps such words (a room given up, a rejoin that failed)
    /// and shows them to admins, in the admin room too.
    pub fn clipped(self) -> MatrixError {
        MatrixError {
            errcode: crate::plain_text::short_line(&self.errcode, MAX_ERRCODE_CHARS).into_owned(),
            error: crate::plain_text::short_line(&self.error, MAX_ERROR_CHARS).into_owned(),
            ..self
        }
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(match Option::<Scalar>::deserialize(deserializer)? {
        None => false,
        Some(Scalar::Bool(value)) => value,
        Some(Scalar::Integer(value)) => value != 0,
        Some(Scalar::Float(value)) => value != 0.0,
        Some(Scalar::Text(text)) => matches!(text.as_str(), "true" | "1" | "True"),
    })
}

pub(super) fn lenient_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Scalar>::deserialize(deserializer)? {
        Some(Scalar::Integer(value)) => Some(value),
        Some(Scalar::Float(value)) => Some(value as i64),
        Some(Scalar::Text(text)) => text.trim().parse().ok(),
        Some(Scalar::Bool(_)) | None => None,
    })
}

/// A listing's `creation_ts`, when it has one: `null` is an account made
/// before Synapse kept creation times.
fn creation_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Scalar>::deserialize(deserializer)? {
        None => Some(MADE_BEFORE_CREATION_TIMES),
        Some(Scalar::Integer(value)) => Some(value),
        Some(Scalar::Float(value)) => Some(value as i64),
        Some(Scalar::Text(text)) => text.trim().parse().ok(),
        Some(Scalar::Bool(_)) => None,
    })
}

fn lenient_token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Scalar>::deserialize(deserializer)? {
        Some(Scalar::Text(text)) => Some(text),
        Some(Scalar::Integer(value)) => Some(value.to_string()),
        Some(Scalar::Float(value)) => Some((value as i64).to_string()),
        Some(Scalar::Bool(_)) | None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_servers_words_in_an_error_are_kept_to_one_short_line() {
        let long = format!("Refused.\n\u{2028}\u{202e}{}", "Call +1 555 0100 now! ".repeat(100));
        let error = MatrixError { errcode: "M_FORBIDDEN".repeat(10), error: long, ..MatrixError::default() }.clipped();
        assert!(error.error.starts_with("Refused.   Call") && error.error.ends_with('…'), "{}", error.error);
        assert!(error.error.chars().count() <= MAX_ERROR_CHARS + 1, "{}", error.error);
        assert!(error.errcode.chars().count() <= MAX_ERRCODE_CHARS + 1, "{}", error.errcode);
        let real = MatrixError { errcode: "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM".to_owned(), ..MatrixError::default() };
        assert_eq!(real.clipped().errcode, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM");
        let short = MatrixError { error: "You are banned".to_owned(), ..MatrixError::default() }.clipped();
        assert_eq!(short.error, "You are banned");
    }

    #[test]
    fn booleans_sent_as_integers_are_understood() {
        let user: ListedUser = serde_json::from_str(
            r#"{"name":"@a:x","admin":1,"deactivated":0,"locked":null,"is_guest":"true","creation_ts":1700000000000}"#,
        )
        .unwrap();
        assert!(user.admin && !user.deactivated && !user.locked && user.is_guest);
        assert_eq!(user.created_at_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn a_listed_account_without_a_creation_time_counts_as_made_before_synapse_kept_them() {
        let listed = |json: &str| serde_json::from_str::<ListedUser>(json).unwrap().created_at_ms;
        assert_eq!(listed(r#"{"name":"@a:x","creation_ts":null}"#), Some(MADE_BEFORE_CREATION_TIMES));
        assert_eq!(listed(r#"{"name":"@a:x"}"#), None, "not said: the known time stands");
        assert_eq!(listed(r#"{"name":"@a:x","creation_ts":"1700000000000"}"#), Some(1_700_000_000_000));
    }

    #[test]
    fn one_accounts_creation_time_is_read_in_milliseconds_whichever_unit_synapse_sent() {
        let made = |ts: i64| serde_json::from_value::<UserDetails>(serde_json::json!({"creation_ts": ts})).unwrap();
        assert_eq!(made(1_700_000_000).created_at_ms(), Some(1_700_000_000_000), "seconds, as Synapse sends today");
        assert_eq!(made(1_700_000_000_123).created_at_ms(), Some(1_700_000_000_123), "milliseconds stay");
    }

    #[test]
    fn numeric_next_tokens_are_read_as_strings() {
        let page: UsersPage = serde_json::from_str(r#"{"users":[],"next_token":100,"total":3}"#).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("100"));
    }
}
