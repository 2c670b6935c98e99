//! Evidence for auditors: the audit chain, receipt bundles and their offline
//! verification, edits of a stopped node's store, a rewritten history
//! against peer-witnessed checkpoints, and the `audit` role.

use crate::harness::*;
use cluebridge::audit::{CheckpointsFile, Report, bundle, store_check};
use cluebridge::client::Connection;
use cluebridge::config::NodeFile;
use cluebridge::devfed::{AUDITOR_NAME, OPERATOR_NAME};
use cluebridge::model::{Checkpoint, MessageKind, MessageRef, SentState, SignedCheckpoint, sha256};
use cluebridge::pb;
use cluebridge::pb::audit_client::AuditClient;
use cluebridge::store::{SentRecord, Store, parse_audit_record};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

/// Checkpoints come quickly, so peers witness them within a test.
pub fn audited(node: &mut NodeFile) {
    node.audit.checkpoint_every_entries = 2;
    node.audit.checkpoint_interval_secs = 1;
    // Public security lets auditors take payloads in bundles; discipline
    // keeps the default (it does not).
    node.audit.allow_payload_export = node.node_id == SECURITY;
}

pub fn auditor(fed: &TestFederation, node: &str) -> AuditClient<Channel> {
    Connection::from_files(&fed.dev.client_as(node, AUDITOR_NAME).expect("files"))
        .expect("connection")
        .audit()
        .expect("client")
}

pub async fn bundle_of(fed: &TestFederation, node: &str, sender: &str, id: &str) -> String {
    auditor(fed, node)
        .get_bundle(pb::GetBundleRequest {
            sender_node: sender.into(),
            message_id: id.into(),
            include_payload: false,
        })
        .await
        .expect("bundle")
        .into_inner()
        .bundle_json
}

