//! `cluebridge bench --backlog N`: what a large backlog costs a node.
//! Starts only the sending node as a `cluebridge serve` process (the
//! recipient stays down, so every message waits in its outbox), fills the
//! outbox with N messages from many concurrent submitters, then measures
//! the node's resident memory, the disk its data directory uses, the time
//! of a metrics scrape and of the Admin `queues` call, and, after a SIGKILL
//! and a restart, the time until it serves again.

use super::bench::{BenchArgs, Nodes, start_nodes};
use crate::client::Connection;
use crate::config::NodeConfig;
use crate::devfed::{DevFederation, OPERATOR_NAME};
use crate::model::MessageKind;
use crate::pb;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Timed samples of each of the metrics scrape and the `queues` call.
const SAMPLES: usize = 9;

/// A node that takes longer than this to serve again after a restart
/// fails the bench rather than hanging it.
const RESTART_DEADLINE: Duration = Duration::from_secs(300);

/// Everything `bench --backlog` measures; written as JSON with `--json`.
#[derive(Debug, serde::Serialize)]
pub struct BacklogFigures {
    /// Messages asked for.
    pub backlog: u64,
    pub submitters: usize,
    pub payload_size: usize,
    pub fill: Fill,
    /// Outbox depth to the recipient once the fill is done, as `queues`
    /// reports it.
    pub queued: u64,
    /// The node's memory once the fill is done, before any scrape or call.
    pub memory_after_fill: Memory,
    /// The node's memory after the scrapes and `queues` calls below (which
    /// walk the queues).
    pub memory: Memory,
    pub disk: Disk,
    /// `GET /metrics` on the node's metrics port, connection included.
    pub metrics_scrape_ms: Samples,
    /// Size of one scrape's body.
    pub metrics_scrape_bytes: u64,
    /// The outbox depth the scrape reports (`cluebridge_outbox_messages`).
    pub metrics_outbox_messages: u64,
    /// The Admin `ListQueues` call on an open connection.
    pub queues_ms: Samples,
    pub restart: Restart,
}

