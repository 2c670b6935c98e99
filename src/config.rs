//! Node configuration and the federation trust list, validated on load.
//!
//! Every mistake is reported with the file and the field it is in. Relative
//! paths in a file are resolved against the directory of that file.

use crate::crypto::tls::FederationCa;
use crate::crypto::{Keyring, NodeSigner, PublicKeyEntry};
use crate::file_modes::{self, FileClass};
use crate::format_time;
use crate::model::{AgencyKind, MessageKind, Principal, Role, Route, RoutePolicy, validate_id};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A configuration mistake, naming the file and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

fn err(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// Refuses a file a node reads whose mode is open to other users (see
/// [`file_modes`]); `field` is the node file's field that names it.
fn check_mode(
    node_file: &Path,
    field: &str,
    file: &Path,
    class: FileClass,
) -> Result<(), ConfigError> {
    file_modes::check(file, class).map_err(|e| match field {
        "" => err(node_file, e.to_string()),
        _ => err(node_file, format!("{field}: {e}")),
    })
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| err(file, format!("cannot read: {e}")))
}

/// `p` as written in the file `base`: relative paths are taken from the
/// directory of that file.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

// ---------------------------------------------------------------- files

/// `federation.toml` as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFile {
    /// A name for the federation (shown in certificates and logs).
    pub name: String,
    /// The federation CA certificate (PEM) that signs every TLS certificate.
    pub ca_cert: PathBuf,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntryFile>,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntryFile {
    pub id: String,
    pub kind: String,
    /// `https://host:port` where the node's gRPC service listens.
    pub endpoint: String,
    #[serde(rename = "key")]
    pub keys: Vec<KeyFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// RFC 3339 time from which the key may sign (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339 time after which the key may no longer sign (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub from: String,
    pub to: String,
    pub kinds: Vec<String>,
    /// Messages on this route must be answered within this many days of
    /// their creation: their `reply_by_ms` defaults to it, and a submitter
    /// may only set an earlier one (1 to 3650).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_within_days: Option<u32>,
    /// Whether messages on this route expect feedback (a follow-up is
    /// kept for each, and feedback to a message that expects none is
    /// refused). Defaults to true when `reply_within_days` is set, else
    /// false; a message submitted with a `reply_by_ms` expects feedback
    /// whatever the route says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expects_feedback: Option<bool>,
    /// Whether a submit on this route waits, unsigned and unsent, until a
    /// principal with the `approve` role (not the submitter) approves it
    /// (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_approval: Option<bool>,
}

/// A node file (`config/<agency>.toml`) as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This node's id in the trust list.
    pub node_id: String,
    /// Path of the federation trust list.
    pub federation: PathBuf,
    /// Address the gRPC service binds, e.g. `0.0.0.0:7401`.
    pub listen: String,
    /// Address of the Prometheus `/metrics` HTTP listener, e.g.
    /// `127.0.0.1:9401`; no metrics listener when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Directory of the node's sled database.
    pub data_dir: PathBuf,
    /// File holding the base64 Ed25519 signing key seed (mode 0600).
    pub signing_key: PathBuf,
    /// Id of that key in the trust list.
    pub signing_key_id: String,
    /// The node's TLS certificate and private key (PEM).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    #[serde(default)]
    pub delivery: DeliverySettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub store: StoreSettings,
    /// The agency's client systems and what each may do.
    #[serde(rename = "principal", default)]
    pub principals: Vec<PrincipalFile>,
}

/// One `[[principal]]` of a node file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalFile {
    /// The client name in its certificate
    /// (`cluebridge://node/<node-id>/client/<name>`).
    pub name: String,
    /// Any of `submit`, `receive`, `operate`, `audit`, `approve`.
    pub roles: Vec<String>,
    /// For `receive`: the message kinds this principal is given (all when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_kinds: Option<Vec<String>>,
}

