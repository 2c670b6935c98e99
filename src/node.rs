//! Wires one node together — store, broker, background tasks, gRPC server
//! with mTLS — and runs it until shutdown, then drains under a deadline.

use crate::api::{self, AdminService, AuditService, BrokerService, HealthService, PeerService};
use crate::broker::Broker;
use crate::config::NodeConfig;
use crate::crypto::tls;
use crate::delivery;
use crate::error::{Error, Result};
use crate::pb;
use crate::store::Store;
use crate::transport;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;

/// Largest answer a node sends (a `Receive` delivery, a receipt bundle with
/// its payload). Requests have limits of their own, derived from
/// `[limits]` (`config::MessageLimits`).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Runs a node on `listener` until `shutdown` completes, then stops taking
/// calls, ends streams and background tasks, and flushes the store.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::Unavailable(format!("cannot listen for metrics on {addr}: {e}"))
        })?),
        None => None,
    };
    let store = open_store(&config, std::sync::Arc::new(crate::store::fs::RealFs))?;
    let broker = Broker::new(config, store)?;
    serve(broker, listener, metrics, shutdown).await
}

/// Opens the node's store in its data directory, made private first (0700,
/// created or tightened) so that no other user reads the journal's
/// envelopes.
fn open_store(config: &NodeConfig, fs: std::sync::Arc<dyn crate::store::fs::Fs>) -> Result<Store> {
    crate::file_modes::prepare_data_dir(&config.data_dir)
        .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
    let options = crate::store::StoreOptions {
        audit_log: config.audit.log,
        journal_file_bytes: config.store.journal_file_bytes,
        snapshot_journal_bytes: config.store.snapshot_journal_bytes,
        archive_after_secs: config.store.archive_after_secs,
    };
    Store::open_on(fs, &config.data_dir, options)
}

/// Binds the metrics listener from inside a runtime but outside `async`.
fn bind_metrics(config: &NodeConfig) -> Result<Option<TcpListener>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let fail =
        |e: std::io::Error| Error::Unavailable(format!("cannot listen for metrics on {addr}: {e}"));
    let std_listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    std_listener.set_nonblocking(true).map_err(fail)?;
    Ok(Some(TcpListener::from_std(std_listener).map_err(fail)?))
}

async fn serve(
    broker: Broker,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = broker.config().clone();
    let stop = CancellationToken::new();
    let mut tasks = delivery::spawn(&broker, &stop)?;
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        let b = broker.clone();
        tasks.push(tokio::spawn(crate::metrics::serve(
            l,
            move || b.render_metrics(),
            stop.clone(),
        )));
    }
    // Health: SERVING for the whole server and each service while the store
    // is open, NOT_SERVING from the moment shutdown begins.
    let (health, health_service) = HealthService::new(stop.clone());
    let health = std::sync::Arc::new(health);
    tasks.push(tokio::spawn(not_serving_when_latched(
        broker.store().watch_failure(),
        health.clone(),
        stop.clone(),
    )));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::invalid(format!("reflection descriptors: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::invalid(format!("reflection descriptors: {e}")))?;
    let admin_service = pb::admin_server::AdminServer::new(AdminService::new(broker.clone()));
    let acceptor = tls::server_acceptor(
        &config.tls.ca_pem,
        &config.tls.cert_pem,
        &config.tls.key_pem,
    )?;
    let sizes = config.limits.message_limits();
    let broker_service =
        pb::broker_server::BrokerServer::new(BrokerService::new(broker.clone(), stop.clone()))
            .max_decoding_message_size(sizes.client)
            .max_encoding_message_size(MAX_ANSWER_BYTES);
    let peer_service = pb::peer_server::PeerServer::new(PeerService::new(broker.clone()))
        .max_decoding_message_size(sizes.peer)
        .max_encoding_message_size(MAX_ANSWER_BYTES);
    let audit_service = pb::audit_server::AuditServer::new(AuditService::new(broker.clone()))
        .max_decoding_message_size(sizes.client)
        .max_encoding_message_size(MAX_ANSWER_BYTES);
    let admin_service = admin_service.max_decoding_message_size(sizes.client);
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
    // When shutdown began: the grace period counts from there.
    let began = std::sync::Arc::new(std::sync::OnceLock::new());
    let began_on_signal = began.clone();
    let limits = &config.limits;
    transport::check_descriptor_limit(limits.max_connections);
    let secs = Duration::from_secs;
    let incoming = transport::incoming(listener, acceptor, limits.into(), stop.clone());
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(secs(limits.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(secs(limits.keepalive_timeout_secs)))
        // Outermost: who may call what, before the body and before any wait.
        .layer(api::GateLayer::new(config.clone()))
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_calls,
        ))
        .layer(api::OversizeLayer)
        .add_service(broker_service)
        .add_service(peer_service)
        .add_service(admin_service)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(audit_service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = began_on_signal.set(Instant::now());
            tracing::info!("shutting down: no new calls, draining");
            health.not_serving();
            // Streams and background tasks end now; unary calls in flight
            // finish (their flush included) before the server returns.
            stop_on_signal.cancel();
        });
    // The drain has the grace period; a call still open then (a client
    // holding a reflection stream, say) is cut off by the process exit.
    let result = tokio::select! {
        r = server => r.map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}"))),
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "calls still open at the end of the grace period; stopping without them"
            );
            Ok(())
        }
    };
    stop.cancel();
    let left = grace.saturating_sub(began.get().map_or(Duration::ZERO, |t| t.elapsed()));
    if tokio::time::timeout(left, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "background tasks did not stop in time"
        );
    }
    // The store closes whatever the last flush says (a latched store
    // refuses it): a restart must find it unlocked, and replays the log.
    let flushed = broker.store().flush().await;
    broker.store().close();
    tracing::info!(node = %config.node_id, "node stopped");
    flushed?;
    result
}

/// Turns health to NOT_SERVING once the store latches on a disk failure:
/// the node refuses every change until it is restarted, and probes and
/// load balancers must see it.
async fn not_serving_when_latched(
    mut failure: tokio::sync::watch::Receiver<Option<String>>,
    health: std::sync::Arc<api::HealthSwitch>,
    stop: CancellationToken,
) {
    tokio::select! {
        latched = failure.wait_for(Option::is_some) => {
            if latched.is_ok() {
                health.not_serving();
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A node running in this process (for `up`, `bench` and tests).
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if the node file asks for it.
    pub metrics_addr: Option<SocketAddr>,
    pub broker: Broker,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl RunningNode {
    /// Opens the store and starts serving on `listener` in a task.
    pub fn start(config: NodeConfig, listener: TcpListener) -> Result<RunningNode> {
        Self::start_on(
            config,
            listener,
            std::sync::Arc::new(crate::store::fs::RealFs),
        )
    }

    /// [`RunningNode::start`] with the store's log and envelope segments on
    /// `fs`: tests pass a twin that can fail a sync or fill up.
    pub fn start_on(
        config: NodeConfig,
        listener: TcpListener,
        fs: std::sync::Arc<dyn crate::store::fs::Fs>,
    ) -> Result<RunningNode> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Unavailable(format!("listener has no address: {e}")))?;
        let metrics = bind_metrics(&config)?;
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let store = open_store(&config, fs)?;
        let broker = Broker::new(config, store)?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(broker.clone(), listener, metrics, async move {
            let _ = rx.await;
        }));
        Ok(RunningNode {
            addr,
            metrics_addr,
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
