//! The admin port (Linkerd's 4191): `/ready` (503 until the first identity
//! certificate and, with `--policy on`, the first inbound policy; then 200),
//! `/live`, `/metrics` (Prometheus text), `/trust` (the anchors trusted and the
//! current leaf's issuer, as JSON). Other
//! routes (the mesh helper's `/tap`) merge into [`router`]'s result.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::policy::PolicyRx;
use crate::tls::CredentialsRx;
use crate::trust::TrustView;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    credentials: CredentialsRx,
    trust: TrustView,
    policy: Option<PolicyRx>,
}

/// The admin routes; `policy` when inbound policy is enforced.
pub fn router(metrics: Metrics, credentials: CredentialsRx, trust: TrustView, policy: Option<PolicyRx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/ready", get(ready_handler))
        .route("/live", get(|| async { "live\n" }))
        .route("/trust", get(trust_handler))
        .with_state(AdminState { metrics, credentials, trust, policy })
}

/// The OpenMetrics terminator, after which nothing may follow.
const EOF: &str = "# EOF\n";

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    // The trust families are computed from the current roots and leaf at
    // scrape time (no state to keep in step) and go before the terminator.
    let mut text = state.metrics.encode();
    let eof = text.ends_with(EOF);
    if eof {
        text.truncate(text.len() - EOF.len());
    }
    text.push_str(&state.trust.encode_metrics());
    if eof {
        text.push_str(EOF);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn ready_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.credentials.borrow().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "no identity certificate yet\n")
    } else if state.policy.as_ref().is_some_and(|p| !crate::policy::has_policy(p)) {
        (StatusCode::SERVICE_UNAVAILABLE, "no inbound policy yet\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn trust_handler(State(state): State<AdminState>) -> impl IntoResponse {
    axum::Json(state.trust.report())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt as _;
    use tokio::sync::watch;
    use tower::ServiceExt as _;

    use super::*;
    use crate::trust::{LeafInfo, TrustRoots, fingerprint, parse_bundle};

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app.clone().oneshot(http::Request::get(path).body(axum::body::Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn trust_reports_anchors_and_leaf_in_json_and_metrics() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        let anchor = fingerprint(root.der());
        let roots: TrustRoots = parse_bundle(root.pem().as_bytes(), "test").unwrap();
        let (_roots_tx, roots) = watch::channel(Arc::new(roots));
        let (leaf_tx, leaf) = watch::channel(None);
        let (_creds_tx, credentials) = watch::channel(None);
        let app = router(Metrics::new(), credentials, TrustView { roots, leaf }, None);

        let (status, body) = get(&app, "/trust").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!(r#"{{"anchors":["{anchor}"],"leaf":null}}"#));
        let (_, metrics) = get(&app, "/metrics").await;
        assert!(metrics.contains(&format!("identity_trust_anchor_info{{fingerprint=\"{anchor}\"}} 1\n")), "{metrics}");
        assert!(!metrics.contains("identity_cert_issuer_info{"));
        assert!(metrics.ends_with("# EOF\n"));

        leaf_tx.send_replace(Some(LeafInfo {
            identity: "web.ns.serviceaccount.identity.linkerd.cluster.local".into(),
            issuer: Some("sha256:ab".into()),
            not_after: "2026-12-07T00:00:00Z".into(),
        }));
        let (_, body) = get(&app, "/trust").await;
        assert_eq!(
            body,
            format!(
                r#"{{"anchors":["{anchor}"],"leaf":{{"identity":"web.ns.serviceaccount.identity.linkerd.cluster.local","issuer":"sha256:ab","notAfter":"2026-12-07T00:00:00Z"}}}}"#
            )
        );
        let (_, metrics) = get(&app, "/metrics").await;
        assert!(metrics.contains("identity_cert_issuer_info{fingerprint=\"sha256:ab\"} 1\n"), "{metrics}");
        assert_eq!(metrics.matches("# EOF").count(), 1);
    }
}
