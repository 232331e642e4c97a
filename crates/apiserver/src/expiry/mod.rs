//! The expiry timeline (`GET /tessera/v1/expiry`): everything the server can
//! see that expires — its serving certificate and CA, the token signing keys,
//! legacy ServiceAccount token Secrets (which never expire, worse), the mesh
//! trust anchors and issuer, and each meshed proxy's leaf — sorted by date,
//! each with its owner and a warning when it needs attention.
//!
//! Authorized like any non-resource URL (RBAC `get` on
//! `/tessera/v1/expiry`: cluster admins by default). The same data is kept
//! on `/metrics` as gauges ([`gauges`]), refreshed every minute and on each
//! request here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use http::StatusCode;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::authz::Authorized;
use crate::http::AppState;
use crate::response::{HandlerResult, json_response};

pub mod certs;
pub mod collect;
pub mod gauges;
pub mod item;
pub mod proxies;

pub use item::{Item, Kind, Rules};

/// The path this module serves.
pub const PATH: &str = "/tessera/v1/expiry";
/// How often the gauges are recomputed without a request.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// The answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// When it was computed.
    #[serde(default)]
    pub now: Option<Timestamp>,
    /// Sorted: soonest expiry first, what never expires last.
    pub items: Vec<Item>,
    /// What could not be looked at, and why (e.g. no issuer Secret configured).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// `tessera server` flags for the timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpiryConfig {
    /// Warning thresholds.
    pub rules: Rules,
    /// The mesh issuer's Secret (`--identity-issuer-secret NS/NAME`), if the server should read it.
    pub issuer_secret: Option<(String, String)>,
}

/// What collection needs besides the store and the keys.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Warning thresholds.
    pub rules: Rules,
    /// The issuer Secret, if configured.
    pub issuer_secret: Option<(String, String)>,
    /// Where the trust bundle ConfigMap lives.
    pub control_namespace: String,
    /// Longest token lifetime (a retired signing key verifies this long).
    pub max_token_lifetime_seconds: i64,
    /// The serving certificate (PEM).
    pub serving_cert_pem: String,
    /// The cluster CA (PEM).
    pub ca_cert_pem: String,
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

async fn compute(state: &AppState) -> Timeline {
    let keys = state.tokens.authority.keys();
    let timeline = collect::collect(&state.registry, &keys, &state.expiry, now()).await;
    state.metrics.expiry.update(&timeline, state.expiry.rules.leaf_lifetime);
    timeline
}

/// `GET /tessera/v1/expiry`.
pub async fn handler(State(state): State<AppState>, _authorized: Authorized) -> HandlerResult {
    let timeline = compute(&state).await;
    let body = serde_json::to_value(&timeline).map_err(|e| tessera_api::ApiError::internal(format!("encoding the timeline: {e}")))?;
    Ok(json_response(StatusCode::OK, &body))
}

/// Keeps the gauges fresh until `shutdown`.
pub async fn refresh(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        compute(&state).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
        }
    }
}

/// Parses `NAMESPACE/NAME`.
pub fn parse_secret_ref(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if tessera_api::validation::dns1123_label(ns).is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

/// Settings for the server's own PKI and flags.
pub fn settings(config: &ExpiryConfig, control_namespace: &str, max_token_lifetime_seconds: i64, serving_cert_pem: &str, ca_cert_pem: &str) -> Arc<Settings> {
    Arc::new(Settings {
        rules: config.rules.clone(),
        issuer_secret: config.issuer_secret.clone(),
        control_namespace: control_namespace.to_owned(),
        max_token_lifetime_seconds,
        serving_cert_pem: serving_cert_pem.to_owned(),
        ca_cert_pem: ca_cert_pem.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs() {
        assert_eq!(
            parse_secret_ref("linkerd/linkerd-identity-issuer"),
            Ok(("linkerd".into(), "linkerd-identity-issuer".into()))
        );
        for bad in ["linkerd", "/x", "Bad/x", "a/", "a/b/c"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
    }
}
