//! From the policy resources, one pod and its namespace to that pod's
//! [`PodInboundPolicy`], following Linkerd's policy controller
//! (`policy-controller/k8s/index/src/inbound/`):
//!
//! - the default policy is the pod's `config.linkerd.io/default-inbound-policy`
//!   annotation, else its namespace's, else the server's flag (an annotation
//!   that is not a policy name is ignored);
//! - a Server selects the pod by `podSelector` and a port by number, or by
//!   name through the pod's containerPorts (a name may select several ports);
//!   when two Servers select one port, the first by name keeps it;
//! - a Server's authorizations are the ServerAuthorizations selecting it (by
//!   name or label selector) and the AuthorizationPolicies targeting it or its
//!   Namespace; an HTTPRoute's are the AuthorizationPolicies targeting it;
//! - a resource that cannot be understood (an unknown kind in a reference, a
//!   missing authentication, a malformed network, two MeshTLSAuthentications
//!   in one policy, …) authorizes nothing: it is left out, never widened.
//!
//! Everything here is pure: the server feeds it from its watch cache.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::compiled::{
    Authentication, Authorization, DEFAULT_POLICY_ANNOTATION, DefaultPolicy, HeaderMatch, HttpMatch, IdentityMatch, NetworkMatch, PathMatch,
    Pattern, PodInboundPolicy, PortPolicy, QueryParamMatch, Route, StringMatch, all_networks,
};
use crate::resources::{
    AuthorizationPolicy, GROUP, HttpRoute, HttpRouteMatch, LabelSelector, MeshTlsAuthentication, Network, NetworkAuthentication, Port, Server,
    ServerAuthorization,
};

/// `(namespace, name)`.
pub type Key = (String, String);

/// Server-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `--default-inbound-policy`.
    pub default_policy: DefaultPolicy,
    /// `--cluster-networks`.
    pub cluster_networks: Vec<IpNet>,
    /// Identity trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Identity control-plane namespace (`linkerd`).
    pub control_namespace: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: crate::compiled::default_cluster_networks(),
            trust_domain: "cluster.local".into(),
            control_namespace: "linkerd".into(),
        }
    }
}

impl Settings {
    /// `SA.NS.serviceaccount.identity.CONTROL-NS.TRUST-DOMAIN`.
    pub fn service_account_identity(&self, namespace: &str, service_account: &str) -> String {
        format!("{service_account}.{}", self.namespace_suffix(namespace))
    }

    /// `NS.serviceaccount.identity.CONTROL-NS.TRUST-DOMAIN` (every ServiceAccount
    /// of a namespace is `*.` this).
    pub fn namespace_suffix(&self, namespace: &str) -> String {
        format!("{namespace}.serviceaccount.identity.{}.{}", self.control_namespace, self.trust_domain)
    }
}

/// What compilation needs to know about the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (Servers select on them).
    pub labels: BTreeMap<String, String>,
    /// Annotations (the default policy override).
    pub annotations: BTreeMap<String, String>,
    /// Every container's `ports`: (name, containerPort).
    pub container_ports: Vec<(Option<String>, u16)>,
}

/// The policy resources of the cluster, keyed by (namespace, name).
#[derive(Debug, Clone, Default)]
pub struct PolicyResources {
    /// Servers.
    pub servers: BTreeMap<Key, Server>,
    /// ServerAuthorizations.
    pub server_authorizations: BTreeMap<Key, ServerAuthorization>,
    /// AuthorizationPolicies.
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    /// MeshTLSAuthentications.
    pub mesh_tls_authentications: BTreeMap<Key, MeshTlsAuthentication>,
    /// NetworkAuthentications.
    pub network_authentications: BTreeMap<Key, NetworkAuthentication>,
    /// HTTPRoutes, with their `metadata.creationTimestamp` (route precedence
    /// ties go to the oldest).
    pub http_routes: BTreeMap<Key, (HttpRoute, String)>,
}

/// The entries of `map` in namespace `ns`, by name.
fn in_namespace<'m, V>(map: &'m BTreeMap<Key, V>, ns: &'m str) -> impl Iterator<Item = (&'m str, &'m V)> + 'm {
    map.range((ns.to_owned(), String::new())..).take_while(move |((n, _), _)| n == ns).map(|((_, name), v)| (name.as_str(), v))
}

