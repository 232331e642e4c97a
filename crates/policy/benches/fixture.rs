//! The policy fixture of issue 16's benchmarks, shared by
//! `crates/policy/benches/evaluate.rs` and `crates/proxy/benches/enforce.rs`
//! (`#[path]`), and written the same way by `scripts/policy-fixture.py` for
//! `scripts/bench-policy.sh`: namespace `bench`, pod `backend` (label
//! `app: backend`) with ports 8001–8049 and 8080; Servers `srv-00`…`srv-48`
//! (ports 8001–8049) and `web` (8080). Each Server has ten authorizations, in
//! compiled order: three ServerAuthorizations (meshTLS serviceAccounts), four
//! AuthorizationPolicies with a MeshTLSAuthentication (an exact identity and a
//! `*.` suffix), two with a NetworkAuthentication (10.x networks, one with an
//! `except`), and `S-zz`: MeshTLS + network for the others, and for `web` the
//! one that lets `client.bench` in, so the authorized request is decided by
//! the last authorization (the worst case). Five HTTPRoutes are attached to
//! `srv-00`…`srv-04`.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tessera_policy::PodInboundPolicy;
use tessera_policy::compile::{PodInfo, PolicyResources, Settings, compile};

pub(crate) const NS: &str = "bench";
pub(crate) const CLIENT: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";
pub(crate) const INTRUDER: &str = "intruder.bench.serviceaccount.identity.linkerd.cluster.local";

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": NS})
}

fn server_ref(name: &str) -> Value {
    json!({"group": "policy.linkerd.io", "kind": "Server", "name": name})
}

fn authn_ref(kind: &str, name: &str) -> Value {
    json!({"group": "policy.linkerd.io", "kind": kind, "name": name})
}

/// The fixture's objects (same as `scripts/policy-fixture.py`).
pub(crate) fn fixture() -> Vec<Value> {
    let mut objects = Vec::new();
    let servers: Vec<(String, u16)> = (0..49u16).map(|s| (format!("srv-{s:02}"), 8001 + s)).chain([("web".to_owned(), 8080)]).collect();
    for (i, (server, port)) in servers.iter().enumerate() {
        let sid = format!("{server}-clients");
        objects.push(json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": meta(server),
            "spec": {"podSelector": {"matchLabels": {"app": "backend"}}, "port": port, "proxyProtocol": "HTTP/1"}}));
        for k in 0..3 {
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1beta1", "kind": "ServerAuthorization", "metadata": meta(&format!("{server}-saz-{k}")),
                "spec": {"server": {"name": server}, "client": {"meshTLS": {"serviceAccounts": [{"name": format!("caller-{k}"), "namespace": sid}]}}}}));
        }
        for k in 0..4 {
            let name = format!("{server}-mtls-{k}");
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": meta(&name),
                "spec": {"identities": [format!("caller-{k}.{sid}.serviceaccount.identity.linkerd.cluster.local"),
                                        format!("*.{server}-team-{k}.serviceaccount.identity.linkerd.cluster.local")]}}));
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": meta(&name),
                "spec": {"targetRef": server_ref(server), "requiredAuthenticationRefs": [authn_ref("MeshTLSAuthentication", &name)]}}));
        }
        for k in 0..2 {
            let name = format!("{server}-net-{k}");
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "NetworkAuthentication", "metadata": meta(&name),
                "spec": {"networks": [{"cidr": format!("10.{i}.{k}.0/24")}, {"cidr": format!("10.{i}.{}.0/24", k + 100), "except": [format!("10.{i}.{}.7/32", k + 100)]}]}}));
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": meta(&name),
                "spec": {"targetRef": server_ref(server), "requiredAuthenticationRefs": [authn_ref("NetworkAuthentication", &name)]}}));
        }
        let last = format!("{server}-zz");
        let identities = if server == "web" { vec![CLIENT.to_owned()] } else { vec![format!("*.{sid}.serviceaccount.identity.linkerd.cluster.local")] };
        objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": meta(&last), "spec": {"identities": identities}}));
        let mut refs = vec![authn_ref("MeshTLSAuthentication", &last)];
        if server != "web" {
            objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "NetworkAuthentication", "metadata": meta(&last),
                "spec": {"networks": [{"cidr": format!("10.{i}.200.0/24")}]}}));
            refs.push(authn_ref("NetworkAuthentication", &last));
        }
        objects.push(json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": meta(&last),
            "spec": {"targetRef": server_ref(server), "requiredAuthenticationRefs": refs}}));
    }
    for (server, _) in servers.iter().take(5) {
        objects.push(json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute", "metadata": meta(&format!("{server}-route")),
            "spec": {"parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": server}],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}]},
                          {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}, "headers": [{"name": "x-team", "value": "a"}]}]}]}}));
    }
    objects
}

fn put<T: DeserializeOwned>(map: &mut BTreeMap<(String, String), T>, object: &Value) {
    let name = object["metadata"]["name"].as_str().expect("name").to_owned();
    map.insert((NS.to_owned(), name), serde_json::from_value(object.clone()).expect("a valid object"));
}

pub(crate) fn resources(objects: &[Value]) -> PolicyResources {
    let mut r = PolicyResources::default();
    for (n, o) in objects.iter().enumerate() {
        match o["kind"].as_str().expect("kind") {
            "Server" => put(&mut r.servers, o),
            "ServerAuthorization" => put(&mut r.server_authorizations, o),
            "AuthorizationPolicy" => put(&mut r.authorization_policies, o),
            "MeshTLSAuthentication" => put(&mut r.mesh_tls_authentications, o),
            "NetworkAuthentication" => put(&mut r.network_authentications, o),
            "HTTPRoute" => {
                let name = o["metadata"]["name"].as_str().expect("name").to_owned();
                let route = serde_json::from_value(o.clone()).expect("a valid HTTPRoute");
                r.http_routes.insert((NS.to_owned(), name), (route, format!("2026-12-06T00:00:{:02}Z", n % 60)));
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    r
}

pub(crate) fn pod(labels: &[(&str, &str)]) -> PodInfo {
    let mut container_ports: Vec<(Option<String>, u16)> = (0..49u16).map(|s| (Some(format!("p{}", 8001 + s)), 8001 + s)).collect();
    container_ports.push((Some("http".into()), 8080));
    PodInfo {
        namespace: NS.into(),
        name: "backend".into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        annotations: BTreeMap::new(),
        container_ports,
    }
}

/// The fixture compiled for pod `backend` (`selected`: labelled `app: backend`,
/// else a label no Server selects), with the server's default settings.
pub(crate) fn compiled(selected: bool) -> PodInboundPolicy {
    let resources = resources(&fixture());
    let labels: &[(&str, &str)] = if selected { &[("app", "backend")] } else { &[("app", "plain")] };
    compile(&pod(labels), &BTreeMap::new(), &resources, &Settings::default())
}
