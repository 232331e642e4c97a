//! Encryption at rest with kube-apiserver's EncryptionConfiguration: what an
//! attacker who copies the store's files finds (nothing of a Secret), on
//! SQLite and on etcd, and a key rotation that leaves every Secret readable.

mod support;

use std::path::{Path, PathBuf};

use support::Server;

const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY2: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";
const SECRET_CANARY: &str = "Secret-Canary-7731-hunter2";
const CONFIGMAP_CANARY: &str = "ConfigMap-Canary-5519-visible";

/// An EncryptionConfiguration for Secrets with the given aesgcm keys, first one current.
fn write_config(dir: &Path, name: &str, keys: &[(&str, &str)], identity: bool) -> PathBuf {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n",
    );
    for (key_name, secret) in keys {
        text.push_str(&format!("      - name: {key_name}\n        secret: {secret}\n"));
    }
    if identity {
        text.push_str("  - identity: {}\n");
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every file under `dir`, read raw, concatenated: what a copy of it holds.
fn raw_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.extend(bytes);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn create_canaries(server: &Server) {
    server.kubectl_ok(&["create", "secret", "generic", "db", "-n", "default", &format!("--from-literal=password={SECRET_CANARY}")]);
    server.kubectl_ok(&["create", "configmap", "visible", "-n", "default", &format!("--from-literal=note={CONFIGMAP_CANARY}")]);
}

fn secret_value(server: &Server) -> String {
    use base64::Engine as _;
    let encoded = server.kubectl_ok(&["get", "secret", "db", "-n", "default", "-o", "jsonpath={.data.password}"]);
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).expect("base64")).expect("utf8")
}

/// The attacker's view: the unencrypted ConfigMap is there (so the scan sees
/// what was written), the Secret is not, in plain text or base64.
fn assert_secret_hidden(files: &[u8], place: &str) {
    assert!(contains(files, CONFIGMAP_CANARY), "{place}: the scan must see written data (ConfigMap canary missing)");
    assert!(!contains(files, SECRET_CANARY), "{place}: Secret value found in plain text");
    assert!(!contains(files, &b64(SECRET_CANARY)), "{place}: Secret value found in base64");
}

#[test]
fn sqlite_store_never_holds_a_secret_in_the_clear_and_rotation_keeps_secrets_readable() {
    let configs = tempfile::tempdir().expect("tempdir");
    let first = write_config(configs.path(), "first.yaml", &[("key1", KEY1)], true);
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--encryption-provider-config", first.to_str().expect("utf8")]);
    create_canaries(&server);
    assert_eq!(secret_value(&server), SECRET_CANARY);
    let store_files: Vec<u8> = ["store.db", "store.db-wal"].iter().flat_map(|f| std::fs::read(server.path(f)).unwrap_or_default()).collect();
    assert_secret_hidden(&store_files, "store.db");
    assert!(contains(&store_files, "k8s:enc:aesgcm:v1:key1:"), "the Secret is stored in kube's aesgcm format");

    // Rotation: the new key first, the old one still listed; restart; rewrite.
    let rotated = write_config(configs.path(), "rotated.yaml", &[("key2", KEY2), ("key1", KEY1)], true);
    let dir = server.stop();
    let server = Server::start_with(dir, &["--encryption-provider-config", rotated.to_str().expect("utf8")]);
    assert_eq!(secret_value(&server), SECRET_CANARY, "old-key Secrets read during the rotation");
    let out = server.tessera(&["server", "encryption", "rewrite"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rewrite failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("rewrote "), "{stdout}");

    // The old key removed, and identity too: everything still reads, so everything was rewritten.
    let only_new = write_config(configs.path(), "only-new.yaml", &[("key2", KEY2)], false);
    let dir = server.stop();
    let server = Server::start_with(dir, &["--encryption-provider-config", only_new.to_str().expect("utf8")]);
    assert_eq!(secret_value(&server), SECRET_CANARY);
    let all = server.kubectl_ok(&["get", "secrets", "-A", "-o", "name"]);
    assert!(all.lines().any(|l| l == "secret/db"), "{all}");
}

#[test]
fn etcd_never_holds_a_secret_in_the_clear() {
    let cluster = tessera_store::etcd::testing::EtcdCluster::start(1).expect("start etcd (TESSERA_ETCD_BIN)");
    let configs = tempfile::tempdir().expect("tempdir");
    let config = write_config(configs.path(), "config.yaml", &[("key1", KEY1)], true);
    let storage = cluster.storage_url();
    let server = Server::start_with(
        tempfile::tempdir().expect("tempdir"),
        &["--storage", &storage, "--encryption-provider-config", config.to_str().expect("utf8")],
    );
    create_canaries(&server);
    assert_eq!(secret_value(&server), SECRET_CANARY);
    // etcd's WAL is written before it acknowledges, so the files hold both writes now.
    assert_secret_hidden(&raw_bytes(cluster.dir()), "etcd data dir");
}

#[test]
fn a_bad_configuration_stops_the_server_with_the_reason() {
    let configs = tempfile::tempdir().expect("tempdir");
    let path = write_config(configs.path(), "short.yaml", &[("key1", "c2hvcnQ=")], true);
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["server", "--bind", "127.0.0.1:0", "--encryption-provider-config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("run tessera");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("aesgcm: key \"key1\" is 5 bytes; it must be 16, 24, 32 bytes"), "{stderr}");
}

#[test]
fn only_a_cluster_admin_may_start_a_rewrite() {
    let configs = tempfile::tempdir().expect("tempdir");
    let config = write_config(configs.path(), "config.yaml", &[("key1", KEY1)], true);
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--encryption-provider-config", config.to_str().expect("utf8")]);
    // Anonymous: kube-apiserver's 403 for a non-resource path.
    let (code, body) = server.curl("POST", "/tessera/v1/encryption/rewrite", &[]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(support::json(&body)["message"], "forbidden: User \"system:anonymous\" cannot post path \"/tessera/v1/encryption/rewrite\"");
    // A namespace admin's ServiceAccount is not a cluster admin either.
    server.kubectl_ok(&["create", "ns", "team"]);
    server.kubectl_ok(&["create", "sa", "boss", "-n", "team"]);
    server.kubectl_ok(&["create", "rolebinding", "boss", "-n", "team", "--clusterrole=admin", "--serviceaccount=team:boss"]);
    let token = server.kubectl_ok(&["create", "token", "boss", "-n", "team"]);
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = server.curl("POST", "/tessera/v1/encryption/rewrite", &["-H", &auth]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        support::json(&body)["message"],
        "forbidden: User \"system:serviceaccount:team:boss\" cannot post path \"/tessera/v1/encryption/rewrite\""
    );
    // The admin may.
    let (code, body) = server.curl_admin("POST", "/tessera/v1/encryption/rewrite", &[]);
    assert_eq!(code, 200, "{body}");
}
