//! Offline review: verify ServiceAccount tokens against the issuer's published
//! JWKS instead of asking the API for every token.
//!
//! # Design
//! Offline verification checks the signature, issuer, audience and validity
//! window, but cannot see whether the ServiceAccount or the bound Pod still
//! exists: a revoked token stays accepted until it expires (tokens of projected
//! volumes live minutes to an hour). Use it where that trade-off is acceptable;
//! otherwise use [`crate::TokenReviewClient`]. Tokens this reviewer cannot
//! decide (unknown key after a refresh, legacy tokens without an audience) go
//! to the fallback reviewer when one is set. The key decides the algorithm:
//! `alg: none` and HMAC headers never verify.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;
use tokio::time::Instant;

use crate::review::{ReviewError, ReviewOutcome, Reviewer, UserInfo};

const LEEWAY_SECONDS: i64 = 60;

/// A public key from the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// P-256 uncompressed point.
    Es256(Vec<u8>),
    /// RSA modulus and exponent.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Es256(_) => "ES256",
            PublicKey::Rs256 { .. } => "RS256",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature;
        match self {
            PublicKey::Es256(point) => signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok(),
            PublicKey::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok(),
        }
    }
}

/// Parses a JWKS document into keys by `kid`; keys of other types are skipped.
fn parse_jwks(doc: &Value) -> BTreeMap<String, PublicKey> {
    let mut keys = BTreeMap::new();
    for jwk in doc.get("keys").and_then(Value::as_array).into_iter().flatten() {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str).and_then(|v| B64.decode(v).ok());
        let Some(kid) = jwk.get("kid").and_then(Value::as_str) else { continue };
        let key = match (jwk.get("kty").and_then(Value::as_str), jwk.get("crv").and_then(Value::as_str)) {
            (Some("EC"), Some("P-256")) => match (s("x"), s("y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => PublicKey::Es256([&[4u8][..], &x, &y].concat()),
                _ => continue,
            },
            (Some("RSA"), _) => match (s("n"), s("e")) {
                (Some(n), Some(e)) => PublicKey::Rs256 { n, e },
                _ => continue,
            },
            _ => continue,
        };
        keys.insert(kid.to_owned(), key);
    }
    keys
}

/// Where the JWKS comes from.
pub trait JwksSource: Send + Sync + 'static {
    /// Fetches the current JWKS document.
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Value, ReviewError>> + Send + '_>>;
}

impl JwksSource for kube::Client {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Value, ReviewError>> + Send + '_>> {
        Box::pin(async move {
            let request = http::Request::get("/openid/v1/jwks").body(Vec::new()).map_err(|e| ReviewError::Unavailable(e.to_string()))?;
            let text = self.request_text(request).await.map_err(|e| match e {
                kube::Error::Api(s) => ReviewError::Refused { code: s.code, message: s.message },
                other => ReviewError::Unavailable(other.to_string()),
            })?;
            serde_json::from_str(&text).map_err(|e| ReviewError::Unavailable(format!("JWKS is not JSON: {e}")))
        })
    }
}

struct Keys {
    by_kid: BTreeMap<String, PublicKey>,
    fetched: Option<Instant>,
}

