//! What can go wrong talking to Synapse, in words an admin can act on.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: the token is missing, unknown (revoked, or the database was
    /// lost) or expired.
    #[error(
        "Synapse rejected the admin token ({errcode}): the token is unknown or expired; if Synapse's database was lost this is expected, otherwise put a current admin token in homeserver.admin_token"
    )]
    Unauthorized { errcode: String },
    /// 401 with `soft_logout`: Synapse knows the token, and it expired (a
    /// session with refresh tokens, or one a provider hands out). Not a
    /// wipe: a wiped Synapse knows no token at all.
    #[error(
        "Synapse says the admin token expired ({errcode}, soft logout): lifeboat needs one that does not expire; put an admin's access token from a login without refresh tokens in homeserver.admin_token"
    )]
    Expired { errcode: String },
    /// 403: the token works but its account is not a server admin.
    #[error(
        "Synapse refused the request ({errcode}: {message}): the token in homeserver.admin_token must belong to a server admin"
    )]
    Forbidden { errcode: String, message: String },
    #[error("Synapse is rate limiting lifeboat (429){}", .retry_after.map(|after| format!("; retry after {} ms", after.as_millis())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Connection refused, timeout, or a 5xx: Synapse may be down.
    /// `matrix_error`: a 502 or 504 that carried one (`errcode: message`):
    /// Synapse itself answered, and a request it made elsewhere (a
    /// federated join) failed. `timed_out`: no answer within
    /// homeserver.timeout.
    #[error("Synapse at {url} is unavailable: {detail}; check that it is running and that homeserver.url is right")]
    Unavailable { url: String, detail: String, matrix_error: Option<String>, timed_out: bool },
    /// homeserver.url cannot work as written: a name that does not resolve,
    /// https:// against a plain-HTTP port, an untrusted certificate, a
    /// server that is not Synapse. Retrying at once will not help (though a
    /// proxy's page or a name missing while a container restarts may pass).
    #[error("cannot reach Synapse at {url}: {detail}")]
    WrongUrl { url: String, detail: String },
    #[error("Synapse at {url} sent a response lifeboat cannot use: {detail}")]
    BadResponse { url: String, detail: String },
    /// Another 4xx: Synapse refused this particular request.
    #[error("Synapse refused the request ({status} {errcode}: {message})")]
    Rejected { status: u16, errcode: String, message: String },
    #[error("Synapse answered 404 Not Found")]
    NotFound,
}

/// `text`, clipped with an ellipsis (see `MatrixError::clipped`), without
/// a secret's first characters the clip left just before it.
fn hide_cut_secret(text: String, secrets: &[&str]) -> String {
    let Some(clipped) = text.strip_suffix('…') else { return text };
    for secret in secrets {
        let cut = (4..secret.len())
            .rev()
            .filter(|&at| secret.is_char_boundary(at))
            .find(|&at| clipped.ends_with(&secret[..at]));
        if let Some(at) = cut {
            return format!("{}[token]…", &clipped[..clipped.len() - at]);
        }
    }
    text
}

impl Error {
    /// The same error with `secret` (e.g. a token in a request path) hidden.
    pub fn hiding(self, secret: &str) -> Error {
        // As sent too: inside a path it is percent-encoded.
        let encoded = super::urlencode(secret);
        let hide = |text: String| {
            let text = text.replace(secret, "[token]").replace(&encoded, "[token]");
            hide_cut_secret(text, &[secret, &encoded])
        };
        match self {
            Error::Unavailable { url, detail, matrix_error, timed_out } => {
                Error::Unavailable { url, detail: hide(detail), matrix_error: matrix_error.map(hide), timed_out }
            }
            Error::BadResponse { url, detail } => Error::BadResponse { url, detail: hide(detail) },
            Error::WrongUrl { url, detail } => Error::WrongUrl { url, detail: hide(detail) },
            Error::Rejected { status, errcode, message } => Error::Rejected { status, errcode, message: hide(message) },
            Error::Forbidden { errcode, message } => Error::Forbidden { errcode, message: hide(message) },
            other => other,
        }
    }

    /// Worth another try after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::RateLimited { .. } | Error::Unavailable { .. })
    }

    /// No answer within homeserver.timeout (not a refusal, not a 5xx).
    pub fn timed_out(&self) -> bool {
        matches!(self, Error::Unavailable { timed_out: true, .. })
    }

    /// What Synapse said when it answered a 502 or 504 with a Matrix error:
    /// it is up, and a server it asked failed (a remote one, for a join).
    pub fn matrix_error_of_a_failure(&self) -> Option<&str> {
        match self {
            Error::Unavailable { matrix_error, .. } => matrix_error.as_deref(),
            _ => None,
        }
    }

    /// Will fail the same way until someone changes lifeboat's setup: a
    /// token that is not a server admin's, or that expired. A proxy's
    /// error page, a name that does not resolve and the like may be a
    /// restart under way, and are not counted.
    pub fn is_setup_fault(&self) -> bool {
        matches!(self, Error::Forbidden { .. } | Error::Expired { .. })
    }

    /// 401 or 403: the token will not do, for this request or the next.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Unauthorized { .. } | Error::Expired { .. } | Error::Forbidden { .. })
    }

    /// 401, or a token Synapse says expired: nothing lifeboat asks with it
    /// will work until an admin gives it another.
    pub fn token_no_longer_works(&self) -> bool {
        matches!(self, Error::Unauthorized { .. } | Error::Expired { .. })
    }

    /// The token itself is dead (as after a wipe), not merely lacking rights.
    pub fn is_unknown_token(&self) -> bool {
        matches!(self, Error::Unauthorized { errcode } if errcode == "M_UNKNOWN_TOKEN")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_hidden_whole_and_where_a_clip_cut_it() {
        let rejected = |message: &str| Error::Rejected { status: 400, errcode: "M_X".into(), message: message.into() };
        let hidden = |err: Error| match err.hiding("s3cret-token-value") {
            Error::Rejected { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(hidden(rejected("bad s3cret-token-value here")), "bad [token] here");
        assert_eq!(hidden(rejected("a long text ending in s3cret-to…")), "a long text ending in [token]…");
        assert_eq!(hidden(rejected("an ordinary end…")), "an ordinary end…");
    }
}
