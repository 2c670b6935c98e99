//! Power cuts under the store: the journal (`journal/`) and the envelope
//! segments (`envelopes/`) on the twin file system ([`SimFs`]), which drops
//! whatever was not synced when the power goes.
//!
//! sled, the index, does its own I/O on real files, which a simulated cut
//! cannot touch, and sled makes no promise after a power cut anyway (see
//! `durable`). The journal is the truth and is never deleted, so the worst
//! case is an index lost with the power: after the cut these tests delete
//! the index and reopen, which rebuilds it from the journal. They show
//! that the journal and the segments left on disk by a cut hold every
//! answered change, whole, that replaying them gives a store that passes
//! `audit verify`, and that the store takes new changes after the rebuild
//! without reusing a number it handed out before the cut.
//!
//! The log tests run `Wal::recover` on the twin with a real sled beside
//! it: a torn tail is cut, and durably; a gap in an older file is named.

use super::fs::{Fs, SimFs, SyncFault};
use super::wal::{self, Op, Wal};
use super::*;
use crate::model::{EnvelopeHeader, Receipt, SignedEnvelope};
use std::collections::BTreeSet;
use std::path::PathBuf;

const NODE: &str = "discipline";

/// Everything `Store::submit` takes, for message `i`.
struct Submit {
    message: MessageRef,
    envelope: Vec<u8>,
    header: EnvelopeHeader,
    record: SentRecord,
    accepted: SignedReceipt,
}

fn submit_of(i: usize) -> Submit {
    let header = format!("header of message {i}").into_bytes();
    let header_sha256 = sha256(&header);
    let envelope = SignedEnvelope {
        header: header.into(),
        signature: vec![7; 64].into(),
        payload: vec![i as u8; 700].into(),
        batch: None,
    }
    .encode();
    let message = MessageRef {
        sender_node: NODE.into(),
        message_id: format!("m-{i}"),
    };
    let receipt = Receipt {
        message_id: message.message_id.clone(),
        sender_node: NODE.into(),
        kind: ReceiptKind::Accepted,
        issuer_node: NODE.into(),
        issued_at_ms: 1,
        reason: String::new(),
        header_sha256,
        signing_key_id: "k1".into(),
        attempt: 0,
    };
    let header = EnvelopeHeader {
        message_id: message.message_id.clone(),
        kind: MessageKind::ClueTransfer,
        sender_node: NODE.into(),
        sender_principal: "backoffice".into(),
        recipient_node: "security".into(),
        case_reference: format!("CASE-{}", i % 3),
        correlation_id: String::new(),
        subject: format!("subject of message {i}"),
        content_type: "text/plain".into(),
        payload_sha256: [0; 32],
        payload_length: 700,
        created_at_ms: 1,
        expires_at_ms: 1 << 50,
        reply_by_ms: 0,
        signing_key_id: "k1".into(),
    };
    Submit {
        message,
        envelope,
        header,
        record: SentRecord {
            state: SentState::Accepted,
            recipient: "security".into(),
            kind: MessageKind::ClueTransfer,
            request_digest: sha256(format!("request {i}").as_bytes()),
            header_sha256,
            created_at_ms: 1,
            expires_at_ms: 1 << 50,
            outbox_key: None,
            audit_seqs: Vec::new(),
            conflict_recorded: false,
            envelope_at: Vec::new(),
            receipts: Vec::new(),
        },
        accepted: SignedReceipt::single(receipt.encode(), vec![9; 64]),
    }
}

impl Submit {
    fn on(&self, store: &Store) -> Result<SubmitOutcome> {
        store.submit(
            &self.envelope,
            &self.header,
            &self.record,
            &self.accepted,
            &Default::default(),
            None,
        )
    }

    /// Whether the store holds this message whole; `None` if it holds no
    /// part of it; a panic if it holds a part only.
    fn held_by(&self, store: &Store) -> Option<()> {
        let sent = store.sent(&self.message).expect("sent");
        let envelope = store.envelope(&self.message).expect("envelope");
        let receipts = store.receipts(&self.message).expect("receipts");
        match (sent, envelope) {
            (None, None) => {
                assert!(receipts.is_empty(), "{}: receipts only", self.message);
                None
            }
            (Some(record), Some(envelope)) => {
                assert_eq!(envelope, self.envelope, "{}", self.message);
                assert_eq!(record.request_digest, self.record.request_digest);
                assert_eq!(
                    receipts,
                    std::slice::from_ref(&self.accepted),
                    "{}",
                    self.message
                );
                Some(())
            }
            (sent, envelope) => panic!(
                "{} is half there: record {}, envelope {}",
                self.message,
                sent.is_some(),
                envelope.is_some()
            ),
        }
    }
}

