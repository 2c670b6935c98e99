//! `TestFederation`: the four-agency development federation on loopback
//! ports, started in-process, with helpers that read like the scenarios.

use cluebridge::client::Connection;
use cluebridge::config::{NodeConfig, NodeFile};
use cluebridge::crypto::tls::node_dns_name;
use cluebridge::crypto::{Keyring, NodeSigner};
use cluebridge::devfed::{DevFederation, NODES, OPERATOR_NAME};
use cluebridge::model::{EnvelopeHeader, MessageKind, SentState, SignedReceipt, sha256};
use cluebridge::node::RunningNode;
use cluebridge::now_ms;
use cluebridge::pb;
use cluebridge::pb::admin_client::AdminClient;
use cluebridge::pb::broker_client::BrokerClient;
use cluebridge::pb::peer_client::PeerClient;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub const DISCIPLINE: &str = "discipline";
pub const PERSONNEL: &str = "personnel";
pub const SECURITY: &str = "public_security";
pub const JUDICIAL: &str = "judicial";

pub struct TestFederation {
    pub dev: DevFederation,
    pub ports: BTreeMap<String, u16>,
    nodes: BTreeMap<String, RunningNode>,
    _tmp: tempfile::TempDir,
}

/// Short timings so that retries, leases and expiry happen within a test.
pub fn fast(node: &mut NodeFile) {
    node.delivery.retry_initial_ms = 50;
    node.delivery.retry_max_ms = 300;
    node.delivery.redelivery_backoff_ms = 50;
    node.delivery.peer_timeout_ms = 3000;
    node.delivery.shutdown_grace_ms = 2000;
    // Tests read each node's metrics on a port of its own.
    node.metrics_listen = Some("127.0.0.1:0".into());
}

impl TestFederation {
    /// All four nodes running.
    pub async fn start() -> TestFederation {
        Self::start_with(|_| {}, &NODES.map(|k| k.as_str())).await
    }

    /// The federation with extra node-file settings, running only `running`.
    /// No route requires approval (see [`TestFederation::start_approving`]).
    pub async fn start_with(tune: impl Fn(&mut NodeFile), running: &[&str]) -> TestFederation {
        let fed = Self::start_stopped(tune).await;
        without_approval(&fed.fed.dev.dir);
        fed.launch_all(running)
    }

    /// [`TestFederation::start_with`] with the routes edited by `routes`.
    pub async fn start_with_routes(
        routes: impl Fn(&mut Vec<cluebridge::config::RouteFile>),
        running: &[&str],
    ) -> TestFederation {
        let fed = Self::start_stopped(|_| {}).await;
        without_approval(&fed.fed.dev.dir);
        edit_routes(&fed.fed.dev.dir, routes);
        fed.launch_all(running)
    }

    /// [`TestFederation::start_with`] with the development routes as `up`
    /// makes them: rectification suggestions wait for approval.
    pub async fn start_approving(tune: impl Fn(&mut NodeFile), running: &[&str]) -> TestFederation {
        Self::start_stopped(tune).await.launch_all(running)
    }

    async fn start_stopped(tune: impl Fn(&mut NodeFile)) -> StoppedFederation {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut listeners = Vec::new();
        let mut ports = BTreeMap::new();
        for kind in NODES {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ports.insert(
                kind.as_str().to_string(),
                l.local_addr().expect("addr").port(),
            );
            listeners.push((kind.as_str(), l));
        }
        let port_list = NODES.map(|k| ports[k.as_str()]);
        let dev = DevFederation::create(tmp.path(), port_list, |n| {
            fast(n);
            tune(n);
        })
        .expect("create federation");
        StoppedFederation {
            fed: TestFederation {
                dev,
                ports,
                nodes: BTreeMap::new(),
                _tmp: tmp,
            },
            listeners,
        }
    }

    pub(crate) fn launch(&mut self, id: &str, listener: tokio::net::TcpListener) {
        let node = RunningNode::start(self.config(id), listener)
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        self.nodes.insert(id.to_string(), node);
    }

    pub fn config(&self, id: &str) -> NodeConfig {
        NodeConfig::load(&self.dev.node_file(id)).expect("load node config")
    }

