//! Audit log entries and checkpoints, with their one canonical encoding.
//!
//! Every state change of a node appends one [`AuditEntry`] to the node's
//! hash chain. An entry's hash ([`AuditEntry::hash`]) covers its sequence
//! number, its content and the previous entry's hash, so changing, removing
//! or inserting any entry changes every later hash. A [`Checkpoint`] is the
//! node's signed statement "my chain had `seq` entries with head `hash` at
//! `time`"; peers keep copies, so a rewritten chain contradicts them.
//!
//! The encodings are written out field by field (not protobuf) so that they
//! are deterministic and easy to reproduce in another language; the format
//! is documented in `docs/bundle-format.md`.

use super::{MessageRef, sha256, validate_id};
use crate::error::{Error, Result};

/// Prefix of every entry's hash input: an entry hash can never be mistaken
/// for the hash of another kind of object.
pub const ENTRY_DOMAIN: &[u8] = b"cluebridge/v1/audit-entry\n";

/// The `prev_hash` of the first entry of a chain (sequence number 1).
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Longest `detail` an entry carries; details are short notes, never
/// evidence.
pub const MAX_DETAIL_LEN: usize = 512;

/// What happened to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    /// Sender: the message was submitted, signed and put in the outbox.
    Accepted,
    /// Sender: a receipt about the message came back from the recipient
    /// node (delivered, acknowledged, rejected, dead_lettered, expired).
    ReceiptReceived,
    /// Recipient: the node took custody and issued its `delivered` receipt.
    Delivered,
    /// Recipient: the message was leased to a receiver (attempt n).
    Leased,
    /// Recipient: a receiver moved its lease's deadline.
    LeaseExtended,
    /// Recipient: a receiver gave the message back.
    Released,
    /// Recipient: a lease lapsed (or its stream closed); offered again.
    Redelivered,
    Acknowledged,
    Rejected,
    /// Either side: set aside (attempts used up, or refused by the peer).
    DeadLettered,
    /// An operator put a dead letter back in its queue.
    Requeued,
    /// Either side: the time to live passed.
    Expired,
    /// Recipient: an operator gave a dead letter up for good, with a reason.
    Discarded,
    /// Either side: a feedback answered a message that expects one (the
    /// state is the follow-up's: still open after an interim feedback,
    /// `answered` or `answered_late` after a final one).
    FeedbackRecorded,
    /// Either side: the reply-by deadline passed with no final feedback.
    Overdue,
    /// Sender: a submit on a route that requires approval waits, unsigned
    /// and unsent, for a second principal.
    AwaitingApproval,
    /// Sender: a principal with the approve role approved it (named in
    /// the detail); it is signed and accepted next.
    Approved,
    /// Sender: a principal with the approve role declined it, with a
    /// reason; it is never signed or sent.
    Declined,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 18] = [
        AuditEvent::Accepted,
        AuditEvent::ReceiptReceived,
        AuditEvent::Delivered,
        AuditEvent::Leased,
        AuditEvent::LeaseExtended,
        AuditEvent::Released,
        AuditEvent::Redelivered,
        AuditEvent::Acknowledged,
        AuditEvent::Rejected,
        AuditEvent::DeadLettered,
        AuditEvent::Requeued,
        AuditEvent::Expired,
        AuditEvent::Discarded,
        AuditEvent::FeedbackRecorded,
        AuditEvent::Overdue,
        AuditEvent::AwaitingApproval,
        AuditEvent::Approved,
        AuditEvent::Declined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Accepted => "accepted",
            AuditEvent::ReceiptReceived => "receipt_received",
            AuditEvent::Delivered => "delivered",
            AuditEvent::Leased => "leased",
            AuditEvent::LeaseExtended => "lease_extended",
            AuditEvent::Released => "released",
            AuditEvent::Redelivered => "redelivered",
            AuditEvent::Acknowledged => "acknowledged",
            AuditEvent::Rejected => "rejected",
            AuditEvent::DeadLettered => "dead_lettered",
            AuditEvent::Requeued => "requeued",
            AuditEvent::Expired => "expired",
            AuditEvent::Discarded => "discarded",
            AuditEvent::FeedbackRecorded => "feedback_recorded",
            AuditEvent::Overdue => "overdue",
            AuditEvent::AwaitingApproval => "awaiting_approval",
            AuditEvent::Approved => "approved",
            AuditEvent::Declined => "declined",
        }
    }

    /// Whether the entry's `state` is the message's own state (the one its
    /// record holds), not a follow-up's (`feedback_recorded`, `overdue`).
    pub fn is_message_state(self) -> bool {
        !matches!(self, AuditEvent::FeedbackRecorded | AuditEvent::Overdue)
    }

    pub fn parse(s: &str) -> Result<AuditEvent> {
        AuditEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown audit event {s:?}")))
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One link of a node's audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// 1 for the first entry, then +1 per entry: no gaps.
    pub seq: u64,
    pub time_ms: u64,
    pub event: AuditEvent,
    pub message: MessageRef,
    /// The message's state after the change, as the node's state record
    /// holds it: a sent state (`accepted`, `delivered`, …) at the sender,
    /// a custody state (`inbox`, `leased`, …) at the recipient.
    pub state: String,
    /// A short note: attempt, lease, reason, issuer.
    pub detail: String,
    /// SHA-256 of the receipt bytes stored or issued by this change (the
    /// `receipt` field of the SignedReceipt), if any.
    pub receipt_sha256: Option<[u8; 32]>,
    pub prev_hash: [u8; 32],
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s);
}

