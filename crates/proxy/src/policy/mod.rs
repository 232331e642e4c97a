//! Inbound authorization: the pod's compiled policy, watched from the API
//! server ([`client`]), decides every inbound opaque TCP connection (after
//! protocol detection and TLS) and every inbound HTTP request, with the
//! evaluation `tessera policy explain` uses (`tessera_policy`).
//!
//! The latest policy lives in a `watch` channel and each decision borrows
//! the current one, so a change applies to the next request while
//! requests already allowed finish. Until the first snapshot arrives the
//! proxy fails closed: every inbound request and connection is denied (and
//! `/ready` answers 503). Denials are answered ([`deny`]), counted with
//! Linkerd's metric names ([`metrics`]), logged, published to tap, and kept
//! with audit would-be denials in a ring served as admin `/denials` ([`recent`]).

pub mod client;
pub mod deny;
pub mod metrics;
pub mod recent;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use tessera_policy::decided::Decided;
use tessera_policy::{Client, Decision, HttpRequestInfo, PodInboundPolicy, Verdict};
use tokio::sync::watch;

use self::metrics::{AuthzLabels, AuthzMetrics, Meta, Outcome};
use self::recent::{Denial, DenialVerdict, RecentDenials};
use crate::metrics::Tls;
use crate::tap::{TapDenial, TapDirection, TapHub, TapRequest};

/// The reason given while no policy has arrived.
pub const NO_POLICY_YET: &str = "no inbound policy from the control plane yet";

/// A policy as received, with what the metrics need from it precomputed.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled policy.
    pub policy: PodInboundPolicy,
    /// `srv_*` of a port no Server selects: the effective default policy.
    default_server: Meta,
    /// The snapshot as sent (to skip unchanged ones).
    raw: Vec<u8>,
    /// Label triples of allowed traffic, built once per snapshot so an
    /// allowed request clones them instead of allocating ([`LabelCache`]).
    labels: LabelCache,
}

/// What a name in the policy is, in the [`LabelCache`] key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Named {
    Server,
    Route,
    Authorization,
}

/// The `srv_*`, `route_*` and `authz_*` label triples of a policy, keyed by
/// the address of the name they were built from (a borrowed decision points
/// into the policy, so the look-up needs no hashing of text); a hit is
/// checked against the name, and a miss builds the triple as before.
#[derive(Debug)]
struct LabelCache {
    by_name: std::collections::HashMap<(Named, usize), Meta>,
    /// `authz_kind="default"` for each default policy.
    defaults: Vec<Meta>,
    /// Linkerd's synthetic `default` route.
    default_route: Meta,
}

impl LabelCache {
    fn new(policy: &PodInboundPolicy) -> Self {
        let mut by_name = std::collections::HashMap::new();
        let mut authz = |a: &tessera_policy::Authorization| {
            by_name.insert((Named::Authorization, a.name.as_ptr() as usize), authz_meta(&a.kind, &a.name));
        };
        for port in &policy.ports {
            port.authorizations.iter().for_each(&mut authz);
            port.routes.iter().flat_map(|r| &r.authorizations).for_each(&mut authz);
        }
        for port in &policy.ports {
            by_name.insert((Named::Server, port.server.as_ptr() as usize), Meta::resource("server", &port.server));
            for route in &port.routes {
                by_name.insert((Named::Route, route.name.as_ptr() as usize), Meta::resource("HTTPRoute", &route.name));
            }
        }
        let defaults = tessera_policy::DefaultPolicy::ALL.iter().map(|p| Meta::default_named(p.as_str())).collect();
        Self { by_name, defaults, default_route: Meta::default_named("default") }
    }

    fn get(&self, what: Named, name: &str, build: impl FnOnce() -> Meta) -> Meta {
        match self.by_name.get(&(what, name.as_ptr() as usize)) {
            Some(meta) if *meta.name == *name => meta.clone(),
            _ => build(),
        }
    }

