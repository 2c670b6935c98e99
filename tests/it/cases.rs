//! One case, whole: `GetCase` and `cluebridge case` show everything a node
//! sent or received under a case reference, newest first, with receipts
//! and follow-ups; `export --case` writes one bundle for the case that
//! `verify` checks offline, and any changed byte makes it fail.

use crate::harness::*;
use crate::rectification::{feedback, outcome};
use cluebridge::audit::case_bundle;
use cluebridge::devfed::OPERATOR_NAME;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use tonic::Code;

/// Discipline, under CASE-7: a clue to public security, a structured
/// suggestion to personnel answered by feedback; and a clue of another
/// case.
async fn a_case(fed: &TestFederation) {
    let mut discipline = fed.client(DISCIPLINE);
    let mut personnel = fed.client(PERSONNEL);
    submit(
        &mut discipline,
        submit_request("case-clue", MessageKind::ClueTransfer, SECURITY, b"c"),
    )
    .await;
    let mut suggestion = crate::rectification::structured(
        "case-rs",
        MessageKind::RectificationSuggestion,
        PERSONNEL,
        cluebridge::model::rectification::SUGGESTION_TYPE,
        prost::Message::encode_to_vec(&crate::rectification::suggestion()),
    );
    suggestion.case_reference = "CASE-7".into();
    submit(&mut discipline, suggestion).await;
    let mut other = submit_request("other-clue", MessageKind::ClueTransfer, SECURITY, b"o");
    other.case_reference = "CASE-8".into();
    submit(&mut discipline, other).await;
    wait_state(
        &mut discipline,
        "case-rs",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    let answer = pb::RectificationFeedback {
        outcomes: vec![outcome(0, pb::Outcome::Corrected)],
        r#final: true,
    };
    submit(&mut personnel, feedback("case-fb", "case-rs", &answer)).await;
    wait_state(&mut personnel, "case-fb", SentState::Delivered, 10 * SECOND).await;
    wait_state(
        &mut discipline,
        "case-clue",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_shows_what_was_sent_and_received_newest_first_with_receipts_and_follow_ups() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL, SECURITY]).await;
    a_case(&fed).await;
    let mut discipline = fed.client(DISCIPLINE);
    let case = discipline
        .get_case(pb::GetCaseRequest {
            case_reference: "CASE-7".into(),
            ..Default::default()
        })
        .await
        .expect("case")
        .into_inner();
    let seen: Vec<(String, String)> = case
        .messages
        .iter()
        .map(|m| {
            let s = m.message.as_ref().expect("summary");
            (s.message_id.clone(), s.direction.clone())
        })
        .collect();
    let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("case-fb", "received"),
            ("case-rs", "sent"),
            ("case-clue", "sent")
        ]
    );
    let rs = &case.messages[1];
    assert_eq!(
        receipt_kinds(&rs.receipts)[..2],
        [
            cluebridge::model::ReceiptKind::Accepted,
            cluebridge::model::ReceiptKind::Delivered
        ]
    );
    let f = rs.follow_up.as_ref().expect("the suggestion's follow-up");
    assert_eq!(f.state, "answered");
    assert_eq!(f.answers[0].feedback_id, "case-fb");
    assert!(
        case.messages[2].follow_up.is_none(),
        "a clue expects no feedback here"
    );
    let states: Vec<_> = case
        .messages
        .iter()
        .map(|m| m.message.as_ref().map(|s| s.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [Some("inbox"), Some("delivered"), Some("delivered")],
        "the state at this node"
    );

    // Pages of one give the same messages in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = discipline
            .get_case(pb::GetCaseRequest {
                case_reference: "CASE-7".into(),
                limit: 1,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.messages.len() <= 1);
        paged.extend(
            page.messages
                .into_iter()
                .filter_map(|m| m.message.map(|s| s.message_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, ["case-fb", "case-rs", "case-clue"]);

    // Refusals.
    let bad = [
        (
            pb::GetCaseRequest::default(),
            Code::InvalidArgument,
            "case_reference",
        ),
        (
            pb::GetCaseRequest {
                case_reference: "CASE-7".into(),
                limit: 5000,
                ..Default::default()
            },
            Code::InvalidArgument,
            "over the limit",
        ),
        (
            pb::GetCaseRequest {
                case_reference: "CASE-7".into(),
                page_token: "not a token".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "token",
        ),
        (
            pb::GetCaseRequest {
                case_reference: "C".repeat(257),
                ..Default::default()
            },
            Code::InvalidArgument,
            "longer than 256 bytes",
        ),
    ];
    for (request, code, says) in bad {
        let e = discipline.get_case(request).await.expect_err(says);
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(says), "{}", e.message());
    }
    let e = fed
        .connection_as(DISCIPLINE, OPERATOR_NAME)
        .broker()
        .expect("operator")
        .get_case(pb::GetCaseRequest {
            case_reference: "CASE-7".into(),
            ..Default::default()
        })
        .await
        .expect_err("operator");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());

    // The CLI's timeline.
    let (ok, text) = fed.cli(&["case", "CASE-7", "--node", DISCIPLINE]);
    assert!(ok, "{text}");
    assert!(
        text.contains("case CASE-7: 3 message(s), newest first"),
        "{text}"
    );
    assert!(
        text.contains("received feedback personnel/case-fb from personnel"),
        "{text}"
    );
    assert!(text.contains("follow-up: answered"), "{text}");
    assert!(!text.contains("other-clue"), "{text}");
    let (ok, text) = fed.cli(&["case", "CASE-7", "--json", "--node", DISCIPLINE]);
    assert!(ok, "{text}");
    let listed: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids: Vec<_> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["case-fb", "case-rs", "case-clue"]);
    assert_eq!(listed[1]["follow_up"]["state"], "answered");
    assert_eq!(listed[1]["receipts"][0]["kind"], "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_bundle_verifies_offline_and_any_changed_byte_fails() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL, SECURITY]).await;
    a_case(&fed).await;
    let file = fed.dev.dir.join("case-7.json");
    let path = file.to_str().expect("path");
    let (ok, said) = fed.cli(&[
        "export", "--case", "CASE-7", "-o", path, "--node", DISCIPLINE,
    ]);
    assert!(ok && said.contains("(3 messages)"), "{said}");
    let trust = fed.dev.dir.join("federation.toml");
    let (ok, said) = run_cluebridge(&["verify", path, "--trust", trust.to_str().expect("path")]);
    assert!(ok && said.contains("result: PASS"), "{said}");
    assert!(said.contains("message 3 (discipline/case-clue)"), "{said}");

    let text = std::fs::read_to_string(&file).expect("read");
    let keyring = fed.keyring();
    let report = case_bundle::verify(&text, Some(&keyring), None);
    assert!(report.passed, "{}", report.render());

    // Another case's name, a message named twice, an empty case: refused.
    let mut parsed: case_bundle::CaseBundle = serde_json::from_str(&text).expect("parse");
    parsed.case_reference = "CASE-8".into();
    let changed = serde_json::to_string(&parsed).expect("json");
    let f = case_bundle::verify(&changed, Some(&keyring), None);
    assert!(
        f.first_failure()
            .is_some_and(|c| c.detail.contains("names case \"CASE-7\", not \"CASE-8\"")),
        "{}",
        f.render()
    );
    let mut twice: case_bundle::CaseBundle = serde_json::from_str(&text).expect("parse");
    twice.messages.push(twice.messages[0].clone());
    let f = case_bundle::verify(
        &serde_json::to_string(&twice).expect("json"),
        Some(&keyring),
        None,
    );
    assert!(
        f.first_failure()
            .is_some_and(|c| c.detail.contains("twice")),
        "{}",
        f.render()
    );

    // Any changed byte fails it.
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] ^= 0x01;
        let Ok(changed) = String::from_utf8(changed) else {
            continue;
        };
        assert!(
            !case_bundle::verify(&changed, Some(&keyring), None).passed,
            "flipping byte {i} ({:?}) went unnoticed",
            &text[i.saturating_sub(20)..(i + 20).min(text.len())]
        );
    }
}
