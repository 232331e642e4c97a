//! Field paths and field sets, and their `FieldsV1` encoding, as
//! structured-merge-diff (`sigs.k8s.io/structured-merge-diff/fieldpath`) has them.
//!
//! A set holds member paths only; the `FieldsV1` tree gets its inner nodes
//! from the members' prefixes, and marks a node that is also a member with `"."`.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathElement {
    /// A struct field or map key: `f:name`.
    Field(String),
    /// An item of an associative list, by its key fields (sorted by name): `k:{"name":"a"}`.
    Key(Vec<(String, Value)>),
    /// An item of a set: `v:"a"`.
    Value(Value),
    /// An item of a list without keys (only under atomic lists, never stored): `i:0`.
    Index(usize),
}

/// A path from the object root.
pub type Path = Vec<PathElement>;

/// A set of member paths.
pub type Set = BTreeSet<Path>;

/// Orders JSON values as structured-merge-diff's `value.Compare`: numbers,
/// then strings, booleans, lists, maps, and null last.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.as_f64().unwrap_or(0.0).total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (l, r) in x.iter().zip(y) {
                let c = compare_values(l, r);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xk: Vec<_> = x.iter().collect();
            let mut yk: Vec<_> = y.iter().collect();
            xk.sort_by(|l, r| l.0.cmp(r.0));
            yk.sort_by(|l, r| l.0.cmp(r.0));
            for ((lk, lv), (rk, rv)) in xk.iter().zip(&yk) {
                let c = lk.cmp(rk).then_with(|| compare_values(lv, rv));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xk.len().cmp(&yk.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key: `f:name`, `k:{"name":"a"}`, `v:"a"`, `i:0`.
    pub fn to_fields_key(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(fields) => {
                let map: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", Value::Object(map))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key.
    pub fn from_fields_key(key: &str) -> Option<Self> {
        let (kind, rest) = key.split_at_checked(2)?;
        match kind {
            "f:" => Some(PathElement::Field(rest.to_owned())),
            "k:" => match serde_json::from_str::<Value>(rest).ok()? {
                Value::Object(m) => {
                    let mut fields: Vec<(String, Value)> = m.into_iter().collect();
                    fields.sort_by(|a, b| a.0.cmp(&b.0));
                    Some(PathElement::Key(fields))
                }
                _ => None,
            },
            "v:" => serde_json::from_str(rest).ok().map(PathElement::Value),
            "i:" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => {
                for ((an, av), (bn, bv)) in a.iter().zip(b) {
                    let c = an.cmp(bn).then_with(|| compare_values(av, bv));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (PathElement::Value(a), PathElement::Value(b)) => compare_values(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Go's `%v` of a value in a path string (strings quoted, as `value.ToString`).
fn value_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A path as structured-merge-diff prints it: `.spec.containers[name="a"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    let mut out = String::new();
    for pe in path {
        match pe {
            PathElement::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", value_string(v))).collect();
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            PathElement::Value(v) => out.push_str(&format!("[={}]", value_string(v))),
            PathElement::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Encodes a set as `FieldsV1` (object keys sort as kube writes them: `.`, then `f:`, `k:`, `v:`).
pub fn to_fields_v1(set: &Set) -> Value {
    fn node<'a>(root: &'a mut Map<String, Value>, path: &[PathElement]) -> &'a mut Map<String, Value> {
        let mut cur = root;
        for pe in path {
            let slot = cur.entry(pe.to_fields_key()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = match slot {
                Value::Object(m) => m,
                _ => unreachable!("slot is an object"),
            };
        }
        cur
    }
    let mut root = Map::new();
    for path in set {
        node(&mut root, path);
    }
    // A member that also has children is marked with ".".
    for path in set {
        let n = node(&mut root, path);
        if !path.is_empty() && !n.is_empty() {
            n.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// Decodes `FieldsV1`; `None` if it is malformed.
pub fn from_fields_v1(fields: &Value) -> Option<Set> {
    fn walk(node: &Map<String, Value>, prefix: &mut Path, out: &mut Set) -> Option<()> {
        for (key, child) in node {
            if key == "." {
                out.insert(prefix.clone());
                continue;
            }
            let pe = PathElement::from_fields_key(key)?;
            prefix.push(pe);
            let child = child.as_object()?;
            if child.is_empty() {
                out.insert(prefix.clone());
            } else {
                walk(child, prefix, out)?;
            }
            prefix.pop();
        }
        Some(())
    }
    let mut out = Set::new();
    walk(fields.as_object()?, &mut Vec::new(), &mut out)?;
    Some(out)
}

/// Whether `set` holds `path` or any path below it.
pub fn has_at_or_below(set: &Set, path: &[PathElement]) -> bool {
    set.range::<[PathElement], _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
        .next()
        .is_some_and(|p| p.starts_with(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> PathElement {
        PathElement::Field(s.into())
    }

    #[test]
    fn fields_v1_round_trip_matches_kube_layout() {
        let key = PathElement::Key(vec![("name".into(), json!("c"))]);
        let set: Set = [
            vec![f("data"), f("key")],
            vec![f("metadata"), f("labels"), f("app")],
            vec![f("spec"), f("containers"), key.clone()],
            vec![f("spec"), f("containers"), key.clone(), f("image")],
            vec![f("spec"), f("containers"), key.clone(), f("name")],
        ]
        .into_iter()
        .collect();
        let encoded = to_fields_v1(&set);
        assert_eq!(
            encoded.to_string(),
            r#"{"f:data":{"f:key":{}},"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:image":{},"f:name":{}}}}}"#
        );
        assert_eq!(from_fields_v1(&encoded), Some(set));
    }

    #[test]
    fn path_strings_are_kube_s() {
        let path = vec![
            f("spec"),
            f("containers"),
            PathElement::Key(vec![("containerPort".into(), json!(80)), ("protocol".into(), json!("TCP"))]),
            f("name"),
        ];
        assert_eq!(path_string(&path), r#".spec.containers[containerPort=80,protocol="TCP"].name"#);
        assert_eq!(path_string(&[f("metadata"), f("finalizers"), PathElement::Value(json!("a"))]), r#".metadata.finalizers[="a"]"#);
    }

    #[test]
    fn malformed_fields_are_refused() {
        assert_eq!(from_fields_v1(&json!({"x:y": {}})), None);
        assert_eq!(from_fields_v1(&json!({"f:a": 1})), None);
        assert_eq!(from_fields_v1(&json!([])), None);
    }
}
