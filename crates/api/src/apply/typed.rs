//! Typed operations on objects, as structured-merge-diff's `typed` package
//! does them: the field set of a value, merging an applied configuration into
//! a live object, comparing two objects, and removing fields.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::fieldpath::{Path, PathElement, Set};
use super::schema::{Relation, Schema, Ty, key_default};

/// Why a value does not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TypeError {
    /// Where, as kube prints paths (`.spec.containers`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn type_error(path: &[PathElement], message: impl Into<String>) -> TypeError {
    TypeError { path: super::fieldpath::path_string(path), message: message.into() }
}

/// The path element of a list item, or `None` for atomic lists.
fn item_element(relation: Option<Relation>, item: &Value, path: &[PathElement], index: usize) -> Result<Option<PathElement>, TypeError> {
    match relation {
        Some(Relation::Set) => Ok(Some(PathElement::Value(item.clone()))),
        Some(Relation::Map(keys)) => {
            let Some(obj) = item.as_object() else {
                return Err(type_error(path, format!("element {index}: expected map, got {item}")));
            };
            let mut fields = Vec::with_capacity(keys.len());
            for key in keys {
                match obj.get(*key).cloned().filter(|v| !v.is_null()).or_else(|| key_default(key)) {
                    Some(v) => fields.push(((*key).to_owned(), v)),
                    None => {
                        return Err(type_error(
                            path,
                            format!("element {index}: associative list with keys has an element that omits key field {key:?} (and doesn't have default value)"),
                        ));
                    }
                }
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Some(PathElement::Key(fields)))
        }
        _ => Ok(None),
    }
}

/// The field set of `value`: every leaf, atomic value and list item in it.
/// `unique` refuses duplicate list items (an applied configuration must not have any).
pub fn field_set(schema: &Schema, value: &Value, unique: bool) -> Result<Set, TypeError> {
    let mut out = Set::new();
    walk_set(schema, schema.root(), value, &mut Vec::new(), &mut out, &mut None, unique)?;
    Ok(out)
}

/// The field set of `value` and its leaves' values (scalars, atomic values, set items).
fn field_set_with_leaves<'v>(schema: &Schema, value: &'v Value) -> Result<(Set, std::collections::BTreeMap<Path, &'v Value>), TypeError> {
    let mut out = Set::new();
    let mut leaves = Some(Vec::new());
    walk_set(schema, schema.root(), value, &mut Vec::new(), &mut out, &mut leaves, false)?;
    Ok((out, leaves.unwrap_or_default().into_iter().collect()))
}

fn leaf<'v>(out: &mut Set, leaves: &mut Option<Vec<(Path, &'v Value)>>, path: &Path, value: &'v Value) {
    out.insert(path.clone());
    if let Some(leaves) = leaves {
        leaves.push((path.clone(), value));
    }
}

