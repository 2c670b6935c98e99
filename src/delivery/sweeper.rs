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
        // Each sweep is one writer command: durable when it returns.
        let mut busy = false;
        let mut failed = false;
        match broker.sweep_lapsed_leases().await {
            Ok(n) => busy |= n > 0,
            Err(e) => {
                failed = true;
                tracing::error!(error = %e, "lease sweep failed");
            }
        }
        match broker.sweep_expired().await {
            Ok(n) => busy |= n > 0,
            Err(e) => {
                failed = true;
                tracing::error!(error = %e, "expiry sweep failed");
            }
        }
        if busy && !failed {
            continue;
        }
        // After a failure (a latched store refuses every change), the
        // lapsed leases stay lapsed: wait the full period, not until a
        // deadline that has passed.
        let sleep = match broker.next_lease_deadline() {
            Ok(Some(deadline)) if !failed => {
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
