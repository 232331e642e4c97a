//! Kubernetes `Status` errors: the one error type the API layer returns, with
//! constructors for every message the compatibility contract fixes verbatim.

use serde::Serialize;

use crate::resource::ResourceInfo;

/// The `Result` of API operations.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// `details.causes[]` of an Invalid status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCause {
    /// e.g. `FieldValueInvalid`, `FieldValueRequired`.
    pub reason: String,
    /// The message without the field prefix.
    pub message: String,
    /// The field path, e.g. `metadata.name` (omitted when empty, as kube).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// `details` of a Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusDetails {
    /// Name of the object concerned.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group of the object concerned.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Resource (e.g. `serviceaccounts`) or kind (for Invalid: `ServiceAccount`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Field errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// Seconds a client should wait before retrying.
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// A failed API call, rendered as a Kubernetes `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, …).
    pub reason: &'static str,
    /// Human-readable message; fixed by the compatibility contract.
    pub message: String,
    /// Optional details; `None` omits the `details` field entirely (boxed: errors stay small).
    pub details: Option<Box<StatusDetails>>,
    /// `metadata.continue` of the Status: the fresh token of a 410 for an
    /// expired continue token.
    pub list_continue: Option<String>,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: serde_json::Map<String, serde_json::Value>,
    status: &'static str,
    message: &'a str,
    // `omitempty` in kube's metav1.Status: an admission webhook's denial has none.
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a StatusDetails>,
    code: u16,
}

// === impl ApiError ===

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, list_continue: None }
    }

    fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    fn named(resource: &ResourceInfo, name: &str) -> StatusDetails {
        StatusDetails {
            name: name.to_owned(),
            group: resource.group.to_owned(),
            kind: resource.plural.to_owned(),
            ..StatusDetails::default()
        }
    }

    /// 404 NotFound with a message of its own (for lookups that are not one object).
    pub fn not_found_because(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }

    /// 404: `serviceaccounts "x" not found`.
    pub fn not_found(resource: &ResourceInfo, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", resource.qualified_plural()))
            .with_details(Self::named(resource, name))
    }

    /// 404 for an unknown path or resource.
    pub fn no_such_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(StatusDetails::default())
    }

    /// 409: `serviceaccounts "x" already exists`.
    pub fn already_exists(resource: &ResourceInfo, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.qualified_plural()))
            .with_details(Self::named(resource, name))
    }

    /// 409: the object was modified since the client read it.
    pub fn conflict(resource: &ResourceInfo, name: &str) -> Self {
        Self::conflict_because(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 with a custom reason after the `Operation cannot be fulfilled on …:` prefix.
    pub fn conflict_because(resource: &ResourceInfo, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", resource.qualified_plural()),
        )
        .with_details(Self::named(resource, name))
    }

    /// 403 with a full message (the authorizer builds RBAC messages).
    pub fn forbidden(resource_plural: &str, group: &str, name: &str, message: impl Into<String>) -> Self {
        let details = StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: resource_plural.to_owned(),
            ..StatusDetails::default()
        };
        Self::new(403, "Forbidden", message).with_details(details)
    }

    /// 403 without details (non-resource URLs).
    pub fn forbidden_plain(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message).with_details(StatusDetails::default())
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// What kube-apiserver answers when a validating admission webhook
    /// denies a request without a status code of its own (`ToStatusErr`):
    /// 400, no reason, `admission webhook "NAME" denied the request: MESSAGE`.
    pub fn webhook_denied(webhook: &str, message: &str) -> Self {
        Self::new(400, "", format!("admission webhook {webhook:?} denied the request: {message}"))
    }

    /// 422 without field causes (e.g. a JSON patch `test` that failed).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_supported(resource: &ResourceInfo, verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind \"{}\"", resource.qualified_plural()),
        )
        .with_details(StatusDetails { group: resource.group.to_owned(), kind: resource.plural.to_owned(), ..Default::default() })
    }

    /// 405 for a method the path does not serve (a POST to an object's path, a
    /// PUT or PATCH of a collection): kube-apiserver's generic answer.
    pub fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            .with_details(StatusDetails::default())
    }

    /// 410 Gone: a watch or list from a compacted resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 `Too large resource version`: a read at a revision the store has
    /// not reached (kube-apiserver's `NewTooLargeResourceVersionError`).
    pub fn too_large_resource_version(requested: i64, current: i64) -> Self {
        Self::new(504, "Timeout", format!("Timeout: Too large resource version: {requested}, current: {current}")).with_details(
            StatusDetails {
                causes: vec![StatusCause {
                    reason: "ResourceVersionTooLarge".into(),
                    message: "Too large resource version".into(),
                    field: String::new(),
                }],
                retry_after_seconds: Some(1),
                ..StatusDetails::default()
            },
        )
    }

    /// 413: the body is larger than the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }

    /// 415: a content type the endpoint does not take.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"))
    }

    /// 406: no media type of the `Accept` header can be produced (kube's negotiation error).
    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::new(406, "NotAcceptable", format!("only the following media types are accepted: {}", accepted.join(", ")))
    }

    /// 422 Invalid with field errors; `kind` is the object's Kind (`ServiceAccount`).
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let qualified_kind = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let summary = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let summary = if summary.len() == 1 {
            summary.into_iter().next().unwrap_or_default()
        } else {
            format!("[{}]", summary.join(", "))
        };
        Self::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {summary}")).with_details(StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes,
            retry_after_seconds: None,
        })
    }

    /// 500 with a generic message; the cause is logged by the caller, never sent.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
            .with_details(StatusDetails::default())
    }

    /// 503 while the server is starting.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The Status object as JSON.
    pub fn to_status(&self) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(token) = &self.list_continue {
            metadata.insert("continue".into(), serde_json::Value::String(token.clone()));
        }
        let body = StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata,
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_deref(),
            code: self.code,
        };
        serde_json::to_value(body).unwrap_or(serde_json::Value::Null)
    }
}

