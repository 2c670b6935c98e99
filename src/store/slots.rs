//! Index trees whose keys are dense numbers that only grow, in fixed
//! slots: entry `n` → its fixed-size value at byte `(n - 1) × size` of
//! one file in the index directory, as Kafka's offset index does. No key
//! is stored and no tree is kept: a `pwrite` per stretch of consecutive
//! entries, where sled made an index entry (its node copies, splits and
//! page-table memory) three times per message. Two trees are kept so
//! ([`Kind`]): the audit chain's locators by entry number (`audit.slots`)
//! and the receipt feed by cursor (`feed.slots`).
//!
//! Like sled, the files are derived from the journal: written by the
//! indexer, fsynced with sled's files at checkpoints, removed with the
//! index, rebuilt with it. A slot of zeros is empty (no value is all
//! zeros: a journal locator names an epoch, and epochs start at 1).

use super::evidence::JournalLocator;
use super::feed::FeedSlot;
use sled::IVec;
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A tree kept in slots: its file and the size of its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// The audit chain: entry number → journal locator.
    Audit,
    /// The receipt feed: cursor → [`FeedSlot`].
    Feed,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Audit, Kind::Feed];

    /// The file's name inside the index directory.
    pub fn file(self) -> &'static str {
        match self {
            Kind::Audit => "audit.slots",
            Kind::Feed => "feed.slots",
        }
    }

    fn size(self) -> usize {
        match self {
            Kind::Audit => JournalLocator::SIZE,
            Kind::Feed => FeedSlot::SIZE,
        }
    }
}

/// The slots file of one tree of an index.
#[derive(Debug)]
pub(super) struct Slots {
    file: File,
    kind: Kind,
}

/// An entry as trees give them: the key is the sequence number, big-endian.
type Entry = sled::Result<(IVec, IVec)>;

fn io(e: std::io::Error) -> sled::Error {
    sled::Error::Io(e)
}

impl Slots {
    /// Opens (or creates) the slots of `kind` of the index in
    /// `index_dir`; `false` with them if the file was not there.
    pub fn open(index_dir: &Path, kind: Kind) -> std::io::Result<(Slots, bool)> {
        let path = index_dir.join(kind.file());
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok((Slots { file, kind }, existed))
    }

    /// Slots in an unnamed file, gone when dropped (a temporary index).
    pub fn temporary(kind: Kind) -> std::io::Result<Slots> {
        Ok(Slots {
            file: tempfile::tempfile()?,
            kind,
        })
    }

    fn size(&self) -> u64 {
        self.kind.size() as u64
    }

    /// Slots the file spans (the last ones may be empty).
    fn count(&self) -> sled::Result<u64> {
        Ok(self.file.metadata().map_err(io)?.len() / self.size())
    }

    fn read(&self, seq: u64) -> sled::Result<Option<IVec>> {
        if seq == 0 {
            return Ok(None);
        }
        let mut slot = [0u8; 64];
        let slot = &mut slot[..self.kind.size()];
        match self.file.read_exact_at(slot, (seq - 1) * self.size()) {
            // Past the end of the file: not written yet.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other.map_err(io)?,
        }
        Ok(slot.iter().any(|&b| b != 0).then(|| IVec::from(&slot[..])))
    }

    fn write(&self, seq: u64, slot: &[u8]) -> sled::Result<()> {
        self.file
            .write_all_at(slot, (seq - 1) * self.size())
            .map_err(io)
    }

