//! Issue 19's findings 4 and 5 and the SIGKILL item of 6, run as the attacker
//! would: the real server, node credentials from the bootstrap flow, and
//! curl or kubectl. Each refusal asserts kube-apiserver's status and message
//! (the node authorizer's reason, NodeRestriction's words).

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::{Server, json};

const CSR_PATH: &str = "/tessera/v1/nodes/client-certificate";

/// A node's client certificate and key, as files for curl.
struct NodeCert {
    name: String,
    cert: PathBuf,
    key: PathBuf,
}

impl NodeCert {
    /// curl as this node.
    fn curl(&self, server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let (cert, key) = (self.cert.display().to_string(), self.key.display().to_string());
        // HTTP/1.1 for the reason given at `request_certificate`.
        let mut args = vec!["--http1.1", "--cert", &cert, "--key", &key, "-H", "Content-Type: application/json"];
        let text = body.map(Value::to_string);
        if let Some(text) = &text {
            args.extend(["-d", text]);
        }
        server.curl(method, path, &args)
    }
}

fn bootstrap_token(server: &Server) -> String {
    server.kubectl_ok(&["create", "token", "node-bootstrapper", "-n", "kube-system", "--duration", "10m"]).trim().to_owned()
}

fn csr(common_name: &str, organization: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    dn.push(rcgen::DnType::OrganizationName, organization);
    params.distinguished_name = dn;
    (params.serialize_request(&key).expect("csr").pem().expect("pem"), key.serialize_pem())
}

/// Posts a CSR with extra curl credentials; returns (status, body).
fn request_certificate(server: &Server, credentials: &[&str], csr_pem: &str) -> (u16, String) {
    let body = json!({"csr": csr_pem}).to_string();
    // HTTP/1.1: over HTTP/2, curl may report a refusal the server sends
    // before reading the body as a stream error (README, "not yet").
    let mut args = vec!["--http1.1"];
    args.extend_from_slice(credentials);
    args.extend(["-H", "Content-Type: application/json", "-d", &body]);
    server.curl("POST", CSR_PATH, &args)
}

/// Joins node `name` by hand: a CSR with the bootstrap token, as `tessera agent join` does.
fn join(server: &Server, token: &str, name: &str) -> NodeCert {
    let (csr_pem, key_pem) = csr(&format!("system:node:{name}"), "system:nodes");
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = request_certificate(server, &["-H", &auth], &csr_pem);
    assert_eq!(code, 201, "{body}");
    let answer = json(&body);
    assert_eq!(answer["nodeName"], name);
    let (cert, key) = (server.path(&format!("{name}.crt")), server.path(&format!("{name}.key")));
    std::fs::write(&cert, answer["certificate"].as_str().expect("certificate")).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    NodeCert { name: name.to_owned(), cert, key }
}

fn message(body: &str) -> String {
    json(body)["message"].as_str().unwrap_or_default().to_owned()
}

fn token_request(pod: Option<(&str, &str)>) -> Value {
    let mut spec = json!({"audiences": ["data-store"], "expirationSeconds": 600});
    if let Some((name, uid)) = pod {
        spec["boundObjectRef"] = json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid});
    }
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

/// Namespace `api` with ServiceAccounts `api` and `web`, Secrets `api-secret`
/// (mounted by the pod) and `other`, and pod `api-0` running as `api` on
/// node-a. Returns the pod's uid.
fn cluster_with_a_pod_on_node_a(server: &Server) -> String {
    server.kubectl_ok(&["create", "ns", "api"]);
    for sa in ["api", "web"] {
        server.kubectl_ok(&["create", "sa", sa, "-n", "api"]);
    }
    for secret in ["api-secret", "other"] {
        server.kubectl_ok(&["create", "secret", "generic", secret, "-n", "api", &format!("--from-literal=k={secret}-value")]);
    }
    // No automounted ServiceAccount volume: the pod references kube-root-ca.crt only if admission adds it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-0", "namespace": "api"}, "spec": {
        "nodeName": "node-a", "serviceAccountName": "api", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "i"}],
        "volumes": [{"name": "s", "secret": {"secretName": "api-secret"}}]}});
    let out = server.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &pod.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json(&String::from_utf8_lossy(&out.stdout))["metadata"]["uid"].as_str().expect("uid").to_owned()
}

