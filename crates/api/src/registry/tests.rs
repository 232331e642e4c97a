use std::sync::Arc;

use serde_json::json;
use tessera_store::sqlite::SqliteStore;

use super::*;
use crate::deletion::{DeleteOptions, Deletion};
use crate::registry::WriteScope;
use crate::resource::{CORE_CONFIGMAPS, CORE_NAMESPACES, CORE_PODS, CORE_SECRETS, CORE_SERVICEACCOUNTS};

struct Fixture {
    registry: Registry,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    let registry = Registry::new(Arc::new(store));
    registry
        .create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "ns"}}), WriteOptions::default())
        .await
        .expect("namespace");
    Fixture { registry, _dir: dir }
}

fn sa(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
}

fn rv(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).expect("resourceVersion").to_owned()
}

#[tokio::test]
async fn create_sets_metadata_and_get_returns_it() {
    let f = fixture().await;
    let created = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.expect("create");
    assert_eq!(created["metadata"]["namespace"], "ns");
    assert_eq!(created["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(created["metadata"]["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let got = f.registry.get(&CORE_SERVICEACCOUNTS, Some("ns"), "api").await.expect("get");
    assert_eq!(got, created);
}

#[tokio::test]
async fn duplicate_create_is_already_exists() {
    let f = fixture().await;
    f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.expect("create");
    let err = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (409, "serviceaccounts \"api\" already exists"));
}

#[tokio::test]
async fn create_in_missing_namespace_is_not_found() {
    let f = fixture().await;
    let err = f.registry.create(&CORE_SERVICEACCOUNTS, Some("nope"), sa("api"), WriteOptions::default()).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (404, "namespaces \"nope\" not found"));
}

#[tokio::test]
async fn invalid_name_is_422_and_stores_nothing() {
    let f = fixture().await;
    let before = f.registry.resource_version().await.expect("rv");
    let err = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("Bad_Name"), WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.starts_with("ServiceAccount \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
    assert_eq!(f.registry.resource_version().await.expect("rv"), before);
}

#[tokio::test]
async fn stale_update_is_conflict() {
    let f = fixture().await;
    let created = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.expect("create");
    let mut first = created.clone();
    first["metadata"]["labels"] = json!({"a": "1"});
    let updated = f.registry.update(&CORE_SERVICEACCOUNTS, Some("ns"), "api", first, WriteOptions::default()).await.expect("update");
    assert_ne!(rv(&updated), rv(&created));
    let mut stale = created;
    stale["metadata"]["labels"] = json!({"a": "2"});
    let err = f.registry.update(&CORE_SERVICEACCOUNTS, Some("ns"), "api", stale, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(err.message, "Operation cannot be fulfilled on serviceaccounts \"api\": the object has been modified; please apply your changes to the latest version and try again");
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let f = fixture().await;
    let before = f.registry.resource_version().await.expect("rv");
    let opts = WriteOptions { dry_run: true, ..WriteOptions::default() };
    let out = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), opts).await.expect("dry run");
    assert_eq!(out["metadata"]["name"], "api");
    assert_eq!(f.registry.get(&CORE_SERVICEACCOUNTS, Some("ns"), "api").await.unwrap_err().code, 404);
    assert_eq!(f.registry.resource_version().await.expect("rv"), before);
}

#[tokio::test]
async fn patches_apply_and_noop_keeps_resource_version() {
    let f = fixture().await;
    let created = f.registry.create(&CORE_CONFIGMAPS, Some("ns"), json!({"metadata": {"name": "c"}, "data": {"a": "1"}}), WriteOptions::default()).await.expect("create");
    let merge = Patch::Merge(json!({"data": {"b": "2"}}));
    let patched = f.registry.patch(&CORE_CONFIGMAPS, Some("ns"), "c", &merge, WriteOptions::default()).await.expect("patch");
    assert_eq!(patched["data"], json!({"a": "1", "b": "2"}));
    assert_ne!(rv(&patched), rv(&created));
    let again = f.registry.patch(&CORE_CONFIGMAPS, Some("ns"), "c", &merge, WriteOptions::default()).await.expect("patch");
    assert_eq!(rv(&again), rv(&patched));
}

