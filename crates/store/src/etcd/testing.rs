//! Real etcd processes for tests (feature `test-util`): a single member or a
//! cluster of several, on free loopback ports, with data in a temporary
//! directory.
//!
//! The etcd binary comes from `TESSERA_ETCD_BIN` or `PATH`; when it is missing,
//! [`EtcdCluster::start`] fails with a message saying that the README's test
//! command (`./scripts/test.sh`) installs it. Tests never skip silently.
//!
//! Each member runs under a small `sh` supervisor that reads its standard
//! input: when the test process ends (even by a panic or abort) the pipe
//! closes, and the supervisor stops etcd and removes its data directory. So a
//! cluster kept in a `static` (shared by every test of a binary) is cleaned up
//! too, though statics are never dropped.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable naming the etcd binary to use.
pub const ETCD_BIN_ENV: &str = "TESSERA_ETCD_BIN";

/// How long a cluster may take to elect a leader and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a test etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestEtcdError {
    /// No etcd binary was found.
    #[error(
        "etcd is required by this test but was not found: set {ETCD_BIN_ENV} to an etcd 3.5 binary or put `etcd` on PATH (the README's test command, ./scripts/test.sh, installs it)"
    )]
    Missing,
    /// Starting a process or preparing its directory failed.
    #[error("starting etcd: {0}")]
    Io(#[from] std::io::Error),
    /// The members did not become healthy in time.
    #[error("etcd did not become ready within {timeout:?}; log of {member}:\n{log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The member that was not ready.
        member: String,
        /// The end of its log.
        log: String,
    },
}

/// Finds the etcd binary: `TESSERA_ETCD_BIN`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Result<PathBuf, TestEtcdError> {
    if let Some(path) = std::env::var_os(ETCD_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(TestEtcdError::Missing)
        };
    }
    let path = std::env::var_os("PATH").ok_or(TestEtcdError::Missing)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or(TestEtcdError::Missing)
}

/// One etcd member.
#[derive(Debug)]
pub struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    process: Option<Supervised>,
}

/// A member's supervisor process: closing its stdin stops etcd.
#[derive(Debug)]
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    etcd_pid: u32,
}

/// TLS files for etcd's client port (PEM): clients must then use `https://`
/// and present a certificate signed by `ca_file`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// CA that signs client certificates (and, in tests, the server's).
    pub ca_file: PathBuf,
    /// etcd's serving certificate (for 127.0.0.1).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
}

