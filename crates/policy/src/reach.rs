//! Who may reach one port of a pod (`tessera policy who-can-reach`): every
//! authorization that can let a client in, with the traffic it covers, the
//! identities it accepts and the networks it accepts them from. It reads the
//! same [`PodInboundPolicy`] the proxy evaluates and follows the same rules as
//! [`crate::evaluate`]:
//!
//! - a port no Server selects: the pod's default policy's authorizations, for
//!   all traffic (`deny` lists nobody);
//! - a Server without HTTPRoutes: its authorizations, then its `accessPolicy`,
//!   for connections and every HTTP request (Linkerd's default route);
//! - a Server with HTTPRoutes: its authorizations and `accessPolicy` for
//!   connections only; HTTP requests are authorized by the policies targeting
//!   the HTTPRoute they match (a request matching no route is refused, 404).

use serde::{Deserialize, Serialize};

use crate::compiled::{Authentication, Authorization, DefaultPolicy, NetworkMatch, PodInboundPolicy};
use crate::evaluate::{DEFAULT_KIND, default_authorizations, describe_match};

/// Who may reach `namespace/pod` on `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reach {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The port asked about.
    pub port: u16,
    /// The pod's default inbound policy (in force when `server` is `None`).
    pub default_policy: DefaultPolicy,
    /// The Server selecting the port, if any.
    pub server: Option<ServerInfo>,
    /// HTTPRoutes attached to the Server, in precedence order for ties.
    pub routes: Vec<RouteInfo>,
    /// Every authorization that can let a client in, in evaluation order.
    pub allowed: Vec<Allowed>,
}

/// The Server selecting the port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Its name.
    pub name: String,
    /// Its `proxyProtocol`.
    pub proxy_protocol: String,
    /// Its v1beta3 `accessPolicy`, when set.
    pub access_policy: Option<DefaultPolicy>,
}

/// An HTTPRoute attached to the Server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// Its name.
    pub name: String,
    /// Its matches in words (any one selects the route).
    pub matches: Vec<String>,
}

/// The traffic an authorization covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Connections and every HTTP request.
    All,
    /// Connections only: HTTP requests are authorized per HTTPRoute.
    Connections,
    /// HTTP requests matching the entry's `route`.
    Route,
}

impl Scope {
    /// Lower-case words for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all traffic",
            Self::Connections => "connections",
            Self::Route => "route",
        }
    }
}

/// One authorization that can let a client in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allowed {
    /// `ServerAuthorization`, `AuthorizationPolicy` or `default` (a default
    /// policy or the Server's `accessPolicy`; the name is the policy).
    pub kind: String,
    /// The resource's (or policy's) name.
    pub name: String,
    /// The traffic it covers.
    pub scope: Scope,
    /// The HTTPRoute, for `scope: route`.
    pub route: Option<String>,
    /// True when any client may pass, meshed or not (no identity needed).
    pub unauthenticated: bool,
    /// The mesh identities accepted (`*` for any, `*.suffix`); empty when
    /// `unauthenticated`.
    pub identities: Vec<String>,
    /// Client networks accepted (with their exceptions).
    pub networks: Vec<NetworkMatch>,
    /// True for `audit`: let in, but logged and counted as a would-be denial.
    pub audit: bool,
}

fn allowed(authz: &Authorization, scope: Scope, route: Option<&str>) -> Allowed {
    let (unauthenticated, identities) = match &authz.authentication {
        Authentication::Unauthenticated => (true, Vec::new()),
        Authentication::AnyMeshTls => (false, vec!["*".to_owned()]),
        Authentication::Identities(ids) => (false, ids.iter().map(ToString::to_string).collect()),
    };
    Allowed {
        kind: authz.kind.clone(),
        name: authz.name.clone(),
        scope,
        route: route.map(str::to_owned),
        unauthenticated,
        identities,
        networks: authz.networks.clone(),
        audit: authz.kind == DEFAULT_KIND && authz.name == DefaultPolicy::Audit.as_str(),
    }
}

