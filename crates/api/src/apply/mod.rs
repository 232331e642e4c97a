//! Server-side apply and `metadata.managedFields`, as kube-apiserver's field
//! manager (`k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager`) and
//! structured-merge-diff's `merge.Updater` do them:
//!
//! - every create, update and patch records the fields it changed for its
//!   manager (operation `Update`), taking them from other managers;
//! - an apply (`application/apply-patch+yaml`) merges the applier's
//!   configuration into the object by the kind's schema ([`schema`]), makes
//!   the applier own exactly the configuration's fields, removes fields the
//!   applier dropped from its configuration that nobody else owns, and refuses
//!   (409) to change fields another manager owns unless forced.
//!
//! Not done: the cap of 10 `Update` managers (kube folds older ones into
//! `ancient-changes`), and updating `last-applied-configuration` on apply.

pub mod fieldpath;
mod relations;
pub mod schema;
pub mod typed;

use serde_json::{Map, Value, json};

use crate::resource::ResourceInfo;
use crate::status::{ApiError, StatusCause, StatusDetails};
use fieldpath::{Path, PathElement, Set};
use schema::Schema;

/// `Apply` or `Update`.
const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `manager`.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `apiVersion` of the fields.
    pub api_version: String,
    /// `time` (RFC 3339), when the entry last changed the object.
    pub time: Option<String>,
    /// `subresource` (`status`), if the write went through one.
    pub subresource: String,
    /// The owned fields.
    pub set: Set,
}

impl Entry {
    /// kube's manager identifier: appliers are one manager whatever their apiVersion.
    fn same_manager(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == APPLY || self.api_version == other.api_version)
    }

    /// How conflict messages name the manager (`printManager`).
    fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), fieldpath::to_fields_v1(&self.set));
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(t) = s("fieldsType")
            && t != "FieldsV1"
        {
            return None;
        }
        let operation = s("operation")?;
        if operation != APPLY && operation != UPDATE {
            return None;
        }
        Some(Entry {
            manager: s("manager").unwrap_or_default(),
            operation,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            set: match v.get("fieldsV1") {
                Some(f) => fieldpath::from_fields_v1(f)?,
                None => Set::new(),
            },
        })
    }
}

/// What a write goes through: the object, or its `status` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object itself (its `status` is ignored for kinds with a status subresource).
    Object,
    /// The `status` subresource (only `status` is tracked).
    Status,
}

/// Who writes, and how.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// Which part of the object the write goes through.
    pub part: Part,
    /// `time` for entries this write changes.
    pub now: &'a str,
}

/// Decodes `metadata.managedFields`; `None` when it is absent or malformed.
pub fn decode(managed: Option<&Value>) -> Option<Vec<Entry>> {
    managed?.as_array()?.iter().map(Entry::from_json).collect()
}

/// Encodes entries in kube's order: operation, time, manager, apiVersion, subresource.
pub fn encode(mut entries: Vec<Entry>) -> Value {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| seconds(a.time.as_deref()).cmp(&seconds(b.time.as_deref())))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    Value::Array(entries.iter().map(Entry::to_json).collect())
}

fn seconds(time: Option<&str>) -> i64 {
    time.and_then(|t| t.parse::<jiff::Timestamp>().ok()).map_or(0, |t| t.as_second())
}

/// kube's `managedFields: [{}]`: the client asks for managed fields to be cleared.
fn is_reset(managed: &Value) -> bool {
    match managed.as_array().map(Vec::as_slice) {
        Some([]) => true,
        Some([only]) => only.as_object().is_some_and(Map::is_empty),
        _ => false,
    }
}