/// Opens the store in `dir` with its log and segments on `sim`.
fn open(sim: &SimFs, dir: &Path) -> Store {
    Store::open_on(Arc::new(sim.clone()), dir, StoreOptions::default()).expect("open the store")
}

/// After a cut: stops the old store (its files are gone with its boot, so
/// its closing checkpoint fails and changes nothing on the twin), deletes
/// sled's real files and reopens on the twin, so that the store is
/// rebuilt from the log alone.
fn reopen_from_the_log(old: Store, sim: &SimFs, dir: &Path) -> Store {
    old.close();
    drop(old);
    std::fs::remove_dir_all(dir).expect("delete sled's files");
    open(sim, dir)
}

fn assert_audit_passes(store: &Store) {
    let report = crate::audit::store_check::verify_store(store, None, None, None);
    assert!(report.passed, "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_submit_survives_a_power_cut_whole() {
    const N: usize = 48;
    const CUT_AFTER: usize = 16;
    for seed in 0..3 {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("node");
        let sim = SimFs::with_torn_writes(seed);
        let store = open(&sim, &dir);

        let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..N {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let answer = store.write(move |s| submit_of(i).on(s)).await;
                let _ = done.send((i, answer.is_ok()));
            });
        }
        drop(done);
        let mut answered = BTreeSet::new();
        while answered.len() < CUT_AFTER {
            let (i, ok) = answers.recv().await.expect("an answer");
            if ok {
                answered.insert(i);
            }
        }
        // One change is in the writer's batch when the power goes: logged,
        // its group commit not yet synced.
        let (ran, has_run) = std::sync::mpsc::channel();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let writer = store.clone();
        let in_flight = tokio::spawn(async move {
            writer
                .write(move |s| {
                    let outcome = submit_of(N + 4).on(s);
                    let _ = ran.send(());
                    let _ = gate.recv();
                    outcome
                })
                .await
        });
        tokio::task::spawn_blocking(move || has_run.recv())
            .await
            .expect("join")
            .expect("the change ran");
        let sim = sim.power_cut();
        drop(release);
        in_flight
            .await
            .expect("join")
            .expect_err("its sync came after the cut");
        // Answers that arrive now were synced before the cut: an answer
        // is given only after its group commit's fdatasync succeeded.
        while let Some((i, ok)) = answers.recv().await {
            if ok {
                answered.insert(i);
            }
        }

        let store = reopen_from_the_log(store, &sim, &dir);
        let mut held = BTreeSet::new();
        for i in 0..=N + 4 {
            if submit_of(i).held_by(&store).is_some() {
                held.insert(i);
            }
        }
        assert!(
            answered.is_subset(&held),
            "seed {seed}: answered {answered:?}, held {held:?}"
        );
        let counts = store.counts();
        assert_eq!(counts.sent, held.len());
        assert_eq!(counts.outbox, held.len());
        assert_eq!(
            store
                .outbox_batch("security", None, 1000)
                .expect("outbox")
                .0
                .len(),
            held.len()
        );
        assert_audit_passes(&store);

        // The rebuilt store takes new changes without reusing a number
        // handed out before the cut (outbox keys come from `next_seq`): a
        // second cut and rebuild finds the old messages and the new ones.
        let more: Vec<usize> = (N + 5..N + 11).collect();
        for &i in &more {
            store
                .write(move |s| submit_of(i).on(s))
                .await
                .expect("answered after the rebuild");
        }
        let sim = sim.power_cut();
        let store = reopen_from_the_log(store, &sim, &dir);
        for &i in held.iter().chain(&more) {
            assert!(submit_of(i).held_by(&store).is_some(), "seed {seed}: m-{i}");
        }
        assert_eq!(
            store
                .outbox_batch("security", None, 1000)
                .expect("outbox")
                .0
                .len(),
            held.len() + more.len(),
            "seed {seed}: an outbox entry was overwritten"
        );
        assert_audit_passes(&store);
        store.close();
    }
}

