//! Signing keys, signatures over envelopes and receipts, the federation
//! keyring, TLS configuration and certificate generation.
//!
//! `signing` does no I/O, so an offline verifier needs only `model` and
//! this module's signing half.

pub mod certs;
pub mod merkle;
pub mod signing;
pub mod tls;

pub use signing::{Keyring, NodeSigner, OpenedEnvelope, PublicKeyEntry};
pub use tls::PeerIdentity;
