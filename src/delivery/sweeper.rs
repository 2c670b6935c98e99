//! Ends lapsed leases (redelivery or dead letter) and expires messages
//! whose time to live passed.

use crate::broker::Broker;
use crate::now_ms;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest sleep between sweeps; TTL expiry is noticed within this.
const MAX_IDLE: Duration = Duration::from_millis(250);

pub(super) async fn run(broker: Broker, stop: CancellationToken) {
    loop {
        let mut busy = false;
        match broker.sweep_lapsed_leases() {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::error!(error = %e, "lease sweep failed"),
        }
        match broker.sweep_expired() {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
        if busy {
            // Receipts of redeliveries and dead letters must be durable
            // like any other state change; the flush is shared.
            if let Err(e) = broker.store().flush().await {
                tracing::error!(error = %e, "flush after sweep failed");
            }
            continue;
        }
        let sleep = match broker.next_lease_deadline() {
            Ok(Some(deadline)) => {
                Duration::from_millis(deadline.saturating_sub(now_ms()) + 1).min(MAX_IDLE)
            }
            _ => MAX_IDLE,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
