//! The backend conformance suite: the behaviour every [`Store`] implementation
//! must show, written once for all backends.
//!
//! Each case is a `pub async fn` that takes a fresh, empty store and panics on
//! failure. [`store_conformance_suite!`](crate::store_conformance_suite) expands
//! to one `#[tokio::test]` per case; the calling crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features (as a dev-dependency is enough).
//!
//! ```text
//! mod conformance {
//!     use std::sync::Arc;
//!     use tessera_store::Store;
//!
//!     // The expression is evaluated once per test and must produce something
//!     // that converts into a `Fixture`: an `Arc<dyn Store>`, or a pair of the
//!     // store and a guard kept alive until the test ends (e.g. a temp dir).
//!     tessera_store::store_conformance_suite!(async {
//!         let dir = tempfile::tempdir().expect("temp dir");
//!         let store = MyStore::open(dir.path()).expect("open");
//!         (Arc::new(store) as Arc<dyn Store>, dir)
//!     });
//! }
//! ```
//!
//! The cases never sleep to synchronise: they write, then await the next watch
//! event, with a timeout only as a guard against hanging.
//!
//! Revisions are checked relative to the store's revision when the case
//! starts (its *base*): a new SQLite store starts at 0, an etcd store at
//! whatever revision its cluster has reached. Each case needs the store's
//! revision to itself while it runs (no other writer), so a backend that
//! shares one server between cases runs them one at a time. A fixture states
//! the revision it starts at ([`Fixture::starting_at`]), and
//! [`run`] checks it before the case.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::timeout;

use crate::{Error, EventKind, KeyValue, ListOptions, Revision, Store, WatchEvent, WatchStream};

/// How long a case waits for one watch event before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole case may take before failing.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// A store under test, plus whatever must outlive it (a temp dir, a server).
pub struct Fixture {
    store: Arc<dyn Store>,
    initial_revision: Revision,
    // Declared after `store` so it is dropped after it.
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// A fixture with nothing to keep alive, for a new store at revision 0.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Fixture {
            store,
            initial_revision: 0,
            _guard: Box::new(()),
        }
    }

    /// A fixture that keeps `guard` alive until the store is dropped, for a
    /// new store at revision 0.
    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Fixture {
            store,
            initial_revision: 0,
            _guard: Box::new(guard),
        }
    }

    /// The store starts at `revision` rather than 0 (e.g. a store on an etcd
    /// cluster that earlier cases wrote to).
    pub fn starting_at(mut self, revision: Revision) -> Self {
        self.initial_revision = revision;
        self
    }

    /// The store under test.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

impl From<Arc<dyn Store>> for Fixture {
    fn from(store: Arc<dyn Store>) -> Self {
        Fixture::new(store)
    }
}

impl<G: Any + Send> From<(Arc<dyn Store>, G)> for Fixture {
    fn from((store, guard): (Arc<dyn Store>, G)) -> Self {
        Fixture::with_guard(store, guard)
    }
}

/// Runs one case against the fixture's store, failing it after a generous
/// timeout. Used by [`store_conformance_suite!`](crate::store_conformance_suite).
pub async fn run<C, F>(fixture: impl Into<Fixture>, case: C)
where
    C: FnOnce(Arc<dyn Store>) -> F,
    F: Future<Output = ()>,
{
    let fixture = fixture.into();
    let store = fixture.store();
    let checked = async move {
        let start = revision(&*store).await;
        assert_eq!(
            start, fixture.initial_revision,
            "the store starts at the fixture's initial revision"
        );
        case(store).await;
        fixture
    };
    match timeout(CASE_TIMEOUT, checked).await {
        Ok(fixture) => drop(fixture),
        Err(_) => panic!("conformance case did not finish within {CASE_TIMEOUT:?}"),
    }
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an
/// expression (usually an `async` block) evaluated and awaited once per test,
/// producing a fresh, empty store as anything that converts into
/// [`conformance::Fixture`](crate::conformance::Fixture).
#[macro_export]
macro_rules! store_conformance_suite {
    ($make:expr) => {
        $crate::store_conformance_suite!(@cases ($make)
            revisions_increase_by_one_per_write,
            create_then_get,
            create_existing_key_fails,
            update_with_current_revision,
            update_with_stale_revision_conflicts,
            update_missing_key_is_not_found,
            delete_without_precondition,
            delete_with_matching_precondition,
            delete_with_stale_precondition_conflicts,
            delete_missing_key_is_not_found,
            create_after_delete_gets_new_create_revision,
            list_prefix_excludes_siblings,
            list_paging_visits_every_key_once,
            list_revision_is_current_revision,
            watch_from_zero_sees_every_change_in_order,
            watch_resumes_after_middle_revision,
            watch_sees_only_its_prefix,
            watch_delivers_live_events,
            watch_is_gapless_across_history_and_live,
            concurrent_updates_lose_nothing,
            compaction_rejects_older_watches,
            compaction_keeps_current_data,
            compaction_forgets_deleted_values,
            live_watches_survive_compaction,
            compaction_never_leaves_a_gap_in_a_lagging_watch,
            compaction_concurrent_with_writes_loses_nothing,
            compact_to_future_revision_fails,
            watch_from_future_revision_fails,
            watch_events_carry_the_previous_value,
            list_at_a_past_revision,
            list_at_a_compacted_or_future_revision_fails,
            previous_values_survive_compaction,
        );
    };
    (@cases ($make:expr) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::run($make.await, $crate::conformance::$case).await;
            }
        )*
    };
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next event of `stream`; fails the case if it ends, errors or stalls.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
        Ok(None) => panic!("watch stream ended unexpectedly"),
        Ok(Some(Err(err))) => panic!("watch stream failed: {err}"),
        Ok(Some(Ok(event))) => event,
    }
}

