//! The durable store: the only module that imports sled.
//!
//! Trees (all keys documented in `keys`):
//! - `envelopes`: a write of the journal alone (message key → locator of
//!   the signed envelope bytes in the envelope segments, see `segments`),
//!   never in the index: the message's record holds the locator
//!   (`envelope_at`);
//! - `sent`: message key → [`SentRecord`] for messages this node sent
//!   (also the idempotency record: it holds the submit request digest);
//! - `inbound`: message key → [`InboundRecord`] for messages in custody;
//! - `receipts`: message key + receipt digest → where the signed receipt
//!   lies in the journal, only for a receipt about a message with no
//!   record here: the others are listed in their message's record (see
//!   `receipts`);
//! - `outbox`: peer + seq → the locator of the envelope (see `segments`;
//!   written as the message key, which `transact` replaces), envelopes
//!   waiting for a peer;
//! - `inbox`: ready-at + seq → kind + message key (`keys::inbox_entry`),
//!   messages waiting for receivers;
//! - `leases`: deadline + lease id → message key, messages held by receivers;
//! - `receipt_outbox`: peer + seq → where a receipt to return lies in
//!   the journal;
//! - `feed` (slots, `feed.slots`): cursor → the receipt (or the overdue
//!   follow-up) about a sent message, in the order stored (see `feed`);
//! - `expiry`: expires-at + the first half of the message key's SHA-256
//!   → message key, the TTL index;
//! - `dead_letters`: message key → dead-lettered-at, messages in custody
//!   that used up their delivery attempts;
//! - `operator_events`: message key + seq → [`OperatorEvent`], operators'
//!   actions on a message (requeue, discard);
//! - `paused_peers`: peer → [`PauseRecord`], peers an operator paused;
//! - `catalogue_by_time`: newest-first creation time + tie (half the
//!   message key's SHA-256) → message key, and `catalogue_by_case`: case
//!   reference + NUL + the same → message key (only
//!   messages with a case reference): the orders `ListMessages` walks
//!   (see `catalogue`);
//! - `audit`, `audit_index`, `audit_head`, `checkpoints`: the hash-chained
//!   audit log and its signed checkpoints (see `audit`); `audit` maps each
//!   entry's sequence number to where the entry lies in the journal.
//!
//! Evidence is kept once: audit entries and receipts live only in the
//! journal records that wrote them, and their trees hold locators
//! (`evidence`).
//!
//! Every state change is one transaction over these trees, and appends its
//! audit entry in that same transaction (`append_audit`): a state change
//! without its entry, or an entry without its change, cannot be stored.
//! A transaction is one record of the store's journal (`wal`), written
//! before its changes reach the trees. The journal is the truth and is
//! never deleted; the trees (sled, in `index/`) are an index derived from
//! it, replayed from the position they reflect at open and rebuilt from
//! the whole journal when lost or damaged (`index`).
//! Durability is explicit: a caller that must not answer before its write is on disk
//! awaits [`Store::flush`], which joins the group commit.

mod approvals;
mod archive;
mod audit;
mod catalogue;
mod checkpoint;
mod counters;
pub mod crash_points;
mod digest;
mod durable;
mod evidence;
mod expiry;
mod feed;
mod followups;
mod format;
pub mod fs;
mod index;
mod indexer;
pub mod keys;
mod live;
mod operators;
mod packed;
mod pending;
mod read_only;
mod receipts;
mod recipient;
mod records;
mod recovery;
mod segments;
mod sender;
mod slots;
mod snapshot;
mod wal;
mod writer;

#[cfg(test)]
mod power_cut_tests;

pub use approvals::HoldOutcome;
pub use archive::DIR as ARCHIVE_DIR;
pub use audit::{MAX_EQUIVOCATIONS, parse_record as parse_audit_record};
pub use checkpoint::SNAPSHOT_JOURNAL_BYTES;
pub use counters::OutboxDepth;
pub use feed::{CursorCheck, FeedItem};
pub use followups::{FollowUpChange, FollowUpFilter};
/// The journal's directory inside a store's data directory.
pub use wal::DIR as JOURNAL_DIR;

pub use catalogue::{CatalogueRange, Catalogued};
pub use records::{
    Direction, InboundRecord, OperatorAction, OperatorEvent, PauseRecord, SentRecord,
};

use crate::error::{Error, Result};
use crate::metrics::Histogram;
use crate::model::{
    AuditEvent, InboundState, MessageKind, MessageRef, ReceiptKind, SentState, SignedReceipt,
    sha256,
};
use audit::Note;
use crash_points::Point;
use evidence::JournalReader;
use fs::{Fs, RealFs};
use live::Tree;
use segments::Segments;
use sled::IVec;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::oneshot;
use wal::{Tx, TxError, TxResult, Wal};
use writer::{Job, writer};

