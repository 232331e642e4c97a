//! The destination API (`GET /tessera/v1/destinations?authority=HOST:PORT`),
//! Linkerd's destination service for tessera proxies: where an authority
//! leads (the ready endpoints of a Service port, or the pod at an IP) and
//! which identity each endpoint must present, derived from its pod's
//! ServiceAccount, never from what the peer claims. It exposes addresses and
//! identities only, never pod specs.
//!
//! Answers come from a watch-fed cache of Services, EndpointSlices and Pods
//! (a [`Reflector`]); `&watch=true` streams a new snapshot (one JSON object
//! per line) whenever the answer changes. The stream is pulled by the
//! connection: a snapshot is computed only when the previous one has been
//! taken, so a client that stops reading holds one snapshot, and the stream
//! ends when the client goes away, when the authority stops resolving (the
//! last line is then the Status), or after the server's watch timeout.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use axum::extract::State;
use serde_json::{Value, json};
use tessera_api::ApiError;
use tessera_api::resource::{CORE_PODS, CORE_SERVICES, DISCOVERY_ENDPOINTSLICES};

use crate::authz::Authorized;
use crate::http::AppState;
use crate::reflector::Reflector;
use crate::request::ParsedRequest;
use crate::response::HandlerResult;

/// The path this module serves.
pub const PATH: &str = "/tessera/v1/destinations";

/// Annotation the agent puts on a meshed pod.
pub const INJECT_ANNOTATION: &str = "linkerd.io/inject";

/// How identities are named (`tessera server --identity-trust-domain`,
/// `--identity-control-namespace`, as `tessera identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityNaming {
    /// e.g. `cluster.local`.
    pub trust_domain: String,
    /// e.g. `linkerd`.
    pub control_namespace: String,
}

impl Default for IdentityNaming {
    fn default() -> Self {
        Self { trust_domain: "cluster.local".into(), control_namespace: "linkerd".into() }
    }
}

impl IdentityNaming {
    /// `SA.NS.serviceaccount.identity.CONTROL-NS.TRUST-DOMAIN`.
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!("{service_account}.{namespace}.serviceaccount.identity.{}.{}", self.control_namespace, self.trust_domain)
    }
}

type Key = (String, String);

#[derive(Debug, Clone)]
struct ServicePort {
    port: i64,
    name: String,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    cluster_ip: String,
    ports: Vec<ServicePort>,
}

#[derive(Debug, Clone)]
struct SliceEntry {
    service: String,
    /// port name → port number
    ports: Vec<(String, i64)>,
    /// (address, ready, pod name)
    endpoints: Vec<(String, bool, String)>,
}

#[derive(Debug, Clone)]
struct PodEntry {
    ip: String,
    ready: bool,
    active: bool,
    service_account: String,
    meshed: bool,
    container_ports: Vec<i64>,
}

/// What the cache holds.
#[derive(Default)]
pub struct MeshState {
    services: HashMap<Key, ServiceEntry>,
    slices: HashMap<Key, SliceEntry>,
    pods: HashMap<Key, PodEntry>,
}

/// The cache (reads may be one watch event stale).
pub type MeshCache = Reflector<MeshState>;

