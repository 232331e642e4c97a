//! `tessera identity rotate` against a real server, with the proxies' reports
//! (the Pod annotations `tessera.io/trust-anchors` / `tessera.io/leaf-issuer`
//! that agents write) set by hand, so every step's wait is driven and seen:
//! `--status` before anything, `--dry-run` changing nothing, a step-2 timeout
//! naming the lagging proxy, a run killed in step 4 that `--status` shows and
//! a rerun finishes, then an `--issuer-only` rotation into a Secret.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use support::mesh::{Proc, bootstrap, tessera};
use support::{Server, json};

const POD: &str = "web";
const NS: &str = "app";

fn rotate(server: &Server, pki: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = tessera(&["identity", "rotate", "--kubeconfig"]);
    command.arg(&server.kubeconfig).arg("--anchor-dir").arg(pki).args(["--poll-interval", "100ms"]).args(extra).env("TESSERA_LOG", "warn");
    command
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn status(server: &Server) -> String {
    let out = tessera(&["identity", "rotate", "--status", "--kubeconfig"]).arg(&server.kubeconfig).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
}

/// The rotation state JSON from its ConfigMap, if any.
fn state(server: &Server) -> Option<serde_json::Value> {
    let out = server.kubectl(&["get", "configmap", "tessera-identity-rotation", "-n", "linkerd", "-o", "jsonpath={.data.state}"]);
    out.status.success().then(|| json(&String::from_utf8_lossy(&out.stdout)))
}

fn bundle(server: &Server) -> String {
    server.kubectl_ok(&["get", "configmap", "tessera-identity-trust-roots", "-n", "linkerd", "-o", r"jsonpath={.data.ca-bundle\.crt}"])
}

fn certs_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// What the agent would write for the pod's proxy.
fn report(server: &Server, anchors: &[&str], issuer: Option<&str>) {
    let mut sorted = anchors.to_vec();
    sorted.sort();
    let mut args = vec!["annotate".to_owned(), "pod".into(), POD.into(), "-n".into(), NS.into(), "--overwrite".into()];
    args.push(format!("tessera.io/trust-anchors={}", sorted.join(",")));
    if let Some(issuer) = issuer {
        args.push(format!("tessera.io/leaf-issuer={issuer}"));
    }
    server.kubectl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn rotation_dir(pki: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(pki)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("rotation-"))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn wait_exit(server: &Server, child: &mut Child, what: &str) -> std::process::ExitStatus {
    server.eventually(30, what, || child.try_wait().unwrap())
}

#[test]
fn rotation_steps_timeouts_interruption_and_issuer_only() {
    let server = Server::start();
    let pki = server.path("trust");
    bootstrap(&pki, &[]);
    let old_issuer_pem = std::fs::read_to_string(pki.join("crt.pem")).unwrap();
    let _ = server.kubectl(&["create", "namespace", "linkerd"]);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        &format!("--from-file=ca-bundle.crt={}", pki.join("ca.crt").display()),
    ]);
    server.kubectl_ok(&["create", "namespace", NS]);
    server.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{POD}","namespace":"{NS}","annotations":{{"linkerd.io/inject":"enabled"}}}},
               "spec":{{"containers":[{{"name":"app","image":"app"}}]}}}}"#
        ),
    );
    server.kubectl_ok(&["patch", "pod", POD, "-n", NS, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#]);
    // A pod that is not meshed is not waited for.
    server.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"plain","namespace":"{NS}"}},"spec":{{"containers":[{{"name":"app","image":"app"}}]}}}}"#),
    );

    assert_eq!(status(&server), "no rotation has been started\n");

    // --dry-run: the plan, and nothing written.
    let out = rotate(&server, &pki, &["--issuer-dir", pki.to_str().unwrap(), "--dry-run"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("dry run: nothing will be changed\ntrust bundle: 1 anchor(s): sha256:"), "{stdout}");
    assert!(stdout.contains("\nmeshed proxies: 1\n"), "{stdout}");
    assert!(
        stdout.contains("  step 1/6: create a new trust anchor") && stdout.contains("  step 6/6: wait until no meshed proxy"),
        "{stdout}"
    );
    assert!(state(&server).is_none());
    assert_eq!(certs_in(&bundle(&server)), 1);
    assert!(std::fs::read_dir(&pki).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("rotation-")));

    // Step 2 times out: the proxy has not reported trusting the new anchor.
    let out = rotate(&server, &pki, &["--issuer-dir", pki.to_str().unwrap(), "--step-timeout", "2s"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("step 1/6 done: new anchor sha256:"), "{stdout}");
    assert!(
        stderr.contains("step 2/6 did not finish within 2s; the rotation stopped there (rerun to resume). 1 proxies holding it up:\n  app/web: has not reported its trust anchors"),
        "{stderr}"
    );
    assert_eq!(certs_in(&bundle(&server)), 2, "old and new anchors");
    let st = state(&server).unwrap();
    assert_eq!(st["step"], "wait-bundle-trusted");
    let old_anchor = st["oldAnchors"][0].as_str().unwrap().to_owned();
    let new_anchor = st["signingAnchor"].as_str().unwrap().to_owned();
    let shown = status(&server);
    assert!(shown.contains("in progress at step 2/6") && shown.contains("proxies done: 0/1\n  app/web: has not reported"), "{shown}");
    assert_eq!(std::fs::read_to_string(pki.join("crt.pem")).unwrap(), old_issuer_pem, "no new issuer before step 3");

    // The proxy trusts both; a rerun goes on, installs the issuer, and is killed in step 4.
    report(&server, &[&old_anchor, &new_anchor], None);
    let mut run = Proc(rotate(&server, &pki, &["--issuer-dir", pki.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap());
    let new_issuer = server.eventually(30, "step 4", || {
        let st = state(&server)?;
        (st["step"] == "wait-new-leaves").then(|| st["newIssuer"].as_str().map(str::to_owned)).flatten()
    });
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let shown = status(&server);
    assert!(shown.contains("in progress at step 4/6: wait until every meshed proxy holds a leaf from the new issuer"), "{shown}");
    assert!(shown.contains(&format!("new issuer: {new_issuer}")), "{shown}");
    let dir = rotation_dir(&pki);
    assert_eq!(std::fs::read_to_string(pki.join("crt.pem")).unwrap(), std::fs::read_to_string(dir.join("issuer/crt.pem")).unwrap());
    let announced = server.kubectl_ok(&[
        "get",
        "configmap",
        "tessera-identity-trust-roots",
        "-n",
        "linkerd",
        "-o",
        r"jsonpath={.metadata.annotations.tessera\.io/issuer-fingerprint}",
    ]);
    assert_eq!(announced, new_issuer);

    // Resume: the leaf renews, the old anchor goes, the proxy drops it.
    let mut run = rotate(&server, &pki, &["--issuer-dir", pki.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    report(&server, &[&old_anchor, &new_anchor], Some(&new_issuer));
    server.eventually(30, "old anchor removed", || (certs_in(&bundle(&server)) == 1).then_some(()));
    assert_eq!(state(&server).unwrap()["step"], "wait-old-dropped");
    report(&server, &[&new_anchor], Some(&new_issuer));
    assert!(wait_exit(&server, &mut run, "rotate exits").success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut run.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(stdout.starts_with("resuming rotation ") && stdout.contains(" at step 4/6"), "{stdout}");
    assert!(stdout.trim_end().ends_with("complete"), "{stdout}");
    assert_eq!(bundle(&server), std::fs::read_to_string(dir.join("ca.crt")).unwrap());
    assert!(status(&server).contains("full rotation ") && status(&server).contains(" complete (started "));

    // --issuer-only into a Secret: signed by the new anchor (found under --anchor-dir).
    let mut run = rotate(&server, &pki, &["--issuer-secret", "linkerd/linkerd-identity-issuer", "--issuer-only"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let second = server.eventually(30, "issuer-only step 4", || {
        let st = state(&server)?;
        (st["mode"] == "issuer-only" && st["step"] == "wait-new-leaves").then(|| st["newIssuer"].as_str().map(str::to_owned)).flatten()
    });
    assert_ne!(second, new_issuer);
    assert_eq!(state(&server).unwrap()["signingAnchor"], new_anchor.as_str());
    report(&server, &[&new_anchor], Some(&second));
    assert!(wait_exit(&server, &mut run, "issuer-only exits").success());
    let secret = json(&server.kubectl_ok(&["get", "secret", "linkerd-identity-issuer", "-n", "linkerd", "-o", "json"]));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(secret["data"]["tls.crt"].is_string() && secret["data"]["tls.key"].is_string());
    assert_eq!(certs_in(&bundle(&server)), 1);
}
