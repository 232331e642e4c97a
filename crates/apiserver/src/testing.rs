//! The real router, caches and bootstrap over any store, in process and
//! without TLS, for tests that send thousands of requests. The caller names
//! the authenticated user, as a verified client certificate would.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use tessera_api::{ApiError, Registry};
use tessera_authn::UserInfo;
use tessera_store::Store;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::http::PeerIdentity;

/// A server without a socket. Stops its caches when dropped.
pub struct InProcess {
    router: Router,
    registry: Registry,
    policy: crate::rbac::PolicyCache,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why the in-process server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Signing keys could not be created.
    #[error("signing keys: {0}")]
    Keys(#[from] tessera_authn::keys::KeyError),
    /// Bootstrap objects could not be written.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ApiError),
    /// The throwaway CA for node certificates could not be made.
    #[error("test CA: {0}")]
    Ca(#[from] rcgen::Error),
}

/// A throwaway CA: the in-process server signs node certificates with it.
fn test_issuer() -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    Ok(rcgen::Issuer::new(params, key))
}

impl InProcess {
    /// Bootstraps `store` (namespaces, RBAC policy) and starts the caches;
    /// signing keys are created in `key_dir`.
    pub async fn start(store: Arc<dyn Store>, key_dir: &Path) -> Result<Self, StartError> {
        let registry = Registry::new(store);
        let now = jiff::Timestamp::now().as_second();
        let keys = tessera_authn::keys::KeySet::load_or_create(key_dir, tessera_authn::jwt::Algorithm::ES256, now, 3600)?;
        let issuer = "https://kubernetes.default.svc.cluster.local".to_owned();
        let authority = Arc::new(tessera_authn::token::TokenAuthority::new(
            tessera_authn::token::TokenConfig { issuer: issuer.clone(), api_audiences: vec![issuer], max_lifetime_seconds: 3600 },
            keys,
        ));
        let objects = crate::objects::object_cache();
        let policy = crate::rbac::policy_cache();
        let nodes = crate::node::graph::node_graph();
        let inbound_policy = crate::policy::InboundPolicy::new(tessera_policy::compile::Settings::default());
        let state = crate::http::AppState::from(crate::http::Shared {
            registry: registry.clone(),
            metrics: crate::metrics::Metrics::default(),
            ready: Arc::new(AtomicBool::new(true)),
            server_address: "127.0.0.1:0".to_owned(),
            tokens: crate::tokens::TokenState {
                authority,
                cache: Arc::new(tessera_authn::token::ReviewCache::new(10, 1 << 20)),
                objects: objects.clone(),
                jwks_uri: "https://127.0.0.1/openid/v1/jwks".to_owned(),
            },
            authz: crate::authz::AuthzConfig::default(),
            rbac: policy.clone(),
            encryption: None,
            nodes: nodes.clone(),
            node_certificates: Arc::new(crate::node::certificates::NodeCertificates::new(test_issuer()?, crate::node::certificates::DEFAULT_VALIDITY)),
            destinations: crate::destinations::mesh_cache(),
            identity_naming: crate::destinations::IdentityNaming::default(),
            expiry: std::sync::Arc::new(crate::expiry::Settings::default()),
            inbound_policy: inbound_policy.clone(),
        });
        tessera_controllers::bootstrap(&registry, "").await?;
        tessera_controllers::aggregation::reconcile_bootstrap_policy(&registry).await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let tasks = vec![
            tokio::spawn(objects.clone().run(registry.store().clone(), stopped())),
            tokio::spawn(policy.clone().run(registry.store().clone(), stopped())),
            tokio::spawn(nodes.clone().run(registry.store().clone(), stopped())),
            tokio::spawn(inbound_policy.cache.clone().run(registry.store().clone(), stopped())),
        ];
        objects.wait_until_ready().await;
        policy.wait_until_ready().await;
        nodes.wait_until_ready().await;
        inbound_policy.cache.wait_until_ready().await;
        Ok(Self { router: crate::http::router(state), registry, policy, stop, tasks })
    }

    /// The registry under the server (to set up and inspect state directly).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Waits until the RBAC cache has seen the store at `revision` or later.
    pub async fn policy_caught_up(&self, revision: tessera_store::Revision) {
        self.policy.caught_up(revision).await;
    }

    /// Sends a request as `user`.
    pub async fn call(&self, user: UserInfo, mut request: http::Request<Body>) -> Response {
        request.extensions_mut().insert(PeerIdentity::Certificate(Arc::new(user)));
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}
