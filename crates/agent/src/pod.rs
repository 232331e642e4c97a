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

fn is_below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
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

/// The files of the ServiceAccount volume (`token`, `ca.crt`, `namespace`).
/// In the agent's per-pod layout they share a directory with the projected
/// tokens, so no projected path may start with one of these names.
pub const SERVICE_ACCOUNT_FILES: [&str; 3] = ["token", "ca.crt", "namespace"];

/// kube's limits on `expirationSeconds` of a projected token.
const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// A pod spec that fails validation: every problem, kube-style
/// (`tokens[1].path: Invalid value: "token": …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPodSpec(pub Vec<String>);

impl std::fmt::Display for InvalidPodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube's aggregate: one error alone, several in brackets.
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

impl std::error::Error for InvalidPodSpec {}

fn invalid(field: &str, value: impl std::fmt::Debug, detail: &str) -> String {
    format!("{field}: Invalid value: {value:?}: {detail}")
}

impl ProjectedToken {
    /// Checks the token as kube checks a `serviceAccountToken` projection and
    /// as kubelet's atomic writer checks its path: a relative path of plain
    /// names, no `..` element, not starting with `..`. `field` names it in errors.
    fn problems(&self, field: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.audience.is_empty() {
            problems.push(format!("{field}.audience: Required value"));
        }
        if self.expiration_seconds < MIN_EXPIRATION_SECONDS {
            problems.push(invalid(&format!("{field}.expirationSeconds"), self.expiration_seconds, "may not specify a duration less than 10 minutes"));
        }
        if self.expiration_seconds > MAX_EXPIRATION_SECONDS {
            problems.push(invalid(&format!("{field}.expirationSeconds"), self.expiration_seconds, "may not specify a duration larger than 2^32 seconds"));
        }
        let path_field = format!("{field}.path");
        let elements: Vec<&str> = self.path.split('/').collect();
        if self.path.is_empty() {
            problems.push(format!("{path_field}: Required value"));
        } else if self.path.starts_with('/') {
            problems.push(invalid(&path_field, &self.path, "must be a relative path"));
        } else if elements.contains(&"..") {
            problems.push(invalid(&path_field, &self.path, "must not contain '..'"));
        } else if elements[0].starts_with("..") {
            problems.push(invalid(&path_field, &self.path, "must not start with '..'"));
        } else if elements.iter().any(|e| e.is_empty() || *e == ".") {
            // "./a", "a//b" and "a/" name the same files as plain paths and would slip past the uniqueness check.
            problems.push(invalid(&path_field, &self.path, "must be plain names separated by '/' (no '.' or empty elements)"));
        } else if SERVICE_ACCOUNT_FILES.contains(&elements[0]) {
            problems.push(invalid(&path_field, &self.path, "must not be or be below \"token\", \"ca.crt\" or \"namespace\": those are the ServiceAccount volume's files"));
        }
        problems
    }
}

impl PodSpec {
    /// Checks every projected token, then that their paths are unique and
    /// that none is a directory of another (`a` and `a/b`).
    pub fn validate(&self) -> Result<(), InvalidPodSpec> {
        let mut problems = Vec::new();
        let mut seen: Vec<(&str, String)> = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let field = format!("tokens[{i}]");
            let own = token.problems(&field);
            if own.is_empty() {
                let path = token.path.as_str();
                for (other, other_field) in &seen {
                    if *other == path {
                        problems.push(invalid(&format!("{field}.path"), path, "conflicting duplicate paths"));
                    } else if is_below(path, other) || is_below(other, path) {
                        problems.push(invalid(&format!("{field}.path"), path, &format!("conflicts with {other:?} of {other_field}: one would be a directory of the other")));
                    }
                }
                seen.push((path, field));
            }
            problems.extend(own);
        }
        if problems.is_empty() { Ok(()) } else { Err(InvalidPodSpec(problems)) }
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

    fn token(path: &str) -> ProjectedToken {
        ProjectedToken { audience: "a".into(), expiration_seconds: 600, path: path.into() }
    }

    fn spec(paths: &[&str]) -> PodSpec {
        PodSpec {
            namespace: "ns".into(),
            name: "p".into(),
            service_account_name: "default".into(),
            automount_service_account_token: None,
            tokens: paths.iter().map(|p| token(p)).collect(),
        }
    }

    fn error(paths: &[&str]) -> String {
        spec(paths).validate().unwrap_err().to_string()
    }

    #[test]
    fn good_paths() {
        spec(&["api-token", "sub/api-token", "other/x", "tokens/a", "token-b", "x..y", "b/..c"]).validate().unwrap();
    }

    #[test]
    fn paths_that_escape_are_refused_as_kube_refuses_them() {
        assert_eq!(error(&["/etc/passwd"]), r#"tokens[0].path: Invalid value: "/etc/passwd": must be a relative path"#);
        assert_eq!(error(&["../x"]), r#"tokens[0].path: Invalid value: "../x": must not contain '..'"#);
        assert_eq!(error(&["a/../../x"]), r#"tokens[0].path: Invalid value: "a/../../x": must not contain '..'"#);
        assert_eq!(error(&["..data/x"]), r#"tokens[0].path: Invalid value: "..data/x": must not start with '..'"#);
        assert_eq!(error(&["..."]), r#"tokens[0].path: Invalid value: "...": must not start with '..'"#);
        assert_eq!(error(&[""]), "tokens[0].path: Required value");
        for sneaky in ["./x", "a//b", "a/"] {
            assert_eq!(
                error(&[sneaky]),
                format!("tokens[0].path: Invalid value: {sneaky:?}: must be plain names separated by '/' (no '.' or empty elements)")
            );
        }
    }

    #[test]
    fn paths_colliding_with_the_service_account_files_are_refused() {
        for name in ["token", "ca.crt", "namespace", "token/x"] {
            assert_eq!(
                error(&["ok", name]),
                format!(r#"tokens[1].path: Invalid value: {name:?}: must not be or be below "token", "ca.crt" or "namespace": those are the ServiceAccount volume's files"#)
            );
        }
    }

    #[test]
    fn duplicate_and_nested_paths_are_refused() {
        assert_eq!(error(&["x", "y", "x"]), r#"tokens[2].path: Invalid value: "x": conflicting duplicate paths"#);
        assert_eq!(error(&["a/b", "a"]), r#"tokens[1].path: Invalid value: "a": conflicts with "a/b" of tokens[0]: one would be a directory of the other"#);
        // Every problem is reported, as kube aggregates them.
        assert_eq!(
            error(&["x", "x", "token"]),
            r#"[tokens[1].path: Invalid value: "x": conflicting duplicate paths, tokens[2].path: Invalid value: "token": must not be or be below "token", "ca.crt" or "namespace": those are the ServiceAccount volume's files]"#
        );
    }

    #[test]
    fn expiration_limits_are_kubes() {
        let mut s = spec(&["x"]);
        s.tokens[0].expiration_seconds = 599;
        assert_eq!(s.validate().unwrap_err().to_string(), "tokens[0].expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes");
        s.tokens[0].expiration_seconds = (1 << 32) + 1;
        assert_eq!(s.validate().unwrap_err().to_string(), "tokens[0].expirationSeconds: Invalid value: 4294967297: may not specify a duration larger than 2^32 seconds");
    }
}
