//! Making the store's files durable: an `fsync` of each file, and of its
//! directory after a create, rename or remove.
//!
//! sled 0.34.7 does not make its own files durable. Its `flush()` writes
//! its buffers with `sync_file_range`, which waits for the write-back of
//! the data pages but neither commits the file's metadata (its size, its
//! new blocks) nor flushes the disk's write cache: the kernel's manual
//! says it makes no promise after a crash. sled writes its `conf` file
//! without any sync, and renames its snapshot files without syncing the
//! directory. So before the index counts a journal position as reached
//! (`index::checkpoint`), [`sync_sled`] fsyncs every file of sled and its
//! directories; the [`SledSynced`] it returns names them.
//!
//! The store's own files go through [`Fs`] (`sync_dir` and
//! `create_dir_durably` take it); sled's files are always real ones, so
//! [`sync_sled`] works on the real file system, whatever the journal runs
//! on.

use super::fs::{Fs, RealFs};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Proof that sled's files were fsynced after its last `flush()`, and the
/// files and directories that were (in the order they were synced).
#[derive(Debug)]
pub(super) struct SledSynced {
    synced: Vec<PathBuf>,
}

impl SledSynced {
    /// The files and directories synced, directories last.
    pub fn synced(&self) -> &[PathBuf] {
        &self.synced
    }
}

/// Whether `name`, an entry of sled's directory, is one of sled's files:
/// its page file `db`, its `conf`, and its snapshots `snap.<lsn>` (with
/// the `.generating` ones it is still writing). Everything else there is
/// the store's own (`wal/`, `envelopes/`) or not the store's at all.
fn is_sled_file(name: &str) -> bool {
    name == "db" || name == "conf" || name.starts_with("snap.")
}

/// Fsyncs every file of the sled database in `dir` (found by listing the
/// directory: `db`, `conf`, `snap.*`, `blobs/*`), then `blobs/` and `dir`
/// itself, so that what sled's last `flush()` wrote survives a power cut.
/// Call it after `flush()`; it blocks for one fsync per file, so it runs on
/// the checkpoint thread or at open, never on the writer's hot path.
///
/// A file that disappears between the listing and its sync (sled removes
/// an older snapshot or a freed blob at any time) is skipped: its removal
/// is made durable by the sync of the directory that follows.
pub(super) fn sync_sled(dir: &Path) -> io::Result<SledSynced> {
    let mut synced = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_sled_file(&entry.file_name().to_string_lossy()) && entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    let blobs = dir.join("blobs");
    let has_blobs = blobs.is_dir();
    if has_blobs {
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    for path in files {
        match File::open(&path).and_then(|f| f.sync_all()) {
            Ok(()) => synced.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(&path, e)),
        }
    }
    if has_blobs {
        sync_dir(&RealFs, &blobs)?;
        synced.push(blobs);
    }
    sync_dir(&RealFs, dir)?;
    synced.push(dir.to_path_buf());
    trace(|| format!("sled {}", dir.display()));
    Ok(SledSynced { synced })
}

/// Fsyncs one file the store keeps beside sled's (the audit slots).
pub(super) fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| with_path(path, e))
}

/// Fsyncs a directory: makes the creates, renames and removes of its
/// entries durable.
pub(super) fn sync_dir(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    fs.sync_dir(dir).map_err(|e| with_path(dir, e))?;
    trace(|| format!("dir {}", dir.display()));
    Ok(())
}

/// Creates `dir` (and its missing parents) and fsyncs the parent of each
/// directory it created, so that the new directories survive a power cut.
pub(super) fn create_dir_durably(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || fs.exists(path).map_err(|e| with_path(path, e))? {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for created in missing.iter().rev() {
        match fs.create_dir(created) {
            Ok(()) => {}
            // Created meanwhile by someone else: its parent is synced below
            // all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(with_path(created, e)),
        }
    }
    for created in missing.into_iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(fs, parent)?,
            _ => sync_dir(fs, Path::new("."))?,
        }
    }
    Ok(())
}

/// An I/O error with the path it happened at; the original error stays
/// its source.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
struct AtPath {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// `e`, naming `path`, with the same kind (a full disk stays `StorageFull`).
pub(super) fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        AtPath {
            path: path.to_path_buf(),
            source: e,
        },
    )
}

#[cfg(test)]
thread_local! {
    /// The durability steps taken on this thread, in order: what the tests
    /// check the order of.
    static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
fn trace(event: impl FnOnce() -> String) {
    TRACE.with(|t| t.borrow_mut().push(event()));
}

#[cfg(not(test))]
fn trace(_: impl FnOnce() -> String) {}

/// The steps traced on this thread since the last call.
#[cfg(test)]
pub(super) fn take_trace() -> Vec<String> {
    TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_sled_is_synced_then_its_directories_and_nothing_of_the_store() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("data");
        create_dir_durably(&RealFs, &dir.join("wal")).expect("wal dir");
        std::fs::write(dir.join("wal").join("00000000000000000001.log"), b"x").expect("log");
        std::fs::write(dir.join("node.toml"), b"not sled's").expect("other file");
        {
            let db = sled::Config::new()
                .path(&dir)
                .flush_every_ms(None)
                .open()
                .expect("open");
            // Large enough for sled to keep it in a blob file.
            db.insert(b"big", vec![7u8; 4 * 1024 * 1024])
                .expect("insert");
            db.insert(b"small", b"v").expect("insert");
            db.flush().expect("flush");
        }
        // Reopened after a close, sled has also written a snapshot.
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(None)
            .open()
            .expect("reopen");
        db.flush().expect("flush");
        take_trace();

        let synced = sync_sled(&dir).expect("sync");
        let names: Vec<String> = synced
            .synced()
            .iter()
            .map(|p| {
                p.strip_prefix(&dir)
                    .expect("inside the directory")
                    .display()
                    .to_string()
            })
            .collect();
        for must in ["db", "conf"] {
            assert!(names.iter().any(|n| n == must), "{must} not in {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("snap.")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("blobs/")), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("wal") || n == "node.toml"),
            "{names:?}"
        );
        // The directories come after every file in them: blobs/, then the
        // database directory itself.
        assert_eq!(&names[names.len() - 2..], ["blobs", ""]);
        assert_eq!(
            take_trace(),
            [
                format!("dir {}", dir.join("blobs").display()),
                format!("dir {}", dir.display()),
                format!("sled {}", dir.display()),
            ]
        );
    }

    #[test]
    fn a_created_directory_is_made_durable_in_its_parent() {
        let tmp = tempfile::tempdir().expect("tmp");
        take_trace();
        create_dir_durably(&RealFs, &tmp.path().join("a/b")).expect("create");
        assert_eq!(
            take_trace(),
            [
                format!("dir {}", tmp.path().display()),
                format!("dir {}", tmp.path().join("a").display()),
            ]
        );
        create_dir_durably(&RealFs, &tmp.path().join("a/b")).expect("exists");
        assert!(take_trace().is_empty(), "nothing created, nothing synced");
    }
}
