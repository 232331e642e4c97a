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
use crate::volumes::{Content, UnprojectablePod};

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
    /// The Pod the server returned has volumes the agent cannot write below
    /// the pod's root (it was deleted again).
    #[error("Pod {namespace}/{name} cannot be projected: {source}")]
    Unprojectable {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Every problem.
        source: UnprojectablePod,
    },
    /// A ConfigMap key a projected volume needs (not optional) is missing.
    #[error("ConfigMap {namespace}/{name} has no key {key:?}, which a projected volume of the pod needs")]
    MissingConfigMapKey {
        /// Namespace.
        namespace: String,
        /// The ConfigMap.
        name: String,
        /// The key.
        key: String,
    },
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

/// Where a pod's files go: the pod's root, a directory below the agent's
/// checked output root, under which each projected volume is written at the
/// path its container mounts it at.
#[derive(Debug, Clone)]
pub struct Layout {
    root: Arc<OutputRoot>,
    /// The pod's root, relative to the output root (empty: the output root itself).
    pod_dir: PathBuf,
}

impl Layout {
    /// `<root>/<namespace>/<pod>/` as the pod's root (the agent's per-pod directories).
    pub fn per_pod(root: Arc<OutputRoot>, namespace: &str, pod: &str) -> Self {
        Self { root, pod_dir: Path::new(namespace).join(pod) }
    }

    /// The output root itself as the pod's root (`agent run`).
    pub fn kubernetes(root: Arc<OutputRoot>) -> Self {
        Self { root, pod_dir: PathBuf::new() }
    }

    /// The root all files go below.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The pod's root.
    pub fn pod_root(&self) -> PathBuf {
        self.root.path().join(&self.pod_dir)
    }

    /// Where the ServiceAccount volume's `token`, `ca.crt` and `namespace` are
    /// (the mount path ServiceAccount admission gives it).
    pub fn service_account_dir(&self) -> PathBuf {
        self.pod_root().join("var/run/secrets/kubernetes.io/serviceaccount")
    }

    /// Where the small pod format's extra tokens are ([`crate::pod::TOKENS_MOUNT_PATH`]).
    pub fn tokens_dir(&self) -> PathBuf {
        self.pod_root().join(crate::pod::TOKENS_MOUNT_PATH.trim_start_matches('/'))
    }

    fn write(&self, rel: &Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
        Ok(self.root.write_atomically(&self.pod_dir.join(rel), contents, mode)?)
    }
}

