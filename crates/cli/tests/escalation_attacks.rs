//! Issue 12, findings 4, 5 and 8 (impersonation), as the attacker runs them
//! over HTTP against the real server: granting TokenRequest or exec through a
//! held subresource wildcard, the 18⁴ Role that used to stall the server, and
//! an undecodable impersonation header that used to be skipped.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use support::{Server, json};

/// A ServiceAccount in `ns` (created if need be) and a bearer token for it.
fn service_account(server: &Server, ns: &str, name: &str) -> String {
    let _ = server.kubectl(&["create", "ns", ns]);
    server.kubectl_ok(&["create", "sa", name, "-n", ns]);
    server.kubectl_ok(&["create", "token", name, "-n", ns, "--duration", "1h"]).trim().to_owned()
}

/// Applies objects as admin.
fn apply(server: &Server, objects: &[Value]) {
    let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &docs.join("\n"));
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn role(ns: &str, name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules})
}

fn bind_sa(ns: &str, name: &str, kind: &str, role: &str, sa: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
}

/// curl with raw argument bytes (header values that are not UTF-8). Returns (status, body).
fn curl_raw(server: &Server, method: &str, path: &str, args: Vec<OsString>) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(server.ca_file())
        .args(args)
        .arg(format!("{}{path}", server.url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// POSTs JSON with a bearer token. (HTTP/1.1: over HTTP/2, curl sometimes
/// fails on an answer the server sends before reading the body.)
fn post_as(server: &Server, token: &str, path: &str, body: &Value) -> (u16, String) {
    server.curl("POST", path, &["--http1.1", "-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/json", "-d", &body.to_string()])
}

fn sa_groups(ns: &str) -> String {
    format!(r#"(groups=["system:serviceaccounts" "system:serviceaccounts:{ns}" "system:authenticated"])"#)
}

/// The Forbidden Status kube-apiserver answers a Role create with.
fn forbidden_role(name: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Forbidden",
        "details": {"name": name, "group": "rbac.authorization.k8s.io", "kind": "roles"}, "code": 403})
}

#[test]
fn subresource_wildcards_do_not_grant_token_requests_or_exec() {
    let server = Server::start();
    let mallory = service_account(&server, "att", "mallory");
    let trent = service_account(&server, "att", "trent");
    apply(&server, &[
        // mallory may write Roles and holds every verb kube knows on serviceaccounts/* and pods/*…
        role("att", "wildcard-holder", json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create", "get"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/*", "pods/*"], "verbs": ["create", "get"]},
        ])),
        bind_sa("att", "mallory-wildcards", "Role", "wildcard-holder", "mallory"),
        // …trent holds create on */token, which kube reads as a wildcard.
        role("att", "token-holder", json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["*/token"], "verbs": ["create"]},
        ])),
        bind_sa("att", "trent-tokens", "Role", "token-holder", "trent"),
    ]);
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/att/roles";
    let prefix = format!("is forbidden: user \"system:serviceaccount:att:mallory\" {} is attempting to grant RBAC permissions not currently held:\n", sa_groups("att"));

    // (a) serviceaccounts/* does not cover serviceaccounts/token.
    let minter = role("att", "minter", json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]));
    let (code, body) = post_as(&server, &mallory, roles, &minter);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body), forbidden_role("minter", &format!(
        "roles.rbac.authorization.k8s.io \"minter\" {prefix}{{APIGroups:[\"\"], Resources:[\"serviceaccounts/token\"], Verbs:[\"create\"]}}"
    )));
    // pods/* does not cover pods/exec.
    let execer = role("att", "execer", json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}]));
    let (code, body) = post_as(&server, &mallory, roles, &execer);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body), forbidden_role("execer", &format!(
        "roles.rbac.authorization.k8s.io \"execer\" {prefix}{{APIGroups:[\"\"], Resources:[\"pods/exec\"], Verbs:[\"create\" \"get\"]}}"
    )));
    // Neither Role exists, and the authorizer agrees: mallory cannot request a token herself.
    for name in ["minter", "execer"] {
        assert!(server.kubectl_err(&["get", "role", name, "-n", "att"]).contains("NotFound"));
    }
    let (code, body) = post_as(&server, &mallory, "/api/v1/namespaces/att/serviceaccounts/mallory/token", &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}));
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body)["message"], "serviceaccounts \"mallory\" is forbidden: User \"system:serviceaccount:att:mallory\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"att\"");

    // (c) A holder of */token may grant serviceaccounts/token (kube allows it), and may use it.
    let (code, body) = post_as(&server, &trent, roles, &minter);
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&body)["rules"], json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]));
    let (code, body) = post_as(&server, &trent, "/api/v1/namespaces/att/serviceaccounts/trent/token", &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}));
    assert_eq!(code, 201, "{body}");
}

