//! Inbound: the workload's public port. Each connection is classified by
//! its first bytes: a TLS ClientHello is terminated with the proxy's
//! credentials (mutual TLS: the client's verified certificate names its
//! identity; no credentials yet means the handshake is refused, failing
//! closed); anything else is plain text. The (decrypted or plain) bytes then
//! decide HTTP/2, HTTP/1 or opaque TCP, and the connection is forwarded to
//! the app's private address.

mod app;
mod drive;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{self, Protocol};
use crate::io::{BoxIo, ByteCounts, CountingIo, PrefixedIo};
use crate::metrics::{Metrics, PeerLabels, Tls};
use crate::tls::{CredentialsRx, Identity, peer_identity};

pub use self::http::{L5D_CLIENT_ID, L5D_ORIG_PROTO, L5D_PROXY_ERROR, L5D_SERVER_ID, strip_identity_headers};

/// The TLS record type of a handshake message (the first byte of a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// One inbound port.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// The public address clients connect to (also the `target_addr` label).
    pub listen: SocketAddr,
    /// The app's private address.
    pub app: SocketAddr,
    /// Protocol detection must finish within this time.
    pub detect_timeout: Duration,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// Connecting to the app must succeed within this time.
    pub connect_timeout: Duration,
    /// Inbound authorization policy (`--policy on`), checked per opaque
    /// connection and per HTTP request.
    pub policy: Option<crate::policy::Enforcer>,
    /// The process-wide cap on client connections (shared with the other listeners).
    pub limit: crate::limit::ConnLimit,
}

/// What every connection of one port shares.
struct Shared {
    config: InboundConfig,
    credentials: CredentialsRx,
    metrics: Metrics,
    forward: Arc<http::Forward>,
}

