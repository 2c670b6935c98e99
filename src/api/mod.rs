//! The gRPC services. The only place that converts between the services'
//! request/response messages and domain types, and errors to `Status`.

mod broker;
mod peer;

pub use broker::BrokerService;
pub use peer::PeerService;

use crate::crypto::{PeerIdentity, tls};
use crate::error::Error;
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

/// Who is calling, from the verified client certificate.
fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: connect with mTLS and a certificate from the federation CA",
        )
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: connect with mTLS and a certificate from the federation CA",
        )
    })?;
    Ok(tls::identity_of(leaf.as_ref())?)
}

fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}
