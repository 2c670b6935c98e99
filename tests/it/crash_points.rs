//! Crash safety at every phase boundary of the store's write path: a real
//! sender node, aborted at a named crash point (`CLUEBRIDGE_CRASH_AT`) or
//! SIGKILLed at a random moment of a run that crosses several journal
//! rotations and checkpoints, loses nothing it accepted. After a restart
//! every accepted message is delivered once and acknowledged, the stopped
//! store passes `audit verify`, and its index equals one rebuilt from the
//! journal alone.

use crate::audit::{check_store, copy_dir};
use crate::crash::wait_serving;
use crate::harness::*;
use cluebridge::config::NodeFile;
use cluebridge::model::{MessageKind, SentState};
use cluebridge::store::Store;
use cluebridge::store::crash_points::VARIABLE;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Small journal files, so that a test crosses rotations and checkpoints.
const JOURNAL_FILE_BYTES: u64 = 64 * 1024;
const SIGABRT: i32 = 6;

fn small_journal(node: &mut NodeFile) {
    node.store.journal_file_bytes = JOURNAL_FILE_BYTES;
    // A snapshot of the live state every few journal files.
    node.store.snapshot_journal_bytes = 3 * JOURNAL_FILE_BYTES;
    // Eight clients of one principal submit as fast as they can.
    node.limits.submit_rate_per_sec = 0;
}

/// `cluebridge serve` for the discipline node, with a crash point armed
/// if `crash_at` says so. It runs in the federation's temporary directory,
/// so that a core dump, on a system that writes them, goes away with it.
fn spawn_sender(fed: &TestFederation, crash_at: Option<&str>) -> ServeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cluebridge"));
    command
        .args(["serve", "--config"])
        .arg(fed.dev.node_file(DISCIPLINE))
        .current_dir(&fed.dev.dir)
        .env("CLUEBRIDGE_LOG", "warn")
        .env_remove(VARIABLE)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(at) = crash_at {
        command.env(VARIABLE, at);
    }
    ServeProcess(command.spawn().expect("spawn cluebridge serve"))
}

/// Waits for the process to end by itself.
async fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the node still ran after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Concurrent clients submitting to the sender until it stops answering.
struct Submitters {
    accepted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Submitters {
    fn start(fed: &TestFederation, clients: usize) -> Submitters {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let mut client = fed.client(DISCIPLINE);
                let accepted = accepted.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let id = format!("cp-{c}-{i}");
                        let payload = format!("evidence {id} ").repeat(24);
                        let request = submit_request(
                            &id,
                            MessageKind::ClueTransfer,
                            SECURITY,
                            payload.as_bytes(),
                        );
                        match client.submit(request).await {
                            Ok(_) => accepted.lock().expect("lock").push(id),
                            // The node died (or refused): this client is done.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Submitters {
            accepted,
            stop,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }

    /// Stops the clients; the ids answered `accepted`.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("submitter");
        }
        self.accepted.lock().expect("lock").clone()
    }
}

