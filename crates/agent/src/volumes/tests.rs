use serde_json::json;

use super::*;

/// A pod as the API server returns it after ServiceAccount admission, with
/// an extra audience-bound token volume.
fn admitted_pod() -> Value {
    json!({
        "metadata": {"name": "web-0", "namespace": "web", "uid": "u-1"},
        "spec": {
            "serviceAccountName": "web",
            "nodeName": "n1",
            "containers": [{"name": "a", "volumeMounts": [
                {"name": "kube-api-access-x2b4c", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                {"name": "tokens", "mountPath": "/var/run/secrets/tokens"},
            ]}, {"name": "b", "volumeMounts": [
                {"name": "kube-api-access-x2b4c", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
            ]}],
            "volumes": [
                {"name": "kube-api-access-x2b4c", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
                {"name": "tokens", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "data-store", "expirationSeconds": 600, "path": "ds/token"}},
                    {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}},
                ]}},
            ],
        },
    })
}

#[test]
fn follows_every_mount_of_a_projected_volume() {
    let files = plan(&admitted_pod()).unwrap();
    let sa = Path::new("var/run/secrets/kubernetes.io/serviceaccount");
    let tokens = Path::new("var/run/secrets/tokens");
    assert_eq!(files, vec![
        ProjectedFile { path: sa.join("token"), content: Content::Token { audience: None, expiration_seconds: 3607 } },
        ProjectedFile { path: sa.join("ca.crt"), content: Content::ConfigMap { name: "kube-root-ca.crt".into(), key: "ca.crt".into(), optional: false } },
        ProjectedFile { path: sa.join("namespace"), content: Content::Field("web".into()) },
        ProjectedFile { path: tokens.join("ds/token"), content: Content::Token { audience: Some("data-store".into()), expiration_seconds: 600 } },
        ProjectedFile { path: tokens.join("vault-token"), content: Content::Token { audience: Some("vault".into()), expiration_seconds: 3600 } },
    ]);
    assert_eq!((files[0].mode(), files[1].mode(), files[2].mode()), (0o600, 0o644, 0o644));
}

#[test]
fn an_unmounted_volume_writes_nothing() {
    let mut pod = admitted_pod();
    pod["spec"]["containers"] = json!([{"name": "a"}]);
    assert_eq!(plan(&pod).unwrap(), vec![]);
}

#[test]
fn paths_that_escape_the_root_are_refused() {
    let mut pod = admitted_pod();
    pod["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/var/../../etc");
    pod["spec"]["volumes"][1]["projected"]["sources"][1]["serviceAccountToken"]["path"] = json!("../x");
    let err = plan(&pod).unwrap_err().to_string();
    assert_eq!(
        err,
        r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/var/../../etc": must be plain names separated by '/' (no '.', '..' or empty elements)"#
    );
    pod["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("relative/dir");
    assert_eq!(plan(&pod).unwrap_err().to_string(), r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "relative/dir": must be an absolute path"#);
    pod["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/var/run/secrets/tokens");
    assert_eq!(plan(&pod).unwrap_err().to_string(), r#"spec.volumes[1].projected.sources[1].serviceAccountToken.path: Invalid value: "../x": must not contain '..'"#);
    pod["spec"]["volumes"][1]["projected"]["sources"][1]["serviceAccountToken"]["path"] = json!("/etc/passwd");
    assert_eq!(plan(&pod).unwrap_err().to_string(), r#"spec.volumes[1].projected.sources[1].serviceAccountToken.path: Invalid value: "/etc/passwd": must be a relative path"#);
}

#[test]
fn colliding_files_and_mounts_are_refused() {
    let mut pod = admitted_pod();
    // The extra volume mounted over the ServiceAccount's: its token would replace the default one.
    pod["spec"]["containers"][1]["volumeMounts"][0]["name"] = json!("tokens");
    let err = plan(&pod).unwrap_err().to_string();
    assert_eq!(
        err,
        r#"spec.containers[1].volumeMounts[0].mountPath: Invalid value: "/var/run/secrets/kubernetes.io/serviceaccount": volume "kube-api-access-x2b4c" is mounted there by spec.containers[0].volumeMounts[0]"#
    );
    let mut pod = admitted_pod();
    pod["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = json!("/var/run/secrets/kubernetes.io/serviceaccount/token");
    let err = plan(&pod).unwrap_err().to_string();
    assert!(err.contains("one would be a directory of the other"), "{err}");
}

#[test]
fn sources_the_agent_cannot_provide_refuse_the_pod() {
    let mut pod = admitted_pod();
    pod["spec"]["volumes"][1]["projected"]["sources"] = json!([{"secret": {"name": "s"}}]);
    assert_eq!(
        plan(&pod).unwrap_err().to_string(),
        r#"spec.volumes[1].projected.sources[0]: Unsupported value: "secret": the agent projects serviceAccountToken, configMap and downwardAPI sources"#
    );
    pod["spec"]["volumes"][1]["projected"]["sources"] = json!([{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]);
    assert_eq!(
        plan(&pod).unwrap_err().to_string(),
        "spec.volumes[1].projected.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    );
    pod["spec"]["volumes"][1]["projected"]["sources"] = json!([{"downwardAPI": {"items": [{"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}}]);
    assert!(plan(&pod).unwrap_err().to_string().contains("Unsupported value: \"\""));
}
