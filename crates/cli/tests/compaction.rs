//! History compaction and bounded watches, end to end over HTTP against the
//! real binary (issue 12, finding 7 and the slow-watcher item of 8).
//!
//! - A deleted Secret is not replayed to a watch from `resourceVersion=1`
//!   once the leader has compacted: the answer is kube-apiserver's 410
//!   Expired, as an `ERROR` watch event on a 200 response (SQLite and etcd).
//! - `kill -9` while writes and compactions run loses no acknowledged write.
//! - Watchers on one HTTP/2 connection that never read are cut off.
//!
//! Compactions are forced with a short `--compaction-interval` and waited
//! for by polling, never by sleeping.

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, json};
use tessera_store::etcd::testing::EtcdCluster;

const SECRET_VALUE: &str = "hunter2-must-not-be-replayed";

/// `GET {collection}?watch=1&resourceVersion=1` as admin, ended by the server
/// after a second: (HTTP status, body).
fn watch_from_1(server: &Server, collection: &str) -> (u16, String) {
    server.curl_admin(
        "GET",
        &format!("{collection}?watch=1&resourceVersion=1&timeoutSeconds=1"),
        &["--max-time", "20"],
    )
}

/// kube-apiserver 1.32's answer to a watch from a compacted resourceVersion
/// (the watch cache's `too old resource version: RV (OLDEST-1)`, sent as an
/// `ERROR` event), for a history compacted through `compacted`.
fn expired_event(compacted: i64) -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: 1 ({compacted})"),
            "reason": "Expired",
            "code": 410,
        },
    })
}

/// The compacted revision if `body` is exactly one 410 Expired event (the
/// whole response), else `None` (the history is still there).
fn compacted_revision(body: &str) -> Option<i64> {
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let event: Value = serde_json::from_str(lines.next()?).ok()?;
    let message = event.pointer("/object/message")?.as_str()?;
    let compacted = message
        .strip_prefix("too old resource version: 1 (")?
        .strip_suffix(')')?
        .parse()
        .ok()?;
    assert_eq!(
        event,
        expired_event(compacted),
        "the 410 event, field for field"
    );
    assert!(
        lines.next().is_none(),
        "nothing follows the ERROR event: {body}"
    );
    Some(compacted)
}

/// Creates and deletes a Secret, waits until the leader's compaction has
/// passed the delete, and checks what a watch from resourceVersion 1 gets.
fn deleted_secret_is_expired_not_replayed(server: &Server) {
    server.kubectl_ok(&["create", "ns", "vault"]);
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "-n",
        "vault",
        &format!("--from-literal=password={SECRET_VALUE}"),
    ]);
    let (code, deleted) = server.curl_admin("DELETE", "/api/v1/namespaces/vault/secrets/db", &[]);
    assert_eq!(code, 200, "{deleted}");
    // A deleted Secret is answered with a Success Status (no resourceVersion):
    // a list after it is at least at the delete's revision.
    assert_eq!(json(&deleted)["status"], "Success", "{deleted}");
    let (_, list) = server.curl_admin("GET", "/api/v1/namespaces/vault/secrets", &[]);
    let deleted_at: i64 = json(&list)["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number");

    let collection = "/api/v1/namespaces/vault/secrets";
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE)
    };
    // Before compaction the history replays the Secret, data included (the
    // attack). Compaction runs every second; wait for it to pass the delete.
    let (_compacted, body) =
        server.eventually(60, "a compaction past the Secret's deletion", || {
            let (code, body) = watch_from_1(server, collection);
            assert_eq!(
                code, 200,
                "a watch answers 200, errors come as events: {body}"
            );
            compacted_revision(&body)
                .filter(|&c| c >= deleted_at)
                .map(|c| (c, body))
        });
    assert!(
        !body.contains(&encoded) && !body.contains(SECRET_VALUE),
        "no Secret data: {body}"
    );
    assert!(
        body.ends_with('\n'),
        "one newline-terminated event: {body:?}"
    );
    eprintln!(
        "watch from resourceVersion=1 after compaction (deleted at {deleted_at}): {}",
        body.trim_end()
    );

    // The current state is intact and the Secret is gone for good.
    let (code, _) = server.curl_admin("GET", "/api/v1/namespaces/vault/secrets/db", &[]);
    assert_eq!(code, 404);
    server.kubectl_ok(&["get", "ns", "vault"]);
}

