//! End-to-end: `tessera identity` (the Linkerd-compatible CA) against a real
//! `tessera server`, driven by real kubectl, with a small Rust client speaking
//! the linkerd2-proxy-api proto. Leaves are verified with rustls-webpki, an
//! implementation independent of the CA's.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use support::{Server, json};
use time::OffsetDateTime;
use tonic::Code;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

const WEB: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// A running `tessera identity`, killed on drop.
struct Identity {
    child: Child,
    addr: String,
    admin: String,
}

impl Identity {
    fn start(server: &Server, trust_anchors: &Path, issuer: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["identity", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--kubeconfig"])
            .arg(&server.kubeconfig)
            .arg("--trust-anchors")
            .arg(trust_anchors)
            .args(issuer)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera identity");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut admin) = (None, None);
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("tessera identity listening on ") {
                addr = Some(rest.to_owned());
            }
            if let Some(rest) = line.strip_prefix("tessera identity admin on ") {
                admin = Some(rest.to_owned());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr: addr.expect("identity printed its address"), admin: admin.expect("identity printed its admin URL") }
    }

    async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        IdentityClient::new(channel)
    }

    fn metrics(&self) -> String {
        let out = Command::new("curl").args(["-sS", &format!("{}/metrics", self.admin)]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).env("TESSERA_LOG", "warn").output().expect("run tessera")
}

/// `tessera identity bootstrap --out DIR [extra…]`, which must succeed.
fn bootstrap(out: &Path, extra: &[&str]) {
    let out_arg = out.display().to_string();
    let o = tessera(&[&["identity", "bootstrap", "--out", &out_arg], extra].concat());
    assert!(o.status.success(), "bootstrap failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// A namespace `emojivoto` with ServiceAccounts `web` and `voting`; returns a
/// token of `web` for `identity.l5d.io`.
fn emojivoto(server: &Server) -> String {
    server.kubectl_ok(&["create", "ns", "emojivoto"]);
    server.kubectl_ok(&["create", "sa", "web", "-n", "emojivoto"]);
    server.kubectl_ok(&["create", "sa", "voting", "-n", "emojivoto"]);
    server.kubectl_ok(&["create", "token", "web", "-n", "emojivoto", "--audience", "identity.l5d.io"]).trim().to_owned()
}

/// A CSR for `identity` (P-256, one DNS SAN, empty subject).
fn csr(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![identity.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn request(identity: &str, token: &str, csr: &[u8]) -> CertifyRequest {
    CertifyRequest { identity: identity.to_owned(), token: token.as_bytes().to_vec(), certificate_signing_request: csr.to_vec() }
}

fn pem_ders(path: &Path) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(path).unwrap().map(|c| c.unwrap()).collect()
}

/// Verifies leaf → intermediates → one of the anchors (webpki), for server and
/// client auth and the identity as DNS name.
fn verify(anchors: &[CertificateDer<'static>], response: &CertifyResponse, identity: &str) -> Result<(), String> {
    let anchors: Vec<_> = anchors.iter().map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned()).collect();
    let leaf = CertificateDer::from(response.leaf_certificate.clone());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("leaf: {e:?}"))?;
    let intermediates: Vec<CertificateDer<'_>> =
        response.intermediate_certificates.iter().map(|d| CertificateDer::from(d.clone())).collect();
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &intermediates, UnixTime::now(), usage, None, None)
            .map_err(|e| format!("chain: {e:?}"))?;
    }
    ee.verify_is_valid_for_subject_name(&ServerName::try_from(identity.to_owned()).unwrap()).map_err(|e| format!("name: {e:?}"))
}

fn not_after(der: &[u8]) -> i64 {
    X509Certificate::from_der(der).unwrap().1.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_issues_a_24h_leaf_that_verifies_to_the_trust_anchor() {
    let server = Server::start();
    let token = emojivoto(&server);
    let pki = server.path("identity");
    bootstrap(&pki, &[]);
    let identity = Identity::start(&server, &pki.join("ca.crt"), &["--issuer-dir", pki.to_str().unwrap()]);
    let mut client = identity.client().await;

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let response = client.certify(request(WEB, &token, &csr(WEB))).await.expect("certify").into_inner();
    let anchors = pem_ders(&pki.join("ca.crt"));
    verify(&anchors, &response, WEB).unwrap();

    let issuer = pem_ders(&pki.join("crt.pem"));
    assert_eq!(response.intermediate_certificates, vec![issuer[0].to_vec()]);
    let (_, leaf) = X509Certificate::from_der(&response.leaf_certificate).unwrap();
    assert_eq!(leaf.subject_alternative_name().unwrap().unwrap().value.general_names, vec![GeneralName::DNSName(WEB)]);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign(), "{ku:?}");
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth, "{eku:?}");
    assert!(!leaf.is_ca());
    let expected = now + 24 * 3600 + 20;
    let leaf_not_after = leaf.validity().not_after.timestamp();
    assert!((expected - 5..=expected + 5).contains(&leaf_not_after), "notAfter {leaf_not_after}, expected ≈ {expected}");
    assert!(leaf_not_after <= not_after(&issuer[0]));
    assert_eq!(response.valid_until.unwrap().seconds, leaf_not_after);
    let not_before = leaf.validity().not_before.timestamp();
    assert!((now - 25..=now - 15).contains(&not_before), "notBefore {not_before}, now {now}");

