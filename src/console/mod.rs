//! The operators' and auditors' web console (`cluebridge console`): a small
//! web server on the person's own machine that is a client of the nodes'
//! gRPC services, like the CLI. It presents one principal's client
//! certificate to each node, so the node decides what the person may see
//! and do; the console adds no port to a node and keeps nothing on disk.
//!
//! No payload is ever shown: the Admin service returns none, and receipt
//! bundles are fetched without one. Access needs a session cookie that a
//! one-time link printed in the terminal hands out; forms carry a CSRF
//! token; every answer carries a strict Content-Security-Policy; the CSS
//! and the small script are compiled into the binary, and every page works
//! without the script.
//!
//! - `session`: login links, sessions, CSRF tokens, the request guard and
//!   the security headers;
//! - `nodes`: the channels to the nodes, calls under a deadline, snapshots
//!   and their short history;
//! - `pages`: the handlers of every page and action;
//! - `views`: the HTML (maud templates, checked at compile time), the
//!   charts as inline SVG;
//! - `assets`: the CSS and JavaScript inside the binary;
//! - `listener`: accepted connections, capped and closed when idle.

mod assets;
mod followups;
mod listener;
mod nodes;
mod pages;
mod session;
mod views;

pub use session::{CONTENT_SECURITY_POLICY, MAX_SESSIONS};

use crate::client::Connection;
use crate::crypto::Keyring;
use anyhow::{Context, Result, bail};
use axum::http::{HeaderMap, header};
use nodes::Node;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often every node's snapshot is taken for the charts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Requests handled at once; more wait their turn.
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

/// Receives each login link the console makes (the first at start, a new
/// one each time one is used); the CLI prints them.
pub type Announce = Arc<dyn Fn(&str) + Send + Sync>;

/// One node the console talks to, and as whom.
#[derive(Clone, Debug)]
pub struct NodeTarget {
    pub node_id: String,
    /// The principal's name, for the pages (the certificate says it to
    /// the node).
    pub principal: String,
    pub connection: Connection,
}

/// What a console serves.
pub struct ConsoleConfig {
    pub nodes: Vec<NodeTarget>,
    /// The federation's keys, for verifying bundles against the trust list
    /// rather than against the keys a bundle carries.
    pub trust: Option<Keyring>,
    pub announce: Announce,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("nodes", &self.nodes)
            .field("trust", &self.trust.is_some())
            .finish_non_exhaustive()
    }
}

/// The cheap-clone handle every handler gets.
#[derive(Clone, Debug)]
pub struct Console {
    shared: Arc<Shared>,
}

struct Shared {
    nodes: Vec<Node>,
    sessions: session::Sessions,
    trust: Option<Keyring>,
    announce: Announce,
    /// `http://host:port` as printed in the links.
    base_url: String,
    /// The Host values accepted; `None` on a non-loopback address, where
    /// the console cannot know the names it is reached by.
    hosts: Option<Vec<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("nodes", &self.nodes)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Console {
    fn sessions(&self) -> &session::Sessions {
        &self.shared.sessions
    }

    fn nodes(&self) -> &[Node] {
        &self.shared.nodes
    }

    fn node(&self, id: &str) -> Option<&Node> {
        self.shared.nodes.iter().find(|n| n.id == id)
    }

    fn trust(&self) -> Option<&Keyring> {
        self.shared.trust.as_ref()
    }

    /// The login link carrying `token`.
    fn link(&self, token: &str) -> String {
        format!("{}/?{}={token}", self.shared.base_url, session::TOKEN_PARAM)
    }

    fn announce_link(&self, token: &str) {
        (self.shared.announce)(&self.link(token));
    }

    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(hosts) = &self.shared.hosts else {
            return true;
        };
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }
}

/// Whether `addr` is reachable only from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves the console on `listener` until `shutdown` resolves: announces
/// the first login link, takes a snapshot of every node every
/// [`SAMPLE_EVERY`], and answers the browser.
pub async fn run(
    config: ConsoleConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if config.nodes.is_empty() {
        bail!("the console needs at least one node");
    }
    let addr = listener
        .local_addr()
        .context("the console's listener has no address")?;
    let port = addr.port();
    let (base_url, hosts) = if addr.ip().is_unspecified() {
        // Every interface: the link names loopback, which works here.
        (format!("http://127.0.0.1:{port}"), None)
    } else if is_loopback(&addr) {
        (
            format!("http://{addr}"),
            Some(vec![
                format!("{addr}"),
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]),
        )
    } else {
        (format!("http://{addr}"), None)
    };
    let mut nodes = Vec::new();
    for t in &config.nodes {
        nodes.push(
            Node::new(&t.node_id, &t.principal, &t.connection)
                .with_context(|| format!("node {}", t.node_id))?,
        );
    }
    let console = Console {
        shared: Arc::new(Shared {
            nodes,
            sessions: session::Sessions::new(port),
            trust: config.trust,
            announce: config.announce,
            base_url,
            hosts,
        }),
    };
    // The first snapshots, so that the first page has figures (a node that
    // does not answer is shown as such; this waits at most a call's
    // deadline).
    sample_all(&console).await;
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_every(console.clone(), stop.clone()));
    console.announce_link(&console.sessions().login_token());

    let app = pages::router(console.clone());
    let served = axum::serve(listener::CappedListener::new(listener), app)
        .with_graceful_shutdown(shutdown)
        .await;
    stop.cancel();
    let _ = sampler.await;
    served.context("the console's server failed")
}

async fn sample_all(console: &Console) {
    futures::future::join_all(console.nodes().iter().map(|n| n.snapshot(SAMPLE_EVERY / 2))).await;
}

/// Takes every node's snapshot every [`SAMPLE_EVERY`] until stopped.
async fn sample_every(console: Console, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sample_all(&console) => {}
        }
    }
}