/// How and when messages move. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Delivery attempts to receivers before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Lease length when the receiver does not ask for one.
    pub default_lease_secs: u32,
    /// Longest lease a receiver may ask for or extend to.
    pub max_lease_secs: u32,
    /// Delay before a lapsed lease's message is offered again; doubles with
    /// every attempt, capped at 64 times this.
    pub redelivery_backoff_ms: u64,
    /// Envelopes or receipts per `Peer` call.
    pub batch_size: usize,
    /// First retry delay after a failed call to a peer; doubles up to the cap.
    pub retry_initial_ms: u64,
    /// The cap: an unreachable peer is tried again at least this often. A
    /// peer that starts announces itself (`Peer.Announce`) and is retried at
    /// once, so the cap only bounds the wait when that call is lost.
    pub retry_max_ms: u64,
    /// Deadline of every call to a peer.
    pub peer_timeout_ms: u64,
    /// Time to live of a message whose submitter gives none.
    pub default_ttl_secs: u64,
    /// Longest time to live a submitter may ask for.
    pub max_ttl_secs: u64,
    /// How long shutdown waits for in-flight work before giving up.
    pub shutdown_grace_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_deliveries: 5,
            default_lease_secs: 30,
            max_lease_secs: 3600,
            redelivery_backoff_ms: 1000,
            batch_size: 256,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
            peer_timeout_ms: 10_000,
            default_ttl_secs: 7 * 24 * 3600,
            max_ttl_secs: 90 * 24 * 3600,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl DeliverySettings {
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }
}

/// Limits on what callers may send, and on the connections and calls a
/// node holds open at once. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_subject_len: usize,
    pub max_case_reference_len: usize,
    pub max_content_type_len: usize,
    pub max_reason_len: usize,
    /// Messages leased to one `Receive` stream at once.
    pub max_outstanding_per_stream: u32,
    /// Longest delay a receiver may ask for on `Release`.
    pub max_release_delay_ms: u64,
    /// How far in the future a peer's `created_at` may be.
    pub max_clock_skew_ms: u64,
    /// How long after a signing key's `not_after` this node still takes
    /// envelopes and receipts signed with it (they may have waited in an
    /// outbox during an outage). Beyond it, a retired key's signature is
    /// refused whatever time the object claims.
    pub retired_key_grace_ms: u64,
    /// Envelopes or receipts accepted in one `Peer` call.
    pub max_peer_batch: usize,
    /// Bytes of envelopes in one `Peer.Deliver` call: a forwarder fills its
    /// batches up to this, and a node refuses a larger call before reading
    /// it. Keep it the same on every node of the federation.
    pub max_peer_batch_bytes: usize,
    /// Submits per second one principal may make (sustained; bursts of up
    /// to one second's worth pass). 0 turns the limit off.
    pub submit_rate_per_sec: u32,
    /// Connections open at once, TLS handshakes included; more are closed
    /// as soon as they are accepted. Each holds a file descriptor, so keep
    /// it well below the process's limit (`ulimit -n`).
    pub max_connections: usize,
    /// Of those, connections that presented no client certificate: they
    /// can only be told `UNAUTHENTICATED`, so a few suffice.
    pub max_anonymous_connections: usize,
    /// A connection without a client certificate is closed this long after
    /// its handshake, whatever it does.
    pub anonymous_connection_secs: u64,
    /// A connection from which nothing arrives for this long is closed.
    /// The node's keepalive pings make a live client answer well before.
    pub idle_connection_secs: u64,
    /// The node pings each connection after this long without a frame from
    /// it (HTTP/2 keepalive)…
    pub keepalive_interval_secs: u64,
    /// …and closes it if the ping is not answered within this long.
    pub keepalive_timeout_secs: u64,
    /// Calls open at once on one connection (HTTP/2 streams), long-lived
    /// `Receive` and `WatchReceipts` streams included.
    pub max_streams_per_connection: u32,
    /// Calls the node handles at once over all connections; more wait
    /// their turn. A streaming call counts until its stream is opened.
    pub max_concurrent_calls: usize,
    /// Catalogue entries one `ListMessages` call examines at most: a
    /// filter that matches rarely answers a short (even empty) page with a
    /// page token where its walk stopped, rather than walking every
    /// message in one call.
    pub max_list_scan: usize,
    /// How long the receipt feed that `WatchReceipts` follows keeps a
    /// receipt; a client whose cursor is older is told so (OUT_OF_RANGE).
    /// The receipts themselves stay with their messages (`GetStatus`).
    pub receipt_feed_retention_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_subject_len: 256,
            max_case_reference_len: 128,
            max_content_type_len: 128,
            max_reason_len: 1024,
            max_outstanding_per_stream: 1024,
            max_release_delay_ms: 3_600_000,
            max_clock_skew_ms: 5 * 60 * 1000,
            retired_key_grace_ms: 3 * 24 * 3600 * 1000,
            max_peer_batch: 1024,
            max_peer_batch_bytes: 16 * 1024 * 1024,
            submit_rate_per_sec: 2000,
            max_connections: 512,
            max_anonymous_connections: 32,
            anonymous_connection_secs: 10,
            idle_connection_secs: 120,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            max_streams_per_connection: 256,
            max_concurrent_calls: 512,
            max_list_scan: 100_000,
            receipt_feed_retention_secs: 30 * 24 * 3600,
        }
    }
}

