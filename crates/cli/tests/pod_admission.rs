//! Issue 13, ServiceAccount admission and pods under the agent, end to end
//! with the real kubectl: seed 000's pod comes back with the projected
//! `kube-api-access-xxxxx` volume exactly as the seed shows it; a pod naming
//! a missing ServiceAccount is refused with kube's message; the agent writes
//! `token`, `ca.crt` and `namespace` (and every other projected token, with
//! its audience and expiry) at the paths the admitted Pod names; and
//! `kubectl get pods -o wide` shows the agent's pods as kubelet's: `1/1`,
//! `Running`, the IP and the node, then the container's exit.

#![cfg(unix)]

mod support;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Server, json};

/// The seed's pod, as a user writes it: no ServiceAccount, no volumes; an
/// init container and two containers, one of which mounts something of its own.
const SEED_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  initContainers:
  - name: init
    image: busybox
  containers:
  - name: web
    image: nginx
  - name: proxy
    image: ghcr.io/linkerd/proxy
    volumeMounts:
    - name: scratch
      mountPath: /scratch
  volumes:
  - name: scratch
    emptyDir: {}
";

/// The volume as `kubectl get pod -o yaml` prints it (seed 000), for volume `name`.
fn seed_volume(name: &str) -> String {
    format!(
        "  - name: {name}
    projected:
      defaultMode: 420
      sources:
      - serviceAccountToken:
          expirationSeconds: 3607
          path: token
      - configMap:
          items:
          - key: ca.crt
            path: ca.crt
          name: kube-root-ca.crt
      - downwardAPI:
          items:
          - fieldRef:
              apiVersion: v1
              fieldPath: metadata.namespace
            path: namespace
"
    )
}

