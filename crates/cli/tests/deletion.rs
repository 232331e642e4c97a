//! Deletion and garbage collection end to end, against the real binary with
//! the real kubectl and curl (issue 13, "Garbage collection and deletion" and
//! "immutable Secrets and ConfigMaps"):
//!
//! - what DELETE answers, per kind and per case, as kube-apiserver 1.32:
//!   a `Success` Status or the object, finalizers holding an object with a
//!   `deletionTimestamp`, preconditions, `dryRun`, `orphanDependents: false`
//!   (202), an invalid `propagationPolicy` (422);
//! - `kubectl delete --cascade=background|foreground|orphan` over
//!   `ownerReferences` (SQLite and etcd);
//! - `immutable` Secrets and ConfigMaps refusing data changes.
//!
//! Asynchronous outcomes (the garbage collector) are polled with a deadline.

mod support;

use serde_json::{Value, json};
use support::{Server, json};
use tessera_store::etcd::testing::EtcdCluster;

const NS: &str = "/api/v1/namespaces/gc";

fn admin_json(server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text;
    let mut extra = vec!["-H", "Content-Type: application/json"];
    if let Some(body) = body {
        text = body.to_string();
        extra.extend(["--data-binary", text.as_str()]);
    }
    let (code, out) = server.curl_admin(method, path, &extra);
    (code, json(&out))
}

fn create_cm(server: &Server, body: Value) -> Value {
    let (code, obj) = admin_json(server, "POST", &format!("{NS}/configmaps"), Some(&body));
    assert_eq!(code, 201, "{obj}");
    obj
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().expect("uid").to_owned()
}

#[test]
fn delete_answers_as_kube_apiserver() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "gc"]);

    // Immediate deletion: a Success Status for most kinds…
    let plain = create_cm(&server, json!({"metadata": {"name": "plain"}}));
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/plain"), None);
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
               "details": {"name": "plain", "kind": "configmaps", "uid": uid(&plain)}})
    );
    // …the object itself for kinds whose registry returns it (ServiceAccounts, Pods, Namespaces).
    server.kubectl_ok(&["create", "sa", "acct", "-n", "gc"]);
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/serviceaccounts/acct"), None);
    assert_eq!((code, body["kind"].as_str(), body["metadata"]["name"].as_str()), (200, Some("ServiceAccount"), Some("acct")));

    // dryRun=All deletes nothing.
    create_cm(&server, json!({"metadata": {"name": "dry"}}));
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/dry?dryRun=All"), None);
    assert_eq!((code, body["status"].as_str()), (200, Some("Success")));
    assert_eq!(server.curl_admin("GET", &format!("{NS}/configmaps/dry"), &[]).0, 200);

    // Preconditions: kube's BeforeDelete wording, naming the Kind.
    let dry = admin_json(&server, "GET", &format!("{NS}/configmaps/dry"), None).1;
    let wrong_uid = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-it"}});
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/dry"), Some(&wrong_uid));
    assert_eq!(code, 409);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("Operation cannot be fulfilled on ConfigMap \"dry\": the UID in the precondition (not-it) does not match the UID in record ({}). The object might have been deleted and then recreated", uid(&dry)),
               "reason": "Conflict", "details": {"name": "dry", "kind": "ConfigMap"}, "code": 409})
    );
    let wrong_rv = json!({"preconditions": {"resourceVersion": "1"}});
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/dry"), Some(&wrong_rv));
    assert_eq!(code, 409);
    assert_eq!(
        body["message"],
        format!("Operation cannot be fulfilled on ConfigMap \"dry\": the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ({}). The object might have been modified", dry["metadata"]["resourceVersion"].as_str().expect("rv"))
    );

    // An invalid propagationPolicy, in the query or the body: 422 before anything else.
    let want = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Bogus\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"",
        "reason": "Invalid",
        "details": {"group": "meta.k8s.io", "kind": "DeleteOptions", "causes": [{"reason": "FieldValueNotSupported",
            "message": "Unsupported value: \"Bogus\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"", "field": "propagationPolicy"}]},
        "code": 422});
    assert_eq!(admin_json(&server, "DELETE", &format!("{NS}/configmaps/dry?propagationPolicy=Bogus"), None), (422, want.clone()));
    assert_eq!(admin_json(&server, "DELETE", &format!("{NS}/configmaps/dry"), Some(&json!({"propagationPolicy": "Bogus"}))), (422, want.clone()));
    assert_eq!(admin_json(&server, "DELETE", &format!("{NS}/configmaps?propagationPolicy=Bogus"), None), (422, want));
    assert_eq!(server.curl_admin("GET", &format!("{NS}/configmaps/dry"), &[]).0, 200);
}

