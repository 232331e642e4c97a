//! `tessera check --proxy`: the data-plane half of `linkerd check --proxy`.
//!
//! Every meshed, Running pod (annotation `linkerd.io/inject: enabled` or a
//! `linkerd-proxy` container) is asked, through kube's `pods/proxy`
//! subresource with the caller's own credentials, for its proxy's `/trust`:
//! the anchors it trusts and its current leaf. These are compared with the
//! trust bundle the check read (the ConfigMap or file) and the issuer it
//! validated. Each failing line names the pods (`namespace/name`), as
//! Linkerd's data-plane checks do.

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Category, Outcome, TIMEOUT};
use crate::pki;
use crate::rotate::{Mode, RotationState, STATE_CONFIGMAP, STATE_KEY, Step, fingerprint};

const INJECT_ANNOTATION: &str = "linkerd.io/inject";
const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";
const DEFAULT_ADMIN_PORT: &str = "4191";
const PROXY_CONTAINER: &str = "linkerd-proxy";
const HINTS: &str = "https://linkerd.io/2/checks/#";
/// How long one proxy's `/trust` may take. Shorter than the API server's own
/// 5 s limit towards the proxy: the client retries that 503, so a proxy that
/// does not answer would otherwise hold the check for several rounds.
const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The line names, in order.
pub const REACHABLE: &str = "data plane proxies are reachable";
/// Every proxy trusts exactly the current bundle.
pub const MATCH_CA: &str = "data plane proxies certificate match CA";
/// Every proxy holds an unexpired leaf.
pub const VALIDITY: &str = "data plane proxies certificates are within their validity period";
/// Every leaf comes from the issuer the check validated against the bundle.
pub const ISSUER: &str = "data plane proxies certificates are issued by the current issuer";

/// No `tessera identity rotate` is between its first and last step.
pub const ROTATION: &str = "no trust rotation is in progress";

/// The body of a proxy's `GET /trust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrustReport {
    /// The anchors' fingerprints.
    pub anchors: Vec<String>,
    /// The current leaf; `None` before the first one and after it expired.
    pub leaf: Option<Leaf>,
}

/// A proxy's current leaf.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leaf {
    /// The identity it names.
    pub identity: String,
    /// Fingerprint of its issuer.
    pub issuer: Option<String>,
    /// RFC 3339.
    pub not_after: String,
}

/// One meshed pod and what its proxy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyReport {
    /// `namespace/name`.
    pub pod: String,
    /// `/trust`, or why it could not be read.
    pub trust: Result<TrustReport, String>,
}

/// What the proxies are compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The bundle's fingerprints, sorted (None when the bundle could not be read).
    pub anchors: Option<Vec<String>>,
    /// The issuer's fingerprint (None when it could not be read).
    pub issuer: Option<String>,
}

impl Expected {
    /// From the bundle PEM and the issuer certificate PEM the check read.
    pub fn new(bundle_pem: Option<&[u8]>, issuer_pem: Option<&[u8]>) -> Self {
        let fingerprints = |pem: &[u8]| pki::certificates_from_pem(pem).ok().map(|ders| ders.iter().map(|d| fingerprint(d)).collect::<Vec<_>>());
        let anchors = bundle_pem.and_then(fingerprints).filter(|a| !a.is_empty()).map(|mut a| {
            a.sort();
            a.dedup();
            a
        });
        let issuer = issuer_pem.and_then(fingerprints).and_then(|f| f.into_iter().next());
        Self { anchors, issuer }
    }
}

/// Lists the meshed pods and reads each proxy's `/trust`; the reports sorted by pod.
pub async fn gather(client: &kube::Client) -> Result<Vec<ProxyReport>, String> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = tokio::time::timeout(TIMEOUT, pods.list(&ListParams::default()))
        .await
        .map_err(|_| "listing pods: timed out".to_owned())?
        .map_err(|e| format!("listing pods: {e}"))?;
    let meshed: Vec<(String, String, String)> = list.items.iter().filter_map(meshed_pod).collect();
    let reads = meshed.iter().map(|(ns, name, port)| async move {
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/trust");
        let trust = match http::Request::get(&path).body(Vec::new()) {
            Ok(request) => match tokio::time::timeout(PROXY_TIMEOUT, client.request_text(request)).await {
                Ok(Ok(body)) => serde_json::from_str::<TrustReport>(&body).map_err(|e| format!("GET {path}: not a /trust report: {e}")),
                // The API server's Status message says why (kube's wording).
                Ok(Err(kube::Error::Api(status))) => Err(format!("GET {path}: {} {}", status.code, status.message)),
                Ok(Err(e)) => Err(format!("GET {path}: {e}")),
                Err(_) => Err(format!("GET {path}: no answer within {}", humantime::format_duration(PROXY_TIMEOUT))),
            },
            Err(e) => Err(format!("GET {path}: {e}")),
        };
        ProxyReport { pod: format!("{ns}/{name}"), trust }
    });
    let mut reports = join_all(reads).await;
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(reports)
}

