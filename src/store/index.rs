//! The index: sled, holding the store's trees, derived from the journal.
//!
//! sled is never the only copy of anything: every change is a journal
//! record first, and the index notes (in its `meta` tree) the journal
//! position its durable state reflects. At open the journal is replayed
//! from that position; an index that is missing, or that sled reports
//! damaged, is rebuilt from the whole journal (`cluebridge store reindex`
//! does the same on demand). sled's `flush()` is not durable on its own
//! (see `durable`): a checkpoint flushes it, fsyncs its files and only
//! then counts the position as reached. Beside sled, the audit entries'
//! locators sit in fixed slots (`slots`), part of the index in every
//! respect: fsynced first at checkpoints, removed and rebuilt with it;
//! so do the receipt feed's entries.

use super::live::{Backing, Tree};
use super::slots::{Kind, Slots};
use super::wal::{Op, Position};
use super::{AUDIT, FEED, META, StoreError, TREE_NAMES, durable};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The index's directory inside a store's data directory.
pub const DIR: &str = "index";

/// `meta` key: the journal position the durable index reflects. Written
/// by checkpoints only, never journaled.
const POSITION_KEY: &[u8] = b"journal-position";
/// `meta` key: the queue counters as of the noted position. Written by
/// checkpoints only, never journaled.
/// `meta` key: the next number `Store::next_seq` hands out. Journaled.
const SEQ_KEY: &[u8] = b"next-seq";

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// Opens the index in `data_dir`, or a new one if sled finds the old one
/// damaged (the damaged files are moved aside, then removed: the journal
/// holds everything they held).
pub fn open(data_dir: &Path) -> Result<Opened> {
    let path = dir(data_dir);
    match open_at(&path) {
        Err(sled::Error::Corruption { .. } | sled::Error::ReportableBug(_))
        | Err(sled::Error::Unsupported(_)) => {
            tracing::warn!(
                index = %path.display(),
                "the index is damaged; rebuilding it from the journal (nothing is lost: the journal holds every change)"
            );
            remove(data_dir)?;
            open_at(&path).map_err(|e| failed(data_dir, e))
        }
        other => other.map_err(|e| failed(data_dir, e)),
    }
}

/// A new, empty index in memory (sled's temporary database: `/dev/shm`
/// on Linux), removed when dropped.
pub fn open_temporary() -> Result<Opened> {
    let db = sled::Config::new()
        .temporary(true)
        .flush_every_ms(None)
        .open()?;
    let audit = Slots::temporary(Kind::Audit).map_err(sled::Error::Io)?;
    let feed = Slots::temporary(Kind::Feed).map_err(sled::Error::Io)?;
    Ok(with_trees(db, audit, feed)?)
}

/// An open index: sled, and every tree in its fixed order (the audit
/// chain's locators and the receipt feed in their slots, the others in
/// sled).
pub type Opened = (sled::Db, Vec<Backing>);

/// The store's trees of `db` and the slots, in their fixed order.
fn with_trees(db: sled::Db, audit: Slots, feed: Slots) -> std::result::Result<Opened, sled::Error> {
    let (audit, feed) = (Arc::new(audit), Arc::new(feed));
    let trees = TREE_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| match i {
            AUDIT => Ok(Backing::Slots(Arc::clone(&audit))),
            FEED => Ok(Backing::Slots(Arc::clone(&feed))),
            _ => db.open_tree(n).map(Backing::Sled),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((db, trees))
}

/// Opens a copy of an index made elsewhere (for comparing it).
pub fn open_copy(path: &Path) -> Result<Opened> {
    Ok(open_at(path)?)
}

/// How long an open waits for sled's lock on its files: the last handle
/// of a database closed in this process lets the lock go only once sled's
/// own threads have finished with it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_at(path: &Path) -> std::result::Result<Opened, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_once(path) {
            // sled reports the lock as an `Other` I/O error naming it.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_once(path: &Path) -> std::result::Result<Opened, sled::Error> {
    let db = sled::Config::new()
        .path(path)
        // sled's cache; queued messages live on disk, not here. 8 MiB
        // rather than 16 took 15 MiB off a node holding 300,000 queued
        // messages, 4 rather than 8 took 14 MiB off one holding 1,000,000,
        // each with no change in throughput (`bench`, one sitting).
        .cache_capacity(4 * 1024 * 1024)
        // The indexer's inserts are a sixth of a node's CPU at peak: sled's
        // high-throughput mode took 3-5 % off the CPU per message and
        // added 5 % to the two-node rate (four runs alternating with the
        // default mode, one sitting), with the same disk per message and
        // resident size at 1,000,000 queued (3,012 B, 208 MiB).
        .mode(sled::Mode::HighThroughput)
        // sled is flushed at checkpoints, not on a timer: the journal
        // makes changes durable.
        .flush_every_ms(None)
        .open()?;
    let (audit, audit_existed) = Slots::open(path, Kind::Audit)?;
    let (feed, feed_existed) = Slots::open(path, Kind::Feed)?;
    let noted = db.open_tree(TREE_NAMES[META])?.contains_key(POSITION_KEY)?;
    for (kind, existed) in [(Kind::Audit, audit_existed), (Kind::Feed, feed_existed)] {
        if noted && !existed {
            // The index claims a journal position its slots do not
            // cover: rebuilt, like a damaged sled.
            return Err(sled::Error::Unsupported(format!(
                "{} is missing beside an index that notes a journal position",
                kind.file()
            )));
        }
    }
    with_trees(db, audit, feed)
}