fn timeline(report: &Report) -> String {
    report
        .timeline
        .iter()
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Submits a message from discipline to public security, which sees it
/// lapse once, releases it once and acknowledges the third delivery.
async fn redelivered_released_acked(fed: &TestFederation, id: &str) {
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    submit(
        &mut discipline,
        submit_request(id, MessageKind::ClueTransfer, SECURITY, b"evidence"),
    )
    .await;
    let mut stream = receiver(&mut security, 1, 1).await;
    let first = next(&mut stream, 10 * SECOND).await;
    assert_eq!(first.attempt, 1);
    // The 1 s lease lapses: redelivered.
    let second = next(&mut stream, 10 * SECOND).await;
    assert_eq!(second.attempt, 2);
    security
        .release(pb::ReleaseRequest {
            lease: lease_of(&second),
            delay_ms: 0,
        })
        .await
        .expect("release");
    let third = next(&mut stream, 10 * SECOND).await;
    assert_eq!(third.attempt, 3);
    security
        .ack(pb::AckRequest {
            lease: lease_of(&third),
        })
        .await
        .expect("ack");
    wait_state(&mut discipline, id, SentState::Acknowledged, 15 * SECOND).await;
}

/// Messages accepted at the same moment share one signature over their
/// headers' Merkle root: the submit answers each header's proof, the
/// recipient takes the envelope on it, and the bundles of both nodes
/// verify offline with the federation's keys alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_signed_as_a_batch_travel_and_their_bundles_verify() {
    let fed = TestFederation::start_with(audited, &[DISCIPLINE, SECURITY]).await;
    let deadline = Instant::now() + 30 * SECOND;
    let (id, proof) = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "no two submits were ever signed together"
        );
        let round: Vec<_> = (0..32)
            .map(|i| {
                let mut client = fed.client(DISCIPLINE);
                let id = format!("batch-{}-{i}", cluebridge::now_ms());
                tokio::spawn(async move {
                    let request = submit_request(&id, MessageKind::ClueTransfer, SECURITY, b"b");
                    let answer = client.submit(request).await.expect("submit").into_inner();
                    (id, answer)
                })
            })
            .collect();
        for call in round {
            let (id, answer) = call.await.expect("task");
            if let Some(proof) = answer.envelope_batch.filter(|b| b.tree_size >= 2) {
                break 'found (id, proof);
            }
        }
    };
    let mut discipline = fed.client(DISCIPLINE);
    wait_state(&mut discipline, &id, SentState::Delivered, 15 * SECOND).await;
    let trust = fed.keyring();
    for node in [DISCIPLINE, SECURITY] {
        let text = bundle_of(&fed, node, DISCIPLINE, &id).await;
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            parsed["envelope"]["batch"]["tree_size"],
            serde_json::json!(proof.tree_size),
            "{node}'s bundle carries the proof"
        );
        let report = bundle::verify(&text, Some(&trust), None);
        assert!(report.passed, "{node}: {}", report.render());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_shows_redeliveries_a_release_and_the_ack_and_verifies() {
    let fed = TestFederation::start_with(audited, &[DISCIPLINE, SECURITY]).await;
    redelivered_released_acked(&fed, "audit-1").await;
    let trust = fed.keyring();

    // The recipient's bundle: custody, three leases, the lapse, the release
    // and the acknowledgement.
    let text = bundle_of(&fed, SECURITY, DISCIPLINE, "audit-1").await;
    let report = bundle::verify(&text, Some(&trust), None);
    assert!(report.passed, "{}", report.render());
    let lines = timeline(&report);
    for expected in [
        "delivered -> inbox",
        "leased -> leased (attempt 1",
        "redelivered -> inbox (attempt 1",
        "leased -> leased (attempt 2",
        "released -> inbox (attempt 2",
        "leased -> leased (attempt 3",
        "acknowledged -> acknowledged (attempt 3",
        "receipt delivered",
        "receipt acknowledged  signed by public_security, attempt 3",
    ] {
        assert!(lines.contains(expected), "{expected:?} missing in\n{lines}");
    }

    // With the payload, where the node allows it.
    let with_payload = auditor(&fed, SECURITY)
        .get_bundle(pb::GetBundleRequest {
            sender_node: DISCIPLINE.into(),
            message_id: "audit-1".into(),
            include_payload: true,
        })
        .await
        .expect("bundle with payload")
        .into_inner()
        .bundle_json;
    let report = bundle::verify(&with_payload, Some(&trust), None);
    assert!(report.passed, "{}", report.render());
    let digest = report
        .checks
        .iter()
        .find(|c| c.name == "payload digest")
        .expect("payload check");
    assert!(
        digest.detail.contains("payload included and matches"),
        "{}",
        digest.detail
    );

    // The sender's bundle: accepted, then the receipts that came back.
    let text = bundle_of(&fed, DISCIPLINE, "", "audit-1").await;
    let report = bundle::verify(&text, Some(&trust), None);
    assert!(report.passed, "{}", report.render());
    let lines = timeline(&report);
    for expected in [
        "accepted -> accepted",
        "receipt_received -> delivered",
        "receipt_received -> acknowledged",
        "receipt accepted",
    ] {
        assert!(lines.contains(expected), "{expected:?} missing in\n{lines}");
    }

    // A checkpoint of entry 1 with another hash, as a peer would hold it
    // had discipline signed a different history, contradicts the bundle.
    let other_history = fed.signer(DISCIPLINE).sign_checkpoint(&Checkpoint {
        node: DISCIPLINE.into(),
        seq: 1,
        head_hash: [7; 32],
        time_ms: cluebridge::now_ms(),
        signing_key_id: format!("{DISCIPLINE}-k1"),
    });
    let report = bundle::verify(&text, Some(&trust), Some(&[other_history]));
    let f = report.first_failure().expect("contradicted");
    assert_eq!(f.name, "witnessed checkpoints");
    assert!(f.detail.contains("entry #1"), "{}", f.detail);

    // The real binary agrees.
    let file = fed.dev.dir.join("audit-1.json");
    std::fs::write(&file, &text).expect("write bundle");
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .arg("verify")
        .arg(&file)
        .arg("--trust")
        .arg(fed.dev.dir.join("federation.toml"))
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("PASS  envelope signature"), "{stdout}");
    assert!(stdout.contains("result: PASS"), "{stdout}");

    // The search finds it by case reference and state.
    let found = auditor(&fed, DISCIPLINE)
        .list_messages(pb::ListMessagesRequest {
            case_reference: "CASE-7".into(),
            state: "acknowledged".into(),
            peer: SECURITY.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .messages;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].message_id, "audit-1");
    let none = auditor(&fed, DISCIPLINE)
        .list_messages(pb::ListMessagesRequest {
            state: "rejected".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .messages;
    assert!(none.is_empty());
    // The recipient lists it as received from its sender, in its state
    // there.
    let held = auditor(&fed, SECURITY)
        .list_messages(pb::ListMessagesRequest {
            peer: DISCIPLINE.into(),
            case_reference: "CASE-7".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(held.messages.len(), 1);
    let m = &held.messages[0];
    assert_eq!(
        (
            m.message_id.as_str(),
            m.direction.as_str(),
            m.state.as_str()
        ),
        ("audit-1", "received", "acknowledged")
    );
    assert_eq!(m.subject, "subject of audit-1");
    assert!(held.next_page_token.is_empty());

    // The whole log streams in order, each entry linked to the one before.
    let mut log = auditor(&fed, SECURITY)
        .export_log(pb::ExportLogRequest {
            from_seq: 1,
            to_seq: 0,
        })
        .await
        .expect("export")
        .into_inner();
    let mut prev = vec![0u8; 32];
    let mut n = 0;
    while let Some(e) = tokio_stream::StreamExt::next(&mut log).await {
        let e = e.expect("entry");
        n += 1;
        assert_eq!(e.seq, n);
        assert_eq!(e.prev_hash, prev);
        // Checked with SHA-256 alone, as audit.proto describes it.
        assert_eq!(
            sha256(&content_as_documented(&e)).to_vec(),
            e.content_sha256
        );
        let mut link = b"cluebridge/v1/audit-entry\n".to_vec();
        link.extend_from_slice(&e.seq.to_be_bytes());
        link.extend_from_slice(&e.content_sha256);
        link.extend_from_slice(&e.prev_hash);
        assert_eq!(sha256(&link).to_vec(), e.hash);
        prev = e.hash;
    }
    assert_eq!(n, 7, "custody, 3 leases, lapse, release, ack");

    // Flipping any byte of the bundle makes it fail.
    flip_every_byte(&text, &trust);
    flips_fail_at_the_right_check(&text, &trust);
}

/// An exported entry's content, built from its fields as audit.proto
/// documents it (not with the node's own code).
fn content_as_documented(e: &pb::AuditEntry) -> Vec<u8> {
    let mut out = e.time_ms.to_be_bytes().to_vec();
    for s in [&e.event, &e.sender_node, &e.message_id, &e.state, &e.detail] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    if e.receipt_sha256.is_empty() {
        out.push(0);
    } else {
        out.push(1);
        out.extend_from_slice(&e.receipt_sha256);
    }
    out
}

/// Each byte of the bundle, changed, makes verification fail.
fn flip_every_byte(text: &str, trust: &cluebridge::crypto::Keyring) {
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] ^= 0x01;
        let Ok(changed) = String::from_utf8(changed) else {
            continue; // not text any more: no JSON parser takes it
        };
        let report = bundle::verify(&changed, Some(trust), None);
        assert!(
            !report.passed,
            "flipping byte {i} ({:?}) went unnoticed",
            &text[i.saturating_sub(20)..(i + 20).min(text.len())]
        );
    }
}

/// Changes one character in the middle of the string `value` in `text`.
fn flip_in(text: &str, value: &str) -> String {
    let at = text.find(value).expect("value in bundle") + value.len() / 2;
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("text")
}

fn failing(text: &str, trust: &cluebridge::crypto::Keyring) -> String {
    let report = bundle::verify(text, Some(trust), None);
    let first = report.first_failure().expect("a failed check");
    format!("{}: {}", first.name, first.detail)
}

fn flips_fail_at_the_right_check(text: &str, trust: &cluebridge::crypto::Keyring) {
    let b: bundle::Bundle = serde_json::from_str(text).expect("bundle");
    let f = failing(&flip_in(text, &b.envelope.header), trust);
    assert!(f.starts_with("envelope signature"), "{f}");
    let f = failing(&flip_in(text, &b.envelope.payload_sha256), trust);
    assert!(f.starts_with("payload digest"), "{f}");
    let f = failing(&flip_in(text, &b.receipts[1].signature), trust);
    assert!(f.starts_with("receipt 2") && f.contains("signature"), "{f}");
    let f = failing(&flip_in(text, &b.receipts[0].receipt), trust);
    assert!(f.starts_with("receipt 1"), "{f}");
    let segment = &b.audit.segments[0];
    let shown = segment
        .entries
        .iter()
        .find(|e| e.content.is_some())
        .expect("an entry about the message");
    let detail = &shown.content.as_ref().expect("content").detail;
    let f = failing(&flip_in(text, detail), trust);
    assert!(
        f.starts_with("audit chain 1") && f.contains(&format!("entry #{}", shown.seq)),
        "{f}"
    );
    let f = failing(&flip_in(text, &shown.hash), trust);
    assert!(f.starts_with("audit chain 1"), "{f}");
    let f = failing(&flip_in(text, &segment.checkpoint.signature), trust);
    assert!(f.starts_with("checkpoint 1"), "{f}");
    let f = failing(&flip_in(text, &b.keys[0].public_key), trust);
    assert!(f.starts_with("keys"), "{f}");
}

// ------------------------------------------------------------ the search

/// Every page of a search, following the page tokens: the messages in the
/// order given, and each page's size.
async fn list_all(
    auditor: &mut AuditClient<Channel>,
    request: pb::ListMessagesRequest,
) -> (Vec<pb::MessageSummary>, Vec<usize>) {
    let mut messages = Vec::new();
    let mut pages = Vec::new();
    let mut token = request.page_token.clone();
    loop {
        let page = auditor
            .list_messages(pb::ListMessagesRequest {
                page_token: token,
                ..request.clone()
            })
            .await
            .expect("a page")
            .into_inner();
        pages.push(page.messages.len());
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return (messages, pages);
        }
        assert!(pages.len() < 1000, "the pages never end");
        token = page.next_page_token;
    }
}

