//! Reads served from the [`WatchCache`](super::cache::WatchCache), with
//! kube-apiserver 1.32's rules for which reads its cacher serves:
//!
//! - **get**: without a `resourceVersion` a consistent read. kube reads it
//!   from etcd (`ConsistentListFromCache` covers lists only); tessera serves
//!   it from the cache once the cache has reached the store's current
//!   revision, when the store knows that revision without a read (SQLite,
//!   its only writer: the answer is the store's), and from the store
//!   otherwise (etcd, or a cache not caught up within 3 s). With `0` from
//!   the cache as it is; with `N` from the cache once it has reached `N`,
//!   after at most 3 s a 504 `Too large resource version`.
//! - **list**: from the store when it has a `continue` token, a `limit` with
//!   a `resourceVersion` other than `0`, or `resourceVersionMatch=Exact`
//!   (kube's `shouldDelegateList`). Otherwise from the cache: `0` as it is,
//!   and a `limit` at `0` is ignored (the whole list, no `continue`: kube
//!   serves paged lists at `0` from its cache the same way); `N` once the
//!   cache has reached it (504 after 3 s); no `resourceVersion` (a
//!   consistent list) once the cache has reached the store's current
//!   revision — `ConsistentListFromCache`, beta and on in 1.31+ — and from
//!   the store if it has not within 3 s.
//! - **watch**: from the cache's ring when it still holds the revision
//!   asked for; otherwise from the store, as before the cache. Unlike
//!   kube's cacher, a resourceVersion the store has compacted is never
//!   served from the ring: it gets the store's 410, so an object deleted
//!   before a compaction is not replayed from memory (tessera's contract).
//!
//! Until its first list is loaded, everything goes to the store.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use serde_json::{Value, json};
use tessera_store::{EventKind, Revision};
use tokio::sync::broadcast;

use super::cache::{CachedEvent, CachedObject, Subscription};
use super::read::{Bookmarks, Filter, bookmark, parse_resource_version};
use super::{ListParams, Registry, WatchEvent, list_object, storage_error};
use crate::resource::ResourceInfo;
use crate::status::{ApiError, Result};

/// A list served from the cache: the items' shared encodings and the
/// revision they are at.
#[derive(Debug)]
pub struct CachedList {
    kind: String,
    api_version: String,
    revision: Revision,
    items: Vec<Arc<CachedObject>>,
}

impl CachedList {
    /// The list as JSON, composed around each item's cached bytes. Keys come
    /// in the order serde_json writes the same list (sorted), so the bytes
    /// are those of the uncached path.
    pub fn to_json(&self) -> Bytes {
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let size: usize = self.items.iter().map(|o| o.json().len() + 1).sum();
        let mut out = BytesMut::with_capacity(size + 128);
        out.put_slice(b"{\"apiVersion\":");
        out.put_slice(text(&self.api_version).as_bytes());
        out.put_slice(b",\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&item.json());
        }
        out.put_slice(b"],\"kind\":");
        out.put_slice(text(&self.kind).as_bytes());
        out.put_slice(b",\"metadata\":{\"resourceVersion\":\"");
        out.put_slice(self.revision.to_string().as_bytes());
        out.put_slice(b"\"}}");
        out.freeze()
    }

    /// The list as a protobuf body composed from each item's cached
    /// message; `None` when an item has no protobuf form.
    pub fn to_protobuf(&self) -> Option<Bytes> {
        let messages: Option<Vec<Bytes>> = self.items.iter().map(|o| o.protobuf_message()).collect();
        let messages = messages?;
        let items: Vec<&[u8]> = messages.iter().map(|m| m.as_ref()).collect();
        crate::protobuf::encode_list(&self.api_version, &self.kind, &self.revision.to_string(), &items).ok().map(Bytes::from)
    }

    /// The revision the list is at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The items (each one decodes: the cache checked).
    pub fn items(&self) -> &[Arc<CachedObject>] {
        &self.items
    }

    /// The list as a `…List` object.
    pub fn to_value(&self, resource: &ResourceInfo) -> Value {
        let items = self.items.iter().filter_map(|o| o.value().ok()).collect();
        list_object(resource, items, self.revision, None)
    }
}

/// A list answer: from the cache (shared encodings) or from the store.
#[derive(Debug)]
pub enum ListBody {
    /// Served from the watch cache.
    Cached(CachedList),
    /// Served from the store.
    Value(Value),
}

impl ListBody {
    /// The list as a `…List` object.
    pub fn into_value(self, resource: &ResourceInfo) -> Value {
        match self {
            Self::Cached(list) => list.to_value(resource),
            Self::Value(v) => v,
        }
    }
}

/// A get answer: from the cache (shared encodings) or from the store.
#[derive(Debug)]
pub enum ObjectBody {
    /// Served from the watch cache.
    Cached(Arc<CachedObject>),
    /// Served from the store.
    Value(Value),
}

