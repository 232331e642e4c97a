//! The compiled inbound policy of one pod: what `tessera server` derives from
//! the policy resources, the pod and its namespace, and what the proxy and
//! `tessera policy explain` evaluate (see [`crate::evaluate`]). It is plain
//! data, sent as JSON (the serde form of these types), so that both sides
//! decide with the same code and the same input.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Annotation (on a pod or its namespace) overriding the server's default
/// inbound policy.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";

/// The inbound policy of one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInboundPolicy {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// Effective default: pod annotation > namespace annotation > server flag.
    /// Applies to every port no Server selects.
    pub default_policy: DefaultPolicy,
    /// What `cluster-*` policies count as "in the cluster".
    pub cluster_networks: Vec<IpNet>,
    /// The ports a Server selects (port names resolved through the pod's
    /// containerPorts), sorted by port.
    pub ports: Vec<PortPolicy>,
}

/// Linkerd's default policies (`proxy.defaultInboundPolicy`, the annotation,
/// Server v1beta3 `accessPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Any client, meshed or not, from anywhere.
    AllUnauthenticated,
    /// Meshed clients (any identity), from anywhere.
    AllAuthenticated,
    /// Meshed clients from the cluster networks.
    ClusterAuthenticated,
    /// Any client from the cluster networks.
    ClusterUnauthenticated,
    /// Nobody.
    Deny,
    /// Everybody, but each request is logged and counted as a would-be denial.
    Audit,
}

impl DefaultPolicy {
    /// Every value, in Linkerd's documentation order.
    pub const ALL: [DefaultPolicy; 6] = [
        Self::AllUnauthenticated,
        Self::AllAuthenticated,
        Self::ClusterAuthenticated,
        Self::ClusterUnauthenticated,
        Self::Deny,
        Self::Audit,
    ];

    /// The annotation/flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not one of Linkerd's default policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid default inbound policy {0:?}: must be one of all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, audit")]
pub struct InvalidDefaultPolicy(pub String);

impl FromStr for DefaultPolicy {
    type Err = InvalidDefaultPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| InvalidDefaultPolicy(s.to_owned()))
    }
}

/// Linkerd's default `clusterNetworks`, plus 127.0.0.0/8: the cluster
/// networks are where pods live, and `tessera agent run --mesh` gives each
/// pod a loopback address (Linux routes all of 127/8 to `lo`). Without it,
/// `cluster-*` policies and ServerAuthorizations without `networks` would
/// admit no tessera pod. Kept last, so the first network stays Linkerd's.
pub fn default_cluster_networks() -> Vec<IpNet> {
    ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `0.0.0.0/0` and `::/0`.
pub fn all_networks() -> Vec<NetworkMatch> {
    ["0.0.0.0/0", "::/0"].iter().filter_map(|n| n.parse().ok()).map(|net| NetworkMatch { net, except: Vec::new() }).collect()
}

/// One pod port selected by a Server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPolicy {
    /// The container port.
    pub port: u16,
    /// The Server's name.
    pub server: String,
    /// The Server's `proxyProtocol` (`unknown` when unset).
    pub proxy_protocol: String,
    /// Server v1beta3 `spec.accessPolicy`: what applies when no authorization
    /// matches (`None` for older Servers: deny).
    pub access_policy: Option<DefaultPolicy>,
    /// Authorizations targeting the Server (ServerAuthorizations, and
    /// AuthorizationPolicies targeting it or its Namespace). They authorize
    /// connections, and HTTP requests while no HTTPRoute is attached (Linkerd's
    /// default route); once routes exist, only each route's own apply.
    pub authorizations: Vec<Authorization>,
    /// HTTPRoutes whose parentRef is this Server, in precedence order for
    /// ties (oldest first, then by name).
    pub routes: Vec<Route>,
}

/// One thing that may let a client in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `ServerAuthorization`, `AuthorizationPolicy` or `default` (synthesised
    /// from a default or access policy; then `name` is the policy's value).
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// What the client must prove.
    pub authentication: Authentication,
    /// Client addresses allowed (at least one must contain the address and
    /// none of its `except`). Empty matches no address.
    pub networks: Vec<NetworkMatch>,
}

/// What a client must prove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Authentication {
    /// Nothing: meshed or not.
    Unauthenticated,
    /// Any mesh TLS identity.
    AnyMeshTls,
    /// A mesh TLS identity matching one of these.
    Identities(Vec<IdentityMatch>),
}

/// How an identity is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityMatch {
    /// The identity, exactly.
    Exact(String),
    /// Written `*.SUFFIX`; holds `SUFFIX` (without `*.`) and matches identities
    /// that end in `.SUFFIX` (a whole-label boundary: `*.ns.serviceaccount…`
    /// does not match `sa.evil-ns.serviceaccount…`).
    Suffix(String),
    /// `*`: any identity.
    Any,
}

