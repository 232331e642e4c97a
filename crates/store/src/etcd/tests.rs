//! The conformance suite on a real etcd, plus etcd-specific behaviour: key
//! layout, connection errors, losing the etcd leader, leader election.
//!
//! One etcd process serves every test of this binary (started on first use,
//! stopped when the binary exits, see [`testing`](super::testing)). Each test
//! gets its own key prefix and holds [`EXCLUSIVE`] while it runs, because the
//! conformance cases count revisions and etcd's revision is cluster-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Mutex, MutexGuard};

use super::testing::{EtcdCluster, TestEtcdError};
use super::*;
use crate::conformance::Fixture;
use crate::{EventKind, ListOptions};

/// The etcd shared by every test of this binary.
static SHARED: LazyLock<Result<EtcdCluster, TestEtcdError>> =
    LazyLock::new(|| EtcdCluster::start(1));
/// Held by each test that uses [`SHARED`] while it runs.
static EXCLUSIVE: Mutex<()> = Mutex::const_new(());
/// Numbers the key prefixes handed out.
static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

/// Exclusive use of the shared etcd, with a fresh prefix.
struct Shared {
    endpoints: Vec<String>,
    prefix: String,
    _guard: MutexGuard<'static, ()>,
}

async fn shared() -> Shared {
    let guard = EXCLUSIVE.lock().await;
    let endpoints = match &*SHARED {
        Ok(cluster) => cluster.endpoints(),
        Err(err) => panic!("{err}"),
    };
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    Shared {
        endpoints,
        prefix: format!("/test/{n:04}"),
        _guard: guard,
    }
}

/// A store on the shared etcd with every key (root `""`) under a fresh prefix.
async fn fixture() -> Fixture {
    let shared = shared().await;
    let config = EtcdConfig {
        root: String::new(),
        prefix: shared.prefix.clone(),
        ..EtcdConfig::new(shared.endpoints.clone())
    };
    let store = EtcdStore::connect(&config).await.expect("connect to etcd");
    let base = store.revision().await.expect("revision");
    Fixture::with_guard(Arc::new(store) as Arc<dyn Store>, shared).starting_at(base)
}

crate::store_conformance_suite!(fixture());

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A raw etcd client on the same endpoints, to look behind the store.
async fn raw(endpoints: &[String]) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("raw etcd client")
}

