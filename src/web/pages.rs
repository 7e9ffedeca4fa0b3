//! Templates, the frame every page shares, and the error page: a visitor
//! sees one plain sentence, the log gets the cause.

use std::net::{IpAddr, SocketAddr};

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{WebState, guard};

/// What every page shows around its content.
pub struct Chrome {
    pub server_name: String,
    pub admin_contact: Option<String>,
    /// The path of `web.public_url` without its trailing slash ("" at the root).
    pub base: String,
}

impl Chrome {
    pub fn of(state: &WebState) -> Chrome {
        let web = state.web();
        Chrome {
            server_name: state.config.homeserver.server_name.clone(),
            admin_contact: web.admin_contact.clone(),
            base: web.public_url.path().trim_end_matches('/').to_owned(),
        }
    }
}

/// A page that is just a title and a few sentences (confirmations, errors).
#[derive(Template)]
#[template(path = "web/message.html")]
pub struct Message {
    pub chrome: Chrome,
    pub title: String,
    pub paragraphs: Vec<String>,
    /// A link to go on with: (href relative to the base, text).
    pub next: Option<(String, String)>,
}

impl Message {
    pub fn new(state: &WebState, title: &str, paragraphs: &[&str]) -> Message {
        Message {
            chrome: Chrome::of(state),
            title: title.to_owned(),
            paragraphs: paragraphs.iter().map(|p| (*p).to_owned()).collect(),
            next: None,
        }
    }

    pub fn next(mut self, href: &str, text: &str) -> Message {
        self.next = Some((href.to_owned(), text.to_owned()));
        self
    }

    pub fn page(self, status: StatusCode) -> Response {
        html(status, &self)
    }
}

/// Renders a template as an HTML response. Pages are never cached: some
/// show a person's token, and the status changes during an incident.
pub fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (status, [(header::CACHE_CONTROL, "no-store")], axum::response::Html(body)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "a web page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side. Please try again later.")
                .into_response()
        }
    }
}

/// The 429 page for every form.
pub fn too_many(state: &WebState) -> Response {
    Message::new(
        state,
        "Too many requests",
        &["You (or someone on your network) sent this form too often. Please wait a few minutes and try again."],
    )
    .page(StatusCode::TOO_MANY_REQUESTS)
}

/// A form posted without this browser's CSRF token (or with a stale one).
pub fn csrf_refused(state: &WebState) -> Response {
    Message::new(
        state,
        "Please send the form again",
        &[
            "This form was sent without the check that proves it came from this site. Open the page again and resend it.",
        ],
    )
    .page(StatusCode::FORBIDDEN)
}

/// A body that is not a readable form, or too large to read.
pub fn unreadable_form(state: &WebState, rejection: FormRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Message::new(state, "The form is too large", &["What you entered is too long. Please shorten it."])
            .page(StatusCode::PAYLOAD_TOO_LARGE);
    }
    Message::new(state, "The form could not be read", &["Open the page again and fill in the form."])
        .page(StatusCode::BAD_REQUEST)
}

/// A mailed link's query string. One that cannot be read (a key given
/// twice, say) gets a page that says so, not axum's plain-text 400.
pub struct LinkQuery<Q>(pub Q);

impl<Q: serde::de::DeserializeOwned> FromRequestParts<WebState> for LinkQuery<Q> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Response> {
        let Query(query) = Query::<Q>::from_request_parts(parts, state).await.map_err(|_| {
            let sentence = "Its address could not be read. Open the link again exactly as it came in the email.";
            Message::new(state, "This link does not work", &[sentence]).page(StatusCode::BAD_REQUEST)
        })?;
        Ok(LinkQuery(query))
    }
}

/// Something failed on our side; the cause goes to the log only.
pub struct WebError(pub String);

impl<E: std::fmt::Display> From<E> for WebError {
    fn from(err: E) -> Self {
        WebError(err.to_string())
    }
}