/// A reader over canonical bytes that names what is missing.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::invalid(format!("{} bytes end too early", self.what)));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
    }

    fn digest(&mut self) -> Result<[u8; 32]> {
        let b = self.take(32)?;
        Ok(b.try_into().unwrap_or([0; 32]))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::invalid(format!("{} holds a string that is not UTF-8", self.what)))
    }

    fn end(&self) -> Result<()> {
        if !self.bytes.is_empty() {
            return Err(Error::invalid(format!(
                "{} has {} bytes too many",
                self.what,
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

impl AuditEntry {
    /// The entry's content, everything but its place in the chain:
    ///
    /// ```text
    /// time_ms u64 | event str | sender_node str | message_id str | state str
    /// | detail str | receipt_sha256 (u8 0, or u8 1 then 32 bytes)
    /// ```
    ///
    /// Numbers are big-endian; `str` is a big-endian u32 byte length then
    /// the UTF-8 bytes.
    pub fn content(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(128 + self.detail.len());
        buf.extend_from_slice(&self.time_ms.to_be_bytes());
        put_str(&mut buf, self.event.as_str().as_bytes());
        put_str(&mut buf, self.message.sender_node.as_bytes());
        put_str(&mut buf, self.message.message_id.as_bytes());
        put_str(&mut buf, self.state.as_bytes());
        put_str(&mut buf, self.detail.as_bytes());
        match &self.receipt_sha256 {
            None => buf.push(0),
            Some(d) => {
                buf.push(1);
                buf.extend_from_slice(d);
            }
        }
        buf
    }

    /// The entry's hash: SHA-256 over
    /// `"cluebridge/v1/audit-entry\n" | seq u64 | SHA-256(content) | prev_hash`.
    ///
    /// Hashing the content's digest rather than the content lets a bundle
    /// show the entries about one message in full and only the digests of
    /// the entries about other messages, and still prove the chain.
    pub fn hash(&self) -> [u8; 32] {
        Self::link(self.seq, &sha256(&self.content()), &self.prev_hash)
    }

    /// The hash of entry `seq` from its content digest and the previous
    /// entry's hash.
    pub fn link(seq: u64, content_sha256: &[u8; 32], prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut buf = Vec::with_capacity(ENTRY_DOMAIN.len() + 72);
        buf.extend_from_slice(ENTRY_DOMAIN);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(content_sha256);
        buf.extend_from_slice(prev_hash);
        sha256(&buf)
    }

    /// The stored form: `seq u64 | prev_hash 32 | content`.
    pub fn encode(&self) -> Vec<u8> {
        let content = self.content();
        let mut buf = Vec::with_capacity(40 + content.len());
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.prev_hash);
        buf.extend_from_slice(&content);
        buf
    }

    /// Parses the stored form, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<AuditEntry> {
        let mut r = Reader {
            what: "audit entry",
            bytes,
        };
        let seq = r.u64()?;
        let prev_hash = r.digest()?;
        let time_ms = r.u64()?;
        let event = AuditEvent::parse(&r.string()?)?;
        let sender_node = r.string()?;
        let message_id = r.string()?;
        validate_id("audit entry sender_node", &sender_node)?;
        validate_id("audit entry message_id", &message_id)?;
        let state = r.string()?;
        let detail = r.string()?;
        let receipt_sha256 = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.digest()?),
            other => {
                return Err(Error::invalid(format!(
                    "audit entry receipt marker is {other}; expected 0 or 1"
                )));
            }
        };
        r.end()?;
        Ok(AuditEntry {
            seq,
            time_ms,
            event,
            message: MessageRef {
                sender_node,
                message_id,
            },
            state,
            detail,
            receipt_sha256,
            prev_hash,
        })
    }
}

/// A node's statement about the head of its audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub node: String,
    /// Sequence number of the chain's last entry (0 for an empty chain).
    pub seq: u64,
    /// Hash of that entry ([`GENESIS_HASH`] for an empty chain).
    pub head_hash: [u8; 32],
    pub time_ms: u64,
    /// Id of the node's key that signs the checkpoint.
    pub signing_key_id: String,
}

