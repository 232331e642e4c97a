//! Which objects each node may touch: a watch-fed view of the pods bound to
//! nodes and what they reference, after kube-apiserver's node authorizer
//! graph. An edge runs from a ServiceAccount, Secret or ConfigMap to a node
//! when a pod bound to that node (`spec.nodeName`) references it; a pod is
//! related to the node it is bound to. Nothing else relates an object to a node.
//!
//! Reads may be one watch event stale; the server waits for its own pod writes
//! to be applied ([`crate::reflector::Reflector::caught_up`]) before answering them.

use std::collections::HashMap;

use serde_json::Value;
use tessera_api::resource::CORE_PODS;

use crate::reflector::Reflector;

/// The kinds of object a pod can relate to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vertex {
    /// The pod itself.
    Pod,
    /// `spec.serviceAccountName`.
    ServiceAccount,
    /// Volumes, projected sources, env and envFrom, imagePullSecrets.
    Secret,
    /// Volumes, projected sources, env and envFrom.
    ConfigMap,
}

/// `(namespace, name)`.
type Key = (String, String);

/// What one bound pod contributes to the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRefs {
    node: String,
    service_account: String,
    secrets: Vec<String>,
    config_maps: Vec<String>,
}

/// The graph: bound pods and, per referenced object, how many pods of each
/// node reference it (reference counts, so one pod going away removes only
/// its own edges).
#[derive(Debug, Default)]
pub struct State {
    pods: HashMap<Key, PodRefs>,
    edges: HashMap<(Vertex, String, String), HashMap<String, usize>>,
}

/// The graph, fed by a watch of every pod.
pub type NodeGraph = Reflector<State>;

/// A graph following all pods.
pub fn node_graph() -> NodeGraph {
    Reflector::new(vec![CORE_PODS.key_prefix(None)], State::apply)
}

/// The questions the node authorizer asks.
pub trait Relations {
    /// Whether `kind` `namespace/name` is related to `node`.
    fn related(&self, node: &str, kind: Vertex, namespace: &str, name: &str) -> bool;
}

impl Relations for State {
    fn related(&self, node: &str, kind: Vertex, namespace: &str, name: &str) -> bool {
        match kind {
            Vertex::Pod => self.pods.get(&(namespace.to_owned(), name.to_owned())).is_some_and(|p| p.node == node),
            _ => self
                .edges
                .get(&(kind, namespace.to_owned(), name.to_owned()))
                .is_some_and(|nodes| nodes.get(node).is_some_and(|n| *n > 0)),
        }
    }
}

impl Relations for NodeGraph {
    fn related(&self, node: &str, kind: Vertex, namespace: &str, name: &str) -> bool {
        self.read(|s| s.related(node, kind, namespace, name))
    }
}

// === impl State ===

impl State {
    /// Applies one stored pod (None: deleted).
    pub(crate) fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix("/registry/pods/") else { return };
        let Some((ns, name)) = rest.split_once('/') else { return };
        let key = (ns.to_owned(), name.to_owned());
        let refs = value.and_then(|v| serde_json::from_slice::<Value>(v).ok()).and_then(|pod| pod_refs(&pod));
        if let Some(old) = self.pods.remove(&key) {
            self.count(&key.0, &old, false);
        }
        if let Some(refs) = refs {
            self.count(&key.0, &refs, true);
            self.pods.insert(key, refs);
        }
    }

    fn count(&mut self, namespace: &str, refs: &PodRefs, add: bool) {
        let vertices = std::iter::once((Vertex::ServiceAccount, &refs.service_account))
            .chain(refs.secrets.iter().map(|s| (Vertex::Secret, s)))
            .chain(refs.config_maps.iter().map(|c| (Vertex::ConfigMap, c)));
        for (kind, name) in vertices {
            let slot = (kind, namespace.to_owned(), name.clone());
            let nodes = self.edges.entry(slot.clone()).or_default();
            let count = nodes.entry(refs.node.clone()).or_default();
            if add {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    nodes.remove(&refs.node);
                }
                if nodes.is_empty() {
                    self.edges.remove(&slot);
                }
            }
        }
    }
}

