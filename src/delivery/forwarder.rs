//! One forwarder per peer: sends the peer's outbox in batches with
//! `Peer.Deliver`, its receipt outbox with `Peer.ReturnReceipts` and the
//! node's latest audit checkpoint with `Peer.WitnessCheckpoint`,
//! retrying with capped exponential backoff and jitter. State lives in the
//! store, so a restarted node resumes where it stopped.

use super::backoff::Backoff;
use super::failures::Failures;
use crate::api::{PeerLink, Refusal};
use crate::broker::{Broker, PeerSignals};
use crate::config::NodeEntry;
use crate::error::{Error, Result};
use crate::model::{MessageRef, SignedEnvelope, SignedReceipt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Check the store at least this often even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(super) struct Forwarder {
    broker: Broker,
    peer: String,
    link: PeerLink,
    signals: Arc<PeerSignals>,
    stop: CancellationToken,
    backoff: Backoff,
    /// The last own checkpoint the peer took (or refused for good); later
    /// checkpoints cover every earlier one, so only the latest is sent.
    witnessed_seq: Option<u64>,
    /// How many checkpoints the node had made when the latest was last
    /// looked up: the store is read again only after another one.
    checkpoints_seen: Option<u64>,
    /// A peer down for hours is logged once, then once a minute.
    failures: Failures,
}

impl Forwarder {
    pub(super) fn new(broker: Broker, peer: &NodeEntry, stop: CancellationToken) -> Result<Self> {
        let config = broker.config();
        let link = PeerLink::new(config, peer)?;
        let signals = broker
            .peer_signals(&peer.id)
            .ok_or_else(|| Error::invalid(format!("{} is not a peer", peer.id)))?;
        let backoff = Backoff::new(
            config.delivery.retry_initial_ms,
            config.delivery.retry_max_ms,
        );
        Ok(Forwarder {
            link,
            broker,
            peer: peer.id.clone(),
            signals,
            stop,
            backoff,
            witnessed_seq: None,
            checkpoints_seen: None,
            failures: Failures::warnings("forwarder"),
        })
    }

    pub(super) async fn run(mut self) {
        // A peer that backs off from this node while it was down retries
        // now; a peer that is down itself hears from us when it starts.
        if let Err(e) = self.link.announce().await {
            tracing::debug!(error = %e, "announcing this node to the peer failed");
        }
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if self.broker.peer_paused(&self.peer) {
                // Paused by an operator: envelopes and receipts wait in the
                // store; ResumePeer wakes this task.
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.signals.work.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            let round = self.round().await;
            if round.is_ok() {
                self.failures.succeeded();
            }
            match round {
                Ok(true) => {
                    self.backoff.reset();
                }
                Ok(false) => {
                    self.backoff.reset();
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = self.signals.work.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(e) => {
                    let delay = self.backoff.next();
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "peer call failed");
                    self.failures.failed(&e);
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = self.signals.heard.notified() => {
                            tracing::debug!("peer called in; retrying now");
                            self.backoff.reset();
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The outbox, the receipt outbox and the latest checkpoint. `Ok(true)`
    /// if more is known to wait (the next round starts at once); else the
    /// forwarder waits for a wake-up, which work queued meanwhile has left.
    async fn round(&mut self) -> Result<bool> {
        let batch = self.broker.config().delivery.batch_size;
        let more_envelopes = self.send_envelopes(batch).await?;
        let more_receipts = self.return_receipts(batch).await?;
        self.send_checkpoint().await?;
        Ok(more_envelopes || more_receipts)
    }

    /// Hands the node's latest checkpoint to the peer, once; looks it up
    /// only when the node made one since the last look.
    async fn send_checkpoint(&mut self) -> Result<()> {
        let made = self.broker.checkpoints_made();
        if self.checkpoints_seen == Some(made) {
            return Ok(());
        }
        self.offer_checkpoint().await?;
        self.checkpoints_seen = Some(made);
        Ok(())
    }

    async fn offer_checkpoint(&mut self) -> Result<()> {
        let node = self.broker.node_id().to_string();
        let Some(latest) = self
            .broker
            .read(move |b| b.store().latest_checkpoint(&node))
            .await?
        else {
            return Ok(());
        };
        let seq = latest
            .open()
            .map_err(|e| Error::corrupt("checkpoints", e))?
            .seq;
        if self.witnessed_seq.is_some_and(|w| w >= seq) {
            return Ok(());
        }
        if let Some(refusal) = self.link.witness(&latest).await? {
            tracing::error!(seq, code = refusal.code, reason = %refusal.message, "peer refused to witness a checkpoint");
        }
        self.witnessed_seq = Some(seq);
        Ok(())
    }

    /// Sends the outbox in batches, up to [`PIPELINE`] in flight: the
    /// next batch travels while the peer takes custody of the one before,
    /// and the receipts of answered batches are recorded on their own
    /// tasks (see [`Settling`]) while the forwarder reads on. A batch read
    /// while others are in flight starts after them in the outbox; the
    /// outbox is read on while it held more than was read, and again
    /// whenever new work is signalled while the window has room, so that
    /// a message accepted while a batch travels leaves at once instead of
    /// after that batch's answer. `Ok(true)` if the peer deferred a batch
    /// after others moved (try again at once); on a failure the batches
    /// still in flight are dropped (the peer answers a repeated envelope
    /// with the receipt it gave).
    async fn send_envelopes(&mut self, batch: usize) -> Result<bool> {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut settling = Settling::default();
        let mut after = None;
        let mut look = true;
        loop {
            while look && in_flight.len() < PIPELINE {
                let next = self
                    .broker
                    .outbox_batch(&self.peer, after.clone(), batch)
                    .await?;
                look = next.more;
                after = next.end;
                if !next.envelopes.is_empty() {
                    in_flight.push_back(InFlight::start(&self.link, next.envelopes));
                }
            }
            let room = in_flight.len() < PIPELINE;
            let Some(call) = in_flight.front_mut() else {
                return settling.finish().await;
            };
            let answer = tokio::select! {
                answer = call.answer() => answer,
                _ = self.signals.work.notified(), if room => {
                    look = true;
                    continue;
                }
            };
            let started = call.started;
            in_flight.pop_front();
            let (envelopes, outcomes) = self.recorded_since(started, answer)?;
            self.broker
                .metrics()
                .forward_seconds
                .observe_duration(started.elapsed());
            let (broker, peer) = (self.broker.clone(), self.peer.clone());
            let recording = async move { settle(&broker, &peer, envelopes, outcomes).await };
            if let Some(deferred) = settling.add(recording).await {
                return deferred;
            }
        }
    }

    /// Returns a batch of receipts; `Ok(true)` if a full batch went (more
    /// may wait).
    async fn return_receipts(&mut self, batch: usize) -> Result<bool> {
        let waiting = self.broker.receipt_outbox_batch(&self.peer, batch).await?;
        if waiting.is_empty() {
            return Ok(false);
        }
        let full = waiting.len() >= batch;
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
        Ok(full && moved)
    }

    /// Runs a call to the peer and records its outcome as the peer's
    /// state for operators (ListPeers, metrics).
    async fn recorded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let started = std::time::Instant::now();
        let result = call.await;
        self.recorded_since(started, result)
    }

    /// Records the outcome of a call to the peer started at `started`.
    fn recorded_since<T>(&self, started: std::time::Instant, result: Result<T>) -> Result<T> {
        match &result {
            Ok(_) => self.broker.peer_succeeded(&self.peer, started.elapsed()),
            Err(e) => self.broker.peer_failed(&self.peer, e),
        }
        result
    }
}

/// Records what the peer answered for a batch; the peer's reason if
/// it deferred every envelope (a transient refusal).
async fn settle(
    broker: &Broker,
    peer: &str,
    envelopes: Vec<(MessageRef, SignedEnvelope)>,
    outcomes: Vec<std::result::Result<SignedReceipt, Refusal>>,
) -> Result<Option<String>> {
    let mut delivered = Vec::new();
    let mut refused = Vec::new();
    let mut deferred = None;
    for ((message, _), outcome) in envelopes.into_iter().zip(outcomes) {
        match outcome {
            Ok(receipt) => delivered.push((message, receipt)),
            Err(r) if r.transient() => deferred = Some(r.message),
            Err(r) => {
                tracing::error!(%message, code = r.code, reason = %r.message, "peer refused envelope");
                refused.push((message, r.code, r.message));
            }
        }
    }
    let moved = !delivered.is_empty() || !refused.is_empty();
    if let Some(reason) = deferred.filter(|_| !moved) {
        return Ok(Some(reason));
    }
    broker.metrics().forwarded.add(peer, delivered.len() as u64);
    broker.on_forwarded(peer, delivered, refused).await?;
    Ok(None)
}

/// The recording of answered batches, each on its own task, at most
/// [`PIPELINE`] at once: they run while the forwarder reads and sends on,
/// and all of them end before `send_envelopes` returns (the next call
/// reads the outbox from its start, where unrecorded envelopes still are),
/// except when a read of the outbox or a call to the peer failed: then
/// they finish beside the backoff, and an envelope sent again meanwhile
/// only brings back the receipt the peer gave, which is recorded once.
#[derive(Default)]
struct Settling {
    tasks: VecDeque<tokio::task::JoinHandle<Result<Option<String>>>>,
    /// Whether a recorded batch moved (some envelope taken or refused).
    moved: bool,
}

impl Settling {
    /// Starts recording a batch; waits for the oldest recording when
    /// [`PIPELINE`] run. `Some` when `send_envelopes` must return that.
    async fn add(
        &mut self,
        recording: impl std::future::Future<Output = Result<Option<String>>> + Send + 'static,
    ) -> Option<Result<bool>> {
        self.tasks
            .push_back(tokio::spawn(recording.instrument(tracing::Span::current())));
        while self.tasks.len() > PIPELINE || self.tasks.front().is_some_and(|t| t.is_finished()) {
            if let Some(done) = self.next().await {
                return Some(done);
            }
        }
        None
    }

    /// Waits for every recording; what `send_envelopes` returns.
    async fn finish(mut self) -> Result<bool> {
        while !self.tasks.is_empty() {
            if let Some(done) = self.next().await {
                return done;
            }
        }
        Ok(false)
    }

    /// Waits for the oldest recording. `Some` on a failure, or when the
    /// peer deferred a whole batch (after the others are recorded): try
    /// again at once if another batch moved, else back off.
    async fn next(&mut self) -> Option<Result<bool>> {
        let task = self.tasks.pop_front()?;
        let recorded = task
            .await
            .map_err(|e| Error::Unavailable(format!("recording a delivery ended abnormally: {e}")))
            .and_then(|r| r);
        match recorded {
            Err(e) => {
                self.wait_all().await;
                Some(Err(e))
            }
            Ok(None) => {
                self.moved = true;
                None
            }
            Ok(Some(reason)) => {
                self.wait_all().await;
                Some(match self.moved {
                    true => Ok(true),
                    false => Err(Error::Unavailable(format!("peer deferred: {reason}"))),
                })
            }
        }
    }

    /// Waits for the other recordings, whatever their outcome: none may
    /// still run when the outbox is read from its start again.
    async fn wait_all(&mut self) {
        for task in std::mem::take(&mut self.tasks) {
            if let Ok(Ok(None)) = task.await {
                self.moved = true;
            }
        }
    }
}

/// `Peer.Deliver` calls a forwarder keeps in flight to one peer.
const PIPELINE: usize = 3;

/// One `Peer.Deliver` call running on its own task, so that it travels
/// while the forwarder records the answers to earlier ones. Dropped
/// unanswered, it is cancelled.
struct InFlight {
    started: std::time::Instant,
    task: tokio::task::JoinHandle<Answered>,
}

type Answered = Result<(
    Vec<(MessageRef, SignedEnvelope)>,
    Vec<std::result::Result<SignedReceipt, Refusal>>,
)>;

impl InFlight {
    fn start(link: &PeerLink, envelopes: Vec<(MessageRef, SignedEnvelope)>) -> InFlight {
        let link = link.clone();
        InFlight {
            started: std::time::Instant::now(),
            // In the forwarder's span, like the rest of its work.
            task: tokio::spawn(
                async move {
                    let outcomes = link.deliver(envelopes.iter().map(|(_, e)| e)).await?;
                    Ok((envelopes, outcomes))
                }
                .instrument(tracing::Span::current()),
            ),
        }
    }

    async fn answer(&mut self) -> Answered {
        (&mut self.task)
            .await
            .map_err(|e| Error::Unavailable(format!("a delivery call ended abnormally: {e}")))?
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}