/// A receiving system at public security that acknowledges everything it
/// is given, over the whole test, and remembers every delivery.
struct Consumer {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    async fn start(fed: &TestFederation) -> Consumer {
        let mut client = fed.client(SECURITY);
        let mut stream = receiver(&mut client, 64, 600).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(d) = stream.next().await {
                let d = d.expect("delivery");
                record.lock().expect("lock").push(d.message_id.clone());
                client
                    .ack(cluebridge::pb::AckRequest {
                        lease: lease_of(&d),
                    })
                    .await
                    .expect("ack");
            }
        });
        Consumer { seen, task }
    }

    /// Waits until every id in `wanted` was delivered.
    async fn wait_for(&self, wanted: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen: BTreeSet<String> = self.seen.lock().expect("lock").iter().cloned().collect();
            let missing: Vec<&String> = wanted.iter().filter(|id| !seen.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(!self.task.is_finished(), "the receiving system stopped");
            assert!(
                Instant::now() < deadline,
                "{} of {} accepted messages never delivered, e.g. {:?}",
                missing.len(),
                wanted.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops receiving; every delivery, in order.
    fn finish(self) -> Vec<String> {
        self.task.abort();
        self.seen.lock().expect("lock").clone()
    }
}

/// Submits from eight clients to a sender armed with `crash_at` until it
/// aborts there, then restarts it and checks what it accepted.
async fn abort_at(crash_at: &str) {
    let fed = TestFederation::start_with(small_journal, &[SECURITY]).await;
    let consumer = Consumer::start(&fed).await;
    let mut child = spawn_sender(&fed, Some(crash_at));
    wait_serving(&fed, DISCIPLINE).await;
    let submitters = Submitters::start(&fed, 8);
    let status = wait_exit(&mut child, 120 * SECOND, crash_at).await;
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "{crash_at}: the node ended by its crash point, not {status:?}"
    );
    let accepted = submitters.finish().await;
    assert!(
        !accepted.is_empty(),
        "{crash_at}: some submits were accepted"
    );
    eprintln!(
        "{crash_at}: {} submits accepted before the abort",
        accepted.len()
    );
    recover_and_check(&fed, consumer, &accepted).await;
}

/// Restarts the sender (no crash point) and checks: every accepted message
/// delivered once and acknowledged; then, the sender stopped, its index
/// equals one rebuilt from its journal, and `audit verify` passes.
async fn recover_and_check(fed: &TestFederation, consumer: Consumer, accepted: &[String]) {
    let mut child = spawn_sender(fed, None);
    wait_serving(fed, DISCIPLINE).await;
    consumer.wait_for(accepted, 60 * SECOND).await;
    let mut discipline = fed.client(DISCIPLINE);
    for id in accepted {
        wait_state(&mut discipline, id, SentState::Acknowledged, 30 * SECOND).await;
    }
    let seen = consumer.finish();
    let mut once = BTreeSet::new();
    for id in &seen {
        assert!(once.insert(id), "{id} delivered twice");
    }
    stop(&mut child).await;

    let dir = fed.config(DISCIPLINE).data_dir;
    index_agrees_with_journal(&dir);
    let report = check_store(&dir, fed, &[]);
    assert!(report.passed, "audit verify:\n{}", report.render());
}

/// SIGTERM, then a clean exit.
async fn stop(child: &mut Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let status = wait_exit(child, 30 * SECOND, "after SIGTERM").await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// The stopped store's index equals the one `store reindex` rebuilds from
/// its journal (on a copy), record for record.
fn index_agrees_with_journal(dir: &Path) {
    let copy = dir.with_file_name("rebuilt-from-journal");
    copy_dir(dir, &copy);
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["store", "reindex", "--data-dir"])
        .arg(&copy)
        .output()
        .expect("run store reindex");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |d: &Path| {
        let store = Store::open(d).expect("open the stopped store");
        let seen = (store.index_digest().expect("digest"), store.counts());
        store.close();
        seen
    };
    let (kept, kept_counts) = read(dir);
    let (rebuilt, rebuilt_counts) = read(&copy);
    assert_eq!(
        kept_counts, rebuilt_counts,
        "counts of the index and the rebuild"
    );
    assert!(
        kept == rebuilt,
        "the index differs from its rebuild from the journal"
    );
}

fn journal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(cluebridge::store::JOURNAL_DIR))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The journal position a killed node's index noted at its last checkpoint
/// (epoch, offset), read from a copy (opening sled recovers its files).
fn noted_position(dir: &Path) -> (u64, u64) {
    let copy: PathBuf = dir.with_file_name("index-as-killed");
    copy_dir(&dir.join("index"), &copy);
    let db = sled::open(&copy).expect("open the index copy");
    let raw = db
        .open_tree("meta")
        .expect("meta")
        .get(b"journal-position")
        .expect("read")
        .expect("a noted position");
    let epoch = u64::from_be_bytes(raw[..8].try_into().expect("epoch"));
    let offset = u64::from_be_bytes(raw[8..16].try_into().expect("offset"));
    (epoch, offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_append_loses_nothing_accepted() {
    abort_at("after-append:400").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_sync_loses_nothing_accepted() {
    abort_at("after-sync:80").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_apply_loses_nothing_accepted() {
    abort_at("after-apply:80").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_index_batch_loses_nothing_accepted() {
    abort_at("during-index-batch:80").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_checkpoint_loses_nothing_accepted() {
    abort_at("during-checkpoint:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_snapshot_loses_nothing_accepted() {
    abort_at("during-snapshot:2").await;
}

/// A node stopped cleanly (its last act: a snapshot), whose newest
/// snapshot is then damaged and the one before cut short: it starts from
/// a full replay of the journal and loses or repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_fall_back_to_the_journal() {
    let fed = TestFederation::start_with(small_journal, &[SECURITY]).await;
    let consumer = Consumer::start(&fed).await;
    let mut child = spawn_sender(&fed, None);
    wait_serving(&fed, DISCIPLINE).await;
    let submitters = Submitters::start(&fed, 8);
    let deadline = Instant::now() + 60 * SECOND;
    while submitters.count() < 600 {
        assert!(Instant::now() < deadline, "submits did not flow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = submitters.finish().await;
    stop(&mut child).await;
    let dir = fed.config(DISCIPLINE).data_dir;
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    let newest = snapshots.pop().expect("newest");
    let mut bytes = std::fs::read(&newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&newest, bytes).expect("damage the newest");
    let before = snapshots.pop().expect("the one before");
    let len = std::fs::metadata(&before).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&before)
        .and_then(|f| f.set_len(len / 2))
        .expect("cut the one before short");
    recover_and_check(&fed, consumer, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_rotation_loses_nothing_accepted() {
    abort_at("during-rotation:2").await;
}

/// A run long enough for several rotations and checkpoints, SIGKILLed at
/// a random moment after them, loses nothing it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_a_random_moment_of_a_long_run_loses_nothing_accepted() {
    const FILES: usize = 6;
    let fed = TestFederation::start_with(small_journal, &[SECURITY]).await;
    let dir = fed.config(DISCIPLINE).data_dir;
    let consumer = Consumer::start(&fed).await;
    let mut child = spawn_sender(&fed, None);
    wait_serving(&fed, DISCIPLINE).await;
    let submitters = Submitters::start(&fed, 8);

    // Past several rotations, then a random number of submits more.
    let deadline = Instant::now() + 120 * SECOND;
    while journal_files(&dir) < FILES {
        assert!(
            Instant::now() < deadline,
            "{} journal files after 120 s",
            journal_files(&dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let target = submitters.count() + rand::Rng::gen_range(&mut rand::thread_rng(), 1..300);
    while submitters.count() < target {
        assert!(Instant::now() < deadline, "the node stopped accepting");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let accepted = submitters.finish().await;

    let files = journal_files(&dir);
    assert!(files >= FILES, "rotations: {files} journal files");
    let (epoch, offset) = noted_position(&dir);
    assert!(
        epoch >= 2,
        "checkpoints moved the index's noted position: it is ({epoch}, {offset})"
    );
    eprintln!(
        "{} submits accepted; killed with {files} journal files, index noted at ({epoch}, {offset})",
        accepted.len()
    );
    recover_and_check(&fed, consumer, &accepted).await;
}
