//! The TLS listener: rustls with optional client certificates verified
//! against the cluster CA; each connection's client identity is resolved once
//! and attached to every request on it.
//!
//! No client holds the server by sending nothing. Every connection is bounded:
//! - in number: [`ConnectionLimits::max_connections`] in all and
//!   [`ConnectionLimits::max_connections_per_client`] per client address; at the
//!   global cap the longest-idle connection makes room (see `admission`), and
//!   the accept loop never waits for a slot;
//! - in time while the server has no work in hand for it: the TLS handshake
//!   must finish within the handshake timeout; a connection is closed after
//!   the idle timeout with no request being read, handled or answered
//!   (HTTP/1.1 between requests and while a request's headers trickle in;
//!   HTTP/2 with no open stream, however many PINGs it answers, with a GOAWAY);
//!   a response frame the client does not take counts as idle, so a client
//!   that stops reading (an HTTP/2 window of zero) is closed too;
//! - a request body must arrive within the body timeout.
//!
//! A watch waiting for events is work in hand: it keeps its connection, as in
//! kube-apiserver. HTTP/2 has no per-stream header deadline: a stream whose
//! HEADERS never end is not yet a request, so it holds the connection only
//! while the idle timeout allows, or while another request is in hand, and
//! then only within h2's header-size limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::http::PeerIdentity;

mod admission;
mod body;

use admission::{Admission, Admitted, Refusal};
use body::{DeadlineBody, TurnTakingBody};

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM did not contain what was expected.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate PEM: {e}")))
}

/// Builds the server TLS config: serving cert/key, optional client certs signed by `client_ca_pem`.
pub fn server_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certs(cert_pem)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("key PEM: {e}")))?
        .ok_or_else(|| TlsError::Pem("no private key in PEM".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(client_ca_pem)? {
        roots.add(ca)?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build()?;
    let mut config = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn peer_identity(conn: &rustls::ServerConnection) -> PeerIdentity {
    match conn.peer_certificates().and_then(|c| c.first()) {
        None => PeerIdentity::None,
        Some(leaf) => match tessera_authn::x509::user_from_certificate(leaf) {
            Ok(user) => PeerIdentity::Certificate(Arc::new(user)),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate does not authenticate");
                PeerIdentity::Invalid
            }
        },
    }
}

/// How many connections the server holds and how long a client may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections held at once. At the cap the longest-idle connection is
    /// closed to make room; a newcomer is refused only if none is idle.
    pub max_connections: usize,
    /// Most connections one client (an IPv4 address or an IPv6 /64) holds at once;
    /// further ones are closed at once.
    pub max_connections_per_client: usize,
    /// A client must finish the TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// A connection the server has had no work in hand for this long is closed:
    /// no request being read (past its headers), handled, or answered to a
    /// client that takes the answer.
    pub idle_timeout: Duration,
    /// A request body must arrive in full within this time of its headers.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// Handshake 10 s (as before). Idle 30 s: kube-apiserver closes a silent new
    /// connection after its 32 s `ReadHeaderTimeout` (Go applies it to the TLS
    /// handshake too) and keep-alive connections after 90 s idle; one 30 s
    /// bound for both is the safer side, and clients reconnect without fuss.
    /// Body 60 s: kube-apiserver's default `--request-timeout`, after which it
    /// answers 504. 10,000 connections (as
    /// before), 500 per client: 20 addresses to fill the server, while a node
    /// running many clients behind one address (agents, sidecars, HTTP/1.1
    /// watches, `tessera bench --concurrency`) stays far below it.
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_client: 500,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// After a GOAWAY, how long a closing idle connection may take to finish before
/// it is dropped: h2 waits for the client's PING reply, which a hostile client
/// never sends. Go's HTTP/2 server allows the same second.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// How long the accept loop rests after an accept error such as EMFILE, which
/// would otherwise repeat at once.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Refused connections are logged at most this often (an attacker makes many).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections the kernel completes and queues for `accept` (Linux caps it at
/// `net.core.somaxconn`, 4096 by default, which is also what Go servers ask for).
/// A burst of new connections waits here instead of being dropped, which would
/// cost its clients a one-second SYN retransmission; tokio's default is 1024.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted server can bind at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What every connection task shares.
struct Shared {
    acceptor: TlsAcceptor,
    app: Router,
    http: auto::Builder<TokioExecutor>,
    limits: ConnectionLimits,
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // hyper's own HTTP/1.1 header deadline would run whenever it waits for a
    // request head, which is exactly when the connection is idle: the idle
    // timeout covers it, for both protocols, and closes silently as Go does.
    http.http1().timer(TokioTimer::new()).header_read_timeout(None);
    // PINGs detect dead peers under long watches; they do not keep a connection "busy".
    http.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let shared = Arc::new(Shared { acceptor: TlsAcceptor::from(Arc::new(tls)), app, http, limits });
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_client);
    let mut refusals = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    if !is_connection_error(&e) {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Refusing closes at once rather than queueing: a queued connection
        // would hold the accept loop (and, behind it, the kernel's backlog)
        // against every other client, while a closed one costs nothing and
        // its client can retry.
        let admitted = match admission.admit(remote.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                refusals.refused(refusal, remote);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(shared.clone(), tcp, remote, admitted));
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Counts refused connections and logs them at most every [`REFUSAL_LOG_INTERVAL`].
#[derive(Default)]
struct RefusalLog {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, refusal: Refusal, remote: SocketAddr) {
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self.last_logged.is_some_and(|last| now < last + REFUSAL_LOG_INTERVAL) {
            tracing::debug!(%remote, ?refusal, "connection refused");
            return;
        }
        let why = match refusal {
            Refusal::ClientLimit => "the client holds its maximum of connections",
            Refusal::Full => "the server holds its maximum of connections, none of them idle",
        };
        tracing::warn!(%remote, refused = self.unlogged, "refusing connections: {why}");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

async fn serve_connection(shared: Arc<Shared>, tcp: tokio::net::TcpStream, remote: SocketAddr, admitted: Admitted) {
    let conn = admitted.connection().clone();
    let limits = shared.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, shared.acceptor.accept(tcp));
    let tls = tokio::select! {
        () = conn.evicted() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        },
    };
    conn.touch();
    let identity = peer_identity(tls.get_ref().1);
    let app = shared.app.clone();
    let requests = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = requests.begin_request();
        let (parts, body) = req.into_parts();
        let (body, body_deadline) = DeadlineBody::new(body, limits.body_timeout);
        let mut req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
        req.extensions_mut().insert(identity.clone());
        let app = app.clone();
        async move {
            let Ok(response) = app.oneshot(req).await;
            // The handler saw its body fail; whatever it made of that, the
            // client gets kube-apiserver's timeout answer.
            let response = if body_deadline.expired() {
                tracing::debug!(%remote, "request body timed out");
                body::body_timeout_response()
            } else {
                response
            };
            Ok::<_, std::convert::Infallible>(response.map(|body| TurnTakingBody::new(body, request)))
        }
    });
    let connection = shared.http.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            return;
        }
        // Dropping the connection closes it: the slot is needed now.
        () = conn.evicted() => return,
        () = conn.idle_for(limits.idle_timeout) => tracing::debug!(%remote, "closing idle connection"),
    }
    // HTTP/2: GOAWAY; HTTP/1.1: close once idle (it is); not yet a protocol: close.
    connection.as_mut().graceful_shutdown();
    if tokio::time::timeout(GOAWAY_GRACE, connection).await.is_err() {
        tracing::debug!(%remote, "idle connection did not close in time; dropping it");
    }
    drop(admitted);
}
