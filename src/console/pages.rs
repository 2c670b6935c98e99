//! The console's routes and their handlers: each page asks the node(s)
//! over gRPC under the principal's certificate, and renders what they
//! answered (or what they refused) with `views`.
//!
//! Routes (every one behind `session::guard`):
//! - `GET /` the overview, `GET /live/overview` its refreshed part;
//! - `GET /nodes/NODE/queues` queues and peers;
//! - `GET /nodes/NODE/dead-letters`, and for each dead letter
//!   `GET …/dead-letters/SENDER/ID/requeue|discard` (the confirmation step)
//!   and `POST` to the same path (the action);
//! - `GET /nodes/NODE/messages` lookup and search,
//!   `GET /nodes/NODE/messages/SENDER/ID` a message, `…/verify` the offline
//!   verifier's report on its bundle, `…/bundle.json` the bundle itself;
//! - `GET /nodes/NODE/follow-ups` and `GET /nodes/NODE/cases/CASE`
//!   (`followups`);
//! - `GET /audit` checkpoints and their witnesses;
//! - `GET /assets/…` the CSS and the script.

use super::nodes::{Node, Refusal, Series, Snapshot, call};
use super::session::{self, MAX_FORM_BYTES, SessionInfo};
use super::views::{self, Chrome, MessageQuery, TimelineRow, WitnessSource};
use super::{Console, MAX_CONCURRENT_REQUESTS, assets};
use crate::audit::bundle::{self, Bundle};
use crate::model::{MessageKind, SignedCheckpoint, validate_id};
use crate::pb;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{Markup, html};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Pages take figures at most this old.
const FRESH: Duration = Duration::from_secs(1);
/// Dead letters listed on one page.
const DEAD_LETTERS_SHOWN: u32 = 100;
/// Messages listed on one page of a search.
const MESSAGES_SHOWN: u32 = 50;
/// A node's own checkpoints shown on the audit page.
const CHECKPOINTS_SHOWN: usize = 10;
/// Checkpoints asked for in one call.
const CHECKPOINTS_PER_CALL: u32 = 1000;

pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/live/overview", get(overview_live))
        .route("/audit", get(audit))
        .route("/nodes/{node}/queues", get(queues))
        .route("/nodes/{node}/dead-letters", get(dead_letters))
        .route(
            "/nodes/{node}/dead-letters/{sender}/{id}/{verb}",
            get(confirm).post(act),
        )
        .route(
            "/nodes/{node}/follow-ups",
            get(super::followups::follow_ups),
        )
        .route("/nodes/{node}/cases/{case}", get(super::followups::case))
        .route("/nodes/{node}/messages", get(messages))
        .route("/nodes/{node}/messages/{sender}/{id}", get(message))
        .route("/nodes/{node}/messages/{sender}/{id}/verify", get(verify))
        .route(
            "/nodes/{node}/messages/{sender}/{id}/bundle.json",
            get(bundle_file),
        )
        .route(assets::CSS_PATH, get(assets::css))
        .route(assets::JS_PATH, get(assets::js))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            session::guard,
        ))
        .layer(middleware::from_fn(session::security_headers))
        .with_state(console)
}

/// A page answered instead of the one asked for (a node this console does
/// not know, an id that cannot be one). Boxed: a response is large.
#[derive(Debug)]
pub(super) struct Refused(Box<Response>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

pub(super) fn chrome<'a>(
    console: &'a Console,
    session: &'a SessionInfo,
    current: Option<&'a str>,
) -> Chrome<'a> {
    Chrome {
        nodes: console.nodes(),
        current,
        csrf: &session.csrf,
    }
}

pub(super) fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// The page for a request that names no node of this console, or an id
/// that cannot be one.
fn not_found(console: &Console, session: &SessionInfo, what: &str) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        views::not_found(&chrome(console, session, None), what),
    )
}

fn bad_request(console: &Console, session: &SessionInfo, what: &str) -> Response {
    respond(
        StatusCode::BAD_REQUEST,
        views::page(
            &chrome(console, session, None),
            "Not a valid request",
            html! { h1 { "Not a valid request" } p { (what) } },
        ),
    )
}

async fn fallback(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
) -> Response {
    not_found(&console, &session, "The console has no such page.")
}

