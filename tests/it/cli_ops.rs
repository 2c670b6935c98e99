//! The operator commands of the real binary: tables, JSON, and clear
//! messages when the node cannot be reached or the certificate lacks the
//! role.

use crate::harness::*;
use cluebridge::model::MessageKind;

/// Runs `cluebridge ARGS --dir <federation>`: (success, stdout, stderr).
async fn cluebridge(fed: &TestFederation, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(args)
        .arg("--dir")
        .arg(&fed.dev.dir)
        .output()
        .await
        .expect("run cluebridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_show_queues_and_peers() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let mut discipline = fed.client(DISCIPLINE);
    submit(
        &mut discipline,
        submit_request("cli-1", MessageKind::ClueTransfer, SECURITY, b"x"),
    )
    .await;

    let (ok, out, err) = cluebridge(&fed, &["queues", "--node", DISCIPLINE]).await;
    assert!(ok, "{err}");
    let header = out.lines().next().expect("header");
    assert!(
        header.starts_with("QUEUE") && header.contains("DEPTH"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("outbox → public_security"))
        .expect("security outbox row");
    // Columns line up under the header.
    let depth_col = header.find("DEPTH").expect("DEPTH");
    assert_eq!(
        &row[row.char_indices().nth(depth_col).expect("col").0..][..1],
        "1",
        "{out}"
    );

    let (ok, out, err) = cluebridge(&fed, &["queues", "--node", DISCIPLINE, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let outbox = v["outboxes"]
        .as_array()
        .expect("outboxes")
        .iter()
        .find(|o| o["peer"] == SECURITY)
        .expect("security");
    assert_eq!(outbox["depth"], 1);

    let (ok, out, err) = cluebridge(
        &fed,
        &["peers", "--node", DISCIPLINE, "--pause", SECURITY, "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let peer = v
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer"] == SECURITY)
        .expect("security");
    assert_eq!(peer["state"], "paused");
    assert_eq!(peer["backlog"], 1);

    let (ok, out, err) =
        cluebridge(&fed, &["message", "show", "--node", DISCIPLINE, "cli-1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("accepted (sent)"), "{out}");
    assert!(out.contains("not shown to operators"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_explain_refusals() {
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    // The back-office certificate lacks the operate role.
    let (ok, _, err) = cluebridge(
        &fed,
        &["queues", "--node", DISCIPLINE, "--as", "backoffice"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("permission denied") && err.contains("lacks the operate role"),
        "{err}"
    );
    // A node that is not running.
    let (ok, _, err) = cluebridge(&fed, &["peers", "--node", SECURITY]).await;
    assert!(!ok);
    assert!(err.contains("node unavailable"), "{err}");
    // A dead-letter address without its sender node.
    let (ok, _, err) = cluebridge(&fed, &["dlq", "requeue", "--node", DISCIPLINE, "m-1"]).await;
    assert!(!ok);
    assert!(err.contains("SENDER_NODE/MESSAGE_ID"), "{err}");
    // Discarding what is not a dead letter names the reason and fails.
    let (ok, out, err) = cluebridge(
        &fed,
        &[
            "dlq",
            "discard",
            "--node",
            DISCIPLINE,
            "public_security/none",
            "--reason",
            "test",
        ],
    )
    .await;
    assert!(!ok);
    assert!(out.contains("NOT discarded public_security/none"), "{out}");
    assert!(err.contains("not discarded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refreshes_until_interrupted() {
    use tokio::io::AsyncReadExt;
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE]).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args([
            "queues", "--node", DISCIPLINE, "--json", "--watch", "1", "--dir",
        ])
        .arg(&fed.dev.dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut text = String::new();
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while text.matches("\"at_ms\"").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "one refresh only:\n{text}"
        );
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(5 * SECOND, stdout.read(&mut buf))
            .await
            .expect("output in time")
            .expect("read");
        assert!(n > 0, "watch ended by itself:\n{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // SIGINT ends the watch cleanly.
    let status = interrupt(&mut child, 5 * SECOND)
        .await
        .expect("exits after SIGINT");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_shows_control_characters_escaped() {
    use cluebridge::model::SentState;
    let fed = TestFederation::start_with(|_| {}, &[DISCIPLINE, SECURITY]).await;
    let mut discipline = fed.client(DISCIPLINE);
    // A window-title change, a clear-screen, a CSI as one C1 character, a
    // right-to-left override, and a second line; and Chinese text, kept.
    let payload = "before\x1b]0;owned\x07\x1b[2J\x1b[H\u{9b}31m\u{202e}txt.exe\nsecond line 线索";
    submit(
        &mut discipline,
        submit_request(
            "cli-esc-1",
            MessageKind::ClueTransfer,
            SECURITY,
            payload.as_bytes(),
        ),
    )
    .await;
    wait_state(
        &mut discipline,
        "cli-esc-1",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["receive", "--node", SECURITY, "--ack", "--dir"])
        .arg(&fed.dev.dir)
        .output()
        .await
        .expect("run cluebridge receive");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.contains(&0x1b), "raw ESC in:\n{stdout:?}");
    assert!(!out.stdout.contains(&0x07), "raw BEL in:\n{stdout:?}");
    for raw in ['\u{9b}', '\u{202e}'] {
        assert!(!stdout.contains(raw), "raw {raw:?} in:\n{stdout:?}");
    }
    assert!(
        stdout.contains(
            "  payload:      before\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\u{9b}31m\\u{202e}txt.exe\n\
             \x20               second line 线索\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("message cli-esc-1 from discipline"),
        "{stdout}"
    );
    assert!(stdout.contains("-> acknowledged"), "{stdout}");
}

/// The README's first command, with `--demo`: a fresh development
/// federation, a clue transfer rejected, a structured rectification
/// suggestion approved, acknowledged and answered item by item, another
/// one overdue, every receipt verified.
#[test]
fn up_runs_its_demo_to_the_end() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["up", "--demo", "--base-port", &free_base_port().to_string()])
        .arg("--dir")
        .arg(tmp.path().join("dev"))
        .output()
        .expect("run up --demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("demo complete: every receipt verified"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "waiting for approval",
        "approver approved",
        "personnel answered",
        "item 0: corrected",
        "item 1: partly_corrected",
        ": overdue (reply by",
    ] {
        assert!(stdout.contains(step), "{step:?} missing in\n{stdout}");
    }
}
