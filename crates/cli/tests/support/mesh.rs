//! Meshed workloads on loopback for the end-to-end tests: `tessera identity`,
//! nodes joined with bootstrap tokens, and apps run under `tessera agent run
//! --mesh` (seed 004's set-up, shared by its tests and the renewal test).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Server, json};

/// The data store: answers every GET with the headers it received, as JSON.
pub const DATA_STORE_APP: &str = r#"
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The api: calls the data store by its Service name with Python's stock
/// client (which honours HTTP_PROXY), sending a forged `l5d-client-id`.
pub const API_APP: &str = r#"
import http.server, os, sys, urllib.request
URL = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        req = urllib.request.Request(URL + self.path, headers={"l5d-client-id": "admin.kube-system.serviceaccount.identity.linkerd.cluster.local"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r: status, body = r.status, r.read()
        except urllib.error.HTTPError as e: status, body = e.code, e.read()
        self.send_response(status); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// A child process stopped on drop: SIGTERM first, so an agent stops its
/// app and proxy and deletes its pod, then SIGKILL if it lingers.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The interpreter itself (a pyenv shim would need the agent user's HOME,
/// which a workload never gets).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(args);
    command
}

/// `tessera identity bootstrap --out DIR [extra…]`, which must succeed.
pub fn bootstrap(out: &Path, extra: &[&str]) {
    let output = tessera(&["identity", "bootstrap", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("identity bootstrap");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `tessera identity` with a fresh trust anchor and issuer in `pki`; its address.
pub fn identity(server: &Server, pki: &Path) -> (Proc, String) {
    bootstrap(pki, &[]);
    let issuer_dir = pki.display().to_string();
    identity_with(server, &pki.join("ca.crt"), &["--issuer-dir", &issuer_dir])
}

/// `tessera identity` trusting `anchors`, with `extra` flags (the issuer's
/// source, lifetimes); its address.
pub fn identity_with(server: &Server, anchors: &Path, extra: &[&str]) -> (Proc, String) {
    let anchors = anchors.display().to_string();
    identity_trusting(server, &["--trust-anchors", &anchors], extra)
}

/// `tessera identity` with the trust flags `trust` (a file or the bundle
/// ConfigMap) and `extra` flags; its address.
pub fn identity_trusting(server: &Server, trust: &[&str], extra: &[&str]) -> (Proc, String) {
    let mut child = tessera(&["identity", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(trust)
        .args(extra)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tessera identity");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("tessera identity listening on ").map(str::to_owned))
        .expect("identity printed its address");
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), addr)
}

/// Joins node `name` with a bootstrap token; its credentials directory.
pub fn join(server: &Server, name: &str) -> PathBuf {
    let token = server.kubectl_ok(&["create", "token", "node-bootstrapper", "-n", "kube-system", "--duration", "10m"]);
    let dir = server.path(name);
    let out = tessera(&["agent", "--cert-dir"])
        .arg(&dir)
        .args(["join", "--node", name, "--server", &server.url, "--certificate-authority"])
        .arg(server.ca_file())
        .env("TESSERA_BOOTSTRAP_TOKEN", token.trim())
        .output()
        .expect("tessera agent join");
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// `tessera agent run --mesh` of `app` as pod `ns/ns-0` (ServiceAccount `ns`, label app=ns).
pub fn meshed(server: &Server, ns: &str, port: &str, identity_addr: &str, anchors: &Path, app: &[&str]) -> Proc {
    meshed_as(server, &format!("{ns}-0"), ns, &["--port", port], identity_addr, anchors, app)
}

/// `tessera agent run --mesh FLAGS` of `app` as pod `ns/name`, its proxy
/// trusting the anchors in `anchors`.
pub fn meshed_as(server: &Server, name: &str, ns: &str, flags: &[&str], identity_addr: &str, anchors: &Path, app: &[&str]) -> Proc {
    let anchors = anchors.display().to_string();
    meshed_trusting(server, name, ns, flags, identity_addr, &["--identity-trust-anchors", &anchors], app)
}

/// `tessera agent run --mesh FLAGS` of `app` as pod `ns/name`, with the
/// agent's trust flags `trust` (an anchors file or the bundle ConfigMap).
pub fn meshed_trusting(server: &Server, name: &str, ns: &str, flags: &[&str], identity_addr: &str, trust: &[&str], app: &[&str]) -> Proc {
    let cert_dir = join(server, &format!("node-{ns}"));
    let child = tessera(&["agent", "--cert-dir"])
        .arg(&cert_dir)
        .args(["run", "--sa", ns, "-n", ns, "--name", name, "--label", &format!("app={ns}")])
        .args(flags)
        .args(["--mesh", "--identity-addr", identity_addr])
        .args(trust)
        .arg("--")
        .args(app)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("tessera agent run --mesh");
    Proc(child)
}

/// The pod's IP once it is Ready (its proxy has a certificate).
pub fn ready_pod_ip(server: &Server, ns: &str) -> String {
    ready_ip_of(server, ns, &format!("{ns}-0"))
}

pub fn ready_ip_of(server: &Server, ns: &str, name: &str) -> String {
    server.eventually(30, &format!("pod {ns}/{name} Ready"), || {
        let out = server.kubectl(&["get", "pod", name, "-n", ns, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let pod = json(&String::from_utf8_lossy(&out.stdout));
        let ready = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then(|| pod["status"]["podIP"].as_str().map(str::to_owned)).flatten()
    })
}

pub fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Namespaces api and data-store (each with its ServiceAccount and a node
/// allowed to run its pods) and the Service `data-store` on port 8081.
pub fn api_and_data_store(server: &Server) {
    for ns in ["api", "data-store"] {
        server.kubectl_ok(&["create", "ns", ns]);
        server.kubectl_ok(&["create", "sa", ns, "-n", ns]);
        let node = format!("--user=system:node:node-{ns}");
        server.kubectl_ok(&[
            "create",
            "rolebinding",
            "node-runs-pods",
            "-n",
            ns,
            "--clusterrole=tessera:node-pod-runner",
            &node,
        ]);
    }
    // `kubectl create service` selects app=data-store.
    server.kubectl_ok(&["create", "service", "clusterip", "data-store", "--tcp=8081:8081", "-n", "data-store"]);
}

/// A namespace `ns` with its ServiceAccount `ns` and node `node-NS` allowed to
/// run its pods (as [`api_and_data_store`] makes api and data-store).
pub fn workload_namespace(server: &Server, ns: &str) {
    server.kubectl_ok(&["create", "ns", ns]);
    server.kubectl_ok(&["create", "sa", ns, "-n", ns]);
    let node = format!("--user=system:node:node-{ns}");
    server.kubectl_ok(&["create", "rolebinding", "node-runs-pods", "-n", ns, "--clusterrole=tessera:node-pod-runner", &node]);
}

/// What a process wrote to stderr so far (collected by a thread).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    /// Everything so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

/// As [`meshed_as`], with the agent's stderr (its own and its proxy's logs,
/// warnings and errors) collected rather than passed through.
pub fn meshed_logged(server: &Server, name: &str, ns: &str, flags: &[&str], identity_addr: &str, anchors: &Path, app: &[&str]) -> (Proc, Log) {
    let cert_dir = join(server, &format!("node-{ns}"));
    let mut child = tessera(&["agent", "--cert-dir"])
        .arg(&cert_dir)
        .args(["run", "--sa", ns, "-n", ns, "--name", name, "--label", &format!("app={ns}")])
        .args(flags)
        .args(["--mesh", "--identity-addr", identity_addr, "--identity-trust-anchors"])
        .arg(anchors)
        .arg("--")
        .args(app)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera agent run --mesh");
    let log = Log::default();
    let (stderr, sink) = (child.stderr.take().expect("stderr"), log.0.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut text) = sink.lock() {
                text.push_str(&strip_ansi(&line));
                text.push('\n');
            }
        }
    });
    (Proc(child), log)
}

/// `line` without terminal colour sequences (`ESC [ … m`), which the log
/// formatter writes even to a pipe.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// The samples of a Prometheus text whose metric name starts with one of
/// `prefixes`, keyed by `name{labels}`.
pub fn samples(metrics: &str, prefixes: &[&str]) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The series that moved from `before` to `after`, with how much (a series
/// new in `after` moved from 0).
pub fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(series, v)| {
            let delta = v - before.get(series).copied().unwrap_or(0.0);
            (delta != 0.0).then(|| (series.clone(), delta))
        })
        .collect()
}
