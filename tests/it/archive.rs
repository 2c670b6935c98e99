//! Retention: old journal files, once a signed checkpoint covers them,
//! move to `archive/` with the envelope segments they name — and every
//! reader still finds them: status, bundles, `audit verify` (which replays
//! the whole journal), and a rebuild of the index.

use crate::audit::{bundle_of, check_store, copy_dir};
use crate::harness::*;
use cluebridge::audit::bundle;
use cluebridge::config::NodeFile;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::store::{ARCHIVE_DIR, JOURNAL_DIR, Store};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn archiving(node: &mut NodeFile) {
    node.store.journal_file_bytes = 16 * 1024;
    node.store.snapshot_journal_bytes = 32 * 1024;
    node.store.archive_after_secs = 1;
    node.audit.checkpoint_every_entries = 2;
    node.audit.checkpoint_interval_secs = 1;
    node.limits.submit_rate_per_sec = 0;
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_old_journal_files_are_archived_and_still_read() {
    let mut fed = TestFederation::start_with(archiving, &[DISCIPLINE, SECURITY]).await;
    let dir = fed.config(DISCIPLINE).data_dir;
    let archived = dir.join(ARCHIVE_DIR).join(JOURNAL_DIR);
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);
    let mut deliveries = receiver(&mut security, 64, 60).await;
    let acker = tokio::spawn(async move {
        use tokio_stream::StreamExt;
        while let Some(Ok(d)) = deliveries.next().await {
            let _ = security
                .ack(cluebridge::pb::AckRequest {
                    lease: lease_of(&d),
                })
                .await;
        }
    });

    // Traffic goes on until old files have moved: archiving runs at
    // checkpoints, which come with the journal's growth. A restart starts
    // a new envelope segment, so that the first one can follow its
    // journal files into the archive.
    let deadline = Instant::now() + 90 * SECOND;
    let mut sent = 0;
    let envelopes = dir.join(ARCHIVE_DIR).join("envelopes");
    for phase in 0..2 {
        if phase == 1 {
            fed.stop(DISCIPLINE).await;
            fed.restart(DISCIPLINE).await;
            discipline = fed.client(DISCIPLINE);
        }
        while files_in(&archived) < 2 || (phase == 1 && files_in(&envelopes) == 0) {
            assert!(
                Instant::now() < deadline,
                "nothing archived in phase {phase} (sent {sent}; journal files {}, archived {})",
                files_in(&dir.join(JOURNAL_DIR)),
                files_in(&archived)
            );
            let id = format!("arch-{sent}");
            let payload = format!("evidence {id} ").repeat(40);
            submit(
                &mut discipline,
                submit_request(&id, MessageKind::ClueTransfer, SECURITY, payload.as_bytes()),
            )
            .await;
            sent += 1;
            if sent % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for i in 0..sent {
        wait_state(
            &mut discipline,
            &format!("arch-{i}"),
            SentState::Acknowledged,
            30 * SECOND,
        )
        .await;
    }
    acker.abort();

    // The first message's envelope, receipts and audit entries now lie in
    // archived files: its status and its bundle read them there.
    let status = discipline
        .get_status(cluebridge::pb::GetStatusRequest {
            message_id: "arch-0".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.receipts.len(),
        3,
        "accepted, delivered, acknowledged"
    );
    let text = bundle_of(&fed, DISCIPLINE, DISCIPLINE, "arch-0").await;
    let report = bundle::verify(&text, Some(&fed.keyring()), None);
    assert!(report.passed, "{}", report.render());

    fed.stop(DISCIPLINE).await;
    assert!(files_in(&archived) >= 2);
    let report = check_store(&dir, &fed, &[]);
    assert!(report.passed, "{}", report.render());
    // The verifier replays every journal file, archived ones included.
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&dir)
        .arg("--trust")
        .arg(fed.dev.dir.join("federation.toml"))
        .output()
        .expect("run audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // A rebuild from the journal finds the archived part too.
    let copy = dir.with_file_name("archived-rebuilt");
    copy_dir(&dir, &copy);
    let counts = Store::reindex(&copy).expect("reindex");
    assert_eq!(counts.sent, sent, "every message, from the whole journal");
}
