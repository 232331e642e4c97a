use serde_json::{Value, json};

use super::*;

/// `(field, message)` of every cause.
fn check(kind: &str, version: &str, spec: Value) -> Vec<(String, String)> {
    validate(kind, version, "ns", &json!({"metadata": {"name": "x", "namespace": "ns"}, "spec": spec}))
        .into_iter()
        .map(|c| (c.field, c.message))
        .collect()
}

fn one(field: &str, message: &str) -> Vec<(String, String)> {
    vec![(field.to_owned(), message.to_owned())]
}

#[test]
fn spec_is_required() {
    let causes = validate("Server", "v1beta3", "ns", &json!({"metadata": {"name": "x"}}));
    assert_eq!(causes, vec![Cause { reason: "FieldValueRequired", field: "spec".into(), message: "Required value".into() }]);
}

#[test]
fn linkerd_doc_examples_are_valid() {
    assert!(check("Server", "v1beta3", json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": "http", "proxyProtocol": "HTTP/1"})).is_empty());
    assert!(check("Server", "v1beta1", json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}, "port": 8080})).is_empty());
    assert!(check("ServerAuthorization", "v1beta1", json!({"server": {"name": "web-http"}, "client": {"meshTLS": {"serviceAccounts": [{"name": "web", "namespace": "emojivoto"}]}}})).is_empty());
    assert!(check("ServerAuthorization", "v1beta1", json!({"server": {"selector": {"matchLabels": {"a": "b"}}}, "client": {"unauthenticated": true, "networks": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}})).is_empty());
    assert!(check("AuthorizationPolicy", "v1alpha1", json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "web-http"}, "requiredAuthenticationRefs": [{"name": "web-apps", "kind": "MeshTLSAuthentication", "group": "policy.linkerd.io"}]})).is_empty());
    assert!(check("AuthorizationPolicy", "v1alpha1", json!({"targetRef": {"kind": "Namespace", "name": "ns"}, "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "web"}]})).is_empty());
    assert!(check("MeshTLSAuthentication", "v1alpha1", json!({"identities": ["*.emojivoto.serviceaccount.identity.linkerd.cluster.local", "*"]})).is_empty());
    assert!(check("MeshTLSAuthentication", "v1alpha1", json!({"identityRefs": [{"kind": "ServiceAccount", "name": "web"}, {"kind": "Namespace", "name": "other"}]})).is_empty());
    assert!(check("NetworkAuthentication", "v1alpha1", json!({"networks": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}, {"cidr": "10.0.0.1"}]})).is_empty());
    assert!(check("HTTPRoute", "v1beta3", json!({"parentRefs": [{"name": "authors", "kind": "Server", "group": "policy.linkerd.io"}], "rules": [{"matches": [{"path": {"value": "/authors.json", "type": "Exact"}, "method": "GET"}, {"headers": [{"name": "x-a", "value": "b"}]}]}]})).is_empty());
}

#[test]
fn server_ports_are_names_or_numbers_in_range() {
    let v = "v1beta3";
    let sel = json!({"matchLabels": {"app": "web"}});
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": 0})), one("spec.port", "Invalid value: 0: must be between 1 and 65535, inclusive"));
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": 70000})), one("spec.port", "Invalid value: 70000: must be between 1 and 65535, inclusive"));
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": "Http"})), one("spec.port", "Invalid value: \"Http\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"));
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": "8080"})), one("spec.port", "Invalid value: \"8080\": must contain at least one letter (a-z)"));
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": "a-very-long-port-name"})), one("spec.port", "Invalid value: \"a-very-long-port-name\": must be no more than 15 characters"));
    assert_eq!(check("Server", v, json!({"podSelector": sel, "port": "a--b"})), one("spec.port", "Invalid value: \"a--b\": must not contain consecutive hyphens"));
    assert_eq!(check("Server", v, json!({"podSelector": sel})), one("spec.port", "Required value"));
}

#[test]
fn server_selectors_protocols_and_access_policies() {
    assert_eq!(check("Server", "v1beta1", json!({"port": 80})), one("spec.podSelector", "Required value"));
    assert_eq!(check("Server", "v1beta3", json!({"port": 80})), one("spec", "Invalid value: \"object\": must validate one and only one schema (oneOf). Found none valid"));
    assert_eq!(
        check("Server", "v1beta2", json!({"port": 80, "podSelector": {}, "externalWorkloadSelector": {}})),
        one("spec", "Invalid value: \"object\": must validate one and only one schema (oneOf). Found 2 valid alternatives")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["a"]}]}})),
        one("spec.podSelector.matchExpressions[0].operator", "Unsupported value: \"Equals\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}})),
        one("spec.podSelector.matchExpressions[0].values", "Required value: must be specified when `operator` is 'In' or 'NotIn'")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}})),
        one("spec.podSelector.matchExpressions[0].values", "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {"matchLabels": {"bad key": "v"}}})),
        one("spec.podSelector.matchLabels", "Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {}, "proxyProtocol": "HTTP/3"})),
        one("spec.proxyProtocol", "Unsupported value: \"HTTP/3\": supported values: \"unknown\", \"HTTP/1\", \"HTTP/2\", \"gRPC\", \"opaque\", \"TLS\"")
    );
    assert_eq!(
        check("Server", "v1beta3", json!({"port": 80, "podSelector": {}, "accessPolicy": "allow"})),
        one("spec.accessPolicy", "Unsupported value: \"allow\": supported values: \"all-unauthenticated\", \"all-authenticated\", \"cluster-authenticated\", \"cluster-unauthenticated\", \"deny\", \"audit\"")
    );
}

