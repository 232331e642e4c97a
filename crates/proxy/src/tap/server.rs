//! `GET /tap` on the admin port: authorize the caller, then stream events.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::{Semaphore, broadcast};

use super::authz::{Authorization, TapAuthorizer};
use super::hub::{TapEvent, TapHub};

/// The body of a `/tap` answer: a Status object, or the endless stream.
pub type TapBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The default of `--max-tap-streams`: a handful of people watching one pod.
pub const DEFAULT_MAX_STREAMS: usize = 16;

/// Serves `/tap` for one proxy.
#[derive(Debug, Clone)]
pub struct TapServer {
    hub: Arc<TapHub>,
    authorizer: Arc<TapAuthorizer>,
    /// One permit per open stream: every stream costs a broadcast receiver
    /// and JSON encoding of every event, so their number is capped.
    streams: Arc<Semaphore>,
    max_streams: usize,
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
        Self::with_max_streams(hub, authorizer, DEFAULT_MAX_STREAMS)
    }

    /// As [`TapServer::new`], with at most `max` streams open at once (at least 1).
    pub fn with_max_streams(hub: Arc<TapHub>, authorizer: TapAuthorizer, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self { hub, authorizer: Arc::new(authorizer), streams: Arc::new(Semaphore::new(max)), max_streams: max }
    }

    /// The hub (for inbound and outbound to publish to).
    pub fn hub(&self) -> &Arc<TapHub> {
        &self.hub
    }

    /// Answers `GET /tap` with the request's headers: 401 without a bearer
    /// token (or one the API refuses), 429 when `max_streams` streams are
    /// already open, 403 (kube's message) when the API says the caller may
    /// not tap this pod, else 200 and one JSON line per event until the
    /// caller goes away.
    pub async fn serve(&self, headers: &http::HeaderMap) -> http::Response<TapBody> {
        let Some(token) = bearer(headers) else {
            return status(http::StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", None);
        };
        // The slot is taken before the access review (a full proxy asks the
        // API nothing) and held by the stream until the caller goes away.
        let Ok(slot) = self.streams.clone().try_acquire_owned() else {
            let message = format!("too many tap streams: this proxy serves at most {} at once (--max-tap-streams)", self.max_streams);
            let mut response = status(http::StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", &message, Some(serde_json::json!({"retryAfterSeconds": 1})));
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return response;
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
        let events = futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((Ok::<_, Infallible>(Frame::data(line(&event))), (rx, slot))),
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
            Ok(api) => Some(Self::with_max_streams(
                TapHub::global().clone(),
                TapAuthorizer::new(api, namespace.clone(), pod.clone()),
                config.max_tap_streams,
            )),
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

    /// A CA certificate (PEM) for an API endpoint nothing listens on.
    fn unreachable_api() -> super::super::ApiEndpoint {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        // Port 1 on loopback: connection refused at once.
        super::super::ApiEndpoint::new("https://127.0.0.1:1", pem.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn streams_beyond_the_cap_get_429_without_asking_the_api() {
        let authorizer = TapAuthorizer::new(unreachable_api(), "ns", "pod");
        let server = TapServer::with_max_streams(TapHub::new(), authorizer, 2);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer t"));
        // Two streams open (as two allowed callers would hold them).
        let held = (server.streams.clone().try_acquire_owned().unwrap(), server.streams.clone().try_acquire_owned().unwrap());
        let response = server.serve(&headers).await;
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["reason"], "TooManyRequests");
        assert_eq!(body["code"], 429);
        assert_eq!(body["message"], "too many tap streams: this proxy serves at most 2 at once (--max-tap-streams)");
        // One closes: the next caller gets as far as the access review (which fails here: no API).
        drop(held.0);
        let response = server.serve(&headers).await;
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        // A refused caller holds no slot.
        assert_eq!(server.streams.available_permits(), 1);
    }

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
