//! The command line: one module per group of subcommands.

mod audit;
mod bench;
mod client_cmds;
mod gen_certs;
mod render;
mod serve;
mod up;

pub use render::timeline;

use clap::{Parser, Subcommand};

/// cluebridge — signs, routes and durably queues clue transfers and
/// rectification suggestions between agencies, and tracks every
/// acknowledgement with signed receipts.
#[derive(Debug, Parser)]
#[command(name = "cluebridge", version, max_term_width = 100)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `cluebridge=debug`.
    /// Defaults to `info` for serve/up/bench and `warn` otherwise; RUST_LOG also works.
    #[arg(long, global = true, env = "CLUEBRIDGE_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node from its node file until SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Run a local four-agency development federation (created if absent).
    Up(up::UpArgs),
    /// Make the CA, node keys and certificates, and principals' client
    /// certificates from federation.toml and its node files.
    GenCerts(gen_certs::GenCertsArgs),
    /// Submit a message to a node as a client system.
    Send(client_cmds::SendArgs),
    /// Receive messages from a node's inbox, then ack or reject them.
    Receive(client_cmds::ReceiveArgs),
    /// Show a sent message's state and receipt timeline.
    Status(client_cmds::StatusArgs),
    /// Follow the receipts of this agency's sent messages as they arrive.
    Watch(client_cmds::WatchArgs),
    /// Measure durable submit throughput and end-to-end latency.
    Bench(bench::BenchArgs),
    /// Fetch a message's receipt bundle from a node (as an auditor).
    Export(audit::ExportArgs),
    /// Verify a receipt bundle offline: signatures, digests, audit chain,
    /// checkpoints. Exits 0 only if every check passes.
    Verify(audit::VerifyArgs),
    /// Audit log tools: check a stopped node's store, fetch checkpoints.
    Audit(audit::AuditArgs),
}

/// Sets up logging on stderr.
pub fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Serve(_) | Command::Up(_) => "info",
        _ => "warn",
    };
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(a).await,
        Command::Up(a) => up::run(a).await,
        Command::GenCerts(a) => gen_certs::run(a),
        Command::Send(a) => client_cmds::send(a).await,
        Command::Receive(a) => client_cmds::receive(a).await,
        Command::Status(a) => client_cmds::status(a).await,
        Command::Watch(a) => client_cmds::watch(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Export(a) => audit::export(a).await,
        Command::Verify(a) => audit::verify(a),
        Command::Audit(a) => audit::run(a).await,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
