//! The inbound policy API (`GET /tessera/v1/policy/inbound?namespace=NS&pod=NAME`),
//! Linkerd's policy controller for tessera proxies and `tessera policy explain`:
//! the pod's [`PodInboundPolicy`] compiled from the `policy.linkerd.io`
//! resources, the pod and its namespace (see [`tessera_policy::compile`]).
//!
//! Answers come from a watch-fed cache ([`Reflector`]) of the six policy
//! kinds, Pods and Namespaces; `&watch=true` streams a snapshot (one JSON
//! object per line) at once and again whenever the answer changes, pulled by
//! the connection as in [`crate::destinations`]. The stream ends when the
//! client goes away, when the pod disappears (the last line is then the
//! 404 Status), or after the server's watch timeout.
//!
//! Authorization is per pod ("only the RBAC it needs"), decided by the
//! request authorizer on the parsed request ([`crate::request::PolicyQuery`]):
//! a token bound to that very pod (what its proxy holds), or a user RBAC lets
//! `list servers.policy.linkerd.io` in the namespace (explain, dashboard).
//! The handler runs only what was authorized.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tessera_api::ApiError;
use tessera_api::resource::CORE_PODS;
use tessera_policy::compile::{Key, PodInfo, PolicyResources, Settings, compile};
use tessera_policy::PodInboundPolicy;
use tessera_policy::resources::GROUP;

use crate::authz::Authorized;
use crate::http::AppState;
use crate::reflector::Reflector;
use crate::request::PolicyQuery;
use crate::response::HandlerResult;

pub mod admission;
pub mod explain;

/// The path this module serves.
pub const PATH: &str = "/tessera/v1/policy/inbound";
/// `tessera policy explain`'s API ([`explain`]).
pub const EXPLAIN_PATH: &str = "/tessera/v1/policy/explain";
/// `tessera policy who-can-reach`'s API ([`explain`]).
pub const WHO_CAN_REACH_PATH: &str = "/tessera/v1/policy/who-can-reach";

