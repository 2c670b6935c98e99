//! Approval before sending (four eyes): on a route that requires it, a
//! submit waits unsigned and unsent until another principal with the
//! approve role approves it (then it is signed, accepted and sent, the
//! approver named in the audit chain and the bundle) or declines it (never
//! sent, final, recorded). The submitter cannot approve its own message,
//! and a principal without the role cannot approve at all.

use crate::audit::{bundle_of, check_store, data_dir};
use crate::harness::*;
use cluebridge::audit::bundle;
use cluebridge::config::{NodeFile, PrincipalFile};
use cluebridge::devfed::{APPROVER_NAME, OPERATOR_NAME};
use cluebridge::model::SentState;
use cluebridge::pb;
use tonic::Code;

/// Discipline also has a clerk who may both submit and approve.
const CLERK: &str = "clerk";

fn with_clerk(node: &mut NodeFile) {
    node.principals.push(PrincipalFile {
        name: CLERK.into(),
        roles: vec!["submit".into(), "approve".into()],
        receive_kinds: None,
    });
}

fn suggestion_request(id: &str) -> pb::SubmitRequest {
    crate::followups::suggestion_to_personnel(id, None)
}

async fn status(fed: &TestFederation, id: &str) -> pb::GetStatusResponse {
    fed.client(DISCIPLINE)
        .get_status(pb::GetStatusRequest {
            message_id: id.into(),
        })
        .await
        .expect("status")
        .into_inner()
}

/// A client of discipline with the certificate of principal `name`.
fn discipline_as(
    fed: &TestFederation,
    name: &str,
) -> pb::broker_client::BrokerClient<tonic::transport::Channel> {
    fed.connection_as(DISCIPLINE, name)
        .broker()
        .expect("a client")
}

/// A decline of discipline's waiting message `id`, saying why.
fn decline(id: &str, reason: &str) -> pb::DeclineRequest {
    pb::DeclineRequest {
        message_id: id.into(),
        reason: reason.into(),
    }
}

