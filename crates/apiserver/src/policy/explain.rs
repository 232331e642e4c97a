//! `GET /tessera/v1/policy/explain` and `GET /tessera/v1/policy/who-can-reach`
//! (`tessera policy explain` / `who-can-reach`): the pod's compiled inbound
//! policy from the cache, evaluated on the server with the proxy's own code
//! (`tessera_policy`), so that the CLI, the dashboard and the proxy answer the
//! same.
//!
//! The query is parsed once, with the request, into an [`ExplainQuery`] (every
//! parameter checked, a 400 naming the bad one; see [`crate::request`]),
//! authorized on it (RBAC `list servers.policy.linkerd.io` in the namespace,
//! see [`crate::authz`]), and that value is what runs here.

use std::net::IpAddr;

use http::StatusCode;
use serde_json::{Value, json};
use tessera_api::ApiError;
use tessera_policy::{Client, HttpRequestInfo, PodInboundPolicy};

use crate::http::AppState;
#[cfg(test)]
use crate::request::Query;
use crate::response::{HandlerResult, json_response};

pub use crate::request::{ExplainQuery, RequestSpec, UNAUTHENTICATED};

/// The first host of the first cluster network: a client inside the cluster
/// unless told otherwise (what the CLI did before this API).
pub fn default_address(policy: &PodInboundPolicy) -> IpAddr {
    policy.cluster_networks.first().map(|net| net.hosts().next().unwrap_or(net.addr())).unwrap_or(IpAddr::from([10, 0, 0, 1]))
}

/// The answer: `{"pod", "client", "request", "decision"}`.
pub fn explain(policy: &PodInboundPolicy, q: &ExplainQuery) -> Value {
    let client = Client { identity: q.identity.clone(), addr: q.ip.unwrap_or_else(|| default_address(policy)) };
    let decision = match &q.request {
        Some(r) => policy.evaluate(q.port, &client, Some(&HttpRequestInfo { method: &r.method, path: &r.path, headers: &r.headers })),
        None => policy.evaluate(q.port, &client, None),
    };
    json!({
        "pod": {"namespace": policy.namespace, "name": policy.pod, "port": q.port},
        "client": {"identity": client.identity, "address": client.addr.to_string()},
        "request": q.request.as_ref().map(|r| json!({"method": r.method, "path": r.path})),
        "decision": decision,
    })
}

fn encode(value: &Value) -> HandlerResult {
    Ok(json_response(StatusCode::OK, value))
}

/// `GET /tessera/v1/policy/explain?namespace=…&pod=…&port=…&from=…[&ip=…][&method=…&path=…&header=…]`.
pub(super) fn explain_answer(state: &AppState, q: &ExplainQuery) -> HandlerResult {
    let policy = super::compiled(&state.inbound_policy, &q.namespace, &q.pod)?;
    encode(&explain(&policy, q))
}

/// `GET /tessera/v1/policy/who-can-reach?namespace=…&pod=…&port=…`.
pub(super) fn who_can_reach(state: &AppState, namespace: &str, pod: &str, port: u16) -> HandlerResult {
    let policy = super::compiled(&state.inbound_policy, namespace, pod)?;
    let reach = tessera_policy::reach::who_can_reach(&policy, port);
    let value = serde_json::to_value(&reach).map_err(|e| ApiError::internal(format!("encoding who-can-reach: {e}")))?;
    encode(&value)
}

#[cfg(test)]
mod tests;
