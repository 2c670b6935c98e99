//! The store's journal: what makes a state change atomic and durable. It
//! is the truth; sled, which holds the state for reads, is an index
//! derived from it.
//!
//! sled 0.34.7's multi-tree transactions cost about 135 µs for the nine
//! keys of a submit, plain inserts about 50 µs (measured on the 2-core
//! development machine). So a state change is written like this:
//!
//! 1. its closure runs against a [`Tx`], which reads the trees and
//!    records the writes (reading its own writes back);
//! 2. the writes are appended to the log as **one record** (length,
//!    CRC-32, payload), with a `write` to the file: from then on a
//!    SIGKILL of the process cannot lose it;
//! 3. they are applied to the sled trees with plain inserts and removes;
//! 4. group commit: before a caller of `Store::write` is answered, `sync`
//!    makes every record appended so far durable with one `fdatasync`.
//!    (Transactions run off the writer thread, such as leases, are made
//!    durable by the next group commit.)
//!
//! Because step 2 comes before step 3, after a crash of the process
//! (SIGKILL: the page cache survives) sled never holds a change the log
//! lacks. So, at open, replaying the records in order over whatever sled
//! had made durable gives exactly the state after the last record: a key
//! a record touched ends with its last record's value, and a key no record
//! touched did not change since the last checkpoint. A record cut short
//! by a crash fails its CRC and ends the replay; it was never answered.
//!
//! Power loss: every acknowledged change is in the synced journal and is
//! replayed. The journal is never deleted: sled is an index derived from
//! it (see `index`), made durable at checkpoints, which note the journal
//! position the index reflects; an open replays from there, and an index
//! that is lost or damaged is rebuilt from every file. Checkpoints run
//! under the journal's lock after syncing the envelope segments and the
//! journal, so the index never holds durably a change whose record is not
//! synced. What remains is sled writing out a full buffer, or the kernel
//! writing back sled's pages, before a group's sync: a change in flight
//! could then be in sled's files without its record; such pages are not
//! fsynced, and applying changes to sled only after the group's sync will
//! close that gap too.
//!
//! Files are named by a growing epoch number; a new one starts at every
//! open and when the current one passes the checkpoint size.

use super::StoreError;
use super::durable;
use super::fs::{Buffered, Fs, FsFile};
use super::live::Tree;
use super::pending::{Pending, Seen};
use crate::error::{Error, Result};
use sled::IVec;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Locks the pending changes; a panic while they were held leaves at most
/// a change journaled and not applied, which replay applies.
pub(super) fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// The journal directory inside a store's data directory.
pub const DIR: &str = "journal";

/// A record longer than this is not one the log wrote: the length is
/// torn or the file is damaged.
const MAX_RECORD: usize = 256 * 1024 * 1024;

const INSERT: u8 = 1;
const REMOVE: u8 = 0;

/// One write of a state change: tree index, key, and the new value
/// (`None` removes the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Op {
    pub tree: u8,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A failure inside a state change: either the change refuses (and
/// nothing is written), or the storage engine failed.
#[derive(Debug)]
pub(super) enum TxError {
    Abort(Error),
    Storage(sled::Error),
}

impl From<sled::Error> for TxError {
    fn from(e: sled::Error) -> Self {
        TxError::Storage(e)
    }
}

impl From<TxError> for Error {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Abort(e) => e,
            TxError::Storage(e) => e.into(),
        }
    }
}

pub(super) type TxResult<T> = std::result::Result<T, TxError>;

/// One tree as a state change sees it: reads see the change's own earlier
/// writes, writes are recorded (in order, shared by all trees of the
/// change) and reach sled only when the change succeeds.
pub(super) struct TxTree {
    index: u8,
    tree: Tree,
    ops: Rc<RefCell<Vec<Op>>>,
    /// Changes journaled by earlier transactions, not yet synced and so
    /// not yet in the tree.
    pending: Arc<Mutex<Pending>>,
}

