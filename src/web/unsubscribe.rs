//! `/unsubscribe?contact=ID&sig=HMAC`, the link in every notice email
//! (format fixed by `crate::links`). GET shows a confirm button; POST
//! unsubscribes, either from that form (with its CSRF token) or as an
//! RFC 8058 one-click request from the mail client, which carries no CSRF
//! token: there, the link's signature is the proof.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::pages::{self, Chrome, LinkQuery, Message, WebError};
use super::{WebState, guard};
use crate::registry::Actor;

#[derive(Deserialize)]
pub struct UnsubscribeLink {
    contact: Option<String>,
    sig: Option<String>,
}

impl UnsubscribeLink {
    /// The contact id, when the signature is right for it.
    fn verified(&self, key: &secrecy::SecretString) -> Option<i64> {
        let contact: i64 = self.contact.as_deref()?.parse().ok()?;
        crate::links::verify_unsubscribe(key, contact, self.sig.as_deref()?).then_some(contact)
    }
}

#[derive(Template)]
#[template(path = "web/unsubscribe_confirm.html")]
struct Confirm {
    chrome: Chrome,
    csrf: String,
    action: String,
}

pub async fn confirm(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(query): LinkQuery<UnsubscribeLink>,
) -> Response {
    let key = match state.key().await {
        Ok(key) => key,
        Err(err) => return WebError::from(err).page(&state),
    };
    let (Some(contact), Some(sig)) = (query.verified(key), query.sig.as_deref()) else { return bad_link(&state) };
    let chrome = Chrome::of(&state);
    let action = format!("{}/unsubscribe?contact={contact}&sig={sig}", chrome.base);
    pages::with_csrf(&state, &headers, |csrf| pages::html(StatusCode::OK, &Confirm { chrome, csrf, action })).await
}

pub async fn unsubscribe(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(query): LinkQuery<UnsubscribeLink>,
    body: Bytes,
) -> Response {
    let key = match state.key().await {
        Ok(key) => key,
        Err(err) => return WebError::from(err).page(&state),
    };
    let Some(contact) = query.verified(key) else { return bad_link(&state) };
    let one_click = is_one_click(&headers, &body);
    if !one_click {
        let csrf = url::form_urlencoded::parse(&body).find(|(name, _)| name == "csrf").map(|(_, value)| value);
        if !guard::same_origin(&headers, &state.web().public_url) || !guard::csrf_ok(key, &headers, csrf.as_deref()) {
            return pages::csrf_refused(&state);
        }
    }
    let detail = if one_click { "one-click unsubscribe" } else { "unsubscribe page" };
    match state.registry.opt_out_contact(contact, &Actor::web(Some(detail.to_owned()))).await {
        Ok(known) => {
            let sentence = if known {
                "We will send nothing more to this email address. To hear from us again, add it on the subscription page."
            } else {
                // Signed for a contact since removed: nothing is sent to it either.
                "We will send nothing more to this address."
            };
            Message::new(&state, "You are unsubscribed", &[sentence]).page(StatusCode::OK)
        }
        Err(err) => WebError::from(err).page(&state),
    }
}

/// RFC 8058: the body `List-Unsubscribe=One-Click`, form-urlencoded or as
/// one field of multipart/form-data.
fn is_one_click(headers: &HeaderMap, body: &[u8]) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        let text = String::from_utf8_lossy(body);
        return text.contains("name=\"List-Unsubscribe\"") && text.contains("One-Click");
    }
    url::form_urlencoded::parse(body).any(|(name, value)| name == "List-Unsubscribe" && value == "One-Click")
}

fn bad_link(state: &WebState) -> Response {
    Message::new(
        state,
        "This unsubscribe link does not work",
        &["The link is incomplete or was changed. Use the link from the email as it is, or contact the admin."],
    )
    .page(StatusCode::BAD_REQUEST)
}
