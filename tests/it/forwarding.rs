//! How a forwarder paces its calls to a peer, seen from the peer's side:
//! a stand-in for the recipient node that takes `Peer.Deliver` calls and
//! answers none of them.

use crate::harness::*;
use cluebridge::model::{EnvelopeHeader, MessageKind};
use cluebridge::pb;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The message ids of each `Peer.Deliver` call that reached the stand-in.
type Calls = Arc<Mutex<Vec<Vec<String>>>>;

/// Serves TLS as node `id` on its federation port: every `Peer.Deliver`
/// call is recorded and held open unanswered; any other call is answered
/// UNIMPLEMENTED at once.
async fn unanswering_peer(fed: &TestFederation, id: &str) -> Calls {
    let read = |p: &str| std::fs::read_to_string(fed.dev.dir.join(p)).expect("read");
    let acceptor = cluebridge::crypto::tls::server_acceptor(
        &read("ca.pem"),
        &read(&format!("certs/{id}.pem")),
        &read(&format!("certs/{id}-key.pem")),
    )
    .expect("acceptor");
    let listener = TcpListener::bind(("127.0.0.1", fed.ports[id]))
        .await
        .expect("bind the peer's port");
    let calls = Calls::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, calls) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut connection) = h2::server::handshake(tls).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    if !request.uri().path().ends_with("/Deliver") {
                        let unimplemented = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "12")
                            .body(())
                            .expect("response");
                        let _ = respond.send_response(unimplemented, true);
                        continue;
                    }
                    held.push(respond);
                    let calls = calls.clone();
                    tokio::spawn(async move {
                        let ids = delivered_ids(request.into_body()).await;
                        calls.lock().expect("calls").push(ids);
                    });
                }
            });
        }
    });
    calls
}

/// The message ids a `Peer.Deliver` request body carries.
async fn delivered_ids(mut body: h2::RecvStream) -> Vec<String> {
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let request = pb::DeliverRequest::decode(&bytes[5..]).expect("a DeliverRequest");
    request
        .envelopes
        .iter()
        .map(|e| {
            EnvelopeHeader::decode(&e.header)
                .expect("header")
                .message_id
        })
        .collect()
}

async fn wait_for_call(calls: &Calls, carrying: &str) -> Vec<Vec<String>> {
    let deadline = tokio::time::Instant::now() + 20 * SECOND;
    loop {
        let seen = calls.lock().expect("calls").clone();
        if seen.iter().any(|ids| ids.iter().any(|id| id == carrying)) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Deliver call carried {carrying}; calls so far: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_message_accepted_while_a_batch_travels_leaves_without_waiting_for_its_answer() {
    // The peer never answers; the forwarder would give up on a call only
    // after a minute, far past this test's deadlines.
    let fed = TestFederation::start_with(
        |node| {
            fast(node);
            node.delivery.peer_timeout_ms = 60_000;
        },
        &[DISCIPLINE],
    )
    .await;
    let calls = unanswering_peer(&fed, SECURITY).await;
    let mut client = fed.client(DISCIPLINE);
    let first = submit_request("travels-first", MessageKind::ClueTransfer, SECURITY, b"one");
    client.submit(first).await.expect("first accepted");
    wait_for_call(&calls, "travels-first").await;

    let second = submit_request(
        "travels-second",
        MessageKind::ClueTransfer,
        SECURITY,
        b"two",
    );
    client.submit(second).await.expect("second accepted");
    let seen = wait_for_call(&calls, "travels-second").await;
    // The second went in a call of its own while the first stayed
    // unanswered: not resent with it after a failure.
    assert_eq!(
        seen,
        vec![
            vec!["travels-first".to_string()],
            vec!["travels-second".to_string()]
        ]
    );
}
