//! An HTTP front to a real Synapse that answers 503 (or 403, 401) to chosen
//! requests, for a failure a real server cannot be made to give on demand
//! (busy for just one call, a token refused between two calls); every
//! other request reaches Synapse unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use reqwest::Method;
use tokio_util::task::AbortOnDropHandle;

pub struct FaultyFront {
    pub url: String,
    failures_left: Arc<AtomicUsize>,
    _server: AbortOnDropHandle<()>,
}

struct Front {
    target: String,
    method: Method,
    path_part: String,
    failures_left: Arc<AtomicUsize>,
    /// What a chosen request is answered: status and body.
    answer: (u16, &'static str),
    http: reqwest::Client,
}

impl FaultyFront {
    /// Relays to `target`, but answers 503 to the first `times` requests
    /// with `method` whose path contains `path_part`.
    pub async fn start(target: &str, method: Method, path_part: &str, times: usize) -> FaultyFront {
        let busy = (503, r#"{"errcode":"M_UNKNOWN","error":"busy (a test's front)"}"#);
        Self::answering(target, method, path_part, times, busy).await
    }

    /// As [`FaultyFront::start`], answering 403 as to a token that is not
    /// a server admin's.
    pub async fn refusing(target: &str, method: Method, path_part: &str, times: usize) -> FaultyFront {
        let forbidden = (403, r#"{"errcode":"M_FORBIDDEN","error":"You are not a server admin (a test's front)"}"#);
        Self::answering(target, method, path_part, times, forbidden).await
    }

    /// As [`FaultyFront::start`], answering 401 as to a token Synapse no
    /// longer knows.
    pub async fn forgetting_the_token(target: &str, method: Method, path_part: &str, times: usize) -> FaultyFront {
        let unknown = (401, r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Unknown token (a test's front)"}"#);
        Self::answering(target, method, path_part, times, unknown).await
    }

    pub async fn answering(
        target: &str,
        method: Method,
        path_part: &str,
        times: usize,
        answer: (u16, &'static str),
    ) -> FaultyFront {
        let failures_left = Arc::new(AtomicUsize::new(times));
        let front = Arc::new(Front {
            target: target.trim_end_matches('/').to_owned(),
            method,
            path_part: path_part.to_owned(),
            failures_left: failures_left.clone(),
            answer,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(relay).with_state(front);
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FaultyFront { url, failures_left, _server: AbortOnDropHandle::new(server) }
    }

    /// How many of the chosen requests are still to fail.
    pub fn failures_left(&self) -> usize {
        self.failures_left.load(Ordering::SeqCst)
    }
}

/// Does `uri`'s path contain `part`? A `part` ending in `$` also wants no
/// further path segment after it (a resource, not the ones below it); one
/// starting with `?` is looked for in the query instead.
fn chosen_uri(uri: &axum::http::Uri, part: &str) -> bool {
    if let Some(part) = part.strip_prefix('?') {
        return uri.query().is_some_and(|query| query.contains(part));
    }
    match part.strip_suffix('$') {
        Some(part) => uri.path().split_once(part).is_some_and(|(_, rest)| !rest.contains('/')),
        None => uri.path().contains(part),
    }
}

async fn relay(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let chosen = parts.method == front.method && chosen_uri(&parts.uri, &front.path_part);
    let failed = chosen
        && front.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
    if failed {
        let (status, body) = front.answer;
        return Response::builder().status(status).body(Body::from(body)).unwrap();
    }
    let path = parts.uri.path_and_query().map(|part| part.as_str()).unwrap_or("/");
    let mut headers = parts.headers.clone();
    headers.remove(reqwest::header::HOST);
    let body = to_bytes(body, 16 << 20).await.unwrap();
    let sent = front.http.request(parts.method, format!("{}{path}", front.target)).headers(headers).body(body).send();
    // Synapse gone (a test ending with a long poll in flight): as a proxy would.
    let Ok(answer) = sent.await else { return Response::builder().status(502).body(Body::empty()).unwrap() };
    let mut response = Response::builder().status(answer.status());
    // The body goes whole: how it was framed is hyper's to say again.
    let framing = [reqwest::header::TRANSFER_ENCODING, reqwest::header::CONTENT_LENGTH, reqwest::header::CONNECTION];
    for (name, value) in answer.headers().iter().filter(|(name, _)| !framing.contains(name)) {
        response = response.header(name, value);
    }
    response.body(Body::from(answer.bytes().await.unwrap())).unwrap()
}
