//! Issue 17's trust distribution, end to end: the anchors live in the
//! ConfigMap `linkerd/tessera-identity-trust-roots`; `tessera identity`,
//! `tessera check` and the proxies (under `tessera agent run --mesh
//! --identity-trust-anchors-configmap`) read it from there. Each proxy's
//! anchors and leaf issuer show on its Pod; a new bundle is trusted without a
//! restart, and announcing a new issuer on the ConfigMap makes every proxy
//! renew from it at once, while meshed traffic keeps flowing.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::mesh::{API_APP, DATA_STORE_APP, Proc, api_and_data_store, bootstrap, curl, python, ready_pod_ip, tessera};
use support::{Server, json};

const API_ID: &str = "api.api.serviceaccount.identity.linkerd.cluster.local";
const DATA_STORE_URL: &str = "http://data-store.data-store.svc.cluster.local:8081";
const BUNDLE: &str = "tessera-identity-trust-roots";
const BUNDLE_REF: &str = "linkerd/tessera-identity-trust-roots";

/// `sha256:` + lowercase hex of the DER of the first certificate in `pem`.
fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().rsplit_once('=').map(|(_, h)| h.replace(':', "").to_ascii_lowercase()).expect("a fingerprint");
    format!("sha256:{hex}")
}

/// Sets the bundle ConfigMap's `ca-bundle.crt` to `pem` (creating it the first time).
fn set_bundle(server: &Server, pem: &str) {
    let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": BUNDLE, "namespace": "linkerd"}, "data": {"ca-bundle.crt": pem}});
    let out = server.kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &configmap.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `tessera identity` reading the anchors from the ConfigMap, the issuer from `issuer_dir`; its address.
fn identity(server: &Server, issuer_dir: &Path) -> (Proc, String) {
    let issuer_dir = issuer_dir.display().to_string();
    support::mesh::identity_trusting(server, &["--trust-anchors-configmap", BUNDLE_REF], &["--issuer-dir", &issuer_dir])
}

/// `tessera agent run --mesh` of `app` as pod `ns/ns-0`, its proxy trusting the bundle ConfigMap.
fn meshed(server: &Server, ns: &str, port: &str, identity_addr: &str, app: &[&str]) -> Proc {
    let trust = ["--identity-trust-anchors-configmap", BUNDLE_REF];
    support::mesh::meshed_trusting(server, &format!("{ns}-0"), ns, &["--port", port], identity_addr, &trust, app)
}

/// The pod's trust annotations and its proxy container's ID.
fn trust_state(server: &Server, ns: &str) -> (Option<String>, Option<String>, String) {
    let pod = json(&server.kubectl_ok(&["get", "pod", &format!("{ns}-0"), "-n", ns, "-o", "json"]));
    let annotation = |key: &str| pod["metadata"]["annotations"][key].as_str().map(str::to_owned);
    let proxy = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|c| c["name"] == "linkerd-proxy"))
        .and_then(|c| c["containerID"].as_str())
        .unwrap_or_default()
        .to_owned();
    (annotation("tessera.io/trust-anchors"), annotation("tessera.io/leaf-issuer"), proxy)
}

/// One request through the api's proxy to the data store; the identity the data store saw.
fn request_through_the_mesh(api_ip: &str, path: &str) -> Option<String> {
    let (code, body) = curl(&format!("http://{api_ip}:8080/{path}"));
    if code != 200 {
        return None;
    }
    let seen = json(&body);
    seen["headers"].as_array()?.iter().find(|h| h[0] == "l5d-client-id").and_then(|h| h[1].as_str()).map(str::to_owned)
}

