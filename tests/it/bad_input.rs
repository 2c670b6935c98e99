//! The catalogue of bad input: every case gets the exact gRPC code, a
//! message that tells a person what was wrong, and changes nothing — the
//! stores of all four nodes (queues, states, receipts, every record) are
//! byte-for-byte the same before and after.
//!
//! The federation is prepared with a message delivered and leased twice
//! (so a stale lease exists), a message waiting in an inbox, a principal
//! limited to feedback, and a node whose principals may submit once per
//! second. Then each case runs against that state.

use crate::forge;
use crate::harness::*;
use cluebridge::client::Connection;
use cluebridge::config::{NodeFile, PrincipalFile};
use cluebridge::crypto::NodeSigner;
use cluebridge::crypto::certs::Ca;
use cluebridge::crypto::signing::{ENVELOPE_DOMAIN, RECEIPT_DOMAIN};
use cluebridge::model::{MessageKind, Receipt, ReceiptKind, SentState, sha256};
use cluebridge::now_ms;
use cluebridge::pb;
use cluebridge::pb::broker_client::BrokerClient;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

const FEEDBACK_READER: &str = "feedback-reader";
/// A second receiving system of public security: it must not touch the
/// leases of `backoffice`.
const OTHER_RECEIVER: &str = "other-receiver";

fn tune(n: &mut NodeFile) {
    if n.node_id == SECURITY {
        n.principals.push(PrincipalFile {
            name: FEEDBACK_READER.into(),
            roles: vec!["receive".into()],
            receive_kinds: Some(vec!["feedback".into()]),
        });
        n.principals.push(PrincipalFile {
            name: OTHER_RECEIVER.into(),
            roles: vec!["receive".into()],
            receive_kinds: None,
        });
    }
    if n.node_id == JUDICIAL {
        n.limits.submit_rate_per_sec = 1;
    }
}

/// The prepared federation.
struct World {
    fed: TestFederation,
    /// The first lease of `seed-1` at public security; it lapsed and the
    /// message went to another receiver.
    stale: pb::LeaseRef,
    /// The current lease of `seed-1`.
    live: pb::LeaseRef,
    /// Keeps the current lease's stream open.
    _stream: tonic::Streaming<pb::Delivery>,
}

async fn prepare() -> World {
    let fed = TestFederation::start_with(tune, &[DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("seed-1", MessageKind::ClueTransfer, SECURITY, b"evidence"),
    )
    .await;
    wait_state(&mut discipline, "seed-1", SentState::Delivered, 10 * SECOND).await;

    // First receiver: a one-second lease that lapses.
    let mut security = fed.client(SECURITY);
    let mut first = receiver(&mut security, 1, 1).await;
    let d1 = next(&mut first, 5 * SECOND).await;
    drop(first);
    // Second receiver gets it again, attempt 2, with a long lease.
    let mut second = receiver(&mut security, 1, 600).await;
    let d2 = next(&mut second, 10 * SECOND).await;
    assert_eq!((d2.message_id.as_str(), d2.attempt), ("seed-1", 2));

    // Judicial's one submit per second: used now, by a message that waits
    // in discipline's inbox.
    let mut judicial = fed.client(JUDICIAL);
    submit(
        &mut judicial,
        submit_request("seed-j", MessageKind::ClueTransfer, DISCIPLINE, b"a clue"),
    )
    .await;
    wait_state(&mut judicial, "seed-j", SentState::Delivered, 10 * SECOND).await;

    World {
        stale: lease_of(&d1).expect("lease"),
        live: lease_of(&d2).expect("lease"),
        fed,
        _stream: second,
    }
}

/// Waits until no receipt waits to go back at any node and two snapshots
/// in a row are equal: the prepared state has stopped moving.
async fn settle(fed: &TestFederation) {
    let deadline = std::time::Instant::now() + 20 * SECOND;
    let mut last = snapshot(fed);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = snapshot(fed);
        let waiting: usize = [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL]
            .iter()
            .flat_map(|n| {
                let store = fed.node(n).broker.store();
                [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL].map(|p| store.receipt_outbox_depth(p))
            })
            .sum();
        if now == last && waiting == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the federation never settled"
        );
        last = now;
    }
}

/// Every record of every node's store.
fn snapshot(fed: &TestFederation) -> BTreeMap<&'static str, [u8; 32]> {
    [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL]
        .into_iter()
        .map(|id| {
            let digest = fed
                .node(id)
                .broker
                .store()
                .content_digest()
                .expect("digest");
            (id, digest)
        })
        .collect()
}

fn err<T: std::fmt::Debug>(r: Result<T, Status>, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: was accepted: {v:?}"),
        Err(s) => s,
    }
}

/// A per-envelope refusal of `Peer.Deliver` as a status.
fn refusal(r: pb::DeliverResponse) -> Status {
    match r.outcomes.first().and_then(|o| o.outcome.clone()) {
        Some(pb::deliver_outcome::Outcome::Refused(r)) => {
            Status::new(Code::from(r.code), r.message)
        }
        other => panic!("envelope was not refused: {other:?}"),
    }
}