    pub fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        match seq_of(key) {
            Some(seq) => self.read(seq),
            None => Ok(None),
        }
    }

    /// Writes the value of entry `key` (one `pwrite`; the value it
    /// replaced is not read, and `None` is returned); anything but an
    /// 8-byte nonzero key and a nonzero value of the slot's size is
    /// refused.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> sled::Result<Option<IVec>> {
        self.insert_many(std::iter::once((key, value)))
            .map(|()| None)
    }

    /// Writes the values of many entries, each stretch of consecutive
    /// entry numbers with one `pwrite`; refuses what [`Slots::insert`]
    /// refuses, before writing anything.
    pub fn insert_many<'a>(
        &self,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> sled::Result<()> {
        let mut numbered = Vec::new();
        for (key, value) in entries {
            numbered.push((self.checked(key, value)?, value));
        }
        numbered.sort_unstable_by_key(|(seq, _)| *seq);
        let mut stretch: Vec<u8> = Vec::new();
        let mut first = 0;
        for (i, (seq, value)) in numbered.iter().enumerate() {
            if i > 0 && *seq != numbered[i - 1].0 + 1 {
                self.write(first, &stretch)?;
                stretch.clear();
            }
            if stretch.is_empty() {
                first = *seq;
            }
            stretch.extend_from_slice(value);
        }
        if !stretch.is_empty() {
            self.write(first, &stretch)?;
        }
        Ok(())
    }

    /// The entry number of `key`, if `value` fits its slot.
    fn checked(&self, key: &[u8], value: &[u8]) -> sled::Result<u64> {
        let fits = value.len() == self.kind.size() && value.iter().any(|&b| b != 0);
        match seq_of(key).filter(|&s| s > 0) {
            Some(seq) if fits => Ok(seq),
            _ => Err(sled::Error::Unsupported(format!(
                "a slot of {} holds a {}-byte value under an entry number, not a \
                 {}-byte key and a {}-byte value",
                self.kind.file(),
                self.kind.size(),
                key.len(),
                value.len()
            ))),
        }
    }

    pub fn remove(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        match seq_of(key).filter(|&s| s > 0) {
            Some(seq) => {
                let before = self.read(seq)?;
                if before.is_some() {
                    self.write(seq, &[0; 64][..self.kind.size()])?;
                }
                Ok(before)
            }
            None => Ok(None),
        }
    }

    /// Non-empty slots; reads the whole file (never on a hot path).
    pub fn len(&self) -> sled::Result<usize> {
        let size = self.kind.size();
        let mut chunk = vec![0u8; 2048 * size];
        let (mut at, end, mut n) = (0u64, self.count()? * self.size(), 0);
        while at < end {
            let take = (end - at).min(chunk.len() as u64) as usize;
            self.file
                .read_exact_at(&mut chunk[..take], at)
                .map_err(io)?;
            n += chunk[..take]
                .chunks(size)
                .filter(|slot| slot.iter().any(|&b| b != 0))
                .count();
            at += take as u64;
        }
        Ok(n)
    }
}

