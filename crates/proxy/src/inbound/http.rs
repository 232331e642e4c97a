//! Inbound HTTP: serve HTTP/1.1 or HTTP/2 to the client (hyper), forward
//! each request to the app, rewriting only the
//! identity headers: client-sent `l5d-client-id` / `l5d-server-id` are
//! removed and, for an mTLS client, `l5d-client-id` is set to its verified
//! identity. `l5d-orig-proto: HTTP/1.1` (set by the client's proxy when its
//! app spoke HTTP/1.1) makes the request go to the app as HTTP/1.1. An
//! HTTP/1 client connection has one app connection of its own, driven in its
//! task (`super::app`); an HTTP/2 client's streams go over pooled
//! connections. Bodies stream both ways; HTTP/1.1 upgrades (WebSocket) get
//! their own connection to the app (see `crate::upgrade`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::app::AppConn;
use crate::io::BoxIo;
use crate::metrics::{Classification, Metrics, PeerLabels, RouteMetrics};
use crate::tls::Identity;

/// The header naming the verified client identity.
pub const L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
/// The header naming the verified server identity (set by outbound; never trusted inbound).
pub const L5D_SERVER_ID: HeaderName = HeaderName::from_static("l5d-server-id");
/// The HTTP version the client's app spoke, when proxies upgraded it to HTTP/2.
pub const L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");
/// Why the proxy answered instead of the app.
pub const L5D_PROXY_ERROR: HeaderName = HeaderName::from_static("l5d-proxy-error");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// How often an idle HTTP/2 client connection is PINGed, and how long the answer may take.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type Body = BoxBody<Bytes, hyper::Error>;
type AppClient = Client<AppConnector, Incoming>;

/// Always connects to the app, whatever the request's authority says (the
/// authority is kept for the app to see).
#[derive(Clone, Debug)]
pub(crate) struct AppConnector {
    app: SocketAddr,
    timeout: Duration,
}

impl AppConnector {
    pub(super) fn new(app: SocketAddr, timeout: Duration) -> Self {
        Self { app, timeout }
    }

    /// A TCP connection to the app, within the connect timeout.
    pub(super) async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.app))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { Ok(TokioIo::new(connector.connect().await?)) })
    }
}

/// Per-port forwarding state: pooled HTTP/1.1 and HTTP/2 clients to the app
/// (for HTTP/2 client connections; an HTTP/1 one has its own `AppConn`).
pub(crate) struct Forward {
    app: SocketAddr,
    connector: AppConnector,
    h1: AppClient,
    h2: AppClient,
    metrics: Metrics,
    /// Inbound authorization policy, when enforced.
    pub(crate) policy: Option<crate::policy::Enforcer>,
}

/// Per-connection facts.
pub(crate) struct Conn {
    /// The verified client identity (mTLS), if any.
    pub(crate) client_id: Option<Identity>,
    /// The connection's metric labels.
    pub(crate) labels: Arc<PeerLabels>,
    /// The client speaks HTTP/2.
    pub(crate) h2: bool,
    /// HTTP/1 request headers must arrive within this time.
    pub(crate) header_timeout: Duration,
    /// The client's address and the address it connected to (tap's `src`/`dst`).
    pub(crate) peer: SocketAddr,
    /// The public address.
    pub(crate) local: SocketAddr,
    /// The connection's TLS state (tap's `tls`).
    pub(crate) tls: crate::metrics::Tls,
    /// The authorization series its allowed requests last counted into.
    pub(crate) allowed: crate::policy::AllowedSeries,
}

impl Forward {
    pub(crate) fn new(app: SocketAddr, connect_timeout: Duration, metrics: Metrics) -> Self {
        let connector = AppConnector::new(app, connect_timeout);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.timer(TokioTimer::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(90));
        let h1 = builder.build(connector.clone());
        let h2 = builder.http2_only(true).build(connector.clone());
        Self { app, connector, h1, h2, metrics, policy: None }
    }

