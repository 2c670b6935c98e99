//! Approval before sending (four eyes, `model::approval`): holding a
//! submit whose route requires it, and the approve role's calls.

use super::{Broker, Submitted};
use crate::error::{Error, Result};
use crate::model::approval::{Decision, PendingApproval};
use crate::model::{EnvelopeHeader, MessageRef};
use crate::now_ms;
use crate::store::HoldOutcome;

/// A submit waiting for approval, as `ListPending` shows it.
#[derive(Clone, Debug)]
pub struct PendingView {
    pub header: EnvelopeHeader,
    pub submitter: String,
    pub submitted_at_ms: u64,
}

impl Broker {
    /// Keeps a checked submit, unsigned and unsent, for a second principal.
    pub(super) async fn hold_for_approval(
        &self,
        principal: &str,
        header: EnvelopeHeader,
        payload: bytes::Bytes,
        request_digest: [u8; 32],
    ) -> Result<Submitted> {
        let message = header.message_ref();
        let detail = format!(
            "{} to {}, submitted by {principal}",
            header.kind, header.recipient_node
        );
        let pending = PendingApproval {
            header: header.encode(),
            payload: payload.to_vec(),
            submitter: principal.to_string(),
            request_digest,
            submitted_at_ms: now_ms(),
            declined: None,
        };
        let held = {
            let message = message.clone();
            self.store()
                .write(move |s| s.hold_for_approval(&message, &pending, detail))
                .await?
        };
        match held {
            HoldOutcome::Held => {
                tracing::info!(%message, principal, "waiting for approval");
                Ok(Submitted::PendingApproval { duplicate: false })
            }
            HoldOutcome::AlreadyHeld => Ok(Submitted::PendingApproval { duplicate: true }),
            HoldOutcome::AlreadySent => {
                let original = self.accepted_receipt(&message, request_digest)?;
                self.answered_before(&message, original)
            }
        }
    }

    /// The `accepted` receipt of a message sent before, if `request_digest`
    /// is the same submit's.
    fn accepted_receipt(
        &self,
        message: &MessageRef,
        request_digest: [u8; 32],
    ) -> Result<crate::model::SignedReceipt> {
        let record = self
            .store()
            .sent(message)?
            .ok_or_else(|| Error::corrupt("sent", format!("{message} vanished")))?;
        if record.request_digest != request_digest {
            return Err(Error::AlreadyExists(format!(
                "message id {:?} was already used for a message with other content; \
                 choose a new id (nothing was changed)",
                message.message_id
            )));
        }
        self.receipts_in_order(message)?
            .into_iter()
            .find(|r| {
                r.open()
                    .is_ok_and(|r| r.kind == crate::model::ReceiptKind::Accepted)
            })
            .ok_or_else(|| Error::corrupt("receipts", format!("{message} has no accepted receipt")))
    }

    /// Approves a waiting submit of this node's agency: it is signed and
    /// accepted now. `approver` may not be its submitter. A repeat answers
    /// the accepted receipt again.
    pub async fn approve(&self, approver: &str, message_id: &str) -> Result<Submitted> {
        let message = self.own_message(message_id);
        let Some(held) = self.store().pending_approval(&message)? else {
            if let Some(record) = self.store().sent(&message)? {
                let original = self.accepted_receipt(&message, record.request_digest)?;
                return self.answered_before(&message, original);
            }
            return Err(self.not_waiting(&message)?);
        };
        held.check_second_pair_of_eyes(&message, approver)?;
        let header = held.header()?;
        if header.expires_at_ms <= now_ms() {
            return Err(Error::FailedPrecondition(format!(
                "{message} reached its time to live while it waited for approval; submit it again \
                 under a new id"
            )));
        }
        let approved = self
            .accept(
                header,
                held.payload.into(),
                held.request_digest,
                Some(approver.to_string()),
            )
            .await?;
        tracing::info!(%message, approver, "approved");
        Ok(approved)
    }

    /// Declines a waiting submit for good, with a reason kept in the
    /// audit chain. `decliner` may not be its submitter.
    pub async fn decline(&self, decliner: &str, message_id: &str, reason: &str) -> Result<()> {
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "a decline needs a reason; it is kept in the audit chain",
            ));
        }
        super::validate::check_reason(self.config(), reason)?;
        let message = self.own_message(message_id);
        let Some(held) = self.store().pending_approval(&message)? else {
            return Err(self.not_waiting(&message)?);
        };
        held.check_second_pair_of_eyes(&message, decliner)?;
        let decision = Decision {
            by: decliner.to_string(),
            at_ms: now_ms(),
            reason: reason.to_string(),
        };
        {
            let message = message.clone();
            self.store()
                .write(move |s| s.decline(&message, &decision))
                .await?;
        }
        tracing::info!(%message, decliner, "declined");
        Ok(())
    }

    /// Declines, in the node's name, a submit whose time to live passed
    /// while it waited for approval. On the store's writer thread.
    pub(super) fn expire_pending(
        &self,
        s: &crate::store::Store,
        message: &MessageRef,
    ) -> Result<()> {
        let decision = Decision {
            by: self.node_id().to_string(),
            at_ms: now_ms(),
            reason: "its time to live passed while it waited for approval".into(),
        };
        s.decline(message, &decision)?;
        tracing::warn!(%message, "declined: its time to live passed while it waited for approval");
        Ok(())
    }

    /// Submits waiting for approval, after the message key `after`.
    pub fn pending_approvals(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<PendingView>, Option<Vec<u8>>)> {
        let found = self.store().pending_approvals(after, limit)?;
        let next = (found.len() == limit)
            .then(|| found.last().map(|(k, _)| k.clone()))
            .flatten();
        let views = found
            .into_iter()
            .map(|(_, p)| {
                Ok(PendingView {
                    header: p.header()?,
                    submitter: p.submitter,
                    submitted_at_ms: p.submitted_at_ms,
                })
            })
            .collect::<Result<_>>()?;
        Ok((views, next))
    }

    fn own_message(&self, message_id: &str) -> MessageRef {
        MessageRef {
            sender_node: self.node_id().to_string(),
            message_id: message_id.to_string(),
        }
    }

    /// Why `message` cannot be approved or declined: declined already, sent
    /// already, or unknown.
    fn not_waiting(&self, message: &MessageRef) -> Result<Error> {
        if let Some(d) = self.store().declined(message)?.and_then(|p| p.declined) {
            return Ok(Error::FailedPrecondition(format!(
                "{message} was declined by {} ({}); a declined message is never sent",
                d.by, d.reason
            )));
        }
        if self.store().sent(message)?.is_some() {
            return Ok(Error::FailedPrecondition(format!(
                "{message} was approved and sent already"
            )));
        }
        Ok(Error::NotFound(format!(
            "no submit {message} waits for approval here"
        )))
    }
}
