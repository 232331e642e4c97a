//! The data store of seed 001 ("Authentication between microservices using
//! Kubernetes identities"), written with `tessera-auth`: every request must
//! carry a ServiceAccount token valid for the audience `data-store`, which the
//! data store checks with the TokenReview API using its *own* ServiceAccount
//! token (so that ServiceAccount needs `system:auth-delegator`).
//!
//! Run it under the node agent, which provides the token files and the API
//! address:
//! `tessera agent run --sa data-store -n data-store -- data-store`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tessera_auth::{AuthLayer, CachedReviewer, JwksReviewer, TokenReviewClient};

/// Seed 001's data store.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, env = "DATA_STORE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The audience tokens must be valid for.
    #[arg(long, env = "DATA_STORE_AUDIENCE", default_value = "data-store")]
    audience: String,
    /// The API server (set by `tessera agent run`).
    #[arg(long, env = "TESSERA_API_SERVER")]
    api_server: String,
    /// Directory with this service's own `token` and `ca.crt` (set by `tessera agent run`).
    #[arg(long, env = "TESSERA_SA_DIR")]
    sa_dir: PathBuf,
    /// How long an accepted token is reused before the API is asked again: the
    /// revocation window of `--verify tokenreview` (a deleted Pod's token works
    /// at most this long).
    #[arg(long, env = "DATA_STORE_CACHE_TTL", default_value = "5")]
    cache_ttl_seconds: u64,
    /// `tokenreview` (ask the API for every new token) or `jwks` (verify offline
    /// from the issuer's keys, falling back to TokenReview; no revocation before expiry).
    #[arg(long, env = "DATA_STORE_VERIFY", default_value = "tokenreview", value_parser = ["tokenreview", "jwks"])]
    verify: String,
    /// Token issuer, for `--verify jwks`.
    #[arg(long, env = "DATA_STORE_ISSUER", default_value = "https://kubernetes.default.svc.cluster.local")]
    issuer: String,
}

/// A kube client that authenticates with the projected token file (re-read as it rotates).
fn api_client(args: &Args) -> anyhow::Result<kube::Client> {
    let ca_pem = std::fs::read(args.sa_dir.join("ca.crt")).context("reading ca.crt")?;
    let ca: Vec<Vec<u8>> = rustls_pemfile::certs(&mut ca_pem.as_slice())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .context("parsing ca.crt")?;
    let mut config = kube::Config::new(args.api_server.parse().context("API server URL")?);
    config.root_cert = Some(ca);
    config.auth_info.token_file = Some(args.sa_dir.join("token").display().to_string());
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let client = api_client(&args)?;
    let ttl = Duration::from_secs(args.cache_ttl_seconds);
    let layer = if args.verify == "jwks" {
        let offline = JwksReviewer::new(client.clone(), &args.issuer, Duration::from_secs(300)).with_fallback(TokenReviewClient::new(client));
        AuthLayer::new(CachedReviewer::new(offline).with_revocation_window(ttl), &args.audience)
    } else {
        AuthLayer::new(CachedReviewer::new(TokenReviewClient::new(client)).with_revocation_window(ttl), &args.audience)
    };
    let app = axum::Router::new().fallback(|| async { "Hello from data store. You have been authenticated" }).layer(layer);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("data-store listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
