//! Connections at the caps: idle strangers fill only their own small cap
//! and are closed; a full node refuses new connections but serves the ones
//! it has; a silent connection is closed while a live, idle one is kept by
//! its keepalive answers; refusals are logged once per period, counted.

use crate::crash::wait_serving;
use crate::harness::*;
use crate::raw::{self, Who};
use crate::strangers::spawn_serve_logging;
use cluebridge::config::NodeFile;
use cluebridge::model::MessageKind;
use cluebridge::pb;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const MAX_CONNECTIONS: usize = 12;
const MAX_ANONYMOUS: usize = 3;

/// Small caps and short deadlines on discipline.
fn small_caps(n: &mut NodeFile) {
    if n.node_id == DISCIPLINE {
        n.limits.max_connections = MAX_CONNECTIONS;
        n.limits.max_anonymous_connections = MAX_ANONYMOUS;
        n.limits.anonymous_connection_secs = 2;
        n.limits.keepalive_interval_secs = 1;
        n.limits.keepalive_timeout_secs = 2;
        n.limits.idle_connection_secs = 4;
    }
}

/// Waits until the node closes `conn` (end of stream or an error).
async fn closed_by_node(mut conn: TlsStream<TcpStream>, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The node's HTTP/2 settings: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

fn probe(id: &str) -> pb::SubmitRequest {
    submit_request(id, MessageKind::ClueTransfer, SECURITY, b"clue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_fill_only_their_own_cap_while_a_client_submits() {
    let fed = TestFederation::start_with(small_caps, &[DISCIPLINE]).await;
    let started = Instant::now();
    let anonymous = raw::tls_config(&fed, &Who::Nobody);
    let mut strangers = Vec::new();
    for _ in 0..3 * MAX_ANONYMOUS {
        strangers.push(
            raw::tls(&fed, DISCIPLINE, anonymous.clone())
                .await
                .expect("handshake"),
        );
    }
    // Three times the strangers' cap, idle: a client still connects and submits.
    let mut client = fed.client(DISCIPLINE);
    submit(&mut client, probe("despite-strangers")).await;
    let submitted = started.elapsed();
    // Every stranger is closed: those over the cap at once, the others
    // when their lifetime ends.
    let closed = futures::future::join_all(
        strangers
            .into_iter()
            .map(|s| closed_by_node(s, 30 * SECOND)),
    )
    .await;
    let all_closed = started.elapsed();
    assert!(closed.iter().all(|c| *c), "{closed:?}");
    eprintln!(
        "{} idle strangers (cap {MAX_ANONYMOUS}): a client submitted after {:?}; all strangers \
         closed after {:?}",
        3 * MAX_ANONYMOUS,
        submitted,
        all_closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_connection_cap_serves_open_connections_and_refuses_new_ones() {
    let fed = TestFederation::start_with(small_caps, &[DISCIPLINE]).await;
    let mut client = fed.client(DISCIPLINE);
    submit(&mut client, probe("first")).await;
    // Idle but live connections (they answer pings) up to the cap.
    let principal = Who::principal(&fed, DISCIPLINE, "backoffice");
    let mut idle = Vec::new();
    for _ in 1..MAX_CONNECTIONS {
        idle.push(raw::h2(&fed, DISCIPLINE, &principal).await);
    }
    // The open connection is served...
    submit(&mut client, probe("at-the-cap")).await;
    // ...a new one is closed at once.
    let status = fed
        .client(DISCIPLINE)
        .submit(probe("refused"))
        .await
        .expect_err("no room for a new connection");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // One idle connection goes: a new client gets in.
    drop(idle.pop());
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        match fed.client(DISCIPLINE).submit(probe("after-room")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("no room after a connection closed: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_and_a_live_idle_one_is_kept() {
    let fed = TestFederation::start_with(small_caps, &[DISCIPLINE]).await;
    let principal = Who::principal(&fed, DISCIPLINE, "backoffice");
    // Live: an HTTP/2 connection that makes no call but answers pings.
    let mut live = raw::h2(&fed, DISCIPLINE, &principal).await;
    // Silent: TLS done, then nothing, not even the HTTP/2 preface.
    let silent = raw::tls(&fed, DISCIPLINE, raw::tls_config(&fed, &principal))
        .await
        .expect("handshake");
    let started = Instant::now();
    assert!(
        closed_by_node(silent, 60 * SECOND).await,
        "the silent connection is closed"
    );
    let closed_after = started.elapsed();
    // The live connection, opened before the silent one and idle as long,
    // still carries a call.
    let (response, mut body) = raw::open_call(&mut live, "/cluebridge.v1.Broker/GetStatus", 0, 0)
        .await
        .expect("the live connection is open");
    body.send_data(bytes::Bytes::new(), true).expect("end");
    let answer = response.await.expect("answer");
    assert_eq!(answer.status(), 200);
    eprintln!("a silent connection was closed after {closed_after:?}; the live one answered");
}

/// Strangers over their cap are refused and the node says so in one line
/// per period with the count, not one line per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_logged_once_per_period_with_their_count() {
    let fed = TestFederation::start_with(small_caps, &[]).await;
    let log = fed.dev.dir.join("discipline-serve.log");
    let mut child = spawn_serve_logging(&fed, DISCIPLINE, &log);
    wait_serving(&fed, DISCIPLINE).await;
    let started = Instant::now();
    let anonymous = raw::tls_config(&fed, &Who::Nobody);
    let mut strangers = Vec::new();
    for _ in 0..10 * MAX_ANONYMOUS {
        if let Ok(s) = raw::tls(&fed, DISCIPLINE, anonymous.clone()).await {
            strangers.push(s);
        }
    }
    let line = format!("limits.max_anonymous_connections ({MAX_ANONYMOUS}) reached");
    let deadline = Instant::now() + 20 * SECOND;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&line) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines = text.lines().filter(|l| l.contains(&line)).count();
    let periods = started.elapsed().as_secs() / cluebridge::transport::LOG_EVERY.as_secs();
    eprintln!(
        "{} strangers, {lines} log line(s):\n{text}",
        strangers.len()
    );
    assert!(lines >= 1, "no log line about the cap:\n{text}");
    assert!(lines as u64 <= 1 + periods, "{lines} lines:\n{text}");
    assert!(
        !text.contains("Too many open files"),
        "descriptors ran out:\n{text}"
    );
    child.kill().expect("stop");
    child.wait().expect("reaped");
}