/// Serves one inbound port on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: InboundConfig,
    credentials: CredentialsRx,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut forward = http::Forward::new(config.app, config.connect_timeout, metrics.clone());
    forward.policy = config.policy.clone();
    let forward = Arc::new(forward);
    let shared = Arc::new(Shared { config, credentials, metrics, forward });
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, new clients wait in the listen backlog.
        let slot = tokio::select! {
            slot = shared.config.limit.acquire() => slot,
            () = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(error) = shared.handle(stream, peer).await {
                        tracing::debug!(%peer, %error, "inbound connection closed");
                    }
                });
            }
            Err(error) => {
                // EMFILE and friends: back off a little rather than spin.
                tracing::warn!(%error, "inbound accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("mTLS refused: no identity certificate yet")]
    NoCredentials,
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
    #[error("connecting to the app {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

impl Shared {
    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Result<(), ConnError> {
        let _ = stream.set_nodelay(true);
        let counts = Arc::new(ByteCounts::default());
        let mut stream = CountingIo::new(stream, counts.clone());
        let timeout = self.config.detect_timeout;
        // One byte tells TLS from plain text.
        let mut first = BytesMut::with_capacity(detect::MAX_DETECT_BYTES);
        let read = tokio::time::timeout(timeout, (&mut stream).take(1).read_buf(&mut first)).await;
        let (io, tls, client_id, protocol): (BoxIo, Tls, Option<Identity>, Protocol) = match read {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {
                let (io, client_id, alpn) = self.terminate_tls(PrefixedIo::new(first, stream)).await?;
                let mut io = io;
                let (protocol, io): (Protocol, BoxIo) = match alpn.as_deref() {
                    Some(b"h2") => (Protocol::Http2, Box::new(io)),
                    _ => {
                        let mut buf = BytesMut::new();
                        let protocol = detect::detect(&mut io, &mut buf, timeout).await?;
                        (protocol, Box::new(PrefixedIo::new(buf, io)))
                    }
                };
                (io, Tls::Established, client_id, protocol)
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {
                let protocol = detect::detect(&mut stream, &mut first, timeout).await?;
                (Box::new(PrefixedIo::new(first, stream)), Tls::NoTlsFromRemote, None, protocol)
            }
            Ok(Err(error)) => return Err(error.into()),
            // Silence: a server-speaks-first protocol, forwarded as is.
            Err(_) => (Box::new(stream), Tls::NoTlsFromRemote, None, Protocol::Opaque),
        };
        let labels = PeerLabels::inbound(self.config.listen.to_string(), tls, client_id.as_ref().map(|i| i.to_string()));
        let conn = self.metrics.tcp_open(labels);
        let labels = conn.labels().clone();
        counts.attach(conn);
        tracing::debug!(%peer, ?protocol, client_id = ?client_id.as_ref().map(Identity::as_str), "inbound connection");
        match protocol {
            Protocol::Opaque => {
                if let Some(policy) = &self.config.policy {
                    let id = client_id.as_ref().map(Identity::as_str);
                    if !policy.allow_tcp(&crate::policy::Peer { addr: peer, target: self.config.listen, tls, client_id: id, series: None }) {
                        // Denied: dropping the stream closes the connection.
                        return Ok(());
                    }
                }
                self.opaque(io).await
            }
            Protocol::Http1 | Protocol::Http2 => {
                let conn =
                    http::Conn { client_id, labels, h2: protocol == Protocol::Http2, header_timeout: timeout, peer, local: self.config.listen, tls, allowed: Default::default() };
                self.forward.serve(io, conn).await.map_err(ConnError::Http)
            }
        }
    }

    /// Terminates TLS with the current credentials; returns the stream, the
    /// client's identity (when it presented a certificate) and the ALPN.
    async fn terminate_tls(
        &self,
        io: PrefixedIo<CountingIo<TcpStream>>,
    ) -> Result<(tokio_rustls::server::TlsStream<PrefixedIo<CountingIo<TcpStream>>>, Option<Identity>, Option<Vec<u8>>), ConnError> {
        let credentials = self.credentials.borrow().clone().ok_or(ConnError::NoCredentials)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config());
        let tls = tokio::time::timeout(self.config.handshake_timeout, acceptor.accept(io))
            .await
            .map_err(|_| ConnError::HandshakeTimeout)?
            .map_err(ConnError::Handshake)?;
        let (_, session) = tls.get_ref();
        let client_id = session.peer_certificates().and_then(peer_identity);
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        Ok((tls, client_id, alpn))
    }

    /// Opaque TCP: bytes both ways until either side closes.
    async fn opaque(&self, mut io: BoxIo) -> Result<(), ConnError> {
        let app = self.config.app;
        let mut upstream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(app))
            .await
            .map_err(|_| ConnError::Connect(app, std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| ConnError::Connect(app, e))?;
        let _ = upstream.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut io, &mut upstream).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::sync::watch;

    use super::*;
    use crate::test_ca::Ca;
    use crate::tls::Credentials;

    const SERVER: &str = "voting.emojivoto.serviceaccount.identity.linkerd.cluster.local";

    /// A TCP echo app.
    async fn echo_app() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn inbound(
        credentials: Option<Credentials>,
        detect_timeout: Duration,
    ) -> (SocketAddr, Metrics, watch::Sender<Option<Arc<Credentials>>>) {
        inbound_limited(credentials, detect_timeout, crate::limit::DEFAULT_MAX_CONNECTIONS).await
    }

    async fn inbound_limited(
        credentials: Option<Credentials>,
        detect_timeout: Duration,
        max_connections: usize,
    ) -> (SocketAddr, Metrics, watch::Sender<Option<Arc<Credentials>>>) {
        let app = echo_app().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(credentials.map(Arc::new));
        let metrics = Metrics::new();
        let config = InboundConfig {
            listen,
            app,
            detect_timeout,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            policy: None,
            limit: crate::limit::ConnLimit::new(max_connections),
        };
        tokio::spawn(serve(listener, config, rx, metrics.clone(), std::future::pending()));
        (listen, metrics, tx)
    }

    async fn roundtrip<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        io.write_all(bytes).await?;
        let mut back = vec![0; bytes.len()];
        io.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn opaque_plain_and_mtls_bytes_reach_the_app_and_are_counted() {
        let ca = Ca::new();
        let (addr, metrics, _tx) = inbound(Some(ca.credentials(SERVER)), Duration::from_secs(5)).await;
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut plain, b"\x00\x01binary").await.unwrap(), b"\x00\x01binary");

        let client = ca.credentials("web.emojivoto.serviceaccount.identity.linkerd.cluster.local");
        let connector = tokio_rustls::TlsConnector::from(client.client_config());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(Identity::parse(SERVER).unwrap().server_name(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        assert_eq!(roundtrip(&mut tls, b"*1\r\n$4\r\nPING\r\n").await.unwrap(), b"*1\r\n$4\r\nPING\r\n");
        drop((plain, tls));
        let text = metrics.encode();
        let mtls = format!(
            r#"direction="inbound",target_addr="{addr}",tls="true",client_id="web.emojivoto.serviceaccount.identity.linkerd.cluster.local""#
        );
        assert!(text.contains(&format!("tcp_open_total{{{mtls}}} 1")), "{text}");
        let plain = format!(r#"direction="inbound",target_addr="{addr}",tls="no_identity",no_tls_reason="no_tls_from_remote""#);
        assert!(text.contains(&format!("tcp_read_bytes_total{{{plain}}} 8")), "{text}");
    }

    #[tokio::test]
    async fn tls_is_refused_without_credentials_or_without_a_client_certificate() {
        let ca = Ca::new();
        let (addr, _metrics, tx) = inbound(None, Duration::from_secs(5)).await;
        let client = ca.credentials("web.emojivoto.serviceaccount.identity.linkerd.cluster.local");
        let connector = tokio_rustls::TlsConnector::from(client.client_config());
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(connector.connect(Identity::parse(SERVER).unwrap().server_name(), tcp).await.is_err(), "no credentials: fail closed");

        tx.send_replace(Some(Arc::new(ca.credentials(SERVER))));
        let anonymous = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(ca.roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(anonymous));
        // TLS 1.3: the client finishes first; the refusal arrives as an alert on the first read.
        let result = match connector.connect(Identity::parse(SERVER).unwrap().server_name(), tcp).await {
            Ok(mut tls) => roundtrip(&mut tls, b"hello").await.map(|_| ()),
            Err(e) => Err(e),
        };
        let err = result.unwrap_err().to_string();
        assert!(err.contains("CertificateRequired"), "{err}");
    }

    #[tokio::test]
    async fn denied_http_gets_403_and_denied_tcp_is_closed() {
        use crate::policy::{Enforcer, Loaded, client};
        let app = echo_app().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let (policy_tx, policy_rx) = client::channel();
        let deny = serde_json::json!({"namespace": "ns", "pod": "p", "defaultPolicy": "deny", "clusterNetworks": [], "ports": []});
        policy_tx.send_replace(Some(Arc::new(Loaded::decode(deny.to_string().as_bytes()).unwrap())));
        let config = InboundConfig {
            listen,
            app,
            detect_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            policy: Some(Enforcer::new(policy_rx, metrics.authz().clone())),
            limit: crate::limit::ConnLimit::default(),
        };
        let (_tx, rx) = watch::channel(None);
        tokio::spawn(serve(listener, config, rx, metrics.clone(), std::future::pending()));

        let mut http = TcpStream::connect(listen).await.unwrap();
        http.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(answer.contains("l5d-proxy-error: unauthorized request on route\r\n"), "{answer}");

        let mut opaque = TcpStream::connect(listen).await.unwrap();
        opaque.write_all(b"\x00\x01binary").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), opaque.read(&mut buf)).await.expect("closed by the proxy");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let text = metrics.encode();
        assert!(text.contains(r#"inbound_http_authz_deny_total{target_addr=""#), "{text}");
        assert!(text.contains(r#"srv_group="",srv_kind="default",srv_name="deny",tls="no_identity",no_tls_reason="no_tls_from_remote"} 1"#), "{text}");
    }

    #[tokio::test]
    async fn over_the_connection_cap_a_client_waits_until_a_slot_frees() {
        let (addr, _metrics, _tx) = inbound_limited(None, Duration::from_secs(5), 1).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut first, b"\x00one").await.unwrap(), b"\x00one");
        // The second connection is not refused: it waits in the backlog, unserved.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"\x00two").await.unwrap();
        let mut buf = [0u8; 4];
        let unserved = tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut buf)).await;
        assert!(unserved.is_err(), "served over the cap: {unserved:?}");
        // The first one closes: the second is accepted and served.
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut buf)).await.expect("served once a slot frees").unwrap();
        assert_eq!(&buf, b"\x00two");
    }

    #[tokio::test]
    async fn a_request_line_that_never_completes_is_closed() {
        let (addr, _metrics, _tx) = inbound(None, Duration::from_millis(200)).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"PROPFIND /").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await.expect("closed by the proxy");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
