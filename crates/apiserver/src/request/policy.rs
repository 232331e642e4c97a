//! The policy APIs' requests (`/tessera/v1/policy/{inbound,explain,who-can-reach}`),
//! parsed once like every other request: the pod they are about, and for
//! explain the client and HTTP request to evaluate. The authorizer decides on
//! this value (a token bound to the pod, or RBAC on servers in its namespace)
//! and the handlers in [`crate::policy`] run it; neither reads the query again.
//!
//! A parameter that is missing or invalid is a 400 naming it. A repeated
//! parameter means its first value, here and therefore everywhere.

use std::net::IpAddr;

use tessera_api::ApiError;

use super::Query;
use crate::policy::{EXPLAIN_PATH, PATH, WHO_CAN_REACH_PATH};

/// `from=` for a client without a mesh identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// At most this many `header` parameters (the answer is bounded work).
const MAX_HEADERS: usize = 64;

/// A GET (or HEAD) of one of the policy APIs.
#[derive(Debug, Clone)]
pub struct PolicyRequest {
    /// The lower-case HTTP method (`get` or `head`).
    pub verb: String,
    /// The decoded path: which of the APIs.
    pub path: String,
    /// The parameters, or the 400 naming the first bad one. Unlike resource
    /// options, the error cannot wait for the handler: the namespace and pod
    /// are what the request is authorized on.
    pub query: Result<PolicyQuery, ApiError>,
}

/// What a policy API request asks for, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyQuery {
    /// `inbound?namespace=…&pod=…[&watch=true]`: the pod's compiled inbound policy.
    Inbound {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// Stream a snapshot whenever the answer changes.
        watch: bool,
    },
    /// `explain?…`: one client's request to the pod, evaluated.
    Explain(ExplainQuery),
    /// `who-can-reach?namespace=…&pod=…&port=…`: who the port admits.
    WhoCanReach {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The pod's port.
        port: u16,
    },
}

impl PolicyQuery {
    /// The namespace of the pod asked about.
    pub fn namespace(&self) -> &str {
        match self {
            Self::Inbound { namespace, .. } | Self::WhoCanReach { namespace, .. } => namespace,
            Self::Explain(q) => &q.namespace,
        }
    }

    /// The pod asked about.
    pub fn pod(&self) -> &str {
        match self {
            Self::Inbound { pod, .. } | Self::WhoCanReach { pod, .. } => pod,
            Self::Explain(q) => &q.pod,
        }
    }

    /// The RBAC question for anyone but the pod's own proxy: `list
    /// servers.policy.linkerd.io` in the pod's namespace.
    pub fn attributes(&self) -> tessera_rbac::Request {
        tessera_rbac::Request {
            resource_request: true,
            verb: "list".into(),
            namespace: self.namespace().to_owned(),
            api_group: tessera_policy::resources::GROUP.into(),
            resource: "servers".into(),
            ..Default::default()
        }
    }
}

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

impl ExplainQuery {
    /// Parses and checks every parameter; a 400 names the first bad one.
    pub fn parse(query: &Query) -> Result<Self, ApiError> {
        let (namespace, pod, port) = target(query)?;
        Ok(Self { namespace, pod, port, identity: identity(query)?, ip: ip(query)?, request: request_spec(query)? })
    }
}

/// The policy API request at the decoded `path`, if it is one. Only GET (and
/// HEAD, its body-less twin) is served; any other method stays a plain
/// non-resource request, authorized and refused as such.
pub(super) fn parse(method: &http::Method, path: &str, raw_query: Option<&str>) -> Option<PolicyRequest> {
    if !matches!(*method, http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let query = Query::parse(raw_query.unwrap_or_default());
    let query = match path {
        PATH => inbound(&query),
        EXPLAIN_PATH => ExplainQuery::parse(&query).map(PolicyQuery::Explain),
        WHO_CAN_REACH_PATH => target(&query).map(|(namespace, pod, port)| PolicyQuery::WhoCanReach { namespace, pod, port }),
        _ => return None,
    };
    Some(PolicyRequest { verb: method.as_str().to_ascii_lowercase(), path: path.to_owned(), query })
}

fn inbound(query: &Query) -> Result<PolicyQuery, ApiError> {
    let (namespace, pod) = parameters(query)?;
    Ok(PolicyQuery::Inbound { namespace, pod, watch: query.flag("watch") })
}

fn is_label(s: &str) -> bool {
    tessera_api::validation::dns1123_label(s).is_empty()
}

fn is_subdomain(s: &str) -> bool {
    tessera_api::validation::dns1123_subdomain(s).is_empty()
}

/// `namespace` and `pod`, validated: what every policy API takes.
fn parameters(query: &Query) -> Result<(String, String), ApiError> {
    let namespace = query.first("namespace").filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("the namespace parameter is required"))?;
    let pod = query.first("pod").filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("the pod parameter is required"))?;
    if !is_label(namespace) {
        return Err(ApiError::bad_request(format!("invalid namespace {namespace:?}: must be a DNS label")));
    }
    if !is_subdomain(pod) {
        return Err(ApiError::bad_request(format!("invalid pod name {pod:?}: must be a DNS subdomain")));
    }
    Ok((namespace.to_owned(), pod.to_owned()))
}

