//! The recipient's side of the store: custody of delivered envelopes,
//! leases (taken, settled, released, extended, lapsed), and the receipts
//! queued to go back to sender nodes.

use super::*;
use crate::model::EnvelopeHeader;

/// Inside a transaction: the custody record of `message` (at `key`), or
/// `NotFound`.
pub(super) fn custody_record(t: &Tx, key: &[u8], message: &MessageRef) -> TxResult<InboundRecord> {
    match record_in(t, INBOUND, key)? {
        Some(record) => Ok(record),
        None => abort(Error::NotFound(format!(
            "no message {message} in this node's custody"
        ))),
    }
}

/// A receipt to store and to return to the sender node, prepared outside
/// the transaction (sequence numbers are not transactional).
pub(super) struct QueuedReceipt {
    pub digest: [u8; 32],
    receipt_key: Vec<u8>,
    outbox_key: Vec<u8>,
    bytes: Vec<u8>,
}

impl QueuedReceipt {
    pub(super) fn insert(&self, t: &Tx) -> TxResult<()> {
        t[RECEIPTS].insert(self.receipt_key.as_slice(), self.bytes.as_slice())?;
        t[RECEIPT_OUTBOX].insert(self.outbox_key.as_slice(), self.bytes.as_slice())?;
        Ok(())
    }
}

/// A lease made, with its lease id.
pub type IdLease = (u64, Lease);

/// Whether a receiver limited to `kinds` (`None`: any) takes `kind`.
fn wanted_kind(kinds: Option<&BTreeSet<MessageKind>>, kind: MessageKind) -> bool {
    kinds.is_none_or(|only| only.contains(&kind))
}

impl Store {
    /// Takes an envelope into custody: envelope, record, `delivered`
    /// receipt, inbox entry, expiry index and catalogue entries (from
    /// `header`), all or nothing. The same envelope again → its original
    /// receipt; another envelope under the same id → `AlreadyExists`.
    pub fn accept_inbound(
        &self,
        envelope: &[u8],
        header: &EnvelopeHeader,
        record: &InboundRecord,
        delivered: &SignedReceipt,
        ready_at_ms: u64,
        follow: &FollowUpChange,
    ) -> Result<InboundOutcome> {
        let message = &header.message_ref();
        let key = keys::message(message);
        let inbox_key = keys::pair(ready_at_ms, self.next_seq()?);
        let receipt_digest = sha256(&delivered.receipt);
        let receipt_key = keys::receipt(&key, &receipt_digest);
        let note = Note::new(
            AuditEvent::Delivered,
            InboundState::Inbox.as_str(),
            format!("{} from {}", record.kind, message.sender_node),
        )
        .receipt(receipt_digest);
        let mut record = record.clone();
        record.queue_key = inbox_key.clone();
        record.delivered_receipt_key = receipt_key.clone();
        let record_bytes = records::encode(&record);
        let receipt_bytes = delivered.encode();
        let held = self.transact(|t| {
            if let Some(existing) = record_in::<InboundRecord>(t, INBOUND, &key)? {
                if existing.header_sha256 != record.header_sha256 {
                    return abort(Error::AlreadyExists(format!(
                        "{message} is already held with a different header; refusing the second envelope"
                    )));
                }
                return Ok(Some(existing.delivered_receipt_key));
            }
            t[ENVELOPES].insert(key.as_slice(), envelope)?;
            t[INBOUND].insert(key.as_slice(), record_bytes.as_slice())?;
            t[RECEIPTS].insert(receipt_key.as_slice(), receipt_bytes.as_slice())?;
            t[INBOX].insert(inbox_key.as_slice(), keys::inbox_entry(record.kind, &key))?;
            t[EXPIRY].insert(keys::expiry(record.expires_at_ms, &key), key.as_slice())?;
            catalogue::insert(t, &key, header)?;
            self.append_audit(t, message, &note)?;
            self.apply_follow_up(t, follow)?;
            Ok(None)
        })?;
        match held {
            None => Ok(InboundOutcome::Stored(Arrival {
                inbox_key,
                message_key: key,
                kind: record.kind,
            })),
            Some(receipt_key) => {
                let delivered = self.receipt_by_key(&receipt_key)?.ok_or_else(|| {
                    Error::corrupt(
                        "receipts",
                        format!("delivered receipt of {message} is missing"),
                    )
                })?;
                Ok(InboundOutcome::AlreadyHeld(delivered))
            }
        }
    }

