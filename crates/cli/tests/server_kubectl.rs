//! `tessera server` driven by the real kubectl: the Foundation issue's walkthrough.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Server, json};

const MULTI_DOC: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: api
  labels:
    app: web
---
apiVersion: v1
kind: Secret
metadata:
  name: web-config
  namespace: api
data:
  password: aHVudGVyMg==
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-settings
  namespace: api
data:
  mode: fast
"#;

#[test]
fn kubectl_walkthrough() {
    let server = Server::start();
    let ns = server.kubectl_ok(&["get", "ns"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.lines().any(|l| l.starts_with(name) && l.contains("Active")), "{name} missing in:\n{ns}");
    }
    assert_eq!(server.kubectl_ok(&["create", "ns", "api"]).trim(), "namespace/api created");
    assert_eq!(server.kubectl_ok(&["create", "sa", "api", "-n", "api"]).trim(), "serviceaccount/api created");
    let all = server.kubectl_ok(&["get", "sa", "-A"]);
    assert!(all.lines().next().is_some_and(|h| h.split_whitespace().collect::<Vec<_>>() == ["NAMESPACE", "NAME", "SECRETS", "AGE"]));
    assert!(all.lines().any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["api", "api"]), "{all}");
    assert!(all.lines().any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["api", "default"]), "{all}");

    let yaml: serde_yaml::Value = serde_yaml::from_str(&server.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "yaml"])).expect("yaml");
    assert_eq!(yaml["kind"].as_str(), Some("ServiceAccount"));
    assert_eq!(yaml["metadata"]["namespace"].as_str(), Some("api"));
    assert!(yaml["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(yaml["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv.parse::<u64>().is_ok()));

    let described = server.kubectl_ok(&["describe", "sa", "api", "-n", "api"]);
    assert!(described.contains("Name:") && described.contains("api") && described.contains("Namespace:"), "{described}");

    let first = String::from_utf8_lossy(&server.kubectl_stdin(&["apply", "-f", "-"], MULTI_DOC).stdout).into_owned();
    assert_eq!(first.trim(), "serviceaccount/web created\nsecret/web-config created\nconfigmap/web-settings created");
    let second = String::from_utf8_lossy(&server.kubectl_stdin(&["apply", "-f", "-"], MULTI_DOC).stdout).into_owned();
    assert_eq!(second.trim(), "serviceaccount/web unchanged\nsecret/web-config unchanged\nconfigmap/web-settings unchanged");
    let changed = MULTI_DOC.replace("mode: fast", "mode: safe");
    let third = String::from_utf8_lossy(&server.kubectl_stdin(&["apply", "-f", "-"], &changed).stdout).into_owned();
    assert!(third.contains("configmap/web-settings configured"), "{third}");
    assert_eq!(server.kubectl_ok(&["get", "secret", "web-config", "-n", "api", "-o", "jsonpath={.data.password}"]), "aHVudGVyMg==");

    for (kind, patch) in [
        ("json", r#"[{"op":"add","path":"/metadata/labels/j","value":"1"}]"#),
        ("merge", r#"{"metadata":{"labels":{"m":"2"}}}"#),
        ("strategic", r#"{"metadata":{"labels":{"s":"3"}}}"#),
    ] {
        let out = server.kubectl_ok(&["patch", "sa", "web", "-n", "api", "--type", kind, "-p", patch]);
        assert_eq!(out.trim(), "serviceaccount/web patched");
    }
    let labels = json(&server.kubectl_ok(&["get", "sa", "web", "-n", "api", "-o", "jsonpath={.metadata.labels}"]));
    assert_eq!(labels, serde_json::json!({"app": "web", "j": "1", "m": "2", "s": "3"}));

    assert_eq!(server.kubectl_ok(&["delete", "sa", "web", "-n", "api"]).trim(), "serviceaccount \"web\" deleted");
    let err = server.kubectl_err(&["get", "sa", "web", "-n", "api"]);
    assert_eq!(err.trim(), "Error from server (NotFound): serviceaccounts \"web\" not found");

    let ca = server.kubectl_ok(&["get", "configmap", "kube-root-ca.crt", "-n", "api", "-o", r"jsonpath={.data.ca\.crt}"]);
    let kubeconfig: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&server.kubeconfig).expect("kubeconfig")).expect("yaml");
    let ca_b64 = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"].as_str().expect("ca data");
    use base64::Engine as _;
    let kubeconfig_ca = base64::engine::general_purpose::STANDARD.decode(ca_b64).expect("base64");
    assert_eq!(ca.as_bytes(), kubeconfig_ca.as_slice());

    let explained = server.kubectl_ok(&["explain", "serviceaccount"]);
    assert!(explained.contains("KIND:       ServiceAccount"), "{explained}");
    assert!(explained.contains("automountServiceAccountToken\t<boolean>"), "{explained}");
}

