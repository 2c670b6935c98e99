//! Domain types: identifiers, message kinds, envelopes, receipts, states and
//! the route policy. Pure: no I/O, no tokio, no sled. The signed header and
//! receipt encodings are produced and parsed here and nowhere else.

pub mod approval;
mod audit;
mod envelope;
pub mod followup;
mod policy;
mod receipt;
pub mod rectification;

pub use audit::{
    AuditEntry, AuditEvent, Checkpoint, ENTRY_DOMAIN, GENESIS_HASH, MAX_DETAIL_LEN,
    SignedCheckpoint,
};
pub use envelope::{EnvelopeHeader, SignedEnvelope};
pub use policy::{Route, RoutePolicy};
pub use receipt::{BatchProof, Receipt, ReceiptKind, SignedReceipt};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest message id, node id or principal name accepted anywhere.
pub const MAX_ID_LEN: usize = 128;

/// Checks an identifier: 1 to 128 characters from `[A-Za-z0-9._:-]`.
///
/// The character set keeps ids safe as store key parts (no NUL), in file
/// names and in URIs, and readable in logs.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!(
            "{what} is {} characters long; at most {MAX_ID_LEN} are allowed",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::invalid(format!(
            "{what} {id:?} contains {c:?}; only letters, digits and . _ : - are allowed"
        )));
    }
    Ok(())
}

/// Whether `c` may change how a terminal or an editor shows the text
/// around it: C0 and C1 controls, DEL (`char::is_control` is exactly
/// category Cc), the bidirectional embeddings, overrides, isolates and
/// marks, and the Unicode line and paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061C}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Checks a free-text field (a subject, a case reference, a reason):
/// printable text only. `allow_lines` lets a multi-line field keep its
/// line breaks and tabs.
pub fn check_text(what: &str, value: &str, allow_lines: bool) -> Result<()> {
    let found = value
        .char_indices()
        .find(|(_, c)| is_unsafe_char(*c) && !(allow_lines && matches!(c, '\n' | '\t')));
    match found {
        None => Ok(()),
        Some((at, c)) => Err(Error::invalid(format!(
            "{what} contains the control character U+{:04X} at byte {at}; only printable text \
             is allowed (control and bidirectional-override characters can disguise what a \
             reader sees)",
            c as u32
        ))),
    }
}

/// The kind of agency a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AgencyKind {
    Discipline,
    Personnel,
    PublicSecurity,
    Judicial,
}

impl AgencyKind {
    pub const ALL: [AgencyKind; 4] = [
        AgencyKind::Discipline,
        AgencyKind::Personnel,
        AgencyKind::PublicSecurity,
        AgencyKind::Judicial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgencyKind::Discipline => "discipline",
            AgencyKind::Personnel => "personnel",
            AgencyKind::PublicSecurity => "public_security",
            AgencyKind::Judicial => "judicial",
        }
    }
}

impl fmt::Display for AgencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of business message an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    ClueTransfer,
    RectificationSuggestion,
    /// A reply naming the message it answers; goes back only to that
    /// message's sender.
    Feedback,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::ClueTransfer => "clue_transfer",
            MessageKind::RectificationSuggestion => "rectification_suggestion",
            MessageKind::Feedback => "feedback",
        }
    }

    /// The wire number used in `cluebridge.v1.MessageKind`.
    pub fn to_wire(self) -> i32 {
        match self {
            MessageKind::ClueTransfer => 1,
            MessageKind::RectificationSuggestion => 2,
            MessageKind::Feedback => 3,
        }
    }

    pub fn from_wire(n: i32) -> Result<Self> {
        match n {
            1 => Ok(MessageKind::ClueTransfer),
            2 => Ok(MessageKind::RectificationSuggestion),
            3 => Ok(MessageKind::Feedback),
            other => Err(Error::invalid(format!(
                "unknown message kind {other}; expected clue_transfer (1), \
                 rectification_suggestion (2) or feedback (3)"
            ))),
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "clue_transfer" => Ok(MessageKind::ClueTransfer),
            "rectification_suggestion" => Ok(MessageKind::RectificationSuggestion),
            "feedback" => Ok(MessageKind::Feedback),
            other => Err(Error::invalid(format!(
                "unknown message kind {other:?}; expected clue_transfer, \
                 rectification_suggestion or feedback"
            ))),
        }
    }
}

impl FromStr for AgencyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AgencyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown agency kind {s:?}; expected discipline, personnel, \
                     public_security or judicial"
                ))
            })
    }
}

/// What a principal (a client system of an agency) may do on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `Submit`, and `GetStatus` / `WatchReceipts` of the agency's own sent
    /// messages.
    Submit,
    /// `Receive`, `Ack`, `Reject`, `Release`, `ExtendLease`.
    Receive,
    /// The `Admin` service: queues, peers, dead letters. Never payloads.
    Operate,
    /// The `Audit` service: receipt bundles, the audit log, checkpoints.
    Audit,
    /// `ListPending`, `Approve`, `Decline`: the second pair of eyes on a
    /// route that requires approval (never for the principal's own
    /// submits).
    Approve,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Submit,
        Role::Receive,
        Role::Operate,
        Role::Audit,
        Role::Approve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Receive => "receive",
            Role::Operate => "operate",
            Role::Audit => "audit",
            Role::Approve => "approve",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown role {s:?}; expected submit, receive, operate, audit or approve"
                ))
            })
    }
}

