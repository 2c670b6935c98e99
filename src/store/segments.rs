//! Envelope bytes, written once into append-only segment files.
//!
//! An envelope never changes and is kept as evidence, so it does not
//! belong in a B-tree that copies and rewrites its pages: sled would write
//! each 1 KiB envelope several times over (measured: a nine-key state
//! change costs 51 µs with a 1.3 KiB value, 32 µs with a small one). The
//! `envelopes` tree holds a [`LOCATOR_LEN`]-byte locator instead: segment
//! number, offset and length.
//!
//! Each record is its length, its CRC-32 and the bytes. A segment is
//! written before the log record that references it, and synced before
//! the log at every group commit and before every checkpoint, so a
//! locator in a durable log record, or in sled after a checkpoint, names
//! bytes on disk. Replay checks that each locator names a whole record
//! before applying it.
//!
//! Files are `envelopes/<number>.seg`; a new one starts at every open and
//! past [`SEGMENT_BYTES`]. Nothing is ever deleted from them.

use super::StoreError;
use super::durable;
use super::fs::{Buffered, Fs, FsFile};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The segment directory inside a store's data directory.
pub const DIR: &str = "envelopes";

/// Size past which appends go to a new segment file.
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Tag, segment, offset, length.
pub const LOCATOR_LEN: usize = 21;
const LOCATOR_TAG: u8 = 1;

/// Where one envelope's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locator {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

