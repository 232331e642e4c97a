//! A cache in front of a [`Reviewer`]: keyed by a SHA-256 of the token,
//! bounded in bytes, expired entries dropped first.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_token::cache::{BoundedCache, cache_key, heap_bytes};
use tokio::time::Instant;

use crate::review::{ReviewError, ReviewOutcome, Reviewer};

/// How long an accepted token is trusted without asking again, by default.
/// This is the revocation window of TokenReview mode: a token whose Pod or
/// ServiceAccount was deleted (or whose Secret was) may still be accepted this
/// long after the API started refusing it.
pub const DEFAULT_REVOCATION_WINDOW: Duration = Duration::from_secs(5);
/// How long a refused token is remembered, by default (at most the revocation window).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Memory for cached outcomes, by default: about 10,000 accepted tokens.
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;

/// Caches review outcomes per (token, audience).
///
/// - **Revocation window.** An accepted token is reused for the revocation
///   window ([`DEFAULT_REVOCATION_WINDOW`], 5 s; set it with
///   [`CachedReviewer::with_revocation_window`]) and never past its own `exp`.
///   Within the window a revoked token is still accepted; after it, the next
///   request asks the API again. Choose it as the longest time a deleted Pod's
///   token may keep working in this service.
/// - **Refusals** are remembered for a shorter time ([`DEFAULT_NEGATIVE_TTL`]),
///   so a token that becomes valid, or a brief API outage, is not held against
///   a client for long. Review errors (the API could not answer) are never cached.
/// - **Memory.** Entries are keyed by a SHA-256 of the token and audience (a
///   token is never stored, whatever its size) and the whole cache is bounded
///   in bytes ([`DEFAULT_MAX_BYTES`]; [`CachedReviewer::with_max_bytes`]).
///   When full, expired entries go first, then those closest to expiry, so
///   garbage tokens from unauthenticated clients cannot grow it.
pub struct CachedReviewer<R> {
    inner: R,
    revocation_window: Duration,
    negative_ttl: Duration,
    entries: BoundedCache<ReviewOutcome, Instant>,
}

/// Heap bytes of an outcome (what the cache charges for it).
fn outcome_bytes(outcome: &ReviewOutcome) -> usize {
    let string = |s: &String| heap_bytes(s.len());
    let list = |l: &[String]| heap_bytes(size_of_val(l)) + l.iter().map(string).sum::<usize>();
    match outcome {
        ReviewOutcome::Rejected(why) => string(why),
        ReviewOutcome::Authenticated(user) => {
            // A B-tree node per few extras: count one per entry, generously.
            let extra = user.extra.iter().map(|(k, v)| string(k) + list(v) + 4 * size_of::<String>()).sum::<usize>();
            string(&user.username) + string(&user.uid) + list(&user.groups) + extra
        }
    }
}

/// How long until the token's `exp`, read without verification (the inner
/// reviewer has just accepted it); None when it has none or cannot be read.
fn until_expiry(token: &str) -> Option<Duration> {
    let exp = tessera_token::jws::decode(token).ok()?.claims.get("exp")?.as_i64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(u64::try_from(exp).ok()?.saturating_sub(now)))
}

impl<R: Reviewer> CachedReviewer<R> {
    /// A cache with the defaults: a 5 s revocation window, refusals kept 2 s, 4 MiB.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            revocation_window: DEFAULT_REVOCATION_WINDOW,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            entries: BoundedCache::new(DEFAULT_MAX_BYTES),
        }
    }

    /// Sets how long an accepted token is trusted without asking again (the
    /// revocation window); refusals are then kept at most this long too.
    pub fn with_revocation_window(mut self, window: Duration) -> Self {
        self.revocation_window = window;
        self.negative_ttl = self.negative_ttl.min(window);
        self
    }

    /// Sets how long refused tokens are remembered.
    pub fn with_negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// Sets the memory budget (and empties the cache).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.entries = BoundedCache::new(max_bytes);
        self
    }

    /// The revocation window.
    pub fn revocation_window(&self) -> Duration {
        self.revocation_window
    }

    /// Forgets every cached outcome (e.g. after a ServiceAccount was deleted).
    pub fn invalidate_all(&self) {
        self.entries.clear();
    }

    /// Number of cached outcomes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the cached outcomes take (never more than the budget).
    pub fn bytes(&self) -> usize {
        self.entries.bytes()
    }

    /// The memory budget.
    pub fn max_bytes(&self) -> usize {
        self.entries.max_bytes()
    }
}

