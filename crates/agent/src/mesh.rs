//! `tessera agent run --mesh`: the workload's proxy beside it, as Linkerd's
//! injector puts `linkerd-proxy` beside a container.
//!
//! - **Pod IP.** Every meshed pod gets its own loopback address 127.A.B.C
//!   (Linux routes all of 127/8 to `lo`), so each proxy can listen on its
//!   pod's public port and on the admin port 4191 as in a cluster, without
//!   two pods' ports colliding. The address is a hash of the cluster (its API
//!   server URL), node, namespace and pod name ([`candidate`]): the same pod on
//!   the same node gets the same address after an agent restart, and two
//!   clusters on one host (test servers side by side) do not race for the
//!   same address, so a client holding it, or an
//!   EndpointSlice not yet updated, still reaches it. A candidate is skipped
//!   when a pod of this node already reports it (the node may list only its
//!   own pods) or when binding its ports fails: on one host, a bound address
//!   is the one collision that matters, and the bind test sees every other
//!   node's proxies too. 127.0.x.x is never used: 127.0.0.1 stays the host's.
//! - **Ports.** Inbound listens on `PODIP:PORT` (the pod's `containerPort`,
//!   `--port`), forwards to the app on `127.0.0.1:APP_PORT` (`--app-port`, or
//!   a free port), admin on `PODIP:4191`, outbound (HTTP forward proxy) on
//!   `127.0.0.1:<free port>`.
//! - **The app** learns its port from `PORT` (the convention of Heroku and
//!   Cloud Run) and `TESSERA_APP_ADDR=127.0.0.1:PORT`, and its proxy from
//!   `HTTP_PROXY`/`http_proxy`; `NO_PROXY`/`no_proxy` name the API server's
//!   host, which the app reaches directly.
//! - **The token.** The proxy's `identity.l5d.io` token is projected at
//!   Linkerd's path `/var/run/secrets/tokens/linkerd-identity-token`, 24 h as
//!   Linkerd's injector asks (refreshed at 80 % as every token).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::pod::ProjectedToken;

/// The audience of the proxy's identity token (Linkerd's).
pub const IDENTITY_AUDIENCE: &str = "identity.l5d.io";
/// Its file below the tokens directory (Linkerd's).
pub const IDENTITY_TOKEN_PATH: &str = "linkerd-identity-token";
/// Its lifetime, as Linkerd's injector requests it.
pub const IDENTITY_TOKEN_EXPIRATION: i64 = 86_400;
/// Annotation marking a meshed pod (Linkerd's).
pub const INJECT_ANNOTATION: &str = "linkerd.io/inject";
/// Annotation naming the proxy's admin port (where `edges` and `tap` find it).
pub const ADMIN_PORT_ANNOTATION: &str = "tessera.io/proxy-admin-port";
/// Linkerd's admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 4191;

/// `agent run` flags for a meshed pod.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Run `tessera proxy` beside the command: mutual TLS with the pod's identity for
    /// every connection to and from it (needs --port and --identity-addr).
    #[arg(long)]
    pub mesh: bool,
    /// The pod's public port (its `containerPort`): the proxy listens there on the pod's IP.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// The port the app listens on, on 127.0.0.1 (default: a free port; the app reads `PORT`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,
    /// The proxy's admin port on the pod's IP (/ready, /metrics, /tap).
    #[arg(long, default_value_t = DEFAULT_ADMIN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub proxy_admin_port: u16,
    /// Address of the identity service (`tessera identity`), HOST:PORT.
    #[arg(long, env = "TESSERA_IDENTITY_ADDR")]
    pub identity_addr: Option<String>,
    /// The trust anchors (PEM) the proxy checks peers and the identity service against.
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_ANCHORS", conflicts_with = "identity_trust_anchors_configmap")]
    pub identity_trust_anchors: Option<PathBuf>,
    /// The trust anchors from this ConfigMap instead (NAMESPACE/NAME, e.g.
    /// linkerd/tessera-identity-trust-roots): the proxy watches it with the pod's token.
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_ANCHORS_CONFIGMAP")]
    pub identity_trust_anchors_configmap: Option<String>,
    /// Trust domain of identities (as `tessera identity --trust-domain`).
    #[arg(long, default_value = "cluster.local")]
    pub identity_trust_domain: String,
    /// Namespace of the identity control plane (as `tessera identity`).
    #[arg(long, default_value = "linkerd")]
    pub identity_control_namespace: String,
    /// Whether the proxy enforces the pod's inbound authorization policy
    /// (Server, AuthorizationPolicy, …) watched from the API server (`tessera proxy --policy`).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub proxy_policy: String,
}

