//! `tessera agent`: join the cluster as a node (`tessera agent join`), then
//! run as that node for pod spec files, or run one command as a pod
//! (`tessera agent run --sa api -n api -- CMD…`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::environment::{EnvVar, PodContext, workload_env};
use crate::files::OutputRoot;
use crate::heartbeat::PodKey;
use crate::mesh;
use crate::node::NodeCredentials;
use crate::pod::{PodSpec, ProjectedToken};
use crate::projector::{Agent, Layout};
use crate::status::{self, Exit, Process};

/// `tessera agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The node's credentials (key, certificate, kubeconfig) written by `tessera agent join`:
    /// created 0700 if missing, refused if others may enter it. One agent runs per directory.
    #[arg(long, env = "TESSERA_AGENT_CERT_DIR", default_value = "./tessera-node", global = true)]
    pub cert_dir: PathBuf,
    /// Duration of the node's heartbeat Lease, renewed every quarter of it; when renewals
    /// stop, the server marks the pods not ready, then deletes them after its eviction timeout.
    #[arg(long, env = "TESSERA_AGENT_LEASE_DURATION", default_value = "40s", value_parser = parse_lease_duration, global = true)]
    pub lease_duration: Duration,
    /// Refresh tokens this often instead of at 80 % of their lifetime (for testing rotation).
    #[arg(long, env = "TESSERA_AGENT_REFRESH_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub refresh_interval: Option<Duration>,
    /// Directory for per-pod roots (`ROOT/NAMESPACE/POD/`, each volume at its mount path below):
    /// created 0700 if missing;
    /// refused if another user owns it, group or others can write into it, or it is a symbolic link.
    #[arg(long, env = "TESSERA_AGENT_ROOT", default_value = "./tessera-agent")]
    pub root: PathBuf,
    /// Pod spec files (YAML or JSON): a Pod manifest (`kind: Pod`), or the small format
    /// (namespace, name, serviceAccountName, automountServiceAccountToken, tokens[]).
    #[arg(long = "pod")]
    pub pods: Vec<PathBuf>,
    /// Run one command as a pod instead.
    #[command(subcommand)]
    pub action: Option<AgentAction>,
}

/// Sub-actions of `tessera agent`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentAction {
    /// Run a command as a pod with projected tokens; the pod is deleted when it exits.
    Run(RunArgs),
    /// Join the cluster as a node: obtain the node's client certificate with a bootstrap token.
    Join(JoinArgs),
    /// Internal: how the agent starts an app so that it dies with the agent.
    #[command(hide = true)]
    Exec(crate::orphan::ExecArgs),
}

/// `tessera agent join` flags.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Name of the node (a DNS subdomain; default: this host's name).
    #[arg(long, env = "TESSERA_AGENT_NODE")]
    pub node: Option<String>,
    /// URL of the API server, e.g. https://127.0.0.1:6443.
    #[arg(long, env = "TESSERA_AGENT_SERVER")]
    pub server: String,
    /// The cluster CA certificate (PEM), e.g. the server's `pki/ca.crt`.
    #[arg(long = "certificate-authority", env = "TESSERA_AGENT_CERTIFICATE_AUTHORITY")]
    pub certificate_authority: PathBuf,
    /// A short-lived bootstrap token: `kubectl create token node-bootstrapper -n kube-system --duration 10m`.
    #[arg(long, env = "TESSERA_BOOTSTRAP_TOKEN", required_unless_present = "token_file", conflicts_with = "token_file", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bootstrap token (keeps it out of the process list).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// A lease shorter than a second cannot be renewed in time.
fn parse_lease_duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{raw:?} is shorter than a second"));
    }
    Ok(duration)
}

