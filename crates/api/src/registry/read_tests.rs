//! List and watch semantics, and the exact answers issue 13 lists (dry-run
//! patches, strict decoding), through a registry on a real (SQLite) store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tessera_store::observed::Observed;
use tessera_store::sqlite::SqliteStore;

use crate::patch::Patch;
use crate::registry::{ListParams, Preconditions, Registry, WatchEvent, WriteOptions};
use crate::resource::{CORE_CONFIGMAPS, CORE_NAMESPACES};
use crate::selector::LabelSelector;

async fn registry() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    let registry = Registry::new(Arc::new(store)).with_bookmark_interval(Duration::from_millis(200));
    registry
        .create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "ns"}}), WriteOptions::default())
        .await
        .expect("namespace");
    (registry, dir)
}

async fn cm(r: &Registry, name: &str, app: &str) -> Value {
    let body = json!({"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}});
    r.create(&CORE_CONFIGMAPS, Some("ns"), body, WriteOptions::default()).await.expect("create")
}

async fn relabel(r: &Registry, name: &str, app: &str) -> Value {
    let patch = Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    r.patch(&CORE_CONFIGMAPS, Some("ns"), name, &patch, WriteOptions::default()).await.expect("patch")
}

fn rv(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).expect("rv").to_owned()
}

async fn next(events: &mut (impl futures::Stream<Item = WatchEvent> + Unpin)) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("event in time").expect("stream open")
}

fn web() -> LabelSelector {
    LabelSelector::parse("app=web").expect("selector")
}

#[tokio::test]
async fn a_filtered_watch_resumed_from_a_version_sees_objects_leave_and_enter() {
    let (r, _dir) = registry().await;
    cm(&r, "a", "web").await;
    let from = cm(&r, "b", "db").await;
    // Resumed after both objects exist: the watch has never seen them.
    let params = ListParams { labels: web(), resource_version: Some(rv(&from)), ..ListParams::default() };
    let mut events = Box::pin(r.watch(&CORE_CONFIGMAPS, Some("ns"), &params).await.expect("watch"));
    let left = relabel(&r, "a", "db").await;
    let joined = relabel(&r, "b", "web").await;
    relabel(&r, "b", "web2").await;
    let event = next(&mut events).await;
    assert_eq!(event.type_, "DELETED");
    // kube sends the last state that matched, at the event's resourceVersion.
    assert_eq!(event.object["metadata"]["labels"]["app"], "web");
    assert_eq!(event.object["metadata"]["resourceVersion"].as_str(), Some(rv(&left).as_str()));
    let event = next(&mut events).await;
    assert_eq!((event.type_, event.object.clone()), ("ADDED", joined));
    let event = next(&mut events).await;
    assert_eq!((event.type_, event.object["metadata"]["labels"]["app"].as_str()), ("DELETED", Some("web")));
    r.delete(&CORE_CONFIGMAPS, Some("ns"), "a", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    cm(&r, "c", "web").await;
    let event = next(&mut events).await;
    assert_eq!((event.type_, event.object["metadata"]["name"].as_str()), ("ADDED", Some("c")), "the delete of a non-matching object is not sent");
}

#[tokio::test]
async fn send_initial_events_ends_with_the_initial_events_end_bookmark() {
    let (r, _dir) = registry().await;
    cm(&r, "a", "web").await;
    let last = cm(&r, "b", "web").await;
    let params = ListParams { send_initial_events: Some(true), allow_watch_bookmarks: true, ..ListParams::default() };
    let mut events = Box::pin(r.watch(&CORE_CONFIGMAPS, Some("ns"), &params).await.expect("watch"));
    assert_eq!(next(&mut events).await.type_, "ADDED");
    assert_eq!(next(&mut events).await.type_, "ADDED");
    let end = next(&mut events).await;
    assert_eq!(end.type_, "BOOKMARK");
    assert_eq!(
        end.object,
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
            "resourceVersion": rv(&last), "creationTimestamp": null,
            "annotations": {"k8s.io/initial-events-end": "true"}}})
    );
    // Then periodic bookmarks, at the last revision this watch has seen.
    let later = cm(&r, "c", "web").await;
    assert_eq!(next(&mut events).await.type_, "ADDED");
    let tick = next(&mut events).await;
    assert_eq!(tick.type_, "BOOKMARK");
    assert_eq!(tick.object["metadata"]["resourceVersion"].as_str(), Some(rv(&later).as_str()));
    assert!(tick.object["metadata"].get("annotations").is_none());
}

