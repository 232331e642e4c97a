//! The tessera API server: a Kubernetes-compatible HTTPS API over the
//! [`tessera_api::Registry`], with discovery, CRUD, patch, watch, Table output,
//! health and Prometheus metrics. Entry point: [`run`] with a [`Config`].
//!
//! Layers, outermost first: observe (request info + metrics) → authenticate
//! (x509 client certificate, bearer token or anonymous) → authorize (the
//! node authorizer for nodes, then RBAC) → handler, whose writes pass
//! admission (RBAC escalation checks, NodeRestriction). Nodes are the
//! [`node`] module's.
//!
//! Must not depend on: the identity CA, the proxy, the agent.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_api::Registry;
/// The `--service-cluster-ip-range` type.
pub use tessera_api::service_ips::ServiceCidr;
use tessera_store::Store;

pub mod access_review;
pub mod admission;
pub mod authz;
pub mod data_dir;
pub mod destinations;
pub mod policy;
pub mod discovery;
pub mod expiry;
pub mod http;
mod kubernetes_service;
pub mod metrics;
pub mod negotiate;
pub mod node;
pub mod objects;
pub mod openapi;
pub mod openapi_v2;
pub mod pki;
pub mod pod_proxy;
pub mod rbac;
pub mod reflector;
pub mod request;
pub mod response;
pub mod serve;
pub mod snapshots;
pub mod table;
pub mod testing;
pub mod tokens;
pub mod ui;
pub mod watch;

