//! Changes journaled but not yet synced: the store applies them to the
//! index only after the group commit's fsync, so that no reader — a
//! forwarder, a `Receive` stream, `GetStatus`, a metrics scrape — ever
//! acts on a change that a failed sync or a power cut could take back.
//! Until then, transactions on the writer thread read them from here.

use super::wal::{Op, Position};
use std::cell::Cell;
use std::collections::BTreeMap;

thread_local! {
    /// Set on the store's writer thread, the only one that runs
    /// transactions and sees pending changes.
    static ON_WRITER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as the store's writer.
pub(super) fn enter_writer() {
    ON_WRITER.with(|w| w.set(true));
}

/// Whether the current thread is the store's writer.
pub(super) fn on_writer() -> bool {
    ON_WRITER.with(Cell::get)
}

/// What a key's pending change says.
pub(super) enum Seen<'a> {
    /// No pending change: read the index.
    Unchanged,
    Removed,
    Value(&'a [u8]),
}

/// Journal records written since the last sync, in order, and the
/// latest pending write of each key, one ordered map per tree (a lookup
/// copies nothing; a prefix is a range).
#[derive(Debug, Default)]
pub(super) struct Pending {
    latest: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    records: Vec<(Vec<Op>, Position)>,
}

impl Pending {
    /// The latest pending change of `key` in `tree`.
    pub fn get(&self, tree: usize, key: &[u8]) -> Seen<'_> {
        match self.latest.get(tree).and_then(|m| m.get(key)) {
            None => Seen::Unchanged,
            Some(None) => Seen::Removed,
            Some(Some(v)) => Seen::Value(v),
        }
    }

    /// A record journaled (not synced); `end` is the journal position
    /// after it.
    pub fn push(&mut self, ops: Vec<Op>, end: Position) {
        for op in &ops {
            let tree = op.tree as usize;
            if self.latest.len() <= tree {
                self.latest.resize_with(tree + 1, BTreeMap::new);
            }
            self.latest[tree].insert(op.key.clone(), op.value.clone());
        }
        self.records.push((ops, end));
    }

    /// The records, oldest first, to apply once synced; clears the view.
    pub fn take(&mut self) -> Vec<(Vec<Op>, Position)> {
        self.latest.iter_mut().for_each(BTreeMap::clear);
        std::mem::take(&mut self.records)
    }

    /// The pending changes of `tree` under `prefix` (`None`: removed).
    pub fn with_prefix(&self, tree: usize, prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let Some(map) = self.latest.get(tree) else {
            return Vec::new();
        };
        map.range::<[u8], _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
    }
}
