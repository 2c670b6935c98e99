//! `Broker.ListPending`, `Approve` and `Decline`: approval before
//! sending, for principals with the approve role.

use super::{authorize, missing};
use crate::broker::{Broker, PendingView, Submitted};
use crate::model::{BatchProof, MessageRef, Role, validate_id};
use crate::pb;
use tonic::{Request, Response, Status};

/// A page token is the hex of a message key (two ids of at most 128
/// characters and their separator).
const MAX_TOKEN: usize = 2 * 128 + 1;

/// A submit's answer in wire form.
pub(super) fn submit_response(submitted: Submitted) -> pb::SubmitResponse {
    match submitted {
        Submitted::Accepted {
            accepted,
            header,
            signature,
            batch,
            duplicate,
        } => pb::SubmitResponse {
            accepted: Some(accepted.to_wire()),
            envelope_header: header,
            envelope_signature: signature,
            envelope_batch: batch.as_ref().map(BatchProof::to_envelope_wire),
            duplicate,
            pending_approval: false,
        },
        Submitted::PendingApproval { duplicate } => pb::SubmitResponse {
            duplicate,
            pending_approval: true,
            ..Default::default()
        },
    }
}

pub(super) async fn list(
    broker: &Broker,
    request: Request<pb::ListPendingRequest>,
) -> Result<Response<pb::ListPendingResponse>, Status> {
    authorize(broker.config(), &request, Role::Approve)?;
    let r = request.into_inner();
    let limit = super::page_size(r.page_size, "page_size")?;
    let after = super::hex_token(&r.page_token, MAX_TOKEN)?;
    let (found, next) = broker
        .read(move |b| b.pending_approvals(after.as_deref(), limit))
        .await?;
    Ok(Response::new(pb::ListPendingResponse {
        pending: found.into_iter().map(pending_to_wire).collect(),
        next_page_token: next.map(hex::encode).unwrap_or_default(),
    }))
}

fn pending_to_wire(p: PendingView) -> pb::PendingMessage {
    let h = p.header;
    pb::PendingMessage {
        message_id: h.message_id,
        kind: h.kind.to_wire(),
        recipient_node: h.recipient_node,
        case_reference: h.case_reference,
        correlation_id: h.correlation_id,
        subject: h.subject,
        content_type: h.content_type,
        payload_sha256: h.payload_sha256.to_vec(),
        payload_length: h.payload_length,
        submitted_by: p.submitter,
        submitted_at_ms: p.submitted_at_ms,
        expires_at_ms: h.expires_at_ms,
        reply_by_ms: h.reply_by_ms,
    }
}

pub(super) async fn approve(
    broker: &Broker,
    request: Request<pb::ApproveRequest>,
) -> Result<Response<pb::SubmitResponse>, Status> {
    let principal = authorize(broker.config(), &request, Role::Approve)?;
    let id = request.into_inner().message_id;
    validate_id("message_id", &id)?;
    let approved = broker.approve(&principal.name, &id).await?;
    Ok(Response::new(submit_response(approved)))
}

pub(super) async fn decline(
    broker: &Broker,
    request: Request<pb::DeclineRequest>,
) -> Result<Response<pb::DeclineResponse>, Status> {
    let principal = authorize(broker.config(), &request, Role::Approve)?;
    let r = request.into_inner();
    validate_id("message_id", &r.message_id)?;
    if r.reason.is_empty() {
        return Err(missing("reason"));
    }
    broker
        .decline(&principal.name, &r.message_id, &r.reason)
        .await?;
    Ok(Response::new(pb::DeclineResponse {}))
}

/// `GetStatus` of a message that never left approval: waiting, or
/// declined with who and why. `None` when neither.
pub(super) fn status_before_sending(
    broker: &Broker,
    message_id: &str,
) -> Result<Option<pb::GetStatusResponse>, Status> {
    let message = MessageRef {
        sender_node: broker.node_id().to_string(),
        message_id: message_id.to_string(),
    };
    let store = broker.store();
    let (held, state) = if let Some(p) = store.pending_approval(&message)? {
        (p, pb::MessageState::PendingApproval)
    } else if let Some(p) = store.declined(&message)? {
        (p, pb::MessageState::Declined)
    } else {
        return Ok(None);
    };
    let header = held.header()?;
    let decision = held
        .declined
        .unwrap_or_else(|| crate::model::approval::Decision {
            by: String::new(),
            at_ms: 0,
            reason: String::new(),
        });
    Ok(Some(pb::GetStatusResponse {
        message_id: message.message_id,
        recipient_node: header.recipient_node,
        state: state as i32,
        declined_by: decision.by,
        declined_reason: decision.reason,
        ..Default::default()
    }))
}
