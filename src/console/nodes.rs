//! The console's side of the nodes: one mTLS channel per node under the
//! principal's certificate, every call under a deadline, and a snapshot of
//! each node (health, queues, peers, audit head) taken at most once a
//! second however many pages ask, with a short history for the charts.
//!
//! What the principal may see is what the node answers: a call refused
//! with `PERMISSION_DENIED` hides that part of the pages. The console
//! never decides a role itself.

use crate::client::Connection;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::audit_client::AuditClient;
use crate::pb::broker_client::BrokerClient;
use anyhow::Result;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// The longest any call to a node may take.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The largest answer taken from a node (a receipt bundle without its
/// payload is a few KiB; a page of messages at most about 1 MiB).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Snapshots kept for the charts: ten minutes at one every two seconds.
pub const HISTORY_LEN: usize = 300;

/// A refusal or failure of a call, as the node (or the network) said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: tonic::Code,
    pub message: String,
}

impl Refusal {
    pub fn from_status(s: &tonic::Status) -> Refusal {
        Refusal {
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// A refusal given as a code number (as per-message outcomes carry it).
    pub fn from_code(code: i32, message: &str) -> Refusal {
        Refusal {
            code: tonic::Code::from_i32(code),
            message: message.to_string(),
        }
    }

    pub fn denied(&self) -> bool {
        self.code == tonic::Code::PermissionDenied
    }

    /// The gRPC code's name as the protocol spells it.
    pub fn code_name(&self) -> &'static str {
        use tonic::Code::*;
        match self.code {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status of a page that could not be shown because of it.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        use tonic::Code::*;
        match self.code {
            PermissionDenied | Unauthenticated => S::FORBIDDEN,
            NotFound => S::NOT_FOUND,
            InvalidArgument | OutOfRange => S::BAD_REQUEST,
            FailedPrecondition | AlreadyExists | Aborted => S::CONFLICT,
            ResourceExhausted => S::TOO_MANY_REQUESTS,
            DeadlineExceeded => S::GATEWAY_TIMEOUT,
            _ => S::BAD_GATEWAY,
        }
    }
}

/// Runs one call under [`CALL_DEADLINE`].
pub async fn call<T>(
    what: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(CALL_DEADLINE, what).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(Refusal::from_status(&status)),
        Err(_) => Err(Refusal {
            code: tonic::Code::DeadlineExceeded,
            message: format!(
                "no answer within {} s (is the node running and reachable?)",
                CALL_DEADLINE.as_secs()
            ),
        }),
    }
}

/// Overdue follow-ups a snapshot counts (more show as "100+").
pub const OVERDUE_COUNTED: u32 = 100;

/// What the console shows of one node at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was taken (the console's clock, Unix ms).
    pub taken_ms: u64,
    taken: Instant,
    /// `Ok(true)` when the node's health check says SERVING.
    pub health: Result<bool, Refusal>,
    pub queues: Result<pb::ListQueuesResponse, Refusal>,
    pub peers: Result<pb::ListPeersResponse, Refusal>,
    /// The head of the node's audit chain (no checkpoints are listed).
    pub audit: Result<pb::GetCheckpointsResponse, Refusal>,
    /// Overdue follow-ups (the first page).
    pub overdue: Result<pb::ListFollowUpsResponse, Refusal>,
}

impl Snapshot {
    /// Whether the node lets this principal operate: `None` when it could
    /// not be asked.
    pub fn operates(&self) -> Option<bool> {
        role_of(&self.queues)
    }

    /// Whether the node lets this principal audit.
    pub fn audits(&self) -> Option<bool> {
        role_of(&self.audit)
    }
}

fn role_of<T>(answer: &Result<T, Refusal>) -> Option<bool> {
    match answer {
        Ok(_) => Some(true),
        Err(r) if r.denied() => Some(false),
        Err(_) => None,
    }
}

/// One point of a node's history.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at_ms: u64,
    /// Envelopes waiting in every outbox.
    pub outbox: Option<u64>,
    /// Messages in the inbox: ready, leased and delayed.
    pub inbox: Option<u64>,
    pub accepted: Option<u64>,
    pub delivered: Option<u64>,
    pub audit_head: Option<u64>,
}

/// A rate between two samples, per second; `None` across a restart of the
/// node (a count that went down) or a missing figure.
fn rate(a: Option<u64>, b: Option<u64>, seconds: f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b >= a && seconds > 0.0 => Some((b - a) as f64 / seconds),
        _ => None,
    }
}

/// Points of the charts: `(at_ms, value)`.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub accepted_per_s: Vec<(u64, f64)>,
    pub delivered_per_s: Vec<(u64, f64)>,
    pub audit_per_s: Vec<(u64, f64)>,
    pub outbox: Vec<(u64, f64)>,
    pub inbox: Vec<(u64, f64)>,
}