/// How many inbox entries a receiver limited to some message kinds looks
/// past to find one of its kinds (in memory: each entry carries its
/// kind, so no record is read).
pub const MAX_KIND_SCAN: usize = 10_000;

/// A failure of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("the store's writer has stopped (the node is shutting down)")]
    WriterStopped,
    /// A file of the log or of the envelope segments failed to open,
    /// read, write or sync; `what` names the file and the operation.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store refuses changes since its disk failed ({0}); restart the node once the disk is healthy: \
         the log is replayed at start"
    )]
    Failed(String),
    /// The flush of the group that held this change failed (and latched
    /// the store, which logged it once).
    #[error("flushing the store failed: {0}")]
    FlushFailed(String),
}

impl StoreError {
    /// A refusal of a latched store, logged once when it latched rather
    /// than once per caller.
    pub fn latched(&self) -> bool {
        matches!(self, StoreError::Failed(_) | StoreError::FlushFailed(_))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(StoreError::Sled(e))
    }
}

const ENVELOPES: usize = 0;
const SENT: usize = 1;
const INBOUND: usize = 2;
const RECEIPTS: usize = 3;
const OUTBOX: usize = 4;
const INBOX: usize = 5;
const LEASES: usize = 6;
const RECEIPT_OUTBOX: usize = 7;
const FEED: usize = 8;
const EXPIRY: usize = 9;
const DEAD_LETTERS: usize = 10;
const OPERATOR_EVENTS: usize = 11;
const PAUSED_PEERS: usize = 12;
const AUDIT: usize = 13;
const AUDIT_INDEX: usize = 14;
const AUDIT_HEAD: usize = 15;
const CHECKPOINTS: usize = 16;
const EQUIVOCATIONS: usize = 17;
const META: usize = 18;
const CATALOGUE_BY_TIME: usize = 19;
const CATALOGUE_BY_CASE: usize = 20;
const FOLLOWUPS: usize = 21;
const FOLLOWUP_INDEX: usize = 22;
const PENDING_APPROVAL: usize = 23;
const DECLINED: usize = 24;
const TREE_NAMES: [&str; 25] = [
    "envelopes",
    "sent",
    "inbound",
    "receipts",
    "outbox",
    "inbox",
    "leases",
    "receipt_outbox",
    "feed",
    "expiry",
    "dead_letters",
    "operator_events",
    "paused_peers",
    "audit",
    "audit_index",
    "audit_head",
    "checkpoints",
    "equivocations",
    "meta",
    "catalogue_by_time",
    "catalogue_by_case",
    "followups",
    "followup_index",
    "pending_approval",
    "declined",
];

fn abort<T>(e: Error) -> TxResult<T> {
    Err(TxError::Abort(e))
}

/// Inside a transaction: the record at `key` of `tree` (`sent` or
/// `inbound`), as the change sees it; a record that does not decode
/// aborts the change.
fn record_in<T: for<'a> serde::Deserialize<'a>>(
    t: &Tx,
    tree: usize,
    key: &[u8],
) -> TxResult<Option<T>> {
    t[tree]
        .get(key)?
        .map(|raw| records::decode(TREE_NAMES[tree], &raw).map_err(TxError::Abort))
        .transpose()
}

