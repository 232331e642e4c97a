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

/// A pod to run: the small pod spec file format (YAML or JSON), or a whole
/// Kubernetes Pod manifest (`apiVersion: v1`, `kind: Pod`; see [`PodSpec::parse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The Pod manifest the spec was read from, if it was one: registered as
    /// it is (bound to the node), its projected volumes projected.
    #[serde(skip)]
    pub manifest: Option<serde_json::Value>,
    /// Labels added to the Pod's (`tessera.dev/agent` is always set).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Annotations added to the Pod's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The workload container's port (`containerPort`, TCP) in the small format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// A meshed pod's proxy container (`linkerd-proxy`, as Linkerd's injector
    /// adds it), in the small format.
    #[serde(skip)]
    pub proxy: Option<ProxyContainer>,
}

/// The `linkerd-proxy` container of a meshed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyContainer {
    /// The admin port (`linkerd-admin`: /ready, /metrics, /tap).
    pub admin_port: u16,
}

/// The proxy container's name (Linkerd's).
pub const PROXY_CONTAINER: &str = "linkerd-proxy";
/// The image registered for it.
pub(crate) const PROXY_IMAGE: &str = "tessera.local/proxy";

impl Default for PodSpec {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            name: String::new(),
            service_account_name: default_sa(),
            automount_service_account_token: None,
            tokens: Vec::new(),
            manifest: None,
            labels: Default::default(),
            annotations: Default::default(),
            container_port: None,
            proxy: None,
        }
    }
}

fn default_sa() -> String {
    "default".to_owned()
}

fn is_below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// A pod the API server knows about.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredPod {
    /// The spec it was registered from.
    pub spec: PodSpec,
    /// Its uid (tokens are bound to it).
    pub uid: String,
    /// Its ServiceAccount, as the server admitted it.
    pub service_account: String,
    /// The Pod as the server returned it (after admission).
    pub object: serde_json::Value,
    /// What its projected volumes put where (read from `object`).
    pub files: Vec<crate::volumes::ProjectedFile>,
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

/// Where the small format's extra tokens are mounted (kubelet's usual place
/// for projected tokens; `TESSERA_TOKEN_DIR` of an `agent run` workload).
pub const TOKENS_MOUNT_PATH: &str = "/var/run/secrets/tokens";
/// The volume holding the small format's extra tokens.
const TOKENS_VOLUME: &str = "tessera-tokens";

