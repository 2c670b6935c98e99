//! `cluebridge case C`: everything this agency sent or received under a
//! case reference, newest first, with receipts and follow-ups. Never
//! payloads.

use super::client_cmds::{ClientArgs, explain};
use super::followups::{answers_line, as_json};
use super::ops::{kind_name, when};
use super::render::{escape, escape_json};
use crate::devfed::CLIENT_NAME;
use crate::model::SignedReceipt;
use crate::pb;
use anyhow::{Result, bail};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct CaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The case reference.
    pub case_reference: String,
    /// Show at most this many messages.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// JSON for scripts instead of a timeline.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CaseArgs) -> Result<()> {
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let mut client = args.client.connection_as(CLIENT_NAME)?.broker()?;
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .get_case(pb::GetCaseRequest {
                case_reference: args.case_reference.clone(),
                limit: args.limit.min(1000) as u32,
                page_token,
            })
            .await
            .map_err(explain)?
            .into_inner();
        found.extend(page.messages);
        if page.next_page_token.is_empty() || found.len() >= args.limit {
            break;
        }
        page_token = page.next_page_token;
    }
    found.truncate(args.limit);
    if args.json {
        let list: Vec<_> = found.iter().map(message_json).collect();
        println!("{}", escape_json(&serde_json::to_string_pretty(&list)?));
        return Ok(());
    }
    print!("{}", timeline(&args, &found));
    Ok(())
}

fn timeline(args: &CaseArgs, found: &[pb::CaseMessage]) -> String {
    if found.is_empty() {
        return format!(
            "no message under case {} at this node\n",
            escape(&args.case_reference)
        );
    }
    let keyring = args.client.keyring();
    let mut out = format!(
        "case {}: {} message(s), newest first\n",
        escape(&args.case_reference),
        found.len()
    );
    for m in found {
        let Some(s) = &m.message else { continue };
        out.push_str(&format!(
            "\n{}  {} {} {}/{} {} {}: {}\n",
            when(s.created_at_ms),
            s.direction,
            kind_name(s.kind),
            escape(&s.sender_node),
            escape(&s.message_id),
            if s.direction == "sent" { "to" } else { "from" },
            escape(&s.peer),
            s.state
        ));
        if !s.subject.is_empty() {
            out.push_str(&format!("  subject: {}\n", escape(&s.subject)));
        }
        let receipts: Vec<_> = m
            .receipts
            .iter()
            .cloned()
            .map(SignedReceipt::from_wire)
            .collect();
        out.push_str(&super::timeline(&receipts, keyring.as_ref()));
        if let Some(f) = &m.follow_up {
            out.push_str(&format!(
                "  follow-up: {} (due {}); last feedback: {}\n",
                f.state,
                when(f.due_ms),
                escape(&answers_line(f))
            ));
        }
    }
    out
}

fn message_json(m: &pb::CaseMessage) -> serde_json::Value {
    let s = m.message.clone().unwrap_or_default();
    let receipts: Vec<_> = m
        .receipts
        .iter()
        .filter_map(|r| SignedReceipt::from_wire(r.clone()).open().ok())
        .map(|r| {
            json!({
                "kind": r.kind.as_str(),
                "issuer_node": r.issuer_node,
                "issued_at_ms": r.issued_at_ms,
                "attempt": r.attempt,
                "reason": r.reason,
            })
        })
        .collect();
    json!({
        "sender_node": s.sender_node,
        "message_id": s.message_id,
        "kind": kind_name(s.kind),
        "direction": s.direction,
        "peer": s.peer,
        "subject": s.subject,
        "state": s.state,
        "created_at_ms": s.created_at_ms,
        "receipts": receipts,
        "follow_up": m.follow_up.as_ref().map(as_json),
    })
}
