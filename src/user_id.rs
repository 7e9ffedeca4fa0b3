//! Matrix user IDs (`@localpart:server`), checked once at the boundary.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{input}` is not a Matrix user ID: {reason} (write it like @alice:example.org)")]
pub struct InvalidUserId {
    input: String,
    reason: &'static str,
}

impl UserId {
    pub fn parse(input: &str) -> Result<Self, InvalidUserId> {
        let fail = |reason| InvalidUserId { input: input.to_owned(), reason };
        let text = input.trim();
        let Some(rest) = text.strip_prefix('@') else {
            return Err(fail("it must start with @"));
        };
        let Some((localpart, server)) = rest.split_once(':') else {
            return Err(fail("it has no :server part"));
        };
        if localpart.is_empty() {
            return Err(fail("the localpart is empty"));
        }
        if server.is_empty() {
            return Err(fail("the server name is empty"));
        }
        if text.len() > 255 {
            return Err(fail("it is longer than 255 bytes"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains spaces or control characters"));
        }
        Ok(UserId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn localpart(&self) -> &str {
        self.0[1..].split_once(':').map(|(local, _)| local).unwrap_or("")
    }

    pub fn server_name(&self) -> &str {
        self.0.split_once(':').map(|(_, server)| server).unwrap_or("")
    }

    /// Whether the localpart keeps to the Matrix grammar (printable ASCII
    /// but `:`, historical IDs included): no ID a homeserver makes holds
    /// more, such as blank-looking or right-to-left characters.
    pub fn has_matrix_localpart(&self) -> bool {
        self.localpart().bytes().all(|byte| byte.is_ascii_graphic() && byte != b':')
    }
}

/// An ID the Matrix SDK parsed (a message's sender, say).
impl From<&matrix_sdk::ruma::UserId> for UserId {
    fn from(id: &matrix_sdk::ruma::UserId) -> Self {
        UserId(id.as_str().to_owned())
    }
}

// Bound and read back as the text it is: the registry's API takes checked IDs.
crate::checked_text::checked_text!(UserId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_split_into_localpart_and_server() {
        let id = UserId::parse("@alice:example.org:8448").unwrap();
        assert_eq!(id.localpart(), "alice");
        assert_eq!(id.server_name(), "example.org:8448");
    }

    #[test]
    fn malformed_user_ids_are_refused() {
        for bad in ["alice", "@alice", "@:example.org", "@alice:", "@al ice:example.org"] {
            assert!(UserId::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
