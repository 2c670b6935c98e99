//! Where the index finds receipts. A receipt is evidence, kept once in
//! the journal (see `evidence`); the index gives it no entry of its own
//! but notes it in the record of its message: when a journal record is
//! indexed, each receipt it holds joins the receipt list of the message
//! record written in the same change ([`fold`]), and every change that
//! writes a receipt also writes that record ([`keep_with_records`]).
//!
//! The list is the index's knowledge, not the journal's: a record is
//! journaled without it ([`strip`]), since positions in the journal
//! belong to no record's content, and indexing adds it back from the
//! index's own copy (the writer's, or the replayed trees'). A receipt
//! about a message with no record in this store stays in the `receipts`
//! tree, under its `keys::receipt`.

use super::live::Tree;
use super::records::ReceiptAt;
use super::wal::Op;
use super::*;

/// The receipt list a record has in the index so far, by (tree, key).
pub(super) type Prior<'a> = &'a mut dyn FnMut(usize, &[u8]) -> Result<Vec<ReceiptAt>>;

/// The message key and the digest half of a receipt key.
fn split_key(receipt_key: &[u8]) -> Option<(&[u8], [u8; 16])> {
    let split = receipt_key.len().checked_sub(17)?;
    if receipt_key[split] != 0 {
        return None;
    }
    Some((
        &receipt_key[..split],
        receipt_key[split + 1..].try_into().ok()?,
    ))
}

fn is_record(tree: usize) -> bool {
    matches!(tree, SENT | INBOUND)
}

/// A `sent` or `inbound` record's receipt list, changed by `f`; `None`
/// if the value does not decode (its receipts then keep entries of their
/// own).
fn with_list(tree: usize, record: &[u8], f: impl FnOnce(&mut Vec<ReceiptAt>)) -> Option<Vec<u8>> {
    match tree {
        SENT => {
            let mut r: SentRecord = records::decode("sent", record).ok()?;
            f(&mut r.receipts);
            Some(records::encode(&r))
        }
        INBOUND => {
            let mut r: InboundRecord = records::decode("inbound", record).ok()?;
            f(&mut r.receipts);
            Some(records::encode(&r))
        }
        _ => None,
    }
}

/// The receipt list of a `sent` or `inbound` record value.
fn decode_list(tree: usize, record: &[u8]) -> Result<Vec<ReceiptAt>> {
    match tree {
        SENT => Ok(records::decode::<SentRecord>("sent", record)?.receipts),
        _ => Ok(records::decode::<InboundRecord>("inbound", record)?.receipts),
    }
}

/// [`decode_list`], empty for a value that does not decode.
fn list_of(tree: usize, record: &[u8]) -> Vec<ReceiptAt> {
    decode_list(tree, record).unwrap_or_default()
}

/// A stored receipt, raw: its message, the 16-byte digest half it is
/// known by, and its bytes.
type RawReceipt = (MessageRef, Vec<u8>, Vec<u8>);

/// Lists taken out of a change's record writes by [`strip`].
#[derive(Default)]
pub(super) struct Stripped(Vec<(usize, Vec<u8>, Vec<ReceiptAt>)>);

impl Stripped {
    /// The list taken out of the write of `key` to `tree`.
    pub fn prior(&self, tree: usize, key: &[u8]) -> Vec<ReceiptAt> {
        self.0
            .iter()
            .find(|(t, k, _)| *t == tree && k == key)
            .map(|(_, _, l)| l.clone())
            .unwrap_or_default()
    }
}

/// The journal form of a change's writes: each record without its
/// receipt list. Returns the lists, for [`fold`] to put back.
pub(super) fn strip(ops: &mut [Op]) -> Stripped {
    let mut out = Stripped::default();
    for op in ops.iter_mut().filter(|op| is_record(op.tree as usize)) {
        let tree = op.tree as usize;
        let Some(value) = &op.value else { continue };
        let list = list_of(tree, value);
        if list.is_empty() {
            continue;
        }
        if let Some(bare) = with_list(tree, value, Vec::clear) {
            op.value = Some(bare);
            out.0.push((tree, op.key.clone(), list));
        }
    }
    out
}

/// The receipt list of the record at `key` of `tree` as `trees` hold it
/// (for a replay: the trees it rebuilds).
pub(super) fn listed_in(trees: &[Tree], tree: usize, key: &[u8]) -> Result<Vec<ReceiptAt>> {
    Ok(trees[tree]
        .get(key)?
        .map(|v| list_of(tree, &v))
        .unwrap_or_default())
}

