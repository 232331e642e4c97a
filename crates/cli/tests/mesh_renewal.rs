//! Issue 15's renewal must-shows, in one 2-minute run: api and data-store
//! under `tessera agent run --mesh`, `tessera identity` issuing 30-second
//! leaves from an issuer kept in a kubernetes.io/tls Secret. A client loops
//! through api → outbound proxy → mTLS → inbound proxy → data store while the
//! proxies renew, and halfway the Secret is replaced by a new issuer signed
//! by the same trust anchor. No request may fail; each proxy renews at least
//! three times and presents a leaf from the new issuer after its next renewal.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Server;
use support::mesh::{API_APP, DATA_STORE_APP, api_and_data_store, bootstrap, identity_with, meshed, python, ready_pod_ip};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_ID: &str = "data-store.data-store.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";
const LOAD: Duration = Duration::from_secs(120);

/// The issuer Secret's manifest for the issuer in `dir` (anchor in `anchors`).
fn issuer_secret(server: &Server, anchors: &Path, dir: &Path) -> String {
    let file = |key: &str, path: &Path| format!("--from-file={key}={}", path.display());
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "linkerd-identity-issuer",
        "-n",
        "linkerd",
        "--type=kubernetes.io/tls",
        &file("ca.crt", anchors),
        &file("tls.crt", &dir.join("crt.pem")),
        &file("tls.key", &dir.join("key.pem")),
        "--dry-run=client",
        "-o",
        "json",
    ])
}

/// The PEM blocks of `text`, each without its line breaks.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split_once("-----END CERTIFICATE-----"))
        .map(|(body, _)| body.split_whitespace().collect())
        .collect()
}

/// The issuer certificate in the chain a proxy presents on `addr` as `name`
/// (read with a TLS handshake; the proxy then refuses this client, which has
/// no certificate, but its chain has been sent).
fn presented_issuer(addr: &str, name: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", name, "-tls1_3", "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    pem_blocks(&String::from_utf8_lossy(&out.stdout)).get(1).cloned()
}

