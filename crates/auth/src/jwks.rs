//! Offline review: verify ServiceAccount tokens against the issuer's published
//! JWKS instead of asking the API for every token.
//!
//! # Design
//! Verification is `tessera-token`'s verifier, the very rules the server's
//! TokenReview applies (signature with the key deciding the algorithm, `crit`,
//! issuer, audience, `nbf`/`exp`/`iat`, claim shape), minus what needs the
//! API's object state: whether the ServiceAccount or the bound Pod still
//! exists. So a revoked token stays accepted until it expires (projected
//! tokens live minutes to an hour): that is this mode's revocation window. Use
//! it where that is acceptable; otherwise use [`crate::TokenReviewClient`].
//!
//! Tokens of another issuer, and legacy Secret tokens (whose Secret only the
//! API can see), go to the fallback reviewer when one is set.
//!
//! # Key fetches
//! The JWKS is fetched when first needed, again every `refresh`, and when a
//! token names a key id the current set lacks, at most once per
//! [`MIN_FETCH_INTERVAL`] whatever the concurrency: fetches are single-flight
//! (a request needing a key waits for the fetch in flight instead of starting
//! another) and rate-limited, so clients sending random key ids cost at most
//! one fetch a second.
//!
//! A token whose key id is absent from a JWKS fetched *after* the token
//! arrived is refused (`invalid signature, no keys found`), and its key id is
//! remembered for [`DEFAULT_UNKNOWN_KID_TTL`], during which it triggers no
//! fetch at all. It does **not** go to the fallback: the JWKS is the issuer's
//! set of verifying keys, so the API could verify such a token only with a key
//! it does not publish, and TokenReview would refuse it too; sending it there
//! would make every forged key id cost a TokenReview. (A key added during a
//! rotation is published before it signs, so its first token triggers a fetch
//! that finds it; a client sending a token under a key not yet fetched because
//! of the rate limit is refused once and succeeds a second later.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tessera_token::cache::{BoundedCache, cache_key};
use tessera_token::key::PublicKeys;
use tessera_token::verify::{Rejection, Verified, Verifier};
use tokio::time::Instant;

use crate::review::{ReviewError, ReviewOutcome, Reviewer, UserInfo};

/// The shortest time between two JWKS fetches, whatever asks for them.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key id that a fresh JWKS lacked is refused without a fetch, by default.
pub const DEFAULT_UNKNOWN_KID_TTL: Duration = Duration::from_secs(5);
/// A fetch taking longer than this fails (requests waiting for it are not held longer).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory for remembered unknown key ids (hashed: about 1,500 of them).
const UNKNOWN_KIDS_BYTES: usize = 256 * 1024;

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

/// The keys and when they were fetched.
#[derive(Default)]
struct KeyState {
    keys: Arc<PublicKeys>,
    /// When the fetch that produced `keys` started (None: never fetched).
    fetched: Option<Instant>,
    /// When the last fetch, successful or not, started (the rate limit counts from here).
    attempted: Option<Instant>,
}

/// Why keys are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Only if the set is older than `refresh` (or there is none).
    Fresh,
    /// A token names a key id the set lacks.
    UnknownKid,
}

