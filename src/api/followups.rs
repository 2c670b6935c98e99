//! `Broker.ListFollowUps`: the request's filters checked, the answer in
//! wire form.

use super::authorize_any;
use crate::broker::{Broker, PageToken};
use crate::model::followup::{FollowUp, FollowUpState, Side};
use crate::model::{Role, validate_id};
use crate::pb;
use crate::store::FollowUpFilter;
use tonic::{Request, Response, Status};

/// A page token is the hex of an index key: a state, a deadline and a
/// message key (two ids of at most 128 characters).
const MAX_TOKEN: usize = 1 + 8 + 2 * 128 + 1;

/// Follow-ups and cases are for the agency's staff and its compliance
/// staff (metadata, never payloads).
const STAFF: [Role; 3] = [Role::Submit, Role::Receive, Role::Audit];

pub(super) async fn list(
    broker: &Broker,
    request: Request<pb::ListFollowUpsRequest>,
) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
    authorize_any(broker.config(), &request, &STAFF, "follow-ups")?;
    let r = request.into_inner();
    let (filter, after, limit) = parse(r)?;
    let (found, next) = broker.list_follow_ups(filter, after, limit).await?;
    Ok(Response::new(pb::ListFollowUpsResponse {
        follow_ups: found.iter().map(to_wire).collect(),
        next_page_token: next.map(hex::encode).unwrap_or_default(),
    }))
}

type Parsed = (FollowUpFilter, Option<Vec<u8>>, usize);

fn parse(r: pb::ListFollowUpsRequest) -> Result<Parsed, Status> {
    let states = r
        .states
        .iter()
        .map(|s| FollowUpState::parse(s))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let side = match r.side.as_str() {
        "" => None,
        "awaiting" => Some(Side::Awaiting),
        "owed" => Some(Side::Owed),
        other => {
            return Err(Status::invalid_argument(format!(
                "side {other:?} is not \"awaiting\" or \"owed\""
            )));
        }
    };
    if !r.peer.is_empty() {
        validate_id("peer", &r.peer)?;
    }
    if r.case_reference.len() > 256 {
        return Err(Status::invalid_argument(
            "case_reference is longer than 256 bytes",
        ));
    }
    let limit = super::page_size(r.page_size, "page_size")?;
    let after = super::hex_token(&r.page_token, MAX_TOKEN)?;
    let filter = FollowUpFilter {
        states,
        side,
        peer: (!r.peer.is_empty()).then_some(r.peer),
        due_before_ms: (r.due_before_ms != 0).then_some(r.due_before_ms),
        case_reference: (!r.case_reference.is_empty()).then_some(r.case_reference),
    };
    Ok((filter, after, limit))
}

pub fn to_wire(f: &FollowUp) -> pb::FollowUp {
    pb::FollowUp {
        sender_node: f.message.sender_node.clone(),
        message_id: f.message.message_id.clone(),
        kind: f.kind.to_wire(),
        side: f.side.as_str().to_string(),
        peer: f.peer.clone(),
        case_reference: f.case_reference.clone(),
        created_at_ms: f.created_at_ms,
        due_ms: f.due_ms.unwrap_or(0),
        state: f.state.as_str().to_string(),
        changed_at_ms: f.changed_at_ms,
        answers: f
            .answers
            .iter()
            .map(|a| pb::FeedbackAnswer {
                feedback_id: a.feedback_id.clone(),
                at_ms: a.at_ms,
                r#final: a.is_final,
                outcomes: a
                    .outcomes
                    .iter()
                    .map(|o| pb::ItemOutcome {
                        item: o.item,
                        outcome: crate::model::rectification::outcome_number(&o.outcome),
                        reason: o.reason.clone(),
                        expected_by_ms: o.expected_by_ms,
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) async fn case(
    broker: &Broker,
    request: Request<pb::GetCaseRequest>,
) -> Result<Response<pb::GetCaseResponse>, Status> {
    authorize_any(broker.config(), &request, &STAFF, "cases")?;
    let r = request.into_inner();
    if r.case_reference.is_empty() {
        return Err(super::missing("case_reference"));
    }
    if r.case_reference.len() > 256 {
        return Err(Status::invalid_argument(
            "case_reference is longer than 256 bytes",
        ));
    }
    let limit = super::page_size(r.limit, "limit")?;
    let after = match r.page_token.as_str() {
        "" => None,
        t => Some(PageToken::decode(t)?),
    };
    let case_reference = r.case_reference.clone();
    let (entries, next) = broker
        .read(move |b| b.case_view(case_reference, after, limit))
        .await?;
    Ok(Response::new(pb::GetCaseResponse {
        case_reference: r.case_reference,
        messages: entries
            .into_iter()
            .map(|e| pb::CaseMessage {
                message: Some(super::audit::summary_to_wire(e.summary)),
                receipts: e.receipts.iter().map(|r| r.to_wire()).collect(),
                follow_up: e.follow_up.as_ref().map(to_wire),
            })
            .collect(),
        next_page_token: next.map(|t| t.encode()).unwrap_or_default(),
    }))
}