/// Verifies tokens offline from the issuer's JWKS (see the module docs for the trade-off).
pub struct JwksReviewer<S> {
    source: S,
    issuer: String,
    refresh: Duration,
    keys: RwLock<Keys>,
    fallback: Option<Box<dyn Reviewer>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl<S: JwksSource> JwksReviewer<S> {
    /// Verifies tokens of `issuer` with keys from `source`, re-fetched every
    /// `refresh` and whenever a token names an unknown key (at most once a second).
    pub fn new(source: S, issuer: &str, refresh: Duration) -> Self {
        Self { source, issuer: issuer.to_owned(), refresh, keys: RwLock::new(Keys { by_kid: BTreeMap::new(), fetched: None }), fallback: None }
    }

    /// Sends tokens it cannot decide to `fallback` (usually a TokenReview client).
    pub fn with_fallback(mut self, fallback: impl Reviewer) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    async fn refresh_keys(&self, force: bool) -> Result<(), ReviewError> {
        let fetched = self.keys.read().unwrap_or_else(|p| p.into_inner()).fetched;
        let due = match fetched {
            None => true,
            Some(at) if force => at.elapsed() >= Duration::from_secs(1),
            Some(at) => at.elapsed() >= self.refresh,
        };
        if !due {
            return Ok(());
        }
        let doc = self.source.fetch().await?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.by_kid = parse_jwks(&doc);
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    fn key(&self, kid: &str) -> Option<PublicKey> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).by_kid.get(kid).cloned()
    }

    /// Reviews at a given time (unix seconds).
    pub async fn review_at(&self, token: &str, audience: &str, now: i64) -> Result<ReviewOutcome, ReviewError> {
        let undecided = |why: &str| ReviewOutcome::Rejected(why.to_owned());
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Ok(undecided("malformed token"));
        };
        let decode = |s: &str| B64.decode(s).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let (Some(header), Some(claims), Ok(signature)) = (decode(h), decode(p), B64.decode(sig)) else {
            return Ok(undecided("malformed token"));
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return self.fall_back(token, audience, "token of another issuer (or a legacy token)").await;
        }
        let kid = header.get("kid").and_then(Value::as_str).unwrap_or_default();
        self.refresh_keys(false).await?;
        let key = match self.key(kid) {
            Some(k) => k,
            None => {
                self.refresh_keys(true).await?;
                match self.key(kid) {
                    Some(k) => k,
                    None => return self.fall_back(token, audience, "signed by a key not in the JWKS").await,
                }
            }
        };
        if header.get("alg").and_then(Value::as_str) != Some(key.alg()) || !key.verify(format!("{h}.{p}").as_bytes(), &signature) {
            return Ok(undecided("invalid signature"));
        }
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !auds.contains(&audience) {
            return Ok(undecided("wrong audience"));
        }
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(i64::MIN);
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(i64::MIN);
        if now > exp + LEEWAY_SECONDS {
            return Ok(undecided("expired"));
        }
        if now + LEEWAY_SECONDS < nbf {
            return Ok(undecided("not valid yet"));
        }
        let k8s = &claims["kubernetes.io"];
        let ns = k8s["namespace"].as_str().unwrap_or_default();
        let name = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let subject = format!("system:serviceaccount:{ns}:{name}");
        if ns.is_empty() || name.is_empty() || claims.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
            return Ok(undecided("not a ServiceAccount token"));
        }
        let mut extra = BTreeMap::new();
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            extra.insert("authentication.kubernetes.io/credential-id".to_owned(), vec![format!("JTI={jti}")]);
        }
        if let (Some(pod), Some(uid)) = (k8s["pod"]["name"].as_str(), k8s["pod"]["uid"].as_str()) {
            extra.insert("authentication.kubernetes.io/pod-name".to_owned(), vec![pod.to_owned()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_owned(), vec![uid.to_owned()]);
        }
        Ok(ReviewOutcome::Authenticated(UserInfo {
            username: subject,
            uid: k8s["serviceaccount"]["uid"].as_str().unwrap_or_default().to_owned(),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()],
            extra,
        }))
    }

    async fn fall_back(&self, token: &str, audience: &str, why: &str) -> Result<ReviewOutcome, ReviewError> {
        match &self.fallback {
            Some(fallback) => fallback.review(token, audience).await,
            None => Ok(ReviewOutcome::Rejected(why.to_owned())),
        }
    }
}