#[tokio::test]
async fn default_layout_is_kubernetes_registry() {
    let shared = shared().await;
    let store = EtcdStore::connect(&EtcdConfig::new(shared.endpoints.clone()))
        .await
        .expect("connect");
    let key = "/registry/serviceaccounts/default/api";
    let created = store
        .create(key, b(r#"{"kind":"ServiceAccount"}"#))
        .await
        .expect("create");
    let mut client = raw(&shared.endpoints).await;
    let response = client.get(key, None).await.expect("raw get");
    let kv = response
        .kvs()
        .first()
        .expect("key stored at its Kubernetes path");
    assert_eq!(kv.value(), br#"{"kind":"ServiceAccount"}"#);
    assert_eq!(
        kv.mod_revision(),
        created.mod_revision,
        "resourceVersion is etcd's mod_revision"
    );
    store.delete(key, None).await.expect("delete");
}

#[tokio::test]
async fn prefix_replaces_the_registry_root() {
    let shared = shared().await;
    let config = EtcdConfig {
        prefix: format!("{}/tenant", shared.prefix),
        ..EtcdConfig::new(shared.endpoints.clone())
    };
    let store = EtcdStore::connect(&config).await.expect("connect");
    store
        .create("/registry/secrets/ns/s", b("v"))
        .await
        .expect("create");
    let mut client = raw(&shared.endpoints).await;
    let etcd_key = format!("{}/tenant/secrets/ns/s", shared.prefix);
    assert_eq!(
        store.etcd_key("/registry/secrets/ns/s").expect("key"),
        etcd_key.as_bytes()
    );
    let response = client.get(etcd_key.as_str(), None).await.expect("raw get");
    assert_eq!(
        response.kvs().len(),
        1,
        "stored under the configured prefix"
    );

    // Keys outside the root are refused; prefixes covering the root see it all.
    assert!(matches!(
        store.create("/elsewhere", b("v")).await,
        Err(Error::Backend(_))
    ));
    for prefix in ["", "/reg", "/registry", "/registry/", "/registry/secrets/"] {
        let list = store
            .list(prefix, ListOptions::default())
            .await
            .expect("list");
        let keys: Vec<_> = list.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/registry/secrets/ns/s"], "list {prefix:?}");
    }
    let none = store
        .list("/registrz", ListOptions::default())
        .await
        .expect("list");
    assert!(none.items.is_empty());
    // Paging from keys outside the root.
    let from_before = ListOptions {
        limit: 0,
        start_after: Some("/a".to_owned()),
        ..ListOptions::default()
    };
    assert_eq!(
        store.list("", from_before).await.expect("list").items.len(),
        1
    );
    let from_after = ListOptions {
        limit: 0,
        start_after: Some("/z".to_owned()),
        ..ListOptions::default()
    };
    assert!(
        store
            .list("", from_after)
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn watches_of_other_prefixes_under_one_root_do_not_mix() {
    let shared = shared().await;
    let config = |tenant: &str| EtcdConfig {
        prefix: format!("{}/{tenant}", shared.prefix),
        ..EtcdConfig::new(shared.endpoints.clone())
    };
    let a = EtcdStore::connect(&config("a")).await.expect("connect");
    let b_store = EtcdStore::connect(&config("b")).await.expect("connect");
    let start = a.revision().await.expect("revision");
    let mut watch = a.watch("/registry/", start).await.expect("watch");
    b_store
        .create("/registry/x", b("b"))
        .await
        .expect("create in b");
    let mine = a.create("/registry/x", b("a")).await.expect("create in a");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event");
    assert_eq!(event.kind, EventKind::Create);
    assert_eq!(event.kv, mine);
}

#[test]
fn key_map_round_trips_and_ranges() {
    let map = KeyMap::new("/registry", "/t");
    assert_eq!(map.etcd_key_of("/registry/a/b").expect("key"), b"/t/a/b");
    assert_eq!(map.store_key_of(b"/t/a/b").expect("key"), "/registry/a/b");
    assert!(map.etcd_key_of("/other").is_err());
    assert!(map.store_key_of(b"/u/a").is_err());
    assert_eq!(
        map.range("/registry/a/"),
        Some((b"/t/a/".to_vec(), b"/t/a0".to_vec()))
    );
    assert_eq!(map.range(""), Some((b"/t".to_vec(), b"/u".to_vec())));
    assert_eq!(map.range("/x"), None);
    let whole = KeyMap::new("", "");
    assert_eq!(whole.range(""), Some((vec![0], vec![0])));
    assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
    assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
}

#[test]
fn storage_urls_parse() {
    assert_eq!(
        EtcdConfig::endpoints_from_url("etcd://127.0.0.1:2379,10.0.0.2:2379/"),
        Some(vec![
            "127.0.0.1:2379".to_owned(),
            "10.0.0.2:2379".to_owned()
        ])
    );
    assert_eq!(EtcdConfig::endpoints_from_url("etcd://"), None);
    assert_eq!(EtcdConfig::endpoints_from_url("sqlite"), None);
}

#[tokio::test]
async fn unreachable_etcd_fails_to_connect_with_the_endpoints_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = EtcdConfig {
        request_timeout: Duration::from_millis(500),
        ..EtcdConfig::new(vec![format!("127.0.0.1:{port}")])
    };
    match EtcdStore::connect(&config).await {
        Err(Error::Backend(message)) => {
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// The leader of a 3-member cluster dies: watches on it end with an error
/// item (so consumers re-list), and the store keeps working through the
/// other members once they have elected a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_survives_losing_a_member_and_watches_end_with_an_error() {
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .expect("start task")
        .unwrap_or_else(|err| panic!("{err}"));
    let endpoints = cluster.endpoints();
    // One store per member, so we know which member serves which watch.
    let mut stores = Vec::new();
    for endpoint in &endpoints {
        stores.push(
            EtcdStore::connect(&EtcdConfig::new(vec![endpoint.clone()]))
                .await
                .expect("connect"),
        );
    }
    let balanced = EtcdStore::connect(&EtcdConfig::new(endpoints.clone()))
        .await
        .expect("connect");
    let victim = cluster.leader().expect("the cluster has a leader");
    let (survivor, other) = ((victim + 1) % 3, (victim + 2) % 3);
    let start = balanced.revision().await.expect("revision");
    let mut on_victim = stores[victim]
        .watch("/registry/", start)
        .await
        .expect("watch");
    let mut on_survivor = stores[survivor]
        .watch("/registry/", start)
        .await
        .expect("watch");
    let first = balanced
        .create("/registry/k/1", b("1"))
        .await
        .expect("create");
    for watch in [&mut on_victim, &mut on_survivor] {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("event");
        assert_eq!(event.kv, first);
    }

    tokio::task::block_in_place(|| cluster.kill(victim)).expect("kill the leader");
    match tokio::time::timeout(Duration::from_secs(30), on_victim.next()).await {
        Ok(Some(Err(Error::Backend(_)))) => {}
        other => {
            panic!("expected the watch on the killed member to end with an error, got {other:?}")
        }
    }
    assert!(
        on_victim.next().await.is_none(),
        "the stream ends after its error"
    );

    // Writes through the balanced store go on. While a new leader is elected
    // a write may fail ambiguously (etcd cannot say whether it was applied);
    // like any client, check and retry it.
    let killed_at = tokio::time::Instant::now();
    let mut acknowledged = vec![first];
    let mut ambiguous = 0;
    for i in 2..=20 {
        let key = format!("/registry/k/{i}");
        let kv = loop {
            match balanced.create(&key, b(&i.to_string())).await {
                Ok(kv) => break kv,
                Err(Error::Backend(message)) => {
                    ambiguous += 1;
                    assert!(ambiguous <= 10, "too many failed writes: {message}");
                    if let Some(kv) = balanced.get(&key).await.expect("read after a failed write") {
                        break kv;
                    }
                }
                Err(err) => panic!("create after the kill: {err}"),
            }
        };
        acknowledged.push(kv);
        if i == 2 {
            eprintln!(
                "first write after the kill: {:?} ({ambiguous} ambiguous failures)",
                killed_at.elapsed()
            );
        }
    }
    for expected in &acknowledged[1..] {
        let event = tokio::time::timeout(Duration::from_secs(10), on_survivor.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("event");
        assert_eq!(
            &event.kv, expected,
            "the surviving member's watch misses nothing"
        );
    }
    let list = stores[other]
        .list("/registry/k/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), acknowledged.len());

    // The member comes back with everything it missed.
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, victim);
    tokio::task::block_in_place(|| cluster.restart(victim)).expect("restart the old leader");
    let back = EtcdStore::connect(&EtcdConfig::new(vec![endpoints[victim].clone()]))
        .await
        .expect("reconnect");
    // The restarted member replays the raft log it missed; on a loaded
    // machine its first answer can come before the last entry is applied, so
    // it is asked until it has them all, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = back
            .list("/registry/k/", ListOptions::default())
            .await
            .expect("list");
        if list.items.len() == acknowledged.len() || tokio::time::Instant::now() >= deadline {
            assert_eq!(list.items.len(), acknowledged.len(), "the restarted member has every acknowledged write");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches from compacted revisions fail when they are opened, with the
/// compacted revision etcd reports.
#[tokio::test]
async fn watches_from_compacted_revisions_fail_at_call_time() {
    let shared = shared().await;
    let config = EtcdConfig {
        root: String::new(),
        prefix: shared.prefix.clone(),
        ..EtcdConfig::new(shared.endpoints.clone())
    };
    let store = EtcdStore::connect(&config).await.expect("connect");
    let base = store.revision().await.expect("revision");
    for i in 0..5 {
        store
            .create(&format!("/c/{i}"), b("v"))
            .await
            .expect("create");
    }
    // Compacting past the watch's start before it is opened is refused at call time.
    store.compact(base + 3).await.expect("compact");
    match store.watch("/c/", base + 1).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (base + 1, base + 3)),
        Ok(_) => panic!("watch from a compacted revision succeeded"),
        Err(err) => panic!("expected Compacted, got {err}"),
    }
    // Watching an empty range of a compacted revision is refused too.
    match store.watch("/nothing-here/", base + 1).await {
        Err(Error::Compacted { compacted, .. }) => assert_eq!(compacted, base + 3),
        Ok(_) => panic!("watch from a compacted revision succeeded"),
        Err(err) => panic!("expected Compacted, got {err}"),
    }
}

/// Two campaigns for one election: the first leads, the second stands by and
/// takes over at once when the first shuts down (it resigns), and a third
/// campaign for another election leads on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_passes_on_when_the_leader_resigns() {
    let shared = shared().await;
    let config = EtcdConfig {
        prefix: shared.prefix.clone(),
        leader_lease: Duration::from_secs(2),
        ..EtcdConfig::new(shared.endpoints.clone())
    };
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut a = campaign(&config, "controllers", "replica-a", async move {
        let _ = a_stopped.await;
    })
    .await
    .expect("campaign a");
    tokio::time::timeout(Duration::from_secs(10), a.acquired())
        .await
        .expect("a leads");
    let (_stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut b = campaign(&config, "controllers", "replica-b", async move {
        let _ = b_stopped.await;
    })
    .await
    .expect("campaign b");
    let (_stop_c, c_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut c = campaign(&config, "other", "replica-c", async move {
        let _ = c_stopped.await;
    })
    .await
    .expect("campaign c");
    tokio::time::timeout(Duration::from_secs(10), c.acquired())
        .await
        .expect("c leads its own election");
    // b stands by for longer than a lease lives: a keeps renewing.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), b.acquired())
            .await
            .is_err(),
        "b must not lead while a does"
    );
    assert!(a.is_leader());

    let resigned = tokio::time::Instant::now();
    let _ = stop_a.send(());
    tokio::time::timeout(Duration::from_secs(5), a.lost())
        .await
        .expect("a gives up leadership");
    tokio::time::timeout(Duration::from_secs(5), b.acquired())
        .await
        .expect("b takes over");
    assert!(
        resigned.elapsed() < Duration::from_secs(2),
        "hand-off after resigning took {:?}",
        resigned.elapsed()
    );
    assert!(!a.is_leader());
}

/// A CA, a serving certificate for 127.0.0.1 and a client certificate,
/// written as PEM files into `dir`.
fn write_test_pki(dir: &std::path::Path) -> (super::testing::ServerTls, ClientCertFiles) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["tessera".to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let server = super::testing::ServerTls {
        ca_file: write("ca.crt", &ca_cert.pem()),
        cert_file: write("server.crt", &server_cert),
        key_file: write("server.key", &server_key),
    };
    let client = ClientCertFiles {
        cert_file: write("client.crt", &client_cert),
        key_file: write("client.key", &client_key),
    };
    (server, client)
}

/// etcd with TLS and client-certificate authentication: the store connects
/// with the CA and a client certificate (rustls on ring), and is refused
/// without the certificate or with a plain-HTTP endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (server, client) = write_test_pki(pki.path());
    let ca_file = server.ca_file.clone();
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start_tls(1, server))
        .await
        .expect("start task")
        .unwrap_or_else(|err| panic!("{err}"));
    let with = |tls: Option<EtcdTls>| EtcdConfig {
        tls,
        request_timeout: Duration::from_secs(5),
        ..EtcdConfig::new(cluster.endpoints())
    };

    let store = EtcdStore::connect(&with(Some(EtcdTls {
        ca_file: ca_file.clone(),
        client: Some(client),
    })))
    .await
    .expect("connect over TLS with a client certificate");
    let created = store
        .create("/registry/secrets/ns/s", b("v"))
        .await
        .expect("create");
    assert_eq!(
        store.get("/registry/secrets/ns/s").await.expect("get"),
        Some(created)
    );

    let request_timeout = Duration::from_millis(1500);
    let no_client_cert = EtcdConfig {
        request_timeout,
        ..with(Some(EtcdTls {
            ca_file,
            client: None,
        }))
    };
    assert!(
        matches!(
            EtcdStore::connect(&no_client_cert).await,
            Err(Error::Backend(_))
        ),
        "etcd requires a client certificate"
    );
    let plain = EtcdConfig {
        request_timeout,
        ..with(None)
    };
    assert!(
        matches!(EtcdStore::connect(&plain).await, Err(Error::Backend(_))),
        "plain HTTP to a TLS port fails"
    );
    let wrong_scheme = EtcdConfig {
        endpoints: cluster
            .endpoints()
            .iter()
            .map(|e| format!("http://{e}"))
            .collect(),
        ..with(Some(EtcdTls {
            ca_file: pki.path().join("ca.crt"),
            client: None,
        }))
    };
    match EtcdStore::connect(&wrong_scheme).await {
        Err(Error::Backend(message)) => assert!(message.contains("must use https://"), "{message}"),
        other => panic!("expected a scheme error, got {other:?}"),
    }
}
