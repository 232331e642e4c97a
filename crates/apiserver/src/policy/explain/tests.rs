//! The explain and who-can-reach APIs: the query parser on hostile input (a
//! 400 naming the parameter, never a panic), and through the real router the
//! answers, 403 and 404.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tessera_authn::UserInfo;

use super::*;
use crate::policy::tests::{put, start};
use crate::testing::InProcess;

fn parse(raw: &str) -> Result<ExplainQuery, String> {
    ExplainQuery::parse(&Query::parse(raw)).map_err(|e| {
        let status = e.to_status();
        assert_eq!((status["code"].as_u64(), status["reason"].as_str()), (Some(400), Some("BadRequest")), "{raw}");
        status["message"].as_str().unwrap().to_owned()
    })
}

const OK: &str = "namespace=shop&pod=db-0&port=8080&from=unauthenticated";

#[test]
fn parses_a_full_query() {
    let q = parse("namespace=shop&pod=db-0&port=8080&from=api.shop.serviceaccount.identity.linkerd.cluster.local&ip=10.1.2.3&method=POST&path=%2Fdata%3Fx%3D1&header=x-a%3D1&header=X-B%3D2%3D3").unwrap();
    assert_eq!((q.namespace.as_str(), q.pod.as_str(), q.port), ("shop", "db-0", 8080));
    assert_eq!(q.identity.as_deref(), Some("api.shop.serviceaccount.identity.linkerd.cluster.local"));
    assert_eq!(q.ip, Some("10.1.2.3".parse().unwrap()));
    let r = q.request.unwrap();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/data?x=1"));
    assert_eq!((r.headers["x-a"].to_str().unwrap(), r.headers["x-b"].to_str().unwrap()), ("1", "2=3"));

    let q = parse(OK).unwrap();
    assert_eq!((q.identity, q.ip, q.request), (None, None, None), "a connection from an unauthenticated client");
    let r = parse(&format!("{OK}&path=/x")).unwrap().request.unwrap();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/x"), "an HTTP request when any of method/path/header is given");
    let r = parse(&format!("{OK}&header=a%3Db")).unwrap().request.unwrap();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"));
    // A repeated singular parameter means its first value.
    assert_eq!(parse(&format!("{OK}&port=1")).unwrap().port, 8080);
    assert_eq!(parse("namespace=shop&pod=db-0&port=65535&from=unauthenticated&ip=::1").unwrap().port, 65535);
}

