//! `/subscribe`: add an email address for a Matrix account's incident
//! notices. Double opt-in: a link mailed to the address proves the inbox,
//! and a code the service account DMs to the Matrix ID proves the account;
//! the contact is recorded only when both meet on `/subscribe/confirm`.

use std::net::IpAddr;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use serde::Deserialize;

use super::links::{self, LinkFields, LinkKind};
use super::pages::{self, CheckedForm, Chrome, LinkQuery, Message, PublicForm, WebError};
use super::{WebState, mail};
use crate::email::EmailAddress;
use crate::registry::{
    Actor, AddContact, ContactAddress, ContactSource, DAY_MS, MessageKind, NewWebLink, WebLink, code_hash, now_ms,
};
use crate::synapse::SynapseClient;
use crate::user_id::UserId;

const PURPOSE: &str = "subscribe";
const LINK_VALID: Duration = Duration::from_secs(30 * 60);
const LINK: LinkKind = LinkKind { purpose: PURPOSE, again: ("/subscribe", "Start again"), hint: "start again" };
/// Tries at a DMed code through one link, before it stops working. Each
/// link has its own, so a stranger's wrong guesses end no link of its owner.
const MAX_ATTEMPTS: i64 = 5;
/// Links that carry one code (or decoy); past that a request makes a fresh
/// one. With [`MAX_ATTEMPTS`], at most 15 guesses at any code.
const LINKS_PER_CODE: i64 = 3;
/// Codes (and decoys, counted alike) made for one account a day: each is a
/// DM to it, and 3 × 5 guesses. At 8 digits, 90 guesses a day.
const CODES_PER_DAY: i64 = 6;

#[derive(Template)]
#[template(path = "web/subscribe_form.html")]
struct SubscribeForm {
    chrome: Chrome,
    csrf: String,
}

#[derive(Template)]
#[template(path = "web/subscribe_confirm.html")]
struct ConfirmForm {
    chrome: Chrome,
    csrf: String,
    link: String,
    sig: String,
    /// When the link's code stops working, and the address it adds to
    /// which account: the DM carrying it names both too.
    until: String,
    address: String,
    user_id: String,
}

pub async fn form(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let chrome = Chrome::of(&state);
    pages::with_csrf(&state, &headers, |csrf| pages::html(StatusCode::OK, &SubscribeForm { chrome, csrf })).await
}

#[derive(Deserialize)]
pub struct RequestForm {
    csrf: Option<String>,
    matrix_id: Option<String>,
    email: Option<String>,
}

pages::posted_form!(RequestForm);

pub async fn request(State(state): State<WebState>, PublicForm(form, key, ip): PublicForm<RequestForm>) -> Response {
    // Only what a Matrix ID may hold: the ID goes out in our mail, and any
    // more would let a visitor write a sentence of their choosing there.
    let user_id = UserId::parse(form.matrix_id.as_deref().unwrap_or("").trim()).ok();
    let user_id = user_id.filter(UserId::has_matrix_localpart);
    let email = EmailAddress::parse(form.email.as_deref().unwrap_or(""));
    let (Some(user_id), Ok(email)) = (user_id, email) else {
        return Message::new(
            &state,
            "Please check what you entered",
            &["Enter a Matrix ID like @you:example.org and an email address like you@example.org."],
        )
        .next("/subscribe", "Try again")
        .page(StatusCode::BAD_REQUEST);
    };
    // Contacts are kept for this homeserver's accounts only; another
    // server's ID would only let anyone mail text of their choosing from here.
    let server_name = &state.config.homeserver.server_name;
    if user_id.server_name() != server_name {
        let sentence = format!("Enter the Matrix ID of your account on {server_name}, like @you:{server_name}.");
        return Message::new(&state, "That is not an account on this server", &[sentence.as_str()])
            .next("/subscribe", "Try again")
            .page(StatusCode::BAD_REQUEST);
    }
    // Off the request path, like token requests: the answer, and the mail,
    // are the same whether or not the account is known.
    let worker = state.clone();
    pages::after_open_form(&state, "a subscription could not be started", async move {
        start(&worker, &key, user_id, email, ip).await
    });
    Message::new(
        &state,
        "Check your email and your Matrix account",
        &[
            "We have sent a link to the email address. If the Matrix account is one we know, its code is in a direct message there.",
            "Open the link within 30 minutes and enter the code. If you asked in the last 30 minutes, the link and code we sent then still work.",
        ],
    )
    .next("/", "Back to the status page")
    .page(StatusCode::OK)
}

