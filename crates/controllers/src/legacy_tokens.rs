//! The legacy token controller: fills `kubernetes.io/service-account-token`
//! Secrets with a non-expiring token, `ca.crt` and `namespace`, and deletes
//! such Secrets when their ServiceAccount is gone (so their tokens stop
//! working), as kube-controller-manager's tokens controller does.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tessera_api::registry::{ListParams, Preconditions, WriteOptions};
use tessera_api::resource::{CORE_SECRETS, CORE_SERVICEACCOUNTS};
use tessera_api::{ApiError, Registry};
use tessera_authn::token::TokenAuthority;
use tessera_store::EventKind;

/// The Secret type this controller manages.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the ServiceAccount.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Annotation recording the ServiceAccount uid.
pub const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

fn b64(s: &str) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(s))
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
}

/// Brings one token Secret to its desired state.
pub async fn reconcile_secret(registry: &Registry, authority: &TokenAuthority, ca_pem: &str, namespace: &str, name: &str) -> Result<(), ApiError> {
    let secret = match registry.get(&CORE_SECRETS, Some(namespace), name).await {
        Ok(s) => s,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if secret.get("type").and_then(Value::as_str) != Some(TOKEN_SECRET_TYPE) {
        return Ok(());
    }
    let Some(sa_name) = annotation(&secret, SA_NAME_ANNOTATION).map(str::to_owned) else { return Ok(()) };
    let sa = match registry.get(&CORE_SERVICEACCOUNTS, Some(namespace), &sa_name).await {
        Ok(sa) => sa,
        Err(e) if e.code == 404 => {
            tracing::info!(namespace, secret = name, service_account = sa_name, "deleting token Secret of a missing ServiceAccount");
            return delete_quietly(registry, namespace, name).await;
        }
        Err(e) => return Err(e),
    };
    let uid = sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
    match annotation(&secret, SA_UID_ANNOTATION) {
        // The Secret was made for an earlier ServiceAccount of that name.
        Some(recorded) if recorded != uid => return delete_quietly(registry, namespace, name).await,
        Some(_) if secret.pointer("/data/token").is_some() => return Ok(()),
        _ => {}
    }
    let token = authority.issue_legacy(namespace, &sa_name, &uid, name).map_err(|e| {
        tracing::error!(error = %e, "signing a legacy token failed");
        ApiError::internal("failed to sign a token")
    })?;
    let mut next = secret.clone();
    next["metadata"]["annotations"][SA_UID_ANNOTATION] = json!(uid);
    if !next["data"].is_object() {
        next["data"] = json!({});
    }
    next["data"]["token"] = b64(&token);
    next["data"]["ca.crt"] = b64(ca_pem);
    next["data"]["namespace"] = b64(namespace);
    match registry.update(&CORE_SECRETS, Some(namespace), name, next, WriteOptions::default()).await {
        Ok(_) => Ok(()),
        // Changed or deleted meanwhile: its watch event brings us back.
        Err(e) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_quietly(registry: &Registry, namespace: &str, name: &str) -> Result<(), ApiError> {
    match registry.delete(&CORE_SECRETS, Some(namespace), name, &Preconditions::default(), WriteOptions::default()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn reconcile_namespace(registry: &Registry, authority: &TokenAuthority, ca_pem: &str, namespace: &str) -> Result<(), ApiError> {
    let list = registry.list(&CORE_SECRETS, Some(namespace), &ListParams::default()).await?;
    for secret in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        if secret.get("type").and_then(Value::as_str) == Some(TOKEN_SECRET_TYPE)
            && let Some(name) = secret.pointer("/metadata/name").and_then(Value::as_str)
        {
            reconcile_secret(registry, authority, ca_pem, namespace, name).await?;
        }
    }
    Ok(())
}

/// Reconciles the token Secrets of one ServiceAccount (after it was created or deleted).
async fn reconcile_service_account(registry: &Registry, authority: &TokenAuthority, ca_pem: &str, namespace: &str, service_account: &str) -> Result<(), ApiError> {
    let list = registry.list(&CORE_SECRETS, Some(namespace), &ListParams::default()).await?;
    for secret in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        if secret.get("type").and_then(Value::as_str) == Some(TOKEN_SECRET_TYPE)
            && annotation(secret, SA_NAME_ANNOTATION) == Some(service_account)
            && let Some(name) = secret.pointer("/metadata/name").and_then(Value::as_str)
        {
            reconcile_secret(registry, authority, ca_pem, namespace, name).await?;
        }
    }
    Ok(())
}

fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.strip_prefix("/registry/")?.splitn(3, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// Runs until `shutdown`.
pub async fn run(registry: Registry, authority: Arc<TokenAuthority>, ca_pem: String, shutdown: impl std::future::Future<Output = ()>) {
    let controller = LegacyTokenController { registry: registry.clone(), authority, ca_pem };
    crate::follow::follow(&registry, &controller, None, shutdown).await;
}

struct LegacyTokenController {
    registry: Registry,
    authority: Arc<TokenAuthority>,
    ca_pem: String,
}

impl crate::follow::Controller for LegacyTokenController {
    const NAME: &'static str = "legacy-tokens";

    fn prefixes(&self) -> Vec<String> {
        vec![CORE_SECRETS.key_prefix(None), CORE_SERVICEACCOUNTS.key_prefix(None)]
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        let namespaces = self.registry.list(&tessera_api::resource::CORE_NAMESPACES, None, &ListParams::default()).await?;
        for ns in namespaces.get("items").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                reconcile_namespace(&self.registry, &self.authority, &self.ca_pem, name).await?;
            }
        }
        Ok(())
    }

    async fn on_event(&self, event: tessera_store::WatchEvent) -> Result<(), ApiError> {
        let Some((resource, namespace, name)) = split_key(&event.kv.key) else { return Ok(()) };
        let (registry, authority, ca_pem) = (&self.registry, &self.authority, &self.ca_pem);
        match (resource, &event.kind) {
            ("secrets", EventKind::Delete) => Ok(()),
            ("secrets", _) => reconcile_secret(registry, authority, ca_pem, namespace, name).await,
            // Deleting (or re-creating under the same name) a ServiceAccount affects the
            // token Secrets that name it; its other updates do not.
            (_, EventKind::Update) => Ok(()),
            _ => reconcile_service_account(registry, authority, ca_pem, namespace, name).await,
        }
    }
}
