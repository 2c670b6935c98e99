//! The bench's receiving application: takes each message, notes its
//! latency (from the send time in the payload's first 8 bytes) and
//! acknowledges it, on a `Session` stream or, with `--unary-ack`, with
//! unary `Ack` calls.

use crate::client::Connection;
use crate::pb;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Leases waiting for their acknowledgement, at most.
const ACKS_QUEUED: usize = 4096;

/// Starts the receiving application. Its task answers (received within
/// the window, latencies in µs).
pub(super) async fn receiving_application(
    receiver: &Connection,
    unary_ack: bool,
    outstanding: u32,
    epoch: Instant,
    window: std::ops::Range<Duration>,
    (submitted, submitting_done): (Arc<AtomicU64>, Arc<AtomicBool>),
) -> Result<JoinHandle<(u64, Vec<u64>)>> {
    let (deliveries, acks, helpers) = match unary_ack {
        true => unary(receiver, outstanding).await?,
        false => session(receiver, outstanding).await?,
    };
    let counting = Counting {
        epoch,
        window,
        submitted,
        submitting_done,
    };
    Ok(tokio::spawn(async move {
        let figures = counting.run(deliveries, acks).await;
        for h in helpers {
            h.abort();
        }
        figures
    }))
}

type Opened = (
    mpsc::Receiver<pb::Delivery>,
    mpsc::Sender<pb::LeaseRef>,
    Vec<JoinHandle<()>>,
);

/// Deliveries and acknowledgements on one `Session` stream.
async fn session(receiver: &Connection, outstanding: u32) -> Result<Opened> {
    let (requests, requested) = mpsc::channel(ACKS_QUEUED);
    let open = pb::ReceiveRequest {
        max_outstanding: outstanding,
        lease_seconds: 60,
    };
    requests
        .send(pb::SessionRequest {
            request: Some(pb::session_request::Request::Open(open)),
        })
        .await
        .context("opening the session")?;
    let mut events = receiver
        .broker()?
        .session(ReceiverStream::new(requested))
        .await
        .context("opening the session")?
        .into_inner();
    let (deliveries, delivered) = mpsc::channel(ACKS_QUEUED);
    let reader = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            if let Some(pb::session_event::Event::Delivery(d)) = event.event
                && deliveries.send(d).await.is_err()
            {
                return;
            }
        }
    });
    let (acks, mut to_ack) = mpsc::channel::<pb::LeaseRef>(ACKS_QUEUED);
    let acker = tokio::spawn(async move {
        let mut request_id = 0;
        while let Some(lease) = to_ack.recv().await {
            request_id += 1;
            let settle = pb::Settlement {
                request_id,
                lease: Some(lease),
                action: Some(pb::settlement::Action::Ack(pb::AckAction {})),
            };
            let request = pb::SessionRequest {
                request: Some(pb::session_request::Request::Settle(settle)),
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
    Ok((delivered, acks, vec![reader, acker]))
}

/// Deliveries on a `Receive` stream, acknowledged by 32 workers with
/// unary `Ack` calls: enough in flight lets one flush serve many.
async fn unary(receiver: &Connection, outstanding: u32) -> Result<Opened> {
    let mut stream = receiver
        .broker()?
        .receive(pb::ReceiveRequest {
            max_outstanding: outstanding,
            lease_seconds: 60,
        })
        .await
        .context("opening the receive stream")?
        .into_inner();
    let (deliveries, delivered) = mpsc::channel(ACKS_QUEUED);
    let mut helpers = vec![tokio::spawn(async move {
        while let Some(Ok(d)) = stream.next().await {
            if deliveries.send(d).await.is_err() {
                return;
            }
        }
    })];
    let (acks, to_ack) = mpsc::channel::<pb::LeaseRef>(ACKS_QUEUED);
    let to_ack = Arc::new(tokio::sync::Mutex::new(to_ack));
    for _ in 0..32 {
        let mut client = receiver.broker()?;
        let to_ack = to_ack.clone();
        helpers.push(tokio::spawn(async move {
            loop {
                // A tokio Mutex: the lock is held across the `.await`.
                let Some(lease) = to_ack.lock().await.recv().await else {
                    return;
                };
                let _ = client.ack(pb::AckRequest { lease: Some(lease) }).await;
            }
        }));
    }
    Ok((delivered, acks, helpers))
}

/// What the receiving application counts.
struct Counting {
    epoch: Instant,
    window: std::ops::Range<Duration>,
    submitted: Arc<AtomicU64>,
    submitting_done: Arc<AtomicBool>,
}

impl Counting {
    /// Takes deliveries until every accepted message has arrived, or the
    /// stream has been quiet for 5 s (a message that never arrives must
    /// not hang the bench); acknowledges each.
    async fn run(
        self,
        mut deliveries: mpsc::Receiver<pb::Delivery>,
        acks: mpsc::Sender<pb::LeaseRef>,
    ) -> (u64, Vec<u64>) {
        const POLL: Duration = Duration::from_millis(100);
        let (mut latencies, mut received, mut seen) = (Vec::new(), 0u64, 0u64);
        let mut quiet = Duration::ZERO;
        loop {
            if self.submitting_done.load(Ordering::Acquire)
                && seen >= self.submitted.load(Ordering::Relaxed)
            {
                break;
            }
            let d = match tokio::time::timeout(POLL, deliveries.recv()).await {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => {
                    quiet += POLL;
                    if quiet >= Duration::from_secs(5) {
                        break;
                    }
                    continue;
                }
            };
            quiet = Duration::ZERO;
            seen += 1;
            let now = self.epoch.elapsed();
            if let Some(bytes) = d.envelope.as_ref().and_then(|e| e.payload.get(..8)) {
                let sent_us = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
                if self.window.contains(&now) {
                    received += 1;
                }
                if sent_us >= self.window.start.as_micros() as u64 {
                    latencies.push((now.as_micros() as u64).saturating_sub(sent_us));
                }
            }
            let lease = pb::LeaseRef {
                sender_node: d.sender_node,
                message_id: d.message_id,
                lease_id: d.lease_id,
            };
            if acks.send(lease).await.is_err() {
                break;
            }
        }
        (received, latencies)
    }
}
