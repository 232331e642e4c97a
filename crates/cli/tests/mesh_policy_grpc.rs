//! gRPC and plain HTTP/2 through real meshed proxies under inbound
//! authorization policy (issue 16: "a denied gRPC request gets
//! `grpc-status: 7`"), on one cluster: `tessera server`, `tessera identity`
//! and three pods run by `tessera agent run --mesh` with their real
//! proxies (`--policy on`):
//!
//! * the data store, whose app speaks only HTTP/2 with prior knowledge
//!   (h2c): a unary gRPC method `tessera.test.Greeter/Say` (protobuf
//!   messages, the 5-byte length prefix, `grpc-status` in the trailers)
//!   and a plain HTTP/2 `GET /plain`. The pod's process is a byte relay to
//!   that server, which runs inside this test so that every request the app
//!   received can be checked (denied ones must never arrive);
//! * `api` and `other`, whose apps relay the bytes of h2c connections the
//!   test makes to their pod's outbound proxy (`HTTP_PROXY`): the test's
//!   HTTP/2 client speaks to the outbound exactly as a gRPC client in the
//!   app would, naming the Service authority
//!   `data-store.data-store.svc.cluster.local:8081`;
//! * unmeshed: the test itself, h2c straight at the data store's public port.
//!
//! Case 1: a Server (`proxyProtocol: gRPC`) and an AuthorizationPolicy
//! admitting only the api's identity. The api's call gets `grpc-status: 0`
//! and the reply; `other` and the unmeshed client get HTTP 200,
//! `content-type: application/grpc`, `grpc-status: 7` and the reason in
//! `grpc-message` and `l5d-proxy-error` (a trailers-only answer, as
//! linkerd2-proxy's `SyntheticHttpResponse::grpc_response`); plain HTTP/2
//! gets 403 with `l5d-proxy-error`.
//! Case 2: an HTTPRoute matching only `POST /tessera.test.Greeter/Say`,
//! authorized for the api: another method gets `grpc-status: 5`
//! (NOT_FOUND, `no route found for request`), `other` on the route 7, plain
//! HTTP/2 off the route 404.
//! In each case the data store proxy's `inbound_http_authz_*`,
//! `inbound_tcp_authz_*` and `inbound_http_route_not_found_total` series
//! move by exactly those requests, and the app sees only the allowed ones.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, TE};
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;

use support::Server;
use support::mesh::{Proc, api_and_data_store, curl, identity, meshed_as, python, ready_ip_of, samples, workload_namespace};
use support::policy::{
    API_ID, API_ONLY_AUTHENTICATION, AUTHZ_FAMILIES, DEFAULT_ROUTE, NO_ROUTE, OTHER_ID, PLAIN, UNAUTHORIZED, assert_moved, documents, meta, mtls, series,
};

/// What the clients address (the data store's Service).
const AUTHORITY: &str = "data-store.data-store.svc.cluster.local:8081";
/// The unary method the app implements.
const SAY: &str = "/tessera.test.Greeter/Say";
/// A method no HTTPRoute of case 2 matches.
const MISSING: &str = "/tessera.test.Greeter/Missing";

/// A pod's app: relays every connection to its listen address (`app`:
/// 127.0.0.1:$PORT) byte for byte to a target (`proxy`: the pod's outbound
/// proxy from HTTP_PROXY, else HOST:PORT); with a third argument, writes
/// the address it listens on to that file once it listens.
const RELAY_APP: &str = r#"
import asyncio, os, sys
from urllib.parse import urlsplit
def address(spec):
    if spec == "app":
        return "127.0.0.1", int(os.environ["PORT"])
    if spec == "proxy":
        url = urlsplit(os.environ["HTTP_PROXY"])
        return url.hostname, url.port
    host, port = spec.rsplit(":", 1)
    return host, int(port)
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
async def relay(client_reader, client_writer):
    try:
        target_reader, target_writer = await asyncio.open_connection(*address(sys.argv[2]))
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, target_writer), pipe(target_reader, client_writer))
    target_writer.close()
    client_writer.close()
async def main():
    server = await asyncio.start_server(relay, *address(sys.argv[1]))
    if len(sys.argv) > 3:
        host, port = server.sockets[0].getsockname()[:2]
        with open(sys.argv[3] + ".tmp", "w") as f:
            f.write(f"{host}:{port}")
        os.rename(sys.argv[3] + ".tmp", sys.argv[3])
    await server.serve_forever()
