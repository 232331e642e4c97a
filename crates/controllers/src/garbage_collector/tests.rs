use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tessera_api::deletion::{DeleteOptions, Propagation};
use tessera_api::resource::{CORE_CONFIGMAPS, CORE_NAMESPACES, CORE_SECRETS};
use tessera_store::sqlite::SqliteStore;

use super::*;

struct Fixture {
    registry: Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("db")).expect("store");
    let registry = Registry::new(Arc::new(store));
    registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "ns"}}), WriteOptions::default()).await.expect("ns");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(registry.clone(), async move {
        let _ = stopped.await;
    }));
    Fixture { registry, stop: Some(stop), _dir: dir }
}

async fn owner(f: &Fixture, name: &str) -> Value {
    f.registry.create(&CORE_CONFIGMAPS, Some("ns"), json!({"metadata": {"name": name}}), WriteOptions::default()).await.expect("owner")
}

async fn dependent(f: &Fixture, name: &str, owners: &[&Value], block: bool) -> Value {
    let refs: Vec<Value> = owners
        .iter()
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "blockOwnerDeletion": block}))
        .collect();
    let body = json!({"metadata": {"name": name, "ownerReferences": refs}});
    f.registry.create(&CORE_SECRETS, Some("ns"), body, WriteOptions::default()).await.expect("dependent")
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn exists(f: &Fixture, resource: &ResourceInfo, name: &str) -> bool {
    f.registry.get(resource, Some("ns"), name).await.is_ok()
}

#[tokio::test]
async fn background_deletes_dependents_of_a_gone_owner_but_not_of_a_live_one() {
    let f = fixture().await;
    let a = owner(&f, "a").await;
    let b = owner(&f, "b").await;
    dependent(&f, "only-a", &[&a], false).await;
    dependent(&f, "a-and-b", &[&a, &b], false).await;
    f.registry.delete(&CORE_CONFIGMAPS, Some("ns"), "a", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    eventually("only-a deleted", async || !exists(&f, &CORE_SECRETS, "only-a").await).await;
    eventually("a's reference dropped from a-and-b", async || {
        f.registry.get(&CORE_SECRETS, Some("ns"), "a-and-b").await.is_ok_and(|s| s["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.len() == 1))
    })
    .await;
}

#[tokio::test]
async fn an_owner_replaced_under_the_same_name_is_gone_and_unknown_kinds_are_left_alone() {
    let f = fixture().await;
    let ghost = json!({"metadata": {"name": "a", "uid": "not-the-real-uid"}});
    owner(&f, "a").await;
    dependent(&f, "stale", &[&ghost], false).await;
    let odd = json!({"metadata": {"name": "odd", "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "w1"}]}});
    f.registry.create(&CORE_SECRETS, Some("ns"), odd, WriteOptions::default()).await.expect("odd");
    eventually("stale deleted", async || !exists(&f, &CORE_SECRETS, "stale").await).await;
    assert!(exists(&f, &CORE_SECRETS, "odd").await);
}

#[tokio::test]
async fn orphan_keeps_dependents_without_the_reference() {
    let f = fixture().await;
    let a = owner(&f, "a").await;
    dependent(&f, "kept", &[&a], true).await;
    let options = DeleteOptions::propagate(Propagation::Orphan);
    f.registry.delete_with(&CORE_CONFIGMAPS, Some("ns"), "a", &options, WriteOptions::default()).await.expect("delete");
    eventually("owner gone", async || !exists(&f, &CORE_CONFIGMAPS, "a").await).await;
    let kept = f.registry.get(&CORE_SECRETS, Some("ns"), "kept").await.expect("dependent kept");
    assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");
}

#[tokio::test]
async fn foreground_waits_for_blocking_dependents() {
    let f = fixture().await;
    let a = owner(&f, "a").await;
    // The blocking dependent holds a finalizer: the owner must wait for it.
    let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": a["metadata"]["uid"], "blockOwnerDeletion": true}]);
    let body = json!({"metadata": {"name": "held", "ownerReferences": refs, "finalizers": ["example.com/hold"]}});
    f.registry.create(&CORE_SECRETS, Some("ns"), body, WriteOptions::default()).await.expect("held");
    let options = DeleteOptions::propagate(Propagation::Foreground);
    f.registry.delete_with(&CORE_CONFIGMAPS, Some("ns"), "a", &options, WriteOptions::default()).await.expect("delete");
    eventually("dependent marked deleting", async || {
        f.registry.get(&CORE_SECRETS, Some("ns"), "held").await.is_ok_and(|s| s["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    let waiting = f.registry.get(&CORE_CONFIGMAPS, Some("ns"), "a").await.expect("owner waits");
    assert_eq!(waiting["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    let patch = tessera_api::patch::Patch::Merge(json!({"metadata": {"finalizers": null}}));
    f.registry.patch(&CORE_SECRETS, Some("ns"), "held", &patch, WriteOptions::default()).await.expect("release");
    eventually("owner gone after its dependent", async || !exists(&f, &CORE_CONFIGMAPS, "a").await).await;
}

#[test]
fn store_keys_map_to_kinds() {
    let (r, ns, name) = parse_key("/registry/secrets/ns/a").expect("secret");
    assert_eq!((r.plural, ns, name), ("secrets", Some("ns"), "a"));
    let (r, ns, name) = parse_key("/registry/rbac.authorization.k8s.io/clusterroles/system:x").expect("clusterrole");
    assert_eq!((r.plural, ns, name), ("clusterroles", None, "system:x"));
    assert!(parse_key("/registry/events/ns/e").is_none(), "events are not collected");
    assert!(parse_key("/registry/secrets/ns").is_none());
    assert!(parse_key("/elsewhere/x").is_none());
}
