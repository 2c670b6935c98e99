//! Human-readable output: receipt timelines.

use crate::crypto::Keyring;
use crate::model::SignedReceipt;

use crate::format_time;

/// One line per receipt: time, state, issuer, attempt and reason; with a
/// keyring, whether the signature verifies.
pub fn timeline(receipts: &[SignedReceipt], keyring: Option<&Keyring>) -> String {
    let mut out = String::new();
    for signed in receipts {
        let Ok(r) = signed.open() else {
            out.push_str("  (undecodable receipt)\n");
            continue;
        };
        let check = match keyring.map(|k| k.verify_receipt(signed)) {
            None => "",
            Some(Ok(_)) => "  [signature ok]",
            Some(Err(_)) => "  [SIGNATURE INVALID]",
        };
        out.push_str(&format!(
            "  {}  {:<13} by {:<16}{}{}{}\n",
            format_time(r.issued_at_ms),
            r.kind.as_str(),
            r.issuer_node,
            if r.attempt > 0 {
                format!(" attempt {}", r.attempt)
            } else {
                String::new()
            },
            if r.reason.is_empty() {
                String::new()
            } else {
                format!("  reason: {}", r.reason)
            },
            check,
        ));
    }
    out
}
