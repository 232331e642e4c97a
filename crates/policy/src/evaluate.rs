//! Evaluating a [`PodInboundPolicy`] for one connection or HTTP request, the
//! way Linkerd's inbound proxy does:
//!
//! - a port no Server selects follows the pod's default policy;
//! - a port a Server selects is denied unless an authorization matches (or the
//!   Server's v1beta3 `accessPolicy` lets the client in);
//! - a connection (no HTTP request) is checked against the Server's
//!   authorizations and access policy; an HTTP request too while the Server has
//!   no HTTPRoute (Linkerd's default route); once HTTPRoutes are attached, a
//!   request is checked against the authorizations of the one HTTPRoute it
//!   matches only (as Linkerd's policy controller: route authorizations come
//!   from AuthorizationPolicies targeting that HTTPRoute), and a request
//!   matching none of them is refused with 404;
//! - an authorization matches when the client address is in one of its
//!   networks (and no `except`) and the client proves its authentication;
//!   the first match in order decides.
//!
//! Every decision carries a trace of each rule looked at (for `tessera policy
//! explain`); [`PodInboundPolicy::decide`] skips building it (the proxy's path).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::compiled::{
    Authentication, Authorization, DefaultPolicy, HttpMatch, NetworkMatch, PathMatch, PodInboundPolicy, PortPolicy, Route, StringMatch,
    all_networks,
};

/// The authorization kind synthesised from a default or access policy.
pub const DEFAULT_KIND: &str = "default";

/// Who is connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The mesh TLS identity the client proved, if any.
    pub identity: Option<String>,
    /// The client's address.
    pub addr: IpAddr,
}

/// The parts of an HTTP request routes match on.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestInfo<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The request target's path, optionally with `?query`.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Authorized.
    Allow,
    /// Refused.
    Deny,
    /// Allowed by an `audit` policy although nothing else authorized it: log
    /// and count it as a would-be denial.
    AuditDeny,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Allow, deny, or allowed by audit.
    pub verdict: Verdict,
    /// The Server that selected the port (`None`: the pod's default policy).
    pub server: Option<String>,
    /// The authorization that allowed (kind, name); for `default` the name is
    /// the policy (`all-unauthenticated`, `audit`, …).
    pub authorization: Option<(String, String)>,
    /// The HTTPRoute that matched (`None` for connections and for Linkerd's
    /// default route, labelled `default` in metrics).
    pub route: Option<String>,
    /// One line, Linkerd's wording (for `l5d-proxy-error` and logs).
    pub reason: String,
    /// For a denied HTTP request: 403, or 404 when no HTTPRoute matched.
    pub http_status: Option<u16>,
    /// Every rule looked at and why it did or did not match (empty from
    /// [`PodInboundPolicy::decide`]).
    pub trace: Vec<String>,
}

impl Decision {
    /// Whether the traffic may pass (`Allow` or `AuditDeny`).
    pub fn allowed(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// Collects trace lines only when asked to (the proxy's hot path does not).
struct Trace(Option<Vec<String>>);

impl Trace {
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.0 {
            lines.push(line());
        }
    }
}

/// The authorizations a default (or access) policy grants.
pub fn default_authorizations(policy: DefaultPolicy, cluster_networks: &[ipnet::IpNet]) -> Vec<Authorization> {
    let cluster = || cluster_networks.iter().map(|&net| NetworkMatch { net, except: Vec::new() }).collect::<Vec<_>>();
    let (authentication, networks) = match policy {
        DefaultPolicy::Deny => return Vec::new(),
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => (Authentication::Unauthenticated, all_networks()),
        DefaultPolicy::AllAuthenticated => (Authentication::AnyMeshTls, all_networks()),
        DefaultPolicy::ClusterAuthenticated => (Authentication::AnyMeshTls, cluster()),
        DefaultPolicy::ClusterUnauthenticated => (Authentication::Unauthenticated, cluster()),
    };
    vec![Authorization { kind: DEFAULT_KIND.to_owned(), name: policy.as_str().to_owned(), authentication, networks }]
}

fn is_audit(authz: &Authorization) -> bool {
    authz.kind == DEFAULT_KIND && authz.name == DefaultPolicy::Audit.as_str()
}

fn describe(authz: &Authorization) -> String {
    format!("{}/{}", authz.kind, authz.name)
}

/// `10.0.0.0/8 except 10.1.0.0/16, ::/0` (`none` when empty).
pub fn networks_text(networks: &[NetworkMatch]) -> String {
    if networks.is_empty() {
        return "none".to_owned();
    }
    networks
        .iter()
        .map(|n| if n.except.is_empty() { n.net.to_string() } else { format!("{} except {}", n.net, join(&n.except)) })
        .collect::<Vec<_>>()
        .join(", ")
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Whether `authz` lets `client` in; notes why not.
fn authorizes(authz: &Authorization, client: &Client, t: &mut Trace) -> bool {
    if !authz.networks.iter().any(|n| n.matches(client.addr)) {
        t.note(|| format!("{}: network not matched: client address {} is not in [{}]", describe(authz), client.addr, networks_text(&authz.networks)));
        return false;
    }
    match (&authz.authentication, &client.identity) {
        (Authentication::Unauthenticated, _) => {
            t.note(|| format!("{}: matched: no authentication required, address {} in [{}]", describe(authz), client.addr, networks_text(&authz.networks)));
            true
        }
        (_, None) => {
            t.note(|| format!("{}: identity not matched: it requires mesh TLS and the client has no identity", describe(authz)));
            false
        }
        (Authentication::AnyMeshTls, Some(id)) => {
            t.note(|| format!("{}: matched: any mesh TLS identity ({id})", describe(authz)));
            true
        }
        (Authentication::Identities(matches), Some(id)) => match matches.iter().find(|m| m.matches(id)) {
            Some(m) => {
                t.note(|| format!("{}: matched: identity {id} matches {m}", describe(authz)));
                true
            }
            None => {
                t.note(|| format!("{}: identity not matched: {id} is not in [{}]", describe(authz), join(matches)));
                false
            }
        },
    }
}

/// Gateway API precedence of one match: exact path, then regular expression,
/// then prefix (longer first); then a method; then more headers; then more
/// query parameters.
type Score = (u8, usize, bool, usize, usize);

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => path == p,
        PathMatch::RegularExpression(re) => re.is_match(path),
        PathMatch::PathPrefix(prefix) => {
            let prefix = prefix.trim_end_matches('/');
            path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
    }
}

fn string_matches(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(v) => v == value,
        StringMatch::RegularExpression(re) => re.is_match(value),
    }
}

