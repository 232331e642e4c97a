//! The dashboard's mesh views end to end: api and data-store meshed under
//! `tessera agent run --mesh` (seed 004's set-up), traffic between them, and
//! the Playwright suite in `ui/tests-mesh` in Debian's headless Chromium
//! reading the proxies' metrics through kube's `pods/proxy` subresource with
//! each user's own token: the edge appears SECURED with live numbers, a user
//! without `get pods/proxy` sees a forbidden state, and 200 synthetic edges
//! are measured for frame time and interaction latency.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::browser::{MESH_VIEWER, chromium, ensure_node_modules, repo, screenshot_dir};
use support::mesh::{API_APP, DATA_STORE_APP, api_and_data_store, curl, identity, meshed, python, ready_pod_ip};
use support::{Server, json};

/// `pods/proxy` over raw HTTP: kube's URL form and RBAC, narrowed to the admin port's /metrics and /trust.
fn pods_proxy_api(server: &Server, viewer: &str, lister: &str) {
    let get = |token: &str, method: &str, path: &str| {
        let auth = format!("Authorization: Bearer {token}");
        server.curl(method, path, &["--http1.1", "-H", &auth])
    };
    let (code, body) = get(viewer, "GET", "/api/v1/namespaces/api/pods/api-0:4191/proxy/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("request_total{"), "{body}");
    let (code, body) = get(lister, "GET", "/api/v1/namespaces/api/pods/api-0:4191/proxy/metrics");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        r#"pods "api-0:4191" is forbidden: User "system:serviceaccount:default:pod-lister" cannot get resource "pods/proxy" in API group "" in the namespace "api""#
    );
    // Nothing but GET of /metrics, /trust and /denials on the admin port.
    let (code, body) = get(viewer, "GET", "/api/v1/namespaces/api/pods/api-0:4191/proxy/tap");
    assert_eq!(code, 404, "{body}");
    assert_eq!(json(&body)["message"], "pods/proxy of api-0: tessera serves only GET /metrics, /trust and /denials on the proxy admin port api-0:4191");
    let (code, body) = get(viewer, "GET", "/api/v1/namespaces/api/pods/api-0:8080/proxy/metrics");
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(viewer, "GET", "/api/v1/namespaces/api/pods/nope:4191/proxy/metrics");
    assert_eq!((code, json(&body)["message"].as_str()), (404, Some(r#"pods "nope" not found"#)), "{body}");
    // The discovery entry is kube's.
    let (code, body) = get(viewer, "GET", "/api/v1");
    assert_eq!(code, 200, "{body}");
    let entry = json(&body)["resources"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "pods/proxy").cloned()).expect("pods/proxy in /api/v1");
    assert_eq!(
        entry,
        serde_json::json!({"name": "pods/proxy", "singularName": "", "namespaced": true, "kind": "PodProxyOptions", "verbs": ["create", "delete", "get", "patch", "update"]})
    );
}

#[test]
fn dashboard_mesh_views_in_chromium() {
    let Some(chromium) = chromium("dashboard_mesh_views_in_chromium") else { return };
    let ui = repo().join("ui");
    ensure_node_modules(&ui);

    let server = Server::start();
    api_and_data_store(&server);
    let out = server.kubectl_stdin(&["create", "-f", "-"], MESH_VIEWER);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for sa in ["mesh-viewer", "pod-lister", "dashboard-admin"] {
        server.kubectl_ok(&["create", "serviceaccount", sa, "-n", "default"]);
    }
    server.kubectl_ok(&["create", "clusterrolebinding", "mesh-viewer", "--clusterrole=mesh-viewer", "--serviceaccount=default:mesh-viewer"]);
    // `view` lists pods but, as in Kubernetes, grants no pods/proxy.
    server.kubectl_ok(&["create", "clusterrolebinding", "pod-lister", "--clusterrole=view", "--serviceaccount=default:pod-lister"]);
    server.kubectl_ok(&["create", "clusterrolebinding", "dashboard-admin", "--clusterrole=cluster-admin", "--serviceaccount=default:dashboard-admin"]);

    let pki = server.path("identity");
    let (_identity, identity_addr) = identity(&server, &pki);
    let python = python();
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &pki.join("ca.crt"), &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &pki.join("ca.crt"), &[&python, "-c", API_APP, "http://data-store.data-store.svc.cluster.local:8081"]);
    ready_pod_ip(&server, "data-store");
    let api_ip = ready_pod_ip(&server, "api");
    let api_url = format!("http://{api_ip}:8080/dashboard");
    server.eventually(20, "api reaching the data store through the mesh", || (curl(&api_url).0 == 200).then_some(()));

    // Traffic for the whole browser run, so the edge has a rate.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), api_url.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                curl(&url);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };

    let (viewer, lister, admin) = (server.token("default", "mesh-viewer"), server.token("default", "pod-lister"), server.token("default", "dashboard-admin"));
    pods_proxy_api(&server, &viewer, &lister);

    let bench_out = ui.join("test-results/edges-load.json");
    let _ = std::fs::remove_file(&bench_out);
    let out = Command::new("npx")
        .args(["playwright", "test", "--config", "playwright.mesh.config.ts"])
        .current_dir(&ui)
        .env("TESSERA_UI_URL", &server.url)
        .env("TESSERA_KUBECONFIG", &server.kubeconfig)
        .env("TESSERA_VIEWER_TOKEN", &viewer)
        .env("TESSERA_LISTER_TOKEN", &lister)
        .env("TESSERA_ADMIN_TOKEN", &admin)
        .env("TESSERA_CHROMIUM", &chromium)
        .env("TESSERA_SCREENSHOT_DIR", screenshot_dir())
        .env("TESSERA_BENCH_OUT", &bench_out)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CI", "1")
        .output()
        .expect("run npx playwright test");
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Playwright suite failed (output above)");
    assert!(stdout.contains("5 passed"), "expected all 5 browser tests to run and pass:\n{stdout}");
    let bench = std::fs::read_to_string(&bench_out).expect("the 200-edge test wrote its measurements");
    eprintln!("dashboard edges load test (200 edges): {bench}");
}
