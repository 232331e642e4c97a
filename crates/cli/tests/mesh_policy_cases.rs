//! Inbound authorization policy cases end to end (issue 16 "Must show"), on
//! one cluster: `tessera server`, `tessera identity`, and three meshed pods
//! run by `tessera agent run --mesh` with their real proxies and Python apps:
//! the data store, and two clients, `api` and `other`, that relay a request
//! to the data store through their outbound proxies. An unmeshed client is
//! the test itself (curl, raw TCP). Each case applies its resources with
//! kubectl, waits (polling) until the data store's proxy enforces them, then
//! makes a fixed set of requests and asserts, for each, the exact status,
//! `l5d-proxy-error` header and body, and that the proxy's authorization
//! metrics moved by exactly those requests (every `inbound_*authz*` and
//! `inbound_http_route_not_found` series is compared before and after, so a
//! request counted twice or under the wrong labels fails).
//!
//! 1. A Server on the data store's port and a ServerAuthorization
//!    (v1beta1, `client.meshTLS.serviceAccounts` naming the api's
//!    ServiceAccount): api 200; `other` 403; unmeshed HTTP 403; unmeshed
//!    opaque TCP closed.
//! 2. An HTTPRoute (policy.linkerd.io) on that Server allowing only
//!    `GET /data`, authorized for the api by an AuthorizationPolicy
//!    targeting the route: api `GET /data` 200; `other` `GET /data` 403
//!    (route matched, not authorized); api `POST /data` and `GET /other`
//!    404 `no route found for request` (Linkerd's answer when no route
//!    matches, counted in `inbound_http_route_not_found_total`).
//! 3. No Server, and the data-store namespace annotated
//!    `config.linkerd.io/default-inbound-policy: deny`: everyone refused
//!    (HTTP 403, TCP closed), on the synthetic `default`/`deny` server.
//!    Then `audit`: everyone let through, each request counted as allowed
//!    by `default`/`audit` and in `inbound_http_authz_would_deny_total`
//!    (TCP: `inbound_tcp_authz_would_deny_total`), and logged by the proxy
//!    (warning "audit: inbound policy would deny this").
//! 4. The Server, a NetworkAuthentication holding only the api pod's IP
//!    (`/32`) and an AuthorizationPolicy requiring it: api 200 (its proxy
//!    connects from its pod IP, as a pod does in Kubernetes); `other`, on
//!    another pod IP, 403; unmeshed (from 127.0.0.1) 403 / TCP closed.
//!
//! The namespace annotation applies live: `tessera server` computes each
//! pod's policy from a cache that watches Namespaces as well as the policy
//! kinds, and streams a new snapshot to the pod's proxy whenever the answer
//! changes, so the data store's proxy (started long before) switches to
//! `deny` and then to `audit` with no restart. This test therefore
//! annotates the running pod's namespace and waits for the switch (the time
//! it took is printed); it does not restart the pod.
//!
//! The server runs with its default `--cluster-networks`, Linkerd's list
//! plus 127.0.0.0/8 where the agent puts pods, so case 1's
//! ServerAuthorization (no `networks`: the cluster networks) admits pods.

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::mesh::{
    DATA_STORE_APP, Log, Proc, api_and_data_store, identity, meshed_as, meshed_logged, python, ready_ip_of, samples, workload_namespace,
};
use support::policy::{
    API_ID, API_ONLY_AUTHENTICATION, AUTHZ_FAMILIES, CLIENT_APP, DATA_STORE_SERVER, DEFAULT_ROUTE, NO_ROUTE, OTHER_ID, PLAIN, UNAUTHORIZED, assert_moved, documents,
    meta, mtls, series,
};
use support::{Server, json};

const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";
/// The proxy's warning for a request `audit` lets through.
const AUDIT_LOG: &str = "audit: inbound policy would deny this";

/// Case 1: Linkerd's older shape, a Server and a ServerAuthorization naming
/// the api's ServiceAccount.
const SERVER_AUTHORIZATION: &str = r#"
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: data-store-http, namespace: data-store}
spec:
  podSelector: {matchLabels: {app: data-store}}
  port: 8081
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-sa, namespace: data-store}
spec:
  server: {name: data-store-http}
  client:
    meshTLS:
      serviceAccounts:
      - {name: api, namespace: api}
"#;

