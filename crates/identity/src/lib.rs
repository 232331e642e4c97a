//! The tessera identity CA: turns a ServiceAccount token and a CSR into a
//! 24-hour mTLS leaf certificate, speaking Linkerd's
//! `io.linkerd.proxy.identity.Identity/Certify` gRPC protocol, so a real
//! Linkerd proxy can use it. Entry points: [`run`] with a [`Config`] (the
//! `tessera identity` service), [`bootstrap::bootstrap`] (trust anchor and
//! issuer files) and [`check::run_checks`] (`tessera check`); the clap
//! arguments live in [`cli`] (feature `clap`).
//!
//! One job: sign leaves, safely. [`service::CertifyService`] runs the checks
//! of the contract in order — issuer ready, request fields present,
//! [`csr::ValidatedCsr`], token reviewed for `identity.l5d.io` and mapped to
//! the requested identity ([`review::Authenticated`]) — and only then
//! [`issuer::Issuer::issue`] signs. Refusals are [`error::CertifyError`],
//! turned into `tonic::Status` in one place.
//!
//! Must not depend on: tessera-apiserver, tessera-store, tessera-api. Tokens
//! are reviewed through the [`review::TokenReviewer`] trait (over kube-rs
//! against any Kubernetes API, `tessera server` included), never in-process.
//!
//! # Design
//!
//! - **Proof types.** `Issuer::issue` takes a `ValidatedCsr` (built only by
//!   the CSR validator) and an `Authenticated` (built only after TokenReview
//!   matched the CSR's identity): a path that skips a check does not compile.
//! - **Stricter than Linkerd** where it costs nothing: the CSR's signature is
//!   verified, URI/IP/email SANs are refused, serials are random 128-bit
//!   values, and the issuer is refused unless it chains to a trust anchor.
//! - **Hot reload.** The issuer lives in a `tokio::sync::watch` channel of
//!   `Arc<Issuer>`; a reload builds a complete new issuer and swaps it in, so
//!   an in-flight Certify finishes with the issuer it started with. A bad new
//!   issuer (wrong key, expired, not P-256, or any chain that fails RFC 5280
//!   path validation by webpki for a probe leaf it signs, see [`chain`]) is
//!   refused and the old one kept ([`reload`]).
//! - **Plaintext gRPC.** Like Linkerd's identity container, the service
//!   speaks h2c; Linkerd puts its own proxy in front for TLS.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod bootstrap;
pub mod bundle;
pub mod chain;
pub mod check;
#[cfg(feature = "clap")]
pub mod cli;
pub mod csr;
pub mod error;
pub mod issuer;
pub mod metrics;
pub mod pki;
pub mod reload;
pub mod renew;
pub mod rotate;
pub mod review;
pub mod service;
#[cfg(test)]
mod test_util;

pub use error::{CertifyError, Error, Result};

use crate::issuer::{IssuancePolicy, Issuer};
use crate::metrics::Metrics;
use crate::pki::TrustAnchors;
use crate::reload::{IssuerSource, IssuerUpdater, Offer};
use crate::review::{IdentityNaming, KubeTokenReviewer};
use crate::service::{CertifyService, Clock, IssuerWatch, SystemClock};

/// How to reach the Kubernetes API (for TokenReview, the issuer Secret, checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// In-cluster config, else `$KUBECONFIG` / `~/.kube/config` (kube's `Config::infer`).
    Infer,
    /// This kubeconfig file (its current context).
    Kubeconfig(PathBuf),
}

impl KubeSource {
    /// Builds a client (rustls on ring).
    pub async fn client(&self) -> Result<kube::Client> {
        let config = match self {
            Self::Infer => kube::Config::infer().await.map_err(|e| Error::Kube(e.to_string()))?,
            Self::Kubeconfig(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kube(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::Kube(format!("{}: {e}", path.display())))?
            }
        };
        kube::Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))
    }
}

/// Configuration of the identity service (built by the CLI).
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC (h2c) listen address; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Admin listen address (`/metrics`, `/ready`, `/live`); port 0 picks a free port.
    pub admin_addr: SocketAddr,
    /// The trust anchors: a PEM file or the bundle ConfigMap, watched either way.
    pub trust_anchors: bundle::AnchorsSource,
    /// Where the issuer comes from.
    pub issuer: IssuerSource,
    /// How to reach the Kubernetes API.
    pub kube: KubeSource,
    /// ServiceAccount → identity naming.
    pub naming: IdentityNaming,
    /// Leaf lifetime and clock skew.
    pub policy: IssuancePolicy,
    /// Automatic issuer renewal (needs the anchor's key); None: never renews.
    pub renew: Option<renew::RenewConfig>,
}

