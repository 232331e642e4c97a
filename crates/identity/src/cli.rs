//! The clap arguments of `tessera identity` (run the CA, or `bootstrap` its
//! certificates) and `tessera check`, turned into typed configs here and
//! handed to [`crate::run`], [`crate::bootstrap::bootstrap`] and
//! [`crate::check::run_checks`]. Printing the bound addresses, the files
//! bootstrap wrote and the check report is this module's product output.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;

use crate::bootstrap::{self, BootstrapConfig};
use crate::bundle::AnchorsSource;
use crate::check::{self, CheckConfig};
use crate::error::{Error, Result};
use crate::issuer::IssuancePolicy;
use crate::pki;
use crate::reload::IssuerSource;
use crate::renew::RenewConfig;
use crate::review::IdentityNaming;
use crate::{Config, KubeSource};

/// `tessera identity`: the Linkerd-compatible identity CA.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IdentityArgs {
    #[command(subcommand)]
    action: Option<IdentityAction>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Sub-actions of `tessera identity`.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityAction {
    /// Create a trust anchor (ca.crt, ca.key) and an issuer signed by it (crt.pem, key.pem), ECDSA P-256.
    Bootstrap(BootstrapArgs),
    /// Rotate the trust anchor and issuer (Linkerd's procedure, resumable), or only the issuer.
    Rotate(RotateArgs),
}

/// Flags for serving Certify.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC (h2c) address to serve io.linkerd.proxy.identity.Identity/Certify on; port 0 picks a free port.
    #[arg(long, env = "TESSERA_IDENTITY_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Admin address serving /metrics, /ready and /live; port 0 picks a free port.
    #[arg(long, env = "TESSERA_IDENTITY_ADMIN_ADDR", default_value = "127.0.0.1:9990")]
    admin_addr: SocketAddr,
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    naming: NamingArgs,
    /// Lifetime of issued leaf certificates (e.g. 24h).
    #[arg(long, env = "TESSERA_IDENTITY_ISSUANCE_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    issuance_lifetime: Duration,
    /// Clock skew allowance: leaves start this much in the past and last this much longer.
    #[arg(long, env = "TESSERA_IDENTITY_CLOCK_SKEW_ALLOWANCE", default_value = "20s", value_parser = humantime::parse_duration)]
    clock_skew_allowance: Duration,
    #[command(flatten)]
    renew: RenewArgs,
}

/// Automatic issuer renewal (cert-manager's CA Issuer + Certificate, built in).
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// Renew the issuer once less than this is left, signing the new one with the trust anchor's key from --anchor-dir.
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_RENEW_BEFORE", value_parser = humantime::parse_duration, requires = "anchor_dir")]
    issuer_renew_before: Option<Duration>,
    /// Directory of trust anchors with their keys (ca.crt/ca.key, itself or a subdirectory, as `bootstrap` and `rotate` write them).
    #[arg(long, env = "TESSERA_IDENTITY_ANCHOR_DIR", requires = "issuer_renew_before")]
    anchor_dir: Option<PathBuf>,
    /// Lifetime of each renewed issuer (cert-manager's `duration`).
    #[arg(long, alias = "issuer-duration", env = "TESSERA_IDENTITY_ISSUER_VALIDITY", default_value = "48h", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
}

/// Where trust anchors, issuer and Kubernetes API are (shared by `identity` and `check`).
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// PEM bundle of trust anchors; may hold several roots while one is rotated out (re-read every second).
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_ANCHORS", conflicts_with = "trust_anchors_configmap")]
    trust_anchors: Option<PathBuf>,
    /// Trust anchors from this ConfigMap instead (NAMESPACE/NAME, key ca-bundle.crt), watched for changes.
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_ANCHORS_CONFIGMAP")]
    trust_anchors_configmap: Option<String>,
    /// Directory with the issuer's crt.pem and key.pem (re-read every second).
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_DIR", conflicts_with = "issuer_secret")]
    issuer_dir: Option<PathBuf>,
    /// Issuer Secret as NAMESPACE/NAME (kubernetes.io/tls: tls.crt, tls.key), watched for changes.
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_SECRET")]
    issuer_secret: Option<String>,
    /// kubeconfig for TokenReview and the issuer Secret; default: in-cluster config, then $KUBECONFIG.
    #[arg(long, env = "TESSERA_IDENTITY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// How ServiceAccounts are named: `NAME.NS.serviceaccount.identity.<controller-namespace>.<trust-domain>`.
