//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and the
//! strategic merge patch that `kubectl apply` (client-side) and `kubectl edit` send.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// A decoded PATCH request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// `application/json-patch+json`.
    Json(json_patch::Patch),
    /// `application/merge-patch+json`.
    Merge(Value),
    /// `application/strategic-merge-patch+json`.
    Strategic(Value),
    /// `application/apply-patch+yaml` (YAML, or JSON): server-side apply of this configuration.
    Apply(Value),
}

/// How a list field merges in a strategic merge patch.
enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeByKey(&'static str),
    /// A set of scalars: union.
    MergePrimitives,
    /// The patch's list replaces the original.
    Replace,
}

/// kube's `patchStrategy`/`patchMergeKey` struct tags on the list fields of
/// the kinds tessera serves: `(definition, field, merge key, strategy)`. The
/// strategic merge below and the OpenAPI documents'
/// `x-kubernetes-patch-strategy`/`-merge-key` both come from this table.
pub static PATCH_STRATEGIES: &[(&str, &str, Option<&str>, &str)] = &[
    ("io.k8s.api.core.v1.Container", "env", Some("name"), "merge"),
    ("io.k8s.api.core.v1.Container", "ports", Some("containerPort"), "merge"),
    ("io.k8s.api.core.v1.Container", "volumeDevices", Some("devicePath"), "merge"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", Some("mountPath"), "merge"),
    ("io.k8s.api.core.v1.ContainerStatus", "allocatedResourcesStatus", Some("name"), "merge"),
    ("io.k8s.api.core.v1.ContainerStatus", "volumeMounts", Some("mountPath"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", Some("name"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", Some("containerPort"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", Some("devicePath"), "merge"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", Some("mountPath"), "merge"),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", None, "merge"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", Some("type"), "merge"),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "containers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", Some("name"), "merge,retainKeys"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", Some("name"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", Some("topologyKey"), "merge"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", Some("name"), "merge,retainKeys"),
    ("io.k8s.api.core.v1.PodStatus", "conditions", Some("type"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", Some("ip"), "merge"),
    ("io.k8s.api.core.v1.PodStatus", "resourceClaimStatuses", Some("name"), "merge,retainKeys"),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", Some("name"), "merge"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", None, "merge"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", Some("uid"), "merge"),
];

/// The merge strategy of a list field. The patch is untyped here, so fields
/// are looked up by name; within the served kinds a field name has one
/// strategy wherever it appears.
fn list_strategy(field: &str) -> ListStrategy {
    match PATCH_STRATEGIES.iter().find(|(_, f, _, _)| *f == field) {
        Some((_, _, Some(key), _)) => ListStrategy::MergeByKey(key),
        Some((_, _, None, _)) => ListStrategy::MergePrimitives,
        None => ListStrategy::Replace,
    }
}

// === impl Patch ===

impl Patch {
    /// Decodes a body for the given `Content-Type` (parameters ignored).
    pub fn decode(content_type: &str, body: &[u8]) -> Result<Self, ApiError> {
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        let parse = || -> Result<Value, ApiError> {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        match mime {
            "application/json-patch+json" => serde_json::from_slice(body)
                .map(Patch::Json)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
            "application/merge-patch+json" => Ok(Patch::Merge(parse()?)),
            "application/strategic-merge-patch+json" => Ok(Patch::Strategic(parse()?)),
            "application/apply-patch+yaml" => serde_yaml::from_slice::<Value>(body)
                .map(Patch::Apply)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// Whether this is a server-side apply.
    pub fn is_apply(&self) -> bool {
        matches!(self, Patch::Apply(_))
    }

    /// Applies the patch to `original` and returns the patched object
    /// (server-side apply goes through [`crate::apply`] instead).
    pub fn apply(&self, original: &Value) -> Result<Value, ApiError> {
        let mut doc = original.clone();
        match self {
            Patch::Apply(_) => return Err(ApiError::internal("server-side apply is not a plain patch")),
            Patch::Json(p) => {
                apply_json_patch(&mut doc, p)?;
            }
            Patch::Merge(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                json_patch::merge(&mut doc, p);
            }
            Patch::Strategic(p) => {
                let patch = p.as_object().ok_or_else(|| ApiError::bad_request("strategic merge patch must be a JSON object"))?;
                let orig = doc.as_object_mut().ok_or_else(|| ApiError::internal("stored object is not a JSON object"))?;
                merge_map(orig, patch)?;
            }
        }
        Ok(doc)
    }
}

/// Most operations one JSON patch may hold (kube-apiserver's limit).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// Most bytes `copy` operations may duplicate in one JSON patch (kube-apiserver's limit).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Applies a JSON patch one operation at a time, bounding what `copy` can
/// duplicate: forty copies of a document into itself would otherwise need 2⁴⁰ nodes.
fn apply_json_patch(doc: &mut Value, patch: &json_patch::Patch) -> Result<(), ApiError> {
    if patch.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::unprocessable(format!(
            "the server rejected our request due to an error in our request: the patch has {} operations, exceeding the maximum of {MAX_JSON_PATCH_OPERATIONS}",
            patch.0.len()
        )));
    }
    let mut copied = 0usize;
    for op in &patch.0 {
        if let json_patch::PatchOperation::Copy(copy) = op {
            let size = doc.pointer(copy.from.as_str()).map_or(0, |v| serde_json::to_vec(v).map_or(0, |b| b.len()));
            copied = copied.saturating_add(size);
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(ApiError::unprocessable(format!(
                    "the server rejected our request due to an error in our request: copy operations would duplicate more than {MAX_JSON_PATCH_COPY_BYTES} bytes"
                )));
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op))
            .map_err(|e| ApiError::unprocessable(format!("the server rejected our request due to an error in our request: {e}")))?;
    }
    Ok(())
}

/// A hashable identity of a JSON value (its canonical text), for indexing lists.
fn identity(v: &Value) -> String {
    v.to_string()
}

fn directive(v: &Value) -> Option<&str> {
    v.as_object().and_then(|m| m.get("$patch")).and_then(Value::as_str)
}

/// Strategic merge of `patch` into `orig`.
fn merge_map(orig: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(d) = patch.get("$patch").and_then(Value::as_str) {
        match d {
            "replace" => {
                *orig = strip_directives(patch);
                return Ok(());
            }
            "merge" => {}
            // `delete` of a map is handled by the parent (the field is removed).
            "delete" => {}
            other => return Err(ApiError::bad_request(format!("unknown patch type: {other}"))),
        }
    }
    for (key, pv) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (orig.get_mut(field), pv.as_array()) {
                let remove: std::collections::HashSet<String> = remove.iter().map(identity).collect();
                list.retain(|v| !remove.contains(&identity(v)));
            }
            continue;
        }
        match pv {
            Value::Null => {
                orig.remove(key);
            }
            Value::Object(pm) if directive(pv) == Some("delete") => {
                let _ = pm;
                orig.remove(key);
            }
            Value::Object(pm) => match orig.get_mut(key) {
                Some(Value::Object(om)) => merge_map(om, pm)?,
                _ => {
                    orig.insert(key.clone(), Value::Object(strip_directives(pm)));
                }
            },
            Value::Array(pl) => {
                let merged = match orig.remove(key) {
                    Some(Value::Array(ol)) => merge_list(key, ol, pl)?,
                    _ => merge_list(key, Vec::new(), pl)?,
                };
                orig.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                orig.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        orig.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list(field: &str, mut orig: Vec<Value>, patch: &[Value]) -> Result<Vec<Value>, ApiError> {
    if patch.iter().any(|v| directive(v) == Some("replace")) {
        return Ok(patch.iter().filter(|v| directive(v).is_none()).map(strip_value).collect());
    }
    match list_strategy(field) {
        ListStrategy::Replace => Ok(patch.iter().map(strip_value).collect()),
        ListStrategy::MergePrimitives => {
            let mut present: std::collections::HashSet<String> = orig.iter().map(identity).collect();
            for v in patch {
                if present.insert(identity(v)) {
                    orig.push(v.clone());
                }
            }
            Ok(orig)
        }
        ListStrategy::MergeByKey(merge_key) => {
            // Index the original by merge key: a 3 MiB list must not cost n² comparisons.
            let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            for (i, o) in orig.iter().enumerate() {
                if let Some(id) = o.get(merge_key) {
                    index.entry(identity(id)).or_insert(i);
                }
            }
            let mut deleted = vec![false; orig.len()];
            for pv in patch {
                let Some(pm) = pv.as_object() else {
                    return Err(ApiError::bad_request(format!("strategic merge patch: {field} elements must be objects")));
                };
                let Some(id) = pm.get(merge_key) else {
                    return Err(ApiError::bad_request(format!("map: {pv} does not contain declared merge key: {merge_key}")));
                };
                let key = identity(id);
                let pos = index.get(&key).copied().filter(|&i| !deleted.get(i).copied().unwrap_or(true));
                match (directive(pv), pos) {
                    (Some("delete"), Some(i)) => deleted[i] = true,
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Some(om) = orig[i].as_object_mut() {
                            merge_map(om, pm)?;
                        }
                    }
                    (_, None) => {
                        index.insert(key, orig.len());
                        deleted.push(false);
                        orig.push(Value::Object(strip_directives(pm)));
                    }
                }
            }
            Ok(orig.into_iter().zip(deleted).filter(|(_, d)| !d).map(|(v, _)| v).collect())
        }
    }
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        other => other.clone(),
    }
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(orig: Value, patch: Value) -> Value {
        Patch::Strategic(patch).apply(&orig).expect("patch applies")
    }

    #[test]
    fn strategic_merges_lists_by_key() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let out = smp(orig, json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}}));
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn strategic_delete_and_replace_directives() {
        let orig = json!({"secrets": [{"name": "a"}, {"name": "b"}], "metadata": {"labels": {"x": "1", "y": "2"}}});
        let out = smp(
            orig.clone(),
            json!({"secrets": [{"name": "a", "$patch": "delete"}], "metadata": {"labels": {"x": null}}}),
        );
        assert_eq!(out, json!({"secrets": [{"name": "b"}], "metadata": {"labels": {"y": "2"}}}));
        let out = smp(orig, json!({"metadata": {"labels": {"$patch": "replace", "z": "3"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
    }

    #[test]
    fn strategic_replaces_unkeyed_lists_and_unions_finalizers() {
        let orig = json!({"rules": [1, 2], "metadata": {"finalizers": ["a"]}});
        let out = smp(orig, json!({"rules": [3], "metadata": {"finalizers": ["b"]}}));
        assert_eq!(out, json!({"rules": [3], "metadata": {"finalizers": ["a", "b"]}}));
    }

    #[test]
    fn merge_and_json_patch() {
        let orig = json!({"data": {"a": "1", "b": "2"}});
        let out = Patch::decode("application/merge-patch+json", br#"{"data":{"a":null,"c":"3"}}"#)
            .expect("decodes")
            .apply(&orig)
            .expect("applies");
        assert_eq!(out, json!({"data": {"b": "2", "c": "3"}}));
        let out = Patch::decode("application/json-patch+json", br#"[{"op":"replace","path":"/data/a","value":"9"}]"#)
            .expect("decodes")
            .apply(&orig)
            .expect("applies");
        assert_eq!(out["data"]["a"], "9");
        let err = Patch::decode("application/json-patch+json", br#"[{"op":"test","path":"/data/a","value":"x"}]"#)
            .expect("decodes")
            .apply(&orig)
            .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn bad_patch_bodies_are_400() {
        assert_eq!(Patch::decode("application/merge-patch+json", b"{").unwrap_err().code, 400);
        assert_eq!(Patch::decode("text/plain", b"{}").unwrap_err().code, 415);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn hostile_patches_never_panic() {
        let original = serde_json::json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "secrets": [{"name": "s"}]});
        let bodies: &[(&str, &str)] = &[
            ("application/strategic-merge-patch+json", r#"{"spec":{"containers":[{"$patch":"delete"}]}}"#),
            ("application/strategic-merge-patch+json", r#"{"spec":{"containers":[1,2,3]}}"#),
            ("application/strategic-merge-patch+json", r#"{"secrets":[{"name":"s","$patch":"replace"}],"$retainKeys":"x"}"#),
            ("application/strategic-merge-patch+json", r#"{"$patch":"delete"}"#),
            ("application/strategic-merge-patch+json", r#"{"$deleteFromPrimitiveList/secrets":[{"name":"s"}]}"#),
            ("application/strategic-merge-patch+json", r#"[]"#),
            ("application/strategic-merge-patch+json", r#"{"metadata":{"labels":{"$patch":"bogus"}}}"#),
            ("application/merge-patch+json", r#"null"#),
            ("application/json-patch+json", r#"[{"op":"remove","path":"/spec/containers/99"}]"#),
            ("application/json-patch+json", r#"[{"op":"move","from":"/metadata","path":"/metadata/labels"}]"#),
            ("application/json-patch+json", r#"[{"op":"copy","from":"/nope","path":"/x"}]"#),
            ("application/json-patch+json", r#"{"op":"add"}"#),
        ];
        for (content_type, body) in bodies {
            if let Ok(patch) = Patch::decode(content_type, body.as_bytes()) {
                let _ = patch.apply(&original);
            }
        }
        // Copy bombs are refused before they grow.
        let bomb: Vec<Value> = (0..40).map(|_| serde_json::json!({"op": "copy", "from": "/spec", "path": "/spec/again"})).collect();
        let patch = Patch::decode("application/json-patch+json", serde_json::to_vec(&bomb).unwrap().as_slice()).expect("decodes");
        let big = serde_json::json!({"spec": {"data": "x".repeat(200_000)}});
        assert_eq!(patch.apply(&big).unwrap_err().code, 422);
        // Long lists merge in linear time (this would take minutes if quadratic).
        let many: Vec<Value> = (0..50_000).map(|i| serde_json::json!({"name": format!("s{i}")})).collect();
        let original = serde_json::json!({"secrets": many.clone(), "metadata": {"finalizers": (0..50_000).map(|i| format!("f{i}")).collect::<Vec<_>>()}});
        let patch = Patch::Strategic(serde_json::json!({"secrets": many, "metadata": {"finalizers": (0..50_000).map(|i| format!("g{i}")).collect::<Vec<_>>()}}));
        let merged = patch.apply(&original).expect("merges");
        assert_eq!(merged["secrets"].as_array().map(Vec::len), Some(50_000));
        assert_eq!(merged["metadata"]["finalizers"].as_array().map(Vec::len), Some(100_000));
        // Deep nesting does not overflow the stack of the merge.
        let mut deep = String::new();
        for _ in 0..100 {
            deep.push_str(r#"{"a":"#);
        }
        deep.push('1');
        for _ in 0..100 {
            deep.push('}');
        }
        let patch = Patch::decode("application/strategic-merge-patch+json", deep.as_bytes()).expect("decodes");
        assert!(patch.apply(&original).is_ok());
    }
}