impl MeshArgs {
    /// The public port, the identity service and its anchors, or why they are missing.
    pub fn required(&self) -> anyhow::Result<(u16, &str, TrustAnchors)> {
        let port = self.port.context("--mesh needs --port: the pod's public port, where its proxy listens")?;
        let identity = self.identity_addr.as_deref().context("--mesh needs --identity-addr (the identity service, HOST:PORT)")?;
        let anchors = match (&self.identity_trust_anchors_configmap, &self.identity_trust_anchors) {
            (Some(configmap), _) => {
                anyhow::ensure!(
                    configmap.split_once('/').is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/')),
                    "--identity-trust-anchors-configmap must be NAMESPACE/NAME, got {configmap:?}"
                );
                TrustAnchors::ConfigMap(configmap.clone())
            }
            (None, Some(file)) => TrustAnchors::File(file.clone()),
            (None, None) => anyhow::bail!("--mesh needs --identity-trust-anchors (PEM file) or --identity-trust-anchors-configmap (NAMESPACE/NAME)"),
        };
        Ok((port, identity, anchors))
    }

    /// The pod's mesh identity: `SA.NS.serviceaccount.identity.CONTROL_NS.TRUST_DOMAIN`.
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!("{service_account}.{namespace}.serviceaccount.identity.{}.{}", self.identity_control_namespace, self.identity_trust_domain)
    }
}

/// The proxy's identity token, as a projected token of the pod.
pub fn identity_token() -> ProjectedToken {
    ProjectedToken { audience: IDENTITY_AUDIENCE.into(), expiration_seconds: IDENTITY_TOKEN_EXPIRATION, path: IDENTITY_TOKEN_PATH.into() }
}

/// FNV-1a: stable across builds and Rust versions (the address must survive an upgrade too).
fn fnv1a(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The `attempt`-th candidate address of a pod: 127.A.B.C with A in 1..=254
/// (never 127.0.x.x, the host's) and C in 1..=254 (no .0 or .255).
pub fn candidate(cluster: &str, node: &str, namespace: &str, pod: &str, attempt: u32) -> Ipv4Addr {
    let attempt = attempt.to_string();
    let h = fnv1a(&[cluster, node, namespace, pod, &attempt]);
    let [x, y, z, w] = h.to_be_bytes();
    Ipv4Addr::new(127, 1 + (x ^ w) % 254, y, 1 + z % 254)
}

/// Whether every port can be bound on `ip` now (no other process holds it).
fn bindable(ip: Ipv4Addr, ports: &[u16]) -> bool {
    ports.iter().all(|port| std::net::TcpListener::bind(SocketAddr::from((ip, *port))).is_ok())
}

/// The pod's address: the first candidate that no other pod of this node
/// reports (`taken`) and whose `ports` are free on this host.
pub fn allocate_pod_ip(cluster: &str, node: &str, namespace: &str, pod: &str, taken: &[Ipv4Addr], ports: &[u16]) -> anyhow::Result<Ipv4Addr> {
    for attempt in 0..64 {
        let ip = candidate(cluster, node, namespace, pod, attempt);
        if taken.contains(&ip) {
            continue;
        }
        if bindable(ip, ports) {
            return Ok(ip);
        }
        tracing::debug!(%ip, "pod address candidate in use");
    }
    anyhow::bail!("no free loopback address for pod {namespace}/{pod} after 64 candidates")
}

/// A port free on 127.0.0.1 now (the OS picks it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Where the proxy takes its trust anchors from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// A PEM file (`--trust-anchors`).
    File(PathBuf),
    /// The bundle ConfigMap, NAMESPACE/NAME (`--trust-anchors-configmap`).
    ConfigMap(String),
}

/// The executable that runs a meshed pod's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyProgram {
    /// `tessera-proxy`, the sidecar alone: a smaller executable, so a smaller
    /// RSS per proxy (BENCHMARKS.md, issue 15).
    Sidecar(PathBuf),
    /// `tessera proxy`: the same proxy inside the whole binary.
    Subcommand(PathBuf),
}

impl ProxyProgram {
    /// The sidecar's file name, as cargo builds it next to `tessera`.
    pub const SIDECAR: &'static str = "tessera-proxy";

    /// `tessera-proxy` when it is a file beside `exe` (the running
    /// `tessera`), else `exe proxy`. Only that directory is looked in, never
    /// PATH: the proxy holds the pod's identity, so it comes from where the
    /// agent itself came from.
    pub fn beside(exe: &Path) -> Self {
        let name = format!("{}{}", Self::SIDECAR, std::env::consts::EXE_SUFFIX);
        match exe.parent().map(|dir| dir.join(name)) {
            Some(sidecar) if sidecar.is_file() => Self::Sidecar(sidecar),
            _ => Self::Subcommand(exe.to_owned()),
        }
    }

    /// The file to execute.
    pub fn path(&self) -> &Path {
        match self {
            Self::Sidecar(path) | Self::Subcommand(path) => path,
        }
    }