#[derive(Debug, serde::Serialize)]
pub struct Fill {
    /// Submits answered `accepted`.
    pub accepted: u64,
    pub submit_errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_s: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct Memory {
    /// VmRSS from /proc/PID/status.
    pub rss_bytes: u64,
    /// VmHWM: the peak resident size since the process started.
    pub peak_rss_bytes: u64,
}

/// Disk used by the node's data directory, by top-level entry
/// (`journal`, `envelopes`, `index`, …).
#[derive(Debug, serde::Serialize)]
pub struct Disk {
    pub areas: BTreeMap<String, Usage>,
    pub total: Usage,
    /// Allocated bytes of the whole data directory per queued message.
    pub allocated_per_message: f64,
    /// File lengths of the whole data directory per queued message.
    pub apparent_per_message: f64,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// Blocks allocated on disk (`st_blocks` × 512), what `du` reports.
    pub allocated_bytes: u64,
    /// Sum of file lengths.
    pub apparent_bytes: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct Samples {
    pub samples: Vec<f64>,
    pub median: f64,
    pub max: f64,
}

impl Samples {
    fn of(samples: Vec<f64>) -> Samples {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let max = sorted.last().copied().unwrap_or(0.0);
        Samples {
            samples,
            median,
            max,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Restart {
    /// From the new process's spawn to its first health check answered
    /// SERVING.
    pub to_health_ms: f64,
    /// From the spawn to the first `queues` call answered.
    pub to_queues_ms: f64,
    /// Outbox depth after the restart.
    pub queued: u64,
    /// Memory at the first health check answered SERVING: what opening
    /// the store costs.
    pub memory_at_serving: Memory,
    /// Memory after that first `queues` call.
    pub memory: Memory,
    /// Disk of the data directory after the restart.
    pub disk_total: Usage,
}

/// Runs the backlog bench: fills, measures, kills, restarts, measures;
/// prints the figures and writes them to `--json` if asked.
pub async fn run(args: &BenchArgs, backlog: u64) -> Result<BacklogFigures> {
    if backlog == 0 {
        bail!("--backlog must be at least 1");
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let (dev, nodes) = start_nodes(args, tmp.path(), true).await?;
    let Nodes::Processes(mut children) = nodes else {
        bail!("the backlog bench runs its node as a `cluebridge serve` process");
    };
    let Some((_, mut node)) = children.pop() else {
        bail!("the sending node did not start");
    };
    let config = NodeConfig::load(&dev.node_file(&args.from))?;
    let metrics_addr = config
        .metrics_listen
        .context("the bench's node file has no metrics_listen")?;
    let sender = Connection::from_files(&dev.client(&args.from)?)?;
    let operator = Connection::from_files(&dev.client_as(&args.from, OPERATOR_NAME)?)?;

    println!(
        "filling the outbox of {} → {} (down) with {backlog} messages of {} B from {} submitters",
        args.from, args.to, args.payload_size, args.submitters
    );
    let fill = fill(args, &sender, backlog).await?;
    println!(
        "  fill:      {:>9.0} msg/s ({} accepted in {:.1} s, {} errors)",
        fill.per_s, fill.accepted, fill.seconds, fill.submit_errors
    );
    if let Some(e) = &fill.first_error {
        println!("  first submit error: {e}");
    }

    let pid = node.id().context("the node process has no id")?;
    let memory_after_fill = memory_of(pid)?;
    let mut admin = operator.admin()?;
    let queued = outbox_depth(&mut admin, &args.to).await?;
    let mut queues_ms = Vec::new();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        admin
            .list_queues(pb::ListQueuesRequest {})
            .await
            .context("the queues call")?;
        queues_ms.push(ms(start.elapsed()));
    }
    let mut scrape_ms = Vec::new();
    let mut body = String::new();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        body = scrape(metrics_addr).await?;
        scrape_ms.push(ms(start.elapsed()));
    }
    let metrics_outbox_messages = gauge(&body, "cluebridge_outbox_messages", &args.to)
        .context("the scrape has no cluebridge_outbox_messages for the recipient")?;
    let memory = memory_of(pid)?;
    let disk = disk_of(&config.data_dir, queued)?;
    let (queues_ms, metrics_scrape_ms) = (Samples::of(queues_ms), Samples::of(scrape_ms));
    println!("  queued:    {queued} in the outbox (metrics say {metrics_outbox_messages})");
    println!(
        "  memory:    VmRSS {:.1} MiB after the fill, {:.1} MiB after the calls; VmHWM {:.1} MiB",
        mib(memory_after_fill.rss_bytes),
        mib(memory.rss_bytes),
        mib(memory.peak_rss_bytes)
    );
    for (name, u) in &disk.areas {
        println!(
            "  disk:      {name:<12} {:>9.1} MiB allocated, {:>9.1} MiB apparent",
            mib(u.allocated_bytes),
            mib(u.apparent_bytes)
        );
    }
    println!(
        "  disk:      total {:.1} MiB allocated: {:.0} B per message ({:.0} B apparent)",
        mib(disk.total.allocated_bytes),
        disk.allocated_per_message,
        disk.apparent_per_message
    );
    println!(
        "  metrics scrape ms: median {:.2}  max {:.2}  ({} B)",
        metrics_scrape_ms.median,
        metrics_scrape_ms.max,
        body.len()
    );
    println!(
        "  queues call ms:    median {:.2}  max {:.2}",
        queues_ms.median, queues_ms.max
    );

    // SIGKILL: no drain, no flush; the restart replays what is on disk.
    node.start_kill().context("killing the node")?;
    node.wait().await.context("waiting for the killed node")?;
    let (restarted, restart) = restart(args, &dev, &operator, &config.data_dir).await?;
    println!(
        "  restart after SIGKILL: serving in {:.0} ms (health), queues answered in {:.0} ms; \
         {} queued; VmRSS {:.1} MiB when serving, {:.1} MiB after queues, VmHWM {:.1} MiB",
        restart.to_health_ms,
        restart.to_queues_ms,
        restart.queued,
        mib(restart.memory_at_serving.rss_bytes),
        mib(restart.memory.rss_bytes),
        mib(restart.memory.peak_rss_bytes)
    );
    Nodes::Processes(vec![(args.from.clone(), restarted)])
        .stop()
        .await?;
    drop(tmp);
    Ok(BacklogFigures {
        backlog,
        submitters: args.submitters,
        payload_size: args.payload_size,
        fill,
        queued,
        memory_after_fill,
        memory,
        disk,
        metrics_scrape_ms,
        metrics_scrape_bytes: body.len() as u64,
        metrics_outbox_messages,
        queues_ms,
        restart,
    })
}

/// Submits `backlog` messages from `--submitters` tasks, each taking the
/// next number until all are taken. A refused submit is counted, not
/// retried: the figures say how many were accepted.
async fn fill(args: &BenchArgs, sender: &Connection, backlog: u64) -> Result<Fill> {
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::OnceLock::<String>::new());
    let run = crate::now_ms();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.submitters {
        let mut client = sender.broker()?;
        let (next, accepted, errors) = (next.clone(), accepted.clone(), errors.clone());
        let first_error = first_error.clone();
        let (size, to) = (args.payload_size, args.to.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= backlog {
                    break;
                }
                let mut payload = vec![0x5a; size];
                let len = payload.len().min(8);
                payload[..len].copy_from_slice(&n.to_be_bytes()[..len]);
                let result = client
                    .submit(pb::SubmitRequest {
                        message_id: format!("backlog-{run}-{n}"),
                        kind: MessageKind::ClueTransfer.to_wire(),
                        recipient_node: to.clone(),
                        subject: "backlog".into(),
                        content_type: "application/octet-stream".into(),
                        payload: payload.into(),
                        // A day: the fill and the measurements end long
                        // before any message expires.
                        ttl_seconds: 24 * 3600,
                        ..Default::default()
                    })
                    .await;
                match result {
                    Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let _ = first_error.set(format!("{:?}: {}", e.code(), e.message()));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Progress for long fills, every 10 s.
    let progress = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = accepted.load(Ordering::Relaxed);
                println!(
                    "  … {done} accepted after {:.0} s ({:.0} msg/s)",
                    start.elapsed().as_secs_f64(),
                    done as f64 / start.elapsed().as_secs_f64()
                );
            }
        })
    };
    for t in tasks {
        t.await.context("a submitter failed")?;
    }
    progress.abort();
    let seconds = start.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    Ok(Fill {
        accepted,
        submit_errors: errors.load(Ordering::Relaxed),
        first_error: first_error.get().cloned(),
        seconds,
        per_s: accepted as f64 / seconds,
    })
}

/// Starts the sending node again and times it until it serves: a health
/// check answered SERVING, then a `queues` call answered.
async fn restart(
    args: &BenchArgs,
    dev: &DevFederation,
    operator: &Connection,
    data_dir: &Path,
) -> Result<(tokio::process::Child, Restart)> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let exe = std::env::current_exe().context("finding the cluebridge binary")?;
    let start = Instant::now();
    let node = tokio::process::Command::new(&exe)
        .args(["serve", "--config"])
        .arg(dev.node_file(&args.from))
        .env("CLUEBRIDGE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("restarting node {}", args.from))?;
    let mut health = HealthClient::new(operator.channel()?);
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if matches!(answer, Ok(ref r) if r.get_ref().status == ServingStatus::Serving as i32) {
            break;
        }
        if start.elapsed() > RESTART_DEADLINE {
            bail!(
                "node {} did not serve within {} s of its restart",
                args.from,
                RESTART_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_health_ms = ms(start.elapsed());
    let pid = node.id().context("the restarted node has no process id")?;
    let memory_at_serving = memory_of(pid)?;
    let mut admin = operator.admin()?;
    let queued = outbox_depth(&mut admin, &args.to).await?;
    let to_queues_ms = ms(start.elapsed());
    let memory = memory_of(pid)?;
    let disk_total = disk_of(data_dir, queued)?.total;
    Ok((
        node,
        Restart {
            to_health_ms,
            to_queues_ms,
            queued,
            memory_at_serving,
            memory,
            disk_total,
        },
    ))
}

/// The depth of the outbox to `peer` from one `queues` call.
async fn outbox_depth(
    admin: &mut crate::pb::admin_client::AdminClient<tonic::transport::Channel>,
    peer: &str,
) -> Result<u64> {
    let q = admin
        .list_queues(pb::ListQueuesRequest {})
        .await
        .context("the queues call")?
        .into_inner();
    Ok(q.outboxes
        .iter()
        .find(|o| o.peer == peer)
        .map_or(0, |o| o.depth))
}

/// One `GET /metrics` over a fresh connection, as Prometheus makes it;
/// answers the body.
async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the metrics port {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8(answer).context("the metrics answer is not UTF-8")?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("the metrics answer has no body");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("the metrics scrape answered {:?}", head.lines().next());
    }
    Ok(body.to_string())
}

/// The value of gauge `name{peer="peer"}` in a scrape's body.
fn gauge(body: &str, name: &str, peer: &str) -> Option<u64> {
    let series = format!("{name}{{peer=\"{peer}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// VmRSS and VmHWM of process `pid`.
fn memory_of(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = |field: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("{path} has no {field}"))
    };
    Ok(Memory {
        rss_bytes: kib("VmRSS:")?,
        peak_rss_bytes: kib("VmHWM:")?,
    })
}

/// Walks the data directory: usage by top-level entry, and per message.
fn disk_of(data_dir: &Path, messages: u64) -> Result<Disk> {
    let mut areas = BTreeMap::new();
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("reading {}", data_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        areas.insert(name, usage(&entry.path())?);
    }
    let total = areas.values().fold(Usage::default(), |a, u| Usage {
        allocated_bytes: a.allocated_bytes + u.allocated_bytes,
        apparent_bytes: a.apparent_bytes + u.apparent_bytes,
    });
    let per = |bytes: u64| bytes as f64 / messages.max(1) as f64;
    Ok(Disk {
        allocated_per_message: per(total.allocated_bytes),
        apparent_per_message: per(total.apparent_bytes),
        areas,
        total,
    })
}

/// Usage of a file, or of a directory and everything under it.
fn usage(path: &Path) -> Result<Usage> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    #[cfg(unix)]
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    #[cfg(not(unix))]
    let allocated = meta.len();
    let mut u = Usage {
        allocated_bytes: allocated,
        apparent_bytes: if meta.is_file() { meta.len() } else { 0 },
    };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let inner = usage(&entry?.path())?;
            u.allocated_bytes += inner.allocated_bytes;
            u.apparent_bytes += inner.apparent_bytes;
        }
    }
    Ok(u)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