/// A bound pod's references; None for a pod bound to no node.
fn pod_refs(pod: &Value) -> Option<PodRefs> {
    let spec = pod.get("spec")?;
    let node = spec.get("nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())?.to_owned();
    let service_account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_owned();
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    let name_at = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned);
    let items = |v: &Value, field: &str| v.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    for s in items(spec, "imagePullSecrets") {
        secrets.extend(name_at(&s, "/name"));
    }
    for group in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(spec, group) {
            for from in items(&c, "envFrom") {
                secrets.extend(name_at(&from, "/secretRef/name"));
                config_maps.extend(name_at(&from, "/configMapRef/name"));
            }
            for env in items(&c, "env") {
                secrets.extend(name_at(&env, "/valueFrom/secretKeyRef/name"));
                config_maps.extend(name_at(&env, "/valueFrom/configMapKeyRef/name"));
            }
        }
    }
    for volume in items(spec, "volumes") {
        secrets.extend(name_at(&volume, "/secret/secretName"));
        secrets.extend(name_at(&volume, "/csi/nodePublishSecretRef/name"));
        config_maps.extend(name_at(&volume, "/configMap/name"));
        for source in volume.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            secrets.extend(name_at(source, "/secret/name"));
            config_maps.extend(name_at(source, "/configMap/name"));
        }
    }
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    Some(PodRefs { node, service_account, secrets, config_maps })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(node: &str, sa: &str, extra: Value) -> Vec<u8> {
        let mut spec = json!({"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::to_vec(&json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_bound_pod_relates_what_it_references_to_its_node_only() {
        let mut g = State::default();
        let extra = json!({
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c", "image": "i", "envFrom": [{"configMapRef": {"name": "env-cm"}}],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}]}],
            "volumes": [
                {"name": "v1", "secret": {"secretName": "vol-secret"}},
                {"name": "v2", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}, {"serviceAccountToken": {"path": "token"}}]}},
            ],
        });
        g.apply("/registry/pods/ns/p", Some(&pod("n1", "api", extra)));
        assert!(g.related("n1", Vertex::Pod, "ns", "p"));
        assert!(!g.related("n2", Vertex::Pod, "ns", "p"));
        assert!(g.related("n1", Vertex::ServiceAccount, "ns", "api"));
        assert!(!g.related("n1", Vertex::ServiceAccount, "other", "api"), "the edge is namespaced");
        for secret in ["pull", "env-secret", "vol-secret"] {
            assert!(g.related("n1", Vertex::Secret, "ns", secret), "{secret}");
            assert!(!g.related("n2", Vertex::Secret, "ns", secret), "{secret}");
        }
        for cm in ["env-cm", "kube-root-ca.crt"] {
            assert!(g.related("n1", Vertex::ConfigMap, "ns", cm), "{cm}");
        }
        assert!(!g.related("n1", Vertex::Secret, "ns", "unreferenced"));
        // Deleting the pod removes every edge it made.
        g.apply("/registry/pods/ns/p", None);
        assert!(!g.related("n1", Vertex::Pod, "ns", "p"));
        assert!(!g.related("n1", Vertex::ServiceAccount, "ns", "api"));
        assert!(g.edges.is_empty() && g.pods.is_empty());
    }

    #[test]
    fn edges_are_counted_per_pod() {
        let mut g = State::default();
        g.apply("/registry/pods/ns/a", Some(&pod("n1", "api", json!({}))));
        g.apply("/registry/pods/ns/b", Some(&pod("n1", "api", json!({}))));
        g.apply("/registry/pods/ns/a", None);
        assert!(g.related("n1", Vertex::ServiceAccount, "ns", "api"), "pod b still uses it");
        // A pod's update replaces its edges.
        g.apply("/registry/pods/ns/b", Some(&pod("n1", "web", json!({}))));
        assert!(!g.related("n1", Vertex::ServiceAccount, "ns", "api"));
        assert!(g.related("n1", Vertex::ServiceAccount, "ns", "web"));
    }

    #[test]
    fn unbound_and_malformed_pods_relate_nothing() {
        let mut g = State::default();
        g.apply("/registry/pods/ns/p", Some(br#"{"metadata":{"name":"p"},"spec":{"serviceAccountName":"api"}}"#));
        g.apply("/registry/pods/ns/q", Some(b"not json"));
        g.apply("/registry/pods/ns/r", Some(&pod("", "api", json!({}))));
        assert!(g.pods.is_empty() && g.edges.is_empty());
        assert!(!g.related("", Vertex::ServiceAccount, "ns", "api"));
    }
}
