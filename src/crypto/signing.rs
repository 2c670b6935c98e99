//! Ed25519 signatures over the exact bytes that travel, with one
//! domain-separation prefix per object type. Verification never re-encodes.

use super::merkle;
use crate::error::{Error, Result};
use crate::model::{
    BatchProof, Checkpoint, EnvelopeHeader, Receipt, SignedCheckpoint, SignedEnvelope,
    SignedReceipt,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::collections::{HashMap, HashSet};

/// Prefix of every envelope-header signature input.
pub const ENVELOPE_DOMAIN: &[u8] = b"cluebridge/v1/envelope-header\n";
/// Prefix of every receipt signature input.
pub const RECEIPT_DOMAIN: &[u8] = b"cluebridge/v1/receipt\n";
/// Prefix of every receipt-batch signature input (tree size and root).
pub const RECEIPT_BATCH_DOMAIN: &[u8] = b"cluebridge/v1/receipt-batch\n";
/// Prefix of every envelope-batch signature input (tree size and root).
pub const ENVELOPE_BATCH_DOMAIN: &[u8] = b"cluebridge/v1/envelope-batch\n";
/// Prefix of every audit checkpoint signature input.
pub const CHECKPOINT_DOMAIN: &[u8] = b"cluebridge/v1/checkpoint\n";

fn signing_input(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(domain.len() + bytes.len());
    input.extend_from_slice(domain);
    input.extend_from_slice(bytes);
    input
}

/// What a batch's signature covers: its size and Merkle root.
fn batch_input(domain: &[u8], tree_size: u64, root: &[u8; 32]) -> Vec<u8> {
    let mut input = Vec::with_capacity(domain.len() + 8 + 32);
    input.extend_from_slice(domain);
    input.extend_from_slice(&tree_size.to_be_bytes());
    input.extend_from_slice(root);
    input
}

/// The two domains of a kind of signed object: alone, and in a batch.
#[derive(Clone, Copy)]
struct Domains {
    what: &'static str,
    single: &'static [u8],
    batch: &'static [u8],
}

const RECEIPTS: Domains = Domains {
    what: "receipt",
    single: RECEIPT_DOMAIN,
    batch: RECEIPT_BATCH_DOMAIN,
};

const ENVELOPES: Domains = Domains {
    what: "envelope header",
    single: ENVELOPE_DOMAIN,
    batch: ENVELOPE_BATCH_DOMAIN,
};

/// The bytes a signature over `bytes` covers: the bytes themselves, or
/// the root the batch proof leads to.
fn signed_input(domains: Domains, bytes: &[u8], proof: Option<&BatchProof>) -> Result<Vec<u8>> {
    let Some(proof) = proof else {
        return Ok(signing_input(domains.single, bytes));
    };
    let path = proof
        .audit_path
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice()).map_err(|_| {
                Error::invalid(format!(
                    "{} batch proof has a {}-byte hash; each is 32",
                    domains.what,
                    h.len()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let leaf = merkle::leaf_hash(bytes);
    let root = merkle::root_from_path(leaf, proof.leaf_index, proof.tree_size, &path)
        .map_err(|e| Error::invalid(format!("{} batch proof: {e}", domains.what)))?;
    Ok(batch_input(domains.batch, proof.tree_size, &root))
}

/// The most receipts or headers signed under one root. A proof then holds
/// at most three hashes, and they go with every envelope and receipt (on
/// the wire, in both nodes' journals, in bundles): lots of 64 would add
/// 102 bytes to each, and in two-node runs a signature (and its check at
/// the peer) per 8 items cost no measurable throughput over one per 64.
pub const MAX_LEAVES: usize = 8;

/// A node's private signing key with its id in the trust list.
pub struct NodeSigner {
    node_id: String,
    key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("NodeSigner")
            .field("node_id", &self.node_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl NodeSigner {
    pub fn new(node_id: impl Into<String>, key_id: impl Into<String>, key: SigningKey) -> Self {
        NodeSigner {
            node_id: node_id.into(),
            key_id: key_id.into(),
            key,
        }
    }

    /// Reads a key from its text form: the base64 of the 32-byte seed.
    pub fn from_text(node_id: &str, key_id: &str, text: &str) -> Result<Self> {
        let seed = B64
            .decode(text.trim())
            .map_err(|e| Error::invalid(format!("signing key is not base64: {e}")))?;
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "signing key is {} bytes; an Ed25519 seed is 32",
                seed.len()
            ))
        })?;
        Ok(Self::new(node_id, key_id, SigningKey::from_bytes(&seed)))
    }

    pub fn generate(node_id: &str, key_id: &str) -> Self {
        Self::new(
            node_id,
            key_id,
            SigningKey::generate(&mut rand::rngs::OsRng),
        )
    }

    /// The text form written to key files.
    pub fn to_text(&self) -> String {
        format!("{}\n", B64.encode(self.key.to_bytes()))
    }

    pub fn public_key_base64(&self) -> String {
        B64.encode(self.key.verifying_key().to_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encodes and signs a header; the header's `signing_key_id` must be
    /// this key's id.
    pub fn seal(&self, header: &EnvelopeHeader, payload: bytes::Bytes) -> SignedEnvelope {
        debug_assert_eq!(header.signing_key_id, self.key_id);
        let bytes = header.encode();
        let signature = self.key.sign(&signing_input(ENVELOPE_DOMAIN, &bytes));
        SignedEnvelope {
            header: bytes.into(),
            signature: signature.to_bytes().to_vec().into(),
            payload,
            batch: None,
        }
    }

    /// Encodes and signs a receipt issued by this node.
    pub fn sign_receipt(&self, receipt: &Receipt) -> SignedReceipt {
        debug_assert_eq!(receipt.issuer_node, self.node_id);
        let bytes = receipt.encode();
        let signature = self.key.sign(&signing_input(RECEIPT_DOMAIN, &bytes));
        SignedReceipt::single(bytes, signature.to_bytes().to_vec())
    }

    /// Encodes and signs receipts issued by this node together: one
    /// signature over the root of their Merkle tree, each receipt with
    /// its audit path. One receipt is signed alone.
    pub fn sign_receipts(&self, receipts: &[Receipt]) -> Vec<SignedReceipt> {
        let encoded: Vec<Vec<u8>> = receipts
            .iter()
            .map(|r| {
                debug_assert_eq!(r.issuer_node, self.node_id);
                r.encode()
            })
            .collect();
        self.sign_together(RECEIPTS, &encoded)
            .into_iter()
            .zip(encoded)
            .map(|((signature, batch), receipt)| SignedReceipt {
                receipt,
                signature,
                batch,
            })
            .collect()
    }

    /// Signs encoded headers accepted together: one signature over the
    /// root of their Merkle tree, each with its audit path (one header is
    /// signed alone). Returns each header's signature and proof.
    pub fn sign_headers(&self, headers: &[bytes::Bytes]) -> Vec<(Vec<u8>, Option<BatchProof>)> {
        self.sign_together(ENVELOPES, headers)
    }

    /// Each item's signature and batch proof: the items are split into
    /// lots of at most [`MAX_LEAVES`], as even as can be, each signed
    /// alone (one item) or with one signature over its Merkle root.
    fn sign_together<B: AsRef<[u8]>>(
        &self,
        domains: Domains,
        items: &[B],
    ) -> Vec<(Vec<u8>, Option<BatchProof>)> {
        // The first `longer` lots take one item more: no lot is left with
        // a lone item (57 items make lots of 8 and 7, not seven of 8 and
        // one of 1).
        let lots = items.len().div_ceil(MAX_LEAVES).max(1);
        let (size, longer) = (items.len() / lots, items.len() % lots);
        let mut signed = Vec::with_capacity(items.len());
        let mut start = 0;
        for lot in 0..lots {
            let end = start + size + usize::from(lot < longer);
            signed.extend(self.sign_lot(domains, &items[start..end]));
            start = end;
        }
        signed
    }

    fn sign_lot<B: AsRef<[u8]>>(
        &self,
        domains: Domains,
        items: &[B],
    ) -> Vec<(Vec<u8>, Option<BatchProof>)> {
        if items.len() < 2 {
            return items
                .iter()
                .map(|bytes| {
                    let input = signing_input(domains.single, bytes.as_ref());
                    (self.key.sign(&input).to_bytes().to_vec(), None)
                })
                .collect();
        }
        let tree = merkle::Tree::new(
            items
                .iter()
                .map(|b| merkle::leaf_hash(b.as_ref()))
                .collect(),
        );
        let signature = self
            .key
            .sign(&batch_input(domains.batch, tree.size(), &tree.root()))
            .to_bytes()
            .to_vec();
        (0..items.len())
            .map(|i| {
                let proof = BatchProof {
                    leaf_index: i as u64,
                    tree_size: tree.size(),
                    audit_path: tree.audit_path(i).iter().map(|h| h.to_vec()).collect(),
                };
                (signature.clone(), Some(proof))
            })
            .collect()
    }

    /// Encodes and signs a checkpoint of this node's audit chain.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> SignedCheckpoint {
        debug_assert_eq!(checkpoint.node, self.node_id);
        let bytes = checkpoint.encode();
        let signature = self.key.sign(&signing_input(CHECKPOINT_DOMAIN, &bytes));
        SignedCheckpoint {
            checkpoint: bytes,
            signature: signature.to_bytes().to_vec(),
        }
    }
}

/// One public signing key of a node, as listed in the trust list.
#[derive(Clone, Debug)]
pub struct PublicKeyEntry {
    pub key_id: String,
    pub key: VerifyingKey,
    /// The key may sign objects created at or after this instant (Unix ms).
    pub not_before_ms: Option<u64>,
    /// The key may sign objects created at or before this instant (Unix ms).
    pub not_after_ms: Option<u64>,
}

impl PublicKeyEntry {
    pub fn parse(key_id: &str, base64_key: &str) -> Result<Self> {
        let bytes = B64
            .decode(base64_key.trim())
            .map_err(|e| Error::invalid(format!("public key {key_id} is not base64: {e}")))?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "public key {key_id} is {} bytes; an Ed25519 public key is 32",
                bytes.len()
            ))
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| {
            Error::invalid(format!("public key {key_id} is not a valid point: {e}"))
        })?;
        if key.is_weak() {
            // A small-order key would let one signature verify for many
            // messages; `verify_strict` refuses such keys too, so the
            // trust list refuses them up front with a clear message.
            return Err(Error::invalid(format!(
                "public key {key_id} is a weak (small-order) point"
            )));
        }
        Ok(PublicKeyEntry {
            key_id: key_id.to_string(),
            key,
            not_before_ms: None,
            not_after_ms: None,
        })
    }

    fn valid_at(&self, at_ms: u64) -> bool {
        self.not_before_ms.is_none_or(|nb| at_ms >= nb)
            && self.not_after_ms.is_none_or(|na| at_ms <= na)
    }
}

