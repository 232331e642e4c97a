//! NodeRestriction admission: what a node may write, checked against the
//! object itself after authorization, with kube-apiserver's messages
//! (`<resource> "<name>" is forbidden: <why>`, 403).
//!
//! - Pods: create, update and delete only pods whose `spec.nodeName` is the
//!   node's own (an update cannot move a pod, and a node cannot bind a pod
//!   that is not its own); status writes only to its own pods, without
//!   changing labels.
//! - Nodes: only its own Node object; no node-restriction or unknown
//!   `kubernetes.io` / `k8s.io` labels, no taint changes, no `configSource`.
//! - Leases: only its own, in `kube-node-lease`.
//! - TokenRequests: only bound to a pod (with its uid) that runs on the node.
//!
//! Unlike kube's kubelets, which may only create mirror pods that reference
//! no ServiceAccount, a tessera node creates the pods it runs; RBAC decides in
//! which namespaces (see [`super::authorizer::CREATE_POD_REASON`]).

use std::collections::BTreeSet;
use std::fmt::Display;

use serde_json::Value;
use tessera_api::registry::WriteScope;
use tessera_api::resource::{CORE_PODS, CORE_SERVICEACCOUNTS, ResourceInfo};
use tessera_api::{ApiError, Registry};

use super::NodeIdentity;
use super::authorizer::NODE_LEASE_NAMESPACE;

/// kube's `admission.NewForbidden`: the resource, the object's name when
/// known, and why.
fn forbidden(resource: &ResourceInfo, name: &str, why: impl Display) -> ApiError {
    let qualified = resource.qualified_plural();
    let message =
        if name.is_empty() { format!("{qualified} is forbidden: {why}") } else { format!("{qualified} \"{name}\" is forbidden: {why}") };
    ApiError::forbidden(resource.plural, resource.group, name, message)
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn name_of(obj: &Value) -> &str {
    str_at(obj, "/metadata/name")
}

/// The node a write comes from, or the refusal of a node user kube cannot name.
fn node_name<'a>(identity: &NodeIdentity<'a>, resource: &ResourceInfo, name: &str) -> Result<Option<&'a str>, ApiError> {
    match identity {
        NodeIdentity::NotANode => Ok(None),
        NodeIdentity::Unnamed(user) => Err(forbidden(resource, name, format!("could not determine node from user {user:?}"))),
        NodeIdentity::Named(node) => Ok(Some(node)),
    }
}

/// Checks a create (`old` None) or update of `new` by `identity`.
pub fn admit_write(identity: &NodeIdentity<'_>, resource: &ResourceInfo, scope: WriteScope, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let name = name_of(new);
    let Some(node) = node_name(identity, resource, name)? else { return Ok(()) };
    match (resource.group, resource.plural) {
        ("", "pods") => admit_pod_write(node, resource, scope, old, new),
        ("", "nodes") => admit_node_write(node, resource, old, new),
        ("coordination.k8s.io", "leases") => admit_lease(node, resource, str_at(new, "/metadata/namespace"), name),
        _ => Ok(()),
    }
}

/// Checks a delete of `current` by `identity`.
pub fn admit_delete(identity: &NodeIdentity<'_>, resource: &ResourceInfo, current: &Value) -> Result<(), ApiError> {
    let name = name_of(current);
    let Some(node) = node_name(identity, resource, name)? else { return Ok(()) };
    match (resource.group, resource.plural) {
        ("", "pods") if str_at(current, "/spec/nodeName") != node => {
            Err(forbidden(resource, name, format!("node {node:?} can only delete pods with spec.nodeName set to itself")))
        }
        ("", "nodes") if name != node => Err(forbidden(resource, name, format!("node {node:?} is not allowed to modify node {name:?}"))),
        ("coordination.k8s.io", "leases") => admit_lease(node, resource, str_at(current, "/metadata/namespace"), name),
        _ => Ok(()),
    }
}

