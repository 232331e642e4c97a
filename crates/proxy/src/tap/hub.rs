//! The hub that inbound and outbound publish tap events to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a slow tap client may fall behind before it loses the oldest.
const CAPACITY: usize = 1024;

/// Which side of the proxy saw the request (`proxy=in|out` in `linkerd viz tap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TapDirection {
    /// A request to this pod's app.
    #[serde(rename = "in")]
    Inbound,
    /// A request from this pod's app.
    #[serde(rename = "out")]
    Outbound,
}

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TapKind {
    /// The request's headers went through.
    #[serde(rename = "req")]
    Request,
    /// The response's headers came back.
    #[serde(rename = "rsp")]
    Response,
    /// Inbound authorization policy denied a request or a connection
    /// (`deny`: the reason and the Server, authorization and route it concerned).
    #[serde(rename = "deny")]
    Deny,
}

/// One tap event, serialized as one JSON line on `/tap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TapEvent {
    /// `req` or `rsp`.
    #[serde(rename = "type")]
    pub kind: TapKind,
    /// `STREAM:REQUEST` as Linkerd numbers them: the same for a request and its response.
    pub id: String,
    /// `in` or `out`.
    pub proxy: TapDirection,
    /// The client's address.
    pub src: SocketAddr,
    /// The server's address.
    pub dst: SocketAddr,
    /// The `tls` label of the connection as the metrics have it: `true` for
    /// mutual TLS, else why not (e.g. `no_identity`).
    pub tls: String,
    /// The peer's mesh identity when known (client's inbound, server's outbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Request method (`req`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request authority (`req`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Request path and query (`req`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Response status (`rsp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From the request's headers to the response's, in microseconds (`rsp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_micros: Option<u64>,
    /// Why the policy denied (`deny`), as in `l5d-proxy-error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Server that selected the port (`deny`; absent: the default policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The HTTPRoute the request matched (`deny`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// What a publisher knows when a request's headers arrive.
#[derive(Debug, Clone)]
pub struct TapRequest<'a> {
    /// Which side of the proxy.
    pub direction: TapDirection,
    /// The client's address.
    pub src: SocketAddr,
    /// The server's address.
    pub dst: SocketAddr,
    /// The connection's `tls` label (`true`, `no_identity`, …).
    pub tls: &'a str,
    /// The peer's identity, if authenticated.
    pub identity: Option<&'a str>,
    /// The request's method.
    pub method: &'a http::Method,
    /// The request's URI.
    pub uri: &'a http::Uri,
    /// The request's headers (for `Host`).
    pub headers: &'a http::HeaderMap,
}

impl TapRequest<'_> {
    /// The authority: the URI's (HTTP/2, absolute-form) or the `Host` header.
    fn authority(&self) -> String {
        self.uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| self.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default()
    }

    fn path(&self) -> String {
        self.uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
    }
}

/// Where inbound and outbound publish; one per proxy, shared.
#[derive(Debug)]
pub struct TapHub {
    tx: broadcast::Sender<Arc<TapEvent>>,
    next: AtomicU64,
}

impl Default for TapHub {
    fn default() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0, next: AtomicU64::new(0) }
    }
}

