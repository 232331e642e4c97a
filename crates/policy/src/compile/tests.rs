//! Every compile and evaluation rule, mostly from the attacker's side: each
//! test names the Linkerd rule it follows.

use super::*;
use crate::evaluate::{Client, HttpRequestInfo, Verdict};
use serde_json::{Value, json};

const NS: &str = "shop";

fn sa(ns: &str, name: &str) -> String {
    Settings::default().service_account_identity(ns, name)
}

fn key(name: &str) -> Key {
    (NS.to_owned(), name.to_owned())
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[derive(Default)]
struct World {
    r: PolicyResources,
    ns_annotations: BTreeMap<String, String>,
    settings: Settings,
    pod: PodInfo,
}

impl World {
    fn new() -> Self {
        let pod = PodInfo {
            namespace: NS.into(),
            name: "db-0".into(),
            labels: [("app".to_owned(), "db".to_owned())].into(),
            annotations: BTreeMap::new(),
            container_ports: vec![(Some("http".into()), 8080), (Some("admin".into()), 9990), (None, 7000)],
        };
        Self { pod, ..Self::default() }
    }
    fn server(&mut self, name: &str, spec: Value) -> &mut Self {
        self.r.servers.insert(key(name), obj(json!({"metadata": {"name": name, "namespace": NS, "labels": {"tier": "data"}}, "spec": spec})));
        self
    }
    fn saz(&mut self, name: &str, spec: Value) -> &mut Self {
        self.r.server_authorizations.insert(key(name), obj(json!({"metadata": {"name": name, "namespace": NS}, "spec": spec})));
        self
    }
    fn ap(&mut self, name: &str, spec: Value) -> &mut Self {
        self.r.authorization_policies.insert(key(name), obj(json!({"metadata": {"name": name, "namespace": NS}, "spec": spec})));
        self
    }
    fn mtls(&mut self, ns: &str, name: &str, spec: Value) -> &mut Self {
        self.r.mesh_tls_authentications.insert((ns.into(), name.into()), obj(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})));
        self
    }
    fn netauthn(&mut self, name: &str, spec: Value) -> &mut Self {
        self.r.network_authentications.insert(key(name), obj(json!({"metadata": {"name": name, "namespace": NS}, "spec": spec})));
        self
    }
    fn route(&mut self, name: &str, created: &str, spec: Value) -> &mut Self {
        self.r.http_routes.insert(key(name), (obj(json!({"metadata": {"name": name, "namespace": NS}, "spec": spec})), created.to_owned()));
        self
    }
    fn policy(&self) -> PodInboundPolicy {
        compile(&self.pod, &self.ns_annotations, &self.r, &self.settings)
    }
}

fn client(id: Option<&str>, addr: &str) -> Client {
    Client { identity: id.map(str::to_owned), addr: addr.parse().unwrap() }
}

fn tcp(p: &PodInboundPolicy, port: u16, c: &Client) -> Decision {
    let d = p.evaluate(port, c, None);
    // The fast path decides the same, without a trace.
    assert_eq!(p.decide(port, c, None), Decision { trace: Vec::new(), ..d.clone() });
    d
}

fn http(p: &PodInboundPolicy, port: u16, c: &Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let d = p.evaluate(port, c, Some(&HttpRequestInfo { method, path, headers: &map }));
    // The fast path decides the same, without a trace.
    let fast = p.decide(port, c, Some(&HttpRequestInfo { method, path, headers: &map }));
    assert_eq!(fast, Decision { trace: Vec::new(), ..d.clone() });
    d
}

use crate::evaluate::Decision;

fn api() -> Client {
    client(Some(&sa(NS, "api")), "10.1.2.3")
}

fn server_8080(w: &mut World) {
    w.server("db-http", json!({"podSelector": {"matchLabels": {"app": "db"}}, "port": "http", "proxyProtocol": "HTTP/1"}));
}

// --- default policies ---

