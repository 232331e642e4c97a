//! Issue 17's `tessera check --proxy` must-show with real processes: three
//! pods under `tessera agent run --mesh`, `tessera identity` issuing 10 s
//! leaves. On the healthy mesh the data-plane checks pass. A proxy started
//! with the anchors as a file (`pinned`) does not follow the bundle
//! ConfigMap: once a second anchor enters the bundle, the check fails naming
//! it. A pod whose ServiceAccount is deleted (`stuck`) cannot renew: once its
//! leaf expires, the check fails naming it too.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::mesh::{DATA_STORE_APP, Proc, bootstrap, curl, python, ready_ip_of, tessera};
use support::{Server, json};

const BUNDLE: &str = "linkerd/tessera-identity-trust-roots";

/// `sha256:` + lowercase hex of the DER of the certificate in `pem`.
fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().rsplit_once('=').map(|(_, h)| h.replace(':', "").to_ascii_lowercase()).expect("a fingerprint");
    format!("sha256:{hex}")
}

/// Namespace `ns` with its ServiceAccount and node `node-NS` allowed to run its pods.
fn namespace(server: &Server, ns: &str) {
    server.kubectl_ok(&["create", "ns", ns]);
    server.kubectl_ok(&["create", "sa", ns, "-n", ns]);
    let node = format!("--user=system:node:node-{ns}");
    server.kubectl_ok(&["create", "rolebinding", "node-runs-pods", "-n", ns, "--clusterrole=tessera:node-pod-runner", &node]);
}

/// `ns/ns-0` under `tessera agent run --mesh` with the agent's trust flags `trust`.
fn meshed(server: &Server, ns: &str, port: &str, identity_addr: &str, trust: &[&str]) -> Proc {
    let python = python();
    support::mesh::meshed_trusting(server, &format!("{ns}-0"), ns, &["--port", port], identity_addr, trust, &[&python, "-c", DATA_STORE_APP])
}

fn check(server: &Server, pki: &Path, identity_addr: &str, extra: &[&str]) -> Output {
    tessera(&["check", "--proxy", "--trust-anchors-configmap", BUNDLE, "--identity-addr", identity_addr, "--kubeconfig"])
        .arg(&server.kubeconfig)
        .arg("--issuer-dir")
        .arg(pki)
        .args(extra)
        .output()
        .expect("tessera check --proxy")
}

/// The report's data-plane part (from its first category to the end).
fn data_plane(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("tessera-data-plane\n").unwrap_or_else(|| panic!("no data-plane checks: {text}{}", String::from_utf8_lossy(&out.stderr)));
    text[start..].to_owned()
}

fn trust(ip: &str) -> serde_json::Value {
    let (code, body) = curl(&format!("http://{ip}:4191/trust"));
    assert_eq!(code, 200, "{body}");
    json(&body)
}

