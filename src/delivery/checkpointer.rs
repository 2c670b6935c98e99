//! Signs checkpoints of the node's audit chain when they are due (every N
//! entries or T seconds, from the node file's `[audit]` section). The
//! forwarders hand the latest one to each peer to witness.

use crate::broker::Broker;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the chain head is looked at.
const TICK: Duration = Duration::from_millis(200);

pub(super) async fn run(broker: Broker, stop: CancellationToken) {
    if !broker.store().audit_log_enabled() {
        return;
    }
    loop {
        match broker.checkpoint_if_due().await {
            Ok(Some(c)) => {
                if let Ok(c) = c.open() {
                    tracing::debug!(seq = c.seq, "signed an audit checkpoint");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "signing an audit checkpoint failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
