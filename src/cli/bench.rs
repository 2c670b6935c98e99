//! `cluebridge bench`: concurrent durable submits between two nodes, with a
//! receiving application that acknowledges; reports accepted/s,
//! received/s and end-to-end latency (submit start → received by the
//! application). `--backlog N` measures a node holding N queued messages
//! instead (see `bench_backlog`).

use super::bench_cpu;
use crate::client::Connection;
use crate::config::NodeConfig;
use crate::devfed::{DevFederation, NODES};
use crate::model::MessageKind;
use crate::node::RunningNode;
use crate::pb;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent submitting tasks.
    #[arg(long, default_value_t = 64)]
    pub submitters: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload_size: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before the measured window, not counted: TLS
    /// handshakes, connection windows and caches settle here.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Target total submit rate in messages/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Messages leased to the receiving application at once.
    #[arg(long, default_value_t = 512)]
    pub outstanding: u32,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use the running development federation in this directory instead of
    /// starting two nodes (its nodes' `limits.submit_rate_per_sec` applies:
    /// submits beyond it are refused and counted as errors).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Sending node (its agency must be allowed to send clue transfers to --to).
    #[arg(long, default_value = "discipline")]
    pub from: String,
    /// Receiving node.
    #[arg(long, default_value = "public_security")]
    pub to: String,
    /// Run the two nodes inside the bench process instead of as two
    /// `cluebridge serve` processes (as agencies deploy them).
    #[arg(long, conflicts_with = "dir")]
    pub in_process: bool,
    /// Run four times, alternately without the audit log (`[audit] log =
    /// false`) and with it, and report what the log costs.
    #[arg(long, conflicts_with = "dir")]
    pub compare_audit: bool,
    /// Measure the durable submit path alone: start only the sending node
    /// (the recipient stays down, so messages wait in its outbox) and run
    /// no receiver.
    #[arg(long, conflicts_with = "dir")]
    pub submit_only: bool,
    /// Measure a node holding a backlog of N messages instead: start only
    /// the sending node (as a `serve` process), fill its outbox with N
    /// messages, then report its memory, its disk per message, the time of
    /// a metrics scrape and of `queues`, and how soon it serves again after
    /// a SIGKILL and a restart. `--duration`, `--warmup`, `--rate` and
    /// `--outstanding` do not apply.
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["dir", "in_process", "compare_audit", "submit_only"]
    )]
    pub backlog: Option<u64>,
    /// The receiving application acknowledges each message with a unary
    /// `Ack` call (32 at once) instead of on its `Session` stream.
    #[arg(long, conflicts_with_all = ["submit_only", "backlog"])]
    pub unary_ack: bool,
}

/// The two nodes under test, when the bench started them.
pub(super) enum Nodes {
    None,
    InProcess(Vec<RunningNode>),
    /// Each node's id and its `serve` process.
    Processes(Vec<(String, tokio::process::Child)>),
}

