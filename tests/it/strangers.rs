//! Hostile callers at the transport: a caller the node will refuse is
//! refused before its request body is read, so a stranger streaming large
//! bodies cannot pin the node's memory; a request over the size limit gets
//! `RESOURCE_EXHAUSTED` naming the limit; a legitimate request of the
//! largest allowed size still passes.

use crate::crash::wait_serving;
use crate::harness::*;
use crate::raw::{self, Who};
use bytes::Bytes;
use cluebridge::config::{Limits, NodeFile};
use cluebridge::model::MessageKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;

const MIB: u32 = 1024 * 1024;

/// One case: who calls which method, what it must get back.
struct Case {
    what: &'static str,
    who: Who,
    path: &'static str,
    code: Code,
    says: &'static str,
}

/// Every caller the gate refuses — and the oversized request of a
/// legitimate one — is answered while its body is still open: the node
/// did not wait for the body. (A node that did would never answer: the
/// body is never finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_caller_is_refused_before_its_body_is_read() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let foreign = cluebridge::crypto::certs::Ca::generate("elsewhere", 1).expect("ca");
    let foreign = foreign
        .issue_client(DISCIPLINE, "backoffice")
        .expect("cert");
    let limit = Limits::default().message_limits().client;
    let submit = "/cluebridge.v1.Broker/Submit";
    let cases = [
        Case {
            what: "no certificate on Broker",
            who: Who::Nobody,
            path: submit,
            code: Code::Unauthenticated,
            says: "no client certificate",
        },
        Case {
            what: "no certificate on Peer",
            who: Who::Nobody,
            path: "/cluebridge.v1.Peer/Deliver",
            code: Code::Unauthenticated,
            says: "no client certificate",
        },
        Case {
            what: "no certificate on health",
            who: Who::Nobody,
            path: "/grpc.health.v1.Health/Check",
            code: Code::Unauthenticated,
            says: "no client certificate",
        },
        Case {
            what: "a certificate from a foreign CA",
            who: Who::Pem(foreign.cert_pem.clone(), foreign.key_pem.clone()),
            path: submit,
            code: Code::Unauthenticated,
            says: "was not issued by this federation's CA",
        },
        Case {
            what: "another node's client",
            who: Who::principal(&fed, JUDICIAL, "backoffice"),
            path: submit,
            code: Code::PermissionDenied,
            says: "client backoffice is a principal of node \"judicial\"",
        },
        Case {
            what: "a node certificate on Broker",
            who: Who::node(&fed, SECURITY),
            path: submit,
            code: Code::PermissionDenied,
            says: "presented a node certificate",
        },
        Case {
            what: "a node certificate on Admin",
            who: Who::node(&fed, SECURITY),
            path: "/cluebridge.v1.Admin/Requeue",
            code: Code::PermissionDenied,
            says: "presented a node certificate",
        },
        Case {
            what: "a node certificate on Audit",
            who: Who::node(&fed, SECURITY),
            path: "/cluebridge.v1.Audit/GetBundle",
            code: Code::PermissionDenied,
            says: "presented a node certificate",
        },
        Case {
            what: "a client certificate on Peer",
            who: Who::principal(&fed, DISCIPLINE, "backoffice"),
            path: "/cluebridge.v1.Peer/Deliver",
            code: Code::PermissionDenied,
            says: "the Peer service is for federation nodes",
        },
        Case {
            what: "a principal without the role",
            who: Who::principal(&fed, DISCIPLINE, "operator"),
            path: submit,
            code: Code::PermissionDenied,
            says: "principal operator lacks the submit role",
        },
        Case {
            what: "a principal's request over the size limit",
            who: Who::principal(&fed, DISCIPLINE, "backoffice"),
            path: submit,
            code: Code::ResourceExhausted,
            says: "this node's size limit for this call is",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let before = fed.node(DISCIPLINE).broker.store().content_digest();
        let mut send = raw::h2(&fed, DISCIPLINE, &case.who).await;
        // 60 MiB announced, 16 KiB sent, the stream left open.
        let (response, _body) = raw::open_call(&mut send, case.path, 60 * MIB, 16 * 1024)
            .await
            .expect("open call");
        let answer = tokio::time::timeout(20 * SECOND, response).await;
        let Ok(Ok(answer)) = answer else {
            failures.push(format!("{}: no answer while the body was open", case.what));
            continue;
        };
        match raw::status_of(&answer) {
            Some(s) if s.code() == case.code && s.message().contains(case.says) => {}
            other => failures.push(format!(
                "{}: got {other:?}, expected {:?} saying {:?}",
                case.what, case.code, case.says
            )),
        }
        let after = fed.node(DISCIPLINE).broker.store().content_digest();
        if before.expect("digest") != after.expect("digest") {
            failures.push(format!("{}: the store changed", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} refusals, each answered with its body open; client size limit {limit} bytes",
        cases.len()
    );
}

/// Peer batches of 4 at most, so that a full batch of the largest payloads
/// can be sent in a test.
fn small_batches(n: &mut NodeFile) {
    n.limits.max_peer_batch = 4;
    n.delivery.batch_size = 4;
}

/// A 65 MiB `Submit` gets `RESOURCE_EXHAUSTED` naming the limit and changes
/// nothing; the largest legitimate `Submit` and the largest `Peer` batch
/// pass the size limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_refuse_with_resource_exhausted_and_fit_the_largest_legitimate_call() {
    let fed = TestFederation::start_with(small_batches, &[DISCIPLINE, SECURITY]).await;
    let limits = fed.config(DISCIPLINE).limits;
    let sizes = limits.message_limits();
    let mut client = fed.client(DISCIPLINE);

    let before = fed.node(DISCIPLINE).broker.store().content_digest();
    let huge = vec![7u8; 65 * MIB as usize];
    let status = client
        .submit(submit_request(
            "huge",
            MessageKind::ClueTransfer,
            SECURITY,
            &huge,
        ))
        .await
        .expect_err("65 MiB refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let says = format!(
        "this node's size limit for this call is {} bytes",
        sizes.client
    );
    assert!(status.message().contains(&says), "{}", status.message());
    assert!(
        status.message().contains("the request is 681"),
        "{}",
        status.message()
    );
    let after = fed.node(DISCIPLINE).broker.store().content_digest();
    assert_eq!(before.expect("digest"), after.expect("digest"));

    // The largest legitimate Submit: a full payload, every text field at
    // its longest (ids at 128 characters).
    let mut largest = submit_request(
        &"m".repeat(128),
        MessageKind::ClueTransfer,
        SECURITY,
        &vec![1u8; limits.max_payload_bytes],
    );
    largest.subject = "é".repeat(limits.max_subject_len / 2);
    largest.case_reference = "c".repeat(limits.max_case_reference_len);
    largest.content_type = "t".repeat(limits.max_content_type_len);
    submit(&mut client, largest).await;

    // The largest Peer batch: max_peer_batch envelopes of the largest
    // payload, within max_peer_batch_bytes.
    let signer = fed.signer(DISCIPLINE);
    let payload = vec![2u8; limits.max_payload_bytes];
    let envelopes = (0..limits.max_peer_batch)
        .map(|i| {
            let h = header(
                &format!("full-batch-{i}"),
                MessageKind::ClueTransfer,
                DISCIPLINE,
                SECURITY,
                &payload,
            );
            sealed(&signer, &h, &payload)
        })
        .collect();
    let answer = fed
        .peer_as(DISCIPLINE, SECURITY)
        .deliver(cluebridge::pb::DeliverRequest { envelopes })
        .await
        .expect("a full batch passes the size limit")
        .into_inner();
    assert_eq!(answer.outcomes.len(), limits.max_peer_batch);
    eprintln!(
        "size limits: client {} bytes, peer {} bytes (batch of {})",
        sizes.client, sizes.peer, limits.max_peer_batch
    );
}

/// Starts `cluebridge serve` for `node`, its log (warnings) in `log`.
pub fn spawn_serve_logging(
    fed: &TestFederation,
    node: &str,
    log: &std::path::Path,
) -> ServeProcess {
    let stderr = std::fs::File::create(log).expect("log file");
    spawn_serve_to(fed, node, stderr.into())
}

const CONNECTIONS: usize = 16;
const STREAMS_PER_CONNECTION: usize = 256;
const ROUNDS: usize = 4;
/// Bytes each hostile stream tries to push into its declared body.
const PUSH: usize = 4 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// One hostile stream: announces a huge message, pushes as much of it as
/// flow control lets through, until the node answers. The answer's code.
async fn hostile_stream(mut send: h2::client::SendRequest<Bytes>, path: &str) -> Option<Code> {
    let (response, mut body) = raw::open_call(&mut send, path, 64 * MIB - 1, 0)
        .await
        .ok()?;
    let push = async move {
        let mut pushed = 0;
        while pushed < PUSH {
            body.reserve_capacity(CHUNK);
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(CHUNK);
                    if body
                        .send_data(Bytes::from_static(&ZEROS[..n]), false)
                        .is_err()
                    {
                        break;
                    }
                    pushed += n;
                }
                _ => break,
            }
        }
        // Hold the stream open, as an attacker would.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        answer = response => raw::status_of(&answer.ok()?).map(|s| s.code()),
        _ = push => None,
    }
}