/// What a link for an account that takes no contacts carries instead of a
/// code: shared by that account's links, with their tries and their time,
/// exactly as a DMed code is, so the links behave alike whether or not the
/// account is one we know. Nothing typed ever matches it (no code hashes
/// to it), and it is never taken for a code that went out.
const DECOY_PREFIX: &str = "decoy:";

/// A code hash no code matches, marked by `prefix`.
fn marked_hash(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::rng().random::<[u8; 32]>()))
}

/// A link whose code could not be DMed carries no code, yet stands for one
/// (reused, and no second link to the same address), as an unknown
/// account's decoy does: the inbox must not tell the two apart by a second
/// mail. Its person asks again once a new code is due.
const UNDELIVERED_PREFIX: &str = "undelivered:";

/// Does this link stand for a code: one that was DMed, or one that could not
/// be (not the decoy of an account that takes no contacts)?
fn carries_a_code(link: &WebLink) -> bool {
    link.code_hash.as_deref().is_some_and(|hash| !hash.starts_with(DECOY_PREFIX))
}

/// Links mailed to one address that may be live at once: a cap on mail to
/// an inbox that someone else types in.
const LIVE_LINKS_PER_ADDRESS: i64 = 3;
/// A DMed code is reused for new links while it has this long left, so
/// one account gets at most a DM per `LINK_VALID - CODE_REUSE_MARGIN`.
const CODE_REUSE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Mails the address a link whether or not the account is known, so the
/// inbox cannot tell which accounts exist; DMs a code only to an account
/// that is its person's: a code serves a few links, and an account gets a
/// few codes a day. `ip`: the client's, who asked.
async fn start(
    state: &WebState,
    key: &secrecy::SecretString,
    user_id: UserId,
    email: EmailAddress,
    ip: Option<IpAddr>,
) -> Result<(), WebError> {
    // Without mail no link can arrive, so a code would only be a DM a
    // stranger could send someone at will.
    // Past the hour's budget, or this network's share of it, not even
    // Synapse is asked (asked again below, one request at a time, for the
    // last few).
    let per_hour = state.web().subscription_mails_per_hour;
    if !state.inner.can_mail
        || over_the_hours_budget(state).await?
        || BUDGET.network_had_its_share(state, per_hour, ip).await?
    {
        return Ok(());
    }
    // Only an account that is its registry person's (never one a stranger
    // registered again, nor one held for its owner) takes new contacts.
    // With Synapse out of reach nothing goes out (no code could either).
    // Asked whatever the ID: an outage must stop known and unknown IDs'
    // mail alike, or the inbox would tell them apart.
    let admin = crate::recover::admin_access(&state.config, &state.registry).await?.working();
    let takes_contacts = match &admin {
        Some(admin) => crate::holds::its_persons_now(&state.registry, admin, &user_id).await?,
        None => false,
    };
    // A link on its way to this address serves, unless it carries no code
    // while the account now takes one (asked for before it was its
    // person's, perhaps by someone else).
    let _one_at_a_time = state.inner.subscription_links.lock().await;
    if over_the_hours_budget(state).await? {
        return Ok(());
    }
    let on_its_way = state.registry.live_web_link_to(PURPOSE, &user_id, &email).await?;
    let now = now_ms();
    if on_its_way.is_some_and(|link| carries_a_code(&link) || !takes_contacts)
        || state.registry.live_web_links_to(PURPOSE, &email).await? >= LIVE_LINKS_PER_ADDRESS
        || mail::address_had_its_day(state, &[PURPOSE], &email, ip, None).await?
        || mail::network_had_its_day_of_the_domain(state, PURPOSE, &email, ip).await?
    {
        return Ok(());
    }
    // A live code (or decoy) is reused while the account still is what it
    // was made for, and while few links carry it. Only for the address it
    // was made for: its DM names that address, so nobody can be talked
    // into typing a code into a link that adds someone else's.
    let live_code = state.registry.live_code_link(PURPOSE, &user_id, &email).await?;
    let pending_code = live_code.filter(|link| {
        carries_a_code(link) == takes_contacts && link.expires_at - now > CODE_REUSE_MARGIN.as_millis() as i64
    });
    let pending_hash = pending_code.as_ref().and_then(|link| link.code_hash.as_deref());
    let (links_with_code, codes_today) = state.registry.code_use(PURPOSE, &user_id, pending_hash, now - DAY_MS).await?;
    let (hash, expires_at, code_to_send) = match pending_code {
        Some(link) if links_with_code < LINKS_PER_CODE => (link.code_hash, link.expires_at, None),
        // Enough for today: whoever keeps asking, the account gets no more
        // DMs and a guesser no more tries; links already mailed still work.
        _ if codes_today >= CODES_PER_DAY => return Ok(()),
        _ => {
            // For an account that is not its person's no code is made, only
            // a decoy: the link cannot be confirmed, and nothing from it is
            // reused once the account is.
            let expires_at = now + LINK_VALID.as_millis() as i64;
            if takes_contacts {
                let code = format!("{:08}", rand::rng().random_range(0..100_000_000u32));
                (Some(code_hash(&code)), expires_at, Some(code))
            } else {
                (Some(marked_hash(DECOY_PREFIX)), expires_at, None)
            }
        }
    };
    if !BUDGET.network_share_left(state, per_hour, ip).await? {
        return Ok(());
    }
    let id = links::new_link_id();
    let server_name = &state.config.homeserver.server_name;
    // The link first, the DM after: how soon the mail comes must not tell an
    // account that takes contacts (it gets a DM) from any other. The link
    // records its code only once the DM went out, so a failed DM (or a stop
    // between the two) never leaves a live code for later requests to reuse:
    // it stays marked undelivered and is reused as a code would be, and the
    // inbox cannot tell a known account whose DM failed from an unknown one,
    // by the first mail nor by a second.
    let recorded = if code_to_send.is_some() { Some(marked_hash(UNDELIVERED_PREFIX)) } else { hash.clone() };
    let link = NewWebLink {
        id: &id,
        purpose: PURPOSE,
        user_id: &user_id,
        address: &email,
        code_hash: recorded.as_deref(),
        expires_at,
        asked_from: Some(&mail::asked_from(ip)),
        asked_as: None,
    };
    state.registry.create_web_link(link).await?;

    let url = links::link_url(&state.web().public_url, key, "/subscribe/confirm", PURPOSE, &id);
    let email_text = mail::LinkEmail {
        subject: format!("Confirm your email address for {server_name} incident notices"),
        // The Matrix ID stays out: it is the visitor's text, and this mail
        // goes to any address they type.
        intro: format!(
            "Someone (we hope you) asked that this address get incident notices for a Matrix account on \
             {server_name}. This mail proves only that the address works. Open this link and enter the code sent \
             to that account by direct message, if it is an account we know:"
        ),
        action: "Confirm my email address".to_owned(),
        url,
    };
    if let Err(err) = mail::send(state, &id, &email, email_text, None, expires_at).await {
        // Retired before its code went out: later requests make a new one.
        if code_to_send.is_some() {
            state.registry.set_web_link_code(&id, None).await?;
        }
        return Err(err);
    }

    let (Some(code), Some(hash)) = (code_to_send, hash) else { return Ok(()) };
    // A code is made only when the admin client answered above.
    let admin = admin.as_ref().ok_or_else(|| WebError("no working admin token: cannot DM a code".into()))?;
    let until = crate::registry::human_time(expires_at);
    let text = crate::messages::subscribe_code(server_name, &code, &until, email.as_str());
    match dm_now(state, admin, &user_id, &text, expires_at).await {
        Ok(()) => state.registry.set_web_link_code(&id, Some(&hash)).await?,
        Err(err) => tracing::warn!(error = %err.0, "a subscription code could not be DMed: its link stays undelivered"),
    }
    Ok(())
}

