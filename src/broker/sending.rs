//! The sender side: submit, forwarding outcomes, receipts coming back,
//! expiry of undelivered messages, status and the receipt feed.

use super::Broker;
use crate::error::{Error, Result};
use crate::model::followup::Side;
use crate::model::{
    BatchProof, EnvelopeHeader, MessageKind, MessageRef, ReceiptKind, SentState, SignedEnvelope,
    SignedReceipt, sha256, validate_id,
};
use crate::now_ms;
use crate::store::{CursorCheck, FeedItem, SentRecord, Store, SubmitOutcome, keys};
use bytes::Bytes;

/// A submit request after protobuf decoding, before any rule is checked.
#[derive(Clone, Debug, Default)]
pub struct SubmitInput {
    pub message_id: String,
    pub kind: i32,
    pub recipient_node: String,
    pub case_reference: String,
    pub correlation_id: String,
    pub subject: String,
    pub content_type: String,
    pub payload: Bytes,
    pub ttl_seconds: u64,
    pub reply_by_ms: u64,
}

impl SubmitInput {
    /// SHA-256 over what makes two submits with one id "the same message"
    /// (see `SubmitRequest` in broker.proto): the sending principal, kind,
    /// recipient node, case reference, correlation id, subject, content
    /// type (`content_type` as it applies, defaulted), payload and reply-by
    /// time. `ttl_seconds` is how the message travels, not what it says: a
    /// retry that changes only it is the same message. Fields are
    /// length-prefixed so none can bleed into the next.
    fn digest(&self, principal: &str, content_type: &str) -> [u8; 32] {
        let mut buf = Vec::with_capacity(256);
        for field in [
            principal.as_bytes(),
            self.message_id.as_bytes(),
            self.recipient_node.as_bytes(),
            self.case_reference.as_bytes(),
            self.correlation_id.as_bytes(),
            self.subject.as_bytes(),
            content_type.as_bytes(),
            &sha256(&self.payload),
        ] {
            buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
            buf.extend_from_slice(field);
        }
        buf.extend_from_slice(&self.kind.to_be_bytes());
        buf.extend_from_slice(&self.reply_by_ms.to_be_bytes());
        sha256(&buf)
    }
}

/// The answer to a submit.
#[derive(Clone, Debug)]
pub enum Submitted {
    /// Signed and stored: on its way.
    Accepted {
        accepted: SignedReceipt,
        header: Bytes,
        signature: Bytes,
        /// The header's place in the batch it was signed with, if any.
        batch: Option<BatchProof>,
        /// The id had been accepted before with the same content.
        duplicate: bool,
    },
    /// Its route requires approval: kept, unsigned and unsent, until a
    /// second principal approves or declines it.
    PendingApproval {
        /// The same submit was held before.
        duplicate: bool,
    },
}

/// A sent message's state and evidence.
#[derive(Clone, Debug)]
pub struct Status {
    pub message: MessageRef,
    pub recipient: String,
    pub state: SentState,
    /// Every receipt, oldest first.
    pub receipts: Vec<SignedReceipt>,
    pub header: Vec<u8>,
    pub signature: Vec<u8>,
    pub batch: Option<BatchProof>,
}

/// A batch of envelopes for a peer, and the outbox entry it ends at.
#[derive(Debug)]
pub struct OutboxBatch {
    pub envelopes: Vec<(MessageRef, SignedEnvelope)>,
    pub end: Option<Vec<u8>>,
    /// Whether the outbox held more after the batch when it was read.
    pub more: bool,
}

