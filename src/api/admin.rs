//! `cluebridge.v1.Admin`: the operator API. Every call needs the `operate`
//! role; no answer carries payload bytes.

use super::authorize;
use crate::broker::{Broker, PeerState, PeerView, Side};
use crate::error::{Error, Result};
use crate::model::{MessageRef, Principal, Role, validate_id};
use crate::pb;
use tonic::{Request, Response, Status};

/// Most messages one Requeue or Discard call names.
const MAX_ACTION_ITEMS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct AdminService {
    broker: Broker,
}

impl AdminService {
    pub fn new(broker: Broker) -> Self {
        AdminService { broker }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        authorize(self.broker.config(), request, Role::Operate)
    }

    /// The node's counters since it started, the same the metrics
    /// listener exposes: what a console needs for rates, over the API the
    /// operator already has.
    fn totals(&self) -> pb::MessageTotals {
        let m = self.broker.metrics();
        pb::MessageTotals {
            accepted: m.accepted.get(),
            forwarded: m.forwarded.snapshot().values().sum(),
            delivered: m.delivered.get(),
            acknowledged: m.acknowledged.get(),
            rejected: m.rejected.get(),
            dead_lettered: m.dead_lettered.get(),
            expired: m.expired.snapshot().values().sum(),
        }
    }
}

fn peer_info(p: PeerView) -> pb::PeerInfo {
    let state = match p.status.state() {
        PeerState::Up => pb::PeerState::Up,
        PeerState::BackingOff => pb::PeerState::BackingOff,
        PeerState::Down => pb::PeerState::Down,
        PeerState::Paused => pb::PeerState::Paused,
    };
    let (paused_by, paused_at_ms) = p
        .status
        .paused
        .map(|r| (r.principal, r.at_ms))
        .unwrap_or_default();
    pb::PeerInfo {
        peer: p.peer,
        endpoint: p.endpoint,
        state: state as i32,
        last_success_ms: p.status.last_success_ms,
        last_error: p.status.last_error,
        last_error_ms: p.status.last_error_ms,
        consecutive_failures: p.status.consecutive_failures,
        backlog: p.backlog,
        rtt_us: p.status.rtt_us,
        paused_by,
        paused_at_ms,
    }
}

fn addresses(list: Vec<pb::MessageAddress>) -> Result<Vec<MessageRef>> {
    if list.len() > MAX_ACTION_ITEMS {
        return Err(Error::ResourceExhausted(format!(
            "{} messages in one call; at most {MAX_ACTION_ITEMS} are accepted",
            list.len()
        )));
    }
    list.into_iter()
        .map(|a| {
            validate_id("sender_node", &a.sender_node)?;
            validate_id("message_id", &a.message_id)?;
            Ok(MessageRef {
                sender_node: a.sender_node,
                message_id: a.message_id,
            })
        })
        .collect()
}

