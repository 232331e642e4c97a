//! The `tessera` binary: parses arguments, sets up logging and the TLS crypto
//! provider, and hands over to the component crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod columns;
mod expiry;
mod mesh;
mod policy;
mod process;
mod rbac;

// The allocator decides whether memory freed after a load peak goes back to the
// system (BENCHMARKS.md, "Memory"): jemalloc by default, tuned at build time in
// .cargo/config.toml. Declaring one needs no unsafe code.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Workload identity in one binary.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes-compatible API server on its embedded store.
    Server(ServerArgs),
    /// Load-test a Kubernetes-compatible API server (this one or any other) through a kubeconfig.
    Bench(tessera_bench::BenchArgs),
    /// Node agent: register pods and project their rotating ServiceAccount tokens into files.
    Agent(tessera_agent::cli::AgentArgs),
    /// Explain RBAC decisions and list who may do something.
    Rbac(rbac::RbacArgs),
    /// Explain Linkerd authorization policy decisions: which Server, route and authorization decide.
    Policy(policy::PolicyArgs),
    /// Linkerd-compatible identity CA: issue 24-hour mTLS certificates for ServiceAccount tokens (or `bootstrap` its certificates).
    Identity(tessera_identity::cli::IdentityArgs),
    /// Check trust anchors, issuer, Kubernetes API and identity service, like `linkerd check`.
    Check(tessera_identity::cli::CheckArgs),
    /// Who talks to whom in the mesh, and whether over mutual TLS (as `linkerd viz edges`).
    Edges(mesh::EdgesArgs),
    /// Stream the requests through meshed pods' proxies (as `linkerd viz tap`).
    Tap(mesh::TapArgs),
    /// Everything that expires (certificates, keys, never-expiring tokens) on one timeline; exit code 3 if anything has expired.
    Expiry(expiry::ExpiryArgs),
    /// Mesh sidecar: identity certificate over Certify, mutual TLS inbound with l5d-client-id, Linkerd metrics.
    Proxy(tessera_proxy::config::ProxyArgs),
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Directory for the store, certificates, signing keys and admin.kubeconfig (created if missing).
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data", global = true)]
    data_dir: PathBuf,
    /// Address to serve HTTPS on; port 0 picks a free port.
    #[arg(long, env = "TESSERA_BIND", default_value = "127.0.0.1:6443")]
    bind: SocketAddr,
    /// Issuer (`iss`) of ServiceAccount tokens.
    #[arg(long, env = "TESSERA_SERVICE_ACCOUNT_ISSUER", default_value = "https://kubernetes.default.svc.cluster.local")]
    service_account_issuer: String,
    /// Audiences of the API itself (repeatable); default: the issuer.
    #[arg(long = "api-audiences", env = "TESSERA_API_AUDIENCES", value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// Algorithm for newly generated token signing keys.
    #[arg(long, env = "TESSERA_SERVICE_ACCOUNT_SIGNING_ALG", default_value = "ES256", global = true)]
    service_account_signing_alg: tessera_authn::jwt::Algorithm,
    /// Longest lifetime a TokenRequest is granted, in seconds (longer requests are shortened).
    #[arg(long, env = "TESSERA_SERVICE_ACCOUNT_MAX_TOKEN_EXPIRATION", default_value_t = 48 * 3600)]
    service_account_max_token_expiration: i64,
    /// Let unauthenticated clients read /.well-known/openid-configuration and /openid/v1/jwks.
    #[arg(long, env = "TESSERA_ANONYMOUS_OIDC_DISCOVERY")]
    anonymous_oidc_discovery: bool,
    /// Serve get, list and watch from an in-memory watch cache, as kube-apiserver's
    /// `--watch-cache` (on by default; `--watch-cache=false` reads the store every time).
    #[arg(long, env = "TESSERA_WATCH_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    watch_cache: bool,
    /// Start even if group or others can access the data dir or its store, or another user owns them
    /// (by default the server refuses, as sshd and PostgreSQL do: the store holds every Secret).
    #[arg(long, env = "TESSERA_ALLOW_INSECURE_DATA_DIR")]
    allow_insecure_data_dir: bool,
    /// Object store: `sqlite` (embedded, in the data dir) or `etcd://host:port[,host:port…]`
    /// (an etcd cluster that several servers share; each needs the same data-dir `pki/ca.*` and `keys/`).
    #[arg(long, env = "TESSERA_STORAGE", default_value = "sqlite", value_parser = parse_storage)]
    storage: StorageArg,
    /// etcd key prefix for the objects (`{prefix}/{resource}/{namespace}/{name}`, as in Kubernetes).
    #[arg(long, env = "TESSERA_ETCD_PREFIX", default_value = tessera_store::etcd::REGISTRY_ROOT)]
    etcd_prefix: String,
    /// CA certificate (PEM) of etcd's serving certificates: connect to etcd over TLS.
    #[arg(long, env = "TESSERA_ETCD_CACERT")]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, env = "TESSERA_ETCD_CERT", requires_all = ["etcd_key", "etcd_cacert"])]
    etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of `--etcd-cert`.
    #[arg(long, env = "TESSERA_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Encrypt objects at rest as kube-apiserver does: an EncryptionConfiguration file
    /// (`apiserver.config.k8s.io/v1`; providers aesgcm, secretbox, identity).
    #[arg(long, env = "TESSERA_ENCRYPTION_PROVIDER_CONFIG")]
    encryption_provider_config: Option<PathBuf>,
    /// How long the pods of a node whose heartbeat Lease expired stay (marked
    /// not ready) before they are deleted, which revokes their tokens.
    #[arg(long, env = "TESSERA_NODE_EVICTION_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    node_eviction_timeout: Duration,
    /// Lifetime of the node client certificates the server signs (nodes renew at 70 %).
    #[arg(long, env = "TESSERA_NODE_CERTIFICATE_VALIDITY", default_value = "24h", value_parser = parse_certificate_validity)]
    node_certificate_validity: Duration,
    /// Most connections held at once; at the limit the longest-idle one is closed to make room.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = at_least_one)]
    max_connections: usize,
    /// Most connections one client address (IPv4, or IPv6 /64) holds at once; more are closed at once.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 500, value_parser = at_least_one)]
    max_connections_per_client: usize,
    /// A client must finish the TLS handshake within this time.
    #[arg(long, env = "TESSERA_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    tls_handshake_timeout: Duration,
    /// A connection with no request in flight (HTTP/1.1 between requests, HTTP/2 with no open stream) is closed after this time.
    #[arg(long, env = "TESSERA_IDLE_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    idle_timeout: Duration,
    /// A request body must arrive in full within this time of its headers (else 504 Timeout).
    #[arg(long, env = "TESSERA_REQUEST_BODY_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    request_body_timeout: Duration,
    /// How often the leading server compacts the store's history (as kube-apiserver's
    /// `--etcd-compaction-interval`): each time to the revision of the previous time, so the
    /// last interval of history stays; older resourceVersions answer 410 Expired. 0 disables.
    #[arg(long, env = "TESSERA_COMPACTION_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    compaction_interval: std::time::Duration,
    /// The range Service cluster IPs are allocated from (kube-apiserver's flag and default);
    /// its first address is the `default/kubernetes` Service's.
    #[arg(long, env = "TESSERA_SERVICE_CLUSTER_IP_RANGE", default_value = "10.96.0.0/12")]
    service_cluster_ip_range: tessera_apiserver::ServiceCidr,
    /// Trust domain of mesh identities the destination API names (as `tessera identity`).
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_DOMAIN", default_value = "cluster.local")]
    identity_trust_domain: String,
    /// Control-plane namespace in mesh identities (`SA.NS.serviceaccount.identity.THIS.TRUST-DOMAIN`).
    #[arg(long, env = "TESSERA_IDENTITY_CONTROL_NAMESPACE", default_value = "linkerd")]
    identity_control_namespace: String,
    /// The mesh issuer's Secret (NAMESPACE/NAME, `tls.crt` or `crt.pem`) for the expiry
    /// timeline; without it the timeline notes that the issuer is not visible.
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_SECRET", value_parser = tessera_apiserver::expiry::parse_secret_ref)]
    identity_issuer_secret: Option<(String, String)>,
    /// Leaf lifetime the identity CA issues (its `--issuance-lifetime`): the expiry timeline
    /// assumes it for a proxy leaf whose metrics give only the expiry.
    #[arg(long, env = "TESSERA_IDENTITY_ISSUANCE_LIFETIME", default_value = "24h", value_parser = positive_duration)]
    identity_issuance_lifetime: Duration,
    /// The expiry timeline warns about a token signing key in use for longer than this.
    #[arg(long, env = "TESSERA_SERVICE_ACCOUNT_KEY_ROTATION_AGE", default_value = "90d", value_parser = positive_duration)]
    service_account_key_rotation_age: Duration,
    /// Inbound policy of meshed pods on ports no Server selects, unless the pod or its
    /// namespace is annotated `config.linkerd.io/default-inbound-policy` (Linkerd's
    /// `proxy.defaultInboundPolicy`): all-unauthenticated, all-authenticated,
    /// cluster-authenticated, cluster-unauthenticated, deny or audit.
    #[arg(long, env = "TESSERA_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated")]
    default_inbound_policy: tessera_policy::DefaultPolicy,
    /// Networks the `cluster-*` policies (and ServerAuthorizations without `networks`) count as the cluster, comma-separated CIDRs: Linkerd's `clusterNetworks` plus 127.0.0.0/8, where `agent run --mesh` puts pods.
    #[arg(long, env = "TESSERA_CLUSTER_NETWORKS", value_delimiter = ',', default_value = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.0/8")]
    cluster_networks: Vec<ipnet::IpNet>,
    #[command(subcommand)]
    action: Option<ServerAction>,
}