    pub fn inbound(&self, message: &MessageRef) -> Result<Option<InboundRecord>> {
        self.read(INBOUND, &keys::message(message))?
            .map(|v| records::decode("inbound", &v))
            .transpose()
    }

    /// Leases up to `wanted` inbox messages ready at `now_ms`, oldest
    /// first, in one walk of the inbox; each lease id from `lease_id`.
    /// When fewer were ready, also says when the next delayed one becomes
    /// ready (if any).
    ///
    /// With `kinds`, only messages of those kinds are leased; the walk
    /// past other kinds is bounded by [`MAX_KIND_SCAN`] entries.
    pub fn lease_ready(
        &self,
        (now_ms, deadline_ms): (u64, u64),
        holder: &str,
        kinds: Option<&BTreeSet<MessageKind>>,
        wanted: usize,
        mut lease_id: impl FnMut() -> u64,
    ) -> Result<(Vec<IdLease>, Option<u64>)> {
        let mut leases = Vec::new();
        let mut looked = 0;
        for entry in self.tree(INBOX).iter() {
            if leases.len() >= wanted || looked >= MAX_KIND_SCAN {
                break;
            }
            let (inbox_key, value) = entry?;
            // Entries taken by a change not yet synced (earlier in this
            // walk, or in this group) are skipped; entries a change not
            // yet synced added wait for its sync.
            if self.removed_pending(INBOX, &inbox_key) {
                continue;
            }
            looked += 1;
            let ready_at = keys::first_u64(&inbox_key);
            if ready_at > now_ms {
                return Ok((leases, Some(ready_at)));
            }
            let (kind, msg_key) = keys::parse_inbox_entry(&value)
                .ok_or_else(|| Error::corrupt("inbox", "an empty inbox entry"))?;
            let wanted = match MessageKind::from_wire(kind) {
                Ok(kind) => wanted_kind(kinds, kind),
                Err(_) => kinds.is_none(),
            };
            if !wanted {
                continue;
            }
            let id = lease_id();
            if let Some(lease) = self.lease_entry((&inbox_key, msg_key), id, deadline_ms, holder)? {
                leases.push((id, lease));
            }
        }
        Ok((leases, None))
    }

    /// Leases the messages of `arrivals` (taken into custody in this same
    /// writer command, so not yet visible to [`Store::lease_ready`]) of one
    /// of `kinds`, in order, until `wanted` leases are made; each lease id
    /// from `lease_id`. Call it after `lease_ready` found nothing older.
    pub fn lease_arrivals(
        &self,
        arrivals: &[Arrival],
        kinds: Option<&BTreeSet<MessageKind>>,
        holder: &str,
        deadline_ms: u64,
        mut lease_id: impl FnMut() -> u64,
        wanted: usize,
    ) -> Result<Vec<IdLease>> {
        let mut leases = Vec::new();
        for a in arrivals {
            if leases.len() >= wanted {
                break;
            }
            if !wanted_kind(kinds, a.kind) {
                continue;
            }
            let id = lease_id();
            let entry = (a.inbox_key.as_slice(), a.message_key.as_slice());
            if let Some(lease) = self.lease_entry(entry, id, deadline_ms, holder)? {
                leases.push((id, lease));
            }
        }
        Ok(leases)
    }