impl WebError {
    pub fn page(self, state: &WebState) -> Response {
        tracing::error!(error = %self.0, "a web request failed");
        Message::new(
            state,
            "Something went wrong",
            &["Something went wrong on our side. Please try again in a few minutes."],
        )
        .page(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

pub async fn not_found(axum::extract::State(state): axum::extract::State<WebState>) -> Response {
    Message::new(&state, "Page not found", &["There is no page at this address."])
        .next("/", "Status page")
        .page(StatusCode::NOT_FOUND)
}

const STYLESHEET: &str = include_str!("../../templates/web/style.css");

pub async fn stylesheet() -> Response {
    let headers = [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")];
    (headers, STYLESHEET).into_response()
}

/// A page with a form: renders it with this browser's CSRF token, and sets
/// the cookie when the browser had none.
pub async fn with_csrf(state: &WebState, headers: &HeaderMap, page: impl FnOnce(String) -> Response) -> Response {
    let key = match state.key().await {
        Ok(key) => key,
        Err(err) => return WebError::from(err).page(state),
    };
    let cookie = guard::csrf_cookie(key, headers);
    let mut response = page(guard::csrf_token(key, &cookie.value));
    if cookie.is_new {
        let https = state.web().public_url.scheme() == "https";
        response.headers_mut().append(header::SET_COOKIE, guard::set_csrf_cookie(&cookie.value, https));
    }
    response
}

/// A form a page posts: it carries the CSRF token its page was rendered with.
pub trait PostedForm: serde::de::DeserializeOwned + Send {
    fn csrf(&self) -> Option<&str>;
}

/// `impl PostedForm` for a form whose token is its `csrf: Option<String>`.
macro_rules! posted_form {
    ($form:ty) => {
        impl $crate::web::pages::PostedForm for $form {
            fn csrf(&self) -> Option<&str> {
                self.csrf.as_deref()
            }
        }
    };
}
pub(super) use posted_form;

/// A posted form that is readable, not sent from another site, and carries
/// this browser's CSRF token, with the signing key. A request that fails a
/// check gets the page that says why, and never reaches the handler.
pub struct CheckedForm<F>(pub F, pub secrecy::SecretString);

/// A [`CheckedForm`] anyone may post: also within the client's per-IP rate
/// limit (a 429 page otherwise). With the client's address, as the limit
/// reads it.
pub struct PublicForm<F>(pub F, pub secrecy::SecretString, pub Option<IpAddr>);

impl<F: PostedForm> FromRequest<WebState> for CheckedForm<F> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &WebState) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(form) =
            Form::<F>::from_request(request, state).await.map_err(|rejection| unreadable_form(state, rejection))?;
        let key = state.key().await.map_err(|err| WebError::from(err).page(state))?.clone();
        if !guard::same_origin(&headers, &state.web().public_url) || !guard::csrf_ok(&key, &headers, form.csrf()) {
            return Err(csrf_refused(state));
        }
        Ok(CheckedForm(form, key))
    }
}

impl<F: PostedForm> FromRequest<WebState> for PublicForm<F> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &WebState) -> Result<Self, Response> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().cloned();
        let ip = guard::client_ip(peer, request.headers(), &state.web().trusted_proxies);
        let CheckedForm(form, key) = CheckedForm::from_request(request, state).await?;
        if !state.inner.limiter.allow_ip(ip) {
            return Err(too_many(state));
        }
        Ok(PublicForm(form, key, ip))
    }
}

/// Requests of the open forms (`/token`, `/subscribe`) handled at once
/// behind their answers: each may ask Synapse before any budget stops it.
/// A burst waits its turn; past [`WORK_BEHIND_FORMS_WAITING`] waiting, a
/// flood's requests are dropped (their answer is the same either way)
/// rather than piling up tasks and calls to Synapse.
pub const WORK_BEHIND_FORMS: usize = 32;
pub const WORK_BEHIND_FORMS_WAITING: usize = 256;

/// [`after_answer`] for an open form's request, in turn with the others
/// ([`WORK_BEHIND_FORMS`] at once), unless too many wait already: then it
/// is dropped.
pub fn after_open_form(
    state: &WebState,
    what: &'static str,
    work: impl Future<Output = Result<(), WebError>> + Send + 'static,
) {
    let Ok(waiting) = state.inner.work_waiting.clone().try_acquire_owned() else {
        super::mail::warn_at_most_every_ten_minutes(&state.inner.work_dropped_told, || {
            tracing::warn!(
                "{WORK_BEHIND_FORMS_WAITING} form requests wait to be handled: more are dropped for now (a flood?)"
            )
        });
        return;
    };
    let running = state.inner.work_running.clone();
    after_answer(what, async move {
        let _waiting = waiting;
        let Ok(_running) = running.acquire_owned().await else { return Ok(()) };
        work.await
    });
}

/// Does `work` after the answer has gone: an answer that must be the same
/// whether or not what the form named exists cannot wait for it.
pub fn after_answer(what: &'static str, work: impl Future<Output = Result<(), WebError>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(err) = work.await {
            tracing::error!(error = %err.0, "{what}");
        }
    });
}
