//! The audit chain inside the store: appending an entry within the
//! transaction of the state change it records, and reading the chain,
//! checkpoints and every record back for the `Audit` service and for
//! `cluebridge audit verify`.
//!
//! Trees:
//! - `audit`: seq → the entry's stored form (`AuditEntry::encode`)
//!   followed by its 32-byte hash;
//! - `audit_index`: message key + seq → (), the entries about a message
//!   that has no record at this node, and every message's entries in
//!   stores written before the records listed them (`audit_seqs`);
//! - `audit_head`: `head` → seq + hash of the last entry. The head lives
//!   in memory: every append reads and advances it in its transaction,
//!   and transactions run one at a time under the store log's lock
//!   (`Store::transact`), so two appends can never read the same head,
//!   whichever thread runs them. The record is written once per group
//!   commit, before its sync, so it names the last entry as of that
//!   commit (changes made off the writer thread since, such as leases,
//!   can be ahead of it). At open the head is taken forward to the
//!   chain's last entry when the chain runs past the record, never back:
//!   a chain that ends before the record is reported by `audit verify`;
//! - `checkpoints`: node + seq → signed checkpoint, this node's own and
//!   those its peers sent it to witness;
//! - `equivocations`: node + seq + digest → a peer's checkpoint that
//!   contradicts the one held for the same entry (a few per node).
//!
//! Sequence numbers come from the head, not from `generate_id`, so the
//! chain has no gaps even after a crash.

use super::evidence::JournalReader;
use super::{
    AUDIT, AUDIT_HEAD, AUDIT_INDEX, CHECKPOINTS, EQUIVOCATIONS, INBOUND, InboundRecord, SENT,
    SentRecord, Store, Tx, TxError, TxResult, keys, records,
};
use crate::error::{Error, Result};
use crate::model::{
    AuditEntry, AuditEvent, GENESIS_HASH, MAX_DETAIL_LEN, MessageRef, SignedCheckpoint,
};

const HEAD_KEY: &[u8] = b"head";
const NODE_KEY: &[u8] = b"node";

/// What one state change says about itself in the log.
#[derive(Clone, Debug)]
pub(super) struct Note {
    pub event: AuditEvent,
    pub state: &'static str,
    pub detail: String,
    pub receipt_sha256: Option<[u8; 32]>,
}

impl Note {
    pub fn new(event: AuditEvent, state: &'static str, detail: impl Into<String>) -> Note {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_LEN {
            let mut cut = MAX_DETAIL_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Note {
            event,
            state,
            detail,
            receipt_sha256: None,
        }
    }

    pub fn receipt(mut self, digest: [u8; 32]) -> Note {
        self.receipt_sha256 = Some(digest);
        self
    }
}

/// What the head record says.
pub(super) fn head_record(trees: &[super::live::Tree]) -> Result<(u64, [u8; 32])> {
    Ok(head_of(trees[AUDIT_HEAD].get(HEAD_KEY)?.as_deref()))
}

fn head_of(raw: Option<&[u8]>) -> (u64, [u8; 32]) {
    match raw {
        Some(v) if v.len() == 40 => (
            keys::first_u64(v),
            v[8..40].try_into().unwrap_or(GENESIS_HASH),
        ),
        _ => (0, GENESIS_HASH),
    }
}

/// Splits a stored `audit` value into the entry and the hash stored with it.
pub fn parse_record(value: &[u8]) -> Result<(AuditEntry, [u8; 32])> {
    if value.len() < 32 {
        return Err(Error::corrupt("audit", "entry record is too short"));
    }
    let (stored, hash) = value.split_at(value.len() - 32);
    let entry = AuditEntry::decode(stored).map_err(|e| Error::corrupt("audit", e))?;
    Ok((entry, hash.try_into().unwrap_or(GENESIS_HASH)))
}