impl Checkpoint {
    /// The signed bytes:
    /// `node str | signing_key_id str | seq u64 | head_hash 32 | time_ms u64`
    /// (the signature input prefixes `cluebridge/v1/checkpoint\n`).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(96);
        put_str(&mut buf, self.node.as_bytes());
        put_str(&mut buf, self.signing_key_id.as_bytes());
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.head_hash);
        buf.extend_from_slice(&self.time_ms.to_be_bytes());
        buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
        let mut r = Reader {
            what: "checkpoint",
            bytes,
        };
        let node = r.string()?;
        let signing_key_id = r.string()?;
        validate_id("checkpoint node", &node)?;
        validate_id("checkpoint signing_key_id", &signing_key_id)?;
        let seq = r.u64()?;
        let head_hash = r.digest()?;
        let time_ms = r.u64()?;
        r.end()?;
        Ok(Checkpoint {
            node,
            seq,
            head_hash,
            time_ms,
            signing_key_id,
        })
    }
}

/// A checkpoint as signed: its bytes and the node's Ed25519 signature over
/// `"cluebridge/v1/checkpoint\n" || checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Vec<u8>,
    pub signature: Vec<u8>,
}

impl SignedCheckpoint {
    /// Decodes the checkpoint bytes (without checking the signature).
    pub fn open(&self) -> Result<Checkpoint> {
        Checkpoint::decode(&self.checkpoint)
    }

    /// Stored form: u32 length of the checkpoint bytes, them, the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 + self.checkpoint.len() + self.signature.len());
        put_str(&mut buf, &self.checkpoint);
        buf.extend_from_slice(&self.signature);
        buf
    }

    pub fn decode(bytes: &[u8]) -> Result<SignedCheckpoint> {
        let mut r = Reader {
            what: "signed checkpoint",
            bytes,
        };
        let n = r.u32()? as usize;
        let checkpoint = r.take(n)?.to_vec();
        Ok(SignedCheckpoint {
            checkpoint,
            signature: r.bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 7,
            time_ms: 1_700_000_000_000,
            event: AuditEvent::Leased,
            message: MessageRef {
                sender_node: "discipline".into(),
                message_id: "m-1".into(),
            },
            state: "leased".into(),
            detail: "attempt 2".into(),
            receipt_sha256: Some([3; 32]),
            prev_hash: [9; 32],
        }
    }

    #[test]
    fn entries_round_trip_and_every_field_is_hashed() {
        let e = entry();
        assert_eq!(AuditEntry::decode(&e.encode()).unwrap(), e);
        let mut other = e.clone();
        other.detail = "attempt 3".into();
        assert_ne!(other.hash(), e.hash());
        let mut other = e.clone();
        other.receipt_sha256 = None;
        assert_ne!(other.hash(), e.hash());
        let mut other = e.clone();
        other.prev_hash[0] ^= 1;
        assert_ne!(other.hash(), e.hash());
        let mut other = e.clone();
        other.seq += 1;
        assert_ne!(other.hash(), e.hash());
        let mut bytes = e.encode();
        bytes.push(0);
        assert!(AuditEntry::decode(&bytes).is_err());
    }

    #[test]
    fn checkpoints_round_trip() {
        let c = Checkpoint {
            node: "discipline".into(),
            seq: 42,
            head_hash: [5; 32],
            time_ms: 1,
            signing_key_id: "discipline-k1".into(),
        };
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        let s = SignedCheckpoint {
            checkpoint: c.encode(),
            signature: vec![1; 64],
        };
        assert_eq!(SignedCheckpoint::decode(&s.encode()).unwrap(), s);
    }
}
