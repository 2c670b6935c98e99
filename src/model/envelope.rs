//! Envelope headers and signed envelopes, and their one wire encoding.

use super::{BatchProof, MessageKind, MessageRef, sha256, validate_id};
use crate::error::{Error, Result};
use crate::pb;
use bytes::Bytes;
use prost::Message;

/// What a sender node vouches for about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub message_id: String,
    pub kind: MessageKind,
    pub sender_node: String,
    pub sender_principal: String,
    pub recipient_node: String,
    pub case_reference: String,
    pub correlation_id: String,
    pub subject: String,
    pub content_type: String,
    pub payload_sha256: [u8; 32],
    pub payload_length: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub reply_by_ms: u64,
    pub signing_key_id: String,
}

impl EnvelopeHeader {
    /// The bytes that are signed and travel. Produced once, at submit;
    /// never produced again for the same envelope.
    pub fn encode(&self) -> Vec<u8> {
        pb::EnvelopeHeader {
            message_id: self.message_id.clone(),
            kind: self.kind.to_wire(),
            sender_node: self.sender_node.clone(),
            sender_principal: self.sender_principal.clone(),
            recipient_node: self.recipient_node.clone(),
            case_reference: self.case_reference.clone(),
            correlation_id: self.correlation_id.clone(),
            subject: self.subject.clone(),
            content_type: self.content_type.clone(),
            payload_sha256: self.payload_sha256.to_vec(),
            payload_length: self.payload_length,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            reply_by_ms: self.reply_by_ms,
            signing_key_id: self.signing_key_id.clone(),
        }
        .encode_to_vec()
    }

    /// Parses header bytes as received, checking that every field is well
    /// formed. Says which field is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let h = pb::EnvelopeHeader::decode(bytes)
            .map_err(|e| Error::invalid(format!("envelope header bytes do not decode: {e}")))?;
        validate_id("header message_id", &h.message_id)?;
        validate_id("header sender_node", &h.sender_node)?;
        validate_id("header recipient_node", &h.recipient_node)?;
        validate_id("header signing_key_id", &h.signing_key_id)?;
        if !h.correlation_id.is_empty() {
            validate_id("header correlation_id", &h.correlation_id)?;
        }
        let payload_sha256: [u8; 32] = h.payload_sha256.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "header payload_sha256 is {} bytes; a SHA-256 digest is 32",
                h.payload_sha256.len()
            ))
        })?;
        Ok(EnvelopeHeader {
            message_id: h.message_id,
            kind: MessageKind::from_wire(h.kind)?,
            sender_node: h.sender_node,
            sender_principal: h.sender_principal,
            recipient_node: h.recipient_node,
            case_reference: h.case_reference,
            correlation_id: h.correlation_id,
            subject: h.subject,
            content_type: h.content_type,
            payload_sha256,
            payload_length: h.payload_length,
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms,
            reply_by_ms: h.reply_by_ms,
            signing_key_id: h.signing_key_id,
        })
    }

    pub fn message_ref(&self) -> MessageRef {
        MessageRef {
            sender_node: self.sender_node.clone(),
            message_id: self.message_id.clone(),
        }
    }
}

/// The immutable unit that travels: header bytes as signed, the sender
/// node's signature (over the header, or over the root of a batch of
/// headers it signed at once), and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
///
/// The three byte fields are shared (`Bytes`): an envelope decoded from a
/// request or read from the store points into that buffer, and passing it
/// on copies no payload.
pub struct SignedEnvelope {
    pub header: Bytes,
    pub signature: Bytes,
    pub payload: Bytes,
    /// The header's place in its batch (`EnvelopeBatchProof`), if any.
    pub batch: Option<BatchProof>,
}

impl BatchProof {
    pub fn to_envelope_wire(&self) -> pb::EnvelopeBatchProof {
        pb::EnvelopeBatchProof {
            leaf_index: self.leaf_index,
            tree_size: self.tree_size,
            audit_path: self.audit_path.clone(),
        }
    }

    pub fn from_envelope_wire(b: pb::EnvelopeBatchProof) -> BatchProof {
        BatchProof {
            leaf_index: b.leaf_index,
            tree_size: b.tree_size,
            audit_path: b.audit_path,
        }
    }
}

impl SignedEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    /// Decodes an encoded envelope; its fields share `bytes`' buffer.
    pub fn decode(bytes: impl Into<Bytes>) -> Result<Self> {
        let e = pb::SignedEnvelope::decode(bytes.into())
            .map_err(|e| Error::invalid(format!("signed envelope does not decode: {e}")))?;
        Ok(Self::from_wire(e))
    }

    pub fn to_wire(&self) -> pb::SignedEnvelope {
        pb::SignedEnvelope {
            header: self.header.clone(),
            signature: self.signature.clone(),
            payload: self.payload.clone(),
            batch: self.batch.as_ref().map(BatchProof::to_envelope_wire),
        }
    }

    pub fn from_wire(e: pb::SignedEnvelope) -> Self {
        SignedEnvelope {
            header: e.header,
            signature: e.signature,
            payload: e.payload,
            batch: e.batch.map(BatchProof::from_envelope_wire),
        }
    }

    /// SHA-256 of the header bytes; receipts name the envelope by it.
    pub fn header_sha256(&self) -> [u8; 32] {
        sha256(&self.header)
    }

    /// Decodes the header and checks that the payload matches its digest and
    /// length. Does not check the signature (see `crypto`).
    pub fn open(&self) -> Result<EnvelopeHeader> {
        let header = EnvelopeHeader::decode(&self.header)?;
        self.check_payload(&header)?;
        Ok(header)
    }

    /// Checks that the payload matches the length and digest in `header`
    /// (this envelope's header, decoded).
    pub fn check_payload(&self, header: &EnvelopeHeader) -> Result<()> {
        if header.payload_length != self.payload.len() as u64 {
            return Err(Error::invalid(format!(
                "payload is {} bytes but the header says {}",
                self.payload.len(),
                header.payload_length
            )));
        }
        if sha256(&self.payload) != header.payload_sha256 {
            return Err(Error::invalid(
                "payload SHA-256 does not match the digest in the signed header",
            ));
        }
        Ok(())
    }
}
