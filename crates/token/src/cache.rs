//! A cache of review results bounded in bytes, keyed by a SHA-256 of the
//! token: the server's TokenReview cache and the middleware's review cache.
//!
//! # Design
//! Tokens come from unauthenticated clients, so the cache must not be a way to
//! fill memory: the key is a 32-byte hash (a token is never stored, whatever
//! its size), every entry is charged its value's heap bytes plus a fixed
//! bookkeeping cost, and the total never exceeds the budget. When an insert
//! needs room, expired entries go first, then the entries closest to expiry:
//! an index ordered by expiry makes each eviction O(log n), so a flood of
//! garbage costs no more per request than a normal insert.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

/// The SHA-256 a cache entry is found by.
pub type CacheKey = [u8; 32];

/// SHA-256 over length-prefixed `parts`, so that no two different part lists
/// (a token and its audiences, say) can produce the same key.
pub fn cache_key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> CacheKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What the allocator takes for a heap block of `len` bytes (glibc: the size
/// plus an 8-byte header, in 16-byte steps, 32 at least), for callers charging
/// their values' strings.
pub fn heap_bytes(len: usize) -> usize {
    if len == 0 { 0 } else { (len + 8).next_multiple_of(16).max(32) }
}

/// Bytes charged for an entry besides its value's own heap blocks, in the worst
/// case: the boxed slot (value, expiry, charge), its bucket in the hash map
/// (which is at most 7/8 full and may just have doubled), and its entry in
/// the expiry index (B-tree nodes at least half full).
pub fn entry_overhead<V, T>() -> usize {
    let slot = heap_bytes(size_of::<Slot<V, T>>());
    let bucket = size_of::<CacheKey>() + size_of::<Box<Slot<V, T>>>() + 1;
    let index = size_of::<(T, u64, CacheKey)>();
    slot + bucket * 16 / 7 + index * 2
}

struct Slot<V, T> {
    value: V,
    expires: T,
    /// Insertion number: ties in the expiry index break by age.
    seq: u64,
    /// What the entry is charged (value bytes plus overhead).
    charge: usize,
}

struct Inner<V, T> {
    /// Slots are boxed so that the table's spare capacity costs pointers, not values.
    slots: HashMap<CacheKey, Box<Slot<V, T>>>,
    by_expiry: BTreeSet<(T, u64, CacheKey)>,
    bytes: usize,
    next_seq: u64,
}

/// A cache of `V` by [`CacheKey`], bounded to `max_bytes`, with expiry times
/// of type `T` (unix seconds on the server, an `Instant` in the middleware).
pub struct BoundedCache<V, T> {
    inner: RwLock<Inner<V, T>>,
    max_bytes: usize,
}

impl<V, T> std::fmt::Debug for BoundedCache<V, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("BoundedCache").field("entries", &inner.slots.len()).field("bytes", &inner.bytes).field("max_bytes", &self.max_bytes).finish()
    }
}

// === impl BoundedCache ===

impl<V: Clone, T: Ord + Copy> BoundedCache<V, T> {
    /// An empty cache that holds at most `max_bytes` (values plus bookkeeping).
    pub fn new(max_bytes: usize) -> Self {
        Self { inner: RwLock::new(Inner { slots: HashMap::new(), by_expiry: BTreeSet::new(), bytes: 0, next_seq: 0 }), max_bytes }
    }

    // A poisoned lock still holds a consistent cache: every mutation below
    // completes before anything that could panic.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<V, T>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<V, T>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The value under `key`, unless it expired at or before `now`.
    pub fn get(&self, key: &CacheKey, now: T) -> Option<V> {
        self.read().slots.get(key).filter(|slot| now < slot.expires).map(|slot| slot.value.clone())
    }

