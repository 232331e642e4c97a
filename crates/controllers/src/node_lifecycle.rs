//! The node lifecycle controller: a node that stops heartbeating loses its
//! pods, and with them its pods' tokens (a bound token dies with its pod).
//!
//! Each node renews the Lease `kube-node-lease/NAME` (`spec.renewTime`), as
//! kubelet does. Per node, an explicit state machine:
//!
//! - `Renewing`: a change of `renewTime` was seen at `observed`. When
//!   `leaseDurationSeconds` pass with no further renewal (or the Lease is
//!   deleted), every pod bound to the node (`spec.nodeName`) gets the
//!   condition `Ready=False`, the Node's `Ready` condition becomes `Unknown`
//!   (kube's node lifecycle controller), and the node is `Expired`.
//! - `Expired`: after [`Settings::eviction_timeout`] with no renewal, every
//!   pod bound to the node is deleted, and the node is `Evicted`.
//! - `Evicted`: nothing left to do until the node renews again.
//!
//! A renewal in any state makes the node `Renewing` again (the agent marks
//! its pods ready itself). Expiry is measured on this server's monotonic
//! clock from when the renewal was *observed*, never from `renewTime`, so a
//! node's clock cannot hold its pods alive. A new leader starts every node
//! with a full lease duration, as kube's controller does.
//!
//! Pods of a node that never had a Lease are left alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_api::registry::{ListParams, Preconditions, WriteOptions, WriteScope};
use tessera_api::resource::{COORDINATION_LEASES, CORE_NODES, CORE_PODS};
use tessera_api::selector::FieldSelector;
use tessera_api::{ApiError, Registry};
use tessera_store::{EventKind, WatchEvent};
use tokio::time::Instant;

use crate::follow;

/// The namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// A Lease without `leaseDurationSeconds` counts as kubelet's 40 s.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(40);

/// How the controller treats nodes whose Lease expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long the pods of a node whose Lease expired stay (not ready)
    /// before they are deleted. Default 60 s.
    pub eviction_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { eviction_timeout: Duration::from_secs(60) }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(registry: Registry, settings: Settings, shutdown: impl std::future::Future<Output = ()>) {
    let controller = NodeLifecycle { registry: registry.clone(), settings, nodes: Mutex::default() };
    follow::follow(&registry, &controller, None, shutdown).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Renewed at the node's `observed` time.
    Renewing,
    /// The lease expired at `since`; its pods are marked not ready.
    Expired { since: Instant },
    /// Its pods were deleted.
    Evicted,
}

#[derive(Debug, Clone)]
struct Tracked {
    /// The last `spec.renewTime` seen (None: the Lease is gone).
    renew_time: Option<String>,
    /// When that renewal was seen.
    observed: Instant,
    duration: Duration,
    phase: Phase,
}

impl Tracked {
    fn due(&self, eviction_timeout: Duration) -> Option<Instant> {
        match self.phase {
            Phase::Renewing if self.renew_time.is_none() => Some(self.observed),
            Phase::Renewing => Some(self.observed + self.duration),
            Phase::Expired { since } => Some(since + eviction_timeout),
            Phase::Evicted => None,
        }
    }
}

/// What is due for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    MarkNotReady(String),
    Evict(String),
}

struct NodeLifecycle {
    registry: Registry,
    settings: Settings,
    nodes: Mutex<HashMap<String, Tracked>>,
}