    fn authz(&self, kind: &str, name: &str) -> Meta {
        if kind == tessera_policy::evaluate::DEFAULT_KIND
            && let Some(meta) = self.defaults.iter().find(|m| *m.name == *name)
        {
            return meta.clone();
        }
        self.get(Named::Authorization, name, || authz_meta(kind, name))
    }

    fn route(&self, route: Option<&tessera_policy::Route>) -> Meta {
        match route {
            Some(r) => self.get(Named::Route, &r.name, || Meta::resource("HTTPRoute", &r.name)),
            None => self.default_route.clone(),
        }
    }
}

/// `authz_*` of an authorization (kind, name), as Linkerd labels it.
fn authz_meta(kind: &str, name: &str) -> Meta {
    match kind {
        "default" => Meta::default_named(name),
        kind => Meta::resource(&kind.to_ascii_lowercase(), name),
    }
}

impl Loaded {
    /// Parses one snapshot line.
    pub fn decode(line: &[u8]) -> Result<Self, serde_json::Error> {
        let policy: PodInboundPolicy = serde_json::from_slice(line)?;
        Ok(Self::new(policy, line.to_vec()))
    }

    /// Wraps a policy (tests build them directly).
    pub fn new(policy: PodInboundPolicy, raw: Vec<u8>) -> Self {
        let default_server = Meta::default_named(policy.default_policy.as_str());
        let labels = LabelCache::new(&policy);
        Self { policy, default_server, raw, labels }
    }
}

/// The sending side (the policy client).
pub type PolicyTx = watch::Sender<Option<Arc<Loaded>>>;
/// The current policy (`None` until the first snapshot).
pub type PolicyRx = watch::Receiver<Option<Arc<Loaded>>>;

/// What inbound knows about a connection when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// The client's address.
    pub addr: SocketAddr,
    /// The public address it connected to (its port selects the Server).
    pub target: SocketAddr,
    /// TLS state.
    pub tls: Tls,
    /// The verified client identity (mTLS).
    pub client_id: Option<&'a str>,
    /// The connection's allowed-request series (HTTP; `None`: look it up per request).
    pub series: Option<&'a AllowedSeries>,
}

/// The `inbound_http_authz_allow_total` series an HTTP connection last
/// counted into. Everything but the Server, route and authorization in its
/// labels is fixed for a connection, and a client sends the same kind of
/// request over and over, so an allowed request that lands where the last
/// one did is one atomic increment: no labels built, no family look-up.
#[derive(Debug, Default)]
pub struct AllowedSeries(std::sync::Mutex<Option<CachedSeries>>);

#[derive(Debug)]
struct CachedSeries {
    /// The snapshot the key points into, held so its addresses stay valid
    /// and cannot be reused by another policy's names.
    snapshot: Arc<Loaded>,
    key: SeriesKey,
    counter: Counter,
}

/// What allowed a request, by the addresses (and lengths) of the names in
/// the snapshot: the Server, the route and the authorization's kind and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeriesKey {
    server: Option<(usize, usize)>,
    route: Option<(usize, usize)>,
    authz: Option<((usize, usize), (usize, usize))>,
}

fn address(name: &str) -> (usize, usize) {
    (name.as_ptr() as usize, name.len())
}

impl SeriesKey {
    fn of(decided: &Decided<'_>) -> Self {
        Self {
            server: decided.server.map(|s| address(&s.server)),
            route: decided.route.map(|r| address(&r.name)),
            authz: decided.authorization.map(|(kind, name)| (address(kind), address(name))),
        }
    }
}

impl AllowedSeries {
    /// Counts one allowed request: into the cached series when the same
    /// snapshot allowed it the same way, else into the one `resolve` gives,
    /// which is then cached.
    fn count(&self, snapshot: &Arc<Loaded>, key: SeriesKey, resolve: impl FnOnce() -> Counter) {
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached.as_ref() {
            Some(c) if Arc::ptr_eq(&c.snapshot, snapshot) && c.key == key => {
                c.counter.inc();
            }
            _ => {
                let counter = resolve();
                counter.inc();
                *cached = Some(CachedSeries { snapshot: snapshot.clone(), key, counter });
            }
        }
    }
}

