//! Issue 17, `tessera expiry` end to end: a server with an issuer Secret
//! expiring in 20 days, a trust bundle ConfigMap, two legacy token Secrets
//! and a meshed pod whose proxy (a stand-in serving Linkerd's
//! `identity_cert_expiration_timestamp_seconds`) is past 80 % of its leaf's
//! life (renewal overdue: proxies renew at 70 %). The timeline lists them all
//! in date order with warnings, the serving certificate and the kubeconfig's client certificate too; `-o json` parses;
//! the gauges are on `/metrics`; anonymous and plain users get kube's 403;
//! and an expired leaf makes the command exit 3.

#![cfg(unix)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;
use support::{Server, json};

const DAY: i64 = 86400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A certificate (and key) valid from `not_before` to `not_after`, unix seconds.
fn certificate(cn: &str, not_before: i64, not_after: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).expect("time");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("time");
    (params.self_signed(&key).expect("sign").pem(), key.serialize_pem())
}

/// A stand-in proxy admin port: no `/trust`, and `/metrics` with the leaf's expiry.
fn fake_proxy(expiry: Arc<AtomicI64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let answer = if request.starts_with("GET /metrics ") {
                let body = format!(
                    "# TYPE identity_cert_expiration_timestamp_seconds gauge\nidentity_cert_expiration_timestamp_seconds {}\n",
                    expiry.load(Ordering::SeqCst)
                );
                format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}")
            } else {
                "HTTP/1.0 404 Not Found\r\n\r\nnot found\n".to_owned()
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    port
}