impl ObjectBody {
    /// The object.
    pub fn to_value(&self) -> Result<Value> {
        match self {
            Self::Cached(o) => o.value(),
            Self::Value(v) => Ok(v.clone()),
        }
    }
}

fn revision_of(rv: u64) -> Revision {
    Revision::try_from(rv).unwrap_or(Revision::MAX)
}

impl Registry {
    /// Gets an object, from the cache when `resource_version` lets it (see
    /// the module doc).
    pub async fn get_body(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str, resource_version: Option<&str>) -> Result<ObjectBody> {
        let rv_text = resource_version.unwrap_or_default();
        let cache = self.cache.as_ref().filter(|c| c.is_ready());
        let (Some(cache), false) = (cache, rv_text.is_empty()) else {
            return self.get(resource, namespace, name).await.map(ObjectBody::Value);
        };
        let rv = parse_resource_version(rv_text)?;
        if rv > 0 {
            let wanted = revision_of(rv);
            if let Err(current) = cache.wait_fresh(wanted).await {
                return Err(ApiError::too_large_resource_version(wanted, current));
            }
        }
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        match cache.get(&key).1 {
            Some(object) => {
                object.check()?;
                // Another version's encoding is rewritten, not shared.
                if resource.has_other_versions() {
                    return Ok(ObjectBody::Value(super::in_version(resource, object.value()?)));
                }
                Ok(ObjectBody::Cached(object))
            }
            None => Err(ApiError::not_found(resource, name)),
        }
    }

    /// A consistent get (no `resourceVersion`) from the cache, once it has
    /// reached the store's current revision; `None` when the store answers
    /// instead: no ready cache, a store that only knows its revision through
    /// a round trip (then reading the key costs no more), or a cache that did
    /// not catch up in time.
    pub(super) async fn get_consistent_from_cache(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Option<Result<Value>> {
        let cache = self.cache.as_ref().filter(|c| c.is_ready())?;
        let current = self.store.local_revision()?;
        if cache.wait_fresh(current).await.is_err() {
            tracing::warn!(resource = resource.plural, "watch cache behind the store: consistent get served by the store");
            return None;
        }
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        Some(match cache.get(&key).1 {
            Some(object) => object.value().map(|o| super::in_version(resource, o)),
            None => Err(ApiError::not_found(resource, name)),
        })
    }

    /// Lists objects, from the cache when the parameters let it (see the
    /// module doc), otherwise as [`Registry::list`].
    pub async fn list_body(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<ListBody> {
        match self.list_from_cache(resource, namespace, params).await? {
            Some(list) => Ok(ListBody::Cached(list)),
            None => self.list_from_store(resource, namespace, params).await.map(ListBody::Value),
        }
    }

    /// The list from the cache, or `None` when it goes to the store.
    pub(super) async fn list_from_cache(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<Option<CachedList>> {
        let Some(cache) = self.cache.as_ref().filter(|c| c.is_ready()) else { return Ok(None) };
        // Kinds served in several versions are listed from the store, which
        // rewrites each item's apiVersion (shared encodings cannot be).
        if resource.has_other_versions() {
            return Ok(None);
        }
        let rv_text = params.resource_version.as_deref().unwrap_or_default();
        let delegate = params.continue_token.is_some()
            || (params.limit > 0 && rv_text != "0")
            || params.resource_version_match.as_deref().is_some_and(|m| m != "NotOlderThan");
        if delegate {
            return Ok(None);
        }
        let rv = parse_resource_version(rv_text)?;
        if rv_text.is_empty() {
            let current = self.store.revision().await.map_err(storage_error)?;
            if cache.wait_fresh(current).await.is_err() {
                tracing::warn!(resource = resource.plural, "watch cache behind the store: consistent list served by the store");
                return Ok(None);
            }
        } else if rv > 0 {
            let wanted = revision_of(rv);
            if let Err(current) = cache.wait_fresh(wanted).await {
                return Err(ApiError::too_large_resource_version(wanted, current));
            }
        }
        let ns = Self::namespace_of(resource, namespace);
        let (revision, objects) = match params.fields.required_name() {
            // A name pinned by the field selector is one key: no scan.
            Some(name) if ns.is_some() == resource.namespaced => {
                let (revision, object) = cache.get(&resource.key(ns, name));
                (revision, object.into_iter().collect())
            }
            _ => cache.list(&resource.key_prefix(ns)),
        };
        let mut items = Vec::with_capacity(objects.len());
        for object in objects {
            object.check()?;
            if object.matches(&params.labels, &params.fields) {
                items.push(object);
            }
        }
        Ok(Some(CachedList { kind: format!("{}List", resource.kind), api_version: resource.api_version(), revision, items }))
    }

    /// Whether the store still has its history after `after` (a one-key
    /// read at that revision fails when it is compacted).
    pub(super) async fn store_has_history(&self, prefix: &str, after: Revision) -> bool {
        let options = tessera_store::ListOptions { limit: 1, start_after: None, revision: after };
        !matches!(self.store.list(prefix, options).await, Err(tessera_store::Error::Compacted { .. }))
    }

    /// A watch of `prefix` after `after` from the cache's ring, or `None`.
    pub(super) fn watch_from_cache(&self, prefix: &str, after: Revision) -> Option<Subscription> {
        self.cache.as_ref().filter(|c| c.is_ready())?.watch(prefix, after)
    }
}

/// The live part of a watch served from the cache.
pub(super) struct CachedWatch {
    pub(super) backlog: VecDeque<Arc<CachedEvent>>,
    pub(super) live: broadcast::Receiver<Arc<CachedEvent>>,
    pub(super) prefix: String,
    pub(super) after: Revision,
    pub(super) filter: Filter,
    /// Every event up to this revision has passed through.
    pub(super) progress: Revision,
    pub(super) bookmarks: Option<Bookmarks>,
    pub(super) kind: String,
    pub(super) api_version: String,
}

impl CachedWatch {
    pub(super) fn into_stream(self) -> impl Stream<Item = WatchEvent> + Send + 'static {
        futures::stream::unfold(self, |mut w| async move {
            let event = w.next().await?;
            Some((event, w))
        })
    }

    async fn recv(&mut self) -> Option<Option<Arc<CachedEvent>>> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(Some(event));
        }
        let due = self.bookmarks.as_ref().and_then(|b| b.next);
        let received = match due {
            Some(at) => tokio::select! {
                r = self.live.recv() => r,
                _ = tokio::time::sleep_until(at) => return Some(None),
            },
            None => self.live.recv().await,
        };
        match received {
            Ok(event) => Some(Some(event)),
            // Closed: the cache listed again. Lagged: this watcher fell too
            // far behind. kube's cacher ends such a watch; the client
            // resumes from the last resourceVersion it saw.
            Err(broadcast::error::RecvError::Closed) => None,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(prefix = %self.prefix, missed = n, "watcher too far behind the watch cache: closing it");
                None
            }
        }
    }

    /// The next wire event, or `None` once the watch has ended.
    async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.recv().await? {
                None => {
                    if let Some(b) = &mut self.bookmarks {
                        b.schedule();
                    }
                    let object = bookmark(&self.kind, &self.api_version, self.progress, false);
                    return Some(WatchEvent { shared: None, type_: "BOOKMARK", object });
                }
                Some(event) => {
                    self.progress = self.progress.max(event.revision());
                    if event.revision() <= self.after || !event.object.key().starts_with(&self.prefix) {
                        continue;
                    }
                    if let Some(event) = convert(&event, &self.filter) {
                        return Some(event);
                    }
                }
            }
        }
    }
}

