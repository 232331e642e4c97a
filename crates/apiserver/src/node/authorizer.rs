//! The node authorizer: what a node (`system:node:NAME` in `system:nodes`)
//! may do, decided before RBAC, as kube-apiserver's `Node` authorizer does
//! (1.32, with `AuthorizeNodeWithSelectors`).
//!
//! - Secrets and ConfigMaps: get, list and watch of one named object that a
//!   pod bound to the node references.
//! - Pods: get of a pod bound to the node; list and watch only with the field
//!   selector `spec.nodeName=NAME` (or of one named pod bound to it); delete
//!   and status writes (NodeRestriction admission then checks the pod is the
//!   node's). Creating a pod is left to RBAC: a node runs pods only in
//!   namespaces where it was granted `create pods` (see [`CREATE_POD_REASON`]),
//!   since a pod may name any ServiceAccount of its namespace.
//! - ServiceAccounts: `serviceaccounts/token` of a ServiceAccount a pod bound
//!   to the node runs as (admission then requires the token to be bound to
//!   such a pod), and get of that ServiceAccount.
//! - Leases: its own, in `kube-node-lease`. Nodes: read its own; create and
//!   update are left to admission, which limits them to its own.
//! - TokenReviews, SubjectAccessReviews, Events and renewing its own client
//!   certificate, as kube's static node rules.
//!
//! Everything else gets no opinion, with kube-apiserver's reason when it has
//! one, and RBAC decides.

use tessera_rbac::Request;

use super::graph::{Relations, Vertex};

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The reason a node's pod creation falls through to RBAC (kube has none:
/// its kubelets create only mirror pods, which may reference no ServiceAccount).
pub const CREATE_POD_REASON: &str =
    "a node may create pods only in a namespace where RBAC allows it to (ClusterRole tessera:node-pod-runner)";

/// The node authorizer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDecision {
    /// The node may make the request.
    Allow,
    /// The node authorizer does not allow it; RBAC decides. The reason (which
    /// may be empty) is appended to the 403 if RBAC denies too.
    NoOpinion(String),
}

fn no_opinion(reason: impl Into<String>) -> NodeDecision {
    NodeDecision::NoOpinion(reason.into())
}

/// Decides a request of node `node`. `node_selector` is the value the
/// request's field selector pins `spec.nodeName` to, if any.
pub fn authorize(graph: &impl Relations, node: &str, req: &Request, node_selector: Option<&str>) -> NodeDecision {
    if !req.resource_request {
        let renewal = req.verb == "post" && req.path == super::certificates::CLIENT_CERTIFICATE_PATH;
        return if renewal { NodeDecision::Allow } else { no_opinion("") };
    }
    match (req.api_group.as_str(), req.resource.as_str()) {
        ("", "secrets") => read_namespaced(graph, node, Vertex::Secret, req),
        ("", "configmaps") => read_namespaced(graph, node, Vertex::ConfigMap, req),
        ("", "serviceaccounts") => service_account(graph, node, req),
        ("", "pods") => pod(graph, node, req, node_selector),
        ("", "nodes") => node_object(node, req),
        ("coordination.k8s.io", "leases") => lease(node, req),
        _ => static_rules(req),
    }
}

/// kube's `hasPathFrom`: an edge from the object to the node.
fn related(graph: &impl Relations, node: &str, kind: Vertex, req: &Request) -> NodeDecision {
    if req.name.is_empty() {
        return no_opinion("No Object name found");
    }
    if graph.related(node, kind, &req.namespace, &req.name) {
        NodeDecision::Allow
    } else {
        no_opinion(format!("no relationship found between node '{node}' and this object"))
    }
}

fn read_namespaced(graph: &impl Relations, node: &str, kind: Vertex, req: &Request) -> NodeDecision {
    if !matches!(req.verb.as_str(), "get" | "list" | "watch") {
        return no_opinion("can only read resources of this type");
    }
    if !req.subresource.is_empty() {
        return no_opinion("cannot read subresource");
    }
    if req.namespace.is_empty() {
        return no_opinion("can only read namespaced object of this type");
    }
    related(graph, node, kind, req)
}

fn service_account(graph: &impl Relations, node: &str, req: &Request) -> NodeDecision {
    // tessera's agent reads its pods' ServiceAccounts (automountServiceAccountToken):
    // a get of a related ServiceAccount, which kube's authorizer does not grant.
    if req.verb == "get" && req.subresource.is_empty() {
        return related(graph, node, Vertex::ServiceAccount, req);
    }
    if req.verb != "create" || req.name.is_empty() {
        return no_opinion("can only create tokens for individual service accounts");
    }
    if req.subresource != "token" {
        return no_opinion("can only create token subresource of serviceaccount");
    }
    related(graph, node, Vertex::ServiceAccount, req)
}