fn action_response(outcomes: Vec<(MessageRef, Result<()>)>) -> pb::ActionResponse {
    let done = outcomes.iter().filter(|(_, o)| o.is_ok()).count() as u32;
    pb::ActionResponse {
        outcomes: outcomes
            .into_iter()
            .map(|(m, o)| {
                let (code, error) = match o {
                    Ok(()) => (0, String::new()),
                    Err(e) => (e.code_number(), e.to_string()),
                };
                pb::ActionOutcome {
                    sender_node: m.sender_node,
                    message_id: m.message_id,
                    done: code == 0,
                    code,
                    error,
                }
            })
            .collect(),
        done,
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.authorize(&request)?;
        let q = self.broker.read(|b| b.queues()).await?;
        Ok(Response::new(pb::ListQueuesResponse {
            outboxes: q
                .outboxes
                .into_iter()
                .map(|o| pb::OutboxQueue {
                    peer: o.peer,
                    depth: o.depth,
                    bytes: o.bytes,
                    oldest_age_ms: o.oldest_age_ms,
                    paused: o.paused,
                    receipts_waiting: o.receipts_waiting,
                })
                .collect(),
            inbox: Some(pb::InboxQueue {
                ready: q.inbox_ready,
                leased: q.inbox_leased,
                delayed: q.inbox_delayed,
                oldest_ready_age_ms: q.inbox_oldest_ready_age_ms,
            }),
            dead_letters: Some(pb::DeadLetterQueue {
                count: q.dead_letters,
                oldest_age_ms: q.dead_letter_oldest_age_ms,
            }),
            at_ms: q.at_ms,
            totals: Some(self.totals()),
        }))
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(pb::ListPeersResponse {
            peers: self
                .broker
                .read(|b| b.peers())
                .await?
                .into_iter()
                .map(peer_info)
                .collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.authorize(&request)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let (list, total) = self.broker.read(move |b| b.dead_letters(limit)).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: list
                .into_iter()
                .map(|d| pb::DeadLetter {
                    sender_node: d.message.sender_node,
                    message_id: d.message.message_id,
                    kind: d.kind.to_wire(),
                    case_reference: d.case_reference,
                    payload_length: d.payload_length,
                    created_at_ms: d.created_at_ms,
                    expires_at_ms: d.expires_at_ms,
                    dead_lettered_at_ms: d.dead_lettered_at_ms,
                    attempts: d.attempts,
                    last_failure: d.last_failure,
                })
                .collect(),
            total,
        }))
    }

    async fn requeue(
        &self,
        request: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let principal = self.authorize(&request)?;
        let r = request.into_inner();
        let messages = match (r.all, r.messages.is_empty()) {
            (true, true) => None,
            (false, false) => Some(addresses(r.messages)?),
            (true, false) => {
                return Err(Status::invalid_argument(
                    "name messages or set all, not both",
                ));
            }
            (false, true) => {
                return Err(Status::invalid_argument(
                    "name the dead letters to requeue, or set all",
                ));
            }
        };
        let outcomes = self
            .broker
            .requeue_dead_letters(&principal.name, messages)
            .await?;
        Ok(Response::new(action_response(outcomes)))
    }

    async fn discard(
        &self,
        request: Request<pb::DiscardRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let principal = self.authorize(&request)?;
        let r = request.into_inner();
        if r.messages.is_empty() {
            return Err(Status::invalid_argument("name the dead letters to discard"));
        }
        let messages = addresses(r.messages)?;
        let outcomes = self
            .broker
            .discard_dead_letters(&principal.name, messages, &r.reason)
            .await?;
        Ok(Response::new(action_response(outcomes)))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let message = MessageRef {
            sender_node: if r.sender_node.is_empty() {
                self.broker.node_id().to_string()
            } else {
                r.sender_node
            },
            message_id: r.message_id,
        };
        let info = {
            let message = message.clone();
            self.broker.read(move |b| b.message_info(&message)).await?
        };
        let h = info.header;
        Ok(Response::new(pb::GetMessageResponse {
            sender_node: h.sender_node,
            message_id: h.message_id,
            kind: h.kind.to_wire(),
            recipient_node: h.recipient_node,
            side: match info.side {
                Side::Sent => "sent",
                Side::Custody => "custody",
            }
            .to_string(),
            state: info.state,
            case_reference: h.case_reference,
            sender_principal: h.sender_principal,
            payload_length: h.payload_length,
            content_type: h.content_type,
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms,
            attempts: info.attempts,
            history: info
                .history
                .into_iter()
                .map(|e| pb::HistoryEvent {
                    at_ms: e.at_ms,
                    event: e.event,
                    by: e.by,
                    attempt: e.attempt,
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn pause_peer(
        &self,
        request: Request<pb::PausePeerRequest>,
    ) -> Result<Response<pb::PeerInfo>, Status> {
        let principal = self.authorize(&request)?;
        let peer = &request.get_ref().peer;
        let view = self.broker.pause_peer(&principal.name, peer).await?;
        Ok(Response::new(peer_info(view)))
    }

    async fn resume_peer(
        &self,
        request: Request<pb::ResumePeerRequest>,
    ) -> Result<Response<pb::PeerInfo>, Status> {
        let principal = self.authorize(&request)?;
        let peer = &request.get_ref().peer;
        let view = self.broker.resume_peer(&principal.name, peer).await?;
        Ok(Response::new(peer_info(view)))
    }
}