impl TxTree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<IVec>> {
        let key = key.as_ref();
        let ops = self.ops.borrow();
        if let Some(op) = ops
            .iter()
            .rev()
            .find(|op| op.tree == self.index && op.key == key)
        {
            return Ok(op.value.as_deref().map(IVec::from));
        }
        match lock(&self.pending).get(self.index as usize, key) {
            Seen::Removed => return Ok(None),
            Seen::Value(v) => return Ok(Some(IVec::from(v))),
            Seen::Unchanged => {}
        }
        Ok(self.tree.get(key)?)
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> TxResult<()> {
        self.ops.borrow_mut().push(Op {
            tree: self.index,
            key: key.as_ref().to_vec(),
            value: Some(value.as_ref().to_vec()),
        });
        Ok(())
    }

    /// Removes `key`, returning the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<Option<IVec>> {
        let old = self.get(key.as_ref())?;
        self.ops.borrow_mut().push(Op {
            tree: self.index,
            key: key.as_ref().to_vec(),
            value: None,
        });
        Ok(old)
    }
}

/// The trees as one state change sees them, indexed like the store's.
pub(super) struct Tx {
    trees: Vec<TxTree>,
    ops: Rc<RefCell<Vec<Op>>>,
    /// The audit chain's head (sequence number, hash) as this change sees
    /// it: the store keeps the head in memory (see `Store::append_audit`).
    pub audit_head: std::cell::Cell<(u64, [u8; 32])>,
    /// Audit entries appended by this change: (message key, seq). The
    /// store notes each in the message's record when the change commits.
    pub audit_appended: RefCell<Vec<(Vec<u8>, u64)>>,
}

impl Tx {
    pub fn new(trees: &[Tree], pending: &Arc<Mutex<Pending>>, audit_head: (u64, [u8; 32])) -> Tx {
        let ops = Rc::new(RefCell::new(Vec::new()));
        let trees = trees
            .iter()
            .enumerate()
            .map(|(i, tree)| TxTree {
                index: i as u8,
                tree: tree.clone(),
                ops: Rc::clone(&ops),
                pending: Arc::clone(pending),
            })
            .collect();
        Tx {
            trees,
            ops,
            audit_head: std::cell::Cell::new(audit_head),
            audit_appended: RefCell::new(Vec::new()),
        }
    }

    /// The keys of `tree` this change writes a value to so far.
    pub fn written(&self, tree: usize) -> Vec<Vec<u8>> {
        let ops = self.ops.borrow();
        ops.iter()
            .filter(|op| op.tree as usize == tree && op.value.is_some())
            .map(|op| op.key.clone())
            .collect()
    }

    /// Whether this change's last word on `key` of `tree` so far is a
    /// value.
    pub fn writes(&self, tree: usize, key: &[u8]) -> bool {
        let ops = self.ops.borrow();
        ops.iter()
            .rev()
            .find(|op| op.tree as usize == tree && op.key == key)
            .is_some_and(|op| op.value.is_some())
    }

    /// The writes, one per key: a key written twice keeps its last write
    /// (in the place of that write).
    pub fn into_ops(self) -> Vec<Op> {
        drop(self.trees);
        let ops = Rc::try_unwrap(self.ops)
            .map(RefCell::into_inner)
            .unwrap_or_else(|shared| shared.borrow().clone());
        let mut out: Vec<Op> = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(i) = out
                .iter()
                .position(|o| o.tree == op.tree && o.key == op.key)
            {
                out.remove(i);
            }
            out.push(op);
        }
        out
    }
}

impl std::ops::Index<usize> for Tx {
    type Output = TxTree;
    fn index(&self, i: usize) -> &TxTree {
        &self.trees[i]
    }
}

/// Applies a record's writes to the trees, in order.
pub(super) fn apply(trees: &[Tree], ops: &[Op]) -> Result<()> {
    for op in ops {
        let tree = trees.get(op.tree as usize).ok_or_else(|| {
            Error::corrupt(
                "wal",
                format!("record names tree {} of {}", op.tree, trees.len()),
            )
        })?;
        match &op.value {
            Some(v) => tree.insert(op.key.as_slice(), v.as_slice())?,
            None => tree.remove(op.key.as_slice())?,
        };
    }
    Ok(())
}

