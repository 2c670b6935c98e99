//! The command line: one module per group of subcommands.

mod approval;
mod audit;
mod bench;
mod bench_backlog;
mod bench_cpu;
mod bench_receiver;
mod case;
mod client_cmds;
mod console;
mod followups;
mod gen_certs;
pub(crate) mod ops;
mod render;
mod serve;
mod store;
mod up;
mod when;

pub use render::{escape, escape_block, escape_json, timeline};

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
    /// Log line format on stderr: `pretty` for people, `json` (one object
    /// per line, with span fields) for log collectors.
    #[arg(
        long,
        global = true,
        env = "CLUEBRIDGE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Pretty
    )]
    pub log_format: LogFormat,
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
    /// One case: everything this agency sent or received under a case
    /// reference, newest first, with receipts and follow-ups.
    Case(case::CaseArgs),
    /// Approvers: the submits waiting for a second pair of eyes (routes
    /// that require approval).
    Pending(approval::PendingArgs),
    /// Approvers: approve a waiting submit (it is signed and sent), or
    /// --decline it with a reason (never sent).
    Approve(approval::ApproveArgs),
    /// Follow-ups: messages that expect feedback, which this agency awaits
    /// (sent) or owes (received), overdue first.
    Followups(followups::FollowUpsArgs),
    /// Measure durable submit throughput and end-to-end latency.
    Bench(bench::BenchArgs),
    /// Operators: every queue of a node (outboxes, inbox, dead letters).
    Queues(ops::QueuesArgs),
    /// Operators: the state of each peer (up, backing off, down, paused);
    /// --pause / --resume PEER stop and restart forwarding to one.
    Peers(ops::PeersArgs),
    /// Operators: list, requeue or discard dead letters.
    Dlq(ops::DlqArgs),
    /// Operators: one message's metadata and history (never its payload).
    Message(ops::MessageArgs),
    /// Fetch a message's receipt bundle from a node (as an auditor).
    Export(audit::ExportArgs),
    /// Verify a receipt bundle offline: signatures, digests, audit chain,
    /// checkpoints. Exits 0 only if every check passes.
    Verify(audit::VerifyArgs),
    /// Audit log tools: check a stopped node's store, fetch checkpoints.
    Audit(audit::AuditArgs),
    /// Operators and auditors: a web console on this machine (queues,
    /// peers, dead letters, messages, verification, checkpoints,
    /// follow-ups, cases), talking to the nodes with your certificates.
    /// Prints a one-time link.
    Console(console::ConsoleArgs),
    /// Store maintenance: rebuild a stopped node's index from its journal.
    Store(store::StoreArgs),
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
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
        Command::Followups(a) => followups::run(a).await,
        Command::Case(a) => case::run(a).await,
        Command::Pending(a) => approval::pending(a).await,
        Command::Approve(a) => approval::approve(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Queues(a) => ops::queues(a).await,
        Command::Peers(a) => ops::peers(a).await,
        Command::Dlq(a) => ops::dlq(a).await,
        Command::Message(a) => ops::message(a).await,
        Command::Export(a) => audit::export(a).await,
        Command::Verify(a) => audit::verify(a),
        Command::Audit(a) => audit::run(a).await,
        Command::Console(a) => console::run(a).await,
        Command::Store(a) => store::run(a),
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