/// The live state comes back from a snapshot and the journal after it:
/// a snapshot is published durably (it survives the cut), the changes
/// answered after it are replayed on top, and the queue counters agree
/// with the queues. The index stays as sled left it on the real disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_cut_the_live_state_is_the_snapshot_and_the_journal_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("node");
    let sim = SimFs::new();
    let store = open(&sim, &dir);
    for i in 0..10 {
        store
            .write(move |s| submit_of(i).on(s))
            .await
            .expect("answered");
    }
    store.checkpoint().expect("a checkpoint with a snapshot");
    for i in 10..25 {
        store
            .write(move |s| submit_of(i).on(s))
            .await
            .expect("answered");
    }
    let sim = sim.power_cut();
    store.close();
    drop(store);
    let snapshots = sim.list_dir(&dir.join(snapshot::DIR)).expect("snapshots");
    assert_eq!(
        snapshots.len(),
        1,
        "the snapshot survived the cut: {snapshots:?}"
    );

    let store = open(&sim, &dir);
    for i in 0..25 {
        assert!(submit_of(i).held_by(&store).is_some(), "m-{i}");
    }
    assert_eq!(
        store
            .outbox_batch("security", None, 1000)
            .expect("outbox")
            .0
            .len(),
        25
    );
    assert_eq!(
        store.outbox_depth("security"),
        25,
        "counters follow the queue"
    );
    assert_audit_passes(&store);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_latches_the_store_and_its_change_is_not_answered() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("node");
    let sim = SimFs::new();
    let store = open(&sim, &dir);
    store.write(|s| submit_of(0).on(s)).await.expect("answered");

    sim.fail_sync(SyncFault::Path(
        dir.join(wal::DIR).join(format!("{:020}.log", 1)),
    ));
    let err = store
        .write(|s| submit_of(1).on(s))
        .await
        .expect_err("its log sync failed");
    assert!(
        err.to_string().contains("flushing the store failed"),
        "{err}"
    );
    // The kernel may have dropped the pages that fsync failed to write: a
    // later fsync that succeeds would not bring them back.
    let err = store
        .write(|s| submit_of(2).on(s))
        .await
        .expect_err("latched");
    assert!(err.to_string().contains("refuses changes"), "{err}");

    let sim = sim.power_cut();
    let store = reopen_from_the_log(store, &sim, &dir);
    assert!(submit_of(0).held_by(&store).is_some());
    for i in [1, 2] {
        assert!(submit_of(i).held_by(&store).is_none(), "m-{i}");
    }
    store
        .write(|s| submit_of(3).on(s))
        .await
        .expect("a restart replays and takes changes again");
    assert_audit_passes(&store);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_change_and_keeps_what_was_answered() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("node");
    let sim = SimFs::new();
    let store = open(&sim, &dir);
    store.write(|s| submit_of(0).on(s)).await.expect("answered");
    // Room for part of the next envelope only.
    sim.set_capacity(Some(sim.used() + 300));
    let err = store
        .write(|s| submit_of(1).on(s))
        .await
        .expect_err("no room");
    assert!(err.to_string().contains("os error 28"), "{err}");

    sim.set_capacity(None);
    let sim = sim.power_cut();
    let store = reopen_from_the_log(store, &sim, &dir);
    assert!(submit_of(0).held_by(&store).is_some());
    assert!(submit_of(1).held_by(&store).is_none());
    assert_audit_passes(&store);
    store.close();
}

/// A real sled beside the twin's log, and the log's directory there.
fn sled_beside(tmp: &Path) -> (sled::Db, Vec<Tree>, PathBuf) {
    let db = sled::Config::new()
        .path(tmp.join("db"))
        .flush_every_ms(None)
        .open()
        .expect("sled");
    let trees = ["x"]
        .iter()
        .map(|n| db.open_tree(n).expect("tree"))
        .collect();
    (db, crate::store::live::all_sled(trees), tmp.join(wal::DIR))
}

fn put(key: &str, value: Vec<u8>) -> Vec<Op> {
    vec![Op {
        tree: 0,
        key: key.as_bytes().to_vec(),
        value: Some(value),
    }]
}

fn recover(sim: &SimFs, tmp: &Path, db: &sled::Db, trees: &[Tree]) -> Result<(Wal, usize)> {
    let _ = db;
    Wal::recover(
        Arc::new(sim.clone()),
        tmp,
        &mut |ops, _| wal::apply(trees, ops),
        &|_| Ok(true),
        None,
    )
}

