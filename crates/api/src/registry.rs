//! The registry: Kubernetes object semantics on top of a [`Store`].
//!
//! It owns everything between a decoded request and the store: metadata
//! (uid, creationTimestamp, resourceVersion, generateName), namespace existence
//! and termination, defaulting, validation, optimistic concurrency, list paging
//! with selectors, and watch event conversion.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Map, Value, json};
use tessera_store::{self as store, Revision, Store};

use crate::deletion::{self, DeleteOptions, Deletion, Plan};
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

/// Mutating admission of a create (ServiceAccount admission for pods). It is
/// part of the write options so that every path that creates an object, a
/// POST or an apply that finds nothing, runs it: no path can skip it.
pub type MutateCreate =
    Arc<dyn Fn(Registry, ResourceInfo, Option<String>, Value) -> futures::future::BoxFuture<'static, Result<Value>> + Send + Sync>;

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
    /// Mutating admission of a create, run before defaulting and validation.
    pub mutate_create: Option<MutateCreate>,
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
            .field("mutate_create", &self.mutate_create.is_some())
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
    /// `resourceVersionMatch` (`Exact` or `NotOlderThan`), checked by the
    /// request parser.
    pub resource_version_match: Option<String>,
    /// `allowWatchBookmarks`: a watch gets BOOKMARK events.
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents` of a watch (`None` when absent).
    pub send_initial_events: Option<bool>,
}

/// One event of a watch, as sent on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub type_: &'static str,
    /// The object (a Status for `ERROR`); `Null` when `shared` carries it.
    pub object: Value,
    /// The object as the watch cache holds it, with its encodings shared by
    /// every watcher (see [`WatchEvent::object`]).
    pub shared: Option<Arc<cache::CachedObject>>,
}

impl WatchEvent {
    /// The event's object, wherever it is held (decoded from the shared
    /// JSON when the watch cache holds it).
    pub fn object(&self) -> Value {
        match &self.shared {
            Some(shared) => shared.value().unwrap_or(Value::Null),
            None => self.object.clone(),
        }
    }
}

/// The object store with Kubernetes semantics.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    bookmark_interval: std::time::Duration,
    /// Where Service cluster IPs come from.
    service_cidr: crate::service_ips::ServiceCidr,
    /// Serves get, list and watch from memory (see [`cache`]).
    cache: Option<Arc<cache::WatchCache>>,
}

fn now_rfc3339() -> String {
    rfc3339_seconds(jiff::Timestamp::now())
}

/// `at` as kube writes a `metav1.Time`: RFC 3339 in whole seconds, the
/// fraction cut off (Go's `Format(time.RFC3339)`), never rounded up into a
/// second that has not begun yet.
fn rfc3339_seconds(at: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(at.as_second()).unwrap_or(at).to_string()
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

/// An object as read through `resource`'s version. Kinds served in several
/// versions over one storage (the `policy.linkerd.io` kinds, whose CRDs
/// convert with strategy `None`) differ between versions only in
/// `apiVersion`, so that is all a read rewrites.
fn in_version(resource: &ResourceInfo, mut obj: Value) -> Value {
    if resource.has_other_versions()
        && let Some(map) = obj.as_object_mut()
        && map.get("apiVersion").and_then(Value::as_str).is_some_and(|v| v != resource.api_version())
    {
        map.insert("apiVersion".into(), Value::String(resource.api_version()));
        // As kube defaults custom resources read from storage: fields the
        // read version defaults (Server v1beta3 `accessPolicy`) appear.
        crate::kinds::default_object(resource, &mut obj);
    }
    obj
}

/// [`from_store`] read through `resource`'s version ([`in_version`]).
fn from_store_as(resource: &ResourceInfo, value: &[u8], revision: Revision) -> Result<Value> {
    from_store(value, revision).map(|obj| in_version(resource, obj))
}

impl WatchEvent {
    /// The event with its object as read through `resource`'s version.
    fn in_version(self, resource: &ResourceInfo) -> Self {
        let stale = |o: &Value| o.get("apiVersion").and_then(Value::as_str).is_some_and(|v| v != resource.api_version());
        match self.shared {
            // A shared encoding of another version is decoded and rewritten.
            Some(shared) if self.type_ != "BOOKMARK" && shared.value().is_ok_and(|o| stale(&o)) => {
                let object = shared.value().map(|o| in_version(resource, o)).unwrap_or(Value::Null);
                WatchEvent { type_: self.type_, object, shared: None }
            }
            shared => WatchEvent { type_: self.type_, object: in_version(resource, self.object), shared },
        }
    }
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
        Self { store, bookmark_interval: read::BOOKMARK_INTERVAL, service_cidr: Default::default(), cache: None }
    }

    /// The same registry allocating Service cluster IPs from `cidr`.
    pub fn with_service_cidr(mut self, cidr: crate::service_ips::ServiceCidr) -> Self {
        self.service_cidr = cidr;
        self
    }

    /// The range Service cluster IPs come from.
    pub fn service_cidr(&self) -> crate::service_ips::ServiceCidr {
        self.service_cidr
    }

    /// The same registry with another bookmark interval (tests use a short one).
    pub fn with_bookmark_interval(mut self, interval: std::time::Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Serves reads from a watch cache of the store (see [`cached`] for
    /// which); starts following the store on the current runtime.
    pub fn with_watch_cache(mut self) -> Self {
        self.cache = Some(cache::WatchCache::start(Arc::clone(&self.store)));
        self
    }

    /// The watch cache, if reads are served from one.
    pub fn watch_cache(&self) -> Option<&Arc<cache::WatchCache>> {
        self.cache.as_ref()
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
        if let Some(found) = self.get_consistent_from_cache(resource, namespace, name).await {
            return found;
        }
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        match self.store.get(&key).await.map_err(storage_error)? {
            Some(kv) => from_store_as(resource, &kv.value, kv.mod_revision),
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
        // kube-apiserver's transformDecodeError wording.
        resource.decode(body, strict).map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: {e}",
                kind = resource.kind,
                version = resource.version
            ))
        })
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
        let body = match &options.mutate_create {
            Some(mutate) => mutate(self.clone(), *resource, namespace.map(str::to_owned), body).await?,
            None => body,
        };
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
            meta.remove("deletionGracePeriodSeconds");
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
            if resource.group.is_empty() && resource.plural == "services" {
                crate::service_ips::allocate(self.store.as_ref(), self.service_cidr, &mut obj, true).await?;
            }
            return Ok(obj);
        }
        // A Service's cluster IP is claimed before it is stored, and given back if it is not.
        let claim = match resource.group.is_empty() && resource.plural == "services" {
            // An existing name is kube's 409, whatever the IP (the store's create below settles races).
            true if self.store.get(&key).await.map_err(storage_error)?.is_some() => return Err(ApiError::already_exists(resource, &name)),
            true => crate::service_ips::allocate(self.store.as_ref(), self.service_cidr, &mut obj, false).await?,
            false => None,
        };
        let created = match self.store.create(&key, to_store(&obj)?).await {
            Ok(kv) => from_store_as(resource, &kv.value, kv.mod_revision),
            Err(store::Error::AlreadyExists(_)) => Err(ApiError::already_exists(resource, &name)),
            Err(e) => Err(storage_error(e)),
        };
        if created.is_err()
            && let Some(claim) = claim
        {
            crate::service_ips::release_claim(self.store.as_ref(), claim).await;
        }
        created
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

    /// PUT: [`Self::update`], or for kinds kube lets create on update
    /// ([`kinds::allows_create_on_update`]) a create when the object does
    /// not exist (then `true`). As kube, the body's resourceVersion is not
    /// checked against a missing object.
    pub async fn update_or_create(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        options: WriteOptions,
    ) -> Result<(Value, bool)> {
        if !kinds::allows_create_on_update(resource) {
            return self.update(resource, namespace, name, body, options).await.map(|obj| (obj, false));
        }
        let mut fresh = body.clone();
        if let Some(meta) = fresh.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let (body, fresh, options) = (&body, &fresh, &options);
        write_or_create(
            resource,
            name,
            move || self.update(resource, namespace, name, body.clone(), options.clone()),
            move || self.create(resource, namespace, fresh.clone(), options.clone()),
        )
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
        let mut live = json!({"metadata": {"name": name}});
        if let Some(ns) = Self::namespace_of(resource, namespace) {
            live["metadata"]["namespace"] = json!(ns);
        }
        let (writer, config, live, options, force) = (&writer, &config, &live, &options, options.force);
        write_or_create(
            resource,
            name,
            move || {
                self.replace_with(resource, namespace, name, options.clone(), None, move |current| {
                    crate::apply::apply(resource, writer, current, config, force)
                })
            },
            move || async move {
                let obj = crate::apply::apply(resource, writer, live, config, force)?;
                self.create(resource, namespace, obj, options.clone()).await
            },
        )
        .await
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
            let current = from_store_as(resource, &kv.value, kv.mod_revision)?;
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
                for immutable in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name", "generation"] {
                    match cur_meta.get(immutable) {
                        Some(v) => meta.insert(immutable.into(), v.clone()),
                        None => meta.remove(immutable),
                    };
                }
                client_managed = meta.remove("managedFields");
                meta.remove("resourceVersion");
            }
            next = scoped(resource, options.scope, &current, next);
            if resource.group.is_empty() && resource.plural == "services" {
                crate::service::normalize_update(&mut next, &current);
            }
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
            // A Service that starts needing a cluster IP (ExternalName → ClusterIP) gets one.
            let claim = match resource.group.is_empty() && resource.plural == "services" && crate::service_ips::needs_ip(&current, &next) {
                true => crate::service_ips::allocate(self.store.as_ref(), self.service_cidr, &mut next, false).await?,
                false => None,
            };
            if deletion::should_delete_during_update(resource, &current, &next) {
                // The last finalizer is gone: the object goes (kube answers with it).
                match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(deleted) => {
                        meta_mut(&mut next)?.insert("resourceVersion".into(), Value::String(deleted.mod_revision.to_string()));
                        return Ok(next);
                    }
                    Err(store::Error::Conflict { .. }) if expected.is_none() => continue,
                    Err(store::Error::Conflict { .. }) => return Err(ApiError::conflict(resource, name)),
                    Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(resource, name)),
                    Err(e) => return Err(storage_error(e)),
                }
            }
            let written = self.store.update(&key, to_store(&next)?, kv.mod_revision).await;
            if written.is_err()
                && let Some(claim) = claim
            {
                crate::service_ips::release_claim(self.store.as_ref(), claim).await;
            }
            match written {
                Ok(kv) => return from_store_as(resource, &kv.value, kv.mod_revision),
                Err(store::Error::Conflict { .. }) if expected.is_none() => continue,
                Err(store::Error::Conflict { .. }) => return Err(ApiError::conflict(resource, name)),
                Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(resource, name)),
                Err(e) => return Err(storage_error(e)),
            }
        }
        Err(ApiError::conflict(resource, name))
    }

    /// Deletes an object with the default (background) propagation and
    /// returns it, deleted or pending (see [`Registry::delete_with`]).
    pub async fn delete(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        options: WriteOptions,
    ) -> Result<Value> {
        let delete = DeleteOptions { preconditions: preconditions.clone(), ..DeleteOptions::default() };
        self.delete_with(resource, namespace, name, &delete, options).await.map(Deletion::into_object)
    }

    /// Deletes an object as kube-apiserver's registry does: an object with
    /// finalizers (or given the `orphan` / `foregroundDeletion` finalizer by
    /// the propagation policy) only gets a `deletionTimestamp` and stays
    /// until an update removes its last finalizer; a namespace first moves
    /// to `Terminating` (the namespace controller empties it). Planned by
    /// [`crate::deletion`], executed against the version read, retried on a
    /// concurrent change.
    pub async fn delete_with(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        delete: &DeleteOptions,
        options: WriteOptions,
    ) -> Result<Deletion> {
        let ns = Self::namespace_of(resource, namespace);
        let key = resource.key(ns, name);
        let is_namespace = resource.group.is_empty() && resource.plural == "namespaces";
        for _attempt in 0..16 {
            let Some(kv) = self.store.get(&key).await.map_err(storage_error)? else {
                return Err(ApiError::not_found(resource, name));
            };
            let current = from_store_as(resource, &kv.value, kv.mod_revision)?;
            if is_namespace {
                Self::check_namespace_preconditions(resource, name, &current, &delete.preconditions)?;
            } else {
                deletion::check_preconditions(resource, name, &current, &delete.preconditions)?;
            }
            // The write below is pinned to this version, so the check cannot be raced.
            if let Some(admit) = &options.admit_delete {
                admit(resource, &current)?;
            }
            if is_namespace && matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::forbidden(
                    "namespaces",
                    "",
                    name,
                    format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
                ));
            }
            let now = now_rfc3339();
            let plan = if is_namespace {
                deletion::plan_namespace(&current, delete, &now)
            } else {
                deletion::plan(&current, delete, &now)
            };
            match plan {
                Plan::Keep => return Ok(Deletion::Pending(current)),
                Plan::Update(next) if options.dry_run => return Ok(Deletion::Pending(next)),
                Plan::Update(next) => match self.store.update(&key, to_store(&next)?, kv.mod_revision).await {
                    Ok(kv) => return from_store_as(resource, &kv.value, kv.mod_revision).map(Deletion::Pending),
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(resource, name)),
                    Err(e) => return Err(storage_error(e)),
                },
                Plan::DeleteNow if options.dry_run => return Ok(Deletion::Deleted(current)),
                Plan::DeleteNow => match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(deleted) => return from_store_as(resource, &kv.value, deleted.mod_revision).map(Deletion::Deleted),
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(store::Error::NotFound(_)) => return Err(ApiError::not_found(resource, name)),
                    Err(e) => return Err(storage_error(e)),
                },
            }
        }
        Err(ApiError::conflict(resource, name))
    }

    /// The namespace registry checks preconditions itself, with the storage
    /// layer's wording.
    fn check_namespace_preconditions(resource: &ResourceInfo, name: &str, current: &Value, pre: &Preconditions) -> Result<()> {
        if let Some(uid) = &pre.uid
            && meta_str(current, "uid") != Some(uid.as_str())
        {
            let have = meta_str(current, "uid").unwrap_or_default();
            return Err(ApiError::conflict_because(
                resource,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
            ));
        }
        let have = meta_str(current, "resourceVersion").unwrap_or_default();
        if let Some(rv) = &pre.resource_version
            && rv != have
        {
            return Err(ApiError::conflict_because(
                resource,
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"),
            ));
        }
        Ok(())
    }

    /// Removes an object unconditionally (controllers finishing a namespace deletion).
    pub async fn purge(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<()> {
        let key = resource.key(Self::namespace_of(resource, namespace), name);
        match self.store.delete(&key, None).await {
            Ok(_) | Err(store::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Lists objects as a `…List` object, at the revision the parameters
    /// ask for (see [`read`]).
    pub async fn list(&self, resource: &ResourceInfo, namespace: Option<&str>, params: &ListParams) -> Result<Value> {
        self.list_objects(resource, namespace, params).await
    }

    /// Deletes every object matching the selectors; returns the list of deleted objects.
    pub async fn delete_collection(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
        options: WriteOptions,
    ) -> Result<Value> {
        self.delete_collection_with(resource, namespace, params, &DeleteOptions::default(), options).await
    }

    /// [`Registry::delete_collection`] with `DeleteOptions` (propagation) for every delete.
    pub async fn delete_collection_with(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
        delete: &DeleteOptions,
        options: WriteOptions,
    ) -> Result<Value> {
        let list = self.list(resource, namespace, &ListParams { limit: 0, continue_token: None, ..params.clone() }).await?;
        let mut deleted = Vec::new();
        for item in list.get("items").and_then(Value::as_array).into_iter().flatten() {
            let name = meta_str(item, "name").unwrap_or_default();
            let ns = meta_str(item, "namespace");
            let each = DeleteOptions { preconditions: Preconditions::default(), ..delete.clone() };
            match self.delete_with(resource, ns, name, &each, options.clone()).await {
                Ok(deletion) => deleted.push(deletion.into_object()),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let revision = self.store.revision().await.map_err(storage_error)?;
        Ok(list_object(resource, deleted, revision, None))
    }

    /// Watches objects: with no resourceVersion (or `0`) the current objects
    /// come first as `ADDED` events; otherwise changes after that version
    /// (see [`read`] for selectors, bookmarks and `sendInitialEvents`).
    pub async fn watch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static> {
        let stream = self.watch_objects(resource, namespace, params, None).await?;
        Ok(Self::events_in_version(resource, stream))
    }

    /// [`Self::watch`] for a watch that ends at `deadline`: with
    /// `allowWatchBookmarks` it gets a BOOKMARK shortly before (kube: 2 s).
    pub async fn watch_until(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        params: &ListParams,
        deadline: tokio::time::Instant,
    ) -> Result<impl Stream<Item = WatchEvent> + Send + 'static> {
        let stream = self.watch_objects(resource, namespace, params, Some(deadline)).await?;
        Ok(Self::events_in_version(resource, stream))
    }

    /// A watch's events read through `resource`'s version (only kinds served
    /// in several versions pay for the rewrite).
    fn events_in_version(
        resource: &ResourceInfo,
        stream: impl Stream<Item = WatchEvent> + Send + 'static,
    ) -> impl Stream<Item = WatchEvent> + Send + 'static {
        use futures::StreamExt as _;
        if resource.has_other_versions() {
            let resource = *resource;
            stream.map(move |ev| ev.in_version(&resource)).left_stream()
        } else {
            stream.right_stream()
        }
    }

    /// The store's current revision as a resourceVersion string.
    pub async fn resource_version(&self) -> Result<String> {
        Ok(self.store.revision().await.map_err(storage_error)?.to_string())
    }
}

/// A write that may create (a PUT of a kind kube lets create on update, an
/// apply): `write` the object; when it does not exist, `create` it; when
/// someone else created it meanwhile, write again. `true` when created.
async fn write_or_create<Write, Create>(
    resource: &ResourceInfo,
    name: &str,
    write: impl Fn() -> Write,
    create: impl Fn() -> Create,
) -> Result<(Value, bool)>
where
    Write: Future<Output = Result<Value>>,
    Create: Future<Output = Result<Value>>,
{
    for _attempt in 0..4 {
        match write().await {
            Err(e) if e.code == 404 => {}
            other => return other.map(|obj| (obj, false)),
        }
        match create().await {
            Err(e) if e.reason == "AlreadyExists" => continue,
            other => return other.map(|obj| (obj, true)),
        }
    }
    Err(ApiError::conflict(resource, name))
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

/// Keeps a write within its scope: a status write changes only `status`
/// (and, for pods, labels and annotations, as kube-apiserver), a finalize write only `spec.finalizers`, and a write of the object itself
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
        // kube's pod status strategy keeps the new labels and annotations
        // (kubelets annotate their pods this way; the node restriction
        // refuses label changes), unlike the kinds that reset metadata.
        WriteScope::Status if resource.group.is_empty() && resource.plural == "pods" => {
            let merged = take(&next, current.clone(), &["status"]);
            let merged = take(&next, merged, &["metadata", "labels"]);
            take(&next, merged, &["metadata", "annotations"])
        }
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

pub mod cache;
pub mod cached;
pub mod read;
#[cfg(test)]
mod tests;