/// The 632-byte Role of issue 12: one rule, 18 verbs × 18 groups × 18 resources × 18 names.
fn wide_role(ns: &str) -> Value {
    let names: Vec<String> = (0..18).map(|i| format!("n{i:02}")).collect();
    role(ns, "wide", json!([{
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate", "approve", "sign", "use", "proxy", "attest", "mint", "nuke"],
        "apiGroups": ["", "apps", "batch", "policy", "extensions", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "storage.k8s.io", "certificates.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "node.k8s.io", "example.com"],
        "resources": ["pods", "secrets", "configmaps", "serviceaccounts", "serviceaccounts/token", "pods/exec", "deployments", "roles", "rolebindings", "jobs", "leases", "services", "events", "ingresses", "nodes", "clusterroles", "widgets", "namespaces"],
        "resourceNames": names,
    }]))
}

#[test]
fn the_18_4_role_is_refused_with_a_bounded_answer_while_the_server_serves_others() {
    let server = Arc::new(Server::start());
    let boss = service_account(&server, "big", "boss");
    apply(&server, &[bind_sa("big", "boss-admin", "ClusterRole", "admin", "boss")]);
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/big/roles";
    let attack = wide_role("big");

    let (code, body) = post_as(&server, &boss, roles, &attack);
    assert_eq!(code, 403, "{}", &body[..body.len().min(2000)]);
    // 8.8 MB before; now 100 lines and a count, about 30 KB.
    assert!(body.len() < 48 * 1024, "{} bytes", body.len());
    let status = json(&body);
    assert_eq!((status["reason"].as_str(), status["code"].as_u64()), (Some("Forbidden"), Some(403)));
    assert_eq!(status["details"], json!({"name": "wide", "group": "rbac.authorization.k8s.io", "kind": "roles"}));
    let message = status["message"].as_str().expect("message");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 102);
    assert_eq!(lines[0], format!("roles.rbac.authorization.k8s.io \"wide\" is forbidden: user \"system:serviceaccount:big:boss\" {} is attempting to grant RBAC permissions not currently held:", sa_groups("big")));
    // kube-apiserver's order: group "" first, then resources by name, named rules by name.
    let all_verbs = r#""get" "list" "watch" "create" "update" "patch" "delete" "deletecollection" "escalate" "bind" "impersonate" "approve" "sign" "use" "proxy" "attest" "mint" "nuke""#;
    assert_eq!(lines[1], format!(r#"{{APIGroups:[""], Resources:["clusterroles"], ResourceNames:["n00"], Verbs:[{all_verbs}]}}"#));
    assert_eq!(lines[18], format!(r#"{{APIGroups:[""], Resources:["clusterroles"], ResourceNames:["n17"], Verbs:[{all_verbs}]}}"#));
    // admin holds the CRUD verbs on configmaps: only the others are missing, in the Role's order.
    assert_eq!(lines[19], r#"{APIGroups:[""], Resources:["configmaps"], ResourceNames:["n00"], Verbs:["escalate" "bind" "impersonate" "approve" "sign" "use" "proxy" "attest" "mint" "nuke"]}"#);
    // 18 × 18 × 18 uncovered (group, resource, name) rules, 100 shown.
    assert_eq!(lines[101], "(and 5732 more rules not shown)");
    assert!(server.kubectl_err(&["get", "role", "wide", "-n", "big"]).contains("NotFound"));

    // While attackers keep sending it, /healthz keeps answering.
    let attacking = Arc::new(AtomicBool::new(true));
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let (server, boss, attack, attacking) = (server.clone(), boss.clone(), attack.clone(), attacking.clone());
            std::thread::spawn(move || {
                let answers: Vec<(u16, usize)> = (0..15).map(|_| post_as(&server, &boss, roles, &attack)).map(|(c, b)| (c, b.len())).collect();
                attacking.store(false, Ordering::SeqCst);
                answers
            })
        })
        .collect();
    let mut answered_during_attack = 0;
    while attacking.load(Ordering::SeqCst) {
        let (code, body) = server.curl("GET", "/healthz", &[]);
        assert_eq!((code, body.as_str()), (200, "ok"));
        answered_during_attack += usize::from(attacking.load(Ordering::SeqCst));
    }
    for attacker in attackers {
        let answers = attacker.join().expect("attacker thread");
        assert!(answers.iter().all(|&(code, len)| code == 403 && len == body.len()), "{answers:?}");
    }
    assert!(answered_during_attack > 0);
}

#[test]
fn undecodable_impersonation_headers_are_refused() {
    let server = Server::start();
    let writer = service_account(&server, "imp", "writer");
    apply(&server, &[
        role("imp", "configmap-writer", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}])),
        bind_sa("imp", "writer-configmaps", "Role", "configmap-writer", "writer"),
    ]);
    let path = "/api/v1/namespaces/imp/configmaps";
    let header = |name: &str, value: &[u8]| -> OsString { OsString::from_vec([name.as_bytes(), b": ", value].concat()) };
    let bearer = OsString::from(format!("Authorization: Bearer {writer}"));
    let bad_request = |message: &str| json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "BadRequest", "code": 400});

    // The caller may create ConfigMaps itself; before the fix, the bad header
    // was skipped and the request ran as the caller. (HTTP/1.1: see `post_as`.)
    let cases: [(&str, Vec<OsString>, &str); 5] = [
        ("cm-user", vec![header("Impersonate-User", b"\xffadmin")], "invalid Impersonate-User header: the value is not valid UTF-8"),
        ("cm-user-latin1", vec![header("Impersonate-User", b"adm\xe9n")], "invalid Impersonate-User header: the value is not valid UTF-8"),
        ("cm-group", vec![header("Impersonate-User", b"jane"), header("Impersonate-Group", b"system:masters\xc0")], "invalid Impersonate-Group header: the value is not valid UTF-8"),
        ("cm-uid", vec![header("Impersonate-User", b"jane"), header("Impersonate-Uid", b"\x80")], "invalid Impersonate-Uid header: the value is not valid UTF-8"),
        ("cm-extra", vec![header("Impersonate-User", b"jane"), header("Impersonate-Extra-scopes", b"\xfe")], "invalid Impersonate-Extra-scopes header: the value is not valid UTF-8"),
    ];
    for (name, headers, message) in cases {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string();
        let mut args: Vec<OsString> = ["--http1.1", "-H", "Content-Type: application/json", "-d", &body, "-H"].iter().map(OsString::from).collect();
        args.push(bearer.clone());
        for h in headers {
            args.extend([OsString::from("-H"), h]);
        }
        let (code, answer) = curl_raw(&server, "POST", path, args);
        assert_eq!((code, json(&answer)), (400, bad_request(message)), "{name}");
        assert!(server.kubectl_err(&["get", "configmap", name, "-n", "imp"]).contains("NotFound"), "{name} was created");
    }
    // Over HTTP/2 too; and an extra key that is not UTF-8 once unescaped is refused.
    let args: Vec<OsString> = vec!["-H".into(), bearer.clone(), "-H".into(), "Impersonate-User: jane".into(), "-H".into(), "Impersonate-Extra-%ff: x".into()];
    let (code, answer) = curl_raw(&server, "GET", path, args);
    assert_eq!((code, json(&answer)), (400, bad_request("invalid Impersonate-Extra-%ff header: the key, unescaped, is not valid UTF-8")));
    // The same refusal for the cluster admin: nothing runs as anyone.
    let (cert, key) = server.admin_cert();
    let args: Vec<OsString> = vec!["--cert".into(), cert.into(), "--key".into(), key.into(), "-H".into(), header("Impersonate-User", b"\xff")];
    let (code, answer) = curl_raw(&server, "GET", path, args);
    assert_eq!((code, json(&answer)), (400, bad_request("invalid Impersonate-User header: the value is not valid UTF-8")));
    // A name in UTF-8 decodes (kube takes header bytes as they are) and is then authorized like any other.
    let args: Vec<OsString> = vec!["-H".into(), bearer, "-H".into(), header("Impersonate-User", "jöhn".as_bytes())];
    let (code, answer) = curl_raw(&server, "GET", path, args);
    assert_eq!(code, 403, "{answer}");
    assert_eq!(json(&answer)["message"], "users \"jöhn\" is forbidden: User \"system:serviceaccount:imp:writer\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope");
}

