//! The outbound proxy end to end, in process: a fake destination source,
//! credentials from one test CA, fake meshed endpoints (TLS servers that
//! present a chosen identity and speak HTTP/2 or echo opaque bytes) and a
//! plain-text HTTP/1.1 endpoint.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tessera_proxy::destination::{Endpoint, Resolution, ServiceRef, Snapshot, StaticDiscover};
use tessera_proxy::metrics::Metrics;
use tessera_proxy::outbound::{Outbound, OutboundConfig};
use tessera_proxy::tls::{Credentials, CredentialsTx, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";
const C: &str = "c.ns.serviceaccount.identity.linkerd.cluster.local";

struct Ca {
    issuer: rcgen::Issuer<'static, KeyPair>,
    roots: Arc<rustls::RootCertStore>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    fn creds(&self, identity: &str) -> Arc<Credentials> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec![identity.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Arc::new(
            Credentials::new(
                Identity::parse(identity).unwrap(),
                chain,
                key,
                self.roots.clone(),
                SystemTime::now() + Duration::from_secs(3600),
            )
            .unwrap(),
        )
    }
}

/// A fake meshed endpoint: TLS with `creds`; ALPN h2 → HTTP/2 server that
/// describes what it saw; no ALPN → opaque echo. Counts handshakes.
struct Meshed {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The source address of every accepted connection.
    peers: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

async fn meshed(creds: Arc<Credentials>) -> Meshed {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, r, seen) = (handshakes.clone(), requests.clone(), peers.clone());
    let name = creds.identity().to_string();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(creds.server_config());
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            seen.lock().unwrap().push(peer);
            let (acceptor, h, r, name) = (acceptor.clone(), h.clone(), r.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let (_, conn) = tls.get_ref();
                let client = conn
                    .peer_certificates()
                    .and_then(tessera_proxy::tls::peer_identity)
                    .map_or("-".to_owned(), |i| i.to_string());
                if conn.alpn_protocol() != Some(b"h2") {
                    let mut buf = [0u8; 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                                let _ = tls.flush().await;
                            }
                        }
                    }
                }
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
                    };
                    let body = format!(
                        "server={name} client={client} version={:?} authority={} path={} orig-proto={} l5d-client-id={}",
                        req.version(),
                        req.uri().authority().map_or("-", |a| a.as_str()),
                        req.uri().path(),
                        header("l5d-orig-proto"),
                        header("l5d-client-id"),
                    );
                    async move {
                        let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
                        rsp.headers_mut()
                            .insert("l5d-server-id", http::HeaderValue::from_static("spoofed"));
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Meshed {
        addr,
        handshakes,
        requests,
        peers,
    }
}

