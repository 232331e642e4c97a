//! `tessera-proxy`: the mesh sidecar alone, the same `ProxyArgs` and code as
//! `tessera proxy`, in an executable without the API server, identity CA,
//! agent and bench linked in (15 MB instead of 40 MB). A proxy runs beside
//! every meshed workload, and the pages of its executable count in its RSS:
//! under load `tessera proxy` peaks at 20-21 MB, 17-18 MB of it file pages,
//! where this one peaks at 12-13 MB (BENCHMARKS.md, issue 15). `tessera agent
//! run --mesh` runs it when it sits next to `tessera`, as cargo builds them.
//!
//! It keeps the system allocator: with `tessera`'s jemalloc it peaked 1-2 MB
//! higher, at the same throughput.

#[path = "../process.rs"]
mod process;

use clap::Parser as _;

/// Mesh sidecar: identity certificate over Certify, mutual TLS inbound with
/// l5d-client-id, outbound to meshed destinations, Linkerd metrics.
#[derive(Debug, clap::Parser)]
#[command(name = "tessera-proxy", version, about)]
struct Cli {
    #[command(flatten)]
    args: tessera_proxy::config::ProxyArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    process::init_logging();
    process::install_crypto_provider();
    let builder = cli.args.runtime_builder();
    process::run(builder, async move { Ok(cli.args.run(process::shutdown_signal()).await?) })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    #[test]
    fn the_agent_starts_the_sidecar_with_flags_it_takes() {
        let launch = tessera_agent::mesh::ProxyLaunch::sample();
        let argv = std::iter::once("tessera-proxy".to_owned()).chain(launch.args());
        let config = Cli::try_parse_from(argv).expect("the proxy's flags").args.config();
        assert_eq!(config.inbound[0].listen, "127.9.8.7:8080".parse().unwrap());
        assert_eq!(config.inbound[0].app, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(config.admin_addr, "127.9.8.7:4191".parse().unwrap());
        assert!(config.policy, "the agent has its proxy enforce inbound policy");
    }
}
