//! Who may tap: the API server decides, asked with the caller's own token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// How long one review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from the API.
const MAX_ANSWER: usize = 1 << 20;

/// The API server: its URL and the CA its serving certificate chains to
/// (the pod's `TESSERA_API_SERVER` and ServiceAccount `ca.crt`).
#[derive(Clone)]
pub struct ApiEndpoint {
    authority: String,
    host: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ApiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiEndpoint").field("authority", &self.authority).finish_non_exhaustive()
    }
}

/// Why the API could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The URL is not `https://HOST[:PORT]`.
    #[error("API server URL {0:?}: expected https://HOST[:PORT]")]
    Url(String),
    /// The CA file holds no usable certificate.
    #[error("API server CA: {0}")]
    Ca(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
}

impl ApiEndpoint {
    /// `url` like `https://127.0.0.1:6443`; `ca_pem` the CA certificate(s).
    pub fn new(url: &str, ca_pem: &[u8]) -> Result<Self, ApiError> {
        let uri: http::Uri = url.parse().map_err(|_| ApiError::Url(url.to_owned()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ApiError::Url(url.to_owned()));
        }
        let authority = uri.authority().ok_or_else(|| ApiError::Url(url.to_owned()))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let host = ServerName::try_from(host).map_err(|_| ApiError::Url(url.to_owned()))?;
        let authority = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(443));
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert: CertificateDer<'static> = cert.map_err(|e| ApiError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| ApiError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ApiError::Ca("no certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { authority, host, tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// POSTs `body` to `path` with `token`; the status and the JSON answer.
    async fn post(&self, path: &str, token: &str, body: &Value) -> Result<(u16, Value), ApiError> {
        let transport = |e: &dyn std::fmt::Display| ApiError::Transport(format!("POST {path}: {e}"));
        let tcp = tokio::net::TcpStream::connect(&self.authority).await.map_err(|e| transport(&e))?;
        let tls = self.tls.connect(self.host.clone(), tcp).await.map_err(|e| transport(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| transport(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| transport(&e))?;
        let response = sender.send_request(request).await.map_err(|e| transport(&e))?;
        let code = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
        let bytes = limited.collect().await.map_err(|e| transport(&e))?.to_bytes();
        Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// The API's answer for one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// May tap.
    Allowed,
    /// The token is not valid (401).
    Unauthenticated,
    /// Valid, not allowed: kube's forbidden message.
    Forbidden {
        /// e.g. `pods.tap.linkerd.io "web-0" is forbidden: User "…" cannot watch resource "pods/tap" …`.
        message: String,
    },
    /// The API could not answer.
    Failed(String),
}

/// Asks the API whether a caller may tap this proxy's pod.
#[derive(Debug)]
pub struct TapAuthorizer {
    api: ApiEndpoint,
    namespace: String,
    pod: String,
}

impl TapAuthorizer {
    /// For the pod `namespace/pod`.
    pub fn new(api: ApiEndpoint, namespace: impl Into<String>, pod: impl Into<String>) -> Self {
        Self { api, namespace: namespace.into(), pod: pod.into() }
    }

    /// The pod's name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// A SelfSubjectAccessReview with the caller's token: `watch` on
    /// `pods/tap` in `tap.linkerd.io` for this pod (Linkerd's tap check).
    /// On a denial, a SelfSubjectReview names the user for kube's message.
    pub async fn authorize(&self, token: &str) -> Authorization {
        match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Authorization::Failed(e.to_string()),
            Err(_) => Authorization::Failed(format!("no answer from the API within {REVIEW_TIMEOUT:?}")),
        }
    }

    async fn review(&self, token: &str) -> Result<Authorization, ApiError> {
        let review = json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "spec": {"resourceAttributes": {
                "namespace": self.namespace, "verb": "watch", "group": "tap.linkerd.io",
                "resource": "pods", "subresource": "tap", "name": self.pod,
            }},
        });
        let (code, answer) = self.api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token, &review).await?;
        match code {
            201 | 200 => {}
            401 => return Ok(Authorization::Unauthenticated),
            other => return Ok(Authorization::Failed(format!("SelfSubjectAccessReview answered {other}: {}", answer["message"].as_str().unwrap_or_default()))),
        }
        if answer.pointer("/status/allowed").and_then(Value::as_bool) == Some(true) {
            return Ok(Authorization::Allowed);
        }
        let reason = answer.pointer("/status/reason").and_then(Value::as_str).unwrap_or_default();
        let whoami = json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1"});
        let user = match self.api.post("/apis/authentication.k8s.io/v1/selfsubjectreviews", token, &whoami).await? {
            (200 | 201, answer) => answer.pointer("/status/userInfo/username").and_then(Value::as_str).unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        Ok(Authorization::Forbidden { message: forbidden_message(&user, &self.namespace, &self.pod, reason) })
    }
}

/// kube-apiserver's message for a denied `watch` of `pods/tap` in `tap.linkerd.io`.
fn forbidden_message(user: &str, namespace: &str, pod: &str, reason: &str) -> String {
    let mut message = format!(
        "pods.tap.linkerd.io {pod:?} is forbidden: User {user:?} cannot watch resource \"pods/tap\" in API group \"tap.linkerd.io\" in the namespace {namespace:?}"
    );
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubes_forbidden_message() {
        assert_eq!(
            forbidden_message("system:serviceaccount:api:api", "data-store", "data-store-0", ""),
            r#"pods.tap.linkerd.io "data-store-0" is forbidden: User "system:serviceaccount:api:api" cannot watch resource "pods/tap" in API group "tap.linkerd.io" in the namespace "data-store""#
        );
    }

    #[test]
    fn endpoint_urls() {
        assert!(matches!(ApiEndpoint::new("http://127.0.0.1:6443", b""), Err(ApiError::Url(_))));
        assert!(matches!(ApiEndpoint::new("https://127.0.0.1:6443", b"nothing"), Err(ApiError::Ca(_))));
    }
}
