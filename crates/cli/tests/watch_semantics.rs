//! Watch and list semantics over HTTP, compared with kube-apiserver 1.32's
//! answers: watch-list (`sendInitialEvents`) and its end bookmark, filtered
//! watches resumed from a resourceVersion, list and continue-token
//! resourceVersions after compaction, and the 400/422 answers to bad options.

mod support;

use serde_json::{Value, json};
use support::{Server, json};

/// The events of a watch body (one JSON object a line).
fn events(body: &str) -> Vec<Value> {
    body.lines().filter(|l| !l.trim().is_empty()).map(json).collect()
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_owned()
}

fn create_cm(server: &Server, ns: &str, name: &str, app: &str) -> Value {
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": app}}});
    let (code, out) = server.curl_admin(
        "POST",
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        &["-H", "Content-Type: application/json", "-d", &body.to_string()],
    );
    assert_eq!(code, 201, "{out}");
    json(&out)
}

fn relabel(server: &Server, ns: &str, name: &str, app: &str) -> Value {
    let patch = json!({"metadata": {"labels": {"app": app}}});
    let (code, out) = server.curl_admin(
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
        &["-H", "Content-Type: application/merge-patch+json", "-d", &patch.to_string()],
    );
    assert_eq!(code, 200, "{out}");
    json(&out)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

#[test]
fn watch_list_and_filtered_watches_as_kube_apiserver_sends_them() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "ws"]);
    create_cm(&server, "ws", "a", "web");
    let b = create_cm(&server, "ws", "b", "web");

    // client-go's watch-list: every object as ADDED, then the bookmark that
    // ends the initial events, at the list's resourceVersion.
    let (code, body) = server.curl_admin(
        "GET",
        "/api/v1/namespaces/ws/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector=app%3Dweb&timeoutSeconds=1",
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let got = events(&body);
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"], "{body}");
    assert_eq!(
        got[2],
        json!({"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
            "resourceVersion": rv(&b), "creationTimestamp": null,
            "annotations": {"k8s.io/initial-events-end": "true"}}}})
    );

    // A selector watch resumed after b stops matching still sees it leave:
    // DELETED with the state that matched, at the change's resourceVersion.
    let left = relabel(&server, "ws", "b", "db");
    let (code, body) = server.curl_admin(
        "GET",
        &format!("/api/v1/namespaces/ws/configmaps?watch=1&labelSelector=app%3Dweb&resourceVersion={}&timeoutSeconds=1", rv(&b)),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let got = events(&body);
    assert_eq!(got.len(), 1, "{body}");
    assert_eq!(got[0]["type"], "DELETED");
    assert_eq!(got[0]["object"]["metadata"]["name"], "b");
    assert_eq!(got[0]["object"]["metadata"]["labels"]["app"], "web");
    assert_eq!(got[0]["object"]["metadata"]["resourceVersion"].as_str(), Some(rv(&left).as_str()));

    // kube's 422 for watch-list option combinations it refuses.
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/ws/configmaps?watch=1&sendInitialEvents=true&allowWatchBookmarks=true", &[]);
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        json(&body),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            "reason": "Invalid",
            "details": {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [{
                "reason": "FieldValueForbidden",
                "message": "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                "field": "resourceVersionMatch"}]},
            "code": 422})
    );
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/ws/configmaps?sendInitialEvents=true", &[]);
    assert_eq!(code, 422, "{body}");
    assert_eq!(json(&body)["message"], "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list");

    // Garbage resourceVersions and continue tokens are the client's error.
    for path in ["/api/v1/namespaces/ws/configmaps?resourceVersion=abc", "/api/v1/namespaces/ws/configmaps?watch=1&resourceVersion=abc"] {
        let (code, body) = server.curl_admin("GET", path, &[]);
        assert_eq!(code, 400, "{path}: {body}");
        assert_eq!(
            json(&body),
            status(400, "BadRequest", "invalid resource version: resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax")
        );
    }
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/ws/configmaps?labelSelector=app%20web", &[]);
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body), status(400, "BadRequest", "unable to parse requirement: found 'web', expected: in, notin, =, ==, !=, gt, lt"));
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/ws/configmaps?limit=1&continue=bm90LWpzb24", &[]);
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["message"].as_str().is_some_and(|m| m.starts_with("invalid continue token: continue key is not valid: ")),
        "{body}"
    );
}

#[test]
fn compacted_list_revisions_and_continue_tokens_are_410_expired() {
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--compaction-interval", "1s"]);
    server.kubectl_ok(&["create", "ns", "cs"]);
    for name in ["a", "b", "c"] {
        create_cm(&server, "cs", name, "web");
    }
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/cs/configmaps?limit=1", &[]);
    assert_eq!(code, 200, "{body}");
    let first = json(&body);
    let token = first["metadata"]["continue"].as_str().expect("continue").to_owned();
    let snapshot = rv(&first);
    // The same snapshot, exactly, while its history lasts.
    let (code, body) = server.curl_admin(
        "GET",
        &format!("/api/v1/namespaces/cs/configmaps?resourceVersion={snapshot}&resourceVersionMatch=Exact"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(rv(&json(&body)), snapshot);

    // Writes move the revision on; the leader compacts every second to the
    // revision it saw a tick before, so the snapshot's history goes.
    create_cm(&server, "cs", "d", "web");
    let expired = server.eventually(30, "compaction past the first page's revision", || {
        create_cm(&server, "cs", &format!("e{}", rand_suffix()), "web");
        let (code, body) = server.curl_admin(
            "GET",
            &format!("/api/v1/namespaces/cs/configmaps?resourceVersion={snapshot}&resourceVersionMatch=Exact"),
            &[],
        );
        (code == 410).then_some(body)
    });
    assert_eq!(json(&expired), status(410, "Expired", "The resourceVersion for the provided list is too old."));

    let (code, body) = server.curl_admin("GET", &format!("/api/v1/namespaces/cs/configmaps?limit=1&continue={token}"), &[]);
    assert_eq!(code, 410, "{body}");
    let body = json(&body);
    assert_eq!(
        body["message"],
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
    );
    assert_eq!((body["reason"].as_str(), body["code"].as_i64()), (Some("Expired"), Some(410)));
    let fresh = body["metadata"]["continue"].as_str().expect("a fresh continue token in the Status");
    // The fresh token continues after "a", at the latest revision.
    let (code, body) = server.curl_admin("GET", &format!("/api/v1/namespaces/cs/configmaps?limit=1&continue={fresh}"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["items"][0]["metadata"]["name"], "b");
}

/// A short unique suffix for object names written while polling.
fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn a_watch_gets_a_bookmark_two_seconds_before_it_times_out() {
    let server = Server::start();
    let cm = create_cm(&server, "default", "marker", "web");
    // The watch ends after timeoutSeconds=3; kube sends its last BOOKMARK
    // 2 s before that, with the latest resourceVersion.
    let started = std::time::Instant::now();
    let (code, body) = server.curl_admin(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&timeoutSeconds=3&resourceVersion={}", rv(&cm)),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "the watch lasts its timeout");
    let events = events(&body);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "BOOKMARK");
    assert_eq!(events[0]["object"]["metadata"]["resourceVersion"], rv(&cm).as_str());
}
