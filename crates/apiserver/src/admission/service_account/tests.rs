use std::sync::Arc;

use serde_json::json;
use tessera_api::registry::WriteOptions;
use tessera_store::sqlite::SqliteStore;

use super::*;

struct Fixture {
    registry: Registry,
    _dir: tempfile::TempDir,
}

/// A registry with namespace `ns` holding the ServiceAccounts `web`
/// (automount unset) and `quiet` (automount false, one pull secret).
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    let registry = Registry::new(Arc::new(store));
    registry.create(&CORE_NAMESPACES, None, json!({"metadata": {"name": "ns"}}), WriteOptions::default()).await.expect("namespace");
    for sa in [
        json!({"metadata": {"name": "web"}}),
        json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false, "imagePullSecrets": [{"name": "registry"}]}),
    ] {
        registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), sa, WriteOptions::default()).await.expect("serviceaccount");
    }
    Fixture { registry, _dir: dir }
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
}

async fn admit(f: &Fixture, body: Value) -> Result<Value, ApiError> {
    admit_create(&f.registry, &CORE_PODS, Some("ns"), body).await
}

fn volume_name(pod: &Value) -> String {
    pod.pointer("/spec/volumes/0/name").and_then(Value::as_str).expect("a volume").to_owned()
}

#[tokio::test]
async fn injects_the_token_volume_and_mounts_it_in_every_container() {
    let f = fixture().await;
    let body = pod(json!({
        "serviceAccountName": "web",
        "initContainers": [{"name": "init", "image": "busybox"}],
        "containers": [{"name": "a", "image": "nginx", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}, {"name": "b", "image": "nginx"}],
    }));
    let admitted = admit(&f, body).await.expect("admitted");
    let name = volume_name(&admitted);
    assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
    assert!(name["kube-api-access-".len()..].bytes().all(|b| NAME_ALPHABET.contains(&b)), "{name}");
    assert_eq!(admitted["spec"]["volumes"], json!([{"name": name, "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    }}]));
    let mount = json!({"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
    assert_eq!(admitted["spec"]["initContainers"][0]["volumeMounts"], json!([mount]));
    assert_eq!(admitted["spec"]["containers"][0]["volumeMounts"], json!([{"name": "data", "mountPath": "/data"}, mount]));
    assert_eq!(admitted["spec"]["containers"][1]["volumeMounts"], json!([mount]));
    assert_eq!((&admitted["spec"]["serviceAccountName"], &admitted["spec"]["serviceAccount"]), (&json!("web"), &json!("web")));
}

#[tokio::test]
async fn the_default_service_account_is_the_default() {
    let f = fixture().await;
    f.registry.create(&CORE_SERVICEACCOUNTS, Some("ns"), json!({"metadata": {"name": "default"}}), WriteOptions::default()).await.expect("sa");
    let admitted = admit(&f, pod(json!({"containers": [{"name": "a", "image": "nginx"}]}))).await.expect("admitted");
    assert_eq!(admitted["spec"]["serviceAccountName"], "default");
    assert_eq!(admitted["spec"]["serviceAccount"], "default");
    // The deprecated field is read when the name is empty, as kube's conversion does.
    let admitted = admit(&f, pod(json!({"serviceAccount": "web", "containers": [{"name": "a", "image": "nginx"}]}))).await.expect("admitted");
    assert_eq!(admitted["spec"]["serviceAccountName"], "web");
}

#[tokio::test]
async fn automount_false_on_the_pod_or_the_service_account_injects_nothing_and_the_pod_wins() {
    let f = fixture().await;
    let off = admit(&f, pod(json!({"serviceAccountName": "web", "automountServiceAccountToken": false, "containers": [{"name": "a", "image": "x"}]})))
        .await
        .expect("admitted");
    assert!(off["spec"].get("volumes").is_none(), "{off}");
    assert!(off["spec"]["containers"][0].get("volumeMounts").is_none());

    let quiet = admit(&f, pod(json!({"serviceAccountName": "quiet", "containers": [{"name": "a", "image": "x"}]}))).await.expect("admitted");
    assert!(quiet["spec"].get("volumes").is_none(), "{quiet}");
    // The ServiceAccount's pull secrets are copied to a pod that has none.
    assert_eq!(quiet["spec"]["imagePullSecrets"], json!([{"name": "registry"}]));

    let pod_wins = admit(&f, pod(json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true, "containers": [{"name": "a", "image": "x"}]})))
        .await
        .expect("admitted");
    assert!(volume_name(&pod_wins).starts_with("kube-api-access-"));
}

#[tokio::test]
async fn an_existing_mount_or_volume_is_kept() {
    let f = fixture().await;
    let own = json!({"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
    let body = pod(json!({"serviceAccountName": "web", "containers": [{"name": "a", "image": "x", "volumeMounts": [own]}], "volumes": [{"name": "mine", "emptyDir": {}}]}));
    let admitted = admit(&f, body).await.expect("admitted");
    assert_eq!(admitted["spec"]["containers"][0]["volumeMounts"], json!([own]));
    assert_eq!(admitted["spec"]["volumes"], json!([{"name": "mine", "emptyDir": {}}]), "no container needs the token volume");

    // A kube-api-access-* volume already there is the one mounted.
    let body = pod(json!({"serviceAccountName": "web", "containers": [{"name": "a", "image": "x"}], "volumes": [{"name": "kube-api-access-abcde", "emptyDir": {}}]}));
    let admitted = admit(&f, body).await.expect("admitted");
    assert_eq!(admitted["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    assert_eq!(admitted["spec"]["containers"][0]["volumeMounts"][0]["name"], "kube-api-access-abcde");
}

#[tokio::test]
async fn a_missing_service_account_is_refused_with_kubes_message() {
    let f = fixture().await;
    let err = admit(&f, pod(json!({"serviceAccountName": "ghost", "containers": [{"name": "a", "image": "x"}]}))).await.expect_err("refused");
    assert_eq!(err.code, 403);
    assert_eq!(err.message, "pods \"p\" is forbidden: error looking up service account ns/ghost: serviceaccount \"ghost\" not found");
    let status = err.to_status();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["details"], json!({"name": "p", "kind": "pods"}));

    // A pod still to be named by generateName is "Unknown", as in kube.
    let unnamed = json!({"metadata": {"generateName": "p-"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "a", "image": "x"}]}});
    let err = admit(&f, unnamed).await.expect_err("refused");
    assert_eq!(err.message, "pods \"Unknown\" is forbidden: error looking up service account ns/ghost: serviceaccount \"ghost\" not found");

    // In a namespace that does not exist, the namespace is what is missing.
    let err = admit_create(&f.registry, &CORE_PODS, Some("nowhere"), pod(json!({"serviceAccountName": "ghost"}))).await.expect_err("refused");
    assert_eq!((err.code, err.message.as_str()), (404, "namespaces \"nowhere\" not found"));
}

#[tokio::test(start_paused = true)]
async fn the_default_service_account_is_waited_for() {
    let f = fixture().await;
    let err = admit(&f, pod(json!({"containers": [{"name": "a", "image": "x"}]}))).await.expect_err("refused");
    assert_eq!(err.message, "pods \"p\" is forbidden: error looking up service account ns/default: serviceaccount \"default\" not found");
}

#[tokio::test]
async fn mirror_pods_are_left_alone_but_may_not_reference_identities() {
    let f = fixture().await;
    let mirror = |spec: Value| json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": spec});
    let plain = mirror(json!({"containers": [{"name": "a", "image": "x"}]}));
    assert_eq!(admit(&f, plain.clone()).await.expect("admitted"), plain);
    let err = admit(&f, mirror(json!({"serviceAccountName": "web", "containers": []}))).await.expect_err("refused");
    assert_eq!(err.message, "pods \"m\" is forbidden: a mirror pod may not reference service accounts");
    let err = admit(&f, mirror(json!({"volumes": [{"name": "s", "secret": {"secretName": "s"}}]}))).await.expect_err("refused");
    assert_eq!(err.message, "pods \"m\" is forbidden: a mirror pod may not reference secrets");
    let projected = json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]});
    let err = admit(&f, mirror(projected)).await.expect_err("refused");
    assert_eq!(err.message, "pods \"m\" is forbidden: a mirror pod may not use ServiceAccountToken volume projections");
}

#[tokio::test]
async fn other_kinds_and_odd_bodies_pass_unchanged() {
    let f = fixture().await;
    let cm = json!({"metadata": {"name": "c"}});
    assert_eq!(admit_create(&f.registry, &tessera_api::resource::CORE_CONFIGMAPS, Some("ns"), cm.clone()).await.expect("passes"), cm);
    assert_eq!(admit(&f, json!("not an object")).await.expect("left to decoding"), json!("not an object"));
    assert_eq!(admit(&f, json!({"metadata": {"name": "p"}})).await.expect("left to validation"), json!({"metadata": {"name": "p"}}));
}
