//! A case bundle: the receipt bundles of every message one node sent or
//! received under a case reference, in one file that `cluebridge verify`
//! checks offline like a message bundle (`docs/bundle-format.md`).

use super::bundle::{self, Bundle};
use super::{Check, Report};
use crate::crypto::Keyring;
use crate::model::SignedCheckpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The `format` of a case bundle.
pub const FORMAT: &str = "cluebridge-case-bundle";
/// The case bundle format version this code writes and reads.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseBundle {
    pub format: String,
    pub version: u32,
    pub case_reference: String,
    /// The node whose evidence this is (every message bundle's audit node).
    pub node: String,
    /// One receipt bundle per message, newest first.
    pub messages: Vec<Bundle>,
}

impl CaseBundle {
    pub fn new(case_reference: &str, node: &str, messages: Vec<Bundle>) -> CaseBundle {
        CaseBundle {
            format: FORMAT.into(),
            version: VERSION,
            case_reference: case_reference.into(),
            node: node.into(),
            messages,
        }
    }
}

/// Whether `text` is a case bundle (by its `format`), rather than a
/// message bundle.
pub fn is_case_bundle(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("format")
                .and_then(|f| f.as_str())
                .map(|f| f == FORMAT)
        })
        .unwrap_or(false)
}

/// Verifies every message bundle of a case bundle, and that each is the
/// named node's evidence about a message of the named case, once.
pub fn verify(
    text: &str,
    trust: Option<&Keyring>,
    witnessed: Option<&[SignedCheckpoint]>,
) -> Report {
    let mut report = Report::default();
    let Some(case) = report.parse::<CaseBundle>(text, "case bundle") else {
        return report;
    };
    report.subject = format!("case {} at node {}", case.case_reference, case.node);
    report.trusted_keys = trust.is_some();
    if case.format != FORMAT || case.version != VERSION {
        report.push(Check::fail(
            "format",
            format!(
                "format {:?} version {}; this verifier reads {FORMAT:?} version {VERSION}",
                case.format, case.version
            ),
        ));
        return report;
    }
    report.push(Check::pass("format", format!("{FORMAT} version {VERSION}")));
    if case.messages.is_empty() {
        report.push(Check::fail("messages", "the case bundle holds no message"));
        return report;
    }
    let mut seen = BTreeSet::new();
    for (i, message) in case.messages.iter().enumerate() {
        report.push(message_check(
            i, message, &case, trust, witnessed, &mut seen,
        ));
    }
    report
}

fn message_check(
    i: usize,
    message: &Bundle,
    case: &CaseBundle,
    trust: Option<&Keyring>,
    witnessed: Option<&[SignedCheckpoint]>,
    seen: &mut BTreeSet<(String, String)>,
) -> Check {
    let name = format!(
        "message {} ({}/{})",
        i + 1,
        message.message.sender_node,
        message.message.message_id
    );
    let text = match serde_json::to_string(message) {
        Ok(t) => t,
        Err(e) => return Check::fail(&name, e.to_string()),
    };
    let inner = bundle::verify(&text, trust, witnessed);
    if let Some(f) = inner.first_failure() {
        return Check::fail(&name, format!("{}: {}", f.name, f.detail));
    }
    // Past verification, the readable header fields equal the signed ones.
    let case_of = message.envelope.header_fields["case_reference"].as_str();
    if case_of != Some(case.case_reference.as_str()) {
        return Check::fail(
            &name,
            format!(
                "its signed header names case {:?}, not {:?}",
                case_of.unwrap_or(""),
                case.case_reference
            ),
        );
    }
    if message.audit.node != case.node {
        return Check::fail(
            &name,
            format!(
                "its evidence comes from node {:?}, not {:?}",
                message.audit.node, case.node
            ),
        );
    }
    let id = (
        message.message.sender_node.clone(),
        message.message.message_id.clone(),
    );
    if !seen.insert(id) {
        return Check::fail(&name, "the case bundle holds this message twice");
    }
    Check::pass(&name, format!("{} checks passed", inner.checks.len()))
}
