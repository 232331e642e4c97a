//! `tessera-example-controller`: a kube-rs `runtime::Controller` that mirrors
//! labelled ConfigMaps by server-side apply, run only by the instance that
//! holds the Lease `NAMESPACE/LEASE` (client-go's leader election algorithm).
//! Start several; one leads, and when it dies another takes over within the
//! lease duration. Reads the kubeconfig from `KUBECONFIG` like any client.

mod leader;
mod mirror;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use leader::{ElectionConfig, LeaderElector};

#[derive(Debug, Parser)]
#[command(about = "Example kube-rs controller with leader election on a Lease")]
struct Args {
    /// Namespace of the Lease and of the ConfigMaps to mirror.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "tessera-example-controller")]
    lease: String,
    /// This instance's holderIdentity.
    #[arg(long)]
    identity: String,
    /// leaseDurationSeconds.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds the leader keeps retrying a renewal before it stops leading.
    #[arg(long, default_value_t = 10)]
    renew_deadline: u64,
    /// Seconds between attempts to acquire or renew.
    #[arg(long, default_value_t = 2)]
    retry_period: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // kube is built with rustls on ring; make that the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let client = kube::Client::try_default().await.context("connecting with the kubeconfig")?;
    let mut elector = LeaderElector::new(
        client.clone(),
        ElectionConfig {
            namespace: args.namespace.clone(),
            name: args.lease.clone(),
            identity: args.identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        },
    )?;
    elector.acquire().await;
    // The end-to-end test reads this line: the instance leads from here on.
    println!("started leading as {}", args.identity);
    tokio::select! {
        () = elector.keep_renewing() => {
            // As client-go's OnStoppedLeading usually does: stop, so that no
            // reconcile runs without the lease; a supervisor restarts us.
            println!("stopped leading");
            std::process::exit(1);
        }
        () = mirror::run(client, &args.namespace, args.identity.clone()) => Ok(()),
    }
}
