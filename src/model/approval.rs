//! Approval before sending (four eyes): a submit on a route that requires
//! it waits, unsigned and unsent, until a second principal with the
//! `approve` role approves it (then it is signed and accepted like any
//! submit) or declines it with a reason (then it is never sent).

use super::{EnvelopeHeader, MessageRef};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A submit waiting for approval, or declined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The header as it will be signed (`EnvelopeHeader::encode`).
    pub header: Vec<u8>,
    /// The payload; dropped once declined.
    pub payload: Vec<u8>,
    /// The principal that submitted it.
    pub submitter: String,
    /// The submit's digest (idempotency, as for any submit).
    pub request_digest: [u8; 32],
    pub submitted_at_ms: u64,
    /// Set when it was declined: final.
    pub declined: Option<Decision>,
}

/// Who declined a submit, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at_ms: u64,
    pub reason: String,
}

impl PendingApproval {
    pub fn header(&self) -> Result<EnvelopeHeader> {
        EnvelopeHeader::decode(&self.header)
    }

    /// Refuses `principal` as the second pair of eyes on its own submit.
    pub fn check_second_pair_of_eyes(&self, message: &MessageRef, principal: &str) -> Result<()> {
        if self.submitter == principal {
            return Err(Error::PermissionDenied(format!(
                "{message} was submitted by {principal}; another principal with the approve \
                 role must approve or decline it"
            )));
        }
        Ok(())
    }
}
