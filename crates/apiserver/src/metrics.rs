//! Prometheus metrics for `/metrics`: request count and latency by verb,
//! resource and code, in kube-apiserver's metric names.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `apiserver_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb (upper-case like kube-apiserver: GET, LIST, WATCH, POST…).
    pub verb: String,
    /// Resource plural, empty for non-resource requests.
    pub resource: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels of `apiserver_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Kubernetes verb.
    pub verb: String,
    /// Resource plural.
    pub resource: String,
}

/// Labels of `apiserver_terminated_watchers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// Resource plural, with `.group` for named groups (kube's group-resource).
    pub resource: String,
}

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    terminated_watchers: Family<ResourceLabels, Counter>,
    /// The expiry timeline's gauges.
    pub expiry: crate::expiry::gauges::Gauges,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("apiserver_request", "Counter of apiserver requests broken out by verb, resource and HTTP response code", requests.clone());
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb and resource",
            latency.clone(),
        );
        let terminated_watchers = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "apiserver_terminated_watchers",
            "Counter of watchers closed due to unresponsiveness broken by resource type",
            terminated_watchers.clone(),
        );
        let expiry = crate::expiry::gauges::Gauges::default();
        expiry.register(&mut registry);
        Self { registry: Arc::new(registry), requests, latency, terminated_watchers, expiry }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, seconds: f64) {
        let verb = verb.to_uppercase();
        self.requests
            .get_or_create(&RequestLabels { verb: verb.clone(), resource: resource.to_owned(), code: code.to_string() })
            .inc();
        self.latency.get_or_create(&LatencyLabels { verb, resource: resource.to_owned() }).observe(seconds);
    }

    /// Counts a watch closed because its client stopped reading.
    pub fn watcher_terminated(&self, resource: &tessera_api::resource::ResourceInfo) {
        let resource = if resource.group.is_empty() {
            resource.plural.to_owned()
        } else {
            format!("{}.{}", resource.plural, resource.group)
        };
        self.terminated_watchers.get_or_create(&ResourceLabels { resource }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_verb_resource_code() {
        let m = Metrics::default();
        m.observe("list", "serviceaccounts", 200, 0.001);
        m.observe("list", "serviceaccounts", 200, 0.002);
        let text = m.encode();
        assert!(text.contains(r#"apiserver_request_total{verb="LIST",resource="serviceaccounts",code="200"} 2"#), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_bucket"), "{text}");
    }
}