/// Fields no manager owns (`stripMetaManager`).
fn strip(set: &mut Set) {
    for fields in [
        &["apiVersion"][..],
        &["kind"],
        &["metadata"],
        &["metadata", "name"],
        &["metadata", "namespace"],
        &["metadata", "creationTimestamp"],
        &["metadata", "selfLink"],
        &["metadata", "uid"],
        &["metadata", "clusterName"],
        &["metadata", "generation"],
        &["metadata", "managedFields"],
        &["metadata", "resourceVersion"],
    ] {
        let path: Path = fields.iter().map(|f| PathElement::Field((*f).to_owned())).collect();
        set.remove(&path);
    }
}

/// Fields a write through `part` does not own (kube's reset fields): `status`
/// through the object of a kind with a status subresource, all but `status` through it.
fn ignore(resource: &ResourceInfo, part: Part, set: &mut Set) {
    let status = PathElement::Field("status".into());
    let has_status = resource.subresources.iter().any(|s| s.name == "status");
    match part {
        Part::Object if has_status => set.retain(|p| p.first() != Some(&status)),
        Part::Object => {}
        Part::Status => set.retain(|p| p.first() == Some(&status)),
    }
}

fn without_managed(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    obj
}

fn set_managed(obj: &mut Value, entries: Vec<Entry>) {
    let encoded = encode(entries);
    if let Some(meta) = obj.as_object_mut().and_then(|m| m.entry("metadata").or_insert_with(|| json!({})).as_object_mut()) {
        if encoded.as_array().is_some_and(Vec::is_empty) {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), encoded);
        }
    }
}

fn typed_error(resource: &ResourceInfo, obj: &Value, e: &typed::TypeError) -> ApiError {
    let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_owned();
    ApiError::bad_request(format!(
        "failed to create typed patch object ({}/{}, Kind={} {}/{}): {e}",
        resource.group,
        resource.version,
        resource.kind,
        meta("namespace"),
        meta("name")
    ))
}

/// Records a create, update or non-apply patch (`live` is `None` for a
/// create) in `next`'s `metadata.managedFields`. `client_managed` is the
/// `managedFields` the request carried: valid entries replace the live ones,
/// `[{}]` clears them, anything else keeps the live ones.
pub fn record_update(
    resource: &ResourceInfo,
    writer: &Writer<'_>,
    live: Option<&Value>,
    client_managed: Option<&Value>,
    next: &mut Value,
) -> Result<(), ApiError> {
    let schema = Schema::of(resource);
    let live_managed = live.and_then(|l| decode(l.pointer("/metadata/managedFields"))).unwrap_or_default();
    let mut managers = match client_managed {
        Some(m) if writer.part == Part::Object && is_reset(m) => Vec::new(),
        Some(m) if writer.part == Part::Object => decode(Some(m)).filter(|e| !e.is_empty()).unwrap_or(live_managed),
        _ => live_managed,
    };
    let old = live.map_or_else(|| zero_object(&schema), without_managed);
    let new = without_managed(next);
    let cmp = match typed::compare(&schema, &old, &new) {
        Ok(c) => c,
        Err(e) => {
            // kube keeps writing (UpdateNoErrors) when fields cannot be tracked.
            tracing::warn!(error = %e, kind = resource.kind, "managed fields not tracked");
            set_managed(next, managers);
            return Ok(());
        }
    };
    if !cmp.is_same() {
        let mut changed: Set = cmp.added.union(&cmp.modified).cloned().collect();
        strip(&mut changed);
        ignore(resource, writer.part, &mut changed);
        for m in &mut managers {
            m.set.retain(|p| !changed.contains(p) && !cmp.removed.contains(p));
        }
        if !changed.is_empty() {
            let me = Entry {
                manager: writer.manager.to_owned(),
                operation: UPDATE.into(),
                api_version: resource.api_version(),
                time: Some(writer.now.to_owned()),
                subresource: if writer.part == Part::Status { "status".into() } else { String::new() },
                set: Set::new(),
            };
            match managers.iter_mut().find(|m| m.same_manager(&me)) {
                Some(prev) => {
                    prev.set.extend(changed);
                    prev.time = me.time;
                }
                None => managers.push(Entry { set: changed, ..me }),
            }
        }
    }
    for m in &mut managers {
        strip(&mut m.set);
    }
    set_managed(next, managers);
    Ok(())
}

