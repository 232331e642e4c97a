//! Issue 17's `tessera check --proxy` must-show with real processes: three
//! meshed pods read through the API's `pods/proxy` `/trust`. It passes on
//! the healthy mesh; once the bundle ConfigMap gains an anchor it fails
//! naming the one proxy that trusts a file (the old bundle); once a pod's
//! ServiceAccount is deleted so its proxy cannot renew its 10-second leaf,
//! it fails naming that proxy as expired.

mod support;

use std::process::Output;

use support::Server;
use support::mesh::{
    API_APP, DATA_STORE_APP, api_and_data_store, bootstrap, identity_trusting, meshed_trusting, python, ready_pod_ip, tessera,
};

const BUNDLE: &str = "linkerd/tessera-identity-trust-roots";

fn check(server: &Server, pki: &std::path::Path, identity_addr: &str) -> Output {
    tessera(&["check", "--proxy", "--trust-anchors-configmap", BUNDLE, "--identity-addr", identity_addr, "--kubeconfig"])
        .arg(&server.kubeconfig)
        .arg("--issuer-dir")
        .arg(pki)
        .env("TESSERA_LOG", "error")
        .output()
        .expect("tessera check --proxy")
}

/// The lines of the data-plane category.
fn data_plane(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("tessera-identity-data-plane\n").nth(1).and_then(|s| s.split("\n\n").next()).unwrap_or_default().to_owned()
}

#[test]
fn check_proxy_passes_then_names_the_stale_and_the_expired_proxy() {
    let server = Server::start();
    api_and_data_store(&server);
    server.kubectl_ok(&["create", "ns", "legacy"]);
    server.kubectl_ok(&["create", "sa", "legacy", "-n", "legacy"]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "node-runs-pods",
        "-n",
        "legacy",
        "--clusterrole=tessera:node-pod-runner",
        "--user=system:node:node-legacy",
    ]);
    let _ = server.kubectl(&["create", "ns", "linkerd"]);
    let pki = server.path("trust");
    bootstrap(&pki, &[]);
    let anchor = pki.join("ca.crt");
    server.kubectl_ok(&[
        "create",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        &format!("--from-file=ca-bundle.crt={}", anchor.display()),
    ]);
    let issuer_dir = pki.display().to_string();
    let (_identity, identity_addr) = identity_trusting(
        &server,
        &["--trust-anchors-configmap", BUNDLE],
        &["--issuer-dir", &issuer_dir, "--issuance-lifetime", "10s", "--clock-skew-allowance", "1s"],
    );
    let python = python();
    let follow = ["--identity-trust-anchors-configmap", BUNDLE];
    let anchor_file = anchor.display().to_string();
    let _data_store = meshed_trusting(
        &server,
        "data-store-0",
        "data-store",
        &["--port", "8081"],
        &identity_addr,
        &follow,
        &[&python, "-c", DATA_STORE_APP],
    );
    let _api = meshed_trusting(
        &server,
        "api-0",
        "api",
        &["--port", "8080"],
        &identity_addr,
        &follow,
        &[&python, "-c", API_APP, "http://data-store.data-store.svc.cluster.local:8081"],
    );
    // Its proxy trusts the anchors file, not the bundle ConfigMap: it never sees a bundle change.
    let _legacy = meshed_trusting(
        &server,
        "legacy-0",
        "legacy",
        &["--port", "8082"],
        &identity_addr,
        &["--identity-trust-anchors", &anchor_file],
        &[&python, "-c", DATA_STORE_APP],
    );
    for ns in ["data-store", "api", "legacy"] {
        ready_pod_ip(&server, ns);
    }

    let healthy = check(&server, &pki, &identity_addr);
    let lines = data_plane(&healthy);
    assert!(healthy.status.success(), "{}\n{}", String::from_utf8_lossy(&healthy.stdout), String::from_utf8_lossy(&healthy.stderr));
    assert_eq!(
        lines,
        "---------------------------\n\
         ✔ data plane proxies report their trust\n\
         ✔ data plane proxies certificate are within their validity period\n\
         ✔ data plane proxies trust the current trust bundle\n\
         ✔ data plane proxies certificate match the current issuer\n\
         ✔ no trust rotation is in progress",
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).ends_with("Status check results are ✔\n"));

    // A second anchor joins the bundle: the two proxies following the
    // ConfigMap trust both; the legacy one still trusts only the old one.
    let second = server.path("second");
    bootstrap(&second, &[]);
    let bundle = [std::fs::read_to_string(&anchor).unwrap(), std::fs::read_to_string(second.join("ca.crt")).unwrap()].concat();
    let patch = serde_json::json!({ "data": { "ca-bundle.crt": bundle } }).to_string();
    server.kubectl_ok(&["patch", "configmap", "tessera-identity-trust-roots", "-n", "linkerd", "--type", "merge", "-p", &patch]);
    let stale = server.eventually(20, "check --proxy naming only the legacy proxy's bundle", || {
        let out = check(&server, &pki, &identity_addr);
        let lines = data_plane(&out);
        (lines.contains("× data plane proxies trust the current trust bundle\n    legacy/legacy-0 trusts [sha256:")
            && !lines.contains("api/api-0 trusts")
            && !lines.contains("data-store/data-store-0 trusts"))
        .then_some(out)
    });
    assert_eq!(stale.status.code(), Some(1), "{}", String::from_utf8_lossy(&stale.stdout));
    assert!(data_plane(&stale).contains("✔ data plane proxies certificate are within their validity period"), "{}", data_plane(&stale));
    assert!(String::from_utf8_lossy(&stale.stdout).ends_with("Status check results are ×\n"));

    // The data store loses its identity: its 10-second leaf runs out.
    server.kubectl_ok(&["delete", "sa", "data-store", "-n", "data-store"]);
    let expired = server.eventually(40, "check --proxy naming the data store's expired leaf", || {
        let out = check(&server, &pki, &identity_addr);
        data_plane(&out)
            .contains("× data plane proxies certificate are within their validity period\n    data-store/data-store-0: ")
            .then_some(out)
    });
    let lines = data_plane(&expired);
    assert_eq!(expired.status.code(), Some(1), "{lines}");
    // Seen just before its proxy drops it, or after (it then reports no leaf, its pod annotation the last issuer).
    assert!(
        lines.contains(
            "data-store/data-store-0: leaf certificate data-store.data-store.serviceaccount.identity.linkerd.cluster.local expired at "
        ) || lines.contains("data-store/data-store-0: its leaf certificate (from issuer sha256:"),
        "{lines}"
    );
    assert!(lines.contains("expired"), "{lines}");
    assert!(!lines.contains("api/api-0: leaf"), "{lines}");
    println!("{lines}");
}
