//! An ordered map of byte keys to byte values, packed for memory: the
//! live queues hold a million entries when a peer is down for long, and a
//! `BTreeMap` of boxed keys and values spends about 160 bytes on an
//! outbox entry of 60 (two allocations, and tree nodes a little over half
//! full when keys arrive in order).
//!
//! Entries live in chunks of up to [`CHUNK_BYTES`]: one buffer of
//! length-prefixed keys and values in key order, and the offset of each
//! entry for binary search. The chunks sit in a `BTreeMap` by their lower
//! bound. A key appended past the end of a full chunk starts a new one, so
//! queues filled in key order pack their chunks full; other inserts split
//! a full chunk in halves, and a chunk that shrinks to a quarter joins
//! its neighbour.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A chunk splits when its entries pass this many bytes.
const CHUNK_BYTES: usize = 4096;

/// Buffers grow by at least this much, not by doubling: a chunk's buffer
/// stays within a step of its content.
const GROWTH: usize = 512;

/// Entries in key order, packed: `varint key length | varint value
/// length | key | value`, one after another.
#[derive(Clone, Debug, Default)]
struct Chunk {
    buf: Vec<u8>,
    starts: Vec<u32>,
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint(buf: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let b = buf[*at];
        *at += 1;
        n |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return n;
        }
        shift += 7;
    }
}

fn encoded(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(key.len() + value.len() + 4);
    put_varint(&mut e, key.len());
    put_varint(&mut e, value.len());
    e.extend_from_slice(key);
    e.extend_from_slice(value);
    e
}

impl Chunk {
    fn count(&self) -> usize {
        self.starts.len()
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }

    fn span(&self, i: usize) -> (usize, usize) {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.buf.len(), |&s| s as usize);
        (start, end)
    }

    fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        let mut at = self.starts[i] as usize;
        let klen = varint(&self.buf, &mut at);
        let vlen = varint(&self.buf, &mut at);
        let key = &self.buf[at..at + klen];
        (key, &self.buf[at + klen..at + klen + vlen])
    }

    fn key(&self, i: usize) -> &[u8] {
        self.entry(i).0
    }

    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The index of the first entry at or past `bound` (as a lower bound).
    fn lower(&self, bound: Bound<&[u8]>) -> usize {
        match bound {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.search(k).unwrap_or_else(|i| i),
            Bound::Excluded(k) => self.search(k).map_or_else(|i| i, |i| i + 1),
        }
    }

    /// The number of entries at or before `bound` (as an upper bound).
    fn upper(&self, bound: Bound<&[u8]>) -> usize {
        match bound {
            Bound::Unbounded => self.count(),
            Bound::Included(k) => self.search(k).map_or_else(|i| i, |i| i + 1),
            Bound::Excluded(k) => self.search(k).unwrap_or_else(|i| i),
        }
    }

    fn insert_at(&mut self, i: usize, key: &[u8], value: &[u8]) {
        let e = encoded(key, value);
        let at = self.starts.get(i).map_or(self.buf.len(), |&s| s as usize);
        let short = (self.buf.len() + e.len()).saturating_sub(self.buf.capacity());
        if short > 0 {
            self.buf.reserve_exact(short.max(GROWTH));
        }
        self.buf.splice(at..at, e.iter().copied());
        for s in &mut self.starts[i..] {
            *s += e.len() as u32;
        }
        self.starts.insert(i, at as u32);
    }

    fn remove_at(&mut self, i: usize) -> Box<[u8]> {
        let value = self.entry(i).1.into();
        let (start, end) = self.span(i);
        self.buf.drain(start..end);
        self.starts.remove(i);
        for s in &mut self.starts[i..] {
            *s -= (end - start) as u32;
        }
        if self.buf.capacity() > self.buf.len() + 2 * GROWTH {
            self.buf.shrink_to(self.buf.len() + GROWTH);
            self.starts.shrink_to(self.starts.len() + GROWTH / 16);
        }
        value
    }

    /// The entries from `i` on, moved to a new chunk.
    fn split_off(&mut self, i: usize) -> Chunk {
        let at = self.starts[i] as usize;
        let buf = self.buf.split_off(at);
        let starts = self.starts.split_off(i);
        let starts = starts.into_iter().map(|s| s - at as u32).collect();
        self.buf.shrink_to_fit();
        self.starts.shrink_to_fit();
        Chunk { buf, starts }
    }

    fn append(&mut self, other: Chunk) {
        let base = self.buf.len() as u32;
        self.buf.extend_from_slice(&other.buf);
        self.starts
            .extend(other.starts.into_iter().map(|s| s + base));
    }
}

