//! Writes a receipt bundle with many receipts, and a trust list to check it
//! against, for timing `cluebridge verify` on a large bundle:
//!
//! ```sh
//! cargo run --release --example bundle_fixture -- /tmp/fixture 10
//! time target/release/cluebridge verify /tmp/fixture/bundle.json \
//!     --trust /tmp/fixture/federation.toml
//! ```
//!
//! A live node holds a few receipts per message (accepted, delivered,
//! acknowledged); this builds a bundle of the same shape with as many
//! receipts as asked, each recorded by an audit entry, signed with fresh
//! keys of a two-node federation.

use cluebridge::audit::bundle::{self, BundleInput};
use cluebridge::config::Federation;
use cluebridge::crypto::NodeSigner;
use cluebridge::crypto::certs::Ca;
use cluebridge::model::{
    AuditEntry, AuditEvent, Checkpoint, EnvelopeHeader, GENESIS_HASH, MessageKind, Receipt,
    ReceiptKind, sha256,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bundle-fixture".into()));
    let receipts: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    std::fs::create_dir_all(&dir)?;

    let sender = NodeSigner::generate("discipline", "discipline-k1");
    let recipient = NodeSigner::generate("public_security", "public_security-k1");
    let ca = Ca::generate("fixture", 1)?;
    std::fs::write(dir.join("ca.pem"), &ca.cert.cert_pem)?;
    let federation = format!(
        "name = \"fixture\"\nca_cert = \"ca.pem\"\n\n\
         [[node]]\nid = \"discipline\"\nkind = \"discipline\"\nendpoint = \"https://127.0.0.1:7401\"\n\
         [[node.key]]\nid = \"discipline-k1\"\npublic_key = \"{}\"\n\n\
         [[node]]\nid = \"public_security\"\nkind = \"public_security\"\nendpoint = \"https://127.0.0.1:7403\"\n\
         [[node.key]]\nid = \"public_security-k1\"\npublic_key = \"{}\"\n",
        sender.public_key_base64(),
        recipient.public_key_base64()
    );
    let federation_path = dir.join("federation.toml");
    std::fs::write(&federation_path, federation)?;
    let keyring = Federation::load(&federation_path)?.keyring;

    let now = cluebridge::now_ms();
    let payload = b"evidence".to_vec();
    let header = EnvelopeHeader {
        message_id: "fixture-1".into(),
        kind: MessageKind::ClueTransfer,
        sender_node: "discipline".into(),
        sender_principal: "backoffice".into(),
        recipient_node: "public_security".into(),
        case_reference: "CASE-1".into(),
        correlation_id: String::new(),
        subject: "fixture".into(),
        content_type: "text/plain".into(),
        payload_sha256: sha256(&payload),
        payload_length: payload.len() as u64,
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
        reply_by_ms: 0,
        signing_key_id: "discipline-k1".into(),
    };
    let envelope = sender.seal(&header, payload.into());
    let message = header.message_ref();
    let mut signed = Vec::new();
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut prev = GENESIS_HASH;
    for i in 0..receipts {
        let (kind, signer) = match i {
            0 => (ReceiptKind::Accepted, &sender),
            1 => (ReceiptKind::Delivered, &recipient),
            _ => (ReceiptKind::Acknowledged, &recipient),
        };
        let r = signer.sign_receipt(&Receipt {
            message_id: message.message_id.clone(),
            sender_node: message.sender_node.clone(),
            kind,
            issuer_node: signer.node_id().to_string(),
            issued_at_ms: now + i as u64,
            reason: String::new(),
            header_sha256: envelope.header_sha256(),
            signing_key_id: signer.key_id().to_string(),
            attempt: i as u32,
        });
        let entry = AuditEntry {
            seq: i as u64 + 1,
            time_ms: now + i as u64,
            event: if i == 0 {
                AuditEvent::Accepted
            } else {
                AuditEvent::ReceiptReceived
            },
            message: message.clone(),
            state: if i == 0 { "accepted" } else { "delivered" }.into(),
            detail: format!("{kind} receipt"),
            receipt_sha256: Some(sha256(&r.receipt)),
            prev_hash: prev,
        };
        prev = entry.hash();
        entries.push(entry);
        signed.push(r);
    }
    let checkpoint = sender.sign_checkpoint(&Checkpoint {
        node: "discipline".into(),
        seq: entries.len() as u64,
        head_hash: prev,
        time_ms: now + receipts as u64,
        signing_key_id: "discipline-k1".into(),
    });
    let bundle = bundle::build(BundleInput {
        message: &message,
        header: &envelope.header,
        signature: &envelope.signature,
        header_batch: envelope.batch.as_ref(),
        payload: None,
        receipts: &signed,
        audit_node: "discipline",
        segments: vec![(entries, checkpoint)],
        keyring: &keyring,
    })?;
    let path = dir.join("bundle.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bundle)?)?;
    println!(
        "wrote {} ({receipts} receipts) and {}",
        path.display(),
        federation_path.display()
    );
    Ok(())
}
