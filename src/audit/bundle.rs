//! Receipt bundles: the self-contained evidence about one message, as a
//! versioned JSON document (format in `docs/bundle-format.md`), and its
//! offline verification. Depends only on `model` and the signing half of
//! `crypto`: no store, no network.

use super::{Check, Report, TimelineItem};
use crate::crypto::{Keyring, PublicKeyEntry};
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, AuditEvent, BatchProof, EnvelopeHeader, MessageRef, Receipt, SignedCheckpoint,
    SignedReceipt, sha256,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The `format` field of every bundle.
pub const FORMAT: &str = "cluebridge-receipt-bundle";
/// The bundle format version this code writes and reads.
pub const VERSION: u32 = 1;

/// A receipt bundle as written to a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    pub message: MessageId,
    pub envelope: EnvelopePart,
    pub receipts: Vec<ReceiptPart>,
    pub audit: AuditPart,
    pub keys: Vec<KeyPart>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageId {
    pub sender_node: String,
    pub message_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopePart {
    /// Base64 of the encoded header, exactly as signed.
    pub header: String,
    /// Base64 of the sender node's Ed25519 signature: over the header, or
    /// over the root of its batch when `batch` is present.
    pub signature: String,
    /// The header's place in a batch its sender node signed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchPart>,
    /// The header decoded, for people; must equal what the header says.
    pub header_fields: serde_json::Value,
    /// Hex SHA-256 of the payload, as the signed header states it.
    pub payload_sha256: String,
    /// Base64 of the payload, when it was asked for and allowed.
    pub payload: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptPart {
    /// Base64 of the encoded receipt, exactly as signed.
    pub receipt: String,
    /// Base64 of the issuer's signature: over the receipt, or over the
    /// root of its batch when `batch` is present.
    pub signature: String,
    /// The receipt's place in a batch its issuer signed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchPart>,
    /// The receipt decoded, for people; must equal what the bytes say.
    pub fields: serde_json::Value,
}

/// A receipt's or an envelope header's Merkle inclusion proof
/// (`ReceiptBatchProof`, `EnvelopeBatchProof` in `envelope.proto`), with
/// the path's hashes in hex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPart {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub audit_path: Vec<String>,
}

impl BatchPart {
    fn of(b: &BatchProof) -> BatchPart {
        BatchPart {
            leaf_index: b.leaf_index,
            tree_size: b.tree_size,
            audit_path: b.audit_path.iter().map(hex::encode).collect(),
        }
    }

    /// The proof the part states, each path hash a hex SHA-256 (`what`:
    /// whose proof, for the error).
    fn proof(&self, what: &str) -> Result<BatchProof> {
        Ok(BatchProof {
            leaf_index: self.leaf_index,
            tree_size: self.tree_size,
            audit_path: self
                .audit_path
                .iter()
                .map(|h| digest(&format!("{what} batch path hash"), h).map(|d| d.to_vec()))
                .collect::<Result<_>>()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPart {
    /// The node whose audit chain the segments come from.
    pub node: String,
    pub segments: Vec<Segment>,
}

/// Consecutive chain entries ending at a signed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub entries: Vec<EntryPart>,
    pub checkpoint: CheckpointPart,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryPart {
    pub seq: u64,
    /// Hex SHA-256 of the entry's content.
    pub content_sha256: String,
    /// Hex hash of the previous entry.
    pub prev_hash: String,
    /// Hex hash of this entry.
    pub hash: String,
    /// The content, for entries about this message; absent (only the
    /// digest is shown) for entries about other messages.
    pub content: Option<EntryContent>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryContent {
    pub time_ms: u64,
    pub event: String,
    pub sender_node: String,
    pub message_id: String,
    pub state: String,
    pub detail: String,
    pub receipt_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPart {
    /// Base64 of the checkpoint bytes, exactly as signed.
    pub checkpoint: String,
    pub signature: String,
    /// The checkpoint decoded, for people; must equal what the bytes say.
    pub fields: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPart {
    pub node: String,
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
}

// ------------------------------------------------------------ building

/// What a node puts in a bundle.
#[derive(Debug)]
pub struct BundleInput<'a> {
    pub message: &'a MessageRef,
    pub header: &'a [u8],
    pub signature: &'a [u8],
    pub header_batch: Option<&'a BatchProof>,
    pub payload: Option<&'a [u8]>,
    pub receipts: &'a [SignedReceipt],
    pub audit_node: &'a str,
    /// Chain segments, each ending at the entry its checkpoint names.
    pub segments: Vec<(Vec<AuditEntry>, SignedCheckpoint)>,
    pub keyring: &'a Keyring,
}

/// Assembles a bundle; fails if a signer's key is not in the keyring.
pub fn build(input: BundleInput<'_>) -> Result<Bundle> {
    let header = EnvelopeHeader::decode(input.header)?;
    let mut signers = BTreeSet::new();
    signers.insert((header.sender_node.clone(), header.signing_key_id.clone()));
    let mut receipts = Vec::new();
    for r in input.receipts {
        let opened = r.open()?;
        signers.insert((opened.issuer_node.clone(), opened.signing_key_id.clone()));
        receipts.push(ReceiptPart {
            receipt: B64.encode(&r.receipt),
            signature: B64.encode(&r.signature),
            batch: r.batch.as_ref().map(BatchPart::of),
            fields: receipt_fields(&opened),
        });
    }
    let mut segments = Vec::new();
    for (entries, checkpoint) in input.segments {
        let c = checkpoint.open()?;
        signers.insert((c.node.clone(), c.signing_key_id.clone()));
        segments.push(Segment {
            entries: entries
                .iter()
                .map(|e| entry_part(e, &e.message == input.message))
                .collect(),
            checkpoint: CheckpointPart {
                checkpoint: B64.encode(&checkpoint.checkpoint),
                signature: B64.encode(&checkpoint.signature),
                fields: checkpoint_fields(&c),
            },
        });
    }
    let keys = signers
        .into_iter()
        .map(|(node, key_id)| {
            let key = input.keyring.entry(&node, &key_id)?;
            Ok(KeyPart {
                public_key: B64.encode(key.key.to_bytes()),
                node,
                key_id,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Bundle {
        format: FORMAT.into(),
        version: VERSION,
        message: MessageId {
            sender_node: input.message.sender_node.clone(),
            message_id: input.message.message_id.clone(),
        },
        envelope: EnvelopePart {
            header: B64.encode(input.header),
            signature: B64.encode(input.signature),
            batch: input.header_batch.map(BatchPart::of),
            header_fields: header_fields(&header),
            payload_sha256: hex::encode(header.payload_sha256),
            payload: input.payload.map(|p| B64.encode(p)),
        },
        receipts,
        audit: AuditPart {
            node: input.audit_node.to_string(),
            segments,
        },
        keys,
    })
}

fn entry_part(e: &AuditEntry, shown: bool) -> EntryPart {
    EntryPart {
        seq: e.seq,
        content_sha256: hex::encode(sha256(&e.content())),
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash()),
        content: shown.then(|| EntryContent {
            time_ms: e.time_ms,
            event: e.event.as_str().into(),
            sender_node: e.message.sender_node.clone(),
            message_id: e.message.message_id.clone(),
            state: e.state.clone(),
            detail: e.detail.clone(),
            receipt_sha256: e.receipt_sha256.map(hex::encode),
        }),
    }
}

fn header_fields(h: &EnvelopeHeader) -> serde_json::Value {
    serde_json::json!({
        "message_id": h.message_id,
        "kind": h.kind.as_str(),
        "sender_node": h.sender_node,
        "sender_principal": h.sender_principal,
        "recipient_node": h.recipient_node,
        "case_reference": h.case_reference,
        "correlation_id": h.correlation_id,
        "subject": h.subject,
        "content_type": h.content_type,
        "payload_length": h.payload_length,
        "created_at_ms": h.created_at_ms,
        "expires_at_ms": h.expires_at_ms,
        "reply_by_ms": h.reply_by_ms,
        "signing_key_id": h.signing_key_id,
    })
}

fn receipt_fields(r: &Receipt) -> serde_json::Value {
    serde_json::json!({
        "kind": r.kind.as_str(),
        "issuer_node": r.issuer_node,
        "issued_at_ms": r.issued_at_ms,
        "attempt": r.attempt,
        "reason": r.reason,
        "message_id": r.message_id,
        "sender_node": r.sender_node,
        "header_sha256": hex::encode(r.header_sha256),
        "signing_key_id": r.signing_key_id,
    })
}

fn checkpoint_fields(c: &crate::model::Checkpoint) -> serde_json::Value {
    serde_json::json!({
        "node": c.node,
        "seq": c.seq,
        "head_hash": hex::encode(c.head_hash),
        "time_ms": c.time_ms,
        "signing_key_id": c.signing_key_id,
    })
}

// ------------------------------------------------------------ verifying

/// Strict base64: only the canonical encoding of some bytes is accepted.
fn b64(what: &str, s: &str) -> Result<Vec<u8>> {
    let bytes = B64
        .decode(s)
        .map_err(|e| Error::invalid(format!("{what} is not base64: {e}")))?;
    if B64.encode(&bytes) != s {
        return Err(Error::invalid(format!("{what} is not canonical base64")));
    }
    Ok(bytes)
}

/// Strict hex: 64 lowercase digits.
fn digest(what: &str, s: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(s).map_err(|e| Error::invalid(format!("{what} is not hex: {e}")))?;
    if hex::encode(&bytes) != s {
        return Err(Error::invalid(format!("{what} is not lowercase hex")));
    }
    bytes
        .try_into()
        .map_err(|_| Error::invalid(format!("{what} is not 32 bytes")))
}

fn same(what: &str, shown: &serde_json::Value, actual: serde_json::Value) -> Result<()> {
    if *shown != actual {
        return Err(Error::invalid(format!(
            "{what} shown in the bundle differ from the signed bytes"
        )));
    }
    Ok(())
}

/// Verifies a bundle's text. With `trust`, every key must be the trust
/// list's; without, the bundle's own keys are used (and the report says
/// so). `witnessed`, when given, are checkpoints that the exporting node's
/// peers hold: each one of that node inside the bundle's segments must
/// agree with them.
pub fn verify(
    text: &str,
    trust: Option<&Keyring>,
    witnessed: Option<&[SignedCheckpoint]>,
) -> Report {
    let mut report = Report::default();
    let Some(bundle) = report.parse::<Bundle>(text, "bundle") else {
        return report;
    };
    report.push(Check::pass("bundle parses", ""));
    report.push(Check::from(
        "format",
        if bundle.format != FORMAT {
            Err(Error::invalid(format!(
                "format is {:?}, expected {FORMAT:?}",
                bundle.format
            )))
        } else if bundle.version != VERSION {
            Err(Error::invalid(format!(
                "version {} is not supported (this verifier reads version {VERSION})",
                bundle.version
            )))
        } else {
            Ok(format!("{FORMAT} version {VERSION}"))
        },
    ));
    let keyring = match keys(&bundle, trust) {
        Ok((keyring, note)) => {
            report.trusted_keys = trust.is_some();
            report.push(Check::pass("keys", note));
            keyring
        }
        Err(e) => {
            report.push(Check::fail("keys", e.to_string()));
            return report;
        }
    };
    let message = MessageRef {
        sender_node: bundle.message.sender_node.clone(),
        message_id: bundle.message.message_id.clone(),
    };
    report.subject = message.to_string();

    // The envelope.
    let header_bytes = match envelope(&bundle, &keyring, &message) {
        Ok((bytes, header)) => {
            report.push(Check::pass(
                "envelope signature",
                format!(
                    "{} {} from {} to {}, signed by {} key {}",
                    header.kind,
                    header.message_id,
                    header.sender_node,
                    header.recipient_node,
                    header.sender_node,
                    header.signing_key_id
                ),
            ));
            report.push(Check::from("payload digest", payload(&bundle, &header)));
            report.timeline.push(TimelineItem {
                time_ms: header.created_at_ms,
                order: (0, 0),
                text: format!(
                    "envelope created by {} ({}), case {:?}, subject {:?}",
                    header.sender_node,
                    header.sender_principal,
                    header.case_reference,
                    header.subject
                ),
            });
            Some(bytes)
        }
        Err(e) => {
            report.push(Check::fail("envelope signature", e.to_string()));
            None
        }
    };
    let header_sha256 = header_bytes.as_deref().map(sha256);

    // The receipts.
    let mut receipt_digests = BTreeSet::new();
    for (i, part) in bundle.receipts.iter().enumerate() {
        let name = format!("receipt {}", i + 1);
        match receipt(part, &keyring, &message, header_sha256) {
            Ok((r, d)) => {
                receipt_digests.insert(d);
                report.push(Check::pass(
                    &name,
                    format!("{} by {}, signature valid", r.kind, r.issuer_node),
                ));
                let mut text = format!(
                    "receipt {:<13} signed by {}",
                    r.kind.as_str(),
                    r.issuer_node
                );
                if r.attempt > 0 {
                    text.push_str(&format!(", attempt {}", r.attempt));
                }
                if !r.reason.is_empty() {
                    text.push_str(&format!(", reason: {}", r.reason));
                }
                report.timeline.push(TimelineItem {
                    time_ms: r.issued_at_ms,
                    order: (1, i as u64),
                    text,
                });
            }
            Err(e) => report.push(Check::fail(&name, e.to_string())),
        }
    }

    // The audit chain segments.
    let mut logged_receipts = BTreeSet::new();
    let mut hashes = std::collections::BTreeMap::new();
    let mut shown = 0;
    for (j, segment) in bundle.audit.segments.iter().enumerate() {
        let first = segment.entries.first().map(|e| e.seq).unwrap_or(0);
        let last = segment.entries.last().map(|e| e.seq).unwrap_or(0);
        let name = format!("audit chain {} (entries {first}-{last})", j + 1);
        match chain(segment, &message) {
            Ok(entries) => {
                for (seq, _, h) in &entries {
                    hashes.insert(*seq, *h);
                }
                let mine: Vec<&AuditEntry> =
                    entries.iter().filter_map(|(_, e, _)| e.as_ref()).collect();
                shown += mine.len();
                for e in &mine {
                    if let Some(d) = e.receipt_sha256 {
                        logged_receipts.insert(d);
                    }
                    report.timeline.push(TimelineItem {
                        time_ms: e.time_ms,
                        order: (2, e.seq),
                        text: format!(
                            "log #{} of {}: {} -> {}{}",
                            e.seq,
                            bundle.audit.node,
                            e.event,
                            e.state,
                            if e.detail.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", e.detail)
                            }
                        ),
                    });
                }
                report.push(Check::pass(
                    &name,
                    format!(
                        "{} entries link, {} about this message",
                        entries.len(),
                        mine.len()
                    ),
                ));
                let head = entries.last().map(|(_, _, h)| (last, *h));
                let cname = format!("checkpoint {} (entry {last})", j + 1);
                report.push(Check::from(
                    &cname,
                    checkpoint(&segment.checkpoint, &keyring, &bundle.audit.node, head),
                ));
            }
            Err(e) => report.push(Check::fail(&name, e.to_string())),
        }
    }
    report.push(Check::from(
        "receipts logged",
        if shown == 0 {
            Err(Error::invalid(
                "the bundle shows no audit entry about the message",
            ))
        } else if let Some(missing) = receipt_digests.difference(&logged_receipts).next() {
            Err(Error::invalid(format!(
                "receipt {} is in the bundle but no audit entry records it",
                hex::encode(missing)
            )))
        } else if let Some(missing) = logged_receipts.difference(&receipt_digests).next() {
            Err(Error::invalid(format!(
                "an audit entry records receipt {}, which the bundle lacks",
                hex::encode(missing)
            )))
        } else {
            Ok(format!(
                "each of the {} receipts is recorded in the audit log",
                receipt_digests.len()
            ))
        },
    ));
    if let Some(witnessed) = witnessed {
        report.push(Check::from(
            "witnessed checkpoints",
            against_witnesses(&keyring, &bundle.audit.node, witnessed, |seq| {
                hashes.get(&seq).copied()
            }),
        ));
    }
    report.timeline.sort_by_key(|t| (t.time_ms, t.order));
    report
}

fn keys(bundle: &Bundle, trust: Option<&Keyring>) -> Result<(Keyring, String)> {
    let mut own = Keyring::default();
    let mut seen = BTreeSet::new();
    for k in &bundle.keys {
        let bytes = b64(&format!("key {} of {}", k.key_id, k.node), &k.public_key)?;
        let entry = PublicKeyEntry::parse(&k.key_id, &B64.encode(bytes))?;
        if !seen.insert((k.node.clone(), k.key_id.clone())) {
            return Err(Error::invalid(format!(
                "key {} of {} is listed twice",
                k.key_id, k.node
            )));
        }
        if let Some(trust) = trust {
            let listed = trust.entry(&k.node, &k.key_id)?;
            if listed.key != entry.key {
                return Err(Error::PermissionDenied(format!(
                    "key {} of {} in the bundle differs from the trust list's",
                    k.key_id, k.node
                )));
            }
        }
        own.insert(&k.node, entry);
    }
    match trust {
        Some(t) => Ok((
            t.clone(),
            format!("{} keys, each the trust list's", bundle.keys.len()),
        )),
        None => Ok((
            own,
            format!(
                "{} keys taken from the bundle itself (pass --trust federation.toml to check them)",
                bundle.keys.len()
            ),
        )),
    }
}

fn envelope(
    bundle: &Bundle,
    keyring: &Keyring,
    message: &MessageRef,
) -> Result<(Vec<u8>, EnvelopeHeader)> {
    let header = b64("envelope header", &bundle.envelope.header)?;
    let signature = b64("envelope signature", &bundle.envelope.signature)?;
    let batch = (bundle.envelope.batch.as_ref())
        .map(|b| b.proof("envelope"))
        .transpose()?;
    let h = keyring.verify_envelope_header(&header, &signature, batch.as_ref())?;
    if &h.message_ref() != message {
        return Err(Error::invalid(format!(
            "the signed header is about {}, the bundle says {message}",
            h.message_ref()
        )));
    }
    same(
        "header fields",
        &bundle.envelope.header_fields,
        header_fields(&h),
    )?;
    Ok((header, h))
}

fn payload(bundle: &Bundle, header: &EnvelopeHeader) -> Result<String> {
    let stated = digest("payload_sha256", &bundle.envelope.payload_sha256)?;
    if stated != header.payload_sha256 {
        return Err(Error::invalid(
            "payload_sha256 differs from the digest in the signed header",
        ));
    }
    match &bundle.envelope.payload {
        None => Ok(format!(
            "{} ({} bytes; payload not included)",
            bundle.envelope.payload_sha256, header.payload_length
        )),
        Some(p) => {
            let p = b64("payload", p)?;
            if sha256(&p) != header.payload_sha256 || p.len() as u64 != header.payload_length {
                return Err(Error::invalid(
                    "the included payload does not match the signed digest and length",
                ));
            }
            Ok(format!(
                "{} ({} bytes; payload included and matches)",
                bundle.envelope.payload_sha256, header.payload_length
            ))
        }
    }
}

fn receipt(
    part: &ReceiptPart,
    keyring: &Keyring,
    message: &MessageRef,
    header_sha256: Option<[u8; 32]>,
) -> Result<(Receipt, [u8; 32])> {
    let batch = part
        .batch
        .as_ref()
        .map(|b| b.proof("receipt"))
        .transpose()?;
    let signed = SignedReceipt {
        receipt: b64("receipt", &part.receipt)?,
        signature: b64("receipt signature", &part.signature)?,
        batch,
    };
    let r = keyring.verify_receipt(&signed)?;
    if &r.message_ref() != message {
        return Err(Error::invalid(format!(
            "receipt is about {}, not {message}",
            r.message_ref()
        )));
    }
    if Some(r.header_sha256) != header_sha256 {
        return Err(Error::invalid(
            "receipt names another envelope (header digest differs)",
        ));
    }
    same("receipt fields", &part.fields, receipt_fields(&r))?;
    Ok((r, sha256(&signed.receipt)))
}

type Linked = (u64, Option<AuditEntry>, [u8; 32]);

/// Checks one segment's links; returns each entry (when shown) and hash.
fn chain(segment: &Segment, message: &MessageRef) -> Result<Vec<Linked>> {
    if segment.entries.is_empty() {
        return Err(Error::invalid("segment has no entries"));
    }
    let mut out: Vec<Linked> = Vec::new();
    for part in &segment.entries {
        let at = format!("entry #{}", part.seq);
        let content_sha256 = digest(&format!("{at} content_sha256"), &part.content_sha256)?;
        let prev_hash = digest(&format!("{at} prev_hash"), &part.prev_hash)?;
        let hash = digest(&format!("{at} hash"), &part.hash)?;
        if let Some((_, _, prev)) = out.last() {
            let expected = out.len() as u64 + segment.entries[0].seq;
            if part.seq != expected {
                return Err(Error::invalid(format!(
                    "{at} follows #{}; entries must be consecutive",
                    expected - 1
                )));
            }
            if prev_hash != *prev {
                return Err(Error::invalid(format!(
                    "{at} does not link to entry #{}: its prev_hash differs",
                    part.seq - 1
                )));
            }
        }
        let entry = match &part.content {
            None => None,
            Some(c) => {
                let e = AuditEntry {
                    seq: part.seq,
                    time_ms: c.time_ms,
                    event: AuditEvent::parse(&c.event)?,
                    message: MessageRef {
                        sender_node: c.sender_node.clone(),
                        message_id: c.message_id.clone(),
                    },
                    state: c.state.clone(),
                    detail: c.detail.clone(),
                    receipt_sha256: c
                        .receipt_sha256
                        .as_deref()
                        .map(|d| digest(&format!("{at} receipt_sha256"), d))
                        .transpose()?,
                    prev_hash,
                };
                if &e.message != message {
                    return Err(Error::invalid(format!(
                        "{at} is shown but is about {}, not {message}",
                        e.message
                    )));
                }
                if sha256(&e.content()) != content_sha256 {
                    return Err(Error::invalid(format!(
                        "{at}: its content does not match content_sha256"
                    )));
                }
                Some(e)
            }
        };
        if AuditEntry::link(part.seq, &content_sha256, &prev_hash) != hash {
            return Err(Error::invalid(format!(
                "{at}: hash does not match the entry"
            )));
        }
        out.push((part.seq, entry, hash));
    }
    Ok(out)
}

fn checkpoint(
    part: &CheckpointPart,
    keyring: &Keyring,
    node: &str,
    head: Option<(u64, [u8; 32])>,
) -> Result<String> {
    let signed = SignedCheckpoint {
        checkpoint: b64("checkpoint", &part.checkpoint)?,
        signature: b64("checkpoint signature", &part.signature)?,
    };
    let c = keyring.verify_checkpoint(&signed)?;
    same("checkpoint fields", &part.fields, checkpoint_fields(&c))?;
    if c.node != node {
        return Err(Error::invalid(format!(
            "checkpoint is of node {}, the chain is {node}'s",
            c.node
        )));
    }
    match head {
        Some((seq, hash)) if seq == c.seq && hash == c.head_hash => Ok(format!(
            "signed by {} at {}: entry {} has hash {}",
            c.node,
            crate::format_time(c.time_ms),
            c.seq,
            hex::encode(&c.head_hash[..8])
        )),
        _ => Err(Error::invalid(format!(
            "checkpoint names entry {} with hash {}, which is not the segment's last entry",
            c.seq,
            hex::encode(&c.head_hash[..8])
        ))),
    }
}

/// Compares checkpoints of `node` that peers witnessed with the chain's
/// hashes (`hash_at(seq)`, `None` if the entry is not at hand).
pub(super) fn against_witnesses(
    keyring: &Keyring,
    node: &str,
    witnessed: &[SignedCheckpoint],
    hash_at: impl Fn(u64) -> Option<[u8; 32]>,
) -> Result<String> {
    let (mut agreed, mut outside) = (0, 0);
    for w in witnessed {
        // Checkpoints of other nodes in the same file are not this check's
        // business (and their keys may not be at hand).
        if w.open()?.node != node {
            continue;
        }
        let c = keyring.verify_checkpoint(w)?;
        match hash_at(c.seq) {
            None => outside += 1,
            Some(h) if h == c.head_hash => agreed += 1,
            Some(h) => {
                return Err(Error::invalid(format!(
                    "contradicted by the checkpoint {node} signed at {} and its peers witnessed: \
                     entry #{} had hash {}, the chain now says {}; the history was rewritten",
                    crate::format_time(c.time_ms),
                    c.seq,
                    hex::encode(c.head_hash),
                    hex::encode(h)
                )));
            }
        }
    }
    Ok(if agreed == 0 {
        format!(
            "no witnessed checkpoint of {node} concerns these entries yet ({outside} concern \
             others); witnessing lags signing by a few seconds"
        )
    } else {
        format!("{agreed} witnessed checkpoints agree, {outside} concern entries not at hand")
    })
}
