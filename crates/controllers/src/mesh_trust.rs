//! Read access to the mesh trust bundle: in the identity control-plane
//! namespace (the server's `--identity-control-namespace`), the Role and
//! RoleBinding `tessera:identity-trust-roots` let every pod's token
//! (`system:serviceaccounts`) and every node (`system:nodes`) get, list and
//! watch the one ConfigMap `tessera-identity-trust-roots`, and nothing else
//! there. The namespace is the operator's (Linkerd's install creates it), so
//! the objects are created when it exists and restored if edited or removed,
//! as the bootstrap ClusterRoles are (unless annotated `autoupdate: "false"`).

use serde_json::{Value, json};
use tessera_api::registry::WriteOptions;
use tessera_api::resource::{CORE_NAMESPACES, RBAC_ROLEBINDINGS, RBAC_ROLES, ResourceInfo};
use tessera_api::{ApiError, Registry};
use tessera_rbac::bootstrap;

/// Name of the Role and the RoleBinding.
pub const NAME: &str = "tessera:identity-trust-roots";
/// The trust bundle ConfigMap they grant access to.
pub const CONFIGMAP: &str = "tessera-identity-trust-roots";

fn metadata() -> Value {
    json!({
        "name": NAME,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {bootstrap::AUTOUPDATE_ANNOTATION: "true"},
    })
}

/// The Role: get/list/watch of the bundle ConfigMap only.
pub fn role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIGMAP], "verbs": ["get", "list", "watch"]}],
    })
}

/// The RoleBinding to every ServiceAccount and every node.
pub fn role_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:serviceaccounts"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"},
        ],
    })
}

/// Creates the object, or sets `field` back to the wanted value when it
/// drifted and the object may still be updated.
async fn ensure_one(registry: &Registry, resource: &ResourceInfo, namespace: &str, wanted: Value, field: &str) -> Result<(), ApiError> {
    match registry.get(resource, Some(namespace), NAME).await {
        // The namespace may be going away or gone: nothing to hold access to.
        Err(e) if e.code == 404 => match registry.create(resource, Some(namespace), wanted, WriteOptions::default()).await {
            Ok(_) => {
                tracing::info!(namespace, kind = resource.kind, name = NAME, "created the trust bundle's read access");
                Ok(())
            }
            Err(e) if matches!(e.code, 403 | 404 | 409) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
        Ok(existing) if !bootstrap::may_update(&existing) || existing.get(field) == wanted.get(field) => Ok(()),
        Ok(existing) => {
            let mut next = existing;
            next[field] = wanted[field].clone();
            match registry.update(resource, Some(namespace), NAME, next, WriteOptions::default()).await {
                Ok(_) | Err(ApiError { code: 404 | 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Brings the Role and RoleBinding in `namespace` to their desired state,
/// when the namespace exists and is not terminating.
pub async fn ensure(registry: &Registry, namespace: &str) -> Result<(), ApiError> {
    match registry.get(&CORE_NAMESPACES, None, namespace).await {
        Ok(ns) if ns.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating") => {}
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    ensure_one(registry, &RBAC_ROLES, namespace, role(), "rules").await?;
    ensure_one(registry, &RBAC_ROLEBINDINGS, namespace, role_binding(), "subjects").await
}

/// Keeps the access in the control namespace until `shutdown`.
pub async fn run(registry: Registry, namespace: String, shutdown: impl std::future::Future<Output = ()>) {
    let controller = TrustAccess { registry: registry.clone(), namespace };
    crate::follow::follow(&registry, &controller, None, shutdown).await;
}

struct TrustAccess {
    registry: Registry,
    namespace: String,
}

impl crate::follow::Controller for TrustAccess {
    const NAME: &'static str = "mesh-trust-access";

    fn prefixes(&self) -> Vec<String> {
        [&CORE_NAMESPACES, &RBAC_ROLES, &RBAC_ROLEBINDINGS].iter().map(|r| r.key_prefix(None)).collect()
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        ensure(&self.registry, &self.namespace).await
    }

    async fn on_event(&self, event: tessera_store::WatchEvent) -> Result<(), ApiError> {
        let key = &event.kv.key;
        let ns = Some(self.namespace.as_str());
        if *key == CORE_NAMESPACES.key(None, &self.namespace) || *key == RBAC_ROLES.key(ns, NAME) || *key == RBAC_ROLEBINDINGS.key(ns, NAME) {
            ensure(&self.registry, &self.namespace).await?;
        }
        Ok(())
    }
}
