//! Follow-ups (`model::followup`): what this node awaits or owes.
//!
//! Trees:
//! - `followups`: message key → the follow-up record;
//! - `followup_index`: `state-rank due-ms message-key` → `side peer`, so
//!   that the overdue sweep, the lists and the overdue counts walk only
//!   what they need: overdue first, then by deadline (no deadline sorts
//!   last).
//!
//! A follow-up starts, and a feedback answers one, inside the transaction
//! of the change that brings the message (submit or custody): a node never
//! holds a message that expects feedback without its follow-up.

use super::*;
use crate::model::followup::{Answer, FollowUp, FollowUpState, Side};
use std::collections::BTreeMap;

/// What a submit or a custody change does to follow-ups.
#[derive(Clone, Debug, Default)]
pub struct FollowUpChange {
    /// The message expects feedback: its follow-up starts.
    pub start: Option<FollowUp>,
    /// The message is a feedback: it answers this message's follow-up.
    pub answers: Option<(MessageRef, Answer)>,
}

/// Which follow-ups a list wants.
#[derive(Clone, Debug, Default)]
pub struct FollowUpFilter {
    /// Empty: every state.
    pub states: Vec<FollowUpState>,
    pub side: Option<Side>,
    pub peer: Option<String>,
    /// Only deadlines strictly before this (Unix ms).
    pub due_before_ms: Option<u64>,
    pub case_reference: Option<String>,
}

fn rank(state: FollowUpState) -> u8 {
    match state {
        FollowUpState::Overdue => 1,
        FollowUpState::AwaitingFeedback => 2,
        FollowUpState::AnsweredLate => 3,
        FollowUpState::Answered => 4,
    }
}

fn side_byte(side: Side) -> u8 {
    match side {
        Side::Awaiting => b'a',
        Side::Owed => b'o',
    }
}

fn index_key(f: &FollowUp) -> Vec<u8> {
    let mut k = vec![rank(f.state)];
    k.extend_from_slice(&f.due_ms.unwrap_or(u64::MAX).to_be_bytes());
    k.extend_from_slice(&keys::message(&f.message));
    k
}

fn index_value(f: &FollowUp) -> Vec<u8> {
    let mut v = vec![side_byte(f.side)];
    v.extend_from_slice(f.peer.as_bytes());
    v
}

/// The first key of `state`'s entries due at or after `due_ms`.
fn bound(state: FollowUpState, due_ms: u64) -> Vec<u8> {
    let mut k = vec![rank(state)];
    k.extend_from_slice(&due_ms.to_be_bytes());
    k
}

/// Writes `f` and its index entry (replacing the entry `before`, if any).
fn put(t: &Tx, before: Option<Vec<u8>>, f: &FollowUp) -> TxResult<()> {
    if let Some(before) = before {
        t[FOLLOWUP_INDEX].remove(before)?;
    }
    let key = keys::message(&f.message);
    t[FOLLOWUPS].insert(key.as_slice(), records::encode(f))?;
    t[FOLLOWUP_INDEX].insert(index_key(f), index_value(f))?;
    Ok(())
}

impl Store {
    /// Applies `change` in transaction `t`; refuses a feedback to a
    /// message with no open follow-up here.
    pub(super) fn apply_follow_up(&self, t: &Tx, change: &FollowUpChange) -> TxResult<()> {
        if let Some(f) = &change.start {
            put(t, None, f)?;
        }
        let Some((answered, answer)) = &change.answers else {
            return Ok(());
        };
        let Some(mut f) = record_in::<FollowUp>(t, FOLLOWUPS, &keys::message(answered))? else {
            return abort(Error::FailedPrecondition(format!(
                "{answered} expects no feedback: it had no reply-by deadline and its route \
                 does not expect feedback"
            )));
        };
        let before = index_key(&f);
        f.answer(answer.clone(), crate::now_ms())
            .map_err(TxError::Abort)?;
        put(t, Some(before), &f)?;
        let note = Note::new(AuditEvent::FeedbackRecorded, f.state.as_str(), f.note());
        self.append_audit(t, answered, &note)
    }

    pub fn follow_up(&self, message: &MessageRef) -> Result<Option<FollowUp>> {
        self.read(FOLLOWUPS, &keys::message(message))?
            .map(|v| records::decode("followups", &v))
            .transpose()
    }

