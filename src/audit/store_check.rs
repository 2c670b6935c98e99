//! `cluebridge audit verify`: walks a stopped node's whole audit chain and
//! cross-checks every state record, receipt and envelope of its store
//! against it, naming the first entry or record that does not fit.

use super::{Check, Report};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::model::{
    GENESIS_HASH, MessageRef, SignedCheckpoint, SignedEnvelope, SignedReceipt, sha256,
};
use crate::store::{Store, parse_audit_record};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What the chain says about one message.
#[derive(Debug, Default)]
struct Logged {
    /// State after the last entry, and that entry's number.
    state: String,
    last_seq: u64,
    receipts: BTreeSet<[u8; 32]>,
}

/// Entries read per store call.
const CHUNK: usize = 10_000;

/// Checks the store of a stopped node. `trust` adds signature checks of
/// every envelope, receipt and checkpoint; `witnessed`, when given, are
/// checkpoints that this node's peers hold.
pub fn verify_store(
    store: &Store,
    trust: Option<&Keyring>,
    node: Option<&str>,
    witnessed: Option<&[SignedCheckpoint]>,
) -> Report {
    let mut report = Report {
        trusted_keys: trust.is_some(),
        ..Report::default()
    };
    let node = match node {
        Some(n) => Some(n.to_string()),
        None => store.own_node_id().ok().flatten(),
    };
    report.subject = format!(
        "audit chain of node {}",
        node.as_deref()
            .unwrap_or("(unknown: it never signed a checkpoint)")
    );
    let mut messages: HashMap<MessageRef, Logged> = HashMap::new();
    let mut hashes: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let walked = walk(store, &mut messages, &mut hashes);
    let (count, last) = match &walked {
        Ok(v) => *v,
        Err(_) => (0, (0, GENESIS_HASH)),
    };
    report.push(Check::from(
        "chain",
        walked.map(|(n, _)| format!("{n} entries, each linked to the one before")),
    ));
    report.push(Check::from(
        "head record",
        store.audit_head().and_then(|head| {
            if head == last {
                Ok(format!("entry {} is the head", head.0))
            } else {
                Err(Error::invalid(format!(
                    "the head record names entry #{} but the chain ends at entry #{} \
                     (entries were removed outside the log)",
                    head.0, last.0
                )))
            }
        }),
    ));
    let hash_at = |seq: u64| hashes.get(&seq).copied();
    if let Some(node) = &node {
        report.push(Check::from(
            "own checkpoints",
            own_checkpoints(store, trust, node, &hash_at),
        ));
        if let Some(witnessed) = witnessed {
            let keyring = trust.cloned().unwrap_or_default();
            report.push(Check::from(
                "witnessed checkpoints",
                super::bundle::against_witnesses(&keyring, node, witnessed, hash_at),
            ));
        }
    }
    report.push(Check::from("state records", states(store, &messages)));
    report.push(Check::from("receipts", receipts(store, trust, &messages)));
    report.push(Check::from("envelopes", envelopes(store, trust)));
    if count == 0 && messages.is_empty() {
        report.push(Check::pass("note", "the chain is empty"));
    }
    report
}

/// Walks the chain from entry 1; returns the count and the last entry.
fn walk(
    store: &Store,
    messages: &mut HashMap<MessageRef, Logged>,
    hashes: &mut BTreeMap<u64, [u8; 32]>,
) -> Result<(u64, (u64, [u8; 32]))> {
    let (mut expected, mut prev) = (1u64, GENESIS_HASH);
    loop {
        let batch = store.audit_records(expected, u64::MAX, CHUNK)?;
        if batch.is_empty() {
            return Ok((expected - 1, (expected - 1, prev)));
        }
        for (key, value) in batch {
            if key != expected {
                return Err(Error::invalid(format!(
                    "entry #{expected} is missing (the next stored entry is #{key})"
                )));
            }
            let (entry, stored_hash) = parse_audit_record(&value)
                .map_err(|e| Error::invalid(format!("entry #{key} does not parse: {e}")))?;
            if entry.seq != key {
                return Err(Error::invalid(format!(
                    "entry #{key} says it is entry #{}",
                    entry.seq
                )));
            }
            if entry.prev_hash != prev {
                return Err(Error::invalid(format!(
                    "entry #{key} does not link to entry #{}: its prev_hash differs",
                    key - 1
                )));
            }
            let hash = entry.hash();
            if hash != stored_hash {
                return Err(Error::invalid(format!(
                    "entry #{key} ({} of {}) was altered: its content does not match its hash",
                    entry.event, entry.message
                )));
            }
            let logged = messages.entry(entry.message.clone()).or_default();
            if entry.event.is_message_state() {
                logged.state = entry.state.clone();
            }
            logged.last_seq = key;
            if let Some(d) = entry.receipt_sha256 {
                logged.receipts.insert(d);
            }
            hashes.insert(key, hash);
            prev = hash;
            expected += 1;
        }
    }
}

