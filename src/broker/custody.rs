//! The recipient side: taking envelopes into custody, leasing them to
//! receivers, settling leases, redelivery, dead letters and expiry.

use super::Broker;
use crate::crypto::OpenedEnvelope;
use crate::error::{Error, Result};
use crate::model::followup::Side;
use crate::model::{
    EnvelopeHeader, InboundState, MessageKind, MessageRef, Principal, Receipt, ReceiptKind,
    SignedEnvelope, SignedReceipt,
};
use crate::now_ms;
use crate::store::{FollowUpChange, Holder, InboundOutcome, InboundRecord, Settled, Store};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// An envelope that passed every check, ready to be stored.
struct Custody {
    envelope: Vec<u8>,
    /// Its header, for the store's catalogue.
    header: EnvelopeHeader,
    record: InboundRecord,
    /// The `delivered` receipt to sign once every envelope is checked.
    delivered: Receipt,
    /// The follow-up it starts (it expects feedback) or answers (it is one).
    follow: FollowUpChange,
}

/// A new lease id: random, so that no receiver can guess another's.
/// Ids are never 0 (the API's "no lease").
fn new_lease_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Messages leased in one writer command, before they reach a stream.
#[derive(Debug)]
pub struct Leasing {
    /// Lease id, the lease, and whether it is the message's first delivery.
    leases: Vec<(u64, crate::store::Lease, bool)>,
    /// When nothing more was ready: when the next delayed message is.
    next_ready: Option<u64>,
    now: u64,
    deadline: u64,
}

impl Leasing {
    /// Leases up to `wanted` ready messages to `holder`, on the writer
    /// thread, each until `deadline`: the inbox's first, then those of
    /// `arrivals` (taken into custody in the same writer command, which
    /// the inbox does not show before its sync).
    pub(super) fn run(
        s: &Store,
        (now, deadline): (u64, u64),
        holder: &str,
        kinds: Option<&std::collections::BTreeSet<MessageKind>>,
        wanted: usize,
        arrivals: &[crate::store::Arrival],
    ) -> Result<Leasing> {
        let mut leasing = Leasing::nothing(now, deadline);
        let (ready, next_ready) =
            s.lease_ready((now, deadline), holder, kinds, wanted, new_lease_id)?;
        leasing.next_ready = next_ready;
        for (lease_id, lease) in ready {
            // A requeued dead letter starts again at attempt 1: it counts
            // as a redelivery, not as a first delivery (read here, off the
            // async workers).
            let first = lease.record.attempts == 1
                && !match crate::store::keys::parse_message(&lease.message_key) {
                    Some(m) => s.has_operator_events(&m)?,
                    None => false,
                };
            leasing.leases.push((lease_id, lease, first));
        }
        let more = wanted.saturating_sub(leasing.leases.len());
        if more > 0 && !arrivals.is_empty() {
            let fresh = s.lease_arrivals(arrivals, kinds, holder, deadline, new_lease_id, more)?;
            // Just arrived: a first delivery.
            leasing
                .leases
                .extend(fresh.into_iter().map(|(id, lease)| (id, lease, true)));
        }
        Ok(leasing)
    }

