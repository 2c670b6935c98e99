//! Evidence is kept once, in the journal. The audit entries and the
//! receipts are written as values of the journal record of the change
//! that made them; the index (sled) holds only where they lie — a
//! [`JournalLocator`] — and reads them back from the journal. So the
//! journal is the hash-chained audit log, with no second copy in the
//! index, and a rebuilt index points at the same bytes.

use super::feed::FeedSlot;
use super::fs::{Fs, FsFile};
use super::receipts::{self, Prior};
use super::wal::{self, Op, Position};
use super::{AUDIT, ENVELOPES, FEED, RECEIPT_OUTBOX, RECEIPTS, StoreError};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The trees whose values live in the journal.
const TREES: [usize; 3] = [AUDIT, RECEIPTS, RECEIPT_OUTBOX];

/// Journal files kept open for reading; more are closed and reopened.
const OPEN_FILES: usize = 64;

/// Where a value lies in the journal: the record (file and offset of
/// its header) and the value's span inside the record's payload. The
/// record's CRC is checked at every read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct JournalLocator {
    pub record: Position,
    pub start: u32,
    pub len: u32,
}

impl JournalLocator {
    pub const SIZE: usize = 24;

    pub fn encode(self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        out[..16].copy_from_slice(&self.record.encode());
        out[16..20].copy_from_slice(&self.start.to_be_bytes());
        out[20..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<JournalLocator> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        Some(JournalLocator {
            record: Position::decode(&bytes[..16])?,
            start: u32::from_be_bytes(bytes[16..20].try_into().ok()?),
            len: u32::from_be_bytes(bytes[20..].try_into().ok()?),
        })
    }
}

/// The writes of the record written at `at`, as the index holds them:
/// values of the evidence trees replaced by their locators, no
/// `envelopes` write (the journal's note of where an envelope lies; the
/// message's record holds it), and receipts noted in their messages'
/// records, after the receipts `prior` says each record lists already
/// (see `receipts::fold`).
pub(super) fn index_form(ops: &[Op], at: Position, prior: Prior) -> Result<Vec<Op>> {
    receipts::fold(located(ops, at), prior)
}

/// The evidence of `ops` as locators into the record at `at`, feed
/// entries as slots naming theirs (an entry whose evidence is not in its
/// record cannot be read and is left out), envelope notes left out.
fn located(ops: &[Op], at: Position) -> Vec<Op> {
    let spans = wal::value_spans(ops);
    ops.iter()
        .zip(&spans)
        .filter_map(|(op, span)| {
            let tree = op.tree as usize;
            let value = match (&op.value, span) {
                _ if tree == ENVELOPES => return None,
                (Some(entry), _) if tree == FEED => Some(
                    FeedSlot::of_entry(entry, ops, &spans, at)?
                        .encode()
                        .to_vec(),
                ),
                (Some(_), Some((start, len))) if TREES.contains(&tree) => Some(
                    JournalLocator {
                        record: at,
                        start: *start,
                        len: *len,
                    }
                    .encode()
                    .to_vec(),
                ),
                (value, _) => value.clone(),
            };
            Some(Op {
                tree: op.tree,
                key: op.key.clone(),
                value,
            })
        })
        .collect()
}

/// [`index_form`] in a replay into `trees`: the receipts each record
/// lists already are those the trees being rebuilt hold.
pub(super) fn replayed(trees: &[super::live::Tree], ops: &[Op], at: Position) -> Result<Vec<Op>> {
    index_form(ops, at, &mut |tree, key| {
        receipts::listed_in(trees, tree, key)
    })
}

/// Applies the record written at `at` to the index, evidence as locators.
pub(super) fn apply(trees: &[super::live::Tree], ops: &[Op], at: Position) -> Result<()> {
    wal::apply(trees, &replayed(trees, ops, at)?)
}

/// Reads evidence back from the journal files of one store.
#[derive(Debug)]
pub(super) struct JournalReader {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<dyn FsFile>>>,
    /// The file records are appended to, read through its buffer (see
    /// `fs::Buffered`).
    appending: Mutex<Option<(u64, Arc<dyn FsFile>)>>,
}

impl JournalReader {
    pub fn new(fs: Arc<dyn Fs>, data_dir: &Path) -> JournalReader {
        JournalReader {
            fs,
            dir: data_dir.join(wal::DIR),
            open: Mutex::default(),
            appending: Mutex::default(),
        }
    }

    /// Reads the records of `wal`'s current file through its handle, so
    /// that a record appended but not yet written out reads back too.
    pub fn appending_to(&self, wal: &super::wal::Wal) {
        let current = (wal.position().epoch, wal.file());
        *self.appending.lock().unwrap_or_else(|e| e.into_inner()) = Some(current);
    }

