//! `tessera agent`: run as a node agent for pod spec files, or run one command
//! as a pod (`tessera agent run --sa api -n api -- CMD…`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::environment::{EnvVar, PodContext, workload_env};
use crate::files::OutputRoot;
use crate::pod::{PodSpec, ProjectedToken};
use crate::projector::{Agent, Layout};

/// `tessera agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Node name the agent registers pods under (`spec.nodeName`).
    #[arg(long, env = "TESSERA_AGENT_NODE", default_value = "local", global = true)]
    pub node: String,
    /// Kubeconfig of the API server (default: KUBECONFIG / ~/.kube/config / in-cluster).
    #[arg(long, env = "TESSERA_AGENT_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Refresh tokens this often instead of at 80 % of their lifetime (for testing rotation).
    #[arg(long, env = "TESSERA_AGENT_REFRESH_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub refresh_interval: Option<Duration>,
    /// Directory for per-pod token directories (`ROOT/NAMESPACE/POD/`): created 0700 if missing;
    /// refused if another user owns it, group or others can write into it, or it is a symbolic link.
    #[arg(long, env = "TESSERA_AGENT_ROOT", default_value = "./tessera-agent")]
    pub root: PathBuf,
    /// Pod spec files (YAML or JSON: namespace, name, serviceAccountName, tokens[]).
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
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_token(raw: &str) -> Result<ProjectedToken, String> {
    let mut token = ProjectedToken { audience: String::new(), expiration_seconds: 3600, path: String::new() };
    for part in raw.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("expected key=value in {part:?}"))?;
        match k.trim() {
            "audience" => token.audience = v.trim().to_owned(),
            "expiration" | "expirationSeconds" => token.expiration_seconds = v.trim().parse().map_err(|_| format!("bad expiration {v:?}"))?,
            "path" => token.path = v.trim().to_owned(),
            other => return Err(format!("unknown token field {other:?} (audience, expiration, path)")),
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
    let agent = Agent::connect(args.kubeconfig.as_deref(), &args.node, args.refresh_interval).await?;
    match args.action {
        Some(AgentAction::Run(run)) => run_command(agent, run).await,
        None => run_pods(agent, args.root, args.pods).await.map(|()| 0),
    }
}

async fn run_pods(agent: Agent, root: PathBuf, files: Vec<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(!files.is_empty(), "no pods to run: pass --pod FILE (or use `tessera agent run`)");
    let mut specs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let spec: PodSpec = serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        spec.validate().with_context(|| format!("{}: invalid pod {}/{}", file.display(), spec.namespace, spec.name))?;
        specs.push(spec);
    }
    // Checked before any pod is registered: a refused root changes nothing.
    let root = Arc::new(OutputRoot::open(&root)?);
    let mut pods = Vec::new();
    for spec in &specs {
        pods.push(agent.register(spec).await?);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for pod in pods.clone() {
        let agent = agent.clone();
        let layout = Layout::per_pod(root.clone(), &pod.spec.namespace, &pod.spec.name);
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            agent.project(&pod, &layout, || tracing::info!(dir = %layout.service_account_dir().display(), "tokens projected"), stop).await
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

async fn run_command(agent: Agent, run: RunArgs) -> anyhow::Result<i32> {
    let name = run.name.clone().unwrap_or_else(|| {
        let suffix: String = (0..5).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect();
        format!("{}-{suffix}", run.service_account)
    });
    let spec = PodSpec {
        namespace: run.namespace.clone(),
        name,
        service_account_name: run.service_account.clone(),
        automount_service_account_token: run.no_automount.then_some(false),
        tokens: run.tokens.clone(),
    };
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
    let pod = agent.register(&spec).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let projector = {
        let agent = agent.clone();
        let pod = pod.clone();
        let layout = layout.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            agent.project(&pod, &layout, move || {
                let _ = ready_tx.send(());
            }, stop).await
        })
    };
    if ready_rx.await.is_err() {
        let result = projector.await;
        agent.unregister(&pod).await?;
        return match result {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("token projection stopped before the first projection")),
        };
    }
    let (program, args) = run.command.split_first().context("no command given")?;
    let (tokens_dir, service_account_dir) = (layout.tokens_dir(), layout.service_account_dir());
    let pod_context = PodContext {
        root: layout.root(),
        tokens_dir: &tokens_dir,
        service_account_dir: &service_account_dir,
        api_server: agent.server_url(),
        namespace: &spec.namespace,
        pod_name: &spec.name,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        // A container's environment, never the agent's (KUBECONFIG, credentials): see `environment`.
        .env_clear()
        .envs(workload_env(std::env::vars_os(), pod_context, &run.env))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let code = tokio::select! {
        status = child.wait() => status.map(|s| s.code().unwrap_or(1)).unwrap_or(1),
        _ = shutdown_signal() => {
            let _ = child.kill().await;
            143
        }
    };
    let _ = stop_tx.send(true);
    let _ = projector.await;
    agent.unregister(&pod).await?;
    Ok(code)
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
}
