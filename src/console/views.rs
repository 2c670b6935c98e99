//! The console's HTML, as maud templates: checked when the binary is
//! compiled, and every value escaped unless a template says otherwise (none
//! here does). No inline script or style (the Content-Security-Policy
//! forbids both); charts are inline SVG styled by classes.
//!
//! Elements that tests and scripts look for carry stable ids or data
//! attributes: `depth-NODE-outbox-PEER`, `depth-NODE-inbox`,
//! `depth-NODE-dead`, `peer-NODE-PEER`, `audit-head-NODE`, the `timeline`
//! table with one `data-event` per row, and `check-NAME` per verifier check.

use super::assets::{CSS_PATH, JS_PATH};
use super::nodes::{Node, Refusal, Series, Snapshot};
use crate::audit::Report;
use crate::format_time;
use crate::pb;
use maud::{DOCTYPE, Markup, html};

/// What every page's frame shows.
#[derive(Debug)]
pub struct Chrome<'a> {
    pub nodes: &'a [Node],
    /// The node a page is about, for its own menu.
    pub current: Option<&'a str>,
    pub csrf: &'a str,
}

impl Chrome<'_> {
    /// "operator", or "operator at discipline, auditor at judicial" when the
    /// principals differ between nodes.
    fn principal(&self) -> String {
        let first = self.nodes.first().map(|n| n.principal.as_str());
        if self
            .nodes
            .iter()
            .all(|n| Some(n.principal.as_str()) == first)
        {
            first.unwrap_or("").to_string()
        } else {
            self.nodes
                .iter()
                .map(|n| format!("{} at {}", n.principal, n.id))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

// ------------------------------------------------------------ paths

/// A path segment with everything but unreserved characters escaped (ids
/// are already limited to `[A-Za-z0-9._:-]`; this keeps any other text
/// from changing a link).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn node_path(node: &str, page: &str) -> String {
    format!("/nodes/{}/{page}", seg(node))
}

pub fn message_path(node: &str, sender: &str, id: &str) -> String {
    format!("/nodes/{}/messages/{}/{}", seg(node), seg(sender), seg(id))
}

pub fn dead_letter_action_path(node: &str, sender: &str, id: &str, verb: &str) -> String {
    format!(
        "/nodes/{}/dead-letters/{}/{}/{verb}",
        seg(node),
        seg(sender),
        seg(id)
    )
}

// ------------------------------------------------------------ small parts

// The words the CLI uses for durations, sizes, times, kinds and peer
// states, so that both say the same.
pub use crate::cli::ops::{age, kind_name, peer_state};
use crate::cli::ops::{bytes, when};

fn count_text(v: f64) -> String {
    format!("{v:.0}")
}

fn rate_text(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What the node said when it refused, and what it usually means.
pub fn refusal_box(what: &str, r: &Refusal) -> Markup {
    let hint = match r.code {
        tonic::Code::PermissionDenied => {
            "The node decides what each principal may do: this certificate's principal lacks \
             the role for it. The console only passes the request on."
        }
        tonic::Code::Unauthenticated => {
            "The node does not accept this certificate (not issued by the federation's CA, \
             expired, or not one of this node's principals)."
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            "Is the node running, and is its endpoint right?"
        }
        tonic::Code::NotFound => "The node holds no such message.",
        _ => "",
    };
    html! {
        div.refusal role="alert" {
            strong { "The node refused " (what) ": " }
            span.code { (r.code_name()) }
            " — " (r.message)
            @if !hint.is_empty() { p.note { (hint) } }
        }
    }
}

fn not_held(what: &str, r: &Refusal) -> Markup {
    html! {
        p.note {
            (what) " — not shown: the node refused this principal ("
            span.mono { (r.code_name()) } ")."
        }
    }
}

// ------------------------------------------------------------ frames

/// A whole page in the console's frame.
pub fn page(chrome: &Chrome, title: &str, body: Markup) -> Markup {
    frame(chrome, title, body, false)
}

/// A page that reloads itself every 10 s when scripts are off (with the
/// script on, its live part refreshes every 2 s instead).
pub fn live_page(chrome: &Chrome, title: &str, body: Markup) -> Markup {
    frame(chrome, title, body, true)
}

fn frame(chrome: &Chrome, title: &str, body: Markup, refresh: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(chrome.csrf);
                title { (title) " · cluebridge console" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
                @if refresh {
                    noscript { meta http-equiv="refresh" content="10"; }
                }
            }
            body {
                header.top {
                    a.brand href="/" { "cluebridge console" }
                    nav {
                        a href="/" { "Overview" }
                        @for n in chrome.nodes {
                            span.node.current[chrome.current == Some(n.id.as_str())] { (n.id) ":" }
                            a href=(node_path(&n.id, "queues")) { "queues and peers" }
                            a href=(node_path(&n.id, "dead-letters")) { "dead letters" }
                            a href=(node_path(&n.id, "messages")) { "messages" }
                            a href=(node_path(&n.id, "follow-ups")) { "follow-ups" }
                        }
                        a href="/audit" { "Audit" }
                    }
                    span.who { "as " (chrome.principal()) }
                }
                main { (body) }
                footer {
                    "Payloads are never shown here. Every action goes to the node under this \
                     principal's certificate, and the node decides."
                }
            }
        }
    }
}