#[test]
fn only_a_bootstrapper_or_the_node_itself_gets_a_node_certificate() {
    let server = Server::start();
    let token = bootstrap_token(&server);
    let auth = format!("Authorization: Bearer {token}");
    let (node_csr, _) = csr("system:node:n1", "system:nodes");

    // Nobody else may ask.
    let (code, body) = request_certificate(&server, &[], &node_csr);
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "forbidden: User \"system:anonymous\" cannot post path \"/tessera/v1/nodes/client-certificate\"");
    server.kubectl_ok(&["create", "sa", "someone"]);
    let someone = server.kubectl_ok(&["create", "token", "someone"]);
    let (code, body) = request_certificate(&server, &["-H", &format!("Authorization: Bearer {}", someone.trim())], &node_csr);
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "forbidden: User \"system:serviceaccount:default:someone\" cannot post path \"/tessera/v1/nodes/client-certificate\"");

    // The bootstrap token gets a node certificate and nothing else: not cluster-admin's.
    let (admin_csr, _) = csr("admin", "system:masters");
    let (code, body) = request_certificate(&server, &["-H", &auth], &admin_csr);
    assert_eq!(code, 400, "{body}");
    assert_eq!(message(&body), "invalid certificate signing request: the subject must be exactly CN=system:node:NAME, O=system:nodes");
    let (sneaky, _) = csr("system:node:n1", "system:masters");
    assert_eq!(request_certificate(&server, &["-H", &auth], &sneaky).0, 400);
    let (code, body) = server.curl("GET", "/api/v1/namespaces/kube-system/secrets", &["-H", &auth]);
    assert_eq!(code, 403, "{body}");

    // A node renews its own certificate only.
    let n1 = join(&server, &token, "n1");
    let (cert, key) = (n1.cert.display().to_string(), n1.key.display().to_string());
    let (renewal, _) = csr("system:node:n1", "system:nodes");
    assert_eq!(request_certificate(&server, &["--cert", &cert, "--key", &key], &renewal).0, 201);
    let (other, _) = csr("system:node:n2", "system:nodes");
    let (code, body) = request_certificate(&server, &["--cert", &cert, "--key", &key], &other);
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "forbidden: node \"n1\" may renew only its own client certificate, not one for node \"n2\"");

    // The certificate authenticates as the node.
    let (code, body) = n1.curl(&server, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})));
    assert_eq!(code, 201, "{body}");
    let user = json(&body)["status"]["userInfo"].clone();
    assert_eq!((&user["username"], &user["groups"]), (&json!("system:node:n1"), &json!(["system:nodes", "system:authenticated"])), "{user}");
    // kube-apiserver 1.32 names an x509 credential by its SHA-256.
    let id = user["extra"]["authentication.kubernetes.io/credential-id"][0].as_str().unwrap_or_default();
    assert!(id.strip_prefix("X509SHA256=").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())), "{user}");
}

#[test]
fn a_node_cannot_mint_tokens_beyond_its_own_pods() {
    let server = Server::start();
    let token = bootstrap_token(&server);
    let uid = cluster_with_a_pod_on_node_a(&server);
    let (node_a, node_b) = (join(&server, &token, "node-a"), join(&server, &token, "node-b"));
    let token_path = |sa: &str| format!("/api/v1/namespaces/api/serviceaccounts/{sa}/token");

    // node-a gets tokens for its pod, bound to it.
    let (code, body) = node_a.curl(&server, "POST", &token_path("api"), Some(&token_request(Some(("api-0", &uid)))));
    assert_eq!(code, 201, "{body}");

    // Another node's pod's ServiceAccount.
    let (code, body) = node_b.curl(&server, "POST", &token_path("api"), Some(&token_request(Some(("api-0", &uid)))));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "serviceaccounts \"api\" is forbidden: User \"system:node:node-b\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-b' and this object"
    );
    // A ServiceAccount no pod runs as, even for the node that runs pods in that namespace.
    let (code, body) = node_a.curl(&server, "POST", &token_path("web"), Some(&token_request(None)));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "serviceaccounts \"web\" is forbidden: User \"system:node:node-a\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-a' and this object"
    );
    // Its own pod's ServiceAccount, but unbound, or bound to nothing by uid.
    let (code, body) = node_a.curl(&server, "POST", &token_path("api"), Some(&token_request(None)));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "serviceaccounts \"api\" is forbidden: node requested token not bound to a pod");
    let (code, body) = node_a.curl(&server, "POST", &token_path("api"), Some(&token_request(Some(("api-0", "")))));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "serviceaccounts \"api\" is forbidden: node requested token with a pod binding without a uid");

    // node-b runs a pod as `api` too (RBAC lets nodes run pods in `api`): now it
    // may ask for `api` tokens, but only bound to its own pod.
    server.kubectl_ok(&["create", "rolebinding", "nodes-run-pods", "-n", "api", "--clusterrole=tessera:node-pod-runner", "--group=system:nodes"]);
    let b_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b-0"}, "spec": {"nodeName": "node-b", "serviceAccountName": "api", "containers": [{"name": "c", "image": "i"}]}});
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/namespaces/api/pods", Some(&b_pod));
    assert_eq!(code, 201, "{body}");
    let (code, body) = node_b.curl(&server, "POST", &token_path("api"), Some(&token_request(Some(("api-0", &uid)))));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "serviceaccounts \"api\" is forbidden: node requested token bound to a pod scheduled on a different node");
}

