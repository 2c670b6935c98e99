//! The small mutable records kept per message, encoded with postcard.

use crate::error::{Error, Result};
use crate::model::{InboundState, MessageKind, SentState};
use serde::{Deserialize, Serialize};

/// State of a message this node sent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentRecord {
    pub state: SentState,
    pub recipient: String,
    pub kind: MessageKind,
    /// SHA-256 over the submit request's content: the idempotency check.
    pub request_digest: [u8; 32],
    pub header_sha256: [u8; 32],
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// The outbox entry, while the message waits for its peer.
    pub outbox_key: Option<Vec<u8>>,
    /// Sequence numbers of the audit entries about this message, oldest
    /// first, kept by the store (`Store::transact`). Stores written before
    /// this field kept them in the `audit_index` tree only.
    pub audit_seqs: Vec<u64>,
    /// A final receipt contradicting the message's final state came back
    /// and was recorded in the audit log; later ones are refused unrecorded.
    pub conflict_recorded: bool,
}

/// State of a message in this node's custody.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboundRecord {
    pub state: InboundState,
    pub kind: MessageKind,
    pub header_sha256: [u8; 32],
    pub expires_at_ms: u64,
    /// Delivery attempts to receivers so far.
    pub attempts: u32,
    /// The current (or last) lease.
    pub lease_id: u64,
    pub lease_deadline_ms: u64,
    /// The key of the message's current inbox or lease entry.
    pub queue_key: Vec<u8>,
    /// Where the `delivered` receipt is stored, to answer a repeat delivery.
    pub delivered_receipt_key: Vec<u8>,
    /// As [`SentRecord::audit_seqs`].
    pub audit_seqs: Vec<u64>,
    /// The principal that holds the current lease: only it may settle,
    /// release or extend the lease.
    pub lease_holder: String,
}

pub(super) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail.
    postcard::to_allocvec(record).unwrap_or_default()
}

pub(super) fn decode<T: Record>(what: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .or_else(|e| T::legacy(bytes).ok_or(e))
        .map_err(|e| Error::corrupt(what, e))
}

/// A stored record, and how to read the form older stores wrote.
pub(super) trait Record: for<'a> Deserialize<'a> {
    fn legacy(_bytes: &[u8]) -> Option<Self> {
        None
    }
}

/// The legacy form of a record, only if it takes up every byte (postcard
/// ignores trailing bytes: a damaged new record must not pass as old).
fn legacy_whole<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((r, [])) => Some(r),
        _ => None,
    }
}

impl Record for SentRecord {
    fn legacy(bytes: &[u8]) -> Option<Self> {
        let r: legacy::SentRecord = legacy_whole(bytes)?;
        Some(SentRecord {
            state: r.state,
            recipient: r.recipient,
            kind: r.kind,
            request_digest: r.request_digest,
            header_sha256: r.header_sha256,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            outbox_key: r.outbox_key,
            audit_seqs: Vec::new(),
            conflict_recorded: false,
        })
    }
}

impl Record for InboundRecord {
    fn legacy(bytes: &[u8]) -> Option<Self> {
        let r: legacy::InboundRecord = legacy_whole(bytes)?;
        Some(InboundRecord {
            state: r.state,
            kind: r.kind,
            header_sha256: r.header_sha256,
            expires_at_ms: r.expires_at_ms,
            attempts: r.attempts,
            lease_id: r.lease_id,
            lease_deadline_ms: r.lease_deadline_ms,
            queue_key: r.queue_key,
            delivered_receipt_key: r.delivered_receipt_key,
            audit_seqs: Vec::new(),
            lease_holder: String::new(),
        })
    }
}

impl Record for OperatorEvent {}
impl Record for PauseRecord {}

/// The records as stores wrote them before `audit_seqs`.
mod legacy {
    use crate::model::{InboundState, MessageKind, SentState};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct SentRecord {
        pub state: SentState,
        pub recipient: String,
        pub kind: MessageKind,
        pub request_digest: [u8; 32],
        pub header_sha256: [u8; 32],
        pub created_at_ms: u64,
        pub expires_at_ms: u64,
        pub outbox_key: Option<Vec<u8>>,
    }

    #[derive(Deserialize)]
    pub struct InboundRecord {
        pub state: InboundState,
        pub kind: MessageKind,
        pub header_sha256: [u8; 32],
        pub expires_at_ms: u64,
        pub attempts: u32,
        pub lease_id: u64,
        pub lease_deadline_ms: u64,
        pub queue_key: Vec<u8>,
        pub delivered_receipt_key: Vec<u8>,
    }
}

/// An operator's action on one message, kept in its history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorEvent {
    pub at_ms: u64,
    pub action: OperatorAction,
    /// The operator principal.
    pub principal: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OperatorAction {
    /// A dead letter was put back in the inbox with fresh attempts.
    Requeued,
    /// A dead letter was given up for good.
    Discarded,
}

impl OperatorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Requeued => "requeued",
            OperatorAction::Discarded => "discarded",
        }
    }
}

/// Forwarding to a peer is paused (stored so that it survives a restart).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PauseRecord {
    pub at_ms: u64,
    pub principal: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as stores wrote it before `audit_seqs`: the same fields,
    /// in the same order, without the last one.
    #[derive(Serialize)]
    struct OldSentRecord {
        state: SentState,
        recipient: String,
        kind: MessageKind,
        request_digest: [u8; 32],
        header_sha256: [u8; 32],
        created_at_ms: u64,
        expires_at_ms: u64,
        outbox_key: Option<Vec<u8>>,
    }

    #[test]
    fn records_written_before_audit_seqs_still_decode() {
        let old = OldSentRecord {
            state: SentState::Delivered,
            recipient: "public_security".into(),
            kind: MessageKind::ClueTransfer,
            request_digest: [1; 32],
            header_sha256: [2; 32],
            created_at_ms: 3,
            expires_at_ms: 4,
            outbox_key: Some(vec![5]),
        };
        let bytes = postcard::to_allocvec(&old).expect("encode");
        let r: SentRecord = decode("sent", &bytes).expect("legacy form");
        assert_eq!(
            (r.state, r.recipient.as_str(), r.outbox_key.as_deref()),
            (SentState::Delivered, "public_security", Some(&[5u8][..]))
        );
        assert!(r.audit_seqs.is_empty());
        // The current form round-trips, and garbage is still refused.
        let mut current = r.clone();
        current.audit_seqs = vec![7, 9];
        let back: SentRecord = decode("sent", &encode(&current)).expect("current form");
        assert_eq!(back, current);
        assert!(decode::<SentRecord>("sent", &[0xff; 3]).is_err());
        // A new record whose list is cut short is not taken for an old one.
        let mut cut = encode(&current);
        cut.truncate(cut.len() - 1);
        assert!(decode::<SentRecord>("sent", &cut).is_err());
    }
}
