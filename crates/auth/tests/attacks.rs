//! Attacks on a service protected by `tessera-auth`, over HTTP, as a client
//! without a valid token would run them: a storm of random key ids against the
//! JWKS mode (fetches counted on a real JWKS endpoint), and a flood of garbage
//! tokens against the review cache.

#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tessera_auth::{AuthLayer, CachedReviewer, JwksReviewer, ReviewError, ReviewOutcome, Reviewer, UserInfo};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "data-store";

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A JWKS endpoint with one P-256 key, counting its fetches.
async fn jwks_endpoint(fetches: Arc<AtomicUsize>) -> SocketAddr {
    let doc = json!({"keys": [{"use": "sig", "kty": "EC", "kid": "k1", "crv": "P-256", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    serve(app).await
}

/// The protected service: the seed's data store, answering who called.
async fn service(layer: AuthLayer) -> SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|user: axum::Extension<UserInfo>| async move { format!("hello {}", user.username) }))
        .layer(layer);
    serve(app).await
}

/// A token of our issuer for our audience, under a key id nobody published
/// (an attacker need not sign it: the key id decides before the signature).
fn random_kid_token() -> String {
    let mut kid = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut kid).unwrap();
    let header = json!({"alg": "ES256", "kid": B64.encode(kid)});
    let claims = json!({"aud": [AUDIENCE], "exp": 4_000_000_000i64, "iat": 1_700_000_000, "iss": ISSUER, "sub": "system:serviceaccount:api:api",
        "kubernetes.io": {"namespace": "api", "serviceaccount": {"name": "api", "uid": "u"}}});
    format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), B64.encode([7u8; 64]))
}

/// Counts the TokenReviews the service would have made, and refuses.
#[derive(Default)]
struct CountingReviews {
    calls: Arc<AtomicUsize>,
}

impl Reviewer for CountingReviews {
    fn review<'a>(&'a self, _: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(ReviewOutcome::Rejected("invalid bearer token".into())) })
    }
}

/// `clients` concurrent HTTP clients send `token()` to `addr` until `window`
/// ends; every answer must be `403 Invalid token`. Returns the requests sent.
async fn storm(addr: SocketAddr, clients: usize, window: Duration, token: fn() -> String) -> usize {
    let client: Client<HttpConnector, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                while Instant::now() < deadline {
                    let request = http::Request::get(format!("http://{addr}/")).header("x-client-id", token()).body(Empty::new()).unwrap();
                    let response = client.request(request).await.unwrap();
                    let status = response.status();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!((status.as_u16(), &body[..]), (403, &b"Invalid token\n"[..]));
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    sent
}

/// The review's attack: 48 clients with random key ids (81 JWKS fetches in
/// 6 s before). Fetches are single-flight and at most one a second, and no
/// unknown key id reaches TokenReview.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_key_ids_from_48_clients() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = jwks_endpoint(fetches.clone()).await;
    let kube = kube::Client::try_from(kube::Config::new(format!("http://{jwks}").parse().unwrap())).unwrap();
    let reviews = CountingReviews::default();
    let review_calls = reviews.calls.clone();
    let offline = JwksReviewer::new(kube, ISSUER, Duration::from_secs(300)).with_fallback(reviews);
    let addr = service(AuthLayer::new(CachedReviewer::new(offline), AUDIENCE)).await;

    let started = Instant::now();
    let sent = storm(addr, 48, Duration::from_secs(3), random_kid_token).await;
    let elapsed = started.elapsed();
    let fetched = fetches.load(Ordering::SeqCst);
    eprintln!("{sent} requests with random key ids from 48 clients in {elapsed:.2?}: {fetched} JWKS fetches, {} TokenReviews", review_calls.load(Ordering::SeqCst));
    // Fetch starts are at least a second apart: in `elapsed`, at most floor(elapsed) + 1.
    assert!(fetched <= elapsed.as_secs() as usize + 1, "{fetched} fetches in {elapsed:?}");
    assert!(fetched >= 1);
    assert_eq!(review_calls.load(Ordering::SeqCst), 0, "an unknown key id never costs a TokenReview");
    assert!(sent > 48, "{sent}");
}

/// Garbage tokens from unauthenticated clients (200 MB of cache before):
/// the review cache stays within its byte budget, whatever the tokens' size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_do_not_fill_the_review_cache() {
    const BUDGET: usize = 64 * 1024;
    let reviews = CountingReviews::default();
    let review_calls = reviews.calls.clone();
    let cache = Arc::new(CachedReviewer::new(reviews).with_max_bytes(BUDGET));
    let addr = service(AuthLayer::new(cache.clone(), AUDIENCE)).await;
    fn garbage() -> String {
        let mut bytes = [0u8; 3 * 1024];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
        B64.encode(bytes)
    }
    let sent = storm(addr, 48, Duration::from_secs(3), garbage).await;
    let (bytes, entries) = (cache.bytes(), cache.len());
    eprintln!(
        "{sent} garbage tokens of 4 KiB ({} MB): cache holds {entries} outcomes in {bytes} bytes (budget {BUDGET}), {} reviews",
        sent * 4096 / 1_000_000,
        review_calls.load(Ordering::SeqCst)
    );
    assert!(bytes <= BUDGET, "{bytes} > {BUDGET}");
    assert!(bytes / entries.max(1) < 512, "entries hold hashes, not tokens: {} bytes each", bytes / entries.max(1));
    assert!(entries < sent && bytes > BUDGET / 2, "the flood filled the cache and evicted: {entries} of {sent} kept");
}
