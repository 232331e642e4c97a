//! Server-side apply end to end: the real kubectl (`apply --server-side`,
//! `diff --server-side`, `--show-managed-fields`) and raw HTTP against the
//! tessera binary, with kube-apiserver 1.32's exact messages.

mod support;

use serde_json::{Value, json};
use support::{Server, json};

const CM_A: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  labels:\n    app: x\ndata:\n  key: \"1\"\n  other: o\n";
const CM_B: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  key: \"2\"\n";

fn write(server: &Server, name: &str, text: &str) -> String {
    let path = server.path(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    json(&server.kubectl_ok(&all))
}

/// managedFields without their times (which are checked to be present).
fn managed(obj: &Value) -> Value {
    let mut entries = obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    for e in &mut entries {
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "entry has a time: {e}");
        e.as_object_mut().expect("entry").remove("time");
    }
    // kube orders entries by operation, then by the second of their time, then
    // by manager: two writes in the same second swap places. Compare them by
    // manager here (the order itself is tested in the apply module).
    entries.sort_by(|a, b| a["manager"].as_str().cmp(&b["manager"].as_str()));
    Value::Array(entries)
}

#[test]
fn kubectl_apply_server_side_creates_updates_conflicts_and_forces() {
    let server = Server::start();
    let a = write(&server, "a.yaml", CM_A);
    assert_eq!(server.kubectl_ok(&["apply", "--server-side", "-f", &a]), "configmap/demo serverside-applied\n");
    let cm = get_json(&server, &["cm", "demo"]);
    assert_eq!(cm["data"], json!({"key": "1", "other": "o"}));
    assert_eq!(
        managed(&cm),
        json!([{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:key": {}, "f:other": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}, "manager": "kubectl", "operation": "Apply"}])
    );
    // --show-managed-fields in YAML shows kube's FieldsV1 layout.
    let yaml = server.kubectl_ok(&["get", "cm", "demo", "-o", "yaml", "--show-managed-fields"]);
    assert!(yaml.contains("  managedFields:\n  - apiVersion: v1\n    fieldsType: FieldsV1\n    fieldsV1:\n      f:data:\n        f:key: {}\n"), "{yaml}");
    assert!(yaml.contains("    manager: kubectl\n    operation: Apply\n"), "{yaml}");

    // Re-applying the same configuration changes nothing.
    let rv = cm["metadata"]["resourceVersion"].clone();
    server.kubectl_ok(&["apply", "--server-side", "-f", &a]);
    assert_eq!(get_json(&server, &["cm", "demo"])["metadata"]["resourceVersion"], rv);

    // Another manager changing an owned field conflicts, with kube's message.
    let b = write(&server, "b.yaml", CM_B);
    let err = server.kubectl_err(&["apply", "--server-side", "--field-manager=b", "-f", &b]);
    assert!(
        err.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl\": .data.key\nPlease review the fields above--they currently have other managers."),
        "{err}"
    );
    assert_eq!(get_json(&server, &["cm", "demo"])["data"]["key"], "1");

    // --force-conflicts takes the field over.
    assert_eq!(
        server.kubectl_ok(&["apply", "--server-side", "--field-manager=b", "--force-conflicts", "-f", &b]),
        "configmap/demo serverside-applied\n"
    );
    let cm = get_json(&server, &["cm", "demo"]);
    assert_eq!(cm["data"], json!({"key": "2", "other": "o"}));
    assert_eq!(
        managed(&cm),
        json!([
            {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:key": {}}}, "manager": "b", "operation": "Apply"},
            {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:other": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}, "manager": "kubectl", "operation": "Apply"}
        ])
    );

    // Fields dropped from kubectl's configuration go, unless another manager owns them.
    let a2 = write(&server, "a2.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  labels:\n    app: x\ndata:\n  key: \"2\"\n");
    server.kubectl_ok(&["apply", "--server-side", "-f", &a2]);
    let a3 = write(&server, "a3.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n");
    server.kubectl_ok(&["apply", "--server-side", "-f", &a3]);
    let cm = get_json(&server, &["cm", "demo"]);
    assert_eq!(cm["data"], json!({"key": "2"}), "other was kubectl's alone; key is still b's");
    assert_eq!(cm["metadata"].get("labels"), None);
    assert_eq!(
        managed(&cm),
        json!([{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:key": {}}}, "manager": "b", "operation": "Apply"}])
    );
}

#[test]
fn kubectl_diff_server_side_exit_codes() {
    let server = Server::start();
    let a = write(&server, "a.yaml", CM_A);
    server.kubectl_ok(&["apply", "--server-side", "-f", &a]);
    let same = server.kubectl(&["diff", "--server-side", "-f", &a]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    assert_eq!(String::from_utf8_lossy(&same.stdout), "");
    let changed = write(&server, "c.yaml", &CM_A.replace("key: \"1\"", "key: \"3\""));
    let diff = server.kubectl(&["diff", "--server-side", "-f", &changed]);
    let out = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "{out}{}", String::from_utf8_lossy(&diff.stderr));
    assert!(out.contains("-  key: \"1\"\n+  key: \"3\"\n"), "{out}");
    assert!(!out.contains("resourceVersion"), "a dry-run apply keeps the resourceVersion: {out}");
    assert!(String::from_utf8_lossy(&diff.stderr).is_empty(), "{}", String::from_utf8_lossy(&diff.stderr));
    // The dry run stored nothing.
    assert_eq!(get_json(&server, &["cm", "demo"])["data"]["key"], "1");
}

#[test]
fn keyed_lists_merge_by_key_and_atomic_lists_conflict() {
    let server = Server::start();
    // ServiceAccount secrets: a map list keyed by name; two managers each own their item.
    let s1 = write(&server, "s1.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\nsecrets:\n- name: one\n");
    let s2 = write(&server, "s2.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\nsecrets:\n- name: two\n");
    server.kubectl_ok(&["apply", "--server-side", "--field-manager=a", "-f", &s1]);
    server.kubectl_ok(&["apply", "--server-side", "--field-manager=b", "-f", &s2]);
    let sa = get_json(&server, &["sa", "robot"]);
    assert_eq!(sa["secrets"], json!([{"name": "one"}, {"name": "two"}]));
    // Items are ObjectReferences, atomic structs: each is owned whole.
    assert_eq!(managed(&sa)[0]["fieldsV1"], json!({"f:secrets": {"k:{\"name\":\"one\"}": {}}}));
    assert_eq!(managed(&sa)[1]["fieldsV1"], json!({"f:secrets": {"k:{\"name\":\"two\"}": {}}}));
    // a drops its item: only a's goes.
    let none = write(&server, "s0.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: robot\n");
    server.kubectl_ok(&["apply", "--server-side", "--field-manager=a", "-f", &none]);
    assert_eq!(get_json(&server, &["sa", "robot"])["secrets"], json!([{"name": "two"}]));

    // Role rules: an atomic list, owned whole.
    let r1 = write(&server, "r1.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get]\n");
    let r2 = write(&server, "r2.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [list]\n");
    server.kubectl_ok(&["apply", "--server-side", "--field-manager=a", "-f", &r1]);
    let role = get_json(&server, &["role", "reader"]);
    assert_eq!(managed(&role)[0]["fieldsV1"], json!({"f:rules": {}}));
    let err = server.kubectl_err(&["apply", "--server-side", "--field-manager=b", "-f", &r2]);
    assert!(err.starts_with("error: Apply failed with 1 conflict: conflict with \"a\": .rules\n"), "{err}");
    server.kubectl_ok(&["apply", "--server-side", "--field-manager=b", "--force-conflicts", "-f", &r2]);
    let role = get_json(&server, &["role", "reader"]);
    assert_eq!(role["rules"], json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]), "replaced whole, not merged");
}

#[test]
fn raw_apply_patch_over_http() {
    let server = Server::start();
    let path = "/api/v1/namespaces/default/configmaps/raw";
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\ndata:\n  a: \"1\"\n";
    let apply = |query: &str, body: &str| {
        server.curl_admin("PATCH", &format!("{path}{query}"), &["-H", "Content-Type: application/apply-patch+yaml", "--data-binary", body])
    };
    // No fieldManager: kube's 422 PatchOptions error, and nothing is created.
    let (code, text) = apply("", body);
    assert_eq!(code, 422);
    assert_eq!(
        json(&text),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
               "reason": "Invalid",
               "details": {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]},
               "code": 422})
    );
    assert_eq!(server.curl_admin("GET", path, &[]).0, 404);
    // With one, apply creates the object (201) and owns its fields.
    let (code, text) = apply("?fieldManager=tool", body);
    assert_eq!(code, 201, "{text}");
    let obj = json(&text);
    assert_eq!(managed(&obj), json!([{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}, "manager": "tool", "operation": "Apply"}]));
    // The JSON form is YAML too; a conflicting one is 409 naming the manager and field.
    let (code, text) = apply("?fieldManager=other", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"raw"},"data":{"a":"2"}}"#);
    assert_eq!(code, 409);
    assert_eq!(
        json(&text),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "Apply failed with 1 conflict: conflict with \"tool\": .data.a",
               "reason": "Conflict",
               "details": {"causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"tool\"", "field": ".data.a"}]},
               "code": 409})
    );
    let (code, text) = apply("?fieldManager=other&force=true", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"raw"},"data":{"a":"2"}}"#);
    assert_eq!(code, 200, "{text}");
    assert_eq!(json(&text)["data"]["a"], "2");
    // Wrong apiVersion, managedFields in the body, bad YAML: 400.
    let (code, text) = apply("?fieldManager=tool", "apiVersion: v2\nkind: ConfigMap\nmetadata:\n  name: raw\n");
    assert_eq!((code, json(&text)["message"].clone()), (400, json!("Incorrect version specified in apply patch. Specified patch version: v2, expected: v1")));
    let (code, text) = apply("?fieldManager=tool", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  managedFields: []\n");
    assert_eq!((code, json(&text)["message"].clone()), (400, json!("metadata.managedFields must be nil")));
    assert_eq!(apply("?fieldManager=tool", "a: [").0, 400);
    // force is only for apply.
    let (code, text) = server.curl_admin("PATCH", &format!("{path}?force=true"), &["-H", "Content-Type: application/merge-patch+json", "--data", "{}"]);
    assert_eq!((code, json(&text)["message"].clone()), (422, json!("PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch")));

    // A create without fieldManager is recorded for the User-Agent's product (operation Update).
    let (code, text) = server.curl_admin(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &["-A", "my-tool/1.0 (linux)", "-H", "Content-Type: application/json", "--data", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ua","labels":{"x":"y"}},"data":{"a":"1"}}"#],
    );
    assert_eq!(code, 201, "{text}");
    assert_eq!(
        managed(&json(&text)),
        json!([{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}}, "manager": "my-tool", "operation": "Update"}])
    );
    // managedFields: [{}] clears them.
    let (code, text) = server.curl_admin(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ua",
        &["-H", "Content-Type: application/merge-patch+json", "--data", r#"{"metadata":{"managedFields":[{}]}}"#],
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(json(&text)["metadata"].get("managedFields"), None);
}

#[test]
fn kubectl_create_and_edit_style_updates_track_their_managers() {
    let server = Server::start();
    server.kubectl_ok(&["create", "configmap", "plain", "--from-literal=a=b"]);
    let cm = get_json(&server, &["cm", "plain"]);
    assert_eq!(
        managed(&cm),
        json!([{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}, "f:a": {}}}, "manager": "kubectl-create", "operation": "Update"}])
    );
    // A server-side apply of a field kubectl-create set conflicts with that Update manager.
    let cfg = write(&server, "p.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata:\n  a: c\n");
    let err = server.kubectl_err(&["apply", "--server-side", "-f", &cfg]);
    assert!(err.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.a\n"), "{err}");
    // kubectl patch records its own manager.
    server.kubectl_ok(&["patch", "configmap", "plain", "-p", r#"{"data":{"b":"c"}}"#]);
    let cm = get_json(&server, &["cm", "plain"]);
    let managers: Vec<(String, String)> = managed(&cm)
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["manager"].as_str().unwrap_or_default().to_owned(), e["operation"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(managers, [("kubectl-create".to_owned(), "Update".to_owned()), ("kubectl-patch".to_owned(), "Update".to_owned())]);
}
