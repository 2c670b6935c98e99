//! The sender's side of the store: submits (with idempotency), the
//! outboxes, receipts coming back about sent messages and the feed that
//! `WatchReceipts` follows.

use super::*;
use crate::model::EnvelopeHeader;
use std::ops::Bound;

/// Whether a final receipt of `kind` contradicts a message already in
/// final `state`: one final word per message, except the moves that
/// `SentState::after` allows (a requeued dead letter settled after all).
fn contradicts(state: SentState, kind: ReceiptKind) -> bool {
    let final_kind = !matches!(kind, ReceiptKind::Accepted | ReceiptKind::Delivered);
    final_kind && state.is_terminal() && state.after(kind).is_none()
}

/// Whether a receipt the recipient issued must wait for its `delivered`
/// receipt: the sender's evidence of a settled message holds the custody
/// receipt before any word that follows it. A recipient whose answer to
/// `Deliver` was lost (its flush failed, then it replayed its journal)
/// may return its acknowledgement first; refusing it for now keeps the
/// envelope in the outbox, whose next delivery brings the original
/// `delivered` receipt.
fn awaits_custody_receipt(
    state: SentState,
    kind: ReceiptKind,
    issuer: &str,
    message: &MessageRef,
) -> bool {
    state == SentState::Accepted && kind != ReceiptKind::Delivered && issuer != message.sender_node
}

impl Store {
    /// Stores a newly accepted message: envelope, state, `accepted`
    /// receipt, outbox entry, expiry index and catalogue entries (from
    /// `header`), all or nothing. If the id is taken, compares request
    /// digests: same → the original receipt, other → `AlreadyExists`.
    /// With `approved_by`, the message waited for approval: its pending
    /// record goes, and the approval is logged before the acceptance.
    pub fn submit(
        &self,
        envelope: &[u8],
        header: &EnvelopeHeader,
        record: &SentRecord,
        accepted: &SignedReceipt,
        follow: &FollowUpChange,
        approved_by: Option<&str>,
    ) -> Result<SubmitOutcome> {
        let message = &header.message_ref();
        let key = keys::message(message);
        if let Some(existing) = self.sent(message)? {
            return self.duplicate(message, &existing, record);
        }
        let outbox_key = keys::peer_queue(&record.recipient, self.next_seq()?);
        let feed_seq = self.next_feed();
        let mut record = record.clone();
        record.outbox_key = Some(outbox_key.clone());
        let record_bytes = records::encode(&record);
        let accepted_bytes = accepted.encode();
        let receipt_digest = sha256(&accepted.receipt);
        let receipt_key = keys::receipt(&key, &receipt_digest);
        let note = Note::new(
            AuditEvent::Accepted,
            SentState::Accepted.as_str(),
            format!("{} to {}", record.kind, record.recipient),
        )
        .receipt(receipt_digest);
        let outcome = self.transact(|t| {
            if t[SENT].get(&key)?.is_some() {
                // Raced with a concurrent submit of the same id; the caller
                // retries and takes the duplicate path.
                return Ok(false);
            }
            if let Some(approver) = approved_by {
                self.take_approved(t, message, approver)?;
            }
            t[ENVELOPES].insert(key.as_slice(), envelope)?;
            t[SENT].insert(key.as_slice(), record_bytes.as_slice())?;
            t[RECEIPTS].insert(receipt_key.as_slice(), accepted_bytes.as_slice())?;
            t[OUTBOX].insert(outbox_key.as_slice(), key.as_slice())?;
            t[FEED].insert(
                feed_seq.to_be_bytes(),
                keys::feed_entry(&receipt_key, SentState::Accepted, crate::now_ms()),
            )?;
            t[EXPIRY].insert(keys::expiry(record.expires_at_ms, &key), key.as_slice())?;
            catalogue::insert(t, &key, header)?;
            self.append_audit(t, message, &note)?;
            self.apply_follow_up(t, follow)?;
            Ok(true)
        })?;
        if outcome {
            Ok(SubmitOutcome::Stored)
        } else {
            let existing = self
                .sent(message)?
                .ok_or_else(|| Error::corrupt("sent", "record vanished during submit"))?;
            self.duplicate(message, &existing, &record)
        }
    }

    fn duplicate(
        &self,
        message: &MessageRef,
        existing: &SentRecord,
        record: &SentRecord,
    ) -> Result<SubmitOutcome> {
        if existing.request_digest != record.request_digest {
            return Err(Error::AlreadyExists(format!(
                "message id {:?} was already used for a message with other content; \
                 choose a new id (nothing was changed)",
                message.message_id
            )));
        }
        let accepted = self
            .receipts(message)?
            .into_iter()
            .find(|r| {
                r.open()
                    .map(|r| r.kind.as_str() == "accepted")
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                Error::corrupt("receipts", format!("{message} has no accepted receipt"))
            })?;
        Ok(SubmitOutcome::Duplicate(accepted))
    }

    pub fn sent(&self, message: &MessageRef) -> Result<Option<SentRecord>> {
        self.read(SENT, &keys::message(message))?
            .map(|v| records::decode("sent", &v))
            .transpose()
    }

    /// The signed envelope bytes of `message` (sent or in custody), as
    /// they were stored.
    pub fn envelope(&self, message: &MessageRef) -> Result<Option<Vec<u8>>> {
        let at = match self.sent(message)? {
            Some(r) => r.envelope_at,
            None => match self.inbound(message)? {
                Some(r) => r.envelope_at,
                None => return Ok(None),
            },
        };
        self.envelope_bytes(&at).map(Some)
    }

