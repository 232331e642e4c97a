//! The outbound half of `tessera proxy`: how the app reaches other workloads.
//!
//! * An HTTP forward-proxy port (the app's `HTTP_PROXY`): absolute-form
//!   requests such as `GET http://NAME.NS.svc.cluster.local:PORT/path`,
//!   origin-form requests with a `Host`, and `CONNECT host:port` tunnels.
//! * TCP forward ports (`--outbound-tcp LISTEN=AUTHORITY`): every
//!   connection to LISTEN goes to AUTHORITY.
//!
//! The authority resolves through the destination API ([`Discover`]) to
//! ready endpoints, one is chosen by [`Balancer`] (power of two choices on
//! in-flight requests), and a meshed endpoint is reached over mTLS whose
//! server name is the identity the control plane expects for it. HTTP
//! between proxies is HTTP/2 on one pooled connection per endpoint.

mod connect;
pub mod error;
mod http_proxy;
mod observe;
mod pool;
mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::balance::Balancer;
use crate::destination::{Discover, Endpoint, Resolution, Snapshot};
use crate::metrics::Metrics;
use crate::tls::CredentialsRx;
use error::ProxyError;

/// Response body of the outbound proxy (the endpoint's, or our own text).
pub type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: Bytes) -> Body {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed()
}

/// Tunables of the outbound side.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// How long a request waits for a resolution with ready endpoints
    /// before failing with 503 (Linkerd's fail-fast timeout, 3 s).
    pub failfast_timeout: Duration,
    /// TCP connect and TLS handshake limit per endpoint.
    pub connect_timeout: Duration,
    /// The cap on client connections (shared with the inbound ports).
    pub limit: crate::limit::ConnLimit,
    /// A pooled HTTP/2 connection to another proxy that carried no request
    /// for this long is closed.
    pub h2_idle_timeout: Duration,
    /// The pod's IP: connections to endpoints are made from it (`--source-ip`).
    pub source_ip: Option<std::net::IpAddr>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            failfast_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            limit: crate::limit::ConnLimit::default(),
            h2_idle_timeout: Duration::from_secs(90),
            source_ip: None,
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone)]
enum Route {
    /// Balanced over the control plane's endpoints.
    Balanced(Arc<Snapshot>),
    /// Not known to the control plane: straight to the address the app
    /// named, in plain text (Linkerd forwards to the original destination).
    Direct(Endpoint),
}

/// The endpoint a request or connection goes to (borrowed from the
/// resolution, not copied); its in-flight slot is held as long as
/// `in_flight` lives.
struct Picked {
    route: Route,
    index: usize,
    in_flight: crate::balance::InFlight,
}

impl Picked {
    fn endpoint(&self) -> &Endpoint {
        match &self.route {
            Route::Balanced(s) => &s.endpoints[self.index],
            Route::Direct(ep) => ep,
        }
    }

    fn service(&self) -> Option<&crate::destination::ServiceRef> {
        match &self.route {
            Route::Balanced(s) => s.service.as_ref(),
            Route::Direct(_) => None,
        }
    }

    /// The metric labels of traffic to the endpoint.
    fn labels(&self) -> crate::metrics::PeerLabels {
        observe::peer_labels(self.endpoint(), self.service())
    }
}