#[test]
fn default_policy_precedence_pod_over_namespace_over_flag() {
    // Linkerd: the annotation on the pod or its namespace overrides the cluster default.
    let mut w = World::new();
    w.settings.default_policy = DefaultPolicy::ClusterAuthenticated;
    assert_eq!(w.policy().default_policy, DefaultPolicy::ClusterAuthenticated);
    w.ns_annotations.insert(DEFAULT_POLICY_ANNOTATION.into(), "deny".into());
    assert_eq!(w.policy().default_policy, DefaultPolicy::Deny);
    w.pod.annotations.insert(DEFAULT_POLICY_ANNOTATION.into(), "audit".into());
    assert_eq!(w.policy().default_policy, DefaultPolicy::Audit);
    // A misspelt pod annotation does not open the pod: the namespace's applies.
    w.pod.annotations.insert(DEFAULT_POLICY_ANNOTATION.into(), "allow-all".into());
    assert_eq!(w.policy().default_policy, DefaultPolicy::Deny);
}

#[test]
fn default_policies_on_ports_no_server_selects() {
    // Linkerd's six default policies, for a meshed in-cluster client, a meshed
    // client outside the cluster networks, and plain clients in and out.
    let cases = [
        (DefaultPolicy::AllUnauthenticated, [Verdict::Allow, Verdict::Allow, Verdict::Allow, Verdict::Allow]),
        (DefaultPolicy::AllAuthenticated, [Verdict::Allow, Verdict::Allow, Verdict::Deny, Verdict::Deny]),
        (DefaultPolicy::ClusterAuthenticated, [Verdict::Allow, Verdict::Deny, Verdict::Deny, Verdict::Deny]),
        (DefaultPolicy::ClusterUnauthenticated, [Verdict::Allow, Verdict::Deny, Verdict::Allow, Verdict::Deny]),
        (DefaultPolicy::Deny, [Verdict::Deny; 4]),
        (DefaultPolicy::Audit, [Verdict::AuditDeny; 4]),
    ];
    let clients = [api(), client(Some(&sa(NS, "api")), "203.0.113.9"), client(None, "10.9.9.9"), client(None, "203.0.113.9")];
    for (policy, want) in cases {
        let mut w = World::new();
        w.settings.default_policy = policy;
        let p = w.policy();
        for (c, want) in clients.iter().zip(want) {
            let d = tcp(&p, 7000, c);
            assert_eq!(d.verdict, want, "{policy} {c:?}: {:?}", d.trace);
            assert_eq!(d.server, None);
            if want == Verdict::Deny {
                assert_eq!(d.reason, format!("unauthorized connection on default/{policy}"));
                assert_eq!(d.authorization, None);
            } else {
                assert_eq!(d.authorization, Some(("default".to_owned(), policy.to_string())));
            }
        }
    }
}

// --- Servers ---

#[test]
fn a_server_denies_what_nothing_authorizes() {
    // Linkerd: "When a Server resource is present, all traffic to the port on
    // its pods will be denied unless explicitly authorized."
    let mut w = World::new();
    server_8080(&mut w);
    let p = w.policy();
    let d = tcp(&p, 8080, &api());
    assert_eq!((d.verdict, d.server.as_deref(), d.reason.as_str()), (Verdict::Deny, Some("db-http"), "unauthorized connection on server/db-http"));
    let d = http(&p, 8080, &api(), "GET", "/", &[]);
    assert_eq!((d.verdict, d.http_status, d.reason.as_str()), (Verdict::Deny, Some(403), "unauthorized request on route"));
    // Other ports keep the default policy.
    assert_eq!(tcp(&p, 9990, &api()).verdict, Verdict::Allow);
}

#[test]
fn server_port_by_name_needs_the_pods_container_port_name() {
    let mut w = World::new();
    w.server("by-name", json!({"podSelector": {"matchLabels": {"app": "db"}}, "port": "admin"}));
    w.server("wrong-name", json!({"podSelector": {"matchLabels": {"app": "db"}}, "port": "htp"}));
    w.server("by-number", json!({"podSelector": {"matchLabels": {"app": "db"}}, "port": 7000}));
    let p = w.policy();
    let ports: Vec<(u16, &str)> = p.ports.iter().map(|pp| (pp.port, pp.server.as_str())).collect();
    assert_eq!(ports, [(7000, "by-number"), (9990, "by-name")]);
    // The misspelt port name selects nothing: 8080 keeps the default.
    assert_eq!(tcp(&p, 8080, &api()).server, None);
}

