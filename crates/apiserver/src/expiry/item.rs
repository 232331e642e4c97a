//! One timeline entry and the warning rules. Shared with `tessera expiry`,
//! which adds what only the client sees (its kubeconfig's certificate) with
//! the same rules.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The server's HTTPS certificate.
    ServingCertificate,
    /// The cluster CA: signs the serving certificate, verifies client certificates.
    ClientCa,
    /// A ServiceAccount token signing key.
    SigningKey,
    /// A `kubernetes.io/service-account-token` Secret: a token that never expires.
    LegacyToken,
    /// A mesh trust anchor from the bundle ConfigMap.
    TrustAnchor,
    /// The mesh identity issuer.
    Issuer,
    /// A meshed proxy's leaf certificate.
    ProxyLeaf,
    /// The client certificate of the caller's kubeconfig (added by the CLI).
    ClientCertificate,
    /// A kind this build does not know (from a newer server).
    #[serde(other)]
    Other,
}

impl Kind {
    /// The serde name (`trust-anchor`, …), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServingCertificate => "serving-certificate",
            Self::ClientCa => "client-ca",
            Self::SigningKey => "signing-key",
            Self::LegacyToken => "legacy-token",
            Self::TrustAnchor => "trust-anchor",
            Self::Issuer => "issuer",
            Self::ProxyLeaf => "proxy-leaf",
            Self::ClientCertificate => "client-certificate",
            Self::Other => "other",
        }
    }

    /// Whether the past-80 %-of-lifetime rule applies (certificates renewed
    /// automatically); the others are rotated by hand and warn a fixed time ahead.
    fn renewed_automatically(self) -> bool {
        matches!(self, Self::ProxyLeaf)
    }
}

/// One thing that expires (or, worse, never does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// Its name (certificate subject, Secret, pod or key id).
    pub name: String,
    /// Namespace of the object it lives in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Who looks after it (who renews or rotates it).
    pub owner: String,
    /// Start of validity, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// End of validity, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// Age, for what is judged by age (signing keys, legacy tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<i64>,
    /// It never expires (legacy tokens, the signing key in use).
    pub never_expires: bool,
    /// `sha256:` + hex of the certificate DER, for certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why it needs attention, if it does.
    #[serde(default)]
    pub warning: Option<String>,
}

/// The warning thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Certificates rotated by hand (anchors, issuer, CA, serving and client
    /// certificates) warn this long before expiry: `tessera check`'s 60 days
    /// (`tessera_identity::check::WARN_WITHIN`, which the CLI passes in).
    pub warn_within: Duration,
    /// Automatically renewed leaves warn past this fraction of their
    /// lifetime. Proxies renew at 70 % (Linkerd's rule), so a healthy leaf
    /// never passes it; past it, renewal has been failing for a tenth of the
    /// lifetime (2.4 h of a 24 h leaf).
    pub leaf_warn_fraction: f64,
    /// The signing key in use warns once it is older than this.
    pub signing_key_rotation_age: Duration,
    /// Lifetime assumed for a proxy leaf whose start is unknown (its metrics
    /// give only the expiry): the identity CA's `--issuance-lifetime`.
    pub leaf_lifetime: Duration,
}

/// `tessera check`'s threshold (the CLI sets it from `tessera_identity::check::WARN_WITHIN`;
/// this crate may not depend on the identity CA).
pub const DEFAULT_WARN_WITHIN: Duration = Duration::from_secs(60 * 86400);
/// Linkerd's (and `tessera identity`'s) default leaf lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Where a proxy leaf is overdue: proxies renew at 70 % of the lifetime.
pub const LEAF_WARN_FRACTION: f64 = 0.8;
/// A common key rotation period (kube has none; tessera rotates with `tessera server keys rotate`).
pub const DEFAULT_SIGNING_KEY_ROTATION_AGE: Duration = Duration::from_secs(90 * 86400);

impl Default for Rules {
    fn default() -> Self {
        Self {
            warn_within: DEFAULT_WARN_WITHIN,
            leaf_warn_fraction: LEAF_WARN_FRACTION,
            signing_key_rotation_age: DEFAULT_SIGNING_KEY_ROTATION_AGE,
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
        }
    }
}

