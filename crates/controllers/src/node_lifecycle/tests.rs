use std::sync::Arc;

use tessera_api::resource::CORE_NAMESPACES;
use tessera_store::sqlite::SqliteStore;

use super::*;
use crate::follow::Controller as _;

fn lease(renew: &str, seconds: u64) -> Value {
    json!({"metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": seconds, "renewTime": renew}})
}

async fn controller(eviction_timeout: Duration) -> (NodeLifecycle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("db")).expect("store");
    let registry = Registry::new(Arc::new(store));
    crate::bootstrap(&registry, "CA").await.expect("bootstrap");
    (NodeLifecycle { registry, settings: Settings { eviction_timeout }, nodes: Mutex::default() }, dir)
}

#[tokio::test]
async fn a_silent_node_expires_then_is_evicted() {
    let (c, _dir) = controller(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    c.observe("n1", Some(&lease("2026-01-01T00:00:00.000000Z", 4)), t0);
    assert_eq!(c.next_timer(), Some(t0 + Duration::from_secs(4)));
    assert!(c.due_actions(t0 + Duration::from_secs(3)).is_empty());
    let expired_at = t0 + Duration::from_secs(4);
    assert_eq!(c.due_actions(expired_at), [Action::MarkNotReady("n1".into())]);
    assert_eq!(c.next_timer(), Some(expired_at + Duration::from_secs(10)));
    assert!(c.due_actions(expired_at + Duration::from_secs(9)).is_empty());
    assert_eq!(c.due_actions(expired_at + Duration::from_secs(10)), [Action::Evict("n1".into())]);
    assert_eq!(c.next_timer(), None, "nothing is left to do for an evicted node");
}

#[tokio::test]
async fn only_a_new_renew_time_is_a_heartbeat() {
    let (c, _dir) = controller(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    c.observe("n1", Some(&lease("2026-01-01T00:00:00.000000Z", 4)), t0);
    // A write that does not renew (labels, say) keeps the deadline.
    c.observe("n1", Some(&lease("2026-01-01T00:00:00.000000Z", 4)), t0 + Duration::from_secs(3));
    assert_eq!(c.next_timer(), Some(t0 + Duration::from_secs(4)));
    // An expired node that renews again starts over.
    assert_eq!(c.due_actions(t0 + Duration::from_secs(4)).len(), 1);
    c.observe("n1", Some(&lease("2026-01-01T00:00:05.000000Z", 4)), t0 + Duration::from_secs(5));
    assert_eq!(c.next_timer(), Some(t0 + Duration::from_secs(9)));
    assert!(c.due_actions(t0 + Duration::from_secs(8)).is_empty());
}

#[tokio::test]
async fn a_deleted_lease_expires_at_once_and_is_forgotten_after_eviction() {
    let (c, _dir) = controller(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    c.observe("n1", Some(&lease("2026-01-01T00:00:00.000000Z", 40)), t0);
    let t1 = t0 + Duration::from_secs(1);
    c.observe("n1", None, t1);
    assert_eq!(c.due_actions(t1), [Action::MarkNotReady("n1".into())]);
    assert_eq!(c.due_actions(t1 + Duration::from_secs(10)), [Action::Evict("n1".into())]);
    assert!(c.nodes().is_empty());
}

async fn pod(registry: &Registry, name: &str, node: &str) -> Value {
    let body = json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    registry.create(&CORE_PODS, Some("default"), body, WriteOptions::default()).await.expect("pod")
}

fn ready(pod: &Value) -> &str {
    pod.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten()
        .find(|c| c["type"] == "Ready").and_then(|c| c["status"].as_str()).unwrap_or_default()
}

#[tokio::test]
async fn expiry_marks_only_that_nodes_pods_and_eviction_deletes_them() {
    let (c, _dir) = controller(Duration::from_secs(10)).await;
    let r = &c.registry;
    r.create(&CORE_NODES, None, json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}), WriteOptions::default())
        .await
        .expect("node");
    pod(r, "a", "n1").await;
    pod(r, "b", "n2").await;
    c.act(Action::MarkNotReady("n1".into())).await.expect("mark");
    assert_eq!(ready(&r.get(&CORE_PODS, Some("default"), "a").await.expect("a")), "False");
    assert_eq!(ready(&r.get(&CORE_PODS, Some("default"), "b").await.expect("b")), "True");
    let node = r.get(&CORE_NODES, None, "n1").await.expect("node");
    assert_eq!(node["status"]["conditions"][0]["status"], "Unknown");
    assert_eq!(node["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
    c.act(Action::Evict("n1".into())).await.expect("evict");
    assert_eq!(r.get(&CORE_PODS, Some("default"), "a").await.unwrap_err().code, 404);
    assert!(r.get(&CORE_PODS, Some("default"), "b").await.is_ok());
    // Nothing to do is not an error (the node object or pods may be gone).
    c.act(Action::MarkNotReady("ghost".into())).await.expect("no node, no pods");
}

#[tokio::test]
async fn the_running_controller_deletes_a_silent_nodes_pods() {
    let (c, dir) = controller(Duration::from_millis(500)).await;
    let registry = c.registry.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(registry.clone(), c.settings, async move {
        let mut rx = stopped;
        let _ = rx.wait_for(|s| *s).await;
    }));
    pod(&registry, "a", "n1").await;
    let body = lease("2026-01-01T00:00:00.000000Z", 1);
    registry.create(&COORDINATION_LEASES, Some(NODE_LEASE_NAMESPACE), body, WriteOptions::default()).await.expect("lease");
    // Lease 1 s + eviction 0.5 s; the deadline only guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(20);
    while registry.get(&CORE_PODS, Some("default"), "a").await.is_ok() {
        assert!(Instant::now() < deadline, "the pod of a silent node was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    task.await.expect("controller stops");
    assert!(registry.get(&CORE_NAMESPACES, None, "kube-node-lease").await.is_ok());
    drop(dir);
}
