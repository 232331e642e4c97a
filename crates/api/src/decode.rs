//! Decoding request bodies through the typed k8s-openapi structs: that checks
//! field types, drops unknown fields (or rejects them under
//! `fieldValidation=Strict`) and normalises the object the way kube-apiserver's
//! decoder does.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A function that normalises a body through one typed struct.
pub type DecodeFn = fn(Value, bool) -> Result<Value, DecodeError>;

/// Why a body does not decode into its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field has the wrong JSON type, or the body is not an object.
    #[error("{0}")]
    Malformed(String),
    /// Strict field validation found fields the kind does not have.
    #[error("strict decoding error: {}", .0.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", "))]
    UnknownFields(Vec<String>),
}

/// Decodes `body` into `T` and re-encodes it. With `strict`, unknown fields are an error.
pub fn typed<T: DeserializeOwned + Serialize>(body: Value, strict: bool) -> Result<Value, DecodeError> {
    let mut unknown = Vec::new();
    let typed: T = serde_ignored::deserialize(body, |path| {
        let path = field_path(&path);
        // apiVersion/kind are consumed by the typed struct itself; `status` of a
        // few kinds and `metadata.managedFields` are fine to drop.
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })
    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if strict && !unknown.is_empty() {
        return Err(DecodeError::UnknownFields(unknown));
    }
    serde_json::to_value(typed).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// A field's path as kube's strict decoder words it (`spec.containers[0].bogus`).
/// serde_ignored's own display marks each optional field it passes
/// through with `?` (`spec.?.bogus`), and most fields are optional.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Decodes a JSON body straight into `T`, skipping the `Value` that
/// [`typed`] starts from: `Some` exactly when the body is one JSON value
/// that `T` takes and, with `strict`, has no field `T` lacks. Otherwise
/// `None`, and the caller takes the generic path (a `Value`, then
/// [`typed`]), whose refusals carry kube's wording.
///
/// The object is what [`typed`] would make of the same body: both keep the
/// last of duplicate keys and drop unknown fields. One difference remains:
/// an unknown field nested deeper than serde_json's 128 levels is skipped
/// here (its skipping is iterative) where the `Value` parse refuses it; Go's
/// decoder, which allows 10,000 levels, also takes it.
pub fn typed_json<T: DeserializeOwned>(body: &[u8], strict: bool) -> Option<T> {
    let mut unknown = false;
    let mut json = serde_json::Deserializer::from_slice(body);
    let typed = serde_ignored::deserialize(&mut json, |path| {
        // As in `typed`: apiVersion and kind are the typed struct's own.
        let path = field_path(&path);
        unknown |= path != "apiVersion" && path != "kind";
    })
    .ok()?;
    json.end().ok()?;
    (!strict || !unknown).then_some(typed)
}

/// The layout kube parses `metav1.MicroTime` with (`RFC3339Micro`).
const RFC3339_MICRO: &str = "2006-01-02T15:04:05.000000Z07:00";

/// Checks a `MicroTime` the way kube's `MicroTime.UnmarshalJSON` does: Go's
/// `time.Parse(RFC3339Micro, s)` wants exactly six fractional digits
/// (`stdFracSecond0`), so `…:05Z` and `…:05.123Z` are refused. The date
/// and time before the fraction are left to the typed decode. The message
/// is Go's `ParseError`.
fn check_micro_time(value: &str) -> Result<(), DecodeError> {
    let refuse = |rest: &str, elem: &str| {
        Err(DecodeError::Malformed(format!("parsing time {value:?} as {RFC3339_MICRO:?}: cannot parse {rest:?} as {elem:?}")))
    };
    // `2006-01-02T15:04:05` is 19 ASCII bytes; a shorter or non-ASCII head
    // is the typed decode's to refuse.
    let Some(rest) = value.get(19..) else { return Ok(()) };
    let b = rest.as_bytes();
    let fraction_ok = b.len() >= 7 && matches!(b[0], b'.' | b',') && b[1..7].iter().all(u8::is_ascii_digit);
    if !fraction_ok {
        return refuse(rest, ".000000");
    }
    let zone = &rest[7..];
    let zb = zone.as_bytes();
    let offset_ok = zb.len() == 6
        && matches!(zb[0], b'+' | b'-')
        && zb[1..3].iter().all(u8::is_ascii_digit)
        && zb[3] == b':'
        && zb[4..6].iter().all(u8::is_ascii_digit);
    if zone != "Z" && !offset_ok {
        return refuse(zone, "Z07:00");
    }
    Ok(())
}

/// Checks the `MicroTime` fields at `paths` (JSON pointers) of `body`.
fn check_micro_times(body: &Value, paths: &[&str]) -> Result<(), DecodeError> {
    for path in paths {
        if let Some(Value::String(s)) = body.pointer(path) {
            check_micro_time(s)?;
        }
    }
    Ok(())
}

/// [`typed`] for a Lease, whose `acquireTime`/`renewTime` are `MicroTime`s.
pub fn lease(body: Value, strict: bool) -> Result<Value, DecodeError> {
    check_micro_times(&body, &["/spec/acquireTime", "/spec/renewTime"])?;
    typed::<k8s_openapi::api::coordination::v1::Lease>(body, strict)
}

/// [`typed`] for a core Event, whose `eventTime` and
/// `series.lastObservedTime` are `MicroTime`s.
pub fn event(body: Value, strict: bool) -> Result<Value, DecodeError> {
    check_micro_times(&body, &["/eventTime", "/series/lastObservedTime"])?;
    typed::<k8s_openapi::api::core::v1::Event>(body, strict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_dropped_unless_strict() {
        let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}, "bogus": 1});
        let out = typed::<ServiceAccount>(body.clone(), false).expect("lenient decode");
        assert_eq!(out, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}}));
        assert_eq!(
            typed::<ServiceAccount>(body, true).unwrap_err().to_string(),
            "strict decoding error: unknown field \"bogus\""
        );
    }

    /// What the generic path makes of `body`: a `Value`, then [`typed`].
    fn through_value(body: &str, strict: bool) -> Option<Value> {
        typed::<ServiceAccount>(serde_json::from_str(body).ok()?, strict).ok()
    }

    #[test]
    fn a_body_decoded_from_its_bytes_is_what_the_generic_path_makes_of_it() {
        let taken = [
            r#"{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a", "labels": {"x": "1"}}, "automountServiceAccountToken": false}"#,
            r#"{"metadata": {"name": "a"}}"#,
            // Duplicate keys: the last one counts, in both.
            r#"{"metadata": {"name": "a", "name": "b"}, "secrets": [{"name": "s"}], "secrets": [{"name": "t"}]}"#,
        ];
        for body in taken {
            let direct = typed_json::<ServiceAccount>(body.as_bytes(), true).map(|sa| serde_json::to_value(sa).unwrap());
            assert_eq!(direct, through_value(body, true), "{body}");
            assert!(direct.is_some(), "{body}");
        }
        let unknown = r#"{"metadata": {"name": "a"}, "bogus": 1}"#;
        let lenient = typed_json::<ServiceAccount>(unknown.as_bytes(), false).map(|sa| serde_json::to_value(sa).unwrap());
        assert_eq!(lenient, through_value(unknown, false));
    }

    #[test]
    fn a_body_the_direct_decode_does_not_take_is_left_to_the_generic_path() {
        let refused = [
            // Strict validation and an unknown field, however deep.
            (r#"{"metadata": {"name": "a"}, "bogus": 1}"#, true),
            (r#"{"metadata": {"name": "a", "bogus": {}}}"#, true),
            // Not JSON, not one value, not an object, a wrong type.
            (r#"{"metadata": {"name": "a"}"#, false),
            (r#"{"metadata": {"name": "a"}} {}"#, false),
            (r#"[]"#, false),
            (r#"{"metadata": {"name": 5}}"#, false),
            // Another kind or version: the generic path words that refusal.
            (r#"{"apiVersion": "v2", "metadata": {"name": "a"}}"#, false),
            (r#"{"kind": "Secret", "metadata": {"name": "a"}}"#, false),
            // An empty apiVersion, which the generic path fills in.
            (r#"{"apiVersion": "", "metadata": {"name": "a"}}"#, false),
        ];
        for (body, strict) in refused {
            assert!(typed_json::<ServiceAccount>(body.as_bytes(), strict).is_none(), "{body}");
        }
    }

    #[test]
    fn unknown_fields_are_named_by_their_path_as_kube_names_them() {
        let pod = json!({"metadata": {"name": "p", "bogus": 1}, "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i", "restart": "x"}], "extra": true}, "top": 1});
        assert_eq!(
            typed::<k8s_openapi::api::core::v1::Pod>(pod, true).unwrap_err().to_string(),
            r#"strict decoding error: unknown field "metadata.bogus", unknown field "spec.containers[1].restart", unknown field "spec.extra", unknown field "top""#
        );
    }

    #[test]
    fn wrong_types_are_malformed() {
        let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": 5}});
        assert!(matches!(typed::<ServiceAccount>(body, false), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn micro_times_need_six_fractional_digits_as_in_go() {
        let lease = |renew: &str| json!({"metadata": {"name": "l"}, "spec": {"renewTime": renew}});
        let ok = super::lease(lease("2026-12-05T23:00:02.123456Z"), false).expect("six digits");
        assert_eq!(ok["spec"]["renewTime"], "2026-12-05T23:00:02.123456Z");
        super::lease(lease("2026-12-05T23:00:02.123456+01:00"), false).expect("offset");
        let err = |renew: &str| super::lease(lease(renew), false).unwrap_err().to_string();
        assert_eq!(
            err("2026-12-05T23:00:02Z"),
            r#"parsing time "2026-12-05T23:00:02Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000""#
        );
        assert_eq!(
            err("2026-12-05T23:00:02.123Z"),
            r#"parsing time "2026-12-05T23:00:02.123Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse ".123Z" as ".000000""#
        );
        assert_eq!(
            err("2026-12-05T23:00:02.123456789Z"),
            r#"parsing time "2026-12-05T23:00:02.123456789Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "789Z" as "Z07:00""#
        );
        let event = json!({"metadata": {"name": "e"}, "involvedObject": {}, "eventTime": "2026-12-05T23:00:02Z"});
        assert!(super::event(event, false).is_err());
    }
}
