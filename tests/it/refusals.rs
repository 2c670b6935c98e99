//! Refusals at submit and at the receiving node: each gets a clear status
//! and changes nothing.

use crate::harness::*;
use cluebridge::crypto::NodeSigner;
use cluebridge::model::{MessageKind, SignedEnvelope, SignedReceipt};
use cluebridge::pb;
use tonic::Code;

/// Delivers one envelope to `target` as node `as_node`; returns the refusal.
pub async fn refusal(
    fed: &TestFederation,
    as_node: &str,
    target: &str,
    e: pb::SignedEnvelope,
) -> pb::Refusal {
    let response = fed
        .peer_as(as_node, target)
        .deliver(pb::DeliverRequest { envelopes: vec![e] })
        .await
        .expect("deliver call")
        .into_inner();
    match response.outcomes[0].outcome.clone().expect("outcome") {
        pb::deliver_outcome::Outcome::Refused(r) => r,
        pb::deliver_outcome::Outcome::Delivered(_) => panic!("envelope was taken into custody"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_route_is_refused_at_submit_and_nothing_is_stored() {
    let fed = TestFederation::start().await;
    let mut personnel = fed.client(PERSONNEL);
    let before = fed.node(PERSONNEL).broker.store().counts();
    let err = personnel
        .submit(submit_request(
            "p-1",
            MessageKind::ClueTransfer,
            SECURITY,
            b"x",
        ))
        .await
        .expect_err("personnel may not send clue transfers to public security");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains(
            "route policy forbids clue_transfer from a personnel agency to a public_security agency"
        ),
        "{}",
        err.message()
    );
    assert_eq!(fed.node(PERSONNEL).broker.store().counts(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refusals_say_what_was_wrong() {
    let fed = TestFederation::start().await;
    let mut discipline = fed.client(DISCIPLINE);
    let before = fed.node(DISCIPLINE).broker.store().counts();
    let cases = [
        (
            submit_request("u-1", MessageKind::ClueTransfer, "nowhere", b"x"),
            Code::NotFound,
            "not in the federation",
        ),
        (
            submit_request("u-2", MessageKind::ClueTransfer, DISCIPLINE, b"x"),
            Code::InvalidArgument,
            "is this node",
        ),
        (
            submit_request("bad id", MessageKind::ClueTransfer, SECURITY, b"x"),
            Code::InvalidArgument,
            "message_id",
        ),
        (
            submit_request(
                "u-3",
                MessageKind::ClueTransfer,
                SECURITY,
                &vec![0; 1024 * 1024 + 1],
            ),
            Code::ResourceExhausted,
            "payload is 1048577 bytes",
        ),
        (
            {
                let mut r = submit_request("u-4", MessageKind::Feedback, SECURITY, b"x");
                r.correlation_id = "never-received".into();
                r
            },
            Code::FailedPrecondition,
            "feedback must answer",
        ),
        (
            {
                let mut r = submit_request("u-5", MessageKind::ClueTransfer, SECURITY, b"x");
                r.kind = 42;
                r
            },
            Code::InvalidArgument,
            "unknown message kind 42",
        ),
    ];
    for (request, code, text) in cases {
        let id = request.message_id.clone();
        let err = discipline.submit(request).await.expect_err(&id);
        assert_eq!(err.code(), code, "{id}: {}", err.message());
        assert!(err.message().contains(text), "{id}: {}", err.message());
    }
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_is_idempotent_on_message_id() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let request = submit_request("same-1", MessageKind::ClueTransfer, SECURITY, b"content");
    let first = discipline
        .submit(request.clone())
        .await
        .expect("first")
        .into_inner();
    assert!(!first.duplicate);
    let counts = fed.node(DISCIPLINE).broker.store().counts();

    let again = discipline
        .submit(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(
        again.accepted, first.accepted,
        "the original accepted receipt"
    );
    assert_eq!(again.envelope_header, first.envelope_header);
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), counts);

    // How it travels is not what it says: another time to live is the
    // same message, and so is the default content type spelled out.
    let mut other_ttl = request.clone();
    other_ttl.ttl_seconds = 60;
    let answer = discipline
        .submit(other_ttl)
        .await
        .expect("another ttl")
        .into_inner();
    assert!(answer.duplicate);
    assert_eq!(answer.accepted, first.accepted);
    let untyped = pb::SubmitRequest {
        message_id: "same-2".into(),
        content_type: String::new(),
        ..request.clone()
    };
    let defaulted = pb::SubmitRequest {
        content_type: "application/octet-stream".into(),
        ..untyped.clone()
    };
    discipline.submit(untyped).await.expect("same-2");
    let again = discipline
        .submit(defaulted)
        .await
        .expect("defaulted")
        .into_inner();
    assert!(again.duplicate, "the default content type spelled out");
    let counts = fed.node(DISCIPLINE).broker.store().counts();

    // What the recipient reads counts, field by field.
    type Change = fn(&mut pb::SubmitRequest);
    let changes: [(&str, Change); 6] = [
        ("payload", |r| r.payload = b"other content".to_vec().into()),
        ("subject", |r| r.subject = "another subject".into()),
        ("case reference", |r| r.case_reference = "CASE-8".into()),
        ("content type", |r| r.content_type = "text/csv".into()),
        ("reply-by", |r| r.reply_by_ms = 4_102_444_800_000),
        ("recipient", |r| r.recipient_node = JUDICIAL.into()),
    ];
    for (what, change) in changes {
        let mut other = request.clone();
        change(&mut other);
        let err = discipline.submit(other).await.expect_err(what);
        assert_eq!(err.code(), Code::AlreadyExists, "{what}: {}", err.message());
        assert!(err.message().contains("same-1"), "{}", err.message());
    }
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), counts);
    let accepted = SignedReceipt::from_wire(first.accepted.expect("receipt"));
    assert_eq!(accepted.open().expect("receipt").message_id, "same-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiving_node_refuses_bad_envelopes_on_peer_deliver() {
    let fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    let store = || fed.node(SECURITY).broker.store().counts();
    let before = store();
    let payload = b"evidence";

    // Forbidden route: personnel may not send clue transfers to public
    // security, even with a valid signature and its own certificate.
    let h = header(
        "r-1",
        MessageKind::ClueTransfer,
        PERSONNEL,
        SECURITY,
        payload,
    );
    let r = refusal(
        &fed,
        PERSONNEL,
        SECURITY,
        sealed(&fed.signer(PERSONNEL), &h, payload),
    )
    .await;
    assert_eq!(r.code, Code::PermissionDenied as i32);
    assert!(r.message.contains("route policy forbids"), "{}", r.message);

    // Bad signature: one flipped bit.
    let h = header(
        "r-2",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let mut e = sealed(&fed.signer(DISCIPLINE), &h, payload);
    e.signature = tampered(&e.signature, 10, 0x01);
    let r = refusal(&fed, DISCIPLINE, SECURITY, e).await;
    assert_eq!(r.code, Code::PermissionDenied as i32);
    assert!(
        r.message.contains("signature does not verify"),
        "{}",
        r.message
    );

    // The envelope says discipline but judicial's certificate delivers it.
    let h = header(
        "r-3",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let r = refusal(
        &fed,
        JUDICIAL,
        SECURITY,
        sealed(&fed.signer(DISCIPLINE), &h, payload),
    )
    .await;
    assert_eq!(r.code, Code::PermissionDenied as i32);
    assert!(
        r.message.contains("delivered by node \"judicial\""),
        "{}",
        r.message
    );

    // Signed by the wrong node's key under the right name.
    let h = header(
        "r-4",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let forged = NodeSigner::from_text(
        DISCIPLINE,
        "discipline-k1",
        &std::fs::read_to_string(fed.dev.dir.join("keys/judicial.ed25519")).expect("key"),
    )
    .expect("key");
    let r = refusal(&fed, DISCIPLINE, SECURITY, sealed(&forged, &h, payload)).await;
    assert_eq!(r.code, Code::PermissionDenied as i32);

    // Payload that does not match the signed digest.
    let h = header(
        "r-5",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let mut e = sealed(&fed.signer(DISCIPLINE), &h, payload);
    e.payload = b"evidencf".to_vec().into();
    let r = refusal(&fed, DISCIPLINE, SECURITY, e).await;
    assert_eq!(r.code, Code::InvalidArgument as i32);
    assert!(r.message.contains("SHA-256"), "{}", r.message);

    // Garbage header bytes.
    let e = pb::SignedEnvelope {
        header: vec![0xff; 7].into(),
        signature: vec![0; 64].into(),
        payload: Default::default(),
        batch: None,
    };
    let r = refusal(&fed, DISCIPLINE, SECURITY, e).await;
    assert_eq!(r.code, Code::InvalidArgument as i32);

    assert_eq!(store(), before, "nothing was stored");

    // A client certificate may not call Peer at all.
    let err = fed
        .connection(SECURITY)
        .peer()
        .expect("client")
        .deliver(pb::DeliverRequest { envelopes: vec![] })
        .await
        .expect_err("client certificate on Peer");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("client certificate"),
        "{}",
        err.message()
    );
    let err = fed
        .connection(SECURITY)
        .peer()
        .expect("client")
        .announce(pb::AnnounceRequest {})
        .await
        .expect_err("a client certificate announcing itself as a node");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A node certificate may not call Broker.
    let node_as_client = cluebridge::client::Connection {
        endpoint: format!("https://127.0.0.1:{}", fed.ports[SECURITY]),
        server_name: SECURITY.into(),
        ca_pem: std::fs::read_to_string(fed.dev.dir.join("ca.pem")).expect("ca"),
        cert_pem: std::fs::read_to_string(fed.dev.dir.join("certs/discipline.pem")).expect("cert"),
        key_pem: std::fs::read_to_string(fed.dev.dir.join("certs/discipline-key.pem"))
            .expect("key"),
    };
    let err = node_as_client
        .broker()
        .expect("client")
        .get_status(pb::GetStatusRequest {
            message_id: "x".into(),
        })
        .await
        .expect_err("node certificate on Broker");
    assert_eq!(err.code(), Code::PermissionDenied);

    // A valid envelope is taken, and delivering it again yields the same
    // receipt and one copy in custody.
    let h = header(
        "r-ok",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let e = sealed(&fed.signer(DISCIPLINE), &h, payload);
    let mut peer = fed.peer_as(DISCIPLINE, SECURITY);
    let first = peer
        .deliver(pb::DeliverRequest {
            envelopes: vec![e.clone()],
        })
        .await
        .expect("deliver")
        .into_inner();
    let second = peer
        .deliver(pb::DeliverRequest {
            envelopes: vec![e.clone()],
        })
        .await
        .expect("deliver")
        .into_inner();
    assert!(matches!(
        first.outcomes[0].outcome,
        Some(pb::deliver_outcome::Outcome::Delivered(_))
    ));
    assert_eq!(
        first.outcomes, second.outcomes,
        "the same delivered receipt"
    );
    assert_eq!(store().inbound, before.inbound + 1);
    let _ = SignedEnvelope::from_wire(e);
}

/// A member node's envelopes signed as a batch are taken one by one on
/// their proofs; one whose proof was changed (a path hash, the size) is
/// refused with a clear status, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_with_a_tampered_batch_proof_is_refused() {
    let fed = TestFederation::start().await;
    let payload = b"batched evidence";
    let headers: Vec<_> = (0..3)
        .map(|i| {
            header(
                &format!("eb-{i}"),
                MessageKind::ClueTransfer,
                DISCIPLINE,
                SECURITY,
                payload,
            )
        })
        .collect();
    let encoded: Vec<bytes::Bytes> = headers.iter().map(|h| h.encode().into()).collect();
    let signed = fed.signer(DISCIPLINE).sign_headers(&encoded);
    let envelope = |i: usize| SignedEnvelope {
        header: encoded[i].clone(),
        signature: signed[i].0.clone().into(),
        payload: payload.to_vec().into(),
        batch: signed[i].1.clone(),
    };
    let store = || fed.node(SECURITY).broker.store().counts();
    let before = store();

    let mut path = envelope(0);
    let proof = path.batch.as_mut().expect("a proof");
    proof.audit_path[0][0] ^= 1;
    let r = refusal(&fed, DISCIPLINE, SECURITY, path.to_wire()).await;
    assert_eq!(r.code, Code::PermissionDenied as i32, "{}", r.message);
    assert!(r.message.contains("does not verify"), "{}", r.message);

    let mut size = envelope(1);
    size.batch.as_mut().expect("a proof").tree_size = 1;
    let r = refusal(&fed, DISCIPLINE, SECURITY, size.to_wire()).await;
    assert_eq!(r.code, Code::InvalidArgument as i32, "{}", r.message);
    assert!(r.message.contains("batch proof"), "{}", r.message);
    assert_eq!(store(), before, "nothing was stored");

    // The same envelope with its proof as signed is taken.
    let response = fed
        .peer_as(DISCIPLINE, SECURITY)
        .deliver(pb::DeliverRequest {
            envelopes: vec![envelope(2).to_wire()],
        })
        .await
        .expect("deliver call")
        .into_inner();
    assert!(matches!(
        response.outcomes[0].outcome,
        Some(pb::deliver_outcome::Outcome::Delivered(_))
    ));
}