impl Broker {
    /// Validates, signs and durably stores a message; answers only after
    /// the store is flushed.
    pub async fn submit(&self, principal: &str, input: SubmitInput) -> Result<Submitted> {
        let config = self.config();
        let limits = &config.limits;
        validate_id("message_id", &input.message_id)?;
        let kind = MessageKind::from_wire(input.kind)?;
        validate_id("recipient_node", &input.recipient_node)?;
        let recipient = config
            .federation
            .node(&input.recipient_node)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "recipient node {:?} is not in the federation trust list",
                    input.recipient_node
                ))
            })?;
        if recipient.id == config.node_id {
            return Err(Error::invalid(format!(
                "recipient node {:?} is this node; messages go to other agencies",
                recipient.id
            )));
        }
        if input.payload.len() > limits.max_payload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "payload is {} bytes; this node accepts at most {}",
                input.payload.len(),
                limits.max_payload_bytes
            )));
        }
        let ttl = match input.ttl_seconds {
            0 => config.delivery.default_ttl_secs,
            t if t > config.delivery.max_ttl_secs => {
                return Err(Error::invalid(format!(
                    "ttl_seconds {t} exceeds this node's maximum of {}",
                    config.delivery.max_ttl_secs
                )));
            }
            t => t,
        };
        if kind == MessageKind::Feedback {
            validate_id("correlation_id", &input.correlation_id)?;
            let answered = MessageRef {
                sender_node: recipient.id.clone(),
                message_id: input.correlation_id.clone(),
            };
            if self
                .read(move |b| b.store().inbound(&answered))
                .await?
                .is_none()
            {
                return Err(Error::FailedPrecondition(format!(
                    "feedback must answer a message that {} sent to this node; \
                     no message {:?} from {} was received here",
                    recipient.id, input.correlation_id, recipient.id
                )));
            }
        } else {
            if !input.correlation_id.is_empty() {
                return Err(Error::invalid(
                    "correlation_id is only for feedback; leave it empty for other kinds",
                ));
            }
            config
                .federation
                .policy
                .check(config.kind, kind, recipient.kind)?;
        }

        let now = now_ms();
        let header = EnvelopeHeader {
            message_id: input.message_id.clone(),
            kind,
            sender_node: config.node_id.clone(),
            sender_principal: principal.to_string(),
            recipient_node: recipient.id.clone(),
            case_reference: input.case_reference.clone(),
            correlation_id: input.correlation_id.clone(),
            subject: input.subject.clone(),
            content_type: if input.content_type.is_empty() {
                "application/octet-stream".to_string()
            } else {
                input.content_type.clone()
            },
            payload_sha256: sha256(&input.payload),
            payload_length: input.payload.len() as u64,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.saturating_mul(1000)),
            reply_by_ms: input.reply_by_ms,
            signing_key_id: self.signer().key_id().to_string(),
        };
        let header = EnvelopeHeader {
            // A route with a reply window gives the deadline when the
            // submitter gives none.
            reply_by_ms: match super::validate::reply_window_ms(config, &header) {
                Some(window) if header.reply_by_ms == 0 => now.saturating_add(window),
                _ => header.reply_by_ms,
            },
            ..header
        };
        super::validate::check_header(config, &header)?;
        let header = self.check_structured(header, &input.payload).await?;
        if kind == MessageKind::Feedback {
            let feedback = header.clone();
            self.read(move |b| b.check_answerable(&feedback)).await?;
        }
        let request_digest = input.digest(principal, &header.content_type);
        if config
            .federation
            .policy
            .requires_approval(config.kind, kind, recipient.kind)
        {
            return self
                .hold_for_approval(principal, header, input.payload, request_digest)
                .await;
        }
        self.accept(header, input.payload, request_digest, None)
            .await
    }

    /// Signs a checked submit and stores it as accepted (`approved_by`:
    /// the principal that approved it, when its route requires approval).
    pub(super) async fn accept(
        &self,
        header: EnvelopeHeader,
        payload: Bytes,
        request_digest: [u8; 32],
        approved_by: Option<String>,
    ) -> Result<Submitted> {
        let config = self.config();
        let recipient = config
            .federation
            .node(&header.recipient_node)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "recipient node {:?} is not in the federation trust list",
                    header.recipient_node
                ))
            })?;
        let follow = self.follow_up_change(
            Side::Awaiting,
            &header,
            &payload,
            (config.kind, recipient.kind),
            now_ms(),
        );
        let message = header.message_ref();
        debug_assert_eq!(header.signing_key_id, self.signer().key_id());
        let bytes = Bytes::from(header.encode());
        let header_sha256 = sha256(&bytes);
        let receipt = self.receipt(&message, ReceiptKind::Accepted, header_sha256, 0, "");
        let ((signature, batch), accepted) = self.sign_accepted(bytes.clone(), receipt).await;
        let envelope = SignedEnvelope {
            header: bytes,
            signature: signature.into(),
            payload,
            batch,
        };
        let record = SentRecord {
            state: SentState::Accepted,
            recipient: recipient.id.clone(),
            kind: header.kind,
            request_digest,
            header_sha256,
            created_at_ms: header.created_at_ms,
            expires_at_ms: header.expires_at_ms,
            outbox_key: None,
            audit_seqs: Vec::new(),
            conflict_recorded: false,
            envelope_at: Vec::new(),
            receipts: Vec::new(),
        };
        // The answer comes after the writer's flush on the duplicate path
        // too: the original may not have reached the disk yet.
        let outcome = {
            let (envelope, accepted) = (envelope.encode(), accepted.clone());
            self.store()
                .write(move |s| {
                    let approver = approved_by.as_deref();
                    s.submit(&envelope, &header, &record, &accepted, &follow, approver)
                })
                .await?
        };
        match outcome {
            SubmitOutcome::Stored => {
                tracing::debug!(%message, peer = %recipient.id, "accepted");
                self.wake_peer(&recipient.id);
                self.feed_wake().notify_waiters();
                Ok(Submitted::Accepted {
                    accepted,
                    header: envelope.header,
                    signature: envelope.signature,
                    batch: envelope.batch,
                    duplicate: false,
                })
            }
            SubmitOutcome::Duplicate(original) => self.answered_before(&message, original),
        }
    }

    /// The answer to a submit of a message accepted before.
    pub(super) fn answered_before(
        &self,
        message: &MessageRef,
        accepted: SignedReceipt,
    ) -> Result<Submitted> {
        let stored = self.stored_envelope(message)?;
        Ok(Submitted::Accepted {
            accepted,
            header: stored.header,
            signature: stored.signature,
            batch: stored.batch,
            duplicate: true,
        })
    }

    fn stored_envelope(&self, message: &MessageRef) -> Result<SignedEnvelope> {
        self.held_envelope(message)?
            .ok_or_else(|| Error::corrupt("envelopes", format!("{message} has no envelope")))
    }

    /// Every receipt stored about a message, in the order of its path.
    pub(super) fn receipts_in_order(&self, message: &MessageRef) -> Result<Vec<SignedReceipt>> {
        let mut receipts = self.store().receipts(message)?;
        receipts.sort_by_key(|r| {
            r.open()
                .map(|r| (r.issued_at_ms, receipt_order(r.kind)))
                .unwrap_or((u64::MAX, 0))
        });
        Ok(receipts)
    }

    /// State and receipts of a message this node sent.
    pub fn status(&self, message_id: &str) -> Result<Status> {
        validate_id("message_id", message_id)?;
        let message = MessageRef {
            sender_node: self.node_id().to_string(),
            message_id: message_id.to_string(),
        };
        let record = self.store().sent(&message)?.ok_or_else(|| {
            Error::NotFound(format!("no message {message_id:?} was sent by this node"))
        })?;
        let receipts = self.receipts_in_order(&message)?;
        let envelope = self.stored_envelope(&message)?;
        Ok(Status {
            message,
            recipient: record.recipient,
            state: record.state,
            receipts,
            header: envelope.header.to_vec(),
            signature: envelope.signature.to_vec(),
            batch: envelope.batch,
        })
    }

    /// Checks a structured payload (`model::rectification`) on the blocking pool:
    /// the feedback check reads the suggestion it answers.
    async fn check_structured(
        &self,
        header: EnvelopeHeader,
        payload: &Bytes,
    ) -> Result<EnvelopeHeader> {
        if !crate::model::rectification::names_schema(&header.content_type) {
            return Ok(header);
        }
        let payload = payload.clone();
        self.read(move |b| {
            let answered = MessageRef {
                sender_node: header.recipient_node.clone(),
                message_id: header.correlation_id.clone(),
            };
            crate::model::rectification::check(&header, &payload, || b.held_envelope(&answered))?;
            Ok(header)
        })
        .await
    }

    /// The signed envelope of a message this node sent or holds, if any.
    pub(super) fn held_envelope(&self, message: &MessageRef) -> Result<Option<SignedEnvelope>> {
        self.store()
            .envelope(message)?
            .map(|bytes| SignedEnvelope::decode(bytes).map_err(|e| Error::corrupt("envelopes", e)))
            .transpose()
    }

    /// Receipts about sent messages after `cursor`, with the message state
    /// each one left (the same live and replayed).
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, FeedItem, SentState)>> {
        self.store().feed_after(cursor, limit)
    }

    /// Refuses a feed cursor that reading on from would skip receipts:
    /// older than the feed's retention, or never given out by this node.
    pub fn check_feed_cursor(&self, cursor: u64) -> Result<()> {
        let retention_days = self.config().limits.receipt_feed_retention_secs as f64 / 86_400.0;
        match self.store().check_feed_cursor(cursor)? {
            CursorCheck::Kept => Ok(()),
            CursorCheck::Removed {
                pruned_through,
                oldest,
            } => Err(Error::OutOfRange(format!(
                "cursor {cursor} is older than the receipt feed keeps ({retention_days} days): \
                 receipts up to cursor {pruned_through} were removed, and the oldest cursor kept \
                 is {oldest}; resume with after_cursor 0 to read from the oldest, and use \
                 GetStatus for messages whose receipts you may have missed"
            ))),
            CursorCheck::Ahead { newest } => Err(Error::OutOfRange(format!(
                "cursor {cursor} is ahead of this node's receipt feed (the newest cursor is \
                 {newest}): it was not given out by this node"
            ))),
        }
    }

    /// Removes feed entries older than the retention, a batch at a time;
    /// the number removed.
    pub async fn prune_feed(&self) -> Result<usize> {
        let retention_ms = self
            .config()
            .limits
            .receipt_feed_retention_secs
            .saturating_mul(1000);
        let before = now_ms().saturating_sub(retention_ms);
        self.store()
            .write(move |s| s.prune_feed(before, 4096))
            .await
    }

    /// Envelopes waiting for `peer`, oldest first, after the outbox entry
    /// `after` if given; those whose TTL passed are expired on the way
    /// instead of being sent. Also returns the entry the batch ends at:
    /// where the next batch starts while this one is in flight.
    pub async fn outbox_batch(
        &self,
        peer: &str,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<OutboxBatch> {
        let now = now_ms();
        let byte_cap = self.config().limits.max_peer_batch_bytes;
        let mut bytes_taken = 0usize;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut end = after.clone();
        let (waiting, mut more) = {
            let peer = peer.to_string();
            self.read(move |b| b.store().outbox_batch(&peer, after.as_deref(), limit))
                .await?
        };
        for entry in waiting {
            // A batch ends at the byte cap; one envelope always goes.
            bytes_taken = bytes_taken.saturating_add(entry.envelope.len());
            if bytes_taken > byte_cap && !out.is_empty() {
                more = true;
                break;
            }
            end = Some(entry.queue_key);
            let envelope = SignedEnvelope::decode(entry.envelope)
                .map_err(|e| Error::corrupt("envelopes", e))?;
            let header = EnvelopeHeader::decode(&envelope.header)
                .map_err(|e| Error::corrupt("envelopes", e))?;
            let message = header.message_ref();
            if header.expires_at_ms <= now {
                let msg_key = keys::message(&message);
                expired.push((message, keys::expiry(header.expires_at_ms, &msg_key)));
                continue;
            }
            out.push((message, envelope));
        }
        if !expired.is_empty() {
            let broker = self.clone();
            self.store()
                .write(move |s| {
                    for (message, index_key) in &expired {
                        broker.expire_sent(s, message, index_key)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(OutboxBatch {
            envelopes: out,
            end,
            more,
        })
    }

    /// The receipts to store for `on_forwarded`: the peer's checked
    /// `delivered` receipts, and our own `dead_lettered` ones for refusals.
    fn forwarded_changes(
        &self,
        peer: &str,
        delivered: Vec<(MessageRef, SignedReceipt)>,
        refused: Vec<(MessageRef, i32, String)>,
    ) -> Result<Vec<(MessageRef, SignedReceipt, ReceiptKind)>> {
        let mut changes = Vec::with_capacity(delivered.len() + refused.len());
        let signed: Vec<SignedReceipt> = delivered.iter().map(|(_, r)| r.clone()).collect();
        let verified = self.config().federation.keyring.verify_receipts(&signed);
        for ((message, receipt), verified) in delivered.into_iter().zip(verified) {
            let r = self.check_receipt(peer, &message, verified, &[ReceiptKind::Delivered])?;
            changes.push((message, receipt, r.kind));
        }
        for (message, code, reason) in refused {
            let record = self.store().sent(&message)?.ok_or_else(|| {
                Error::NotFound(format!("{message} is not a message this node sent"))
            })?;
            let receipt = self.issue(
                &message,
                ReceiptKind::DeadLettered,
                record.header_sha256,
                0,
                format!("refused by node {peer} (code {code}): {reason}"),
            );
            changes.push((message, receipt, ReceiptKind::DeadLettered));
        }
        Ok(changes)
    }

    /// Records the `delivered` receipts a peer answered for our envelopes,
    /// after checking that the peer signed each one about that envelope,
    /// and the refusals it gave for good (bad signature, policy, conflict):
    /// such a message is dead-lettered here with our own receipt saying
    /// why, for an operator to look at.
    pub async fn on_forwarded(
        &self,
        peer: &str,
        delivered: Vec<(MessageRef, SignedReceipt)>,
        refused: Vec<(MessageRef, i32, String)>,
    ) -> Result<()> {
        // Signature checks and the reads of our records run on the
        // blocking pool, off the async workers.
        let peer_id = peer.to_string();
        let changes = self
            .read(move |b| b.forwarded_changes(&peer_id, delivered, refused))
            .await?;
        self.store()
            .write(move |s| {
                for (message, receipt, kind) in &changes {
                    s.apply_sent_receipt(message, receipt, *kind)?;
                }
                Ok(())
            })
            .await?;
        self.feed_wake().notify_waiters();
        Ok(())
    }

    /// Takes receipts that `peer` returns about messages this node sent.
    /// Each gets its own outcome; the accepted ones are on disk before this
    /// returns.
    pub async fn return_receipts(
        &self,
        peer: &str,
        receipts: Vec<SignedReceipt>,
    ) -> Result<Vec<Result<()>>> {
        let max = self.config().limits.max_peer_batch;
        if receipts.len() > max {
            return Err(Error::ResourceExhausted(format!(
                "{} receipts in one call; at most {max} are accepted",
                receipts.len()
            )));
        }
        // Signature checks run on the blocking pool, off the async workers.
        let from = peer.to_string();
        let checked: Vec<Result<(MessageRef, SignedReceipt, ReceiptKind)>> = self
            .read(move |b| {
                let verified = b.config().federation.keyring.verify_receipts(&receipts);
                Ok(receipts
                    .into_iter()
                    .zip(verified)
                    .map(|(signed, verified)| {
                        let message = signed.open()?.message_ref();
                        let r = b.check_receipt(
                            &from,
                            &message,
                            verified,
                            &[
                                ReceiptKind::Delivered,
                                ReceiptKind::Acknowledged,
                                ReceiptKind::Rejected,
                                ReceiptKind::DeadLettered,
                                ReceiptKind::Expired,
                            ],
                        )?;
                        Ok((message, signed, r.kind))
                    })
                    .collect())
            })
            .await?;
        let outcomes = self
            .store()
            .write(move |s| {
                Ok(checked
                    .into_iter()
                    .map(|c| {
                        let (message, signed, kind) = c?;
                        s.apply_sent_receipt(&message, &signed, kind).map(|_| ())
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        self.feed_wake().notify_waiters();
        Ok(outcomes)
    }

    /// Checks a receipt that `peer` hands over about one of our messages:
    /// its signature (`verified`, from
    /// [`Keyring::verify_receipts`](crate::crypto::Keyring::verify_receipts)),
    /// its issuer, its envelope and its kind.
    fn check_receipt(
        &self,
        peer: &str,
        message: &MessageRef,
        verified: Result<crate::model::Receipt>,
        kinds: &[ReceiptKind],
    ) -> Result<crate::model::Receipt> {
        let r = verified?;
        self.check_key_not_retired(&r.issuer_node, &r.signing_key_id, now_ms())?;
        super::validate::check_reason(self.config(), &r.reason)?;
        if r.issuer_node != peer {
            return Err(Error::PermissionDenied(format!(
                "receipt issued by {:?} was returned by node {peer:?}; a node returns only its own receipts",
                r.issuer_node
            )));
        }
        if &r.message_ref() != message || r.sender_node != self.node_id() {
            return Err(Error::invalid(format!(
                "receipt is about {}, not a message of this node",
                r.message_ref()
            )));
        }
        if !kinds.contains(&r.kind) {
            return Err(Error::invalid(format!(
                "a {} receipt is not expected here",
                r.kind
            )));
        }
        let record = self
            .store()
            .sent(message)?
            .ok_or_else(|| Error::NotFound(format!("{message} is not a message this node sent")))?;
        if record.recipient != peer {
            return Err(Error::PermissionDenied(format!(
                "receipt for {message} comes from {peer:?}, but the message was sent to {:?}",
                record.recipient
            )));
        }
        if record.header_sha256 != r.header_sha256 {
            return Err(Error::invalid(format!(
                "receipt for {message} names another envelope (header digest differs)"
            )));
        }
        Ok(r)
    }

    /// Expires a sent message that never left the outbox (or never left
    /// approval). Runs on the store's writer thread, inside `Store::write`.
    pub(super) fn expire_sent(
        &self,
        s: &Store,
        message: &MessageRef,
        index_key: &[u8],
    ) -> Result<()> {
        let Some(record) = s.sent(message)? else {
            if s.pending_approval(message)?.is_some() {
                self.expire_pending(s, message)?;
            }
            return s.drop_expiry(index_key);
        };
        if record.state != SentState::Accepted {
            return s.drop_expiry(index_key);
        }
        let receipt = self.issue(
            message,
            ReceiptKind::Expired,
            record.header_sha256,
            0,
            "time to live passed before the recipient node took custody",
        );
        s.expire_sent(index_key, message, &receipt)?;
        self.metrics().expired.add("sent", 1);
        self.feed_wake().notify_waiters();
        Ok(())
    }
}

/// Receipts issued in the same millisecond sort in the order of the path.
fn receipt_order(kind: ReceiptKind) -> u8 {
    match kind {
        ReceiptKind::Accepted => 0,
        ReceiptKind::Delivered => 1,
        _ => 2,
    }
}
