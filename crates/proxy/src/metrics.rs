//! The proxy's Prometheus metrics, named and labelled as linkerd2-proxy does
//! so existing queries, dashboards and `tessera edges` read them unchanged.
//!
//! Families (all carry `direction`, `target_addr`, `tls` and, as they apply,
//! `no_tls_reason`, `client_id` (inbound), `server_id` and `dst_*` (outbound)):
//! `request_total{authority}`, `response_total{authority,status_code,classification}`,
//! `response_latency_ms{authority,status_code}` (histogram), `tcp_open_total`,
//! `tcp_close_total`, `tcp_read_bytes_total`, `tcp_write_bytes_total`;
//! plus `identity_cert_expiration_timestamp_seconds` and
//! `identity_cert_refresh_count` (Linkerd's names) and tessera's
//! `identity_cert_refresh_failures_total`.
//!
//! Recording is cheap on the hot path: a connection builds its
//! [`PeerLabels`] once; [`Metrics::tcp_open`] returns a [`TcpConn`] that holds
//! the counters themselves (no map look-up per byte) and counts the close
//! when dropped; [`Metrics::request`] returns a [`RequestRecord`] that
//! records the response and its latency.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Which side of the proxy the traffic went through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Into the workload (public port → app).
    Inbound,
    /// Out of the workload (app → another workload).
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// The `tls` label (and `no_tls_reason` when it is not `true`), as
/// linkerd2-proxy spells them.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    /// Mutual TLS (or TLS) was established: `tls="true"`.
    Established,
    /// Inbound: the client did not start TLS (`no_tls_from_remote`).
    NoTlsFromRemote,
    /// Outbound: the destination is not meshed, discovery gave no identity
    /// (`not_provided_by_service_discovery`).
    NotProvidedByServiceDiscovery,
    /// Outbound: the proxy has no certificate (yet) to originate mTLS with
    /// (`no_identity_yet`; tessera's reason, Linkerd waits instead).
    NoIdentityYet,
}

impl Tls {
    pub(crate) fn value(self) -> &'static str {
        match self {
            Self::Established => "true",
            _ => "no_identity",
        }
    }

    pub(crate) fn reason(self) -> Option<&'static str> {
        match self {
            Self::Established => None,
            Self::NoTlsFromRemote => Some("no_tls_from_remote"),
            Self::NotProvidedByServiceDiscovery => Some("not_provided_by_service_discovery"),
            Self::NoIdentityYet => Some("no_identity_yet"),
        }
    }
}

/// `dst_*` labels of outbound traffic (from the destination API).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DstLabels {
    /// `dst_namespace`.
    pub namespace: Option<String>,
    /// `dst_pod`.
    pub pod: Option<String>,
    /// `dst_serviceaccount`.
    pub serviceaccount: Option<String>,
    /// `dst_service` (the Service name when the authority named one).
    pub service: Option<String>,
}

/// The labels of one connection; every family starts with these.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PeerLabels {
    /// `direction`.
    pub direction: Direction,
    /// `target_addr`: inbound, the address the client connected to; outbound,
    /// the endpoint's address.
    pub target_addr: String,
    /// `tls` / `no_tls_reason`.
    pub tls: Tls,
    /// `client_id` (inbound, when the client presented a certificate).
    pub client_id: Option<String>,
    /// `server_id` (outbound, the identity the endpoint was verified as).
    pub server_id: Option<String>,
    /// `dst_*` (outbound).
    pub dst: DstLabels,
}

impl PeerLabels {
    /// Inbound labels: `client_id` is `Some` for a verified client certificate.
    pub fn inbound(target_addr: impl Into<String>, tls: Tls, client_id: Option<String>) -> Self {
        Self { direction: Direction::Inbound, target_addr: target_addr.into(), tls, client_id, server_id: None, dst: DstLabels::default() }
    }

    /// Outbound labels.
    pub fn outbound(target_addr: impl Into<String>, tls: Tls, server_id: Option<String>, dst: DstLabels) -> Self {
        Self { direction: Direction::Outbound, target_addr: target_addr.into(), tls, client_id: None, server_id, dst }
    }
}

