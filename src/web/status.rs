//! `/`: open incidents with their postmortem, resolved ones below.
//!
//! The rendered page is kept for a second: after an incident everyone
//! reloads it at once, and the registry should not pay for each reload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::WebState;
use super::pages::{Chrome, WebError};

const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Cache(Mutex<Option<(Instant, Arc<str>)>>);

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
    let cached = state.inner.status_cache.0.lock().ok().and_then(|slot| slot.clone());
    let body = match cached {
        Some((at, body)) if at.elapsed() < FRESH_FOR => body,
        _ => match render(&state).await {
            Ok(body) => {
                let body: Arc<str> = body.into();
                if let Ok(mut slot) = state.inner.status_cache.0.lock() {
                    *slot = Some((Instant::now(), body.clone()));
                }
                body
            }
            Err(err) => return err.page(&state),
        },
    };
    (StatusCode::OK, [(axum::http::header::CACHE_CONTROL, "no-cache")], Html(body.to_string())).into_response()
}

async fn render(state: &WebState) -> Result<String, WebError> {
    // As the emails show times ("2026-12-09 19:00 UTC"), not raw ISO.
    let when = crate::notify::human_time;
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
