//! A watch-fed, in-memory view of some store prefixes — kube-rs's reflector
//! pattern. One writer task lists the prefixes, then watches them from the
//! list's revision; after any watch failure it re-lists and swaps a whole new
//! state in. Readers take a read lock and never touch the store; their reads
//! may be one watch event stale, and [`Reflector::caught_up`] waits out that
//! staleness for a known revision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tessera_store::{EventKind, ListOptions, Revision, Store};
use tokio::sync::watch;

/// Applies one stored key (None: deleted) to the state.
pub type ApplyFn<S> = fn(&mut S, &str, Option<&[u8]>);

/// The view. Cheap to clone; all clones share one state.
pub struct Reflector<S> {
    state: Arc<RwLock<S>>,
    epoch: Arc<AtomicU64>,
    ready: Arc<watch::Sender<bool>>,
    applied: Arc<watch::Sender<Revision>>,
    prefixes: Arc<[String]>,
    apply: ApplyFn<S>,
}

impl<S> Clone for Reflector<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            epoch: self.epoch.clone(),
            ready: self.ready.clone(),
            applied: self.applied.clone(),
            prefixes: self.prefixes.clone(),
            apply: self.apply,
        }
    }
}

impl<S: Default + Send + Sync + 'static> Reflector<S> {
    /// A view of `prefixes`, kept by `apply`.
    pub fn new(prefixes: Vec<String>, apply: ApplyFn<S>) -> Self {
        Self {
            state: Arc::default(),
            epoch: Arc::default(),
            ready: Arc::new(watch::channel(false).0),
            applied: Arc::new(watch::channel(0).0),
            prefixes: prefixes.into(),
            apply,
        }
    }

    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        // The state is replaced whole or changed one key at a time; a panic
        // elsewhere cannot leave it torn, so a poisoned lock is still usable.
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the state directly (tests and in-process seeding).
    pub fn write<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        let out = f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        out
    }

    /// A number that changes whenever the state may have changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Resolves once the first list is loaded.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Waits (at most 5 s) until every change up to `revision` is applied, so a
    /// client's own write takes effect for its next request.
    pub async fn caught_up(&self, revision: Revision) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Changes whenever a newer store revision has been applied: wait on it
    /// to re-read the state after a change.
    pub fn changes(&self) -> watch::Receiver<Revision> {
        self.applied.subscribe()
    }

    fn mark_applied(&self, revision: Revision) {
        self.applied.send_if_modified(|r| (*r < revision).then(|| *r = revision).is_some());
    }

    /// Loads the prefixes; returns the revision to watch from.
    async fn relist(&self, store: &Arc<dyn Store>) -> Result<Revision, tessera_store::Error> {
        let mut fresh = S::default();
        let mut revision: Option<Revision> = None;
        for prefix in self.prefixes.iter() {
            let list = store.list(prefix, ListOptions::default()).await?;
            // Lists of different prefixes may see different revisions; watching
            // from the smallest replays anything in between (applying is idempotent).
            revision = Some(revision.map_or(list.revision, |r| r.min(list.revision)));
            for kv in &list.items {
                (self.apply)(&mut fresh, &kv.key, Some(&kv.value));
            }
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.ready.send_replace(true);
        let revision = revision.unwrap_or(0);
        self.mark_applied(revision);
        Ok(revision)
    }

    /// Follows the store until `shutdown`; call once per view. A failed
    /// list or watch, or a watch that ends soon after it started, is retried
    /// after an exponential, jittered backoff: a store that keeps failing (or
    /// a history compacted under a slow watch) must not be re-listed in a loop.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::default();
        loop {
            let after = match self.relist(&store).await {
                Ok(rev) => rev,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, prefixes = ?self.prefixes, ?delay, "list failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let started = tokio::time::Instant::now();
            let watches = futures::future::try_join_all(self.prefixes.iter().map(|p| store.watch(p, after))).await;
            match watches {
                Ok(streams) => {
                    let mut events = futures::stream::select_all(streams);
                    loop {
                        let event = tokio::select! {
                            _ = &mut shutdown => return,
                            event = events.next() => event,
                        };
                        match event {
                            Some(Ok(event)) => {
                                let value = (event.kind != EventKind::Delete).then_some(&event.kv.value[..]);
                                (self.apply)(&mut self.state.write().unwrap_or_else(|p| p.into_inner()), &event.kv.key, value);
                                // The epoch moves after the state: a reader that sees the
                                // new epoch also sees the new state.
                                self.epoch.fetch_add(1, Ordering::AcqRel);
                                self.mark_applied(event.revision());
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "watch ended; re-listing");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch failed; re-listing"),
            }
            if started.elapsed() >= Backoff::HEALTHY {
                backoff = Backoff::default();
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Delays between re-lists: 100 ms doubling to 10 s, each with up to 50 %
/// added jitter so that replicas do not re-list in step.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);
    /// A watch that lived this long was healthy: the next failure starts over.
    const HEALTHY: Duration = Duration::from_secs(30);

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Jitter from the clock's low bits: no need for a random generator here.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        let bases = [100u64, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay <= base.mul_f64(1.5), "{delay:?} for base {base:?}");
        }
    }
}