/// A client system of this node's agency, as its node file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: std::collections::BTreeSet<Role>,
    /// The message kinds a `receive` principal is given; `None` means all.
    pub receive_kinds: Option<std::collections::BTreeSet<MessageKind>>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn may_receive(&self, kind: MessageKind) -> bool {
        self.receive_kinds
            .as_ref()
            .is_none_or(|k| k.contains(&kind))
    }
}

/// Sender-side state of a message. Terminal states never change, except
/// that an operator may requeue a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SentState {
    Accepted,
    Delivered,
    Acknowledged,
    Rejected,
    DeadLettered,
    Expired,
}

impl SentState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SentState::Acknowledged
                | SentState::Rejected
                | SentState::DeadLettered
                | SentState::Expired
        )
    }

    /// The state a receipt of `kind` moves a message to, if the move is
    /// allowed from `self`. `None` means the receipt changes nothing (it is
    /// stored as evidence all the same).
    pub fn after(self, kind: ReceiptKind) -> Option<SentState> {
        use SentState::*;
        let next = match kind {
            ReceiptKind::Accepted => return None,
            ReceiptKind::Delivered => Delivered,
            ReceiptKind::Acknowledged => Acknowledged,
            ReceiptKind::Rejected => Rejected,
            ReceiptKind::DeadLettered => DeadLettered,
            ReceiptKind::Expired => Expired,
        };
        match (self, next) {
            (Accepted, _) => Some(next),
            (Delivered, Delivered) => None,
            (Delivered, _) => Some(next),
            // The recipient's operator requeued the dead letter and a
            // receiver settled it (or its time ran out) after all.
            (DeadLettered, Acknowledged | Rejected | Expired) => Some(next),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SentState::Accepted => "accepted",
            SentState::Delivered => "delivered",
            SentState::Acknowledged => "acknowledged",
            SentState::Rejected => "rejected",
            SentState::DeadLettered => "dead_lettered",
            SentState::Expired => "expired",
        }
    }

    pub fn from_wire(n: i32) -> Result<SentState> {
        [
            SentState::Accepted,
            SentState::Delivered,
            SentState::Acknowledged,
            SentState::Rejected,
            SentState::DeadLettered,
            SentState::Expired,
        ]
        .into_iter()
        .find(|s| s.to_wire() == n)
        .ok_or_else(|| Error::invalid(format!("unknown message state {n}")))
    }

    pub fn to_wire(self) -> i32 {
        match self {
            SentState::Accepted => 1,
            SentState::Delivered => 2,
            SentState::Acknowledged => 3,
            SentState::Rejected => 4,
            SentState::DeadLettered => 5,
            SentState::Expired => 6,
        }
    }
}

impl fmt::Display for SentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Recipient-side state of a message held in custody.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboundState {
    /// Waiting in the inbox (possibly with a delay before it is offered).
    Inbox,
    /// Leased to a receiver.
    Leased,
    Acknowledged,
    Rejected,
    DeadLetter,
    Expired,
    /// An operator gave the dead letter up, with a recorded reason.
    Discarded,
}

impl InboundState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, InboundState::Inbox | InboundState::Leased)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InboundState::Inbox => "inbox",
            InboundState::Leased => "leased",
            InboundState::Acknowledged => "acknowledged",
            InboundState::Rejected => "rejected",
            InboundState::DeadLetter => "dead_letter",
            InboundState::Expired => "expired",
            InboundState::Discarded => "discarded",
        }
    }
}

/// A message's identity in the federation: the sender node and the
/// sender-chosen message id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    pub sender_node: String,
    pub message_id: String,
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sender_node, self.message_id)
    }
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_characters() {
        assert!(validate_id("message id", "case-2026.001:a_b").is_ok());
        assert!(validate_id("message id", "").is_err());
        assert!(validate_id("message id", &"x".repeat(129)).is_err());
        let err = validate_id("message id", "a b").unwrap_err().to_string();
        assert!(err.contains("' '"), "{err}");
        assert!(validate_id("message id", "a\0b").is_err());
    }

    #[test]
    fn text_fields_refuse_controls_and_bidi_overrides_but_keep_any_script() {
        assert!(check_text("subject", "误告陷害 — case 12, résumé", false).is_ok());
        for bad in [
            "a\u{1b}]0;x\u{7}",
            "a\u{9b}2J",
            "a\u{7f}",
            "abc\u{202e}fed",
            "x\u{2067}y",
            "a\nb",
            "\0",
        ] {
            let e = check_text("subject", bad, false).unwrap_err().to_string();
            assert!(
                e.contains("subject contains the control character U+"),
                "{bad:?}: {e}"
            );
        }
        assert!(check_text("reason", "line one\n\tline two", true).is_ok());
        assert!(check_text("reason", "line\u{1b}[2J", true).is_err());
    }

    #[test]
    fn terminal_states_do_not_move() {
        assert_eq!(
            SentState::Accepted.after(ReceiptKind::Delivered),
            Some(SentState::Delivered)
        );
        assert_eq!(
            SentState::Accepted.after(ReceiptKind::Acknowledged),
            Some(SentState::Acknowledged)
        );
        assert_eq!(SentState::Acknowledged.after(ReceiptKind::Rejected), None);
        assert_eq!(SentState::Expired.after(ReceiptKind::Delivered), None);
        assert_eq!(SentState::Delivered.after(ReceiptKind::Delivered), None);
        // Only a requeued dead letter moves on, and only to an end state.
        assert_eq!(
            SentState::DeadLettered.after(ReceiptKind::Acknowledged),
            Some(SentState::Acknowledged)
        );
        assert_eq!(SentState::DeadLettered.after(ReceiptKind::Delivered), None);
    }
}