/// Decides inbound traffic against the current policy (one per proxy, cheap to clone).
#[derive(Debug, Clone)]
pub struct Enforcer {
    policy: PolicyRx,
    metrics: AuthzMetrics,
    recent: RecentDenials,
}

impl Enforcer {
    /// Enforces what `policy` holds, counting into `metrics`.
    pub fn new(policy: PolicyRx, metrics: AuthzMetrics) -> Self {
        Self { policy, metrics, recent: RecentDenials::default() }
    }

    /// The ring of recent denials this enforcer records into (for admin `/denials`).
    pub fn recent(&self) -> RecentDenials {
        self.recent.clone()
    }

    /// An opaque TCP connection: whether to forward it (else close it).
    pub fn allow_tcp(&self, peer: &Peer<'_>) -> bool {
        if self.allowed(peer, None) {
            return true;
        }

        let (outcome, decision, server) = self.decide(peer, None);
        self.remember(outcome, peer, &decision, &server, None);
        self.metrics.tcp(outcome, labels(peer, &decision, server, None));
        if outcome == Outcome::Deny {
            tracing::info!(client = %peer.addr, target = %peer.target, client_id = ?peer.client_id, reason = %decision.reason, "inbound connection denied by policy");
            let (method, uri, headers) = (http::Method::GET, http::Uri::default(), http::HeaderMap::new());
            TapHub::global().denial(&tap_request(peer, &method, &uri, &headers), false, tap_denial(&decision));
        }
        outcome != Outcome::Deny
    }

    /// An HTTP request: `None` to forward it, else the answer to send instead.
    pub fn check_http(&self, peer: &Peer<'_>, parts: &http::request::Parts) -> Option<Response<Full<Bytes>>> {
        // The path with its query: HTTPRoute queryParams matches need it
        // (as `explain --path` passes it).
        let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        let request = HttpRequestInfo { method: parts.method.as_str(), path, headers: &parts.headers };
        if self.allowed(peer, Some(&request)) {
            return None;
        }

        let (outcome, decision, server) = self.decide(peer, Some(&request));
        let route = Some(decision.route.as_deref().map_or_else(|| Meta::default_named("default"), |r| Meta::resource("HTTPRoute", r)));
        let status = http::StatusCode::from_u16(decision.http_status.unwrap_or(403)).unwrap_or(http::StatusCode::FORBIDDEN);
        let outcome = match outcome {
            // Linkerd counts a request no HTTPRoute matched apart from denials.
            Outcome::Deny if status == http::StatusCode::NOT_FOUND => Outcome::RouteNotFound,
            other => other,
        };
        // The query stays out of the ring: the admin port serves it without
        // authentication, and a query may carry a credential.
        self.remember(outcome, peer, &decision, &server, Some((parts.method.as_str(), parts.uri.path())));
        self.metrics.http(outcome, labels(peer, &decision, server, route));
        if outcome == Outcome::Allow || outcome == Outcome::AuditDeny {
            return None;
        }
        tracing::info!(client = %peer.addr, target = %peer.target, client_id = ?peer.client_id, method = %parts.method, path = parts.uri.path(), reason = %decision.reason, "inbound request denied by policy");
        TapHub::global().denial(&tap_request(peer, &parts.method, &parts.uri, &parts.headers), true, tap_denial(&decision));
        Some(deny::response(deny::is_grpc(&parts.headers), status, &decision.reason))
    }

    /// The per-request path (issue 16): when the current policy allows,
    /// counts it from the borrowed decision with labels built once per
    /// snapshot, and answers `true`; no reason text, no owned decision.
    /// Anything else (no policy yet, a denial, an audit) answers `false` and
    /// takes the full path, which decides again and builds the reason.
    fn allowed(&self, peer: &Peer<'_>, request: Option<&HttpRequestInfo<'_>>) -> bool {
        let current = self.policy.borrow().clone();
        let Some(loaded) = current else { return false };
        let decided = loaded.policy.decide_borrowed(peer.target.port(), peer.client_id, peer.addr.ip(), request);
        if decided.verdict != Verdict::Allow {
            return false;
        }
        if let (Some(series), Some(_)) = (peer.series, request) {
            series.count(&loaded, SeriesKey::of(&decided), || self.metrics.http_allow_counter(&allowed_labels(&loaded, peer, request, &decided)));
            return true;
        }
        let labels = allowed_labels(&loaded, peer, request, &decided);
        if request.is_some() {
            self.metrics.http(Outcome::Allow, labels);
        } else {
            self.metrics.tcp(Outcome::Allow, labels);
        }
        true
    }