/// What one attack did to the node.
struct Attack {
    streams: usize,
    refused: usize,
    other: Vec<Option<Code>>,
    seconds: f64,
    peak_kib: u64,
    after_kib: u64,
}

/// Rounds of `CONNECTIONS` connections without a certificate, each with
/// `STREAMS_PER_CONNECTION` hostile streams at once, half on `Broker`,
/// half on `Peer`; the node's resident size is sampled throughout, then
/// watched until it is back within `settle_kib` of `baseline_kib` (or a
/// deadline passes) while a client keeps the node lightly busy: the
/// allocator hands freed pages back as its threads work.
async fn attack(
    fed: &TestFederation,
    pid: u32,
    client: &mut cluebridge::pb::broker_client::BrokerClient<tonic::transport::Channel>,
    baseline_kib: u64,
    settle_kib: u64,
) -> Attack {
    let peak = Arc::new(AtomicU64::new(raw::rss_kib(pid)));
    let attacking = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, attacking) = (peak.clone(), attacking.clone());
        tokio::spawn(async move {
            while attacking.load(Ordering::Relaxed) {
                peak.fetch_max(raw::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    let (mut refused, mut other) = (0usize, Vec::new());
    for _ in 0..ROUNDS {
        let mut streams = tokio::task::JoinSet::new();
        let mut connections = Vec::new();
        for c in 0..CONNECTIONS {
            let send = raw::h2(fed, DISCIPLINE, &Who::Nobody).await;
            let path = if c % 2 == 0 {
                "/cluebridge.v1.Broker/Submit"
            } else {
                "/cluebridge.v1.Peer/Deliver"
            };
            for _ in 0..STREAMS_PER_CONNECTION {
                streams.spawn(hostile_stream(send.clone(), path));
            }
            connections.push(send);
        }
        while let Some(code) = streams.join_next().await {
            match code.expect("stream task") {
                Some(Code::Unauthenticated) => refused += 1,
                other_code => other.push(other_code),
            }
        }
        drop(connections);
    }
    let seconds = started.elapsed().as_secs_f64();
    attacking.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after_kib = loop {
        let now = raw::rss_kib(pid);
        if now <= baseline_kib + settle_kib || Instant::now() > deadline {
            break now;
        }
        let _ = client
            .get_status(cluebridge::pb::GetStatusRequest {
                message_id: "before".into(),
            })
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Attack {
        streams: CONNECTIONS * STREAMS_PER_CONNECTION * ROUNDS,
        refused,
        other,
        seconds,
        peak_kib: peak.load(Ordering::Relaxed),
        after_kib,
    }
}

/// A stranger without a certificate opens thousands of streams, each
/// announcing a 64 MiB message and pushing what flow control allows, twice:
/// the node's resident size stays bounded while it happens (by the
/// strangers' connection cap times HTTP/2's connection window, not by what
/// they announce), comes back near where it was, and a second attack does
/// not add to the first: nothing is pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_streaming_large_bodies_cannot_pin_the_nodes_memory() {
    const MIB_KIB: u64 = 1024;
    let fed = TestFederation::start_with(|_| {}, &[]).await;
    let log = fed.dev.dir.join("discipline-serve.log");
    let mut child = spawn_serve_logging(&fed, DISCIPLINE, &log);
    wait_serving(&fed, DISCIPLINE).await;
    let pid = child.id();
    let mut client = fed.client(DISCIPLINE);
    submit(
        &mut client,
        submit_request("before", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    // One refused call first, so that the refusal's path is warm too.
    let mut warm = raw::h2(&fed, DISCIPLINE, &Who::Nobody).await;
    let (r, _b) = raw::open_call(&mut warm, "/cluebridge.v1.Broker/Submit", 100, 0)
        .await
        .expect("call");
    r.await.expect("answer");
    drop(warm);
    let baseline = raw::rss_kib(pid);
    let fds_before = raw::open_sockets(pid);

    let settle = 24 * MIB_KIB;
    let first = attack(&fed, pid, &mut client, baseline, settle).await;
    let second = attack(&fed, pid, &mut client, baseline, settle).await;
    // The node closes the attackers' connections as it sees them go; on
    // a loaded machine that can take a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fds_after = loop {
        let now = raw::open_sockets(pid);
        if now <= fds_before || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (name, a) in [("first", &first), ("second", &second)] {
        eprintln!(
            "{name} attack: {} streams announcing 64 MiB each over {} connections without a \
             certificate in {:.1} s; VmRSS baseline {} MiB, peak {} MiB (+{} MiB), after {} MiB \
             (+{} MiB); {} refused UNAUTHENTICATED, {} otherwise",
            a.streams,
            CONNECTIONS * ROUNDS,
            a.seconds,
            baseline / MIB_KIB,
            a.peak_kib / MIB_KIB,
            a.peak_kib.saturating_sub(baseline) / MIB_KIB,
            a.after_kib / MIB_KIB,
            a.after_kib.saturating_sub(baseline) / MIB_KIB,
            a.refused,
            a.other.len(),
        );
    }
    eprintln!("sockets: {fds_before} before, {fds_after} after");
    for a in [&first, &second] {
        assert_eq!(a.refused, a.streams, "other outcomes: {:?}", a.other);
        assert!(
            a.peak_kib < baseline + 64 * MIB_KIB,
            "resident size grew from {baseline} KiB to {} KiB under the attack",
            a.peak_kib
        );
        // What the allocator keeps of the attack's freed pages varies with
        // the scheduling (+17 to +33 MiB seen on a loaded 2-core machine);
        // the bug this guards against kept +500 MiB.
        assert!(
            a.after_kib <= baseline + 48 * MIB_KIB,
            "resident size stayed at {} KiB after the attack (baseline {baseline} KiB)",
            a.after_kib
        );
    }
    // A leak would add about as much as the first attack kept (~20 MiB);
    // the allocator's own caches vary by a few MiB with the scheduling.
    assert!(
        second.after_kib <= first.after_kib + 16 * MIB_KIB,
        "the second attack added to the first: {} KiB after it, {} KiB after the first",
        second.after_kib,
        first.after_kib
    );
    assert!(
        fds_after <= fds_before,
        "{fds_after} sockets open after, {fds_before} before"
    );
    // The node still serves its clients.
    submit(
        &mut client,
        submit_request("after", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    child.kill().expect("stop");
    child.wait().expect("reaped");
}