/// The next whole record at the start of `rest`: its length with the
/// header, and its writes. `None` if it is cut short, fails its CRC, is
/// empty (a zero-filled tail reads as length 0, CRC 0) or names an
/// envelope that `complete` finds missing.
fn next_record(
    rest: &[u8],
    complete: &dyn Fn(&[Op]) -> Result<bool>,
) -> Result<Option<(usize, Vec<Op>)>> {
    if rest.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    let Some(payload) = rest.get(8..8 + len) else {
        return Ok(None);
    };
    if crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    let Some(ops) = unpack(payload).as_deref().and_then(decode) else {
        return Ok(None);
    };
    if !complete(&ops)? {
        return Ok(None);
    }
    Ok(Some((8 + len, ops)))
}

/// The writes of a record as `encode` laid them out, from its stored
/// payload: LZ4 block compression, the uncompressed length first (a
/// record's keys repeat: the message key of a submit appears in most of
/// its writes). `None` if the payload does not decompress to a length
/// a record can have.
pub(super) fn unpack(payload: &[u8]) -> Option<Vec<u8>> {
    let announced = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    if announced > MAX_RECORD {
        return None;
    }
    lz4_flex::block::decompress_size_prepended(payload).ok()
}

/// Where each op's value lies in its record's writes once unpacked
/// (`encode` lays them out): (start, length), `None` for a removal.
pub(super) fn value_spans(ops: &[Op]) -> Vec<Option<(u32, u32)>> {
    let mut at = 0usize;
    ops.iter()
        .map(|op| {
            at += 6 + op.key.len();
            op.value.as_ref().map(|v| {
                let span = ((at + 4) as u32, v.len() as u32);
                at += 4 + v.len();
                span
            })
        })
        .collect()
}

/// The payload length a record header announces, if it can be one.
pub(super) fn payload_len(header: &[u8; 8]) -> Option<usize> {
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    (len != 0 && len <= MAX_RECORD).then_some(len)
}

/// Whether a record's payload matches the CRC of its header.
pub(super) fn crc_holds(header: &[u8; 8], payload: &[u8]) -> bool {
    header[4..8] == crc32fast::hash(payload).to_le_bytes()
}

/// The whole records at the start of `data`, in order (a torn or damaged
/// record ends them).
pub(super) fn records(mut data: &[u8]) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    while let Ok(Some((len, ops))) = next_record(data, &|_| Ok(true)) {
        out.push(ops);
        data = &data[len..];
    }
    out
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|op| 10 + op.key.len() + op.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut payload = Vec::with_capacity(size);
    for op in ops {
        payload.push(op.tree);
        payload.push(if op.value.is_some() { INSERT } else { REMOVE });
        payload.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        payload.extend_from_slice(&op.key);
        if let Some(v) = &op.value {
            payload.extend_from_slice(&(v.len() as u32).to_le_bytes());
            payload.extend_from_slice(v);
        }
    }
    let packed = lz4_flex::block::compress_prepend_size(&payload);
    let mut record = Vec::with_capacity(8 + packed.len());
    record.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&packed).to_le_bytes());
    record.extend_from_slice(&packed);
    record
}

fn decode(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Some(head)
    }
    fn take_u32(p: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let head = take(&mut payload, 2)?;
        let key_len = take_u32(&mut payload)?;
        let key = take(&mut payload, key_len)?.to_vec();
        let value = match head[1] {
            INSERT => {
                let n = take_u32(&mut payload)?;
                Some(take(&mut payload, n)?.to_vec())
            }
            REMOVE => None,
            _ => return None,
        };
        ops.push(Op {
            tree: head[0],
            key,
            value,
        });
    }
    Some(ops)
}

/// The open log: the file records are appended to.
#[derive(Debug)]
pub(super) struct Wal {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    epoch: u64,
    file: Arc<dyn FsFile>,
    /// Bytes appended to the current file.
    bytes: u64,
}

pub(super) fn file_name(epoch: u64) -> String {
    format!("{epoch:020}.log")
}

