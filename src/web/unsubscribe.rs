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
use secrecy::SecretString;
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
    /// The link key and the contact (id, address) the link names, its
    /// signature right for both; else the page to answer with. A contact no
    /// longer there gets the same page as a wrong signature: which ids exist
    /// is not for a stranger to count (and a removed one is sent nothing).
    async fn contact<'s>(&self, state: &'s WebState) -> Result<(&'s SecretString, i64, String), Response> {
        let failed = |err| WebError::from(err).page(state);
        let key = state.key().await.map_err(failed)?;
        let id = self.contact.as_deref().and_then(|id| id.parse::<i64>().ok());
        let (Some(id), Some(sig)) = (id, self.sig.as_deref()) else { return Err(bad_link(state)) };
        match state.registry.contact_address(id).await.map_err(failed)? {
            None => Err(bad_link(state)),
            Some(address) if crate::links::verify_unsubscribe(key, id, &address, sig) => Ok((key, id, address)),
            Some(_) => Err(bad_link(state)),
        }
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
) -> Result<Response, Response> {
    let (_, contact, _) = query.contact(&state).await?;
    let sig = query.sig.as_deref().unwrap_or_default();
    let chrome = Chrome::of(&state);
    let action = format!("{}/unsubscribe?contact={contact}&sig={sig}", chrome.base);
    Ok(pages::with_csrf(&state, &headers, |csrf| pages::html(StatusCode::OK, &Confirm { chrome, csrf, action })).await)
}

pub async fn unsubscribe(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(query): LinkQuery<UnsubscribeLink>,
    body: Bytes,
) -> Result<Response, Response> {
    let (key, contact, address) = query.contact(&state).await?;
    let one_click = is_one_click(&headers, &body);
    if !one_click {
        let csrf = url::form_urlencoded::parse(&body).find(|(name, _)| name == "csrf").map(|(_, value)| value);
        if !guard::same_origin(&headers, &state.web().public_url) || !guard::csrf_ok(key, &headers, csrf.as_deref()) {
            return Err(pages::csrf_refused(&state));
        }
    }
    let detail = if one_click { "one-click unsubscribe" } else { "unsubscribe page" };
    match state.registry.opt_out_contact(contact, &address, &Actor::web(Some(detail.to_owned()))).await {
        Ok(known) => Ok(unsubscribed(&state, known)),
        Err(err) => Err(WebError::from(err).page(&state)),
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
        &["The link is incomplete or was changed, or the address it was for is no longer on our list (then \
             nothing more is sent to it). Use the link from the email as it is, or contact the admin."],
    )
    .page(StatusCode::BAD_REQUEST)
}
