//! Receipts signed as a batch, as an auditor meets them: a node that takes
//! several envelopes in one `Deliver` signs their `delivered` receipts
//! under one Merkle root; the sender's bundle carries each receipt's proof
//! and verifies offline with the federation's public keys alone, by
//! `cluebridge verify` and by the rules `envelope.proto` documents, run
//! here with SHA-256 and Ed25519 and nothing of cluebridge's.

use crate::audit::{audited, bundle_of};
use crate::harness::*;
use cluebridge::audit::bundle;
use cluebridge::model::{MessageKind, SentState};
use sha2::{Digest, Sha256};

const MESSAGES: usize = 5;

/// A change to a receipt's `batch` object in a bundle.
type Edit = dyn Fn(&mut serde_json::Value);

/// RFC 9162's inclusion-proof walk, written from `envelope.proto`'s
/// comment: the bytes a batch receipt's signature covers, or `None`.
fn documented_signed_bytes(
    receipt: &[u8],
    index: u64,
    size: u64,
    path: &[Vec<u8>],
) -> Option<Vec<u8>> {
    let hash = |parts: &[&[u8]]| -> Vec<u8> {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().to_vec()
    };
    if size < 2 || index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = hash(&[&[0x00], receipt]);
    for p in path {
        if p.len() != 32 || sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash(&[&[0x01], p, &r]);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = hash(&[&[0x01], &r, p]);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then(|| {
        [
            b"cluebridge/v1/receipt-batch\n".as_slice(),
            &size.to_be_bytes(),
            &r,
        ]
        .concat()
    })
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// `text` with the first batch proof changed by `edit`.
fn edited(text: &str, edit: &Edit) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).expect("json");
    let receipts = v["receipts"].as_array_mut().expect("receipts");
    let batched = receipts
        .iter_mut()
        .find(|r| r.get("batch").is_some())
        .expect("a batch receipt");
    edit(&mut batched["batch"]);
    serde_json::to_string(&v).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_taken_together_share_one_signature_and_verify_with_the_federations_keys_alone() {
    // Public security is down while discipline accepts the messages, so
    // they reach it in one Deliver when it starts.
    let mut fed = TestFederation::start_with(audited, &[DISCIPLINE]).await;
    let mut discipline = fed.client(DISCIPLINE);
    for i in 0..MESSAGES {
        let id = format!("batch-{i}");
        submit(
            &mut discipline,
            submit_request(&id, MessageKind::ClueTransfer, SECURITY, b"evidence"),
        )
        .await;
    }
    fed.restart(SECURITY).await;
    for i in 0..MESSAGES {
        let id = format!("batch-{i}");
        wait_state(&mut discipline, &id, SentState::Delivered, 30 * SECOND).await;
    }

    let text = bundle_of(&fed, DISCIPLINE, "", "batch-2").await;
    let b: bundle::Bundle = serde_json::from_str(&text).expect("bundle");
    let delivered = b
        .receipts
        .iter()
        .find(|r| r.fields["kind"] == "delivered")
        .expect("the delivered receipt");
    let proof = delivered.batch.as_ref().expect("signed with its batch");
    assert_eq!(proof.tree_size, MESSAGES as u64, "one Deliver, one root");

    // The node's verifier, with the trust list and nothing else.
    let trust = fed.keyring();
    let report = bundle::verify(&text, Some(&trust), None);
    assert!(report.passed, "{}", report.render());

    // The documented rules, with stock SHA-256 and Ed25519.
    let path: Vec<Vec<u8>> = proof
        .audit_path
        .iter()
        .map(|h| hex::decode(h).expect("hex"))
        .collect();
    let signed = documented_signed_bytes(
        &b64(&delivered.receipt),
        proof.leaf_index,
        proof.tree_size,
        &path,
    )
    .expect("the path leads to a root");
    let key = fed.signer(SECURITY).verifying_key();
    let signature =
        ed25519_dalek::Signature::from_slice(&b64(&delivered.signature)).expect("64 bytes");
    key.verify_strict(&signed, &signature)
        .expect("the batch root's signature verifies");

    // The real binary agrees.
    let file = fed.dev.dir.join("batch-2.json");
    std::fs::write(&file, &text).expect("write bundle");
    let trust_file = fed.dev.dir.join("federation.toml");
    let (ok, said) = run_cluebridge(&[
        "verify",
        file.to_str().expect("path"),
        "--trust",
        trust_file.to_str().expect("path"),
    ]);
    assert!(ok && said.contains("result: PASS"), "{said}");

    // Any change to the proof fails the receipt, with the reason.
    let changes: [(&str, Box<Edit>); 5] = [
        (
            "leaf index",
            Box::new(|p| p["leaf_index"] = (p["leaf_index"].as_u64().unwrap() ^ 1).into()),
        ),
        (
            "tree size",
            Box::new(|p| p["tree_size"] = (MESSAGES as u64 + 1).into()),
        ),
        (
            "a path hash",
            Box::new(|p| {
                let h = p["audit_path"][0].as_str().unwrap().to_string();
                let first = if h.starts_with('0') { '1' } else { '0' };
                let flipped = format!("{first}{}", &h[1..]);
                p["audit_path"][0] = flipped.into();
            }),
        ),
        (
            "a shorter path",
            Box::new(|p| {
                p["audit_path"].as_array_mut().unwrap().pop();
            }),
        ),
        ("no proof", Box::new(|p| *p = serde_json::Value::Null)),
    ];
    for (what, change) in changes {
        let changed = edited(&text, &*change);
        let report = bundle::verify(&changed, Some(&trust), None);
        let failure = report
            .first_failure()
            .unwrap_or_else(|| panic!("{what} went unnoticed"));
        assert!(
            failure.name.starts_with("receipt"),
            "{what}: failed at {}: {}",
            failure.name,
            failure.detail
        );
    }
}
