//! The node's rules: what may be submitted, taken into custody, leased,
//! settled and reported, and which receipts each step issues. Callers are
//! the gRPC services (`api`) and the background tasks (`delivery`); the
//! store makes each step atomic and durable.

mod approval;
mod audit;
mod custody;
mod followups;
mod handoff;
mod operations;
mod receipt_signer;
mod sending;
mod validate;

pub use approval::PendingView;
pub use audit::{LIST_ANSWER_BUDGET, MessageFilter, MessagePage, MessageSummary, PageToken};
pub use custody::{LeaseBatch, Leased, Leasing};
pub use followups::CaseEntry;
pub use operations::{
    DOWN_AFTER_FAILURES, DeadLetterView, HistoryEvent, MessageInfo, OutboxView, PeerState,
    PeerStatus, PeerView, QueuesView, Side,
};
pub use sending::{Status, SubmitInput, Submitted};

use crate::config::NodeConfig;
use crate::crypto::NodeSigner;
use crate::metrics::Metrics;
use crate::model::{MessageRef, Receipt, ReceiptKind, SignedReceipt};
use crate::now_ms;
use crate::store::Store;
use receipt_signer::ReceiptSigner;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// One cheap-clone handle to a node's broker state.
#[derive(Clone, Debug)]
pub struct Broker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: NodeConfig,
    store: Store,
    /// Wakes the forwarder of a peer when its outbox or receipt outbox
    /// gained an entry.
    peer_signals: HashMap<String, Arc<PeerSignals>>,
    /// Wakes `Receive` streams when the inbox gained a ready message.
    inbox_wake: Notify,
    /// Streams waiting on an empty inbox, handed arrivals directly.
    waiting: handoff::Waiting,
    /// Wakes `WatchReceipts` streams when a receipt was stored.
    feed_wake: Notify,
    /// Flow-control permits of `Receive` streams, by lease id: dropping one
    /// lets its stream take the next message. A std Mutex, not a tokio one:
    /// it is never held across an `.await`.
    permits: Mutex<HashMap<u64, OwnedSemaphorePermit>>,
    /// Submit token buckets by principal name.
    submit_buckets: Mutex<HashMap<String, Bucket>>,
    /// Counters and histograms for `/metrics`.
    metrics: Metrics,
    /// Signs the receipts issued on the request paths, many under one
    /// signature when they come together.
    receipts: ReceiptSigner,
    /// What each peer's forwarder last saw, and pauses. A std Mutex: held
    /// only to read or bump a few figures, never across an `.await`.
    peers: Mutex<BTreeMap<String, PeerStatus>>,
    /// Checkpoints of the audit chain made since the node started: a
    /// forwarder looks the latest up only when this moved.
    checkpoints_made: std::sync::atomic::AtomicU64,
}

/// A token bucket: `tokens` left at `at`, refilled at the configured rate
/// up to one second's worth.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What wakes the forwarder of one peer.
#[derive(Debug, Default)]
pub struct PeerSignals {
    /// New work for the peer: an envelope or receipt to send, a resume.
    pub work: Notify,
    /// The peer called this node (it announces itself when it starts).
    pub heard: Notify,
}

