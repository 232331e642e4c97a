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
pub mod runtimes;
#[cfg(test)]
mod runtimes_tests;
pub mod tap;
#[cfg(test)]
mod test_ca;
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
    /// A thread of `--runtime per-thread` failed (panicked, or stopped
    /// serving): the whole proxy stops rather than run without it.
    #[error("proxy thread {index} failed: {message}")]
    Thread {
        /// The thread (1..; 0 is the caller's).
        index: usize,
        /// Why.
        message: String,
    },
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

/// One listener per thread on `addr` (see [`runtimes::bind_group`]).
async fn bind_group(what: &'static str, addr: SocketAddr, threads: usize) -> Result<Vec<TcpListener>, ProxyError> {
    runtimes::bind_group(addr, threads).await.map_err(|source| ProxyError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, what: &'static str, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    listener.local_addr().map_err(|source| ProxyError::Bind { what, addr, source })
}

/// Resolves when `stop` flips to true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The proxied listeners one thread serves: its socket of every inbound
/// port, of the outbound HTTP proxy and of each TCP forward port.
#[derive(Debug)]
struct ListenerSet<L> {
    inbound: Vec<(L, InboundConfig)>,
    /// The HTTP forward proxy and the TCP forward ports.
    outbound: Option<(L, Vec<(L, String)>)>,
}

impl<L> ListenerSet<L> {
    fn try_map<M>(self, mut f: impl FnMut(L) -> std::io::Result<M>) -> std::io::Result<ListenerSet<M>> {
        let inbound = self.inbound.into_iter().map(|(l, c)| Ok((f(l)?, c))).collect::<std::io::Result<_>>()?;
        let outbound = match self.outbound {
            Some((http, tcp)) => {
                let http = f(http)?;
                Some((http, tcp.into_iter().map(|(l, a)| Ok((f(l)?, a))).collect::<std::io::Result<_>>()?))
            }
            None => None,
        };
        Ok(ListenerSet { inbound, outbound })
    }
}

/// The outbound HTTP proxy's listener group and each TCP forward port's.
type OutboundGroups = (Vec<TcpListener>, Vec<(Vec<TcpListener>, String)>);

/// Splits groups of `threads` listeners (one group per port) into one set per thread.
fn split_sets(
    threads: usize,
    inbound: Vec<(Vec<TcpListener>, InboundConfig)>,
    outbound: Option<OutboundGroups>,
) -> Vec<ListenerSet<TcpListener>> {
    let mut sets: Vec<_> = (0..threads).map(|_| ListenerSet { inbound: Vec::new(), outbound: None }).collect();
    for (group, config) in inbound {
        for (set, listener) in sets.iter_mut().zip(group) {
            set.inbound.push((listener, config.clone()));
        }
    }
    if let Some((http, tcp)) = outbound {
        for (set, listener) in sets.iter_mut().zip(http) {
            set.outbound = Some((listener, Vec::new()));
        }
        for (group, authority) in tcp {
            for (set, listener) in sets.iter_mut().zip(group) {
                if let Some((_, forwards)) = &mut set.outbound {
                    forwards.push((listener, authority.clone()));
                }
            }
        }
    }
    sets
}

/// What every thread's listeners share.
#[derive(Clone)]
struct ServeContext {
    shared: Shared,
    discover: Option<std::sync::Arc<dyn destination::Discover>>,
    limit: limit::ConnLimit,
    stop: watch::Receiver<bool>,
}

impl ServeContext {
    /// Spawns the serving of `set` on the current runtime. Each thread has
    /// its own inbound forwarders and outbound pools and balancer (as each
    /// Envoy worker has its own), so a connection's work stays on its thread.
    fn spawn(&self, set: ListenerSet<TcpListener>) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, inbound_config) in set.inbound {
            tasks.spawn(inbound::serve(
                listener,
                inbound_config,
                self.shared.credentials.clone(),
                self.shared.metrics.clone(),
                stopped(self.stop.clone()),
            ));
        }
        if let (Some((listener, tcp)), Some(discover)) = (set.outbound, &self.discover) {
            tasks.spawn(outbound::serve(
                listener,
                tcp,
                discover.clone(),
                self.shared.clone(),
                self.limit.clone(),
                stopped(self.stop.clone()),
            ));
        }
        tasks
    }
}

