//! The `tessera` binary: parses arguments, sets up logging and the TLS crypto
//! provider, and hands over to the component crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Directory for the store, certificates and admin.kubeconfig (created if missing).
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    data_dir: PathBuf,
    /// Address to serve HTTPS on; port 0 picks a free port.
    #[arg(long, env = "TESSERA_BIND", default_value = "127.0.0.1:6443")]
    bind: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server(args).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = tessera_apiserver::Config { data_dir: args.data_dir.clone(), bind: args.bind };
    tessera_apiserver::run(config, shutdown_signal(), |started| {
        let kubeconfig = std::fs::canonicalize(&started.kubeconfig).unwrap_or_else(|_| started.kubeconfig.clone());
        println!("tessera server listening on https://{}", started.addr);
        println!("kubeconfig: {}", kubeconfig.display());
        println!("export KUBECONFIG={}", kubeconfig.display());
    })
    .await
    .with_context(|| format!("tessera server (data dir {})", args.data_dir.display()))
}
