//! The watch cache under concurrent writes, on SQLite and on etcd: every list
//! it serves is one revision's state (no object twice, none missing, none
//! that should be gone), a consistent list or get sees every write
//! acknowledged before it, list resourceVersions never go backwards, a watch
//! resumed from a recent resourceVersion gets exactly the events after it,
//! and a read of a revision the cache has not reached gets kube-apiserver's
//! 504.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{Server, json};
use tessera_store::etcd::testing::EtcdCluster;

const NS: &str = "snap";
/// Objects the sequential writer creates (each deleted `KEEP` creations later).
const CREATES: usize = 40;
const KEEP: usize = 10;

fn rv_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("resourceVersion")
}

/// Sets the flag when dropped (also by a panic).
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the writer did, with the revision of each write. kube answers a
/// delete with a Status, without its revision: a delete is known to lie
/// after the writer's previous write and before its next one.
#[derive(Default)]
struct History {
    created: BTreeMap<String, i64>,
    /// Name → (revision before the delete, revision after it once known).
    deleted: BTreeMap<String, (i64, Option<i64>)>,
}

impl History {
    /// Checks the names a list at `revision` holds.
    fn check(&self, revision: i64, listed: &BTreeSet<String>) {
        for (name, created) in &self.created {
            let gone = self.deleted.get(name).is_some_and(|(_, after)| after.is_some_and(|a| a <= revision));
            let present = *created <= revision && self.deleted.get(name).is_none_or(|(before, _)| revision <= *before);
            assert!(!gone || !listed.contains(name), "{name} listed at {revision} after its delete");
            assert!(!present || listed.contains(name), "{name} missing from the list at {revision}");
            assert!(!(*created > revision && listed.contains(name)), "{name} listed at {revision}, before its create");
        }
        for name in listed {
            // Created but its answer not recorded yet: only the next one can be.
            if !self.created.contains_key(name) {
                assert_eq!(*name, format!("seq-{:03}", self.created.len()), "unexpected {name} at {revision}");
            }
        }
    }
}

fn post_cm(server: &Server, name: &str, labels: Value) -> Value {
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"n": "0"}});
    let (code, out) = server.curl_admin(
        "POST",
        &format!("/api/v1/namespaces/{NS}/configmaps"),
        &["-H", "Content-Type: application/json", "-d", &body.to_string()],
    );
    assert_eq!(code, 201, "{out}");
    json(&out)
}

