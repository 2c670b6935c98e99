//! Signs checkpoints of the node's audit chain when they are due (every N
//! entries or T seconds, from the node file's `[audit]` section). The
//! forwarders hand the latest one to each peer to witness.

use super::failures::{Failures, LATCHED_WAIT};
use crate::broker::Broker;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the chain head is looked at.
const TICK: Duration = Duration::from_millis(200);

pub(super) async fn run(broker: Broker, stop: CancellationToken) {
    if !broker.store().audit_log_enabled() {
        return;
    }
    let mut failures = Failures::errors("checkpointer");
    loop {
        match broker.checkpoint_if_due().await {
            Ok(signed) => {
                failures.succeeded();
                if let Some(c) = signed.and_then(|c| c.open().ok()) {
                    tracing::debug!(seq = c.seq, "signed an audit checkpoint");
                }
            }
            Err(e) => failures.failed(&e),
        }
        // A latched store refuses every change until a restart.
        let wait = match broker.store().failure() {
            Some(_) => LATCHED_WAIT,
            None => TICK,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
