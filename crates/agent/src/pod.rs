//! What the agent runs: pod descriptions and registered pods.

use serde::{Deserialize, Serialize};

/// The image name registered for the workload's one container.
pub(crate) const WORKLOAD_IMAGE: &str = "tessera.local/workload";

/// A token projected into the pod's directory (a `serviceAccountToken` projected volume source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedToken {
    /// Audience of the token.
    pub audience: String,
    /// Requested lifetime (Kubernetes' minimum is 600).
    #[serde(default = "default_expiration")]
    pub expiration_seconds: i64,
    /// File path relative to the pod's token directory.
    pub path: String,
}

fn default_expiration() -> i64 {
    3600
}

/// A pod to run: the small pod spec file format (YAML or JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// ServiceAccount (default `default`).
    #[serde(default = "default_sa")]
    pub service_account_name: String,
    /// `automountServiceAccountToken` of the pod (None: the ServiceAccount decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Extra audience-bound tokens.
    #[serde(default)]
    pub tokens: Vec<ProjectedToken>,
}

fn default_sa() -> String {
    "default".to_owned()
}

/// A pod the API server knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPod {
    /// The spec it was registered from.
    pub spec: PodSpec,
    /// Its uid (tokens are bound to it).
    pub uid: String,
    /// Whether the default API token is mounted (automount of the pod, else of the ServiceAccount).
    pub automount: bool,
}

impl ProjectedToken {
    /// Checks the token's file path stays inside the pod's token directory.
    pub fn validate(&self) -> Result<(), String> {
        if self.audience.is_empty() || self.path.is_empty() {
            return Err("a token needs an audience and a path".into());
        }
        let path = std::path::Path::new(&self.path);
        if path.is_absolute() || path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("token path {:?} must be relative and stay inside the token directory", self.path));
        }
        Ok(())
    }
}

impl PodSpec {
    /// Checks every projected token.
    pub fn validate(&self) -> Result<(), String> {
        self.tokens.iter().try_for_each(ProjectedToken::validate)
    }

    /// The Pod object registered with the API server, bound to `node`. Its
    /// projected volume names what the agent writes, as kube's ServiceAccount
    /// admission adds it: the node may read `kube-root-ca.crt` because its pod
    /// references it.
    pub fn to_pod(&self, node: &str) -> serde_json::Value {
        let mut sources = vec![
            serde_json::json!({"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}),
            serde_json::json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
            serde_json::json!({"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}),
        ];
        sources.extend(self.tokens.iter().map(|t| {
            serde_json::json!({"serviceAccountToken": {"audience": t.audience, "expirationSeconds": t.expiration_seconds, "path": t.path}})
        }));
        let mut spec = serde_json::json!({
            "serviceAccountName": self.service_account_name,
            "nodeName": node,
            "containers": [{"name": "workload", "image": WORKLOAD_IMAGE}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": sources, "defaultMode": 420}}],
        });
        if let Some(automount) = self.automount_service_account_token {
            spec["automountServiceAccountToken"] = serde_json::json!(automount);
        }
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {"tessera.dev/agent": node}},
            "spec": spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_spec_file_format() {
        let spec: PodSpec = serde_yaml::from_str(
            "namespace: api\nname: api-0\nserviceAccountName: api\ntokens:\n- audience: data-store\n  expirationSeconds: 600\n  path: api-token\n",
        )
        .unwrap();
        assert_eq!(spec.tokens[0], ProjectedToken { audience: "data-store".into(), expiration_seconds: 600, path: "api-token".into() });
        let pod = spec.to_pod("node-1");
        assert_eq!(pod["spec"]["nodeName"], "node-1");
        assert_eq!(pod["spec"]["serviceAccountName"], "api");
        assert!(pod["spec"].get("automountServiceAccountToken").is_none());
        let sources = &pod["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[3]["serviceAccountToken"]["audience"], "data-store");
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).expect("a valid Pod");
        assert_eq!(typed.spec.and_then(|s| s.node_name).as_deref(), Some("node-1"));
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    #[test]
    fn token_paths_stay_inside() {
        let t = |path: &str| ProjectedToken { audience: "a".into(), expiration_seconds: 600, path: path.into() };
        assert!(t("api-token").validate().is_ok());
        assert!(t("sub/api-token").validate().is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "./x", ""] {
            assert!(t(bad).validate().is_err(), "{bad}");
        }
    }
}