fn expiry(server: &Server, kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("expiry")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("TESSERA_LOG", "warn")
        .current_dir(server.dir.path())
        .output()
        .expect("run tessera expiry")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_timeline_of_everything_that_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir, &["--identity-issuer-secret", "linkerd/linkerd-identity-issuer"]);
    let t = now();

    // The mesh's issuer (20 days less an hour left, so the table's "19d22h"
    // holds whatever second the command runs in) as a kubernetes.io/tls
    // Secret, and the trust bundle.
    server.kubectl_ok(&["create", "namespace", "linkerd"]);
    let issuer_expiry = t + 20 * DAY - 3600;
    let (issuer_crt, issuer_key) = certificate("identity.linkerd.cluster.local", t - DAY, issuer_expiry);
    std::fs::write(server.path("issuer.crt"), &issuer_crt).expect("write");
    std::fs::write(server.path("issuer.key"), &issuer_key).expect("write");
    let (crt, key) = (server.path("issuer.crt"), server.path("issuer.key"));
    server.kubectl_ok(&[
        "create",
        "secret",
        "tls",
        "linkerd-identity-issuer",
        "-n",
        "linkerd",
        "--cert",
        &crt.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    let (anchor, _) = certificate("root.linkerd.cluster.local", t - DAY, t + 300 * DAY);
    std::fs::write(server.path("ca-bundle.crt"), &anchor).expect("write");
    let bundle = format!("--from-file=ca-bundle.crt={}", server.path("ca-bundle.crt").display());
    server.kubectl_ok(&["create", "configmap", "tessera-identity-trust-roots", "-n", "linkerd", &bundle]);

    // Two legacy token Secrets.
    for name in ["legacy-a", "legacy-b"] {
        let manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations:\n    kubernetes.io/service-account.name: default\ntype: kubernetes.io/service-account-token\n"
        );
        let out = server.kubectl_stdin(&["apply", "-f", "-"], &manifest);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // A meshed pod whose proxy's 24 h leaf has 4 h left (renewal overdue).
    let leaf_expiry = Arc::new(AtomicI64::new(t + 4 * 3600));
    let admin_port = fake_proxy(leaf_expiry.clone());
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: api-0\n  annotations:\n    linkerd.io/inject: enabled\n    tessera.io/proxy-admin-port: \"{admin_port}\"\nspec:\n  containers:\n  - name: api\n    image: api\n"
    );
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.kubectl_ok(&[
        "patch",
        "pod",
        "api-0",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"127.0.0.1"}}"#,
    ]);

    // The table: date order, warnings, owners.
    let out = expiry(&server, &server.kubeconfig, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["WHEN", "IN", "KIND", "NAME", "OWNER", "WARNING"], "{stdout}");
    let row = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{stdout}"))
    };
    let leaf = row("default/api-0");
    let issuer = row("linkerd/identity.linkerd.cluster.local");
    let anchor = row("linkerd/root.linkerd.cluster.local");
    let serving = row("serving-certificate");
    let (legacy_a, legacy_b) = (row("default/legacy-a"), row("default/legacy-b"));
    assert!(
        leaf < issuer && issuer < anchor && anchor < serving && serving < legacy_a.min(legacy_b),
        "{stdout}"
    );
    assert!(
        lines[leaf].contains("proxy-leaf") && lines[leaf].contains("past 80 % of its 1d0h lifetime"),
        "{stdout}"
    );
    assert!(
        lines[issuer].contains("issuer Secret linkerd/linkerd-identity-issuer") && lines[issuer].contains("expires within 60d0h (19d22h left)"),
        "{stdout}"
    );
    assert!(lines[anchor].contains("trust-anchor") && lines[anchor].ends_with('-'), "{stdout}");
    assert!(lines[serving].contains("tessera-apiserver"), "{stdout}");
    for i in [legacy_a, legacy_b] {
        assert!(
            lines[i].starts_with("never ") && lines[i].contains("legacy-token") && lines[i].contains("ServiceAccount default/default"),
            "{stdout}"
        );
        assert!(lines[i].contains("legacy ServiceAccount token: never expires"), "{stdout}");
    }
    row("client-certificate");

    // -o json: the same items, with the fields the dashboard reads.
    let out = expiry(&server, &server.kubeconfig, &["-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc = json(&stdout);
    let items = doc["items"].as_array().expect("items");
    let find = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {doc}"))
    };
    let legacy = find("legacy-token", "legacy-a");
    assert_eq!(
        (&legacy["namespace"], &legacy["neverExpires"], legacy.get("notAfter")),
        (&json!("default"), &json!(true), None)
    );
    assert!(legacy["ageSeconds"].as_i64().is_some_and(|a| (0..60).contains(&a)), "{legacy}");
    let serving = find("serving-certificate", "tessera-apiserver");
    assert!(serving["notAfter"].is_string() && serving["warning"].is_null(), "{serving}");
    assert!(serving["fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:")), "{serving}");
    assert_eq!(find("proxy-leaf", "api-0")["namespace"], "default");
    let dates: Vec<&str> = items.iter().filter_map(|i| i["notAfter"].as_str()).collect();
    let mut sorted = dates.clone();
    sorted.sort_unstable();
    assert_eq!(dates, sorted);

    // The gauges.
    let (code, metrics) = server.curl_admin("GET", "/metrics", &[]);
    assert_eq!(code, 200);
    assert!(metrics.contains("tessera_legacy_token_secrets 2\n"), "{metrics}");
    let issuer_series = format!(
        "tessera_expiry_timestamp_seconds{{kind=\"issuer\",name=\"identity.linkerd.cluster.local\",namespace=\"linkerd\"}} {}.0\n",
        issuer_expiry
    );
    assert!(metrics.contains(&issuer_series), "{metrics}");
    assert!(
        metrics.contains(r#"tessera_expiry_lifetime_seconds{kind="proxy-leaf",name="api-0",namespace="default"} 86400.0"#),
        "{metrics}"
    );

    // Forbidden: anonymous and a plain ServiceAccount get kube's 403.
    let (code, body) = server.curl("GET", "/tessera/v1/expiry", &[]);
    assert_eq!(code, 403);
    assert_eq!(
        json(&body),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "forbidden: User \"system:anonymous\" cannot get path \"/tessera/v1/expiry\"",
               "reason": "Forbidden", "details": {}, "code": 403})
    );
    let token = server.kubectl_ok(&["create", "token", "default"]);
    let user = server.kubeconfig_for_token("plain", token.trim());
    let out = expiry(&server, &user, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!((out.status.code(), stdout.as_str()), (Some(1), ""), "{stderr}");
    assert!(
        stderr.contains(r#"forbidden: User "system:serviceaccount:default:default" cannot get path "/tessera/v1/expiry" (HTTP 403)"#),
        "{stderr}"
    );

    // Something expired: exit 3.
    leaf_expiry.store(t - 60, Ordering::SeqCst);
    let out = expiry(&server, &server.kubeconfig, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.lines().nth(1).is_some_and(|l| l.contains("api-0") && l.contains("expired")), "{stdout}");
}