fn snapshots_stay_consistent(server: &Server) {
    server.kubectl_ok(&["create", "ns", NS]);
    post_cm(server, "hot", json!({"role": "hot"}));
    let history = Arc::new(Mutex::new(History::default()));
    let acked = Arc::new(AtomicI64::new(0));
    let hot_acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let first_rv = Arc::new(AtomicI64::new(0));
    std::thread::scope(|scope| {
        // Creates seq-0, seq-1, … in order and deletes each KEEP creations later.
        scope.spawn(|| {
            // Ends the other threads even when this one fails.
            let _done = Done(&done);
            for i in 0..CREATES {
                let name = format!("seq-{i:03}");
                let created = post_cm(server, &name, json!({"role": "seq"}));
                let rv = rv_of(&created);
                // A consistent get right after the write sees it.
                let (code, out) = server.curl_admin("GET", &format!("/api/v1/namespaces/{NS}/configmaps/{name}"), &[]);
                assert_eq!((code, rv_of(&json(&out))), (200, rv), "{out}");
                let _ = first_rv.compare_exchange(0, rv, Ordering::SeqCst, Ordering::SeqCst);
                let mut h = history.lock().expect("lock");
                h.created.insert(name, rv);
                for (_, after) in h.deleted.values_mut() {
                    after.get_or_insert(rv);
                }
                drop(h);
                acked.fetch_max(rv, Ordering::SeqCst);
                if i >= KEEP {
                    let gone = format!("seq-{:03}", i - KEEP);
                    history.lock().expect("lock").deleted.insert(gone.clone(), (rv, None));
                    let (code, out) = server.curl_admin("DELETE", &format!("/api/v1/namespaces/{NS}/configmaps/{gone}"), &[]);
                    assert_eq!(code, 200, "{out}");
                    let (code, out) = server.curl_admin("GET", &format!("/api/v1/namespaces/{NS}/configmaps/{gone}"), &[]);
                    assert_eq!((code, json(&out)["message"].clone()), (404, json!(format!("configmaps \"{gone}\" not found"))), "{out}");
                }
            }
        });
        // Keeps rewriting one object, so lists race with updates too.
        scope.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let patch = json!({"data": {"n": n.to_string()}});
                let (code, out) = server.curl_admin(
                    "PATCH",
                    &format!("/api/v1/namespaces/{NS}/configmaps/hot"),
                    &["-H", "Content-Type: application/merge-patch+json", "-d", &patch.to_string()],
                );
                assert_eq!(code, 200, "{out}");
                let rv = rv_of(&json(&out));
                hot_acked.fetch_max(rv, Ordering::SeqCst);
                acked.fetch_max(rv, Ordering::SeqCst);
            }
        });
        // Lists, consistent and at resourceVersion 0, with and without a selector.
        scope.spawn(|| {
            let mut last = 0;
            let mut lists = 0;
            let queries = ["", "?resourceVersion=0", "?labelSelector=role%3Dseq", "?resourceVersion=0&limit=3"];
            while !done.load(Ordering::SeqCst) || lists < 8 {
                let query = queries[lists % queries.len()];
                let before = acked.load(Ordering::SeqCst);
                let (code, out) = server.curl_admin("GET", &format!("/api/v1/namespaces/{NS}/configmaps{query}"), &[]);
                assert_eq!(code, 200, "{out}");
                let list = json(&out);
                let revision = rv_of(&list);
                assert!(revision >= last, "list resourceVersion went back: {revision} after {last}");
                last = revision;
                if !query.contains("resourceVersion=0") {
                    assert!(revision >= before, "a consistent list at {revision} misses a write acknowledged at {before}");
                }
                // kube 1.32 serves a list at resourceVersion 0 from its cache whole: no limit, no continue.
                assert!(list["metadata"].get("continue").is_none(), "{query}: {}", list["metadata"]);
                let items = list["items"].as_array().expect("items");
                let mut names = BTreeSet::new();
                for item in items {
                    let name = item["metadata"]["name"].as_str().expect("name").to_owned();
                    assert!(rv_of(item) <= revision, "{name} is newer than its list");
                    assert!(names.insert(name.clone()), "{name} listed twice");
                }
                names.remove("hot");
                names.remove("kube-root-ca.crt");
                history.lock().expect("lock").check(revision, &names);
                // A consistent get of the object being rewritten is never
                // older than what was acknowledged before it.
                let before = hot_acked.load(Ordering::SeqCst);
                let (code, out) = server.curl_admin("GET", &format!("/api/v1/namespaces/{NS}/configmaps/hot"), &[]);
                assert_eq!(code, 200, "{out}");
                let hot = rv_of(&json(&out));
                assert!(hot >= before, "a consistent get at {hot} misses a write acknowledged at {before}");
                lists += 1;
            }
        });
    });

    // A watch from a recent resourceVersion gets every later event, in order.
    let from = first_rv.load(Ordering::SeqCst);
    let (code, out) = server.curl_admin(
        "GET",
        &format!("/api/v1/namespaces/{NS}/configmaps?watch=1&resourceVersion={from}&labelSelector=role%3Dseq&timeoutSeconds=1"),
        &[],
    );
    assert_eq!(code, 200, "{out}");
    let events: Vec<Value> = out.lines().filter(|l| !l.trim().is_empty()).map(json).collect();
    let mut expected = Vec::new();
    for i in 1..CREATES {
        expected.push(("ADDED".to_owned(), format!("seq-{i:03}")));
        if i >= KEEP {
            expected.push(("DELETED".to_owned(), format!("seq-{:03}", i - KEEP)));
        }
    }
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or_default().to_owned(), e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(got, expected);
    let revisions: Vec<i64> = events.iter().map(|e| rv_of(&e["object"])).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]) && revisions.first().is_some_and(|r| *r > from), "{revisions:?}");
}

/// A read of a revision the cache has not reached waits, then gets kube's 504.
fn future_revisions_time_out_as_in_kube(server: &Server) {
    let (code, out) = server.curl_admin("GET", "/api/v1/namespaces/default/serviceaccounts?resourceVersion=99999999", &[]);
    assert_eq!(code, 504, "{out}");
    let (_, current) = server.curl_admin("GET", "/api/v1/namespaces/default/serviceaccounts?resourceVersion=0", &[]);
    let current = rv_of(&json(&current));
    let status = json(&out);
    assert_eq!(
        status,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("Timeout: Too large resource version: 99999999, current: {current}"),
            "reason": "Timeout",
            "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1},
            "code": 504})
    );
    let (code, out) = server.curl_admin("GET", "/api/v1/namespaces/default/serviceaccounts/default?resourceVersion=99999999", &[]);
    assert_eq!(code, 504, "{out}");
    let (code, out) = server.curl_admin("GET", "/api/v1/namespaces/default/serviceaccounts/default?resourceVersion=0", &[]);
    assert_eq!(code, 200, "{out}");
    assert_eq!(json(&out)["metadata"]["name"], "default");
    let (code, out) = server.curl_admin("GET", "/api/v1/namespaces/default/serviceaccounts/nobody?resourceVersion=0", &[]);
    assert_eq!(code, 404, "{out}");
    assert_eq!(json(&out)["message"], "serviceaccounts \"nobody\" not found");
}

#[test]
fn lists_are_consistent_snapshots_on_sqlite() {
    let server = Server::start();
    snapshots_stay_consistent(&server);
    future_revisions_time_out_as_in_kube(&server);
}

#[test]
fn lists_are_consistent_snapshots_on_etcd() {
    let cluster = EtcdCluster::start(1).unwrap_or_else(|err| panic!("{err}"));
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--storage", &cluster.storage_url()]);
    snapshots_stay_consistent(&server);
}