/// (created, sender node, message id): where a summary sits in the order.
fn place(m: &pb::MessageSummary) -> (u64, String, String) {
    (m.created_at_ms, m.sender_node.clone(), m.message_id.clone())
}

/// Newest first, then by the tie of the message key (a digest): the
/// search's order.
fn newest_first(mut places: Vec<(u64, String, String)>) -> Vec<(u64, String, String)> {
    let tie = |p: &(u64, String, String)| cluebridge::store::keys::tie(&message_key(&p.1, &p.2));
    places.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| tie(a).cmp(&tie(b))));
    places
}

/// Submits `n` messages to public security (which need not be up), the
/// `i`-th with case reference `case(i)`; returns their places, newest
/// first.
async fn submitted(
    fed: &TestFederation,
    n: usize,
    case: impl Fn(usize) -> String,
) -> Vec<(u64, String, String)> {
    let mut discipline = fed.client(DISCIPLINE);
    let mut auditor = auditor(fed, DISCIPLINE);
    for i in 0..n {
        let mut r = submit_request(
            &format!("s-{i:03}"),
            MessageKind::ClueTransfer,
            SECURITY,
            b"x",
        );
        r.case_reference = case(i);
        submit(&mut discipline, r).await;
    }
    let (all, _) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            limit: 10_000,
            ..Default::default()
        },
    )
    .await;
    let places: Vec<_> = all.iter().map(place).collect();
    assert_eq!(places.len(), n);
    assert_eq!(places, newest_first(places.clone()));
    places
}

