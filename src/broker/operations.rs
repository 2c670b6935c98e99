//! What operators see and do: queue and peer figures, dead letters
//! (requeue, discard), one message's history, pausing peers, and the
//! metrics exposition. Nothing here ever reads a payload.

use super::Broker;
use crate::error::{Error, Result};
use crate::metrics::Exposition;
use crate::model::followup::Side as FollowUpSide;
use crate::model::{
    EnvelopeHeader, MessageKind, MessageRef, ReceiptKind, SignedEnvelope, validate_id,
};
use crate::now_ms;
use crate::store::{OperatorAction, OperatorEvent, PauseRecord};

/// A peer's calls this many times in a row failed: the peer is down.
pub const DOWN_AFTER_FAILURES: u32 = 5;

/// What the forwarder of one peer last saw. Kept in memory: it describes
/// this run of the node (the pause, which must survive a restart, is also
/// in the store).
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub last_success_ms: u64,
    pub last_error: String,
    pub last_error_ms: u64,
    pub consecutive_failures: u32,
    pub rtt_us: u64,
    pub paused: Option<PauseRecord>,
}

/// A peer's state as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// No call failed since the last success (or no call was needed yet).
    Up,
    /// The last calls failed; the forwarder retries after a backoff.
    BackingOff,
    /// [`DOWN_AFTER_FAILURES`] or more calls in a row failed.
    Down,
    /// An operator paused forwarding.
    Paused,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::BackingOff => "backing_off",
            PeerState::Down => "down",
            PeerState::Paused => "paused",
        }
    }
}

impl PeerStatus {
    pub fn state(&self) -> PeerState {
        if self.paused.is_some() {
            PeerState::Paused
        } else if self.consecutive_failures >= DOWN_AFTER_FAILURES {
            PeerState::Down
        } else if self.consecutive_failures > 0 {
            PeerState::BackingOff
        } else {
            PeerState::Up
        }
    }
}

/// One peer with its endpoint and backlog.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub peer: String,
    pub endpoint: String,
    pub status: PeerStatus,
    pub backlog: u64,
}

/// One peer's outbox.
#[derive(Clone, Debug)]
pub struct OutboxView {
    pub peer: String,
    pub depth: u64,
    pub bytes: u64,
    pub oldest_age_ms: u64,
    pub paused: bool,
    pub receipts_waiting: u64,
}

/// Every queue of the node.
#[derive(Clone, Debug)]
pub struct QueuesView {
    pub at_ms: u64,
    pub outboxes: Vec<OutboxView>,
    pub inbox_ready: u64,
    pub inbox_leased: u64,
    pub inbox_delayed: u64,
    pub inbox_oldest_ready_age_ms: u64,
    pub dead_letters: u64,
    pub dead_letter_oldest_age_ms: u64,
}

/// A dead letter's metadata.
#[derive(Clone, Debug)]
pub struct DeadLetterView {
    pub message: MessageRef,
    pub kind: MessageKind,
    pub case_reference: String,
    pub payload_length: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub dead_lettered_at_ms: u64,
    pub attempts: u32,
    pub last_failure: String,
}

/// Which side of the path a message is on at this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node sent it.
    Sent,
    /// This node holds it for its receivers.
    Custody,
}

/// One step of a message's history.
#[derive(Clone, Debug)]
pub struct HistoryEvent {
    pub at_ms: u64,
    pub event: String,
    pub by: String,
    pub attempt: u32,
    pub reason: String,
}

/// A message's metadata and history, without its payload.
#[derive(Clone, Debug)]
pub struct MessageInfo {
    pub header: EnvelopeHeader,
    pub side: Side,
    pub state: String,
    pub attempts: u32,
    pub history: Vec<HistoryEvent>,
}

impl Broker {
    // ----------------------------------------------------------- peers

