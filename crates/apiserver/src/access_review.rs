//! SubjectAccessReview, LocalSubjectAccessReview and SelfSubjectAccessReview:
//! "may this user do this?", answered by the authorizers that decide requests
//! (the node authorizer, then RBAC).
//!
//! A review arrives as its kind's struct, decoded once (straight from JSON
//! bytes where it can be: `TypedBody` in [`crate::http`]); it is decided from
//! that struct and answered by serializing its spec with the verdict, with
//! no `serde_json::Value` on the way (BENCHMARKS.md, issue 14).

use http::StatusCode;
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SubjectAccessReview, SubjectAccessReviewSpec,
};
use serde::Serialize;
use serde_json::json;
use tessera_api::ApiError;
use tessera_api::status::{StatusCause, field};
use tessera_authn::UserInfo;
use tessera_rbac::Request;
use tessera_rbac::rule::go_quote;

use crate::authz::{Verdict, decide};
use crate::node::graph::NodeGraph;
use crate::rbac::PolicyCache;
use crate::response::{HandlerResult, bytes_response};

/// An access review as its kind's struct.
#[derive(Debug)]
pub enum AccessReview {
    /// `subjectaccessreviews`: any user, cluster-wide.
    Subject(SubjectAccessReview),
    /// `localsubjectaccessreviews`: any user, within the URL's namespace.
    Local(LocalSubjectAccessReview),
    /// `selfsubjectaccessreviews`: the requester.
    Own(SelfSubjectAccessReview),
}

/// Decides `review` and answers it: kube's `201 Created` with the request's
/// spec and `metadata.namespace`, and the verdict as its status.
/// `url_namespace` is the namespace of a LocalSubjectAccessReview's URL.
pub fn answer(policy: &PolicyCache, nodes: &NodeGraph, requester: &UserInfo, url_namespace: Option<&str>, review: &AccessReview) -> HandlerResult {
    match review {
        AccessReview::Subject(review) => {
            let spec = &review.spec;
            refuse_unless_valid("SubjectAccessReview", subject_spec_errors(spec))?;
            of_subject(policy, nodes, review.metadata.namespace.as_deref(), "SubjectAccessReview", spec)
        }
        AccessReview::Local(review) => {
            let spec = &review.spec;
            // kube sets an object's namespace from its URL and refuses another one.
            let namespace = url_namespace.unwrap_or_default();
            if review.metadata.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request").into());
            }
            let mut errors = subject_spec_errors(spec);
            if let Some(attributes) = &spec.resource_attributes {
                let asked = attributes.namespace.as_deref().unwrap_or_default();
                if asked != namespace {
                    errors.push(field::invalid("spec.resourceAttributes.namespace", &json!(asked), "must match metadata.namespace"));
                }
            }
            if let Some(attributes) = &spec.non_resource_attributes {
                errors.push(invalid_struct("spec.nonResourceAttributes", attributes, "disallowed on this kind of request"));
            }
            refuse_unless_valid("LocalSubjectAccessReview", errors)?;
            of_subject(policy, nodes, Some(namespace), "LocalSubjectAccessReview", spec)
        }
        AccessReview::Own(review) => {
            let SelfSubjectAccessReviewSpec { resource_attributes, non_resource_attributes } = &review.spec;
            let errors = attributes_errors(resource_attributes.as_ref(), non_resource_attributes.as_ref());
            refuse_unless_valid("SelfSubjectAccessReview", errors)?;
            let attributes = attributes_of(resource_attributes.as_ref(), non_resource_attributes.as_ref());
            let verdict = decide(policy, nodes, requester, &attributes, None);
            respond("SelfSubjectAccessReview", review.metadata.namespace.as_deref(), &review.spec, &verdict)
        }
    }
}

/// A (Local)SubjectAccessReview, validated: the spec names the user to decide for.
fn of_subject(policy: &PolicyCache, nodes: &NodeGraph, namespace: Option<&str>, kind: &'static str, spec: &SubjectAccessReviewSpec) -> HandlerResult {
    let subject = UserInfo {
        username: spec.user.clone().unwrap_or_default(),
        uid: spec.uid.clone().unwrap_or_default(),
        groups: spec.groups.clone().unwrap_or_default(),
        extra: spec.extra.clone().unwrap_or_default(),
    };
    let attributes = attributes_of(spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref());
    let verdict = decide(policy, nodes, &subject, &attributes, None);
    respond(kind, namespace, spec, &verdict)
}

/// kube's `ValidateSubjectAccessReviewSpec`: every error, in kube's order.
fn subject_spec_errors(spec: &SubjectAccessReviewSpec) -> Vec<StatusCause> {
    let mut errors = attributes_errors(spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref());
    let user = spec.user.as_deref().unwrap_or_default();
    if user.is_empty() && spec.groups.as_ref().is_none_or(Vec::is_empty) {
        errors.push(field::invalid("spec.user", &json!(user), "at least one of user or group must be specified"));
    }
    errors
}

