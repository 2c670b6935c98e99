//! The gRPC services. The only place that converts between the services'
//! request/response messages and domain types, and errors to `Status`.

mod admin;
mod audit;
mod broker;
mod health;
mod peer;
mod peer_link;

pub use admin::AdminService;
pub use audit::AuditService;
use audit::{checkpoint_from_wire, checkpoint_to_wire};
pub use broker::BrokerService;
pub use health::{HealthService, HealthSwitch};
pub use peer::PeerService;
pub use peer_link::{PeerLink, Refusal};

use crate::config::NodeConfig;
use crate::crypto::tls::FederationCa;
use crate::crypto::{PeerIdentity, tls};
use crate::error::Error;
use crate::model::{Principal, Role};
use tonic::{Request, Status};

/// The one conversion from library errors to gRPC statuses.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::ResourceExhausted(_) => Status::resource_exhausted(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::Unavailable(_) | Error::Store(_) => {
                tracing::error!(error = %msg, "unavailable");
                Status::unavailable(msg)
            }
            Error::Corrupt { .. } => {
                tracing::error!(error = %msg, "corrupt store record");
                Status::internal(msg)
            }
        }
    }
}

/// Who is calling: the identity in the caller's certificate, once it is
/// shown to come from the federation CA and to be valid now.
fn caller<T>(config: &NodeConfig, request: &Request<T>) -> Result<PeerIdentity, Status> {
    certified(&config.federation.ca, request)
}

fn certified<T>(ca: &FederationCa, request: &Request<T>) -> Result<PeerIdentity, Status> {
    let no_cert = || {
        Status::unauthenticated(
            "no client certificate: connect with mTLS and a certificate from the federation CA",
        )
    };
    let certs = request.peer_certs().ok_or_else(no_cert)?;
    let leaf = certs.first().ok_or_else(no_cert)?;
    Ok(tls::verify_client(ca, leaf.as_ref(), crate::now_ms())?)
}

/// An interceptor for services without roles (health, reflection): any
/// node or principal with a valid federation certificate may call them.
pub fn federation_members_only(
    ca: FederationCa,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| {
        certified(&ca, &request)?;
        Ok(request)
    }
}

/// The calling principal, if it is a client of this node holding `role`.
/// Refuses node certificates, other nodes' clients, unlisted clients and
/// missing roles, each with a message naming who and what.
pub(crate) fn authorize<T>(
    config: &NodeConfig,
    request: &Request<T>,
    role: Role,
) -> Result<Principal, Status> {
    let node = &config.node_id;
    match caller(config, request)? {
        PeerIdentity::Client { node: of, name } if &of == node => {
            let principal = config.principals.get(&name).ok_or_else(|| {
                Status::permission_denied(format!(
                    "client {name} is not a principal of node {node:?}: it is not listed in the node file"
                ))
            })?;
            if !principal.has(role) {
                let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
                return Err(Status::permission_denied(format!(
                    "principal {name} lacks the {role} role needed for this call (it has: {})",
                    roles.join(", ")
                )));
            }
            Ok(principal.clone())
        }
        PeerIdentity::Client { node: of, name } => Err(Status::permission_denied(format!(
            "client {name} is a principal of node {of:?}; this is node {node:?}"
        ))),
        PeerIdentity::Node(id) => Err(Status::permission_denied(format!(
            "node {id} presented a node certificate; this service is for client systems"
        ))),
    }
}

fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}