    /// Leases the message of one inbox entry (inbox key, message key);
    /// `None` if the entry is gone (taken meanwhile).
    fn lease_entry(
        &self,
        (inbox_key, msg_key): (&[u8], &[u8]),
        lease_id: u64,
        deadline_ms: u64,
        holder: &str,
    ) -> Result<Option<Lease>> {
        {
            let lease_key = keys::pair(deadline_ms, lease_id);
            let leased = self.transact(|t| {
                if t[INBOX].remove(inbox_key)?.is_none() {
                    return Ok(None); // taken by someone else meanwhile
                }
                let Some(mut record) = record_in::<InboundRecord>(t, INBOUND, msg_key)? else {
                    return abort(Error::corrupt("inbox", "entry names no inbound record"));
                };
                record.state = InboundState::Leased;
                record.attempts += 1;
                record.lease_id = lease_id;
                record.lease_deadline_ms = deadline_ms;
                record.lease_holder = holder.to_string();
                record.queue_key = lease_key.clone();
                t[LEASES].insert(lease_key.as_slice(), msg_key)?;
                t[INBOUND].insert(msg_key, records::encode(&record))?;
                let Some(message) = keys::parse_message(msg_key) else {
                    return abort(Error::corrupt("inbox", "bad message key"));
                };
                let note = Note::new(
                    AuditEvent::Leased,
                    InboundState::Leased.as_str(),
                    format!("attempt {}, lease {lease_id}", record.attempts),
                );
                self.append_audit(t, &message, &note)?;
                Ok(Some(record))
            })?;
            leased
                .map(|record| {
                    Ok(Lease {
                        message_key: msg_key.to_vec(),
                        envelope: self.envelope_bytes(&record.envelope_at)?,
                        record,
                    })
                })
                .transpose()
        }
    }

    /// Runs `change` on a leased message's record if `lease_id` is its
    /// current lease and `holder` may end it, inside one transaction with
    /// the queue moves it asks for. Refuses with `PermissionDenied` when
    /// the lease is another principal's and `FailedPrecondition` when it
    /// is not current; neither refusal tells the message's state, which
    /// is its receivers' business.
    pub(super) fn with_lease<T>(
        &self,
        message: &MessageRef,
        lease_id: u64,
        holder: &Holder,
        change: impl Fn(&Tx, &[u8], &mut InboundRecord) -> TxResult<T>,
    ) -> Result<T> {
        let key = keys::message(message);
        self.transact(|t| {
            let mut record = custody_record(t, &key, message)?;
            let last = record.lease_id == lease_id;
            if let Holder::Principal(name) = holder
                && last
                && *name != record.lease_holder
            {
                return abort(Error::PermissionDenied(format!(
                    "lease {lease_id} of {message} is not your lease: only the principal that \
                     received the message may settle, release or extend it"
                )));
            }
            if last
                && matches!(
                    record.state,
                    InboundState::Acknowledged | InboundState::Rejected
                )
            {
                return abort(Error::FailedPrecondition(format!(
                    "lease {lease_id} already settled {message} as {}; a settlement is final \
                     (GetReceived returns its receipt)",
                    record.state.as_str()
                )));
            }
            if !last || record.state != InboundState::Leased {
                return abort(Error::FailedPrecondition(format!(
                    "lease {lease_id} of {message} is stale: it lapsed or was released (the \
                     message may go to another receiver), or was never issued; this call \
                     changed nothing"
                )));
            }
            t[LEASES].remove(record.queue_key.as_slice())?;
            let out = change(t, &key, &mut record)?;
            t[INBOUND].insert(key.as_slice(), records::encode(&record))?;
            Ok(out)
        })
    }

    /// Ends a lease with a final state (acknowledged, rejected, dead
    /// letter), storing the receipt and queueing it for the sender node.
    /// The same settlement again by the same lease and holder changes
    /// nothing and says so ([`Settled::Before`]).
    pub fn settle(
        &self,
        message: &MessageRef,
        lease_id: u64,
        holder: &Holder,
        state: InboundState,
        receipt: &SignedReceipt,
    ) -> Result<Settled> {
        if let Some(record) = self.inbound(message)?
            && record.lease_id == lease_id
            && record.state == state
            && holder.holds(&record)
        {
            return Ok(Settled::Before);
        }
        let queued = self.queue_receipt_parts(message, receipt)?;
        let event = match state {
            InboundState::Acknowledged => AuditEvent::Acknowledged,
            InboundState::Rejected => AuditEvent::Rejected,
            InboundState::DeadLetter => AuditEvent::DeadLettered,
            other => {
                return Err(Error::invalid(format!(
                    "{} is not a state that settles a lease",
                    other.as_str()
                )));
            }
        };
        let now = crate::now_ms().to_be_bytes();
        let reason = receipt.open().map(|r| r.reason).unwrap_or_default();
        self.with_lease(message, lease_id, holder, |t, key, record| {
            record.state = state;
            record.queue_key.clear();
            queued.insert(t)?;
            if state == InboundState::DeadLetter {
                t[DEAD_LETTERS].insert(key, now)?;
            }
            let mut detail = format!("attempt {}, lease {lease_id}", record.attempts);
            if !reason.is_empty() {
                detail.push_str(&format!(": {reason}"));
            }
            let note = Note::new(event, state.as_str(), detail).receipt(queued.digest);
            self.append_audit(t, message, &note)?;
            Ok(Settled::Now)
        })
    }