/// Exactly one of the attributes (`ValidateSelfSubjectAccessReviewSpec`).
fn attributes_errors(resource: Option<&ResourceAttributes>, non_resource: Option<&NonResourceAttributes>) -> Vec<StatusCause> {
    match (resource, non_resource) {
        (Some(_), Some(non_resource)) => {
            vec![invalid_struct("spec.nonResourceAttributes", non_resource, "cannot be specified in combination with resourceAttributes")]
        }
        // Go prints the nil pointer it was given as the string "null".
        (None, None) => vec![field::invalid(
            "spec.resourceAttributes",
            &json!("null"),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )],
        _ => Vec::new(),
    }
}

/// `field.Invalid` of a struct: Go prints it with `%#v`.
fn invalid_struct(path: &str, attributes: &NonResourceAttributes, detail: &str) -> StatusCause {
    let text = |s: &Option<String>| go_quote(s.as_deref().unwrap_or_default());
    let value = format!("authorization.NonResourceAttributes{{Path:{}, Verb:{}}}", text(&attributes.path), text(&attributes.verb));
    StatusCause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {value}: {detail}"), field: path.into() }
}

/// 422 with every error, as kube's `NewInvalid(Kind(review.Kind), "", errs)`.
fn refuse_unless_valid(kind: &str, errors: Vec<StatusCause>) -> Result<(), ApiError> {
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind, "authorization.k8s.io", "", errors)) }
}

/// The request a valid review asks about: its resource attributes, else its
/// non-resource attributes.
fn attributes_of(resource: Option<&ResourceAttributes>, non_resource: Option<&NonResourceAttributes>) -> Request {
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    match (resource, non_resource) {
        (Some(ra), _) => Request {
            resource_request: true,
            verb: text(&ra.verb),
            namespace: text(&ra.namespace),
            api_group: text(&ra.group),
            resource: text(&ra.resource),
            subresource: text(&ra.subresource),
            name: text(&ra.name),
            path: String::new(),
        },
        (None, Some(nra)) => Request { verb: text(&nra.verb), path: text(&nra.path), ..Default::default() },
        // Validation refused it already; nothing is allowed to no request.
        (None, None) => Request::default(),
    }
}

/// The answer's body, in kube's field order (which is also sorted order).
#[derive(Serialize)]
struct Answer<'a, Spec: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: AnswerMetadata<'a>,
    spec: &'a Spec,
    status: AnswerStatus<'a>,
}

#[derive(Serialize)]
struct AnswerMetadata<'a> {
    /// kube's encoder writes the zero time as `null`.
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

#[derive(Serialize)]
struct AnswerStatus<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