/// A client command at discipline, as its approver by default.
fn cli(fed: &TestFederation, args: &[&str]) -> (bool, String) {
    fed.cli(&[args, &["--node", DISCIPLINE]].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_waits_unsigned_and_unsent_until_another_principal_approves_it() {
    let mut fed = TestFederation::start_approving(with_clerk, &[DISCIPLINE, PERSONNEL]).await;
    let mut backoffice = fed.client(DISCIPLINE);
    let personnel_before = fed.node(PERSONNEL).broker.store().counts();

    let held = backoffice
        .submit(suggestion_request("rs-approve"))
        .await
        .expect("submit")
        .into_inner();
    assert!(held.pending_approval && !held.duplicate);
    assert!(
        held.accepted.is_none()
            && held.envelope_header.is_empty()
            && held.envelope_signature.is_empty()
    );
    let again = backoffice
        .submit(suggestion_request("rs-approve"))
        .await
        .expect("repeat")
        .into_inner();
    assert!(again.pending_approval && again.duplicate);
    let s = status(&fed, "rs-approve").await;
    assert_eq!(s.state, pb::MessageState::PendingApproval as i32);
    assert!(s.receipts.is_empty() && s.envelope_header.is_empty());

    // The back office has no approve role; the clerk may not approve its
    // own submit.
    let e = backoffice
        .approve(pb::ApproveRequest {
            message_id: "rs-approve".into(),
        })
        .await
        .expect_err("no role");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("approve role"), "{}", e.message());
    let mut clerk = discipline_as(&fed, CLERK);
    clerk
        .submit(suggestion_request("rs-own"))
        .await
        .expect("clerk submits");
    let e = clerk
        .approve(pb::ApproveRequest {
            message_id: "rs-own".into(),
        })
        .await
        .expect_err("own");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("was submitted by clerk"),
        "{}",
        e.message()
    );

    // Nothing reached personnel; the approver sees both waiting.
    assert_eq!(
        fed.node(PERSONNEL).broker.store().counts(),
        personnel_before
    );
    let (ok, listed) = cli(&fed, &["pending", "--json"]);
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let ids: Vec<_> = listed
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["message_id"].as_str().unwrap_or(""),
                p["submitted_by"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ids, [("rs-approve", "backoffice"), ("rs-own", CLERK)]);

    // The approver approves: signed, accepted, sent.
    let (ok, said) = cli(&fed, &["approve", "rs-approve"]);
    assert!(ok && said.contains("accepted rs-approve"), "{said}");
    let mut backoffice = fed.client(DISCIPLINE);
    wait_state(
        &mut backoffice,
        "rs-approve",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    let s = status(&fed, "rs-approve").await;
    assert!(!s.envelope_header.is_empty());
    // A repeat answers the same receipt.
    let first = s.receipts[0].clone();
    let repeat = discipline_as(&fed, APPROVER_NAME)
        .approve(pb::ApproveRequest {
            message_id: "rs-approve".into(),
        })
        .await
        .expect("repeat approve")
        .into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.accepted, Some(first));

    // The audit chain and the bundle name the submitter and the approver,
    // before the acceptance.
    let text = bundle_of(&fed, DISCIPLINE, "", "rs-approve").await;
    let report = bundle::verify(&text, Some(&fed.keyring()), None);
    assert!(report.passed, "{}", report.render());
    let b: bundle::Bundle = serde_json::from_str(&text).expect("bundle");
    let events: Vec<(String, String)> = b
        .audit
        .segments
        .iter()
        .flat_map(|s| &s.entries)
        .filter_map(|e| e.content.as_ref())
        .map(|c| (c.event.clone(), c.detail.clone()))
        .collect();
    let names: Vec<_> = events.iter().map(|(e, _)| e.as_str()).take(3).collect();
    assert_eq!(
        names,
        ["awaiting_approval", "approved", "accepted"],
        "{events:?}"
    );
    assert!(
        events[0].1.contains("submitted by backoffice"),
        "{events:?}"
    );
    assert!(events[1].1.contains("approved by approver"), "{events:?}");

    // The stopped node's store agrees with its chain: sent, and waiting.
    fed.stop(DISCIPLINE).await;
    let report = check_store(&data_dir(&fed, DISCIPLINE), &fed, &[]);
    assert!(report.passed, "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_submit_is_never_sent_and_the_decline_is_final_and_recorded() {
    let mut fed = TestFederation::start_approving(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut backoffice = fed.client(DISCIPLINE);
    let personnel_before = fed.node(PERSONNEL).broker.store().counts();
    backoffice
        .submit(suggestion_request("rs-decline"))
        .await
        .expect("submit");
    let mut approver = discipline_as(&fed, APPROVER_NAME);

    // Refusals first: no role, no reason, nothing waiting.
    let mut operator = discipline_as(&fed, OPERATOR_NAME);
    let e = operator
        .decline(decline("rs-decline", "no"))
        .await
        .expect_err("operator");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = approver
        .decline(decline("rs-decline", ""))
        .await
        .expect_err("no reason");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = approver
        .decline(decline("rs-nothing", "no"))
        .await
        .expect_err("nothing waits");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    let (ok, said) = cli(
        &fed,
        &[
            "approve",
            "rs-decline",
            "--decline",
            "the items repeat case 6",
        ],
    );
    assert!(ok && said.contains("declined rs-decline"), "{said}");
    let s = status(&fed, "rs-decline").await;
    assert_eq!(s.state, pb::MessageState::Declined as i32);
    assert_eq!(
        (s.declined_by.as_str(), s.declined_reason.as_str()),
        (APPROVER_NAME, "the items repeat case 6")
    );

    // Final: no approval, no resubmit, nothing listed, nothing sent.
    let e = approver
        .approve(pb::ApproveRequest {
            message_id: "rs-decline".into(),
        })
        .await
        .expect_err("declined");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("declined by approver"),
        "{}",
        e.message()
    );
    let e = backoffice
        .submit(suggestion_request("rs-decline"))
        .await
        .expect_err("resubmit");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let pending = approver
        .list_pending(pb::ListPendingRequest::default())
        .await
        .expect("list")
        .into_inner()
        .pending;
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(
        fed.node(PERSONNEL).broker.store().counts(),
        personnel_before
    );

    // Recorded in the audit chain with who and why.
    let events: Vec<(String, String)> =
        crate::followups::audit_entries(&fed, DISCIPLINE, "rs-decline")
            .await
            .into_iter()
            .map(|e| (e.event, e.detail))
            .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "declined");
    assert!(
        events[1]
            .1
            .contains("declined by approver: the items repeat case 6"),
        "{events:?}"
    );
    fed.stop(DISCIPLINE).await;
    let report = check_store(&data_dir(&fed, DISCIPLINE), &fed, &[]);
    assert!(report.passed, "{}", report.render());
}

