//! Snapshots of the live state (see `live`), so that an open need not
//! replay the whole journal: each holds the live maps and the queue
//! counters as they were at one journal position, and an open loads the
//! newest valid one and replays the journal after it.
//!
//! A snapshot is written to a temporary name, fsynced, renamed to
//! `snapshots/<epoch>-<offset>.snap` and its directory fsynced; only then
//! are older snapshots removed (the one before it is kept as a fallback).
//! A snapshot that is torn or fails its CRC is skipped for an older one,
//! or for a replay of the whole journal: it is never trusted, and never
//! the only copy of anything (the journal is kept whole).
//!
//! Layout: `MAGIC`, the journal position (16 bytes), the counters
//! (length-prefixed postcard), then for each live tree its number, its
//! entry count and its entries (length-prefixed key and value), then the
//! CRC-32 of everything before it.

use super::StoreError;
use super::counters::Counters;
use super::durable;
use super::fs::{Fs, FsFile};
use super::live::{LIVE, Maps};
use super::wal::Position;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The snapshots' directory inside a store's data directory.
pub const DIR: &str = "snapshots";

const MAGIC: &[u8; 8] = b"CBSNAP01";

/// Bytes buffered before each append to the file, and read at a time.
const CHUNK: usize = 1 << 20;

/// A key or value longer than this is not one a snapshot wrote.
const MAX_ITEM: usize = 16 << 20;

/// A snapshot read back.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub position: Position,
    pub counters: Counters,
    pub maps: Maps,
}

fn io_error(what: String, source: std::io::Error) -> Error {
    Error::Store(StoreError::Io { what, source })
}

fn name(at: Position) -> String {
    format!("{:020}-{:020}.snap", at.epoch, at.offset)
}

