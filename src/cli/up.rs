//! `cluebridge up`: a local four-agency development federation in one
//! process, created on first use; `--demo` walks a message round trip.

use crate::client::Connection;
use crate::config::NodeConfig;
use crate::devfed::{APPROVER_NAME, DevFederation, NODES};
use crate::model::rectification::{FEEDBACK_TYPE, SUGGESTION_TYPE};
use crate::model::{MessageKind, SignedReceipt};
use crate::node::RunningNode;
use crate::pb;
use anyhow::{Context, Result, bail};
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Streaming;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory of the development federation: CA, keys, certificates,
    /// federation.toml, node files and data. Created if absent.
    #[arg(long, default_value = ".cluebridge-dev")]
    pub dir: PathBuf,
    /// Port of the first node when creating the federation; the others
    /// follow (discipline, personnel, public_security, judicial).
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Send a clue transfer and a rectification suggestion, receive them,
    /// reject one, acknowledge and answer the other, print every receipt
    /// timeline, and exit.
    #[arg(long)]
    pub demo: bool,
}

pub async fn run(args: UpArgs) -> Result<()> {
    // Before anything is created: keys, node files and data are private.
    crate::file_modes::restrict_umask();
    let dev = match DevFederation::open(&args.dir) {
        Some(dev) => {
            println!("using the development federation in {}", args.dir.display());
            let reissued = dev.reissue_node_certs_without_dns_name()?;
            if !reissued.is_empty() {
                println!(
                    "reissued the TLS certificates of {} to carry their DNS names",
                    reissued.join(", ")
                );
            }
            dev
        }
        None => {
            let p = args.base_port;
            let ports = [p, p + 1, p + 2, p + 3];
            let dev = DevFederation::create(&args.dir, ports, |_| {})?;
            println!(
                "created a development federation in {} (CA, keys, certificates, node files)",
                args.dir.display()
            );
            dev
        }
    };
    let nodes = start_all(&dev).await?;
    println!();
    for (id, node) in &nodes {
        println!(
            "  {:<24} https://{}   (node file {})",
            format!("node {id}"),
            node.addr,
            dev.node_file(id).display()
        );
    }
    for (id, node) in &nodes {
        if let Some(addr) = node.metrics_addr {
            println!("  {:<24} http://{addr}/metrics", format!("metrics {id}"));
        }
    }
    let dir = shell_path(&args.dir);
    println!(
        "\nTry, in another terminal:\n\
         \x20 cargo run --release -- send --dir {dir} --node discipline --to public_security --kind clue_transfer --subject \"Clue on case 12\" --payload \"report text\"\n\
         \x20 cargo run --release -- receive --dir {dir} --node public_security --ack\n\
         \x20 cargo run --release -- status --dir {dir} --node discipline <MESSAGE-ID>\n\
         \x20 cargo run --release -- watch --dir {dir} --node discipline\n\
         Operators (certificate of the `operator` principal):\n\
         \x20 cargo run --release -- queues --dir {dir} --node discipline\n\
         \x20 cargo run --release -- peers --dir {dir} --node discipline\n\
         \x20 cargo run --release -- dlq list --dir {dir} --node public_security\n\
         \x20 cargo run --release -- console --dir {dir} --node discipline --node public_security   # a web page\n\
         Auditors (certificate of the `auditor` principal):\n\
         \x20 cargo run --release -- export --dir {dir} --node discipline <MESSAGE-ID> -o bundle.json\n\
         \x20 cargo run --release -- verify bundle.json --trust {dir}/federation.toml\n\
         \x20 cargo run --release -- console --dir {dir} --node discipline --as auditor --listen 127.0.0.1:7399\n\
         Follow-up (suggestions to personnel wait for discipline's `approver` principal):\n\
         \x20 cargo run --release -- pending --dir {dir} --node discipline\n\
         \x20 cargo run --release -- approve --dir {dir} --node discipline <MESSAGE-ID>\n\
         \x20 cargo run --release -- followups --dir {dir} --node discipline --overdue\n\
         \x20 cargo run --release -- case --dir {dir} --node discipline DEMO-2026-001\n"
    );
    let result = if args.demo {
        demo(&dev).await
    } else {
        println!("running; press Ctrl-C to stop");
        super::shutdown_signal().await;
        Ok(())
    };
    for (id, node) in nodes {
        if let Err(e) = node.stop().await {
            eprintln!("node {id} stopped with an error: {e}");
        }
    }
    result
}

fn shell_path(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains(' ') { format!("'{s}'") } else { s }
}

async fn start_all(dev: &DevFederation) -> Result<Vec<(String, RunningNode)>> {
    let mut nodes = Vec::new();
    for kind in NODES {
        let id = kind.as_str();
        let config = NodeConfig::load(&dev.node_file(id))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "node {id} cannot listen on {} (is another `cluebridge up` running?)",
                    config.listen
                )
            })?;
        nodes.push((id.to_string(), RunningNode::start(config, listener)?));
    }
    Ok(nodes)
}