impl IdentityMatch {
    /// Parses Linkerd's spelling: `*`, `*.suffix` or an exact name.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Any
        } else if let Some(suffix) = s.strip_prefix("*.") {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    /// Whether `identity` matches.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == identity,
            Self::Suffix(suffix) => {
                identity.len() > suffix.len() + 1
                    && identity.ends_with(suffix.as_str())
                    && identity.as_bytes()[identity.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A network with exceptions (`cidr` + `except` in Linkerd's resources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkMatch {
    /// The network.
    pub net: IpNet,
    /// Addresses inside `net` that do not match.
    #[serde(default)]
    pub except: Vec<IpNet>,
}

impl NetworkMatch {
    /// Whether `addr` is in `net` and in none of `except`. IPv4-mapped IPv6
    /// client addresses are compared as IPv4.
    pub fn matches(&self, addr: std::net::IpAddr) -> bool {
        let addr = canonical(addr);
        self.net.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (a dual-stack listener reports IPv4 clients so).
pub fn canonical(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// An HTTPRoute attached to the Server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The HTTPRoute's name.
    pub name: String,
    /// All matches of all its rules (any one selects the route). A rule
    /// without matches contributes the default match (path prefix `/`).
    pub matches: Vec<HttpMatch>,
    /// AuthorizationPolicies targeting this HTTPRoute.
    pub authorizations: Vec<Authorization>,
}

/// One HTTPRouteMatch: every present condition must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path condition (`None`: any path, as prefix `/`).
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Header conditions (names case-insensitive).
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<QueryParamMatch>,
    /// Method, exactly (`GET`, …).
    #[serde(default)]
    pub method: Option<String>,
}

/// Gateway API path match types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Element-wise prefix: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`.
    PathPrefix(String),
    /// The whole path matches the expression.
    RegularExpression(Pattern),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (compared case-insensitively).
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// A query parameter condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// Parameter name (exact).
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// Exact or regular-expression value match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// The whole value matches the expression.
    RegularExpression(Pattern),
}

/// A regular expression matched against a whole value; serialised as its
/// source text and compiled once when built or decoded.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let compiled = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self { source: source.to_owned(), compiled })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_spellings_round_trip() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(p.as_str()));
        }
        assert_eq!(
            "allow".parse::<DefaultPolicy>().unwrap_err().to_string(),
            "invalid default inbound policy \"allow\": must be one of all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, audit"
        );
    }

    #[test]
    fn identity_suffix_needs_a_label_boundary() {
        let m = IdentityMatch::parse("*.ns.serviceaccount.identity.linkerd.cluster.local");
        assert_eq!(m, IdentityMatch::Suffix("ns.serviceaccount.identity.linkerd.cluster.local".into()));
        assert!(m.matches("api.ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!m.matches("api.evil-ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!m.matches("evil-ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!m.matches("ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!m.matches(".ns.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!m.matches("api.ns.serviceaccount.identity.linkerd.cluster.local.evil"));
        assert!(IdentityMatch::parse("*").matches("anything"));
        assert!(!IdentityMatch::parse("a.b").matches("a.b.c"));
        assert_eq!(IdentityMatch::parse("*.x").to_string(), "*.x");
    }

    #[test]
    fn network_except_and_mapped_addresses() {
        let n = NetworkMatch { net: "10.0.0.0/8".parse().unwrap(), except: vec!["10.1.0.0/16".parse().unwrap()] };
        assert!(n.matches("10.2.3.4".parse().unwrap()));
        assert!(!n.matches("10.1.3.4".parse().unwrap()));
        assert!(!n.matches("11.0.0.1".parse().unwrap()));
        assert!(n.matches("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!n.matches("::ffff:10.1.3.4".parse().unwrap()));
    }

    #[test]
    fn json_shape_round_trips() {
        let policy = PodInboundPolicy {
            namespace: "ns".into(),
            pod: "p".into(),
            default_policy: DefaultPolicy::ClusterAuthenticated,
            cluster_networks: default_cluster_networks(),
            ports: vec![PortPolicy {
                port: 8080,
                server: "web".into(),
                proxy_protocol: "HTTP/1".into(),
                access_policy: Some(DefaultPolicy::Deny),
                authorizations: vec![Authorization {
                    kind: "AuthorizationPolicy".into(),
                    name: "a".into(),
                    authentication: Authentication::Identities(vec![IdentityMatch::parse("*.ns.x"), IdentityMatch::Any]),
                    networks: all_networks(),
                }],
                routes: vec![Route {
                    name: "r".into(),
                    matches: vec![HttpMatch {
                        path: Some(PathMatch::RegularExpression(Pattern::new("/a/[0-9]+").unwrap())),
                        headers: vec![HeaderMatch { name: "x-a".into(), value: StringMatch::Exact("1".into()) }],
                        query_params: vec![],
                        method: Some("GET".into()),
                    }],
                    authorizations: vec![],
                }],
            }],
        };
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["defaultPolicy"], "cluster-authenticated");
        assert_eq!(json["ports"][0]["authorizations"][0]["authentication"], serde_json::json!({"identities": [{"suffix": "ns.x"}, "any"]}));
        assert_eq!(json["ports"][0]["routes"][0]["matches"][0]["path"], serde_json::json!({"regularExpression": "/a/[0-9]+"}));
        assert_eq!(json["ports"][0]["authorizations"][0]["networks"][0], serde_json::json!({"net": "0.0.0.0/0", "except": []}));
        let back: PodInboundPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
        let bad = serde_json::json!({"regularExpression": "("});
        assert!(serde_json::from_value::<PathMatch>(bad).is_err());
    }
}
