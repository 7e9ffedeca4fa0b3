//! The self-service web page (axum + askama): incident status, token
//! requests proven by a mailed link, contact subscriptions and one-click
//! unsubscribe. `lifeboat serve` mounts [`router`] beside `/healthz` and
//! `/metrics`.

mod claim;
pub(crate) mod guard;
mod links;
mod mail;
mod pages;
mod status;
mod subscribe;
mod token;
mod unsubscribe;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use secrecy::SecretString;
use tokio::sync::OnceCell;

use crate::app::Services;
use crate::config::{Config, WebConfig};
use crate::dm::Devices;
use crate::registry::Registry;

use guard::RateLimiter;

/// Forms are a few short fields: anything larger is refused before parsing.
const MAX_BODY: usize = 8 * 1024;

/// What every page handler may use.
#[derive(Clone)]
pub struct WebState {
    pub config: Arc<Config>,
    pub registry: Registry,
    inner: Arc<Shared>,
}

struct Shared {
    /// `[web]`: the pages are served only when it is there.
    web: WebConfig,
    /// The HMAC key for links and CSRF tokens, read once from the registry.
    key: OnceCell<SecretString>,
    /// An [email] section that makes a mailer: the links can be mailed
    /// (serve's worker sends them).
    can_mail: bool,
    limiter: RateLimiter,
    /// Links mailed at each network's requests this hour, per budget
    /// ([`mail::HourlyBudget::network_share_left`]).
    mailed_by_network: crate::limit::FixedWindows,
    /// Held from "is a link to this contact already on its way?" until the
    /// new link is recorded: requests that arrive together then mail (and
    /// DM) one link, as requests one after another do. One per page: a
    /// subscription holds its lock while its code is DMed.
    token_links: tokio::sync::Mutex<()>,
    subscription_links: tokio::sync::Mutex<()>,
    status_cache: status::Cache,
    /// Work behind the open forms' answers ([`pages::after_open_form`]):
    /// running at once, under way in all (running or waiting), and when
    /// dropping some was last told.
    work_running: Arc<tokio::sync::Semaphore>,
    work_waiting: Arc<tokio::sync::Semaphore>,
    work_dropped_told: std::sync::atomic::AtomicI64,
    /// serve's Matrix clients: the codes the page DMs go out on the
    /// device's one client (a client per request would also cost memory
    /// that is never given back).
    devices: Arc<Devices>,
}

impl WebState {
    pub fn new(services: &Services, web: &WebConfig) -> WebState {
        let (config, registry) = (services.config.clone(), services.registry.clone());
        let inner = Arc::new(Shared {
            web: web.clone(),
            key: OnceCell::new(),
            can_mail: services.mailer.is_some(),
            limiter: RateLimiter::new(web.rate_limit_per_ip, web.rate_limit_per_target, web.rate_limit_window),
            mailed_by_network: crate::limit::FixedWindows::new("per-network mail share", Duration::from_secs(3600)),
            token_links: tokio::sync::Mutex::new(()),
            subscription_links: tokio::sync::Mutex::new(()),
            status_cache: status::Cache::default(),
            work_running: Arc::new(tokio::sync::Semaphore::new(pages::WORK_BEHIND_FORMS)),
            work_waiting: Arc::new(tokio::sync::Semaphore::new(
                pages::WORK_BEHIND_FORMS + pages::WORK_BEHIND_FORMS_WAITING,
            )),
            work_dropped_told: std::sync::atomic::AtomicI64::new(0),
            devices: services.devices.clone(),
        });
        WebState { config, registry, inner }
    }

    fn web(&self) -> &WebConfig {
        &self.inner.web
    }

    async fn key(&self) -> Result<&SecretString, crate::registry::Error> {
        self.inner.key.get_or_try_init(|| self.registry.generated_secret(crate::links::LINK_KEY)).await
    }
}

/// The public pages.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/style.css", get(pages::stylesheet))
        .route("/claim", get(claim::page).post(claim::claim))
        .route("/token", get(token::form).post(token::request))
        .route("/token/open", get(token::confirm).post(token::open))
        .route("/subscribe", get(subscribe::form).post(subscribe::request))
        .route("/subscribe/confirm", get(subscribe::confirm_form).post(subscribe::confirm))
        .route("/unsubscribe", get(unsubscribe::confirm).post(unsubscribe::unsubscribe))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(guard::security_headers))
        .with_state(state)
}
