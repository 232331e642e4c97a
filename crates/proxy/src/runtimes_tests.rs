//! Per-thread runtimes: the listener groups, the threads, and the proxy's
//! shared state seen from every thread.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;
use crate::runtimes::{Moved, Workers, bind_group};
use crate::test_ca::Ca;
use crate::tls::Credentials;

const SERVER: &str = "voting.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// An app that answers every connection with its name (one byte) once the
/// client has sent something, then closes.
async fn named_app(name: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 64];
                if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = stream.write_all(&[name]).await;
                }
            });
        }
    });
    addr
}

fn inbound_config(listen: SocketAddr, app: SocketAddr) -> InboundConfig {
    InboundConfig {
        listen,
        app,
        detect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        policy: None,
        limit: limit::ConnLimit::default(),
    }
}

fn context(credentials: CredentialsRx, stop: watch::Receiver<bool>) -> ServeContext {
    let config = ProxyConfig {
        identity_addr: "127.0.0.1:1".into(),
        identity: SERVER.into(),
        token_file: "token".into(),
        trust_anchors: TrustSource::File("ca.crt".into()),
        inbound: Vec::new(),
        outbound_addr: None,
        outbound_tcp: Vec::new(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        api: config::ApiConfig::default(),
        detect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        certify_timeout: Duration::from_secs(5),
        namespace: None,
        pod: None,
        policy: false,
        max_connections: limit::DEFAULT_MAX_CONNECTIONS,
        max_tap_streams: 1,
        h2_idle_timeout: Duration::from_secs(90),
        parent_pid: None,
        source_ip: None,
        runtimes: 2,
    };
    let shared = Shared { credentials, metrics: Metrics::new(), config };
    ServeContext { shared, discover: None, limit: limit::ConnLimit::default(), stop }
}

/// An inbound port served by two threads, the test's runtime (thread 0,
/// forwarding to app `b'0'`) and one worker (to app `b'1'`), as `run` does;
/// the app that answers tells which thread proxied the connection.
struct TwoThreads {
    addr: SocketAddr,
    credentials: watch::Sender<Option<Arc<Credentials>>>,
    stop: watch::Sender<bool>,
    own: tokio::task::JoinHandle<Result<(), String>>,
    workers: Workers,
}

async fn two_threads(credentials: Option<Credentials>) -> TwoThreads {
    let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).await.unwrap();
    let addr = group[0].local_addr().unwrap();
    let (credentials_tx, credentials_rx) = watch::channel(credentials.map(Arc::new));
    let (stop, stop_rx) = watch::channel(false);
    let context = context(credentials_rx, stop_rx.clone());
    let mut group = group.into_iter();
    let own_set = ListenerSet { inbound: vec![(group.next().unwrap(), inbound_config(addr, named_app(b'0').await))], outbound: None };
    let worker_set = ListenerSet { inbound: vec![(group.next().unwrap(), inbound_config(addr, named_app(b'1').await))], outbound: None }
        .try_map(Moved::new)
        .unwrap();
    let mut workers = Workers::default();
    let worker_context = context.clone();
    workers
        .spawn(1, move |serving| async move {
            let set = worker_set.try_map(Moved::into_tokio).map_err(|e| e.to_string())?;
            let tasks = worker_context.spawn(set);
            serving.serving();
            serve_until_stopped(tasks, worker_context.stop.clone()).await
        })
        .unwrap();
    workers.all_serving().await.unwrap();
    let own = tokio::spawn(serve_until_stopped(context.spawn(own_set), stop_rx));
    TwoThreads { addr, credentials: credentials_tx, stop, own, workers }
}

/// Opens connections (`connect` returns the answering app's name) until
/// both threads have answered; every answer goes through `check`.
async fn until_both_threads<F, Fut>(mut connect: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u8>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = BTreeSet::new();
    let mut connections = 0;
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only threads {seen:?} answered in {connections} connections");
        seen.insert(connect().await);
        connections += 1;
    }
    assert_eq!(seen, BTreeSet::from([b'0', b'1']));
    connections
}

async fn plain(addr: SocketAddr) -> u8 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"\x00\x01opaque").await.unwrap();
    let mut name = [0; 1];
    stream.read_exact(&mut name).await.unwrap();
    name[0]
}

#[test]
fn a_group_shares_one_port_and_keeps_others_out() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).await.unwrap();
        let ports: BTreeSet<u16> = group.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 1, "{ports:?}");
        let addr = group[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        // A socket without SO_REUSEPORT (another program) cannot take the port.
        let err = TcpListener::bind(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        // One thread: a plain listener, which a second group cannot join.
        let single = bind_group("127.0.0.1:0".parse().unwrap(), 1).await.unwrap();
        assert_eq!(single.len(), 1);
        let err = bind_group(single[0].local_addr().unwrap(), 2).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    });
}