/// The state `tessera identity rotate` keeps in the control namespace (None: never started).
pub async fn rotation(client: &kube::Client, namespace: &str) -> Result<Option<RotationState>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = format!("reading ConfigMap {namespace}/{STATE_CONFIGMAP}");
    let configmap = tokio::time::timeout(TIMEOUT, api.get_opt(STATE_CONFIGMAP))
        .await
        .map_err(|_| format!("{what}: timed out"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let Some(json) = configmap.and_then(|c| c.data).and_then(|mut d| d.remove(STATE_KEY)) else {
        return Ok(None);
    };
    serde_json::from_str(&json).map(Some).map_err(|e| format!("{what}: key {STATE_KEY}: {e}"))
}

/// `(namespace, name, admin port)` of a meshed, Running pod.
fn meshed_pod(pod: &Pod) -> Option<(String, String, String)> {
    let annotations = pod.metadata.annotations.as_ref();
    let injected = annotations.and_then(|a| a.get(INJECT_ANNOTATION)).is_some_and(|v| v == "enabled");
    let has_proxy = pod.spec.as_ref().is_some_and(|s| s.containers.iter().any(|c| c.name == PROXY_CONTAINER));
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !(injected || has_proxy) || !running {
        return None;
    }
    let port = annotations.and_then(|a| a.get(ADMIN_PORT_ANNOTATION)).map_or(DEFAULT_ADMIN_PORT, String::as_str);
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?, port.to_owned()))
}

/// The data-plane categories from the gathered reports (or why there are none).
pub fn checks(
    reports: Result<Vec<ProxyReport>, String>,
    rotation: Result<Option<RotationState>, String>,
    expected: &Expected,
    now: OffsetDateTime,
) -> Vec<Category> {
    let mut plane = Category::new("tessera-data-plane");
    let mut identity = Category::new("tessera-identity-data-plane");
    let reports = match reports {
        Ok(r) => r,
        Err(e) => {
            plane.push(REACHABLE, Outcome::Error(e));
            return vec![plane];
        }
    };
    if reports.is_empty() {
        plane.push(REACHABLE, Outcome::Warning("no meshed pods found".to_owned()));
        return vec![plane];
    }
    let unreachable: Vec<String> = reports.iter().filter_map(|r| r.trust.as_ref().err().map(|e| format!("* {}: {e}", r.pod))).collect();
    plane.push(REACHABLE, listed("Some proxies cannot be reached:", unreachable, "l5d-data-plane-ready"));
    let answered: Vec<(&str, &TrustReport)> = reports.iter().filter_map(|r| r.trust.as_ref().ok().map(|t| (r.pod.as_str(), t))).collect();

    identity.push(MATCH_CA, match &expected.anchors {
        None => Outcome::Error("the trust bundle could not be read (see tessera-identity above)".to_owned()),
        Some(bundle) => {
            let stale = answered.iter().filter_map(|(pod, t)| bundle_mismatch(bundle, &t.anchors).map(|d| format!("* {pod}: {d}"))).collect();
            listed("Some pods do not trust the current trust bundle:", stale, "l5d-identity-data-plane-proxies-certs-match-ca")
        }
    });

    let invalid = answered.iter().filter_map(|(pod, t)| leaf_problem(t.leaf.as_ref(), now).map(|p| format!("* {pod}: {p}"))).collect();
    identity.push(VALIDITY, listed("Some proxies hold no valid leaf certificate and refuse mTLS:", invalid, "l5d-identity-data-plane"));

    identity.push(ISSUER, match &expected.issuer {
        None => Outcome::Error("the issuer could not be read (see tessera-identity above)".to_owned()),
        Some(issuer) => {
            // A leaf from another issuer still chains to its anchor while that
            // anchor is in the bundle (a rotation in progress); the proxy
            // renews from the current issuer within its leaf's lifetime.
            let other: Vec<String> = answered
                .iter()
                .filter_map(|(pod, t)| {
                    let leaf = t.leaf.as_ref()?;
                    let from = leaf.issuer.as_deref().unwrap_or("an unknown issuer");
                    (from != issuer).then(|| format!("* {pod}: leaf from {from}, not the current issuer {issuer}"))
                })
                .collect();
            if other.is_empty() {
                Outcome::Success
            } else {
                Outcome::Warning(format!("Some proxies hold a leaf from another issuer (they renew from the current one):\n    {}", other.join("\n    ")))
            }
        }
    });
    identity.push(ROTATION, rotation_outcome(rotation));
    vec![plane, identity]
}

