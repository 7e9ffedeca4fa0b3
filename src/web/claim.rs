//! `/claim`: a person takes back the ID lifeboat held for them, with the
//! personal link from their notice (or one `/token` mailed again).
//!
//! GET only shows the page (mail scanners follow links); the form's POST
//! sets their new password. What the link may do is decided in
//! `holds::check_claim`, the same for every request.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use secrecy::SecretString;
use serde::Deserialize;

use super::WebState;
use super::pages::{self, CheckedForm, Chrome, LinkQuery, Message, WebError};
use crate::holds::{
    Claim, ClaimCheck, HandOverError, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, check_claim, claim_held, one_hand_over,
    password_problem,
};
use crate::links::ClaimLink;
use crate::registry::{Account, Actor};

pub const PURPOSE: &str = "claim";

#[derive(Template)]
#[template(path = "web/claim_form.html")]
struct ClaimForm {
    chrome: Chrome,
    csrf: String,
    account: String,
    incident: i64,
    hold: i64,
    until: i64,
    contact: i64,
    sig: String,
    min_chars: usize,
    max_chars: usize,
    problem: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "web/claim_done.html")]
struct ClaimDone {
    chrome: Chrome,
    account: String,
    homeserver_url: String,
    client_url: Option<String>,
}

/// The link's fields, as the URL and the form carry them, and the posted
/// form's CSRF token and password twice (the page ignores them in a URL).
/// No `Debug`: it holds the password.
#[derive(Deserialize)]
pub struct ClaimPost {
    csrf: Option<String>,
    account: Option<String>,
    incident: Option<i64>,
    hold: Option<i64>,
    until: Option<i64>,
    contact: Option<i64>,
    sig: Option<String>,
    password: Option<String>,
    again: Option<String>,
}

pages::posted_form!(ClaimPost);

impl ClaimPost {
    fn link(&mut self) -> Option<SentLink> {
        Some(SentLink {
            link: ClaimLink {
                account: self.account.take()?,
                incident: self.incident?,
                hold: self.hold?,
                until: self.until?,
            },
            contact: self.contact?,
            sig: self.sig.take()?,
        })
    }
}

/// A claim link as it was sent: what it claims, to which contact, signed.
struct SentLink {
    link: ClaimLink,
    contact: i64,
    sig: String,
}

impl SentLink {
    async fn check(&self, state: &WebState, key: &SecretString) -> Result<ClaimCheck, crate::registry::Error> {
        check_claim(&state.registry, key, &self.link, self.contact, &self.sig).await
    }
}

fn dead(state: &WebState) -> Response {
    Message::new(
        state,
        "This link does not work",
        &[
            "The link is not valid, has expired, or was used already. If your ID is still kept for you, ask for a new link with your Matrix ID or email address.",
        ],
    )
    .next("/token", "Ask for a new link")
    .page(StatusCode::BAD_REQUEST)
}

fn under_way(state: &WebState) -> Response {
    Message::new(
        state,
        "This ID is being handed back right now",
        &[
            "The same link was sent from another window a moment ago. Wait a minute: if that was you, sign in with the password you chose there; otherwise open the link again.",
        ],
    )
    .page(StatusCode::CONFLICT)
}

fn taken(state: &WebState, account: &str) -> Response {
    let contact = state.web().admin_contact.clone().unwrap_or_else(|| "an admin of this homeserver".to_owned());
    let sentence = format!(
        "Someone registered {account} again before lifeboat could keep it for you, so it cannot be handed back through this page. If that was not you, contact {contact}: they can give the ID back to you."
    );
    Message::new(state, "This ID was taken", &[sentence.as_str()]).page(StatusCode::CONFLICT)
}

fn form_page(state: &WebState, csrf: String, sent: SentLink, problem: Option<&'static str>) -> Response {
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let SentLink { link, contact, sig } = sent;
    let page = ClaimForm {
        chrome: Chrome::of(state),
        csrf,
        account: link.account,
        incident: link.incident,
        hold: link.hold,
        until: link.until,
        contact,
        sig,
        min_chars: MIN_PASSWORD_CHARS,
        max_chars: MAX_PASSWORD_CHARS,
        problem,
    };
    pages::html(status, &page)
}