/// A cache following Services, EndpointSlices and Pods.
pub fn mesh_cache() -> MeshCache {
    let prefixes = [&CORE_SERVICES, &DISCOVERY_ENDPOINTSLICES, &CORE_PODS].iter().map(|r| r.key_prefix(None)).collect();
    Reflector::new(prefixes, MeshState::apply)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

impl MeshState {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix("/registry/") else { return };
        let rest = rest.strip_prefix("discovery.k8s.io/").unwrap_or(rest);
        let mut parts = rest.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else { return };
        let k = (ns.to_owned(), name.to_owned());
        let obj: Option<Value> = value.and_then(|v| serde_json::from_slice(v).ok());
        match (kind, obj) {
            ("services", Some(svc)) => {
                let ports = svc
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
                    .map(|p| ServicePort { port: p.get("port").and_then(Value::as_i64).unwrap_or(0), name: str_at(p, "/name").to_owned() })
                    .collect();
                self.services.insert(k, ServiceEntry { cluster_ip: str_at(&svc, "/spec/clusterIP").to_owned(), ports });
            }
            ("endpointslices", Some(slice)) => {
                let ports = slice
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
                    .filter_map(|p| Some((str_at(p, "/name").to_owned(), p.get("port").and_then(Value::as_i64)?)))
                    .collect();
                let endpoints = slice
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| str_at(e, "/targetRef/kind") == "Pod")
                    .filter_map(|e| {
                        let address = e.pointer("/addresses/0").and_then(Value::as_str)?.to_owned();
                        // kube: a missing `ready` means ready.
                        let ready = e.pointer("/conditions/ready").and_then(Value::as_bool).unwrap_or(true);
                        Some((address, ready, str_at(e, "/targetRef/name").to_owned()))
                    })
                    .collect();
                let service = str_at(&slice, "/metadata/labels/kubernetes.io~1service-name").to_owned();
                self.slices.insert(k, SliceEntry { service, ports, endpoints });
            }
            ("pods", Some(pod)) => {
                let phase = str_at(&pod, "/status/phase");
                let deleting = pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
                let container_ports = pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
                    .filter_map(|p| p.get("containerPort").and_then(Value::as_i64))
                    .collect();
                let entry = PodEntry {
                    ip: str_at(&pod, "/status/podIP").to_owned(),
                    ready: tessera_controllers::endpointslice::pod_ready(&pod) && !deleting,
                    active: !matches!(phase, "Succeeded" | "Failed"),
                    service_account: str_at(&pod, "/spec/serviceAccountName").to_owned(),
                    meshed: pod.pointer("/metadata/annotations/linkerd.io~1inject").and_then(Value::as_str) == Some("enabled"),
                    container_ports,
                };
                self.pods.insert(k, entry);
            }
            ("services", None) => {
                self.services.remove(&k);
            }
            ("endpointslices", None) => {
                self.slices.remove(&k);
            }
            ("pods", None) => {
                self.pods.remove(&k);
            }
            _ => {}
        }
    }

    fn endpoint(&self, naming: &IdentityNaming, namespace: &str, pod_name: &str, pod: &PodEntry, address: String) -> Value {
        let identity = pod.meshed.then(|| naming.identity(namespace, &pod.service_account));
        json!({
            "address": address, "namespace": namespace, "pod": pod_name,
            "serviceAccount": pod.service_account, "meshed": pod.meshed, "identity": identity,
        })
    }

    fn service_snapshot(&self, naming: &IdentityNaming, authority: &str, ns: &str, name: &str, port: i64) -> Result<Value, ApiError> {
        let Some(service) = self.services.get(&(ns.to_owned(), name.to_owned())) else {
            return Err(ApiError::not_found(&CORE_SERVICES, name));
        };
        let Some(service_port) = service.ports.iter().find(|p| p.port == port) else {
            return Err(ApiError::not_found_because(format!("service \"{ns}/{name}\" has no TCP port {port}")));
        };
        let mut endpoints: Vec<Value> = Vec::new();
        let mut slices: Vec<(&Key, &SliceEntry)> = self.slices.iter().filter(|((sns, _), s)| sns == ns && s.service == name).collect();
        slices.sort_by(|a, b| a.0.cmp(b.0));
        for (_, slice) in slices {
            let Some((_, target)) = slice.ports.iter().find(|(n, _)| *n == service_port.name) else { continue };
            for (address, ready, pod_name) in &slice.endpoints {
                if !ready {
                    continue;
                }
                let Some(pod) = self.pods.get(&(ns.to_owned(), pod_name.clone())) else { continue };
                endpoints.push(self.endpoint(naming, ns, pod_name, pod, format!("{address}:{target}")));
            }
        }
        Ok(json!({"authority": authority, "service": {"namespace": ns, "name": name}, "endpoints": endpoints}))
    }

    fn ip_snapshot(&self, naming: &IdentityNaming, authority: &str, ip: Ipv4Addr, port: i64) -> Result<Value, ApiError> {
        let ip_text = ip.to_string();
        let mut services: Vec<&Key> = self.services.iter().filter(|(_, s)| s.cluster_ip == ip_text).map(|(k, _)| k).collect();
        services.sort();
        if let Some((ns, name)) = services.first() {
            return self.service_snapshot(naming, authority, ns, name, port);
        }
        let mut pods: Vec<(&Key, &PodEntry)> = self.pods.iter().filter(|(_, p)| p.ip == ip_text && p.active).collect();
        if pods.is_empty() {
            return Err(ApiError::not_found_because(format!("no Service or pod has the address {ip_text}")));
        }
        // Several pods may share an address (pods on a node's loopback): those that
        // declare the port are the ones registered at `IP:PORT`.
        if pods.iter().any(|(_, p)| p.container_ports.contains(&port)) {
            pods.retain(|(_, p)| p.container_ports.contains(&port));
        }
        pods.sort_by(|a, b| a.0.cmp(b.0));
        let endpoints: Vec<Value> = pods
            .into_iter()
            .filter(|(_, p)| p.ready)
            .map(|((ns, name), p)| self.endpoint(naming, ns, name, p, format!("{ip_text}:{port}")))
            .collect();
        Ok(json!({"authority": authority, "service": null, "endpoints": endpoints}))
    }
}

/// A parsed `authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Service { namespace: String, name: String, port: i64 },
    Ip { ip: Ipv4Addr, port: i64 },
}

fn malformed(authority: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("invalid authority {authority:?}: {why}"))
}

fn is_label(s: &str) -> bool {
    tessera_api::validation::dns1123_label(s).is_empty()
}

