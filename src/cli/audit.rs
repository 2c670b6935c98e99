//! Auditors' subcommands: `export` (fetch a receipt bundle), `verify` (check
//! a bundle offline), `audit verify` (check a stopped node's store) and
//! `audit checkpoints` (fetch the checkpoints a node holds).

use super::client_cmds::{ClientArgs, explain};
use crate::audit::{Check, CheckpointsFile, Report, bundle, case_bundle, store_check};
use crate::client::Connection;
use crate::config::Federation;
use crate::crypto::Keyring;
use crate::devfed::AUDITOR_NAME;
use crate::model::SignedCheckpoint;
use crate::pb;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The message id. The call is made as the `auditor` principal of
    /// --dir unless --as names a principal other than the default.
    #[arg(required_unless_present = "case")]
    pub id: Option<String>,
    /// Export every message this node sent or received under this case
    /// reference, in one case bundle (instead of one message).
    #[arg(long = "case", value_name = "CASE", conflicts_with_all = ["id", "sender"])]
    pub case: Option<String>,
    /// The node that sent the message (default: the node you call).
    #[arg(long)]
    pub sender: Option<String>,
    /// Include the payload (only if the node allows it).
    #[arg(long)]
    pub payload: bool,
    /// Where to write the bundle (JSON).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// The auditor's connection: from --dir, the `auditor` principal's
/// certificate unless `--as` names another one (or --cert/--key are given).
fn auditor_connection(client: &ClientArgs) -> Result<Connection> {
    client.connection_as(AUDITOR_NAME)
}

/// Fetches a bundle as an auditor.
pub async fn export(args: ExportArgs) -> Result<()> {
    let mut client = auditor_connection(&args.client)?.audit()?;
    if let Some(case) = &args.case {
        return export_case(&mut client, case, &args).await;
    }
    let id = args.id.clone().unwrap_or_default();
    let response = client
        .get_bundle(pb::GetBundleRequest {
            sender_node: args.sender.clone().unwrap_or_default(),
            message_id: id.clone(),
            include_payload: args.payload,
        })
        .await
        .map_err(explain)?
        .into_inner();
    std::fs::write(&args.output, &response.bundle_json)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote the receipt bundle of {} to {} ({} bytes); check it with `cluebridge verify {}`",
        id,
        args.output.display(),
        response.bundle_json.len(),
        args.output.display()
    );
    Ok(())
}

/// The most messages one case bundle holds.
const MAX_CASE_MESSAGES: usize = 10_000;

/// Writes the case bundle of `case`: the receipt bundle of every message
/// the node holds under it.
async fn export_case(
    client: &mut pb::audit_client::AuditClient<tonic::transport::Channel>,
    case: &str,
    args: &ExportArgs,
) -> Result<()> {
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                case_reference: case.to_string(),
                limit: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(explain)?
            .into_inner();
        listed.extend(page.messages);
        if listed.len() > MAX_CASE_MESSAGES {
            bail!(
                "case {case} holds more than {MAX_CASE_MESSAGES} messages; export them one by one"
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if listed.is_empty() {
        bail!("the node holds no message under case {case}");
    }
    let mut bundles = Vec::with_capacity(listed.len());
    for m in &listed {
        let text = client
            .get_bundle(pb::GetBundleRequest {
                sender_node: m.sender_node.clone(),
                message_id: m.message_id.clone(),
                include_payload: args.payload,
            })
            .await
            .map_err(explain)?
            .into_inner()
            .bundle_json;
        let b: bundle::Bundle = serde_json::from_str(&text)
            .with_context(|| format!("the node's bundle of {} does not parse", m.message_id))?;
        bundles.push(b);
    }
    let node = bundles[0].audit.node.clone();
    let case_bundle = case_bundle::CaseBundle::new(case, &node, bundles);
    let text = serde_json::to_string_pretty(&case_bundle)?;
    std::fs::write(&args.output, &text)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote the case bundle of {case} ({} message{}) to {} ({} bytes); check it with `cluebridge verify {}`",
        listed.len(),
        if listed.len() == 1 { "" } else { "s" },
        args.output.display(),
        text.len(),
        args.output.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle file written by `cluebridge export`.
    pub bundle: PathBuf,
    /// Federation trust list whose keys the bundle's keys must be.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Checkpoints of the exporting node held by a peer (written by
    /// `cluebridge audit checkpoints`); may be repeated.
    #[arg(long)]
    pub witnessed: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn load_trust(path: Option<&Path>) -> Result<Option<Keyring>> {
    path.map(|p| {
        Federation::load(p)
            .map(|f| f.keyring)
            .with_context(|| format!("cannot use the trust list {}", p.display()))
    })
    .transpose()
}

fn load_witnessed(paths: &[PathBuf]) -> Result<Vec<SignedCheckpoint>> {
    let mut out = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        out.extend(CheckpointsFile::parse(&text).with_context(|| p.display().to_string())?);
    }
    Ok(out)
}

/// Prints a report; its details quote the evidence (subjects, reasons,
/// node ids), so they are escaped (see `render`).
fn finish(report: &Report, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            super::escape_json(&serde_json::to_string_pretty(report)?)
        );
    } else {
        print!("{}", super::escape_block(&report.render()));
    }
    if !report.passed {
        let first = report
            .first_failure()
            .map(|c| format!("{}: {}", c.name, c.detail))
            .unwrap_or_default();
        bail!("verification failed at {first}");
    }
    Ok(())
}

