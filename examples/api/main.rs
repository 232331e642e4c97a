//! The API of seed 001: for every request it calls the data store, passing its
//! own ServiceAccount token (projected for the audience `data-store` and
//! rotated by the node agent) in `X-Client-Id`, and returns the data store's
//! answer.
//!
//! `tessera agent run --sa api -n api --token audience=data-store,expiration=600,path=api-token -- api`.
//!
//! Like any ordinary HTTP client it honours `HTTP_PROXY` / `http_proxy`
//! (and `NO_PROXY`): under `tessera agent run --mesh` its calls go through
//! the pod's proxy, which adds mutual TLS without a change here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tessera_auth::TokenFile;

/// Seed 001's API.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The data store.
    #[arg(long, env = "DATA_STORE_URL", default_value = "http://127.0.0.1:8081")]
    data_store_url: String,
    /// The token file for the data store (default: `$TESSERA_TOKEN_DIR/api-token`).
    #[arg(long, env = "API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Clone)]
struct App {
    token: TokenFile,
    client: Client<HttpConnector, Empty<Bytes>>,
    data_store: hyper::Uri,
    /// `host:port` of the forward proxy the calls go through, if any.
    proxy: Option<String>,
}

/// The forward proxy for `target` from the environment, as curl reads it:
/// `http_proxy` (or `HTTP_PROXY`), unless `NO_PROXY` names the host.
fn proxy_for(target: &hyper::Uri) -> Option<String> {
    let var = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok()).filter(|v| !v.is_empty());
    let proxy: hyper::Uri = var(["http_proxy", "HTTP_PROXY"])?.parse().ok()?;
    let host = target.host()?;
    let bypass = var(["no_proxy", "NO_PROXY"]).unwrap_or_default();
    if bypass.split(',').map(str::trim).any(|h| h == "*" || h == host || (h.starts_with('.') && host.ends_with(h))) {
        return None;
    }
    let authority = proxy.authority()?;
    Some(format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)))
}

/// One request through the forward proxy: absolute-form request line, as HTTP/1.1 proxies expect.
async fn via_proxy(proxy: &str, mut request: hyper::Request<Empty<Bytes>>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    if let Some(authority) = request.uri().authority().cloned() {
        request.headers_mut().entry(hyper::header::HOST).or_insert(hyper::header::HeaderValue::from_str(authority.as_str())?);
    }
    let stream = tokio::net::TcpStream::connect(proxy).await.with_context(|| format!("connecting to the proxy {proxy}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

async fn index(State(app): State<App>) -> (StatusCode, String) {
    let request = match hyper::Request::get(app.data_store.clone()).header("X-Client-Id", &*app.token.token()).body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let answer = match &app.proxy {
        Some(proxy) => via_proxy(proxy, request).await,
        None => app.client.request(request).await.map_err(anyhow::Error::from),
    };
    match answer {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => (status, String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("Get \"{}\": {e:#}\n", app.data_store)),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let token_file = match args.token_file {
        Some(path) => path,
        None => PathBuf::from(std::env::var_os("TESSERA_TOKEN_DIR").context("set --token-file or run under `tessera agent run`")?).join("api-token"),
    };
    let app = App {
        token: TokenFile::open(&token_file).with_context(|| format!("opening {}", token_file.display()))?,
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        data_store: args.data_store_url.parse().context("data store URL")?,
        proxy: None,
    };
    let app = App { proxy: proxy_for(&app.data_store), ..app };
    if let Some(proxy) = &app.proxy {
        tracing::info!(%proxy, "calling the data store through the proxy");
    }
    let router = axum::Router::new().fallback(index).with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    println!("api listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
