//! `cluebridge console`: the web console for operators and compliance
//! staff, served on this machine and talking to the nodes over their gRPC
//! services with a principal's client certificates (see `crate::console`).

use crate::client::Connection;
use crate::config::Federation;
use crate::console::{Announce, ConsoleConfig, NodeTarget};
use crate::crypto::tls::{PeerIdentity, identity_of, node_dns_name};
use crate::devfed::{ClientFiles, DevFederation, OPERATOR_NAME};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cluebridge console --node discipline                      # as the operator of --dir
  cluebridge console --node discipline --node judicial --as auditor
  cluebridge console --node discipline --endpoint https://broker.discipline.example:7401 \\
      --ca ca.pem --cert ops.pem --key ops-key.pem --trust federation.toml

The console prints a link with a one-time token: open it in a browser on this
machine. The token becomes a session cookie (HttpOnly, SameSite=Strict); each
time a link is used the console prints the next one, for another browser.
Pages show what the node lets the principal see: queues, peers and dead
letters (with requeue and discard) to operators; receipt bundles, their
verification and the audit checkpoints to auditors; follow-ups (overdue
first) and cases to auditors and the back office. Payloads are never shown.")]
pub struct ConsoleArgs {
    /// A node to show, by id; repeat for several (--node discipline --node
    /// judicial). With --dir, its endpoint and the principal's certificate
    /// are looked up there.
    #[arg(long = "node", value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
    /// Development federation directory made by `cluebridge up`.
    #[arg(long, default_value = ".cluebridge-dev", env = "CLUEBRIDGE_DIR")]
    pub dir: PathBuf,
    /// With --dir: the principal whose certificates the console presents
    /// (`operator` for queues and dead letters, `auditor` for bundles,
    /// verification and checkpoints).
    #[arg(long = "as", value_name = "PRINCIPAL", default_value = OPERATOR_NAME)]
    pub principal: String,
    /// The endpoint of each --node, in the same order (a real federation;
    /// overrides --dir).
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// Federation CA certificate (PEM).
    #[arg(long, env = "CLUEBRIDGE_CA")]
    pub ca: Option<PathBuf>,
    /// The principal's client certificate for each --node, in the same
    /// order (PEM; it names cluebridge://node/<node>/client/<name>).
    #[arg(long = "cert", value_name = "PEM")]
    pub certs: Vec<PathBuf>,
    /// The private key of each --cert, in the same order.
    #[arg(long = "key", value_name = "PEM")]
    pub keys: Vec<PathBuf>,
    /// Federation trust list: bundles are verified against its keys
    /// (default: federation.toml in --dir when present).
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Where the console listens. Keep it on loopback: anyone who reaches
    /// it with a valid link acts with your certificates, and the link and
    /// the cookie travel unencrypted (use an SSH tunnel to reach it from
    /// elsewhere). Port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7400", value_name = "ADDR")]
    pub listen: String,
}

/// The files one node is reached with.
fn node_target(args: &ConsoleArgs, index: usize, node: &str) -> Result<NodeTarget> {
    // The development federation's files, looked up only for what the
    // flags do not give.
    let dev_files = DevFederation::open(&args.dir).map(|dev| dev.client_as(node, &args.principal));
    let dev = |what: &str| -> Result<&ClientFiles> {
        match &dev_files {
            Some(Ok(files)) => Ok(files),
            Some(Err(e)) => Err(anyhow::anyhow!("no --{what} for node {node}, and {e:#}")),
            None => bail!(
                "--{what} is required for node {node} (or run `cluebridge up` and point --dir \
                 at its directory)"
            ),
        }
    };
    let endpoint = match args.endpoints.get(index) {
        Some(e) => e.clone(),
        None => dev("endpoint")?.endpoint.clone(),
    };
    let ca = match &args.ca {
        Some(p) => p.clone(),
        None => dev("ca")?.ca.clone(),
    };
    let cert = match args.certs.get(index) {
        Some(p) => p.clone(),
        None => dev("cert")?.cert.clone(),
    };
    let key = match args.keys.get(index) {
        Some(p) => p.clone(),
        None => dev("key")?.key.clone(),
    };
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let cert_pem = read(&cert)?;
    let principal = principal_of(&cert_pem, node)
        .with_context(|| format!("the certificate {}", cert.display()))?;
    Ok(NodeTarget {
        node_id: node.to_string(),
        principal,
        connection: Connection {
            endpoint,
            server_name: node_dns_name(node)?,
            ca_pem: read(&ca)?,
            cert_pem,
            key_pem: read(&key)?,
        },
    })
}

/// The principal a client certificate names, which must be one of
/// `node`'s (a principal of one node has no rights on another).
fn principal_of(cert_pem: &str, node: &str) -> Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("is not a PEM certificate: {e}"))?;
    match identity_of(&pem.contents)? {
        PeerIdentity::Client { node: of, name } if of == node => Ok(name),
        PeerIdentity::Client { node: of, name } => bail!(
            "names principal {name} of node {of}, not of {node}: a principal has rights on \
             its own node only"
        ),
        PeerIdentity::Node(n) => bail!(
            "is node {n}'s own certificate; the console presents a principal's client \
             certificate"
        ),
    }
}

fn config(args: &ConsoleArgs, announce: Announce) -> Result<ConsoleConfig> {
    let n = args.nodes.len();
    for (flag, count) in [
        ("--endpoint", args.endpoints.len()),
        ("--cert", args.certs.len()),
        ("--key", args.keys.len()),
    ] {
        if count != 0 && count != n {
            bail!(
                "{flag} was given {count} for {n} --node: give it once per --node, in \
                 the same order, or not at all (to use --dir)"
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut nodes = Vec::new();
    for (i, node) in args.nodes.iter().enumerate() {
        crate::model::validate_id("node id", node)?;
        if !seen.insert(node.clone()) {
            bail!("--node {node} is given twice");
        }
        nodes.push(node_target(args, i, node)?);
    }
    let trust = match &args.trust {
        Some(p) => Some(
            Federation::load(p)
                .with_context(|| format!("cannot use the trust list {}", p.display()))?
                .keyring,
        ),
        None => Federation::load(&args.dir.join("federation.toml"))
            .ok()
            .map(|f| f.keyring),
    };
    Ok(ConsoleConfig {
        nodes,
        trust,
        announce,
    })
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !crate::console::is_loopback(&addr) {
        eprintln!(
            "warning: the console listens on {addr}, which is not a loopback address: anyone \
             who can reach it and obtains a link or a session cookie acts with your \
             certificates, and both travel unencrypted. Prefer 127.0.0.1 and an SSH tunnel."
        );
    }
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let announce: Announce = Arc::new(move |link: &str| {
        if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            println!(
                "open {link}\n(the link works once; a new one is printed here each time one is used)"
            );
        } else {
            println!("open {link}");
        }
    });
    let config = config(&args, announce)?;
    let who: Vec<String> = config
        .nodes
        .iter()
        .map(|t| format!("{} as {}", t.node_id, t.principal))
        .collect();
    println!(
        "cluebridge console on http://{addr} for {} (Ctrl-C to stop)",
        who.join(", ")
    );
    crate::console::run(config, listener, super::shutdown_signal()).await
}