/// The writes of a journal record as the index holds them (evidence
/// already as locators): each record with its list from `prior` and the
/// receipts of the same change about its message, and no write of those
/// receipts on their own.
pub(super) fn fold(mut ops: Vec<Op>, prior: Prior) -> Result<Vec<Op>> {
    let mut folded = vec![false; ops.len()];
    for j in 0..ops.len() {
        let tree = ops[j].tree as usize;
        let Some(value) = ops[j].value.as_deref().filter(|_| is_record(tree)) else {
            continue;
        };
        let mut list = prior(tree, &ops[j].key)?;
        let mut added = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some(receipt) = receipt_of(op, &ops[j].key) {
                added.push(i);
                if !list.iter().any(|r| r.digest == receipt.digest) {
                    list.push(receipt);
                }
            }
        }
        if list.is_empty() {
            continue;
        }
        if let Some(v) = with_list(tree, value, |l| *l = list) {
            ops[j].value = Some(v);
            for i in added {
                folded[i] = true;
            }
        }
    }
    let mut keep = folded.iter().map(|f| !f);
    ops.retain(|_| keep.next().unwrap_or(true));
    Ok(ops)
}

/// The receipt `op` writes about the message at `message`, if it is one.
fn receipt_of(op: &Op, message: &[u8]) -> Option<ReceiptAt> {
    if op.tree as usize != RECEIPTS {
        return None;
    }
    let (about, digest) = split_key(&op.key)?;
    let at = <[u8; 24]>::try_from(op.value.as_deref()?).ok()?;
    (about == message).then_some(ReceiptAt { digest, at })
}

/// Inside a change, before it is journaled: each receipt written goes
/// with a write of its message's record (rewritten unchanged when the
/// change did not touch it), so that [`fold`] finds the record.
pub(super) fn keep_with_records(t: &Tx) -> TxResult<()> {
    for receipt_key in t.written(RECEIPTS) {
        let Some((message, _)) = split_key(&receipt_key) else {
            continue;
        };
        if t.writes(SENT, message) || t.writes(INBOUND, message) {
            continue;
        }
        for tree in [SENT, INBOUND] {
            if let Some(raw) = t[tree].get(message)? {
                t[tree].insert(message, raw)?;
                break;
            }
        }
    }
    Ok(())
}

/// Whether a receipt with this digest is noted in `listed`.
pub(super) fn lists(listed: &[ReceiptAt], digest: &[u8; 32]) -> bool {
    listed.iter().any(|r| r.digest[..] == digest[..16])
}

impl Store {
    /// Every receipt stored about a message, those its record notes
    /// first, in the order they came.
    pub fn receipts(&self, message: &MessageRef) -> Result<Vec<SignedReceipt>> {
        let key = keys::message(message);
        let mut out = Vec::new();
        for r in self.listed_receipts(&key)? {
            out.push(self.receipt_at(RECEIPTS, &r.at)?);
        }
        for v in self.read_prefix(RECEIPTS, &keys::receipts_prefix(&key))? {
            out.push(self.receipt_at(RECEIPTS, &v)?);
        }
        Ok(out)
    }

    /// The receipt stored under `receipt_key` (see `keys::receipt`).
    pub(super) fn receipt_by_key(&self, receipt_key: &[u8]) -> Result<Option<SignedReceipt>> {
        let Some((message, digest)) = split_key(receipt_key) else {
            return Ok(None);
        };
        if let Some(r) = self
            .listed_receipts(message)?
            .into_iter()
            .find(|r| r.digest == digest)
        {
            return self.receipt_at(RECEIPTS, &r.at).map(Some);
        }
        self.read(RECEIPTS, receipt_key)?
            .map(|v| self.receipt_at(RECEIPTS, &v))
            .transpose()
    }

    /// The receipts noted in the record of the message at `key`.
    fn listed_receipts(&self, key: &[u8]) -> Result<Vec<ReceiptAt>> {
        for tree in [SENT, INBOUND] {
            if let Some(v) = self.read(tree, key)? {
                return decode_list(tree, &v);
            }
        }
        Ok(Vec::new())
    }

