//! The app connection of one HTTP/1 client connection.
//!
//! HTTP/1 requests on a client connection come one after another, so one
//! HTTP/1.1 connection to the app serves them all: opened on the first
//! request (`hyper::client::conn::http1`), reused while the app keeps it
//! open, reopened on the next request after the app closed it. Its
//! connection future is not spawned: the client connection's task polls it
//! (`super::drive`), so a request and its response cross no task boundary.
//!
//! As hyper-util's pool does, a request that the app connection handed
//! back unwritten (the app closed an idle connection just as it was sent)
//! is sent once more on a fresh connection; a request whose bytes may have
//! reached the app never is.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::http::{AppConnector, AppError};

/// An app connection's future, polled by the client connection's task.
type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The app side of one HTTP/1 client connection.
pub(super) struct AppConn {
    connector: AppConnector,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The open connection's sender; taken out while a request uses it.
    sender: Option<http1::SendRequest<Incoming>>,
    /// Connection futures still running: one, or two while a closed one
    /// winds down as its successor starts.
    conns: Vec<ConnFuture>,
    /// Wakes the poller of `conns` when a connection is added.
    poller: Option<Waker>,
}

impl AppConn {
    pub(super) fn new(connector: AppConnector) -> Self {
        Self { connector, state: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drives the app connections; the client connection's task calls this
    /// whenever one of them was woken (nothing else polls them).
    pub(super) fn poll_conns(&self, cx: &mut Context<'_>) {
        let mut state = self.state();
        if !state.poller.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.poller = Some(cx.waker().clone());
        }
        state.conns.retain_mut(|conn| conn.as_mut().poll(cx).is_pending());
    }

    /// Sends `request` (absolute URI, HTTP/1.1) to the app and returns its response.
    pub(super) async fn send(&self, mut request: Request<Incoming>) -> Result<Response<Incoming>, AppError> {
        to_origin_form(&mut request);
        let idle = self.state().sender.take();
        // Not ready means the app closed the connection: open another.
        if let Some(mut sender) = idle
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.state().sender = Some(sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        tracing::debug!(error = %error.error(), "app connection closed before the request was written; retrying on a new one");
                        request = unsent;
                    }
                    None => return Err(AppError::Http(error.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await;
        self.state().sender = Some(sender);
        Ok(response?)
    }

    /// Opens a connection to the app and hands its future to the poller.
    async fn connect(&self) -> Result<http1::SendRequest<Incoming>, AppError> {
        let stream = self.connector.connect().await.map_err(AppError::Connect)?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(AppError::Handshake)?;
        let mut state = self.state();
        state.conns.push(Box::pin(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "app connection ended");
            }
        }));
        // The new future has never been polled, so nothing would wake its poller.
        if let Some(poller) = &state.poller {
            poller.wake_by_ref();
        }
        Ok(sender)
    }
}

