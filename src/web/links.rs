//! The single-use links `/token` and `/subscribe` mail: signed for their
//! purpose with the link key, kept in `web_links`, valid for 30 minutes.

use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::pages::{self, Chrome, Message, WebError};
use super::{WebState, signing};
use crate::registry::{WebLink, now_ms};

/// `?link=…&sig=…`, as the mailed URL carries them.
#[derive(Deserialize)]
pub struct LinkQuery {
    pub link: Option<String>,
    pub sig: Option<String>,
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
    /// proves nothing), whatever its state.
    pub async fn signed(&self, state: &WebState, link: &str, sig: &str) -> Result<Option<WebLink>, WebError> {
        let key = state.key().await?;
        if link.len() > 64 || !signing::verify(key, &signing::link_message(self.purpose, link), sig) {
            return Ok(None);
        }
        let found = state.registry.web_link(link).await?;
        Ok(found.filter(|found| found.purpose == self.purpose))
    }

    /// The stored link, if signed and still usable (not expired, not used).
    pub async fn live(&self, state: &WebState, link: &str, sig: &str) -> Result<Option<WebLink>, WebError> {
        Ok(self.signed(state, link, sig).await?.filter(|found| found.is_live(now_ms())))
    }

    /// The page for a link that is not valid, expired or used.
    pub fn dead(&self, state: &WebState) -> Response {
        let sentence = format!(
            "The link is not valid, has expired (links work for 30 minutes), or was used already. You can {}.",
            self.hint
        );
        let page =
            Message::new(state, "This link does not work", &[sentence.as_str()]).next(self.again.0, self.again.1);
        pages::html(StatusCode::BAD_REQUEST, &page)
    }

    /// What the mailed link opens: a page with a button, so that a mail
    /// scanner following links does not use up the single use. `page` makes
    /// it from the chrome, a CSRF token, the link and its signature.
    pub async fn confirm_page<T: Template>(
        &self,
        state: &WebState,
        headers: &HeaderMap,
        query: LinkQuery,
        page: impl FnOnce(Chrome, String, String, String) -> T,
    ) -> Response {
        let (Some(link), Some(sig)) = (query.link, query.sig) else { return self.dead(state) };
        match self.live(state, &link, &sig).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.dead(state),
            Err(err) => return err.page(state),
        }
        let chrome = Chrome::of(state);
        pages::with_csrf(state, headers, |csrf| pages::html(StatusCode::OK, &page(chrome, csrf, link, sig))).await
    }
}
