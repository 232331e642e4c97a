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
        let path = path.to_string();
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

    #[test]
    fn wrong_types_are_malformed() {
        let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": 5}});
        assert!(matches!(typed::<ServiceAccount>(body, false), Err(DecodeError::Malformed(_))));
    }
}
