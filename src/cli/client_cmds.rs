//! Client subcommands against a running node: send, receive, status, watch.

use super::render::{escape, escape_block};
use crate::client::Connection;
use crate::config::Federation;
use crate::devfed::DevFederation;
use crate::model::{EnvelopeHeader, MessageKind, SentState, SignedReceipt};
use crate::pb;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;

/// How to reach a node. With `--node` alone, everything comes from the
/// development federation in `--dir` (made by `cluebridge up`); the other
/// flags override or replace it for a real federation.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Node to talk to, by id (e.g. discipline); its endpoint and your
    /// client certificate are looked up in --dir. Its certificate must
    /// carry its DNS name (e.g. discipline.node.cluebridge.internal).
    #[arg(long, env = "CLUEBRIDGE_NODE")]
    pub node: Option<String>,
    /// Development federation directory made by `cluebridge up`.
    #[arg(long, default_value = ".cluebridge-dev", env = "CLUEBRIDGE_DIR")]
    pub dir: PathBuf,
    /// Node endpoint, e.g. https://127.0.0.1:7401 (overrides --dir).
    #[arg(long, env = "CLUEBRIDGE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Federation CA certificate (PEM).
    #[arg(long, env = "CLUEBRIDGE_CA")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM), naming cluebridge://node/<node>/client/<name>.
    #[arg(long, env = "CLUEBRIDGE_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key of your client certificate (PEM).
    #[arg(long, env = "CLUEBRIDGE_KEY")]
    pub key: Option<PathBuf>,
    /// Federation trust list used to verify receipt signatures locally
    /// (default: federation.toml in --dir when present).
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// With --dir: the principal whose certificate to use (default:
    /// backoffice for send/receive/status/watch/followups, operator for
    /// queues/peers/dlq/message, approver for pending/approve).
    #[arg(long = "as", value_name = "PRINCIPAL")]
    pub principal: Option<String>,
}

impl ClientArgs {
    fn connection(&self) -> Result<Connection> {
        self.connection_as(crate::devfed::CLIENT_NAME)
    }

    /// The connection, using principal `default` of the development
    /// federation unless `--as` names another.
    pub(super) fn connection_as(&self, default: &str) -> Result<Connection> {
        let dev = DevFederation::open(&self.dir);
        let name = self.principal.as_deref().unwrap_or(default);
        let dev_files = match (&self.node, &dev) {
            (Some(node), Some(dev)) => Some(dev.client_as(node, name)?),
            _ => None,
        };
        let pick = |flag: &Option<PathBuf>, dev: Option<PathBuf>, name: &str| -> Result<PathBuf> {
            flag.clone().or(dev).with_context(|| {
                format!("--{name} is required (or run `cluebridge up` and pass --node NODE)")
            })
        };
        let endpoint = self
            .endpoint
            .clone()
            .or(dev_files.as_ref().map(|f| f.endpoint.clone()))
            .context("--endpoint is required (or run `cluebridge up` and pass --node NODE)")?;
        let node = self.node.as_deref().context(
            "--node is required: the id of the node you call (its certificate names it)",
        )?;
        // The node's certificate carries its DNS name, whatever host the
        // endpoint names.
        let server_name = crate::crypto::tls::node_dns_name(node)?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(Connection {
            endpoint,
            server_name,
            ca_pem: read(pick(
                &self.ca,
                dev_files.as_ref().map(|f| f.ca.clone()),
                "ca",
            )?)?,
            cert_pem: read(pick(
                &self.cert,
                dev_files.as_ref().map(|f| f.cert.clone()),
                "cert",
            )?)?,
            key_pem: read(pick(
                &self.key,
                dev_files.as_ref().map(|f| f.key.clone()),
                "key",
            )?)?,
        })
    }

    pub(super) fn keyring(&self) -> Option<crate::crypto::Keyring> {
        let path = self
            .trust
            .clone()
            .unwrap_or_else(|| self.dir.join("federation.toml"));
        Federation::load(&path).ok().map(|f| f.keyring)
    }
}

