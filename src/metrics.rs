//! Prometheus metrics: a small registry of counters and histograms, the
//! text exposition format, and the plain-HTTP `/metrics` listener.
//!
//! Hand-written rather than a crate: the node needs a dozen series, and
//! exporter crates pull a second TLS stack (two rustls crypto providers in
//! one build make the TLS server panic). Counters and histograms are lock-free atomics updated on the hot paths; gauges (queue
//! depths, ages, peer states) are read from the store and the forwarders
//! when a scrape comes, so they cannot drift from the truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts by one label value. A std Mutex: held only to bump a number.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub fn add(&self, label: &str, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(label.to_string()).or_default() += n;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Bucket bounds for durations, in seconds: 100 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds for counts (flush batch sizes).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A histogram with fixed buckets. The sum is kept in millionths so that
/// it fits an atomic integer.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The counters and histograms of one node.
#[derive(Debug)]
pub struct Metrics {
    /// `Submit` calls, whatever their outcome.
    pub submitted: Counter,
    /// Submits stored as new messages (duplicates of an accepted id are not
    /// counted again).
    pub accepted: Counter,
    /// Refused submits by gRPC status code name.
    pub refused: LabeledCounter,
    /// Envelopes a peer took into custody, by peer.
    pub forwarded: LabeledCounter,
    /// Envelopes this node took into custody from its peers.
    pub delivered: Counter,
    pub acknowledged: Counter,
    pub rejected: Counter,
    /// Messages offered to a receiver again: after a lapsed or released
    /// lease, or after an operator requeued the dead letter.
    pub redelivered: Counter,
    pub dead_lettered: Counter,
    /// Expired messages by side: `sent` (never left the outbox) or
    /// `custody` (no receiver settled them in time).
    pub expired: LabeledCounter,
    pub submit_seconds: Histogram,
    /// Duration of one `Peer.Deliver` call that succeeded.
    pub forward_seconds: Histogram,
    /// From the envelope's creation at the sender to the first lease to a
    /// receiver of this node.
    pub end_to_end_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            submitted: Counter::default(),
            accepted: Counter::default(),
            refused: LabeledCounter::default(),
            forwarded: LabeledCounter::default(),
            delivered: Counter::default(),
            acknowledged: Counter::default(),
            rejected: Counter::default(),
            redelivered: Counter::default(),
            dead_lettered: Counter::default(),
            expired: LabeledCounter::default(),
            submit_seconds: Histogram::new(SECONDS_BUCKETS),
            forward_seconds: Histogram::new(SECONDS_BUCKETS),
            end_to_end_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// Writes the text exposition format (version 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    /// A counter family with one label; `always` lists label values shown
    /// even at zero, so that dashboards and alerts see the series at once.
    pub fn labeled_counter(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counter: &LabeledCounter,
        always: &[&str],
    ) {
        self.header(name, "counter", help);
        let mut values = counter.snapshot();
        for a in always {
            values.entry(a.to_string()).or_default();
        }
        for (v, n) in values {
            self.sample(name, &[(label, &v)], n as f64);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A gauge family with one label.
    pub fn labeled_gauge(&mut self, name: &str, help: &str, label: &str, values: &[(&str, f64)]) {
        self.header(name, "gauge", help);
        for (v, n) in values {
            self.sample(name, &[(label, v)], *n);
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            self.sample(&bucket, &[("le", &bound.to_string())], cumulative as f64);
        }
        let count = h.count();
        self.sample(&bucket, &[("le", "+Inf")], count as f64);
        self.sample(
            &format!("{name}_sum"),
            &[],
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        self.sample(&format!("{name}_count"), &[], count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Serves `GET /metrics` on `listener` until `stop`: one short-lived
/// connection per scrape, answered with whatever `render` returns. Other
/// paths get 404. Plain HTTP, HTTP/1.0-style (the connection closes after
/// the answer), which is all Prometheus needs.
pub async fn serve(
    listener: TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    stop: CancellationToken,
) {
    loop {
        let (mut socket, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            // A scraper that sends nothing for 5 s is dropped.
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = vec![0u8; 4096];
                let mut used = 0;
                while !buf[..used].windows(4).any(|w| w == b"\r\n\r\n") && used < buf.len() {
                    let n = socket.read(&mut buf[used..]).await?;
                    if n == 0 {
                        break;
                    }
                    used += n;
                }
                let request = String::from_utf8_lossy(&buf[..used]);
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                let (status, body) = match (method, path) {
                    ("GET", "/metrics") => match tokio::task::spawn_blocking(render).await {
                        // Rendering reads the store: off the async workers.
                        Ok(text) => ("200 OK", text),
                        Err(_) => ("500 Internal Server Error", String::new()),
                    },
                    ("GET", _) => (
                        "404 Not Found",
                        "cluebridge serves only /metrics here\n".to_string(),
                    ),
                    _ => ("405 Method Not Allowed", "use GET /metrics\n".to_string()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(body.as_bytes()).await?;
                socket.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answer {
                tracing::debug!(error = %e, "metrics scrape connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut e = Exposition::default();
        e.histogram("x_seconds", "test", &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"2\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum 5\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.labeled_gauge("g", "test", "peer", &[("a\"b", 1.0)]);
        assert!(e.finish().contains("g{peer=\"a\\\"b\"} 1\n"));
    }
}
