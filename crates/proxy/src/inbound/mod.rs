//! Inbound: the workload's public port. Each connection is classified by
//! its first bytes: a TLS ClientHello is terminated with the proxy's
//! credentials (mutual TLS: the client's verified certificate names its
//! identity; no credentials yet means the handshake is refused, failing
//! closed); anything else is plain text. The (decrypted or plain) bytes then
//! decide HTTP/2, HTTP/1 or opaque TCP, and the connection is forwarded to
//! the app's private address.

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
    let forward = Arc::new(http::Forward::new(config.app, config.connect_timeout, metrics.clone()));
    let shared = Arc::new(Shared { config, credentials, metrics, forward });
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
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
            Protocol::Opaque => self.opaque(io).await,
            Protocol::Http1 | Protocol::Http2 => {
                let conn =
                    http::Conn { client_id, labels, h2: protocol == Protocol::Http2, header_timeout: timeout, peer, local: self.config.listen, tls };
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
