//! The receipt feed that `WatchReceipts` follows: every receipt about a
//! sent message, and every sent message that fell overdue, under a
//! cursor that counts them (1, 2, 3, …; a number drawn by a change that
//! then wrote nothing is skipped), with the state the event left the
//! message in and the time it was stored.
//!
//! The journal writes an entry as the key of the evidence it points at (a
//! receipt key, or the follow-up's key behind `keys::overdue_feed_key`),
//! the state and the time. The index keeps it in fixed slots
//! (`feed.slots`, see `slots`) as a [`FeedSlot`]: the evidence by where
//! the same journal record holds it, so a read costs one slot and one
//! journal record. Entries older than the retention are let go by noting
//! the highest cursor let go; a client whose cursor fell behind it is
//! told so instead of silently skipping receipts.

use super::evidence::JournalLocator;
use super::wal::Op;
use super::*;
use crate::model::followup::FollowUp;

/// The `meta` key holding the highest cursor removed by retention.
const PRUNED_THROUGH: &[u8] = b"feed_pruned_through";

/// A feed entry as the index holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FeedSlot {
    /// A follow-up fell overdue (else a receipt came).
    pub overdue: bool,
    /// The state the event left the message in.
    pub state: SentState,
    /// When it was stored (ms).
    pub at_ms: u64,
    /// The receipt, or the follow-up record as it fell due, in the
    /// journal record that logged the event.
    pub evidence: JournalLocator,
}

impl FeedSlot {
    pub const SIZE: usize = 10 + JournalLocator::SIZE;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        out[0] = if self.overdue { 2 } else { 1 };
        out[1] = self.state.to_wire() as u8;
        out[2..10].copy_from_slice(&self.at_ms.to_be_bytes());
        out[10..].copy_from_slice(&self.evidence.encode());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<FeedSlot> {
        if bytes.len() != Self::SIZE || !matches!(bytes[0], 1 | 2) {
            return None;
        }
        Some(FeedSlot {
            overdue: bytes[0] == 2,
            state: SentState::from_wire(i32::from(bytes[1])).ok()?,
            at_ms: keys::first_u64(&bytes[2..10]),
            evidence: JournalLocator::decode(&bytes[10..])?,
        })
    }

    /// The slot of the journal's feed entry `entry`, written in the record
    /// of `ops` at `at` whose values lie at `spans`; `None` if the
    /// evidence it names is not in that record.
    pub fn of_entry(
        entry: &[u8],
        ops: &[Op],
        spans: &[Option<(u32, u32)>],
        at: wal::Position,
    ) -> Option<FeedSlot> {
        let (target, state, at_ms) = keys::split_feed_entry(entry)?;
        let (tree, key, overdue) = match keys::overdue_in_feed(target) {
            Some(message) => (FOLLOWUPS, message, true),
            None => (RECEIPTS, target, false),
        };
        let j = ops
            .iter()
            .position(|o| o.tree as usize == tree && o.key == key && o.value.is_some())?;
        let (start, len) = spans.get(j).copied().flatten()?;
        Some(FeedSlot {
            overdue,
            state,
            at_ms,
            evidence: JournalLocator {
                record: at,
                start,
                len,
            },
        })
    }
}

/// Where a cursor stands in the feed.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorCheck {
    /// Reading on after it misses nothing.
    Kept,
    /// Receipts after it were removed by retention; `oldest` is the oldest
    /// cursor still kept (0: none is).
    Removed { pruned_through: u64, oldest: u64 },
    /// It is ahead of every cursor this node has given out.
    Ahead { newest: u64 },
}

/// One event of the feed.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Receipt(SignedReceipt),
    /// A sent message's reply-by deadline passed with no final feedback.
    Overdue(FollowUp),
}

impl Store {
    /// The next feed cursor, drawn by a change that writes a feed entry
    /// (on the writer thread, so cursors follow the journal's order).
    pub(super) fn next_feed(&self) -> u64 {
        self.shared
            .feed_next
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
    }

    /// The cursor after the newest entry of `trees`' feed: the feed's
    /// numbers start past every entry written (one let go included).
    pub(super) fn feed_after_newest(trees: &[live::Tree]) -> Result<u64> {
        let last = trees[FEED].last()?.map_or(0, |(k, _)| keys::first_u64(&k));
        let pruned = trees[META]
            .get(PRUNED_THROUGH)?
            .map_or(0, |v| keys::first_u64(&v));
        Ok(last.max(pruned) + 1)
    }

    fn pruned_through(&self) -> Result<u64> {
        Ok(self
            .read(META, PRUNED_THROUGH)?
            .map_or(0, |v| keys::first_u64(&v)))
    }

