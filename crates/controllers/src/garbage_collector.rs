//! The garbage collector: kube-controller-manager's, for tessera's kinds.
//!
//! - A dependent (an object with `metadata.ownerReferences`) whose owners are
//!   all gone is deleted. An owner is gone when no object of its kind has its
//!   name, or the one that has it has another uid. An owner of a kind tessera
//!   does not serve is never taken as gone (kube keeps retrying the lookup);
//!   a cluster-scoped dependent of a namespaced owner is left alone.
//! - A dependent with a live owner loses its references to gone owners and
//!   to owners deleting in the foreground.
//! - An owner deleting in the foreground (`foregroundDeletion` finalizer) has
//!   its dependents deleted; its finalizer is removed once no dependent with
//!   `blockOwnerDeletion: true` remains, and the owner goes.
//! - An owner deleting with `orphan` loses its dependents: their references
//!   to it are removed, then its finalizer.
//!
//! Driven by one watch of every stored kind (one stream, so events come in
//! revision order) and an index of who depends on whom built from it;
//! whether an owner exists is always checked against the store, as kube's
//! collector checks it against the API. Events are ignored, as in kube.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::Value;
use tessera_api::deletion::{self, DeleteOptions, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation};
use tessera_api::registry::{ListParams, Preconditions, WriteOptions};
use tessera_api::resource::{CORE_EVENTS, RESOURCES, ResourceInfo, Storage};
use tessera_api::{ApiError, Registry};
use tessera_store::{EventKind, WatchEvent};

use crate::follow;

/// Runs the garbage collector until `shutdown` resolves.
pub async fn run(registry: Registry, shutdown: impl std::future::Future<Output = ()>) {
    let gc = GarbageCollector { registry: registry.clone(), index: Mutex::default() };
    follow::follow(&registry, &gc, None, shutdown).await;
}

/// One `ownerReferences` entry, as the collector needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerRef {
    uid: String,
    blocks: bool,
}

/// Who depends on whom, from the watch. Keys are store keys.
#[derive(Debug, Default)]
struct Index {
    /// Objects with owner references: their owners.
    owners_of: HashMap<String, Vec<OwnerRef>>,
    /// Owner uid → keys of its dependents.
    dependents_of: HashMap<String, BTreeSet<String>>,
    /// uid → key of objects deleting in the foreground.
    foreground: HashMap<String, String>,
}

impl Index {
    /// Records an object's owners; returns the previous ones.
    fn set_owners(&mut self, key: &str, owners: Vec<OwnerRef>) -> Vec<OwnerRef> {
        let old = if owners.is_empty() { self.owners_of.remove(key) } else { self.owners_of.insert(key.to_owned(), owners.clone()) }
            .unwrap_or_default();
        for o in &old {
            if let Some(set) = self.dependents_of.get_mut(&o.uid) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents_of.remove(&o.uid);
                }
            }
        }
        for o in &owners {
            self.dependents_of.entry(o.uid.clone()).or_default().insert(key.to_owned());
        }
        old
    }

    fn dependents(&self, uid: &str) -> Vec<String> {
        self.dependents_of.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Dependents that hold `uid`'s deletion (`blockOwnerDeletion: true`).
    fn blocking(&self, uid: &str) -> Vec<String> {
        self.dependents(uid)
            .into_iter()
            .filter(|k| self.owners_of.get(k).is_some_and(|refs| refs.iter().any(|r| r.uid == uid && r.blocks)))
            .collect()
    }
}

struct GarbageCollector {
    registry: Registry,
    index: Mutex<Index>,
}

/// The kinds the collector follows: every stored kind but events.
fn followed() -> impl Iterator<Item = &'static ResourceInfo> {
    RESOURCES.iter().copied().filter(|r| r.storage == Storage::Stored && !std::ptr::eq(*r, &CORE_EVENTS))
}

