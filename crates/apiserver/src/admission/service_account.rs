//! ServiceAccount admission, as kube-apiserver 1.32's `ServiceAccount` plugin
//! (`plugin/pkg/admission/serviceaccount`) does it for a pod being created:
//!
//! 1. `spec.serviceAccountName` defaults to `default` (the deprecated
//!    `spec.serviceAccount` is read when the name is empty, as kube's v1
//!    conversion does, and both are written back);
//! 2. the ServiceAccount must exist, else 403
//!    `pods "NAME" is forbidden: error looking up service account NS/SA: serviceaccount "SA" not found`
//!    (the `default` ServiceAccount is looked up ten times, 100–200 ms apart,
//!    as kube does, since its controller may not have made it yet);
//! 3. unless `automountServiceAccountToken` is false on the pod, or unset on
//!    the pod and false on the ServiceAccount, every init container and
//!    container that does not already mount something at
//!    `/var/run/secrets/kubernetes.io/serviceaccount` gets a read-only mount
//!    of the `kube-api-access-xxxxx` projected volume (token valid 3607 s,
//!    `ca.crt` from the `kube-root-ca.crt` ConfigMap, `namespace` from the
//!    downward API), and the volume is added when a container needs it and no
//!    `kube-api-access-*` volume exists yet;
//! 4. a pod without `imagePullSecrets` gets the ServiceAccount's.
//!
//! Mirror pods (annotation `kubernetes.io/config.mirror`) are not changed, and
//! may reference neither a ServiceAccount nor a token projection.
//!
//! Only creates are admitted here: kube's plugin mutates on create only, and
//! pod validation refuses an update that changes the volumes or mounts.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tessera_api::resource::{CORE_NAMESPACES, CORE_PODS, CORE_SERVICEACCOUNTS, ResourceInfo};
use tessera_api::{ApiError, Registry};

/// The ServiceAccount a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The name of the injected volume is this prefix and five random characters.
pub const VOLUME_NAME_PREFIX: &str = "kube-api-access-";
/// Where every container finds `token`, `ca.crt` and `namespace`.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// kube's `WarnOnlyBoundTokenExpirationSeconds` (one hour and 7 s, so that
/// the token's lifetime marks it as an automounted one).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The annotation of a kubelet's mirror pod.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// How often the `default` ServiceAccount is looked up before giving up.
const DEFAULT_SA_ATTEMPTS: u32 = 10;

/// The characters kube's `SimpleNameGenerator` draws from (no vowels, no
/// look-alike digits), as for `generateName`.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_volume_name() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char).collect();
    format!("{VOLUME_NAME_PREFIX}{suffix}")
}

/// The projected volume source kube's `TokenVolumeSource` builds.
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

/// kube's `admission.NewForbidden` for a pod: named by the request's name,
/// or the object's, or `Unknown` (a pod still to get its `generateName`).
fn forbidden(pod: &Value, why: impl std::fmt::Display) -> ApiError {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("Unknown");
    ApiError::forbidden(CORE_PODS.plural, CORE_PODS.group, name, format!("pods \"{name}\" is forbidden: {why}"))
}

fn is_mirror_pod(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(Value::as_object).is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
}

/// The ServiceAccount a pod names (`serviceAccountName`, else the deprecated
/// `serviceAccount`), or None.
fn named_service_account(spec: &Map<String, Value>) -> Option<&str> {
    let field = |f: &str| spec.get(f).and_then(Value::as_str).filter(|s| !s.is_empty());
    field("serviceAccountName").or_else(|| field("serviceAccount"))
}

/// kube's `Validate` for a mirror pod: it may reference no ServiceAccount,
/// no Secret and no token projection.
fn validate_mirror_pod(pod: &Value) -> Result<(), ApiError> {
    let spec = pod.get("spec").and_then(Value::as_object).cloned().unwrap_or_default();
    if named_service_account(&spec).is_some() {
        return Err(forbidden(pod, "a mirror pod may not reference service accounts"));
    }
    let volumes = spec.get("volumes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let secret_volume = volumes.iter().any(|v| v.get("secret").is_some_and(|s| !s.is_null()));
    let secret_projection = volumes.iter().flat_map(projected_sources).any(|s| s.get("secret").is_some_and(|s| !s.is_null()));
    let pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    let secret_env = containers(&spec).any(|c| {
        let env_from = c.get("envFrom").and_then(Value::as_array).into_iter().flatten();
        let from_secret = env_from.clone().any(|e| e.get("secretRef").is_some_and(|r| !r.is_null()));
        let env = c.get("env").and_then(Value::as_array).into_iter().flatten();
        from_secret || env.clone().any(|e| e.pointer("/valueFrom/secretKeyRef").is_some_and(|r| !r.is_null()))
    });
    if secret_volume || secret_projection || pull_secrets || secret_env {
        return Err(forbidden(pod, "a mirror pod may not reference secrets"));
    }
    if volumes.iter().flat_map(projected_sources).any(|s| s.get("serviceAccountToken").is_some_and(|t| !t.is_null())) {
        return Err(forbidden(pod, "a mirror pod may not use ServiceAccountToken volume projections"));
    }
    Ok(())
}

fn projected_sources(volume: &Value) -> impl Iterator<Item = &Value> {
    volume.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten()
}

fn containers(spec: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    let list = |f: &str| spec.get(f).and_then(Value::as_array).into_iter().flatten();
    list("initContainers").chain(list("containers"))
}

/// Whether the token is mounted: the pod's preference wins, then the
/// ServiceAccount's, else yes.
fn should_automount(service_account: &Value, spec: &Map<String, Value>) -> bool {
    spec.get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| service_account.get("automountServiceAccountToken").and_then(Value::as_bool))
        .unwrap_or(true)
}