/// Signed bytes with the signer's claims about who signed them and when.
#[derive(Clone, Copy)]
struct Signed<'a> {
    node_id: &'a str,
    key_id: &'a str,
    at_ms: u64,
    bytes: &'a [u8],
    signature: &'a [u8],
}

fn strict(
    what: &str,
    signed: &Signed<'_>,
    key: VerifyingKey,
    input: &[u8],
    signature: &Signature,
) -> Result<()> {
    key.verify_strict(input, signature).map_err(|_| {
        Error::PermissionDenied(format!(
            "{what} signature does not verify with key {:?} of node {:?}",
            signed.key_id, signed.node_id
        ))
    })
}

/// The public signing keys of every node of the federation.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    nodes: HashMap<String, Vec<PublicKeyEntry>>,
}

/// An envelope's header as decoded, and whether the envelope's signature
/// and payload check out.
#[derive(Debug)]
pub struct OpenedEnvelope {
    pub header: EnvelopeHeader,
    pub verified: Result<()>,
}

impl Keyring {
    pub fn insert(&mut self, node_id: &str, entry: PublicKeyEntry) {
        self.nodes
            .entry(node_id.to_string())
            .or_default()
            .push(entry);
    }

    /// The trust list's entry for key `key_id` of `node_id`.
    pub fn entry(&self, node_id: &str, key_id: &str) -> Result<&PublicKeyEntry> {
        let keys = self.nodes.get(node_id).ok_or_else(|| {
            Error::PermissionDenied(format!(
                "node {node_id:?} is not in the federation trust list"
            ))
        })?;
        keys.iter().find(|k| k.key_id == key_id).ok_or_else(|| {
            Error::PermissionDenied(format!(
                "node {node_id:?} has no signing key with id {key_id:?} in the trust list"
            ))
        })
    }

