//! Stream adapters: replay bytes read during detection, count bytes for the
//! TCP metrics, and erase the stream type (plain or TLS) for the handlers.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::TcpConn;

/// Any bidirectional stream the handlers accept.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A type-erased stream.
pub type BoxIo = Box<dyn Io>;

/// A stream that first yields `prefix` (bytes already read from `inner`).
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> PrefixedIo<I> {
    /// Replays `prefix` before reading `inner`.
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Release the detection buffer (up to 8 KiB) for the connection's lifetime.
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a [`CountingIo`] reports: bytes are held here until the
/// connection's labels are known (after the TLS handshake), then go straight
/// to the connection's counters.
#[derive(Debug, Default)]
pub struct ByteCounts {
    conn: OnceLock<TcpConn>,
    pending_read: AtomicU64,
    pending_write: AtomicU64,
}

impl ByteCounts {
    /// Attaches the connection's metrics (once); pending counts move over.
    pub fn attach(&self, conn: TcpConn) {
        if self.conn.set(conn).is_err() {
            return;
        }
        if let Some(conn) = self.conn.get() {
            conn.read(self.pending_read.swap(0, Ordering::Relaxed));
            conn.wrote(self.pending_write.swap(0, Ordering::Relaxed));
        }
    }

    fn read(&self, n: usize) {
        match self.conn.get() {
            Some(conn) => conn.read(n as u64),
            None => {
                self.pending_read.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    fn wrote(&self, n: usize) {
        match self.conn.get() {
            Some(conn) => conn.wrote(n as u64),
            None => {
                self.pending_write.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Counts the bytes read from and written to the peer.
#[derive(Debug)]
pub struct CountingIo<I> {
    inner: I,
    counts: Arc<ByteCounts>,
}

impl<I> CountingIo<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, counts: Arc<ByteCounts>) -> Self {
        Self { inner, counts }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.counts.read(n);
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountingIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.counts.wrote(n);
        }
        poll
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.counts.wrote(n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::metrics::{Metrics, PeerLabels, Tls};

    #[tokio::test]
    async fn replays_the_prefix_and_counts_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        let counts = Arc::new(ByteCounts::default());
        let io = PrefixedIo::new(BytesMut::from(&b"hello "[..]), CountingIo::new(server, counts.clone()));
        client.write_all(b"world").await.unwrap();
        drop(client.shutdown().await);
        let mut out = String::new();
        let mut reader = io;
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        let metrics = Metrics::new();
        counts.attach(metrics.tcp_open(PeerLabels::inbound("a:1", Tls::NoTlsFromRemote, None)));
        assert!(metrics.encode().contains(
            "tcp_read_bytes_total{direction=\"inbound\",target_addr=\"a:1\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\"} 5"
        ));
    }
}