impl TapHub {
    /// A hub with no subscribers.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The process's hub. A `tessera proxy` process is one proxy, so its
    /// inbound and outbound publish here and its admin `/tap` reads here,
    /// without threading the hub through every connection's state.
    pub fn global() -> &'static Arc<Self> {
        static HUB: std::sync::OnceLock<Arc<TapHub>> = std::sync::OnceLock::new();
        HUB.get_or_init(Self::new)
    }

    /// A new tap stream: every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TapEvent>> {
        self.tx.subscribe()
    }

    /// Whether anyone taps (publishers may skip work otherwise).
    pub fn is_tapped(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes a request event; the span publishes its response. `None`
    /// (and nothing built) when no one taps.
    pub fn request(&self, request: &TapRequest<'_>) -> Option<TapSpan> {
        if !self.is_tapped() {
            return None;
        }
        // One stream per proxy: ids are `0:N`, unique for the proxy's life.
        let id = format!("0:{}", self.next.fetch_add(1, Ordering::Relaxed));
        let event = TapEvent {
            kind: TapKind::Request,
            id,
            proxy: request.direction,
            src: request.src,
            dst: request.dst,
            tls: request.tls.to_owned(),
            identity: request.identity.map(str::to_owned),
            method: Some(request.method.as_str().to_owned()),
            authority: Some(request.authority()),
            path: Some(request.path()),
            status: None,
            latency_micros: None,
            reason: None,
            server: None,
            route: None,
        };
        let span = TapSpan { tx: self.tx.clone(), started: Instant::now(), request: event.clone() };
        // No receiver left since the check: nothing to do.
        let _ = self.tx.send(Arc::new(event));
        Some(span)
    }

    /// Publishes a policy denial (inbound): of a request when `request`
    /// carries its method, URI and headers, else of a connection.
    pub fn denial(&self, request: &TapRequest<'_>, http: bool, denial: TapDenial<'_>) {
        if !self.is_tapped() {
            return;
        }
        let id = format!("0:{}", self.next.fetch_add(1, Ordering::Relaxed));
        let event = TapEvent {
            kind: TapKind::Deny,
            id,
            proxy: request.direction,
            src: request.src,
            dst: request.dst,
            tls: request.tls.to_owned(),
            identity: request.identity.map(str::to_owned),
            method: http.then(|| request.method.as_str().to_owned()),
            authority: http.then(|| request.authority()),
            path: http.then(|| request.path()),
            status: None,
            latency_micros: None,
            reason: Some(denial.reason.to_owned()),
            server: denial.server.map(str::to_owned),
            route: denial.route.map(str::to_owned),
        };
        let _ = self.tx.send(Arc::new(event));
    }
}

/// What a policy denial names.
#[derive(Debug, Clone, Copy)]
pub struct TapDenial<'a> {
    /// The reason (`l5d-proxy-error`).
    pub reason: &'a str,
    /// The Server, if one selected the port.
    pub server: Option<&'a str>,
    /// The HTTPRoute, if one matched.
    pub route: Option<&'a str>,
}

/// A tapped request whose response is still to come.
#[derive(Debug)]
pub struct TapSpan {
    tx: broadcast::Sender<Arc<TapEvent>>,
    started: Instant,
    request: TapEvent,
}

impl TapSpan {
    /// Publishes the response event (status and latency since the request).
    pub fn response(self, status: http::StatusCode) {
        let latency = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let event = TapEvent {
            kind: TapKind::Response,
            method: None,
            authority: None,
            path: None,
            status: Some(status.as_u16()),
            latency_micros: Some(latency),
            ..self.request
        };
        let _ = self.tx.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> http::request::Parts {
        http::Request::get("/api/list?x=1").header("host", "web-svc.emojivoto:80").body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn untapped_publishing_builds_nothing_and_tapped_sees_request_then_response() {
        let hub = TapHub::new();
        let parts = parts();
        let request = TapRequest {
            direction: TapDirection::Inbound,
            src: "127.1.0.2:47130".parse().unwrap(),
            dst: "127.1.0.3:8080".parse().unwrap(),
            tls: "true",
            identity: Some("web.emojivoto.serviceaccount.identity.linkerd.cluster.local"),
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        assert!(hub.request(&request).is_none());
        let mut rx = hub.subscribe();
        let span = hub.request(&request).expect("tapped");
        span.response(http::StatusCode::OK);
        let req = rx.recv().await.unwrap();
        let rsp = rx.recv().await.unwrap();
        assert_eq!(
            serde_json::to_value(&*req).unwrap(),
            serde_json::json!({"type": "req", "id": "0:0", "proxy": "in", "src": "127.1.0.2:47130", "dst": "127.1.0.3:8080", "tls": "true",
                "identity": "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                "method": "GET", "authority": "web-svc.emojivoto:80", "path": "/api/list?x=1"})
        );
        assert_eq!((rsp.kind, rsp.id.as_str(), rsp.status, rsp.method.as_deref()), (TapKind::Response, "0:0", Some(200), None));
        assert!(rsp.latency_micros.is_some());
        // The next request gets the next id.
        assert_eq!(hub.request(&request).unwrap().request.id, "0:1");
    }
}
