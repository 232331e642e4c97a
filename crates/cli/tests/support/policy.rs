//! Linkerd policy objects and the relaying client app for the policy tests on
//! the seed 001/004 world (api → data store, see `mesh`): the pieces several
//! tests apply, kept in one place so they cannot drift apart.

use std::collections::BTreeMap;

/// The api's and `other`'s mesh identities.
pub const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
pub const OTHER_ID: &str = "other.other.serviceaccount.identity.linkerd.cluster.local";
/// The proxy's denial reasons (`l5d-proxy-error`).
pub const UNAUTHORIZED: &str = "unauthorized request on route";
pub const NO_ROUTE: &str = "no route found for request";
/// The metric families compared before and after each case.
pub const AUTHZ_FAMILIES: [&str; 3] = ["inbound_http_authz_", "inbound_tcp_authz_", "inbound_http_route_not_found"];
/// An unmeshed client's TLS labels.
pub const PLAIN: &str = r#"tls="no_identity",no_tls_reason="no_tls_from_remote""#;
/// Linkerd's synthetic route of a Server without HTTPRoutes.
pub const DEFAULT_ROUTE: &str = r#"route_group="",route_kind="default",route_name="default""#;

/// A Prometheus series: `name{labels,…}`.
pub fn series(name: &str, labels: &[&str]) -> String {
    format!("{name}{{{}}}", labels.join(","))
}

/// The TLS labels of an mTLS client with identity `id`.
pub fn mtls(id: &str) -> String {
    format!(r#"tls="true",client_id="{id}""#)
}

/// `PREFIX_group`, `PREFIX_kind`, `PREFIX_name`.
pub fn meta(prefix: &str, group: &str, kind: &str, name: &str) -> String {
    format!(r#"{prefix}_group="{group}",{prefix}_kind="{kind}",{prefix}_name="{name}""#)
}

/// Asserts the authz series moved by exactly `expected` (and nothing else moved).
pub fn assert_moved(case: &str, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, expected: &[(String, f64)]) {
    let expected: BTreeMap<String, f64> = expected.iter().cloned().collect();
    assert_eq!(super::mesh::moved(before, after), expected, "{case}: the authorization metrics moved otherwise");
}


/// The data store's Server (policy.linkerd.io/v1beta3): its pods' port 8081,
/// HTTP/1.
pub const DATA_STORE_SERVER: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: data-store-http, namespace: data-store}
spec:
  podSelector: {matchLabels: {app: data-store}}
  port: 8081
  proxyProtocol: HTTP/1
"#;

/// The MeshTLSAuthentication `api-only`: the api's identity and no other.
pub const API_ONLY_AUTHENTICATION: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: api-only, namespace: data-store}
spec:
  identities: ["api.api.serviceaccount.identity.linkerd.cluster.local"]
"#;

/// The AuthorizationPolicy `api-only`: the data store's Server admits what
/// `api-only` authenticates.
pub const API_ONLY_AUTHORIZATION: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-only, namespace: data-store}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: data-store-http}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: api-only}
"#;

/// One YAML stream of the given documents (for `kubectl apply -f -`).
pub fn documents(docs: &[&str]) -> String {
    docs.join("---\n")
}

/// Linkerd's own example shape: the data store's Server, the identities
/// allowed (the api's) and the AuthorizationPolicy tying them together.
pub fn api_only_policy() -> String {
    documents(&[DATA_STORE_SERVER, API_ONLY_AUTHENTICATION, API_ONLY_AUTHORIZATION])
}

/// A client app: relays each GET or POST (path included) to the URL of its
/// first argument through its proxy (HTTP_PROXY), answering with the status
/// that came back and, as JSON, the `l5d-proxy-error` header and the body
/// (599 and the error when no HTTP answer came at all).
pub const CLIENT_APP: &str = r#"
import http.server, json, os, sys, urllib.request, urllib.error
URL = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def relay(self):
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length) if length else None
        req = urllib.request.Request(URL + self.path, data=data, method=self.command)
        try:
            with urllib.request.urlopen(req, timeout=10) as r: status, headers, body = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e: status, headers, body = e.code, e.headers, e.read()
        except Exception as e: status, headers, body = 599, {}, repr(e).encode()
        out = json.dumps({"proxyError": headers.get("l5d-proxy-error"), "body": body.decode("utf-8", "replace")}).encode()
        self.send_response(status); self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
    do_GET = do_POST = relay
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