#[test]
fn server_selectors() {
    let mut w = World::new();
    w.server("other-app", json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080}));
    w.server("expr", json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}, {"key": "env", "operator": "NotIn", "values": ["dev"]}]}, "port": 9990}));
    w.server("bad-op", json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Near", "values": ["db"]}]}, "port": 7000}));
    w.server("no-selector", json!({"port": 7000}));
    let p = w.policy();
    assert_eq!(p.ports.iter().map(|pp| pp.server.as_str()).collect::<Vec<_>>(), ["expr"]);
    w.pod.labels.insert("env".into(), "dev".into());
    assert!(w.policy().ports.is_empty());
    w.server("all-pods", json!({"podSelector": {}, "port": 7000}));
    assert_eq!(w.policy().ports.iter().map(|pp| pp.server.as_str()).collect::<Vec<_>>(), ["all-pods"]);
}

#[test]
fn overlapping_servers_first_by_name_wins() {
    let mut w = World::new();
    w.server("b-srv", json!({"podSelector": {}, "port": 8080}));
    w.server("a-srv", json!({"podSelector": {}, "port": "http"}));
    assert_eq!(w.policy().ports[0].server, "a-srv");
}

#[test]
fn access_policy_applies_when_nothing_else_matches() {
    // Server v1beta3 accessPolicy: "the policy applied to traffic not matching
    // any associated authorization policies (defaults to deny)".
    let mut w = World::new();
    w.server("db", json!({"podSelector": {}, "port": 8080, "accessPolicy": "audit"}));
    let p = w.policy();
    let d = tcp(&p, 8080, &client(None, "203.0.113.1"));
    assert_eq!((d.verdict, d.authorization), (Verdict::AuditDeny, Some(("default".into(), "audit".into()))));
    assert_eq!(d.reason, "allowed by audit: would be denied (unauthorized connection on server/db)");
    w.server("db", json!({"podSelector": {}, "port": 8080, "accessPolicy": "cluster-authenticated"}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &api()).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(None, "10.0.0.1")).verdict, Verdict::Deny);
    // tessera's pods live on 127/8, in the default cluster networks; 203.0.113.1 is outside.
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "web")), "127.1.2.3")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "web")), "203.0.113.1")).verdict, Verdict::Deny);
    // An unknown value fails closed.
    w.server("db", json!({"podSelector": {}, "port": 8080, "accessPolicy": "allow"}));
    assert_eq!(tcp(&w.policy(), 8080, &client(None, "10.0.0.1")).verdict, Verdict::Deny);
}

// --- ServerAuthorization ---

#[test]
fn server_authorization_by_name_and_by_selector() {
    let mut w = World::new();
    server_8080(&mut w);
    w.saz("by-name", json!({"server": {"name": "db-http"}, "client": {"meshTLS": {"serviceAccounts": [{"name": "api"}]}}}));
    w.saz("by-label", json!({"server": {"selector": {"matchLabels": {"tier": "data"}}}, "client": {"meshTLS": {"identities": [sa("ops", "backup")]}}}));
    w.saz("other-label", json!({"server": {"selector": {"matchLabels": {"tier": "web"}}}, "client": {"unauthenticated": true}}));
    w.saz("other-name", json!({"server": {"name": "web"}, "client": {"unauthenticated": true}}));
    let p = w.policy();
    let names: Vec<&str> = p.ports[0].authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["by-label", "by-name"]);
    let d = tcp(&p, 8080, &api());
    assert_eq!(d.authorization, Some(("ServerAuthorization".into(), "by-name".into())));
    assert_eq!(tcp(&p, 8080, &client(Some(&sa("ops", "backup")), "10.0.0.5")).verdict, Verdict::Allow);
    // Someone else's ServiceAccount, and a plain client: denied.
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "web")), "10.0.0.5")).verdict, Verdict::Deny);
    assert_eq!(tcp(&p, 8080, &client(None, "10.0.0.5")).verdict, Verdict::Deny);
}