    /// Every stored receipt, raw. Streams: one record at a time.
    pub fn receipt_records(&self) -> impl Iterator<Item = Result<RawReceipt>> + '_ {
        let listed = move |tree: usize| {
            self.tree(tree)
                .iter()
                .flat_map(move |kv| match self.noted_in(tree, kv) {
                    Ok(items) => items,
                    Err(e) => vec![Err(e)],
                })
        };
        let stray = self.tree(RECEIPTS).iter().map(|kv| {
            let (k, v) = kv?;
            let (message, digest) =
                split_key(&k).ok_or_else(|| Error::corrupt("receipts", "bad receipt key"))?;
            let r = keys::parse_message(message)
                .ok_or_else(|| Error::corrupt("receipts", "bad message key"))?;
            Ok((r, digest.to_vec(), self.evidence(RECEIPTS, &v)?))
        });
        listed(SENT).chain(listed(INBOUND)).chain(stray)
    }

    /// The receipts one record of `tree` notes, read back.
    fn noted_in(
        &self,
        tree: usize,
        kv: sled::Result<(IVec, IVec)>,
    ) -> Result<Vec<Result<RawReceipt>>> {
        let (k, v) = kv?;
        let message =
            keys::parse_message(&k).ok_or_else(|| Error::corrupt(TREE_NAMES[tree], "bad key"))?;
        Ok(decode_list(tree, &v)?
            .into_iter()
            .map(|r| {
                let bytes = self.evidence(RECEIPTS, &r.at)?;
                Ok((message.clone(), r.digest.to_vec(), bytes))
            })
            .collect())
    }

    /// Stored receipts, counted from the records (for tests and offline
    /// checks).
    pub(super) fn receipt_count(&self) -> usize {
        let listed = |tree: usize| -> usize {
            self.tree(tree)
                .iter()
                .filter_map(|kv| kv.ok())
                .map(|(_, v)| list_of(tree, &v).len())
                .sum()
        };
        listed(SENT) + listed(INBOUND) + self.tree(RECEIPTS).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(tree: usize, key: &[u8], value: Option<Vec<u8>>) -> Op {
        Op {
            tree: tree as u8,
            key: key.to_vec(),
            value,
        }
    }

    fn sent_record() -> SentRecord {
        SentRecord {
            state: SentState::Accepted,
            recipient: "public_security".into(),
            kind: crate::model::MessageKind::ClueTransfer,
            request_digest: [1; 32],
            header_sha256: [2; 32],
            created_at_ms: 3,
            expires_at_ms: 4,
            outbox_key: None,
            audit_seqs: Vec::new(),
            conflict_recorded: false,
            envelope_at: Vec::new(),
            receipts: Vec::new(),
        }
    }

    fn list(value: &[u8]) -> Vec<[u8; 16]> {
        let r: SentRecord = records::decode("sent", value).expect("decode");
        r.receipts.iter().map(|r| r.digest).collect()
    }

    /// A receipt written with its message's record is noted there, once,
    /// after those the record listed, in the order they came; the journal
    /// form of a record holds no list (`strip` takes it out, `fold` puts
    /// it back); a receipt without a record of its own (or beside a
    /// record that does not decode) keeps its own entry.
    #[test]
    fn a_receipt_is_noted_in_its_records_write_or_kept_alone() {
        let message = keys::message_parts("discipline", "m-1");
        let receipt_key = |n: u8| keys::receipt(&message, &[n; 32]);
        let mut record = sent_record();
        record.receipts.push(ReceiptAt {
            digest: [1; 16],
            at: [7; 24],
        });
        let mut ops = vec![
            op(RECEIPTS, &receipt_key(2), Some(vec![8; 24])),
            op(SENT, &message, Some(records::encode(&record))),
            op(RECEIPTS, &receipt_key(1), Some(vec![7; 24])),
            op(AUDIT, &1u64.to_be_bytes(), Some(vec![9; 24])),
        ];
        let lists = strip(&mut ops);
        assert!(list(ops[1].value.as_deref().expect("record")).is_empty());
        let folded = fold(ops.clone(), &mut |t, k| Ok(lists.prior(t, k))).expect("fold");
        assert_eq!(folded.len(), 2, "{folded:?}");
        let value = folded[0].value.as_deref().expect("record");
        assert_eq!(list(value), vec![[1; 16], [2; 16]], "noted once, in order");
        let back: SentRecord = records::decode("sent", value).expect("decode");
        assert_eq!(back.receipts[1].at, [8; 24]);
        assert!(lists_digest(&back.receipts, 2) && !lists_digest(&back.receipts, 3));

        // A replay knows nothing of the writer's lists: with none prior,
        // the record lists what its own change wrote.
        let replayed = fold(ops, &mut |_, _| Ok(Vec::new())).expect("fold");
        let value = replayed[0].value.as_deref().expect("record");
        assert_eq!(list(value), vec![[2; 16], [1; 16]]);

        let other = keys::message_parts("discipline", "m-2");
        let alone = vec![
            op(RECEIPTS, &receipt_key(3), Some(vec![8; 24])),
            op(SENT, &other, Some(records::encode(&sent_record()))),
            op(INBOUND, &message, Some(vec![0xFF; 3])),
        ];
        let kept = fold(alone.clone(), &mut |_, _| Ok(Vec::new())).expect("fold");
        assert_eq!(kept, alone, "no record of its own to note it in");
    }

    fn lists_digest(listed: &[ReceiptAt], n: u8) -> bool {
        lists(listed, &[n; 32])
    }
}
