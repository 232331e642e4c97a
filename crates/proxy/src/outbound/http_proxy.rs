//! The HTTP forward-proxy port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use super::error::ProxyError;
use super::pool::Ctx;
use super::{Body, Outbound, Picked};
use crate::metrics::{PeerLabels, RouteMetrics};
use crate::destination::normalize_authority;

/// Set on requests upgraded from HTTP/1 to HTTP/2 between proxies; the
/// inbound proxy speaks the original protocol to its app.
pub(crate) const L5D_ORIG_PROTO: &str = "l5d-orig-proto";

/// The identity an app requires of the endpoint (Linkerd's header).
const L5D_REQUIRE_ID: &str = "l5d-require-id";

/// Identity headers an app must not send through its proxy (Linkerd's
/// outbound strips `l5d-client-id` from requests, and `l5d-require-id`
/// after checking it).
const STRIP_REQUEST: [&str; 2] = ["l5d-client-id", "l5d-require-id"];
/// Headers a peer's answer must not leak to the app (Linkerd strips these
/// from responses on the outbound side).
const STRIP_RESPONSE: [&str; 2] = ["l5d-server-id", "l5d-remote-ip"];

/// The labels and metrics of the endpoint and authority a client connection
/// last used: an app sends one authority per connection almost always, so
/// they are built once per connection rather than per request.
#[derive(Default)]
struct RouteCache(std::sync::Mutex<Option<CachedRoute>>);

struct CachedRoute {
    raw_authority: String,
    endpoint: crate::destination::Endpoint,
    service: Option<String>,
    labels: Arc<PeerLabels>,
    metrics: Arc<RouteMetrics>,
}

impl RouteCache {
    fn get(&self, out: &Outbound, picked: &Picked, raw_authority: &str) -> (Arc<PeerLabels>, Arc<RouteMetrics>) {
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let service = picked.service().map(|s| s.name.as_str());
        if let Some(c) = cached.as_ref()
            && c.raw_authority == raw_authority
            && c.endpoint == *picked.endpoint()
            && c.service.as_deref() == service
        {
            return (c.labels.clone(), c.metrics.clone());
        }
        let labels = Arc::new(picked.labels());
        // `authority` as the app addressed it, like Linkerd's label.
        let metrics = out.metrics.route(labels.clone(), raw_authority);
        *cached = Some(CachedRoute {
            raw_authority: raw_authority.to_owned(),
            endpoint: picked.endpoint().clone(),
            service: service.map(str::to_owned),
            labels: labels.clone(),
            metrics: metrics.clone(),
        });
        (labels, metrics)
    }
}