impl NodeLifecycle {
    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        // Every change is one insert or field write; a panic cannot tear it.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a Lease as seen now (None: deleted).
    fn observe(&self, name: &str, lease: Option<&Value>, now: Instant) {
        let mut nodes = self.nodes();
        let Some(lease) = lease else {
            match nodes.get_mut(name) {
                Some(tracked) if tracked.phase == Phase::Evicted => {
                    nodes.remove(name);
                }
                Some(tracked) => {
                    if tracked.phase == Phase::Renewing {
                        // A deleted heartbeat is a stopped one: it expires now.
                        tracked.observed = now;
                    }
                    tracked.renew_time = None;
                }
                None => {}
            }
            return;
        };
        let renew_time = lease.pointer("/spec/renewTime").and_then(Value::as_str).map(str::to_owned);
        let duration = lease
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_u64)
            .filter(|d| *d > 0)
            .map_or(DEFAULT_LEASE_DURATION, Duration::from_secs);
        match nodes.get_mut(name) {
            // Other writes to the Lease (labels, a controller's own) are not heartbeats.
            Some(tracked) if tracked.renew_time == renew_time => tracked.duration = duration,
            _ => {
                if nodes.get(name).is_some_and(|t| t.phase != Phase::Renewing) {
                    tracing::info!(node = name, "node renews its lease again");
                }
                nodes.insert(name.to_owned(), Tracked { renew_time, observed: now, duration, phase: Phase::Renewing });
            }
        }
    }

    /// Advances every node whose deadline passed; returns what to do.
    fn due_actions(&self, now: Instant) -> Vec<Action> {
        let timeout = self.settings.eviction_timeout;
        let mut actions = Vec::new();
        let mut nodes = self.nodes();
        nodes.retain(|name, tracked| {
            if tracked.due(timeout).is_none_or(|due| due > now) {
                return true;
            }
            match tracked.phase {
                Phase::Renewing => {
                    tracked.phase = Phase::Expired { since: now };
                    actions.push(Action::MarkNotReady(name.clone()));
                    true
                }
                Phase::Expired { .. } => {
                    tracked.phase = Phase::Evicted;
                    actions.push(Action::Evict(name.clone()));
                    // Nothing more will happen to a node whose Lease is gone.
                    tracked.renew_time.is_some()
                }
                Phase::Evicted => true,
            }
        });
        actions
    }

    async fn act(&self, action: Action) -> Result<(), ApiError> {
        match action {
            Action::MarkNotReady(node) => {
                tracing::warn!(node = %node, "node stopped renewing its lease: its pods are not ready");
                mark_node_unknown(&self.registry, &node).await?;
                for pod in pods_on(&self.registry, &node).await? {
                    mark_pod_not_ready(&self.registry, &pod).await?;
                }
                Ok(())
            }
            Action::Evict(node) => {
                let pods = pods_on(&self.registry, &node).await?;
                tracing::warn!(node = %node, pods = pods.len(), timeout = ?self.settings.eviction_timeout, "node lease expired past the eviction timeout: deleting its pods");
                for pod in pods {
                    delete_pod(&self.registry, &pod).await?;
                }
                Ok(())
            }
        }
    }
}

impl follow::Controller for NodeLifecycle {
    const NAME: &'static str = "node-lifecycle";

    fn prefixes(&self) -> Vec<String> {
        vec![COORDINATION_LEASES.key_prefix(Some(NODE_LEASE_NAMESPACE))]
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        let list = self.registry.list(&COORDINATION_LEASES, Some(NODE_LEASE_NAMESPACE), &ListParams::default()).await?;
        let now = Instant::now();
        let mut seen = Vec::new();
        for lease in list.get("items").and_then(Value::as_array).into_iter().flatten() {
            let name = lease.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            // A fresh start for every node: a full duration before anything expires.
            self.nodes().remove(&name);
            self.observe(&name, Some(lease), now);
            seen.push(name);
        }
        for name in self.nodes().keys().filter(|n| !seen.contains(n)).cloned().collect::<Vec<_>>() {
            self.observe(&name, None, now);
        }
        Ok(())
    }

    async fn on_event(&self, event: WatchEvent) -> Result<(), ApiError> {
        let Some(name) = event.kv.key.strip_prefix(&COORDINATION_LEASES.key_prefix(Some(NODE_LEASE_NAMESPACE))) else { return Ok(()) };
        let lease = match event.kind {
            EventKind::Delete => None,
            _ => serde_json::from_slice::<Value>(&event.kv.value).ok(),
        };
        self.observe(name, lease.as_ref(), Instant::now());
        Ok(())
    }

