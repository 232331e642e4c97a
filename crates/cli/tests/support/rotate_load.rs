//! Included by the `mesh_rotate_*` tests with `#[path]` (beside `mod support;`).
//!
//! Three meshed workloads in a chain, web → api → data-store, each under
//! `tessera agent run --mesh` with its proxy and `tessera identity` taking
//! the trust anchors from the bundle ConfigMap, and a client that loops
//! requests through the proxies and counts every one (issue 17's rotation
//! tests under load).

#![allow(dead_code, unreachable_pub)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::mesh::{API_APP, DATA_STORE_APP, Proc, api_and_data_store, bootstrap, curl, python, ready_pod_ip, tessera};
use crate::support::{Server, json};

/// The identity the data store sees on every request (the api's).
pub const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
pub const BUNDLE: &str = "linkerd/tessera-identity-trust-roots";
/// The meshed workloads, by namespace (= ServiceAccount, pod `NS-0`).
pub const WORKLOADS: [&str; 3] = ["data-store", "api", "web"];
/// Their proxies' inbound ports, in the same order.
pub const PORTS: [u16; 3] = [8081, 8080, 8082];

/// The running mesh: server, identity, three agents.
pub struct Mesh {
    /// Agents by namespace, in [`WORKLOADS`] order (dropped first: they stop their pods).
    pub agents: Vec<Proc>,
    pub identity: Proc,
    pub server: Server,
    /// Anchor and issuer directory (`--anchor-dir`, `--issuer-dir`).
    pub pki: PathBuf,
    /// Pod IPs in [`WORKLOADS`] order.
    pub ips: Vec<String>,
    /// The anchor every proxy trusts at the start.
    pub old_anchor: String,
}

impl Mesh {
    /// Starts the chain and waits until requests pass through all three
    /// proxies and every agent reported its proxy's anchors and leaf issuer.
    pub fn start() -> Self {
        Self::start_with(&[], |_| Vec::new())
    }

    /// [`Mesh::start`] with `bootstrap_flags` for `tessera identity
    /// bootstrap` and the extra `tessera identity` flags `identity_flags`
    /// returns for the PKI directory.
    pub fn start_with(bootstrap_flags: &[&str], identity_flags: impl Fn(&Path) -> Vec<String>) -> Self {
        let server = Server::start();
        api_and_data_store(&server);
        server.kubectl_ok(&["create", "ns", "web"]);
        server.kubectl_ok(&["create", "sa", "web", "-n", "web"]);
        server.kubectl_ok(&[
            "create",
            "rolebinding",
            "node-runs-pods",
            "-n",
            "web",
            "--clusterrole=tessera:node-pod-runner",
            "--user=system:node:node-web",
        ]);
        // `kubectl create service` selects app=api.
        server.kubectl_ok(&["create", "service", "clusterip", "api", "--tcp=8080:8080", "-n", "api"]);
        let _ = server.kubectl(&["create", "ns", "linkerd"]);
        let pki = server.path("trust");
        bootstrap(&pki, bootstrap_flags);
        server.kubectl_ok(&[
            "create",
            "configmap",
            "tessera-identity-trust-roots",
            "-n",
            "linkerd",
            &format!("--from-file=ca-bundle.crt={}", pki.join("ca.crt").display()),
        ]);
        let issuer_dir = pki.display().to_string();
        let extra = identity_flags(&pki);
        let identity_extra: Vec<&str> = ["--issuer-dir", issuer_dir.as_str()].into_iter().chain(extra.iter().map(String::as_str)).collect();
        let (identity, identity_addr) =
            crate::support::mesh::identity_trusting(&server, &["--trust-anchors-configmap", BUNDLE], &identity_extra);
        let python = python();
        let trust_flags = ["--identity-trust-anchors-configmap", BUNDLE];
        let meshed = |ns: &str, port: &str, app: &[&str]| {
            crate::support::mesh::meshed_trusting(&server, &format!("{ns}-0"), ns, &["--port", port], &identity_addr, &trust_flags, app)
        };
        let agents = vec![
            meshed("data-store", "8081", &[&python, "-c", DATA_STORE_APP]),
            meshed("api", "8080", &[&python, "-c", API_APP, "http://data-store.data-store.svc.cluster.local:8081"]),
            meshed("web", "8082", &[&python, "-c", API_APP, "http://api.api.svc.cluster.local:8080"]),
        ];
        let ips: Vec<String> = WORKLOADS.iter().map(|ns| ready_pod_ip(&server, ns)).collect();
        let mut mesh = Self { agents, identity, server, pki, ips, old_anchor: String::new() };
        for target in mesh.targets() {
            mesh.server.eventually(30, &format!("the data store reachable through {target}"), || request(&target, 0).ok());
        }
        mesh.old_anchor = trust(&mesh.ips[0])["anchors"][0].as_str().expect("an anchor").to_owned();
        // Both annotations: the agent may report the anchors before the first leaf's issuer.
        mesh.server.eventually(15, "the agents' trust annotations", || {
            WORKLOADS
                .iter()
                .all(|ns| {
                    mesh.annotation(ns, "tessera.io/trust-anchors") == mesh.old_anchor
                        && mesh.annotation(ns, "tessera.io/leaf-issuer").starts_with("sha256:")
                })
                .then_some(())
        });
        mesh
    }