/// A wire event carrying a cached object's shared encodings.
fn shared(type_: &'static str, object: &Arc<CachedObject>) -> WatchEvent {
    match object.check() {
        Ok(()) => WatchEvent { shared: Some(Arc::clone(object)), type_, object: Value::Null },
        Err(e) => WatchEvent { shared: None, type_: "ERROR", object: e.to_status() },
    }
}

/// kube's `convertToWatchEvent` on a cached event (see `read::convert_event`).
fn convert(ev: &CachedEvent, filter: &Filter) -> Option<WatchEvent> {
    if filter.is_everything() {
        let type_ = match ev.kind {
            EventKind::Create => "ADDED",
            EventKind::Update => "MODIFIED",
            EventKind::Delete => "DELETED",
        };
        return Some(shared(type_, &ev.object));
    }
    let matches = |o: &Arc<CachedObject>| o.matches(&filter.labels, &filter.fields);
    let (now, before) = match ev.kind {
        EventKind::Create => (matches(&ev.object), false),
        EventKind::Update => (matches(&ev.object), ev.prev.as_ref().is_some_and(matches)),
        // The deleted object's last state is the event's object.
        EventKind::Delete => (false, matches(&ev.object)),
    };
    match (now, before) {
        (true, false) => Some(shared("ADDED", &ev.object)),
        (true, true) => Some(shared("MODIFIED", &ev.object)),
        (false, true) if ev.kind == EventKind::Delete => Some(shared("DELETED", &ev.object)),
        (false, true) => {
            // It stopped matching: its previous state, at this event's
            // resourceVersion (rare: encoded for this watcher alone).
            let prev = ev.prev.as_ref()?;
            let mut object = prev.value().ok()?;
            object["metadata"]["resourceVersion"] = json!(ev.revision().to_string());
            Some(WatchEvent { shared: None, type_: "DELETED", object })
        }
        (false, false) => None,
    }
}
