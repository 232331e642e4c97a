//! End-to-end test support: runs the real `tessera` binary on a temporary data
//! dir and drives it with the real `kubectl` (and curl for raw HTTP).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub mod browser;
pub mod mesh;
pub mod policy;

/// A running `tessera server`, killed on drop.
pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
}

fn require(tool: &str) {
    let ok = Command::new(tool).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "`{tool}` is required by the end-to-end tests (the README's test command installs it)");
}

impl Server {
    /// Starts a server on a free port and waits until it prints its kubeconfig.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    /// Starts a server on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts a server with extra `tessera server` flags.
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        require("kubectl");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["server", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut kubeconfig) = (None, None);
        // The server prints these lines only after it is ready to serve.
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("tessera server listening on ") {
                url = Some(rest.to_owned());
            }
            if let Some(rest) = line.strip_prefix("kubeconfig: ") {
                kubeconfig = Some(PathBuf::from(rest));
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, dir, kubeconfig: kubeconfig.expect("server printed its kubeconfig"), url: url.expect("server printed its URL") }
    }

    /// Runs kubectl against the server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl")
    }

    /// Writes a kubeconfig that authenticates with `token` (no client certificate).
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        use base64::Engine as _;
        let ca = std::fs::read(self.ca_file()).expect("ca");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\nusers:\n- name: u\n  user:\n    token: {}\n",
            self.url,
            base64::engine::general_purpose::STANDARD.encode(ca),
            token.trim()
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Runs kubectl with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).output().expect("run kubectl")
    }

    /// Runs kubectl with stdin.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// A one-hour token of ServiceAccount `namespace/sa` (`kubectl create token`).
    pub fn token(&self, namespace: &str, sa: &str) -> String {
        self.kubectl_ok(&["create", "token", sa, "-n", namespace, "--duration", "1h"]).trim().to_owned()
    }

    /// Runs kubectl and returns stdout, failing the test on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The cluster CA file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("pki").join("ca.crt")
    }

    /// Admin client cert and key files.
    pub fn admin_cert(&self) -> (PathBuf, PathBuf) {
        let pki = self.dir.path().join("pki");
        (pki.join("admin.crt"), pki.join("admin.key"))
    }

    /// curl with the cluster CA; extra args decide credentials. Returns (status, body).
    pub fn curl(&self, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(self.ca_file())
            .args(extra)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// curl as admin.
    pub fn curl_admin(&self, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let (cert, key) = self.admin_cert();
        let mut args = vec!["--cert".to_owned(), cert.display().to_string(), "--key".to_owned(), key.display().to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(method, path, &args)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server and gives back its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Runs `tessera` (another subcommand) on this server's data dir.
    pub fn tessera(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .expect("run tessera")
    }

    /// Polls `check` until it returns Some, for at most `seconds` (a failure guard:
    /// used only where the server applies a change asynchronously by design).
    pub fn eventually<T>(&self, seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Path in the data dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses JSON output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether a path exists (for tidy asserts).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