/// Case 2: the Server, an HTTPRoute allowing only `GET /data`, and the api's
/// identity authorized on that route (Linkerd's per-route policy shape).
fn http_route() -> String {
    documents(&[DATA_STORE_SERVER, DATA_GET_ROUTE, API_ONLY_AUTHENTICATION, API_GET_DATA])
}

/// Case 2's HTTPRoute: only `GET /data` on the data store's Server.
const DATA_GET_ROUTE: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: data-get, namespace: data-store}
spec:
  parentRefs:
  - {group: policy.linkerd.io, kind: Server, name: data-store-http}
  rules:
  - matches:
    - path: {type: Exact, value: /data}
      method: GET
"#;

/// Case 2's AuthorizationPolicy: `api-only` on the route.
const API_GET_DATA: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-get-data, namespace: data-store}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: data-get}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: api-only}
"#;

/// Case 4: the Server, and an AuthorizationPolicy requiring a
/// NetworkAuthentication that holds only `api_ip` (the api pod's address).
fn network_policy(api_ip: &str) -> String {
    documents(&[DATA_STORE_SERVER, &NETWORK_AUTHORIZATION.replace("API_IP", api_ip)])
}

/// Case 4's NetworkAuthentication (`API_IP/32`) and the AuthorizationPolicy
/// on the data store's Server requiring it.
const NETWORK_AUTHORIZATION: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: api-pod-ip, namespace: data-store}
spec:
  networks:
  - cidr: API_IP/32
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-network, namespace: data-store}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: data-store-http}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: api-pod-ip}
"#;

/// An HTTP answer: status, `l5d-proxy-error`, body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    proxy_error: Option<String>,
    body: String,
}

impl Answer {
    /// A denial as the data store's proxy sends it.
    fn denied(status: u16, reason: &str) -> Self {
        Self { status, proxy_error: Some(reason.to_owned()), body: format!("{reason}\n") }
    }
}

/// The world: the server, the identity service and three meshed pods.
struct Cluster {
    /// Stopped first (fields drop in order), so the agents still reach the server to delete their pods.
    _procs: Vec<Proc>,
    server: Server,
    data_store_ip: String,
    api_ip: String,
    other_ip: String,
    /// The data store agent's (and proxy's) warnings.
    data_store_log: Log,
}

