//! Ends lapsed leases (redelivery or dead letter), expires messages
//! whose time to live passed, marks follow-ups whose reply-by deadline
//! passed overdue, and trims the receipt feed to its retention.

use super::failures::{Failures, LATCHED_WAIT};
use crate::broker::Broker;
use crate::now_ms;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest sleep between sweeps; TTL expiry is noticed within this.
const MAX_IDLE: Duration = Duration::from_millis(250);

/// Longest time between two trims of the receipt feed.
const MAX_FEED_PRUNE: Duration = Duration::from_secs(60);

pub(super) async fn run(broker: Broker, stop: CancellationToken) {
    let mut failures = Failures::errors("sweeper");
    let retention = Duration::from_secs(broker.config().limits.receipt_feed_retention_secs);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        // Each sweep is one writer command: durable when it returns.
        let leases = broker.sweep_lapsed_leases().await;
        let expired = broker.sweep_expired().await;
        let overdue = broker.sweep_overdue().await;
        let pruned = if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + retention.min(MAX_FEED_PRUNE);
            broker.prune_feed().await
        } else {
            Ok(0)
        };
        let busy = match leases.and_then(|n| Ok(n + expired? + overdue? + pruned?)) {
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
