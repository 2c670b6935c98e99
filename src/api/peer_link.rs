//! The calling side of `cluebridge.v1.Peer`: one node handing envelopes,
//! receipts and checkpoints to another over mTLS. Converts domain types to
//! the wire and back, and puts the node's peer deadline on every call.

use super::checkpoint_to_wire;
use crate::config::{NodeConfig, NodeEntry};
use crate::crypto::tls;
use crate::error::{Error, Result};
use crate::model::{SignedCheckpoint, SignedEnvelope, SignedReceipt};
use crate::pb;
use crate::pb::peer_client::PeerClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A peer's refusal of one envelope, receipt or checkpoint.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The gRPC status code number.
    pub code: i32,
    pub message: String,
}

impl Refusal {
    /// Worth trying again later (the peer is busy or stopping), rather
    /// than refused for good.
    pub fn transient(&self) -> bool {
        transient(self.code)
    }
}

fn transient(code: i32) -> bool {
    code == tonic::Code::Unavailable as i32
        || code == tonic::Code::ResourceExhausted as i32
        || code == tonic::Code::DeadlineExceeded as i32
}

/// A connection to one peer node, made on first use.
#[derive(Clone, Debug)]
pub struct PeerLink {
    peer: String,
    client: PeerClient<Channel>,
    timeout: Duration,
}

impl PeerLink {
    pub fn new(config: &NodeConfig, peer: &NodeEntry) -> Result<PeerLink> {
        // The peer's certificate carries its DNS name, whatever host its
        // endpoint names.
        let tls = tls::client_config(
            &config.tls.ca_pem,
            &config.tls.cert_pem,
            &config.tls.key_pem,
            &tls::node_dns_name(&peer.id)?,
        );
        let timeout = config.delivery.peer_timeout();
        let channel = Endpoint::from_shared(peer.endpoint.clone())
            .map_err(|e| Error::invalid(format!("endpoint of {}: {e}", peer.id)))?
            .tls_config(tls)
            .map_err(|e| Error::invalid(format!("TLS for {}: {e}", peer.id)))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(PeerLink {
            peer: peer.id.clone(),
            client: PeerClient::new(channel)
                .max_decoding_message_size(config.limits.message_limits().peer)
                .max_encoding_message_size(config.limits.message_limits().peer),
            timeout,
        })
    }

    /// `Peer.Deliver`: per envelope, the peer's `delivered` receipt or its
    /// refusal, in the order given.
    pub async fn deliver<'a>(
        &self,
        envelopes: impl Iterator<Item = &'a SignedEnvelope>,
    ) -> Result<Vec<std::result::Result<SignedReceipt, Refusal>>> {
        let request = pb::DeliverRequest {
            envelopes: envelopes.map(SignedEnvelope::to_wire).collect(),
        };
        let sent = request.envelopes.len();
        let response = self.call(self.client.clone().deliver(request)).await?;
        self.check_count(response.outcomes.len(), sent, "envelopes")?;
        Ok(response
            .outcomes
            .into_iter()
            .map(|o| match o.outcome {
                Some(pb::deliver_outcome::Outcome::Delivered(r)) => Ok(SignedReceipt::from_wire(r)),
                Some(pb::deliver_outcome::Outcome::Refused(r)) => Err(Refusal {
                    code: r.code,
                    message: r.message,
                }),
                None => Err(Refusal {
                    code: tonic::Code::Unavailable as i32,
                    message: "the peer gave no outcome".into(),
                }),
            })
            .collect())
    }

    /// `Peer.ReturnReceipts`: per receipt, `None` if the peer took it.
    pub async fn return_receipts<'a>(
        &self,
        receipts: impl Iterator<Item = &'a SignedReceipt>,
    ) -> Result<Vec<Option<Refusal>>> {
        let request = pb::ReturnReceiptsRequest {
            receipts: receipts.map(SignedReceipt::to_wire).collect(),
        };
        let sent = request.receipts.len();
        let response = self
            .call(self.client.clone().return_receipts(request))
            .await?;
        self.check_count(response.outcomes.len(), sent, "receipts")?;
        Ok(response
            .outcomes
            .into_iter()
            .map(|o| {
                o.refused.map(|r| Refusal {
                    code: r.code,
                    message: r.message,
                })
            })
            .collect())
    }

    /// `Peer.Announce`: tells the peer that this node has started.
    pub async fn announce(&self) -> Result<()> {
        self.call(self.client.clone().announce(pb::AnnounceRequest {}))
            .await
            .map(|_| ())
    }

    /// `Peer.WitnessCheckpoint`: `None` if the peer keeps it, or its
    /// refusal for good. A transient refusal is an `Unavailable` error.
    pub async fn witness(&self, checkpoint: &SignedCheckpoint) -> Result<Option<Refusal>> {
        let request = pb::WitnessCheckpointRequest {
            checkpoint: Some(checkpoint_to_wire(checkpoint)),
        };
        match tokio::time::timeout(
            self.timeout,
            self.client.clone().witness_checkpoint(request),
        )
        .await
        {
            Err(_) => Err(self.no_answer()),
            Ok(Ok(_)) => Ok(None),
            Ok(Err(status)) if transient(status.code() as i32) => Err(self.failed(&status)),
            Ok(Err(status)) => Ok(Some(Refusal {
                code: status.code() as i32,
                message: status.message().to_string(),
            })),
        }
    }

    /// Every call to a peer has a deadline; any failure is `Unavailable`.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(self.no_answer()),
            Ok(Err(status)) => Err(self.failed(&status)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn check_count(&self, answered: usize, sent: usize, what: &str) -> Result<()> {
        if answered == sent {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "{} answered {answered} outcomes for {sent} {what}",
            self.peer
        )))
    }

    fn no_answer(&self) -> Error {
        Error::Unavailable(format!(
            "no answer from {} within {} ms",
            self.peer,
            self.timeout.as_millis()
        ))
    }

    fn failed(&self, status: &tonic::Status) -> Error {
        Error::Unavailable(format!(
            "{} answered {:?}: {}",
            self.peer,
            status.code(),
            status.message()
        ))
    }
}
