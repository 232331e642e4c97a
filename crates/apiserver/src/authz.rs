//! Request authorization: RBAC decides; a denial is kube-apiserver's 403 message.

use tessera_api::ApiError;
use tessera_authn::UserInfo;

use crate::rbac::{PolicyCache, request_of};
use crate::request_info::RequestInfo;

/// Authorization settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Let anonymous users read OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`).
    pub anonymous_oidc_discovery: bool,
}

fn is_oidc_path(path: &str) -> bool {
    matches!(path, "/.well-known/openid-configuration" | "/openid/v1/jwks")
}

/// Decides whether `user` may make the request: RBAC, plus anonymous OIDC
/// discovery when configured (kube-apiserver's
/// `--anonymous-auth` + a binding of system:service-account-issuer-discovery
/// to system:unauthenticated, as one flag).
pub fn authorize(config: &AuthzConfig, policy: &PolicyCache, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
    if policy.authorize(user, &request_of(info)).is_allowed() {
        return Ok(());
    }
    if config.anonymous_oidc_discovery && !info.is_resource_request && info.verb == "get" && is_oidc_path(&info.path) {
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
    use tessera_rbac::policy::{Binding, Role};

    fn policy() -> PolicyCache {
        let cache = crate::rbac::policy_cache();
        cache.write(|p| {
            for r in tessera_rbac::bootstrap::cluster_roles() {
                p.put_cluster_role(Role::from_object(&r).unwrap());
            }
            for b in tessera_rbac::bootstrap::cluster_role_bindings() {
                p.put_binding(Binding::from_object(&b).unwrap());
            }
        });
        cache
    }

    fn sa_user() -> UserInfo {
        UserInfo {
            username: "system:serviceaccount:api:api".into(),
            groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:api".into(), "system:authenticated".into()],
            ..Default::default()
        }
    }

    fn check(user: &UserInfo, method: Method, path: &str) -> Result<(), ApiError> {
        authorize(&AuthzConfig::default(), &policy(), user, &parse(&method, path, false))
    }

    #[test]
    fn forbidden_list_in_namespace_matches_reference() {
        let status = check(&sa_user(), Method::GET, "/api/v1/namespaces/kube-system/secrets").unwrap_err().to_status();
        assert_eq!(status["message"], "secrets is forbidden: User \"system:serviceaccount:api:api\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"");
        assert_eq!(status["details"], serde_json::json!({"kind": "secrets"}));
    }

    #[test]
    fn forbidden_cluster_scope_matches_reference() {
        let status = check(&UserInfo::anonymous(), Method::GET, "/api/v1/secrets").unwrap_err().to_status();
        assert_eq!(status["message"], "secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" at the cluster scope");
    }

    #[test]
    fn forbidden_named_namespace_is_in_itself() {
        let status = check(&sa_user(), Method::GET, "/api/v1/namespaces/foo").unwrap_err().to_status();
        assert_eq!(status["message"], "namespaces \"foo\" is forbidden: User \"system:serviceaccount:api:api\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"foo\"");
    }

    #[test]
    fn masters_discovery_and_oidc() {
        let admin = UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
        assert!(check(&admin, Method::DELETE, "/api/v1/namespaces/x").is_ok());
        assert!(check(&UserInfo::anonymous(), Method::GET, "/version").is_ok());
        assert!(check(&UserInfo::anonymous(), Method::GET, "/metrics").is_err());
        assert!(check(&sa_user(), Method::GET, "/openid/v1/jwks").is_ok());
        assert!(check(&UserInfo::anonymous(), Method::GET, "/openid/v1/jwks").is_err());
        let open = AuthzConfig { anonymous_oidc_discovery: true };
        assert!(authorize(&open, &policy(), &UserInfo::anonymous(), &parse(&Method::GET, "/openid/v1/jwks", false)).is_ok());
        let status = check(&UserInfo::anonymous(), Method::GET, "/metrics").unwrap_err().to_status();
        assert_eq!(status["message"], "forbidden: User \"system:anonymous\" cannot get path \"/metrics\"");
    }
}