/// The node's store: one cheap-clone handle shared by every task.
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Opened for verification: no writer, nothing written (see
    /// `read_only`).
    read_only: bool,
    /// The store's data directory (sled, the index, lives in `index/`).
    dir: std::path::PathBuf,
    /// The file layer under the journal, the segments and the snapshots.
    fs: Arc<dyn Fs>,
    db: sled::Db,
    trees: Vec<Tree>,
    /// The live trees' maps (also reachable through `trees`), for
    /// snapshots.
    live: Arc<live::Live>,
    /// When the last snapshot was taken (see `checkpoint`).
    snapshots: std::sync::Mutex<checkpoint::SnapshotState>,
    /// Journal bytes that make a snapshot due.
    snapshot_journal_bytes: u64,
    /// Age past which covered journal files are archived (0: never).
    archive_after_secs: u64,
    /// A test's fault at a crash point (a simulated power cut).
    #[cfg(test)]
    fault: std::sync::Mutex<Option<FaultHook>>,
    /// The journal. Its lock also serialises transactions: one
    /// runs at a time, whichever thread calls it.
    wal: std::sync::Mutex<Wal>,
    /// Envelope bytes; the `envelopes` tree holds their locators.
    segments: Segments,
    /// Audit entries and receipts, read back from the journal records
    /// that wrote them; their trees hold locators (see `evidence`).
    journal: JournalReader,
    /// The audit chain's head, and what the head record says.
    head: std::sync::Mutex<HeadCache>,
    /// Set when a write or sync of the log or the segments failed: the
    /// disk may have dropped data that later syncs would not bring back,
    /// so every later change is refused until a restart replays the log.
    /// A watch channel so the node can turn its health to NOT_SERVING the
    /// moment it latches; it is sent from plain threads too.
    failed: tokio::sync::watch::Sender<Option<String>>,
    /// Changes refused since the store latched.
    refused: std::sync::atomic::AtomicU64,
    /// State changes waiting for the writer thread. A std channel: senders
    /// never block, and the receiving end is a plain thread.
    jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// The writer thread, joined by `close` so that its handle on the
    /// database is gone when `close` returns.
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// State changes per group commit, and how long each flush took.
    flush_batch: Histogram,
    flush_seconds: Histogram,
    /// Whether state changes append audit entries (always, except in a
    /// benchmark that measures what the log costs).
    audit_log: bool,
    /// Journal file size that starts a new file and a checkpoint.
    journal_file_bytes: u64,
    /// Changes journaled since the last sync: applied to the trees only
    /// after the group commit's fsync (see `pending`).
    pending: Arc<std::sync::Mutex<pending::Pending>>,
    /// The journal position up to which the live state and the index
    /// (with its unindexed writes) hold every change. Under the journal's
    /// lock.
    applied: std::sync::Mutex<wal::Position>,
    /// Synced index writes the indexer has not brought to sled yet, and
    /// the position sled reflects (see `indexer`).
    unindexed: Arc<indexer::Unindexed>,
    /// Queue depths, updated as changes are applied (see `counters`).
    counters: std::sync::Mutex<counters::Counters>,
    /// The next number [`Store::next_seq`] hands out.
    seq: std::sync::atomic::AtomicU64,
    /// The next cursor of the receipt feed (see `feed`).
    feed_next: std::sync::atomic::AtomicU64,
    /// The counter as the last journal record carried it.
    logged_seq: std::sync::atomic::AtomicU64,
}

/// What `submit` found.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// The message is new and now stored.
    Stored,
    /// The same request was accepted before; here is its `accepted` receipt.
    Duplicate(SignedReceipt),
}

/// What `accept_inbound` found.
#[derive(Debug)]
pub enum InboundOutcome {
    /// Taken into custody; its inbox entry (key, and the message key it
    /// names), for leasing it in the same command.
    Stored(Arrival),
    /// The same envelope is already in custody; its `delivered` receipt.
    AlreadyHeld(SignedReceipt),
}

/// A message just taken into custody: its inbox entry.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub inbox_key: Vec<u8>,
    pub message_key: Vec<u8>,
    pub kind: crate::model::MessageKind,
}

/// Notes in the record of message `key`, written in the same change
/// (`ops`), where its new envelope lies (`at`, an encoded locator).
fn place_envelope(ops: &mut [wal::Op], key: &[u8], at: &[u8]) -> Result<()> {
    for op in ops.iter_mut().filter(|op| op.key == key) {
        let Some(value) = &op.value else { continue };
        let placed = match op.tree as usize {
            SENT => {
                let mut r: SentRecord = records::decode("sent", value)?;
                r.envelope_at = at.to_vec();
                records::encode(&r)
            }
            INBOUND => {
                let mut r: InboundRecord = records::decode("inbound", value)?;
                r.envelope_at = at.to_vec();
                records::encode(&r)
            }
            _ => continue,
        };
        op.value = Some(placed);
        return Ok(());
    }
    Err(Error::corrupt(
        "envelopes",
        "an envelope was written without its message's record",
    ))
}

/// Counts of records per tree, for tests and operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: usize,
    pub inbound: usize,
    pub receipts: usize,
    pub outbox: usize,
    pub inbox: usize,
    pub leases: usize,
    pub receipt_outbox: usize,
    pub feed: usize,
    /// Audit log entries.
    pub audit: usize,
}

/// One envelope waiting in a peer's outbox.
#[derive(Debug)]
pub struct OutboxEntry {
    /// Where the entry waits: a cursor for the next batch.
    pub queue_key: Vec<u8>,
    /// The signed envelope; its header names the message.
    pub envelope: Vec<u8>,
}

/// Who ends a lease: the principal that holds it, or the node itself
/// (a lapsed lease, a delivery that never reached its stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Principal(String),
    Node,
}

impl Holder {
    /// Whether this holder holds (or held) the last lease of `record`.
    pub fn holds(&self, record: &InboundRecord) -> bool {
        match self {
            Holder::Principal(name) => *name == record.lease_holder,
            Holder::Node => true,
        }
    }
}