/// A plain-text HTTP/1.1 endpoint.
async fn plain() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<Incoming>| async move {
                    let body = format!(
                        "plain version={:?} host={} path={}",
                        req.version(),
                        req.headers()
                            .get("host")
                            .map_or("-", |v| v.to_str().unwrap()),
                        req.uri()
                    );
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn endpoint(addr: SocketAddr, identity: Option<&str>, pod: &str) -> Endpoint {
    Endpoint {
        address: addr,
        namespace: Some("ns".into()),
        pod: Some(pod.into()),
        service_account: Some(pod.split('-').next().unwrap().into()),
        meshed: identity.is_some(),
        identity: identity.map(str::to_owned),
    }
}

fn found(authority: &str, endpoints: Vec<Endpoint>) -> Resolution {
    Resolution::Found(Arc::new(Snapshot {
        authority: authority.into(),
        service: Some(ServiceRef {
            namespace: "ns".into(),
            name: authority.split('.').next().unwrap().into(),
        }),
        endpoints,
    }))
}

struct Proxy {
    http: SocketAddr,
    discover: Arc<StaticDiscover>,
    metrics: Metrics,
    creds_tx: CredentialsTx,
    outbound: Arc<Outbound>,
}

async fn proxy(ca: &Ca, with_creds: bool) -> Proxy {
    let config = OutboundConfig {
        failfast_timeout: Duration::from_millis(300),
        ..OutboundConfig::default()
    };
    proxy_with(ca, with_creds, config).await
}

async fn proxy_with(ca: &Ca, with_creds: bool, config: OutboundConfig) -> Proxy {
    let discover = Arc::new(StaticDiscover::new());
    let (creds_tx, creds_rx) = watch::channel(with_creds.then(|| ca.creds(A)));
    let metrics = Metrics::new();
    let outbound = Outbound::new(config, discover.clone(), creds_rx, metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(outbound.clone().serve_http(listener));
    Proxy {
        http,
        discover,
        metrics,
        creds_tx,
        outbound,
    }
}

/// One HTTP/1.1 client connection to the forward proxy, as `HTTP_PROXY`
/// clients use it (absolute-form request targets).
struct Client(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Client {
    async fn new(proxy: SocketAddr) -> Self {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
        let uri: http::Uri = url.parse().unwrap();
        let mut req = http::Request::get(url);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", uri.authority().unwrap().as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.0.ready().await.unwrap();
        let rsp = self
            .0
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let headers = rsp.headers().clone();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }
}

fn metric(text: &str, name: &str, must_contain: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{")) && must_contain.iter().all(|m| l.contains(m))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn meshed_request_goes_over_mtls_h2_with_the_expected_identity() {
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover
        .set(auth, found(auth, vec![endpoint(b.addr, Some(B), "b-1")]));

    let mut client = Client::new(p.http).await;
    let (status, headers, body) = client
        .get(
            &format!("http://{auth}/hello?x=1"),
            &[("l5d-client-id", "spoofed.by.app")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            "server={B} client={A} version=HTTP/2.0 authority={auth} path=/hello orig-proto=HTTP/1.1 l5d-client-id=-"
        )
    );
    // The peer's l5d-server-id does not reach the app (Linkerd strips it).
    assert!(headers.get("l5d-server-id").is_none());

    // Many requests, over several app connections and concurrently: one
    // TLS connection to the endpoint carries them all.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = format!("http://{auth}/again");
        let http = p.http;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(http).await;
            for _ in 0..10 {
                assert_eq!(c.get(&url, &[]).await.0, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), 41);
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 1);

    let text = p.metrics.encode();
    let labels = [
        "direction=\"outbound\"",
        "tls=\"true\"",
        &format!("server_id=\"{B}\""),
        "dst_namespace=\"ns\"",
        "dst_pod=\"b-1\"",
        "dst_serviceaccount=\"b\"",
        &format!("target_addr=\"{}\"", b.addr),
    ];
    let mut with_authority = labels.to_vec();
    let authority_label = format!("authority=\"{auth}\"");
    with_authority.push(&authority_label);
    assert_eq!(
        metric(&text, "request_total", &with_authority),
        Some(41),
        "{text}"
    );
    let mut ok = with_authority.clone();
    ok.extend(["status_code=\"200\"", "classification=\"success\""]);
    assert_eq!(metric(&text, "response_total", &ok), Some(41), "{text}");
    assert_eq!(
        metric(&text, "response_latency_ms_count", &with_authority),
        Some(41),
        "{text}"
    );
    assert_eq!(metric(&text, "tcp_open_total", &labels), Some(1), "{text}");
    assert!(metric(&text, "tcp_write_bytes_total", &labels).unwrap() > 0);
    assert!(metric(&text, "tcp_read_bytes_total", &labels).unwrap() > 0);
}

#[tokio::test]
async fn peer_with_another_identity_gets_502() {
    let ca = Ca::new();
    let c = meshed(ca.creds(C)).await;
    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover
        .set(auth, found(auth, vec![endpoint(c.addr, Some(B), "b-1")]));
    let (status, headers, body) = Client::new(p.http)
        .await
        .get(&format!("http://{auth}/"), &[])
        .await;
    let reason = format!(
        "endpoint {}: peer identity mismatch: expected {B}, presented {C}",
        c.addr
    );
    assert_eq!(status, 502);
    assert_eq!(headers["l5d-proxy-error"], reason.as_str());
    assert_eq!(body, format!("{reason}\n"));
    assert_eq!(c.requests.load(Ordering::SeqCst), 0);
    let text = p.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "response_total",
            &[
                "status_code=\"502\"",
                "classification=\"failure\"",
                &format!("server_id=\"{B}\"")
            ]
        ),
        Some(1),
        "{text}"
    );
}

#[tokio::test]
async fn idle_h2_connections_to_peers_are_closed_and_reopened_on_demand() {
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let config = OutboundConfig {
        failfast_timeout: Duration::from_millis(300),
        h2_idle_timeout: Duration::from_millis(300),
        ..OutboundConfig::default()
    };
    let p = proxy_with(&ca, true, config).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover.set(auth, found(auth, vec![endpoint(b.addr, Some(B), "b-1")]));
    let mut client = Client::new(p.http).await;
    let server_id = format!("server_id=\"{B}\"");
    let closed = |p: &Proxy| metric(&p.metrics.encode(), "tcp_close_total", &[&server_id]).unwrap_or(0);

    // Requests closer together than the timeout share one connection.
    for _ in 0..3 {
        assert_eq!(client.get(&format!("http://{auth}/"), &[]).await.0, 200);
    }
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(closed(&p), 0);

    // Unused for the timeout: closed (the proxy's side counts the close).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed(&p) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request opens a new one.
    assert_eq!(client.get(&format!("http://{auth}/"), &[]).await.0, 200);
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(b.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn l5d_require_id_fails_requests_to_any_other_identity() {
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let plain_addr = plain().await;
    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover.set(auth, found(auth, vec![endpoint(b.addr, Some(B), "b-1")]));
    let web = "web.ns.svc.cluster.local:80";
    p.discover.set(web, found(web, vec![endpoint(plain_addr, None, "web-1")]));
    let mut client = Client::new(p.http).await;

    // The identity the control plane expects: the request goes.
    let (status, _, body) = client.get(&format!("http://{auth}/"), &[("l5d-require-id", B)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);

    // Another identity: Linkerd's error, nothing sent to the endpoint.
    let (status, headers, body) = client.get(&format!("http://{auth}/"), &[("l5d-require-id", C)]).await;
    let reason = format!("required id \"{C}\"; found Some(\"{B}\")");
    assert_eq!(status, 502);
    assert_eq!(headers["l5d-proxy-error"], reason.as_str());
    assert_eq!(body, format!("{reason}\n"));
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);

    // A destination outside the mesh has no identity to match.
    let (status, headers, _) = client.get(&format!("http://{web}/"), &[("l5d-require-id", B)]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["l5d-proxy-error"], format!("required id \"{B}\"; found None").as_str());
    let text = p.metrics.encode();
    assert_eq!(metric(&text, "response_total", &["status_code=\"502\"", "classification=\"failure\""]), Some(2), "{text}");
}

/// With a pod IP (`--source-ip`), connections to endpoints come from it,
/// meshed or not, so the peer's network rules see the pod, not 127.0.0.1.
#[tokio::test]
async fn connections_to_endpoints_come_from_the_pod_ip() {
    let pod_ip: std::net::IpAddr = "127.0.0.23".parse().unwrap();
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let (web, web_peers) = recording_plain().await;
    let config = OutboundConfig {
        failfast_timeout: Duration::from_millis(300),
        source_ip: Some(pod_ip),
        ..OutboundConfig::default()
    };
    let p = proxy_with(&ca, true, config).await;
    let (auth_b, auth_web) = ("b.ns.svc.cluster.local:8080", "web.ns.svc.cluster.local:80");
    p.discover.set(auth_b, found(auth_b, vec![endpoint(b.addr, Some(B), "b-1")]));
    p.discover.set(auth_web, found(auth_web, vec![endpoint(web, None, "web-1")]));
    let mut client = Client::new(p.http).await;
    let (status, _, _) = client.get("http://b.ns.svc.cluster.local:8080/", &[]).await;
    assert_eq!(status, 200);
    let (status, _, body) = client.get("http://web.ns.svc.cluster.local/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "plain version=HTTP/1.1 host=web.ns.svc.cluster.local path=/"));
    let ips = |peers: &std::sync::Mutex<Vec<SocketAddr>>| peers.lock().unwrap().iter().map(SocketAddr::ip).collect::<Vec<_>>();
    assert_eq!(ips(&b.peers), vec![pod_ip]);
    assert_eq!(ips(&web_peers), vec![pod_ip]);
}

/// A plain-text HTTP/1.1 endpoint that records each connection's source.
async fn recording_plain() -> (SocketAddr, Arc<std::sync::Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<Incoming>| async move {
                    let host = req.headers().get("host").map_or("-", |v| v.to_str().unwrap());
                    let body = format!("plain version={:?} host={host} path={}", req.version(), req.uri());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, peers)
}

#[tokio::test]
async fn non_meshed_endpoint_is_plain_text() {
    let ca = Ca::new();
    let addr = plain().await;
    let p = proxy(&ca, true).await;
    let auth = "web.ns.svc.cluster.local:80";
    p.discover
        .set(auth, found(auth, vec![endpoint(addr, None, "web-1")]));
    let mut client = Client::new(p.http).await;
    for _ in 0..3 {
        // The target's authority replaces a stale Host (RFC 9112 §3.2.2).
        let (status, _, body) = client
            .get(
                "http://web.ns.svc.cluster.local/p?q",
                &[("host", "stale.example")],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "plain version=HTTP/1.1 host=web.ns.svc.cluster.local path=/p?q"
        );
    }
    let text = p.metrics.encode();
    let labels = [
        "tls=\"no_identity\"",
        "no_tls_reason=\"not_provided_by_service_discovery\"",
        "dst_pod=\"web-1\"",
    ];
    assert_eq!(metric(&text, "response_total", &labels), Some(3), "{text}");
    // Sequential requests reuse one HTTP/1.1 connection.
    assert_eq!(metric(&text, "tcp_open_total", &labels), Some(1), "{text}");
    assert!(!text.contains("server_id=\"\""), "{text}");
}

#[tokio::test]
async fn requests_are_balanced_over_endpoints() {
    let ca = Ca::new();
    let (b1, b2) = (meshed(ca.creds(B)).await, meshed(ca.creds(B)).await);
    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover.set(
        auth,
        found(
            auth,
            vec![
                endpoint(b1.addr, Some(B), "b-1"),
                endpoint(b2.addr, Some(B), "b-2"),
            ],
        ),
    );
    let mut client = Client::new(p.http).await;
    for _ in 0..40 {
        assert_eq!(client.get(&format!("http://{auth}/"), &[]).await.0, 200);
    }
    let (n1, n2) = (
        b1.requests.load(Ordering::SeqCst),
        b2.requests.load(Ordering::SeqCst),
    );
    assert_eq!(n1 + n2, 40);
    assert!(n1 > 0 && n2 > 0, "{n1} / {n2}");
    assert_eq!(b1.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(b2.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_authority_and_missing_endpoints_fail_like_linkerd() {
    let ca = Ca::new();
    let p = proxy(&ca, true).await;
    let mut client = Client::new(p.http).await;
    // The control plane does not know it (404): rejected at once.
    let (status, headers, _) = client
        .get("http://nope.ns.svc.cluster.local:80/", &[])
        .await;
    assert_eq!(status, 503);
    assert_eq!(
        headers["l5d-proxy-error"],
        "logical service nope.ns.svc.cluster.local:80: discovery rejected"
    );
    // A Service without ready endpoints: fail-fast after the timeout.
    let auth = "empty.ns.svc.cluster.local:80";
    p.discover.set(auth, found(auth, vec![]));
    let (status, headers, _) = client.get(&format!("http://{auth}/"), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        headers["l5d-proxy-error"],
        "logical service empty.ns.svc.cluster.local:80: service in fail-fast"
    );
    // Endpoints that appear while a request waits are used.
    let addr = plain().await;
    let d = p.discover.clone();
    let mut client2 = Client::new(p.http).await;
    let waiting = tokio::spawn(async move {
        client2
            .get("http://late.ns.svc.cluster.local/", &[])
            .await
            .0
    });
    d.set("late.ns.svc.cluster.local:80", Resolution::Pending);
    d.set(
        "late.ns.svc.cluster.local:80",
        found(
            "late.ns.svc.cluster.local:80",
            vec![endpoint(addr, None, "late-1")],
        ),
    );
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test]
async fn no_certificate_yet_fails_closed() {
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let p = proxy(&ca, false).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover
        .set(auth, found(auth, vec![endpoint(b.addr, Some(B), "b-1")]));
    let mut client = Client::new(p.http).await;
    let (status, headers, _) = client.get(&format!("http://{auth}/"), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        headers["l5d-proxy-error"],
        format!("endpoint {}: no identity certificate yet", b.addr).as_str()
    );
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 0);
    // The certificate arrives: the same proxy now connects.
    p.creds_tx.send_replace(Some(ca.creds(A)));
    assert_eq!(client.get(&format!("http://{auth}/"), &[]).await.0, 200);
}

async fn echo_round_trip(stream: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    stream.write_all(b"ping\n").await?;
    let mut buf = vec![0u8; 5];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn tcp_forward_and_connect_use_mtls_and_close_on_mismatch() {
    let ca = Ca::new();
    let b = meshed(ca.creds(B)).await;
    let c = meshed(ca.creds(C)).await;
    let p = proxy(&ca, true).await;
    p.discover.set(
        "db.ns.svc.cluster.local:5432",
        found(
            "db.ns.svc.cluster.local:5432",
            vec![endpoint(b.addr, Some(B), "db-1")],
        ),
    );
    p.discover.set(
        "evil.ns.svc.cluster.local:5432",
        found(
            "evil.ns.svc.cluster.local:5432",
            vec![endpoint(c.addr, Some(B), "db-1")],
        ),
    );

    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_addr = good.local_addr().unwrap();
    tokio::spawn(
        p.outbound
            .clone()
            .serve_tcp(good, "db.ns.svc.cluster.local:5432".into()),
    );
    let bad = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    tokio::spawn(
        p.outbound
            .clone()
            .serve_tcp(bad, "evil.ns.svc.cluster.local:5432".into()),
    );

    let mut s = TcpStream::connect(good_addr).await.unwrap();
    assert_eq!(echo_round_trip(&mut s).await.unwrap(), b"ping\n");
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 1);

    // Wrong identity: the connection is closed, nothing is echoed.
    let mut s = TcpStream::connect(bad_addr).await.unwrap();
    let _ = s.write_all(b"ping\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(c.handshakes.load(Ordering::SeqCst), 0);

    // CONNECT through the HTTP port: 200, then the tunnel echoes over mTLS.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"CONNECT db.ns.svc.cluster.local:5432 HTTP/1.1\r\nHost: db.ns.svc.cluster.local:5432\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(echo_round_trip(&mut s).await.unwrap(), b"ping\n");

    // CONNECT to the impostor: 502 with the reason.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"CONNECT evil.ns.svc.cluster.local:5432 HTTP/1.1\r\nHost: evil.ns.svc.cluster.local:5432\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
    assert!(
        head.contains(&format!(
            "l5d-proxy-error: endpoint {}: peer identity mismatch: expected {B}, presented {C}\r\n",
            c.addr
        )),
        "{head}"
    );
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed before the end of the head"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The two halves together: outbound (identity a) → proxy-in's inbound
/// (identity b) → a plain HTTP/1.1 app.
#[tokio::test]
async fn through_the_inbound_proxy_the_app_sees_the_client_identity() {
    use tessera_proxy::inbound::{InboundConfig, serve};
    let ca = Ca::new();
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
                    };
                    let body = format!(
                        "version={:?} l5d-client-id={} orig-proto={} host={}",
                        req.version(),
                        h("l5d-client-id"),
                        h("l5d-orig-proto"),
                        h("host")
                    );
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_addr = inbound.local_addr().unwrap();
    let config = InboundConfig {
        listen: inbound_addr,
        app: app_addr,
        detect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        policy: None,
        limit: tessera_proxy::limit::ConnLimit::default(),
    };
    let (_b_tx, b_rx) = watch::channel(Some(ca.creds(B)));
    tokio::spawn(serve(
        inbound,
        config,
        b_rx,
        Metrics::new(),
        std::future::pending(),
    ));

    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover.set(
        auth,
        found(auth, vec![endpoint(inbound_addr, Some(B), "b-1")]),
    );
    let mut client = Client::new(p.http).await;
    for _ in 0..3 {
        let (status, _, body) = client
            .get(&format!("http://{auth}/x"), &[("l5d-client-id", "spoofed")])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            format!("version=HTTP/1.1 l5d-client-id={A} orig-proto=- host={auth}")
        );
    }
    let text = p.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "tcp_open_total",
            &["tls=\"true\"", &format!("server_id=\"{B}\"")]
        ),
        Some(1),
        "{text}"
    );
}

/// An app that accepts `Upgrade: echo`: answers 101, then on the upgraded
/// connection says who called (`l5d-client-id`) and echoes every byte.
async fn upgrading_app() -> SocketAddr {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|mut req: http::Request<Incoming>| async move {
                    let caller = req.headers().get("l5d-client-id").map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
                    if req.headers().get("upgrade").is_none() {
                        return Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("no upgrade"))));
                    }
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.unwrap());
                        io.write_all(format!("client-id={caller}\n").as_bytes()).await.unwrap();
                        let mut buf = [0u8; 64];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                            }
                        }
                    });
                    let mut rsp = http::Response::new(Full::new(Bytes::new()));
                    *rsp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                    rsp.headers_mut().insert("upgrade", http::HeaderValue::from_static("echo"));
                    rsp.headers_mut().insert("connection", http::HeaderValue::from_static("upgrade"));
                    Ok(rsp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).with_upgrades().await;
            });
        }
    });
    addr
}