/// The search pages newest first with neither a gap nor a repeat, by case
/// and by time range, each page as full as its limit allows; the answers
/// are those of the whole list filtered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_pages_newest_first_by_case_and_by_time() {
    let fed = TestFederation::start_with(audited, &[DISCIPLINE]).await;
    let case = |i: usize| ["CASE-A", "CASE-B", ""][i % 3].to_string();
    let all = submitted(&fed, 25, case).await;
    let mut auditor = auditor(&fed, DISCIPLINE);
    let cases: BTreeMap<String, String> = (0..25).map(|i| (format!("s-{i:03}"), case(i))).collect();

    // Pages of 4: seven of them, full but the last, the whole list once.
    let (paged, pages) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            limit: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(pages, [4, 4, 4, 4, 4, 4, 1]);
    assert_eq!(paged.iter().map(place).collect::<Vec<_>>(), all);

    // By case, in pages of 3.
    let (by_case, pages) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            case_reference: "CASE-A".into(),
            limit: 3,
            ..Default::default()
        },
    )
    .await;
    let expected: Vec<_> = all
        .iter()
        .filter(|(_, _, id)| cases[id] == "CASE-A")
        .cloned()
        .collect();
    assert_eq!(expected.len(), 9);
    assert_eq!(pages, [3, 3, 3]);
    assert_eq!(by_case.iter().map(place).collect::<Vec<_>>(), expected);
    assert!(by_case.iter().all(|m| m.case_reference == "CASE-A"));

    // A time range (from included, to excluded), alone and with a case.
    let (from_ms, to_ms) = (all[17].0, all[4].0);
    let within = |(at, _, _): &&(u64, String, String)| *at >= from_ms && *at < to_ms;
    let request = pb::ListMessagesRequest {
        from_ms,
        to_ms,
        limit: 2,
        ..Default::default()
    };
    let (ranged, _) = list_all(&mut auditor, request.clone()).await;
    let expected: Vec<_> = all.iter().filter(within).cloned().collect();
    assert!(!expected.is_empty());
    assert_eq!(ranged.iter().map(place).collect::<Vec<_>>(), expected);
    let (ranged, _) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            case_reference: "CASE-B".into(),
            ..request
        },
    )
    .await;
    let expected: Vec<_> = all
        .iter()
        .filter(within)
        .filter(|(_, _, id)| cases[id] == "CASE-B")
        .cloned()
        .collect();
    assert_eq!(ranged.iter().map(place).collect::<Vec<_>>(), expected);

    // A case no message carries, and an empty time range: nothing, at once.
    for request in [
        pb::ListMessagesRequest {
            case_reference: "CASE-".into(),
            ..Default::default()
        },
        pb::ListMessagesRequest {
            from_ms: to_ms,
            to_ms,
            ..Default::default()
        },
    ] {
        let page = auditor
            .list_messages(request)
            .await
            .expect("list")
            .into_inner();
        assert!(page.messages.is_empty() && page.next_page_token.is_empty());
    }
}

/// One call examines at most `max_list_scan` messages: a filter that
/// matches nothing answers empty pages with a token to go on from, each
/// after examining no more than that, until the catalogue's end; a time
/// range is sought, not scanned; and short pages leave no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_match_answers_a_bounded_page_with_a_token_to_go_on() {
    let fed = TestFederation::start_with(
        |n| {
            audited(n);
            n.limits.max_list_scan = 10;
        },
        &[DISCIPLINE],
    )
    .await;
    let all = submitted(&fed, 45, |_| "CASE-7".into()).await;
    let mut auditor = auditor(&fed, DISCIPLINE);

    // No feedback was sent: five calls of at most ten messages examined,
    // four of them ending where their walk stopped.
    let feedback = pb::ListMessagesRequest {
        kind: MessageKind::Feedback.to_wire(),
        ..Default::default()
    };
    let first = auditor
        .list_messages(feedback.clone())
        .await
        .expect("list")
        .into_inner();
    assert!(first.messages.is_empty());
    assert!(
        !first.next_page_token.is_empty(),
        "an empty page that stopped early says where to go on"
    );
    let (found, pages) = list_all(&mut auditor, feedback.clone()).await;
    assert!(found.is_empty());
    assert_eq!(pages, [0, 0, 0, 0, 0]);
    // The same by case: the walk of a case is bounded alike.
    let (found, pages) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            case_reference: "CASE-7".into(),
            ..feedback
        },
    )
    .await;
    assert!(found.is_empty());
    assert_eq!(pages.len(), 5);

    // Everything matches: pages of ten, as the walk allows, every message
    // once.
    let (paged, pages) = list_all(&mut auditor, pb::ListMessagesRequest::default()).await;
    assert_eq!(pages, [10, 10, 10, 10, 5]);
    assert_eq!(paged.iter().map(place).collect::<Vec<_>>(), all);

    // The oldest messages by time range: the walk starts at the range, so
    // the first page already holds the newest of them.
    let to_ms = all[40].0 + 1;
    let expected: Vec<_> = all.iter().filter(|p| p.0 < to_ms).cloned().collect();
    let (ranged, pages) = list_all(
        &mut auditor,
        pb::ListMessagesRequest {
            to_ms,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ranged.iter().map(place).collect::<Vec<_>>(), expected);
    assert!(pages[0] > 0, "{pages:?}: the range was scanned, not sought");
    assert_eq!(pages.len(), expected.len().div_ceil(10), "{pages:?}");
}

// ------------------------------------------------------------ the store

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

pub fn data_dir(fed: &TestFederation, node: &str) -> PathBuf {
    fed.config(node).data_dir
}

/// A copy of a stopped node's data directory, changed by `edit` through
/// sled directly (as an operator with disk access could).
fn edited(src: &Path, name: &str, edit: impl FnOnce(&sled::Db)) -> PathBuf {
    let dir = src.with_file_name(format!("edited-{name}"));
    copy_dir(src, &dir);
    let db = sled::open(dir.join("index")).expect("open copy");
    edit(&db);
    db.flush().expect("flush");
    drop(db);
    dir
}

/// A copy of a stopped node's data directory whose journal an operator
/// rewrote: `edit` sees every write of every record (tree, key, value).
fn edited_journal(
    src: &Path,
    name: &str,
    edit: impl FnMut(&str, &[u8], &mut Option<Vec<u8>>),
) -> PathBuf {
    let dir = src.with_file_name(format!("edited-{name}"));
    copy_dir(src, &dir);
    Store::rewrite_journal(&dir, edit).expect("rewrite the journal");
    dir
}

