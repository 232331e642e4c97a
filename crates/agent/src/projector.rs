//! Registering pods and projecting their tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::time::Instant;

use crate::files::{FilesError, OutputRoot};
use crate::pod::{InvalidPodSpec, PodSpec, RegisteredPod};

/// Why the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API refused or failed a call.
    #[error("{what}: {source}")]
    Api {
        /// What the agent was doing.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// The kubeconfig could not be loaded.
    #[error("loading the kubeconfig: {0}")]
    Config(String),
    /// The pod spec is invalid (nothing was registered).
    #[error("invalid pod {namespace}/{name}: {source}")]
    InvalidSpec {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the pod.
        name: String,
        /// Every problem.
        source: InvalidPodSpec,
    },
    /// The output root was refused, or a file below it could not be written.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The API answered without a token.
    #[error("TokenRequest for {0} returned no token")]
    NoToken(String),
    /// The node identity could not be set up or used.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// A pod of that name exists and is not this node's to run.
    #[error("Pod {namespace}/{name} exists and is not this node's: {why}")]
    NotOurs {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The server's refusal.
        why: String,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Api { what, source }
}

/// A pod another node runs was readable: cannot happen with the node
/// authorizer (a node reads only its own pods), refused all the same.
fn unreachable_other_node<T>(spec: &PodSpec, refusal: &str) -> Result<T, AgentError> {
    Err(AgentError::NotOurs { namespace: spec.namespace.clone(), name: spec.name.clone(), why: refusal.to_owned() })
}

/// Where a pod's files go: directories below the agent's checked output root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: Arc<OutputRoot>,
    /// The default token, `ca.crt` and `namespace`, relative to the root.
    service_account_dir: PathBuf,
    /// Extra projected tokens, at their `path` below this directory (relative to the root).
    tokens_dir: PathBuf,
}

impl Layout {
    /// `<root>/<namespace>/<pod>/` for everything (the agent's per-pod directories).
    pub fn per_pod(root: Arc<OutputRoot>, namespace: &str, pod: &str) -> Self {
        let dir = Path::new(namespace).join(pod);
        Self { root, service_account_dir: dir.clone(), tokens_dir: dir }
    }

    /// The Kubernetes layout under `root`: `var/run/secrets/kubernetes.io/serviceaccount`
    /// and `var/run/secrets/tokens`.
    pub fn kubernetes(root: Arc<OutputRoot>) -> Self {
        let secrets = Path::new("var/run/secrets");
        Self { root, service_account_dir: secrets.join("kubernetes.io/serviceaccount"), tokens_dir: secrets.join("tokens") }
    }

    /// The root all files go below.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Where the default token, `ca.crt` and `namespace` are.
    pub fn service_account_dir(&self) -> PathBuf {
        self.root.path().join(&self.service_account_dir)
    }

    /// Where the extra projected tokens are.
    pub fn tokens_dir(&self) -> PathBuf {
        self.root.path().join(&self.tokens_dir)
    }

    fn write(&self, rel: &Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
        Ok(self.root.write_atomically(rel, contents, mode)?)
    }
}

/// One file the agent keeps fresh.
#[derive(Debug, Clone)]
struct TokenSlot {
    /// None: the API audiences (the default token).
    audience: Option<String>,
    expiration_seconds: i64,
    /// Relative to the layout's root.
    path: PathBuf,
    /// Explicit state: when the next request is due.
    state: SlotState,
}

#[derive(Debug, Clone, Copy)]
enum SlotState {
    /// Never projected: due now.
    Pending,
    /// Projected; refresh at `refresh_at`.
    Projected { refresh_at: Instant },
    /// The last refresh failed; retry at `retry_at` after `backoff`.
    Retrying { retry_at: Instant, backoff: Duration },
}

impl TokenSlot {
    fn due(&self) -> Instant {
        match self.state {
            SlotState::Pending => Instant::now(),
            SlotState::Projected { refresh_at } => refresh_at,
            SlotState::Retrying { retry_at, .. } => retry_at,
        }
    }
}

/// The agent: one API client with this node's credential, and its settings.
#[derive(Clone)]
pub struct Agent {
    /// Replaced whole when the node's certificate is renewed.
    client: Arc<RwLock<kube::Client>>,
    node: String,
    refresh_override: Option<Duration>,
    server: String,
}

// === impl Agent ===