/// What a settlement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The lease ended with this settlement.
    Now,
    /// The same lease had already settled the message the same way; the
    /// first settlement's receipt stands.
    Before,
}

/// One leased message handed to a receiver.
#[derive(Debug)]
pub struct Lease {
    pub message_key: Vec<u8>,
    pub envelope: Vec<u8>,
    pub record: InboundRecord,
}

/// How a store runs: what a node file's `[store]` and `[audit]` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Whether state changes append audit entries (see [`Store::open_with`]).
    pub audit_log: bool,
    /// Journal file size that starts a new file and a checkpoint of the
    /// index: bounds the replay at open and the dirty data each sled
    /// flush writes.
    pub journal_file_bytes: u64,
    /// Journal bytes written between two snapshots of the live state (at
    /// least; twice the last snapshot's size when that is more): bounds
    /// the replay at open.
    pub snapshot_journal_bytes: u64,
    /// Age (of their newest audit entry) past which journal files that a
    /// signed checkpoint covers are moved to `archive/` (0: never).
    pub archive_after_secs: u64,
}

/// The default of [`StoreOptions::journal_file_bytes`]: 8 MiB.
pub const JOURNAL_FILE_BYTES: u64 = 8 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            audit_log: true,
            journal_file_bytes: JOURNAL_FILE_BYTES,
            snapshot_journal_bytes: checkpoint::SNAPSHOT_JOURNAL_BYTES,
            archive_after_secs: 0,
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its group-commit
    /// flusher. Must be called inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_with(dir, true)
    }

    /// Opens the store; `audit_log: false` stores state changes without
    /// audit entries (only to measure the log's cost: it voids the
    /// tamper-evidence guarantee).
    pub fn open_with(dir: &Path, audit_log: bool) -> Result<Store> {
        let options = StoreOptions {
            audit_log,
            ..StoreOptions::default()
        };
        Self::open_on(Arc::new(RealFs), dir, options)
    }

    /// Opens the store with its journal (`journal/`) and envelope segments
    /// (`envelopes/`) on `fs`, and sled's files in `dir` on the real file
    /// system (sled does its own I/O). A node passes [`RealFs`]; a test may
    /// pass a [`fs::SimFs`] to cut the power under the log and the segments.
    pub fn open_on(fs: Arc<dyn Fs>, dir: &Path, options: StoreOptions) -> Result<Store> {
        crash_points::arm_from_env()?;
        durable::create_dir_durably(&RealFs, dir).map_err(|source| {
            Error::Store(StoreError::Io {
                what: format!("cannot create the store directory {}", dir.display()),
                source,
            })
        })?;
        format::stamp_or_check(&*fs, dir)?;
        let segments = Segments::open(Arc::clone(&fs), dir)?;
        let r = recovery::recover(Arc::clone(&fs), dir, &segments)?;
        // The replayed changes become durable in the index, with the
        // position they reach (also with nothing replayed: sled writes
        // its `conf` unsynced at open).
        let applied = r.wal.position();
        let next_seq = index::next_seq(&r.trees)?;
        index::checkpoint(dir, &r.db, &r.trees, applied, next_seq, || {})
            .map_err(|e| index::failed(dir, e))?;
        let trees = r.trees;
        let next_feed = Store::feed_after_newest(&trees)?;
        let journal = JournalReader::new(Arc::clone(&fs), dir);
        journal.appending_to(&r.wal);
        let head = Store::initial_audit_head(&trees, &journal)?;
        let stored = audit::head_record(&trees)?;
        if r.replayed > 0 {
            tracing::info!(
                records = r.replayed,
                rebuilt_index = r.rebuilt_index,
                snapshot = ?r.snapshot.map(|at| (at.epoch, at.offset)),
                "replayed the journal into the index and the live state"
            );
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let store = Store::assemble(Parts {
            dir: dir.to_path_buf(),
            fs,
            db: r.db,
            trees,
            live: r.live,
            wal: r.wal,
            segments,
            head: HeadCache { head, stored },
            journal,
            counters: r.counters,
            applied,
            snapshot: r.snapshot,
            next_seq,
            next_feed,
            options,
            jobs: Some(tx),
        });
        let writer_store = store.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_store, rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the store writer: {e}")))?;
        *store
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(store)
    }

    fn assemble(p: Parts) -> Store {
        let unindexed = Arc::new(indexer::Unindexed::new(TREE_NAMES.len(), p.applied));
        // A store opened for verification writes nothing: its trees stay
        // plain.
        let trees = if p.jobs.is_some() {
            live::indexed(p.trees, &unindexed)
        } else {
            p.trees
        };
        Store {
            shared: Arc::new(Shared {
                read_only: p.jobs.is_none(),
                dir: p.dir,
                fs: p.fs,
                db: p.db,
                trees,
                unindexed,
                live: p.live,
                #[cfg(test)]
                fault: std::sync::Mutex::new(None),
                snapshots: std::sync::Mutex::new(checkpoint::SnapshotState {
                    at: p.snapshot,
                    // No snapshot yet: the first checkpoint takes one.
                    since: if p.snapshot.is_some() {
                        0
                    } else {
                        u64::MAX / 2
                    },
                    last_size: 0,
                }),
                snapshot_journal_bytes: p.options.snapshot_journal_bytes.max(1),
                archive_after_secs: p.options.archive_after_secs,
                wal: std::sync::Mutex::new(p.wal),
                segments: p.segments,
                journal: p.journal,
                failed: tokio::sync::watch::Sender::new(None),
                refused: Default::default(),
                head: std::sync::Mutex::new(p.head),
                jobs: std::sync::Mutex::new(p.jobs),
                writer: std::sync::Mutex::new(None),
                flush_batch: Histogram::new(crate::metrics::COUNT_BUCKETS),
                flush_seconds: Histogram::new(crate::metrics::SECONDS_BUCKETS),
                audit_log: p.options.audit_log,
                journal_file_bytes: p.options.journal_file_bytes.max(1),
                pending: Arc::default(),
                counters: std::sync::Mutex::new(p.counters),
                applied: std::sync::Mutex::new(p.applied),
                seq: std::sync::atomic::AtomicU64::new(p.next_seq),
                logged_seq: std::sync::atomic::AtomicU64::new(0),
                feed_next: std::sync::atomic::AtomicU64::new(p.next_feed),
            }),
        }
    }

    /// Rebuilds the index and the live state of the stopped store in
    /// `dir` from its journal: removes sled's files and the snapshots, and
    /// replays every journal record. Refused while a node has the store open (the index is locked).
    /// Returns the rebuilt store's record counts.
    pub fn reindex(dir: &Path) -> Result<Counts> {
        if !dir.join(wal::DIR).is_dir() {
            return Err(Error::NotFound(format!(
                "{} holds no store journal (expected the data_dir of a node file)",
                dir.display()
            )));
        }
        // Opening first tells a running node's store (locked) from a
        // stopped one before anything is removed.
        let store = Store::open(dir)?;
        store.close();
        drop(store);
        index::remove(dir)?;
        snapshot::remove_all(&RealFs, dir)?;
        let store = Store::open(dir)?;
        let counts = store.counts();
        store.close();
        Ok(counts)
    }

    /// Rewrites the journal of the stopped store in `dir`: `edit` sees
    /// every write of every record (tree name, key, value) and may change
    /// it; lengths and CRCs are recomputed and the index is removed (the
    /// next open rebuilds it from the rewritten journal). A tool for
    /// drills and tests that show what `audit verify` catches when an
    /// operator rewrites history — a node never calls it.
    #[doc(hidden)]
    pub fn rewrite_journal(
        dir: &Path,
        mut edit: impl FnMut(&str, &[u8], &mut Option<Vec<u8>>),
    ) -> Result<usize> {
        let store = Store::open(dir)?;
        store.close();
        drop(store);
        let records = wal::rewrite(dir, &mut |tree, key, value| {
            edit(TREE_NAMES.get(tree).copied().unwrap_or(""), key, value)
        })?;
        index::remove(dir)?;
        snapshot::remove_all(&RealFs, dir)?;
        Ok(records)
    }

    fn tree(&self, i: usize) -> &Tree {
        &self.shared.trees[i]
    }

    /// A fresh, strictly increasing sequence number (not contiguous).
    ///
    /// Kept by the store, not by sled: every journal record that follows
    /// the issue of a number carries the counter, so a replay (even into a
    /// rebuilt index) never hands out a number twice.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self
            .shared
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel))
    }

    /// Runs a state change on the writer thread and answers once it is on
    /// disk.
    ///
    /// Group commit: the writer runs every change queued while the previous
    /// batch was synced, then syncs the envelope segment and the log once
    /// for all of them. Running changes on one thread keeps transactions
    /// off the async runtime. sled itself is flushed only by checkpoints,
    /// one at a time: concurrent flushes can deadlock sled 0.34.7.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let result = op(store);
            Box::new(move |flushed: Result<(), String>| {
                let answer = match flushed {
                    Ok(()) => result,
                    Err(e) => Err(Error::Store(StoreError::FlushFailed(e))),
                };
                let _ = tx.send(answer);
            })
        });
        if self.shared.read_only {
            return Err(Error::FailedPrecondition(
                "this store is open read-only (for verification): it takes no change".into(),
            ));
        }
        // A latched store refuses at once: the writer would only fail it.
        if let Err(e) = self.check_healthy() {
            self.shared
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
        let sent = match &*self.lock_jobs() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::Store(StoreError::WriterStopped));
        }
        rx.await
            .map_err(|_| Error::Store(StoreError::WriterStopped))?
    }

    /// Waits until every change made before this call is on disk.
    pub async fn flush(&self) -> Result<()> {
        self.write(|_| Ok(())).await
    }

    /// Stops the writer thread after the changes already queued; later
    /// writes fail with `Unavailable`. Called at shutdown so the database
    /// closes when the last handle goes.
    ///
    /// Waits for the writer thread to end (it finishes the changes already
    /// queued, one flush), so that a node restarted right after its stop
    /// finds the database unlocked.
    pub fn close(&self) {
        self.lock_jobs().take();
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
            && handle.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }

    /// Marks a crossing of a crash point: the process aborts there when
    /// the point is armed (see `crash_points`), and a test's fault hook
    /// runs.
    fn cross(&self, point: Point) {
        crash_points::cross(point);
        #[cfg(test)]
        {
            let hook = self
                .shared
                .fault
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                (hook.0)(point);
            }
        }
    }

    /// Runs `hook` at every crash point this store crosses (tests only).
    #[cfg(test)]
    fn set_fault_hook(&self, hook: Arc<dyn Fn(Point) + Send + Sync>) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(FaultHook(hook));
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, Option<std::sync::mpsc::Sender<Job>>> {
        // Poisoning cannot leave an Option<Sender> inconsistent.
        self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses every later change: the disk failed under the log or the
    /// segments (see `Shared::failed`).
    /// The first failure is logged; later ones only return the error.
    fn fail(&self, why: impl Into<String>) -> Error {
        let why = why.into();
        let mut first = None;
        self.shared.failed.send_if_modified(|failed| match failed {
            Some(held) => {
                first = Some(held.clone());
                false
            }
            None => {
                tracing::error!(error = %why, "store disk failure: refusing changes until the node restarts (the log is replayed at start)");
                *failed = Some(why.clone());
                true
            }
        });
        Error::Store(StoreError::Failed(first.unwrap_or(why)))
    }

    fn check_healthy(&self) -> Result<()> {
        match self.failure() {
            Some(why) => Err(Error::Store(StoreError::Failed(why))),
            None => Ok(()),
        }
    }

    /// Changes refused since the store latched: callers and background
    /// tasks that keep trying.
    pub fn refused_changes(&self) -> u64 {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the store refuses changes, if a write or sync failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.borrow().clone()
    }

    /// Tells when the store latches on a failure (see [`Store::failure`]).
    pub fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.failed.subscribe()
    }

    fn lock_counters(&self) -> std::sync::MutexGuard<'_, counters::Counters> {
        // Counters are plain numbers: a panic cannot leave them torn.
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, wal::Position> {
        self.shared
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the changes journaled before the sync that just succeeded
    /// to the trees, under the journal's lock (so a checkpoint sees the
    /// trees and the applied position agree). From here readers see them.
    fn apply_synced(&self) -> Result<()> {
        let _wal = self.lock_wal();
        let records = wal::lock(&self.shared.pending).take();
        let Some(last) = records.last().map(|(_, end)| *end) else {
            return Ok(());
        };
        let now = crate::now_ms();
        let mut counters = self.lock_counters();
        for (ops, end) in &records {
            // Journaled and synced but not (wholly) applied: only a replay
            // at the next start makes the trees whole again.
            // The counter's write (a record's last, see `transact`) stays
            // in the journal: the running store holds it in memory, and
            // checkpoints note it (one index insert less per change).
            let ops = match ops.split_last() {
                Some((last, rest)) if index::is_seq_op(last) => rest,
                _ => &ops[..],
            };
            counters::apply_counted(&self.shared.trees, ops, &mut counters, now)
                .map_err(|e| self.fail(e.to_string()))?;
            self.shared.unindexed.end_record(*end);
        }
        drop(counters);
        *self.lock_applied() = last;
        // The index's share goes to the indexer (waiting if it is far
        // behind).
        self.shared.unindexed.seal();
        Ok(())
    }

    fn lock_head(&self) -> std::sync::MutexGuard<'_, HeadCache> {
        self.shared.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        // A panic while the lock was held left at most a record that was
        // written but not applied; replay at the next open applies it.
        self.shared.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The envelope bytes an `envelopes` value stands for.
    fn envelope_bytes(&self, value: &[u8]) -> Result<Vec<u8>> {
        self.shared.segments.resolve(value)
    }

    /// The bytes a value of an evidence tree (`audit`, `receipts`,
    /// `receipt_outbox`) stands for: read from the journal.
    fn evidence(&self, tree: usize, value: &[u8]) -> Result<Vec<u8>> {
        self.shared.journal.resolve(TREE_NAMES[tree], value)
    }

    fn receipt_at(&self, tree: usize, value: &[u8]) -> Result<SignedReceipt> {
        SignedReceipt::decode(&self.evidence(tree, value)?)
            .map_err(|e| Error::corrupt(TREE_NAMES[tree], e))
    }

    /// Group-commit figures: changes per flush, and flush durations.
    pub fn flush_histograms(&self) -> (&Histogram, &Histogram) {
        (&self.shared.flush_batch, &self.shared.flush_seconds)
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.shared.db.size_on_disk()?)
    }

    /// Runs one state change: all of its writes, or none of them (when
    /// `f` fails). The writes go to the log first, then to the trees; they
    /// are durable after the next [`Store::flush`].
    fn transact<T>(&self, f: impl FnOnce(&Tx) -> TxResult<T>) -> Result<T> {
        debug_assert!(
            pending::on_writer(),
            "a state change runs on the store's writer thread (Store::write)"
        );
        let mut wal = self.lock_wal();
        self.check_healthy()?;
        let head = self.lock_head().head;
        let tx = Tx::new(&self.shared.trees, &self.shared.pending, head);
        let out = f(&tx)?;
        self.index_audit_entries(&tx)?;
        receipts::keep_with_records(&tx)?;
        let new_head = tx.audit_head.get();
        let mut ops = tx.into_ops();
        // The counter of `next_seq` travels with the record that follows
        // the numbers it handed out (see `Store::next_seq`), as its last
        // write (`apply_synced` leaves it to replays and checkpoints).
        let seq = self.shared.seq.load(std::sync::atomic::Ordering::Acquire);
        if !ops.is_empty()
            && self
                .shared
                .logged_seq
                .swap(seq, std::sync::atomic::Ordering::AcqRel)
                != seq
        {
            ops.push(index::seq_op(seq));
        }
        let mut located: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for op in &mut ops {
            if op.tree as usize == ENVELOPES
                && let Some(bytes) = &op.value
            {
                let at = self.shared.segments.append(bytes).map_err(|e| match e {
                    // A refusal (an envelope too large to locate) is not a
                    // disk failure.
                    Error::InvalidArgument(_) => e,
                    e => self.fail(e.to_string()),
                })?;
                op.value = Some(at.encode().to_vec());
                located.push((op.key.clone(), at.encode().to_vec()));
            }
        }
        // The message's record, written in the same change, notes where
        // its envelope lies: the index holds no entry of its own for it.
        for (key, at) in &located {
            place_envelope(&mut ops, key, at)?;
        }
        // An outbox entry written with its envelope names the envelope by
        // where it lies, not by message key: a forwarder reads it without
        // a lookup in the index.
        for op in ops.iter_mut().filter(|op| op.tree as usize == OUTBOX) {
            if let Some((_, at)) = located
                .iter()
                .find(|(key, _)| op.value.as_deref() == Some(key.as_slice()))
            {
                op.value = Some(at.clone());
            }
        }
        if !ops.is_empty() {
            let at = wal.position();
            let lists = receipts::strip(&mut ops);
            wal.append(&ops).map_err(|e| self.fail(e.to_string()))?;
            // Applied to the trees after the group commit's sync, evidence
            // as locators into the record just written.
            let indexed =
                evidence::index_form(&ops, at, &mut |tree, key| Ok(lists.prior(tree, key)))?;
            wal::lock(&self.shared.pending).push(indexed, wal.position());
            self.cross(Point::AfterAppend);
        }
        if new_head != head {
            self.lock_head().head = new_head;
        }
        Ok(out)
    }

    /// `key` of `tree` as the next change sees it: on the writer thread,
    /// changes journaled but not yet synced count; anywhere else only the
    /// trees do, which hold synced changes alone.
    fn read(&self, tree: usize, key: &[u8]) -> Result<Option<IVec>> {
        if pending::on_writer() {
            match wal::lock(&self.shared.pending).get(tree, key) {
                pending::Seen::Removed => return Ok(None),
                pending::Seen::Value(v) => return Ok(Some(IVec::from(v))),
                pending::Seen::Unchanged => {}
            }
        }
        Ok(self.tree(tree).get(key)?)
    }

    /// The values of `tree` under `prefix`, in key order, as [`Store::read`]
    /// sees them.
    fn read_prefix(&self, tree: usize, prefix: &[u8]) -> Result<Vec<IVec>> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.tree(tree).scan_prefix(prefix) {
            let (k, v) = kv?;
            out.insert(k.to_vec(), Some(v));
        }
        if pending::on_writer() {
            for (k, v) in wal::lock(&self.shared.pending).with_prefix(tree, prefix) {
                out.insert(k, v.map(IVec::from));
            }
        }
        Ok(out.into_values().flatten().collect())
    }

    /// Whether a change not yet synced removed `key` from `tree` (on the
    /// writer thread): such an entry is gone for the next change.
    fn removed_pending(&self, tree: usize, key: &[u8]) -> bool {
        pending::on_writer()
            && matches!(
                wal::lock(&self.shared.pending).get(tree, key),
                pending::Seen::Removed
            )
    }
}

