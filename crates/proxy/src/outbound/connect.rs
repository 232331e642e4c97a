//! Connections to endpoints: TCP, then mTLS when the destination answer
//! names an identity. The server name checked is that *expected* identity
//! (sent as SNI), so a peer presenting any other certificate fails the
//! handshake.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

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
    // rustls hands its queued records over as one vectored write: without
    // this the default would send only the first one per system call.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.wrote(*n as u64);
        }
        r
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

/// Connects to `ep`: plain text when it has no identity, otherwise mTLS
/// with this proxy's current credentials, the expected identity as server
/// name, and `alpn` (`h2` for HTTP, none for opaque TCP). With `source`
/// (the pod's IP) the connection comes from that address, as a pod's
/// connections come from its pod IP in Kubernetes: the peer's network
/// policy (ServerAuthorization `networks`, NetworkAuthentication) tells
/// pods apart by it.
pub(crate) async fn connect(
    ep: &Endpoint,
    creds: &CredentialsRx,
    alpn: &[&[u8]],
    timeout: Duration,
    source: Option<IpAddr>,
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
    let tcp = tcp_connect(addr, source, timeout).await?;
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

/// The address to bind before connecting to `dest`, if any: `source` when it
/// can reach `dest` — same family, and loopback only towards loopback (a
/// 127/8 pod IP cannot be the source of a packet leaving the host).
pub(crate) fn bind_for(source: Option<IpAddr>, dest: SocketAddr) -> Option<SocketAddr> {
    let source = source.filter(|s| !s.is_unspecified())?;
    let reachable =
        source.is_ipv4() == dest.is_ipv4() && source.is_loopback() == dest.ip().is_loopback();
    reachable.then_some(SocketAddr::new(source, 0))
}

async fn dial(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(local) = bind_for(source, addr) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Port 0: the kernel picks a free port on the pod's IP.
    socket.bind(local)?;
    socket.connect(addr).await
}

async fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let tcp = tokio::time::timeout(timeout, dial(addr, source))
        .await
        .map_err(|_| ProxyError::Connect(addr, format!("timed out after {timeout:?}")))?
        .map_err(|e| ProxyError::Connect(addr, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWrite, AsyncWriteExt as _};

    use super::{Counted, bind_for};
    use crate::metrics::{DstLabels, Metrics, PeerLabels, Tls};

    /// A vectored writer that records the slices of every call.
    #[derive(Default)]
    struct Calls(Vec<Vec<Vec<u8>>>);

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(vec![buf.to_vec()]);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.0.push(bufs.iter().map(|b| b.to_vec()).collect());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_records_leave_in_one_vectored_write_and_are_counted() {
        let metrics = Metrics::new();
        let conn = metrics.tcp_open(PeerLabels::outbound(
            "a:1",
            Tls::Established,
            None,
            DstLabels::default(),
        ));
        let mut counted = Counted::new(Calls::default(), conn);
        assert!(counted.is_write_vectored());
        let bufs = [
            io::IoSlice::new(b"record one"),
            io::IoSlice::new(b"record two"),
        ];
        assert_eq!(counted.write_vectored(&bufs).await.unwrap(), 20);
        assert_eq!(
            counted.inner.0,
            vec![vec![b"record one".to_vec(), b"record two".to_vec()]]
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"tcp_write_bytes_total{direction="outbound",target_addr="a:1",tls="true"} 20"#
            ),
            "{text}"
        );
    }

    #[test]
    fn the_pod_ip_is_bound_only_where_it_can_reach() {
        let pod = Some("127.1.0.2".parse().unwrap());
        let to = |a: &str| a.parse().unwrap();
        assert_eq!(bind_for(pod, to("127.1.0.3:8080")), Some(to("127.1.0.2:0")));
        assert_eq!(bind_for(pod, to("127.0.0.1:8080")), Some(to("127.1.0.2:0")));
        // A loopback source cannot leave the host; other families never match.
        assert_eq!(bind_for(pod, to("10.0.0.1:8080")), None);
        assert_eq!(bind_for(pod, to("[::1]:8080")), None);
        assert_eq!(bind_for(None, to("127.1.0.3:8080")), None);
        assert_eq!(
            bind_for(Some("0.0.0.0".parse().unwrap()), to("127.1.0.3:8080")),
            None
        );
        let routable = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            bind_for(routable, to("10.9.9.9:80")),
            Some(to("10.1.2.3:0"))
        );
    }
}