#[test]
fn pod_tokens_may_read_the_trust_bundle_and_nothing_else_there() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    let pki = server.path("anchors");
    bootstrap(&pki, &[]);
    set_bundle(&server, &std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt"));
    server.kubectl_ok(&["create", "configmap", "other", "-n", "linkerd", "--from-literal=a=b"]);
    let role = server.eventually(10, "the trust bundle's Role in linkerd", || {
        let out = server.kubectl(&["get", "role", "tessera:identity-trust-roots", "-n", "linkerd", "-o", "json"]);
        out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
    });
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [BUNDLE], "verbs": ["get", "list", "watch"]}])
    );
    let binding = json(&server.kubectl_ok(&["get", "rolebinding", "tessera:identity-trust-roots", "-n", "linkerd", "-o", "json"]));
    let subjects: Vec<&str> = binding["subjects"].as_array().expect("subjects").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(subjects, ["system:serviceaccounts", "system:nodes"]);

    server.kubectl_ok(&["create", "ns", "app"]);
    server.kubectl_ok(&["create", "sa", "web", "-n", "app"]);
    let token = server.kubectl_ok(&["create", "token", "web", "-n", "app"]);
    let pod = server.kubeconfig_for_token("web", token.trim());
    let out = server.kubectl_as(&pod, &["get", "configmap", BUNDLE, "-n", "linkerd", "-o", "jsonpath={.data.ca-bundle\\.crt}"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    // A watch pinned to the name is allowed (what the proxies do) ...
    let out = server.kubectl_as(&pod, &["get", "configmaps", "-n", "linkerd", "--field-selector", &format!("metadata.name={BUNDLE}"), "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("configmap/{BUNDLE}"), "{}", String::from_utf8_lossy(&out.stderr));
    // ... anything else in the namespace is not.
    let out = server.kubectl_as(&pod, &["get", "configmap", "other", "-n", "linkerd"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"Error from server (Forbidden): configmaps "other" is forbidden: User "system:serviceaccount:app:web" cannot get resource "configmaps" in API group "" in the namespace "linkerd""#
    );
    let out = server.kubectl_as(&pod, &["get", "configmaps", "-n", "linkerd"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"Error from server (Forbidden): configmaps is forbidden: User "system:serviceaccount:app:web" cannot list resource "configmaps" in API group "" in the namespace "linkerd""#
    );
    let out = server.kubectl_as(&pod, &["patch", "configmap", BUNDLE, "-n", "linkerd", "--type=merge", "-p", r#"{"data":{"x":"y"}}"#]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot patch resource \"configmaps\""), "{}", String::from_utf8_lossy(&out.stderr));

    // Removed, the access comes back.
    server.kubectl_ok(&["delete", "rolebinding", "tessera:identity-trust-roots", "-n", "linkerd"]);
    server.eventually(10, "the RoleBinding restored", || {
        server.kubectl(&["get", "rolebinding", "tessera:identity-trust-roots", "-n", "linkerd"]).status.success().then_some(())
    });
}

#[test]
fn proxies_follow_the_bundle_configmap_and_renew_from_an_announced_issuer() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    api_and_data_store(&server);
    let old = server.path("old");
    bootstrap(&old, &[]);
    let old_anchor = std::fs::read_to_string(old.join("ca.crt")).expect("ca.crt");
    set_bundle(&server, &old_anchor);
    let (old_fp, old_issuer_fp) = (fingerprint(&old.join("ca.crt")), fingerprint(&old.join("crt.pem")));

    let (_identity, identity_addr) = identity(&server, &old);
    let python = python();
    let _data_store = meshed(&server, "data-store", "8081", &identity_addr, &[&python, "-c", DATA_STORE_APP]);
    let _api = meshed(&server, "api", "8080", &identity_addr, &[&python, "-c", API_APP, DATA_STORE_URL]);
    let api_ip = ready_pod_ip(&server, "api");
    ready_pod_ip(&server, "data-store");

    // `tessera check` reads the same bundle.
    let check = tessera(&["check", "--trust-anchors-configmap", BUNDLE_REF, "--kubeconfig"])
        .arg(&server.kubeconfig)
        .arg("--issuer-dir")
        .arg(&old)
        .args(["--identity-addr", &identity_addr])
        .output()
        .expect("tessera check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}{}", String::from_utf8_lossy(&check.stderr));
    assert!(report.contains("✔ trust anchors are readable and well-formed"), "{report}");

    // Each pod shows what its proxy trusts and who issued its leaf.
    let mut proxies = Vec::new();
    for ns in ["api", "data-store"] {
        let (anchors, issuer, proxy) = server.eventually(15, &format!("{ns}'s trust annotations"), || {
            let state = trust_state(&server, ns);
            (state.0.is_some() && state.1.is_some()).then_some(state)
        });
        assert_eq!(anchors.as_deref(), Some(old_fp.as_str()));
        assert_eq!(issuer.as_deref(), Some(old_issuer_fp.as_str()));
        proxies.push(proxy);
    }
    let seen = server.eventually(20, "a request through the mesh", || request_through_the_mesh(&api_ip, "before"));
    assert_eq!(seen, API_ID);
    let (code, metrics) = curl(&format!("http://{api_ip}:4191/metrics"));
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("identity_trust_anchor_info{{fingerprint=\"{old_fp}\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("identity_cert_issuer_info{{fingerprint=\"{old_issuer_fp}\"}} 1")), "{metrics}");
    let (code, trust) = curl(&format!("http://{api_ip}:4191/trust"));
    assert_eq!(code, 200);
    let trust = json(&trust);
    assert_eq!(trust["anchors"], json!([old_fp]));
    assert_eq!(trust["leaf"]["identity"], API_ID);
    assert_eq!(trust["leaf"]["issuer"], old_issuer_fp.as_str());

    // A second anchor enters the bundle: both proxies trust both, without a restart.
    let new = server.path("new");
    bootstrap(&new, &[]);
    let new_fp = fingerprint(&new.join("ca.crt"));
    let new_anchor = std::fs::read_to_string(new.join("ca.crt")).expect("ca.crt");
    set_bundle(&server, &format!("{old_anchor}{new_anchor}"));
    let mut both = [old_fp.clone(), new_fp.clone()];
    both.sort();
    let both = both.join(",");
    for (ns, proxy) in ["api", "data-store"].into_iter().zip(&proxies) {
        let state = server.eventually(10, &format!("{ns} trusting both anchors"), || {
            let state = trust_state(&server, ns);
            (state.0.as_deref() == Some(both.as_str())).then_some(state)
        });
        assert_eq!(&state.2, proxy, "{ns}'s proxy was not restarted");
    }

    // A new issuer signed by the new anchor, installed and announced: every
    // proxy renews from it at once (its leaves last 24 h), traffic flows.
    let issuer = server.path("issuer-2");
    bootstrap(&issuer, &["--anchor-dir", &new.display().to_string()]);
    let new_issuer_fp = fingerprint(&issuer.join("crt.pem"));
    for file in ["key.pem", "crt.pem"] {
        let staged = old.join(format!(".{file}.new"));
        std::fs::copy(issuer.join(file), &staged).expect("stage the issuer");
        std::fs::rename(&staged, old.join(file)).expect("install the issuer");
    }
    server.kubectl_ok(&["annotate", "configmap", BUNDLE, "-n", "linkerd", &format!("tessera.io/issuer-fingerprint={new_issuer_fp}")]);
    for (ns, proxy) in ["api", "data-store"].into_iter().zip(&proxies) {
        let state = server.eventually(20, &format!("{ns}'s leaf from the new issuer"), || {
            assert_eq!(request_through_the_mesh(&api_ip, "during").as_deref(), Some(API_ID), "meshed traffic keeps working");
            let state = trust_state(&server, ns);
            (state.1.as_deref() == Some(new_issuer_fp.as_str())).then_some(state)
        });
        assert_eq!(&state.2, proxy, "{ns}'s proxy was not restarted");
    }
    assert_eq!(request_through_the_mesh(&api_ip, "after").as_deref(), Some(API_ID));
    let (_, metrics) = curl(&format!("http://{api_ip}:4191/metrics"));
    assert!(metrics.contains(&format!("identity_cert_issuer_info{{fingerprint=\"{new_issuer_fp}\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("identity_trust_anchor_info{{fingerprint=\"{new_fp}\"}} 1")), "{metrics}");
}
