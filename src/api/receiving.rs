//! The lease loop behind `Receive` and `Session`: leases ready messages
//! to a stream within its flow-control slots, and when the stream ends,
//! puts its unsettled leases back in the inbox.

use crate::broker::{Broker, LeaseBatch};
use crate::model::{MessageRef, Principal};
use crate::now_ms;
use crate::pb;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Leases handed to a stream in one writer command, at most.
const MAX_LEASE_BATCH: usize = 64;

/// Feeds one `Receive` stream (or the deliveries of a `Session`): leases
/// as many ready messages as the stream has free slots (one group commit
/// for them all), sends them, and waits for the inbox when it is empty.
/// Ends when the stream closes, `ends` is cancelled (a session closed) or
/// the node stops; a lease that could not be sent goes back at once.
/// `ends` is a child of the node's `stop`.
pub(super) async fn receive_loop(
    broker: Broker,
    principal: Principal,
    lease_ms: u64,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    tx: mpsc::Sender<Result<pb::Delivery, Status>>,
    stop: CancellationToken,
    ends: CancellationToken,
) {
    tracing::debug!("receive stream opened");
    let mut held = HashMap::new();
    serve_stream(
        &broker, &principal, lease_ms, permits, &tx, &ends, &mut held,
    )
    .await;
    // The stream ended: what it still holds goes back to the inbox now,
    // not when the leases lapse. At shutdown the leases stay in the store
    // and lapse after the restart.
    if !stop.is_cancelled() {
        held.retain(|lease_id, _| broker.lease_outstanding(*lease_id));
        let leases = held.into_iter().map(|(id, m)| (m, id)).collect();
        broker.return_stream_leases(leases).await;
    }
    tracing::debug!("receive stream closed");
}

/// Leases messages to one stream while it is open; `held` gathers the
/// leases sent on it (lease id → message) that may not have ended.
async fn serve_stream(
    broker: &Broker,
    principal: &Principal,
    lease_ms: u64,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    tx: &mpsc::Sender<Result<pb::Delivery, Status>>,
    ends: &CancellationToken,
    held: &mut HashMap<u64, MessageRef>,
) {
    loop {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = tx.closed() => return,
            _ = ends.cancelled() => return,
        };
        // Leases that ended no longer need returning.
        held.retain(|lease_id, _| broker.lease_outstanding(*lease_id));
        let mut slots = vec![first];
        while slots.len() < MAX_LEASE_BATCH {
            match permits.clone().try_acquire_owned() {
                Ok(p) => slots.push(p),
                Err(_) => break,
            }
        }
        loop {
            // Registered before looking, so no wake-up is lost.
            let wake = broker.inbox_wake().notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            // An empty inbox needs no writer command to find nothing: the
            // stream waits for arrivals straight away.
            let batch = if broker.store().inbox_is_empty() {
                LeaseBatch::none(slots)
            } else {
                match broker.lease_many(principal, lease_ms, slots).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            };
            if !batch.leased.is_empty() {
                // Unused slots go back to the stream's semaphore.
                drop(batch.permits);
                if !send_all(broker, tx, batch.leased, held).await {
                    return;
                }
                break;
            }
            slots = batch.permits;
            let wait = batch
                .next_ready
                .map(|t| Duration::from_millis(t.saturating_sub(now_ms()) + 1))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            // Messages that arrive meanwhile are handed over in the command
            // that takes custody of them (see `broker::handoff`); the
            // wake-up and the timer cover the inbox's other changes.
            let (waiter, handed) = broker.wait_for_arrivals(principal, lease_ms, slots.len());
            tokio::pin!(handed);
            let answered = tokio::select! {
                biased;
                answer = &mut handed => Some(answer),
                _ = &mut wake => None,
                _ = tokio::time::sleep(wait) => None,
                _ = tx.closed() => return,
                _ = ends.cancelled() => return,
            };
            let answer = match answered {
                Some(answer) => answer,
                None if broker.stop_waiting(waiter) => continue,
                // A delivery holds the waiter: its answer comes next.
                None => tokio::select! {
                    answer = &mut handed => answer,
                    _ = tx.closed() => return,
                    _ = ends.cancelled() => return,
                },
            };
            if let Ok(leasing) = answer {
                let batch = match broker.take_handed(leasing, slots) {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                drop(batch.permits);
                if !send_all(broker, tx, batch.leased, held).await {
                    return;
                }
                break;
            }
        }
    }
}

/// Sends leased messages down a stream, noting each in `held`; if it
/// closed, puts back every lease not sent and says so (`false`).
async fn send_all(
    broker: &Broker,
    tx: &mpsc::Sender<Result<pb::Delivery, Status>>,
    leased: Vec<crate::broker::Leased>,
    held: &mut HashMap<u64, MessageRef>,
) -> bool {
    let mut leased = leased.into_iter();
    while let Some(lease) = leased.next() {
        let message = lease.header.message_ref();
        tracing::debug!(%message, attempt = lease.attempt, lease_id = lease.lease_id, "leased");
        let delivery = pb::Delivery {
            sender_node: message.sender_node.clone(),
            message_id: message.message_id.clone(),
            kind: lease.header.kind.to_wire(),
            envelope: Some(lease.envelope.to_wire()),
            lease_id: lease.lease_id,
            attempt: lease.attempt,
            lease_expires_at_ms: lease.lease_expires_at_ms,
        };
        if tx.send(Ok(delivery)).await.is_err() {
            // Not sent: back in the inbox with the rest, in one write.
            let unsent = std::iter::once((message, lease.lease_id))
                .chain(leased.map(|l| (l.header.message_ref(), l.lease_id)))
                .collect();
            broker.return_stream_leases(unsent).await;
            return false;
        }
        held.insert(lease.lease_id, message);
    }
    true
}