/// The object a create starts from, as kube's Go zero value serializes:
/// metadata, `spec` and `status` present, and their required fields null
/// (so a create owns the new maps under them, not the always-present ones).
fn zero_object(schema: &Schema) -> Value {
    fn zero_struct(schema: &Schema, ty: schema::Ty<'_>, depth: usize) -> Value {
        let schema::Ty::Struct { def, props, .. } = ty else { return Value::Null };
        let mut out = Map::new();
        let required = |name: &str| def.is_some_and(|d| schema.required(d).contains(&name));
        for name in props.keys() {
            if required(name) && depth < 4 {
                let field = schema.field(def, props, name);
                out.insert(name.clone(), if matches!(field, schema::Ty::Struct { .. }) { zero_struct(schema, field, depth + 1) } else { Value::Null });
            }
        }
        Value::Object(out)
    }
    let mut obj = json!({"metadata": {"creationTimestamp": null}});
    if let schema::Ty::Struct { def, props, .. } = schema.root() {
        for part in ["spec", "status"] {
            let field = schema.field(def, props, part);
            if matches!(field, schema::Ty::Struct { .. }) {
                obj[part] = zero_struct(schema, field, 0);
            }
        }
    }
    obj
}

/// Server-side apply of `config` (decoded, of the kind's apiVersion) by
/// `writer` onto `live` (an empty object with only name and namespace when
/// creating). Returns the new object with its managedFields, or `live` itself
/// when nothing changes.
pub fn apply(resource: &ResourceInfo, writer: &Writer<'_>, live: &Value, config: &Value, force: bool) -> Result<Value, ApiError> {
    let schema = Schema::of(resource);
    let mut managers = decode(live.pointer("/metadata/managedFields")).unwrap_or_default();
    let live_plain = without_managed(live);
    let config_set = typed::field_set(&schema, config, true).map_err(|e| typed_error(resource, config, &e))?;
    let mut merged = typed::merge(&schema, &live_plain, config).map_err(|e| typed_error(resource, config, &e))?;
    let mut new_set = config_set;
    strip(&mut new_set);
    ignore(resource, writer.part, &mut new_set);
    let me = Entry {
        manager: writer.manager.to_owned(),
        operation: APPLY.into(),
        api_version: resource.api_version(),
        time: Some(writer.now.to_owned()),
        subresource: if writer.part == Part::Status { "status".into() } else { String::new() },
        set: new_set,
    };
    let previous = managers.iter().position(|m| m.same_manager(&me)).map(|i| managers.remove(i));
    // Prune: fields the applier owned and no longer applies, that nobody owns now.
    if let Some(last) = &previous {
        let owned: Set = managers.iter().flat_map(|m| m.set.iter().cloned()).chain(me.set.iter().cloned()).collect();
        let gone: Vec<&Path> = last.set.iter().filter(|p| !fieldpath::has_at_or_below(&owned, p)).collect();
        // List items go in one pass per list (a config may drop thousands at once).
        let (items, fields): (Vec<&Path>, Vec<&Path>) =
            gone.into_iter().partition(|p| matches!(p.last(), Some(PathElement::Key(_) | PathElement::Value(_))));
        let items: Vec<Path> = items.into_iter().cloned().collect();
        typed::remove_items(&mut merged, &items);
        for path in fields.into_iter().rev() {
            typed::remove_at(&mut merged, path);
            typed::remove_empty_parents(&mut merged, path, &|p| fieldpath::has_at_or_below(&owned, p));
        }
    }
    let cmp = typed::compare(&schema, &live_plain, &merged).map_err(|e| typed_error(resource, live, &e))?;
    let changed: Set = cmp.added.union(&cmp.modified).cloned().collect();
    let mut conflicts: Vec<(String, Vec<Path>)> = Vec::new();
    for m in &managers {
        let mine: Set = m.set.intersection(&changed).cloned().collect();
        if !mine.is_empty() {
            conflicts.push((m.display(), smd_order(&mine)));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(conflicts));
    }
    for m in &mut managers {
        m.set.retain(|p| !changed.contains(p) && !cmp.removed.contains(p));
    }
    let unchanged = cmp.is_same();
    let mut me = me;
    if unchanged && let Some(prev) = &previous {
        me.time.clone_from(&prev.time);
    }
    managers.push(me);
    if unchanged {
        let mut out = live.clone();
        set_managed(&mut out, managers);
        return Ok(out);
    }
    set_managed(&mut merged, managers);
    Ok(merged)
}