    /// Serves one client connection.
    pub(crate) async fn serve(self: &Arc<Self>, io: BoxIo, conn: Conn) -> Result<(), hyper::Error> {
        let (h2, header_timeout) = (conn.h2, conn.header_timeout);
        let conn = Arc::new(conn);
        let routes = Arc::new(RouteCache::default());
        // HTTP/1 requests come one at a time: one app connection serves them all.
        let app = (!h2).then(|| Arc::new(AppConn::new(self.connector.clone())));
        let forward = self.clone();
        let for_service = app.clone();
        let service = hyper::service::service_fn(move |request| {
            let (forward, conn, routes, app) = (forward.clone(), conn.clone(), routes.clone(), for_service.clone());
            async move { Ok::<_, Infallible>(forward.forward(request, &conn, &routes, app.as_deref()).await) }
        });
        let io = TokioIo::new(io);
        if h2 {
            // PINGs find peers that vanished without closing (a killed client proxy).
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                .serve_connection(io, service)
                .await
        } else {
            let serve = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            match app {
                // The app connection's future runs in this task, beside the client's.
                Some(app) => super::drive::Drive::new(serve, |cx: &mut std::task::Context<'_>| app.poll_conns(cx)).await,
                None => serve.await,
            }
        }
    }

    /// Forwards one request: over `app` (an HTTP/1 client connection's own
    /// app connection) or the pooled clients.
    async fn forward(&self, mut request: Request<Incoming>, conn: &Conn, routes: &RouteCache, app: Option<&AppConn>) -> Response<Body> {
        // An HTTP/1.1 Upgrade (WebSocket) goes to the app on a connection of its own.
        let upgrade = if conn.h2 { None } else { crate::upgrade::requested(request.headers()) };
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let authority = authority(&parts.uri, &parts.headers).unwrap_or_else(|| self.app.to_string());
        let record = routes.get(&self.metrics, &conn.labels, &authority).request();
        let tap = crate::tap::TapHub::global().request(&crate::tap::TapRequest {
            direction: crate::tap::TapDirection::Inbound,
            src: conn.peer,
            dst: conn.local,
            tls: crate::tap::tls_label(conn.tls),
            identity: conn.client_id.as_ref().map(Identity::as_str),
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        });
        let tap_status = |status: StatusCode| {
            if let Some(tap) = tap {
                tap.response(status);
            }
        };
        // POLICY: a denied request is answered here and never reaches the app.
        if let Some(policy) = &self.policy {
            let peer = crate::policy::Peer {
                addr: conn.peer,
                target: conn.local,
                tls: conn.tls,
                client_id: conn.client_id.as_ref().map(Identity::as_str),
                series: Some(&conn.allowed),
            };
            if let Some(denied) = policy.check_http(&peer, &parts) {
                record.response(denied.status().as_u16());
                tap_status(denied.status());
                return denied.map(|body| body.map_err(|never| match never {}).boxed());
            }
        }
        let to_h2 = app_speaks_h2(conn.h2, &mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = upgrade {
            crate::upgrade::restore(&mut parts.headers, protocol);
        }
        strip_identity_headers(&mut parts.headers);
        if let Some(id) = &conn.client_id
            && let Ok(value) = HeaderValue::from_str(id.as_str())
        {
            parts.headers.insert(L5D_CLIENT_ID, value);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match Uri::try_from(format!("http://{authority}{path}")) {
            Ok(uri) => uri,
            Err(_) => {
                record.response(400);
                tap_status(StatusCode::BAD_REQUEST);
                return proxy_error(StatusCode::BAD_REQUEST, "invalid request authority");
            }
        };
        parts.version = if to_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        if to_h2 {
            // HTTP/2 carries the authority as `:authority` (from the URI).
            parts.headers.remove(header::HOST);
        }
        let request = Request::from_parts(parts, body);
        let sent = match client_upgrade {
            Some(client) => self.upgrade(request, client).await,
            None => match app {
                Some(app) if !to_h2 => app.send(request).await,
                _ => {
                    let client = if to_h2 { &self.h2 } else { &self.h1 };
                    client.request(request).await.map_err(AppError::from)
                }
            },
        };
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                record.response_classified(status, classify(&response));
                tap_status(response.status());
                let (mut parts, body) = response.into_parts();
                // A 101 keeps `Connection: upgrade` and `Upgrade` for the client.
                if status != 101 {
                    strip_hop_by_hop(&mut parts.headers);
                }
                Response::from_parts(parts, body.boxed())
            }
            Err(error) => {
                tracing::debug!(app = %self.app, error = %error, "forwarding to the app");
                record.response(502);
                tap_status(StatusCode::BAD_GATEWAY);
                let reason = if error.is_connect() { "connection to the app failed" } else { "the app's response failed" };
                proxy_error(StatusCode::BAD_GATEWAY, reason)
            }
        }
    }
}

/// The metrics of the authority a connection last used: clients send one
/// authority on a connection almost always, so its counters are resolved
/// once per connection rather than looked up by label set per request.
#[derive(Default)]
struct RouteCache(std::sync::Mutex<Option<Arc<RouteMetrics>>>);

impl RouteCache {
    fn get(&self, metrics: &Metrics, peer: &Arc<PeerLabels>, authority: &str) -> Arc<RouteMetrics> {
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached.as_ref() {
            Some(route) if route.authority() == authority => route.clone(),
            _ => cached.insert(metrics.route(peer.clone(), authority)).clone(),
        }
    }
}

/// Why the app's answer did not come: a pooled request, a client
/// connection's own app connection or an upgrade's own connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum AppError {
    /// The pooled client failed (connecting or the exchange).
    #[error(transparent)]
    Pool(#[from] hyper_util::client::legacy::Error),
    /// The TCP connection to the app failed or timed out.
    #[error("connecting to the app: {0}")]
    Connect(std::io::Error),
    /// The HTTP/1 handshake on a new app connection failed.
    #[error("HTTP/1 handshake with the app: {0}")]
    Handshake(hyper::Error),
    /// Sending the request or receiving the response head failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl AppError {
    /// No connection to the app: the request never reached it.
    fn is_connect(&self) -> bool {
        match self {
            Self::Pool(e) => e.is_connect(),
            Self::Connect(_) | Self::Handshake(_) => true,
            Self::Http(_) => false,
        }
    }
}

impl Forward {
    /// An upgrade request: a fresh connection to the app, spliced on 101.
    async fn upgrade(&self, request: Request<Incoming>, client: hyper::upgrade::OnUpgrade) -> Result<Response<Incoming>, AppError> {
        let io = self.connector.connect().await.map_err(AppError::Connect)?;
        Ok(crate::upgrade::send(io, request, client).await?)
    }
}

/// Linkerd's classification: 5xx, or a gRPC status other than OK in the
/// response headers (trailers-only), is a failure.
fn classify<B>(response: &Response<B>) -> Classification {
    if let Some(grpc) = response.headers().get("grpc-status") {
        return if grpc.as_bytes() == b"0" { Classification::Success } else { Classification::Failure };
    }
    Classification::from_status(response.status().as_u16())
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or `Host`.
fn authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(authority) = uri.authority() {
        return Some(authority.as_str().to_owned());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    http::uri::Authority::try_from(host).ok().map(|a| a.as_str().to_owned())
}

/// Whether to speak HTTP/2 to the app: only when the client spoke HTTP/2
/// and no `l5d-orig-proto` says its app spoke HTTP/1. The header is removed.
fn app_speaks_h2(client_h2: bool, headers: &mut HeaderMap) -> bool {
    let orig = headers.remove(L5D_ORIG_PROTO);
    client_h2 && !orig.is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"))
}

/// Removes the identity headers a client must never be able to set.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    // `remove` drops every value of a repeated header.
    headers.remove(L5D_CLIENT_ID);
    headers.remove(L5D_SERVER_ID);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

fn proxy_error(status: StatusCode, reason: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(L5D_PROXY_ERROR, HeaderValue::from_static(reason));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_stripped_in_every_case_and_repetition() {
        let mut headers = HeaderMap::new();
        headers.append("L5D-Client-Id", HeaderValue::from_static("spoofed"));
        headers.append("l5d-client-id", HeaderValue::from_static("spoofed-again"));
        headers.append("l5d-server-id", HeaderValue::from_static("spoofed"));
        headers.append("x-keep", HeaderValue::from_static("1"));
        strip_identity_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-keep"], "1");
    }

    #[test]
    fn orig_proto_picks_http1_and_is_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(L5D_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        assert!(!app_speaks_h2(true, &mut headers));
        assert!(headers.is_empty());
        assert!(app_speaks_h2(true, &mut HeaderMap::new()));
        assert!(!app_speaks_h2(false, &mut HeaderMap::new()));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end"]);
    }

    #[test]
    fn authority_comes_from_the_uri_or_host() {
        let mut headers = HeaderMap::new();
        assert_eq!(authority(&Uri::from_static("http://a.b:80/x"), &headers).as_deref(), Some("a.b:80"));
        headers.insert(header::HOST, HeaderValue::from_static("web:8080"));
        assert_eq!(authority(&Uri::from_static("/x"), &headers).as_deref(), Some("web:8080"));
        headers.insert(header::HOST, HeaderValue::from_static("bad host"));
        assert_eq!(authority(&Uri::from_static("/x"), &headers), None);
    }

    #[test]
    fn grpc_status_classifies() {
        let mut response = Response::new(());
        assert_eq!(classify(&response), Classification::Success);
        response.headers_mut().insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(classify(&response), Classification::Failure);
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().remove("grpc-status");
        assert_eq!(classify(&response), Classification::Failure);
    }
}
