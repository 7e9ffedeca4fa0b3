//! `/`: open incidents with their postmortem, resolved ones below.
//!
//! The rendered page is kept for a second: after an incident everyone
//! reloads it at once, and the registry should not pay for each reload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::WebState;
use super::pages::{Chrome, WebError};

const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Cache(tokio::sync::Mutex<Option<(Instant, Arc<str>)>>);

impl Cache {
    /// The page made within the last second, else a new one from `render`.
    /// One render at a time: requests that come meanwhile wait for it and
    /// share it, rather than each rendering its own.
    async fn get_or_render<E>(&self, render: impl Future<Output = Result<String, E>>) -> Result<Arc<str>, E> {
        let mut slot = self.0.lock().await;
        if let Some((at, body)) = &*slot
            && at.elapsed() < FRESH_FOR
        {
            return Ok(body.clone());
        }
        let body: Arc<str> = render.await?.into();
        *slot = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

struct OpenIncident {
    id: i64,
    title: String,
    opened: String,
    /// Markdown rendered and sanitized (scripts, handlers, styles removed).
    postmortem_html: String,
}

struct ResolvedIncident {
    title: String,
    opened: String,
    resolved: String,
}

#[derive(Template)]
#[template(path = "web/status.html")]
struct StatusPage {
    chrome: Chrome,
    open: Vec<OpenIncident>,
    resolved: Vec<ResolvedIncident>,
}

pub async fn page(State(state): State<WebState>) -> Response {
    let body = match state.inner.status_cache.get_or_render(render(&state)).await {
        Ok(body) => body,
        Err(err) => return err.page(&state),
    };
    (StatusCode::OK, [(axum::http::header::CACHE_CONTROL, "no-cache")], Html(body.to_string())).into_response()
}

async fn render(state: &WebState) -> Result<String, WebError> {
    // As the emails show times ("2026-12-09 19:00 UTC"), not raw ISO.
    let when = crate::registry::human_time;
    let mut open = Vec::new();
    let mut resolved = Vec::new();
    for incident in state.registry.incidents().await? {
        match incident.resolved_at {
            None => open.push(OpenIncident {
                postmortem_html: crate::notice::markdown_to_safe_html(incident.postmortem_body()),
                id: incident.id,
                title: incident.title,
                opened: when(incident.opened_at),
            }),
            Some(at) => resolved.push(ResolvedIncident {
                title: incident.title,
                opened: when(incident.opened_at),
                resolved: when(at),
            }),
        }
    }
    let page = StatusPage { chrome: Chrome::of(state), open, resolved };
    Ok(page.render()?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_that_come_together_share_one_render() {
        let (cache, renders) = (Arc::new(Cache::default()), Arc::new(AtomicUsize::new(0)));
        let requests = (0..20).map(|_| {
            let (cache, renders) = (cache.clone(), renders.clone());
            tokio::spawn(async move {
                let render = async {
                    renders.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>("page".to_owned())
                };
                cache.get_or_render(render).await.unwrap()
            })
        });
        for page in futures::future::join_all(requests).await {
            assert_eq!(&*page.unwrap(), "page");
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
    }
}
