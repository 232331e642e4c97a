//! `tessera proxy`: the sidecar that gives a workload its mesh identity.
//!
//! It holds an identity certificate obtained from `tessera identity` over
//! Linkerd's Certify protocol, terminates mutual TLS for inbound traffic
//! (setting `l5d-client-id` from the client certificate), originates mutual
//! TLS for outbound traffic to endpoints whose *expected* identity comes from
//! the control plane, and exports linkerd2-proxy's metric names.
//!
//! The one value every part shares is [`tls::Credentials`]: the current
//! certificate, key and trust anchors, already built into rustls server and
//! client configurations. It is published through a `tokio::sync::watch`
//! channel ([`tls::CredentialsRx`]); a renewal or trust-bundle reload swaps a
//! complete new value in, so a handshake in flight finishes with the
//! credentials it started with.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod apistream;
pub mod balance;
pub mod certify;
pub mod config;
pub mod destination;
pub mod detect;
pub mod exposition;
pub mod inbound;
pub mod io;
pub mod limit;
pub mod metrics;
pub mod outbound;
pub mod parent;
pub mod policy;
pub mod tap;
pub mod tls;
pub mod trust;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certify::{Backoff, CertifyError, GrpcCertifier, LocalKey, Renewer};
pub use crate::config::{InboundSpec, ProxyConfig};
use crate::inbound::InboundConfig;
use crate::metrics::Metrics;
use crate::tls::{CredentialsRx, Identity, TlsError};
use crate::trust::{TrustBundle, TrustError, TrustRoots, TrustSource, TrustUpdater, TrustView};

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A flag is invalid (exit status 64).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The trust anchors could not be loaded at start.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The key, CSR or identity client could not be set up.
    #[error(transparent)]
    Certify(#[from] CertifyError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// `--parent-pid`: the parent is gone, or its death cannot be watched.
    #[error(transparent)]
    Parent(#[from] parent::ParentError),
    /// Serving the admin port failed.
    #[error("serving admin on {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

impl From<TlsError> for ProxyError {
    fn from(error: TlsError) -> Self {
        Self::Config(error.to_string())
    }
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone)]
pub struct Started {
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// Each inbound port: (public, app).
    pub inbound: Vec<(SocketAddr, SocketAddr)>,
    /// The outbound listener, when the outbound module serves one.
    pub outbound: Option<SocketAddr>,
}

/// What the proxy's parts share: the credentials, the metrics and the
/// configuration. The outbound module takes this too.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The current credentials (`None` until the first certificate).
    pub credentials: CredentialsRx,
    /// The metrics every part records into.
    pub metrics: Metrics,
    /// The configuration.
    pub config: ProxyConfig,
}

/// With `--policy on`: the watch of this pod's inbound policy and its
/// receiver (which holds nothing until the first snapshot).
#[allow(clippy::type_complexity)]
fn policy_from_config(config: &ProxyConfig) -> Result<(Option<(policy::client::PolicyWatch, policy::PolicyTx)>, Option<policy::PolicyRx>), ProxyError> {
    if !config.policy {
        return Ok((None, None));
    }
    let (Some(namespace), Some(pod)) = (&config.namespace, &config.pod) else {
        return Err(ProxyError::Config("--policy on needs --namespace and --pod".into()));
    };
    let server = config.api.server.clone().or_else(|| std::env::var("TESSERA_API_SERVER").ok()).filter(|s| !s.is_empty());
    let Some(server) = server else {
        return Err(ProxyError::Config("--policy on needs --api-server (or TESSERA_API_SERVER)".into()));
    };
    let uri: http::Uri = server.parse().map_err(|_| ProxyError::Config(format!("--api-server {server:?} is not a URL")))?;
    let dir = std::path::Path::new(outbound::SERVICEACCOUNT_DIR);
    let token_file = config.api.token_file.clone().unwrap_or_else(|| dir.join("token"));
    let ca_file = config.api.ca.clone().or_else(|| Some(dir.join("ca.crt")).filter(|p| p.exists()));
    let watch = policy::client::PolicyWatch::new(uri, token_file, ca_file.as_ref(), namespace, pod).map_err(|e| ProxyError::Config(e.to_string()))?;
    let (tx, rx) = policy::client::channel();
    Ok((Some((watch, tx)), Some(rx)))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr).await.map_err(|source| ProxyError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, what: &'static str, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    listener.local_addr().map_err(|source| ProxyError::Bind { what, addr, source })
}

