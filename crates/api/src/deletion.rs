//! Deletion as kube-apiserver's generic registry does it: `DeleteOptions`
//! (propagation policy, legacy `orphanDependents`, preconditions), the
//! garbage-collector finalizers a delete adds, objects held back by
//! `metadata.finalizers`, and what a DELETE answers.
//!
//! # Design
//! A delete is planned from the stored object and the options alone
//! ([`plan`], [`plan_namespace`]), so the registry only executes the plan
//! against the version it read, and tests can check every case without a
//! store. The rules follow kube's `Store.Delete`,
//! `deletionFinalizersForGarbageCollection` and `markAsDeleting`, and the
//! namespace registry's own `Delete`.

use serde_json::{Value, json};

use crate::registry::Preconditions;
use crate::resource::ResourceInfo;
use crate::status::{ApiError, Result, StatusDetails, field};

/// The finalizer a `propagationPolicy: Orphan` delete adds; the garbage
/// collector removes the owner's references from its dependents, then it.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer a `propagationPolicy: Foreground` delete adds; the garbage
/// collector removes it once no dependent blocks the owner's deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Leave dependents, without their reference to the owner.
    Orphan,
    /// Delete the owner now; the garbage collector deletes dependents after.
    Background,
    /// Delete dependents first; the owner goes when none blocks it.
    Foreground,
}

impl Propagation {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "Orphan" => Some(Self::Orphan),
            "Background" => Some(Self::Background),
            "Foreground" => Some(Self::Foreground),
            _ => None,
        }
    }
}

/// The parts of `DeleteOptions` a delete acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `preconditions` (uid, resourceVersion).
    pub preconditions: Preconditions,
    /// `propagationPolicy`.
    pub propagation: Option<Propagation>,
    /// The legacy `orphanDependents`.
    pub orphan_dependents: Option<bool>,
    /// `dryRun: ["All"]`.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Options with only a propagation policy.
    pub fn propagate(policy: Propagation) -> Self {
        Self { propagation: Some(policy), ..Self::default() }
    }

    /// Decodes a `DeleteOptions` body (JSON). Wrong types are a 400, an
    /// invalid policy a 422, as kube-apiserver answers them.
    pub fn from_body(body: &Value) -> Result<Self> {
        let bad = |field: &str, want: &str| {
            ApiError::bad_request(format!(
                "json: cannot unmarshal into Go struct field DeleteOptions.{field} of type {want}"
            ))
        };
        let Some(map) = body.as_object() else {
            return Err(ApiError::bad_request("the body must be a DeleteOptions object"));
        };
        let string = |name: &str| -> Result<Option<String>> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(name, "string")),
            }
        };
        let propagation = string("propagationPolicy")?;
        let orphan_dependents = match map.get("orphanDependents") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(bad("orphanDependents", "bool")),
        };
        let pre = map.get("preconditions").filter(|p| !p.is_null());
        let pre_field = |f: &str| -> Result<Option<String>> {
            match pre.and_then(|p| p.get(f)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("preconditions.{f}"), "string")),
            }
        };
        let preconditions = Preconditions { uid: pre_field("uid")?, resource_version: pre_field("resourceVersion")? };
        let dry_run = map.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"));
        Self::validated(preconditions, propagation.as_deref(), orphan_dependents, dry_run)
    }

    /// Decodes the query form (`?propagationPolicy=…&orphanDependents=…`),
    /// used when the request has no body.
    pub fn from_query(propagation: Option<&str>, orphan_dependents: Option<&str>, dry_run: bool) -> Result<Self> {
        let orphan = match orphan_dependents {
            None => None,
            Some(raw) => Some(parse_go_bool(raw).ok_or_else(|| {
                ApiError::bad_request(format!("strconv.ParseBool: parsing {raw:?}: invalid syntax"))
            })?),
        };
        Self::validated(Preconditions::default(), propagation, orphan, dry_run)
    }

    /// kube's `ValidateDeleteOptions`: a 422 on `DeleteOptions.meta.k8s.io`.
    fn validated(preconditions: Preconditions, propagation: Option<&str>, orphan: Option<bool>, dry_run: bool) -> Result<Self> {
        let mut causes = Vec::new();
        if orphan.is_some()
            && let Some(raw) = propagation
        {
            causes.push(field::invalid("propagationPolicy", &json!(raw), "orphanDependents and deletionPropagation cannot be both set"));
        }
        let parsed = match propagation {
            None => None,
            Some(raw) => match Propagation::parse(raw) {
                Some(p) => Some(p),
                None => {
                    causes.push(field::not_supported("propagationPolicy", &json!(raw), &["Foreground", "Background", "Orphan", "nil"]));
                    None
                }
            },
        };
        if !causes.is_empty() {
            return Err(ApiError::invalid("DeleteOptions", "meta.k8s.io", "", causes));
        }
        Ok(Self { preconditions, propagation: parsed, orphan_dependents: orphan, dry_run })
    }

    /// Whether kube answers 202 Accepted for a delete left pending: only
    /// when the legacy `orphanDependents: false` was sent.
    pub fn accepted_when_pending(&self) -> bool {
        self.orphan_dependents == Some(false)
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// The object is gone; its last state, with the resourceVersion of the delete.
    Deleted(Value),
    /// The object stays until its finalizers are removed (or, for a
    /// namespace, until its content is gone); its current state.
    Pending(Value),
}