/// Shared state of the outbound listeners.
pub struct Outbound {
    config: OutboundConfig,
    discover: Arc<dyn Discover>,
    creds: CredentialsRx,
    metrics: Metrics,
    balancer: Balancer,
    pool: pool::Pool,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Outbound state over a destination source, this proxy's credentials
    /// and the proxy's metrics.
    pub fn new(
        config: OutboundConfig,
        discover: Arc<dyn Discover>,
        creds: CredentialsRx,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            discover,
            creds,
            metrics,
            balancer: Balancer::new(),
            pool: pool::Pool::default(),
        })
    }

    /// Serves the HTTP forward-proxy port until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer, slot) = self.accept(&listener).await;
            let out = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                http_proxy::serve_connection(out, stream, peer).await;
            });
        }
    }

    /// Serves a TCP forward port: every connection goes to `authority`.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        authority: String,
    ) -> std::io::Result<()> {
        loop {
            let (stream, _, slot) = self.accept(&listener).await;
            let out = self.clone();
            let authority = authority.clone();
            tokio::spawn(async move {
                let _slot = slot;
                tcp::forward(out, stream, &authority).await;
            });
        }
    }

    /// Takes a connection slot (waiting at the cap, so new clients queue in
    /// the listen backlog), then accepts the next connection.
    async fn accept(&self, listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr, crate::limit::ConnSlot) {
        let slot = self.config.limit.acquire().await;
        let (stream, peer) = accept(listener).await;
        (stream, peer, slot)
    }

    /// Resolves `authority` and lets the balancer pick one of its endpoints.
    async fn pick(&self, authority: &str) -> Result<Picked, ProxyError> {
        let route = self.route(authority).await?;
        let (index, in_flight) = {
            let endpoints = match &route {
                Route::Balanced(s) => &s.endpoints[..],
                Route::Direct(ep) => std::slice::from_ref(ep),
            };
            let (endpoint, in_flight) =
                self.balancer.pick(endpoints).ok_or_else(|| ProxyError::FailFast(authority.to_owned()))?;
            let index = endpoints.iter().position(|e| std::ptr::eq(e, endpoint)).unwrap_or(0);
            (index, in_flight)
        };
        Ok(Picked { route, index, in_flight })
    }

    async fn route(&self, authority: &str) -> Result<Route, ProxyError> {
        let mut rx = self.discover.watch(authority);
        let deadline = Instant::now() + self.config.failfast_timeout;
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                Resolution::Found(s) if !s.endpoints.is_empty() => return Ok(Route::Balanced(s)),
                Resolution::NotFound => return fallback(authority).await,
                Resolution::Found(_) | Resolution::Pending | Resolution::Failed(_) => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(ProxyError::FailFast(authority.to_owned())),
            }
        }
    }
}

/// Accepts the next connection; transient accept errors (e.g. out of file
/// descriptors) are logged and retried after a pause.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                return (s, peer);
            }
            Err(e) => {
                warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Names that only the control plane can resolve: never sent to DNS.
fn is_cluster_name(host: &str) -> bool {
    host.ends_with(".svc")
        || host.ends_with(".svc.cluster.local")
        || host.ends_with(".cluster.local")
}

/// An authority the control plane does not know: an IP address (or a
/// name outside the cluster domain, through the system resolver) is
/// reached directly in plain text, like Linkerd's fallback to the original
/// destination; an unknown cluster name is rejected.
async fn fallback(authority: &str) -> Result<Route, ProxyError> {
    let rejected = || ProxyError::DiscoveryRejected(authority.to_owned());
    let (host, port) = authority.rsplit_once(':').ok_or_else(rejected)?;
    let port: u16 = port.parse().map_err(|_| rejected())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) if is_cluster_name(host) => return Err(rejected()),
        Err(_) => {
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((host, port)),
            )
            .await;
            match lookup {
                Ok(Ok(mut addrs)) => addrs.next().ok_or_else(rejected)?,
                _ => {
                    debug!(%authority, "not in the mesh and not resolvable");
                    return Err(rejected());
                }
            }
        }
    };
    Ok(Route::Direct(Endpoint {
        address,
        namespace: None,
        pod: None,
        service_account: None,
        meshed: false,
        identity: None,
    }))
}

/// Parses `--outbound-tcp LISTEN=AUTHORITY` (e.g. `127.0.0.1:5432=db.ns.svc.cluster.local:5432`).
pub fn parse_tcp_forward(spec: &str) -> Result<(SocketAddr, String), String> {
    let (listen, authority) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: expected LISTEN=AUTHORITY"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("{spec:?}: listen address: {e}"))?;
    let authority = crate::destination::normalize_authority(authority, 0)
        .filter(|a| !a.ends_with(":0"))
        .ok_or_else(|| format!("{spec:?}: authority must be HOST:PORT"))?;
    Ok((listen, authority))
}

