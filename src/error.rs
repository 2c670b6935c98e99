//! The library's error type: every refusal and failure, with the context a
//! person needs to act on it. `api/` maps it to a gRPC status in one place.

/// A refusal or failure of a node operation.
///
/// The variants follow the gRPC status codes that callers see, so that the
/// decision "what kind of refusal is this" is made where the rule lives, not
/// where the error is converted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    /// A position (a feed cursor) outside what the node keeps.
    #[error("{0}")]
    OutOfRange(String),
    /// The store failed; the operation changed nothing.
    #[error("store failure: {0}")]
    Store(#[source] crate::store::StoreError),
    /// A stored record could not be read back: a bug or an edited store.
    #[error("corrupt store record {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// The gRPC status code number of this error, as carried in per-item
    /// refusals of `Peer` batches.
    pub fn code_number(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => 3,
            Error::NotFound(_) => 5,
            Error::AlreadyExists(_) => 6,
            Error::PermissionDenied(_) => 7,
            Error::ResourceExhausted(_) => 8,
            Error::FailedPrecondition(_) => 9,
            Error::OutOfRange(_) => 11,
            Error::Unavailable(_) | Error::Store(_) => 14,
            Error::Corrupt { .. } => 13,
            Error::Unauthenticated(_) => 16,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