/// A record cut short by the power is dropped, and the file is cut back
/// durably before the next file starts: should the open itself be cut
/// short after the next file is durable, the next open finds no gap.
#[test]
fn a_torn_log_tail_is_cut_durably_before_the_next_file_starts() {
    let mut outcomes = BTreeSet::new();
    for seed in 0..24 {
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, trees, log) = sled_beside(tmp.path());
        let sim = SimFs::with_torn_writes(seed);
        let (mut wal, _) = recover(&sim, tmp.path(), &db, &trees).expect("create");
        wal.append(&put("a", b"synced".to_vec())).expect("append");
        wal::sync(&*wal.file()).expect("sync");
        let whole = wal.bytes() as usize;
        wal.append(&put("b", vec![1; 200]))
            .expect("append, never synced");
        drop(wal);
        let sim = sim.power_cut();

        let first = log.join(format!("{:020}.log", 1));
        let left = sim.read(&first).expect("the synced file").len();
        let torn = left > whole && left < 2 * whole + 200;
        let (wal, replayed) =
            recover(&sim, tmp.path(), &db, &trees).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            replayed == 1 || (replayed == 2 && !torn),
            "seed {seed}: {replayed}"
        );
        assert_eq!(
            trees[0].get("a").expect("get").as_deref(),
            Some(&b"synced"[..])
        );
        assert_eq!(trees[0].get("b").expect("get").is_some(), replayed == 2);
        outcomes.insert((replayed, torn));
        drop(wal);
        // The power goes again right after the open, which started a new
        // file: the torn tail was cut back durably, so the older file ends
        // in a whole record and is no gap. Every file is kept.
        let sim = sim.power_cut();
        let (_, again) = recover(&sim, tmp.path(), &db, &trees)
            .unwrap_or_else(|e| panic!("seed {seed}, reopen: {e}"));
        assert_eq!(again, replayed, "seed {seed}");
        assert!(sim.exists(&first).expect("exists"));
        assert_eq!(sim.list_dir(&log).expect("list").len(), 3);
    }
    assert!(
        outcomes.contains(&(1, true)),
        "no seed tore a record: {outcomes:?}"
    );
}

#[test]
fn a_gap_in_an_older_log_file_refuses_the_open_and_names_the_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (db, trees, log) = sled_beside(tmp.path());
    let sim = SimFs::new();
    let (mut wal, _) = recover(&sim, tmp.path(), &db, &trees).expect("create");
    wal.append(&put("a", b"one".to_vec())).expect("append");
    let first_record = wal.bytes();
    wal.append(&put("b", b"two".to_vec())).expect("append");
    wal.rotate().expect("rotate: syncs the first file");
    wal.append(&put("c", b"three".to_vec())).expect("append");
    wal::sync(&*wal.file()).expect("sync");
    drop(wal);
    // The disk loses the end of the older, synced file.
    let first = log.join(format!("{:020}.log", 1));
    let file = sim.open_write(&first).expect("open");
    file.set_len(first_record + 5).expect("cut");
    file.sync_data().expect("sync");
    let sim = sim.power_cut();

    let err = recover(&sim, tmp.path(), &db, &trees).expect_err("a gap");
    let text = err.to_string();
    assert!(text.contains(&first.display().to_string()), "{text}");
    assert!(text.contains(&format!("at byte {first_record}")), "{text}");
    assert!(text.contains("newer journal file follows"), "{text}");
    // Nothing was deleted.
    assert_eq!(sim.list_dir(&log).expect("list").len(), 2);
}

