//! An HTTP front to a real Synapse that answers 503 to chosen requests, for
//! a failure a real server cannot be made to give on demand (busy for just
//! one call); every other request reaches Synapse unchanged.

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
    http: reqwest::Client,
}

impl FaultyFront {
    /// Relays to `target`, but answers 503 to the first `times` requests
    /// with `method` whose path contains `path_part`.
    pub async fn start(target: &str, method: Method, path_part: &str, times: usize) -> FaultyFront {
        let failures_left = Arc::new(AtomicUsize::new(times));
        let front = Arc::new(Front {
            target: target.trim_end_matches('/').to_owned(),
            method,
            path_part: path_part.to_owned(),
            failures_left: failures_left.clone(),
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

async fn relay(State(front): State<Arc<Front>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let chosen = parts.method == front.method && parts.uri.path().contains(&front.path_part);
    let failed = chosen
        && front.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
    if failed {
        let busy = r#"{"errcode":"M_UNKNOWN","error":"busy (a test's front)"}"#;
        return Response::builder().status(503).body(Body::from(busy)).unwrap();
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
