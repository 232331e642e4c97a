use std::sync::Arc;

use tessera_api::registry::Preconditions;
use tessera_store::observed::Observed;
use tessera_store::sqlite::SqliteStore;

use super::*;

async fn registry() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("db")).expect("store");
    (Registry::new(Arc::new(store)), dir)
}

#[test]
fn keys_map_to_namespaces() {
    assert_eq!(namespace_of_key("/registry/namespaces/foo").as_deref(), Some("foo"));
    assert_eq!(namespace_of_key("/registry/serviceaccounts/foo/default").as_deref(), Some("foo"));
    assert_eq!(namespace_of_key("/registry/configmaps/foo").as_deref(), None);
    assert_eq!(namespace_of_key("/elsewhere/x/y"), None);
}

#[tokio::test]
async fn bootstrap_creates_namespaces_and_defaults_idempotently() {
    let (registry, _dir) = registry().await;
    bootstrap(&registry, "CA").await.expect("bootstrap");
    let again = bootstrap(&registry, "CA").await.expect("second bootstrap");
    for ns in BOOTSTRAP_NAMESPACES {
        registry.get(&CORE_SERVICEACCOUNTS, Some(ns), "default").await.expect("default sa");
        let cm = registry.get(&CORE_CONFIGMAPS, Some(ns), ROOT_CA_CONFIGMAP).await.expect("root ca");
        assert_eq!(cm["data"]["ca.crt"], "CA");
    }
    // A second bootstrap writes nothing.
    assert_eq!(registry.resource_version().await.expect("rv"), again.to_string());
}

#[tokio::test]
async fn edited_root_ca_is_restored_and_terminating_namespace_is_emptied() {
    let (registry, _dir) = registry().await;
    bootstrap(&registry, "CA").await.expect("bootstrap");
    let patch = tessera_api::patch::Patch::Merge(json!({"data": {"ca.crt": "forged"}}));
    registry.patch(&CORE_CONFIGMAPS, Some("default"), ROOT_CA_CONFIGMAP, &patch, WriteOptions::default()).await.expect("patch");
    reconcile_namespace(&registry, "CA", "default").await.expect("reconcile");
    let cm = registry.get(&CORE_CONFIGMAPS, Some("default"), ROOT_CA_CONFIGMAP).await.expect("root ca");
    assert_eq!(cm["data"]["ca.crt"], "CA");

    registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "gone"}}), WriteOptions::default()).await.expect("ns");
    reconcile_namespace(&registry, "CA", "gone").await.expect("reconcile");
    registry.delete(&CORE_NAMESPACES, None, "gone", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    reconcile_namespace(&registry, "CA", "gone").await.expect("finish");
    assert_eq!(registry.get(&CORE_NAMESPACES, None, "gone").await.unwrap_err().code, 404);
    assert_eq!(registry.get(&CORE_SERVICEACCOUNTS, Some("gone"), "default").await.unwrap_err().code, 404);
}

#[tokio::test]
async fn terminating_namespace_waits_for_finalizers_of_its_content() {
    let (registry, _dir) = registry().await;
    bootstrap(&registry, "CA").await.expect("bootstrap");
    registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "held"}}), WriteOptions::default()).await.expect("ns");
    let cm = json!({"metadata": {"name": "keep", "finalizers": ["example.com/hold"]}});
    registry.create(&CORE_CONFIGMAPS, Some("held"), cm, WriteOptions::default()).await.expect("cm");
    let ns = registry.delete(&CORE_NAMESPACES, None, "held", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    reconcile_namespace(&registry, "CA", "held").await.expect("reconcile");
    let cm = registry.get(&CORE_CONFIGMAPS, Some("held"), "keep").await.expect("held by its finalizer");
    assert!(cm["metadata"]["deletionTimestamp"].is_string());
    registry.get(&CORE_NAMESPACES, None, "held").await.expect("namespace waits");
    let release = tessera_api::patch::Patch::Merge(json!({"metadata": {"finalizers": null}}));
    registry.patch(&CORE_CONFIGMAPS, Some("held"), "keep", &release, WriteOptions::default()).await.expect("release");
    reconcile_namespace(&registry, "CA", "held").await.expect("finish");
    assert_eq!(registry.get(&CORE_NAMESPACES, None, "held").await.unwrap_err().code, 404);
}

#[tokio::test]
async fn a_terminating_namespace_is_emptied_page_by_page_at_the_latest_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite: Arc<dyn tessera_store::Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).expect("store"));
    let store = Arc::new(Observed::new(sqlite));
    let registry = Registry::new(Arc::clone(&store) as Arc<dyn tessera_store::Store>);
    bootstrap(&registry, "CA").await.expect("bootstrap");
    registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "big"}}), WriteOptions::default()).await.expect("ns");
    // Three and a half pages of objects, one of them held by a finalizer.
    let objects = DELETION_PAGE * 7 / 2;
    let writes = (0..objects).map(|i| {
        let finalizers = if i == DELETION_PAGE + 1 { json!(["example.com/hold"]) } else { json!([]) };
        let cm = json!({"metadata": {"name": format!("cm-{i:04}"), "finalizers": finalizers}});
        let registry = &registry;
        async move { registry.create(&CORE_CONFIGMAPS, Some("big"), cm, WriteOptions::default()).await.map(drop) }
    });
    futures::stream::iter(writes).buffer_unordered(32).try_collect::<Vec<()>>().await.expect("create");
    registry.delete(&CORE_NAMESPACES, None, "big", &Preconditions::default(), WriteOptions::default()).await.expect("delete");
    store.take_list_revisions();

    reconcile_namespace(&registry, "CA", "big").await.expect("reconcile");

    // Every page was read at the latest revision: none at the first page's.
    let seen = store.take_list_revisions();
    assert!(seen.len() >= 4, "pages listed: {seen:?}");
    assert!(seen.iter().all(|r| *r == 0), "lists at a past revision: {seen:?}");
    // Everything went but the held object, and the namespace waits for it.
    let left = registry.list(&CORE_CONFIGMAPS, Some("big"), &ListParams::default()).await.expect("list");
    let names: Vec<&str> = left["items"].as_array().expect("items").iter().filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str)).collect();
    assert_eq!(names, vec![format!("cm-{:04}", DELETION_PAGE + 1).as_str()]);
    registry.get(&CORE_NAMESPACES, None, "big").await.expect("namespace waits");
    let release = tessera_api::patch::Patch::Merge(json!({"metadata": {"finalizers": null}}));
    registry.patch(&CORE_CONFIGMAPS, Some("big"), names[0], &release, WriteOptions::default()).await.expect("release");
    reconcile_namespace(&registry, "CA", "big").await.expect("finish");
    assert_eq!(registry.get(&CORE_NAMESPACES, None, "big").await.unwrap_err().code, 404);
}
