//! Crash safety of the real binary: SIGKILL right after answering submits
//! loses nothing that was accepted.

use crate::harness::*;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_serve(fed: &TestFederation, node: &str) -> ServeProcess {
    spawn_serve_to(fed, node, Stdio::null())
}

/// Waits until the node answers a call.
pub(crate) async fn wait_serving(fed: &TestFederation, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = fed.client(node);
    loop {
        match client
            .get_status(pb::GetStatusRequest {
                message_id: "probe".into(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                client = fed.client(node);
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_accepting_loses_no_message() {
    const N: usize = 40;
    let mut fed = TestFederation::start_with(|_| {}, &[]).await;
    let mut child = spawn_serve(&fed, DISCIPLINE);
    wait_serving(&fed, DISCIPLINE).await;

    // Concurrent submits, so that group commit is in play; the recipient is
    // down, so every message is still in the outbox when the node dies.
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut client = fed.client(DISCIPLINE);
        tasks.push(tokio::spawn(async move {
            submit(
                &mut client,
                submit_request(
                    &format!("crash-{i}"),
                    MessageKind::ClueTransfer,
                    SECURITY,
                    b"evidence",
                ),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.expect("submit answered accepted");
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let mut child = spawn_serve(&fed, DISCIPLINE);
    wait_serving(&fed, DISCIPLINE).await;
    // The queue counters came back with the replay: every accepted message
    // waits in the outbox, with its bytes.
    let queues = fed
        .admin(DISCIPLINE)
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect("queues")
        .into_inner();
    let outbox = queues
        .outboxes
        .iter()
        .find(|o| o.peer == SECURITY)
        .expect("outbox of public security");
    assert_eq!(outbox.depth, N as u64, "{queues:?}");
    assert!(outbox.bytes > N as u64 * 8, "{queues:?}");
    fed.restart(SECURITY).await;

    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 64, 30).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N {
        let d = next(&mut stream, 20 * SECOND).await;
        assert!(
            seen.insert(d.message_id.clone()),
            "{} delivered twice",
            d.message_id
        );
        security
            .ack(pb::AckRequest {
                lease: lease_of(&d),
            })
            .await
            .expect("ack");
    }
    let mut discipline = fed.client(DISCIPLINE);
    for i in 0..N {
        wait_state(
            &mut discipline,
            &format!("crash-{i}"),
            SentState::Acknowledged,
            20 * SECOND,
        )
        .await;
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

/// SIGTERM while submits are in flight: the node stops taking calls,
/// answers or fails the ones in flight, flushes, and exits 0 within its
/// grace period; every submit answered `accepted` is delivered after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_keeps_every_accepted_submit() {
    let mut fed = TestFederation::start_with(|_| {}, &[]).await;
    let grace = Duration::from_millis(fed.config(DISCIPLINE).delivery.shutdown_grace_ms);
    let mut child = spawn_serve(&fed, DISCIPLINE);
    wait_serving(&fed, DISCIPLINE).await;

    // Eight submitters that keep going until the node stops answering.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut client = fed.client(DISCIPLINE);
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("term-{t}-{i}");
                let request = submit_request(&id, MessageKind::ClueTransfer, SECURITY, b"x");
                match client.submit(request).await {
                    Ok(_) => accepted.lock().expect("lock").push(id),
                    Err(_) => return,
                }
            }
        }));
    }
    // The signal comes once submits are flowing: some answered already.
    let deadline = Instant::now() + 20 * SECOND;
    while accepted.lock().expect("lock").len() < 20 {
        assert!(Instant::now() < deadline, "no submit was answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < grace + Duration::from_secs(3),
            "node still running {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = signalled.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(took <= grace, "took {took:?}, grace is {grace:?}");
    for t in tasks {
        t.await.expect("submitter");
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert!(!accepted.is_empty(), "some submits were accepted");

    let mut child = spawn_serve(&fed, DISCIPLINE);
    wait_serving(&fed, DISCIPLINE).await;
    fed.restart(SECURITY).await;
    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 64, 30).await;
    let mut seen = std::collections::BTreeSet::new();
    let wanted: std::collections::BTreeSet<String> = accepted.iter().cloned().collect();
    while !wanted.is_subset(&seen) {
        let d = next(&mut stream, 20 * SECOND).await;
        seen.insert(d.message_id.clone());
        security
            .ack(pb::AckRequest {
                lease: lease_of(&d),
            })
            .await
            .expect("ack");
    }
    eprintln!(
        "{} submits accepted before or during SIGTERM; node exited 0 after {took:?}",
        accepted.len()
    );
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

/// JSON logs of the real binary at debug level: one object per line, spans
/// carry the principal, message id and peer, and no payload byte appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_ids_and_never_payloads() {
    const SECRET: &str = "PAYLOAD-SECRET-7d1f";
    let fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    let log_path = fed.dev.dir.join("discipline-log.jsonl");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = ServeProcess(
        Command::new(env!("CARGO_BIN_EXE_cluebridge"))
            .args([
                "--log-format",
                "json",
                "--log",
                "debug",
                "serve",
                "--config",
            ])
            .arg(fed.dev.node_file(DISCIPLINE))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cluebridge serve"),
    );
    wait_serving(&fed, DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request(
            "log-1",
            MessageKind::ClueTransfer,
            SECURITY,
            SECRET.as_bytes(),
        ),
    )
    .await;
    wait_state(&mut discipline, "log-1", SentState::Delivered, 10 * SECOND).await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    assert!(child.wait().expect("exit").success());

    let text = std::fs::read_to_string(&log_path).expect("read log");
    let secrets = [
        SECRET.to_string(),
        hex::encode(SECRET),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET),
    ];
    let mut submit_span = false;
    let mut forwarder_span = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "payload in a log line: {line}");
        }
        let span = &value["span"];
        submit_span |= span["name"] == "submit"
            && span["principal"] == "backoffice"
            && span["message_id"] == "log-1";
        forwarder_span |= span["name"] == "forwarder" && span["peer"] == SECURITY;
    }
    assert!(
        submit_span,
        "a line in the submit span names principal and message:\n{text}"
    );
    assert!(
        forwarder_span,
        "a line in the forwarder span names the peer:\n{text}"
    );
}
