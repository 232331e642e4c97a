//! Grouped commits on SQLite (issue 14): concurrent writes share one
//! transaction and one fsync, and are acknowledged only after it. Written as
//! the failure that would show a broken group commit: `kill -9` while eight
//! clients write at once, then every acknowledged write must be there, with
//! the exact resourceVersion it was acknowledged with; a write that fails
//! its precondition in the middle of the load fails alone.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::json;
use support::{Server, json};

const WRITERS: usize = 8;
const ACKNOWLEDGED_BEFORE_KILL: usize = 200;

/// What one writer saw acknowledged: name → resourceVersion.
type Acked = HashMap<String, String>;

fn create(server: &Server, name: &str, i: u64) -> (u16, String) {
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}})
        .to_string();
    server.curl_admin(
        "POST",
        "/api/v1/namespaces/load/configmaps",
        &["-H", "Content-Type: application/json", "-d", &body, "--max-time", "10"],
    )
}

#[test]
fn kill_9_under_concurrent_writers_loses_no_acknowledged_write() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "load"]);
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (server, stop, acked_total) = (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&acked_total));
            std::thread::spawn(move || {
                let mut acked = Acked::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let name = format!("w{w}-{i:05}");
                    let (code, body) = create(&server, &name, i);
                    if code == 201 {
                        let rv = json(&body)["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_owned();
                        acked.insert(name.clone(), rv);
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    // Every fourth round, a write that must fail its precondition
                    // while the others' writes commit around it.
                    if i.is_multiple_of(4) && code == 201 {
                        let (code, body) = create(&server, &name, i);
                        if code != 0 {
                            assert_eq!(code, 409, "{body}");
                            assert_eq!(json(&body)["message"], format!("configmaps \"{name}\" already exists"));
                        }
                    }
                }
                acked
            })
        })
        .collect();

    server.eventually(120, "acknowledged creates under load", || {
        (acked_total.load(Ordering::Relaxed) >= ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
    let killed = Command::new("kill").args(["-9", &server.pid().to_string()]).status().expect("run kill");
    assert!(killed.success());
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acked> = writers.into_iter().map(|w| w.join().expect("writer")).collect();
    let dir = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("writers are done")).stop();

    let server = Server::start_in(dir);
    let listed = json(&server.kubectl_ok(&["get", "cm", "-n", "load", "-o", "json"]));
    let stored: HashMap<&str, &str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| Some((i["metadata"]["name"].as_str()?, i["metadata"]["resourceVersion"].as_str()?)))
        .collect();
    let total: usize = acked.iter().map(HashMap::len).sum();
    eprintln!("{total} creates acknowledged by {WRITERS} concurrent writers before kill -9");
    assert!(total >= ACKNOWLEDGED_BEFORE_KILL);
    for (w, acked) in acked.iter().enumerate() {
        for (name, rv) in acked {
            assert_eq!(stored.get(name.as_str()), Some(&rv.as_str()), "writer {w}: acknowledged {name} at {rv}");
        }
    }
    // Each acknowledged write got a revision of its own.
    let revisions: HashSet<&String> = acked.iter().flat_map(HashMap::values).collect();
    assert_eq!(revisions.len(), total);
}