fn pod(graph: &impl Relations, node: &str, req: &Request, node_selector: Option<&str>) -> NodeDecision {
    match (req.subresource.as_str(), req.verb.as_str()) {
        ("", "get") => related(graph, node, Vertex::Pod, req),
        ("", "list" | "watch") => {
            if node_selector == Some(node) {
                NodeDecision::Allow
            } else if !req.name.is_empty() {
                related(graph, node, Vertex::Pod, req)
            } else {
                no_opinion("can only list/watch pods with spec.nodeName field selector")
            }
        }
        ("", "create") => no_opinion(CREATE_POD_REASON),
        ("", "delete") | ("status", "update" | "patch") => NodeDecision::Allow,
        _ => no_opinion(""),
    }
}

fn node_object(node: &str, req: &Request) -> NodeDecision {
    match (req.subresource.as_str(), req.verb.as_str()) {
        ("", "create" | "update" | "patch") | ("status", "update" | "patch") => NodeDecision::Allow,
        ("", "get" | "list" | "watch") => match req.name.as_str() {
            name if name == node => NodeDecision::Allow,
            "" => no_opinion(format!("node '{node}' cannot read all nodes, only its own Node object")),
            other => no_opinion(format!("node '{node}' cannot read '{other}', only its own Node object")),
        },
        _ => no_opinion(""),
    }
}