    fn check(&self, what: &str, signed: Signed<'_>, domain: &[u8]) -> Result<()> {
        let (key, signature) = self.prepare(what, &signed)?;
        strict(
            what,
            &signed,
            key,
            &signing_input(domain, signed.bytes),
            &signature,
        )
    }

    /// The key and parsed signature for `signed`, after the checks that
    /// need no curve arithmetic: known key, validity window, length.
    fn prepare(&self, what: &str, signed: &Signed<'_>) -> Result<(VerifyingKey, Signature)> {
        let Signed {
            node_id,
            key_id,
            at_ms,
            signature,
            ..
        } = *signed;
        let entry = self.entry(node_id, key_id)?;
        if !entry.valid_at(at_ms) {
            return Err(Error::PermissionDenied(format!(
                "{what} was signed with key {key_id:?} of {node_id:?} outside that key's validity window"
            )));
        }
        let signature = Signature::from_slice(signature).map_err(|_| {
            Error::invalid(format!(
                "{what} signature is {} bytes; an Ed25519 signature is 64",
                signature.len()
            ))
        })?;
        Ok((entry.key, signature))
    }

    /// Checks `signed`'s signature over `bytes` or over the root its
    /// batch proof leads to, with `verify_strict`; a batch root already in
    /// `roots` (the key, the signed root and the signature, which
    /// `verify_strict` passed) is not checked again, and each root checked
    /// is added.
    ///
    /// No batch equation is used on purpose: a random-linear-combination
    /// batch check passes a signature whose `R` carries a small-order
    /// (torsion) component whenever the random coefficient cancels it,
    /// which `verify_strict` refuses. A node that took such an object
    /// would hold evidence that fails every strict verifier, its own
    /// `verify` included; so whatever a node accepts must pass the same
    /// check an auditor runs offline.
    fn check_proven(
        &self,
        domains: Domains,
        signed: &Signed<'_>,
        proof: Option<&BatchProof>,
        roots: &mut HashSet<Vec<u8>>,
    ) -> Result<()> {
        let input = signed_input(domains, signed.bytes, proof)?;
        let (key, signature) = self.prepare(domains.what, signed)?;
        if proof.is_none() {
            return strict(domains.what, signed, key, &input, &signature);
        }
        let memo = [key.as_bytes().as_slice(), &signature.to_bytes(), &input].concat();
        if !roots.contains(&memo) {
            let what = format!("{} batch", domains.what);
            strict(&what, signed, key, &input, &signature)?;
            roots.insert(memo);
        }
        Ok(())
    }

