//! A bounded TTL cache in front of a [`Reviewer`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::review::{ReviewError, ReviewOutcome, Reviewer};

struct Entry {
    outcome: ReviewOutcome,
    expires: Instant,
}

/// Caches review outcomes per (token, audience): valid tokens for `ttl`,
/// refused ones for a shorter `negative_ttl` (so a token that becomes valid,
/// or a brief API outage, is not remembered long). Review errors are never
/// cached. At most `capacity` entries; expired ones are dropped first, then the
/// whole cache is cleared (a full cache is a sign of token churn, where a
/// cache does not help anyway).
pub struct CachedReviewer<R> {
    inner: R,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl<R: Reviewer> CachedReviewer<R> {
    /// A cache with `ttl` for valid tokens and `min(ttl, 2 s)` for refused ones.
    pub fn new(inner: R, ttl: Duration, capacity: usize) -> Self {
        Self { inner, ttl, negative_ttl: ttl.min(Duration::from_secs(2)), capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// Sets how long refused tokens are remembered.
    pub fn with_negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// Forgets every cached outcome (e.g. after a ServiceAccount was deleted).
    pub fn invalidate_all(&self) {
        self.lock().clear();
    }

    /// Number of cached outcomes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        // Entries are inserted whole; a panic elsewhere cannot leave one torn.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<R: Reviewer> Reviewer for CachedReviewer<R> {
    fn review<'a>(&'a self, token: &'a str, audience: &'a str) -> Pin<Box<dyn Future<Output = Result<ReviewOutcome, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            let key = (token.to_owned(), audience.to_owned());
            let now = Instant::now();
            if let Some(hit) = self.lock().get(&key)
                && hit.expires > now
            {
                return Ok(hit.outcome.clone());
            }
            let outcome = self.inner.review(token, audience).await?;
            let ttl = match outcome {
                ReviewOutcome::Authenticated(_) => self.ttl,
                ReviewOutcome::Rejected(_) => self.negative_ttl,
            };
            let mut entries = self.lock();
            if entries.len() >= self.capacity {
                entries.retain(|_, e| e.expires > now);
                if entries.len() >= self.capacity {
                    entries.clear();
                }
            }
            entries.insert(key, Entry { outcome: outcome.clone(), expires: now + ttl });
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

    fn cache(capacity: usize) -> (CachedReviewer<Counting>, Arc<AtomicUsize>) {
        let inner = Counting::default();
        let calls = inner.calls.clone();
        (CachedReviewer::new(inner, Duration::from_secs(10), capacity).with_negative_ttl(Duration::from_secs(1)), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn hits_until_expiry() {
        let (c, calls) = cache(100);
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
    async fn negative_results_are_cached_briefly_and_errors_not_at_all() {
        let (c, calls) = cache(100);
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
    async fn invalidation_and_capacity() {
        let (c, calls) = cache(2);
        c.review("good", "a").await.unwrap();
        c.invalidate_all();
        assert!(c.is_empty());
        c.review("good", "a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        c.review("good", "b").await.unwrap();
        c.review("good", "c").await.unwrap();
        assert!(c.len() <= 2);
    }
}