/// Resolves when `stop` flips to true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the proxy until `shutdown`: the certificate renewal, the trust
/// bundle reload, the admin port and every inbound port (and the outbound
/// listener, see the hook below). Listeners are bound before `on_started`
/// is called; the proxy is not ready until the first certificate arrives.
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<(), ProxyError> {
    if let Some(parent) = config.parent_pid {
        parent::die_with_parent(parent)?;
    }
    let identity = Identity::parse(&config.identity)?;
    // A file must be good at start; a ConfigMap fills the roots once its
    // first good bundle arrives (until then the proxy asks for no certificate).
    let (trust_task, roots): (std::pin::Pin<Box<dyn Future<Output = ()> + Send>>, _) = match &config.trust_anchors {
        TrustSource::File(path) => {
            let (bundle, roots) = TrustBundle::load(path.clone())?;
            (Box::pin(bundle.run()), roots)
        }
        TrustSource::ConfigMap { namespace, name } => {
            let client = trust::configmap::client(&config.api)?;
            let (updater, roots) = TrustUpdater::new(config.trust_anchors.to_string(), TrustRoots::empty());
            (Box::pin(trust::configmap::watch(client, namespace.clone(), name.clone(), updater)), roots)
        }
    };
    let key = LocalKey::generate(&identity)?;
    let certifier = GrpcCertifier::new(&config.identity_addr, identity.clone(), config.token_file.clone(), config.certify_timeout)?;
    let metrics = Metrics::new();
    let (credentials_tx, credentials) = watch::channel(None);
    let shared = Shared { credentials: credentials.clone(), metrics: metrics.clone(), config: config.clone() };
    // One cap over every listener: it bounds the process's file descriptors.
    let limit = limit::ConnLimit::new(config.max_connections);

    let (policy_watch, policy) = policy_from_config(&config)?;
    let enforcer = policy.clone().map(|rx| policy::Enforcer::new(rx, metrics.authz().clone()));

    let admin = bind("admin", config.admin_addr).await?;
    let admin_addr = local_addr(&admin, "admin", config.admin_addr)?;
    let mut inbound = Vec::new();
    for spec in &config.inbound {
        let listener = bind("inbound", spec.listen).await?;
        let listen = local_addr(&listener, "inbound", spec.listen)?;
        inbound.push((
            listener,
            InboundConfig {
                listen,
                app: spec.app,
                detect_timeout: config.detect_timeout,
                handshake_timeout: config.handshake_timeout,
                connect_timeout: config.connect_timeout,
                policy: enforcer.clone(),
                limit: limit.clone(),
            },
        ));
    }

    // OUTBOUND (proxy-out): the HTTP forward-proxy listener and the TCP
    // forward listeners, bound with the others so `on_started` reports them.
    let outbound_listeners = match config.outbound_addr {
        Some(addr) => {
            let listener = bind("outbound", addr).await?;
            let local = local_addr(&listener, "outbound", addr)?;
            let mut tcp = Vec::new();
            for (listen, authority) in &config.outbound_tcp {
                let l = bind("outbound TCP forward", *listen).await?;
                tcp.push((l, authority.clone()));
            }
            Some((local, listener, tcp))
        }
        None if !config.outbound_tcp.is_empty() => {
            return Err(ProxyError::Config("--outbound-tcp needs --outbound-addr".into()));
        }
        None => None,
    };
    let outbound: Option<SocketAddr> = outbound_listeners.as_ref().map(|(local, _, _)| *local);
    let discover = match &outbound_listeners {
        Some(_) => Some(outbound::discover_from_config(&config.api).map_err(|e| ProxyError::Config(e.to_string()))?),
        None => None,
    };

    let started = Started { admin_addr, inbound: inbound.iter().map(|(_, c)| (c.listen, c.app)).collect(), outbound };
    tracing::info!(identity = %identity, admin = %admin_addr, inbound = ?started.inbound, "proxy listening");
    on_started(&started);

    tokio::spawn(trust_task);
    if let Some((watch, tx)) = policy_watch {
        tokio::spawn(watch.run(tx));
    }
    let renewer = Renewer::new(certifier, identity, key, roots.clone(), credentials_tx, metrics.clone(), Backoff::default());
    let trust_view = TrustView { roots, leaf: renewer.leaf() };
    tokio::spawn(renewer.run());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, inbound_config) in inbound {
        tasks.spawn(inbound::serve(listener, inbound_config, credentials.clone(), metrics.clone(), stopped(stop_rx.clone())));
    }
    // OUTBOUND (proxy-out): serve the outbound listeners beside the inbound ports.
    if let (Some((_, listener, tcp)), Some(discover)) = (outbound_listeners, discover) {
        tasks.spawn(outbound::serve(listener, tcp, discover, shared.clone(), limit.clone(), stopped(stop_rx.clone())));
    }

    // `/denials` answers an empty list when policy is not enforced (nothing is denied).
    let recent = enforcer.as_ref().map(policy::Enforcer::recent).unwrap_or_default();
    let admin_app = admin::router(metrics, credentials, trust_view, policy)
        .merge(tap::router(tap::TapServer::from_config(&config)))
        .merge(policy::recent::router(recent));
    let result = axum::serve(admin, admin_app).with_graceful_shutdown(stopped(stop_rx)).await;
    tasks.shutdown().await;
    result.map_err(|source| ProxyError::Admin { addr: admin_addr, source })
}