/// The score of `m` against the request, when it matches.
fn score(m: &HttpMatch, req: &HttpRequestInfo<'_>) -> Option<Score> {
    let (path, query) = req.path.split_once('?').unwrap_or((req.path, ""));
    let path_score = match &m.path {
        None => (1, 1),
        Some(p) if !path_matches(p, path) => return None,
        Some(PathMatch::Exact(p)) => (3, p.len()),
        Some(PathMatch::RegularExpression(re)) => (2, re.source().len()),
        Some(PathMatch::PathPrefix(p)) => (1, p.trim_end_matches('/').len().max(1)),
    };
    if m.method.as_deref().is_some_and(|method| method != req.method) {
        return None;
    }
    for h in &m.headers {
        let mut values = req.headers.get_all(h.name.as_str()).iter();
        if !values.any(|v| v.to_str().is_ok_and(|v| string_matches(&h.value, v))) {
            return None;
        }
    }
    for q in &m.query_params {
        let value = query.split('&').filter_map(|kv| kv.split_once('=').or(Some((kv, "")))).find(|(k, _)| *k == q.name).map(|(_, v)| v);
        if !value.is_some_and(|v| string_matches(&q.value, v)) {
            return None;
        }
    }
    Some((path_score.0, path_score.1, m.method.is_some(), m.headers.len(), m.query_params.len()))
}

/// One HTTPRoute match in words (`method GET, path prefix /data`).
pub fn describe_match(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    match &m.path {
        None => parts.push("any path".to_owned()),
        Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
        Some(PathMatch::PathPrefix(p)) => parts.push(format!("path prefix {p}")),
        Some(PathMatch::RegularExpression(re)) => parts.push(format!("path ~ {}", re.source())),
    }
    for h in &m.headers {
        parts.push(match &h.value {
            StringMatch::Exact(v) => format!("header {}={v}", h.name),
            StringMatch::RegularExpression(re) => format!("header {}~{}", h.name, re.source()),
        });
    }
    for q in &m.query_params {
        parts.push(match &q.value {
            StringMatch::Exact(v) => format!("query {}={v}", q.name),
            StringMatch::RegularExpression(re) => format!("query {}~{}", q.name, re.source()),
        });
    }
    parts.join(", ")
}

/// The HTTPRoute for the request: the best-scoring match; ties go to the
/// earlier route (the compiled order is oldest first, then by name).
fn find_route<'p>(routes: &'p [Route], req: &HttpRequestInfo<'_>, t: &mut Trace) -> Option<&'p Route> {
    let mut best: Option<(Score, &Route)> = None;
    for route in routes {
        let route_best = route.matches.iter().filter_map(|m| score(m, req).map(|s| (s, m))).max_by_key(|(s, _)| *s);
        match route_best {
            Some((s, m)) => {
                t.note(|| format!("HTTPRoute {}: matches {} {} ({})", route.name, req.method, req.path, describe_match(m)));
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, route));
                }
            }
            None => t.note(|| {
                let wanted = route.matches.iter().map(describe_match).collect::<Vec<_>>().join(" | ");
                format!("HTTPRoute {}: route not matched: {} {} is not [{wanted}]", route.name, req.method, req.path)
            }),
        }
    }
    best.map(|(_, r)| r)
}

