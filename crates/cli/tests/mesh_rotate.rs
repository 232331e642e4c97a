//! Issue 17's rotation must-show with real processes: api and data-store
//! under `tessera agent run --mesh`, their proxies and `tessera identity`
//! taking the trust anchors from the bundle ConfigMap. A client loops
//! requests client → api's proxy → api → outbound proxy → mTLS → data-store's
//! proxy → data store while `tessera identity rotate` runs the full anchor
//! rotation and then an issuer-only rotation. A third meshed pod whose
//! ServiceAccount is deleted cannot renew: the first run stops at step 4
//! naming it, with the old anchor kept; once its pod is gone the rerun
//! resumes and finishes. No request may fail; each step's wait is seen in
//! the command's output; afterwards every proxy trusts only the new anchor
//! and holds a leaf of the last issuer.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::mesh::{API_APP, DATA_STORE_APP, Proc, api_and_data_store, bootstrap, curl, python, ready_pod_ip, tessera};
use support::{Server, json};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";
const BUNDLE: &str = "linkerd/tessera-identity-trust-roots";

/// `tessera identity` reading its anchors from the bundle ConfigMap; its address.
fn identity(server: &Server, issuer_dir: &Path) -> (Proc, String) {
    let issuer_dir = issuer_dir.display().to_string();
    support::mesh::identity_trusting(server, &["--trust-anchors-configmap", BUNDLE], &["--issuer-dir", &issuer_dir])
}

/// `ns/ns-0` under `tessera agent run --mesh`, its proxy trusting the bundle ConfigMap.
fn meshed(server: &Server, ns: &str, port: &str, identity_addr: &str, app: &[&str]) -> Proc {
    let trust = ["--identity-trust-anchors-configmap", BUNDLE];
    support::mesh::meshed_trusting(server, &format!("{ns}-0"), ns, &["--port", port], identity_addr, &trust, app)
}

/// One request through both proxies; an error unless the data store saw the api's identity.
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
    let client_id =
        seen.as_ref().and_then(|s| s["headers"].as_array()?.iter().find(|h| h[0] == "l5d-client-id")?[1].as_str().map(str::to_owned));
    if ok && client_id.as_deref() == Some(API_ID) { Ok(()) } else { Err(format!("request {n}: {text}")) }
}

/// A proxy's `GET /trust`.
fn trust(pod_ip: &str) -> serde_json::Value {
    let (code, body) = curl(&format!("http://{pod_ip}:4191/trust"));
    assert_eq!(code, 200, "{body}");
    json(&body)
}

fn annotation(server: &Server, ns: &str, key: &str) -> String {
    let path = format!("jsonpath={{.metadata.annotations.{}}}", key.replace('.', r"\."));
    server.kubectl_ok(&["get", "pod", &format!("{ns}-0"), "-n", ns, "-o", &path])
}

fn rotation_state(server: &Server) -> serde_json::Value {
    json(&server.kubectl_ok(&["get", "configmap", "tessera-identity-rotation", "-n", "linkerd", "-o", "jsonpath={.data.state}"]))
}

fn bundle_certs(server: &Server) -> usize {
    server
        .kubectl_ok(&["get", "configmap", "tessera-identity-trust-roots", "-n", "linkerd", "-o", r"jsonpath={.data.ca-bundle\.crt}"])
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

fn rotate_cmd(server: &Server, pki: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = tessera(&["identity", "rotate", "--kubeconfig"]);
    command
        .arg(&server.kubeconfig)
        .arg("--anchor-dir")
        .arg(pki)
        .arg("--issuer-dir")
        .arg(pki)
        .args(["--poll-interval", "200ms"])
        .args(extra)
        .env("TESSERA_LOG", "warn");
    command
}

/// Runs `tessera identity rotate` to the end; its stdout.
fn rotate(server: &Server, pki: &Path, extra: &[&str]) -> String {
    let out = rotate_cmd(server, pki, &[&["--step-timeout", "40s"], extra].concat()).output().expect("identity rotate");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "rotate failed:\n{stdout}\n{stderr}");
    stdout
}

#[derive(Default)]
struct Load {
    sent: u64,
    failures: Vec<String>,
}