/// At least a minute: a node renews at 70 % of the lifetime.
fn parse_certificate_validity(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(60) {
        return Err(format!("{value:?} is shorter than a minute"));
    }
    Ok(duration)
}

/// The `--storage` flag: embedded SQLite or etcd endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StorageArg {
    Sqlite,
    Etcd(Vec<String>),
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{value:?} is not a whole number of at least 1")),
    }
}

fn positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".to_owned()),
        Err(e) => Err(format!("{value:?}: {e} (e.g. 30s, 1m)")),
    }
}

fn parse_storage(value: &str) -> Result<StorageArg, String> {
    if value == "sqlite" {
        return Ok(StorageArg::Sqlite);
    }
    tessera_store::etcd::EtcdConfig::endpoints_from_url(value)
        .map(StorageArg::Etcd)
        .ok_or_else(|| format!("{value:?} is neither `sqlite` nor `etcd://host:port[,host:port…]`"))
}

/// A duration such as `5m`, `90s` or `1h30m`; `0` alone means zero.
fn parse_interval(value: &str) -> Result<std::time::Duration, String> {
    if value.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| format!("{value:?} is not a duration like 5m or 30s: {e}"))
}

#[derive(Debug, Subcommand)]
enum ServerAction {
    /// Manage ServiceAccount token signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Encryption at rest.
    Encryption {
        #[command(subcommand)]
        action: EncryptionAction,
    },
}