#[test]
fn service_account_namespace_defaults_to_the_authorizations() {
    let mut w = World::new();
    server_8080(&mut w);
    w.saz("x", json!({"server": {"name": "db-http"}, "client": {"meshTLS": {"serviceAccounts": [{"name": "api"}, {"name": "prometheus", "namespace": "linkerd-viz"}]}}}));
    let p = w.policy();
    assert_eq!(
        p.ports[0].authorizations[0].authentication,
        Authentication::Identities(vec![
            IdentityMatch::Exact("api.shop.serviceaccount.identity.linkerd.cluster.local".into()),
            IdentityMatch::Exact("prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local".into()),
        ])
    );
    // Same ServiceAccount name in another namespace is another identity.
    assert_eq!(tcp(&p, 8080, &client(Some(&sa("evil", "api")), "10.0.0.5")).verdict, Verdict::Deny);
}

#[test]
fn identity_suffix_cannot_be_spoofed_by_a_namespace_name() {
    // `*.shop.serviceaccount…` matches every ServiceAccount of shop, and not
    // those of `evil-shop` or `shop-evil` namespaces.
    let mut w = World::new();
    server_8080(&mut w);
    let wildcard = format!("*.{}", Settings::default().namespace_suffix(NS));
    w.saz("ns-wide", json!({"server": {"name": "db-http"}, "client": {"meshTLS": {"identities": [wildcard]}}}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "anyone")), "10.0.0.5")).verdict, Verdict::Allow);
    for spoof in [sa("evil-shop", "api"), sa("shop-evil", "api"), "evil-shop.serviceaccount.identity.linkerd.cluster.local".into(), Settings::default().namespace_suffix(NS)] {
        let d = tcp(&p, 8080, &client(Some(&spoof), "10.0.0.5"));
        assert_eq!(d.verdict, Verdict::Deny, "{spoof}");
        assert!(d.trace.iter().any(|l| l.contains("identity not matched")), "{:?}", d.trace);
    }
    // Another trust domain is another identity.
    assert_eq!(tcp(&p, 8080, &client(Some("api.shop.serviceaccount.identity.linkerd.evil.local"), "10.0.0.5")).verdict, Verdict::Deny);
}

#[test]
fn server_authorization_networks_default_to_the_cluster_and_except_excludes() {
    let mut w = World::new();
    server_8080(&mut w);
    w.saz("public", json!({"server": {"name": "db-http"}, "client": {"unauthenticated": true}}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(None, "10.3.3.3")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(None, "8.8.8.8")).verdict, Verdict::Deny);
    w.saz("public", json!({"server": {"name": "db-http"}, "client": {"unauthenticated": true, "networks": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}, {"cidr": "::/0"}]}}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(None, "8.8.8.8")).verdict, Verdict::Allow);
    let d = tcp(&p, 8080, &client(None, "10.3.3.3"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.trace.iter().any(|l| l.contains("network not matched: client address 10.3.3.3 is not in [0.0.0.0/0 except 10.0.0.0/8, ::/0]")), "{:?}", d.trace);
    assert_eq!(tcp(&p, 8080, &client(None, "::ffff:10.3.3.3")).verdict, Verdict::Deny);
    // A malformed except drops the whole authorization (never widens it).
    w.saz("public", json!({"server": {"name": "db-http"}, "client": {"unauthenticated": true, "networks": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/33"]}]}}));
    assert!(w.policy().ports[0].authorizations.is_empty());
    // A bare address is a /32.
    w.saz("public", json!({"server": {"name": "db-http"}, "client": {"unauthenticated": true, "networks": [{"cidr": "192.0.2.7"}]}}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(None, "192.0.2.7")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(None, "192.0.2.8")).verdict, Verdict::Deny);
}

#[test]
fn server_authorization_without_clients_authorizes_nobody() {
    let mut w = World::new();
    server_8080(&mut w);
    w.saz("empty", json!({"server": {"name": "db-http"}, "client": {}}));
    w.saz("no-ids", json!({"server": {"name": "db-http"}, "client": {"meshTLS": {}}}));
    w.saz("unauth-false", json!({"server": {"name": "db-http"}, "client": {"unauthenticated": false}}));
    assert!(w.policy().ports[0].authorizations.is_empty());
}

// --- AuthorizationPolicy + authentications ---

#[test]
fn authorization_policy_with_mesh_tls_authentication() {
    let mut w = World::new();
    server_8080(&mut w);
    w.mtls(NS, "api-only", json!({"identityRefs": [{"kind": "ServiceAccount", "name": "api"}]}));
    w.ap("db-api", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "api-only"}]}));
    let p = w.policy();
    let d = tcp(&p, 8080, &client(Some(&sa(NS, "api")), "203.0.113.5"));
    // Without a NetworkAuthentication, all networks.
    assert_eq!((d.verdict, d.authorization), (Verdict::Allow, Some(("AuthorizationPolicy".into(), "db-api".into()))));
    let d = tcp(&p, 8080, &client(Some(&sa(NS, "other")), "10.0.0.1"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.trace.iter().any(|l| l.starts_with("AuthorizationPolicy/db-api: identity not matched: other.shop")), "{:?}", d.trace);
    let d = tcp(&p, 8080, &client(None, "10.0.0.1"));
    assert!(d.trace.iter().any(|l| l == "AuthorizationPolicy/db-api: identity not matched: it requires mesh TLS and the client has no identity"), "{:?}", d.trace);
}

#[test]
fn authorization_policy_requires_every_authentication() {
    let mut w = World::new();
    server_8080(&mut w);
    w.mtls(NS, "all-meshed", json!({"identities": ["*"]}));
    w.netauthn("office", json!({"networks": [{"cidr": "192.168.0.0/16", "except": ["192.168.66.0/24"]}]}));
    w.ap("both", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "all-meshed"},
                                       {"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "office"}]}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(Some("x"), "192.168.1.1")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(None, "192.168.1.1")).verdict, Verdict::Deny);
    assert_eq!(tcp(&p, 8080, &client(Some("x"), "192.168.66.1")).verdict, Verdict::Deny);
    assert_eq!(tcp(&p, 8080, &client(Some("x"), "10.0.0.1")).verdict, Verdict::Deny);
}

#[test]
fn network_authentication_alone_is_unauthenticated() {
    let mut w = World::new();
    server_8080(&mut w);
    w.netauthn("kubelet", json!({"networks": [{"cidr": "10.0.0.1/32"}]}));
    w.ap("probes", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "kubelet"}]}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(None, "10.0.0.1")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "api")), "10.0.0.2")).verdict, Verdict::Deny);
}

