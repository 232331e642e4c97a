//! The endpointslice controller, as kube-controller-manager's: for each
//! Service with a selector, EndpointSlices (`NAME-xxxxx`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`,
//! owned by the Service) listing the selected pods that have an IP, with
//! their `ready` / `serving` / `terminating` conditions, and the Service's
//! ports resolved against each pod (named target ports through the pod's
//! container ports; a pod that does not name a port gets no such port).
//! Pods that resolve to different port sets land in different slices.
//!
//! It also keeps the Service IP allocation honest (see
//! [`tessera_api::service_ips`]): a deleted Service's IP is released, and a
//! full pass releases claims no Service holds.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};
use tessera_api::registry::{ListParams, Preconditions, WriteOptions};
use tessera_api::resource::{CORE_PODS, CORE_SERVICES, DISCOVERY_ENDPOINTSLICES};
use tessera_api::{ApiError, Registry, service_ips};
use tessera_store::{EventKind, WatchEvent};

use crate::follow;

/// `kubernetes.io/service-name`.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value kube's controller writes.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";

/// Runs the controller until `shutdown` (on the leader only).
pub async fn run(registry: Registry, shutdown: impl std::future::Future<Output = ()>) {
    let controller = EndpointSliceController { registry: registry.clone() };
    follow::follow(&registry, &controller, None, shutdown).await;
}

struct EndpointSliceController {
    registry: Registry,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn items(list: &Value) -> Vec<Value> {
    list.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// `(kind, namespace, name)` of a key below `/registry/`.
fn parse_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix("/registry/")?;
    let rest = rest.strip_prefix("discovery.k8s.io/").unwrap_or(rest);
    let mut parts = rest.splitn(3, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// Whether `labels` satisfy a Service's equality selector.
fn selects(selector: &Map<String, Value>, labels: Option<&Map<String, Value>>) -> bool {
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn is_managed(slice: &Value, service: &str) -> bool {
    let labels = slice.pointer("/metadata/labels");
    labels.and_then(|l| l.get(MANAGED_BY_LABEL)).and_then(Value::as_str) == Some(CONTROLLER_NAME)
        && labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).and_then(Value::as_str) == Some(service)
}

/// kube's `IsPodReady`: the Ready condition is True.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type").and_then(Value::as_str) == Some("Ready") && c.get("status").and_then(Value::as_str) == Some("True"))
}

/// The port a Service port reaches on `pod`: a number as is, a name through
/// the pod's container ports of the same protocol (kube's `podutil.FindPort`).
pub fn resolve_target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    let protocol = service_port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    match service_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name) && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol)
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
        _ => service_port.get("port").and_then(Value::as_i64),
    }
}

/// The desired slices of a Service: `(ports, endpoints)` groups, in a stable order.
fn desired(service: &Value, pods: &[Value]) -> Vec<(Vec<Value>, Vec<Value>)> {
    let publish_not_ready = service.pointer("/spec/publishNotReadyAddresses").and_then(Value::as_bool) == Some(true);
    let service_ports = service.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let ip = str_at(pod, "/status/podIP");
        let phase = str_at(pod, "/status/phase");
        // kube's ShouldPodBeInEndpoints (terminating pods included, as EndpointSlices do).
        if ip.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let ports: Vec<Value> = service_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_target_port(sp, pod)?;
                let mut out = json!({
                    "name": sp.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "port": port,
                    "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                });
                if let Some(app) = sp.get("appProtocol") {
                    out["appProtocol"] = app.clone();
                }
                Some(out)
            })
            .collect();
        let serving = pod_ready(pod);
        let terminating = pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
        // kube: a terminating pod is never ready unless not-ready addresses are published.
        let ready = publish_not_ready || (serving && !terminating);
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": str_at(pod, "/metadata/namespace"), "name": str_at(pod, "/metadata/name"), "uid": str_at(pod, "/metadata/uid")},
        });
        if let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            endpoint["nodeName"] = json!(node);
        }
        let group = groups.entry(Value::Array(ports.clone()).to_string()).or_insert_with(|| (ports, Vec::new()));
        group.1.push(endpoint);
    }
    let mut out: Vec<(Vec<Value>, Vec<Value>)> = groups.into_values().collect();
    for (_, endpoints) in &mut out {
        endpoints.sort_by(|a, b| a["addresses"][0].as_str().cmp(&b["addresses"][0].as_str()).then(a["targetRef"]["name"].as_str().cmp(&b["targetRef"]["name"].as_str())));
    }
    if out.is_empty() {
        // kube keeps one placeholder slice for a Service without endpoints.
        out.push((Vec::new(), Vec::new()));
    }
    out
}