/// The entry number an 8-byte key names.
fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The smallest entry number whose key is at or after `key` (`None`: no
/// 8-byte key is).
fn ceiling(key: &[u8]) -> Option<u64> {
    let mut first = [0u8; 8];
    let n = key.len().min(8);
    first[..n].copy_from_slice(&key[..n]);
    let first = u64::from_be_bytes(first);
    if key.len() > 8 {
        first.checked_add(1)
    } else {
        Some(first)
    }
}

/// The largest entry number whose key is at or before `key`.
fn floor(key: &[u8]) -> Option<u64> {
    if key.len() >= 8 {
        return seq_of(&key[..8]);
    }
    let mut padded = [0u8; 8];
    padded[..key.len()].copy_from_slice(key);
    u64::from_be_bytes(padded).checked_sub(1)
}

/// The entry numbers within a range of keys, inclusive, if any.
fn span(range: (Bound<&[u8]>, Bound<&[u8]>)) -> Option<(u64, u64)> {
    let low = match range.0 {
        Bound::Unbounded => 1,
        Bound::Included(k) => ceiling(k)?,
        Bound::Excluded(k) if k.len() == 8 => seq_of(k)?.checked_add(1)?,
        Bound::Excluded(k) => ceiling(k)?,
    };
    let high = match range.1 {
        Bound::Unbounded => u64::MAX,
        Bound::Included(k) => floor(k)?,
        Bound::Excluded(k) if k.len() == 8 => seq_of(k)?.checked_sub(1)?,
        Bound::Excluded(k) => floor(k)?,
    };
    Some((low.max(1), high))
}

/// A walk over the non-empty slots of a span, from either end; each step
/// reads one slot.
pub(super) struct SlotIter {
    slots: Arc<Slots>,
    front: u64,
    back: u64,
}

impl SlotIter {
    fn owned(slots: Arc<Slots>, front: u64, back: u64) -> SlotIter {
        let back = back.min(slots.count().unwrap_or(0));
        SlotIter { slots, front, back }
    }

    /// The walk over `range` of `slots`.
    pub fn range(slots: &Arc<Slots>, range: (Bound<&[u8]>, Bound<&[u8]>)) -> SlotIter {
        match span(range) {
            Some((front, back)) => SlotIter::owned(Arc::clone(slots), front, back),
            None => SlotIter::owned(Arc::clone(slots), 1, 0),
        }
    }

    fn entry(&self, seq: u64) -> Option<Entry> {
        match self.slots.read(seq) {
            Ok(Some(v)) => Some(Ok((IVec::from(&seq.to_be_bytes()[..]), v))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for SlotIter {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        while self.front <= self.back && self.front > 0 {
            let seq = self.front;
            self.front += 1;
            if let Some(entry) = self.entry(seq) {
                return Some(entry);
            }
        }
        None
    }
}

impl DoubleEndedIterator for SlotIter {
    fn next_back(&mut self) -> Option<Entry> {
        while self.front <= self.back && self.back > 0 {
            let seq = self.back;
            self.back -= 1;
            if let Some(entry) = self.entry(seq) {
                return Some(entry);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::wal::Position;

    fn locator(offset: u64) -> Vec<u8> {
        JournalLocator {
            record: Position { epoch: 1, offset },
            start: 3,
            len: 40,
        }
        .encode()
        .to_vec()
    }

    fn keys(it: impl Iterator<Item = Entry>) -> Vec<u64> {
        it.map(|e| seq_of(&e.expect("entry").0).expect("key"))
            .collect()
    }

    /// Slots answer like a tree keyed by entry number: gets, ranges from
    /// both ends, removals; refuse what is not a locator; and keep what
    /// was written across a reopen.
    #[test]
    fn slots_read_like_a_tree_of_entry_numbers_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (slots, existed) = Slots::open(tmp.path(), Kind::Audit).expect("open");
        assert!(!existed);
        let slots = Arc::new(slots);
        for seq in [1u64, 2, 3, 5, 9] {
            assert_eq!(
                slots
                    .insert(&seq.to_be_bytes(), &locator(seq * 100))
                    .expect("insert"),
                None
            );
        }
        assert_eq!(
            slots.get(&5u64.to_be_bytes()).expect("get").as_deref(),
            Some(locator(500).as_slice())
        );
        assert_eq!(slots.get(&4u64.to_be_bytes()).expect("get"), None);
        assert_eq!(slots.get(b"short").expect("get"), None);
        let all = |s: &Arc<Slots>| SlotIter::range(s, (Bound::Unbounded, Bound::Unbounded));
        assert_eq!(keys(all(&slots)), vec![1, 2, 3, 5, 9]);
        assert_eq!(keys(all(&slots).rev()), vec![9, 5, 3, 2, 1]);
        let (two, five) = (2u64.to_be_bytes(), 5u64.to_be_bytes());
        assert_eq!(
            keys(SlotIter::range(
                &slots,
                (Bound::Included(&two[..]), Bound::Excluded(&five[..]))
            )),
            vec![2, 3]
        );
        assert_eq!(
            keys(SlotIter::range(
                &slots,
                (Bound::Excluded(&two[..]), Bound::Included(&five[..]))
            )),
            vec![3, 5]
        );
        assert_eq!(slots.len().expect("len"), 5);
        assert!(slots.remove(&3u64.to_be_bytes()).expect("remove").is_some());
        assert_eq!(keys(all(&slots)), vec![1, 2, 5, 9]);
        assert!(slots.insert(&7u64.to_be_bytes(), b"not a locator").is_err());
        assert!(
            slots.insert(&7u64.to_be_bytes(), &[0; 24]).is_err(),
            "empty"
        );
        assert!(slots.insert(&0u64.to_be_bytes(), &locator(1)).is_err());
        assert!(slots.insert(b"k", &locator(1)).is_err());
        drop(slots);

        let (again, existed) = Slots::open(tmp.path(), Kind::Audit).expect("reopen");
        assert!(existed);
        let again = Arc::new(again);
        assert_eq!(keys(all(&again)), vec![1, 2, 5, 9]);
    }

    /// Entries written together, in any order and with gaps, read back
    /// each in its own slot; one bad entry among them writes nothing.
    #[test]
    fn entries_written_together_land_in_their_own_slots_or_not_at_all() {
        let slots = Arc::new(Slots::temporary(Kind::Audit).expect("slots"));
        let seqs = [12u64, 10, 11, 3, 4, 20];
        let entries: Vec<([u8; 8], Vec<u8>)> = seqs
            .iter()
            .map(|&seq| (seq.to_be_bytes(), locator(seq * 100)))
            .collect();
        slots
            .insert_many(entries.iter().map(|(k, v)| (&k[..], v.as_slice())))
            .expect("insert");
        let all = SlotIter::range(&slots, (Bound::Unbounded, Bound::Unbounded));
        assert_eq!(keys(all), vec![3, 4, 10, 11, 12, 20]);
        for seq in seqs {
            assert_eq!(
                slots.get(&seq.to_be_bytes()).expect("get").as_deref(),
                Some(locator(seq * 100).as_slice())
            );
        }
        let (good, bad) = (30u64.to_be_bytes(), 31u64.to_be_bytes());
        let mixed = [(&good[..], &locator(1)[..]), (&bad[..], &b"short"[..])];
        assert!(slots.insert_many(mixed.into_iter()).is_err());
        assert_eq!(slots.get(&good).expect("get"), None);
    }
}
