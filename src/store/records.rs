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
    /// first, kept by the store (`Store::transact`).
    pub audit_seqs: Vec<u64>,
    /// A final receipt contradicting the message's final state came back
    /// and was recorded in the audit log; later ones are refused unrecorded.
    pub conflict_recorded: bool,
    /// Where the signed envelope lies in the segments (a
    /// `segments::Locator`), set by the store when it writes the envelope.
    pub envelope_at: Vec<u8>,
    /// The receipts about the message, oldest first, noted by the store
    /// when it indexes the journal record that holds each (`receipts`).
    pub receipts: Vec<ReceiptAt>,
}

/// One receipt about a message: the first half of its SHA-256 (what it
/// is known by, as in a receipt key) and where its bytes lie in the
/// journal (an `evidence::JournalLocator`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiptAt {
    pub digest: [u8; 16],
    pub at: [u8; 24],
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
    /// As [`SentRecord::envelope_at`].
    pub envelope_at: Vec<u8>,
    /// As [`SentRecord::receipts`].
    pub receipts: Vec<ReceiptAt>,
}

impl InboundRecord {
    /// The record of a message just taken into custody: in the inbox,
    /// never offered to a receiver yet.
    pub fn arrived(kind: MessageKind, header_sha256: [u8; 32], expires_at_ms: u64) -> Self {
        InboundRecord {
            state: InboundState::Inbox,
            kind,
            header_sha256,
            expires_at_ms,
            attempts: 0,
            lease_id: 0,
            lease_deadline_ms: 0,
            queue_key: Vec::new(),
            delivered_receipt_key: Vec::new(),
            audit_seqs: Vec::new(),
            lease_holder: String::new(),
            envelope_at: Vec::new(),
            receipts: Vec::new(),
        }
    }
}

/// Whether this node sent a message or took it into custody.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

pub(super) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail.
    postcard::to_allocvec(record).unwrap_or_default()
}

/// Decodes a record; the whole value must be one record (postcard
/// ignores trailing bytes, so a damaged value must not pass as whole).
pub(super) fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((r, [])) => Ok(r),
        Ok((_, rest)) => Err(Error::corrupt(
            what,
            format!("{} bytes follow the record", rest.len()),
        )),
        Err(e) => Err(Error::corrupt(what, e)),
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

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_refused() {
        let record = SentRecord {
            state: SentState::Delivered,
            recipient: "public_security".into(),
            kind: MessageKind::ClueTransfer,
            request_digest: [1; 32],
            header_sha256: [2; 32],
            created_at_ms: 3,
            expires_at_ms: 4,
            outbox_key: Some(vec![5]),
            audit_seqs: vec![7, 9],
            conflict_recorded: false,
            envelope_at: vec![8; 21],
            receipts: vec![ReceiptAt {
                digest: [6; 16],
                at: [5; 24],
            }],
        };
        let back: SentRecord = decode("sent", &encode(&record)).expect("round trip");
        assert_eq!(back, record);
        assert!(decode::<SentRecord>("sent", &[0xff; 3]).is_err());
        let mut cut = encode(&record);
        cut.truncate(cut.len() - 1);
        assert!(decode::<SentRecord>("sent", &cut).is_err());
        let mut longer = encode(&record);
        longer.push(0);
        let e = decode::<SentRecord>("sent", &longer).expect_err("trailing byte");
        assert!(e.to_string().contains("1 bytes follow the record"), "{e}");
    }
}
