//! `cluebridge pending` and `cluebridge approve`: the second pair of eyes
//! on routes that require approval.

use super::client_cmds::{ClientArgs, explain, print_submitted};
use super::ops::{kind_name, or_dash, table, when};
use super::render::{escape, escape_json};
use crate::devfed::APPROVER_NAME;
use crate::pb;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct PendingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The id of the waiting message (see `cluebridge pending`).
    pub id: String,
    /// Decline it instead, for good, with this reason (kept in the audit
    /// chain); it is never sent.
    #[arg(long, value_name = "REASON")]
    pub decline: Option<String>,
}

pub async fn pending(args: PendingArgs) -> Result<()> {
    let mut client = args.client.connection_as(APPROVER_NAME)?.broker()?;
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_pending(pb::ListPendingRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(explain)?
            .into_inner();
        found.extend(page.pending);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if args.json {
        let list: Vec<_> = found
            .iter()
            .map(|p| {
                json!({
                    "message_id": p.message_id,
                    "kind": kind_name(p.kind),
                    "recipient_node": p.recipient_node,
                    "case_reference": p.case_reference,
                    "subject": p.subject,
                    "content_type": p.content_type,
                    "payload_sha256": hex::encode(&p.payload_sha256),
                    "payload_length": p.payload_length,
                    "submitted_by": p.submitted_by,
                    "submitted_at_ms": p.submitted_at_ms,
                    "reply_by_ms": (p.reply_by_ms != 0).then_some(p.reply_by_ms),
                })
            })
            .collect();
        println!("{}", escape_json(&serde_json::to_string_pretty(&list)?));
        return Ok(());
    }
    if found.is_empty() {
        println!("nothing waits for approval");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|p| {
            vec![
                p.message_id.clone(),
                kind_name(p.kind).to_string(),
                p.recipient_node.clone(),
                or_dash(&p.case_reference),
                p.submitted_by.clone(),
                when(p.submitted_at_ms),
                p.subject.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "MESSAGE",
                "KIND",
                "TO",
                "CASE",
                "SUBMITTED BY",
                "SUBMITTED",
                "SUBJECT"
            ],
            &rows
        )
    );
    Ok(())
}

pub async fn approve(args: ApproveArgs) -> Result<()> {
    let mut client = args.client.connection_as(APPROVER_NAME)?.broker()?;
    if let Some(reason) = args.decline {
        client
            .decline(pb::DeclineRequest {
                message_id: args.id.clone(),
                reason,
            })
            .await
            .map_err(explain)?;
        println!(
            "declined {}: it will never be sent; the decline is in the audit chain",
            escape(&args.id)
        );
        return Ok(());
    }
    let response = client
        .approve(pb::ApproveRequest {
            message_id: args.id.clone(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    print_submitted(&args.id, "approved", response, &args.client)
}