#[test]
fn service_account_authentication_ref() {
    // Linkerd's docs example: requiredAuthenticationRefs [{kind: ServiceAccount, name: webapp}].
    let mut w = World::new();
    server_8080(&mut w);
    w.ap("webapp", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "webapp"}]}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(Some(&sa(NS, "webapp")), "10.0.0.1")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(Some(&sa("other", "webapp")), "10.0.0.1")).verdict, Verdict::Deny);
}

#[test]
fn mesh_tls_identity_refs_namespace_and_cross_namespace_refs() {
    let mut w = World::new();
    server_8080(&mut w);
    w.mtls("ops", "ops-ns", json!({"identityRefs": [{"kind": "Namespace", "name": "ops"}]}));
    w.ap("from-ops", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "ops-ns", "namespace": "ops"}]}));
    let p = w.policy();
    assert_eq!(tcp(&p, 8080, &client(Some(&sa("ops", "backup")), "10.0.0.1")).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &client(Some(&sa("ops-evil", "backup")), "10.0.0.1")).verdict, Verdict::Deny);
}

#[test]
fn broken_authorization_policies_authorize_nobody() {
    // Linkerd ignores an illegal AuthorizationPolicy; tessera does the same, so
    // nothing is ever widened by a reference it cannot resolve.
    let target = json!({"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"});
    let refs = [
        json!([{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "missing"}]),
        json!([{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "missing"}]),
        json!([{"group": "policy.linkerd.io", "kind": "Mystery", "name": "x"}]),
        json!([{"group": "example.com", "kind": "MeshTLSAuthentication", "name": "any"}]),
        json!([{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "any"}, {"kind": "ServiceAccount", "name": "api"}]),
        json!([{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "bad-ref"}]),
        json!([{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "bad-net"}]),
    ];
    for r in refs {
        let mut w = World::new();
        server_8080(&mut w);
        w.mtls(NS, "any", json!({"identities": ["*"]}));
        w.mtls(NS, "bad-ref", json!({"identityRefs": [{"kind": "Secret", "name": "x"}]}));
        w.netauthn("bad-net", json!({"networks": [{"cidr": "10.0.0.0/8", "except": ["nope"]}]}));
        w.ap("p", json!({"targetRef": target, "requiredAuthenticationRefs": r}));
        assert!(w.policy().ports[0].authorizations.is_empty(), "{r}");
    }
}