/// One token file the agent keeps fresh.
#[derive(Debug, Clone)]
pub struct TokenSlot {
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
    /// The status last reported for each pod the agent runs; one writer at a
    /// time, so a heartbeat never writes an older status over a newer one.
    pub(crate) reports: Arc<tokio::sync::Mutex<std::collections::HashMap<crate::heartbeat::PodKey, serde_json::Value>>>,
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
        Ok(Self { client: Arc::new(RwLock::new(client)), node, refresh_override, server, reports: Arc::default() })
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
    /// anything is sent. What is projected is read from the Pod the server
    /// returns (its admission adds the ServiceAccount volume); a Pod whose
    /// volumes cannot be written below the pod's root is deleted again.
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
        let object = serde_json::to_value(&created).map_err(|e| AgentError::Config(e.to_string()))?;
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let service_account = created.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| spec.service_account_name.clone());
        let mut registered = RegisteredPod { spec: spec.clone(), uid, service_account, object, files: Vec::new() };
        match crate::volumes::plan(&registered.object) {
            Ok(files) => registered.files = files,
            Err(source) => {
                if fresh {
                    let _ = self.unregister(&registered).await;
                }
                return Err(AgentError::Unprojectable { namespace: spec.namespace.clone(), name: spec.name.clone(), source });
            }
        }
        tracing::info!(namespace = %spec.namespace, pod = %spec.name, uid = %registered.uid, files = registered.files.len(), "pod registered");
        Ok(registered)
    }

    /// Deletes the pod (only the incarnation we registered): its tokens stop working.
    pub async fn unregister(&self, pod: &RegisteredPod) -> Result<(), AgentError> {
        self.forget_status(&pod.spec.namespace, &pod.spec.name).await;
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
        let what = format!("requesting a token for {}/{}", pod.spec.namespace, pod.service_account);
        let answer: TokenRequest = sas
            .create_subresource("token", &pod.service_account, &PostParams::default(), &request)
            .await
            .map_err(api_err(what.clone()))?;
        let status = answer.status.ok_or_else(|| AgentError::NoToken(what.clone()))?;
        let lifetime = answer.spec.expiration_seconds.unwrap_or(expiration);
        Ok((status.token, lifetime))
    }

    /// Writes the files that are not tokens: ConfigMap keys (each ConfigMap
    /// read once) and pod fields.
    async fn write_static_files(&self, pod: &RegisteredPod, layout: &Layout) -> Result<(), AgentError> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client(), &pod.spec.namespace);
        let mut read: std::collections::HashMap<String, Option<ConfigMap>> = std::collections::HashMap::new();
        for file in &pod.files {
            let contents = match &file.content {
                Content::Token { .. } => continue,
                Content::Field(value) => value.clone(),
                Content::ConfigMap { name, key, optional } => {
                    if !read.contains_key(name) {
                        let found = maps.get_opt(name).await.map_err(api_err(format!("reading ConfigMap {}/{name}", pod.spec.namespace)))?;
                        read.insert(name.clone(), found);
                    }
                    let value = read.get(name).and_then(Option::as_ref).and_then(|m| m.data.as_ref()).and_then(|d| d.get(key));
                    match (value, optional) {
                        (Some(value), _) => value.clone(),
                        (None, true) => continue,
                        (None, false) => return Err(AgentError::MissingConfigMapKey { namespace: pod.spec.namespace.clone(), name: name.clone(), key: key.clone() }),
                    }
                }
            };
            layout.write(&file.path, contents.as_bytes(), file.mode())?;
        }
        Ok(())
    }

    fn slots(pod: &RegisteredPod) -> Vec<TokenSlot> {
        pod.files
            .iter()
            .filter_map(|file| match &file.content {
                Content::Token { audience, expiration_seconds } => Some(TokenSlot {
                    audience: audience.clone(),
                    expiration_seconds: *expiration_seconds,
                    path: file.path.clone(),
                    state: SlotState::Pending,
                }),
                _ => None,
            })
            .collect()
    }

    /// Writes every file once; returns the tokens to keep fresh.
    pub async fn project_once(&self, pod: &RegisteredPod, layout: &Layout) -> Result<Vec<TokenSlot>, AgentError> {
        self.write_static_files(pod, layout).await?;
        let mut slots = Self::slots(pod);
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
        tracing::debug!(path = %layout.pod_root().join(&slot.path).display(), refresh_in = ?after, "token projected");
        Ok(())
    }

    /// Keeps the tokens of a projected pod fresh until `stop` resolves.
    pub async fn keep_fresh(&self, pod: &RegisteredPod, layout: &Layout, mut slots: Vec<TokenSlot>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let Some(next) = slots.iter().map(TokenSlot::due).min() else {
                stop.await;
                return;
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            for slot in slots.iter_mut().filter(|s| s.due() <= Instant::now()) {
                if let Err(e) = self.refresh(pod, layout, slot).await {
                    // Keep the current file; tokens stay valid well past 80 % of their life.
                    let backoff = match slot.state {
                        SlotState::Retrying { backoff, .. } => (backoff * 2).min(Duration::from_secs(30)),
                        _ => Duration::from_secs(1),
                    };
                    tracing::warn!(error = %e, path = %layout.pod_root().join(&slot.path).display(), retry_in = ?backoff, "token refresh failed");
                    slot.state = SlotState::Retrying { retry_at: Instant::now() + backoff, backoff };
                }
            }
        }
    }
}
