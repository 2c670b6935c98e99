//! Evidence for auditors: receipt bundles and their offline verification
//! (`bundle`), checkpoint files, and the check of a stopped node's whole
//! store against its hash chain (`store_check`).
//!
//! The chain itself is appended by `store` (inside each state change's
//! transaction); its encodings live in `model::audit`.

pub mod bundle;
pub mod case_bundle;
pub mod store_check;

use crate::error::{Error, Result};
use crate::model::SignedCheckpoint;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// One named check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            pass: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            pass: false,
            detail: detail.into(),
        }
    }

    pub fn from(name: &str, outcome: Result<String>) -> Check {
        match outcome {
            Ok(d) => Check::pass(name, d),
            Err(e) => Check::fail(name, e.to_string()),
        }
    }
}

/// One line of a message's history, for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineItem {
    pub time_ms: u64,
    /// Orders items of the same millisecond: envelope, receipts, entries.
    #[serde(skip)]
    pub order: (u8, u64),
    pub text: String,
}

/// The outcome of a verification: every check, and a timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What was verified (a message, a data directory).
    pub subject: String,
    pub passed: bool,
    /// Whether the keys used came from a trust list (not from the
    /// evidence itself).
    pub trusted_keys: bool,
    pub checks: Vec<Check>,
    pub timeline: Vec<TimelineItem>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
        self.passed = self.checks.iter().all(|c| c.pass);
    }

    /// `text` as a `what` (a bundle, a case bundle); `None` once the check
    /// "`what` parses" has failed with the reason.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        text: &str,
        what: &str,
    ) -> Option<T> {
        match serde_json::from_str(text) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                self.push(Check::fail(
                    &format!("{what} parses"),
                    format!("not a {what}: {e}"),
                ));
                None
            }
        }
    }

    /// The first failed check, if any.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.pass)
    }

    /// PASS/FAIL per check, then the timeline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.subject.is_empty() {
            out.push_str(&format!("{}\n", self.subject));
        }
        for c in &self.checks {
            out.push_str(&format!(
                "  {}  {:<34} {}\n",
                if c.pass { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        if !self.timeline.is_empty() {
            out.push_str("timeline:\n");
            for t in &self.timeline {
                out.push_str(&format!(
                    "  {}  {}\n",
                    crate::format_time(t.time_ms),
                    t.text
                ));
            }
        }
        out.push_str(if self.passed && !self.checks.is_empty() {
            "result: PASS (every check passed)\n"
        } else {
            "result: FAIL\n"
        });
        if self.passed && !self.trusted_keys {
            out.push_str(
                "note: the keys came from the evidence itself; pass --trust federation.toml \
                 to check them against the federation's trust list\n",
            );
        }
        out
    }
}

/// The `format` of a checkpoints file.
pub const CHECKPOINTS_FORMAT: &str = "cluebridge-checkpoints";

/// Checkpoints a node holds, as written by `cluebridge audit checkpoints`:
/// the evidence a peer witnessed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsFile {
    pub format: String,
    pub version: u32,
    /// The node that held these checkpoints when they were exported.
    pub held_by: String,
    pub checkpoints: Vec<bundle::CheckpointPart>,
}

impl CheckpointsFile {
    pub fn new(held_by: &str, checkpoints: &[SignedCheckpoint]) -> Result<CheckpointsFile> {
        Ok(CheckpointsFile {
            format: CHECKPOINTS_FORMAT.into(),
            version: 1,
            held_by: held_by.into(),
            checkpoints: checkpoints
                .iter()
                .map(|c| {
                    let opened = c.open()?;
                    Ok(bundle::CheckpointPart {
                        checkpoint: B64.encode(&c.checkpoint),
                        signature: B64.encode(&c.signature),
                        fields: serde_json::json!({
                            "node": opened.node,
                            "seq": opened.seq,
                            "head_hash": hex::encode(opened.head_hash),
                            "time_ms": opened.time_ms,
                            "signing_key_id": opened.signing_key_id,
                        }),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Parses a checkpoints file into signed checkpoints (signatures are
    /// checked by the verifier that uses them).
    pub fn parse(text: &str) -> Result<Vec<SignedCheckpoint>> {
        let file: CheckpointsFile = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("not a checkpoints file: {e}")))?;
        if file.format != CHECKPOINTS_FORMAT || file.version != 1 {
            return Err(Error::invalid(format!(
                "format {:?} version {} is not {CHECKPOINTS_FORMAT:?} version 1",
                file.format, file.version
            )));
        }
        file.checkpoints
            .iter()
            .map(|c| {
                Ok(SignedCheckpoint {
                    checkpoint: B64
                        .decode(&c.checkpoint)
                        .map_err(|e| Error::invalid(format!("checkpoint is not base64: {e}")))?,
                    signature: B64
                        .decode(&c.signature)
                        .map_err(|e| Error::invalid(format!("signature is not base64: {e}")))?,
                })
            })
            .collect()
    }
}