/// One node as the console reaches it.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    /// The principal whose certificate the console presents.
    pub principal: String,
    pub endpoint: String,
    channel: Channel,
    /// The latest snapshot. A std Mutex: only swapped, never held across
    /// an `.await`.
    latest: Mutex<Option<Arc<Snapshot>>>,
    history: Mutex<VecDeque<Sample>>,
    /// Held while a snapshot is being taken, so that pages asking at once
    /// share one set of calls. A tokio Mutex: it is held across the calls.
    sampling: tokio::sync::Mutex<()>,
}

impl Node {
    pub fn new(id: &str, principal: &str, connection: &Connection) -> Result<Node> {
        Ok(Node {
            id: id.to_string(),
            principal: principal.to_string(),
            endpoint: connection.endpoint.clone(),
            channel: connection.channel()?,
            latest: Mutex::new(None),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
            sampling: tokio::sync::Mutex::new(()),
        })
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    pub fn broker(&self) -> BrokerClient<Channel> {
        BrokerClient::new(self.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// The latest snapshot, if one was taken.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A snapshot at most `max_age` old: the latest, or a fresh one.
    pub async fn snapshot(&self, max_age: Duration) -> Arc<Snapshot> {
        let fresh = |s: &Option<Arc<Snapshot>>| {
            s.as_ref().filter(|s| s.taken.elapsed() <= max_age).cloned()
        };
        if let Some(s) = fresh(&self.latest()) {
            return s;
        }
        let _turn = self.sampling.lock().await;
        // Another page may have taken one while this one waited.
        if let Some(s) = fresh(&self.latest()) {
            return s;
        }
        let snapshot = Arc::new(self.take().await);
        self.record(&snapshot);
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        snapshot
    }

    async fn take(&self) -> Snapshot {
        let (mut admin, mut admin2, mut audit, mut health, mut broker) = (
            self.admin(),
            self.admin(),
            self.audit(),
            self.health(),
            self.broker(),
        );
        let (health, queues, peers, audit, overdue) = tokio::join!(
            call(health.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })),
            call(admin.list_queues(pb::ListQueuesRequest {})),
            call(admin2.list_peers(pb::ListPeersRequest {})),
            call(audit.get_checkpoints(pb::GetCheckpointsRequest {
                head_only: true,
                ..Default::default()
            })),
            call(broker.list_follow_ups(pb::ListFollowUpsRequest {
                states: vec!["overdue".into()],
                page_size: OVERDUE_COUNTED,
                ..Default::default()
            })),
        );
        Snapshot {
            taken_ms: crate::now_ms(),
            taken: Instant::now(),
            health: health.map(|h| {
                h.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            }),
            queues,
            peers,
            audit,
            overdue,
        }
    }

    /// Adds a snapshot to the history (at most one point a second).
    fn record(&self, s: &Snapshot) {
        let queues = s.queues.as_ref().ok();
        let totals = queues.and_then(|q| q.totals);
        let sample = Sample {
            at_ms: s.taken_ms,
            outbox: queues.map(|q| q.outboxes.iter().map(|o| o.depth).sum()),
            inbox: queues.map(|q| {
                q.inbox
                    .map(|i| i.ready + i.leased + i.delayed)
                    .unwrap_or_default()
            }),
            accepted: totals.map(|t| t.accepted),
            delivered: totals.map(|t| t.delivered),
            audit_head: s.audit.as_ref().ok().map(|a| a.head_seq),
        };
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history
            .back()
            .is_some_and(|last| sample.at_ms < last.at_ms + 1000)
        {
            return;
        }
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// The chart series from the history.
    pub fn series(&self) -> Series {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = Series::default();
        let mut previous: Option<&Sample> = None;
        for point in history.iter() {
            let t = point.at_ms;
            if let Some(v) = point.outbox {
                s.outbox.push((t, v as f64));
            }
            if let Some(v) = point.inbox {
                s.inbox.push((t, v as f64));
            }
            if let Some(p) = previous {
                let secs = t.saturating_sub(p.at_ms) as f64 / 1000.0;
                if let Some(r) = rate(p.accepted, point.accepted, secs) {
                    s.accepted_per_s.push((t, r));
                }
                if let Some(r) = rate(p.delivered, point.delivered, secs) {
                    s.delivered_per_s.push((t, r));
                }
                if let Some(r) = rate(p.audit_head, point.audit_head, secs) {
                    s.audit_per_s.push((t, r));
                }
            }
            previous = Some(point);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_skip_restarts_and_gaps() {
        assert_eq!(rate(Some(10), Some(30), 2.0), Some(10.0));
        assert_eq!(rate(Some(30), Some(5), 2.0), None);
        assert_eq!(rate(None, Some(5), 2.0), None);
        assert_eq!(rate(Some(1), Some(5), 0.0), None);
    }

    #[test]
    fn refusals_name_their_code() {
        let r = Refusal::from_status(&tonic::Status::permission_denied("no"));
        assert!(r.denied());
        assert_eq!(r.code_name(), "PERMISSION_DENIED");
        assert_eq!(r.http_status(), axum::http::StatusCode::FORBIDDEN);
    }
}