    /// The arguments before the proxy's flags.
    pub fn leading_args(&self) -> &'static [&'static str] {
        match self {
            Self::Sidecar(_) => &[],
            Self::Subcommand(_) => &["proxy"],
        }
    }
}

/// Everything the proxy is started with.
#[derive(Debug, Clone)]
pub struct ProxyLaunch {
    /// The pod.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's mesh identity.
    pub identity: String,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// Public port on the pod's address.
    pub port: u16,
    /// The app's port on 127.0.0.1.
    pub app_port: u16,
    /// Admin port on the pod's address.
    pub admin_port: u16,
    /// Outbound forward-proxy port on 127.0.0.1.
    pub outbound_port: u16,
    /// Identity service.
    pub identity_addr: String,
    /// Trust anchors: a file or the bundle ConfigMap.
    pub trust_anchors: TrustAnchors,
    /// The `identity.l5d.io` token file.
    pub token_file: PathBuf,
    /// The pod's ServiceAccount directory (token, ca.crt) for the API.
    pub service_account_dir: PathBuf,
    /// The API server URL.
    pub api_server: String,
    /// Enforce inbound authorization policy (`--policy on`).
    pub policy: bool,
}

impl ProxyLaunch {
    /// A launch of pod `api/api-0` at 127.9.8.7:8080 (app on 18080, admin
    /// 4191, outbound 40001), for tests here and of the proxy's flag parser.
    #[cfg(any(test, feature = "test-support"))]
    pub fn sample() -> Self {
        Self {
            namespace: "api".into(),
            pod: "api-0".into(),
            identity: "api.api.serviceaccount.identity.linkerd.cluster.local".into(),
            pod_ip: Ipv4Addr::new(127, 9, 8, 7),
            port: 8080,
            app_port: 18080,
            admin_port: 4191,
            outbound_port: 40001,
            identity_addr: "127.0.0.1:8443".into(),
            trust_anchors: TrustAnchors::File("/a/ca.crt".into()),
            token_file: "/r/var/run/secrets/tokens/linkerd-identity-token".into(),
            service_account_dir: "/r/var/run/secrets/kubernetes.io/serviceaccount".into(),
            api_server: "https://127.0.0.1:6443".into(),
            policy: true,
        }
    }

    /// The proxy's flags (after `tessera proxy`, or `tessera-proxy` alone).
    pub fn args(&self) -> Vec<String> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()).display().to_string();
        let trust = match &self.trust_anchors {
            TrustAnchors::File(path) => ("--trust-anchors", abs(path)),
            TrustAnchors::ConfigMap(configmap) => ("--trust-anchors-configmap", configmap.clone()),
        };
        let inbound = format!("{}={}", SocketAddr::from((self.pod_ip, self.port)), SocketAddr::from((Ipv4Addr::LOCALHOST, self.app_port)));
        [
            ("--identity-addr", self.identity_addr.clone()),
            ("--identity", self.identity.clone()),
            ("--token-file", abs(&self.token_file)),
            trust,
            ("--inbound", inbound),
            ("--admin-addr", SocketAddr::from((self.pod_ip, self.admin_port)).to_string()),
            ("--outbound-addr", SocketAddr::from((Ipv4Addr::LOCALHOST, self.outbound_port)).to_string()),
            // Connections to other pods come from this pod's IP, as in Kubernetes.
            ("--source-ip", self.pod_ip.to_string()),
            ("--api-server", self.api_server.clone()),
            ("--api-token-file", abs(&self.service_account_dir.join("token"))),
            ("--api-ca", abs(&self.service_account_dir.join("ca.crt"))),
            ("--namespace", self.namespace.clone()),
            ("--pod", self.pod.clone()),
            ("--policy", if self.policy { "on" } else { "off" }.to_owned()),
        ]
        .into_iter()
        .fold(Vec::new(), |mut args, (flag, value)| {
            args.push(flag.to_owned());
            args.push(value);
            args
        })
    }

    /// The variables the app gets: its port, its proxy, and the API server's host kept direct.
    pub fn app_env(&self) -> Vec<crate::environment::EnvVar> {
        let proxy = format!("http://127.0.0.1:{}", self.outbound_port);
        let api_host = self
            .api_server
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()))
            .unwrap_or_default();
        [
            ("PORT", self.app_port.to_string()),
            ("TESSERA_APP_ADDR", format!("127.0.0.1:{}", self.app_port)),
            ("TESSERA_POD_IP", self.pod_ip.to_string()),
            ("HTTP_PROXY", proxy.clone()),
            ("http_proxy", proxy),
            ("NO_PROXY", api_host.clone()),
            ("no_proxy", api_host),
        ]
        .into_iter()
        .map(|(name, value)| crate::environment::EnvVar { name: name.into(), value })
        .collect()
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.pod_ip, self.admin_port))
    }
}

