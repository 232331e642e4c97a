//! The proxy's configuration, and (feature `clap`) the `tessera proxy`
//! arguments that build it. Every flag has a `TESSERA_PROXY_*` variable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// One inbound port: the public address and the app's private address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundSpec {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the app listens (loopback).
    pub app: SocketAddr,
}

impl FromStr for InboundSpec {
    type Err = String;

    /// `LISTEN=APP`: two `ip:port` addresses; APP may be a bare port (on 127.0.0.1).
    fn from_str(value: &str) -> Result<Self, String> {
        let (listen, app) =
            value.split_once('=').ok_or_else(|| format!("{value:?} is not LISTEN=APP (e.g. 127.1.0.2:8080=127.0.0.1:18080)"))?;
        let listen = listen.parse().map_err(|_| format!("{listen:?} is not an ip:port address"))?;
        let app = match app.parse::<u16>() {
            Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Err(_) => app.parse().map_err(|_| format!("{app:?} is not an ip:port address or a port"))?,
        };
        Ok(Self { listen, app })
    }
}

/// How the destination client (outbound) reaches the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// The API server's URL.
    pub server: Option<String>,
    /// The pod's projected ServiceAccount token (re-read: it rotates).
    pub token_file: Option<PathBuf>,
    /// CA bundle of the API server's certificate.
    pub ca: Option<PathBuf>,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The identity service's Certify address (`host:port` or `http://host:port`).
    pub identity_addr: String,
    /// The local identity (`SA.NS.serviceaccount.identity.<control-ns>.<trust-domain>`).
    pub identity: String,
    /// The token for audience `identity.l5d.io` (re-read on every Certify).
    pub token_file: PathBuf,
    /// The trust anchors: a PEM file (re-read every second) or the bundle ConfigMap (watched).
    pub trust_anchors: crate::trust::TrustSource,
    /// Inbound ports.
    pub inbound: Vec<InboundSpec>,
    /// Outbound listener (HTTP forward proxy / TCP forward), served by the outbound module.
    pub outbound_addr: Option<SocketAddr>,
    /// TCP forward ports (proxy-out): every connection to LISTEN goes to AUTHORITY.
    pub outbound_tcp: Vec<(SocketAddr, String)>,
    /// Admin listener (`/ready`, `/live`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The API server, for the destination client.
    pub api: ApiConfig,
    /// Protocol detection timeout.
    pub detect_timeout: Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Connect timeout to apps and peers.
    pub connect_timeout: Duration,
    /// Timeout of one Certify call.
    pub certify_timeout: Duration,
    /// The pod's namespace (tap checks callers against it).
    pub namespace: Option<String>,
    /// The pod's name (tap checks callers against it).
    pub pod: Option<String>,
    /// Enforce the pod's inbound authorization policy, watched from the API
    /// server for `namespace`/`pod` (deny inbound until it arrives).
    pub policy: bool,
    /// Client connections served at once, over every listener; more wait
    /// in the listen backlog.
    pub max_connections: usize,
    /// `/tap` streams open at once; more get 429.
    pub max_tap_streams: usize,
    /// A pooled HTTP/2 connection to another proxy unused this long is closed.
    pub h2_idle_timeout: Duration,
    /// Exit when the process that started the proxy dies (`--parent-pid`).
    pub parent_pid: Option<u32>,
    /// The pod's IP: outbound connections to endpoints come from it
    /// (`--source-ip`; default: the kernel's choice).
    pub source_ip: Option<std::net::IpAddr>,
    /// Runtimes serving the proxied listeners (`--runtime per-thread`): 1 =
    /// the caller's runtime alone (whatever its scheduler); N > 1 = the
    /// caller's plus N − 1 threads with a current-thread runtime each, every
    /// one with its own `SO_REUSEPORT` socket on each inbound and outbound
    /// port (see [`crate::runtimes`]).
    pub runtimes: usize,
}

#[cfg(feature = "clap")]
pub use self::args::{OnOff, ProxyArgs, RuntimeKind};

#[cfg(feature = "clap")]
mod args {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::{ApiConfig, InboundSpec, ProxyConfig};
    use crate::trust::TrustSource;
    use crate::ProxyError;

