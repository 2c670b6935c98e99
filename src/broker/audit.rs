//! The auditors' side of a node: signing checkpoints of the audit chain,
//! keeping peers' checkpoints as a witness, assembling receipt bundles,
//! and searching messages.

use super::Broker;
use crate::audit::bundle::{self, BundleInput};
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, Checkpoint, MessageKind, MessageRef, SignedCheckpoint, SignedEnvelope, validate_id,
};
use crate::now_ms;
use crate::store::{CatalogueRange, Catalogued};

/// Filters of `ListMessages`; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub case_reference: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub state: Option<String>,
    pub peer: Option<String>,
    pub kind: Option<MessageKind>,
    pub limit: usize,
    /// Start after this place (where a previous page ended).
    pub after: Option<PageToken>,
}

/// Where a page of `ListMessages` ended: the sort key of its last message,
/// or of the last message its walk examined (see
/// [`Broker::list_messages`]). The order is the catalogue's: newest first,
/// then by a digest of the message (`store::keys::by_time`), so a token,
/// which names the message, is a place in it whatever the filters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageToken {
    /// Newest first: the creation time, reversed.
    pub newest_first: std::cmp::Reverse<u64>,
    pub sender_node: String,
    pub message_id: String,
}

impl PageToken {
    fn of(m: &MessageSummary) -> PageToken {
        PageToken::at(m.created_at_ms, &m.message)
    }

    /// The place of `message`, created at `created_at_ms`, in the order.
    fn at(created_at_ms: u64, message: &MessageRef) -> PageToken {
        PageToken {
            newest_first: std::cmp::Reverse(created_at_ms),
            sender_node: message.sender_node.clone(),
            message_id: message.message_id.clone(),
        }
    }

    /// The token's text form: `created_at_ms/sender_node/message_id`.
    pub fn encode(&self) -> String {
        format!(
            "{}/{}/{}",
            self.newest_first.0, self.sender_node, self.message_id
        )
    }

    pub fn decode(text: &str) -> Result<PageToken> {
        let bad = || Error::invalid(format!("page_token {text:?} is not one this node gave out"));
        let mut parts = text.splitn(3, '/');
        let (Some(at), Some(node), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        validate_id("page_token sender_node", node).map_err(|_| bad())?;
        validate_id("page_token message_id", id).map_err(|_| bad())?;
        Ok(PageToken {
            newest_first: std::cmp::Reverse(at.parse().map_err(|_| bad())?),
            sender_node: node.to_string(),
            message_id: id.to_string(),
        })
    }
}

/// About how many bytes of summaries one `ListMessages` answer holds: far
/// below a client's default 4 MiB message limit, whatever the subjects.
pub const LIST_ANSWER_BUDGET: usize = 1024 * 1024;

/// One page of `ListMessages`.
#[derive(Clone, Debug)]
pub struct MessagePage {
    pub messages: Vec<MessageSummary>,
    /// Set when more messages match, or when the walk stopped at
    /// `limits.max_list_scan` with more of the catalogue ahead.
    pub next: Option<PageToken>,
}

impl MessageSummary {
    /// About what the summary costs on the wire.
    fn wire_size(&self) -> usize {
        64 + self.message.sender_node.len()
            + self.message.message_id.len()
            + self.peer.len()
            + self.case_reference.len()
            + self.subject.len()
    }
}

/// One message as `ListMessages` shows it.
#[derive(Clone, Debug)]
pub struct MessageSummary {
    pub message: MessageRef,
    pub kind: MessageKind,
    /// `sent` or `received`.
    pub direction: &'static str,
    pub peer: String,
    pub case_reference: String,
    pub subject: String,
    pub state: &'static str,
    pub created_at_ms: u64,
}

impl Broker {
    /// Signs and stores a checkpoint of the chain's current head.
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint> {
        let (seq, head_hash) = self.store().audit_head()?;
        let checkpoint = Checkpoint {
            node: self.node_id().to_string(),
            seq,
            head_hash,
            time_ms: now_ms(),
            signing_key_id: self.signer().key_id().to_string(),
        };
        let signed = self.signer().sign_checkpoint(&checkpoint);
        let node = self.node_id().to_string();
        let stored = self
            .store()
            .write(move |s| s.put_own_checkpoint(&node, &signed))
            .await;
        self.shared
            .checkpoints_made
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        stored
    }