    /// Where the client sends requests: web's proxy (web → api → data-store,
    /// three proxies and two mTLS hops) and api's (api → data-store).
    pub fn targets(&self) -> Vec<String> {
        vec![format!("{}:8082", self.ips[2]), format!("{}:8080", self.ips[1])]
    }

    /// Pod `ns/ns-0`'s annotation `key` (empty when unset).
    pub fn annotation(&self, ns: &str, key: &str) -> String {
        let path = format!("jsonpath={{.metadata.annotations.{}}}", key.replace('.', r"\."));
        self.server.kubectl_ok(&["get", "pod", &format!("{ns}-0"), "-n", ns, "-o", &path])
    }

    /// The rotation state ConfigMap's JSON.
    pub fn rotation_state(&self) -> serde_json::Value {
        json(&self.server.kubectl_ok(&["get", "configmap", "tessera-identity-rotation", "-n", "linkerd", "-o", "jsonpath={.data.state}"]))
    }

    /// The bundle's anchors, as fingerprints.
    pub fn bundle_fingerprints(&self) -> Vec<String> {
        let pem = self.server.kubectl_ok(&[
            "get",
            "configmap",
            "tessera-identity-trust-roots",
            "-n",
            "linkerd",
            "-o",
            r"jsonpath={.data.ca-bundle\.crt}",
        ]);
        tessera_identity::rotate::Bundle::parse(&pem).expect("the bundle parses").fingerprints()
    }

    /// The bundle and every workload's reported trust, read with one
    /// request each (cheap enough to poll while the rotation runs).
    pub fn snapshot(&self) -> Snapshot {
        let (code, body) = self.server.curl_admin("GET", "/api/v1/namespaces/linkerd/configmaps/tessera-identity-trust-roots", &[]);
        assert_eq!(code, 200, "{body}");
        let pem = json(&body)["data"]["ca-bundle.crt"].as_str().unwrap_or_default().to_owned();
        let bundle = tessera_identity::rotate::Bundle::parse(&pem).expect("the bundle parses").fingerprints();
        let (code, body) = self.server.curl_admin("GET", "/api/v1/pods", &[]);
        assert_eq!(code, 200, "{body}");
        let pods = json(&body);
        let proxies = WORKLOADS
            .iter()
            .map(|ns| {
                let pod = pods["items"].as_array().and_then(|items| items.iter().find(|p| p["metadata"]["namespace"] == *ns));
                let annotation = |key: &str| pod.and_then(|p| p["metadata"]["annotations"][key].as_str()).unwrap_or_default().to_owned();
                ProxyReport {
                    anchors: annotation("tessera.io/trust-anchors").split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                    issuer: annotation("tessera.io/leaf-issuer"),
                }
            })
            .collect();
        Snapshot { bundle, proxies }
    }

    /// `tessera identity rotate` with the test's directories and a fast poll.
    pub fn rotate_cmd(&self, extra: &[&str]) -> Command {
        let mut command = tessera(&["identity", "rotate", "--kubeconfig"]);
        command
            .arg(&self.server.kubeconfig)
            .arg("--anchor-dir")
            .arg(&self.pki)
            .arg("--issuer-dir")
            .arg(&self.pki)
            .args(["--poll-interval", "200ms"])
            .args(extra)
            .env("TESSERA_LOG", "warn");
        command
    }

    /// `tessera identity rotate --status`: its stdout.
    pub fn status(&self) -> String {
        let out =
            tessera(&["identity", "rotate", "--status", "--kubeconfig"]).arg(&self.server.kubeconfig).output().expect("rotate --status");
        assert!(out.status.success(), "rotate --status: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rotations' material directories under the anchor dir.
    pub fn rotation_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = std::fs::read_dir(&self.pki)
            .expect("read anchor dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("rotation-"))
            .collect();
        dirs.sort();
        dirs
    }

    /// Every proxy trusts exactly `anchor` and holds a leaf from `issuer`,
    /// in its `/trust` and in its pod's annotations; the chain it serves
    /// verifies against the anchor file `anchor_pem` and not against the
    /// first (old) anchor.
    pub fn assert_all_on(&self, anchor: &str, issuer: &str, anchor_pem: &Path) {
        let scratch = self.server.path("chain-check");
        for (i, (ns, ip)) in WORKLOADS.iter().zip(&self.ips).enumerate() {
            let addr = format!("{ip}:{}", PORTS[i]);
            let sni = format!("{ns}.{ns}.serviceaccount.identity.linkerd.cluster.local");
            served_chain_verifies(&addr, &sni, anchor_pem, &scratch)
                .unwrap_or_else(|e| panic!("{ns}'s leaf does not chain to the new anchor: {e}"));
            let old = served_chain_verifies(&addr, &sni, &self.pki.join("ca.crt"), &scratch);
            assert!(old.is_err(), "{ns}'s leaf still chains to the old anchor");
            let t = trust(ip);
            assert_eq!(t["anchors"], serde_json::json!([anchor]), "{ns}: trusts only the new anchor");
            assert_eq!(t["leaf"]["issuer"], issuer, "{ns}: a leaf from the new issuer");
            assert_eq!(self.annotation(ns, "tessera.io/trust-anchors"), anchor, "{ns}");
            assert_eq!(self.annotation(ns, "tessera.io/leaf-issuer"), issuer, "{ns}");
        }
    }
}

/// What the cluster shows of the trust at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The bundle's fingerprints, in order.
    pub bundle: Vec<String>,
    /// Each workload's pod annotations, in [`WORKLOADS`] order.
    pub proxies: Vec<ProxyReport>,
}

/// One pod's `tessera.io/trust-anchors` and `tessera.io/leaf-issuer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyReport {
    pub anchors: Vec<String>,
    pub issuer: String,
}

