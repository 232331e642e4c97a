//! The dashboard at `/ui/` end to end: the real `tessera server`, data made
//! with the real kubectl, and the Playwright suite in `ui/tests` driving
//! Debian's headless Chromium (never a browser Playwright downloads).
//!
//! Skipped, with a message, only when Chromium is missing and
//! `TESSERA_REQUIRE_BROWSER` is unset; `scripts/test.sh` installs Chromium
//! and sets it, so CI never skips. `TESSERA_UPDATE_SCREENSHOTS=1` writes the
//! screenshots to `docs/ui/` (committed, shown in the README); otherwise
//! they go to `ui/test-results/screenshots`.

mod support;

use std::process::Command;

use support::Server;
use support::browser::{chromium, ensure_node_modules, repo, screenshot_dir};

const LEGACY_TOKEN: &str = "apiVersion: v1
kind: Secret
metadata:
  name: web-legacy-token
  namespace: shop
  annotations:
    kubernetes.io/service-account.name: web
type: kubernetes.io/service-account-token
";

const MESHED_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  annotations:
    linkerd.io/inject: enabled
spec:
  serviceAccountName: web
  automountServiceAccountToken: false
  containers:
  - name: web
    image: web
";

/// The static files need no credentials, and serving them opens nothing else.
fn static_files_bypass_nothing(server: &Server) {
    let (code, body) = server.curl("GET", "/ui/", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("<script type=\"module\" crossorigin src=\"/ui/assets/app.js\"></script>"), "{body}");
    let headers = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(server.ca_file())
        .arg(format!("{}/ui/assets/app.js", server.url))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
    assert!(headers.contains("content-type: text/javascript; charset=utf-8"), "{headers}");
    assert!(headers.contains("x-content-type-options: nosniff"), "{headers}");
    assert!(headers.contains("content-security-policy: default-src 'none'; script-src 'self';"), "{headers}");
    // Raw `..` and encoded traversal reach no API path and no file.
    for path in ["/ui/../api/v1/secrets", "/ui/%2e%2e/api/v1/secrets", "/ui/assets/../../openid/v1/jwks"] {
        let (code, body) = server.curl("GET", path, &["--path-as-is"]);
        assert_eq!((code, body.as_str()), (404, "404 page not found\n"), "{path}");
    }
    // The API itself still refuses anonymous clients, under kube's message.
    let (code, body) = server.curl("GET", "/api/v1/secrets", &["--http1.1"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(r#"secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"#), "{body}");
}

/// `/tessera/v1/rbac/rules`, which the accounts view shows: RBAC decides who may ask.
fn rules_api(server: &Server, admin_token: &str, nobody_token: &str) {
    let ask_with = |token: &str, body: &str| {
        let auth = format!("Authorization: Bearer {token}");
        server.curl("POST", "/tessera/v1/rbac/rules", &["--http1.1", "-H", &auth, "-H", "Content-Type: application/json", "-d", body])
    };
    let ask = |token: &str| ask_with(token, r#"{"user":"system:serviceaccount:shop:web","namespace":"shop"}"#);
    // A malformed question is a kube Status, not a plain-text framework error.
    let (code, body) = ask_with(admin_token, r#"{"user": 7}"#);
    assert_eq!(code, 400, "{body}");
    let status = support::json(&body);
    assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("BadRequest")), "{body}");
    assert!(status["message"].as_str().is_some_and(|m| m.starts_with("the request body is not a valid query: invalid type: integer `7`")), "{body}");
    let (code, body) = ask(admin_token);
    assert_eq!(code, 200, "{body}");
    let answer = support::json(&body);
    let web_view = answer["bindings"].as_array().and_then(|b| b.iter().find(|b| b["binding"] == r#"RoleBinding "web-view/shop""#)).cloned();
    let web_view = web_view.unwrap_or_else(|| panic!("no web-view binding in {body}"));
    assert_eq!((web_view["role"].as_str(), web_view["subject"].as_str()), (Some(r#"ClusterRole "view""#), Some(r#"ServiceAccount "web/shop""#)));
    assert!(web_view["rules"].as_array().is_some_and(|r| !r.is_empty()), "{body}");
    let (code, body) = ask(nobody_token);
    assert_eq!(code, 403, "{body}");
    assert_eq!(support::json(&body)["message"], r#"forbidden: User "system:serviceaccount:shop:nobody" cannot post path "/tessera/v1/rbac/rules""#);
}

#[test]
fn dashboard_in_chromium() {
    let Some(chromium) = chromium("dashboard_in_chromium") else { return };
    let ui = repo().join("ui");
    ensure_node_modules(&ui);

    let server = Server::start();
    static_files_bypass_nothing(&server);
    server.kubectl_ok(&["create", "namespace", "shop"]);
    for sa in ["web", "dashboard-admin", "nobody"] {
        server.kubectl_ok(&["create", "serviceaccount", sa, "-n", "shop"]);
    }
    server.kubectl_ok(&["create", "clusterrolebinding", "dashboard-admin", "--clusterrole=cluster-admin", "--serviceaccount=shop:dashboard-admin"]);
    server.kubectl_ok(&["create", "rolebinding", "web-view", "-n", "shop", "--clusterrole=view", "--serviceaccount=shop:web"]);
    for manifest in [LEGACY_TOKEN, MESHED_POD] {
        let out = server.kubectl_stdin(&["create", "-f", "-"], manifest);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let admin_token = server.token("shop", "dashboard-admin");
    let nobody_token = server.token("shop", "nobody");

    rules_api(&server, &admin_token, &nobody_token);

    let screenshots = screenshot_dir();
    let bench_out = ui.join("test-results/load.json");
    let (admin_cert, admin_key) = server.admin_cert();
    let _ = std::fs::remove_file(&bench_out);
    let out = Command::new("npx")
        .args(["playwright", "test"])
        .current_dir(&ui)
        .env("TESSERA_UI_URL", &server.url)
        .env("TESSERA_KUBECONFIG", &server.kubeconfig)
        .env("TESSERA_ADMIN_TOKEN", &admin_token)
        .env("TESSERA_NOBODY_TOKEN", &nobody_token)
        .env("TESSERA_ADMIN_CERT", &admin_cert)
        .env("TESSERA_ADMIN_KEY", &admin_key)
        .env("TESSERA_CHROMIUM", &chromium)
        .env("TESSERA_SCREENSHOT_DIR", &screenshots)
        .env("TESSERA_BENCH_OUT", &bench_out)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CI", "1")
        .output()
        .expect("run npx playwright test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the Playwright suite failed (output above)");
    assert!(stdout.contains("7 passed"), "expected all 7 browser tests to run and pass:\n{stdout}");
    let bench = std::fs::read_to_string(&bench_out).expect("the load test wrote its measurements");
    eprintln!("dashboard load test (1,000 ServiceAccounts): {bench}");
}