impl Broker {
    /// The broker of a node over its opened store; restores the peer
    /// pauses stored by earlier runs.
    pub fn new(config: NodeConfig, store: Store) -> crate::error::Result<Broker> {
        let peer_signals = config
            .peers()
            .map(|p| (p.id.clone(), Arc::default()))
            .collect();
        let receipts = ReceiptSigner::start(Arc::clone(&config.signer)).map_err(|e| {
            crate::error::Error::Unavailable(format!("cannot start the receipt-signer thread: {e}"))
        })?;
        let broker = Broker {
            shared: Arc::new(Shared {
                config,
                store,
                peer_signals,
                inbox_wake: Notify::new(),
                waiting: handoff::Waiting::default(),
                feed_wake: Notify::new(),
                permits: Mutex::new(HashMap::new()),
                submit_buckets: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
                receipts,
                peers: Mutex::new(BTreeMap::new()),
                checkpoints_made: Default::default(),
            }),
        };
        broker.load_pauses()?;
        Ok(broker)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    fn signer(&self) -> &NodeSigner {
        &self.shared.config.signer
    }

    /// What a peer's forwarder waits on.
    pub fn peer_signals(&self, peer: &str) -> Option<Arc<PeerSignals>> {
        self.shared.peer_signals.get(peer).cloned()
    }

    /// How many checkpoints this node made since it started.
    pub fn checkpoints_made(&self) -> u64 {
        self.shared
            .checkpoints_made
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn wake_peer(&self, peer: &str) {
        if let Some(s) = self.shared.peer_signals.get(peer) {
            s.work.notify_one();
        }
    }

    /// `peer` called this node, so it is up: its forwarder retries now
    /// instead of waiting out its backoff.
    pub fn heard_from(&self, peer: &str) {
        if let Some(s) = self.shared.peer_signals.get(peer) {
            s.heard.notify_one();
        }
    }

    pub fn inbox_wake(&self) -> &Notify {
        &self.shared.inbox_wake
    }

    pub fn feed_wake(&self) -> &Notify {
        &self.shared.feed_wake
    }

    /// A receipt by this node, not yet signed.
    fn receipt(
        &self,
        message: &MessageRef,
        kind: ReceiptKind,
        header_sha256: [u8; 32],
        attempt: u32,
        reason: impl Into<String>,
    ) -> Receipt {
        Receipt {
            message_id: message.message_id.clone(),
            sender_node: message.sender_node.clone(),
            kind,
            issuer_node: self.node_id().to_string(),
            issued_at_ms: now_ms(),
            reason: reason.into(),
            header_sha256,
            signing_key_id: self.signer().key_id().to_string(),
            attempt,
        }
    }

    /// Issues and signs a receipt by this node, alone: for the store's
    /// writer thread and other paths that cannot wait for a batch.
    fn issue(
        &self,
        message: &MessageRef,
        kind: ReceiptKind,
        header_sha256: [u8; 32],
        attempt: u32,
        reason: impl Into<String>,
    ) -> SignedReceipt {
        let receipt = self.receipt(message, kind, header_sha256, attempt, reason);
        self.signer().sign_receipt(&receipt)
    }

    /// Signs receipts by this node together with the others issued at the
    /// same time (one signature over their Merkle root).
    async fn sign_together(&self, receipts: Vec<Receipt>) -> Vec<SignedReceipt> {
        self.shared.receipts.sign(receipts).await
    }

    /// Signs an accepted message's encoded header and its `accepted`
    /// receipt through the batch signer.
    async fn sign_accepted(
        &self,
        header: bytes::Bytes,
        accepted: Receipt,
    ) -> (receipt_signer::HeaderSignature, SignedReceipt) {
        self.shared.receipts.sign_accepted(header, accepted).await
    }

    /// Signs one receipt by this node through the batch signer.
    async fn sign_one(&self, receipt: Receipt) -> SignedReceipt {
        let mut signed = self.sign_together(vec![receipt]).await;
        signed.pop().expect("one receipt signed")
    }

    fn lock_permits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OwnedSemaphorePermit>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map itself is still consistent.
        self.shared
            .permits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one submit from `principal`'s allowance of
    /// `limits.submit_rate_per_sec`; refuses with `ResourceExhausted` when
    /// it is used up.
    pub fn take_submit_token(&self, principal: &str) -> crate::error::Result<()> {
        let rate = self.config().limits.submit_rate_per_sec;
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let now = Instant::now();
        let mut buckets = self
            .shared
            .submit_buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(principal.to_string()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
            return Err(crate::error::Error::ResourceExhausted(format!(
                "principal {principal} exceeded its submit rate of {rate} per second; \
                 retry in {wait_ms} ms"
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Runs `read` — store reads that may touch the disk — on tokio's
    /// blocking pool, never on an async worker (writes go to the store's
    /// writer thread instead).
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Broker) -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
        let broker = self.clone();
        tokio::task::spawn_blocking(move || read(&broker))
            .await
            .map_err(|e| crate::error::Error::Unavailable(format!("a store read failed: {e}")))?
    }

    /// Gives a stream's flow-control slot back when its lease ends.
    fn end_lease(&self, lease_id: u64) {
        self.lock_permits().remove(&lease_id);
    }
}
