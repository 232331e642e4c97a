//! The timeline as Prometheus gauges on the server's `/metrics` (what
//! `docs/alerts.yaml` alerts on). Series of items that disappeared are
//! removed, so a deleted Secret or pod stops being reported.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Timeline;
use super::item::Kind;

/// Labels of the per-item gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemLabels {
    /// `trust-anchor`, `issuer`, `proxy-leaf`, …
    pub kind: String,
    /// The item's name.
    pub name: String,
    /// Its namespace (empty for none).
    pub namespace: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The expiry gauges.
#[derive(Clone, Default)]
pub struct Gauges {
    expiry: Family<ItemLabels, F64Gauge>,
    lifetime: Family<ItemLabels, F64Gauge>,
    legacy_tokens: Gauge,
    last_refresh: F64Gauge,
    /// Label sets currently exported (to remove stale ones).
    exported: Arc<Mutex<HashSet<ItemLabels>>>,
}

impl Gauges {
    /// Registers the gauges.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tessera_expiry_timestamp_seconds",
            "When each certificate or key on the expiry timeline expires (unix seconds)",
            self.expiry.clone(),
        );
        registry.register(
            "tessera_expiry_lifetime_seconds",
            "Full validity of each certificate on the expiry timeline (proxy leaves whose start is unknown: the configured issuance lifetime)",
            self.lifetime.clone(),
        );
        registry.register(
            "tessera_legacy_token_secrets",
            "Number of kubernetes.io/service-account-token Secrets (tokens that never expire)",
            self.legacy_tokens.clone(),
        );
        registry.register(
            "tessera_expiry_last_refresh_timestamp_seconds",
            "When the expiry timeline behind these gauges was last computed (unix seconds)",
            self.last_refresh.clone(),
        );
    }

    /// Sets the gauges to `timeline` (leaf lifetime assumed when its start is unknown).
    pub fn update(&self, timeline: &Timeline, leaf_lifetime: std::time::Duration) {
        let mut current = HashSet::new();
        for item in &timeline.items {
            let Some(not_after) = item.not_after else { continue };
            let labels = ItemLabels {
                kind: item.kind.as_str().to_owned(),
                name: item.name.clone(),
                namespace: item.namespace.clone().unwrap_or_default(),
            };
            self.expiry.get_or_create(&labels).set(not_after.as_second() as f64);
            let lifetime = match item.not_before {
                Some(nb) => (not_after.as_second() - nb.as_second()) as f64,
                None if item.kind == Kind::ProxyLeaf => leaf_lifetime.as_secs_f64(),
                None => f64::NAN,
            };
            if lifetime.is_finite() {
                self.lifetime.get_or_create(&labels).set(lifetime);
            }
            current.insert(labels);
        }
        let legacy = timeline.items.iter().filter(|i| i.kind == Kind::LegacyToken).count();
        self.legacy_tokens.set(i64::try_from(legacy).unwrap_or(i64::MAX));
        if let Some(now) = timeline.now {
            self.last_refresh.set(now.as_second() as f64);
        }
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        for gone in exported.difference(&current) {
            self.expiry.remove(gone);
            self.lifetime.remove(gone);
        }
        *exported = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::item::Item;

    fn encode(gauges: &Gauges) -> String {
        let mut registry = Registry::default();
        gauges.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn items_become_series_and_leave_when_gone() {
        let gauges = Gauges::default();
        let at = |s| jiff::Timestamp::from_second(s).ok();
        let leaf = Item {
            namespace: Some("api".into()),
            not_after: at(1_800_000_000),
            ..Item::new(Kind::ProxyLeaf, "api-0", "o")
        };
        let anchor = Item {
            not_before: at(1_700_000_000),
            not_after: at(1_800_000_000),
            ..Item::new(Kind::TrustAnchor, "root", "o")
        };
        let token = Item {
            namespace: Some("api".into()),
            never_expires: true,
            ..Item::new(Kind::LegacyToken, "t", "o")
        };
        let day = std::time::Duration::from_secs(86400);
        gauges.update(
            &Timeline {
                items: vec![leaf.clone(), anchor, token],
                ..Timeline::default()
            },
            day,
        );
        let text = encode(&gauges);
        assert!(
            text.contains(r#"tessera_expiry_timestamp_seconds{kind="proxy-leaf",name="api-0",namespace="api"} 1800000000.0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tessera_expiry_lifetime_seconds{kind="proxy-leaf",name="api-0",namespace="api"} 86400.0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tessera_expiry_lifetime_seconds{kind="trust-anchor",name="root",namespace=""} 100000000.0"#),
            "{text}"
        );
        assert!(text.contains("tessera_legacy_token_secrets 1\n"), "{text}");
        gauges.update(
            &Timeline {
                items: vec![leaf],
                ..Timeline::default()
            },
            day,
        );
        let text = encode(&gauges);
        assert!(!text.contains("trust-anchor"), "{text}");
        assert!(text.contains("tessera_legacy_token_secrets 0\n"), "{text}");
    }
}
