//! A store opened for verification only: the journal and the envelope
//! segments are read, nothing in the data directory is written. The
//! index is rebuilt from the journal into a temporary sled database in
//! memory (`/dev/shm` on Linux), so an auditor can check a node whose disk
//! is full or mounted read-only, and what is checked is the truth.

use super::counters::{self, Counters};
use super::evidence::{self, JournalReader};
use super::fs::{Fs, RealFs};
use super::live::{self, Live, Maps};
use super::segments::{Locator, Segments};
use super::wal::{self, Wal};
use super::{ENVELOPES, HeadCache, Parts, Store, StoreOptions, audit, index};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// What a read-only open found besides the store.
#[derive(Debug, Default)]
pub struct ReadOnlyNotes {
    /// Records replayed from the journal.
    pub records: usize,
    /// The journal ends in an incomplete record (a write a crash cut
    /// short, never acknowledged): where.
    pub torn_tail: Option<String>,
}

impl Store {
    /// Opens the store in `dir` without writing to it: see the module doc.
    /// Every change is refused.
    pub fn open_read_only(dir: &Path) -> Result<(Store, ReadOnlyNotes)> {
        Store::open_read_only_on(Arc::new(RealFs), dir)
    }

    /// [`Store::open_read_only`] with the journal and the envelope
    /// segments read through `fs`.
    pub fn open_read_only_on(fs: Arc<dyn Fs>, dir: &Path) -> Result<(Store, ReadOnlyNotes)> {
        let journal_dir = dir.join(wal::DIR);
        if !fs.exists(&journal_dir).unwrap_or(false) {
            return Err(Error::NotFound(format!(
                "{} holds no store journal (expected the data_dir of a node file)",
                dir.display()
            )));
        }
        super::format::check(&*fs, dir)?;
        let (db, sled_trees) = index::open_temporary()?;
        let live = Live::new(Maps::new());
        let trees = live::trees(sled_trees, &live);
        let segments = Segments::open_read_only(Arc::clone(&fs), dir);
        let complete = |ops: &[wal::Op]| envelopes_present(&segments, ops);
        let mut counters = Counters::default();
        let now = crate::now_ms();
        let replay = wal::replay(
            &*fs,
            dir,
            &mut |ops, at| {
                let ops = evidence::replayed(&trees, ops, at)?;
                counters::apply_counted(&trees, &ops, &mut counters, now)
            },
            &complete,
            None,
        )?;
        let notes = ReadOnlyNotes {
            records: replay.records,
            torn_tail: replay
                .torn
                .map(|t| format!("{} at byte {}", t.path.display(), t.offset)),
        };
        let journal = JournalReader::new(Arc::clone(&fs), dir);
        let head = Store::initial_audit_head(&trees, &journal)?;
        let stored = audit::head_record(&trees)?;
        // A journal no one writes to: a read-only store runs no writer.
        let detached = Wal::detached()?;
        let applied = detached.position();
        let store = Store::assemble(Parts {
            dir: dir.to_path_buf(),
            fs,
            counters,
            next_seq: index::next_seq(&trees)?,
            next_feed: Store::feed_after_newest(&trees)?,
            db,
            trees,
            live,
            snapshot: None,
            wal: detached,
            segments,
            head: HeadCache { head, stored },
            journal,
            applied,
            options: StoreOptions::default(),
            jobs: None,
        });
        Ok((store, notes))
    }
}

impl Store {
    /// Compares the node's own index in `index/` with the one this
    /// read-only open rebuilt from the journal, tree by tree (the `meta`
    /// tree aside): `None` when they agree, else the first tree that
    /// differs. The index is copied to memory first and opened there, so
    /// the data directory is not written.
    pub fn compare_index(&self) -> Result<Option<String>> {
        let copy = tempfile::Builder::new()
            .prefix("cluebridge-index-")
            .tempdir_in(memory_dir())
            .map_err(|e| {
                Error::Unavailable(format!("cannot make a place to copy the index: {e}"))
            })?;
        let source = index::dir(&self.shared.dir);
        if !source.is_dir() {
            return Ok(Some("index (missing: the next start rebuilds it)".into()));
        }
        copy_dir(&source, copy.path())
            .map_err(|e| Error::Unavailable(format!("cannot copy {}: {e}", source.display())))?;
        let (_db, theirs) = index::open_copy(copy.path())?;
        // The live trees are not in the index: a throwaway live state
        // takes their writes.
        let theirs = live::trees(theirs, &Live::new(Maps::new()));
        // Brought forward from the position it notes, as the node's next
        // start would (after a crash the index lags its journal).
        let from = index::position(&theirs)?;
        let complete = |ops: &[wal::Op]| envelopes_present(&self.shared.segments, ops);
        wal::replay(
            &RealFs,
            &self.shared.dir,
            &mut |ops, at| evidence::apply(&theirs, ops, at),
            &complete,
            from,
        )?;
        for (i, (mine, theirs)) in self.shared.trees.iter().zip(&theirs).enumerate() {
            if i == super::META || live::is_live(i) {
                continue;
            }
            if self.tree_digest(mine)? != self.tree_digest(theirs)? {
                return Ok(Some(super::TREE_NAMES[i].to_string()));
            }
        }
        Ok(None)
    }
}

/// Whether the envelopes a record names are whole in their segments: a
/// record whose envelope is not was never acknowledged, and ends a replay.
pub(super) fn envelopes_present(segments: &Segments, ops: &[wal::Op]) -> Result<bool> {
    for op in ops.iter().filter(|op| op.tree as usize == ENVELOPES) {
        if let Some(at) = op.value.as_deref().and_then(Locator::decode)
            && !segments.holds(&at)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a copy of the index goes: memory when the system has it.
fn memory_dir() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
