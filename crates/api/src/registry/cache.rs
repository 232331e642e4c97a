//! The watch cache: an in-memory, revision-consistent copy of the store,
//! in the shape of kube-apiserver's cacher
//! (`k8s.io/apiserver/pkg/storage/cacher`), that serves get, list and watch
//! without touching the store.
//!
//! **One store watch feeds it.** A task lists the whole keyspace, then
//! watches it from the list's revision and applies each event under a write
//! lock; readers take a snapshot (the objects under a prefix and the revision
//! they are at) under a read lock, so a list is always one revision's state:
//! no object twice, none missing. kube keeps one cacher per resource and
//! learns that an idle resource is still current from etcd's progress
//! notifications; tessera's [`Store`] has no progress notifications, so one
//! watch over every key makes the cache's revision the store's revision, and
//! a consistent read ("the store's current revision, then wait until the
//! cache has it") needs nothing more. The objects of one resource are one key
//! range of the ordered map.
//!
//! **Encode once.** Each object is decoded and encoded to JSON once per
//! revision, when its event is applied ([`CachedObject`]); its protobuf body
//! is encoded at most once, when first asked for. Lists, gets and every
//! watcher's event reuse those bytes (`Bytes` clones share one buffer), and a
//! watch line is composed around them.
//!
//! **Bounded.** The ring of recent events that watches resume from holds at
//! most [`RING_EVENTS`] events and [`RING_BYTES`] of encoded objects; a watch
//! from an older revision is served by the store (which answers 410 Gone when
//! its own history is compacted), as kube-apiserver's cacher answers 410 for
//! what its ring no longer holds. A watcher more than [`FANOUT_CAPACITY`]
//! events behind is closed (kube closes an unresponsive watcher too), and
//! resumes from the last resourceVersion it saw. After a store watch failure
//! the cache lists again and closes every watcher it was feeding.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tessera_store::{EventKind, ListOptions, Revision, Store};
use tokio::sync::{broadcast, watch};

use crate::status::{ApiError, Result};

/// Events the ring keeps for watches that resume from a recent revision.
pub const RING_EVENTS: usize = 4096;
/// Encoded bytes of the objects the ring's events refer to, at most.
pub const RING_BYTES: usize = 16 << 20;
/// How far a watcher may fall behind the cache before it is closed.
pub const FANOUT_CAPACITY: usize = 1024;
/// How long a read waits for the cache to reach the revision it needs
/// (kube's `blockTimeout` in `waitUntilFreshAndBlock`: 3 s).
pub const FRESHNESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The whole keyspace: every key the API writes starts with `/`.
const ROOT: &str = "/";

/// One object at one revision, decoded and encoded once.
pub struct CachedObject {
    /// Shared with the cache's map: a key is held once (issue 14, memory).
    key: Arc<str>,
    revision: Revision,
    /// The object as JSON with `metadata.resourceVersion` set; empty when
    /// the stored bytes are not JSON (not an API object, or corrupt).
    json: Bytes,
    /// `value` as a protobuf body and where its message lies in it, once
    /// asked for (`None`: the kind has no protobuf form, or this object
    /// cannot be carried whole). Boxed: most objects are never asked for
    /// protobuf, and an empty cell costs 16 bytes instead of 56.
    protobuf: OnceLock<Option<Box<ProtobufBody>>>,
}

/// A protobuf response body and where the object's message lies in it.
type ProtobufBody = (Bytes, std::ops::Range<usize>);

impl std::fmt::Debug for CachedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedObject").field("key", &self.key).field("revision", &self.revision).finish_non_exhaustive()
    }
}

impl PartialEq for CachedObject {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.revision == other.revision
    }
}

