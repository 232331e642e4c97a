//! The proxy's per-request decision, borrowed from the policy: the same
//! verdict, Server, route and authorization as [`PodInboundPolicy::decide`],
//! with no allocation and no text for traffic that is let in (issue 16's
//! overhead target). [`Decided::to_decision`] builds the owned [`Decision`]
//! (reason text included) when one is needed: for a denial, an audit, or
//! `tessera policy explain`.
//!
//! A default or access policy is checked in place (which networks, whether
//! an identity is needed) rather than through the synthesised
//! authorizations of [`crate::evaluate::default_authorizations`], which
//! allocate.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::compiled::{Authentication, Authorization, DefaultPolicy, PodInboundPolicy, PortPolicy, Route, canonical};
use crate::evaluate::{DEFAULT_KIND, Decision, HttpRequestInfo, Trace, Verdict, find_route};

/// Which denial text applies when nothing lets the traffic in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denial {
    /// A connection to a port no Server selects.
    DefaultConnection(DefaultPolicy),
    /// A connection to a Server's port.
    ServerConnection,
    /// An HTTP request (default route or an HTTPRoute).
    Request,
    /// An HTTP request no HTTPRoute of the Server matched (404).
    NoRoute,
}

/// A decision that borrows the policy it came from.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'p> {
    /// Allow, deny, or allowed by audit.
    pub verdict: Verdict,
    /// The Server's port policy (`None`: the pod's default policy).
    pub server: Option<&'p PortPolicy>,
    /// The HTTPRoute that matched (`None` for connections and the default route).
    pub route: Option<&'p Route>,
    /// The authorization that let the traffic in: (kind, name); kind
    /// `default` with the policy's name for a default or access policy.
    pub authorization: Option<(&'p str, &'p str)>,
    denial: Denial,
}

impl Decided<'_> {
    /// Whether the traffic may pass (`Allow` or `AuditDeny`).
    pub fn allowed(&self) -> bool {
        self.verdict != Verdict::Deny
    }

    /// The owned decision, as [`PodInboundPolicy::decide`] returns it.
    pub fn to_decision(&self) -> Decision {
        let denial = match self.denial {
            Denial::DefaultConnection(policy) => format!("unauthorized connection on default/{policy}"),
            Denial::ServerConnection => format!("unauthorized connection on server/{}", self.server.map_or("", |s| s.server.as_str())),
            Denial::Request => "unauthorized request on route".to_owned(),
            Denial::NoRoute => "no route found for request".to_owned(),
        };
        let reason = match (self.verdict, self.authorization) {
            (Verdict::Allow, Some((kind, name))) => format!("authorized by {kind}/{name}"),
            (Verdict::AuditDeny, _) => format!("allowed by audit: would be denied ({denial})"),
            _ => denial,
        };
        let http_status = match (self.verdict, self.denial) {
            (Verdict::Deny, Denial::NoRoute) => Some(404),
            (Verdict::Deny, Denial::Request) => Some(403),
            _ => None,
        };
        Decision {
            verdict: self.verdict,
            server: self.server.map(|s| s.server.clone()),
            authorization: self.authorization.map(|(kind, name)| (kind.to_owned(), name.to_owned())),
            route: self.route.map(|r| r.name.clone()),
            reason,
            http_status,
            trace: Vec::new(),
        }
    }
}

/// Whether `authz` lets the client in (as `evaluate::authorizes`, without a trace).
fn authorizes(authz: &Authorization, identity: Option<&str>, addr: IpAddr) -> bool {
    if !authz.networks.iter().any(|n| n.matches(addr)) {
        return false;
    }
    match (&authz.authentication, identity) {
        (Authentication::Unauthenticated, _) => true,
        (_, None) => false,
        (Authentication::AnyMeshTls, Some(_)) => true,
        (Authentication::Identities(matches), Some(id)) => matches.iter().any(|m| m.matches(id)),
    }
}

/// Whether a default (or access) policy lets the client in: the networks and
/// authentication of [`crate::evaluate::default_authorizations`], checked in place.
fn default_allows(policy: DefaultPolicy, cluster_networks: &[IpNet], identity: Option<&str>, addr: IpAddr) -> bool {
    let addr = canonical(addr);
    let in_cluster = || cluster_networks.iter().any(|n| n.contains(&addr));
    match policy {
        DefaultPolicy::Deny => false,
        // 0.0.0.0/0 and ::/0: every address.
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => true,
        DefaultPolicy::AllAuthenticated => identity.is_some(),
        DefaultPolicy::ClusterAuthenticated => identity.is_some() && in_cluster(),
        DefaultPolicy::ClusterUnauthenticated => in_cluster(),
    }
}