#[test]
fn a_node_creates_and_deletes_only_its_own_pods() {
    let server = Server::start();
    let token = bootstrap_token(&server);
    cluster_with_a_pod_on_node_a(&server);
    let node_b = join(&server, &token, "node-b");
    let pod = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node, "serviceAccountName": "api", "containers": [{"name": "c", "image": "i"}]}})
    };

    // No namespace grant: RBAC decides, and says why.
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/namespaces/api/pods", Some(&pod("b-0", "node-b")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "pods is forbidden: User \"system:node:node-b\" cannot create resource \"pods\" in API group \"\" in the namespace \"api\": a node may create pods only in a namespace where RBAC allows it to (ClusterRole tessera:node-pod-runner)"
    );
    server.kubectl_ok(&["create", "rolebinding", "node-b-runs-pods", "-n", "api", "--clusterrole=tessera:node-pod-runner", "--user=system:node:node-b"]);
    // Another nodeName.
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/namespaces/api/pods", Some(&pod("evil", "node-a")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "pods \"evil\" is forbidden: node \"node-b\" can only create pods with spec.nodeName set to itself");
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/namespaces/api/pods", Some(&pod("unbound", "")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "pods \"unbound\" is forbidden: node \"node-b\" can only create pods with spec.nodeName set to itself");
    assert!(server.kubectl_err(&["get", "pod", "evil", "-n", "api"]).contains("NotFound"));
    // Its own.
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/namespaces/api/pods", Some(&pod("b-0", "node-b")));
    assert_eq!(code, 201, "{body}");

    // Another node's pod: no delete, no status, no read.
    let (code, body) = node_b.curl(&server, "DELETE", "/api/v1/namespaces/api/pods/api-0", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "pods \"api-0\" is forbidden: node \"node-b\" can only delete pods with spec.nodeName set to itself");
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let (cert, key) = (node_b.cert.display().to_string(), node_b.key.display().to_string());
    let (code, body) = server.curl(
        "PATCH",
        "/api/v1/namespaces/api/pods/api-0/status",
        &["--cert", &cert, "--key", &key, "-H", "Content-Type: application/merge-patch+json", "-d", &status.to_string()],
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "pods \"api-0\" is forbidden: node \"node-b\" can only update pod status for pods with spec.nodeName set to itself");
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/namespaces/api/pods/api-0", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "pods \"api-0\" is forbidden: User \"system:node:node-b\" cannot get resource \"pods\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-b' and this object"
    );
    assert!(server.kubectl_ok(&["get", "pod", "api-0", "-n", "api"]).contains("api-0"), "the pod is untouched");

    // Listing: only with its own spec.nodeName selector, and the first selector is the one that counts.
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/pods", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "pods is forbidden: User \"system:node:node-b\" cannot list resource \"pods\" in API group \"\" at the cluster scope: can only list/watch pods with spec.nodeName field selector"
    );
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-b", None);
    assert_eq!(code, 200, "{body}");
    let list = json(&body);
    let names: Vec<&str> = list["items"].as_array().expect("items").iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["b-0"]);
    let (code, _) = node_b.curl(&server, "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&fieldSelector=spec.nodeName%3Dnode-b", None);
    assert_eq!(code, 403, "the first fieldSelector is the one authorized and run");
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/pods?watch=1&timeoutSeconds=1&fieldSelector=spec.nodeName%3Dnode-b", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"b-0\"") && !body.contains("\"api-0\""), "{body}");
}

