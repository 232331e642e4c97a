//! The escalation check on issue 12's attack: a namespace admin without
//! `escalate` asks to grant one rule of 18 verbs × 18 groups × 18 resources
//! × 18 names (104,976 atoms; 5,832 uncovered rules to count).

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tessera_authn::UserInfo;
use tessera_rbac::authorizer::rules_for;
use tessera_rbac::escalation::{Limits, NotCovered, check};
use tessera_rbac::policy::{Binding, Role};
use tessera_rbac::{Policy, PolicyRule, bootstrap};

fn namespace_admin() -> Vec<PolicyRule> {
    let mut p = Policy::default();
    for r in bootstrap::cluster_roles() {
        p.put_cluster_role(Role::from_object(&r).expect("role"));
    }
    for b in bootstrap::cluster_role_bindings() {
        p.put_binding(Binding::from_object(&b).expect("binding"));
    }
    let b = json!({"metadata": {"name": "boss", "namespace": "team"},
        "roleRef": {"kind": "ClusterRole", "name": "admin"}, "subjects": [{"kind": "User", "name": "boss"}]});
    p.put_binding(Binding::from_object(&b).expect("binding"));
    let boss = UserInfo { username: "boss".into(), groups: vec!["system:authenticated".into()], ..Default::default() };
    rules_for(&p, &boss, "team")
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn rule_18_4() -> PolicyRule {
    PolicyRule {
        verbs: list(&["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate", "approve", "sign", "use", "proxy", "attest", "mint", "nuke"]),
        api_groups: list(&["", "apps", "batch", "policy", "extensions", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "storage.k8s.io", "certificates.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "node.k8s.io", "example.com"]),
        resources: list(&["pods", "secrets", "configmaps", "serviceaccounts", "serviceaccounts/token", "pods/exec", "deployments", "roles", "rolebindings", "jobs", "leases", "services", "events", "ingresses", "nodes", "clusterroles", "widgets", "namespaces"]),
        resource_names: (0..18).map(|i| format!("n{i:02}")).collect(),
        non_resource_urls: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let admin = namespace_admin();
    let attack = vec![rule_18_4()];
    let limits = Limits::default();
    c.bench_function("escalation/18^4-rule/namespace-admin", |b| {
        b.iter(|| assert!(matches!(check(&admin, &attack, &limits), Err(NotCovered::Missing(_)))))
    });
    // An ordinary Role within the admin's own permissions.
    let ordinary = vec![
        PolicyRule { verbs: list(&["get", "list", "watch"]), api_groups: list(&[""]), resources: list(&["pods", "configmaps"]), ..Default::default() },
        PolicyRule { verbs: list(&["get", "list", "watch"]), api_groups: list(&["apps"]), resources: list(&["deployments"]), ..Default::default() },
    ];
    c.bench_function("escalation/ordinary-role/namespace-admin", |b| b.iter(|| assert!(check(&admin, &ordinary, &limits).is_ok())));
    // The worst case: 20 held rules that each list a different half of 200
    // requested values, so no two values share a class. The step budget ends it.
    let values: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut half = || -> Vec<String> {
        values
            .iter()
            .filter(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed & 1 == 1
            })
            .cloned()
            .collect()
    };
    let held: Vec<PolicyRule> =
        (0..20).map(|_| PolicyRule { verbs: half(), api_groups: half(), resources: half(), ..Default::default() }).collect();
    let wanted = vec![PolicyRule { verbs: values.clone(), api_groups: values.clone(), resources: values.clone(), ..Default::default() }];
    c.bench_function("escalation/adversarial-held-rules/budget-exhausted", |b| {
        b.iter(|| assert_eq!(check(&held, &wanted, &limits), Err(NotCovered::TooComplex)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