#[test]
fn server_authorizations_need_a_server_and_a_client() {
    let v = "v1beta1";
    let server = json!({"name": "web"});
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": server, "client": {}})),
        one("spec.client", "Required value: an authorization must name its clients: meshTLS or unauthenticated: true")
    );
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": server, "client": {"unauthenticated": true, "meshTLS": {"identities": ["*"]}}})),
        one("spec.client.unauthenticated", "Invalid value: true: `unauthenticated` must be false if `mesh_tls` is specified")
    );
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": server, "client": {"meshTLS": {"unauthenticatedTLS": true, "identities": ["*"]}}})),
        one("spec.client.meshTLS.unauthenticatedTLS", "Invalid value: true: `unauthenticatedTLS` be false if any `identities` or `service_accounts` is specified")
    );
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": {}, "client": {"unauthenticated": true}})),
        one("spec.server", "Invalid value: \"object\": must validate one and only one schema (oneOf). Found none valid")
    );
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": {"name": "Web"}, "client": {"unauthenticated": true}})),
        one("spec.server.name", "Invalid value: \"Web\": spec.server.name in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'")
    );
    assert_eq!(check("ServerAuthorization", v, json!({"server": server})), one("spec.client", "Required value"));
    assert_eq!(
        check("ServerAuthorization", v, json!({"server": server, "client": {"meshTLS": {"identities": ["web.*"]}}})),
        one("spec.client.meshTLS.identities[0]", r#"Invalid value: "web.*": spec.client.meshTLS.identities[0] in body should match '^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'"#)
    );
}