/// PATCHes an apply configuration with a bearer token.
fn apply_as(server: &Server, token: &str, path: &str, body: &Value) -> (u16, String) {
    server.curl("PATCH", path, &["--http1.1", "-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/apply-patch+yaml", "-d", &body.to_string()])
}

/// Server-side apply is a write like any other: a Role it would create, and a
/// Role it would widen, pass the same escalation check as a POST or a PUT.
#[test]
fn server_side_apply_cannot_grant_what_the_applier_does_not_hold() {
    let server = Server::start();
    let mallory = service_account(&server, "ssa", "mallory");
    apply(&server, &[
        role("ssa", "role-writer", json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create", "get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        ])),
        bind_sa("ssa", "mallory-writes-roles", "Role", "role-writer", "mallory"),
    ]);
    let path = |name: &str| format!("/apis/rbac.authorization.k8s.io/v1/namespaces/ssa/roles/{name}?fieldManager=mallory");
    let prefix = format!("is forbidden: user \"system:serviceaccount:ssa:mallory\" {} is attempting to grant RBAC permissions not currently held:\n", sa_groups("ssa"));

    // Create by apply: secrets are not held.
    let grab = role("ssa", "grab", json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]));
    let (code, body) = apply_as(&server, &mallory, &path("grab"), &grab);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body), forbidden_role("grab", &format!(
        "roles.rbac.authorization.k8s.io \"grab\" {prefix}{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}"
    )));
    assert!(server.kubectl_err(&["get", "role", "grab", "-n", "ssa"]).contains("NotFound"));

    // A Role of what mallory holds is fine; widening it by apply is not.
    let reader = role("ssa", "reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]));
    let (code, body) = apply_as(&server, &mallory, &path("reader"), &reader);
    assert_eq!(code, 201, "{body}");
    let wider = role("ssa", "reader", json!([{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get"]}]));
    let (code, body) = apply_as(&server, &mallory, &path("reader"), &wider);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json(&body), forbidden_role("reader", &format!(
        "roles.rbac.authorization.k8s.io \"reader\" {prefix}{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}"
    )));
    let stored = json(&server.kubectl_ok(&["get", "role", "reader", "-n", "ssa", "-o", "json"]));
    assert_eq!(stored["rules"], json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]));
}