    /// `tessera proxy`: the mesh sidecar.
    #[derive(Debug, clap::Args)]
    pub struct ProxyArgs {
        /// Address of `tessera identity` (Certify, gRPC over h2c).
        #[arg(long, env = "TESSERA_PROXY_IDENTITY_ADDR", default_value = "127.0.0.1:8080")]
        identity_addr: String,
        /// This workload's identity, e.g. web.emojivoto.serviceaccount.identity.linkerd.cluster.local.
        #[arg(long, env = "TESSERA_PROXY_IDENTITY")]
        identity: String,
        /// File with the ServiceAccount token for audience identity.l5d.io (re-read on every renewal).
        #[arg(long, env = "TESSERA_PROXY_TOKEN_FILE")]
        token_file: PathBuf,
        /// PEM trust anchors (re-read every second; several roots allowed during a rotation).
        #[arg(long, env = "TESSERA_PROXY_TRUST_ANCHORS", required_unless_present = "trust_anchors_configmap")]
        trust_anchors: Option<PathBuf>,
        /// Trust anchors from this ConfigMap (NAMESPACE/NAME, key ca-bundle.crt), watched through the API
        /// with the --api-token-file token; its annotation tessera.io/issuer-fingerprint triggers early renewal.
        #[arg(long, env = "TESSERA_PROXY_TRUST_ANCHORS_CONFIGMAP", conflicts_with = "trust_anchors", value_parser = TrustSource::configmap)]
        trust_anchors_configmap: Option<TrustSource>,
        /// Inbound port as LISTEN=APP (public ip:port = app ip:port or port); repeatable.
        #[arg(long, env = "TESSERA_PROXY_INBOUND", value_delimiter = ',')]
        inbound: Vec<InboundSpec>,
        /// Outbound listener for the app (HTTP_PROXY); port 0 picks a free port.
        #[arg(long, env = "TESSERA_PROXY_OUTBOUND_ADDR")]
        outbound_addr: Option<SocketAddr>,
        /// TCP forward port as LISTEN=AUTHORITY (e.g. 127.0.0.1:5432=db.ns.svc.cluster.local:5432): every connection to LISTEN goes to AUTHORITY (mTLS when it is meshed); repeatable; needs --outbound-addr.
        #[arg(long, env = "TESSERA_PROXY_OUTBOUND_TCP", value_delimiter = ',', value_parser = crate::outbound::parse_tcp_forward)]
        outbound_tcp: Vec<(SocketAddr, String)>,
        /// Admin listener: /ready, /live, /metrics; port 0 picks a free port.
        #[arg(long, env = "TESSERA_PROXY_ADMIN_ADDR", default_value = "127.0.0.1:4191")]
        admin_addr: SocketAddr,
        /// API server URL for destination lookups (default: $TESSERA_API_SERVER).
        #[arg(long, env = "TESSERA_PROXY_API_SERVER")]
        api_server: Option<String>,
        /// The pod's ServiceAccount token for the API server.
        #[arg(long, env = "TESSERA_PROXY_API_TOKEN_FILE")]
        api_token_file: Option<PathBuf>,
        /// CA bundle of the API server.
        #[arg(long, env = "TESSERA_PROXY_API_CA")]
        api_ca: Option<PathBuf>,
        /// Protocol detection must finish within this time (a silent client is then forwarded as opaque TCP).
        #[arg(long, env = "TESSERA_PROXY_DETECT_TIMEOUT", default_value = "10s", value_parser = positive)]
        detect_timeout: Duration,
        /// A TLS handshake must finish within this time.
        #[arg(long, env = "TESSERA_PROXY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive)]
        tls_handshake_timeout: Duration,
        /// Connecting to the app or a peer must succeed within this time.
        #[arg(long, env = "TESSERA_PROXY_CONNECT_TIMEOUT", default_value = "5s", value_parser = positive)]
        connect_timeout: Duration,
        /// The pod's namespace: `/tap` asks the API whether a caller may tap this pod.
        #[arg(long, env = "TESSERA_PROXY_NAMESPACE")]
        namespace: Option<String>,
        /// The pod's name (for `/tap`'s access review).
        #[arg(long, env = "TESSERA_PROXY_POD")]
        pod: Option<String>,
        /// Enforce the pod's inbound authorization policy (Server, AuthorizationPolicy, …), watched from the API server for --namespace/--pod; inbound is denied until the first policy arrives.
        #[arg(long, env = "TESSERA_PROXY_POLICY", value_enum, default_value = "off")]
        policy: OnOff,
        /// Client connections served at once over all listeners; beyond it new connections wait in the listen backlog until one closes.
        #[arg(long, env = "TESSERA_PROXY_MAX_CONNECTIONS", default_value_t = crate::limit::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
        max_connections: usize,
        /// `/tap` streams open at once; more get 429 Too Many Requests.
        #[arg(long, env = "TESSERA_PROXY_MAX_TAP_STREAMS", default_value_t = crate::tap::DEFAULT_MAX_STREAMS, value_parser = at_least_one)]
        max_tap_streams: usize,
        /// A pooled HTTP/2 connection to another proxy that carried no request for this long is closed.
        #[arg(long, env = "TESSERA_PROXY_H2_IDLE_TIMEOUT", default_value = "90s", value_parser = positive)]
        h2_idle_timeout: Duration,
        /// Exit when this process (the agent that started the proxy) dies, even by SIGKILL.
        #[arg(long, env = "TESSERA_PROXY_PARENT_PID")]
        parent_pid: Option<u32>,
        /// The pod's IP: outbound connections to other pods are made from it, so their proxies' network rules see this pod's address (default: the kernel's choice, e.g. 127.0.0.1 towards loopback).
        #[arg(long, env = "TESSERA_PROXY_SOURCE_IP")]
        source_ip: Option<std::net::IpAddr>,
        /// Threads of the proxy (as Linkerd's LINKERD2_PROXY_CORES): with --runtime per-thread one runtime each, with --runtime shared the workers of one runtime; default: one per available CPU.
        #[arg(long, env = "TESSERA_PROXY_WORKER_THREADS", value_parser = at_least_one)]
        worker_threads: Option<usize>,
        /// How the threads share the work: per-thread (one current-thread runtime per thread, each
        /// accepting on its own SO_REUSEPORT socket of every proxied port, so a connection stays on
        /// one thread) or shared (one multi-thread runtime whose workers steal each other's tasks).
        #[arg(long, env = "TESSERA_PROXY_RUNTIME", value_enum, default_value_t = RuntimeKind::DEFAULT)]
        runtime: RuntimeKind,
    }