/// Removes the index of a stopped store, durably; the next open rebuilds
/// it from the journal.
pub fn remove(data_dir: &Path) -> Result<()> {
    let path = dir(data_dir);
    if path.exists() {
        std::fs::remove_dir_all(&path).map_err(|source| {
            Error::Store(StoreError::Io {
                what: format!("cannot remove the index {}", path.display()),
                source,
            })
        })?;
        durable::sync_dir(&super::fs::RealFs, data_dir).map_err(|source| {
            Error::Store(StoreError::Io {
                what: format!("cannot sync {}", data_dir.display()),
                source,
            })
        })?;
    }
    Ok(())
}

/// A sled failure while opening the index, named as such.
pub fn failed(data_dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "the index in {} cannot be used: {e} (if no node runs on this data directory, \
         `cluebridge store reindex --data-dir {}` rebuilds it from the journal)",
        dir(data_dir).display(),
        data_dir.display()
    ))
}

/// The journal position the durable index reflects; `None` for a new or
/// rebuilt index (replay every journal file).
pub fn position(trees: &[Tree]) -> Result<Option<Position>> {
    let Some(raw) = trees[META].get(POSITION_KEY)? else {
        return Ok(None);
    };
    Position::decode(&raw)
        .map(Some)
        .ok_or_else(|| Error::corrupt("meta", "the index's journal position does not decode"))
}

/// The next number to hand out, as the last replayed record left it.
pub fn next_seq(trees: &[Tree]) -> Result<u64> {
    Ok(trees[META]
        .get(SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(1, u64::from_be_bytes))
}

/// Whether `op` is the journal write that carries the counter. A running
/// store keeps the counter in memory and notes it in the index at each
/// checkpoint; only a replay applies these writes to the index.
pub(super) fn is_seq_op(op: &Op) -> bool {
    op.tree as usize == META && op.key == SEQ_KEY
}

/// The journal write that carries the counter.
pub(super) fn seq_op(next: u64) -> Op {
    Op {
        tree: META as u8,
        key: SEQ_KEY.to_vec(),
        value: Some(next.to_be_bytes().to_vec()),
    }
}

/// Makes the index durable up to `reached`: notes the position, flushes
/// sled and fsyncs its files. The caller holds the journal's lock, with
/// the journal synced up to `reached`. `flushed` runs between sled's
/// flush and the fsyncs (a crash point of the store's checkpoints).
pub fn checkpoint(
    data_dir: &Path,
    db: &sled::Db,
    trees: &[Tree],
    reached: Position,
    next_seq: u64,
    flushed: impl FnOnce(),
) -> Result<()> {
    let path = dir(data_dir);
    // The slots up to `reached` are durable before the position that
    // claims them can be (sled may write it out at any time).
    for kind in Kind::ALL {
        let slots_file = path.join(kind.file());
        if slots_file.exists() {
            durable::sync_file(&slots_file).map_err(|source| {
                Error::Store(StoreError::Io {
                    what: format!("syncing {}", slots_file.display()),
                    source,
                })
            })?;
        }
    }
    trees[META].insert(POSITION_KEY, reached.encode())?;
    // The counter as it is now: at least what every record up to
    // `reached` carried (numbers handed out since and never journaled
    // are not used by anything durable).
    trees[META].insert(SEQ_KEY, next_seq.to_be_bytes())?;
    db.flush()?;
    flushed();
    let synced = durable::sync_sled(&path).map_err(|source| {
        Error::Store(StoreError::Io {
            what: format!("syncing the index files in {}", path.display()),
            source,
        })
    })?;
    tracing::debug!(
        files = synced.synced().len(),
        epoch = reached.epoch,
        offset = reached.offset,
        "index durable up to the journal position"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index whose slots (audit or feed) are gone, beside a position
    /// it notes, is rebuilt (opened empty: the journal is replayed from
    /// its start), never trusted.
    #[test]
    fn an_index_without_its_slots_is_rebuilt() {
        for kind in Kind::ALL {
            index_without_slots_is_rebuilt(kind);
        }
    }

    fn index_without_slots_is_rebuilt(kind: Kind) {
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, trees) = open(tmp.path()).expect("open");
        trees[META]
            .insert(
                POSITION_KEY,
                &Position {
                    epoch: 1,
                    offset: 8,
                }
                .encode(),
            )
            .expect("note");
        db.flush().expect("flush");
        drop((db, trees));
        let (db, trees) = open(tmp.path()).expect("reopen");
        assert!(
            trees[META].get(POSITION_KEY).expect("get").is_some(),
            "kept"
        );
        drop((db, trees));

        std::fs::remove_file(dir(tmp.path()).join(kind.file())).expect("lose the slots");
        let (_db, trees) = open(tmp.path()).expect("rebuilt");
        assert_eq!(trees[META].get(POSITION_KEY).expect("get"), None);
    }

    /// An index still held by a database closing in this process is
    /// waited for, not reported unusable; one held for good is refused
    /// after the wait, naming the lock.
    #[test]
    fn an_open_waits_for_the_lock_of_a_closing_index() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (held, _) = open(tmp.path()).expect("first open");
        let release = std::thread::spawn(move || {
            // Held a while, as sled's threads hold a database closing.
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
        });
        let (db, _) = open(tmp.path()).expect("opened once the lock was let go");
        release.join().expect("join");

        let started = std::time::Instant::now();
        let err = open(tmp.path()).expect_err("still held");
        assert!(started.elapsed() >= LOCK_WAIT, "it waited first");
        assert!(err.to_string().contains("lock"), "{err}");
        drop(db);
    }
}
