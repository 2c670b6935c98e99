//! Operator subcommands against a node's Admin service: queues, peers,
//! dead letters and one message's history. Tables for people, `--json` for
//! scripts, `--watch` to refresh in place. Nothing here shows a payload:
//! the Admin service never returns one. Every cell of a table and every
//! field printed is escaped (see `render`): peers' errors, case references,
//! reasons and principals come from the network.

use super::client_cmds::{ClientArgs, explain};
use super::render::{escape, escape_json};
use crate::devfed::OPERATOR_NAME;
use crate::format_time;
use crate::model::MessageKind;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use anyhow::{Result, bail};
use serde_json::json;
use std::time::Duration;
use tonic::transport::Channel;

/// Output options shared by the listing commands.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Print JSON (one document per refresh) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (2 when given without a value) until
    /// interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// First stop forwarding to this peer (envelopes and receipts wait
    /// durably; the pause survives a restart of the node).
    #[arg(long, value_name = "PEER", conflicts_with = "resume")]
    pub pause: Option<String>,
    /// First let forwarding to this peer run again.
    #[arg(long, value_name = "PEER")]
    pub resume: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put dead letters back in the inbox with fresh delivery attempts.
    Requeue {
        #[command(flatten)]
        client: ClientArgs,
        /// Messages as SENDER_NODE/MESSAGE_ID (as `dlq list` shows them).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        messages: Vec<String>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give dead letters up for good; the reason is recorded.
    Discard {
        #[command(flatten)]
        client: ClientArgs,
        /// Messages as SENDER_NODE/MESSAGE_ID.
        #[arg(required = true)]
        messages: Vec<String>,
        /// Why (required; kept in each message's history).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct MessageArgs {
    #[command(subcommand)]
    pub command: MessageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum MessageCommand {
    /// Metadata and state history of one message (never its payload).
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// MESSAGE_ID of a message this node sent, or SENDER_NODE/MESSAGE_ID
        /// of one in its custody.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn admin(client: &ClientArgs) -> Result<AdminClient<Channel>> {
    client.connection_as(OPERATOR_NAME)?.admin()
}

/// Runs `once` now, and again every `--watch` seconds if asked, clearing
/// the terminal between refreshes.
async fn repeat<F, Fut>(output: &OutputArgs, mut once: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let Some(every) = output.watch else {
        print!("{}", once().await?);
        return Ok(());
    };
    let every = Duration::from_secs(every.max(1));
    // One listener for the whole watch: a signal that arrives while a
    // refresh is being fetched is not lost between two listeners.
    let interrupted = super::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        let text = tokio::select! {
            text = once() => text?,
            _ = &mut interrupted => return Ok(()),
        };
        if output.json {
            print!("{text}");
        } else {
            print!(
                "\x1b[2J\x1b[H{}  (every {} s; Ctrl-C to stop)\n\n{text}",
                format_time(crate::now_ms()),
                every.as_secs()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// Columns padded to their widest cell, two spaces apart; cells escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A duration in ms for people: `0s`, `42s`, `3m05s`, `2h10m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A cell for people: the text, `-` when empty.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

/// A time for people, `-` for none.
pub fn when(ms: u64) -> String {
    if ms == 0 { "-".into() } else { format_time(ms) }
}

pub fn kind_name(n: i32) -> &'static str {
    MessageKind::from_wire(n).map_or("unknown", |k| k.as_str())
}

pub fn peer_state(n: i32) -> &'static str {
    match pb::PeerState::try_from(n) {
        Ok(pb::PeerState::Up) => "up",
        Ok(pb::PeerState::BackingOff) => "backing_off",
        Ok(pb::PeerState::Down) => "down",
        Ok(pb::PeerState::Paused) => "paused",
        _ => "unknown",
    }
}

/// JSON for scripts, with characters that would act on a terminal written
/// as JSON escapes.
fn pretty(v: &serde_json::Value) -> String {
    escape_json(&serde_json::to_string_pretty(v).unwrap_or_default()) + "\n"
}

pub async fn queues(args: QueuesArgs) -> Result<()> {
    let client = admin(&args.client)?;
    let json = args.output.json;
    repeat(&args.output, || {
        let mut client = client.clone();
        async move {
            let q = client
                .list_queues(pb::ListQueuesRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            let inbox = q.inbox.unwrap_or_default();
            let dead = q.dead_letters.unwrap_or_default();
            if json {
                return Ok(pretty(&json!({
                    "at_ms": q.at_ms,
                    "outboxes": q.outboxes.iter().map(|o| json!({
                        "peer": o.peer, "depth": o.depth, "bytes": o.bytes,
                        "oldest_age_ms": o.oldest_age_ms, "paused": o.paused,
                        "receipts_waiting": o.receipts_waiting,
                    })).collect::<Vec<_>>(),
                    "inbox": {
                        "ready": inbox.ready, "leased": inbox.leased,
                        "delayed": inbox.delayed,
                        "oldest_ready_age_ms": inbox.oldest_ready_age_ms,
                    },
                    "dead_letters": {"count": dead.count, "oldest_age_ms": dead.oldest_age_ms},
                })));
            }
            let mut rows: Vec<Vec<String>> = q
                .outboxes
                .iter()
                .map(|o| {
                    vec![
                        format!("outbox → {}", o.peer),
                        o.depth.to_string(),
                        bytes(o.bytes),
                        age(o.oldest_age_ms),
                        if o.paused {
                            format!("PAUSED; {} receipts to return", o.receipts_waiting)
                        } else {
                            format!("{} receipts to return", o.receipts_waiting)
                        },
                    ]
                })
                .collect();
            rows.push(vec![
                "inbox".into(),
                (inbox.ready + inbox.delayed + inbox.leased).to_string(),
                "-".into(),
                age(inbox.oldest_ready_age_ms),
                format!(
                    "{} ready, {} leased, {} delayed",
                    inbox.ready, inbox.leased, inbox.delayed
                ),
            ]);
            rows.push(vec![
                "dead letters".into(),
                dead.count.to_string(),
                "-".into(),
                age(dead.oldest_age_ms),
                if dead.count > 0 {
                    "see `cluebridge dlq list`".into()
                } else {
                    String::new()
                },
            ]);
            Ok(table(
                &["QUEUE", "DEPTH", "BYTES", "OLDEST", "NOTES"],
                &rows,
            ))
        }
    })
    .await
}

pub async fn peers(args: PeersArgs) -> Result<()> {
    let mut client = admin(&args.client)?;
    if let Some(peer) = &args.pause {
        client
            .pause_peer(pb::PausePeerRequest { peer: peer.clone() })
            .await
            .map_err(explain)?;
        eprintln!("paused forwarding to {peer}");
    }
    if let Some(peer) = &args.resume {
        client
            .resume_peer(pb::ResumePeerRequest { peer: peer.clone() })
            .await
            .map_err(explain)?;
        eprintln!("resumed forwarding to {peer}");
    }
    let json = args.output.json;
    repeat(&args.output, || {
        let mut client = client.clone();
        async move {
            let peers = client
                .list_peers(pb::ListPeersRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .peers;
            if json {
                return Ok(pretty(&json!(
                    peers
                        .iter()
                        .map(|p| json!({
                            "peer": p.peer, "endpoint": p.endpoint,
                            "state": peer_state(p.state),
                            "last_success_ms": p.last_success_ms,
                            "last_error": p.last_error, "last_error_ms": p.last_error_ms,
                            "consecutive_failures": p.consecutive_failures,
                            "backlog": p.backlog, "rtt_us": p.rtt_us,
                            "paused_by": p.paused_by, "paused_at_ms": p.paused_at_ms,
                        }))
                        .collect::<Vec<_>>()
                )));
            }
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| {
                    vec![
                        p.peer.clone(),
                        peer_state(p.state).into(),
                        p.backlog.to_string(),
                        if p.rtt_us == 0 {
                            "-".into()
                        } else {
                            format!("{:.1} ms", p.rtt_us as f64 / 1000.0)
                        },
                        when(p.last_success_ms),
                        p.consecutive_failures.to_string(),
                        if p.state == pb::PeerState::Paused as i32 {
                            format!("paused by {} at {}", p.paused_by, when(p.paused_at_ms))
                        } else {
                            p.last_error.clone()
                        },
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "PEER",
                    "STATE",
                    "BACKLOG",
                    "RTT",
                    "LAST SUCCESS",
                    "FAILURES",
                    "LAST ERROR / PAUSE",
                ],
                &rows,
            ))
        }
    })
    .await
}

/// `SENDER_NODE/MESSAGE_ID` → an address.
fn address(text: &str) -> Result<pb::MessageAddress> {
    let Some((sender, id)) = text.split_once('/') else {
        bail!(
            "{text:?} is not SENDER_NODE/MESSAGE_ID (e.g. discipline/msg-1); `cluebridge dlq list` shows them"
        );
    };
    Ok(pb::MessageAddress {
        sender_node: sender.into(),
        message_id: id.into(),
    })
}

fn addresses(texts: &[String]) -> Result<Vec<pb::MessageAddress>> {
    texts.iter().map(|t| address(t)).collect()
}

fn print_outcomes(verb: &str, r: &pb::ActionResponse, json: bool) -> Result<()> {
    if json {
        print!(
            "{}",
            pretty(&json!({
                "done": r.done,
                "outcomes": r.outcomes.iter().map(|o| json!({
                    "sender_node": o.sender_node, "message_id": o.message_id,
                    "done": o.done, "code": o.code, "error": o.error,
                })).collect::<Vec<_>>(),
            }))
        );
    } else {
        for o in &r.outcomes {
            let (sender, id) = (escape(&o.sender_node), escape(&o.message_id));
            if o.done {
                println!("{verb} {sender}/{id}");
            } else {
                println!("NOT {verb} {sender}/{id}: {}", escape(&o.error));
            }
        }
        println!("{} of {} {verb}", r.done, r.outcomes.len());
    }
    if (r.done as usize) < r.outcomes.len() {
        bail!(
            "{} message(s) not {verb}",
            r.outcomes.len() - r.done as usize
        );
    }
    Ok(())
}

pub async fn dlq(args: DlqArgs) -> Result<()> {
    match args.command {
        DlqCommand::List {
            client,
            output,
            limit,
        } => {
            let client = admin(&client)?;
            let json = output.json;
            repeat(&output, || {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_dead_letters(pb::ListDeadLettersRequest { limit })
                        .await
                        .map_err(explain)?
                        .into_inner();
                    if json {
                        return Ok(pretty(&json!({
                            "total": r.total,
                            "dead_letters": r.dead_letters.iter().map(|d| json!({
                                "sender_node": d.sender_node, "message_id": d.message_id,
                                "kind": kind_name(d.kind), "case_reference": d.case_reference,
                                "payload_length": d.payload_length,
                                "created_at_ms": d.created_at_ms,
                                "expires_at_ms": d.expires_at_ms,
                                "dead_lettered_at_ms": d.dead_lettered_at_ms,
                                "attempts": d.attempts, "last_failure": d.last_failure,
                            })).collect::<Vec<_>>(),
                        })));
                    }
                    let now = crate::now_ms();
                    let rows: Vec<Vec<String>> = r
                        .dead_letters
                        .iter()
                        .map(|d| {
                            vec![
                                format!("{}/{}", d.sender_node, d.message_id),
                                kind_name(d.kind).into(),
                                d.case_reference.clone(),
                                d.attempts.to_string(),
                                age(now.saturating_sub(d.dead_lettered_at_ms)),
                                age(d.expires_at_ms.saturating_sub(now)),
                                d.last_failure.clone(),
                            ]
                        })
                        .collect();
                    let mut out = table(
                        &[
                            "MESSAGE",
                            "KIND",
                            "CASE",
                            "ATTEMPTS",
                            "DEAD FOR",
                            "EXPIRES IN",
                            "LAST FAILURE",
                        ],
                        &rows,
                    );
                    out.push_str(&format!(
                        "{} of {} dead letters shown\n",
                        r.dead_letters.len(),
                        r.total
                    ));
                    Ok(out)
                }
            })
            .await
        }
        DlqCommand::Requeue {
            client,
            messages,
            all,
            json,
        } => {
            let messages = addresses(&messages)?;
            let r = admin(&client)?
                .requeue(pb::RequeueRequest { messages, all })
                .await
                .map_err(explain)?
                .into_inner();
            print_outcomes("requeued", &r, json)
        }
        DlqCommand::Discard {
            client,
            messages,
            reason,
            json,
        } => {
            let messages = addresses(&messages)?;
            let r = admin(&client)?
                .discard(pb::DiscardRequest { messages, reason })
                .await
                .map_err(explain)?
                .into_inner();
            print_outcomes("discarded", &r, json)
        }
    }
}

pub async fn message(args: MessageArgs) -> Result<()> {
    let MessageCommand::Show { client, id, json } = args.command;
    let (sender_node, message_id) = match id.split_once('/') {
        Some((s, i)) => (s.to_string(), i.to_string()),
        None => (String::new(), id.clone()),
    };
    let m = admin(&client)?
        .get_message(pb::GetMessageRequest {
            sender_node,
            message_id,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        print!(
            "{}",
            pretty(&json!({
                "sender_node": m.sender_node, "message_id": m.message_id,
                "kind": kind_name(m.kind), "recipient_node": m.recipient_node,
                "side": m.side, "state": m.state, "case_reference": m.case_reference,
                "sender_principal": m.sender_principal,
                "payload_length": m.payload_length, "content_type": m.content_type,
                "created_at_ms": m.created_at_ms, "expires_at_ms": m.expires_at_ms,
                "attempts": m.attempts,
                "history": m.history.iter().map(|e| json!({
                    "at_ms": e.at_ms, "event": e.event, "by": e.by,
                    "attempt": e.attempt, "reason": e.reason,
                })).collect::<Vec<_>>(),
            }))
        );
        return Ok(());
    }
    let (sender, recipient) = (escape(&m.sender_node), escape(&m.recipient_node));
    println!(
        "message {sender}/{}: {} ({})",
        escape(&m.message_id),
        escape(&m.state),
        escape(&m.side)
    );
    println!("  kind:         {}", kind_name(m.kind));
    println!("  from → to:    {sender} → {recipient}");
    if !m.case_reference.is_empty() {
        println!("  case:         {}", escape(&m.case_reference));
    }
    println!("  submitted by: {}", escape(&m.sender_principal));
    println!(
        "  content:      {} ({} bytes, not shown to operators)",
        escape(&m.content_type),
        m.payload_length
    );
    println!("  created:      {}", when(m.created_at_ms));
    println!("  expires:      {}", when(m.expires_at_ms));
    if m.side == "custody" {
        println!("  attempts:     {}", m.attempts);
    }
    println!("  history:");
    let rows: Vec<Vec<String>> = m
        .history
        .iter()
        .map(|e| {
            vec![
                format!("    {}", when(e.at_ms)),
                e.event.clone(),
                e.by.clone(),
                if e.attempt > 0 {
                    e.attempt.to_string()
                } else {
                    String::new()
                },
                e.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["    TIME", "EVENT", "BY", "ATTEMPT", "REASON"], &rows)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(65_000), "1m05s");
        assert_eq!(age(2 * 3600 * 1000 + 600_000), "2h10m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }
}
