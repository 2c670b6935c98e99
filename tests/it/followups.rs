//! Follow-up: a message that expects feedback is awaited at its sender's
//! node and owed at its recipient's; feedback answers it (interim, then
//! final), a deadline that passes makes it overdue once (audit event,
//! metrics, lists), late feedback says so, feedback to a message that
//! expects none is refused, and all of it survives a SIGKILL.

use crate::audit::{auditor, check_store, data_dir};
use crate::crash::wait_serving;
use crate::harness::*;
use crate::rectification::{feedback, outcome, structured, suggestion};
use crate::refusals::refusal;
use cluebridge::model::rectification::SUGGESTION_TYPE;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use cluebridge::pb::broker_client::BrokerClient;
use prost::Message;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

/// A structured suggestion from discipline to personnel (two items),
/// with a reply-by deadline `reply_in` from now (`None`: the route's).
pub fn suggestion_to_personnel(id: &str, reply_in: Option<Duration>) -> pb::SubmitRequest {
    let mut r = structured(
        id,
        MessageKind::RectificationSuggestion,
        PERSONNEL,
        SUGGESTION_TYPE,
        suggestion().encode_to_vec(),
    );
    r.case_reference = "CASE-7".into();
    if let Some(d) = reply_in {
        r.reply_by_ms = cluebridge::now_ms() + d.as_millis() as u64;
    }
    r
}

async fn follow_ups(
    client: &mut BrokerClient<Channel>,
    request: pb::ListFollowUpsRequest,
) -> Vec<pb::FollowUp> {
    client
        .list_follow_ups(request)
        .await
        .expect("list follow-ups")
        .into_inner()
        .follow_ups
}