/// `3d4h`, `5h12m`, `40s`: the two largest units.
pub fn human(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m{}s", s % 60),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

impl Item {
    /// An item with nothing but its identity.
    pub fn new(kind: Kind, name: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            namespace: None,
            owner: owner.into(),
            not_before: None,
            not_after: None,
            age_seconds: None,
            never_expires: false,
            fingerprint: None,
            warning: None,
        }
    }

    /// Sets the warning the rules give at `now` (unix seconds). Items whose
    /// warning is not about dates (legacy tokens, unreadable proxies) keep theirs.
    pub fn judge(mut self, rules: &Rules, now: i64) -> Self {
        if self.warning.is_some() {
            return self;
        }
        let Some(not_after) = self.not_after.map(Timestamp::as_second) else {
            if self.kind == Kind::SigningKey
                && let Some(age) = self.age_seconds
                && age > secs(rules.signing_key_rotation_age)
            {
                self.warning = Some(format!(
                    "signs tokens for {}, longer than the rotation age of {}: run `tessera server keys rotate`",
                    human(age),
                    human(secs(rules.signing_key_rotation_age))
                ));
            }
            return self;
        };
        let left = not_after - now;
        if left <= 0 {
            self.warning = Some(format!("expired {} ago", human(left)));
            return self;
        }
        if self.kind.renewed_automatically() {
            let lifetime = match self.not_before {
                Some(nb) => not_after - nb.as_second(),
                None => secs(rules.leaf_lifetime),
            };
            let used = 1.0 - left as f64 / lifetime.max(1) as f64;
            if used > rules.leaf_warn_fraction {
                self.warning = Some(format!(
                    "past {:.0} % of its {} lifetime ({} left): not renewed yet",
                    rules.leaf_warn_fraction * 100.0,
                    human(lifetime),
                    human(left)
                ));
            }
        } else if self.kind != Kind::SigningKey && left < secs(rules.warn_within) {
            self.warning = Some(format!("expires within {} ({} left)", human(secs(rules.warn_within)), human(left)));
        }
        self
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.not_after.is_some_and(|t| t.as_second() <= now)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Timeline order: soonest expiry first; then what has no end date (never
/// expiring last, oldest first), each group by kind, namespace and name.
pub fn sort(items: &mut [Item]) {
    items.sort_by(|a, b| {
        let key = |i: &Item| {
            (
                i.not_after.is_none(),
                i.not_after,
                std::cmp::Reverse(i.age_seconds),
                i.kind,
                i.namespace.clone(),
                i.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86400;

    fn at(offset: i64) -> Option<Timestamp> {
        Timestamp::from_second(NOW + offset).ok()
    }

    fn cert(kind: Kind, not_before: i64, not_after: i64) -> Item {
        Item {
            not_before: at(not_before),
            not_after: at(not_after),
            ..Item::new(kind, "x", "o")
        }
        .judge(&Rules::default(), NOW)
    }

    #[test]
    fn anchors_and_issuers_warn_within_60_days() {
        assert_eq!(cert(Kind::TrustAnchor, -DAY, 61 * DAY).warning, None);
        assert_eq!(cert(Kind::Issuer, -DAY, 20 * DAY).warning.as_deref(), Some("expires within 60d0h (20d0h left)"));
        assert_eq!(
            cert(Kind::ServingCertificate, -DAY, 59 * DAY).warning.as_deref(),
            Some("expires within 60d0h (59d0h left)")
        );
        assert_eq!(cert(Kind::Issuer, -DAY, -3600).warning.as_deref(), Some("expired 1h0m ago"));
    }

    #[test]
    fn leaves_warn_only_once_renewal_is_overdue() {
        // 24 h leaf: proxies renew it at 70 % (16.8 h); healthy until 80 %.
        assert_eq!(cert(Kind::ProxyLeaf, -13 * 3600, 11 * 3600).warning, None);
        assert_eq!(cert(Kind::ProxyLeaf, -18 * 3600, 6 * 3600).warning, None);
        let w = cert(Kind::ProxyLeaf, -20 * 3600, 4 * 3600).warning;
        assert_eq!(w.as_deref(), Some("past 80 % of its 1d0h lifetime (4h0m left): not renewed yet"));
        // Start unknown: the configured leaf lifetime (24 h) is assumed.
        let unknown = |left| {
            Item {
                not_after: at(left),
                ..Item::new(Kind::ProxyLeaf, "p", "o")
            }
            .judge(&Rules::default(), NOW)
        };
        assert_eq!(unknown(6 * 3600).warning, None);
        assert!(unknown(4 * 3600).warning.is_some());
    }

    #[test]
    fn signing_keys_warn_past_the_rotation_age_only() {
        let key = |age| {
            Item {
                age_seconds: Some(age),
                never_expires: true,
                ..Item::new(Kind::SigningKey, "k", "o")
            }
            .judge(&Rules::default(), NOW)
        };
        assert_eq!(key(89 * DAY).warning, None);
        assert_eq!(
            key(91 * DAY).warning.as_deref(),
            Some("signs tokens for 91d0h, longer than the rotation age of 90d0h: run `tessera server keys rotate`")
        );
        // A retired key's end date is information, not a warning.
        assert_eq!(cert(Kind::SigningKey, -DAY, 3600).warning, None);
    }

    #[test]
    fn timeline_is_sorted_by_date_with_never_expiring_last() {
        let mut items = vec![
            Item {
                age_seconds: Some(10),
                never_expires: true,
                ..Item::new(Kind::LegacyToken, "young", "o")
            },
            cert(Kind::TrustAnchor, -DAY, 300 * DAY),
            Item {
                age_seconds: Some(99),
                never_expires: true,
                ..Item::new(Kind::LegacyToken, "old", "o")
            },
            cert(Kind::Issuer, -DAY, 20 * DAY),
        ];
        sort(&mut items);
        let order: Vec<(Kind, &str)> = items.iter().map(|i| (i.kind, i.name.as_str())).collect();
        assert_eq!(
            order,
            [
                (Kind::Issuer, "x"),
                (Kind::TrustAnchor, "x"),
                (Kind::LegacyToken, "old"),
                (Kind::LegacyToken, "young")
            ]
        );
    }

    #[test]
    fn json_shape() {
        let item = cert(Kind::TrustAnchor, -DAY, 20 * DAY);
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(v["kind"], "trust-anchor");
        assert_eq!(v["notAfter"], "2027-02-04T08:00:00Z");
        assert_eq!(v["neverExpires"], false);
        assert!(v.get("namespace").is_none());
        let back: Item = serde_json::from_value(v).unwrap();
        assert_eq!(back, item);
        let unknown: Item = serde_json::from_value(serde_json::json!({"kind": "future-thing", "name": "n", "owner": "o", "neverExpires": false})).unwrap();
        assert_eq!(unknown.kind, Kind::Other);
    }
}