#[test]
fn a_full_and_an_issuer_only_rotation_under_load_fail_no_request() {
    let server = Server::start();
    api_and_data_store(&server);
    let _ = server.kubectl(&["create", "ns", "linkerd"]);
    let pki = server.path("trust");
    bootstrap(&pki, &[]);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        &format!("--from-file=ca-bundle.crt={}", pki.join("ca.crt").display()),
    ]);
    let (_identity, identity_addr) = identity(&server, &pki);
    let python = python();
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &[&python, "-c", API_APP, DATA_STORE_URL]);
    // A third meshed pod that will lose its identity: its ServiceAccount goes,
    // so its proxy's Certify calls are refused and it cannot renew.
    server.kubectl_ok(&["create", "ns", "stuck"]);
    server.kubectl_ok(&["create", "sa", "stuck", "-n", "stuck"]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "node-runs-pods",
        "-n",
        "stuck",
        "--clusterrole=tessera:node-pod-runner",
        "--user=system:node:node-stuck",
    ]);
    let stuck = meshed(&server, "stuck", "8082", &identity_addr, &[&python, "-c", DATA_STORE_APP]);
    let ips = [ready_pod_ip(&server, "api"), ready_pod_ip(&server, "data-store")];
    ready_pod_ip(&server, "stuck");
    let api = format!("{}:8080", ips[0]);
    server.eventually(20, "the data store reachable through the api", || request(&api, 0).ok());
    let old_anchor = trust(&ips[0])["anchors"][0].as_str().unwrap().to_owned();
    // Both annotations: the agent may report the anchors before the first leaf's issuer.
    server.eventually(10, "the agents' trust annotations", || {
        ["api", "data-store", "stuck"]
            .iter()
            .all(|ns| {
                annotation(&server, ns, "tessera.io/trust-anchors") == old_anchor
                    && annotation(&server, ns, "tessera.io/leaf-issuer").starts_with("sha256:")
            })
            .then_some(())
    });

    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let client = {
        let (load, stop, api) = (load.clone(), stop.clone(), api.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                let result = request(&api, n);
                let mut load = load.lock().unwrap();
                load.sent += 1;
                if let Err(e) = result {
                    load.failures.push(e);
                }
                drop(load);
                n += 1;
                // Paced: load, not a stress test of the shared machine.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    // The proxy that cannot renew stops the rotation before step 5, named, and the old anchor stays.
    let old_issuer = annotation(&server, "stuck", "tessera.io/leaf-issuer");
    server.kubectl_ok(&["delete", "sa", "stuck", "-n", "stuck"]);
    let out = rotate_cmd(&server, &pki, &["--step-timeout", "8s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let new_issuer = rotation_state(&server)["newIssuer"].as_str().unwrap().to_owned();
    assert!(
        stderr.contains(&format!(
            "step 4/6 did not finish within 8s; the rotation stopped there (rerun to resume). 1 proxies holding it up:\n  stuck/stuck-0: holds a leaf from issuer {old_issuer}, not the new issuer {new_issuer}"
        )),
        "{stderr}"
    );
    assert_eq!(bundle_certs(&server), 2, "the old anchor stays");
    let status = String::from_utf8_lossy(
        &tessera(&["identity", "rotate", "--status", "--kubeconfig"]).arg(&server.kubeconfig).output().unwrap().stdout,
    )
    .into_owned();
    assert!(status.contains("in progress at step 4/6") && status.contains("proxies done: 2/3\n  stuck/stuck-0: holds a leaf"), "{status}");

    // Its pod goes; the rerun resumes at step 4 and finishes: each wait reported done for both proxies.
    drop(stuck);
    server.eventually(30, "the stuck pod deleted", || {
        (!server.kubectl(&["get", "pod", "stuck-0", "-n", "stuck"]).status.success()).then_some(())
    });
    let full = rotate(&server, &pki, &[]);
    assert!(full.starts_with("resuming rotation ") && full.contains(" at step 4/6"), "{full}");
    let full_done = started.elapsed();
    let first = String::from_utf8_lossy(&out.stdout);
    assert!(first.contains("the bundle holds 2 anchors") && first.contains("step 2/6 done: 3/3 proxies"), "{first}");
    for step in [4, 6] {
        assert!(full.contains(&format!("step {step}/6 done: 2/2 proxies")), "{full}");
    }
    let state = rotation_state(&server);
    let new_anchor = state["signingAnchor"].as_str().unwrap().to_owned();
    let first_issuer = state["newIssuer"].as_str().unwrap().to_owned();
    assert!(full.contains(&format!("step 5/6 done: removed {old_anchor}; the bundle holds {new_anchor}")), "{full}");

    // Then the yearly issuer renewal.
    let issuer_only = rotate(&server, &pki, &["--issuer-only"]);
    let second_issuer = rotation_state(&server)["newIssuer"].as_str().unwrap().to_owned();
    assert_ne!(second_issuer, first_issuer);
    assert!(issuer_only.contains("step 4/6 done: 2/2 proxies"), "{issuer_only}");

    // A few more requests on the final credentials, then the verdict.
    let after = load.lock().unwrap().sent + 50;
    server.eventually(30, "requests after the rotations", || (load.lock().unwrap().sent >= after).then_some(()));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let load = load.lock().unwrap();
    println!(
        "rotation: {} requests, {} failed; full rotation done at {full_done:?}, issuer-only at {:?}",
        load.sent,
        load.failures.len(),
        started.elapsed()
    );
    assert!(load.failures.is_empty(), "{} of {} requests failed: {:?}", load.failures.len(), load.sent, load.failures);
    for (ns, ip) in ["api", "data-store"].iter().zip(&ips) {
        let t = trust(ip);
        assert_eq!(t["anchors"], serde_json::json!([new_anchor]), "{ns}: the old anchor is trusted nowhere");
        assert_eq!(t["leaf"]["issuer"], second_issuer.as_str(), "{ns}");
        assert_eq!(annotation(&server, ns, "tessera.io/trust-anchors"), new_anchor);
        assert_eq!(annotation(&server, ns, "tessera.io/leaf-issuer"), second_issuer);
    }
}
