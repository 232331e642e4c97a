//! Name and field validation with kube-apiserver's exact messages.

use serde_json::Value;

use crate::status::{StatusCause, field};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_dns1123_label)
}

/// Errors for a DNS-1123 subdomain (most object names), as messages without the field prefix.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !is_dns1123_subdomain(value) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

/// Errors for a name that only has to be a safe URL path segment (RBAC objects).
pub fn path_segment(value: &str) -> Vec<String> {
    match value {
        "." => return vec!["may not be '.'".to_owned()],
        ".." => return vec!["may not be '..'".to_owned()],
        _ => {}
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if value.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// Errors for a DNS-1123 label (namespace names).
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !is_dns1123_label(value) {
        errs.push(DNS1123_LABEL_MSG.to_owned());
    }
    errs
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Errors for a label or annotation key (`prefix/name`).
pub fn qualified_name(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    } else if !is_qualified_name_part(name) {
        errs.push(QUALIFIED_NAME_MSG.to_owned());
    }
    errs
}

/// Errors for a label value.
pub fn label_value(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !is_qualified_name_part(value) && value.len() <= 63 {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

/// Errors for a ConfigMap/Secret data key.
pub fn config_key(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if key.is_empty() || !key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        errs.push(CONFIG_KEY_MSG.to_owned());
    } else if key == "." || key == ".." {
        errs.push("must not be '.'".to_owned());
    }
    errs
}

/// Pushes one `Invalid value` cause per message.
pub fn push_invalid(causes: &mut Vec<StatusCause>, path: &str, value: &str, msgs: Vec<String>) {
    for m in msgs {
        causes.push(field::invalid(path, &Value::String(value.to_owned()), &m));
    }
}

/// Validates `metadata.labels` and `metadata.annotations` keys and label values.
pub fn labels_and_annotations(meta: &Value, causes: &mut Vec<StatusCause>) {
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            push_invalid(causes, "metadata.labels", k, qualified_name(k));
            let v = v.as_str().unwrap_or_default();
            push_invalid(causes, "metadata.labels", v, label_value(v));
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            push_invalid(causes, "metadata.annotations", k, qualified_name(&k.to_lowercase()));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(field::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

/// Go's `%#v` of a `[]string`: `[]string{"a", "b"}`.
fn go_strings(list: &[&str]) -> String {
    let items = list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    format!("[]string{{{items}}}")
}

fn string_list<'a>(meta: &'a Value, field: &str) -> Vec<&'a str> {
    meta.get(field).and_then(Value::as_array).map(|l| l.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// kube's `ValidateNoNewFinalizers`: an object being deleted may lose
/// finalizers but never gain one.
pub fn no_new_finalizers(meta: &Value, old_meta: &Value, causes: &mut Vec<StatusCause>) {
    if old_meta.get("deletionTimestamp").is_none_or(Value::is_null) {
        return;
    }
    let old = string_list(old_meta, "finalizers");
    let mut extra: Vec<&str> = string_list(meta, "finalizers").into_iter().filter(|f| !old.contains(f)).collect();
    extra.sort_unstable();
    extra.dedup();
    if !extra.is_empty() {
        causes.push(field::forbidden(
            "metadata.finalizers",
            &format!("no new finalizers can be added if the object is being deleted, found new finalizers {}", go_strings(&extra)),
        ));
    }
}

/// kube's `ValidateOwnerReferences` (fields only) and `ValidateFinalizers`.
pub fn owners_and_finalizers(meta: &Value, causes: &mut Vec<StatusCause>) {
    for owner in meta.get("ownerReferences").and_then(Value::as_array).into_iter().flatten() {
        let text = |f: &str| owner.get(f).and_then(Value::as_str).unwrap_or_default();
        // schema.FromAPIVersionAndKind: "v1" or "group/version"; anything else has no version.
        let version = match text("apiVersion").split('/').collect::<Vec<_>>().as_slice() {
            [v] | [_, v] => (*v).to_owned(),
            _ => String::new(),
        };
        let path = "metadata.ownerReferences";
        if version.is_empty() {
            causes.push(field::invalid(&format!("{path}.apiVersion"), &Value::String(text("apiVersion").to_owned()), "version must not be empty"));
        }
        for f in ["kind", "name", "uid"] {
            if text(f).is_empty() {
                causes.push(field::invalid(&format!("{path}.{f}"), &Value::String(String::new()), "must not be empty"));
            }
        }
    }
    let finalizers = string_list(meta, "finalizers");
    for f in &finalizers {
        push_invalid(causes, "metadata.finalizers", f, qualified_name(f));
    }
    if finalizers.contains(&"orphan") && finalizers.contains(&"foregroundDeletion") {
        causes.push(StatusCause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {}: finalizer orphan and foregroundDeletion cannot be both set", go_strings(&finalizers)),
            field: "metadata.finalizers".into(),
        });
    }
}

/// kube's checks of an `immutable: true` Secret or ConfigMap on update:
/// `immutable` stays set and the listed data sections do not change.
pub fn immutable_data(obj: &Value, old: &Value, sections: &[&str], causes: &mut Vec<StatusCause>) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(field::forbidden("immutable", MSG));
    }
    // An absent section and an empty one are the same data.
    let section = |o: &Value, s: &str| o.get(s).filter(|v| v.as_object().is_some_and(|m| !m.is_empty())).cloned();
    for s in sections {
        if section(obj, s) != section(old, s) {
            causes.push(field::forbidden(s, MSG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_rules() {
        assert!(dns1123_subdomain("api").is_empty());
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert_eq!(dns1123_subdomain("Bad_Name"), vec![DNS1123_SUBDOMAIN_MSG.to_owned()]);
        assert!(!dns1123_subdomain("-a").is_empty());
        assert!(!dns1123_subdomain("a.").is_empty());
        assert_eq!(dns1123_subdomain(&"a".repeat(254))[0], "must be no more than 253 characters");
    }

    #[test]
    fn label_rules() {
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("app").is_empty());
        assert!(!qualified_name("/app").is_empty());
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(!qualified_name("-x").is_empty());
    }

    #[test]
    fn config_keys() {
        assert!(config_key("ca.crt").is_empty());
        assert!(!config_key("a/b").is_empty());
        assert!(!config_key("..").is_empty());
    }
}