fn respond<Spec: Serialize>(kind: &'static str, namespace: Option<&str>, spec: &Spec, verdict: &Verdict) -> HandlerResult {
    let (allowed, reason) = match verdict {
        Verdict::Allow(reason) => (true, reason.as_str()),
        Verdict::Deny(reason) => (false, reason.as_str()),
    };
    let answer = Answer {
        api_version: "authorization.k8s.io/v1",
        kind,
        metadata: AnswerMetadata { creation_timestamp: (), namespace },
        spec,
        status: AnswerStatus { allowed, reason },
    };
    let body = serde_json::to_vec(&answer).map_err(|e| ApiError::internal(format!("encoding the review: {e}")))?;
    Ok(bytes_response(StatusCode::CREATED, body.into(), "application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use serde_json::{Value, json};
    use tessera_api::resource::{AUTHZ_LOCALSUBJECTACCESSREVIEWS, AUTHZ_SELFSUBJECTACCESSREVIEWS, AUTHZ_SUBJECTACCESSREVIEWS, ResourceInfo};
    use tessera_rbac::policy::{Binding, Role};

    /// jane may list pods in `api` (the reference's RoleBinding).
    fn policy() -> PolicyCache {
        let policy = crate::rbac::policy_cache();
        let role = json!({"metadata": {"name": "pod-reader", "namespace": "api"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        let binding = json!({"metadata": {"name": "read-pods", "namespace": "api"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]});
        policy.write(|p| {
            p.put_role(Role::from_object(&role).expect("role"));
            p.put_binding(Binding::from_object(&binding).expect("binding"));
        });
        policy
    }

    fn requester() -> UserInfo {
        UserInfo { username: "jane".into(), groups: vec!["system:authenticated".into()], ..UserInfo::default() }
    }

    /// The status and body of the answer to `review`.
    async fn answered(policy: &PolicyCache, url_namespace: Option<&str>, review: &AccessReview) -> (u16, Vec<u8>) {
        let response = match answer(policy, &crate::node::graph::node_graph(), &requester(), url_namespace, review) {
            Ok(response) => response,
            Err(failure) => axum::response::IntoResponse::into_response(failure),
        };
        let status = response.status().as_u16();
        (status, to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec())
    }

    /// `body` as `resource`'s struct, decoded as `TypedBody::decode` decodes
    /// JSON: `direct` straight from its bytes, else the generic way (a
    /// `Value`, normalised through the struct).
    fn review(resource: &ResourceInfo, body: &Value, direct: bool) -> AccessReview {
        fn decode<T: serde::de::DeserializeOwned>(body: &Value, resource: &ResourceInfo, direct: bool) -> T {
            if direct {
                tessera_api::decode::typed_json(body.to_string().as_bytes(), true).expect("the direct decode takes it")
            } else {
                serde_json::from_value(resource.decode(body.clone(), true).expect("normalises")).expect("decodes")
            }
        }
        match resource.plural {
            "subjectaccessreviews" => AccessReview::Subject(decode(body, resource, direct)),
            "localsubjectaccessreviews" => AccessReview::Local(decode(body, resource, direct)),
            _ => AccessReview::Own(decode(body, resource, direct)),
        }
    }

    fn direct(resource: &ResourceInfo, body: &Value) -> AccessReview {
        review(resource, body, true)
    }

    fn generic(resource: &ResourceInfo, body: &Value) -> AccessReview {
        review(resource, body, false)
    }

    #[tokio::test]
    async fn reviews_are_answered_as_kube_answers_them() {
        let policy = policy();
        let sar = |spec: Value| json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec});
        let reference = |spec: Value, status: Value| {
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {"creationTimestamp": null}, "spec": spec, "status": status})
        };
        let cases = [
            (
                json!({"resourceAttributes": {"namespace": "api", "resource": "pods", "verb": "list"}, "user": "jane"}),
                json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"read-pods/api\" of Role \"pod-reader\" to User \"jane\""}),
            ),
            (json!({"resourceAttributes": {"namespace": "default", "resource": "pods", "verb": "list"}, "user": "jane"}), json!({"allowed": false})),
            (json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}, "user": "jane"}), json!({"allowed": false})),
        ];
        for (spec, status) in cases {
            let (code, body) = answered(&policy, None, &direct(&AUTHZ_SUBJECTACCESSREVIEWS, &sar(spec.clone()))).await;
            assert_eq!(code, 201);
            assert_eq!(serde_json::from_slice::<Value>(&body).expect("JSON"), reference(spec, status));
        }
    }

    #[tokio::test]
    async fn the_direct_decode_and_the_generic_path_give_the_same_answer_byte_for_byte() {
        let policy = policy();
        let every_field = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "metadata": {"name": "ignored", "labels": {"a": "b"}},
            "spec": {
                "user": "jane", "uid": "u-1", "groups": ["g1", "system:authenticated"], "extra": {"scopes": ["x", "y"], "b": []},
                "resourceAttributes": {"namespace": "api", "verb": "get", "group": "", "version": "v1", "resource": "pods", "subresource": "log", "name": "p",
                    "fieldSelector": {"rawSelector": "spec.nodeName=n", "requirements": [{"key": "spec.nodeName", "operator": "In", "values": ["n"]}]},
                    "labelSelector": {"rawSelector": "app=x", "requirements": [{"key": "app", "operator": "In", "values": ["x"]}]}},
            },
            "status": {"allowed": true, "reason": "the client's status is not the answer"},
        });
        let local = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview", "metadata": {"namespace": "api"},
            "spec": {"user": "jane", "resourceAttributes": {"namespace": "api", "resource": "pods", "verb": "get"}}});
        let own = json!({"kind": "SelfSubjectAccessReview", "spec": {"nonResourceAttributes": {"path": "/version", "verb": "get"}}});
        let cases = [(&AUTHZ_SUBJECTACCESSREVIEWS, every_field, None), (&AUTHZ_LOCALSUBJECTACCESSREVIEWS, local, Some("api")), (&AUTHZ_SELFSUBJECTACCESSREVIEWS, own, None)];
        for (resource, body, url_namespace) in cases {
            let (code, fast) = answered(&policy, url_namespace, &direct(resource, &body)).await;
            assert_eq!(code, 201, "{}", String::from_utf8_lossy(&fast));
            assert_eq!(answered(&policy, url_namespace, &generic(resource, &body)).await, (code, fast.clone()));
            // Keys in sorted order, as the `Value` the answer used to be built as wrote them.
            let sorted = serde_json::to_vec(&serde_json::from_slice::<Value>(&fast).expect("JSON")).expect("encodes");
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&sorted));
        }
        let (_, fast) = answered(&policy, None, &direct(&AUTHZ_SUBJECTACCESSREVIEWS, &json!({"spec": {"user": "jane", "uid": "u-1", "extra": {"scopes": ["x"]},
            "resourceAttributes": {"namespace": "api", "resource": "pods", "verb": "get"}}}))).await;
        assert_eq!(
            String::from_utf8_lossy(&fast),
            r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","metadata":{"creationTimestamp":null},"spec":{"extra":{"scopes":["x"]},"resourceAttributes":{"namespace":"api","resource":"pods","verb":"get"},"uid":"u-1","user":"jane"},"status":{"allowed":true,"reason":"RBAC: allowed by RoleBinding \"read-pods/api\" of Role \"pod-reader\" to User \"jane\""}}"#
        );
    }

    #[tokio::test]
    async fn invalid_reviews_are_refused_with_kubes_messages() {
        let policy = policy();
        let refusal = |(code, body): (u16, Vec<u8>)| -> (u16, String) {
            let status: Value = serde_json::from_slice(&body).expect("a Status");
            assert_eq!(status["code"].as_u64(), Some(u64::from(code)));
            (code, status["message"].as_str().unwrap_or_default().to_owned())
        };
        let invalid = |kind: &str, errors: &str| (422, format!("{kind}.authorization.k8s.io \"\" is invalid: {errors}"));
        let neither = r#"spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified"#;
        let nobody = r#"spec.user: Invalid value: "": at least one of user or group must be specified"#;
        let healthz = r#"authorization.NonResourceAttributes{Path:"/healthz", Verb:"get"}"#;
        let pods = json!({"namespace": "api", "resource": "pods", "verb": "get"});
        let sar = |spec: Value| direct(&AUTHZ_SUBJECTACCESSREVIEWS, &json!({"spec": spec}));
        let local = |metadata: Value, spec: Value| direct(&AUTHZ_LOCALSUBJECTACCESSREVIEWS, &json!({"metadata": metadata, "spec": spec}));
        let own = |spec: Value| direct(&AUTHZ_SELFSUBJECTACCESSREVIEWS, &json!({"spec": spec}));
        let cases = [
            (sar(json!({"groups": [], "resourceAttributes": pods})), None, invalid("SubjectAccessReview", nobody)),
            (sar(json!({"user": "jane"})), None, invalid("SubjectAccessReview", neither)),
            (sar(json!({})), None, invalid("SubjectAccessReview", &format!("[{neither}, {nobody}]"))),
            (
                sar(json!({"user": "jane", "resourceAttributes": pods, "nonResourceAttributes": {"path": "/healthz", "verb": "get"}})),
                None,
                invalid("SubjectAccessReview", &format!("spec.nonResourceAttributes: Invalid value: {healthz}: cannot be specified in combination with resourceAttributes")),
            ),
            (own(json!({})), None, invalid("SelfSubjectAccessReview", neither)),
            (
                local(json!({"namespace": "api"}), json!({"user": "jane", "resourceAttributes": {"namespace": "kube-system", "verb": "get"}})),
                Some("api"),
                invalid("LocalSubjectAccessReview", r#"spec.resourceAttributes.namespace: Invalid value: "kube-system": must match metadata.namespace"#),
            ),
            (local(json!({}), json!({"user": "jane"})), Some("api"), invalid("LocalSubjectAccessReview", neither)),
            (
                local(json!({}), json!({"user": "jane", "nonResourceAttributes": {"path": "/healthz", "verb": "get"}})),
                Some("api"),
                invalid("LocalSubjectAccessReview", &format!("spec.nonResourceAttributes: Invalid value: {healthz}: disallowed on this kind of request")),
            ),
            (
                local(json!({"namespace": "kube-system"}), json!({"user": "jane", "resourceAttributes": pods})),
                Some("api"),
                (400, "the namespace of the provided object does not match the namespace sent on the request".to_owned()),
            ),
        ];
        for (review, url_namespace, expected) in cases {
            assert_eq!(refusal(answered(&policy, url_namespace, &review).await), expected, "{review:?}");
        }
    }

    #[tokio::test]
    async fn a_local_review_is_answered_in_the_namespace_of_its_url() {
        let policy = policy();
        let review = direct(&AUTHZ_LOCALSUBJECTACCESSREVIEWS, &json!({"spec": {"user": "jane", "resourceAttributes": {"namespace": "api", "resource": "pods", "verb": "list"}}}));
        let (code, body) = answered(&policy, Some("api"), &review).await;
        assert_eq!(code, 201);
        let answer: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(answer["metadata"], json!({"creationTimestamp": null, "namespace": "api"}));
        assert_eq!(answer["status"]["allowed"], true);
    }
}
