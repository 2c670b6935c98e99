//! The index (sled) is derived from the journal: lost or rebuilt, it
//! comes back with every message, receipt and audit entry, and the node
//! goes on where it was.

use crate::audit::check_store;
use crate::harness::*;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use std::process::Command;

async fn statuses(fed: &TestFederation, ids: &[String]) -> Vec<(i32, usize)> {
    let mut client = fed.client(DISCIPLINE);
    let mut out = Vec::new();
    for id in ids {
        let s = client
            .get_status(pb::GetStatusRequest {
                message_id: id.clone(),
            })
            .await
            .expect("status")
            .into_inner();
        out.push((s.state, s.receipts.len()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_rebuilt_index_loses_nothing() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    let ids: Vec<String> = (0..12).map(|i| format!("kept-{i}")).collect();
    for id in &ids {
        submit(
            &mut discipline,
            submit_request(id, MessageKind::ClueTransfer, SECURITY, b"clue"),
        )
        .await;
    }
    // Half are acknowledged (whichever arrive first: batches delivered
    // side by side may land out of submit order), the rest wait in
    // public security's inbox (the stream may lease some of them before
    // it closes: its leases are short, so they come back soon).
    let mut stream = receiver(&mut security, 6, 1).await;
    let mut acked = Vec::new();
    for _ in 0..6 {
        let d = next(&mut stream, 10 * SECOND).await;
        security
            .ack(pb::AckRequest {
                lease: lease_of(&d),
            })
            .await
            .expect("ack");
        acked.push(d.message_id);
    }
    drop(stream);
    for id in &ids {
        let state = if acked.contains(id) {
            SentState::Acknowledged
        } else {
            SentState::Delivered
        };
        wait_state(&mut discipline, id, state, 10 * SECOND).await;
    }
    let before = statuses(&fed, &ids).await;
    let dir = fed.config(DISCIPLINE).data_dir;

    // A node refuses to rebuild the index of a store in use.
    let running = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["store", "reindex", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run store reindex");
    assert!(!running.status.success());
    let said = String::from_utf8_lossy(&running.stderr);
    assert!(
        said.contains("is its node still running? stop it first"),
        "{said}"
    );

    // Rebuilt on demand from the journal.
    fed.stop(DISCIPLINE).await;
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["store", "reindex", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run store reindex");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("rebuilt the index") && said.contains("12 sent"),
        "{said}"
    );
    assert!(
        check_store(&dir, &fed, &[]).passed,
        "audit verify after the rebuild"
    );
    fed.restart(DISCIPLINE).await;
    assert_eq!(statuses(&fed, &ids).await, before);

    // Lost altogether: the next start rebuilds it, and the node goes on.
    fed.stop(DISCIPLINE).await;
    std::fs::remove_dir_all(dir.join("index")).expect("lose the index");
    fed.restart(DISCIPLINE).await;
    assert_eq!(statuses(&fed, &ids).await, before);
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request(
            "after-rebuild",
            MessageKind::ClueTransfer,
            SECURITY,
            b"more",
        ),
    )
    .await;
    wait_state(
        &mut discipline,
        "after-rebuild",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 16, 60).await;
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let d = next(&mut stream, 10 * SECOND).await;
        seen.push(d.message_id.clone());
        security
            .ack(pb::AckRequest {
                lease: lease_of(&d),
            })
            .await
            .expect("ack");
    }
    seen.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .filter(|id| !acked.contains(id))
        .cloned()
        .collect();
    expected.push("after-rebuild".into());
    expected.sort();
    assert_eq!(seen, expected, "each waiting message once, the new one too");
    for id in ids
        .iter()
        .chain(std::iter::once(&"after-rebuild".to_string()))
    {
        wait_state(&mut discipline, id, SentState::Acknowledged, 10 * SECOND).await;
    }
    assert_queue_counters(&fed, DISCIPLINE).await;
    assert_queue_counters(&fed, SECURITY).await;
    fed.stop(DISCIPLINE).await;
    assert!(
        check_store(&dir, &fed, &[]).passed,
        "audit verify after the node went on"
    );
}