    /// Checks the sender node's signature over the header bytes as they
    /// are (or over its batch's root), then the payload against the
    /// signed digest. Returns the header.
    pub fn verify_envelope(&self, envelope: &SignedEnvelope) -> Result<EnvelopeHeader> {
        let mut one = self.verify_envelopes(std::slice::from_ref(envelope));
        one.pop()
            .unwrap_or_else(|| Err(Error::invalid("no envelope to verify")))
    }

    /// [`Keyring::verify_envelope`] for a batch: each envelope gets the
    /// outcome it would get alone, and a batch root that several of them
    /// share is checked once.
    pub fn verify_envelopes(&self, envelopes: &[SignedEnvelope]) -> Vec<Result<EnvelopeHeader>> {
        self.open_envelopes(envelopes)
            .into_iter()
            .map(|opened| opened.and_then(|o| o.verified.map(|()| o.header)))
            .collect()
    }

    /// Each envelope's header, decoded once, with the outcome of its
    /// signature and payload checks (as [`Keyring::verify_envelopes`]):
    /// a receiving node says what is wrong with an envelope's addressing
    /// before what is wrong with its signature. `Err` when the header
    /// bytes do not decode.
    pub fn open_envelopes(&self, envelopes: &[SignedEnvelope]) -> Vec<Result<OpenedEnvelope>> {
        let mut roots = HashSet::new();
        envelopes
            .iter()
            .map(|e| {
                let header = EnvelopeHeader::decode(&e.header)?;
                let verified = self
                    .check_header(
                        &e.header,
                        &header,
                        &e.signature,
                        e.batch.as_ref(),
                        &mut roots,
                    )
                    .and_then(|()| e.check_payload(&header));
                Ok(OpenedEnvelope { header, verified })
            })
            .collect()
    }