#[tokio::test]
async fn exact_lists_read_a_past_revision_and_410_once_compacted() {
    let (r, _dir) = registry().await;
    cm(&r, "a", "web").await;
    let then = cm(&r, "b", "web").await;
    r.delete(&CORE_CONFIGMAPS, Some("ns"), "a", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    let exact = ListParams {
        resource_version: Some(rv(&then)),
        resource_version_match: Some("Exact".into()),
        ..ListParams::default()
    };
    let list = r.list(&CORE_CONFIGMAPS, Some("ns"), &exact).await.expect("exact list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "a is still there at that revision");
    assert_eq!(list["metadata"]["resourceVersion"].as_str(), Some(rv(&then).as_str()));
    let now: i64 = r.resource_version().await.expect("rv").parse().expect("number");
    r.store().compact(now).await.expect("compact");
    let err = r.list(&CORE_CONFIGMAPS, Some("ns"), &exact).await.unwrap_err();
    assert_eq!(
        (err.code, err.reason, err.message.as_str()),
        (410, "Expired", "The resourceVersion for the provided list is too old.")
    );
    let future = ListParams { resource_version: Some((now + 10).to_string()), ..ListParams::default() };
    let err = r.list(&CORE_CONFIGMAPS, Some("ns"), &future).await.unwrap_err();
    assert_eq!((err.code, err.message.clone()), (504, format!("Timeout: Too large resource version: {}, current: {now}", now + 10)));
}

#[tokio::test]
async fn pages_share_one_snapshot_and_an_expired_continue_token_gets_a_fresh_one() {
    let (r, _dir) = registry().await;
    for name in ["a", "b", "c"] {
        cm(&r, name, "web").await;
    }
    let first = ListParams { limit: 1, ..ListParams::default() };
    let page = r.list(&CORE_CONFIGMAPS, Some("ns"), &first).await.expect("first page");
    let snapshot = page["metadata"]["resourceVersion"].clone();
    // Cut by `limit` without a selector: kube counts what follows.
    assert_eq!(page["metadata"]["remainingItemCount"], 2);
    let token = page["metadata"]["continue"].as_str().expect("continue").to_owned();
    // With a selector it does not (the count would include non-matches).
    let filtered = ListParams { limit: 1, labels: LabelSelector::parse("app=web").expect("selector"), ..ListParams::default() };
    let cut = r.list(&CORE_CONFIGMAPS, Some("ns"), &filtered).await.expect("filtered page");
    assert!(cut["metadata"]["continue"].is_string());
    assert!(cut["metadata"].get("remainingItemCount").is_none(), "{cut}");
    // A change after the first page is not in the later pages.
    r.delete(&CORE_CONFIGMAPS, Some("ns"), "b", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    let second = ListParams { limit: 1, continue_token: Some(token.clone()), ..ListParams::default() };
    let page = r.list(&CORE_CONFIGMAPS, Some("ns"), &second).await.expect("second page");
    assert_eq!(page["items"][0]["metadata"]["name"], "b");
    assert_eq!(page["metadata"]["resourceVersion"], snapshot);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let last = ListParams { limit: 1, continue_token: page["metadata"]["continue"].as_str().map(str::to_owned), ..ListParams::default() };
    let page = r.list(&CORE_CONFIGMAPS, Some("ns"), &last).await.expect("last page");
    assert!(page["metadata"].get("remainingItemCount").is_none(), "{page}");

    let now: i64 = r.resource_version().await.expect("rv").parse().expect("number");
    r.store().compact(now).await.expect("compact");
    let err = r.list(&CORE_CONFIGMAPS, Some("ns"), &second).await.unwrap_err();
    assert_eq!((err.code, err.reason), (410, "Expired"));
    assert!(err.message.starts_with("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response"), "{}", err.message);
    let fresh = err.to_status()["metadata"]["continue"].as_str().expect("a fresh token").to_owned();
    // The fresh token continues at the latest revision, where b is gone.
    let rest = ListParams { continue_token: Some(fresh), ..ListParams::default() };
    let page = r.list(&CORE_CONFIGMAPS, Some("ns"), &rest).await.expect("inconsistent continue");
    let names: Vec<_> = page["items"].as_array().expect("items").iter().map(|i| i["metadata"]["name"].clone()).collect();
    assert_eq!(names, vec![json!("c")]);
}

#[tokio::test]
async fn a_dry_run_patch_keeps_the_resource_version() {
    let (r, _dir) = registry().await;
    let created = cm(&r, "a", "web").await;
    let patch = Patch::Merge(json!({"data": {"k": "changed"}}));
    let dry = WriteOptions { dry_run: true, ..WriteOptions::default() };
    let out = r.patch(&CORE_CONFIGMAPS, Some("ns"), "a", &patch, dry).await.expect("dry-run patch");
    assert_eq!(out["data"]["k"], "changed");
    assert_eq!(rv(&out), rv(&created));
    let stored = r.get(&CORE_CONFIGMAPS, Some("ns"), "a").await.expect("get");
    assert_eq!(stored, created);
}

#[tokio::test]
async fn unknown_fields_under_strict_validation_are_worded_as_kube() {
    let (r, _dir) = registry().await;
    let strict = WriteOptions { strict: true, ..WriteOptions::default() };
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "x": 1});
    let err = r.create(&CORE_CONFIGMAPS, Some("ns"), body, strict).await.unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"x\"")
    );
}

