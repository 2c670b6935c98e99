//! Key encodings. Every ordered key part is a big-endian `u64`; ids never
//! contain NUL (see `model::validate_id`), so NUL separates them.

use crate::model::MessageRef;

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

/// `time message-key`: the expiry index, ordered by expiry time.
pub fn expiry(at_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + message_key.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(message_key);
    k
}

/// `message-key \0 digest8`: one receipt about a message. Keyed by the
/// receipt's digest so that storing the same receipt twice keeps one copy.
pub fn receipt(message_key: &[u8], receipt_digest: &[u8; 32]) -> Vec<u8> {
    let mut k = receipts_prefix(message_key);
    k.extend_from_slice(&receipt_digest[..16]);
    k
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

    #[test]
    fn big_endian_keys_order_numerically() {
        assert!(pair(2, 0) > pair(1, u64::MAX));
        assert!(peer_queue("p", 256) > peer_queue("p", 255));
        assert_eq!(first_u64(&pair(42, 7)), 42);
    }
}