/// Writes one `key="value"` label.
fn label(encoder: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> fmt::Result {
    let mut label = encoder.encode_label();
    let mut key_encoder = label.encode_label_key()?;
    EncodeLabelKey::encode(&key, &mut key_encoder)?;
    let mut value_encoder = key_encoder.encode_label_value()?;
    EncodeLabelValue::encode(&value, &mut value_encoder)?;
    value_encoder.finish()
}

/// Absent labels are left out rather than written empty, as Linkerd does.
impl EncodeLabelSet for PeerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(encoder, "direction", self.direction.as_str())?;
        label(encoder, "target_addr", &self.target_addr)?;
        label(encoder, "tls", self.tls.value())?;
        let optional = [
            ("no_tls_reason", self.tls.reason()),
            ("client_id", self.client_id.as_deref()),
            ("server_id", self.server_id.as_deref()),
            ("dst_namespace", self.dst.namespace.as_deref()),
            ("dst_pod", self.dst.pod.as_deref()),
            ("dst_serviceaccount", self.dst.serviceaccount.as_deref()),
            ("dst_service", self.dst.service.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                label(encoder, key, value)?;
            }
        }
        Ok(())
    }
}

/// Labels of `request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    /// The connection's labels.
    pub peer: Arc<PeerLabels>,
    /// `authority`: the request's `:authority` / `Host`.
    pub authority: String,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.peer.encode(encoder)?;
        label(encoder, "authority", &self.authority)
    }
}

/// `classification` of a response, as Linkerd classifies: 5xx (or a
/// non-zero `grpc-status`) and errors without a response are failures.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    /// `success`.
    Success,
    /// `failure`.
    Failure,
}

impl Classification {
    /// Classifies an HTTP status (without gRPC information).
    pub fn from_status(status: u16) -> Self {
        if (500..600).contains(&status) { Self::Failure } else { Self::Success }
    }
}

/// Labels of `response_total` and `response_latency_ms`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ResponseLabels {
    request: RequestLabels,
    /// `None` when no response came (an error).
    status_code: Option<u16>,
    classification: Option<Classification>,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.request.encode(encoder)?;
        if let Some(status) = self.status_code {
            let mut buffer = String::with_capacity(3);
            let _ = write!(buffer, "{status}");
            label(encoder, "status_code", &buffer)?;
        }
        if let Some(classification) = self.classification {
            let value = match classification {
                Classification::Success => "success",
                Classification::Failure => "failure",
            };
            label(encoder, "classification", value)?;
        }
        Ok(())
    }
}

/// A counter exported without the OpenMetrics `_total` suffix, for
/// Linkerd's `identity_cert_refresh_count` (type `unknown`, so the sample
/// keeps exactly Linkerd's name).
#[derive(Debug, Default, Clone)]
pub struct PlainCounter(Arc<AtomicU64>);

