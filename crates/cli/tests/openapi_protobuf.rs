//! OpenAPI v2 and protobuf responses end to end: the document in both forms,
//! kubectl's client-side validation (a `kind: List` file, a multi-document
//! file with a kind tessera does not serve), `kubectl cluster-info`, and
//! get/list/watch/errors in `application/vnd.kubernetes.protobuf`.

mod support;

use std::path::Path;
use std::process::Command;

use prost::Message as _;
use serde_json::{Value, json};
use support::Server;
use tessera_apiserver::openapi_v2::gnostic;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const OPENAPI_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// A raw response: status, headers (lower-cased names) and body bytes.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// GET `path` as admin with extra headers, keeping the body's bytes.
fn get(server: &Server, path: &str, headers: &[&str]) -> Raw {
    let (cert, key) = server.admin_cert();
    let body = server.dir.path().join("body.bin");
    let head = server.dir.path().join("headers.txt");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o"]).arg(&body).arg("-D").arg(&head).args(["-w", "%{http_code}", "--cacert"]).arg(server.ca_file());
    cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("{}{path}", server.url)).output().expect("run curl");
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let headers = std::fs::read_to_string(&head)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw { status, headers, body: std::fs::read(&body).unwrap_or_default() }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

#[test]
fn openapi_v2_in_json_and_protobuf() {
    let server = Server::start();
    let json_doc = get(&server, "/openapi/v2", &["Accept: application/json"]);
    assert_eq!(json_doc.status, 200);
    assert_eq!(json_doc.header("content-type"), Some("application/json"));
    assert_eq!(json_doc.header("vary"), Some("Accept"));
    let doc: Value = serde_json::from_slice(&json_doc.body).expect("JSON document");
    assert_eq!(doc["swagger"], "2.0");
    let cm = &doc["definitions"]["io.k8s.api.core.v1.ConfigMap"];
    assert_eq!(cm["x-kubernetes-group-version-kind"], json!([{"group": "", "kind": "ConfigMap", "version": "v1"}]));
    assert_eq!(cm["properties"]["metadata"]["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");

    let pb = get(&server, "/openapi/v2", &[&format!("Accept: {OPENAPI_PROTOBUF}")]);
    assert_eq!(pb.status, 200);
    assert_eq!(pb.header("content-type"), Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"));
    let decoded = gnostic::Document::decode(pb.body.as_slice()).expect("gnostic Document");
    assert_eq!(decoded.swagger, "2.0");
    let defs = decoded.definitions.expect("definitions").additional_properties;
    let cm = defs.iter().find(|d| d.name == "io.k8s.api.core.v1.ConfigMap").and_then(|d| d.value.as_ref()).expect("ConfigMap definition");
    let gvk = cm.vendor_extension.iter().find(|e| e.name == "x-kubernetes-group-version-kind").expect("gvk extension");
    assert_eq!(gvk.value.as_ref().map(|v| v.yaml.as_str()), Some(r#"[{"group":"","kind":"ConfigMap","version":"v1"}]"#));

    // One ETag for both forms; a matching If-None-Match is 304; nothing acceptable is 406.
    let etag = json_doc.header("etag").expect("etag").to_owned();
    assert_eq!(pb.header("etag"), Some(etag.as_str()));
    assert!(etag.starts_with('"') && etag.len() == 130, "{etag}");
    assert_eq!(get(&server, "/openapi/v2", &[&format!("If-None-Match: {etag}")]).status, 304);
    let refused = get(&server, "/openapi/v2", &["Accept: text/html"]);
    assert_eq!((refused.status, refused.body.len()), (406, 0));
}

#[test]
fn kubectl_validates_lists_and_mixed_files_client_side() {
    let server = Server::start();
    let dir = server.dir.path();
    let list = write(
        dir,
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: from-list, namespace: default}\n  data: {k: v}\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: from-list, namespace: default}\n",
    );
    let out = server.kubectl_ok(&["apply", "-f", &list]);
    assert_eq!(out, "configmap/from-list created\nserviceaccount/from-list created\n");

    // Client-side validation is real: an unknown field is refused by kubectl itself.
    let bad = write(dir, "bad.yaml", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: bad, namespace: default}\n  datax: {k: v}\n");
    let err = server.kubectl_err(&["apply", "-f", &bad]);
    assert!(
        err.contains(r#"error validating data: ValidationError(ConfigMap): unknown field "datax" in io.k8s.api.core.v1.ConfigMap"#),
        "{err}"
    );

    let mixed = write(
        dir,
        "mixed.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first, namespace: default}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: last, namespace: default}\n",
    );
    let out = server.kubectl(&["apply", "-f", &mixed]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configmap/first created\nconfigmap/last created\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"resource mapping not found for name: "web" namespace: "default" from ""#)
            && stderr.contains(r#"no matches for kind "Deployment" in version "apps/v1""#),
        "{stderr}"
    );
    server.kubectl_ok(&["get", "configmap", "first", "last", "-n", "default"]);
}

#[test]
fn kubectl_cluster_info_exits_zero() {
    let server = Server::start();
    let out = server.kubectl(&["cluster-info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A cluster without `kubernetes.io/cluster-service=true` Services lists only the control plane.
    assert_eq!(
        stdout,
        format!("Kubernetes control plane is running at {}\n\nTo further debug and diagnose cluster problems, use 'kubectl cluster-info dump'.\n", server.url)
    );
    // The one Service in a new cluster is kube's own, and it is no cluster service.
    let services = server.kubectl_ok(&["get", "services", "-A", "-o", "name"]);
    assert_eq!(services, "service/kubernetes\n");
}

#[test]
fn protobuf_get_list_watch_and_errors() {
    let server = Server::start();
    server.kubectl_ok(&["create", "configmap", "pb", "-n", "default", "--from-literal=k=v"]);
    let accept = format!("Accept: {PROTOBUF}, application/json");

    let one = get(&server, "/api/v1/namespaces/default/configmaps/pb", &[&accept]);
    assert_eq!((one.status, one.header("content-type")), (200, Some(PROTOBUF)));
    assert!(one.body.starts_with(b"k8s\0"));
    let cm = tessera_api::protobuf::decode(&one.body).expect("decodes");
    let as_json = get(&server, "/api/v1/namespaces/default/configmaps/pb", &["Accept: application/json"]);
    assert_eq!(cm, serde_json::from_slice::<Value>(&as_json.body).expect("json"), "the same object in both encodings");

    let list = get(&server, "/api/v1/namespaces/kube-system/serviceaccounts", &[&accept]);
    assert_eq!(list.header("content-type"), Some(PROTOBUF));
    let list = tessera_api::protobuf::decode(&list.body).expect("list decodes");
    assert_eq!(list["kind"], "ServiceAccountList");
    assert!(list["items"].as_array().expect("items").iter().any(|sa| sa["metadata"]["name"] == "node-bootstrapper"), "{list}");

    // A watch: length-prefixed WatchEvent frames, each with a k8s\0 object.
    let watch = get(&server, "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1", &[&format!("Accept: {PROTOBUF};stream=watch")]);
    assert_eq!(watch.header("content-type"), Some("application/vnd.kubernetes.protobuf;stream=watch"));
    let mut frames = Vec::new();
    let mut rest = watch.body.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        frames.push(tessera_api::protobuf::decode_watch_event(&rest[4..4 + len]).expect("frame decodes"));
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty());
    let names: Vec<(&str, &str)> = frames.iter().map(|(t, o)| (t.as_str(), o["metadata"]["name"].as_str().unwrap_or_default())).collect();
    assert!(names.contains(&("ADDED", "pb")) && names.contains(&("ADDED", "kube-root-ca.crt")), "{names:?}");

    // Errors come back as a protobuf Status.
    let missing = get(&server, "/api/v1/namespaces/default/configmaps/nope", &[&accept]);
    assert_eq!((missing.status, missing.header("content-type")), (404, Some(PROTOBUF)));
    let status = tessera_api::protobuf::decode(&missing.body).expect("status decodes");
    assert_eq!(
        status,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": "configmaps \"nope\" not found",
               "reason": "NotFound", "details": {"name": "nope", "kind": "configmaps"}, "code": 404})
    );

    // Kinds without a protobuf form answer JSON, or 406 when only protobuf is
    // acceptable (the Status itself negotiated like any error: protobuf).
    let pods = get(&server, "/api/v1/namespaces/default/pods", &[&accept]);
    assert_eq!((pods.status, pods.header("content-type")), (200, Some("application/json")));
    let refused = get(&server, "/api/v1/namespaces/default/pods", &[&format!("Accept: {PROTOBUF}")]);
    assert_eq!(refused.status, 406);
    let body = tessera_api::protobuf::decode(&refused.body).expect("protobuf status");
    assert_eq!((body["reason"].as_str(), body["message"].as_str()), (Some("NotAcceptable"), Some("only the following media types are accepted: application/json")));
}

#[test]
fn kubectl_reads_protobuf_responses() {
    let server = Server::start();
    server.kubectl_ok(&["create", "configmap", "described", "-n", "default", "--from-literal=greeting=hello"]);
    // `kubectl describe` reads with client-go's typed client, which asks for protobuf.
    let out = server.kubectl(&["describe", "configmap", "described", "-n", "default", "-v=8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Name:         described") && stdout.contains("greeting:\n----\nhello"), "{stdout}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Content-Type: application/vnd.kubernetes.protobuf"), "kubectl got protobuf:\n{log}");
}

/// The OpenAPI documents are for authenticated users (kube binds
/// `system:discovery` to `system:authenticated` only): an anonymous client
/// gets kube's 403 and no document, whatever it asks for.
#[test]
fn anonymous_clients_get_no_openapi_document() {
    let server = Server::start();
    for (path, accept) in [("/openapi/v2", "application/json"), ("/openapi/v2", OPENAPI_PROTOBUF), ("/openapi/v3", "application/json")] {
        let (code, body) = server.curl("GET", path, &["-H", &format!("Accept: {accept}")]);
        assert_eq!(code, 403, "{path} {accept}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("a Status"),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\""),
                "reason": "Forbidden", "details": {}, "code": 403}),
            "{path} {accept}"
        );
    }
}