#[derive(Debug, clap::Args)]
pub struct NamingArgs {
    /// Trust domain of identities.
    #[arg(long, env = "TESSERA_IDENTITY_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Control plane namespace in identities.
    #[arg(long, env = "TESSERA_IDENTITY_CONTROLLER_NAMESPACE", default_value = "linkerd")]
    controller_namespace: String,
}

/// Flags of `tessera identity bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Directory to write ca.crt, ca.key, crt.pem and key.pem to (created if missing; files are never overwritten).
    #[arg(long, env = "TESSERA_IDENTITY_BOOTSTRAP_OUT")]
    out: PathBuf,
    /// Lifetime of the trust anchor.
    #[arg(long, env = "TESSERA_IDENTITY_ANCHOR_VALIDITY", default_value = "87600h", value_parser = humantime::parse_duration)]
    anchor_validity: Duration,
    /// Lifetime of the issuer (never past the anchor's).
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_VALIDITY", default_value = "8760h", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
    /// Sign the new issuer with the existing trust anchor in this directory (ca.crt, ca.key) instead of creating one.
    #[arg(long, env = "TESSERA_IDENTITY_ANCHOR_DIR")]
    anchor_dir: Option<PathBuf>,
    #[command(flatten)]
    naming: NamingArgs,
}

/// Flags of `tessera identity rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Directory of trust anchors: the current one as ca.crt/ca.key (as `bootstrap` writes it); each rotation adds rotation-<id>/.
    #[arg(long, env = "TESSERA_IDENTITY_ANCHOR_DIR")]
    anchor_dir: Option<PathBuf>,
    /// Install the new issuer as crt.pem/key.pem in this directory (the one `tessera identity --issuer-dir` reads).
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_DIR", conflicts_with = "issuer_secret")]
    issuer_dir: Option<PathBuf>,
    /// Install the new issuer in this kubernetes.io/tls Secret, NAMESPACE/NAME.
    #[arg(long, env = "TESSERA_IDENTITY_ISSUER_SECRET")]
    issuer_secret: Option<String>,
    /// kubeconfig; default: in-cluster config, then $KUBECONFIG.
    #[arg(long, env = "TESSERA_IDENTITY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Only a new issuer from the current anchor (steps 3 and 4).
    #[arg(long)]
    issuer_only: bool,
    /// Print the plan and change nothing.
    #[arg(long, conflicts_with = "status")]
    dry_run: bool,
    /// Show where the current or last rotation stands, and change nothing.
    #[arg(long)]
    status: bool,
    /// How long each step may take; on timeout the rotation stops there and names the proxies holding it up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// How often the proxies' reports are read while waiting.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Lifetime of the new trust anchor.
    #[arg(long, default_value = "87600h", value_parser = humantime::parse_duration)]
    anchor_validity: Duration,
    /// Lifetime of the new issuer (never past its anchor's).
    #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
    /// Names the certificates; --controller-namespace is also where the ConfigMaps are.
    #[command(flatten)]
    naming: NamingArgs,
}

/// `tessera check`: checks trust anchors, issuer, API and identity service.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    sources: SourceArgs,
    /// host:port of the identity service's gRPC listener.
    #[arg(long, env = "TESSERA_IDENTITY_ADDR", default_value = "127.0.0.1:8080")]
    identity_addr: String,
    /// The identity service's naming: the issuer is validated with a probe leaf of its trust domain, as the CA does.
    #[command(flatten)]
    naming: NamingArgs,
    /// Output format.
    #[arg(long, short = 'o', env = "TESSERA_CHECK_OUTPUT", value_enum, default_value = "text")]
    output: Output,
    /// Also check every meshed proxy (its `/trust` through `pods/proxy`): trusts the current bundle, holds a valid leaf from the current issuer.
    #[arg(long)]
    proxy: bool,
}