/// Who may reach `port` of the pod `policy` describes.
pub fn who_can_reach(policy: &PodInboundPolicy, port: u16) -> Reach {
    let mut reach = Reach {
        namespace: policy.namespace.clone(),
        pod: policy.pod.clone(),
        port,
        default_policy: policy.default_policy,
        server: None,
        routes: Vec::new(),
        allowed: Vec::new(),
    };
    let Some(server) = policy.port(port) else {
        let authzs = default_authorizations(policy.default_policy, &policy.cluster_networks);
        reach.allowed = authzs.iter().map(|a| allowed(a, Scope::All, None)).collect();
        return reach;
    };
    reach.server = Some(ServerInfo { name: server.server.clone(), proxy_protocol: server.proxy_protocol.clone(), access_policy: server.access_policy });
    let scope = if server.routes.is_empty() { Scope::All } else { Scope::Connections };
    let access = server.access_policy.map(|p| default_authorizations(p, &policy.cluster_networks)).unwrap_or_default();
    reach.allowed = server.authorizations.iter().chain(&access).map(|a| allowed(a, scope, None)).collect();
    for route in &server.routes {
        reach.routes.push(RouteInfo { name: route.name.clone(), matches: route.matches.iter().map(describe_match).collect() });
        reach.allowed.extend(route.authorizations.iter().map(|a| allowed(a, Scope::Route, Some(&route.name))));
    }
    reach
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::json;

    use super::*;
    use crate::compiled::IdentityMatch;
    use crate::evaluate::{Client, HttpRequestInfo, Verdict};

    const API: &str = "api.shop.serviceaccount.identity.linkerd.cluster.local";
    const WEB: &str = "web.shop.serviceaccount.identity.linkerd.cluster.local";

    fn policy(default: &str, ports: serde_json::Value) -> PodInboundPolicy {
        serde_json::from_value(json!({"namespace": "shop", "pod": "db-0", "defaultPolicy": default,
            "clusterNetworks": ["10.0.0.0/8"], "ports": ports}))
        .unwrap()
    }

    fn net(s: &str) -> NetworkMatch {
        NetworkMatch { net: s.parse().unwrap(), except: Vec::new() }
    }

    fn all() -> Vec<NetworkMatch> {
        vec![net("0.0.0.0/0"), net("::/0")]
    }

    /// A Server on 8080 with a ServerAuthorization (api, from 10/8 except
    /// 10.9/16) and an AuthorizationPolicy (any identity in shop).
    fn server_port(routes: serde_json::Value, access: Option<&str>) -> serde_json::Value {
        json!([{"port": 8080, "server": "db-http", "proxyProtocol": "HTTP/1", "accessPolicy": access, "routes": routes,
            "authorizations": [
                {"kind": "ServerAuthorization", "name": "api-only", "authentication": {"identities": [{"exact": API}]},
                    "networks": [{"net": "10.0.0.0/8", "except": ["10.9.0.0/16"]}]},
                {"kind": "AuthorizationPolicy", "name": "shop", "authentication": {"identities": [{"suffix": "shop.serviceaccount.identity.linkerd.cluster.local"}]},
                    "networks": [{"net": "0.0.0.0/0"}]}]}])
    }

    fn routes() -> serde_json::Value {
        json!([{"name": "data-get", "matches": [{"path": {"pathPrefix": "/data"}, "method": "GET"}],
            "authorizations": [{"kind": "AuthorizationPolicy", "name": "web-reads", "authentication": {"identities": [{"exact": WEB}]},
                "networks": [{"net": "0.0.0.0/0"}]}]},
            {"name": "admin", "matches": [{"path": {"exact": "/admin"}}], "authorizations": []}])
    }

    #[test]
    fn default_policies_without_a_server() {
        // (unauthenticated, identities, networks, audit) of the one entry, if any.
        type Entry = (bool, Vec<&'static str>, Vec<NetworkMatch>, bool);
        let cases: [(&str, Option<Entry>); 6] = [
            ("deny", None),
            ("audit", Some((true, vec![], all(), true))),
            ("all-unauthenticated", Some((true, vec![], all(), false))),
            ("all-authenticated", Some((false, vec!["*"], all(), false))),
            ("cluster-authenticated", Some((false, vec!["*"], vec![net("10.0.0.0/8")], false))),
            ("cluster-unauthenticated", Some((true, vec![], vec![net("10.0.0.0/8")], false))),
        ];
        for (default, expected) in cases {
            let reach = who_can_reach(&policy(default, json!([])), 9999);
            assert_eq!((reach.server.as_ref(), reach.default_policy.as_str(), reach.port), (None, default, 9999));
            match expected {
                None => assert_eq!(reach.allowed, vec![], "{default}"),
                Some((unauthenticated, identities, networks, audit)) => assert_eq!(
                    reach.allowed,
                    vec![Allowed {
                        kind: "default".into(),
                        name: default.into(),
                        scope: Scope::All,
                        route: None,
                        unauthenticated,
                        identities: identities.into_iter().map(str::to_owned).collect(),
                        networks,
                        audit,
                    }],
                    "{default}"
                ),
            }
        }
    }

    #[test]
    fn server_authorizations_without_routes_cover_all_traffic() {
        let reach = who_can_reach(&policy("all-unauthenticated", server_port(json!([]), None)), 8080);
        assert_eq!(reach.server, Some(ServerInfo { name: "db-http".into(), proxy_protocol: "HTTP/1".into(), access_policy: None }));
        let rows: Vec<_> = reach.allowed.iter().map(|a| (a.kind.as_str(), a.name.as_str(), a.scope, a.unauthenticated, a.identities.clone())).collect();
        assert_eq!(
            rows,
            vec![
                ("ServerAuthorization", "api-only", Scope::All, false, vec![API.to_owned()]),
                ("AuthorizationPolicy", "shop", Scope::All, false, vec!["*.shop.serviceaccount.identity.linkerd.cluster.local".to_owned()]),
            ],
            "the pod's default policy does not apply once a Server selects the port"
        );
        assert_eq!(reach.allowed[0].networks, vec![NetworkMatch { net: "10.0.0.0/8".parse().unwrap(), except: vec!["10.9.0.0/16".parse().unwrap()] }]);
        let json = serde_json::to_value(&reach).unwrap();
        assert_eq!(json["allowed"][0]["networks"], json!([{"net": "10.0.0.0/8", "except": ["10.9.0.0/16"]}]));
        assert_eq!(json["allowed"][0]["scope"], "all");
        assert_eq!(json["server"]["name"], "db-http");
    }

    #[test]
    fn access_policy_follows_the_authorizations() {
        let reach = who_can_reach(&policy("deny", server_port(json!([]), Some("audit"))), 8080);
        let last = reach.allowed.last().unwrap();
        assert_eq!((last.kind.as_str(), last.name.as_str(), last.audit, last.unauthenticated), ("default", "audit", true, true));
        assert_eq!(reach.allowed.len(), 3);
        let reach = who_can_reach(&policy("audit", server_port(json!([]), Some("deny"))), 8080);
        assert_eq!(reach.allowed.len(), 2, "accessPolicy deny adds nobody");
    }

    #[test]
    fn routes_take_http_requests_from_the_server() {
        let reach = who_can_reach(&policy("deny", server_port(routes(), Some("all-authenticated"))), 8080);
        assert_eq!(
            reach.routes,
            vec![
                RouteInfo { name: "data-get".into(), matches: vec!["method GET, path prefix /data".into()] },
                RouteInfo { name: "admin".into(), matches: vec!["path = /admin".into()] },
            ]
        );
        let rows: Vec<_> = reach.allowed.iter().map(|a| (a.name.as_str(), a.scope, a.route.as_deref())).collect();
        assert_eq!(
            rows,
            vec![
                ("api-only", Scope::Connections, None),
                ("shop", Scope::Connections, None),
                ("all-authenticated", Scope::Connections, None),
                ("web-reads", Scope::Route, Some("data-get")),
            ]
        );
    }

    /// Whether `entry` admits the client, read from the listing alone.
    fn admits(entry: &Allowed, client: &Client) -> bool {
        let in_networks = entry.networks.iter().any(|n| n.matches(client.addr));
        let identified = entry.unauthenticated || client.identity.as_deref().is_some_and(|id| entry.identities.iter().any(|m| IdentityMatch::parse(m).matches(id)));
        in_networks && identified
    }

    /// The listing agrees with the evaluator: a client is allowed exactly when
    /// an entry covering its traffic admits it.
    #[test]
    fn the_listing_agrees_with_evaluate() {
        let headers = http::HeaderMap::new();
        let get_data = HttpRequestInfo { method: "GET", path: "/data/1", headers: &headers };
        let admin = HttpRequestInfo { method: "GET", path: "/admin", headers: &headers };
        let ids = [None, Some(API), Some(WEB), Some("x.other.serviceaccount.identity.linkerd.cluster.local")];
        let addrs: [IpAddr; 4] = ["10.1.2.3".parse().unwrap(), "10.9.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let policies = [
            policy("deny", server_port(json!([]), None)),
            policy("deny", server_port(routes(), Some("cluster-unauthenticated"))),
            policy("cluster-authenticated", json!([])),
            policy("cluster-unauthenticated", json!([])),
        ];
        for p in &policies {
            for port in [8080, 9999] {
                let reach = who_can_reach(p, port);
                for id in ids {
                    for addr in addrs {
                        let client = Client { identity: id.map(str::to_owned), addr };
                        for (request, route) in [(None, None), (Some(&get_data), Some("data-get")), (Some(&admin), Some("admin"))] {
                            let decision = p.evaluate(port, &client, request);
                            let expected = reach.allowed.iter().any(|e| {
                                let covers = match e.scope {
                                    Scope::All => true,
                                    Scope::Connections => request.is_none(),
                                    Scope::Route => request.is_some() && e.route.as_deref() == route,
                                };
                                covers && admits(e, &client)
                            });
                            assert_eq!(decision.verdict != Verdict::Deny, expected, "{port} {client:?} {request:?}: {:?}", decision.trace);
                        }
                    }
                }
            }
        }
    }
}
