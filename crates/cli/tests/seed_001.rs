//! Seed 001 end to end: the api and data-store services (built with
//! tessera-auth) run under `tessera agent run`, which projects rotating,
//! audience-bound, Pod-bound tokens; requests are authenticated with the
//! TokenReview API of a real `tessera server`. Each agent is its own node,
//! joined with a bootstrap token: no agent ever holds an admin credential.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::Server;

fn example(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{} is missing: the README's test command builds the examples (cargo build --examples -p tessera-auth)", path.display());
    path
}

/// A `tessera agent run` process and the address its service printed.
struct Workload {
    child: Child,
    url: String,
}

/// Joins node `name` as the README does; returns its credentials directory.
fn join(server: &Server, name: &str) -> PathBuf {
    let token = server.kubectl_ok(&["create", "token", "node-bootstrapper", "-n", "kube-system", "--duration", "10m"]);
    let dir = server.path(name);
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(&dir)
        .args(["join", "--node", name, "--server", &server.url, "--certificate-authority"])
        .arg(server.ca_file())
        .env("TESSERA_BOOTSTRAP_TOKEN", token.trim())
        .output()
        .expect("run tessera agent join");
    assert!(out.status.success(), "join failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("joined as node {name}")));
    dir
}

impl Workload {
    /// `tessera agent --cert-dir NODE FLAGS -- SERVICE …` for node `node`, joined first.
    fn start(server: &Server, node: &str, agent_flags: &[&str], service: &Path, service_flags: &[&str], banner: &str) -> Self {
        let cert_dir = join(server, node);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["agent", "--cert-dir"])
            .arg(&cert_dir)
            .args(agent_flags)
            .arg("--")
            .arg(service)
            .args(service_flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let prefix = banner.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(&prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the workload never printed {banner:?}"));
        Self { child, url }
    }

    /// SIGTERM: the agent stops the workload and deletes its Pod.
    fn stop(mut self) -> String {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let output = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true")).wait_with_output().expect("agent exit");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn setup(server: &Server, delegate: bool) {
    for ns in ["api", "data-store"] {
        server.kubectl_ok(&["create", "ns", ns]);
        server.kubectl_ok(&["create", "sa", ns, "-n", ns]);
        // Node `node-NS` may run pods in NS, and nowhere else.
        let node = format!("--user=system:node:node-{ns}");
        server.kubectl_ok(&["create", "rolebinding", "node-runs-pods", "-n", ns, "--clusterrole=tessera:node-pod-runner", &node]);
    }
    if delegate {
        server.kubectl_ok(&["create", "clusterrolebinding", "role-tokenreview-binding", "--clusterrole=system:auth-delegator", "--serviceaccount=data-store:data-store"]);
    }
}

fn start_data_store(server: &Server) -> Workload {
    Workload::start(
        server,
        "node-data-store",
        &["run", "--sa", "data-store", "-n", "data-store", "--name", "data-store-0"],
        &example("data-store"),
        // No client-side result cache: the test checks revocation right after the Pod goes.
        &["--listen", "127.0.0.1:0", "--cache-ttl-seconds", "0"],
        "data-store listening on ",
    )
}

#[test]
fn walkthrough_rotation_and_revocation() {
    let server = Server::start();
    setup(&server, true);
    let data_store = start_data_store(&server);
    let root = server.path("api-root");
    let api = Workload::start(
        &server,
        "node-api",
        &["--refresh-interval", "1s", "run", "--sa", "api", "-n", "api", "--name", "api-0", "--root", &root.display().to_string(), "--token", "audience=data-store,expiration=600,path=api-token"],
        &example("api"),
        &["--listen", "127.0.0.1:0", "--data-store-url", &data_store.url],
        "api listening on ",
    );

    // The user's three requests of the seed.
    assert_eq!(get(&api.url, &[]), (200, "Hello from data store. You have been authenticated".into()));
    assert_eq!(get(&data_store.url, &[]), (401, "X-Client-Id not supplied\n".into()));
    assert_eq!(get(&data_store.url, &["X-Client-Id: dummy"]), (403, "Invalid token\n".into()));
    // A valid token for another audience is refused; one for data-store is accepted.
    let for_api = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "api"]);
    assert_eq!(get(&data_store.url, &[&format!("X-Client-Id: {}", for_api.trim())]), (403, "Invalid token\n".into()));
    let for_store = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    assert_eq!(get(&data_store.url, &[&format!("Authorization: Bearer {}", for_store.trim())]).0, 200);

    // Each agent is its own node, and says so.
    let nodes = server.kubectl_ok(&["get", "nodes"]);
    assert!(nodes.contains("node-api ") && nodes.contains("node-data-store "), "{nodes}");
    let pods = server.kubectl_ok(&["get", "pods", "-A", "-o", "wide"]);
    assert!(pods.lines().any(|l| l.contains("api-0") && l.contains("1/1") && l.contains("Running") && l.contains("node-api")), "{pods}");
    let leases = server.kubectl_ok(&["get", "leases", "-n", "kube-node-lease"]);
    assert!(leases.contains("node-api") && leases.contains("node-data-store"), "{leases}");

    // The projected files: Kubernetes layout, modes, Pod-bound token.
    let sa_dir = root.join("var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(std::fs::read_to_string(sa_dir.join("namespace")).expect("namespace"), "api");
    assert!(std::fs::read_to_string(sa_dir.join("ca.crt")).expect("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let token_path = root.join("var/run/secrets/tokens/api-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&token_path).expect("token").permissions().mode() & 0o777, 0o600);
    }

    // Rotation (every second here): requests keep succeeding and the file is never half-written.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "saw only {} distinct tokens", seen.len());
        let token = std::fs::read_to_string(&token_path).expect("token file");
        assert_eq!(token.split('.').count(), 3, "half-written token file: {token:?}");
        seen.insert(token);
        assert_eq!(get(&api.url, &[]), (200, "Hello from data store. You have been authenticated".into()));
    }

    // Stopping the workload deletes its Pod: the last token it held is refused.
    let last = std::fs::read_to_string(&token_path).expect("token file");
    assert_eq!(get(&data_store.url, &[&format!("X-Client-Id: {last}")]).0, 200);
    let log = api.stop();
    assert!(server.kubectl_err(&["get", "pod", "api-0", "-n", "api"]).contains("NotFound"), "agent log: {log}");
    assert_eq!(get(&data_store.url, &[&format!("X-Client-Id: {last}")]), (403, "Invalid token\n".into()));
}

