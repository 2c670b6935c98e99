//! `grpc.health.v1.Health`: SERVING while the node runs (its store open),
//! NOT_SERVING from the moment shutdown begins or the store latches on a
//! failed write or sync, for the server as a whole
//! (`""`) and for each cluebridge service.
//!
//! Hand-written over tonic-health's generated types because `Watch`
//! streams must end at shutdown: an open stream would otherwise keep the
//! server from draining.

use std::pin::Pin;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_server};

/// The services whose health can be asked for by name.
pub const SERVICES: [&str; 5] = [
    "",
    "cluebridge.v1.Broker",
    "cluebridge.v1.Peer",
    "cluebridge.v1.Admin",
    "cluebridge.v1.Audit",
];

/// Sets the node's health; held by the node.
#[derive(Debug)]
pub struct HealthSwitch(watch::Sender<bool>);

impl HealthSwitch {
    /// From now on every service answers NOT_SERVING.
    pub fn not_serving(&self) {
        self.0.send_replace(false);
    }
}

#[derive(Clone, Debug)]
pub struct HealthService {
    serving: watch::Receiver<bool>,
    stop: CancellationToken,
}

impl HealthService {
    /// A service answering SERVING until the switch is turned; its `Watch`
    /// streams end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> (HealthSwitch, health_server::HealthServer<Self>) {
        let (tx, rx) = watch::channel(true);
        (
            HealthSwitch(tx),
            health_server::HealthServer::new(HealthService { serving: rx, stop }),
        )
    }
}

fn known(service: &str) -> Result<(), Status> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown service {service:?}; this node serves {}",
            SERVICES[1..].join(", ")
        )))
    }
}

fn answer(serving: bool) -> HealthCheckResponse {
    HealthCheckResponse {
        status: if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        } as i32,
    }
}

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(answer(*self.serving.borrow())))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let mut serving = self.serving.clone();
        let stop = self.stop.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = *serving.borrow_and_update();
            if tx.send(Ok(answer(last))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = serving.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = stop.cancelled() => {
                        // The last word before the stream ends.
                        let now = *serving.borrow();
                        if now != last {
                            let _ = tx.send(Ok(answer(now))).await;
                        }
                        return;
                    }
                }
                let now = *serving.borrow_and_update();
                if now != last {
                    last = now;
                    if tx.send(Ok(answer(now))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(
    body: F,
) -> Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HealthCheckResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
