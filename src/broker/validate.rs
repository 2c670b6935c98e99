//! The rules every envelope header meets, whether this node builds it at
//! `Submit` or a member node hands it over on `Peer.Deliver`: one function
//! for both, so that a peer gets past nothing a client cannot.

use super::Broker;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::model::{EnvelopeHeader, MessageKind, check_text, validate_id};

fn check_len(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Checks the header's text fields, sizes and times against this node's
/// limits. The signature, the route and the sender are checked elsewhere.
pub(super) fn check_header(config: &NodeConfig, h: &EnvelopeHeader) -> Result<()> {
    let limits = &config.limits;
    if h.subject.trim().is_empty() {
        return Err(Error::invalid(
            "subject is empty; every message needs a subject",
        ));
    }
    check_len("subject", &h.subject, limits.max_subject_len)?;
    check_text("subject", &h.subject, false)?;
    check_len(
        "case_reference",
        &h.case_reference,
        limits.max_case_reference_len,
    )?;
    check_text("case_reference", &h.case_reference, false)?;
    check_len("content_type", &h.content_type, limits.max_content_type_len)?;
    check_text("content_type", &h.content_type, false)?;
    validate_id("sender_principal", &h.sender_principal)?;
    match h.kind {
        MessageKind::Feedback => validate_id("correlation_id", &h.correlation_id)?,
        _ if !h.correlation_id.is_empty() => {
            return Err(Error::invalid(
                "correlation_id is only for feedback; leave it empty for other kinds",
            ));
        }
        _ => {}
    }
    if h.payload_length > limits.max_payload_bytes as u64 {
        return Err(Error::ResourceExhausted(format!(
            "payload is {} bytes; this node accepts at most {}",
            h.payload_length, limits.max_payload_bytes
        )));
    }
    check_times(config, h)
}

/// Checks a rejection reason, typed by a receiver or carried in a peer's
/// signed receipt: within `max_reason_len`, printable text (line breaks
/// and tabs allowed).
pub(super) fn check_reason(config: &NodeConfig, reason: &str) -> Result<()> {
    check_len("reason", reason, config.limits.max_reason_len)?;
    check_text("reason", reason, true)
}

/// A creation time, an expiry after it within this node's longest time to
/// live, and a reply-by time (if any) that is not before the creation.
fn check_times(config: &NodeConfig, h: &EnvelopeHeader) -> Result<()> {
    if h.created_at_ms == 0 {
        return Err(Error::invalid(
            "created_at_ms is 0; an envelope needs its creation time",
        ));
    }
    if h.expires_at_ms <= h.created_at_ms {
        return Err(Error::invalid(format!(
            "expires_at_ms {} is not after created_at_ms {}",
            h.expires_at_ms, h.created_at_ms
        )));
    }
    let max_ttl_secs = config.delivery.max_ttl_secs;
    let ttl_ms = h.expires_at_ms - h.created_at_ms;
    if ttl_ms > max_ttl_secs.saturating_mul(1000) {
        return Err(Error::invalid(format!(
            "the envelope lives {} s; this node's maximum time to live is {max_ttl_secs} s",
            ttl_ms / 1000
        )));
    }
    if h.reply_by_ms != 0 && h.reply_by_ms < h.created_at_ms {
        return Err(Error::invalid(format!(
            "reply_by_ms {} is before created_at_ms {}",
            h.reply_by_ms, h.created_at_ms
        )));
    }
    if let Some(window) = reply_window_ms(config, h) {
        let latest = h.created_at_ms.saturating_add(window);
        if h.reply_by_ms > latest {
            return Err(Error::invalid(format!(
                "reply_by_ms {} is later than the route allows: a {} from {} to {} is to be \
                 answered within {} days of its creation, by {latest} at the latest (leave \
                 reply_by_ms 0 for that, or set an earlier time)",
                h.reply_by_ms,
                h.kind,
                h.sender_node,
                h.recipient_node,
                window / 86_400_000
            )));
        }
    }
    Ok(())
}

/// The reply window of the route a header travels on, if it has one.
pub(super) fn reply_window_ms(config: &NodeConfig, h: &EnvelopeHeader) -> Option<u64> {
    let federation = &config.federation;
    let from = federation.node(&h.sender_node)?.kind;
    let to = federation.node(&h.recipient_node)?.kind;
    federation.policy.reply_window_ms(from, h.kind, to)
}

impl Broker {
    /// Refuses an object signed with a key whose validity ended more than
    /// `limits.retired_key_grace_ms` ago, whatever time the object claims:
    /// after rotation, a retired key cannot sign new evidence with a
    /// backdated time. The grace lets envelopes and receipts signed before
    /// the rotation, and held up by an outage, still arrive. (An offline
    /// verifier checks the claimed time against the key's window instead;
    /// this check is about when a node takes the object.)
    pub(super) fn check_key_not_retired(&self, node: &str, key_id: &str, now: u64) -> Result<()> {
        let entry = self.config().federation.keyring.entry(node, key_id)?;
        let grace = self.config().limits.retired_key_grace_ms;
        match entry.not_after_ms {
            Some(not_after) if now > not_after.saturating_add(grace) => {
                Err(Error::PermissionDenied(format!(
                    "key {key_id:?} of node {node:?} was retired at {}; objects signed with it \
                     are taken until {grace} ms after that, and that time has passed",
                    crate::format_time(not_after)
                )))
            }
            _ => Ok(()),
        }
    }
}
