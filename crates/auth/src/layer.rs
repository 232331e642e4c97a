//! The tower layer: credential extraction, review, and the responses of seed 001.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::review::{ReviewOutcome, Reviewer};

/// Tokens longer than this are refused without a review (the server's limit too).
pub const MAX_TOKEN_BYTES: usize = tessera_token::jws::MAX_TOKEN_BYTES;
/// The header seed 001 uses for the caller's token.
pub(crate) const CLIENT_ID_HEADER: &str = "x-client-id";

/// A token found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential(pub String);

/// Why a request carries no usable credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Neither header is present, or it is empty.
    #[error("X-Client-Id not supplied")]
    Missing,
    /// More than one token: several `X-Client-Id` or `Authorization` values, or both headers with different tokens.
    #[error("more than one credential supplied")]
    Ambiguous,
    /// `Authorization` without the `Bearer` scheme, or a header that is not text.
    #[error("unsupported credential")]
    Unsupported,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("credential too large")]
    TooLarge,
}

/// Extracts the caller's token from `X-Client-Id` or `Authorization: Bearer`
/// (scheme case-insensitive). The same token in both headers is accepted.
pub fn credential(headers: &HeaderMap) -> Result<Credential, CredentialError> {
    let mut found: Option<String> = None;
    let mut take = |token: &str| -> Result<(), CredentialError> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(());
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(CredentialError::TooLarge);
        }
        match &found {
            Some(existing) if existing != token => Err(CredentialError::Ambiguous),
            _ => {
                found = Some(token.to_owned());
                Ok(())
            }
        }
    };
    let client_ids: Vec<_> = headers.get_all(CLIENT_ID_HEADER).iter().collect();
    if client_ids.len() > 1 {
        return Err(CredentialError::Ambiguous);
    }
    for value in client_ids {
        take(value.to_str().map_err(|_| CredentialError::Unsupported)?)?;
    }
    let authorizations: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
    if authorizations.len() > 1 {
        return Err(CredentialError::Ambiguous);
    }
    for value in authorizations {
        let value = value.to_str().map_err(|_| CredentialError::Unsupported)?.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(CredentialError::Unsupported);
        }
        take(token)?;
    }
    found.map(Credential).ok_or(CredentialError::Missing)
}

/// Authenticates requests with ServiceAccount tokens reviewed for `audience`.
#[derive(Clone)]
pub struct AuthLayer {
    reviewer: Arc<dyn Reviewer>,
    audience: Arc<str>,
}

impl AuthLayer {
    /// A layer reviewing with `reviewer` for `audience` (the service's own name, e.g. `data-store`).
    pub fn new(reviewer: impl Reviewer, audience: &str) -> Self {
        Self { reviewer: Arc::new(reviewer), audience: Arc::from(audience) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, reviewer: self.reviewer.clone(), audience: self.audience.clone() }
    }
}

/// The service [`AuthLayer`] wraps around the application.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    reviewer: Arc<dyn Reviewer>,
    audience: Arc<str>,
}

fn respond<B: From<Bytes>>(code: StatusCode, text: &'static str) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let reviewer = self.reviewer.clone();
        let audience = self.audience.clone();
        Box::pin(async move {
            let token = match credential(req.headers()) {
                Ok(Credential(token)) => token,
                Err(CredentialError::Missing) => return Ok(respond(StatusCode::UNAUTHORIZED, "X-Client-Id not supplied\n")),
                Err(CredentialError::Ambiguous | CredentialError::Unsupported) => {
                    return Ok(respond(StatusCode::BAD_REQUEST, "Invalid credentials: send one token in X-Client-Id or Authorization: Bearer\n"));
                }
                Err(CredentialError::TooLarge) => return Ok(respond(StatusCode::FORBIDDEN, "Invalid token\n")),
            };
            match reviewer.review(&token, &audience).await {
                Ok(ReviewOutcome::Authenticated(user)) => {
                    tracing::debug!(user = %user.username, "authenticated");
                    req.extensions_mut().insert(user);
                    inner.call(req).await
                }
                Ok(ReviewOutcome::Rejected(reason)) => {
                    tracing::info!(%reason, "token refused");
                    Ok(respond(StatusCode::FORBIDDEN, "Invalid token\n"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot review tokens");
                    Ok(respond(StatusCode::SERVICE_UNAVAILABLE, "Cannot verify tokens: the TokenReview API refused or failed the review; see the service's log (its ServiceAccount needs the system:auth-delegator ClusterRole)\n"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{ReviewError, UserInfo};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_parsing() {
        assert_eq!(credential(&headers(&[])), Err(CredentialError::Missing));
        assert_eq!(credential(&headers(&[("x-client-id", "  ")])), Err(CredentialError::Missing));
        assert_eq!(credential(&headers(&[("x-client-id", "abc")])), Ok(Credential("abc".into())));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert_eq!(credential(&headers(&[("authorization", &format!("{scheme} abc"))])), Ok(Credential("abc".into())));
        }
        assert_eq!(credential(&headers(&[("authorization", "Basic abc")])), Err(CredentialError::Unsupported));
        assert_eq!(credential(&headers(&[("x-client-id", "a"), ("x-client-id", "b")])), Err(CredentialError::Ambiguous));
        assert_eq!(credential(&headers(&[("x-client-id", "a"), ("authorization", "Bearer b")])), Err(CredentialError::Ambiguous));
        assert_eq!(credential(&headers(&[("x-client-id", "a"), ("authorization", "Bearer a")])), Ok(Credential("a".into())));
        assert_eq!(credential(&headers(&[("x-client-id", &"a".repeat(MAX_TOKEN_BYTES + 1))])), Err(CredentialError::TooLarge));
    }

    struct Fixed;

    impl Reviewer for Fixed {
        fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
            Box::pin(async move {
                match (token, audience) {
                    ("good", "data-store") => Ok(ReviewOutcome::Authenticated(UserInfo { username: "system:serviceaccount:api:api".into(), ..Default::default() })),
                    ("refused", _) => Err(ReviewError::Refused { code: 403, message: "forbidden".into() }),
                    _ => Ok(ReviewOutcome::Rejected("nope".into())),
                }
            })
        }
    }

    async fn call(pairs: &[(&str, &str)]) -> (StatusCode, String) {
        use tower::ServiceExt as _;
        let app = axum::Router::new()
            .route("/", axum::routing::get(|user: axum::Extension<UserInfo>| async move { format!("hello {}", user.username) }))
            .layer(AuthLayer::new(Fixed, "data-store"));
        let mut req = Request::builder().uri("/");
        for (k, v) in pairs {
            req = req.header(*k, *v);
        }
        let response = app.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        let code = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn seed_001_responses() {
        assert_eq!(call(&[]).await, (StatusCode::UNAUTHORIZED, "X-Client-Id not supplied\n".into()));
        assert_eq!(call(&[("x-client-id", "dummy")]).await, (StatusCode::FORBIDDEN, "Invalid token\n".into()));
        assert_eq!(call(&[("x-client-id", "good")]).await, (StatusCode::OK, "hello system:serviceaccount:api:api".into()));
        assert_eq!(call(&[("authorization", "bearer good")]).await.0, StatusCode::OK);
        let (code, body) = call(&[("x-client-id", "refused")]).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("system:auth-delegator"));
    }
}