    pub fn node(&self, id: &str) -> &RunningNode {
        self.nodes
            .get(id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Stops a node (its data stays).
    pub async fn stop(&mut self, id: &str) {
        let node = self.nodes.remove(id).expect("node running");
        node.stop().await.expect("clean stop");
    }

    /// Starts a stopped node again on its port, with its data.
    pub async fn restart(&mut self, id: &str) {
        self.restart_on(id, std::sync::Arc::new(cluebridge::store::fs::RealFs))
            .await;
    }

    /// Stops a node without its clean stop's final flush: what a crash
    /// leaves (the store's files as they are).
    pub async fn abandon(&mut self, id: &str) {
        let node = self.nodes.remove(id).expect("node running");
        let _ = node.stop().await;
    }

    /// [`TestFederation::restart`] with the store's log and envelope
    /// segments on `fs` (a twin that can fail syncs or fill up).
    pub async fn restart_on(
        &mut self,
        id: &str,
        fs: std::sync::Arc<dyn cluebridge::store::fs::Fs>,
    ) {
        let port = self.ports[id];
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {port}: {e}"),
            }
        };
        let node = RunningNode::start_on(self.config(id), listener, fs)
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        self.nodes.insert(id.to_string(), node);
    }

    pub fn keyring(&self) -> Keyring {
        self.config(DISCIPLINE).federation.keyring.clone()
    }

    pub fn connection(&self, id: &str) -> Connection {
        Connection::from_files(&self.dev.client(id).expect("client files")).expect("connection")
    }

    /// A client system of `id`'s agency, connected to node `id`.
    pub fn client(&self, id: &str) -> BrokerClient<Channel> {
        self.connection(id).broker().expect("client")
    }

    /// Principal `name` of `id`'s agency, connected to node `id`.
    pub fn connection_as(&self, id: &str, name: &str) -> Connection {
        Connection::from_files(&self.dev.client_as(id, name).expect("client files"))
            .expect("connection")
    }

    /// The operator of `id`'s agency, on the Admin service of node `id`.
    pub fn admin(&self, id: &str) -> AdminClient<Channel> {
        self.admin_as(id, OPERATOR_NAME)
    }

    /// Principal `name` of `id`'s agency, on the Admin service of node `id`.
    pub fn admin_as(&self, id: &str, name: &str) -> AdminClient<Channel> {
        self.connection_as(id, name).admin().expect("admin client")
    }

    /// Node `as_node`'s certificate, calling `Peer` on node `target`.
    pub fn peer_as(&self, as_node: &str, target: &str) -> PeerClient<Channel> {
        let dir = &self.dev.dir;
        let read = |p: String| std::fs::read_to_string(dir.join(p)).expect("read");
        Connection {
            endpoint: format!("https://127.0.0.1:{}", self.ports[target]),
            server_name: node_dns_name(target).expect("DNS name"),
            ca_pem: read("ca.pem".into()),
            cert_pem: read(format!("certs/{as_node}.pem")),
            key_pem: read(format!("certs/{as_node}-key.pem")),
        }
        .peer()
        .expect("peer client")
    }

    /// The signing key of a node, read from its key file.
    pub fn signer(&self, id: &str) -> NodeSigner {
        let text = std::fs::read_to_string(self.dev.dir.join(format!("keys/{id}.ed25519")))
            .expect("key file");
        NodeSigner::from_text(id, &format!("{id}-k1"), &text).expect("key")
    }
}

pub fn submit_request(id: &str, kind: MessageKind, to: &str, payload: &[u8]) -> pb::SubmitRequest {
    pb::SubmitRequest {
        message_id: id.to_string(),
        kind: kind.to_wire(),
        recipient_node: to.to_string(),
        case_reference: "CASE-7".into(),
        correlation_id: String::new(),
        subject: format!("subject of {id}"),
        content_type: "text/plain".into(),
        payload: payload.to_vec().into(),
        ttl_seconds: 0,
        reply_by_ms: 0,
    }
}

/// Submits and returns the `accepted` receipt.
pub async fn submit(
    client: &mut BrokerClient<Channel>,
    request: pb::SubmitRequest,
) -> SignedReceipt {
    let r = client.submit(request).await.expect("submit").into_inner();
    SignedReceipt::from_wire(r.accepted.expect("accepted receipt"))
}