impl Locator {
    pub fn encode(&self) -> [u8; LOCATOR_LEN] {
        let mut out = [0; LOCATOR_LEN];
        out[0] = LOCATOR_TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The locator a stored `envelopes` value holds, or `None` if the
    /// value is the envelope itself (stores written before segments; a
    /// signed envelope is always longer than a locator).
    pub fn decode(value: &[u8]) -> Option<Locator> {
        if value.len() != LOCATOR_LEN || value[0] != LOCATOR_TAG {
            return None;
        }
        Some(Locator {
            segment: u64::from_be_bytes(value[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(value[9..17].try_into().ok()?),
            len: u32::from_be_bytes(value[17..21].try_into().ok()?),
        })
    }
}

#[derive(Debug)]
struct Active {
    number: u64,
    file: Arc<dyn FsFile>,
    len: u64,
}

/// The open segment files.
#[derive(Debug)]
pub(super) struct Segments {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// The file envelopes are appended to; none when opened read-only.
    active: Mutex<Option<Active>>,
    /// Read handles by segment number.
    files: Mutex<HashMap<u64, Arc<dyn FsFile>>>,
    /// Whether anything was appended since the last `sync`.
    dirty: AtomicBool,
    /// Held across a sync, so that a caller never returns while another
    /// caller's fsync (which took its `dirty` flag) is still running.
    syncing: Mutex<()>,
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Store(StoreError::Io {
        what: format!("envelope segment {}", path.display()),
        source: e,
    })
}

fn file_name(number: u64) -> String {
    format!("{number:020}.seg")
}

/// The number of a segment file named `name`, if it is one.
pub(super) fn number_of(name: &str) -> Option<u64> {
    name.strip_suffix(".seg").and_then(|n| n.parse().ok())
}

impl Segments {
    /// Opens the segments in `data_dir` on `fs`, and starts a new file.
    pub fn open(fs: Arc<dyn Fs>, data_dir: &Path) -> Result<Segments> {
        let dir = data_dir.join(DIR);
        durable::create_dir_durably(&*fs, &dir).map_err(|e| io_error(&dir, e))?;
        let mut last = 0;
        for name in fs.list_dir(&dir).map_err(|e| io_error(&dir, e))? {
            if let Some(n) = number_of(&name) {
                last = last.max(n);
            }
        }
        // Each start appends to a new file: a locator that survived in sled
        // from before a power loss can never name bytes written after it.
        let active = Self::open_file(&*fs, &dir, last + 1)?;
        Ok(Segments {
            fs,
            dir,
            active: Mutex::new(Some(active)),
            files: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            syncing: Mutex::new(()),
        })
    }

    fn open_file(fs: &dyn Fs, dir: &Path, number: u64) -> Result<Active> {
        let path = dir.join(file_name(number));
        let file = fs
            .open_append(&path)
            .and_then(Buffered::new)
            .map_err(|e| io_error(&path, e))?;
        let len = file.len().map_err(|e| io_error(&path, e))?;
        durable::sync_dir(fs, dir).map_err(|e| io_error(dir, e))?;
        Ok(Active { number, file, len })
    }

    /// Opens the segments in `data_dir` for reading only: no file is
    /// created, and an append is refused.
    pub fn open_read_only(fs: Arc<dyn Fs>, data_dir: &Path) -> Segments {
        Segments {
            fs,
            dir: data_dir.join(DIR),
            active: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            syncing: Mutex::new(()),
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one envelope; its bytes reach the file by the next
    /// [`Segments::sync`] (see `fs::Buffered`), and the disk with it.
    pub fn append(&self, bytes: &[u8]) -> Result<Locator> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::invalid("an envelope of 4 GiB or more cannot be stored"))?;
        let mut guard = self.lock_active();
        let Some(active) = guard.as_mut() else {
            return Err(Error::FailedPrecondition(
                "the envelope segments are open read-only".into(),
            ));
        };
        if active.len >= SEGMENT_BYTES {
            // The full file is synced now, so `sync` only ever needs the
            // active one.
            active
                .file
                .sync_data()
                .map_err(|e| io_error(&self.dir.join(file_name(active.number)), e))?;
            let next = Self::open_file(&*self.fs, &self.dir, active.number + 1)?;
            *active = next;
        }
        let mut record = Vec::with_capacity(8 + bytes.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        record.extend_from_slice(bytes);
        let locator = Locator {
            segment: active.number,
            offset: active.len,
            len,
        };
        // A failed write cuts the file back itself (see `fs::Buffered`).
        if let Err(e) = active.file.append(&record) {
            return Err(io_error(&self.dir.join(file_name(active.number)), e));
        }
        active.len += record.len() as u64;
        self.dirty.store(true, Ordering::Release);
        Ok(locator)
    }

    /// The active segment's number and length: grows with every append.
    pub fn end(&self) -> (u64, u64) {
        self.lock_active()
            .as_ref()
            .map_or((0, 0), |active| (active.number, active.len))
    }

    /// Makes every envelope appended so far durable.
    pub fn sync(&self) -> std::result::Result<(), String> {
        let _syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(file) = self.lock_active().as_ref().map(|a| Arc::clone(&a.file)) else {
            return Ok(());
        };
        file.sync_data().map_err(|e| {
            self.dirty.store(true, Ordering::Release);
            format!("syncing envelope segments: {e}")
        })
    }

    fn file(&self, number: u64) -> std::io::Result<Arc<dyn FsFile>> {
        // The active file is read through its buffer (see `fs::Buffered`).
        if let Some(active) = self.lock_active().as_ref().filter(|a| a.number == number) {
            return Ok(Arc::clone(&active.file));
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&number) {
            return Ok(Arc::clone(f));
        }
        let name = file_name(number);
        let file = match self.fs.open_read(&self.dir.join(&name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let archived = self.dir.parent().map(super::archive::segments_dir);
                match archived {
                    Some(dir) => self.fs.open_read(&dir.join(&name))?,
                    None => return Err(e),
                }
            }
            other => other?,
        };
        files.insert(number, Arc::clone(&file));
        Ok(file)
    }

    /// The number of the segment appends go to (none when read-only).
    pub fn active_number(&self) -> Option<u64> {
        self.lock_active().as_ref().map(|a| a.number)
    }

    /// The bytes of the record `at` names, or `None` if there is no whole
    /// record there: the file is missing or too short, or the length or
    /// checksum differs (a write a crash cut short, or damage).
    fn record_at(&self, at: &Locator) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::ErrorKind::{NotFound, UnexpectedEof};
        let file = match self.file(at.segment) {
            Ok(f) => f,
            Err(e) if e.kind() == NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut record = vec![0; 8 + at.len as usize];
        match file.read_exact_at(&mut record, at.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(record[..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(record[4..8].try_into().unwrap_or_default());
        let bytes = record.split_off(8);
        Ok((len == at.len && crc32fast::hash(&bytes) == crc).then_some(bytes))
    }

    /// The envelope at `at`, checked against its CRC.
    pub fn read(&self, at: &Locator) -> Result<Vec<u8>> {
        match self.record_at(at) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Error::corrupt(
                "envelopes",
                format!(
                    "segment {} has no whole record of {} bytes at {} matching its locator and checksum",
                    at.segment, at.len, at.offset
                ),
            )),
            Err(e) => Err(Error::corrupt(
                "envelopes",
                format!("segment {} cannot be read: {e}", at.segment),
            )),
        }
    }

    /// Whether `at` names a whole record (see `record_at`); an error if
    /// the segment cannot be read at all.
    pub fn holds(&self, at: &Locator) -> Result<bool> {
        self.record_at(at)
            .map(|r| r.is_some())
            .map_err(|e| io_error(&self.dir.join(file_name(at.segment)), e))
    }

    /// The bytes a stored `envelopes` value (a locator) stands for.
    pub fn resolve(&self, value: &[u8]) -> Result<Vec<u8>> {
        match Locator::decode(value) {
            Some(at) => self.read(&at),
            None => Err(Error::corrupt(
                "envelopes",
                format!("a {}-byte value is not an envelope locator", value.len()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::RealFs;

    fn open(dir: &Path) -> Result<Segments> {
        Segments::open(Arc::new(RealFs), dir)
    }

    #[test]
    fn appended_envelopes_read_back_after_reopening_and_damage_is_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = {
            let s = open(tmp.path()).expect("open");
            let a = s.append(b"first envelope").expect("append");
            let b = s.append(&[7; 3000]).expect("append");
            s.sync().expect("sync");
            (a, b)
        };
        assert_eq!(Locator::decode(&b.encode()), Some(b));
        let s = open(tmp.path()).expect("reopen");
        assert_eq!(s.read(&a).expect("read"), b"first envelope");
        assert_eq!(s.resolve(&b.encode()).expect("read"), vec![7; 3000]);
        assert!(s.holds(&b).expect("holds"));
        // A new start appends to a new file.
        let c = s.append(b"after reopening").expect("append");
        assert_eq!((c.segment, c.offset), (a.segment + 1, 0));
        let cut = Locator {
            len: b.len + 1,
            ..b
        };
        assert!(!s.holds(&cut).expect("past the end"));
        assert!(
            !s.holds(&Locator { segment: 99, ..a })
                .expect("no such file")
        );
        // A value that is not a locator is damage, named as such.
        let e = s.resolve(b"not a locator").expect_err("not a locator");
        assert!(e.to_string().contains("is not an envelope locator"), "{e}");
        // A flipped byte on disk is found, not returned.
        let path = tmp.path().join(DIR).join(file_name(a.segment));
        let mut raw = std::fs::read(&path).expect("read file");
        raw[10] ^= 1;
        std::fs::write(&path, raw).expect("write file");
        let fresh = open(tmp.path()).expect("reopen");
        let err = fresh.read(&a).expect_err("damaged");
        assert!(err.to_string().contains("checksum"), "{err}");
        let past_end = Locator {
            offset: 1 << 40,
            ..a
        };
        assert!(fresh.read(&past_end).is_err());
    }
}
