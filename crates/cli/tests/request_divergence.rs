//! The authorizer and the handlers must never read a request differently.
//!
//! A generator of hostile requests (paths with odd encodings and slashes,
//! repeated and conflicting query parameters, named watches, POSTs to object
//! paths, subresources, bodies naming other objects) runs each request as a
//! user whose Role allows little, through the real router and caches, on both
//! stores. For every request, whatever comes back and whatever changed in the
//! store must be something an independent RBAC oracle allows that user to
//! read or change, object by object.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tessera_apiserver::testing::InProcess;
use tessera_authn::UserInfo;
use tessera_rbac::policy::{Binding, Role};
use tessera_rbac::{Policy, Request};
use tessera_store::{ListOptions, Store};

/// Small deterministic PRNG (xorshift64*): the same seed gives the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn mallory() -> UserInfo {
    UserInfo { username: "mallory".into(), groups: vec!["system:authenticated".into()], ..Default::default() }
}

fn admin() -> UserInfo {
    UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() }
}

/// What mallory holds in namespace `a`: one Secret by name, reads of
/// ConfigMaps and writes of one of them by name, and her own namespace object.
fn limited_role() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "limited", "namespace": "a"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["default"], "verbs": ["create"]}
        ]})
}

fn limited_binding() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "limited", "namespace": "a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]})
}

/// The oracle: bootstrap policy plus mallory's Role, evaluated directly.
fn oracle() -> Policy {
    let mut policy = Policy::default();
    for r in tessera_rbac::bootstrap::cluster_roles() {
        policy.put_cluster_role(Role::from_object(&r).unwrap());
    }
    for b in tessera_rbac::bootstrap::cluster_role_bindings() {
        policy.put_binding(Binding::from_object(&b).unwrap());
    }
    policy.put_role(Role::from_object(&limited_role()).unwrap());
    policy.put_binding(Binding::from_object(&limited_binding()).unwrap());
    policy
}

fn allowed(policy: &Policy, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
    let group = if resource.starts_with("roles") || resource.starts_with("rolebindings") { "rbac.authorization.k8s.io" } else { "" };
    let req = Request {
        resource_request: true,
        verb: verb.into(),
        namespace: namespace.into(),
        api_group: group.into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    };
    tessera_rbac::authorize(policy, &mallory(), &req).is_allowed()
}

fn object_identity(obj: &Value) -> Option<(String, String, String)> {
    let kind = obj.get("kind")?.as_str()?;
    let resource = match kind {
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Pod" => "pods",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Status" | "TokenRequest" => return None,
        other => other,
    };
    let meta = obj.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let namespace = match resource {
        // A namespace object is in itself.
        "namespaces" => name.clone(),
        _ => meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_owned(),
    };
    Some((resource.to_owned(), namespace, name))
}

/// Every key under `/registry/` with its modification revision.
async fn snapshot(store: &Arc<dyn Store>) -> BTreeMap<String, i64> {
    let list = store.list("/registry/", ListOptions::default()).await.unwrap();
    list.items.into_iter().map(|kv| (kv.key, kv.mod_revision)).collect()
}

/// `/registry/{resource}/{ns}/{name}` (or rbac's longer form) → (resource, ns, name).
fn key_identity(key: &str) -> (String, String, String) {
    let rest = key.trim_start_matches("/registry/").trim_start_matches("rbac.authorization.k8s.io/");
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["namespaces", name] => ("namespaces".into(), (*name).into(), (*name).into()),
        [resource, ns, name] => ((*resource).into(), (*ns).into(), (*name).into()),
        [resource, name] => ((*resource).into(), String::new(), (*name).into()),
        _ => (rest.into(), String::new(), String::new()),
    }
}

struct Case {
    method: &'static str,
    uri: String,
    content_type: &'static str,
    body: String,
}

