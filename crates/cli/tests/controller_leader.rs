//! kube-rs against tessera: two instances of `tessera-example-controller` (a
//! `runtime::Controller` guarded by client-go's Lease leader election, writing
//! by server-side apply). Exactly one leads; the leader reconciles; when it is
//! killed the other takes the Lease over within the lease duration. As in
//! client-go, the follower counts the duration from when it *observed* the last
//! renewal (up to one retry period after it) and tries again once per retry
//! period, so the bound is the lease duration plus two retry periods, plus a
//! second for the requests themselves on a loaded machine.

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Server, json};

const NS: &str = "ctl";
const LEASE: &str = "tessera-example-controller";
const LEASE_SECONDS: u64 = 6;
const RENEW_DEADLINE_SECONDS: u64 = 4;
const RETRY_SECONDS: u64 = 1;

/// The example's binary, built by `cargo build`/`nextest --workspace`; built
/// here when this test runs alone.
fn controller_binary() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_tessera")).parent().expect("target dir").to_owned();
    let binary = dir.join("tessera-example-controller");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "tessera-example-controller"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building tessera-example-controller failed");
    }
    binary
}

/// One controller instance; killed on drop. Its stdout lines are collected.
struct Instance {
    identity: &'static str,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    fn start(server: &Server, identity: &'static str) -> Self {
        let mut child = Command::new(controller_binary())
            .args(["--namespace", NS, "--lease", LEASE, "--identity", identity])
            .args(["--lease-duration", &LEASE_SECONDS.to_string(), "--renew-deadline", &RENEW_DEADLINE_SECONDS.to_string(), "--retry-period", &RETRY_SECONDS.to_string()])
            .env("KUBECONFIG", &server.kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera-example-controller");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("stdout lock").push(line);
            }
        });
        Self { identity, child, stdout }
    }

    fn printed(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    fn leads(&self) -> bool {
        self.printed().contains(&format!("started leading as {}", self.identity))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lease_spec(server: &Server) -> Option<Value> {
    let out = server.kubectl(&["get", "lease", LEASE, "-n", NS, "-o", "json"]);
    out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout))["spec"].clone())
}

fn holder(server: &Server) -> Option<String> {
    lease_spec(server)?["holderIdentity"].as_str().map(str::to_owned)
}

/// Starts a server and two candidates; returns them with the leader first.
fn elected() -> (Server, Instance, Instance) {
    let server = Server::start();
    server.kubectl_ok(&["create", "namespace", NS]);
    let a = Instance::start(&server, "a");
    let b = Instance::start(&server, "b");
    let leader = server.eventually(30, "a leader", || holder(&server));
    let (leader, follower) = if leader == "a" { (a, b) } else { (b, a) };
    server.eventually(10, "the leader to report leading", || leader.leads().then_some(()));
    (server, leader, follower)
}

#[test]
fn exactly_one_instance_leads_and_the_other_takes_over_when_it_dies() {
    let (server, mut leader, follower) = elected();

    // The leader keeps renewing (renewTime moves twice) while the other
    // candidate keeps trying: the Lease stays with the leader, no transition.
    let first = lease_spec(&server).expect("lease");
    let mut renewals = vec![first["renewTime"].clone()];
    server.eventually(15, "two renewals", || {
        let spec = lease_spec(&server)?;
        if spec["renewTime"] != *renewals.last()? {
            renewals.push(spec["renewTime"].clone());
        }
        (renewals.len() >= 3).then_some(())
    });
    let spec = lease_spec(&server).expect("lease");
    assert_eq!(spec["holderIdentity"], leader.identity, "{spec}");
    assert_eq!(spec["leaseDurationSeconds"], LEASE_SECONDS, "{spec}");
    assert_eq!(spec["leaseTransitions"], 0, "{spec}");
    assert_eq!(spec["acquireTime"], first["acquireTime"], "renewals keep acquireTime: {spec}");
    let micro = |v: &Value| v.as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z') && t.as_bytes()[19] == b'.');
    assert!(micro(&spec["renewTime"]) && micro(&spec["acquireTime"]), "MicroTime with microseconds: {spec}");
    assert!(!follower.leads(), "the follower must not lead: {:?}", follower.printed());

    // Kill the leader: the follower takes over once the record has not
    // changed for the lease duration (on its clock), at its next retry.
    leader.kill();
    let killed = Instant::now();
    server.eventually(20, "the follower to take the lease over", || (holder(&server)? == follower.identity).then_some(()));
    let took = killed.elapsed();
    let bound = Duration::from_secs(LEASE_SECONDS + 2 * RETRY_SECONDS + 1);
    assert!(took <= bound, "take-over took {took:?}, more than {bound:?}");
    let spec = lease_spec(&server).expect("lease");
    assert_eq!(spec["leaseTransitions"], 1, "{spec}");
    assert_ne!(spec["acquireTime"], first["acquireTime"], "a new acquireTime: {spec}");
    server.eventually(10, "the follower to report leading", || follower.leads().then_some(()));
}

#[test]
fn the_leader_mirrors_labelled_configmaps_by_server_side_apply() {
    let (server, mut leader, follower) = elected();
    server.kubectl_ok(&["create", "configmap", "src", "-n", NS, "--from-literal=k=v1"]);
    server.kubectl_ok(&["label", "configmap", "src", "-n", NS, "tessera.dev/mirror=true"]);
    let uid = server.kubectl_ok(&["get", "configmap", "src", "-n", NS, "-o", "jsonpath={.metadata.uid}"]);

    let mirror = |server: &Server| -> Option<Value> {
        let out = server.kubectl(&["get", "configmap", "src-mirror", "-n", NS, "-o", "json", "--show-managed-fields"]);
        out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
    };
    let by = |m: &Value| m["metadata"]["annotations"]["tessera.dev/mirrored-by"].as_str().map(str::to_owned);
    let m = server.eventually(20, "the mirror", || mirror(&server));
    assert_eq!(m["data"], serde_json::json!({"k": "v1"}), "{m}");
    assert_eq!(by(&m).as_deref(), Some(leader.identity), "applied by the leader: {m}");
    assert_eq!(
        m["metadata"]["ownerReferences"],
        serde_json::json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "src", "uid": uid, "controller": true}]),
        "{m}"
    );
    let managers: Vec<(&str, &str)> = m["metadata"]["managedFields"]
        .as_array()
        .map(|fields| fields.iter().map(|f| (f["manager"].as_str().unwrap_or(""), f["operation"].as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    assert_eq!(managers, [("tessera-example", "Apply")], "{m}");

    // The new leader re-applies every mirror when it starts reconciling, and
    // follows changes from then on.
    leader.kill();
    server.eventually(20, "the new leader to re-apply", || (by(&mirror(&server)?)? == follower.identity).then_some(()));
    server.kubectl_ok(&["patch", "configmap", "src", "-n", NS, "--type=merge", "-p", r#"{"data":{"k":"v2"}}"#]);
    server.eventually(20, "the mirror to follow its source", || (mirror(&server)?["data"]["k"] == "v2").then_some(()));
}