/// What hyper-util's client does to an HTTP/1 request: a `Host` from the
/// URI when the client sent none (an HTTP/2 client, an HTTP/1.0 one), and
/// the request target in origin form (authority form for CONNECT).
fn to_origin_form<B>(request: &mut Request<B>) {
    let uri = request.uri().clone();
    if let Some(authority) = uri.authority() {
        let host = match authority.port_u16() {
            Some(80) | None => authority.host(),
            Some(_) => authority.as_str(),
        };
        if let Ok(host) = HeaderValue::from_str(host) {
            request.headers_mut().entry(header::HOST).or_insert(host);
        }
    }
    let mut parts = http::uri::Parts::default();
    if request.method() == Method::CONNECT {
        parts.authority = uri.authority().cloned();
    } else {
        parts.path_and_query = uri.path_and_query().cloned();
    }
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::inbound::{InboundConfig, serve};
    use crate::metrics::Metrics;

    const WAIT: Duration = Duration::from_secs(5);

    /// What the test app does with request `n` of its connection `conn` (both from 1).
    #[derive(Clone, Copy)]
    enum Act {
        /// `200`, body `"{conn}-{n} {request line} host={Host}"`, keep the connection.
        Answer,
        /// Answer, then close the connection.
        AnswerThenClose,
        /// Half a response head, then close.
        HalfHeadThenClose,
        /// Close without answering (the request reached the app).
        CloseUnanswered,
        /// `101 Switching Protocols`, then echo.
        Upgrade,
        /// `200` with the request's body (`content-length` framed) as its body.
        EchoBody,
    }

    /// A raw HTTP/1.1 app following `script`; counts its accepted connections
    /// and reports each one it closed.
    struct App {
        addr: SocketAddr,
        accepts: Arc<AtomicUsize>,
        closed: mpsc::UnboundedReceiver<usize>,
    }

    impl App {
        async fn start(script: fn(usize, usize) -> Act) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepts = Arc::new(AtomicUsize::new(0));
            let (closed_tx, closed) = mpsc::unbounded_channel();
            let counted = accepts.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    let closed_tx = closed_tx.clone();
                    tokio::spawn(async move {
                        app_connection(stream, conn, script).await;
                        let _ = closed_tx.send(conn);
                    });
                }
            });
            Self { addr, accepts, closed }
        }

        fn accepts(&self) -> usize {
            self.accepts.load(Ordering::SeqCst)
        }

        async fn wait_closed(&mut self, conn: usize) {
            let closed = tokio::time::timeout(WAIT, self.closed.recv()).await.expect("the app closes a connection");
            assert_eq!(closed, Some(conn));
        }
    }

    async fn app_connection(mut stream: TcpStream, conn: usize, script: fn(usize, usize) -> Act) {
        let mut buf = Vec::new();
        for n in 1.. {
            let Some(head) = read_head(&mut stream, &mut buf).await else { return };
            let line = head.lines().next().unwrap_or_default().to_owned();
            let host = head.lines().find_map(|l| l.strip_prefix("host: ")).unwrap_or_default().to_owned();
            let answer = |body: String| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            match script(conn, n) {
                Act::Answer => stream.write_all(answer(format!("{conn}-{n} {line} host={host}")).as_bytes()).await.unwrap(),
                Act::AnswerThenClose => {
                    stream.write_all(answer(format!("{conn}-{n} {line} host={host}")).as_bytes()).await.unwrap();
                    return;
                }
                Act::HalfHeadThenClose => {
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-").await.unwrap();
                    return;
                }
                Act::CloseUnanswered => return,
                Act::EchoBody => {
                    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.parse().unwrap());
                    while buf.len() < length {
                        let mut chunk = [0u8; 16384];
                        let n = stream.read(&mut chunk).await.unwrap();
                        assert_ne!(n, 0, "request body cut short");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: Vec<u8> = buf.drain(..length).collect();
                    stream.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n").as_bytes()).await.unwrap();
                    stream.write_all(&body).await.unwrap();
                }
                Act::Upgrade => {
                    stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    return;
                }
            }
        }
    }

    /// Reads one message head (lower-cased header names as hyper writes
    /// them) and leaves what follows it in `buf`; `None` at EOF.
    async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        read_head_from(stream, buf).await
    }

    async fn read_head_from<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf.drain(..end + 4).collect()).unwrap();
                return Some(head);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a GET for `path` on `client` and reads the answer: status, head, body.
    async fn get(client: &mut TcpStream, path: &str, headers: &str) -> (u16, String, String) {
        client.write_all(format!("GET {path} HTTP/1.1\r\nhost: web:8080\r\n{headers}\r\n").as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = tokio::time::timeout(WAIT, read_head(client, &mut buf)).await.expect("an answer").expect("a response head");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.parse().unwrap());
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, client.read(&mut chunk)).await.expect("the body").unwrap();
            assert_ne!(n, 0, "body cut short: {head}");
            buf.extend_from_slice(&chunk[..n]);
        }
        (status, head, String::from_utf8(buf).unwrap())
    }

    /// An inbound port forwarding to `app`, plain text.
    async fn inbound(app: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let config = InboundConfig {
            listen,
            app,
            detect_timeout: WAIT,
            handshake_timeout: WAIT,
            connect_timeout: WAIT,
            policy: None,
            limit: crate::limit::ConnLimit::default(),
        };
        let (_, credentials) = watch::channel(None);
        tokio::spawn(serve(listener, config, credentials, Metrics::new(), std::future::pending()));
        listen
    }

    // Two workers: wake-ups from the other thread's reactor reach `drive` too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_connection_has_one_app_connection_and_two_clients_have_two() {
        let app = App::start(|_, _| Act::Answer).await;
        let listen = inbound(app.addr).await;
        let mut first = TcpStream::connect(listen).await.unwrap();
        let (status, _, body) = get(&mut first, "/a", "l5d-client-id: spoofed\r\n").await;
        assert_eq!((status, body.as_str()), (200, "1-1 GET /a HTTP/1.1 host=web:8080"));
        let (status, _, body) = get(&mut first, "/b?c=d", "").await;
        assert_eq!((status, body.as_str()), (200, "1-2 GET /b?c=d HTTP/1.1 host=web:8080"));
        let mut second = TcpStream::connect(listen).await.unwrap();
        let (status, _, body) = get(&mut second, "/e", "").await;
        assert_eq!((status, body.as_str()), (200, "2-1 GET /e HTTP/1.1 host=web:8080"));
        let (status, _, body) = get(&mut first, "/f", "").await;
        assert_eq!((status, body.as_str()), (200, "1-3 GET /f HTTP/1.1 host=web:8080"));
        assert_eq!(app.accepts(), 2);
    }

    // Two workers: wake-ups from the other thread's reactor reach `drive` too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_app_closes_between_requests_the_next_one_goes_on_a_new_connection() {
        let mut app = App::start(|conn, _| if conn == 1 { Act::AnswerThenClose } else { Act::Answer }).await;
        let listen = inbound(app.addr).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        let (status, _, body) = get(&mut client, "/a", "").await;
        assert_eq!((status, body.as_str()), (200, "1-1 GET /a HTTP/1.1 host=web:8080"));
        app.wait_closed(1).await;
        let (status, _, body) = get(&mut client, "/b", "").await;
        assert_eq!((status, body.as_str()), (200, "2-1 GET /b HTTP/1.1 host=web:8080"));
        assert_eq!(app.accepts(), 2);
    }

    #[tokio::test]
    async fn the_app_dying_mid_response_is_a_502_and_the_next_request_reconnects() {
        let app = App::start(|conn, _| if conn == 1 { Act::HalfHeadThenClose } else { Act::Answer }).await;
        let listen = inbound(app.addr).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        let (status, head, body) = get(&mut client, "/a", "").await;
        assert_eq!((status, body.as_str()), (502, "the app's response failed\n"));
        assert!(head.contains("\r\nl5d-proxy-error: the app's response failed\r\n"), "{head}");
        let (status, _, body) = get(&mut client, "/b", "").await;
        assert_eq!((status, body.as_str()), (200, "2-1 GET /b HTTP/1.1 host=web:8080"));
    }

    #[tokio::test]
    async fn a_request_that_reached_the_app_is_never_retried() {
        let app = App::start(|conn, n| if (conn, n) == (1, 2) { Act::CloseUnanswered } else { Act::Answer }).await;
        let listen = inbound(app.addr).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        assert_eq!(get(&mut client, "/a", "").await.0, 200);
        let (status, _, body) = get(&mut client, "/b", "").await;
        assert_eq!((status, body.as_str()), (502, "the app's response failed\n"));
        assert_eq!(app.accepts(), 1, "not sent again");
        let (status, _, body) = get(&mut client, "/c", "").await;
        assert_eq!((status, body.as_str()), (200, "2-1 GET /c HTTP/1.1 host=web:8080"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_larger_than_the_socket_buffers_stream_both_ways() {
        let app = App::start(|_, _| Act::EchoBody).await;
        let listen = inbound(app.addr).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        for round in 0..2u8 {
            let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8 ^ round).collect();
            let head = format!("POST /up HTTP/1.1\r\nhost: web:8080\r\ncontent-length: {}\r\n\r\n", body.len());
            let (mut read, mut write) = client.split();
            let send = async {
                write.write_all(head.as_bytes()).await.unwrap();
                write.write_all(&body).await.unwrap();
            };
            let receive = async {
                let mut buf = Vec::new();
                let head = read_head_from(&mut read, &mut buf).await.expect("a response head");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                while buf.len() < body.len() {
                    let mut chunk = [0u8; 65536];
                    let n = read.read(&mut chunk).await.unwrap();
                    assert_ne!(n, 0, "response body cut short");
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf
            };
            let ((), echoed) = tokio::time::timeout(WAIT, async { tokio::join!(send, receive) }).await.expect("streamed");
            assert!(echoed == body, "round {round}: the body came back changed");
        }
        assert_eq!(app.accepts(), 1);
    }

    #[tokio::test]
    async fn no_app_listening_is_a_502() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = closed.local_addr().unwrap();
        drop(closed);
        let listen = inbound(nobody).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        let (status, head, body) = get(&mut client, "/a", "").await;
        assert_eq!((status, body.as_str()), (502, "connection to the app failed\n"));
        assert!(head.contains("\r\nl5d-proxy-error: connection to the app failed\r\n"), "{head}");
    }

    #[tokio::test]
    async fn an_upgrade_after_a_request_gets_its_own_app_connection() {
        let app = App::start(|conn, _| if conn == 2 { Act::Upgrade } else { Act::Answer }).await;
        let listen = inbound(app.addr).await;
        let mut client = TcpStream::connect(listen).await.unwrap();
        assert_eq!(get(&mut client, "/a", "").await.0, 200);
        let (status, head, _) = get(&mut client, "/ws", "connection: Upgrade\r\nupgrade: websocket\r\n").await;
        assert_eq!(status, 101, "{head}");
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        client.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        tokio::time::timeout(WAIT, client.read_exact(&mut echoed)).await.expect("echoed").unwrap();
        assert_eq!(&echoed, b"ping");
        assert_eq!(app.accepts(), 2);
    }

    #[test]
    fn requests_go_in_origin_form_with_a_host() {
        let mut request = Request::get("http://web.ns:8080/a/b?c=d").body(()).unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.headers()[header::HOST], "web.ns:8080");

        let mut request = Request::get("http://web.ns:80/").header(header::HOST, "kept").body(()).unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "/");
        assert_eq!(request.headers()[header::HOST], "kept");

        let mut request = Request::get("http://web.ns:80/x").body(()).unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.headers()[header::HOST], "web.ns");

        let mut request = Request::connect("http://db.ns:5432/").body(()).unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "db.ns:5432");
    }
}
