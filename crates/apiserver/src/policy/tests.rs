//! The inbound policy API through the real router: parameters (400), who may
//! read a pod's policy (403), missing pods (404), the compiled answer, and the
//! watch stream following a change.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tessera_authn::UserInfo;
use tessera_store::Store;

use crate::testing::InProcess;

/// A server on a fresh SQLite store (shared with `explain`'s tests).
pub(super) async fn start() -> (InProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(tessera_store::sqlite::SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let server = InProcess::start(store, &dir.path().join("keys")).await.unwrap();
    (server, dir)
}

/// Writes `value` at `key` straight into the store, creating or replacing it.
pub(super) async fn put(server: &InProcess, key: &str, value: Value) {
    let store = server.registry().store();
    let bytes = bytes::Bytes::from(value.to_string());
    match store.get(key).await.unwrap() {
        Some(kv) => store.update(key, bytes, kv.mod_revision).await.unwrap(),
        None => store.create(key, bytes).await.unwrap(),
    };
}

async fn seed(server: &InProcess) {
    put(server, "/registry/namespaces/shop", json!({"metadata": {"name": "shop", "annotations": {"config.linkerd.io/default-inbound-policy": "cluster-authenticated"}}})).await;
    put(server, "/registry/pods/shop/db-0", json!({"metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
        "spec": {"serviceAccountName": "db", "containers": [{"name": "db", "ports": [{"name": "http", "containerPort": 8080}]}]}})).await;
    put(server, "/registry/policy.linkerd.io/servers/shop/db-http", json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
        "metadata": {"name": "db-http", "namespace": "shop"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "port": "http", "proxyProtocol": "HTTP/1"}})).await;
}

fn admin() -> UserInfo {
    UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() }
}

fn pod_token(namespace: &str, sa: &str, pod: &str) -> UserInfo {
    UserInfo {
        username: format!("system:serviceaccount:{namespace}:{sa}"),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()],
        extra: [(tessera_authn::token::EXTRA_POD_NAME.to_owned(), vec![pod.to_owned()])].into(),
        ..Default::default()
    }
}

