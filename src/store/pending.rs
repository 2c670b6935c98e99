//! Changes journaled but not yet synced: the store applies them to the
//! index only after the group commit's fsync, so that no reader — a
//! forwarder, a `Receive` stream, `GetStatus`, a metrics scrape — ever
//! acts on a change that a failed sync or a power cut could take back.
//! Until then, transactions on the writer thread read them from here.

use super::wal::{Op, Position};
use std::cell::Cell;
use std::collections::HashMap;

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

/// Journal records written since the last sync, in order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    latest: HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    records: Vec<(Vec<Op>, Position)>,
}

impl Pending {
    /// The latest pending change of `key` in `tree`.
    pub fn get(&self, tree: usize, key: &[u8]) -> Seen<'_> {
        match self.latest.get(&(tree as u8, key.to_vec())) {
            None => Seen::Unchanged,
            Some(None) => Seen::Removed,
            Some(Some(v)) => Seen::Value(v),
        }
    }

    /// A record journaled (not synced); `end` is the journal position
    /// after it.
    pub fn push(&mut self, ops: Vec<Op>, end: Position) {
        for op in &ops {
            self.latest
                .insert((op.tree, op.key.clone()), op.value.clone());
        }
        self.records.push((ops, end));
    }

    /// The records, oldest first, to apply once synced; clears the view.
    pub fn take(&mut self) -> Vec<(Vec<Op>, Position)> {
        self.latest.clear();
        std::mem::take(&mut self.records)
    }

    /// The pending changes of `tree` under `prefix` (`None`: removed).
    pub fn with_prefix(&self, tree: usize, prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.latest
            .iter()
            .filter(|((t, k), _)| *t as usize == tree && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }
}