asyncio.run(main())
"#;

/// The data store's Server: its pods' port 8081, gRPC.
const GRPC_SERVER: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: data-store-grpc, namespace: data-store}
spec:
  podSelector: {matchLabels: {app: data-store}}
  port: 8081
  proxyProtocol: gRPC
"#;

/// Case 1: the Server admits what `api-only` authenticates.
const API_ONLY_ON_SERVER: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-only, namespace: data-store}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: data-store-grpc}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: api-only}
"#;

/// Case 2: the only route on the Server, the unary method `Say`.
const SAY_ROUTE: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: say, namespace: data-store}
spec:
  parentRefs:
  - {group: policy.linkerd.io, kind: Server, name: data-store-grpc}
  rules:
  - matches:
    - path: {type: Exact, value: /tessera.test.Greeter/Say}
      method: POST
"#;

/// Case 2: `api-only` authorized on the route.
const API_ON_SAY: &str = r#"apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-say, namespace: data-store}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: say}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: api-only}
"#;

fn args(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

/// `Say`'s request message.
#[derive(Clone, PartialEq, prost::Message)]
struct Hello {
    #[prost(string, tag = "1")]
    name: String,
}

/// `Say`'s reply message.
#[derive(Clone, PartialEq, prost::Message)]
struct Greeting {
    #[prost(string, tag = "1")]
    text: String,
}

/// A gRPC message on the wire: not compressed, 4-byte big-endian length, the bytes.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).expect("small message"));
    framed.put_slice(message);
    framed.freeze()
}

/// The one uncompressed message of a gRPC body.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (head, message) = body.split_at_checked(5)?;
    let length = u32::from_be_bytes(head[1..].try_into().ok()?);
    (head[0] == 0 && usize::try_from(length).ok()? == message.len()).then_some(message)
}

/// What the app saw of one request.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    path: String,
    client_id: Option<String>,
    te: Option<String>,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// The data store's app: HTTP/2 only (prior knowledge), so a request the