/// Looks up the node of a path, or answers 404.
pub(super) fn node_of<'a>(
    console: &'a Console,
    session: &SessionInfo,
    id: &str,
) -> Result<&'a Node, Refused> {
    console.node(id).ok_or_else(|| {
        Refused(Box::new(not_found(
            console,
            session,
            &format!("This console does not talk to a node {id:?}."),
        )))
    })
}

/// Checks the sender and message id of a path.
fn message_ids(
    console: &Console,
    session: &SessionInfo,
    sender: &str,
    id: &str,
) -> Result<(), Refused> {
    validate_id("sender node", sender)
        .and_then(|()| validate_id("message id", id))
        .map_err(|e| Refused(Box::new(bad_request(console, session, &e.to_string()))))
}

// ------------------------------------------------------------ overview

async fn snapshots(console: &Console) -> Vec<(&Node, Arc<Snapshot>, Series)> {
    let nodes = console.nodes();
    let taken = futures::future::join_all(nodes.iter().map(|n| n.snapshot(FRESH))).await;
    nodes
        .iter()
        .zip(taken)
        .map(|(n, s)| (n, s, n.series()))
        .collect()
}

fn panels(list: &[(&Node, Arc<Snapshot>, Series)]) -> Markup {
    let borrowed: Vec<(&Node, &Snapshot, Series)> = list
        .iter()
        .map(|(n, s, series)| (*n, s.as_ref(), series.clone()))
        .collect();
    views::overview_panels(&borrowed)
}

async fn overview(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
) -> Response {
    let list = snapshots(&console).await;
    let body = html! {
        h1 { "Overview" }
        p.muted {
            "Store health, queues, peers and the audit log of each node, as this principal may \
             see them. " span data-live-status {}
        }
        div #live data-live="/live/overview" { (panels(&list)) }
        p.note {
            "Follow-ups (overdue first) are on each node's follow-ups page, and a case's \
             messages on the case's page, linked from the case references in the message \
             search; the node shows both to auditors and the back office, not to operators."
        }
    };
    respond(
        StatusCode::OK,
        views::live_page(&chrome(&console, &session, None), "Overview", body),
    )
}

async fn overview_live(State(console): State<Console>) -> Response {
    let list = snapshots(&console).await;
    respond(StatusCode::OK, panels(&list))
}

// ------------------------------------------------------------ queues

async fn queues(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(node): Path<String>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    let s = node.snapshot(FRESH).await;
    let status = match &s.queues {
        Ok(_) => StatusCode::OK,
        Err(r) => r.http_status(),
    };
    Ok(respond(
        status,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("Queues and peers of {}", node.id),
            views::queues(node, &s),
        ),
    ))
}

// ------------------------------------------------------------ dead letters

async fn dead_letters(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(node): Path<String>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    let answer = call(node.admin().list_dead_letters(pb::ListDeadLettersRequest {
        limit: DEAD_LETTERS_SHOWN,
    }))
    .await;
    let title = format!("Dead letters at {}", node.id);
    let (status, body) = match &answer {
        // The node answered: this principal operates, so it may act.
        Ok(list) => (StatusCode::OK, views::dead_letters(&node.id, list, true)),
        Err(r) => (
            r.http_status(),
            html! { h1 { (title) } (views::refusal_box("the list of dead letters", r)) },
        ),
    };
    Ok(respond(
        status,
        views::page(&chrome(&console, &session, Some(&node.id)), &title, body),
    ))
}

/// The two actions on a dead letter.
fn action_verb(verb: &str) -> Option<&'static str> {
    match verb {
        "requeue" => Some("requeue"),
        "discard" => Some("discard"),
        _ => None,
    }
}

async fn get_message(
    node: &Node,
    sender: &str,
    id: &str,
) -> Result<pb::GetMessageResponse, Refusal> {
    call(node.admin().get_message(pb::GetMessageRequest {
        sender_node: sender.to_string(),
        message_id: id.to_string(),
    }))
    .await
}