#[test]
fn bad_parameters_name_the_parameter() {
    let long_from = "a".repeat(254);
    for (query, message) in [
        ("", "the namespace parameter is required".to_owned()),
        ("namespace=shop&port=1&from=unauthenticated", "the pod parameter is required".to_owned()),
        ("namespace=shop&pod=db-0&from=unauthenticated", "the port parameter is required".to_owned()),
        ("namespace=shop&pod=db-0&port=&from=unauthenticated", "the port parameter is required".to_owned()),
        ("namespace=shop&pod=db-0&port=0&from=unauthenticated", "invalid port \"0\": must be a number from 1 to 65535".to_owned()),
        ("namespace=shop&pod=db-0&port=65536&from=unauthenticated", "invalid port \"65536\": must be a number from 1 to 65535".to_owned()),
        ("namespace=shop&pod=db-0&port=99999999999999999999999999&from=unauthenticated", "invalid port \"99999999999999999999999999\": must be a number from 1 to 65535".to_owned()),
        ("namespace=shop&pod=db-0&port=-1&from=unauthenticated", "invalid port \"-1\": must be a number from 1 to 65535".to_owned()),
        ("namespace=shop&pod=db-0&port=http&from=unauthenticated", "invalid port \"http\": must be a number from 1 to 65535".to_owned()),
        ("namespace=shop&pod=db-0&port=80", "the from parameter is required: a mesh identity or \"unauthenticated\"".to_owned()),
        ("namespace=shop&pod=db-0&port=80&from=", "the from parameter is required: a mesh identity or \"unauthenticated\"".to_owned()),
        ("namespace=shop&pod=db-0&port=80&from=a+b", "invalid from \"a b\": must be a mesh identity (a DNS name) or \"unauthenticated\"".to_owned()),
        ("namespace=shop&pod=db-0&port=80&from=%00", "invalid from \"\\0\": must be a mesh identity (a DNS name) or \"unauthenticated\"".to_owned()),
        (&format!("namespace=shop&pod=db-0&port=80&from={long_from}"), format!("invalid from {long_from:?}: must be a mesh identity (a DNS name) or \"unauthenticated\"")),
        (&format!("{OK}&ip=10.0.0.256"), "invalid ip \"10.0.0.256\": must be an IPv4 or IPv6 address".to_owned()),
        (&format!("{OK}&ip="), "invalid ip \"\": must be an IPv4 or IPv6 address".to_owned()),
        (&format!("{OK}&ip=10.0.0.0/8"), "invalid ip \"10.0.0.0/8\": must be an IPv4 or IPv6 address".to_owned()),
        (&format!("{OK}&method=G%20T"), "invalid method \"G T\": must be an HTTP method token".to_owned()),
        (&format!("{OK}&method="), "invalid method \"\": must be an HTTP method token".to_owned()),
        (&format!("{OK}&path=data"), "invalid path \"data\": must be an absolute path starting with /".to_owned()),
        (&format!("{OK}&path="), "invalid path \"\": must be an absolute path starting with /".to_owned()),
        (&format!("{OK}&path=/a%20b"), "invalid path \"/a b\": must be an absolute path starting with /".to_owned()),
        (&format!("{OK}&header=x"), "invalid header \"x\": expected NAME=VALUE".to_owned()),
        (&format!("{OK}&header=%3Dv"), "invalid header \"=v\": invalid header name".to_owned()),
        (&format!("{OK}&header=a%20b%3Dv"), "invalid header \"a b=v\": invalid header name".to_owned()),
        (&format!("{OK}&header=a%3D%0Av"), "invalid header \"a=\\nv\": invalid header value".to_owned()),
        (&format!("{OK}{}", "&header=a%3Db".repeat(65)), "too many header parameters: at most 64".to_owned()),
    ] {
        assert_eq!(parse(query).unwrap_err(), message, "{query}");
    }
}

/// Arbitrary bytes in every parameter: an answer or a 400, never a panic.
#[test]
fn never_panics_on_odd_input() {
    let odd = ["", "%", "%zz", "%ff%fe", "\u{7f}", "💥", "a=b=c", "/", "//", "?", "&", ";", "+", "%00", "65535", "::", "[::1]", "0x10", " 1", "1 "];
    let names = ["namespace", "pod", "port", "from", "ip", "method", "path", "header"];
    for name in names {
        for value in odd {
            let base: Vec<String> = [("namespace", "shop"), ("pod", "db-0"), ("port", "80"), ("from", "unauthenticated")]
                .iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let raw = format!("{}&{name}={value}", base.join("&"));
            let _ = ExplainQuery::parse(&Query::parse(&raw));
        }
    }
}

const API: &str = "api.shop.serviceaccount.identity.linkerd.cluster.local";

async fn seed(server: &InProcess) {
    put(server, "/registry/namespaces/shop", json!({"metadata": {"name": "shop", "annotations": {"config.linkerd.io/default-inbound-policy": "cluster-authenticated"}}})).await;
    put(server, "/registry/pods/shop/db-0", json!({"metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
        "spec": {"serviceAccountName": "db", "containers": [{"name": "db", "ports": [{"name": "http", "containerPort": 8080}]}]}})).await;
    put(server, "/registry/policy.linkerd.io/servers/shop/db-http", json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
        "metadata": {"name": "db-http", "namespace": "shop"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "port": "http", "proxyProtocol": "HTTP/1"}})).await;
    put(server, "/registry/policy.linkerd.io/meshtlsauthentications/shop/api", json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication",
        "metadata": {"name": "api", "namespace": "shop"}, "spec": {"identities": [API]}})).await;
    put(server, "/registry/policy.linkerd.io/authorizationpolicies/shop/api", json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "api", "namespace": "shop"}, "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "db-http"},
        "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "api"}]}})).await;
}

fn admin() -> UserInfo {
    UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() }
}