#[tokio::test]
async fn patch_cannot_change_uid_or_name() {
    let f = fixture().await;
    let created = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.expect("create");
    let patch = Patch::Merge(json!({"metadata": {"name": "other", "creationTimestamp": "2000-01-01T00:00:00Z"}}));
    let out = f.registry.patch(&CORE_SERVICEACCOUNTS, Some("ns"), "api", &patch, WriteOptions::default()).await.expect("patch");
    assert_eq!(out["metadata"]["name"], "api");
    assert_eq!(out["metadata"]["creationTimestamp"], created["metadata"]["creationTimestamp"]);
    let patch = Patch::Merge(json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}}));
    let err = f.registry.patch(&CORE_SERVICEACCOUNTS, Some("ns"), "api", &patch, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn list_pages_and_selectors() {
    let f = fixture().await;
    for i in 0..7 {
        let mut obj = sa(&format!("sa-{i}"));
        obj["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), obj, WriteOptions::default()).await.expect("create");
    }
    let mut names = Vec::new();
    let mut params = ListParams { limit: 3, ..ListParams::default() };
    loop {
        let page = f.registry.list(&CORE_SERVICEACCOUNTS, Some("ns"), &params).await.expect("list");
        names.extend(page["items"].as_array().expect("items").iter().map(|i| i["metadata"]["name"].as_str().expect("name").to_owned()));
        match page["metadata"]["continue"].as_str() {
            Some(token) => params.continue_token = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("sa-{i}")).collect::<Vec<_>>());
    let even = ListParams { labels: LabelSelector::parse("parity=even").expect("selector"), ..ListParams::default() };
    let page = f.registry.list(&CORE_SERVICEACCOUNTS, Some("ns"), &even).await.expect("list");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(page["kind"], "ServiceAccountList");
    let by_name = ListParams { fields: FieldSelector::parse("metadata.name=sa-3", &[]).expect("selector"), ..ListParams::default() };
    let page = f.registry.list(&CORE_SERVICEACCOUNTS, None, &by_name).await.expect("list");
    assert_eq!(page["items"][0]["metadata"]["name"], "sa-3");
}

#[tokio::test]
async fn bad_continue_token_is_400() {
    let f = fixture().await;
    let params = ListParams { continue_token: Some("!!!".into()), ..ListParams::default() };
    assert_eq!(f.registry.list(&CORE_SERVICEACCOUNTS, Some("ns"), &params).await.unwrap_err().code, 400);
}

#[tokio::test]
async fn delete_with_preconditions() {
    let f = fixture().await;
    let created = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("api"), WriteOptions::default()).await.expect("create");
    let wrong = Preconditions { uid: Some("nope".into()), resource_version: None };
    let err = f.registry.delete(&CORE_SERVICEACCOUNTS, Some("ns"), "api", &wrong, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.code, 409);
    let right = Preconditions { uid: created["metadata"]["uid"].as_str().map(str::to_owned), resource_version: None };
    f.registry.delete(&CORE_SERVICEACCOUNTS, Some("ns"), "api", &right, WriteOptions::default()).await.expect("delete");
    let err = f.registry.delete(&CORE_SERVICEACCOUNTS, Some("ns"), "api", &right, WriteOptions::default()).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (404, "serviceaccounts \"api\" not found"));
}

#[tokio::test]
async fn deleting_a_namespace_marks_it_terminating_and_blocks_creates() {
    let f = fixture().await;
    let ns = f.registry.delete(&CORE_NAMESPACES, None, "ns", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert!(ns["metadata"]["deletionTimestamp"].is_string());
    let err = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("late"), WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.code, 403);
    assert_eq!(err.message, "serviceaccounts \"late\" is forbidden: unable to create new content in namespace ns because it is being terminated");
}

#[tokio::test]
async fn secrets_and_pods_are_defaulted() {
    let f = fixture().await;
    let secret = f.registry.create(&CORE_SECRETS, Some("ns"), json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}), WriteOptions::default()).await.expect("secret");
    assert_eq!((secret["type"].as_str(), secret["data"]["k"].as_str()), (Some("Opaque"), Some("dg==")));
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let pod = f.registry.create(&CORE_PODS, Some("ns"), pod, WriteOptions::default()).await.expect("pod");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(pod["status"]["phase"], "Pending");
}

#[tokio::test]
async fn watch_from_a_version_sees_changes_in_order() {
    use futures::StreamExt;
    let f = fixture().await;
    let created = f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("a"), WriteOptions::default()).await.expect("create");
    let params = ListParams { resource_version: Some(rv(&created)), ..ListParams::default() };
    let mut events = Box::pin(f.registry.watch(&CORE_SERVICEACCOUNTS, Some("ns"), &params).await.expect("watch"));
    f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("b"), WriteOptions::default()).await.expect("create");
    f.registry.patch(&CORE_SERVICEACCOUNTS, Some("ns"), "b", &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})), WriteOptions::default()).await.expect("patch");
    f.registry.delete(&CORE_SERVICEACCOUNTS, Some("ns"), "a", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await.expect("event in time").expect("stream open");
        seen.push((ev.type_, ev.object["metadata"]["name"].as_str().unwrap_or_default().to_owned()));
    }
    assert_eq!(seen, vec![("ADDED", "b".to_owned()), ("MODIFIED", "b".to_owned()), ("DELETED", "a".to_owned())]);
}