/// Server configuration (built by the CLI, checked before any port is opened).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, PKI and kubeconfig live.
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:6443`; port 0 picks a free port).
    pub bind: SocketAddr,
    /// `iss` of ServiceAccount tokens.
    pub service_account_issuer: String,
    /// The API's own audiences (default: the issuer).
    pub api_audiences: Vec<String>,
    /// Algorithm of newly generated signing keys.
    pub signing_alg: tessera_authn::jwt::Algorithm,
    /// Longest token lifetime TokenRequest grants (seconds).
    pub max_token_lifetime_seconds: i64,
    /// Let anonymous users read OIDC discovery.
    pub anonymous_oidc_discovery: bool,
    /// Serve get, list and watch from a watch cache (kube's `--watch-cache`).
    pub watch_cache: bool,
    /// Where objects are stored.
    pub storage: Storage,
    /// Encryption at rest (`--encryption-provider-config`), if configured.
    pub encryption: Option<Arc<tessera_encryption::EncryptionConfig>>,
    /// Lifetime of the node client certificates the server signs.
    pub node_certificate_validity: std::time::Duration,
    /// When a node whose heartbeat stopped loses its pods.
    pub node_lifecycle: tessera_controllers::node_lifecycle::Settings,
    /// Connection caps and timeouts.
    pub connections: serve::ConnectionLimits,
    /// Whether a data dir that group or others can reach is refused (the default).
    pub data_dir_strictness: data_dir::Strictness,
    /// How often the leader compacts the store's history (`None`: never).
    pub compaction_interval: Option<std::time::Duration>,
    /// Where Service cluster IPs come from (`--service-cluster-ip-range`).
    pub service_cidr: tessera_api::service_ips::ServiceCidr,
    /// How the destination API names identities (`--identity-trust-domain`,
    /// `--identity-control-namespace`).
    pub identity_naming: destinations::IdentityNaming,
    /// The expiry timeline's thresholds and issuer Secret.
    pub expiry: expiry::ExpiryConfig,
    /// The default inbound policy of meshed pods (`--default-inbound-policy`).
    pub default_inbound_policy: tessera_policy::DefaultPolicy,
    /// What `cluster-*` policies count as the cluster (`--cluster-networks`).
    pub cluster_networks: Vec<ipnet::IpNet>,
}

/// kube-apiserver's `--etcd-compaction-interval` default.
pub const DEFAULT_COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The store backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// Embedded SQLite in the data dir (`store.db`): one server.
    #[default]
    Sqlite,
    /// An etcd cluster shared by every replica. Each replica still needs the
    /// same cluster CA and signing keys in its data dir (see the README).
    Etcd(tessera_store::etcd::EtcdConfig),
}

impl Config {
    /// Defaults for a data dir and bind address (what `tessera server` uses without flags).
    pub fn new(data_dir: PathBuf, bind: SocketAddr) -> Self {
        let issuer = "https://kubernetes.default.svc.cluster.local".to_owned();
        Self {
            data_dir,
            bind,
            api_audiences: vec![issuer.clone()],
            service_account_issuer: issuer,
            signing_alg: tessera_authn::jwt::Algorithm::ES256,
            max_token_lifetime_seconds: 48 * 3600,
            anonymous_oidc_discovery: false,
            watch_cache: true,
            storage: Storage::Sqlite,
            encryption: None,
            node_certificate_validity: node::certificates::DEFAULT_VALIDITY,
            node_lifecycle: tessera_controllers::node_lifecycle::Settings::default(),
            connections: serve::ConnectionLimits::default(),
            data_dir_strictness: data_dir::Strictness::Refuse,
            compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL),
            service_cidr: tessera_api::service_ips::ServiceCidr::default(),
            identity_naming: destinations::IdentityNaming::default(),
            expiry: expiry::ExpiryConfig::default(),
            default_inbound_policy: tessera_policy::DefaultPolicy::AllUnauthenticated,
            cluster_networks: tessera_policy::default_cluster_networks(),
        }
    }

    /// Where signing keys live.
    pub fn key_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data dir is missing and could not be created, or others can reach it.
    #[error(transparent)]
    DataDir(#[from] data_dir::DataDirError),
    /// The data dir or PKI could not be prepared.
    #[error("preparing credentials in the data dir: {0}")]
    Pki(#[from] pki::PkiError),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] tessera_store::Error),
    /// The listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] serve::TlsError),
    /// Signing keys could not be loaded.
    #[error("service account signing keys: {0}")]
    Keys(#[from] tessera_authn::keys::KeyError),
    /// Bootstrapping objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(tessera_api::ApiError),
}

/// A started server: where it listens and where its kubeconfig is.
#[derive(Debug, Clone)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// Opens the store, prepares PKI, binds, bootstraps, then serves until
/// `shutdown` resolves. `on_started` is called once the server accepts requests.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> Result<(), Error> {
    data_dir::prepare(&config.data_dir, matches!(config.storage, Storage::Sqlite), config.data_dir_strictness)?;
    data_dir::create_private_dir(&config.key_dir())?;
    let listener = serve::listen(config.bind).map_err(|source| Error::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.bind, source })?;
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    let server_url = format!("https://{host}:{}", addr.port());
    let pki = pki::ServerPki::load_or_create(&config.data_dir.join("pki"), &server_url)?;
    let kubeconfig_path = config.data_dir.join("admin.kubeconfig");
    std::fs::copy(&pki.admin_kubeconfig, &kubeconfig_path)
        .map_err(|source| pki::PkiError::Io { path: kubeconfig_path.clone(), source })?;
    let store: Arc<dyn Store> = match &config.storage {
        Storage::Sqlite => Arc::new(tessera_store::sqlite::SqliteStore::open(&config.data_dir.join("store.db"))?),
        Storage::Etcd(etcd) => tessera_store::etcd::connect(etcd).await?,
    };
    // Encryption sits right above the backend: nothing below it sees a covered value in the clear.
    let encrypted = config.encryption.as_ref().map(|c| Arc::new(tessera_encryption::EncryptedStore::new(store.clone(), c.clone())));
    let store: Arc<dyn Store> = match &encrypted {
        Some(e) => e.clone(),
        None => store,
    };
    // Reads are served from a watch cache of the store (tessera_api::registry::cached).
    let registry = Registry::new(store).with_service_cidr(config.service_cidr);
    let registry = if config.watch_cache { registry.with_watch_cache() } else { registry };
    let tls = serve::server_config(&pki.serving_cert_pem, &pki.serving_key_pem, &pki.ca_cert_pem)?;

    let now = jiff::Timestamp::now().as_second();
    let keys = tessera_authn::keys::KeySet::load_or_create(&config.key_dir(), config.signing_alg, now, config.max_token_lifetime_seconds)?;
    let authority = Arc::new(tessera_authn::token::TokenAuthority::new(
        tessera_authn::token::TokenConfig {
            issuer: config.service_account_issuer.clone(),
            api_audiences: config.api_audiences.clone(),
            max_lifetime_seconds: config.max_token_lifetime_seconds,
        },
        keys,
    ));
    let objects = objects::object_cache();
    let policy = rbac::policy_cache();
    let nodes = node::graph::node_graph();
    let mesh = destinations::mesh_cache();
    let inbound_policy = policy::InboundPolicy::new(tessera_policy::compile::Settings {
        default_policy: config.default_inbound_policy,
        cluster_networks: config.cluster_networks.clone(),
        trust_domain: config.identity_naming.trust_domain.clone(),
        control_namespace: config.identity_naming.control_namespace.clone(),
    });
    let node_certificates = Arc::new(node::certificates::NodeCertificates::new(pki.issuer()?, config.node_certificate_validity));
    let tokens = tokens::TokenState {
        authority: authority.clone(),
        cache: Arc::new(tessera_authn::token::ReviewCache::new(10, REVIEW_CACHE_BYTES)),
        objects: objects.clone(),
        jwks_uri: format!("{server_url}/openid/v1/jwks"),
    };
    let review_cache = Arc::clone(&tokens.cache);

    let ready = Arc::new(AtomicBool::new(false));
    let state = http::AppState::from(http::Shared {
        registry: registry.clone(),
        metrics: metrics::Metrics::default(),
        ready: ready.clone(),
        server_address: format!("{host}:{}", addr.port()),
        tokens,
        authz: authz::AuthzConfig { anonymous_oidc_discovery: config.anonymous_oidc_discovery },
        rbac: policy.clone(),
        encryption: encrypted,
        nodes: nodes.clone(),
        node_certificates,
        destinations: mesh.clone(),
        identity_naming: config.identity_naming.clone(),
        expiry: expiry::settings(
            &config.expiry,
            &config.identity_naming.control_namespace,
            config.max_token_lifetime_seconds,
            &pki.serving_cert_pem,
            &pki.ca_cert_pem,
        ),
        inbound_policy: inbound_policy.clone(),
    });
    let expiry_state = state.clone();
    let app = http::router(state);

    // Every replica bootstraps (idempotent: it only creates what is missing).
    let revision = tessera_controllers::bootstrap(&registry, &pki.ca_cert_pem).await.map_err(Error::Bootstrap)?;
    tessera_controllers::aggregation::reconcile_bootstrap_policy(&registry).await.map_err(Error::Bootstrap)?;
    kubernetes_service::ensure(&registry, addr.port(), &host).await.map_err(Error::Bootstrap)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Controllers that must run once run on the elected replica only.
    let leadership = match &config.storage {
        Storage::Sqlite => tessera_store::leader::Leadership::always(),
        Storage::Etcd(etcd) => {
            let identity = format!("{server_url} (pid {})", std::process::id());
            tessera_store::etcd::campaign(etcd, "controllers", &identity, stopped()).await?
        }
    };
    let mut tasks = vec![
        tokio::spawn(run_compaction(registry.store().clone(), config.compaction_interval, leadership.clone(), stopped())),
        tokio::spawn(run_controllers(
            registry.clone(),
            LeaderControllers {
                authority: authority.clone(),
                ca_pem: pki.ca_cert_pem.clone(),
                node_lifecycle: config.node_lifecycle,
                control_namespace: config.identity_naming.control_namespace.clone(),
            },
            revision,
            leadership,
            stopped(),
        )),
        tokio::spawn(objects.clone().run(registry.store().clone(), stopped())),
        tokio::spawn(policy.clone().run(registry.store().clone(), stopped())),
        tokio::spawn(nodes.clone().run(registry.store().clone(), stopped())),
        tokio::spawn(mesh.clone().run(registry.store().clone(), stopped())),
        tokio::spawn(inbound_policy.cache.clone().run(registry.store().clone(), stopped())),
        tokio::spawn(reload_keys(config.clone(), authority, stopped())),
        tokio::spawn(expiry::refresh(expiry_state, stopped())),
        tokio::spawn(tokens::purge_expired_reviews(review_cache, stopped())),
    ];
    objects.wait_until_ready().await;
    policy.wait_until_ready().await;
    nodes.wait_until_ready().await;
    mesh.wait_until_ready().await;
    inbound_policy.cache.wait_until_ready().await;
    ready.store(true, Ordering::Release);

    let started = Started { addr, kubeconfig: kubeconfig_path };
    on_started(&started);
    serve::serve(listener, tls, app, config.connections, shutdown).await;
    let _ = stop_tx.send(true);
    for task in tasks.drain(..) {
        let _ = task.await;
    }
    Ok(())
}

/// Runs the controllers that must run once in a deployment (namespaces with
/// their default ServiceAccount and `kube-root-ca.crt`, legacy token Secrets,
/// RBAC aggregation, node lifecycle, garbage collection, the mesh trust
/// bundle's read access in the control namespace) while this replica leads, until `shutdown`. A single
/// server always leads. Each new term starts with a full reconcile pass, so
/// work the previous leader left undone is picked up.
/// What the leader-only controllers need besides the registry.
struct LeaderControllers {
    /// Signs the legacy token Secrets' tokens.
    authority: Arc<tessera_authn::token::TokenAuthority>,
    /// The cluster CA published in `kube-root-ca.crt`.
    ca_pem: String,
    node_lifecycle: tessera_controllers::node_lifecycle::Settings,
    /// Where the mesh trust bundle's ConfigMap lives.
    control_namespace: String,
}

async fn run_controllers(
    registry: Registry,
    settings: LeaderControllers,
    start_revision: tessera_store::Revision,
    mut leadership: tessera_store::leader::Leadership,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let LeaderControllers { authority, ca_pem, node_lifecycle, control_namespace } = settings;
    tokio::pin!(shutdown);
    let mut first_term = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = leadership.acquired() => {}
        }
        let revision = if std::mem::take(&mut first_term) {
            start_revision
        } else {
            match tessera_controllers::bootstrap(&registry, &ca_pem).await {
                Ok(revision) => revision,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile on taking leadership failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            }
        };
        tracing::info!("leading: running the namespace, legacy token, RBAC aggregation, node lifecycle and garbage collector controllers");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let controllers = [
            tokio::spawn(tessera_controllers::run(registry.clone(), ca_pem.clone(), revision, stopped())),
            tokio::spawn(tessera_controllers::legacy_tokens::run(registry.clone(), authority.clone(), ca_pem.clone(), stopped())),
            tokio::spawn(tessera_controllers::aggregation::run(registry.clone(), stopped())),
            tokio::spawn(tessera_controllers::node_lifecycle::run(registry.clone(), node_lifecycle, stopped())),
            tokio::spawn(tessera_controllers::garbage_collector::run(registry.clone(), stopped())),
            tokio::spawn(tessera_controllers::endpointslice::run(registry.clone(), stopped())),
            tokio::spawn(tessera_controllers::mesh_trust::run(registry.clone(), control_namespace.clone(), stopped())),
        ];
        let shutting_down = tokio::select! {
            _ = &mut shutdown => true,
            _ = leadership.lost() => false,
        };
        let _ = stop_tx.send(true);
        for controller in controllers {
            let _ = controller.await;
        }
        if shutting_down {
            return;
        }
        tracing::warn!("lost leadership: controllers stopped until this replica leads again");
    }
}

/// Memory for cached TokenReview results (about 40,000 reviews): bounded in
/// bytes, so garbage tokens from unauthenticated clients cannot grow it.
const REVIEW_CACHE_BYTES: usize = 16 << 20;
/// Compacts the store's history every `interval` while this replica leads,
/// as kube-apiserver compacts etcd: each tick compacts to the revision seen at
/// the previous tick, so the last interval of history stays (watches a little
/// behind resume) and older resourceVersions answer 410 Expired. On etcd this
/// is etcd's own (physical) compaction of the whole cluster, run by one
/// replica. A new term starts afresh: a change of leader delays one
/// compaction at most.
async fn run_compaction(
    store: Arc<dyn Store>,
    interval: Option<std::time::Duration>,
    mut leadership: tessera_store::leader::Leadership,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        tracing::info!("history compaction is off (--compaction-interval 0)");
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = leadership.acquired() => {}
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = leadership.lost() => break,
                _ = ticks.tick() => {}
            }
            if let Some(revision) = previous
                && let Err(e) = store.compact(revision).await
            {
                tracing::warn!(revision, error = %e, "history compaction failed; retrying next interval");
            }
            previous = match store.revision().await {
                Ok(revision) => Some(revision),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the store revision for compaction failed");
                    None
                }
            };
        }
    }
}

/// Picks up keys added by `tessera server keys rotate` (and drops expired ones)
/// without a restart: the key directory is small, so it is re-read every two
/// seconds, on the blocking pool (file reads stay off the async threads). A
/// reload never creates a key (only the first start does); one that finds no
/// usable key keeps the current set and logs an error.
async fn reload_keys(config: Config, authority: Arc<tessera_authn::token::TokenAuthority>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
        let (dir, reloading) = (config.key_dir(), authority.clone());
        let reload = tokio::task::spawn_blocking(move || reloading.reload_keys(&dir, jiff::Timestamp::now().as_second()));
        match reload.await {
            Ok(Ok(true)) => {
                let keys = authority.keys();
                let kids: Vec<&str> = keys.keys().iter().map(|k| k.kid()).collect();
                tracing::info!(keys = ?kids, "service account signing keys changed");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "reloading signing keys failed; keeping the current ones"),
            Err(e) => tracing::error!(error = %e, "the signing key reload task failed; keeping the current keys"),
        }
    }
}