fn walk_set<'v>(
    schema: &Schema,
    ty: Ty<'_>,
    value: &'v Value,
    path: &mut Path,
    out: &mut Set,
    leaves: &mut Option<Vec<(Path, &'v Value)>>,
    unique: bool,
) -> Result<(), TypeError> {
    if value.is_null() {
        leaf(out, leaves, path, value);
        return Ok(());
    }
    match ty {
        Ty::Scalar | Ty::Struct { atomic: true, .. } | Ty::Map { atomic: true, .. } | Ty::List { relation: None | Some(Relation::AtomicMap), .. } => {
            leaf(out, leaves, path, value);
        }
        Ty::Untyped => match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(PathElement::Field(k.clone()));
                    walk_set(schema, Ty::Untyped, v, path, out, leaves, unique)?;
                    path.pop();
                }
            }
            _ => {
                leaf(out, leaves, path, value);
            }
        },
        Ty::Struct { def, props, .. } => {
            let Some(map) = value.as_object() else { return Err(type_error(path, format!("expected map, got {value}"))) };
            if map.is_empty() {
                // An empty struct or map is a leaf (structured-merge-diff's emptyPromoteToLeaf).
                leaf(out, leaves, path, value);
            }
            for (k, v) in map {
                path.push(PathElement::Field(k.clone()));
                walk_set(schema, schema.field(def, props, k), v, path, out, leaves, unique)?;
                path.pop();
            }
        }
        Ty::Map { elem, .. } => {
            let Some(map) = value.as_object() else { return Err(type_error(path, format!("expected map, got {value}"))) };
            if map.is_empty() {
                leaf(out, leaves, path, value);
            }
            let elem = schema.elem(elem);
            for (k, v) in map {
                path.push(PathElement::Field(k.clone()));
                walk_set(schema, elem, v, path, out, leaves, unique)?;
                path.pop();
            }
        }
        Ty::List { elem, relation } => {
            let Some(items) = value.as_array() else { return Err(type_error(path, format!("expected list, got {value}"))) };
            if items.is_empty() {
                leaf(out, leaves, path, value);
            }
            let elem = schema.elem(elem);
            for (i, item) in items.iter().enumerate() {
                let Some(pe) = item_element(relation, item, path, i)? else { continue };
                path.push(pe);
                if !out.insert(path.clone()) && unique {
                    let shown = super::fieldpath::path_string(&path[path.len() - 1..]);
                    path.pop();
                    return Err(type_error(path, format!("duplicate entries for key {shown}")));
                }
                if relation == Some(Relation::Set) {
                    if let Some(leaves) = leaves {
                        leaves.push((path.clone(), item));
                    }
                } else {
                    walk_set(schema, elem, item, path, out, leaves, unique)?;
                }
                path.pop();
            }
        }
    }
    Ok(())
}

/// Merges `config` into `live` (structured-merge-diff's `Merge`): granular
/// structs and maps merge field by field, associative lists item by item in
/// kube's order, and everything else is replaced by `config`'s value.
pub fn merge(schema: &Schema, live: &Value, config: &Value) -> Result<Value, TypeError> {
    merge_ty(schema, schema.root(), Some(live), config, &mut Vec::new())
}

fn merge_maps<'s>(
    schema: &'s Schema,
    field_ty: &dyn Fn(&str) -> Ty<'s>,
    live: Option<&Value>,
    config: &Value,
    path: &mut Path,
) -> Result<Value, TypeError> {
    let (Some(Value::Object(l)), Value::Object(c)) = (live, config) else { return Ok(config.clone()) };
    let mut out = l.clone();
    for (k, cv) in c {
        path.push(PathElement::Field(k.clone()));
        let merged = merge_ty(schema, field_ty(k), l.get(k), cv, path)?;
        path.pop();
        out.insert(k.clone(), merged);
    }
    Ok(Value::Object(out))
}

fn merge_ty<'s>(schema: &'s Schema, ty: Ty<'s>, live: Option<&Value>, config: &Value, path: &mut Path) -> Result<Value, TypeError> {
    match ty {
        Ty::Struct { atomic: false, def, props } => merge_maps(schema, &|k| schema.field(def, props, k), live, config, path),
        Ty::Map { atomic: false, elem } => {
            let elem = schema.elem(elem);
            merge_maps(schema, &|_| elem, live, config, path)
        }
        Ty::Untyped => merge_maps(schema, &|_| Ty::Untyped, live, config, path),
        Ty::List { elem, relation: Some(relation @ (Relation::Map(_) | Relation::Set)) } => {
            let (Some(Value::Array(l)), Value::Array(c)) = (live, config) else { return Ok(config.clone()) };
            merge_list(schema, schema.elem(elem), relation, l, c, path).map(Value::Array)
        }
        _ => Ok(config.clone()),
    }
}

