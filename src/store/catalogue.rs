//! The catalogue: every message this node sent or took into custody, in
//! the two orders `ListMessages` walks, so that a page of the search
//! reads the messages it shows and those it passes over — never the whole
//! store. Small entries are stored (time, a 16-byte tie and the message
//! key, see `keys::by_time`):
//! kind, peer and state come from the message's `sent` or `inbound`
//! record ([`Store::catalogued_record`]), case reference and subject from
//! its envelope header, read only for the messages a page shows
//! ([`Store::catalogue_header`]).
//!
//! Trees (keys in `keys`):
//! - `catalogue_by_time`: [`keys::by_time`] → message key, every message,
//!   newest first;
//! - `catalogue_by_case`: [`keys::by_case`] → message key, the messages
//!   that carry a case reference, newest first within each case.
//!
//! Both are written in the transaction that stores the message (`submit`
//! at the sender, `accept_inbound` at the recipient): they are journaled
//! with it and rebuilt from the journal like every other index tree, and
//! nothing changes or removes them afterwards.

use super::*;
use crate::model::{EnvelopeHeader, SignedEnvelope};
use records::Direction;
use std::ops::Bound;

/// Which part of the catalogue a walk covers. Every walk goes newest first
/// (by creation time, then by [`keys::tie`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct CatalogueRange<'a> {
    /// Only the messages of this case (walks `catalogue_by_case`).
    pub case_reference: Option<&'a str>,
    /// Only messages created at or after this time (Unix ms).
    pub from_ms: Option<u64>,
    /// Only messages created before this time (Unix ms).
    pub to_ms: Option<u64>,
    /// Start after this position of the order: a creation time and a
    /// message (which need not be in the catalogue).
    pub after: Option<(u64, &'a MessageRef)>,
}

/// One message met by a walk of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogued {
    pub message: MessageRef,
    pub created_at_ms: u64,
}

/// What a message's record says of it, for the search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CataloguedRecord {
    pub direction: Direction,
    pub kind: MessageKind,
    /// The other node: the recipient of a sent message, the sender of
    /// one received.
    pub peer: String,
    pub state: &'static str,
}

/// Writes the catalogue keys of the message at `key` (with `header`),
/// inside the transaction that stores it. A case reference holding NUL
/// (which the header rules never let through) is refused: it would break
/// the key encoding of `catalogue_by_case`.
pub(super) fn insert(t: &Tx, key: &[u8], header: &EnvelopeHeader) -> TxResult<()> {
    if header.case_reference.contains('\0') {
        return abort(Error::invalid(
            "case_reference contains NUL; only printable text is allowed",
        ));
    }
    t[CATALOGUE_BY_TIME].insert(keys::by_time(header.created_at_ms, key), key)?;
    if !header.case_reference.is_empty() {
        t[CATALOGUE_BY_CASE].insert(
            keys::by_case(&header.case_reference, header.created_at_ms, key),
            key,
        )?;
    }
    Ok(())
}

/// Where a walk starts and where it ends, as keys of its tree.
type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The keys of `range` in its tree (keys under `prefix`): where the walk
/// starts and where it ends; `None` when nothing can be in it.
fn bounds(prefix: &[u8], range: &CatalogueRange) -> Option<Bounds> {
    let under = |part: &[u8]| [prefix, part].concat();
    // Newest first: the end of the time range is where the walk starts.
    let mut start = match range.to_ms {
        Some(to_ms) => Bound::Included(under(&keys::newest_first(to_ms.checked_sub(1)?))),
        None => Bound::Included(prefix.to_vec()),
    };
    if let Some((created_at_ms, message)) = range.after {
        let after = under(&keys::by_time(created_at_ms, &keys::message(message)));
        if matches!(&start, Bound::Included(k) if after >= *k) {
            start = Bound::Excluded(after);
        }
    }
    let end = match range.from_ms {
        // Entries created at `from_ms` lie under `newest_first(from_ms)`;
        // the next 8-byte value ends them.
        Some(from_ms) if from_ms > 0 => {
            Bound::Excluded(under(&(u64::MAX - from_ms + 1).to_be_bytes()))
        }
        _ => match prefix.split_last() {
            // A case prefix ends in NUL: the same case followed by 0x01
            // ends it.
            Some((last, head)) => Bound::Excluded([head, &[last + 1]].concat()),
            None => Bound::Unbounded,
        },
    };
    let first = match &start {
        Bound::Included(k) | Bound::Excluded(k) => k,
        Bound::Unbounded => return Some((start, end)),
    };
    match &end {
        Bound::Excluded(last) if first >= last => None,
        _ => Some((start, end)),
    }
}

