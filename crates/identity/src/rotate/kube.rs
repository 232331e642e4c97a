//! [`Cluster`] over the Kubernetes API (any kube-compatible server): the
//! ConfigMaps in the control namespace, pods in every namespace, and the
//! issuer as files (atomic renames) or a `kubernetes.io/tls` Secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::cluster::{Cluster, ClusterError, ProxyState};
use super::state::RotationState;
use super::{
    ANNOTATION_ISSUER_FINGERPRINT, ANNOTATION_LEAF_ISSUER, ANNOTATION_TRUST_ANCHORS, BUNDLE_CONFIGMAP, BUNDLE_KEY, STATE_CONFIGMAP,
    STATE_KEY,
};

/// Where the new issuer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerTarget {
    /// `crt.pem`/`key.pem` in this directory.
    Dir(PathBuf),
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// The real cluster.
pub struct KubeCluster {
    client: kube::Client,
    namespace: String,
    issuer: Option<IssuerTarget>,
}

impl KubeCluster {
    /// ConfigMaps live in `namespace` (the control namespace); `issuer` may be
    /// None for read-only uses (`--status`).
    pub fn new(client: kube::Client, namespace: String, issuer: Option<IssuerTarget>) -> Self {
        Self { client, namespace, issuer }
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn target(&self) -> Result<&IssuerTarget, ClusterError> {
        self.issuer.as_ref().ok_or_else(|| ClusterError("no issuer target (--issuer-dir or --issuer-secret)".to_owned()))
    }
}

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> ClusterError {
    move |e| ClusterError(format!("{what}: {e}"))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn load_state(&self) -> Result<Option<RotationState>, ClusterError> {
        let what = format!("reading ConfigMap {}/{STATE_CONFIGMAP}", self.namespace);
        let Some(cm) = self.config_maps().get_opt(STATE_CONFIGMAP).await.map_err(kube_err(what.clone()))? else {
            return Ok(None);
        };
        let Some(json) = cm.data.as_ref().and_then(|d| d.get(STATE_KEY)) else {
            return Ok(None);
        };
        serde_json::from_str(json).map(Some).map_err(|e| ClusterError(format!("{what}: key {STATE_KEY}: {e}")))
    }

    async fn save_state(&self, state: &RotationState) -> Result<(), ClusterError> {
        let what = format!("writing ConfigMap {}/{STATE_CONFIGMAP}", self.namespace);
        let json = serde_json::to_string_pretty(state).map_err(|e| ClusterError(format!("{what}: {e}")))?;
        let api = self.config_maps();
        let patch = serde_json::json!({ "data": { STATE_KEY: json } });
        match api.patch(STATE_CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                let cm = ConfigMap {
                    metadata: ObjectMeta { name: Some(STATE_CONFIGMAP.to_owned()), ..ObjectMeta::default() },
                    data: Some(BTreeMap::from([(STATE_KEY.to_owned(), json)])),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await.map(|_| ()).map_err(kube_err(what))
            }
            Err(e) => Err(kube_err(what)(e)),
        }
    }

    async fn bundle(&self) -> Result<String, ClusterError> {
        let what = format!("reading ConfigMap {}/{BUNDLE_CONFIGMAP}", self.namespace);
        let cm = self.config_maps().get(BUNDLE_CONFIGMAP).await.map_err(kube_err(what.clone()))?;
        cm.data.and_then(|mut d| d.remove(BUNDLE_KEY)).ok_or_else(|| ClusterError(format!("{what}: no key {BUNDLE_KEY}")))
    }

    async fn set_bundle(&self, pem: &str) -> Result<(), ClusterError> {
        let patch = serde_json::json!({ "data": { BUNDLE_KEY: pem } });
        self.config_maps()
            .patch(BUNDLE_CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(kube_err(format!("updating ConfigMap {}/{BUNDLE_CONFIGMAP}", self.namespace)))
    }

    async fn announce_issuer(&self, fingerprint: &str) -> Result<(), ClusterError> {
        let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION_ISSUER_FINGERPRINT: fingerprint } } });
        self.config_maps()
            .patch(BUNDLE_CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(kube_err(format!("annotating ConfigMap {}/{BUNDLE_CONFIGMAP}", self.namespace)))
    }

    async fn install_issuer(&self, crt_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        match self.target()? {
            IssuerTarget::Dir(dir) => {
                // The key first: identity re-reads every second and refuses a
                // mismatched pair (keeping the old issuer) until the
                // certificate follows; each file is replaced by a rename.
                replace_file(&dir.join("key.pem"), key_pem.as_bytes(), true)?;
                replace_file(&dir.join("crt.pem"), crt_pem.as_bytes(), false)
            }
            IssuerTarget::Secret { namespace, name } => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let what = format!("writing Secret {namespace}/{name}");
                let data = BTreeMap::from([
                    ("tls.crt".to_owned(), ByteString(crt_pem.as_bytes().to_vec())),
                    ("tls.key".to_owned(), ByteString(key_pem.as_bytes().to_vec())),
                ]);
                let patch = serde_json::json!({ "data": &data });
                match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_not_found(&e) => {
                        let secret = Secret {
                            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                            type_: Some("kubernetes.io/tls".to_owned()),
                            data: Some(data),
                            ..Secret::default()
                        };
                        api.create(&PostParams::default(), &secret).await.map(|_| ()).map_err(kube_err(what))
                    }
                    Err(e) => Err(kube_err(what)(e)),
                }
            }
        }
    }

    async fn installed_issuer(&self) -> Result<Option<String>, ClusterError> {
        match self.target()? {
            IssuerTarget::Dir(dir) => {
                let path = dir.join("crt.pem");
                match std::fs::read_to_string(&path) {
                    Ok(pem) => Ok(Some(pem)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ClusterError(format!("{}: {e}", path.display()))),
                }
            }
            IssuerTarget::Secret { namespace, name } => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let secret = api.get_opt(name).await.map_err(kube_err(format!("reading Secret {namespace}/{name}")))?;
                Ok(secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove("tls.crt").or_else(|| d.remove("crt.pem")))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
            }
        }
    }

    async fn proxies(&self) -> Result<Vec<ProxyState>, ClusterError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods.list(&ListParams::default()).await.map_err(kube_err("listing pods".to_owned()))?;
        let mut proxies: Vec<ProxyState> = list.items.into_iter().filter_map(proxy_state).collect();
        proxies.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        Ok(proxies)
    }
}

