//! Follow-up: what a node knows about the feedback a message expects.
//!
//! The sender's node *awaits* feedback on a message it sent; the
//! recipient's node *owes* it. Both keep the same record, derived from the
//! message and the feedback that answers it (by `correlation_id`):
//! `awaiting_feedback` → `answered` when a final feedback comes in time,
//! `answered_late` when it comes after the deadline, or `overdue` when the
//! deadline passes first (a final feedback then makes it
//! `answered_late`). Interim feedback is recorded and leaves the state as
//! it is. Pure: the store keeps the records, the broker decides.

use super::{EnvelopeHeader, MessageKind, MessageRef, rectification};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// At most this many feedbacks answer one message (interim ones included):
/// a peer cannot grow a record without bound.
pub const MAX_ANSWERS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FollowUpState {
    AwaitingFeedback,
    Answered,
    AnsweredLate,
    Overdue,
}

impl FollowUpState {
    pub const ALL: [FollowUpState; 4] = [
        FollowUpState::Overdue,
        FollowUpState::AwaitingFeedback,
        FollowUpState::AnsweredLate,
        FollowUpState::Answered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FollowUpState::AwaitingFeedback => "awaiting_feedback",
            FollowUpState::Answered => "answered",
            FollowUpState::AnsweredLate => "answered_late",
            FollowUpState::Overdue => "overdue",
        }
    }

    pub fn parse(s: &str) -> Result<FollowUpState> {
        FollowUpState::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown follow-up state {s:?} (awaiting_feedback, answered, answered_late, overdue)"
                ))
            })
    }

    /// Whether feedback still closes it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            FollowUpState::AwaitingFeedback | FollowUpState::Overdue
        )
    }
}

impl std::fmt::Display for FollowUpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the follow-up this node is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    /// This node sent the message and awaits the feedback.
    Awaiting,
    /// This node received the message and owes the feedback.
    Owed,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Awaiting => "awaiting",
            Side::Owed => "owed",
        }
    }
}

/// What one item of a structured feedback says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemOutcome {
    /// The item's position in the suggestion, from 0.
    pub item: u32,
    /// `corrected`, `partly_corrected`, `not_corrected` or `in_progress`.
    pub outcome: String,
    pub reason: String,
    pub expected_by_ms: u64,
}

/// One feedback that answers the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub feedback_id: String,
    /// When the answering agency's node accepted the feedback: the signed
    /// `created_at_ms` of its header, the same time on both nodes however
    /// long the feedback then travelled.
    pub at_ms: u64,
    /// The last word: it closes the follow-up.
    pub is_final: bool,
    /// Per item, for structured feedback; empty for free-form feedback.
    pub outcomes: Vec<ItemOutcome>,
}

impl Answer {
    /// What the feedback `header` with `payload` says (checked beforehand
    /// by [`rectification::check`]): free-form feedback is final; it was
    /// given at the header's signed creation time.
    pub fn of(header: &EnvelopeHeader, payload: &[u8]) -> Answer {
        let (is_final, outcomes) = match rectification::feedback_outcomes(header, payload) {
            Some((is_final, outcomes)) => (is_final, outcomes),
            None => (true, Vec::new()),
        };
        Answer {
            feedback_id: header.message_id.clone(),
            at_ms: header.created_at_ms,
            is_final,
            outcomes,
        }
    }
}

/// A message that expects feedback, from this node's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUp {
    pub side: Side,
    pub message: MessageRef,
    /// The other agency's node: the recipient when awaiting, the sender
    /// when owed.
    pub peer: String,
    pub kind: MessageKind,
    pub case_reference: String,
    pub created_at_ms: u64,
    /// The reply-by deadline (Unix ms); `None`: feedback expected, no
    /// deadline.
    pub due_ms: Option<u64>,
    pub state: FollowUpState,
    pub changed_at_ms: u64,
    /// Oldest first.
    pub answers: Vec<Answer>,
}

impl FollowUp {
    /// The follow-up of a message that expects feedback, as it starts.
    pub fn start(side: Side, header: &EnvelopeHeader, now_ms: u64) -> FollowUp {
        FollowUp {
            side,
            message: header.message_ref(),
            peer: match side {
                Side::Awaiting => header.recipient_node.clone(),
                Side::Owed => header.sender_node.clone(),
            },
            kind: header.kind,
            case_reference: header.case_reference.clone(),
            created_at_ms: now_ms,
            due_ms: (header.reply_by_ms != 0).then_some(header.reply_by_ms),
            state: FollowUpState::AwaitingFeedback,
            changed_at_ms: now_ms,
            answers: Vec::new(),
        }
    }

    /// Records `answer`, at `now_ms`; a final one closes the follow-up,
    /// late when it was given after the deadline. Given is when the
    /// answering node accepted it (its signed creation time), so both
    /// nodes agree: a follow-up that fell overdue here while a feedback
    /// given in time was on its way is answered, not answered late.
    /// Refuses an answer to a closed follow-up, a second answer with the
    /// same id and one past [`MAX_ANSWERS`].
    pub fn answer(&mut self, answer: Answer, now_ms: u64) -> Result<()> {
        if !self.state.is_open() {
            return Err(Error::FailedPrecondition(format!(
                "{} is already {} by feedback {:?}; a final feedback closed it",
                self.message,
                self.state,
                self.answers
                    .last()
                    .map(|a| a.feedback_id.as_str())
                    .unwrap_or("")
            )));
        }
        if self
            .answers
            .iter()
            .any(|a| a.feedback_id == answer.feedback_id)
        {
            return Err(Error::AlreadyExists(format!(
                "feedback {:?} already answers {}",
                answer.feedback_id, self.message
            )));
        }
        if self.answers.len() >= MAX_ANSWERS {
            return Err(Error::ResourceExhausted(format!(
                "{} has {MAX_ANSWERS} feedbacks already; send a final one",
                self.message
            )));
        }
        if answer.is_final {
            let late = self.due_ms.is_some_and(|due| answer.at_ms > due);
            self.state = if late {
                FollowUpState::AnsweredLate
            } else {
                FollowUpState::Answered
            };
        }
        self.changed_at_ms = now_ms;
        self.answers.push(answer);
        Ok(())
    }

