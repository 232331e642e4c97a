//! Issue 19, finding 3 and the agent items of finding 6, written as the
//! attacks: a workload asking for the agent's credential, projected paths that
//! collide with the ServiceAccount files or each other or climb out with `..`,
//! symbolic links planted in the agent's root, and a root others control.

#![cfg(unix)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::Server;

/// Namespace `web` with ServiceAccount `web`, where nodes may run pods, and
/// node `node-1` joined (its credentials in [`cert_dir`]).
fn setup(server: &Server) {
    server.kubectl_ok(&["create", "ns", "web"]);
    server.kubectl_ok(&["create", "sa", "web", "-n", "web"]);
    server.kubectl_ok(&["create", "rolebinding", "nodes-run-pods", "-n", "web", "--clusterrole=tessera:node-pod-runner", "--group=system:nodes"]);
    let token = server.kubectl_ok(&["create", "token", "node-bootstrapper", "-n", "kube-system", "--duration", "10m"]);
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(cert_dir(server))
        .args(["join", "--node", "node-1", "--server", &server.url, "--certificate-authority"])
        .arg(server.ca_file())
        .env("TESSERA_BOOTSTRAP_TOKEN", token.trim())
        .output()
        .expect("run tessera agent join");
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
}

/// The credentials of node `node-1`.
fn cert_dir(server: &Server) -> PathBuf {
    server.path("node-1")
}

