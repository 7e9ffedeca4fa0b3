//! `/token`: a person asks for a registration token. The form answers the
//! same page, at the same speed, whatever was typed; the lookup and the
//! mail happen off the request path. The mailed link leads to
//! `/token/open`, which shows that person's own token.

use std::net::IpAddr;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::links::{self, LinkFields, LinkKind};
use super::pages::{self, CheckedForm, Chrome, LinkQuery, Message, PublicForm, WebError};
use super::{WebState, mail};
use crate::holds::{WayBack, way_back};
use crate::registry::{AskedAs, ContactAddress, MailableContact, NewWebLink, OldName, now_ms};
use crate::tokens::{TokenError, token_for_person};

pub const PURPOSE: &str = "token";
/// A claim link went out (the link itself is signed and stateless).
const CLAIM_MAILED: &str = "claim-mailed";
/// The links of the way back in, counted together by the caps.
const WAY_BACK: &[&str] = &[PURPOSE, CLAIM_MAILED];
const LINK_VALID: Duration = Duration::from_secs(30 * 60);
const LINK: LinkKind =
    LinkKind { purpose: PURPOSE, again: ("/token", "Ask for a new link"), hint: "ask for a new one" };

#[derive(Template)]
#[template(path = "web/token_form.html")]
struct TokenForm {
    chrome: Chrome,
    csrf: String,
}

#[derive(Template)]
#[template(path = "web/token_confirm.html")]
struct TokenConfirm {
    chrome: Chrome,
    csrf: String,
    link: String,
    sig: String,
}

#[derive(Template)]
#[template(path = "web/token_show.html")]
struct TokenShow {
    chrome: Chrome,
    token: String,
    expires: String,
    homeserver_url: String,
    localpart: String,
    old_name: OldName,
}

pub async fn form(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let chrome = Chrome::of(&state);
    pages::with_csrf(&state, &headers, |csrf| pages::html(StatusCode::OK, &TokenForm { chrome, csrf })).await
}

#[derive(Deserialize)]
pub struct RequestForm {
    csrf: Option<String>,
    who: Option<String>,
}

pages::posted_form!(RequestForm);

pub async fn request(State(state): State<WebState>, PublicForm(form, key, ip): PublicForm<RequestForm>) -> Response {
    let who = form.who.unwrap_or_default();
    // A Matrix ID or an email address, read as an admin's contact is.
    let Ok(target) = ContactAddress::parse(&who) else {
        return Message::new(
            &state,
            "That is not a Matrix ID or an email address",
            &["Enter a Matrix ID like @you:example.org, or an email address like you@example.org."],
        )
        .next("/token", "Try again")
        .page(StatusCode::BAD_REQUEST);
    };
    // Off the request path: the answer below must not depend on what exists.
    let worker = state.clone();
    pages::after_open_form(&state, "a token request could not be handled", async move {
        mail_links(&worker, target, &key, ip).await
    });
    Message::new(
        &state,
        "Check your email",
        &[
            "If what you entered belongs to an account affected by an incident, we have sent a link to the email address we have for that account.",
            "The link works once, for 30 minutes. If you asked in the last 30 minutes, the link we sent then still works, and no new one is sent until it expires (unless your mail server refused it).",
            "If nothing arrives, check your spam folder, or contact the admin.",
        ],
    )
    .next("/", "Back to the status page")
    .page(StatusCode::OK)
}