/// A submit whose time to live passes while it waits is declined in the
/// node's name, never sent, and the store still agrees with its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_outlives_its_time_to_live_while_waiting_is_declined_by_the_node() {
    let mut fed = TestFederation::start_approving(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut request = suggestion_request("rs-stale");
    request.ttl_seconds = 1;
    let held = fed
        .client(DISCIPLINE)
        .submit(request)
        .await
        .expect("submit")
        .into_inner();
    assert!(held.pending_approval);
    let deadline = std::time::Instant::now() + 15 * SECOND;
    let s = loop {
        let s = status(&fed, "rs-stale").await;
        if s.state == pb::MessageState::Declined as i32 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still {}", s.state);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(s.declined_by, DISCIPLINE);
    assert!(s.declined_reason.contains("time to live passed"), "{s:?}");
    let e = discipline_as(&fed, APPROVER_NAME)
        .approve(pb::ApproveRequest {
            message_id: "rs-stale".into(),
        })
        .await
        .expect_err("declined");
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert_eq!(
        fed.node(PERSONNEL).broker.store().counts().inbound,
        0,
        "never sent"
    );
    fed.stop(DISCIPLINE).await;
    let report = check_store(&data_dir(&fed, DISCIPLINE), &fed, &[]);
    assert!(report.passed, "{}", report.render());
}

/// Every other way to get approval wrong is refused by name and changes
/// nothing: listing without the role or with a bad page, approving an
/// unknown or malformed id, declining without a real reason or one's own
/// submit, resubmitting a waiting id with other content, declining what
/// was sent already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_refusals_name_their_cause_and_change_nothing() {
    let fed = TestFederation::start_approving(with_clerk, &[DISCIPLINE, PERSONNEL]).await;
    let mut backoffice = fed.client(DISCIPLINE);
    let mut approver = discipline_as(&fed, APPROVER_NAME);
    let mut clerk = discipline_as(&fed, CLERK);
    backoffice
        .submit(suggestion_request("rs-wait"))
        .await
        .expect("submit");
    clerk
        .submit(suggestion_request("rs-clerk"))
        .await
        .expect("clerk submits");
    let before = fed.node(DISCIPLINE).broker.store().counts();
    let expect = |e: tonic::Status, code: Code, says: &str| {
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(says), "{says:?} in {}", e.message());
    };

    let e = backoffice
        .list_pending(pb::ListPendingRequest::default())
        .await
        .expect_err("no role");
    expect(e, Code::PermissionDenied, "approve role");
    let e = approver
        .list_pending(pb::ListPendingRequest {
            page_token: "not hex".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    expect(e, Code::InvalidArgument, "page_token");
    let approve = |id: &str| pb::ApproveRequest {
        message_id: id.into(),
    };
    let e = approver
        .approve(approve("rs-unknown"))
        .await
        .expect_err("unknown");
    expect(e, Code::NotFound, "no submit discipline/rs-unknown waits");
    let e = approver.approve(approve("")).await.expect_err("empty id");
    expect(e, Code::InvalidArgument, "message_id");
    let e = approver
        .decline(decline("rs-wait", "   "))
        .await
        .expect_err("blank reason");
    expect(e, Code::InvalidArgument, "needs a reason");
    let e = clerk
        .decline(decline("rs-clerk", "changed my mind"))
        .await
        .expect_err("own");
    expect(e, Code::PermissionDenied, "was submitted by clerk");
    let mut other = suggestion_request("rs-wait");
    other.subject = "another subject".into();
    assert_ne!(other.subject, "subject of rs-wait");
    let e = backoffice.submit(other).await.expect_err("other content");
    expect(e, Code::AlreadyExists, "rs-wait");
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);
    let pending = approver
        .list_pending(pb::ListPendingRequest::default())
        .await
        .expect("list")
        .into_inner()
        .pending;
    let waiting: Vec<_> = pending
        .iter()
        .map(|p| (p.message_id.as_str(), p.subject.as_str()))
        .collect();
    assert_eq!(
        waiting,
        [
            ("rs-clerk", "subject of rs-clerk"),
            ("rs-wait", "subject of rs-wait")
        ]
    );

    // Sent: no decline any more.
    approver.approve(approve("rs-wait")).await.expect("approve");
    let e = approver
        .decline(decline("rs-wait", "too late"))
        .await
        .expect_err("sent");
    expect(e, Code::FailedPrecondition, "approved and sent already");
    let s = status(&fed, "rs-wait").await;
    assert!(!s.receipts.is_empty(), "accepted: {s:?}");
    assert_ne!(s.state, pb::MessageState::Declined as i32);
}