/// structured-merge-diff's list merge: items of both sides in the applied
/// order, live-only items kept where they were.
fn merge_list<'s>(schema: &'s Schema, elem: Ty<'s>, relation: Relation, lhs: &[Value], rhs: &[Value], path: &mut Path) -> Result<Vec<Value>, TypeError> {
    let key = |pe: &PathElement| pe.to_fields_key();
    let mut lhs_pes = Vec::with_capacity(lhs.len());
    let mut observed_lhs: HashMap<String, usize> = HashMap::new();
    for (i, item) in lhs.iter().enumerate() {
        let pe = item_element(Some(relation), item, path, i)?.unwrap_or(PathElement::Index(i));
        observed_lhs.entry(key(&pe)).or_insert(i);
        lhs_pes.push(pe);
    }
    let mut rhs_pes = Vec::with_capacity(rhs.len());
    let mut observed_rhs: HashMap<String, usize> = HashMap::new();
    for (i, item) in rhs.iter().enumerate() {
        let pe = item_element(Some(relation), item, path, i)?.unwrap_or(PathElement::Index(i));
        observed_rhs.entry(key(&pe)).or_insert(i);
        rhs_pes.push(pe);
    }
    let mut shared = rhs_pes.iter().filter(|pe| observed_lhs.contains_key(&key(pe))).map(key).collect::<Vec<_>>().into_iter();
    let mut next_shared = shared.next();
    let mut merged_rhs: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(lhs.len() + rhs.len());
    let merge_item = |l: Option<&Value>, r: &Value, pe: &PathElement, path: &mut Path| -> Result<Value, TypeError> {
        if relation == Relation::Set {
            return Ok(r.clone());
        }
        path.push(pe.clone());
        let merged = merge_ty(schema, elem, l, r, path);
        path.pop();
        merged
    };
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            let pe = &lhs_pes[li];
            if pe == &rhs_pes[ri] {
                let k = key(pe);
                merged_rhs.insert(k.clone());
                let l = observed_lhs.get(&k).map(|&i| &lhs[i]);
                let r = observed_rhs.get(&k).map_or(&rhs[ri], |&i| &rhs[i]);
                out.push(merge_item(l, r, pe, path)?);
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if observed_rhs.contains_key(&key(pe)) && next_shared.as_ref().is_some_and(|n| *n != key(pe)) {
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            let k = key(&lhs_pes[li]);
            if !observed_rhs.contains_key(&k) {
                out.push(lhs[li].clone());
                li += 1;
                continue;
            } else if merged_rhs.contains(&k) {
                li += 1;
                continue;
            }
        }
        if ri < rhs.len() {
            let pe = &rhs_pes[ri];
            let k = key(pe);
            merged_rhs.insert(k.clone());
            let l = observed_lhs.get(&k).map(|&i| &lhs[i]);
            out.push(merge_item(l, &rhs[ri], pe, path)?);
            ri += 1;
            if next_shared.as_ref() == Some(&k) {
                next_shared = shared.next();
            }
        }
    }
    Ok(out)
}

/// The value at `path`, if present.
pub fn value_at<'v>(value: &'v Value, path: &[PathElement]) -> Option<&'v Value> {
    let mut cur = value;
    for pe in path {
        cur = match pe {
            PathElement::Field(f) => cur.get(f)?,
            PathElement::Key(fields) => cur.as_array()?.iter().find(|item| {
                fields.iter().all(|(k, v)| item.get(k).cloned().filter(|x| !x.is_null()).or_else(|| key_default(k)).as_ref() == Some(v))
            })?,
            PathElement::Value(v) => cur.as_array()?.iter().find(|item| *item == v)?,
            PathElement::Index(i) => cur.as_array()?.get(*i)?,
        };
    }
    Some(cur)
}

