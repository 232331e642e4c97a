//! RBAC end to end with the real kubectl: the seed-001 `can-i` flow, access
//! reviews with exact reasons, escalation prevention, impersonation, names and
//! subresources, aggregation, and ServiceAccount tokens hitting 403.

mod support;

use serde_json::{Value, json};
use support::{Server, json};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn create_json(server: &Server, object: Value) -> Value {
    let out = server.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &object.to_string());
    assert!(out.status.success(), "create failed: {}", stderr(&out));
    json(&stdout(&out))
}

/// A ServiceAccount and a kubeconfig that authenticates as it.
fn service_account(server: &Server, ns: &str, name: &str) -> std::path::PathBuf {
    let _ = server.kubectl(&["create", "ns", ns]);
    server.kubectl_ok(&["create", "sa", name, "-n", ns]);
    let token = server.kubectl_ok(&["create", "token", name, "-n", ns, "--duration", "1h"]);
    server.kubeconfig_for_token(&format!("{ns}-{name}"), &token)
}

#[test]
fn seed_001_can_i_flow() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    let can_i = ["auth", "can-i", "create", "tokenreviews", "--as=system:serviceaccount:api:api"];
    let before = server.kubectl(&can_i);
    assert_eq!(before.status.code(), Some(1));
    assert_eq!(stdout(&before).trim(), "no");
    assert!(stderr(&before).contains("Warning: resource 'tokenreviews' is not namespace scoped in group 'authentication.k8s.io'"), "{}", stderr(&before));
    let created = server.kubectl_ok(&["create", "clusterrolebinding", "api-auth-delegator", "--clusterrole=system:auth-delegator", "--serviceaccount=api:api"]);
    assert_eq!(created.trim(), "clusterrolebinding.rbac.authorization.k8s.io/api-auth-delegator created");
    let after = server.kubectl(&can_i);
    assert_eq!((after.status.code(), stdout(&after).trim()), (Some(0), "yes"));

    let sar = create_json(&server, json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:api:api", "groups": ["system:serviceaccounts", "system:serviceaccounts:api", "system:authenticated"],
                 "resourceAttributes": {"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}}
    }));
    assert_eq!(sar["status"], json!({
        "allowed": true,
        "reason": "RBAC: allowed by ClusterRoleBinding \"api-auth-delegator\" of ClusterRole \"system:auth-delegator\" to ServiceAccount \"api/api\""
    }));

    let list = server.kubectl_ok(&["auth", "can-i", "--list", "-n", "api", "--as=system:serviceaccount:api:api"]);
    let mut lines = list.lines();
    assert_eq!(lines.next().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]));
    assert!(list.lines().any(|l| l.starts_with("tokenreviews.authentication.k8s.io") && l.ends_with("[create]")), "{list}");
    assert!(list.lines().any(|l| l.contains("[/openid/v1/jwks]") && l.ends_with("[get]")), "{list}");

    let whoami = server.kubectl_ok(&["auth", "whoami", "--as=system:serviceaccount:api:api"]);
    assert!(whoami.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Username", "system:serviceaccount:api:api"]), "{whoami}");
}

