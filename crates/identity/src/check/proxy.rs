//! `tessera check --proxy`: the data-plane half of `linkerd check --proxy`.
//! Every meshed proxy (Running pods annotated `linkerd.io/inject: enabled`)
//! is read through the API's `pods/proxy` subresource (`GET /trust` on the
//! port of `tessera.io/proxy-admin-port`) and compared with the current
//! trust bundle and the announced issuer: its leaf is within its validity
//! period, it trusts exactly the current bundle, and its leaf comes from the
//! announced issuer (else its renewal is pending). The rotation state
//! (`tessera-identity-rotation`) is shown as well.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Category, Outcome, TIMEOUT};
use crate::pki::{self, TrustAnchors};
use crate::rotate::{self, ANNOTATION_ISSUER_FINGERPRINT, Cluster as _, KubeCluster, RotationState, Step};

/// The category name, as Linkerd's `linkerd-identity-data-plane`.
pub const CATEGORY: &str = "tessera-identity-data-plane";
const INJECT_ANNOTATION: &str = "linkerd.io/inject";
const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";

/// The check lines, in order.
pub const LINES: [&str; 5] = [
    "data plane proxies report their trust",
    "data plane proxies certificate are within their validity period",
    "data plane proxies trust the current trust bundle",
    "data plane proxies certificate match the current issuer",
    "no trust rotation is in progress",
];

/// A proxy's `GET /trust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Trust {
    /// Fingerprints of the anchors it trusts.
    pub anchors: Vec<String>,
    /// Its current leaf (None before the first certificate).
    pub leaf: Option<Leaf>,
}

/// The leaf part of `/trust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leaf {
    /// Its identity.
    pub identity: String,
    /// Its issuer's fingerprint.
    pub issuer: String,
    /// Its notAfter, RFC 3339.
    pub not_after: String,
}

/// One meshed proxy as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `namespace/pod`.
    pub name: String,
    /// Its `/trust`, or why it could not be read.
    pub trust: Result<Trust, String>,
    /// The pod's `tessera.io/leaf-issuer` (its agent's last report): set
    /// while `/trust` has no leaf means the proxy held one that expired
    /// (a proxy drops an expired leaf) and could not renew it.
    pub last_leaf_issuer: Option<String>,
}

/// What the control plane says is current.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    /// The bundle's fingerprints.
    pub bundle: Vec<String>,
    /// The bundle ConfigMap's `tessera.io/issuer-fingerprint`, if set.
    pub issuer: Option<String>,
    /// The rotation state, if any rotation ever ran.
    pub rotation: Option<RotationState>,
}