    /// The oldest `limit` outbox entries for `peer`, oldest first.
    /// The first `limit` envelopes waiting for `peer`, after the entry
    /// `after` if given (a forwarder with batches in flight reads on
    /// past them), and whether more wait after them.
    pub fn outbox_batch(
        &self,
        peer: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<OutboxEntry>, bool)> {
        let prefix = keys::peer_prefix(peer);
        let from = match after {
            Some(key) if key.starts_with(&prefix) => Bound::Excluded(key.to_vec()),
            _ => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for kv in self
            .tree(OUTBOX)
            .range((from, Bound::Unbounded))
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit.saturating_add(1))
        {
            let (queue_key, at) = kv?;
            if out.len() == limit {
                // One entry past the batch: more wait.
                return Ok((out, true));
            }
            out.push(OutboxEntry {
                queue_key: queue_key.to_vec(),
                envelope: self.envelope_bytes(&at)?,
            });
        }
        Ok((out, false))
    }

    pub fn outbox_depth(&self, peer: &str) -> usize {
        self.lock_counters().outbox(peer).count as usize
    }

    /// Records a receipt about a message this node sent and moves its state
    /// as the receipt says (see `SentState::after`). A receipt already held
    /// changes nothing. Leaving `accepted` also takes the message out of the
    /// outbox. Returns the state after the receipt.
    pub fn apply_sent_receipt(
        &self,
        message: &MessageRef,
        receipt: &SignedReceipt,
        kind: ReceiptKind,
    ) -> Result<SentState> {
        let key = keys::message(message);
        let receipt_digest = sha256(&receipt.receipt);
        let receipt_key = keys::receipt(&key, &receipt_digest);
        let bytes = receipt.encode();
        let feed_seq = self.next_feed();
        let opened = receipt.open()?;
        // A receipt this node issued itself (a peer's refusal turned into a
        // dead letter) is that event; any other came back from the peer.
        let event = match (opened.issuer_node == message.sender_node, kind) {
            (true, ReceiptKind::DeadLettered) => AuditEvent::DeadLettered,
            (true, ReceiptKind::Expired) => AuditEvent::Expired,
            _ => AuditEvent::ReceiptReceived,
        };
        let mut detail = format!("{kind} receipt by {}", opened.issuer_node);
        if opened.attempt > 0 {
            detail.push_str(&format!(", attempt {}", opened.attempt));
        }
        if !opened.reason.is_empty() {
            detail.push_str(&format!(": {}", opened.reason));
        }
        self.transact(|t| {
            let Some(mut record) = record_in::<SentRecord>(t, SENT, &key)? else {
                return abort(Error::NotFound(format!(
                    "{message} is not a message this node sent"
                )));
            };
            if receipts::lists(&record.receipts, &receipt_digest)
                || t[RECEIPTS].get(&receipt_key)?.is_some()
            {
                return Ok(Ok(record.state));
            }
            if awaits_custody_receipt(record.state, kind, &opened.issuer_node, message) {
                return abort(Error::Unavailable(format!(
                    "the {kind} receipt for {message} came before the recipient's delivered \
                     (custody) receipt; it is taken once that receipt is here (the next \
                     delivery of the envelope brings it), so return it again later"
                )));
            }
            if contradicts(record.state, kind) {
                // A second, different final word about a settled message:
                // refused, and the first such receipt is kept in the log
                // (bytes and signature) as evidence of what the peer signed.
                if !record.conflict_recorded {
                    record.conflict_recorded = true;
                    t[SENT].insert(key.as_slice(), records::encode(&record))?;
                    t[EQUIVOCATIONS].insert(keys::contradicting_receipt(&key), bytes.as_slice())?;
                    let detail = format!(
                        "refused a contradicting {kind} receipt by {} (SHA-256 {}), kept as evidence",
                        opened.issuer_node,
                        hex::encode(receipt_digest)
                    );
                    let note = Note::new(event, record.state.as_str(), detail);
                    self.append_audit(t, message, &note)?;
                }
                return Ok(Err(record.state));
            }
            t[RECEIPTS].insert(receipt_key.as_slice(), bytes.as_slice())?;
            if let Some(next) = record.state.after(kind) {
                record.state = next;
                if let Some(outbox_key) = record.outbox_key.take() {
                    t[OUTBOX].remove(outbox_key)?;
                }
                t[SENT].insert(key.as_slice(), records::encode(&record))?;
            }
            let entry = keys::feed_entry(&receipt_key, record.state, crate::now_ms());
            t[FEED].insert(feed_seq.to_be_bytes(), entry)?;
            let note =
                Note::new(event, record.state.as_str(), detail.clone()).receipt(receipt_digest);
            self.append_audit(t, message, &note)?;
            Ok(Ok(record.state))
        })?
        .map_err(|state| {
            Error::FailedPrecondition(format!(
                "{message} is already {}; a {kind} receipt that contradicts it is refused (the \
                 first contradicting receipt is recorded in the audit log)",
                state.as_str()
            ))
        })
    }

    /// The contradicting final receipt kept about `message`, if one came.
    pub fn contradicting_receipt(&self, message: &MessageRef) -> Result<Option<SignedReceipt>> {
        let key = keys::contradicting_receipt(&keys::message(message));
        self.tree(EQUIVOCATIONS)
            .get(key)?
            .map(|v| SignedReceipt::decode(&v).map_err(|e| Error::corrupt("equivocations", e)))
            .transpose()
    }
}