    /// Events about sent messages stored after `cursor`, oldest first,
    /// each with the state the message was in.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, FeedItem, SentState)>> {
        let start = cursor.max(self.pruned_through()?).saturating_add(1);
        let mut out = Vec::new();
        for kv in self.tree(FEED).range(start.to_be_bytes()..).take(limit) {
            let (k, v) = kv?;
            let seq = keys::first_u64(&k);
            let slot = FeedSlot::decode(&v)
                .ok_or_else(|| Error::corrupt("feed", format!("entry {seq} is malformed")))?;
            let bytes = self.evidence(FEED, &slot.evidence.encode())?;
            let item = if slot.overdue {
                FeedItem::Overdue(records::decode("followups", &bytes)?)
            } else {
                FeedItem::Receipt(
                    SignedReceipt::decode(&bytes).map_err(|e| Error::corrupt("feed", e))?,
                )
            };
            out.push((seq, item, slot.state));
        }
        Ok(out)
    }

    /// Whether a client reading on after `cursor` misses nothing.
    pub fn check_feed_cursor(&self, cursor: u64) -> Result<CursorCheck> {
        let newest = self
            .shared
            .feed_next
            .load(std::sync::atomic::Ordering::Acquire);
        if cursor != 0 && cursor >= newest {
            return Ok(CursorCheck::Ahead {
                newest: newest.saturating_sub(1),
            });
        }
        let pruned_through = self.pruned_through()?;
        if cursor == 0 || cursor >= pruned_through {
            return Ok(CursorCheck::Kept);
        }
        let oldest = self
            .tree(FEED)
            .range((pruned_through + 1).to_be_bytes()..)
            .next()
            .transpose()?
            .map_or(0, |(k, _)| keys::first_u64(&k));
        Ok(CursorCheck::Removed {
            pruned_through,
            oldest,
        })
    }

    /// Lets go of up to `limit` of the oldest feed entries stored before
    /// `before_ms` (their slots stay, past the cursor noted); the number
    /// let go.
    pub fn prune_feed(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let from = self.pruned_through()? + 1;
        let mut through = None;
        let mut n = 0;
        for kv in self.tree(FEED).range(from.to_be_bytes()..).take(limit) {
            let (k, v) = kv?;
            match FeedSlot::decode(&v) {
                Some(slot) if slot.at_ms < before_ms => {
                    through = Some(keys::first_u64(&k));
                    n += 1;
                }
                _ => break,
            }
        }
        let Some(through) = through else {
            return Ok(0);
        };
        self.transact(|t| {
            t[META].insert(PRUNED_THROUGH, through.to_be_bytes())?;
            Ok(())
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{FOLLOWUPS, FeedSlot, RECEIPTS, wal};
    use crate::model::SentState;
    use crate::store::keys;
    use crate::store::wal::{Op, Position};

    /// The index's slot of a journal feed entry names the evidence the
    /// same record holds — the receipt, or the follow-up as it fell due —
    /// by its span; it reads back whole; an entry whose evidence is not
    /// in its record has no slot.
    #[test]
    fn a_feed_slot_names_the_evidence_its_record_holds() {
        let message = keys::message_parts("discipline", "rs-1");
        let receipt_key = keys::receipt(&message, &[4; 32]);
        let op = |tree: usize, key: &[u8], value: &[u8]| Op {
            tree: tree as u8,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        };
        let ops = vec![
            op(RECEIPTS, &receipt_key, b"the signed receipt"),
            op(FOLLOWUPS, &message, b"the follow-up"),
        ];
        let spans = wal::value_spans(&ops);
        let at = Position {
            epoch: 3,
            offset: 800,
        };
        let receipt = keys::feed_entry(&receipt_key, SentState::Delivered, 7);
        let slot = FeedSlot::of_entry(&receipt, &ops, &spans, at).expect("a slot");
        assert!(!slot.overdue);
        assert_eq!((slot.state, slot.at_ms), (SentState::Delivered, 7));
        assert_eq!(slot.evidence.record, at);
        let (start, len) = spans[0].expect("span");
        assert_eq!((slot.evidence.start, slot.evidence.len), (start, len));
        assert_eq!(FeedSlot::decode(&slot.encode()), Some(slot));

        let overdue = keys::feed_entry(&keys::overdue_feed_key(&message), SentState::Accepted, 9);
        let slot = FeedSlot::of_entry(&overdue, &ops, &spans, at).expect("a slot");
        assert!(slot.overdue);
        assert_eq!(Some((slot.evidence.start, slot.evidence.len)), spans[1]);
        assert_eq!(FeedSlot::decode(&slot.encode()), Some(slot));

        let elsewhere =
            keys::feed_entry(&keys::receipt(&message, &[5; 32]), SentState::Accepted, 1);
        assert_eq!(FeedSlot::of_entry(&elsewhere, &ops, &spans, at), None);
        assert_eq!(
            FeedSlot::decode(&[0; FeedSlot::SIZE]),
            None,
            "an empty slot"
        );
    }

    #[test]
    fn a_feed_entry_keeps_its_receipt_key_state_and_time() {
        let entry = keys::feed_entry(b"receipt-key", SentState::Acknowledged, 1_234);
        assert_eq!(
            keys::split_feed_entry(&entry),
            Some((&b"receipt-key"[..], SentState::Acknowledged, 1_234))
        );
        assert_eq!(keys::split_feed_entry(&entry[..8]), None);
    }

    #[test]
    fn an_overdue_event_is_told_apart_from_every_receipt() {
        let message = keys::message_parts("discipline", "rs-1");
        let overdue = keys::overdue_feed_key(&message);
        assert_eq!(keys::overdue_in_feed(&overdue), Some(message.as_slice()));
        for digest in [[0u8; 32], [0xFE; 32], [7; 32]] {
            assert_eq!(
                keys::overdue_in_feed(&keys::receipt(&message, &digest)),
                None
            );
        }
    }
}
