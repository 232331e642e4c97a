//! `tessera policy explain` against a real server: a pod, a Server and an
//! AuthorizationPolicy created with kubectl; allowed and denied clients,
//! connection and HTTP route decisions, the answer following a policy change,
//! and a user without RBAC on servers refused with the server's 403.

mod support;

use std::process::Output;

use support::{Server, json};

const SETUP: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels: {app: db}
  annotations: {linkerd.io/inject: enabled}
spec:
  automountServiceAccountToken: false
  containers:
  - name: db
    image: db
    ports:
    - {name: http, containerPort: 8080}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: db-http, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: db}
  port: http
  proxyProtocol: HTTP/1
";

fn policy_for(sa: &str) -> String {
    format!(
        "
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: db-clients, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: db-http}}
  requiredAuthenticationRefs:
  - {{kind: ServiceAccount, name: {sa}}}
"
    )
}

const ROUTE: &str = "
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: data-get, namespace: shop}
spec:
  parentRefs:
  - {group: policy.linkerd.io, kind: Server, name: db-http}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /data}
      method: GET
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: api, namespace: shop}
spec:
  identityRefs:
  - {kind: ServiceAccount, name: api}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-reads, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: data-get}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: api}
";

/// `tessera policy explain` for port 8080 of shop/db-0.
fn explain(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["policy", "explain", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["-n", "shop", "--pod", "db-0", "--port", "8080"])
        .args(args)
        .output()
        .expect("run tessera policy explain")
}

fn apply(server: &Server, yaml: &str) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn first_line(out: &Output) -> String {
    stdout(out).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn explain_follows_the_policy() {
    let server = Server::start();
    apply(&server, SETUP);
    apply(&server, &policy_for("api"));
    let admin = server.kubeconfig.clone();

    // The api ServiceAccount is authorized; web and unmeshed clients are not.
    let allowed = server.eventually(10, "the policy reaches the server's cache", || {
        let out = explain(&admin, &["--from-serviceaccount", "shop/api"]);
        out.status.success().then_some(out)
    });
    let text = stdout(&allowed);
    assert_eq!(first_line(&allowed), "ALLOWED  authorized by AuthorizationPolicy/db-clients");
    assert!(text.contains("server:        Server db-http\n"), "{text}");
    assert!(text.contains("authorization: AuthorizationPolicy/db-clients\n"), "{text}");
    assert!(text.contains("  ✔ AuthorizationPolicy/db-clients: matched: identity api.shop.serviceaccount.identity.linkerd.cluster.local matches api.shop.serviceaccount.identity.linkerd.cluster.local\n"), "{text}");

    let denied = explain(&admin, &["--from-serviceaccount", "shop/web"]);
    assert_eq!(denied.status.code(), Some(1));
    assert_eq!(first_line(&denied), "DENIED  unauthorized connection on server/db-http");
    assert!(stdout(&denied).contains("  × AuthorizationPolicy/db-clients: identity not matched: web.shop.serviceaccount.identity.linkerd.cluster.local is not in [api.shop.serviceaccount.identity.linkerd.cluster.local]\n"));

    let plain = explain(&admin, &["--unauthenticated", "--from-ip", "10.1.2.3", "-o", "json"]);
    assert_eq!(plain.status.code(), Some(1));
    let answer = json(&stdout(&plain));
    assert_eq!(answer["decision"]["verdict"], "deny");
    assert_eq!(answer["decision"]["server"], "db-http");
    assert_eq!(answer["client"], serde_json::json!({"identity": null, "address": "10.1.2.3"}));
    assert!(answer["decision"]["trace"].as_array().unwrap().iter().any(|l| l == "AuthorizationPolicy/db-clients: identity not matched: it requires mesh TLS and the client has no identity"));

    // A port no Server selects follows the default policy (all-unauthenticated).
    let other_port = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["policy", "explain", "--kubeconfig"])
        .arg(&admin)
        .args(["-n", "shop", "--pod", "db-0", "--port", "9999", "--unauthenticated"])
        .output()
        .unwrap();
    assert_eq!(first_line(&other_port), "ALLOWED  authorized by default/all-unauthenticated");

    // Change the policy: web in, api out.
    apply(&server, &policy_for("web"));
    server.eventually(10, "the changed policy", || explain(&admin, &["--from-serviceaccount", "shop/web"]).status.success().then_some(()));
    assert_eq!(first_line(&explain(&admin, &["--from-serviceaccount", "shop/api"])), "DENIED  unauthorized connection on server/db-http");

    // An HTTPRoute: only GET /data, only from api; other requests match no route (404).
    apply(&server, ROUTE);
    let get = server.eventually(10, "the route", || {
        let out = explain(&admin, &["--from-serviceaccount", "shop/api", "--method", "GET", "--path", "/data/1"]);
        out.status.success().then_some(out)
    });
    assert_eq!(first_line(&get), "ALLOWED  authorized by AuthorizationPolicy/api-reads");
    assert!(stdout(&get).contains("route:         HTTPRoute data-get\n"));
    let post = explain(&admin, &["--from-serviceaccount", "shop/api", "--method", "POST", "--path", "/data/1"]);
    assert_eq!(first_line(&post), "DENIED  no route found for request");
    assert!(stdout(&post).contains("http status:   404\n"));
    // web is authorized on the Server, but requests are decided by the route's policies.
    let web = explain(&admin, &["--from-serviceaccount", "shop/web", "--method", "GET", "--path", "/data"]);
    assert_eq!(first_line(&web), "DENIED  unauthorized request on route");
    assert!(stdout(&web).contains("http status:   403\n"));

    // A user who may not list servers in shop is refused with the server's 403.
    let token = server.kubectl_ok(&["create", "token", "web", "-n", "shop", "--duration", "10m"]);
    let web_user = server.kubeconfig_for_token("web", token.trim());
    let refused = explain(&web_user, &["--unauthenticated"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:web\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\""),
        "{err}"
    );
    // A pod that does not exist: 404.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["policy", "explain", "--kubeconfig"])
        .arg(&admin)
        .args(["-n", "shop", "--pod", "nope", "--port", "80", "--unauthenticated"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("pods \"nope\" not found"));
}
