//! Registering pods and projecting their tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Api { what, source }
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

/// The agent: one API client and the settings of this node.
#[derive(Clone)]
pub struct Agent {
    client: kube::Client,
    node: String,
    refresh_override: Option<Duration>,
    server: String,
}

// === impl Agent ===

impl Agent {
    /// Connects with a kubeconfig (or the default loading rules when None).
    pub async fn connect(kubeconfig: Option<&Path>, node: &str, refresh_override: Option<Duration>) -> Result<Self, AgentError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| AgentError::Config(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| AgentError::Config(e.to_string()))?
            }
            None => kube::Config::infer().await.map_err(|e| AgentError::Config(e.to_string()))?,
        };
        let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
        let client = kube::Client::try_from(config).map_err(|e| AgentError::Config(e.to_string()))?;
        Ok(Self { client, node: node.to_owned(), refresh_override, server })
    }

    /// The API server URL (passed on to workloads).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// Registers a pod on this node (re-using one this node registered
    /// before). An invalid spec is refused before anything is sent.
    pub async fn register(&self, spec: &PodSpec) -> Result<RegisteredPod, AgentError> {
        spec.validate().map_err(|source| AgentError::InvalidSpec { namespace: spec.namespace.clone(), name: spec.name.clone(), source })?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &spec.namespace);
        let sa = sas
            .get(&spec.service_account_name)
            .await
            .map_err(api_err(format!("reading ServiceAccount {}/{}", spec.namespace, spec.service_account_name)))?;
        let automount = spec.automount_service_account_token.or(sa.automount_service_account_token).unwrap_or(true);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &spec.namespace);
        let pod: Pod = serde_json::from_value(spec.to_pod(&self.node)).map_err(|e| AgentError::Config(e.to_string()))?;
        let created = match pods.create(&PostParams::default(), &pod).await {
            Ok(p) => p,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = pods.get(&spec.name).await.map_err(api_err(format!("reading Pod {}/{}", spec.namespace, spec.name)))?;
                let ours = existing.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str());
                if !ours {
                    return Err(AgentError::Api {
                        what: format!("registering Pod {}/{}", spec.namespace, spec.name),
                        source: kube::Error::Api(status),
                    });
                }
                existing
            }
            Err(e) => return Err(api_err(format!("registering Pod {}/{}", spec.namespace, spec.name))(e)),
        };
        let uid = created.metadata.uid.unwrap_or_default();
        tracing::info!(namespace = %spec.namespace, pod = %spec.name, %uid, automount, "pod registered");
        Ok(RegisteredPod { spec: spec.clone(), uid, automount })
    }

    /// Deletes the pod (only the incarnation we registered): its tokens stop working.
    pub async fn unregister(&self, pod: &RegisteredPod) -> Result<(), AgentError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.spec.namespace);
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
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &pod.spec.namespace);
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
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &pod.spec.namespace);
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
