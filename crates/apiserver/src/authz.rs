//! Authorization until RBAC lands: `system:masters` may do everything;
//! everyone (anonymous included) may read discovery and health; everything else
//! is denied with kube-apiserver's 403 message.

use tessera_api::ApiError;
use tessera_authn::{MASTERS_GROUP, UserInfo};

use crate::request_info::RequestInfo;

/// Paths anyone may GET (system:discovery + system:public-info-viewer).
fn is_public_path(path: &str) -> bool {
    matches!(path, "/version" | "/version/" | "/healthz" | "/livez" | "/readyz" | "/api" | "/api/" | "/apis" | "/apis/")
        || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi/")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Authorization settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Let anonymous users read OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`).
    pub anonymous_oidc_discovery: bool,
}

fn is_oidc_path(path: &str) -> bool {
    matches!(path, "/.well-known/openid-configuration" | "/openid/v1/jwks")
}

/// Decides whether `user` may make the request.
pub fn authorize(config: &AuthzConfig, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
    if user.in_group(MASTERS_GROUP) {
        return Ok(());
    }
    if !info.is_resource_request && info.verb == "get" && is_public_path(&info.path) {
        return Ok(());
    }
    // system:service-account-issuer-discovery is bound to system:serviceaccounts.
    if !info.is_resource_request
        && info.verb == "get"
        && is_oidc_path(&info.path)
        && (user.in_group("system:serviceaccounts") || config.anonymous_oidc_discovery)
    {
        return Ok(());
    }
    // system:basic-user: everyone authenticated may ask who they are.
    if info.is_resource_request
        && info.verb == "create"
        && info.api_group == "authentication.k8s.io"
        && info.resource == "selfsubjectreviews"
        && user.in_group(tessera_authn::AUTHENTICATED_GROUP)
    {
        return Ok(());
    }
    Err(forbidden(user, info))
}

/// The 403 kube-apiserver sends for a denied request.
pub fn forbidden(user: &UserInfo, info: &RequestInfo) -> ApiError {
    if !info.is_resource_request {
        return ApiError::forbidden_plain(format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.username, info.verb, info.path
        ));
    }
    let resource = if info.subresource.is_empty() {
        info.resource.clone()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    let qualified = if info.api_group.is_empty() { info.resource.clone() } else { format!("{}.{}", info.resource, info.api_group) };
    let subject = if info.name.is_empty() { qualified } else { format!("{qualified} \"{}\"", info.name) };
    // Like kube-apiserver, a namespace object counts as being in itself.
    let scope = match &info.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.username, info.verb, info.api_group
    );
    ApiError::forbidden(&info.resource, &info.api_group, &info.name, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_info::parse;
    use http::Method;

    fn sa_user() -> UserInfo {
        UserInfo { username: "system:serviceaccount:api:api".into(), ..Default::default() }
    }

    #[test]
    fn forbidden_list_in_namespace_matches_reference() {
        let info = parse(&Method::GET, "/api/v1/namespaces/kube-system/secrets", false);
        let status = authorize(&AuthzConfig::default(), &sa_user(), &info).unwrap_err().to_status();
        assert_eq!(status["message"], "secrets is forbidden: User \"system:serviceaccount:api:api\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"");
        assert_eq!(status["details"], serde_json::json!({"kind": "secrets"}));
    }

    #[test]
    fn forbidden_cluster_scope_matches_reference() {
        let info = parse(&Method::GET, "/api/v1/secrets", false);
        let status = authorize(&AuthzConfig::default(), &UserInfo::anonymous(), &info).unwrap_err().to_status();
        assert_eq!(status["message"], "secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" at the cluster scope");
    }

    #[test]
    fn forbidden_named_namespace_is_in_itself() {
        let info = parse(&Method::GET, "/api/v1/namespaces/foo", false);
        let status = authorize(&AuthzConfig::default(), &sa_user(), &info).unwrap_err().to_status();
        assert_eq!(status["message"], "namespaces \"foo\" is forbidden: User \"system:serviceaccount:api:api\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"foo\"");
    }

    #[test]
    fn masters_and_discovery() {
        let admin = UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
        assert!(authorize(&AuthzConfig::default(), &admin, &parse(&Method::DELETE, "/api/v1/namespaces/x", false)).is_ok());
        assert!(authorize(&AuthzConfig::default(), &UserInfo::anonymous(), &parse(&Method::GET, "/version", false)).is_ok());
        assert!(authorize(&AuthzConfig::default(), &UserInfo::anonymous(), &parse(&Method::GET, "/metrics", false)).is_err());
    }
}