/// `tessera agent --cert-dir NODE ARGS…` with only PATH from the test's environment.
fn agent(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TESSERA_LOG", "error")
        .args(["agent", "--cert-dir"])
        .arg(cert_dir(server))
        .args(args)
        .output()
        .expect("run tessera agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An agent environment the way an admin's shell has it: KUBECONFIG and
/// `~/.kube/config` both hold cluster-admin, plus an unrelated cloud secret.
/// The agent runs as its node; none of the shell's credentials reach the workload.
struct AdminShell {
    home: tempfile::TempDir,
    kubeconfig: String,
    cert_dir: PathBuf,
}

impl AdminShell {
    fn new(server: &Server) -> Self {
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join(".kube")).expect(".kube");
        std::fs::copy(&server.kubeconfig, home.path().join(".kube/config")).expect("copy kubeconfig");
        Self { home, kubeconfig: server.kubeconfig.display().to_string(), cert_dir: cert_dir(server) }
    }

    /// `tessera agent ARGS…` in this shell, as node `node-1`.
    fn agent(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("TESSERA_AGENT_NODE", "node-1")
            .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-do-not-leak")
            .env("LANG", "C.UTF-8")
            .env("TESSERA_LOG", "error")
            .args(["agent", "--cert-dir"])
            .arg(&self.cert_dir)
            .args(args)
            .output()
            .expect("run tessera agent")
    }
}

#[test]
fn the_workload_gets_a_containers_environment_not_the_agents() {
    let server = Server::start();
    setup(&server);
    let shell = AdminShell::new(&server);
    let out = shell.agent(&["run", "--sa", "web", "-n", "web", "--name", "web-env", "--env", "GREETING=hello world", "--", "env"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env: BTreeMap<String, String> =
        text(&out.stdout).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "GREETING",
            "HOME",
            "LANG",
            "PATH",
            "TESSERA_API_SERVER",
            "TESSERA_NAMESPACE",
            "TESSERA_POD_NAME",
            "TESSERA_SA_DIR",
            "TESSERA_TOKEN_DIR"
        ]
    );
    // Nothing points back at the agent's credential or home.
    let all = text(&out.stdout);
    assert!(!all.contains(&shell.kubeconfig) && !all.contains(&shell.home.path().display().to_string()), "{all}");
    assert!(!all.contains(&shell.cert_dir.display().to_string()), "the node credential leaked: {all}");
    assert!(!all.contains("do-not-leak"));
    assert_eq!(env["GREETING"], "hello world");
    assert_eq!(env["PATH"], std::env::var("PATH").unwrap_or_default());
    assert_eq!((env["TESSERA_NAMESPACE"].as_str(), env["TESSERA_POD_NAME"].as_str()), ("web", "web-env"));
    assert_eq!(env["TESSERA_API_SERVER"], server.url);
    // The projected files live below the pod's root, which is the workload's HOME.
    let home = Path::new(&env["HOME"]);
    assert_eq!(Path::new(&env["TESSERA_TOKEN_DIR"]), home.join("var/run/secrets/tokens"));
    assert_eq!(Path::new(&env["TESSERA_SA_DIR"]), home.join("var/run/secrets/kubernetes.io/serviceaccount"));
}

#[test]
fn kubectl_in_the_workload_is_not_the_agents_admin() {
    let server = Server::start();
    setup(&server);
    let shell = AdminShell::new(&server);

    // The attack of the review: the workload runs kubectl and hopes for the agent's identity.
    let out = shell.agent(&["run", "--sa", "web", "-n", "web", "--name", "web-whoami", "--", "kubectl", "auth", "whoami"]);
    assert!(!out.status.success(), "kubectl found a credential: {}", text(&out.stdout));
    assert!(!text(&out.stdout).contains("admin"), "{}", text(&out.stdout));
    // kubectl found no kubeconfig at all, so it fell back to its built-in default server.
    assert!(text(&out.stderr).contains("localhost:8080"), "{}", text(&out.stderr));

    // The workload's own identity is its ServiceAccount, through its projected token.
    let script = "kubectl --server \"$TESSERA_API_SERVER\" --certificate-authority \"$TESSERA_SA_DIR/ca.crt\" \
                  --token \"$(cat \"$TESSERA_SA_DIR/token\")\" auth whoami -o jsonpath='{.status.userInfo.username}'";
    let out = shell.agent(&["run", "--sa", "web", "-n", "web", "--name", "web-own", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "system:serviceaccount:web:web");

    // Control: handed the kubeconfig explicitly, the same command is admin, so
    // the first assertion would have caught a leak.
    let explicit = format!("KUBECONFIG={}", shell.kubeconfig);
    let out = shell.agent(&["run", "--sa", "web", "-n", "web", "--name", "web-explicit", "--env", &explicit, "--", "kubectl", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "admin");
}

#[test]
fn colliding_duplicate_and_climbing_token_paths_are_refused_before_anything_is_registered() {
    let server = Server::start();
    setup(&server);
    let refused = |tokens: &[&str], expected: &str| {
        let mut args = vec!["run", "--sa", "web", "-n", "web", "--name", "web-0"];
        for token in tokens {
            args.extend(["--token", token]);
        }
        args.extend(["--", "true"]);
        let out = agent(&server, &args);
        assert_eq!(out.status.code(), Some(1), "{tokens:?} was accepted");
        assert_eq!(text(&out.stderr), format!("error: invalid pod web/web-0: {expected}\n"), "{tokens:?}");
    };
    let reserved = "must not be or be below \"token\", \"ca.crt\" or \"namespace\": those are the ServiceAccount volume's files";
    for name in ["token", "ca.crt", "namespace"] {
        refused(&[&format!("audience=evil,path={name}")], &format!("tokens[0].path: Invalid value: {name:?}: {reserved}"));
    }
    refused(
        &["audience=a,path=api-token", "audience=b,path=api-token"],
        r#"tokens[1].path: Invalid value: "api-token": conflicting duplicate paths"#,
    );
    refused(&["audience=a,path=../../../etc/cron.d/x"], r#"tokens[0].path: Invalid value: "../../../etc/cron.d/x": must not contain '..'"#);
    refused(&["audience=a,path=/etc/passwd"], r#"tokens[0].path: Invalid value: "/etc/passwd": must be a relative path"#);

    // The same checks for pod spec files (the per-pod layout, where a collision
    // with `token` would overwrite the ServiceAccount token).
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "namespace: web\nname: web-1\nserviceAccountName: web\ntokens:\n- audience: evil\n  path: token\n").expect("pod file");
    let out = agent(&server, &["--root", &dir.path().join("root").display().to_string(), "--pod", &pod.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("error: {}: invalid pod web/web-1: tokens[0].path: Invalid value: \"token\": {reserved}\n", pod.display()));

    // Nothing was registered.
    assert_eq!(server.kubectl_ok(&["get", "pods", "-n", "web", "-o", "name"]), "");
}

#[test]
fn symlinks_planted_in_the_root_are_not_followed() {
    let server = Server::start();
    setup(&server);

    // A link where a directory of the layout goes: refused, nothing written through it.
    let root = tempfile::tempdir().expect("root");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    std::fs::create_dir_all(root.path().join("var/run/secrets")).expect("mkdir");
    std::os::unix::fs::symlink(elsewhere.path(), root.path().join("var/run/secrets/tokens")).expect("plant link");
    let out = agent(&server, &["run", "--sa", "web", "-n", "web", "--name", "web-0", "--root", &root.path().display().to_string(), "--token", "audience=data-store,path=api-token", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: {}/var/run/secrets/tokens is a symbolic link: the agent does not follow links below its root\n", root.path().display())
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).expect("elsewhere").count(), 0, "a token was written through the link");
    // The pod it registered was deleted again.
    assert_eq!(server.kubectl_ok(&["get", "pods", "-n", "web", "-o", "name"]), "");

    // A link where the token file goes: replaced by the token, its target untouched.
    let root = tempfile::tempdir().expect("root");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let sa_dir = root.path().join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa_dir).expect("mkdir");
    let victim = elsewhere.path().join("authorized_keys");
    std::fs::write(&victim, "ssh-ed25519 AAAA precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, sa_dir.join("token")).expect("plant link");
    let out = agent(&server, &["run", "--sa", "web", "-n", "web", "--name", "web-1", "--root", &root.path().display().to_string(), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "ssh-ed25519 AAAA precious\n");
    let token = sa_dir.join("token");
    assert!(std::fs::symlink_metadata(&token).expect("token").file_type().is_file());
    assert_eq!(std::fs::read_to_string(&token).expect("token").split('.').count(), 3, "a JWT");
}

#[test]
fn a_root_others_can_write_or_another_user_owns_is_refused() {
    let server = Server::start();
    setup(&server);
    let root = tempfile::tempdir().expect("root");
    let run = |root: &Path| agent(&server, &["run", "--sa", "web", "-n", "web", "--name", "web-0", "--root", &root.display().to_string(), "--", "true"]);

    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = run(root.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: agent root {0} has mode 0777: group or others can write into it (run `chmod go-w {0}`)\n", root.path().display())
    );

    // A symbolic link as the root: whoever controls the link picks where tokens go.
    let link = tempfile::tempdir().expect("link dir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(root.path(), link.path().join("root")).expect("link");
    let out = run(&link.path().join("root"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("error: agent root {}/root is a symbolic link: pass the directory itself\n", link.path().display()));

    let uid = text(&Command::new("id").arg("-u").output().expect("id").stdout).trim().to_owned();
    if uid == "0" {
        std::os::unix::fs::chown(root.path(), Some(65534), None).expect("chown");
        let out = run(root.path());
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: agent root {} is owned by uid 65534, not by the agent's uid 0: its owner could replace the files the agent writes\n",
                root.path().display()
            )
        );
    } else {
        eprintln!("skipped the other-owner case: only root can give a directory to another user");
    }
    assert!(std::fs::read_dir(root.path()).expect("root").next().is_none(), "nothing was written into a refused root");
    assert_eq!(server.kubectl_ok(&["get", "pods", "-n", "web", "-o", "name"]), "");
}