#[tokio::test]
async fn label_selector_watch_reports_transitions() {
    use futures::StreamExt;
    let f = fixture().await;
    let params = ListParams { labels: LabelSelector::parse("app=web").expect("selector"), ..ListParams::default() };
    let mut events = Box::pin(f.registry.watch(&CORE_SERVICEACCOUNTS, Some("ns"), &params).await.expect("watch"));
    f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("a"), WriteOptions::default()).await.expect("create");
    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"app": v}}}));
    f.registry.patch(&CORE_SERVICEACCOUNTS, Some("ns"), "a", &label("web"), WriteOptions::default()).await.expect("patch");
    f.registry.patch(&CORE_SERVICEACCOUNTS, Some("ns"), "a", &label("db"), WriteOptions::default()).await.expect("patch");
    let mut types = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await.expect("event in time").expect("open");
        types.push(ev.type_);
    }
    assert_eq!(types, vec!["ADDED", "DELETED"]);
}

#[tokio::test]
async fn watch_from_compacted_version_reports_410() {
    use futures::StreamExt;
    let f = fixture().await;
    for i in 0..3 {
        f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa(&format!("s{i}")), WriteOptions::default()).await.expect("create");
    }
    let now: i64 = f.registry.resource_version().await.expect("rv").parse().expect("number");
    f.registry.store().compact(now).await.expect("compact");
    let params = ListParams { resource_version: Some("1".into()), ..ListParams::default() };
    let mut events = Box::pin(f.registry.watch(&CORE_SERVICEACCOUNTS, Some("ns"), &params).await.expect("watch"));
    let ev = events.next().await.expect("error event");
    assert_eq!(ev.type_, "ERROR");
    assert_eq!(ev.object["code"], 410);
    assert_eq!(ev.object["reason"], "Expired");
}

#[tokio::test]
async fn status_writes_are_scoped() {
    let f = fixture().await;
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    f.registry.create(&CORE_PODS, Some("ns"), pod, WriteOptions::default()).await.expect("pod");
    // The status subresource changes status, never the spec; for pods it
    // keeps label and annotation changes, as kube's pod status strategy
    // (kubelets annotate their pods so; the node restriction refuses labels).
    let status_only = WriteOptions { scope: WriteScope::Status, ..WriteOptions::default() };
    let patch = Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}, "spec": {"hostname": "h"}, "status": {"phase": "Running"}}));
    let out = f.registry.patch(&CORE_PODS, Some("ns"), "p", &patch, status_only.clone()).await.expect("status patch");
    assert_eq!(out["status"]["phase"], "Running");
    assert_eq!(out["metadata"]["annotations"], json!({"a": "1"}));
    assert!(out["spec"].get("hostname").is_none());
    // Other kinds' status writes change status only.
    f.registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "scoped"}}), WriteOptions::default()).await.expect("namespace");
    let patch = Patch::Merge(json!({"metadata": {"labels": {"sneaky": "yes"}}, "status": {"phase": "Active"}}));
    let out = f.registry.patch(&CORE_NAMESPACES, None, "scoped", &patch, status_only).await.expect("namespace status patch");
    assert!(out["metadata"].get("labels").is_none_or(|l| l.get("sneaky").is_none()), "{out}");
    // The object itself cannot change its status.
    let patch = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}));
    let out = f.registry.patch(&CORE_PODS, Some("ns"), "p", &patch, WriteOptions::default()).await.expect("patch");
    assert_eq!((out["metadata"]["labels"]["a"].as_str(), out["status"]["phase"].as_str()), (Some("b"), Some("Running")));
}

#[tokio::test]
async fn delete_admission_sees_the_stored_object_and_can_refuse() {
    let f = fixture().await;
    f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa("keep"), WriteOptions::default()).await.expect("create");
    let refuse: AdmitDelete = Arc::new(|resource, current| {
        let name = current.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        Err(ApiError::forbidden(resource.plural, resource.group, name, format!("no deleting {name}")))
    });
    let options = WriteOptions { admit_delete: Some(refuse), ..WriteOptions::default() };
    let err = f.registry.delete(&CORE_SERVICEACCOUNTS, Some("ns"), "keep", &Preconditions::default(), options).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (403, "no deleting keep"));
    assert!(f.registry.get(&CORE_SERVICEACCOUNTS, Some("ns"), "keep").await.is_ok(), "a refused delete deletes nothing");
}

