//! `tessera proxy` alone, for benchmarks: the same `ProxyArgs` and `run` as
//! the `tessera` binary, without the API server, identity and agent linked
//! in, so a release build of the proxy takes minutes rather than most of an
//! hour on a shared machine (`scripts/bench-proxy.sh`, `PROXY_BIN`).
//!
//! cargo build --release -p tessera-proxy --example proxy
//! target/release/examples/proxy proxy --identity … (the leading `proxy` is optional)

use clap::Parser as _;

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: tessera_proxy::config::ProxyArgs,
}

fn main() -> std::process::ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("proxy") {
        argv.remove(1);
    }
    let cli = Cli::parse_from(argv);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match cli.args.runtime_builder().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(cli.args.run(shutdown)) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