/// A store key as (kind, namespace, name).
fn parse_key(key: &str) -> Option<(&'static ResourceInfo, Option<&str>, &str)> {
    followed().find_map(|r| {
        let rest = key.strip_prefix(&r.key_prefix(None))?;
        match (r.namespaced, rest.split_once('/')) {
            (true, Some((ns, name))) if !name.contains('/') => Some((r, Some(ns), name)),
            (false, None) => Some((r, None, rest)),
            _ => None,
        }
    })
}

fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let uid = r.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty())?;
            Some(OwnerRef { uid: uid.to_owned(), blocks: r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) })
        })
        .collect()
}

fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    deletion::finalizers(obj).iter().any(|f| f == name)
}

/// 404 and 409 mean someone else changed the object first; the watch brings
/// the change back here.
fn benign(result: Result<(), ApiError>) -> Result<(), ApiError> {
    match result {
        Err(e) if matches!(e.code, 404 | 409) => Ok(()),
        other => other,
    }
}

/// How an owner reference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Exists and is not deleting its dependents first.
    Solid,
    /// Gone (or replaced by an object with another uid).
    Dangling,
    /// Deleting in the foreground: waits for its dependents.
    Waiting,
    /// Cannot be resolved (unknown kind, namespaced owner of a cluster-scoped object).
    Unknown,
}

impl GarbageCollector {
    async fn classify(&self, dependent: &ResourceInfo, namespace: Option<&str>, reference: &Value) -> Result<Owner, ApiError> {
        let text = |f: &str| reference.get(f).and_then(Value::as_str).unwrap_or_default();
        let Some(kind) = followed().find(|r| r.api_version() == text("apiVersion") && r.kind == text("kind")) else {
            tracing::debug!(api_version = text("apiVersion"), kind = text("kind"), "owner of a kind not served; left alone");
            return Ok(Owner::Unknown);
        };
        if kind.namespaced && !dependent.namespaced {
            return Ok(Owner::Unknown);
        }
        let namespace = if kind.namespaced { namespace } else { None };
        match self.registry.get(kind, namespace, text("name")).await {
            Ok(owner) if uid_of(&owner) != text("uid") => Ok(Owner::Dangling),
            Ok(owner) if deletion::is_deleting(&owner) && has_finalizer(&owner, FOREGROUND_FINALIZER) => Ok(Owner::Waiting),
            Ok(_) => Ok(Owner::Solid),
            Err(e) if e.code == 404 => Ok(Owner::Dangling),
            Err(e) => Err(e),
        }
    }