struct Agency {
    client: pb::broker_client::BrokerClient<tonic::transport::Channel>,
}

/// The demo's case reference.
const DEMO_CASE: &str = "DEMO-2026-001";

/// The demo's second suggestion must be answered within this long: it
/// goes overdue while the demo watches.
const DEMO_REPLY_WINDOW_MS: u64 = 2_000;

impl Agency {
    fn of(dev: &DevFederation, node: &str) -> Result<Agency> {
        Self::as_principal(dev, node, crate::devfed::CLIENT_NAME)
    }

    fn as_principal(dev: &DevFederation, node: &str, name: &str) -> Result<Agency> {
        Ok(Agency {
            client: Connection::from_files(&dev.client_as(node, name)?)?.broker()?,
        })
    }

    /// Submits a structured rectification suggestion with two items to
    /// personnel (a reply window `reply_in_ms` from now, or the route's).
    async fn suggest(&mut self, id: &str, reply_in_ms: u64) -> Result<()> {
        let s = pb::RectificationSuggestion {
            person_ref: "P-0042".into(),
            case_reference: DEMO_CASE.into(),
            items: vec![
                pb::RectificationItem {
                    kind: pb::ItemKind::Rank as i32,
                    description: "restore the rank withheld after the false report".into(),
                },
                pb::RectificationItem {
                    kind: pb::ItemKind::ProfessionalTitle as i32,
                    description: "restore the professional title withdrawn".into(),
                },
            ],
        };
        let answer = self
            .client
            .submit(pb::SubmitRequest {
                message_id: id.into(),
                kind: MessageKind::RectificationSuggestion.to_wire(),
                recipient_node: "personnel".into(),
                case_reference: DEMO_CASE.into(),
                subject: "Restore what official W. lost to the false report".into(),
                content_type: SUGGESTION_TYPE.into(),
                payload: s.encode_to_vec().into(),
                ttl_seconds: 3600,
                reply_by_ms: if reply_in_ms == 0 {
                    0
                } else {
                    crate::now_ms() + reply_in_ms
                },
                ..Default::default()
            })
            .await
            .with_context(|| format!("submitting {id}"))?
            .into_inner();
        println!(
            "  submitted {id}: rectification_suggestion (2 items) to personnel{}",
            if answer.pending_approval {
                ", waiting for approval"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Approves a waiting submit (as the approver principal).
    async fn approve(&mut self, id: &str) -> Result<()> {
        self.client
            .approve(pb::ApproveRequest {
                message_id: id.into(),
            })
            .await
            .with_context(|| format!("approving {id}"))?;
        println!("  approver approved {id}: signed and sent");
        Ok(())
    }

    /// Answers a suggestion item by item, finally.
    async fn answer(&mut self, id: &str, suggestion: &str) -> Result<()> {
        let outcome = |item, outcome: pb::Outcome, reason: &str| pb::ItemOutcome {
            item,
            outcome: outcome as i32,
            reason: reason.into(),
            expected_by_ms: 0,
        };
        let f = pb::RectificationFeedback {
            outcomes: vec![
                outcome(0, pb::Outcome::Corrected, ""),
                outcome(
                    1,
                    pb::Outcome::PartlyCorrected,
                    "title restored; back pay pending",
                ),
            ],
            r#final: true,
        };
        self.client
            .submit(pb::SubmitRequest {
                message_id: id.into(),
                kind: MessageKind::Feedback.to_wire(),
                recipient_node: "discipline".into(),
                case_reference: DEMO_CASE.into(),
                correlation_id: suggestion.into(),
                subject: "Rank restored, title partly".into(),
                content_type: FEEDBACK_TYPE.into(),
                payload: f.encode_to_vec().into(),
                ttl_seconds: 3600,
                ..Default::default()
            })
            .await
            .with_context(|| format!("submitting {id}"))?;
        println!("  personnel answered {suggestion} item by item ({id})");
        Ok(())
    }

    /// Polls the follow-up of `id` until it is in `state`.
    async fn wait_follow_up(&mut self, id: &str, state: &str) -> Result<pb::FollowUp> {
        for _ in 0..300 {
            let found = self
                .client
                .list_follow_ups(pb::ListFollowUpsRequest {
                    case_reference: DEMO_CASE.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .follow_ups
                .into_iter()
                .find(|f| f.message_id == id && f.state == state);
            if let Some(f) = found {
                return Ok(f);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the follow-up of {id} did not become {state} within 30 s")
    }

    async fn submit(
        &mut self,
        id: &str,
        kind: MessageKind,
        to: &str,
        subject: &str,
        answers: &str,
        payload: &str,
    ) -> Result<()> {
        self.client
            .submit(pb::SubmitRequest {
                message_id: id.into(),
                kind: kind.to_wire(),
                recipient_node: to.into(),
                case_reference: DEMO_CASE.into(),
                correlation_id: answers.into(),
                subject: subject.into(),
                content_type: "text/plain".into(),
                payload: payload.as_bytes().to_vec().into(),
                ttl_seconds: 3600,
                reply_by_ms: 0,
            })
            .await
            .with_context(|| format!("submitting {id}"))?;
        println!("  submitted {id}: {kind} to {to}");
        Ok(())
    }

    /// Receives until message `id` arrives (others stay leased and lapse
    /// back to the inbox) and returns its lease.
    /// The lease of message `id`, with the stream it came on: the lease
    /// ends with that stream, so keep it until the message is settled.
    async fn receive(&mut self, id: &str) -> Result<(pb::LeaseRef, Streaming<pb::Delivery>)> {
        let mut stream = self
            .client
            .receive(pb::ReceiveRequest {
                max_outstanding: 64,
                lease_seconds: 30,
            })
            .await?
            .into_inner();
        loop {
            let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .with_context(|| format!("{id} did not arrive within 20 s"))?
                .context("stream closed")??;
            if d.message_id == id {
                let lease = pb::LeaseRef {
                    sender_node: d.sender_node,
                    message_id: d.message_id,
                    lease_id: d.lease_id,
                };
                return Ok((lease, stream));
            }
        }
    }

    async fn wait_terminal(&mut self, id: &str) -> Result<pb::GetStatusResponse> {
        for _ in 0..200 {
            let s = self
                .client
                .get_status(pb::GetStatusRequest {
                    message_id: id.into(),
                })
                .await?
                .into_inner();
            if s.state >= 3 {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{id} did not reach a final state within 20 s")
    }
}

async fn demo(dev: &DevFederation) -> Result<()> {
    let keyring = crate::config::Federation::load(&dev.dir.join("federation.toml"))?.keyring;
    let run = crate::now_ms();
    let clue = format!("demo-clue-{run}");
    let suggestion = format!("demo-rectification-{run}");
    let feedback = format!("demo-feedback-{run}");
    let late = format!("demo-rectification-due-{run}");
    let mut discipline = Agency::of(dev, "discipline")?;
    let mut approver = Agency::as_principal(dev, "discipline", APPROVER_NAME)?;
    let mut security = Agency::of(dev, "public_security")?;
    let mut personnel = Agency::of(dev, "personnel")?;

    println!("demo:");
    discipline
        .submit(
            &clue,
            MessageKind::ClueTransfer,
            "public_security",
            "Report on case 12 found to be a frame-up",
            "",
            "Evidence that the report against official W. was fabricated.",
        )
        .await?;
    let (lease, _stream) = security.receive(&clue).await?;
    security
        .client
        .reject(pb::RejectRequest {
            lease: Some(lease),
            reason: "outside our jurisdiction: transfer to the judicial organ".into(),
        })
        .await?;
    println!("  public_security rejected {clue} with a reason");

    // A structured suggestion with two items: four eyes, then personnel.
    discipline.suggest(&suggestion, 0).await?;
    approver.approve(&suggestion).await?;
    let (lease, _stream) = personnel.receive(&suggestion).await?;
    personnel
        .client
        .ack(pb::AckRequest { lease: Some(lease) })
        .await?;
    println!("  personnel acknowledged {suggestion}");
    personnel.answer(&feedback, &suggestion).await?;
    let (lease, _stream) = discipline.receive(&feedback).await?;
    discipline
        .client
        .ack(pb::AckRequest { lease: Some(lease) })
        .await?;
    println!("  discipline acknowledged feedback {feedback}");

    for (sender, id) in [
        ("discipline", &clue),
        ("discipline", &suggestion),
        ("personnel", &feedback),
    ] {
        let agency = if sender == "discipline" {
            &mut discipline
        } else {
            &mut personnel
        };
        let s = agency.wait_terminal(id).await?;
        let receipts: Vec<_> = s
            .receipts
            .into_iter()
            .map(SignedReceipt::from_wire)
            .collect();
        println!("\ntimeline of {id} (to {}):", s.recipient_node);
        print!("{}", super::timeline(&receipts, Some(&keyring)));
        for r in &receipts {
            keyring
                .verify_receipt(r)
                .context("a demo receipt does not verify")?;
        }
    }

    // Follow-up: the answered suggestion, and one whose deadline passes.
    let answered = discipline.wait_follow_up(&suggestion, "answered").await?;
    println!("\nfollow-up of {suggestion}: {}", answered.state);
    for a in &answered.answers {
        for o in &a.outcomes {
            println!(
                "  item {}: {}",
                o.item,
                crate::model::rectification::outcome_name(o.outcome)
            );
        }
    }
    discipline.suggest(&late, DEMO_REPLY_WINDOW_MS).await?;
    approver.approve(&late).await?;
    let overdue = discipline.wait_follow_up(&late, "overdue").await?;
    println!(
        "follow-up of {late}: {} (reply by {} passed with no feedback; `cluebridge followups --node discipline --overdue` lists it)",
        overdue.state,
        crate::format_time(overdue.due_ms)
    );
    println!("\ndemo complete: every receipt verified with the federation's public keys");
    Ok(())
}
