//! The single-use links `/token` and `/subscribe` mail: signed for their
//! purpose with the link key, kept in `web_links`, valid for 30 minutes.
//! The signed message starts with the purpose, so a link signed for one
//! never verifies for another (nor as a CSRF token, signed as `csrf:…`).

use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use serde::Deserialize;

use super::WebState;
use super::pages::{self, Chrome, Message, WebError};
use crate::links::{sign, verify};
use crate::registry::{WebLink, now_ms};

/// `?link=…&sig=…` as the mailed URL carries them, and the confirm form's
/// post: those, its CSRF token and (on `/subscribe/confirm`) the DMed code.
#[derive(Deserialize)]
pub struct LinkFields {
    pub csrf: Option<String>,
    pub link: Option<String>,
    pub sig: Option<String>,
    pub code: Option<String>,
}

pages::posted_form!(LinkFields);

/// A link id: 32 letters and digits (~190 bits), nothing to URL-encode.
pub fn new_link_id() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// What a mailed link signs: its purpose and id.
fn link_message(purpose: &str, id: &str) -> String {
    format!("web-link:{purpose}:{id}")
}

/// `<public_url>/<path>?link=<id>&sig=<hmac>`.
pub fn link_url(public_url: &url::Url, key: &SecretString, path: &str, purpose: &str, id: &str) -> String {
    let mut url = public_url.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{path}"));
    url.query_pairs_mut().append_pair("link", id).append_pair("sig", &sign(key, &link_message(purpose, id)));
    url.to_string()
}

/// One kind of link: its purpose, and where a dead one sends the person.
pub struct LinkKind {
    pub purpose: &'static str,
    /// The page to start again from, and its button.
    pub again: (&'static str, &'static str),
    /// The end of the dead-link sentence ("You can …").
    pub hint: &'static str,
}

impl LinkKind {
    /// The stored link, if `sig` signs it for this purpose (the ID alone
    /// proves nothing) and it is still usable (not expired, not used).
    pub async fn live(&self, state: &WebState, link: &str, sig: &str) -> Result<Option<WebLink>, WebError> {
        let key = state.key().await?;
        if link.len() > 64 || !verify(key, &link_message(self.purpose, link), sig) {
            return Ok(None);
        }
        let found = state.registry.web_link(link).await?;
        Ok(found
            .filter(|found| found.purpose == self.purpose && found.used_at.is_none() && found.expires_at > now_ms()))
    }

    /// The page for a link that is not valid, expired or used.
    pub fn dead(&self, state: &WebState) -> Response {
        let sentence = format!(
            "The link is not valid, has expired (links work for 30 minutes), or was used already. You can {}.",
            self.hint
        );
        Message::new(state, "This link does not work", &[sentence.as_str()])
            .next(self.again.0, self.again.1)
            .page(StatusCode::BAD_REQUEST)
    }

    /// What the mailed link opens: a page with a button, so that a mail
    /// scanner following links does not use up the single use. `page` makes
    /// it from the chrome, a CSRF token, the link, its signature and its row.
    pub async fn confirm_page<T: Template>(
        &self,
        state: &WebState,
        headers: &HeaderMap,
        query: LinkFields,
        page: impl FnOnce(Chrome, String, String, String, &WebLink) -> T,
    ) -> Response {
        let (Some(link), Some(sig)) = (query.link, query.sig) else { return self.dead(state) };
        let found = match self.live(state, &link, &sig).await {
            Ok(Some(found)) => found,
            Ok(None) => return self.dead(state),
            Err(err) => return err.page(state),
        };
        let chrome = Chrome::of(state);
        let page = |csrf| pages::html(StatusCode::OK, &page(chrome, csrf, link, sig, &found));
        pages::with_csrf(state, headers, page).await
    }
}
