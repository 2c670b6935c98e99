//! Key encodings. Every ordered key part is a big-endian `u64`; ids never
//! contain NUL (see `model::validate_id`), so NUL separates them. Case
//! references never contain NUL either: they are printable text, and
//! `model::check_text` refuses every control character (the catalogue's
//! writer refuses one that does, whoever calls it).

use crate::model::{MessageRef, SentState};

/// `sender_node \0 message_id`: a message's key in every per-message tree.
pub fn message(r: &MessageRef) -> Vec<u8> {
    message_parts(&r.sender_node, &r.message_id)
}

pub fn message_parts(sender_node: &str, message_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sender_node.len() + message_id.len() + 1);
    k.extend_from_slice(sender_node.as_bytes());
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// Splits a message key back into its reference.
pub fn parse_message(key: &[u8]) -> Option<MessageRef> {
    let pos = key.iter().position(|b| *b == 0)?;
    Some(MessageRef {
        sender_node: std::str::from_utf8(&key[..pos]).ok()?.to_string(),
        message_id: std::str::from_utf8(&key[pos + 1..]).ok()?.to_string(),
    })
}

/// `0xFF message-key`: where the contradicting final receipt about a
/// message is kept in the equivocations tree (node ids are ASCII, so this
/// never meets a checkpoint's `node \0 seq` key).
pub fn contradicting_receipt(message_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(message_key.len() + 1);
    k.push(0xFF);
    k.extend_from_slice(message_key);
    k
}

/// `peer \0`: prefix of one peer's queue in the outbox trees.
pub fn peer_prefix(peer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(peer.len() + 1);
    k.extend_from_slice(peer.as_bytes());
    k.push(0);
    k
}

