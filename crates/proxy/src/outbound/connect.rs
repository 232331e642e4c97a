//! Connections to endpoints: TCP, then mTLS when the destination answer
//! names an identity. The server name checked is that *expected* identity
//! (sent as SNI), so a peer presenting any other certificate fails the
//! handshake.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::{ProxyError, tls_error};
use crate::destination::Endpoint;
use crate::metrics::TcpConn;
use crate::tls::{CredentialsRx, Identity};

/// A byte stream to an endpoint.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection to an endpoint, plain or mTLS.
pub(crate) type Conn = Box<dyn Io>;

/// Counts wire bytes into the connection's metrics and records the close.
/// (`tcp_close_total` is counted when the [`TcpConn`] drops with it.)
pub(crate) struct Counted<T> {
    inner: T,
    metrics: TcpConn,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, metrics: TcpConn) -> Self {
        Self { inner, metrics }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.metrics.read(n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.wrote(*n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects to `ep`: plain text when it has no identity, otherwise mTLS
/// with this proxy's current credentials, the expected identity as server
/// name, and `alpn` (`h2` for HTTP, none for opaque TCP).
pub(crate) async fn connect(
    ep: &Endpoint,
    creds: &CredentialsRx,
    alpn: &[&[u8]],
    timeout: Duration,
    metrics: impl FnOnce() -> TcpConn,
) -> Result<(Conn, bool), ProxyError> {
    let addr = ep.address;
    // Fail closed before touching the network: a meshed endpoint needs our
    // certificate.
    let tls = match &ep.identity {
        None => None,
        Some(expected) => {
            let creds = creds.borrow().clone().ok_or(ProxyError::NoIdentity(addr))?;
            let identity = Identity::parse(expected).map_err(|e| {
                ProxyError::Tls(addr, format!("destination gave an unusable identity: {e}"))
            })?;
            let mut config = (*creds.client_config()).clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Some((identity, Arc::new(config)))
        }
    };
    let tcp = tcp_connect(addr, timeout).await?;
    let tcp = Counted::new(tcp, metrics());
    match tls {
        None => Ok((Box::new(tcp), false)),
        Some((identity, config)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream =
                tokio::time::timeout(timeout, connector.connect(identity.server_name(), tcp))
                    .await
                    .map_err(|_| {
                        ProxyError::Tls(addr, format!("handshake timed out after {timeout:?}"))
                    })?
                    .map_err(|e| tls_error(addr, identity.as_str(), &e))?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok((Box::new(stream), h2))
        }
    }
}

async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ProxyError::Connect(addr, format!("timed out after {timeout:?}")))?
        .map_err(|e| ProxyError::Connect(addr, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
