//! Client of the destination API (`GET /tessera/v1/destinations`).
//!
//! The outbound proxy learns each authority's endpoints and their *expected*
//! identities from the control plane, as Linkerd's destination service
//! works: never from what a peer claims. One watch per authority is shared by
//! every request to it; the latest answer lives in a `watch` channel, the
//! stream is re-established with backoff when it breaks, and it is dropped
//! once no request has asked for the authority for [`ApiConfig::idle`].
//!
//! [`Discover`] is the seam tests use to feed snapshots without a server
//! ([`StaticDiscover`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::apistream::{ApiStream, ApiStreamError, status_line};
pub(crate) use crate::apistream::percent_encode;

/// The Service an answer belongs to (`null` when the authority is a pod IP).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceRef {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

/// One ready endpoint of an authority.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// The pod's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The pod's name.
    #[serde(default)]
    pub pod: Option<String>,
    /// The pod's ServiceAccount.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether the pod runs a proxy.
    #[serde(default)]
    pub meshed: bool,
    /// The identity the endpoint must present; `None` means plain text.
    #[serde(default)]
    pub identity: Option<String>,
}

/// One answer of the destination API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    /// The authority as the server canonicalised it.
    pub authority: String,
    /// The Service, if the authority named one.
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// Ready endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// What is currently known about an authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// No answer yet.
    Pending,
    /// The latest snapshot (possibly with no endpoints).
    Found(Arc<Snapshot>),
    /// The control plane does not know the authority (404).
    NotFound,
    /// The control plane could not be asked; the message says why.
    Failed(String),
}

/// Source of resolutions: the destination API, or a fake in tests.
pub trait Discover: Send + Sync + 'static {
    /// A receiver of the authority's resolution. The value is `Pending`
    /// until the first answer.
    fn watch(&self, authority: &str) -> watch::Receiver<Resolution>;
}

/// Lower-cases the host and adds the port a URL scheme implies, so that
/// `Foo.ns:80` and `foo.ns:80` share one watch.
pub fn normalize_authority(authority: &str, default_port: u16) -> Option<String> {
    let auth: http::uri::Authority = authority.parse().ok()?;
    if auth.as_str().contains('@') {
        return None;
    }
    let host = auth.host().to_ascii_lowercase();
    let port = auth.port_u16().unwrap_or(default_port);
    Some(format!("{host}:{port}"))
}

/// Test and static-configuration source: authorities set by hand.
#[derive(Debug, Default)]
pub struct StaticDiscover {
    entries: Mutex<HashMap<String, watch::Sender<Resolution>>>,
}

impl StaticDiscover {
    /// An empty source: every authority is `NotFound` until set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes a resolution for an authority (watchers see the change).
    pub fn set(&self, authority: &str, resolution: Resolution) {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(authority) {
            Some(tx) => {
                tx.send_replace(resolution);
            }
            None => {
                map.insert(authority.to_owned(), watch::channel(resolution).0);
            }
        }
    }
}

impl Discover for StaticDiscover {
    fn watch(&self, authority: &str) -> watch::Receiver<Resolution> {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(authority.to_owned())
            .or_insert_with(|| watch::channel(Resolution::NotFound).0)
            .subscribe()
    }
}

