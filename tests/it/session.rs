//! `Broker.Session`: deliveries and settlements on one stream, each
//! settlement answered as its unary call would be.

use crate::harness::*;
use cluebridge::model::{MessageKind, ReceiptKind, SentState};
use cluebridge::pb;
use cluebridge::pb::session_event::Event;
use cluebridge::pb::settlement::Action;
use cluebridge::pb::settlement_outcome::Result as Outcome;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn settle(request_id: u64, d: &pb::Delivery, action: Action) -> pb::SessionRequest {
    pb::SessionRequest {
        request: Some(pb::session_request::Request::Settle(pb::Settlement {
            request_id,
            lease: lease_of(d),
            action: Some(action),
        })),
    }
}

fn open(max_outstanding: u32) -> pb::SessionRequest {
    pb::SessionRequest {
        request: Some(pb::session_request::Request::Open(pb::ReceiveRequest {
            max_outstanding,
            lease_seconds: 30,
        })),
    }
}

async fn next_event(events: &mut tonic::Streaming<pb::SessionEvent>) -> Event {
    tokio::time::timeout(10 * SECOND, events.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("event")
        .event
        .expect("an event")
}

fn kind(receipt: &pb::SignedReceipt) -> ReceiptKind {
    receipt_kinds(std::slice::from_ref(receipt))[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_delivers_and_settles_on_one_stream() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let ids = ["s-ack", "s-reject", "s-release", "s-extend"];
    for id in ids {
        let request = submit_request(id, MessageKind::ClueTransfer, SECURITY, b"s");
        submit(&mut discipline, request).await;
    }
    let mut security = fed.client(SECURITY);
    let (requests, rx) = mpsc::channel(16);
    requests.send(open(4)).await.expect("open");
    let mut events = security
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let mut delivered = HashMap::new();
    while delivered.len() < ids.len() {
        match next_event(&mut events).await {
            Event::Delivery(d) => delivered.insert(d.message_id.clone(), d),
            Event::Outcome(o) => panic!("an outcome before any settlement: {o:?}"),
        };
    }
    let stale = pb::Delivery {
        lease_id: delivered["s-ack"].lease_id ^ 1,
        ..delivered["s-ack"].clone()
    };
    let settlements = [
        settle(1, &delivered["s-ack"], Action::Ack(pb::AckAction {})),
        settle(
            2,
            &delivered["s-reject"],
            Action::RejectReason("not ours".into()),
        ),
        settle(3, &delivered["s-release"], Action::ReleaseDelayMs(0)),
        settle(4, &delivered["s-extend"], Action::ExtendLeaseSeconds(600)),
        settle(5, &delivered["s-ack"], Action::Ack(pb::AckAction {})),
        settle(6, &stale, Action::Ack(pb::AckAction {})),
    ];
    for s in settlements {
        requests.send(s).await.expect("settle");
    }
    let mut outcomes = HashMap::new();
    let mut redelivered = None;
    while outcomes.len() < 6 || redelivered.is_none() {
        match next_event(&mut events).await {
            Event::Outcome(o) => {
                outcomes.insert(o.request_id, o.result.expect("result"));
            }
            Event::Delivery(d) => redelivered = Some(d),
        }
    }
    let receipt = |id: u64| match &outcomes[&id] {
        Outcome::Receipt(r) => r.clone(),
        other => panic!("request {id}: {other:?}"),
    };
    assert_eq!(kind(&receipt(1)), ReceiptKind::Acknowledged);
    assert_eq!(
        receipt(5),
        receipt(1),
        "a repeated ack answers the first receipt"
    );
    assert_eq!(kind(&receipt(2)), ReceiptKind::Rejected);
    assert!(matches!(outcomes[&3], Outcome::Released(_)));
    match &outcomes[&4] {
        Outcome::Extended(e) => assert!(e.lease_expires_at_ms > cluebridge::now_ms() + 500_000),
        other => panic!("extend: {other:?}"),
    }
    match &outcomes[&6] {
        Outcome::Refused(r) => {
            assert_eq!(r.code, Code::FailedPrecondition as i32);
            assert!(r.message.contains("is stale"), "{}", r.message);
        }
        other => panic!("stale lease: {other:?}"),
    }
    // The released message came back on the session (attempt 2); the
    // session ends unsettled, and its lease goes back at once.
    let redelivered = redelivered.expect("redelivered");
    assert_eq!(
        (redelivered.message_id.as_str(), redelivered.attempt),
        ("s-release", 2)
    );
    drop(requests);
    while events.next().await.is_some() {}
    let mut stream = receiver(&mut fed.client(SECURITY), 4, 30).await;
    let mut seen = Vec::new();
    while !seen.contains(&"s-release".to_string()) {
        seen.push(next(&mut stream, 10 * SECOND).await.message_id);
    }
    wait_state(
        &mut discipline,
        "s-ack",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    wait_state(
        &mut discipline,
        "s-reject",
        SentState::Rejected,
        10 * SECOND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_must_open_first() {
    let fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    let (requests, rx) = mpsc::channel(4);
    let stray = pb::SessionRequest {
        request: Some(pb::session_request::Request::Settle(
            pb::Settlement::default(),
        )),
    };
    requests.send(stray).await.expect("send");
    let refused = fed
        .client(SECURITY)
        .session(ReceiverStream::new(rx))
        .await
        .expect_err("not opened");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("open"), "{}", refused.message());

    // Opened twice: the second `open` ends the session with the refusal.
    let (requests, rx) = mpsc::channel(4);
    requests.send(open(1)).await.expect("open");
    requests.send(open(1)).await.expect("open again");
    let mut events = fed
        .client(SECURITY)
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let ended = tokio::time::timeout(10 * SECOND, events.next())
        .await
        .expect("in time")
        .expect("an answer");
    let status = ended.expect_err("a second open");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("first request"),
        "{}",
        status.message()
    );
}
