//! Seed 004 end to end: api and data-store each run under `tessera agent run
//! --mesh`, which puts `tessera proxy` beside them on their own loopback
//! address with a certificate from a real `tessera identity`. The api app
//! reaches `http://data-store.data-store.svc.cluster.local:8081` through
//! `HTTP_PROXY` with no mesh code of its own; the data store learns who
//! called from `l5d-client-id`; `tessera edges` shows the edge SECURED and
//! `tessera tap` shows `tls=true`, for a caller the API allows to tap.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::mesh::{API_APP, DATA_STORE_APP, api_and_data_store, curl, identity, meshed, meshed_as, python, ready_ip_of, ready_pod_ip, tessera};
use support::{Server, json};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";

fn setup(server: &Server) {
    api_and_data_store(server);
    // Who may tap: Linkerd's tap-admin rule (and listing pods, to find them), given to one ServiceAccount.
    server.kubectl_ok(&["create", "sa", "tapper", "-n", "default"]);
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: tap-admin}\nrules:\n- {apiGroups: [tap.linkerd.io], resources: [\"*\"], verbs: [watch]}\n- {apiGroups: [\"\"], resources: [pods], verbs: [list]}\n";
    let out = server.kubectl_stdin(&["create", "-f", "-"], role);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.kubectl_ok(&["create", "clusterrolebinding", "tapper", "--clusterrole=tap-admin", "--serviceaccount=default:tapper"]);
}

#[test]
fn meshed_api_and_data_store_talk_mutual_tls_and_the_mesh_is_visible() {
    let server = Server::start();
    setup(&server);
    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let python = python();
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &pki.join("ca.crt"), &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &pki.join("ca.crt"), &[&python, "-c", API_APP, DATA_STORE_URL]);
    let data_store_ip = ready_pod_ip(&server, "data-store");
    let api_ip = ready_pod_ip(&server, "api");
    assert!(data_store_ip.starts_with("127.") && data_store_ip != "127.0.0.1" && data_store_ip != api_ip, "{data_store_ip} {api_ip}");
    let pod = json(&server.kubectl_ok(&["get", "pod", "api-0", "-n", "api", "-o", "json"]));
    assert_eq!(pod["metadata"]["annotations"]["linkerd.io/inject"], "enabled");
    assert_eq!(pod["metadata"]["annotations"]["tessera.io/proxy-admin-port"], "4191");
    assert_eq!(pod["spec"]["containers"][1]["name"], "linkerd-proxy");
    // The agent runs the sidecar executable cargo built beside it, not `tessera proxy`.
    let proxy_status = pod["status"]["containerStatuses"].as_array().and_then(|s| s.iter().find(|c| c["name"] == "linkerd-proxy")).cloned();
    let sidecar = std::fs::canonicalize(env!("CARGO_BIN_EXE_tessera-proxy")).unwrap();
    assert_eq!(proxy_status.as_ref().map(|c| &c["imageID"]), Some(&serde_json::Value::String(format!("file://{}", sidecar.display()))), "{pod}");

    // The api reaches the data store by its Service name, through its proxy:
    // the data store sees the api's identity, and only that one.
    let api_url = format!("http://{api_ip}:8080/hello");
    let (code, body) = server.eventually(20, "the data store's endpoints reaching the api's proxy", || {
        let answer = curl(&api_url);
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(code, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["path"], "/hello");
    let client_ids: Vec<&str> = seen["headers"].as_array().unwrap().iter().filter(|h| h[0] == "l5d-client-id").filter_map(|h| h[1].as_str()).collect();
    assert_eq!(client_ids, [API_ID], "the forged l5d-client-id is replaced: {body}");

    // A TLS client without a client certificate gets no application data through.
    let mut openssl = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{data_store_ip}:8081"),
            "-servername",
            "data-store.data-store.serviceaccount.identity.linkerd.cluster.local",
            "-CAfile",
        ])
        .arg(pki.join("ca.crt"))
        .args(["-quiet", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let _ = openssl.stdin.take().expect("stdin").write_all(b"GET /secret HTTP/1.1\r\nHost: data-store\r\nConnection: close\r\n\r\n");
    let out = openssl.wait_with_output().expect("openssl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("HTTP/1.1") && !stdout.contains("/secret"), "no application data without a client certificate: {stdout}");

    // edges: api → data-store, SECURED.
    let edges = server.eventually(10, "the edge in tessera edges", || {
        let out = tessera(&["edges", "-n", "data-store"]).env("KUBECONFIG", &server.kubeconfig).output().expect("tessera edges");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| l.starts_with("api-0 ")).then_some(text)
    });
    let mut lines = edges.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"], "{edges}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row, ["api-0", "data-store-0", "api", "data-store", "√"], "{edges}");

    // tap: a ServiceAccount the API lets tap sees the request with tls=true.
    let token = server.kubectl_ok(&["create", "token", "tapper", "-n", "default"]);
    let tapper = server.kubeconfig_for_token("tapper", token.trim());
    let mut tap = tessera(&["tap", "-n", "data-store", "data-store-0", "--max-events", "2", "--kubeconfig"])
        .arg(&tapper)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera tap");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tap.try_wait().expect("tap").is_none() {
        assert!(Instant::now() < deadline, "tessera tap saw no traffic");
        assert_eq!(curl(&format!("http://{api_ip}:8080/tapped")).0, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = tap.wait_with_output().expect("tap output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    let req = text.lines().find(|l| l.starts_with("req ")).unwrap_or_else(|| panic!("{text}"));
    assert!(req.contains(" proxy=in  ") && req.contains(&format!(" dst={data_store_ip}:8081 ")) && req.contains(" tls=true "), "{req}");
    assert!(req.contains(" :method=GET :authority=data-store.data-store.svc.cluster.local:8081 :path=/tapped"), "{req}");
    let rsp = text.lines().find(|l| l.starts_with("rsp ")).unwrap_or_else(|| panic!("{text}"));
    assert!(rsp.contains(" tls=true :status=200 latency=") && rsp.ends_with("µs"), "{rsp}");

    // Callers the API does not let tap get kube's 403, word for word.
    let api_token = server.kubectl_ok(&["create", "token", "api", "-n", "api"]);
    let out = tessera(&["tap", "-n", "data-store", "data-store-0", "--token", api_token.trim()]).env("KUBECONFIG", &server.kubeconfig).output().expect("tap");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"error: data-store/data-store-0: 403: pods.tap.linkerd.io "data-store-0" is forbidden: User "system:serviceaccount:api:api" cannot watch resource "pods/tap" in API group "tap.linkerd.io" in the namespace "data-store""#
    );
    let admin = format!("http://{data_store_ip}:4191/tap");
    let out = Command::new("curl").args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", &admin]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n401") && text.contains(r#""reason":"Unauthorized""#), "{text}");
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{} is missing: the README's test command builds the examples (cargo build --examples -p tessera-auth)", path.display());
    path.display().to_string()
}

/// Seed 001's own services, unchanged, meshed by `--mesh`: the api calls the
/// data store by its Service name through HTTP_PROXY, and the edge is secured.
#[test]
fn the_seed_001_demo_meshed_by_one_flag() {
    let server = Server::start();
    setup(&server);
    server.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "role-tokenreview-binding",
        "--clusterrole=system:auth-delegator",
        "--serviceaccount=data-store:data-store",
    ]);
    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let (data_store, api) = (example("data-store"), example("api"));
    // The apps' private ports: free ones, so parallel runs never collide.
    let (data_store_port, api_port) = (free_port().to_string(), free_port().to_string());
    let (data_store_listen, api_listen) = (format!("127.0.0.1:{data_store_port}"), format!("127.0.0.1:{api_port}"));
    let _data_store = meshed_as(
        &server,
        "data-store-1",
        "data-store",
        &["--port", "8081", "--app-port", &data_store_port],
        &identity_addr,
        &pki.join("ca.crt"),
        &[&data_store, "--listen", &data_store_listen, "--cache-ttl-seconds", "0"],
    );
    let _api = meshed_as(
        &server,
        "api-1",
        "api",
        &["--port", "8080", "--app-port", &api_port, "--token", "audience=data-store,expiration=600,path=api-token"],
        &identity_addr,
        &pki.join("ca.crt"),
        &[&api, "--listen", &api_listen, "--data-store-url", DATA_STORE_URL],
    );
    ready_ip_of(&server, "data-store", "data-store-1");
    let api_ip = ready_ip_of(&server, "api", "api-1");
    let answer = server.eventually(20, "the seed-001 answer through the mesh", || {
        let answer = curl(&format!("http://{api_ip}:8080/"));
        (answer.0 == 200).then_some(answer)
    });
    assert_eq!(answer.1, "Hello from data store. You have been authenticated");
    let edges = server.eventually(10, "the edge in tessera edges", || {
        let out = tessera(&["edges"]).env("KUBECONFIG", &server.kubeconfig).output().expect("tessera edges");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| l.starts_with("api-1 ")).then_some(text)
    });
    let row: Vec<&str> = edges.lines().find(|l| l.starts_with("api-1 ")).unwrap().split_whitespace().collect();
    assert_eq!(row, ["api-1", "data-store-1", "api", "data-store", "√"], "{edges}");
}
