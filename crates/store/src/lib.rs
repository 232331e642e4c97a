//! The storage layer under the tessera API: a key-value store with one global,
//! monotonic revision, optimistic concurrency on per-key modification revisions,
//! and watches that resume from a revision.
//!
//! The [`Store`] trait is shaped after etcd's KV and Watch APIs so that an etcd
//! backend maps onto it one-to-one: every write bumps the global revision, a key
//! remembers the revision that created it and the one that last modified it, and
//! a watch delivers every change after a given revision or fails with
//! [`Error::Compacted`] when that history is gone. The API layer uses the
//! modification revision as `metadata.resourceVersion`.
//!
//! Two backends:
//! - [`sqlite::SqliteStore`], embedded (WAL mode, `synchronous=FULL`: a write is
//!   on disk before it is acknowledged), for one server;
//! - [`etcd::EtcdStore`] (cargo feature `etcd`, on by default; building it needs
//!   `protoc`), for several servers sharing one etcd cluster: keys, revisions,
//!   transactions and watches are etcd's own, in Kubernetes' key layout.
//!
//! The `conformance` module (feature `conformance`) is the test suite every
//! backend must pass; both backends run it. [`leader::Leadership`] tells a
//! replica whether it runs the work that must run once ([`etcd::campaign`]
//! elects one replica with an etcd lease). `etcd::testing` (feature
//! `test-util`) starts real etcd processes for tests.
//!
//! Must not depend on: any other tessera crate, HTTP serving, Kubernetes types.
//! (The etcd backend's only network dependency is `etcd-client`'s gRPC.)

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
pub mod etcd;
#[cfg(any(test, feature = "conformance"))]
pub mod observed;
pub mod leader;
pub mod sqlite;

pub use error::{Error, Result};

/// A global store revision. A new SQLite store is at revision 0 and its first
/// write has revision 1; an etcd store uses etcd's cluster-wide revision (1 on
/// a new cluster). Revisions never go backwards.
pub type Revision = i64;

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/serviceaccounts/default/api`.
    pub key: String,
    /// The stored bytes (the API layer stores JSON).
    pub value: Bytes,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the write that last modified this key.
    pub mod_revision: Revision,
}

/// Options for [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items (0 = no limit).
    pub limit: usize,
    /// Only keys strictly greater than this one (used for paging with `continue`).
    pub start_after: Option<String>,
    /// Read the keys as they were at this revision (0 = the current one), so
    /// that every page of one paged list shows the same snapshot. Fails with
    /// [`Error::Compacted`] when that history is gone and with
    /// [`Error::FutureRevision`] when the store has not reached it.
    pub revision: Revision,
}

/// The result of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Matching keys in ascending key order.
    pub items: Vec<KeyValue>,
    /// The store's revision at the time of the read.
    pub revision: Revision,
    /// True when more keys match beyond `limit`.
    pub more: bool,
    /// When `more`: how many keys in the range follow the returned ones
    /// (kube's `remainingItemCount`; etcd's range `count` minus the page).
    pub remaining: Option<u64>,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created (it did not exist before this revision).
    Create,
    /// An existing key got a new value.
    Update,
    /// The key was deleted; `kv` holds the last value it had, with
    /// `mod_revision` set to the deleting revision.
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Create, update or delete.
    pub kind: EventKind,
    /// The key after the change (for deletes: the value before it, at the delete revision).
    pub kv: KeyValue,
    /// The key as it was just before the change (with its own revisions):
    /// `None` for a create. A filtered watch needs it to tell that an object
    /// stopped matching (kube-apiserver's watch cache keeps it for the same
    /// reason). `None` too for history written before the store kept it.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the write that produced this event.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A stream of watch events in revision order. It ends with an error item when
/// the watch can no longer be served (e.g. the history it needs was compacted).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// A key-value store with a global revision, optimistic concurrency and watches.
///
/// All methods are safe to call concurrently. Every successful write is durable
/// before the call returns.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists keys that start with `prefix`, in key order.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] when it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces the value of `key` if its current modification revision equals
    /// `expected`; otherwise fails with [`Error::Conflict`] (or
    /// [`Error::NotFound`] when the key is gone).
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue>;

    /// Deletes `key`, if `expected` is given only when its modification
    /// revision equals it. Returns the deleted key-value, with `mod_revision`
    /// set to the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Watches keys starting with `prefix` and delivers every change with a
    /// revision strictly greater than `after`. Fails with [`Error::Compacted`]
    /// when `after` is older than the compacted history.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forgets history at and before `revision`: later watches from older
    /// revisions fail with [`Error::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The current global revision.
    async fn revision(&self) -> Result<Revision>;

    /// The current global revision when this process is the store's only
    /// writer and knows it without a read (SQLite); `None` when asking costs
    /// a round trip (etcd). A consistent read is served from memory only
    /// when this makes it cheaper than reading the store.
    fn local_revision(&self) -> Option<Revision> {
        None
    }
}