pub fn check_store(dir: &Path, fed: &TestFederation, witnessed: &[SignedCheckpoint]) -> Report {
    let witnessed = (!witnessed.is_empty()).then_some(witnessed);
    let store = Store::open(dir).expect("open the stopped node's store");
    let report = store_check::verify_store(&store, Some(&fed.keyring()), None, witnessed);
    store.close();
    report
}

/// Every file under `dir` with its length and digest: what a read-only
/// verifier must leave exactly as it found it.
fn files_of(dir: &Path) -> BTreeMap<PathBuf, (u64, [u8; 32])> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.insert(path, (bytes.len() as u64, sha256(&bytes)));
            }
        }
    }
    out
}

fn message_key(sender: &str, id: &str) -> Vec<u8> {
    cluebridge::store::keys::message(&MessageRef {
        sender_node: sender.into(),
        message_id: id.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_stopped_store_are_detected_and_named() {
    let mut fed = TestFederation::start_with(audited, &[DISCIPLINE, SECURITY]).await;
    redelivered_released_acked(&fed, "edit-1").await;
    // Until each node has signed a checkpoint of its final head.
    for node in [DISCIPLINE, SECURITY] {
        let store = fed.node(node).broker.store();
        let deadline = Instant::now() + 20 * SECOND;
        loop {
            let (head, _) = store.audit_head().expect("head");
            let signed = store.latest_checkpoint(node).expect("checkpoint");
            if signed.is_some_and(|c| c.open().expect("checkpoint").seq == head) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} signed no checkpoint of its head"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    fed.stop(DISCIPLINE).await;
    fed.stop(SECURITY).await;
    let sender_dir = data_dir(&fed, DISCIPLINE);
    let recipient_dir = data_dir(&fed, SECURITY);

    // Every check works on its own copy: the originals are only copied,
    // and a copy is never copied once a store had it open.
    // Untouched, both stores pass.
    for (name, dir) in [("sender", &sender_dir), ("recipient", &recipient_dir)] {
        let report = check_store(&edited(dir, name, |_| {}), &fed, &[]);
        assert!(report.passed, "{}", report.render());
    }
    // The binary says the same (exit 0).
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["audit", "verify", "--data-dir"])
        .arg(edited(&recipient_dir, "binary", |_| {}))
        .arg("--trust")
        .arg(fed.dev.dir.join("federation.toml"))
        .output()
        .expect("run audit verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A state record changed: acknowledged becomes rejected.
    let key = message_key(DISCIPLINE, "edit-1");
    let dir = edited(&sender_dir, "state", |db| {
        let sent = db.open_tree("sent").expect("tree");
        let mut record: SentRecord =
            postcard::from_bytes(&sent.get(&key).expect("get").expect("record")).expect("decode");
        record.state = SentState::Rejected;
        sent.insert(&key, postcard::to_allocvec(&record).expect("encode"))
            .expect("insert");
    });
    let report = check_store(&dir, &fed, &[]);
    let f = report.first_failure().expect("detected");
    assert_eq!(f.name, "state records");
    assert!(
        f.detail.contains("discipline/edit-1") && f.detail.contains("rejected"),
        "{}",
        f.detail
    );

    // An audit entry deleted from the index: its slot (entry 3 at byte
    // 2 × 24 of `index/audit.slots`) zeroed.
    let dir = edited(&recipient_dir, "delete", |_| {});
    let slots = dir.join("index").join("audit.slots");
    let mut bytes = std::fs::read(&slots).expect("slots");
    bytes[48..72].fill(0);
    std::fs::write(&slots, bytes).expect("zero a slot");
    let f = check_store(&dir, &fed, &[])
        .first_failure()
        .expect("detected")
        .clone();
    assert_eq!(f.name, "chain");
    assert!(f.detail.contains("entry #3 is missing"), "{}", f.detail);

    // An audit entry altered in the journal (its stored hash left as it
    // was, the record's CRC made to match).
    let dir = edited_journal(&recipient_dir, "alter", |tree, key, value| {
        if tree != "audit" || key != 4u64.to_be_bytes() {
            return;
        }
        let raw = value.as_ref().expect("entry");
        let (mut entry, hash) = parse_audit_record(raw).expect("parse");
        entry.detail = "attempt 9".into();
        let mut altered = entry.encode();
        altered.extend_from_slice(&hash);
        *value = Some(altered);
    });
    let f = check_store(&dir, &fed, &[])
        .first_failure()
        .expect("detected")
        .clone();
    assert_eq!(f.name, "chain");
    assert!(
        f.detail.contains("entry #4") && f.detail.contains("altered"),
        "{}",
        f.detail
    );

    // A stored receipt altered in the journal: its reason rewritten,
    // signature kept.
    let alter_receipt = |tree: &str, k: &[u8], value: &mut Option<Vec<u8>>| {
        let Some(v) = value
            .as_ref()
            .filter(|_| tree == "receipts" && k.starts_with(&key))
        else {
            return;
        };
        let Ok(mut signed) = cluebridge::model::SignedReceipt::decode(v) else {
            return;
        };
        let mut r = signed.open().expect("open");
        if r.kind.as_str() != "acknowledged" {
            return;
        }
        r.reason = "never received".into();
        signed.receipt = r.encode();
        *value = Some(signed.encode());
    };
    let dir = edited_journal(&sender_dir, "receipt", alter_receipt);
    let f = check_store(&dir, &fed, &[])
        .first_failure()
        .expect("detected")
        .clone();
    assert_eq!(f.name, "receipts");
    assert!(
        f.detail
            .contains("acknowledged receipt of discipline/edit-1 was altered"),
        "{}",
        f.detail
    );

    // The binary names it too, and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["audit", "verify", "--data-dir"])
        .arg(edited_journal(&sender_dir, "receipt-binary", alter_receipt))
        .output()
        .expect("run audit verify");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The binary checks the journal (the truth) read-only.
    assert!(
        stdout.contains("FAIL  receipts")
            && stdout.contains("acknowledged receipt of discipline/edit-1 was altered"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_and_re_signed_history_contradicts_a_witnessed_checkpoint() {
    let mut fed = TestFederation::start_with(audited, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    for i in 0..3 {
        submit(
            &mut discipline,
            submit_request(&format!("w-{i}"), MessageKind::ClueTransfer, SECURITY, b"x"),
        )
        .await;
        wait_state(
            &mut discipline,
            &format!("w-{i}"),
            SentState::Delivered,
            10 * SECOND,
        )
        .await;
    }
    // Public security witnesses discipline's checkpoints.
    let deadline = Instant::now() + Duration::from_secs(15);
    let witnessed = loop {
        let held = auditor(&fed, SECURITY)
            .get_checkpoints(pb::GetCheckpointsRequest {
                node: DISCIPLINE.into(),
                from_seq: 0,
                limit: 0,
                head_only: false,
            })
            .await
            .expect("checkpoints")
            .into_inner()
            .checkpoints;
        if !held.is_empty() {
            break held;
        }
        assert!(Instant::now() < deadline, "no witnessed checkpoint");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Through the checkpoints file, as an auditor would carry it.
    let witnessed: Vec<SignedCheckpoint> = witnessed
        .into_iter()
        .map(|c| SignedCheckpoint {
            checkpoint: c.checkpoint,
            signature: c.signature,
        })
        .collect();
    let file = CheckpointsFile::new(SECURITY, &witnessed).expect("file");
    let witnessed =
        CheckpointsFile::parse(&serde_json::to_string(&file).expect("json")).expect("parse");
    fed.stop(DISCIPLINE).await;
    let dir = data_dir(&fed, DISCIPLINE);
    let report = check_store(&edited(&dir, "clean", |_| {}), &fed, &witnessed);
    assert!(report.passed, "{}", report.render());

    // The operator rewrites entry 1, recomputes every later hash and the
    // head, and re-signs every own checkpoint with the node's key.
    let signer = fed.signer(DISCIPLINE);
    // The journal is walked in order: every entry comes before the head
    // records and checkpoints that name it.
    let mut prev = [0u8; 32];
    let mut hashes = std::collections::BTreeMap::new();
    let rewritten = edited_journal(&dir, "rewrite", |tree, key, value| {
        let Some(v) = value.as_ref() else {
            return;
        };
        match tree {
            "audit" => {
                let (mut entry, _) = parse_audit_record(v).expect("parse");
                if entry.seq == 1 {
                    entry.detail = "clue_transfer to judicial".into();
                }
                entry.prev_hash = prev;
                let hash = entry.hash();
                let mut value_now = entry.encode();
                value_now.extend_from_slice(&hash);
                *value = Some(value_now);
                hashes.insert(entry.seq, hash);
                prev = hash;
            }
            "audit_head" => {
                let seq = u64::from_be_bytes(v[..8].try_into().expect("seq"));
                if let Some(hash) = hashes.get(&seq) {
                    let mut head_record = seq.to_be_bytes().to_vec();
                    head_record.extend_from_slice(hash);
                    *value = Some(head_record);
                }
            }
            "checkpoints" if key.starts_with(format!("{DISCIPLINE}\0").as_bytes()) => {
                let old = SignedCheckpoint::decode(v).expect("decode");
                let c = old.open().expect("open");
                let resigned = signer.sign_checkpoint(&Checkpoint {
                    head_hash: hashes[&c.seq],
                    ..c
                });
                *value = Some(resigned.encode());
            }
            _ => {}
        }
    });
    // On its own, the rewritten store is consistent…
    let report = check_store(&rewritten, &fed, &[]);
    assert!(report.passed, "{}", report.render());
    // …but the checkpoints public security witnessed contradict it.
    let report = check_store(&rewritten, &fed, &witnessed);
    let f = report.first_failure().expect("contradicted");
    assert_eq!(f.name, "witnessed checkpoints");
    assert!(
        f.detail.contains("contradicted") && f.detail.contains("rewritten"),
        "{}",
        f.detail
    );
}

// ------------------------------------------------------------ refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_service_refuses_principals_without_the_audit_role() {
    let fed = TestFederation::start_with(audited, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("role-1", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;
    let request = || pb::GetBundleRequest {
        sender_node: String::new(),
        message_id: "role-1".into(),
        include_payload: false,
    };

    // The back-office (submit, receive) and the operator are refused.
    let backoffice = fed.connection(DISCIPLINE).audit().expect("client");
    let operator =
        Connection::from_files(&fed.dev.client_as(DISCIPLINE, OPERATOR_NAME).expect("files"))
            .expect("conn")
            .audit()
            .expect("client");
    for mut client in [backoffice, operator] {
        let err = client.get_bundle(request()).await.expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("audit role"), "{}", err.message());
        let err = client
            .get_checkpoints(pb::GetCheckpointsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    // Another agency's auditor is refused on this node.
    let mut foreign = Connection {
        endpoint: format!("https://127.0.0.1:{}", fed.ports[DISCIPLINE]),
        ..Connection::from_files(&fed.dev.client_as(SECURITY, AUDITOR_NAME).expect("files"))
            .expect("conn")
    };
    foreign.server_name = DISCIPLINE.into();
    let e = foreign
        .audit()
        .expect("client")
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("principal of node"), "{}", e.message());

    // The auditor gets it; payloads only where allowed; unknown → NotFound.
    let mut auditor = auditor(&fed, DISCIPLINE);
    auditor.get_bundle(request()).await.expect("bundle");
    let e = auditor
        .get_bundle(pb::GetBundleRequest {
            include_payload: true,
            ..request()
        })
        .await
        .expect_err("payload refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("allow_payload_export"),
        "{}",
        e.message()
    );
    let e = auditor
        .get_bundle(pb::GetBundleRequest {
            message_id: "never-sent".into(),
            ..request()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = auditor
        .get_bundle(pb::GetBundleRequest {
            message_id: "bad id".into(),
            ..request()
        })
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = auditor
        .export_log(pb::ExportLogRequest {
            from_seq: 5,
            to_seq: 2,
        })
        .await
        .expect_err("backwards");
    assert_eq!(e.code(), Code::InvalidArgument);

    // A node may only have its own checkpoints witnessed, correctly signed.
    let forged = fed.signer(DISCIPLINE).sign_checkpoint(&Checkpoint {
        node: DISCIPLINE.into(),
        seq: 1,
        head_hash: [7; 32],
        time_ms: cluebridge::now_ms(),
        signing_key_id: format!("{DISCIPLINE}-k1"),
    });
    let e = fed
        .peer_as(JUDICIAL, SECURITY)
        .witness_checkpoint(pb::WitnessCheckpointRequest {
            checkpoint: Some(pb::SignedCheckpoint {
                checkpoint: forged.checkpoint.clone(),
                signature: forged.signature.clone(),
            }),
        })
        .await
        .expect_err("not judicial's own");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut bad = forged.signature.clone();
    bad[0] ^= 1;
    let e = fed
        .peer_as(DISCIPLINE, SECURITY)
        .witness_checkpoint(pb::WitnessCheckpointRequest {
            checkpoint: Some(pb::SignedCheckpoint {
                checkpoint: forged.checkpoint.clone(),
                signature: bad,
            }),
        })
        .await
        .expect_err("bad signature");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = fed
        .peer_as(DISCIPLINE, SECURITY)
        .witness_checkpoint(pb::WitnessCheckpointRequest { checkpoint: None })
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Code::InvalidArgument);

    // Two different checkpoints for one entry: the first is kept as
    // evidence, the second refused.
    let at = |hash: u8| {
        let c = fed.signer(DISCIPLINE).sign_checkpoint(&Checkpoint {
            node: DISCIPLINE.into(),
            seq: 1_000_000,
            head_hash: [hash; 32],
            time_ms: cluebridge::now_ms(),
            signing_key_id: format!("{DISCIPLINE}-k1"),
        });
        pb::WitnessCheckpointRequest {
            checkpoint: Some(pb::SignedCheckpoint {
                checkpoint: c.checkpoint,
                signature: c.signature,
            }),
        }
    };
    let mut peer = fed.peer_as(DISCIPLINE, SECURITY);
    peer.witness_checkpoint(at(1)).await.expect("first kept");
    let e = peer
        .witness_checkpoint(at(2))
        .await
        .expect_err("second refused");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("two histories"), "{}", e.message());

    let e = auditor
        .list_messages(pb::ListMessagesRequest {
            limit: 10_001,
            ..Default::default()
        })
        .await
        .expect_err("limit");
    assert_eq!(e.code(), Code::InvalidArgument);
}

// ------------------------------------------------------------ concurrency

/// Appends from many tasks at once, batched together by the writer,
/// still form one gapless chain: the head is read and written in each
/// append's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_form_one_gapless_chain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open(tmp.path()).expect("store");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let signer = DISCIPLINE.to_string();
            let s = cluebridge::crypto::NodeSigner::generate(DISCIPLINE, "discipline-k1");
            tokio::spawn(async move {
                for i in 0..25 {
                    let message = MessageRef {
                        sender_node: signer.clone(),
                        message_id: format!("t{t}-{i}"),
                    };
                    let receipt = s.sign_receipt(&cluebridge::model::Receipt {
                        message_id: message.message_id.clone(),
                        sender_node: signer.clone(),
                        kind: cluebridge::model::ReceiptKind::Accepted,
                        issuer_node: signer.clone(),
                        issued_at_ms: 1,
                        reason: String::new(),
                        header_sha256: [0; 32],
                        signing_key_id: "discipline-k1".into(),
                        attempt: 0,
                    });
                    let record = SentRecord {
                        state: SentState::Accepted,
                        recipient: "public_security".into(),
                        kind: MessageKind::ClueTransfer,
                        request_digest: [0; 32],
                        header_sha256: [0; 32],
                        created_at_ms: 1,
                        expires_at_ms: u64::MAX,
                        outbox_key: None,
                        audit_seqs: Vec::new(),
                        conflict_recorded: false,
                        envelope_at: Vec::new(),
                        receipts: Vec::new(),
                    };
                    let header = header(
                        &message.message_id,
                        MessageKind::ClueTransfer,
                        DISCIPLINE,
                        SECURITY,
                        b"x",
                    );
                    store
                        .write(move |s| {
                            s.submit(
                                b"envelope",
                                &header,
                                &record,
                                &receipt,
                                &Default::default(),
                                None,
                            )
                        })
                        .await
                        .expect("submit");
                }
            })
        })
        .collect();
    for t in threads {
        t.await.expect("task");
    }
    let (head, _) = store.audit_head().expect("head");
    assert_eq!(head, 200);
    let entries = store
        .audit_entries(1, u64::MAX, usize::MAX)
        .expect("entries");
    let mut prev = [0u8; 32];
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.prev_hash, prev);
        prev = e.hash();
    }
    store.close();
}

// ------------------------------------------------------------ every path

/// Rejection, dead letter, a lease extension, expiry at the sender (peer
/// down) and in custody: every path's state change is in the log, so each
/// stopped store still agrees with its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_state_change_is_logged() {
    let mut fed = TestFederation::start_with(
        |n| {
            audited(n);
            n.delivery.max_deliveries = 1;
        },
        &[DISCIPLINE, SECURITY],
    )
    .await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    let send = |id: &str, to: &str, ttl: u64| pb::SubmitRequest {
        ttl_seconds: ttl,
        ..submit_request(id, MessageKind::ClueTransfer, to, b"x")
    };
    submit(&mut discipline, send("p-reject", SECURITY, 0)).await;
    submit(&mut discipline, send("p-dead", SECURITY, 0)).await;
    submit(&mut discipline, send("p-extend", SECURITY, 0)).await;
    // Judicial is down: this one expires in discipline's outbox.
    submit(&mut discipline, send("p-outbox", JUDICIAL, 1)).await;

    let mut stream = receiver(&mut security, 3, 1).await;
    let mut leases = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let d = next(&mut stream, 10 * SECOND).await;
        leases.insert(d.message_id.clone(), d);
    }
    security
        .reject(pb::RejectRequest {
            lease: lease_of(&leases["p-reject"]),
            reason: "not our competence".into(),
        })
        .await
        .expect("reject");
    security
        .extend_lease(pb::ExtendLeaseRequest {
            lease: lease_of(&leases["p-extend"]),
            lease_seconds: 30,
        })
        .await
        .expect("extend");
    security
        .ack(pb::AckRequest {
            lease: lease_of(&leases["p-extend"]),
        })
        .await
        .expect("ack");
    drop(stream);
    // p-dead's single lease lapses: dead letter.
    wait_state(
        &mut discipline,
        "p-reject",
        SentState::Rejected,
        10 * SECOND,
    )
    .await;
    wait_state(
        &mut discipline,
        "p-dead",
        SentState::DeadLettered,
        10 * SECOND,
    )
    .await;
    wait_state(
        &mut discipline,
        "p-extend",
        SentState::Acknowledged,
        10 * SECOND,
    )
    .await;
    wait_state(&mut discipline, "p-outbox", SentState::Expired, 10 * SECOND).await;
    // Nobody receives this one: it expires in public security's custody.
    submit(&mut discipline, send("p-custody", SECURITY, 2)).await;
    wait_state(
        &mut discipline,
        "p-custody",
        SentState::Expired,
        15 * SECOND,
    )
    .await;

    fed.stop(DISCIPLINE).await;
    fed.stop(SECURITY).await;
    for node in [DISCIPLINE, SECURITY] {
        let report = check_store(&edited(&data_dir(&fed, node), node, |_| {}), &fed, &[]);
        assert!(report.passed, "{node}: {}", report.render());
    }
    let dir = edited(&data_dir(&fed, SECURITY), "events", |_| {});
    let store = Store::open(&dir).expect("store");
    let events: Vec<String> = store
        .audit_entries(1, u64::MAX, usize::MAX)
        .expect("entries")
        .iter()
        .map(|e| format!("{} {}", e.message.message_id, e.event))
        .collect();
    store.close();
    for expected in [
        "p-reject rejected",
        "p-dead dead_lettered",
        "p-extend lease_extended",
        "p-extend acknowledged",
        "p-custody expired",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected:?} not in {events:?}"
        );
    }
}

// ------------------------------------------------------------ crash

/// SIGKILL in the middle of concurrent submits leaves a store whose chain
/// and state records still agree: each entry is committed with its change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_a_chain_that_agrees_with_its_store() {
    let fed = TestFederation::start_with(audited, &[]).await;
    let mut child = ServeProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
            .args(["serve", "--config"])
            .arg(fed.dev.node_file(DISCIPLINE))
            .env("CLUEBRIDGE_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn serve"),
    );
    // Submitters keep going until the node dies under them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = fed.client(DISCIPLINE);
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let r = client
                    .submit(submit_request(
                        &format!("k-{i}-{n}"),
                        MessageKind::ClueTransfer,
                        SECURITY,
                        b"x",
                    ))
                    .await;
                match r {
                    Ok(_) => {
                        n += 1;
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Not up yet.
                    Err(s)
                        if s.code() == Code::Unavailable && n == 0 && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for t in tasks {
        let _ = t.await;
    }
    let before = files_of(&data_dir(&fed, DISCIPLINE));
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir(&fed, DISCIPLINE))
        .arg("--trust")
        .arg(fed.dev.dir.join("federation.toml"))
        .output()
        .expect("run audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("PASS  state records"), "{stdout}");
    assert!(
        !stdout.contains(" 0 message records"),
        "nothing was stored: {stdout}"
    );
    // After a SIGKILL the index lags its journal; brought forward as the
    // next start would, it agrees. And the verifier wrote nothing.
    assert!(stdout.contains("PASS  index"), "{stdout}");
    assert_eq!(
        files_of(&data_dir(&fed, DISCIPLINE)),
        before,
        "audit verify changed the data directory"
    );
}