/// Mails each contact `target` names its way back, at the request of a
/// client at `ip`.
async fn mail_links(
    state: &WebState,
    target: ContactAddress,
    key: &secrecy::SecretString,
    ip: Option<IpAddr>,
) -> Result<(), WebError> {
    let contacts: Vec<MailableContact> = match &target {
        // An ID someone else registered again is a stranger: a form naming
        // it gets nothing (its person can still name their email address).
        ContactAddress::Matrix(id) => match state.registry.account(id).await? {
            Some(account) if !account.state.is_stranger() => state.registry.mailable_contacts_of(id).await?,
            _ => Vec::new(),
        },
        ContactAddress::Email(address) => state.registry.mailable_contacts_by_address(address).await?,
    };
    let asked_as = match target {
        ContactAddress::Matrix(_) => AskedAs::Id,
        ContactAddress::Email(_) => AskedAs::Address,
    };
    let server_name = &state.config.homeserver.server_name;
    for contact in contacts {
        // Stored (and mailed) only below, once no earlier link still works.
        let id = links::new_link_id();
        let (purpose, incident, email) = match way_back(&state.config, &state.registry, &contact.user_id, LINK_VALID)
            .await?
        {
            WayBack::Nothing(_) => continue,
            WayBack::Claim(link) => (
                CLAIM_MAILED,
                link.incident,
                mail::LinkEmail {
                    subject: format!("Your link to take back your Matrix ID on {server_name}"),
                    intro: format!(
                        "Someone (we hope you) asked for a way back into {} on {server_name}. The ID is kept for you: open this link to choose a new password and take it back (the link works once, for 30 minutes):",
                        contact.user_id
                    ),
                    action: "Take back my Matrix ID".to_owned(),
                    url: link.url(&state.web().public_url, key, contact.id, contact.address.as_str()),
                },
            ),
            WayBack::Token { incident, .. } => (
                PURPOSE,
                incident,
                mail::LinkEmail {
                    subject: format!("Your link to a registration token for {server_name}"),
                    intro: format!(
                        "Someone (we hope you) asked for a registration token for {} on {server_name}. Open this link to see your token:",
                        contact.user_id
                    ),
                    action: "Show my registration token".to_owned(),
                    url: links::link_url(&state.web().public_url, key, "/token/open", PURPOSE, &id),
                },
            ),
        };
        // Whoever asks, a contact gets one working link at a time: asking
        // again (or someone else asking) mails nothing new, and never
        // takes the person's own request away.
        let _one_at_a_time = state.inner.token_links.lock().await;
        if state.registry.live_web_link_to(purpose, &contact.user_id, &contact.address).await?.is_some() {
            tracing::info!(user_id = %contact.user_id, "an earlier way-back link still works: nothing new mailed");
            continue;
        }
        if mail::address_had_its_day(state, WAY_BACK, &contact.address, ip, Some(asked_as)).await? {
            tracing::info!(user_id = %contact.user_id, "the address had its day's way-back links (or this network its part): nothing new mailed");
            continue;
        }
        static BUDGET: mail::HourlyBudget = mail::HourlyBudget::new("web.token_mails_per_hour", WAY_BACK);
        let per_hour = state.web().token_mails_per_hour;
        if BUDGET.spent(state, per_hour).await? || !BUDGET.network_share_left(state, per_hour, ip).await? {
            return Ok(());
        }
        // Recorded before it is mailed. A claim link is signed, not stored:
        // its row only says that one went out, and until when it works.
        let expires_at = now_ms() + LINK_VALID.as_millis() as i64;
        let link = NewWebLink {
            id: &id,
            purpose,
            user_id: &contact.user_id,
            address: &contact.address,
            code_hash: None,
            expires_at,
            asked_from: Some(&mail::asked_from(ip)),
            asked_as: Some(asked_as),
        };
        state.registry.create_web_link(link).await?;
        mail::send(state, &id, &contact.address, email, Some((incident, &contact.user_id)), expires_at).await?;
        tracing::info!(user_id = %contact.user_id, "way-back link queued");
    }
    Ok(())
}

/// The link from the email: a button that shows the token.
pub async fn confirm(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(query): LinkQuery<LinkFields>,
) -> Response {
    LINK.confirm_page(&state, &headers, query, |chrome, csrf, link, sig, _| TokenConfirm { chrome, csrf, link, sig })
        .await
}