#[test]
fn a_node_reads_only_what_its_pods_reference() {
    let server = Server::start();
    let token = bootstrap_token(&server);
    cluster_with_a_pod_on_node_a(&server);
    let (node_a, node_b) = (join(&server, &token, "node-a"), join(&server, &token, "node-b"));

    let (code, body) = node_a.curl(&server, "GET", "/api/v1/namespaces/api/secrets/api-secret", None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = node_a.curl(&server, "GET", "/api/v1/namespaces/api/secrets/other", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "secrets \"other\" is forbidden: User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-a' and this object"
    );
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/namespaces/api/secrets/api-secret", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "secrets \"api-secret\" is forbidden: User \"system:node:node-b\" cannot get resource \"secrets\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-b' and this object"
    );
    let (code, body) = node_a.curl(&server, "GET", "/api/v1/namespaces/api/secrets", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "secrets is forbidden: User \"system:node:node-a\" cannot list resource \"secrets\" in API group \"\" in the namespace \"api\": No Object name found"
    );
    // A named list of the referenced Secret runs as that name only.
    let (code, body) = node_a.curl(&server, "GET", "/api/v1/namespaces/api/secrets?fieldSelector=metadata.name%3Dapi-secret", None);
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("other-value"));
    // ServiceAccounts of its pods only; kube-root-ca.crt only when a pod mounts it.
    assert_eq!(node_a.curl(&server, "GET", "/api/v1/namespaces/api/serviceaccounts/api", None).0, 200);
    assert_eq!(node_a.curl(&server, "GET", "/api/v1/namespaces/api/serviceaccounts/web", None).0, 403);
    assert_eq!(node_a.curl(&server, "GET", "/api/v1/namespaces/api/configmaps/kube-root-ca.crt", None).0, 403);
    // A pod with the automounted volume (ServiceAccount admission) references it.
    let mounted = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1", "namespace": "api"}, "spec": {
        "nodeName": "node-a", "serviceAccountName": "api", "containers": [{"name": "c", "image": "i"}]}});
    let out = server.kubectl_stdin(&["create", "-f", "-"], &mounted.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.eventually(5, "the node graph to see the mount", || {
        (node_a.curl(&server, "GET", "/api/v1/namespaces/api/configmaps/kube-root-ca.crt", None).0 == 200).then_some(())
    });
    // An access review agrees with the authorizer.
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": "system:node:node-b", "groups": ["system:nodes"],
        "resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "api", "name": "api-secret"}}});
    let out = server.kubectl_stdin(&["create", "-f", "-", "-o", "json"], &review.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["status"],
        json!({"allowed": false, "reason": "no relationship found between node 'node-b' and this object"})
    );
}