static BUDGET: mail::HourlyBudget = mail::HourlyBudget::new("web.subscription_mails_per_hour", &[PURPOSE]);

/// Have `web.subscription_mails_per_hour` links been mailed this hour?
async fn over_the_hours_budget(state: &WebState) -> Result<bool, WebError> {
    BUDGET.spent(state, state.web().subscription_mails_per_hour).await
}

/// DMs `text`, about an address being proven, to `user_id` from lifeboat's
/// own account, through the outbox like every message but sent here and
/// now (a code's link records its code only once the code went out).
async fn dm_now(
    state: &WebState,
    admin: &SynapseClient,
    user_id: &UserId,
    text: &str,
    expires_at: i64,
) -> Result<(), WebError> {
    let (config, registry) = (&state.config, &state.registry);
    let actor = Actor::web(Some("subscription".to_owned()));
    let Some(account) = crate::campaign::DmAccount::find(config, registry, admin, &actor).await? else {
        return Err(WebError("lifeboat's own account has no credentials: cannot DM".into()));
    };
    let sender = account.connect(config, registry, &state.inner.devices).await?;
    let row = crate::outbox::new_dm(MessageKind::Code, user_id.as_str(), text, expires_at);
    let deliver = |stored| async move { crate::outbox::deliver_dm(registry, &sender, &stored).await };
    let sent = crate::outbox::send_at_once(registry, row, deliver).await.unwrap_or_else(|err| Err(err.to_string()));
    sent.map_err(|err| WebError(format!("could not DM {user_id}: {err}")))
}

