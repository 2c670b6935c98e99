//! Appends gathered in memory and written out together: a group commit
//! appends one journal record (and envelope) per change, and one `write`
//! of them all before its sync costs a fraction of one `write` each.
//!
//! [`Buffered`] is an [`FsFile`] over an appending file. `append` adds to
//! a buffer; the buffer reaches the file before `sync_data` syncs it,
//! before a read that reaches into it, when it grows past
//! [`MAX_BUFFERED`], and when the handle is dropped. Nothing changes for
//! durability: a record was never durable before its sync, and a process
//! that dies with records in the buffer loses only changes that nobody
//! was answered for, as when it dies before their sync.
//!
//! A write that fails (a full disk) cuts the file back to what was whole
//! before it and fails every later write of this handle: what the caller
//! counted as appended is gone, so its positions would no longer match
//! the file. The store latches on that error anyway.

use super::FsFile;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes gathered before they are written out without waiting for a sync.
pub const MAX_BUFFERED: usize = 4 << 20;

/// An appending file whose appends are written out together (see the
/// module).
pub struct Buffered {
    file: Arc<dyn FsFile>,
    state: Mutex<State>,
}

struct State {
    /// Bytes in the file: the buffer goes after them.
    written: u64,
    buffer: Vec<u8>,
    /// Set by a failed write: every later write fails with its kind.
    failed: Option<io::ErrorKind>,
}

impl fmt::Debug for Buffered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Buffered")
            .field("file", &self.file)
            .field("written", &state.written)
            .field("buffered", &state.buffer.len())
            .finish()
    }
}

impl Buffered {
    /// Buffers the appends to `file` (opened for appending).
    pub fn new(file: Arc<dyn FsFile>) -> io::Result<Arc<Buffered>> {
        let written = file.len()?;
        Ok(Arc::new(Buffered {
            file,
            state: Mutex::new(State {
                written,
                buffer: Vec::new(),
                failed: None,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data, left whole by every step that can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the buffer out (one `write`).
    fn write_out(&self, state: &mut State) -> io::Result<()> {
        if let Some(kind) = state.failed {
            return Err(io::Error::new(
                kind,
                "an earlier write to this file failed; nothing more is written to it",
            ));
        }
        if state.buffer.is_empty() {
            return Ok(());
        }
        match self.file.append(&state.buffer) {
            Ok(()) => {
                state.written += state.buffer.len() as u64;
                state.buffer.clear();
                Ok(())
            }
            Err(e) => {
                // Cut a partly written buffer off: the file ends in whole
                // records again.
                state.failed = Some(e.kind());
                state.buffer.clear();
                if let Err(cut) = self.file.set_len(state.written) {
                    tracing::error!(error = %cut, "cannot cut a store file back after a failed write");
                }
                Err(e)
            }
        }
    }
}

impl FsFile for Buffered {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        if state.buffer.len() + buf.len() > MAX_BUFFERED {
            self.write_out(&mut state)?;
        }
        if let Some(kind) = state.failed {
            return Err(io::Error::new(kind, "an earlier write to this file failed"));
        }
        state.buffer.extend_from_slice(buf);
        Ok(())
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a positional write to a file opened for appending",
        ))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        {
            let mut state = self.lock();
            if offset + buf.len() as u64 > state.written {
                self.write_out(&mut state)?;
            }
        }
        self.file.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.lock();
        Ok(state.written + state.buffer.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        self.write_out(&mut state)?;
        self.file.set_len(len)?;
        state.written = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.write_out(&mut self.lock())?;
        self.file.sync_data()
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if state.failed.is_none() && !state.buffer.is_empty() {
            // As if each record had been written when it was appended.
            let _ = self.file.append(&state.buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::{Fs, SimFs};
    use std::path::{Path, PathBuf};

    /// A buffered file `/d/log` on a file system twin.
    fn log_on_a_twin() -> (SimFs, PathBuf, Arc<Buffered>) {
        let sim = SimFs::new();
        let dir = Path::new("/d");
        sim.create_dir(dir).expect("mkdir");
        let path = dir.join("log");
        let file = Buffered::new(sim.open_append(&path).expect("open")).expect("buffer");
        (sim, path, file)
    }

    /// Appends wait in memory until a sync, a read that needs them or the
    /// limit; a power cut before the sync loses them, after it keeps them.
    #[test]
    fn appends_reach_the_file_at_the_sync_or_when_read() {
        let (sim, path, file) = log_on_a_twin();
        file.append(b"one").expect("append");
        file.append(b"two").expect("append");
        assert_eq!(file.len().expect("len"), 6);
        assert_eq!(sim.read(&path).expect("read"), b"", "still in memory");
        let mut got = [0; 3];
        file.read_exact_at(&mut got, 3).expect("read the buffer");
        assert_eq!(&got, b"two");
        assert_eq!(
            sim.read(&path).expect("read"),
            b"onetwo",
            "written to be read"
        );
        file.append(b"three").expect("append");
        file.sync_data().expect("sync");
        sim.sync_dir(Path::new("/")).expect("sync root");
        sim.sync_dir(Path::new("/d")).expect("sync dir");
        file.append(b"lost").expect("append");
        let cut = sim.power_cut();
        assert_eq!(cut.read(&path).expect("read"), b"onetwothree");
    }

    /// A write that fails part-way leaves the file as it was before it,
    /// and the handle refuses every later write.
    #[test]
    fn a_failed_write_out_cuts_the_file_back_and_refuses_what_follows() {
        let (sim, path, file) = log_on_a_twin();
        file.append(b"whole").expect("append");
        file.sync_data().expect("sync");
        sim.set_capacity(Some(sim.used() + 4));
        file.append(b"does not fit").expect("append to memory");
        let err = file.sync_data().expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(sim.read(&path).expect("read"), b"whole");
        sim.set_capacity(None);
        let err = file.append(b"more").expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(file.sync_data().is_err());
        assert_eq!(sim.read(&path).expect("read"), b"whole");
    }
}