#[test]
fn authorization_policy_targets() {
    let mut w = World::new();
    server_8080(&mut w);
    w.server("db-admin", json!({"podSelector": {}, "port": "admin"}));
    w.ap("ns-wide", json!({"targetRef": {"kind": "Namespace", "name": NS}, "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "api"}]}));
    w.ap("other-ns", json!({"targetRef": {"kind": "Namespace", "name": "elsewhere"}, "requiredAuthenticationRefs": []}));
    w.ap("unknown-kind", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Gateway", "name": "db-http"}, "requiredAuthenticationRefs": []}));
    w.ap("wrong-group", json!({"targetRef": {"group": "example.com", "kind": "Server", "name": "db-http"}, "requiredAuthenticationRefs": []}));
    let p = w.policy();
    for pp in &p.ports {
        let names: Vec<&str> = pp.authorizations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["ns-wide"], "{}", pp.server);
    }
    assert_eq!(tcp(&p, 9990, &api()).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 9990, &client(None, "10.0.0.1")).verdict, Verdict::Deny);
}

// --- HTTPRoutes ---

fn routed_world() -> World {
    let mut w = World::new();
    server_8080(&mut w);
    let parent = json!([{"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"}]);
    w.route("data-get", "2026-01-01T00:00:00Z", json!({"parentRefs": parent, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/data"}, "method": "GET"}]}]}));
    w.route("admin", "2026-01-01T00:00:01Z", json!({"parentRefs": parent, "rules": [{"matches": [
        {"path": {"type": "Exact", "value": "/data/admin"}, "headers": [{"name": "X-Admin", "value": "yes"}]},
        {"path": {"type": "RegularExpression", "value": "/admin/[0-9]+"}, "queryParams": [{"name": "confirm", "value": "1"}]}]}]}));
    w.route("elsewhere", "2026-01-01T00:00:00Z", json!({"parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": "web"}], "rules": [{}]}));
    w.mtls(NS, "api", json!({"identityRefs": [{"kind": "ServiceAccount", "name": "api"}]}));
    w.mtls(NS, "ops", json!({"identityRefs": [{"kind": "ServiceAccount", "name": "ops"}]}));
    w.ap("api-reads", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "data-get"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "api"}]}));
    w.ap("ops-admin", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "admin"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "ops"}]}));
    // A Server-wide policy for everyone meshed: it does not apply to requests
    // once routes exist (Linkerd: route authorizations only).
    w.ap("server-wide", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "ops"}]}));
    w
}

#[test]
fn routes_attach_to_their_server_only() {
    let p = routed_world().policy();
    let names: Vec<&str> = p.ports[0].routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["data-get", "admin"]);
}

#[test]
fn route_authorizations_apply_per_route() {
    let p = routed_world().policy();
    let ops = client(Some(&sa(NS, "ops")), "10.0.0.9");
    let d = http(&p, 8080, &api(), "GET", "/data/1", &[]);
    assert_eq!((d.verdict, d.route.as_deref(), d.authorization.clone()), (Verdict::Allow, Some("data-get"), Some(("AuthorizationPolicy".into(), "api-reads".into()))));
    // Path prefix is element-wise.
    assert_eq!(http(&p, 8080, &api(), "GET", "/data", &[]).verdict, Verdict::Allow);
    let d = http(&p, 8080, &api(), "GET", "/database", &[]);
    assert_eq!((d.verdict, d.http_status, d.reason.as_str()), (Verdict::Deny, Some(404), "no route found for request"));
    // Method is part of the match: POST /data matches no route.
    assert_eq!(http(&p, 8080, &api(), "POST", "/data", &[]).http_status, Some(404));
    // ops may not read data: the Server-wide policy does not reach routes.
    let d = http(&p, 8080, &ops, "GET", "/data/1", &[]);
    assert_eq!((d.verdict, d.http_status, d.reason.as_str()), (Verdict::Deny, Some(403), "unauthorized request on route"));
    assert_eq!(d.route.as_deref(), Some("data-get"));
    // But it does authorize connections (opaque traffic) to the Server.
    assert_eq!(tcp(&p, 8080, &ops).verdict, Verdict::Allow);
    assert_eq!(tcp(&p, 8080, &api()).verdict, Verdict::Deny);
}