#[test]
fn check_proxy_passes_on_a_healthy_mesh_and_names_stale_bundles_and_expired_leaves() {
    let server = Server::start();
    server.kubectl_ok(&["create", "ns", "linkerd"]);
    let pki = server.path("trust");
    bootstrap(&pki, &[]);
    let old_anchor = pki.join("ca.crt");
    server.kubectl_ok(&[
        "create",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        &format!("--from-file=ca-bundle.crt={}", old_anchor.display()),
    ]);
    let issuer_dir = pki.display().to_string();
    let (_identity, identity_addr) = support::mesh::identity_trusting(
        &server,
        &["--trust-anchors-configmap", BUNDLE],
        &["--issuer-dir", &issuer_dir, "--issuance-lifetime", "10s", "--clock-skew-allowance", "1s"],
    );
    for ns in ["web", "stuck", "pinned"] {
        namespace(&server, ns);
    }
    let follows = ["--identity-trust-anchors-configmap", BUNDLE];
    let web = meshed(&server, "web", "8081", &identity_addr, &follows);
    let _stuck = meshed(&server, "stuck", "8082", &identity_addr, &follows);
    // The same anchor, but as a file: this proxy never sees a bundle change.
    let old_anchor_file = old_anchor.display().to_string();
    let _pinned = meshed(&server, "pinned", "8083", &identity_addr, &["--identity-trust-anchors", &old_anchor_file]);
    let ips: Vec<String> = ["web", "stuck", "pinned"].iter().map(|ns| ready_ip_of(&server, ns, &format!("{ns}-0"))).collect();

    // Healthy: every proxy trusts the bundle and holds a leaf of the current issuer.
    let out = check(&server, &pki, &identity_addr, &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        data_plane(&out),
        "tessera-data-plane\n\
         ------------------\n\
         ✔ data plane proxies are reachable\n\
         \n\
         tessera-identity-data-plane\n\
         ---------------------------\n\
         ✔ data plane proxies certificate match CA\n\
         ✔ data plane proxies certificates are within their validity period\n\
         ✔ data plane proxies certificates are issued by the current issuer\n\
         ✔ no trust rotation is in progress\n\
         \n\
         Status check results are ✔\n"
    );

    // A second anchor enters the bundle: the proxies watching it trust both,
    // the one reading a file does not.
    let new = server.path("new");
    bootstrap(&new, &[]);
    let new_fp = fingerprint(&new.join("ca.crt"));
    let both = format!("{}{}", std::fs::read_to_string(&old_anchor).expect("old"), std::fs::read_to_string(new.join("ca.crt")).expect("new"));
    let configmap = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tessera-identity-trust-roots", "namespace": "linkerd"}, "data": {"ca-bundle.crt": both}});
    let applied = server.kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &configmap.to_string());
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    for ip in &ips[..2] {
        server.eventually(10, &format!("{ip} trusting both anchors"), || (trust(ip)["anchors"].as_array()?.len() == 2).then_some(()));
    }
    let out = check(&server, &pki, &identity_addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        data_plane(&out),
        format!(
            "tessera-data-plane\n\
             ------------------\n\
             ✔ data plane proxies are reachable\n\
             \n\
             tessera-identity-data-plane\n\
             ---------------------------\n\
             × data plane proxies certificate match CA\n    \
             Some pods do not trust the current trust bundle:\n        \
             * pinned/pinned-0: does not trust {new_fp}\n    \
             see https://linkerd.io/2/checks/#l5d-identity-data-plane-proxies-certs-match-ca for hints\n\
             ✔ data plane proxies certificates are within their validity period\n\
             ✔ data plane proxies certificates are issued by the current issuer\n\
         ✔ no trust rotation is in progress\n\
             \n\
             Status check results are ×\n"
        )
    );

    // stuck's ServiceAccount goes: its Certify calls are refused, its 10 s leaf expires.
    server.kubectl_ok(&["delete", "sa", "stuck", "-n", "stuck"]);
    server.eventually(25, "stuck's leaf expired", || trust(&ips[1])["leaf"].is_null().then_some(()));
    let out = check(&server, &pki, &identity_addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        data_plane(&out),
        format!(
            "tessera-data-plane\n\
             ------------------\n\
             ✔ data plane proxies are reachable\n\
             \n\
             tessera-identity-data-plane\n\
             ---------------------------\n\
             × data plane proxies certificate match CA\n    \
             Some pods do not trust the current trust bundle:\n        \
             * pinned/pinned-0: does not trust {new_fp}\n    \
             see https://linkerd.io/2/checks/#l5d-identity-data-plane-proxies-certs-match-ca for hints\n\
             × data plane proxies certificates are within their validity period\n    \
             Some proxies hold no valid leaf certificate and refuse mTLS:\n        \
             * stuck/stuck-0: no leaf certificate (expired without renewal, or never issued)\n    \
             see https://linkerd.io/2/checks/#l5d-identity-data-plane for hints\n\
             ✔ data plane proxies certificates are issued by the current issuer\n\
         ✔ no trust rotation is in progress\n\
             \n\
             Status check results are ×\n"
        )
    );

    // The same verdict as JSON, in `linkerd check -o json`'s shape.
    let out = check(&server, &pki, &identity_addr, &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["success"], false);
    let categories = report["categories"].as_array().expect("categories");
    let identity_plane = categories.iter().find(|c| c["categoryName"] == "tessera-identity-data-plane").expect("the category");
    assert_eq!(identity_plane["checks"][1]["description"], "data plane proxies certificates are within their validity period");
    assert_eq!(identity_plane["checks"][1]["result"], "error");
    assert!(identity_plane["checks"][1]["error"].as_str().expect("error").contains("* stuck/stuck-0: no leaf certificate"));

    // web's proxy stops answering (SIGSTOP): the check names it as unreachable.
    let proxy = proxy_pid(web.0.id());
    let _resume = Resume(proxy);
    signal("-STOP", proxy);
    let out = check(&server, &pki, &identity_addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let text = data_plane(&out);
    let expected = "tessera-data-plane\n\
                    ------------------\n\
                    × data plane proxies are reachable\n    \
                    Some proxies cannot be reached:\n        \
                    * web/web-0: GET /api/v1/namespaces/web/pods/web-0:4191/proxy/trust: no answer within 4s\n    \
                    see https://linkerd.io/2/checks/#l5d-data-plane-ready for hints\n\
                    \n\
                    tessera-identity-data-plane\n";
    assert!(text.starts_with(expected), "{text}");
    assert!(text.ends_with("Status check results are ×\n"), "{text}");
}

/// The agent's proxy child (`tessera-proxy`, built beside `tessera`).
fn proxy_pid(agent: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{agent}/task/{agent}/children")).expect("the agent's children");
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).next().is_some_and(|program| program.ends_with(b"/tessera-proxy"))
        })
        .expect("the agent runs a proxy")
}

fn signal(which: &str, pid: u32) {
    assert!(Command::new("kill").args([which, &pid.to_string()]).status().expect("kill").success());
}

/// Continues a stopped proxy on drop, so its agent can stop it.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}