/// Waits for the stop, then ends `tasks`. A task that panics first is an
/// error (its listener is gone while the others serve).
async fn serve_until_stopped(mut tasks: tokio::task::JoinSet<()>, stop: watch::Receiver<bool>) -> Result<(), String> {
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tasks.shutdown().await;
                    return Err(format!("a listener panicked: {e}"));
                }
            }
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Runs the proxy until `shutdown`: the certificate renewal, the trust
/// bundle reload, the admin port, every inbound port and the outbound
/// listeners. Listeners are bound (and, with per-thread runtimes, every
/// thread serves) before `on_started` is called; the proxy is not ready
/// until the first certificate arrives.
///
/// `config.runtimes` > 1: the proxied listeners are bound once per thread
/// and served by the caller's runtime and `runtimes - 1` threads of their
/// own (see [`runtimes`]); the caller's runtime should then be a
/// current-thread one. A failed thread stops the proxy with
/// [`ProxyError::Thread`].
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<(), ProxyError> {
    if let Some(parent) = config.parent_pid {
        parent::die_with_parent(parent)?;
    }
    let threads = config.runtimes.max(1);
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
    // One cap over every listener of every thread: it bounds the process's file descriptors.
    let limit = limit::ConnLimit::new(config.max_connections);

    let (policy_watch, policy) = policy_from_config(&config)?;
    let enforcer = policy.clone().map(|rx| policy::Enforcer::new(rx, metrics.authz().clone()));

    let admin = bind("admin", config.admin_addr).await?;
    let admin_addr = local_addr(&admin, "admin", config.admin_addr)?;
    let mut inbound = Vec::new();
    for spec in &config.inbound {
        let group = bind_group("inbound", spec.listen, threads).await?;
        let listen = local_addr(&group[0], "inbound", spec.listen)?;
        inbound.push((
            group,
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

    // The HTTP forward-proxy listener and the TCP forward listeners, bound
    // with the others so `on_started` reports them.
    let outbound_listeners = match config.outbound_addr {
        Some(addr) => {
            let group = bind_group("outbound", addr, threads).await?;
            let local = local_addr(&group[0], "outbound", addr)?;
            let mut tcp = Vec::new();
            for (listen, authority) in &config.outbound_tcp {
                tcp.push((bind_group("outbound TCP forward", *listen, threads).await?, authority.clone()));
            }
            Some((local, group, tcp))
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
    let mut sets = split_sets(threads, inbound, outbound_listeners.map(|(_, http, tcp)| (http, tcp))).into_iter();
    let (stop_tx, stop_rx) = watch::channel(false);
    let context = ServeContext { shared: shared.clone(), discover, limit: limit.clone(), stop: stop_rx.clone() };
    let own_set = sets.next();
    let mut workers = runtimes::Workers::default();
    let mut start_failure = None;
    for (index, set) in (1..).zip(sets) {
        let moved = match set.try_map(runtimes::Moved::new) {
            Ok(moved) => moved,
            Err(e) => {
                start_failure = Some(thread_failed(index, &format!("moving its listeners: {e}")));
                break;
            }
        };
        let context = context.clone();
        let spawned = workers.spawn(index, move |serving| async move {
            let set = moved.try_map(runtimes::Moved::into_tokio).map_err(|e| format!("registering its listeners: {e}"))?;
            let tasks = context.spawn(set);
            serving.serving();
            serve_until_stopped(tasks, context.stop.clone()).await
        });
        if let Err(e) = spawned {
            start_failure = Some(thread_failed(index, &format!("starting: {e}")));
            break;
        }
    }
    if start_failure.is_none() {
        start_failure = workers.all_serving().await.err().map(exit_error);
    }
    if let Some(failure) = start_failure {
        // The threads already started stop too: nothing half-started is left.
        let _ = stop_tx.send(true);
        workers.join().await;
        return Err(failure);
    }
    tracing::info!(identity = %identity, admin = %admin_addr, inbound = ?started.inbound, threads, "proxy listening");
    on_started(&started);

    tokio::spawn(trust_task);
    if let Some((watch, tx)) = policy_watch {
        tokio::spawn(watch.run(tx));
    }
    let renewer = Renewer::new(certifier, identity, key, roots.clone(), credentials_tx, metrics.clone(), Backoff::default());
    let trust_view = TrustView { roots, leaf: renewer.leaf() };
    tokio::spawn(renewer.run());

    let own_tasks = own_set.map(|set| context.spawn(set)).unwrap_or_default();
    let own_listeners = serve_until_stopped(own_tasks, stop_rx.clone());

    // `/denials` answers an empty list when policy is not enforced (nothing is denied).
    let recent = enforcer.as_ref().map(policy::Enforcer::recent).unwrap_or_default();
    let admin_app = admin::router(metrics, credentials, trust_view, policy)
        .merge(tap::router(tap::TapServer::from_config(&config)))
        .merge(policy::recent::router(recent));
    let admin_serve = axum::serve(admin, admin_app).with_graceful_shutdown(stopped(stop_rx.clone())).into_future();
    tokio::pin!(shutdown, own_listeners, admin_serve);

    // Until the shutdown, or a failure that must stop every thread.
    let mut failure = None;
    let mut own_done = false;
    let admin_result = tokio::select! {
        () = &mut shutdown => None,
        exit = workers.failed() => {
            failure = Some(exit_error(exit));
            None
        }
        ended = &mut own_listeners => {
            own_done = true;
            failure = ended.err().map(|message| thread_failed(0, &message));
            None
        }
        result = &mut admin_serve => Some(result),
    };
    let _ = stop_tx.send(true);
    let admin_result = match admin_result {
        Some(result) => result,
        None => admin_serve.await,
    };
    if !own_done
        && let Err(message) = own_listeners.await
    {
        failure.get_or_insert(thread_failed(0, &message));
    }
    for exit in workers.join().await {
        if exit.outcome.is_err() {
            failure.get_or_insert(exit_error(exit));
        }
    }
    if let Some(failure) = failure {
        tracing::error!(error = %failure, "stopping the proxy");
        return Err(failure);
    }
    admin_result.map_err(|source| ProxyError::Admin { addr: admin_addr, source })
}

fn thread_failed(index: usize, message: &str) -> ProxyError {
    ProxyError::Thread { index, message: message.to_owned() }
}

fn exit_error(exit: runtimes::Exit) -> ProxyError {
    let message = exit.outcome.err().unwrap_or_else(|| "stopped".into());
    ProxyError::Thread { index: exit.index, message }
}