#[test]
fn a_node_owns_only_its_node_object_and_lease() {
    let server = Server::start();
    let token = bootstrap_token(&server);
    let (node_a, node_b) = (join(&server, &token, "node-a"), join(&server, &token, "node-b"));
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}], "nodeInfo": {"kubeletVersion": "v1.32.0"}}});
    let lease = |name: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    for n in [&node_a, &node_b] {
        assert_eq!(n.curl(&server, "POST", "/api/v1/nodes", Some(&node(&n.name))).0, 201);
        assert_eq!(n.curl(&server, "POST", leases, Some(&lease(&n.name))).0, 201);
    }
    let (code, body) = node_b.curl(&server, "POST", "/api/v1/nodes", Some(&node("node-c")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "nodes \"node-c\" is forbidden: node \"node-b\" is not allowed to modify node \"node-c\"");
    let (code, body) = node_b.curl(&server, "PUT", "/api/v1/nodes/node-a", Some(&node("node-a")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "nodes \"node-a\" is forbidden: node \"node-b\" is not allowed to modify node \"node-a\"");
    let (code, body) = node_b.curl(&server, "GET", "/api/v1/nodes/node-a", None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "nodes \"node-a\" is forbidden: User \"system:node:node-b\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'node-b' cannot read 'node-a', only its own Node object"
    );
    let (code, body) = node_b.curl(&server, "POST", leases, Some(&lease("node-a2")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(message(&body), "leases.coordination.k8s.io \"node-a2\" is forbidden: can only access node lease with the same name as the requesting node");
    let (code, body) = node_b.curl(&server, "PUT", &format!("{leases}/node-a"), Some(&lease("node-a")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "leases.coordination.k8s.io \"node-a\" is forbidden: User \"system:node:node-b\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": can only access node lease with the same name as the requesting node"
    );
    let (code, body) = node_b.curl(&server, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases", Some(&lease("node-b")));
    assert_eq!(code, 403, "{body}");

    // Real kubectl reads both kinds.
    let nodes = server.kubectl_ok(&["get", "nodes"]);
    assert!(nodes.starts_with("NAME     STATUS   ROLES    AGE   VERSION"), "{nodes}");
    assert!(nodes.contains("node-a   Ready    <none>"), "{nodes}");
    let leases_table = server.kubectl_ok(&["get", "leases", "-n", "kube-node-lease"]);
    assert!(leases_table.starts_with("NAME     HOLDER   AGE"), "{leases_table}");
    assert!(leases_table.contains("node-b   node-b"), "{leases_table}");
    assert!(server.kubectl_ok(&["api-resources", "--api-group=coordination.k8s.io"]).contains("leases"));
    assert!(server.kubectl_ok(&["get", "no", "node-a", "-o", "jsonpath={.status.nodeInfo.kubeletVersion}"]).contains("v1.32.0"));
}

/// `tessera agent --cert-dir DIR join` for node `name`; returns DIR.
fn agent_join(server: &Server, token: &str, name: &str) -> PathBuf {
    let dir = server.path(&format!("node-{name}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(&dir)
        .args(["join", "--node", name, "--server", &server.url, "--certificate-authority"])
        .arg(server.ca_file())
        .env("TESSERA_BOOTSTRAP_TOKEN", token)
        .output()
        .expect("run tessera agent join");
    assert!(out.status.success(), "join failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// `tessera agent --cert-dir DIR FLAGS run … -- sh -c 'echo $$; exec sleep 600'`:
/// the workload prints its pid once its tokens are projected.
struct RunningAgent {
    child: std::process::Child,
    workload_pid: String,
}

impl RunningAgent {
    fn start(cert_dir: &std::path::Path, agent_flags: &[&str], run_flags: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["agent", "--cert-dir"])
            .arg(cert_dir)
            .args(agent_flags)
            .arg("run")
            .args(run_flags)
            .args(["--", "sh", "-c", "echo $$; exec sleep 600"])
            .env("TESSERA_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn tessera agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read the workload's pid");
        let workload_pid = line.trim().to_owned();
        assert!(workload_pid.parse::<u32>().is_ok(), "the workload never started: {line:?}");
        Self { child, workload_pid }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-KILL", &self.workload_pid]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server's TokenReview accepts `token`.
fn authenticated(server: &Server, token: &str) -> bool {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}).to_string();
    let (code, body) = server.curl_admin("POST", "/apis/authentication.k8s.io/v1/tokenreviews", &["-H", "Content-Type: application/json", "-d", &review]);
    assert_eq!(code, 201, "{body}");
    json(&body)["status"]["authenticated"] == json!(true)
}

fn namespace_where_nodes_run_pods(server: &Server) {
    server.kubectl_ok(&["create", "ns", "api"]);
    server.kubectl_ok(&["create", "sa", "api", "-n", "api"]);
    server.kubectl_ok(&["create", "rolebinding", "nodes-run-pods", "-n", "api", "--clusterrole=tessera:node-pod-runner", "--group=system:nodes"]);
}

#[test]
fn an_agent_cannot_adopt_another_nodes_pod() {
    let server = Server::start();
    namespace_where_nodes_run_pods(&server);
    let token = bootstrap_token(&server);
    let (a, b) = (agent_join(&server, &token, "node-a"), agent_join(&server, &token, "node-b"));
    let root = server.path("a-root");
    let _owner = RunningAgent::start(&a, &[], &["--sa", "api", "-n", "api", "--name", "api-0", "--root", &root.display().to_string()]);
    let pod_token = std::fs::read_to_string(root.join("var/run/secrets/kubernetes.io/serviceaccount/token")).expect("token");
    let uid = server.kubectl_ok(&["get", "pod", "api-0", "-n", "api", "-o", "jsonpath={.metadata.uid}"]);

    // The same pod from another node: refused, with the server's reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(&b)
        .args(["run", "--sa", "api", "-n", "api", "--name", "api-0", "--", "true"])
        .output()
        .expect("run the second agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Pod api/api-0 exists and is not this node's: pods \"api-0\" is forbidden: User \"system:node:node-b\" cannot get resource \"pods\" in API group \"\" in the namespace \"api\": no relationship found between node 'node-b' and this object"),
        "{stderr}"
    );
    // Nothing of node-a's changed: same pod, its token still good.
    assert_eq!(server.kubectl_ok(&["get", "pod", "api-0", "-n", "api", "-o", "jsonpath={.metadata.uid} {.spec.nodeName}"]), format!("{uid} node-a"));
    assert!(authenticated(&server, &pod_token));
}

#[test]
fn an_agent_refuses_to_run_with_an_admin_credential() {
    let server = Server::start();
    let dir = server.path("not-a-node");
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("dir");
    }
    std::fs::copy(&server.kubeconfig, dir.join("node.kubeconfig")).expect("copy the admin kubeconfig");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["agent", "--cert-dir"])
        .arg(&dir)
        .args(["run", "--", "true"])
        .output()
        .expect("run tessera agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the agent runs as a node, but its credential authenticates as \"admin\" (groups [\"system:masters\", \"system:authenticated\"]): run `tessera agent join`"),
        "{stderr}"
    );
    assert!(server.kubectl_ok(&["get", "nodes", "-o", "name"]).trim().is_empty(), "nothing was registered");
}

/// Lease 4 s (renewed every second) and an eviction timeout of 2 s: the
/// SIGKILLed agent's pod is marked not ready, then deleted, and its token is
/// refused within lease + eviction + 5 s of the kill.
#[test]
fn a_killed_agents_tokens_are_refused_within_the_grace_period() {
    const LEASE: u64 = 4;
    const EVICTION: u64 = 2;
    let server = Server::start_with(tempfile::tempdir().expect("tempdir"), &["--node-eviction-timeout", &format!("{EVICTION}s")]);
    namespace_where_nodes_run_pods(&server);
    let token = bootstrap_token(&server);
    let dir = agent_join(&server, &token, "node-a");
    let root = server.path("a-root");
    let mut agent = RunningAgent::start(
        &dir,
        &["--lease-duration", &format!("{LEASE}s")],
        &["--sa", "api", "-n", "api", "--name", "api-0", "--root", &root.display().to_string()],
    );
    let pod_token = std::fs::read_to_string(root.join("var/run/secrets/kubernetes.io/serviceaccount/token")).expect("token");
    assert!(authenticated(&server, &pod_token));
    let pod_ready = || {
        let (code, body) = server.curl_admin("GET", "/api/v1/namespaces/api/pods/api-0", &[]);
        (code == 200).then(|| {
            json(&body)["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| c["status"].clone())
        })
    };
    server.eventually(10, "the agent reporting its pod ready", || (pod_ready() == Some(Some(json!("True")))).then_some(()));

    agent.child.kill().expect("SIGKILL the agent");
    let _ = agent.child.wait();
    let killed = std::time::Instant::now();
    let deadline = std::time::Duration::from_secs(LEASE + EVICTION + 5);
    let mut saw_not_ready = false;
    while authenticated(&server, &pod_token) {
        assert!(killed.elapsed() < deadline, "the killed agent's token was still accepted after {:?}", killed.elapsed());
        saw_not_ready |= pod_ready() == Some(Some(json!("False")));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let refused_after = killed.elapsed();
    assert!(saw_not_ready, "the pod was deleted without first being marked not ready");
    assert!(refused_after >= std::time::Duration::from_secs(EVICTION), "evicted before the eviction timeout: {refused_after:?}");
    assert!(server.kubectl_err(&["get", "pod", "api-0", "-n", "api"]).contains("NotFound"));
    let node = server.kubectl_ok(&["get", "node", "node-a"]);
    assert!(node.contains("NotReady"), "{node}");
    eprintln!("token refused {refused_after:?} after SIGKILL (lease {LEASE}s + eviction {EVICTION}s)");
}