    /// Marks an open follow-up whose deadline passed by `now_ms` overdue;
    /// whether it changed.
    pub fn fall_due(&mut self, now_ms: u64) -> bool {
        let due = self.due_ms.is_some_and(|due| due < now_ms);
        if self.state != FollowUpState::AwaitingFeedback || !due {
            return false;
        }
        self.state = FollowUpState::Overdue;
        self.changed_at_ms = now_ms;
        true
    }

    /// A short line for the audit log: the last answer and its outcomes.
    pub fn note(&self) -> String {
        match self.answers.last() {
            None => match self.due_ms {
                Some(due) => format!("{} {} was due at {due}", self.side.as_str(), self.kind),
                None => format!("{} {}", self.side.as_str(), self.kind),
            },
            Some(a) => {
                let outcomes: Vec<String> = a
                    .outcomes
                    .iter()
                    .map(|o| format!("item {}: {}", o.item, o.outcome))
                    .collect();
                format!(
                    "{} feedback {}{}{}",
                    if a.is_final { "final" } else { "interim" },
                    a.feedback_id,
                    if outcomes.is_empty() { "" } else { "; " },
                    outcomes.join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow_up(due_ms: Option<u64>) -> FollowUp {
        FollowUp {
            side: Side::Awaiting,
            message: MessageRef {
                sender_node: "discipline".into(),
                message_id: "s-1".into(),
            },
            peer: "personnel".into(),
            kind: MessageKind::RectificationSuggestion,
            case_reference: "CASE-1".into(),
            created_at_ms: 0,
            due_ms,
            state: FollowUpState::AwaitingFeedback,
            changed_at_ms: 0,
            answers: Vec::new(),
        }
    }

    fn answer(id: &str, at_ms: u64, is_final: bool) -> Answer {
        Answer {
            feedback_id: id.into(),
            at_ms,
            is_final,
            outcomes: Vec::new(),
        }
    }

    #[test]
    fn interim_then_final_in_time_is_answered() {
        let mut f = follow_up(Some(100));
        f.answer(answer("a", 10, false), 200).unwrap();
        assert_eq!(f.state, FollowUpState::AwaitingFeedback);
        f.answer(answer("b", 90, true), 200).unwrap();
        assert_eq!(f.state, FollowUpState::Answered);
        // Closed: nothing more answers it.
        let err = f.answer(answer("c", 95, true), 200).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert_eq!(f.answers.len(), 2);
    }

    #[test]
    fn a_deadline_passes_once_and_a_late_answer_says_so() {
        let mut f = follow_up(Some(100));
        assert!(!f.fall_due(100), "due at 100 is not yet overdue at 100");
        assert!(f.fall_due(101));
        assert!(!f.fall_due(102), "overdue once");
        assert_eq!(f.state, FollowUpState::Overdue);
        f.answer(answer("late", 150, true), 200).unwrap();
        assert_eq!(f.state, FollowUpState::AnsweredLate);
        assert_eq!(f.changed_at_ms, 200, "changed when recorded");
        // Late even when the sweep had not run yet.
        let mut g = follow_up(Some(100));
        g.answer(answer("late", 150, true), 200).unwrap();
        assert_eq!(g.state, FollowUpState::AnsweredLate);
    }

    #[test]
    fn feedback_given_in_time_answers_in_time_though_it_arrived_after_the_deadline() {
        let mut f = follow_up(Some(100));
        assert!(
            f.fall_due(120),
            "overdue here: the feedback was still on its way"
        );
        f.answer(answer("on-time", 95, true), 130).unwrap();
        assert_eq!(f.state, FollowUpState::Answered);
        assert_eq!(f.answers[0].at_ms, 95);
        assert_eq!(f.changed_at_ms, 130);
    }

    #[test]
    fn without_a_deadline_nothing_falls_due() {
        let mut f = follow_up(None);
        assert!(!f.fall_due(u64::MAX));
        f.answer(answer("a", 5, true), 200).unwrap();
        assert_eq!(f.state, FollowUpState::Answered);
    }

    #[test]
    fn answers_are_bounded_and_unique() {
        let mut f = follow_up(None);
        f.answer(answer("a", 1, false), 200).unwrap();
        assert!(matches!(
            f.answer(answer("a", 2, false), 200),
            Err(Error::AlreadyExists(_))
        ));
        for i in 1..MAX_ANSWERS {
            f.answer(answer(&format!("i{i}"), 3, false), 200).unwrap();
        }
        assert!(matches!(
            f.answer(answer("more", 4, false), 200),
            Err(Error::ResourceExhausted(_))
        ));
    }

    #[test]
    fn states_read_back() {
        for s in FollowUpState::ALL {
            assert_eq!(FollowUpState::parse(s.as_str()).unwrap(), s);
        }
        assert!(FollowUpState::parse("late").is_err());
    }
}