    /// The bytes an evidence tree's value stands for.
    pub fn resolve(&self, tree: &str, value: &[u8]) -> Result<Vec<u8>> {
        let at = JournalLocator::decode(value).ok_or_else(|| {
            Error::corrupt(
                tree,
                format!("a {}-byte value is not a journal locator", value.len()),
            )
        })?;
        let path = self.dir.join(wal::file_name(at.record.epoch));
        let payload = self
            .record(&path, at.record)
            .map_err(|source| {
                Error::Store(StoreError::Io {
                    what: format!(
                        "cannot read the journal record at byte {} of {}",
                        at.record.offset,
                        path.display()
                    ),
                    source,
                })
            })?
            .ok_or_else(|| {
                Error::corrupt(
                    "journal",
                    format!(
                        "the record at byte {} of {} that the index names is damaged",
                        at.record.offset,
                        path.display()
                    ),
                )
            })?;
        let (start, end) = (at.start as usize, at.start as usize + at.len as usize);
        payload.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::corrupt(
                tree,
                format!(
                    "a locator points past the end of the record at byte {} of {}",
                    at.record.offset,
                    path.display()
                ),
            )
        })
    }

    /// The payload of the record at `at`, if its CRC holds.
    fn record(&self, path: &Path, at: Position) -> std::io::Result<Option<Vec<u8>>> {
        let file = self.file(path, at.epoch)?;
        let mut header = [0; 8];
        file.read_exact_at(&mut header, at.offset)?;
        let Some(len) = wal::payload_len(&header) else {
            return Ok(None);
        };
        let mut payload = vec![0; len];
        file.read_exact_at(&mut payload, at.offset + 8)?;
        Ok(wal::crc_holds(&header, &payload)
            .then(|| wal::unpack(&payload))
            .flatten())
    }

    fn file(&self, path: &Path, epoch: u64) -> std::io::Result<Arc<dyn FsFile>> {
        let appending = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, file)) = appending.as_ref().filter(|(e, _)| *e == epoch) {
            return Ok(Arc::clone(file));
        }
        drop(appending);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&epoch) {
            return Ok(Arc::clone(f));
        }
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        let f = match self.fs.open_read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = wal::file_name(epoch);
                let archived = self.dir.parent().map(super::archive::journal_dir);
                match archived {
                    Some(dir) => self.fs.open_read(&dir.join(name))?,
                    None => return Err(e),
                }
            }
            other => other?,
        };
        open.insert(epoch, Arc::clone(&f));
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::RealFs;
    use crate::store::wal::Wal;

    fn op(tree: usize, key: &[u8], value: Option<&[u8]>) -> Op {
        Op {
            tree: tree as u8,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// Evidence values become locators that read back the very bytes
    /// the journal holds; other writes pass unchanged; a damaged record
    /// is refused, naming the file and offset, never read as evidence.
    #[test]
    fn locators_read_back_the_journaled_bytes_and_a_damaged_record_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let (mut wal, _) = Wal::recover(
            Arc::clone(&fs),
            tmp.path(),
            &mut |_, _| Ok(()),
            &|_| Ok(true),
            None,
        )
        .expect("journal");
        wal.append(&[op(super::super::SENT, b"k0", Some(b"first"))])
            .expect("append");
        let ops = vec![
            op(
                AUDIT,
                &7u64.to_be_bytes(),
                Some(b"entry seven and its hash"),
            ),
            op(super::super::SENT, b"k1", Some(b"a state record")),
            op(RECEIPT_OUTBOX, b"peer\0x", None),
            op(RECEIPTS, b"k1\0digest", Some(&[9; 300])),
        ];
        let at = wal.position();
        wal.append(&ops).expect("append");
        let indexed = index_form(&ops, at, &mut |_, _| Ok(Vec::new())).expect("index form");
        // Read back before the sync writes them out: through the buffer.
        let reader = JournalReader::new(Arc::clone(&fs), tmp.path());
        reader.appending_to(&wal);

        assert_eq!(
            indexed[1].value, ops[1].value,
            "state records stay in the index"
        );
        assert_eq!(indexed[2].value, None, "a removal stays one");
        for i in [0, 3] {
            let value = indexed[i].value.as_deref().expect("locator");
            assert_eq!(value.len(), 24);
            assert_eq!(
                Some(reader.resolve("audit", value).expect("resolve")),
                ops[i].value
            );
        }

        let path = tmp.path().join(wal::DIR).join(wal::file_name(at.epoch));
        let mut bytes = std::fs::read(&path).expect("read");
        let flip = at.offset as usize + 20;
        bytes[flip] ^= 1;
        std::fs::write(&path, bytes).expect("damage");
        let fresh = JournalReader::new(fs, tmp.path());
        let err = fresh
            .resolve("receipts", indexed[3].value.as_deref().expect("locator"))
            .expect_err("a damaged record");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(&at.offset.to_string()),
            "{text}"
        );
        assert!(fresh.resolve("audit", b"short").is_err(), "not a locator");
    }
}
