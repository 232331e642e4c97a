use serde_json::json;
use tessera_authn::UserInfo;

use crate::authorizer::{aggregated_rules, explain, rules_for, who_can};
use crate::policy::{Binding, Role};
use crate::{Decision, Policy, Request, authorize, bootstrap};

fn bootstrap_policy() -> Policy {
    let mut p = Policy::default();
    for r in bootstrap::cluster_roles() {
        p.put_cluster_role(Role::from_object(&r).unwrap());
    }
    for b in bootstrap::cluster_role_bindings() {
        p.put_binding(Binding::from_object(&b).unwrap());
    }
    p
}

fn sa(ns: &str, name: &str) -> UserInfo {
    UserInfo {
        username: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()],
        ..Default::default()
    }
}

fn user(name: &str) -> UserInfo {
    UserInfo { username: name.into(), groups: vec!["system:authenticated".into()], ..Default::default() }
}

fn res(verb: &str, group: &str, resource: &str, ns: &str) -> Request {
    Request { resource_request: true, verb: verb.into(), api_group: group.into(), resource: resource.into(), namespace: ns.into(), ..Default::default() }
}

fn reason(d: Decision) -> String {
    match d {
        Decision::Allow(a) => a.reason().to_owned(),
        Decision::Deny => panic!("denied"),
    }
}

