//! What a pod's projected volumes put where: the plan of files the agent
//! writes for a pod, read from the Pod object the API server returned (after
//! its admission injected `kube-api-access-xxxxx`), never from what the agent
//! sent. Every container's mounts of projected volumes are followed: each
//! `serviceAccountToken` source is a token with its own audience, expiry and
//! path, each `configMap` item a key of that ConfigMap (`ca.crt` of
//! `kube-root-ca.crt`), each `downwardAPI` item a field of the pod
//! (`metadata.namespace`, …), all at `mountPath/path` below the pod's root.
//!
//! The Pod is checked as input: mount paths must be absolute paths of plain
//! names, item paths relative paths of plain names (kube's rules: no `..`, not
//! starting with `..`), no file may be written twice or be a directory of
//! another, and a token must live at least 10 minutes. A source the agent
//! cannot provide (Secret, cluster trust bundle, resource fields) refuses the
//! pod rather than leaving a file silently missing.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// What goes into one projected file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A token of the pod's ServiceAccount, bound to the pod.
    Token {
        /// None: the API server's audiences (kube's default).
        audience: Option<String>,
        /// Requested lifetime.
        expiration_seconds: i64,
    },
    /// A key of a ConfigMap in the pod's namespace.
    ConfigMap {
        /// The ConfigMap.
        name: String,
        /// The key.
        key: String,
        /// An optional ConfigMap or key that is missing is no file.
        optional: bool,
    },
    /// A field of the pod itself (downward API), already read.
    Field(String),
}

/// One file of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedFile {
    /// Relative to the pod's root (the mount path without its leading `/`, then the item path).
    pub path: PathBuf,
    /// What it holds.
    pub content: Content,
}

impl ProjectedFile {
    /// Tokens are readable by the agent's user only; the rest by anyone, as kubelet's 0644.
    pub fn mode(&self) -> u32 {
        match self.content {
            Content::Token { .. } => 0o600,
            _ => 0o644,
        }
    }
}

/// A Pod the agent cannot project: every problem, kube-style.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .0.as_slice() { [one] => one.clone(), many => format!("[{}]", many.join(", ")) })]
pub struct UnprojectablePod(pub Vec<String>);

/// kube's lower bound on a projected token's lifetime.
const MIN_EXPIRATION_SECONDS: i64 = 10 * 60;
/// kube's default `expirationSeconds` of a projection.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The names of an item path, if it is a relative path of plain names (kube's
/// `validateLocalDescendingPath` plus: no `.` or empty elements).
fn item_path(path: &str) -> Result<PathBuf, &'static str> {
    if path.is_empty() {
        return Err("Required value");
    }
    if path.starts_with('/') {
        return Err("must be a relative path");
    }
    let elements: Vec<&str> = path.split('/').collect();
    if elements.contains(&"..") {
        return Err("must not contain '..'");
    }
    if elements[0].starts_with("..") {
        return Err("must not start with '..'");
    }
    if elements.iter().any(|e| e.is_empty() || *e == ".") {
        return Err("must be plain names separated by '/' (no '.' or empty elements)");
    }
    Ok(PathBuf::from(path))
}

/// A mount path as a path relative to the pod's root, if it is an absolute
/// path of plain names.
fn mount_path(path: &str) -> Result<PathBuf, &'static str> {
    let Some(rest) = path.strip_prefix('/') else { return Err("must be an absolute path") };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err("must not be the root directory");
    }
    let rel = Path::new(rest);
    if rest.split('/').any(|e| e.is_empty() || e == "." || e == "..") || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("must be plain names separated by '/' (no '.', '..' or empty elements)");
    }
    Ok(rel.to_owned())
}

fn invalid(field: &str, value: &str, why: &str) -> String {
    if why == "Required value" { format!("{field}: Required value") } else { format!("{field}: Invalid value: {value:?}: {why}") }
}

/// The downward API fields the agent can provide, read from the pod.
fn field_value(pod: &Value, field_path: &str) -> Option<String> {
    let pointer = match field_path {
        "metadata.namespace" => "/metadata/namespace",
        "metadata.name" => "/metadata/name",
        "metadata.uid" => "/metadata/uid",
        "spec.serviceAccountName" => "/spec/serviceAccountName",
        "spec.nodeName" => "/spec/nodeName",
        _ => return None,
    };
    Some(str_at(pod, pointer).unwrap_or_default().to_owned())
}