/// A test's action at a crash point.
#[cfg(test)]
#[derive(Clone)]
struct FaultHook(Arc<dyn Fn(Point) + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// What an open puts together into a [`Store`].
struct Parts {
    dir: std::path::PathBuf,
    fs: Arc<dyn Fs>,
    db: sled::Db,
    trees: Vec<Tree>,
    live: Arc<live::Live>,
    /// The position of the snapshot the live state was loaded from.
    snapshot: Option<wal::Position>,
    wal: Wal,
    segments: Segments,
    head: HeadCache,
    journal: JournalReader,
    counters: counters::Counters,
    applied: wal::Position,
    next_seq: u64,
    /// The next feed cursor (see `feed`).
    next_feed: u64,
    options: StoreOptions,
    /// The writer's queue; `None` opens the store read-only.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
}

/// The audit chain's head in memory, and the value of the head record.
#[derive(Debug)]
struct HeadCache {
    head: (u64, [u8; 32]),
    stored: (u64, [u8; 32]),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record written with a new envelope gets its locator (sent or in
    /// custody); an envelope written without its record is refused.
    #[test]
    fn a_new_envelope_is_placed_in_its_record_and_never_alone() {
        let key = b"discipline\x00m1".to_vec();
        let at = [7u8; 21];
        let inbound = InboundRecord::arrived(MessageKind::ClueTransfer, [1; 32], 9);
        let op = |tree: usize, value: Vec<u8>| wal::Op {
            tree: tree as u8,
            key: key.clone(),
            value: Some(value),
        };
        let mut ops = vec![
            op(ENVELOPES, at.to_vec()),
            op(INBOUND, records::encode(&inbound)),
        ];
        place_envelope(&mut ops, &key, &at).expect("placed");
        let placed: InboundRecord =
            records::decode("inbound", ops[1].value.as_deref().expect("value")).expect("decode");
        assert_eq!(placed.envelope_at, at.to_vec());
        assert_eq!(
            ops[0].value.as_deref(),
            Some(&at[..]),
            "the journal's note stays"
        );

        let mut alone = vec![op(ENVELOPES, at.to_vec())];
        let err = place_envelope(&mut alone, &key, &at).expect_err("no record");
        assert!(
            err.to_string().contains("without its message's record"),
            "{err}"
        );
    }

    /// A checkpoint makes the index durable (sled's files fsynced) up to
    /// the journal's end, and deletes nothing: the journal is the truth.
    /// An index lost afterwards is rebuilt from the journal at the next
    /// open, and the counter of `next_seq` goes on where it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_syncs_the_index_and_keeps_the_journal_and_a_lost_index_is_rebuilt() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("node");
        let store = Store::open(&dir).expect("open");
        let pause = PauseRecord {
            at_ms: 1,
            principal: "operator".into(),
        };
        let p = pause.clone();
        store
            .write(move |s| s.set_paused("peer", Some(&p)))
            .await
            .expect("change");
        let issued = store.next_seq().expect("seq");
        store
            .write(move |s| s.set_paused("other", Some(&pause)))
            .await
            .expect("a record after the number");
        let journal = dir.join(wal::DIR);
        let files = || std::fs::read_dir(&journal).expect("list").count();
        let before = files();
        durable::take_trace();

        store.checkpoint().expect("checkpoint");

        let trace = durable::take_trace();
        assert!(
            trace.contains(&format!("sled {}", index::dir(&dir).display())),
            "{trace:?}"
        );
        assert!(files() > before, "a new journal file, and no file deleted");
        store.close();
        drop(store);
        index::remove(&dir).expect("lose the index");
        let reopened = Store::open(&dir).expect("reopen: rebuilt from the journal");
        assert_eq!(reopened.paused_peers().expect("paused").len(), 2);
        assert!(
            reopened.next_seq().expect("seq") > issued,
            "no number is handed out twice"
        );
        reopened.close();
        drop(reopened);
        let reopened = Store::open(&dir).expect("reopen, nothing to replay");
        assert_eq!(reopened.paused_peers().expect("paused").len(), 2);
    }
}