    // A token for another audience is refused by TokenReview.
    let default_audience = server.kubectl_ok(&["create", "token", "web", "-n", "emojivoto"]).trim().to_owned();
    let status = client.certify(request(WEB, &default_audience, &csr(WEB))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        r#"authentication token could not be authenticated: [invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid for the target audiences ["identity.l5d.io"]]"#
    );

    // A token of another ServiceAccount does not get web's identity.
    let voting = server.kubectl_ok(&["create", "token", "voting", "-n", "emojivoto", "--audience", "identity.l5d.io"]).trim().to_owned();
    let status = client.certify(request(WEB, &voting, &csr(WEB))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        format!(
            "requested identity did not match provided token: requested={WEB}; found=voting.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        )
    );

    // The contract's first checks.
    let status = client.certify(CertifyRequest::default()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "missing identity"));

    let metrics = identity.metrics();
    assert!(metrics.contains(&format!(r#"identity_certificates_issued_total{{identity="{WEB}"}} 1"#)), "{metrics}");
    assert!(metrics.contains(r#"identity_certify_rejections_total{reason="unauthenticated"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"identity_certify_rejections_total{reason="identity_mismatch"} 1"#), "{metrics}");
    assert!(metrics.contains(&format!("identity_issuer_expiry_timestamp_seconds {}", not_after(&issuer[0]))), "{metrics}");
    assert!(metrics.contains("identity_certify_duration_seconds_count 4"), "{metrics}");

    // An issuer with an hour left caps the leaf at its own notAfter.
    let short = server.path("short-issuer");
    bootstrap(&short, &["--anchor-dir", pki.to_str().unwrap(), "--issuer-validity", "1h"]);
    let capped = Identity::start(&server, &pki.join("ca.crt"), &["--issuer-dir", short.to_str().unwrap()]);
    let response = capped.client().await.certify(request(WEB, &token, &csr(WEB))).await.expect("certify").into_inner();
    verify(&anchors, &response, WEB).unwrap();
    let short_issuer = pem_ders(&short.join("crt.pem"));
    assert_eq!(not_after(&response.leaf_certificate), not_after(&short_issuer[0]));
}

/// `kubectl patch` data for a kubernetes.io/tls Secret.
fn tls_patch(cert: &Path, key: &Path) -> String {
    use base64::Engine as _;
    let b64 = |p: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    serde_json::json!({"data": {"tls.crt": b64(cert), "tls.key": b64(key)}}).to_string()
}

#[derive(Default)]
struct LoopLog {
    issuers: Vec<Vec<u8>>,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_secret_rotates_without_restart_or_errors() {
    let server = Server::start();
    let token = emojivoto(&server);
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    let first = server.path("issuer-1");
    bootstrap(&first, &[]);
    let second = server.path("issuer-2");
    bootstrap(&second, &["--anchor-dir", first.to_str().unwrap()]);
    let anchors_file = first.join("ca.crt");
    let secret_files = |dir: &Path| {
        vec![
            format!("--from-file=ca.crt={}", anchors_file.display()),
            format!("--from-file=tls.crt={}", dir.join("crt.pem").display()),
            format!("--from-file=tls.key={}", dir.join("key.pem").display()),
        ]
    };
    let files = secret_files(&first);
    let mut args = vec!["create", "secret", "generic", "linkerd-identity-issuer", "-n", "linkerd", "--type=kubernetes.io/tls"];
    args.extend(files.iter().map(String::as_str));
    server.kubectl_ok(&args);

    let identity = Identity::start(&server, &anchors_file, &["--issuer-secret", "linkerd/linkerd-identity-issuer"]);
    let mut client = identity.client().await;
    let csr = csr(WEB);
    // The Secret is loaded asynchronously: poll until the first leaf comes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.certify(request(WEB, &token, &csr)).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!((s.code(), s.message()), (Code::Unavailable, "cert issuer not ready yet"));
                assert!(tokio::time::Instant::now() < deadline, "the issuer Secret was never loaded");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // A client loops on Certify for the rest of the test.
    let anchors = pem_ders(&anchors_file);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(std::sync::Mutex::new(LoopLog::default()));
    let looper = {
        let (stop, log, mut client, token, csr, anchors) =
            (stop.clone(), log.clone(), client.clone(), token.clone(), csr.clone(), anchors.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = client.certify(request(WEB, &token, &csr)).await;
                let mut log = log.lock().unwrap();
                match result {
                    Ok(r) => match verify(&anchors, r.get_ref(), WEB) {
                        Ok(()) => log.issuers.push(r.into_inner().intermediate_certificates[0].clone()),
                        Err(e) => log.errors.push(e),
                    },
                    Err(s) => log.errors.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        })
    };
    let issuer_1 = pem_ders(&first.join("crt.pem"))[0].to_vec();
    let issuer_2 = pem_ders(&second.join("crt.pem"))[0].to_vec();
    let seen = |der: &[u8]| log.lock().unwrap().issuers.iter().filter(|i| i.as_slice() == der).count();
    let wait_for = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("leaves from the first issuer", Box::new(|| seen(&issuer_1) >= 3));

    // Rotate: the new issuer (same anchor) is used within seconds.
    let patch = tls_patch(&second.join("crt.pem"), &second.join("key.pem"));
    server.kubectl_ok(&["patch", "secret", "linkerd-identity-issuer", "-n", "linkerd", "--type=merge", "-p", &patch]);
    let rotated_at = std::time::Instant::now();
    wait_for("leaves from the rotated issuer", Box::new(|| seen(&issuer_2) >= 3));
    let took = rotated_at.elapsed();
    assert!(took < Duration::from_secs(10), "rotation took {took:?}");

    // A bad issuer (the first issuer's key with the second's certificate) is refused; the second keeps working.
    let bad = tls_patch(&second.join("crt.pem"), &first.join("key.pem"));
    server.kubectl_ok(&["patch", "secret", "linkerd-identity-issuer", "-n", "linkerd", "--type=merge", "-p", &bad]);
    server.eventually(15, "the IssuerRejected event", || {
        let events = json(&server.kubectl_ok(&["get", "events", "-n", "linkerd", "-o", "json"]));
        events["items"].as_array().unwrap().iter().any(|e| e["reason"] == "IssuerRejected").then_some(())
    });
    let after_bad = seen(&issuer_2);
    wait_for("more leaves after the refused issuer", Box::new(|| seen(&issuer_2) >= after_bad + 3));

    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    let log = log.lock().unwrap();
    assert!(log.errors.is_empty(), "errors while rotating: {:?}", log.errors);
    let last_first = log.issuers.iter().rposition(|i| *i == issuer_1).unwrap();
    let first_second = log.issuers.iter().position(|i| *i == issuer_2).unwrap();
    assert!(last_first < first_second, "no leaf from the old issuer after the new one");
    assert!(log.issuers.iter().all(|i| *i == issuer_1 || *i == issuer_2));
    println!("rotation: {} leaves, all verified; new issuer in use after {took:?}", log.issuers.len());

    let events = json(&server.kubectl_ok(&["get", "events", "-n", "linkerd", "-o", "json"]));
    let items = events["items"].as_array().unwrap();
    let updated: Vec<_> = items.iter().filter(|e| e["reason"] == "IssuerUpdated").collect();
    assert_eq!(updated.len(), 2, "initial load and rotation: {items:?}");
    for e in &updated {
        assert_eq!(e["type"], "Normal");
        assert_eq!(e["involvedObject"]["kind"], "Secret");
        assert_eq!(e["involvedObject"]["name"], "linkerd-identity-issuer");
        assert!(e["message"].as_str().unwrap().starts_with("Updated identity issuer: CN=identity.linkerd.cluster.local"), "{e}");
    }
    let rejected: Vec<_> = items.iter().filter(|e| e["reason"] == "IssuerRejected").collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["type"], "Warning");
    assert_eq!(rejected[0]["message"], "Refused new identity issuer: issuer key does not match the issuer certificate");
    let table = server.kubectl_ok(&["get", "events", "-n", "linkerd", "--field-selector", "reason=IssuerUpdated"]);
    assert!(table.contains("secret/linkerd-identity-issuer"), "{table}");

    let metrics = identity.metrics();
    assert!(metrics.contains(r#"identity_issuer_updates_total{result="updated"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"identity_issuer_updates_total{result="rejected"} 1"#), "{metrics}");
}

/// Signs an issuer with the anchor in `anchor_dir`, valid in [not_before, not_after], into `out`.
fn issuer_valid(anchor_dir: &Path, out: &Path, not_before: OffsetDateTime, not_after: OffsetDateTime) {
    issuer_with(anchor_dir, out, |params| {
        params.not_before = not_before;
        params.not_after = not_after;
    });
}

/// Signs an issuer (CA, pathlen 0, valid for a day) changed by `change` with the anchor in `anchor_dir`, into `out`.
fn issuer_with(anchor_dir: &Path, out: &Path, change: impl FnOnce(&mut CertificateParams)) {
    let now = OffsetDateTime::now_utc();
    let anchor_key = KeyPair::from_pem(&std::fs::read_to_string(anchor_dir.join("ca.key")).unwrap()).unwrap();
    let anchor = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(anchor_dir.join("ca.crt")).unwrap(), anchor_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "identity.linkerd.cluster.local");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + Duration::from_secs(86400);
    change(&mut params);
    let cert = params.signed_by(&key, &anchor).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("crt.pem"), cert.pem()).unwrap();
    std::fs::write(out.join("key.pem"), key.serialize_pem()).unwrap();
}

fn check(server: &Server, identity_addr: &str, anchors: &Path, issuer_dir: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["check", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .arg("--trust-anchors")
        .arg(anchors)
        .arg("--issuer-dir")
        .arg(issuer_dir)
        .args(["--identity-addr", identity_addr])
        .args(extra)
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("run tessera check");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_reports_good_expired_foreign_mismatched_and_expiring_issuers() {
    let server = Server::start();
    let pki: PathBuf = server.path("identity");
    bootstrap(&pki, &[]);
    let anchors = pki.join("ca.crt");
    let identity = Identity::start(&server, &anchors, &["--issuer-dir", pki.to_str().unwrap()]);

    let (code, out) = check(&server, &identity.addr, &anchors, &pki, &[]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "kubernetes-api\n--------------\n✔ can initialize the client\n✔ can query the Kubernetes API\n",
        "tessera-identity\n----------------\n✔ trust anchors are readable and well-formed\n✔ trust anchors are using supported crypto algorithm\n✔ trust anchors are within their validity period\n✔ trust anchors are valid for at least 60 days\n✔ issuer cert is readable and well-formed\n✔ issuer cert is a CA certificate\n✔ issuer cert is using supported crypto algorithm\n✔ issuer key matches the issuer cert\n✔ issuer cert is within its validity period\n✔ issuer cert is issued by the trust anchor\n✔ issuer cert is valid for at least 60 days\n",
        "tessera-identity-service\n------------------------\n✔ identity service is serving Certify\n",
        "Status check results are ✔\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains('×') && !out.contains('‼'), "{out}");
    let (code, out) = check(&server, &identity.addr, &anchors, &pki, &["--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["success"], true);
    assert_eq!(report["categories"].as_array().unwrap().len(), 3);

    let now = OffsetDateTime::now_utc();
    let expired = server.path("expired");
    issuer_valid(&pki, &expired, now - Duration::from_secs(10 * 86400), now - Duration::from_secs(86400));
    let (code, out) = check(&server, &identity.addr, &anchors, &expired, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× issuer cert is within its validity period\n    issuer certificate expired at "),
        "{out}"
    );
    assert!(out.ends_with("Status check results are ×\n"), "{out}");

    let foreign = server.path("foreign");
    bootstrap(&foreign, &[]);
    let (code, out) = check(&server, &identity.addr, &anchors, &foreign, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× issuer cert is issued by the trust anchor\n    issuer certificate (CN=identity.linkerd.cluster.local) is not signed by any trust anchor\n"),
        "{out}"
    );
    let (_, json_out) = check(&server, &identity.addr, &anchors, &foreign, &["-o", "json"]);
    assert_eq!(json(&json_out)["success"], false);

    // A chain the CA's webpki path validation refuses (name constraints
    // excluding the trust domain): check says × with the very message the CA
    // refuses it with at start.
    let constrained = server.path("constrained");
    issuer_with(&pki, &constrained, |params| {
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![],
            excluded_subtrees: vec![rcgen::GeneralSubtree::DnsName("cluster.local".to_owned())],
        });
    });
    let refusal = "issuer chain fails X.509 path validation (webpki, verifying a leaf it signed as a TLS server (serverAuth) certificate): NameConstraintViolation";
    let (code, out) = check(&server, &identity.addr, &anchors, &constrained, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("× issuer cert is issued by the trust anchor\n    {refusal}\n")), "{out}");
    let ca = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["identity", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .arg("--trust-anchors")
        .arg(&anchors)
        .arg("--issuer-dir")
        .arg(&constrained)
        .env("TESSERA_LOG", "off")
        .output()
        .expect("run tessera identity");
    let stderr = String::from_utf8_lossy(&ca.stderr);
    assert!(!ca.status.success());
    assert!(stderr.contains(&format!("issuer from directory {}: {refusal}", constrained.display())), "{stderr}");

    let mismatched = server.path("mismatched");
    std::fs::create_dir_all(&mismatched).unwrap();
    std::fs::copy(pki.join("crt.pem"), mismatched.join("crt.pem")).unwrap();
    std::fs::copy(foreign.join("key.pem"), mismatched.join("key.pem")).unwrap();
    let (code, out) = check(&server, &identity.addr, &anchors, &mismatched, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("× issuer key matches the issuer cert\n    issuer key does not match the issuer certificate\n"), "{out}");

    let soon = server.path("soon");
    bootstrap(&soon, &["--anchor-dir", pki.to_str().unwrap(), "--issuer-validity", "720h"]);
    let (code, out) = check(&server, &identity.addr, &anchors, &soon, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "‼ issuer cert is valid for at least 60 days\n    issuer certificate CN=identity.linkerd.cluster.local expires in 29 days, at "
        ),
        "{out}"
    );
    assert!(out.ends_with("Status check results are ‼\n"), "{out}");

    // With the identity service gone, the service check fails.
    let addr = identity.addr.clone();
    drop(identity);
    let (code, out) = check(&server, &addr, &anchors, &pki, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("× identity service is serving Certify\n    connecting to {addr}: transport error")), "{out}");
}

/// `tessera bench certify` against a real identity service: every call issues a
/// leaf (smoke run, never timed).
#[test]
fn bench_certify_smoke() {
    let server = Server::start();
    let pki = server.path("identity");
    bootstrap(&pki, &[]);
    let identity = Identity::start(&server, &pki.join("ca.crt"), &["--issuer-dir", pki.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "certify", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["--identity-addr", &format!("http://{}", identity.addr), "--requests", "200", "--concurrency", "4", "--warmup", "0s", "--no-progress", "--output", "json"])
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("tessera bench certify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!((summary["count"].as_u64(), summary["ok"].as_u64()), (Some(200), Some(200)), "{summary:#}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary:#}");
    assert!(identity.metrics().lines().any(|l| l.starts_with("identity_certificates_issued_total") && !l.ends_with(" 0")), "certificates counted");
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// Issue 19, finding 2, worst case, end to end: a meshed workload (it holds
/// its leaf and key) that can also write the issuer Secret installs
/// `[evil CA signed by its leaf key, its leaf, real issuer]`, hoping the CA then
/// signs every leaf with a key it holds. The chain fails path validation: it
/// is refused with webpki's reason in a Warning Event, and the real issuer
/// keeps issuing. The same files are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evil_issuer_chain_built_from_a_workload_leaf_is_refused() {
    let server = Server::start();
    let token = emojivoto(&server);
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    let pki = server.path("issuer");
    bootstrap(&pki, &[]);
    let anchors_file = pki.join("ca.crt");
    let args: Vec<String> = vec![
        "create".into(),
        "secret".into(),
        "tls".into(),
        "linkerd-identity-issuer".into(),
        "-n".into(),
        "linkerd".into(),
        format!("--cert={}", pki.join("crt.pem").display()),
        format!("--key={}", pki.join("key.pem").display()),
    ];
    server.kubectl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let identity = Identity::start(&server, &anchors_file, &["--issuer-secret", "linkerd/linkerd-identity-issuer"]);
    let mut client = identity.client().await;

    // The workload's own leaf and key, as any meshed pod has them.
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![WEB.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    let leaf_csr = params.serialize_request(&leaf_key).unwrap().der().to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let leaf = loop {
        match client.certify(request(WEB, &token, &leaf_csr)).await {
            Ok(r) => break r.into_inner().leaf_certificate,
            Err(s) => {
                assert_eq!((s.code(), s.message()), (Code::Unavailable, "cert issuer not ready yet"));
                assert!(tokio::time::Instant::now() < deadline, "the issuer Secret was never loaded");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // The evil "issuer": a CA signed with the leaf's key, its key held by the
    // attacker, named like the real issuer.
    let leaf_signer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(leaf.clone()), leaf_key).unwrap();
    let evil_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut evil = CertificateParams::default();
    evil.distinguished_name.push(rcgen::DnType::CommonName, "identity.linkerd.cluster.local");
    evil.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    evil.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let evil = evil.signed_by(&evil_key, &leaf_signer).unwrap();
    let evil_dir = server.path("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    let real_issuer = std::fs::read_to_string(pki.join("crt.pem")).unwrap();
    std::fs::write(evil_dir.join("crt.pem"), format!("{}{}{real_issuer}", evil.pem(), pem(&leaf))).unwrap();
    std::fs::write(evil_dir.join("key.pem"), evil_key.serialize_pem()).unwrap();
    // Named like the real issuer, the evil CA leaves webpki two paths for a leaf
    // it signs: through the workload's leaf (refused: EndEntityUsedAsCa) or
    // through the real issuer (refused: its key did not sign the leaf). webpki
    // reports the more specific of its reasons.
    let reason = "issuer chain fails X.509 path validation (webpki, verifying a leaf it signed as a TLS server (serverAuth) certificate): InvalidSignatureForPublicKey";

    // Hot reload through the Secret: refused, with an Event saying why.
    let patch = tls_patch(&evil_dir.join("crt.pem"), &evil_dir.join("key.pem"));
    server.kubectl_ok(&["patch", "secret", "linkerd-identity-issuer", "-n", "linkerd", "--type=merge", "-p", &patch]);
    let rejected = server.eventually(15, "the IssuerRejected event", || {
        let events = json(&server.kubectl_ok(&["get", "events", "-n", "linkerd", "-o", "json"]));
        events["items"].as_array().unwrap().iter().find(|e| e["reason"] == "IssuerRejected").cloned()
    });
    assert_eq!(rejected["type"], "Warning");
    assert_eq!(rejected["involvedObject"]["name"], "linkerd-identity-issuer");
    assert_eq!(rejected["message"], format!("Refused new identity issuer: {reason}"));

    // The real issuer is still the one signing, and its leaves verify.
    let response = client.certify(request(WEB, &token, &csr(WEB))).await.expect("certify after the refusal").into_inner();
    assert_eq!(response.intermediate_certificates, vec![pem_ders(&pki.join("crt.pem"))[0].to_vec()]);
    verify(&pem_ders(&anchors_file), &response, WEB).unwrap();
    let metrics = identity.metrics();
    assert!(metrics.contains(r#"identity_issuer_updates_total{result="rejected"} 1"#), "{metrics}");

    // The same files at start: the service refuses to start on them.
    let out = tessera(&[
        "identity",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--kubeconfig",
        server.kubeconfig.to_str().unwrap(),
        "--trust-anchors",
        anchors_file.to_str().unwrap(),
        "--issuer-dir",
        evil_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("issuer from directory {}: {reason}", evil_dir.display())), "{stderr}");
}
