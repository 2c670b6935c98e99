//! The console's accepted connections: at most [`MAX_CONNECTIONS`] open at
//! once (the next caller waits to be accepted), and each one closed after
//! [`IDLE`] without a byte moving either way, so that idle or stalled
//! callers cannot hold the console's descriptors.

use crate::transport::Deadline;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection on which nothing moves for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);

/// A TCP listener whose connections are counted and watched.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl CappedListener {
    pub fn new(inner: TcpListener) -> CappedListener {
        CappedListener {
            inner,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = WatchedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (WatchedStream, std::net::SocketAddr) {
        loop {
            // The semaphore is never closed; if it were, accepting without a
            // permit would lift the cap, so wait instead.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return std::future::pending().await;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        WatchedStream {
                            stream,
                            _permit: permit,
                            idle: Deadline::idle(IDLE),
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "console: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its permit until it is dropped, and
/// fails with `TimedOut` once nothing moved for [`IDLE`].
#[derive(Debug)]
pub struct WatchedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Deadline,
}

impl WatchedStream {
    fn moved(&mut self) {
        self.idle.read();
    }

    /// Called when the stream has nothing to give or take: has the idle
    /// deadline passed?
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.idle.poll_expired(cx)
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