/// Reads up to the end of an HTTP/1 response head.
async fn read_head_bytes(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn websocket_style_upgrades_go_through_both_proxies() {
    use tessera_proxy::inbound::{InboundConfig, serve};
    let ca = Ca::new();
    let app_addr = upgrading_app().await;
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_addr = inbound.local_addr().unwrap();
    let config = InboundConfig {
        listen: inbound_addr,
        app: app_addr,
        detect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        policy: None,
        limit: tessera_proxy::limit::ConnLimit::default(),
    };
    let (_b_tx, b_rx) = watch::channel(Some(ca.creds(B)));
    tokio::spawn(serve(inbound, config, b_rx, Metrics::new(), std::future::pending()));
    let p = proxy(&ca, true).await;
    let auth = "b.ns.svc.cluster.local:8080";
    p.discover.set(auth, found(auth, vec![endpoint(inbound_addr, Some(B), "b-1")]));

    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(format!("GET http://{auth}/ws HTTP/1.1\r\nHost: {auth}\r\nConnection: Upgrade\r\nUpgrade: echo\r\nl5d-client-id: spoofed\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head_bytes(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo\r\n") && lower.contains("connection: upgrade\r\n"), "{head}");
    // The app saw the verified identity (mTLS between the proxies), not the spoofed one.
    let expected = format!("client-id={A}\n");
    let mut hello = vec![0u8; expected.len()];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(String::from_utf8(hello).unwrap(), expected);
    for message in [&b"ping"[..], b"\x00\x01binary frame"] {
        assert_eq!(echo_round_trip_bytes(&mut s, message).await, message);
    }
    let text = p.metrics.encode();
    assert_eq!(metric(&text, "response_total", &["status_code=\"101\"", &format!("server_id=\"{B}\"")]), Some(1), "{text}");
    assert_eq!(metric(&text, "tcp_open_total", &["tls=\"true\"", &format!("server_id=\"{B}\"")]), Some(1), "{text}");
}

async fn echo_round_trip_bytes(s: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    s.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).await.unwrap();
    back
}
