//! Opening a store: the index (sled) and the live state are each brought
//! to the end of the journal from the position they reflect — the index
//! from the one its last checkpoint noted, the live state from its newest
//! valid snapshot — in one walk over the journal from the older of the
//! two. Without a snapshot the live state is replayed from the journal's
//! first record; without an index, the index too.

use super::counters::{self, Counters};
use super::evidence;
use super::fs::Fs;
use super::live::{self, Live, Maps, Tree};
use super::segments::Segments;
use super::wal::{Op, Position, Wal};
use super::{index, read_only, snapshot};
use crate::error::Result;
use std::path::Path;
use std::sync::Arc;

/// A store's state brought to the end of its journal.
pub(super) struct Recovered {
    pub db: sled::Db,
    pub trees: Vec<Tree>,
    pub live: Arc<Live>,
    pub wal: Wal,
    pub counters: Counters,
    /// Records replayed into the index or the live state.
    pub replayed: usize,
    /// The position of the snapshot loaded, if one was.
    pub snapshot: Option<Position>,
    /// The index was new or rebuilt (replayed from the first record).
    pub rebuilt_index: bool,
}

/// Whether a record at `at` is past `reflected` (`None`: nothing is
/// reflected, every record is due).
fn due(at: Position, reflected: Option<Position>) -> bool {
    reflected.is_none_or(|r| at >= r)
}

/// Opens the index in `dir`, loads the newest snapshot, and replays the
/// journal after them (see the module doc).
pub(super) fn recover(fs: Arc<dyn Fs>, dir: &Path, segments: &Segments) -> Result<Recovered> {
    let (db, sled_trees) = index::open(dir)?;
    let loaded = snapshot::load_newest(&*fs, dir)?;
    let (snapshot, counters, maps) = match loaded {
        Some(s) => (Some(s.position), s.counters, s.maps),
        None => (None, Counters::default(), Maps::new()),
    };
    let live = Live::new(maps);
    let trees = live::trees(sled_trees, &live);
    let indexed = index::position(&trees)?;
    let from = match (indexed, snapshot) {
        (Some(i), Some(s)) => Some(i.min(s)),
        _ => None,
    };
    // A log record whose envelope did not reach its segment was never
    // acknowledged (segments are synced first): replay stops there. A
    // segment that cannot be read fails the open instead.
    let complete = |ops: &[Op]| read_only::envelopes_present(segments, ops);
    let mut counters = counters;
    let now = crate::now_ms();
    let mut apply = |ops: &[Op], at: Position| {
        let (index_due, live_due) = (due(at, indexed), due(at, snapshot));
        let ops: Vec<Op> = evidence::replayed(&trees, ops, at)?
            .into_iter()
            .filter(|op| {
                if live::is_live(op.tree as usize) {
                    live_due
                } else {
                    index_due
                }
            })
            .collect();
        // The counters follow the live trees alone, exactly: the snapshot
        // holds them as they were at its position.
        counters::apply_counted(&trees, &ops, &mut counters, now)
    };
    let (wal, replayed) = Wal::recover(fs, dir, &mut apply, &complete, from)?;
    Ok(Recovered {
        db,
        trees,
        live,
        wal,
        counters,
        replayed,
        snapshot,
        rebuilt_index: indexed.is_none(),
    })
}