/// Polls `GetStatus` until the message reaches `state`.
pub async fn wait_state(
    client: &mut BrokerClient<Channel>,
    id: &str,
    state: SentState,
    within: Duration,
) -> pb::GetStatusResponse {
    let deadline = Instant::now() + within;
    loop {
        let s = client
            .get_status(pb::GetStatusRequest {
                message_id: id.into(),
            })
            .await
            .expect("status")
            .into_inner();
        if s.state == state.to_wire() {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "{id} is in state {} after {within:?}, expected {state}",
                s.state
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Opens a receive stream.
pub async fn receiver(
    client: &mut BrokerClient<Channel>,
    max_outstanding: u32,
    lease_seconds: u32,
) -> tonic::Streaming<pb::Delivery> {
    client
        .receive(pb::ReceiveRequest {
            max_outstanding,
            lease_seconds,
        })
        .await
        .expect("receive")
        .into_inner()
}

/// The next delivery on a stream, within `within`.
pub async fn next(stream: &mut tonic::Streaming<pb::Delivery>, within: Duration) -> pb::Delivery {
    tokio::time::timeout(within, stream.next())
        .await
        .expect("a delivery within the time limit")
        .expect("stream open")
        .expect("delivery")
}

/// What `admin`'s node says of its peer `peer` (ListPeers).
pub async fn peer_info(admin: &mut AdminClient<Channel>, peer: &str) -> pb::PeerInfo {
    let peers = admin
        .list_peers(pb::ListPeersRequest {})
        .await
        .expect("peers")
        .into_inner()
        .peers;
    peers.into_iter().find(|p| p.peer == peer).expect("a peer")
}

/// The kinds of signed receipts, in their order.
pub fn receipt_kinds(receipts: &[pb::SignedReceipt]) -> Vec<cluebridge::model::ReceiptKind> {
    receipts
        .iter()
        .map(|r| {
            let opened = SignedReceipt::from_wire(r.clone()).open();
            opened.expect("a receipt that opens").kind
        })
        .collect()
}

pub fn lease_of(d: &pb::Delivery) -> Option<pb::LeaseRef> {
    Some(pb::LeaseRef {
        sender_node: d.sender_node.clone(),
        message_id: d.message_id.clone(),
        lease_id: d.lease_id,
    })
}

pub const SECOND: Duration = Duration::from_secs(1);

/// A header as node `from` would sign it, created now, valid for an hour.
pub fn header(id: &str, kind: MessageKind, from: &str, to: &str, payload: &[u8]) -> EnvelopeHeader {
    EnvelopeHeader {
        message_id: id.into(),
        kind,
        sender_node: from.into(),
        sender_principal: "backoffice".into(),
        recipient_node: to.into(),
        case_reference: String::new(),
        correlation_id: String::new(),
        subject: "hand-made".into(),
        content_type: "text/plain".into(),
        payload_sha256: sha256(payload),
        payload_length: payload.len() as u64,
        created_at_ms: now_ms(),
        expires_at_ms: now_ms() + 3_600_000,
        reply_by_ms: 0,
        signing_key_id: format!("{from}-k1"),
    }
}

/// A copy of `bytes` with `mask` XORed into byte `at`: a tampered field.
pub fn tampered(bytes: &[u8], at: usize, mask: u8) -> bytes::Bytes {
    let mut copy = bytes.to_vec();
    copy[at] ^= mask;
    copy.into()
}

pub fn sealed(signer: &NodeSigner, h: &EnvelopeHeader, payload: &[u8]) -> pb::SignedEnvelope {
    signer.seal(h, payload.to_vec().into()).to_wire()
}

/// One HTTP GET on a metrics listener: (status line, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_string(&mut text))
        .await
        .expect("answer in time")
        .expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("http answer");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

impl TestFederation {
    /// Node `id`'s `/metrics` text.
    pub async fn metrics(&self, id: &str) -> String {
        let addr = self.node(id).metrics_addr.expect("metrics listener");
        let (status, body) = http_get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        body
    }
}

/// The value of one series (name with labels, exactly as exposed).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .expect("number")
}

/// The queue figures a node reports from its counters (`queues`, metrics)
/// equal what a full scan of its store finds. The node is live (receipts
/// go back, leases lapse), so the two readings are taken again until they
/// agree, within a deadline.
pub async fn assert_queue_counters(fed: &TestFederation, node: &str) {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        let (counted, scanned) = queue_figures(fed, node);
        if counted == scanned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: counters {counted:?}, a scan finds {scanned:?} \
             (outbox, receipt outbox, inbox, leases, dead letters)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (outbox, receipt outbox, inbox, leases, dead letters) from the
/// counters, then from a scan.
fn queue_figures(fed: &TestFederation, node: &str) -> ([usize; 5], [usize; 5]) {
    let store = fed.node(node).broker.store();
    let peers: Vec<&str> = NODES
        .iter()
        .map(|k| k.as_str())
        .filter(|p| *p != node)
        .collect();
    let outbox: usize = peers
        .iter()
        .map(|p| store.outbox_stats(p).expect("outbox").0)
        .sum();
    let receipts: usize = peers.iter().map(|p| store.receipt_outbox_depth(p)).sum();
    let (ready, delayed, _, leased) = store.inbox_stats(now_ms()).expect("inbox");
    let (dead, _) = store.dead_letter_stats().expect("dead letters");
    let counts = store.counts();
    let listed = store.dead_letters(usize::MAX).expect("list").len();
    (
        [outbox, receipts, ready + delayed, leased, dead],
        [
            counts.outbox,
            counts.receipt_outbox,
            counts.inbox,
            counts.leases,
            listed,
        ],
    )
}

/// Starts `cluebridge serve` for `node` (warnings and errors to
/// `stderr`), killed when the returned handle drops.
pub fn spawn_serve_to(
    fed: &TestFederation,
    node: &str,
    stderr: std::process::Stdio,
) -> ServeProcess {
    ServeProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
            .args(["serve", "--config"])
            .arg(fed.dev.node_file(node))
            .env("CLUEBRIDGE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn cluebridge serve"),
    )
}

/// A `cluebridge serve` process a test started: killed and reaped when
/// dropped, so a test that fails half-way leaves no node running.
#[derive(Debug)]
pub struct ServeProcess(pub std::process::Child);

impl std::ops::Deref for ServeProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServeProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Already gone (killed and reaped by the test) is fine.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A federation made, its ports held, no node started yet.
pub struct StoppedFederation {
    fed: TestFederation,
    listeners: Vec<(&'static str, tokio::net::TcpListener)>,
}

impl StoppedFederation {
    fn launch_all(self, running: &[&str]) -> TestFederation {
        let mut fed = self.fed;
        for (id, listener) in self.listeners {
            if running.contains(&id) {
                fed.launch(id, listener);
            }
        }
        fed
    }
}

/// Takes `requires_approval` off every route of the federation file, so
/// that tests of other things submit straight through.
fn without_approval(dir: &std::path::Path) {
    edit_routes(dir, |routes| {
        for route in routes {
            route.requires_approval = None;
        }
    });
}

/// Rewrites the routes of the federation file in `dir`.
fn edit_routes(dir: &std::path::Path, edit: impl Fn(&mut Vec<cluebridge::config::RouteFile>)) {
    let path = dir.join("federation.toml");
    let text = std::fs::read_to_string(&path).expect("federation file");
    let mut file: cluebridge::config::FederationFile = toml::from_str(&text).expect("parse");
    edit(&mut file.routes);
    std::fs::write(&path, toml::to_string_pretty(&file).expect("encode")).expect("write");
}

/// Runs the `cluebridge` binary; whether it succeeded, and its standard
/// output then standard error.
pub fn run_cluebridge(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(args)
        .output()
        .expect("run cluebridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

impl TestFederation {
    /// [`run_cluebridge`] with this federation's `--dir`.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let dir = self.dev.dir.to_str().expect("path");
        run_cluebridge(&[args, &["--dir", dir]].concat())
    }
}

/// A base port below the ephemeral range whose four node ports and four
/// metrics ports (+2000) are free now.
pub fn free_base_port() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..100u16 {
        let base = 10_000 + seed.wrapping_mul(7).wrapping_add(attempt.wrapping_mul(97)) % 20_000;
        let ports = (0..4).flat_map(|i| [base + i, base + 2000 + i]);
        if ports
            .into_iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports for a development federation");
}

/// Sends SIGINT (as Ctrl-C) to `child`; its exit status, or `None` when it
/// still runs after `within`.
pub async fn interrupt(
    child: &mut tokio::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(within, child.wait()).await.ok()?;
    Some(status.expect("status"))
}
