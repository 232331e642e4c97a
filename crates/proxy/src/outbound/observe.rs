//! What the outbound side records, with linkerd2-proxy's label set.
//!
//! The outbound code calls this small interface; the Prometheus registry
//! (`metrics.rs`) implements it, and tests use [`Recorder`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::destination::Endpoint;

/// Labels of an outbound endpoint (linkerd2-proxy's outbound label set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DstLabels {
    /// The authority the app asked for (`NAME.NS.svc.cluster.local:PORT`).
    pub authority: String,
    /// The endpoint address connected to.
    pub target_addr: String,
    /// `true` for mTLS, `no_identity` for a plain-text endpoint.
    pub tls: &'static str,
    /// The endpoint's verified identity (empty for plain text).
    pub server_id: String,
    /// Endpoint pod namespace.
    pub dst_namespace: String,
    /// Endpoint pod name.
    pub dst_pod: String,
    /// Endpoint pod ServiceAccount.
    pub dst_serviceaccount: String,
}

impl DstLabels {
    /// Labels for an endpoint of an authority.
    pub fn new(authority: &str, ep: &Endpoint) -> Self {
        Self {
            authority: authority.to_owned(),
            target_addr: ep.address.to_string(),
            tls: if ep.identity.is_some() { "true" } else { "no_identity" },
            server_id: ep.identity.clone().unwrap_or_default(),
            dst_namespace: ep.namespace.clone().unwrap_or_default(),
            dst_pod: ep.pod.clone().unwrap_or_default(),
            dst_serviceaccount: ep.service_account.clone().unwrap_or_default(),
        }
    }

    /// Linkerd's label pairs, in its order (direction first).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("direction", "outbound".into()),
            ("authority", self.authority.clone()),
            ("target_addr", self.target_addr.clone()),
            ("tls", self.tls.into()),
            ("server_id", self.server_id.clone()),
            ("dst_namespace", self.dst_namespace.clone()),
            ("dst_pod", self.dst_pod.clone()),
            ("dst_serviceaccount", self.dst_serviceaccount.clone()),
        ]
    }
}

/// Linkerd's response classification: 5xx (or a proxy error) is a failure.
pub fn classify(status: u16) -> &'static str {
    if (500..600).contains(&status) { "failure" } else { "success" }
}

/// Sink for outbound request and connection events.
pub trait OutboundMetrics: Send + Sync + 'static {
    /// `request_total`.
    fn request(&self, dst: &DstLabels);
    /// `response_total{status_code,classification}` and `response_latency_ms`.
    fn response(&self, dst: &DstLabels, status: u16, latency: Duration);
    /// `tcp_open_total`; the returned handle counts bytes and records
    /// `tcp_close_total` when dropped.
    fn tcp_open(&self, dst: &DstLabels) -> Box<dyn TcpMetrics>;
}

/// Per-connection byte counters.
pub trait TcpMetrics: Send + Sync {
    /// `tcp_read_bytes_total` (bytes read from the endpoint).
    fn read(&self, n: u64);
    /// `tcp_write_bytes_total` (bytes written to the endpoint).
    fn write(&self, n: u64);
    /// `tcp_close_total` (called once, when the connection ends).
    fn close(&self);
}

/// Records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl OutboundMetrics for NoMetrics {
    fn request(&self, _: &DstLabels) {}
    fn response(&self, _: &DstLabels, _: u16, _: Duration) {}
    fn tcp_open(&self, _: &DstLabels) -> Box<dyn TcpMetrics> {
        Box::new(NoMetrics)
    }
}

impl TcpMetrics for NoMetrics {
    fn read(&self, _: u64) {}
    fn write(&self, _: u64) {}
    fn close(&self) {}
}

/// In-memory recorder for tests: every event with its labels.
#[derive(Debug, Default)]
pub struct Recorder {
    /// `(labels, status)` per response; status 0 for a request.
    pub events: Mutex<Vec<(DstLabels, u16)>>,
    /// Connections opened, with their byte counts.
    pub conns: Mutex<Vec<Arc<RecordedConn>>>,
}

/// One recorded connection.
#[derive(Debug)]
pub struct RecordedConn {
    /// Its labels.
    pub labels: DstLabels,
    /// Bytes read from the endpoint.
    pub read: AtomicU64,
    /// Bytes written to the endpoint.
    pub written: AtomicU64,
    /// Whether it closed.
    pub closed: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// Responses recorded so far: `(labels, status)`.
    pub fn responses(&self) -> Vec<(DstLabels, u16)> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|(_, s)| *s != 0).cloned().collect()
    }
    /// Requests recorded so far.
    pub fn requests(&self) -> Vec<DstLabels> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|(_, s)| *s == 0).map(|(l, _)| l.clone()).collect()
    }
    /// Connections opened so far.
    pub fn connections(&self) -> Vec<Arc<RecordedConn>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl OutboundMetrics for Arc<Recorder> {
    fn request(&self, dst: &DstLabels) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((dst.clone(), 0));
    }
    fn response(&self, dst: &DstLabels, status: u16, _: Duration) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push((dst.clone(), status));
    }
    fn tcp_open(&self, dst: &DstLabels) -> Box<dyn TcpMetrics> {
        let c = Arc::new(RecordedConn {
            labels: dst.clone(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closed: Default::default(),
        });
        self.conns.lock().unwrap_or_else(PoisonError::into_inner).push(c.clone());
        Box::new(c)
    }
}

impl TcpMetrics for Arc<RecordedConn> {
    fn read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }
    fn write(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