    fn lock_peers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, PeerStatus>> {
        // Poisoning cannot leave plain figures inconsistent.
        self.shared.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The forwarder of `peer` finished a call in `rtt`.
    pub fn peer_succeeded(&self, peer: &str, rtt: std::time::Duration) {
        let mut peers = self.lock_peers();
        let s = peers.entry(peer.to_string()).or_default();
        s.last_success_ms = now_ms();
        s.consecutive_failures = 0;
        s.rtt_us = rtt.as_micros() as u64;
    }

    /// The forwarder of `peer` saw a call fail.
    pub fn peer_failed(&self, peer: &str, error: &Error) {
        let mut peers = self.lock_peers();
        let s = peers.entry(peer.to_string()).or_default();
        s.last_error = error.to_string();
        s.last_error_ms = now_ms();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
    }

    pub fn peer_paused(&self, peer: &str) -> bool {
        self.lock_peers()
            .get(peer)
            .is_some_and(|s| s.paused.is_some())
    }

    fn check_peer(&self, peer: &str) -> Result<()> {
        validate_id("peer", peer)?;
        if self.peer_signals(peer).is_none() {
            return Err(Error::NotFound(format!(
                "{peer:?} is not a peer of node {} (see ListPeers)",
                self.node_id()
            )));
        }
        Ok(())
    }

    /// Stops forwarding to `peer` until [`Broker::resume_peer`]; stored, so
    /// it survives a restart. Pausing a paused peer changes nothing.
    pub async fn pause_peer(&self, principal: &str, peer: &str) -> Result<PeerView> {
        self.check_peer(peer)?;
        if !self.peer_paused(peer) {
            let record = PauseRecord {
                at_ms: now_ms(),
                principal: principal.to_string(),
            };
            let (p, r) = (peer.to_string(), record.clone());
            self.store()
                .write(move |s| s.set_paused(&p, Some(&r)))
                .await?;
            self.lock_peers()
                .entry(peer.to_string())
                .or_default()
                .paused = Some(record);
            tracing::info!(peer, principal, "peer paused");
        }
        self.peer_view(peer)
    }

    /// Lets the forwarder of `peer` run again.
    pub async fn resume_peer(&self, principal: &str, peer: &str) -> Result<PeerView> {
        self.check_peer(peer)?;
        if self.peer_paused(peer) {
            let p = peer.to_string();
            self.store().write(move |s| s.set_paused(&p, None)).await?;
            self.lock_peers()
                .entry(peer.to_string())
                .or_default()
                .paused = None;
            tracing::info!(peer, principal, "peer resumed");
            self.wake_peer(peer);
        }
        self.peer_view(peer)
    }

    /// Restores the pauses stored by earlier runs.
    pub(super) fn load_pauses(&self) -> Result<()> {
        for (peer, record) in self.store().paused_peers()? {
            tracing::info!(peer, paused_by = %record.principal, "peer stays paused from an earlier run");
            self.lock_peers().entry(peer).or_default().paused = Some(record);
        }
        Ok(())
    }

    fn peer_view(&self, peer: &str) -> Result<PeerView> {
        let endpoint = self
            .config()
            .federation
            .node(peer)
            .map(|n| n.endpoint.clone())
            .unwrap_or_default();
        Ok(PeerView {
            peer: peer.to_string(),
            endpoint,
            status: self.lock_peers().get(peer).cloned().unwrap_or_default(),
            backlog: self.store().outbox_depth(peer) as u64,
        })
    }

    /// Every peer, in id order.
    pub fn peers(&self) -> Result<Vec<PeerView>> {
        self.peer_ids().iter().map(|p| self.peer_view(p)).collect()
    }

    // ---------------------------------------------------------- queues

    /// Peer ids in order.
    fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.config().peers().map(|p| p.id.clone()).collect();
        ids.sort();
        ids
    }

