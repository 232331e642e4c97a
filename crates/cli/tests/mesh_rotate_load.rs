//! Issue 17's must-show under load with three meshed workloads: web → api →
//! data-store, each under `tessera agent run --mesh`, every proxy and
//! `tessera identity` taking the anchors from the bundle ConfigMap. Two
//! client loops (through web's proxy: three proxies, two mTLS hops; through
//! api's proxy) run for the whole of a full anchor rotation and then an
//! issuer-only rotation. Every request is counted; any non-200, connection
//! error or wrong identity fails the test. While the rotation runs the
//! cluster is watched: every proxy is seen trusting both anchors, then
//! holding a leaf from the new issuer, then trusting only the new anchor.

#[path = "support/rotate_load.rs"]
mod rotate_load;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use rotate_load::{Load, Mesh, ProxyReport, Snapshot, WORKLOADS};

/// Runs `tessera identity rotate ARGS` to the end, snapshotting the cluster
/// while it runs; its stdout, the distinct snapshots in order, its run time.
fn rotate_watched(mesh: &Mesh, extra: &[&str]) -> (String, Vec<Snapshot>, Duration) {
    let started = Instant::now();
    let mut child = mesh
        .rotate_cmd(&[&["--step-timeout", "40s"], extra].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("identity rotate");
    let mut seen: Vec<Snapshot> = vec![mesh.snapshot()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("rotate status").is_none() {
        assert!(Instant::now() < deadline, "the rotation did not end within 60 s");
        let now = mesh.snapshot();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().expect("rotate output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "rotate failed:\n{stdout}\n{stderr}");
    // The agents may report the last step's effect after the command saw it done.
    let last = mesh.snapshot();
    if seen.last() != Some(&last) {
        seen.push(last);
    }
    (stdout, seen, took)
}

/// The index of the first snapshot at or after `from` where `check` holds.
fn observed(seen: &[Snapshot], from: usize, what: &str, check: impl Fn(&Snapshot) -> bool) -> usize {
    seen.iter().skip(from).position(check).map(|i| i + from).unwrap_or_else(|| panic!("never observed: {what}; snapshots: {seen:#?}"))
}

#[test]
fn three_workloads_under_load_through_a_full_and_an_issuer_only_rotation() {
    let mesh = Mesh::start();
    let old_anchor = mesh.old_anchor.clone();
    let old_issuer = mesh.annotation("api", "tessera.io/leaf-issuer");
    let load = Load::start(mesh.targets());
    load.wait_for_more(&mesh.server, 20, "requests before the rotation");

    let (full, seen, full_took) = rotate_watched(&mesh, &[]);
    let state = mesh.rotation_state();
    let new_anchor = state["signingAnchor"].as_str().unwrap().to_owned();
    let first_issuer = state["newIssuer"].as_str().unwrap().to_owned();
    assert_eq!(state["step"], "done", "{state}");
    assert_ne!(new_anchor, old_anchor);
    // Each of the six steps ran and each wait counted all three proxies.
    assert!(full.starts_with("started full rotation "), "{full}");
    assert!(full.contains(&format!("step 1/6 done: new anchor {new_anchor}")) && full.contains("the bundle holds 2 anchors"), "{full}");
    for step in [2, 4, 6] {
        assert!(full.contains(&format!("step {step}/6 done: 3/3 proxies")), "{full}");
    }
    assert!(full.contains(&format!("step 3/6 done: issuer {first_issuer} signed by {new_anchor} installed and announced")), "{full}");
    assert!(full.contains(&format!("step 5/6 done: removed {old_anchor}; the bundle holds {new_anchor}")), "{full}");
    assert!(full.contains(" complete"), "{full}");

    // Each wait seen from outside, in order, on every proxy's reports (a
    // proxy's report stays in each state for at least one of its agent's
    // 1 s polls, since the rotation acts only on what the reports show):
    // trusting both anchors with its old leaf, then a leaf from the new
    // issuer while it still trusts the old anchor, then only the new anchor.
    let mut both = vec![old_anchor.clone(), new_anchor.clone()];
    both.sort();
    let stages = [
        ProxyReport { anchors: both.clone(), issuer: old_issuer.clone() },
        ProxyReport { anchors: both.clone(), issuer: first_issuer.clone() },
        ProxyReport { anchors: vec![new_anchor.clone()], issuer: first_issuer.clone() },
    ];
    for (i, ns) in WORKLOADS.iter().enumerate() {
        let reports: Vec<&ProxyReport> = seen.iter().map(|s| &s.proxies[i]).collect();
        let mut next = stages.iter().peekable();
        for report in &reports {
            if next.peek() == Some(report) {
                next.next();
            }
        }
        assert!(next.peek().is_none(), "{ns}: never observed {:?}; its reports: {reports:#?}", next.peek());
    }
    assert!(seen.iter().any(|s| s.bundle == [old_anchor.clone(), new_anchor.clone()]), "the bundle with both anchors: {seen:#?}");
    let last = seen.last().expect("a snapshot");
    assert_eq!(last.bundle, [new_anchor.clone()]);
    // The old anchor never left the bundle while a proxy held an old leaf.
    for s in &seen {
        assert!(
            s.bundle.contains(&old_anchor) || s.proxies.iter().all(|p| p.issuer == first_issuer),
            "the old anchor left the bundle too early: {seen:#?}"
        );
    }

    // Then the yearly issuer renewal, still under load.
    let (issuer_only, seen_issuer, issuer_took) = rotate_watched(&mesh, &["--issuer-only"]);
    let second_issuer = mesh.rotation_state()["newIssuer"].as_str().unwrap().to_owned();
    assert_ne!(second_issuer, first_issuer);
    assert!(issuer_only.contains("step 4/6 done: 3/3 proxies"), "{issuer_only}");
    observed(&seen_issuer, 0, "every leaf from the second issuer", |s| s.proxies.iter().all(|p| p.issuer == second_issuer));
    assert!(seen_issuer.iter().all(|s| s.bundle == [new_anchor.clone()]), "an issuer-only rotation leaves the bundle alone");

    // More requests on the final credentials, then the verdict.
    load.wait_for_more(&mesh.server, 40, "requests after the rotations");
    let counts = load.finish();
    println!(
        "rotation under load: {} requests, {} failed; full rotation {full_took:?}, issuer-only {issuer_took:?}",
        counts.sent,
        counts.failures.len()
    );
    assert!(counts.failures.is_empty(), "{} of {} requests failed: {:#?}", counts.failures.len(), counts.sent, counts.failures);
    let id = state["id"].as_str().unwrap();
    mesh.assert_all_on(&new_anchor, &second_issuer, &mesh.pki.join(format!("rotation-{id}/ca.crt")));
    assert_eq!(mesh.bundle_fingerprints(), [new_anchor]);
}