/// The power goes at the `n`-th crossing of `point` while sixteen callers
/// submit; returns the answered messages and the twin after the cut.
async fn cut_at(point: Point, n: usize, dir: &Path) -> (BTreeSet<usize>, SimFs, usize) {
    const CALLERS: usize = 16;
    const EACH: usize = 40;
    let sim = SimFs::with_torn_writes(n as u64);
    let options = StoreOptions {
        journal_file_bytes: 16 * 1024,
        snapshot_journal_bytes: 16 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open_on(Arc::new(sim.clone()), dir, options).expect("open");
    let after = Arc::new(std::sync::Mutex::new(None::<SimFs>));
    let crossings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (sim, after, crossings) = (sim.clone(), after.clone(), crossings.clone());
        store.set_fault_hook(Arc::new(move |p| {
            if p == point && crossings.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == n {
                *after.lock().expect("lock") = Some(sim.power_cut());
            }
        }));
    }
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in c * EACH..(c + 1) * EACH {
                    if store.write(move |s| submit_of(i).on(s)).await.is_ok() {
                        answered.push(i);
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = BTreeSet::new();
    for t in tasks {
        answered.extend(t.await.expect("caller"));
    }
    // A clean stop's last checkpoint may cross the point too.
    store.close();
    drop(store);
    let seen = crossings.load(std::sync::atomic::Ordering::Acquire);
    let after = after.lock().expect("lock").take();
    let after = after.unwrap_or_else(|| panic!("{point:?} crossed {seen} times, never the {n}th"));
    (answered, after, seen)
}

/// A power cut at every phase boundary of the write path — after the
/// journal append, after the fsync, after applying, part-way through
/// applying a batch, inside a checkpoint and while a snapshot is written:
/// every answered submit is there after the restart, whole, the queues
/// and their counters agree, and the audit chain verifies; with the index
/// as sled left it, and with the index lost too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_every_phase_loses_nothing_answered() {
    let plan = [
        (Point::AfterAppend, 50),
        (Point::AfterSync, 8),
        (Point::AfterApply, 8),
        (Point::DuringIndexBatch, 20),
        (Point::DuringCheckpoint, 2),
        // The first snapshot comes after 16 KiB of compressed journal:
        // early in the run, even when the checkpoint thread lags.
        (Point::DuringSnapshot, 1),
    ];
    for (point, n) in plan {
        for lose_index in [false, true] {
            let tmp = tempfile::tempdir().expect("tmp");
            let dir = tmp.path().join("node");
            let (answered, sim, _) = cut_at(point, n, &dir).await;
            assert!(
                !answered.is_empty() && answered.len() < 16 * 40,
                "{point:?}: the cut came in the middle ({} answered)",
                answered.len()
            );
            eprintln!("{point:?}: {} answered before the cut", answered.len());
            if lose_index {
                index::remove(&dir).expect("lose the index");
            }
            let store = open(&sim, &dir);
            let mut held = BTreeSet::new();
            for i in 0..16 * 40 {
                if submit_of(i).held_by(&store).is_some() {
                    held.insert(i);
                }
            }
            assert!(
                answered.is_subset(&held),
                "{point:?} (index lost: {lose_index}): answered but gone: {:?}",
                answered.difference(&held).collect::<Vec<_>>()
            );
            assert_eq!(
                store
                    .outbox_batch("security", None, 10_000)
                    .expect("outbox")
                    .0
                    .len(),
                held.len(),
                "{point:?}: the outbox holds every message held"
            );
            assert_eq!(
                store.outbox_depth("security"),
                held.len(),
                "{point:?}: counters"
            );
            assert_audit_passes(&store);
            // New changes take numbers never handed out before the cut
            // (outbox keys come from `next_seq`): none overwrites another.
            for i in 1000..1010 {
                store
                    .write(move |s| submit_of(i).on(s))
                    .await
                    .expect("answered after the restart");
            }
            assert_eq!(
                store
                    .outbox_batch("security", None, 10_000)
                    .expect("outbox")
                    .0
                    .len(),
                held.len() + 10,
                "{point:?} (index lost: {lose_index}): an outbox entry was overwritten"
            );
            store.close();
        }
    }
}

/// A forwarder with batches in flight reads on after them: each batch
/// starts past the entry the last one ended at, so the outbox comes out
/// whole, in order, each envelope once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_batches_read_on_after_the_batches_in_flight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open(tmp.path()).expect("open");
    for i in 0..10 {
        store
            .write(move |s| submit_of(i).on(s))
            .await
            .expect("submit");
    }
    let mut after: Option<Vec<u8>> = None;
    let mut seen = Vec::new();
    loop {
        let (batch, more) = store
            .outbox_batch("security", after.as_deref(), 4)
            .expect("batch");
        assert_eq!(
            more,
            seen.len() + batch.len() < 10,
            "more wait until the last"
        );
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 4);
        after = batch.last().map(|e| e.queue_key.clone());
        seen.extend(batch.into_iter().map(|e| e.envelope));
    }
    let all: Vec<Vec<u8>> = store
        .outbox_batch("security", None, 100)
        .expect("all")
        .0
        .into_iter()
        .map(|e| e.envelope)
        .collect();
    assert_eq!(all.len(), 10);
    assert_eq!(seen, all);
    assert!(
        store
            .outbox_batch("securit", None, 100)
            .expect("other peer")
            .0
            .is_empty(),
        "a peer's batch never spills into another peer's outbox"
    );
    store.close();
}
