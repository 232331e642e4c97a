//! ServiceAccount token endpoints: TokenRequest (`serviceaccounts/token`),
//! TokenReview, SelfSubjectReview and OIDC discovery.

use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use serde::Serialize;
use serde_json::{Value, json};
use tessera_api::resource::{CORE_PODS, CORE_SECRETS, CORE_SERVICEACCOUNTS};
use tessera_api::status::{StatusCause, field};
use tessera_api::{ApiError, Registry};
use tessera_authn::UserInfo;
use tessera_authn::token::{BoundObject, BoundTokenSpec, IssueError, Review, ReviewCache, TokenAuthority};

use crate::node::NodeIdentity;
use crate::objects::ObjectCache;
use crate::response::{HandlerResult, bytes_response, json_response};

/// Everything the token endpoints need.
#[derive(Clone)]
pub struct TokenState {
    /// Issues and verifies tokens.
    pub authority: Arc<TokenAuthority>,
    /// Review results.
    pub cache: Arc<ReviewCache>,
    /// Watch-fed ServiceAccount/Pod/Secret state.
    pub objects: ObjectCache,
    /// `jwks_uri` advertised in OIDC discovery.
    pub jwks_uri: String,
}

/// Default `expirationSeconds` of a TokenRequest.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Minimum `expirationSeconds` (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Drops expired TokenReview results every few seconds, so that the memory a
/// burst of distinct tokens took comes back when the burst is over instead of
/// staying until later inserts need the room (BENCHMARKS.md, issue 14 "Memory").
pub(crate) async fn purge_expired_reviews(cache: Arc<ReviewCache>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let purged = cache.purge_expired(now());
        if purged > 0 {
            tracing::debug!(purged, left = cache.len(), "dropped expired TokenReview results");
        }
    }
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map(|t| t.to_string()).unwrap_or_default()
}