impl<R: Reviewer> Reviewer for CachedReviewer<R> {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            let key = cache_key([token.as_bytes(), audience.as_bytes()]);
            if let Some(hit) = self.entries.get(&key, Instant::now()) {
                return Ok(hit);
            }
            let outcome = self.inner.review(token, audience).await?;
            let ttl = match outcome {
                ReviewOutcome::Authenticated(_) => until_expiry(token).map_or(self.revocation_window, |left| left.min(self.revocation_window)),
                ReviewOutcome::Rejected(_) => self.negative_ttl,
            };
            let now = Instant::now();
            self.entries.insert(key, outcome.clone(), outcome_bytes(&outcome), now + ttl, now);
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::review::UserInfo;

    #[derive(Default)]
    struct Counting {
        calls: Arc<AtomicUsize>,
    }

    impl Reviewer for Counting {
        fn review<'a>(&'a self, token: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match token {
                    "good" => Ok(ReviewOutcome::Authenticated(UserInfo { username: "u".into(), ..Default::default() })),
                    "down" => Err(ReviewError::Unavailable("down".into())),
                    _ => Ok(ReviewOutcome::Rejected("bad".into())),
                }
            })
        }
    }

    fn cache() -> (CachedReviewer<Counting>, Arc<AtomicUsize>) {
        let inner = Counting::default();
        let calls = inner.calls.clone();
        (CachedReviewer::new(inner).with_revocation_window(Duration::from_secs(10)).with_negative_ttl(Duration::from_secs(1)), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn hits_until_the_revocation_window_ends() {
        let (c, calls) = cache();
        assert!(matches!(c.review("good", "a").await, Ok(ReviewOutcome::Authenticated(_))));
        assert!(matches!(c.review("good", "a").await, Ok(ReviewOutcome::Authenticated(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another audience is another question.
        c.review("good", "b").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        c.review("good", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_revocation_window_is_five_seconds() {
        let inner = Counting::default();
        let calls = inner.calls.clone();
        let c = CachedReviewer::new(inner);
        assert_eq!(c.revocation_window(), Duration::from_secs(5));
        c.review("good", "a").await.unwrap();
        tokio::time::advance(Duration::from_millis(4_900)).await;
        c.review("good", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        c.review("good", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked again once the window ended");
    }

    #[tokio::test(start_paused = true)]
    async fn negative_results_are_cached_briefly_and_errors_not_at_all() {
        let (c, calls) = cache();
        c.review("bad", "a").await.unwrap();
        c.review("bad", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1100)).await;
        c.review("bad", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(c.review("down", "a").await.is_err());
        assert!(c.review("down", "a").await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation() {
        let (c, calls) = cache();
        c.review("good", "a").await.unwrap();
        c.invalidate_all();
        assert!(c.is_empty());
        c.review("good", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_floods_stay_within_the_budget() {
        let (c, calls) = cache();
        let c = c.with_max_bytes(64 * 1024);
        let mut token = "G".repeat(4096);
        for i in 0..10_000u32 {
            token.replace_range(..8, &format!("{i:08}"));
            c.review(&token, "a").await.unwrap();
            assert!(c.bytes() <= 64 * 1024);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10_000);
        assert!(c.len() > 100, "{}", c.len());
    }
}