    /// Marks up to `limit` open follow-ups whose deadline passed by
    /// `now_ms` overdue, each with an audit entry; returns them.
    pub fn sweep_overdue(&self, now_ms: u64, limit: usize) -> Result<Vec<FollowUp>> {
        let (lo, hi) = (
            bound(FollowUpState::AwaitingFeedback, 0),
            bound(FollowUpState::AwaitingFeedback, now_ms),
        );
        let mut due = Vec::new();
        for kv in self.tree(FOLLOWUP_INDEX).range(lo..hi).take(limit) {
            due.push(kv?.0.to_vec());
        }
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let feed_seqs: Vec<u64> = due.iter().map(|_| self.next_feed()).collect();
        self.transact(|t| {
            let mut changed = Vec::new();
            for (index, feed_seq) in due.into_iter().zip(feed_seqs) {
                let Some(message) = keys::parse_message(&index[9..]) else {
                    return abort(Error::corrupt("followup_index", "bad message key"));
                };
                let key = keys::message(&message);
                let Some(mut f) = record_in::<FollowUp>(t, FOLLOWUPS, &key)? else {
                    t[FOLLOWUP_INDEX].remove(index.as_slice())?;
                    continue;
                };
                if f.fall_due(now_ms) {
                    put(t, Some(index), &f)?;
                    let note = Note::new(AuditEvent::Overdue, f.state.as_str(), f.note());
                    self.append_audit(t, &message, &note)?;
                    if let Some(sent) = record_in::<SentRecord>(t, SENT, &key)? {
                        // `WatchReceipts` tells the sender, in order.
                        t[FEED].insert(
                            feed_seq.to_be_bytes(),
                            keys::feed_entry(&keys::overdue_feed_key(&key), sent.state, now_ms),
                        )?;
                    }
                    changed.push(f);
                }
            }
            Ok(changed)
        })
    }

    /// Follow-ups matching `filter`, overdue first then by deadline,
    /// starting after the index key `after`; at most `limit`, after
    /// looking at no more than `scan` index entries. Returns them and the
    /// key to go on from when more may match.
    pub fn follow_ups(
        &self,
        filter: &FollowUpFilter,
        after: Option<&[u8]>,
        limit: usize,
        scan: usize,
    ) -> Result<(Vec<FollowUp>, Option<Vec<u8>>)> {
        let states = if filter.states.is_empty() {
            FollowUpState::ALL.to_vec()
        } else {
            let mut s = filter.states.clone();
            s.sort_by_key(|s| rank(*s));
            s
        };
        let (mut out, mut scanned) = (Vec::new(), 0);
        let mut last: Option<Vec<u8>> = None;
        for state in states {
            let lo = bound(state, 0);
            let hi = match filter.due_before_ms {
                Some(before) => bound(state, before),
                None => vec![rank(state) + 1],
            };
            let lo = match after {
                Some(a) if a >= lo.as_slice() => {
                    let mut next = a.to_vec();
                    next.push(0);
                    next
                }
                _ => lo,
            };
            if lo >= hi {
                continue;
            }
            for kv in self.tree(FOLLOWUP_INDEX).range(lo..hi) {
                let (k, v) = kv?;
                if out.len() == limit || scanned == scan {
                    return Ok((out, last));
                }
                scanned += 1;
                last = Some(k.to_vec());
                if !self.index_entry_matches(filter, &v) {
                    continue;
                }
                let Some(message) = keys::parse_message(&k[9..]) else {
                    return Err(Error::corrupt("followup_index", "bad message key"));
                };
                let Some(f) = self.follow_up(&message)? else {
                    continue;
                };
                if filter
                    .case_reference
                    .as_ref()
                    .is_none_or(|c| *c == f.case_reference)
                {
                    out.push(f);
                }
            }
        }
        Ok((out, None))
    }

    fn index_entry_matches(&self, filter: &FollowUpFilter, value: &[u8]) -> bool {
        let Some((&side, peer)) = value.split_first() else {
            return false;
        };
        filter.side.is_none_or(|s| side_byte(s) == side)
            && filter.peer.as_ref().is_none_or(|p| p.as_bytes() == peer)
    }

    /// Overdue follow-ups by side and peer: what the metrics show.
    pub fn overdue_counts(&self) -> Result<BTreeMap<(Side, String), u64>> {
        let mut counts = BTreeMap::new();
        let overdue = [rank(FollowUpState::Overdue)];
        for kv in self.tree(FOLLOWUP_INDEX).scan_prefix(overdue) {
            let (_, v) = kv?;
            if let Some((&side, peer)) = v.split_first() {
                let side = if side == side_byte(Side::Owed) {
                    Side::Owed
                } else {
                    Side::Awaiting
                };
                *counts
                    .entry((side, String::from_utf8_lossy(peer).into_owned()))
                    .or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}