    fn next_timer(&self) -> Option<Instant> {
        let timeout = self.settings.eviction_timeout;
        self.nodes().values().filter_map(|t| t.due(timeout)).min()
    }

    async fn on_timer(&self) -> Result<(), ApiError> {
        for action in self.due_actions(Instant::now()) {
            self.act(action).await?;
        }
        Ok(())
    }
}

/// `(namespace, name, uid)` of every pod bound to `node`.
async fn pods_on(registry: &Registry, node: &str) -> Result<Vec<(String, String, String)>, ApiError> {
    let params = ListParams { fields: FieldSelector::field_equals("spec.nodeName", node), ..ListParams::default() };
    let list = registry.list(&CORE_PODS, None, &params).await?;
    let text = |pod: &Value, p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|pod| (text(pod, "/metadata/namespace"), text(pod, "/metadata/name"), text(pod, "/metadata/uid")))
        .collect())
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

/// Sets condition `type_` in `object.status.conditions` (keeping the
/// transition time when the status is unchanged); true if anything changed.
fn set_condition(object: &mut Value, type_: &str, status: &str, extra: Value) -> bool {
    let Some(obj) = object.as_object_mut() else { return false };
    let conditions = obj.entry("status").or_insert_with(|| json!({}));
    if !conditions.is_object() {
        *conditions = json!({});
    }
    let list = conditions.as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    let Some(Value::Array(list)) = list else { return false };
    let mut wanted = json!({"type": type_, "status": status, "lastTransitionTime": now_rfc3339()});
    if let (Some(w), Some(extra)) = (wanted.as_object_mut(), extra.as_object()) {
        w.extend(extra.clone());
    }
    match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)) {
        Some(current) if current.get("status").and_then(Value::as_str) == Some(status) => false,
        Some(current) => {
            if let (Some(c), Some(w)) = (current.as_object_mut(), wanted.as_object()) {
                c.extend(w.clone());
            }
            true
        }
        None => {
            list.push(wanted);
            true
        }
    }
}

/// Read-modify-write of a status, retried on conflicts; a vanished object is fine.
async fn update_status(
    registry: &Registry,
    resource: &'static tessera_api::ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    change: impl Fn(&mut Value) -> bool,
) -> Result<(), ApiError> {
    for _ in 0..5 {
        let mut object = match registry.get(resource, namespace, name).await {
            Ok(o) => o,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        if !change(&mut object) {
            return Ok(());
        }
        let options = WriteOptions { scope: WriteScope::Status, ..WriteOptions::default() };
        match registry.update(resource, namespace, name, object, options).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(resource, name))
}

/// kube's `MarkPodsNotReady`: the pod's Ready condition becomes False.
async fn mark_pod_not_ready(registry: &Registry, (namespace, name, _uid): &(String, String, String)) -> Result<(), ApiError> {
    update_status(registry, &CORE_PODS, Some(namespace), name, |pod| set_condition(pod, "Ready", "False", json!({}))).await
}

/// The Node's Ready condition becomes Unknown, as kube's node lifecycle controller sets it.
async fn mark_node_unknown(registry: &Registry, node: &str) -> Result<(), ApiError> {
    let why = json!({"reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."});
    update_status(registry, &CORE_NODES, None, node, |n| set_condition(n, "Ready", "Unknown", why.clone())).await
}

/// Deletes exactly the pod that was listed (by uid): a pod re-created under
/// the same name since is a different pod.
async fn delete_pod(registry: &Registry, (namespace, name, uid): &(String, String, String)) -> Result<(), ApiError> {
    let preconditions = Preconditions { uid: Some(uid.clone()), resource_version: None };
    match registry.delete(&CORE_PODS, Some(namespace), name, &preconditions, WriteOptions::default()).await {
        Ok(_) => {
            tracing::info!(namespace = %namespace, pod = %name, "deleted a pod of a lost node: its tokens are revoked");
            Ok(())
        }
        Err(e) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
