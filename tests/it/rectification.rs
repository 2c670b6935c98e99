//! Structured rectification suggestions and the feedback that answers
//! them item by item: checked at Submit and at Peer.Deliver, refused with
//! a clear status and nothing stored when bad.

use crate::harness::*;
use crate::refusals::refusal;
use cluebridge::model::rectification::{FEEDBACK_TYPE, SUGGESTION_TYPE};
use cluebridge::model::{MessageKind, SentState};
use cluebridge::pb;
use prost::Message;
use tonic::Code;

pub fn item(kind: pb::ItemKind, description: &str) -> pb::RectificationItem {
    pb::RectificationItem {
        kind: kind as i32,
        description: description.into(),
    }
}

pub fn suggestion() -> pb::RectificationSuggestion {
    pb::RectificationSuggestion {
        person_ref: "P-0042".into(),
        case_reference: "CASE-7".into(),
        items: vec![
            item(
                pb::ItemKind::Rank,
                "restore the rank withheld after the false report",
            ),
            item(pb::ItemKind::Award, "restore the award withdrawn"),
        ],
    }
}

pub fn outcome(item: u32, outcome: pb::Outcome) -> pb::ItemOutcome {
    pb::ItemOutcome {
        item,
        outcome: outcome as i32,
        reason: String::new(),
        expected_by_ms: 0,
    }
}

pub fn structured(
    id: &str,
    kind: MessageKind,
    to: &str,
    content_type: &str,
    payload: Vec<u8>,
) -> pb::SubmitRequest {
    pb::SubmitRequest {
        content_type: content_type.into(),
        ..submit_request(id, kind, to, &payload)
    }
}

