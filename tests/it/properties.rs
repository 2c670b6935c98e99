//! Property tests of the signed encodings: for any header, payload and
//! receipt, signing then verifying succeeds; flipping any single bit of
//! the header, payload or signature makes verification fail; decoding
//! arbitrary bytes never panics; checking a batch gives each item the
//! outcome it gets alone; a signature whose R carries a small-order
//! component is refused alone and in any batch. Receipts signed as a
//! batch (one signature over a Merkle root) verify each on its own, and
//! any change to a receipt, its proof or the root breaks it; so do
//! envelope headers signed as a batch, whose proofs vouch for nothing in
//! another batch or as a receipt's.

use crate::forge::{passes_cofactored, seed_of, torsion_signature};
use bytes::Bytes;
use cluebridge::crypto::merkle;
use cluebridge::crypto::signing::{
    ENVELOPE_BATCH_DOMAIN, ENVELOPE_DOMAIN, MAX_LEAVES, RECEIPT_BATCH_DOMAIN, RECEIPT_DOMAIN,
};
use cluebridge::crypto::tls::{FederationCa, verify_client};
use cluebridge::crypto::{Keyring, NodeSigner, PublicKeyEntry};
use cluebridge::model::{
    BatchProof, EnvelopeHeader, MessageKind, Receipt, ReceiptKind, SignedEnvelope, SignedReceipt,
    sha256,
};
use proptest::prelude::*;

const ID: &str = "[A-Za-z0-9._:-]{1,40}";

fn kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        Just(MessageKind::ClueTransfer),
        Just(MessageKind::RectificationSuggestion),
        Just(MessageKind::Feedback),
    ]
}

fn receipt_kind() -> impl Strategy<Value = ReceiptKind> {
    prop_oneof![
        Just(ReceiptKind::Accepted),
        Just(ReceiptKind::Delivered),
        Just(ReceiptKind::Acknowledged),
        Just(ReceiptKind::Rejected),
        Just(ReceiptKind::DeadLettered),
        Just(ReceiptKind::Expired),
    ]
}

/// A header from `node`, signed with key `node-k1`, over `payload`.
fn header(
    node: &'static str,
    payload: Vec<u8>,
) -> impl Strategy<Value = (EnvelopeHeader, Vec<u8>)> {
    (
        (ID, kind(), ID, ID, "\\PC{0,40}", ID),
        (
            "\\PC{0,120}",
            "[a-z/+.-]{0,40}",
            0u64..=4_000_000_000_000,
            0u64..=1_000_000_000,
        ),
    )
        .prop_map(
            move |((id, kind, principal, to, case, corr), (subject, ct, created, ttl))| {
                let h = EnvelopeHeader {
                    message_id: id,
                    kind,
                    sender_node: node.into(),
                    sender_principal: principal,
                    recipient_node: to,
                    case_reference: case,
                    correlation_id: corr,
                    subject,
                    content_type: ct,
                    payload_sha256: sha256(&payload),
                    payload_length: payload.len() as u64,
                    created_at_ms: created,
                    expires_at_ms: created + ttl,
                    reply_by_ms: 0,
                    signing_key_id: format!("{node}-k1"),
                };
                (h, payload.clone())
            },
        )
}

fn envelope() -> impl Strategy<Value = (EnvelopeHeader, Vec<u8>)> {
    proptest::collection::vec(any::<u8>(), 0..2048).prop_flat_map(|p| header("discipline", p))
}

fn receipt() -> impl Strategy<Value = Receipt> {
    (
        ID,
        ID,
        receipt_kind(),
        0u64..=4_000_000_000_000,
        "\\PC{0,80}",
        any::<[u8; 32]>(),
        0u32..10,
    )
        .prop_map(|(id, sender, kind, at, reason, digest, attempt)| Receipt {
            message_id: id,
            sender_node: sender,
            kind,
            issuer_node: "discipline".into(),
            issued_at_ms: at,
            reason,
            header_sha256: digest,
            signing_key_id: "discipline-k1".into(),
            attempt,
        })
}

/// Receipt `i` of a run: each its own message.
fn numbered_receipt(i: usize) -> Receipt {
    Receipt {
        message_id: format!("m-{i}"),
        sender_node: "discipline".into(),
        kind: ReceiptKind::Delivered,
        issuer_node: "discipline".into(),
        issued_at_ms: 1_700_000_000_000,
        reason: String::new(),
        header_sha256: [i as u8; 32],
        signing_key_id: "discipline-k1".into(),
        attempt: 1,
    }
}

