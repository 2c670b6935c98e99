//! The node's connections: accepts TCP, runs each TLS handshake under a
//! deadline, and holds every connection to the node's caps and deadlines.
//!
//! - A total cap (`limits.max_connections`, handshakes included): past it a
//!   connection is closed as soon as it is accepted, so the node never runs
//!   out of file descriptors and connections already open keep working.
//! - A small cap for connections that presented no client certificate
//!   (`limits.max_anonymous_connections`): the handshake lets them in so
//!   that they get a clear `UNAUTHENTICATED`, nothing more, and they are
//!   closed `limits.anonymous_connection_secs` after it.
//! - Any other connection from which nothing arrives for
//!   `limits.idle_connection_secs` is closed; the server's HTTP/2 keepalive
//!   pings (set on the server, see `node.rs`) make a live client answer well
//!   within that.
//!
//! Each connection holds its permits in [`Admitted`], which hands them back
//! when the connection is dropped. Refusals are logged at most once per
//! [`LOG_EVERY`], with how many there were.

use crate::config::Limits;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one log line per kind of trouble in this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Descriptors the node needs besides its connections: the store's files,
/// listeners, the peer links' own connections.
const DESCRIPTORS_BESIDES_CONNECTIONS: u64 = 128;

/// The caps and deadlines of a node's connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_anonymous: usize,
    pub anonymous_lifetime: Duration,
    pub idle: Duration,
}

impl From<&Limits> for ConnectionLimits {
    fn from(l: &Limits) -> Self {
        ConnectionLimits {
            max_connections: l.max_connections,
            max_anonymous: l.max_anonymous_connections,
            anonymous_lifetime: Duration::from_secs(l.anonymous_connection_secs),
            idle: Duration::from_secs(l.idle_connection_secs),
        }
    }
}

/// Accepted connections after their TLS handshake, within the caps. Each
/// handshake runs in its own task under a deadline, so a slow or silent
/// caller holds up no one else.
pub fn incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(64);
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let anonymous = Arc::new(Semaphore::new(limits.max_anonymous));
    let refusals = Arc::new(Refusals::default());
    let accept_errors = Refusals::default();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, most often: say so once in a
                        // while, not thousands of times a minute.
                        accept_errors.note(|n| tracing::warn!(failures = n, error = %e, "accept failed"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let Ok(permit) = total.clone().try_acquire_owned() else {
                drop(tcp);
                refusals.refused(remote, "limits.max_connections", limits.max_connections);
                continue;
            };
            // Without TCP_NODELAY, small answers wait for the caller's
            // delayed ACK (tens of milliseconds per call).
            let _ = tcp.set_nodelay(true);
            let handshake = Handshake {
                acceptor: acceptor.clone(),
                tx: tx.clone(),
                anonymous: anonymous.clone(),
                refusals: refusals.clone(),
                limits: limits.clone(),
            };
            tokio::spawn(handshake.run(tcp, remote, permit));
        }
    });
    ReceiverStream::new(rx)
}

/// What one handshake task needs.
struct Handshake {
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<io::Result<Admitted>>,
    anonymous: Arc<Semaphore>,
    refusals: Arc<Refusals>,
    limits: ConnectionLimits,
}

impl Handshake {
    async fn run(self, tcp: TcpStream, remote: SocketAddr, permit: OwnedSemaphorePermit) {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
        };
        let certified = tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        let (anonymous, deadline) = if certified {
            (None, Deadline::idle(self.limits.idle))
        } else {
            let Ok(p) = self.anonymous.clone().try_acquire_owned() else {
                self.refusals.refused(
                    remote,
                    "limits.max_anonymous_connections",
                    self.limits.max_anonymous,
                );
                return;
            };
            (Some(p), Deadline::fixed(self.limits.anonymous_lifetime))
        };
        let admitted = Admitted {
            inner: tls,
            deadline,
            _permits: (permit, anonymous),
        };
        let _ = self.tx.send(Ok(admitted)).await;
    }
}

