//! End-to-end: `tessera proxy` (inbound half) in front of a small echo app,
//! with its certificate from a real `tessera identity` backed by a real
//! `tessera server`. Clients are built here: an mTLS client whose leaf comes
//! from Certify, a plain-text client, and a client whose certificate chains
//! to a different trust anchor.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const VOTING: &str = "voting.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `tessera ARGS`, reads stdout until `last` (a line prefix) and
/// returns the lines read.
fn spawn(args: &[String], last: &str) -> (Proc, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tessera");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with(last);
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(seen.last().is_some_and(|l| l.starts_with(last)), "tessera {args:?} printed {seen:?}");
    (Proc(child), seen)
}

/// `tessera identity` on `addr`.
fn identity(server: &Server, pki: &Path, addr: &str, extra: &[&str]) -> (Proc, String) {
    let mut args: Vec<String> = ["identity", "--addr", addr, "--admin-addr", "127.0.0.1:0", "--kubeconfig"].map(String::from).to_vec();
    args.push(server.kubeconfig.display().to_string());
    args.extend(["--trust-anchors".into(), pki.join("ca.crt").display().to_string(), "--issuer-dir".into(), pki.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let (proc, lines) = spawn(&args, "tessera identity admin on ");
    let addr = lines.iter().find_map(|l| l.strip_prefix("tessera identity listening on ")).unwrap().to_owned();
    (proc, addr)
}

/// A running `tessera proxy` for VOTING.
struct Proxy {
    _proc: Proc,
    admin: String,
    inbound: SocketAddr,
}

impl Proxy {
    fn start(identity_addr: &str, token_file: &Path, anchors: &Path, app: SocketAddr) -> Self {
        let args: Vec<String> = vec![
            "proxy".into(),
            "--identity-addr".into(),
            identity_addr.into(),
            "--identity".into(),
            VOTING.into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--trust-anchors".into(),
            anchors.display().to_string(),
            "--inbound".into(),
            format!("127.0.0.1:0={app}"),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ];
        let (proc, lines) = spawn(&args, "tessera proxy inbound on ");
        let admin = lines.iter().find_map(|l| l.strip_prefix("tessera proxy admin on ")).unwrap().to_owned();
        let inbound =
            lines.last().unwrap().strip_prefix("tessera proxy inbound on ").unwrap().split(" -> ").next().unwrap().parse().unwrap();
        Self { _proc: proc, admin, inbound }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl").args(["-sS", "-w", "\n%{http_code}", &format!("{}{path}", self.admin)]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap_or(0), body.to_owned())
    }

    fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    fn refresh_count(&self) -> u64 {
        self.metrics().lines().find_map(|l| l.strip_prefix("identity_cert_refresh_count ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

/// The echo app: answers every request with the version, path and headers it saw.
async fn echo_app() -> SocketAddr {
    async fn echo(request: axum::extract::Request) -> axum::Json<serde_json::Value> {
        let mut headers = serde_json::Map::new();
        for name in request.headers().keys() {
            let values: Vec<&str> = request.headers().get_all(name).iter().map(|v| v.to_str().unwrap_or("?")).collect();
            headers.insert(name.as_str().to_owned(), values.join(",").into());
        }
        axum::Json(serde_json::json!({
            "version": format!("{:?}", request.version()),
            "path": request.uri().path(),
            "headers": headers,
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(echo)).await });
    addr
}

/// Namespace emojivoto with ServiceAccounts web and voting; returns their
/// identity.l5d.io tokens.
fn emojivoto(server: &Server) -> (String, String) {
    server.kubectl_ok(&["create", "ns", "emojivoto"]);
    server.kubectl_ok(&["create", "sa", "web", "-n", "emojivoto"]);
    server.kubectl_ok(&["create", "sa", "voting", "-n", "emojivoto"]);
    let token =
        |sa: &str| server.kubectl_ok(&["create", "token", sa, "-n", "emojivoto", "--audience", "identity.l5d.io"]).trim().to_owned();
    (token("web"), token("voting"))
}

fn bootstrap(out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["identity", "bootstrap", "--out"]).arg(out).output().unwrap();
    assert!(o.status.success(), "bootstrap: {}", String::from_utf8_lossy(&o.stderr));
}

/// A leaf and key for `identity`.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// Certify for WEB with its token, as a meshed client's proxy would.
async fn certify(identity_addr: &str, token: &str) -> Leaf {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![WEB.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{identity_addr}")).unwrap().connect().await.unwrap();
    let response = IdentityClient::new(channel)
        .certify(CertifyRequest { identity: WEB.into(), token: token.as_bytes().to_vec(), certificate_signing_request: csr })
        .await
        .unwrap()
        .into_inner();
    let mut chain = vec![CertificateDer::from(response.leaf_certificate)];
    chain.extend(response.intermediate_certificates.into_iter().map(CertificateDer::from));
    Leaf { chain, key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
}

/// A leaf for WEB signed by the issuer in `pki` directly (no Certify).
fn foreign_leaf(pki: &Path) -> Leaf {
    let issuer_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("key.pem")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("crt.pem")).unwrap(), issuer_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![WEB.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let issuer_der = CertificateDer::from_pem_file(pki.join("crt.pem")).unwrap();
    Leaf { chain: vec![leaf.der().clone(), issuer_der], key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
}

fn client_config(anchors: &Path, leaf: &Leaf, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(anchors).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(leaf.chain.clone(), PrivateKeyDer::Pkcs8(leaf.key.clone_key()))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// mTLS to the proxy, expecting it to be VOTING.
async fn connect_mtls(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config.clone()).connect(ServerName::try_from(VOTING).unwrap(), tcp).await
}

/// One HTTP/1.1 request (with a spoofed l5d-client-id) over `io`; returns
/// the status line and the JSON body.
async fn http1<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: I) -> std::io::Result<(String, serde_json::Value)> {
    io.write_all(b"GET /echo HTTP/1.1\r\nHost: voting.emojivoto:8080\r\nl5d-client-id: spoofed\r\nl5d-server-id: spoofed\r\nConnection: close\r\n\r\n").await?;
    let mut response = Vec::new();
    io.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    let json = serde_json::from_str(body).map_err(|e| std::io::Error::other(format!("{e}: {body:?}")))?;
    Ok((status, json))
}

/// One HTTP/2 request over `io` with extra headers; returns the status and JSON body.
async fn http2(io: Tls, extra: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder().uri("http://voting.emojivoto:8080/h2").header("l5d-client-id", "spoofed");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

struct Mesh {
    server: Server,
    pki: PathBuf,
    web_token: String,
    voting_token_file: PathBuf,
    app: SocketAddr,
}

async fn mesh() -> Mesh {
    let server = Server::start();
    let (web_token, voting_token) = emojivoto(&server);
    let pki = server.path("mesh-identity");
    bootstrap(&pki);
    let voting_token_file = server.path("voting.token");
    std::fs::write(&voting_token_file, voting_token).unwrap();
    let app = echo_app().await;
    Mesh { server, pki, web_token, voting_token_file, app }
}

async fn eventually_ready(proxy: &Proxy, seconds: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while proxy.get("/ready").0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "proxy never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_sets_l5d_client_id_plain_has_none_other_tls_clients_are_refused_until_the_bundle_trusts_them() {
    let m = mesh().await;
    let (_identity, identity_addr) = identity(&m.server, &m.pki, "127.0.0.1:0", &[]);
    let anchors = m.pki.join("ca.crt");
    // The proxy's own copy of the trust bundle (rewritten below to add a root).
    let proxy_anchors = m.server.path("proxy-ca.crt");
    std::fs::copy(&anchors, &proxy_anchors).unwrap();
    let proxy = Proxy::start(&identity_addr, &m.voting_token_file, &proxy_anchors, m.app);
    assert_eq!(proxy.get("/live"), (200, "live\n".to_owned()));
    eventually_ready(&proxy, 15).await;
    assert_eq!(proxy.get("/ready"), (200, "ready\n".to_owned()));

    // mTLS, HTTP/1.1 (ALPN http/1.1): the app sees the verified identity, not the spoofed one.
    let leaf = certify(&identity_addr, &m.web_token).await;
    let h1 = client_config(&anchors, &leaf, &[b"http/1.1"]);
    let tls = connect_mtls(&h1, proxy.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = http1(tls).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["headers"]["l5d-client-id"], WEB, "{body}");
    assert_eq!(body["headers"].get("l5d-server-id"), None, "{body}");
    assert_eq!(body["headers"]["host"], "voting.emojivoto:8080");
    assert_eq!(body["path"], "/echo");

    // mTLS without ALPN (as proxy-to-proxy opaque TCP): HTTP detected on the decrypted bytes.
    let tls = connect_mtls(&client_config(&anchors, &leaf, &[]), proxy.inbound).await.unwrap();
    let (_, body) = http1(tls).await.unwrap();
    assert_eq!(body["headers"]["l5d-client-id"], WEB, "{body}");

    // mTLS with ALPN h2: HTTP/2 to the app, unless l5d-orig-proto says the client app spoke HTTP/1.1.
    let h2 = client_config(&anchors, &leaf, &[b"h2"]);
    let (status, body) = http2(connect_mtls(&h2, proxy.inbound).await.unwrap(), &[]).await;
    assert_eq!((status, &body["version"]), (200, &serde_json::json!("HTTP/2.0")), "{body}");
    assert_eq!(body["headers"]["l5d-client-id"], WEB, "{body}");
    let (status, body) = http2(connect_mtls(&h2, proxy.inbound).await.unwrap(), &[("l5d-orig-proto", "HTTP/1.1")]).await;
    assert_eq!((status, &body["version"]), (200, &serde_json::json!("HTTP/1.1")), "{body}");
    assert_eq!(body["headers"]["l5d-client-id"], WEB, "{body}");
    assert_eq!(body["headers"].get("l5d-orig-proto"), None, "{body}");
    assert_eq!(body["headers"]["host"], "voting.emojivoto:8080", "{body}");

    // Plain text gets through (no policy yet) without any l5d-client-id.
    let (status, body) = http1(TcpStream::connect(proxy.inbound).await.unwrap()).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["headers"].get("l5d-client-id"), None, "{body}");

    // A client certificate from another trust anchor is refused in the handshake:
    // no application data comes back.
    let foreign = m.server.path("foreign-identity");
    bootstrap(&foreign);
    let foreign_config = client_config(&anchors, &foreign_leaf(&foreign), &[b"http/1.1"]);
    let refused = match connect_mtls(&foreign_config, proxy.inbound).await {
        Err(e) => e.to_string(),
        Ok(tls) => http1(tls).await.map(|r| format!("{r:?}")).unwrap_err().to_string(),
    };
    assert!(refused.contains("alert") || refused.contains("reset") || refused.contains("no HTTP response"), "{refused}");

    // openssl s_client without a client certificate: the handshake is
    // refused (certificate required), no application data comes back.
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &proxy.inbound.to_string(), "-servername", VOTING, "-CAfile"])
        .arg(&anchors)
        .args(["-tls1_3", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    {
        use std::io::Write as _;
        let mut stdin = s_client.stdin.take().unwrap();
        stdin.write_all(b"GET / HTTP/1.1\r\nHost: voting\r\nConnection: close\r\n\r\n").unwrap();
    }
    let out = s_client.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("HTTP/1.1"), "{stdout}");
    assert!(stderr.contains("certificate required"), "{stderr}");

    let metrics = proxy.metrics();
    let target = proxy.inbound;
    let mtls = format!(r#"direction="inbound",target_addr="{target}",tls="true",client_id="{WEB}""#);
    for line in [
        format!(r#"request_total{{{mtls},authority="voting.emojivoto:8080"}} 4"#),
        format!(r#"response_total{{{mtls},authority="voting.emojivoto:8080",status_code="200",classification="success"}} 4"#),
        format!(
            r#"request_total{{direction="inbound",target_addr="{target}",tls="no_identity",no_tls_reason="no_tls_from_remote",authority="voting.emojivoto:8080"}} 1"#
        ),
        format!("tcp_open_total{{{mtls}}} 4"),
        "identity_cert_refresh_count 1".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}\n{metrics}");
    }
    // The trust bundle is reloaded: with the foreign root added, the foreign client is accepted.
    let bundle = format!("{}{}", std::fs::read_to_string(&anchors).unwrap(), std::fs::read_to_string(foreign.join("ca.crt")).unwrap());
    std::fs::write(&proxy_anchors, bundle).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let attempt = match connect_mtls(&foreign_config, proxy.inbound).await {
            Ok(tls) => http1(tls).await.ok(),
            Err(_) => None,
        };
        if let Some((_, body)) = attempt {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new trust bundle was never used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["headers"]["l5d-client-id"], WEB, "{body}");

    let expiry: i64 = metrics.lines().find_map(|l| l.strip_prefix("identity_cert_expiration_timestamp_seconds ")).unwrap().parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now + 23 * 3600..=now + 25 * 3600).contains(&expiry), "expiry {expiry}, now {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_down_at_start_fails_closed_until_it_comes_up() {
    let m = mesh().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let identity_addr = format!("127.0.0.1:{port}");
    let anchors = m.pki.join("ca.crt");
    let proxy = Proxy::start(&identity_addr, &m.voting_token_file, &anchors, m.app);
    assert_eq!(proxy.get("/ready"), (503, "no identity certificate yet\n".to_owned()));

    // No certificate: meshed (mTLS) traffic is refused at the handshake.
    let (_identity, addr) = identity(&m.server, &m.pki, "127.0.0.1:0", &[]);
    let leaf = certify(&addr, &m.web_token).await;
    drop(_identity);
    let config = client_config(&anchors, &leaf, &[b"http/1.1"]);
    let refused = match connect_mtls(&config, proxy.inbound).await {
        Err(e) => e.to_string(),
        Ok(tls) => http1(tls).await.map(|r| format!("{r:?}")).unwrap_err().to_string(),
    };
    assert!(!refused.is_empty());
    assert_eq!(proxy.get("/ready").0, 503);
    assert!(proxy.metrics().lines().any(|l| l.starts_with("identity_cert_refresh_failures_total ") && !l.ends_with(" 0")));

    // The identity service comes up on the configured address: the proxy becomes ready and serves mTLS.
    let (identity_proc, _) = identity(&m.server, &m.pki, &identity_addr, &[]);
    eventually_ready(&proxy, 20).await;
    let (status, body) = http1(connect_mtls(&config, proxy.inbound).await.unwrap()).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body["headers"]["l5d-client-id"], WEB);

    // The identity service going away later changes nothing: the certificate keeps serving.
    drop(identity_proc);
    let (status, body) = http1(connect_mtls(&config, proxy.inbound).await.unwrap()).await.unwrap();
    assert_eq!((status.as_str(), &body["headers"]["l5d-client-id"]), ("HTTP/1.1 200 OK", &serde_json::json!(WEB)));
    assert_eq!(proxy.get("/ready").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_certificates_renew_without_a_failed_request() {
    let m = mesh().await;
    let (_identity, identity_addr) =
        identity(&m.server, &m.pki, "127.0.0.1:0", &["--issuance-lifetime", "30s", "--clock-skew-allowance", "1s"]);
    let anchors = m.pki.join("ca.crt");
    let proxy = Proxy::start(&identity_addr, &m.voting_token_file, &anchors, m.app);
    eventually_ready(&proxy, 15).await;
    // 31-second leaves: the proxy renews after ~22 s. The client's own leaf
    // is as short: it re-certifies as its proxy would.
    let mut leaf = certify(&identity_addr, &m.web_token).await;
    let mut leaf_at = tokio::time::Instant::now();
    let mut server_leaves = std::collections::HashSet::new();
    let (mut ok, deadline) = (0, tokio::time::Instant::now() + Duration::from_secs(45));
    // Until the proxy renewed and clients handshook with the renewed certificate.
    while proxy.refresh_count() < 2 || server_leaves.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal within 45 s");
        if leaf_at.elapsed() > Duration::from_secs(10) {
            leaf = certify(&identity_addr, &m.web_token).await;
            leaf_at = tokio::time::Instant::now();
        }
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let tls = connect_mtls(&client_config(&anchors, &leaf, &[alpn]), proxy.inbound).await.expect("handshake");
            server_leaves.insert(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec());
            let client_id = if alpn == b"h2" {
                let (status, body) = http2(tls, &[]).await;
                assert_eq!(status, 200);
                body["headers"]["l5d-client-id"].clone()
            } else {
                let (status, body) = http1(tls).await.expect("request");
                assert_eq!(status, "HTTP/1.1 200 OK");
                body["headers"]["l5d-client-id"].clone()
            };
            assert_eq!(client_id, WEB);
            ok += 1;
        }
        // Pace the loop: this is load, not a stress test of the 2-core machine.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(server_leaves.len() >= 2, "the proxy presented {} certificates", server_leaves.len());
    println!("renewal: {ok} requests, no failures, {} server certificates seen", server_leaves.len());
}