/// Verifies a bundle offline; fails unless every check passes.
pub fn verify(args: VerifyArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let trust = load_trust(args.trust.as_deref())?;
    let witnessed = load_witnessed(&args.witnessed)?;
    let witnessed = (!args.witnessed.is_empty()).then_some(witnessed.as_slice());
    let report = if case_bundle::is_case_bundle(&text) {
        case_bundle::verify(&text, trust.as_ref(), witnessed)
    } else {
        bundle::verify(&text, trust.as_ref(), witnessed)
    };
    finish(&report, args.json)
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check a stopped node's whole store against its audit chain.
    Verify(StoreVerifyArgs),
    /// Fetch the checkpoints a node holds (its own and those it witnessed).
    Checkpoints(CheckpointsArgs),
}

#[derive(Debug, clap::Args)]
pub struct StoreVerifyArgs {
    /// The node's data directory (the node must be stopped).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Federation trust list: also checks every signature in the store.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// The node's id (default: as recorded with its checkpoints).
    #[arg(long)]
    pub node: Option<String>,
    /// Checkpoints of this node held by a peer (written by `cluebridge
    /// audit checkpoints`); may be repeated. Needs --trust.
    #[arg(long, requires = "trust")]
    pub witnessed: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckpointsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only checkpoints of this node (default: all).
    #[arg(long)]
    pub of: Option<String>,
    /// Where to write them (JSON).
    #[arg(short, long)]
    pub output: PathBuf,
}

pub async fn run(args: AuditArgs) -> Result<()> {
    match args.command {
        AuditCommand::Verify(a) => verify_store(a),
        AuditCommand::Checkpoints(a) => checkpoints(a).await,
    }
}

fn verify_store(args: StoreVerifyArgs) -> Result<()> {
    if !holds_a_store(&args.data_dir) {
        bail!(
            "{} holds no node store (expected the data_dir of a node file)",
            args.data_dir.display()
        );
    }
    let trust = load_trust(args.trust.as_deref())?;
    let witnessed = load_witnessed(&args.witnessed)?;
    // Read-only: the journal is replayed into an index in memory, so a
    // node whose disk is full or mounted read-only can be checked, and
    // nothing in its data directory changes.
    let (store, notes) = Store::open_read_only(&args.data_dir)
        .with_context(|| format!("cannot read the store in {}", args.data_dir.display()))?;
    let witnessed = (!args.witnessed.is_empty()).then_some(witnessed.as_slice());
    let mut report =
        store_check::verify_store(&store, trust.as_ref(), args.node.as_deref(), witnessed);
    report.push(match notes.torn_tail {
        None => Check::pass("journal", format!("{} records, each whole", notes.records)),
        Some(at) => Check::pass(
            "journal",
            format!(
                "{} records; it ends in an incomplete record at {at} (a write a crash cut \
                 short, never acknowledged; the node drops it at its next start)",
                notes.records
            ),
        ),
    });
    report.push(match store.compare_index() {
        Ok(None) => Check::pass("index", "the node's index agrees with its journal"),
        Ok(Some(tree)) => Check::fail(
            "index",
            format!(
                "the node's index differs from its journal in the {tree} tree: it was edited \
                 or damaged; `cluebridge store reindex --data-dir {}` rebuilds it from the \
                 journal (with the node stopped)",
                args.data_dir.display()
            ),
        ),
        Err(e) => Check::fail("index", format!("cannot compare the index: {e}")),
    });
    store.close();
    finish(&report, args.json)
}

async fn checkpoints(args: CheckpointsArgs) -> Result<()> {
    let node = args
        .client
        .node
        .clone()
        .context("--node is required: the node whose checkpoints you fetch")?;
    let mut client = auditor_connection(&args.client)?.audit()?;
    let response = client
        .get_checkpoints(pb::GetCheckpointsRequest {
            node: args.of.clone().unwrap_or_default(),
            from_seq: 0,
            limit: 0,
            head_only: false,
        })
        .await
        .map_err(explain)?
        .into_inner();
    let held: Vec<SignedCheckpoint> = response
        .checkpoints
        .into_iter()
        .map(|c| SignedCheckpoint {
            checkpoint: c.checkpoint,
            signature: c.signature,
        })
        .collect();
    let file = CheckpointsFile::new(&node, &held)?;
    std::fs::write(&args.output, serde_json::to_string_pretty(&file)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} checkpoints held by {node} to {}",
        held.len(),
        args.output.display()
    );
    Ok(())
}

/// Whether `dir` holds a node's store: its journal.
fn holds_a_store(dir: &std::path::Path) -> bool {
    dir.join(crate::store::JOURNAL_DIR).is_dir()
}