#[test]
fn route_precedence_exact_beats_prefix_and_headers_count() {
    let p = routed_world().policy();
    let ops = client(Some(&sa(NS, "ops")), "10.0.0.9");
    // GET /data/admin with the header: the exact match of `admin` wins over the prefix of `data-get`.
    let d = http(&p, 8080, &ops, "GET", "/data/admin", &[("x-admin", "yes")]);
    assert_eq!((d.verdict, d.route.as_deref()), (Verdict::Allow, Some("admin")));
    assert_eq!(http(&p, 8080, &api(), "GET", "/data/admin", &[("x-admin", "yes")]).verdict, Verdict::Deny);
    // Without the header, the prefix route applies.
    assert_eq!(http(&p, 8080, &api(), "GET", "/data/admin", &[]).route.as_deref(), Some("data-get"));
    // Header value must match exactly.
    assert_eq!(http(&p, 8080, &api(), "GET", "/data/admin", &[("x-admin", "YES")]).route.as_deref(), Some("data-get"));
}

#[test]
fn regex_and_query_param_matches_are_whole_value() {
    let p = routed_world().policy();
    let ops = client(Some(&sa(NS, "ops")), "10.0.0.9");
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/admin/42?confirm=1", &[]).verdict, Verdict::Allow);
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/admin/42?confirm=1&x=2", &[]).verdict, Verdict::Allow);
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/admin/42?confirm=10", &[]).http_status, Some(404));
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/admin/42/x?confirm=1", &[]).http_status, Some(404));
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/x/admin/42?confirm=1", &[]).http_status, Some(404));
    assert_eq!(http(&p, 8080, &ops, "DELETE", "/admin/42", &[]).http_status, Some(404));
}

#[test]
fn server_without_routes_authorizes_requests_with_its_own_authorizations() {
    let mut w = World::new();
    server_8080(&mut w);
    w.ap("api", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"}, "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "api"}]}));
    let p = w.policy();
    let d = http(&p, 8080, &api(), "POST", "/anything", &[]);
    assert_eq!((d.verdict, d.route), (Verdict::Allow, None));
    assert!(d.trace.iter().any(|l| l.contains("no HTTPRoute attached")), "{:?}", d.trace);
}

#[test]
fn invalid_route_matches_match_nothing() {
    let mut w = World::new();
    server_8080(&mut w);
    w.route("r", "t", json!({"parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"}],
        "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "("}}, {"path": {"type": "Fuzzy", "value": "/"}}]}]}));
    w.route("gw", "t", json!({"parentRefs": [{"kind": "Server", "name": "db-http"}], "rules": [{}]}));
    let p = w.policy();
    assert_eq!(p.ports[0].routes.len(), 1, "a parentRef without group policy.linkerd.io is not a Server");
    assert!(p.ports[0].routes[0].matches.is_empty());
    assert_eq!(http(&p, 8080, &api(), "GET", "/", &[]).http_status, Some(404));
}

#[test]
fn a_rule_without_matches_matches_everything() {
    let mut w = World::new();
    server_8080(&mut w);
    w.route("all", "t", json!({"parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"}], "rules": [{}]}));
    w.ap("all", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "all"}, "requiredAuthenticationRefs": []}));
    let p = w.policy();
    let d = http(&p, 8080, &client(None, "8.8.8.8"), "PATCH", "/x/y", &[]);
    assert_eq!((d.verdict, d.route.as_deref()), (Verdict::Allow, Some("all")));
}

#[test]
fn compiled_policy_survives_json() {
    let p = routed_world().policy();
    let back: PodInboundPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let ops = client(Some(&sa(NS, "ops")), "10.0.0.9");
    assert_eq!(http(&back, 8080, &ops, "DELETE", "/admin/7?confirm=1", &[]).verdict, Verdict::Allow);
}