/// Output format of `tessera check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// ✔/‼/× lines grouped like `linkerd check`.
    Text,
    /// `linkerd check -o json`'s shape.
    Json,
}

/// Exit status for invalid configuration (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Turns a bad configuration into one line on stderr and [`EXIT_USAGE`].
fn exit_code(result: Result<i32>) -> Result<i32> {
    match result {
        Err(Error::Config(message)) => {
            eprintln!("error: invalid configuration: {message}");
            Ok(EXIT_USAGE)
        }
        other => other,
    }
}

impl IdentityArgs {
    /// Runs the identity service until `shutdown`, or the bootstrap action;
    /// returns the process exit status.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<i32> {
        exit_code(self.run_inner(shutdown).await.map(|()| 0))
    }

    async fn run_inner(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        match self.action {
            Some(IdentityAction::Bootstrap(args)) => return args.run(),
            Some(IdentityAction::Rotate(args)) => return args.run().await,
            None => {}
        }
        let config = self.serve.config()?;
        crate::run(config, shutdown, |started| {
            println!("tessera identity listening on {}", started.addr);
            println!("tessera identity admin on http://{}", started.admin_addr);
        })
        .await
    }
}

impl ServeArgs {
    fn config(self) -> Result<Config> {
        let (trust_anchors, issuer, kube) = self.sources.resolve()?;
        if self.issuance_lifetime.is_zero() {
            return Err(Error::Config("--issuance-lifetime must be positive".to_owned()));
        }
        let renew = match (self.renew.issuer_renew_before, self.renew.anchor_dir) {
            (Some(renew_before), Some(anchor_dir)) => {
                let renew = RenewConfig { anchor_dir, validity: self.renew.issuer_validity, renew_before };
                renew.validate()?;
                Some(renew)
            }
            _ => None,
        };
        Ok(Config {
            renew,
            addr: self.addr,
            admin_addr: self.admin_addr,
            trust_anchors,
            issuer,
            kube,
            naming: self.naming.naming(),
            policy: IssuancePolicy { lifetime: self.issuance_lifetime, clock_skew: self.clock_skew_allowance },
        })
    }
}

impl SourceArgs {
    fn resolve(self) -> Result<(AnchorsSource, IssuerSource, KubeSource)> {
        let anchors = match (self.trust_anchors_configmap, self.trust_anchors) {
            (Some(configmap), _) => AnchorsSource::configmap(&configmap)?,
            (None, Some(file)) => AnchorsSource::File(file),
            (None, None) => return Err(Error::Config("--trust-anchors or --trust-anchors-configmap is required".to_owned())),
        };
        let issuer = match (self.issuer_dir, self.issuer_secret) {
            (Some(dir), None) => IssuerSource::Dir(dir),
            (None, Some(secret)) => {
                let (namespace, name) = secret
                    .split_once('/')
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                    .ok_or_else(|| Error::Config(format!("--issuer-secret must be NAMESPACE/NAME, got {secret:?}")))?;
                IssuerSource::Secret { namespace: namespace.to_owned(), name: name.to_owned() }
            }
            (None, None) => {
                return Err(Error::Config("one of --issuer-dir or --issuer-secret is required".to_owned()));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Config("--issuer-dir and --issuer-secret are exclusive".to_owned()));
            }
        };
        let kube = self.kubeconfig.map_or(KubeSource::Infer, KubeSource::Kubeconfig);
        Ok((anchors, issuer, kube))
    }
}

impl NamingArgs {
    fn naming(self) -> IdentityNaming {
        IdentityNaming { control_namespace: self.controller_namespace, trust_domain: self.trust_domain }
    }
}