fn admit_pod_write(node: &str, resource: &ResourceInfo, scope: WriteScope, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let name = name_of(new);
    let bound_here = |pod: &Value| str_at(pod, "/spec/nodeName") == node;
    match (scope, old) {
        (WriteScope::Status, Some(old)) => {
            if !bound_here(old) {
                return Err(forbidden(resource, name, format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself")));
            }
            if old.pointer("/metadata/labels") != new.pointer("/metadata/labels") {
                return Err(forbidden(resource, name, format!("node {node:?} cannot update labels through pod status")));
            }
            Ok(())
        }
        (_, None) if !bound_here(new) => {
            Err(forbidden(resource, name, format!("node {node:?} can only create pods with spec.nodeName set to itself")))
        }
        (_, Some(old)) if !bound_here(old) || !bound_here(new) => {
            Err(forbidden(resource, name, format!("node {node:?} can only update pods with spec.nodeName set to itself")))
        }
        _ => Ok(()),
    }
}

fn admit_node_write(node: &str, resource: &ResourceInfo, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let name = name_of(new);
    if name != node {
        return Err(forbidden(resource, name, format!("node {node:?} is not allowed to modify node {name:?}")));
    }
    let config_source = new.pointer("/spec/configSource").filter(|v| !v.is_null());
    let Some(old) = old else {
        // A node scoped by its spec must not widen what it may read at creation.
        if config_source.is_some() {
            return Err(forbidden(resource, name, format!("node {node:?} is not allowed to create pods with a non-nil configSource")));
        }
        let forbidden_labels = forbidden_labels(modified_labels(new, &Value::Null));
        if !forbidden_labels.is_empty() {
            return Err(forbidden(resource, name, format!("node {node:?} is not allowed to set the following labels: {forbidden_labels}")));
        }
        return Ok(());
    };
    if config_source.is_some() && config_source != old.pointer("/spec/configSource") {
        return Err(forbidden(resource, name, format!("node {node:?} is not allowed to update configSource to a new non-nil configSource")));
    }
    let taints = |n: &Value| n.pointer("/spec/taints").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())).cloned();
    if taints(new) != taints(old) {
        return Err(forbidden(resource, name, format!("node {node:?} is not allowed to modify taints")));
    }
    let forbidden_labels = forbidden_labels(modified_labels(new, old));
    if !forbidden_labels.is_empty() {
        return Err(forbidden(resource, name, format!("is not allowed to modify labels: {forbidden_labels}")));
    }
    Ok(())
}

