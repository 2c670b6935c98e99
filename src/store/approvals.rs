//! Submits waiting for approval (`model::approval`).
//!
//! Trees:
//! - `pending_approval`: message key → the waiting submit (header not yet
//!   signed, payload);
//! - `declined`: message key → a declined submit (without its payload).
//!
//! An approved submit leaves `pending_approval` in the transaction that
//! accepts it (`Store::submit` with its approver). A waiting submit has
//! its entry in the expiry index, so that one whose time to live passes
//! is declined in the node's name.

use super::*;
use crate::model::approval::{Decision, PendingApproval};

/// What holding a submit for approval did.
#[derive(Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Stored; it waits.
    Held,
    /// The same submit waits already.
    AlreadyHeld,
    /// It was approved already: the caller answers as for a duplicate.
    AlreadySent,
}

impl Store {
    /// Keeps a submit until a second principal approves or declines it,
    /// with an audit entry. The same submit again changes nothing; another
    /// under the same id is refused, and so is one that was declined.
    pub fn hold_for_approval(
        &self,
        message: &MessageRef,
        pending: &PendingApproval,
        detail: String,
    ) -> Result<HoldOutcome> {
        let key = keys::message(message);
        let expires_at_ms = pending.header()?.expires_at_ms;
        let note = Note::new(AuditEvent::AwaitingApproval, "pending_approval", detail);
        self.transact(|t| {
            if t[SENT].get(&key)?.is_some() {
                return Ok(HoldOutcome::AlreadySent);
            }
            if let Some(declined) = record_in::<PendingApproval>(t, DECLINED, &key)? {
                return abort(declined_error(message, &declined));
            }
            if let Some(held) = record_in::<PendingApproval>(t, PENDING_APPROVAL, &key)? {
                if held.request_digest != pending.request_digest {
                    return abort(Error::AlreadyExists(format!(
                        "message id {:?} was already used for a message with other content; \
                         choose a new id (nothing was changed)",
                        message.message_id
                    )));
                }
                return Ok(HoldOutcome::AlreadyHeld);
            }
            t[PENDING_APPROVAL].insert(key.as_slice(), records::encode(pending))?;
            // Its time to live runs while it waits: the expiry sweep
            // declines it when that passes (`Broker::expire_pending`).
            t[EXPIRY].insert(keys::expiry(expires_at_ms, &key), key.as_slice())?;
            self.append_audit(t, message, &note)?;
            Ok(HoldOutcome::Held)
        })
    }

    /// The submit waiting for approval under `message`, if any.
    pub fn pending_approval(&self, message: &MessageRef) -> Result<Option<PendingApproval>> {
        self.read(PENDING_APPROVAL, &keys::message(message))?
            .map(|v| records::decode("pending_approval", &v))
            .transpose()
    }

    /// The declined submit under `message`, if any.
    pub fn declined(&self, message: &MessageRef) -> Result<Option<PendingApproval>> {
        self.read(DECLINED, &keys::message(message))?
            .map(|v| records::decode("declined", &v))
            .transpose()
    }

    /// Submits waiting for approval, oldest message key first, after the
    /// key `after`; at most `limit`.
    pub fn pending_approvals(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, PendingApproval)>> {
        let tree = self.tree(PENDING_APPROVAL);
        let iter = match after {
            Some(a) => tree.range((
                std::ops::Bound::Excluded(a.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv?;
            out.push((k.to_vec(), records::decode("pending_approval", &v)?));
        }
        Ok(out)
    }

    /// Every submit that never left approval, with its state as the
    /// audit chain names it (`pending_approval` or `declined`).
    pub fn approval_records(&self) -> Result<Vec<(MessageRef, &'static str)>> {
        let mut out = Vec::new();
        for (tree, state) in [
            (PENDING_APPROVAL, "pending_approval"),
            (DECLINED, "declined"),
        ] {
            for kv in self.tree(tree).iter() {
                let (k, _) = kv?;
                let message = keys::parse_message(&k)
                    .ok_or_else(|| Error::corrupt(TREE_NAMES[tree], "bad message key"))?;
                out.push((message, state));
            }
        }
        Ok(out)
    }

    /// Declines a waiting submit for good, with an audit entry naming who
    /// and why.
    pub fn decline(&self, message: &MessageRef, decision: &Decision) -> Result<()> {
        let key = keys::message(message);
        let note = Note::new(
            AuditEvent::Declined,
            "declined",
            format!("declined by {}: {}", decision.by, decision.reason),
        );
        self.transact(|t| {
            let mut held = take_pending(t, message, &key)?;
            held.payload = Vec::new();
            held.declined = Some(decision.clone());
            t[DECLINED].insert(key.as_slice(), records::encode(&held))?;
            self.append_audit(t, message, &note)
        })
    }

    /// In an approving submit's transaction: removes the waiting submit
    /// and logs who approved it.
    pub(super) fn take_approved(
        &self,
        t: &Tx,
        message: &MessageRef,
        approver: &str,
    ) -> TxResult<()> {
        let held = take_pending(t, message, &keys::message(message))?;
        let note = Note::new(
            AuditEvent::Approved,
            "approved",
            format!("approved by {approver}; submitted by {}", held.submitter),
        );
        self.append_audit(t, message, &note)
    }
}

/// Removes and returns the waiting submit, refusing when there is none.
fn take_pending(t: &Tx, message: &MessageRef, key: &[u8]) -> TxResult<PendingApproval> {
    if let Some(declined) = record_in::<PendingApproval>(t, DECLINED, key)? {
        return abort(declined_error(message, &declined));
    }
    let Some(held) = record_in::<PendingApproval>(t, PENDING_APPROVAL, key)? else {
        return abort(Error::NotFound(format!(
            "no submit {message} waits for approval here"
        )));
    };
    t[PENDING_APPROVAL].remove(key)?;
    Ok(held)
}

fn declined_error(message: &MessageRef, declined: &PendingApproval) -> Error {
    let (by, reason) = declined
        .declined
        .as_ref()
        .map_or(("", ""), |d| (d.by.as_str(), d.reason.as_str()));
    Error::FailedPrecondition(format!(
        "{message} was declined by {by} ({reason}); a declined message is never sent"
    ))
}
