//! Receipts: a node's signed statement about one envelope, and their one
//! wire encoding.

use super::{MessageRef, validate_id};
use crate::error::{Error, Result};
use crate::pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    Accepted,
    Delivered,
    Acknowledged,
    Rejected,
    DeadLettered,
    Expired,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Accepted => "accepted",
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Acknowledged => "acknowledged",
            ReceiptKind::Rejected => "rejected",
            ReceiptKind::DeadLettered => "dead_lettered",
            ReceiptKind::Expired => "expired",
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            ReceiptKind::Accepted => 1,
            ReceiptKind::Delivered => 2,
            ReceiptKind::Acknowledged => 3,
            ReceiptKind::Rejected => 4,
            ReceiptKind::DeadLettered => 5,
            ReceiptKind::Expired => 6,
        }
    }

    pub fn from_wire(n: i32) -> Result<Self> {
        Ok(match n {
            1 => ReceiptKind::Accepted,
            2 => ReceiptKind::Delivered,
            3 => ReceiptKind::Acknowledged,
            4 => ReceiptKind::Rejected,
            5 => ReceiptKind::DeadLettered,
            6 => ReceiptKind::Expired,
            other => return Err(Error::invalid(format!("unknown receipt kind {other}"))),
        })
    }
}

impl fmt::Display for ReceiptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub message_id: String,
    pub sender_node: String,
    pub kind: ReceiptKind,
    pub issuer_node: String,
    pub issued_at_ms: u64,
    pub reason: String,
    pub header_sha256: [u8; 32],
    pub signing_key_id: String,
    pub attempt: u32,
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        pb::Receipt {
            message_id: self.message_id.clone(),
            sender_node: self.sender_node.clone(),
            kind: self.kind.to_wire(),
            issuer_node: self.issuer_node.clone(),
            issued_at_ms: self.issued_at_ms,
            reason: self.reason.clone(),
            header_sha256: self.header_sha256.to_vec(),
            signing_key_id: self.signing_key_id.clone(),
            attempt: self.attempt,
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let r = pb::Receipt::decode(bytes)
            .map_err(|e| Error::invalid(format!("receipt bytes do not decode: {e}")))?;
        validate_id("receipt message_id", &r.message_id)?;
        validate_id("receipt sender_node", &r.sender_node)?;
        validate_id("receipt issuer_node", &r.issuer_node)?;
        validate_id("receipt signing_key_id", &r.signing_key_id)?;
        let header_sha256 = r.header_sha256.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "receipt header_sha256 is {} bytes; a SHA-256 digest is 32",
                r.header_sha256.len()
            ))
        })?;
        Ok(Receipt {
            message_id: r.message_id,
            sender_node: r.sender_node,
            kind: ReceiptKind::from_wire(r.kind)?,
            issuer_node: r.issuer_node,
            issued_at_ms: r.issued_at_ms,
            reason: r.reason,
            header_sha256,
            signing_key_id: r.signing_key_id,
            attempt: r.attempt,
        })
    }

    pub fn message_ref(&self) -> MessageRef {
        MessageRef {
            sender_node: self.sender_node.clone(),
            message_id: self.message_id.clone(),
        }
    }
}

/// Receipt bytes as signed, with the issuer's signature: over the bytes
/// alone, or over the root of a batch the receipt belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReceipt {
    pub receipt: Vec<u8>,
    pub signature: Vec<u8>,
    pub batch: Option<BatchProof>,
}

/// A receipt's place in the Merkle tree of a batch its issuer signed at
/// once (`ReceiptBatchProof` in `envelope.proto`; checked by
/// [`Keyring::verify_receipt`](crate::crypto::Keyring::verify_receipt)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf up; each should be 32 bytes, which
    /// verification checks.
    pub audit_path: Vec<Vec<u8>>,
}

impl SignedReceipt {
    /// A receipt signed alone.
    pub fn single(receipt: Vec<u8>, signature: Vec<u8>) -> Self {
        SignedReceipt {
            receipt,
            signature,
            batch: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let r = pb::SignedReceipt::decode(bytes)
            .map_err(|e| Error::invalid(format!("signed receipt does not decode: {e}")))?;
        Ok(Self::from_wire(r))
    }

    pub fn to_wire(&self) -> pb::SignedReceipt {
        pb::SignedReceipt {
            receipt: self.receipt.clone(),
            signature: self.signature.clone(),
            batch: self.batch.as_ref().map(|b| pb::ReceiptBatchProof {
                leaf_index: b.leaf_index,
                tree_size: b.tree_size,
                audit_path: b.audit_path.clone(),
            }),
        }
    }

    pub fn from_wire(r: pb::SignedReceipt) -> Self {
        SignedReceipt {
            receipt: r.receipt,
            signature: r.signature,
            batch: r.batch.map(|b| BatchProof {
                leaf_index: b.leaf_index,
                tree_size: b.tree_size,
                audit_path: b.audit_path,
            }),
        }
    }

    /// Decodes the receipt bytes (without checking the signature).
    pub fn open(&self) -> Result<Receipt> {
        Receipt::decode(&self.receipt)
    }
}