impl<S: JwksSource> Reviewer for JwksReviewer<S> {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        Box::pin(self.review_at(token, audience, now_unix()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    struct Key {
        pair: EcdsaKeyPair,
        kid: &'static str,
    }

    impl Key {
        fn new(kid: &'static str) -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Self { pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap(), kid }
        }

        fn jwk(&self) -> Value {
            let p = self.pair.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid, "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
        }

        fn sign(&self, header: Value, claims: Value) -> String {
            let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
            let sig = self.pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }

        fn token(&self, claims: Value) -> String {
            self.sign(json!({"alg": "ES256", "kid": self.kid}), claims)
        }
    }

    struct Static {
        doc: Value,
        fetches: Arc<AtomicUsize>,
    }

    impl JwksSource for Static {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Value, ReviewError>> + Send + '_>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(self.doc.clone()) })
        }
    }

    fn claims(aud: &str) -> Value {
        json!({"aud": [aud], "exp": NOW + 600, "iat": NOW, "nbf": NOW, "iss": "https://issuer", "jti": "j1", "sub": "system:serviceaccount:api:api",
               "kubernetes.io": {"namespace": "api", "serviceaccount": {"name": "api", "uid": "u1"}, "pod": {"name": "p", "uid": "pu"}}})
    }

    fn reviewer(keys: &[&Key]) -> (JwksReviewer<Static>, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        (JwksReviewer::new(Static { doc, fetches: fetches.clone() }, "https://issuer", Duration::from_secs(300)), fetches)
    }

    #[tokio::test]
    async fn verifies_offline() {
        let key = Key::new("k1");
        let (r, fetches) = reviewer(&[&key]);
        let outcome = r.review_at(&key.token(claims("data-store")), "data-store", NOW).await.unwrap();
        let ReviewOutcome::Authenticated(user) = outcome else { panic!("{outcome:?}") };
        assert_eq!(user.username, "system:serviceaccount:api:api");
        assert_eq!(user.extra["authentication.kubernetes.io/pod-name"], ["p"]);
        r.review_at(&key.token(claims("data-store")), "data-store", NOW).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "keys are cached");
    }

    #[tokio::test]
    async fn refuses_what_it_must() {
        let key = Key::new("k1");
        let stranger = Key::new("k1");
        let (r, _) = reviewer(&[&key]);
        let rejected = |o: ReviewOutcome| matches!(o, ReviewOutcome::Rejected(_));
        assert!(rejected(r.review_at(&key.token(claims("api")), "data-store", NOW).await.unwrap()));
        assert!(rejected(r.review_at(&key.token(claims("data-store")), "data-store", NOW + 700).await.unwrap()));
        assert!(rejected(r.review_at(&stranger.token(claims("data-store")), "data-store", NOW).await.unwrap()));
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none","kid":"k1"}"#), B64.encode(claims("data-store").to_string()));
        assert!(rejected(r.review_at(&none, "data-store", NOW).await.unwrap()));
        let hs = key.sign(json!({"alg": "HS256", "kid": "k1"}), claims("data-store"));
        assert!(rejected(r.review_at(&hs, "data-store", NOW).await.unwrap()));
        assert!(rejected(r.review_at("garbage", "data-store", NOW).await.unwrap()));
    }

    #[tokio::test]
    async fn unknown_keys_fall_back() {
        let key = Key::new("k1");
        let other = Key::new("k2");
        struct Yes;
        impl Reviewer for Yes {
            fn review<'a>(&'a self, _: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
                Box::pin(async { Ok(ReviewOutcome::Authenticated(UserInfo { username: "via-fallback".into(), ..Default::default() })) })
            }
        }
        let (r, fetches) = reviewer(&[&key]);
        let r = r.with_fallback(Yes);
        let outcome = r.review_at(&other.token(claims("data-store")), "data-store", NOW).await.unwrap();
        assert_eq!(outcome, ReviewOutcome::Authenticated(UserInfo { username: "via-fallback".into(), ..Default::default() }));
        // One initial fetch; the forced refresh for the unknown kid is rate-limited to once a second.
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }
}