    /// `--runtime per-thread|shared`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum RuntimeKind {
        /// One current-thread runtime per thread, SO_REUSEPORT listeners.
        PerThread,
        /// One multi-thread (work-stealing) runtime.
        Shared,
    }

    impl RuntimeKind {
        /// The default. Per-thread runtimes are opt-in: on the measured pair they
        /// gained no throughput (BENCHMARKS.md, issue 15, "Per-thread runtimes"),
        /// SO_REUSEPORT's hash can leave one thread with most connections, and
        /// any process of the same user that sets SO_REUSEPORT may join the
        /// proxy's port group and take a share of its connections.
        pub const DEFAULT: Self = Self::Shared;
    }

    /// `--policy on|off`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum OnOff {
        /// Enforce.
        On,
        /// Do not enforce.
        Off,
    }

    fn at_least_one(value: &str) -> Result<usize, String> {
        match value.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{value:?} is not a whole number of at least 1")),
        }
    }

    fn positive(value: &str) -> Result<Duration, String> {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err("must be longer than zero".to_owned()),
            Err(e) => Err(format!("{value:?}: {e} (e.g. 10s)")),
        }
    }

    /// Exit status for invalid configuration (EX_USAGE).
    const EXIT_USAGE: i32 = 64;

    impl ProxyArgs {
        /// `--worker-threads`: the caller builds the runtime with this many workers.
        pub fn worker_threads(&self) -> Option<usize> {
            self.worker_threads
        }

        /// The threads serving the proxied ports (`--worker-threads`, default one per CPU).
        fn threads(&self) -> usize {
            self.worker_threads.unwrap_or_else(crate::runtimes::available_cpus)
        }

        /// The runtime builder for [`ProxyArgs::run`] (the caller enables
        /// drivers and builds). `--runtime per-thread`: a current-thread
        /// runtime, the first of the proxy's threads (`run` starts the
        /// others). `--runtime shared --worker-threads 1` gets tokio's
        /// current-thread scheduler, as Linkerd's proxy does with one core:
        /// one thread polls the sockets and runs every task, so a wake-up never
        /// crosses threads (no futex hand-off to an idle worker, no stealing),
        /// which a one-worker multi-thread runtime still pays for beside its
        /// parked `block_on` thread. Otherwise the multi-thread scheduler with
        /// that many workers (default: one per CPU).
        pub fn runtime_builder(&self) -> tokio::runtime::Builder {
            match self.worker_threads {
                _ if self.runtime == RuntimeKind::PerThread => tokio::runtime::Builder::new_current_thread(),
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(threads) => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(threads);
                    builder
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            }
        }

        /// The typed configuration.
        pub fn config(self) -> ProxyConfig {
            let runtimes = match self.runtime {
                RuntimeKind::PerThread => self.threads(),
                RuntimeKind::Shared => 1,
            };
            ProxyConfig {
                identity_addr: self.identity_addr,
                identity: self.identity,
                token_file: self.token_file,
                // clap requires one of the two.
                trust_anchors: match (self.trust_anchors_configmap, self.trust_anchors) {
                    (Some(source), _) => source,
                    (None, path) => TrustSource::File(path.unwrap_or_default()),
                },
                inbound: self.inbound,
                outbound_addr: self.outbound_addr,
                outbound_tcp: self.outbound_tcp,
                admin_addr: self.admin_addr,
                api: ApiConfig { server: self.api_server, token_file: self.api_token_file, ca: self.api_ca },
                detect_timeout: self.detect_timeout,
                handshake_timeout: self.tls_handshake_timeout,
                connect_timeout: self.connect_timeout,
                certify_timeout: Duration::from_secs(10),
                namespace: self.namespace,
                pod: self.pod,
                policy: self.policy == OnOff::On,
                max_connections: self.max_connections,
                max_tap_streams: self.max_tap_streams,
                h2_idle_timeout: self.h2_idle_timeout,
                parent_pid: self.parent_pid,
                source_ip: self.source_ip,
                runtimes,
            }
        }

        /// Runs the proxy until `shutdown`; prints the bound addresses
        /// (`tessera proxy admin on http://ADDR`, `tessera proxy inbound on
        /// LISTEN -> APP`, `tessera proxy outbound on ADDR`). Returns the exit status.
        pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<i32, ProxyError> {
            let result = crate::run(self.config(), shutdown, |started| {
                println!("tessera proxy admin on http://{}", started.admin_addr);
                for (listen, app) in &started.inbound {
                    println!("tessera proxy inbound on {listen} -> {app}");
                }
                if let Some(outbound) = started.outbound {
                    println!("tessera proxy outbound on {outbound}");
                }
            })
            .await;
            match result {
                Err(ProxyError::Config(message)) => {
                    eprintln!("error: invalid configuration: {message}");
                    Ok(EXIT_USAGE)
                }
                other => other.map(|()| 0),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use clap::Parser;

        use super::*;

        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProxyArgs,
        }

        #[test]
        fn flags_become_a_config() {
            let cli = Cli::try_parse_from([
                "proxy",
                "--identity",
                "web.ns.serviceaccount.identity.linkerd.cluster.local",
                "--token-file",
                "t",
                "--trust-anchors",
                "ca.crt",
                "--inbound",
                "127.1.0.2:8080=18080",
                "--inbound",
                "127.1.0.2:9090=127.0.0.1:19090",
            ])
            .unwrap();
            let config = cli.args.config();
            assert_eq!(config.admin_addr, "127.0.0.1:4191".parse().unwrap());
            assert_eq!(config.identity_addr, "127.0.0.1:8080");
            assert_eq!(
                config.inbound,
                vec![
                    InboundSpec { listen: "127.1.0.2:8080".parse().unwrap(), app: "127.0.0.1:18080".parse().unwrap() },
                    InboundSpec { listen: "127.1.0.2:9090".parse().unwrap(), app: "127.0.0.1:19090".parse().unwrap() },
                ]
            );
            assert_eq!(config.detect_timeout, Duration::from_secs(10));
            assert_eq!(config.trust_anchors, TrustSource::File("ca.crt".into()));
            assert!(!config.policy, "policy enforcement is opt-in");
        }

        #[test]
        fn trust_anchors_come_from_a_file_or_a_configmap() {
            let base = ["proxy", "--identity", "a.b", "--token-file", "t"];
            let cli = Cli::try_parse_from([&base[..], &["--trust-anchors-configmap", "linkerd/tessera-identity-trust-roots"]].concat()).unwrap();
            assert_eq!(
                cli.args.config().trust_anchors,
                TrustSource::ConfigMap { namespace: "linkerd".into(), name: "tessera-identity-trust-roots".into() }
            );
            assert!(Cli::try_parse_from(base).is_err(), "one source is required");
            assert!(Cli::try_parse_from([&base[..], &["--trust-anchors", "c", "--trust-anchors-configmap", "a/b"]].concat()).is_err());
            let err = Cli::try_parse_from([&base[..], &["--trust-anchors-configmap", "x"]].concat()).unwrap_err().to_string();
            assert!(err.contains(r#""x" is not NAMESPACE/NAME"#), "{err}");
        }

        #[test]
        fn one_worker_thread_is_the_current_thread_scheduler() {
            use tokio::runtime::RuntimeFlavor;
            let base = ["proxy", "--identity", "a", "--token-file", "t", "--trust-anchors", "c", "--runtime", "shared"];
            let runtime = |extra: &[&str]| {
                let cli = Cli::try_parse_from(base.iter().chain(extra).copied()).unwrap();
                let runtime = cli.args.runtime_builder().enable_all().build().unwrap();
                (runtime.handle().runtime_flavor(), runtime.metrics().num_workers(), cli.args.config().runtimes)
            };
            assert_eq!(runtime(&["--worker-threads", "1"]), (RuntimeFlavor::CurrentThread, 1, 1));
            assert_eq!(runtime(&["--worker-threads", "3"]), (RuntimeFlavor::MultiThread, 3, 1));
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            assert_eq!(runtime(&[]), (RuntimeFlavor::MultiThread, cpus, 1));
            assert!(Cli::try_parse_from(base.iter().chain(&["--worker-threads", "0"]).copied()).is_err());
        }

        #[test]
        fn per_thread_runtimes_are_current_thread_ones_one_per_thread() {
            use tokio::runtime::RuntimeFlavor;
            let base = ["proxy", "--identity", "a", "--token-file", "t", "--trust-anchors", "c"];
            let runtime = |extra: &[&str]| {
                let cli = Cli::try_parse_from(base.iter().chain(extra).copied()).unwrap();
                let runtime = cli.args.runtime_builder().enable_all().build().unwrap();
                (runtime.handle().runtime_flavor(), cli.args.config().runtimes)
            };
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            assert_eq!(runtime(&["--runtime", "per-thread", "--worker-threads", "3"]), (RuntimeFlavor::CurrentThread, 3));
            assert_eq!(runtime(&["--runtime", "per-thread", "--worker-threads", "1"]), (RuntimeFlavor::CurrentThread, 1));
            assert_eq!(runtime(&["--runtime", "per-thread"]), (RuntimeFlavor::CurrentThread, cpus));
            let default = if RuntimeKind::DEFAULT == RuntimeKind::PerThread { cpus } else { 1 };
            assert_eq!(runtime(&[]).1, default);
            assert!(Cli::try_parse_from(base.iter().chain(&["--runtime", "threads"]).copied()).is_err());
        }

        #[test]
        fn policy_is_on_or_off() {
            let base = ["proxy", "--identity", "a", "--token-file", "t", "--trust-anchors", "c"];
            let on = Cli::try_parse_from(base.iter().copied().chain(["--policy", "on"])).unwrap();
            assert!(on.args.config().policy);
            let off = Cli::try_parse_from(base.iter().copied().chain(["--policy", "off"])).unwrap();
            assert!(!off.args.config().policy);
            assert!(Cli::try_parse_from(base.iter().copied().chain(["--policy", "maybe"])).is_err());
        }

        #[test]
        fn bad_inbound_specs_are_refused() {
            assert_eq!("x".parse::<InboundSpec>().unwrap_err(), r#""x" is not LISTEN=APP (e.g. 127.1.0.2:8080=127.0.0.1:18080)"#);
            assert_eq!("a=1".parse::<InboundSpec>().unwrap_err(), r#""a" is not an ip:port address"#);
            assert_eq!("127.0.0.1:1=b".parse::<InboundSpec>().unwrap_err(), r#""b" is not an ip:port address or a port"#);
            assert!(
                Cli::try_parse_from(["proxy", "--identity", "a", "--token-file", "t", "--trust-anchors", "c", "--detect-timeout", "0s"])
                    .is_err()
            );
        }
    }
}