impl Nodes {
    pub(super) async fn stop(self) -> Result<()> {
        match self {
            Nodes::None => {}
            Nodes::InProcess(nodes) => {
                for node in nodes {
                    node.stop().await?;
                }
            }
            Nodes::Processes(children) => {
                for (_, mut child) in children {
                    if let Some(pid) = child.id() {
                        // SIGTERM: the node drains and flushes.
                        let _ = tokio::process::Command::new("kill")
                            .args(["-TERM", &pid.to_string()])
                            .status()
                            .await;
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
                    let _ = child.start_kill();
                }
            }
        }
        Ok(())
    }

    /// The processes that run the nodes, by node id (none when the nodes
    /// run in this process or elsewhere).
    fn pids(&self) -> Vec<(String, u32)> {
        match self {
            Nodes::Processes(children) => children
                .iter()
                .filter_map(|(id, c)| Some((id.clone(), c.id()?)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Creates a development federation in `dir` and starts the nodes `from`
/// and `to`: in this process, or as `cluebridge serve` child processes.
/// With `--submit-only` or `--backlog`, only `from`.
pub(super) async fn start_nodes(
    args: &BenchArgs,
    dir: &std::path::Path,
    audit_log: bool,
) -> Result<(DevFederation, Nodes)> {
    let mut ports = [0u16; 4];
    let mut listeners = Vec::new();
    for (i, kind) in NODES.iter().enumerate() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports[i] = l.local_addr()?.port();
        listeners.push((kind.as_str(), l));
    }
    let dev = DevFederation::create(dir, ports, |n| {
        n.delivery.batch_size = 512;
        // The bench measures the node, not the per-principal limit.
        n.limits.submit_rate_per_sec = 0;
        n.audit.log = audit_log;
    })?;
    let ids: Vec<&str> = NODES
        .iter()
        .map(|k| k.as_str())
        .filter(|id| *id == args.from || *id == args.to)
        .collect();
    if ids.len() != 2 || args.from == args.to {
        bail!("--from and --to must be two different nodes of the federation");
    }
    let ids: Vec<&str> = ids
        .into_iter()
        .filter(|id| !(args.submit_only || args.backlog.is_some()) || *id == args.from)
        .collect();
    // Only the two nodes under test run; the others' ports are closed, so
    // their forwarders back off quietly.
    if args.in_process {
        let mut nodes = Vec::new();
        for (id, listener) in listeners {
            if ids.contains(&id) {
                let config = NodeConfig::load(&dev.node_file(id))?;
                nodes.push(RunningNode::start(config, listener)?);
            }
        }
        return Ok((dev, Nodes::InProcess(nodes)));
    }
    drop(listeners);
    let exe = std::env::current_exe().context("finding the cluebridge binary")?;
    let mut children = Vec::new();
    for id in &ids {
        let child = tokio::process::Command::new(&exe)
            .args(["serve", "--config"])
            .arg(dev.node_file(id))
            // The federation's other two nodes are not started: their
            // forwarders' connection warnings would only be noise here.
            .env("CLUEBRIDGE_LOG", "error")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        children.push((id.to_string(), child));
    }
    for id in &ids {
        wait_until_serving(&dev, id).await?;
    }
    Ok((dev, Nodes::Processes(children)))
}

/// Waits until node `id` answers a call (any answer but "unavailable").
async fn wait_until_serving(dev: &DevFederation, id: &str) -> Result<()> {
    let connection = Connection::from_files(&dev.client(id)?)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = connection
            .broker()?
            .get_status(pb::GetStatusRequest {
                message_id: "probe".into(),
            })
            .await;
        match result {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                if Instant::now() > deadline {
                    bail!("node {id} did not start within 30 s: {}", s.message());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return Ok(()),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Figures {
    audit_log: bool,
    submitters: usize,
    payload_size: usize,
    warmup_s: u64,
    duration_s: f64,
    target_rate: u64,
    accepted: u64,
    accepted_per_s: f64,
    received: u64,
    received_per_s: f64,
    submit_errors: u64,
    /// Submit start → `accepted` answer, as the submitting system waits.
    submit_latency_ms: Latency,
    /// Submit start → received by the application.
    latency_ms: Latency,
    /// Each process's CPU over the measured window.
    cpu: Vec<bench_cpu::CpuShare>,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    /// Percentiles of `sorted` microsecond figures, in milliseconds.
    fn of(sorted: &[u64]) -> Latency {
        Latency {
            p50: percentile(sorted, 0.50),
            p90: percentile(sorted, 0.90),
            p99: percentile(sorted, 0.99),
            p999: percentile(sorted, 0.999),
            max: sorted.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "  {what} latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub async fn run(args: BenchArgs) -> Result<()> {
    // Before anything is created: the nodes' keys and data are private.
    crate::file_modes::restrict_umask();
    if args.submitters == 0 || args.duration == 0 {
        bail!("--submitters and --duration must be at least 1");
    }
    if args.payload_size < 8 {
        bail!("--payload-size must be at least 8 (the send time travels in the payload)");
    }
    if let Some(backlog) = args.backlog {
        let figures = super::bench_backlog::run(&args, backlog).await?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    if !args.compare_audit {
        let figures = measure(&args, true).await?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    // Four runs, without-with-with-without, so that warm-up and drift
    // weigh on both sides alike.
    let mut runs = Vec::new();
    for audit_log in [false, true, true, false] {
        println!(
            "{} the audit log:",
            if audit_log { "with" } else { "without" }
        );
        runs.push(measure(&args, audit_log).await?);
    }
    let mean = |log: bool| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|f| f.audit_log == log)
            .map(|f| f.accepted_per_s)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (without, with) = (mean(false), mean(true));
    let cost = if without > 0.0 {
        (1.0 - with / without) * 100.0
    } else {
        0.0
    };
    println!(
        "audit log cost on durable submit throughput: {cost:.1} % \
         (mean of two runs each: {without:.0} msg/s without, {with:.0} msg/s with)"
    );
    if let Some(path) = &args.json {
        let all = serde_json::json!({
            "runs": runs,
            "accepted_per_s_without_audit_log": without,
            "accepted_per_s_with_audit_log": with,
            "audit_log_cost_percent": cost,
        });
        std::fs::write(path, serde_json::to_string_pretty(&all)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One measurement (with or without the audit log on nodes it starts);
/// prints its figures.
async fn measure(args: &BenchArgs, audit_log: bool) -> Result<Figures> {
    let _tmp;
    let (dev, nodes) = match &args.dir {
        Some(dir) => (
            DevFederation::open(dir)
                .with_context(|| format!("{} holds no development federation", dir.display()))?,
            Nodes::None,
        ),
        None => {
            let tmp = tempfile::tempdir().context("creating a temporary directory")?;
            let started = start_nodes(args, tmp.path(), audit_log).await?;
            _tmp = tmp;
            started
        }
    };
    let sender = Connection::from_files(&dev.client(&args.from)?)?;
    let receiver = Connection::from_files(&dev.client(&args.to)?)?;

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    // Every message any submit got `accepted` for, warmup and late answers
    // included: the receiver is done once it has seen as many.
    let submitted = Arc::new(AtomicU64::new(0));
    let submitting_done = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::OnceLock::<String>::new());

    // The receiving application: takes each message, notes its latency and
    // acknowledges it.
    // Messages sent in [start, end) count; the warmup before them does not.
    let measure_start = Duration::from_secs(args.warmup);
    let measure_end = measure_start + Duration::from_secs(args.duration);
    let receiver_task = if args.submit_only {
        tokio::spawn(async { (0u64, Vec::new()) })
    } else {
        super::bench_receiver::receiving_application(
            &receiver,
            args.unary_ack,
            args.outstanding,
            epoch,
            measure_start..measure_end,
            (submitted.clone(), submitting_done.clone()),
        )
        .await?
    };

    let mut submitters = Vec::new();
    for s in 0..args.submitters {
        let mut client = sender.broker()?;
        let (stop, accepted, errors) = (stop.clone(), accepted.clone(), errors.clone());
        let submitted = submitted.clone();
        let first_error = first_error.clone();
        let size = args.payload_size;
        let to = args.to.clone();
        let interval = (args.rate > 0)
            .then(|| Duration::from_secs_f64(args.submitters as f64 / args.rate as f64));
        submitters.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut waited = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(interval) = interval {
                    let due = start + interval.mul_f64(n as f64 + s as f64 / 64.0);
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                n += 1;
                let mut payload = vec![0x5a; size];
                let sent_at = epoch.elapsed();
                payload[..8].copy_from_slice(&(sent_at.as_micros() as u64).to_be_bytes());
                let result = client
                    .submit(pb::SubmitRequest {
                        message_id: format!("bench-{}-{s}-{n}", crate::now_ms()),
                        kind: MessageKind::ClueTransfer.to_wire(),
                        recipient_node: to.clone(),
                        subject: "bench".into(),
                        content_type: "application/octet-stream".into(),
                        payload: payload.into(),
                        ttl_seconds: 3600,
                        ..Default::default()
                    })
                    .await;
                if result.is_ok() {
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) {
                    break; // answered after the window: not counted
                }
                if sent_at < measure_start {
                    continue; // warmup
                }
                match result {
                    Ok(_) => {
                        waited.push((epoch.elapsed() - sent_at).as_micros() as u64);
                        accepted.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        let _ = first_error.set(format!("{:?}: {}", e.code(), e.message()));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            waited
        }));
    }
    tokio::time::sleep_until((epoch + measure_start).into()).await;
    let mut processes = nodes.pids();
    processes.push(("bench".to_string(), std::process::id()));
    let cpu_start = bench_cpu::start(&processes);
    tokio::time::sleep_until((epoch + measure_end).into()).await;
    let cpu_used = bench_cpu::used(&cpu_start);
    stop.store(true, Ordering::Relaxed);
    let elapsed = (epoch.elapsed().saturating_sub(measure_start))
        .as_secs_f64()
        .min(args.duration as f64);
    let mut submit_latencies = Vec::new();
    for s in submitters {
        submit_latencies.extend(s.await.unwrap_or_default());
    }
    submit_latencies.sort_unstable();
    submitting_done.store(true, Ordering::Release);
    let (received, mut latencies) = receiver_task.await.context("receiver failed")?;
    latencies.sort_unstable();
    let accepted_n = accepted.load(Ordering::Relaxed);
    let cpu = cpu_used
        .iter()
        .map(|u| {
            u.share(if u.name == args.to {
                received
            } else {
                accepted_n
            })
        })
        .collect();
    let figures = Figures {
        audit_log,
        submitters: args.submitters,
        payload_size: args.payload_size,
        warmup_s: args.warmup,
        duration_s: elapsed,
        target_rate: args.rate,
        accepted: accepted.load(Ordering::Relaxed),
        accepted_per_s: accepted.load(Ordering::Relaxed) as f64 / elapsed,
        received,
        received_per_s: received as f64 / elapsed,
        submit_errors: errors.load(Ordering::Relaxed),
        submit_latency_ms: Latency::of(&submit_latencies),
        latency_ms: Latency::of(&latencies),
        cpu,
    };
    println!(
        "{} submitters, {} B payloads, {:.1} s measured after {} s of warmup{}",
        figures.submitters,
        figures.payload_size,
        figures.duration_s,
        figures.warmup_s,
        if args.rate > 0 {
            format!(", target {} msg/s", args.rate)
        } else {
            String::new()
        }
    );
    println!(
        "  accepted:  {:>9.0} msg/s ({} messages, {} errors)",
        figures.accepted_per_s, figures.accepted, figures.submit_errors
    );
    if let Some(e) = first_error.get() {
        println!("  first submit error: {e}");
    }
    println!("{}", figures.submit_latency_ms.line("submit"));
    if args.submit_only {
        println!("  (submit path only: the recipient node was not started)");
    } else {
        println!(
            "  received:  {:>9.0} msg/s ({} messages by the application)",
            figures.received_per_s, figures.received
        );
        println!("{}", figures.latency_ms.line("end-to-end"));
    }
    for c in &figures.cpu {
        let per = if c.process == args.to {
            "received"
        } else {
            "accepted"
        };
        println!(
            "  cpu {:<16} {:>5.0} % of a core, {:>6.0} µs per {per} message",
            c.process, c.percent_of_core, c.cpu_us_per_message
        );
    }
    nodes.stop().await?;
    Ok(figures)
}