/// ‼ while a rotation is under way: mismatches above are then expected until it finishes.
fn rotation_outcome(rotation: Result<Option<RotationState>, String>) -> Outcome {
    match rotation {
        Ok(None) => Outcome::Success,
        Ok(Some(state)) if state.step == Step::Done => Outcome::Success,
        Ok(Some(state)) => {
            let mode = match state.mode {
                Mode::Full => "full",
                Mode::IssuerOnly => "issuer-only",
            };
            Outcome::Warning(format!(
                "{mode} rotation {} is at {}: {} (see `tessera identity rotate --status`; rerun it to resume)",
                state.id,
                state.step,
                state.step.describe()
            ))
        }
        Err(e) => Outcome::Warning(e),
    }
}

/// How a proxy's anchors differ from the bundle's, if they do.
fn bundle_mismatch(bundle: &[String], trusted: &[String]) -> Option<String> {
    let missing: Vec<&str> = bundle.iter().filter(|a| !trusted.contains(a)).map(String::as_str).collect();
    let extra: Vec<&str> = trusted.iter().filter(|a| !bundle.contains(a)).map(String::as_str).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("does not trust {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("still trusts {}", extra.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn leaf_problem(leaf: Option<&Leaf>, now: OffsetDateTime) -> Option<String> {
    // The proxy drops its leaf when it expires, so `null` after the pod ran
    // means an expired leaf that was not renewed (or none issued yet).
    let Some(leaf) = leaf else {
        return Some("no leaf certificate (expired without renewal, or never issued)".to_owned());
    };
    match OffsetDateTime::parse(&leaf.not_after, &Rfc3339) {
        Ok(not_after) if not_after <= now => Some(format!("leaf {} expired at {}", leaf.identity, pki::rfc3339(not_after))),
        Ok(_) => None,
        Err(e) => Some(format!("leaf notAfter {:?} unreadable: {e}", leaf.not_after)),
    }
}

/// ✔ with no problems, else × listing them with Linkerd's hint line.
fn listed(header: &str, problems: Vec<String>, anchor: &str) -> Outcome {
    if problems.is_empty() {
        Outcome::Success
    } else {
        Outcome::Error(format!("{header}\n{}\nsee {HINTS}{anchor} for hints", problems.iter().map(|p| format!("    {p}")).collect::<Vec<_>>().join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pod: &str, anchors: &[&str], leaf: Option<(&str, &str)>) -> ProxyReport {
        ProxyReport {
            pod: pod.to_owned(),
            trust: Ok(TrustReport {
                anchors: anchors.iter().map(|a| (*a).to_owned()).collect(),
                leaf: leaf.map(|(issuer, not_after)| Leaf { identity: "web.app.serviceaccount.identity.linkerd.cluster.local".to_owned(), issuer: Some(issuer.to_owned()), not_after: not_after.to_owned() }),
            }),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-12-06T08:00:00Z", &Rfc3339).unwrap()
    }

    fn expected() -> Expected {
        Expected { anchors: Some(vec!["sha256:a".to_owned(), "sha256:b".to_owned()]), issuer: Some("sha256:i".to_owned()) }
    }

    fn outcomes(categories: &[Category]) -> Vec<(&str, &Outcome)> {
        categories.iter().flat_map(|c| c.checks.iter().map(|l| (l.description.as_str(), &l.outcome))).collect()
    }

    #[test]
    fn a_healthy_data_plane_passes() {
        let reports = vec![report("app/web-0", &["sha256:a", "sha256:b"], Some(("sha256:i", "2026-12-07T08:00:00Z")))];
        let c = checks(Ok(reports), Ok(None), &expected(), now());
        assert!(outcomes(&c).iter().all(|(_, o)| **o == Outcome::Success), "{c:?}");
        assert_eq!(outcomes(&c).len(), 5);
    }

    #[test]
    fn stale_bundles_expired_leaves_and_unreachable_proxies_are_named() {
        let reports = vec![
            report("app/old-0", &["sha256:a"], Some(("sha256:i", "2026-12-07T08:00:00Z"))),
            report("app/expired-0", &["sha256:a", "sha256:b"], Some(("sha256:i", "2026-12-06T07:59:00Z"))),
            report("app/dropped-0", &["sha256:a", "sha256:b", "sha256:z"], None),
            ProxyReport { pod: "app/gone-0".to_owned(), trust: Err("GET x: refused".to_owned()) },
            report("app/prev-0", &["sha256:a", "sha256:b"], Some(("sha256:p", "2026-12-07T08:00:00Z"))),
        ];
        let c = checks(Ok(reports), Ok(None), &expected(), now());
        let o = outcomes(&c);
        assert_eq!(o[0], (REACHABLE, &Outcome::Error("Some proxies cannot be reached:\n    * app/gone-0: GET x: refused\nsee https://linkerd.io/2/checks/#l5d-data-plane-ready for hints".to_owned())));
        assert_eq!(o[1], (MATCH_CA, &Outcome::Error("Some pods do not trust the current trust bundle:\n    * app/old-0: does not trust sha256:b\n    * app/dropped-0: still trusts sha256:z\nsee https://linkerd.io/2/checks/#l5d-identity-data-plane-proxies-certs-match-ca for hints".to_owned())));
        assert_eq!(o[2], (VALIDITY, &Outcome::Error("Some proxies hold no valid leaf certificate and refuse mTLS:\n    * app/expired-0: leaf web.app.serviceaccount.identity.linkerd.cluster.local expired at 2026-12-06T07:59:00Z\n    * app/dropped-0: no leaf certificate (expired without renewal, or never issued)\nsee https://linkerd.io/2/checks/#l5d-identity-data-plane for hints".to_owned())));
        assert_eq!(o[3], (ISSUER, &Outcome::Warning("Some proxies hold a leaf from another issuer (they renew from the current one):\n    * app/prev-0: leaf from sha256:p, not the current issuer sha256:i".to_owned())));
    }

    #[test]
    fn a_rotation_under_way_is_a_warning_naming_its_step() {
        let state: RotationState = serde_json::from_value(serde_json::json!({
            "id": "20261206T080000Z", "mode": "full", "step": "wait-new-leaves", "startedAt": "2026-12-06T08:00:00Z",
            "stepStartedAt": "2026-12-06T08:01:00Z", "oldAnchors": ["sha256:a"], "materialDir": "/tmp/x"
        }))
        .unwrap();
        assert_eq!(
            rotation_outcome(Ok(Some(state.clone()))),
            Outcome::Warning("full rotation 20261206T080000Z is at step 4/6: wait until every meshed proxy holds a leaf from the new issuer (see `tessera identity rotate --status`; rerun it to resume)".to_owned())
        );
        assert_eq!(rotation_outcome(Ok(Some(RotationState { step: Step::Done, ..state }))), Outcome::Success);
    }

    #[test]
    fn no_meshed_pods_is_a_warning_and_an_unreadable_bundle_an_error() {
        let c = checks(Ok(vec![]), Ok(None), &expected(), now());
        assert_eq!(outcomes(&c), vec![(REACHABLE, &Outcome::Warning("no meshed pods found".to_owned()))]);
        let reports = vec![report("app/web-0", &["sha256:a"], Some(("sha256:i", "2026-12-07T08:00:00Z")))];
        let c = checks(Ok(reports), Err("reading ConfigMap linkerd/tessera-identity-rotation: forbidden".to_owned()), &Expected { anchors: None, issuer: None }, now());
        assert!(matches!(outcomes(&c)[1].1, Outcome::Error(_)), "{c:?}");
        assert_eq!(outcomes(&c)[4], (ROTATION, &Outcome::Warning("reading ConfigMap linkerd/tessera-identity-rotation: forbidden".to_owned())));
    }
}
