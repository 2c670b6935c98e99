//! Queue depths kept as counters, so that a metrics scrape or `queues`
//! costs the same at ten messages and at ten million: updated as changes
//! are applied to the live state, saved with it in each snapshot, and
//! brought forward by the journal's replay at open (exactly: the live
//! trees and the counters come from the same snapshot).

use super::keys;
use super::live::{self, Tree};
use super::segments::Locator;
use super::{DEAD_LETTERS, INBOX, LEASES, OUTBOX, RECEIPT_OUTBOX};
use crate::error::Result;
use std::collections::{BTreeSet, HashMap};

/// One peer's outbox: envelopes waiting, and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxDepth {
    pub count: u64,
    pub bytes: u64,
}

/// The depths of every live queue. Saved in each snapshot with the live
/// trees, so that an open never counts the queues.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Counters {
    outbox: HashMap<String, OutboxDepth>,
    receipt_outbox: HashMap<String, u64>,
    inbox: u64,
    /// The inbox entries that were not ready when they were queued
    /// (released with a delay, redelivered after a backoff), by key (ready
    /// time first): the only ones that can be "delayed" at a later time.
    delayed: BTreeSet<Vec<u8>>,
    leases: u64,
    /// Dead letters by the time they were set aside.
    dead: BTreeSet<(u64, Vec<u8>)>,
}

/// The peer a `peer \0 …` queue key belongs to.
fn peer_of(key: &[u8]) -> String {
    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}

impl Counters {
    /// Notes one applied write: `old` is what the key held before, `new`
    /// what it holds now (`None`: absent).
    pub fn changed(
        &mut self,
        tree: usize,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        now_ms: u64,
    ) {
        let delta: i64 = match (old.is_some(), new.is_some()) {
            (false, true) => 1,
            (true, false) => -1,
            _ => return,
        };
        let step = |n: &mut u64| *n = n.saturating_add_signed(delta);
        match tree {
            OUTBOX => {
                let depth = self.outbox.entry(peer_of(key)).or_default();
                step(&mut depth.count);
                // The entry's value is the envelope's locator.
                let bytes = new
                    .or(old)
                    .and_then(Locator::decode)
                    .map_or(0, |at| u64::from(at.len));
                depth.bytes = depth.bytes.saturating_add_signed(delta * bytes as i64);
            }
            RECEIPT_OUTBOX => step(self.receipt_outbox.entry(peer_of(key)).or_default()),
            INBOX => {
                step(&mut self.inbox);
                if delta > 0 && keys::first_u64(key) > now_ms {
                    self.delayed.insert(key.to_vec());
                } else if delta < 0 {
                    self.delayed.remove(key);
                }
            }
            LEASES => step(&mut self.leases),
            DEAD_LETTERS => {
                let at = keys::first_u64(new.or(old).unwrap_or_default());
                if delta > 0 {
                    self.dead.insert((at, key.to_vec()));
                } else {
                    self.dead.remove(&(at, key.to_vec()));
                }
            }
            _ => {}
        }
    }

    pub fn outbox(&self, peer: &str) -> OutboxDepth {
        self.outbox.get(peer).copied().unwrap_or_default()
    }

    pub fn receipt_outbox(&self, peer: &str) -> u64 {
        self.receipt_outbox.get(peer).copied().unwrap_or(0)
    }

    /// Inbox entries ready at `now_ms` and delayed past it.
    pub fn inbox(&self, now_ms: u64) -> (u64, u64) {
        let future = keys::pair(now_ms.saturating_add(1), 0);
        let delayed = self.delayed.range(future..).count() as u64;
        (self.inbox.saturating_sub(delayed), delayed)
    }

    pub fn leases(&self) -> u64 {
        self.leases
    }

    /// How many dead letters, and when the oldest was set aside.
    pub fn dead_letters(&self) -> (u64, Option<u64>) {
        (self.dead.len() as u64, self.dead.first().map(|(at, _)| *at))
    }
}

/// Applies one record's writes to the trees, in order, noting each write
/// of a live tree in `counters`.
pub(super) fn apply_counted(
    trees: &[Tree],
    ops: &[super::wal::Op],
    counters: &mut Counters,
    now_ms: u64,
) -> Result<()> {
    for op in ops {
        let tree = trees.get(op.tree as usize).ok_or_else(|| {
            crate::error::Error::corrupt(
                "journal",
                format!("record names tree {} of {}", op.tree, trees.len()),
            )
        })?;
        if !live::is_live(op.tree as usize) {
            // The index: no counter, and (in a running store) through
            // the indexer.
            tree.apply(&op.key, op.value.as_deref())?;
            continue;
        }
        let old = match &op.value {
            Some(v) => tree.insert(op.key.as_slice(), v.as_slice())?,
            None => tree.remove(op.key.as_slice())?,
        };
        counters.changed(
            op.tree as usize,
            &op.key,
            old.as_deref(),
            op.value.as_deref(),
            now_ms,
        );
    }
    Ok(())
}