#[test]
fn kubectl_get_watch_sees_create_and_delete() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "w"]);
    let mut watch = Command::new("kubectl")
        .args(["get", "sa", "-n", "w", "-w", "--output-watch-events", "--request-timeout=60s"])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no watch line for {what}"));
    assert!(next("header").starts_with("EVENT"));
    // The initial state arrives first; once it has, the watch is established.
    assert!(next("initial default").starts_with("ADDED      default"));
    server.kubectl_ok(&["create", "sa", "watched", "-n", "w"]);
    assert!(next("create").starts_with("ADDED      watched"));
    server.kubectl_ok(&["delete", "sa", "watched", "-n", "w"]);
    assert!(next("delete").starts_with("DELETED    watched"));
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn error_statuses_are_exact() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    let stale = server.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "json"]);
    server.kubectl_ok(&["label", "sa", "api", "-n", "api", "moved=on"]);
    let err = String::from_utf8_lossy(&server.kubectl_stdin(&["replace", "-f", "-"], &stale).stderr).into_owned();
    assert!(err.contains("Operation cannot be fulfilled on serviceaccounts \"api\": the object has been modified; please apply your changes to the latest version and try again"), "{err}");

    let (code, body) = server.curl_admin("PUT", "/api/v1/namespaces/api/serviceaccounts/api", &["-H", "Content-Type: application/json", "--data-binary", &stale]);
    assert_eq!(code, 409);
    let status = json(&body);
    assert_eq!((status["reason"].as_str(), status["code"].as_u64()), (Some("Conflict"), Some(409)));
    assert_eq!(status["details"], serde_json::json!({"name": "api", "kind": "serviceaccounts"}));

    let err = server.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/frobnicators"]);
    assert_eq!(err.trim(), "Error from server (NotFound): the server could not find the requested resource");
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/default/frobnicators", &[]);
    assert_eq!(code, 404);
    assert_eq!(json(&body)["message"], "the server could not find the requested resource");

    let err = server.kubectl_err(&["create", "sa", "Bad_Name", "-n", "api"]);
    assert!(err.contains("ServiceAccount \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"), "{err}");
    let (code, body) = server.curl_admin("POST", "/api/v1/namespaces/api/serviceaccounts", &["-H", "Content-Type: application/json", "--data-binary", r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"Bad_Name"}}"#]);
    assert_eq!(code, 422);
    let status = json(&body);
    assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueInvalid");

    let (code, body) = server.curl_admin("POST", "/api/v1/namespaces/api/serviceaccounts", &["-H", "Content-Type: application/json", "--data-binary", r#"{"apiVersion":"v1","kind":"Ser"#]);
    assert_eq!(code, 400);
    assert_eq!(json(&body)["message"], r#"the object provided is unrecognized (must be of type ServiceAccount): couldn't get version/kind; json parse error: unexpected end of JSON input ({"apiVersion":"v1","kind":"Ser ...)"#);

    let big = server.path("big.json");
    let padding = "x".repeat(3 * 1024 * 1024 + 10);
    std::fs::write(&big, format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{padding}"}}}}"#)).expect("write");
    let (code, body) = server.curl_admin("POST", "/api/v1/namespaces/api/configmaps", &["-H", "Content-Type: application/json", "--data-binary", &format!("@{}", big.display())]);
    assert_eq!(code, 413);
    let status = json(&body);
    assert_eq!(status["message"], "Request entity too large: limit is 3145728");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(server.kubectl_err(&["get", "cm", "big", "-n", "api"]).trim(), "Error from server (NotFound): configmaps \"big\" not found");
}

#[test]
fn anonymous_may_read_discovery_but_nothing_else() {
    let server = Server::start();
    let (code, body) = server.curl("GET", "/version", &[]);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["major"], "1");
    let (code, body) = server.curl("GET", "/api/v1/secrets", &[]);
    assert_eq!(code, 403);
    assert_eq!(json(&body), serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" at the cluster scope",
        "reason": "Forbidden", "details": {"kind": "secrets"}, "code": 403
    }));
    let (code, body) = server.curl("GET", "/api/v1/namespaces", &["-H", "Authorization: Bearer not-a-token"]);
    assert_eq!(code, 401);
    assert_eq!(json(&body)["message"], "Unauthorized");
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "durable"]);
    for i in 0..20 {
        server.kubectl_ok(&["create", "configmap", &format!("cm-{i}"), "-n", "durable", &format!("--from-literal=i={i}")]);
    }
    let dir = server.stop();
    let server = Server::start_in(dir);
    let names = server.kubectl_ok(&["get", "cm", "-n", "durable", "-o", "name"]);
    for i in 0..20 {
        assert!(names.lines().any(|l| l == format!("configmap/cm-{i}")), "cm-{i} lost after kill -9:\n{names}");
    }
    assert_eq!(server.kubectl_ok(&["get", "cm", "cm-7", "-n", "durable", "-o", "jsonpath={.data.i}"]), "7");
}