#[test]
fn data_store_verifying_offline_from_the_jwks() {
    let server = Server::start();
    setup(&server, true);
    let data_store = Workload::start(
        &server,
        "node-data-store",
        &["run", "--sa", "data-store", "-n", "data-store", "--name", "data-store-jwks"],
        &example("data-store"),
        &["--listen", "127.0.0.1:0", "--verify", "jwks"],
        "data-store listening on ",
    );
    let good = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    assert_eq!(get(&data_store.url, &[&format!("X-Client-Id: {}", good.trim())]), (200, "Hello from data store. You have been authenticated".into()));
    let wrong = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "api"]);
    assert_eq!(get(&data_store.url, &[&format!("X-Client-Id: {}", wrong.trim())]), (403, "Invalid token\n".into()));
    assert_eq!(get(&data_store.url, &["X-Client-Id: dummy"]), (403, "Invalid token\n".into()));
}

#[test]
fn data_store_without_auth_delegator_says_why() {
    let server = Server::start();
    setup(&server, false);
    let data_store = start_data_store(&server);
    let token = server.kubectl_ok(&["create", "token", "api", "-n", "api", "--audience", "data-store"]);
    let (code, body) = get(&data_store.url, &[&format!("X-Client-Id: {}", token.trim())]);
    assert_eq!(code, 503);
    assert!(body.contains("system:auth-delegator"), "{body}");
    let log = data_store.stop();
    assert!(log.contains("the TokenReview API refused the review (403)"), "{log}");
    assert!(log.contains("cannot create resource \\\"tokenreviews\\\"") || log.contains("cannot create resource \"tokenreviews\""), "{log}");
}