fn signer_and_keyring() -> (NodeSigner, Keyring) {
    let signer = NodeSigner::generate("discipline", "discipline-k1");
    let mut keyring = Keyring::default();
    keyring.insert(
        "discipline",
        PublicKeyEntry::parse("discipline-k1", &signer.public_key_base64()).expect("key"),
    );
    (signer, keyring)
}

/// The bytes a batch signature covers (`domain`, size, root), rebuilt
/// from the proof of `leaf`.
fn root_input(domain: &[u8], leaf: &[u8], proof: &BatchProof) -> Vec<u8> {
    let path: Vec<[u8; 32]> = proof
        .audit_path
        .iter()
        .map(|h| h.as_slice().try_into().expect("32 bytes"))
        .collect();
    let leaf = merkle::leaf_hash(leaf);
    let root =
        merkle::root_from_path(leaf, proof.leaf_index, proof.tree_size, &path).expect("a root");
    [domain, &proof.tree_size.to_be_bytes(), &root].concat()
}

/// The bytes a batch receipt's signature covers.
fn batch_input(signed: &SignedReceipt) -> Vec<u8> {
    let proof = signed.batch.as_ref().expect("a batch proof");
    root_input(RECEIPT_BATCH_DOMAIN, &signed.receipt, proof)
}

/// Envelopes whose headers `signer` signed together (one root).
fn sealed_together(
    signer: &NodeSigner,
    envelopes: &[(EnvelopeHeader, Vec<u8>)],
) -> Vec<SignedEnvelope> {
    let headers: Vec<Bytes> = envelopes.iter().map(|(h, _)| h.encode().into()).collect();
    signer
        .sign_headers(&headers)
        .into_iter()
        .zip(headers)
        .zip(envelopes)
        .map(
            |(((signature, batch), header), (_, payload))| SignedEnvelope {
                header,
                signature: signature.into(),
                payload: payload.clone().into(),
                batch,
            },
        )
        .collect()
}

/// Breaks one `part` of a batch-signed item (its bytes, signature and
/// proof; `domain` the batch's): a flipped bit of the bytes, of the
/// signature or of a path hash, a changed index or size, the proof
/// dropped, or a signature by the same key over a root one bit away.
fn tamper(
    signer: &NodeSigner,
    domain: &[u8],
    (bytes, signature, batch): (&mut Vec<u8>, &mut Vec<u8>, &mut Option<BatchProof>),
    part: usize,
    bit: usize,
) {
    let input = root_input(domain, bytes, batch.as_ref().expect("a batch proof"));
    let proof = batch.as_mut().expect("a batch proof");
    match part {
        0 => flip(bytes, bit),
        1 => flip(signature, bit),
        2 => {
            let k = bit % proof.audit_path.len();
            flip(&mut proof.audit_path[k], bit);
        }
        3 => proof.leaf_index ^= 1 << (bit % 64),
        4 => proof.tree_size ^= 1 << (bit % 64),
        5 => *batch = None,
        _ => {
            let mut other = input;
            let at = domain.len() + 8 + (bit % 256) / 8;
            other[at] ^= 1 << (bit % 8);
            let key = ed25519_dalek::SigningKey::from_bytes(&seed_of(&signer.to_text()));
            *signature = ed25519_dalek::Signer::sign(&key, &other)
                .to_bytes()
                .to_vec();
        }
    }
}