fn invalid_token_request(cause: StatusCause) -> ApiError {
    ApiError::invalid("TokenRequest", "authentication.k8s.io", "", vec![cause])
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

// === impl TokenState ===

impl TokenState {
    /// Reviews a bearer token for the API's own audiences (request authentication).
    pub fn authenticate_bearer(&self, token: &str) -> Option<UserInfo> {
        match &*self.cache.review(&self.authority, token, None, &self.objects, now()) {
            Review::Authenticated(ok) => Some(ok.user().clone()),
            _ => None,
        }
    }

    /// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`. A node's
    /// request goes through NodeRestriction admission after validation.
    pub async fn token_request(&self, registry: &Registry, node: &NodeIdentity<'_>, namespace: &str, name: &str, body: Value) -> HandlerResult {
        let spec = body.get("spec").cloned().unwrap_or_default();
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
            Some(v) => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
        };
        if expiration < MIN_EXPIRATION_SECONDS {
            return Err(invalid_token_request(field::invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration less than 10 minutes")).into());
        }
        if expiration > 1 << 32 {
            return Err(invalid_token_request(field::invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration larger than 2^32 seconds")).into());
        }
        let sa = registry.get(&CORE_SERVICEACCOUNTS, Some(namespace), name).await?;
        let sa_uid = sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
        crate::node::admission::admit_token_request(registry, node, namespace, name, &spec).await?;
        let bound = match spec.get("boundObjectRef").filter(|v| !v.is_null()) {
            None => None,
            Some(reference) => Some(self.bound_object(registry, namespace, name, reference).await?),
        };
        let audiences = string_list(spec.get("audiences"));
        let issued = self
            .authority
            .issue_bound(
                &BoundTokenSpec {
                    namespace: namespace.to_owned(),
                    service_account: name.to_owned(),
                    service_account_uid: sa_uid,
                    audiences: audiences.clone(),
                    expiration_seconds: expiration,
                    bound,
                },
                now(),
            )
            .map_err(|e| match e {
                // Only the audiences are unbounded (names are): a token TokenReview
                // would refuse is not issued at all.
                IssueError::TooLarge { .. } => invalid_token_request(StatusCause {
                    reason: "FieldValueTooLong".into(),
                    message: format!("Too long: {e}"),
                    field: "spec.audiences".into(),
                }),
                IssueError::Key(e) => {
                    tracing::error!(error = %e, "signing a token failed");
                    ApiError::internal("failed to sign the token")
                }
            })?;
        let mut out_spec = spec.clone();
        out_spec["audiences"] = json!(if audiences.is_empty() { self.authority.config().api_audiences.clone() } else { audiences });
        out_spec["expirationSeconds"] = json!(expiration.min(self.authority.config().max_lifetime_seconds));
        let response = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now())},
            "spec": out_spec,
            "status": {"token": issued.token, "expirationTimestamp": rfc3339(issued.expires_at)},
        });
        Ok(json_response(StatusCode::CREATED, &response))
    }

    async fn bound_object(&self, registry: &Registry, namespace: &str, service_account: &str, reference: &Value) -> Result<BoundObject, ApiError> {
        let kind = reference.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = reference.get("name").and_then(Value::as_str).unwrap_or_default();
        let uid = reference.get("uid").and_then(Value::as_str).unwrap_or_default();
        let resource = match kind {
            "Pod" => &CORE_PODS,
            "Secret" => &CORE_SECRETS,
            other => {
                return Err(invalid_token_request(field::not_supported("spec.boundObjectRef.kind", &json!(other), &["Pod", "Secret"])));
            }
        };
        if name.is_empty() {
            return Err(invalid_token_request(field::required("spec.boundObjectRef.name", "")));
        }
        let object = registry.get(resource, Some(namespace), name).await?;
        let actual = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        if !uid.is_empty() && uid != actual {
            return Err(ApiError::conflict_because(
                resource,
                name,
                &format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"),
            ));
        }
        // A token claims the pod it is bound to: only a pod running as this
        // ServiceAccount may be named (as kube-apiserver insists).
        if kind == "Pod" && object.pointer("/spec/serviceAccountName").and_then(Value::as_str) != Some(service_account) {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount \"{service_account}\" to pod running with different serviceaccount name."
            )));
        }
        Ok(match kind {
            "Pod" => BoundObject::Pod { name: name.to_owned(), uid: actual.to_owned() },
            _ => BoundObject::Secret { name: name.to_owned(), uid: actual.to_owned() },
        })
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn token_review(&self, review: TokenReview) -> HandlerResult {
        let spec = review.spec;
        let token = spec.token.as_deref().unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::invalid("TokenReview", "authentication.k8s.io", "", vec![field::required("spec.token", "")]).into());
        }
        let requested = spec.audiences.as_deref().filter(|audiences| !audiences.is_empty());
        let verdict = self.cache.review(&self.authority, token, requested, &self.objects, now());
        let status = match &*verdict {
            Review::Authenticated(ok) => ReviewStatus { audiences: Some(ok.audiences()), authenticated: true, error: None, user: ok.user() },
            failed => ReviewStatus { audiences: None, authenticated: false, error: failed.error_message(), user: &NOBODY },
        };
        let answer = ReviewAnswer {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            metadata: NoMetadata { creation_timestamp: () },
            spec: &spec,
            status,
        };
        let body = serde_json::to_vec(&answer).map_err(|e| ApiError::internal(format!("encoding the review: {e}")))?;
        Ok(bytes_response(StatusCode::CREATED, body.into(), "application/json"))
    }

    /// `GET /.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.authority.config().issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self.authority.keys().algorithms(),
        })
    }

    /// `GET /openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        self.authority.keys().jwks()
    }
}

/// A TokenReview's answer: the request's spec, and the verdict as its status.
#[derive(Serialize)]
struct ReviewAnswer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: NoMetadata,
    spec: &'a TokenReviewSpec,
    status: ReviewStatus<'a>,
}

/// A review's metadata: kube's encoder writes the zero creation time as `null`.
#[derive(Serialize)]
struct NoMetadata {
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: (),
}

/// `status` as kube writes it: a refused token has an empty `user` and an
/// `error`, and no `authenticated` (false is omitted).
#[derive(Serialize)]
struct ReviewStatus<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    audiences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    authenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    user: &'a UserInfo,
}

/// The `user` of a refused token: `{}`.
static NOBODY: UserInfo = UserInfo { username: String::new(), uid: String::new(), groups: Vec::new(), extra: std::collections::BTreeMap::new() };

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`).
pub fn self_subject_review(user: &UserInfo) -> HandlerResult {
    let response = json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": user},
    });
    Ok(json_response(StatusCode::CREATED, &response))
}
