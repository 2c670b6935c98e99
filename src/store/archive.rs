//! Retention: the journal is evidence and is kept, but its old files need
//! not stay on the node's working disk. A journal file is **archived** —
//! moved to `<data_dir>/archive/journal/` (a mount point or a link to
//! other storage, if the operator wishes) — once all of these hold:
//!
//! - its newest audit entry is older than `archive_after_secs`;
//! - a checkpoint signed by this node covers every entry in it;
//! - the index and the newest snapshot both reflect a later position, so
//!   an ordinary start never replays it.
//!
//! Envelope segment files follow the journal files that name them: a
//! closed segment is archived once every journal record naming it is
//! (records are written in the order of their envelopes).
//!
//! Archived files are read where they lie: evidence locators, bundles,
//! `audit verify` and a rebuild of the index all find them. A move is
//! durable before the original is gone: the file is renamed (or copied,
//! synced and renamed, across file systems), the archive's directory is
//! fsynced, then the original's; a crash in between leaves the file in
//! both places, and readers take the journal's copy.

use super::durable;
use super::fs::Fs;
use super::segments::{self, Locator};
use super::{AUDIT, ENVELOPES, Store, wal};
use crate::error::{Error, Result};
use std::io;
use std::path::{Path, PathBuf};

/// The archive's directory inside a store's data directory.
pub const DIR: &str = "archive";

/// Where archived journal files go.
pub(super) fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR).join(wal::DIR)
}

/// Where archived envelope segments go.
pub(super) fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR).join(segments::DIR)
}

/// Moves `name` from `from` to `to` (directories), durably (see the
/// module doc).
fn move_file(fs: &dyn Fs, from: &Path, to: &Path, name: &str) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        durable::create_dir_durably(fs, parent)?;
    }
    durable::create_dir_durably(fs, to)?;
    let (source, target) = (from.join(name), to.join(name));
    match fs.rename(&source, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let tmp = to.join(format!("{name}.tmp"));
            let copy = fs.open_write(&tmp)?;
            copy.set_len(0)?;
            copy.write_at(&fs.read(&source)?, 0)?;
            copy.sync_data()?;
            fs.rename(&tmp, &target)?;
            durable::sync_dir(fs, to)?;
            fs.remove_file(&source)?;
        }
        Err(e) => return Err(e),
    }
    durable::sync_dir(fs, to)?;
    durable::sync_dir(fs, from)
}

/// What one journal file holds that decides whether it may go.
#[derive(Debug, Default)]
struct FileFacts {
    /// The newest audit entry: sequence number and time.
    last_seq: u64,
    last_time_ms: u64,
    /// The highest envelope segment its records name.
    last_segment: u64,
}

fn facts(data: &[u8]) -> FileFacts {
    let mut f = FileFacts::default();
    for op in wal::records(data).into_iter().flatten() {
        let Some(value) = &op.value else { continue };
        match op.tree as usize {
            AUDIT => {
                if let Ok((entry, _)) = super::audit::parse_record(value) {
                    f.last_seq = f.last_seq.max(entry.seq);
                    f.last_time_ms = f.last_time_ms.max(entry.time_ms);
                }
            }
            ENVELOPES => {
                if let Some(at) = Locator::decode(value) {
                    f.last_segment = f.last_segment.max(at.segment);
                }
            }
            _ => {}
        }
    }
    f
}

impl Store {
    /// Archives the journal files and envelope segments that are due
    /// (see the module doc); returns how many files moved. Runs after a
    /// checkpoint, on the checkpoint thread.
    pub(super) fn archive_due(&self, keep_from_epoch: u64) -> Result<usize> {
        let after_ms = self.shared.archive_after_secs.saturating_mul(1000);
        if after_ms == 0 {
            return Ok(0);
        }
        let Some(node) = self.own_node_id()? else {
            return Ok(0);
        };
        let Some(covered) = self.latest_checkpoint(&node)? else {
            return Ok(0);
        };
        let covered = covered.open()?.seq;
        let fs = &*self.shared.fs;
        let dir = self.shared.dir.join(wal::DIR);
        let io = |what: String| {
            move |e: io::Error| Error::Store(super::StoreError::Io { what, source: e })
        };
        let now = crate::now_ms();
        let mut moved = 0;
        let mut segment_bound = None;
        for epoch in wal::epochs(fs, &dir)? {
            if epoch >= keep_from_epoch {
                break;
            }
            let name = wal::file_name(epoch);
            let data = fs
                .read(&dir.join(&name))
                .map_err(io(format!("cannot read {}", dir.join(&name).display())))?;
            let f = facts(&data);
            // Files are in the chain's order: once one must stay, so
            // must every later one.
            if f.last_seq > covered || f.last_time_ms.saturating_add(after_ms) > now {
                break;
            }
            move_file(fs, &dir, &journal_dir(&self.shared.dir), &name)
                .map_err(io(format!("cannot archive {}", dir.join(&name).display())))?;
            tracing::info!(file = %name, "journal file archived");
            moved += 1;
            segment_bound = Some(f.last_segment);
        }
        if let Some(bound) = segment_bound {
            moved += self.archive_segments_before(bound)?;
        }
        Ok(moved)
    }

    /// Archives the closed envelope segments numbered below `bound`.
    fn archive_segments_before(&self, bound: u64) -> Result<usize> {
        let fs = &*self.shared.fs;
        let dir = self.shared.dir.join(segments::DIR);
        let active = self.shared.segments.active_number();
        let mut moved = 0;
        for name in fs.list_dir(&dir).map_err(|e| {
            Error::Store(super::StoreError::Io {
                what: format!("cannot list {}", dir.display()),
                source: e,
            })
        })? {
            let Some(n) = segments::number_of(&name) else {
                continue;
            };
            if n >= bound || Some(n) == active {
                continue;
            }
            move_file(fs, &dir, &segments_dir(&self.shared.dir), &name).map_err(|e| {
                Error::Store(super::StoreError::Io {
                    what: format!("cannot archive {}", dir.join(&name).display()),
                    source: e,
                })
            })?;
            moved += 1;
        }
        Ok(moved)
    }
}