#[tokio::test]
async fn every_thread_accepts_and_proxies_connections() {
    let threads = two_threads(None).await;
    let addr = threads.addr;
    let connections = until_both_threads(|| plain(addr)).await;
    assert!(connections >= 2);
    threads.stop.send(true).unwrap();
    assert_eq!(threads.own.await.unwrap(), Ok(()));
    let exits = threads.workers.join().await;
    assert_eq!(exits.len(), 1);
    assert_eq!((exits[0].index, &exits[0].outcome), (1, &Ok(())));
}

#[tokio::test]
async fn a_renewal_reaches_every_thread() {
    let ca = Ca::new();
    let (first, first_der) = ca.credentials_and_leaf(SERVER);
    let threads = two_threads(Some(first)).await;
    let (client, _) = ca.credentials_and_leaf(CLIENT);
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let addr = threads.addr;
    // The leaf each connection is shown, and the thread that served it.
    let mtls = |expected: Vec<u8>| {
        let connector = connector.clone();
        move || {
            let connector = connector.clone();
            let expected = expected.clone();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut tls = connector.connect(Identity::parse(SERVER).unwrap().server_name(), tcp).await.unwrap();
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                assert!(leaf == expected, "a thread presented another certificate");
                tls.write_all(b"\x00\x01opaque").await.unwrap();
                let mut name = [0; 1];
                tls.read_exact(&mut name).await.unwrap();
                name[0]
            }
        }
    };
    until_both_threads(mtls(first_der)).await;
    let (renewed, renewed_der) = ca.credentials_and_leaf(SERVER);
    threads.credentials.send_replace(Some(Arc::new(renewed)));
    until_both_threads(mtls(renewed_der)).await;
    threads.stop.send(true).unwrap();
    threads.workers.join().await;
}

#[tokio::test]
async fn a_panicking_thread_is_reported_and_the_others_stop() {
    let (stop, stop_rx) = watch::channel(false);
    let mut workers = Workers::default();
    workers
        .spawn(1, move |serving| async move {
            serving.serving();
            stopped(stop_rx).await;
            Ok(())
        })
        .unwrap();
    workers
        .spawn(2, |serving| async move {
            serving.serving();
            tokio::task::yield_now().await;
            panic!("boom");
        })
        .unwrap();
    workers.all_serving().await.unwrap();
    let failed = workers.failed().await;
    assert_eq!((failed.index, failed.outcome), (2, Err("panicked: boom".to_owned())));
    stop.send(true).unwrap();
    let exits = workers.join().await;
    assert_eq!(exits.len(), 1);
    assert_eq!((exits[0].index, &exits[0].outcome), (1, &Ok(())));
}

#[tokio::test]
async fn a_thread_that_fails_to_start_is_reported() {
    let mut workers = Workers::default();
    workers.spawn(1, |_serving| async move { Err("registering its listeners: nope".to_owned()) }).unwrap();
    let failed = workers.all_serving().await.unwrap_err();
    assert_eq!((failed.index, failed.outcome), (1, Err("registering its listeners: nope".to_owned())));
    assert!(workers.join().await.is_empty());
}

#[tokio::test]
async fn a_listener_that_panics_ends_its_thread_with_an_error() {
    let (_stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(std::future::pending::<()>());
    tasks.spawn(async { panic!("accept loop") });
    let ended = serve_until_stopped(tasks, stop_rx).await.unwrap_err();
    assert!(ended.starts_with("a listener panicked: "), "{ended}");
}

/// The whole `run` with two threads: both serve the inbound port, and the
/// shutdown ends every thread (no `tessera-proxy-N` thread is left).
#[tokio::test]
async fn run_serves_and_shuts_every_thread_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(dir.path().join("ca.crt"), params.self_signed(&ca_key).unwrap().pem()).unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let app = named_app(b'a').await;
    let mut config = context(watch::channel(None).1, watch::channel(false).1).shared.config;
    config.trust_anchors = TrustSource::File(dir.path().join("ca.crt"));
    config.token_file = dir.path().join("token");
    config.inbound = vec![InboundSpec { listen: "127.0.0.1:0".parse().unwrap(), app }];
    config.runtimes = 2;
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let proxy = tokio::spawn(run(
        config,
        async move {
            let _ = shutdown_rx.await;
        },
        move |started| {
            let _ = started_tx.send(started.clone());
        },
    ));
    let started = started_rx.await.unwrap();
    assert_eq!(proxy_threads(), 1, "run started one thread beside the caller's");
    let listen = started.inbound[0].0;
    // Plain text reaches the app (no certificate needed for it) many times over.
    for _ in 0..8 {
        assert_eq!(plain(listen).await, b'a');
    }
    // Not ready: no identity service here.
    let ready = admin_get(started.admin_addr, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    shutdown_tx.send(()).unwrap();
    proxy.await.unwrap().unwrap();
    assert_eq!(proxy_threads(), 0);
    assert_eq!(TcpStream::connect(listen).await.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Threads of this process named `tessera-proxy-N`.
fn proxy_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("tessera-proxy-"))
        .count()
}

async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