/// Whether a reference's group is `group` (an omitted group counts as the
/// kind's own, as Linkerd's `targets_kind`); kinds compare case-insensitively.
fn is_kind(group: Option<&str>, kind: &str, want_group: &str, want_kind: &str) -> bool {
    group.is_none_or(|g| g == want_group) && kind.eq_ignore_ascii_case(want_kind)
}

/// Kubernetes label selector semantics; a selector that cannot be understood
/// selects nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
}

/// A network (`cidr` may also be a bare address); `None` when any part is
/// malformed, so that a broken `except` never widens the match.
fn network(n: &Network) -> Option<NetworkMatch> {
    fn net(s: &str) -> Option<IpNet> {
        let s = s.trim();
        s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
    }
    let except = n.except.iter().flatten().map(|e| net(e)).collect::<Option<Vec<_>>>()?;
    Some(NetworkMatch { net: net(&n.cidr)?, except })
}

fn networks(list: &[Network]) -> Option<Vec<NetworkMatch>> {
    list.iter().map(network).collect()
}

fn cluster_networks(settings: &Settings) -> Vec<NetworkMatch> {
    settings.cluster_networks.iter().map(|&net| NetworkMatch { net, except: Vec::new() }).collect()
}

/// The effective default: pod annotation > namespace annotation > flag.
pub fn effective_default(pod: &PodInfo, namespace_annotations: &BTreeMap<String, String>, settings: &Settings) -> DefaultPolicy {
    [pod.annotations.get(DEFAULT_POLICY_ANNOTATION), namespace_annotations.get(DEFAULT_POLICY_ANNOTATION)]
        .into_iter()
        .flatten()
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(settings.default_policy)
}

/// The pod's compiled inbound policy.
pub fn compile(pod: &PodInfo, namespace_annotations: &BTreeMap<String, String>, resources: &PolicyResources, settings: &Settings) -> PodInboundPolicy {
    let ns = pod.namespace.as_str();
    let mut ports: BTreeMap<u16, PortPolicy> = BTreeMap::new();
    for (name, server) in in_namespace(&resources.servers, ns) {
        let Some(selector) = &server.spec.pod_selector else { continue };
        if !selector_matches(selector, &pod.labels) {
            continue;
        }
        for port in selected_ports(&server.spec.port, pod) {
            // Servers are visited by name: the first keeps a contested port.
            ports.entry(port).or_insert_with(|| port_policy(port, name, server, resources, settings, ns));
        }
    }
    PodInboundPolicy {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        default_policy: effective_default(pod, namespace_annotations, settings),
        cluster_networks: settings.cluster_networks.clone(),
        ports: ports.into_values().collect(),
    }
}

fn selected_ports(port: &Port, pod: &PodInfo) -> Vec<u16> {
    match port {
        Port::Number(n) => u16::try_from(*n).ok().filter(|&p| p != 0).into_iter().collect(),
        Port::Name(name) => {
            let mut found: Vec<u16> = pod.container_ports.iter().filter(|(n, _)| n.as_deref() == Some(name.as_str())).map(|&(_, p)| p).collect();
            found.sort_unstable();
            found.dedup();
            found
        }
    }
}