fn generate(rng: &mut Rng) -> Case {
    let method = match rng.below(10) {
        0..=4 => "GET",
        5 => "POST",
        6 => "PUT",
        7 => "PATCH",
        8 => "DELETE",
        _ => rng.pick(&["POST", "HEAD", "GET"]),
    };
    let group = if rng.chance(10) { "/apis/rbac.authorization.k8s.io/v1" } else { rng.pick(&["/api/v1", "/api/v1", "/api/v1", "//api/v1", "/api/v1/"]) };
    let watch_prefix = if rng.chance(20) { "/watch" } else { "" };
    let namespace = rng.pick(&["/namespaces/a", "/namespaces/a", "/namespaces/a", "/namespaces/a", "/namespaces/a", "/namespaces/b", "/namespaces/%61", "/namespaces/kube-system", ""]);
    let resource = if group.starts_with("/apis") {
        rng.pick(&["roles", "rolebindings"])
    } else {
        rng.pick(&["secrets", "secrets", "secrets", "configmaps", "configmaps", "configmaps", "namespaces", "serviceaccounts", "pods", "secret%73"])
    };
    let name = rng.pick(&["", "", "", "mine", "mine", "mine", "allowed", "allowed", "other", "allowed", "theirs", "a", "b", "m%69ne", "mine%2Fx", "..", "default"]);
    let sub = if name.is_empty() { "" } else { rng.pick(&["", "", "", "", "/status", "/token", "/finalize", "/x", "/status/y"]) };
    let mut path = format!("{group}{watch_prefix}{namespace}/{resource}");
    if !name.is_empty() {
        path.push('/');
        path.push_str(name);
        path.push_str(sub);
    }
    if rng.chance(5) {
        path.push('/');
    }
    let mut params = Vec::new();
    for _ in 0..rng.below(5) {
        let key = rng.pick(&["fieldSelector", "fieldSelector", "fieldSelector", "field%53elector", "labelSelector", "watch", "watch", "resourceVersion", "limit", "dryRun", "fieldValidation"]);
        let value = match key {
            "fieldSelector" | "field%53elector" => rng.pick(&[
                "metadata.name%3Dmine",
                "metadata.name%3Dmine",
                "metadata.name%3D%3Dmine",
                "metadata.name%3Dother",
                "metadata.name%3Dallowed",
                "",
                "metadata.name!%3Dmine",
                "metadata.namespace%3Da",
                "metadata.name%3Dmine,metadata.name%3Dother",
                "metadata.name%3Dmine,metadata.namespace%3Db",
                "metadata.name=mine",
                "metadata.name%3Dmine;x",
                "metadata.name%3D%zz",
            ]),
            "labelSelector" => rng.pick(&["", "x%3Dy", "!x"]),
            "watch" => rng.pick(&["1", "0", "true", "false", "", "yes"]),
            "resourceVersion" => rng.pick(&["0", "1", ""]),
            "limit" => rng.pick(&["1", "x", ""]),
            "dryRun" => rng.pick(&["All", "x"]),
            _ => rng.pick(&["Strict", "Ignore"]),
        };
        params.push(format!("{key}={value}"));
        if rng.chance(20) {
            params.push(key.to_owned());
        }
    }
    let uri = if params.is_empty() { path } else { format!("{path}?{}", params.join("&")) };
    let body_name = rng.pick(&["allowed", "allowed", "evil", "mine", "other"]);
    let body_ns = rng.pick(&["a", "a", "b", ""]);
    let (content_type, body) = match method {
        "PATCH" => (
            rng.pick(&["application/merge-patch+json", "application/strategic-merge-patch+json"]),
            rng.pick(&[r#"{"data":{"k":"patched"}}"#, r#"{"metadata":{"name":"evil"}}"#, r#"{"metadata":{"namespace":"b"}}"#]).to_owned(),
        ),
        "POST" | "PUT" => {
            let kind = rng.pick(&["ConfigMap", "ConfigMap", "Secret"]);
            let mut meta = json!({"name": body_name});
            if !body_ns.is_empty() {
                meta["namespace"] = json!(body_ns);
            }
            ("application/json", json!({"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"k": "djE="}}).to_string())
        }
        _ => ("application/json", String::new()),
    };
    Case { method, uri, content_type, body }
}

/// Reads a response body; a body still open after `idle` without a frame is
/// a watch, and what it sent so far is what it returned.
async fn read_body(body: Body, idle: Duration) -> Vec<u8> {
    let mut body = body;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(_)) | None) | Err(_) => return out,
        }
    }
}

/// Objects a response returned, with the verb under which they were read.
fn returned_objects(method: &str, body: &[u8]) -> Vec<(&'static str, Value)> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
            let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            let verb = if method == "DELETE" { "deletecollection" } else { "list" };
            return items.into_iter().map(|i| (verb, i)).collect();
        }
        let verb = match method {
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            _ => "delete",
        };
        return vec![(verb, value)];
    }
    // A watch: one event per line.
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|e| e["type"] != "ERROR")
        .map(|e| ("watch", e["object"].clone()))
        .collect()
}

async fn create(server: &InProcess, path: &str, object: Value) {
    let request = http::Request::post(path).header("content-type", "application/json").body(Body::from(object.to_string())).unwrap();
    let response = server.call(admin(), request).await;
    assert!(response.status().is_success() || response.status() == 409, "setup {path}: {}", response.status());
}