pub async fn open(State(state): State<WebState>, CheckedForm(form, _): CheckedForm<LinkFields>) -> Response {
    let (Some(link), Some(sig)) = (form.link, form.sig) else { return LINK.dead(&state) };
    show_token(&state, &link, &sig).await.unwrap_or_else(|err| err.page(&state))
}

async fn show_token(state: &WebState, link: &str, sig: &str) -> Result<Response, WebError> {
    let Some(found) = LINK.live(state, link, sig).await? else { return Ok(LINK.dead(state)) };
    // Only while the address is still a contact of theirs: once removed,
    // opted out or dropped in Synapse, it may be someone else's mailbox.
    let contacts = state.registry.mailable_contacts_of(&found.user_id).await?;
    if !contacts.iter().any(|contact| contact.address == found.address) {
        return Ok(LINK.dead(state));
    }
    // Asked before the link is used up, of the registry, then of Synapse
    // too (`token_for_person` asks again as it makes the token): the link
    // works again once every lost ID is held, or Synapse answers again.
    let withheld = || {
        let until = crate::registry::human_time(found.expires_at);
        not_yet(
            state,
            &format!(
                "Your link still works until {until}: open it again later. If it has expired by then, ask for a new one, or contact the admin."
            ),
        )
    };
    if crate::holds::tokens_withheld(&state.config, &state.registry).await?.is_some() {
        return Ok(withheld());
    }
    let Some(client) = crate::recover::admin_access(&state.config, &state.registry).await?.working() else {
        return Err(WebError("no working admin token: cannot check or issue registration tokens".to_owned()));
    };
    if crate::tokens::tokens_withheld_now(&state.config, &state.registry, &client).await?.is_some() {
        return Ok(withheld());
    }
    if !state.registry.use_web_link(link).await? {
        return Ok(LINK.dead(state));
    }
    let user_id = found.user_id;
    // Checked again at use: the account may have changed hands or been
    // claimed since the link was mailed.
    let no_token = || {
        Message::new(
            state,
            "No token from this link",
            &[
                "This link no longer gives a registration token: the incident was resolved, or your account's situation changed since (for example, your Matrix ID is now kept for you). Ask again for a link, or contact the admin.",
            ],
        )
        .next("/token", "Ask again")
        .page(StatusCode::OK)
    };
    let WayBack::Token { incident, old_name } = way_back(&state.config, &state.registry, &user_id, LINK_VALID).await?
    else {
        return Ok(no_token());
    };
    let limit = i64::from(state.web().token_requests_per_person);
    let made = token_for_person(&state.config, &state.registry, &client, incident, &user_id, Some(limit)).await;
    let Some((token, expires_at)) = (match made {
        Err(TokenError::IncidentResolved) => return Ok(no_token()),
        // A loss found since the link was used: it is used up.
        Err(TokenError::Withheld(_)) => return Ok(not_yet(state, "Ask for a new link later, or contact the admin.")),
        made => made?,
    }) else {
        return Ok(Message::new(
            state,
            "No new token this time",
            &[
                "Your earlier registration tokens were used or have expired, and this page has handed out as many as it may for one person. Please contact the admin.",
            ],
        )
        .page(StatusCode::OK));
    };
    let page = TokenShow {
        chrome: Chrome::of(state),
        token,
        expires: crate::registry::human_time(expires_at),
        homeserver_url: state.config.homeserver.public_url.to_string(),
        localpart: user_id.localpart().to_owned(),
        old_name,
    };
    Ok(pages::html(StatusCode::OK, &page))
}

/// No token while lost IDs are still being held: one could take an ID not
/// held yet. `then`: what the person can do.
fn not_yet(state: &WebState, then: &str) -> Response {
    Message::new(
        state,
        "Not yet",
        &[
            "Lost Matrix IDs are still being kept safe for their owners, and a registration token could take one that is not kept yet, so none is given out right now.",
            then,
        ],
    )
    .page(StatusCode::SERVICE_UNAVAILABLE)
}