/// A `Status` with `status: Success` (returned by some deletes).
pub fn success_status(resource: &ResourceInfo, name: &str, uid: &str) -> serde_json::Value {
    let mut details = serde_json::json!({"name": name, "group": resource.group, "kind": resource.plural, "uid": uid});
    // Go's `omitempty`: the core group is left out.
    if let Some(map) = details.as_object_mut() {
        map.retain(|_, v| v.as_str() != Some(""));
    }
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

/// Field-error builders for 422 causes.
pub mod field {
    use super::StatusCause;

    /// `Invalid value: <value>: <detail>`; strings are quoted like Go's `%q`.
    pub fn invalid(path: &str, value: &serde_json::Value, detail: &str) -> StatusCause {
        StatusCause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {}: {detail}", value),
            field: path.into(),
        }
    }

    /// `Required value` (with an optional detail).
    pub fn required(path: &str, detail: &str) -> StatusCause {
        let message = if detail.is_empty() { "Required value".to_owned() } else { format!("Required value: {detail}") };
        StatusCause { reason: "FieldValueRequired".into(), message, field: path.into() }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(path: &str, detail: &str) -> StatusCause {
        StatusCause { reason: "FieldValueForbidden".into(), message: format!("Forbidden: {detail}"), field: path.into() }
    }

    /// `Too long: must have at most N bytes`.
    pub fn too_long(path: &str, max: usize) -> StatusCause {
        StatusCause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: must have at most {max} bytes"),
            field: path.into(),
        }
    }

    /// `Unsupported value: …: supported values: …`.
    pub fn not_supported(path: &str, value: &serde_json::Value, supported: &[&str]) -> StatusCause {
        let list = supported.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        StatusCause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: {value}: supported values: {list}"),
            field: path.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::CORE_SERVICEACCOUNTS;

    #[test]
    fn not_found_matches_kube_apiserver() {
        let want: serde_json::Value = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "serviceaccounts \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "kind": "serviceaccounts"}, "code": 404
        });
        assert_eq!(ApiError::not_found(&CORE_SERVICEACCOUNTS, "nope").to_status(), want);
    }

    #[test]
    fn conflict_matches_kube_apiserver() {
        let status = ApiError::conflict(&CORE_SERVICEACCOUNTS, "api").to_status();
        assert_eq!(status["message"], "Operation cannot be fulfilled on serviceaccounts \"api\": the object has been modified; please apply your changes to the latest version and try again");
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(status["code"], 409);
    }

    #[test]
    fn invalid_name_matches_kube_apiserver() {
        let cause = field::invalid("metadata.name", &serde_json::json!("Bad_Name"), "bad");
        let status = ApiError::invalid("ServiceAccount", "", "Bad_Name", vec![cause]).to_status();
        assert_eq!(status["message"], "ServiceAccount \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": bad");
        assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueInvalid");
        assert_eq!(status["details"]["kind"], "ServiceAccount");
        assert!(status["details"].get("group").is_none());
    }

    #[test]
    fn unauthorized_has_no_details() {
        let status = ApiError::unauthorized().to_status();
        assert!(status.get("details").is_none());
        assert_eq!(status["message"], "Unauthorized");
    }
}