/// The largest request each service decodes, derived from [`Limits`] so
/// that no caller can make a node buffer more than a legitimate call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// `Broker`, `Admin` and `Audit`: one payload and its header fields.
    pub client: usize,
    /// `Peer`: a batch of envelopes up to `max_peer_batch_bytes` (or one
    /// envelope of the largest size).
    pub peer: usize,
}

impl Limits {
    /// Bytes a message carries besides its payload, at most: the ids,
    /// digests, signature, times and protobuf framing (4 KiB), plus the
    /// subject, case reference, content type and reason at four bytes a
    /// character.
    pub fn envelope_overhead_bytes(&self) -> usize {
        const FIXED: usize = 4 * 1024;
        let text = self.max_subject_len
            + self.max_case_reference_len
            + self.max_content_type_len
            + self.max_reason_len;
        FIXED.saturating_add(text.saturating_mul(4))
    }

    /// The request size limits of the services: the one place they are
    /// computed.
    pub fn message_limits(&self) -> MessageLimits {
        let one = self
            .max_payload_bytes
            .saturating_add(self.envelope_overhead_bytes());
        MessageLimits {
            client: one,
            // Framing costs a few bytes per envelope; a single envelope
            // larger than the byte cap still travels alone.
            peer: self
                .max_peer_batch_bytes
                .max(one)
                .saturating_add(self.max_peer_batch.saturating_mul(16)),
        }
    }

    /// Checks the limits against each other; names the field at fault.
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_peer_batch", self.max_peer_batch as u64),
            ("max_peer_batch_bytes", self.max_peer_batch_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("anonymous_connection_secs", self.anonymous_connection_secs),
            ("keepalive_interval_secs", self.keepalive_interval_secs),
            ("keepalive_timeout_secs", self.keepalive_timeout_secs),
            (
                "max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
            ("max_concurrent_calls", self.max_concurrent_calls as u64),
            ("max_list_scan", self.max_list_scan as u64),
            (
                "receipt_feed_retention_secs",
                self.receipt_feed_retention_secs,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name}: must be at least 1"));
        }
        if self.max_anonymous_connections > self.max_connections {
            return Err(
                "limits.max_anonymous_connections: must not exceed limits.max_connections".into(),
            );
        }
        if self.idle_connection_secs <= self.keepalive_interval_secs + self.keepalive_timeout_secs {
            return Err(format!(
                "limits.idle_connection_secs: must exceed keepalive_interval_secs + \
                 keepalive_timeout_secs ({} s), or live clients would be cut off between pings",
                self.keepalive_interval_secs + self.keepalive_timeout_secs
            ));
        }
        Ok(())
    }
}

/// The audit log and its checkpoints. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Append every state change to the hash-chained audit log. Turning it
    /// off voids the tamper-evidence guarantee; it exists only to measure
    /// what the log costs.
    pub log: bool,
    /// Sign a checkpoint of the chain head after this many new entries…
    pub checkpoint_every_entries: u64,
    /// …or after this many seconds with at least one new entry.
    pub checkpoint_interval_secs: u64,
    /// Whether `GetBundle` may include the payload when an auditor asks.
    pub allow_payload_export: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            log: true,
            checkpoint_every_entries: 1000,
            checkpoint_interval_secs: 60,
            allow_payload_export: false,
        }
    }
}