impl Store {
    /// The catalogue's messages in `range`, newest first (see
    /// [`keys::by_time`]). Each step reads one index key; the walk is
    /// lazy, so a caller reads only as far as it goes. Sees synced changes
    /// only (it runs off the writer thread).
    pub fn catalogue<'s>(
        &'s self,
        range: &CatalogueRange,
    ) -> impl Iterator<Item = Result<Catalogued>> + 's {
        let (tree, prefix) = match range.case_reference {
            Some(case) => (CATALOGUE_BY_CASE, keys::case_prefix(case)),
            None => (CATALOGUE_BY_TIME, Vec::new()),
        };
        let skip = prefix.len() + 8;
        bounds(&prefix, range)
            .map(|b| self.tree(tree).range(b))
            .into_iter()
            .flatten()
            .map(move |kv| {
                let (k, key) = kv?;
                let message = keys::parse_message(&key)
                    .ok_or_else(|| Error::corrupt(TREE_NAMES[tree], "bad message key"))?;
                let created_at_ms =
                    keys::newest_first_time(k.get(prefix.len()..skip).unwrap_or_default());
                Ok(Catalogued {
                    message,
                    created_at_ms,
                })
            })
    }

    /// What the `sent` or `inbound` record of a catalogued message says
    /// (`None` if it has neither).
    pub fn catalogued_record(&self, message: &MessageRef) -> Result<Option<CataloguedRecord>> {
        if let Some(r) = self.sent(message)? {
            return Ok(Some(CataloguedRecord {
                direction: Direction::Sent,
                kind: r.kind,
                peer: r.recipient,
                state: r.state.as_str(),
            }));
        }
        Ok(self.inbound(message)?.map(|r| CataloguedRecord {
            direction: Direction::Received,
            kind: r.kind,
            peer: message.sender_node.clone(),
            state: r.state.as_str(),
        }))
    }

    /// The envelope header of a catalogued message (for its case
    /// reference and subject), read from its envelope.
    pub fn catalogue_header(&self, message: &MessageRef) -> Result<Option<EnvelopeHeader>> {
        let Some(bytes) = self.envelope(message)? else {
            return Ok(None);
        };
        let envelope = SignedEnvelope::decode(bytes).map_err(|e| Error::corrupt("envelopes", e))?;
        EnvelopeHeader::decode(&envelope.header)
            .map(Some)
            .map_err(|e| Error::corrupt("envelopes", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvelopeHeader, Receipt};

    const NODE: &str = "discipline";

    fn header(from: &str, id: &str, case: &str, created_at_ms: u64) -> EnvelopeHeader {
        EnvelopeHeader {
            message_id: id.into(),
            kind: MessageKind::ClueTransfer,
            sender_node: from.into(),
            sender_principal: "backoffice".into(),
            recipient_node: if from == NODE {
                "public_security"
            } else {
                NODE
            }
            .into(),
            case_reference: case.into(),
            correlation_id: String::new(),
            subject: format!("subject of {id}"),
            content_type: "text/plain".into(),
            payload_sha256: [0; 32],
            payload_length: 0,
            created_at_ms,
            expires_at_ms: 1 << 50,
            reply_by_ms: 0,
            signing_key_id: format!("{from}-k1"),
        }
    }

    fn envelope_of(h: &EnvelopeHeader) -> Vec<u8> {
        SignedEnvelope {
            header: h.encode().into(),
            signature: vec![7; 64].into(),
            payload: b"payload".to_vec().into(),
            batch: None,
        }
        .encode()
    }

    fn receipt(h: &EnvelopeHeader, kind: ReceiptKind) -> SignedReceipt {
        let r = Receipt {
            message_id: h.message_id.clone(),
            sender_node: h.sender_node.clone(),
            kind,
            issuer_node: NODE.into(),
            issued_at_ms: h.created_at_ms,
            reason: String::new(),
            header_sha256: [1; 32],
            signing_key_id: "discipline-k1".into(),
            attempt: 0,
        };
        SignedReceipt::single(r.encode(), vec![9; 64])
    }

    async fn send(store: &Store, h: EnvelopeHeader) -> Result<SubmitOutcome> {
        let record = SentRecord {
            state: SentState::Accepted,
            recipient: h.recipient_node.clone(),
            kind: h.kind,
            request_digest: sha256(h.message_id.as_bytes()),
            header_sha256: [1; 32],
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms,
            outbox_key: None,
            audit_seqs: Vec::new(),
            conflict_recorded: false,
            envelope_at: Vec::new(),
            receipts: Vec::new(),
        };
        let accepted = receipt(&h, ReceiptKind::Accepted);
        store
            .write(move |s| {
                s.submit(
                    &envelope_of(&h),
                    &h,
                    &record,
                    &accepted,
                    &Default::default(),
                    None,
                )
            })
            .await
    }

    async fn take(store: &Store, h: EnvelopeHeader) {
        let record = InboundRecord::arrived(h.kind, [1; 32], h.expires_at_ms);
        let delivered = receipt(&h, ReceiptKind::Delivered);
        store
            .write(move |s| {
                s.accept_inbound(
                    &envelope_of(&h),
                    &h,
                    &record,
                    &delivered,
                    0,
                    &Default::default(),
                )
            })
            .await
            .expect("custody");
    }

    /// (id, direction, state) of each message a walk meets.
    fn walk(store: &Store, range: CatalogueRange) -> Vec<(String, &'static str, &'static str)> {
        store
            .catalogue(&range)
            .map(|c| {
                let c = c.expect("entry");
                let r = store
                    .catalogued_record(&c.message)
                    .expect("record")
                    .expect("a record");
                (c.message.message_id, r.direction.as_str(), r.state)
            })
            .collect()
    }

    fn ids<'a>(walked: &'a [(String, &str, &str)]) -> Vec<&'a str> {
        walked.iter().map(|(id, _, _)| id.as_str()).collect()
    }

    /// The catalogue is written with the message, on either side; walks go
    /// newest first (ties by sender node, then id), by case and by time
    /// range, after a position; and a rebuild from the journal gives the
    /// same trees back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catalogue_entries_are_written_with_the_message_and_rebuilt_from_the_journal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("node");
        let store = Store::open(&dir).expect("open");
        send(&store, header(NODE, "m-1", "C-1", 1000))
            .await
            .expect("m-1");
        send(&store, header(NODE, "m-2", "", 2000))
            .await
            .expect("m-2");
        take(&store, header("personnel", "p-1", "C-1", 1500)).await;
        take(&store, header("personnel", "p-2", "C-2", 2000)).await;
        // A refused case reference writes nothing.
        let before = store.content_digest().expect("digest");
        let refused = send(&store, header(NODE, "m-3", "C\0-1", 3000)).await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        assert_eq!(store.content_digest().expect("digest"), before);

        let all = walk(&store, CatalogueRange::default());
        assert_eq!(
            all,
            [
                ("m-2".to_string(), "sent", "accepted"),
                ("p-2".to_string(), "received", "inbox"),
                ("p-1".to_string(), "received", "inbox"),
                ("m-1".to_string(), "sent", "accepted"),
            ]
        );
        let case = |case| CatalogueRange {
            case_reference: Some(case),
            ..CatalogueRange::default()
        };
        assert_eq!(ids(&walk(&store, case("C-1"))), ["p-1", "m-1"]);
        assert_eq!(ids(&walk(&store, case("C-"))), Vec::<&str>::new());
        let m2 = MessageRef {
            sender_node: NODE.into(),
            message_id: "m-2".into(),
        };
        let ranged = CatalogueRange {
            from_ms: Some(1500),
            to_ms: Some(2001),
            after: Some((2000, &m2)),
            ..CatalogueRange::default()
        };
        assert_eq!(ids(&walk(&store, ranged)), ["p-2", "p-1"]);
        let empty = CatalogueRange {
            from_ms: Some(2000),
            to_ms: Some(2000),
            ..CatalogueRange::default()
        };
        assert!(walk(&store, empty).is_empty());
        let first = store
            .catalogue(&CatalogueRange::default())
            .next()
            .expect("an entry")
            .expect("read");
        assert_eq!(first.message, m2);
        assert_eq!(first.created_at_ms, 2000);
        assert_eq!(
            store.catalogued_record(&m2).expect("record"),
            Some(CataloguedRecord {
                direction: Direction::Sent,
                kind: MessageKind::ClueTransfer,
                peer: "public_security".into(),
                state: "accepted",
            })
        );
        let header = store.catalogue_header(&m2).expect("header").expect("some");
        assert_eq!(header.subject, "subject of m-2");

        let digests = |s: &Store| -> Vec<[u8; 32]> {
            [CATALOGUE_BY_TIME, CATALOGUE_BY_CASE]
                .iter()
                .map(|&i| s.tree_digest(s.tree(i)).expect("digest"))
                .collect()
        };
        let (trees, index) = (digests(&store), store.index_digest().expect("digest"));
        store.close();
        drop(store);

        Store::reindex(&dir).expect("reindex");

        let store = Store::open(&dir).expect("reopen");
        assert_eq!(walk(&store, CatalogueRange::default()), all);
        assert_eq!(digests(&store), trees);
        assert_eq!(store.index_digest().expect("digest"), index);
        store.close();
    }
}