    /// Keeps a denial or an audit would-be denial in the ring; allowed
    /// traffic returns at once, having built nothing.
    fn remember(&self, outcome: Outcome, peer: &Peer<'_>, decision: &Decision, server: &Meta, request: Option<(&str, &str)>) {
        let verdict = match outcome {
            Outcome::Allow => return,
            Outcome::Deny | Outcome::RouteNotFound => DenialVerdict::Deny,
            Outcome::AuditDeny => DenialVerdict::Audit,
        };
        let mut denial = Denial::new(peer.addr, peer.client_id, peer.target.port(), verdict);
        if let Some((method, path)) = request {
            denial = denial.http(method, path);
        }
        denial.server = if &*server.kind == "default" { format!("default:{}", server.name) } else { server.name.to_string() };
        denial.authorization = decision.authorization.as_ref().map(|(kind, name)| format!("{kind}/{name}"));
        denial.route.clone_from(&decision.route);
        denial.reason.clone_from(&decision.reason);
        self.recent.record(denial);
    }

    /// Evaluates against the current policy (fails closed without one).
    fn decide(&self, peer: &Peer<'_>, request: Option<&HttpRequestInfo<'_>>) -> (Outcome, Decision, Meta) {
        let current = self.policy.borrow().clone();
        let Some(loaded) = current else {
            let decision = Decision {
                verdict: Verdict::Deny,
                server: None,
                authorization: None,
                route: None,
                reason: NO_POLICY_YET.to_owned(),
                http_status: Some(403),
                trace: Vec::new(),
            };
            return (Outcome::Deny, decision, Meta::default_named("unknown"));
        };
        let client = Client { identity: peer.client_id.map(str::to_owned), addr: peer.addr.ip() };
        let decision = loaded.policy.decide(peer.target.port(), &client, request);
        let outcome = match decision.verdict {
            Verdict::Allow => Outcome::Allow,
            Verdict::Deny => Outcome::Deny,
            Verdict::AuditDeny => {
                tracing::warn!(client = %peer.addr, target = %peer.target, client_id = ?peer.client_id, reason = %decision.reason, "audit: inbound policy would deny this");
                Outcome::AuditDeny
            }
        };
        let server = decision.server.as_deref().map_or_else(|| loaded.default_server.clone(), |s| Meta::resource("server", s));
        (outcome, decision, server)
    }
}

/// Whether a policy has arrived (for `/ready`).
pub fn has_policy(policy: &PolicyRx) -> bool {
    policy.borrow().is_some()
}

/// The labels of allowed traffic, from the snapshot's label cache.
fn allowed_labels(loaded: &Loaded, peer: &Peer<'_>, request: Option<&HttpRequestInfo<'_>>, decided: &Decided<'_>) -> AuthzLabels {
    let cache = &loaded.labels;
    let server = decided.server.map_or_else(|| loaded.default_server.clone(), |s| cache.get(Named::Server, &s.server, || Meta::resource("server", &s.server)));
    AuthzLabels {
        target_addr: peer.target,
        server,
        route: request.map(|_| cache.route(decided.route)),
        authz: decided.authorization.map(|(kind, name)| cache.authz(kind, name)),
        tls: peer.tls,
        client_id: peer.client_id.map(Arc::from),
    }
}

fn labels(peer: &Peer<'_>, decision: &Decision, server: Meta, route: Option<Meta>) -> AuthzLabels {
    let authz = decision.authorization.as_ref().map(|(kind, name)| authz_meta(kind, name));
    AuthzLabels { target_addr: peer.target, server, route, authz, tls: peer.tls, client_id: peer.client_id.map(Arc::from) }
}