    /// Ends a lease by putting the message back in the inbox, to be
    /// offered again at `ready_at_ms`. `released` says the receiver gave
    /// it back (otherwise its lease lapsed); `why` is logged.
    pub fn requeue(
        &self,
        message: &MessageRef,
        lease_id: u64,
        holder: &Holder,
        ready_at_ms: u64,
        released: bool,
        why: &str,
    ) -> Result<()> {
        let inbox_key = keys::pair(ready_at_ms, self.next_seq()?);
        let event = if released {
            AuditEvent::Released
        } else {
            AuditEvent::Redelivered
        };
        self.with_lease(message, lease_id, holder, |t, key, record| {
            record.state = InboundState::Inbox;
            record.queue_key = inbox_key.clone();
            t[INBOX].insert(inbox_key.as_slice(), keys::inbox_entry(record.kind, key))?;
            let note = Note::new(
                event,
                InboundState::Inbox.as_str(),
                format!(
                    "attempt {}, lease {lease_id}: {why}; offered again at {}",
                    record.attempts,
                    crate::format_time(ready_at_ms)
                ),
            );
            self.append_audit(t, message, &note)?;
            Ok(())
        })
    }

    /// Moves a lease's deadline.
    pub fn extend(
        &self,
        message: &MessageRef,
        lease_id: u64,
        holder: &Holder,
        deadline_ms: u64,
    ) -> Result<()> {
        let lease_key = keys::pair(deadline_ms, lease_id);
        self.with_lease(message, lease_id, holder, |t, key, record| {
            record.lease_deadline_ms = deadline_ms;
            record.queue_key = lease_key.clone();
            t[LEASES].insert(lease_key.as_slice(), key)?;
            let note = Note::new(
                AuditEvent::LeaseExtended,
                InboundState::Leased.as_str(),
                format!("lease {lease_id} until {}", crate::format_time(deadline_ms)),
            );
            self.append_audit(t, message, &note)?;
            Ok(())
        })
    }

    /// Leases whose deadline passed: (message, lease id).
    pub fn lapsed_leases(&self, now_ms: u64, limit: usize) -> Result<Vec<(MessageRef, u64)>> {
        let mut out = Vec::new();
        for kv in self
            .tree(LEASES)
            .range(..keys::pair(now_ms, u64::MAX))
            .take(limit)
        {
            let (k, msg_key) = kv?;
            let lease_id = keys::first_u64(&k[8..]);
            let r = keys::parse_message(&msg_key)
                .ok_or_else(|| Error::corrupt("leases", "bad message key"))?;
            out.push((r, lease_id));
        }
        Ok(out)
    }

    /// The earliest lease deadline, if any lease is held.
    pub fn next_lease_deadline(&self) -> Result<Option<u64>> {
        Ok(self.tree(LEASES).first()?.map(|(k, _)| keys::first_u64(&k)))
    }

    pub(super) fn queue_receipt_parts(
        &self,
        message: &MessageRef,
        receipt: &SignedReceipt,
    ) -> Result<QueuedReceipt> {
        let key = keys::message(message);
        let digest = sha256(&receipt.receipt);
        Ok(QueuedReceipt {
            digest,
            receipt_key: keys::receipt(&key, &digest),
            outbox_key: keys::peer_queue(&message.sender_node, self.next_seq()?),
            bytes: receipt.encode(),
        })
    }

    /// The oldest `limit` receipts waiting to go back to `peer`.
    pub fn receipt_outbox_batch(
        &self,
        peer: &str,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, SignedReceipt)>> {
        self.tree(RECEIPT_OUTBOX)
            .scan_prefix(keys::peer_prefix(peer))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), self.receipt_at(RECEIPT_OUTBOX, &v)?))
            })
            .collect()
    }

    pub fn remove_receipt_outbox(&self, keys: &[Vec<u8>]) -> Result<()> {
        self.transact(|t| {
            for k in keys {
                t[RECEIPT_OUTBOX].remove(k)?;
            }
            Ok(())
        })
    }
}