    /// Stores `value` (whose heap bytes are `value_bytes`) until `expires`,
    /// evicting expired entries first and then those closest to expiry until it
    /// fits. A value larger than the whole budget is not stored.
    pub fn insert(&self, key: CacheKey, value: V, value_bytes: usize, expires: T, now: T) {
        let charge = value_bytes.saturating_add(entry_overhead::<V, T>());
        if charge > self.max_bytes || expires <= now {
            return;
        }
        let mut inner = self.write();
        inner.remove(&key);
        while inner.bytes + charge > self.max_bytes {
            // Expired entries sort first; when there are none the entry closest
            // to its expiry is the one worth least.
            let Some(&(_, _, victim)) = inner.by_expiry.first() else { break };
            inner.remove(&victim);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.by_expiry.insert((expires, seq, key));
        inner.slots.insert(key, Box::new(Slot { value, expires, seq, charge }));
        inner.bytes += charge;
    }

    /// Drops the entries expired at `now` (otherwise they go only when an
    /// insert needs their room), and gives the table's spare room back once it
    /// is mostly empty: after a burst of distinct tokens the cache shrinks to
    /// what it still holds, not its high-water mark. Returns how many went.
    pub fn purge_expired(&self, now: T) -> usize {
        let mut inner = self.write();
        let mut purged = 0;
        while let Some(&(expires, _, victim)) = inner.by_expiry.first()
            && expires <= now
        {
            inner.remove(&victim);
            purged += 1;
        }
        if inner.slots.capacity() > 4 * inner.slots.len().max(64) {
            inner.slots.shrink_to_fit();
        }
        purged
    }

    /// Drops every entry.
    pub fn clear(&self) {
        let mut inner = self.write();
        inner.slots.clear();
        inner.by_expiry.clear();
        inner.bytes = 0;
    }

    /// Bytes charged to the entries held now (never more than [`Self::max_bytes`]).
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Number of entries (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.read().slots.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V, T: Ord + Copy> Inner<V, T> {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(slot) = self.slots.remove(key) {
            self.by_expiry.remove(&(slot.expires, slot.seq, *key));
            self.bytes -= slot.charge;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> CacheKey {
        cache_key([&i.to_be_bytes()[..]])
    }

    #[test]
    fn keys_are_length_prefixed() {
        assert_ne!(cache_key([&b"ab"[..], b"c"]), cache_key([&b"a"[..], b"bc"]));
        assert_ne!(cache_key([&b"ab"[..]]), cache_key([&b"ab"[..], b""]));
        assert_eq!(cache_key([&b"ab"[..], b"c"]), cache_key([&b"ab"[..], b"c"]));
    }

    #[test]
    fn hits_until_expiry() {
        let cache: BoundedCache<u32, i64> = BoundedCache::new(1 << 20);
        cache.insert(key(1), 7, 0, 10, 0);
        assert_eq!(cache.get(&key(1), 9), Some(7));
        assert_eq!(cache.get(&key(1), 10), None);
        assert_eq!(cache.get(&key(2), 0), None);
        // Already expired: not stored.
        cache.insert(key(3), 7, 0, 5, 5);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn purging_drops_exactly_the_expired_entries_and_the_spare_room() {
        let cache: BoundedCache<u32, i64> = BoundedCache::new(1 << 30);
        for i in 0..10_000u64 {
            cache.insert(key(i), 0, 100, if i < 9_990 { 10 } else { 20 }, 0);
        }
        assert_eq!(cache.purge_expired(9), 0);
        assert_eq!(cache.len(), 10_000);
        assert_eq!(cache.purge_expired(10), 9_990);
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.bytes(), 10 * (100 + entry_overhead::<u32, i64>()));
        assert!(cache.read().slots.capacity() < 1_000, "{}", cache.read().slots.capacity());
        assert_eq!(cache.get(&key(9_999), 10), Some(0));
        assert_eq!(cache.purge_expired(20), 10);
        assert!(cache.is_empty());
    }

    #[test]
    fn replacing_an_entry_keeps_the_accounting() {
        let cache: BoundedCache<u32, i64> = BoundedCache::new(1 << 20);
        cache.insert(key(1), 1, 100, 10, 0);
        cache.insert(key(1), 2, 300, 20, 0);
        assert_eq!(cache.get(&key(1), 15), Some(2));
        assert_eq!(cache.bytes(), 300 + entry_overhead::<u32, i64>());
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert_eq!((cache.bytes(), cache.len()), (0, 0));
    }

    #[test]
    fn expired_entries_go_first_then_the_closest_to_expiry() {
        let per_entry = 100 + entry_overhead::<u32, i64>();
        let cache: BoundedCache<u32, i64> = BoundedCache::new(per_entry * 3);
        cache.insert(key(1), 1, 100, 50, 0); // long-lived
        cache.insert(key(2), 2, 100, 5, 0); // expires first
        cache.insert(key(3), 3, 100, 30, 0);
        // Full. At t=10 entry 2 has expired: it goes, nothing else does.
        cache.insert(key(4), 4, 100, 40, 10);
        assert_eq!([1, 2, 3, 4].map(|i| cache.get(&key(i), 10)), [Some(1), None, Some(3), Some(4)]);
        // Full of live entries: the one closest to expiry (3) goes.
        cache.insert(key(5), 5, 100, 60, 10);
        assert_eq!([1, 3, 4, 5].map(|i| cache.get(&key(i), 10)), [Some(1), None, Some(4), Some(5)]);
        assert_eq!(cache.bytes(), per_entry * 3);
    }

    #[test]
    fn a_flood_stays_within_the_budget_and_larger_values_are_refused() {
        let budget = 64 * 1024;
        let cache: BoundedCache<u32, i64> = BoundedCache::new(budget);
        for i in 0..100_000u64 {
            cache.insert(key(i), 0, (i % 500) as usize, 1_000 + i as i64, 0);
            assert!(cache.bytes() <= budget);
        }
        assert!(cache.bytes() > budget / 2, "the budget is used, not wasted: {}", cache.bytes());
        // The newest entries survive a flood that expires in insertion order.
        assert_eq!(cache.get(&key(99_999), 0), Some(0));
        cache.insert(key(1), 1, budget, i64::MAX, 0);
        assert_eq!(cache.get(&key(1), 0), None);
    }
}
