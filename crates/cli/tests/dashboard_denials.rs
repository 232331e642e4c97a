//! The dashboard's recent denials on a real one (issue 18): api, other and the
//! data store meshed under `tessera agent run --mesh`, a Server on the data
//! store's port with an AuthorizationPolicy admitting only the api's identity,
//! and a real request from `other` that the data store's proxy refuses. The
//! proxy keeps it in its `/denials` ring; the Playwright suite in
//! `ui/tests-denials` (Debian's headless Chromium) signs in and finds the row
//! with the client identity, the request, the reason, and beside it the rule
//! that decided from the server's policy explain API. A user who may read the
//! proxies but not explain policy sees "forbidden" in that cell, not an error.

mod support;

use std::process::Command;

use support::browser::{MESH_VIEWER, chromium, ensure_node_modules, repo, screenshot_dir};
use support::mesh::{API_APP, DATA_STORE_APP, api_and_data_store, curl, identity, meshed, python, ready_pod_ip};
use support::policy::{OTHER_ID, api_only_policy};
use support::{Server, json};

#[test]
fn a_real_denial_shows_with_the_rule_that_decided_in_chromium() {
    let Some(chromium) = chromium("a_real_denial_shows_with_the_rule_that_decided_in_chromium") else { return };
    let ui = repo().join("ui");
    ensure_node_modules(&ui);

    let server = Server::start();
    api_and_data_store(&server);
    server.kubectl_ok(&["create", "ns", "other"]);
    server.kubectl_ok(&["create", "sa", "other", "-n", "other"]);
    server.kubectl_ok(&["create", "rolebinding", "node-runs-pods", "-n", "other", "--clusterrole=tessera:node-pod-runner", "--user=system:node:node-other"]);
    let out = server.kubectl_stdin(&["create", "-f", "-"], MESH_VIEWER);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for sa in ["mesh-viewer", "dashboard-admin"] {
        server.kubectl_ok(&["create", "serviceaccount", sa, "-n", "default"]);
    }
    server.kubectl_ok(&["create", "clusterrolebinding", "mesh-viewer", "--clusterrole=mesh-viewer", "--serviceaccount=default:mesh-viewer"]);
    server.kubectl_ok(&["create", "clusterrolebinding", "dashboard-admin", "--clusterrole=cluster-admin", "--serviceaccount=default:dashboard-admin"]);

    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let anchors = pki.join("ca.crt");
    let python = python();
    let data_store_url = "http://data-store.data-store.svc.cluster.local:8081";
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &anchors, &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &anchors, &[&python, "-c", API_APP, data_store_url]);
    let _other = meshed(&server, "other", "8080", &identity_addr, &anchors, &[&python, "-c", API_APP, data_store_url]);
    ready_pod_ip(&server, "data-store");
    let (api_url, other_url) = (format!("http://{}:8080/data", ready_pod_ip(&server, "api")), format!("http://{}:8080/data", ready_pod_ip(&server, "other")));

    let out = server.kubectl_stdin(&["apply", "-f", "-"], &api_only_policy());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A real request from other, refused by the data store's proxy; the api still passes.
    let (_, body) = server.eventually(20, "other denied by the data store's proxy", || {
        let answer = curl(&other_url);
        (answer.0 == 403).then_some(answer)
    });
    assert_eq!(body, "unauthorized request on route\n");
    assert_eq!(curl(&api_url).0, 200);

    // The proxy's ring, through pods/proxy with a user's token: the contract's shape.
    let (viewer, admin) = (server.token("default", "mesh-viewer"), server.token("default", "dashboard-admin"));
    let auth = format!("Authorization: Bearer {viewer}");
    let (code, body) = server.curl("GET", "/api/v1/namespaces/data-store/pods/data-store-0:4191/proxy/denials", &["--http1.1", "-H", &auth]);
    assert_eq!(code, 200, "{body}");
    let denials = json(&body)["denials"].as_array().cloned().unwrap_or_default();
    let latest = denials.iter().find(|d| d["client"]["identity"] == OTHER_ID).unwrap_or_else(|| panic!("other's denial in {body}"));
    for (field, want) in [("protocol", "HTTP"), ("method", "GET"), ("path", "/data"), ("server", "data-store-http"), ("reason", "unauthorized request on route"), ("verdict", "deny")] {
        assert_eq!(latest[field], want, "{field} in {latest}");
    }
    assert_eq!(latest["port"], 8081, "{latest}");
    assert!(denials.iter().all(|d| d["client"]["identity"] != "api.api.serviceaccount.identity.linkerd.cluster.local"), "allowed traffic is not kept: {body}");

    let out = Command::new("npx")
        .args(["playwright", "test", "--config", "playwright.denials.config.ts"])
        .current_dir(&ui)
        .env("TESSERA_UI_URL", &server.url)
        .env("TESSERA_KUBECONFIG", &server.kubeconfig)
        .env("TESSERA_VIEWER_TOKEN", &viewer)
        .env("TESSERA_ADMIN_TOKEN", &admin)
        .env("TESSERA_CHROMIUM", &chromium)
        .env("TESSERA_SCREENSHOT_DIR", screenshot_dir())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CI", "1")
        .output()
        .expect("run npx playwright test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Playwright suite failed (output above)");
    assert!(stdout.contains("3 passed"), "expected all 3 tests (parsing, admin, viewer) to run and pass:\n{stdout}");
}