#[tokio::test]
async fn finalizers_hold_a_delete_until_an_update_removes_the_last_one() {
    let f = fixture().await;
    let body = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"a": "1"}});
    f.registry.create(&CORE_CONFIGMAPS, Some("ns"), body, WriteOptions::default()).await.expect("create");
    let pending = f
        .registry
        .delete_with(&CORE_CONFIGMAPS, Some("ns"), "held", &DeleteOptions::default(), WriteOptions::default())
        .await
        .expect("delete");
    let Deletion::Pending(obj) = pending else { panic!("deleted at once") };
    assert!(obj["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(obj["metadata"]["deletionGracePeriodSeconds"], 0);
    // A second delete changes nothing.
    let again = f.registry.delete_with(&CORE_CONFIGMAPS, Some("ns"), "held", &DeleteOptions::default(), WriteOptions::default()).await.expect("again");
    assert_eq!(again, Deletion::Pending(obj.clone()));
    // New finalizers are refused while deleting.
    let mut more = obj.clone();
    more["metadata"]["finalizers"] = json!(["example.com/hold", "example.com/more"]);
    let err = f.registry.update(&CORE_CONFIGMAPS, Some("ns"), "held", more, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.message, "ConfigMap \"held\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/more\"}");
    // Other changes are fine; removing the last finalizer deletes.
    let mut release = obj.clone();
    release["metadata"]["finalizers"] = json!([]);
    f.registry.update(&CORE_CONFIGMAPS, Some("ns"), "held", release, WriteOptions::default()).await.expect("release");
    assert_eq!(f.registry.get(&CORE_CONFIGMAPS, Some("ns"), "held").await.unwrap_err().code, 404);
}

#[tokio::test]
async fn immutable_secrets_and_configmaps_refuse_data_changes() {
    let f = fixture().await;
    let secret = json!({"metadata": {"name": "s"}, "immutable": true, "stringData": {"k": "v"}});
    f.registry.create(&CORE_SECRETS, Some("ns"), secret, WriteOptions::default()).await.expect("secret");
    let patch = crate::patch::Patch::Merge(json!({"stringData": {"k": "w"}}));
    let err = f.registry.patch(&CORE_SECRETS, Some("ns"), "s", &patch, WriteOptions::default()).await.unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (422, "Secret \"s\" is invalid: data: Forbidden: field is immutable when `immutable` is set"));
    let patch = crate::patch::Patch::Merge(json!({"immutable": false}));
    let err = f.registry.patch(&CORE_SECRETS, Some("ns"), "s", &patch, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.message, "Secret \"s\" is invalid: immutable: Forbidden: field is immutable when `immutable` is set");
    // Labels may still change.
    let patch = crate::patch::Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    f.registry.patch(&CORE_SECRETS, Some("ns"), "s", &patch, WriteOptions::default()).await.expect("label");

    let cm = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"k": "v"}});
    f.registry.create(&CORE_CONFIGMAPS, Some("ns"), cm, WriteOptions::default()).await.expect("cm");
    let patch = crate::patch::Patch::Merge(json!({"data": {"k": null}, "binaryData": {"b": "AA=="}, "immutable": null}));
    let err = f.registry.patch(&CORE_CONFIGMAPS, Some("ns"), "c", &patch, WriteOptions::default()).await.unwrap_err();
    assert_eq!(err.message, "ConfigMap \"c\" is invalid: [immutable: Forbidden: field is immutable when `immutable` is set, data: Forbidden: field is immutable when `immutable` is set, binaryData: Forbidden: field is immutable when `immutable` is set]");
}

#[test]
fn timestamps_cut_the_fraction_off_as_kube_does() {
    let at = |s: &str| s.parse::<jiff::Timestamp>().expect("a timestamp");
    assert_eq!(rfc3339_seconds(at("2026-12-06T19:12:59.999Z")), "2026-12-06T19:12:59Z");
    assert_eq!(rfc3339_seconds(at("2026-12-06T19:12:59.5Z")), "2026-12-06T19:12:59Z");
    assert_eq!(rfc3339_seconds(at("2026-12-06T19:12:59Z")), "2026-12-06T19:12:59Z");
    // Never a second that has not begun yet: an object's age is never negative.
    let now = jiff::Timestamp::now();
    assert!(at(&rfc3339_seconds(now)) <= now);
}