/// The journal files of the store in `data_dir`, oldest first, with their
/// paths: in `journal/`, and those archived (see `archive`). A file found
/// in both (a move a crash interrupted) is read from `journal/`.
pub(super) fn files(fs: &dyn Fs, data_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = std::collections::BTreeMap::new();
    let archived = super::archive::journal_dir(data_dir);
    if fs.exists(&archived).map_err(|e| io_error(&archived, e))? {
        for epoch in epochs(fs, &archived)? {
            out.insert(epoch, archived.join(file_name(epoch)));
        }
    }
    let dir = data_dir.join(DIR);
    for epoch in epochs(fs, &dir)? {
        out.insert(epoch, dir.join(file_name(epoch)));
    }
    Ok(out.into_iter().collect())
}

/// The log files in `dir`, oldest first.
pub(super) fn epochs(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for name in fs.list_dir(dir).map_err(|e| io_error(dir, e))? {
        if let Some(epoch) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            out.push(epoch);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Store(StoreError::Io {
        what: format!("store log {}", path.display()),
        source: e,
    })
}

fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<()> {
    durable::sync_dir(fs, dir).map_err(|e| io_error(dir, e))
}

/// A place in the journal: a file and a byte offset in it. The index
/// (sled) notes the position its state reflects at every checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    pub epoch: u64,
    pub offset: u64,
}