/// An etcd cluster of one or more members on loopback; stopped and removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    tls: Option<ServerTls>,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members on free loopback ports and waits until the
    /// cluster has a leader and every member answers.
    pub fn start(size: usize) -> Result<Self, TestEtcdError> {
        Self::start_with(size, None)
    }

    /// [`start`](Self::start) with TLS and client-certificate authentication
    /// on the client port (the peers talk plain HTTP on loopback).
    pub fn start_tls(size: usize, tls: ServerTls) -> Result<Self, TestEtcdError> {
        Self::start_with(size, Some(tls))
    }

    fn start_with(size: usize, tls: Option<ServerTls>) -> Result<Self, TestEtcdError> {
        // Ports are picked free and released before etcd binds them; a
        // parallel test can take one in between. A cluster that does not come
        // up is torn down and started again on fresh ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(size, tls.clone()) {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < 3 => tracing::warn!(attempt, error = %e, "test etcd did not start; retrying on fresh ports"),
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(size: usize, tls: Option<ServerTls>) -> Result<Self, TestEtcdError> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("tessera-etcd-")
            .tempdir()?
            .keep();
        let mut members = Vec::new();
        for i in 0..size.max(1) {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                data_dir: dir.join(format!("m{i}")),
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tessera-test".to_owned());
        let mut cluster = EtcdCluster {
            binary,
            tls,
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client endpoints (`127.0.0.1:port`) of every member, started or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// `etcd://…` URL of every member (the `--storage` flag's form).
    pub fn storage_url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Kills member `i` with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill(&mut self, i: usize) -> Result<(), TestEtcdError> {
        let Some(member) = self.members.get_mut(i) else {
            return Ok(());
        };
        if let Some(mut process) = member.process.take() {
            Command::new("kill")
                .args(["-KILL", &process.etcd_pid.to_string()])
                .status()?;
            // Kill the supervisor too, so it keeps the data for a restart.
            process.child.kill()?;
            process.child.wait()?;
        }
        Ok(())
    }

    /// Restarts member `i` on its data dir (after [`kill`](Self::kill)) and
    /// waits until it answers.
    pub fn restart(&mut self, i: usize) -> Result<(), TestEtcdError> {
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// The index of the member that is the raft leader now, if a running
    /// member knows one (asked through etcd's JSON gateway).
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<Option<(String, String)>> = self
            .members
            .iter()
            .map(|m| m.process.as_ref().and_then(|_| status(m.client)))
            .collect();
        let leader = statuses
            .iter()
            .flatten()
            .map(|(_, leader)| leader.clone())
            .next()?;
        statuses
            .iter()
            .position(|s| s.as_ref().is_some_and(|(id, _)| *id == leader))
    }

    /// The directory holding every member's data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&mut self, i: usize) -> Result<(), TestEtcdError> {
        let binary = self.binary.clone();
        let (initial_cluster, token) = (self.initial_cluster.clone(), self.token.clone());
        let single = self.members.len() == 1;
        let tls = self.tls.clone();
        let Some(member) = self.members.get_mut(i) else {
            return Ok(());
        };
        let state = if member.data_dir.exists() {
            "existing"
        } else {
            "new"
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}", member.client);
        let peer_url = format!("http://{}", member.peer);
        let log = member.data_dir.with_extension("log");
        // Fast elections on loopback: a lone member elects itself at once; a
        // cluster keeps the election timeout ten heartbeats long, so a busy
        // machine does not cause spurious elections.
        let (heartbeat, election) = if single { ("10", "100") } else { ("50", "500") };
        let mut args: Vec<String> = [
            "--name",
            &member.name,
            "--data-dir",
            &member.data_dir.to_string_lossy(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            &token,
            "--heartbeat-interval",
            heartbeat,
            "--election-timeout",
            election,
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if supports_unsafe_no_fsync(&binary) {
            args.push("--unsafe-no-fsync".to_owned());
        }
        if let Some(tls) = &tls {
            for (flag, path) in [
                ("--cert-file", &tls.cert_file),
                ("--key-file", &tls.key_file),
                ("--trusted-ca-file", &tls.ca_file),
            ] {
                args.push(flag.to_owned());
                args.push(path.to_string_lossy().into_owned());
            }
            args.push("--client-cert-auth".to_owned());
        }
        // The supervisor: start etcd, report its pid, wait for stdin to close
        // (the test process ended or dropped us), then stop etcd and remove
        // its data, log and (when it is the last) the cluster directory.
        let script = r#"log="$1"; shift; data="$1"; shift; bin="$1"; shift
"$bin" "$@" >>"$log" 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$data" "$log"
rmdir "$(dirname "$data")" 2>/dev/null
exit 0"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("etcd-supervisor")
            .arg(&log)
            .arg(&member.data_dir)
            .arg(&binary)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut pid = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
                pid.push(char::from(byte[0]));
            }
        }
        let etcd_pid = pid.trim().parse().map_err(|_| {
            std::io::Error::other(format!("etcd supervisor printed no pid (got {pid:?})"))
        })?;
        let stdin = child.stdin.take();
        member.process = Some(Supervised {
            child,
            stdin,
            etcd_pid,
        });
        Ok(())
    }

    /// Waits until member `i` reports itself healthy (it has a leader); with
    /// TLS, until it accepts connections (clients retry until it answers).
    fn wait_healthy(&self, i: usize) -> Result<(), TestEtcdError> {
        let Some(member) = self.members.get(i) else {
            return Ok(());
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            let ready = match self.tls {
                Some(_) => {
                    TcpStream::connect_timeout(&member.client, Duration::from_secs(1)).is_ok()
                }
                None => healthy(member.client),
            };
            if ready {
                return Ok(());
            }
            // A member that lost its port to another process never comes up: say so at once.
            let lost_port = self.members.iter().any(|m| {
                std::fs::read_to_string(m.data_dir.with_extension("log")).is_ok_and(|log| log.contains("address already in use"))
            });
            if lost_port {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log =
            std::fs::read_to_string(member.data_dir.with_extension("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        Err(TestEtcdError::NotReady {
            timeout: READY_TIMEOUT,
            member: member.name.clone(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                // Closing stdin makes the supervisor stop etcd and exit.
                process.stdin.take();
                let _ = process.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether etcd's `/health` endpoint answers `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.starts_with("HTTP/1.1 200") && response.contains(r#""health":"true""#))
    };
    attempt().unwrap_or(false)
}

/// `(member id, leader id)` from `/v3/maintenance/status`.
fn status(addr: SocketAddr) -> Option<(String, String)> {
    let attempt = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "POST /v3/maintenance/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    };
    let response = attempt().ok()?;
    // The gateway renders uint64s as JSON strings: "member_id":"123", "leader":"123".
    let field = |name: &str| -> Option<String> {
        let start = response.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let len = response.get(start..)?.find('"')?;
        response.get(start..start + len).map(str::to_owned)
    };
    Some((field("member_id")?, field("leader")?))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Whether this etcd knows `--unsafe-no-fsync` (3.5 does; older ones may not).
fn supports_unsafe_no_fsync(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout).contains("unsafe-no-fsync")
                || String::from_utf8_lossy(&out.stderr).contains("unsafe-no-fsync")
        })
        .unwrap_or(false)
}
