//! The live state: the queues a node works from — outboxes, the inbox,
//! leases, receipts waiting to go back, dead letters, paused peers — held
//! in memory, not in sled. Like the index, a change reaches them only
//! after its journal record is synced; at open they come back from the
//! newest snapshot (see `snapshot`) and the journal after it. Their
//! values are message keys and small numbers, never payloads.
//!
//! A [`Tree`] is either one of these maps or a sled tree, behind the
//! subset of sled's API the store uses, so every reader and the journal's
//! replay treat both alike.

use super::indexer::{Merged, Unindexed};
use super::packed::PackedMap;
use super::slots::{SlotIter, Slots};
use super::{DEAD_LETTERS, INBOX, LEASES, OUTBOX, PAUSED_PEERS, RECEIPT_OUTBOX, TREE_NAMES};
use sled::IVec;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The trees held in memory.
pub(super) const LIVE: [usize; 6] = [
    OUTBOX,
    INBOX,
    LEASES,
    RECEIPT_OUTBOX,
    DEAD_LETTERS,
    PAUSED_PEERS,
];

pub(super) fn is_live(tree: usize) -> bool {
    LIVE.contains(&tree)
}

/// A live tree's map: packed, since a queue can hold a million entries.
type Map = PackedMap;

/// The maps of the live trees (indexed like the store's trees; the others
/// stay empty).
#[derive(Debug, Default)]
pub(super) struct Maps {
    maps: Vec<Map>,
}

impl Maps {
    pub fn new() -> Maps {
        Maps {
            maps: vec![Map::new(); TREE_NAMES.len()],
        }
    }

    pub fn map(&self, tree: usize) -> &Map {
        &self.maps[tree]
    }

    pub fn map_mut(&mut self, tree: usize) -> &mut Map {
        &mut self.maps[tree]
    }
}

/// The live maps, shared by every handle on them.
#[derive(Debug)]
pub(super) struct Live {
    maps: RwLock<Maps>,
}

impl Live {
    pub fn new(maps: Maps) -> Arc<Live> {
        Arc::new(Live {
            maps: RwLock::new(maps),
        })
    }

    /// Maps are plain data: a panic while they were held cannot leave a
    /// change half-applied (each insert or remove is whole).
    pub fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// One of the store's trees: in sled, live in memory, or (in a running
/// store) in sled with the writes the indexer has not reached yet.
#[derive(Clone, Debug)]
pub(super) enum Tree {
    Sled(Backing),
    Live(Arc<Live>, usize),
    /// Index tree `usize`, read through its unindexed writes (see
    /// `indexer`).
    Indexed(Backing, usize, Arc<Unindexed>),
}

/// Where an index tree's entries are kept: a sled tree, or (the audit
/// chain's locators) the slots of `slots`.
#[derive(Clone, Debug)]
pub(super) enum Backing {
    Sled(sled::Tree),
    Slots(Arc<Slots>),
}

/// A walk over a backing tree.
pub(super) type BackingIter =
    Box<dyn DoubleEndedIterator<Item = sled::Result<(IVec, IVec)>> + Send>;

impl Backing {
    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        match self {
            Backing::Sled(t) => t.get(key),
            Backing::Slots(s) => s.get(key.as_ref()),
        }
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    pub fn insert(&self, key: &[u8], value: &[u8]) -> sled::Result<Option<IVec>> {
        match self {
            Backing::Sled(t) => t.insert(key, value),
            Backing::Slots(s) => s.insert(key, value),
        }
    }

    pub fn remove(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        match self {
            Backing::Sled(t) => t.remove(key),
            Backing::Slots(s) => s.remove(key),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Backing::Sled(t) => t.len(),
            Backing::Slots(s) => s.len().unwrap_or(0),
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> BackingIter {
        match self {
            Backing::Sled(t) => Box::new(t.range(range)),
            Backing::Slots(s) => Box::new(SlotIter::range(
                s,
                (
                    range.start_bound().map(|k| k.as_ref()),
                    range.end_bound().map(|k| k.as_ref()),
                ),
            )),
        }
    }

    pub fn iter(&self) -> BackingIter {
        self.range::<&[u8], _>(..)
    }
}

/// The store's trees: the index's, with the live ones taken from `live`.
pub(super) fn trees(sled: Vec<Backing>, live: &Arc<Live>) -> Vec<Tree> {
    sled.into_iter()
        .enumerate()
        .map(|(i, t)| {
            if is_live(i) {
                Tree::Live(Arc::clone(live), i)
            } else {
                Tree::Sled(t)
            }
        })
        .collect()
}

/// A running store's trees: its index trees read through `unindexed`.
pub(super) fn indexed(trees: Vec<Tree>, unindexed: &Arc<Unindexed>) -> Vec<Tree> {
    trees
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Tree::Sled(t) => Tree::Indexed(t, i, Arc::clone(unindexed)),
            other => other,
        })
        .collect()
}

/// Every tree in sled (tests of the journal alone).
#[cfg(test)]
pub(super) fn all_sled(sled: Vec<sled::Tree>) -> Vec<Tree> {
    sled.into_iter()
        .map(|t| Tree::Sled(Backing::Sled(t)))
        .collect()
}

/// Owned bounds of a range of keys.
type Range = (Bound<Box<[u8]>>, Bound<Box<[u8]>>);

fn owned<K: AsRef<[u8]>>(b: Bound<&K>) -> Bound<Box<[u8]>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().into()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().into()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The keys that start with `prefix`.
fn prefix_range(prefix: &[u8]) -> Range {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return (Bound::Included(prefix.into()), Bound::Excluded(end.into()));
        }
    }
    (Bound::Included(prefix.into()), Bound::Unbounded)
}