/// `peer \0 seq`: one entry of a peer's queue, in submission order.
pub fn peer_queue(peer: &str, seq: u64) -> Vec<u8> {
    let mut k = peer_prefix(peer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An inbox entry's value: the message's kind (its wire number, one
/// byte) then its key, so that a receiver limited to some kinds skips the
/// others without reading their records.
pub fn inbox_entry(kind: crate::model::MessageKind, message_key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + message_key.len());
    v.push(kind.to_wire() as u8);
    v.extend_from_slice(message_key);
    v
}

/// The kind (wire number) and message key of an inbox entry's value.
pub fn parse_inbox_entry(value: &[u8]) -> Option<(i32, &[u8])> {
    let (kind, key) = value.split_first()?;
    Some((i32::from(*kind), key))
}

/// `a b`: two big-endian numbers, ordered by `a` then `b` (inbox: ready
/// time then sequence; leases: deadline then lease id).
pub fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

/// Reads the first big-endian number of a key.
pub fn first_u64(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

/// `time tie(message-key)`: the expiry index, ordered by expiry time;
/// the entry's value is the message key.
pub fn expiry(at_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&tie(message_key));
    k
}

/// The end (excluded) of the expiry entries due at `now_ms`.
pub fn expiry_due_end(now_ms: u64) -> [u8; 8] {
    now_ms.saturating_add(1).to_be_bytes()
}

/// `message-key \0 digest8`: one receipt about a message. Keyed by the
/// receipt's digest so that storing the same receipt twice keeps one copy.
pub fn receipt(message_key: &[u8], receipt_digest: &[u8; 32]) -> Vec<u8> {
    let mut k = receipts_prefix(message_key);
    k.extend_from_slice(&receipt_digest[..16]);
    k
}

/// A receipt feed entry: the receipt's key, the state that receipt left
/// the message in (its wire number, one byte), so that a replay from a
/// cursor tells the same history as the live feed did, and when it was
/// stored (ms, for retention).
pub fn feed_entry(receipt_key: &[u8], state: SentState, at_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(receipt_key.len() + 9);
    v.extend_from_slice(receipt_key);
    v.push(state.to_wire() as u8);
    v.extend_from_slice(&at_ms.to_be_bytes());
    v
}

/// The receipt key, state and time of a [`feed_entry`].
pub fn split_feed_entry(v: &[u8]) -> Option<(&[u8], SentState, u64)> {
    let split = v.len().checked_sub(9)?;
    let (receipt_key, rest) = v.split_at(split);
    let state = SentState::from_wire(i32::from(rest[0])).ok()?;
    Some((receipt_key, state, first_u64(&rest[1..])))
}

/// The feed's stand-in for a receipt key when the event is a sent
/// message falling overdue: the message's receipt prefix and sixteen
/// `0xFF` bytes, which no receipt digest is.
pub fn overdue_feed_key(message_key: &[u8]) -> Vec<u8> {
    let mut k = receipts_prefix(message_key);
    k.extend_from_slice(&[0xFF; 16]);
    k
}

/// The message key of an [`overdue_feed_key`], or `None` for a receipt key.
pub fn overdue_in_feed(receipt_key: &[u8]) -> Option<&[u8]> {
    let message = receipt_key.strip_suffix(&[0xFF; 16])?;
    message.strip_suffix(&[0])
}

pub fn receipts_prefix(message_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(message_key.len() + 17);
    k.extend_from_slice(message_key);
    k.push(0);
    k
}

/// `message-key \0 seq`: one operator action on a message, in order.
pub fn event(message_key: &[u8], seq: u64) -> Vec<u8> {
    let mut k = receipts_prefix(message_key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `u64::MAX - at_ms`, big-endian: a time that sorts newest first.
pub fn newest_first(at_ms: u64) -> [u8; 8] {
    (u64::MAX - at_ms).to_be_bytes()
}

/// The time a [`newest_first`] part stands for.
pub fn newest_first_time(part: &[u8]) -> u64 {
    u64::MAX - first_u64(part)
}

/// The first half of the SHA-256 of a message key: what tells apart the
/// messages of one millisecond in a time-ordered index key, in fewer
/// bytes than the key itself (sled repeats keys in its nodes: the expiry
/// index took about 200 bytes less disk per message with it).
pub fn tie(message_key: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&crate::model::sha256(message_key)[..16]);
    out
}

/// `newest-first(created-at) tie(message-key)`: an entry of the catalogue
/// by time (its value is the message key). A forward walk meets messages
/// newest first, and messages created in the same millisecond in the
/// order of [`tie`]: a fixed order that a page token, which names the
/// message, finds again.
pub fn by_time(created_at_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&newest_first(created_at_ms));
    k.extend_from_slice(&tie(message_key));
    k
}

/// `case \0`: the prefix of one case's entries in the catalogue by case.
/// A case reference holds no NUL (see the module doc), so no case's
/// entries fall under another's prefix.
pub fn case_prefix(case_reference: &str) -> Vec<u8> {
    peer_prefix(case_reference)
}

/// `case \0 newest-first(created-at) message-key`: an entry of the
/// catalogue by case, in the order of [`by_time`] within the case.
pub fn by_case(case_reference: &str, created_at_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut k = case_prefix(case_reference);
    k.extend_from_slice(&by_time(created_at_ms, message_key));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_round_trip_and_do_not_collide() {
        let r = MessageRef {
            sender_node: "discipline".into(),
            message_id: "m-1".into(),
        };
        assert_eq!(parse_message(&message(&r)), Some(r));
        // "ab"/"c" and "a"/"bc" must differ.
        assert_ne!(message_parts("ab", "c"), message_parts("a", "bc"));
    }

    /// Expiry keys order by time whatever the message, take 24 bytes,
    /// tell two messages of one millisecond apart, and fall before the
    /// due end of their time and after that of the millisecond before.
    #[test]
    fn expiry_keys_order_by_time_in_fixed_size() {
        let (a, b) = (message_parts("d", "a"), message_parts("d", "b"));
        assert!(expiry(1, &b"\xff".repeat(40)) < expiry(2, &a));
        assert_eq!(expiry(5, &a).len(), 24);
        assert_ne!(expiry(5, &a), expiry(5, &b));
        assert!(expiry(5, &a).as_slice() < &expiry_due_end(5)[..]);
        assert!(expiry(5, &a).as_slice() >= &expiry_due_end(4)[..]);
    }

    #[test]
    fn big_endian_keys_order_numerically() {
        assert!(pair(2, 0) > pair(1, u64::MAX));
        assert!(peer_queue("p", 256) > peer_queue("p", 255));
        assert_eq!(first_u64(&pair(42, 7)), 42);
    }

    /// Newer first; within one millisecond, by the tie of the message
    /// key; a case's entries stay under its prefix whatever its
    /// neighbours.
    #[test]
    fn catalogue_keys_order_newest_first_then_by_tie() {
        let m = |node: &str, id: &str| message_parts(node, id);
        assert!(by_time(2, &m("z", "z")) < by_time(1, &m("a", "a")));
        let (ab, a_b) = (m("a", "b"), m("ab", ""));
        assert_eq!(
            by_time(1, &ab) < by_time(1, &a_b),
            tie(&ab) < tie(&a_b),
            "one millisecond: the tie's order"
        );
        assert_ne!(by_time(1, &ab), by_time(1, &a_b));
        assert_eq!(by_time(1, &ab).len(), 24);
        assert_eq!(newest_first_time(&by_time(42, &m("a", "b"))), 42);
        let case = by_case("C-1", 5, &m("a", "b"));
        assert!(case.starts_with(&case_prefix("C-1")));
        assert!(!case.starts_with(&case_prefix("C-")));
        assert!(!by_case("C-10", 5, &m("a", "b")).starts_with(&case_prefix("C-1")));
    }
}
