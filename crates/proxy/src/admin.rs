//! The admin port (Linkerd's 4191): `/ready` (503 until the first identity
//! certificate and, with `--policy on`, the first inbound policy; then 200), `/live`, `/metrics` (Prometheus text). Other
//! routes (the mesh helper's `/tap`) merge into [`router`]'s result.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::policy::PolicyRx;
use crate::tls::CredentialsRx;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    credentials: CredentialsRx,
    policy: Option<PolicyRx>,
}

/// The admin routes; `policy` when inbound policy is enforced.
pub fn router(metrics: Metrics, credentials: CredentialsRx, policy: Option<PolicyRx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/ready", get(ready_handler))
        .route("/live", get(|| async { "live\n" }))
        .with_state(AdminState { metrics, credentials, policy })
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
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