fn flip(bytes: &mut [u8], bit: usize) {
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// [`flip`] for a shared field (an envelope's), which is replaced.
fn flip_shared(bytes: &mut Bytes, bit: usize) {
    let mut copy = bytes.to_vec();
    flip(&mut copy, bit);
    *bytes = copy.into();
}

/// Where item `i` of `n` signed together lands: items are signed in lots
/// of at most `MAX_LEAVES`, as even as can be, in order; its index in its
/// lot and the lot's size (`None`: a lot of one, signed alone).
fn place(i: usize, n: usize) -> Option<(u64, u64)> {
    // Lots as even as can be: the first `n % lots` hold one more.
    let lots = n.div_ceil(MAX_LEAVES).max(1);
    let (size, longer) = (n / lots, n % lots);
    let in_longer = longer * (size + 1);
    let (index, size) = match i < in_longer {
        true => (i % (size + 1), size + 1),
        false => ((i - in_longer) % size, size),
    };
    (size > 1).then_some((index as u64, size as u64))
}

/// Items signed together never leave one alone in a lot (it would be
/// signed on its own: one signature more, and a receipt asked for with
/// others that carries no proof of being among them).
#[test]
fn receipts_signed_together_share_lots_as_even_as_can_be() {
    let (signer, keyring) = signer_and_keyring();
    for n in [2, 8, 9, 17, 56, 57, 65, 121, 129] {
        let receipts: Vec<Receipt> = (0..n).map(numbered_receipt).collect();
        let signed = signer.sign_receipts(&receipts);
        let sizes: std::collections::BTreeSet<u64> = signed
            .iter()
            .map(|s| s.batch.as_ref().map_or(1, |b| b.tree_size))
            .collect();
        let lots = n.div_ceil(MAX_LEAVES) as u64;
        let even = [n as u64 / lots, (n as u64).div_ceil(lots)];
        assert!(
            sizes.iter().all(|s| even.contains(s) && *s > 1),
            "{n} items: lots of {sizes:?}"
        );
        for (i, (s, r)) in signed.iter().zip(&receipts).enumerate() {
            assert_eq!(&keyring.verify_receipt(s).expect("verifies alone"), r);
            assert_eq!(
                s.batch.as_ref().map(|b| (b.leaf_index, b.tree_size)),
                place(i, n)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_sealed_envelope_verifies_and_any_flipped_bit_breaks_it(
        (h, payload) in envelope(),
        part in 0usize..3,
        bit in any::<usize>(),
    ) {
        let (signer, keyring) = signer_and_keyring();
        let sealed = signer.seal(&h, payload.into());
        prop_assert_eq!(keyring.verify_envelope(&sealed).expect("verifies"), h);
        let mut broken: SignedEnvelope = sealed.clone();
        match part {
            0 => flip_shared(&mut broken.header, bit),
            1 if !broken.payload.is_empty() => flip_shared(&mut broken.payload, bit),
            _ => flip_shared(&mut broken.signature, bit),
        }
        prop_assert!(keyring.verify_envelope(&broken).is_err());
    }

    #[test]
    fn a_signed_receipt_verifies_and_any_flipped_bit_breaks_it(
        r in receipt(),
        in_signature in any::<bool>(),
        bit in any::<usize>(),
    ) {
        let (signer, keyring) = signer_and_keyring();
        let signed = signer.sign_receipt(&r);
        prop_assert_eq!(keyring.verify_receipt(&signed).expect("verifies"), r);
        let mut broken: SignedReceipt = signed.clone();
        if in_signature {
            flip(&mut broken.signature, bit);
        } else {
            flip(&mut broken.receipt, bit);
        }
        prop_assert!(keyring.verify_receipt(&broken).is_err());
    }

    #[test]
    fn a_batch_check_gives_each_receipt_and_envelope_its_own_outcome(
        receipts in proptest::collection::vec(receipt(), 1..6),
        (h, payload) in envelope(),
        broken in proptest::collection::vec(any::<Option<usize>>(), 6),
    ) {
        let (signer, keyring) = signer_and_keyring();
        let mut signed: Vec<SignedReceipt> = receipts.iter().map(|r| signer.sign_receipt(r)).collect();
        let mut envelopes = vec![signer.seal(&h, payload.into()); signed.len()];
        for (i, bit) in broken.iter().take(signed.len()).enumerate() {
            if let Some(bit) = bit {
                flip(&mut signed[i].signature, *bit);
                flip_shared(&mut envelopes[i].signature, *bit);
            }
        }
        let alone: Vec<_> = signed.iter().map(|s| keyring.verify_receipt(s).map_err(|e| e.to_string())).collect();
        let batch: Vec<_> = keyring.verify_receipts(&signed).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        prop_assert_eq!(batch, alone);
        let alone: Vec<_> = envelopes.iter().map(|e| keyring.verify_envelope(e).map_err(|e| e.to_string())).collect();
        let batch: Vec<_> = keyring.verify_envelopes(&envelopes).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        prop_assert_eq!(batch, alone);
    }

    #[test]
    fn torsion_in_r_is_refused_alone_and_in_every_batch(
        receipts in proptest::collection::vec(receipt(), 1..12),
        (h, payload) in envelope(),
        forged in proptest::collection::vec(0usize..8, 12),
    ) {
        // 0 = an honest signature; 1..=7 = R carries EIGHT_TORSION[i],
        // which a batch equation with an even random coefficient cancels
        // (orders 2 and 4 often, order 8 one time in eight).
        let (signer, keyring) = signer_and_keyring();
        let seed = seed_of(&signer.to_text());
        let public = signer.verifying_key().to_bytes();
        let mut signed: Vec<SignedReceipt> = receipts.iter().map(|r| signer.sign_receipt(r)).collect();
        let mut envelopes = vec![signer.seal(&h, payload.into()); signed.len()];
        for (i, &t) in forged.iter().take(signed.len()).enumerate().filter(|(_, t)| **t > 0) {
            let input = [RECEIPT_DOMAIN, &signed[i].receipt].concat();
            signed[i].signature = torsion_signature(&signer, &seed, &input, t);
            prop_assert!(passes_cofactored(&public, &input, &signed[i].signature));
            let input = [ENVELOPE_DOMAIN, &envelopes[i].header].concat();
            envelopes[i].signature = torsion_signature(&signer, &seed, &input, t).into();
            prop_assert!(passes_cofactored(&public, &input, &envelopes[i].signature));
        }
        let receipts_checked = keyring.verify_receipts(&signed);
        let envelopes_checked = keyring.verify_envelopes(&envelopes);
        for (i, (r, e)) in receipts_checked.iter().zip(&envelopes_checked).enumerate() {
            if forged[i] > 0 {
                prop_assert!(r.as_ref().is_err_and(|e| e.to_string().contains("does not verify")));
                prop_assert!(e.as_ref().is_err_and(|e| e.to_string().contains("does not verify")));
                prop_assert!(keyring.verify_receipt(&signed[i]).is_err());
                prop_assert!(keyring.verify_envelope(&envelopes[i]).is_err());
            } else {
                prop_assert!(r.is_ok(), "honest receipt {i} refused: {r:?}");
                prop_assert!(e.is_ok(), "honest envelope {i} refused: {e:?}");
            }
        }
    }

    #[test]
    fn a_batch_of_receipts_verifies_and_any_flipped_bit_breaks_it(
        receipts in proptest::collection::vec(receipt(), 2..24),
        pick: prop::sample::Index,
        part in 0usize..7,
        bit in any::<usize>(),
    ) {
        let (signer, keyring) = signer_and_keyring();
        let signed = signer.sign_receipts(&receipts);
        for (i, (s, r)) in signed.iter().zip(&receipts).enumerate() {
            prop_assert_eq!(&keyring.verify_receipt(s).expect("verifies alone"), r);
            prop_assert_eq!(s.batch.as_ref().map(|b| (b.leaf_index, b.tree_size)), place(i, receipts.len()));
        }
        let i = pick.index(signed.len());
        let mut broken = signed.clone();
        let b = &mut broken[i];
        tamper(&signer, RECEIPT_BATCH_DOMAIN, (&mut b.receipt, &mut b.signature, &mut b.batch), part, bit);
        prop_assert!(keyring.verify_receipt(&broken[i]).is_err());
        // Checked together, each keeps the outcome it gets alone: the
        // broken one shares no verdict with its batch's good root.
        let alone: Vec<_> = broken.iter().map(|s| keyring.verify_receipt(s).map_err(|e| e.to_string())).collect();
        let together: Vec<_> = keyring.verify_receipts(&broken).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        prop_assert_eq!(together, alone);
    }

    #[test]
    fn a_batch_of_envelopes_verifies_and_any_flipped_bit_breaks_it(
        envelopes in proptest::collection::vec(envelope(), 2..16),
        pick: prop::sample::Index,
        part in 0usize..7,
        bit in any::<usize>(),
    ) {
        let (signer, keyring) = signer_and_keyring();
        let sealed = sealed_together(&signer, &envelopes);
        for (i, (s, (h, _))) in sealed.iter().zip(&envelopes).enumerate() {
            prop_assert_eq!(&keyring.verify_envelope(s).expect("verifies alone"), h);
            prop_assert_eq!(s.batch.as_ref().map(|b| (b.leaf_index, b.tree_size)), place(i, envelopes.len()));
            let header = keyring.verify_envelope_header(&s.header, &s.signature, s.batch.as_ref());
            prop_assert_eq!(&header.expect("the header alone"), h);
        }
        let i = pick.index(sealed.len());
        let mut broken = sealed.clone();
        let e = &mut broken[i];
        let (mut header, mut signature) = (e.header.to_vec(), e.signature.to_vec());
        tamper(&signer, ENVELOPE_BATCH_DOMAIN, (&mut header, &mut signature, &mut e.batch), part, bit);
        (e.header, e.signature) = (header.into(), signature.into());
        prop_assert!(keyring.verify_envelope(&broken[i]).is_err());
        let alone: Vec<_> = broken.iter().map(|e| keyring.verify_envelope(e).map_err(|e| e.to_string())).collect();
        let together: Vec<_> = keyring.verify_envelopes(&broken).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        prop_assert_eq!(together, alone);
    }

    #[test]
    fn an_envelope_proof_vouches_for_nothing_in_another_batch_or_as_a_receipt(
        a in proptest::collection::vec(envelope(), 2..8),
        b in proptest::collection::vec(envelope(), 2..8),
        receipts in proptest::collection::vec(receipt(), 2..8),
        pick: prop::sample::Index,
    ) {
        let (signer, keyring) = signer_and_keyring();
        let (sa, sb) = (sealed_together(&signer, &a), sealed_together(&signer, &b));
        let i = pick.index(a.len().min(b.len()));
        prop_assume!(sa[i].header != sb[i].header);
        // A's envelope with B's proof and signature.
        let borrowed = SignedEnvelope { header: sa[i].header.clone(), payload: sa[i].payload.clone(), ..sb[i].clone() };
        prop_assert!(keyring.verify_envelope(&borrowed).is_err());
        // A receipt batch's root signature over the same leaves, presented
        // as an envelope batch's: the domains differ.
        let as_receipts = signer.sign_receipts(&receipts);
        let posing = SignedEnvelope {
            signature: as_receipts[0].signature.clone().into(),
            batch: as_receipts[0].batch.clone(),
            ..sa[0].clone()
        };
        prop_assert!(keyring.verify_envelope(&posing).is_err());
        let together = keyring.verify_envelopes(&[sb[i].clone(), borrowed, posing]);
        prop_assert!(together[0].is_ok() && together[1].is_err() && together[2].is_err());
    }

    #[test]
    fn a_proof_from_one_batch_never_verifies_in_another(
        a in proptest::collection::vec(receipt(), 2..12),
        b in proptest::collection::vec(receipt(), 2..12),
        pick: prop::sample::Index,
    ) {
        let (signer, keyring) = signer_and_keyring();
        let (sa, sb) = (signer.sign_receipts(&a), signer.sign_receipts(&b));
        let i = pick.index(a.len().min(b.len()));
        prop_assume!(sa[i].receipt != sb[i].receipt);
        // A's receipt with B's proof and signature.
        let borrowed = SignedReceipt { receipt: sa[i].receipt.clone(), ..sb[i].clone() };
        prop_assert!(keyring.verify_receipt(&borrowed).is_err());
        // A's receipt and proof with B's signature.
        let resigned = SignedReceipt { signature: sb[i].signature.clone(), ..sa[i].clone() };
        prop_assert!(keyring.verify_receipt(&resigned).is_err());
        // Verified together, B's good root does not vouch for either.
        let together = keyring.verify_receipts(&[sb[i].clone(), borrowed, resigned]);
        prop_assert!(together[0].is_ok() && together[1].is_err() && together[2].is_err());
    }

    #[test]
    fn torsion_in_a_batch_root_signature_is_refused(
        receipts in proptest::collection::vec(receipt(), 2..12),
        torsion in 1usize..8,
    ) {
        let (signer, keyring) = signer_and_keyring();
        let seed = seed_of(&signer.to_text());
        let mut signed = signer.sign_receipts(&receipts);
        let input = batch_input(&signed[0]);
        let forged = torsion_signature(&signer, &seed, &input, torsion);
        prop_assert!(passes_cofactored(&signer.verifying_key().to_bytes(), &input, &forged));
        for s in &mut signed {
            s.signature = forged.clone();
        }
        for r in keyring.verify_receipts(&signed) {
            prop_assert!(r.is_err_and(|e| e.to_string().contains("does not verify")));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = EnvelopeHeader::decode(&bytes);
        let _ = SignedEnvelope::decode(bytes.clone());
        let _ = Receipt::decode(&bytes);
        let _ = SignedReceipt::decode(&bytes);
        let (_, keyring) = signer_and_keyring();
        if let Ok(e) = SignedEnvelope::decode(bytes.clone()) {
            let _ = keyring.verify_envelope(&e);
        }
        if let Ok(r) = SignedReceipt::decode(&bytes) {
            let _ = keyring.verify_receipt(&r);
        }
    }

    #[test]
    fn arbitrary_certificate_bytes_are_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        prop_assert!(verify_client(ca(), &bytes, 0).is_err());
    }
}

fn ca() -> &'static FederationCa {
    static CA: std::sync::OnceLock<FederationCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let ca = cluebridge::crypto::certs::Ca::generate("p", 1).expect("ca");
        FederationCa::from_pem(&ca.cert.cert_pem).expect("ca")
    })
}