fn index_key(message_key: &[u8], seq: u64) -> Vec<u8> {
    let mut k = keys::receipts_prefix(message_key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Contradicting checkpoints kept per node as evidence.
pub const MAX_EQUIVOCATIONS: usize = 8;

fn checkpoint_key(node: &str, seq: u64) -> Vec<u8> {
    keys::peer_queue(node, seq)
}

impl Store {
    /// Appends the entry for one state change, inside that change's
    /// transaction. Side-effect free apart from the transaction's writes
    /// (the clock read makes a retried closure only see a later time).
    pub(super) fn append_audit(&self, t: &Tx, message: &MessageRef, note: &Note) -> TxResult<()> {
        if !self.shared.audit_log {
            return Ok(());
        }
        let (seq, prev_hash) = t.audit_head.get();
        let entry = AuditEntry {
            seq: seq + 1,
            time_ms: crate::now_ms(),
            event: note.event,
            message: message.clone(),
            state: note.state.to_string(),
            detail: note.detail.clone(),
            receipt_sha256: note.receipt_sha256,
            prev_hash,
        };
        let mut value = entry.encode();
        let hash = entry.hash();
        value.extend_from_slice(&hash);
        t[AUDIT].insert(entry.seq.to_be_bytes(), value)?;
        t.audit_appended
            .borrow_mut()
            .push((keys::message(message), entry.seq));
        t.audit_head.set((entry.seq, hash));
        Ok(())
    }

    /// Writes the head record if the chain grew since it was last
    /// written: once per group commit, before its sync, rather than in
    /// every change (it was a third of the log's cost on submit).
    pub(super) fn store_audit_head(&self) -> Result<()> {
        let head = {
            let cache = self.lock_head();
            if cache.head == cache.stored {
                return Ok(());
            }
            cache.head
        };
        let mut record = head.0.to_be_bytes().to_vec();
        record.extend_from_slice(&head.1);
        self.transact(|t| {
            t[AUDIT_HEAD].insert(HEAD_KEY, &record)?;
            Ok(())
        })?;
        self.lock_head().stored = head;
        Ok(())
    }

    /// The head to append after, at open: the head record, or the chain's
    /// last entry if the chain runs past it (entries replayed from the
    /// store's log after a crash, before their group wrote the record).
    /// A chain that ends before the head record is left so: `audit
    /// verify` names the missing entries.
    pub(super) fn initial_audit_head(
        trees: &[super::live::Tree],
        journal: &JournalReader,
    ) -> Result<(u64, [u8; 32])> {
        let record = head_of(trees[AUDIT_HEAD].get(HEAD_KEY)?.as_deref());
        let last = match trees[AUDIT].last()? {
            Some((k, v)) if k.len() == 8 => {
                let v = journal.resolve("audit", &v)?;
                let hash = v
                    .len()
                    .checked_sub(32)
                    .and_then(|at| v[at..].try_into().ok());
                hash.map(|h| (keys::first_u64(&k), h))
            }
            _ => None,
        };
        Ok(match last {
            Some(last) if last.0 > record.0 => last,
            _ => record,
        })
    }

    /// Whether state changes are logged (`[audit] log` in the node file).
    pub fn audit_log_enabled(&self) -> bool {
        self.shared.audit_log
    }

    /// Sequence number and hash of the chain's last entry ((0, zeros) when
    /// empty): the head new entries are appended after. The head record
    /// in the store is this value as of the last group commit.
    pub fn audit_head(&self) -> Result<(u64, [u8; 32])> {
        Ok(self.lock_head().head)
    }

    /// Stored `audit` records with `from <= seq <= to`, at most `limit`,
    /// in order, raw (see [`parse_record`]).
    pub fn audit_records(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self
            .tree(AUDIT)
            .range(from.to_be_bytes()..=to.to_be_bytes())
            .take(limit)
        {
            let (k, v) = kv?;
            out.push((keys::first_u64(&k), self.evidence(AUDIT, &v)?));
        }
        Ok(out)
    }

    /// The entries in `from..=to`, parsed; a record that does not parse is
    /// an error naming its key.
    pub fn audit_entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.audit_records(from, to, limit)?
            .into_iter()
            .map(|(seq, v)| {
                parse_record(&v)
                    .map(|(e, _)| e)
                    .map_err(|e| Error::corrupt(format!("audit entry {seq}"), e))
            })
            .collect()
    }

    /// Notes, at commit, each audit entry the change appended in its
    /// message's record (sent or in custody): that costs no extra write,
    /// as the change almost always rewrites the record anyway. An entry
    /// about a message with no record here goes to `audit_index`.
    pub(super) fn index_audit_entries(&self, t: &Tx) -> TxResult<()> {
        let appended = t.audit_appended.take();
        for (key, seq) in appended {
            if let Some(mut r) = super::record_in::<SentRecord>(t, SENT, &key)? {
                r.audit_seqs.push(seq);
                t[SENT].insert(&key, records::encode(&r))?;
            } else if let Some(mut r) = super::record_in::<InboundRecord>(t, INBOUND, &key)? {
                r.audit_seqs.push(seq);
                t[INBOUND].insert(&key, records::encode(&r))?;
            } else {
                t[AUDIT_INDEX].insert(index_key(&key, seq), [])?;
            }
        }
        Ok(())
    }

    /// Sequence numbers of the entries about `message`, in order: those
    /// its record lists, and those in `audit_index` (entries about a message
    /// that has no record of its own in this store).
    pub fn audit_seqs_of(&self, message: &MessageRef) -> Result<Vec<u64>> {
        let key = keys::message(message);
        let prefix = keys::receipts_prefix(&key);
        let mut seqs = self
            .tree(AUDIT_INDEX)
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, _) = kv?;
                Ok(keys::first_u64(&k[prefix.len()..]))
            })
            .collect::<Result<Vec<u64>>>()?;
        if let Some(r) = self.sent(message)? {
            seqs.extend(r.audit_seqs);
        } else if let Some(r) = self.inbound(message)? {
            seqs.extend(r.audit_seqs);
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Stores a checkpoint of `node` (this node's own or a peer's). The
    /// same checkpoint again changes nothing; a different one for the same
    /// sequence number is refused and the first is kept: it is evidence
    /// that the node signed two histories.
    /// With `replaces`, the checkpoint held for that entry is removed in
    /// the same transaction (a witness keeps one checkpoint per second of
    /// a peer's signing time).
    pub fn put_checkpoint(
        &self,
        node: &str,
        seq: u64,
        signed: &SignedCheckpoint,
        replaces: Option<u64>,
    ) -> Result<()> {
        let key = checkpoint_key(node, seq);
        let bytes = signed.encode();
        self.transact(|t| {
            if let Some(old) = replaces.filter(|old| *old != seq) {
                t[CHECKPOINTS].remove(checkpoint_key(node, old))?;
            }
            let Some(held) = t[CHECKPOINTS].get(&key)? else {
                t[CHECKPOINTS].insert(&key, &bytes)?;
                return Ok(());
            };
            if held.as_ref() == bytes.as_slice() {
                return Ok(());
            }
            let held = SignedCheckpoint::decode(&held)
                .map_err(|e| TxError::Abort(Error::corrupt("checkpoints", e)))?;
            if held.checkpoint == signed.checkpoint {
                return Ok(());
            }
            Err(TxError::Abort(Error::AlreadyExists(format!(
                "a different checkpoint of node {node} at entry {seq} is already held; \
                 the node has signed two histories (the first one is kept)"
            ))))
        })
    }

    /// The checkpoint of `node` held for entry `seq`, if any.
    pub fn checkpoint_at(&self, node: &str, seq: u64) -> Result<Option<SignedCheckpoint>> {
        self.read(CHECKPOINTS, &checkpoint_key(node, seq))?
            .map(|v| SignedCheckpoint::decode(&v).map_err(|e| Error::corrupt("checkpoints", e)))
            .transpose()
    }

    /// Keeps a checkpoint of `node` that contradicts one already held for
    /// the same entry: signed evidence that the node signed two histories.
    /// At most [`MAX_EQUIVOCATIONS`] are kept per node, so a member cannot
    /// fill the store with them; returns whether this one was kept.
    pub fn keep_equivocation(
        &self,
        node: &str,
        seq: u64,
        signed: &SignedCheckpoint,
    ) -> Result<bool> {
        let mut key = checkpoint_key(node, seq);
        key.extend_from_slice(&crate::model::sha256(&signed.checkpoint)[..8]);
        let prefix = keys::peer_prefix(node);
        let bytes = signed.encode();
        self.transact(|t| {
            if t[EQUIVOCATIONS].get(&key)?.is_some() {
                return Ok(true);
            }
            if self.tree(EQUIVOCATIONS).scan_prefix(&prefix).count() >= MAX_EQUIVOCATIONS {
                return Ok(false);
            }
            t[EQUIVOCATIONS].insert(key.as_slice(), bytes.as_slice())?;
            Ok(true)
        })
    }

    /// The contradicting checkpoints kept of `node`.
    pub fn equivocations(&self, node: &str) -> Result<Vec<SignedCheckpoint>> {
        self.tree(EQUIVOCATIONS)
            .scan_prefix(keys::peer_prefix(node))
            .map(|kv| {
                let (_, v) = kv?;
                SignedCheckpoint::decode(&v).map_err(|e| Error::corrupt("equivocations", e))
            })
            .collect()
    }

    /// Stores a checkpoint this node signed of its own chain, and notes
    /// the node's id for offline checks of the data directory.
    /// If one is already held for the same entry (signed a moment earlier
    /// by another task), that one is kept and returned.
    pub fn put_own_checkpoint(
        &self,
        node: &str,
        signed: &SignedCheckpoint,
    ) -> Result<SignedCheckpoint> {
        let seq = signed.open()?.seq;
        let key = checkpoint_key(node, seq);
        let held = self.transact(|t| {
            t[AUDIT_HEAD].insert(NODE_KEY, node.as_bytes())?;
            let held = t[CHECKPOINTS].get(&key)?;
            if held.is_none() {
                t[CHECKPOINTS].insert(&key, signed.encode())?;
            }
            Ok(held)
        })?;
        match held {
            None => Ok(signed.clone()),
            Some(held) => {
                SignedCheckpoint::decode(&held).map_err(|e| Error::corrupt("checkpoints", e))
            }
        }
    }

    /// The id of the node whose store this is, once it signed a checkpoint.
    pub fn own_node_id(&self) -> Result<Option<String>> {
        Ok(self
            .tree(AUDIT_HEAD)
            .get(NODE_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Checkpoints held, of `node` or of every node, with `seq >= from_seq`,
    /// at most `limit`, ordered by node then sequence number.
    pub fn checkpoints(
        &self,
        node: Option<&str>,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>> {
        let iter = match node {
            Some(n) => self.tree(CHECKPOINTS).scan_prefix(keys::peer_prefix(n)),
            None => self.tree(CHECKPOINTS).iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv?;
            if keys::first_u64(&k[k.len().saturating_sub(8)..]) < from_seq {
                continue;
            }
            out.push(SignedCheckpoint::decode(&v).map_err(|e| Error::corrupt("checkpoints", e))?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The checkpoint of `node` with the highest sequence number.
    pub fn latest_checkpoint(&self, node: &str) -> Result<Option<SignedCheckpoint>> {
        self.tree(CHECKPOINTS)
            .scan_prefix(keys::peer_prefix(node))
            .next_back()
            .map(|kv| {
                let (_, v) = kv?;
                SignedCheckpoint::decode(&v).map_err(|e| Error::corrupt("checkpoints", e))
            })
            .transpose()
    }

    /// The first checkpoint of `node` at or after entry `seq`.
    pub fn checkpoint_covering(&self, node: &str, seq: u64) -> Result<Option<SignedCheckpoint>> {
        let prefix = keys::peer_prefix(node);
        self.tree(CHECKPOINTS)
            .range(checkpoint_key(node, seq)..)
            .next()
            .transpose()?
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| {
                SignedCheckpoint::decode(&v).map_err(|e| Error::corrupt("checkpoints", e))
            })
            .transpose()
    }

    /// Every message this node sent, with its state record.
    pub fn sent_records(&self) -> impl Iterator<Item = Result<(MessageRef, SentRecord)>> + '_ {
        self.tree(SENT).iter().map(|kv| {
            let (k, v) = kv?;
            let r =
                keys::parse_message(&k).ok_or_else(|| Error::corrupt("sent", "bad message key"))?;
            Ok((r, records::decode("sent", &v)?))
        })
    }

    /// Every message in (or once in) this node's custody, with its record.
    pub fn inbound_records(
        &self,
    ) -> impl Iterator<Item = Result<(MessageRef, InboundRecord)>> + '_ {
        self.tree(INBOUND).iter().map(|kv| {
            let (k, v) = kv?;
            let r = keys::parse_message(&k)
                .ok_or_else(|| Error::corrupt("inbound", "bad message key"))?;
            Ok((r, records::decode("inbound", &v)?))
        })
    }
}