/// Removes the value at `path` (a field, or a list item), if present.
pub fn remove_at(value: &mut Value, path: &[PathElement]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = value;
    for pe in parents {
        let next = match pe {
            PathElement::Field(f) => cur.get_mut(f),
            PathElement::Key(fields) => cur.as_array_mut().and_then(|items| {
                items.iter_mut().find(|item| {
                    fields.iter().all(|(k, v)| item.get(k).cloned().filter(|x| !x.is_null()).or_else(|| key_default(k)).as_ref() == Some(v))
                })
            }),
            PathElement::Value(v) => cur.as_array_mut().and_then(|items| items.iter_mut().find(|item| *item == v)),
            PathElement::Index(i) => cur.as_array_mut().and_then(|items| items.get_mut(*i)),
        };
        let Some(next) = next else { return };
        cur = next;
    }
    match last {
        PathElement::Field(f) => {
            if let Some(map) = cur.as_object_mut() {
                map.remove(f);
            }
        }
        PathElement::Key(fields) => {
            if let Some(items) = cur.as_array_mut() {
                items.retain(|item| {
                    !fields.iter().all(|(k, v)| item.get(k).cloned().filter(|x| !x.is_null()).or_else(|| key_default(k)).as_ref() == Some(v))
                });
            }
        }
        PathElement::Value(v) => {
            if let Some(items) = cur.as_array_mut() {
                items.retain(|item| item != v);
            }
        }
        PathElement::Index(i) => {
            if let Some(items) = cur.as_array_mut()
                && *i < items.len()
            {
                items.remove(*i);
            }
        }
    }
}

/// Removes many list items at once: each path's parent list loses the items
/// named by the paths (one pass per list, not one per item).
pub fn remove_items(value: &mut Value, paths: &[Path]) {
    let mut by_parent: std::collections::BTreeMap<&[PathElement], HashSet<String>> = std::collections::BTreeMap::new();
    let mut key_names: std::collections::BTreeMap<&[PathElement], Vec<String>> = std::collections::BTreeMap::new();
    for path in paths {
        let Some((last, parent)) = path.split_last() else { continue };
        if let PathElement::Key(fields) = last {
            key_names.entry(parent).or_insert_with(|| fields.iter().map(|(k, _)| k.clone()).collect());
        }
        by_parent.entry(parent).or_default().insert(last.to_fields_key());
    }
    // Deepest lists first, so outer removals do not move inner ones.
    for (parent, gone) in by_parent.into_iter().rev() {
        let names = key_names.get(parent).cloned().unwrap_or_default();
        let Some(Value::Array(items)) = value_at_mut(value, parent) else { continue };
        items.retain(|item| {
            let pe = if names.is_empty() {
                PathElement::Value(item.clone())
            } else {
                let mut fields: Vec<(String, Value)> = names
                    .iter()
                    .map(|k| (k.clone(), item.get(k).cloned().filter(|x| !x.is_null()).or_else(|| key_default(k)).unwrap_or(Value::Null)))
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                PathElement::Key(fields)
            };
            !gone.contains(&pe.to_fields_key())
        });
    }
}

