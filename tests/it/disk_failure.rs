//! A node whose disk fails under its store: it refuses every change with a
//! clear UNAVAILABLE, says NOT_SERVING on health and 1 in
//! `cluebridge_store_failed`, and a restart on a healthy disk replays the
//! log with nothing answered lost.

use crate::harness::*;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use cluebridge::store::fs::{Fs, SimFs, SyncFault};
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
    wait_health(&fed, DISCIPLINE, ServingStatus::NotServing).await;
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

/// The recipient wrote custody to its journal but its flush failed, so the
/// sender never got the `delivered` receipt; after the recipient's restart
/// the application acknowledges before the sender delivers again. The
/// acknowledgement waits for the custody receipt: the sender's evidence
/// ends with `accepted`, `delivered` and `acknowledged`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_that_overtakes_its_custody_receipt_waits_for_it() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let disk = SimFs::new();
    fed.restart_on(SECURITY, Arc::new(disk.clone())).await;
    let mut sender = fed.client(DISCIPLINE);
    let warm_up = submit_request("warm-up", MessageKind::ClueTransfer, SECURITY, b"one");
    submit(&mut sender, warm_up).await;
    wait_state(&mut sender, "warm-up", SentState::Delivered, 10 * SECOND).await;

    // The next sync of the recipient's envelope segment fails: only a
    // custody change writes an envelope, so that of the next message.
    let segments = fed.config(SECURITY).data_dir.join("envelopes");
    let active = disk
        .list_dir(&segments)
        .expect("segments")
        .into_iter()
        .max();
    disk.fail_sync(SyncFault::Path(segments.join(active.expect("a segment"))));
    let overtaken = submit_request("overtaken", MessageKind::ClueTransfer, SECURITY, b"two");
    submit(&mut sender, overtaken).await;
    wait_health(&fed, SECURITY, ServingStatus::NotServing).await;
    fed.admin(DISCIPLINE)
        .pause_peer(pb::PausePeerRequest {
            peer: SECURITY.into(),
        })
        .await
        .expect("pause");
    fed.abandon(SECURITY).await;
    fed.restart_on(SECURITY, Arc::new(disk.kill_process()))
        .await;

    // The recipient replayed its journal: the message is in its inbox, and
    // the application acknowledges it.
    let mut recipient = fed.client(SECURITY);
    let mut stream = receiver(&mut recipient, 10, 30).await;
    let acknowledged = loop {
        let delivery = next(&mut stream, 10 * SECOND).await;
        if delivery.message_id == "overtaken" {
            let settled = recipient
                .ack(pb::AckRequest {
                    lease: lease_of(&delivery),
                })
                .await
                .expect("ack")
                .into_inner();
            break settled.receipt.expect("acknowledged receipt");
        }
    };
    let status = sender
        .get_status(pb::GetStatusRequest {
            message_id: "overtaken".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SentState::Accepted.to_wire(), "{status:?}");

    // Returned before the custody receipt, it is refused for now.
    let outcome = fed
        .peer_as(SECURITY, DISCIPLINE)
        .return_receipts(pb::ReturnReceiptsRequest {
            receipts: vec![acknowledged],
        })
        .await
        .expect("return receipts")
        .into_inner();
    let refused = outcome.outcomes[0].refused.as_ref().expect("refused");
    assert_eq!(refused.code, Code::Unavailable as i32, "{refused:?}");
    assert!(refused.message.contains("delivered"), "{refused:?}");

    // Resumed, the next delivery brings the custody receipt, then the
    // recipient's own return of the acknowledgement is taken.
    fed.admin(DISCIPLINE)
        .resume_peer(pb::ResumePeerRequest {
            peer: SECURITY.into(),
        })
        .await
        .expect("resume");
    let status = wait_state(
        &mut sender,
        "overtaken",
        SentState::Acknowledged,
        20 * SECOND,
    )
    .await;
    use cluebridge::model::ReceiptKind::*;
    assert_eq!(
        receipt_kinds(&status.receipts),
        [Accepted, Delivered, Acknowledged]
    );
}