fn pair(k: &[u8], v: &[u8]) -> (IVec, IVec) {
    (IVec::from(k), IVec::from(v))
}

impl Tree {
    /// The slots an index tree is kept in, if it is (see `slots`).
    pub fn slots(&self) -> Option<&Arc<Slots>> {
        match self {
            Tree::Sled(Backing::Slots(s)) | Tree::Indexed(Backing::Slots(s), ..) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        match self {
            Tree::Sled(t) => t.get(key),
            Tree::Indexed(t, i, unindexed) => match unindexed.get(*i, key.as_ref()) {
                Some(latest) => Ok(latest),
                None => t.get(key),
            },
            Tree::Live(live, i) => Ok(live.read().map(*i).get(key.as_ref()).map(IVec::from)),
        }
    }

    /// Writes `key`; an index tree's write goes straight to sled (the
    /// indexer's own writes, and the checkpoint's notes in `meta`).
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> sled::Result<Option<IVec>> {
        match self {
            Tree::Sled(t) | Tree::Indexed(t, ..) => t.insert(key.as_ref(), value.as_ref()),
            Tree::Live(live, i) => Ok(live
                .write()
                .map_mut(*i)
                .insert(key.as_ref(), value.as_ref())
                .map(|v| IVec::from(&*v))),
        }
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        match self {
            Tree::Sled(t) | Tree::Indexed(t, ..) => t.remove(key.as_ref()),
            Tree::Live(live, i) => Ok(live
                .write()
                .map_mut(*i)
                .remove(key.as_ref())
                .map(|v| IVec::from(&*v))),
        }
    }

    /// Applies a synced write (`None` removes the key): to an index
    /// tree of a running store through the indexer, to any other tree at
    /// once.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) -> sled::Result<()> {
        if let Tree::Indexed(_, i, unindexed) = self {
            unindexed.write(*i, key, value);
            return Ok(());
        }
        match value {
            Some(v) => self.insert(key, v)?,
            None => self.remove(key)?,
        };
        Ok(())
    }

    pub fn first(&self) -> sled::Result<Option<(IVec, IVec)>> {
        match self {
            Tree::Sled(..) | Tree::Indexed(..) => self.iter().next().transpose(),
            Tree::Live(live, i) => Ok(live
                .read()
                .map(*i)
                .first_key_value()
                .map(|(k, v)| pair(k, v))),
        }
    }

    pub fn last(&self) -> sled::Result<Option<(IVec, IVec)>> {
        match self {
            Tree::Sled(..) | Tree::Indexed(..) => self.iter().next_back().transpose(),
            Tree::Live(live, i) => Ok(live
                .read()
                .map(*i)
                .last_key_value()
                .map(|(k, v)| pair(k, v))),
        }
    }

    /// Entries; a full scan for sled trees (never on a hot path).
    pub fn len(&self) -> usize {
        match self {
            Tree::Sled(t) => t.len(),
            Tree::Indexed(t, i, unindexed) => {
                let unseen = unindexed.range(*i, (Bound::Unbounded, Bound::Unbounded));
                unseen.iter().fold(t.len(), |n, (k, v)| {
                    match (t.contains_key(k).unwrap_or(false), v.is_some()) {
                        (false, true) => n + 1,
                        (true, false) => n.saturating_sub(1),
                        _ => n,
                    }
                })
            }
            Tree::Live(live, i) => live.read().map(*i).len(),
        }
    }

