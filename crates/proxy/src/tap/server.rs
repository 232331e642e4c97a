//! `GET /tap` on the admin port: authorize the caller, then stream events.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::broadcast;

use super::authz::{Authorization, TapAuthorizer};
use super::hub::{TapEvent, TapHub};

/// The body of a `/tap` answer: a Status object, or the endless stream.
pub type TapBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serves `/tap` for one proxy.
#[derive(Debug, Clone)]
pub struct TapServer {
    hub: Arc<TapHub>,
    authorizer: Arc<TapAuthorizer>,
}

fn status(code: http::StatusCode, reason: &str, message: &str, details: Option<serde_json::Value>) -> http::Response<TapBody> {
    let mut body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// The bearer token of `Authorization: Bearer TOKEN` (scheme case-insensitive, as kube's).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn line(event: &TapEvent) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

impl TapServer {
    /// Serves the events of `hub` to callers `authorizer` allows.
    pub fn new(hub: Arc<TapHub>, authorizer: TapAuthorizer) -> Self {
        Self { hub, authorizer: Arc::new(authorizer) }
    }

    /// The hub (for inbound and outbound to publish to).
    pub fn hub(&self) -> &Arc<TapHub> {
        &self.hub
    }

    /// Answers `GET /tap` with the request's headers: 401 without a bearer
    /// token (or one the API refuses), 403 (kube's message) when the API
    /// says the caller may not tap this pod, else 200 and one JSON line per
    /// event until the caller goes away.
    pub async fn serve(&self, headers: &http::HeaderMap) -> http::Response<TapBody> {
        let Some(token) = bearer(headers) else {
            return status(http::StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", None);
        };
        // Subscribed before the review: nothing published once allowed is missed.
        let rx = self.hub.subscribe();
        match self.authorizer.authorize(token).await {
            Authorization::Allowed => {}
            Authorization::Unauthenticated => return status(http::StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", None),
            Authorization::Forbidden { message } => {
                let details = serde_json::json!({"name": self.authorizer.pod(), "group": "tap.linkerd.io", "kind": "pods"});
                return status(http::StatusCode::FORBIDDEN, "Forbidden", &message, Some(details));
            }
            Authorization::Failed(why) => {
                tracing::warn!(error = %why, "tap: the access review failed");
                let message = format!("the access review for tap failed: {why}");
                return status(http::StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &message, None);
            }
        }
        tracing::info!("tap: a client started tapping");
        let events = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((Ok::<_, Infallible>(Frame::data(line(&event))), rx)),
                    // A slow client loses the oldest events, not the stream.
                    Err(broadcast::error::RecvError::Lagged(missed)) => tracing::debug!(missed, "tap client fell behind"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let mut response = http::Response::new(StreamBody::new(events).boxed());
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        response
    }
}

/// Why `/tap` cannot be served (it then answers 503 saying so).
fn unconfigured() -> http::Response<TapBody> {
    status(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "tap is not configured: the proxy needs --api-server, --api-ca, --namespace and --pod to check callers with the API",
        None,
    )
}

impl TapServer {
    /// The tap server of a proxy started with `config`, publishing from the
    /// process's hub; `None` when the API or the pod is not configured.
    pub fn from_config(config: &crate::config::ProxyConfig) -> Option<Self> {
        let (Some(url), Some(ca), Some(namespace), Some(pod)) = (&config.api.server, &config.api.ca, &config.namespace, &config.pod) else {
            tracing::info!("tap disabled: no API server, CA, namespace or pod configured");
            return None;
        };
        let endpoint = std::fs::read(ca).map_err(|e| e.to_string()).and_then(|pem| super::ApiEndpoint::new(url, &pem).map_err(|e| e.to_string()));
        match endpoint {
            Ok(api) => Some(Self::new(TapHub::global().clone(), TapAuthorizer::new(api, namespace.clone(), pod.clone()))),
            Err(e) => {
                tracing::warn!(error = %e, "tap disabled: the API server cannot be reached");
                None
            }
        }
    }
}

/// The admin route `GET /tap` (merged into the admin router).
pub fn router(server: Option<TapServer>) -> axum::Router {
    axum::Router::new().route(
        "/tap",
        axum::routing::get(move |headers: http::HeaderMap| {
            let server = server.clone();
            async move {
                match server {
                    Some(server) => server.serve(&headers).await,
                    None => unconfigured(),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_as_kube_reads_them() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }
}
