//! The TLS listener: rustls with optional client certificates verified
//! against the cluster CA; each connection's client identity is resolved once
//! and attached to every request on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::http::PeerIdentity;

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

/// Most connections served at once; further clients wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 10_000;
/// A client must finish the TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a request's headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest header list an HTTP/2 request may carry. hyper's default (16 KiB)
/// is less than a bearer token TokenReview accepts (up to 16 KiB) plus the
/// other headers; HTTP/1.1's limit is hyper's buffer (about 400 KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, tcp, remote, app).await;
            drop(slot);
        });
    }
}

async fn serve_connection(acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, remote: SocketAddr, app: Router) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let identity = peer_identity(tls.get_ref().1);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(identity.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30))).max_header_list_size(MAX_HEADER_LIST_BYTES);
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