    /// Checks the sender node's signature over header bytes as they are
    /// (or over its batch's root), without the payload (a receipt bundle
    /// carries only its digest).
    pub fn verify_envelope_header(
        &self,
        header: &[u8],
        signature: &[u8],
        batch: Option<&BatchProof>,
    ) -> Result<EnvelopeHeader> {
        self.verify_header_once(header, signature, batch, &mut HashSet::new())
    }

    fn verify_header_once(
        &self,
        header: &[u8],
        signature: &[u8],
        batch: Option<&BatchProof>,
        roots: &mut HashSet<Vec<u8>>,
    ) -> Result<EnvelopeHeader> {
        let h = EnvelopeHeader::decode(header)?;
        self.check_header(header, &h, signature, batch, roots)?;
        Ok(h)
    }

    /// Checks the signature over `bytes`, whose decoded header is `h`.
    fn check_header(
        &self,
        bytes: &[u8],
        h: &EnvelopeHeader,
        signature: &[u8],
        batch: Option<&BatchProof>,
        roots: &mut HashSet<Vec<u8>>,
    ) -> Result<()> {
        let signed = Signed {
            node_id: &h.sender_node,
            key_id: &h.signing_key_id,
            at_ms: h.created_at_ms,
            bytes,
            signature,
        };
        self.check_proven(ENVELOPES, &signed, batch, roots)
    }

    /// Checks the issuer's signature over the receipt bytes as they are,
    /// or over the root its batch proof leads to.
    pub fn verify_receipt(&self, receipt: &SignedReceipt) -> Result<Receipt> {
        self.verify_receipt_once(receipt, &mut HashSet::new())
    }

    /// [`Keyring::verify_receipt`] for a batch: each receipt gets the
    /// outcome it would get alone, and a batch root that several of them
    /// share is checked once.
    pub fn verify_receipts(&self, receipts: &[SignedReceipt]) -> Vec<Result<Receipt>> {
        let mut roots = HashSet::new();
        receipts
            .iter()
            .map(|r| self.verify_receipt_once(r, &mut roots))
            .collect()
    }

    fn verify_receipt_once(
        &self,
        receipt: &SignedReceipt,
        roots: &mut HashSet<Vec<u8>>,
    ) -> Result<Receipt> {
        let r = Receipt::decode(&receipt.receipt)?;
        let signed = Signed {
            node_id: &r.issuer_node,
            key_id: &r.signing_key_id,
            at_ms: r.issued_at_ms,
            bytes: &receipt.receipt,
            signature: &receipt.signature,
        };
        self.check_proven(RECEIPTS, &signed, receipt.batch.as_ref(), roots)?;
        Ok(r)
    }

    /// Checks the node's signature over the checkpoint bytes as they are.
    pub fn verify_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<Checkpoint> {
        let c = Checkpoint::decode(&checkpoint.checkpoint)?;
        let signed = Signed {
            node_id: &c.node,
            key_id: &c.signing_key_id,
            at_ms: c.time_ms,
            bytes: &checkpoint.checkpoint,
            signature: &checkpoint.signature,
        };
        self.check("checkpoint", signed, CHECKPOINT_DOMAIN)?;
        Ok(c)
    }
}

impl Keyring {
    /// The public key `key_id` of `node_id`, if the trust list has it.
    pub fn public_key(&self, node_id: &str, key_id: &str) -> Option<VerifyingKey> {
        self.entry(node_id, key_id).ok().map(|k| k.key)
    }
}
