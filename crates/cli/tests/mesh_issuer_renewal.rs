//! Issue 17's must-show for automatic issuer renewal: `tessera identity`
//! holding the trust anchor's key (`--anchor-dir`) with a 2-minute issuer
//! and a 1-minute renew-before renews its own issuer, while a client loops
//! requests through three meshed workloads (web → api → data-store, the
//! mesh of `support/rotate_load.rs`). At least two renewals are seen, each
//! as an `IssuerRenewed` Event (`kubectl get events`) naming the new and
//! old issuer, each followed by every proxy holding a leaf from the new
//! issuer; no request fails and no renewal fails.
//!
//! This test waits for real certificate lifetimes: it takes about 2–2.5
//! minutes of wall time (the first renewal is due one minute after
//! bootstrap, the second one minute after that), well over the usual
//! 60 s budget, by design.

#[path = "support/rotate_load.rs"]
mod rotate_load;
mod support;

use rotate_load::{Load, Mesh, WORKLOADS, trust};
use support::json;

/// The `IssuerRenewed` and `IssuerRenewalFailed` Events in the control namespace, oldest first.
fn renewal_events(mesh: &Mesh) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (code, body) = mesh.server.curl_admin("GET", "/api/v1/namespaces/linkerd/events", &[]);
    assert_eq!(code, 200, "{body}");
    let items = json(&body)["items"].as_array().cloned().unwrap_or_default();
    let mut renewed: Vec<serde_json::Value> = items.iter().filter(|e| e["reason"] == "IssuerRenewed").cloned().collect();
    renewed.sort_by_key(|e| e["firstTimestamp"].as_str().unwrap_or_default().to_owned());
    let failed = items.into_iter().filter(|e| e["reason"] == "IssuerRenewalFailed").collect();
    (renewed, failed)
}

/// `(new, old)` issuer fingerprints from a renewal Event's message
/// ("Renewed identity issuer: NEW valid until T replaces OLD valid until T").
fn fingerprints(event: &serde_json::Value) -> (String, String) {
    let message = event["message"].as_str().unwrap_or_default();
    let words: Vec<&str> = message.split_whitespace().collect();
    assert!(message.starts_with("Renewed identity issuer: sha256:") && words.len() == 12, "{message}");
    assert_eq!((words[4], words[5], words[7], words[9], words[10]), ("valid", "until", "replaces", "valid", "until"), "{message}");
    (words[3].to_owned(), words[8].to_owned())
}

#[test]
fn identity_renews_its_two_minute_issuer_under_load() {
    let mesh = Mesh::start_with(&["--issuer-validity", "2m"], |pki| {
        ["--anchor-dir", &pki.display().to_string(), "--issuer-validity", "2m", "--issuer-renew-before", "1m"].map(str::to_owned).to_vec()
    });
    let first_issuer = mesh.annotation("api", "tessera.io/leaf-issuer");
    let load = Load::start(mesh.targets());
    load.wait_for_more(&mesh.server, 20, "requests before the first renewal");

    let mut previous = first_issuer.clone();
    for n in 1..=2 {
        // Due one minute after the previous issuer was made.
        let event = mesh.server.eventually(100, &format!("renewal {n} as an IssuerRenewed Event"), || {
            let (renewed, failed) = renewal_events(&mesh);
            assert!(failed.is_empty(), "a renewal failed: {failed:#?}");
            renewed.get(n - 1).cloned()
        });
        assert_eq!(event["type"], "Normal", "{event}");
        assert_eq!(event["involvedObject"]["kind"], "ConfigMap", "{event}");
        assert_eq!(event["involvedObject"]["name"], "tessera-identity-trust-roots", "{event}");
        assert_eq!(event["source"]["component"], "tessera-identity", "{event}");
        let (new, old) = fingerprints(&event);
        assert_eq!(old, previous, "renewal {n} replaces the issuer in use");
        assert_ne!(new, old);
        let announced = mesh.server.kubectl_ok(&[
            "get",
            "configmap",
            "tessera-identity-trust-roots",
            "-n",
            "linkerd",
            "-o",
            r"jsonpath={.metadata.annotations.tessera\.io/issuer-fingerprint}",
        ]);
        assert_eq!(announced, new, "the bundle ConfigMap announces the renewed issuer");
        // Every proxy renews early on the announcement: a leaf from the new issuer.
        for (i, ns) in WORKLOADS.iter().enumerate() {
            mesh.server.eventually(30, &format!("{ns}'s leaf from renewed issuer {n}"), || {
                (mesh.annotation(ns, "tessera.io/leaf-issuer") == new && trust(&mesh.ips[i])["leaf"]["issuer"] == new.as_str())
                    .then_some(())
            });
        }
        previous = new;
    }

    let listed = mesh.server.kubectl_ok(&["get", "events", "-n", "linkerd"]);
    assert!(listed.matches("IssuerRenewed").count() >= 2, "{listed}");
    load.wait_for_more(&mesh.server, 40, "requests after the renewals");
    let counts = load.finish();
    println!("issuer renewal under load: {} requests, {} failed", counts.sent, counts.failures.len());
    assert!(counts.failures.is_empty(), "{} of {} requests failed: {:#?}", counts.failures.len(), counts.sent, counts.failures);
    // The anchor never changed, and the renewal left no scratch files behind.
    for ip in &mesh.ips {
        assert_eq!(trust(ip)["anchors"], serde_json::json!([mesh.old_anchor]));
    }
    assert!(!mesh.pki.join(".issuer-renewal.tmp").exists());
}
