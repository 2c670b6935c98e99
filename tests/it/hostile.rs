//! A hostile member node of the federation: it holds a valid node
//! certificate and its own signing key, and uses them to plant evidence or
//! fill its peers' storage. Each attempt is refused with a clear status,
//! and what a peer keeps of it stays bounded.

use crate::harness::*;
use cluebridge::config::NodeFile;
use cluebridge::model::{Checkpoint, MessageKind, Receipt, ReceiptKind, SentState, sha256};
use cluebridge::now_ms;
use cluebridge::pb;
use cluebridge::store::MAX_EQUIVOCATIONS;
use tonic::Code;

fn signed_checkpoint(
    fed: &TestFederation,
    node: &str,
    seq: u64,
    time_ms: u64,
    head: u8,
) -> pb::SignedCheckpoint {
    let c = Checkpoint {
        node: node.into(),
        seq,
        head_hash: [head; 32],
        time_ms,
        signing_key_id: format!("{node}-k1"),
    };
    let signed = fed.signer(node).sign_checkpoint(&c);
    pb::SignedCheckpoint {
        checkpoint: signed.checkpoint,
        signature: signed.signature,
    }
}

async fn witness(fed: &TestFederation, c: pb::SignedCheckpoint) -> Result<(), tonic::Status> {
    fed.peer_as(SECURITY, DISCIPLINE)
        .witness_checkpoint(pb::WitnessCheckpointRequest {
            checkpoint: Some(c),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnessed_checkpoints_only_move_forward_and_equivocation_evidence_is_capped() {
    // Only discipline runs: the checkpoints it witnesses are the test's.
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let t = now_ms() - 60_000;
    witness(&fed, signed_checkpoint(&fed, SECURITY, 100, t, 1))
        .await
        .expect("a first checkpoint is kept");
    witness(&fed, signed_checkpoint(&fed, SECURITY, 100, t, 1))
        .await
        .expect("the same checkpoint again changes nothing");
    let cases = [
        (
            "an older entry",
            signed_checkpoint(&fed, SECURITY, 99, t + 1, 2),
            Code::FailedPrecondition,
            "witnessed checkpoints only move forward",
        ),
        (
            "a time before the latest",
            signed_checkpoint(&fed, SECURITY, 101, t - 1, 2),
            Code::FailedPrecondition,
            "witnessed checkpoints only move forward",
        ),
        (
            "implausibly far ahead",
            signed_checkpoint(&fed, SECURITY, 100 + 3_000_000, t + 1000, 2),
            Code::InvalidArgument,
            "a chain grows by at most 1000000 entries per second",
        ),
        (
            "in the future",
            signed_checkpoint(&fed, SECURITY, 200, now_ms() + 3_600_000, 2),
            Code::InvalidArgument,
            "ms in the future; at most 300000 ms of clock skew",
        ),
    ];
    for (what, c, code, says) in cases {
        let e = witness(&fed, c).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        assert!(e.message().contains(says), "{what}: {}", e.message());
    }
    // Contradicting checkpoints for the held entry: each refused, a few
    // kept as evidence, never more.
    for head in 10..40u8 {
        let e = witness(&fed, signed_checkpoint(&fed, SECURITY, 100, t, head))
            .await
            .expect_err("a contradicting checkpoint");
        assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
        assert!(
            e.message().contains("signed two histories"),
            "{}",
            e.message()
        );
    }
    let store = fed.node(DISCIPLINE).broker.store();
    let evidence = store.equivocations(SECURITY).expect("equivocations");
    assert_eq!(evidence.len(), MAX_EQUIVOCATIONS);
    let held = store
        .checkpoint_at(SECURITY, 100)
        .expect("read")
        .expect("held");
    assert_eq!(
        held.open().expect("checkpoint").head_hash,
        [1; 32],
        "the first one is kept"
    );
    // Hundreds of invented entries, each moving forward within one second
    // of signing time: the witness keeps one, the newest.
    let held_before = store
        .checkpoints(Some(SECURITY), 0, usize::MAX)
        .expect("list")
        .len();
    for i in 0..300u64 {
        witness(
            &fed,
            signed_checkpoint(&fed, SECURITY, 1000 + i, t + 5000 + i, 3),
        )
        .await
        .expect("a checkpoint moving forward");
    }
    let held = store
        .checkpoints(Some(SECURITY), 0, usize::MAX)
        .expect("list");
    assert_eq!(
        held.len(),
        held_before + 1,
        "one checkpoint per second of signing time"
    );
    assert_eq!(
        held.last().expect("one").open().expect("checkpoint").seq,
        1299
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contradicting_final_receipt_is_refused_and_recorded_once() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request(
            "settled-1",
            MessageKind::ClueTransfer,
            SECURITY,
            b"evidence",
        ),
    )
    .await;
    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 1, 60).await;
    let d = next(&mut stream, 10 * SECOND).await;
    security
        .ack(pb::AckRequest {
            lease: lease_of(&d),
        })
        .await
        .expect("ack");
    wait_state(
        &mut discipline,
        "settled-1",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    let status = |mut c: pb::broker_client::BrokerClient<tonic::transport::Channel>| async move {
        c.get_status(pb::GetStatusRequest {
            message_id: "settled-1".into(),
        })
        .await
        .expect("status")
        .into_inner()
    };
    let before = status(discipline.clone()).await;
    // The hostile recipient now signs "rejected" receipts, each different.
    let mut refusals = Vec::new();
    for i in 0..20u64 {
        let receipt = Receipt {
            message_id: "settled-1".into(),
            sender_node: DISCIPLINE.into(),
            kind: ReceiptKind::Rejected,
            issuer_node: SECURITY.into(),
            issued_at_ms: now_ms() + i,
            reason: format!("changed our mind ({i})"),
            header_sha256: sha256(&before.envelope_header),
            signing_key_id: "public_security-k1".into(),
            attempt: 1,
        };
        let answer = fed
            .peer_as(SECURITY, DISCIPLINE)
            .return_receipts(pb::ReturnReceiptsRequest {
                receipts: vec![fed.signer(SECURITY).sign_receipt(&receipt).to_wire()],
            })
            .await
            .expect("return receipts")
            .into_inner();
        refusals.push(answer.outcomes[0].refused.clone().expect("refused"));
    }
    for r in &refusals {
        assert_eq!(
            Code::from(r.code),
            Code::FailedPrecondition,
            "{}",
            r.message
        );
        assert!(
            r.message.contains("discipline/settled-1 is already acknowledged; a rejected receipt that contradicts it is refused"),
            "{}",
            r.message
        );
    }
    let after = status(discipline.clone()).await;
    assert_eq!(after.state, before.state);
    assert_eq!(after.receipts, before.receipts, "no receipt was added");
    // The first contradicting receipt is kept as evidence, and only it.
    let kept = fed
        .node(DISCIPLINE)
        .broker
        .store()
        .contradicting_receipt(&cluebridge::model::MessageRef {
            sender_node: DISCIPLINE.into(),
            message_id: "settled-1".into(),
        })
        .expect("read")
        .expect("kept");
    assert_eq!(kept.open().expect("receipt").reason, "changed our mind (0)");
}

/// Sets `not_after` of discipline's key `discipline-k1` in the trust list.
fn retire_discipline_key(fed: &TestFederation, at_ms: u64) {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let path = fed.dev.dir.join("federation.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let text = text.replacen(
        "id = \"discipline-k1\"\n",
        &format!("id = \"discipline-k1\"\nnot_after = \"{at}\"\n"),
        1,
    );
    std::fs::write(&path, text).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_with_a_backdated_time_is_refused_after_the_grace() {
    // Public security takes a retired key's objects for no time after its
    // retirement; judicial for an hour.
    let tune = |n: &mut NodeFile| {
        n.limits.retired_key_grace_ms = if n.node_id == JUDICIAL { 3_600_000 } else { 0 };
    };
    let mut fed = TestFederation::start_with(tune, &[]).await;
    let retired_at = now_ms() - 60_000;
    retire_discipline_key(&fed, retired_at);
    fed.restart(SECURITY).await;
    fed.restart(JUDICIAL).await;
    // Signed now with the retired key, claiming a time just before its end.
    let backdated = |id: &str, to: &str| {
        let payload = b"evidence";
        let mut h = header(id, MessageKind::ClueTransfer, DISCIPLINE, to, payload);
        h.created_at_ms = retired_at - 1000;
        sealed(&fed.signer(DISCIPLINE), &h, payload)
    };
    let outcome = |r: pb::DeliverResponse| r.outcomes[0].outcome.clone().expect("outcome");
    let refused = fed
        .peer_as(DISCIPLINE, SECURITY)
        .deliver(pb::DeliverRequest {
            envelopes: vec![backdated("backdated-1", SECURITY)],
        })
        .await
        .expect("deliver")
        .into_inner();
    match outcome(refused) {
        pb::deliver_outcome::Outcome::Refused(r) => {
            assert_eq!(Code::from(r.code), Code::PermissionDenied, "{}", r.message);
            assert!(
                r.message
                    .contains("key \"discipline-k1\" of node \"discipline\" was retired at"),
                "{}",
                r.message
            );
        }
        other => panic!("a retired key was taken: {other:?}"),
    }
    let taken = fed
        .peer_as(DISCIPLINE, JUDICIAL)
        .deliver(pb::DeliverRequest {
            envelopes: vec![backdated("backdated-2", JUDICIAL)],
        })
        .await
        .expect("deliver")
        .into_inner();
    assert!(
        matches!(outcome(taken), pb::deliver_outcome::Outcome::Delivered(_)),
        "within the grace, an envelope signed before the rotation still arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_lists_come_in_pages_within_a_byte_budget() {
    // Recipient down: every message waits in discipline's outbox.
    let fed = TestFederation::start_with(|n| n.limits.submit_rate_per_sec = 0, &[DISCIPLINE]).await;
    let total = 3000;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = fed.client(DISCIPLINE);
        tasks.push(tokio::spawn(async move {
            for i in (t..total).step_by(8) {
                let mut r = submit_request(
                    &format!("long-{i:04}"),
                    MessageKind::ClueTransfer,
                    SECURITY,
                    b"x",
                );
                r.subject = "s".repeat(256);
                r.case_reference = "c".repeat(128);
                c.submit(r).await.expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("submitter");
    }
    let mut auditor = cluebridge::client::Connection::from_files(
        &fed.dev
            .client_as(DISCIPLINE, cluebridge::devfed::AUDITOR_NAME)
            .expect("files"),
    )
    .expect("connection")
    .audit()
    .expect("client");
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = auditor
            .list_messages(pb::ListMessagesRequest {
                limit: 10_000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("a page fits a client's default message size")
            .into_inner();
        pages += 1;
        assert!(!page.messages.is_empty(), "page {pages} is empty");
        seen.extend(
            page.messages
                .into_iter()
                .map(|m| (m.created_at_ms, m.message_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    eprintln!("{total} messages of ~400 bytes of text listed in {pages} pages");
    assert!(
        pages >= 2,
        "3000 summaries of 400 bytes do not fit one 1 MiB answer"
    );
    assert_eq!(seen.len(), total, "every message once");
    let mut ids: Vec<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no message twice");
    assert!(
        seen.windows(2).all(|w| w[0].0 >= w[1].0),
        "newest first across pages"
    );
    let bad = auditor
        .list_messages(pb::ListMessagesRequest {
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .expect_err("a made-up token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("is not one this node gave out"),
        "{}",
        bad.message()
    );
}