/// Adds the token volume and its mounts (kube's `mountServiceAccountToken`);
/// `new_name` names a new volume.
fn mount_service_account_token(spec: &mut Map<String, Value>, new_name: impl FnOnce() -> String) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_NAME_PREFIX))
        .map(str::to_owned);
    let volume_name = existing.clone().unwrap_or_else(new_name);
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needs_volume = false;
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else { continue };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            if mounts.is_null() {
                *mounts = json!([]);
            }
            // Not a list: left for decoding to refuse.
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH)) {
                continue;
            }
            mounts.push(mount.clone());
            needs_volume = true;
        }
    }
    if existing.is_none() && needs_volume {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({"name": volume_name, "projected": token_volume_source()}));
        } else {
            *volumes = json!([{"name": volume_name, "projected": token_volume_source()}]);
        }
    }
}

/// Mutates a pod being created once its ServiceAccount is known: the
/// defaulted name, the token volume and mounts, the image pull secrets.
fn mutate(spec: &mut Map<String, Value>, service_account_name: &str, service_account: &Value, new_name: impl FnOnce() -> String) {
    spec.insert("serviceAccountName".into(), json!(service_account_name));
    spec.insert("serviceAccount".into(), json!(service_account_name));
    if should_automount(service_account, spec) {
        mount_service_account_token(spec, new_name);
    }
    let has_pull_secrets = spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    let sa_pull_secrets: Vec<Value> = service_account
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| json!({"name": s.get("name").cloned().unwrap_or(json!(""))}))
        .collect();
    if !has_pull_secrets && !sa_pull_secrets.is_empty() {
        spec.insert("imagePullSecrets".into(), Value::Array(sa_pull_secrets));
    }
}

/// Looks the ServiceAccount up: once, or ten times for `default`.
async fn service_account(registry: &Registry, namespace: &str, name: &str) -> Result<Option<Value>, ApiError> {
    let attempts = if name == DEFAULT_SERVICE_ACCOUNT { DEFAULT_SA_ATTEMPTS } else { 1 };
    let interval = Duration::from_millis(100 + rand::random::<u64>() % 100);
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(interval).await;
        }
        match registry.get(&CORE_SERVICEACCOUNTS, Some(namespace), name).await {
            Ok(sa) => return Ok(Some(sa)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// [`admit_create`] as the registry's create hook, so a pod created by a POST
/// and one created by a server-side apply are admitted alike.
pub fn mutate_create() -> tessera_api::registry::MutateCreate {
    std::sync::Arc::new(|registry, resource, namespace, body| {
        Box::pin(async move { admit_create(&registry, &resource, namespace.as_deref(), body).await })
    })
}

/// Admits a create of `body` for `resource` in `namespace`: pods get the
/// treatment described in the module docs; anything else passes unchanged.
/// A body that is not a pod object is left for decoding to refuse.
pub async fn admit_create(registry: &Registry, resource: &ResourceInfo, namespace: Option<&str>, mut body: Value) -> Result<Value, ApiError> {
    if resource.group != CORE_PODS.group || resource.plural != CORE_PODS.plural || !body.is_object() {
        return Ok(body);
    }
    if is_mirror_pod(&body) {
        validate_mirror_pod(&body)?;
        return Ok(body);
    }
    let Some(namespace) = namespace else { return Ok(body) };
    let spec = match body.get("spec") {
        Some(Value::Object(spec)) => spec,
        // No spec (or not an object): validation has the word.
        _ => return Ok(body),
    };
    let name = named_service_account(spec).unwrap_or(DEFAULT_SERVICE_ACCOUNT).to_owned();
    let Some(service_account) = service_account(registry, namespace, &name).await? else {
        // kube's NamespaceLifecycle admission runs first: a missing namespace is its 404.
        if registry.get(&CORE_NAMESPACES, None, namespace).await.is_err() {
            return Err(ApiError::not_found(&CORE_NAMESPACES, namespace));
        }
        return Err(forbidden(&body, format!("error looking up service account {namespace}/{name}: serviceaccount \"{name}\" not found")));
    };
    if let Some(Value::Object(spec)) = body.get_mut("spec") {
        mutate(spec, &name, &service_account, random_volume_name);
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
