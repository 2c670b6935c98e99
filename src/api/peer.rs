//! `cluebridge.v1.Peer`: node-to-node delivery of envelopes and receipts.

use super::{caller, peer_node};
use crate::broker::Broker;
use crate::model::{SignedEnvelope, SignedReceipt};
use crate::pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct PeerService {
    broker: Broker,
}

impl PeerService {
    pub fn new(broker: Broker) -> Self {
        PeerService { broker }
    }

    /// The calling node: a node certificate of another federation node.
    fn calling_node<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let config = self.broker.config();
        peer_node(config, caller(config, request)?)
    }
}

fn refusal(e: crate::error::Error) -> pb::Refusal {
    pb::Refusal {
        code: e.code_number(),
        message: e.to_string(),
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let peer = self.calling_node(&request)?;
        let envelopes = request
            .into_inner()
            .envelopes
            .into_iter()
            .map(SignedEnvelope::from_wire)
            .collect();
        let outcomes = self
            .broker
            .deliver(&peer, envelopes)
            .instrument(tracing::info_span!("deliver", %peer))
            .await?;
        for (message_id, outcome) in &outcomes {
            if outcome.is_ok() {
                tracing::debug!(%peer, message_id, "took custody");
            }
        }
        Ok(Response::new(pb::DeliverResponse {
            outcomes: outcomes
                .into_iter()
                .map(|(message_id, outcome)| pb::DeliverOutcome {
                    message_id,
                    outcome: Some(match outcome {
                        Ok(r) => pb::deliver_outcome::Outcome::Delivered(r.to_wire()),
                        Err(e) => pb::deliver_outcome::Outcome::Refused(refusal(e)),
                    }),
                })
                .collect(),
        }))
    }

    async fn return_receipts(
        &self,
        request: Request<pb::ReturnReceiptsRequest>,
    ) -> Result<Response<pb::ReturnReceiptsResponse>, Status> {
        let peer = self.calling_node(&request)?;
        let receipts = request
            .into_inner()
            .receipts
            .into_iter()
            .map(SignedReceipt::from_wire)
            .collect();
        let outcomes = self
            .broker
            .return_receipts(&peer, receipts)
            .instrument(tracing::info_span!("return_receipts", %peer))
            .await?;
        Ok(Response::new(pb::ReturnReceiptsResponse {
            outcomes: outcomes
                .into_iter()
                .map(|o| pb::ReceiptOutcome {
                    refused: o.err().map(refusal),
                })
                .collect(),
        }))
    }

    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceResponse>, Status> {
        let peer = self.calling_node(&request)?;
        tracing::info!(%peer, "peer announced that it started");
        self.broker.heard_from(&peer);
        Ok(Response::new(pb::AnnounceResponse {}))
    }

    async fn witness_checkpoint(
        &self,
        request: Request<pb::WitnessCheckpointRequest>,
    ) -> Result<Response<pb::WitnessCheckpointResponse>, Status> {
        let peer = self.calling_node(&request)?;
        let checkpoint = request
            .into_inner()
            .checkpoint
            .ok_or_else(|| super::missing("checkpoint"))?;
        self.broker
            .witness(&peer, super::checkpoint_from_wire(checkpoint))
            .await?;
        Ok(Response::new(pb::WitnessCheckpointResponse {}))
    }
}