impl PodSpec {
    /// Reads a spec file: a Pod manifest when it says `kind: Pod`
    /// (namespace `default` unless it names one), else the small format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if value.get("kind").and_then(serde_json::Value::as_str) != Some("Pod") {
            return serde_json::from_value(value).map_err(|e| e.to_string());
        }
        if value.get("apiVersion").and_then(serde_json::Value::as_str) != Some("v1") {
            return Err("a Pod manifest must say apiVersion: v1".into());
        }
        let _typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(value.clone()).map_err(|e| format!("not a valid Pod: {e}"))?;
        let text_at = |p: &str| value.pointer(p).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let name = text_at("/metadata/name").ok_or("a Pod manifest needs metadata.name")?;
        Ok(Self {
            namespace: text_at("/metadata/namespace").unwrap_or_else(|| "default".to_owned()),
            name,
            service_account_name: text_at("/spec/serviceAccountName").or_else(|| text_at("/spec/serviceAccount")).unwrap_or_else(default_sa),
            automount_service_account_token: value.pointer("/spec/automountServiceAccountToken").and_then(serde_json::Value::as_bool),
            tokens: Vec::new(),
            manifest: Some(value),
            ..Self::default()
        })
    }

    /// Checks every projected token, then that their paths are unique and
    /// that none is a directory of another (`a` and `a/b`); for a manifest,
    /// that its projected volumes can be written below the pod's root.
    pub fn validate(&self) -> Result<(), InvalidPodSpec> {
        let mut problems = Vec::new();
        if self.manifest.is_some()
            && let Err(unprojectable) = crate::volumes::plan(&self.to_pod(""))
        {
            problems.extend(unprojectable.0);
        }
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

    /// The Pod object registered with the API server, bound to `node`. The
    /// small format makes one container, `workload`, that mounts the extra
    /// tokens at [`TOKENS_MOUNT_PATH`]; a manifest is sent as it is. Either
    /// way the server's ServiceAccount admission adds the ServiceAccount
    /// volume (`token`, `ca.crt`, `namespace`), and the agent projects what
    /// the returned Pod says. `restartPolicy` is `Never`: the agent restarts
    /// nothing.
    pub fn to_pod(&self, node: &str) -> serde_json::Value {
        let mut pod = match &self.manifest {
            Some(manifest) => manifest.clone(),
            None => self.simple_pod(),
        };
        if let Some(map) = pod.as_object_mut() {
            map.remove("status");
        }
        pod["metadata"]["name"] = serde_json::json!(self.name);
        pod["metadata"]["namespace"] = serde_json::json!(self.namespace);
        if !pod["metadata"]["labels"].is_object() {
            pod["metadata"]["labels"] = serde_json::json!({});
        }
        for (key, value) in &self.labels {
            pod["metadata"]["labels"][key] = serde_json::json!(value);
        }
        if !self.annotations.is_empty() && !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = serde_json::json!({});
        }
        for (key, value) in &self.annotations {
            pod["metadata"]["annotations"][key] = serde_json::json!(value);
        }
        pod["metadata"]["labels"]["tessera.dev/agent"] = serde_json::json!(node);
        pod["spec"]["nodeName"] = serde_json::json!(node);
        pod["spec"]["restartPolicy"] = serde_json::json!("Never");
        pod
    }

    fn simple_pod(&self) -> serde_json::Value {
        let mut container = serde_json::json!({"name": "workload", "image": WORKLOAD_IMAGE});
        let mut spec = serde_json::json!({"serviceAccountName": self.service_account_name});
        if !self.tokens.is_empty() {
            let sources: Vec<_> = self
                .tokens
                .iter()
                .map(|t| serde_json::json!({"serviceAccountToken": {"audience": t.audience, "expirationSeconds": t.expiration_seconds, "path": t.path}}))
                .collect();
            spec["volumes"] = serde_json::json!([{"name": TOKENS_VOLUME, "projected": {"sources": sources, "defaultMode": 420}}]);
            container["volumeMounts"] = serde_json::json!([{"name": TOKENS_VOLUME, "mountPath": TOKENS_MOUNT_PATH, "readOnly": true}]);
        }
        if let Some(port) = self.container_port {
            container["ports"] = serde_json::json!([{"containerPort": port, "protocol": "TCP"}]);
        }
        let mut containers = vec![container];
        if let Some(proxy) = self.proxy {
            // One pod root for both containers: the proxy mounts the same
            // tokens volume, where its `identity.l5d.io` token is.
            let mut sidecar = serde_json::json!({"name": PROXY_CONTAINER, "image": PROXY_IMAGE,
                "ports": [{"name": "linkerd-admin", "containerPort": proxy.admin_port, "protocol": "TCP"}]});
            if !self.tokens.is_empty() {
                sidecar["volumeMounts"] = serde_json::json!([{"name": TOKENS_VOLUME, "mountPath": TOKENS_MOUNT_PATH, "readOnly": true}]);
            }
            containers.push(sidecar);
        }
        spec["containers"] = serde_json::json!(containers);
        if let Some(automount) = self.automount_service_account_token {
            spec["automountServiceAccountToken"] = serde_json::json!(automount);
        }
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": spec})
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
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert!(pod["spec"].get("automountServiceAccountToken").is_none());
        // The ServiceAccount volume is the server's to add; the extra tokens are ours.
        assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        let sources = &pod["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"], serde_json::json!({"audience": "data-store", "expirationSeconds": 600, "path": "api-token"}));
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], "/var/run/secrets/tokens");
        let files = crate::volumes::plan(&pod).unwrap();
        assert_eq!(files[0].path, std::path::Path::new("var/run/secrets/tokens/api-token"));
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).expect("a valid Pod");
        assert_eq!(typed.spec.and_then(|s| s.node_name).as_deref(), Some("node-1"));
    }
}