impl CachedObject {
    /// Decodes a stored value at `revision` (its resourceVersion).
    fn decode(key: String, stored: &[u8], revision: Revision) -> Self {
        let value = serde_json::from_slice::<Value>(stored).ok().map(|mut v| {
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
            }
            v
        });
        // Exactly sized: the encoder's spare capacity would be held for as long as the object.
        let json = value.as_ref().and_then(|v| serde_json::to_vec(v).ok()).map(|j| Bytes::copy_from_slice(&j)).unwrap_or_default();
        Self { key: Arc::from(key), revision, json, protobuf: OnceLock::new() }
    }

    /// The store key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The revision this state was written at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The object, decoded from its JSON (500, as for a corrupt stored
    /// object, when it is not JSON).
    pub fn value(&self) -> Result<Value> {
        self.check()?;
        serde_json::from_slice(&self.json).map_err(|_| corrupt(&self.key))
    }

    /// Fails as [`Self::value`] would, without decoding.
    pub fn check(&self) -> Result<()> {
        if self.json.is_empty() { Err(corrupt(&self.key)) } else { Ok(()) }
    }

    /// Whether the object matches `labels` and `fields` (false when it is
    /// not JSON). Only the JSON is held — a decoded object costs about ten
    /// times as much memory — so a selector decodes it; most reads
    /// (informers' lists and watches) have none.
    pub fn matches(&self, labels: &crate::selector::LabelSelector, fields: &crate::selector::FieldSelector) -> bool {
        if labels.is_empty() && fields.is_empty() {
            return !self.json.is_empty();
        }
        self.value().is_ok_and(|v| labels.matches(&v) && fields.matches(&v))
    }

    /// The object's JSON, shared.
    pub fn json(&self) -> Bytes {
        self.json.clone()
    }

    /// The object's protobuf body, shared; encoded on first use.
    pub fn protobuf(&self) -> Option<Bytes> {
        self.protobuf_encoded().map(|(body, _)| body.clone())
    }

    /// The object's protobuf message (a list item), shared with its body.
    pub fn protobuf_message(&self) -> Option<Bytes> {
        self.protobuf_encoded().map(|(body, range)| body.slice(range.clone()))
    }

    fn protobuf_encoded(&self) -> Option<&(Bytes, std::ops::Range<usize>)> {
        self.protobuf
            .get_or_init(|| {
                let (body, range) = crate::protobuf::encode_object(&self.value().ok()?).ok()?;
                Some(Box::new((Bytes::from(body), range)))
            })
            .as_deref()
    }

    /// What this entry weighs in the ring's byte budget.
    fn weight(&self) -> usize {
        self.key.len() + self.json.len()
    }
}

fn corrupt(key: &str) -> ApiError {
    tracing::error!(key, "stored object is not JSON");
    ApiError::internal("stored object is corrupt; see server logs")
}

/// One applied store event.
#[derive(Debug)]
pub struct CachedEvent {
    /// Create, update or delete.
    pub kind: EventKind,
    /// The object after the change; for a delete, its last state at the
    /// deleting revision (what a DELETED watch event carries).
    pub object: Arc<CachedObject>,
    /// The object just before the change (`None` for a create).
    pub prev: Option<Arc<CachedObject>>,
}

impl CachedEvent {
    /// The revision of the write.
    pub fn revision(&self) -> Revision {
        self.object.revision
    }
}

struct State {
    objects: BTreeMap<Arc<str>, Arc<CachedObject>>,
    /// Every store event up to this revision is applied.
    revision: Revision,
    ring: VecDeque<Arc<CachedEvent>>,
    ring_bytes: usize,
    /// The ring holds every event after this revision.
    oldest: Revision,
    fanout: broadcast::Sender<Arc<CachedEvent>>,
    ready: bool,
}

/// A watch resumed from the cache: the ring's events after the requested
/// revision, then the live ones.
pub struct Subscription {
    /// Events already in the ring, oldest first.
    pub backlog: VecDeque<Arc<CachedEvent>>,
    /// Events applied from now on.
    pub live: broadcast::Receiver<Arc<CachedEvent>>,
}

/// Sizes, for metrics and the memory report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Objects held.
    pub objects: usize,
    /// Their encoded JSON, in bytes.
    pub json_bytes: usize,
    /// Events in the ring.
    pub ring_events: usize,
    /// Encoded bytes the ring's events refer to.
    pub ring_bytes: usize,
}

/// The cache. Create it with [`WatchCache::start`]; it follows the store
/// until the last handle to it is dropped (then at its next event).
pub struct WatchCache {
    state: RwLock<State>,
    /// The applied revision, for readers waiting to be fresh.
    progress: watch::Sender<Revision>,
}