/// The data-plane checks on what was observed, as of `now`.
pub fn proxy_checks(current: &Current, proxies: &[Observed], now: OffsetDateTime) -> Category {
    let mut category = Category::new(CATEGORY);
    let unreadable: Vec<String> =
        proxies.iter().filter_map(|p| p.trust.as_ref().err().map(|e| format!("{}: /trust not readable: {e}", p.name))).collect();
    category.result(LINES[0], super::joined(unreadable));
    let read: Vec<(&str, &Trust)> = proxies.iter().filter_map(|p| p.trust.as_ref().ok().map(|t| (p.name.as_str(), t))).collect();

    let mut invalid = Vec::new();
    for proxy in proxies {
        let (name, Ok(trust)) = (&proxy.name, &proxy.trust) else { continue };
        match &trust.leaf {
            None => invalid.push(match &proxy.last_leaf_issuer {
                Some(issuer) => format!("{name}: its leaf certificate (from issuer {issuer}) expired and was not renewed"),
                None => format!("{name}: no leaf certificate yet"),
            }),
            Some(leaf) => match time::OffsetDateTime::parse(&leaf.not_after, &time::format_description::well_known::Rfc3339) {
                Ok(not_after) if not_after <= now => {
                    invalid.push(format!("{name}: leaf certificate {} expired at {}", leaf.identity, pki::rfc3339(not_after)));
                }
                Ok(_) => {}
                Err(e) => invalid.push(format!("{name}: leaf notAfter {:?}: {e}", leaf.not_after)),
            },
        }
    }
    category.result(LINES[1], super::joined(invalid));

    let want: BTreeSet<&str> = current.bundle.iter().map(String::as_str).collect();
    let stale: Vec<String> = read
        .iter()
        .filter(|(_, t)| t.anchors.iter().map(String::as_str).collect::<BTreeSet<_>>() != want)
        .map(|(name, t)| format!("{name} trusts [{}], the current bundle is [{}]", t.anchors.join(", "), current.bundle.join(", ")))
        .collect();
    category.result(LINES[2], super::joined(stale));

    let pending: Vec<String> = match &current.issuer {
        None => Vec::new(),
        Some(issuer) => read
            .iter()
            .filter_map(|(name, t)| {
                let leaf_issuer = t.leaf.as_ref().map(|l| l.issuer.as_str());
                (leaf_issuer.is_some_and(|i| i != issuer))
                    .then(|| format!("{name} holds a leaf from {}, the current issuer is {issuer}", leaf_issuer.unwrap_or_default()))
            })
            .collect(),
    };
    category.push(LINES[3], super::warn_if_any(pending));

    let rotation = match &current.rotation {
        Some(state) if state.step != Step::Done => Outcome::Warning(format!(
            "rotation {} is at {}: {} (see `tessera identity rotate --status`)",
            state.id,
            state.step,
            state.step.describe()
        )),
        _ => Outcome::Success,
    };
    category.push(LINES[4], rotation);
    category
}

