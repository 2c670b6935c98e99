//! `cluebridge.v1.Broker`: the client API for agency back-office systems.

use super::receiving::receive_loop;
use super::{authorize, missing};
use crate::broker::{Broker, SubmitInput};
use crate::model::{MessageRef, Principal, Role, validate_id};
use crate::pb;
use crate::store::FeedItem;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct BrokerService {
    broker: Broker,
    /// Ends long-lived streams at shutdown so the server can drain.
    stop: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl BrokerService {
    pub fn new(broker: Broker, stop: CancellationToken) -> Self {
        BrokerService { broker, stop }
    }

    fn authorize<T>(&self, request: &Request<T>, role: Role) -> Result<Principal, Status> {
        authorize(self.broker.config(), request, role)
    }
}

pub(super) fn lease_ref(lease: Option<pb::LeaseRef>) -> Result<(MessageRef, u64), Status> {
    let lease = lease.ok_or_else(|| missing("lease"))?;
    validate_id("lease.sender_node", &lease.sender_node)?;
    validate_id("lease.message_id", &lease.message_id)?;
    if lease.lease_id == 0 {
        return Err(missing("lease.lease_id"));
    }
    Ok((
        MessageRef {
            sender_node: lease.sender_node,
            message_id: lease.message_id,
        },
        lease.lease_id,
    ))
}

#[tonic::async_trait]
impl pb::broker_server::Broker for BrokerService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let metrics = self.broker.metrics();
        metrics.submitted.inc();
        let started = std::time::Instant::now();
        let answer = self.submit_inner(request).await;
        match &answer {
            Ok(r) => {
                let r = r.get_ref();
                if !r.duplicate && !r.pending_approval {
                    metrics.accepted.inc();
                }
                metrics.submit_seconds.observe_duration(started.elapsed());
            }
            Err(status) => metrics.refused.add(code_name(status.code()), 1),
        }
        answer
    }
    type ReceiveStream = BoxStream<pb::Delivery>;

    async fn receive(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let r = request.into_inner();
        let permits = self.broker.stream_permits(r.max_outstanding)?;
        let lease_ms = self.broker.lease_length_ms(r.lease_seconds)?;
        let (tx, rx) = mpsc::channel(8);
        let broker = self.broker.clone();
        let stop = self.stop.clone();
        let span = tracing::info_span!("receive", principal = %principal.name);
        let ends = stop.child_token();
        let lease_loop = receive_loop(broker, principal, lease_ms, permits, tx, stop, ends);
        tokio::spawn(lease_loop.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SessionStream = BoxStream<pb::SessionEvent>;

    async fn session(
        &self,
        request: Request<tonic::Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let mut requests = request.into_inner();
        let open = match requests.message().await? {
            Some(pb::SessionRequest {
                request: Some(pb::session_request::Request::Open(open)),
            }) => open,
            _ => {
                return Err(Status::invalid_argument(
                    "the first request of a session must be `open`",
                ));
            }
        };
        let broker = self.broker.clone();
        let events = super::session::start(broker, principal, open, requests, self.stop.clone())?;
        Ok(Response::new(Box::pin(ReceiverStream::new(events))))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let (message, lease_id) = lease_ref(request.into_inner().lease)?;
        let receipt = self
            .broker
            .settle(&principal, &message, lease_id, None)
            .await?;
        Ok(Response::new(pb::SettleResponse {
            receipt: Some(receipt.to_wire()),
        }))
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let r = request.into_inner();
        let (message, lease_id) = lease_ref(r.lease)?;
        let receipt = self
            .broker
            .settle(&principal, &message, lease_id, Some(&r.reason))
            .await?;
        Ok(Response::new(pb::SettleResponse {
            receipt: Some(receipt.to_wire()),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let r = request.into_inner();
        let (message, lease_id) = lease_ref(r.lease)?;
        self.broker
            .release(&principal, &message, lease_id, r.delay_ms)
            .await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let r = request.into_inner();
        let (message, lease_id) = lease_ref(r.lease)?;
        let deadline = self
            .broker
            .extend(&principal, &message, lease_id, r.lease_seconds)
            .await?;
        Ok(Response::new(pb::ExtendLeaseResponse {
            lease_expires_at_ms: deadline,
        }))
    }

    async fn get_received(
        &self,
        request: Request<pb::GetReceivedRequest>,
    ) -> Result<Response<pb::GetReceivedResponse>, Status> {
        let principal = self.authorize(&request, Role::Receive)?;
        let r = request.into_inner();
        validate_id("sender_node", &r.sender_node)?;
        validate_id("message_id", &r.message_id)?;
        let message = MessageRef {
            sender_node: r.sender_node,
            message_id: r.message_id,
        };
        let asked = message.clone();
        let (state, receipts) = self
            .broker
            .read(move |b| b.received(&principal, &asked))
            .await?;
        Ok(Response::new(pb::GetReceivedResponse {
            sender_node: message.sender_node,
            message_id: message.message_id,
            state: state.as_str().to_string(),
            receipts: receipts.iter().map(|r| r.to_wire()).collect(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.authorize(&request, Role::Submit)?;
        let id = request.into_inner().message_id;
        let asked = id.clone();
        let status = match self.broker.read(move |b| b.status(&asked)).await {
            Err(crate::error::Error::NotFound(why)) => {
                let broker = self.broker.clone();
                return match super::approval::status_before_sending(&broker, &id)? {
                    Some(held) => Ok(Response::new(held)),
                    None => Err(Status::not_found(why)),
                };
            }
            other => other?,
        };
        Ok(Response::new(pb::GetStatusResponse {
            message_id: status.message.message_id,
            recipient_node: status.recipient,
            state: status.state.to_wire(),
            receipts: status.receipts.iter().map(|r| r.to_wire()).collect(),
            envelope_header: status.header,
            envelope_signature: status.signature,
            envelope_batch: status
                .batch
                .as_ref()
                .map(crate::model::BatchProof::to_envelope_wire),
            ..Default::default()
        }))
    }

    async fn list_pending(
        &self,
        request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        super::approval::list(&self.broker, request).await
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        super::approval::approve(&self.broker, request).await
    }

    async fn decline(
        &self,
        request: Request<pb::DeclineRequest>,
    ) -> Result<Response<pb::DeclineResponse>, Status> {
        super::approval::decline(&self.broker, request).await
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        super::followups::case(&self.broker, request).await
    }

    async fn list_follow_ups(
        &self,
        request: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        super::followups::list(&self.broker, request).await
    }

    type WatchReceiptsStream = BoxStream<pb::ReceiptEvent>;

    async fn watch_receipts(
        &self,
        request: Request<pb::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        self.authorize(&request, Role::Submit)?;
        let mut cursor = request.into_inner().after_cursor;
        self.broker.check_feed_cursor(cursor)?;
        let (tx, rx) = mpsc::channel(64);
        let broker = self.broker.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let wake = broker.feed_wake().notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                // A reader that fell behind the retention while connected
                // is told so, like one that connects late.
                let read = move |b: &Broker| {
                    b.check_feed_cursor(cursor)?;
                    b.feed_after(cursor, 256)
                };
                let batch = match broker.read(read).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        _ = &mut wake => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = tx.closed() => return,
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
                for (seq, item, state) in batch {
                    cursor = seq;
                    let (receipt, overdue) = match item {
                        FeedItem::Receipt(r) => (Some(r.to_wire()), None),
                        FeedItem::Overdue(f) => (
                            None,
                            Some(pb::OverdueEvent {
                                message_id: f.message.message_id,
                                recipient_node: f.peer,
                                case_reference: f.case_reference,
                                due_ms: f.due_ms.unwrap_or(0),
                            }),
                        ),
                    };
                    let event = pb::ReceiptEvent {
                        cursor: seq,
                        receipt,
                        state: state.to_wire(),
                        overdue,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl BrokerService {
    async fn submit_inner(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let principal = self.authorize(&request, Role::Submit)?;
        let span = tracing::info_span!(
            "submit",
            principal = %principal.name,
            message_id = %request.get_ref().message_id
        );
        self.broker.take_submit_token(&principal.name)?;
        let r = request.into_inner();
        let submitted = self
            .broker
            .submit(
                &principal.name,
                SubmitInput {
                    message_id: r.message_id,
                    kind: r.kind,
                    recipient_node: r.recipient_node,
                    case_reference: r.case_reference,
                    correlation_id: r.correlation_id,
                    subject: r.subject,
                    content_type: r.content_type,
                    payload: r.payload,
                    ttl_seconds: r.ttl_seconds,
                    reply_by_ms: r.reply_by_ms,
                },
            )
            .instrument(span)
            .await?;
        Ok(Response::new(super::approval::submit_response(submitted)))
    }
}

/// A status code as a metric label: `invalid_argument`, `not_found`, ...
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}
