//! Label and field selectors, parsed once at the boundary.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::status::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A parsed label selector (`app=web,tier!=db,env in (a,b),!legacy`). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// A parsed field selector (`metadata.name=x,metadata.namespace!=y`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str, raw: &str) -> Result<BTreeSet<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: found '{rest}', expected: '('")))?;
    let set: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
    if set.is_empty() {
        return Err(ApiError::bad_request(format!("unable to parse requirement: {raw}: for 'in', 'notin' operators, values set can't be empty")));
    }
    Ok(set)
}

fn check_key(key: &str) -> Result<String, ApiError> {
    let errs = crate::validation::qualified_name(key);
    if let Some(e) = errs.first() {
        return Err(ApiError::bad_request(format!("unable to parse requirement: invalid label key \"{key}\": {e}")));
    }
    Ok(key.to_owned())
}

/// The two errors of kube's label selector parser that a split on operators
/// would word differently: a requirement that starts with an operator, and a
/// key followed by something that is not one.
fn reject_as_kubes_lexer(part: &str) -> Result<(), ApiError> {
    for op in ["!=", "==", "="] {
        if part.starts_with(op) {
            return Err(ApiError::bad_request(format!("found '{op}', expected: !, identifier, or 'end of string'")));
        }
    }
    let mut words = part.split_whitespace();
    if let (Some(_key), Some(next)) = (words.next(), words.next()) {
        let operator = ["in", "notin"].contains(&next)
            || ["in(", "notin(", "=", "!=", "("].iter().any(|op| next.starts_with(op));
        if !operator && !part.contains('=') {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: found '{next}', expected: in, notin, =, ==, !=, gt, lt"
            )));
        }
    }
    Ok(())
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if raw.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(raw) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reject_as_kubes_lexer(part)?;
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(check_key(key.trim())?)
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(check_key(k.trim())?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(check_key(k.trim())?, v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(check_key(k.trim())?, v.trim().to_owned())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(check_key(k.trim())?, parse_set(rest, part)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelRequirement::In(check_key(k.trim())?, parse_set(rest, part)?)
            } else {
                LabelRequirement::Exists(check_key(part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            LabelRequirement::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
        })
    }
}

/// The value of a selectable field of an object.
fn field_value<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    let pointer = format!("/{}", field.replace('.', "/"));
    object.pointer(&pointer).and_then(Value::as_str)
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter; `allowed` lists the fields
    /// this kind supports besides `metadata.name` and `metadata.namespace`.
    pub fn parse(raw: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{raw}'; can't understand '{part}'")));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !allowed.contains(&field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            reqs.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    /// The selector `metadata.name=NAME` (a named watch), built without
    /// parsing so that any name is taken literally.
    pub fn name_equals(name: &str) -> Self {
        Self::field_equals("metadata.name", name)
    }

    /// The selector `FIELD=VALUE`, built without parsing (the value is taken literally).
    pub fn field_equals(field: &str, value: &str) -> Self {
        Self(vec![(field.to_owned(), true, value.to_owned())])
    }

    /// True when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value required for `metadata.name`, if the selector pins one.
    pub fn required_name(&self) -> Option<&str> {
        self.required_value("metadata.name")
    }

    /// The value an equality requirement pins `field` to, if any. Requirements
    /// are conjunctive, so every object the selector matches has that value.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|(f, eq, _)| f == field && *eq).map(|(_, _, v)| v.as_str())
    }

    /// Whether the object satisfies every requirement (missing fields read as "").
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, want)| (field_value(object, field).unwrap_or("") == want) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_label_selectors_get_kubes_messages() {
        let msg = |raw: &str| LabelSelector::parse(raw).unwrap_err();
        let err = msg("app web");
        assert_eq!((err.code, err.message.as_str()), (400, "unable to parse requirement: found 'web', expected: in, notin, =, ==, !=, gt, lt"));
        assert_eq!(msg("=web").message, "found '=', expected: !, identifier, or 'end of string'");
        assert!(LabelSelector::parse("app in (a, b),tier notin (x),!legacy,env=prod").is_ok());
    }
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_operators() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("missing", false),
            ("!missing", true),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("missing notin (x)", true),
            ("app=web,tier=back", false),
            ("app in (web,api),tier=front", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).expect(sel).matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn label_selector_rejects_bad_keys_and_empty_sets() {
        assert_eq!(LabelSelector::parse("a in ()").unwrap_err().code, 400);
        assert_eq!(LabelSelector::parse("-bad=x").unwrap_err().code, 400);
    }

    #[test]
    fn field_selector() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a", &[]).expect("ok").matches(&o));
        assert!(!FieldSelector::parse("metadata.namespace!=ns", &[]).expect("ok").matches(&o));
        assert!(FieldSelector::parse("spec.nodeName=n1", &["spec.nodeName"]).expect("ok").matches(&o));
        let pinned = FieldSelector::parse("spec.nodeName!=n2,spec.nodeName==n1", &["spec.nodeName"]).expect("ok");
        assert_eq!(pinned.required_value("spec.nodeName"), Some("n1"));
        assert_eq!(FieldSelector::parse("spec.nodeName!=n1", &["spec.nodeName"]).expect("ok").required_value("spec.nodeName"), None);
        let err = FieldSelector::parse("spec.foo=x", &[]).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
    }
}