impl Position {
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.epoch.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Position> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(Position {
            epoch: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// What a walk over the journal found.
#[derive(Debug)]
pub(super) struct Replay {
    /// Records passed to `apply`.
    pub records: usize,
    /// The newest journal file, if any.
    pub last_epoch: Option<u64>,
    /// An incomplete record at the end of the newest file (a write a
    /// crash cut short, never acknowledged).
    pub torn: Option<TornTail>,
}

/// Where the journal ends in an incomplete record.
#[derive(Debug)]
pub(super) struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
}

/// Walks the journal in `data_dir` from `from` (every file when `None`),
/// passing each whole record to `apply`. Reads only: never writes, cuts
/// or creates a file, so it also serves a verifier on a full or read-only
/// disk. An incomplete record ends the walk: in the newest file it is
/// reported as a torn tail; in an older one it is a gap, an error that
/// names the file and offset.
pub(super) fn replay(
    fs: &dyn Fs,
    data_dir: &Path,
    apply: &mut dyn FnMut(&[Op], Position) -> Result<()>,
    complete: &dyn Fn(&[Op]) -> Result<bool>,
    from: Option<Position>,
) -> Result<Replay> {
    let found = files(fs, data_dir)?;
    let mut out = Replay {
        records: 0,
        last_epoch: found.last().map(|(epoch, _)| *epoch),
        torn: None,
    };
    for (i, (epoch, path)) in found.iter().enumerate() {
        let epoch = *epoch;
        let start = match from {
            Some(p) if epoch < p.epoch => continue,
            Some(p) if epoch == p.epoch => p.offset as usize,
            _ => 0,
        };
        let path = path.clone();
        let data = fs.read(&path).map_err(|e| io_error(&path, e))?;
        let Some(mut rest) = data.get(start..) else {
            return Err(Error::corrupt(
                "journal",
                format!(
                    "{} is {} bytes long, but the index was made durable at byte {start} \
                     of it: the journal lost synced data",
                    path.display(),
                    data.len()
                ),
            ));
        };
        while !rest.is_empty() {
            let Some(ops) = next_record(rest, complete)? else {
                break;
            };
            let at = Position {
                epoch,
                offset: (data.len() - rest.len()) as u64,
            };
            apply(&ops.1, at)?;
            out.records += 1;
            rest = &rest[ops.0..];
        }
        if rest.is_empty() {
            continue;
        }
        let offset = data.len() - rest.len();
        if i + 1 < found.len() {
            return Err(Error::corrupt(
                "journal",
                format!(
                    "{} has an incomplete record at byte {offset}, but a newer journal file \
                     follows: acknowledged changes may be lost",
                    path.display()
                ),
            ));
        }
        out.torn = Some(TornTail {
            path,
            offset: offset as u64,
        });
    }
    Ok(out)
}

/// An edit of one journaled write: tree index, key, value.
pub(super) type Edit<'a> = dyn FnMut(usize, &[u8], &mut Option<Vec<u8>>) + 'a;

/// Rewrites every record of the journal in `data_dir` through `edit`
/// (tree index, key, value), recomputing lengths and CRCs. For drills
/// and tests of what `audit verify` catches when an operator rewrites
/// history; never called by a node. Returns the records written.
pub(super) fn rewrite(data_dir: &Path, edit: &mut Edit<'_>) -> Result<usize> {
    let fs = super::fs::RealFs;
    let mut records = 0;
    for (_, path) in files(&fs, data_dir)? {
        let data = fs.read(&path).map_err(|e| io_error(&path, e))?;
        let mut rest = data.as_slice();
        let mut out = Vec::with_capacity(data.len());
        while let Some((len, mut ops)) = next_record(rest, &|_| Ok(true))? {
            for op in &mut ops {
                edit(op.tree as usize, &op.key, &mut op.value);
            }
            out.extend_from_slice(&encode(&ops));
            rest = &rest[len..];
            records += 1;
        }
        std::fs::write(&path, out).map_err(|e| io_error(&path, e))?;
    }
    Ok(records)
}

impl Wal {
    /// Replays the journal in `data_dir` (on `fs`) through `apply` from
    /// `from` (the position the index last made durable; `None` replays
    /// every file: a new or rebuilt index), and opens a fresh file.
    /// Returns the journal and how many records were replayed. No file is
    /// ever deleted: the journal is the store's truth and its evidence.
    ///
    /// The newest file may end in a record a crash cut short (or whose
    /// envelope `complete` finds incomplete): it was never acknowledged,
    /// and replay ends there. The same in an older file means the disk
    /// lost acknowledged data (files are synced before the next one
    /// starts): the open fails, naming the file and offset.
    pub fn recover(
        fs: Arc<dyn Fs>,
        data_dir: &Path,
        apply: &mut dyn FnMut(&[Op], Position) -> Result<()>,
        complete: &dyn Fn(&[Op]) -> Result<bool>,
        from: Option<Position>,
    ) -> Result<(Wal, usize)> {
        let dir = data_dir.join(DIR);
        durable::create_dir_durably(&*fs, &dir).map_err(|e| io_error(&dir, e))?;
        let replay = replay(&*fs, data_dir, apply, complete, from)?;
        if let Some(torn) = &replay.torn {
            tracing::warn!(
                file = %torn.path.display(),
                offset = torn.offset,
                "the journal ends in an incomplete record (a write cut short by a crash, never acknowledged); dropping it"
            );
            // Cut it off now: should this open crash after starting the
            // next file, the next open must not take it for a gap.
            // `sync_data` makes the new length durable: fdatasync(2)
            // flushes the size when reading the data depends on it.
            fs.open_write(&torn.path)
                .and_then(|f| {
                    f.set_len(torn.offset)?;
                    f.sync_data()
                })
                .map_err(|e| io_error(&torn.path, e))?;
        }
        let epoch = replay.last_epoch.map_or(1, |e| e + 1);
        let wal = Wal::create(fs, dir, epoch)?;
        Ok((wal, replay.records))
    }

    /// A journal in memory that nothing appends to, for a store opened
    /// read-only (which runs no writer).
    pub fn detached() -> Result<Wal> {
        let fs: Arc<dyn Fs> = Arc::new(super::fs::SimFs::new());
        let dir = PathBuf::from("/read-only");
        fs.create_dir(&dir).map_err(|e| io_error(&dir, e))?;
        Wal::create(fs, dir, 1)
    }

    /// Where the next record will be written.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.bytes,
        }
    }

    fn create(fs: Arc<dyn Fs>, dir: PathBuf, epoch: u64) -> Result<Wal> {
        let path = dir.join(file_name(epoch));
        let file = fs
            .open_append(&path)
            .and_then(Buffered::new)
            .map_err(|e| io_error(&path, e))?;
        sync_dir(&*fs, &dir)?;
        Ok(Wal {
            fs,
            dir,
            epoch,
            file,
            bytes: 0,
        })
    }

