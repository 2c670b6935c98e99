//! Operations: the Admin service (queues, peers, dead letters, pauses),
//! metrics after known traffic, health and reflection.

use crate::harness::*;
use cluebridge::devfed::{AUDITOR_NAME, CLIENT_NAME};
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

fn address(sender: &str, id: &str) -> pb::MessageAddress {
    pb::MessageAddress {
        sender_node: sender.into(),
        message_id: id.into(),
    }
}

async fn dead_letter_count(fed: &TestFederation, node: &str) -> u64 {
    fed.admin(node)
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect("list queues")
        .into_inner()
        .dead_letters
        .expect("dead letters")
        .count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_known_traffic() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    for i in 0..3 {
        submit(
            &mut discipline,
            submit_request(&format!("m-{i}"), MessageKind::ClueTransfer, SECURITY, b"x"),
        )
        .await;
    }
    // The same request again is a duplicate, not a new acceptance.
    submit(
        &mut discipline,
        submit_request("m-0", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    let refused = discipline
        .submit(submit_request(
            "m-refused",
            MessageKind::ClueTransfer,
            "nowhere",
            b"x",
        ))
        .await
        .expect_err("unknown recipient");
    assert_eq!(refused.code(), tonic::Code::NotFound);

    let mut security = fed.client(SECURITY);
    let mut stream = receiver(&mut security, 8, 30).await;
    for i in 0..3 {
        let d = next(&mut stream, 10 * SECOND).await;
        if i < 2 {
            security
                .ack(pb::AckRequest {
                    lease: lease_of(&d),
                })
                .await
                .expect("ack");
        } else {
            security
                .reject(pb::RejectRequest {
                    lease: lease_of(&d),
                    reason: "not ours".into(),
                })
                .await
                .expect("reject");
        }
    }
    drop(stream);
    // Every receipt back at the sender: the figures are final.
    for i in 0..3 {
        let mut seen = false;
        let deadline = Instant::now() + 10 * SECOND;
        while !seen && Instant::now() < deadline {
            let s = discipline
                .get_status(pb::GetStatusRequest {
                    message_id: format!("m-{i}"),
                })
                .await
                .expect("status")
                .into_inner();
            seen = s.state == SentState::Acknowledged.to_wire()
                || s.state == SentState::Rejected.to_wire();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(seen, "m-{i} settled at the sender");
    }

    let d = fed.metrics(DISCIPLINE).await;
    assert_eq!(metric(&d, "cluebridge_messages_submitted_total"), 5.0);
    assert_eq!(metric(&d, "cluebridge_messages_accepted_total"), 3.0);
    assert_eq!(
        metric(&d, "cluebridge_submits_refused_total{reason=\"not_found\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "cluebridge_messages_forwarded_total{peer=\"public_security\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&d, "cluebridge_messages_forwarded_total{peer=\"judicial\"}"),
        0.0
    );
    // Accepted submits (the duplicate included) are timed.
    assert_eq!(metric(&d, "cluebridge_submit_duration_seconds_count"), 4.0);
    assert_eq!(
        metric(&d, "cluebridge_outbox_messages{peer=\"public_security\"}"),
        0.0
    );
    assert_eq!(
        metric(&d, "cluebridge_peer_up{peer=\"public_security\"}"),
        1.0
    );
    assert_eq!(
        metric(&d, "cluebridge_peer_paused{peer=\"public_security\"}"),
        0.0
    );
    assert!(metric(&d, "cluebridge_forward_duration_seconds_count") >= 1.0);
    assert!(metric(&d, "cluebridge_store_flush_batch_changes_count") >= 1.0);
    assert_eq!(metric(&d, "cluebridge_messages_delivered_total"), 0.0);

    let s = fed.metrics(SECURITY).await;
    assert_eq!(metric(&s, "cluebridge_messages_delivered_total"), 3.0);
    assert_eq!(metric(&s, "cluebridge_messages_acknowledged_total"), 2.0);
    assert_eq!(metric(&s, "cluebridge_messages_rejected_total"), 1.0);
    assert_eq!(metric(&s, "cluebridge_messages_redelivered_total"), 0.0);
    assert_eq!(metric(&s, "cluebridge_messages_dead_lettered_total"), 0.0);
    assert_eq!(
        metric(&s, "cluebridge_end_to_end_latency_seconds_count"),
        3.0
    );
    assert_eq!(
        metric(&s, "cluebridge_inbox_messages{state=\"ready\"}"),
        0.0
    );
    assert_eq!(metric(&s, "cluebridge_leases_in_flight"), 0.0);
    assert_eq!(metric(&s, "cluebridge_dead_letter_messages"), 0.0);
    assert_eq!(metric(&s, "cluebridge_messages_submitted_total"), 0.0);

    let addr = fed.node(DISCIPLINE).metrics_addr.expect("metrics");
    let (status, _) = http_get(addr, "/other").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_operate_role() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    for name in [CLIENT_NAME, AUDITOR_NAME] {
        let mut admin = fed.admin_as(DISCIPLINE, name);
        let denied = |r: Result<_, tonic::Status>, call: &str| {
            let status = r.expect_err(call);
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{call}");
            assert!(status.message().contains("operate"), "{call}: {status:?}");
        };
        denied(
            admin
                .list_queues(pb::ListQueuesRequest {})
                .await
                .map(|_| ()),
            "ListQueues",
        );
        denied(
            admin.list_peers(pb::ListPeersRequest {}).await.map(|_| ()),
            "ListPeers",
        );
        denied(
            admin
                .list_dead_letters(pb::ListDeadLettersRequest { limit: 0 })
                .await
                .map(|_| ()),
            "ListDeadLetters",
        );
        denied(
            admin
                .requeue(pb::RequeueRequest {
                    messages: vec![],
                    all: true,
                })
                .await
                .map(|_| ()),
            "Requeue",
        );
        denied(
            admin
                .discard(pb::DiscardRequest {
                    messages: vec![address(SECURITY, "x")],
                    reason: "r".into(),
                })
                .await
                .map(|_| ()),
            "Discard",
        );
        denied(
            admin
                .get_message(pb::GetMessageRequest {
                    sender_node: String::new(),
                    message_id: "x".into(),
                })
                .await
                .map(|_| ()),
            "GetMessage",
        );
        denied(
            admin
                .pause_peer(pb::PausePeerRequest {
                    peer: SECURITY.into(),
                })
                .await
                .map(|_| ()),
            "PausePeer",
        );
        denied(
            admin
                .resume_peer(pb::ResumePeerRequest {
                    peer: SECURITY.into(),
                })
                .await
                .map(|_| ()),
            "ResumePeer",
        );
    }
    // Another agency's operator is refused too.
    let mut conn = fed.connection_as(SECURITY, cluebridge::devfed::OPERATOR_NAME);
    conn.endpoint = format!("https://127.0.0.1:{}", fed.ports[DISCIPLINE]);
    conn.server_name = DISCIPLINE.into();
    let mut foreign = conn.admin().expect("client");
    let status = foreign
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect_err("foreign operator");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // And the operator itself may: nothing was paused by the refused calls.
    let peers = fed
        .admin(DISCIPLINE)
        .list_peers(pb::ListPeersRequest {})
        .await
        .expect("operator lists peers")
        .into_inner()
        .peers;
    assert_eq!(peers.len(), 3);
    assert!(
        peers
            .iter()
            .all(|p| p.state != pb::PeerState::Paused as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_requeued_delivered_and_discarded() {
    let mut fed = TestFederation::start_with(
        |n| {
            n.delivery.max_deliveries = 1;
        },
        &[DISCIPLINE, SECURITY],
    )
    .await;
    let mut discipline = fed.client(DISCIPLINE);
    for id in ["dl-1", "dl-2"] {
        submit(
            &mut discipline,
            submit_request(id, MessageKind::ClueTransfer, SECURITY, b"x"),
        )
        .await;
    }
    // A receiver takes both and lets the leases lapse: one attempt each,
    // so both become dead letters.
    let mut security = fed.client(SECURITY);
    {
        let mut stream = receiver(&mut security, 8, 1).await;
        next(&mut stream, 10 * SECOND).await;
        next(&mut stream, 10 * SECOND).await;
    }
    for id in ["dl-1", "dl-2"] {
        wait_state(&mut discipline, id, SentState::DeadLettered, 15 * SECOND).await;
    }
    let mut admin = fed.admin(SECURITY);
    let listed = admin
        .list_dead_letters(pb::ListDeadLettersRequest { limit: 0 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total, 2);
    let ids: Vec<&str> = listed
        .dead_letters
        .iter()
        .map(|d| d.message_id.as_str())
        .collect();
    assert!(ids.contains(&"dl-1") && ids.contains(&"dl-2"), "{ids:?}");
    for d in &listed.dead_letters {
        assert_eq!(d.sender_node, DISCIPLINE);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.kind, MessageKind::ClueTransfer.to_wire());
        assert_eq!(d.payload_length, 1);
        assert!(d.last_failure.contains("not settled"), "{}", d.last_failure);
    }
    assert_eq!(dead_letter_count(&fed, SECURITY).await, 2);
    assert_queue_counters(&fed, SECURITY).await;
    assert_queue_counters(&fed, DISCIPLINE).await;
    let m = fed.metrics(SECURITY).await;
    assert_eq!(metric(&m, "cluebridge_messages_dead_lettered_total"), 2.0);
    assert_eq!(metric(&m, "cluebridge_dead_letter_messages"), 2.0);

    // Requeue one: it is offered again and delivered; the sender sees it
    // acknowledged after all.
    let r = admin
        .requeue(pb::RequeueRequest {
            messages: vec![address(DISCIPLINE, "dl-1")],
            all: false,
        })
        .await
        .expect("requeue")
        .into_inner();
    assert_eq!(r.done, 1, "{r:?}");
    let mut stream = receiver(&mut security, 8, 30).await;
    let d = next(&mut stream, 10 * SECOND).await;
    assert_eq!(d.message_id, "dl-1");
    assert_eq!(d.attempt, 1, "a requeued dead letter gets fresh attempts");
    security
        .ack(pb::AckRequest {
            lease: lease_of(&d),
        })
        .await
        .expect("ack");
    wait_state(
        &mut discipline,
        "dl-1",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    let m = fed.metrics(SECURITY).await;
    // Two first leases, then the requeued one as a redelivery.
    assert_eq!(
        metric(&m, "cluebridge_end_to_end_latency_seconds_count"),
        2.0
    );
    assert_eq!(metric(&m, "cluebridge_messages_redelivered_total"), 1.0);
    assert_eq!(metric(&m, "cluebridge_messages_acknowledged_total"), 1.0);
    let info = admin
        .get_message(pb::GetMessageRequest {
            sender_node: DISCIPLINE.into(),
            message_id: "dl-1".into(),
        })
        .await
        .expect("get message")
        .into_inner();
    assert_eq!(info.side, "custody");
    assert_eq!(info.state, "acknowledged");
    let events: Vec<&str> = info.history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        ["delivered", "dead_lettered", "requeued", "acknowledged"],
        "{info:?}"
    );
    assert_eq!(info.history[2].by, cluebridge::devfed::OPERATOR_NAME);

    // Discard needs a reason; with one, the message is done for good and
    // the reason is in its history.
    let status = admin
        .discard(pb::DiscardRequest {
            messages: vec![address(DISCIPLINE, "dl-2")],
            reason: " ".into(),
        })
        .await
        .expect_err("no reason");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let r = admin
        .discard(pb::DiscardRequest {
            messages: vec![address(DISCIPLINE, "dl-2")],
            reason: "duplicate of case 12, handled on paper".into(),
        })
        .await
        .expect("discard")
        .into_inner();
    assert_eq!(r.done, 1, "{r:?}");
    let info = admin
        .get_message(pb::GetMessageRequest {
            sender_node: DISCIPLINE.into(),
            message_id: "dl-2".into(),
        })
        .await
        .expect("get message")
        .into_inner();
    assert_eq!(info.state, "discarded");
    let last = info.history.last().expect("history");
    assert_eq!(last.event, "discarded");
    assert_eq!(last.reason, "duplicate of case 12, handled on paper");
    assert_eq!(dead_letter_count(&fed, SECURITY).await, 0);

    // Refusals per message: no longer a dead letter, unknown message.
    let r = admin
        .requeue(pb::RequeueRequest {
            messages: vec![address(DISCIPLINE, "dl-2"), address(DISCIPLINE, "nope")],
            all: false,
        })
        .await
        .expect("requeue answers per message")
        .into_inner();
    assert_eq!(r.done, 0);
    assert_eq!(r.outcomes[0].code, tonic::Code::FailedPrecondition as i32);
    assert!(r.outcomes[0].error.contains("not a dead letter"), "{r:?}");
    assert_eq!(r.outcomes[1].code, tonic::Code::NotFound as i32);
    let status = admin
        .requeue(pb::RequeueRequest {
            messages: vec![],
            all: false,
        })
        .await
        .expect_err("nothing named");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The discarded message is never offered again.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "nothing more to receive"
    );
    // The payload never appears in what operators get.
    let status = admin
        .get_message(pb::GetMessageRequest {
            sender_node: DISCIPLINE.into(),
            message_id: "unknown".into(),
        })
        .await
        .expect_err("unknown message");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // The counters agree with the store, also as counted at a restart.
    for node in [DISCIPLINE, SECURITY] {
        assert_queue_counters(&fed, node).await;
    }
    drop((stream, admin, security, discipline));
    fed.stop(SECURITY).await;
    fed.restart(SECURITY).await;
    assert_queue_counters(&fed, SECURITY).await;

    // The operator's requeue and discard are in the audit chain: both
    // stores agree with their logs.
    for node in [DISCIPLINE, SECURITY] {
        fed.stop(node).await;
        let dir = fed.dev.dir.join(format!("data/{node}"));
        let report = crate::audit::check_store(&dir, &fed, &[]);
        assert!(report.passed, "{node}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_peer_waits_across_a_restart_and_flows_after_resume() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut admin = fed.admin(DISCIPLINE);
    let info = admin
        .pause_peer(pb::PausePeerRequest {
            peer: SECURITY.into(),
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(info.state, pb::PeerState::Paused as i32);
    assert_eq!(info.paused_by, cluebridge::devfed::OPERATOR_NAME);
    let status = admin
        .pause_peer(pb::PausePeerRequest {
            peer: "nowhere".into(),
        })
        .await
        .expect_err("unknown peer");
    assert_eq!(status.code(), tonic::Code::NotFound);

    let mut discipline = fed.client(DISCIPLINE);
    for id in ["p-1", "p-2"] {
        submit(
            &mut discipline,
            submit_request(id, MessageKind::ClueTransfer, SECURITY, b"abc"),
        )
        .await;
    }
    // Wait until the node says the envelopes have waited half a second,
    // ten times the first retry delay of an unpaused forwarder.
    let outbox = outbox_waited(&mut admin, 500).await;
    assert_eq!(outbox.depth, 2);
    assert!(outbox.paused);
    assert!(outbox.bytes > 0);
    assert!(outbox.oldest_age_ms >= 500, "{outbox:?}");
    let s = discipline
        .get_status(pb::GetStatusRequest {
            message_id: "p-1".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.state, SentState::Accepted.to_wire(), "held while paused");
    let m = fed.metrics(DISCIPLINE).await;
    assert_eq!(
        metric(&m, "cluebridge_peer_paused{peer=\"public_security\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "cluebridge_outbox_messages{peer=\"public_security\"}"),
        2.0
    );

    // The pause is stored: a restarted node keeps it.
    fed.stop(DISCIPLINE).await;
    fed.restart(DISCIPLINE).await;
    let mut admin = fed.admin(DISCIPLINE);
    let security = peer_info(&mut admin, SECURITY).await;
    assert_eq!(security.state, pb::PeerState::Paused as i32);
    assert_eq!(security.backlog, 2);
    // Half a second more after the restart: still held.
    let now = outbox_waited(&mut admin, 0).await.oldest_age_ms;
    outbox_waited(&mut admin, now + 500).await;
    let mut discipline = fed.client(DISCIPLINE);
    let s = discipline
        .get_status(pb::GetStatusRequest {
            message_id: "p-2".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.state, SentState::Accepted.to_wire(), "still held");

    let info = admin
        .resume_peer(pb::ResumePeerRequest {
            peer: SECURITY.into(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert_ne!(info.state, pb::PeerState::Paused as i32);
    for id in ["p-1", "p-2"] {
        wait_state(&mut discipline, id, SentState::Delivered, 10 * SECOND).await;
    }
    let security = peer_info(&mut admin, SECURITY).await;
    assert_eq!(security.state, pb::PeerState::Up as i32);
    assert!(security.last_success_ms > 0);
    assert_eq!(security.backlog, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_peer_is_reported_with_its_error() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("down-1", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    let mut admin = fed.admin(DISCIPLINE);
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let p = peer_info(&mut admin, SECURITY).await;
        if p.state == pb::PeerState::Down as i32 {
            assert!(p.consecutive_failures >= 5);
            assert!(!p.last_error.is_empty());
            assert_eq!(p.backlog, 1);
            break;
        }
        assert!(Instant::now() < deadline, "peer never reported down: {p:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let m = fed.metrics(DISCIPLINE).await;
    assert_eq!(
        metric(&m, "cluebridge_peer_up{peer=\"public_security\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let channel = fed.connection(DISCIPLINE).channel().expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "cluebridge.v1.Broker", "cluebridge.v1.Admin"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("an answer")
        .expect("list services");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "cluebridge.v1.Broker",
        "cluebridge.v1.Admin",
        "cluebridge.v1.Peer",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_serving_and_ends_open_streams_within_the_grace_period() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let grace = Duration::from_millis(fed.config(DISCIPLINE).delivery.shutdown_grace_ms);
    let channel = fed.connection(DISCIPLINE).channel().expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "cluebridge.v1.Broker".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("status").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // A client holding a stream open must not keep the node from stopping.
    let started = Instant::now();
    let stop = tokio::spawn(async move {
        fed.stop(DISCIPLINE).await;
    });
    let change = tokio::time::timeout(grace, watch.next())
        .await
        .expect("a status change within the grace period")
        .expect("the stream says NOT_SERVING before it ends")
        .expect("a status");
    assert_eq!(change.status, ServingStatus::NotServing as i32);
    // Then the stream ends, so the server can drain.
    let end = tokio::time::timeout(grace, watch.next())
        .await
        .expect("the stream ends within the grace period");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    tokio::time::timeout(grace + Duration::from_secs(1), stop)
        .await
        .expect("the node stopped although a stream was open")
        .expect("stop task");
    assert!(started.elapsed() <= grace + Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refusals_say_what_was_wrong() {
    let fed = TestFederation::start_with(
        |n| {
            n.delivery.max_deliveries = 1;
        },
        &[DISCIPLINE, SECURITY],
    )
    .await;
    let mut admin = fed.admin(SECURITY);
    let status = admin
        .requeue(pb::RequeueRequest {
            messages: vec![address(DISCIPLINE, "x")],
            all: true,
        })
        .await
        .expect_err("both");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("not both"), "{status:?}");
    let status = admin
        .discard(pb::DiscardRequest {
            messages: vec![address(DISCIPLINE, "a b")],
            reason: "r".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = admin
        .resume_peer(pb::ResumePeerRequest {
            peer: SECURITY.into(),
        })
        .await
        .expect_err("a node is not its own peer");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = admin
        .get_message(pb::GetMessageRequest {
            sender_node: String::new(),
            message_id: String::new(),
        })
        .await
        .expect_err("no id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A dead letter whose time to live has passed cannot be requeued.
    let mut discipline = fed.client(DISCIPLINE);
    let mut request = submit_request("short", MessageKind::ClueTransfer, SECURITY, b"x");
    request.ttl_seconds = 2;
    submit(&mut discipline, request).await;
    let mut security = fed.client(SECURITY);
    {
        let mut stream = receiver(&mut security, 1, 1).await;
        next(&mut stream, 10 * SECOND).await;
    }
    let deadline = Instant::now() + 10 * SECOND;
    while dead_letter_count(&fed, SECURITY).await == 0 {
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Until the node's clock passes the dead letter's expiry.
    let expires_at = admin
        .list_dead_letters(pb::ListDeadLettersRequest { limit: 0 })
        .await
        .expect("list")
        .into_inner()
        .dead_letters[0]
        .expires_at_ms;
    let deadline = Instant::now() + 10 * SECOND;
    while cluebridge::now_ms() <= expires_at {
        assert!(Instant::now() < deadline, "the dead letter never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = admin
        .requeue(pb::RequeueRequest {
            messages: vec![],
            all: true,
        })
        .await
        .expect("requeue all")
        .into_inner();
    assert_eq!(r.done, 0, "{r:?}");
    assert_eq!(r.outcomes.len(), 1);
    assert_eq!(r.outcomes[0].code, tonic::Code::FailedPrecondition as i32);
    assert!(r.outcomes[0].error.contains("expired"), "{r:?}");
    // Still a dead letter: the refusal changed nothing.
    assert_eq!(dead_letter_count(&fed, SECURITY).await, 1);
}

/// Polls `ListQueues` until public security's outbox reports its oldest
/// envelope has waited at least `age_ms`; returns that outbox.
async fn outbox_waited(
    admin: &mut cluebridge::pb::admin_client::AdminClient<tonic::transport::Channel>,
    age_ms: u64,
) -> pb::OutboxQueue {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let queues = admin
            .list_queues(pb::ListQueuesRequest {})
            .await
            .expect("queues")
            .into_inner();
        let outbox = queues
            .outboxes
            .into_iter()
            .find(|o| o.peer == SECURITY)
            .expect("security outbox");
        if outbox.oldest_age_ms >= age_ms {
            return outbox;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never aged: {outbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