#[test]
fn finalizers_block_deletion_until_released() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "gc"]);
    let held = create_cm(&server, json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}));
    let created_rv = held["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();

    let (code, first) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/held"), None);
    assert_eq!(code, 200, "the object comes back while finalizers hold it: {first}");
    assert_eq!(first["kind"], "ConfigMap");
    assert!(first["metadata"]["deletionTimestamp"].is_string(), "{first}");
    assert_eq!(first["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(first["metadata"]["finalizers"], json!(["example.com/hold"]));
    // A second DELETE answers the same object and writes nothing.
    let (code, second) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/held"), None);
    assert_eq!((code, &second), (200, &first));

    // No finalizer may be added once deletion started.
    let add = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}});
    let (code, body) = server.curl_admin(
        "PATCH",
        &format!("{NS}/configmaps/held"),
        &["-H", "Content-Type: application/merge-patch+json", "--data-binary", &add.to_string()],
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        json(&body)["message"],
        "ConfigMap \"held\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/more\"}"
    );

    // Removing the last finalizer deletes it; kubectl sees it gone.
    server.kubectl_ok(&["patch", "cm", "held", "-n", "gc", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(server.kubectl_err(&["get", "cm", "held", "-n", "gc"]).contains("configmaps \"held\" not found"));

    // Watchers saw MODIFIED (deletionTimestamp set) then DELETED.
    let (_, events) = server.curl_admin(
        "GET",
        &format!("{NS}/configmaps?watch=1&resourceVersion={created_rv}&timeoutSeconds=1"),
        &["--max-time", "10"],
    );
    let types: Vec<String> = events
        .lines()
        .filter(|l| !l.is_empty())
        .map(json)
        .filter(|e| e["object"]["metadata"]["name"] == "held")
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, ["MODIFIED", "DELETED"], "{events}");

    // The legacy orphanDependents=false answers 202 for a delete left pending.
    create_cm(&server, json!({"metadata": {"name": "legacy", "finalizers": ["example.com/hold"]}}));
    let (code, body) = admin_json(&server, "DELETE", &format!("{NS}/configmaps/legacy"), Some(&json!({"orphanDependents": false})));
    assert_eq!((code, body["metadata"]["name"].as_str()), (202, Some("legacy")));
}

/// A ConfigMap owning Secrets, deleted with each kubectl cascade mode.
fn cascades(server: &Server) {
    server.kubectl_ok(&["create", "ns", "gc"]);
    let owner = |name: &str| -> String {
        server.kubectl_ok(&["create", "cm", name, "-n", "gc"]);
        server.kubectl_ok(&["get", "cm", name, "-n", "gc", "-o", "jsonpath={.metadata.uid}"])
    };
    let dependent = |name: &str, owner: &str, uid: &str| {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "gc",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid, "blockOwnerDeletion": true}]}});
        let out = server.kubectl_stdin(&["apply", "-f", "-"], &secret.to_string());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let secret_exists = |name: &str| server.kubectl(&["get", "secret", name, "-n", "gc"]).status.success();

    // Background (kubectl's default): the owner goes at once, the collector takes the dependents.
    let uid = owner("bg");
    dependent("bg-1", "bg", &uid);
    dependent("bg-2", "bg", &uid);
    assert_eq!(server.kubectl_ok(&["delete", "cm", "bg", "-n", "gc", "--cascade=background"]).trim(), "configmap \"bg\" deleted");
    server.eventually(10, "background dependents deleted", || (!secret_exists("bg-1") && !secret_exists("bg-2")).then_some(()));

    // Foreground: kubectl waits for the owner, which goes only after its dependents.
    let uid = owner("fg");
    dependent("fg-1", "fg", &uid);
    server.kubectl_ok(&["delete", "cm", "fg", "-n", "gc", "--cascade=foreground", "--timeout=20s"]);
    assert!(!secret_exists("fg-1"), "the blocking dependent is gone before its owner");

    // Orphan: the dependent stays, without its reference to the owner.
    let uid = owner("or");
    dependent("or-1", "or", &uid);
    server.kubectl_ok(&["delete", "cm", "or", "-n", "gc", "--cascade=orphan", "--timeout=20s"]);
    let kept = json(&server.kubectl_ok(&["get", "secret", "or-1", "-n", "gc", "-o", "json"]));
    assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");

    // A dependent whose owner uid never existed is collected; a cluster-scoped
    // owner (a ClusterRole) owns namespaced dependents.
    dependent("ghost-1", "bg", "00000000-0000-0000-0000-000000000000");
    server.kubectl_ok(&["create", "clusterrole", "owner-role", "--verb=get", "--resource=pods"]);
    let role_uid = server.kubectl_ok(&["get", "clusterrole", "owner-role", "-o", "jsonpath={.metadata.uid}"]);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "role-dep", "namespace": "gc",
        "ownerReferences": [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "owner-role", "uid": role_uid}]}});
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], &cm.to_string()).status.success());
    server.eventually(10, "the ghost-owned secret collected", || (!secret_exists("ghost-1")).then_some(()));
    assert!(server.kubectl(&["get", "cm", "role-dep", "-n", "gc"]).status.success(), "a live cluster-scoped owner keeps it");
    server.kubectl_ok(&["delete", "clusterrole", "owner-role"]);
    server.eventually(10, "the ClusterRole's dependent collected", || {
        (!server.kubectl(&["get", "cm", "role-dep", "-n", "gc"]).status.success()).then_some(())
    });
}