impl Deletion {
    /// The object, deleted or pending.
    pub fn object(&self) -> &Value {
        match self {
            Self::Deleted(o) | Self::Pending(o) => o,
        }
    }

    /// The object, deleted or pending.
    pub fn into_object(self) -> Value {
        match self {
            Self::Deleted(o) | Self::Pending(o) => o,
        }
    }

    /// The body kube-apiserver answers: a pending object as it now is; a
    /// deleted one itself for kinds whose registry returns deleted objects,
    /// otherwise a `Status` with `status: Success` (rest.Store's
    /// `ReturnDeletedObject`).
    pub fn response_body(&self, resource: &ResourceInfo) -> Value {
        match self {
            Self::Pending(obj) => obj.clone(),
            Self::Deleted(obj) if returns_deleted_object(resource) => obj.clone(),
            Self::Deleted(obj) => {
                let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_owned();
                crate::status::success_status(resource, &meta("name"), &meta("uid"))
            }
        }
    }
}

/// Kinds whose kube registry sets `ReturnDeletedObject` (namespaces, pods,
/// serviceaccounts); every other kind answers an immediate delete with a
/// `Success` Status.
pub fn returns_deleted_object(resource: &ResourceInfo) -> bool {
    resource.group.is_empty() && matches!(resource.plural, "namespaces" | "pods" | "serviceaccounts")
}

/// What a delete does to the stored object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing to write: the object is already being deleted as asked.
    Keep,
    /// Write this version (deletionTimestamp and finalizers set).
    Update(Value),
    /// Remove the object now.
    DeleteNow,
}

/// The finalizers of an object.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether an object has a deletionTimestamp.
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// kube's `deletionFinalizersForGarbageCollection` for kinds whose default
/// policy is to delete dependents: the finalizers after the delete, if they change.
pub fn gc_finalizers(current: &[String], options: &DeleteOptions) -> Option<Vec<String>> {
    let has = |f: &str| current.iter().find(|c| *c == ORPHAN_FINALIZER || *c == FOREGROUND_FINALIZER).is_some_and(|c| c == f);
    let orphan = match (options.orphan_dependents, options.propagation) {
        (Some(orphan), _) => orphan,
        (None, Some(p)) => p == Propagation::Orphan,
        (None, None) => has(ORPHAN_FINALIZER),
    };
    let foreground = match (options.orphan_dependents, options.propagation) {
        (Some(_), _) => false,
        (None, Some(p)) => p == Propagation::Foreground,
        (None, None) => has(FOREGROUND_FINALIZER),
    };
    let mut next: Vec<String> =
        current.iter().filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER).cloned().collect();
    if orphan {
        next.push(ORPHAN_FINALIZER.to_owned());
    }
    if foreground {
        next.push(FOREGROUND_FINALIZER.to_owned());
    }
    let as_set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    (as_set(&next) != as_set(current)).then_some(next)
}

/// Plans the delete of an ordinary (non-graceful) object, as `Store.Delete`.
pub fn plan(current: &Value, options: &DeleteOptions, now: &str) -> Plan {
    let existing = finalizers(current);
    let changed = gc_finalizers(&existing, options);
    if existing.is_empty() && changed.is_none() {
        return Plan::DeleteNow;
    }
    let next_finalizers = changed.unwrap_or(existing);
    if next_finalizers.is_empty() {
        return Plan::DeleteNow;
    }
    let mut next = current.clone();
    set_finalizers(&mut next, &next_finalizers);
    mark_as_deleting(&mut next, now);
    if &next == current { Plan::Keep } else { Plan::Update(next) }
}

