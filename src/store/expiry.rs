//! Time to live: the TTL index, and expiring messages still waiting in
//! an outbox or in custody.

use super::*;

impl Store {
    /// Entries of the TTL index due at `now_ms`: (index key, message).
    pub fn due_expiries(&self, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, MessageRef)>> {
        let mut out = Vec::new();
        for kv in self
            .tree(EXPIRY)
            .range(..keys::expiry_due_end(now_ms))
            .take(limit)
        {
            let (k, message_key) = kv?;
            let r = keys::parse_message(&message_key)
                .ok_or_else(|| Error::corrupt("expiry", "bad message key"))?;
            out.push((k.to_vec(), r));
        }
        Ok(out)
    }

    /// Drops a TTL index entry whose message needs nothing more.
    pub fn drop_expiry(&self, index_key: &[u8]) -> Result<()> {
        self.transact(|t| {
            t[EXPIRY].remove(index_key)?;
            Ok(())
        })
    }

    /// Expires a sent message still waiting in the outbox, with the node's
    /// own `expired` receipt. Does nothing if it left `accepted` meanwhile.
    pub fn expire_sent(
        &self,
        index_key: &[u8],
        message: &MessageRef,
        receipt: &SignedReceipt,
    ) -> Result<()> {
        let key = keys::message(message);
        let receipt_digest = sha256(&receipt.receipt);
        let receipt_key = keys::receipt(&key, &receipt_digest);
        let bytes = receipt.encode();
        let feed_seq = self.next_feed();
        let note = Note::new(
            AuditEvent::Expired,
            SentState::Expired.as_str(),
            "time to live passed before the recipient node took custody",
        )
        .receipt(receipt_digest);
        self.transact(|t| {
            t[EXPIRY].remove(index_key)?;
            let Some(mut record) = record_in::<SentRecord>(t, SENT, &key)? else {
                return Ok(());
            };
            if record.state != SentState::Accepted {
                return Ok(());
            }
            record.state = SentState::Expired;
            if let Some(outbox_key) = record.outbox_key.take() {
                t[OUTBOX].remove(outbox_key)?;
            }
            t[SENT].insert(key.as_slice(), records::encode(&record))?;
            t[RECEIPTS].insert(receipt_key.as_slice(), bytes.as_slice())?;
            t[FEED].insert(
                feed_seq.to_be_bytes(),
                keys::feed_entry(&receipt_key, record.state, crate::now_ms()),
            )?;
            self.append_audit(t, message, &note)?;
            Ok(())
        })
    }

    /// Expires a message in custody that no receiver settled in time,
    /// queueing the `expired` receipt for the sender node. Does nothing if
    /// it was settled meanwhile.
    pub fn expire_inbound(
        &self,
        index_key: &[u8],
        message: &MessageRef,
        receipt: &SignedReceipt,
    ) -> Result<()> {
        let key = keys::message(message);
        let queued = self.queue_receipt_parts(message, receipt)?;
        self.transact(|t| {
            t[EXPIRY].remove(index_key)?;
            let Some(mut record) = record_in::<InboundRecord>(t, INBOUND, &key)? else {
                return Ok(());
            };
            if record.state.is_terminal() {
                return Ok(());
            }
            match record.state {
                InboundState::Inbox => t[INBOX].remove(record.queue_key.as_slice())?,
                _ => t[LEASES].remove(record.queue_key.as_slice())?,
            };
            let note = Note::new(
                AuditEvent::Expired,
                InboundState::Expired.as_str(),
                format!(
                    "time to live passed in state {} after {} attempts",
                    record.state.as_str(),
                    record.attempts
                ),
            )
            .receipt(queued.digest);
            record.state = InboundState::Expired;
            record.queue_key.clear();
            t[INBOUND].insert(key.as_slice(), records::encode(&record))?;
            queued.insert(t)?;
            self.append_audit(t, message, &note)?;
            Ok(())
        })
    }
}