/// The store's journal. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Size at which a journal file is closed, a new one started and the
    /// index checkpointed: bounds the journal replayed at start and the
    /// data each checkpoint writes.
    pub journal_file_bytes: u64,
    /// Journal bytes written between two snapshots of the live state (at
    /// least: also twice the last snapshot's size): bounds the journal
    /// replayed at start.
    pub snapshot_journal_bytes: u64,
    /// Age in seconds (of their newest audit entry) past which journal
    /// files that a checkpoint signed by this node covers, and the
    /// envelope segments they name, are moved to `data_dir/archive/`;
    /// 0 keeps everything in place.
    pub archive_after_secs: u64,
}

impl StoreSettings {
    /// The smallest and largest `journal_file_bytes` taken.
    pub const JOURNAL_FILE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(1 << 30);
    /// The smallest and largest `snapshot_journal_bytes` taken.
    pub const SNAPSHOT_JOURNAL_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(1 << 40);
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            journal_file_bytes: crate::store::JOURNAL_FILE_BYTES,
            snapshot_journal_bytes: crate::store::SNAPSHOT_JOURNAL_BYTES,
            archive_after_secs: 0,
        }
    }
}

// ---------------------------------------------------------------- loaded

/// One node of the federation as the trust list describes it.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub id: String,
    pub kind: AgencyKind,
    pub endpoint: String,
    /// Host and port parsed from the endpoint.
    pub host: String,
}

/// The validated trust list.
#[derive(Clone, Debug)]
pub struct Federation {
    pub name: String,
    /// Where the CA certificate was read from.
    pub ca_path: PathBuf,
    pub ca_pem: String,
    /// The CA, parsed for checking callers' certificates.
    pub ca: FederationCa,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub policy: RoutePolicy,
    pub keyring: Keyring,
}

impl Federation {
    pub fn load(path: &Path) -> Result<Federation, ConfigError> {
        let text = read(path)?;
        let file: FederationFile =
            toml::from_str(&text).map_err(|e| err(path, format!("invalid: {e}")))?;
        Self::from_file(path, file)
    }