#[test]
fn kubectl_cascades_on_sqlite() {
    cascades(&Server::start());
}

#[test]
fn kubectl_cascades_on_etcd() {
    let cluster = EtcdCluster::start(1).unwrap_or_else(|err| panic!("{err}"));
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--storage", &cluster.storage_url()]);
    cascades(&server);
}

#[test]
fn immutable_secrets_and_configmaps_refuse_changes() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "gc"]);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "frozen", "namespace": "gc"},
        "immutable": true, "stringData": {"API_KEY": "v1"}});
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], &secret.to_string()).status.success());
    let err = server.kubectl_err(&["patch", "secret", "frozen", "-n", "gc", "--type=merge", "-p", r#"{"stringData":{"API_KEY":"v2"}}"#]);
    assert!(err.contains("The Secret \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set"), "{err}");
    let err = server.kubectl_err(&["patch", "secret", "frozen", "-n", "gc", "--type=merge", "-p", r#"{"immutable":false}"#]);
    assert!(err.contains("The Secret \"frozen\" is invalid: immutable: Forbidden: field is immutable when `immutable` is set"), "{err}");
    // Metadata may still change.
    server.kubectl_ok(&["label", "secret", "frozen", "-n", "gc", "tier=gold"]);

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen", "namespace": "gc"},
        "immutable": true, "data": {"TIER": "gold"}});
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], &cm.to_string()).status.success());
    let patch = json!({"data": {"TIER": "platinum"}});
    let (code, body) = server.curl_admin(
        "PATCH",
        &format!("{NS}/configmaps/frozen"),
        &["-H", "Content-Type: application/merge-patch+json", "--data-binary", &patch.to_string()],
    );
    assert_eq!(code, 422);
    assert_eq!(
        json(&body),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "ConfigMap \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set",
            "reason": "Invalid",
            "details": {"name": "frozen", "kind": "ConfigMap", "causes": [{"reason": "FieldValueForbidden",
                "message": "Forbidden: field is immutable when `immutable` is set", "field": "data"}]},
            "code": 422})
    );
}

#[test]
fn namespace_deletion_waits_for_finalizers_of_its_content() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "hold"]);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep", "namespace": "hold", "finalizers": ["example.com/hold"]}});
    assert!(server.kubectl_stdin(&["apply", "-f", "-"], &cm.to_string()).status.success());
    let (code, ns) = admin_json(&server, "DELETE", "/api/v1/namespaces/hold", None);
    assert_eq!(code, 200);
    assert_eq!((ns["kind"].as_str(), ns["status"]["phase"].as_str()), (Some("Namespace"), Some("Terminating")));
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    // The content goes, except what its finalizer holds; the namespace waits for it.
    server.eventually(10, "the held ConfigMap marked deleting", || {
        let cm = json(&server.kubectl_ok(&["get", "cm", "keep", "-n", "hold", "-o", "json"]));
        cm["metadata"]["deletionTimestamp"].is_string().then_some(())
    });
    server.eventually(10, "the default ServiceAccount deleted", || {
        (!server.kubectl(&["get", "sa", "default", "-n", "hold"]).status.success()).then_some(())
    });
    assert_eq!(server.kubectl_ok(&["get", "ns", "hold", "-o", "jsonpath={.status.phase}"]), "Terminating");
    // kube's namespace controller conditions say what is left and why.
    let conditions = server.eventually(10, "the namespace's conditions", || {
        let ns = json(&server.kubectl_ok(&["get", "ns", "hold", "-o", "json"]));
        let conditions = ns["status"]["conditions"].as_array().cloned().unwrap_or_default();
        (conditions.len() == 5).then_some(conditions)
    });
    let by_type = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned().unwrap_or_default();
    assert_eq!(by_type("NamespaceContentRemaining")["message"], "Some resources are remaining: configmaps. has 1 resource instances");
    assert_eq!(by_type("NamespaceFinalizersRemaining")["message"], "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances");
    assert_eq!((by_type("NamespaceFinalizersRemaining")["status"].as_str(), by_type("NamespaceFinalizersRemaining")["reason"].as_str()), (Some("True"), Some("SomeFinalizersRemain")));
    assert_eq!(by_type("NamespaceDeletionContentFailure")["reason"], "ContentDeleted");
    server.kubectl_ok(&["patch", "cm", "keep", "-n", "hold", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    server.eventually(10, "the namespace gone after its last object", || {
        (server.curl_admin("GET", "/api/v1/namespaces/hold", &[]).0 == 404).then_some(())
    });
}