impl Cluster {
    /// The data store's Server admits the api by authorization `KIND/NAME`
    /// and nothing else: the api gets its answer, `other` and an unmeshed
    /// HTTP client the 403, unmeshed opaque TCP is closed, and exactly those
    /// four authz series move by one.
    fn assert_only_the_api_admitted(&self, case: &str, authz_kind: &str, authz_name: &str) {
        let before = self.authz_metrics();
        let api = self.api("GET", "/data");
        assert_eq!((api.status, api.proxy_error.as_deref()), (200, None), "{case}: api {api:?}");
        assert_eq!(json(&api.body)["path"], "/data", "{case}: the data store answered the api: {api:?}");
        assert_eq!(self.other("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: other");
        assert_eq!(self.unmeshed("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: unmeshed HTTP from 127.0.0.1");
        assert_eq!(self.unmeshed_tcp(b"\x00\x01\x02 not http"), b"", "{case}: unmeshed opaque TCP is closed unanswered");
        let after = self.authz_metrics();

        let (target, srv) = (self.target(), meta("srv", "policy.linkerd.io", "server", "data-store-http"));
        let authz = meta("authz", "policy.linkerd.io", authz_kind, authz_name);
        assert_moved(
            case,
            &before,
            &after,
            &[
                (series("inbound_http_authz_allow_total", &[&target, &srv, DEFAULT_ROUTE, &authz, &mtls(API_ID)]), 1.0),
                (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, &mtls(OTHER_ID)]), 1.0),
                (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, PLAIN]), 1.0),
                (series("inbound_tcp_authz_deny_total", &[&target, &srv, PLAIN]), 1.0),
            ],
        );
    }

    fn start() -> Self {
        // The default cluster networks hold the pods' loopback addresses.
        let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &[]);
        api_and_data_store(&server);
        workload_namespace(&server, "other");
        let pki = server.path("identity");
        let (identity_proc, identity_addr) = identity(&server, &pki);
        let anchors = pki.join("ca.crt");
        let python = python();
        // Pod names of their own: addresses derive from node, namespace and
        // pod, so the other mesh tests running beside this one never collide.
        let port = |p: &'static str| ["--port", p];
        let (data_store, data_store_log) =
            meshed_logged(&server, "data-store-c", "data-store", &port("8081"), &identity_addr, &anchors, &[&python, "-c", DATA_STORE_APP]);
        let client = [python.as_str(), "-c", CLIENT_APP, DATA_STORE_URL];
        let api = meshed_as(&server, "api-c", "api", &port("8080"), &identity_addr, &anchors, &client);
        let other = meshed_as(&server, "other-c", "other", &port("8080"), &identity_addr, &anchors, &client);
        // Ready means: a certificate and the pod's first inbound policy.
        let data_store_ip = ready_ip_of(&server, "data-store", "data-store-c");
        let api_ip = ready_ip_of(&server, "api", "api-c");
        let other_ip = ready_ip_of(&server, "other", "other-c");
        let cluster = Self { _procs: vec![data_store, api, other, identity_proc], server, data_store_ip, api_ip, other_ip, data_store_log };
        // No Server yet: the default policy (all-unauthenticated) lets both clients in.
        cluster.wait_for("both clients reach the data store under the default policy", || {
            cluster.api("GET", "/data").status == 200 && cluster.other("GET", "/data").status == 200
        });
        cluster
    }

    /// `method path` from the api pod's app, through both proxies.
    fn api(&self, method: &str, path: &str) -> Answer {
        relayed(&format!("http://{}:8080{path}", self.api_ip), method)
    }

    /// `method path` from the `other` pod's app, through both proxies.
    fn other(&self, method: &str, path: &str) -> Answer {
        relayed(&format!("http://{}:8080{path}", self.other_ip), method)
    }

    /// `method path` straight to the data store's proxy, in plain text (no identity).
    fn unmeshed(&self, method: &str, path: &str) -> Answer {
        http(&format!("http://{}:8081{path}", self.data_store_ip), method)
    }

    /// Opaque bytes straight to the data store's proxy (no identity): what came back before it closed.
    fn unmeshed_tcp(&self, bytes: &[u8]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(format!("{}:8081", self.data_store_ip)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        tcp.write_all(bytes).expect("write");
        let mut got = Vec::new();
        match tcp.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the data store's proxy neither answered nor closed: {e} (read {got:?})"),
        }
        got
    }

    /// The data store proxy's authorization series now.
    fn authz_metrics(&self) -> BTreeMap<String, f64> {
        let text = http(&format!("http://{}:4191/metrics", self.data_store_ip), "GET");
        assert_eq!(text.status, 200, "{}", text.body);
        samples(&text.body, &AUTHZ_FAMILIES)
    }

    /// `target_addr`, `target_ip`, `target_port` of the data store's port.
    fn target(&self) -> String {
        let ip = &self.data_store_ip;
        format!(r#"target_addr="{ip}:8081",target_ip="{ip}",target_port="8081""#)
    }

    fn apply(&self, yaml: &str) {
        let out = self.server.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn delete(&self, yaml: &str) {
        let out = self.server.kubectl_stdin(&["delete", "-f", "-"], yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Polls until `check` holds (the proxy applies a change asynchronously); how long it took.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        self.server.eventually(30, what, || check().then_some(()));
        start.elapsed()
    }
}

/// Through a client pod's relay app: the data store's answer as the client
/// saw it (or, while the app is not up yet, the client proxy's own answer).
fn relayed(url: &str, method: &str) -> Answer {
    let answer = http(url, method);
    let Ok(relayed) = serde_json::from_str::<serde_json::Value>(&answer.body) else { return answer };
    Answer {
        status: answer.status,
        proxy_error: relayed["proxyError"].as_str().map(str::to_owned),
        body: relayed["body"].as_str().unwrap_or_default().to_owned(),
    }
}

/// curl `method url` (POST with a small body): status, `l5d-proxy-error`, body.
fn http(url: &str, method: &str) -> Answer {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "15", "-X", method, "-o", "-", "-w", "\n%{http_code}\n%header{l5d-proxy-error}"]);
    if method == "POST" {
        command.args(["--data", "x"]);
    }
    let out = command.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, header) = text.rsplit_once('\n').unwrap_or(("", ""));
    let (body, code) = rest.rsplit_once('\n').unwrap_or(("", "0"));
    Answer { status: code.trim().parse().unwrap_or(0), proxy_error: (!header.is_empty()).then(|| header.to_owned()), body: body.to_owned() }
}

