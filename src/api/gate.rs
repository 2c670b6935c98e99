//! The gate in front of every service: decides from the caller's TLS
//! certificate, before a byte of the request body is read, whether this
//! caller may call this service at all.
//!
//! Without it, tonic would decode a whole request (up to the service's size
//! limit) before a handler could look at the certificate, so a stranger
//! could make the node buffer megabytes per call. The gate refuses
//! strangers (`UNAUTHENTICATED`), other nodes' clients, unlisted clients,
//! node certificates on client services, client certificates on `Peer`, and
//! principals lacking the role a method needs (`PERMISSION_DENIED`). What it
//! admits carries its verified identity to the handlers, which check roles
//! again as a second line.

use super::{Verified, certified, peer_node, principal_of, require};
use crate::config::NodeConfig;
use crate::model::Role;
use crate::pb;
use futures::future::{Either, Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

/// Puts the gate in front of a service.
#[derive(Clone, Debug)]
pub struct GateLayer {
    config: Arc<NodeConfig>,
}

impl GateLayer {
    pub fn new(config: NodeConfig) -> Self {
        GateLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    config: Arc<NodeConfig>,
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, Oneshot<S, http::Request<Body>>>;

    /// Always ready: a refused caller must not wait for the capacity (a
    /// concurrency permit, say) that an admitted call needs; an admitted
    /// call waits for it inside its future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match admit(&self.config, &request) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                // The clone in `self` stays unused until its next call; the
                // one that was polled (never, here) goes with the request.
                let inner = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, inner);
                Either::Right(inner.oneshot(request))
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), code = ?status.code(), reason = status.message(), "refused at the gate");
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

/// Whether the caller of `request` may call its service, from the request
/// line and the TLS connection alone.
fn admit(config: &NodeConfig, request: &http::Request<Body>) -> Result<Verified, Status> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs());
    let identity = certified(&config.federation.ca, certs.as_deref())?;
    let (service, method) = split_path(request.uri().path());
    if service == pb::peer_server::SERVICE_NAME {
        peer_node(config, identity.clone())?;
    } else if let Some(role) = client_role(service, method) {
        let principal = principal_of(config, identity.clone())?;
        if let Some(role) = role {
            require(principal, role)?;
        }
    }
    // Health, reflection and unknown paths: any federation member.
    Ok(Verified(identity))
}

/// `/package.Service/Method` as (`package.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// For the client services: `Some(role)` a method needs (`Some(None)` for
/// a method the gate does not know, which tonic answers as unimplemented);
/// `None` for any other service.
fn client_role(service: &str, method: &str) -> Option<Option<Role>> {
    if service == pb::admin_server::SERVICE_NAME {
        return Some(Some(Role::Operate));
    }
    if service == pb::audit_server::SERVICE_NAME {
        return Some(Some(Role::Audit));
    }
    if service != pb::broker_server::SERVICE_NAME {
        return None;
    }
    Some(match method {
        "Submit" | "GetStatus" | "WatchReceipts" => Some(Role::Submit),
        "Receive" | "Ack" | "Reject" | "Release" | "ExtendLease" => Some(Role::Receive),
        "ListPending" | "Approve" | "Decline" => Some(Role::Approve),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/cluebridge.v1.Broker/Submit"),
            ("cluebridge.v1.Broker", "Submit")
        );
        assert_eq!(split_path("/nothing"), ("nothing", ""));
    }

    #[test]
    fn every_broker_method_needs_the_role_its_handler_checks() {
        let role = |m| client_role(pb::broker_server::SERVICE_NAME, m);
        assert_eq!(role("Submit"), Some(Some(Role::Submit)));
        assert_eq!(role("WatchReceipts"), Some(Some(Role::Submit)));
        assert_eq!(role("Ack"), Some(Some(Role::Receive)));
        assert_eq!(role("Approve"), Some(Some(Role::Approve)));
        assert_eq!(role("Nope"), Some(None));
        assert_eq!(client_role("grpc.health.v1.Health", "Check"), None);
        assert_eq!(
            client_role(pb::admin_server::SERVICE_NAME, "ListQueues"),
            Some(Some(Role::Operate))
        );
    }
}