/// What [`run`] bound, passed to its `on_started` callback.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin_addr: SocketAddr,
}

/// Reads the trust anchors bundle.
pub fn read_trust_anchors(path: &std::path::Path) -> Result<TrustAnchors> {
    let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    TrustAnchors::from_pem(&pem).map_err(|source| Error::Anchors { path: path.to_owned(), source })
}

/// Runs the identity service until `shutdown` completes.
///
/// Checks the trust anchors, the kubeconfig and (for an issuer directory) the
/// issuer before binding any port; an issuer Secret is loaded asynchronously
/// and Certify answers `Unavailable` until it is. Calls `on_started` once both
/// listeners are bound.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static, on_started: impl FnOnce(&Started)) -> Result<()> {
    let client = config.kube.client().await?;
    let (anchors, pem) = bundle::load(&config.trust_anchors, Some(&client)).await?;
    tracing::info!(count = anchors.certificates().len(), source = %config.trust_anchors, "loaded trust anchors");
    let (anchors_updater, anchors_rx) = bundle::AnchorsUpdater::new(config.trust_anchors.clone(), anchors.clone(), Some(pem));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Metrics::default();
    let (issuer_tx, issuer_rx) = watch::channel::<Option<Arc<Issuer>>>(None);
    let mut updater = IssuerUpdater::new(issuer_tx, anchors, config.naming.clone(), clock.clone(), metrics.clone())
        .follow_anchors(anchors_rx.clone());

    if let IssuerSource::Dir(dir) = &config.issuer {
        let material = reload::read_issuer_dir(dir)?;
        if let Offer::Rejected(source) = updater.offer(material, &config.issuer) {
            return Err(Error::Issuer { from: config.issuer.to_string(), source });
        }
    }

    let listener = TcpListener::bind(config.addr).await.map_err(|e| Error::Serve {
        what: "binding the gRPC listener",
        addr: config.addr.to_string(),
        source: Box::new(e),
    })?;
    let admin = TcpListener::bind(config.admin_addr).await.map_err(|e| Error::Serve {
        what: "binding the admin listener",
        addr: config.admin_addr.to_string(),
        source: Box::new(e),
    })?;
    let started = Started {
        addr: listener.local_addr().map_err(|e| Error::Serve {
            what: "gRPC listener",
            addr: config.addr.to_string(),
            source: Box::new(e),
        })?,
        admin_addr: admin.local_addr().map_err(|e| Error::Serve {
            what: "admin listener",
            addr: config.admin_addr.to_string(),
            source: Box::new(e),
        })?,
    };

    let anchors_task = tokio::spawn(anchors_updater.run(Some(client.clone())));
    let reloader = match config.issuer.clone() {
        IssuerSource::Dir(dir) => tokio::spawn(reload::poll_dir(dir, updater)),
        IssuerSource::Secret { namespace, name } => tokio::spawn(reload::watch_secret(client.clone(), namespace, name, updater)),
    };
    let renewer = config.renew.clone().map(|renew| {
        tokio::spawn(
            renew::Renewer {
                config: renew,
                source: config.issuer.clone(),
                anchors_source: config.trust_anchors.clone(),
                naming: config.naming.clone(),
                client: client.clone(),
                issuer: issuer_rx.clone(),
                anchors: anchors_rx,
            }
            .run(),
        )
    });
    let service = CertifyService::new(
        issuer_rx.clone(),
        Arc::new(KubeTokenReviewer::new(client)),
        config.naming.clone(),
        config.policy,
        clock,
        metrics.clone(),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    tracing::info!(addr = %started.addr, admin = %started.admin_addr, issuer = %config.issuer, "identity service listening");
    on_started(&started);

    let grpc = tonic::transport::Server::builder().add_service(service.into_server()).serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        stopped(stop_rx.clone()),
    );
    let admin_app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/ready", get(ready_handler))
        .route("/live", get(|| async { "live\n" }))
        .with_state(AdminState { metrics, issuer: issuer_rx });
    let admin_server = axum::serve(admin, admin_app).with_graceful_shutdown(stopped(stop_rx));

    let (grpc, admin_result) = tokio::join!(grpc, admin_server);
    reloader.abort();
    if let Some(renewer) = renewer {
        renewer.abort();
    }
    anchors_task.abort();
    grpc.map_err(|e| Error::Serve { what: "serving gRPC", addr: started.addr.to_string(), source: Box::new(e) })?;
    admin_result.map_err(|e| Error::Serve { what: "serving admin", addr: started.admin_addr.to_string(), source: Box::new(e) })?;
    Ok(())
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    issuer: IssuerWatch,
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.issuer.borrow().is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "cert issuer not ready yet\n")
    }
}