/// Whether the chain the proxy at `addr` serves in its TLS handshake (as
/// any peer sees it; `openssl s_client` is then refused for lacking a client
/// certificate, after the server's chain arrived) verifies against the one
/// anchor in `anchor_pem` for the identity `sni`.
pub fn served_chain_verifies(addr: &str, sni: &str, anchor_pem: &Path, scratch: &Path) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", sni, "-showcerts", "-tls1_3"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let blocks: Vec<String> = text
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|b| b.split("-----END CERTIFICATE-----").next())
        .map(|b| format!("-----BEGIN CERTIFICATE-----{b}-----END CERTIFICATE-----\n"))
        .collect();
    let (leaf, intermediates) = blocks.split_first().ok_or_else(|| format!("{addr} served no certificate: {text}"))?;
    std::fs::create_dir_all(scratch).expect("scratch dir");
    let (leaf_file, chain_file) = (scratch.join("leaf.pem"), scratch.join("chain.pem"));
    std::fs::write(&leaf_file, leaf).expect("write leaf");
    std::fs::write(&chain_file, intermediates.concat()).expect("write chain");
    let mut verify = Command::new("openssl");
    verify.args(["verify", "-purpose", "sslserver", "-verify_hostname", sni, "-CAfile"]).arg(anchor_pem);
    if !intermediates.is_empty() {
        verify.arg("-untrusted").arg(&chain_file);
    }
    let out = verify.arg(&leaf_file).output().expect("openssl verify");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{addr}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// A proxy's `GET /trust`.
pub fn trust(pod_ip: &str) -> serde_json::Value {
    let (code, body) = curl(&format!("http://{pod_ip}:4191/trust"));
    assert_eq!(code, 200, "{body}");
    json(&body)
}

/// One request to `target` (a proxy's inbound); an error unless it got a
/// 200 from the data store, which saw the api's identity.
pub fn request(target: &str, n: u64) -> Result<(), String> {
    let mut tcp = TcpStream::connect(target).map_err(|e| format!("{target} connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    write!(tcp, "GET /r{n} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").map_err(|e| format!("{target} write: {e}"))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).map_err(|e| format!("{target} read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{target}: no HTTP response: {text:?}"))?;
    let ok = head.lines().next().is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    let seen = serde_json::from_str::<serde_json::Value>(body).ok();
    let client_id =
        seen.as_ref().and_then(|s| s["headers"].as_array()?.iter().find(|h| h[0] == "l5d-client-id")?[1].as_str().map(str::to_owned));
    let path_seen = seen.as_ref().and_then(|s| s["path"].as_str().map(str::to_owned));
    if ok && client_id.as_deref() == Some(API_ID) && path_seen.as_deref() == Some(format!("/r{n}").as_str()) {
        Ok(())
    } else {
        Err(format!("{target} request {n}: {text}"))
    }
}

/// Counts of the client's requests.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub sent: u64,
    pub failures: Vec<String>,
}

/// One thread per target looping requests (paced: load, not a stress test
/// of the shared machine) until stopped; stopped on drop.
pub struct Load {
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub started: Instant,
}

impl Load {
    pub fn start(targets: Vec<String>) -> Self {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let (counts, stop) = (counts.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = (i as u64 + 1) * 1_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        let result = request(&target, n);
                        let mut counts = counts.lock().unwrap();
                        counts.sent += 1;
                        if let Err(e) = result {
                            counts.failures.push(e);
                        }
                        drop(counts);
                        n += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Self { counts, stop, threads, started: Instant::now() }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    /// Waits (30 s at most) until `more` further requests were sent.
    pub fn wait_for_more(&self, server: &Server, more: u64, what: &str) {
        let target = self.counts().sent + more;
        server.eventually(30, what, || (self.counts().sent >= target).then_some(()));
    }

    /// Stops the client; the final counts.
    pub fn finish(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("client thread");
        }
        self.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
