//! The follow-up and case pages: what the node awaits and owes (overdue
//! first), and one case whole. Both are the node's answers to
//! `ListFollowUps` and `GetCase` under the console's principal (the node
//! refuses principals without the submit, receive or audit role); never a
//! payload.
//!
//! Routes: `GET /nodes/NODE/follow-ups[?overdue=1]` and
//! `GET /nodes/NODE/cases/CASE`.

use super::Console;
use super::nodes::{Refusal, call};
use super::pages::{Refused, chrome, node_of, respond};
use super::session::SessionInfo;
use super::views::{self, kind_name, message_path, node_path, seg};
use crate::cli::ops::when;
use crate::model::rectification::outcome_name;
use crate::pb;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

/// Follow-ups listed on one page.
const FOLLOW_UPS_SHOWN: u32 = 100;
/// Messages of a case shown on one page.
const CASE_SHOWN: u32 = 100;

pub fn case_path(node: &str, case: &str) -> String {
    format!("{}/{}", node_path(node, "cases"), seg(case))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct FollowUpQuery {
    #[serde(default)]
    pub overdue: String,
    #[serde(default)]
    pub page: String,
}

pub async fn follow_ups(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(node): Path<String>,
    Query(q): Query<FollowUpQuery>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    let overdue = !q.overdue.is_empty();
    let list = call(node.broker().list_follow_ups(pb::ListFollowUpsRequest {
        states: if overdue {
            vec!["overdue".into()]
        } else {
            Vec::new()
        },
        page_size: FOLLOW_UPS_SHOWN,
        page_token: q.page.clone(),
        ..Default::default()
    }))
    .await;
    Ok(respond(
        status_of(&list),
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("Follow-ups at {}", node.id),
            follow_ups_view(&node.id, overdue, &list),
        ),
    ))
}

pub async fn case(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, case)): Path<(String, String)>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    let answer = call(node.broker().get_case(pb::GetCaseRequest {
        case_reference: case.clone(),
        limit: CASE_SHOWN,
        page_token: String::new(),
    }))
    .await;
    Ok(respond(
        status_of(&answer),
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("Case {case} at {}", node.id),
            case_view(&node.id, &case, &answer),
        ),
    ))
}

/// A refusal other than "this principal may not" is the node's trouble.
fn status_of<T>(answer: &Result<T, Refusal>) -> StatusCode {
    match answer {
        Err(r) if !r.denied() => r.http_status(),
        _ => StatusCode::OK,
    }
}

fn denied_note(what: &str) -> Markup {
    html! {
        p.note { (what) " need a principal with the submit, receive or audit role; the node \
                  refused this one." }
    }
}

fn last_answer(f: &pb::FollowUp) -> Markup {
    match f.answers.last() {
        None => html! { "—" },
        Some(a) => html! {
            (a.feedback_id) " (" (if a.r#final { "final" } else { "interim" }) ")"
            @for o in &a.outcomes {
                br; "item " (o.item) ": " (outcome_name(o.outcome))
            }
        },
    }
}

fn follow_ups_view(
    node: &str,
    overdue: bool,
    list: &Result<pb::ListFollowUpsResponse, Refusal>,
) -> Markup {
    html! {
        h1 { "Follow-ups at " (node) }
        p {
            @if overdue {
                "Overdue only. " a href=(node_path(node, "follow-ups")) { "All follow-ups" }
            } @else {
                "Overdue first, then by deadline. " a href={(node_path(node, "follow-ups")) "?overdue=1"} { "Overdue only" }
            }
        }
        @match list {
            Err(r) if r.denied() => { (denied_note("Follow-ups")) },
            Err(r) => { (views::refusal_box("the follow-ups", r)) },
            Ok(list) if list.follow_ups.is_empty() => { p { "No follow-up matches." } },
            Ok(list) => {
                table #follow-ups {
                    thead { tr {
                        th { "State" } th { "Side" } th { "Message" } th { "Peer" }
                        th { "Case" } th { "Due" } th { "Last feedback" }
                    } }
                    tbody {
                        @for f in &list.follow_ups {
                            tr.(f.state) {
                                td { strong { (f.state) } }
                                td { (f.side) }
                                td { a href=(message_path(node, &f.sender_node, &f.message_id)) { (f.sender_node) "/" (f.message_id) } " (" (kind_name(f.kind)) ")" }
                                td { (f.peer) }
                                td { @if !f.case_reference.is_empty() { a href=(case_path(node, &f.case_reference)) { (f.case_reference) } } }
                                td { (when(f.due_ms)) }
                                td.wrap { (last_answer(f)) }
                            }
                        }
                    }
                }
                @if !list.next_page_token.is_empty() {
                    form.search method="get" action=(node_path(node, "follow-ups")) {
                        @if overdue { input type="hidden" name="overdue" value="1"; }
                        input type="hidden" name="page" value=(list.next_page_token);
                        button.secondary type="submit" { "More" }
                    }
                }
            },
        }
    }
}

fn case_view(node: &str, case: &str, answer: &Result<pb::GetCaseResponse, Refusal>) -> Markup {
    html! {
        h1 { "Case " (case) " at " (node) }
        @match answer {
            Err(r) if r.denied() => { (denied_note("Cases")) },
            Err(r) => { (views::refusal_box("the case", r)) },
            Ok(c) if c.messages.is_empty() => { p { "The node holds no message under this case." } },
            Ok(c) => {
                p { (c.messages.len()) " message(s), newest first"
                    @if !c.next_page_token.is_empty() { " (the newest " (CASE_SHOWN) " shown)" } }
                @for m in &c.messages {
                    @if let Some(s) = &m.message {
                        section.box.case-message {
                            h2 {
                                a href=(message_path(node, &s.sender_node, &s.message_id)) { (s.sender_node) "/" (s.message_id) }
                                " — " (s.direction) " " (kind_name(s.kind))
                                " " (if s.direction == "sent" { "to" } else { "from" }) " " (s.peer)
                                ": " strong { (s.state) }
                            }
                            p.muted { (when(s.created_at_ms)) " · " (s.subject) }
                            ol.timeline {
                                @for r in &m.receipts {
                                    @if let Ok(r) = crate::model::SignedReceipt::from_wire(r.clone()).open() {
                                        li { (when(r.issued_at_ms)) " " strong { (r.kind.as_str()) } " by " (r.issuer_node)
                                            @if !r.reason.is_empty() { " — " (r.reason) } }
                                    }
                                }
                            }
                            @if let Some(f) = &m.follow_up {
                                p { "Follow-up: " strong { (f.state) } " (" (f.side) ", due " (when(f.due_ms)) "); last feedback: " (last_answer(f)) }
                            }
                        }
                    }
                }
            },
        }
    }
}