async fn confirm(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, sender, id, verb)): Path<(String, String, String, String)>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    message_ids(&console, &session, &sender, &id)?;
    let Some(verb) = action_verb(&verb) else {
        return Ok(not_found(
            &console,
            &session,
            "Dead letters can be requeued or discarded.",
        ));
    };
    let info = get_message(node, &sender, &id).await;
    let status = match &info {
        Ok(_) => StatusCode::OK,
        Err(r) => r.http_status(),
    };
    Ok(respond(
        status,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("{verb} {sender}/{id}"),
            views::confirm(&node.id, &sender, &id, verb, &info, &session.csrf),
        ),
    ))
}

/// The fields of the action forms (the CSRF token was checked by the
/// guard).
#[derive(Debug, serde::Deserialize)]
struct ActionForm {
    #[serde(default)]
    reason: String,
}

async fn act(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, sender, id, verb)): Path<(String, String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    message_ids(&console, &session, &sender, &id)?;
    let Some(verb) = action_verb(&verb) else {
        return Ok(not_found(
            &console,
            &session,
            "Dead letters can be requeued or discarded.",
        ));
    };
    let address = pb::MessageAddress {
        sender_node: sender.clone(),
        message_id: id.clone(),
    };
    // Whatever the pages showed, the request goes to the node, which
    // decides: a principal without the operate role is refused there.
    let answer = match verb {
        "requeue" => {
            call(node.admin().requeue(pb::RequeueRequest {
                messages: vec![address],
                all: false,
            }))
            .await
        }
        _ => {
            call(node.admin().discard(pb::DiscardRequest {
                messages: vec![address],
                reason: form.reason.clone(),
            }))
            .await
        }
    };
    let outcome = answer.and_then(|r| {
        r.outcomes.into_iter().next().ok_or_else(|| Refusal {
            code: tonic::Code::Internal,
            message: "the node answered without an outcome for the message".into(),
        })
    });
    let (status, recorded) = match &outcome {
        Ok(o) if o.done => {
            let event = if verb == "requeue" {
                "requeued"
            } else {
                "discarded"
            };
            let recorded = get_message(node, &sender, &id).await.and_then(|m| {
                m.history
                    .into_iter()
                    .rev()
                    .find(|e| e.event == event)
                    .ok_or_else(|| Refusal {
                        code: tonic::Code::NotFound,
                        message: format!("the message's history shows no {event} event yet"),
                    })
            });
            (StatusCode::OK, Some(recorded))
        }
        Ok(o) => (Refusal::from_code(o.code, &o.error).http_status(), None),
        Err(r) => (r.http_status(), None),
    };
    Ok(respond(
        status,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("{verb} {sender}/{id}"),
            views::action_result(&node.id, &sender, &id, verb, &outcome, &recorded),
        ),
    ))
}

// ------------------------------------------------------------ messages

async fn messages(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(node): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    if !q.id.is_empty() {
        let sender = if q.sender.is_empty() {
            node.id.clone()
        } else {
            q.sender.clone()
        };
        message_ids(&console, &session, &sender, &q.id)?;
        return Ok(Redirect::to(&views::message_path(&node.id, &sender, &q.id)).into_response());
    }
    let kind = if q.kind.is_empty() {
        None
    } else {
        match q.kind.parse::<MessageKind>() {
            Ok(k) => Some(k),
            Err(e) => return Ok(bad_request(&console, &session, &e.to_string())),
        }
    };
    let audits = node.latest().and_then(|s| s.audits());
    let list = if audits == Some(false) {
        None
    } else {
        Some(
            call(node.audit().list_messages(pb::ListMessagesRequest {
                case_reference: q.case.clone(),
                state: q.state.clone(),
                peer: q.peer.clone(),
                kind: kind.map_or(0, |k| k.to_wire()),
                limit: MESSAGES_SHOWN,
                page_token: q.page.clone(),
                ..Default::default()
            }))
            .await,
        )
    };
    let status = match &list {
        Some(Err(r)) if !r.denied() => r.http_status(),
        _ => StatusCode::OK,
    };
    Ok(respond(
        status,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("Messages at {}", node.id),
            views::messages(&node.id, &q, &list),
        ),
    ))
}

async fn get_bundle(node: &Node, sender: &str, id: &str) -> Result<String, Refusal> {
    call(node.audit().get_bundle(pb::GetBundleRequest {
        sender_node: sender.to_string(),
        message_id: id.to_string(),
        // Never: the console shows no payload, and hands out none.
        include_payload: false,
    }))
    .await
    .map(|r| r.bundle_json)
}

