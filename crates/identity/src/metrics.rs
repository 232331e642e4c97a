//! Prometheus metrics of the identity CA, served on the admin port's
//! `/metrics`: certificates issued by identity, rejections by reason, issuer
//! expiry and updates, Certify latency.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of `identity_certificates_issued_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    /// The identity the leaf was issued to.
    pub identity: String,
}

/// Label of `identity_certify_rejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A bounded reason (`missing_token`, `invalid_csr`, `identity_mismatch`…).
    pub reason: &'static str,
}

/// Label of `identity_issuer_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `updated` or `rejected`.
    pub result: &'static str,
}

/// The identity CA's metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    issued: Family<IdentityLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    issuer_expiry: Gauge,
    issuer_updates: Family<ResultLabel, Counter>,
    latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let issued = Family::<IdentityLabel, Counter>::default();
        let rejections = Family::<ReasonLabel, Counter>::default();
        let issuer_expiry = Gauge::default();
        let issuer_updates = Family::<ResultLabel, Counter>::default();
        let latency = Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        registry.register("identity_certificates_issued", "Leaf certificates issued, by identity", issued.clone());
        registry.register("identity_certify_rejections", "Certify requests refused, by reason", rejections.clone());
        registry.register(
            "identity_issuer_expiry_timestamp_seconds",
            "notAfter of the issuer certificate in use, as a Unix timestamp",
            issuer_expiry.clone(),
        );
        registry.register("identity_issuer_updates", "Issuer reloads, by result", issuer_updates.clone());
        registry.register("identity_certify_duration_seconds", "Certify latency in seconds (all outcomes)", latency.clone());
        Self { registry: Arc::new(registry), issued, rejections, issuer_expiry, issuer_updates, latency }
    }
}

impl Metrics {
    /// Records a leaf issued to `identity`.
    pub fn issued(&self, identity: &str) {
        self.issued.get_or_create(&IdentityLabel { identity: identity.to_owned() }).inc();
    }

    /// Records a refusal.
    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records how long one Certify call took.
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// Records a new issuer in use, expiring at `not_after` (Unix seconds).
    pub fn issuer_updated(&self, not_after: i64) {
        self.issuer_expiry.set(not_after);
        self.issuer_updates.get_or_create(&ResultLabel { result: "updated" }).inc();
    }

    /// Records a refused new issuer.
    pub fn issuer_rejected(&self) {
        self.issuer_updates.get_or_create(&ResultLabel { result: "rejected" }).inc();
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
    fn metrics_are_exposed_by_name() {
        let m = Metrics::default();
        m.issued("web.emojivoto.serviceaccount.identity.linkerd.cluster.local");
        m.rejected("missing_token");
        m.issuer_updated(1_900_000_000);
        m.observe_latency(0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"identity_certificates_issued_total{identity="web.emojivoto.serviceaccount.identity.linkerd.cluster.local"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"identity_certify_rejections_total{reason="missing_token"} 1"#), "{text}");
        assert!(text.contains("identity_issuer_expiry_timestamp_seconds 1900000000"), "{text}");
        assert!(text.contains(r#"identity_issuer_updates_total{result="updated"} 1"#), "{text}");
        assert!(text.contains("identity_certify_duration_seconds_count 1"), "{text}");
    }
}