    pub fn iter(&self) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.iter()),
            Tree::Indexed(t, i, unindexed) => Iter::Merged(Box::new(Merged::new(
                t.iter(),
                unindexed.range(*i, (Bound::Unbounded, Bound::Unbounded)),
            ))),
            Tree::Live(live, i) => Iter::live(live, *i, (Bound::Unbounded, Bound::Unbounded)),
        }
    }

    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        match self {
            Tree::Sled(..) | Tree::Indexed(..) => self.range(prefix_range(prefix.as_ref())),
            Tree::Live(live, i) => Iter::live(live, *i, prefix_range(prefix.as_ref())),
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.range(range)),
            Tree::Indexed(t, i, unindexed) => {
                let (start, end) = (owned(range.start_bound()), owned(range.end_bound()));
                let unseen = unindexed.range(
                    *i,
                    (start.as_ref().map(|k| &**k), end.as_ref().map(|k| &**k)),
                );
                Iter::Merged(Box::new(Merged::new(t.range((start, end)), unseen)))
            }
            Tree::Live(live, i) => Iter::live(
                live,
                *i,
                (owned(range.start_bound()), owned(range.end_bound())),
            ),
        }
    }
}

/// Entries of a tree in key order. Over a live tree each step takes the
/// read lock for one lookup and lets it go, so a long walk never holds
/// up the writer; it sees each key as it is when reached.
pub(super) enum Iter {
    Sled(BackingIter),
    Merged(Box<Merged>),
    Live {
        live: Arc<Live>,
        tree: usize,
        range: Range,
    },
}

impl Iter {
    fn live(live: &Arc<Live>, tree: usize, range: Range) -> Iter {
        Iter::Live {
            live: Arc::clone(live),
            tree,
            range,
        }
    }
}

/// Which end of its range a walk takes the next entry from.
enum End {
    Front,
    Back,
}

/// One step of a walk over a live tree: the first (or last) entry left
/// in `range`, which then shrinks past it. The read lock is held for this
/// lookup only.
fn step(
    live: &Live,
    tree: usize,
    range: &mut Range,
    end: End,
) -> Option<sled::Result<(IVec, IVec)>> {
    let maps = live.read();
    let within = (
        range.0.as_ref().map(|k| &**k),
        range.1.as_ref().map(|k| &**k),
    );
    let (k, v) = match end {
        End::Front => maps.map(tree).first_in(within)?,
        End::Back => maps.map(tree).last_in(within)?,
    };
    let out = pair(k, v);
    drop(maps);
    let past = Bound::Excluded(out.0.as_ref().into());
    match end {
        End::Front => range.0 = past,
        End::Back => range.1 = past,
    }
    Some(Ok(out))
}

impl Iterator for Iter {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(it) => it.next(),
            Iter::Merged(it) => it.next(),
            Iter::Live { live, tree, range } => step(live, *tree, range, End::Front),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(it) => it.next_back(),
            Iter::Merged(it) => it.next_back(),
            Iter::Live { live, tree, range } => step(live, *tree, range, End::Back),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live tree answers like a sled tree: gets, prefix scans, ranges,
    /// first and last, whatever is inserted or removed while a walk runs.
    #[test]
    fn a_live_tree_reads_like_sled() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let sled_tree = db.open_tree("outbox").expect("tree");
        let live = Live::new(Maps::new());
        let both = [
            Tree::Sled(Backing::Sled(sled_tree)),
            Tree::Live(Arc::clone(&live), OUTBOX),
        ];
        for t in &both {
            for k in [
                &b"a\0\x01"[..],
                b"a\0\x02",
                b"a\xff",
                b"b\0\x01",
                b"\xff\xff",
            ] {
                t.insert(k, k).expect("insert");
            }
        }
        let keys = |it: Iter| -> Vec<Vec<u8>> { it.map(|kv| kv.expect("kv").0.to_vec()).collect() };
        for t in &both {
            assert_eq!(
                keys(t.scan_prefix(b"a\0")),
                vec![b"a\0\x01".to_vec(), b"a\0\x02".to_vec()]
            );
            assert_eq!(keys(t.scan_prefix(b"\xff")), vec![b"\xff\xff".to_vec()]);
            assert_eq!(
                keys(t.range(&b"a\xff"[..]..&b"b\0\x01"[..])),
                vec![b"a\xff".to_vec()]
            );
            assert_eq!(keys(t.range(..=&b"a\0\x01"[..])).len(), 1);
            assert_eq!(
                t.first().expect("first").expect("some").0.as_ref(),
                b"a\0\x01"
            );
            assert_eq!(
                t.last().expect("last").expect("some").0.as_ref(),
                b"\xff\xff"
            );
            assert_eq!(
                t.get(b"b\0\x01").expect("get").as_deref(),
                Some(&b"b\0\x01"[..])
            );
            assert_eq!(
                t.remove(b"b\0\x01").expect("remove").as_deref(),
                Some(&b"b\0\x01"[..])
            );
            assert_eq!(t.len(), 4);
        }
        let mut walk = both[1].iter();
        walk.next();
        both[1].remove(b"a\0\x02").expect("removed while walking");
        assert_eq!(walk.next().expect("next").expect("kv").0.as_ref(), b"a\xff");
    }
}