/// inbound proxy sent as HTTP/1 would fail here.
async fn serve_app(listener: tokio::net::TcpListener, seen: SeenLog) {
    while let Ok((stream, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, seen.clone()));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `Say` answers `hello, NAME` with `grpc-status: 0` in the trailers; another
/// gRPC method UNIMPLEMENTED (12); anything else `plain HTTP/2`.
async fn answer(request: Request<Incoming>, seen: SeenLog) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let entry = Seen { method: parts.method.to_string(), path: parts.uri.path().to_owned(), client_id: header("l5d-client-id"), te: header("te") };
    seen.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if header("content-type").as_deref() != Some("application/grpc") {
        return Ok(Response::new(Full::new(Bytes::from_static(b"plain HTTP/2\n")).boxed()));
    }
    let hello = unframe(&body).and_then(|m| Hello::decode(m).ok()).filter(|_| parts.uri.path() == SAY);
    let (data, status) = match hello {
        Some(hello) => (frame(&Greeting { text: format!("hello, {}", hello.name) }.encode_to_vec()), "0"),
        None => (Bytes::new(), "12"),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let mut response = Response::new(Full::new(data).with_trailers(std::future::ready(Some(Ok(trailers)))).boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// A response as the client saw it (the parts these tests compare).
#[derive(Debug, PartialEq)]
struct Reply {
    status: u16,
    content_type: Option<String>,
    /// `grpc-status` in the response headers (a trailers-only answer).
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    proxy_error: Option<String>,
    body: Bytes,
    /// `grpc-status` in the trailers, when trailers came.
    trailer_status: Option<String>,
}

impl Reply {
    /// The app's answer to `Say` from `name`.
    fn greeted(name: &str) -> Self {
        Self {
            status: 200,
            content_type: Some("application/grpc".into()),
            grpc_status: None,
            grpc_message: None,
            proxy_error: None,
            body: frame(&Greeting { text: format!("hello, {name}") }.encode_to_vec()),
            trailer_status: Some("0".into()),
        }
    }

    /// A gRPC call the data store's proxy refused, as linkerd2-proxy
    /// answers it: HTTP 200, trailers-only, the reason in `grpc-message`
    /// (percent-encoded; these reasons are plain ASCII) and `l5d-proxy-error`.
    fn grpc_denied(code: &str, reason: &str) -> Self {
        Self {
            status: 200,
            content_type: Some("application/grpc".into()),
            grpc_status: Some(code.into()),
            grpc_message: Some(reason.into()),
            proxy_error: Some(reason.into()),
            body: Bytes::new(),
            trailer_status: None,
        }
    }

    /// A plain HTTP/2 request the data store's proxy refused.
    fn http_denied(status: u16, reason: &str) -> Self {
        Self {
            status,
            content_type: Some("text/plain; charset=utf-8".into()),
            grpc_status: None,
            grpc_message: None,
            proxy_error: Some(reason.into()),
            body: Bytes::from(format!("{reason}\n")),
            trailer_status: None,
        }
    }

    /// The gRPC status, wherever it came.
    fn code(&self) -> Option<&str> {
        self.trailer_status.as_deref().or(self.grpc_status.as_deref())
    }
}

/// One request on a new HTTP/2 connection (prior knowledge) to `addr`.
async fn h2(addr: SocketAddr, request: Request<Full<Bytes>>) -> Result<Reply, String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
        let header = |headers: &HeaderMap, name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let trailer_status = body.trailers().map(|t| header(t, "grpc-status").unwrap_or_default());
        Ok(Reply {
            status: parts.status.as_u16(),
            content_type: header(&parts.headers, "content-type"),
            grpc_status: header(&parts.headers, "grpc-status"),
            grpc_message: header(&parts.headers, "grpc-message"),
            proxy_error: header(&parts.headers, "l5d-proxy-error"),
            body: body.to_bytes(),
            trailer_status,
        })
    };
    tokio::time::timeout(Duration::from_secs(15), exchange).await.map_err(|_| format!("no answer from {addr} in 15 s"))?
}

/// A unary gRPC call of `path` as `name`.
fn grpc(path: &str, name: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{AUTHORITY}{path}"))
        .version(Version::HTTP_2)
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(Full::new(frame(&Hello { name: name.into() }.encode_to_vec())))
        .expect("request")
}

/// A plain HTTP/2 `GET /plain`.
fn plain() -> Request<Full<Bytes>> {
    Request::get(format!("http://{AUTHORITY}/plain")).version(Version::HTTP_2).body(Full::new(Bytes::new())).expect("request")
}

#[derive(Clone, Copy, Debug)]
enum Client {
    /// Through the api pod's outbound proxy.
    Api,
    /// Through the `other` pod's outbound proxy.
    Other,
    /// Straight at the data store's public port, in plain text.
    Unmeshed,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Other => "other",
            Self::Unmeshed => "unmeshed",
        }
    }
}

/// The world: the server, the identity service, three meshed pods and the data store's app.
struct Cluster {
    /// Stopped first (fields drop in order), so the agents still reach the server to delete their pods.
    _procs: Vec<Proc>,
    server: Server,
    runtime: tokio::runtime::Runtime,
    seen: SeenLog,
    data_store_ip: String,
    /// Where the api's and other's apps listen (their relays to their outbound proxies).
    api_app: SocketAddr,
    other_app: SocketAddr,
}

impl Cluster {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let seen = SeenLog::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the app");
        let app_addr = listener.local_addr().expect("app address").to_string();
        runtime.spawn(serve_app(listener, seen.clone()));