#[test]
fn seed_000s_pod_comes_back_with_the_projected_service_account_volume() {
    let server = Server::start();
    let out = server.kubectl_stdin(&["apply", "-f", "-"], SEED_POD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod/web created\n");

    let pod = json(&server.kubectl_ok(&["get", "pod", "web", "-o", "json"]));
    let spec = &pod["spec"];
    assert_eq!((&spec["serviceAccountName"], &spec["serviceAccount"]), (&json!("default"), &json!("default")));
    let name = spec["volumes"][1]["name"].as_str().expect("an injected volume").to_owned();
    let suffix = name.strip_prefix("kube-api-access-").expect("kube's name");
    assert!(suffix.len() == 5 && suffix.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)), "{name}");
    let mount = json!({"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": name, "readOnly": true});
    assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
    assert_eq!(spec["containers"][0]["volumeMounts"], json!([mount]));
    assert_eq!(spec["containers"][1]["volumeMounts"], json!([{"mountPath": "/scratch", "name": "scratch"}, mount]));

    // Field for field as the seed shows it.
    let yaml = server.kubectl_ok(&["get", "pod", "web", "-o", "yaml"]);
    assert!(yaml.contains(&seed_volume(&name)), "{yaml}");
    let mount_yaml = format!("    - mountPath: /var/run/secrets/kubernetes.io/serviceaccount\n      name: {name}\n      readOnly: true\n");
    assert_eq!(yaml.matches(&mount_yaml).count(), 3, "{yaml}");

    // Applying the same file again changes nothing. The OpenAPI patch-merge
    // keys let kubectl's three-way merge leave the injected volume and mounts
    // alone; it still sends `$setElementOrder` directives for `volumes` and
    // `proxy`'s mounts (kube's `diffLists` emits them whenever the live
    // list's length differs from the file's, as the injected entries make
    // it), so kubectl says "configured" here against kube-apiserver too.
    // Nothing is written.
    let version = server.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let out = server.kubectl_stdin(&["apply", "-f", "-"], SEED_POD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod/web configured\n");
    assert_eq!(server.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.resourceVersion}"]), version);
    // A pod that declares no volumes or mounts re-applies as "unchanged".
    let plain = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\nspec:\n  containers:\n  - name: web\n    image: nginx\n";
    for expected in ["pod/plain created\n", "pod/plain unchanged\n"] {
        let out = server.kubectl_stdin(&["apply", "-f", "-"], plain);
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(server.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.spec.volumes[*].name}"]), format!("scratch {name}"));
    // And an update may not take it away.
    let err = server.kubectl_err(&["patch", "pod", "web", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/volumes/1"}]"#]);
    assert!(err.contains("pod updates may not change fields other than"), "{err}");

    // pods/status changes the status only, and the pod itself never its status.
    server.kubectl_ok(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", r#"{"spec":{"nodeName":"elsewhere"},"status":{"phase":"Running"}}"#]);
    server.kubectl_ok(&["patch", "pod", "web", "--type=merge", "-p", r#"{"metadata":{"labels":{"app":"web"}},"status":{"phase":"Failed"}}"#]);
    let pod = json(&server.kubectl_ok(&["get", "pod", "web", "-o", "json"]));
    assert_eq!((&pod["status"]["phase"], &pod["spec"]["nodeName"], &pod["metadata"]["labels"]["app"]), (&json!("Running"), &Value::Null, &json!("web")));

    // automountServiceAccountToken: false on the pod: nothing is injected.
    let quiet = SEED_POD.replace("name: web\nspec:\n", "name: quiet\nspec:\n  automountServiceAccountToken: false\n");
    server.kubectl_stdin(&["apply", "-f", "-"], &quiet);
    let pod = json(&server.kubectl_ok(&["get", "pod", "quiet", "-o", "json"]));
    assert_eq!(pod["spec"]["volumes"], json!([{"name": "scratch", "emptyDir": {}}]));
    assert!(pod["spec"]["containers"][0].get("volumeMounts").is_none(), "{pod}");
    assert!(pod["spec"]["initContainers"][0].get("volumeMounts").is_none(), "{pod}");

    // ... or on its ServiceAccount, unless the pod says otherwise (the pod wins).
    server.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: silent\nautomountServiceAccountToken: false\n");
    let silent = SEED_POD.replace("name: web\nspec:\n", "name: silent\nspec:\n  serviceAccountName: silent\n");
    server.kubectl_stdin(&["apply", "-f", "-"], &silent);
    let pod = json(&server.kubectl_ok(&["get", "pod", "silent", "-o", "json"]));
    assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(1), "{pod}");
    let loud = SEED_POD.replace("name: web\nspec:\n", "name: loud\nspec:\n  serviceAccountName: silent\n  automountServiceAccountToken: true\n");
    server.kubectl_stdin(&["apply", "-f", "-"], &loud);
    let pod = json(&server.kubectl_ok(&["get", "pod", "loud", "-o", "json"]));
    assert!(pod["spec"]["volumes"][1]["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-")), "{pod}");
}

#[test]
fn a_pod_naming_a_missing_service_account_is_refused_with_kubes_message() {
    let server = Server::start();
    let lost = SEED_POD.replace("name: web\nspec:\n", "name: lost\nspec:\n  serviceAccountName: ghost\n");
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &lost);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error from server (Forbidden): error when creating \"STDIN\": pods \"lost\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found\n"
    );
    assert_eq!(server.kubectl_ok(&["get", "pods", "-o", "name"]), "");

    // The Status itself, as kube-apiserver sends it.
    let body = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lost"},
        "spec": {"serviceAccountName": "ghost", "containers": [{"name": "a", "image": "nginx"}]}}))
    .expect("json");
    let (code, status) = server.curl_admin("POST", "/api/v1/namespaces/default/pods", &["-H", "Content-Type: application/json", "-d", &body]);
    assert_eq!(code, 403);
    assert_eq!(json(&status), json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods \"lost\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found",
        "reason": "Forbidden", "details": {"name": "lost", "kind": "pods"}, "code": 403}));
}

