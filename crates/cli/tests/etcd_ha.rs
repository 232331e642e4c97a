//! High availability on etcd, end to end: a 3-member etcd cluster on loopback
//! and two `tessera server` replicas on it (sharing the cluster CA and the
//! signing keys, copied from the first replica's data dir), driven with the
//! real kubectl and curl.
//!
//! etcd comes from `TESSERA_ETCD_BIN` or `PATH` (`./scripts/test.sh` installs
//! it); without it these tests fail with a message saying so.

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Server, json};
use tessera_store::etcd::testing::EtcdCluster;

fn start_cluster() -> EtcdCluster {
    EtcdCluster::start(3).unwrap_or_else(|err| panic!("{err}"))
}

/// Copies what replicas must share (cluster CA and signing keys) from one
/// data dir into a new one.
fn shared_data_dir(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server refuses a data dir that others can read (tempdirs are 0755 under umask 022).
    #[cfg(unix)]
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod 700");
    std::fs::create_dir_all(dir.path().join("pki")).expect("pki dir");
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(from.join("pki").join(file), dir.path().join("pki").join(file)).expect("copy CA");
    }
    std::fs::create_dir_all(dir.path().join("keys")).expect("keys dir");
    for entry in std::fs::read_dir(from.join("keys")).expect("keys") {
        let entry = entry.expect("key file");
        std::fs::copy(entry.path(), dir.path().join("keys").join(entry.file_name())).expect("copy key");
    }
    dir
}

/// Two replicas on `cluster`: A first (it creates the CA and keys), then B
/// with A's CA and keys.
fn start_replicas(cluster: &EtcdCluster) -> (Server, Server) {
    let url = cluster.storage_url();
    let a = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--storage", &url]);
    let b = Server::start_with(shared_data_dir(a.dir.path()), &["--storage", &url]);
    (a, b)
}

fn token_review(server: &Server, token: &str) -> serde_json::Value {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}).to_string();
    let (code, text) = server.curl_admin(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &["-H", "Content-Type: application/json", "-d", &body],
    );
    assert_eq!(code, 201, "TokenReview: {text}");
    json(&text)
}

#[test]
fn replicas_share_objects_watches_and_revocations() {
    let cluster = start_cluster();
    let (a, b) = start_replicas(&cluster);

    // A watch through B sees what is written through A: the create (from the
    // watch's initial list or as an event), then a change made after that
    // list, which only the watch can deliver.
    b.kubectl_ok(&["create", "ns", "api"]);
    let mut watch = Command::new("kubectl")
        .args(["get", "sa", "-n", "api", "--watch", "--output-watch-events", "--no-headers"])
        .env("KUBECONFIG", &b.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_event_for = |name: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no watch event for {name} through B"));
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) == Some(&name) {
                return fields[0].to_owned();
            }
        }
    };
    a.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    assert_eq!(next_event_for("api"), "ADDED");
    a.kubectl_ok(&["label", "sa", "api", "-n", "api", "tier=backend"]);
    assert_eq!(next_event_for("api"), "MODIFIED");
    let _ = watch.kill();
    let _ = watch.wait();

    // Reads through B see A's object, with the same uid and resourceVersion.
    let through_a = json(&a.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "json"]));
    let through_b = json(&b.kubectl_ok(&["get", "sa", "api", "-n", "api", "-o", "json"]));
    assert_eq!(through_a["metadata"], through_b["metadata"]);

    // Both replicas serve under one CA: A's kubeconfig works against B.
    let out = Command::new("kubectl")
        .args(["--server", &b.url, "get", "ns", "api", "-o", "name"])
        .env("KUBECONFIG", &a.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A token issued by A is accepted by B (same signing keys)…
    let token = a.kubectl_ok(&["create", "token", "api", "-n", "api"]).trim().to_owned();
    let review = token_review(&b, &token);
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(review["status"]["user"]["username"], "system:serviceaccount:api:api");

    // …and refused by B within one second of the ServiceAccount's deletion through A.
    a.kubectl_ok(&["delete", "sa", "api", "-n", "api"]);
    let deleted = Instant::now();
    let refused = loop {
        let review = token_review(&b, &token);
        if review["status"]["authenticated"] != true {
            break review;
        }
        assert!(deleted.elapsed() < Duration::from_secs(1), "replica B still accepts the token after {:?}", deleted.elapsed());
    };
    eprintln!("cross-replica revocation took at most {:?}", deleted.elapsed());
    assert_eq!(refused["status"]["error"], "[invalid bearer token, serviceaccounts \"api\" not found]");
}

/// What one load worker saw.
#[derive(Default)]
struct Tally {
    /// ConfigMaps whose create was acknowledged (201), and when.
    acknowledged: Vec<(String, Duration)>,
    /// When requests failed (create or TokenReview), relative to the start.
    failures: Vec<Duration>,
    /// TokenReviews answered.
    reviews: usize,
    /// The slowest request.
    slowest: Duration,
}