#[derive(Debug, Subcommand)]
enum EncryptionAction {
    /// Ask the running server to re-encrypt every covered object with the first
    /// key of its configuration (the step after putting a new key first and
    /// restarting; then the old key can be removed).
    Rewrite {
        /// Kubeconfig of a cluster admin (default: the data dir's admin.kubeconfig).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Add a new signing key: new tokens use it at once (a running server picks it
    /// up within seconds); older keys keep verifying until their tokens expire.
    Rotate,
}

/// Threads of the server's blocking pool: SQLite's 8 concurrent reads and a few more.
const SERVER_BLOCKING_THREADS: usize = 12;

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    process::install_crypto_provider();
    let mut builder = match &cli.command {
        // The proxy picks its scheduler (`tessera proxy --worker-threads`).
        Command::Proxy(args) => args.runtime_builder(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Command::Server(_) = &cli.command {
        // The server's blocking work is SQLite (at most 8 reads at once, the
        // writer has its own thread) and a few file reads. Tokio's default
        // (512 threads) let a load peak leave 20-30 threads behind, each with
        // a stack and allocator caches (BENCHMARKS.md, issue 14 "Memory").
        builder.max_blocking_threads(SERVER_BLOCKING_THREADS);
    }
    process::run(builder, dispatch(cli))
}

/// Runs the command; returns the process exit code.
async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Server(args) => server(args).await.map(|()| 0),
        Command::Bench(args) => {
            let summary = args.run(process::shutdown_signal()).await?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), summary.to_string().as_bytes());
            Ok(0)
        }
        Command::Agent(args) => tessera_agent::cli::run(args).await,
        Command::Rbac(args) => rbac::run(args).await,
        Command::Policy(args) => policy::run(args).await,
        Command::Identity(args) => Ok(args.run(process::shutdown_signal()).await?),
        Command::Check(args) => Ok(args.run().await?),
        Command::Edges(args) => mesh::edges(args).await,
        Command::Tap(args) => mesh::tap(args).await,
        Command::Expiry(args) => expiry::run(args).await,
        Command::Proxy(args) => Ok(args.run(process::shutdown_signal()).await?),
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = tessera_apiserver::Config::new(args.data_dir.clone(), args.bind);
    if let Some(ServerAction::Keys { action: KeysAction::Rotate }) = args.action {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let kid = tessera_authn::keys::KeySet::add(&config.key_dir(), args.service_account_signing_alg, now)
            .with_context(|| format!("adding a signing key in {}", config.key_dir().display()))?;
        println!("added signing key {kid}");
        return Ok(());
    }
    if let Some(ServerAction::Encryption { action: EncryptionAction::Rewrite { kubeconfig } }) = &args.action {
        let kubeconfig = kubeconfig.clone().unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
        return encryption_rewrite(&kubeconfig).await;
    }
    if let Some(path) = &args.encryption_provider_config {
        let encryption = tessera_encryption::EncryptionConfig::load(path).with_context(|| format!("--encryption-provider-config {}", path.display()))?;
        config.encryption = Some(std::sync::Arc::new(encryption));
    }
    config.service_account_issuer = args.service_account_issuer.clone();
    config.api_audiences =
        if args.api_audiences.is_empty() { vec![args.service_account_issuer.clone()] } else { args.api_audiences.clone() };
    config.signing_alg = args.service_account_signing_alg;
    config.max_token_lifetime_seconds = args.service_account_max_token_expiration;
    config.anonymous_oidc_discovery = args.anonymous_oidc_discovery;
    config.watch_cache = args.watch_cache;
    config.node_lifecycle.eviction_timeout = args.node_eviction_timeout;
    config.node_certificate_validity = args.node_certificate_validity;
    config.connections = tessera_apiserver::serve::ConnectionLimits {
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        handshake_timeout: args.tls_handshake_timeout,
        idle_timeout: args.idle_timeout,
        body_timeout: args.request_body_timeout,
    };
    if args.allow_insecure_data_dir {
        config.data_dir_strictness = tessera_apiserver::data_dir::Strictness::Allow;
    }
    config.compaction_interval = (!args.compaction_interval.is_zero()).then_some(args.compaction_interval);
    config.service_cidr = args.service_cluster_ip_range;
    config.identity_naming = tessera_apiserver::destinations::IdentityNaming {
        trust_domain: args.identity_trust_domain.clone(),
        control_namespace: args.identity_control_namespace.clone(),
    };
    config.expiry = tessera_apiserver::expiry::ExpiryConfig {
        rules: tessera_apiserver::expiry::Rules {
            // The same threshold as `tessera check`.
            warn_within: tessera_identity::check::WARN_WITHIN,
            leaf_lifetime: args.identity_issuance_lifetime,
            signing_key_rotation_age: args.service_account_key_rotation_age,
            ..tessera_apiserver::expiry::Rules::default()
        },
        issuer_secret: args.identity_issuer_secret.clone(),
    };
    config.default_inbound_policy = args.default_inbound_policy;
    config.cluster_networks = args.cluster_networks.clone();
    config.storage = match &args.storage {
        StorageArg::Sqlite if args.etcd_cacert.is_some() => anyhow::bail!("--etcd-cacert needs --storage etcd://…"),
        StorageArg::Sqlite => tessera_apiserver::Storage::Sqlite,
        StorageArg::Etcd(endpoints) => {
            let tls = args.etcd_cacert.clone().map(|ca_file| tessera_store::etcd::EtcdTls {
                ca_file,
                client: args.etcd_cert.clone().zip(args.etcd_key.clone()).map(|(cert_file, key_file)| {
                    tessera_store::etcd::ClientCertFiles { cert_file, key_file }
                }),
            });
            tessera_apiserver::Storage::Etcd(tessera_store::etcd::EtcdConfig {
                prefix: args.etcd_prefix.clone(),
                tls,
                ..tessera_store::etcd::EtcdConfig::new(endpoints.clone())
            })
        }
    };
    tessera_apiserver::run(config, process::shutdown_signal(), |started| {
        let kubeconfig = std::fs::canonicalize(&started.kubeconfig).unwrap_or_else(|_| started.kubeconfig.clone());
        println!("tessera server listening on https://{}", started.addr);
        println!("kubeconfig: {}", kubeconfig.display());
        println!("export KUBECONFIG={}", kubeconfig.display());
    })
    .await
    .with_context(|| format!("tessera server (data dir {})", args.data_dir.display()))
}

