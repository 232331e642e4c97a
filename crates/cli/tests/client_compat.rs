//! The official Python `kubernetes` client against a real tessera server:
//! `tests/python/compat_client.py` (CRUD, the three patch types, selectors and
//! paging, watch, TokenRequest, TokenReview, SubjectAccessReview, RBAC, Leases,
//! and kube-apiserver 1.32's exact errors). `scripts/test.sh` installs the client.

mod support;

use std::process::Command;

use support::Server;
use tessera_store::etcd::testing::EtcdCluster;

#[test]
fn python_kubernetes_client_suite_passes_on_sqlite() {
    run_suite(&Server::start());
}

/// The same on etcd, where resourceVersions are etcd revisions.
#[test]
fn python_kubernetes_client_suite_passes_on_etcd() {
    let etcd = EtcdCluster::start(1).unwrap_or_else(|err| panic!("{err}"));
    run_suite(&Server::start_with(tempfile::tempdir().expect("tempdir"), &["--storage", &etcd.storage_url()]));
}

fn run_suite(server: &Server) {
    let importable = Command::new("python3").args(["-c", "import kubernetes"]).status().is_ok_and(|s| s.success());
    assert!(importable, "the Python `kubernetes` client is required (scripts/test.sh installs it)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/compat_client.py");
    let out = Command::new("python3")
        .arg(script)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Python client suite failed:\n{stdout}\n{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" passed, 0 failed") && !summary.starts_with("0 "), "unexpected summary: {stdout}");
}
