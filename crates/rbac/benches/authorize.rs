//! SubjectAccessReview decisions per second with 10k bindings loaded.

#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tessera_authn::UserInfo;
use tessera_rbac::policy::{Binding, Role};
use tessera_rbac::{Policy, Request, authorize, bootstrap};

fn policy(bindings: usize) -> Policy {
    let mut p = Policy::default();
    for r in bootstrap::cluster_roles() {
        p.put_cluster_role(Role::from_object(&r).expect("role"));
    }
    for b in bootstrap::cluster_role_bindings() {
        p.put_binding(Binding::from_object(&b).expect("binding"));
    }
    for i in 0..bindings {
        let b = json!({"metadata": {"name": format!("b{i}"), "namespace": format!("ns{}", i % 100)},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa{i}")}]});
        p.put_binding(Binding::from_object(&b).expect("binding"));
    }
    p
}

fn bench(c: &mut Criterion) {
    let p = policy(10_000);
    let user = UserInfo {
        username: "system:serviceaccount:ns42:sa42".into(),
        groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:ns42".into(), "system:authenticated".into()],
        ..Default::default()
    };
    let allowed = Request { resource_request: true, verb: "list".into(), resource: "pods".into(), namespace: "ns42".into(), ..Default::default() };
    let denied = Request { resource_request: true, verb: "create".into(), api_group: "rbac.authorization.k8s.io".into(), resource: "clusterroles".into(), ..Default::default() };
    c.bench_function("sar/10k-bindings/allowed", |b| b.iter(|| assert!(authorize(&p, &user, &allowed).is_allowed())));
    c.bench_function("sar/10k-bindings/denied", |b| b.iter(|| assert!(!authorize(&p, &user, &denied).is_allowed())));
}

criterion_group!(benches, bench);
criterion_main!(benches);