fn port_policy(port: u16, name: &str, server: &Server, resources: &PolicyResources, settings: &Settings, ns: &str) -> PortPolicy {
    let mut authorizations = Vec::new();
    for (saz_name, saz) in in_namespace(&resources.server_authorizations, ns) {
        let selects = match (&saz.spec.server.name, &saz.spec.server.selector) {
            (Some(n), _) => n == name,
            (None, Some(sel)) => selector_matches(sel, &server.metadata.labels),
            (None, None) => false,
        };
        if selects && let Some(authz) = server_authorization(saz_name, saz, settings, ns) {
            authorizations.push(authz);
        }
    }
    for (ap_name, ap) in in_namespace(&resources.authorization_policies, ns) {
        let target = &ap.spec.target_ref;
        let targets = (is_kind(target.group.as_deref(), &target.kind, GROUP, "Server") && target.name == name)
            || (is_kind(target.group.as_deref().filter(|g| !g.is_empty()), &target.kind, "", "Namespace") && target.name == ns);
        if targets && let Some(authz) = authorization_policy(ap_name, ap, resources, settings, ns) {
            authorizations.push(authz);
        }
    }
    let mut routes: Vec<(&str, &str, Route)> = in_namespace(&resources.http_routes, ns)
        .filter(|(_, (route, _))| attaches(route, name, ns))
        .map(|(route_name, (route, created))| (created.as_str(), route_name, compile_route(route_name, route, resources, settings, ns)))
        .collect();
    routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    PortPolicy {
        port,
        server: name.to_owned(),
        proxy_protocol: server.spec.proxy_protocol.clone().unwrap_or_else(|| "unknown".to_owned()),
        // A value that is not a policy name fails closed (deny).
        access_policy: server.spec.access_policy.as_deref().and_then(|p| p.parse().ok()),
        authorizations,
        routes: routes.into_iter().map(|(_, _, r)| r).collect(),
    }
}

/// ServerAuthorization → authorization (`None`: it authorizes nobody).
fn server_authorization(name: &str, saz: &ServerAuthorization, settings: &Settings, ns: &str) -> Option<Authorization> {
    let client = &saz.spec.client;
    let authentication = if client.unauthenticated == Some(true) {
        Authentication::Unauthenticated
    } else if let Some(mtls) = &client.mesh_tls {
        if mtls.unauthenticated_tls == Some(true) {
            // tessera's proxy accepts no TLS without a client identity, so this
            // is as close as it gets: any meshed client.
            Authentication::AnyMeshTls
        } else {
            let ids: Vec<IdentityMatch> = mtls
                .identities
                .iter()
                .flatten()
                .map(|s| IdentityMatch::parse(s))
                .chain(mtls.service_accounts.iter().flatten().map(|sa| {
                    IdentityMatch::Exact(settings.service_account_identity(sa.namespace.as_deref().unwrap_or(ns), &sa.name))
                }))
                .collect();
            if ids.is_empty() {
                return None;
            }
            Authentication::Identities(ids)
        }
    } else {
        return None;
    };
    // Unset networks: the cluster's (Linkerd: "the server chooses a default").
    let networks = match client.networks.as_deref() {
        None | Some([]) => cluster_networks(settings),
        Some(list) => networks(list)?,
    };
    Some(Authorization { kind: "ServerAuthorization".into(), name: name.to_owned(), authentication, networks })
}

/// AuthorizationPolicy → authorization: every required authentication must
/// hold (at most one identity source and one NetworkAuthentication, as
/// Linkerd); without an identity source any client, without networks all.
fn authorization_policy(name: &str, ap: &AuthorizationPolicy, resources: &PolicyResources, settings: &Settings, ns: &str) -> Option<Authorization> {
    let mut identities: Option<Vec<IdentityMatch>> = None;
    let mut nets: Option<Vec<NetworkMatch>> = None;
    for r in &ap.spec.required_authentication_refs {
        let ref_ns = r.namespace.as_deref().unwrap_or(ns);
        let ref_name = r.name.as_deref()?;
        let group = r.group.as_deref();
        if is_kind(group, &r.kind, GROUP, "MeshTLSAuthentication") {
            let authn = resources.mesh_tls_authentications.get(&(ref_ns.to_owned(), ref_name.to_owned()))?;
            if identities.replace(mesh_tls_identities(authn, settings, ref_ns)?).is_some() {
                return None;
            }
        } else if is_kind(group, &r.kind, GROUP, "NetworkAuthentication") {
            let authn = resources.network_authentications.get(&(ref_ns.to_owned(), ref_name.to_owned()))?;
            if authn.spec.networks.is_empty() || nets.replace(networks(&authn.spec.networks)?).is_some() {
                return None;
            }
        } else if is_kind(group.filter(|g| !g.is_empty()), &r.kind, "", "ServiceAccount") {
            let id = IdentityMatch::Exact(settings.service_account_identity(ref_ns, ref_name));
            if identities.replace(vec![id]).is_some() {
                return None;
            }
        } else {
            return None;
        }
    }
    Some(Authorization {
        kind: "AuthorizationPolicy".into(),
        name: name.to_owned(),
        authentication: identities.map_or(Authentication::Unauthenticated, Authentication::Identities),
        networks: nets.unwrap_or_else(all_networks),
    })
}

