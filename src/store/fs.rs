//! The store's file I/O, behind one small trait: the log (`wal`), the
//! envelope segments (`segments`) and the durability helpers (`durable`)
//! open, write, read, sync, rename and remove their files only through
//! [`Fs`], so that tests can swap the real file system for [`SimFs`], a
//! twin that loses what was never synced when it simulates a power cut.
//!
//! [`RealFs`] is what a node runs on: `std::fs`, positional reads with
//! `read_at`, `fdatasync` through `sync_data`, and a directory made durable
//! by opening it and calling `sync_all` on it.
//!
//! sled does its own file I/O and cannot go through this layer; its files
//! are always real (see `durable::sync_sled`).
//!
//! Errors are the file system's own `io::Error`s, with their kind (a full
//! disk is `StorageFull`, a missing file `NotFound`); the callers add the
//! path and what they were doing.

mod buffered;
mod sim;

pub use buffered::Buffered;
pub use sim::{SimFs, SyncFault};

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The file operations of the store. Paths are those of the real data
/// directory; a twin keeps them as names only.
///
/// Nothing here is durable by itself: a file's data is durable after
/// [`FsFile::sync_data`], and a create, rename or remove after
/// [`Fs::sync_dir`] of the directory that holds the entry.
pub trait Fs: fmt::Debug + Send + Sync {
    /// Opens `path` for appending (and reading), creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Opens `path` for positional writes (and reading), creating it if
    /// missing.
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Opens an existing file for reading only.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// The whole content of an existing file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates one directory; its parent must exist.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of a directory, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creates, renames and removes of the entries of `dir`
    /// durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
pub trait FsFile: fmt::Debug + Send + Sync {
    /// Writes all of `buf` at the end of the file. A write that fails part
    /// way (a full disk) may leave part of `buf` in the file.
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`; only for a file opened with
    /// [`Fs::open_write`] (an appending file would put it at the end).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`; `UnexpectedEof` past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts the file to `len` bytes (or extends it with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data, and the size needed to read it, durable
    /// (`fdatasync`). A truncation is durable after it too: the size is
    /// metadata "needed to allow a subsequent data retrieval".
    fn sync_data(&self) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

/// A real open file; `append` says whether writes go to the end.
#[derive(Debug)]
struct RealFile {
    file: File,
    append: bool,
}

impl Fs for RealFs {
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let file = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        Ok(Arc::new(RealFile { file, append: true }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)?;
        Ok(Arc::new(RealFile {
            file,
            append: false,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let file = File::open(path)?;
        Ok(Arc::new(RealFile {
            file,
            append: false,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for RealFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.file).write_all(buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.append {
            // pwrite(2) on Linux ignores the offset of an O_APPEND file.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a positional write to a file opened for appending",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_file_system_appends_writes_reads_and_lists() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fs = RealFs;
        let dir = tmp.path().join("d");
        fs.create_dir(&dir).expect("mkdir");
        let path = dir.join("a");
        let f = fs.open_append(&path).expect("open");
        f.append(b"hello").expect("append");
        assert!(f.write_at(b"x", 0).is_err(), "no positional write");
        f.sync_data().expect("sync");
        fs.sync_dir(&dir).expect("sync dir");
        let w = fs.open_write(&path).expect("open for writes");
        w.write_at(b"J", 0).expect("write at");
        let mut buf = [0; 5];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert_eq!(&buf, b"Jello");
        assert_eq!(
            f.read_exact_at(&mut buf, 1)
                .expect_err("past the end")
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
        f.set_len(2).expect("cut");
        assert_eq!(f.len().expect("len"), 2);
        fs.rename(&path, &dir.join("b")).expect("rename");
        assert_eq!(fs.list_dir(&dir).expect("list"), ["b"]);
        assert_eq!(fs.read(&dir.join("b")).expect("read"), b"Je");
        fs.remove_file(&dir.join("b")).expect("remove");
        assert!(!fs.exists(&dir.join("b")).expect("exists"));
        assert_eq!(
            fs.open_read(&path).expect_err("gone").kind(),
            io::ErrorKind::NotFound
        );
    }
}
