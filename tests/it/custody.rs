//! Custody at the receiving node: leases, redelivery, dead letters, a peer
//! that is down, and expiry.

use crate::harness::*;
use cluebridge::model::{MessageKind, Principal, ReceiptKind, Role, SentState, SignedReceipt};
use cluebridge::pb;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_redelivered_and_too_many_attempts_dead_letter() {
    let fed =
        TestFederation::start_with(|n| n.delivery.max_deliveries = 2, &[DISCIPLINE, SECURITY])
            .await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    submit(
        &mut discipline,
        submit_request("lapse-1", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;

    let mut stream = receiver(&mut security, 1, 1).await;
    let first = next(&mut stream, 10 * SECOND).await;
    assert_eq!(first.attempt, 1);
    // Not settled: the 1 s lease lapses and the message comes back.
    let second = next(&mut stream, 10 * SECOND).await;
    assert_eq!((second.message_id.as_str(), second.attempt), ("lapse-1", 2));
    assert_ne!(first.lease_id, second.lease_id);

    // The first lease is stale now.
    let err = security
        .ack(pb::AckRequest {
            lease: lease_of(&first),
        })
        .await
        .expect_err("stale lease");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is stale"), "{}", err.message());

    // The second lapses too: two attempts are all it gets.
    let status = wait_state(
        &mut discipline,
        "lapse-1",
        SentState::DeadLettered,
        15 * SECOND,
    )
    .await;
    let last = SignedReceipt::from_wire(status.receipts.last().expect("receipt").clone())
        .open()
        .expect("receipt");
    assert_eq!(last.kind, ReceiptKind::DeadLettered);
    assert_eq!(last.issuer_node, SECURITY);
    assert_eq!(last.attempt, 2);
    assert!(
        last.reason.contains("2 delivery attempts"),
        "{}",
        last.reason
    );
    fed.keyring()
        .verify_receipt(&SignedReceipt::from_wire(
            status.receipts.last().expect("r").clone(),
        ))
        .expect("verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_message_comes_back_after_its_delay() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    submit(
        &mut discipline,
        submit_request("rel-1", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    let mut stream = receiver(&mut security, 1, 30).await;
    let first = next(&mut stream, 10 * SECOND).await;

    let err = security
        .release(pb::ReleaseRequest {
            lease: lease_of(&first),
            delay_ms: 10_000_000,
        })
        .await
        .expect_err("delay out of bounds");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = security
        .reject(pb::RejectRequest {
            lease: lease_of(&first),
            reason: " ".into(),
        })
        .await
        .expect_err("reject without a reason");
    assert_eq!(err.code(), Code::InvalidArgument);

    let released_at = std::time::Instant::now();
    security
        .release(pb::ReleaseRequest {
            lease: lease_of(&first),
            delay_ms: 300,
        })
        .await
        .expect("release");
    let again = next(&mut stream, 10 * SECOND).await;
    assert!(released_at.elapsed() >= Duration::from_millis(300));
    assert_eq!((again.message_id.as_str(), again.attempt), ("rel-1", 2));
    security
        .ack(pb::AckRequest {
            lease: lease_of(&again),
        })
        .await
        .expect("ack");
    wait_state(
        &mut discipline,
        "rel-1",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;

    let err = security
        .ack(pb::AckRequest {
            lease: Some(pb::LeaseRef {
                sender_node: DISCIPLINE.into(),
                message_id: "unknown".into(),
                lease_id: 1,
            }),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_a_peer_that_is_down_and_expire_if_their_ttl_passes() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("before", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    wait_state(&mut discipline, "before", SentState::Delivered, 10 * SECOND).await;
    fed.stop(SECURITY).await;
    for i in 0..5 {
        submit(
            &mut discipline,
            submit_request(
                &format!("wait-{i}"),
                MessageKind::ClueTransfer,
                SECURITY,
                b"x",
            ),
        )
        .await;
    }
    let mut short = submit_request("short-ttl", MessageKind::ClueTransfer, SECURITY, b"x");
    short.ttl_seconds = 1;
    submit(&mut discipline, short).await;

    // The TTL passes while the peer is down: the sender node expires it.
    let expired = wait_state(
        &mut discipline,
        "short-ttl",
        SentState::Expired,
        10 * SECOND,
    )
    .await;
    let r = SignedReceipt::from_wire(expired.receipts.last().expect("receipt").clone())
        .open()
        .expect("r");
    assert_eq!(
        (r.kind, r.issuer_node.as_str()),
        (ReceiptKind::Expired, DISCIPLINE)
    );
    assert_eq!(
        fed.node(DISCIPLINE).broker.store().outbox_depth(SECURITY),
        5
    );

    fed.restart(SECURITY).await;
    for i in 0..5 {
        wait_state(
            &mut discipline,
            &format!("wait-{i}"),
            SentState::Delivered,
            15 * SECOND,
        )
        .await;
    }
    let counts = fed.node(SECURITY).broker.store().counts();
    assert_eq!(
        counts.inbound, 6,
        "each message once in custody; the expired one never"
    );

    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 8, 30).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let d = next(&mut stream, 10 * SECOND).await;
        ids.push(d.message_id.clone());
        security
            .ack(pb::AckRequest {
                lease: lease_of(&d),
            })
            .await
            .expect("ack");
    }
    ids.sort();
    let mut expected: Vec<_> = (0..5).map(|i| format!("wait-{i}")).collect();
    expected.insert(0, "before".into());
    assert_eq!(ids, expected);
    for i in 0..5 {
        wait_state(
            &mut discipline,
            &format!("wait-{i}"),
            SentState::Acknowledged,
            10 * SECOND,
        )
        .await;
    }
    assert_eq!(
        fed.node(DISCIPLINE).broker.store().outbox_depth(SECURITY),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_custody_expires_back_to_its_sender() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut request = submit_request("ttl-custody", MessageKind::ClueTransfer, SECURITY, b"x");
    request.ttl_seconds = 2;
    submit(&mut discipline, request).await;
    wait_state(
        &mut discipline,
        "ttl-custody",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    let status = wait_state(
        &mut discipline,
        "ttl-custody",
        SentState::Expired,
        10 * SECOND,
    )
    .await;
    let r = SignedReceipt::from_wire(status.receipts.last().expect("receipt").clone())
        .open()
        .expect("r");
    assert_eq!(
        (r.kind, r.issuer_node.as_str()),
        (ReceiptKind::Expired, SECURITY)
    );
    let m = fed.metrics(SECURITY).await;
    assert_eq!(
        metric(&m, "cluebridge_messages_expired_total{side=\"custody\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "cluebridge_messages_expired_total{side=\"sent\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_splits_its_batches_at_the_peers_byte_cap() {
    // Eight envelopes of 1 MiB wait while the recipient is down; the
    // recipient takes at most 3 MiB of envelopes per call. Sent as one
    // batch, they would be refused forever.
    let tune =
        |n: &mut cluebridge::config::NodeFile| n.limits.max_peer_batch_bytes = 3 * 1024 * 1024;
    let mut fed = TestFederation::start_with(tune, &[DISCIPLINE]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let payload = vec![7u8; 1024 * 1024];
    for i in 0..8 {
        submit(
            &mut discipline,
            submit_request(
                &format!("big-{i}"),
                MessageKind::ClueTransfer,
                SECURITY,
                &payload,
            ),
        )
        .await;
    }
    fed.restart(SECURITY).await;
    for i in 0..8 {
        wait_state(
            &mut discipline,
            &format!("big-{i}"),
            SentState::Delivered,
            20 * SECOND,
        )
        .await;
    }
}

async fn get_received(
    client: &mut cluebridge::pb::broker_client::BrokerClient<tonic::transport::Channel>,
    id: &str,
) -> Result<pb::GetReceivedResponse, tonic::Status> {
    client
        .get_received(pb::GetReceivedRequest {
            sender_node: DISCIPLINE.into(),
            message_id: id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A receiver whose answer was lost settles again: the same receipt, byte
/// for byte, and nothing changes; only a stale lease is refused as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_settlement_answers_the_first_receipt_and_a_stale_lease_is_named() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    for id in ["idem-ack", "idem-reject", "idem-stale"] {
        let request = submit_request(id, MessageKind::ClueTransfer, SECURITY, b"x");
        submit(&mut discipline, request).await;
    }
    let mut stream = receiver(&mut security, 3, 30).await;
    let mut leases = std::collections::HashMap::new();
    while leases.len() < 3 {
        let d = next(&mut stream, 10 * SECOND).await;
        leases.insert(d.message_id.clone(), lease_of(&d));
    }
    let ack = |id: &str| pb::AckRequest {
        lease: leases[id].clone(),
    };
    let reject = |id: &str, reason: &str| pb::RejectRequest {
        lease: leases[id].clone(),
        reason: reason.into(),
    };

    let first = security
        .ack(ack("idem-ack"))
        .await
        .expect("ack")
        .into_inner();
    let again = security
        .ack(ack("idem-ack"))
        .await
        .expect("ack again")
        .into_inner();
    assert_eq!(first.receipt, again.receipt, "the same signed receipt");
    let other_way = security
        .reject(reject("idem-ack", "changed my mind"))
        .await
        .expect_err("a settlement is final");
    assert_eq!(other_way.code(), Code::FailedPrecondition);
    assert!(
        other_way.message().contains("already settled")
            && other_way.message().contains("acknowledged"),
        "{}",
        other_way.message()
    );

    let rejected = security
        .reject(reject("idem-reject", "not ours"))
        .await
        .expect("reject");
    let repeated = security
        .reject(reject("idem-reject", "a second reason"))
        .await
        .expect("reject again");
    assert_eq!(rejected.into_inner().receipt, repeated.into_inner().receipt);

    // Released, the old lease is stale: refused, and saying so.
    security
        .release(pb::ReleaseRequest {
            lease: leases["idem-stale"].clone(),
            delay_ms: 60_000,
        })
        .await
        .expect("release");
    let stale = security
        .ack(ack("idem-stale"))
        .await
        .expect_err("stale lease");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("is stale"), "{}", stale.message());

    // The receiver finds the receipt it caused, and the sender holds one
    // acknowledgement.
    let held = get_received(&mut security, "idem-ack")
        .await
        .expect("received");
    assert_eq!(held.state, "acknowledged");
    assert_eq!(
        receipt_kinds(&held.receipts),
        [ReceiptKind::Delivered, ReceiptKind::Acknowledged]
    );
    assert_eq!(Some(&held.receipts[1]), first.receipt.as_ref());
    let waiting = get_received(&mut security, "idem-stale")
        .await
        .expect("received");
    assert_eq!(waiting.state, "inbox");
    let unknown = get_received(&mut security, "never-sent")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let status = wait_state(
        &mut discipline,
        "idem-ack",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    assert_eq!(
        status.receipts.len(),
        3,
        "accepted, delivered, acknowledged"
    );
}

/// A receiver that goes away does not hold its messages hostage: the
/// leases of its stream go back to the inbox at once (here well before the
/// 30 s they were taken for), the next delivery is attempt 2, and the old
/// lease can no longer be settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_of_a_closed_stream_are_offered_again_at_once() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let request = submit_request("closed-1", MessageKind::ClueTransfer, SECURITY, b"c");
    submit(&mut discipline, request).await;
    let mut security = fed.client(SECURITY);
    let mut first = receiver(&mut security, 4, 30).await;
    let delivery = next(&mut first, 10 * SECOND).await;
    assert_eq!(delivery.attempt, 1);
    drop(first);

    let mut second = receiver(&mut fed.client(SECURITY), 4, 30).await;
    let again = next(&mut second, 10 * SECOND).await;
    assert_eq!(again.message_id, "closed-1");
    assert_eq!(again.attempt, 2, "the closed stream's lease counted");
    let stale = security
        .ack(pb::AckRequest {
            lease: lease_of(&delivery),
        })
        .await
        .expect_err("the closed stream's lease");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    security
        .ack(pb::AckRequest {
            lease: lease_of(&again),
        })
        .await
        .expect("ack");
    wait_state(
        &mut discipline,
        "closed-1",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
}

/// A peer's `Deliver` call dropped while its custody command waits for the
/// store's writer (the sending node crashed mid-call): what that command
/// leases to a stream waiting on the empty inbox still reaches the
/// stream, instead of sitting leased to no one until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_leased_to_a_waiting_stream_reach_it_when_the_peers_call_is_dropped() {
    let fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    let broker = fed.node(SECURITY).broker.clone();
    let receiver = Principal {
        name: "backoffice".into(),
        roles: [Role::Receive].into(),
        receive_kinds: None,
    };
    let (_waiter, handed) = broker.wait_for_arrivals(&receiver, 600_000, 4);
    assert_eq!(broker.streams_waiting(), 1);

    // The writer is held, so the custody command waits behind it.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let store = broker.store().clone();
    let holding = tokio::spawn(async move {
        store
            .write(move |_| {
                let _ = held.recv();
                Ok(())
            })
            .await
    });
    let payload = b"the call is dropped";
    let h = header(
        "dropped-1",
        MessageKind::ClueTransfer,
        DISCIPLINE,
        SECURITY,
        payload,
    );
    let envelope = fed.signer(DISCIPLINE).seal(&h, payload.to_vec().into());
    let call = tokio::spawn({
        let broker = broker.clone();
        async move { broker.deliver(DISCIPLINE, vec![envelope]).await }
    });
    // The call took the waiting stream into its command: drop the call.
    let deadline = Instant::now() + 10 * SECOND;
    while broker.streams_waiting() > 0 {
        assert!(
            Instant::now() < deadline,
            "the delivery never took the stream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    assert!(
        call.await.is_err_and(|e| e.is_cancelled()),
        "the call was dropped"
    );
    release.send(()).expect("release the writer");
    holding.await.expect("join").expect("held write");

    let leasing = tokio::time::timeout(10 * SECOND, handed)
        .await
        .expect("the stream is answered in time")
        .expect("the stream is handed what was leased to it");
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let permits = (0..4)
        .map(|_| slots.clone().try_acquire_owned().expect("permit"))
        .collect();
    let batch = broker.take_handed(leasing, permits).expect("take");
    let ids: Vec<&str> = batch
        .leased
        .iter()
        .map(|l| l.header.message_id.as_str())
        .collect();
    assert_eq!(ids, ["dropped-1"]);
}