fn crb(name: &str, role: &str, subjects: serde_json::Value) -> Binding {
    Binding::from_object(&json!({"metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})).unwrap()
}

#[test]
fn bootstrap_policy_parses() {
    assert_eq!(bootstrap::cluster_roles().len(), 17);
    assert_eq!(bootstrap::cluster_role_bindings().len(), 7);
}

#[test]
fn auth_delegator_reason_matches_kube_apiserver() {
    let mut p = bootstrap_policy();
    let api = sa("api", "api");
    let tokenreviews = res("create", "authentication.k8s.io", "tokenreviews", "");
    assert_eq!(authorize(&p, &api, &tokenreviews), Decision::Deny);
    p.put_binding(crb("api-auth-delegator", "system:auth-delegator", json!([{"kind": "ServiceAccount", "name": "api", "namespace": "api"}])));
    assert_eq!(
        reason(authorize(&p, &api, &tokenreviews)),
        "RBAC: allowed by ClusterRoleBinding \"api-auth-delegator\" of ClusterRole \"system:auth-delegator\" to ServiceAccount \"api/api\""
    );
}

#[test]
fn role_binding_reason_and_namespace_scope() {
    let mut p = bootstrap_policy();
    p.put_role(Role::from_object(&json!({"metadata": {"name": "pod-reader", "namespace": "default"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})).unwrap());
    p.put_binding(Binding::from_object(&json!({"metadata": {"name": "read-pods", "namespace": "default"}, "roleRef": {"kind": "Role", "name": "pod-reader"}, "subjects": [{"kind": "User", "name": "jane"}]})).unwrap());
    assert_eq!(reason(authorize(&p, &user("jane"), &res("list", "", "pods", "default"))), "RBAC: allowed by RoleBinding \"read-pods/default\" of Role \"pod-reader\" to User \"jane\"");
    assert_eq!(authorize(&p, &user("jane"), &res("list", "", "pods", "other")), Decision::Deny);
    assert_eq!(authorize(&p, &user("jane"), &res("list", "", "pods", "")), Decision::Deny);
    assert_eq!(authorize(&p, &user("jane"), &res("delete", "", "pods", "default")), Decision::Deny);
    // Deleting the role removes the grant even though the binding stays.
    p.remove_role("default", "pod-reader");
    assert_eq!(authorize(&p, &user("jane"), &res("list", "", "pods", "default")), Decision::Deny);
}

#[test]
fn discovery_and_masters() {
    let p = bootstrap_policy();
    let get = |path: &str| Request { verb: "get".into(), path: path.into(), ..Default::default() };
    assert!(authorize(&p, &user("jane"), &get("/api/v1")).is_allowed());
    assert!(authorize(&p, &UserInfo::anonymous(), &get("/version")).is_allowed());
    assert!(!authorize(&p, &UserInfo::anonymous(), &get("/api")).is_allowed());
    assert!(!authorize(&p, &user("jane"), &get("/metrics")).is_allowed());
    assert!(authorize(&p, &sa("a", "b"), &get("/openid/v1/jwks")).is_allowed());
    let admin = UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
    assert!(authorize(&p, &admin, &res("delete", "", "namespaces", "")).is_allowed());
}

#[test]
fn aggregation_reproduces_kube_apiserver_roles() {
    let p = bootstrap_policy();
    for name in ["admin", "edit", "view"] {
        let computed = aggregated_rules(&p, name).unwrap();
        let stored = &p.cluster_role(name).unwrap().rules;
        assert_eq!(computed.len(), stored.len(), "{name}");
        assert!(stored.iter().all(|r| computed.contains(r)), "{name}");
    }
    assert!(aggregated_rules(&p, "cluster-admin").is_none());
}

#[test]
fn rules_review_lists_bound_rules() {
    let p = bootstrap_policy();
    let rules = rules_for(&p, &sa("api", "api"), "api");
    assert!(rules.iter().any(|r| r.resources == ["selfsubjectreviews"]));
    assert!(rules.iter().any(|r| r.non_resource_urls.contains(&"/openid/v1/jwks".to_owned())));
}

#[test]
fn who_can_and_explain_on_a_large_policy() {
    let mut p = bootstrap_policy();
    for i in 0..250 {
        p.put_binding(Binding::from_object(&json!({"metadata": {"name": format!("view-{i}"), "namespace": format!("ns{}", i % 10)}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "ServiceAccount", "name": format!("sa{i}")}]})).unwrap());
    }
    p.put_binding(crb("ops-admin", "admin", json!([{"kind": "Group", "name": "ops"}])));
    let list_pods_ns3 = res("list", "", "pods", "ns3");
    let grants = who_can(&p, &list_pods_ns3);
    // 25 ServiceAccounts in ns3 via view, the ops group, and system:masters.
    assert_eq!(grants.iter().filter(|g| g.kind == "ServiceAccount").count(), 25);
    assert!(grants.iter().any(|g| g.kind == "Group" && g.name == "ops" && g.binding == "ClusterRoleBinding \"ops-admin\""));
    assert!(grants.iter().any(|g| g.name == "system:masters"));
    assert!(grants.iter().all(|g| g.kind != "ServiceAccount" || g.name.starts_with("ns3/")));

    let allowed = explain(&p, &sa("ns3", "sa3"), &list_pods_ns3, 5);
    assert!(allowed.allowed);
    assert_eq!(allowed.reason, "RBAC: allowed by RoleBinding \"view-3/ns3\" of ClusterRole \"view\" to ServiceAccount \"sa3/ns3\"");
    assert!(!allowed.matches.is_empty());
    let denied = explain(&p, &sa("ns3", "sa3"), &res("delete", "", "pods", "ns3"), 5);
    assert!(!denied.allowed);
    assert!(denied.near_misses.iter().any(|m| m.why_not.as_deref().is_some_and(|w| w.starts_with("verb \"delete\" not in"))), "{denied:#?}");
    let elsewhere = explain(&p, &sa("ns3", "sa3"), &res("list", "", "pods", "ns4"), 5);
    assert!(elsewhere.near_misses.iter().any(|m| m.why_not.as_deref() == Some("would allow it, but only in namespace \"ns3\"")), "{elsewhere:#?}");
}

#[test]
fn view_reads_policy_resources_and_edit_writes_them() {
    let p = bootstrap_policy();
    let bind = |p: &mut Policy, role: &str, who: &str| {
        p.put_binding(Binding::from_object(&json!({"metadata": {"name": format!("{who}-{role}"), "namespace": "web"}, "roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": who}]})).unwrap());
    };
    let mut p = p;
    bind(&mut p, "view", "viewer");
    bind(&mut p, "edit", "editor");
    bind(&mut p, "admin", "boss");
    for resource in ["servers", "serverauthorizations", "authorizationpolicies", "meshtlsauthentications", "networkauthentications", "httproutes"] {
        assert!(authorize(&p, &user("viewer"), &res("list", "policy.linkerd.io", resource, "web")).is_allowed(), "{resource}");
        assert!(authorize(&p, &user("viewer"), &res("watch", "policy.linkerd.io", resource, "web")).is_allowed(), "{resource}");
        assert!(!authorize(&p, &user("viewer"), &res("create", "policy.linkerd.io", resource, "web")).is_allowed(), "{resource}");
        assert!(authorize(&p, &user("editor"), &res("create", "policy.linkerd.io", resource, "web")).is_allowed(), "{resource}");
        assert!(authorize(&p, &user("boss"), &res("delete", "policy.linkerd.io", resource, "web")).is_allowed(), "{resource}");
        assert!(!authorize(&p, &user("editor"), &res("create", "policy.linkerd.io", resource, "other")).is_allowed(), "{resource}");
    }
}