/// `NAME.NS[.svc[.cluster.local]]:PORT` or `IP:PORT`.
fn parse_authority(authority: &str) -> Result<Target, ApiError> {
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| malformed(authority, "expected HOST:PORT"))?;
    let port: i64 = port.parse().ok().filter(|p| (1..=65535).contains(p)).ok_or_else(|| malformed(authority, "the port must be a number from 1 to 65535"))?;
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Target::Ip { ip, port });
    }
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let (name, namespace) = match labels.as_slice() {
        [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => (*name, *ns),
        _ => return Err(malformed(authority, "the host must be NAME.NAMESPACE[.svc[.cluster.local]] or an IPv4 address")),
    };
    if !is_label(name) || !is_label(namespace) {
        return Err(malformed(authority, "the Service name and namespace must be DNS labels"));
    }
    Ok(Target::Service { namespace: namespace.to_owned(), name: name.to_owned(), port })
}

/// The answer for `authority` now.
pub fn resolve(cache: &MeshCache, naming: &IdentityNaming, authority: &str) -> Result<Value, ApiError> {
    let target = parse_authority(authority)?;
    cache.read(|state| match &target {
        Target::Service { namespace, name, port } => state.service_snapshot(naming, authority, namespace, name, *port),
        Target::Ip { ip, port } => state.ip_snapshot(naming, authority, *ip, *port),
    })
}

/// `GET /tessera/v1/destinations?authority=…[&watch=true]` (authorized as the
/// non-resource URL; the query is read from the authorized request).
pub async fn handler(State(state): State<AppState>, authorized: Authorized) -> HandlerResult {
    let ParsedRequest::NonResource(request) = authorized.request() else { return Err(ApiError::no_such_resource().into()) };
    let query = crate::request::Query::parse(request.query.as_deref().unwrap_or_default());
    let authority = query.first("authority").filter(|a| !a.is_empty()).ok_or_else(|| ApiError::bad_request("the authority parameter is required"))?.to_owned();
    let cache = state.destinations.clone();
    let naming = state.identity_naming.clone();
    let changes = cache.changes();
    crate::snapshots::respond(query.flag("watch"), changes, move || resolve(&cache, &naming, &authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> MeshCache {
        let cache = mesh_cache();
        let put = |state: &mut MeshState, key: &str, v: Value| state.apply(key, Some(v.to_string().as_bytes()));
        cache.write(|s| {
            put(s, "/registry/services/ds/data-store", json!({"spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 8081, "protocol": "TCP"}]}}));
            put(s, "/registry/discovery.k8s.io/endpointslices/ds/data-store-abcde", json!({
                "metadata": {"labels": {"kubernetes.io/service-name": "data-store"}},
                "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["127.1.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "ds-1"}},
                    {"addresses": ["127.1.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "ds-2"}},
                    {"addresses": ["127.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "plain"}},
                ]}));
            let pod = |ip: &str, meshed: bool| json!({"metadata": {"annotations": if meshed { json!({"linkerd.io/inject": "enabled"}) } else { json!({}) }},
                "spec": {"serviceAccountName": "data-store", "containers": [{"ports": [{"containerPort": 9000}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}});
            put(s, "/registry/pods/ds/ds-1", pod("127.1.0.2", true));
            put(s, "/registry/pods/ds/ds-2", pod("127.1.0.3", true));
            put(s, "/registry/pods/ds/plain", pod("127.0.0.1", false));
        });
        cache
    }

    #[test]
    fn service_names_resolve_to_ready_endpoints_with_identities() {
        let cache = seeded();
        let naming = IdentityNaming::default();
        let want_endpoints = json!([
            {"address": "127.1.0.2:9000", "namespace": "ds", "pod": "ds-1", "serviceAccount": "data-store", "meshed": true,
             "identity": "data-store.ds.serviceaccount.identity.linkerd.cluster.local"},
            {"address": "127.0.0.1:9000", "namespace": "ds", "pod": "plain", "serviceAccount": "data-store", "meshed": false, "identity": null},
        ]);
        for authority in ["data-store.ds.svc.cluster.local:8081", "data-store.ds.svc:8081", "data-store.ds:8081", "10.96.0.7:8081"] {
            let answer = resolve(&cache, &naming, authority).unwrap();
            assert_eq!(answer["service"], json!({"namespace": "ds", "name": "data-store"}), "{authority}");
            assert_eq!(answer["endpoints"], want_endpoints, "{authority}");
            assert_eq!(answer["authority"], authority);
        }
        let pod = resolve(&cache, &naming, "127.1.0.2:9000").unwrap();
        assert_eq!(pod["service"], Value::Null);
        assert_eq!(pod["endpoints"][0]["pod"], "ds-1");
    }

    #[test]
    fn errors_are_kube_statuses() {
        let cache = seeded();
        let naming = IdentityNaming::default();
        let err = |a: &str| resolve(&cache, &naming, a).unwrap_err();
        assert_eq!((err("nope.ds:80").code, err("nope.ds:80").message), (404, "services \"nope\" not found".to_owned()));
        assert_eq!(err("data-store.ds:9").message, "service \"ds/data-store\" has no TCP port 9");
        assert_eq!(err("10.9.9.9:80").code, 404);
        assert_eq!(err("data-store").message, "invalid authority \"data-store\": expected HOST:PORT");
        assert_eq!(err("data-store.ds:0").code, 400);
        assert_eq!(err("a:80").code, 400);
        assert_eq!(err("Bad_Name.ds:80").code, 400);
    }
}