/// The refusal of every envelope of a `Peer.Deliver` batch (the first
/// one's as a status); panics if any envelope was taken.
fn every_refusal(r: pb::DeliverResponse) -> Status {
    assert!(
        r.outcomes
            .iter()
            .all(|o| matches!(o.outcome, Some(pb::deliver_outcome::Outcome::Refused(_)))),
        "an envelope was taken into custody: {r:?}"
    );
    refusal(r)
}

fn read_key(fed: &TestFederation, node: &str) -> String {
    std::fs::read_to_string(fed.dev.dir.join(format!("keys/{node}.ed25519"))).expect("key")
}

fn receipt_refusal(r: pb::ReturnReceiptsResponse) -> Status {
    match r.outcomes.first().and_then(|o| o.refused.clone()) {
        Some(r) => Status::new(Code::from(r.code), r.message),
        None => panic!("receipt was not refused"),
    }
}

fn connection(fed: &TestFederation, node: &str, cert: &str, key: &str) -> Connection {
    Connection {
        endpoint: format!("https://127.0.0.1:{}", fed.ports[node]),
        server_name: node.into(),
        ca_pem: std::fs::read_to_string(fed.dev.dir.join("ca.pem")).expect("ca"),
        cert_pem: cert.into(),
        key_pem: key.into(),
    }
}

/// The federation CA, able to issue more certificates.
fn federation_ca(fed: &TestFederation) -> Ca {
    let read = |p: &str| std::fs::read_to_string(fed.dev.dir.join(p)).expect("ca file");
    Ca::load(&read("ca.pem"), &read("ca-key.pem"), 1).expect("ca")
}

fn as_client(fed: &TestFederation, node: &str, name: &str) -> BrokerClient<Channel> {
    Connection::from_files(&fed.dev.client_as(node, name).expect("files"))
        .expect("connection")
        .broker()
        .expect("client")
}

async fn deliver_to_security(w: &World, as_node: &str, e: pb::SignedEnvelope) -> Status {
    refusal(
        w.fed
            .peer_as(as_node, SECURITY)
            .deliver(pb::DeliverRequest { envelopes: vec![e] })
            .await
            .expect("deliver call")
            .into_inner(),
    )
}

/// A sealed envelope discipline → public security, changed by `edit`.
fn envelope(
    w: &World,
    id: &str,
    edit: impl FnOnce(&mut cluebridge::model::EnvelopeHeader),
) -> pb::SignedEnvelope {
    let payload = b"evidence";
    let mut h = header(id, MessageKind::ClueTransfer, DISCIPLINE, SECURITY, payload);
    edit(&mut h);
    sealed(&w.fed.signer(DISCIPLINE), &h, payload)
}

fn unknown_lease(w: &World) -> Option<pb::LeaseRef> {
    Some(pb::LeaseRef {
        sender_node: DISCIPLINE.into(),
        message_id: "never-sent".into(),
        lease_id: w.live.lease_id,
    })
}