/// Paths in structured-merge-diff's `Set.Iterate` order: at each node its
/// members, then its children.
fn smd_order(set: &Set) -> Vec<Path> {
    fn walk(paths: &[&Path], depth: usize, out: &mut Vec<Path>) {
        for p in paths.iter().filter(|p| p.len() == depth + 1) {
            out.push((*p).clone());
        }
        let deeper: Vec<&Path> = paths.iter().copied().filter(|p| p.len() > depth + 1).collect();
        let mut i = 0;
        while i < deeper.len() {
            let head = &deeper[i][depth];
            let group: Vec<&Path> = deeper[i..].iter().copied().take_while(|p| &p[depth] == head).collect();
            i += group.len();
            walk(&group, depth + 1, out);
        }
    }
    let all: Vec<&Path> = set.iter().collect();
    let mut out = Vec::new();
    walk(&all, 0, &mut out);
    out
}

/// kube's apply conflict (`NewConflictError`): 409 with one `FieldManagerConflict` cause per field.
fn conflict_error(mut conflicts: Vec<(String, Vec<Path>)>) -> ApiError {
    conflicts.sort_by(|a, b| a.0.cmp(&b.0));
    let total: usize = conflicts.iter().map(|(_, p)| p.len()).sum();
    let causes = conflicts
        .iter()
        .flat_map(|(m, paths)| {
            paths.iter().map(move |p| StatusCause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with {m}"),
                field: fieldpath::path_string(p),
            })
        })
        .collect();
    let message = if total == 1 {
        let (m, paths) = &conflicts[0];
        format!("Apply failed with 1 conflict: conflict with {m}: {}", fieldpath::path_string(&paths[0]))
    } else {
        let mut lines = Vec::new();
        for (m, paths) in &conflicts {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.iter().map(|p| format!("- {}", fieldpath::path_string(p))));
        }
        format!("Apply failed with {total} conflicts: {}", lines.join("\n"))
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(Box::new(StatusDetails { causes, ..StatusDetails::default() })),
    }
}

/// Checks and normalises an applied configuration for the object `name`
/// (kube's apply patch checks), through the kind's typed struct.
pub fn check_config(
    registry: &crate::Registry,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    config: &Value,
    strict: bool,
) -> Result<Value, ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request(format!("error decoding YAML: the apply patch must be an object, got {config}")));
    }
    if config.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let expected = resource.api_version();
    let version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if version != expected {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, expected: {expected}"
        )));
    }
    let config = registry.normalise(resource, config.clone(), strict)?;
    let meta = |f: &str| config.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(n) = meta("name")
        && n != name
    {
        return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({name})")));
    }
    if let (Some(ns), Some(url_ns)) = (meta("namespace"), namespace.filter(|_| resource.namespaced))
        && ns != url_ns
    {
        return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
    }
    Ok(config)
}

/// The manager of a write that names none: the User-Agent up to its first `/` (kube's `prefixFromUserAgent`).
pub fn manager_from_user_agent(user_agent: &str) -> String {
    user_agent.split('/').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests;