fn parse_name(name: &str) -> Option<Position> {
    let (epoch, offset) = name.strip_suffix(".snap")?.split_once('-')?;
    Some(Position {
        epoch: epoch.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// The snapshots in `data_dir`, newest first.
fn list(fs: &dyn Fs, data_dir: &Path) -> Result<Vec<(Position, PathBuf)>> {
    let dir = data_dir.join(DIR);
    if !fs
        .exists(&dir)
        .map_err(|e| io_error(format!("{}", dir.display()), e))?
    {
        return Ok(Vec::new());
    }
    let mut out: Vec<(Position, PathBuf)> = fs
        .list_dir(&dir)
        .map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?
        .into_iter()
        .filter_map(|n| parse_name(&n).map(|at| (at, dir.join(n))))
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Writes through the store's file layer in chunks, keeping the CRC.
struct Writer {
    file: Arc<dyn FsFile>,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.file.append(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.put(&(bytes.len() as u32).to_le_bytes())?;
        self.put(bytes)
    }

    fn finish(mut self) -> std::io::Result<Arc<dyn FsFile>> {
        let crc = self.crc.clone().finalize();
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.file.append(&self.buf)?;
        Ok(self.file)
    }
}

/// Writes the live state at `at` to a temporary file and returns it,
/// not yet synced: [`publish`] makes it durable and visible. Runs while
/// the live state cannot change (under the journal's lock).
pub(super) fn write(
    fs: &dyn Fs,
    data_dir: &Path,
    at: Position,
    counters: &Counters,
    maps: &Maps,
) -> Result<(Arc<dyn FsFile>, PathBuf)> {
    let dir = data_dir.join(DIR);
    durable::create_dir_durably(fs, &dir)
        .map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    let path = dir.join(format!("{}.tmp", name(at)));
    let fail = |e| io_error(format!("cannot write the snapshot {}", path.display()), e);
    let file = fs.open_write(&path).map_err(fail)?;
    file.set_len(0).map_err(fail)?;
    let mut w = Writer {
        file,
        buf: Vec::with_capacity(CHUNK + 64),
        crc: crc32fast::Hasher::new(),
    };
    let counters = postcard::to_allocvec(counters).unwrap_or_default();
    let mut body = || -> std::io::Result<()> {
        w.put(MAGIC)?;
        w.put(&at.encode())?;
        w.put_bytes(&counters)?;
        for tree in LIVE {
            let map = maps.map(tree);
            w.put(&[tree as u8])?;
            w.put(&(map.len() as u64).to_le_bytes())?;
            for (k, v) in map.iter() {
                w.put_bytes(k)?;
                w.put_bytes(v)?;
            }
        }
        Ok(())
    };
    body().map_err(fail)?;
    let file = w.finish().map_err(fail)?;
    Ok((file, path))
}

/// Makes a written snapshot durable and takes it into use: fsync, rename
/// to its final name, fsync of the directory; then removes the snapshots
/// older than the one before it.
pub(super) fn publish(fs: &dyn Fs, file: &dyn FsFile, tmp: &Path) -> Result<PathBuf> {
    let fail = |e| {
        io_error(
            format!("cannot make the snapshot {} durable", tmp.display()),
            e,
        )
    };
    file.sync_data().map_err(fail)?;
    let path = tmp.with_extension("");
    fs.rename(tmp, &path).map_err(fail)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    durable::sync_dir(fs, dir).map_err(fail)?;
    let data_dir = dir.parent().unwrap_or(Path::new("."));
    let older = list(fs, data_dir)?;
    let mut removed = false;
    for (_, old) in older.iter().skip(2) {
        fs.remove_file(old)
            .map_err(|e| io_error(format!("cannot remove {}", old.display()), e))?;
        removed = true;
    }
    if removed {
        durable::sync_dir(fs, dir).map_err(fail)?;
    }
    Ok(path)
}

/// Removes every snapshot of a stopped store, durably: the next open
/// replays the live state from the journal's first record.
pub(super) fn remove_all(fs: &dyn Fs, data_dir: &Path) -> Result<()> {
    let found = list(fs, data_dir)?;
    for (_, path) in &found {
        fs.remove_file(path)
            .map_err(|e| io_error(format!("cannot remove {}", path.display()), e))?;
    }
    if !found.is_empty() {
        let dir = data_dir.join(DIR);
        durable::sync_dir(fs, &dir)
            .map_err(|e| io_error(format!("cannot sync {}", dir.display()), e))?;
    }
    Ok(())
}

/// The newest snapshot that reads back whole, if any. Damaged ones are
/// logged and skipped; leftovers of a write a crash cut short (`.tmp`)
/// are ignored.
pub(super) fn load_newest(fs: &dyn Fs, data_dir: &Path) -> Result<Option<Snapshot>> {
    for (at, path) in list(fs, data_dir)? {
        match read(fs, &path) {
            Ok(Some(s)) if s.position == at => return Ok(Some(s)),
            Ok(_) => tracing::warn!(
                snapshot = %path.display(),
                "a snapshot is torn or damaged; trying an older one (the journal is replayed from there)"
            ),
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), error = %e, "cannot read a snapshot; trying an older one");
            }
        }
    }
    Ok(None)
}

/// Reads a snapshot in chunks, decoding as it goes (the file is never
/// held whole in memory); `None` if it is torn or fails its CRC.
fn read(fs: &dyn Fs, path: &Path) -> std::io::Result<Option<Snapshot>> {
    let file = fs.open_read(path)?;
    let len = file.len()?;
    let Some(body_len) = len.checked_sub(4) else {
        return Ok(None);
    };
    let mut r = ChunkReader {
        file,
        offset: 0,
        end: body_len,
        buf: Vec::new(),
        at: 0,
        crc: crc32fast::Hasher::new(),
    };
    let decoded = decode(&mut r)?;
    // Whatever the body said, it counts only if it was all of the file
    // and its CRC holds.
    if r.offset != r.end || r.at != r.buf.len() {
        return Ok(None);
    }
    let mut crc = [0; 4];
    r.file.read_exact_at(&mut crc, body_len)?;
    Ok(decoded.filter(|_| r.crc.clone().finalize().to_le_bytes() == crc))
}

/// A snapshot's content, if it decodes.
fn decode(r: &mut ChunkReader) -> std::io::Result<Option<Snapshot>> {
    if r.take(8)? != Some(&MAGIC[..]) {
        return Ok(None);
    }
    let Some(position) = r.take(16)?.and_then(Position::decode) else {
        return Ok(None);
    };
    let Some(counters) = r.bytes()?.and_then(|b| postcard::from_bytes(b).ok()) else {
        return Ok(None);
    };
    let mut maps = Maps::new();
    for tree in LIVE {
        if r.take(1)?.map(|b| usize::from(b[0])) != Some(tree) {
            return Ok(None);
        }
        let Some(n) = r
            .take(8)?
            .and_then(|b| Some(u64::from_le_bytes(b.try_into().ok()?)))
        else {
            return Ok(None);
        };
        let map = maps.map_mut(tree);
        for _ in 0..n {
            let Some(k) = r.bytes()?.map(<[u8]>::to_vec) else {
                return Ok(None);
            };
            let Some(v) = r.bytes()? else {
                return Ok(None);
            };
            map.insert(&k, v);
        }
    }
    Ok(Some(Snapshot {
        position,
        counters,
        maps,
    }))
}

/// Reads the body of a snapshot a chunk at a time, keeping its CRC.
struct ChunkReader {
    file: Arc<dyn FsFile>,
    /// Next file offset to read into `buf`.
    offset: u64,
    /// Where the body ends (the CRC follows).
    end: u64,
    buf: Vec<u8>,
    /// Next unread byte of `buf`.
    at: usize,
    crc: crc32fast::Hasher,
}

impl ChunkReader {
    /// The next `n` bytes, `None` past the end of the body. Borrowed from
    /// the chunk: a caller copies what it keeps straight into its place,
    /// with no allocation in between.
    fn take(&mut self, n: usize) -> std::io::Result<Option<&[u8]>> {
        while self.buf.len() - self.at < n {
            if self.offset >= self.end {
                return Ok(None);
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let chunk = (self.end - self.offset).min(CHUNK as u64) as usize;
            let start = self.buf.len();
            self.buf.resize(start + chunk, 0);
            self.file
                .read_exact_at(&mut self.buf[start..], self.offset)?;
            self.crc.update(&self.buf[start..]);
            self.offset += chunk as u64;
        }
        let at = self.at;
        self.at += n;
        Ok(Some(&self.buf[at..at + n]))
    }

    fn bytes(&mut self) -> std::io::Result<Option<&[u8]>> {
        let Some(len) = self.take(4)? else {
            return Ok(None);
        };
        let n = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        if n > MAX_ITEM {
            return Ok(None);
        }
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::SimFs;
    use crate::store::{INBOX, OUTBOX};

    fn at(epoch: u64, offset: u64) -> Position {
        Position { epoch, offset }
    }

    fn maps_with(n: u8) -> Maps {
        let mut maps = Maps::new();
        for i in 0..n {
            maps.map_mut(OUTBOX).insert(&[b'p', 0, i], &[i; 30]);
        }
        maps.map_mut(INBOX).insert(&[0; 16], b"msg");
        maps
    }

    fn save(fs: &SimFs, dir: &Path, pos: Position, maps: &Maps) -> PathBuf {
        let (file, tmp) = write(fs, dir, pos, &Counters::default(), maps).expect("write");
        publish(fs, &*file, &tmp).expect("publish")
    }

    /// The newest whole snapshot is loaded; a torn or flipped newest one
    /// falls back to the one before; the oldest are removed once two
    /// newer ones are durable; a power cut before the publication leaves
    /// no trace of a snapshot being written.
    #[test]
    fn the_newest_whole_snapshot_wins_and_a_damaged_one_falls_back() {
        let fs = SimFs::new();
        let dir = Path::new("/node");
        durable::create_dir_durably(&fs, dir).expect("dir");
        save(&fs, dir, at(1, 10), &maps_with(1));
        let second = save(&fs, dir, at(2, 0), &maps_with(2));
        let third = save(&fs, dir, at(3, 5), &maps_with(3));
        assert_eq!(list(&fs, dir).expect("list").len(), 2, "the oldest is gone");

        let s = load_newest(&fs, dir).expect("load").expect("a snapshot");
        assert_eq!(s.position, at(3, 5));
        assert_eq!(s.maps.map(OUTBOX).len(), 3);
        assert_eq!(s.maps.map(INBOX).len(), 1);

        // A flipped bit in the newest: the one before is used.
        let mut bytes = fs.read(&third).expect("read");
        bytes[20] ^= 4;
        let f = fs.open_write(&third).expect("open");
        f.write_at(&bytes, 0).expect("damage");
        let s = load_newest(&fs, dir).expect("load").expect("a snapshot");
        assert_eq!(s.position, at(2, 0));
        assert_eq!(s.maps.map(OUTBOX).len(), 2);

        // A torn one (cut short) is skipped too.
        let f = fs.open_write(&second).expect("open");
        f.set_len(40).expect("cut");
        assert!(load_newest(&fs, dir).expect("load").is_none(), "none whole");

        // Written but not published when the power went: not there.
        let (file, tmp) =
            write(&fs, dir, at(9, 0), &Counters::default(), &maps_with(9)).expect("write");
        drop(file);
        let after = fs.power_cut();
        assert!(
            !after.exists(&tmp).expect("exists"),
            "an unpublished snapshot"
        );
        // The damage above was never synced either: the cut took it back.
        let s = load_newest(&after, dir).expect("load").expect("a snapshot");
        assert_eq!(s.position, at(3, 5));
    }
}