#[cfg(test)]
mod mesh_tests {
    use super::*;

    #[test]
    fn a_meshed_pod_has_the_proxy_container_its_port_and_annotations() {
        let spec = PodSpec {
            namespace: "data-store".into(),
            name: "data-store-0".into(),
            service_account_name: "data-store".into(),
            tokens: vec![crate::mesh::identity_token()],
            labels: [("app".to_owned(), "data-store".to_owned())].into(),
            annotations: [("linkerd.io/inject".to_owned(), "enabled".to_owned())].into(),
            container_port: Some(8081),
            proxy: Some(ProxyContainer { admin_port: 4191 }),
            ..PodSpec::default()
        };
        spec.validate().unwrap();
        let pod = spec.to_pod("node-data-store");
        assert_eq!(pod["metadata"]["labels"], serde_json::json!({"app": "data-store", "tessera.dev/agent": "node-data-store"}));
        assert_eq!(pod["metadata"]["annotations"], serde_json::json!({"linkerd.io/inject": "enabled"}));
        assert_eq!(pod["spec"]["containers"][0]["ports"], serde_json::json!([{"containerPort": 8081, "protocol": "TCP"}]));
        assert_eq!(pod["spec"]["containers"][1]["name"], "linkerd-proxy");
        assert_eq!(pod["spec"]["containers"][1]["ports"][0]["containerPort"], 4191);
        // Both containers mount the one tokens volume: one file, at Linkerd's path.
        let files = crate::volumes::plan(&pod).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, std::path::Path::new("var/run/secrets/tokens/linkerd-identity-token"));
        assert_eq!(files[0].content, crate::volumes::Content::Token { audience: Some("identity.l5d.io".into()), expiration_seconds: 86400 });
        let _typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).expect("a valid Pod");
        // A user token at the identity token's path is refused.
        let mut clash = spec.clone();
        clash.tokens.push(ProjectedToken { audience: "x".into(), expiration_seconds: 600, path: "linkerd-identity-token".into() });
        assert!(clash.validate().unwrap_err().to_string().contains("conflicting duplicate paths"));
    }
}

#[cfg(test)]
mod manifest_tests {
    use super::*;

    const SEED_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: emojivoto
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
    volumeMounts:
    - name: tokens
      mountPath: /var/run/secrets/tokens
  volumes:
  - name: tokens
    projected:
      sources:
      - serviceAccountToken:
          audience: identity.l5d.io
          expirationSeconds: 86400
          path: linkerd-identity-token
status:
  phase: Running
";

    #[test]
    fn a_pod_manifest_is_registered_as_it_is_and_bound_to_the_node() {
        let spec = PodSpec::parse(SEED_POD).unwrap();
        assert_eq!((spec.namespace.as_str(), spec.name.as_str(), spec.service_account_name.as_str()), ("emojivoto", "web", "web"));
        spec.validate().unwrap();
        let pod = spec.to_pod("n1");
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(pod["metadata"]["labels"]["tessera.dev/agent"], "n1");
        assert!(pod.get("status").is_none());
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx");
        assert_eq!(pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "identity.l5d.io");
    }

    #[test]
    fn a_manifest_whose_volumes_escape_is_refused() {
        let bad = SEED_POD.replace("path: linkerd-identity-token", "path: ../../etc/cron.d/x");
        let err = PodSpec::parse(&bad).unwrap().validate().unwrap_err().to_string();
        assert_eq!(err, r#"spec.volumes[0].projected.sources[0].serviceAccountToken.path: Invalid value: "../../etc/cron.d/x": must not contain '..'"#);
        assert_eq!(PodSpec::parse("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: []}\n").unwrap_err(), "a Pod manifest needs metadata.name");
        // The small format still reads as before.
        assert_eq!(PodSpec::parse("namespace: a\nname: b\n").unwrap().manifest, None);
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
            manifest: None,
            ..PodSpec::default()
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