/// Reads the bundle, the announced issuer, the rotation state and every
/// meshed proxy's `/trust`, then checks them.
pub async fn run(client: &kube::Client, anchors_pem: Result<Vec<u8>, String>, namespace: &str, now: OffsetDateTime) -> Category {
    let bundle = anchors_pem.and_then(|pem| TrustAnchors::from_pem(&pem).map_err(|e| e.to_string()));
    let bundle = match bundle {
        Ok(anchors) => anchors.certificates().iter().map(|c| rotate::fingerprint(c)).collect(),
        Err(e) => {
            let mut category = Category::new(CATEGORY);
            category.push(LINES[0], Outcome::Error(format!("the trust bundle: {e}")));
            return category;
        }
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let issuer = match tokio::time::timeout(TIMEOUT, config_maps.get_opt(rotate::BUNDLE_CONFIGMAP)).await {
        Ok(Ok(cm)) => cm.and_then(|cm| cm.metadata.annotations?.remove(ANNOTATION_ISSUER_FINGERPRINT)),
        _ => None,
    };
    let rotation = KubeCluster::new(client.clone(), namespace.to_owned(), None).load_state().await.ok().flatten();
    let current = Current { bundle, issuer, rotation };
    let pods: Api<Pod> = Api::all(client.clone());
    let list = match tokio::time::timeout(TIMEOUT, pods.list(&ListParams::default())).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => return failed(format!("listing pods: {e}")),
        Err(_) => return failed("listing pods: timed out".to_owned()),
    };
    let mut proxies = Vec::new();
    for pod in list.items {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if annotations.get(INJECT_ANNOTATION).map(String::as_str) != Some("enabled") || !running {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let trust = match annotations.get(ADMIN_PORT_ANNOTATION) {
            None => Err(format!("no {ADMIN_PORT_ANNOTATION} annotation")),
            Some(port) => read_trust(client, &namespace, &name, port).await,
        };
        let last_leaf_issuer = annotations.get(rotate::ANNOTATION_LEAF_ISSUER).filter(|v| !v.is_empty()).cloned();
        proxies.push(Observed { name: format!("{namespace}/{name}"), trust, last_leaf_issuer });
    }
    proxies.sort_by(|a, b| a.name.cmp(&b.name));
    proxy_checks(&current, &proxies, now)
}

fn failed(why: String) -> Category {
    let mut category = Category::new(CATEGORY);
    category.push(LINES[0], Outcome::Error(why));
    category
}

/// `GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/trust`.
async fn read_trust(client: &kube::Client, namespace: &str, name: &str, port: &str) -> Result<Trust, String> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy/trust");
    let request = axum::http::Request::get(&path).body(Vec::new()).map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_util::now;

    fn proxy(name: &str, anchors: &[&str], issuer: &str, not_after: OffsetDateTime) -> Observed {
        Observed {
            name: name.to_owned(),
            trust: Ok(Trust {
                anchors: anchors.iter().map(|a| (*a).to_owned()).collect(),
                leaf: Some(Leaf { identity: format!("{name}.id"), issuer: issuer.to_owned(), not_after: pki::rfc3339(not_after) }),
            }),
            last_leaf_issuer: Some(issuer.to_owned()),
        }
    }

    fn current() -> Current {
        Current { bundle: vec!["sha256:a".to_owned()], issuer: Some("sha256:i".to_owned()), rotation: None }
    }

    fn outcomes(c: &Category) -> Vec<&Outcome> {
        c.checks.iter().map(|l| &l.outcome).collect()
    }

    #[test]
    fn a_healthy_mesh_passes() {
        let later = now() + Duration::from_secs(3600);
        let c = proxy_checks(&current(), &[proxy("a/a-0", &["sha256:a"], "sha256:i", later)], now());
        assert_eq!(c.checks.iter().map(|l| l.description.as_str()).collect::<Vec<_>>(), LINES);
        assert!(outcomes(&c).iter().all(|o| **o == Outcome::Success), "{c:?}");
    }

    #[test]
    fn an_expired_leaf_and_a_stale_bundle_fail_naming_the_proxy() {
        let later = now() + Duration::from_secs(3600);
        let earlier = now() - Duration::from_secs(1);
        let proxies = [
            proxy("a/a-0", &["sha256:a"], "sha256:i", later),
            proxy("b/b-0", &["sha256:a"], "sha256:i", earlier),
            proxy("c/c-0", &["sha256:old"], "sha256:old-issuer", later),
            Observed { name: "d/d-0".to_owned(), trust: Err("connection refused".to_owned()), last_leaf_issuer: None },
            Observed {
                name: "e/e-0".to_owned(),
                trust: Ok(Trust { anchors: vec!["sha256:a".to_owned()], leaf: None }),
                last_leaf_issuer: Some("sha256:i".to_owned()),
            },
            Observed {
                name: "f/f-0".to_owned(),
                trust: Ok(Trust { anchors: vec!["sha256:a".to_owned()], leaf: None }),
                last_leaf_issuer: None,
            },
        ];
        let c = proxy_checks(&current(), &proxies, now());
        assert_eq!(c.checks[0].outcome, Outcome::Error("d/d-0: /trust not readable: connection refused".to_owned()));
        assert_eq!(
            c.checks[1].outcome,
            Outcome::Error(format!(
                "b/b-0: leaf certificate b/b-0.id expired at {}\n\
                 e/e-0: its leaf certificate (from issuer sha256:i) expired and was not renewed\n\
                 f/f-0: no leaf certificate yet",
                pki::rfc3339(earlier)
            ))
        );
        assert_eq!(c.checks[2].outcome, Outcome::Error("c/c-0 trusts [sha256:old], the current bundle is [sha256:a]".to_owned()));
        assert_eq!(
            c.checks[3].outcome,
            Outcome::Warning("c/c-0 holds a leaf from sha256:old-issuer, the current issuer is sha256:i".to_owned())
        );
        assert_eq!(c.checks[4].outcome, Outcome::Success);
    }

    #[test]
    fn a_bundle_in_another_order_is_the_same_bundle() {
        let mut cur = current();
        cur.bundle = vec!["sha256:a".to_owned(), "sha256:b".to_owned()];
        let c = proxy_checks(&cur, &[proxy("a/a-0", &["sha256:b", "sha256:a"], "sha256:i", now() + Duration::from_secs(60))], now());
        assert_eq!(c.checks[2].outcome, Outcome::Success);
    }
}
