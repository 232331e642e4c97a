//! [`Observed`]: a store for tests that passes every call through and records
//! what the code above it asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::{KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchStream};

/// Passes every call to `inner`, counting the keys read one by one and
/// recording the revision of every list (`0`: the latest).
pub struct Observed {
    inner: Arc<dyn Store>,
    gets: AtomicUsize,
    list_revisions: Mutex<Vec<Revision>>,
    local_revision: bool,
}

impl Observed {
    /// Observes `inner`, which tells its revision locally if it does.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, gets: AtomicUsize::new(0), list_revisions: Mutex::default(), local_revision: true }
    }

    /// The same, but it knows its revision only by asking (as etcd does).
    pub fn without_local_revision(self) -> Self {
        Self { local_revision: false, ..self }
    }

    /// The keys read one by one so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// The revisions of the lists since the last call, in order.
    pub fn take_list_revisions(&self) -> Vec<Revision> {
        std::mem::take(&mut *self.list_revisions.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait::async_trait]
impl Store for Observed {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        self.list_revisions.lock().unwrap_or_else(PoisonError::into_inner).push(options.revision);
        self.inner.list(prefix, options).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        self.inner.update(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.inner.delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    fn local_revision(&self) -> Option<Revision> {
        self.local_revision.then(|| self.inner.local_revision()).flatten()
    }
}
