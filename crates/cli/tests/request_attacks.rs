//! Issue 12's findings 1–3, run as the attacker ran them: over HTTPS against
//! the real server, with a ServiceAccount token, each asserting what
//! kube-apiserver 1.32 answers.

mod support;

use serde_json::{Value, json};
use support::{Server, json};

/// Creates namespace `ns`, Secrets `mine` and `other` in it, a ServiceAccount
/// `reader`, binds it to `rules` in `ns`, and returns its bearer token.
fn reader_with(server: &Server, ns: &str, rules: Value) -> String {
    server.kubectl_ok(&["create", "ns", ns]);
    for name in ["mine", "other"] {
        server.kubectl_ok(&["create", "secret", "generic", name, "-n", ns, &format!("--from-literal=password={name}-secret")]);
    }
    server.kubectl_ok(&["create", "sa", "reader", "-n", ns]);
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "namespace": ns}, "rules": rules});
    let out = server.kubectl_stdin(&["create", "-f", "-"], &role.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.kubectl_ok(&["create", "rolebinding", "reader", "-n", ns, "--role=reader", &format!("--serviceaccount={ns}:reader")]);
    server.kubectl_ok(&["create", "token", "reader", "-n", ns]).trim().to_owned()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn names(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap_or(&Vec::new()).iter().map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Names of the objects in a watch stream's events.
fn event_names(stream: &str) -> Vec<String> {
    stream.lines().filter(|l| !l.trim().is_empty()).map(|l| json(l)["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned()).collect()
}

fn only_mine() -> Value {
    json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get", "list", "watch"]}])
}

#[test]
fn a_repeated_field_selector_cannot_widen_a_resource_names_rule() {
    let server = Server::start();
    let token = reader_with(&server, "vault", only_mine());
    let auth = bearer(&token);
    // The attack: authorization read the first selector, the handler the last.
    let (code, body) = server.curl("GET", "/api/v1/namespaces/vault/secrets?fieldSelector=metadata.name%3Dmine&fieldSelector=", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(names(&json(&body)), ["mine"], "the first selector is the one both read: only `mine`");
    assert!(!body.contains("other-secret"));
    // The other order asks for everything, and is refused as a list of everything.
    let (code, body) = server.curl("GET", "/api/v1/namespaces/vault/secrets?fieldSelector=&fieldSelector=metadata.name%3Dmine", &["-H", &auth]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "secrets is forbidden: User \"system:serviceaccount:vault:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"vault\""
    );
    // The same with watch: only `mine`'s events.
    let (code, body) = server.curl(
        "GET",
        "/api/v1/namespaces/vault/secrets?watch=1&fieldSelector=metadata.name%3Dmine&fieldSelector=&timeoutSeconds=1",
        &["-H", &auth],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(event_names(&body), ["mine"]);
}

#[test]
fn a_named_watch_streams_only_that_object() {
    let server = Server::start();
    let token = reader_with(&server, "vault", only_mine());
    let auth = bearer(&token);
    let (code, body) = server.curl("GET", "/api/v1/watch/namespaces/vault/secrets/mine?timeoutSeconds=1", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(event_names(&body), ["mine"]);
    assert!(!body.contains("other-secret"));
    // `?watch=1` on an object's path is a get of that object (kube-apiserver ignores watch there).
    let (code, body) = server.curl("GET", "/api/v1/namespaces/vault/secrets/mine?watch=1", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    let secret = json(&body);
    assert_eq!((secret["kind"].as_str(), secret["metadata"]["name"].as_str()), (Some("Secret"), Some("mine")));
    // A named watch whose selector names another object is refused, not widened.
    let (code, body) = server.curl("GET", "/api/v1/watch/namespaces/vault/secrets/mine?fieldSelector=metadata.name%3Dother", &["-H", &auth]);
    assert_eq!((code, json(&body)["message"].as_str()), (400, Some("fieldSelector metadata.name doesn't match requested name")), "{body}");
    // And a named watch of another object is refused outright.
    let (code, body) = server.curl("GET", "/api/v1/watch/namespaces/vault/secrets/other?timeoutSeconds=1", &["-H", &auth]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "secrets \"other\" is forbidden: User \"system:serviceaccount:vault:reader\" cannot watch resource \"secrets\" in API group \"\" in the namespace \"vault\""
    );
}

#[test]
fn view_in_a_namespace_watches_that_namespace_only() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "team"]);
    server.kubectl_ok(&["create", "ns", "elsewhere"]);
    server.kubectl_ok(&["create", "sa", "viewer", "-n", "team"]);
    server.kubectl_ok(&["create", "rolebinding", "viewer", "-n", "team", "--clusterrole=view", "--serviceaccount=team:viewer"]);
    let token = server.kubectl_ok(&["create", "token", "viewer", "-n", "team"]);
    let auth = bearer(token.trim());
    let (code, body) = server.curl("GET", "/api/v1/watch/namespaces/team?timeoutSeconds=1", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(event_names(&body), ["team"], "a watch of the namespace object `team` sees only it");
    let (code, body) = server.curl("GET", "/api/v1/watch/namespaces?timeoutSeconds=1", &["-H", &auth]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "namespaces is forbidden: User \"system:serviceaccount:team:viewer\" cannot watch resource \"namespaces\" in API group \"\" at the cluster scope"
    );
}

#[test]
fn a_post_to_an_object_path_is_405_and_creates_nothing() {
    let server = Server::start();
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["create", "get"]}]);
    let token = reader_with(&server, "cms", rules);
    let auth = bearer(&token);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "anything"}, "data": {"k": "v"}}).to_string();
    let (code, response) = server.curl(
        "POST",
        "/api/v1/namespaces/cms/configmaps/allowed",
        // HTTP/1.1: over HTTP/2, curl reports an answer that arrives before it
        // finished sending the body as a stream error (a curl quirk, not ours).
        &["--http1.1", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &body],
    );
    assert_eq!(code, 405, "{response}");
    assert_eq!(
        json(&response),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "the server does not allow this method on the requested resource", "reason": "MethodNotAllowed", "details": {}, "code": 405})
    );
    let err = server.kubectl_err(&["get", "configmap", "anything", "-n", "cms"]);
    assert!(err.contains("configmaps \"anything\" not found"), "{err}");
    // A create of the collection is not a create of `allowed`: resourceNames cannot allow it.
    let (code, response) =
        server.curl("POST", "/api/v1/namespaces/cms/configmaps", &["--http1.1", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &body]);
    assert_eq!(code, 403, "{response}");
    // PUT and PATCH of a collection: 405 for someone allowed to write there.
    for method in ["PUT", "PATCH"] {
        let (code, response) = server.curl_admin(method, "/api/v1/namespaces/cms/configmaps", &["--http1.1", "-H", "Content-Type: application/merge-patch+json", "--data-binary", "{}"]);
        assert_eq!((code, json(&response)["reason"].as_str()), (405, Some("MethodNotAllowed")), "{method}: {response}");
    }
}