fn own_checkpoints(
    store: &Store,
    trust: Option<&Keyring>,
    node: &str,
    hash_at: &impl Fn(u64) -> Option<[u8; 32]>,
) -> Result<String> {
    let own = store.checkpoints(Some(node), 0, usize::MAX)?;
    for signed in &own {
        let c = match trust {
            Some(k) => k.verify_checkpoint(signed)?,
            None => signed.open()?,
        };
        match hash_at(c.seq) {
            Some(h) if h == c.head_hash => {}
            Some(_) => {
                return Err(Error::invalid(format!(
                    "checkpoint at entry #{} (signed {}) does not match the chain",
                    c.seq,
                    crate::format_time(c.time_ms)
                )));
            }
            None if c.seq == 0 => {}
            None => {
                return Err(Error::invalid(format!(
                    "checkpoint at entry #{} (signed {}) names an entry the chain lacks",
                    c.seq,
                    crate::format_time(c.time_ms)
                )));
            }
        }
    }
    Ok(format!(
        "{} checkpoints{} match the chain",
        own.len(),
        if trust.is_some() {
            ", signatures valid,"
        } else {
            ""
        }
    ))
}

fn states(store: &Store, messages: &HashMap<MessageRef, Logged>) -> Result<String> {
    let mut seen = HashSet::new();
    let mut n = 0;
    let check = |message: &MessageRef, state: &str| -> Result<()> {
        match messages.get(message) {
            None => Err(Error::invalid(format!(
                "record of {message} (state {state}) has no audit entry"
            ))),
            Some(l) if l.state != state => Err(Error::invalid(format!(
                "record of {message} says {state}, but the audit log's last entry about it \
                 (#{}) says {}",
                l.last_seq, l.state
            ))),
            Some(_) => Ok(()),
        }
    };
    for item in store.sent_records() {
        let (message, record) = item?;
        check(&message, record.state.as_str())?;
        seen.insert(message);
        n += 1;
    }
    for item in store.inbound_records() {
        let (message, record) = item?;
        check(&message, record.state.as_str())?;
        seen.insert(message);
        n += 1;
    }
    // Submits that never left approval: waiting, or declined.
    for (message, state) in store.approval_records()? {
        check(&message, state)?;
        seen.insert(message);
        n += 1;
    }
    if let Some((m, l)) = messages
        .iter()
        .filter(|(m, _)| !seen.contains(*m))
        .min_by_key(|(_, l)| l.last_seq)
    {
        return Err(Error::invalid(format!(
            "audit entry #{} is about {m}, which has no state record (removed?)",
            l.last_seq
        )));
    }
    Ok(format!("{n} message records agree with the log"))
}

fn receipts(
    store: &Store,
    trust: Option<&Keyring>,
    messages: &HashMap<MessageRef, Logged>,
) -> Result<String> {
    let mut held: HashSet<(MessageRef, [u8; 32])> = HashSet::new();
    let mut n = 0;
    for item in store.receipt_records() {
        let (message, key_digest, bytes) = item?;
        let signed = SignedReceipt::decode(&bytes)
            .map_err(|e| Error::invalid(format!("a receipt of {message} does not decode: {e}")))?;
        let digest = sha256(&signed.receipt);
        let about = signed.open().map(|r| r.kind.as_str()).unwrap_or("?");
        if digest[..16] != key_digest[..] {
            return Err(Error::invalid(format!(
                "{about} receipt of {message} was altered: its bytes do not match the digest \
                 it was stored under"
            )));
        }
        if let Some(k) = trust {
            k.verify_receipt(&signed)
                .map_err(|e| Error::invalid(format!("{about} receipt of {message}: {e}")))?;
        }
        if !messages
            .get(&message)
            .is_some_and(|l| l.receipts.contains(&digest))
        {
            return Err(Error::invalid(format!(
                "{about} receipt {} of {message} is recorded by no audit entry",
                hex::encode(&digest[..8])
            )));
        }
        held.insert((message, digest));
        n += 1;
    }
    for (message, logged) in messages {
        for d in &logged.receipts {
            if !held.contains(&(message.clone(), *d)) {
                return Err(Error::invalid(format!(
                    "the audit log records receipt {} of {message}, which the store lacks",
                    hex::encode(&d[..8])
                )));
            }
        }
    }
    Ok(format!(
        "{n} receipts, each recorded in the log{}",
        if trust.is_some() {
            " and validly signed"
        } else {
            ""
        }
    ))
}

fn envelopes(store: &Store, trust: Option<&Keyring>) -> Result<String> {
    let mut n = 0;
    let mut check = |message: &MessageRef, header_sha256: [u8; 32]| -> Result<()> {
        let bytes = store
            .envelope(message)?
            .ok_or_else(|| Error::invalid(format!("the envelope of {message} is missing")))?;
        let envelope = SignedEnvelope::decode(bytes)
            .map_err(|e| Error::invalid(format!("the envelope of {message}: {e}")))?;
        if envelope.header_sha256() != header_sha256 {
            return Err(Error::invalid(format!(
                "the envelope of {message} was altered: its header digest differs from its record"
            )));
        }
        if let Some(k) = trust {
            k.verify_envelope(&envelope)
                .map_err(|e| Error::invalid(format!("the envelope of {message}: {e}")))?;
        }
        n += 1;
        Ok(())
    };
    for item in store.sent_records() {
        let (message, record) = item?;
        check(&message, record.header_sha256)?;
    }
    for item in store.inbound_records() {
        let (message, record) = item?;
        check(&message, record.header_sha256)?;
    }
    Ok(format!("{n} envelopes match their records"))
}