/// Plans the delete of a namespace, as kube's namespace registry: the first
/// delete marks it `Terminating` (the namespace controller then empties it
/// and removes the `kubernetes` finalizer from `spec.finalizers`); once
/// `spec.finalizers` is empty a delete is an ordinary one.
pub fn plan_namespace(current: &Value, options: &DeleteOptions, now: &str) -> Plan {
    if !is_deleting(current) {
        let mut next = current.clone();
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), json!(now));
        }
        if let Some(map) = next.as_object_mut() {
            let status = map.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                status.insert("phase".into(), json!("Terminating"));
            }
        }
        // The namespace registry's shouldHaveOrphanFinalizer / shouldHaveDeleteDependentsFinalizer.
        let mut list = finalizers(current);
        let have = |f: &str| list.iter().any(|x| x == f);
        let orphan = match (options.orphan_dependents, options.propagation) {
            (Some(o), _) => o,
            (None, Some(p)) => p == Propagation::Orphan,
            (None, None) => have(ORPHAN_FINALIZER),
        };
        let foreground = match (options.orphan_dependents, options.propagation) {
            (Some(o), _) => !o,
            (None, Some(p)) => p == Propagation::Foreground,
            (None, None) => have(FOREGROUND_FINALIZER),
        };
        for (name, want) in [(ORPHAN_FINALIZER, orphan), (FOREGROUND_FINALIZER, foreground)] {
            let present = list.iter().any(|x| x == name);
            if want && !present {
                list.push(name.to_owned());
            } else if !want && present {
                list.retain(|x| x != name);
            }
        }
        if list != finalizers(current) {
            set_finalizers(&mut next, &list);
        }
        return Plan::Update(next);
    }
    let spec_finalizers = current.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if spec_finalizers {
        return Plan::Keep;
    }
    plan(current, options, now)
}

/// kube's `ShouldDeleteDuringUpdate`: an update that leaves an object being
/// deleted with no finalizers deletes it (a namespace also needs empty
/// `spec.finalizers`).
pub fn should_delete_during_update(resource: &ResourceInfo, current: &Value, next: &Value) -> bool {
    if !is_deleting(current) || !finalizers(next).is_empty() {
        return false;
    }
    let grace = current.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
    if grace.is_some_and(|g| g != 0) {
        return false;
    }
    if resource.group.is_empty() && resource.plural == "namespaces" {
        return next.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
    }
    true
}

fn set_finalizers(obj: &mut Value, list: &[String]) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("finalizers");
        } else {
            meta.insert("finalizers".into(), json!(list));
        }
    }
}

/// kube's `markAsDeleting`: deletionTimestamp now (kept if already set),
/// grace period 0, generation bumped on the first mark.
fn mark_as_deleting(obj: &mut Value, now: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if meta.get("deletionTimestamp").is_none_or(Value::is_null) {
        if let Some(generation) = meta.get("generation").and_then(Value::as_i64).filter(|g| *g > 0) {
            meta.insert("generation".into(), json!(generation + 1));
        }
        meta.insert("deletionTimestamp".into(), json!(now));
    }
    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
}

/// kube's `BeforeDelete` precondition checks (the conflict names the Kind).
pub fn check_preconditions(resource: &ResourceInfo, name: &str, current: &Value, pre: &Preconditions) -> Result<()> {
    let meta = |f: &str| current.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default();
    let conflict = |why: String| {
        let qualified = if resource.group.is_empty() { resource.kind.to_owned() } else { format!("{}.{}", resource.kind, resource.group) };
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
            details: Some(Box::new(StatusDetails {
                name: name.to_owned(),
                group: resource.group.to_owned(),
                kind: resource.kind.to_owned(),
                ..StatusDetails::default()
            })),
            list_continue: None,
        }
    };
    if let Some(uid) = &pre.uid
        && uid != meta("uid")
    {
        return Err(conflict(format!(
            "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
            meta("uid")
        )));
    }
    if let Some(rv) = &pre.resource_version
        && rv != meta("resourceVersion")
    {
        return Err(conflict(format!(
            "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            meta("resourceVersion")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
