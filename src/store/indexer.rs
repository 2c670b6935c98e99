//! The indexer: sled follows the journal on its own thread, off the
//! group commit's path.
//!
//! After a group's fsync the writer applies its changes to the live state
//! and hands the index's share of them to [`Unindexed`]: each write goes
//! into an overlay that every read of an index tree consults first (see
//! `live::Tree::Indexed`), and into a queue. The indexer thread applies
//! the queue to sled in journal order, then drops each overlay entry that
//! no later write replaced, and advances the position sled reflects
//! (what a checkpoint notes; see `checkpoint`). So the writer answers its
//! callers without waiting for sled, and readers still see every synced
//! change at once: the overlay holds exactly what sled lacks.
//!
//! The indexer lets writes gather for up to [`LINGER`] (or
//! [`LINGER_WRITES`] of them, or until a checkpoint waits for it) before
//! it takes them: a message's record is rewritten as it moves from
//! `accepted` to `delivered` to `acknowledged`, usually within that time,
//! and only the last write of a key in a run reaches sled. The slots'
//! entries of a run, numbered one after another, go out with one `pwrite`
//! per stretch of consecutive numbers.
//!
//! The queue is bounded: a writer that runs [`MAX_UNINDEXED`] writes ahead
//! of the indexer waits for it.

use super::live::{BackingIter, Tree};
use super::wal::Position;
use crate::error::Result;
use sled::IVec;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Writes the writer may run ahead of the indexer.
pub(super) const MAX_UNINDEXED: usize = 64 * 1024;
/// How long the indexer lets synced writes gather before it takes them.
pub(super) const LINGER: Duration = Duration::from_millis(200);
/// Writes that end the wait at once.
pub(super) const LINGER_WRITES: usize = MAX_UNINDEXED / 4;

/// One index write waiting for the indexer; `version` tells it from a
/// later write of the same key.
struct Queued {
    tree: u8,
    key: Arc<[u8]>,
    value: Option<Arc<[u8]>>,
    version: u64,
}

enum Item {
    Write(Queued),
    /// Every write before this one belongs to records up to here.
    End(Position),
}

/// A key and its value, shared with the queue.
type Entry = (Arc<[u8]>, Arc<[u8]>);

/// An overlay entry: the latest unindexed write of a key.
#[derive(Clone, Debug)]
struct Latest {
    version: u64,
    value: Option<Arc<[u8]>>,
}

/// Keys and values are shared with the queue: one copy of each write.
type Overlay = BTreeMap<Arc<[u8]>, Latest>;

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    writes: usize,
    next_version: u64,
    /// The position sled reflects: every record up to it is in sled.
    indexed: Position,
    /// Set when the writer stops: the indexer drains and returns.
    closing: bool,
    /// The indexer has taken a run and not finished it.
    applying: bool,
    /// The indexer failed: nothing more reaches sled.
    failed: bool,
    /// Callers waiting for sled to reach a position: the indexer does
    /// not linger for them.
    waiting: usize,
    /// The indexer is waiting out its linger: a seal need not wake it
    /// (unless enough writes are queued to end the wait).
    lingering: bool,
}

/// Synced index writes not yet in sled (see the module).
pub(super) struct Unindexed {
    /// One overlay per tree (only index trees use theirs).
    overlay: RwLock<Vec<Overlay>>,
    queue: Mutex<Queue>,
    /// Signalled when writes are queued or the writer stops.
    queued: Condvar,
    /// Signalled when the indexer has applied some.
    indexed: Condvar,
}

impl std::fmt::Debug for Unindexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unindexed")
            .field("indexed", &self.lock_queue().indexed)
            .finish_non_exhaustive()
    }
}