impl BootstrapArgs {
    /// Writes the files and prints what it wrote.
    pub fn run(self) -> Result<()> {
        let config = BootstrapConfig {
            out: self.out,
            anchor_validity: self.anchor_validity,
            issuer_validity: self.issuer_validity,
            naming: self.naming.naming(),
            anchor_dir: self.anchor_dir,
        };
        let done = bootstrap::bootstrap(&config, OffsetDateTime::now_utc())?;
        for file in &done.files {
            println!("wrote {}", file.display());
        }
        if config.anchor_dir.is_none() {
            println!("trust anchor valid until {}", pki::rfc3339(done.anchor_not_after));
        }
        println!("issuer valid until {}", pki::rfc3339(done.issuer_not_after));
        Ok(())
    }
}

impl RotateArgs {
    /// `--status`, `--dry-run`, or the rotation itself (to the end, or to a
    /// step timeout, which is an error naming the proxies holding it up).
    pub async fn run(self) -> Result<()> {
        use crate::rotate::{self, IssuerTarget, KubeCluster, Mode, RotateOptions};
        let target = match (self.issuer_dir, self.issuer_secret) {
            (Some(dir), None) => Some(IssuerTarget::Dir(dir)),
            (None, Some(secret)) => {
                let (namespace, name) = secret
                    .split_once('/')
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                    .ok_or_else(|| Error::Config(format!("--issuer-secret must be NAMESPACE/NAME, got {secret:?}")))?;
                Some(IssuerTarget::Secret { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => None,
        };
        let kube = self.kubeconfig.map_or(KubeSource::Infer, KubeSource::Kubeconfig);
        let naming = self.naming.naming();
        if self.status {
            let cluster = KubeCluster::new(kube.client().await?, naming.control_namespace.clone(), target);
            print!("{}", rotate::status(&cluster).await.map_err(|e| Error::Rotate(Box::new(e)))?);
            return Ok(());
        }
        let anchor_dir = self.anchor_dir.ok_or_else(|| Error::Config("--anchor-dir is required".to_owned()))?;
        let target = target.ok_or_else(|| Error::Config("one of --issuer-dir or --issuer-secret is required".to_owned()))?;
        if self.step_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err(Error::Config("--step-timeout and --poll-interval must be positive".to_owned()));
        }
        let target_text = match &target {
            IssuerTarget::Dir(dir) => format!("directory {}", dir.display()),
            IssuerTarget::Secret { namespace, name } => format!("Secret {namespace}/{name}"),
        };
        let options = RotateOptions {
            mode: if self.issuer_only { Mode::IssuerOnly } else { Mode::Full },
            anchor_dir,
            naming: naming.clone(),
            anchor_validity: self.anchor_validity,
            issuer_validity: self.issuer_validity,
            step_timeout: self.step_timeout,
            poll_interval: self.poll_interval,
        };
        let cluster = KubeCluster::new(kube.client().await?, naming.control_namespace, Some(target));
        if self.dry_run {
            print!("{}", rotate::plan(&cluster, &options, &target_text).await.map_err(|e| Error::Rotate(Box::new(e)))?);
            return Ok(());
        }
        let mut console = rotate::Console::default();
        rotate::run(&cluster, &options, &mut console).await.map(|_| ()).map_err(|e| Error::Rotate(Box::new(e)))
    }
}

impl CheckArgs {
    /// Runs the checks and prints the report; the exit status is 1 when any
    /// check failed (×), 64 for invalid flags, else 0.
    pub async fn run(self) -> Result<i32> {
        exit_code(self.run_inner().await)
    }

    async fn run_inner(self) -> Result<i32> {
        let (trust_anchors, issuer, kube) = self.sources.resolve()?;
        let config = CheckConfig { trust_anchors, issuer, kube, identity_addr: self.identity_addr, naming: self.naming.naming(), proxy: self.proxy };
        let report = check::run_checks(&config, OffsetDateTime::now_utc()).await;
        match self.output {
            Output::Text => print!("{}", report.render_text()),
            Output::Json => println!("{}", report.render_json()),
        }
        Ok(if report.failures() == 0 { 0 } else { 1 })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    #[allow(clippy::large_enum_variant)]
    enum Command {
        Identity(IdentityArgs),
        Check(CheckArgs),
    }

    fn identity(args: &[&str]) -> IdentityArgs {
        match Cli::try_parse_from([&["tessera", "identity"], args].concat()).unwrap().command {
            Command::Identity(a) => a,
            Command::Check(_) => unreachable!(),
        }
    }

    #[test]
    fn serve_flags_become_a_config() {
        let args = identity(&["--trust-anchors", "ca.crt", "--issuer-secret", "linkerd/linkerd-identity-issuer", "--addr", "127.0.0.1:0"]);
        let config = args.serve.config().unwrap();
        assert_eq!(config.issuer, IssuerSource::Secret { namespace: "linkerd".to_owned(), name: "linkerd-identity-issuer".to_owned() });
        assert_eq!(config.kube, KubeSource::Infer);
        assert_eq!(config.naming, IdentityNaming::default());
        assert_eq!(config.policy, IssuancePolicy::default());
    }

    #[test]
    fn bad_serve_flags_are_refused() {
        let err = identity(&["--issuer-dir", "x"]).serve.config().unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: --trust-anchors or --trust-anchors-configmap is required");
        let args = identity(&["--trust-anchors-configmap", "linkerd/tessera-identity-trust-roots", "--issuer-dir", "x"]);
        assert_eq!(
            args.serve.config().unwrap().trust_anchors,
            AnchorsSource::ConfigMap { namespace: "linkerd".into(), name: "tessera-identity-trust-roots".into() }
        );
        let err = identity(&["--trust-anchors-configmap", "nope", "--issuer-dir", "x"]).serve.config().unwrap_err();
        assert_eq!(err.to_string(), r#"invalid configuration: --trust-anchors-configmap must be NAMESPACE/NAME, got "nope""#);
        assert!(Cli::try_parse_from(["tessera", "identity", "--trust-anchors", "a", "--trust-anchors-configmap", "a/b", "--issuer-dir", "x"]).is_err());
        let err = identity(&["--trust-anchors", "a"]).serve.config().unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: one of --issuer-dir or --issuer-secret is required");
        let err = identity(&["--trust-anchors", "a", "--issuer-secret", "nope"]).serve.config().unwrap_err();
        assert_eq!(err.to_string(), r#"invalid configuration: --issuer-secret must be NAMESPACE/NAME, got "nope""#);
        assert!(Cli::try_parse_from(["tessera", "identity", "--issuer-dir", "x", "--issuer-secret", "a/b"]).is_err());
    }

    #[test]
    fn renewal_flags_need_the_anchor_dir() {
        let base = ["--trust-anchors", "ca.crt", "--issuer-dir", "d"];
        let config = identity(&[&base[..], &["--anchor-dir", "a", "--issuer-renew-before", "1m", "--issuer-duration", "2m"]].concat())
            .serve
            .config()
            .unwrap();
        assert_eq!(
            config.renew,
            Some(RenewConfig { anchor_dir: PathBuf::from("a"), validity: Duration::from_secs(120), renew_before: Duration::from_secs(60) })
        );
        assert_eq!(identity(&base).serve.config().unwrap().renew, None);
        assert!(Cli::try_parse_from([&["tessera", "identity"], &base[..], &["--issuer-renew-before", "1m"]].concat()).is_err());
        let err = identity(&[&base[..], &["--anchor-dir", "a", "--issuer-renew-before", "48h"]].concat()).serve.config().unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: --issuer-renew-before (2days) must be shorter than --issuer-validity (2days)");
    }

    #[test]
    fn bootstrap_parses_durations() {
        let args = identity(&["bootstrap", "--out", "d", "--issuer-validity", "720h"]);
        let Some(IdentityAction::Bootstrap(b)) = args.action else { panic!("{args:?}") };
        assert_eq!(b.issuer_validity, Duration::from_secs(720 * 3600));
        assert_eq!(b.anchor_validity, Duration::from_secs(87600 * 3600));
    }

    #[test]
    fn check_takes_json_output() {
        let Command::Check(c) =
            Cli::try_parse_from(["tessera", "check", "--output", "json", "--trust-anchors", "a", "--issuer-dir", "d"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(c.output, Output::Json);
    }
}
