//! What a running lifeboat shares between its parts: built once by `serve` and
//! handed to the bot, the web page's health and metrics, the watcher and the
//! worker. It lives below every face, so no face imports another to reach it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dm::Devices;
use crate::mail::Mailer;
use crate::observation::WatchHandle;
use crate::registry::Registry;

pub struct Services {
    pub config: Arc<Config>,
    pub registry: Registry,
    /// What serve mails through (the worker sends; the web page queues),
    /// built once. `None` without an `[email]` section, or when it cannot
    /// be built (said once, in the log).
    pub mailer: Option<Arc<Mailer>>,
    /// lifeboat's own Matrix clients, one per device: the bot's, and the
    /// one sending DMs (often the same device).
    pub devices: Arc<Devices>,
    pub watch: WatchHandle,
    /// One recovery at a time (the watcher and the bot may both notice a wipe).
    pub recover_lock: Arc<tokio::sync::Mutex<()>>,
    pub shutdown: CancellationToken,
    /// Work started beside the tasks (a notify confirmed in the bot, an
    /// alert email the outbox could not take) that a shutdown waits for.
    pub background: TaskTracker,
}

impl Services {
    pub fn new(config: Arc<Config>, registry: Registry, shutdown: CancellationToken) -> Services {
        let mailer = config.email.as_ref().and_then(|email| match Mailer::from_config(email, email.connections as u32) {
            Ok(mailer) => Some(Arc::new(mailer)),
            Err(err) => {
                tracing::error!(error = %err, "lifeboat cannot send email: no notices, alerts or links go out by mail");
                None
            }
        });
        Services {
            config,
            registry,
            mailer,
            devices: Arc::new(Devices::serving()),
            watch: WatchHandle::default(),
            recover_lock: Arc::default(),
            shutdown,
            background: TaskTracker::new(),
        }
    }
}