/// An ordered map of byte strings, packed in chunks (see the module).
#[derive(Clone, Debug, Default)]
pub(super) struct PackedMap {
    /// Chunks by lower bound: every key of a chunk is at least its bound
    /// and below the next chunk's bound. Only a lone chunk is empty.
    chunks: BTreeMap<Box<[u8]>, Chunk>,
    len: usize,
}

impl PackedMap {
    pub fn new() -> PackedMap {
        PackedMap::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The bound of the chunk that holds (or would hold) `key`: the
    /// greatest bound not above it, or `None` below every bound.
    fn bound_for(&self, key: &[u8]) -> Option<&[u8]> {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(b, _)| &**b)
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let chunk = &self.chunks[self.bound_for(key)?];
        chunk.search(key).ok().map(|i| chunk.entry(i).1)
    }

    /// Inserts `value` at `key`; what the key held before.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<Box<[u8]>> {
        let bound: Box<[u8]> = match self.bound_for(key) {
            Some(b) => b.into(),
            None => {
                // Below every bound (or the map has no chunk): the first
                // chunk takes the key as its new bound.
                let first = self.chunks.pop_first().map(|(_, c)| c);
                self.chunks.insert(key.into(), first.unwrap_or_default());
                key.into()
            }
        };
        let chunk = self.chunks.get_mut(&bound).expect("the chunk just found");
        let (i, old) = match chunk.search(key) {
            Ok(i) => (i, Some(chunk.remove_at(i))),
            Err(i) => (i, None),
        };
        chunk.insert_at(i, key, value);
        if old.is_none() {
            self.len += 1;
        }
        if chunk.bytes() > CHUNK_BYTES && chunk.count() > 1 {
            // Appending in key order leaves full chunks behind it.
            let at = if i + 1 == chunk.count() {
                i
            } else {
                chunk.count() / 2
            };
            let right = chunk.split_off(at);
            self.chunks.insert(right.key(0).into(), right);
        }
        old
    }

    /// Removes `key`; what it held.
    pub fn remove(&mut self, key: &[u8]) -> Option<Box<[u8]>> {
        let bound: Box<[u8]> = self.bound_for(key)?.into();
        let chunk = self.chunks.get_mut(&bound).expect("the chunk just found");
        let i = chunk.search(key).ok()?;
        let value = chunk.remove_at(i);
        self.len -= 1;
        let left = chunk.bytes();
        if left == 0 && self.chunks.len() > 1 {
            self.chunks.remove(&bound);
        } else if left < CHUNK_BYTES / 4 {
            self.join_next(&bound);
        }
        Some(value)
    }

    /// Moves the chunk after `bound` into it when both fit in half a
    /// chunk's room.
    fn join_next(&mut self, bound: &[u8]) {
        let next = self
            .chunks
            .range::<[u8], _>((Bound::Excluded(bound), Bound::Unbounded))
            .next()
            .map(|(b, c)| (b.clone(), c.bytes()));
        let Some((next, bytes)) = next else { return };
        if bytes + self.chunks[bound].bytes() > CHUNK_BYTES / 2 {
            return;
        }
        let moved = self.chunks.remove(&next).expect("the next chunk");
        self.chunks.get_mut(bound).expect("the chunk").append(moved);
    }

    pub fn first_key_value(&self) -> Option<(&[u8], &[u8])> {
        self.first_in((Bound::Unbounded, Bound::Unbounded))
    }

    pub fn last_key_value(&self) -> Option<(&[u8], &[u8])> {
        self.last_in((Bound::Unbounded, Bound::Unbounded))
    }

    /// The first entry within `range`.
    pub fn first_in(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Option<(&[u8], &[u8])> {
        let from = match range.0 {
            Bound::Included(k) | Bound::Excluded(k) => self.bound_for(k),
            Bound::Unbounded => None,
        };
        let chunks = match from {
            Some(b) => self
                .chunks
                .range::<[u8], _>((Bound::Included(b), Bound::Unbounded)),
            None => self.chunks.range::<[u8], _>(..),
        };
        for (_, chunk) in chunks {
            let i = chunk.lower(range.0);
            if i < chunk.count() {
                let (k, v) = chunk.entry(i);
                return within_upper(k, range.1).then_some((k, v));
            }
        }
        None
    }

    /// The last entry within `range`.
    pub fn last_in(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Option<(&[u8], &[u8])> {
        let upto = match range.1 {
            Bound::Included(k) | Bound::Excluded(k) => (Bound::Unbounded, Bound::Included(k)),
            Bound::Unbounded => (Bound::Unbounded, Bound::Unbounded),
        };
        for (_, chunk) in self.chunks.range::<[u8], _>(upto).rev() {
            let n = chunk.upper(range.1);
            if n > 0 {
                let (k, v) = chunk.entry(n - 1);
                return within_lower(k, range.0).then_some((k, v));
            }
        }
        None
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.chunks
            .values()
            .flat_map(|c| (0..c.count()).map(move |i| c.entry(i)))
    }
}

fn within_upper(key: &[u8], upper: Bound<&[u8]>) -> bool {
    match upper {
        Bound::Unbounded => true,
        Bound::Included(u) => key <= u,
        Bound::Excluded(u) => key < u,
    }
}

fn within_lower(key: &[u8], lower: Bound<&[u8]>) -> bool {
    match lower {
        Bound::Unbounded => true,
        Bound::Included(l) => key >= l,
        Bound::Excluded(l) => key > l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(Vec<u8>, Vec<u8>),
        Remove(Vec<u8>),
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..4, 0..6)
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (key(), prop::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(k, v)| Step::Insert(k, v)),
            key().prop_map(Step::Remove),
        ]
    }

    fn bound(b: Bound<&Vec<u8>>) -> Bound<&[u8]> {
        b.map(|k| k.as_slice())
    }

    proptest! {
        /// Whatever is inserted and removed, the packed map answers every
        /// read as a `BTreeMap` does.
        #[test]
        fn a_packed_map_answers_like_a_btree_map(
            steps in prop::collection::vec(step(), 0..400),
            lo in key(),
            hi in key(),
        ) {
            let mut packed = PackedMap::new();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Insert(k, v) => prop_assert_eq!(
                        packed.insert(&k, &v).map(Vec::from),
                        model.insert(k, v)
                    ),
                    Step::Remove(k) => prop_assert_eq!(
                        packed.remove(&k).map(Vec::from),
                        model.remove(&k)
                    ),
                }
                prop_assert_eq!(packed.len(), model.len());
            }
            let all: Vec<_> = packed.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(&all, &model.clone().into_iter().collect::<Vec<_>>());
            for k in model.keys() {
                prop_assert_eq!(packed.get(k), model.get(k).map(Vec::as_slice));
            }
            prop_assert_eq!(packed.get(&lo).is_some(), model.contains_key(&lo));
            let ends = [Bound::Unbounded, Bound::Included(&lo), Bound::Excluded(&lo)];
            let tops = [Bound::Unbounded, Bound::Included(&hi), Bound::Excluded(&hi)];
            for a in ends {
                for b in tops {
                    if lo > hi && a != Bound::Unbounded && b != Bound::Unbounded {
                        continue;
                    }
                    if lo == hi && matches!((a, b), (Bound::Excluded(_), Bound::Excluded(_))) {
                        continue;
                    }
                    let mut want = model.range::<Vec<u8>, _>((a, b));
                    let first = want.next().map(|(k, v)| (k.as_slice(), v.as_slice()));
                    let last = want.next_back().map(|(k, v)| (k.as_slice(), v.as_slice())).or(first);
                    prop_assert_eq!(packed.first_in((bound(a), bound(b))), first);
                    prop_assert_eq!(packed.last_in((bound(a), bound(b))), last);
                }
            }
        }
    }

    /// A queue filled in key order packs its chunks full: under 80 bytes
    /// of buffer per outbox entry of 63, where a `BTreeMap` of boxes took
    /// about 160.
    #[test]
    fn a_queue_filled_in_order_packs_its_chunks_full() {
        let mut packed = PackedMap::new();
        let n = 100_000u64;
        for i in 0..n {
            let mut k = b"public_security\0".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            let v = format!("discipline\0bench-1764390000000-7-{i:06}");
            packed.insert(&k, v.as_bytes());
        }
        let held: usize = packed
            .chunks
            .values()
            .map(|c| c.buf.capacity() + 4 * c.starts.capacity())
            .sum();
        assert!(
            held / (n as usize) < 80,
            "{} bytes per entry",
            held / n as usize
        );
        for i in 0..n {
            let mut k = b"public_security\0".to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            assert!(packed.remove(&k).is_some());
        }
        assert_eq!(packed.len(), 0);
        assert_eq!(packed.chunks.len(), 1);
    }
}
