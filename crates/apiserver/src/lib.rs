//! The tessera API server: a Kubernetes-compatible HTTPS API over the
//! [`tessera_api::Registry`], with discovery, CRUD, patch, watch, Table output,
//! health and Prometheus metrics. Entry point: [`run`] with a [`Config`].
//!
//! Layers, outermost first: observe (request info + metrics) → authenticate
//! (x509 client certificate or anonymous) → authorize → handler.
//!
//! Must not depend on: the identity CA, the proxy, the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_api::Registry;
use tessera_store::Store;
use tokio::net::TcpListener;

pub mod authz;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod request_info;
pub mod response;
pub mod serve;
pub mod table;

/// Server configuration (built by the CLI, checked before any port is opened).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, PKI and kubeconfig live.
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:6443`; port 0 picks a free port).
    pub bind: SocketAddr,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| pki::PkiError::Io { path: config.data_dir.clone(), source })?;
    let listener = TcpListener::bind(config.bind).await.map_err(|source| Error::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.bind, source })?;
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    let server_url = format!("https://{host}:{}", addr.port());
    let pki = pki::ServerPki::load_or_create(&config.data_dir.join("pki"), &server_url)?;
    let kubeconfig_path = config.data_dir.join("admin.kubeconfig");
    std::fs::copy(&pki.admin_kubeconfig, &kubeconfig_path)
        .map_err(|source| pki::PkiError::Io { path: kubeconfig_path.clone(), source })?;
    let store: Arc<dyn Store> = Arc::new(tessera_store::sqlite::SqliteStore::open(&config.data_dir.join("store.db"))?);
    let registry = Registry::new(store);
    let tls = serve::server_config(&pki.serving_cert_pem, &pki.serving_key_pem, &pki.ca_cert_pem)?;

    let ready = Arc::new(AtomicBool::new(false));
    let state = http::AppState {
        registry: registry.clone(),
        metrics: metrics::Metrics::default(),
        ready: ready.clone(),
        server_address: format!("{host}:{}", addr.port()),
    };
    let app = http::router(state);

    let revision = tessera_controllers::bootstrap(&registry, &pki.ca_cert_pem).await.map_err(Error::Bootstrap)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controller_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let controllers = tokio::spawn(tessera_controllers::run(registry.clone(), pki.ca_cert_pem.clone(), revision, controller_stop));
    ready.store(true, Ordering::Release);

    let started = Started { addr, kubeconfig: kubeconfig_path };
    on_started(&started);
    serve::serve(listener, tls, app, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = controllers.await;
    Ok(())
}