    pub fn from_file(path: &Path, file: FederationFile) -> Result<Federation, ConfigError> {
        let ca_path = resolve(path, &file.ca_cert);
        let ca_pem = read(&ca_path).map_err(|e| err(path, format!("ca_cert: {e}")))?;
        if !ca_pem.contains("BEGIN CERTIFICATE") {
            return Err(err(
                path,
                format!("ca_cert: {} holds no PEM certificate", ca_path.display()),
            ));
        }
        let ca = FederationCa::from_pem(&ca_pem)
            .map_err(|e| err(path, format!("ca_cert: {}: {e}", ca_path.display())))?;
        let mut nodes = BTreeMap::new();
        let mut keyring = Keyring::default();
        if file.nodes.is_empty() {
            return Err(err(
                path,
                "no [[node]] entries: a federation needs at least two nodes",
            ));
        }
        for (i, n) in file.nodes.iter().enumerate() {
            let at = format!("node[{i}]");
            validate_id("id", &n.id).map_err(|e| err(path, format!("{at}.id: {e}")))?;
            let kind: AgencyKind = n
                .kind
                .parse()
                .map_err(|e| err(path, format!("{at}.kind: {e}")))?;
            let host = parse_endpoint(&n.endpoint)
                .map_err(|e| err(path, format!("{at}.endpoint: {e}")))?;
            if n.keys.is_empty() {
                return Err(err(
                    path,
                    format!("{at}.key: node {} lists no signing key", n.id),
                ));
            }
            for (j, k) in n.keys.iter().enumerate() {
                let kat = format!("{at}.key[{j}]");
                validate_id("id", &k.id).map_err(|e| err(path, format!("{kat}.id: {e}")))?;
                let mut entry = PublicKeyEntry::parse(&k.id, &k.public_key)
                    .map_err(|e| err(path, format!("{kat}.public_key: {e}")))?;
                entry.not_before_ms = parse_time(k.not_before.as_deref())
                    .map_err(|e| err(path, format!("{kat}.not_before: {e}")))?;
                entry.not_after_ms = parse_time(k.not_after.as_deref())
                    .map_err(|e| err(path, format!("{kat}.not_after: {e}")))?;
                keyring.insert(&n.id, entry);
            }
            let entry = NodeEntry {
                id: n.id.clone(),
                kind,
                endpoint: n.endpoint.clone(),
                host,
            };
            if nodes.insert(n.id.clone(), entry).is_some() {
                return Err(err(
                    path,
                    format!("{at}.id: node id {:?} is listed twice", n.id),
                ));
            }
        }
        // Every node's certificate carries a DNS name made from its id, the
        // server name clients and peers connect to.
        crate::crypto::tls::check_node_dns_names(file.nodes.iter().map(|n| n.id.as_str()))
            .map_err(|e| err(path, format!("node: {e}")))?;
        let mut routes = Vec::new();
        let mut windows = Vec::new();
        let mut feedback = Vec::new();
        let mut approvals = Vec::new();
        for (i, r) in file.routes.iter().enumerate() {
            let at = format!("route[{i}]");
            let from: AgencyKind = r
                .from
                .parse()
                .map_err(|e| err(path, format!("{at}.from: {e}")))?;
            let to: AgencyKind =
                r.to.parse()
                    .map_err(|e| err(path, format!("{at}.to: {e}")))?;
            for k in &r.kinds {
                let kind: MessageKind = k
                    .parse()
                    .map_err(|e| err(path, format!("{at}.kinds: {e}")))?;
                routes.push(Route { from, to, kind });
                if let Some(expected) = r.expects_feedback {
                    feedback.push((Route { from, to, kind }, expected, at.clone()));
                }
                if r.requires_approval == Some(true) {
                    approvals.push(Route { from, to, kind });
                }
                match r.reply_within_days {
                    None => {}
                    Some(days @ 1..=3650) => {
                        windows.push((Route { from, to, kind }, u64::from(days) * 86_400_000))
                    }
                    Some(days) => {
                        return Err(err(
                            path,
                            format!("{at}.reply_within_days: {days} is not between 1 and 3650"),
                        ));
                    }
                }
            }
        }
        let mut policy = RoutePolicy::new(routes).map_err(|e| err(path, format!("route: {e}")))?;
        for (route, window_ms) in windows {
            policy
                .set_reply_window(route, window_ms)
                .map_err(|e| err(path, format!("route: {e}")))?;
        }
        for route in approvals {
            policy
                .require_approval(route)
                .map_err(|e| err(path, format!("route: {e}")))?;
        }
        for (route, expected, at) in feedback {
            policy
                .set_expects_feedback(route, expected)
                .map_err(|e| err(path, format!("{at}.expects_feedback: {e}")))?;
        }
        Ok(Federation {
            name: file.name,
            ca_path,
            ca_pem,
            ca,
            nodes,
            policy,
            keyring,
        })
    }

    pub fn node(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes.get(id)
    }
}

/// The host of an `https://host:port` endpoint, checked.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("{endpoint:?} must start with https:// (peers talk mTLS)"))?;
    let host_port = rest.trim_end_matches('/');
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} must name a port, as in https://host:7401"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{endpoint:?} has an invalid port {port:?}"))?;
    if host.is_empty() {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

fn parse_time(t: Option<&str>) -> Result<Option<u64>, String> {
    let Some(t) = t else { return Ok(None) };
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{t:?} is not an RFC 3339 time: {e}"))?;
    Ok(Some((dt.unix_timestamp_nanos() / 1_000_000).max(0) as u64))
}

fn load_principals(
    files: &[PrincipalFile],
) -> Result<BTreeMap<String, Principal>, (usize, String)> {
    let mut principals = BTreeMap::new();
    for (i, p) in files.iter().enumerate() {
        validate_id("client name", &p.name).map_err(|e| (i, format!("name: {e}")))?;
        if p.roles.is_empty() {
            return Err((
                i,
                format!(
                    "roles: principal {:?} has no role; give it some of submit, receive, operate, audit",
                    p.name
                ),
            ));
        }
        let roles = p
            .roles
            .iter()
            .map(|r| r.parse::<Role>())
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| (i, format!("roles: {e}")))?;
        let receive_kinds = match &p.receive_kinds {
            None => None,
            Some(kinds) => {
                if !roles.contains(&Role::Receive) {
                    return Err((
                        i,
                        format!(
                            "receive_kinds: principal {:?} lacks the receive role",
                            p.name
                        ),
                    ));
                }
                Some(
                    kinds
                        .iter()
                        .map(|k| k.parse::<MessageKind>())
                        .collect::<Result<BTreeSet<_>, _>>()
                        .map_err(|e| (i, format!("receive_kinds: {e}")))?,
                )
            }
        };
        let principal = Principal {
            name: p.name.clone(),
            roles,
            receive_kinds,
        };
        if principals.insert(p.name.clone(), principal).is_some() {
            return Err((i, format!("name: principal {:?} is listed twice", p.name)));
        }
    }
    Ok(principals)
}