/// `GET /ready` on the proxy's admin port: whether it answered 200.
pub async fn is_ready(admin: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let request = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head[..] == b"HTTP/1.1 200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_and_never_the_hosts() {
        let a = candidate("https://c:6443", "node-api", "api", "api-0", 0);
        assert_eq!(a, candidate("https://c:6443", "node-api", "api", "api-0", 0), "deterministic");
        assert_ne!(a, candidate("https://c:6443", "node-api", "api", "api-1", 0));
        assert_ne!(a, candidate("https://c:6443", "node-api", "api", "api-0", 1));
        // Another cluster on the same host: the same names start elsewhere.
        assert_ne!(a, candidate("https://c:7443", "node-api", "api", "api-0", 0));
        // Parts are separated: ("ab","c") and ("a","bc") differ.
        assert_ne!(candidate("https://c:6443", "ab", "c", "p", 0), candidate("https://c:6443", "a", "bc", "p", 0));
        for i in 0..2000 {
            let ip = candidate("https://c:6443", "n", "ns", &format!("p{i}"), 0).octets();
            assert_eq!(ip[0], 127);
            assert!(ip[1] >= 1 && ip[1] <= 254 && ip[3] >= 1 && ip[3] <= 254, "{ip:?}");
        }
    }

    #[test]
    fn a_taken_or_bound_address_is_skipped() {
        let first = candidate("https://c:6443", "n", "ns", "p", 0);
        assert_eq!(allocate_pod_ip("https://c:6443", "n", "ns", "p", &[], &[]).unwrap(), first);
        assert_eq!(allocate_pod_ip("https://c:6443", "n", "ns", "p", &[first], &[]).unwrap(), candidate("https://c:6443", "n", "ns", "p", 1));
        let held = std::net::TcpListener::bind((first, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        assert_eq!(allocate_pod_ip("https://c:6443", "n", "ns", "p", &[], &[port]).unwrap(), candidate("https://c:6443", "n", "ns", "p", 1));
    }

    #[test]
    fn the_sidecar_beside_the_binary_runs_the_proxy_and_the_binary_itself_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tessera");
        std::fs::write(&exe, b"").unwrap();
        let alone = ProxyProgram::beside(&exe);
        assert_eq!(alone, ProxyProgram::Subcommand(exe.clone()));
        assert_eq!((alone.path(), alone.leading_args()), (exe.as_path(), &["proxy"][..]));
        // A directory of that name is not a program.
        std::fs::create_dir(dir.path().join("tessera-proxy")).unwrap();
        assert_eq!(ProxyProgram::beside(&exe), ProxyProgram::Subcommand(exe.clone()));
        std::fs::remove_dir(dir.path().join("tessera-proxy")).unwrap();
        let sidecar = dir.path().join("tessera-proxy");
        std::fs::write(&sidecar, b"").unwrap();
        let beside = ProxyProgram::beside(&exe);
        assert_eq!(beside, ProxyProgram::Sidecar(sidecar.clone()));
        assert_eq!((beside.path(), beside.leading_args()), (sidecar.as_path(), &[][..]));
    }

    #[test]
    fn the_app_is_told_its_port_and_its_proxy() {
        let launch = ProxyLaunch::sample();
        let env: Vec<(String, String)> = launch.app_env().into_iter().map(|v| (v.name, v.value)).collect();
        assert!(env.contains(&("PORT".into(), "18080".into())));
        assert!(env.contains(&("HTTP_PROXY".into(), "http://127.0.0.1:40001".into())));
        assert!(env.contains(&("no_proxy".into(), "127.0.0.1".into())));
        let args = launch.args();
        // Flags only: the program decides whether `proxy` goes first.
        assert_eq!(args.first().map(String::as_str), Some("--identity-addr"));
        let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(after("--inbound").as_deref(), Some("127.9.8.7:8080=127.0.0.1:18080"));
        assert_eq!(after("--admin-addr").as_deref(), Some("127.9.8.7:4191"));
        assert_eq!(after("--source-ip").as_deref(), Some("127.9.8.7"));
        assert_eq!(after("--api-ca").as_deref(), Some("/r/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"));
        assert_eq!(after("--pod").as_deref(), Some("api-0"));
        assert_eq!(after("--policy").as_deref(), Some("on"));
        assert_eq!(after("--trust-anchors").as_deref(), Some("/a/ca.crt"));
        let launch = ProxyLaunch { trust_anchors: TrustAnchors::ConfigMap("linkerd/tessera-identity-trust-roots".into()), ..launch };
        let args = launch.args();
        let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(after("--trust-anchors-configmap").as_deref(), Some("linkerd/tessera-identity-trust-roots"));
        assert!(!args.iter().any(|a| a == "--trust-anchors"));
    }
}