pub fn feedback(id: &str, answers: &str, f: &pb::RectificationFeedback) -> pb::SubmitRequest {
    pb::SubmitRequest {
        correlation_id: answers.into(),
        ..structured(
            id,
            MessageKind::Feedback,
            DISCIPLINE,
            FEEDBACK_TYPE,
            f.encode_to_vec(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_suggestion_is_answered_item_by_item_and_bad_content_is_refused() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut personnel = fed.client(PERSONNEL);
    let kind = MessageKind::RectificationSuggestion;
    let good = structured(
        "rs-1",
        kind,
        PERSONNEL,
        SUGGESTION_TYPE,
        suggestion().encode_to_vec(),
    );
    submit(&mut discipline, good).await;
    let free_form = submit_request("rs-free", kind, PERSONNEL, b"free text still works");
    submit(&mut discipline, free_form).await;
    wait_state(&mut discipline, "rs-1", SentState::Delivered, 10 * SECOND).await;
    wait_state(
        &mut discipline,
        "rs-free",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;

    // Bad suggestions: refused at the sender, nothing stored.
    let before = fed.node(DISCIPLINE).broker.store().counts();
    type Change = fn(&mut pb::RectificationSuggestion);
    let bad: [(&str, Change, &str); 7] = [
        (
            "unknown kind",
            |s| s.items[0].kind = 99,
            "items[0].kind 99 is not an item kind",
        ),
        ("no items", |s| s.items.clear(), "1 to 64 items, not 0"),
        (
            "no description",
            |s| s.items[1].description.clear(),
            "items[1].description is required",
        ),
        (
            "another case",
            |s| s.case_reference = "CASE-8".into(),
            "must be the message's case_reference",
        ),
        (
            "a name for a reference",
            |s| s.person_ref = "Zhang San".into(),
            "person_ref",
        ),
        (
            "too many items",
            |s| s.items = vec![s.items[0].clone(); 65],
            "1 to 64 items, not 65",
        ),
        (
            "a description past the limit",
            |s| s.items[0].description = "x".repeat(64 * 1024),
            "items[0].description is 65536 bytes long",
        ),
    ];
    for (what, change, says) in bad {
        let mut s = suggestion();
        change(&mut s);
        let request = structured(
            "rs-bad",
            kind,
            PERSONNEL,
            SUGGESTION_TYPE,
            s.encode_to_vec(),
        );
        let e = discipline.submit(request).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", e.message());
        assert!(e.message().contains(says), "{what}: {}", e.message());
    }
    let garbage = structured("rs-bad", kind, PERSONNEL, SUGGESTION_TYPE, vec![0xff; 9]);
    let e = discipline.submit(garbage).await.expect_err("garbage");
    assert!(
        e.message()
            .contains("payload is not a RectificationSuggestion"),
        "{}",
        e.message()
    );
    let wrong_kind = structured(
        "rs-bad",
        MessageKind::ClueTransfer,
        SECURITY,
        SUGGESTION_TYPE,
        suggestion().encode_to_vec(),
    );
    let e = discipline
        .submit(wrong_kind)
        .await
        .expect_err("a clue transfer");
    assert!(
        e.message()
            .contains("is for rectification_suggestion messages"),
        "{}",
        e.message()
    );
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);

    // Bad feedback: refused at its sender, nothing stored.
    let before = fed.node(PERSONNEL).broker.store().counts();
    let mut not_corrected = outcome(0, pb::Outcome::NotCorrected);
    let in_progress = outcome(1, pb::Outcome::InProgress);
    let cases = [
        (
            "an item not asked",
            "rs-1",
            vec![outcome(2, pb::Outcome::Corrected)],
            "outcomes[0].item 2 was not asked",
        ),
        (
            "twice",
            "rs-1",
            vec![
                outcome(1, pb::Outcome::Corrected),
                outcome(1, pb::Outcome::Corrected),
            ],
            "answered twice",
        ),
        (
            "no reason",
            "rs-1",
            vec![not_corrected.clone()],
            "outcomes[0].reason is required",
        ),
        (
            "no date",
            "rs-1",
            vec![in_progress.clone()],
            "expected_by_ms is required",
        ),
        ("no outcome", "rs-1", vec![], "at least one outcome"),
        (
            "an unspecified outcome",
            "rs-1",
            vec![outcome(0, pb::Outcome::Unspecified)],
            "outcomes[0].outcome 0 is not an outcome",
        ),
        (
            "a free-form suggestion",
            "rs-free",
            vec![outcome(0, pb::Outcome::Corrected)],
            "is not one",
        ),
    ];
    for (what, answers, outcomes, says) in cases {
        let f = pb::RectificationFeedback {
            outcomes,
            r#final: true,
        };
        let e = personnel
            .submit(feedback("fb-bad", answers, &f))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", e.message());
        assert!(e.message().contains(says), "{what}: {}", e.message());
    }
    let mut garbage = feedback(
        "fb-bad",
        "rs-1",
        &pb::RectificationFeedback {
            outcomes: vec![outcome(0, pb::Outcome::Corrected)],
            r#final: true,
        },
    );
    garbage.payload = vec![0xff; 9].into();
    let e = personnel.submit(garbage).await.expect_err("garbage");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message()
            .contains("payload is not a RectificationFeedback"),
        "{}",
        e.message()
    );
    assert_eq!(fed.node(PERSONNEL).broker.store().counts(), before);

    // Good feedback reaches the sender of the suggestion.
    not_corrected.item = 1;
    not_corrected.reason = "the award was lawfully withdrawn on other grounds".into();
    let answer = pb::RectificationFeedback {
        outcomes: vec![outcome(0, pb::Outcome::Corrected), not_corrected],
        r#final: true,
    };
    submit(&mut personnel, feedback("fb-1", "rs-1", &answer)).await;
    wait_state(&mut personnel, "fb-1", SentState::Delivered, 10 * SECOND).await;
}

/// A member node gets past nothing a client cannot: a bad structured
/// suggestion, validly signed, is refused on Peer.Deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_delivering_bad_structured_content_is_refused() {
    let fed = TestFederation::start_with(|_| {}, &[PERSONNEL]).await;
    let mut s = suggestion();
    s.items.clear();
    let payload = s.encode_to_vec();
    let mut h = header(
        "rs-peer",
        MessageKind::RectificationSuggestion,
        DISCIPLINE,
        PERSONNEL,
        &payload,
    );
    h.content_type = SUGGESTION_TYPE.into();
    h.case_reference = "CASE-7".into();
    let before = fed.node(PERSONNEL).broker.store().counts();
    let r = refusal(
        &fed,
        DISCIPLINE,
        PERSONNEL,
        sealed(&fed.signer(DISCIPLINE), &h, &payload),
    )
    .await;
    assert_eq!(r.code, Code::InvalidArgument as i32, "{}", r.message);
    assert!(r.message.contains("1 to 64 items"), "{}", r.message);
    assert_eq!(fed.node(PERSONNEL).broker.store().counts(), before);
}

/// The development federation gives rectification suggestions to personnel
/// a 30-day reply window: the deadline comes from it unless the submitter
/// sets an earlier one; a later one is refused by the sender and, from a
/// member node, by the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_a_reply_window_sets_and_bounds_the_deadline() {
    use cluebridge::model::EnvelopeHeader;
    const DAY_MS: u64 = 86_400_000;
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, PERSONNEL]).await;
    let mut discipline = fed.client(DISCIPLINE);
    let kind = MessageKind::RectificationSuggestion;
    let header_of =
        |r: pb::SubmitResponse| EnvelopeHeader::decode(&r.envelope_header).expect("header");

    let defaulted = discipline
        .submit(submit_request("rb-1", kind, PERSONNEL, b"x"))
        .await
        .expect("submit")
        .into_inner();
    let h = header_of(defaulted);
    assert_eq!(h.reply_by_ms, h.created_at_ms + 30 * DAY_MS);

    let earlier = pb::SubmitRequest {
        reply_by_ms: cluebridge::now_ms() + 10 * DAY_MS,
        ..submit_request("rb-2", kind, PERSONNEL, b"x")
    };
    let asked = earlier.reply_by_ms;
    let h = header_of(
        discipline
            .submit(earlier)
            .await
            .expect("submit")
            .into_inner(),
    );
    assert_eq!(h.reply_by_ms, asked);

    let clue = discipline
        .submit(submit_request(
            "rb-3",
            MessageKind::ClueTransfer,
            SECURITY,
            b"x",
        ))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(header_of(clue).reply_by_ms, 0, "no window on that route");

    // Settled traffic first (personnel takes both; public security is
    // down), so that the counts below change only by what is refused.
    for id in ["rb-1", "rb-2"] {
        wait_state(&mut discipline, id, SentState::Delivered, 10 * SECOND).await;
    }
    let before = fed.node(DISCIPLINE).broker.store().counts();
    let later = pb::SubmitRequest {
        reply_by_ms: cluebridge::now_ms() + 40 * DAY_MS,
        ..submit_request("rb-4", kind, PERSONNEL, b"x")
    };
    let e = discipline.submit(later).await.expect_err("past the window");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("within 30 days"), "{}", e.message());
    assert_eq!(fed.node(DISCIPLINE).broker.store().counts(), before);

    // A member node that sets a later deadline is refused by the recipient.
    let mut h = header("rb-peer", kind, DISCIPLINE, PERSONNEL, b"x");
    h.reply_by_ms = h.created_at_ms + 40 * DAY_MS;
    let r = refusal(
        &fed,
        DISCIPLINE,
        PERSONNEL,
        sealed(&fed.signer(DISCIPLINE), &h, b"x"),
    )
    .await;
    assert_eq!(r.code, Code::InvalidArgument as i32, "{}", r.message);
    assert!(
        r.message.contains("later than the route allows"),
        "{}",
        r.message
    );
}