async fn get(server: &InProcess, user: UserInfo, query: &str) -> (u16, Value) {
    let request = http::Request::get(format!("{}?{query}", super::PATH)).body(Body::empty()).unwrap();
    let response = server.call(user, request).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Polls (with a deadline) until the cache has the seeded pod and Server.
async fn ready(server: &InProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(server, admin(), "namespace=shop&pod=db-0").await.1["ports"][0]["server"] != "db-http" {
        assert!(tokio::time::Instant::now() < deadline, "the policy cache never saw the pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_parameters_are_400() {
    let (server, _dir) = start().await;
    for (query, message) in [
        ("pod=db-0", "the namespace parameter is required"),
        ("namespace=shop", "the pod parameter is required"),
        ("namespace=&pod=db-0", "the namespace parameter is required"),
        ("namespace=Shop_1&pod=db-0", "invalid namespace \"Shop_1\": must be a DNS label"),
        ("namespace=shop&pod=db%2F0", "invalid pod name \"db/0\": must be a DNS subdomain"),
    ] {
        let (status, body) = get(&server, admin(), query).await;
        assert_eq!((status, body["message"].as_str()), (400, Some(message)), "{query}");
        assert_eq!(body["reason"], "BadRequest");
    }
}

#[tokio::test]
async fn only_the_pods_token_or_server_readers_get_it() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    // The pod's own token.
    let (status, body) = get(&server, pod_token("shop", "db", "db-0"), "namespace=shop&pod=db-0").await;
    assert_eq!(status, 200, "{body}");
    // Another pod's token in the same namespace, a token bound to a pod of that
    // name in another namespace, a plain user, and anonymous: 403.
    let reason = ": the inbound policy of pod \"db-0\" is served to a token bound to that pod or to users who may list servers";
    for (user, name) in [
        (pod_token("shop", "db", "db-1"), "system:serviceaccount:shop:db"),
        (pod_token("evil", "db", "db-0"), "system:serviceaccount:evil:db"),
        (UserInfo { username: "alice".into(), groups: vec!["system:authenticated".into()], ..Default::default() }, "alice"),
        (UserInfo::anonymous(), "system:anonymous"),
    ] {
        let (status, body) = get(&server, user, "namespace=shop&pod=db-0").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            body["message"].as_str().unwrap(),
            format!("servers.policy.linkerd.io is forbidden: User \"{name}\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\"{reason}")
        );
        assert_eq!(body["details"], json!({"group": "policy.linkerd.io", "kind": "servers"}));
    }
    // 403 comes before 404: a stranger learns nothing about which pods exist.
    let (status, _) = get(&server, UserInfo::anonymous(), "namespace=shop&pod=nope").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn missing_pod_is_404_and_the_answer_is_compiled() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let (status, body) = get(&server, admin(), "namespace=shop&pod=nope").await;
    assert_eq!((status, body["message"].as_str(), body["reason"].as_str()), (404, Some("pods \"nope\" not found"), Some("NotFound")));
    let (_, body) = get(&server, admin(), "namespace=shop&pod=db-0").await;
    assert_eq!(body["namespace"], "shop");
    assert_eq!(body["defaultPolicy"], "cluster-authenticated", "from the namespace annotation");
    assert_eq!(body["ports"][0]["port"], 8080);
    assert_eq!(body["ports"][0]["server"], "db-http");
    assert_eq!(body["ports"][0]["authorizations"], json!([]));
    let compiled: tessera_policy::PodInboundPolicy = serde_json::from_value(body).unwrap();
    assert_eq!(compiled.cluster_networks, tessera_policy::default_cluster_networks());
}

#[tokio::test]
async fn watch_streams_a_snapshot_per_change() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let request = http::Request::get(format!("{}?namespace=shop&pod=db-0&watch=true", super::PATH)).body(Body::empty()).unwrap();
    let response = server.call(pod_token("shop", "db", "db-0"), request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffered = Vec::new();
    let mut next_line = async || -> Value {
        loop {
            if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffered.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("a snapshot within 5 s").unwrap().unwrap();
            buffered.extend_from_slice(frame.data_ref().unwrap());
        }
    };
    let first = next_line().await;
    assert_eq!(first["ports"][0]["authorizations"], json!([]));
    put(&server, "/registry/policy.linkerd.io/authorizationpolicies/shop/api", json!({"metadata": {"name": "api", "namespace": "shop"},
        "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"}, "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "api"}]}})).await;
    let second = next_line().await;
    assert_eq!(second["ports"][0]["authorizations"][0]["name"], "api");
    assert_eq!(second["ports"][0]["authorizations"][0]["authentication"], json!({"identities": [{"exact": "api.shop.serviceaccount.identity.linkerd.cluster.local"}]}));
    // An unrelated change (another namespace's pod) sends nothing; the pod's deletion ends the stream with the 404.
    put(&server, "/registry/pods/other/x", json!({"metadata": {"name": "x", "namespace": "other"}})).await;
    server.registry().store().delete("/registry/pods/shop/db-0", None).await.unwrap();
    let last = next_line().await;
    assert_eq!((last["code"].as_i64(), last["message"].as_str()), (Some(404), Some("pods \"db-0\" not found")));
}

// Attacker-side: the request is parsed once, authorized on that reading and
// run as authorized, so no spelling of it reaches a pod it was not allowed for.

async fn send(server: &InProcess, user: UserInfo, method: http::Method, uri: &str) -> (u16, Value) {
    let request = http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    let response = server.call(user, request).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn user(name: &str) -> UserInfo {
    UserInfo { username: name.into(), groups: vec!["system:authenticated".into()], ..Default::default() }
}

/// `eve` may list servers in namespace `evil` only.
async fn grant_eve_servers_in_evil(server: &InProcess) {
    put(server, "/registry/namespaces/evil", json!({"metadata": {"name": "evil"}})).await;
    put(server, "/registry/rbac.authorization.k8s.io/roles/evil/servers", json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "servers", "namespace": "evil"}, "rules": [{"apiGroups": ["policy.linkerd.io"], "resources": ["servers"], "verbs": ["list"]}]})).await;
    let store = server.registry().store();
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "eve", "namespace": "evil"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "servers"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "eve"}]});
    let kv = store.create("/registry/rbac.authorization.k8s.io/rolebindings/evil/eve", bytes::Bytes::from(binding.to_string())).await.unwrap();
    server.policy_caught_up(kv.mod_revision).await;
}