impl PodInboundPolicy {
    /// The decision for a connection (`request: None`) or an HTTP request to
    /// `port`, with a trace of every rule looked at.
    pub fn evaluate(&self, port: u16, client: &Client, request: Option<&HttpRequestInfo<'_>>) -> Decision {
        self.run(port, client, request, Trace(Some(Vec::new())))
    }

    /// As [`Self::evaluate`], without the trace (cheaper: the proxy's path).
    pub fn decide(&self, port: u16, client: &Client, request: Option<&HttpRequestInfo<'_>>) -> Decision {
        self.run(port, client, request, Trace(None))
    }

    /// The Server policy of `port`, if a Server selects it.
    pub fn port(&self, port: u16) -> Option<&PortPolicy> {
        self.ports.iter().find(|p| p.port == port)
    }

    fn run(&self, port: u16, client: &Client, request: Option<&HttpRequestInfo<'_>>, mut t: Trace) -> Decision {
        let who = || match &client.identity {
            Some(id) => format!("client {id} at {}", client.addr),
            None => format!("unauthenticated client at {}", client.addr),
        };
        t.note(|| match request {
            Some(r) => format!("{} requests {} {} on port {port} of pod {}/{}", who(), r.method, r.path, self.namespace, self.pod),
            None => format!("{} connects to port {port} of pod {}/{}", who(), self.namespace, self.pod),
        });
        let Some(server) = self.port(port) else {
            let policy = self.default_policy;
            t.note(|| format!("port {port}: no Server selects it; the pod's default inbound policy {policy} applies"));
            let authzs = default_authorizations(policy, &self.cluster_networks);
            if authzs.is_empty() {
                t.note(|| "default/deny: default policy: deny authorizes nobody".to_owned());
            }
            let denial = match request {
                Some(_) => "unauthorized request on route".to_owned(),
                None => format!("unauthorized connection on default/{policy}"),
            };
            return finish(None, None, authzs.iter(), client, request.is_some(), denial, t);
        };
        t.note(|| format!("port {port}: selected by Server {} (proxyProtocol {})", server.server, server.proxy_protocol));
        let access = match server.access_policy {
            Some(p) => {
                t.note(|| format!("Server {}: accessPolicy {p} applies when no authorization matches", server.server));
                default_authorizations(p, &self.cluster_networks)
            }
            None => {
                t.note(|| format!("Server {}: traffic is denied unless an authorization matches", server.server));
                Vec::new()
            }
        };
        let srv = Some(server.server.clone());
        let Some(req) = request else {
            let denial = format!("unauthorized connection on server/{}", server.server);
            if server.authorizations.is_empty() {
                t.note(|| format!("Server {}: no authorization targets it", server.server));
            }
            return finish(srv, None, server.authorizations.iter().chain(&access), client, false, denial, t);
        };
        if server.routes.is_empty() {
            t.note(|| format!("Server {}: no HTTPRoute attached: the default route uses the Server's authorizations", server.server));
            if server.authorizations.is_empty() {
                t.note(|| format!("Server {}: no authorization targets it", server.server));
            }
            return finish(srv, None, server.authorizations.iter().chain(&access), client, true, "unauthorized request on route".to_owned(), t);
        }
        let Some(route) = find_route(&server.routes, req, &mut t) else {
            t.note(|| format!("Server {}: route not matched: no HTTPRoute matches the request (404)", server.server));
            return Decision {
                verdict: Verdict::Deny,
                server: srv,
                authorization: None,
                route: None,
                reason: "no route found for request".to_owned(),
                http_status: Some(404),
                trace: t.0.unwrap_or_default(),
            };
        };
        t.note(|| format!("HTTPRoute {}: selected; only AuthorizationPolicies targeting it apply (not the Server's, nor its accessPolicy)", route.name));
        if route.authorizations.is_empty() {
            t.note(|| format!("HTTPRoute {}: no authorization targets it", route.name));
        }
        finish(srv, Some(route.name.clone()), route.authorizations.iter(), client, true, "unauthorized request on route".to_owned(), t)
    }
}

fn finish<'a>(
    server: Option<String>,
    route: Option<String>,
    authzs: impl Iterator<Item = &'a Authorization>,
    client: &Client,
    http: bool,
    denial: String,
    mut t: Trace,
) -> Decision {
    for authz in authzs {
        if !authorizes(authz, client, &mut t) {
            continue;
        }
        let audit = is_audit(authz);
        let (verdict, reason) = if audit {
            (Verdict::AuditDeny, format!("allowed by audit: would be denied ({denial})"))
        } else {
            (Verdict::Allow, format!("authorized by {}", describe(authz)))
        };
        t.note(|| format!("verdict: {reason}"));
        return Decision {
            verdict,
            server,
            authorization: Some((authz.kind.clone(), authz.name.clone())),
            route,
            reason,
            http_status: None,
            trace: t.0.unwrap_or_default(),
        };
    }
    t.note(|| format!("verdict: denied: {denial}"));
    Decision {
        verdict: Verdict::Deny,
        server,
        authorization: None,
        route,
        reason: denial,
        http_status: http.then_some(403),
        trace: t.0.unwrap_or_default(),
    }
}