/// Tells the account that `address` was added to it from the web page: if
/// someone talked its person into typing the code, the person learns it
/// now, and how to take the address off again. Not a stranger who took the
/// ID since the code went out: the address is the person's business.
async fn tell_the_account(state: WebState, user_id: UserId, address: EmailAddress) -> Result<(), WebError> {
    let Some(admin) = crate::recover::admin_access(&state.config, &state.registry).await?.working() else {
        return Err(WebError(format!("no working admin token: {user_id} was not told of the address added")));
    };
    if !crate::holds::its_persons_now(&state.registry, &admin, &user_id).await? {
        return Err(WebError(format!(
            "{user_id} is not its person's account now: it was not told of the address added"
        )));
    }
    let text = crate::messages::contact_added(&state.config.homeserver.server_name, address.as_str());
    let a_day = now_ms() + DAY_MS;
    dm_now(&state, &admin, &user_id, &text, a_day).await
}

/// The link from the email: a form for the DMed code.
pub async fn confirm_form(
    State(state): State<WebState>,
    headers: HeaderMap,
    LinkQuery(query): LinkQuery<LinkFields>,
) -> Response {
    let page = |chrome, csrf, link, sig, found: &WebLink| ConfirmForm {
        chrome,
        csrf,
        link,
        sig,
        until: crate::registry::human_time(found.expires_at),
        address: found.address.to_string(),
        user_id: found.user_id.to_string(),
    };
    LINK.confirm_page(&state, &headers, query, page).await
}

pub async fn confirm(State(state): State<WebState>, CheckedForm(form, _): CheckedForm<LinkFields>) -> Response {
    let (Some(link), Some(sig)) = (form.link, form.sig) else { return LINK.dead(&state) };
    finish(&state, &link, &sig, form.code.as_deref().unwrap_or("")).await.unwrap_or_else(|err| err.page(&state))
}

async fn finish(state: &WebState, link: &str, sig: &str, code: &str) -> Result<Response, WebError> {
    let Some(found) = LINK.live(state, link, sig).await? else { return Ok(LINK.dead(state)) };
    // A try is spent before the code is compared, so parallel guesses
    // get MAX_ATTEMPTS tries in all, not each.
    if !state.registry.spend_web_link_attempt(link, MAX_ATTEMPTS).await? {
        state.registry.use_web_link(link).await?;
        return Ok(LINK.dead(state));
    }
    let right = found.code_hash.as_deref().is_some_and(|hash| {
        // Equal-length hex digests: compare without an early exit.
        let given = code_hash(code);
        hash.len() == given.len() && hash.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if !right {
        if found.attempts + 1 >= MAX_ATTEMPTS {
            state.registry.use_web_link(link).await?;
            return Ok(LINK.dead(state));
        }
        let message =
            Message::new(state, "That code is not right", &["Check the code in the direct message and try again."]);
        return Ok(message.page(StatusCode::BAD_REQUEST));
    }
    if !state.registry.use_web_link(link).await? {
        return Ok(LINK.dead(state));
    }
    let actor = Actor::web(Some("subscription".to_owned()));
    let address = ContactAddress::Email(found.address.clone());
    let added =
        state.registry.add_contact(&found.user_id, &address, ContactSource::User, Some(now_ms()), &actor).await?;
    if added == AddContact::AlreadyKnown {
        state.registry.resubscribe_contact(&found.user_id, &found.address, &actor).await?;
    }
    let told = tell_the_account(state.clone(), found.user_id.clone(), found.address.clone());
    pages::after_answer("an account was not told of the address added to it", told);
    Ok(Message::new(
        state,
        "Your email address is confirmed",
        &["If your account is ever lost in an incident, we will write to this address."],
    )
    .next("/", "Back to the status page")
    .page(StatusCode::OK))
}
