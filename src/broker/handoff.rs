//! Receivers waiting on an empty inbox are handed the messages that
//! arrive in the very group commit that takes custody of them.
//!
//! A `Receive` stream that found nothing to lease registers a [`Waiter`]
//! (its principal, how many messages it can take, its lease time). The
//! next `Peer.Deliver` takes the waiters, and its writer command leases
//! to them right after storing the batch: custody and lease share one
//! fsync instead of waiting for one each. The leases go to the waiting
//! streams before the inbox wake-up, so a stream sees them first. A
//! waiter given nothing is dropped, and its stream looks at the inbox
//! itself again. A stream that stops waiting (its timer fired, another
//! wake-up came) withdraws its waiter; if a delivery holds it already,
//! the stream takes that delivery's answer instead, so no lease is made
//! for a stream that left. Only a stream that closed leaves leases
//! behind, which go back to the inbox at once, as a closed stream's do.
//! The command and the hand-over run on a task of their own, not in the
//! peer's call: a call dropped after the command reached the writer (the
//! sending node crashed) would otherwise leave leases made and never
//! handed, unseen until their deadline.

use super::Broker;
use super::custody::Leasing;
use crate::error::Result;
use crate::model::{MessageKind, Principal};
use crate::store::{Arrival, Store};
use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// A stream waiting for messages to arrive.
#[derive(Debug)]
pub(super) struct Waiter {
    id: u64,
    holder: String,
    kinds: Option<BTreeSet<MessageKind>>,
    wanted: usize,
    lease_ms: u64,
    handed: oneshot::Sender<Leasing>,
}

impl Waiter {
    /// Leases to this waiter, on the writer thread (inside the command
    /// that stored `arrivals`): what the inbox held first, then the
    /// arrivals; nothing if it stopped waiting.
    pub(super) fn lease(&self, s: &Store, now: u64, arrivals: &[Arrival]) -> Result<Leasing> {
        if self.handed.is_closed() {
            return Ok(Leasing::nothing(now, now));
        }
        Leasing::run(
            s,
            (now, now + self.lease_ms),
            &self.holder,
            self.kinds.as_ref(),
            self.wanted,
            arrivals,
        )
    }
}

/// The streams waiting now.
#[derive(Debug, Default)]
pub(super) struct Waiting(Mutex<Vec<Waiter>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the list itself is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every waiter still waiting, taken out of the list.
    pub(super) fn take(&self) -> Vec<Waiter> {
        let mut waiting = self.lock();
        waiting.retain(|w| !w.handed.is_closed());
        std::mem::take(&mut *waiting)
    }

    /// How many streams are waiting (those that closed since they began
    /// are dropped first).
    fn count(&self) -> usize {
        let mut waiting = self.lock();
        waiting.retain(|w| !w.handed.is_closed());
        waiting.len()
    }

    /// Takes waiter `id` out of the list; `false` if it is not there (a
    /// delivery holds it, and answers it).
    fn withdraw(&self, id: u64) -> bool {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.retain(|w| w.id != id);
        waiting.len() < before
    }
}

impl Broker {
    /// Registers a stream of `receiver` that can take `wanted` messages
    /// and found the inbox empty: the answer comes when messages arrive
    /// for it, or is an error when a delivery brought none for it (see
    /// the module doc). Stop waiting with [`Broker::stop_waiting`].
    pub fn wait_for_arrivals(
        &self,
        receiver: &Principal,
        lease_ms: u64,
        wanted: usize,
    ) -> (u64, oneshot::Receiver<Leasing>) {
        let (handed, answer) = oneshot::channel();
        let id = rand::random();
        let mut waiting = self.shared.waiting.lock();
        // Waiters of streams that ended are dropped here too, so the list
        // holds at most one per open stream even when no delivery comes.
        waiting.retain(|w| !w.handed.is_closed());
        waiting.push(Waiter {
            id,
            holder: receiver.name.clone(),
            kinds: receiver.receive_kinds.clone(),
            wanted,
            lease_ms,
            handed,
        });
        (id, answer)
    }

    /// How many `Receive` streams wait on an empty inbox for messages to
    /// arrive now.
    pub fn streams_waiting(&self) -> usize {
        self.shared.waiting.count()
    }

    /// Withdraws waiter `id`: `true` if it was still waiting; `false` if a
    /// delivery holds it, whose answer the stream must then take.
    pub fn stop_waiting(&self, id: u64) -> bool {
        self.shared.waiting.withdraw(id)
    }

    /// Hands each waiter what was leased to it in the custody command
    /// (a waiter given nothing is dropped: its stream looks again), and
    /// puts leases whose stream closed back in the inbox.
    pub(super) async fn hand_over(&self, handed: Vec<(Waiter, Leasing)>) {
        let mut unwanted = Vec::new();
        for (waiter, leasing) in handed {
            if leasing.is_empty() {
                continue;
            }
            if let Err(leasing) = waiter.handed.send(leasing) {
                unwanted.extend(leasing.refs());
            }
        }
        self.return_stream_leases(unwanted).await;
    }
}
