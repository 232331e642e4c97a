//! Controllers that keep the object model the way Kubernetes keeps it:
//! the four bootstrap namespaces exist; every active namespace has a
//! `default` ServiceAccount and a `kube-root-ca.crt` ConfigMap (recreated when
//! deleted, restored when edited); a terminating namespace loses its content
//! (objects held by finalizers are waited for), then its `kubernetes`
//! finalizer, and then disappears.
//!
//! One reconcile loop: a full pass at start and after any watch failure, then
//! one namespace at a time as watch events name it.
//!
//! The [`legacy_tokens`] controller fills ServiceAccount token Secrets; the
//! [`node_lifecycle`] controller takes the pods (and so the tokens) of a
//! node whose heartbeat Lease stopped; the [`garbage_collector`] deletes or
//! orphans dependents through their `ownerReferences`; the [`endpointslice`]
//! controller fills EndpointSlices from the pods each Service selects.
//!
//! Must not depend on: HTTP, authorization.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::{Value, json};
use tessera_api::deletion::{self, DeleteOptions, Deletion, Propagation};
use tessera_api::registry::{ListParams, Preconditions, WriteOptions, WriteScope};
use futures::{StreamExt as _, TryStreamExt as _};
use tessera_api::resource::{CORE_CONFIGMAPS, CORE_NAMESPACES, CORE_SERVICEACCOUNTS, RESOURCES, ResourceInfo, Storage};
use tessera_api::{ApiError, Registry};
use tessera_store::Revision;

pub mod aggregation;
pub mod endpointslice;
mod follow;
pub mod garbage_collector;
pub mod legacy_tokens;
pub mod mesh_trust;
mod namespace_conditions;
pub mod node_lifecycle;

/// Namespaces that always exist.
pub const BOOTSTRAP_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];
/// Name of the ConfigMap holding the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The ServiceAccount whose short-lived tokens let a new node obtain its
/// client certificate (bound to ClusterRole `tessera:node-bootstrapper`).
pub const NODE_BOOTSTRAPPER: (&str, &str) = ("kube-system", "node-bootstrapper");

/// Creates the bootstrap namespaces and the node bootstrapper ServiceAccount
/// (idempotent) and reconciles every namespace once.
pub async fn bootstrap(registry: &Registry, ca_pem: &str) -> Result<Revision, ApiError> {
    for ns in BOOTSTRAP_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match registry.create(&CORE_NAMESPACES, None, body, WriteOptions::default()).await {
            Ok(_) => tracing::info!(namespace = ns, "created bootstrap namespace"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let (ns, name) = NODE_BOOTSTRAPPER;
    let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    match registry.create(&CORE_SERVICEACCOUNTS, Some(ns), body, WriteOptions::default()).await {
        Ok(_) => tracing::info!(namespace = ns, name, "created the node bootstrapper ServiceAccount"),
        Err(e) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    reconcile_all(registry, ca_pem).await
}

/// Reconciles all namespaces; returns the revision the pass started from.
async fn reconcile_all(registry: &Registry, ca_pem: &str) -> Result<Revision, ApiError> {
    let list = registry.list(&CORE_NAMESPACES, None, &ListParams::default()).await?;
    let revision = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    for ns in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
            reconcile_namespace(registry, ca_pem, name).await?;
        }
    }
    Ok(revision)
}

/// Runs the controller until `shutdown` resolves; `after` is the revision
/// of the full pass [`bootstrap`] made.
pub async fn run(registry: Registry, ca_pem: String, after: Revision, shutdown: impl std::future::Future<Output = ()>) {
    let controller = NamespaceController { registry: registry.clone(), ca_pem, terminating: Mutex::default() };
    follow::follow(&registry, &controller, Some(after), shutdown).await;
}

struct NamespaceController {
    registry: Registry,
    ca_pem: String,
    /// Namespaces seen terminating: the deletion of anything in them may
    /// be the last one their finalization waits for.
    terminating: Mutex<HashSet<String>>,
}

impl NamespaceController {
    fn terminating(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // One insert or remove at a time; a panic cannot tear it.
        self.terminating.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn reconcile(&self, namespace: &str) -> Result<(), ApiError> {
        let ns = match self.registry.get(&CORE_NAMESPACES, None, namespace).await {
            Ok(ns) => ns,
            Err(e) if e.code == 404 => {
                self.terminating().remove(namespace);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            self.terminating().insert(namespace.to_owned());
        }
        reconcile_namespace(&self.registry, &self.ca_pem, namespace).await
    }
}

impl follow::Controller for NamespaceController {
    const NAME: &'static str = "namespaces";

    fn prefixes(&self) -> Vec<String> {
        let content = RESOURCES.iter().copied().filter(|r| r.namespaced && r.storage == Storage::Stored);
        std::iter::once(&CORE_NAMESPACES).chain(content).map(|r| r.key_prefix(None)).collect()
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        let list = self.registry.list(&CORE_NAMESPACES, None, &ListParams::default()).await?;
        for ns in list.get("items").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                self.reconcile(name).await?;
            }
        }
        Ok(())
    }

    async fn on_event(&self, event: tessera_store::WatchEvent) -> Result<(), ApiError> {
        let Some(namespace) = namespace_of_key(&event.kv.key) else { return Ok(()) };
        let last_content = event.kind == tessera_store::EventKind::Delete && self.terminating().contains(&namespace);
        if !last_content && !concerns_namespace_controller(&event) {
            return Ok(());
        }
        self.reconcile(&namespace).await
    }
}

/// Only namespace changes, a removed `default` ServiceAccount and a changed
/// `kube-root-ca.crt` need this controller; other ServiceAccount and ConfigMap
/// writes (thousands a second under load) are none of its business.
fn concerns_namespace_controller(event: &tessera_store::WatchEvent) -> bool {
    let key = &event.kv.key;
    if key.starts_with(&CORE_NAMESPACES.key_prefix(None)) {
        return true;
    }
    if key.starts_with(&CORE_SERVICEACCOUNTS.key_prefix(None)) {
        return key.ends_with("/default") && event.kind == tessera_store::EventKind::Delete;
    }
    key.ends_with(&format!("/{ROOT_CA_CONFIGMAP}"))
}

/// `/registry/namespaces/NS` → NS; `/registry/serviceaccounts/NS/x` → NS.
fn namespace_of_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("/registry/")?;
    let mut parts = rest.split('/');
    let resource = parts.next()?;
    let ns = parts.next()?;
    (resource == "namespaces" || parts.next().is_some()).then(|| ns.to_owned())
}