/// Checks that a node's TLS certificate is valid now and names the node;
/// returns its expiry (Unix ms).
fn check_tls_cert(cert_pem: &str, node_id: &str, now_ms: u64) -> Result<u64, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let der = pem.contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let validity = cert.validity();
    let to_ms = |t: &x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    let (not_before, not_after) = (to_ms(&validity.not_before), to_ms(&validity.not_after));
    if now_ms < not_before {
        return Err(format!(
            "the certificate is not valid before {}; check the clock or reissue it",
            format_time(not_before)
        ));
    }
    if now_ms > not_after {
        return Err(format!(
            "the certificate expired at {}; issue a new one with `cluebridge gen-certs`",
            format_time(not_after)
        ));
    }
    match crate::crypto::tls::identity_of(&der) {
        Ok(crate::crypto::PeerIdentity::Node(id)) if id == node_id => {}
        Ok(other) => {
            return Err(format!(
                "the certificate names {other}, not node {node_id:?}"
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    // Peers and clients connect to the node's DNS name as the TLS server
    // name; a certificate without it could not be reached.
    let dns_name = crate::crypto::tls::node_dns_name(node_id).map_err(|e| e.to_string())?;
    let names = crate::crypto::tls::dns_names_of(&der).map_err(|e| e.to_string())?;
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&dns_name)) {
        return Err(format!(
            "the certificate does not carry the DNS name {dns_name}, which peers and clients \
             expect as the node's TLS server name ({}); issue a new one: remove it and its key, \
             and run `cluebridge gen-certs --keep-existing` (`cluebridge up` does so for its \
             development federation)",
            if names.is_empty() {
                "it carries no DNS name".to_string()
            } else {
                format!("its DNS names: {}", names.join(", "))
            }
        ));
    }
    Ok(not_after)
}

/// Checks that the node's own signing key may sign now.
fn check_key_window(
    federation: &Federation,
    node_id: &str,
    key_id: &str,
    now_ms: u64,
) -> Result<(), String> {
    let entry = federation
        .keyring
        .entry(node_id, key_id)
        .map_err(|e| e.to_string())?;
    if let Some(nb) = entry.not_before_ms
        && now_ms < nb
    {
        return Err(format!(
            "key {key_id:?} may sign only from {} on; keep signing with the previous key until then",
            format_time(nb)
        ));
    }
    if let Some(na) = entry.not_after_ms
        && now_ms > na
    {
        return Err(format!(
            "key {key_id:?} stopped being valid at {}; switch to a newer key of the trust list",
            format_time(na)
        ));
    }
    Ok(())
}

/// TLS material of a node, read from its files.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// A node's validated configuration, with its keys and the trust list.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub kind: AgencyKind,
    pub listen: SocketAddr,
    /// Where `/metrics` is served (plain HTTP), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub signer: Arc<NodeSigner>,
    pub tls: TlsMaterial,
    pub delivery: DeliverySettings,
    pub limits: Limits,
    pub audit: AuditSettings,
    pub store: StoreSettings,
    /// The agency's client systems by name.
    pub principals: BTreeMap<String, Principal>,
    /// When the node's TLS certificate stops being valid (Unix ms).
    pub tls_not_after_ms: u64,
    pub federation: Arc<Federation>,
}

