//! Human-readable output: receipt timelines, and the one escaping function
//! through which every piece of text that came from the network (or from a
//! file someone else wrote) passes before it reaches a terminal.
//!
//! A subject, case reference, principal, reason, message id, error message
//! or payload may carry terminal control sequences (ESC, OSC, CSI as C1)
//! that retitle a window, clear the screen or rewrite what was printed
//! before, and bidirectional-override characters that make text read
//! differently from what it is. [`escape`] shows all of them as visible
//! escapes and leaves every other character, non-ASCII letters included, as
//! it is. A backslash is not doubled: output is for people, and `\x1b`
//! typed into a subject looks like an escaped ESC, which is harmless.
//!
//! Single-line fields escape newlines too, so that a field cannot forge the
//! next line of the output. Payloads (and multi-line texts such as error
//! chains and verification reports) are printed as blocks with
//! [`escape_block`], which keeps `\n` and `\t`; `receive` indents every line
//! of a payload under its label.

use crate::crypto::Keyring;
use crate::model::SignedReceipt;

use crate::format_time;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: the same characters
/// the API refuses in header text fields.
fn is_unsafe(c: char) -> bool {
    crate::model::is_unsafe_char(c)
}

fn push_escaped(out: &mut String, c: char) {
    // `char::is_control` is exactly C0, DEL and C1 (category Cc).
    let _ = if u32::from(c) <= 0x7f {
        write!(out, "\\x{:02x}", u32::from(c))
    } else {
        write!(out, "\\u{{{:x}}}", u32::from(c))
    };
}

/// `text` with every control character (C0, DEL, C1, newline included) and
/// every bidirectional-formatting character shown as a visible escape
/// (`\x1b`, `\x0a`, `\u{9b}`, `\u{202e}`); other characters unchanged.
pub fn escape(text: &str) -> String {
    escape_keeping(text, |_| false)
}

/// Like [`escape`], but keeps newlines and tabs: for payloads and other
/// texts printed as blocks of lines.
pub fn escape_block(text: &str) -> String {
    escape_keeping(text, |c| c == '\n' || c == '\t')
}

fn escape_keeping(text: &str, keep: impl Fn(char) -> bool) -> String {
    if !text.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) && !keep(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text (as serde_json writes it, which already escapes C0) with DEL,
/// C1 and bidirectional-formatting characters written as `\uXXXX` escapes:
/// still the same JSON document, but safe on a terminal. These characters
/// can only occur inside JSON strings, where such an escape means the same.
pub fn escape_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) && !matches!(c, '\n' | '\t' | '\r') {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

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
            escape(&r.issuer_node),
            if r.attempt > 0 {
                format!(" attempt {}", r.attempt)
            } else {
                String::new()
            },
            if r.reason.is_empty() {
                String::new()
            } else {
                format!("  reason: {}", escape(&r.reason))
            },
            check,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c0_controls_are_escaped() {
        assert_eq!(escape("a\x1b]0;owned\x07b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(escape("\x1b[2J\x1b[H"), "\\x1b[2J\\x1b[H");
        assert_eq!(escape("\0\r\x08"), "\\x00\\x0d\\x08");
        // Single-line fields cannot start a new line…
        assert_eq!(escape("one\ntwo\tthree"), "one\\x0atwo\\x09three");
        // …but blocks keep their lines and tabs, and nothing else.
        assert_eq!(
            escape_block("one\ntwo\tthree\x1b[31m\r"),
            "one\ntwo\tthree\\x1b[31m\\x0d"
        );
    }

    #[test]
    fn del_is_escaped() {
        assert_eq!(escape("a\x7fb"), "a\\x7fb");
        assert_eq!(escape_block("a\x7fb"), "a\\x7fb");
    }

    #[test]
    fn c1_controls_are_escaped() {
        // CSI and OSC as single C1 characters, and NEL.
        assert_eq!(escape("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        assert_eq!(escape("\u{9d}0;x\u{9c}"), "\\u{9d}0;x\\u{9c}");
        assert_eq!(escape_block("\u{85}\u{80}\u{9f}"), "\\u{85}\\u{80}\\u{9f}");
    }

    #[test]
    fn bidi_characters_are_escaped() {
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}',
        ] {
            let text = format!("x{c}y");
            assert_eq!(escape(&text), format!("x\\u{{{:x}}}y", u32::from(c)));
            assert_eq!(escape_block(&text), escape(&text));
        }
        assert_eq!(escape("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(escape("a\u{2028}b"), "a\\u{2028}b");
    }

    #[test]
    fn ordinary_text_is_kept() {
        for text in [
            "Clue on case 12",
            "关于案件的线索：诬告陷害",
            "Ärzte, café, Ελλάδα, Россия, عربي",
            "emoji 🙂 and symbols ±§",
            "back\\slash",
            "",
        ] {
            assert_eq!(escape(text), text);
            assert_eq!(escape_block(text), text);
        }
    }

    #[test]
    fn json_stays_json_and_loses_raw_controls() {
        let value = serde_json::json!({"reason": "a\x1b[2J\u{9b}\u{202e}\x7f中"});
        let text = escape_json(&serde_json::to_string_pretty(&value).expect("json"));
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(!text.contains('\u{9b}') && !text.contains('\x7f'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, value);
    }
}