fn admit_lease(node: &str, resource: &ResourceInfo, namespace: &str, name: &str) -> Result<(), ApiError> {
    if namespace != NODE_LEASE_NAMESPACE {
        return Err(forbidden(resource, name, format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace")));
    }
    if name != node {
        return Err(forbidden(resource, name, "can only access node lease with the same name as the requesting node"));
    }
    Ok(())
}

/// Label keys added, removed or changed between two objects.
fn modified_labels(a: &Value, b: &Value) -> BTreeSet<String> {
    let labels = |o: &Value| o.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    let (a, b) = (labels(a), labels(b));
    a.iter().filter(|(k, v)| b.get(*k) != Some(v)).chain(b.iter().filter(|(k, v)| a.get(*k) != Some(v))).map(|(k, _)| k.clone()).collect()
}

/// Labels a node may not set: node-restriction ones, and `kubernetes.io` /
/// `k8s.io` ones that are not kubelet labels (kube's `IsKubeletLabel`).
/// Joined with ", " in sorted order, empty when none.
fn forbidden_labels(modified: BTreeSet<String>) -> String {
    const KUBELET_LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let in_namespace = |ns: &str, domain: &str| ns == domain || ns.ends_with(&format!(".{domain}"));
    let is_kubelet_label = |key: &str, ns: &str| {
        KUBELET_LABELS.contains(&key) || in_namespace(ns, "kubelet.kubernetes.io") || in_namespace(ns, "node.kubernetes.io")
    };
    let refused: Vec<String> = modified
        .into_iter()
        .filter(|key| {
            let ns = key.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
            let kubernetes = in_namespace(ns, "kubernetes.io") || in_namespace(ns, "k8s.io");
            in_namespace(ns, "node-restriction.kubernetes.io") || (kubernetes && !is_kubelet_label(key, ns))
        })
        .collect();
    refused.join(", ")
}

/// A TokenRequest's binding, checked before the pod is looked up.
fn token_binding<'a>(service_account: &str, spec: &'a Value) -> Result<(&'a str, &'a str), ApiError> {
    let reference = spec.get("boundObjectRef").filter(|r| !r.is_null());
    let field = |f: &str| reference.and_then(|r| r.get(f)).and_then(Value::as_str).unwrap_or_default();
    if reference.is_none() || field("apiVersion") != "v1" || field("kind") != "Pod" || field("name").is_empty() {
        return Err(forbidden(&CORE_SERVICEACCOUNTS, service_account, "node requested token not bound to a pod"));
    }
    if field("uid").is_empty() {
        return Err(forbidden(&CORE_SERVICEACCOUNTS, service_account, "node requested token with a pod binding without a uid"));
    }
    Ok((field("name"), field("uid")))
}

/// Checks a TokenRequest for `namespace/service_account` with `spec` made by
/// `identity`: a node's token must be bound to a pod, by uid, that runs on it.
pub async fn admit_token_request(
    registry: &Registry,
    identity: &NodeIdentity<'_>,
    namespace: &str,
    service_account: &str,
    spec: &Value,
) -> Result<(), ApiError> {
    let Some(node) = node_name(identity, &CORE_SERVICEACCOUNTS, service_account)? else { return Ok(()) };
    let (pod_name, uid) = token_binding(service_account, spec)?;
    let pod = registry.get(&CORE_PODS, Some(namespace), pod_name).await?;
    if str_at(&pod, "/metadata/uid") != uid {
        return Err(forbidden(
            &CORE_SERVICEACCOUNTS,
            service_account,
            format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"),
        ));
    }
    if str_at(&pod, "/spec/nodeName") != node {
        return Err(forbidden(&CORE_SERVICEACCOUNTS, service_account, "node requested token bound to a pod scheduled on a different node"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tessera_api::resource::{COORDINATION_LEASES, CORE_CONFIGMAPS, CORE_NODES};

    use super::*;

    const N1: NodeIdentity<'static> = NodeIdentity::Named("n1");

    fn pod(name: &str, node: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}}, "spec": {"nodeName": node}})
    }

    fn message(r: Result<(), ApiError>) -> String {
        let err = r.expect_err("refused");
        assert_eq!(err.code, 403);
        err.message
    }

    #[test]
    fn pods_only_on_the_node_itself() {
        let object = WriteScope::Object;
        assert!(admit_write(&N1, &CORE_PODS, object, None, &pod("web", "n1")).is_ok());
        assert_eq!(
            message(admit_write(&N1, &CORE_PODS, object, None, &pod("web", "n2"))),
            "pods \"web\" is forbidden: node \"n1\" can only create pods with spec.nodeName set to itself"
        );
        assert_eq!(
            message(admit_write(&N1, &CORE_PODS, object, Some(&pod("web", "n2")), &pod("web", "n2"))),
            "pods \"web\" is forbidden: node \"n1\" can only update pods with spec.nodeName set to itself"
        );
        assert!(admit_write(&N1, &CORE_PODS, object, Some(&pod("web", "n1")), &pod("web", "n1")).is_ok());
        assert_eq!(
            message(admit_delete(&N1, &CORE_PODS, &pod("web", "n2"))),
            "pods \"web\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
        );
        assert!(admit_delete(&N1, &CORE_PODS, &pod("web", "n1")).is_ok());
        // An unbound pod is nobody's: a node cannot take it.
        assert!(admit_delete(&N1, &CORE_PODS, &pod("web", "")).is_err());
    }

    #[test]
    fn pod_status_only_for_its_own_pods_and_never_labels() {
        let status = WriteScope::Status;
        assert!(admit_write(&N1, &CORE_PODS, status, Some(&pod("web", "n1")), &pod("web", "n1")).is_ok());
        assert_eq!(
            message(admit_write(&N1, &CORE_PODS, status, Some(&pod("web", "n2")), &pod("web", "n2"))),
            "pods \"web\" is forbidden: node \"n1\" can only update pod status for pods with spec.nodeName set to itself"
        );
        let mut relabelled = pod("web", "n1");
        relabelled["metadata"]["labels"] = json!({"app": "admin"});
        assert_eq!(
            message(admit_write(&N1, &CORE_PODS, status, Some(&pod("web", "n1")), &relabelled)),
            "pods \"web\" is forbidden: node \"n1\" cannot update labels through pod status"
        );
    }

    #[test]
    fn only_its_own_node_object() {
        let node = |name: &str, labels: Value| json!({"metadata": {"name": name, "labels": labels}});
        let allowed = node("n1", json!({"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "x", "team": "a"}));
        assert!(admit_write(&N1, &CORE_NODES, WriteScope::Object, None, &allowed).is_ok());
        assert_eq!(
            message(admit_write(&N1, &CORE_NODES, WriteScope::Object, None, &node("n2", json!({})))),
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        assert_eq!(
            message(admit_write(&N1, &CORE_NODES, WriteScope::Status, Some(&node("n2", json!({}))), &node("n2", json!({})))),
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let steering = node("n1", json!({"node-restriction.kubernetes.io/pci": "yes", "node-role.kubernetes.io/control-plane": ""}));
        assert_eq!(
            message(admit_write(&N1, &CORE_NODES, WriteScope::Object, None, &steering)),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-restriction.kubernetes.io/pci, node-role.kubernetes.io/control-plane"
        );
        assert_eq!(
            message(admit_write(&N1, &CORE_NODES, WriteScope::Object, Some(&allowed), &steering)),
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/pci, node-role.kubernetes.io/control-plane"
        );
        let mut untainted = allowed.clone();
        let mut tainted = allowed.clone();
        tainted["spec"] = json!({"taints": [{"key": "dedicated", "effect": "NoSchedule"}]});
        untainted["spec"] = json!({"taints": []});
        assert_eq!(
            message(admit_write(&N1, &CORE_NODES, WriteScope::Object, Some(&tainted), &untainted)),
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
        );
        assert!(admit_write(&N1, &CORE_NODES, WriteScope::Object, Some(&allowed), &untainted).is_ok(), "no taints either way");
        assert_eq!(
            message(admit_delete(&N1, &CORE_NODES, &node("n2", json!({})))),
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
    }

    #[test]
    fn only_its_own_lease() {
        let lease = |ns: &str, name: &str| json!({"metadata": {"name": name, "namespace": ns}});
        assert!(admit_write(&N1, &COORDINATION_LEASES, WriteScope::Object, None, &lease("kube-node-lease", "n1")).is_ok());
        assert_eq!(
            message(admit_write(&N1, &COORDINATION_LEASES, WriteScope::Object, None, &lease("kube-node-lease", "n2"))),
            "leases.coordination.k8s.io \"n2\" is forbidden: can only access node lease with the same name as the requesting node"
        );
        assert_eq!(
            message(admit_write(&N1, &COORDINATION_LEASES, WriteScope::Object, None, &lease("default", "n1"))),
            "leases.coordination.k8s.io \"n1\" is forbidden: can only access leases in the \"kube-node-lease\" system namespace"
        );
        assert!(admit_delete(&N1, &COORDINATION_LEASES, &lease("kube-node-lease", "n2")).is_err());
    }

    #[test]
    fn other_users_and_kinds_pass_and_unnamed_nodes_do_not() {
        let anyone = NodeIdentity::NotANode;
        assert!(admit_write(&anyone, &CORE_PODS, WriteScope::Object, None, &pod("web", "n2")).is_ok());
        assert!(admit_write(&N1, &CORE_CONFIGMAPS, WriteScope::Object, None, &json!({"metadata": {"name": "c"}})).is_ok());
        let unnamed = NodeIdentity::Unnamed("system:node:");
        assert_eq!(
            message(admit_write(&unnamed, &CORE_CONFIGMAPS, WriteScope::Object, None, &json!({"metadata": {"name": "c"}}))),
            "configmaps \"c\" is forbidden: could not determine node from user \"system:node:\""
        );
    }

    #[test]
    fn token_requests_must_name_a_pod_by_uid() {
        let spec = |r: Value| json!({"boundObjectRef": r});
        let refused = |s: Value| token_binding("web", &s).expect_err("refused").message;
        assert_eq!(refused(json!({})), "serviceaccounts \"web\" is forbidden: node requested token not bound to a pod");
        assert_eq!(refused(spec(json!({"apiVersion": "v1", "kind": "Secret", "name": "s", "uid": "u"}))), "serviceaccounts \"web\" is forbidden: node requested token not bound to a pod");
        assert_eq!(refused(spec(json!({"kind": "Pod", "name": "p", "uid": "u"}))), "serviceaccounts \"web\" is forbidden: node requested token not bound to a pod");
        assert_eq!(refused(spec(json!({"apiVersion": "v1", "kind": "Pod", "name": "p"}))), "serviceaccounts \"web\" is forbidden: node requested token with a pod binding without a uid");
        assert_eq!(token_binding("web", &spec(json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}))).unwrap(), ("p", "u"));
    }
}