fn mesh_tls_identities(authn: &MeshTlsAuthentication, settings: &Settings, ns: &str) -> Option<Vec<IdentityMatch>> {
    let mut ids: Vec<IdentityMatch> = authn.spec.identities.iter().flatten().map(|s| IdentityMatch::parse(s)).collect();
    for r in authn.spec.identity_refs.iter().flatten() {
        let group = r.group.as_deref().filter(|g| !g.is_empty());
        let name = r.name.as_deref()?;
        if is_kind(group, &r.kind, "", "ServiceAccount") {
            ids.push(IdentityMatch::Exact(settings.service_account_identity(r.namespace.as_deref().unwrap_or(ns), name)));
        } else if is_kind(group, &r.kind, "", "Namespace") {
            ids.push(IdentityMatch::Suffix(settings.namespace_suffix(name)));
        } else {
            return None;
        }
    }
    (!ids.is_empty()).then_some(ids)
}

/// Whether an HTTPRoute has this Server as a parent.
fn attaches(route: &HttpRoute, server: &str, ns: &str) -> bool {
    route.spec.parent_refs.iter().flatten().any(|p| {
        p.kind.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("Server"))
            && p.group.as_deref() == Some(GROUP)
            && p.name == server
            && p.namespace.as_deref().is_none_or(|n| n == ns)
    })
}

fn compile_route(name: &str, route: &HttpRoute, resources: &PolicyResources, settings: &Settings, ns: &str) -> Route {
    let mut matches = Vec::new();
    for rule in route.spec.rules.iter().flatten() {
        match rule.matches.as_deref() {
            None | Some([]) => matches.push(HttpMatch { path: Some(PathMatch::PathPrefix("/".into())), ..HttpMatch::default() }),
            // A match that cannot be compiled matches nothing.
            Some(list) => matches.extend(list.iter().filter_map(http_match)),
        }
    }
    let authorizations = in_namespace(&resources.authorization_policies, ns)
        .filter(|(_, ap)| {
            let t = &ap.spec.target_ref;
            t.name == name
                && t.kind.eq_ignore_ascii_case("HTTPRoute")
                && t.group.as_deref().is_none_or(|g| g == GROUP || g == "gateway.networking.k8s.io")
        })
        .filter_map(|(ap_name, ap)| authorization_policy(ap_name, ap, resources, settings, ns))
        .collect();
    Route { name: name.to_owned(), matches, authorizations }
}

fn string_match(type_: Option<&str>, value: &str) -> Option<StringMatch> {
    match type_.unwrap_or("Exact") {
        "Exact" => Some(StringMatch::Exact(value.to_owned())),
        "RegularExpression" => Pattern::new(value).ok().map(StringMatch::RegularExpression),
        _ => None,
    }
}

fn http_match(m: &HttpRouteMatch) -> Option<HttpMatch> {
    let path = match &m.path {
        None => Some(PathMatch::PathPrefix("/".into())),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            Some(match p.type_.as_deref().unwrap_or("PathPrefix") {
                "PathPrefix" => PathMatch::PathPrefix(value),
                "Exact" => PathMatch::Exact(value),
                "RegularExpression" => PathMatch::RegularExpression(Pattern::new(&value).ok()?),
                _ => return None,
            })
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| Some(HeaderMatch { name: h.name.to_ascii_lowercase(), value: string_match(h.type_.as_deref(), &h.value)? }))
        .collect::<Option<Vec<_>>>()?;
    let query_params = m
        .query_params
        .iter()
        .flatten()
        .map(|q| Some(QueryParamMatch { name: q.name.clone(), value: string_match(q.type_.as_deref(), &q.value)? }))
        .collect::<Option<Vec<_>>>()?;
    Some(HttpMatch { path, headers, query_params, method: m.method.clone() })
}

#[cfg(test)]
mod tests;