/// The mailed link: the account it is for and the password form.
pub async fn page(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(mut fields): LinkQuery<ClaimPost>,
) -> Response {
    let Some(sent) = fields.link() else { return dead(&state) };
    let key = match state.key().await {
        Ok(key) => key,
        Err(err) => return WebError::from(err).page(&state),
    };
    match sent.check(&state, key).await {
        Ok(ClaimCheck::Usable(_)) => {
            pages::with_csrf(&state, &headers, |csrf| form_page(&state, csrf, sent, None)).await
        }
        Ok(ClaimCheck::Taken) => taken(&state, &sent.link.account),
        Ok(ClaimCheck::Dead) => dead(&state),
        Err(err) => WebError::from(err).page(&state),
    }
}

/// Not limited per client IP as the open forms are: the signed link is the
/// gate, and its tries are counted per account below. Someone who spent an
/// IP's budget (a flood, or a neighbour behind the same NAT) cannot keep
/// an owner from their ID.
pub async fn claim(State(state): State<WebState>, CheckedForm(mut form, key): CheckedForm<ClaimPost>) -> Response {
    let Some(sent) = form.link() else { return dead(&state) };
    let account = match sent.check(&state, &key).await {
        Ok(ClaimCheck::Usable(account)) => account,
        Ok(ClaimCheck::Taken) => return taken(&state, &sent.link.account),
        Ok(ClaimCheck::Dead) => return dead(&state),
        Err(err) => return WebError::from(err).page(&state),
    };
    let (password, again) = (form.password.unwrap_or_default(), form.again.unwrap_or_default());
    let problem = if password != again {
        Some("The two passwords are not the same.")
    } else {
        password_problem(&password, account.user_id.as_str())
    };
    if problem.is_some() {
        return form_page(&state, form.csrf.unwrap_or_default(), sent, problem);
    }
    // Counted only for a password that may be set: a person retyping a
    // weak one does not use up their own budget.
    if !state.inner.limiter.allow_target(PURPOSE, &sent.link.account.to_lowercase()) {
        return pages::too_many(&state);
    }
    // One hand-over at a time (another tab, whoever else has the link, or
    // `lifeboat holds claim`); the link is used up by the first. Its own
    // task: a visitor who leaves mid-way drops this request, and must not
    // cut the hand-over short between Synapse and the registry.
    let work = {
        let (state, account, password) = (state.clone(), account.clone(), SecretString::from(password));
        async move {
            let outcome =
                one_hand_over(&state.registry, &account.user_id, hand_over(&state, &account, &password)).await;
            // Said here too: the visitor may be gone before the page is.
            match &outcome {
                Ok(Ok(Claim::Done)) => tracing::info!(user_id = %account.user_id, "a held ID was claimed by its owner"),
                Ok(Err(err)) => {
                    tracing::warn!(user_id = %account.user_id, error = %err.0, "a claim's hand-over failed")
                }
                _ => {}
            }
            outcome
        }
    };
    let outcome = match tokio::spawn(work).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(HandOverError::UnderWay(_))) => return under_way(&state),
        Ok(Err(err)) => Err(WebError::from(err)),
        Err(err) => Err(WebError(format!("the hand-over stopped: {err}"))),
    };
    match outcome {
        Ok(Claim::Done) => {
            let page = ClaimDone {
                chrome: Chrome::of(&state),
                homeserver_url: state.config.homeserver.public_url.to_string(),
                client_url: state.web().client_url.as_ref().map(|url| url.to_string()),
                account: account.user_id.to_string(),
            };
            pages::html(StatusCode::OK, &page)
        }
        Ok(Claim::Dead) => dead(&state),
        Ok(Claim::Unlocked) => unlocked(&state),
        Err(err) => err.page(&state),
    }
}

/// The held account is unlocked already: most likely this person's own
/// hand-over a moment ago, whose answer never reached them.
fn unlocked(state: &WebState) -> Response {
    let contact = state.web().admin_contact.clone().unwrap_or_else(|| "an admin of this homeserver".to_owned());
    let sentence = format!(
        "This ID is no longer locked: if you sent this form a moment ago and got an error, your password may have been set anyway, so try signing in with it. If that does not work, contact {contact}: they can give the ID back to you."
    );
    Message::new(state, "This ID may be yours already", &[sentence.as_str()]).page(StatusCode::CONFLICT)
}

async fn hand_over(state: &WebState, account: &Account, password: &SecretString) -> Result<Claim, WebError> {
    let Some(client) = crate::recover::admin_access(&state.config, &state.registry).await?.working() else {
        return Err(WebError("no working admin token: cannot hand a held ID back".to_owned()));
    };
    let actor = Actor::web(Some(format!("claim link of {}", account.user_id)));
    Ok(claim_held(&state.registry, &client, account, password, &actor).await?)
}