    /// Signs a checkpoint if the chain grew by `checkpoint_every_entries`
    /// since the last one, or grew at all and `checkpoint_interval_secs`
    /// passed.
    pub async fn checkpoint_if_due(&self) -> Result<Option<SignedCheckpoint>> {
        let settings = &self.config().audit;
        let (head, _) = self.store().audit_head()?;
        let latest = self
            .read(|b| b.store().latest_checkpoint(b.node_id()))
            .await?;
        let (last_seq, last_ms) = match latest {
            Some(c) => {
                let c = c.open().map_err(|e| Error::corrupt("checkpoints", e))?;
                (c.seq, c.time_ms)
            }
            None => (0, 0),
        };
        let grown = head.saturating_sub(last_seq);
        let due = grown >= settings.checkpoint_every_entries
            || (grown > 0
                && now_ms().saturating_sub(last_ms)
                    >= settings.checkpoint_interval_secs.saturating_mul(1000));
        if !due {
            return Ok(None);
        }
        self.checkpoint_now().await.map(Some)
    }

    /// Keeps a checkpoint that `peer` sent to be witnessed, after checking
    /// that it is the peer's own and that its signature verifies.
    pub async fn witness(&self, peer: &str, signed: SignedCheckpoint) -> Result<()> {
        let c = self
            .config()
            .federation
            .keyring
            .verify_checkpoint(&signed)?;
        if c.node != peer {
            return Err(Error::PermissionDenied(format!(
                "checkpoint of node {:?} sent by node {peer:?}; a node sends only its own",
                c.node
            )));
        }
        let skew = self.config().limits.max_clock_skew_ms;
        if c.time_ms > now_ms().saturating_add(skew) {
            return Err(Error::invalid(format!(
                "checkpoint is signed {} ms in the future; at most {skew} ms of clock skew is allowed",
                c.time_ms - now_ms()
            )));
        }
        let peer = peer.to_string();
        // One writer command: the rules read what earlier witnessed
        // checkpoints left, and the store keeps this one, atomically.
        self.store()
            .write(move |s| witness_on(s, &peer, &c, &signed))
            .await
    }

    /// The receipt bundle of a message that passed through this node, as
    /// JSON. Signs a fresh checkpoint if none covers its last entries yet.
    pub async fn bundle(
        &self,
        sender_node: &str,
        message_id: &str,
        include_payload: bool,
    ) -> Result<String> {
        validate_id("sender_node", sender_node)?;
        validate_id("message_id", message_id)?;
        if include_payload && !self.config().audit.allow_payload_export {
            return Err(Error::PermissionDenied(
                "this node does not export payloads in bundles ([audit] allow_payload_export \
                 is false); ask without include_payload"
                    .into(),
            ));
        }
        let message = MessageRef {
            sender_node: sender_node.to_string(),
            message_id: message_id.to_string(),
        };
        // Reads run on the blocking pool; only the checkpoint that may be
        // needed first is signed here.
        let m = message.clone();
        let covered = self
            .read(move |b| {
                let (_, last) = b.bundle_parts(&m)?;
                Ok(b.store().checkpoint_covering(b.node_id(), last)?.is_some())
            })
            .await?;
        if !covered {
            self.checkpoint_now().await?;
        }
        self.read(move |b| b.bundle_from_store(&message, include_payload))
            .await
    }

    /// The audit entries about `message` (sequence numbers) and the last
    /// one; `NotFound` if the message never passed through this node.
    fn bundle_parts(&self, message: &MessageRef) -> Result<(Vec<u64>, u64)> {
        let seqs = self.store().audit_seqs_of(message)?;
        match seqs.last() {
            Some(&last) => Ok((seqs, last)),
            None => Err(Error::NotFound(format!(
                "no message {message} passed through this node (or it has no audit entry)"
            ))),
        }
    }