/// Runs one case and returns the refusal it got.
async fn attempt(w: &World, case: &str) -> Status {
    let fed = &w.fed;
    let mut d = fed.client(DISCIPLINE);
    let mut s = fed.client(SECURITY);
    let ct = MessageKind::ClueTransfer;
    let to_s = |id: &str| submit_request(id, ct, SECURITY, b"x");
    match case {
        // ------------------------------------------------ Broker.Submit
        "empty message id" => err(d.submit(to_s("")).await, case),
        "message id too long" => err(d.submit(to_s(&"m".repeat(129))).await, case),
        "badly formed message id" => err(d.submit(to_s("case 7/a")).await, case),
        "unknown kind" => {
            let mut r = to_s("k-1");
            r.kind = 42;
            err(d.submit(r).await, case)
        }
        "unknown recipient" => err(
            d.submit(submit_request("k-2", ct, "ministry-of-magic", b"x"))
                .await,
            case,
        ),
        "recipient is the sender's own node" => err(
            d.submit(submit_request("k-3", ct, DISCIPLINE, b"x")).await,
            case,
        ),
        "forbidden route" => err(
            d.submit(submit_request("k-4", ct, PERSONNEL, b"x")).await,
            case,
        ),
        "payload over the limit" => err(
            d.submit(submit_request(
                "k-5",
                ct,
                SECURITY,
                &vec![7; 1024 * 1024 + 1],
            ))
            .await,
            case,
        ),
        "subject too long" => {
            let mut r = to_s("k-6");
            r.subject = "s".repeat(257);
            err(d.submit(r).await, case)
        }
        "a control sequence in the subject" => {
            let mut r = to_s("k-10");
            r.subject = "title\u{1b}]0;owned\u{7}".into();
            err(d.submit(r).await, case)
        }
        "a right-to-left override in the case reference" => {
            let mut r = to_s("k-11");
            r.case_reference = "CASE-\u{202e}21".into();
            err(d.submit(r).await, case)
        }
        "a reply-by time before the message" => {
            let mut r = to_s("k-12");
            r.reply_by_ms = 1;
            err(d.submit(r).await, case)
        }
        "time to live beyond the maximum" => {
            let mut r = to_s("k-7");
            r.ttl_seconds = 10 * 365 * 24 * 3600;
            err(d.submit(r).await, case)
        }
        "same id with other content" => err(
            d.submit(submit_request("seed-1", ct, SECURITY, b"other evidence"))
                .await,
            case,
        ),
        "feedback naming an unknown message" => {
            let mut r = submit_request("k-8", MessageKind::Feedback, SECURITY, b"x");
            r.correlation_id = "no-such-message".into();
            err(d.submit(r).await, case)
        }
        "feedback naming a message the replier never received" => {
            // seed-1 went from discipline to public security; discipline
            // cannot answer its own message.
            let mut r = submit_request("k-9", MessageKind::Feedback, SECURITY, b"x");
            r.correlation_id = "seed-1".into();
            err(d.submit(r).await, case)
        }
        "rate limit exceeded" => {
            // Resubmitting the same message is idempotent, so only the
            // refusal can differ from the original.
            let mut judicial = fed.client(JUDICIAL);
            let again = submit_request("seed-j", ct, DISCIPLINE, b"a clue");
            for _ in 0..5 {
                if let Err(e) = judicial.submit(again.clone()).await {
                    return e;
                }
            }
            panic!("five submits within a moment all passed a limit of one per second");
        }
        "status of a message this agency did not send" => err(
            s.get_status(pb::GetStatusRequest {
                message_id: "seed-1".into(),
            })
            .await,
            case,
        ),
        // ------------------------------------------------ Broker, receiving
        "ack of an unknown id" => err(
            s.ack(pb::AckRequest {
                lease: unknown_lease(w),
            })
            .await,
            case,
        ),
        "reject of an unknown id" => err(
            s.reject(pb::RejectRequest {
                lease: unknown_lease(w),
                reason: "not ours".into(),
            })
            .await,
            case,
        ),
        "release of an unknown id" => err(
            s.release(pb::ReleaseRequest {
                lease: unknown_lease(w),
                delay_ms: 0,
            })
            .await,
            case,
        ),
        "extend of an unknown id" => err(
            s.extend_lease(pb::ExtendLeaseRequest {
                lease: unknown_lease(w),
                lease_seconds: 10,
            })
            .await,
            case,
        ),
        "ack with a stale lease after redelivery" => err(
            s.ack(pb::AckRequest {
                lease: Some(w.stale.clone()),
            })
            .await,
            case,
        ),
        "ack with a guessed lease id" => {
            let mut guessed = w.live.clone();
            guessed.lease_id = guessed.lease_id.wrapping_add(1);
            err(
                s.ack(pb::AckRequest {
                    lease: Some(guessed),
                })
                .await,
                case,
            )
        }
        "ack of another principal's lease" => err(
            as_client(fed, SECURITY, OTHER_RECEIVER)
                .ack(pb::AckRequest {
                    lease: Some(w.live.clone()),
                })
                .await,
            case,
        ),
        "reject of another principal's lease" => err(
            as_client(fed, SECURITY, OTHER_RECEIVER)
                .reject(pb::RejectRequest {
                    lease: Some(w.live.clone()),
                    reason: "taken over".into(),
                })
                .await,
            case,
        ),
        "release of another principal's lease" => err(
            as_client(fed, SECURITY, OTHER_RECEIVER)
                .release(pb::ReleaseRequest {
                    lease: Some(w.live.clone()),
                    delay_ms: 3_600_000,
                })
                .await,
            case,
        ),
        "extend of another principal's lease" => err(
            as_client(fed, SECURITY, OTHER_RECEIVER)
                .extend_lease(pb::ExtendLeaseRequest {
                    lease: Some(w.live.clone()),
                    lease_seconds: 3600,
                })
                .await,
            case,
        ),
        "ack without a lease" => err(s.ack(pb::AckRequest { lease: None }).await, case),
        "reject with a reason that clears the screen" => err(
            s.reject(pb::RejectRequest {
                lease: Some(w.live.clone()),
                reason: "no\u{1b}[2J".into(),
            })
            .await,
            case,
        ),
        "reject without a reason" => err(
            s.reject(pb::RejectRequest {
                lease: Some(w.live.clone()),
                reason: "  ".into(),
            })
            .await,
            case,
        ),
        "release with a delay out of bounds" => err(
            s.release(pb::ReleaseRequest {
                lease: Some(w.live.clone()),
                delay_ms: 3_600_001,
            })
            .await,
            case,
        ),
        "extend beyond the maximum lease" => err(
            s.extend_lease(pb::ExtendLeaseRequest {
                lease: Some(w.live.clone()),
                lease_seconds: 3601,
            })
            .await,
            case,
        ),
        "receive with too many outstanding" => err(
            s.receive(pb::ReceiveRequest {
                max_outstanding: 1025,
                lease_seconds: 0,
            })
            .await,
            case,
        ),
        "ack by a receiver limited to other kinds" => err(
            as_client(fed, SECURITY, FEEDBACK_READER)
                .ack(pb::AckRequest {
                    lease: Some(w.live.clone()),
                })
                .await,
            case,
        ),
        // ------------------------------------------------ Peer.Deliver
        "truncated header bytes" => {
            let mut e = envelope(w, "p-1", |_| {});
            e.header.truncate(e.header.len() / 2);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "garbage bytes on Peer.Deliver" => {
            let e = pb::SignedEnvelope {
                header: (0..200u8).map(|i| i.wrapping_mul(37)).collect(),
                signature: vec![0xAB; 64].into(),
                payload: vec![1, 2, 3].into(),
                batch: None,
            };
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "signature by the wrong node's key" => {
            let payload = b"evidence";
            let h = header("p-3", ct, DISCIPLINE, SECURITY, payload);
            let judicial_key =
                std::fs::read_to_string(fed.dev.dir.join("keys/judicial.ed25519")).expect("key");
            let forged =
                NodeSigner::from_text(DISCIPLINE, "discipline-k1", &judicial_key).expect("key");
            deliver_to_security(w, DISCIPLINE, sealed(&forged, &h, payload)).await
        }
        "signature with an unknown key id" => {
            let payload = b"evidence";
            let h = header("p-4", ct, DISCIPLINE, SECURITY, payload);
            let h = cluebridge::model::EnvelopeHeader {
                signing_key_id: "discipline-k9".into(),
                ..h
            };
            let key =
                std::fs::read_to_string(fed.dev.dir.join("keys/discipline.ed25519")).expect("key");
            let signer = NodeSigner::from_text(DISCIPLINE, "discipline-k9", &key).expect("key");
            deliver_to_security(w, DISCIPLINE, sealed(&signer, &h, payload)).await
        }
        "flipped signature bit" => {
            let mut e = envelope(w, "p-5", |_| {});
            e.signature = tampered(&e.signature, 33, 0x80);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "payload digest mismatch" => {
            let mut e = envelope(w, "p-6", |_| {});
            e.payload = tampered(&e.payload, 0, 0x01);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "envelope already expired" => {
            let e = envelope(w, "p-7", |h| {
                h.created_at_ms = now_ms() - 7_200_000;
                h.expires_at_ms = now_ms() - 3_600_000;
            });
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "created_at beyond the allowed skew" => {
            let e = envelope(w, "p-8", |h| h.created_at_ms = now_ms() + 600_000);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "forbidden route on Peer.Deliver" => {
            let payload = b"evidence";
            let h = header("p-9", ct, PERSONNEL, SECURITY, payload);
            deliver_to_security(w, PERSONNEL, sealed(&fed.signer(PERSONNEL), &h, payload)).await
        }
        "sender differs from the peer's certificate" => {
            let e = envelope(w, "p-10", |_| {});
            deliver_to_security(w, JUDICIAL, e).await
        }
        "envelope addressed to another node" => {
            let payload = b"evidence";
            let h = header("p-11", ct, DISCIPLINE, JUDICIAL, payload);
            deliver_to_security(w, DISCIPLINE, sealed(&fed.signer(DISCIPLINE), &h, payload)).await
        }
        "feedback via Peer naming a message never sent" => {
            let e = envelope(w, "p-12", |h| {
                h.kind = MessageKind::Feedback;
                h.correlation_id = "never-sent".into();
            });
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "envelopes whose signature R carries a small-order point" => {
            // A hostile member signs with its own key and adds the point of
            // order 2 to R. A batch equation over two such signatures passes
            // whenever the sum of its random coefficients is even (one call
            // in two); ten calls would all be refused by chance one time in
            // a thousand. Strict verification refuses every one.
            let signer = fed.signer(DISCIPLINE);
            let seed = forge::seed_of(&read_key(fed, DISCIPLINE));
            let mut first = None;
            for call in 0..10 {
                let envelopes = (0..2)
                    .map(|i| {
                        let mut e = envelope(w, &format!("p-14-{call}-{i}"), |_| {});
                        let input = [ENVELOPE_DOMAIN, &e.header].concat();
                        e.signature = forge::torsion_signature(&signer, &seed, &input, 4).into();
                        e
                    })
                    .collect();
                let refused = every_refusal(
                    fed.peer_as(DISCIPLINE, SECURITY)
                        .deliver(pb::DeliverRequest { envelopes })
                        .await
                        .expect("deliver call")
                        .into_inner(),
                );
                first.get_or_insert(refused);
            }
            first.expect("ten calls")
        }
        "a peer's subject beyond the limit" => {
            let e = envelope(w, "p-20", |h| h.subject = "s".repeat(8 * 1024));
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's case reference beyond the limit" => {
            let e = envelope(w, "p-21", |h| h.case_reference = "c".repeat(129));
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's content type beyond the limit" => {
            let e = envelope(w, "p-22", |h| h.content_type = "t".repeat(129));
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's subject with a control sequence" => {
            let e = envelope(w, "p-23", |h| h.subject = "\u{1b}[2Jclean".into());
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's principal with a right-to-left override" => {
            let e = envelope(w, "p-24", |h| {
                h.sender_principal = "back\u{202e}office".into()
            });
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's empty subject" => {
            let e = envelope(w, "p-25", |h| h.subject = " ".into());
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's created_at of zero" => {
            let e = envelope(w, "p-26", |h| h.created_at_ms = 0);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's expires_at at the end of time" => {
            let e = envelope(w, "p-27", |h| h.expires_at_ms = u64::MAX);
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's expires_at before its created_at" => {
            let e = envelope(w, "p-28", |h| {
                h.created_at_ms = now_ms() + 60_000;
                h.expires_at_ms = now_ms() + 30_000;
            });
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's feedback-only field on a clue transfer" => {
            let e = envelope(w, "p-29", |h| h.correlation_id = "seed-1".into());
            deliver_to_security(w, DISCIPLINE, e).await
        }
        "a peer's receipt with a control sequence in its reason" => {
            let status = d
                .get_status(pb::GetStatusRequest {
                    message_id: "seed-1".into(),
                })
                .await
                .expect("status")
                .into_inner();
            let receipt = Receipt {
                message_id: "seed-1".into(),
                sender_node: DISCIPLINE.into(),
                kind: ReceiptKind::Rejected,
                issuer_node: SECURITY.into(),
                issued_at_ms: now_ms(),
                reason: "bad\u{1b}]0;title\u{7}".into(),
                header_sha256: sha256(&status.envelope_header),
                signing_key_id: "public_security-k1".into(),
                attempt: 2,
            };
            receipt_refusal(
                fed.peer_as(SECURITY, DISCIPLINE)
                    .return_receipts(pb::ReturnReceiptsRequest {
                        receipts: vec![fed.signer(SECURITY).sign_receipt(&receipt).to_wire()],
                    })
                    .await
                    .expect("return receipts call")
                    .into_inner(),
            )
        }
        "too many envelopes in one Peer call" => {
            let e = envelope(w, "p-13", |_| {});
            err(
                fed.peer_as(DISCIPLINE, SECURITY)
                    .deliver(pb::DeliverRequest {
                        envelopes: vec![e; 1025],
                    })
                    .await,
                case,
            )
        }
        // ------------------------------------------------ Peer.ReturnReceipts
        "a receipt from a node that was not the recipient" => {
            // Judicial signs a "delivered" receipt for seed-1, which went
            // to public security.
            let status = d
                .get_status(pb::GetStatusRequest {
                    message_id: "seed-1".into(),
                })
                .await
                .expect("status")
                .into_inner();
            let receipt = Receipt {
                message_id: "seed-1".into(),
                sender_node: DISCIPLINE.into(),
                kind: ReceiptKind::Acknowledged,
                issuer_node: JUDICIAL.into(),
                issued_at_ms: now_ms(),
                reason: String::new(),
                header_sha256: sha256(&status.envelope_header),
                signing_key_id: "judicial-k1".into(),
                attempt: 1,
            };
            let signed = fed.signer(JUDICIAL).sign_receipt(&receipt);
            receipt_refusal(
                fed.peer_as(JUDICIAL, DISCIPLINE)
                    .return_receipts(pb::ReturnReceiptsRequest {
                        receipts: vec![signed.to_wire()],
                    })
                    .await
                    .expect("return receipts call")
                    .into_inner(),
            )
        }
        "a receipt returned by a node that did not issue it" => {
            let status = d
                .get_status(pb::GetStatusRequest {
                    message_id: "seed-1".into(),
                })
                .await
                .expect("status")
                .into_inner();
            let delivered = status
                .receipts
                .into_iter()
                .map(cluebridge::model::SignedReceipt::from_wire)
                .find(|r| r.open().expect("receipt").kind == ReceiptKind::Delivered)
                .expect("delivered receipt");
            receipt_refusal(
                fed.peer_as(JUDICIAL, DISCIPLINE)
                    .return_receipts(pb::ReturnReceiptsRequest {
                        receipts: vec![delivered.to_wire()],
                    })
                    .await
                    .expect("return receipts call")
                    .into_inner(),
            )
        }
        "an acknowledged receipt whose signature R carries a small-order point" => {
            let status = d
                .get_status(pb::GetStatusRequest {
                    message_id: "seed-1".into(),
                })
                .await
                .expect("status")
                .into_inner();
            let signer = fed.signer(SECURITY);
            let seed = forge::seed_of(&read_key(fed, SECURITY));
            let mut first = None;
            for _ in 0..10 {
                let receipts = (0..2)
                    .map(|_| {
                        let receipt = Receipt {
                            message_id: "seed-1".into(),
                            sender_node: DISCIPLINE.into(),
                            kind: ReceiptKind::Acknowledged,
                            issuer_node: SECURITY.into(),
                            issued_at_ms: now_ms(),
                            reason: String::new(),
                            header_sha256: sha256(&status.envelope_header),
                            signing_key_id: "public_security-k1".into(),
                            attempt: 2,
                        };
                        let mut signed = signer.sign_receipt(&receipt);
                        let input = [RECEIPT_DOMAIN, &signed.receipt].concat();
                        signed.signature = forge::torsion_signature(&signer, &seed, &input, 4);
                        signed.to_wire()
                    })
                    .collect();
                let answer = fed
                    .peer_as(SECURITY, DISCIPLINE)
                    .return_receipts(pb::ReturnReceiptsRequest { receipts })
                    .await
                    .expect("return receipts call")
                    .into_inner();
                assert!(
                    answer.outcomes.iter().all(|o| o.refused.is_some()),
                    "a forged receipt was stored: {answer:?}"
                );
                first.get_or_insert(receipt_refusal(answer));
            }
            first.expect("ten calls")
        }
        // ------------------------------------------------ certificates, roles
        "no client certificate" => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read_to_string(fed.dev.dir.join("ca.pem")).expect("ca"),
                ))
                .domain_name(SECURITY);
            let channel =
                Endpoint::from_shared(format!("https://127.0.0.1:{}", fed.ports[SECURITY]))
                    .expect("endpoint")
                    .tls_config(tls)
                    .expect("tls")
                    .connect_lazy();
            err(BrokerClient::new(channel).submit(to_s("c-1")).await, case)
        }
        "a health check without a certificate" => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read_to_string(fed.dev.dir.join("ca.pem")).expect("ca"),
                ))
                .domain_name(SECURITY);
            let channel =
                Endpoint::from_shared(format!("https://127.0.0.1:{}", fed.ports[SECURITY]))
                    .expect("endpoint")
                    .tls_config(tls)
                    .expect("tls")
                    .connect_lazy();
            err(
                tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await,
                case,
            )
        }
        "a certificate from a foreign CA" => {
            let foreign = Ca::generate("elsewhere", 1).expect("ca");
            let cert = foreign.issue_client(SECURITY, "backoffice").expect("cert");
            let c = connection(fed, SECURITY, &cert.cert_pem, &cert.key_pem);
            err(c.broker().expect("client").submit(to_s("c-2")).await, case)
        }
        "an expired client certificate" => {
            let now = time::OffsetDateTime::now_utc();
            let cert = federation_ca(fed)
                .valid_between(
                    now - time::Duration::days(30),
                    now - time::Duration::days(1),
                )
                .issue_client(SECURITY, "backoffice")
                .expect("cert");
            let c = connection(fed, SECURITY, &cert.cert_pem, &cert.key_pem);
            err(c.broker().expect("client").submit(to_s("c-8")).await, case)
        }
        "a client certificate calling Peer" => err(
            fed.connection(SECURITY)
                .peer()
                .expect("client")
                .deliver(pb::DeliverRequest {
                    envelopes: vec![envelope(w, "c-3", |_| {})],
                })
                .await,
            case,
        ),
        "a node certificate calling Broker" => {
            let read = |p: &str| std::fs::read_to_string(fed.dev.dir.join(p)).expect("file");
            let c = connection(
                fed,
                SECURITY,
                &read("certs/discipline.pem"),
                &read("certs/discipline-key.pem"),
            );
            err(c.broker().expect("client").submit(to_s("c-4")).await, case)
        }
        "a principal without the role for the call" => err(
            as_client(fed, DISCIPLINE, cluebridge::devfed::OPERATOR_NAME)
                .submit(to_s("c-5"))
                .await,
            case,
        ),
        "a principal of another node" => {
            let files = fed.dev.client(JUDICIAL).expect("files");
            let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("file");
            let c = connection(fed, SECURITY, &read(&files.cert), &read(&files.key));
            err(c.broker().expect("client").submit(to_s("c-6")).await, case)
        }
        "a client the node file does not list" => {
            let cert = federation_ca(fed)
                .issue_client(SECURITY, "stranger")
                .expect("cert");
            let c = connection(fed, SECURITY, &cert.cert_pem, &cert.key_pem);
            err(c.broker().expect("client").submit(to_s("c-7")).await, case)
        }
        other => panic!("no such case {other:?}"),
    }
}

/// (case, expected code, what the message must say)
const CATALOGUE: &[(&str, Code, &str)] = &[
    (
        "empty message id",
        Code::InvalidArgument,
        "message_id is empty",
    ),
    (
        "message id too long",
        Code::InvalidArgument,
        "message_id is 129 characters long; at most 128",
    ),
    (
        "badly formed message id",
        Code::InvalidArgument,
        "contains ' '; only letters, digits",
    ),
    (
        "unknown kind",
        Code::InvalidArgument,
        "unknown message kind 42",
    ),
    (
        "unknown recipient",
        Code::NotFound,
        "\"ministry-of-magic\" is not in the federation",
    ),
    (
        "recipient is the sender's own node",
        Code::InvalidArgument,
        "is this node",
    ),
    (
        "forbidden route",
        Code::PermissionDenied,
        "route policy forbids clue_transfer from a discipline agency to a personnel agency",
    ),
    (
        "payload over the limit",
        Code::ResourceExhausted,
        "payload is 1048577 bytes; this node accepts at most 1048576",
    ),
    ("subject too long", Code::InvalidArgument, "subject"),
    (
        "a control sequence in the subject",
        Code::InvalidArgument,
        "subject contains the control character U+001B at byte 5",
    ),
    (
        "a right-to-left override in the case reference",
        Code::InvalidArgument,
        "case_reference contains the control character U+202E",
    ),
    (
        "a reply-by time before the message",
        Code::InvalidArgument,
        "reply_by_ms 1 is before created_at_ms",
    ),
    (
        "time to live beyond the maximum",
        Code::InvalidArgument,
        "exceeds this node's maximum",
    ),
    ("same id with other content", Code::AlreadyExists, "seed-1"),
    (
        "feedback naming an unknown message",
        Code::FailedPrecondition,
        "no message \"no-such-message\"",
    ),
    (
        "feedback naming a message the replier never received",
        Code::FailedPrecondition,
        "feedback must answer a message that public_security sent",
    ),
    (
        "rate limit exceeded",
        Code::ResourceExhausted,
        "exceeded its submit rate of 1 per second",
    ),
    (
        "status of a message this agency did not send",
        Code::NotFound,
        "seed-1",
    ),
    (
        "ack of an unknown id",
        Code::NotFound,
        "no message discipline/never-sent in this node's custody",
    ),
    (
        "reject of an unknown id",
        Code::NotFound,
        "no message discipline/never-sent",
    ),
    (
        "release of an unknown id",
        Code::NotFound,
        "no message discipline/never-sent",
    ),
    (
        "extend of an unknown id",
        Code::NotFound,
        "no message discipline/never-sent",
    ),
    (
        "ack with a stale lease after redelivery",
        Code::FailedPrecondition,
        "of discipline/seed-1 is stale",
    ),
    (
        "ack with a guessed lease id",
        Code::FailedPrecondition,
        "of discipline/seed-1 is stale: it lapsed or was released",
    ),
    (
        "ack of another principal's lease",
        Code::PermissionDenied,
        "of discipline/seed-1 is not your lease",
    ),
    (
        "reject of another principal's lease",
        Code::PermissionDenied,
        "is not your lease",
    ),
    (
        "release of another principal's lease",
        Code::PermissionDenied,
        "is not your lease",
    ),
    (
        "extend of another principal's lease",
        Code::PermissionDenied,
        "is not your lease",
    ),
    (
        "ack without a lease",
        Code::InvalidArgument,
        "lease is required",
    ),
    (
        "reject with a reason that clears the screen",
        Code::InvalidArgument,
        "reason contains the control character U+001B",
    ),
    (
        "reject without a reason",
        Code::InvalidArgument,
        "a rejection needs a reason",
    ),
    (
        "release with a delay out of bounds",
        Code::InvalidArgument,
        "release delay 3600001 ms exceeds the maximum of 3600000 ms",
    ),
    (
        "extend beyond the maximum lease",
        Code::InvalidArgument,
        "lease of 3601 s exceeds this node's maximum of 3600 s",
    ),
    (
        "receive with too many outstanding",
        Code::InvalidArgument,
        "max_outstanding 1025 exceeds this node's limit of 1024",
    ),
    (
        "ack by a receiver limited to other kinds",
        Code::PermissionDenied,
        "may not receive clue_transfer messages",
    ),
    ("truncated header bytes", Code::InvalidArgument, "header"),
    (
        "garbage bytes on Peer.Deliver",
        Code::InvalidArgument,
        "header",
    ),
    (
        "signature by the wrong node's key",
        Code::PermissionDenied,
        "signature does not verify with key \"discipline-k1\" of node \"discipline\"",
    ),
    (
        "signature with an unknown key id",
        Code::PermissionDenied,
        "has no signing key with id \"discipline-k9\"",
    ),
    (
        "flipped signature bit",
        Code::PermissionDenied,
        "signature does not verify",
    ),
    ("payload digest mismatch", Code::InvalidArgument, "SHA-256"),
    (
        "envelope already expired",
        Code::FailedPrecondition,
        "expired at",
    ),
    (
        "created_at beyond the allowed skew",
        Code::InvalidArgument,
        "ms of clock skew is allowed",
    ),
    (
        "forbidden route on Peer.Deliver",
        Code::PermissionDenied,
        "route policy forbids clue_transfer from a personnel agency",
    ),
    (
        "sender differs from the peer's certificate",
        Code::PermissionDenied,
        "names sender node \"discipline\" but was delivered by node \"judicial\"",
    ),
    (
        "envelope addressed to another node",
        Code::InvalidArgument,
        "addressed to node \"judicial\"",
    ),
    (
        "feedback via Peer naming a message never sent",
        Code::PermissionDenied,
        "which this node never sent",
    ),
    (
        "envelopes whose signature R carries a small-order point",
        Code::PermissionDenied,
        "envelope header signature does not verify with key \"discipline-k1\"",
    ),
    (
        "an acknowledged receipt whose signature R carries a small-order point",
        Code::PermissionDenied,
        "receipt signature does not verify with key \"public_security-k1\"",
    ),
    (
        "a peer's subject beyond the limit",
        Code::InvalidArgument,
        "subject is 8192 bytes long; the limit is 256",
    ),
    (
        "a peer's case reference beyond the limit",
        Code::InvalidArgument,
        "case_reference is 129 bytes long; the limit is 128",
    ),
    (
        "a peer's content type beyond the limit",
        Code::InvalidArgument,
        "content_type is 129 bytes long; the limit is 128",
    ),
    (
        "a peer's subject with a control sequence",
        Code::InvalidArgument,
        "subject contains the control character U+001B at byte 0",
    ),
    (
        "a peer's principal with a right-to-left override",
        Code::InvalidArgument,
        "sender_principal",
    ),
    (
        "a peer's empty subject",
        Code::InvalidArgument,
        "subject is empty",
    ),
    (
        "a peer's created_at of zero",
        Code::InvalidArgument,
        "created_at_ms is 0",
    ),
    (
        "a peer's expires_at at the end of time",
        Code::InvalidArgument,
        "this node's maximum time to live is 7776000 s",
    ),
    (
        "a peer's expires_at before its created_at",
        Code::InvalidArgument,
        "is not after created_at_ms",
    ),
    (
        "a peer's feedback-only field on a clue transfer",
        Code::InvalidArgument,
        "correlation_id is only for feedback",
    ),
    (
        "a peer's receipt with a control sequence in its reason",
        Code::InvalidArgument,
        "reason contains the control character U+001B",
    ),
    (
        "too many envelopes in one Peer call",
        Code::ResourceExhausted,
        "1025 envelopes in one call; at most 1024",
    ),
    (
        "a receipt from a node that was not the recipient",
        Code::PermissionDenied,
        "but the message was sent to \"public_security\"",
    ),
    (
        "a receipt returned by a node that did not issue it",
        Code::PermissionDenied,
        "a node returns only its own receipts",
    ),
    (
        "no client certificate",
        Code::Unauthenticated,
        "no client certificate",
    ),
    (
        "a health check without a certificate",
        Code::Unauthenticated,
        "no client certificate",
    ),
    (
        "a certificate from a foreign CA",
        Code::Unauthenticated,
        "was not issued by this federation's CA",
    ),
    (
        "an expired client certificate",
        Code::Unauthenticated,
        "the certificate expired at",
    ),
    (
        "a client certificate calling Peer",
        Code::PermissionDenied,
        "the Peer service is for federation nodes",
    ),
    (
        "a node certificate calling Broker",
        Code::PermissionDenied,
        "presented a node certificate",
    ),
    (
        "a principal without the role for the call",
        Code::PermissionDenied,
        "principal operator lacks the submit role",
    ),
    (
        "a principal of another node",
        Code::PermissionDenied,
        "client backoffice is a principal of node \"judicial\"",
    ),
    (
        "a client the node file does not list",
        Code::PermissionDenied,
        "client stranger is not a principal of node \"public_security\"",
    ),
];

/// Whether a refusal about a lease tells its state or attempt, which
/// belong to the lease's holder.
fn reveals_receiving(message: &str) -> bool {
    ["Leased", "Inbox", "attempt", "leased by", "acknowledged"]
        .iter()
        .any(|w| message.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_clear_status_and_changes_nothing() {
    let w = prepare().await;
    // Lease ids are unguessable: two successive ones are far apart.
    assert!(
        w.stale.lease_id.abs_diff(w.live.lease_id) > 1 << 32,
        "lease ids {} and {} are neighbours",
        w.stale.lease_id,
        w.live.lease_id
    );
    // Until the last receipts are back and nothing moves any more.
    settle(&w.fed).await;
    let mut failures = Vec::new();
    for (case, code, says) in CATALOGUE {
        let before = snapshot(&w.fed);
        let status = attempt(&w, case).await;
        let after = snapshot(&w.fed);
        if status.code() != *code {
            failures.push(format!(
                "{case}: code {:?}, expected {code:?} ({})",
                status.code(),
                status.message()
            ));
        } else if !status.message().contains(says) {
            failures.push(format!(
                "{case}: message {:?} does not say {says:?}",
                status.message()
            ));
        } else if case.contains("lease") && reveals_receiving(status.message()) {
            failures.push(format!(
                "{case}: message {:?} tells how the message is being received",
                status.message()
            ));
        }
        for (node, digest) in &before {
            if after[node] != *digest {
                failures.push(format!("{case}: the store of {node} changed"));
            }
        }
    }
    assert!(
        CATALOGUE.len() >= 30,
        "the catalogue has {} cases",
        CATALOGUE.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CATALOGUE.len(),
        failures.join("\n")
    );
    // The prepared state is intact: the live lease still settles.
    let mut s = w.fed.client(SECURITY);
    s.ack(pb::AckRequest {
        lease: Some(w.live.clone()),
    })
    .await
    .expect("the live lease is still good");
}
