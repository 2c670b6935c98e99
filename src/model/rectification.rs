//! Structured follow-up content (`proto/cluebridge/v1/rectification.proto`):
//! what a rectification suggestion, or the feedback that answers it, must
//! be when its content type names the schema. Pure: the broker calls it at
//! `Submit` and `Peer.Deliver` alike, so that a peer gets past nothing a
//! client cannot, and hands it the answered envelope to read.

use super::{EnvelopeHeader, MessageKind, SignedEnvelope, check_text, validate_id};
use crate::error::{Error, Result};
use crate::pb;
use prost::Message;

/// The content type of a structured rectification suggestion.
pub const SUGGESTION_TYPE: &str = "application/vnd.cluebridge.rectification-suggestion.v1+protobuf";
/// The content type of structured feedback on one.
pub const FEEDBACK_TYPE: &str = "application/vnd.cluebridge.rectification-feedback.v1+protobuf";

const MAX_ITEMS: usize = 64;
const MAX_TEXT: usize = 1024;

/// Whether `content_type` names a schema this module checks.
pub fn names_schema(content_type: &str) -> bool {
    content_type == SUGGESTION_TYPE || content_type == FEEDBACK_TYPE
}

/// Checks `payload` against the schema `header.content_type` names, if it
/// names one. For feedback, `answered` reads the envelope of the message
/// it answers (`None`: not held here).
pub fn check(
    header: &EnvelopeHeader,
    payload: &[u8],
    answered: impl FnOnce() -> Result<Option<SignedEnvelope>>,
) -> Result<()> {
    match header.content_type.as_str() {
        SUGGESTION_TYPE => {
            expect_kind(header, MessageKind::RectificationSuggestion)?;
            suggestion(header, payload).map(|_| ())
        }
        FEEDBACK_TYPE => {
            expect_kind(header, MessageKind::Feedback)?;
            let answered = answered()?.ok_or_else(|| {
                Error::invalid(format!(
                    "structured feedback answers {:?}, which is not held here",
                    header.correlation_id
                ))
            })?;
            let asked = EnvelopeHeader::decode(&answered.header)?;
            if asked.content_type != SUGGESTION_TYPE {
                return Err(Error::invalid(format!(
                    "structured feedback answers a structured rectification suggestion \
                     (content type {SUGGESTION_TYPE}); {:?} is not one",
                    header.correlation_id
                )));
            }
            let items = suggestion(&asked, &answered.payload)?.items.len();
            feedback(payload, items)
        }
        _ => Ok(()),
    }
}

/// Whether structured feedback is final, with its outcomes item by item;
/// `None` for other content (free-form feedback). Call after [`check`].
pub fn feedback_outcomes(
    header: &EnvelopeHeader,
    payload: &[u8],
) -> Option<(bool, Vec<super::followup::ItemOutcome>)> {
    if header.content_type != FEEDBACK_TYPE {
        return None;
    }
    let f = pb::RectificationFeedback::decode(payload).ok()?;
    let outcomes = f
        .outcomes
        .into_iter()
        .map(|o| super::followup::ItemOutcome {
            item: o.item,
            outcome: outcome_name(o.outcome).to_string(),
            reason: o.reason,
            expected_by_ms: o.expected_by_ms,
        })
        .collect();
    Some((f.r#final, outcomes))
}

const OUTCOMES: [(pb::Outcome, &str); 4] = [
    (pb::Outcome::Corrected, "corrected"),
    (pb::Outcome::PartlyCorrected, "partly_corrected"),
    (pb::Outcome::NotCorrected, "not_corrected"),
    (pb::Outcome::InProgress, "in_progress"),
];

/// The schema's name of an outcome, in lower case.
pub fn outcome_name(outcome: i32) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, _)| *o as i32 == outcome)
        .map_or("unspecified", |(_, name)| name)
}

/// The wire number of an outcome named by [`outcome_name`] (0 if none).
pub fn outcome_number(name: &str) -> i32 {
    OUTCOMES
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(0, |(o, _)| *o as i32)
}

fn expect_kind(header: &EnvelopeHeader, kind: MessageKind) -> Result<()> {
    if header.kind != kind {
        return Err(Error::invalid(format!(
            "content type {} is for {kind} messages, not {}",
            header.content_type, header.kind
        )));
    }
    Ok(())
}

fn decode<T: Message + Default>(what: &str, payload: &[u8]) -> Result<T> {
    T::decode(payload).map_err(|e| {
        Error::invalid(format!(
            "payload is not a {what} (protobuf, see rectification.proto): {e}"
        ))
    })
}

fn text(what: &str, value: &str, required: bool) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(Error::invalid(format!("{what} is required")));
    }
    if value.len() > MAX_TEXT {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_TEXT}",
            value.len()
        )));
    }
    check_text(what, value, true)
}

fn suggestion(header: &EnvelopeHeader, payload: &[u8]) -> Result<pb::RectificationSuggestion> {
    let s: pb::RectificationSuggestion = decode("RectificationSuggestion", payload)?;
    validate_id("person_ref", &s.person_ref)?;
    if s.case_reference.is_empty() || s.case_reference != header.case_reference {
        return Err(Error::invalid(format!(
            "case_reference {:?} of the suggestion must be the message's case_reference {:?}",
            s.case_reference, header.case_reference
        )));
    }
    if s.items.is_empty() || s.items.len() > MAX_ITEMS {
        return Err(Error::invalid(format!(
            "a suggestion has 1 to {MAX_ITEMS} items, not {}",
            s.items.len()
        )));
    }
    for (i, item) in s.items.iter().enumerate() {
        match pb::ItemKind::try_from(item.kind) {
            Ok(pb::ItemKind::Unspecified) | Err(_) => {
                return Err(Error::invalid(format!(
                    "items[{i}].kind {} is not an item kind (position, rank, professional_title, \
                     academic_qualification, degree, award, qualification, other)",
                    item.kind
                )));
            }
            Ok(_) => {}
        }
        text(&format!("items[{i}].description"), &item.description, true)?;
    }
    Ok(s)
}

fn feedback(payload: &[u8], items: usize) -> Result<()> {
    let f: pb::RectificationFeedback = decode("RectificationFeedback", payload)?;
    if f.outcomes.is_empty() {
        return Err(Error::invalid(
            "structured feedback needs at least one outcome",
        ));
    }
    let mut answered = vec![false; items];
    for (i, o) in f.outcomes.iter().enumerate() {
        let at = format!("outcomes[{i}]");
        let Some(seen) = answered.get_mut(o.item as usize) else {
            return Err(Error::invalid(format!(
                "{at}.item {} was not asked: the suggestion has {items} items (0 to {})",
                o.item,
                items.saturating_sub(1)
            )));
        };
        if std::mem::replace(seen, true) {
            return Err(Error::invalid(format!(
                "{at}.item {} is answered twice",
                o.item
            )));
        }
        let outcome = pb::Outcome::try_from(o.outcome).unwrap_or(pb::Outcome::Unspecified);
        match outcome {
            pb::Outcome::Unspecified => {
                return Err(Error::invalid(format!(
                    "{at}.outcome {} is not an outcome (corrected, partly_corrected, \
                     not_corrected, in_progress)",
                    o.outcome
                )));
            }
            pb::Outcome::NotCorrected => text(&format!("{at}.reason"), &o.reason, true)?,
            pb::Outcome::InProgress if o.expected_by_ms == 0 => {
                return Err(Error::invalid(format!(
                    "{at}.expected_by_ms is required when the correction is in progress"
                )));
            }
            _ => text(&format!("{at}.reason"), &o.reason, false)?,
        }
    }
    Ok(())
}
