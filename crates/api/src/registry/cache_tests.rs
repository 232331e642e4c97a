//! The watch cache against a real SQLite store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_store::Store;
use tessera_store::sqlite::SqliteStore;

use super::*;

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("open"));
    (dir, store)
}

fn object(name: &str, n: u32) -> Bytes {
    Bytes::from(format!(r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"ns"}},"data":{{"n":"{n}"}}}}"#))
}

async fn ready(cache: &WatchCache, store: &Arc<dyn Store>) {
    let current = store.revision().await.expect("revision");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(cache.is_ready() && cache.revision() >= current) {
        assert!(tokio::time::Instant::now() < deadline, "cache never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn follows_the_store_and_encodes_each_revision_once() {
    let (_dir, store) = store();
    store.create("/registry/configmaps/ns/a", object("a", 1)).await.expect("create");
    let cache = WatchCache::start(store.clone());
    ready(&cache, &store).await;
    let b = store.create("/registry/configmaps/ns/b", object("b", 1)).await.expect("create");
    ready(&cache, &store).await;
    let (revision, items) = cache.list("/registry/configmaps/ns/");
    assert_eq!(revision, b.mod_revision);
    assert_eq!(items.iter().map(|o| o.key()).collect::<Vec<_>>(), ["/registry/configmaps/ns/a", "/registry/configmaps/ns/b"]);
    let (_, got) = cache.get("/registry/configmaps/ns/b");
    let got = got.expect("b cached");
    // The bytes handed out are one buffer, not a copy per reader.
    assert_eq!(got.json().as_ptr(), items[1].json().as_ptr());
    let value: serde_json::Value = serde_json::from_slice(&got.json()).expect("json");
    assert_eq!(value["metadata"]["resourceVersion"], b.mod_revision.to_string());
    store.delete("/registry/configmaps/ns/a", None).await.expect("delete");
    ready(&cache, &store).await;
    assert_eq!(cache.list("/registry/configmaps/").1.len(), 1);
    assert_eq!(cache.stats().ring_events, 2);
}

#[tokio::test]
async fn watches_resume_from_the_ring_without_gaps() {
    let (_dir, store) = store();
    let cache = WatchCache::start(store.clone());
    ready(&cache, &store).await;
    let first = store.create("/registry/configmaps/ns/a", object("a", 1)).await.expect("create");
    store.create("/registry/secrets/ns/s", object("s", 1)).await.expect("create");
    store.update("/registry/configmaps/ns/a", object("a", 2), first.mod_revision).await.expect("update");
    ready(&cache, &store).await;
    let mut sub = cache.watch("/registry/configmaps/", first.mod_revision - 1).expect("in the ring");
    assert_eq!(sub.backlog.len(), 2, "two configmap events, the secret filtered out");
    assert_eq!(sub.backlog[1].prev.as_ref().map(|p| p.revision()), Some(first.mod_revision));
    let c = store.create("/registry/configmaps/ns/c", object("c", 1)).await.expect("create");
    let live = tokio::time::timeout(Duration::from_secs(5), sub.live.recv()).await.expect("in time").expect("event");
    assert_eq!(live.revision(), c.mod_revision);
    // Not reached yet: the store serves it.
    assert!(cache.watch("/registry/configmaps/", c.mod_revision + 5).is_none());
}

#[tokio::test]
async fn waits_for_the_revision_asked_for_and_gives_up_after_the_timeout() {
    let (_dir, store) = store();
    let cache = WatchCache::start(store.clone());
    ready(&cache, &store).await;
    let at = cache.revision();
    assert_eq!(cache.wait_fresh(at).await, Ok(()));
    assert_eq!(cache.wait_fresh(at + 100).await, Err(at));
}

/// The cache's memory budget per object: 10,000 ServiceAccount-sized
/// objects held as the cache holds them (encoded JSON plus the fields
/// selectors need) add under 2 MiB of resident memory per 1,000 (about
/// 0.8 MiB measured; keeping decoded objects too cost about 3.3 MiB). Resident memory is per process:
/// nextest runs each test in its own, so other tests do not blur it.
#[test]
fn ten_thousand_cached_objects_stay_within_the_memory_budget() {
    fn rss_kib() -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap_or(0)
    }
    let before = rss_kib();
    assert!(before > 0, "VmRSS is readable");
    let mut objects = std::collections::BTreeMap::new();
    let mut json = 0;
    for i in 0..10_000 {
        let sa = format!(
            r#"{{"kind":"ServiceAccount","apiVersion":"v1","metadata":{{"name":"sa-{i}","namespace":"bench","uid":"{}","creationTimestamp":"2026-12-06T02:00:00Z","labels":{{"app":"bench"}}}}}}"#,
            uuid::Uuid::new_v4()
        );
        let key = format!("/registry/serviceaccounts/bench/sa-{i}");
        let object = CachedObject::decode(key.clone(), sa.as_bytes(), i);
        json += object.json.len();
        objects.insert(key, Arc::new(object));
    }
    let per_thousand_kib = (rss_kib() - before) / 10;
    assert_eq!(objects.len(), 10_000);
    assert!(json > 10_000 * 150, "each object keeps its encoded JSON ({json} bytes in all)");
    assert!(
        (0..2 * 1024).contains(&per_thousand_kib),
        "{per_thousand_kib} KiB resident per 1,000 cached objects ({} KiB of it JSON)",
        json / 10 / 1024
    );
}

#[test]
fn cached_objects_match_selectors_as_decoded_objects_do() {
    use crate::selector::{FieldSelector, LabelSelector};
    let pod = serde_json::json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running"}});
    let object = CachedObject::decode("/registry/pods/ns/p".into(), pod.to_string().as_bytes(), 3);
    let allowed = ["spec.nodeName", "status.phase"];
    for (labels, fields) in [
        ("app=web", "spec.nodeName=n1"),
        ("app!=web", ""),
        ("", "status.phase=Running,metadata.name=p"),
        ("tier", "metadata.namespace=other"),
        ("", "spec.nodeName!=n2"),
    ] {
        let labels = LabelSelector::parse(labels).expect("labels");
        let fields = FieldSelector::parse(fields, &allowed).expect("fields");
        let full = object.value().expect("value");
        assert_eq!(object.matches(&labels, &fields), labels.matches(&full) && fields.matches(&full), "{labels:?} {fields:?}");
    }
}