    /// Every queue's figures, from the store's counters: the same cost at
    /// any backlog.
    pub fn queues(&self) -> Result<QueuesView> {
        let now = now_ms();
        let age = |t: Option<u64>| t.map_or(0, |t| now.saturating_sub(t));
        let mut outboxes = Vec::new();
        for peer in self.peer_ids() {
            let (depth, bytes, oldest) = self.store().outbox_stats(&peer)?;
            outboxes.push(OutboxView {
                depth: depth as u64,
                bytes,
                oldest_age_ms: age(oldest),
                paused: self.peer_paused(&peer),
                receipts_waiting: self.store().receipt_outbox_depth(&peer) as u64,
                peer,
            });
        }
        let (ready, delayed, earliest_ready, leased) = self.store().inbox_stats(now)?;
        let (dead, oldest_dead) = self.store().dead_letter_stats()?;
        Ok(QueuesView {
            at_ms: now,
            outboxes,
            inbox_ready: ready as u64,
            inbox_leased: leased as u64,
            inbox_delayed: delayed as u64,
            inbox_oldest_ready_age_ms: age(earliest_ready),
            dead_letters: dead as u64,
            dead_letter_oldest_age_ms: age(oldest_dead),
        })
    }

    // ---------------------------------------------------- dead letters

    fn header_of(&self, message: &MessageRef) -> Result<EnvelopeHeader> {
        let bytes = self
            .store()
            .envelope(message)?
            .ok_or_else(|| Error::corrupt("envelopes", format!("{message} has no envelope")))?;
        let envelope = SignedEnvelope::decode(bytes).map_err(|e| Error::corrupt("envelopes", e))?;
        EnvelopeHeader::decode(&envelope.header).map_err(|e| Error::corrupt("envelopes", e))
    }

    /// Up to `limit` dead letters, oldest first, and how many there are.
    pub fn dead_letters(&self, limit: usize) -> Result<(Vec<DeadLetterView>, u64)> {
        let (total, _) = self.store().dead_letter_stats()?;
        let mut out = Vec::new();
        for (message, at, record) in self.store().dead_letters(limit)? {
            let header = self.header_of(&message)?;
            let last_failure = self
                .store()
                .receipts(&message)?
                .iter()
                .filter_map(|r| r.open().ok())
                .filter(|r| r.kind == ReceiptKind::DeadLettered)
                .max_by_key(|r| r.issued_at_ms)
                .map(|r| r.reason)
                .unwrap_or_default();
            out.push(DeadLetterView {
                message,
                kind: record.kind,
                case_reference: header.case_reference,
                payload_length: header.payload_length,
                created_at_ms: header.created_at_ms,
                expires_at_ms: record.expires_at_ms,
                dead_lettered_at_ms: at,
                attempts: record.attempts,
                last_failure,
            });
        }
        Ok((out, total as u64))
    }

