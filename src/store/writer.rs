//! The store's writer thread: the one place state changes run. It takes
//! the jobs queued since its last batch, runs them (each appends its
//! journal record), makes the batch durable with one sync of the envelope
//! segments and the journal, applies it to the live state and hands the
//! index's share to the indexer (see `indexer`), then answers every
//! caller; and it starts checkpoints beside itself as the journal grows.

use super::crash_points::Point;
use super::{Store, pending, wal};

/// A state change queued for the writer thread, returning what to tell its
/// caller once the batch it ran in is on disk.
pub(super) type Job = Box<dyn FnOnce(&Store) -> Completion + Send>;
pub(super) type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Most jobs run between two flushes.
const MAX_BATCH: usize = 4096;

/// Lowers the calling thread's priority (nice 10, Linux only): the
/// indexer catches up on work nobody waits for, and on a busy machine it
/// gives the CPU to the threads a caller waits on (the writer, the
/// signer, the request handlers) instead of stretching their latency.
/// Measured at 2,400 msg/s on two cores, builds alternating: end-to-end
/// p99 21-24 ms against 23-37 ms without (the machine's noise is of the
/// same order; the tail gains most). It still keeps up: the writer waits
/// for it past `MAX_UNINDEXED` writes. (Not the checkpoint
/// thread: it writes snapshots under the journal's lock, which the
/// writer then waits for.)
fn yield_to_the_write_path() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "cannot lower a background store thread's priority");
    }
}

/// The writer thread: runs queued state changes one after another, then
/// makes the whole batch durable with one `fdatasync` of the log, then
/// answers every caller. Jobs queued while a batch runs form the next
/// batch: group commit. A checkpoint starts when the journal file has
/// grown to [`StoreOptions::journal_file_bytes`] and runs beside the writer.
pub(super) fn writer(store: Store, jobs: std::sync::mpsc::Receiver<Job>) {
    pending::enter_writer();
    // Whether a checkpoint is running.
    let running = std::sync::atomic::AtomicBool::new(false);
    let running = &running;
    std::thread::scope(|scope| {
        // Checkpoints flush sled on their own thread: the group commit that
        // started one is answered first; later changes wait for the log's
        // lock while sled flushes (about 10 ms every 8 MiB of log).
        let (checkpoints, due) = std::sync::mpsc::sync_channel::<u64>(1);
        let checkpointer = store.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn_scoped(scope, move || {
                for epoch in due {
                    if let Err(e) = checkpointer.flush_to(epoch, false) {
                        tracing::error!(error = %e, "store checkpoint failed; the log keeps growing");
                    }
                    running.store(false, std::sync::atomic::Ordering::Release);
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start the store checkpoint thread"))
            .ok();
        let indexer = store.clone();
        let started = std::thread::Builder::new()
            .name("store-indexer".into())
            .spawn_scoped(scope, move || {
                yield_to_the_write_path();
                let trees = &indexer.shared.trees;
                let between = || indexer.cross(Point::DuringIndexBatch);
                if let Err(e) = indexer.shared.unindexed.run(trees, between) {
                    indexer.fail(format!("writing the index failed: {e}"));
                }
            });
        if let Err(e) = started {
            store.fail(format!("cannot start the store indexer: {e}"));
            store.shared.unindexed.close();
        }
        while let Ok(first) = jobs.recv() {
            let mut completions = vec![first(&store)];
            while completions.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => completions.push(job(&store)),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            if let Err(e) = store.store_audit_head() {
                tracing::error!(error = %e, "writing the audit head record failed");
            }
            let file = store.lock_wal().file();
            // A latched store was logged once, when it latched.
            let latched = store.failure().is_some();
            // Envelopes first: a durable log record never names an
            // envelope that is not on disk. After a failed sync the pages
            // may be gone for good, so nothing is acknowledged any more.
            let result = store
                .check_healthy()
                .map_err(|e| e.to_string())
                .and_then(|()| store.shared.segments.sync())
                .and_then(|()| wal::sync(&*file))
                .map_err(|e| store.fail(e).to_string())
                .and_then(|()| {
                    store.cross(Point::AfterSync);
                    store.apply_synced().map_err(|e| e.to_string())
                });
            store.cross(Point::AfterApply);
            store
                .shared
                .flush_seconds
                .observe_duration(started.elapsed());
            store.shared.flush_batch.observe(completions.len() as f64);
            if let (Err(e), false) = (&result, latched) {
                tracing::error!(error = %e, "store flush failed");
            }
            for complete in completions {
                complete(result.clone());
            }
            if store.lock_wal().bytes() >= store.shared.journal_file_bytes
                && !running.swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                // Records appended from here on go to the new file; the
                // flush that follows covers every change in the old ones.
                let rotated = store.rotate_log();
                match rotated {
                    Ok(epoch) => {
                        let _ = checkpoints.send(epoch);
                    }
                    Err(e) => {
                        store.fail(format!("cannot start a new store log file: {e}"));
                        running.store(false, std::sync::atomic::Ordering::Release);
                    }
                }
            }
        }
        drop(checkpoints);
        // The indexer drains what is queued, then stops.
        store.shared.unindexed.close();
    });
    // Shutting down: leave sled complete, so that the next open has
    // nothing to replay.
    if let Err(e) = store.store_audit_head() {
        tracing::error!(error = %e, "writing the audit head record failed");
    }
    // The head record is synced and applied like any change (a latched
    // store skips this: the next start replays the journal).
    let synced = store.check_healthy().and_then(|()| {
        let file = store.lock_wal().file();
        store
            .shared
            .segments
            .sync()
            .and_then(|()| wal::sync(&*file))
            .map_err(|e| store.fail(e))?;
        store.apply_synced()?;
        store.shared.unindexed.drain(&store.shared.trees)
    });
    if let Err(e) = synced.and_then(|()| store.checkpoint()) {
        tracing::error!(error = %e, "final store checkpoint failed; the next start replays the journal");
    }
}
