//! The agent's node identity: a client certificate for `system:node:NAME`
//! (group `system:nodes`) signed by the cluster CA, kept in a directory only
//! the agent's user can enter.
//!
//! - `tessera agent join` generates an ECDSA P-256 key, sends a CSR for
//!   `CN=system:node:NAME, O=system:nodes` to the server's
//!   `/tessera/v1/nodes/client-certificate` with a short-lived bootstrap
//!   token (`kubectl create token node-bootstrapper -n kube-system`), and
//!   writes `node.key`, `node.crt`, `ca.crt` and `node.kubeconfig` (all 0600)
//!   into the credentials directory (0700). The token is used once and kept nowhere.
//! - The running agent renews its certificate with the certificate itself at
//!   70–80 % of its lifetime, and swaps the new one in without a restart.
//! - One agent runs per node: the directory holds a lock while it runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::files::{FilesError, OutputRoot};

/// The user-name prefix and group of nodes.
const NODE_USER_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
/// The server's node certificate endpoint.
const CLIENT_CERTIFICATE_PATH: &str = "/tessera/v1/nodes/client-certificate";

/// Why the node identity could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The credentials directory is unsafe or unusable.
    #[error("{}: {why}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another agent holds the directory's lock.
    #[error("{}: another tessera agent runs as this node (it holds {})", dir.display(), dir.join(LOCK_FILE).display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory was refused (a link, another user's, writable by
    /// others), or a file in it could not be written.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No node credentials yet.
    #[error("{} holds no node credentials: run `tessera agent join` first", dir.display())]
    NotJoined {
        /// The directory.
        dir: PathBuf,
    },
    /// The credential does not authenticate as a node.
    #[error("the agent runs as a node, but its credential authenticates as {user:?} (groups {groups:?}): run `tessera agent join`")]
    NotANode {
        /// The user it authenticates as.
        user: String,
        /// Its groups.
        groups: Vec<String>,
    },
    /// The node name is not a DNS subdomain.
    #[error("invalid node name {0:?}: lower-case letters, digits, '-' and '.', starting and ending alphanumeric, at most 253 characters")]
    InvalidName(String),
    /// The kubeconfig or client could not be built.
    #[error("client configuration: {0}")]
    Config(String),
    /// A key or CSR could not be generated.
    #[error("generating a key or CSR: {0}")]
    Crypto(#[from] rcgen::Error),
    /// The server refused or failed the certificate request.
    #[error("requesting a node client certificate: {0}")]
    Request(#[source] kube::Error),
    /// The server's answer held no usable certificate.
    #[error("the server's answer holds no certificate")]
    NoCertificate,
}

const LOCK_FILE: &str = "agent.lock";
const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const CA_FILE: &str = "ca.crt";
const KUBECONFIG_FILE: &str = "node.kubeconfig";

/// Checks a node name as kube does (a DNS subdomain).
pub fn validate_node_name(name: &str) -> Result<(), NodeError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(NodeError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// The host's name, lower-cased, as the default node name.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?.trim().to_ascii_lowercase();
    validate_node_name(&name).ok().map(|()| name)
}

/// The credentials directory, locked for this process.
#[derive(Debug)]
pub struct NodeCredentials {
    root: OutputRoot,
    dir: PathBuf,
    _lock: File,
}

impl NodeCredentials {
    /// Opens (creating it 0700 if missing) and locks the directory. Refuses
    /// what the agent's output root refuses (a symbolic link, another user's
    /// directory, one others can write into) and, since it holds the node's
    /// private key, one that group or others may enter at all.
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let root = OutputRoot::open(dir)?;
        let meta = std::fs::symlink_metadata(dir).map_err(|source| NodeError::Io { path: dir.to_owned(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(NodeError::Directory {
                dir: dir.to_owned(),
                why: format!("group or others may access it (mode {mode:04o}); it holds the node's key: chmod 700 it"),
            });
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(|source| NodeError::Io { path: lock_path.clone(), source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(NodeError::Locked { dir: dir.to_owned() }),
            Err(std::fs::TryLockError::Error(source)) => return Err(NodeError::Io { path: lock_path, source }),
        }
        Ok(Self { root, dir: dir.to_owned(), _lock: lock })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's kubeconfig.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join(KUBECONFIG_FILE)
    }

    fn read(&self, file: &str) -> Result<String, NodeError> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => NodeError::NotJoined { dir: self.dir.clone() },
            _ => NodeError::Io { path, source },
        })
    }

    /// The API server URL and the cluster CA the node was joined with.
    fn cluster(&self) -> Result<(String, String), NodeError> {
        let config: Value = serde_json::from_str(&self.read(KUBECONFIG_FILE)?).map_err(|e| NodeError::Config(e.to_string()))?;
        let server = config.pointer("/clusters/0/cluster/server").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok((server, self.read(CA_FILE)?))
    }

    /// Writes a new key and certificate and the kubeconfig that uses them.
    fn store(&self, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), NodeError> {
        let kubeconfig = kubeconfig(server, ca_pem, Credential::Certificate { cert_pem, key_pem })?;
        for (file, contents) in [(KEY_FILE, key_pem), (CERT_FILE, cert_pem), (CA_FILE, ca_pem), (KUBECONFIG_FILE, kubeconfig.as_str())] {
            self.root.write_atomically(Path::new(file), contents.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// A client with the node's certificate.
    pub async fn client(&self) -> Result<(kube::Client, String), NodeError> {
        client_from(&self.read(KUBECONFIG_FILE)?).await
    }

    /// When the current certificate's lifetime starts and ends (Unix seconds).
    pub fn certificate_validity(&self) -> Result<(i64, i64), NodeError> {
        let pem = self.read(CERT_FILE)?;
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| NodeError::Config(format!("{CERT_FILE}: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).map_err(|e| NodeError::Config(format!("{CERT_FILE}: {e}")))?;
        Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
    }

    /// Renews the certificate with the current one; returns a client with the new one.
    pub async fn renew(&self, client: &kube::Client, node: &str) -> Result<kube::Client, NodeError> {
        let (server, ca_pem) = self.cluster()?;
        let (cert_pem, key_pem) = request_certificate(client, node).await?;
        self.store(&server, &ca_pem, &cert_pem, &key_pem)?;
        Ok(self.client().await?.0)
    }
}

/// What a kubeconfig authenticates with.
enum Credential<'a> {
    Token(&'a str),
    Certificate { cert_pem: &'a str, key_pem: &'a str },
}

/// A kubeconfig (as JSON, which is YAML) for `server` trusting `ca_pem`.
fn kubeconfig(server: &str, ca_pem: &str, credential: Credential<'_>) -> Result<String, NodeError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match credential {
        Credential::Token(token) => json!({"token": token}),
        Credential::Certificate { cert_pem, key_pem } => json!({"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tessera", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "node@tessera", "context": {"cluster": "tessera", "user": "node"}}],
        "current-context": "node@tessera",
    });
    serde_json::to_string_pretty(&config).map_err(|e| NodeError::Config(e.to_string()))
}

/// A client for a kubeconfig text, and its server URL.
async fn client_from(kubeconfig: &str) -> Result<(kube::Client, String), NodeError> {
    let file = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| NodeError::Config(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    let client = kube::Client::try_from(config).map_err(|e| NodeError::Config(e.to_string()))?;
    Ok((client, server))
}

/// Generates a key and asks the server to certify it as node `node`;
/// returns (certificate PEM, key PEM).
async fn request_certificate(client: &kube::Client, node: &str) -> Result<(String, String), NodeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("{NODE_USER_PREFIX}{node}"));
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::to_vec(&json!({"csr": csr})).map_err(|e| NodeError::Config(e.to_string()))?;
    let request = http::Request::post(CLIENT_CERTIFICATE_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let answer: Value = client.request(request).await.map_err(NodeError::Request)?;
    let certificate = answer.get("certificate").and_then(Value::as_str).filter(|c| c.contains("BEGIN CERTIFICATE")).ok_or(NodeError::NoCertificate)?;
    Ok((certificate.to_owned(), key.serialize_pem()))
}

/// `tessera agent join`: obtains the node's first certificate with a
/// bootstrap token and stores it in `credentials`.
pub async fn join(credentials: &NodeCredentials, node: &str, server: &str, ca_pem: &str, token: &str) -> Result<(), NodeError> {
    validate_node_name(node)?;
    let bootstrap = kubeconfig(server, ca_pem, Credential::Token(token.trim()))?;
    let (client, _) = client_from(&bootstrap).await?;
    let (cert_pem, key_pem) = request_certificate(&client, node).await?;
    credentials.store(server, ca_pem, &cert_pem, &key_pem)
}

/// Asks the server who the client is; returns the node name, or refuses a
/// credential that is not a node's (an admin kubeconfig, a token).
pub async fn whoami(client: &kube::Client) -> Result<String, NodeError> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = reviews.create(&kube::api::PostParams::default(), &SelfSubjectReview::default()).await.map_err(NodeError::Request)?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let user = info.username.unwrap_or_default();
    let groups = info.groups.unwrap_or_default();
    match user.strip_prefix(NODE_USER_PREFIX) {
        Some(node) if !node.is_empty() && groups.iter().any(|g| g == NODES_GROUP) => Ok(node.to_owned()),
        _ => Err(NodeError::NotANode { user, groups }),
    }
}

/// When to renew a certificate valid from `not_before` to `not_after` (Unix
/// seconds): at 70 % of its lifetime plus up to 10 % jitter, as kubelet does.
pub fn renewal_delay(not_before: i64, not_after: i64, now: i64) -> Duration {
    let lifetime = (not_after - not_before).max(0);
    let jitter = rand::random::<f64>() * 0.1;
    let at = not_before + (lifetime as f64 * (0.7 + jitter)) as i64;
    Duration::from_secs(u64::try_from(at - now).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["n1", "node-a", "worker.example.com"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "N1", "-a", "a-", "a_b", "a..b", "a/b", &"x".repeat(254)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_credentials_directory_is_private_and_locked() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("node");
        let creds = NodeCredentials::open(&dir).expect("created");
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(matches!(NodeCredentials::open(&dir), Err(NodeError::Locked { .. })), "one agent per node");
        assert!(matches!(creds.cluster(), Err(NodeError::NotJoined { .. })));
        drop(creds);
        assert!(NodeCredentials::open(&dir).is_ok(), "the lock goes with the agent");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = NodeCredentials::open(&dir).unwrap_err().to_string();
        assert!(err.ends_with("group or others may access it (mode 0755); it holds the node's key: chmod 700 it"), "{err}");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(NodeCredentials::open(&link), Err(NodeError::Files(FilesError::RootSymlink { .. }))));
    }

    #[test]
    fn stored_credentials_are_private_and_make_a_kubeconfig() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let creds = NodeCredentials::open(&base.path().join("node")).unwrap();
        creds.store("https://127.0.0.1:6443", "CA", "CERT", "KEY").unwrap();
        for file in [KEY_FILE, CERT_FILE, CA_FILE, KUBECONFIG_FILE] {
            let mode = std::fs::metadata(creds.dir().join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let (server, ca) = creds.cluster().unwrap();
        assert_eq!((server.as_str(), ca.as_str()), ("https://127.0.0.1:6443", "CA"));
        let config: Value = serde_json::from_str(&creds.read(KUBECONFIG_FILE).unwrap()).unwrap();
        assert_eq!(config["users"][0]["user"]["client-key-data"], base64::engine::general_purpose::STANDARD.encode("KEY"));
    }

    #[test]
    fn renewal_at_seventy_to_eighty_percent() {
        for _ in 0..100 {
            let delay = renewal_delay(1000, 2000, 1000).as_secs();
            assert!((700..=800).contains(&delay), "{delay}");
        }
        assert_eq!(renewal_delay(1000, 2000, 5000), Duration::ZERO, "overdue: now");
    }
}