    /// kube's `attemptToDeleteItem` for one dependent.
    async fn attempt_to_delete(&self, key: &str) -> Result<(), ApiError> {
        let Some((resource, namespace, name)) = parse_key(key) else { return Ok(()) };
        let obj = match self.registry.get(resource, namespace, name).await {
            Ok(obj) => obj,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        // Being deleted is a one-way trip; its own events drive the rest.
        if deletion::is_deleting(&obj) {
            return Ok(());
        }
        let refs: Vec<Value> = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }
        let mut states = Vec::with_capacity(refs.len());
        for r in &refs {
            states.push(self.classify(resource, namespace, r).await?);
        }
        if states.contains(&Owner::Unknown) && !states.contains(&Owner::Solid) {
            return Ok(());
        }
        let uid = uid_of(&obj).to_owned();
        if states.contains(&Owner::Solid) {
            let drop: BTreeSet<String> = refs
                .iter()
                .zip(&states)
                .filter(|(_, s)| matches!(s, Owner::Dangling | Owner::Waiting))
                .filter_map(|(r, _)| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                .collect();
            if drop.is_empty() {
                return Ok(());
            }
            tracing::debug!(key, ?drop, "removing references to gone owners");
            return self.remove_owner_refs(resource, namespace, name, &uid, &drop).await;
        }
        let has_dependents = !self.index().dependents(&uid).is_empty();
        let policy = if states.contains(&Owner::Waiting) && has_dependents {
            Propagation::Foreground
        } else if has_finalizer(&obj, ORPHAN_FINALIZER) {
            Propagation::Orphan
        } else if has_finalizer(&obj, FOREGROUND_FINALIZER) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        tracing::info!(key, ?policy, "deleting a dependent whose owners are gone");
        let options = DeleteOptions {
            preconditions: Preconditions { uid: Some(uid), resource_version: None },
            ..DeleteOptions::propagate(policy)
        };
        benign(self.registry.delete_with(resource, namespace, name, &options, WriteOptions::default()).await.map(|_| ()))
    }

    /// An owner being deleted with `orphan` or `foregroundDeletion`.
    async fn process_owner(&self, key: &str) -> Result<(), ApiError> {
        let Some((resource, namespace, name)) = parse_key(key) else { return Ok(()) };
        let owner = match self.registry.get(resource, namespace, name).await {
            Ok(obj) => obj,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        if !deletion::is_deleting(&owner) {
            return Ok(());
        }
        let uid = uid_of(&owner).to_owned();
        if has_finalizer(&owner, ORPHAN_FINALIZER) {
            let only = BTreeSet::from([uid.clone()]);
            let dependents = self.index().dependents(&uid);
            for dependent in dependents {
                let Some((r, ns, n)) = parse_key(&dependent) else { continue };
                let dep_uid = match self.registry.get(r, ns, n).await {
                    Ok(d) => uid_of(&d).to_owned(),
                    Err(e) if e.code == 404 => continue,
                    Err(e) => return Err(e),
                };
                self.remove_owner_refs(r, ns, n, &dep_uid, &only).await?;
            }
            tracing::info!(key, "dependents orphaned");
            return self.remove_finalizer(resource, namespace, name, &uid, ORPHAN_FINALIZER).await;
        }
        if has_finalizer(&owner, FOREGROUND_FINALIZER) {
            let blocking = self.index().blocking(&uid);
            if blocking.is_empty() {
                tracing::info!(key, "no dependent blocks the foreground deletion any more");
                return self.remove_finalizer(resource, namespace, name, &uid, FOREGROUND_FINALIZER).await;
            }
            let dependents = self.index().dependents(&uid);
            for dependent in dependents {
                self.attempt_to_delete(&dependent).await?;
            }
        }
        Ok(())
    }

    async fn remove_owner_refs(&self, resource: &ResourceInfo, ns: Option<&str>, name: &str, uid: &str, owners: &BTreeSet<String>) -> Result<(), ApiError> {
        self.update_fresh(resource, ns, name, uid, |obj| {
            let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return false };
            let Some(Value::Array(refs)) = meta.get_mut("ownerReferences") else { return false };
            let before = refs.len();
            refs.retain(|r| r.get("uid").and_then(Value::as_str).is_none_or(|u| !owners.contains(u)));
            let changed = refs.len() != before;
            if refs.is_empty() {
                meta.remove("ownerReferences");
            }
            changed
        })
        .await
    }

    async fn remove_finalizer(&self, resource: &ResourceInfo, ns: Option<&str>, name: &str, uid: &str, finalizer: &str) -> Result<(), ApiError> {
        self.update_fresh(resource, ns, name, uid, |obj| {
            let Some(Value::Array(list)) = obj.pointer_mut("/metadata/finalizers") else { return false };
            let before = list.len();
            list.retain(|f| f.as_str() != Some(finalizer));
            list.len() != before
        })
        .await
    }

    /// Read-modify-write of the object with this uid, retried on conflict.
    async fn update_fresh(&self, resource: &ResourceInfo, ns: Option<&str>, name: &str, uid: &str, change: impl Fn(&mut Value) -> bool) -> Result<(), ApiError> {
        for _attempt in 0..8 {
            let mut obj = match self.registry.get(resource, ns, name).await {
                Ok(obj) if uid_of(&obj) == uid => obj,
                Ok(_) => return Ok(()),
                Err(e) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e),
            };
            if !change(&mut obj) {
                return Ok(());
            }
            match self.registry.update(resource, ns, name, obj, WriteOptions::default()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => continue,
                Err(e) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // Every change is a handful of map writes; a panic cannot tear it.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl follow::Controller for GarbageCollector {
    const NAME: &'static str = "garbage-collector";

    fn prefixes(&self) -> Vec<String> {
        // One stream: events arrive in revision order, so the index is always
        // the state at some revision.
        vec!["/registry/".to_owned()]
    }

    async fn full_pass(&self) -> Result<(), ApiError> {
        let mut fresh = Index::default();
        let mut owners = Vec::new();
        for resource in followed() {
            let list = self.registry.list(resource, None, &ListParams::default()).await?;
            for obj in list.get("items").and_then(Value::as_array).into_iter().flatten() {
                let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                let key = resource.key(ns, name);
                fresh.set_owners(&key, owner_refs(obj));
                if deletion::is_deleting(obj) {
                    if has_finalizer(obj, FOREGROUND_FINALIZER) {
                        fresh.foreground.insert(uid_of(obj).to_owned(), key.clone());
                    }
                    if has_finalizer(obj, FOREGROUND_FINALIZER) || has_finalizer(obj, ORPHAN_FINALIZER) {
                        owners.push(key);
                    }
                }
            }
        }
        let dependents: Vec<String> = fresh.owners_of.keys().cloned().collect();
        *self.index() = fresh;
        for key in owners {
            self.process_owner(&key).await?;
        }
        for key in dependents {
            self.attempt_to_delete(&key).await?;
        }
        Ok(())
    }

    async fn on_event(&self, event: WatchEvent) -> Result<(), ApiError> {
        let key = event.kv.key.as_str();
        if parse_key(key).is_none() {
            return Ok(());
        }
        let value = &event.kv.value;
        if event.kind != EventKind::Delete {
            let mentions = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
            let tracked = self.index().owners_of.contains_key(key);
            if !tracked && !mentions(b"ownerReferences") && !mentions(b"deletionTimestamp") {
                return Ok(());
            }
        }
        let Ok(obj) = serde_json::from_slice::<Value>(value) else { return Ok(()) };
        let uid = uid_of(&obj).to_owned();
        if event.kind == EventKind::Delete {
            let (old, waiting_owners, dependents) = {
                let mut index = self.index();
                let old = index.set_owners(key, Vec::new());
                index.foreground.remove(&uid);
                let waiting: Vec<String> = old.iter().filter_map(|o| index.foreground.get(&o.uid).cloned()).collect();
                (old, waiting, index.dependents(&uid))
            };
            drop(old);
            for owner in waiting_owners {
                self.process_owner(&owner).await?;
            }
            for dependent in dependents {
                self.attempt_to_delete(&dependent).await?;
            }
            return Ok(());
        }
        let refs = owner_refs(&obj);
        let deleting = deletion::is_deleting(&obj);
        let (changed, waiting_owners) = {
            let mut index = self.index();
            if deleting && has_finalizer(&obj, FOREGROUND_FINALIZER) {
                index.foreground.insert(uid.clone(), key.to_owned());
            } else {
                index.foreground.remove(&uid);
            }
            let old = index.set_owners(key, refs.clone());
            let changed = old != refs;
            let waiting: Vec<String> = if changed {
                old.iter().chain(&refs).filter_map(|o| index.foreground.get(&o.uid).cloned()).collect::<BTreeSet<_>>().into_iter().collect()
            } else {
                Vec::new()
            };
            (changed, waiting)
        };
        for owner in waiting_owners {
            self.process_owner(&owner).await?;
        }
        if changed && !refs.is_empty() {
            self.attempt_to_delete(key).await?;
        }
        if deleting && (has_finalizer(&obj, FOREGROUND_FINALIZER) || has_finalizer(&obj, ORPHAN_FINALIZER)) {
            self.process_owner(key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