fn parse_bundle(text: &str) -> Result<Bundle, Refusal> {
    serde_json::from_str(text).map_err(|e| Refusal {
        code: tonic::Code::Internal,
        message: format!("the node's bundle does not parse: {e}"),
    })
}

fn detail(attempt: u64, reason: &str) -> String {
    match (attempt, reason.is_empty()) {
        (0, true) => String::new(),
        (0, false) => reason.to_string(),
        (n, true) => format!("attempt {n}"),
        (n, false) => format!("attempt {n}: {reason}"),
    }
}

/// The receipts and audit entries of a bundle, oldest first.
fn bundle_timeline(b: &Bundle) -> Vec<TimelineRow> {
    let mut rows = Vec::new();
    for r in &b.receipts {
        let f = &r.fields;
        rows.push(TimelineRow {
            at_ms: f["issued_at_ms"].as_u64().unwrap_or(0),
            source: "receipt",
            event: f["kind"].as_str().unwrap_or("?").to_string(),
            by: f["issuer_node"].as_str().unwrap_or("").to_string(),
            detail: detail(
                f["attempt"].as_u64().unwrap_or(0),
                f["reason"].as_str().unwrap_or(""),
            ),
        });
    }
    for segment in &b.audit.segments {
        for e in &segment.entries {
            if let Some(c) = &e.content {
                rows.push(TimelineRow {
                    at_ms: c.time_ms,
                    source: "audit entry",
                    event: c.event.clone(),
                    by: b.audit.node.clone(),
                    detail: if c.detail.is_empty() {
                        format!("entry #{} · state {}", e.seq, c.state)
                    } else {
                        format!("entry #{} · state {} · {}", e.seq, c.state, c.detail)
                    },
                });
            }
        }
    }
    rows.sort_by_key(|r| (r.at_ms, r.source == "audit entry"));
    rows
}

fn is_receipt_kind(event: &str) -> bool {
    (1..=6)
        .filter_map(|n| crate::model::ReceiptKind::from_wire(n).ok())
        .any(|k| k.as_str() == event)
}

fn history_timeline(m: &pb::GetMessageResponse) -> Vec<TimelineRow> {
    m.history
        .iter()
        .map(|e| TimelineRow {
            at_ms: e.at_ms,
            // The history holds receipts and what operators did.
            source: if is_receipt_kind(&e.event) {
                "receipt"
            } else {
                "operator action"
            },
            event: e.event.clone(),
            by: e.by.clone(),
            detail: detail(u64::from(e.attempt), &e.reason),
        })
        .collect()
}

async fn message(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, sender, id)): Path<(String, String, String)>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    message_ids(&console, &session, &sender, &id)?;
    // Ask what the node may answer; a role it refused on the last snapshot
    // is not asked again here.
    let latest = node.snapshot(FRESH).await;
    let ask_admin = latest.operates() != Some(false);
    let ask_audit = latest.audits() != Some(false);
    let (admin, bundle) = tokio::join!(
        async {
            if ask_admin {
                Some(get_message(node, &sender, &id).await)
            } else {
                None
            }
        },
        async {
            if ask_audit {
                Some(
                    get_bundle(node, &sender, &id)
                        .await
                        .and_then(|t| parse_bundle(&t)),
                )
            } else {
                None
            }
        },
    );
    let operates = matches!(&admin, Some(Ok(_)));
    let audits = matches!(&bundle, Some(Ok(_)));
    let timeline = match (&bundle, &admin) {
        (Some(Ok(b)), _) => bundle_timeline(b),
        (_, Some(Ok(m))) => history_timeline(m),
        _ => Vec::new(),
    };
    // A page with nothing to show takes the status of what was refused: a
    // missing message before a missing role.
    let status = if operates || audits {
        StatusCode::OK
    } else {
        let refusals: Vec<&Refusal> = [
            admin.as_ref().and_then(|r| r.as_ref().err()),
            bundle.as_ref().and_then(|r| r.as_ref().err()),
        ]
        .into_iter()
        .flatten()
        .collect();
        refusals
            .iter()
            .find(|r| !r.denied())
            .or(refusals.first())
            .map_or(StatusCode::FORBIDDEN, |r| r.http_status())
    };
    let view = views::MessageView {
        node: &node.id,
        sender: &sender,
        id: &id,
        admin: admin.as_ref(),
        bundle: bundle.as_ref().map(|b| match b {
            Ok(b) => Ok(views::BundleMeta {
                fields: &b.envelope.header_fields,
                payload_sha256: &b.envelope.payload_sha256,
                state: b
                    .audit
                    .segments
                    .iter()
                    .rev()
                    .flat_map(|s| s.entries.iter().rev())
                    .find_map(|e| e.content.as_ref())
                    .map(|c| c.state.as_str()),
            }),
            Err(r) => Err(r),
        }),
        timeline: &timeline,
        operates,
        audits,
    };
    Ok(respond(
        status,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &format!("Message {sender}/{id}"),
            views::message(&view),
        ),
    ))
}