impl PodInboundPolicy {
    /// The decision for a connection (`request: None`) or an HTTP request to
    /// `port` from a client with this identity (mesh TLS) and address: the
    /// same as [`Self::decide`], borrowed from the policy (no allocation).
    pub fn decide_borrowed<'p>(&'p self, port: u16, identity: Option<&str>, addr: IpAddr, request: Option<&HttpRequestInfo<'_>>) -> Decided<'p> {
        let Some(server) = self.port(port) else {
            let policy = self.default_policy;
            let denial = if request.is_some() { Denial::Request } else { Denial::DefaultConnection(policy) };
            let allowed = default_allows(policy, &self.cluster_networks, identity, addr);
            return from_default(None, None, allowed.then_some(policy), denial);
        };
        let (authorizations, route, denial) = match request {
            None => (&server.authorizations, None, Denial::ServerConnection),
            Some(_) if server.routes.is_empty() => (&server.authorizations, None, Denial::Request),
            Some(req) => match find_route(&server.routes, req, &mut Trace(None)) {
                Some(route) => (&route.authorizations, Some(route), Denial::Request),
                None => {
                    return Decided { verdict: Verdict::Deny, server: Some(server), route: None, authorization: None, denial: Denial::NoRoute };
                }
            },
        };
        if let Some(authz) = authorizations.iter().find(|a| authorizes(a, identity, addr)) {
            let audit = authz.kind == DEFAULT_KIND && authz.name == DefaultPolicy::Audit.as_str();
            let verdict = if audit { Verdict::AuditDeny } else { Verdict::Allow };
            return Decided { verdict, server: Some(server), route, authorization: Some((&authz.kind, &authz.name)), denial };
        }
        // A Server's accessPolicy applies after its own authorizations; an
        // HTTPRoute's authorizations stand alone.
        let access = match (route, server.access_policy) {
            (None, Some(p)) => default_allows(p, &self.cluster_networks, identity, addr).then_some(p),
            _ => None,
        };
        from_default(Some(server), route, access, denial)
    }
}

/// The decision once only a default (or access) policy is left: `allowed_by`
/// is the policy that let the client in, if one did.
fn from_default<'p>(server: Option<&'p PortPolicy>, route: Option<&'p Route>, allowed_by: Option<DefaultPolicy>, denial: Denial) -> Decided<'p> {
    match allowed_by {
        Some(policy) => {
            let verdict = if policy == DefaultPolicy::Audit { Verdict::AuditDeny } else { Verdict::Allow };
            Decided { verdict, server, route, authorization: Some((DEFAULT_KIND, policy.as_str())), denial }
        }
        None => Decided { verdict: Verdict::Deny, server, route, authorization: None, denial },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::evaluate::Client;

    const ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";

    /// Port 8080: Server `web` (HTTPRoute `get-data`: GET /data, authorized
    /// for ID); port 8081: Server `tcp` (ServerAuthorization for ID from
    /// 10.0.0.0/8 except 10.9.0.0/16); ports 8082–: one Server per access
    /// policy; everything else under `default_policy`.
    fn policy(default_policy: DefaultPolicy) -> PodInboundPolicy {
        let mine = json!({"kind": "AuthorizationPolicy", "name": "mine", "authentication": {"identities": [{"exact": ID}]},
            "networks": [{"net": "0.0.0.0/0"}, {"net": "::/0"}]});
        let mut ports = vec![
            json!({"port": 8080, "server": "web", "proxyProtocol": "HTTP/1", "accessPolicy": "all-unauthenticated", "authorizations": [],
                "routes": [{"name": "get-data", "matches": [{"path": {"pathPrefix": "/data"}, "method": "GET"}], "authorizations": [mine]}]}),
            json!({"port": 8081, "server": "tcp", "proxyProtocol": "opaque", "accessPolicy": null, "routes": [],
                "authorizations": [{"kind": "ServerAuthorization", "name": "saz", "authentication": {"identities": [{"suffix": "api.serviceaccount.identity.linkerd.cluster.local"}]},
                    "networks": [{"net": "10.0.0.0/8", "except": ["10.9.0.0/16"]}]}]}),
        ];
        for (i, p) in DefaultPolicy::ALL.iter().enumerate() {
            ports.push(json!({"port": 8082 + i, "server": format!("access-{p}"), "proxyProtocol": "HTTP/1", "accessPolicy": p,
                "authorizations": [mine.clone()], "routes": []}));
        }
        serde_json::from_value(json!({"namespace": "ns", "pod": "p", "defaultPolicy": default_policy,
            "clusterNetworks": ["10.0.0.0/8", "fd00::/8"], "ports": ports}))
        .unwrap()
    }

    #[test]
    fn borrowed_decisions_equal_the_traced_evaluation() {
        let headers = http::HeaderMap::new();
        let requests = [
            None,
            Some(HttpRequestInfo { method: "GET", path: "/data/1?x=1", headers: &headers }),
            Some(HttpRequestInfo { method: "POST", path: "/data", headers: &headers }),
        ];
        let mut checked = 0;
        for default_policy in DefaultPolicy::ALL {
            let p = policy(default_policy);
            for port in [8080, 8081, 8082, 8083, 8084, 8085, 8086, 8087, 9999] {
                for identity in [None, Some(ID), Some("other.other.serviceaccount.identity.linkerd.cluster.local")] {
                    for addr in ["10.1.2.3", "10.9.0.1", "127.0.0.1", "::ffff:10.1.2.3", "fd00::1", "2001:db8::1"] {
                        let client = Client { identity: identity.map(str::to_owned), addr: addr.parse().unwrap() };
                        for request in &requests {
                            let traced = p.evaluate(port, &client, request.as_ref());
                            let borrowed = p.decide_borrowed(port, identity, client.addr, request.as_ref());
                            assert_eq!(borrowed.allowed(), traced.allowed());
                            let context = format!("{default_policy} port {port} {identity:?} {addr} {:?}", request.map(|r| (r.method, r.path)));
                            assert_eq!(borrowed.to_decision(), Decision { trace: Vec::new(), ..traced }, "{context}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 9 * 3 * 6 * 3);
    }
}
