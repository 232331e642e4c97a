//! The registry: Kubernetes object semantics on top of a [`Store`].
//!
//! It owns everything between a decoded request and the store: metadata
//! (uid, creationTimestamp, resourceVersion, generateName), namespace existence
//! and termination, defaulting, validation, optimistic concurrency, list paging
//! with selectors, and watch event conversion.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tessera_store::{self as store, EventKind, ListOptions, Revision, Store};

use crate::kinds;
use crate::patch::Patch;
use crate::resource::{CORE_NAMESPACES, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Result};

/// A last check of an object about to be written (`old` is the version it
/// replaces): the server uses it for checks that depend on who is writing,
/// such as RBAC escalation prevention.
pub type Admit = Arc<dyn Fn(&ResourceInfo, Option<&Value>, &Value) -> Result<()> + Send + Sync>;

/// A last check of an object about to be deleted (the stored version the
/// delete is pinned to), such as a node deleting only its own pods.
pub type AdmitDelete = Arc<dyn Fn(&ResourceInfo, &Value) -> Result<()> + Send + Sync>;

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteScope {
    /// The object (its `status` is kept when the kind has a status subresource).
    #[default]
    Object,
    /// Only `status` (the `status` subresource).
    Status,
    /// Only `spec.finalizers` (a namespace's `finalize` subresource).
    Finalizers,
}

/// Options shared by writes.
#[derive(Clone, Default)]
pub struct WriteOptions {
    /// What the write may change.
    pub scope: WriteScope,
    /// `dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error.
    pub strict: bool,
    /// Admission check run after validation, before storing.
    pub admit: Option<Admit>,
    /// Admission check of a delete, run on the version the delete is pinned to.
    pub admit_delete: Option<AdmitDelete>,
    /// The field manager recorded in `metadata.managedFields` (`None`: not tracked).
    pub field_manager: Option<String>,
    /// `force` of an apply: take conflicting fields from their managers.
    pub force: bool,
    /// The write carries managedFields computed by server-side apply (set by
    /// the registry's apply itself; callers leave it `false`).
    pub applied: bool,
}

impl std::fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOptions")
            .field("dry_run", &self.dry_run)
            .field("strict", &self.strict)
            .field("scope", &self.scope)
            .field("admit", &self.admit.is_some())
            .field("admit_delete", &self.admit_delete.is_some())
            .field("field_manager", &self.field_manager)
            .field("force", &self.force)
            .finish()
    }
}

/// Preconditions of a delete (from `DeleteOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// Required uid.
    pub uid: Option<String>,
    /// Required resourceVersion.
    pub resource_version: Option<String>,
}

/// Parsed list/watch query parameters.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0 = all).
    pub limit: usize,
    /// `continue` token.
    pub continue_token: Option<String>,
    /// `resourceVersion` (for watch: start after it).
    pub resource_version: Option<String>,
}

/// One event of a watch, as sent on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub type_: &'static str,
    /// The object (a Status for `ERROR`).
    pub object: Value,
}

/// The object store with Kubernetes semantics.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

/// Maps store errors that reach the API without a more specific meaning.
fn storage_error(err: store::Error) -> ApiError {
    tracing::error!(error = %err, "storage failure");
    match err {
        store::Error::Compacted { requested, compacted } => {
            ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
        }
        _ => ApiError::internal("storage is unavailable; see server logs"),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>> {
    let map = obj.as_object_mut().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    meta.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

/// Decodes a stored value and sets its resourceVersion.
fn from_store(value: &[u8], revision: Revision) -> Result<Value> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|e| {
        tracing::error!(error = %e, "stored object is not JSON");
        ApiError::internal("stored object is corrupt; see server logs")
    })?;
    meta_mut(&mut obj)?.insert("resourceVersion".into(), Value::String(revision.to_string()));
    Ok(obj)
}

fn to_store(obj: &Value) -> Result<Bytes> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map(Bytes::from).map_err(|e| ApiError::internal(e.to_string()))
}

fn parse_rv(rv: &str) -> Result<Revision> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// The continue token kube-apiserver uses: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"key-after-prefix"}`.
fn encode_continue(revision: Revision, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<String> {
    let bad = || ApiError::bad_request("continue key is not valid: the format of the continue token is unrecognized");
    let raw = base64::engine::general_purpose::URL_SAFE.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad());
    }
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    // The token's start key is the next key to return; we page with "strictly after".
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok(start.to_owned())
}

