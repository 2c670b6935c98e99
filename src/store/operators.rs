//! Operators' views and actions: dead letters (requeue, discard),
//! paused peers, and queue statistics from the counters.

use super::recipient::custody_record;
use super::*;
use crate::model::{EnvelopeHeader, SignedEnvelope};

impl Store {
    /// Dead letters, oldest first: (message, dead-lettered at, record).
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(MessageRef, u64, InboundRecord)>> {
        let mut out = Vec::new();
        for kv in self.tree(DEAD_LETTERS).iter() {
            let (key, at) = kv?;
            let message = keys::parse_message(&key)
                .ok_or_else(|| Error::corrupt("dead_letters", "bad message key"))?;
            let record = self
                .inbound(&message)?
                .ok_or_else(|| Error::corrupt("dead_letters", "entry names no inbound record"))?;
            out.push((message, keys::first_u64(&at), record));
        }
        out.sort_by_key(|(_, at, _)| *at);
        out.truncate(limit);
        Ok(out)
    }

    /// How many dead letters there are and when the oldest was made one.
    pub fn dead_letter_stats(&self) -> Result<(usize, Option<u64>)> {
        let (count, oldest) = self.lock_counters().dead_letters();
        Ok((count as usize, oldest))
    }

    /// Puts a dead letter back in the inbox, ready at `ready_at_ms`, with
    /// its attempts reset and its TTL index entry restored, and records the
    /// operator's action: one transaction.
    pub fn requeue_dead_letter(
        &self,
        message: &MessageRef,
        ready_at_ms: u64,
        event: &OperatorEvent,
    ) -> Result<()> {
        let inbox_key = keys::pair(ready_at_ms, self.next_seq()?);
        let event_key = keys::event(&keys::message(message), self.next_seq()?);
        let event_bytes = records::encode(event);
        self.with_dead_letter(message, |t, key, record| {
            if record.expires_at_ms <= ready_at_ms {
                return abort(Error::FailedPrecondition(format!(
                    "{message} expired at {}; it cannot be delivered any more (discard it)",
                    crate::format_time(record.expires_at_ms)
                )));
            }
            record.state = InboundState::Inbox;
            record.attempts = 0;
            record.queue_key = inbox_key.clone();
            t[INBOX].insert(inbox_key.as_slice(), keys::inbox_entry(record.kind, key))?;
            t[EXPIRY].insert(keys::expiry(record.expires_at_ms, key), key)?;
            t[OPERATOR_EVENTS].insert(event_key.as_slice(), event_bytes.as_slice())?;
            let detail = format!("by {}: {}", event.principal, event.reason);
            let note = Note::new(AuditEvent::Requeued, InboundState::Inbox.as_str(), detail);
            self.append_audit(t, message, &note)
        })
    }

    /// Gives a dead letter up for good and records why. The envelope and
    /// its receipts stay as evidence.
    pub fn discard_dead_letter(&self, message: &MessageRef, event: &OperatorEvent) -> Result<()> {
        let event_key = keys::event(&keys::message(message), self.next_seq()?);
        let event_bytes = records::encode(event);
        self.with_dead_letter(message, |t, _key, record| {
            record.state = InboundState::Discarded;
            t[OPERATOR_EVENTS].insert(event_key.as_slice(), event_bytes.as_slice())?;
            let detail = format!("by {}: {}", event.principal, event.reason);
            let note = Note::new(
                AuditEvent::Discarded,
                InboundState::Discarded.as_str(),
                detail,
            );
            self.append_audit(t, message, &note)
        })
    }

    /// Runs `change` on a dead letter's record and takes it off the dead
    /// letters, in one transaction; refuses if the message is not a dead
    /// letter in this node's custody.
    fn with_dead_letter(
        &self,
        message: &MessageRef,
        change: impl Fn(&Tx, &[u8], &mut InboundRecord) -> TxResult<()>,
    ) -> Result<()> {
        let key = keys::message(message);
        self.transact(|t| {
            let mut record = custody_record(t, &key, message)?;
            if record.state != InboundState::DeadLetter {
                return abort(Error::FailedPrecondition(format!(
                    "{message} is not a dead letter (it is {})",
                    record.state.as_str()
                )));
            }
            t[DEAD_LETTERS].remove(key.as_slice())?;
            change(t, &key, &mut record)?;
            t[INBOUND].insert(key.as_slice(), records::encode(&record))?;
            Ok(())
        })
    }