    /// Assembles the bundle of `message` from the store, every entry
    /// covered by a checkpoint already held.
    fn bundle_from_store(&self, message: &MessageRef, include_payload: bool) -> Result<String> {
        let store = self.store();
        let (seqs, _) = self.bundle_parts(message)?;
        let envelope = store.envelope(message)?.ok_or_else(|| {
            Error::NotFound(format!("no message {message} passed through this node"))
        })?;
        let envelope =
            SignedEnvelope::decode(envelope).map_err(|e| Error::corrupt("envelopes", e))?;
        let node = self.node_id();
        let mut segments: Vec<(Vec<AuditEntry>, SignedCheckpoint)> = Vec::new();
        let mut covered = 0;
        for &seq in &seqs {
            if seq <= covered {
                continue;
            }
            let checkpoint = store.checkpoint_covering(node, seq)?.ok_or_else(|| {
                Error::corrupt("checkpoints", format!("no checkpoint covers entry {seq}"))
            })?;
            let c = checkpoint
                .open()
                .map_err(|e| Error::corrupt("checkpoints", e))?;
            let entries = store.audit_entries(seq, c.seq, usize::MAX)?;
            covered = c.seq;
            segments.push((entries, checkpoint));
        }
        let mut receipts = store.receipts(message)?;
        receipts.sort_by_key(|r| r.open().map(|r| r.issued_at_ms).unwrap_or(u64::MAX));
        let bundle = bundle::build(BundleInput {
            message,
            header: &envelope.header,
            signature: &envelope.signature,
            header_batch: envelope.batch.as_ref(),
            payload: include_payload.then_some(&envelope.payload[..]),
            receipts: &receipts,
            audit_node: node,
            segments,
            keyring: &self.config().federation.keyring,
        })?;
        serde_json::to_string_pretty(&bundle)
            .map_err(|e| Error::Unavailable(format!("encoding the bundle failed: {e}")))
    }

