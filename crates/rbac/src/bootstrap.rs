//! The bootstrap policy kube-apiserver creates (see `bootstrap/README.md`).

use serde_json::Value;

/// Annotation that lets the server keep a bootstrap object up to date.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

const POLICY: &str = include_str!("../bootstrap/policy.json");

fn section(name: &str) -> Vec<Value> {
    // The file is part of the binary and checked by a test; a broken one is a build defect.
    serde_json::from_str::<Value>(POLICY)
        .ok()
        .and_then(|v| v.get(name).and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    section("clusterRoles")
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    section("clusterRoleBindings")
}

/// Whether the server may overwrite an existing object with its bootstrap
/// version: only when the object still carries `autoupdate: "true"`.
pub fn may_update(existing: &Value) -> bool {
    existing.pointer("/metadata/annotations").and_then(|a| a.get(AUTOUPDATE_ANNOTATION)).and_then(Value::as_str) != Some("false")
}