/// Turns a refusal into a message a person can act on. The node's message
/// is escaped: it may quote what a caller sent.
pub(super) fn explain(status: tonic::Status) -> anyhow::Error {
    let message = escape(status.message());
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "node unavailable: {message} (is it running, and is the endpoint right?)"
        ),
        tonic::Code::PermissionDenied => anyhow::anyhow!(
            "permission denied: {message} (use the certificate of a principal that holds the role)"
        ),
        code => anyhow::anyhow!("refused ({code:?}): {message}"),
    }
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Recipient node id, e.g. public_security.
    #[arg(long)]
    pub to: String,
    /// clue_transfer, rectification_suggestion or feedback.
    #[arg(long)]
    pub kind: String,
    /// Short subject line.
    #[arg(long)]
    pub subject: String,
    /// Message id (default: a fresh one). Reusing an id with the same
    /// content is safe: you get the original receipt back.
    #[arg(long)]
    pub id: Option<String>,
    /// Your agency's case reference.
    #[arg(long, default_value = "")]
    pub case: String,
    /// For feedback: the id of the message you answer.
    #[arg(long, default_value = "")]
    pub answers: String,
    /// The payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file.
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Media type of the payload.
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
    /// Time to live in seconds (default: the node's).
    #[arg(long, default_value_t = 0)]
    pub ttl: u64,
    /// When feedback is due: an RFC 3339 time (2026-12-31T17:00:00Z), a
    /// date (2026-12-31: the end of that day, UTC) or a span from now
    /// (30d, 12h). The message then expects feedback, and both agencies
    /// see it overdue after that. Default: the route's reply window, if
    /// it has one; an explicit time may only be earlier.
    #[arg(long, value_name = "WHEN")]
    pub reply_by: Option<String>,
}

pub async fn send(args: SendArgs) -> Result<()> {
    let kind: MessageKind = args.kind.parse()?;
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => bail!("give the payload with --payload TEXT or --payload-file PATH"),
    };
    let reply_by_ms = match &args.reply_by {
        Some(text) => super::when::parse_when(text, crate::now_ms()).context("--reply-by")?,
        None => 0,
    };
    let id = args.id.clone().unwrap_or_else(fresh_id);
    let mut client = args.client.connection()?.broker()?;
    let response = client
        .submit(pb::SubmitRequest {
            message_id: id.clone(),
            kind: kind.to_wire(),
            recipient_node: args.to.clone(),
            case_reference: args.case.clone(),
            correlation_id: args.answers.clone(),
            subject: args.subject.clone(),
            content_type: args.content_type.clone(),
            payload: payload.into(),
            ttl_seconds: args.ttl,
            reply_by_ms,
        })
        .await
        .map_err(explain)?
        .into_inner();
    print_submitted(
        &id,
        &format!("{kind} to {}", args.to),
        response,
        &args.client,
    )
}

/// What a node answered to a submit (or an approval), for people.
pub(super) fn print_submitted(
    id: &str,
    what: &str,
    response: pb::SubmitResponse,
    client: &ClientArgs,
) -> Result<()> {
    if response.pending_approval {
        println!(
            "{} {id} ({what}): nothing is signed or sent until another principal with the \
             approve role approves it (`cluebridge approve {id}`)",
            if response.duplicate {
                "already waiting for approval"
            } else {
                "waiting for approval"
            }
        );
        return Ok(());
    }
    let receipt = response
        .accepted
        .map(SignedReceipt::from_wire)
        .context("node answered without a receipt")?;
    println!(
        "{} {id} ({what})",
        if response.duplicate {
            "already accepted"
        } else {
            "accepted"
        }
    );
    print!("{}", super::timeline(&[receipt], client.keyring().as_ref()));
    Ok(())
}

/// A message id unique enough for hand-typed sends.
pub fn fresh_id() -> String {
    use rand::Rng;
    format!(
        "msg-{}-{:06x}",
        crate::now_ms(),
        rand::thread_rng().gen_range(0..0x1000000)
    )
}

#[derive(Debug, clap::Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Give up waiting after this many seconds without a message.
    #[arg(long, default_value_t = 10)]
    pub wait: u64,
    /// Acknowledge each message after printing it.
    #[arg(long, conflicts_with = "reject")]
    pub ack: bool,
    /// Reject each message with this reason after printing it.
    #[arg(long, value_name = "REASON")]
    pub reject: Option<String>,
    /// Lease length in seconds (default: the node's).
    #[arg(long, default_value_t = 0)]
    pub lease: u32,
}