fn lease(node: &str, req: &Request) -> NodeDecision {
    if !matches!(req.verb.as_str(), "get" | "create" | "update" | "patch" | "delete") {
        return no_opinion("can only get, create, update, patch, or delete a node lease");
    }
    if req.namespace != NODE_LEASE_NAMESPACE {
        return no_opinion(format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"));
    }
    // A create carries its name in the body: admission checks it.
    if req.verb != "create" && req.name != node {
        return no_opinion("can only access node lease with the same name as the requesting node");
    }
    NodeDecision::Allow
}

/// The part of kube's static node rules that applies to what tessera serves.
fn static_rules(req: &Request) -> NodeDecision {
    let allowed = req.subresource.is_empty()
        && match (req.api_group.as_str(), req.resource.as_str()) {
            ("authentication.k8s.io", "tokenreviews") => req.verb == "create",
            ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews") => req.verb == "create",
            ("" | "events.k8s.io", "events") => matches!(req.verb.as_str(), "create" | "update" | "patch"),
            _ => false,
        };
    if allowed { NodeDecision::Allow } else { no_opinion("") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::graph::State;

    /// n1 runs pod `ns/web` as ServiceAccount `web`, with Secret `tls` and ConfigMap `cfg`.
    fn graph() -> State {
        let pod = serde_json::json!({"metadata": {"name": "web"}, "spec": {
            "nodeName": "n1", "serviceAccountName": "web", "containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "a", "secret": {"secretName": "tls"}}, {"name": "b", "configMap": {"name": "cfg"}}],
        }});
        let mut state = State::default();
        state.apply("/registry/pods/ns/web", Some(&serde_json::to_vec(&pod).unwrap()));
        state
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Request {
        Request {
            resource_request: true,
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn decide(r: &Request) -> NodeDecision {
        authorize(&graph(), "n1", r, None)
    }

    fn reason(d: NodeDecision) -> String {
        match d {
            NodeDecision::Allow => panic!("allowed"),
            NodeDecision::NoOpinion(r) => r,
        }
    }

    #[test]
    fn secrets_and_configmaps_only_when_a_bound_pod_references_them() {
        assert_eq!(decide(&req("get", "", "secrets", "", "ns", "tls")), NodeDecision::Allow);
        assert_eq!(decide(&req("watch", "", "secrets", "", "ns", "tls")), NodeDecision::Allow, "a named watch");
        assert_eq!(decide(&req("get", "", "configmaps", "", "ns", "cfg")), NodeDecision::Allow);
        assert_eq!(reason(decide(&req("get", "", "secrets", "", "ns", "other"))), "no relationship found between node 'n1' and this object");
        assert_eq!(reason(authorize(&graph(), "n2", &req("get", "", "secrets", "", "ns", "tls"), None)), "no relationship found between node 'n2' and this object");
        assert_eq!(reason(decide(&req("list", "", "secrets", "", "ns", ""))), "No Object name found");
        assert_eq!(reason(decide(&req("delete", "", "secrets", "", "ns", "tls"))), "can only read resources of this type");
        assert_eq!(reason(decide(&req("list", "", "secrets", "", "", ""))), "can only read namespaced object of this type");
    }

    #[test]
    fn tokens_only_for_service_accounts_of_bound_pods() {
        assert_eq!(decide(&req("create", "", "serviceaccounts", "token", "ns", "web")), NodeDecision::Allow);
        assert_eq!(decide(&req("get", "", "serviceaccounts", "", "ns", "web")), NodeDecision::Allow);
        assert_eq!(reason(decide(&req("create", "", "serviceaccounts", "token", "ns", "admin"))), "no relationship found between node 'n1' and this object");
        assert_eq!(reason(decide(&req("create", "", "serviceaccounts", "token", "other", "web"))), "no relationship found between node 'n1' and this object");
        assert_eq!(reason(decide(&req("list", "", "serviceaccounts", "", "ns", ""))), "can only create tokens for individual service accounts");
        assert_eq!(reason(decide(&req("create", "", "serviceaccounts", "", "ns", "web"))), "can only create token subresource of serviceaccount");
    }

    #[test]
    fn pods_by_binding_and_node_selector() {
        assert_eq!(decide(&req("get", "", "pods", "", "ns", "web")), NodeDecision::Allow);
        assert_eq!(reason(decide(&req("get", "", "pods", "", "ns", "db"))), "no relationship found between node 'n1' and this object");
        let list = req("list", "", "pods", "", "", "");
        assert_eq!(authorize(&graph(), "n1", &list, Some("n1")), NodeDecision::Allow);
        assert_eq!(reason(authorize(&graph(), "n1", &list, Some("n2"))), "can only list/watch pods with spec.nodeName field selector");
        assert_eq!(reason(decide(&list)), "can only list/watch pods with spec.nodeName field selector");
        assert_eq!(reason(decide(&req("create", "", "pods", "", "ns", ""))), CREATE_POD_REASON);
        assert_eq!(decide(&req("delete", "", "pods", "", "ns", "db")), NodeDecision::Allow, "admission checks the binding");
        assert_eq!(decide(&req("patch", "", "pods", "status", "ns", "db")), NodeDecision::Allow, "admission checks the binding");
        assert_eq!(reason(decide(&req("update", "", "pods", "", "ns", "web"))), "");
        assert_eq!(reason(decide(&req("deletecollection", "", "pods", "", "ns", ""))), "");
    }

    #[test]
    fn own_node_and_lease_only() {
        assert_eq!(decide(&req("get", "", "nodes", "", "", "n1")), NodeDecision::Allow);
        assert_eq!(decide(&req("create", "", "nodes", "", "", "")), NodeDecision::Allow);
        assert_eq!(decide(&req("patch", "", "nodes", "status", "", "n2")), NodeDecision::Allow, "admission checks the name");
        assert_eq!(reason(decide(&req("get", "", "nodes", "", "", "n2"))), "node 'n1' cannot read 'n2', only its own Node object");
        assert_eq!(reason(decide(&req("list", "", "nodes", "", "", ""))), "node 'n1' cannot read all nodes, only its own Node object");
        assert_eq!(reason(decide(&req("delete", "", "nodes", "", "", "n1"))), "");
        let lease = |verb: &str, ns: &str, name: &str| decide(&req(verb, "coordination.k8s.io", "leases", "", ns, name));
        assert_eq!(lease("update", "kube-node-lease", "n1"), NodeDecision::Allow);
        assert_eq!(lease("create", "kube-node-lease", ""), NodeDecision::Allow);
        assert_eq!(reason(lease("update", "kube-node-lease", "n2")), "can only access node lease with the same name as the requesting node");
        assert_eq!(reason(lease("get", "default", "n1")), "can only access leases in the \"kube-node-lease\" system namespace");
        assert_eq!(reason(lease("list", "kube-node-lease", "")), "can only get, create, update, patch, or delete a node lease");
    }

    #[test]
    fn static_rules_and_everything_else() {
        assert_eq!(decide(&req("create", "authentication.k8s.io", "tokenreviews", "", "", "")), NodeDecision::Allow);
        assert_eq!(decide(&req("create", "", "events", "", "ns", "")), NodeDecision::Allow);
        assert_eq!(reason(decide(&req("get", "rbac.authorization.k8s.io", "clusterroles", "", "", "admin"))), "");
        let renew = Request { verb: "post".into(), path: crate::node::certificates::CLIENT_CERTIFICATE_PATH.into(), ..Default::default() };
        assert_eq!(decide(&renew), NodeDecision::Allow);
        let other = Request { verb: "get".into(), path: "/metrics".into(), ..Default::default() };
        assert_eq!(reason(decide(&other)), "");
    }
}
