//! cluebridge: an inter-agency clue-transfer message broker.
//!
//! Code map:
//! - [`model`]: domain types, envelopes, receipts, route policy (pure);
//! - [`crypto`]: signing keys, signatures, TLS, certificate generation;
//! - [`config`]: node configuration and the federation trust list;
//! - [`file_modes`]: the modes a node's keys, configuration and data may have;
//! - [`store`]: the sled store, the only place that knows sled; its own files
//!   go through one I/O layer (`store::fs`) that tests swap for a twin;
//! - [`broker`]: the node's rules for submit, custody, leases, receipts;
//! - [`delivery`]: background tasks: forwarders, lease and TTL sweeps;
//! - [`audit`]: receipt bundles, offline verification of bundles and stores;
//! - [`api`]: the gRPC services and the peer link; protobuf ↔ domain, error → status;
//! - [`metrics`]: counters, histograms and the Prometheus `/metrics` listener;
//! - [`node`]: wires one node together and runs it until shutdown;
//! - [`transport`]: accepted connections: TLS handshakes, connection caps, idle deadlines;
//! - [`provision`]: keys and certificates from a federation's files;
//! - [`devfed`]: generates a development federation (used by `up`);
//! - [`client`]: a typed client used by the CLI, `bench` and tests;
//! - [`console`]: the operators' and auditors' web console, a client of
//!   the gRPC services like the CLI;
//! - [`cli`]: the command-line subcommands.

pub mod api;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod crypto;
pub mod delivery;
pub mod devfed;
pub mod error;
pub mod file_modes;
pub mod metrics;
pub mod model;
pub mod node;
pub mod provision;
pub mod store;
pub mod transport;

/// Generated protobuf and gRPC code for `proto/cluebridge/v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("cluebridge.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cluebridge_descriptor.bin"));
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Unix-ms instant as `YYYY-MM-DD hh:mm:ss.mmmZ` (UTC), for people.
pub fn format_time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