/// The follow-up of message `id`, polled until `ok` holds.
async fn wait_until(
    client: &mut BrokerClient<Channel>,
    id: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&pb::FollowUp) -> bool,
) -> pb::FollowUp {
    let deadline = Instant::now() + within;
    loop {
        let all = follow_ups(client, pb::ListFollowUpsRequest::default()).await;
        let found = all.into_iter().find(|f| f.message_id == id);
        if let Some(f) = found.as_ref().filter(|f| ok(f)) {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "follow-up of {id} is {found:?} after {within:?}, expected {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The follow-up of message `id`, polled until it is in `state`.
async fn wait_follow_up(
    client: &mut BrokerClient<Channel>,
    id: &str,
    state: &str,
    within: Duration,
) -> pb::FollowUp {
    wait_until(client, id, state, within, |f| f.state == state).await
}

/// `WatchReceipts` from the start, up to and with the first event `last`
/// accepts (within a deadline).
async fn feed_until(
    client: &mut BrokerClient<Channel>,
    last: impl Fn(&pb::ReceiptEvent) -> bool,
) -> Vec<pb::ReceiptEvent> {
    let mut stream = client
        .watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(10 * SECOND, tokio_stream::StreamExt::next(&mut stream))
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        let done = last(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

/// `WatchReceipts` from the start through the `accepted` receipt of a
/// clue transfer submitted now: every event before it, whole.
async fn feed_through_a_new_message(client: &mut BrokerClient<Channel>) -> Vec<pb::ReceiptEvent> {
    submit(
        client,
        submit_request("marker", MessageKind::ClueTransfer, SECURITY, b"m"),
    )
    .await;
    feed_until(client, |e| {
        e.receipt.as_ref().is_some_and(|r| {
            cluebridge::model::SignedReceipt::from_wire(r.clone())
                .open()
                .is_ok_and(|r| r.message_id == "marker")
        })
    })
    .await
}

/// The audit entries of `node` about message `id`, oldest first.
pub async fn audit_entries(fed: &TestFederation, node: &str, id: &str) -> Vec<pb::AuditEntry> {
    let mut log = auditor(fed, node)
        .export_log(pb::ExportLogRequest {
            from_seq: 1,
            to_seq: 0,
        })
        .await
        .expect("export")
        .into_inner();
    let mut found = Vec::new();
    while let Some(e) = tokio_stream::StreamExt::next(&mut log).await {
        let e = e.expect("entry");
        if e.message_id == id {
            found.push(e);
        }
    }
    found
}

/// The audit entries of `node` about message `id` with event `event`.
async fn audit_events(
    fed: &TestFederation,
    node: &str,
    id: &str,
    event: &str,
) -> Vec<pb::AuditEntry> {
    let mut found = audit_entries(fed, node, id).await;
    found.retain(|e| e.event == event);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_then_final_feedback_answers_a_suggestion_item_by_item_on_both_sides() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut personnel = fed.client(PERSONNEL);
    submit(&mut discipline, suggestion_to_personnel("rs-1", None)).await;
    wait_state(&mut discipline, "rs-1", SentState::Delivered, 10 * SECOND).await;

    // The route's 30-day window: awaited at discipline, owed at personnel.
    let awaited = wait_follow_up(&mut discipline, "rs-1", "awaiting_feedback", 5 * SECOND).await;
    assert_eq!(
        (awaited.side.as_str(), awaited.peer.as_str()),
        ("awaiting", PERSONNEL)
    );
    assert_eq!(awaited.case_reference, "CASE-7");
    let month = 30 * 86_400_000;
    assert!(
        awaited.due_ms >= awaited.created_at_ms + month - 5_000,
        "{awaited:?}"
    );
    let owed = wait_follow_up(&mut personnel, "rs-1", "awaiting_feedback", 5 * SECOND).await;
    assert_eq!(
        (owed.side.as_str(), owed.peer.as_str()),
        ("owed", DISCIPLINE)
    );
    assert_eq!(owed.due_ms, awaited.due_ms);

    // Interim: one item corrected, one in progress. Still open.
    let mut in_progress = outcome(1, pb::Outcome::InProgress);
    in_progress.expected_by_ms = cluebridge::now_ms() + 86_400_000;
    let interim = pb::RectificationFeedback {
        outcomes: vec![outcome(0, pb::Outcome::Corrected), in_progress],
        r#final: false,
    };
    submit(&mut personnel, feedback("fb-interim", "rs-1", &interim)).await;
    let f = wait_until(
        &mut discipline,
        "rs-1",
        "an interim answer",
        10 * SECOND,
        |f| !f.answers.is_empty(),
    )
    .await;
    assert_eq!(f.state, "awaiting_feedback");
    assert_eq!(f.answers.len(), 1, "{f:?}");
    assert!(!f.answers[0].r#final);

    // Final: both items done. Answered on both sides, with the outcomes.
    let last = pb::RectificationFeedback {
        outcomes: vec![outcome(1, pb::Outcome::Corrected)],
        r#final: true,
    };
    submit(&mut personnel, feedback("fb-final", "rs-1", &last)).await;
    let f = wait_follow_up(&mut discipline, "rs-1", "answered", 10 * SECOND).await;
    let ids: Vec<_> = f.answers.iter().map(|a| a.feedback_id.as_str()).collect();
    assert_eq!(ids, ["fb-interim", "fb-final"]);
    let outcomes: Vec<_> = f.answers[0]
        .outcomes
        .iter()
        .map(|o| (o.item, o.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, pb::Outcome::Corrected as i32),
            (1, pb::Outcome::InProgress as i32)
        ]
    );
    assert!(f.answers[1].r#final);
    let owed = wait_follow_up(&mut personnel, "rs-1", "answered", 5 * SECOND).await;
    assert_eq!(owed.answers.len(), 2);

    // Each answer is in the audit chain of both nodes.
    let logged = audit_events(&fed, DISCIPLINE, "rs-1", "feedback_recorded").await;
    let states: Vec<_> = logged.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, ["awaiting_feedback", "answered"]);
    assert!(
        logged[1].detail.contains("final feedback fb-final"),
        "{}",
        logged[1].detail
    );
    assert_eq!(
        audit_events(&fed, PERSONNEL, "rs-1", "feedback_recorded")
            .await
            .len(),
        2
    );

    // A closed follow-up takes no more feedback: refused, nothing stored.
    let before = fed.node(PERSONNEL).broker.store().counts();
    let e = personnel
        .submit(feedback("fb-more", "rs-1", &last))
        .await
        .expect_err("closed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("already answered"), "{}", e.message());
    assert_eq!(fed.node(PERSONNEL).broker.store().counts(), before);

    // Follow-up entries do not confuse the check of a stopped store.
    for node in [DISCIPLINE, PERSONNEL] {
        fed.stop(node).await;
        let report = check_store(&data_dir(&fed, node), &fed, &[]);
        assert!(report.passed, "{node}: {}", report.render());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_overdue_once_in_lists_metrics_and_the_log_and_late_feedback_says_so()
{
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut personnel = fed.client(PERSONNEL);
    submit(
        &mut discipline,
        suggestion_to_personnel("rs-due", Some(Duration::from_millis(1500))),
    )
    .await;
    submit(&mut discipline, suggestion_to_personnel("rs-later", None)).await;
    wait_state(&mut discipline, "rs-due", SentState::Delivered, 10 * SECOND).await;

    let f = wait_follow_up(&mut discipline, "rs-due", "overdue", 15 * SECOND).await;
    assert_eq!(f.side, "awaiting");
    wait_follow_up(&mut personnel, "rs-due", "overdue", 15 * SECOND).await;

    // Lists: --overdue holds only it; overdue sorts first.
    let overdue = follow_ups(
        &mut discipline,
        pb::ListFollowUpsRequest {
            states: vec!["overdue".into()],
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<_> = overdue.iter().map(|f| f.message_id.as_str()).collect();
    assert_eq!(ids, ["rs-due"]);
    let all = follow_ups(&mut discipline, pb::ListFollowUpsRequest::default()).await;
    let ids: Vec<_> = all.iter().map(|f| f.message_id.as_str()).collect();
    assert_eq!(ids, ["rs-due", "rs-later"]);
    let owed = follow_ups(
        &mut personnel,
        pb::ListFollowUpsRequest {
            side: "owed".into(),
            due_before_ms: cluebridge::now_ms(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(owed.len(), 1);

    // Metrics, per peer.
    let text = fed.metrics(DISCIPLINE).await;
    assert_eq!(
        metric(&text, "cluebridge_followups_overdue{peer=\"personnel\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cluebridge_followups_overdue{peer=\"public_security\"}"
        ),
        0.0
    );
    let text = fed.metrics(PERSONNEL).await;
    assert_eq!(
        metric(
            &text,
            "cluebridge_feedback_owed_overdue{peer=\"discipline\"}"
        ),
        1.0
    );

    // The CLI, as an agency's staff would ask.
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args([
            "followups",
            "--overdue",
            "--json",
            "--node",
            DISCIPLINE,
            "--dir",
        ])
        .arg(&fed.dev.dir)
        .output()
        .expect("run followups");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(listed[0]["message_id"], "rs-due");
    assert_eq!(listed[0]["state"], "overdue");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["followups", "--owed", "--node", PERSONNEL, "--dir"])
        .arg(&fed.dev.dir)
        .output()
        .expect("run followups");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("overdue") && table.contains("discipline/rs-due"),
        "{table}"
    );

    // WatchReceipts tells the sender once, after the message's receipts:
    // read on until a later message's `accepted` receipt.
    let events = feed_through_a_new_message(&mut discipline).await;
    let overdue: Vec<_> = events.iter().filter_map(|e| e.overdue.as_ref()).collect();
    assert_eq!(overdue.len(), 1, "{events:?}");
    assert_eq!(
        (
            overdue[0].message_id.as_str(),
            overdue[0].recipient_node.as_str()
        ),
        ("rs-due", PERSONNEL)
    );
    assert_eq!(overdue[0].due_ms, f.due_ms);
    let at = events
        .iter()
        .position(|e| e.overdue.is_some())
        .expect("overdue");
    assert!(events[at].receipt.is_none());
    assert_eq!(events[at].state, SentState::Delivered.to_wire());

    // Feedback after the deadline: answered late, on both sides.
    let answer = pb::RectificationFeedback {
        outcomes: vec![outcome(0, pb::Outcome::Corrected)],
        r#final: true,
    };
    submit(&mut personnel, feedback("fb-late", "rs-due", &answer)).await;
    wait_follow_up(&mut discipline, "rs-due", "answered_late", 10 * SECOND).await;
    wait_follow_up(&mut personnel, "rs-due", "answered_late", 5 * SECOND).await;
    let text = fed.metrics(DISCIPLINE).await;
    assert_eq!(
        metric(&text, "cluebridge_followups_overdue{peer=\"personnel\"}"),
        0.0
    );
    assert_eq!(
        audit_events(&fed, DISCIPLINE, "rs-due", "overdue")
            .await
            .len(),
        1
    );
    assert_eq!(
        audit_events(&fed, PERSONNEL, "rs-due", "overdue")
            .await
            .len(),
        1
    );
}

/// A route may expect feedback without a deadline (`expects_feedback`):
/// clue transfers to public security do here, those to judicial organs do
/// not. Free-form feedback closes it on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_expects_feedback_starts_a_follow_up_without_a_deadline() {
    let fed = TestFederation::start_with_routes(
        |routes| {
            for r in routes.iter_mut() {
                if r.from == "discipline" && r.to == "public_security" {
                    r.expects_feedback = Some(true);
                }
            }
        },
        &[DISCIPLINE, SECURITY, JUDICIAL],
    )
    .await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    for (id, to) in [("clue-ps", SECURITY), ("clue-j", JUDICIAL)] {
        submit(
            &mut discipline,
            submit_request(id, MessageKind::ClueTransfer, to, b"clue"),
        )
        .await;
        wait_state(&mut discipline, id, SentState::Delivered, 10 * SECOND).await;
    }
    let awaited = follow_ups(&mut discipline, pb::ListFollowUpsRequest::default()).await;
    let ids: Vec<_> = awaited.iter().map(|f| f.message_id.as_str()).collect();
    assert_eq!(ids, ["clue-ps"], "only the route that expects feedback");
    assert_eq!(
        (awaited[0].state.as_str(), awaited[0].due_ms),
        ("awaiting_feedback", 0)
    );
    let owed = wait_follow_up(&mut security, "clue-ps", "awaiting_feedback", 5 * SECOND).await;
    assert_eq!(
        (owed.side.as_str(), owed.peer.as_str()),
        ("owed", DISCIPLINE)
    );

    let mut answer = submit_request("fb-ps", MessageKind::Feedback, DISCIPLINE, b"handled");
    answer.correlation_id = "clue-ps".into();
    submit(&mut security, answer).await;
    let closed = wait_follow_up(&mut discipline, "clue-ps", "answered", 10 * SECOND).await;
    assert_eq!(closed.answers[0].feedback_id, "fb-ps");
    wait_follow_up(&mut security, "clue-ps", "answered", 5 * SECOND).await;
}

/// Feedback given in time whose delivery is held up past the deadline (the
/// sending agency's node is down): it is judged by when the answering
/// node accepted it, so both nodes say `answered`, not late, even where
/// the sender's node had marked the follow-up overdue in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_given_in_time_but_delivered_late_is_answered_on_both_sides() {
    let mut fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut personnel = fed.client(PERSONNEL);
    let request = suggestion_to_personnel("rs-held", Some(3 * SECOND));
    let due = request.reply_by_ms;
    submit(&mut discipline, request).await;
    wait_state(
        &mut discipline,
        "rs-held",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;

    fed.stop(DISCIPLINE).await;
    let answer = pb::RectificationFeedback {
        outcomes: vec![outcome(0, pb::Outcome::Corrected)],
        r#final: true,
    };
    submit(&mut personnel, feedback("fb-held", "rs-held", &answer)).await;
    assert!(
        cluebridge::now_ms() < due,
        "the test gave the feedback too late"
    );
    let owed = wait_follow_up(&mut personnel, "rs-held", "answered", 5 * SECOND).await;
    let given = owed.answers.last().expect("the answer").at_ms;
    assert!(given <= due, "given at {given}, due {due}");

    // The deadline passes while the feedback waits in personnel's outbox.
    while cluebridge::now_ms() <= due + 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fed.restart(DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    let awaited = wait_until(
        &mut discipline,
        "rs-held",
        "closed by fb-held",
        15 * SECOND,
        |f| f.answers.iter().any(|a| a.feedback_id == "fb-held"),
    )
    .await;
    assert_eq!(awaited.state, "answered", "{awaited:?}");
    assert_eq!(
        awaited.answers[0].at_ms, given,
        "the same time on both nodes"
    );
    let owed = wait_follow_up(&mut personnel, "rs-held", "answered", 5 * SECOND).await;
    assert_eq!(owed.state, awaited.state);
}

/// Feedback from public security answering discipline's message
/// `answers`: refused at its own node's Submit (`client`), and at
/// discipline's Peer.Deliver when public security's node signs it itself
/// (`peer`); nothing stored on either side.
async fn refused_both_ways(
    fed: &TestFederation,
    answers: &str,
    client: (Code, &str),
    peer: (Code, &str),
) {
    let before = fed.node(SECURITY).broker.store().counts();
    let mut answer = submit_request("fb-client", MessageKind::Feedback, DISCIPLINE, b"done");
    answer.correlation_id = answers.into();
    let e = fed
        .client(SECURITY)
        .submit(answer)
        .await
        .expect_err(answers);
    assert_eq!(e.code(), client.0, "{}", e.message());
    assert!(e.message().contains(client.1), "{}", e.message());
    assert_eq!(fed.node(SECURITY).broker.store().counts(), before);

    let before = fed.node(DISCIPLINE).broker.store().counts();
    let mut h = header(
        "fb-peer",
        MessageKind::Feedback,
        SECURITY,
        DISCIPLINE,
        b"done",
    );
    h.correlation_id = answers.into();
    let envelope = sealed(&fed.signer(SECURITY), &h, b"done");
    let r = refusal(fed, SECURITY, DISCIPLINE, envelope).await;
    assert_eq!(r.code, peer.0 as i32, "{}", r.message);
    assert!(r.message.contains(peer.1), "{}", r.message);
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_to_a_message_that_expects_none_is_refused_by_the_client_and_the_peer() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    // A clue transfer on a route that expects no feedback, no deadline.
    submit(
        &mut discipline,
        submit_request("clue-1", MessageKind::ClueTransfer, SECURITY, b"c"),
    )
    .await;
    wait_state(&mut discipline, "clue-1", SentState::Delivered, 10 * SECOND).await;
    assert!(
        follow_ups(&mut discipline, Default::default())
            .await
            .is_empty()
    );

    refused_both_ways(
        &fed,
        "clue-1",
        (Code::FailedPrecondition, "expects no feedback"),
        (Code::FailedPrecondition, "expects no feedback"),
    )
    .await;

    // Feedback on a message that went to another agency: refused by the
    // client's node, and by the sender's node from a member node.
    submit(
        &mut discipline,
        suggestion_to_personnel("rs-elsewhere", None),
    )
    .await;
    refused_both_ways(
        &fed,
        "rs-elsewhere",
        (Code::FailedPrecondition, "no message \"rs-elsewhere\""),
        (Code::PermissionDenied, "never sent to"),
    )
    .await;

    // With a reply-by deadline, the same route's clue expects feedback.
    let mut clue = submit_request("clue-2", MessageKind::ClueTransfer, SECURITY, b"c");
    clue.reply_by_ms = cluebridge::now_ms() + 86_400_000;
    submit(&mut discipline, clue).await;
    wait_state(&mut discipline, "clue-2", SentState::Delivered, 10 * SECOND).await;
    let mut answer = submit_request("fb-3", MessageKind::Feedback, DISCIPLINE, b"handled");
    answer.correlation_id = "clue-2".into();
    submit(&mut security, answer).await;
    let f = wait_follow_up(&mut discipline, "clue-2", "answered", 10 * SECOND).await;
    assert!(f.answers[0].r#final && f.answers[0].outcomes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_refuses_bad_filters_and_strangers_and_pages_through_everything() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    for i in 0..5 {
        submit(
            &mut discipline,
            suggestion_to_personnel(&format!("rs-{i}"), None),
        )
        .await;
    }
    let bad = [
        (
            pb::ListFollowUpsRequest {
                states: vec!["late".into()],
                ..Default::default()
            },
            "unknown follow-up state",
        ),
        (
            pb::ListFollowUpsRequest {
                side: "sideways".into(),
                ..Default::default()
            },
            "is not \"awaiting\" or \"owed\"",
        ),
        (
            pb::ListFollowUpsRequest {
                page_size: 5000,
                ..Default::default()
            },
            "over the limit of 1000",
        ),
        (
            pb::ListFollowUpsRequest {
                page_token: "zz".into(),
                ..Default::default()
            },
            "not one this node gave",
        ),
        (
            pb::ListFollowUpsRequest {
                peer: "no such/node".into(),
                ..Default::default()
            },
            "peer",
        ),
        (
            pb::ListFollowUpsRequest {
                case_reference: "C".repeat(257),
                ..Default::default()
            },
            "longer than 256 bytes",
        ),
    ];
    for (request, says) in bad {
        let e = discipline.list_follow_ups(request).await.expect_err(says);
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(says), "{}", e.message());
    }
    // The operator has neither role.
    let mut operator = fed
        .connection_as(DISCIPLINE, cluebridge::devfed::OPERATOR_NAME)
        .broker()
        .expect("client");
    let e = operator
        .list_follow_ups(pb::ListFollowUpsRequest::default())
        .await
        .expect_err("operator");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());

    // Pages of two reach every follow-up once, in deadline order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = discipline
            .list_follow_ups(pb::ListFollowUpsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.follow_ups.len() <= 2);
        seen.extend(page.follow_ups.into_iter().map(|f| f.message_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["rs-0", "rs-1", "rs-2", "rs-3", "rs-4"]);

    // By peer and by case: a clue to public security of another case that
    // expects feedback by a deadline.
    let mut clue = submit_request("clue-due", MessageKind::ClueTransfer, SECURITY, b"c");
    clue.case_reference = "CASE-9".into();
    clue.reply_by_ms = cluebridge::now_ms() + 3_600_000;
    submit(&mut discipline, clue).await;
    let ids = |list: Vec<pb::FollowUp>| -> Vec<String> {
        list.into_iter().map(|f| f.message_id).collect()
    };
    let by_peer = follow_ups(
        &mut discipline,
        pb::ListFollowUpsRequest {
            peer: SECURITY.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(by_peer), ["clue-due"]);
    let by_case = follow_ups(
        &mut discipline,
        pb::ListFollowUpsRequest {
            case_reference: "CASE-7".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(by_case), ["rs-0", "rs-1", "rs-2", "rs-3", "rs-4"]);
    let (ok, text) = fed.cli(&[
        "followups",
        "--case",
        "CASE-9",
        "--json",
        "--node",
        DISCIPLINE,
    ]);
    assert!(ok, "{text}");
    let listed: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["message_id"], "clue-due");
    assert_eq!(listed[0]["peer"], SECURITY);

    // The CLI's times: `send --reply-by` sets a deadline, `followups
    // --due-before` finds it; a time that is none is refused, nothing sent.
    let send = |id: &str, reply_by: &str| {
        fed.cli(&[
            "send",
            "--node",
            DISCIPLINE,
            "--to",
            SECURITY,
            "--kind",
            "clue_transfer",
            "--subject",
            "s",
            "--payload",
            "p",
            "--id",
            id,
            "--reply-by",
            reply_by,
        ])
    };
    let (ok, said) = send("clue-cli", "2h");
    assert!(ok, "{said}");
    let due_within = |span: &str| {
        let (ok, text) = fed.cli(&[
            "followups",
            "--peer",
            SECURITY,
            "--due-before",
            span,
            "--json",
            "--node",
            DISCIPLINE,
        ]);
        assert!(ok, "{text}");
        let listed: serde_json::Value = serde_json::from_str(&text).expect("json");
        listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|f| f["message_id"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(due_within("30m"), Vec::<String>::new());
    assert_eq!(due_within("90m"), ["clue-due"]);
    assert_eq!(due_within("3h"), ["clue-due", "clue-cli"]);
    let before = fed.node(DISCIPLINE).broker.store().counts();
    let (ok, said) = send("clue-never", "soon");
    assert!(
        !ok && said.contains("--reply-by") && said.contains("\"soon\" is not a time"),
        "{said}"
    );
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);
}

/// The real binary, killed with SIGKILL: follow-ups come back whole, and a
/// deadline that passed while the node was down fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_survive_sigkill_and_a_deadline_passed_while_down_fires_once() {
    let fed = TestFederation::start_with(|_| {}, &[PERSONNEL]).await;
    let mut child = spawn_serve_to(&fed, DISCIPLINE, Stdio::null());
    wait_serving(&fed, DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        suggestion_to_personnel("rs-down", Some(Duration::from_millis(2500))),
    )
    .await;
    submit(&mut discipline, suggestion_to_personnel("rs-open", None)).await;
    submit(&mut discipline, suggestion_to_personnel("rs-done", None)).await;
    wait_state(
        &mut discipline,
        "rs-done",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    let answer = pb::RectificationFeedback {
        outcomes: vec![outcome(1, pb::Outcome::Corrected)],
        r#final: true,
    };
    submit(
        &mut fed.client(PERSONNEL),
        feedback("fb-done", "rs-done", &answer),
    )
    .await;
    let answered = wait_follow_up(&mut discipline, "rs-done", "answered", 10 * SECOND).await;
    let before = wait_follow_up(&mut discipline, "rs-open", "awaiting_feedback", 5 * SECOND).await;
    let due = wait_follow_up(&mut discipline, "rs-down", "awaiting_feedback", 5 * SECOND)
        .await
        .due_ms;

    // Killed before the deadline; it passes while the node is down.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    while cluebridge::now_ms() <= due + 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut child = spawn_serve_to(&fed, DISCIPLINE, Stdio::null());
    wait_serving(&fed, DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    let f = wait_follow_up(&mut discipline, "rs-down", "overdue", 15 * SECOND).await;
    assert_eq!(f.due_ms, due);
    let after = wait_follow_up(&mut discipline, "rs-open", "awaiting_feedback", 5 * SECOND).await;
    assert_eq!(after, before, "the open follow-up is intact");
    assert_eq!(
        audit_events(&fed, DISCIPLINE, "rs-down", "overdue")
            .await
            .len(),
        1
    );

    // Once: another SIGKILL and start leave it overdue, with its one event.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let _child = spawn_serve_to(&fed, DISCIPLINE, Stdio::null());
    wait_serving(&fed, DISCIPLINE).await;
    let mut discipline = fed.client(DISCIPLINE);
    wait_follow_up(&mut discipline, "rs-down", "overdue", 15 * SECOND).await;
    assert_eq!(
        audit_events(&fed, DISCIPLINE, "rs-down", "overdue")
            .await
            .len(),
        1
    );
    let still = wait_follow_up(&mut discipline, "rs-done", "answered", 5 * SECOND).await;
    assert_eq!(
        still, answered,
        "the answered follow-up and its outcomes are intact"
    );
    // One overdue event on WatchReceipts, up to a later message's receipt.
    let events = feed_through_a_new_message(&mut discipline).await;
    let overdue: Vec<_> = events.iter().filter_map(|e| e.overdue.as_ref()).collect();
    assert_eq!(overdue.len(), 1, "{events:?}");
    assert_eq!(overdue[0].message_id, "rs-down");
}