/// The slice body for one group (metadata merged into `base`, an existing slice or a new one).
fn slice_body(service: &Value, base: Option<&Value>, ports: &[Value], endpoints: &[Value]) -> Value {
    let name = str_at(service, "/metadata/name");
    let mut labels: Map<String, Value> = service.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(CONTROLLER_NAME));
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name, "uid": str_at(service, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    let mut slice = base.cloned().unwrap_or_else(|| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"generateName": format!("{name}-")}})
    });
    slice["metadata"]["labels"] = Value::Object(labels);
    slice["metadata"]["ownerReferences"] = owner;
    slice["addressType"] = json!("IPv4");
    slice["endpoints"] = json!(endpoints);
    slice["ports"] = json!(ports);
    slice
}

impl EndpointSliceController {
    async fn managed_slices(&self, namespace: &str, service: &str) -> Result<Vec<Value>, ApiError> {
        let list = self.registry.list(&DISCOVERY_ENDPOINTSLICES, Some(namespace), &ListParams::default()).await?;
        let mut slices: Vec<Value> = items(&list).into_iter().filter(|s| is_managed(s, service)).collect();
        slices.sort_by(|a, b| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")));
        Ok(slices)
    }

    async fn delete_slice(&self, namespace: &str, slice: &Value) -> Result<(), ApiError> {
        let name = str_at(slice, "/metadata/name");
        match self.registry.delete(&DISCOVERY_ENDPOINTSLICES, Some(namespace), name, &Preconditions::default(), WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code, 404 | 409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Brings the slices of Service `namespace/name` to the desired state.
    async fn reconcile(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let existing = self.managed_slices(namespace, name).await?;
        let service = match self.registry.get(&CORE_SERVICES, Some(namespace), name).await {
            Ok(svc) => Some(svc),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let selector = service.as_ref().and_then(|s| s.pointer("/spec/selector")).and_then(Value::as_object).filter(|s| !s.is_empty()).cloned();
        let (Some(service), Some(selector)) = (service, selector) else {
            for slice in &existing {
                self.delete_slice(namespace, slice).await?;
            }
            return Ok(());
        };
        let pods = self.registry.list(&CORE_PODS, Some(namespace), &ListParams::default()).await?;
        let pods: Vec<Value> = items(&pods).into_iter().filter(|p| selects(&selector, p.pointer("/metadata/labels").and_then(Value::as_object))).collect();
        let groups = desired(&service, &pods);
        for (i, (ports, endpoints)) in groups.iter().enumerate() {
            match existing.get(i) {
                Some(current) => {
                    let next = slice_body(&service, Some(current), ports, endpoints);
                    if &next == current {
                        continue;
                    }
                    let slice_name = str_at(current, "/metadata/name");
                    match self.registry.update(&DISCOVERY_ENDPOINTSLICES, Some(namespace), slice_name, next, WriteOptions::default()).await {
                        Ok(_) => {}
                        // Changed or gone meanwhile: its watch event brings us back.
                        Err(e) if matches!(e.code, 404 | 409) => {}
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let body = slice_body(&service, None, ports, endpoints);
                    match self.registry.create(&DISCOVERY_ENDPOINTSLICES, Some(namespace), body, WriteOptions::default()).await {
                        Ok(_) => {}
                        // The namespace is going away.
                        Err(e) if matches!(e.code, 403 | 404 | 409) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        for slice in existing.iter().skip(groups.len()) {
            self.delete_slice(namespace, slice).await?;
        }
        Ok(())
    }

    /// Services in `namespace` whose selector matches any of `labels`.
    async fn services_selecting(&self, namespace: &str, labels: &[Option<Map<String, Value>>]) -> Result<Vec<String>, ApiError> {
        let list = self.registry.list(&CORE_SERVICES, Some(namespace), &ListParams::default()).await?;
        Ok(items(&list)
            .into_iter()
            .filter(|svc| {
                svc.pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .filter(|s| !s.is_empty())
                    .is_some_and(|selector| labels.iter().any(|l| selects(selector, l.as_ref())))
            })
            .map(|svc| str_at(&svc, "/metadata/name").to_owned())
            .collect())
    }
}

fn labels_of(value: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<Value>(value).ok()?.pointer("/metadata/labels").and_then(Value::as_object).cloned()
}

impl follow::Controller for EndpointSliceController {
    const NAME: &'static str = "endpointslices";

    fn prefixes(&self) -> Vec<String> {
        [&CORE_SERVICES, &CORE_PODS, &DISCOVERY_ENDPOINTSLICES].iter().map(|r| r.key_prefix(None)).collect()
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        let services = self.registry.list(&CORE_SERVICES, None, &ListParams::default()).await?;
        let mut seen = HashSet::new();
        for svc in items(&services) {
            let (ns, name) = (str_at(&svc, "/metadata/namespace"), str_at(&svc, "/metadata/name"));
            seen.insert((ns.to_owned(), name.to_owned()));
            self.reconcile(ns, name).await?;
        }
        // Slices of Services that are gone.
        let slices = self.registry.list(&DISCOVERY_ENDPOINTSLICES, None, &ListParams::default()).await?;
        for slice in items(&slices) {
            let ns = str_at(&slice, "/metadata/namespace");
            let service = str_at(&slice, &format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")));
            if is_managed(&slice, service) && !seen.contains(&(ns.to_owned(), service.to_owned())) {
                self.delete_slice(ns, &slice).await?;
            }
        }
        let released = service_ips::repair(self.registry.store().as_ref()).await?;
        if released > 0 {
            tracing::info!(released, "released service IPs no Service holds");
        }
        Ok(())
    }

    async fn on_event(&self, event: WatchEvent) -> Result<(), ApiError> {
        let Some((kind, namespace, name)) = parse_key(&event.kv.key) else { return Ok(()) };
        match kind {
            "services" => {
                // A deleted Service's IP, or the one a Service gave up (a change to ExternalName), is free.
                let before: Value = match (&event.kind, &event.prev) {
                    (EventKind::Delete, _) => serde_json::from_slice(&event.kv.value).unwrap_or(Value::Null),
                    (_, Some(prev)) => serde_json::from_slice(&prev.value).unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                let now: Value = match event.kind {
                    EventKind::Delete => Value::Null,
                    _ => serde_json::from_slice(&event.kv.value).unwrap_or(Value::Null),
                };
                let ip = str_at(&before, "/spec/clusterIP");
                if !ip.is_empty() && ip != str_at(&now, "/spec/clusterIP") {
                    service_ips::release(self.registry.store().as_ref(), ip, str_at(&before, "/metadata/uid")).await;
                }
                self.reconcile(namespace, name).await
            }
            "pods" => {
                let now = (event.kind != EventKind::Delete).then(|| labels_of(&event.kv.value)).flatten();
                let before = event.prev.as_ref().and_then(|p| labels_of(&p.value));
                let removed = event.kind == EventKind::Delete;
                let labels = if removed { vec![labels_of(&event.kv.value), before] } else { vec![now, before] };
                for service in self.services_selecting(namespace, &labels).await? {
                    self.reconcile(namespace, &service).await?;
                }
                Ok(())
            }
            "endpointslices" => {
                // Someone else's edit (or delete) of a managed slice is undone.
                let slice: Value = serde_json::from_slice(&event.kv.value).unwrap_or(Value::Null);
                let service = str_at(&slice, &format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")));
                if is_managed(&slice, service) {
                    self.reconcile(namespace, service).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"), "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
               "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn endpoints_and_ports_as_kube() {
        let svc = json!({"metadata": {"name": "web", "uid": "s"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "a", "port": 80, "protocol": "TCP", "targetPort": "http"}, {"name": "b", "port": 81, "protocol": "TCP", "targetPort": 9090}]}});
        let mut terminating = pod("c", "127.0.0.3", true);
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let mut unnamed = pod("d", "127.0.0.4", true);
        unnamed["spec"]["containers"][0]["ports"] = json!([]);
        let no_ip = pod("e", "", true);
        let groups = desired(&svc, &[pod("b", "127.0.0.2", false), pod("a", "127.0.0.1", true), terminating, unnamed, no_ip]);
        assert_eq!(groups.len(), 2);
        let (ports, endpoints) = &groups[0];
        assert_eq!(ports, &vec![json!({"name": "a", "port": 8080, "protocol": "TCP"}), json!({"name": "b", "port": 9090, "protocol": "TCP"})]);
        let conditions: Vec<(&str, &Value)> = endpoints.iter().map(|e| (e["addresses"][0].as_str().unwrap(), &e["conditions"])).collect();
        assert_eq!(conditions, [
            ("127.0.0.1", &json!({"ready": true, "serving": true, "terminating": false})),
            ("127.0.0.2", &json!({"ready": false, "serving": false, "terminating": false})),
            ("127.0.0.3", &json!({"ready": false, "serving": true, "terminating": true})),
        ]);
        assert_eq!(endpoints[0]["targetRef"], json!({"kind": "Pod", "namespace": "ns", "name": "a", "uid": "u-a"}));
        assert_eq!(endpoints[0]["nodeName"], "n1");
        assert_eq!(groups[1].0, vec![json!({"name": "b", "port": 9090, "protocol": "TCP"})]);
        assert_eq!(desired(&svc, &[]), vec![(vec![], vec![])]);
    }
}