async fn get(server: &InProcess, user: UserInfo, path: &str, query: &str) -> (u16, Value) {
    let request = http::Request::get(format!("{path}?{query}")).body(Body::empty()).unwrap();
    let response = server.call(user, request).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn ready(server: &InProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let query = format!("namespace=shop&pod=db-0&port=8080&from={API}");
    while get(server, admin(), crate::policy::EXPLAIN_PATH, &query).await.1["decision"]["verdict"] != "allow" {
        assert!(tokio::time::Instant::now() < deadline, "the policy cache never saw the pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn explains_through_the_router() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    let (status, body) = get(&server, admin(), crate::policy::EXPLAIN_PATH, &format!("namespace=shop&pod=db-0&port=8080&from={API}&path=/x")).await;
    assert_eq!(status, 200);
    assert_eq!(body["pod"], json!({"namespace": "shop", "name": "db-0", "port": 8080}));
    assert_eq!(body["client"], json!({"identity": API, "address": "10.0.0.1"}), "the first host of the first cluster network");
    assert_eq!(body["request"], json!({"method": "GET", "path": "/x"}));
    assert_eq!(body["decision"]["authorization"], json!(["AuthorizationPolicy", "api"]));
    let (_, body) = get(&server, admin(), crate::policy::EXPLAIN_PATH, "namespace=shop&pod=db-0&port=8080&from=unauthenticated&ip=192.0.2.1").await;
    assert_eq!((body["decision"]["verdict"].as_str(), body["decision"]["reason"].as_str()), (Some("deny"), Some("unauthorized connection on server/db-http")));
    assert_eq!(body["request"], Value::Null);
    // A port no Server selects: the namespace's default (cluster-authenticated).
    let (_, body) = get(&server, admin(), crate::policy::EXPLAIN_PATH, "namespace=shop&pod=db-0&port=9&from=unauthenticated").await;
    assert_eq!(body["decision"]["reason"], "unauthorized connection on default/cluster-authenticated");

    let (status, body) = get(&server, admin(), crate::policy::WHO_CAN_REACH_PATH, "namespace=shop&pod=db-0&port=8080").await;
    assert_eq!(status, 200);
    assert_eq!(body["server"], json!({"name": "db-http", "proxyProtocol": "HTTP/1", "accessPolicy": null}));
    assert_eq!(body["allowed"].as_array().unwrap().len(), 1);
    assert_eq!(body["allowed"][0]["identities"], json!([API]));
    assert_eq!(body["allowed"][0]["scope"], "all");
    let (_, body) = get(&server, admin(), crate::policy::WHO_CAN_REACH_PATH, "namespace=shop&pod=db-0&port=9").await;
    assert_eq!((body["server"].clone(), body["defaultPolicy"].as_str()), (Value::Null, Some("cluster-authenticated")));
    assert_eq!(body["allowed"][0]["identities"], json!(["*"]));
}

#[tokio::test]
async fn errors_are_kube_statuses() {
    let (server, _dir) = start().await;
    seed(&server).await;
    ready(&server).await;
    for path in [crate::policy::EXPLAIN_PATH, crate::policy::WHO_CAN_REACH_PATH] {
        let (status, body) = get(&server, admin(), path, "namespace=shop&pod=db-0&port=70000&from=unauthenticated").await;
        assert_eq!((status, body["message"].as_str()), (400, Some("invalid port \"70000\": must be a number from 1 to 65535")), "{path}");
        let (status, body) = get(&server, admin(), path, "namespace=shop&pod=nope&port=80&from=unauthenticated").await;
        assert_eq!((status, body["message"].as_str(), body["reason"].as_str()), (404, Some("pods \"nope\" not found"), Some("NotFound")), "{path}");
        // Not even the pod's own token: these are for people who may read the policy.
        let pod_token = UserInfo {
            username: "system:serviceaccount:shop:db".into(),
            groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:shop".into(), "system:authenticated".into()],
            extra: [(tessera_authn::token::EXTRA_POD_NAME.to_owned(), vec!["db-0".to_owned()])].into(),
            ..Default::default()
        };
        for (user, name) in [(pod_token, "system:serviceaccount:shop:db"), (UserInfo::anonymous(), "system:anonymous")] {
            let (status, body) = get(&server, user, path, "namespace=shop&pod=db-0&port=8080&from=unauthenticated").await;
            assert_eq!(status, 403, "{path}: {body}");
            assert_eq!(
                body["message"].as_str().unwrap(),
                format!("servers.policy.linkerd.io is forbidden: User \"{name}\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\"")
            );
            assert_eq!(body["details"], json!({"group": "policy.linkerd.io", "kind": "servers"}));
        }
    }
}
