//! The lean request path: raw `http::Request`s through kube's [`kube::Client`]
//! (a tower service over hyper with the kubeconfig's TLS and credentials), and
//! the few typed-by-hand setup calls the scenarios share.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt as _};
use serde_json::{Value, json};

use crate::error::{Error, Result};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// What client-go sends for built-in kinds: protobuf, JSON as a fallback.
pub(crate) const PROTOBUF_ACCEPT: HeaderValue = HeaderValue::from_static("application/vnd.kubernetes.protobuf, application/json");

/// The audience of every token the bench mints and reviews.
pub(crate) const AUDIENCE: &str = "tessera-bench";
/// Lifetime of minted tokens (the API's minimum is 10 minutes).
pub(crate) const TOKEN_SECONDS: u64 = 3600;

/// One client connection pool (in practice: one connection per worker).
#[derive(Clone)]
pub(crate) struct Api {
    client: kube::Client,
}

/// A complete response.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// The whole body.
    pub(crate) body: Bytes,
}

/// Builds clients from one kubeconfig.
#[derive(Clone)]
pub(crate) struct Connector {
    config: kube::Config,
}

// === impl Connector ===

impl Connector {
    /// Reads the kubeconfig (and the files it names).
    pub(crate) async fn load(path: &std::path::Path, context: Option<&str>) -> Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|source| Error::Kubeconfig { path: path.to_owned(), source })?;
        let options = kube::config::KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| Error::Kubeconfig { path: path.to_owned(), source })?;
        if let Some(proxy) = &config.proxy_url {
            return Err(Error::Config(format!("the kubeconfig names a proxy ({proxy}); tessera bench connects directly only")));
        }
        Ok(Self { config })
    }

    /// The server's URL, for the summary.
    pub(crate) fn url(&self) -> String {
        self.config.cluster_url.to_string().trim_end_matches('/').to_owned()
    }

    /// A new client with its own connection pool.
    ///
    /// The stack is kube's own layers (base URI, kubeconfig credentials including
    /// exec plugins, impersonation headers) over hyper's pooled client and kube's
    /// rustls connector, minus what `kube::Client::try_from` adds for general
    /// use: no retry layer (a 429 or 503 must count, not be retried), no
    /// per-request tracing span (and no error log line per 5xx), and TCP_NODELAY
    /// on, as Go clients have it.
    pub(crate) fn api(&self) -> Result<Api> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let https = self.config.rustls_https_connector_with_connector(tcp).map_err(Error::Client)?;
        let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build::<_, Body>(https);
        let service = tower::ServiceBuilder::new()
            .layer(self.config.base_uri_layer())
            .option_layer(self.config.auth_layer().map_err(Error::Client)?)
            .layer(self.config.extra_headers_layer().map_err(Error::Client)?)
            .map_err(tower::BoxError::from)
            .service(pool);
        Ok(Api { client: kube::Client::new(service, self.config.default_namespace.clone()) })
    }
}

// === impl Api ===

impl Api {
    /// A client whose every request fails in transport (for tests that never send).
    #[cfg(test)]
    pub(crate) fn unconnected() -> Self {
        let service = tower::service_fn(|_: Request<Body>| async {
            Err::<http::Response<Body>, std::io::Error>(std::io::Error::other("not connected"))
        });
        Self { client: kube::Client::new(service, "default") }
    }

    /// Sends one request and reads the whole answer. The only error is a
    /// transport failure; every HTTP status is a [`Reply`].
    pub(crate) async fn send(&self, method: Method, uri: &Uri, body: Option<&Bytes>) -> Result<Reply, kube::Error> {
        let response = self.client.send(request(method, uri, body)).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }

    /// A GET with its own `Accept` header, read whole.
    pub(crate) async fn get_accepting(&self, uri: &Uri, accept: HeaderValue) -> Result<Reply, kube::Error> {
        let mut req = request(Method::GET, uri, None);
        req.headers_mut().insert(ACCEPT, accept);
        let response = self.client.send(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }

    /// Sends a request and returns the response with its body unread (watches).
    pub(crate) async fn stream(&self, uri: &Uri) -> Result<http::Response<Body>, kube::Error> {
        self.client.send(request(Method::GET, uri, None)).await
    }

    /// A watch with its own `Accept` header, body unread.
    pub(crate) async fn stream_accepting(&self, uri: &Uri, accept: HeaderValue) -> Result<http::Response<Body>, kube::Error> {
        let mut req = request(Method::GET, uri, None);
        req.headers_mut().insert(ACCEPT, accept);
        self.client.send(req).await
    }

    /// A setup step: any status in `ok` passes, everything else is an [`Error`].
    pub(crate) async fn expect(&self, what: &str, method: Method, path: &str, body: Option<Value>, ok: &[StatusCode]) -> Result<Reply> {
        let uri = parse_uri(path)?;
        let body = body.map(|b| Bytes::from(b.to_string()));
        let reply = self
            .send(method, &uri, body.as_ref())
            .await
            .map_err(|source| Error::Transport { what: what.to_owned(), source })?;
        if ok.contains(&reply.status) {
            Ok(reply)
        } else {
            Err(Error::Status { what: what.to_owned(), status: reply.status.as_u16(), body: snippet(&reply.body) })
        }
    }

    /// Creates a namespace.
    pub(crate) async fn create_namespace(&self, name: &str) -> Result<()> {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.expect(&format!("creating namespace {name}"), Method::POST, "/api/v1/namespaces", Some(body), &[StatusCode::CREATED])
            .await
            .map(drop)
    }

    /// Deletes a namespace (and so everything the run created); does not wait
    /// for the server to finish removing its content.
    pub(crate) async fn delete_namespace(&self, name: &str) -> Result<()> {
        let path = format!("/api/v1/namespaces/{name}");
        self.expect(&format!("deleting namespace {name}"), Method::DELETE, &path, None, &[StatusCode::OK, StatusCode::ACCEPTED])
            .await
            .map(drop)
    }

    /// Creates a ServiceAccount.
    pub(crate) async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts");
        let body = service_account(name);
        self.expect(&format!("creating serviceaccount {namespace}/{name}"), Method::POST, &path, Some(body), &[StatusCode::CREATED])
            .await
            .map(drop)
    }

    /// Mints a token for a ServiceAccount through TokenRequest.
    pub(crate) async fn request_token(&self, namespace: &str, service_account: &str, audience: &str) -> Result<String> {
        let what = format!("requesting a token for serviceaccount {namespace}/{service_account}");
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token");
        let reply = self.expect(&what, Method::POST, &path, Some(token_request(audience)), &[StatusCode::CREATED, StatusCode::OK]).await?;
        let value: Value =
            serde_json::from_slice(&reply.body).map_err(|e| Error::Response { what: what.clone(), detail: format!("not JSON: {e}") })?;
        value
            .pointer("/status/token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| Error::Response { what, detail: "no status.token".into() })
    }
}

/// The body of a ServiceAccount named `name`.
pub(crate) fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
}

/// The body of a TokenRequest for `audience`.
pub(crate) fn token_request(audience: &str) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": TOKEN_SECONDS},
    })
}

/// The body of a TokenReview of `token` for `audience`.
pub(crate) fn token_review(token: &str, audience: &str) -> Bytes {
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    });
    Bytes::from(review.to_string())
}

/// Parses a request path (built by this crate, so only a bug makes it fail).
pub(crate) fn parse_uri(path: &str) -> Result<Uri> {
    path.parse().map_err(|e| Error::Config(format!("invalid request path {path:?}: {e}")))
}

/// The first 300 characters of a body, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Whether `body` contains `needle` (a cheap check of a compact JSON answer).
pub(crate) fn contains(body: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(body, needle).is_some()
}

fn request(method: Method, uri: &Uri, body: Option<&Bytes>) -> Request<Body> {
    let mut request = Request::new(body.map_or_else(|| Body::from(Bytes::new()), |b| Body::from(b.clone())));
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(ACCEPT, JSON);
    if body.is_some() {
        headers.insert(CONTENT_TYPE, JSON);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_is_short_and_trimmed() {
        assert_eq!(snippet(b"  not found\n"), "not found");
        let long = "x".repeat(400);
        assert_eq!(snippet(long.as_bytes()).chars().count(), 301);
    }

    #[test]
    fn finds_compact_json_fields() {
        assert!(contains(br#"{"status":{"authenticated":true}}"#, br#""authenticated":true"#));
        assert!(!contains(br#"{"status":{"user":{}}}"#, br#""authenticated":true"#));
    }

    #[test]
    fn review_body_is_compact_json() {
        let body = token_review("abc", AUDIENCE);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["spec"]["token"], "abc");
        assert_eq!(value["spec"]["audiences"], json!([AUDIENCE]));
    }
}
