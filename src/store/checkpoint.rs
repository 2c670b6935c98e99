//! Checkpoints: a new journal file, the index made durable up to what the
//! indexer has brought to it, and now and then a snapshot of the live
//! state. The writer
//! starts one whenever a journal file reaches `journal_file_bytes`, on a
//! thread beside it; the last one runs when the writer stops.

use super::crash_points::Point;
use super::{Store, index, snapshot};
use crate::error::Result;

/// The default of [`StoreOptions::snapshot_journal_bytes`](super::StoreOptions).
pub const SNAPSHOT_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// When the last snapshot was taken, and how much journal came since.
#[derive(Debug, Default)]
pub(super) struct SnapshotState {
    /// The position of the newest snapshot published (or loaded).
    pub at: Option<super::wal::Position>,
    /// Journal bytes written since the last snapshot.
    pub since: u64,
    /// The size of the last snapshot: a snapshot waits for at least twice
    /// as much journal, so that writing them costs a bounded share of the
    /// disk's bandwidth however large the live state grows.
    pub last_size: u64,
}

impl Store {
    /// Starts a new journal file and makes the index durable up to what
    /// it has applied, with a snapshot of the live state. Runs when the
    /// writer stops; while it runs, the writer hands checkpoints to its
    /// own thread.
    pub(super) fn checkpoint(&self) -> Result<()> {
        let epoch = self.rotate_log()?;
        self.flush_to(epoch, true)
    }

    /// The first half of a checkpoint: starts a new journal file and
    /// returns its epoch. The envelope segments are synced first, under
    /// the journal's lock, because the old file is synced here and may
    /// hold records naming envelopes that no group commit synced yet.
    pub(super) fn rotate_log(&self) -> Result<u64> {
        let mut wal = self.lock_wal();
        self.shared.segments.sync().map_err(|e| self.fail(e))?;
        let bytes = wal.bytes();
        let epoch = wal.rotate()?;
        self.shared.journal.appending_to(&wal);
        self.lock_snapshots().since += bytes;
        Ok(epoch)
    }

    /// The second half of a checkpoint: once the indexer has brought sled
    /// to everything applied when it started, flushes sled and makes its
    /// files durable (see `durable`), noting the journal position the
    /// index reflects; then, when enough journal has passed since the
    /// last one (or `force`), writes a snapshot of the live state. Blocks
    /// for a flush and one fsync per file: runs on the checkpoint thread,
    /// or when the writer stops.
    pub(super) fn flush_to(&self, epoch: u64, force: bool) -> Result<()> {
        // The indexer writes only synced changes to sled, so the index is
        // flushed beside the writer, without the journal's lock. A failed
        // sync latches the store like one in a group commit: the kernel
        // reports a lost page to one fsync only.
        let target = *self.lock_applied();
        let indexed = self.shared.unindexed.wait_indexed(target).ok_or_else(|| {
            crate::error::Error::Unavailable(
                "the index stopped short of the journal; the next start replays it".into(),
            )
        })?;
        index::checkpoint(
            &self.shared.dir,
            &self.shared.db,
            &self.shared.trees,
            indexed,
            self.shared.seq.load(std::sync::atomic::Ordering::Acquire),
            || self.cross(Point::DuringCheckpoint),
        )
        .map_err(|e| self.fail(format!("checkpoint of the index: {e}")))?;
        tracing::debug!(
            epoch,
            "store checkpoint: the index is durable up to the journal's end"
        );
        let due = {
            let state = self.lock_snapshots();
            force
                || state.since
                    >= self
                        .shared
                        .snapshot_journal_bytes
                        .max(state.last_size.saturating_mul(2))
        };
        if !due {
            return self.archive_after_checkpoint(indexed);
        }
        // Written under the journal's lock (the live state, its counters
        // and the applied position cannot move), made durable and
        // published after it. A failed snapshot is no disk failure of the
        // truth: the journal holds everything, and the next checkpoint
        // tries again.
        let wal = self.lock_wal();
        let applied = *self.lock_applied();
        let written = {
            let maps = self.shared.live.read();
            let counters = self.lock_counters();
            snapshot::write(
                &*self.shared.fs,
                &self.shared.dir,
                applied,
                &counters,
                &maps,
            )
        };
        drop(wal);
        let (file, tmp) = written?;
        self.cross(Point::DuringSnapshot);
        let size = file.len().unwrap_or(0);
        let path = snapshot::publish(&*self.shared.fs, &*file, &tmp)?;
        *self.lock_snapshots() = SnapshotState {
            at: Some(applied),
            since: 0,
            last_size: size,
        };
        tracing::debug!(snapshot = %path.display(), bytes = size, "snapshot of the live state written");
        self.archive_after_checkpoint(indexed)
    }

    /// Archives what is due, keeping every journal file that an ordinary
    /// start replays (from the older of the index's and the snapshot's
    /// positions). A failure is logged: the files stay where they are.
    fn archive_after_checkpoint(&self, indexed: super::wal::Position) -> Result<()> {
        let snapshot = self.lock_snapshots().at;
        let keep_from = snapshot.map_or(0, |s| s.epoch.min(indexed.epoch));
        if let Err(e) = self.archive_due(keep_from) {
            tracing::warn!(error = %e, "archiving old journal files failed; they stay in place");
        }
        Ok(())
    }

    fn lock_snapshots(&self) -> std::sync::MutexGuard<'_, SnapshotState> {
        self.shared
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
