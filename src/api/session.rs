//! `Broker.Session`: deliveries and settlements on one bidirectional
//! stream. The deliveries come from the same lease loop as `Receive`; each
//! settlement runs as its unary call would, on its own task, so that
//! settlements arriving together share the store's next group commit.

use super::broker::lease_ref;
use super::missing;
use super::receiving::receive_loop;
use crate::broker::Broker;
use crate::model::Principal;
use crate::pb;
use crate::pb::settlement::Action;
use crate::pb::settlement_outcome::Result as Outcome;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument;

/// Opens a session whose first request (`open`) has been read: spawns its
/// lease loop and the task that reads settlements, and returns the stream
/// of events.
pub(super) fn start(
    broker: Broker,
    principal: Principal,
    open: pb::ReceiveRequest,
    requests: Streaming<pb::SessionRequest>,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<Result<pb::SessionEvent, Status>>, Status> {
    let permits = broker.stream_permits(open.max_outstanding)?;
    let lease_ms = broker.lease_length_ms(open.lease_seconds)?;
    let in_progress = permits.available_permits();
    let (events, out) = mpsc::channel(64);
    let (deliveries, delivered) = mpsc::channel(8);
    let ends = stop.child_token();
    let span = tracing::info_span!("session", principal = %principal.name);
    let lease_loop = receive_loop(
        broker.clone(),
        principal.clone(),
        lease_ms,
        permits,
        deliveries,
        stop,
        ends.clone(),
    );
    tokio::spawn(lease_loop.instrument(span.clone()));
    tokio::spawn(forward_deliveries(delivered, events.clone()).instrument(span.clone()));
    let settling = read_settlements(broker, principal, requests, events, in_progress, ends);
    tokio::spawn(settling.instrument(span));
    Ok(out)
}

/// Passes the lease loop's deliveries on as session events.
async fn forward_deliveries(
    mut delivered: mpsc::Receiver<Result<pb::Delivery, Status>>,
    events: mpsc::Sender<Result<pb::SessionEvent, Status>>,
) {
    while let Some(delivery) = delivered.recv().await {
        let event = delivery.map(|d| pb::SessionEvent {
            event: Some(pb::session_event::Event::Delivery(d)),
        });
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Reads settlements until the client closes its side (or breaks the
/// stream), at most `in_progress` at once; then waits for their outcomes
/// and ends the session's lease loop.
async fn read_settlements(
    broker: Broker,
    principal: Principal,
    mut requests: Streaming<pb::SessionRequest>,
    events: mpsc::Sender<Result<pb::SessionEvent, Status>>,
    in_progress: usize,
    ends: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(in_progress));
    loop {
        let request = tokio::select! {
            r = requests.message() => r,
            _ = ends.cancelled() => break,
            _ = events.closed() => break,
        };
        let settlement = match request {
            Ok(Some(pb::SessionRequest {
                request: Some(pb::session_request::Request::Settle(s)),
            })) => s,
            Ok(Some(_)) => {
                let refusal = Status::invalid_argument(
                    "only the first request of a session opens it; later ones settle leases",
                );
                let _ = events.send(Err(refusal)).await;
                break;
            }
            Ok(None) | Err(_) => break,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (broker, principal, events) = (broker.clone(), principal.clone(), events.clone());
        tokio::spawn(
            async move {
                let outcome = settle(&broker, &principal, settlement).await;
                let event = pb::SessionEvent {
                    event: Some(pb::session_event::Event::Outcome(outcome)),
                };
                let _ = events.send(Ok(event)).await;
                drop(slot);
            }
            .in_current_span(),
        );
    }
    // Every settlement sent gets its outcome before the session ends.
    let _ = slots.acquire_many(in_progress as u32).await;
    ends.cancel();
}

/// One settlement, answered as its unary call would be.
async fn settle(
    broker: &Broker,
    principal: &Principal,
    s: pb::Settlement,
) -> pb::SettlementOutcome {
    let request_id = s.request_id;
    let result = async {
        let (message, lease_id) = lease_ref(s.lease)?;
        let outcome = match s.action.ok_or_else(|| missing("action"))? {
            Action::Ack(_) => broker
                .settle(principal, &message, lease_id, None)
                .await
                .map(|r| Outcome::Receipt(r.to_wire())),
            Action::RejectReason(reason) => broker
                .settle(principal, &message, lease_id, Some(&reason))
                .await
                .map(|r| Outcome::Receipt(r.to_wire())),
            Action::ReleaseDelayMs(delay_ms) => broker
                .release(principal, &message, lease_id, delay_ms)
                .await
                .map(|()| Outcome::Released(pb::ReleaseResponse {})),
            Action::ExtendLeaseSeconds(seconds) => broker
                .extend(principal, &message, lease_id, seconds)
                .await
                .map(|deadline| {
                    Outcome::Extended(pb::ExtendLeaseResponse {
                        lease_expires_at_ms: deadline,
                    })
                }),
        };
        outcome.map_err(Status::from)
    }
    .await;
    pb::SettlementOutcome {
        request_id,
        result: Some(result.unwrap_or_else(|status| {
            Outcome::Refused(pb::SettlementRefusal {
                code: status.code() as i32,
                message: status.message().to_string(),
            })
        })),
    }
}