#[test]
fn access_reviews_with_role_bindings_and_non_resource_urls() {
    let server = Server::start();
    server.kubectl_ok(&["create", "role", "pod-reader", "-n", "default", "--verb=get,list", "--resource=pods"]);
    server.kubectl_ok(&["create", "rolebinding", "read-pods", "-n", "default", "--role=pod-reader", "--user=jane"]);
    let review = |attrs: Value| create_json(&server, json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "jane", "resourceAttributes": attrs}}));
    assert_eq!(review(json!({"namespace": "default", "resource": "pods", "verb": "list"}))["status"], json!({
        "allowed": true, "reason": "RBAC: allowed by RoleBinding \"read-pods/default\" of Role \"pod-reader\" to User \"jane\""
    }));
    assert_eq!(review(json!({"namespace": "kube-system", "resource": "pods", "verb": "list"}))["status"], json!({"allowed": false}));
    let nonresource = create_json(&server, json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "jane", "nonResourceAttributes": {"path": "/healthz", "verb": "get"}}}));
    assert_eq!(nonresource["status"], json!({"allowed": false}));
    let lsar = create_json(&server, json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview", "metadata": {"namespace": "default"},
        "spec": {"user": "jane", "resourceAttributes": {"namespace": "default", "resource": "pods", "verb": "get"}}}));
    assert_eq!(lsar["status"]["allowed"], true);
    assert_eq!(server.kubectl_ok(&["auth", "can-i", "list", "pods", "-n", "default", "--as=jane"]).trim(), "yes");
    assert_eq!(server.kubectl(&["auth", "can-i", "delete", "pods", "-n", "default", "--as=jane"]).status.code(), Some(1));
}

