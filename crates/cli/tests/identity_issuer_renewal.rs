//! Automatic issuer renewal's failure path with real processes: `tessera
//! identity` whose issuer is due (a 2-minute issuer, 110 s renew-before)
//! but whose anchor key is missing records a Warning `IssuerRenewalFailed`
//! Event and keeps its issuer; once the key is back, a retry (backoff)
//! renews: a Normal `IssuerRenewed` Event, the new issuer in `crt.pem` and
//! announced on the bundle ConfigMap. About 15 s.

mod support;

use support::mesh::{bootstrap, identity_trusting};
use support::{Server, json};

fn events(server: &Server, reason: &str) -> Vec<serde_json::Value> {
    let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/linkerd/events", &[]);
    assert_eq!(code, 200, "{body}");
    json(&body)["items"].as_array().cloned().unwrap_or_default().into_iter().filter(|e| e["reason"] == reason).collect()
}

fn fingerprint(path: &std::path::Path) -> String {
    tessera_identity::rotate::fingerprint_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_failed_renewal_is_a_warning_event_and_is_retried() {
    let server = Server::start();
    let _ = server.kubectl(&["create", "ns", "linkerd"]);
    let pki = server.path("trust");
    bootstrap(&pki, &["--issuer-validity", "2m"]);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        &format!("--from-file=ca-bundle.crt={}", pki.join("ca.crt").display()),
    ]);
    let first = fingerprint(&pki.join("crt.pem"));
    std::fs::rename(pki.join("ca.key"), pki.join("ca.key.away")).unwrap();
    let dir = pki.display().to_string();
    let (_identity, _addr) = identity_trusting(
        &server,
        &["--trust-anchors-configmap", "linkerd/tessera-identity-trust-roots"],
        &["--issuer-dir", &dir, "--anchor-dir", &dir, "--issuer-validity", "2m", "--issuer-renew-before", "110s"],
    );

    let failed = server.eventually(30, "an IssuerRenewalFailed Event", || events(&server, "IssuerRenewalFailed").into_iter().next());
    assert_eq!(failed["type"], "Warning", "{failed}");
    assert_eq!(failed["involvedObject"]["kind"], "ConfigMap", "{failed}");
    let message = failed["message"].as_str().unwrap();
    assert!(message.starts_with("Renewing the identity issuer failed (keeping the current one, retrying in "), "{message}");
    assert!(message.contains(&format!("has its ca.crt and ca.key under {dir}")), "{message}");
    assert!(!message.contains("invalid configuration"), "{message}");
    assert_eq!(fingerprint(&pki.join("crt.pem")), first, "the current issuer is kept");
    assert!(events(&server, "IssuerRenewed").is_empty());

    std::fs::rename(pki.join("ca.key.away"), pki.join("ca.key")).unwrap();
    let renewed = server.eventually(40, "an IssuerRenewed Event after a retry", || events(&server, "IssuerRenewed").into_iter().next());
    assert_eq!(renewed["type"], "Normal", "{renewed}");
    let message = renewed["message"].as_str().unwrap();
    assert!(message.contains(&format!(" replaces {first} valid until ")), "{message}");
    let installed = fingerprint(&pki.join("crt.pem"));
    assert_ne!(installed, first);
    assert!(
        message.starts_with(&format!("Renewed identity issuer: {installed} valid until ")) || events(&server, "IssuerRenewed").len() > 1,
        "{message}"
    );
    let announced = server.kubectl_ok(&[
        "get",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        "-o",
        r"jsonpath={.metadata.annotations.tessera\.io/issuer-fingerprint}",
    ]);
    assert_eq!(announced, fingerprint(&pki.join("crt.pem")));
}