    /// Messages this node sent or holds that match `filter`, newest first,
    /// one page at a time: at most `filter.limit` and about
    /// [`LIST_ANSWER_BUDGET`] bytes.
    ///
    /// Walks the store's catalogue (by case when the filter names one, else
    /// by time; a time range is a range of the walk, not a filter on it)
    /// from the page token on, reading each message's state record and,
    /// for the messages the page shows, its envelope header. It stops
    /// when the page is full, or after `limits.max_list_scan` messages:
    /// then the page may be short, even empty, and `next` says where the
    /// walk stopped. Blocking: call it through [`Broker::read`].
    pub fn list_messages(&self, filter: &MessageFilter) -> Result<MessagePage> {
        let store = self.store();
        let after = filter.after.as_ref().map(|t| {
            let message = MessageRef {
                sender_node: t.sender_node.clone(),
                message_id: t.message_id.clone(),
            };
            (t.newest_first.0, message)
        });
        let range = CatalogueRange {
            case_reference: filter.case_reference.as_deref(),
            from_ms: filter.from_ms,
            to_ms: filter.to_ms,
            after: after.as_ref().map(|(at, m)| (*at, m)),
        };
        let limit = filter.limit.max(1);
        let mut scan = self.config().limits.max_list_scan.max(1);
        let mut out: Vec<MessageSummary> = Vec::new();
        let mut used = 0;
        let mut examined: Option<PageToken> = None;
        for item in store.catalogue(&range) {
            let Catalogued {
                message,
                created_at_ms,
            } = item?;
            if scan == 0 {
                // Examined enough for one call, and more lie ahead: the
                // next call goes on after the last message examined.
                return Ok(MessagePage {
                    messages: out,
                    next: examined,
                });
            }
            scan -= 1;
            examined = Some(PageToken::at(created_at_ms, &message));
            let Some(r) = store.catalogued_record(&message)? else {
                continue;
            };
            if filter.kind.is_some_and(|k| k != r.kind)
                || filter.peer.as_deref().is_some_and(|p| p != r.peer)
                || filter.state.as_deref().is_some_and(|s| s != r.state)
            {
                continue;
            }
            // Only the messages a page shows have their envelope read.
            let Some(header) = store.catalogue_header(&message)? else {
                continue;
            };
            let summary = MessageSummary {
                message,
                kind: r.kind,
                direction: r.direction.as_str(),
                peer: r.peer,
                case_reference: header.case_reference,
                subject: header.subject,
                state: r.state,
                created_at_ms,
            };
            let size = summary.wire_size();
            if out.len() == limit || (!out.is_empty() && used + size > LIST_ANSWER_BUDGET) {
                // The page is full and another message matches: the next
                // page starts after this page's last message.
                return Ok(MessagePage {
                    next: out.last().map(PageToken::of),
                    messages: out,
                });
            }
            used += size;
            out.push(summary);
        }
        Ok(MessagePage {
            messages: out,
            next: None,
        })
    }
}

/// How fast a node's audit chain can plausibly grow: a witnessed
/// checkpoint may be at most this many entries per second (of signing
/// time) ahead of the last one witnessed. Peak throughput writes a few
/// entries per message, far below this.
pub const MAX_CHAIN_GROWTH_PER_SEC: u64 = 1_000_000;

/// The witness rules: the same checkpoint again changes nothing; one that
/// contradicts the checkpoint held for its entry is refused and kept (a
/// few per node) as evidence; otherwise it must move forward from the
/// latest witnessed one, in entries and in time, and not implausibly far;
/// and at most one per second of signing time is kept.
fn witness_on(
    store: &crate::store::Store,
    peer: &str,
    c: &Checkpoint,
    signed: &SignedCheckpoint,
) -> Result<()> {
    if let Some(held) = store.checkpoint_at(peer, c.seq)? {
        if held.checkpoint == signed.checkpoint {
            return Ok(());
        }
        let kept = store.keep_equivocation(peer, c.seq, signed)?;
        tracing::error!(
            peer,
            seq = c.seq,
            kept,
            "a peer signed two different checkpoints for one entry"
        );
        return Err(Error::AlreadyExists(format!(
            "a different checkpoint of node {peer} at entry {} is already held; the node has \
             signed two histories (the first one is kept, this one {})",
            c.seq,
            if kept {
                "is kept as evidence"
            } else {
                "is not: enough evidence is kept"
            }
        )));
    }
    let mut replaces = None;
    if let Some(latest) = store.latest_checkpoint(peer)? {
        let l = latest.open()?;
        if c.seq < l.seq || c.time_ms < l.time_ms {
            return Err(Error::FailedPrecondition(format!(
                "checkpoint at entry {} (signed at {}) is older than the latest witnessed \
                 checkpoint of {peer} (entry {}, signed at {}); witnessed checkpoints only move \
                 forward",
                c.seq,
                crate::format_time(c.time_ms),
                l.seq,
                crate::format_time(l.time_ms)
            )));
        }
        let elapsed_secs = (c.time_ms - l.time_ms) / 1000 + 1;
        let plausible = l
            .seq
            .saturating_add(MAX_CHAIN_GROWTH_PER_SEC.saturating_mul(elapsed_secs));
        if c.seq > plausible {
            return Err(Error::invalid(format!(
                "checkpoint at entry {} is {} entries ahead of the latest witnessed checkpoint \
                 of {peer} (entry {}), signed {elapsed_secs} s later; a chain grows by at most \
                 {MAX_CHAIN_GROWTH_PER_SEC} entries per second",
                c.seq,
                c.seq - l.seq,
                l.seq
            )));
        }
        // One checkpoint per second of the peer's signing time is kept: a
        // newer one within the same second replaces the latest (it covers
        // more of the chain), so a member sending many cannot grow the
        // witness's store faster than time passes.
        if c.time_ms < l.time_ms.saturating_add(1000) {
            replaces = Some(l.seq);
        }
    }
    store.put_checkpoint(peer, c.seq, signed, replaces)
}