/// `tessera agent run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// ServiceAccount of the pod.
    #[arg(long = "sa", default_value = "default")]
    pub service_account: String,
    /// Namespace of the pod.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Pod name (default: the ServiceAccount name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Extra projected token: `audience=A,expiration=600,path=FILE` (repeatable).
    #[arg(long = "token", value_parser = parse_token)]
    pub tokens: Vec<ProjectedToken>,
    /// Set `automountServiceAccountToken: false` on the pod.
    #[arg(long)]
    pub no_automount: bool,
    /// Root of the Kubernetes-style file layout (default: a fresh temporary directory);
    /// refused if another user owns it, group or others can write into it, or it is a symbolic link.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Set a variable in the command's environment (repeatable). The command gets a
    /// container's environment, not the agent's: PATH, locale, TZ, TERM, HOME (the pod's
    /// root), TESSERA_TOKEN_DIR, TESSERA_SA_DIR, TESSERA_API_SERVER, TESSERA_NAMESPACE,
    /// TESSERA_POD_NAME, and these.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<EnvVar>,
    /// A label of the pod, KEY=VALUE (repeatable): what a Service's selector matches.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The proxy beside the workload (`--mesh` and its flags).
    #[command(flatten)]
    pub mesh: mesh::MeshArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))?;
    // The server validates the label itself (kube's rules, kube's message).
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_token(raw: &str) -> Result<ProjectedToken, String> {
    let mut token = ProjectedToken { audience: String::new(), expiration_seconds: 3600, path: String::new() };
    for part in raw.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("expected key=value in {part:?}"))?;
        match k.trim() {
            "audience" => token.audience = v.trim().to_owned(),
            "expiration" | "expirationSeconds" => token.expiration_seconds = v.trim().parse().map_err(|_| format!("bad expiration {v:?}"))?,
            "path" => token.path = v.trim().to_owned(),
            other => {
                return Err(format!("unknown token field {other:?} (audience, expiration, path)"));
            }
        }
    }
    // Paths are checked with the whole pod spec (uniqueness needs every token).
    Ok(token)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Runs `tessera agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<i32> {
    if let Some(AgentAction::Exec(exec)) = &args.action {
        // Synchronous up to the exec: the parent-death signal is set on, and
        // the exec made from, one thread.
        return Ok(crate::orphan::exec(exec));
    }
    if let Some(AgentAction::Join(join)) = &args.action {
        return join_cluster(&args.cert_dir, join).await.map(|()| 0);
    }
    let credentials = NodeCredentials::open(&args.cert_dir)?;
    let agent = Agent::connect(&credentials, args.refresh_interval).await?;
    agent.register_node().await?;
    let (running_tx, running_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let heartbeat = {
        let (agent, stop) = (agent.clone(), stopped());
        tokio::spawn(async move { agent.heartbeat(args.lease_duration, running_rx, stop).await })
    };
    let renewal = {
        let (agent, stop) = (agent.clone(), stopped());
        tokio::spawn(async move { agent.keep_certificate_fresh(&credentials, stop).await })
    };
    let result = match args.action {
        Some(AgentAction::Run(run)) => run_command(agent, run, &running_tx).await,
        _ => run_pods(agent, args.root, args.pods, &running_tx).await.map(|()| 0),
    };
    let _ = stop_tx.send(true);
    let _ = heartbeat.await;
    let _ = renewal.await;
    result
}

/// `tessera agent join`.
async fn join_cluster(cert_dir: &std::path::Path, join: &JoinArgs) -> anyhow::Result<()> {
    let node = match &join.node {
        Some(node) => node.clone(),
        None => crate::node::host_name().context("this host's name is not a valid node name: pass --node")?,
    };
    let token = match (&join.token, &join.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        (None, None) => anyhow::bail!("pass --token or --token-file"),
    };
    let ca = std::fs::read_to_string(&join.certificate_authority).with_context(|| format!("reading {}", join.certificate_authority.display()))?;
    let credentials = NodeCredentials::open(cert_dir)?;
    crate::node::join(&credentials, &node, &join.server, &ca, &token).await?;
    let (_, not_after) = credentials.certificate_validity()?;
    let until = jiff::Timestamp::from_second(not_after).map(|t| t.to_string()).unwrap_or_default();
    println!("tessera agent: joined as node {node}; credentials in {} (certificate valid until {until}, renewed by the running agent)", cert_dir.display());
    Ok(())
}

async fn run_pods(agent: Agent, root: PathBuf, files: Vec<PathBuf>, running: &tokio::sync::watch::Sender<BTreeSet<PodKey>>) -> anyhow::Result<()> {
    anyhow::ensure!(!files.is_empty(), "no pods to run: pass --pod FILE (or use `tessera agent run`)");
    let mut specs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let spec = PodSpec::parse(&text).map_err(anyhow::Error::msg).with_context(|| format!("parsing {}", file.display()))?;
        spec.validate().with_context(|| format!("{}: invalid pod {}/{}", file.display(), spec.namespace, spec.name))?;
        specs.push(spec);
    }
    // Checked before any pod is registered: a refused root changes nothing.
    let root = Arc::new(OutputRoot::open(&root)?);
    // This node runs exactly these pods now: any other pod bound to it is a
    // previous run's, and goes (with its tokens).
    let keep: BTreeSet<PodKey> = specs.iter().map(|s| (s.namespace.clone(), s.name.clone())).collect();
    agent.collect_orphans(&keep).await?;
    let mut pods = Vec::new();
    for spec in &specs {
        pods.push(agent.register(spec).await?);
    }
    running.send_replace(keep);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // No process runs these pods: the agent itself does, projecting their files.
    let agent_process = Process { container_id: format!("tessera-agent://{}", std::process::id()), image_id: String::new(), started_at: now() };
    for pod in pods.clone() {
        let agent = agent.clone();
        let layout = Layout::per_pod(root.clone(), &pod.spec.namespace, &pod.spec.name);
        let mut rx = stop_rx.clone();
        let process = agent_process.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let slots = agent.project_once(&pod, &layout).await?;
            tracing::info!(dir = %layout.pod_root().display(), "files projected");
            if let Err(e) = agent.report_status(&pod.spec.namespace, &pod.spec.name, status::running(&pod.object, &process)).await {
                // The files are there either way; the heartbeat reports it again.
                tracing::warn!(error = %e, "reporting the pod running failed");
            }
            agent.keep_fresh(&pod, &layout, slots, stop).await;
            Ok::<_, crate::projector::AgentError>(())
        }));
    }
    println!("tessera agent: {} pod(s) projected under {}", pods.len(), root.path().display());
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for task in tasks {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "projection ended with an error");
        }
    }
    for pod in &pods {
        agent.unregister(pod).await?;
    }
    Ok(())
}

async fn run_command(agent: Agent, run: RunArgs, running: &tokio::sync::watch::Sender<BTreeSet<PodKey>>) -> anyhow::Result<i32> {
    let name = run.name.clone().unwrap_or_else(|| {
        let suffix: String = (0..5).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect();
        format!("{}-{suffix}", run.service_account)
    });
    let mut spec = PodSpec {
        namespace: run.namespace.clone(),
        name,
        service_account_name: run.service_account.clone(),
        automount_service_account_token: run.no_automount.then_some(false),
        tokens: run.tokens.clone(),
        labels: run.labels.iter().cloned().collect(),
        container_port: run.mesh.port,
        ..PodSpec::default()
    };
    if run.mesh.mesh {
        run.mesh.required()?;
        // The proxy asks the destination API with the pod's ServiceAccount token.
        anyhow::ensure!(
            !run.no_automount,
            "--mesh needs the ServiceAccount token (the proxy authenticates to the destination API with it): drop --no-automount"
        );
        spec.tokens.push(mesh::identity_token());
        spec.proxy = Some(crate::pod::ProxyContainer { admin_port: run.mesh.proxy_admin_port });
        spec.annotations.insert(mesh::INJECT_ANNOTATION.into(), "enabled".into());
        spec.annotations.insert(mesh::ADMIN_PORT_ANNOTATION.into(), run.mesh.proxy_admin_port.to_string());
    }
    spec.validate().with_context(|| format!("invalid pod {}/{}", spec.namespace, spec.name))?;
    let (root, _temp) = match &run.root {
        Some(root) => (root.clone(), None),
        None => {
            // A fresh, unpredictable directory that must not exist yet: another
            // local user cannot have prepared it (or symlinks in it).
            let dir = std::env::temp_dir().join(format!("tessera-agent-{}-{:016x}", spec.name, rand::random::<u64>()));
            {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            (dir.clone(), Some(TempDir(dir)))
        }
    };
    // Checked before the pod is registered: a refused root changes nothing.
    let layout = Layout::kubernetes(Arc::new(OutputRoot::open(&root)?));
    let keep = BTreeSet::from([(spec.namespace.clone(), spec.name.clone())]);
    agent.collect_orphans(&keep).await?;
    // A meshed pod's address, before it is registered (no proxy is started yet).
    let pod_ip = match run.mesh.mesh {
        true => Some(allocate_pod_ip(&agent, &spec, &run.mesh).await?),
        false => None,
    };
    let pod = agent.register(&spec).await?;
    running.send_replace(keep);
    let slots = match agent.project_once(&pod, &layout).await {
        Ok(slots) => slots,
        Err(e) => {
            agent.unregister(&pod).await?;
            return Err(e.into());
        }
    };
    let (program, args) = run.command.split_first().context("no command given")?;
    let (tokens_dir, service_account_dir) = (layout.tokens_dir(), layout.service_account_dir());
    let launch = match pod_ip {
        Some(pod_ip) => {
            let (port, identity_addr, anchors) = run.mesh.required()?;
            let launch = mesh::ProxyLaunch {
                namespace: spec.namespace.clone(),
                pod: spec.name.clone(),
                identity: run.mesh.identity(&spec.namespace, &pod.service_account),
                pod_ip,
                port,
                app_port: match run.mesh.app_port {
                    Some(port) => port,
                    None => mesh::free_port()?,
                },
                admin_port: run.mesh.proxy_admin_port,
                outbound_port: mesh::free_port()?,
                identity_addr: identity_addr.to_owned(),
                trust_anchors: anchors,
                token_file: tokens_dir.join(mesh::IDENTITY_TOKEN_PATH),
                service_account_dir: service_account_dir.clone(),
                api_server: agent.server_url().to_owned(),
                policy: run.mesh.proxy_policy == "on",
            };
            Some(launch)
        }
        None => None,
    };
    let pod_context = PodContext {
        root: layout.root(),
        tokens_dir: &tokens_dir,
        service_account_dir: &service_account_dir,
        api_server: agent.server_url(),
        namespace: &spec.namespace,
        pod_name: &spec.name,
    };
    let mut user_env = launch.as_ref().map(mesh::ProxyLaunch::app_env).unwrap_or_default();
    // The user's own --env last: they win.
    user_env.extend(run.env.iter().cloned());
    let env = workload_env(std::env::vars_os(), pod_context, &user_env);
    // The proxy first: the app may call out at once.
    let mut proxy = match &launch {
        Some(launch) => match start_proxy(launch, env.get(std::ffi::OsStr::new("PATH"))) {
            Ok(proxy) => Some(proxy),
            Err(e) => {
                agent.unregister(&pod).await?;
                return Err(e);
            }
        },
        None => None,
    };
    let image_id = resolve_program(program, env.get(std::ffi::OsStr::new("PATH"))).map(|p| format!("file://{}", p.display())).unwrap_or_default();
    // Started through `tessera agent exec` so that it dies with the agent
    // (see `orphan`); a missing program is reported here, as before.
    let spawned = if !resolve_program(program, env.get(std::ffi::OsStr::new("PATH"))).is_some_and(|p| p.is_file()) {
        Err(std::io::Error::from_raw_os_error(2))
    } else {
        crate::orphan::command(program, args).and_then(|mut command| {
            command
                // A container's environment, never the agent's (KUBECONFIG, credentials): see `environment`.
                .env_clear()
                .envs(env)
                .kill_on_drop(true)
                .spawn()
        })
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            if let Some((proxy, _)) = &mut proxy {
                let _ = proxy.kill().await;
            }
            agent.unregister(&pod).await?;
            return Err(anyhow::Error::new(e).context(format!("starting {program}")));
        }
    };
    let process = Process { container_id: format!("tessera-agent://{}", child.id().unwrap_or_default()), image_id, started_at: now() };
    let mut mesh_status = proxy.as_ref().zip(launch.as_ref()).map(|((_, proxy_process), launch)| status::Mesh {
        pod_ip: launch.pod_ip.to_string(),
        proxy: proxy_process.clone(),
        proxy_ready: false,
    });
    if let Err(e) = agent.report_status(&spec.namespace, &spec.name, status::running_meshed(&pod.object, &process, mesh_status.as_ref())).await {
        tracing::warn!(error = %e, "reporting the pod running failed; the heartbeat reports it again");
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let refresher = {
        let (agent, pod, layout) = (agent.clone(), pod.clone(), layout.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            agent.keep_fresh(&pod, &layout, slots, stop).await;
        })
    };
    // The proxy's trust state goes on its Pod (rotation and checks read it there).
    let trust_reporter = launch.as_ref().map(|launch| {
        let mut stop_rx = stop_tx.subscribe();
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        tokio::spawn(crate::trust::follow(agent.clone(), spec.namespace.clone(), spec.name.clone(), launch.admin(), stop))
    });
    // The pod is Ready once its proxy is (it has a certificate and serves).
    let exit = {
        let ready = async {
            let Some(launch) = &launch else {
                return std::future::pending().await;
            };
            while !mesh::is_ready(launch.admin()).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::pin!(ready);
        let mut ready_done = launch.is_none();
        let proxy_exited = async {
            match &mut proxy {
                Some((proxy, _)) => proxy.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(proxy_exited);
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                status = child.wait() => break status.ok(),
                () = &mut ready, if !ready_done => {
                    ready_done = true;
                    if let Some(mesh) = &mut mesh_status {
                        mesh.proxy_ready = true;
                        tracing::info!(pod_ip = %mesh.pod_ip, "the proxy is ready");
                        if let Err(e) = agent.report_status(&spec.namespace, &spec.name, status::running_meshed(&pod.object, &process, Some(mesh))).await {
                            tracing::warn!(error = %e, "reporting the pod ready failed; the heartbeat reports it again");
                        }
                    }
                }
                proxy_status = &mut proxy_exited => {
                    // The agent restarts nothing: a pod without its proxy ends.
                    tracing::error!(status = ?proxy_status, "the proxy exited; stopping the workload");
                    let _ = child.kill().await;
                    break child.wait().await.ok();
                }
                () = &mut shutdown => {
                    let _ = child.kill().await;
                    break child.wait().await.ok();
                }
            }
        }
    };
    // The app is gone: its proxy goes with it.
    if let Some((proxy, _)) = &mut proxy {
        stop_proxy(proxy).await;
    }
    let _ = stop_tx.send(true);
    let _ = refresher.await;
    if let Some(reporter) = trust_reporter {
        let _ = reporter.await;
    }
    // The pod no longer runs: heartbeats stop reporting it running, and its
    // end is reported as kubelet reports it before the pod (and its tokens) go.
    running.send_replace(BTreeSet::new());
    let code = exit.map_or(1, |s| s.code().unwrap_or(1));
    let reported = Exit { code: exit.map_or(1, |s| s.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig)).unwrap_or(1)) };
    if let Err(e) =
        agent.report_status(&spec.namespace, &spec.name, status::terminated_meshed(&pod.object, &process, mesh_status.as_ref(), reported, &now())).await
    {
        tracing::warn!(error = %e, "reporting the pod's end failed");
    }
    agent.unregister(&pod).await?;
    Ok(code)
}

/// The meshed pod's address: deterministic for cluster, node and pod, skipping one
/// another pod of this node reports or whose ports are bound on this host.
async fn allocate_pod_ip(agent: &Agent, spec: &PodSpec, args: &mesh::MeshArgs) -> anyhow::Result<std::net::Ipv4Addr> {
    let taken: Vec<std::net::Ipv4Addr> = agent
        .own_pods()
        .await?
        .into_iter()
        .filter(|p| !(p.metadata.namespace.as_deref() == Some(spec.namespace.as_str()) && p.metadata.name.as_deref() == Some(spec.name.as_str())))
        .filter_map(|p| p.status?.pod_ip?.parse().ok())
        .collect();
    let (port, _, _) = args.required()?;
    let ip = mesh::allocate_pod_ip(agent.server_url(), agent.node(), &spec.namespace, &spec.name, &taken, &[port, args.proxy_admin_port])?;
    tracing::info!(%ip, "pod address");
    Ok(ip)
}

/// Starts the pod's proxy with a container's environment: `tessera-proxy`
/// beside this binary, else `tessera proxy` (this very binary).
fn start_proxy(launch: &mesh::ProxyLaunch, path: Option<&std::ffi::OsString>) -> anyhow::Result<(tokio::process::Child, Process)> {
    let exe = std::env::current_exe().context("finding the tessera binary to run the proxy")?;
    let program = mesh::ProxyProgram::beside(&exe);
    let mut command = tokio::process::Command::new(program.path());
    // `--parent-pid`: the proxy dies with this agent, even a SIGKILLed one.
    command
        .args(program.leading_args())
        .args(launch.args())
        .args(["--parent-pid", &std::process::id().to_string()])
        .env_clear()
        .kill_on_drop(true);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    // The proxy logs as the agent does.
    for var in ["TESSERA_LOG", "RUST_LOG"] {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    let child = command.spawn().with_context(|| format!("starting the proxy {}", program.path().display()))?;
    let process = Process {
        container_id: format!("tessera-agent://{}", child.id().unwrap_or_default()),
        image_id: format!("file://{}", program.path().display()),
        started_at: now(),
    };
    tracing::info!(pid = child.id().unwrap_or_default(), program = %program.path().display(), inbound = %std::net::SocketAddr::from((launch.pod_ip, launch.port)), admin = %launch.admin(), "proxy started");
    Ok((child, process))
}

/// SIGTERM, then SIGKILL after 5 s (kubelet's grace, shortened).
async fn stop_proxy(proxy: &mut tokio::process::Child) {
    if let Some(pid) = proxy.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), proxy.wait()).await.is_ok() {
            return;
        }
    }
    let _ = proxy.kill().await;
}

/// Now, RFC 3339 to the second (as kubelet's timestamps).
fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

/// The file a command runs: itself when it names a path, else the first
/// match on the workload's PATH.
fn resolve_program(program: &str, path: Option<&std::ffi::OsString>) -> Option<PathBuf> {
    if program.contains('/') {
        return std::path::absolute(program).ok();
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Removes a temporary directory on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_flag() {
        let t = parse_token("audience=data-store,expiration=600,path=api-token").unwrap();
        assert_eq!((t.audience.as_str(), t.expiration_seconds, t.path.as_str()), ("data-store", 600, "api-token"));
        assert!(parse_token("audience=a,path=x,colour=red").is_err());
        assert!(parse_token("audience").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn join_and_node_flags() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "agent",
            "--cert-dir",
            "/n1",
            "join",
            "--node",
            "n1",
            "--server",
            "https://s",
            "--certificate-authority",
            "ca.crt",
            "--token",
            "t",
        ])
        .unwrap();
        let Some(AgentAction::Join(join)) = cli.agent.action else { panic!("not join") };
        assert_eq!((join.node.as_deref(), join.token.as_deref()), (Some("n1"), Some("t")));
        assert_eq!(cli.agent.cert_dir, PathBuf::from("/n1"));
        assert_eq!(cli.agent.lease_duration, Duration::from_secs(40));
        assert!(Cli::try_parse_from(["agent", "join", "--server", "https://s", "--certificate-authority", "ca.crt"]).is_err(), "a token is required");
        assert!(Cli::try_parse_from(["agent", "--lease-duration", "500ms", "run", "--", "true"]).is_err());
        let cli = Cli::try_parse_from(["agent", "--lease-duration", "4s", "run", "--sa", "api", "--", "true"]).unwrap();
        assert_eq!(cli.agent.lease_duration, Duration::from_secs(4));
    }
}