impl NodeConfig {
    /// Reads and checks a node file and every file it names. A key open to
    /// group or others, or a configuration file or certificate they may
    /// write, is refused before it is used.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        if path.exists() {
            check_mode(path, "", path, FileClass::Config)?;
        }
        let text = read(path)?;
        let file: NodeFile =
            toml::from_str(&text).map_err(|e| err(path, format!("invalid: {e}")))?;
        let fed_path = resolve(path, &file.federation);
        if fed_path.exists() {
            check_mode(path, "federation", &fed_path, FileClass::Config)?;
        }
        let federation = Federation::load(&fed_path)?;
        check_mode(
            path,
            "federation: ca_cert",
            &federation.ca_path,
            FileClass::Config,
        )?;
        let key_path = resolve(path, &file.signing_key);
        let (tls_cert_path, tls_key_path) =
            (resolve(path, &file.tls_cert), resolve(path, &file.tls_key));
        for (field, file, class) in [
            ("signing_key", &key_path, FileClass::PrivateKey),
            ("tls_cert", &tls_cert_path, FileClass::Config),
            ("tls_key", &tls_key_path, FileClass::PrivateKey),
        ] {
            // A missing file is reported by the read below, with its field.
            if file.exists() {
                check_mode(path, field, file, class)?;
            }
        }
        validate_id("node_id", &file.node_id).map_err(|e| err(path, format!("node_id: {e}")))?;
        let entry = federation.node(&file.node_id).ok_or_else(|| {
            err(
                path,
                format!(
                    "node_id: {:?} is not listed in {}",
                    file.node_id,
                    fed_path.display()
                ),
            )
        })?;
        let listen: SocketAddr = file.listen.parse().map_err(|e| {
            err(
                path,
                format!("listen: {:?} is not host:port: {e}", file.listen),
            )
        })?;
        let metrics_listen = file
            .metrics_listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|e| err(path, format!("metrics_listen: {a:?} is not host:port: {e}")))
            })
            .transpose()?;
        let key_text = read(&key_path).map_err(|e| err(path, format!("signing_key: {e}")))?;
        let signer = NodeSigner::from_text(&file.node_id, &file.signing_key_id, &key_text)
            .map_err(|e| err(path, format!("signing_key: {}: {e}", key_path.display())))?;
        let listed = federation
            .keyring
            .public_key(&file.node_id, &file.signing_key_id)
            .ok_or_else(|| {
                err(
                    path,
                    format!(
                        "signing_key_id: {:?} is not a key of node {:?} in the trust list",
                        file.signing_key_id, file.node_id
                    ),
                )
            })?;
        if listed != signer.verifying_key() {
            return Err(err(
                path,
                format!(
                    "signing_key: the key in {} does not match public key {:?} in the trust list",
                    key_path.display(),
                    file.signing_key_id
                ),
            ));
        }
        let cert_pem = read(&tls_cert_path).map_err(|e| err(path, format!("tls_cert: {e}")))?;
        let key_pem = read(&tls_key_path).map_err(|e| err(path, format!("tls_key: {e}")))?;
        let now = crate::now_ms();
        let tls_not_after_ms = check_tls_cert(&cert_pem, &file.node_id, now)
            .map_err(|e| err(path, format!("tls_cert: {e}")))?;
        check_key_window(&federation, &file.node_id, &file.signing_key_id, now)
            .map_err(|e| err(path, format!("signing_key_id: {e}")))?;
        let principals = load_principals(&file.principals)
            .map_err(|(i, e)| err(path, format!("principal[{i}].{e}")))?;
        file.limits.validate().map_err(|e| err(path, e))?;
        let d = &file.delivery;
        if d.max_deliveries == 0 {
            return Err(err(path, "delivery.max_deliveries: must be at least 1"));
        }
        if d.default_lease_secs == 0 || d.default_lease_secs > d.max_lease_secs {
            return Err(err(
                path,
                "delivery.default_lease_secs: must be between 1 and delivery.max_lease_secs",
            ));
        }
        if d.batch_size == 0 || d.batch_size > file.limits.max_peer_batch {
            return Err(err(
                path,
                "delivery.batch_size: must be between 1 and limits.max_peer_batch",
            ));
        }
        if d.retry_initial_ms == 0 || d.retry_initial_ms > d.retry_max_ms {
            return Err(err(
                path,
                "delivery.retry_initial_ms: must be between 1 and delivery.retry_max_ms",
            ));
        }
        if d.default_ttl_secs == 0 || d.default_ttl_secs > d.max_ttl_secs {
            return Err(err(
                path,
                "delivery.default_ttl_secs: must be between 1 and delivery.max_ttl_secs",
            ));
        }
        if file.audit.checkpoint_every_entries == 0 || file.audit.checkpoint_interval_secs == 0 {
            return Err(err(
                path,
                "audit.checkpoint_every_entries and audit.checkpoint_interval_secs: must be at least 1",
            ));
        }
        if !StoreSettings::JOURNAL_FILE_BYTES_RANGE.contains(&file.store.journal_file_bytes) {
            return Err(err(
                path,
                "store.journal_file_bytes: must be between 4096 (4 KiB) and 1073741824 (1 GiB)",
            ));
        }
        if !StoreSettings::SNAPSHOT_JOURNAL_BYTES_RANGE.contains(&file.store.snapshot_journal_bytes)
        {
            return Err(err(
                path,
                "store.snapshot_journal_bytes: must be between 4096 (4 KiB) and 1099511627776 (1 TiB)",
            ));
        }
        Ok(NodeConfig {
            node_id: file.node_id.clone(),
            kind: entry.kind,
            listen,
            metrics_listen,
            data_dir: resolve(path, &file.data_dir),
            signer: Arc::new(signer),
            tls: TlsMaterial {
                ca_pem: federation.ca_pem.clone(),
                cert_pem,
                key_pem,
            },
            delivery: file.delivery,
            limits: file.limits,
            audit: file.audit,
            store: file.store,
            principals,
            tls_not_after_ms,
            federation: Arc::new(federation),
        })
    }

    /// Warnings about the node's TLS certificate or signing key running out
    /// within 30 days of `now_ms`.
    pub fn expiry_warnings(&self, now_ms: u64) -> Vec<String> {
        const SOON_MS: u64 = 30 * 24 * 3600 * 1000;
        let mut warnings = Vec::new();
        if self.tls_not_after_ms.saturating_sub(now_ms) < SOON_MS {
            warnings.push(format!(
                "the node's TLS certificate expires within 30 days, at {}; issue a new one",
                format_time(self.tls_not_after_ms)
            ));
        }
        let key_id = self.signer.key_id();
        if let Ok(entry) = self.federation.keyring.entry(&self.node_id, key_id)
            && let Some(not_after) = entry.not_after_ms
            && not_after.saturating_sub(now_ms) < SOON_MS
        {
            warnings.push(format!(
                "the node's signing key {key_id} stops being valid within 30 days, at {}; rotate it",
                format_time(not_after)
            ));
        }
        warnings
    }

    /// The other nodes of the federation.
    pub fn peers(&self) -> impl Iterator<Item = &NodeEntry> {
        self.federation
            .nodes
            .values()
            .filter(move |n| n.id != self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_size_limits_follow_the_payload_and_batch_limits() {
        let limits = Limits::default();
        let sizes = limits.message_limits();
        assert_eq!(sizes.client, 1024 * 1024 + 10 * 1024);
        assert_eq!(sizes.peer, 16 * 1024 * 1024 + 1024 * 16);
        // A byte cap below one envelope still lets the largest one through.
        let small = Limits {
            max_payload_bytes: 1000,
            max_peer_batch: 2,
            max_peer_batch_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(small.message_limits().peer, 1000 + 10 * 1024 + 2 * 16);
    }

    #[test]
    fn connection_limits_that_contradict_each_other_are_refused_by_name() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let refusal = |l: Limits| l.validate().expect_err("refused");
        let e = refusal(Limits {
            max_anonymous_connections: 600,
            ..Limits::default()
        });
        assert!(e.contains("limits.max_anonymous_connections"), "{e}");
        let e = refusal(Limits {
            idle_connection_secs: 40,
            ..Limits::default()
        });
        assert!(
            e.contains("limits.idle_connection_secs") && e.contains("40 s"),
            "{e}"
        );
        let e = refusal(Limits {
            max_connections: 0,
            max_anonymous_connections: 0,
            ..Limits::default()
        });
        assert!(
            e.contains("limits.max_connections: must be at least 1"),
            "{e}"
        );
    }
}