fn refresh_count(pod_ip: &str) -> u64 {
    let (code, metrics) = support::mesh::curl(&format!("http://{pod_ip}:4191/metrics"));
    assert_eq!(code, 200, "{metrics}");
    metrics.lines().find_map(|l| l.strip_prefix("identity_cert_refresh_count ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// One request through the api (which relays it through its proxy); an
/// error unless the data store answered and saw the api's identity.
fn request(api: &str, n: u64) -> Result<(), String> {
    let mut tcp = TcpStream::connect(api).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    write!(tcp, "GET /r{n} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let ok = head.lines().next().is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    let seen = serde_json::from_str::<serde_json::Value>(body).ok();
    let client_id = seen.as_ref().and_then(|s| s["headers"].as_array()?.iter().find(|h| h[0] == "l5d-client-id")?[1].as_str().map(str::to_owned));
    if ok && client_id.as_deref() == Some(API_ID) && seen.as_ref().is_some_and(|s| s["path"] == format!("/r{n}")) {
        Ok(())
    } else {
        Err(format!("request {n}: {text}"))
    }
}

#[derive(Default)]
struct Load {
    sent: u64,
    failures: Vec<String>,
}

#[test]
fn proxies_renew_30s_certificates_and_pick_up_a_replaced_issuer_under_load_without_a_failed_request() {
    let server = Server::start();
    api_and_data_store(&server);
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    let (first, second) = (server.path("issuer-1"), server.path("issuer-2"));
    bootstrap(&first, &[]);
    bootstrap(&second, &["--anchor-dir", first.to_str().unwrap()]);
    let anchors = first.join("ca.crt");
    let out = server.kubectl_stdin(&["create", "-f", "-"], &issuer_secret(&server, &anchors, &first));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_identity, identity_addr) = identity_with(
        &server,
        &anchors,
        &["--issuer-secret", "linkerd/linkerd-identity-issuer", "--issuance-lifetime", "30s", "--clock-skew-allowance", "1s"],
    );
    let python = python();
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &anchors, &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &anchors, &[&python, "-c", API_APP, DATA_STORE_URL]);
    let data_store_ip = ready_pod_ip(&server, "data-store");
    let api_ip = ready_pod_ip(&server, "api");
    let api = format!("{api_ip}:8080");
    server.eventually(20, "the data store's endpoints reaching the api's proxy", || request(&api, 0).ok());

    let issuer_pem = |dir: &Path| pem_blocks(&std::fs::read_to_string(dir.join("crt.pem")).unwrap()).remove(0);
    let (issuer_1, issuer_2) = (issuer_pem(&first), issuer_pem(&second));
    let proxies = [(api_ip.clone(), format!("{api_ip}:8080"), API_ID), (data_store_ip.clone(), format!("{data_store_ip}:8081"), DATA_STORE_ID)];
    for (_, addr, name) in &proxies {
        assert_eq!(presented_issuer(addr, name).as_deref(), Some(issuer_1.as_str()), "{name} before the rotation");
    }

    // The client: paced requests for two minutes, every outcome counted.
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let client = {
        let (load, stop, api) = (load.clone(), stop.clone(), api.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while started.elapsed() < LOAD && !stop.load(Ordering::Relaxed) {
                let result = request(&api, n);
                let mut load = load.lock().unwrap();
                load.sent += 1;
                if let Err(e) = result {
                    load.failures.push(e);
                }
                drop(load);
                n += 1;
                // Pace the loop: load, not a stress test of the shared 2-core machine.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Stop the client if an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    // Both proxies renew twice on the first issuer, then (mid-run) the Secret is replaced.
    server.eventually(80, "two renewals by each proxy", || proxies.iter().all(|(ip, _, _)| refresh_count(ip) >= 3).then_some(()));
    let out = server.kubectl_stdin(&["replace", "-f", "-"], &issuer_secret(&server, &anchors, &second));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated_at = started.elapsed();
    let before: Vec<u64> = proxies.iter().map(|(ip, _, _)| refresh_count(ip)).collect();
    // Each proxy presents a leaf of the new issuer after its next renewal (one
    // more allowed for a renewal racing the identity service's reload).
    for ((ip, addr, name), before) in proxies.iter().zip(&before) {
        let at = server.eventually(60, &format!("{name} presenting a leaf of the new issuer"), || {
            // The count after the handshake includes the renewal that brought the leaf.
            (presented_issuer(addr, name).as_deref() == Some(issuer_2.as_str())).then(|| refresh_count(ip))
        });
        assert!((before + 1..=before + 2).contains(&at), "{name}: new issuer at refresh {at}, rotation at refresh {before}");
    }
    let switched_at = started.elapsed();

    client.join().unwrap();
    let load = load.lock().unwrap();
    let counts: Vec<u64> = proxies.iter().map(|(ip, _, _)| refresh_count(ip)).collect();
    println!(
        "renewal: {} requests in {:?}, {} failed; refreshes api={} data-store={}; Secret replaced at {rotated_at:?}, both proxies on the new issuer at {switched_at:?}",
        load.sent,
        started.elapsed(),
        load.failures.len(),
        counts[0],
        counts[1]
    );
    assert!(load.failures.is_empty(), "{} of {} requests failed: {:?}", load.failures.len(), load.sent, load.failures);
    assert!(load.sent > 1000, "only {} requests in two minutes", load.sent);
    for ((_, _, name), count) in proxies.iter().zip(counts) {
        // The first certificate counts as one refresh (Linkerd's rule): three renewals make four.
        assert!(count >= 4, "{name}: identity_cert_refresh_count {count}");
    }
    for (_, addr, name) in &proxies {
        assert_eq!(presented_issuer(addr, name).as_deref(), Some(issuer_2.as_str()), "{name} after the rotation");
    }
}