fn inbound_forbidden(name: &str, namespace: &str, pod: &str) -> String {
    format!(
        "servers.policy.linkerd.io is forbidden: User \"{name}\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"{namespace}\": the inbound policy of pod \"{pod}\" is served to a token bound to that pod or to users who may list servers"
    )
}

#[tokio::test]
async fn a_pods_token_reads_its_own_pod_and_no_other() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let db0 = || pod_token("shop", "db", "db-0");
    // Pod A's token asking for pod B, however the parameters are repeated:
    // the first value is the one authorized and the one served.
    for query in ["namespace=shop&pod=db-1", "namespace=shop&pod=db-1&pod=db-0"] {
        let (status, body) = get(&server, db0(), query).await;
        assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("system:serviceaccount:shop:db", "shop", "db-1").as_str()), "{query}");
    }
    let (status, body) = get(&server, db0(), "namespace=shop&pod=db-0&pod=db-1").await;
    assert_eq!((status, body["namespace"].as_str(), body["pod"].as_str()), (200, Some("shop"), Some("db-0")));
    // A repeated namespace: the token's own namespace second is not enough.
    let (status, body) = get(&server, db0(), "namespace=evil&pod=db-0&namespace=shop").await;
    assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("system:serviceaccount:shop:db", "evil", "db-0").as_str()));
    // A token naming two pods is bound to neither.
    let mut two = db0();
    two.extra.insert(tessera_authn::token::EXTRA_POD_NAME.to_owned(), vec!["db-0".into(), "db-1".into()]);
    let (status, body) = get(&server, two, "namespace=shop&pod=db-0").await;
    assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("system:serviceaccount:shop:db", "shop", "db-0").as_str()));
}

#[tokio::test]
async fn a_repeated_namespace_means_its_first_value_for_rbac_and_answer() {
    let (server, _dir) = start().await;
    seed(&server).await;
    grant_eve_servers_in_evil(&server).await;
    ready(&server).await;
    // Authorized in shop (where eve may not): 403 naming shop.
    let (status, body) = get(&server, user("eve"), "namespace=shop&namespace=evil&pod=db-0").await;
    assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("eve", "shop", "db-0").as_str()));
    // Authorized in evil: the answer is evil's (no such pod), never shop's db-0.
    let (status, body) = get(&server, user("eve"), "namespace=evil&namespace=shop&pod=db-0").await;
    assert_eq!((status, body["message"].as_str(), body["reason"].as_str()), (404, Some("pods \"db-0\" not found"), Some("NotFound")));
    for path in [super::EXPLAIN_PATH, super::WHO_CAN_REACH_PATH] {
        let (status, body) = send(&server, user("eve"), http::Method::GET, &format!("{path}?namespace=evil&pod=db-0&port=8080&from=unauthenticated&namespace=shop")).await;
        assert_eq!((status, body["message"].as_str()), (404, Some("pods \"db-0\" not found")), "{path}");
        let (status, body) = send(&server, user("eve"), http::Method::GET, &format!("{path}?namespace=shop&pod=db-0&port=8080&from=unauthenticated&namespace=evil")).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            body["message"],
            "servers.policy.linkerd.io is forbidden: User \"eve\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\""
        );
    }
}