pub(super) async fn serve_connection(out: Arc<Outbound>, stream: TcpStream, peer: SocketAddr) {
    let routes = Arc::new(RouteCache::default());
    let svc = service_fn(move |req| {
        let (out, routes) = (out.clone(), routes.clone());
        async move { Ok::<_, Infallible>(handle(out, req, peer, &routes).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
    {
        debug!(%peer, error = %e, "outbound client connection ended");
    }
}

async fn handle(out: Arc<Outbound>, req: Request<Incoming>, peer: SocketAddr, routes: &RouteCache) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect_tunnel(out, req).await;
    }
    match forward(&out, req, peer, routes).await {
        Ok(rsp) => rsp,
        Err(e) => {
            debug!(error = %e, "outbound request failed");
            e.response()
        }
    }
}

/// The authority the app addressed: the absolute-form URI's, else `Host`.
fn target_authority(req: &Request<Incoming>) -> Option<(String, String)> {
    let (raw, default_port) = match req.uri().authority() {
        Some(a) => (
            a.as_str().to_owned(),
            if req.uri().scheme_str() == Some("https") {
                443
            } else {
                80
            },
        ),
        None => (
            req.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
            80,
        ),
    };
    let normalized = normalize_authority(&raw, default_port)?;
    Some((raw, normalized))
}

async fn forward(out: &Outbound, mut req: Request<Incoming>, peer: SocketAddr, routes: &RouteCache) -> Result<Response<Body>, ProxyError> {
    let (raw_authority, authority) = target_authority(&req).ok_or(ProxyError::NoAuthority)?;
    let picked: Picked = out.pick(&authority).await?;
    let ep = picked.endpoint();
    let (labels, route_metrics) = routes.get(out, &picked, &raw_authority);

    // `l5d-require-id` (Linkerd): the app demands that the endpoint be this
    // identity; any other (or none: plain text) fails the request unsent.
    if let Some(required) = req.headers_mut().remove(L5D_REQUIRE_ID) {
        let required = required.to_str().unwrap_or_default().to_owned();
        if ep.identity.as_deref() != Some(required.as_str()) {
            let e = ProxyError::IdentityRequired { required, found: ep.identity.clone() };
            route_metrics.request().response(e.status().as_u16());
            return Err(e);
        }
    }
    let app_version = req.version();
    // An HTTP/1.1 Upgrade (WebSocket) gets a connection of its own (see `crate::upgrade`).
    let upgrade = if app_version == Version::HTTP_11 { crate::upgrade::requested(req.headers()) } else { None };
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut());
    if let Some(protocol) = upgrade {
        crate::upgrade::restore(req.headers_mut(), protocol);
    }
    for h in STRIP_REQUEST {
        req.headers_mut().remove(h);
    }
    // A proxy sends the target's authority as Host (RFC 9112 §3.2.2); for
    // origin-form requests it came from Host in the first place.
    if let Ok(v) = HeaderValue::from_str(&raw_authority) {
        req.headers_mut().insert(header::HOST, v);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();

    let record = route_metrics.request();
    let tap = crate::tap::TapHub::global().request(&crate::tap::TapRequest {
        direction: crate::tap::TapDirection::Outbound,
        src: peer,
        dst: ep.address,
        tls: if ep.identity.is_some() { "true" } else { "not_provided_by_service_discovery" },
        identity: ep.identity.as_deref(),
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
    });
    let ctx = Ctx {
        creds: &out.creds,
        metrics: &out.metrics,
        labels: &labels,
        timeout: out.config.connect_timeout,
        idle_timeout: out.config.h2_idle_timeout,
        source: out.config.source_ip,
    };
    let result = match (client_upgrade, &ep.identity) {
        (Some(client), _) => {
            *req.uri_mut() = Uri::try_from(path).map_err(|_| ProxyError::NoAuthority)?;
            *req.version_mut() = Version::HTTP_11;
            // No ALPN: the inbound proxy detects HTTP/1 on the decrypted bytes.
            let (io, _) = super::connect::connect(ep, &out.creds, &[], ctx.timeout, ctx.source, || out.metrics.tcp_open((*labels).clone())).await?;
            crate::upgrade::send(io, req, client).await.map_err(|e| ProxyError::Http(ep.address, e.to_string()))
        }
        (None, Some(identity)) => {
            // Between proxies: HTTP/2, :authority as the app addressed it.
            *req.uri_mut() = Uri::try_from(format!("http://{raw_authority}{path}"))
                .map_err(|_| ProxyError::NoAuthority)?;
            if app_version != Version::HTTP_2 {
                let orig = if app_version == Version::HTTP_10 {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                };
                req.headers_mut()
                    .insert(L5D_ORIG_PROTO, HeaderValue::from_static(orig));
            }
            *req.version_mut() = Version::HTTP_2;
            out.pool.send_h2(ep, identity, req, ctx).await
        }
        (None, None) => {
            *req.uri_mut() = Uri::try_from(path).map_err(|_| ProxyError::NoAuthority)?;
            *req.version_mut() = Version::HTTP_11;
            out.pool.send_h1(ep, req, ctx).await
        }
    };
    // The in-flight slot (in `picked`) is released when this returns, with the response headers.
    if let Some(tap) = tap {
        tap.response(result.as_ref().map_or_else(|e| e.status(), |rsp| rsp.status()));
    }
    match result {
        Ok(mut rsp) => {
            record.response(rsp.status().as_u16());
            // A 101 keeps `Connection: upgrade` and `Upgrade` for the app.
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(rsp.headers_mut());
            }
            for h in STRIP_RESPONSE {
                rsp.headers_mut().remove(h);
            }
            if ep.identity.is_some() {
                rsp.headers_mut().remove(L5D_ORIG_PROTO);
            }
            Ok(rsp.map(|b| b.boxed()))
        }
        Err(e) => {
            // Linkerd's endpoint metrics see the synthesised answer.
            record.response(e.status().as_u16());
            Err(e)
        }
    }
}

/// `CONNECT host:port`: answer 200 once the endpoint is connected (mTLS
/// without ALPN for a meshed one), then splice the bytes.
async fn connect_tunnel(out: Arc<Outbound>, req: Request<Incoming>) -> Response<Body> {
    let Some(authority) = req
        .uri()
        .authority()
        .and_then(|a| normalize_authority(a.as_str(), 443))
    else {
        return ProxyError::NoAuthority.response();
    };
    let (conn, guard) = match super::tcp::open(&out, &authority).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "CONNECT failed");
            return e.response();
        }
    };
    tokio::spawn(async move {
        let _in_flight = guard;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut conn = conn;
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut conn).await {
                    debug!(%authority, error = %e, "CONNECT tunnel ended");
                }
            }
            Err(e) => debug!(%authority, error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut rsp = Response::new(super::full(bytes::Bytes::new()));
    *rsp.status_mut() = StatusCode::OK;
    rsp
}

/// Connection-level headers never cross a proxy (RFC 9110 §7.6.1), and
/// HTTP/2 forbids them.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    // `te: trailers` stays: HTTP/2 allows exactly that value (RFC 9113
    // §8.2.2), and gRPC servers (gRPC's C core among them) refuse a call
    // without it.
    if headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn grpc_te_trailers_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).map(HeaderValue::as_bytes), Some(&b"trailers"[..]));
        assert_eq!(h.len(), 2);
    }
}