async fn wait_health(fed: &TestFederation, node: &str, want: ServingStatus) {
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while health(fed, node).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{node} is not {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const FILLED: usize = 60;

/// The recipient's disk fills under load: it refuses changes with a clear
/// UNAVAILABLE, says NOT_SERVING until a restart (also once space is
/// freed), its background tasks wait instead of retrying in a loop, an
/// auditor verifies its store on the full disk without writing a byte,
/// and after the restart every accepted message arrives once and ends
/// with its three receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_whose_disk_fills_refuses_changes_quietly_and_loses_nothing() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let disk = SimFs::new();
    fed.restart_on(SECURITY, Arc::new(disk.clone())).await;
    let dir = fed.config(SECURITY).data_dir;
    // Room for about a third of what comes.
    disk.set_capacity(Some(disk.used() + 24 * 1024));
    let mut receiving = fed.client(SECURITY);
    let mut stream = receiver(&mut receiving, 4, 1).await;
    let mut sender = fed.client(DISCIPLINE);
    for i in 0..FILLED {
        let id = format!("full-{i}");
        submit(
            &mut sender,
            submit_request(&id, MessageKind::ClueTransfer, SECURITY, &[b'x'; 1024]),
        )
        .await;
    }
    // A receiver leases a few messages and never settles them: their
    // leases lapse while the store cannot end them.
    let leased = next(&mut stream, 10 * SECOND).await;
    wait_health(&fed, SECURITY, ServingStatus::NotServing).await;
    let lapsed_by = std::time::Instant::now() + 3 * SECOND;

    let metrics = fed.metrics(SECURITY).await;
    assert_eq!(metric(&metrics, "cluebridge_store_failed"), 1.0);
    let refused = receiving
        .ack(pb::AckRequest {
            lease: lease_of(&leased),
        })
        .await
        .expect_err("a change on a full disk");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("No space left on device")
            && refused.message().contains("restart the node"),
        "{}",
        refused.message()
    );

    // An auditor verifies the store on the full disk: it passes, and not
    // a byte was written.
    let used = disk.used();
    let (store, _) = cluebridge::store::Store::open_read_only_on(Arc::new(disk.clone()), &dir)
        .expect("a read-only open of a full disk");
    let report =
        cluebridge::audit::store_check::verify_store(&store, Some(&fed.keyring()), None, None);
    store.close();
    assert!(report.passed, "{}", report.render());
    assert_eq!(disk.used(), used);

    // Latched, the background tasks wait: the sweeper does not spin on
    // the lapsed leases it cannot end (it once tried every millisecond).
    // What is refused is the test's own ack, the sender's retries (at
    // most 300 ms apart here) and a few attempts of the background tasks.
    while std::time::Instant::now() < lapsed_by {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = metric(
        &fed.metrics(SECURITY).await,
        "cluebridge_store_refused_total",
    );
    assert!((1.0..100.0).contains(&refused), "{refused} changes refused");

    // Space freed: still NOT_SERVING, as a failed write may have lost pages.
    disk.set_capacity(None);
    assert_eq!(health(&fed, SECURITY).await, ServingStatus::NotServing);

    fed.abandon(SECURITY).await;
    fed.restart_on(SECURITY, Arc::new(disk.kill_process()))
        .await;
    assert_eq!(health(&fed, SECURITY).await, ServingStatus::Serving);
    let mut receiving = fed.client(SECURITY);
    let mut stream = receiver(&mut receiving, 16, 30).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < FILLED {
        let delivery = next(&mut stream, 20 * SECOND).await;
        seen.insert(delivery.message_id.clone());
        receiving
            .ack(pb::AckRequest {
                lease: lease_of(&delivery),
            })
            .await
            .expect("ack");
    }
    for i in 0..FILLED {
        let id = format!("full-{i}");
        let status = wait_state(&mut sender, &id, SentState::Acknowledged, 20 * SECOND).await;
        assert_eq!(
            status.receipts.len(),
            3,
            "{id}: accepted, delivered, acknowledged"
        );
    }
    assert_queue_counters(&fed, SECURITY).await;
    let custody = fed.node(SECURITY).broker.store();
    let report =
        cluebridge::audit::store_check::verify_store(custody, Some(&fed.keyring()), None, None);
    assert!(report.passed, "{}", report.render());
}