/// `tessera server encryption rewrite`: the server does the work, so its
/// caches and watchers see every write.
async fn encryption_rewrite(kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;
    let request = http::Request::post("/tessera/v1/encryption/rewrite").body(Vec::new())?;
    let answer: serde_json::Value = client.request(request).await.context("POST /tessera/v1/encryption/rewrite")?;
    println!("rewrote {} objects with the current key; {} already used it", answer["rewritten"], answer["current"]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_args(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        let mut argv = vec!["tessera", "server"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Server(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn storage_flags() {
        let args = server_args(&[]).expect("defaults");
        assert_eq!((args.storage, args.etcd_prefix.as_str()), (StorageArg::Sqlite, "/registry"));
        let args = server_args(&["--storage", "etcd://10.0.0.1:2379,10.0.0.2:2379", "--etcd-prefix", "/a"]).expect("etcd");
        assert_eq!(args.storage, StorageArg::Etcd(vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()]));
        assert_eq!(args.etcd_prefix, "/a");
        assert!(server_args(&["--storage", "postgres://x"]).is_err());
        assert!(server_args(&["--storage", "etcd://"]).is_err());
        // A client certificate needs its key and the CA.
        assert!(server_args(&["--storage", "etcd://h:2379", "--etcd-cert", "c.pem"]).is_err());
        let args = server_args(&["--storage", "etcd://h:2379", "--etcd-cacert", "ca.pem", "--etcd-cert", "c.pem", "--etcd-key", "k.pem"])
            .expect("TLS flags");
        assert_eq!(args.etcd_key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn node_flags() {
        let args = server_args(&[]).expect("defaults");
        assert_eq!(args.node_eviction_timeout, Duration::from_secs(60));
        assert_eq!(args.node_certificate_validity, Duration::from_secs(24 * 3600));
        let args = server_args(&["--node-eviction-timeout", "2s", "--node-certificate-validity", "10m"]).expect("set");
        assert_eq!((args.node_eviction_timeout.as_secs(), args.node_certificate_validity.as_secs()), (2, 600));
        assert!(server_args(&["--node-certificate-validity", "5s"]).is_err());
    }

    #[test]
    fn connection_flags() {
        let args = server_args(&[]).expect("defaults");
        let defaults = tessera_apiserver::serve::ConnectionLimits::default();
        assert_eq!(
            (args.max_connections, args.max_connections_per_client, args.tls_handshake_timeout, args.idle_timeout, args.request_body_timeout),
            (
                defaults.max_connections,
                defaults.max_connections_per_client,
                defaults.handshake_timeout,
                defaults.idle_timeout,
                defaults.body_timeout
            ),
        );
        let args = server_args(&["--idle-timeout", "2s", "--tls-handshake-timeout", "1500ms", "--max-connections-per-client", "7"]).expect("set");
        assert_eq!((args.idle_timeout, args.tls_handshake_timeout), (Duration::from_secs(2), Duration::from_millis(1500)));
        assert_eq!(args.max_connections_per_client, 7);
        assert!(server_args(&["--idle-timeout", "0s"]).is_err());
        assert!(server_args(&["--max-connections", "0"]).is_err());
        assert!(server_args(&["--request-body-timeout", "soon"]).is_err());
    }

    #[test]
    fn expiry_flags() {
        let args = server_args(&[]).expect("defaults");
        assert_eq!(
            (args.identity_issuer_secret, args.identity_issuance_lifetime, args.service_account_key_rotation_age),
            (None, Duration::from_secs(86400), Duration::from_secs(90 * 86400))
        );
        let args = server_args(&["--identity-issuer-secret", "linkerd/linkerd-identity-issuer", "--identity-issuance-lifetime", "1h"]).expect("set");
        assert_eq!(args.identity_issuer_secret, Some(("linkerd".to_owned(), "linkerd-identity-issuer".to_owned())));
        assert_eq!(args.identity_issuance_lifetime, Duration::from_secs(3600));
        assert!(server_args(&["--identity-issuer-secret", "linkerd"]).is_err());
        assert!(server_args(&["--service-account-key-rotation-age", "0s"]).is_err());
    }

    #[test]
    fn compaction_interval_flag() {
        assert_eq!(server_args(&[]).expect("default").compaction_interval, Duration::from_secs(300));
        for (flag, want) in [("0", 0), ("0s", 0), ("90s", 90), ("1h30m", 5400), ("10m", 600)] {
            let args = server_args(&["--compaction-interval", flag]).expect(flag);
            assert_eq!(args.compaction_interval, Duration::from_secs(want), "{flag}");
        }
        let args = server_args(&["--compaction-interval", "250ms"]).expect("ms");
        assert_eq!(args.compaction_interval, Duration::from_millis(250));
        for bad in ["5", "often", "-1m", ""] {
            assert!(server_args(&["--compaction-interval", bad]).is_err(), "{bad}");
        }
    }
}