/// A meshed, Running pod's report; None for any other pod.
fn proxy_state(pod: Pod) -> Option<ProxyState> {
    let annotations = pod.metadata.annotations.unwrap_or_default();
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if annotations.get("linkerd.io/inject").map(String::as_str) != Some("enabled") || !running {
        return None;
    }
    let anchors = annotations
        .get(ANNOTATION_TRUST_ANCHORS)
        .map(|v| v.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect());
    Some(ProxyState {
        namespace: pod.metadata.namespace.unwrap_or_default(),
        pod: pod.metadata.name.unwrap_or_default(),
        anchors,
        leaf_issuer: annotations.get(ANNOTATION_LEAF_ISSUER).filter(|v| !v.is_empty()).cloned(),
    })
}

/// Writes `path` through a temporary file in the same directory and a
/// rename, so a reader sees the old or the new file, never a partial one.
pub(crate) fn replace_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), ClusterError> {
    let err = |e: std::io::Error| ClusterError(format!("{}: {e}", path.display()));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    {
        use std::io::Write as _;
        let mut file = options.open(&tmp).map_err(err)?;
        file.write_all(contents).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;

    use super::*;

    fn pod(annotations: &[(&str, &str)], phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("p".into()),
                annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus { phase: Some(phase.into()), ..PodStatus::default() }),
            ..Pod::default()
        }
    }

    #[test]
    fn only_running_meshed_pods_are_proxies() {
        let meshed =
            [("linkerd.io/inject", "enabled"), (ANNOTATION_TRUST_ANCHORS, "sha256:b,sha256:a"), (ANNOTATION_LEAF_ISSUER, "sha256:c")];
        let p = proxy_state(pod(&meshed, "Running")).unwrap();
        assert_eq!(p.anchors, Some(vec!["sha256:b".to_owned(), "sha256:a".to_owned()]));
        assert_eq!(p.leaf_issuer.as_deref(), Some("sha256:c"));
        assert!(proxy_state(pod(&meshed, "Pending")).is_none());
        assert!(proxy_state(pod(&[("linkerd.io/inject", "disabled")], "Running")).is_none());
        let fresh = proxy_state(pod(&[("linkerd.io/inject", "enabled")], "Running")).unwrap();
        assert_eq!((fresh.anchors, fresh.leaf_issuer), (None, None));
    }

    #[test]
    fn replace_file_swaps_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crt.pem");
        replace_file(&path, b"one", false).unwrap();
        replace_file(&path, b"two", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