/// A connection within the caps: a TLS stream holding its permits (given
/// back on drop) and closing itself when its deadline passes.
pub struct Admitted {
    inner: TlsStream<TcpStream>,
    deadline: Deadline,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("remote", &self.inner.get_ref().0.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

/// When a connection is closed for want of traffic (the nodes' listener
/// and the console's share it).
#[derive(Debug)]
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    /// `Some`: the deadline moves with every read; `None`: it is fixed.
    idle: Option<Duration>,
    last_read: Instant,
}

impl Deadline {
    pub(crate) fn idle(idle: Duration) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(idle)),
            idle: Some(idle),
            last_read: Instant::now(),
        }
    }

    fn fixed(lifetime: Duration) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(lifetime)),
            idle: None,
            last_read: Instant::now(),
        }
    }

    /// Something arrived (or, for the console, left). Only a clock read:
    /// the timer is moved when it fires, not on every byte.
    pub(crate) fn read(&mut self) {
        if self.idle.is_some() {
            self.last_read = Instant::now();
        }
    }

    /// Ready with an error once the deadline has passed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            match self.idle {
                Some(idle) if self.last_read + idle > Instant::now() => {
                    self.sleep.as_mut().reset(self.last_read + idle);
                }
                Some(idle) => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing arrived for {} s", idle.as_secs()),
                    ));
                }
                None => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a connection without a client certificate reached its lifetime",
                    ));
                }
            }
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline.read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let e = ready!(this.deadline.poll_expired(cx));
                let remote = this.inner.get_ref().0.peer_addr().ok();
                tracing::debug!(?remote, reason = %e, "closing a connection");
                Poll::Ready(Err(e))
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The caller's certificates reach the services (`Request::peer_certs`)
/// exactly as for a bare TLS stream.
impl Connected for Admitted {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Counts refusals between log lines. A std Mutex: nothing awaits while it
/// is held.
#[derive(Default)]
struct Refusals {
    since_last_line: AtomicU64,
    last_line: Mutex<Option<Instant>>,
}

impl Refusals {
    fn refused(&self, remote: SocketAddr, cap: &'static str, value: usize) {
        self.note(|n| {
            tracing::warn!(
                refused = n,
                latest = %remote,
                "{cap} ({value}) reached: refused {n} connection(s) since the last such line \
                 (one per {} s at most); connections already open are served",
                LOG_EVERY.as_secs()
            )
        });
    }

    /// Counts one event and calls `log` with the count if no line was
    /// written in the last [`LOG_EVERY`].
    fn note(&self, log: impl FnOnce(u64)) {
        self.note_at(Instant::now(), log)
    }

    fn note_at(&self, now: Instant, log: impl FnOnce(u64)) {
        self.since_last_line.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        *last = Some(now);
        log(self.since_last_line.swap(0, Ordering::Relaxed));
    }
}

/// Warns at start if `max_connections` (plus what the node needs besides)
/// exceeds the process's open-file limit: the cap would then not protect
/// the node from running out of descriptors. Reads `/proc/self/limits`;
/// elsewhere it says nothing.
pub fn check_descriptor_limit(max_connections: usize) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(open_files_soft_limit)
    else {
        return;
    };
    let needed = max_connections as u64 + DESCRIPTORS_BESIDES_CONNECTIONS;
    if needed > soft {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "limits.max_connections ({max_connections}) plus {DESCRIPTORS_BESIDES_CONNECTIONS} \
             for the store and peers exceeds the process's open-file limit ({soft}); raise it \
             (ulimit -n, LimitNOFILE= in systemd) or lower limits.max_connections"
        );
    }
}

/// The soft limit of the "Max open files" line of `/proc/self/limits`
/// (`None` when unlimited or unreadable).
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             127436               127436               processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(text), Some(1024));
        assert_eq!(
            open_files_soft_limit("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_their_count() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let mut lines = Vec::new();
        for i in 0..5 {
            refusals.note_at(start + Duration::from_secs(i), |n| lines.push(n));
        }
        refusals.note_at(start + LOG_EVERY, |n| lines.push(n));
        assert_eq!(lines, vec![1, 5]);
    }
}
