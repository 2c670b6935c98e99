//! `cluebridge followups`: what this agency awaits and owes, overdue
//! first. A table for people, `--json` for scripts.

use super::client_cmds::{ClientArgs, explain};
use super::ops::{kind_name, or_dash, table, when};
use super::render::escape_json;
use crate::devfed::CLIENT_NAME;
use crate::model::rectification::outcome_name;
use crate::pb;
use anyhow::{Context, Result, bail};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct FollowUpsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only follow-ups past their reply-by deadline with no final feedback.
    #[arg(long)]
    pub overdue: bool,
    /// Only what this agency owes (messages it received); default: both
    /// what it owes and what it awaits.
    #[arg(long, conflicts_with = "awaiting")]
    pub owed: bool,
    /// Only what this agency awaits (messages it sent).
    #[arg(long)]
    pub awaiting: bool,
    /// Only this state: awaiting_feedback, overdue, answered, answered_late
    /// (repeat for several).
    #[arg(long = "state", value_name = "STATE", conflicts_with = "overdue")]
    pub states: Vec<String>,
    /// Only this case reference.
    #[arg(long = "case", value_name = "CASE")]
    pub case_reference: Option<String>,
    /// Only follow-ups with this node (recipient or sender).
    #[arg(long)]
    pub peer: Option<String>,
    /// Only deadlines before this time: an RFC 3339 time, a date (the end
    /// of that day, UTC) or a span from now (7d: what falls due within a
    /// week, overdue ones included).
    #[arg(long, value_name = "WHEN")]
    pub due_before: Option<String>,
    /// Show at most this many.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: FollowUpsArgs) -> Result<()> {
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let due_before_ms = match &args.due_before {
        Some(text) => super::when::parse_when(text, crate::now_ms()).context("--due-before")?,
        None => 0,
    };
    let mut client = args.client.connection_as(CLIENT_NAME)?.broker()?;
    let mut request = pb::ListFollowUpsRequest {
        states: if args.overdue {
            vec!["overdue".into()]
        } else {
            args.states.clone()
        },
        side: match (args.owed, args.awaiting) {
            (true, _) => "owed".into(),
            (_, true) => "awaiting".into(),
            _ => String::new(),
        },
        peer: args.peer.clone().unwrap_or_default(),
        case_reference: args.case_reference.clone().unwrap_or_default(),
        due_before_ms,
        page_size: args.limit.min(1000) as u32,
        ..Default::default()
    };
    let mut found = Vec::new();
    loop {
        let page = client
            .list_follow_ups(request.clone())
            .await
            .map_err(explain)?
            .into_inner();
        found.extend(page.follow_ups);
        if page.next_page_token.is_empty() || found.len() >= args.limit {
            break;
        }
        request.page_token = page.next_page_token;
    }
    found.truncate(args.limit);
    if args.json {
        let list: Vec<_> = found.iter().map(as_json).collect();
        let text = serde_json::to_string_pretty(&list)?;
        println!("{}", escape_json(&text));
    } else {
        print!("{}", follow_up_table(&found));
    }
    Ok(())
}

pub(super) fn answers_line(f: &pb::FollowUp) -> String {
    let Some(last) = f.answers.last() else {
        return "-".into();
    };
    let outcomes: Vec<String> = last
        .outcomes
        .iter()
        .map(|o| format!("item {} {}", o.item, outcome_name(o.outcome)))
        .collect();
    format!(
        "{} ({}{}){}{}",
        last.feedback_id,
        if last.r#final { "final" } else { "interim" },
        if f.answers.len() > 1 {
            format!(", {} in all", f.answers.len())
        } else {
            String::new()
        },
        if outcomes.is_empty() { "" } else { ": " },
        outcomes.join(", ")
    )
}

fn follow_up_table(found: &[pb::FollowUp]) -> String {
    if found.is_empty() {
        return "no follow-ups match\n".into();
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            vec![
                f.state.clone(),
                f.side.clone(),
                format!("{}/{} ({})", f.sender_node, f.message_id, kind_name(f.kind)),
                f.peer.clone(),
                or_dash(&f.case_reference),
                when(f.due_ms),
                answers_line(f),
            ]
        })
        .collect();
    table(
        &[
            "STATE",
            "SIDE",
            "MESSAGE",
            "PEER",
            "CASE",
            "DUE",
            "LAST FEEDBACK",
        ],
        &rows,
    )
}

pub(super) fn as_json(f: &pb::FollowUp) -> serde_json::Value {
    json!({
        "sender_node": f.sender_node,
        "message_id": f.message_id,
        "kind": kind_name(f.kind),
        "side": f.side,
        "peer": f.peer,
        "case_reference": f.case_reference,
        "created_at_ms": f.created_at_ms,
        "due_ms": (f.due_ms != 0).then_some(f.due_ms),
        "state": f.state,
        "changed_at_ms": f.changed_at_ms,
        "answers": f.answers.iter().map(|a| json!({
            "feedback_id": a.feedback_id,
            "at_ms": a.at_ms,
            "final": a.r#final,
            "outcomes": a.outcomes.iter().map(|o| json!({
                "item": o.item,
                "outcome": outcome_name(o.outcome),
                "reason": o.reason,
                "expected_by_ms": (o.expected_by_ms != 0).then_some(o.expected_by_ms),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