async fn verify(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, sender, id)): Path<(String, String, String)>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    message_ids(&console, &session, &sender, &id)?;
    let title = format!("Verification of {sender}/{id}");
    let text = match get_bundle(node, &sender, &id).await {
        Ok(t) => t,
        Err(r) => {
            return Ok(respond(
                r.http_status(),
                views::page(
                    &chrome(&console, &session, Some(&node.id)),
                    &title,
                    html! { h1 { (title) } (views::refusal_box("the receipt bundle", &r)) },
                ),
            ));
        }
    };
    // The checkpoints of this node that the console's other nodes hold,
    // from the first entry the bundle carries on.
    let first_seq = parse_bundle(&text)
        .ok()
        .and_then(|b| {
            b.audit
                .segments
                .iter()
                .flat_map(|s| s.entries.iter().map(|e| e.seq))
                .min()
        })
        .unwrap_or(0);
    let peers: Vec<&Node> = console
        .nodes()
        .iter()
        .filter(|p| p.id != node.id && p.latest().and_then(|s| s.audits()) != Some(false))
        .collect();
    let answers = futures::future::join_all(peers.iter().map(|p| async move {
        call(p.audit().get_checkpoints(pb::GetCheckpointsRequest {
            node: node.id.clone(),
            from_seq: first_seq,
            limit: CHECKPOINTS_PER_CALL,
            head_only: false,
        }))
        .await
    }))
    .await;
    let mut witnessed = Vec::new();
    let mut sources = Vec::new();
    for (peer, answer) in peers.iter().zip(answers) {
        sources.push(WitnessSource {
            node: peer.id.clone(),
            held: answer.map(|r| {
                let n = r.checkpoints.len();
                witnessed.extend(r.checkpoints.into_iter().map(|c| SignedCheckpoint {
                    checkpoint: c.checkpoint,
                    signature: c.signature,
                }));
                n
            }),
        });
    }
    let trust = console.trust().cloned();
    let asked_witnesses = sources.iter().any(|s| s.held.is_ok());
    // Signature checks are CPU work: off the async workers.
    let report = tokio::task::spawn_blocking(move || {
        bundle::verify(
            &text,
            trust.as_ref(),
            asked_witnesses.then_some(witnessed.as_slice()),
        )
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let mut r = crate::audit::Report::default();
            r.push(crate::audit::Check::fail(
                "verifier",
                format!("the verifier stopped: {e}"),
            ));
            r
        }
    };
    Ok(respond(
        StatusCode::OK,
        views::page(
            &chrome(&console, &session, Some(&node.id)),
            &title,
            views::verify(&node.id, &sender, &id, &report, &sources),
        ),
    ))
}

async fn bundle_file(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path((node, sender, id)): Path<(String, String, String)>,
) -> Result<Response, Refused> {
    let node = node_of(&console, &session, &node)?;
    message_ids(&console, &session, &sender, &id)?;
    Ok(match get_bundle(node, &sender, &id).await {
        Ok(text) => {
            let mut response = text.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Ids are limited to [A-Za-z0-9._:-]; ':' is not for file names.
            let name = format!("{sender}-{id}.bundle.json").replace(':', "_");
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
            response
        }
        Err(r) => respond(
            r.http_status(),
            views::page(
                &chrome(&console, &session, Some(&node.id)),
                "Receipt bundle",
                html! { h1 { "Receipt bundle of " (sender) "/" (id) } (views::refusal_box("the receipt bundle", &r)) },
            ),
        ),
    })
}