    /// Appends one state change's writes as one record; the records of a
    /// group reach the file together, at its sync (see `fs::Buffered`).
    /// If that write fails part-way (a full disk), the file is cut back to
    /// its last whole record: replay stops at a torn record, and must not
    /// lose the records written after it.
    pub fn append(&mut self, ops: &[Op]) -> Result<()> {
        let record = encode(ops);
        if let Err(e) = self.file.append(&record) {
            return Err(io_error(&self.dir.join(file_name(self.epoch)), e));
        }
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// The current file, to `sync` without holding the log.
    pub fn file(&self) -> Arc<dyn FsFile> {
        Arc::clone(&self.file)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Starts a new file (files stay small enough to read, copy and
    /// archive one by one); returns its epoch.
    pub fn rotate(&mut self) -> Result<u64> {
        // Records appended since the last group commit (by a transaction
        // off the writer thread) are made durable here, not by a later
        // group commit, which syncs only the new file. The caller latches
        // the store if this fails.
        self.file
            .sync_data()
            .map_err(|e| io_error(&self.dir.join(file_name(self.epoch)), e))?;
        super::crash_points::cross(super::crash_points::Point::DuringRotation);
        let next = Wal::create(Arc::clone(&self.fs), self.dir.clone(), self.epoch + 1)?;
        *self = next;
        Ok(self.epoch)
    }
}

/// Makes everything written to `file` durable.
pub(super) fn sync(file: &dyn FsFile) -> std::result::Result<(), String> {
    file.sync_data().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::RealFs;

    fn real() -> Arc<dyn Fs> {
        Arc::new(RealFs)
    }

    /// Replays the journal in `dir` over `trees` from `from`.
    fn recover(dir: &Path, trees: &[Tree], from: Option<Position>) -> Result<(Wal, usize)> {
        Wal::recover(
            real(),
            dir,
            &mut |ops, _| apply(trees, ops),
            &|_| Ok(true),
            from,
        )
    }

    fn ops() -> Vec<Op> {
        vec![
            Op {
                tree: 0,
                key: b"a".to_vec(),
                value: Some(b"one".to_vec()),
            },
            Op {
                tree: 1,
                key: b"b".to_vec(),
                value: None,
            },
            Op {
                tree: 0,
                key: b"a".to_vec(),
                value: Some(b"two".to_vec()),
            },
        ]
    }

    fn open(dir: &Path) -> (sled::Db, Vec<Tree>) {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
            .expect("open");
        let trees = ["x", "y"]
            .iter()
            .map(|n| db.open_tree(n).expect("tree"))
            .collect();
        (db, crate::store::live::all_sled(trees))
    }

    #[test]
    fn replay_restores_the_writes_and_ignores_a_torn_tail() {
        let tmp = tempfile::tempdir().expect("tmp");
        {
            let (db, trees) = open(tmp.path());
            trees[1].insert(b"b", b"old").expect("insert");
            db.flush().expect("flush");
            let (mut wal, _) = recover(tmp.path(), &trees, None).expect("wal");
            // The writes reach the log but not sled (the process dies
            // before sled wrote them out).
            wal.append(&ops()).expect("append");
            // A record cut short: only part of it reached the file.
            let torn = encode(&[Op {
                tree: 1,
                key: b"c".to_vec(),
                value: Some(b"lost".to_vec()),
            }]);
            wal.file().append(&torn[..torn.len() - 2]).expect("write");
        }
        let (_db, trees) = open(tmp.path());
        let (wal, replayed) = recover(tmp.path(), &trees, None).expect("recover");
        assert_eq!(replayed, 1);
        assert_eq!(
            trees[0].get(b"a").expect("get").as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(trees[1].get(b"b").expect("get"), None);
        assert_eq!(trees[1].get(b"c").expect("get"), None);
        // Nothing is deleted: the replayed file stays beside the new one.
        let files = epochs(&RealFs, &tmp.path().join(DIR)).expect("list");
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files.last(), Some(&wal.epoch));
    }

    #[test]
    fn a_zero_filled_tail_ends_the_replay_and_a_gap_in_an_older_file_fails_the_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (_db, trees) = open(tmp.path());
        let (mut wal, _) = recover(tmp.path(), &trees, None).expect("wal");
        wal.append(&ops()).expect("append");
        // Power loss can leave zeros where the last pages were.
        wal.file().append(&[0; 64]).expect("zeros");
        wal.append(&ops()[..1]).expect("a record after the zeros");
        sync(&*wal.file()).expect("written out");
        let first = wal.epoch;
        let path = tmp.path().join(DIR).join(file_name(first));
        let kept = std::fs::read(&path).expect("read");
        drop(wal);
        let (wal, replayed) = recover(tmp.path(), &trees, None).expect("recover");
        assert_eq!(replayed, 1, "replay ends at the zeros");
        // The same file again, now followed by a newer one: acknowledged
        // records may sit behind the gap, so the open fails and keeps both.
        std::fs::write(&path, &kept).expect("restore the older file");
        let err = recover(tmp.path(), &trees, None).expect_err("gap");
        assert!(
            err.to_string().contains("newer journal file follows"),
            "{err}"
        );
        assert!(path.exists());
        assert!(tmp.path().join(DIR).join(file_name(wal.epoch)).exists());
    }

    #[test]
    fn replay_starts_at_the_indexed_position_and_keeps_every_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (_db, trees) = open(tmp.path());
        let (mut wal, _) = recover(tmp.path(), &trees, None).expect("wal");
        wal.append(&ops()).expect("append");
        // The index holds everything up to here.
        let indexed = wal.position();
        wal.append(&[Op {
            tree: 1,
            key: b"late".to_vec(),
            value: Some(b"x".to_vec()),
        }])
        .expect("append");
        drop(wal);
        for kv in trees[0].iter() {
            trees[0].remove(kv.expect("kv").0).expect("clear");
        }
        let (_, n) = recover(tmp.path(), &trees, Some(indexed)).expect("recover");
        assert_eq!(n, 1, "only the record after the position");
        assert_eq!(
            trees[0].get(b"a").expect("get"),
            None,
            "before the position: not replayed"
        );
        assert!(trees[1].get(b"late").expect("get").is_some());
        // A rebuilt index replays every file.
        let (_, n) = recover(tmp.path(), &trees, None).expect("recover");
        assert_eq!(n, 2);
        assert_eq!(
            trees[0].get(b"a").expect("get").as_deref(),
            Some(&b"two"[..])
        );
        // A position past the end of its file: the journal lost synced data.
        let beyond = Position {
            epoch: indexed.epoch,
            offset: 1 << 20,
        };
        let err =
            recover(tmp.path(), &trees, Some(beyond)).expect_err("journal shorter than the index");
        assert!(
            err.to_string().contains("the journal lost synced data"),
            "{err}"
        );
    }

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let record = encode(&ops());
        let payload = &record[8..];
        let unpacked = unpack(payload).expect("unpack");
        assert_eq!(decode(&unpacked).expect("decode").len(), 3);
        let crc = u32::from_le_bytes(record[4..8].try_into().expect("crc"));
        let mut flipped = payload.to_vec();
        flipped[3] ^= 1;
        assert_ne!(crc32fast::hash(&flipped), crc);
    }

    /// A record is stored compressed: writes that repeat one message's key
    /// take little more room than one of them, and a stored length that no
    /// record can have is refused before anything is allocated for it.
    #[test]
    fn a_record_is_stored_compressed_and_a_wild_length_is_refused() {
        let key = b"discipline\x00b9d6bcd-bbfd-4b2d-9da7-ab8e2e6c1f0c".to_vec();
        let writes: Vec<Op> = (0..8u8)
            .map(|tree| Op {
                tree,
                key: key.clone(),
                value: Some(vec![tree; 24]),
            })
            .collect();
        let raw: usize = writes.iter().map(|w| 10 + w.key.len() + 24).sum();
        let record = encode(&writes);
        assert!(record.len() < raw / 2, "{} of {raw} bytes", record.len());
        let unpacked = unpack(&record[8..]).expect("unpack");
        let back = decode(&unpacked).expect("decode");
        assert_eq!(back.len(), 8);
        assert!(back.iter().all(|w| w.key == key));
        let spans = value_spans(&writes);
        let (start, len) = spans[5].expect("a value");
        assert_eq!(&unpacked[start as usize..][..len as usize], &[5u8; 24]);

        let mut wild = record[8..].to_vec();
        wild[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unpack(&wild), None);
    }
}