/// How to reach the destination API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base URL of the API server (`TESSERA_API_SERVER`), `https://` or `http://`.
    pub server: http::Uri,
    /// The projected ServiceAccount token; re-read for every stream because
    /// the agent rotates it.
    pub token_file: PathBuf,
    /// The cluster CA bundle (PEM) that signs the API server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Drop a watch nobody asked for in this long.
    pub idle: Duration,
    /// First retry delay; doubles up to [`ApiConfig::max_backoff`].
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl ApiConfig {
    /// Defaults: one-minute idle (Linkerd's cache idle age), 100 ms to 10 s backoff.
    pub fn new(server: http::Uri, token_file: PathBuf, ca_file: Option<PathBuf>) -> Self {
        Self {
            server,
            token_file,
            ca_file,
            idle: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Why the destination client could not be built or a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The server URL is unusable.
    #[error("destination API URL {0:?}: {1}")]
    Url(String, &'static str),
    /// A file could not be read.
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The CA bundle holds no usable certificate.
    #[error("cluster CA {0}: {1}")]
    Ca(PathBuf, String),
    /// Connecting or talking to the server failed.
    #[error("destination API: {0}")]
    Transport(String),
    /// The server answered with an unexpected status.
    #[error("destination API answered {0}")]
    Status(http::StatusCode),
    /// A snapshot line did not parse.
    #[error("destination API sent a bad snapshot: {0}")]
    Decode(serde_json::Error),
}

impl From<ApiStreamError> for DestinationError {
    fn from(error: ApiStreamError) -> Self {
        match error {
            ApiStreamError::Url(url, why) => Self::Url(url, why),
            ApiStreamError::File(path, e) => Self::File(path, e),
            ApiStreamError::Ca(path, e) => Self::Ca(path, e),
            ApiStreamError::Transport(e) => Self::Transport(e),
            ApiStreamError::Status(code) => Self::Status(code),
        }
    }
}

struct Entry {
    tx: Arc<watch::Sender<Resolution>>,
    last_used: Instant,
}

struct ApiInner {
    config: ApiConfig,
    stream: ApiStream,
    entries: Mutex<HashMap<String, Entry>>,
}

/// [`Discover`] over the destination API with the pod's ServiceAccount token.
#[derive(Clone)]
pub struct ApiDiscover {
    inner: Arc<ApiInner>,
}

impl std::fmt::Debug for ApiDiscover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiDiscover")
            .field("server", &self.inner.config.server)
            .finish()
    }
}

impl ApiDiscover {
    /// Builds the client (reads the CA bundle now; the token on every stream).
    pub fn new(config: ApiConfig) -> Result<Self, DestinationError> {
        let stream = ApiStream::new(config.server.clone(), config.token_file.clone(), config.ca_file.as_ref())?;
        Ok(Self {
            inner: Arc::new(ApiInner {
                config,
                stream,
                entries: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// How many authorities are watched now (tests check idle dropping).
    pub fn active(&self) -> usize {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Discover for ApiDiscover {
    fn watch(&self, authority: &str) -> watch::Receiver<Resolution> {
        let mut map = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(authority) {
            entry.last_used = Instant::now();
            return entry.tx.subscribe();
        }
        let (tx, rx) = watch::channel(Resolution::Pending);
        let tx = Arc::new(tx);
        map.insert(
            authority.to_owned(),
            Entry {
                tx: tx.clone(),
                last_used: Instant::now(),
            },
        );
        tokio::spawn(run_watch(self.inner.clone(), authority.to_owned(), tx));
        rx
    }
}

/// Keeps one authority's resolution current until it goes idle.
async fn run_watch(inner: Arc<ApiInner>, authority: String, tx: Arc<watch::Sender<Resolution>>) {
    let mut backoff = inner.config.min_backoff;
    loop {
        let result = tokio::select! {
            r = stream_once(&inner, &authority, &tx) => r,
            () = idle(&inner, &authority, &tx) => return,
        };
        // An unknown authority is asked again every few seconds at most,
        // so a Service created later is found soon.
        let mut cap = inner.config.max_backoff;
        match result {
            Ok(()) => backoff = inner.config.min_backoff,
            Err(DestinationError::Status(http::StatusCode::NOT_FOUND)) => {
                tx.send_if_modified(|r| {
                    let changed = *r != Resolution::NotFound;
                    *r = Resolution::NotFound;
                    changed
                });
                cap = cap.min(NOT_FOUND_RETRY);
            }
            Err(e) => {
                warn!(%authority, error = %e, "destination watch failed; retrying");
                // Keep the last good snapshot (as Linkerd does when the
                // control plane is unreachable); only an unanswered
                // authority becomes Failed.
                tx.send_if_modified(|r| match r {
                    Resolution::Found(_) => false,
                    other => {
                        *other = Resolution::Failed(e.to_string());
                        true
                    }
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = idle(&inner, &authority, &tx) => return,
        }
        backoff = (backoff * 2).min(cap);
    }
}

/// Longest wait before asking again about an unknown authority.
const NOT_FOUND_RETRY: Duration = Duration::from_secs(2);

/// Resolves once nobody has watched the authority for the idle time, after
/// removing it from the map (under the lock `watch` subscribes with).
async fn idle(inner: &ApiInner, authority: &str, tx: &watch::Sender<Resolution>) {
    loop {
        tx.closed().await;
        let since = {
            let map = inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
            map.get(authority)
                .map(|e| e.last_used.elapsed())
                .unwrap_or(inner.config.idle)
        };
        if since < inner.config.idle {
            tokio::time::sleep(inner.config.idle - since).await;
            continue;
        }
        let dropped = {
            let mut map = inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let idle = map
                .get(authority)
                .is_none_or(|e| e.last_used.elapsed() >= inner.config.idle);
            let dropped = tx.receiver_count() == 0 && idle;
            if dropped {
                map.remove(authority);
            }
            dropped
        };
        if dropped {
            debug!(%authority, "destination watch idle; dropped");
            return;
        }
        if tx.receiver_count() == 0 {
            // Used recently but not now: check again after a tick.
            tokio::time::sleep(inner.config.idle / 4 + Duration::from_millis(1)).await;
        }
    }
}

/// One streaming request; returns when the server ends the stream.
async fn stream_once(
    inner: &ApiInner,
    authority: &str,
    tx: &watch::Sender<Resolution>,
) -> Result<(), DestinationError> {
    let path = format!(
        "/tessera/v1/destinations?authority={}&watch=true",
        percent_encode(authority)
    );
    let answered = inner
        .stream
        .lines(&path, |line| {
            let snapshot = decode_line(line)?;
            debug!(%authority, endpoints = snapshot.endpoints.len(), "destination snapshot");
            publish(tx, snapshot);
            Ok::<(), DestinationError>(())
        })
        .await?;
    // A watch the server ended after answering (its timeout) is normal:
    // reconnect at once with the shortest backoff.
    if answered {
        Ok(())
    } else {
        Err(DestinationError::Transport(
            "stream ended without an answer".into(),
        ))
    }
}

/// One line of the stream: a snapshot, or the kube Status the server sends
/// before ending a watch whose authority stopped resolving (e.g. the
/// Service was deleted: 404, so requests stop using the old endpoints).
fn decode_line(line: &[u8]) -> Result<Snapshot, DestinationError> {
    if let Some(code) = status_line(line) {
        return Err(DestinationError::Status(code));
    }
    serde_json::from_slice(line).map_err(DestinationError::Decode)
}

fn publish(tx: &watch::Sender<Resolution>, snapshot: Snapshot) {
    tx.send_if_modified(|r| match r {
        Resolution::Found(current) if **current == snapshot => false,
        other => {
            *other = Resolution::Found(Arc::new(snapshot));
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_snapshot() {
        let line = r#"{"authority":"data-store.data-store.svc.cluster.local:8081",
 "service":{"namespace":"data-store","name":"data-store"},
 "endpoints":[{"address":"127.1.0.2:8081","namespace":"data-store",
   "pod":"data-store-7d9","serviceAccount":"data-store","meshed":true,
   "identity":"data-store.data-store.serviceaccount.identity.linkerd.cluster.local"},
   {"address":"127.0.0.1:9000","namespace":"x","pod":"p","serviceAccount":"default","meshed":false,"identity":null}]}"#;
        let s: Snapshot = serde_json::from_str(line).unwrap();
        assert_eq!(
            s.service,
            Some(ServiceRef {
                namespace: "data-store".into(),
                name: "data-store".into()
            })
        );
        assert_eq!(s.endpoints[0].address, "127.1.0.2:8081".parse().unwrap());
        assert_eq!(
            s.endpoints[0].service_account.as_deref(),
            Some("data-store")
        );
        assert!(s.endpoints[0].meshed);
        assert_eq!(s.endpoints[1].identity, None);
    }

    #[test]
    fn a_status_line_ends_the_answer() {
        let line = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \"x\" not found","reason":"NotFound","code":404}"#;
        assert!(matches!(
            decode_line(line),
            Err(DestinationError::Status(http::StatusCode::NOT_FOUND))
        ));
        assert!(matches!(
            decode_line(b"{}"),
            Err(DestinationError::Decode(_))
        ));
    }

    #[test]
    fn normalizes_authorities() {
        assert_eq!(
            normalize_authority("Foo.NS.svc.cluster.local:8081", 80).as_deref(),
            Some("foo.ns.svc.cluster.local:8081")
        );
        assert_eq!(
            normalize_authority("foo.ns", 80).as_deref(),
            Some("foo.ns:80")
        );
        assert_eq!(
            normalize_authority("[::1]:9", 80).as_deref(),
            Some("[::1]:9")
        );
        assert_eq!(normalize_authority("user@foo:1", 80), None);
        assert_eq!(normalize_authority("", 80), None);
    }

    #[test]
    fn encodes_the_query() {
        assert_eq!(percent_encode("a.b:80"), "a.b%3A80");
        assert_eq!(percent_encode("[::1]:9"), "%5B%3A%3A1%5D%3A9");
    }

    #[tokio::test]
    async fn static_discover_publishes_changes() {
        let d = StaticDiscover::new();
        let mut rx = d.watch("a:1");
        assert_eq!(*rx.borrow_and_update(), Resolution::NotFound);
        d.set("a:1", Resolution::Failed("x".into()));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Resolution::Failed("x".into()));
    }

    /// A fake API server speaking HTTP/1.1 (over TLS with `tls`): records
    /// each request head, streams the given lines, then holds the stream
    /// open (a watch) or, with `hold == false`, ends it.
    async fn fake_api_with(
        status: u16,
        lines: Vec<String>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        hold: bool,
    ) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (lines, seen_tx) = (lines.clone(), seen_tx.clone());
                match &tls {
                    Some(acceptor) => {
                        let sock = acceptor.accept(sock).await.unwrap();
                        tokio::spawn(answer(sock, status, lines, seen_tx, hold));
                    }
                    None => {
                        tokio::spawn(answer(sock, status, lines, seen_tx, hold));
                    }
                }
            }
        });
        (addr, seen_rx)
    }

    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut sock: S,
        status: u16,
        lines: Vec<String>,
        seen_tx: tokio::sync::mpsc::Sender<String>,
        hold: bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = Vec::new();
        let mut byte = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut byte).await.unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&byte[..n]);
        }
        let _ = seen_tx
            .send(String::from_utf8_lossy(&req).into_owned())
            .await;
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
        );
        for l in &lines {
            let chunk = format!("{l}\n");
            out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        if !hold {
            out.push_str("0\r\n\r\n");
        }
        sock.write_all(out.as_bytes()).await.unwrap();
        sock.flush().await.unwrap();
        if hold {
            // Keep the stream open, as a watch does.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    async fn fake_api(
        status: u16,
        lines: Vec<String>,
    ) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        fake_api_with(status, lines, None, true).await
    }

    const SNAP: &str = r#"{"authority":"s.ns.svc.cluster.local:80","service":null,"endpoints":[{"address":"127.0.0.9:80","meshed":false,"identity":null}]}"#;

    #[tokio::test]
    async fn api_discover_over_https_with_the_cluster_ca_rereads_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (addr, mut seen) =
            fake_api_with(200, vec![SNAP.to_owned()], Some(acceptor), false).await;
        std::fs::write(dir.join("token"), "tok-1").unwrap();
        let config = ApiConfig::new(
            format!("https://{addr}").parse().unwrap(),
            dir.join("token"),
            Some(dir.join("ca.crt")),
        );
        let d = ApiDiscover::new(config).unwrap();
        let mut rx = d.watch("s.ns.svc.cluster.local:80");
        assert!(
            seen.recv()
                .await
                .unwrap()
                .to_ascii_lowercase()
                .contains("authorization: bearer tok-1\r\n")
        );
        rx.wait_for(|r| matches!(r, Resolution::Found(_)))
            .await
            .unwrap();
        // The server ended the stream: the client comes back with the
        // rotated token, and keeps the last snapshot meanwhile.
        std::fs::write(dir.join("token"), "tok-2").unwrap();
        let mut again = seen.recv().await.unwrap();
        while again.to_ascii_lowercase().contains("bearer tok-1") {
            again = seen.recv().await.unwrap();
        }
        assert!(
            again
                .to_ascii_lowercase()
                .contains("authorization: bearer tok-2\r\n"),
            "{again}"
        );
        assert!(matches!(*rx.borrow(), Resolution::Found(_)));
    }

    #[tokio::test]
    async fn api_discover_streams_snapshots_with_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let token = dir.join("token");
        std::fs::write(&token, "tok-1\n").unwrap();
        let (addr, mut seen) = fake_api(200, vec![SNAP.to_owned()]).await;
        let d = ApiDiscover::new(ApiConfig::new(
            format!("http://{addr}").parse().unwrap(),
            token,
            None,
        ))
        .unwrap();
        let mut rx = d.watch("s.ns.svc.cluster.local:80");
        let req = seen.recv().await.unwrap();
        assert!(req.starts_with("GET /tessera/v1/destinations?authority=s.ns.svc.cluster.local%3A80&watch=true HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("authorization: bearer tok-1\r\n"),
            "{req}"
        );
        let got = rx
            .wait_for(|r| matches!(r, Resolution::Found(_)))
            .await
            .unwrap()
            .clone();
        let Resolution::Found(s) = got else {
            unreachable!()
        };
        assert_eq!(s.endpoints[0].address, "127.0.0.9:80".parse().unwrap());
        // A second watcher shares the one stream.
        let _rx2 = d.watch("s.ns.svc.cluster.local:80");
        assert_eq!(d.active(), 1);
    }

    #[tokio::test]
    async fn api_discover_reports_not_found_and_drops_idle_watches() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let token = dir.join("token");
        std::fs::write(&token, "t").unwrap();
        let (addr, _seen) = fake_api(404, vec![]).await;
        let mut config = ApiConfig::new(format!("http://{addr}").parse().unwrap(), token, None);
        config.idle = Duration::from_millis(50);
        let d = ApiDiscover::new(config).unwrap();
        let mut rx = d.watch("nope.ns:80");
        rx.wait_for(|r| *r == Resolution::NotFound).await.unwrap();
        drop(rx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.active() != 0 {
            assert!(Instant::now() < deadline, "idle watch not dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
