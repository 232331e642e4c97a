//! RBAC bootstrap and aggregation: the default ClusterRoles and
//! ClusterRoleBindings are reconciled on start (missing permissions and
//! subjects added, never removed, and never on objects whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is `"false"`), and
//! every ClusterRole with an `aggregationRule` keeps the union of the rules of
//! the ClusterRoles its selectors match.

use serde_json::{Value, json};
use tessera_api::registry::{ListParams, WriteOptions};
use tessera_api::resource::{RBAC_CLUSTERROLEBINDINGS, RBAC_CLUSTERROLES, ResourceInfo};
use tessera_api::{ApiError, Registry};
use tessera_rbac::authorizer::aggregated_rules;
use tessera_rbac::policy::Role;
use tessera_rbac::{Policy, PolicyRule, bootstrap};

/// Union of two JSON arrays, keeping the order of `current` and appending what is missing.
fn union(current: Option<&Value>, wanted: Option<&Value>) -> Value {
    let mut out: Vec<Value> = current.and_then(Value::as_array).cloned().unwrap_or_default();
    for item in wanted.and_then(Value::as_array).into_iter().flatten() {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    Value::Array(out)
}

async fn reconcile_one(registry: &Registry, resource: &ResourceInfo, wanted: Value, field: &str) -> Result<(), ApiError> {
    let name = wanted.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    match registry.get(resource, None, &name).await {
        Err(e) if e.code == 404 => match registry.create(resource, None, wanted, WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
        Ok(existing) if !bootstrap::may_update(&existing) => Ok(()),
        Ok(existing) => {
            let mut next = existing.clone();
            next[field] = union(existing.get(field), wanted.get(field));
            if field == "rules" && wanted.get("aggregationRule").is_some() && existing.get("aggregationRule").is_none() {
                next["aggregationRule"] = wanted["aggregationRule"].clone();
            }
            for section in ["labels", "annotations"] {
                if let Some(map) = wanted.pointer(&format!("/metadata/{section}")).and_then(Value::as_object) {
                    for (k, v) in map {
                        if next["metadata"][section].get(k).is_none() {
                            next["metadata"][section][k] = v.clone();
                        }
                    }
                }
            }
            if next == existing {
                return Ok(());
            }
            match registry.update(resource, None, &name, next, WriteOptions::default()).await {
                Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Creates or completes the bootstrap ClusterRoles and ClusterRoleBindings.
pub async fn reconcile_bootstrap_policy(registry: &Registry) -> Result<(), ApiError> {
    for role in bootstrap::cluster_roles() {
        reconcile_one(registry, &RBAC_CLUSTERROLES, role, "rules").await?;
    }
    for binding in bootstrap::cluster_role_bindings() {
        reconcile_one(registry, &RBAC_CLUSTERROLEBINDINGS, binding, "subjects").await?;
    }
    aggregate_all(registry).await
}

/// Recomputes every aggregating ClusterRole once.
pub async fn aggregate_all(registry: &Registry) -> Result<(), ApiError> {
    let list = registry.list(&RBAC_CLUSTERROLES, None, &ListParams::default()).await?;
    let mut policy = Policy::default();
    let mut objects = Vec::new();
    for item in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        if let Ok(role) = Role::from_object(item) {
            policy.put_cluster_role(role);
            objects.push(item.clone());
        }
    }
    for obj in objects.iter().filter(|o| o.get("aggregationRule").is_some_and(|a| !a.is_null())) {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let Some(rules) = aggregated_rules(&policy, name) else { continue };
        let current: Vec<PolicyRule> = serde_json::from_value(obj.get("rules").cloned().unwrap_or(json!([]))).unwrap_or_default();
        // Compare as sets: keep the stored order when nothing changed.
        let same = current.len() == rules.len() && current.iter().all(|r| rules.contains(r));
        if same {
            continue;
        }
        let mut next = obj.clone();
        next["rules"] = serde_json::to_value(&rules).unwrap_or(json!([]));
        match registry.update(&RBAC_CLUSTERROLES, None, name, next, WriteOptions::default()).await {
            Ok(_) => tracing::info!(clusterrole = name, rules = rules.len(), "aggregated rules updated"),
            // A concurrent edit: its watch event brings us back.
            Err(e) if matches!(e.code, 404 | 409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keeps aggregated ClusterRoles current until `shutdown`.
pub async fn run(registry: Registry, shutdown: impl std::future::Future<Output = ()>) {
    let controller = Aggregation { registry: registry.clone() };
    crate::follow::follow(&registry, &controller, None, shutdown).await;
}

struct Aggregation {
    registry: Registry,
}

impl crate::follow::Controller for Aggregation {
    const NAME: &'static str = "rbac-aggregation";

    fn prefixes(&self) -> Vec<String> {
        vec![RBAC_CLUSTERROLES.key_prefix(None)]
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        aggregate_all(&self.registry).await
    }

    async fn on_event(&self, _event: tessera_store::WatchEvent) -> Result<(), ApiError> {
        aggregate_all(&self.registry).await
    }
}
