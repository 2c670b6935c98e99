//! `cluebridge.v1.Audit`: receipt bundles, the audit log, message search
//! and checkpoints, for principals holding the `audit` role.

use super::authorize;
use crate::broker::{Broker, MessageFilter, MessageSummary, PageToken};
use crate::model::{AuditEntry, MessageKind, Role, SignedCheckpoint};
use crate::pb;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct AuditService {
    broker: Broker,
}

impl AuditService {
    pub fn new(broker: Broker) -> Self {
        AuditService { broker }
    }
}

/// Entries sent per store read while streaming the log.
const EXPORT_CHUNK: usize = 1024;

pub(crate) fn checkpoint_to_wire(c: &SignedCheckpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        checkpoint: c.checkpoint.clone(),
        signature: c.signature.clone(),
    }
}

pub(crate) fn checkpoint_from_wire(c: pb::SignedCheckpoint) -> SignedCheckpoint {
    SignedCheckpoint {
        checkpoint: c.checkpoint,
        signature: c.signature,
    }
}

fn entry_to_wire(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        time_ms: e.time_ms,
        event: e.event.as_str().into(),
        sender_node: e.message.sender_node.clone(),
        message_id: e.message.message_id.clone(),
        state: e.state.clone(),
        detail: e.detail.clone(),
        receipt_sha256: e.receipt_sha256.map(|d| d.to_vec()).unwrap_or_default(),
        prev_hash: e.prev_hash.to_vec(),
        content_sha256: crate::model::sha256(&e.content()).to_vec(),
        hash: e.hash().to_vec(),
    }
}

/// A message's summary in wire form (`ListMessages`, `GetCase`).
pub(super) fn summary_to_wire(m: MessageSummary) -> pb::MessageSummary {
    pb::MessageSummary {
        sender_node: m.message.sender_node,
        message_id: m.message.message_id,
        kind: m.kind.to_wire(),
        direction: m.direction.into(),
        peer: m.peer,
        case_reference: m.case_reference,
        subject: m.subject,
        state: m.state.into(),
        created_at_ms: m.created_at_ms,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn get_bundle(
        &self,
        request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        authorize(self.broker.config(), &request, Role::Audit)?;
        let r = request.into_inner();
        let sender = if r.sender_node.is_empty() {
            self.broker.node_id().to_string()
        } else {
            r.sender_node
        };
        let bundle_json = self
            .broker
            .bundle(&sender, &r.message_id, r.include_payload)
            .await?;
        Ok(Response::new(pb::GetBundleResponse { bundle_json }))
    }

    type ExportLogStream = BoxStream<pb::AuditEntry>;

    async fn export_log(
        &self,
        request: Request<pb::ExportLogRequest>,
    ) -> Result<Response<Self::ExportLogStream>, Status> {
        authorize(self.broker.config(), &request, Role::Audit)?;
        let r = request.into_inner();
        let (head, _) = self.broker.store().audit_head()?;
        let to = if r.to_seq == 0 { head } else { r.to_seq };
        if r.from_seq > to {
            return Err(Status::invalid_argument(format!(
                "from_seq {} is after to_seq {to}",
                r.from_seq
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let mut from = r.from_seq;
            while from <= to {
                let read = broker.read(move |b| b.store().audit_entries(from, to, EXPORT_CHUNK));
                let batch = match read.await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let Some(last) = batch.last().map(|e| e.seq) else {
                    return;
                };
                for e in &batch {
                    if tx.send(Ok(entry_to_wire(e))).await.is_err() {
                        return; // the caller went away
                    }
                }
                from = last + 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        authorize(self.broker.config(), &request, Role::Audit)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} exceeds the maximum of 10000"
                )));
            }
            n => n as usize,
        };
        let filter = MessageFilter {
            case_reference: non_empty(r.case_reference),
            from_ms: (r.from_ms > 0).then_some(r.from_ms),
            to_ms: (r.to_ms > 0).then_some(r.to_ms),
            state: non_empty(r.state),
            peer: non_empty(r.peer),
            kind: match r.kind {
                0 => None,
                k => Some(MessageKind::from_wire(k)?),
            },
            limit,
            after: match r.page_token.as_str() {
                "" => None,
                token => Some(PageToken::decode(token)?),
            },
        };
        let page = self.broker.read(move |b| b.list_messages(&filter)).await?;
        let messages = page.messages.into_iter().map(summary_to_wire).collect();
        Ok(Response::new(pb::ListMessagesResponse {
            messages,
            next_page_token: page.next.map(|t| t.encode()).unwrap_or_default(),
        }))
    }

    async fn get_checkpoints(
        &self,
        request: Request<pb::GetCheckpointsRequest>,
    ) -> Result<Response<pb::GetCheckpointsResponse>, Status> {
        authorize(self.broker.config(), &request, Role::Audit)?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let node = non_empty(r.node);
        let checkpoints = if r.head_only {
            Vec::new()
        } else {
            self.broker
                .read(move |b| b.store().checkpoints(node.as_deref(), r.from_seq, limit))
                .await?
        };
        let (head_seq, head_hash) = self.broker.store().audit_head()?;
        Ok(Response::new(pb::GetCheckpointsResponse {
            checkpoints: checkpoints.iter().map(checkpoint_to_wire).collect(),
            head_seq,
            head_hash: head_hash.to_vec(),
        }))
    }
}