impl Unindexed {
    /// Nothing unindexed; sled reflects the journal up to `indexed`.
    pub fn new(trees: usize, indexed: Position) -> Unindexed {
        Unindexed {
            overlay: RwLock::new(vec![Overlay::new(); trees]),
            queue: Mutex::new(Queue {
                indexed,
                ..Queue::default()
            }),
            queued: Condvar::new(),
            indexed: Condvar::new(),
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // Plain data: a panic while it was held leaves whole entries.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Vec<Overlay>> {
        self.overlay.read().unwrap_or_else(|e| e.into_inner())
    }

    fn overlay_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Overlay>> {
        self.overlay.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A synced write of index tree `tree`: visible to readers from now
    /// on, in sled once the indexer reaches it.
    pub fn write(&self, tree: usize, key: &[u8], value: Option<&[u8]>) {
        let mut queue = self.lock_queue();
        queue.next_version += 1;
        let version = queue.next_version;
        let (key, value): (Arc<[u8]>, Option<Arc<[u8]>>) = (key.into(), value.map(Into::into));
        self.overlay_mut()[tree].insert(
            key.clone(),
            Latest {
                version,
                value: value.clone(),
            },
        );
        queue.writes += 1;
        queue.items.push_back(Item::Write(Queued {
            tree: tree as u8,
            key,
            value,
            version,
        }));
    }

    /// Marks the end of a record's writes (at `end` in the journal).
    pub fn end_record(&self, end: Position) {
        self.lock_queue().items.push_back(Item::End(end));
    }

    /// Hands the records ended so far to the indexer, then waits while it
    /// is more than [`MAX_UNINDEXED`] writes behind.
    pub fn seal(&self) {
        let mut queue = self.lock_queue();
        if !queue.lingering || queue.writes >= LINGER_WRITES {
            self.queued.notify_all();
        }
        while queue.writes > MAX_UNINDEXED && !queue.closing {
            queue = self.indexed.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Tells the indexer to drain what is queued and stop.
    pub fn close(&self) {
        self.lock_queue().closing = true;
        self.queued.notify_all();
    }

    /// Waits until sled reflects the journal up to `target` at least;
    /// returns the position it reflects, or `None` if the indexer
    /// stopped short of it (it failed, or the store is closing with
    /// nothing left to index).
    pub fn wait_indexed(&self, target: Position) -> Option<Position> {
        let mut queue = self.lock_queue();
        queue.waiting += 1;
        self.queued.notify_all();
        let reached = loop {
            if queue.indexed >= target {
                break Some(queue.indexed);
            }
            if queue.failed || (queue.closing && queue.items.is_empty() && !queue.applying) {
                break None;
            }
            queue = self.indexed.wait(queue).unwrap_or_else(|e| e.into_inner());
        };
        queue.waiting -= 1;
        reached
    }

    /// The latest unindexed write of `key` in `tree`: `None` if sled has
    /// the key's latest value, `Some(None)` if it was removed.
    pub fn get(&self, tree: usize, key: &[u8]) -> Option<Option<IVec>> {
        self.overlay()[tree]
            .get(key)
            .map(|l| l.value.as_deref().map(IVec::from))
    }

    /// The unindexed writes of `tree` within `range`, in key order.
    pub fn range(&self, tree: usize, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Unseen {
        self.overlay()[tree]
            .range::<[u8], _>(range)
            .map(|(k, l)| (IVec::from(&**k), l.value.as_deref().map(IVec::from)))
            .collect()
    }

    /// The next run of queued writes, up to and including the last end
    /// marker queued, once it has lingered (see the module); `None` once
    /// closing and drained.
    fn next_run(&self) -> Option<Vec<Item>> {
        let mut queue = self.lock_queue();
        let mut deadline = None;
        loop {
            let sealed = queue.items.iter().rposition(|i| matches!(i, Item::End(_)));
            if let Some(last) = sealed {
                let now = Instant::now();
                let until = *deadline.get_or_insert(now + LINGER);
                let go = now >= until
                    || queue.closing
                    || queue.waiting > 0
                    || queue.writes >= LINGER_WRITES;
                queue.lingering = !go;
                if go {
                    queue.applying = true;
                    return Some(queue.items.drain(..=last).collect());
                }
                queue = self
                    .queued
                    .wait_timeout(queue, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            if queue.closing {
                return None;
            }
            queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Applies the queued writes to `sled` until the writer stops, calling
    /// `between` between two records' writes. A sled failure is returned
    /// (the store latches on it; what stays queued is replayed from the
    /// journal at the next start).
    pub fn run(&self, trees: &[Tree], mut between: impl FnMut()) -> Result<()> {
        while let Some(run) = self.next_run() {
            if let Err(e) = self.apply(trees, run, &mut between) {
                // Nothing more reaches sled: nobody may wait for it.
                let mut queue = self.lock_queue();
                (queue.failed, queue.closing, queue.applying) = (true, true, false);
                self.indexed.notify_all();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies whatever is sealed now, on the calling thread (the writer's
    /// last group, once the indexer has stopped).
    pub fn drain(&self, trees: &[Tree]) -> Result<()> {
        let run: Vec<Item> = {
            let mut queue = self.lock_queue();
            let last = queue.items.iter().rposition(|i| matches!(i, Item::End(_)));
            match last {
                Some(last) => queue.items.drain(..=last).collect(),
                None => return Ok(()),
            }
        };
        self.apply(trees, run, &mut || {})
    }

    fn apply(&self, trees: &[Tree], run: Vec<Item>, between: &mut impl FnMut()) -> Result<()> {
        let last = last_writes(&run);
        let mut done: Vec<(u8, Arc<[u8]>, u64)> = Vec::new();
        // Slot entries of the run, by tree: written together at the end.
        let mut slotted: HashMap<u8, Vec<Entry>> = HashMap::new();
        let mut end = None;
        for item in run {
            match item {
                Item::Write(q) => {
                    if last.get(&(q.tree, q.key.clone())) == Some(&q.version) {
                        let tree = &trees[q.tree as usize];
                        match &q.value {
                            Some(v) if tree.slots().is_some() => slotted
                                .entry(q.tree)
                                .or_default()
                                .push((q.key.clone(), v.clone())),
                            // Straight to sled (see `Tree::insert`).
                            Some(v) => drop(tree.insert(&*q.key, &**v)?),
                            None => drop(tree.remove(&*q.key)?),
                        }
                    }
                    done.push((q.tree, q.key, q.version));
                }
                Item::End(at) => {
                    if end.is_some() {
                        between();
                    }
                    end = Some(at);
                }
            }
        }
        for (tree, entries) in slotted {
            if let Some(slots) = trees[tree as usize].slots() {
                slots.insert_many(entries.iter().map(|(k, v)| (&**k, &**v)))?;
            }
        }
        {
            let mut overlay = self.overlay_mut();
            for (tree, key, version) in &done {
                let map = &mut overlay[*tree as usize];
                if map.get(key).is_some_and(|l| l.version == *version) {
                    map.remove(key);
                }
            }
        }
        let mut queue = self.lock_queue();
        queue.applying = false;
        queue.writes -= done.len();
        if let Some(at) = end {
            queue.indexed = queue.indexed.max(at);
        }
        self.indexed.notify_all();
        Ok(())
    }
}

/// The version of the last write of each key in `run`: only it reaches
/// sled, the earlier ones in the run are replaced before anyone could
/// read sled between them (the position sled reflects moves only once
/// the whole run is in).
fn last_writes(run: &[Item]) -> HashMap<(u8, Arc<[u8]>), u64> {
    let mut last = HashMap::with_capacity(run.len());
    for item in run {
        if let Item::Write(q) = item {
            last.insert((q.tree, q.key.clone()), q.version);
        }
    }
    last
}

/// Unindexed writes of a range, as a walk merges them with sled's.
pub(super) type Unseen = VecDeque<(IVec, Option<IVec>)>;

/// A walk over an index tree: sled's entries merged with the writes not
/// yet in sled (taken when the walk starts), these winning on equal keys
/// and removals hiding sled's entry.
pub(super) struct Merged {
    sled: BackingIter,
    unseen: Unseen,
    front: Option<(IVec, IVec)>,
    back: Option<(IVec, IVec)>,
    /// The last keys returned from each end: a walk only moves on, even
    /// if sled, written by the indexer meanwhile, offers a key again.
    passed_front: Option<IVec>,
    passed_back: Option<IVec>,
}

impl Merged {
    pub fn new(sled: BackingIter, unseen: Unseen) -> Merged {
        Merged {
            sled,
            unseen,
            front: None,
            back: None,
            passed_front: None,
            passed_back: None,
        }
    }

    /// The next entry from one end (`forward`: the front), before the
    /// guard against keys offered again.
    fn take(&mut self, forward: bool) -> Option<sled::Result<(IVec, IVec)>> {
        use std::cmp::Ordering;
        loop {
            let (mine, theirs) = if forward {
                (&mut self.front, &mut self.back)
            } else {
                (&mut self.back, &mut self.front)
            };
            if mine.is_none() {
                let next = if forward {
                    self.sled.next()
                } else {
                    self.sled.next_back()
                };
                *mine = match next {
                    Some(Ok(kv)) => Some(kv),
                    Some(Err(e)) => return Some(Err(e)),
                    None => theirs.take(),
                };
            }
            let unseen = if forward {
                self.unseen.front()
            } else {
                self.unseen.back()
            };
            // `Less`: sled's entry comes first in the walk's direction.
            let order = match (&*mine, unseen) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((s, _)), Some((u, _))) if forward => s.cmp(u),
                (Some((s, _)), Some((u, _))) => u.cmp(s),
            };
            if order == Ordering::Less {
                return mine.take().map(Ok);
            }
            if order == Ordering::Equal {
                *mine = None;
            }
            let popped = if forward {
                self.unseen.pop_front()
            } else {
                self.unseen.pop_back()
            };
            if let Some((k, Some(v))) = popped {
                return Some(Ok((k, v)));
            }
        }
    }

    /// The next entry from one end, past every key already returned from
    /// either end.
    fn walk(&mut self, forward: bool) -> Option<sled::Result<(IVec, IVec)>> {
        loop {
            let item = self.take(forward)?;
            let Ok((k, v)) = item else { return Some(item) };
            let past_front = self.passed_front.as_ref().is_none_or(|p| k > *p);
            let before_back = self.passed_back.as_ref().is_none_or(|p| k < *p);
            if past_front && before_back {
                let passed = if forward {
                    &mut self.passed_front
                } else {
                    &mut self.passed_back
                };
                *passed = Some(k.clone());
                return Some(Ok((k, v)));
            }
            // Reached what the other end returned: the walk is done.
            if (forward && !before_back) || (!forward && !past_front) {
                return None;
            }
        }
    }
}

impl Iterator for Merged {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk(true)
    }
}

impl DoubleEndedIterator for Merged {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.walk(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::live::Tree;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..4, 1..4)
    }

    fn view(tree: &Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("kv"))
            .collect()
    }

    fn check(tree: &Tree, model: &BTreeMap<Vec<u8>, Vec<u8>>, probe: &[u8]) {
        let want: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(view(tree), want);
        let mut back: Vec<_> = tree
            .iter()
            .rev()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("kv"))
            .collect();
        back.reverse();
        assert_eq!(back, want);
        assert_eq!(tree.len(), model.len());
        assert_eq!(
            tree.get(probe).expect("get").map(|v| v.to_vec()),
            model.get(probe).cloned()
        );
        let from: Vec<_> = tree
            .range(probe..)
            .map(|kv| kv.expect("kv").0.to_vec())
            .collect();
        let want_from: Vec<_> = model
            .range(probe.to_vec()..)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(from, want_from);
        assert_eq!(
            tree.first().expect("first").map(|(k, _)| k.to_vec()),
            model.keys().next().cloned()
        );
        assert_eq!(
            tree.last().expect("last").map(|(k, _)| k.to_vec()),
            model.keys().next_back().cloned()
        );
    }

    proptest! {
        /// Reads of an index tree see every synced write at once, whether
        /// the indexer has reached it or not; once it has, sled holds
        /// exactly that and the overlay is empty.
        #[test]
        fn reads_see_every_write_before_and_after_the_indexer(
            initial in prop::collection::btree_map(key(), prop::collection::vec(any::<u8>(), 0..4), 0..12),
            writes in prop::collection::vec((key(), prop::option::of(prop::collection::vec(any::<u8>(), 0..4))), 0..40),
            split in 0usize..40,
            probe in key(),
        ) {
            let db = sled::Config::new().temporary(true).open().expect("sled");
            let sled_tree = db.open_tree("t").expect("tree");
            for (k, v) in &initial {
                sled_tree.insert(k.as_slice(), v.as_slice()).expect("insert");
            }
            let unindexed = Arc::new(Unindexed::new(1, Position::default()));
            let tree = Tree::Indexed(
                crate::store::live::Backing::Sled(sled_tree.clone()),
                0,
                Arc::clone(&unindexed),
            );
            let mut model = initial.clone();
            let split = split.min(writes.len());
            let mut offset = 0;
            for (n, (k, v)) in writes.iter().enumerate() {
                tree.apply(k, v.as_deref()).expect("apply");
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
                offset += 1;
                unindexed.end_record(Position { epoch: 0, offset });
                if n + 1 == split {
                    // The indexer reaches the first records only.
                    unindexed.drain(std::slice::from_ref(&tree)).expect("drain");
                }
                check(&tree, &model, &probe);
            }
            unindexed.drain(std::slice::from_ref(&tree)).expect("drain");
            check(&tree, &model, &probe);
            let in_sled: BTreeMap<Vec<u8>, Vec<u8>> = sled_tree
                .iter()
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("kv"))
                .collect();
            prop_assert_eq!(in_sled, model);
            prop_assert!(unindexed.overlay()[0].is_empty());
            prop_assert_eq!(
                unindexed.wait_indexed(Position { epoch: 0, offset }),
                Some(Position { epoch: 0, offset })
            );
        }
    }
}
