//! Load tool for any `io.linkerd.proxy.identity.Identity/Certify` service
//! (tessera's or Linkerd's): N concurrent clients send real CSRs with one
//! token for a bounded time; prints certificates per second and latency.
//!
//! ```sh
//! cargo run --release -p tessera-identity --example certify_load -- \
//!   --addr 127.0.0.1:8080 --token-file web.token \
//!   --identity web.emojivoto.serviceaccount.identity.linkerd.cluster.local
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

/// Certify load generator.
#[derive(Debug, Parser)]
struct Args {
    /// host:port of the identity service.
    #[arg(long, env = "TESSERA_LOAD_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// File holding a ServiceAccount token for audience identity.l5d.io.
    #[arg(long, env = "TESSERA_LOAD_TOKEN_FILE")]
    token_file: PathBuf,
    /// Identity to request (must match the token's ServiceAccount).
    #[arg(long, env = "TESSERA_LOAD_IDENTITY")]
    identity: String,
    /// Concurrent clients (each with its own HTTP/2 connection).
    #[arg(long, env = "TESSERA_LOAD_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// How long to run (bounded).
    #[arg(long, env = "TESSERA_LOAD_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)?.trim().to_owned();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![args.identity.clone()])?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?.der().to_vec();
    let request = CertifyRequest { identity: args.identity.clone(), token: token.into_bytes(), certificate_signing_request: csr };

    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?.connect().await?;
        let mut client = IdentityClient::new(channel);
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while tokio::time::Instant::now() < deadline {
                let started = tokio::time::Instant::now();
                match client.certify(request.clone()).await {
                    Ok(_) => latencies.push(started.elapsed()),
                    Err(status) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("first error: {:?}: {}", status.code(), status.message());
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
    println!(
        "certify: {} certs in {:?} = {:.0} certs/s with {} clients; p50 {:?} p99 {:?}; errors {errors}",
        latencies.len(),
        args.duration,
        latencies.len() as f64 / args.duration.as_secs_f64(),
        args.concurrency,
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}