fn value_at_mut<'v>(value: &'v mut Value, path: &[PathElement]) -> Option<&'v mut Value> {
    let mut cur = value;
    for pe in path {
        cur = match pe {
            PathElement::Field(f) => cur.get_mut(f)?,
            PathElement::Key(fields) => cur.as_array_mut()?.iter_mut().find(|item| {
                fields.iter().all(|(k, v)| item.get(k).cloned().filter(|x| !x.is_null()).or_else(|| key_default(k)).as_ref() == Some(v))
            })?,
            PathElement::Value(v) => cur.as_array_mut()?.iter_mut().find(|item| *item == v)?,
            PathElement::Index(i) => cur.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// What changed from one object to another, by field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Fields only in the new object.
    pub added: Set,
    /// Leaves in both whose values differ.
    pub modified: Set,
    /// Fields only in the old object.
    pub removed: Set,
}

impl Comparison {
    /// Whether nothing changed.
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// The fields holding non-empty maps, structs and lists: the proper prefixes
/// of a set's paths that end in a field. A comparison reports one of them as
/// added or removed when it appears or goes as a whole, as structured-merge-diff's
/// post-item hook does.
fn nodes(set: &Set) -> Set {
    let mut out = Set::new();
    for path in set {
        for len in 1..path.len() {
            if matches!(path[len - 1], PathElement::Field(_)) {
                out.insert(path[..len].to_vec());
            }
        }
    }
    out
}

/// Compares two objects field by field.
pub fn compare(schema: &Schema, old: &Value, new: &Value) -> Result<Comparison, TypeError> {
    let (old_set, old_leaves) = field_set_with_leaves(schema, old)?;
    let (new_set, new_leaves) = field_set_with_leaves(schema, new)?;
    let (old_nodes, new_nodes) = (nodes(&old_set), nodes(&new_set));
    // Leaves in both whose values differ (a map-list item is not a leaf: its fields are).
    let modified = old_leaves
        .iter()
        .filter(|(p, v)| new_leaves.get(*p).is_some_and(|n| n != *v))
        .map(|(p, _)| p.clone())
        .collect();
    let mut added: Set = new_set.difference(&old_set).cloned().collect();
    added.extend(new_nodes.iter().filter(|p| !old_nodes.contains(*p) && !old_set.contains(*p)).cloned());
    let mut removed: Set = old_set.difference(&new_set).cloned().collect();
    removed.extend(old_nodes.iter().filter(|p| !new_nodes.contains(*p) && !new_set.contains(*p)).cloned());
    Ok(Comparison { added, removed, modified })
}

/// Removes empty maps left behind at `path`'s parents after a removal.
pub fn remove_empty_parents(value: &mut Value, path: &[PathElement], keep: &dyn Fn(&[PathElement]) -> bool) {
    for len in (1..path.len()).rev() {
        let parent = &path[..len];
        if !matches!(parent.last(), Some(PathElement::Field(_))) || keep(parent) {
            return;
        }
        match value_at(value, parent) {
            Some(Value::Object(m)) if m.is_empty() => remove_at(value, parent),
            _ => return,
        }
    }
}

/// An empty object with only the given top-level fields.
pub fn empty_object(fields: &[(&str, Value)]) -> Value {
    Value::Object(fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<Map<String, Value>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CORE_CONFIGMAPS, CORE_PODS};
    use serde_json::json;

    #[test]
    fn field_set_of_a_pod_keys_containers_and_ports() {
        let schema = Schema::of(&CORE_PODS);
        let pod = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "args": ["x"]}]}});
        let set = field_set(&schema, &pod, true).unwrap();
        let encoded = super::super::fieldpath::to_fields_v1(&set);
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:args": {}, "f:image": {}, "f:name": {}, "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}})
        );
    }

    #[test]
    fn merge_keeps_live_only_items_in_place_and_replaces_atomic_lists() {
        let schema = Schema::of(&CORE_PODS);
        let live = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2", "args": ["x", "y"]}, {"name": "c", "image": "3"}]}});
        let config = json!({"spec": {"containers": [{"name": "c", "image": "4"}, {"name": "b", "args": ["z"]}]}});
        let merged = merge(&schema, &live, &config).unwrap();
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "c", "image": "4"}, {"name": "b", "image": "2", "args": ["z"]}])
        );
    }

    #[test]
    fn duplicate_and_keyless_items_are_type_errors() {
        let schema = Schema::of(&CORE_PODS);
        let err = field_set(&schema, &json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}), true).unwrap_err();
        assert_eq!(err.to_string(), r#".spec.containers: duplicate entries for key [name="a"]"#);
        let err = field_set(&schema, &json!({"spec": {"containers": [{"image": "a"}]}}), true).unwrap_err();
        assert!(err.to_string().contains("omits key field \"name\""), "{err}");
    }

    #[test]
    fn compare_reports_leaf_changes() {
        let schema = Schema::of(&CORE_CONFIGMAPS);
        let cmp = compare(&schema, &json!({"data": {"a": "1", "b": "2"}}), &json!({"data": {"a": "9", "c": "3"}})).unwrap();
        let f = |s: &str| PathElement::Field(s.into());
        assert_eq!(cmp.modified, [vec![f("data"), f("a")]].into_iter().collect());
        assert_eq!(cmp.added, [vec![f("data"), f("c")]].into_iter().collect());
        assert_eq!(cmp.removed, [vec![f("data"), f("b")]].into_iter().collect());
    }
}
