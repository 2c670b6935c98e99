//! Background tasks over the store: one forwarder per peer (envelopes out,
//! receipts back, audit checkpoints to witness), one sweeper (lapsed
//! leases, expired messages) and one checkpointer (signs the audit chain
//! head). They
//! stop through one cancellation token and never hold a store transaction
//! across an `.await`.

mod backoff;
mod checkpointer;
mod failures;
mod forwarder;
mod sweeper;

use crate::broker::Broker;
use crate::error::Result;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Starts the background tasks of a node.
pub fn spawn(broker: &Broker, stop: &CancellationToken) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for peer in broker.config().peers() {
        let f = forwarder::Forwarder::new(broker.clone(), peer, stop.clone())?;
        let span = tracing::info_span!("forwarder", peer = %peer.id);
        tasks.push(tokio::spawn(f.run().instrument(span)));
    }
    tasks.push(tokio::spawn(sweeper::run(broker.clone(), stop.clone())));
    tasks.push(tokio::spawn(checkpointer::run(
        broker.clone(),
        stop.clone(),
    )));
    Ok(tasks)
}
