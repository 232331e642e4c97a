//! Issue 19, finding 1: the data dir holds every Secret (store.db), the CA key,
//! the signing keys and an admin kubeconfig. Written as the attack: another
//! local user tries to read them, and the server is started on a data dir that
//! others can read.

#![cfg(unix)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::Server;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every entry below `dir` (not `dir` itself), sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if std::fs::symlink_metadata(&path).expect("metadata").is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out.sort();
    out
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `cat path` as the unprivileged user `nobody` (65534): the local attacker.
fn cat_as_nobody(path: &Path) -> Output {
    Command::new("cat").arg(path).uid(65534).gid(65534).output().expect("cat as nobody")
}

/// Runs `tessera server` on `dir` expecting it to refuse to start; returns its stderr.
fn server_refuses(dir: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["server", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on {} instead of refusing it", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("server output");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn too_open(data_dir: &Path, path: &Path, mode: u32) -> String {
    format!(
        "error: tessera server (data dir {}): {1} has mode {mode:04o}: the data dir and its store hold every Secret and must not be \
         accessible by group or others (run `chmod -R go= {1}`), or start with --allow-insecure-data-dir\n",
        data_dir.display(),
        path.display()
    )
}

#[test]
fn a_data_dir_the_server_creates_is_private_to_its_user() {
    // The server creates the data dir itself (the usual umask, 022, is in force).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::remove_dir(dir.path()).expect("let the server create it");
    let server = Server::start_in(dir);
    server.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2"]);
    let data = server.dir.path().to_owned();

    assert_eq!(mode(&data), 0o700);
    let entries = walk(&data);
    let names: Vec<String> = entries.iter().map(|p| p.strip_prefix(&data).expect("inside").display().to_string()).collect();
    for expected in ["store.db", "store.db-wal", "store.db-shm", "admin.kubeconfig", "pki/ca.key", "pki/ca.crt", "pki/admin.key", "pki/serving.key", "keys"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    for path in &entries {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(path), want, "{} has mode {:04o}", path.display(), mode(path));
    }

    if !is_root() {
        eprintln!("skipped the read-as-another-user half: it needs root to switch to `nobody`");
        return;
    }
    // Another local user cannot get through the directory…
    let denied = cat_as_nobody(&data.join("store.db-wal"));
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"), "{denied:?}");
    // …nor read the files themselves if the directory is opened for traversal.
    chmod(&data, 0o711);
    for file in ["store.db", "store.db-wal", "store.db-shm", "admin.kubeconfig", "pki/ca.key", "pki/admin.key"] {
        let out = cat_as_nobody(&data.join(file));
        assert!(!out.status.success(), "nobody read {file}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{file}: {out:?}");
    }
    chmod(&data, 0o700);
}

#[test]
fn a_data_dir_others_can_read_is_refused_unless_explicitly_allowed() {
    // A populated data dir, as an older tessera left it: 0755.
    let server = Server::start();
    server.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2"]);
    let dir = server.stop();
    let data = dir.path().to_owned();
    chmod(&data, 0o755);
    let before: Vec<(PathBuf, u32)> = walk(&data).into_iter().map(|p| (p.clone(), mode(&p))).collect();
    assert_eq!(server_refuses(&data), too_open(&data, &data, 0o755));
    // The refused server changed nothing.
    assert_eq!(walk(&data).into_iter().map(|p| (p.clone(), mode(&p))).collect::<Vec<_>>(), before);
    assert_eq!(mode(&data), 0o755);

    // A private dir whose store (or its WAL) others can read is refused too.
    chmod(&data, 0o700);
    for file in ["store.db", "store.db-wal"] {
        let path = data.join(file);
        chmod(&path, 0o644);
        assert_eq!(server_refuses(&data), too_open(&data, &path, 0o644));
        chmod(&path, 0o600);
    }

    // The operator's explicit choice: it starts, on the same data.
    chmod(&data, 0o755);
    let server = Server::start_with(dir, &["--allow-insecure-data-dir"]);
    let password = server.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(password, "aHVudGVyMg==");
    assert_eq!(mode(server.dir.path()), 0o755, "an allowed data dir is left as the operator set it");
}

#[test]
fn an_empty_dir_is_taken_over_like_initdb_does() {
    // `mkdir data` under umask 022 gives 0755; nothing is in it yet, so the
    // server makes it 0700 instead of refusing (PostgreSQL's initdb does the same).
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    let server = Server::start_in(dir);
    assert_eq!(mode(server.dir.path()), 0o700);
    // But an empty dir that others can write into is not: they could add files to it.
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o777);
    assert_eq!(server_refuses(dir.path()), too_open(dir.path(), dir.path(), 0o777));
    assert!(walk(dir.path()).is_empty());
}