#[test]
fn server_authorization_http_route_and_default_policies_decide_as_linkerd() {
    let started = Instant::now();
    let cluster = Cluster::start();
    eprintln!("cluster ready in {:?}", started.elapsed());
    server_authorization_admits_the_api_service_account_only(&cluster);
    http_route_admits_get_data_from_the_api_only(&cluster);
    namespace_default_policy_deny_then_audit(&cluster);
    network_authentication_admits_the_api_pod_ip_only(&cluster);
    eprintln!("all cases in {:?}", started.elapsed());
}

fn server_authorization_admits_the_api_service_account_only(c: &Cluster) {
    let case = "Server + ServerAuthorization";
    c.apply(SERVER_AUTHORIZATION);
    let took = c.wait_for("the ServerAuthorization enforced (api in, other out)", || {
        c.api("GET", "/data").status == 200 && c.other("GET", "/data").status == 403
    });
    eprintln!("{case}: enforced {took:?} after kubectl apply returned");

    c.assert_only_the_api_admitted(case, "serverauthorization", "api-sa");

    c.delete(SERVER_AUTHORIZATION);
    c.wait_for("the default policy back once the Server is deleted", || c.other("GET", "/data").status == 200);
}

fn http_route_admits_get_data_from_the_api_only(c: &Cluster) {
    let case = "HTTPRoute GET /data + AuthorizationPolicy";
    c.apply(&http_route());
    let took = c.wait_for("the HTTPRoute and its AuthorizationPolicy enforced", || {
        c.api("GET", "/data").status == 200 && c.other("GET", "/data").status == 403 && c.api("POST", "/data").status == 404
    });
    eprintln!("{case}: enforced {took:?} after kubectl apply returned");

    let before = c.authz_metrics();
    let api = c.api("GET", "/data");
    assert_eq!((api.status, api.proxy_error.as_deref()), (200, None), "{case}: api GET /data {api:?}");
    assert_eq!(json(&api.body)["path"], "/data", "{case}: {api:?}");
    // Route matched, the client not authorized on it: 403.
    assert_eq!(c.other("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: other GET /data");
    assert_eq!(c.unmeshed("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: unmeshed GET /data");
    // No route matches: 404, whoever asks.
    assert_eq!(c.api("POST", "/data"), Answer::denied(404, NO_ROUTE), "{case}: api POST /data");
    assert_eq!(c.api("GET", "/other"), Answer::denied(404, NO_ROUTE), "{case}: api GET /other");
    let after = c.authz_metrics();

    let (target, srv) = (c.target(), meta("srv", "policy.linkerd.io", "server", "data-store-http"));
    let route = meta("route", "policy.linkerd.io", "HTTPRoute", "data-get");
    let authz = meta("authz", "policy.linkerd.io", "authorizationpolicy", "api-get-data");
    assert_moved(
        case,
        &before,
        &after,
        &[
            (series("inbound_http_authz_allow_total", &[&target, &srv, &route, &authz, &mtls(API_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, &route, &mtls(OTHER_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, &route, PLAIN]), 1.0),
            (series("inbound_http_route_not_found_total", &[&target, &srv, &mtls(API_ID)]), 2.0),
        ],
    );

    c.delete(&http_route());
    c.wait_for("the default policy back once the Server is deleted", || {
        c.other("GET", "/data").status == 200 && c.api("POST", "/data").status == 501
    });
}

fn namespace_default_policy_deny_then_audit(c: &Cluster) {
    let annotation = "config.linkerd.io/default-inbound-policy";
    let target = c.target();

    let case = "namespace default policy deny";
    c.server.kubectl_ok(&["annotate", "ns", "data-store", &format!("{annotation}=deny")]);
    let took = c.wait_for("the namespace's deny applied to the running pod", || c.api("GET", "/data").status == 403);
    eprintln!("{case}: the running proxy applied the namespace annotation {took:?} after kubectl annotate returned");
    let before = c.authz_metrics();
    assert_eq!(c.api("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: api");
    assert_eq!(c.other("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: other");
    assert_eq!(c.unmeshed("GET", "/data"), Answer::denied(403, UNAUTHORIZED), "{case}: unmeshed HTTP");
    assert_eq!(c.unmeshed_tcp(b"\x00\x01\x02 not http"), b"", "{case}: unmeshed opaque TCP is closed unanswered");
    let after = c.authz_metrics();
    let srv = meta("srv", "", "default", "deny");
    assert_moved(
        case,
        &before,
        &after,
        &[
            (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, &mtls(API_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, &mtls(OTHER_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, PLAIN]), 1.0),
            (series("inbound_tcp_authz_deny_total", &[&target, &srv, PLAIN]), 1.0),
        ],
    );

    let case = "namespace default policy audit";
    c.server.kubectl_ok(&["annotate", "--overwrite", "ns", "data-store", &format!("{annotation}=audit")]);
    let took = c.wait_for("the namespace's audit applied to the running pod", || c.api("GET", "/data").status == 200);
    eprintln!("{case}: the running proxy applied the namespace annotation {took:?} after kubectl annotate returned");
    let before = c.authz_metrics();
    // The one probe that saw the switch was audited too (those before were
    // denied, logged below warn): its warning must be read before counting.
    c.wait_for("the probe's audit warning", || c.data_store_log.count(AUDIT_LOG) >= 1);
    let logged = c.data_store_log.count(AUDIT_LOG);
    for (who, answer) in [("api", c.api("GET", "/data")), ("other", c.other("GET", "/data")), ("unmeshed", c.unmeshed("GET", "/data"))] {
        assert_eq!((answer.status, answer.proxy_error.as_deref()), (200, None), "{case}: {who} {answer:?}");
        assert_eq!(json(&answer.body)["path"], "/data", "{case}: {who}: the data store answered: {answer:?}");
    }
    // Opaque bytes reach the app (Python's HTTP server answers them with its error page).
    let reply = String::from_utf8_lossy(&c.unmeshed_tcp(b"\x00\x01\x02 not http\r\n\r\n")).into_owned();
    assert!(reply.contains("Error code: 400"), "{case}: opaque TCP forwarded to the app: {reply:?}");
    let after = c.authz_metrics();
    let srv = meta("srv", "", "default", "audit");
    let authz = meta("authz", "", "default", "audit");
    let mut expected = Vec::new();
    for tls in [mtls(API_ID), mtls(OTHER_ID), PLAIN.to_owned()] {
        expected.push((series("inbound_http_authz_allow_total", &[&target, &srv, DEFAULT_ROUTE, &authz, &tls]), 1.0));
        expected.push((series("inbound_http_authz_would_deny_total", &[&target, &srv, DEFAULT_ROUTE, &tls]), 1.0));
    }
    expected.push((series("inbound_tcp_authz_allow_total", &[&target, &srv, &authz, PLAIN]), 1.0));
    expected.push((series("inbound_tcp_authz_would_deny_total", &[&target, &srv, PLAIN]), 1.0));
    assert_moved(case, &before, &after, &expected);
    // Each would-be denial is logged once: three requests and one connection.
    c.wait_for("the proxy's audit warnings", || c.data_store_log.count(AUDIT_LOG) >= logged + 4);
    let text = c.data_store_log.text();
    assert_eq!(c.data_store_log.count(AUDIT_LOG), logged + 4, "{case}: one warning per audited request or connection:\n{text}");
    let warned = text.lines().rfind(|l| l.contains(AUDIT_LOG)).unwrap_or_default();
    assert!(warned.contains("WARN") && warned.contains(&format!("target={}:8081", c.data_store_ip)), "{case}: {warned}");
}

fn network_authentication_admits_the_api_pod_ip_only(c: &Cluster) {
    let case = "NetworkAuthentication api pod IP/32";
    // Case 3 left the namespace on `audit`: back to the server's default.
    c.server.kubectl_ok(&["annotate", "ns", "data-store", "config.linkerd.io/default-inbound-policy-"]);
    assert_ne!(c.api_ip, c.other_ip, "each pod has its own IP");
    let yaml = network_policy(&c.api_ip);
    c.apply(&yaml);
    let took = c.wait_for("the NetworkAuthentication enforced (api's IP in, other's out)", || {
        c.api("GET", "/data").status == 200 && c.other("GET", "/data").status == 403
    });
    eprintln!("{case}: enforced {took:?} after kubectl apply returned");

    c.assert_only_the_api_admitted(case, "authorizationpolicy", "api-network");

    c.delete(&yaml);
    c.wait_for("the default policy back once the Server is deleted", || c.other("GET", "/data").status == 200);
}