/// Serves the outbound side: the HTTP forward-proxy listener and every TCP
/// forward listener, until one fails or the task is dropped.
pub async fn serve_outbound(
    outbound: Arc<Outbound>,
    http: TcpListener,
    tcp: Vec<(TcpListener, String)>,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(outbound.clone().serve_http(http));
    for (listener, authority) in tcp {
        tasks.spawn(outbound.clone().serve_tcp(listener, authority));
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Ok(())
}

/// Where the agent projects the pod's ServiceAccount token and cluster CA.
pub(crate) const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The destination client from the proxy configuration: the API server
/// from `--api-server` or `TESSERA_API_SERVER`, the token and CA from the
/// flags or the projected ServiceAccount directory. Without an API server
/// every authority is unknown (only addresses are reached, in plain text).
pub fn discover_from_config(
    api: &crate::config::ApiConfig,
) -> Result<Arc<dyn Discover>, crate::destination::DestinationError> {
    use crate::destination::{ApiConfig, ApiDiscover, DestinationError, StaticDiscover};
    let server = api
        .server
        .clone()
        .or_else(|| std::env::var("TESSERA_API_SERVER").ok())
        .filter(|s| !s.is_empty());
    let Some(server) = server else {
        warn!(
            "no API server configured (--api-server / TESSERA_API_SERVER): outbound resolves no services"
        );
        return Ok(Arc::new(StaticDiscover::new()));
    };
    let uri: http::Uri = server
        .parse()
        .map_err(|_| DestinationError::Url(server.clone(), "not a URL"))?;
    let dir = std::path::Path::new(SERVICEACCOUNT_DIR);
    let token_file = api.token_file.clone().unwrap_or_else(|| dir.join("token"));
    let ca_file = api
        .ca
        .clone()
        .or_else(|| Some(dir.join("ca.crt")).filter(|p| p.exists()));
    Ok(Arc::new(ApiDiscover::new(ApiConfig::new(
        uri, token_file, ca_file,
    ))?))
}

/// Serves the outbound listeners of `tessera proxy` until `shutdown`.
pub async fn serve(
    http: TcpListener,
    tcp: Vec<(TcpListener, String)>,
    discover: Arc<dyn Discover>,
    shared: crate::Shared,
    limit: crate::limit::ConnLimit,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let config = OutboundConfig {
        connect_timeout: shared.config.connect_timeout,
        limit,
        h2_idle_timeout: shared.config.h2_idle_timeout,
        source_ip: shared.config.source_ip,
        ..OutboundConfig::default()
    };
    let outbound = Outbound::new(
        config,
        discover,
        shared.credentials.clone(),
        shared.metrics.clone(),
    );
    tokio::select! {
        r = serve_outbound(outbound, http, tcp) => {
            if let Err(e) = r {
                warn!(error = %e, "outbound listener failed");
            }
        }
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_forward_specs() {
        assert_eq!(
            parse_tcp_forward("127.0.0.1:5432=DB.ns.svc.cluster.local:5432").unwrap(),
            (
                "127.0.0.1:5432".parse().unwrap(),
                "db.ns.svc.cluster.local:5432".into()
            )
        );
        assert!(parse_tcp_forward("127.0.0.1:5432").is_err());
        assert!(parse_tcp_forward("127.0.0.1:5432=db.ns").is_err());
        assert!(parse_tcp_forward("nope=db.ns:1").is_err());
    }

    #[tokio::test]
    async fn fallback_rules() {
        assert!(
            matches!(fallback("127.0.0.5:80").await, Ok(Route::Direct(e)) if e.address == "127.0.0.5:80".parse().unwrap())
        );
        assert!(matches!(fallback("[::1]:80").await, Ok(Route::Direct(_))));
        let e = fallback("nope.ns.svc.cluster.local:80").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "logical service nope.ns.svc.cluster.local:80: discovery rejected"
        );
        assert!(matches!(
            fallback("localhost:80").await,
            Ok(Route::Direct(_))
        ));
    }
}
