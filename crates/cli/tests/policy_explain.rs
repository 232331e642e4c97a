//! `tessera policy explain` against a real server: a pod, a Server and an
//! AuthorizationPolicy created with kubectl; allowed and denied clients,
//! connection and HTTP route decisions, the answer following a policy change,
//! and a user without RBAC on servers refused with the server's 403; the
//! explain and who-can-reach APIs over raw HTTP (exact 400/403/404 Statuses),
//! the `--from/--to` spelling agreeing with the old flags, and who-can-reach
//! listing exactly the authorizations that let clients in.

#![allow(clippy::unwrap_used)]

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

const API_ID: &str = "api.shop.serviceaccount.identity.linkerd.cluster.local";

/// Probes from the cluster network (not 10.9/16) without identity.
const PROBES: &str = "
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: probes, namespace: shop}
spec:
  server: {name: db-http}
  client:
    unauthenticated: true
    networks:
    - cidr: 10.0.0.0/8
      except: [10.9.0.0/16]
";

fn tessera(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).args(["policy"]).args(args).arg("--kubeconfig").arg(kubeconfig).output().expect("run tessera policy")
}

/// The API over raw HTTP: the exact statuses and kube Status messages, and
/// the same answer as the CLI in both its spellings.
#[test]
fn the_api_over_http() {
    let server = Server::start();
    apply(&server, SETUP);
    apply(&server, &policy_for("api"));
    let admin = server.kubeconfig.clone();
    server.eventually(10, "the policy reaches the server's cache", || explain(&admin, &["--from-serviceaccount", "shop/api"]).status.success().then_some(()));

    let ok = "namespace=shop&pod=db-0&port=8080&from=unauthenticated";
    for (query, message) in [
        ("namespace=shop&pod=db-0&port=8080".to_owned(), "the from parameter is required: a mesh identity or \"unauthenticated\""),
        ("namespace=shop&pod=db-0&from=unauthenticated".to_owned(), "the port parameter is required"),
        ("namespace=shop&pod=db-0&port=70000&from=unauthenticated".to_owned(), "invalid port \"70000\": must be a number from 1 to 65535"),
        ("pod=db-0&port=1&from=unauthenticated".to_owned(), "the namespace parameter is required"),
        (format!("{ok}&ip=10.0.0.300"), "invalid ip \"10.0.0.300\": must be an IPv4 or IPv6 address"),
        (format!("{ok}&header=x-a"), "invalid header \"x-a\": expected NAME=VALUE"),
        (format!("{ok}&path=data"), "invalid path \"data\": must be an absolute path starting with /"),
    ] {
        let (status, body) = server.curl_admin("GET", &format!("/tessera/v1/policy/explain?{query}"), &[]);
        let body = json(&body);
        assert_eq!((status, body["kind"].as_str(), body["reason"].as_str(), body["message"].as_str()), (400, Some("Status"), Some("BadRequest"), Some(message)), "{query}");
    }
    let (status, body) = server.curl_admin("GET", "/tessera/v1/policy/who-can-reach?namespace=shop&pod=db-0&port=x", &[]);
    assert_eq!((status, json(&body)["message"].as_str()), (400, Some("invalid port \"x\": must be a number from 1 to 65535")));
    for path in ["explain", "who-can-reach"] {
        let (status, body) = server.curl_admin("GET", &format!("/tessera/v1/policy/{path}?namespace=shop&pod=nope&port=80&from=unauthenticated"), &[]);
        let body = json(&body);
        assert_eq!((status, body["reason"].as_str(), body["message"].as_str()), (404, Some("NotFound"), Some("pods \"nope\" not found")), "{path}");
    }
    // A ServiceAccount token without RBAC on servers: kube's forbidden text.
    let token = server.kubectl_ok(&["create", "token", "web", "-n", "shop", "--duration", "10m"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    for path in ["explain", "who-can-reach"] {
        let (status, body) = server.curl("GET", &format!("/tessera/v1/policy/{path}?{ok}"), &["-H", &bearer]);
        let body = json(&body);
        assert_eq!((status, body["reason"].as_str()), (403, Some("Forbidden")), "{path}");
        assert_eq!(
            body["message"],
            "servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:web\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\""
        );
    }
    let refused = tessera(&server.kubeconfig_for_token("web", token.trim()), &["who-can-reach", "shop/db-0:8080"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:web\""));

    // The raw answer, the old flags and the spelling agree.
    let query = format!("namespace=shop&pod=db-0&port=8080&from={API_ID}&ip=10.1.2.3&method=GET&path=%2Fdata");
    let (status, raw) = server.curl_admin("GET", &format!("/tessera/v1/policy/explain?{query}"), &[]);
    assert_eq!(status, 200, "{raw}");
    let raw = json(&raw);
    assert_eq!(raw["decision"]["verdict"], "allow");
    let old = explain(&admin, &["--from-serviceaccount", "shop/api", "--from-ip", "10.1.2.3", "--method", "GET", "--path", "/data", "-o", "json"]);
    let from = format!("{API_ID}@10.1.2.3");
    let new = tessera(&admin, &["explain", "--from", &from, "--to", "shop/db-0:8080", "--method", "GET", "--path", "/data", "-o", "json"]);
    assert_eq!((old.status.code(), new.status.code()), (Some(0), Some(0)));
    assert_eq!(json(&stdout(&old)), raw);
    assert_eq!(json(&stdout(&new)), raw);
    // Text too, and a denial in both spellings (exit 1).
    let old = explain(&admin, &["--unauthenticated", "--from-ip", "10.1.2.3"]);
    let new = tessera(&admin, &["explain", "--from", "unauthenticated@10.1.2.3", "--to", "shop/db-0:8080"]);
    assert_eq!((old.status.code(), new.status.code()), (Some(1), Some(1)));
    assert_eq!(stdout(&old), stdout(&new));
    assert_eq!(first_line(&new), "DENIED  unauthorized connection on server/db-http");
    // A parse error is the CLI's, before any request.
    let bad = tessera(&admin, &["explain", "--from", "unauthenticated", "--to", "shop/db-0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--to \"shop/db-0\": expected NAMESPACE/POD:PORT"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// `(kind/name, scope, route, unauthenticated, identities, networks)`.
type Row = (String, String, Option<String>, bool, Vec<String>, Vec<String>);

/// The rows of a who-can-reach answer.
fn rows(answer: &serde_json::Value) -> Vec<Row> {
    answer["allowed"]
        .as_array()
        .expect("allowed")
        .iter()
        .map(|a| {
            let strings = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect::<Vec<_>>();
            let networks = a["networks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let except = strings(&n["except"]);
                    if except.is_empty() { n["net"].as_str().unwrap().to_owned() } else { format!("{} except {}", n["net"].as_str().unwrap(), except.join(",")) }
                })
                .collect();
            (
                format!("{}/{}", a["kind"].as_str().unwrap(), a["name"].as_str().unwrap()),
                a["scope"].as_str().unwrap().to_owned(),
                a["route"].as_str().map(str::to_owned),
                a["unauthenticated"].as_bool().unwrap(),
                strings(&a["identities"]),
                networks,
            )
        })
        .collect()
}

/// `tessera policy who-can-reach` lists exactly who is allowed, following
/// ServerAuthorizations, AuthorizationPolicies, routes and default policies.
#[test]
fn who_can_reach_lists_the_allowed() {
    let server = Server::start();
    apply(&server, SETUP);
    apply(&server, &policy_for("api"));
    apply(&server, PROBES);
    let admin = server.kubeconfig.clone();
    let reach = |target: &str| {
        let out = tessera(&admin, &["who-can-reach", target, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        json(&stdout(&out))
    };
    let answer = server.eventually(10, "both authorizations in the cache", || {
        let answer = reach("shop/db-0:8080");
        (answer["allowed"].as_array().map(Vec::len) == Some(2)).then_some(answer)
    });
    // v1beta3's CRD default: accessPolicy deny (adds nobody).
    assert_eq!(answer["server"], serde_json::json!({"name": "db-http", "proxyProtocol": "HTTP/1", "accessPolicy": "deny"}));
    let expected = vec![
        ("ServerAuthorization/probes".to_owned(), "all".to_owned(), None, true, vec![], vec!["10.0.0.0/8 except 10.9.0.0/16".to_owned()]),
        ("AuthorizationPolicy/db-clients".to_owned(), "all".to_owned(), None, false, vec![API_ID.to_owned()], vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]),
    ];
    let mut got = rows(&answer);
    got.sort();
    let mut want = expected;
    want.sort();
    assert_eq!(got, want);

    // Text: a table like `kubectl auth can-i --list`.
    let text = stdout(&tessera(&admin, &["who-can-reach", "shop/db-0:8080"]));
    assert!(text.starts_with("pod:     shop/db-0 port 8080\nserver:  Server db-http (proxyProtocol HTTP/1, accessPolicy deny)\n\nAUTHORIZATION"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ServerAuthorization/probes") && l.contains("any client (unauthenticated)") && l.ends_with("10.0.0.0/8 except 10.9.0.0/16")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("AuthorizationPolicy/db-clients") && l.contains(API_ID) && l.ends_with("0.0.0.0/0, ::/0")), "{text}");

    // With an HTTPRoute the Server's authorizations keep connections; requests go by route.
    apply(&server, ROUTE);
    let answer = server.eventually(10, "the route in the cache", || {
        let answer = reach("shop/db-0:8080");
        (answer["routes"].as_array().map(Vec::len) == Some(1)).then_some(answer)
    });
    assert_eq!(answer["routes"], serde_json::json!([{"name": "data-get", "matches": ["method GET, path prefix /data"]}]));
    let mut got: Vec<_> = rows(&answer).into_iter().map(|r| (r.0, r.1, r.2, r.4)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("AuthorizationPolicy/api-reads".to_owned(), "route".to_owned(), Some("data-get".to_owned()), vec![API_ID.to_owned()]),
            ("AuthorizationPolicy/db-clients".to_owned(), "connections".to_owned(), None, vec![API_ID.to_owned()]),
            ("ServerAuthorization/probes".to_owned(), "connections".to_owned(), None, vec![]),
        ]
    );

    // A port no Server selects: the server's default (all-unauthenticated), then
    // the namespace's annotation (deny: nobody).
    let answer = reach("shop/db-0:9999");
    assert_eq!((answer["server"].is_null(), answer["defaultPolicy"].as_str()), (true, Some("all-unauthenticated")));
    assert_eq!(rows(&answer), vec![("default/all-unauthenticated".to_owned(), "all".to_owned(), None, true, vec![], vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()])]);
    server.kubectl_ok(&["annotate", "namespace", "shop", "config.linkerd.io/default-inbound-policy=deny"]);
    let answer = server.eventually(10, "the annotation in the cache", || {
        let answer = reach("shop/db-0:9999");
        (answer["defaultPolicy"] == "deny").then_some(answer)
    });
    assert_eq!(answer["allowed"], serde_json::json!([]));
    assert_eq!(stdout(&tessera(&admin, &["who-can-reach", "shop/db-0:9999"])), "pod:     shop/db-0 port 9999\nserver:  none (default policy deny)\n\nnobody may reach this port\n");
    // explain agrees: denied by the default policy.
    let denied = tessera(&admin, &["explain", "--from", API_ID, "--to", "shop/db-0:9999"]);
    assert_eq!(denied.status.code(), Some(1));
    assert_eq!(first_line(&denied), "DENIED  unauthorized connection on default/deny");
    assert!(stdout(&denied).contains("server:        none (default policy deny)\n"));
    let bad = tessera(&admin, &["who-can-reach", "shop/db-0:0"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("who-can-reach \"shop/db-0:0\": invalid port \"0\": must be a number from 1 to 65535"));
}

const WEB_POD: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web}
  annotations: {linkerd.io/inject: enabled}
spec:
  serviceAccountName: web
  automountServiceAccountToken: false
  containers:
  - name: web
    image: web
    ports:
    - {name: http, containerPort: 8080}
";

/// The policy APIs over HTTPS with a real pod-bound token (what a proxy
/// holds), attacked: another pod's policy, a repeated `pod=`, an escaped path,
/// a write verb and explain are all refused with kube's exact 403; only the
/// token's own pod's inbound policy is served, under any spelling of the path.
#[test]
fn a_pod_bound_token_reads_only_its_own_pods_inbound_policy() {
    let server = Server::start();
    apply(&server, SETUP);
    apply(&server, WEB_POD);
    let token = server.kubectl_ok(&["create", "token", "web", "-n", "shop", "--bound-object-kind", "Pod", "--bound-object-name", "web-0", "--duration", "10m"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let get = |path: &str| {
        let (status, body) = server.curl("GET", path, &["-H", &bearer]);
        (status, json(&body))
    };
    let own = server.eventually(10, "web-0 reaches the policy cache", || {
        let (status, body) = get("/tessera/v1/policy/inbound?namespace=shop&pod=web-0");
        (status == 200).then_some(body)
    });
    assert_eq!((own["namespace"].as_str(), own["pod"].as_str()), (Some("shop"), Some("web-0")));
    assert_eq!(get("/tessera/v1/policy/%69nbound?namespace=shop&pod=web-0"), (200, own.clone()), "the escaped path is the same API");
    let refused = "servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:web\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\"";
    let inbound_refused = format!("{refused}: the inbound policy of pod \"db-0\" is served to a token bound to that pod or to users who may list servers");
    for path in [
        "/tessera/v1/policy/inbound?namespace=shop&pod=db-0",
        "/tessera/v1/policy/inbound?namespace=shop&pod=db-0&pod=web-0",
        "/tessera/v1/policy/%69nbound?namespace=shop&pod=db-0",
        "/tessera/v1/policy%2Finbound?pod=db-0&namespace=shop&namespace=kube-system",
    ] {
        let (status, body) = get(path);
        assert_eq!((status, body["reason"].as_str(), body["message"].as_str()), (403, Some("Forbidden"), Some(inbound_refused.as_str())), "{path}");
    }
    // Explain and who-can-reach are for people: not even its own pod.
    for path in ["explain", "who-can-reach"] {
        let (status, body) = get(&format!("/tessera/v1/policy/{path}?namespace=shop&pod=web-0&port=8080&from=unauthenticated"));
        assert_eq!((status, body["message"].as_str()), (403, Some(refused)), "{path}");
    }
    // A write verb is not the API at all: refused as a path.
    let (status, body) = server.curl("POST", "/tessera/v1/policy/inbound?namespace=shop&pod=web-0", &["-H", &bearer]);
    assert_eq!(
        (status, json(&body)["message"].as_str()),
        (403, Some("forbidden: User \"system:serviceaccount:shop:web\" cannot post path \"/tessera/v1/policy/inbound\""))
    );
}
