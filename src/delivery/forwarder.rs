//! One forwarder per peer: sends the peer's outbox in batches with
//! `Peer.Deliver`, its receipt outbox with `Peer.ReturnReceipts` and the
//! node's latest audit checkpoint with `Peer.WitnessCheckpoint`,
//! retrying with capped exponential backoff and jitter. State lives in the
//! store, so a restarted node resumes where it stopped.

use crate::api::PeerLink;
use crate::broker::Broker;
use crate::config::NodeEntry;
use crate::error::{Error, Result};
use crate::model::MessageRef;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Check the store at least this often even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(super) struct Forwarder {
    broker: Broker,
    peer: String,
    link: PeerLink,
    wake: Arc<Notify>,
    stop: CancellationToken,
    backoff_ms: u64,
    /// The last own checkpoint the peer took (or refused for good); later
    /// checkpoints cover every earlier one, so only the latest is sent.
    witnessed_seq: Option<u64>,
}

impl Forwarder {
    pub(super) fn new(broker: Broker, peer: &NodeEntry, stop: CancellationToken) -> Result<Self> {
        let config = broker.config();
        let link = PeerLink::new(config, peer)?;
        let wake = broker
            .peer_wake(&peer.id)
            .ok_or_else(|| Error::invalid(format!("{} is not a peer", peer.id)))?;
        let backoff_ms = config.delivery.retry_initial_ms;
        Ok(Forwarder {
            link,
            broker,
            peer: peer.id.clone(),
            wake,
            stop,
            backoff_ms,
            witnessed_seq: None,
        })
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if self.broker.peer_paused(&self.peer) {
                // Paused by an operator: envelopes and receipts wait in the
                // store; ResumePeer wakes this task.
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            match self.round().await {
                Ok(true) => {
                    self.backoff_ms = self.broker.config().delivery.retry_initial_ms;
                }
                Ok(false) => {
                    self.backoff_ms = self.broker.config().delivery.retry_initial_ms;
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(e) => {
                    let delay = self.next_backoff();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "peer call failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Full jitter over a doubling, capped delay.
    fn next_backoff(&mut self) -> Duration {
        let max = self.broker.config().delivery.retry_max_ms;
        let current = self.backoff_ms.min(max);
        self.backoff_ms = (current * 2).min(max);
        let jittered = rand::thread_rng().gen_range(current / 2..=current);
        Duration::from_millis(jittered.max(1))
    }

    /// One batch each way. `Ok(true)` if anything moved.
    async fn round(&mut self) -> Result<bool> {
        let batch = self.broker.config().delivery.batch_size;
        let sent = self.send_envelopes(batch).await?;
        let returned = self.return_receipts(batch).await?;
        let witnessed = self.send_checkpoint().await?;
        Ok(sent || returned || witnessed)
    }

    /// Hands the node's latest checkpoint to the peer, once.
    async fn send_checkpoint(&mut self) -> Result<bool> {
        let node = self.broker.node_id().to_string();
        let Some(latest) = self
            .broker
            .read(move |b| b.store().latest_checkpoint(&node))
            .await?
        else {
            return Ok(false);
        };
        let seq = latest
            .open()
            .map_err(|e| Error::corrupt("checkpoints", e))?
            .seq;
        if self.witnessed_seq.is_some_and(|w| w >= seq) {
            return Ok(false);
        }
        match self.link.witness(&latest).await? {
            Some(refusal) => {
                tracing::error!(seq, code = refusal.code, reason = %refusal.message, "peer refused to witness a checkpoint");
                self.witnessed_seq = Some(seq);
                Ok(false)
            }
            None => {
                self.witnessed_seq = Some(seq);
                Ok(true)
            }
        }
    }

    async fn send_envelopes(&mut self, batch: usize) -> Result<bool> {
        let envelopes = self.broker.outbox_batch(&self.peer, batch).await?;
        if envelopes.is_empty() {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let outcomes = self
            .recorded(self.link.deliver(envelopes.iter().map(|(_, e)| e)))
            .await?;
        self.broker
            .metrics()
            .forward_seconds
            .observe_duration(started.elapsed());
        let mut delivered = Vec::new();
        let mut refused = Vec::new();
        let mut transient_refusal = None;
        for ((message, _), outcome) in envelopes.into_iter().zip(outcomes) {
            match outcome {
                Ok(receipt) => delivered.push((message, receipt)),
                Err(r) if r.transient() => transient_refusal = Some(r.message),
                Err(r) => {
                    tracing::error!(%message, code = r.code, reason = %r.message, "peer refused envelope");
                    refused.push((message, r.code, r.message));
                }
            }
        }
        let moved = !delivered.is_empty() || !refused.is_empty();
        self.broker
            .metrics()
            .forwarded
            .add(&self.peer, delivered.len() as u64);
        self.broker
            .on_forwarded(&self.peer, delivered, refused)
            .await?;
        match transient_refusal {
            Some(reason) if !moved => Err(Error::Unavailable(format!("peer deferred: {reason}"))),
            _ => Ok(true),
        }
    }

    async fn return_receipts(&mut self, batch: usize) -> Result<bool> {
        let waiting = self.broker.receipt_outbox_batch(&self.peer, batch).await?;
        if waiting.is_empty() {
            return Ok(false);
        }
        let outcomes = self
            .recorded(self.link.return_receipts(waiting.iter().map(|(_, r)| r)))
            .await?;
        let mut done = Vec::new();
        for ((key, receipt), outcome) in waiting.into_iter().zip(outcomes) {
            match outcome {
                None => done.push(key),
                Some(r) if r.transient() => {}
                Some(r) => {
                    let about = receipt
                        .open()
                        .map(|r| r.message_ref())
                        .unwrap_or(MessageRef {
                            sender_node: self.peer.clone(),
                            message_id: String::new(),
                        });
                    tracing::error!(message = %about, code = r.code, reason = %r.message, "peer refused a receipt; dropping it from the receipt outbox");
                    done.push(key);
                }
            }
        }
        let moved = !done.is_empty();
        self.broker.receipts_returned(done).await?;
        Ok(moved)
    }

    /// Runs a call to the peer and records its outcome as the peer's
    /// state for operators (ListPeers, metrics).
    async fn recorded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = call.await;
        match &result {
            Ok(_) => self.broker.peer_succeeded(&self.peer, started.elapsed()),
            Err(e) => self.broker.peer_failed(&self.peer, e),
        }
        result
    }
}
