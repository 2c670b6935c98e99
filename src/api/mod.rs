//! The gRPC services. The only place that converts between the services'
//! request/response messages and domain types, and errors to `Status`.

mod admin;
mod approval;
mod audit;
mod broker;
pub mod followups;
mod gate;
mod health;
mod oversize;
mod peer;
mod peer_link;
mod receiving;
mod session;

pub use admin::AdminService;
pub use audit::AuditService;
use audit::{checkpoint_from_wire, checkpoint_to_wire};
pub use broker::BrokerService;
pub use gate::GateLayer;
pub use health::{HealthService, HealthSwitch};
pub use oversize::OversizeLayer;
pub use peer::PeerService;
pub use peer_link::{PeerLink, Refusal};

use crate::config::NodeConfig;
use crate::crypto::tls::FederationCa;
use crate::crypto::{PeerIdentity, tls};
use crate::error::Error;
use crate::model::{Principal, Role};
use rustls::pki_types::CertificateDer;
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
            Error::OutOfRange(_) => Status::out_of_range(msg),
            Error::ResourceExhausted(_) => Status::resource_exhausted(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::Store(s) if s.latched() => {
                // The latch was logged once, when it happened, and health
                // and `cluebridge_store_failed` show it: a line per refused
                // call would flood the log.
                tracing::debug!(error = %msg, "refused: the store is latched");
                Status::unavailable(msg)
            }
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

/// The caller's identity as the gate verified it before the body was
/// read; handlers find it among the request's extensions (which only the
/// server sets, never the caller).
#[derive(Clone, Debug)]
pub(crate) struct Verified(pub(crate) PeerIdentity);

/// Who is calling: the identity in the caller's certificate, once it is
/// shown to come from the federation CA and to be valid now.
fn caller<T>(config: &NodeConfig, request: &Request<T>) -> Result<PeerIdentity, Status> {
    if let Some(Verified(identity)) = request.extensions().get::<Verified>() {
        return Ok(identity.clone());
    }
    certified(&config.federation.ca, request.peer_certs().as_deref())
}

/// Checks the leaf of the certificates the caller presented, if any.
fn certified(
    ca: &FederationCa,
    certs: Option<&Vec<CertificateDer<'static>>>,
) -> Result<PeerIdentity, Status> {
    let no_cert = || {
        Status::unauthenticated(
            "no client certificate: connect with mTLS and a certificate from the federation CA",
        )
    };
    let leaf = certs.and_then(|c| c.first()).ok_or_else(no_cert)?;
    Ok(tls::verify_client(ca, leaf.as_ref(), crate::now_ms())?)
}

/// The calling principal, if it is a client of this node holding `role`.
/// Refuses node certificates, other nodes' clients, unlisted clients and
/// missing roles, each with a message naming who and what.
pub(crate) fn authorize<T>(
    config: &NodeConfig,
    request: &Request<T>,
    role: Role,
) -> Result<Principal, Status> {
    let principal = principal_of(config, caller(config, request)?)?;
    require(principal, role)
}

/// [`authorize`] for a call any of `roles` may make: the caller's
/// certificate is read once.
pub(crate) fn authorize_any<T>(
    config: &NodeConfig,
    request: &Request<T>,
    roles: &[Role],
    what: &str,
) -> Result<Principal, Status> {
    let principal = principal_of(config, caller(config, request)?)?;
    if roles.iter().any(|r| principal.has(*r)) {
        return Ok(principal.clone());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "{what} are for principals with one of the roles {}; principal {} has none",
        names.join(", "),
        principal.name
    )))
}

/// A page size asked for: 0 means 100, more than 1000 is refused.
pub(super) fn page_size(asked: u32, name: &str) -> Result<usize, Status> {
    const DEFAULT: usize = 100;
    const MAX: usize = 1000;
    match asked as usize {
        0 => Ok(DEFAULT),
        n if n > MAX => Err(Status::invalid_argument(format!(
            "{name} {n} is over the limit of {MAX}"
        ))),
        n => Ok(n),
    }
}

/// A page token this node gave as hex (an index key of at most `max`
/// bytes); empty: from the start.
pub(super) fn hex_token(token: &str, max: usize) -> Result<Option<Vec<u8>>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token)
        .ok()
        .filter(|k| k.len() <= max)
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("page_token is not one this node gave"))
}

/// The principal of this node that `identity` names, if the node file
/// lists it.
fn principal_of(config: &NodeConfig, identity: PeerIdentity) -> Result<&Principal, Status> {
    let node = &config.node_id;
    match identity {
        PeerIdentity::Client { node: of, name } if &of == node => {
            config.principals.get(&name).ok_or_else(|| {
                Status::permission_denied(format!(
                    "client {name} is not a principal of node {node:?}: it is not listed in the node file"
                ))
            })
        }
        PeerIdentity::Client { node: of, name } => Err(Status::permission_denied(format!(
            "client {name} is a principal of node {of:?}; this is node {node:?}"
        ))),
        PeerIdentity::Node(id) => Err(Status::permission_denied(format!(
            "node {id} presented a node certificate; this service is for client systems"
        ))),
    }
}

/// The principal, if it holds `role`.
fn require(principal: &Principal, role: Role) -> Result<Principal, Status> {
    if !principal.has(role) {
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "principal {} lacks the {role} role needed for this call (it has: {})",
            principal.name,
            roles.join(", ")
        )));
    }
    Ok(principal.clone())
}

/// The calling node, if `identity` is another node of the federation.
fn peer_node(config: &NodeConfig, identity: PeerIdentity) -> Result<String, Status> {
    match identity {
        PeerIdentity::Node(id) => {
            if id == config.node_id {
                return Err(Status::permission_denied("a node cannot deliver to itself"));
            }
            if config.federation.node(&id).is_none() {
                return Err(Status::permission_denied(format!(
                    "node {id:?} is not in this node's federation trust list"
                )));
            }
            Ok(id)
        }
        other => Err(Status::permission_denied(format!(
            "the Peer service is for federation nodes; {other} presented a client certificate"
        ))),
    }
}

fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}
