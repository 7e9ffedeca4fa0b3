//! The HTTP side of `serve`: the web page's routes plus `/healthz`, and
//! apart from them `/metrics` (Prometheus text format) with `/healthz`
//! again, for the operator's address only.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::app::Services;
use crate::registry::{AccountState, ContactKind, DeliveryState, now_ms};

/// What the web address serves: the pages and `/healthz` (which says
/// whether, not why: the database's errors name hosts and users).
pub fn public_router(state: Arc<Services>, pages: Router) -> Router {
    let healthz = get(async |State(state): State<Arc<Services>>| health(&state, false).await);
    Router::new().route("/healthz", healthz).with_state(state).merge(pages)
}

/// What the metrics address serves: `/metrics`, and `/healthz` saying why.
pub fn metrics_router(state: Arc<Services>) -> Router {
    let healthz = get(async |State(state): State<Arc<Services>>| health(&state, true).await);
    Router::new().route("/metrics", get(metrics)).route("/healthz", healthz).with_state(state)
}

/// A probe must get an answer in a couple of seconds, not a hang.
const HEALTH_LIMIT: Duration = Duration::from_secs(2);

/// `/healthz`: alive and able to reach the registry, and if not, why (only
/// on the metrics address: the database's errors name hosts and users).
async fn health(state: &Services, saying_why: bool) -> (StatusCode, String) {
    match state.registry.health(HEALTH_LIMIT).await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(cause) => {
            tracing::warn!(%cause, "healthz: the registry is unreachable");
            let why = if saying_why { format!(": {cause}") } else { String::new() };
            (StatusCode::SERVICE_UNAVAILABLE, format!("registry unreachable{why}\n"))
        }
    }
}

async fn metrics(State(state): State<Arc<Services>>) -> impl IntoResponse {
    match render_metrics(&state).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text),
        Err(err) => {
            tracing::warn!(error = %err, "metrics: registry query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "registry unreachable\n".to_owned(),
            )
        }
    }
}

/// One gauge family: HELP, TYPE, then `name{label="value"} count` for each
/// of `values` (0 when `rows` has none, so a series never disappears), then
/// for any other row.
fn family(out: &mut String, name: &str, help: &str, label: &str, values: &[&str], rows: &[(String, i64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    let count_of = |value: &str| rows.iter().find(|(known, _)| known == value).map_or(0, |(_, count)| *count);
    let others = rows.iter().filter(|(value, _)| !values.contains(&value.as_str()));
    let lines = values.iter().map(|value| (*value, count_of(value))).chain(others.map(|(v, c)| (v.as_str(), *c)));
    for (value, count) in lines {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {count}", escape_label(value));
    }
}

/// A gauge without labels: HELP, TYPE and its one value.
fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(super) async fn render_metrics(state: &Services) -> Result<String, crate::registry::Error> {
    let status = state.registry.status().await?;
    let last_sync = state.registry.last_complete_sync().await?;
    let mut out = String::new();
    let states: Vec<&str> = AccountState::ALL.iter().map(|state| state.as_str()).collect();
    family(&mut out, "lifeboat_accounts", "Accounts in the registry by state.", "state", &states, &status.accounts);
    let kinds: Vec<&str> = ContactKind::ALL.iter().map(|kind| kind.as_str()).collect();
    let help = "Contacts that have not opted out, by kind.";
    family(&mut out, "lifeboat_contacts", help, "kind", &kinds, &status.contacts);
    let states: Vec<&str> = DeliveryState::ALL.iter().map(|state| state.as_str()).collect();
    let help = "Messages in the outbox (incident notices, alerts, links, codes) by state.";
    family(&mut out, "lifeboat_deliveries", help, "state", &states, &status.deliveries);
    gauge(&mut out, "lifeboat_incidents_open", "Incidents not yet resolved.", status.incidents_open);
    let withheld = crate::holds::tokens_withheld(&state.config, &state.registry).await?;
    let help = "Lost IDs not held yet, while holds are on: no registration token goes out while this is above 0.";
    gauge(&mut out, "lifeboat_lost_ids_not_held", help, withheld.as_ref().map_or(0, |ids| ids.count));
    let help = "1 while no registration token goes out: lost IDs not held yet, or lifeboat got back into a wiped Synapse or found fewer accounts there than the last listing, and no listing has shown since who was lost.";
    gauge(&mut out, "lifeboat_tokens_withheld", help, u8::from(withheld.is_some()));
    let age = match last_sync.and_then(|run| run.finished_at) {
        Some(finished) => format!("{:.3}", (now_ms() - finished).max(0) as f64 / 1000.0),
        None => "NaN".to_owned(),
    };
    let age_help = "Seconds since the last complete sync (NaN: never).";
    gauge(&mut out, "lifeboat_last_sync_age_seconds", age_help, age);
    let verdict = state.watch.current().verdict_label();
    let help = "The watcher's last verdict (1 for the current one; unknown: could not tell or not checked yet).";
    let verdicts = ["ok", "loss", "suspected_reset", "unknown"];
    family(&mut out, "lifeboat_verdict", help, "verdict", &verdicts, &[(verdict.to_owned(), 1)]);
    Ok(out)
}
