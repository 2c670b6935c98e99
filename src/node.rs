//! Wires one node together — store, broker, background tasks, gRPC server
//! with mTLS — and runs it until shutdown, then drains under a deadline.

use crate::api::{AuditService, BrokerService, PeerService};
use crate::broker::Broker;
use crate::config::NodeConfig;
use crate::crypto::tls;
use crate::delivery;
use crate::error::{Error, Result};
use crate::pb;
use crate::store::Store;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Largest gRPC message a node takes: a full `Peer` batch of large payloads.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Runs a node on `listener` until `shutdown` completes, then stops taking
/// calls, ends streams and background tasks, and flushes the store.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = Store::open_with(&config.data_dir, config.audit.log)?;
    let broker = Broker::new(config, store);
    serve(broker, listener, shutdown).await
}

async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = broker.config().clone();
    let stop = CancellationToken::new();
    let tasks = delivery::spawn(&broker, &stop)?;
    let acceptor = tls::server_acceptor(
        &config.tls.ca_pem,
        &config.tls.cert_pem,
        &config.tls.key_pem,
    )?;
    let broker_service =
        pb::broker_server::BrokerServer::new(BrokerService::new(broker.clone(), stop.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let peer_service = pb::peer_server::PeerServer::new(PeerService::new(broker.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let audit_service = pb::audit_server::AuditServer::new(AuditService::new(broker.clone()))
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener has no address: {e}")))?;
    for warning in config.expiry_warnings(crate::now_ms()) {
        tracing::warn!(node = %config.node_id, "{warning}");
    }
    if config.principals.is_empty() {
        tracing::warn!(
            node = %config.node_id,
            "the node file lists no [[principal]]: no client system can call this node"
        );
    }
    tracing::info!(node = %config.node_id, %addr, "node serving");
    let stop_on_signal = stop.clone();
    let grace = Duration::from_millis(config.delivery.shutdown_grace_ms);
    let server = tonic::transport::Server::builder()
        .add_service(broker_service)
        .add_service(peer_service)
        .add_service(audit_service)
        .serve_with_incoming_shutdown(tls_incoming(listener, acceptor, stop.clone()), async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls, draining");
            // Streams and background tasks end now; unary calls in flight
            // finish (their flush included) before the server returns.
            stop_on_signal.cancel();
        });
    let result = server
        .await
        .map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")));
    stop.cancel();
    if tokio::time::timeout(grace, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "background tasks did not stop in time"
        );
    }
    broker.store().flush().await?;
    broker.store().close();
    tracing::info!(node = %config.node_id, "node stopped");
    result
}

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections after their TLS handshake. Each handshake runs in
/// its own task under a deadline, so a slow or silent caller holds up no
/// one else; failed handshakes are logged and dropped.
fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            // Without TCP_NODELAY, small answers wait for the caller's
            // delayed ACK (tens of milliseconds per call).
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A node running in this process (for `up`, `bench` and tests).
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    pub broker: Broker,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl RunningNode {
    /// Opens the store and starts serving on `listener` in a task.
    pub fn start(config: NodeConfig, listener: TcpListener) -> Result<RunningNode> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Unavailable(format!("listener has no address: {e}")))?;
        let store = Store::open_with(&config.data_dir, config.audit.log)?;
        let broker = Broker::new(config, store);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(broker.clone(), listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningNode {
            addr,
            broker,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops the node and waits until its store is closed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.task)
            .await
            .map_err(|e| Error::Unavailable(format!("node task failed: {e}")))?;
        // Drop our handle last: sled releases its lock when every handle to
        // the database is gone.
        drop(self.broker);
        result
    }
}
