//! The auditors' side of a node: signing checkpoints of the audit chain,
//! keeping peers' checkpoints as a witness, assembling receipt bundles,
//! and searching messages.

use super::Broker;
use crate::audit::bundle::{self, BundleInput};
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, Checkpoint, EnvelopeHeader, MessageKind, MessageRef, SignedCheckpoint,
    SignedEnvelope, validate_id,
};
use crate::now_ms;

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
        self.store()
            .write(move |s| s.put_own_checkpoint(&node, &signed))
            .await
    }

    /// Signs a checkpoint if the chain grew by `checkpoint_every_entries`
    /// since the last one, or grew at all and `checkpoint_interval_secs`
    /// passed.
    pub async fn checkpoint_if_due(&self) -> Result<Option<SignedCheckpoint>> {
        let settings = &self.config().audit;
        let (head, _) = self.store().audit_head()?;
        let (last_seq, last_ms) = match self.store().latest_checkpoint(self.node_id())? {
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
        let peer = peer.to_string();
        self.store()
            .write(move |s| s.put_checkpoint(&peer, c.seq, &signed))
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
        let store = self.store();
        let seqs = store.audit_seqs_of(&message)?;
        let envelope = store.envelope(&message)?;
        let (Some(envelope), Some(&last)) = (envelope, seqs.last()) else {
            return Err(Error::NotFound(format!(
                "no message {message} passed through this node (or it has no audit entry)"
            )));
        };
        let envelope =
            SignedEnvelope::decode(&envelope).map_err(|e| Error::corrupt("envelopes", e))?;
        let node = self.node_id();
        if store.checkpoint_covering(node, last)?.is_none() {
            self.checkpoint_now().await?;
        }
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
        let mut receipts = store.receipts(&message)?;
        receipts.sort_by_key(|r| r.open().map(|r| r.issued_at_ms).unwrap_or(u64::MAX));
        let bundle = bundle::build(BundleInput {
            message: &message,
            header: &envelope.header,
            signature: &envelope.signature,
            payload: include_payload.then_some(envelope.payload.as_slice()),
            receipts: &receipts,
            audit_node: node,
            segments,
            keyring: &self.config().federation.keyring,
        })?;
        serde_json::to_string_pretty(&bundle)
            .map_err(|e| Error::Unavailable(format!("encoding the bundle failed: {e}")))
    }

    /// Messages this node sent or holds that match `filter`, newest first.
    pub fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<MessageSummary>> {
        let store = self.store();
        let mut out = Vec::new();
        let mut consider = |message: MessageRef,
                            direction: &'static str,
                            peer: String,
                            state: &'static str|
         -> Result<()> {
            if filter.state.as_deref().is_some_and(|s| s != state)
                || filter.peer.as_deref().is_some_and(|p| p != peer)
            {
                return Ok(());
            }
            let Some(bytes) = store.envelope(&message)? else {
                return Ok(());
            };
            let envelope =
                SignedEnvelope::decode(&bytes).map_err(|e| Error::corrupt("envelopes", e))?;
            let h = EnvelopeHeader::decode(&envelope.header)
                .map_err(|e| Error::corrupt("envelopes", e))?;
            if filter.kind.is_some_and(|k| k != h.kind)
                || filter
                    .case_reference
                    .as_deref()
                    .is_some_and(|c| c != h.case_reference)
                || filter.from_ms.is_some_and(|t| h.created_at_ms < t)
                || filter.to_ms.is_some_and(|t| h.created_at_ms >= t)
            {
                return Ok(());
            }
            out.push(MessageSummary {
                message,
                kind: h.kind,
                direction,
                peer,
                case_reference: h.case_reference,
                subject: h.subject,
                state,
                created_at_ms: h.created_at_ms,
            });
            Ok(())
        };
        for item in store.sent_records() {
            let (message, record) = item?;
            consider(message, "sent", record.recipient, record.state.as_str())?;
        }
        for item in store.inbound_records() {
            let (message, record) = item?;
            let peer = message.sender_node.clone();
            consider(message, "received", peer, record.state.as_str())?;
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.created_at_ms));
        out.truncate(filter.limit);
        Ok(out)
    }
}
