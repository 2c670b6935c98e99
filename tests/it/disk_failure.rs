//! A node whose disk fails under its store: it refuses every change with a
//! clear UNAVAILABLE, says NOT_SERVING on health and 1 in
//! `cluebridge_store_failed`, and a restart on a healthy disk replays the
//! log with nothing answered lost.

use crate::harness::*;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::store::fs::{SimFs, SyncFault};
use std::sync::Arc;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(fed: &TestFederation, node: &str) -> ServingStatus {
    let channel = fed.connection(node).channel().expect("channel");
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(answer.status).expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_latches_the_store_and_health_says_not_serving_until_a_restart() {
    let mut fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    let disk = SimFs::new();
    fed.restart_on(DISCIPLINE, Arc::new(disk.clone())).await;
    let mut client = fed.client(DISCIPLINE);
    submit(
        &mut client,
        submit_request(
            "before-failure",
            MessageKind::ClueTransfer,
            SECURITY,
            b"one",
        ),
    )
    .await;
    assert_eq!(health(&fed, DISCIPLINE).await, ServingStatus::Serving);

    // The next sync of the log or a segment fails, as a dying disk's does.
    disk.fail_sync(SyncFault::Nth(1));
    let refused = client
        .submit(submit_request(
            "during-failure",
            MessageKind::ClueTransfer,
            SECURITY,
            b"two",
        ))
        .await
        .expect_err("a submit whose flush failed");
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while health(&fed, DISCIPLINE).await != ServingStatus::NotServing {
        assert!(
            std::time::Instant::now() < deadline,
            "health still says SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let metrics = fed.metrics(DISCIPLINE).await;
    assert_eq!(
        metric(&metrics, "cluebridge_store_failed"),
        1.0,
        "{metrics}"
    );
    // Every later change is refused, saying what to do, even once the disk
    // works again: a failed sync may have lost pages for good.
    let again = client
        .submit(submit_request(
            "after-failure",
            MessageKind::ClueTransfer,
            SECURITY,
            b"three",
        ))
        .await
        .expect_err("a latched store");
    assert_eq!(again.code(), Code::Unavailable);
    assert!(
        again
            .message()
            .contains("refuses changes since its disk failed")
            && again.message().contains("restart the node"),
        "{}",
        again.message()
    );

    // A restart replays the log: serving again, the answered message kept.
    fed.abandon(DISCIPLINE).await;
    fed.restart_on(DISCIPLINE, Arc::new(disk.kill_process()))
        .await;
    assert_eq!(health(&fed, DISCIPLINE).await, ServingStatus::Serving);
    let mut client = fed.client(DISCIPLINE);
    wait_state(
        &mut client,
        "before-failure",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    submit(
        &mut client,
        submit_request(
            "after-restart",
            MessageKind::ClueTransfer,
            SECURITY,
            b"four",
        ),
    )
    .await;
    let metrics = fed.metrics(DISCIPLINE).await;
    assert_eq!(metric(&metrics, "cluebridge_store_failed"), 0.0);
}
