//! The receipt feed that `WatchReceipts` follows: every receipt about a
//! sent message, under a cursor that only grows (not contiguous: other
//! changes draw from the same counter), with the state that receipt left
//! the message in and the
//! time it was stored. Entries older than the retention are removed, and
//! the highest cursor removed is noted, so that a client whose cursor fell
//! out of the feed is told so instead of silently skipping receipts.

use super::*;
use crate::model::followup::FollowUp;

/// The `meta` key holding the highest cursor removed by retention.
const PRUNED_THROUGH: &[u8] = b"feed_pruned_through";

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
    /// Events about sent messages stored after `cursor`, oldest first,
    /// each with the state the message was in.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, FeedItem, SentState)>> {
        let start = cursor.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for kv in self.tree(FEED).range(start..).take(limit) {
            let (k, entry) = kv?;
            let seq = keys::first_u64(&k);
            let (receipt_key, state, _) = keys::split_feed_entry(&entry)
                .ok_or_else(|| Error::corrupt("feed", format!("entry {seq} is malformed")))?;
            if let Some(message_key) = keys::overdue_in_feed(receipt_key) {
                if let Some(v) = self.tree(FOLLOWUPS).get(message_key)? {
                    let f = records::decode("followups", &v)?;
                    out.push((seq, FeedItem::Overdue(f), state));
                }
            } else if let Some(receipt) = self.receipt_by_key(receipt_key)? {
                out.push((seq, FeedItem::Receipt(receipt), state));
            }
        }
        Ok(out)
    }

    /// Whether a client reading on after `cursor` misses nothing.
    pub fn check_feed_cursor(&self, cursor: u64) -> Result<CursorCheck> {
        let newest = self.shared.seq.load(std::sync::atomic::Ordering::Acquire);
        if cursor != 0 && cursor >= newest {
            return Ok(CursorCheck::Ahead {
                newest: newest.saturating_sub(1),
            });
        }
        let pruned_through = self
            .read(META, PRUNED_THROUGH)?
            .map_or(0, |v| keys::first_u64(&v));
        if cursor == 0 || cursor >= pruned_through {
            return Ok(CursorCheck::Kept);
        }
        let oldest = self
            .tree(FEED)
            .first()?
            .map_or(0, |(k, _)| keys::first_u64(&k));
        Ok(CursorCheck::Removed {
            pruned_through,
            oldest,
        })
    }

    /// Removes up to `limit` of the oldest feed entries stored before
    /// `before_ms`; the number removed.
    pub fn prune_feed(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut old = Vec::new();
        for kv in self.tree(FEED).iter().take(limit) {
            let (k, entry) = kv?;
            match keys::split_feed_entry(&entry) {
                Some((_, _, at_ms)) if at_ms < before_ms => old.push(k),
                _ => break,
            }
        }
        let Some(last) = old.last() else {
            return Ok(0);
        };
        let through = last.to_vec();
        self.transact(|t| {
            for k in &old {
                t[FEED].remove(k.as_ref())?;
            }
            t[META].insert(PRUNED_THROUGH, through.as_slice())?;
            Ok(())
        })?;
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::SentState;
    use crate::store::keys;

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