pub async fn receive(args: ReceiveArgs) -> Result<()> {
    let mut client = args.client.connection()?.broker()?;
    let mut stream = client
        .receive(pb::ReceiveRequest {
            max_outstanding: 1,
            lease_seconds: args.lease,
        })
        .await
        .map_err(explain)?
        .into_inner();
    let mut received = 0;
    while received < args.count {
        let next = tokio::time::timeout(Duration::from_secs(args.wait), stream.next()).await;
        let delivery = match next {
            Err(_) => {
                if received == 0 {
                    bail!("no message arrived within {} s", args.wait);
                }
                break;
            }
            Ok(None) => bail!("the node closed the stream"),
            Ok(Some(d)) => d.map_err(explain)?,
        };
        received += 1;
        let envelope = delivery
            .envelope
            .clone()
            .context("delivery without envelope")?;
        let header = EnvelopeHeader::decode(&envelope.header)?;
        // Everything below came from the network: escaped (see `render`).
        println!(
            "message {} from {} (attempt {})",
            escape(&header.message_id),
            escape(&header.sender_node),
            delivery.attempt
        );
        println!("  kind:         {}", header.kind);
        println!("  subject:      {}", escape(&header.subject));
        if !header.case_reference.is_empty() {
            println!("  case:         {}", escape(&header.case_reference));
        }
        if !header.correlation_id.is_empty() {
            println!("  answers:      {}", escape(&header.correlation_id));
        }
        println!("  submitted by: {}", escape(&header.sender_principal));
        println!(
            "  content type: {} ({} bytes)",
            escape(&header.content_type),
            header.payload_length
        );
        match std::str::from_utf8(&envelope.payload) {
            // A block: its lines are kept, each indented under the label,
            // so that a payload cannot pass for the next message's lines.
            Ok(text) if text.len() <= 4096 => println!(
                "  payload:      {}",
                escape_block(text).replace('\n', "\n                ")
            ),
            _ => println!(
                "  payload:      ({} bytes, not shown)",
                envelope.payload.len()
            ),
        }
        let lease = Some(pb::LeaseRef {
            sender_node: delivery.sender_node.clone(),
            message_id: delivery.message_id.clone(),
            lease_id: delivery.lease_id,
        });
        if args.ack {
            client
                .ack(pb::AckRequest { lease })
                .await
                .map_err(explain)?;
            println!("  -> acknowledged");
        } else if let Some(reason) = &args.reject {
            client
                .reject(pb::RejectRequest {
                    lease,
                    reason: reason.clone(),
                })
                .await
                .map_err(explain)?;
            println!("  -> rejected: {}", escape(reason));
        } else {
            client
                .release(pb::ReleaseRequest { lease, delay_ms: 0 })
                .await
                .map_err(explain)?;
            println!("  -> released (pass --ack or --reject REASON to settle it)");
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The message id you submitted.
    pub id: String,
}

fn state_name(n: i32) -> &'static str {
    SentState::from_wire(n).map_or("unknown", |s| s.as_str())
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let mut client = args.client.connection()?.broker()?;
    let s = client
        .get_status(pb::GetStatusRequest {
            message_id: args.id.clone(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    println!(
        "message {} to {}: {}",
        escape(&s.message_id),
        escape(&s.recipient_node),
        state_name(s.state)
    );
    let receipts: Vec<_> = s
        .receipts
        .into_iter()
        .map(SignedReceipt::from_wire)
        .collect();
    print!(
        "{}",
        super::timeline(&receipts, args.client.keyring().as_ref())
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Resume after this cursor (printed with every receipt).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Exit after this many receipts (default: follow until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
}

pub async fn watch(args: WatchArgs) -> Result<()> {
    let mut client = args.client.connection()?.broker()?;
    let mut stream = client
        .watch_receipts(pb::WatchReceiptsRequest {
            after_cursor: args.after,
        })
        .await
        .map_err(explain)?
        .into_inner();
    let keyring = args.client.keyring();
    let mut seen = 0;
    while let Some(event) = stream.next().await {
        let event = event.map_err(explain)?;
        if let Some(o) = &event.overdue {
            println!(
                "cursor {} message {} to {} is overdue: its reply-by deadline {} passed with no final feedback",
                event.cursor,
                escape(&o.message_id),
                escape(&o.recipient_node),
                super::ops::when(o.due_ms)
            );
        } else if let Some(receipt) = event.receipt.map(SignedReceipt::from_wire) {
            let r = receipt.open()?;
            print!(
                "cursor {} message {} now {}\n{}",
                event.cursor,
                escape(&r.message_id),
                state_name(event.state),
                super::timeline(&[receipt], keyring.as_ref())
            );
        } else {
            continue;
        }
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}