/// `port`: required, 1–65535.
fn port(query: &Query) -> Result<u16, ApiError> {
    let raw = query.first("port").filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad_request("the port parameter is required"))?;
    raw.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid port {raw:?}: must be a number from 1 to 65535")))
}

/// Namespace, pod and port: what explain and who-can-reach take.
fn target(query: &Query) -> Result<(String, String, u16), ApiError> {
    let (namespace, pod) = parameters(query)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ParsedRequest, parse as parse_request};
    use http::Method;

    fn policy(method: Method, path: &str, query: &str) -> PolicyRequest {
        match parse_request(&method, path, Some(query)).expect("parses") {
            ParsedRequest::Policy(p) => *p,
            other => panic!("not a policy request: {other:?}"),
        }
    }

    #[test]
    fn the_three_apis_parse_into_what_they_ask() {
        let p = policy(Method::GET, PATH, "namespace=shop&pod=db-0&watch=true");
        assert_eq!(p.verb, "get");
        assert_eq!(p.query.unwrap(), PolicyQuery::Inbound { namespace: "shop".into(), pod: "db-0".into(), watch: true });
        let p = policy(Method::HEAD, WHO_CAN_REACH_PATH, "namespace=shop&pod=db-0&port=80");
        assert_eq!((p.verb.as_str(), p.query.unwrap()), ("head", PolicyQuery::WhoCanReach { namespace: "shop".into(), pod: "db-0".into(), port: 80 }));
        let q = policy(Method::GET, EXPLAIN_PATH, "namespace=shop&pod=db-0&port=80&from=unauthenticated").query.unwrap();
        assert_eq!((q.namespace(), q.pod()), ("shop", "db-0"));
        assert!(matches!(q, PolicyQuery::Explain(ExplainQuery { port: 80, identity: None, .. })));
    }

    #[test]
    fn the_first_of_a_repeated_parameter_is_the_one() {
        let q = policy(Method::GET, PATH, "namespace=shop&pod=db-0&namespace=evil&pod=x&watch=0&watch=1").query.unwrap();
        assert_eq!(q, PolicyQuery::Inbound { namespace: "shop".into(), pod: "db-0".into(), watch: false });
        // A pair Go's query parser drops (a `;`) cannot smuggle a second reading in.
        let q = policy(Method::GET, PATH, "namespace=evil;namespace=shop&namespace=shop&pod=db-0").query.unwrap();
        assert_eq!(q.namespace(), "shop");
    }

    #[test]
    fn a_percent_encoded_path_is_the_same_api() {
        let q = policy(Method::GET, "/tessera/v1/policy/%69nbound", "namespace=shop&pod=db-0").query.unwrap();
        assert_eq!(q.pod(), "db-0");
        let p = policy(Method::GET, "/tessera/v1/policy%2Fexplain", "namespace=shop&pod=db-0");
        assert_eq!(p.path, EXPLAIN_PATH);
        assert_eq!(p.query.unwrap_err().message, "the port parameter is required");
    }

    #[test]
    fn other_methods_and_near_miss_paths_are_plain_non_resource_requests() {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS] {
            let ParsedRequest::NonResource(n) = parse_request(&method, PATH, Some("namespace=shop&pod=db-0")).unwrap() else { panic!("{method}") };
            assert_eq!(n.path, PATH);
        }
        for path in ["/tessera/v1/policy/inbound/", "//tessera/v1/policy/inbound", "/tessera/v1/policy/Inbound", "/tessera/v1/policy"] {
            assert!(matches!(parse_request(&Method::GET, path, Some("namespace=shop&pod=db-0")).unwrap(), ParsedRequest::NonResource(_)), "{path}");
        }
    }
}