/// Brings one namespace to its desired state.
pub async fn reconcile_namespace(registry: &Registry, ca_pem: &str, namespace: &str) -> Result<(), ApiError> {
    let ns = match registry.get(&CORE_NAMESPACES, None, namespace).await {
        Ok(ns) => ns,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return finish_deletion(registry, namespace).await;
    }
    ensure_default_service_account(registry, namespace).await?;
    ensure_root_ca(registry, ca_pem, namespace).await
}

async fn ensure_default_service_account(registry: &Registry, namespace: &str) -> Result<(), ApiError> {
    let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
    match registry.create(&CORE_SERVICEACCOUNTS, Some(namespace), body, WriteOptions::default()).await {
        Ok(_) => {
            tracing::debug!(namespace, "created default ServiceAccount");
            Ok(())
        }
        // Exists, or the namespace just started terminating / was removed.
        Err(e) if matches!(e.code, 403 | 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn ensure_root_ca(registry: &Registry, ca_pem: &str, namespace: &str) -> Result<(), ApiError> {
    let desired = json!({"ca.crt": ca_pem});
    match registry.get(&CORE_CONFIGMAPS, Some(namespace), ROOT_CA_CONFIGMAP).await {
        Ok(cm) if cm.get("data") == Some(&desired) => Ok(()),
        Ok(mut cm) => {
            if let Some(map) = cm.as_object_mut() {
                map.insert("data".into(), desired);
            }
            match registry.update(&CORE_CONFIGMAPS, Some(namespace), ROOT_CA_CONFIGMAP, cm, WriteOptions::default()).await {
                Ok(_) => Ok(()),
                // A concurrent edit: its watch event brings us back here.
                Err(e) if matches!(e.code, 404 | 409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) if e.code == 404 => {
            let body = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": desired,
            });
            match registry.create(&CORE_CONFIGMAPS, Some(namespace), body, WriteOptions::default()).await {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.code, 403 | 404 | 409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Objects of a terminating namespace listed (and decoded) at a time
/// (small in tests, so that their namespaces span several pages).
const DELETION_PAGE: usize = if cfg!(test) { 50 } else { 500 };
/// Deletes of a terminating namespace's content in flight at once.
const DELETION_CONCURRENCY: usize = 16;

/// Deletes one object of a terminating namespace; returns it when it is
/// still there (held by finalizers, or changed meanwhile).
async fn delete_content(registry: &Registry, resource: &ResourceInfo, namespace: &str, item: Value) -> Result<Option<Value>, ApiError> {
    let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else { return Ok(None) };
    if deletion::is_deleting(&item) {
        return Ok(Some(item));
    }
    let options = DeleteOptions::propagate(Propagation::Background);
    match registry.delete_with(resource, Some(namespace), name, &options, WriteOptions::default()).await {
        Ok(Deletion::Deleted(_)) => Ok(None),
        Ok(Deletion::Pending(obj)) => Ok(Some(obj)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) if e.code == 409 => Ok(Some(item)),
        Err(e) => Err(e),
    }
}

/// Empties a terminating namespace as kube's namespace controller does:
/// every object in it is deleted (background propagation), objects held by
/// finalizers are waited for (their deletion brings the controller back),
/// then the `kubernetes` finalizer leaves `spec.finalizers` and the
/// namespace goes once no `metadata.finalizers` hold it either.
async fn finish_deletion(registry: &Registry, namespace: &str) -> Result<(), ApiError> {
    let mut remaining = namespace_conditions::Remaining::default();
    for resource in RESOURCES.iter().filter(|r| r.namespaced && r.storage == Storage::Stored) {
        // Page by page: one list of a namespace of 50,000 objects holds them
        // all decoded at once, at several times their JSON size.
        let mut continue_token = None;
        loop {
            let params = ListParams { limit: DELETION_PAGE, continue_token: continue_token.take(), ..ListParams::default() };
            let mut list = registry.list(resource, Some(namespace), &params).await?;
            // The next page at the latest revision: what was deleted is gone and
            // nothing new can be created in a terminating namespace, so no snapshot
            // is needed, and a page at the first page's revision made the store read
            // the whole rest of the namespace plus every delete since, for every page
            // (BENCHMARKS.md, issue 14, "What holds the memory").
            continue_token = list.pointer("/metadata/continue").and_then(Value::as_str).filter(|t| !t.is_empty()).map(tessera_api::registry::read::continue_at_latest).transpose()?;
            let items = match list.get_mut("items") {
                Some(Value::Array(items)) => std::mem::take(items),
                _ => Vec::new(),
            };
            // Deletes of one page run together so they share grouped commits.
            let left: Vec<Option<Value>> = futures::stream::iter(items)
                .map(|item| delete_content(registry, resource, namespace, item))
                .buffer_unordered(DELETION_CONCURRENCY)
                .try_collect()
                .await?;
            for obj in left.into_iter().flatten() {
                *remaining.resources.entry(format!("{}.{}", resource.plural, resource.group)).or_default() += 1;
                for f in deletion::finalizers(&obj) {
                    *remaining.finalizers.entry(f).or_default() += 1;
                }
            }
            if continue_token.is_none() {
                break;
            }
        }
    }
    let ns = match registry.get(&CORE_NAMESPACES, None, namespace).await {
        Ok(ns) => ns,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut with_conditions = ns.clone();
    let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string();
    if namespace_conditions::update(&mut with_conditions, &remaining, &now) {
        let options = WriteOptions { scope: WriteScope::Status, ..WriteOptions::default() };
        match registry.update(&CORE_NAMESPACES, None, namespace, with_conditions, options).await {
            Ok(_) => {}
            // A concurrent change: its watch event brings us back.
            Err(e) if matches!(e.code, 404 | 409) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if !remaining.is_empty() {
        tracing::debug!(namespace, ?remaining, "namespace content waits for finalizers");
        return Ok(());
    }
    let ns = match registry.get(&CORE_NAMESPACES, None, namespace).await {
        Ok(ns) => ns,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let spec_finalizers: Vec<Value> = ns.pointer("/spec/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    if spec_finalizers.iter().any(|f| f == "kubernetes") {
        let mut finalized = ns.clone();
        let rest: Vec<Value> = spec_finalizers.into_iter().filter(|f| f != "kubernetes").collect();
        finalized["spec"]["finalizers"] = Value::Array(rest);
        let options = WriteOptions { scope: WriteScope::Finalizers, ..WriteOptions::default() };
        match registry.update(&CORE_NAMESPACES, None, namespace, finalized, options).await {
            Ok(_) => {}
            // A concurrent change: its watch event brings us back.
            Err(e) if matches!(e.code, 404 | 409) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    // With no finalizers left the update above removed it; a namespace that
    // never had the finalizer goes with an ordinary delete.
    match registry.get(&CORE_NAMESPACES, None, namespace).await {
        Ok(ns) if deletion::finalizers(&ns).is_empty() && ns.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty) => {
            match registry.delete(&CORE_NAMESPACES, None, namespace, &Preconditions::default(), WriteOptions::default()).await {
                Ok(_) => {}
                Err(e) if matches!(e.code, 404 | 409) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    tracing::info!(namespace, "namespace deleted");
    Ok(())
}

#[cfg(test)]
mod tests;