    pub(super) fn nothing(now: u64, deadline: u64) -> Leasing {
        Leasing {
            leases: Vec::new(),
            next_ready: None,
            now,
            deadline,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The messages and lease ids, to put back.
    pub(super) fn refs(&self) -> Vec<(MessageRef, u64)> {
        self.leases
            .iter()
            .filter_map(|(id, lease, _)| {
                crate::store::keys::parse_message(&lease.message_key).map(|m| (m, *id))
            })
            .collect()
    }
}

/// What [`Broker::lease_many`] leased, and what it gives back.
#[derive(Debug)]
pub struct LeaseBatch {
    pub leased: Vec<Leased>,
    /// Permits no message was leased for.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// When nothing more was ready: when the next delayed message is.
    pub next_ready: Option<u64>,
}

impl LeaseBatch {
    /// Nothing leased: every permit comes back.
    pub fn none(permits: Vec<tokio::sync::OwnedSemaphorePermit>) -> LeaseBatch {
        LeaseBatch {
            leased: Vec::new(),
            permits,
            next_ready: None,
        }
    }
}

/// A message leased to a receiver.
#[derive(Clone, Debug)]
pub struct Leased {
    pub envelope: SignedEnvelope,
    pub header: EnvelopeHeader,
    pub lease_id: u64,
    pub attempt: u32,
    pub lease_expires_at_ms: u64,
}

impl Broker {
    /// Takes a batch of envelopes from `peer` into custody. Each envelope
    /// gets its own outcome; the `delivered` receipts are given only after
    /// the store is flushed.
    pub async fn deliver(
        &self,
        peer: &str,
        envelopes: Vec<SignedEnvelope>,
    ) -> Result<Vec<(String, Result<SignedReceipt>)>> {
        let max = self.config().limits.max_peer_batch;
        if envelopes.len() > max {
            return Err(Error::ResourceExhausted(format!(
                "{} envelopes in one call; at most {max} are accepted",
                envelopes.len()
            )));
        }
        // Checks (signatures, policy, the store's records a feedback must
        // answer) run on the blocking pool, off the async workers; the
        // custody changes of the whole batch run on the store writer and
        // share one flush.
        let now = now_ms();
        let from = peer.to_string();
        let checked: Vec<(String, Result<Custody>)> = self
            .read(move |b| {
                let opened = b.config().federation.keyring.open_envelopes(&envelopes);
                Ok(envelopes
                    .into_iter()
                    .zip(opened)
                    .map(|(envelope, opened)| {
                        let id = opened
                            .as_ref()
                            .map(|o| o.header.message_id.clone())
                            .unwrap_or_default();
                        let custody = b.check_custody(&from, envelope, opened, now);
                        if let Err(e) = &custody {
                            tracing::warn!(peer = %from, message_id = %id, error = %e, "refused an envelope");
                        }
                        (id, custody)
                    })
                    .collect())
            })
            .await?;
        // The batch's `delivered` receipts share one signature.
        let unsigned = checked
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok().map(|c| c.delivered.clone()))
            .collect();
        let mut signed = self.sign_together(unsigned).await.into_iter();
        let checked: Vec<_> = checked
            .into_iter()
            .map(|(id, c)| (id, c.map(|c| (c, signed.next().expect("one per custody")))))
            .collect();
        // Detached from the peer's call: once the command is with the
        // writer, what it leases to waiting streams must reach them (or go
        // back to the inbox) even if the call is dropped meanwhile (the
        // peer crashed or hung up). Leases made for a stream and never
        // handed would sit unseen until their deadline.
        let broker = self.clone();
        tokio::spawn(async move { broker.store_custody(checked, now).await })
            .await
            .map_err(|e| Error::Unavailable(format!("taking custody failed: {e}")))?
    }

    /// Stores what passed the checks, in one writer command that also
    /// leases the arrivals to streams waiting on an empty inbox (see
    /// `handoff`), and hands those leases over.
    async fn store_custody(
        &self,
        checked: Vec<(String, Result<(Custody, SignedReceipt)>)>,
        now: u64,
    ) -> Result<Vec<(String, Result<SignedReceipt>)>> {
        let waiters = self.shared.waiting.take();
        let (outcomes, stored, handed) = self
            .store()
            .write(move |s| {
                let mut arrivals = Vec::new();
                let outcomes = checked
                    .into_iter()
                    .map(|(id, custody)| {
                        let outcome = custody.and_then(|(c, delivered)| {
                            match s.accept_inbound(
                                &c.envelope,
                                &c.header,
                                &c.record,
                                &delivered,
                                now,
                                &c.follow,
                            )? {
                                InboundOutcome::Stored(arrival) => {
                                    arrivals.push(arrival);
                                    Ok(delivered)
                                }
                                InboundOutcome::AlreadyHeld(original) => Ok(original),
                            }
                        });
                        (id, outcome)
                    })
                    .collect::<Vec<_>>();
                let handed = waiters
                    .into_iter()
                    .map(|w| {
                        let leasing = match arrivals.is_empty() {
                            true => Ok(Leasing::nothing(now, now)),
                            false => w.lease(s, now, &arrivals),
                        };
                        let leasing = leasing.unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "leasing arrivals to a waiting stream failed");
                            Leasing::nothing(now, now)
                        });
                        (w, leasing)
                    })
                    .collect::<Vec<_>>();
                Ok((outcomes, arrivals.len() as u64, handed))
            })
            .await?;
        self.metrics().delivered.add(stored);
        // Before the wake-up: a waiting stream sees what it was handed first.
        self.hand_over(handed).await;
        if outcomes.iter().any(|(_, o)| o.is_ok()) {
            self.inbox_wake().notify_waiters();
        }
        Ok(outcomes)
    }

    /// Every check a receiving node makes before taking custody;
    /// `opened` is the envelope's decoded header and signature check
    /// ([`Keyring::open_envelopes`](crate::crypto::Keyring::open_envelopes)).
    fn check_custody(
        &self,
        peer: &str,
        envelope: SignedEnvelope,
        opened: Result<OpenedEnvelope>,
        now: u64,
    ) -> Result<Custody> {
        let config = self.config();
        let OpenedEnvelope { header, verified } = opened?;
        if header.sender_node != peer {
            return Err(Error::PermissionDenied(format!(
                "envelope names sender node {:?} but was delivered by node {peer:?}",
                header.sender_node
            )));
        }
        if header.recipient_node != config.node_id {
            return Err(Error::invalid(format!(
                "envelope is addressed to node {:?}, not to this node ({})",
                header.recipient_node, config.node_id
            )));
        }
        if envelope.payload.len() > config.limits.max_payload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "payload is {} bytes; this node accepts at most {}",
                envelope.payload.len(),
                config.limits.max_payload_bytes
            )));
        }
        verified?;
        super::validate::check_header(config, &header)?;
        self.check_key_not_retired(&header.sender_node, &header.signing_key_id, now)?;
        if header.expires_at_ms <= now {
            return Err(Error::FailedPrecondition(format!(
                "envelope {} expired at {} (now {now})",
                header.message_id, header.expires_at_ms
            )));
        }
        if header.created_at_ms > now + config.limits.max_clock_skew_ms {
            return Err(Error::invalid(format!(
                "envelope created_at is {} ms in the future; at most {} ms of clock skew is allowed",
                header.created_at_ms - now,
                config.limits.max_clock_skew_ms
            )));
        }
        let sender = config.federation.node(peer).ok_or_else(|| {
            Error::PermissionDenied(format!("node {peer:?} is not in the trust list"))
        })?;
        if header.kind == MessageKind::Feedback {
            let answered = MessageRef {
                sender_node: config.node_id.clone(),
                message_id: header.correlation_id.clone(),
            };
            match self.store().sent(&answered)? {
                Some(r) if r.recipient == peer => {}
                _ => {
                    return Err(Error::PermissionDenied(format!(
                        "feedback answers {:?}, which this node never sent to {peer:?}",
                        header.correlation_id
                    )));
                }
            }
        } else {
            config
                .federation
                .policy
                .check(sender.kind, header.kind, config.kind)?;
        }
        // Structured feedback answers a message this node sent, read only then.
        crate::model::rectification::check(&header, &envelope.payload, || {
            self.held_envelope(&MessageRef {
                sender_node: config.node_id.clone(),
                message_id: header.correlation_id.clone(),
            })
        })?;
        if header.kind == MessageKind::Feedback {
            self.check_answerable(&header)?;
        }
        let follow = self.follow_up_change(
            Side::Owed,
            &header,
            &envelope.payload,
            (sender.kind, config.kind),
            now,
        );
        let message = header.message_ref();
        let header_sha256 = envelope.header_sha256();
        let delivered = self.receipt(&message, ReceiptKind::Delivered, header_sha256, 0, "");
        let record = InboundRecord::arrived(header.kind, header_sha256, header.expires_at_ms);
        Ok(Custody {
            envelope: envelope.encode(),
            header,
            record,
            delivered,
            follow,
        })
    }

    /// Leases up to one ready message per permit to a stream, in one
    /// writer command (one group commit for the lot). Returns the leases,
    /// the permits left over, and, when the inbox ran dry, when the next
    /// delayed message becomes ready (if any).
    pub async fn lease_many(
        &self,
        receiver: &Principal,
        lease_ms: u64,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<LeaseBatch> {
        let now = now_ms();
        let (wanted, holder, kinds) = (
            permits.len(),
            receiver.name.clone(),
            receiver.receive_kinds.clone(),
        );
        let leasing = self
            .store()
            .write(move |s| {
                let times = (now, now + lease_ms);
                Leasing::run(s, times, &holder, kinds.as_ref(), wanted, &[])
            })
            .await?;
        self.take_handed(leasing, permits)
    }

    /// Leases as a stream takes them (from [`Broker::lease_many`], or
    /// handed to a waiting stream): each holds one of `permits`, the rest
    /// come back.
    pub fn take_handed(
        &self,
        leasing: Leasing,
        mut permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<LeaseBatch> {
        let mut leased = Vec::with_capacity(leasing.leases.len());
        for (lease_id, lease, first) in leasing.leases {
            if let Some(permit) = permits.pop() {
                self.lock_permits().insert(lease_id, permit);
            }
            leased.push(self.leased(lease_id, lease, first, leasing.now, leasing.deadline)?);
        }
        Ok(LeaseBatch {
            leased,
            permits,
            next_ready: leasing.next_ready,
        })
    }

    /// A lease as a receiver gets it; counts its end-to-end time.
    fn leased(
        &self,
        lease_id: u64,
        lease: crate::store::Lease,
        first_delivery: bool,
        now: u64,
        deadline: u64,
    ) -> Result<Leased> {
        let envelope =
            SignedEnvelope::decode(lease.envelope).map_err(|e| Error::corrupt("envelopes", e))?;
        let header =
            EnvelopeHeader::decode(&envelope.header).map_err(|e| Error::corrupt("envelopes", e))?;
        if first_delivery {
            let waited = now.saturating_sub(header.created_at_ms);
            self.metrics()
                .end_to_end_seconds
                .observe(waited as f64 / 1000.0);
        } else {
            self.metrics().redelivered.inc();
        }
        Ok(Leased {
            envelope,
            header,
            lease_id,
            attempt: lease.record.attempts,
            lease_expires_at_ms: deadline,
        })
    }

    /// A new flow-control semaphore for one `Receive` stream.
    pub fn stream_permits(&self, max_outstanding: u32) -> Result<Arc<Semaphore>> {
        let limit = self.config().limits.max_outstanding_per_stream;
        let n = match max_outstanding {
            0 => 16.min(limit),
            n if n > limit => {
                return Err(Error::invalid(format!(
                    "max_outstanding {n} exceeds this node's limit of {limit}"
                )));
            }
            n => n,
        };
        Ok(Arc::new(Semaphore::new(n as usize)))
    }

    /// Lease length for a `Receive` request (0 = default).
    pub fn lease_length_ms(&self, lease_seconds: u32) -> Result<u64> {
        let d = &self.config().delivery;
        match lease_seconds {
            0 => Ok(u64::from(d.default_lease_secs) * 1000),
            s if s > d.max_lease_secs => Err(Error::invalid(format!(
                "lease of {s} s exceeds this node's maximum of {} s",
                d.max_lease_secs
            ))),
            s => Ok(u64::from(s) * 1000),
        }
    }

    fn custody_record(&self, message: &MessageRef) -> Result<InboundRecord> {
        self.store()
            .inbound(message)?
            .ok_or_else(|| Error::NotFound(format!("no message {message} in this node's custody")))
    }

    /// The custody record of a message that `receiver` acts on, if it may
    /// receive messages of that kind.
    fn receivers_record(
        &self,
        receiver: &Principal,
        message: &MessageRef,
    ) -> Result<InboundRecord> {
        let record = self.custody_record(message)?;
        if !receiver.may_receive(record.kind) {
            return Err(Error::PermissionDenied(format!(
                "principal {} may not receive {} messages such as {message}",
                receiver.name, record.kind
            )));
        }
        Ok(record)
    }

    /// The state of a message in this node's custody and the receipts the
    /// node issued about it, for a principal that may receive it. Reads
    /// the store: call it on the blocking pool.
    pub fn received(
        &self,
        receiver: &Principal,
        message: &MessageRef,
    ) -> Result<(InboundState, Vec<SignedReceipt>)> {
        let record = self.receivers_record(receiver, message)?;
        Ok((record.state, self.receipts_in_order(message)?))
    }

    /// The receipt of `kind` this node issued about `message`.
    async fn issued_receipt(
        &self,
        message: &MessageRef,
        kind: ReceiptKind,
    ) -> Result<SignedReceipt> {
        let m = message.clone();
        let receipts = self.read(move |b| b.receipts_in_order(&m)).await?;
        receipts
            .into_iter()
            .find(|r| r.open().is_ok_and(|r| r.kind == kind))
            .ok_or_else(|| {
                Error::corrupt(
                    "receipts",
                    format!("the {kind} receipt of {message} is missing"),
                )
            })
    }

    /// Acknowledges (or, with a reason, rejects) a leased message; the
    /// signed receipt goes back to the sender node. The same call again by
    /// the holder of the lease that settled it answers the first receipt.
    pub async fn settle(
        &self,
        receiver: &Principal,
        message: &MessageRef,
        lease_id: u64,
        rejection: Option<&str>,
    ) -> Result<SignedReceipt> {
        let (kind, state, reason) = match rejection {
            None => (ReceiptKind::Acknowledged, InboundState::Acknowledged, ""),
            Some(reason) => {
                if reason.trim().is_empty() {
                    return Err(Error::invalid(
                        "a rejection needs a reason; it travels to the sender in the signed receipt",
                    ));
                }
                super::validate::check_reason(self.config(), reason)?;
                (ReceiptKind::Rejected, InboundState::Rejected, reason)
            }
        };
        let record = self.receivers_record(receiver, message)?;
        let receipt = self
            .sign_one(self.receipt(message, kind, record.header_sha256, record.attempts, reason))
            .await;
        let settled = {
            let (message, receipt) = (message.clone(), receipt.clone());
            let holder = Holder::Principal(receiver.name.clone());
            self.store()
                .write(move |s| s.settle(&message, lease_id, &holder, state, &receipt))
                .await?
        };
        if settled == Settled::Before {
            // A repeat (its first answer was lost): the first receipt.
            return self.issued_receipt(message, kind).await;
        }
        self.end_lease(lease_id);
        self.wake_peer(&message.sender_node);
        match state {
            InboundState::Acknowledged => self.metrics().acknowledged.inc(),
            _ => self.metrics().rejected.inc(),
        }
        tracing::debug!(%message, principal = %receiver.name, state = state.as_str(), "settled");
        Ok(receipt)
    }

    /// Gives a leased message back, to be offered again after `delay_ms`
    /// (or dead-lettered if it has used its attempts).
    pub async fn release(
        &self,
        receiver: &Principal,
        message: &MessageRef,
        lease_id: u64,
        delay_ms: u64,
    ) -> Result<()> {
        let max = self.config().limits.max_release_delay_ms;
        if delay_ms > max {
            return Err(Error::invalid(format!(
                "release delay {delay_ms} ms exceeds the maximum of {max} ms"
            )));
        }
        self.receivers_record(receiver, message)?;
        let holder = Holder::Principal(receiver.name.clone());
        self.end_lease_attempt(message, lease_id, holder, delay_ms, "released")
            .await
    }

    /// Moves a lease's deadline to `lease_seconds` from now.
    pub async fn extend(
        &self,
        receiver: &Principal,
        message: &MessageRef,
        lease_id: u64,
        lease_seconds: u32,
    ) -> Result<u64> {
        if lease_seconds == 0 {
            return Err(Error::invalid("lease_seconds must be at least 1"));
        }
        self.receivers_record(receiver, message)?;
        let lease_ms = self.lease_length_ms(lease_seconds)?;
        let deadline = now_ms() + lease_ms;
        let holder = Holder::Principal(receiver.name.clone());
        let message = message.clone();
        self.store()
            .write(move |s| s.extend(&message, lease_id, &holder, deadline))
            .await?;
        Ok(deadline)
    }

    /// Ends an attempt that was not settled: back to the inbox after a
    /// delay, or to the dead letters when the attempts are used up.
    async fn end_lease_attempt(
        &self,
        message: &MessageRef,
        lease_id: u64,
        holder: Holder,
        delay_ms: u64,
        how: &'static str,
    ) -> Result<()> {
        let (broker, message) = (self.clone(), message.clone());
        self.store()
            .write(move |s| {
                broker.end_lease_attempt_on(s, &message, lease_id, &holder, delay_ms, how)
            })
            .await
    }

    /// [`Broker::end_lease_attempt`] on the store's writer thread.
    fn end_lease_attempt_on(
        &self,
        s: &Store,
        message: &MessageRef,
        lease_id: u64,
        holder: &Holder,
        delay_ms: u64,
        how: &str,
    ) -> Result<()> {
        let record = s.inbound(message)?.ok_or_else(|| {
            Error::NotFound(format!("no message {message} in this node's custody"))
        })?;
        let max = self.config().delivery.max_deliveries;
        if record.attempts >= max {
            let receipt = self.issue(
                message,
                ReceiptKind::DeadLettered,
                record.header_sha256,
                record.attempts,
                format!(
                    "not settled after {} delivery attempts (last {how})",
                    record.attempts
                ),
            );
            s.settle(
                message,
                lease_id,
                holder,
                InboundState::DeadLetter,
                &receipt,
            )?;
            tracing::warn!(%message, attempts = record.attempts, "dead-lettered");
            self.metrics().dead_lettered.inc();
            self.wake_peer(&message.sender_node);
        } else {
            s.requeue(
                message,
                lease_id,
                holder,
                now_ms() + delay_ms,
                how == "released",
                how,
            )?;
            self.inbox_wake().notify_waiters();
        }
        self.end_lease(lease_id);
        Ok(())
    }

    /// Ends every lapsed lease: redelivery after a backoff that doubles
    /// per attempt, or dead letter. Returns how many it handled. One
    /// writer command for the lot.
    pub async fn sweep_lapsed_leases(&self) -> Result<usize> {
        let broker = self.clone();
        self.store()
            .write(move |s| {
                let base = broker.config().delivery.redelivery_backoff_ms;
                let lapsed = s.lapsed_leases(now_ms(), 512)?;
                for (message, lease_id) in &lapsed {
                    let Some(record) = s.inbound(message)? else {
                        continue;
                    };
                    let backoff =
                        base.saturating_mul(1 << record.attempts.saturating_sub(1).min(6));
                    let ended = broker.end_lease_attempt_on(
                        s,
                        message,
                        *lease_id,
                        &Holder::Node,
                        backoff,
                        "lapsed",
                    );
                    match ended {
                        Ok(()) => {}
                        // Settled between the scan and now: nothing to do.
                        Err(Error::FailedPrecondition(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(lapsed.len())
            })
            .await
    }

    /// Expires every message whose TTL passed and that is still waiting,
    /// on either side. Returns how many index entries it handled. One
    /// writer command for the lot.
    pub async fn sweep_expired(&self) -> Result<usize> {
        let broker = self.clone();
        self.store()
            .write(move |s| broker.sweep_expired_on(s))
            .await
    }

    fn sweep_expired_on(&self, s: &Store) -> Result<usize> {
        let due = s.due_expiries(now_ms(), 512)?;
        for (index_key, message) in &due {
            if message.sender_node == self.node_id() {
                self.expire_sent(s, message, index_key)?;
                continue;
            }
            let Some(record) = s.inbound(message)? else {
                s.drop_expiry(index_key)?;
                continue;
            };
            if record.state.is_terminal() {
                s.drop_expiry(index_key)?;
                continue;
            }
            let receipt = self.issue(
                message,
                ReceiptKind::Expired,
                record.header_sha256,
                record.attempts,
                "time to live passed before a receiver settled the message",
            );
            s.expire_inbound(index_key, message, &receipt)?;
            self.metrics().expired.add("custody", 1);
            if record.state == InboundState::Leased {
                self.end_lease(record.lease_id);
            }
            self.wake_peer(&message.sender_node);
        }
        Ok(due.len())
    }

    /// The earliest lease deadline, so the sweeper can sleep until then.
    pub fn next_lease_deadline(&self) -> Result<Option<u64>> {
        self.store().next_lease_deadline()
    }

    /// Receipts waiting to go back to `peer`.
    pub async fn receipt_outbox_batch(
        &self,
        peer: &str,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, SignedReceipt)>> {
        let peer = peer.to_string();
        self.read(move |b| b.store().receipt_outbox_batch(&peer, limit))
            .await
    }

    /// Drops receipts that `peer` took (or refused for good).
    pub async fn receipts_returned(&self, keys: Vec<Vec<u8>>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.store()
            .write(move |s| s.remove_receipt_outbox(&keys))
            .await
    }

    /// Whether a lease handed to a stream has not ended yet (settled,
    /// released, lapsed or returned).
    pub fn lease_outstanding(&self, lease_id: u64) -> bool {
        self.lock_permits().contains_key(&lease_id)
    }

    /// Puts the unsettled leases of a `Receive` stream that ended back in
    /// the inbox at once, in one writer command: each counts as a delivery
    /// attempt (the next one is attempt + 1; the last one dead-letters), as
    /// a consumer's closed channel does with a broker. A lease settled
    /// meanwhile is left alone.
    pub async fn return_stream_leases(&self, leases: Vec<(MessageRef, u64)>) {
        if leases.is_empty() {
            return;
        }
        let how = "its Receive stream closed";
        let broker = self.clone();
        let returned = self
            .store()
            .write(move |s| {
                let mut returned = 0;
                for (message, lease_id) in &leases {
                    let ended =
                        broker.end_lease_attempt_on(s, message, *lease_id, &Holder::Node, 0, how);
                    match ended {
                        Ok(()) => returned += 1,
                        Err(Error::FailedPrecondition(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(returned)
            })
            .await;
        match returned {
            Ok(n) => tracing::debug!(returned = n, "leases of a closed stream back in the inbox"),
            Err(e) => {
                tracing::warn!(error = %e, "could not return the leases of a closed stream; they lapse instead")
            }
        }
    }
}
