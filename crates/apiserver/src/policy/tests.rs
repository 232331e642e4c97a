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

async fn start() -> (InProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(tessera_store::sqlite::SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let server = InProcess::start(store, &dir.path().join("keys")).await.unwrap();
    (server, dir)
}

async fn put(server: &InProcess, key: &str, value: Value) {
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
