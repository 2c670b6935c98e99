//! Follow-up rules: which messages expect feedback, what a feedback
//! answers, the overdue sweep and the lists (`model::followup`).

use super::{Broker, MessageFilter, MessageSummary, PageToken};
use crate::error::{Error, Result};
use crate::model::followup::{Answer, FollowUp, Side};
use crate::model::{AgencyKind, EnvelopeHeader, MessageKind, MessageRef, SignedReceipt};
use crate::store::{FollowUpChange, FollowUpFilter};

/// Follow-ups marked overdue per store change.
const SWEEP_BATCH: usize = 256;
/// Index entries one list call looks at before it answers with a token.
const LIST_SCAN: usize = 10_000;

impl Broker {
    /// What a message brings to follow-ups, on `side`: a feedback answers
    /// the message its `correlation_id` names; another message expects
    /// feedback when its route says so or it carries a reply-by deadline.
    pub(super) fn follow_up_change(
        &self,
        side: Side,
        header: &EnvelopeHeader,
        payload: &[u8],
        route: (AgencyKind, AgencyKind),
        now: u64,
    ) -> FollowUpChange {
        if header.kind == MessageKind::Feedback {
            return FollowUpChange {
                start: None,
                answers: Some((answered_by(header), Answer::of(header, payload))),
            };
        }
        let (from, to) = route;
        let expected = header.reply_by_ms != 0
            || self
                .config()
                .federation
                .policy
                .expects_feedback(from, header.kind, to);
        FollowUpChange {
            start: expected.then(|| FollowUp::start(side, header, now)),
            answers: None,
        }
    }

    /// Refuses a feedback whose answered message has no open follow-up
    /// here (the store checks again in the change's transaction).
    pub(super) fn check_answerable(&self, feedback: &EnvelopeHeader) -> Result<()> {
        let answered = answered_by(feedback);
        match self.store().follow_up(&answered)? {
            None => Err(Error::FailedPrecondition(format!(
                "{answered} expects no feedback: it had no reply-by deadline and its route \
                 does not expect feedback"
            ))),
            Some(f) if !f.state.is_open() => Err(Error::FailedPrecondition(format!(
                "{answered} is already {}; a final feedback closed it",
                f.state
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Marks follow-ups whose deadline passed overdue; how many.
    pub async fn sweep_overdue(&self) -> Result<usize> {
        let now = crate::now_ms();
        let changed = self
            .store()
            .write(move |s| s.sweep_overdue(now, SWEEP_BATCH))
            .await?;
        for f in &changed {
            tracing::warn!(
                message = %f.message,
                peer = %f.peer,
                side = f.side.as_str(),
                "follow-up overdue: the reply-by deadline passed with no final feedback"
            );
        }
        Ok(changed.len())
    }

    /// One page of follow-ups, and the token of the next when more may
    /// match.
    pub async fn list_follow_ups(
        &self,
        filter: FollowUpFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<FollowUp>, Option<Vec<u8>>)> {
        self.read(move |b| {
            b.store()
                .follow_ups(&filter, after.as_deref(), limit, LIST_SCAN)
        })
        .await
    }
}

/// One message of a case, as `GetCase` shows it.
#[derive(Clone, Debug)]
pub struct CaseEntry {
    pub summary: MessageSummary,
    pub receipts: Vec<SignedReceipt>,
    pub follow_up: Option<FollowUp>,
}

impl Broker {
    /// One page of a case: its messages newest first, each with its
    /// receipts and follow-up.
    pub fn case_view(
        &self,
        case_reference: String,
        after: Option<PageToken>,
        limit: usize,
    ) -> Result<(Vec<CaseEntry>, Option<PageToken>)> {
        let page = self.list_messages(&MessageFilter {
            case_reference: Some(case_reference),
            from_ms: None,
            to_ms: None,
            state: None,
            peer: None,
            kind: None,
            limit,
            after,
        })?;
        let entries = page
            .messages
            .into_iter()
            .map(|summary| {
                Ok(CaseEntry {
                    receipts: self.receipts_in_order(&summary.message)?,
                    follow_up: self.store().follow_up(&summary.message)?,
                    summary,
                })
            })
            .collect::<Result<_>>()?;
        Ok((entries, page.next))
    }
}

/// The message a feedback answers: its `correlation_id`, sent by the
/// feedback's recipient.
fn answered_by(feedback: &EnvelopeHeader) -> MessageRef {
    MessageRef {
        sender_node: feedback.recipient_node.clone(),
        message_id: feedback.correlation_id.clone(),
    }
}