#[test]
fn namespace_controller_keeps_defaults_and_deletes_content() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "tmp"]);
    server.kubectl_ok(&["wait", "--for=create", "sa/default", "-n", "tmp", "--timeout=20s"]);
    server.kubectl_ok(&["delete", "sa", "default", "-n", "tmp"]);
    server.kubectl_ok(&["wait", "--for=create", "sa/default", "-n", "tmp", "--timeout=20s"]);
    server.kubectl_ok(&["create", "secret", "generic", "s", "-n", "tmp", "--from-literal=a=b"]);
    let out = server.kubectl_ok(&["delete", "ns", "tmp", "--wait=true", "--timeout=30s"]);
    assert_eq!(out.trim(), "namespace \"tmp\" deleted");
    assert_eq!(server.kubectl_err(&["get", "ns", "tmp"]).trim(), "Error from server (NotFound): namespaces \"tmp\" not found");
    let (code, body) = server.curl_admin("GET", "/api/v1/secrets", &[]);
    assert_eq!(code, 200);
    assert!(!body.contains("\"namespace\":\"tmp\""), "content of the deleted namespace remains: {body}");
}

#[test]
fn metrics_count_requests() {
    let server = Server::start();
    server.kubectl_ok(&["get", "sa", "-n", "default"]);
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(metrics.lines().any(|l| l.starts_with(r#"apiserver_request_total{verb="LIST",resource="serviceaccounts",code="200"}"#)), "{metrics}");
    // Unknown paths share one series: clients cannot create series at will.
    for junk in ["aaaa", "bbbb", "cccc"] {
        let _ = server.curl("GET", &format!("/api/v1/namespaces/default/{junk}"), &[]);
    }
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(!metrics.contains("aaaa") && !metrics.contains("bbbb"), "{metrics}");
    assert!(metrics.contains(r#"resource="other""#), "{metrics}");
}
