//! Ends lapsed leases (redelivery or dead letter) and expires messages
//! whose time to live passed.

use super::failures::{Failures, LATCHED_WAIT};
use crate::broker::Broker;
use crate::now_ms;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest sleep between sweeps; TTL expiry is noticed within this.
const MAX_IDLE: Duration = Duration::from_millis(250);

pub(super) async fn run(broker: Broker, stop: CancellationToken) {
    let mut failures = Failures::errors("sweeper");
    loop {
        // Each sweep is one writer command: durable when it returns.
        let leases = broker.sweep_lapsed_leases().await;
        let expired = broker.sweep_expired().await;
        let busy = match leases.and_then(|n| Ok(n + expired?)) {
            Ok(n) => {
                failures.succeeded();
                n > 0
            }
            Err(e) => {
                failures.failed(&e);
                false
            }
        };
        if busy {
            continue;
        }
        // After a failure the lapsed leases stay lapsed: wait the full
        // period, not until a deadline that has passed; on a latched
        // store (which refuses every change until a restart), longer.
        let sleep = if broker.store().failure().is_some() {
            LATCHED_WAIT
        } else {
            match broker.next_lease_deadline() {
                Ok(Some(deadline)) if !failures.failing() => {
                    Duration::from_millis(deadline.saturating_sub(now_ms()) + 1).min(MAX_IDLE)
                }
                _ => MAX_IDLE,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