impl WatchCache {
    /// A cache of `store`, filled and kept by a task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Arc<Self> {
        let cache = Arc::new(Self::empty());
        tokio::spawn(follow(Arc::downgrade(&cache), store));
        cache
    }

    fn empty() -> Self {
        Self {
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                revision: 0,
                ring: VecDeque::new(),
                ring_bytes: 0,
                oldest: 0,
                fanout: broadcast::channel(FANOUT_CAPACITY).0,
                ready: false,
            }),
            progress: watch::channel(0).0,
        }
    }

    // A panic cannot leave the state torn (each change is whole before the
    // lock is released), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the first list is loaded.
    pub fn is_ready(&self) -> bool {
        self.read().ready
    }

    /// The revision the cache is at.
    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// Waits (at most [`FRESHNESS_TIMEOUT`]) until the cache is at
    /// `revision` or later; on timeout, the revision it is at.
    pub async fn wait_fresh(&self, revision: Revision) -> std::result::Result<(), Revision> {
        let mut rx = self.progress.subscribe();
        let fresh = matches!(tokio::time::timeout(FRESHNESS_TIMEOUT, rx.wait_for(|r| *r >= revision)).await, Ok(Ok(_)));
        if fresh { Ok(()) } else { Err(*rx.borrow()) }
    }

    /// The objects under `prefix` in key order, at one revision.
    pub fn list(&self, prefix: &str) -> (Revision, Vec<Arc<CachedObject>>) {
        let state = self.read();
        let items = state
            .objects
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, o)| Arc::clone(o))
            .collect();
        (state.revision, items)
    }

    /// One object, with the revision the cache is at.
    pub fn get(&self, key: &str) -> (Revision, Option<Arc<CachedObject>>) {
        let state = self.read();
        (state.revision, state.objects.get(key).cloned())
    }

    /// A watch of `prefix` from after `after`, or `None` when the ring no
    /// longer holds (or the cache has not reached) that revision.
    pub fn watch(&self, prefix: &str, after: Revision) -> Option<Subscription> {
        let state = self.read();
        if !state.ready || after < state.oldest || after > state.revision {
            return None;
        }
        // Events are applied and sent under the write lock: subscribing
        // under the read lock leaves neither a gap nor an overlap.
        let live = state.fanout.subscribe();
        let skip = state.ring.partition_point(|e| e.revision() <= after);
        let backlog = state.ring.iter().skip(skip).filter(|e| e.object.key.starts_with(prefix)).cloned().collect();
        Some(Subscription { backlog, live })
    }

    /// Sizes of what the cache holds.
    pub fn stats(&self) -> Stats {
        let state = self.read();
        Stats {
            objects: state.objects.len(),
            json_bytes: state.objects.values().map(|o| o.json.len()).sum(),
            ring_events: state.ring.len(),
            ring_bytes: state.ring_bytes,
        }
    }

    /// Replaces the whole state with a fresh list; returns its revision.
    async fn relist(&self, store: &Arc<dyn Store>) -> tessera_store::Result<Revision> {
        let list = store.list(ROOT, ListOptions::default()).await?;
        let objects = list
            .items
            .into_iter()
            .map(|kv| {
                let object = CachedObject::decode(kv.key, &kv.value, kv.mod_revision);
                (Arc::clone(&object.key), Arc::new(object))
            })
            .collect();
        let mut state = self.write();
        state.objects = objects;
        state.revision = state.revision.max(list.revision);
        state.ring.clear();
        state.ring_bytes = 0;
        state.oldest = state.revision;
        // Watchers fed so far may have missed events: replacing the sender
        // closes them, and they resume from their last resourceVersion.
        state.fanout = broadcast::channel(FANOUT_CAPACITY).0;
        state.ready = true;
        let revision = state.revision;
        drop(state);
        self.mark(revision);
        Ok(list.revision)
    }

    /// Applies one store event.
    fn apply(&self, event: tessera_store::WatchEvent) {
        let revision = event.revision();
        let object = Arc::new(CachedObject::decode(event.kv.key, &event.kv.value, revision));
        let mut state = self.write();
        if revision <= state.revision {
            // Already in the list this watch started after.
            return;
        }
        let prev = match event.kind {
            EventKind::Delete => state.objects.remove(&*object.key),
            EventKind::Create | EventKind::Update => state.objects.insert(Arc::clone(&object.key), Arc::clone(&object)),
        };
        let event = Arc::new(CachedEvent { kind: event.kind, object, prev });
        state.revision = revision;
        state.ring_bytes += event.object.weight();
        state.ring.push_back(Arc::clone(&event));
        while state.ring.len() > RING_EVENTS || (state.ring_bytes > RING_BYTES && state.ring.len() > 1) {
            let Some(old) = state.ring.pop_front() else { break };
            state.ring_bytes -= old.object.weight();
            state.oldest = old.revision();
        }
        // No receivers is fine: nobody is watching.
        let _ = state.fanout.send(event);
        drop(state);
        self.mark(revision);
    }

    fn mark(&self, revision: Revision) {
        self.progress.send_if_modified(|r| (*r < revision).then(|| *r = revision).is_some());
    }
}

/// Lists and watches the store into `cache` until the cache is dropped.
async fn follow(cache: Weak<WatchCache>, store: Arc<dyn Store>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = cache.upgrade() else { return };
        let started = match strong.relist(&store).await {
            Ok(after) => store.watch(ROOT, after).await,
            Err(e) => Err(e),
        };
        drop(strong);
        match started {
            Ok(mut events) => {
                backoff = Duration::from_millis(100);
                while let Some(item) = events.next().await {
                    let Some(strong) = cache.upgrade() else { return };
                    match item {
                        Ok(event) => strong.apply(event),
                        Err(e) => {
                            tracing::warn!(error = %e, "watch cache: store watch ended; listing again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watch cache: cannot list or watch the store"),
        }
        // A store that keeps failing must not be listed in a loop.
        let jitter = rand::random_range(0.8..1.2);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