#[test]
fn sqlite_answers_410_expired_for_a_deleted_secret_after_compaction() {
    let server = Server::start_with(
        tempfile::tempdir().expect("tempdir"),
        &["--compaction-interval", "1s"],
    );
    deleted_secret_is_expired_not_replayed(&server);
}

#[test]
fn etcd_answers_410_expired_for_a_deleted_secret_after_compaction() {
    let cluster = EtcdCluster::start(1).unwrap_or_else(|err| panic!("{err}"));
    let server = Server::start_with(
        tempfile::tempdir().expect("tempdir"),
        &[
            "--storage",
            &cluster.storage_url(),
            "--compaction-interval",
            "1s",
        ],
    );
    deleted_secret_is_expired_not_replayed(&server);
}

/// What one writer had acknowledged when the server was killed.
#[derive(Default)]
struct Acknowledged {
    created: Vec<String>,
    /// Its counter ConfigMap: the last acknowledged value, and the value of
    /// the update in flight when the server died (which may have committed).
    counter: (u64, u64),
}

#[test]
fn kill_9_during_writes_and_compactions_loses_no_acknowledged_write() {
    const WRITERS: usize = 3;
    let flags = ["--compaction-interval", "200ms"];
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &flags);
    server.kubectl_ok(&["create", "ns", "load"]);
    for w in 0..WRITERS {
        server.kubectl_ok(&[
            "create",
            "configmap",
            &format!("counter-{w}"),
            "-n",
            "load",
            "--from-literal=n=0",
        ]);
    }
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let creates = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (server, stop, creates) = (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&creates));
            std::thread::spawn(move || {
                let mut acked = Acknowledged::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let name = format!("w{w}-{i:05}");
                    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string();
                    let (code, _) = server.curl_admin(
                        "POST",
                        "/api/v1/namespaces/load/configmaps",
                        &["-H", "Content-Type: application/json", "-d", &body, "--max-time", "10"],
                    );
                    if code == 201 {
                        acked.created.push(name);
                        creates.fetch_add(1, Ordering::Relaxed);
                    }
                    acked.counter.1 = i;
                    let patch = json!({"data": {"n": i.to_string()}}).to_string();
                    let (code, _) = server.curl_admin(
                        "PATCH",
                        &format!("/api/v1/namespaces/load/configmaps/counter-{w}"),
                        &["-H", "Content-Type: application/merge-patch+json", "-d", &patch, "--max-time", "10"],
                    );
                    if code == 200 {
                        acked.counter.0 = i;
                    }
                }
                acked
            })
        })
        .collect();

    // Let several compactions happen under the write load, then kill -9.
    let mut seen = Vec::new();
    server.eventually(120, "three compactions and 60 creates under load", || {
        if let Some(c) =
            compacted_revision(&watch_from_1(&server, "/api/v1/namespaces/load/configmaps").1)
            && seen.last() != Some(&c)
        {
            seen.push(c);
        }
        (seen.len() >= 3 && creates.load(Ordering::Relaxed) >= 60).then_some(())
    });
    let killed = Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acknowledged> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    let dir = Arc::try_unwrap(server)
        .unwrap_or_else(|_| panic!("writers are done"))
        .stop();

    let server = Server::start_with(dir, &flags);
    let listed = server.kubectl_ok(&["get", "cm", "-n", "load", "-o", "json"]);
    let listed = json(&listed);
    let items = listed["items"].as_array().expect("items");
    let names: std::collections::HashSet<&str> = items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    let created: usize = acked.iter().map(|a| a.created.len()).sum();
    eprintln!("{created} creates acknowledged before kill -9; compacted through {seen:?}");
    assert!(created >= 60, "enough writes ran: {created}");
    for (w, a) in acked.iter().enumerate() {
        let lost: Vec<&String> = a
            .created
            .iter()
            .filter(|n| !names.contains(n.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "writer {w}: acknowledged creates lost: {lost:?}"
        );
        let counter = items
            .iter()
            .find(|i| i["metadata"]["name"] == format!("counter-{w}"))
            .and_then(|i| i["data"]["n"].as_str())
            .and_then(|n| n.parse::<u64>().ok())
            .expect("counter");
        let (last_acked, in_flight) = a.counter;
        assert!(
            counter == last_acked || counter == in_flight,
            "writer {w}: counter {counter}, acknowledged {last_acked}"
        );
    }
    // The compaction state survived too.
    let after = compacted_revision(&watch_from_1(&server, "/api/v1/namespaces/load/configmaps").1)
        .expect("still compacted");
    assert!(
        after >= *seen.last().expect("seen"),
        "compacted revision went back: {after} < {seen:?}"
    );
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `apiserver_terminated_watchers_total{resource="configmaps"}`.
fn terminated_watchers(server: &Server) -> u64 {
    let (_, metrics) = server.curl_admin("GET", "/metrics", &[]);
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"apiserver_terminated_watchers_total{resource="configmaps"} "#)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The attack of issue 12: many watches on one HTTP/2 connection that never
/// read, while objects are written. Each watch is cut off (kube-apiserver
/// closes unresponsive watchers), so the server holds no growing buffers.
#[test]
fn watchers_that_never_read_are_cut_off() {
    const WATCHES: usize = 20;
    const MAX_WRITES: usize = 200;
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "slow"]);
    let url = format!("{}/api/v1/namespaces/slow/configmaps?watch=1", server.url);
    let (cert, key) = server.admin_cert();
    // curl multiplexes every watch over one HTTP/2 connection and writes all
    // of them to one pipe, which this test does not read: curl blocks on it
    // and stops reading the connection.
    let mut watcher = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--parallel",
            "--parallel-max",
            &WATCHES.to_string(),
            "--cacert",
        ])
        .arg(server.ca_file())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(std::iter::repeat_n(url.as_str(), WATCHES))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn curl");
    let rss_before = rss_kib(server.pid());

    let value = "x".repeat(128 * 1024);
    let file = server.path("cm.json");
    let started = Instant::now();
    let mut written = 0;
    while terminated_watchers(&server) < WATCHES as u64 {
        assert!(
            written < MAX_WRITES,
            "{written} writes and the watchers were not cut off"
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "watchers not cut off in time"
        );
        for _ in 0..5 {
            written += 1;
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{written:03}")}, "data": {"v": value}});
            std::fs::write(&file, body.to_string()).expect("write body");
            let (code, text) = server.curl_admin(
                "POST",
                "/api/v1/namespaces/slow/configmaps",
                &[
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &format!("@{}", file.display()),
                ],
            );
            assert_eq!(code, 201, "{text}");
        }
    }
    let rss_after = rss_kib(server.pid());
    eprintln!(
        "{WATCHES} stalled watches cut off after {written} writes of 128 KiB ({:?}); server RSS {rss_before} KiB before, {rss_after} KiB after",
        started.elapsed()
    );

    // The client, reading at last, gets what the connection held, then every
    // watch ends: far fewer events than were written.
    let mut stdout = watcher.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = watcher.try_wait().expect("curl status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watcher.kill();
            panic!("the cut-off watches did not end");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().expect("reader");
    let delivered = out
        .windows(br#""type":"ADDED""#.len())
        .filter(|w| w == br#""type":"ADDED""#)
        .count();
    assert!(status.success(), "every watch ended cleanly: {status}");
    assert!(
        delivered < WATCHES * written,
        "{delivered} of {} events delivered: the watches were cut off",
        WATCHES * written
    );
    // The server is fine: a new watch works.
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/slow/configmaps?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dcm-001", &[]);
    assert_eq!(code, 200);
    assert!(body.contains("cm-001"), "{}", &body[..body.len().min(200)]);
}