    /// Whether an operator ever requeued or discarded the message.
    pub fn has_operator_events(&self, message: &MessageRef) -> Result<bool> {
        Ok(self
            .tree(OPERATOR_EVENTS)
            .scan_prefix(keys::receipts_prefix(&keys::message(message)))
            .next()
            .transpose()?
            .is_some())
    }

    /// Operators' actions on a message, oldest first.
    pub fn operator_events(&self, message: &MessageRef) -> Result<Vec<OperatorEvent>> {
        self.tree(OPERATOR_EVENTS)
            .scan_prefix(keys::receipts_prefix(&keys::message(message)))
            .map(|kv| {
                let (_, v) = kv?;
                records::decode("operator_events", &v)
            })
            .collect()
    }

    /// Pauses (`Some`) or resumes (`None`) forwarding to `peer`.
    pub fn set_paused(&self, peer: &str, pause: Option<&PauseRecord>) -> Result<()> {
        let value = pause.map(records::encode);
        self.transact(|t| {
            match &value {
                Some(v) => t[PAUSED_PEERS].insert(peer.as_bytes(), v.as_slice())?,
                None => {
                    t[PAUSED_PEERS].remove(peer.as_bytes())?;
                }
            }
            Ok(())
        })
    }

    /// The peers an operator paused.
    pub fn paused_peers(&self) -> Result<Vec<(String, PauseRecord)>> {
        self.tree(PAUSED_PEERS)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    records::decode("paused_peers", &v)?,
                ))
            })
            .collect()
    }

    /// A peer's outbox: depth, encoded bytes (only `with_bytes`: that
    /// reads every envelope), and the creation time of its oldest envelope.
    /// Walks the whole queue: for operators and metrics scrapes, not for
    /// hot paths.
    pub fn outbox_stats(&self, peer: &str) -> Result<(usize, u64, Option<u64>)> {
        let depth = self.lock_counters().outbox(peer);
        let oldest = match self
            .tree(OUTBOX)
            .scan_prefix(keys::peer_prefix(peer))
            .next()
        {
            Some(kv) => {
                let (_, at) = kv?;
                let envelope = SignedEnvelope::decode(self.envelope_bytes(&at)?)
                    .and_then(|e| EnvelopeHeader::decode(&e.header))
                    .map_err(|e| Error::corrupt("outbox", e))?;
                Some(envelope.created_at_ms)
            }
            None => None,
        };
        Ok((depth.count as usize, depth.bytes, oldest))
    }

    /// Receipts waiting to go back to `peer`.
    pub fn receipt_outbox_depth(&self, peer: &str) -> usize {
        self.lock_counters().receipt_outbox(peer) as usize
    }

    /// Whether the inbox holds nothing at all, ready or delayed (as synced
    /// changes left it): one look at the live tree, in memory. A read that
    /// fails says "not empty", so that the caller looks properly.
    pub fn inbox_is_empty(&self) -> bool {
        matches!(self.tree(INBOX).first(), Ok(None))
    }

    /// The inbox at `now_ms`: ready entries, delayed entries, the earliest
    /// ready time, and leases in flight. From the counters and one seek.
    pub fn inbox_stats(&self, now_ms: u64) -> Result<(usize, usize, Option<u64>, usize)> {
        let ((ready, delayed), leases) = {
            let c = self.lock_counters();
            (c.inbox(now_ms), c.leases())
        };
        let earliest = match self.tree(INBOX).first()? {
            Some((k, _)) if keys::first_u64(&k) <= now_ms => Some(keys::first_u64(&k)),
            _ => None,
        };
        Ok((ready as usize, delayed as usize, earliest, leases as usize))
    }

    /// Records per tree, counted by scanning each: for tests and offline
    /// checks, never on a scrape.
    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.tree(SENT).len(),
            inbound: self.tree(INBOUND).len(),
            receipts: self.receipt_count(),
            outbox: self.tree(OUTBOX).len(),
            inbox: self.tree(INBOX).len(),
            leases: self.tree(LEASES).len(),
            receipt_outbox: self.tree(RECEIPT_OUTBOX).len(),
            feed: self.tree(FEED).len(),
            audit: self.tree(AUDIT).len(),
        }
    }
}