    /// Puts dead letters back in the inbox with fresh attempts; `None`
    /// means all of them. Each message gets its own outcome.
    pub async fn requeue_dead_letters(
        &self,
        principal: &str,
        messages: Option<Vec<MessageRef>>,
    ) -> Result<Vec<(MessageRef, Result<()>)>> {
        let messages = match messages {
            Some(m) => m,
            None => self
                .store()
                .dead_letters(usize::MAX)?
                .into_iter()
                .map(|(m, _, _)| m)
                .collect(),
        };
        let event = OperatorEvent {
            at_ms: now_ms(),
            action: OperatorAction::Requeued,
            principal: principal.to_string(),
            reason: String::new(),
        };
        let outcomes = self
            .store()
            .write(move |s| {
                Ok(messages
                    .into_iter()
                    .map(|m| {
                        let outcome = s.requeue_dead_letter(&m, event.at_ms, &event);
                        (m, outcome)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        for (m, outcome) in &outcomes {
            match outcome {
                Ok(()) => tracing::info!(message = %m, principal, "dead letter requeued"),
                Err(e) => tracing::warn!(message = %m, principal, error = %e, "requeue refused"),
            }
        }
        self.inbox_wake().notify_waiters();
        Ok(outcomes)
    }

    /// Gives dead letters up for good, recording `reason`.
    pub async fn discard_dead_letters(
        &self,
        principal: &str,
        messages: Vec<MessageRef>,
        reason: &str,
    ) -> Result<Vec<(MessageRef, Result<()>)>> {
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "a discard needs a reason; it is recorded in each message's history",
            ));
        }
        let max = self.config().limits.max_reason_len;
        if reason.len() > max {
            return Err(Error::invalid(format!(
                "reason is {} bytes long; the limit is {max}",
                reason.len()
            )));
        }
        let event = OperatorEvent {
            at_ms: now_ms(),
            action: OperatorAction::Discarded,
            principal: principal.to_string(),
            reason: reason.to_string(),
        };
        let outcomes = self
            .store()
            .write(move |s| {
                Ok(messages
                    .into_iter()
                    .map(|m| {
                        let outcome = s.discard_dead_letter(&m, &event);
                        (m, outcome)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        for (m, outcome) in &outcomes {
            match outcome {
                Ok(()) => tracing::info!(message = %m, principal, "dead letter discarded"),
                Err(e) => tracing::warn!(message = %m, principal, error = %e, "discard refused"),
            }
        }
        Ok(outcomes)
    }

    // --------------------------------------------------------- message

    /// A message's metadata and history: receipts and operator actions,
    /// oldest first.
    pub fn message_info(&self, message: &MessageRef) -> Result<MessageInfo> {
        validate_id("sender_node", &message.sender_node)?;
        validate_id("message_id", &message.message_id)?;
        let (side, state, attempts) = if message.sender_node == self.node_id() {
            let r = self.store().sent(message)?;
            let r = r.ok_or_else(|| {
                Error::NotFound(format!("no message {message} was sent by this node"))
            })?;
            (Side::Sent, r.state.as_str().to_string(), 0)
        } else {
            let r = self.store().inbound(message)?.ok_or_else(|| {
                Error::NotFound(format!("no message {message} in this node's custody"))
            })?;
            (Side::Custody, r.state.as_str().to_string(), r.attempts)
        };
        let header = self.header_of(message)?;
        let mut history: Vec<HistoryEvent> = self
            .store()
            .receipts(message)?
            .iter()
            .filter_map(|r| r.open().ok())
            .map(|r| HistoryEvent {
                at_ms: r.issued_at_ms,
                event: r.kind.as_str().to_string(),
                by: r.issuer_node,
                attempt: r.attempt,
                reason: r.reason,
            })
            .collect();
        history.extend(
            self.store()
                .operator_events(message)?
                .into_iter()
                .map(|e| HistoryEvent {
                    at_ms: e.at_ms,
                    event: e.action.as_str().to_string(),
                    by: e.principal,
                    attempt: 0,
                    reason: e.reason,
                }),
        );
        // Receipts issued in one millisecond keep the order of the path.
        history.sort_by_key(|e| {
            let step = match e.event.as_str() {
                "accepted" => 0,
                "delivered" => 1,
                _ => 2,
            };
            (e.at_ms, step)
        });
        Ok(MessageInfo {
            header,
            side,
            state,
            attempts,
            history,
        })
    }

    // --------------------------------------------------------- metrics

    /// The node's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let m = &self.shared.metrics;
        let mut e = Exposition::default();
        e.gauge(
            "cluebridge_store_failed",
            "1 while the store refuses changes after a failed write or sync (restart the node once the disk is healthy), else 0.",
            if self.store().failure().is_some() { 1.0 } else { 0.0 },
        );
        e.counter(
            "cluebridge_store_refused_total",
            "Changes refused because the store latched after a failed write or sync.",
            self.store().refused_changes(),
        );
        e.counter(
            "cluebridge_messages_submitted_total",
            "Submit calls, whatever their outcome.",
            m.submitted.get(),
        );
        e.counter(
            "cluebridge_messages_accepted_total",
            "Submits stored as new messages and answered accepted.",
            m.accepted.get(),
        );
        e.labeled_counter(
            "cluebridge_submits_refused_total",
            "Refused submits by gRPC status code.",
            "reason",
            &m.refused,
            &[],
        );
        let peers = self.peer_ids();
        let peer_refs: Vec<&str> = peers.iter().map(String::as_str).collect();
        e.labeled_counter(
            "cluebridge_messages_forwarded_total",
            "Envelopes a peer took into custody, by peer.",
            "peer",
            &m.forwarded,
            &peer_refs,
        );
        e.counter(
            "cluebridge_messages_delivered_total",
            "Envelopes this node took into custody from its peers.",
            m.delivered.get(),
        );
        e.counter(
            "cluebridge_messages_acknowledged_total",
            "Messages in custody acknowledged by receivers.",
            m.acknowledged.get(),
        );
        e.counter(
            "cluebridge_messages_rejected_total",
            "Messages in custody rejected by receivers.",
            m.rejected.get(),
        );
        e.counter(
            "cluebridge_messages_redelivered_total",
            "Messages offered to a receiver again (lapsed or released lease, requeued dead letter).",
            m.redelivered.get(),
        );
        e.counter(
            "cluebridge_messages_dead_lettered_total",
            "Messages in custody that used up their delivery attempts.",
            m.dead_lettered.get(),
        );
        e.labeled_counter(
            "cluebridge_messages_expired_total",
            "Messages whose time to live passed: side=sent (never left the outbox) or custody.",
            "side",
            &m.expired,
            &["custody", "sent"],
        );

        // Overdue follow-ups: the index walk sees only the overdue ones.
        if let Ok(counts) = self.store().overdue_counts() {
            let per_peer = |side: FollowUpSide| -> Vec<(&str, f64)> {
                peer_refs
                    .iter()
                    .map(|p| {
                        let n = counts.get(&(side, p.to_string())).copied().unwrap_or(0);
                        (*p, n as f64)
                    })
                    .collect()
            };
            e.labeled_gauge(
                "cluebridge_followups_overdue",
                "Messages this node sent whose reply-by deadline passed with no final feedback, by recipient node.",
                "peer",
                &per_peer(FollowUpSide::Awaiting),
            );
            e.labeled_gauge(
                "cluebridge_feedback_owed_overdue",
                "Messages this node received and owes feedback on, past their reply-by deadline, by sender node.",
                "peer",
                &per_peer(FollowUpSide::Owed),
            );
        }

        // From the store's counters: a scrape costs the same at any backlog.
        match self.queues() {
            Ok(q) => {
                let per_peer = |f: &dyn Fn(&OutboxView) -> f64| -> Vec<(&str, f64)> {
                    q.outboxes.iter().map(|o| (o.peer.as_str(), f(o))).collect()
                };
                e.labeled_gauge(
                    "cluebridge_outbox_messages",
                    "Envelopes waiting in a peer's outbox.",
                    "peer",
                    &per_peer(&|o| o.depth as f64),
                );
                e.labeled_gauge(
                    "cluebridge_outbox_bytes",
                    "Stored size of the envelopes waiting in a peer's outbox.",
                    "peer",
                    &per_peer(&|o| o.bytes as f64),
                );
                e.labeled_gauge(
                    "cluebridge_outbox_oldest_age_seconds",
                    "Age of the oldest envelope waiting for a peer (0 when none).",
                    "peer",
                    &per_peer(&|o| o.oldest_age_ms as f64 / 1000.0),
                );
                e.labeled_gauge(
                    "cluebridge_receipt_outbox_messages",
                    "Receipts waiting to go back to a peer.",
                    "peer",
                    &per_peer(&|o| o.receipts_waiting as f64),
                );
                e.labeled_gauge(
                    "cluebridge_inbox_messages",
                    "Messages in custody waiting for receivers: ready, delayed (redelivery backoff) or leased.",
                    "state",
                    &[
                        ("delayed", q.inbox_delayed as f64),
                        ("leased", q.inbox_leased as f64),
                        ("ready", q.inbox_ready as f64),
                    ],
                );
                e.gauge(
                    "cluebridge_inbox_oldest_ready_age_seconds",
                    "How long the oldest ready message has waited for a receiver (0 when none).",
                    q.inbox_oldest_ready_age_ms as f64 / 1000.0,
                );
                e.gauge(
                    "cluebridge_leases_in_flight",
                    "Messages leased to receivers now.",
                    q.inbox_leased as f64,
                );
                e.gauge(
                    "cluebridge_dead_letter_messages",
                    "Dead letters waiting for an operator.",
                    q.dead_letters as f64,
                );
                e.gauge(
                    "cluebridge_dead_letter_oldest_age_seconds",
                    "Age of the oldest dead letter (0 when none).",
                    q.dead_letter_oldest_age_ms as f64 / 1000.0,
                );
            }
            Err(err) => tracing::error!(error = %err, "cannot read queue figures for metrics"),
        }
        {
            let statuses: Vec<(String, PeerStatus)> = {
                let known = self.lock_peers();
                peers
                    .iter()
                    .map(|p| (p.clone(), known.get(p).cloned().unwrap_or_default()))
                    .collect()
            };
            let gauge = |f: &dyn Fn(&PeerStatus) -> f64| -> Vec<(&str, f64)> {
                statuses.iter().map(|(p, s)| (p.as_str(), f(s))).collect()
            };
            e.labeled_gauge(
                "cluebridge_peer_up",
                "1 when no call to the peer failed since the last success, else 0.",
                "peer",
                &gauge(&|s| f64::from(u8::from(s.consecutive_failures == 0))),
            );
            e.labeled_gauge(
                "cluebridge_peer_paused",
                "1 when an operator paused forwarding to the peer.",
                "peer",
                &gauge(&|s| f64::from(u8::from(s.paused.is_some()))),
            );
            e.labeled_gauge(
                "cluebridge_peer_consecutive_failures",
                "Calls to the peer that failed in a row.",
                "peer",
                &gauge(&|s| f64::from(s.consecutive_failures)),
            );
            e.labeled_gauge(
                "cluebridge_peer_rtt_seconds",
                "Round-trip time of the last successful call to the peer.",
                "peer",
                &gauge(&|s| s.rtt_us as f64 / 1e6),
            );
        }
        e.histogram(
            "cluebridge_submit_duration_seconds",
            "Time to answer a submit that was accepted (validation, signing, durable store).",
            &m.submit_seconds,
        );
        e.histogram(
            "cluebridge_forward_duration_seconds",
            "Duration of Peer.Deliver calls that succeeded.",
            &m.forward_seconds,
        );
        e.histogram(
            "cluebridge_end_to_end_latency_seconds",
            "From the envelope's creation at the sender to its first lease to a receiver here.",
            &m.end_to_end_seconds,
        );
        e.gauge(
            "cluebridge_receive_streams_waiting",
            "Receive streams waiting on an empty inbox for messages to arrive (receivers idle, not falling behind).",
            self.streams_waiting() as f64,
        );
        let (batch, flush) = self.store().flush_histograms();
        e.histogram(
            "cluebridge_store_flush_batch_changes",
            "State changes made durable by one group-commit flush.",
            batch,
        );
        e.histogram(
            "cluebridge_store_flush_duration_seconds",
            "Duration of one group-commit flush to disk.",
            flush,
        );
        if let Ok(size) = self.store().size_on_disk() {
            e.gauge(
                "cluebridge_store_size_bytes",
                "Bytes the node's database takes on disk.",
                size as f64,
            );
        }
        e.finish()
    }
}