        let server = Server::start();
        api_and_data_store(&server);
        workload_namespace(&server, "other");
        let pki = server.path("identity");
        let (identity_proc, identity_addr) = identity(&server, &pki);
        let anchors = pki.join("ca.crt");
        let python = python();
        // Pod names of their own: addresses derive from node, namespace and
        // pod, so the other mesh tests running beside this one never collide.
        let port = |p: &'static str| ["--port", p];
        let relay = |listen: &str, target: &str, file: Option<&Path>| {
            let mut args = vec![python.clone(), "-c".into(), RELAY_APP.into(), listen.into(), target.into()];
            args.extend(file.map(|f| f.display().to_string()));
            args
        };
        let data_store_app = relay("app", &app_addr, None);
        let data_store = meshed_as(&server, "data-store-g", "data-store", &port("8081"), &identity_addr, &anchors, &args(&data_store_app));
        let (api_file, other_file) = (server.path("api-app.addr"), server.path("other-app.addr"));
        let api_relay = relay("app", "proxy", Some(&api_file));
        let api = meshed_as(&server, "api-g", "api", &port("8080"), &identity_addr, &anchors, &args(&api_relay));
        let other_relay = relay("app", "proxy", Some(&other_file));
        let other = meshed_as(&server, "other-g", "other", &port("8080"), &identity_addr, &anchors, &args(&other_relay));
        // Ready means: a certificate and the pod's first inbound policy.
        let data_store_ip = ready_ip_of(&server, "data-store", "data-store-g");
        ready_ip_of(&server, "api", "api-g");
        ready_ip_of(&server, "other", "other-g");
        let listening = |file: &Path| {
            server.eventually(30, &format!("{} written", file.display()), || std::fs::read_to_string(file).ok()?.parse::<SocketAddr>().ok())
        };
        let (api_app, other_app) = (listening(&api_file), listening(&other_file));
        let cluster = Self { _procs: vec![data_store, api, other, identity_proc], server, runtime, seen, data_store_ip, api_app, other_app };
        // No Server yet: the default policy (all-unauthenticated) lets every client call.
        cluster.wait_for("every client's gRPC call answered under the default policy", || {
            [Client::Api, Client::Other, Client::Unmeshed].into_iter().all(|c| cluster.try_call(c, grpc(SAY, c.name())).is_ok_and(|r| r.code() == Some("0")))
        });
        cluster
    }

    fn try_call(&self, client: Client, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let addr = match client {
            Client::Api => self.api_app,
            Client::Other => self.other_app,
            Client::Unmeshed => format!("{}:8081", self.data_store_ip).parse().expect("pod address"),
        };
        self.runtime.block_on(h2(addr, request))
    }

    fn call(&self, client: Client, request: Request<Full<Bytes>>) -> Reply {
        self.try_call(client, request).unwrap_or_else(|e| panic!("{client:?}: {e}"))
    }

    /// `Say` from `client`, named after it.
    fn say(&self, client: Client) -> Reply {
        self.call(client, grpc(SAY, client.name()))
    }

    /// How many requests the app has seen so far.
    fn seen_count(&self) -> usize {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The requests the app saw after the first `from`.
    fn seen_since(&self, from: usize) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)[from..].to_vec()
    }

    /// The data store proxy's authorization series now.
    fn authz_metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = curl(&format!("http://{}:4191/metrics", self.data_store_ip));
        assert_eq!(status, 200, "{text}");
        samples(&text, &AUTHZ_FAMILIES)
    }

    /// `target_addr`, `target_ip`, `target_port`, and `srv_*` of the data store's Server.
    fn target_and_server(&self) -> (String, String) {
        let ip = &self.data_store_ip;
        (format!(r#"target_addr="{ip}:8081",target_ip="{ip}",target_port="8081""#), meta("srv", "policy.linkerd.io", "server", "data-store-grpc"))
    }

    fn kubectl_stdin(&self, verb: &str, yaml: &str) {
        let out = self.server.kubectl_stdin(&[verb, "-f", "-"], yaml);
        assert!(out.status.success(), "kubectl {verb}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Polls until `check` holds (the proxy applies a change asynchronously); how long it took.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        self.server.eventually(30, what, || check().then_some(()));
        start.elapsed()
    }
}

/// The app's record of the api's `Say`: through both proxies, with its
/// verified identity and gRPC's `te: trailers` intact.
fn api_say_seen() -> Seen {
    Seen { method: "POST".into(), path: SAY.into(), client_id: Some(API_ID.into()), te: Some("trailers".into()) }
}

#[test]
fn grpc_and_http2_denials_through_meshed_proxies_answer_as_linkerd() {
    let started = Instant::now();
    let cluster = Cluster::start();
    eprintln!("cluster ready in {:?}", started.elapsed());
    server_policy_denies_grpc_with_permission_denied(&cluster);
    http_route_miss_is_grpc_not_found(&cluster);
    eprintln!("all cases in {:?}", started.elapsed());
}

fn server_policy_denies_grpc_with_permission_denied(c: &Cluster) {
    let case = "gRPC Server + AuthorizationPolicy api-only";
    let yaml = documents(&[GRPC_SERVER, API_ONLY_AUTHENTICATION, API_ONLY_ON_SERVER]);
    c.kubectl_stdin("apply", &yaml);
    let took = c.wait_for("the policy enforced (api in, other out)", || {
        c.say(Client::Api).code() == Some("0") && c.say(Client::Other).code() == Some("7")
    });
    eprintln!("{case}: enforced {took:?} after kubectl apply returned");

    let (before, seen) = (c.authz_metrics(), c.seen_count());
    assert_eq!(c.say(Client::Api), Reply::greeted("api"), "{case}: api's call");
    assert_eq!(c.say(Client::Other), Reply::grpc_denied("7", UNAUTHORIZED), "{case}: other's call");
    assert_eq!(c.say(Client::Unmeshed), Reply::grpc_denied("7", UNAUTHORIZED), "{case}: unmeshed call");
    assert_eq!(c.call(Client::Other, plain()), Reply::http_denied(403, UNAUTHORIZED), "{case}: other's plain HTTP/2");
    assert_eq!(c.call(Client::Unmeshed, plain()), Reply::http_denied(403, UNAUTHORIZED), "{case}: unmeshed plain HTTP/2");
    let after = c.authz_metrics();
    assert_eq!(c.seen_since(seen), [api_say_seen()], "{case}: the app saw the allowed call only");

    let (target, srv) = c.target_and_server();
    let authz = meta("authz", "policy.linkerd.io", "authorizationpolicy", "api-only");
    assert_moved(
        case,
        &before,
        &after,
        &[
            (series("inbound_http_authz_allow_total", &[&target, &srv, DEFAULT_ROUTE, &authz, &mtls(API_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, &mtls(OTHER_ID)]), 2.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, DEFAULT_ROUTE, PLAIN]), 2.0),
        ],
    );

    c.kubectl_stdin("delete", &yaml);
    c.wait_for("the default policy back once the Server is deleted", || c.say(Client::Other).code() == Some("0"));
}

fn http_route_miss_is_grpc_not_found(c: &Cluster) {
    let case = "HTTPRoute POST Say + AuthorizationPolicy on the route";
    let yaml = documents(&[GRPC_SERVER, SAY_ROUTE, API_ONLY_AUTHENTICATION, API_ON_SAY]);
    c.kubectl_stdin("apply", &yaml);
    let took = c.wait_for("the HTTPRoute and its AuthorizationPolicy enforced", || {
        c.say(Client::Api).code() == Some("0")
            && c.say(Client::Other).code() == Some("7")
            && c.call(Client::Api, grpc(MISSING, "api")).code() == Some("5")
    });
    eprintln!("{case}: enforced {took:?} after kubectl apply returned");

    let (before, seen) = (c.authz_metrics(), c.seen_count());
    assert_eq!(c.say(Client::Api), Reply::greeted("api"), "{case}: api's call on the route");
    // No route matches: NOT_FOUND, whoever asks.
    assert_eq!(c.call(Client::Api, grpc(MISSING, "api")), Reply::grpc_denied("5", NO_ROUTE), "{case}: api's call off the route");
    // Route matched, the client not authorized on it: PERMISSION_DENIED.
    assert_eq!(c.say(Client::Other), Reply::grpc_denied("7", UNAUTHORIZED), "{case}: other's call on the route");
    assert_eq!(c.call(Client::Unmeshed, plain()), Reply::http_denied(404, NO_ROUTE), "{case}: unmeshed plain HTTP/2 off the route");
    let after = c.authz_metrics();
    assert_eq!(c.seen_since(seen), [api_say_seen()], "{case}: the app saw the allowed call only");

    let (target, srv) = c.target_and_server();
    let route = meta("route", "policy.linkerd.io", "HTTPRoute", "say");
    let authz = meta("authz", "policy.linkerd.io", "authorizationpolicy", "api-say");
    assert_moved(
        case,
        &before,
        &after,
        &[
            (series("inbound_http_authz_allow_total", &[&target, &srv, &route, &authz, &mtls(API_ID)]), 1.0),
            (series("inbound_http_authz_deny_total", &[&target, &srv, &route, &mtls(OTHER_ID)]), 1.0),
            (series("inbound_http_route_not_found_total", &[&target, &srv, &mtls(API_ID)]), 1.0),
            (series("inbound_http_route_not_found_total", &[&target, &srv, PLAIN]), 1.0),
        ],
    );
    c.kubectl_stdin("delete", &yaml);
}