async fn revision(store: &dyn Store) -> Revision {
    store.revision().await.expect("revision")
}

async fn create(store: &dyn Store, key: &str, value: &str) -> KeyValue {
    store
        .create(key, bytes(value))
        .await
        .unwrap_or_else(|err| panic!("create {key}: {err}"))
}

fn assert_event(event: &WatchEvent, kind: EventKind, kv: &KeyValue) {
    assert_eq!(
        &event.kind,
        &kind,
        "event kind at revision {}",
        event.revision()
    );
    assert_eq!(
        &event.kv,
        kv,
        "event key-value at revision {}",
        event.revision()
    );
}

/// Every write, to any key, bumps the revision by exactly one, starting from
/// the store's initial revision (which [`run`] checks against the fixture).
pub async fn revisions_increase_by_one_per_write(store: Arc<dyn Store>) {
    let store = &*store;
    let base = revision(store).await;
    let a = create(store, "/r/a", "1").await;
    assert_eq!((a.create_revision, a.mod_revision), (base + 1, base + 1));
    let b = create(store, "/r/b", "1").await;
    assert_eq!((b.create_revision, b.mod_revision), (base + 2, base + 2));
    let a2 = store
        .update("/r/a", bytes("2"), base + 1)
        .await
        .expect("update /r/a");
    assert_eq!((a2.create_revision, a2.mod_revision), (base + 1, base + 3));
    let deleted = store.delete("/r/b", None).await.expect("delete /r/b");
    assert_eq!(deleted.mod_revision, base + 4);
    let c = create(store, "/other/c", "1").await;
    assert_eq!(c.mod_revision, base + 5);
    assert_eq!(revision(store).await, base + 5);
}

/// A created key reads back with its value and revisions; a missing key reads as `None`.
pub async fn create_then_get(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/g/key", "value").await;
    assert_eq!(created.key, "/g/key");
    assert_eq!(created.value, bytes("value"));
    assert_eq!(created.create_revision, created.mod_revision);
    let got = store.get("/g/key").await.expect("get");
    assert_eq!(got, Some(created));
    assert_eq!(store.get("/g/missing").await.expect("get"), None);
    assert_eq!(store.get("/g/").await.expect("get"), None);
    // Binary values round-trip unchanged.
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255, 0]);
    let kv = store
        .create("/g/binary", binary.clone())
        .await
        .expect("create binary");
    assert_eq!(kv.value, binary);
    assert_eq!(
        store
            .get("/g/binary")
            .await
            .expect("get")
            .map(|kv| kv.value),
        Some(binary)
    );
}