impl PlainCounter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        encoder.encode_gauge(&(self.get() as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// Latency buckets in milliseconds (linkerd2-proxy's).
const LATENCY_BUCKETS_MS: [f64; 19] =
    [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0];

struct Families {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<ResponseLabels, Histogram>,
    tcp_open: Family<ConnKey, Counter>,
    tcp_close: Family<ConnKey, Counter>,
    tcp_read: Family<ConnKey, Counter>,
    tcp_write: Family<ConnKey, Counter>,
    cert_expiry: Gauge,
    cert_refreshes: PlainCounter,
    cert_refresh_failures: Counter,
}

/// All the proxy's metrics (cheap to clone; one per process).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    families: Arc<Families>,
    /// Inbound authorization (policy) families.
    authz: crate::policy::metrics::AuthzMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection's labels, shared by its four TCP families without copying.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ConnKey(Arc<PeerLabels>);

impl EncodeLabelSet for ConnKey {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.0.encode(encoder)
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let families = Families {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(new_latency_histogram),
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            tcp_read: Family::default(),
            tcp_write: Family::default(),
            cert_expiry: Gauge::default(),
            cert_refreshes: PlainCounter::default(),
            cert_refresh_failures: Counter::default(),
        };
        registry.register("request", "Total count of HTTP requests", families.requests.clone());
        registry.register("response", "Total count of HTTP responses", families.responses.clone());
        registry.register(
            "response_latency_ms",
            "Elapsed times between a request's headers being received and its response stream completing",
            families.latency.clone(),
        );
        registry.register("tcp_open", "Total count of opened connections", families.tcp_open.clone());
        registry.register("tcp_close", "Total count of closed connections", families.tcp_close.clone());
        registry.register("tcp_read_bytes", "Total count of bytes read from peers", families.tcp_read.clone());
        registry.register("tcp_write_bytes", "Total count of bytes written to peers", families.tcp_write.clone());
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Time when the this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch)",
            families.cert_expiry.clone(),
        );
        registry.register(
            "identity_cert_refresh_count",
            "The total number of times this proxy's mTLS identity certificate has been refreshed by the Identity service",
            families.cert_refreshes.clone(),
        );
        registry.register(
            "identity_cert_refresh_failures",
            "Certify calls that failed (the proxy retries with backoff)",
            families.cert_refresh_failures.clone(),
        );
        let authz = crate::policy::metrics::AuthzMetrics::register(&mut registry);
        Self { registry: Arc::new(registry), families: Arc::new(families), authz }
    }

    /// The inbound authorization families.
    pub fn authz(&self) -> &crate::policy::metrics::AuthzMetrics {
        &self.authz
    }

    /// The Prometheus text exposition (OpenMetrics, as prometheus-client writes it).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding metrics");
        }
        out
    }

    /// Counts a connection opened; the returned handle counts bytes and, when
    /// dropped, the close.
    pub fn tcp_open(&self, labels: PeerLabels) -> TcpConn {
        let key = ConnKey(Arc::new(labels));
        let f = &self.families;
        f.tcp_open.get_or_create(&key).inc();
        TcpConn {
            read: f.tcp_read.get_or_create(&key).clone(),
            write: f.tcp_write.get_or_create(&key).clone(),
            close: f.tcp_close.get_or_create(&key).clone(),
            labels: key.0,
        }
    }

    /// Counts a request; record its outcome on the returned value. (A
    /// connection serving many requests to one authority resolves a
    /// [`RouteMetrics`] once with [`Metrics::route`] instead.)
    pub fn request(&self, peer: Arc<PeerLabels>, authority: impl Into<String>) -> RequestRecord {
        self.route(peer, authority).request()
    }

    /// The counters of requests with these labels, looked up once: each
    /// [`RouteMetrics::request`] then costs an atomic increment, and each
    /// response an atomic increment and a histogram observation, without
    /// hashing the label set again.
    pub fn route(&self, peer: Arc<PeerLabels>, authority: impl Into<String>) -> Arc<RouteMetrics> {
        let labels = RequestLabels { peer, authority: authority.into() };
        let requests = self.families.requests.get_or_create(&labels).clone();
        Arc::new(RouteMetrics { metrics: self.clone(), labels, requests, responses: Mutex::new(Vec::new()) })
    }

    /// A new certificate arrived (Linkerd counts every successful refresh, the
    /// first one included).
    pub fn cert_refreshed(&self, not_after: SystemTime) {
        self.families.cert_refreshes.inc();
        self.set_cert_expiry(Some(not_after));
    }

    /// Sets (or, with `None`, clears to 0) the expiry gauge.
    pub fn set_cert_expiry(&self, not_after: Option<SystemTime>) {
        let seconds = not_after.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        self.families.cert_expiry.set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// A Certify call failed.
    pub fn cert_refresh_failed(&self) {
        self.families.cert_refresh_failures.inc();
    }

    /// `identity_cert_refresh_count` (for tests and logs).
    pub fn cert_refresh_count(&self) -> u64 {
        self.families.cert_refreshes.get()
    }
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// One open connection's counters; counts `tcp_close_total` when dropped.
#[derive(Debug)]
pub struct TcpConn {
    labels: Arc<PeerLabels>,
    read: Counter,
    write: Counter,
    close: Counter,
}

impl TcpConn {
    /// The connection's labels (to build request labels from).
    pub fn labels(&self) -> &Arc<PeerLabels> {
        &self.labels
    }

    /// Bytes read from the peer.
    pub fn read(&self, bytes: u64) {
        self.read.inc_by(bytes);
    }

    /// Bytes written to the peer.
    pub fn wrote(&self, bytes: u64) {
        self.write.inc_by(bytes);
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.close.inc();
    }
}

/// Most distinct (status, classification) pairs a [`RouteMetrics`] keeps
/// handles for; rarer ones are looked up in the families each time.
const MAX_CACHED_RESPONSES: usize = 16;

/// The request counters of one label set (a connection's labels and an
/// authority), resolved once (see [`Metrics::route`]).
pub struct RouteMetrics {
    metrics: Metrics,
    labels: RequestLabels,
    requests: Counter,
    /// (status, classification) → `response_total` counter and the status's
    /// `response_latency_ms` histogram, filled on first use.
    responses: Mutex<Vec<ResponseSeries>>,
}

/// One `response_total` series of a route and its status's histogram.
type ResponseSeries = (Option<u16>, Classification, Counter, Histogram);

impl fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMetrics").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// Counts a request; record its outcome on the returned value.
    pub fn request(self: &Arc<Self>) -> RequestRecord {
        self.requests.inc();
        RequestRecord { route: Some(self.clone()), start: Instant::now() }
    }

    /// The `authority` label.
    pub fn authority(&self) -> &str {
        &self.labels.authority
    }

    /// The connection's labels.
    pub fn peer(&self) -> &Arc<PeerLabels> {
        &self.labels.peer
    }

    fn record(&self, status_code: Option<u16>, classification: Classification, elapsed_ms: f64) {
        let mut cached = self.responses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, counter, histogram)) = cached.iter().find(|(s, c, _, _)| *s == status_code && *c == classification) {
            counter.inc();
            histogram.observe(elapsed_ms);
            return;
        }
        let f = &self.metrics.families;
        let latency = ResponseLabels { request: self.labels.clone(), status_code, classification: None };
        let histogram = f.latency.get_or_create(&latency).clone();
        let response = ResponseLabels { request: self.labels.clone(), status_code, classification: Some(classification) };
        let counter = f.responses.get_or_create(&response).clone();
        counter.inc();
        histogram.observe(elapsed_ms);
        if cached.len() < MAX_CACHED_RESPONSES {
            cached.push((status_code, classification, counter, histogram));
        }
    }
}