#[test]
fn networks_must_parse_and_contain_their_exceptions() {
    let v = "v1beta1";
    let spec = |nets: Value| json!({"server": {"name": "web"}, "client": {"unauthenticated": true, "networks": nets}});
    assert_eq!(
        check("ServerAuthorization", v, spec(json!([{"cidr": "10.0.0.0/33"}]))),
        one("spec.client.networks[0].cidr", "Invalid value: \"10.0.0.0/33\": must be a valid CIDR or IP address")
    );
    assert_eq!(
        check("ServerAuthorization", v, spec(json!([{"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}]))),
        one("spec.client.networks[0].except[0]", "Invalid value: \"10.0.0.0/8\": cidr '10.0.0.0/16' is completely negated by exception '10.0.0.0/8'")
    );
    assert_eq!(
        check("ServerAuthorization", v, spec(json!([{"cidr": "10.0.0.0/16", "except": ["192.168.0.1"]}]))),
        one("spec.client.networks[0].except[0]", "Invalid value: \"192.168.0.1\": cidr '10.0.0.0/16' does not include exception '192.168.0.1/32'")
    );
    assert_eq!(check("NetworkAuthentication", "v1alpha1", json!({"networks": []})), one("spec.networks", "Required value: at least one network must be specified"));
    assert_eq!(check("NetworkAuthentication", "v1alpha1", json!({})), one("spec.networks", "Required value"));
}

#[test]
fn authorization_policy_targets_and_authentications() {
    let v = "v1alpha1";
    let authn = json!([{"kind": "MeshTLSAuthentication", "group": "policy.linkerd.io", "name": "a"}]);
    assert_eq!(
        check("AuthorizationPolicy", v, json!({"targetRef": {"kind": "Pod", "name": "p"}, "requiredAuthenticationRefs": authn})),
        one("spec.targetRef.kind", "Invalid value: \"Pod\": invalid targetRef kind: Pod")
    );
    assert_eq!(
        check("AuthorizationPolicy", v, json!({"targetRef": {"kind": "Namespace", "name": "other"}, "requiredAuthenticationRefs": authn})),
        one("spec.targetRef.name", "Invalid value: \"other\": cannot target another namespace: other")
    );
    assert_eq!(
        check("AuthorizationPolicy", v, json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "s"}, "requiredAuthenticationRefs": [{"kind": "Secret", "name": "s"}]})),
        one("spec.requiredAuthenticationRefs[0].kind", "Invalid value: \"Secret\": unsupported authentication kind(s): Secret")
    );
    assert_eq!(
        check("AuthorizationPolicy", v, json!({"targetRef": {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "r"}, "requiredAuthenticationRefs": [
            {"kind": "MeshTLSAuthentication", "group": "policy.linkerd.io", "name": "a"}, {"kind": "ServiceAccount", "name": "b"}]})),
        one("spec.requiredAuthenticationRefs", "Forbidden: a MeshTLSAuthentication and ServiceAccount may not be set together")
    );
    assert_eq!(check("AuthorizationPolicy", v, json!({"requiredAuthenticationRefs": []})), one("spec.targetRef", "Required value"));
}

#[test]
fn mesh_tls_authentication_identities_and_refs() {
    let v = "v1alpha1";
    assert_eq!(check("MeshTLSAuthentication", v, json!({})), one("spec", "Invalid value: \"object\": must validate one and only one schema (oneOf). Found none valid"));
    assert_eq!(
        check("MeshTLSAuthentication", v, json!({"identities": ["foo.*.bar"]})),
        one("spec.identities[0]", "Invalid value: \"foo.*.bar\": id foo.*.bar is invalid: must be '*', '*.' followed by a DNS name, or a DNS name")
    );
    assert_eq!(
        check("MeshTLSAuthentication", v, json!({"identityRefs": [{"kind": "Pod", "name": "p"}]})),
        one("spec.identityRefs[0].kind", "Invalid value: \"Pod\": invalid identity target kind: Pod")
    );
    assert_eq!(
        check("MeshTLSAuthentication", v, json!({"identityRefs": [{"kind": "Namespace", "name": "a", "namespace": "b"}]})),
        one("spec.identityRefs[0].namespace", "Forbidden: Namespace identity_ref is cluster-scoped and cannot have a namespace")
    );
}

#[test]
fn http_route_parents_and_matches() {
    let v = "v1beta3";
    assert_eq!(check("HTTPRoute", v, json!({"parentRefs": [{"kind": "Server"}]})), one("spec.parentRefs[0].name", "Required value"));
    assert_eq!(
        check("HTTPRoute", v, json!({"rules": [{"matches": [{"method": "FETCH"}]}]})),
        one("spec.rules[0].matches[0].method", "Unsupported value: \"FETCH\": supported values: \"GET\", \"HEAD\", \"POST\", \"PUT\", \"DELETE\", \"CONNECT\", \"OPTIONS\", \"TRACE\", \"PATCH\"")
    );
    assert_eq!(
        check("HTTPRoute", v, json!({"rules": [{"matches": [{"path": {"type": "Exact", "value": "data"}}]}]})),
        one("spec.rules[0].matches[0].path.value", "Invalid value: \"data\": must be an absolute path")
    );
    assert_eq!(
        check("HTTPRoute", v, json!({"rules": [{"matches": [{"headers": [{"name": "bad header", "value": "x"}]}]}]})),
        one("spec.rules[0].matches[0].headers[0].name", "Invalid value: \"bad header\": must be a valid HTTP header name")
    );
}

#[test]
fn defaults_follow_the_crds() {
    let mut server = json!({"spec": {"port": 80, "podSelector": {}}});
    default_object("Server", "v1beta3", &mut server);
    assert_eq!(server["spec"]["proxyProtocol"], "unknown");
    assert_eq!(server["spec"]["accessPolicy"], "deny");
    let mut old = json!({"spec": {"port": 80, "podSelector": {}}});
    default_object("Server", "v1beta1", &mut old);
    assert!(old["spec"].get("accessPolicy").is_none());
    let mut route = json!({"spec": {"parentRefs": [{"name": "s", "kind": "Server"}], "rules": [{"matches": [{"method": "GET"}]}]}});
    default_object("HTTPRoute", "v1beta3", &mut route);
    assert_eq!(route["spec"]["parentRefs"][0]["group"], "policy.linkerd.io");
    assert_eq!(route["spec"]["rules"][0]["matches"][0]["path"], json!({"type": "PathPrefix", "value": "/"}));
}

#[test]
fn a_server_selecting_what_another_selects_conflicts_as_in_linkerd() {
    let spec = |v: Value| serde_json::from_value::<ServerSpec>(v).unwrap();
    let web = spec(json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": "http"}));
    let others = [
        ("web-http", spec(json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": "http"}))),
        ("all-8080", spec(json!({"podSelector": {}, "port": 8080}))),
    ];
    let named = || others.iter().map(|(n, s)| (*n, s));
    // The same port and selector under another name: refused, naming it.
    assert_eq!(conflicting_server("web-http-2", &web, named()), Some("web-http"));
    // An update of the Server itself is not a conflict.
    assert_eq!(conflicting_server("web-http", &web, named()), None);
    // Another port, or the port's number instead of its name: admitted (as Linkerd).
    assert_eq!(conflicting_server("x", &spec(json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080})), named()), None);
    // Another selector, even one that overlaps: admitted.
    assert_eq!(conflicting_server("x", &spec(json!({"podSelector": {"matchLabels": {"app": "web", "v": "2"}}, "port": "http"})), named()), None);
    // An empty `matchLabels` is the empty selector.
    assert_eq!(conflicting_server("x", &spec(json!({"podSelector": {"matchLabels": {}}, "port": 8080})), named()), Some("all-8080"));
    // A Server of external workloads selects no pod.
    assert_eq!(conflicting_server("x", &spec(json!({"externalWorkloadSelector": {}, "port": 8080})), named()), None);
}