impl Agent {
    /// Connects with the node's credentials, and refuses to run unless they
    /// authenticate as a node (`system:node:NAME` in `system:nodes`): the
    /// agent never runs with an admin's or a workload's credential.
    pub async fn connect(credentials: &crate::node::NodeCredentials, refresh_override: Option<Duration>) -> Result<Self, AgentError> {
        let (client, server) = credentials.client().await?;
        let node = crate::node::whoami(&client).await?;
        tracing::info!(%node, %server, "authenticated as a node");
        Ok(Self { client: Arc::new(RwLock::new(client)), node, refresh_override, server })
    }

    /// The current client.
    pub(crate) fn client(&self) -> kube::Client {
        // A poisoned lock still holds a whole client (it is only ever replaced).
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The API server URL (passed on to workloads).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// Renews the node's certificate at 70–80 % of its lifetime, until `stop`.
    pub async fn keep_certificate_fresh(&self, credentials: &crate::node::NodeCredentials, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let now = jiff::Timestamp::now().as_second();
            let delay = match credentials.certificate_validity() {
                Ok((not_before, not_after)) => crate::node::renewal_delay(not_before, not_after, now),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the node certificate; retrying in a minute");
                    Duration::from_secs(60)
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match credentials.renew(&self.client(), &self.node).await {
                Ok(client) => {
                    *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
                    tracing::info!(node = %self.node, "renewed the node's client certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the node certificate failed; retrying in 30 s");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
            }
        }
    }

    /// Registers a pod bound to this node, or takes over one bound to this
    /// node already (a previous run's, or one an admin scheduled here). A
    /// pod of that name that is another node's is refused: the server lets a
    /// node neither read nor delete it. An invalid spec is refused before
    /// anything is sent.
    pub async fn register(&self, spec: &PodSpec) -> Result<RegisteredPod, AgentError> {
        spec.validate().map_err(|source| AgentError::InvalidSpec { namespace: spec.namespace.clone(), name: spec.name.clone(), source })?;
        let pods: Api<Pod> = Api::namespaced(self.client(), &spec.namespace);
        let pod: Pod = serde_json::from_value(spec.to_pod(&self.node)).map_err(|e| AgentError::Config(e.to_string()))?;
        let (created, fresh) = match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => (p, true),
            // Exists (409), or this node may not create pods here (403): ours only if it is bound to us.
            Err(kube::Error::Api(refusal)) if matches!(refusal.code, 403 | 409) => match pods.get(&spec.name).await {
                Ok(existing) if existing.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str()) => (existing, false),
                Ok(_) => unreachable_other_node(spec, &refusal.message)?,
                Err(kube::Error::Api(get)) if refusal.code == 409 => {
                    return Err(AgentError::NotOurs { namespace: spec.namespace.clone(), name: spec.name.clone(), why: get.message });
                }
                Err(_) => return Err(api_err(format!("registering Pod {}/{}", spec.namespace, spec.name))(kube::Error::Api(refusal))),
            },
            Err(e) => return Err(api_err(format!("registering Pod {}/{}", spec.namespace, spec.name))(e)),
        };
        let uid = created.metadata.uid.unwrap_or_default();
        let registered = RegisteredPod { spec: spec.clone(), uid, automount: true };
        // The ServiceAccount is readable once a pod of this node runs as it.
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), &spec.namespace);
        let sa = match sas.get(&spec.service_account_name).await {
            Ok(sa) => sa,
            Err(e) => {
                if fresh {
                    let _ = self.unregister(&registered).await;
                }
                return Err(api_err(format!("reading ServiceAccount {}/{}", spec.namespace, spec.service_account_name))(e));
            }
        };
        let automount = spec.automount_service_account_token.or(sa.automount_service_account_token).unwrap_or(true);
        tracing::info!(namespace = %spec.namespace, pod = %spec.name, uid = %registered.uid, automount, "pod registered");
        Ok(RegisteredPod { automount, ..registered })
    }

    /// Deletes the pod (only the incarnation we registered): its tokens stop working.
    pub async fn unregister(&self, pod: &RegisteredPod) -> Result<(), AgentError> {
        let pods: Api<Pod> = Api::namespaced(self.client(), &pod.spec.namespace);
        let params = DeleteParams { preconditions: Some(Preconditions { uid: Some(pod.uid.clone()), resource_version: None }), ..DeleteParams::default() };
        match pods.delete(&pod.spec.name, &params).await {
            Ok(_) => {
                tracing::info!(namespace = %pod.spec.namespace, pod = %pod.spec.name, "pod deleted");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(api_err(format!("deleting Pod {}/{}", pod.spec.namespace, pod.spec.name))(e)),
        }
    }

    async fn request_token(&self, pod: &RegisteredPod, audience: Option<&str>, expiration: i64) -> Result<(String, i64), AgentError> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), &pod.spec.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
                expiration_seconds: Some(expiration),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.spec.name.clone()),
                    uid: Some(pod.uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let what = format!("requesting a token for {}/{}", pod.spec.namespace, pod.spec.service_account_name);
        let answer: TokenRequest = sas
            .create_subresource("token", &pod.spec.service_account_name, &PostParams::default(), &request)
            .await
            .map_err(api_err(what.clone()))?;
        let status = answer.status.ok_or_else(|| AgentError::NoToken(what.clone()))?;
        let lifetime = answer.spec.expiration_seconds.unwrap_or(expiration);
        Ok((status.token, lifetime))
    }

    async fn write_static_files(&self, pod: &RegisteredPod, layout: &Layout) -> Result<(), AgentError> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client(), &pod.spec.namespace);
        let ca = maps
            .get("kube-root-ca.crt")
            .await
            .map_err(api_err(format!("reading {}/kube-root-ca.crt", pod.spec.namespace)))?
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .unwrap_or_default();
        for (name, contents) in [("ca.crt", ca.as_str()), ("namespace", pod.spec.namespace.as_str())] {
            layout.write(&layout.service_account_dir.join(name), contents.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    fn slots(pod: &RegisteredPod, layout: &Layout) -> Vec<TokenSlot> {
        let mut slots = Vec::new();
        if pod.automount {
            slots.push(TokenSlot { audience: None, expiration_seconds: 3607, path: layout.service_account_dir.join("token"), state: SlotState::Pending });
        }
        for t in &pod.spec.tokens {
            slots.push(TokenSlot {
                audience: Some(t.audience.clone()),
                expiration_seconds: t.expiration_seconds,
                path: layout.tokens_dir.join(&t.path),
                state: SlotState::Pending,
            });
        }
        slots
    }

    /// Writes every file once; returns the slots to keep fresh.
    async fn project_once(&self, pod: &RegisteredPod, layout: &Layout) -> Result<Vec<TokenSlot>, AgentError> {
        if pod.automount {
            self.write_static_files(pod, layout).await?;
        }
        let mut slots = Self::slots(pod, layout);
        for slot in &mut slots {
            self.refresh(pod, layout, slot).await?;
        }
        Ok(slots)
    }

    async fn refresh(&self, pod: &RegisteredPod, layout: &Layout, slot: &mut TokenSlot) -> Result<(), AgentError> {
        let (token, lifetime) = self.request_token(pod, slot.audience.as_deref(), slot.expiration_seconds).await?;
        layout.write(&slot.path, token.as_bytes(), 0o600)?;
        // Like kubelet: refresh at 80 % of the lifetime, and at least daily.
        let after = self.refresh_override.unwrap_or_else(|| {
            Duration::from_secs(u64::try_from(lifetime * 8 / 10).unwrap_or(0)).min(Duration::from_secs(24 * 3600))
        });
        slot.state = SlotState::Projected { refresh_at: Instant::now() + after };
        tracing::debug!(path = %layout.root().join(&slot.path).display(), refresh_in = ?after, "token projected");
        Ok(())
    }

    /// Projects the pod's files now, then keeps them fresh until `stop`
    /// resolves. `on_ready` runs once, after the first complete projection.
    pub async fn project(&self, pod: &RegisteredPod, layout: &Layout, on_ready: impl FnOnce(), stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        let mut slots = self.project_once(pod, layout).await?;
        if let Err(e) = self.mark_ready(&pod.spec.namespace, &pod.spec.name).await {
            // The tokens work either way; the heartbeat reports it again.
            tracing::warn!(error = %e, "reporting the pod ready failed");
        }
        on_ready();
        tokio::pin!(stop);
        loop {
            let Some(next) = slots.iter().map(TokenSlot::due).min() else {
                stop.await;
                return Ok(());
            };
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep_until(next) => {}
            }
            for slot in slots.iter_mut().filter(|s| s.due() <= Instant::now()) {
                if let Err(e) = self.refresh(pod, layout, slot).await {
                    // Keep the current file; tokens stay valid well past 80 % of their life.
                    let backoff = match slot.state {
                        SlotState::Retrying { backoff, .. } => (backoff * 2).min(Duration::from_secs(30)),
                        _ => Duration::from_secs(1),
                    };
                    tracing::warn!(error = %e, path = %layout.root().join(&slot.path).display(), retry_in = ?backoff, "token refresh failed");
                    slot.state = SlotState::Retrying { retry_at: Instant::now() + backoff, backoff };
                }
            }
        }
    }
}