const GENERATE_NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..5).map(|_| GENERATE_NAME_ALPHABET[rng.random_range(0..GENERATE_NAME_ALPHABET.len())] as char).collect()
}

// === impl Registry ===

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn namespace_of<'a>(resource: &ResourceInfo, namespace: Option<&'a str>) -> Option<&'a str> {
        if resource.namespaced { namespace } else { None }
    }

    /// Reads one object.
    pub async fn get(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<Value> {
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        match self.store.get(&key).await.map_err(storage_error)? {
            Some(kv) => from_store(&kv.value, kv.mod_revision),
            None => Err(ApiError::not_found(resource, name)),
        }
    }

    /// Decodes a body for `resource` through its typed struct, filling in
    /// apiVersion/kind and refusing mismatched ones (and, with `strict`, unknown fields).
    pub fn normalise(&self, resource: &ResourceInfo, mut body: Value, strict: bool) -> Result<Value> {
        let map = body.as_object_mut().ok_or_else(|| {
            ApiError::bad_request(format!("the object provided is unrecognized (must be of type {})", resource.kind))
        })?;
        let api_version = resource.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), Value::String(api_version));
            }
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), Value::String(resource.kind.to_owned()));
            }
            Some(k) if k == resource.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the object provided is unrecognized (must be of type {}): kind {k} does not match",
                    resource.kind
                )));
            }
        }
        resource.decode(body, strict).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    async fn check_namespace_open(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<()> {
        let Some(ns) = Self::namespace_of(resource, namespace) else { return Ok(()) };
        let Ok(namespace) = self.get(&CORE_NAMESPACES, None, ns).await else {
            return Err(ApiError::not_found(&CORE_NAMESPACES, ns));
        };
        if namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            return Err(ApiError::forbidden(
                resource.plural,
                resource.group,
                name,
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    resource.qualified_plural()
                ),
            ));
        }
        Ok(())
    }

    fn reject_invalid(resource: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<()> {
        let causes = kinds::validate(resource, obj, old);
        if causes.is_empty() {
            return Ok(());
        }
        let name = meta_str(obj, "name").unwrap_or_default();
        Err(ApiError::invalid(resource.kind, resource.group, name, causes))
    }

    /// Creates an object in `namespace` (ignored for cluster-scoped kinds).
    pub async fn create(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        body: Value,
        options: WriteOptions,
    ) -> Result<Value> {
        let namespace = Self::namespace_of(resource, namespace);
        let mut obj = self.normalise(resource, body, options.strict)?;
        let client_managed;
        {
            let meta = meta_mut(&mut obj)?;
            match (meta.get("namespace").and_then(Value::as_str), namespace) {
                (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            match namespace {
                Some(ns) => meta.insert("namespace".into(), Value::String(ns.to_owned())),
                None => meta.remove("namespace"),
            };
            let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if !has_name
                && let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty())
            {
                let name = format!("{prefix}{}", generate_suffix());
                meta.insert("name".into(), Value::String(name));
            }
            meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            client_managed = meta.remove("managedFields");
            if resource.plural == "pods" {
                meta.insert("generation".into(), json!(1));
            }
        }
        kinds::default_object(resource, &mut obj);
        track_fields(resource, &options, None, client_managed.as_ref(), &mut obj)?;
        Self::reject_invalid(resource, &obj, None)?;
        if let Some(admit) = &options.admit {
            admit(resource, None, &obj)?;
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        self.check_namespace_open(resource, namespace, &name).await?;
        let key = resource.key(namespace, &name);
        if options.dry_run {
            if self.store.get(&key).await.map_err(storage_error)?.is_some() {
                return Err(ApiError::already_exists(resource, &name));
            }
            return Ok(obj);
        }
        match self.store.create(&key, to_store(&obj)?).await {
            Ok(kv) => from_store(&kv.value, kv.mod_revision),
            Err(store::Error::AlreadyExists(_)) => Err(ApiError::already_exists(resource, &name)),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Replaces an object (PUT). A non-empty `metadata.resourceVersion` must match the stored one.
    pub async fn update(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        options: WriteOptions,
    ) -> Result<Value> {
        let obj = self.normalise(resource, body, options.strict)?;
        if meta_str(&obj, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        let ns = Self::namespace_of(resource, namespace);
        if let (Some(body_ns), Some(url_ns)) = (meta_str(&obj, "namespace"), ns)
            && !body_ns.is_empty()
            && body_ns != url_ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let expected = match meta_str(&obj, "resourceVersion").filter(|rv| !rv.is_empty()) {
            Some(rv) => Some(parse_rv(rv).map_err(|_| ApiError::conflict(resource, name))?),
            None => None,
        };
        let unconditional = expected.is_none();
        self.replace_with(resource, namespace, name, options, expected, |_| {
            // Checked once the object is known to exist, as kube does.
            if unconditional && !kinds::allows_unconditional_update(resource) {
                return Err(ApiError::invalid(resource.plural, resource.group, name, vec![kinds::unconditional_update_refused()]));
            }
            Ok(obj.clone())
        })
        .await
    }

    /// Applies a PATCH, retrying on concurrent modification when the patch
    /// does not pin a resourceVersion itself.
    pub async fn patch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        patch: &Patch,
        options: WriteOptions,
    ) -> Result<Value> {
        if let Patch::Apply(config) = patch {
            return self.apply(resource, namespace, name, config, options).await.map(|(obj, _)| obj);
        }
        let strict = options.strict;
        self.replace_with(resource, namespace, name, options, None, |current| {
            let patched = patch.apply(current)?;
            self.normalise(resource, patched, strict)
        })
        .await
    }

    /// Server-side apply (see [`crate::apply`]): merges `config` into the
    /// object, or creates it from `config` when it does not exist (then `true`).
    pub async fn apply(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        config: &Value,
        options: WriteOptions,
    ) -> Result<(Value, bool)> {
        let manager = options.field_manager.clone().unwrap_or_default();
        let config = crate::apply::check_config(self, resource, namespace, name, config, options.strict)?;
        let now = now_rfc3339();
        let part = if options.scope == WriteScope::Status { crate::apply::Part::Status } else { crate::apply::Part::Object };
        let writer = crate::apply::Writer { manager: &manager, part, now: &now };
        let options = WriteOptions { applied: true, ..options };
        for _attempt in 0..4 {
            let updated = self
                .replace_with(resource, namespace, name, options.clone(), None, |current| {
                    crate::apply::apply(resource, &writer, current, &config, options.force)
                })
                .await;
            match updated {
                Err(e) if e.code == 404 => {}
                other => return other.map(|obj| (obj, false)),
            }
            let mut live = json!({"metadata": {"name": name}});
            if let Some(ns) = Self::namespace_of(resource, namespace) {
                live["metadata"]["namespace"] = json!(ns);
            }
            let obj = crate::apply::apply(resource, &writer, &live, &config, options.force)?;
            match self.create(resource, namespace, obj, options.clone()).await {
                Err(e) if e.reason == "AlreadyExists" => continue,
                other => return other.map(|obj| (obj, true)),
            }
        }
        Err(ApiError::conflict(resource, name))
    }

    /// Read-modify-write with optimistic concurrency. `expected` pins the
    /// resourceVersion the caller saw; without it a conflict is retried.
    async fn replace_with(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        options: WriteOptions,
        expected: Option<Revision>,
        change: impl Fn(&Value) -> Result<Value>,
    ) -> Result<Value> {
        let ns = Self::namespace_of(resource, namespace);
        let key = resource.key(ns, name);
        for _attempt in 0..16 {
            let Some(kv) = self.store.get(&key).await.map_err(storage_error)? else {
                return Err(ApiError::not_found(resource, name));
            };
            if let Some(expected) = expected
                && expected != kv.mod_revision
            {
                return Err(ApiError::conflict(resource, name));
            }
            let current = from_store(&kv.value, kv.mod_revision)?;
            let mut next = change(&current)?;
            // Patched resourceVersion pins the update to that version.
            let pinned = meta_str(&next, "resourceVersion")
                .filter(|rv| !rv.is_empty() && *rv != kv.mod_revision.to_string())
                .is_some();
            if pinned {
                return Err(ApiError::conflict(resource, name));
            }
            if let (Some(uid), Some(cur_uid)) = (meta_str(&next, "uid"), meta_str(&current, "uid"))
                && !uid.is_empty()
                && uid != cur_uid
            {
                return Err(ApiError::conflict_because(
                    resource,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"),
                ));
            }
            let client_managed;
            {
                let cur_meta = current.get("metadata").cloned().unwrap_or_default();
                let meta = meta_mut(&mut next)?;
                for immutable in ["uid", "creationTimestamp", "deletionTimestamp", "namespace", "name", "generation"] {
                    match cur_meta.get(immutable) {
                        Some(v) => meta.insert(immutable.into(), v.clone()),
                        None => meta.remove(immutable),
                    };
                }
                client_managed = meta.remove("managedFields");
                meta.remove("resourceVersion");
            }
            next = scoped(resource, options.scope, &current, next);
            kinds::default_object(resource, &mut next);
            track_fields(resource, &options, Some(&current), client_managed.as_ref(), &mut next)?;
            Self::reject_invalid(resource, &next, Some(&current))?;
            if let Some(admit) = &options.admit {
                admit(resource, Some(&current), &next)?;
            }
            if strip_rv(&next) == strip_rv(&current) {
                // No-op updates do not bump the resourceVersion (like kube-apiserver).
                return Ok(current);
            }
            if resource.plural == "pods"
                && next.get("spec") != current.get("spec")
                && let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut)
            {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
                meta.insert("generation".into(), json!(generation + 1));
            }
            if options.dry_run {
                // A dry run answers with the version it was computed from (kubectl diff compares it).
                meta_mut(&mut next)?.insert("resourceVersion".into(), Value::String(kv.mod_revision.to_string()));
                return Ok(next);
            }
            match self.store.update(&key, to_store(&next)?, kv.mod_revision).await {
                Ok(kv) => return from_store(&kv.value, kv.mod_revision),
                Err(store::Error::Conflict { .. }) if expected.is_none() => continue,
                Err(store::Error::Conflict { .. }) => return Err(ApiError::conflict(resource, name)),
                Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(resource, name)),
                Err(e) => return Err(storage_error(e)),
            }
        }
        Err(ApiError::conflict(resource, name))
    }

    /// Deletes an object. Namespaces only move to `Terminating`; the namespace
    /// controller removes their content and then the namespace itself.
    pub async fn delete(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        options: WriteOptions,
    ) -> Result<Value> {
        let ns = Self::namespace_of(resource, namespace);
        let key = resource.key(ns, name);
        let Some(kv) = self.store.get(&key).await.map_err(storage_error)? else {
            return Err(ApiError::not_found(resource, name));
        };
        let current = from_store(&kv.value, kv.mod_revision)?;
        if let Some(uid) = &preconditions.uid
            && meta_str(&current, "uid") != Some(uid.as_str())
        {
            let have = meta_str(&current, "uid").unwrap_or_default();
            return Err(ApiError::conflict_because(
                resource,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
            ));
        }
        if let Some(rv) = &preconditions.resource_version
            && *rv != kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict_because(
                resource,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                ),
            ));
        }
        // The delete below is pinned to this version, so the check cannot be raced.
        if let Some(admit) = &options.admit_delete {
            admit(resource, &current)?;
        }
        if resource.plural == "namespaces" {
            if matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::forbidden(
                    "namespaces",
                    "",
                    name,
                    format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
                ));
            }
            let mut next = current.clone();
            if let Some(map) = next.as_object_mut() {
                map.insert("status".into(), json!({"phase": "Terminating"}));
            }
            meta_mut(&mut next)?.entry("deletionTimestamp").or_insert_with(|| Value::String(now_rfc3339()));
            if options.dry_run || next == current {
                return Ok(next);
            }
            return match self.store.update(&key, to_store(&next)?, kv.mod_revision).await {
                Ok(kv) => from_store(&kv.value, kv.mod_revision),
                Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(resource, name)),
                Err(e) => Err(storage_error(e)),
            };
        }
        if options.dry_run {
            return Ok(current);
        }
        match self.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(deleted) => from_store(&kv.value, deleted.mod_revision),
            Err(store::Error::Conflict { .. }) => Err(ApiError::conflict(resource, name)),
            Err(store::Error::NotFound(_)) => Err(ApiError::not_found(resource, name)),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Removes an object unconditionally (controllers finishing a namespace deletion).
    pub async fn purge(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<()> {
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        match self.store.delete(&key, None).await {
            Ok(_) | Err(store::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Lists objects as a `…List` object.
    pub async fn list(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<Value> {
        let ns = Self::namespace_of(resource, namespace);
        let prefix = resource.key_prefix(ns);
        let mut start_after = match &params.continue_token {
            Some(token) => Some(format!("{prefix}{}", decode_continue(token)?)),
            None => None,
        };
        // A name pinned by the field selector is one key: no scan.
        if let Some(name) = params.fields.required_name()
            && ns.is_some() == resource.namespaced
            && start_after.is_none()
        {
            let key = resource.key(ns, name);
            let revision = self.store.revision().await.map_err(storage_error)?;
            let mut items = Vec::new();
            if let Some(kv) = self.store.get(&key).await.map_err(storage_error)? {
                let obj = from_store(&kv.value, kv.mod_revision)?;
                if params.labels.matches(&obj) && params.fields.matches(&obj) {
                    items.push(obj);
                }
            }
            return Ok(list_object(resource, items, revision, None));
        }
        let mut items = Vec::new();
        let mut revision = None;
        let mut next_token = None;
        loop {
            let want = if params.limit == 0 { 0 } else { params.limit - items.len() };
            let page = self
                .store
                .list(&prefix, ListOptions { limit: want, start_after: start_after.clone() })
                .await
                .map_err(storage_error)?;
            let rev = *revision.get_or_insert(page.revision);
            let last_key = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                let obj = from_store(&kv.value, kv.mod_revision)?;
                if params.labels.matches(&obj) && params.fields.matches(&obj) {
                    items.push(obj);
                }
            }
            if !page.more {
                break;
            }
            let Some(last) = last_key else { break };
            if params.limit != 0 && items.len() >= params.limit {
                next_token = Some(encode_continue(rev, last.strip_prefix(&prefix).unwrap_or(&last)));
                break;
            }
            start_after = Some(last);
        }
        Ok(list_object(resource, items, revision.unwrap_or(0), next_token))
    }

    /// Deletes every object matching the selectors; returns the list of deleted objects.
    pub async fn delete_collection(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
        options: WriteOptions,
    ) -> Result<Value> {
        let list = self.list(resource, namespace, &ListParams { limit: 0, continue_token: None, ..params.clone() }).await?;
        let mut deleted = Vec::new();
        for item in list.get("items").and_then(Value::as_array).into_iter().flatten() {
            let name = meta_str(item, "name").unwrap_or_default();
            let ns = meta_str(item, "namespace");
            match self.delete(resource, ns, name, &Preconditions::default(), options.clone()).await {
                Ok(obj) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let revision = self.store.revision().await.map_err(storage_error)?;
        Ok(list_object(resource, deleted, revision, None))
    }

    /// Watches objects. With no resourceVersion (or `0`), the current objects
    /// come first as `ADDED` events; otherwise changes after that version.
    pub async fn watch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static> {
        let ns = Self::namespace_of(resource, namespace);
        let prefix = resource.key_prefix(ns);
        let filtered = !params.labels.is_empty() || params.fields != FieldSelector::default();
        let (initial, after) = match params.resource_version.as_deref().filter(|rv| !rv.is_empty() && *rv != "0") {
            Some(rv) => (Vec::new(), parse_rv(rv)?),
            None => {
                let list = self.list(resource, namespace, &ListParams { limit: 0, continue_token: None, ..params.clone() }).await?;
                let rv = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0");
                let rev = parse_rv(rv)?;
                let items = match list {
                    Value::Object(mut m) => match m.remove("items") {
                        Some(Value::Array(items)) => items,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                (items, rev)
            }
        };
        let mut known: HashSet<String> = initial.iter().map(object_key).collect();
        let initial_events = initial.into_iter().map(|object| WatchEvent { type_: "ADDED", object });
        let live = match self.store.watch(&prefix, after).await {
            Ok(stream) => stream,
            Err(e @ (store::Error::Compacted { .. } | store::Error::FutureRevision { .. })) => {
                let err = match e {
                    store::Error::Compacted { requested, compacted } => {
                        ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
                    }
                    other => ApiError::gone(format!("too large resource version: {other}")),
                };
                let event = WatchEvent { type_: "ERROR", object: err.to_status() };
                return Ok(futures::stream::iter(vec![event]).left_stream());
            }
            Err(e) => return Err(storage_error(e)),
        };
        let labels = params.labels.clone();
        let fields = params.fields.clone();
        let live = live.filter_map(move |item| {
            let event = match item {
                Ok(ev) => convert_event(ev, filtered, &labels, &fields, &mut known),
                Err(e) => {
                    tracing::warn!(error = %e, "watch ended by the store");
                    let status = ApiError::gone(format!("watch closed: {e}")).to_status();
                    Some(WatchEvent { type_: "ERROR", object: status })
                }
            };
            futures::future::ready(event)
        });
        Ok(futures::stream::iter(initial_events).chain(live).right_stream())
    }

    /// The store's current revision as a resourceVersion string.
    pub async fn resource_version(&self) -> Result<String> {
        Ok(self.store.revision().await.map_err(storage_error)?.to_string())
    }
}

/// Records the write in `metadata.managedFields` (server-side apply has
/// already put them in `obj`; they were taken out as `client_managed`).
fn track_fields(
    resource: &ResourceInfo,
    options: &WriteOptions,
    live: Option<&Value>,
    client_managed: Option<&Value>,
    obj: &mut Value,
) -> Result<()> {
    if options.applied {
        if let Some(managed) = client_managed {
            meta_mut(obj)?.insert("managedFields".into(), managed.clone());
        }
        return Ok(());
    }
    let Some(manager) = &options.field_manager else {
        // Untracked (internal) writes keep what the object had.
        if let Some(managed) = live.and_then(|l| l.pointer("/metadata/managedFields")) {
            meta_mut(obj)?.insert("managedFields".into(), managed.clone());
        }
        return Ok(());
    };
    let now = now_rfc3339();
    let part = if options.scope == WriteScope::Status { crate::apply::Part::Status } else { crate::apply::Part::Object };
    let writer = crate::apply::Writer { manager, part, now: &now };
    crate::apply::record_update(resource, &writer, live, client_managed, obj)
}

/// `namespace/name` (or `name`), unique within one watch.
fn object_key(obj: &Value) -> String {
    format!("{}/{}", meta_str(obj, "namespace").unwrap_or_default(), meta_str(obj, "name").unwrap_or_default())
}

/// Keeps a write within its scope: a status write changes only `status`, a
/// finalize write only `spec.finalizers`, and a write of the object itself
/// leaves `status` alone for kinds whose status has its own subresource.
fn scoped(resource: &ResourceInfo, scope: WriteScope, current: &Value, next: Value) -> Value {
    let take = |from: &Value, mut into: Value, pointer: &[&str]| -> Value {
        let value = pointer.iter().try_fold(from, |v, k| v.get(*k)).cloned();
        let Some((last, parents)) = pointer.split_last() else { return into };
        let mut target = &mut into;
        for k in parents {
            if !target.get(*k).is_some_and(Value::is_object) {
                target[*k] = json!({});
            }
            target = &mut target[*k];
        }
        if let Some(map) = target.as_object_mut() {
            match value {
                Some(v) => map.insert((*last).to_owned(), v),
                None => map.remove(*last),
            };
        }
        into
    };
    match scope {
        WriteScope::Object if resource.subresources.iter().any(|s| s.name == "status") => take(current, next, &["status"]),
        WriteScope::Object => next,
        WriteScope::Status => take(&next, current.clone(), &["status"]),
        WriteScope::Finalizers => take(&next, current.clone(), &["spec", "finalizers"]),
    }
}

fn strip_rv(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    obj
}

/// Turns a store event into a wire event, applying selector transitions: an
/// object that stops matching is `DELETED` for this watcher, one that starts
/// matching is `ADDED`.
fn convert_event(
    ev: store::WatchEvent,
    filtered: bool,
    labels: &LabelSelector,
    fields: &FieldSelector,
    known: &mut HashSet<String>,
) -> Option<WatchEvent> {
    let object = match from_store(&ev.kv.value, ev.kv.mod_revision) {
        Ok(o) => o,
        Err(e) => return Some(WatchEvent { type_: "ERROR", object: e.to_status() }),
    };
    if !filtered {
        let type_ = match ev.kind {
            EventKind::Create => "ADDED",
            EventKind::Update => "MODIFIED",
            EventKind::Delete => "DELETED",
        };
        return Some(WatchEvent { type_, object });
    }
    let key = object_key(&object);
    let matches = labels.matches(&object) && fields.matches(&object);
    let type_ = match (ev.kind, matches, known.contains(&key)) {
        (EventKind::Delete, true, _) | (EventKind::Delete, _, true) => {
            known.remove(&key);
            "DELETED"
        }
        (EventKind::Delete, false, false) => return None,
        (_, true, true) => "MODIFIED",
        (_, true, false) => {
            known.insert(key);
            "ADDED"
        }
        (_, false, true) => {
            known.remove(&key);
            "DELETED"
        }
        (_, false, false) => return None,
    };
    Some(WatchEvent { type_, object })
}

fn list_object(resource: &ResourceInfo, items: Vec<Value>, revision: Revision, next: Option<String>) -> Value {
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), Value::String(revision.to_string()));
    if let Some(token) = next {
        metadata.insert("continue".into(), Value::String(token));
    }
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

#[cfg(test)]
mod tests;
