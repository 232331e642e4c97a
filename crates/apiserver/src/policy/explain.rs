//! `GET /tessera/v1/policy/explain` and `GET /tessera/v1/policy/who-can-reach`
//! (`tessera policy explain` / `who-can-reach`): the pod's compiled inbound
//! policy from the cache, evaluated on the server with the proxy's own code
//! (`tessera_policy`), so that the CLI, the dashboard and the proxy answer the
//! same.
//!
//! The query is parsed once into an [`ExplainQuery`] (every parameter checked,
//! a 400 naming the bad one), authorized (RBAC `list servers.policy.linkerd.io`
//! in the namespace, as the inbound policy API for users), and that value is
//! what runs.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use http::StatusCode;
use serde_json::{Value, json};
use tessera_api::ApiError;
use tessera_authn::UserInfo;
use tessera_policy::{Client, HttpRequestInfo, PodInboundPolicy};

use crate::authz::Authorized;
use crate::http::AppState;
use crate::request::{ParsedRequest, Query};
use crate::response::{HandlerResult, json_response};

/// `from=` for a client without a mesh identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// At most this many `header` parameters (the answer is bounded work).
const MAX_HEADERS: usize = 64;

/// An HTTP request to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    /// `GET` unless given.
    pub method: String,
    /// `/` unless given; may carry `?query`.
    pub path: String,
    /// The `header` parameters.
    pub headers: http::HeaderMap,
}

/// A parsed, validated explain query.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainQuery {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The pod's port.
    pub port: u16,
    /// The client's mesh identity (`None`: `from=unauthenticated`).
    pub identity: Option<String>,
    /// The client's address (`None`: the first host of the first cluster network).
    pub ip: Option<IpAddr>,
    /// The HTTP request, when any of method, path or header is given.
    pub request: Option<RequestSpec>,
}

/// `port`: required, 1–65535.
fn port(query: &Query) -> Result<u16, ApiError> {
    let raw = query.first("port").filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad_request("the port parameter is required"))?;
    raw.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid port {raw:?}: must be a number from 1 to 65535")))
}

/// Namespace, pod and port: what both APIs take.
fn target(query: &Query) -> Result<(String, String, u16), ApiError> {
    let (namespace, pod) = super::parameters(query)?;
    Ok((namespace, pod, port(query)?))
}

/// A mesh identity is a DNS name (`SA.NS.serviceaccount.identity.…`); anything
/// printable without spaces is accepted so that odd identities can still be asked about.
fn identity(query: &Query) -> Result<Option<String>, ApiError> {
    let from = query.first("from").filter(|f| !f.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!("the from parameter is required: a mesh identity or {UNAUTHENTICATED:?}"))
    })?;
    if from == UNAUTHENTICATED {
        return Ok(None);
    }
    if from.len() > 253 || !from.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!("invalid from {from:?}: must be a mesh identity (a DNS name) or {UNAUTHENTICATED:?}")));
    }
    Ok(Some(from.to_owned()))
}

fn ip(query: &Query) -> Result<Option<IpAddr>, ApiError> {
    query
        .first("ip")
        .map(|raw| raw.parse::<IpAddr>().map_err(|_| ApiError::bad_request(format!("invalid ip {raw:?}: must be an IPv4 or IPv6 address"))))
        .transpose()
}

fn header(raw: &str) -> Result<(http::HeaderName, http::HeaderValue), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid header {raw:?}: {why}"));
    let (name, value) = raw.split_once('=').ok_or_else(|| bad("expected NAME=VALUE"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("invalid header name"))?;
    let value = http::HeaderValue::from_str(value).map_err(|_| bad("invalid header value"))?;
    Ok((name, value))
}

fn request_spec(query: &Query) -> Result<Option<RequestSpec>, ApiError> {
    let method = query.first("method");
    let path = query.first("path");
    let raw_headers: Vec<&str> = query.all("header").collect();
    if method.is_none() && path.is_none() && raw_headers.is_empty() {
        return Ok(None);
    }
    if raw_headers.len() > MAX_HEADERS {
        return Err(ApiError::bad_request(format!("too many header parameters: at most {MAX_HEADERS}")));
    }
    let method = method.unwrap_or("GET");
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(ApiError::bad_request(format!("invalid method {method:?}: must be an HTTP method token")));
    }
    let path = path.unwrap_or("/");
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(ApiError::bad_request(format!("invalid path {path:?}: must be an absolute path starting with /")));
    }
    let mut headers = http::HeaderMap::new();
    for raw in raw_headers {
        let (name, value) = header(raw)?;
        headers.append(name, value);
    }
    Ok(Some(RequestSpec { method: method.to_owned(), path: path.to_owned(), headers }))
}

impl ExplainQuery {
    /// Parses and checks every parameter; a 400 names the first bad one.
    pub fn parse(query: &Query) -> Result<Self, ApiError> {
        let (namespace, pod, port) = target(query)?;
        Ok(Self { namespace, pod, port, identity: identity(query)?, ip: ip(query)?, request: request_spec(query)? })
    }
}

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

/// RBAC `list servers.policy.linkerd.io` in the namespace (these answers are
/// for people and dashboards, not proxies: a pod's token gets no exception).
fn authorize(state: &AppState, user: &UserInfo, namespace: &str) -> Result<(), ApiError> {
    let attrs = super::list_servers(namespace);
    match crate::authz::decide(&state.rbac, &state.nodes, user, &attrs, None) {
        crate::authz::Verdict::Allow(_) => Ok(()),
        crate::authz::Verdict::Deny(_) => Err(crate::authz::forbidden(user, &attrs)),
    }
}

fn query_of(authorized: &Authorized) -> Result<Query, ApiError> {
    let ParsedRequest::NonResource(request) = authorized.request() else { return Err(ApiError::no_such_resource()) };
    Ok(Query::parse(request.query.as_deref().unwrap_or_default()))
}

fn encode(value: &Value) -> HandlerResult {
    Ok(json_response(StatusCode::OK, value))
}

/// `GET /tessera/v1/policy/explain?namespace=…&pod=…&port=…&from=…[&ip=…][&method=…&path=…&header=…]`.
pub async fn explain_handler(State(state): State<AppState>, Extension(user): Extension<Arc<UserInfo>>, authorized: Authorized) -> HandlerResult {
    let q = ExplainQuery::parse(&query_of(&authorized)?)?;
    authorize(&state, &user, &q.namespace)?;
    let policy = super::compiled(&state.inbound_policy, &q.namespace, &q.pod)?;
    encode(&explain(&policy, &q))
}

/// `GET /tessera/v1/policy/who-can-reach?namespace=…&pod=…&port=…`.
pub async fn who_can_reach_handler(State(state): State<AppState>, Extension(user): Extension<Arc<UserInfo>>, authorized: Authorized) -> HandlerResult {
    let (namespace, pod, port) = target(&query_of(&authorized)?)?;
    authorize(&state, &user, &namespace)?;
    let policy = super::compiled(&state.inbound_policy, &namespace, &pod)?;
    let reach = tessera_policy::reach::who_can_reach(&policy, port);
    let value = serde_json::to_value(&reach).map_err(|e| ApiError::internal(format!("encoding who-can-reach: {e}")))?;
    encode(&value)
}

#[cfg(test)]
mod tests;
