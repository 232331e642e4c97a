//! Linkerd's policy resources (`policy.linkerd.io`) served by `tessera
//! server`, driven with the real kubectl: Linkerd's documentation YAML
//! (`policy_docs/`, sources in its README) applies unmodified; `get` shows
//! the CRDs' printer columns; every served version reads the same objects;
//! `explain` works; bad input gets a 422 naming the field; watch sees
//! changes; the `view`/`edit` roles cover the kinds.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Server, json};

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/policy_docs");

fn doc(name: &str) -> String {
    format!("{DOCS}/{name}")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kubectl get` output as rows of whitespace-separated cells (headers first).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()).collect()
}

/// `kubectl apply -f -` with another kubeconfig.
fn apply_as(kubeconfig: &std::path::Path, yaml: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

#[test]
fn linkerd_docs_policy_yaml_applies_and_reads_back() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "emojivoto"]);
    server.kubectl_ok(&["create", "ns", "booksapp"]);

    // Discovery lists every kind with Linkerd's short names.
    let resources = server.kubectl_ok(&["api-resources", "--api-group=policy.linkerd.io", "--no-headers"]);
    let mut kinds: Vec<Vec<String>> = table(&resources);
    kinds.sort();
    assert_eq!(kinds, [
        vec!["authorizationpolicies", "authzpolicy", "policy.linkerd.io/v1alpha1", "true", "AuthorizationPolicy"],
        vec!["httproutes", "policy.linkerd.io/v1beta3", "true", "HTTPRoute"],
        vec!["meshtlsauthentications", "meshtlsauthn", "policy.linkerd.io/v1alpha1", "true", "MeshTLSAuthentication"],
        vec!["networkauthentications", "netauthn,networkauthn", "policy.linkerd.io/v1alpha1", "true", "NetworkAuthentication"],
        vec!["serverauthorizations", "saz,serverauthz,srvauthz", "policy.linkerd.io/v1beta1", "true", "ServerAuthorization"],
        vec!["servers", "srv", "policy.linkerd.io/v1beta3", "true", "Server"],
    ]);
    let versions = server.kubectl_ok(&["api-versions"]);
    let policy: Vec<&str> = versions.lines().filter(|l| l.starts_with("policy.linkerd.io/")).collect();
    assert_eq!(policy, ["policy.linkerd.io/v1alpha1", "policy.linkerd.io/v1beta1", "policy.linkerd.io/v1beta2", "policy.linkerd.io/v1beta3"]);

    // The documentation's YAML, unmodified.
    let applied = |file: &str| server.kubectl_ok(&["apply", "-f", &doc(file)]);
    assert_eq!(applied("servers.yaml"), "server.policy.linkerd.io/emoji-grpc created\nserver.policy.linkerd.io/backend-services created\n");
    assert_eq!(
        applied("serverauthorizations.yaml"),
        "serverauthorization.policy.linkerd.io/emoji-grpc created\nserverauthorization.policy.linkerd.io/web-public created\nserverauthorization.policy.linkerd.io/prom-prometheus created\n"
    );
    assert_eq!(applied("network-authentication.yaml"), "networkauthentication.policy.linkerd.io/cluster-network created\n");
    assert_eq!(applied("mesh-tls-authentication-identity-refs.yaml"), "meshtlsauthentication.policy.linkerd.io/authors-get-authn created\n");
    assert_eq!(applied("authorization-policy-namespace.yaml"), "authorizationpolicy.policy.linkerd.io/authors-policy created\n");
    assert_eq!(applied("per-route-server.yaml"), "server.policy.linkerd.io/authors-server created\n");
    assert_eq!(applied("per-route-get.yaml"), "httproute.policy.linkerd.io/authors-get-route created\n");
    // The same MeshTLSAuthentication, now by identities: apply swaps the oneOf.
    assert_eq!(
        applied("per-route-get-policy.yaml"),
        "authorizationpolicy.policy.linkerd.io/authors-get-policy created\nmeshtlsauthentication.policy.linkerd.io/authors-get-authn configured\n"
    );
    assert_eq!(
        applied("per-route-probe.yaml"),
        "httproute.policy.linkerd.io/authors-probe-route created\nnetworkauthentication.policy.linkerd.io/authors-probe-authn created\nauthorizationpolicy.policy.linkerd.io/authors-probe-policy created\n"
    );
    assert_eq!(applied("servers.yaml"), "server.policy.linkerd.io/emoji-grpc unchanged\nserver.policy.linkerd.io/backend-services unchanged\n");
    assert_eq!(
        server.kubectl_ok(&["apply", "--server-side", "-f", &doc("network-authentication.yaml")]),
        "networkauthentication.policy.linkerd.io/cluster-network serverside-applied\n"
    );
    let authn = json(&server.kubectl_ok(&["get", "meshtlsauthn", "authors-get-authn", "-n", "booksapp", "-o", "json"]));
    assert!(authn["spec"].get("identityRefs").is_none(), "{authn}");
    assert_eq!(authn["spec"]["identities"][0], "books.booksapp.serviceaccount.identity.linkerd.cluster.local");

    // `get` columns are the CRDs' additionalPrinterColumns (v1beta3 Server adds ACCESS POLICY,
    // defaulted to deny on read as kube defaults custom resources).
    assert_eq!(table(&server.kubectl_ok(&["get", "servers", "-n", "emojivoto"])), [
        vec!["NAME", "PORT", "PROTOCOL", "ACCESS POLICY"],
        vec!["backend-services", "8080", "HTTP/2", "deny"],
        vec!["emoji-grpc", "grpc", "gRPC", "deny"],
    ]);
    assert_eq!(table(&server.kubectl_ok(&["get", "servers.v1beta1.policy.linkerd.io", "-n", "emojivoto"])), [
        vec!["NAME", "PORT", "PROTOCOL"],
        vec!["backend-services", "8080", "HTTP/2"],
        vec!["emoji-grpc", "grpc", "gRPC"],
    ]);
    assert_eq!(table(&server.kubectl_ok(&["get", "saz", "-n", "emojivoto"])), [
        vec!["NAME", "SERVER"],
        vec!["emoji-grpc"], // a selector, no name: kube's CRD table cell is null, printed empty
        vec!["prom-prometheus", "prom"],
        vec!["web-public", "web-http"],
    ]);
    let routes = table(&server.kubectl_ok(&["get", "httproutes", "-n", "booksapp"]));
    assert_eq!(routes[0], ["NAME", "HOSTNAMES", "AGE"]);
    assert_eq!(routes[1][0], "authors-get-route");
    assert_eq!(routes[1].len(), 2, "no hostnames: an empty cell, then the age: {routes:?}");

    // One storage, every version: created as v1beta1, read as v1beta3 and v1alpha1.
    let v3 = json(&server.kubectl_ok(&["get", "servers.v1beta3.policy.linkerd.io", "backend-services", "-n", "emojivoto", "-o", "json"]));
    assert_eq!((v3["apiVersion"].as_str(), v3["spec"]["accessPolicy"].as_str()), (Some("policy.linkerd.io/v1beta3"), Some("deny")));
    let v1 = json(&server.kubectl_ok(&["get", "servers.v1beta1.policy.linkerd.io", "backend-services", "-n", "emojivoto", "-o", "json"]));
    assert_eq!((v1["apiVersion"].as_str(), v1["spec"]["proxyProtocol"].as_str()), (Some("policy.linkerd.io/v1beta1"), Some("HTTP/2")));
    assert!(v1["spec"].get("accessPolicy").is_none(), "v1beta1 has no accessPolicy: {v1}");
    let list = json(&server.kubectl_ok(&["get", "servers.v1alpha1.policy.linkerd.io", "-n", "emojivoto", "-o", "json"]));
    assert!(list["items"].as_array().expect("items").iter().all(|i| i["apiVersion"] == "policy.linkerd.io/v1alpha1"), "{list}");
    let route = json(&server.kubectl_ok(&["get", "httproutes", "authors-get-route", "-n", "booksapp", "-o", "json"]));
    assert_eq!(route["apiVersion"], "policy.linkerd.io/v1beta3");
    assert_eq!(route["spec"]["rules"][0]["matches"][0]["path"], serde_json::json!({"type": "PathPrefix", "value": "/authors.json"}));
    // A patch through another version than the one that wrote the object.
    server.kubectl_ok(&["patch", "servers.v1beta3.policy.linkerd.io", "emoji-grpc", "-n", "emojivoto", "--type=merge", "-p", r#"{"spec":{"accessPolicy":"audit"}}"#]);
    assert_eq!(server.kubectl_ok(&["get", "srv", "emoji-grpc", "-n", "emojivoto", "-o", "jsonpath={.spec.accessPolicy}"]), "audit");

    // explain reads the OpenAPI schema.
    let explain = server.kubectl_ok(&["explain", "servers.spec.port"]);
    assert!(explain.contains("GROUP:      policy.linkerd.io") && explain.contains("KIND:       Server") && explain.contains("VERSION:    v1beta3"), "{explain}");
    assert!(explain.contains("A port name or number. Must exist in a pod spec."), "{explain}");
    let explain = server.kubectl_ok(&["explain", "authorizationpolicies.spec.targetRef"]);
    assert!(explain.contains("FIELDS:") && explain.contains("kind") && explain.contains("name"), "{explain}");
}

#[test]
fn invalid_policy_resources_get_422_naming_the_field() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "web"]);
    let bad = |yaml: &str| {
        let out = server.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(!out.status.success(), "accepted: {yaml}");
        stderr(&out)
    };
    let err = bad("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: bad, namespace: web}\nspec: {podSelector: {matchLabels: {app: web}}, port: 0}\n");
    assert_eq!(err.trim(), r#"The Server "bad" is invalid: spec.port: Invalid value: 0: must be between 1 and 65535, inclusive"#);
    let err = bad("apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: bad, namespace: web}\nspec: {podSelector: {matchExpressions: [{key: app, operator: Has}]}, port: Http}\n");
    assert_eq!(
        err.trim(),
        r#"The Server "bad" is invalid: 
* spec.port: Invalid value: "Http": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)
* spec.podSelector.matchExpressions[0].operator: Unsupported value: "Has": supported values: "In", "NotIn", "Exists", "DoesNotExist""#
    );
    let err = bad("apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: bad, namespace: web}\nspec: {server: {name: web}, client: {}}\n");
    assert_eq!(
        err.trim(),
        r#"The ServerAuthorization "bad" is invalid: spec.client: Required value: an authorization must name its clients: meshTLS or unauthenticated: true"#
    );
    let err = bad("apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: web}\nspec: {targetRef: {kind: Pod, name: p}, requiredAuthenticationRefs: [{kind: Secret, name: s}]}\n");
    assert_eq!(
        err.trim(),
        r#"The AuthorizationPolicy "bad" is invalid: 
* spec.targetRef.kind: Invalid value: "Pod": invalid targetRef kind: Pod
* spec.requiredAuthenticationRefs[0].kind: Invalid value: "Secret": unsupported authentication kind(s): Secret"#
    );
    let err = bad("apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: bad, namespace: web}\nspec: {networks: [{cidr: 10.0.0.0/16, except: [192.168.0.0/24]}]}\n");
    assert_eq!(
        err.trim(),
        r#"The NetworkAuthentication "bad" is invalid: spec.networks[0].except[0]: Invalid value: "192.168.0.0/24": cidr '10.0.0.0/16' does not include exception '192.168.0.0/24'"#
    );
    // The raw Status: 422 Invalid with the cause's field.
    let body = r#"{"apiVersion":"policy.linkerd.io/v1beta3","kind":"Server","metadata":{"name":"raw"},"spec":{"podSelector":{},"port":70000}}"#;
    let (code, text) = server.curl_admin("POST", "/apis/policy.linkerd.io/v1beta3/namespaces/web/servers", &["-H", "Content-Type: application/json", "-d", body]);
    assert_eq!(code, 422, "{text}");
    let status = json(&text);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["group"], "policy.linkerd.io");
    assert_eq!(status["details"]["kind"], "Server");
    assert_eq!(status["details"]["causes"], serde_json::json!([{"reason": "FieldValueInvalid", "message": "Invalid value: 70000: must be between 1 and 65535, inclusive", "field": "spec.port"}]));
    assert_eq!(server.kubectl_ok(&["get", "servers", "-n", "web", "-o", "name"]), "", "nothing was stored");
}

/// Linkerd's policy webhook refuses a Server that selects the port and
/// pods another Server of its namespace selects: kube-apiserver's 400 for a
/// webhook denial, with no reason, after the 422s of validation.
#[test]
fn a_second_server_for_the_same_pods_and_port_is_refused_as_linkerds_webhook_does() {
    const DENIED: &str = r#"admission webhook "linkerd-policy-validator.linkerd.io" denied the request: identical server spec already exists"#;
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "web"]);
    let server_yaml = |name: &str, port: &str| {
        format!("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: {name}, namespace: web}}\nspec: {{podSelector: {{matchLabels: {{app: web}}}}, port: {port}}}\n")
    };
    // One file, two Servers: kubectl writes them one after the other and the
    // second is checked against the first.
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &format!("{}---\n{}", server_yaml("web-http", "http"), server_yaml("web-http-copy", "http")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("server.policy.linkerd.io/web-http created"), "{out:?}");
    assert!(stderr(&out).contains(&format!("error when creating \"STDIN\": {DENIED}")), "{}", stderr(&out));
    // Re-applying the Server itself, changed, is an update, not a conflict;
    // the same pods on another port are another Server.
    let apply_ok = |yaml: &str| {
        let out = server.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "{yaml}: {}", stderr(&out));
    };
    apply_ok(&server_yaml("web-http", "http").replace("port: http}", "port: http, proxyProtocol: HTTP/2}"));
    apply_ok(&server_yaml("web-admin", "9990"));
    // Moving that one onto the first one's port is refused too.
    let out = server.kubectl(&["patch", "server", "web-admin", "-n", "web", "--type", "merge", "-p", r#"{"spec":{"port":"http"}}"#]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(DENIED), "{}", stderr(&out));
    // The Status as kube-apiserver sends a webhook's denial: 400, no reason.
    let body = r#"{"apiVersion":"policy.linkerd.io/v1beta3","kind":"Server","metadata":{"name":"raw"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"port":"http"}}"#;
    let (code, text) = server.curl_admin("POST", "/apis/policy.linkerd.io/v1beta3/namespaces/web/servers", &["-H", "Content-Type: application/json", "-d", body]);
    assert_eq!(code, 400, "{text}");
    assert_eq!(json(&text), serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": DENIED, "code": 400}));
    // Validation comes first: an invalid copy gets its 422, not the denial.
    let invalid = body.replace(r#""port":"http""#, r#""port":0"#);
    let (code, _) = server.curl_admin("POST", "/apis/policy.linkerd.io/v1beta3/namespaces/web/servers", &["-H", "Content-Type: application/json", "-d", &invalid]);
    assert_eq!(code, 422);
    let names = server.kubectl_ok(&["get", "servers", "-n", "web", "-o", "custom-columns=NAME:.metadata.name,PORT:.spec.port,PROTOCOL:.spec.proxyProtocol", "--no-headers"]);
    assert_eq!(table(&names), [vec!["web-admin", "9990", "unknown"], vec!["web-http", "http", "HTTP/2"]]);
}

#[test]
fn watch_sees_policy_changes_and_roles_cover_the_kinds() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "web"]);
    let mut watch = Command::new("kubectl")
        .args(["get", "servers", "-n", "web", "--watch", "--output-watch-events", "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name,API:.object.apiVersion", "--no-headers"])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let server_yaml = "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: web-http, namespace: web}\nspec: {podSelector: {matchLabels: {app: web}}, port: http}\n";
    // The watch is established once a first change arrives: keep writing until it does.
    let first = server.eventually(20, "the watch to see the Server", || {
        let _ = server.kubectl_stdin(&["apply", "-f", "-"], server_yaml);
        rx.recv_timeout(Duration::from_millis(200)).ok()
    });
    let cells: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
    assert_eq!(cells, ["ADDED", "web-http", "policy.linkerd.io/v1beta3"], "written as v1beta1, watched as v1beta3");
    server.kubectl_ok(&["delete", "server", "web-http", "-n", "web"]);
    let deleted = rx.recv_timeout(Duration::from_secs(10)).expect("a DELETED event");
    assert_eq!(deleted.split_whitespace().collect::<Vec<_>>(), ["DELETED", "web-http", "policy.linkerd.io/v1beta3"]);
    let _ = watch.kill();
    let _ = watch.wait();

    // view lists but cannot create; edit creates.
    let kubeconfig_for = |name: &str| {
        server.kubectl_ok(&["create", "sa", name, "-n", "web"]);
        let token = server.kubectl_ok(&["create", "token", name, "-n", "web", "--duration", "1h"]);
        server.kubeconfig_for_token(&format!("web-{name}"), token.trim())
    };
    server.kubectl_ok(&["create", "rolebinding", "viewer", "-n", "web", "--clusterrole=view", "--serviceaccount=web:viewer"]);
    server.kubectl_ok(&["create", "rolebinding", "editor", "-n", "web", "--clusterrole=edit", "--serviceaccount=web:editor"]);
    let viewer = kubeconfig_for("viewer");
    let editor = kubeconfig_for("editor");
    let can_i = |kubeconfig: &std::path::Path, verb: &str, resource: &str| {
        let out = server.kubectl_as(kubeconfig, &["auth", "can-i", verb, resource, "-n", "web"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    server.eventually(10, "aggregated view/edit roles", || (can_i(&viewer, "list", "servers.policy.linkerd.io") == "yes").then_some(()));
    let listed = server.kubectl_as(&viewer, &["get", "servers", "-n", "web"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(can_i(&viewer, "create", "servers.policy.linkerd.io"), "no");
    let out = apply_as(&viewer, server_yaml);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        r#"Error from server (Forbidden): error when creating "STDIN": servers.policy.linkerd.io is forbidden: User "system:serviceaccount:web:viewer" cannot create resource "servers" in API group "policy.linkerd.io" in the namespace "web""#
    );
    for resource in ["servers", "serverauthorizations", "authorizationpolicies", "meshtlsauthentications", "networkauthentications", "httproutes"] {
        assert_eq!(can_i(&editor, "create", &format!("{resource}.policy.linkerd.io")), "yes", "{resource}");
        assert_eq!(can_i(&viewer, "watch", &format!("{resource}.policy.linkerd.io")), "yes", "{resource}");
    }
    let out = apply_as(&editor, server_yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "server.policy.linkerd.io/web-http created\n");
}