// ------------------------------------------------------------ audit

/// The newest of `of`'s checkpoints that `node` holds, oldest first.
async fn recent_checkpoints(
    node: &Node,
    of: &str,
    head: u64,
) -> Result<Vec<crate::model::Checkpoint>, Refusal> {
    // Checkpoints come every 1000 entries at most; the window holds the
    // newest, and the calls are bounded even if it does not.
    let mut from = head.saturating_sub(20 * u64::from(CHECKPOINTS_PER_CALL));
    let mut kept: VecDeque<crate::model::Checkpoint> = VecDeque::new();
    for _ in 0..8 {
        let answer = call(node.audit().get_checkpoints(pb::GetCheckpointsRequest {
            node: of.to_string(),
            from_seq: from,
            limit: CHECKPOINTS_PER_CALL,
            head_only: false,
        }))
        .await?;
        let count = answer.checkpoints.len();
        for c in answer.checkpoints {
            let signed = SignedCheckpoint {
                checkpoint: c.checkpoint,
                signature: c.signature,
            };
            if let Ok(c) = signed.open() {
                from = from.max(c.seq + 1);
                kept.push_back(c);
                if kept.len() > CHECKPOINTS_SHOWN {
                    kept.pop_front();
                }
            }
        }
        if count < CHECKPOINTS_PER_CALL as usize {
            break;
        }
    }
    Ok(kept.into())
}

async fn audit(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
) -> Response {
    let nodes = console.nodes();
    let snaps = futures::future::join_all(nodes.iter().map(|n| n.snapshot(FRESH))).await;
    let mut sections = Vec::new();
    for (node, snap) in nodes.iter().zip(&snaps) {
        let head = snap
            .audit
            .as_ref()
            .map(|a| a.head_seq)
            .map_err(Clone::clone);
        let mut section = views::AuditNode {
            node: node.id.clone(),
            head: head.clone(),
            checkpoints: Vec::new(),
            asked: Vec::new(),
        };
        let Ok(head) = head else {
            sections.push(section);
            continue;
        };
        let own = match recent_checkpoints(node, &node.id, head).await {
            Ok(c) => c,
            Err(r) => {
                section.head = Err(r);
                sections.push(section);
                continue;
            }
        };
        let oldest = own.first().map_or(0, |c| c.seq);
        // Ask each other node of the console which of them it holds.
        let peers: Vec<(&Node, &Arc<Snapshot>)> = nodes
            .iter()
            .zip(&snaps)
            .filter(|(p, s)| p.id != node.id && s.audits() != Some(false))
            .collect();
        let held = futures::future::join_all(peers.iter().map(|(p, _)| async move {
            call(p.audit().get_checkpoints(pb::GetCheckpointsRequest {
                node: node.id.clone(),
                from_seq: oldest,
                limit: CHECKPOINTS_PER_CALL,
                head_only: false,
            }))
            .await
            .map(|r| {
                r.checkpoints
                    .into_iter()
                    .filter_map(|c| {
                        SignedCheckpoint {
                            checkpoint: c.checkpoint,
                            signature: c.signature,
                        }
                        .open()
                        .ok()
                        .map(|c| (c.seq, c.head_hash))
                    })
                    .collect::<BTreeSet<_>>()
            })
        }))
        .await;
        for c in &own {
            section.checkpoints.push(views::CheckpointRow {
                seq: c.seq,
                time_ms: c.time_ms,
                head_hash: hex::encode(c.head_hash),
                witnessed_by: peers
                    .iter()
                    .zip(&held)
                    .filter(|(_, h)| {
                        h.as_ref()
                            .is_ok_and(|set| set.contains(&(c.seq, c.head_hash)))
                    })
                    .map(|((p, _), _)| p.id.clone())
                    .collect(),
            });
        }
        section.checkpoints.reverse();
        section.asked = peers
            .iter()
            .zip(held)
            .map(|((p, _), h)| (p.id.clone(), h.map(|_| ())))
            .collect();
        sections.push(section);
    }
    respond(
        StatusCode::OK,
        views::page(
            &chrome(&console, &session, None),
            "Audit",
            views::audit(&sections, nodes.len()),
        ),
    )
}