fn tap_request<'a>(peer: &'a Peer<'a>, method: &'a http::Method, uri: &'a http::Uri, headers: &'a http::HeaderMap) -> TapRequest<'a> {
    TapRequest {
        direction: TapDirection::Inbound,
        src: peer.addr,
        dst: peer.target,
        tls: crate::tap::tls_label(peer.tls),
        identity: peer.client_id,
        method,
        uri,
        headers,
    }
}

fn tap_denial(decision: &Decision) -> TapDenial<'_> {
    TapDenial { reason: &decision.reason, server: decision.server.as_deref(), route: decision.route.as_deref() }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use prometheus_client::registry::Registry;

    use super::*;

    const API: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
    const OTHER: &str = "other.other.serviceaccount.identity.linkerd.cluster.local";

    /// Port 8081 selected by Server `data-store-http`, authorized for the
    /// api's identity by AuthorizationPolicy `api-only`; everything else
    /// under `default_policy`.
    fn policy(default_policy: &str) -> Loaded {
        let json = serde_json::json!({
            "namespace": "data-store", "pod": "data-store-0", "defaultPolicy": default_policy,
            "clusterNetworks": ["10.0.0.0/8", "127.0.0.0/8"],
            "ports": [{"port": 8081, "server": "data-store-http", "proxyProtocol": "HTTP/1", "accessPolicy": null,
                "authorizations": [{"kind": "AuthorizationPolicy", "name": "api-only",
                    "authentication": {"identities": [{"exact": API}]}, "networks": [{"net": "0.0.0.0/0", "except": []}]}],
                "routes": []}]
        });
        Loaded::decode(json.to_string().as_bytes()).unwrap()
    }

    fn enforcer(loaded: Option<Loaded>) -> (Enforcer, Registry, PolicyTx) {
        let mut registry = Registry::default();
        let metrics = AuthzMetrics::register(&mut registry);
        let (tx, rx) = client::channel();
        tx.send_replace(loaded.map(Arc::new));
        (Enforcer::new(rx, metrics), registry, tx)
    }

    fn peer(port: u16, client_id: Option<&'static str>) -> Peer<'static> {
        let addr: SocketAddr = "127.1.0.3:40000".parse().unwrap();
        let tls = if client_id.is_some() { Tls::Established } else { Tls::NoTlsFromRemote };
        Peer { addr, target: SocketAddr::new("127.1.0.2".parse().unwrap(), port), tls, client_id, series: None }
    }

    fn get(content_type: Option<&str>) -> http::request::Parts {
        let mut request = http::Request::get("/data?x=1");
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn without_a_policy_inbound_fails_closed() {
        let (enforcer, _registry, tx) = enforcer(None);
        let denied = enforcer.check_http(&peer(8081, Some(API)), &get(None)).expect("denied");
        assert_eq!(denied.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(denied.headers()[crate::inbound::L5D_PROXY_ERROR], NO_POLICY_YET);
        assert!(!enforcer.allow_tcp(&peer(8081, Some(API))));
        assert!(!has_policy(&enforcer.policy));
        // The next request sees a policy that arrives.
        tx.send_replace(Some(Arc::new(policy("all-unauthenticated"))));
        assert!(has_policy(&enforcer.policy));
        assert!(enforcer.check_http(&peer(8081, Some(API)), &get(None)).is_none());
    }

    #[test]
    fn a_server_admits_only_its_authorized_identity_and_counts_both() {
        let (enforcer, registry, _tx) = enforcer(Some(policy("all-unauthenticated")));
        assert!(enforcer.check_http(&peer(8081, Some(API)), &get(None)).is_none());
        let denied = enforcer.check_http(&peer(8081, Some(OTHER)), &get(None)).expect("other is denied");
        assert_eq!(denied.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(denied.headers()[crate::inbound::L5D_PROXY_ERROR], "unauthorized request on route");
        let grpc = enforcer.check_http(&peer(8081, Some(OTHER)), &get(Some("application/grpc"))).expect("denied");
        assert_eq!(grpc.status(), http::StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        // A port no Server selects falls to the default policy.
        assert!(enforcer.check_http(&peer(9090, None), &get(None)).is_none());
        assert!(enforcer.allow_tcp(&peer(8081, Some(API))));
        assert!(!enforcer.allow_tcp(&peer(8081, None)));

        let text = text(&registry);
        let srv = r#"target_addr="127.1.0.2:8081",target_ip="127.1.0.2",target_port="8081",srv_group="policy.linkerd.io",srv_kind="server",srv_name="data-store-http""#;
        let route = r#"route_group="",route_kind="default",route_name="default""#;
        let authz = r#"authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-only""#;
        for line in [
            format!(r#"inbound_http_authz_allow_total{{{srv},{route},{authz},tls="true",client_id="{API}"}} 1"#),
            format!(r#"inbound_http_authz_deny_total{{{srv},{route},tls="true",client_id="{OTHER}"}} 2"#),
            format!(
                r#"inbound_http_authz_allow_total{{target_addr="127.1.0.2:9090",target_ip="127.1.0.2",target_port="9090",srv_group="",srv_kind="default",srv_name="all-unauthenticated",{route},authz_group="",authz_kind="default",authz_name="all-unauthenticated",tls="no_identity",no_tls_reason="no_tls_from_remote"}} 1"#
            ),
            format!(r#"inbound_tcp_authz_allow_total{{{srv},{authz},tls="true",client_id="{API}"}} 1"#),
            format!(r#"inbound_tcp_authz_deny_total{{{srv},tls="no_identity",no_tls_reason="no_tls_from_remote"}} 1"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    /// `inbound_http_authz_allow_total` of an API client on 8081 (a mTLS
    /// client) or of a plain-text client on 9090, under `srv`/`authz` labels.
    fn allowed_count(registry: &Registry, port: u16, srv: &str, authz: &str) -> u64 {
        let tls = if port == 8081 { format!(r#"tls="true",client_id="{API}""#) } else { r#"tls="no_identity",no_tls_reason="no_tls_from_remote""#.to_owned() };
        let prefix = format!(
            r#"inbound_http_authz_allow_total{{target_addr="127.1.0.2:{port}",target_ip="127.1.0.2",target_port="{port}",{srv},route_group="",route_kind="default",route_name="default",{authz},{tls}}} "#
        );
        text(registry).lines().find_map(|l| l.strip_prefix(&prefix).map(|n| n.parse().unwrap())).unwrap_or(0)
    }

    #[test]
    fn a_connections_cached_series_counts_where_a_fresh_look_up_would() {
        let (enforcer, registry, tx) = enforcer(Some(policy("all-unauthenticated")));
        let series = AllowedSeries::default();
        let on_conn = |port, id| Peer { series: Some(&series), ..peer(port, id) };
        let server = r#"srv_group="policy.linkerd.io",srv_kind="server",srv_name="data-store-http""#;
        let default_server = r#"srv_group="",srv_kind="default",srv_name="all-unauthenticated""#;
        let api_only = r#"authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-only""#;
        let default = r#"authz_group="",authz_kind="default",authz_name="all-unauthenticated""#;

        // The first request resolves the series, the next ones reuse it; a
        // request without the cache counts into the very same series.
        for _ in 0..3 {
            assert!(enforcer.check_http(&on_conn(8081, Some(API)), &get(None)).is_none());
        }
        assert!(enforcer.check_http(&peer(8081, Some(API)), &get(None)).is_none());
        assert_eq!(allowed_count(&registry, 8081, server, api_only), 4);
        // A denial on the connection neither counts as allowed nor evicts.
        assert!(enforcer.check_http(&on_conn(8081, Some(OTHER)), &get(None)).is_some());
        assert_eq!(allowed_count(&registry, 8081, server, api_only), 4);

        // Allowed another way (another port's default policy): its own series.
        assert!(enforcer.check_http(&on_conn(9090, None), &get(None)).is_none());
        assert_eq!(allowed_count(&registry, 9090, default_server, default), 1);
        assert_eq!(allowed_count(&registry, 8081, server, api_only), 4);

        // A new snapshot that allows the same way counts into the same labels.
        tx.send_replace(Some(Arc::new(policy("all-unauthenticated"))));
        assert!(enforcer.check_http(&on_conn(8081, Some(API)), &get(None)).is_none());
        assert!(enforcer.check_http(&on_conn(8081, Some(API)), &get(None)).is_none());
        assert_eq!(allowed_count(&registry, 8081, server, api_only), 6);

        // A snapshot without the Server: the default policy allows now, and
        // the cached series of the old snapshot is not used.
        let mut without_server = serde_json::to_value(&policy("all-unauthenticated").policy).unwrap();
        without_server["ports"] = serde_json::json!([]);
        tx.send_replace(Some(Arc::new(Loaded::decode(without_server.to_string().as_bytes()).unwrap())));
        assert!(enforcer.check_http(&on_conn(8081, Some(API)), &get(None)).is_none());
        assert_eq!(allowed_count(&registry, 8081, default_server, default), 1);
        assert_eq!(allowed_count(&registry, 8081, server, api_only), 6);
    }

    #[test]
    fn denials_and_audits_are_kept_newest_first_and_allowed_traffic_is_not() {
        let (enforcer, _registry, tx) = enforcer(Some(policy("all-unauthenticated")));
        let recent = enforcer.recent();
        assert!(enforcer.check_http(&peer(8081, Some(API)), &get(None)).is_none());
        assert!(enforcer.allow_tcp(&peer(8081, Some(API))));
        assert!(recent.snapshot().is_empty(), "allowed traffic records nothing");

        assert!(enforcer.check_http(&peer(8081, Some(OTHER)), &get(None)).is_some());
        assert!(!enforcer.allow_tcp(&peer(8081, None)));
        tx.send_replace(Some(Arc::new(policy("audit"))));
        assert!(enforcer.check_http(&peer(9090, None), &get(None)).is_none());

        let kept = recent.snapshot();
        assert_eq!(kept.len(), 3);
        let json = |d: &recent::Denial| {
            let mut v = serde_json::to_value(d).unwrap();
            assert!(v["at"].as_str().unwrap().ends_with('Z'), "{v}");
            v.as_object_mut().unwrap().remove("at");
            v
        };
        assert_eq!(
            json(&kept[0]),
            serde_json::json!({"protocol": "HTTP", "client": {"identity": null, "address": "127.1.0.3:40000"}, "port": 9090, "method": "GET", "path": "/data",
                "server": "default:audit", "authorization": "default/audit", "reason": "allowed by audit: would be denied (unauthorized request on route)", "verdict": "audit"})
        );
        assert_eq!(
            json(&kept[1]),
            serde_json::json!({"protocol": "TCP", "client": {"identity": null, "address": "127.1.0.3:40000"}, "port": 8081,
                "server": "data-store-http", "reason": "unauthorized connection on server/data-store-http", "verdict": "deny"})
        );
        assert_eq!(
            json(&kept[2]),
            serde_json::json!({"protocol": "HTTP", "client": {"identity": OTHER, "address": "127.1.0.3:40000"}, "port": 8081, "method": "GET", "path": "/data",
                "server": "data-store-http", "reason": "unauthorized request on route", "verdict": "deny"})
        );
    }

    #[test]
    fn without_a_policy_the_denial_says_so() {
        let (enforcer, _registry, _tx) = enforcer(None);
        assert!(!enforcer.allow_tcp(&peer(8081, Some(API))));
        let kept = enforcer.recent().snapshot();
        assert_eq!((kept[0].server.as_str(), kept[0].reason.as_str()), ("default:unknown", NO_POLICY_YET));
    }

    #[test]
    fn audit_allows_and_counts_a_would_be_denial() {
        let (enforcer, registry, _tx) = enforcer(Some(policy("audit")));
        // Port 9090 has no Server: the default `audit` lets an unauthenticated client through.
        assert!(enforcer.check_http(&peer(9090, None), &get(None)).is_none());
        assert!(enforcer.allow_tcp(&peer(9090, None)));
        let text = text(&registry);
        assert!(text.contains(r#"inbound_http_authz_would_deny_total{target_addr="127.1.0.2:9090""#), "{text}");
        assert!(text.contains(r#"inbound_tcp_authz_would_deny_total{target_addr="127.1.0.2:9090""#), "{text}");
        assert!(!text.contains("inbound_http_authz_deny_total{"), "{text}");
    }

    #[test]
    fn an_allowed_request_on_an_httproute_is_counted_with_the_route_and_its_authorization() {
        // Port 8082: Server `web` with HTTPRoute `get-data` (GET /data) whose
        // AuthorizationPolicy `route-api` admits the api; the fast path's cached
        // labels must be the ones the full path would build.
        let json = serde_json::json!({
            "namespace": "data-store", "pod": "data-store-0", "defaultPolicy": "deny", "clusterNetworks": [],
            "ports": [{"port": 8082, "server": "web", "proxyProtocol": "HTTP/1", "accessPolicy": "all-authenticated", "authorizations": [],
                "routes": [{"name": "get-data", "matches": [{"path": {"pathPrefix": "/data"}, "method": "GET"}],
                    "authorizations": [{"kind": "AuthorizationPolicy", "name": "route-api",
                        "authentication": {"identities": [{"exact": API}]}, "networks": [{"net": "0.0.0.0/0", "except": []}]}]}]}]
        });
        let (enforcer, registry, _tx) = enforcer(Some(Loaded::decode(json.to_string().as_bytes()).unwrap()));
        assert!(enforcer.check_http(&peer(8082, Some(API)), &get(None)).is_none());
        assert!(enforcer.check_http(&peer(8082, Some(API)), &get(None)).is_none());
        // The Server's accessPolicy admits a meshed connection (no route for TCP).
        assert!(enforcer.allow_tcp(&peer(8082, Some(OTHER))));
        let text = text(&registry);
        let srv = r#"target_addr="127.1.0.2:8082",target_ip="127.1.0.2",target_port="8082",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web""#;
        for line in [
            format!(
                r#"inbound_http_authz_allow_total{{{srv},route_group="policy.linkerd.io",route_kind="HTTPRoute",route_name="get-data",authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="route-api",tls="true",client_id="{API}"}} 2"#
            ),
            format!(r#"inbound_tcp_authz_allow_total{{{srv},authz_group="",authz_kind="default",authz_name="all-authenticated",tls="true",client_id="{OTHER}"}} 1"#),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn route_query_parameters_see_the_request_query() {
        // An HTTPRoute matching `?x=1` on port 8081: the request `/data?x=1`
        // must reach it (the query is part of what routes match).
        let json = serde_json::json!({
            "namespace": "data-store", "pod": "data-store-0", "defaultPolicy": "deny", "clusterNetworks": [],
            "ports": [{"port": 8081, "server": "s", "proxyProtocol": "HTTP/1", "accessPolicy": null, "authorizations": [],
                "routes": [{"name": "with-x", "matches": [{"path": {"pathPrefix": "/data"}, "queryParams": [{"name": "x", "value": {"exact": "1"}}]}],
                    "authorizations": [{"kind": "AuthorizationPolicy", "name": "all",
                        "authentication": "unauthenticated", "networks": [{"net": "0.0.0.0/0", "except": []}]}]}]}]
        });
        let (enforcer, _registry, _tx) = enforcer(Some(Loaded::decode(json.to_string().as_bytes()).unwrap()));
        assert!(enforcer.check_http(&peer(8081, None), &get(None)).is_none());
        let other = http::Request::get("/data?x=2").body(()).unwrap().into_parts().0;
        let denied = enforcer.check_http(&peer(8081, None), &other).expect("no route");
        assert_eq!(denied.status(), http::StatusCode::NOT_FOUND);
    }
}