async fn setup(server: &InProcess) {
    for ns in ["a", "b"] {
        create(server, "/api/v1/namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
        create(server, &format!("/api/v1/namespaces/{ns}/serviceaccounts"), json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})).await;
        for name in ["mine", "other", "theirs"] {
            create(server, &format!("/api/v1/namespaces/{ns}/secrets"), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": "c2VjcmV0"}})).await;
        }
        for name in ["allowed", "cm2"] {
            create(server, &format!("/api/v1/namespaces/{ns}/configmaps"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})).await;
        }
    }
    create(server, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles", limited_role()).await;
    create(server, "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings", limited_binding()).await;
    let revision = server.registry().store().revision().await.unwrap();
    server.policy_caught_up(revision).await;
}

/// Runs `cases` generated requests and checks each; returns how many
/// returned or changed at least one object (the generator must reach the
/// allowed paths too, or the test proves nothing).
async fn run(server: &InProcess, seed: u64, cases: usize, idle: Duration) -> usize {
    setup(server).await;
    let policy = oracle();
    let store = server.registry().store().clone();
    let mut rng = Rng(seed);
    let mut productive = 0;
    for i in 0..cases {
        let case = generate(&mut rng);
        let before = snapshot(&store).await;
        let request = http::Request::builder()
            .method(case.method)
            .uri(&case.uri)
            .header("content-type", case.content_type)
            .body(Body::from(case.body.clone()))
            .unwrap();
        let response = server.call(mallory(), request).await;
        let status = response.status();
        let body = read_body(response.into_body(), idle).await;
        let after = snapshot(&store).await;
        if std::env::var_os("DIVERGENCE_TRACE").is_some() { eprintln!("{} {} {} -> {status}", i, case.method, case.uri); }
        let what = format!("case {i}: {} {} {} → {status}: {}", case.method, case.uri, case.body, String::from_utf8_lossy(&body[..body.len().min(300)]));
        assert!(status.as_u16() < 500, "server error: {what}");

        let mut touched = false;
        if status.is_success() {
            for (verb, object) in returned_objects(case.method, &body) {
                let Some((resource, namespace, name)) = object_identity(&object) else { continue };
                touched = true;
                let ok = allowed(&policy, verb, &resource, &namespace, &name)
                    || (verb == "deletecollection" && allowed(&policy, verb, &resource, &namespace, ""));
                assert!(ok, "returned {resource} {namespace}/{name} that mallory may not {verb}: {what}");
            }
        }
        for key in before.keys().chain(after.keys()) {
            if before.get(key) == after.get(key) {
                continue;
            }
            touched = true;
            let (resource, namespace, name) = key_identity(key);
            let verb = match (case.method, before.contains_key(key), after.contains_key(key)) {
                ("POST", false, true) => "create",
                ("PUT", true, true) => "update",
                // Leases, Events and RBAC kinds are created by PUT (kube's
                // AllowCreateOnUpdate), which also needs `create`.
                ("PUT", false, true) => "create",
                ("PATCH", true, true) => "patch",
                ("DELETE", true, false) => "delete",
                (method, existed, exists) => panic!("{method} changed {key} (existed {existed}, exists {exists}): {what}"),
            };
            let ok = allowed(&policy, verb, &resource, &namespace, &name)
                || (verb == "delete" && allowed(&policy, "deletecollection", &resource, &namespace, ""));
            assert!(ok, "changed {key} that mallory may not {verb}: {what}");
        }
        if touched {
            productive += 1;
        }
        // Keep the one writable object around so that writes keep being tried.
        if !after.contains_key("/registry/configmaps/a/allowed") {
            create(server, "/api/v1/namespaces/a/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "allowed"}})).await;
        }
    }
    productive
}

fn assert_productive(productive: usize, cases: usize) {
    // Most generated requests are refused (that is the point), but reads of
    // `mine`, ConfigMap lists and watches and writes of `allowed` succeed in
    // a few percent of them: a generator that never reached the allowed
    // paths would prove nothing, and would show here.
    assert!(productive * 50 >= cases, "only {productive} of {cases} cases returned or changed anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_reach_beyond_authorization_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(tessera_store::sqlite::SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let server = InProcess::start(store, &dir.path().join("keys")).await.unwrap();
    let cases = 8000;
    let productive = run(&server, 0x7e55_e7a1, cases, Duration::from_millis(40)).await;
    assert_productive(productive, cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_reach_beyond_authorization_etcd() {
    let cluster = tessera_store::etcd::testing::EtcdCluster::start(1).expect("start etcd (TESSERA_ETCD_BIN)");
    let config = tessera_store::etcd::EtcdConfig::new(cluster.endpoints());
    let store = tessera_store::etcd::connect(&config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(store, &dir.path().join("keys")).await.unwrap();
    let cases = 1500;
    let productive = run(&server, 0xe7cd_0001, cases, Duration::from_millis(150)).await;
    assert_productive(productive, cases);
}