/// A refusal before any session exists: no menu, no data.
pub fn refusal(title: &str, detail: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · cluebridge console" }
            }
            body {
                h1 { (title) }
                p { (detail) }
            }
        }
    }
}

/// A page-level "not found" inside the frame.
pub fn not_found(chrome: &Chrome, what: &str) -> Markup {
    page(
        chrome,
        "Not found",
        html! { h1 { "Not found" } p { (what) } p { a href="/" { "Back to the overview" } } },
    )
}

// ------------------------------------------------------------ charts

const CHART_W: f64 = 260.0;
const CHART_H: f64 = 72.0;
/// The longest span a chart shows (the history the console keeps).
const CHART_SPAN_MS: u64 = 10 * 60 * 1000;
/// The shortest: a console just started shows its first seconds this wide.
const CHART_MIN_SPAN_MS: u64 = 30 * 1000;

/// A small line chart of up to two series over the last ten minutes.
fn chart(
    caption: &str,
    now_ms: u64,
    a: (&str, &[(u64, f64)]),
    b: Option<(&str, &[(u64, f64)])>,
    number: fn(f64) -> String,
) -> Markup {
    // From the oldest point held (at most ten minutes back) to now.
    let oldest =
        a.1.iter()
            .chain(b.map(|b| b.1).unwrap_or(&[]).iter())
            .map(|p| p.0)
            .min()
            .unwrap_or(now_ms);
    let span = now_ms
        .saturating_sub(oldest)
        .clamp(CHART_MIN_SPAN_MS, CHART_SPAN_MS);
    let start = now_ms.saturating_sub(span);
    let max =
        a.1.iter()
            .chain(b.map(|b| b.1).unwrap_or(&[]).iter())
            .map(|p| p.1)
            .fold(0.0f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let points = |series: &[(u64, f64)]| -> String {
        series
            .iter()
            .filter(|p| p.0 >= start)
            .map(|(t, v)| {
                let x = t.saturating_sub(start) as f64 / span as f64 * CHART_W;
                let y = CHART_H - 4.0 - v / top * (CHART_H - 16.0);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let last = |series: &[(u64, f64)]| series.last().map(|p| number(p.1));
    html! {
        figure.chart {
            svg viewBox={"0 0 " (CHART_W) " " (CHART_H)} role="img" aria-label=(caption) {
                title { (caption) }
                line.axis x1="0" y1=(CHART_H - 4.0) x2=(CHART_W) y2=(CHART_H - 4.0) {}
                text x="3" y="10" { "max " (number(max)) }
                text x=(CHART_W - 4.0) y="10" text-anchor="end" { "last " (age(span)) }
                polyline.line.line-a points=(points(a.1)) {}
                @if let Some(b) = b {
                    polyline.line.line-b points=(points(b.1)) {}
                }
            }
            figcaption {
                (caption) ": "
                span.key-a { (a.0) " " (last(a.1).unwrap_or_else(|| "-".into())) }
                @if let Some(b) = b {
                    " · " span.key-b { (b.0) " " (last(b.1).unwrap_or_else(|| "-".into())) }
                }
            }
        }
    }
}

// ------------------------------------------------------------ overview

/// The panels of the overview: the part that the script refreshes.
pub fn overview_panels(panels: &[(&Node, &Snapshot, Series)]) -> Markup {
    html! {
        div.grid {
            @for (node, snapshot, series) in panels {
                (node_panel(node, snapshot, series))
            }
        }
    }
}

fn health_badge(s: &Snapshot) -> Markup {
    match &s.health {
        Ok(true) => html! { span.badge.serving title="health check: SERVING" { "serving" } },
        Ok(false) => html! {
            span.badge.not-serving title="health check: NOT_SERVING (stopping, or the store refuses changes after a failed write)" {
                "not serving"
            }
        },
        Err(r) => {
            html! { span.badge.unreachable title=(r.message) { "unreachable (" (r.code_name()) ")" } }
        }
    }
}

fn node_panel(node: &Node, s: &Snapshot, series: &Series) -> Markup {
    let id = &node.id;
    html! {
        section.panel id={"node-" (id)} {
            div.panel-head {
                h2 { (id) }
                (health_badge(s))
                span.muted { "as " (node.principal) " · " (node.endpoint) " · at " (format_time(s.taken_ms)) }
            }
            @match &s.queues {
                Ok(q) => {
                    h3 { "Queues" }
                    (queue_table(id, q, false))
                    h3 { "Peers" }
                    (peer_badges(id, &s.peers))
                    div.charts {
                        (chart("Messages per second", s.taken_ms,
                            ("accepted", &series.accepted_per_s),
                            Some(("into custody", &series.delivered_per_s)), rate_text))
                        (chart("Depth", s.taken_ms,
                            ("outboxes", &series.outbox), Some(("inbox", &series.inbox)), count_text))
                    }
                },
                Err(r) if r.denied() => { (not_held("Queues and peers", r)) },
                Err(r) => { (refusal_box("the queue figures", r)) },
            }
            @match &s.overdue {
                Ok(o) => {
                    p {
                        "Overdue follow-ups: "
                        strong id={"overdue-" (id)} {
                            (o.follow_ups.len()) @if !o.next_page_token.is_empty() { "+" }
                        }
                        " · " a href={(node_path(id, "follow-ups")) "?overdue=1"} { "follow-ups" }
                    }
                },
                Err(r) if r.denied() => {},
                Err(r) => { (refusal_box("the overdue follow-ups", r)) },
            }
            @match &s.audit {
                Ok(a) => {
                    h3 { "Audit log" }
                    p {
                        "Chain head: entry "
                        strong id={"audit-head-" (id)} { (a.head_seq) }
                        " · " a href="/audit" { "checkpoints and witnesses" }
                    }
                    div.charts {
                        (chart("Audit entries per second", s.taken_ms, ("entries", &series.audit_per_s), None, rate_text))
                    }
                },
                Err(r) if r.denied() => { (not_held("The audit log", r)) },
                Err(r) => { (refusal_box("the audit head", r)) },
            }
        }
    }
}

fn peer_badges(node: &str, peers: &Result<pb::ListPeersResponse, Refusal>) -> Markup {
    match peers {
        Ok(p) => html! {
            div.peers {
                @for peer in &p.peers {
                    @let state = peer_state(peer.state);
                    span id={"peer-" (node) "-" (peer.peer)} class={"badge state-" (state)}
                        title=(peer.last_error) {
                        (peer.peer) " " (state.replace('_', " "))
                    }
                }
            }
        },
        Err(r) => refusal_box("the peer list", r),
    }
}

/// Outboxes, inbox and dead letters; `full` adds bytes and receipts.
fn queue_table(node: &str, q: &pb::ListQueuesResponse, full: bool) -> Markup {
    let inbox = q.inbox.unwrap_or_default();
    let dead = q.dead_letters.unwrap_or_default();
    html! {
        table {
            thead {
                tr {
                    th { "Queue" } th.num { "Depth" }
                    @if full { th.num { "Bytes" } }
                    th.num { "Oldest" } th { "Notes" }
                }
            }
            tbody {
                @for o in &q.outboxes {
                    tr data-queue={"outbox " (o.peer)} {
                        td { "outbox → " (o.peer) }
                        td.num id={"depth-" (node) "-outbox-" (o.peer)} { (o.depth) }
                        @if full { td.num { (bytes(o.bytes)) } }
                        td.num { (if o.depth == 0 { "-".into() } else { age(o.oldest_age_ms) }) }
                        td {
                            @if o.paused { span.badge.state-paused { "paused" } " " }
                            @if o.receipts_waiting > 0 || full {
                                (o.receipts_waiting) " receipts to return"
                            }
                        }
                    }
                }
                tr data-queue="inbox" {
                    td { "inbox" }
                    td.num id={"depth-" (node) "-inbox"} { (inbox.ready + inbox.leased + inbox.delayed) }
                    @if full { td.num { "-" } }
                    td.num { (if inbox.ready == 0 { "-".into() } else { age(inbox.oldest_ready_age_ms) }) }
                    td { (inbox.ready) " ready, " (inbox.leased) " leased, " (inbox.delayed) " delayed" }
                }
                tr data-queue="dead letters" {
                    td { a href=(node_path(node, "dead-letters")) { "dead letters" } }
                    td.num id={"depth-" (node) "-dead"} { (dead.count) }
                    @if full { td.num { "-" } }
                    td.num { (if dead.count == 0 { "-".into() } else { age(dead.oldest_age_ms) }) }
                    td { @if dead.count > 0 { span.warn { "need an operator" } } }
                }
            }
        }
    }
}

// ------------------------------------------------------------ queues and peers

pub fn queues(node: &Node, s: &Snapshot) -> Markup {
    let id = &node.id;
    html! {
        h1 { "Queues and peers of " (id) }
        p.muted { "At " (format_time(s.taken_ms)) " · " (health_badge(s)) }
        @match &s.queues {
            Ok(q) => {
                section.panel { h2 { "Queues" } (queue_table(id, q, true)) }
            },
            Err(r) => { (refusal_box("the queue figures", r)) },
        }
        @match &s.peers {
            Ok(p) => {
                section.panel {
                    h2 { "Peers" }
                    table {
                        thead { tr {
                            th { "Peer" } th { "State" } th.num { "Backlog" } th.num { "RTT" }
                            th { "Last success" } th.num { "Failures" } th { "Last error or pause" }
                        } }
                        tbody {
                            @for p in &p.peers {
                                @let state = peer_state(p.state);
                                tr {
                                    td { (p.peer) br; span.muted.mono { (p.endpoint) } }
                                    td { span id={"peer-" (id) "-" (p.peer)} class={"badge state-" (state)} { (state.replace('_', " ")) } }
                                    td.num { (p.backlog) }
                                    td.num { @if p.rtt_us == 0 { "-" } @else { (format!("{:.1} ms", p.rtt_us as f64 / 1000.0)) } }
                                    td { (when(p.last_success_ms)) }
                                    td.num { (p.consecutive_failures) }
                                    td.wrap {
                                        @if state == "paused" {
                                            "paused by " (p.paused_by) " at " (when(p.paused_at_ms))
                                        } @else if !p.last_error.is_empty() {
                                            (p.last_error) " (" (when(p.last_error_ms)) ")"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
            Err(r) => { (refusal_box("the peer list", r)) },
        }
    }
}

// ------------------------------------------------------------ dead letters

pub fn dead_letters(node: &str, r: &pb::ListDeadLettersResponse, operates: bool) -> Markup {
    let now = crate::now_ms();
    html! {
        h1 { "Dead letters at " (node) }
        p.muted {
            "Messages in " (node) "'s custody that used up their delivery attempts, oldest \
             first. " (r.dead_letters.len()) " of " (r.total) " shown."
        }
        @if r.dead_letters.is_empty() {
            p { "None." }
        } @else {
            table #dead-letters {
                thead { tr {
                    th { "Message" } th { "Kind" } th { "Case" } th.num { "Attempts" }
                    th.num { "Dead for" } th.num { "Expires in" } th { "Last failure" }
                    @if operates { th { "Act" } }
                } }
                tbody {
                    @for d in &r.dead_letters {
                        tr data-message={(d.sender_node) "/" (d.message_id)} {
                            td { a href=(message_path(node, &d.sender_node, &d.message_id)) {
                                (d.sender_node) "/" (d.message_id) } }
                            td { (kind_name(d.kind)) }
                            td { (d.case_reference) }
                            td.num { (d.attempts) }
                            td.num { (age(now.saturating_sub(d.dead_lettered_at_ms))) }
                            td.num { (age(d.expires_at_ms.saturating_sub(now))) }
                            td.wrap { (d.last_failure) }
                            @if operates {
                                td {
                                    a.button.requeue href=(dead_letter_action_path(node, &d.sender_node, &d.message_id, "requeue")) { "Requeue…" }
                                    " "
                                    a.button.danger.discard href=(dead_letter_action_path(node, &d.sender_node, &d.message_id, "discard")) { "Discard…" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A message's metadata as an operator sees it.
fn admin_meta(m: &pb::GetMessageResponse) -> Markup {
    html! {
        dl.meta {
            dt { "Message" } dd.mono { (m.sender_node) "/" (m.message_id) }
            dt { "State" } dd { strong { (m.state) } " (" (m.side) ")" }
            dt { "Kind" } dd { (kind_name(m.kind)) }
            dt { "From → to" } dd { (m.sender_node) " → " (m.recipient_node) }
            @if !m.case_reference.is_empty() { dt { "Case" } dd { (m.case_reference) } }
            dt { "Submitted by" } dd { (m.sender_principal) }
            dt { "Content" } dd { (m.content_type) ", " (m.payload_length) " bytes (never shown here)" }
            dt { "Created" } dd { (when(m.created_at_ms)) }
            dt { "Expires" } dd { (when(m.expires_at_ms)) }
            @if m.side == "custody" { dt { "Delivery attempts" } dd { (m.attempts) } }
        }
    }
}

/// The confirmation step of requeue or discard.
pub fn confirm(
    node: &str,
    sender: &str,
    id: &str,
    verb: &str,
    info: &Result<pb::GetMessageResponse, Refusal>,
    csrf: &str,
) -> Markup {
    html! {
        h1 { (if verb == "requeue" { "Requeue" } else { "Discard" }) " " (sender) "/" (id) " at " (node) "?" }
        @match info {
            Ok(m) => { (admin_meta(m)) },
            Err(r) => { (refusal_box("the message's details", r)) },
        }
        // The form only where the node let this principal see the message
        // as an operator; a post without it is still judged by the node.
        @if info.is_ok() { (confirm_form(node, sender, id, verb, csrf)) }
    }
}

fn confirm_form(node: &str, sender: &str, id: &str, verb: &str, csrf: &str) -> Markup {
    html! {
        form.box method="post" action=(dead_letter_action_path(node, sender, id, verb)) {
            input type="hidden" name="csrf" value=(csrf);
            @if verb == "requeue" {
                p {
                    "The message goes back to " (node) "'s inbox with fresh delivery attempts. \
                     The node records the requeue, under this principal's name, in the \
                     message's history and its audit log."
                }
                div.actions {
                    button type="submit" { "Requeue " (sender) "/" (id) }
                    a.button.secondary href=(node_path(node, "dead-letters")) { "Cancel" }
                }
            } @else {
                p {
                    "The message is given up for good; its envelope and receipts stay as \
                     evidence. The reason is recorded in its history."
                }
                label { "Reason (required, kept in the message's history)"
                    textarea name="reason" required maxlength="1024" {}
                }
                div.actions {
                    button.danger type="submit" { "Discard " (sender) "/" (id) }
                    a.button.secondary href=(node_path(node, "dead-letters")) { "Cancel" }
                }
            }
        }
    }
}

/// What a requeue or discard did: the node's answer, and the event it
/// recorded (or its refusal).
pub fn action_result(
    node: &str,
    sender: &str,
    id: &str,
    verb: &str,
    outcome: &Result<pb::ActionOutcome, Refusal>,
    recorded: &Option<Result<pb::HistoryEvent, Refusal>>,
) -> Markup {
    let past = if verb == "requeue" {
        "requeued"
    } else {
        "discarded"
    };
    html! {
        h1 { (if verb == "requeue" { "Requeue" } else { "Discard" }) " " (sender) "/" (id) " at " (node) }
        @match outcome {
            Ok(o) if o.done => {
                div.done #outcome role="status" { strong { (sender) "/" (id) " " (past) "." } }
                @match recorded {
                    Some(Ok(e)) => {
                        h3 { "The event the node recorded" }
                        table #recorded-event {
                            thead { tr { th { "Time" } th { "Event" } th { "By" } th { "Reason" } } }
                            tbody { tr data-event=(e.event) {
                                td { (when(e.at_ms)) } td { (e.event) } td { (e.by) } td.wrap { (e.reason) }
                            } }
                        }
                    },
                    Some(Err(r)) => { (refusal_box("the message's history", r)) },
                    None => {},
                }
            },
            Ok(o) => {
                div.refusal #outcome role="alert" {
                    strong { (sender) "/" (id) " was not " (past) ": " }
                    span.code { (Refusal::from_code(o.code, &o.error).code_name()) }
                    " — " (o.error)
                }
            },
            Err(r) => { (refusal_box(&format!("the {verb}"), r)) },
        }
        p.actions {
            a.button.secondary href=(node_path(node, "dead-letters")) { "Dead letters" }
            a.button.secondary href=(message_path(node, sender, id)) { "The message" }
        }
    }
}

// ------------------------------------------------------------ messages

/// One line of a message's timeline.
#[derive(Clone, Debug)]
pub struct TimelineRow {
    pub at_ms: u64,
    /// `receipt`, `audit entry` or `operator action`.
    pub source: &'static str,
    pub event: String,
    pub by: String,
    pub detail: String,
}

/// A message's metadata as an auditor sees it (from the bundle's header).
fn bundle_meta(b: &BundleMeta) -> Markup {
    let s = |k: &str| b.fields[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| b.fields[k].as_u64().unwrap_or(0);
    html! {
        dl.meta {
            dt { "Message" } dd.mono { (s("sender_node")) "/" (s("message_id")) }
            @if let Some(state) = b.state {
                dt { "State" } dd { strong { (state) } " (the latest audit entry's)" }
            }
            dt { "Kind" } dd { (s("kind")) }
            dt { "From → to" } dd { (s("sender_node")) " → " (s("recipient_node")) }
            dt { "Subject" } dd { (s("subject")) }
            @if !s("case_reference").is_empty() { dt { "Case" } dd { (s("case_reference")) } }
            @if !s("correlation_id").is_empty() { dt { "Answers" } dd { (s("correlation_id")) } }
            dt { "Submitted by" } dd { (s("sender_principal")) }
            dt { "Content" } dd { (s("content_type")) ", " (n("payload_length")) " bytes (never shown here)" }
            dt { "Payload SHA-256" } dd.mono { (b.payload_sha256) }
            dt { "Created" } dd { (when(n("created_at_ms"))) }
            dt { "Expires" } dd { (when(n("expires_at_ms"))) }
            @if n("reply_by_ms") > 0 { dt { "Reply by" } dd { (when(n("reply_by_ms"))) } }
        }
    }
}

/// What a message page takes from a receipt bundle.
#[derive(Debug)]
pub struct BundleMeta<'a> {
    /// The signed header, decoded.
    pub fields: &'a serde_json::Value,
    pub payload_sha256: &'a str,
    /// The state the latest audit entry about the message names.
    pub state: Option<&'a str>,
}

/// What the message page shows.
#[derive(Debug)]
pub struct MessageView<'a> {
    pub node: &'a str,
    pub sender: &'a str,
    pub id: &'a str,
    /// The operator's view, unless the node refused it to this principal.
    pub admin: Option<&'a Result<pb::GetMessageResponse, Refusal>>,
    /// The auditor's bundle, unless the node refused it.
    pub bundle: Option<Result<BundleMeta<'a>, &'a Refusal>>,
    pub timeline: &'a [TimelineRow],
    pub operates: bool,
    pub audits: bool,
}

pub fn message(v: &MessageView) -> Markup {
    let dead = matches!(v.admin, Some(Ok(m)) if m.state == "dead_letter");
    html! {
        h1 { "Message " (v.sender) "/" (v.id) " at " (v.node) }
        @if let Some(Ok(m)) = v.admin { (admin_meta(m)) }
        @else if let Some(Ok(b)) = &v.bundle { (bundle_meta(b)) }
        @if let Some(Err(r)) = v.admin { @if !r.denied() { (refusal_box("the message's details", r)) } }
        @if let Some(Err(r)) = &v.bundle { @if !r.denied() { (refusal_box("the receipt bundle", r)) } }
        div.actions {
            @if v.audits {
                a.button #verify href={(message_path(v.node, v.sender, v.id)) "/verify"} { "Verify the bundle" }
                a.button.secondary #download href={(message_path(v.node, v.sender, v.id)) "/bundle.json"} download { "Download the bundle" }
            }
            @if v.operates && dead {
                a.button.requeue href=(dead_letter_action_path(v.node, v.sender, v.id, "requeue")) { "Requeue…" }
                a.button.danger.discard href=(dead_letter_action_path(v.node, v.sender, v.id, "discard")) { "Discard…" }
            }
        }
        h3 { "Timeline" }
        @if v.timeline.is_empty() {
            p.note { "Nothing to show: the node gave this principal neither the message's history nor its bundle." }
        } @else {
            table #timeline {
                thead { tr { th { "Time" } th { "Source" } th { "Event" } th { "By" } th { "Detail" } } }
                tbody {
                    @for row in v.timeline {
                        tr data-event=(row.event) data-source=(row.source) {
                            td { (when(row.at_ms)) }
                            td { (row.source) }
                            td { strong { (row.event) } }
                            td { (row.by) }
                            td.wrap { (row.detail) }
                        }
                    }
                }
            }
            p.note {
                @if v.audits {
                    "Receipts and audit entries from " (v.node) "'s receipt bundle (signed; "
                    "verify them above)."
                } @else {
                    "Receipts and operator actions from " (v.node) "'s history of the message. \
                     The audit entries are shown to principals with the audit role."
                }
            }
        }
    }
}

/// The message search of a node.
#[derive(Debug, Default, serde::Deserialize)]
pub struct MessageQuery {
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub case: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub page: String,
}

pub fn messages(
    node: &str,
    q: &MessageQuery,
    list: &Option<Result<pb::ListMessagesResponse, Refusal>>,
) -> Markup {
    html! {
        h1 { "Messages at " (node) }
        form.box.search method="get" action=(node_path(node, "messages")) {
            label { "Sender node (empty: " (node) ")" input name="sender" value=(q.sender) size="16"; }
            label { "Message id" input name="id" value=(q.id) size="24" required; }
            button type="submit" { "Open" }
        }
        @match list {
            // Not asked: the node refused this principal the audit role.
            None => {
                p.note { "Searching messages needs the audit role; this principal can open a \
                          message by its id above." }
            },
            Some(Err(r)) if r.denied() => {
                p.note { "Searching messages needs the audit role; this principal can open a \
                          message by its id above." }
            },
            Some(Err(r)) => { (refusal_box("the message search", r)) },
            Some(Ok(list)) => {
                form.box.search method="get" action=(node_path(node, "messages")) {
                    label { "Case" input name="case" value=(q.case) size="14"; }
                    label { "State" input name="state" value=(q.state) size="12" placeholder="e.g. delivered"; }
                    label { "Peer" input name="peer" value=(q.peer) size="14"; }
                    label { "Kind"
                        select name="kind" {
                            option value="" selected[q.kind.is_empty()] { "any" }
                            @for k in ["clue_transfer", "rectification_suggestion", "feedback"] {
                                option value=(k) selected[q.kind == k] { (k) }
                            }
                        }
                    }
                    button type="submit" { "Search" }
                }
                @if list.messages.is_empty() && list.next_page_token.is_empty() {
                    p { "No message matches." }
                } @else if list.messages.is_empty() {
                    // The node stopped its walk early (`max_list_scan`).
                    p { "No match among the messages searched so far; older ones remain." }
                } @else {
                    table #messages {
                        thead { tr {
                            th { "Created" } th { "Message" } th { "Direction" } th { "Peer" }
                            th { "Kind" } th { "Case" } th { "Subject" } th { "State" }
                        } }
                        tbody {
                            @for m in &list.messages {
                                tr {
                                    td { (when(m.created_at_ms)) }
                                    td { a href=(message_path(node, &m.sender_node, &m.message_id)) { (m.sender_node) "/" (m.message_id) } }
                                    td { (m.direction) } td { (m.peer) } td { (kind_name(m.kind)) }
                                    td { @if !m.case_reference.is_empty() { a href=(super::followups::case_path(node, &m.case_reference)) { (m.case_reference) } } }
                                    td.wrap { (m.subject) } td { (m.state) }
                                }
                            }
                        }
                    }
                }
                @if !list.next_page_token.is_empty() {
                    form.search method="get" action=(node_path(node, "messages")) {
                        input type="hidden" name="case" value=(q.case);
                        input type="hidden" name="state" value=(q.state);
                        input type="hidden" name="peer" value=(q.peer);
                        input type="hidden" name="kind" value=(q.kind);
                        input type="hidden" name="page" value=(list.next_page_token);
                        button.secondary type="submit" { "Older messages" }
                    }
                }
            },
        }
    }
}

/// Where the witnessed checkpoints given to the verifier came from.
#[derive(Debug)]
pub struct WitnessSource {
    pub node: String,
    pub held: Result<usize, Refusal>,
}

pub fn verify(
    node: &str,
    sender: &str,
    id: &str,
    report: &Report,
    witnesses: &[WitnessSource],
) -> Markup {
    html! {
        h1 { "Verification of " (sender) "/" (id) " from " (node) }
        @if report.passed {
            div.done #verdict role="status" { strong.pass { "PASS" } " — every check passed." }
        } @else {
            div.refusal #verdict role="alert" { strong.fail { "FAIL" } " — "
                (report.first_failure().map(|c| format!("{}: {}", c.name, c.detail)).unwrap_or_default()) }
        }
        p.note {
            "The offline verifier ran here, on the bundle as the node sent it, with "
            @if report.trusted_keys { "the federation's trust list" } @else {
                "the keys the bundle carries (no trust list was given to the console: pass \
                 --trust federation.toml to check them against it)" }
            "."
            @if !witnesses.is_empty() {
                " Witnessed checkpoints: "
                @for (i, w) in witnesses.iter().enumerate() {
                    @if i > 0 { ", " }
                    @match &w.held {
                        Ok(n) => { (n) " from " (w.node) },
                        Err(r) => { (w.node) " (" (r.code_name()) ")" },
                    }
                }
                "."
            }
        }
        table #checks {
            thead { tr { th { "Check" } th { "Result" } th { "Detail" } } }
            tbody {
                @for c in &report.checks {
                    tr id={"check-" (c.name.replace(' ', "-"))} {
                        td { (c.name) }
                        td { @if c.pass { strong.pass { "PASS" } } @else { strong.fail { "FAIL" } } }
                        td.wrap { (c.detail) }
                    }
                }
            }
        }
        @if !report.timeline.is_empty() {
            h3 { "Timeline, as the verifier reads it" }
            table {
                tbody {
                    @for t in &report.timeline {
                        tr { td { (when(t.time_ms)) } td.wrap { (t.text) } }
                    }
                }
            }
        }
        p.actions {
            a.button.secondary href=(message_path(node, sender, id)) { "The message" }
            a.button.secondary href={(message_path(node, sender, id)) "/bundle.json"} download { "Download the bundle" }
        }
    }
}

// ------------------------------------------------------------ audit

/// One of a node's own checkpoints and who holds a copy.
#[derive(Debug)]
pub struct CheckpointRow {
    pub seq: u64,
    pub time_ms: u64,
    pub head_hash: String,
    /// Configured peers that hold it.
    pub witnessed_by: Vec<String>,
}

/// The audit section of one node.
#[derive(Debug)]
pub struct AuditNode {
    pub node: String,
    pub head: Result<u64, Refusal>,
    pub checkpoints: Vec<CheckpointRow>,
    /// Configured peers asked for their copies, and what they answered.
    pub asked: Vec<(String, Result<(), Refusal>)>,
}

pub fn audit(nodes: &[AuditNode], configured: usize) -> Markup {
    html! {
        h1 { "Audit: checkpoints and witnesses" }
        p.muted {
            "Each node signs checkpoints of its audit chain's head; its peers keep copies as \
             witnesses, so a rewritten history contradicts what they hold. Whether a peer \
             holds a checkpoint is asked of that peer, under this console's principal there."
            @if configured < 2 {
                " This console talks to one node only: start it with --node for the peers too \
                  to see which of them witnessed these checkpoints."
            }
        }
        @for n in nodes {
            section.panel id={"audit-" (n.node)} {
                div.panel-head {
                    h2 { (n.node) }
                    @match &n.head {
                        Ok(h) => { span.muted { "chain head: entry " strong { (h) } } },
                        Err(_) => {},
                    }
                }
                @match &n.head {
                    Err(r) if r.denied() => { (not_held("The audit log", r)) },
                    Err(r) => { (refusal_box("the checkpoints", r)) },
                    Ok(_) => {
                        @if n.checkpoints.is_empty() {
                            p { "No checkpoint signed yet." }
                        } @else {
                            table {
                                thead { tr { th.num { "Entry" } th { "Signed at" } th { "Head hash" } th { "Witnessed by" } } }
                                tbody {
                                    @for c in &n.checkpoints {
                                        tr id={"checkpoint-" (n.node) "-" (c.seq)} {
                                            td.num { (c.seq) }
                                            td { (when(c.time_ms)) }
                                            td.mono { (c.head_hash.get(..16).unwrap_or(&c.head_hash)) "…" }
                                            td.witnesses {
                                                @if c.witnessed_by.is_empty() { span.muted { "none of the peers asked (yet)" } }
                                                @else { (c.witnessed_by.join(", ")) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        @for (peer, answer) in &n.asked {
                            @if let Err(r) = answer {
                                p.note { (peer) " could not be asked: " span.mono { (r.code_name()) } " — " (r.message) }
                            }
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_change_a_link() {
        assert_eq!(seg("clue-12"), "clue-12");
        assert_eq!(seg("a/../b?x#y"), "a%2F..%2Fb%3Fx%23y");
        assert_eq!(message_path("d", "s", "i"), "/nodes/d/messages/s/i");
    }

    #[test]
    fn text_is_escaped() {
        let r = Refusal {
            code: tonic::Code::NotFound,
            message: "<script>alert(1)</script>".into(),
        };
        let html = refusal_box("x", &r).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn charts_scale_to_their_data() {
        let now = 1_000_000_000;
        let a = [(now - 60_000, 1.0), (now, 3.0)];
        let html = chart("c", now, ("a", &a), None, rate_text).into_string();
        assert!(html.contains("<polyline"), "{html}");
        assert!(html.contains("max 3.00"), "{html}");
    }
}