#[tokio::test]
async fn percent_encoded_paths_are_the_same_api_and_authorized_as_it() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let (_, plain) = get(&server, admin(), "namespace=shop&pod=db-0").await;
    for path in ["/tessera/v1/policy/%69nbound", "/tessera/v1/policy%2Finbound", "/tessera/v1/%70olicy/inbound"] {
        let uri = format!("{path}?namespace=shop&pod=db-0");
        let (status, body) = send(&server, pod_token("shop", "db", "db-1"), http::Method::GET, &uri).await;
        assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("system:serviceaccount:shop:db", "shop", "db-0").as_str()), "{path}");
        let (status, body) = send(&server, UserInfo::anonymous(), http::Method::GET, &uri).await;
        assert_eq!((status, body["message"].as_str().unwrap()), (403, inbound_forbidden("system:anonymous", "shop", "db-0").as_str()), "{path}");
        // Its own pod's token: the same answer as the plain path.
        let (status, body) = send(&server, pod_token("shop", "db", "db-0"), http::Method::GET, &uri).await;
        assert_eq!((status, &body), (200, &plain), "{path}");
        let (status, body) = send(&server, admin(), http::Method::GET, &format!("{path}?namespace=shop")).await;
        assert_eq!((status, body["message"].as_str()), (400, Some("the pod parameter is required")), "{path}");
    }
    // Explain spelled with escapes is still not for a pod's token.
    let (status, body) = send(&server, pod_token("shop", "db", "db-0"), http::Method::GET, "/tessera/v1/policy/%65xplain?namespace=shop&pod=db-0&port=8080&from=unauthenticated").await;
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:db\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\""
    );
    // Near misses are other paths: authorized as such, and served nothing.
    for path in ["/tessera/v1/policy/inbound/", "/tessera/v1/policy/inbound%2F", "/tessera/v1/policy/inbound%3F"] {
        let uri = format!("{path}?namespace=shop&pod=db-0");
        let (status, body) = send(&server, pod_token("shop", "db", "db-0"), http::Method::GET, &uri).await;
        let decoded = path.replace("%2F", "/").replace("%3F", "?");
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["message"], format!("forbidden: User \"system:serviceaccount:shop:db\" cannot get path \"{decoded}\""), "{path}");
        assert_eq!(send(&server, admin(), http::Method::GET, &uri).await.0, 404, "{path}");
    }
}

#[tokio::test]
async fn only_get_and_head_are_served() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let query = "namespace=shop&pod=db-0&port=8080&from=unauthenticated";
    for path in [super::PATH, super::EXPLAIN_PATH, super::WHO_CAN_REACH_PATH] {
        for method in [http::Method::POST, http::Method::PUT, http::Method::PATCH, http::Method::DELETE] {
            // Not a policy request: the pod's token is refused as for any path.
            let (status, body) = send(&server, pod_token("shop", "db", "db-0"), method.clone(), &format!("{path}?{query}")).await;
            assert_eq!(status, 403, "{method} {path}");
            let verb = method.as_str().to_ascii_lowercase();
            assert_eq!(body["message"], format!("forbidden: User \"system:serviceaccount:shop:db\" cannot {verb} path \"{path}\""), "{method} {path}");
            // Who may use the path gets 405: nothing is served but GET.
            assert_eq!(send(&server, admin(), method.clone(), &format!("{path}?{query}")).await.0, 405, "{method} {path}");
        }
    }
    // HEAD is a GET without the body, authorized as one.
    assert_eq!(send(&server, pod_token("shop", "db", "db-0"), http::Method::HEAD, &format!("{}?namespace=shop&pod=db-0", super::PATH)).await.0, 200);
    assert_eq!(send(&server, pod_token("shop", "db", "db-1"), http::Method::HEAD, &format!("{}?namespace=shop&pod=db-0", super::PATH)).await.0, 403);
    assert_eq!(send(&server, pod_token("shop", "db", "db-0"), http::Method::HEAD, &format!("{}?{query}", super::EXPLAIN_PATH)).await.0, 403);
}