/// What the cache holds.
#[derive(Default)]
pub struct PolicyState {
    resources: PolicyResources,
    pods: HashMap<Key, PodInfo>,
    /// Namespace → its annotations.
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

/// The cache (reads may be one watch event stale).
pub type PolicyCache = Reflector<PolicyState>;

/// The store prefixes of the policy kinds (`/registry/GROUP/PLURAL/`).
const POLICY_PLURALS: [&str; 6] =
    ["servers", "serverauthorizations", "authorizationpolicies", "meshtlsauthentications", "networkauthentications", "httproutes"];

/// A cache following the policy kinds, Pods and Namespaces.
pub fn policy_cache() -> PolicyCache {
    let mut prefixes: Vec<String> = POLICY_PLURALS.iter().map(|p| format!("/registry/{GROUP}/{p}/")).collect();
    prefixes.push(CORE_PODS.key_prefix(None));
    prefixes.push("/registry/namespaces/".to_owned());
    Reflector::new(prefixes, PolicyState::apply)
}

/// The cache and the server's settings, shared by the handlers.
#[derive(Clone)]
pub struct InboundPolicy {
    /// The watch-fed cache.
    pub cache: PolicyCache,
    /// Default policy, cluster networks, identity naming.
    pub settings: Arc<Settings>,
}

impl InboundPolicy {
    /// An empty cache with these settings.
    pub fn new(settings: Settings) -> Self {
        Self { cache: policy_cache(), settings: Arc::new(settings) }
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn pod_info(namespace: &str, name: &str, pod: &Value) -> PodInfo {
    let container_ports = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
        .filter_map(|p| {
            let port = u16::try_from(p.get("containerPort")?.as_i64()?).ok()?;
            Some((p.get("name").and_then(Value::as_str).map(str::to_owned), port))
        })
        .collect();
    PodInfo {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: string_map(pod.pointer("/metadata/labels")),
        annotations: string_map(pod.pointer("/metadata/annotations")),
        container_ports,
    }
}

/// Puts or removes a typed object; one that does not decode counts as absent
/// (it then authorizes nothing).
fn put<T: DeserializeOwned>(map: &mut BTreeMap<Key, T>, key: Key, obj: Option<Value>) {
    match obj.and_then(|v| serde_json::from_value(v).ok()) {
        Some(typed) => {
            map.insert(key, typed);
        }
        None => {
            map.remove(&key);
        }
    }
}

impl PolicyState {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix("/registry/") else { return };
        let obj: Option<Value> = value.and_then(|v| serde_json::from_slice(v).ok());
        if let Some(name) = rest.strip_prefix("namespaces/") {
            match obj {
                Some(ns) => {
                    self.namespaces.insert(name.to_owned(), string_map(ns.pointer("/metadata/annotations")));
                }
                None => {
                    self.namespaces.remove(name);
                }
            }
            return;
        }
        let rest = rest.strip_prefix(GROUP).and_then(|r| r.strip_prefix('/')).unwrap_or(rest);
        let mut parts = rest.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else { return };
        let k = (ns.to_owned(), name.to_owned());
        let r = &mut self.resources;
        match kind {
            "pods" => match obj {
                Some(pod) => {
                    self.pods.insert(k, pod_info(ns, name, &pod));
                }
                None => {
                    self.pods.remove(&k);
                }
            },
            "servers" => put(&mut r.servers, k, obj),
            "serverauthorizations" => put(&mut r.server_authorizations, k, obj),
            "authorizationpolicies" => put(&mut r.authorization_policies, k, obj),
            "meshtlsauthentications" => put(&mut r.mesh_tls_authentications, k, obj),
            "networkauthentications" => put(&mut r.network_authentications, k, obj),
            "httproutes" => {
                let created = obj.as_ref().and_then(|o| o.pointer("/metadata/creationTimestamp")).and_then(Value::as_str).unwrap_or_default().to_owned();
                match obj.and_then(|v| serde_json::from_value(v).ok()) {
                    Some(route) => {
                        r.http_routes.insert(k, (route, created));
                    }
                    None => {
                        r.http_routes.remove(&k);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The compiled policy of `namespace/pod` now (404 when the pod is unknown).
pub fn compiled(policy: &InboundPolicy, namespace: &str, pod: &str) -> Result<PodInboundPolicy, ApiError> {
    policy.cache.read(|state| {
        let info = state.pods.get(&(namespace.to_owned(), pod.to_owned())).ok_or_else(|| ApiError::not_found(&CORE_PODS, pod))?;
        let no_annotations = BTreeMap::new();
        let ns_annotations = state.namespaces.get(namespace).unwrap_or(&no_annotations);
        Ok(compile(info, ns_annotations, &state.resources, &policy.settings))
    })
}

/// The compiled policy of `namespace/pod` now, as JSON.
pub fn resolve(policy: &InboundPolicy, namespace: &str, pod: &str) -> Result<Value, ApiError> {
    let compiled = compiled(policy, namespace, pod)?;
    serde_json::to_value(&compiled).map_err(|e| ApiError::internal(format!("encoding the inbound policy: {e}")))
}

/// The policy APIs: runs what the authorizer allowed, as it was authorized
/// (the query was parsed once, into [`PolicyQuery`]; nothing here reads the
/// request again). Routed for the three paths, and from the fallback for
/// their percent-encoded spellings, which name the same API once decoded.
pub async fn handler(State(state): State<AppState>, authorized: Authorized) -> HandlerResult {
    let Some(query) = authorized.policy() else { return Err(ApiError::no_such_resource().into()) };
    match query {
        PolicyQuery::Inbound { namespace, pod, watch } => inbound(&state, namespace, pod, *watch),
        PolicyQuery::Explain(q) => explain::explain_answer(&state, q),
        PolicyQuery::WhoCanReach { namespace, pod, port } => explain::who_can_reach(&state, namespace, pod, *port),
    }
}

/// `GET /tessera/v1/policy/inbound?namespace=…&pod=…[&watch=true]`.
fn inbound(state: &AppState, namespace: &str, pod: &str, watch: bool) -> HandlerResult {
    let policy = state.inbound_policy.clone();
    let changes = policy.cache.changes();
    let (namespace, pod) = (namespace.to_owned(), pod.to_owned());
    crate::snapshots::respond(watch, changes, move || resolve(&policy, &namespace, &pod))
}

#[cfg(test)]
mod tests;
