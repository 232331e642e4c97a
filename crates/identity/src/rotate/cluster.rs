//! What the rotation reads and changes, as a trait so the state machine is
//! tested against a fake: the trust bundle ConfigMap, the rotation state
//! ConfigMap, the issuer (files or Secret) and the meshed proxies' reports.

use async_trait::async_trait;

use super::state::RotationState;

/// A failed cluster (or issuer target) operation, with what was attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

/// What one meshed proxy reports through its Pod's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyState {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub pod: String,
    /// `tessera.io/trust-anchors`: fingerprints of the anchors it trusts (None before its first report).
    pub anchors: Option<Vec<String>>,
    /// `tessera.io/leaf-issuer`: fingerprint of its leaf's issuer (None before its first certificate).
    pub leaf_issuer: Option<String>,
}

impl ProxyState {
    /// `namespace/pod`, as the output names proxies.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// Whether it reports trusting `fingerprint`.
    pub fn trusts(&self, fingerprint: &str) -> bool {
        self.anchors.as_ref().is_some_and(|a| a.iter().any(|f| f == fingerprint))
    }
}

/// The operations of a rotation. Every method is one read or one write, so
/// a fake can interrupt the rotation between any two of them.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The persisted rotation state, if any.
    async fn load_state(&self) -> Result<Option<RotationState>, ClusterError>;
    /// Persists the rotation state (creating the ConfigMap if needed).
    async fn save_state(&self, state: &RotationState) -> Result<(), ClusterError>;
    /// The trust bundle (PEM) from the bundle ConfigMap.
    async fn bundle(&self) -> Result<String, ClusterError>;
    /// Replaces the trust bundle.
    async fn set_bundle(&self, pem: &str) -> Result<(), ClusterError>;
    /// Sets the bundle ConfigMap's annotation `tessera.io/issuer-fingerprint`.
    async fn announce_issuer(&self, fingerprint: &str) -> Result<(), ClusterError>;
    /// Installs the issuer certificate and key where `tessera identity` reads them.
    async fn install_issuer(&self, crt_pem: &str, key_pem: &str) -> Result<(), ClusterError>;
    /// The issuer certificate (PEM) currently installed, if any.
    async fn installed_issuer(&self) -> Result<Option<String>, ClusterError>;
    /// Every meshed proxy: Running pods annotated `linkerd.io/inject: enabled`.
    async fn proxies(&self) -> Result<Vec<ProxyState>, ClusterError>;
}
