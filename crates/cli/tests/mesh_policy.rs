//! Inbound authorization policy end to end (issue 16): the seed 001/004
//! world (api → data-store, both meshed) plus a third meshed client `other`.
//! Once a Server on the data store's port, a MeshTLSAuthentication naming
//! the api's identity and an AuthorizationPolicy tying them are applied with
//! kubectl, the data store's proxy lets the api through and refuses `other`
//! (403, `l5d-proxy-error`), refuses an unmeshed client (HTTP 403, opaque
//! TCP closed), and counts both in Linkerd's authz metrics. Deleting the
//! AuthorizationPolicy denies the api within about a second, with no proxy
//! restart.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::mesh::{DATA_STORE_APP, api_and_data_store, curl, identity, meshed_as, python, ready_ip_of};
use support::policy::{CLIENT_APP, api_only_policy};
use support::{Server, json};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const OTHER_ID: &str = "other.other.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";

/// The value of the sample `name{labels}` in a Prometheus text, if present.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
}

#[test]
fn an_authorization_policy_admits_the_api_only_and_its_removal_applies_without_restart() {
    let server = Server::start();
    api_and_data_store(&server);
    server.kubectl_ok(&["create", "ns", "other"]);
    server.kubectl_ok(&["create", "sa", "other", "-n", "other"]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "node-runs-pods",
        "-n",
        "other",
        "--clusterrole=tessera:node-pod-runner",
        "--user=system:node:node-other",
    ]);
    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let anchors = pki.join("ca.crt");
    let python = python();
    // Pod names of their own: addresses derive from node, namespace and pod,
    // so the seed-004 tests running beside this one never collide with it.
    let port = |p: &'static str| ["--port", p];
    let _data_store =
        meshed_as(&server, "data-store-p", "data-store", &port("8081"), &identity_addr, &anchors, &[&python, "-c", DATA_STORE_APP]);
    let client = [python.as_str(), "-c", CLIENT_APP, DATA_STORE_URL];
    let _api = meshed_as(&server, "api-p", "api", &port("8080"), &identity_addr, &anchors, &client);
    let _other = meshed_as(&server, "other-p", "other", &port("8080"), &identity_addr, &anchors, &client);
    // Ready means: a certificate and the pod's first inbound policy.
    let data_store_ip = ready_ip_of(&server, "data-store", "data-store-p");
    let api_ip = ready_ip_of(&server, "api", "api-p");
    let other_ip = ready_ip_of(&server, "other", "other-p");
    let (api_url, other_url) = (format!("http://{api_ip}:8080/data"), format!("http://{other_ip}:8080/data"));

    // No Server yet: the default policy (all-unauthenticated) lets everyone in.
    server.eventually(20, "the data store reachable from other under the default policy", || (curl(&other_url).0 == 200).then_some(()));

    let out = server.kubectl_stdin(&["apply", "-f", "-"], &api_only_policy());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // other: refused by the data store's proxy, with Linkerd's reason.
    let (code, body) = server.eventually(10, "other denied once the policy applies", || {
        let answer = curl(&other_url);
        (answer.0 == 403).then_some(answer)
    });
    assert_eq!(code, 403);
    let denied = json(&body);
    assert_eq!(denied["proxyError"], "unauthorized request on route", "{body}");
    assert_eq!(denied["body"], "unauthorized request on route\n", "{body}");

    // api: allowed, and the data store sees its identity.
    let (code, body) = curl(&api_url);
    assert_eq!(code, 200, "{body}");
    let seen = json(&json(&body)["body"].as_str().unwrap_or_default().to_owned());
    let client_ids: Vec<&str> =
        seen["headers"].as_array().unwrap().iter().filter(|h| h[0] == "l5d-client-id").filter_map(|h| h[1].as_str()).collect();
    assert_eq!(client_ids, [API_ID]);

    // An unmeshed client: HTTP gets the 403; opaque bytes get the connection closed.
    let (code, body) = curl(&format!("http://{data_store_ip}:8081/data"));
    assert_eq!((code, body.as_str()), (403, "unauthorized request on route\n"));
    let mut tcp = TcpStream::connect(format!("{data_store_ip}:8081")).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    tcp.write_all(b"\x00\x01\x02 not http").expect("write");
    let mut buf = [0u8; 64];
    let read = tcp.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "closed: {read:?}");

    // Linkerd's metrics, with the Server and the authorization named.
    let metrics_url = format!("http://{data_store_ip}:4191/metrics");
    let (_, metrics) = curl(&metrics_url);
    let target = format!(r#"target_addr="{data_store_ip}:8081",target_ip="{data_store_ip}",target_port="8081""#);
    let srv = r#"srv_group="policy.linkerd.io",srv_kind="server",srv_name="data-store-http""#;
    let route = r#"route_group="",route_kind="default",route_name="default""#;
    let authz = r#"authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="api-only""#;
    let allow = format!(r#"inbound_http_authz_allow_total{{{target},{srv},{route},{authz},tls="true",client_id="{API_ID}"}}"#);
    let deny = format!(r#"inbound_http_authz_deny_total{{{target},{srv},{route},tls="true",client_id="{OTHER_ID}"}}"#);
    let tcp_deny = format!(r#"inbound_tcp_authz_deny_total{{{target},{srv},tls="no_identity",no_tls_reason="no_tls_from_remote"}}"#);
    let allowed = sample(&metrics, &allow).unwrap_or_else(|| panic!("missing {allow}\n{metrics}"));
    assert!(allowed >= 1.0);
    assert!(sample(&metrics, &deny).is_some_and(|v| v >= 1.0), "missing {deny}\n{metrics}");
    assert_eq!(sample(&metrics, &tcp_deny), Some(1.0), "{metrics}");

    // Removing the AuthorizationPolicy: the api is denied within about a second.
    server.kubectl_ok(&["delete", "authorizationpolicy", "api-only", "-n", "data-store"]);
    let deleted = Instant::now();
    let deadline = deleted + Duration::from_secs(3);
    loop {
        if curl(&api_url).0 == 403 {
            break;
        }
        assert!(Instant::now() < deadline, "the api still allowed {:?} after the AuthorizationPolicy was deleted", deleted.elapsed());
    }
    eprintln!("api denied {:?} after the AuthorizationPolicy was deleted", deleted.elapsed());
    // The same proxy process: its counters kept counting (a restart would have reset them).
    let (_, metrics) = curl(&metrics_url);
    assert!(sample(&metrics, &allow).is_some_and(|v| v >= allowed), "{metrics}");
    let api_deny = format!(r#"inbound_http_authz_deny_total{{{target},{srv},{route},tls="true",client_id="{API_ID}"}}"#);
    assert!(sample(&metrics, &api_deny).is_some_and(|v| v >= 1.0), "missing {api_deny}\n{metrics}");
}