/// A review body is decoded straight into its struct when it can be; every
/// other body takes the generic path, and its refusal keeps its wording.
#[test]
fn access_review_bodies_are_refused_as_before_whichever_path_decodes_them() {
    let server = Server::start();
    let post = |query: &str, body: &str| {
        let path = format!("/apis/authorization.k8s.io/v1/subjectaccessreviews{query}");
        let (code, text) = server.curl_admin("POST", &path, &["-H", "Content-Type: application/json", "-d", body]);
        let reply = json(&text);
        (code, reply["message"].as_str().map(str::to_owned).unwrap_or_else(|| reply["status"].to_string()))
    };
    let spec = r#""spec": {"user": "jane", "resourceAttributes": {"resource": "pods", "verb": "get"}}"#;
    let cannot = "SubjectAccessReview in version \"v1\" cannot be handled as a SubjectAccessReview";
    let cases = [
        ("", format!(r#"{{"apiVersion": "v1", {spec}}}"#), 400, "the API version in the data (v1) does not match the expected API version (authorization.k8s.io/v1)".to_owned()),
        ("", format!(r#"{{"kind": "TokenReview", {spec}}}"#), 400, "the object provided is unrecognized (must be of type SubjectAccessReview): kind TokenReview does not match".to_owned()),
        ("", format!(r#"{{"apiVersion": "", "kind": "", {spec}}}"#), 201, r#"{"allowed":false}"#.to_owned()),
        ("?fieldValidation=Strict", r#"{"spec": {"user": "jane", "bogus": 1, "resourceAttributes": {"verb": "get"}}}"#.to_owned(), 400, format!(r#"{cannot}: strict decoding error: unknown field "spec.bogus""#)),
        ("", r#"{"spec": {"user": "jane", "bogus": 1, "resourceAttributes": {"verb": "get"}}}"#.to_owned(), 201, r#"{"allowed":false}"#.to_owned()),
        ("", r#"{"spec": {"user": 5}}"#.to_owned(), 400, format!("{cannot}: invalid type: integer `5`, expected a string")),
        // Decoded, then refused by kube's validation, every error at once.
        ("", r#"{"spec": {}}"#.to_owned(), 422, r#"SubjectAccessReview.authorization.k8s.io "" is invalid: [spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified, spec.user: Invalid value: "": at least one of user or group must be specified]"#.to_owned()),
        ("", r#"{"spec": {"user": "jane""#.to_owned(), 400, r#"the object provided is unrecognized (must be of type SubjectAccessReview): couldn't get version/kind; json parse error: unexpected end of JSON input ({"spec": {"user": "jane" ...)"#.to_owned()),
        ("", format!(r#"{{{spec}}} {{}}"#), 400, "the object provided is unrecognized (must be of type SubjectAccessReview): couldn't get version/kind; json parse error: trailing characters at line 1 column 87 ({\"spec\": {\"user\": \"jane\", \"res ...)".to_owned()),
    ];
    for (query, body, code, message) in cases {
        assert_eq!(post(query, &body), (code, message), "{body}");
    }
}

/// A protobuf review (client-go's typed clients may send one) takes the
/// generic decode and gets the answer a JSON one gets.
#[test]
fn a_protobuf_access_review_is_answered_as_its_json_twin() {
    let server = Server::start();
    server.kubectl_ok(&["create", "role", "pod-reader", "-n", "default", "--verb=get,list", "--resource=pods"]);
    server.kubectl_ok(&["create", "rolebinding", "read-pods", "-n", "default", "--role=pod-reader", "--user=jane"]);
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "jane", "resourceAttributes": {"namespace": "default", "resource": "pods", "verb": "list"}}});
    // The same review in Kubernetes protobuf (`generated.proto`), by hand: the
    // server's encoder writes only responses.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let length = u8::try_from(bytes.len()).expect("short field");
        assert!(length < 0x80 && number < 16);
        [vec![(number << 3) | 2, length], bytes.to_vec()].concat()
    }
    let attributes = [field(1, b"default"), field(2, b"list"), field(5, b"pods")].concat();
    let raw = field(2, &[field(1, &attributes), field(3, b"jane")].concat());
    let type_meta = [field(1, b"authorization.k8s.io/v1"), field(2, b"SubjectAccessReview")].concat();
    let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (code, as_json) = server.curl_admin("POST", path, &["-H", "Content-Type: application/json", "-d", &review.to_string()]);
    assert_eq!(code, 201, "{as_json}");
    let file = server.path("review.pb");
    std::fs::write(&file, body).expect("write");
    let data = format!("@{}", file.display());
    let (code, as_protobuf) = server.curl_admin("POST", path, &["-H", "Content-Type: application/vnd.kubernetes.protobuf", "-H", "Accept: application/json", "--data-binary", &data]);
    assert_eq!(code, 201, "{as_protobuf}");
    assert_eq!(json(&as_protobuf), json(&as_json));
    assert_eq!(json(&as_json)["status"], json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"read-pods/default\" of Role \"pod-reader\" to User \"jane\""}));
}

#[test]
fn escalation_needs_escalate_or_bind() {
    let server = Server::start();
    let lim = service_account(&server, "api", "lim");
    // lim may manage roles and bindings in api, but holds nothing else.
    server.kubectl_ok(&["create", "role", "rbac-manager", "-n", "api", "--verb=create,get,list", "--resource=roles,rolebindings"]);
    server.kubectl_ok(&["create", "rolebinding", "lim-rbac", "-n", "api", "--role=rbac-manager", "--serviceaccount=api:lim"]);
    let groups = r#"(groups=["system:serviceaccounts" "system:serviceaccounts:api" "system:authenticated"])"#;

    let out = server.kubectl_as(&lim, &["create", "role", "secret-reader", "-n", "api", "--verb=get", "--resource=secrets"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), format!("Error from server (Forbidden): roles.rbac.authorization.k8s.io \"secret-reader\" is forbidden: user \"system:serviceaccount:api:lim\" {groups} is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}"));
    let out = server.kubectl_as(&lim, &["create", "rolebinding", "gimme", "-n", "api", "--clusterrole=cluster-admin", "--serviceaccount=api:lim"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), format!("error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io \"gimme\" is forbidden: user \"system:serviceaccount:api:lim\" {groups} is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}}\n{{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}}"));
    // Nothing was created by the refused requests.
    assert!(server.kubectl_err(&["get", "role", "secret-reader", "-n", "api"]).contains("NotFound"));

    // A role within lim's own permissions needs no escalate.
    let out = server.kubectl_as(&lim, &["create", "role", "role-lister", "-n", "api", "--verb=list", "--resource=roles"]);
    assert!(out.status.success(), "{}", stderr(&out));

    server.kubectl_ok(&["create", "role", "escalator", "-n", "api", "--verb=escalate", "--resource=roles"]);
    server.kubectl_ok(&["create", "rolebinding", "lim-escalate", "-n", "api", "--role=escalator", "--serviceaccount=api:lim"]);
    let out = server.kubectl_as(&lim, &["create", "role", "secret-reader", "-n", "api", "--verb=get", "--resource=secrets"]);
    assert!(out.status.success(), "{}", stderr(&out));

    server.kubectl_ok(&["create", "clusterrole", "bind-admin", "--verb=bind", "--resource=clusterroles", "--resource-name=cluster-admin"]);
    server.kubectl_ok(&["create", "rolebinding", "lim-bind", "-n", "api", "--clusterrole=bind-admin", "--serviceaccount=api:lim"]);
    let out = server.kubectl_as(&lim, &["create", "rolebinding", "gimme", "-n", "api", "--clusterrole=cluster-admin", "--serviceaccount=api:lim"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn impersonation_requires_the_impersonate_verb() {
    let server = Server::start();
    let api = service_account(&server, "api", "api");
    // kubectl reads discovery first; when impersonation is refused even for
    // discovery, it cannot show the message. Warm its discovery cache as the
    // ServiceAccount itself, as a user's earlier kubectl calls would have.
    assert!(server.kubectl_as(&api, &["api-resources", "-o", "name"]).status.success());
    let out = server.kubectl_as(&api, &["get", "sa", "-n", "api", "--as=admin"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), "Error from server (Forbidden): users \"admin\" is forbidden: User \"system:serviceaccount:api:api\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope");
    server.kubectl_ok(&["create", "clusterrole", "impersonate-jane", "--verb=impersonate", "--resource=users", "--resource-name=jane"]);
    server.kubectl_ok(&["create", "clusterrolebinding", "api-impersonates-jane", "--clusterrole=impersonate-jane", "--serviceaccount=api:api"]);
    let whoami = server.kubectl_as(&api, &["auth", "whoami", "--as=jane"]);
    assert!(stdout(&whoami).lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Username", "jane"]), "{}", stderr(&whoami));
    // Impersonating a group needs its own grant; kubectl's whoami words any 403 its own way…
    let group = server.kubectl_as(&api, &["auth", "whoami", "--as=jane", "--as-group=system:masters"]);
    assert!(!group.status.success());
    // …so the server's exact answer is checked directly.
    let token = server.kubectl_ok(&["create", "token", "api", "-n", "api"]);
    let (code, body) = server.curl("GET", "/api/v1/namespaces/api/serviceaccounts", &[
        "-H", &format!("Authorization: Bearer {}", token.trim()), "-H", "Impersonate-User: jane", "-H", "Impersonate-Group: system:masters",
    ]);
    assert_eq!(code, 403);
    assert_eq!(json(&body)["message"], "groups \"system:masters\" is forbidden: User \"system:serviceaccount:api:api\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope");
}

#[test]
fn resource_names_and_subresources() {
    let server = Server::start();
    let reader = service_account(&server, "app", "reader");
    server.kubectl_ok(&["create", "secret", "generic", "a", "-n", "app", "--from-literal=k=v"]);
    server.kubectl_ok(&["create", "secret", "generic", "b", "-n", "app", "--from-literal=k=v"]);
    server.kubectl_ok(&["create", "role", "read-a", "-n", "app", "--verb=get", "--resource=secrets", "--resource-name=a"]);
    server.kubectl_ok(&["create", "role", "mint-tokens", "-n", "app", "--verb=create", "--resource=serviceaccounts/token"]);
    server.kubectl_ok(&["create", "rolebinding", "reader-a", "-n", "app", "--role=read-a", "--serviceaccount=app:reader"]);
    assert!(server.kubectl_as(&reader, &["get", "secret", "a", "-n", "app"]).status.success());
    let out = server.kubectl_as(&reader, &["get", "secret", "b", "-n", "app"]);
    assert_eq!(stderr(&out).trim(), "Error from server (Forbidden): secrets \"b\" is forbidden: User \"system:serviceaccount:app:reader\" cannot get resource \"secrets\" in API group \"\" in the namespace \"app\"");
    let out = server.kubectl_as(&reader, &["create", "token", "reader", "-n", "app"]);
    assert!(stderr(&out).contains("cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"app\""), "{}", stderr(&out));
    server.kubectl_ok(&["create", "rolebinding", "reader-mint", "-n", "app", "--role=mint-tokens", "--serviceaccount=app:reader"]);
    assert!(server.kubectl_as(&reader, &["create", "token", "reader", "-n", "app"]).status.success());
    // Creating the token subresource does not grant reading the ServiceAccount itself.
    assert!(!server.kubectl_as(&reader, &["get", "sa", "reader", "-n", "app"]).status.success());
}

#[test]
fn aggregation_follows_labelled_cluster_roles() {
    let server = Server::start();
    let widget_rule = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widget-viewer", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}, "rules": [widget_rule]});
    create_json(&server, role);
    let has_rule = |role: &str| {
        let obj = json(&server.kubectl_ok(&["get", "clusterrole", role, "-o", "json"]));
        obj["rules"].as_array().is_some_and(|rules| rules.contains(&widget_rule))
    };
    // The aggregation controller follows ClusterRole changes through a watch.
    server.eventually(20, "view to include the widget rule", || has_rule("view").then_some(()));
    server.eventually(20, "edit (which aggregates view) to include it", || has_rule("edit").then_some(()));
    server.kubectl_ok(&["label", "clusterrole", "widget-viewer", "rbac.authorization.k8s.io/aggregate-to-view-"]);
    server.eventually(20, "view to drop the widget rule", || (!has_rule("view")).then_some(()));
}

#[test]
fn bootstrap_policy_is_kubernetes() {
    let server = Server::start();
    let names = server.kubectl_ok(&["get", "clusterroles", "-o", "name"]);
    for role in ["cluster-admin", "admin", "edit", "view", "system:auth-delegator", "system:basic-user", "system:discovery", "system:public-info-viewer", "system:service-account-issuer-discovery"] {
        assert!(names.lines().any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{role}")), "{role} missing");
    }
    let delegator = json(&server.kubectl_ok(&["get", "clusterrole", "system:auth-delegator", "-o", "json"]));
    assert_eq!(delegator["rules"], json!([
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
    ]));
    let binding = json(&server.kubectl_ok(&["get", "clusterrolebinding", "cluster-admin", "-o", "json"]));
    assert_eq!(binding["subjects"], json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]));
    // A user edit of a non-autoupdate object survives a restart.
    server.kubectl_ok(&["annotate", "clusterrole", "view", "rbac.authorization.kubernetes.io/autoupdate=false", "--overwrite"]);
    server.kubectl_ok(&["label", "clusterrole", "view", "team=mine"]);
    let dir = server.stop();
    let server = Server::start_in(dir);
    assert_eq!(server.kubectl_ok(&["get", "clusterrole", "view", "-o", "jsonpath={.metadata.labels.team}"]), "mine");
}

#[test]
fn namespace_grants_do_not_reach_other_namespaces() {
    let server = Server::start();
    let tenant = service_account(&server, "foo", "tenant");
    server.kubectl_ok(&["create", "ns", "bar"]);
    server.kubectl_ok(&["create", "rolebinding", "tenant-admin", "-n", "foo", "--clusterrole=cluster-admin", "--serviceaccount=foo:tenant"]);
    let token = server.kubectl_ok(&["create", "token", "tenant", "-n", "foo"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    for (method, path) in [("GET", "/api/v1/namespaces/foo/namespaces"), ("GET", "/api/v1/namespaces/foo/namespaces/bar"), ("DELETE", "/api/v1/namespaces/foo/namespaces/bar")] {
        let (code, body) = server.curl(method, path, &["-H", &bearer]);
        assert_eq!(code, 404, "{method} {path}: {body}");
    }
    assert!(server.kubectl_ok(&["get", "ns", "bar", "-o", "jsonpath={.status.phase}"]).contains("Active"));
    // Its own namespace object stays reachable through the namespace's grants.
    let (code, _) = server.curl("GET", "/api/v1/namespaces/foo", &["-H", &bearer]);
    assert_eq!(code, 200);
    drop(tenant);
}

#[test]
fn aggregation_rules_need_escalate() {
    let server = Server::start();
    let writer = service_account(&server, "ops", "writer");
    server.kubectl_ok(&["create", "clusterrole", "role-writer", "--verb=create,get,list,patch,update", "--resource=clusterroles"]);
    server.kubectl_ok(&["create", "clusterrolebinding", "writer-roles", "--clusterrole=role-writer", "--serviceaccount=ops:writer"]);
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "sneaky", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "aggregationRule": {}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    let path = server.path("sneaky.json");
    std::fs::write(&path, role.to_string()).expect("write");
    let out = server.kubectl_as(&writer, &["create", "-f", &path.display().to_string()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("clusterroles.rbac.authorization.k8s.io \"sneaky\" is forbidden: must have cluster-admin privileges to use the aggregationRule"), "{}", stderr(&out));
    // Without the aggregation rule the same rules are an escalation too.
    let plain = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "sneaky"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    std::fs::write(&path, plain.to_string()).expect("write");
    let out = server.kubectl_as(&writer, &["create", "-f", &path.display().to_string()]);
    assert!(stderr(&out).contains("is attempting to grant RBAC permissions not currently held"), "{}", stderr(&out));
    // And view never gained a wildcard.
    let view = json(&server.kubectl_ok(&["get", "clusterrole", "view", "-o", "json"]));
    assert!(!view["rules"].as_array().expect("rules").iter().any(|r| r["verbs"] == json!(["*"])));
}

#[test]
fn explain_and_who_can_on_a_large_policy() {
    let server = Server::start();
    for ns in ["team-a", "team-b"] {
        server.kubectl_ok(&["create", "ns", ns]);
    }
    // 220 bindings in one apply: 200 ServiceAccounts get view in their team's namespace, 20 users edit.
    let mut items = Vec::new();
    for i in 0..200 {
        let ns = if i % 2 == 0 { "team-a" } else { "team-b" };
        items.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("view-{i}"), "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns}]}));
    }
    for i in 0..20 {
        items.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("editor-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("user-{i}")}]}));
    }
    let docs: Vec<String> = items.iter().map(Value::to_string).collect();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &docs.join("\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let tessera = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera")).arg("rbac").args(args).arg("--kubeconfig").arg(&server.kubeconfig).output().expect("tessera rbac")
    };

    let allowed = tessera(&["explain", "--as", "system:serviceaccount:team-a:sa-4", "list", "pods", "-n", "team-a"]);
    assert_eq!(allowed.status.code(), Some(0));
    let text = stdout(&allowed);
    assert!(text.starts_with("ALLOWED  RBAC: allowed by RoleBinding \"view-4/team-a\" of ClusterRole \"view\" to ServiceAccount \"sa-4/team-a\"\n"), "{text}");
    assert!(text.contains("✔ RoleBinding \"view-4/team-a\" → ClusterRole \"view\""), "{text}");

    let denied = tessera(&["explain", "--as", "system:serviceaccount:team-a:sa-4", "delete", "pods", "-n", "team-b"]);
    assert_eq!(denied.status.code(), Some(1));
    let text = stdout(&denied);
    assert!(text.starts_with("DENIED  no RBAC rule allows it\n"), "{text}");
    assert!(text.contains("would allow it, but only in namespace \"team-a\"") || text.contains("verb \"delete\" not in"), "{text}");

    let who = stdout(&tessera(&["who-can", "list", "pods", "-n", "team-b"]));
    let lines: Vec<&str> = who.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["KIND", "SUBJECT", "BINDING", "ROLE"]);
    assert_eq!(lines.iter().filter(|l| l.starts_with("ServiceAccount")).count(), 100, "{who}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("User")).count(), 20, "{who}");
    assert!(lines.iter().all(|l| !l.contains("team-a/")), "{who}");
    assert!(lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Group", "system:masters", "ClusterRoleBinding", "\"cluster-admin\"", "ClusterRole", "\"cluster-admin\""]), "{who}");

    // Resource names resolve through discovery, as kubectl resolves them:
    // `tokenreviews` is `tokenreviews.authentication.k8s.io`, `sa` and the
    // singular work, and an unknown name is an error, not an empty table.
    server.kubectl_ok(&["create", "clusterrolebinding", "reviewer", "--clusterrole=system:auth-delegator", "--serviceaccount=team-a:sa-0"]);
    for resource in ["tokenreviews", "tokenreview", "tokenreviews.authentication.k8s.io"] {
        let out = tessera(&["who-can", "create", resource]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let who = stdout(&out);
        assert!(who.lines().any(|l| l.starts_with("ServiceAccount") && l.contains("\"reviewer\"")), "{resource}: {who}");
    }
    let explained = tessera(&["explain", "--as", "system:serviceaccount:team-a:sa-0", "create", "tokenreviews"]);
    assert_eq!(explained.status.code(), Some(0), "{}", stdout(&explained));
    assert!(stdout(&explained).starts_with("ALLOWED  RBAC: allowed by ClusterRoleBinding \"reviewer\" of ClusterRole \"system:auth-delegator\" to ServiceAccount \"sa-0/team-a\"\n"), "{}", stdout(&explained));
    let sa = stdout(&tessera(&["who-can", "get", "sa", "-n", "team-a"]));
    assert_eq!(sa.lines().filter(|l| l.starts_with("ServiceAccount")).count(), 100, "{sa}");
    for (resource, message) in [
        ("deployments", "the server doesn't have a resource type \"deployments\""),
        ("tokenreviews.rbac.authorization.k8s.io", "the server doesn't have a resource type \"tokenreviews.rbac.authorization.k8s.io\""),
    ] {
        let out = tessera(&["who-can", "create", resource]);
        assert_ne!(out.status.code(), Some(0), "{resource}");
        assert!(stderr(&out).contains(message), "{resource}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{resource}: no table");
    }
}

#[test]
fn rules_reviews_list_each_rule_once_and_x509_users_carry_a_credential_id() {
    let server = Server::start();
    service_account(&server, "dup", "sa");
    // The same role reached through two bindings.
    for binding in ["view-1", "view-2"] {
        server.kubectl_ok(&["create", "rolebinding", binding, "-n", "dup", "--clusterrole=view", "--serviceaccount=dup:sa"]);
    }
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "dup"}});
    let (code, body) = server.curl_admin(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        &["-H", "Content-Type: application/json", "-H", "Impersonate-User: system:serviceaccount:dup:sa", "-d", &review.to_string()],
    );
    assert_eq!(code, 201, "{body}");
    let status = json(&body)["status"].clone();
    for list in ["resourceRules", "nonResourceRules"] {
        let rules = status[list].as_array().cloned().unwrap_or_default();
        assert!(!rules.is_empty(), "{list}: {status}");
        for (i, rule) in rules.iter().enumerate() {
            assert!(!rules[..i].contains(rule), "{list} lists {rule} twice: {status}");
        }
    }

    // kube-apiserver 1.32 names an x509 credential by the certificate's SHA-256.
    let whoami = json(&server.kubectl_ok(&["auth", "whoami", "-o", "json"]));
    let (cert, _) = server.admin_cert();
    let digest = std::process::Command::new("python3")
        .args(["-c", "import hashlib,ssl,sys; print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())"])
        .arg(&cert)
        .output()
        .expect("python3");
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_owned();
    assert_eq!(digest.len(), 64, "sha256 of the admin certificate");
    assert_eq!(
        whoami["status"]["userInfo"]["extra"]["authentication.kubernetes.io/credential-id"],
        json!([format!("X509SHA256={digest}")]),
        "{whoami}"
    );
}
