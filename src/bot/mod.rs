//! The admin-room bot (being built).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::serve::ServeState;

pub async fn run(state: Arc<ServeState>, mut alerts: UnboundedReceiver<String>, cancel: CancellationToken) {
    let _ = state;
    loop {
        tokio::select! {
            alert = alerts.recv() => if alert.is_none() { return },
            _ = cancel.cancelled() => return,
        }
    }
}