/// Verifies tokens offline from the issuer's JWKS (see the module docs).
pub struct JwksReviewer<S> {
    source: S,
    verifier: Verifier,
    refresh: Duration,
    unknown_kid_ttl: Duration,
    state: RwLock<KeyState>,
    /// Held while a fetch is in flight: fetches are single-flight.
    fetching: tokio::sync::Mutex<()>,
    /// Key ids a fresh JWKS lacked, by SHA-256.
    unknown_kids: BoundedCache<(), Instant>,
    fallback: Option<Box<dyn Reviewer>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl<S: JwksSource> JwksReviewer<S> {
    /// Verifies tokens of `issuer` with keys from `source`, re-fetched every
    /// `refresh` and when a token names an unknown key (at most once a second).
    pub fn new(source: S, issuer: &str, refresh: Duration) -> Self {
        Self {
            source,
            verifier: Verifier { issuer: issuer.to_owned(), accept_legacy: false, api_audiences: Vec::new() },
            refresh,
            unknown_kid_ttl: DEFAULT_UNKNOWN_KID_TTL,
            state: RwLock::new(KeyState::default()),
            fetching: tokio::sync::Mutex::new(()),
            unknown_kids: BoundedCache::new(UNKNOWN_KIDS_BYTES),
            fallback: None,
        }
    }

    /// Sends tokens of other issuers and legacy tokens to `fallback` (usually a TokenReview client).
    pub fn with_fallback(mut self, fallback: impl Reviewer) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    /// Sets how long a key id missing from a fresh JWKS is refused without a fetch.
    pub fn with_unknown_kid_ttl(mut self, ttl: Duration) -> Self {
        self.unknown_kid_ttl = ttl;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyState> {
        // The state is replaced field by field with plain values: a panic cannot tear it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn due(&self, need: Need) -> bool {
        let state = self.read();
        let rate_allows = state.attempted.is_none_or(|at| at.elapsed() >= MIN_FETCH_INTERVAL);
        rate_allows
            && match need {
                Need::Fresh => state.fetched.is_none_or(|at| at.elapsed() >= self.refresh),
                Need::UnknownKid => true,
            }
    }

    /// Fetches the JWKS if `need` calls for it and the rate limit allows; one
    /// fetch at a time. Fails only when there are no keys to verify with.
    async fn refresh(&self, need: Need) -> Result<(), ReviewError> {
        let _guard = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A fetch is in flight: its keys are as new as any we could get.
                // Wait for them when we lack a key; otherwise carry on with ours.
                if need == Need::UnknownKid || self.read().keys.is_empty() {
                    drop(self.fetching.lock().await);
                }
                return self.usable();
            }
        };
        if !self.due(need) {
            return self.usable();
        }
        let started = Instant::now();
        self.write().attempted = Some(started);
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(ReviewError::Unavailable(format!("fetching the JWKS took longer than {FETCH_TIMEOUT:?}"))),
        };
        match fetched {
            Ok(doc) => {
                let keys = PublicKeys::from_jwks(&doc);
                tracing::debug!(keys = keys.len(), ?need, "fetched the JWKS");
                let mut state = self.write();
                state.keys = Arc::new(keys);
                state.fetched = Some(started);
                Ok(())
            }
            Err(e) if self.read().keys.is_empty() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "fetching the JWKS failed; verifying with the keys fetched before");
                Ok(())
            }
        }
    }

    fn usable(&self) -> Result<(), ReviewError> {
        if self.read().fetched.is_none() {
            return Err(ReviewError::Unavailable("the issuer's JWKS has not been fetched yet".to_owned()));
        }
        Ok(())
    }

    fn verify(&self, token: &str, audience: &[String], now: i64) -> Result<Verified, Rejection> {
        let keys = self.read().keys.clone();
        self.verifier.verify(token, &keys, audience, now)
    }

    /// Reviews at a given time (unix seconds).
    pub async fn review_at(&self, token: &str, audience: &str, now: i64) -> Result<ReviewOutcome, ReviewError> {
        let arrived = Instant::now();
        let audience_list = [audience.to_owned()];
        self.refresh(Need::Fresh).await?;
        let verified = match self.verify(token, &audience_list, now) {
            Err(Rejection::UnknownKey { kid }) => {
                let kid_key = cache_key([kid.as_deref().unwrap_or_default().as_bytes()]);
                if self.unknown_kids.get(&kid_key, Instant::now()).is_some() {
                    return Ok(ReviewOutcome::Rejected(Rejection::UnknownKey { kid }.to_string()));
                }
                self.refresh(Need::UnknownKid).await?;
                let verified = self.verify(token, &audience_list, now);
                // Remember the key id only when a JWKS fetched after the token
                // arrived lacks it (not when the rate limit kept us from looking).
                if matches!(verified, Err(Rejection::UnknownKey { .. })) && self.read().fetched.is_some_and(|at| at >= arrived) {
                    let now = Instant::now();
                    self.unknown_kids.insert(kid_key, (), 0, now + self.unknown_kid_ttl, now);
                }
                verified
            }
            other => other,
        };
        match verified {
            Ok(Verified::Bound { claims, .. }) => Ok(ReviewOutcome::Authenticated(UserInfo {
                username: claims.username(),
                uid: claims.kubernetes.serviceaccount.uid.clone(),
                groups: claims.groups(),
                extra: claims.extra(),
            })),
            // Not produced: this verifier does not accept legacy tokens (they are not ours).
            Ok(Verified::Legacy { .. }) => self.fall_back(token, audience).await,
            Err(Rejection::NotOurs) => self.fall_back(token, audience).await,
            Err(why) => Ok(ReviewOutcome::Rejected(why.to_string())),
        }
    }

    async fn fall_back(&self, token: &str, audience: &str) -> Result<ReviewOutcome, ReviewError> {
        match &self.fallback {
            Some(fallback) => fallback.review(token, audience).await,
            None => Ok(ReviewOutcome::Rejected(Rejection::NotOurs.to_string())),
        }
    }
}

impl<S: JwksSource> Reviewer for JwksReviewer<S> {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        Box::pin(self.review_at(token, audience, now_unix()))
    }
}

#[cfg(test)]
mod tests;