#[tokio::test]
async fn a_bookmark_goes_out_two_seconds_before_the_deadline() {
    let (r, _dir) = registry().await;
    let r = r.with_bookmark_interval(Duration::from_secs(60));
    cm(&r, "a", "web").await;
    let rv = r.resource_version().await.expect("rv");
    let params = ListParams { resource_version: Some(rv.clone()), allow_watch_bookmarks: true, ..ListParams::default() };
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_millis(2_500);
    let mut events = Box::pin(r.watch_until(&CORE_CONFIGMAPS, Some("ns"), &params, deadline).await.expect("watch"));
    let event = tokio::time::timeout(Duration::from_secs(2), events.next()).await.expect("a bookmark before the deadline").expect("event");
    assert_eq!(event.type_, "BOOKMARK");
    assert_eq!(event.object["metadata"]["resourceVersion"], rv.as_str());
    // Due at deadline − 2 s, not a bookmark period after the start.
    let at = start.elapsed();
    assert!(at >= Duration::from_millis(450) && at < Duration::from_millis(1_500), "{at:?}");
    // Only one: the next would be past the deadline.
    assert!(tokio::time::timeout(Duration::from_millis(1_500), events.next()).await.is_err());
}

/// A registry with a ready watch cache over a counted SQLite store.
async fn cached_registry(local: bool) -> (Registry, Arc<Observed>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("open store"));
    let observed = Observed::new(sqlite);
    let store = Arc::new(if local { observed } else { observed.without_local_revision() });
    let registry = Registry::new(Arc::clone(&store) as Arc<dyn tessera_store::Store>).with_watch_cache();
    let cache = Arc::clone(registry.watch_cache().expect("cache"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cache.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "the cache never loaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    registry
        .create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "ns"}}), WriteOptions::default())
        .await
        .expect("namespace");
    (registry, store, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_get_is_served_from_the_cache_and_sees_every_acknowledged_write() {
    let (r, store, _dir) = cached_registry(true).await;
    let store_reads = || store.gets();
    for i in 0..50 {
        let name = format!("cm-{i}");
        // Each read comes right after a write was acknowledged: the cache has it.
        let before = store_reads();
        // A create checks its namespace with a consistent get.
        let created = cm(&r, &name, "web").await;
        assert_eq!(r.get(&CORE_CONFIGMAPS, Some("ns"), &name).await.expect("get"), created);
        assert_eq!(store_reads(), before, "the create and the get read the store");
        let updated = relabel(&r, &name, "db").await;
        let before = store_reads();
        assert_eq!(r.get(&CORE_CONFIGMAPS, Some("ns"), &name).await.expect("get"), updated);
        r.delete(&CORE_CONFIGMAPS, Some("ns"), &name, &Preconditions::default(), WriteOptions::default()).await.expect("delete");
        let before_get = store_reads();
        let gone = r.get(&CORE_CONFIGMAPS, Some("ns"), &name).await.expect_err("deleted");
        assert_eq!((gone.code, gone.message.as_str()), (404, format!("configmaps \"{name}\" not found").as_str()));
        assert_eq!(store_reads(), before_get, "the get after the delete read the store");
        assert!(store_reads() > before, "the delete reads the object it deletes from the store");
    }
}

#[tokio::test]
async fn a_store_that_knows_its_revision_only_by_asking_answers_consistent_gets_itself() {
    let (r, store, _dir) = cached_registry(false).await;
    let created = cm(&r, "a", "web").await;
    let before = store.gets();
    assert_eq!(r.get(&CORE_CONFIGMAPS, Some("ns"), "a").await.expect("get"), created);
    assert_eq!(store.gets(), before + 1);
}