/// Creating an existing key fails with `AlreadyExists` and changes nothing.
pub async fn create_existing_key_fails(store: Arc<dyn Store>) {
    let store = &*store;
    let original = create(store, "/c/key", "first").await;
    match store.create("/c/key", bytes("second")).await {
        Err(Error::AlreadyExists(key)) => assert_eq!(key, "/c/key"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store.get("/c/key").await.expect("get"),
        Some(original.clone())
    );
    assert_eq!(revision(store).await, original.mod_revision);
}

/// An update with the current modification revision replaces the value and
/// keeps the create revision.
pub async fn update_with_current_revision(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/u/key", "v1").await;
    create(store, "/u/other", "x").await;
    let updated = store
        .update("/u/key", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    assert_eq!(updated.key, "/u/key");
    assert_eq!(updated.value, bytes("v2"));
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.mod_revision, revision(store).await);
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(
        store.get("/u/key").await.expect("get"),
        Some(updated.clone())
    );
    let again = store
        .update("/u/key", bytes("v3"), updated.mod_revision)
        .await
        .expect("second update");
    assert_eq!(again.mod_revision, updated.mod_revision + 1);
}

/// An update with a stale revision fails with `Conflict` naming the current
/// revision, and changes nothing.
pub async fn update_with_stale_revision_conflicts(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/u/key", "v1").await;
    let updated = store
        .update("/u/key", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    let before = revision(store).await;
    match store
        .update("/u/key", bytes("v3"), created.mod_revision)
        .await
    {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/u/key");
            assert_eq!(expected, created.mod_revision);
            assert_eq!(current, updated.mod_revision);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/u/key").await.expect("get"), Some(updated));
    assert_eq!(revision(store).await, before);
}

/// Updating a missing key fails with `NotFound`.
pub async fn update_missing_key_is_not_found(store: Arc<dyn Store>) {
    let store = &*store;
    let base = revision(store).await;
    match store.update("/u/missing", bytes("v"), 0).await {
        Err(Error::NotFound(key)) => assert_eq!(key, "/u/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let gone = create(store, "/u/gone", "v").await;
    store.delete("/u/gone", None).await.expect("delete");
    match store.update("/u/gone", bytes("v"), gone.mod_revision).await {
        Err(Error::NotFound(key)) => assert_eq!(key, "/u/gone"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(revision(store).await, base + 2);
}

/// A delete without precondition removes the key and returns its last value
/// with `mod_revision` set to the delete's revision.
pub async fn delete_without_precondition(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/d/key", "v1").await;
    let updated = store
        .update("/d/key", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    let deleted = store.delete("/d/key", None).await.expect("delete");
    assert_eq!(deleted.key, "/d/key");
    assert_eq!(deleted.value, bytes("v2"));
    assert_eq!(deleted.create_revision, created.create_revision);
    assert_eq!(deleted.mod_revision, updated.mod_revision + 1);
    assert_eq!(revision(store).await, deleted.mod_revision);
    assert_eq!(store.get("/d/key").await.expect("get"), None);
}

/// A delete whose precondition matches the current revision succeeds.
pub async fn delete_with_matching_precondition(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/d/key", "v1").await;
    let deleted = store
        .delete("/d/key", Some(created.mod_revision))
        .await
        .expect("delete");
    assert_eq!(deleted.value, bytes("v1"));
    assert_eq!(deleted.mod_revision, created.mod_revision + 1);
    assert_eq!(store.get("/d/key").await.expect("get"), None);
}

/// A delete with a stale precondition fails with `Conflict` and keeps the key.
pub async fn delete_with_stale_precondition_conflicts(store: Arc<dyn Store>) {
    let store = &*store;
    let created = create(store, "/d/key", "v1").await;
    let updated = store
        .update("/d/key", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    match store.delete("/d/key", Some(created.mod_revision)).await {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/d/key");
            assert_eq!(expected, created.mod_revision);
            assert_eq!(current, updated.mod_revision);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(
        store.get("/d/key").await.expect("get"),
        Some(updated.clone())
    );
    assert_eq!(revision(store).await, updated.mod_revision);
}

/// Deleting a missing key fails with `NotFound`, with or without precondition.
pub async fn delete_missing_key_is_not_found(store: Arc<dyn Store>) {
    let store = &*store;
    let base = revision(store).await;
    for expected in [None, Some(base + 1)] {
        match store.delete("/d/missing", expected).await {
            Err(Error::NotFound(key)) => assert_eq!(key, "/d/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    create(store, "/d/key", "v").await;
    store.delete("/d/key", None).await.expect("delete");
    match store.delete("/d/key", None).await {
        Err(Error::NotFound(key)) => assert_eq!(key, "/d/key"),
        other => panic!("expected NotFound on second delete, got {other:?}"),
    }
    assert_eq!(revision(store).await, base + 2);
}

/// Re-creating a deleted key starts a new life with a new create revision.
pub async fn create_after_delete_gets_new_create_revision(store: Arc<dyn Store>) {
    let store = &*store;
    let first = create(store, "/k", "one").await;
    store.delete("/k", None).await.expect("delete");
    let second = create(store, "/k", "two").await;
    assert_eq!(second.create_revision, first.create_revision + 2);
    assert_eq!(second.mod_revision, second.create_revision);
    assert_eq!(second.value, bytes("two"));
    assert_eq!(store.get("/k").await.expect("get"), Some(second));
}

/// Listing a prefix returns exactly the keys under it, in key order, and not
/// those under sibling prefixes that merely share leading characters.
pub async fn list_prefix_excludes_siblings(store: Arc<dyn Store>) {
    let store = &*store;
    let keys = [
        "/a/b",
        "/a/b/1",
        "/a/b/2",
        "/a/b/x/deep",
        "/a/b/\u{e9}",
        "/a/b/\u{10FFFF}",
        "/a/b0",
        "/a/ba",
        "/a/bc/1",
        "/a/c/1",
        "/b/1",
        "/a/",
    ];
    for key in keys {
        create(store, key, key).await;
    }
    let keys_of = |prefix: &'static str| async move {
        let result = store
            .list(prefix, ListOptions::default())
            .await
            .unwrap_or_else(|err| panic!("list {prefix}: {err}"));
        assert!(!result.more);
        for kv in &result.items {
            assert_eq!(kv.value, bytes(&kv.key), "value of {}", kv.key);
        }
        result
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys_of("/a/b/").await,
        [
            "/a/b/1",
            "/a/b/2",
            "/a/b/x/deep",
            "/a/b/\u{e9}",
            "/a/b/\u{10FFFF}"
        ]
    );
    assert_eq!(keys_of("/a/bc/").await, ["/a/bc/1"]);
    assert_eq!(keys_of("/a/c/").await, ["/a/c/1"]);
    assert_eq!(keys_of("/a/d/").await, Vec::<String>::new());
    assert_eq!(
        keys_of("/a/").await,
        [
            "/a/",
            "/a/b",
            "/a/b/1",
            "/a/b/2",
            "/a/b/x/deep",
            "/a/b/\u{e9}",
            "/a/b/\u{10FFFF}",
            "/a/b0",
            "/a/ba",
            "/a/bc/1",
            "/a/c/1"
        ]
    );
    let mut all: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    all.sort();
    assert_eq!(keys_of("").await, all);
}

/// Paging with `limit` and `start_after` visits every key exactly once, in
/// order, and `more` is set exactly when keys remain.
pub async fn list_paging_visits_every_key_once(store: Arc<dyn Store>) {
    let store = &*store;
    let mut expected = Vec::new();
    for i in 0..23 {
        let key = format!("/p/item-{i:03}");
        create(store, &key, "v").await;
        expected.push(key);
    }
    create(store, "/q/outside", "v").await;
    create(store, "/o/outside", "v").await;

    for limit in [1, 5, 7, 22, 23, 24, 100] {
        let mut seen = Vec::new();
        let mut start_after = None;
        let mut pages = 0;
        loop {
            let page = store
                .list("/p/", ListOptions { limit, start_after, ..ListOptions::default() })
                .await
                .expect("list page");
            pages += 1;
            assert!(page.items.len() <= limit, "page longer than limit {limit}");
            seen.extend(page.items.iter().map(|kv| kv.key.clone()));
            if !page.more {
                assert_eq!(page.remaining, None);
                break;
            }
            // What follows this page within the prefix (kube's remainingItemCount).
            assert_eq!(page.remaining, Some((expected.len() - seen.len()) as u64), "remaining with limit {limit}");
            assert_eq!(page.items.len(), limit, "a page with more is full");
            start_after = page.items.last().map(|kv| kv.key.clone());
            assert!(pages <= expected.len(), "paging does not terminate");
        }
        assert_eq!(seen, expected, "paging with limit {limit}");
        assert_eq!(
            pages,
            expected.len().div_ceil(limit),
            "pages with limit {limit}"
        );
    }

    // No limit lists everything; start_after alone skips through that key.
    let all = store
        .list("/p/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(all.items.len(), expected.len());
    assert!(!all.more);
    let rest = store
        .list(
            "/p/",
            ListOptions {
                limit: 0,
                start_after: Some(expected[20].clone()),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list");
    let rest: Vec<_> = rest.items.into_iter().map(|kv| kv.key).collect();
    assert_eq!(rest, expected[21..]);
}

/// A list reports the store's current revision, also when nothing matches.
pub async fn list_revision_is_current_revision(store: Arc<dyn Store>) {
    let store = &*store;
    let base = revision(store).await;
    let empty = store
        .list("/l/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        (empty.revision, empty.items.len(), empty.more),
        (base, 0, false)
    );
    let a = create(store, "/l/a", "v").await;
    store
        .update("/l/a", bytes("w"), a.mod_revision)
        .await
        .expect("update");
    create(store, "/m/b", "v").await;
    let current = revision(store).await;
    assert_eq!(current, base + 3);
    for prefix in ["/l/", "/m/", "/n/", ""] {
        let result = store
            .list(prefix, ListOptions::default())
            .await
            .expect("list");
        assert_eq!(result.revision, current, "list {prefix:?} revision");
        assert!(result.items.iter().all(|kv| kv.mod_revision <= current));
    }
}

/// A watch from the initial revision replays every change in order with the
/// right kinds and values, then keeps going with live changes.
pub async fn watch_from_zero_sees_every_change_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let a1 = create(s, "/w/a", "a1").await;
    let b1 = create(s, "/w/b", "b1").await;
    let a2 = s
        .update("/w/a", bytes("a2"), a1.mod_revision)
        .await
        .expect("update");
    let b_deleted = s
        .delete("/w/b", Some(b1.mod_revision))
        .await
        .expect("delete");
    let b2 = create(s, "/w/b", "b2").await;

    let mut watch = s.watch("/w/", base).await.expect("watch");
    assert_event(&next_event(&mut watch).await, EventKind::Create, &a1);
    assert_event(&next_event(&mut watch).await, EventKind::Create, &b1);
    assert_event(&next_event(&mut watch).await, EventKind::Update, &a2);
    let deleted = next_event(&mut watch).await;
    assert_event(&deleted, EventKind::Delete, &b_deleted);
    assert_eq!(
        deleted.kv.value,
        bytes("b1"),
        "a delete carries the last value"
    );
    assert_eq!(deleted.revision(), base + 4);
    assert_eq!(deleted.kv.create_revision, b1.create_revision);
    assert_event(&next_event(&mut watch).await, EventKind::Create, &b2);

    let a_deleted = s.delete("/w/a", None).await.expect("delete");
    assert_event(&next_event(&mut watch).await, EventKind::Delete, &a_deleted);
    assert_eq!(a_deleted.value, bytes("a2"));
    assert_eq!(a_deleted.mod_revision, base + 6);
}

/// A watch from a middle revision delivers exactly the changes after it.
pub async fn watch_resumes_after_middle_revision(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let mut kvs = Vec::new();
    for i in 0..10 {
        kvs.push(create(s, &format!("/w/{i}"), "v").await);
    }
    for after in [0, 1, 4, 9] {
        let mut watch = s.watch("/w/", base + after).await.expect("watch");
        for kv in &kvs[usize::try_from(after).expect("small revision")..] {
            assert_event(&next_event(&mut watch).await, EventKind::Create, kv);
        }
        // Nothing else is pending: the next event is the next write.
        let next = create(s, &format!("/w/live-{after}"), "v").await;
        assert_event(&next_event(&mut watch).await, EventKind::Create, &next);
        kvs.push(next);
    }
    // Watching from the current revision delivers only later writes.
    let mut watch = s.watch("/w/", revision(s).await).await.expect("watch");
    let next = create(s, "/w/last", "v").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &next);
}

/// A watch delivers only keys under its prefix, from history and live.
pub async fn watch_sees_only_its_prefix(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    create(s, "/w/ab/x", "sibling").await;
    let inside = create(s, "/w/a/x", "inside").await;
    create(s, "/w/a", "parent").await;
    create(s, "/v/a/x", "elsewhere").await;

    let mut watch = s.watch("/w/a/", base).await.expect("watch");
    assert_event(&next_event(&mut watch).await, EventKind::Create, &inside);
    create(s, "/w/ab/y", "sibling").await;
    create(s, "/w/b/y", "other").await;
    let deleted_outside = s.delete("/w/a", None).await.expect("delete");
    assert_eq!(deleted_outside.key, "/w/a");
    let live = create(s, "/w/a/y", "inside").await;
    // The writes outside the prefix came first; the next event must be this one.
    assert_event(&next_event(&mut watch).await, EventKind::Create, &live);
    let deleted = s.delete("/w/a/x", None).await.expect("delete");
    assert_event(&next_event(&mut watch).await, EventKind::Delete, &deleted);

    // An empty prefix sees everything.
    let mut all = s.watch("", base).await.expect("watch all");
    for rev in base + 1..=revision(s).await {
        assert_eq!(next_event(&mut all).await.revision(), rev);
    }
}

/// Changes made after a watch starts are delivered to it.
pub async fn watch_delivers_live_events(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let mut watch = s.watch("/live/", base).await.expect("watch");
    let created = create(s, "/live/k", "v1").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &created);
    let updated = s
        .update("/live/k", bytes("v2"), created.mod_revision)
        .await
        .expect("update");
    assert_event(&next_event(&mut watch).await, EventKind::Update, &updated);
    let deleted = s.delete("/live/k", None).await.expect("delete");
    assert_event(&next_event(&mut watch).await, EventKind::Delete, &deleted);

    // Two watchers on the same prefix each get every event.
    let mut second = s
        .watch("/live/", deleted.mod_revision)
        .await
        .expect("watch");
    let again = create(s, "/live/k", "v3").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &again);
    assert_event(&next_event(&mut second).await, EventKind::Create, &again);
}

/// A watch started while writes are in flight delivers every revision exactly
/// once and in order, across the switch from history to live events.
pub async fn watch_is_gapless_across_history_and_live(store: Arc<dyn Store>) {
    const TOTAL: i64 = 150;
    const START_AFTER: i64 = 40;
    let base = revision(&*store).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        let mut started = Some(started_tx);
        for i in 1..=TOTAL {
            let kv = create(&*writer_store, &format!("/g/{i:04}"), &i.to_string()).await;
            assert_eq!(kv.mod_revision, base + i);
            if i == START_AFTER
                && let Some(tx) = started.take()
            {
                let _ = tx.send(());
            }
        }
    });
    started_rx.await.expect("writer reached the start point");
    // Writes keep going while these watches start.
    let mut from_zero = store.watch("/g/", base).await.expect("watch from 0");
    let mut from_middle = store.watch("/g/", base + 20).await.expect("watch from 20");
    for rev in 1..=TOTAL {
        let event = next_event(&mut from_zero).await;
        assert_eq!(event.revision(), base + rev);
        assert_eq!(event.kind, EventKind::Create);
        assert_eq!(event.kv.key, format!("/g/{rev:04}"));
        assert_eq!(event.kv.value, bytes(&rev.to_string()));
    }
    for rev in 21..=TOTAL {
        assert_eq!(next_event(&mut from_middle).await.revision(), base + rev);
    }
    writer.await.expect("writer task");
}

/// Concurrent read-modify-write loops on one key with retry on conflict lose
/// no update, and every successful write bumps the revision by one.
pub async fn concurrent_updates_lose_nothing(store: Arc<dyn Store>) {
    const TASKS: u64 = 8;
    const UPDATES: u64 = 50;
    let created = create(&*store, "/counter", "0").await;
    let mut watch = store
        .watch("/counter", created.mod_revision)
        .await
        .expect("watch");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..UPDATES {
                    loop {
                        let current = store
                            .get("/counter")
                            .await
                            .expect("get")
                            .expect("counter exists");
                        let n: u64 = std::str::from_utf8(&current.value)
                            .expect("utf-8")
                            .parse()
                            .expect("number");
                        match store
                            .update(
                                "/counter",
                                bytes(&(n + 1).to_string()),
                                current.mod_revision,
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => conflicts += 1,
                            Err(err) => panic!("update failed: {err}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("updater task");
    }
    let total = TASKS * UPDATES;
    let last = store
        .get("/counter")
        .await
        .expect("get")
        .expect("counter exists");
    assert_eq!(last.value, bytes(&total.to_string()));
    let total_revs = i64::try_from(total).expect("small");
    assert_eq!(last.mod_revision, created.mod_revision + total_revs);
    assert_eq!(revision(&*store).await, created.mod_revision + total_revs);
    // The history holds each increment once, in order.
    for i in 1..=total {
        let event = next_event(&mut watch).await;
        assert_eq!(event.kind, EventKind::Update);
        assert_eq!(event.kv.value, bytes(&i.to_string()));
        assert_eq!(
            event.revision(),
            created.mod_revision + i64::try_from(i).expect("small")
        );
    }
}

/// After compaction, watches from before the compacted revision fail with
/// `Compacted`; watches from it or later still work. Compacting backwards is
/// a no-op.
pub async fn compaction_rejects_older_watches(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let mut kvs = Vec::new();
    for i in 1..=10 {
        kvs.push(create(s, &format!("/c/{i:02}"), "v").await);
    }
    s.compact(base + 5).await.expect("compact");
    for after in [base, base + 4] {
        match s.watch("/c/", after).await {
            Err(Error::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (after, base + 5)),
            Ok(_) => panic!("watch from {after} after compaction to 5 succeeded"),
            Err(err) => panic!("expected Compacted, got {err}"),
        }
    }
    let mut watch = s
        .watch("/c/", base + 5)
        .await
        .expect("watch from compacted revision");
    for kv in &kvs[5..] {
        assert_event(&next_event(&mut watch).await, EventKind::Create, kv);
    }
    let live = create(s, "/c/11", "v").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &live);

    // Compacting to an older revision changes nothing.
    s.compact(base + 3).await.expect("compact backwards");
    assert!(matches!(
        s.watch("/c/", base + 4).await,
        Err(Error::Compacted { compacted, .. }) if compacted == base + 5
    ));
    let mut watch = s.watch("/c/", base + 7).await.expect("watch from 7");
    assert_eq!(next_event(&mut watch).await.revision(), base + 8);

    // Compacting everything still allows watching from the current revision.
    let current = revision(s).await;
    s.compact(current).await.expect("compact to current");
    assert!(matches!(
        s.watch("/c/", current - 1).await,
        Err(Error::Compacted { compacted, .. }) if compacted == current
    ));
    let mut watch = s.watch("/c/", current).await.expect("watch from current");
    let next = create(s, "/c/12", "v").await;
    assert_eq!(next.mod_revision, current + 1);
    assert_event(&next_event(&mut watch).await, EventKind::Create, &next);
}

/// Compaction forgets history, not data: keys, values, revisions and the
/// global revision are unchanged.
pub async fn compaction_keeps_current_data(store: Arc<dyn Store>) {
    let s = &*store;
    let a = create(s, "/k/a", "a").await;
    let b = create(s, "/k/b", "b").await;
    let a2 = s
        .update("/k/a", bytes("a2"), a.mod_revision)
        .await
        .expect("update");
    let before = s.list("/k/", ListOptions::default()).await.expect("list");
    s.compact(a2.mod_revision).await.expect("compact");
    let after = s.list("/k/", ListOptions::default()).await.expect("list");
    assert_eq!(after, before);
    assert_eq!(after.items, vec![a2.clone(), b.clone()]);
    assert_eq!(revision(s).await, a2.mod_revision);
    let a3 = s
        .update("/k/a", bytes("a3"), a2.mod_revision)
        .await
        .expect("update");
    assert_eq!(a3.mod_revision, a2.mod_revision + 1);
    assert_eq!(a3.create_revision, a.create_revision);
}

/// A deleted key's last value is gone with the history that held it: a watch
/// from before the compaction fails with `Compacted`, and one from the
/// compacted revision never mentions the key.
pub async fn compaction_forgets_deleted_values(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    create(s, "/sec/gone", "secret").await;
    let deleted = s.delete("/sec/gone", None).await.expect("delete");
    s.compact(deleted.mod_revision).await.expect("compact");
    let kept = create(s, "/sec/kept", "v").await;
    for after in [base, deleted.mod_revision - 1] {
        match s.watch("/sec/", after).await {
            Err(Error::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (after, deleted.mod_revision)),
            Ok(_) => panic!("watch from {after} replayed compacted history"),
            Err(err) => panic!("expected Compacted, got {err}"),
        }
    }
    let mut watch = s
        .watch("/sec/", deleted.mod_revision)
        .await
        .expect("watch from the compacted revision");
    assert_event(&next_event(&mut watch).await, EventKind::Create, &kept);
    assert_eq!(s.get("/sec/gone").await.expect("get"), None);
    let listed = s.list("/sec/", ListOptions::default()).await.expect("list");
    assert_eq!(listed.items, vec![kept]);
}

/// Compaction does not disturb watches that are caught up: they keep
/// receiving every change, in order, without an error.
pub async fn live_watches_survive_compaction(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let mut watch = s.watch("/live/", base).await.expect("watch");
    let mut kv = create(s, "/live/k", "0").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &kv);
    for i in 1..=3 {
        s.compact(kv.mod_revision).await.expect("compact");
        kv = s
            .update("/live/k", bytes(&i.to_string()), kv.mod_revision)
            .await
            .expect("update");
        assert_event(&next_event(&mut watch).await, EventKind::Update, &kv);
    }
}

/// A watch still replaying history when that history is compacted either
/// delivers every event in order or ends with `Compacted` (its consumer
/// re-lists): it never skips events silently.
pub async fn compaction_never_leaves_a_gap_in_a_lagging_watch(store: Arc<dyn Store>) {
    const WRITES: i64 = 40;
    let s = &*store;
    let base = revision(s).await;
    for i in 1..=WRITES {
        create(s, &format!("/lag/{i:03}"), "v").await;
    }
    let last = base + WRITES;
    let mut watch = s.watch("/lag/", base).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.revision(), base + 1);
    s.compact(last).await.expect("compact");
    let mut expected = base + 2;
    while expected <= last {
        match timeout(EVENT_TIMEOUT, watch.next()).await {
            Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
            Ok(Some(Ok(event))) => {
                assert_eq!(event.revision(), expected, "events arrive without gaps");
                expected += 1;
            }
            Ok(Some(Err(Error::Compacted { compacted, .. }))) => {
                assert_eq!(compacted, last);
                match timeout(EVENT_TIMEOUT, watch.next()).await {
                    Ok(None) => return,
                    other => panic!("a compacted watch ends, got {other:?}"),
                }
            }
            Ok(Some(Err(err))) => panic!("expected events or Compacted, got {err}"),
            Ok(None) => panic!("watch ended without an error"),
        }
    }
    // Everything was delivered: the watch is live.
    let next = create(s, "/lag/next", "v").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &next);
}

/// Writes and compactions running at the same time (each compaction to the
/// revision seen at the previous one, as the server's compactor does) lose
/// no write, and a watch that keeps up sees every one.
///
/// The watch is live before compaction starts: on etcd, a watch that starts
/// at a past revision catches up in the background first (etcd's "unsynced"
/// watchers), and compaction rightly cancels a watch that has not caught up.
pub async fn compaction_concurrent_with_writes_loses_nothing(store: Arc<dyn Store>) {
    const WRITES: i64 = 100;
    let base = revision(&*store).await;
    let mut watch = store.watch("/cc/", base).await.expect("watch");
    let first = create(&*store, "/cc/001", "1").await;
    assert_event(&next_event(&mut watch).await, EventKind::Create, &first);
    // The writer waits halfway for a compaction, so the two certainly overlap.
    let (compacted_tx, compacted_rx) = tokio::sync::oneshot::channel::<()>();
    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        let mut compacted = Some(compacted_rx);
        let mut written = vec![first];
        for i in 2..=WRITES {
            if i == WRITES / 2
                && let Some(rx) = compacted.take()
            {
                rx.await.expect("the compactor compacted");
            }
            written.push(create(&*writer_store, &format!("/cc/{i:03}"), &i.to_string()).await);
        }
        written
    });
    let compactor_store = Arc::clone(&store);
    let compactor = tokio::spawn(async move {
        let mut first = Some(compacted_tx);
        let mut previous = base + 1;
        loop {
            let current = revision(&*compactor_store).await;
            compactor_store.compact(previous).await.expect("compact");
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            if current >= base + WRITES {
                return;
            }
            previous = current;
            tokio::task::yield_now().await;
        }
    });
    for i in 2..=WRITES {
        let event = next_event(&mut watch).await;
        assert_eq!(event.revision(), base + i);
        assert_eq!(event.kv.value, bytes(&i.to_string()));
    }
    let written = writer.await.expect("writer task");
    compactor.await.expect("compactor task");
    let listed = store
        .list("/cc/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.items, written);
}

/// Compacting to a revision newer than the current one fails with
/// `FutureRevision`.
pub async fn compact_to_future_revision_fails(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    create(s, "/k", "v").await;
    match s.compact(base + 2).await {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (base + 2, base + 1));
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    // Nothing was compacted.
    let mut watch = s.watch("", base).await.expect("watch from the start");
    assert_eq!(next_event(&mut watch).await.revision(), base + 1);
}

/// Watching from a revision newer than the current one fails with
/// `FutureRevision`.
pub async fn watch_from_future_revision_fails(store: Arc<dyn Store>) {
    let s = &*store;
    let expect_future =
        |result: crate::Result<WatchStream>, want: (Revision, Revision)| match result {
            Err(Error::FutureRevision { requested, current }) => {
                assert_eq!((requested, current), want);
            }
            Ok(_) => panic!("watch from future revision {} succeeded", want.0),
            Err(err) => panic!("expected FutureRevision, got {err}"),
        };
    let base = revision(s).await;
    expect_future(s.watch("", base + 1).await, (base + 1, base));
    create(s, "/k", "v").await;
    expect_future(s.watch("", base + 2).await, (base + 2, base + 1));
    expect_future(s.watch("/k", base + 100).await, (base + 100, base + 1));
    // The current revision itself is fine.
    let mut watch = s
        .watch("", base + 1)
        .await
        .expect("watch from current revision");
    let deleted = s.delete("/k", None).await.expect("delete");
    assert_event(&next_event(&mut watch).await, EventKind::Delete, &deleted);
}

/// Every event carries the key as it was before the change, in history and
/// live: nothing for a create, the replaced value for an update, the last
/// value for a delete.
pub async fn watch_events_carry_the_previous_value(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    let mut live = s.watch("/prev/", base).await.expect("live watch");
    let created = create(s, "/prev/a", "one").await;
    let updated = s
        .update("/prev/a", bytes("two"), created.mod_revision)
        .await
        .expect("update");
    let deleted = s.delete("/prev/a", None).await.expect("delete");
    let mut history = s.watch("/prev/", base).await.expect("history watch");
    for (what, stream) in [("live", &mut live), ("history", &mut history)] {
        let event = next_event(stream).await;
        assert_eq!((&event.kind, &event.prev), (&EventKind::Create, &None), "{what}");
        let event = next_event(stream).await;
        assert_eq!(event.kind, EventKind::Update, "{what}");
        assert_eq!(event.prev.as_ref(), Some(&created), "{what}: an update's previous value");
        let event = next_event(stream).await;
        assert_eq!(event.kind, EventKind::Delete, "{what}");
        assert_eq!(event.kv.mod_revision, deleted.mod_revision, "{what}");
        assert_eq!(event.prev.as_ref(), Some(&updated), "{what}: a delete's previous value");
    }
}

/// A list at a past revision shows the keys, values and revisions as they
/// were then, in pages too; revision 0 and the current revision read now.
pub async fn list_at_a_past_revision(store: Arc<dyn Store>) {
    let s = &*store;
    let a = create(s, "/at/a", "a1").await;
    let b = create(s, "/at/b", "b1").await;
    let c = create(s, "/at/c", "c1").await;
    let then = revision(s).await;
    s.update("/at/a", bytes("a2"), a.mod_revision).await.expect("update");
    s.delete("/at/b", None).await.expect("delete");
    let d = create(s, "/at/d", "d1").await;
    create(s, "/other/x", "x").await;
    let at = |limit, start_after: Option<&str>, revision| ListOptions {
        limit,
        start_after: start_after.map(str::to_owned),
        revision,
    };
    let past = s.list("/at/", at(0, None, then)).await.expect("list at past revision");
    assert_eq!(past.items, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!((past.revision, past.more), (then, false));
    let page = s.list("/at/", at(2, None, then)).await.expect("first page");
    assert_eq!((page.items, page.more, page.remaining), (vec![a, b.clone()], true, Some(1)));
    let page = s
        .list("/at/", at(2, Some("/at/a"), then))
        .await
        .expect("second page");
    assert_eq!((page.items, page.more, page.revision), (vec![b, c.clone()], false, then));
    let now = revision(s).await;
    let current = s.list("/at/", at(0, None, now)).await.expect("list at current");
    let latest = s.list("/at/", ListOptions::default()).await.expect("list");
    assert_eq!(current, latest);
    assert_eq!(
        latest.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/at/a", "/at/c", "/at/d"]
    );
    assert_eq!(latest.items[1], c);
    assert_eq!(latest.items[2], d);
}

/// A list at a compacted revision fails with `Compacted`, one past the
/// current revision with `FutureRevision`; the compacted revision itself
/// can still be read.
pub async fn list_at_a_compacted_or_future_revision_fails(store: Arc<dyn Store>) {
    let s = &*store;
    let base = revision(s).await;
    for i in 1..=4 {
        create(s, &format!("/lc/{i}"), "v").await;
    }
    s.compact(base + 2).await.expect("compact");
    let at = |revision| ListOptions {
        revision,
        ..ListOptions::default()
    };
    match s.list("/lc/", at(base + 1)).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (base + 1, base + 2)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let kept = s.list("/lc/", at(base + 2)).await.expect("list at the compacted revision");
    assert_eq!(kept.items.len(), 2);
    let current = revision(s).await;
    assert!(
        matches!(
            s.list("/lc/", at(current + 1)).await,
            Err(Error::FutureRevision { requested, .. }) if requested == current + 1
        ),
        "a list past the current revision fails"
    );
}

/// Compaction keeps what later events need: an update after the compacted
/// revision still carries the value it replaced, written before it, and a
/// list at the compacted revision still sees it.
pub async fn previous_values_survive_compaction(store: Arc<dyn Store>) {
    let s = &*store;
    let old = create(s, "/pc/a", "old").await;
    create(s, "/pc/b", "b").await;
    let compacted = revision(s).await;
    s.compact(compacted).await.expect("compact");
    let mut watch = s.watch("/pc/", compacted).await.expect("watch");
    s.update("/pc/a", bytes("new"), old.mod_revision).await.expect("update");
    let event = next_event(&mut watch).await;
    assert_eq!(event.prev.as_ref(), Some(&old));
    let mut replay = s.watch("/pc/", compacted).await.expect("replay");
    assert_eq!(next_event(&mut replay).await.prev.as_ref(), Some(&old));
    let then = s
        .list("/pc/", ListOptions { revision: compacted, ..ListOptions::default() })
        .await
        .expect("list at the compacted revision");
    assert_eq!(then.items.first(), Some(&old));
    // Once a later compaction passes the update, nothing needs the old value.
    let now = revision(s).await;
    create(s, "/pc/c", "c").await;
    s.compact(now).await.expect("compact again");
    let latest = s.list("/pc/", ListOptions::default()).await.expect("list");
    assert_eq!(latest.items.len(), 3);
}