/// A request in flight; record the response with [`RequestRecord::response`]
/// or the failure with [`RequestRecord::error`] (dropping it records nothing).
#[derive(Debug)]
pub struct RequestRecord {
    route: Option<Arc<RouteMetrics>>,
    start: Instant,
}

impl RequestRecord {
    /// The response headers arrived with `status`.
    pub fn response(mut self, status: u16) {
        self.finish(Some(status), Classification::from_status(status));
    }

    /// The response headers arrived with `status`, classified by the caller
    /// (e.g. from `grpc-status`).
    pub fn response_classified(mut self, status: u16, classification: Classification) {
        self.finish(Some(status), classification);
    }

    /// No response (connect error, reset…): a failure without a status code.
    pub fn error(mut self) {
        self.finish(None, Classification::Failure);
    }

    fn finish(&mut self, status_code: Option<u16>, classification: Classification) {
        let Some(route) = self.route.take() else { return };
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        route.record(status_code, classification, elapsed_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_linkerd_names_and_labels() {
        let metrics = Metrics::new();
        let peer =
            PeerLabels::inbound("127.1.0.2:8080", Tls::Established, Some("web.ns.serviceaccount.identity.linkerd.cluster.local".into()));
        let conn = metrics.tcp_open(peer);
        conn.read(10);
        conn.wrote(20);
        metrics.request(conn.labels().clone(), "data-store:8080").response(200);
        metrics.request(conn.labels().clone(), "data-store:8080").response(503);
        metrics.request(conn.labels().clone(), "data-store:8080").error();
        drop(conn);
        let plain = metrics.tcp_open(PeerLabels::inbound("127.1.0.2:8080", Tls::NoTlsFromRemote, None));
        drop(plain);
        metrics.cert_refreshed(UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
        let text = metrics.encode();
        let peer = r#"direction="inbound",target_addr="127.1.0.2:8080",tls="true",client_id="web.ns.serviceaccount.identity.linkerd.cluster.local""#;
        for line in [
            format!("request_total{{{peer},authority=\"data-store:8080\"}} 3"),
            format!("response_total{{{peer},authority=\"data-store:8080\",status_code=\"200\",classification=\"success\"}} 1"),
            format!("response_total{{{peer},authority=\"data-store:8080\",status_code=\"503\",classification=\"failure\"}} 1"),
            format!("response_total{{{peer},authority=\"data-store:8080\",classification=\"failure\"}} 1"),
            format!("response_latency_ms_count{{{peer},authority=\"data-store:8080\",status_code=\"200\"}} 1"),
            format!("tcp_open_total{{{peer}}} 1"),
            format!("tcp_close_total{{{peer}}} 1"),
            format!("tcp_read_bytes_total{{{peer}}} 10"),
            format!("tcp_write_bytes_total{{{peer}}} 20"),
            r#"tcp_open_total{direction="inbound",target_addr="127.1.0.2:8080",tls="no_identity",no_tls_reason="no_tls_from_remote"} 1"#
                .to_owned(),
            "identity_cert_expiration_timestamp_seconds 1800000000".to_owned(),
            "identity_cert_refresh_count 1".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn a_resolved_route_counts_like_fresh_look_ups() {
        let metrics = Metrics::new();
        let conn = metrics.tcp_open(PeerLabels::inbound("127.1.0.2:8080", Tls::NoTlsFromRemote, None));
        let route = metrics.route(conn.labels().clone(), "web:80");
        for status in [200, 200, 404, 503] {
            route.request().response(status);
        }
        route.request().error();
        metrics.request(conn.labels().clone(), "web:80").response(200);
        let text = metrics.encode();
        let peer = r#"direction="inbound",target_addr="127.1.0.2:8080",tls="no_identity",no_tls_reason="no_tls_from_remote",authority="web:80""#;
        for line in [
            format!("request_total{{{peer}}} 6"),
            format!("response_total{{{peer},status_code=\"200\",classification=\"success\"}} 3"),
            format!("response_total{{{peer},status_code=\"404\",classification=\"success\"}} 1"),
            format!("response_total{{{peer},status_code=\"503\",classification=\"failure\"}} 1"),
            format!("response_total{{{peer},classification=\"failure\"}} 1"),
            format!("response_latency_ms_count{{{peer},status_code=\"200\"}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert_eq!(route.authority(), "web:80");
    }

    #[test]
    fn outbound_labels_name_the_destination() {
        let metrics = Metrics::new();
        let dst = DstLabels {
            namespace: Some("data-store".into()),
            pod: Some("data-store-7d9".into()),
            serviceaccount: Some("data-store".into()),
            service: None,
        };
        let conn = metrics.tcp_open(PeerLabels::outbound("127.1.0.2:8081", Tls::Established, Some("ds.id".into()), dst));
        drop(conn);
        let text = metrics.encode();
        let line = r#"tcp_open_total{direction="outbound",target_addr="127.1.0.2:8081",tls="true",server_id="ds.id",dst_namespace="data-store",dst_pod="data-store-7d9",dst_serviceaccount="data-store"} 1"#;
        assert!(text.lines().any(|l| l == line), "{text}");
    }
}
