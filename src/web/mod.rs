//! The self-service web page (axum + askama): incident status, token
//! requests proven by a mailed link, contact subscriptions and one-click
//! unsubscribe. `lifeboat serve` mounts [`router`] beside `/healthz` and
//! `/metrics`.

use std::sync::Arc;

use axum::Router;

use crate::config::Config;
use crate::registry::Registry;

/// What every page handler may use.
#[derive(Clone)]
pub struct WebState {
    pub config: Arc<Config>,
    pub registry: Registry,
}

/// The public pages. (Issue 5 fills this in.)
pub fn router(state: WebState) -> Router {
    let _ = state;
    Router::new()
}
