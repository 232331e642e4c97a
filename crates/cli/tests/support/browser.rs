//! The dashboard's browser tests: Debian's Chromium driven by the Playwright
//! suite in `ui/` (never a browser Playwright downloads).

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a dashboard user needs for the mesh views: find the pods, read
/// their proxies (`pods/proxy`); no `list servers`, so no policy explain.
pub const MESH_VIEWER: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: mesh-viewer}
rules:
- {apiGroups: [\"\"], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [\"\"], resources: [pods/proxy], verbs: [get]}
";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Chromium, or None (the caller skips, unless `TESSERA_REQUIRE_BROWSER` is set).
pub fn chromium(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("TESSERA_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if candidate.exists() {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("TESSERA_REQUIRE_BROWSER").is_none(),
        "TESSERA_REQUIRE_BROWSER is set but /usr/bin/chromium (or TESSERA_CHROMIUM) is missing: apt-get install chromium"
    );
    eprintln!("SKIPPED {test}: no Chromium at /usr/bin/chromium (apt-get install chromium, or run scripts/test.sh)");
    None
}

/// `npm ci` in `ui/` when its packages are missing (a fresh clone).
pub fn ensure_node_modules(ui: &Path) {
    if ui.join("node_modules/@playwright/test").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(ui)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .status()
        .expect("npm is required for the dashboard tests (scripts/test.sh installs it)");
    assert!(status.success(), "npm ci in ui/ failed");
}

/// Where the tests write screenshots: `docs/ui/` with `TESSERA_UPDATE_SCREENSHOTS=1`.
pub fn screenshot_dir() -> PathBuf {
    if std::env::var_os("TESSERA_UPDATE_SCREENSHOTS").is_some() { repo().join("docs/ui") } else { repo().join("ui/test-results/screenshots") }
}
