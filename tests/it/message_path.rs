//! The path of a message: both kinds along allowed routes, receipts back,
//! feedback, and every hand-over verifiable with public keys alone.

use crate::harness::*;
use cluebridge::model::{
    MessageKind, ReceiptKind, SentState, SignedEnvelope, SignedReceipt, sha256,
};
use cluebridge::pb;

fn kinds(s: &pb::GetStatusResponse) -> Vec<ReceiptKind> {
    receipt_kinds(&s.receipts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_travel_and_every_hand_over_verifies() {
    let fed = TestFederation::start().await;
    let keyring = fed.keyring();
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    let mut personnel = fed.client(PERSONNEL);

    submit(
        &mut discipline,
        submit_request(
            "clue-1",
            MessageKind::ClueTransfer,
            SECURITY,
            b"clue evidence",
        ),
    )
    .await;
    submit(
        &mut discipline,
        submit_request(
            "rect-1",
            MessageKind::RectificationSuggestion,
            PERSONNEL,
            b"restore rank",
        ),
    )
    .await;

    let mut stream = receiver(&mut security, 4, 30).await;
    let clue = next(&mut stream, 10 * SECOND).await;
    assert_eq!((clue.message_id.as_str(), clue.attempt), ("clue-1", 1));
    let envelope = SignedEnvelope::from_wire(clue.envelope.clone().expect("envelope"));
    let header = keyring
        .verify_envelope(&envelope)
        .expect("envelope verifies with public keys");
    assert_eq!(header.sender_node, DISCIPLINE);
    assert_eq!(header.sender_principal, "backoffice");
    assert_eq!(&envelope.payload[..], b"clue evidence");
    security
        .ack(pb::AckRequest {
            lease: lease_of(&clue),
        })
        .await
        .expect("ack");

    let mut stream = receiver(&mut personnel, 4, 30).await;
    let rect = next(&mut stream, 10 * SECOND).await;
    assert_eq!(rect.message_id, "rect-1");
    personnel
        .reject(pb::RejectRequest {
            lease: lease_of(&rect),
            reason: "position already restored".into(),
        })
        .await
        .expect("reject");

    let acked = wait_state(
        &mut discipline,
        "clue-1",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    assert_eq!(
        kinds(&acked),
        [
            ReceiptKind::Accepted,
            ReceiptKind::Delivered,
            ReceiptKind::Acknowledged
        ]
    );
    let rejected = wait_state(&mut discipline, "rect-1", SentState::Rejected, 10 * SECOND).await;
    assert_eq!(
        kinds(&rejected),
        [
            ReceiptKind::Accepted,
            ReceiptKind::Delivered,
            ReceiptKind::Rejected
        ]
    );

    // Every receipt verifies with the trust list alone and is bound to the
    // exact envelope header that travelled.
    for status in [&acked, &rejected] {
        let header_digest = sha256(&status.envelope_header);
        for (i, r) in status.receipts.iter().enumerate() {
            let signed = SignedReceipt::from_wire(r.clone());
            let receipt = keyring.verify_receipt(&signed).expect("receipt verifies");
            assert_eq!(receipt.header_sha256, header_digest);
            let expected_issuer = if i == 0 {
                DISCIPLINE
            } else {
                status.recipient_node.as_str()
            };
            assert_eq!(receipt.issuer_node, expected_issuer);
        }
    }
    let rejection = SignedReceipt::from_wire(rejected.receipts[2].clone())
        .open()
        .expect("receipt");
    assert_eq!(rejection.reason, "position already restored");

    // Personnel answers the suggestion with feedback, which goes back only
    // to discipline.
    let mut feedback = submit_request("fb-1", MessageKind::Feedback, DISCIPLINE, b"done");
    feedback.correlation_id = "rect-1".into();
    submit(&mut personnel, feedback).await;
    let mut stream = receiver(&mut discipline, 4, 30).await;
    let fb = next(&mut stream, 10 * SECOND).await;
    assert_eq!(
        (fb.sender_node.as_str(), fb.message_id.as_str()),
        (PERSONNEL, "fb-1")
    );
    discipline
        .ack(pb::AckRequest {
            lease: lease_of(&fb),
        })
        .await
        .expect("ack feedback");
    wait_state(&mut personnel, "fb-1", SentState::Acknowledged, 10 * SECOND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_receipts_resumes_after_its_cursor() {
    use tokio_stream::StreamExt;
    let fed = TestFederation::start().await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("w-1", MessageKind::ClueTransfer, SECURITY, b"a"),
    )
    .await;
    wait_state(&mut discipline, "w-1", SentState::Delivered, 10 * SECOND).await;

    let mut watch = discipline
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = watch.next().await.expect("event").expect("ok");
        let r = SignedReceipt::from_wire(e.receipt.expect("receipt"))
            .open()
            .expect("receipt");
        seen.push((e.cursor, r.kind));
    }
    assert_eq!(seen[0].1, ReceiptKind::Accepted);
    assert_eq!(seen[1].1, ReceiptKind::Delivered);
    assert!(seen[0].0 < seen[1].0, "cursors increase");
    drop(watch);

    // After a disconnect, resuming from the last cursor yields only what
    // came later, and it comes live.
    let last = seen[1].0;
    let mut watch = discipline
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: last })
        .await
        .expect("watch")
        .into_inner();
    submit(
        &mut discipline,
        submit_request("w-2", MessageKind::ClueTransfer, SECURITY, b"b"),
    )
    .await;
    let e = watch.next().await.expect("event").expect("ok");
    assert!(e.cursor > last);
    let r = SignedReceipt::from_wire(e.receipt.expect("receipt"))
        .open()
        .expect("receipt");
    assert_eq!(
        (r.message_id.as_str(), r.kind),
        ("w-2", ReceiptKind::Accepted)
    );
}

/// A recipient that comes back announces itself: the sender retries at
/// once instead of waiting out its backoff, which here is at least 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_comes_back_gets_its_backlog_without_waiting_out_the_backoff() {
    const RETRY_MS: u64 = 60_000;
    let mut fed = TestFederation::start_with(
        |n| {
            n.delivery.retry_initial_ms = RETRY_MS;
            n.delivery.retry_max_ms = RETRY_MS;
        },
        &[DISCIPLINE],
    )
    .await;
    let mut client = fed.client(DISCIPLINE);
    let request = submit_request("backlog", MessageKind::ClueTransfer, SECURITY, b"waits");
    submit(&mut client, request).await;

    // The sender tried, failed and now waits between 30 and 60 s.
    let mut admin = fed.admin(DISCIPLINE);
    let deadline = std::time::Instant::now() + 10 * SECOND;
    loop {
        let security = peer_info(&mut admin, SECURITY).await;
        if security.consecutive_failures > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{security:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    fed.restart(SECURITY).await;
    let earliest_retry = std::time::Duration::from_millis(RETRY_MS / 2);
    wait_state(
        &mut client,
        "backlog",
        SentState::Delivered,
        earliest_retry / 2,
    )
    .await;
}

/// The events of one message as a watcher sees them: cursor, receipt
/// bytes, state.
async fn events_of(
    watch: &mut tonic::Streaming<pb::ReceiptEvent>,
    id: &str,
    count: usize,
) -> Vec<(u64, Vec<u8>, i32)> {
    use tokio_stream::StreamExt;
    let mut out = Vec::new();
    while out.len() < count {
        let e = tokio::time::timeout(10 * SECOND, watch.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        let receipt = e.receipt.expect("receipt");
        let opened = SignedReceipt::from_wire(receipt.clone())
            .open()
            .expect("receipt");
        if opened.message_id == id {
            out.push((e.cursor, receipt.receipt, e.state));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_cursor_tells_the_same_history_as_the_live_feed() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut live = discipline
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let request = submit_request("h-1", MessageKind::ClueTransfer, SECURITY, b"h");
    submit(&mut discipline, request).await;
    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 1, 30).await;
    let delivery = next(&mut stream, 10 * SECOND).await;
    security
        .ack(pb::AckRequest {
            lease: lease_of(&delivery),
        })
        .await
        .expect("ack");
    let seen_live = events_of(&mut live, "h-1", 3).await;
    let states: Vec<i32> = seen_live.iter().map(|e| e.2).collect();
    assert_eq!(
        states,
        [
            SentState::Accepted.to_wire(),
            SentState::Delivered.to_wire(),
            SentState::Acknowledged.to_wire()
        ]
    );

    let mut replay = discipline
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(events_of(&mut replay, "h-1", 3).await, seen_live);
}

/// Cursors given out stay valid and are never given out again: after a
/// restart whose index is rebuilt from the journal, a replay from 0 tells
/// the same events under the same cursors, and the next event's cursor
/// comes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_go_on_after_a_restart_with_a_rebuilt_index() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let watch_all = |mut client: pb::broker_client::BrokerClient<tonic::transport::Channel>| async move {
        client
            .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
            .await
            .expect("watch")
            .into_inner()
    };
    let mut discipline = fed.client(DISCIPLINE);
    for id in ["c-1", "c-2"] {
        let request = submit_request(id, MessageKind::ClueTransfer, SECURITY, b"c");
        submit(&mut discipline, request).await;
    }
    let mut watch = watch_all(fed.client(DISCIPLINE)).await;
    let before = [
        events_of(&mut watch, "c-1", 1).await,
        events_of(&mut watch, "c-2", 1).await,
    ];
    drop(watch);

    fed.stop(DISCIPLINE).await;
    let index = fed.config(DISCIPLINE).data_dir.join("index");
    std::fs::remove_dir_all(&index).expect("lose the index");
    fed.restart(DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    let request = submit_request("c-3", MessageKind::ClueTransfer, SECURITY, b"c");
    submit(&mut discipline, request).await;

    let mut watch = watch_all(fed.client(DISCIPLINE)).await;
    assert_eq!(events_of(&mut watch, "c-1", 1).await, before[0]);
    assert_eq!(events_of(&mut watch, "c-2", 1).await, before[1]);
    let after = events_of(&mut watch, "c-3", 1).await;
    assert!(after[0].0 > before[1][0].0, "{after:?} after {before:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_feed_no_longer_covers_is_out_of_range() {
    let fed =
        TestFederation::start_with(|n| n.limits.receipt_feed_retention_secs = 1, &[DISCIPLINE])
            .await;
    let mut discipline = fed.client(DISCIPLINE);
    for id in ["old-1", "old-2"] {
        let request = submit_request(id, MessageKind::ClueTransfer, SECURITY, b"o");
        submit(&mut discipline, request).await;
    }
    let mut watch = discipline
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let first = events_of(&mut watch, "old-1", 1).await[0].0;
    let second = events_of(&mut watch, "old-2", 1).await[0].0;
    assert!(second > first);
    drop(watch);

    // A client that saw the first receipt and never the second, once the
    // feed let both go.
    let deadline = std::time::Instant::now() + 20 * SECOND;
    let refused = loop {
        let answer = discipline
            .watch_receipts(pb::WatchReceiptsRequest {
                after_cursor: first,
            })
            .await;
        match answer {
            Err(status) => break status,
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "never pruned");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("oldest cursor kept")
            && refused
                .message()
                .contains(&format!("up to cursor {second}")),
        "{}",
        refused.message()
    );
    // From the oldest kept, and from the last cursor seen, all is well.
    for after_cursor in [0, second] {
        discipline
            .watch_receipts(pb::WatchReceiptsRequest { after_cursor })
            .await
            .expect("a cursor the feed covers");
    }

    let ahead = discipline
        .watch_receipts(pb::WatchReceiptsRequest {
            after_cursor: u64::MAX / 2,
        })
        .await
        .expect_err("a cursor never given out");
    assert_eq!(ahead.code(), tonic::Code::OutOfRange);
    assert!(ahead.message().contains("ahead"), "{}", ahead.message());
}