#[test]
fn killing_the_etcd_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = start_cluster();
    let (a, b) = start_replicas(&cluster);
    a.kubectl_ok(&["create", "ns", "load"]);
    a.kubectl_ok(&["create", "sa", "client", "-n", "load"]);
    let token = a.kubectl_ok(&["create", "token", "client", "-n", "load"]).trim().to_owned();
    let servers = Arc::new((a, b));

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Two writers (one per replica) and two reviewers, each a bounded loop.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (servers, stop, token) = (Arc::clone(&servers), Arc::clone(&stop), token.clone());
            std::thread::spawn(move || {
                let server = if w % 2 == 0 { &servers.0 } else { &servers.1 };
                let mut tally = Tally::default();
                for i in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let began = Instant::now();
                    let ok = if w < 2 {
                        let name = format!("w{w}-{i:04}");
                        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string();
                        let (code, _) = server.curl_admin(
                            "POST",
                            "/api/v1/namespaces/load/configmaps",
                            &["-H", "Content-Type: application/json", "-d", &body, "--max-time", "20"],
                        );
                        if code == 201 {
                            tally.acknowledged.push((name, start.elapsed()));
                        }
                        code == 201
                    } else {
                        tally.reviews += 1;
                        authenticates(server, &token)
                    };
                    if !ok {
                        tally.failures.push(start.elapsed());
                    }
                    tally.slowest = tally.slowest.max(began.elapsed());
                }
                tally
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader().expect("etcd has a leader");
    let killed_at = start.elapsed();
    cluster.kill(leader).expect("kill the etcd leader");
    // Keep the load on for a while after the election, then stop.
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    let new_leader = cluster.leader();
    let (a, b) = (&servers.0, &servers.1);

    // No acknowledged write is lost: every one is listed, through both replicas.
    let acknowledged: Vec<&String> = tallies.iter().flat_map(|t| t.acknowledged.iter().map(|(name, _)| name)).collect();
    for server in [a, b] {
        let listed = server.kubectl_ok(&["get", "cm", "-n", "load", "-o", "jsonpath={.items[*].metadata.name}"]);
        let listed: std::collections::HashSet<&str> = listed.split_whitespace().collect();
        let lost: Vec<_> = acknowledged.iter().filter(|n| !listed.contains(n.as_str())).collect();
        assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    }

    let failures: Vec<Duration> = tallies.iter().flat_map(|t| t.failures.iter().copied()).collect();
    let reviews: usize = tallies.iter().map(|t| t.reviews).sum();
    let slowest = tallies.iter().map(|t| t.slowest).max().unwrap_or_default();
    let last_failure = failures.iter().max().copied();
    eprintln!(
        "etcd leader m{leader} killed at {killed_at:?}, new leader {new_leader:?}; {} creates acknowledged, {reviews} TokenReviews, {} failed requests (first {:?}, last {:?}), slowest request {slowest:?}",
        acknowledged.len(),
        failures.len(),
        failures.iter().min(),
        last_failure,
    );
    assert!(new_leader.is_some_and(|l| l != leader), "the cluster elected a new leader");
    // Errors only inside the failover window: none before the kill. A write
    // that reached a follower while the leader was gone fails when etcd's
    // request timeout (5 s + 2 election timeouts = 6 s here) runs out, so
    // nothing fails later than that after the election (~1 s), plus slack
    // for a busy machine.
    for failure in &failures {
        assert!(*failure >= killed_at, "a request failed before the kill, at {failure:?}");
        assert!(*failure <= killed_at + Duration::from_secs(10), "a request failed long after the kill, at {failure:?}");
    }
    // Requests go on after the election: both writers get writes acknowledged after the window.
    let window_end = last_failure.unwrap_or(killed_at).max(killed_at);
    for (w, tally) in tallies.iter().take(2).enumerate() {
        let after = tally.acknowledged.iter().filter(|(_, at)| *at > window_end).count();
        assert!(after >= 10, "writer {w} had only {after} writes acknowledged after the failover window");
    }
}

/// Whether a TokenReview through `server` authenticates `token` (no panics:
/// load workers count failures instead).
fn authenticates(server: &Server, token: &str) -> bool {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}).to_string();
    let (code, text) = server.curl_admin(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &["-H", "Content-Type: application/json", "-d", &body, "--max-time", "20"],
    );
    code == 201 && serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|r| r["status"]["authenticated"] == true)
}

/// Whether namespace `ns` got its default ServiceAccount and
/// `kube-root-ca.crt` ConfigMap (the namespace controller's work).
fn namespace_reconciled(server: &Server, ns: &str) -> bool {
    let sa = server.kubectl(&["get", "sa", "default", "-n", ns, "-o", "name"]);
    let cm = server.kubectl(&["get", "cm", "kube-root-ca.crt", "-n", ns, "-o", "name"]);
    sa.status.success() && cm.status.success()
}

/// The controllers that must run once run on the elected replica; when it is
/// killed (no chance to resign), the other replica takes over once the
/// leader's lease expires.
#[test]
fn controllers_move_to_the_other_replica_when_the_leader_dies() {
    let cluster = start_cluster();
    // A starts alone, so it wins the election.
    let (a, b) = start_replicas(&cluster);
    b.kubectl_ok(&["create", "ns", "before"]);
    b.eventually(10, "the leader's namespace controller", || namespace_reconciled(&b, "before").then_some(()));

    let _a_dir = a.stop();
    let killed = Instant::now();
    b.kubectl_ok(&["create", "ns", "after"]);
    b.eventually(20, "the surviving replica to take over the controllers", || namespace_reconciled(&b, "after").then_some(()));
    let handoff = killed.elapsed();
    eprintln!("controllers handed off {handoff:?} after the leader was killed (lease TTL {:?})", tessera_store::etcd::DEFAULT_LEADER_LEASE);
    assert!(
        handoff >= tessera_store::etcd::DEFAULT_LEADER_LEASE / 2,
        "the namespace was reconciled after {handoff:?}: faster than a lease can expire, so B was running the controllers too"
    );
}