/// Namespace `web` with ServiceAccount `web`, where nodes may run pods, and
/// node `node-1` joined; returns its credentials directory.
fn setup(server: &Server) -> PathBuf {
    server.kubectl_ok(&["create", "ns", "web"]);
    server.kubectl_ok(&["create", "sa", "web", "-n", "web"]);
    server.kubectl_ok(&["create", "rolebinding", "nodes-run-pods", "-n", "web", "--clusterrole=tessera:node-pod-runner", "--group=system:nodes"]);
    let token = server.kubectl_ok(&["create", "token", "node-bootstrapper", "-n", "kube-system", "--duration", "10m"]);
    let dir = server.path("node-1");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(&dir)
        .args(["join", "--node", "node-1", "--server", &server.url, "--certificate-authority"])
        .arg(server.ca_file())
        .env("TESSERA_BOOTSTRAP_TOKEN", token.trim())
        .output()
        .expect("run tessera agent join");
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// A background `tessera agent`, killed on drop.
struct Agent(Child);

impl Agent {
    fn start(cert_dir: &Path, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TESSERA_LOG", "warn")
            .args(["agent", "--cert-dir"])
            .arg(cert_dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn tessera agent");
        Self(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The claims of a JWT.
fn claims(token: &str) -> Value {
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

fn lifetime(claims: &Value) -> i64 {
    claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat")
}

/// `kubectl get pods -n web -o wide` as rows of cells (header first).
fn wide(server: &Server) -> Vec<Vec<String>> {
    server.kubectl_ok(&["get", "pods", "-n", "web", "-o", "wide"]).lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

#[test]
fn the_agent_projects_what_the_admitted_pod_says_and_reports_it_running() {
    let server = Server::start();
    let cert_dir = setup(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("pod.yaml");
    std::fs::write(
        &spec,
        "apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: web
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
    volumeMounts:
    - name: identity
      mountPath: /var/run/linkerd/identity
  volumes:
  - name: identity
    projected:
      sources:
      - serviceAccountToken:
          audience: identity.l5d.io
          expirationSeconds: 86400
          path: token
      - serviceAccountToken:
          audience: data-store
          expirationSeconds: 600
          path: data-store/token
",
    )
    .expect("spec file");
    let root = dir.path().join("root");
    let _agent = Agent::start(&cert_dir, &["--root", &root.display().to_string(), "--pod", &spec.display().to_string()]);

    let pod_root = root.join("web/web-0");
    let sa_dir = pod_root.join("var/run/secrets/kubernetes.io/serviceaccount");
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    server.eventually(20, "the projected files", || read(&pod_root.join("var/run/linkerd/identity/data-store/token")).and(read(&sa_dir.join("token"))));

    // The ServiceAccount volume admission added: token (API audience, 3607 s), ca.crt, namespace.
    let pod = json(&server.kubectl_ok(&["get", "pod", "web-0", "-n", "web", "-o", "json"]));
    assert!(pod["spec"]["volumes"][1]["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-")), "{pod}");
    let default = claims(&read(&sa_dir.join("token")).expect("token"));
    assert_eq!(lifetime(&default), 3607);
    assert_eq!(default["sub"], "system:serviceaccount:web:web");
    assert_eq!(default["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"]);
    let ca = server.kubectl_ok(&["get", "configmap", "kube-root-ca.crt", "-n", "web", "-o", r"jsonpath={.data.ca\.crt}"]);
    assert_eq!(read(&sa_dir.join("ca.crt")).as_deref(), Some(ca.as_str()));
    assert_eq!(read(&sa_dir.join("namespace")).as_deref(), Some("web"));

    // Each token of the pod's own volume, with its audience and expiry, at its path.
    let identity = claims(&read(&pod_root.join("var/run/linkerd/identity/token")).expect("identity token"));
    assert_eq!((identity["aud"].clone(), lifetime(&identity)), (json!(["identity.l5d.io"]), 86400));
    let data_store = claims(&read(&pod_root.join("var/run/linkerd/identity/data-store/token")).expect("data-store token"));
    assert_eq!((data_store["aud"].clone(), lifetime(&data_store)), (json!(["data-store"]), 600));
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("file").permissions()) & 0o777;
    assert_eq!((mode(&sa_dir.join("token")), mode(&sa_dir.join("ca.crt")), mode(&sa_dir.join("namespace"))), (0o600, 0o644, 0o644));

    // Running, as kubelet reports it.
    let row = server.eventually(10, "the pod reported running", || wide(&server).into_iter().find(|r| r[0] == "web-0" && r[2] == "Running"));
    assert_eq!(row[1..4], ["1/1", "Running", "0"]);
    assert_eq!(row[5..], ["127.0.0.1", "node-1", "<none>", "<none>"]);
    let status = json(&server.kubectl_ok(&["get", "pod", "web-0", "-n", "web", "-o", "jsonpath={.status}"]));
    assert_eq!((&status["hostIP"], &status["podIPs"]), (&json!("127.0.0.1"), &json!([{"ip": "127.0.0.1"}])));
    assert!(status["startTime"].is_string());
    let conditions: Vec<(String, String)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| (c["type"].as_str().unwrap_or_default().to_owned(), c["status"].as_str().unwrap_or_default().to_owned()))
        .collect();
    for wanted in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(conditions.contains(&(wanted.to_owned(), "True".to_owned())), "{conditions:?}");
    }
    let container = &status["containerStatuses"][0];
    assert_eq!((&container["name"], &container["ready"], &container["started"], &container["restartCount"]), (&json!("web"), &json!(true), &json!(true), &json!(0)));
    assert_eq!(container["image"], "nginx");
    assert!(container["containerID"].as_str().is_some_and(|id| id.starts_with("tessera-agent://")), "{container}");
    assert!(container["state"]["running"]["startedAt"].is_string(), "{container}");
}

#[test]
fn an_agent_run_workload_is_running_then_its_exit_shows() {
    let server = Server::start();
    let cert_dir = setup(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let release = dir.path().join("release");
    // The workload runs until the test releases it, then fails with code 3.
    let script = format!("while [ ! -e {0} ]; do sleep 0.1; done; exit 3", release.display());
    let mut agent = Agent::start(&cert_dir, &["run", "--sa", "web", "-n", "web", "--name", "job", "--", "sh", "-c", &script]);

    let row = server.eventually(20, "the pod reported running", || wide(&server).into_iter().find(|r| r[0] == "job" && r[2] == "Running"));
    assert_eq!(row[1..4], ["1/1", "Running", "0"]);
    assert_eq!(row[5..7], ["127.0.0.1", "node-1"]);
    let container = json(&server.kubectl_ok(&["get", "pod", "job", "-n", "web", "-o", "jsonpath={.status.containerStatuses[0]}"]));
    assert_eq!(container["imageID"].as_str().map(|i| i.starts_with("file:///") && i.ends_with("/sh")), Some(true), "{container}");
    let pid = container["containerID"].as_str().and_then(|id| id.strip_prefix("tessera-agent://")).expect("containerID");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container id names the workload's process");

    // Watch the pod through its end: the agent reports the exit, then deletes the pod.
    let mut watch = Command::new("kubectl")
        .args(["get", "pod", "job", "-n", "web", "-w", "-o", "json"])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (mut stdout, seen) = (watch.stdout.take().expect("stdout"), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // The watch has printed the pod as it is now before the workload is released.
    server.eventually(10, "the watch to start", || (!seen.lock().expect("lock").is_empty()).then_some(()));
    std::fs::write(&release, "").expect("release the workload");
    assert_eq!(agent.0.wait().expect("agent exit").code(), Some(3), "the agent exits with the workload's code");
    let ended = server.eventually(10, "the exit in the watch", || {
        let text = seen.lock().expect("lock").clone();
        serde_json::Deserializer::from_str(&text).into_iter::<Value>().map_while(Result::ok).find(|p| p["status"]["phase"] == "Failed")
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let terminated = &ended["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((&terminated["exitCode"], &terminated["reason"]), (&json!(3), &json!("Error")), "{ended}");
    assert!(terminated["startedAt"].is_string() && terminated["finishedAt"].is_string(), "{ended}");
    assert_eq!(ended["status"]["containerStatuses"][0]["ready"], false);
    let ready = ended["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Ready").cloned().expect("Ready");
    assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("ContainersNotReady")));
    // Then the pod and its tokens are gone, as before.
    server.eventually(10, "the pod deleted", || server.kubectl_ok(&["get", "pods", "-n", "web", "-o", "name"]).is_empty().then_some(()));
}

/// Server-side apply creates objects through the same admitted path as a POST:
/// a pod it creates is refused for a missing ServiceAccount and otherwise gets
/// the projected token volume.
#[test]
fn a_pod_created_by_server_side_apply_is_admitted_like_a_post() {
    let server = Server::start();
    let lost = SEED_POD.replace("name: web\nspec:\n", "name: lost\nspec:\n  serviceAccountName: ghost\n");
    let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &lost);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("pods \"lost\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.kubectl_ok(&["get", "pods", "-o", "name"]), "");

    let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], SEED_POD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod = json(&server.kubectl_ok(&["get", "pod", "web", "-o", "json"]));
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    assert!(
        volumes.iter().any(|v| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-"))
            && v["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3607),
        "{volumes:?}"
    );
}