/// The files of one projected volume source, relative to its mount.
fn source_files(pod: &Value, source: &Value, field: &str, problems: &mut Vec<String>) -> Vec<(PathBuf, Content)> {
    let mut files = Vec::new();
    let mut push = |path: &str, field: String, content: Content, problems: &mut Vec<String>| match item_path(path) {
        Ok(p) => files.push((p, content)),
        Err(why) => problems.push(invalid(&field, path, why)),
    };
    let present = |key: &str| source.get(key).filter(|v| !v.is_null());
    if let Some(token) = present("serviceAccountToken") {
        let expiration_seconds = token.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_EXPIRATION_SECONDS);
        if expiration_seconds < MIN_EXPIRATION_SECONDS {
            problems.push(format!("{field}.serviceAccountToken.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a duration less than 10 minutes"));
        }
        let audience = token.get("audience").and_then(Value::as_str).filter(|a| !a.is_empty()).map(str::to_owned);
        let path = token.get("path").and_then(Value::as_str).unwrap_or_default();
        push(path, format!("{field}.serviceAccountToken.path"), Content::Token { audience, expiration_seconds }, problems);
    } else if let Some(map) = present("configMap") {
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let optional = map.get("optional").and_then(Value::as_bool).unwrap_or(false);
        let items = map.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if items.is_empty() {
            // Every key: the agent asks for them one by one, so it must know them.
            problems.push(format!("{field}.configMap.items: Required value: the agent projects the items a pod names"));
        }
        for (i, item) in items.iter().enumerate() {
            let key = item.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
            let path = item.get("path").and_then(Value::as_str).unwrap_or_default();
            push(path, format!("{field}.configMap.items[{i}].path"), Content::ConfigMap { name: name.clone(), key, optional }, problems);
        }
    } else if let Some(downward) = present("downwardAPI") {
        for (i, item) in downward.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let field_path = str_at(item, "/fieldRef/fieldPath").unwrap_or_default();
            let item_field = format!("{field}.downwardAPI.items[{i}]");
            match field_value(pod, field_path) {
                Some(value) => push(str_at(item, "/path").unwrap_or_default(), format!("{item_field}.path"), Content::Field(value), problems),
                None => problems.push(format!(
                    "{item_field}.fieldRef.fieldPath: Unsupported value: {field_path:?}: the agent provides \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\""
                )),
            }
        }
    } else {
        let kind = source.as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_default();
        problems.push(format!("{field}: Unsupported value: {kind:?}: the agent projects serviceAccountToken, configMap and downwardAPI sources"));
    }
    files
}

/// Whether `a` is a directory of `b` (or the same path).
fn is_within(a: &Path, b: &Path) -> bool {
    b.starts_with(a)
}

/// The files to write for `pod`, relative to the pod's root.
pub fn plan(pod: &Value) -> Result<Vec<ProjectedFile>, UnprojectablePod> {
    let mut problems = Vec::new();
    let volumes: BTreeMap<&str, (usize, &Value)> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| Some((v.get("name")?.as_str()?, (i, v))))
        .collect();
    // Each mount path once, with the volume mounted there (containers may share it).
    let mut mounts: BTreeMap<String, (&str, String)> = BTreeMap::new();
    for list in ["initContainers", "containers"] {
        for (c, container) in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (m, mount) in container.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let field = format!("spec.{list}[{c}].volumeMounts[{m}]");
                let (Some(name), Some(path)) = (str_at(mount, "/name"), str_at(mount, "/mountPath")) else {
                    problems.push(format!("{field}: Required value: name and mountPath"));
                    continue;
                };
                let Some((_, volume)) = volumes.get(name) else {
                    problems.push(format!("{field}.name: Not found: {name:?}"));
                    continue;
                };
                if volume.get("projected").is_none_or(Value::is_null) {
                    tracing::warn!(volume = name, mount = path, "the agent provides projected volumes only; this mount stays empty");
                    continue;
                }
                if str_at(mount, "/subPath").is_some_and(|s| !s.is_empty()) {
                    problems.push(format!("{field}.subPath: Forbidden: the agent mounts whole projected volumes"));
                    continue;
                }
                match mounts.get(path) {
                    Some((other, other_field)) if *other != name => {
                        problems.push(invalid(&format!("{field}.mountPath"), path, &format!("volume {other:?} is mounted there by {other_field}")));
                    }
                    Some(_) => {}
                    None => {
                        mounts.insert(path.to_owned(), (name, field));
                    }
                }
            }
        }
    }
    let mut files: Vec<ProjectedFile> = Vec::new();
    for (path, (name, mount_field)) in &mounts {
        let base = match mount_path(path) {
            Ok(base) => base,
            Err(why) => {
                problems.push(invalid(&format!("{mount_field}.mountPath"), path, why));
                continue;
            }
        };
        let Some((index, volume)) = volumes.get(name) else { continue };
        for (s, source) in volume.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let field = format!("spec.volumes[{index}].projected.sources[{s}]");
            for (rel, content) in source_files(pod, source, &field, &mut problems) {
                files.push(ProjectedFile { path: base.join(rel), content });
            }
        }
    }
    for (i, file) in files.iter().enumerate() {
        for other in &files[..i] {
            if file.path == other.path {
                problems.push(format!("{}: Duplicate value: two projected files at the same path", file.path.display()));
            } else if is_within(&file.path, &other.path) || is_within(&other.path, &file.path) {
                problems.push(format!("{}: Invalid value: conflicts with {}: one would be a directory of the other", file.path.display(), other.path.display()));
            }
        }
    }
    if problems.is_empty() { Ok(files) } else { Err(UnprojectablePod(problems)) }
}

#[cfg(test)]
mod tests;
