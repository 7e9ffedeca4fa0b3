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

/// What an unsubscribe link names.
enum Named {
    /// The contact (id, address), its signature right for both.
    Contact(i64, String),
    /// No contact has that id (removed): nothing goes to it anyway.
    Gone,
    Bad,
}

impl UnsubscribeLink {
    async fn named(&self, state: &WebState, key: &secrecy::SecretString) -> Result<Named, WebError> {
        let id = self.contact.as_deref().and_then(|id| id.parse::<i64>().ok());
        let (Some(id), Some(sig)) = (id, self.sig.as_deref()) else { return Ok(Named::Bad) };
        Ok(match state.registry.contact_address(id).await? {
            None => Named::Gone,
            Some(address) if crate::links::verify_unsubscribe(key, id, &address, sig) => Named::Contact(id, address),
            Some(_) => Named::Bad,
        })
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
    let contact = match query.named(&state, key).await {
        Ok(Named::Contact(contact, _)) => contact,
        Ok(Named::Gone) => return unsubscribed(&state, false),
        Ok(Named::Bad) => return bad_link(&state),
        Err(err) => return err.page(&state),
    };
    let sig = query.sig.as_deref().unwrap_or_default();
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
    let (contact, address) = match query.named(&state, key).await {
        Ok(Named::Contact(contact, address)) => (contact, address),
        Ok(Named::Gone) => return unsubscribed(&state, false),
        Ok(Named::Bad) => return bad_link(&state),
        Err(err) => return err.page(&state),
    };
    let one_click = is_one_click(&headers, &body);
    if !one_click {
        let csrf = url::form_urlencoded::parse(&body).find(|(name, _)| name == "csrf").map(|(_, value)| value);
        if !guard::same_origin(&headers, &state.web().public_url) || !guard::csrf_ok(key, &headers, csrf.as_deref()) {
            return pages::csrf_refused(&state);
        }
    }
    let detail = if one_click { "one-click unsubscribe" } else { "unsubscribe page" };
    match state.registry.opt_out_contact(contact, &address, &Actor::web(Some(detail.to_owned()))).await {
        Ok(known) => unsubscribed(&state, known),
        Err(err) => WebError::from(err).page(&state),
    }
}

/// `known`: the contact was there to opt out; else it was removed, and
/// nothing is sent to it either.
fn unsubscribed(state: &WebState, known: bool) -> Response {
    let sentence = if known {
        "We will send nothing more to this email address. To hear from us again, add it on the subscription page."
    } else {
        "We will send nothing more to this address."
    };
    Message::new(state, "You are unsubscribed", &[sentence]).page(StatusCode::OK)
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
