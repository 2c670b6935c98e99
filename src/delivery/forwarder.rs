//! One forwarder per peer: sends the peer's outbox in batches with
//! `Peer.Deliver`, its receipt outbox with `Peer.ReturnReceipts` and the
//! node's latest audit checkpoint with `Peer.WitnessCheckpoint`,
//! retrying with capped exponential backoff and jitter. State lives in the
//! store, so a restarted node resumes where it stopped.

use crate::broker::Broker;
use crate::config::NodeEntry;
use crate::crypto::tls;
use crate::error::{Error, Result};
use crate::model::{MessageRef, SignedReceipt};
use crate::pb;
use crate::pb::peer_client::PeerClient;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Check the store at least this often even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(super) struct Forwarder {
    broker: Broker,
    peer: String,
    client: PeerClient<Channel>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    backoff_ms: u64,
    /// The last own checkpoint the peer took (or refused for good); later
    /// checkpoints cover every earlier one, so only the latest is sent.
    witnessed_seq: Option<u64>,
}

/// Gives gRPC statuses and per-item refusals one meaning: worth a retry?
fn transient(code: i32) -> bool {
    code == tonic::Code::Unavailable as i32
        || code == tonic::Code::ResourceExhausted as i32
        || code == tonic::Code::DeadlineExceeded as i32
}

impl Forwarder {
    pub(super) fn new(broker: Broker, peer: &NodeEntry, stop: CancellationToken) -> Result<Self> {
        let config = broker.config();
        let tls = tls::client_config(
            &config.tls.ca_pem,
            &config.tls.cert_pem,
            &config.tls.key_pem,
            &peer.id,
        );
        let channel = Endpoint::from_shared(peer.endpoint.clone())
            .map_err(|e| Error::invalid(format!("endpoint of {}: {e}", peer.id)))?
            .tls_config(tls)
            .map_err(|e| Error::invalid(format!("TLS for {}: {e}", peer.id)))?
            .connect_timeout(config.delivery.peer_timeout())
            .timeout(config.delivery.peer_timeout())
            .tcp_nodelay(true)
            .connect_lazy();
        let wake = broker
            .peer_wake(&peer.id)
            .ok_or_else(|| Error::invalid(format!("{} is not a peer", peer.id)))?;
        let backoff_ms = config.delivery.retry_initial_ms;
        Ok(Forwarder {
            client: PeerClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
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
        let Some(latest) = self.broker.store().latest_checkpoint(&node)? else {
            return Ok(false);
        };
        let seq = latest
            .open()
            .map_err(|e| Error::corrupt("checkpoints", e))?
            .seq;
        if self.witnessed_seq.is_some_and(|w| w >= seq) {
            return Ok(false);
        }
        let request = pb::WitnessCheckpointRequest {
            checkpoint: Some(crate::api::checkpoint_to_wire(&latest)),
        };
        let timeout = self.broker.config().delivery.peer_timeout();
        let answer =
            tokio::time::timeout(timeout, self.client.clone().witness_checkpoint(request)).await;
        match answer {
            Err(_) => Err(Error::Unavailable(format!(
                "no answer from {} within {} ms",
                self.peer,
                timeout.as_millis()
            ))),
            Ok(Err(status)) if transient(status.code() as i32) => Err(Error::Unavailable(format!(
                "{} answered {:?}: {}",
                self.peer,
                status.code(),
                status.message()
            ))),
            Ok(Err(status)) => {
                tracing::error!(seq, code = ?status.code(), reason = %status.message(), "peer refused to witness a checkpoint");
                self.witnessed_seq = Some(seq);
                Ok(false)
            }
            Ok(Ok(_)) => {
                self.witnessed_seq = Some(seq);
                Ok(true)
            }
        }
    }

    async fn send_envelopes(&mut self, batch: usize) -> Result<bool> {
        let envelopes = self.broker.outbox_batch(&self.peer, batch)?;
        if envelopes.is_empty() {
            return Ok(false);
        }
        let request = pb::DeliverRequest {
            envelopes: envelopes.iter().map(|(_, e)| e.to_wire()).collect(),
        };
        let started = std::time::Instant::now();
        let response = self.call(self.client.clone().deliver(request)).await?;
        self.broker
            .metrics()
            .forward_seconds
            .observe_duration(started.elapsed());
        if response.outcomes.len() != envelopes.len() {
            return Err(Error::Unavailable(format!(
                "peer answered {} outcomes for {} envelopes",
                response.outcomes.len(),
                envelopes.len()
            )));
        }
        let mut delivered = Vec::new();
        let mut refused = Vec::new();
        let mut transient_refusal = None;
        for ((message, _), outcome) in envelopes.into_iter().zip(response.outcomes) {
            match outcome.outcome {
                Some(pb::deliver_outcome::Outcome::Delivered(r)) => {
                    delivered.push((message, SignedReceipt::from_wire(r)));
                }
                Some(pb::deliver_outcome::Outcome::Refused(r)) if transient(r.code) => {
                    transient_refusal = Some(r.message);
                }
                Some(pb::deliver_outcome::Outcome::Refused(r)) => {
                    tracing::error!(%message, code = r.code, reason = %r.message, "peer refused envelope");
                    refused.push((message, r.code, r.message));
                }
                None => {
                    transient_refusal = Some(format!("no outcome for {message}"));
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
        let waiting = self.broker.receipt_outbox_batch(&self.peer, batch)?;
        if waiting.is_empty() {
            return Ok(false);
        }
        let request = pb::ReturnReceiptsRequest {
            receipts: waiting.iter().map(|(_, r)| r.to_wire()).collect(),
        };
        let response = self
            .call(self.client.clone().return_receipts(request))
            .await?;
        if response.outcomes.len() != waiting.len() {
            return Err(Error::Unavailable(format!(
                "peer answered {} outcomes for {} receipts",
                response.outcomes.len(),
                waiting.len()
            )));
        }
        let mut done = Vec::new();
        for ((key, receipt), outcome) in waiting.into_iter().zip(response.outcomes) {
            match outcome.refused {
                None => done.push(key),
                Some(r) if transient(r.code) => {}
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
        self.broker.receipts_returned(&done)?;
        Ok(moved)
    }

    /// Every call to a peer has a deadline.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let timeout = self.broker.config().delivery.peer_timeout();
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(Error::Unavailable(format!(
                "no answer from {} within {} ms",
                self.peer,
                timeout.as_millis()
            ))),
            Ok(Err(status)) => Err(Error::Unavailable(format!(
                "{} answered {:?}: {}",
                self.peer,
                status.code(),
                status.message()
            ))),
            Ok(Ok(r)) => Ok(r.into_inner()),
        };
        // The peer's state for operators (ListPeers, metrics).
        match &result {
            Ok(_) => self.broker.peer_succeeded(&self.peer, started.elapsed()),
            Err(e) => self.broker.peer_failed(&self.peer, e),
        }
        result
    }
}
