//! Request authorization: the node authorizer (for nodes) and then RBAC
//! decide on the parsed request, and only an allowed request becomes an
//! [`Authorized`] value, the one thing resource handlers accept. A denial is
//! kube-apiserver's 403 message, with the node authorizer's reason appended.

use axum::extract::FromRequestParts;
use http::request::Parts;
use tessera_api::ApiError;
use tessera_authn::UserInfo;

use crate::node::authorizer::NodeDecision;
use crate::node::graph::NodeGraph;
use crate::node::{self, NodeIdentity};
use crate::rbac::PolicyCache;
use crate::request::ParsedRequest;
use crate::response::Failure;

/// Authorization settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Let anonymous users read OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`).
    pub anonymous_oidc_discovery: bool,
}

fn is_oidc_path(path: &str) -> bool {
    matches!(path, "/.well-known/openid-configuration" | "/openid/v1/jwks")
}

/// A request the authorizer allowed. Only [`authorize`] constructs one, and
/// handlers take the request to execute from it: a handler cannot run a
/// request that was not authorized, nor a different reading of it. (Clone only
/// because request extensions must be; the value still only comes from here.)
#[derive(Debug, Clone)]
pub struct Authorized(ParsedRequest);

impl Authorized {
    /// The request as it was authorized.
    pub fn request(&self) -> &ParsedRequest {
        &self.0
    }
}

/// Handlers extract the authorization proof the authorize layer left on the
/// request; without one the request is refused, never run.
impl<S: Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.remove::<Authorized>().ok_or_else(|| {
            tracing::error!(path = %parts.uri.path(), "a handler was reached without authorization");
            Failure(ApiError::internal("authorization failed"))
        })
    }
}

/// What the authorizers decided, with their reason (kube's union authorizer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the reason names the grant (empty for the node authorizer).
    Allow(String),
    /// Denied; the reason (possibly empty) explains a node's refusal.
    Deny(String),
}

/// Decides `attrs` for `user`: the node authorizer first for nodes, then
/// RBAC. `node_selector` is what the request's field selector pins
/// `spec.nodeName` to.
pub fn decide(policy: &PolicyCache, nodes: &NodeGraph, user: &UserInfo, attrs: &tessera_rbac::Request, node_selector: Option<&str>) -> Verdict {
    let reason = match node::identify(user) {
        NodeIdentity::NotANode => String::new(),
        NodeIdentity::Unnamed(name) => format!("unknown node for user {name:?}"),
        NodeIdentity::Named(name) => match node::authorizer::authorize(nodes, name, attrs, node_selector) {
            NodeDecision::Allow => return Verdict::Allow(String::new()),
            NodeDecision::NoOpinion(reason) => reason,
        },
    };
    match policy.authorize(user, attrs) {
        tessera_rbac::Decision::Allow(allowed) => Verdict::Allow(allowed.reason().to_owned()),
        tessera_rbac::Decision::Deny => Verdict::Deny(reason),
    }
}

/// Decides whether `user` may make the request: the node authorizer and
/// RBAC, plus anonymous OIDC discovery when configured (kube-apiserver's
/// `--anonymous-auth` + a binding of system:service-account-issuer-discovery
/// to system:unauthenticated, as one flag).
pub fn authorize(config: &AuthzConfig, policy: &PolicyCache, nodes: &NodeGraph, user: &UserInfo, request: ParsedRequest) -> Result<Authorized, ApiError> {
    let node_selector = match &request {
        ParsedRequest::Resource(r) => r.options.as_ref().ok().and_then(|o| o.list.fields.required_value("spec.nodeName")),
        ParsedRequest::NonResource(_) => None,
    };
    let attrs = request.attributes();
    let reason = match decide(policy, nodes, user, &attrs, node_selector) {
        Verdict::Allow(_) => return Ok(Authorized(request)),
        Verdict::Deny(reason) => reason,
    };
    // The policy APIs (inbound, explain, who-can-reach) authorize per pod in
    // their handlers (a token bound to the pod, or RBAC on servers in its
    // namespace): see crate::policy.
    if let ParsedRequest::NonResource(n) = &request
        && n.verb == "get"
        && crate::policy::authorizes_in_handler(&n.path)
    {
        return Ok(Authorized(request));
    }
    if let ParsedRequest::NonResource(n) = &request
        && config.anonymous_oidc_discovery
        && n.verb == "get"
        && is_oidc_path(&n.path)
    {
        return Ok(Authorized(request));
    }
    Err(forbidden_because(user, &attrs, &reason))
}

/// The 403 kube-apiserver sends for a denied request.
pub fn forbidden(user: &UserInfo, req: &tessera_rbac::Request) -> ApiError {
    forbidden_because(user, req, "")
}

/// The 403 with an authorizer's reason appended after `: `, as kube-apiserver does.
pub fn forbidden_because(user: &UserInfo, req: &tessera_rbac::Request, reason: &str) -> ApiError {
    let because = if reason.is_empty() { String::new() } else { format!(": {reason}") };
    if !req.resource_request {
        return ApiError::forbidden_plain(format!("forbidden: User \"{}\" cannot {} path \"{}\"{because}", user.username, req.verb, req.path));
    }
    let resource = if req.subresource.is_empty() { req.resource.clone() } else { format!("{}/{}", req.resource, req.subresource) };
    let qualified = if req.api_group.is_empty() { req.resource.clone() } else { format!("{}.{}", req.resource, req.api_group) };
    let subject = if req.name.is_empty() { qualified } else { format!("{qualified} \"{}\"", req.name) };
    // Like kube-apiserver, a namespace object counts as being in itself.
    let scope = if req.namespace.is_empty() { "at the cluster scope".to_owned() } else { format!("in the namespace \"{}\"", req.namespace) };
    let message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}{because}",
        user.username, req.verb, req.api_group
    );
    ApiError::forbidden(&req.resource, &req.api_group, &req.name, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse;
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

    fn check_with(config: &AuthzConfig, user: &UserInfo, method: Method, path: &str) -> Result<Authorized, ApiError> {
        authorize(config, &policy(), &crate::node::graph::node_graph(), user, parse(&method, path, None).unwrap())
    }

    fn check(user: &UserInfo, method: Method, path: &str) -> Result<Authorized, ApiError> {
        check_with(&AuthzConfig::default(), user, method, path)
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

    fn node(name: &str) -> UserInfo {
        UserInfo { username: format!("system:node:{name}"), groups: vec!["system:nodes".into(), "system:authenticated".into()], ..Default::default() }
    }

    #[test]
    fn nodes_get_the_node_authorizers_reason() {
        let nodes = crate::node::graph::node_graph();
        nodes.write(|g| {
            let pod = serde_json::json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n1", "serviceAccountName": "web"}});
            g.apply("/registry/pods/ns/web", Some(&serde_json::to_vec(&pod).unwrap()));
        });
        let check = |user: &UserInfo, method: Method, path: &str, query: Option<&str>| {
            authorize(&AuthzConfig::default(), &policy(), &nodes, user, parse(&method, path, query).unwrap())
        };
        assert!(check(&node("n1"), Method::POST, "/api/v1/namespaces/ns/serviceaccounts/web/token", None).is_ok());
        let status = check(&node("n2"), Method::POST, "/api/v1/namespaces/ns/serviceaccounts/web/token", None).unwrap_err().to_status();
        assert_eq!(status["message"], "serviceaccounts \"web\" is forbidden: User \"system:node:n2\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"ns\": no relationship found between node 'n2' and this object");
        // The field selector the handler runs with is the one authorized.
        assert!(check(&node("n1"), Method::GET, "/api/v1/pods", Some("fieldSelector=spec.nodeName%3Dn1")).is_ok());
        let status = check(&node("n1"), Method::GET, "/api/v1/pods", Some("fieldSelector=spec.nodeName%3Dn2&fieldSelector=spec.nodeName%3Dn1")).unwrap_err().to_status();
        assert_eq!(status["message"], "pods is forbidden: User \"system:node:n1\" cannot list resource \"pods\" in API group \"\" at the cluster scope: can only list/watch pods with spec.nodeName field selector");
        // Not in system:nodes: only RBAC, no reason.
        let impostor = UserInfo { username: "system:node:n1".into(), groups: vec!["system:authenticated".into()], ..Default::default() };
        let status = check(&impostor, Method::POST, "/api/v1/namespaces/ns/serviceaccounts/web/token", None).unwrap_err().to_status();
        assert_eq!(status["message"], "serviceaccounts \"web\" is forbidden: User \"system:node:n1\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"ns\"");
        let unnamed = node("");
        let status = check(&unnamed, Method::GET, "/api/v1/namespaces/ns/secrets/x", None).unwrap_err().to_status();
        assert_eq!(status["message"], "secrets \"x\" is forbidden: User \"system:node:\" cannot get resource \"secrets\" in API group \"\" in the namespace \"ns\": unknown node for user \"system:node:\"");
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
        assert!(check_with(&open, &UserInfo::anonymous(), Method::GET, "/openid/v1/jwks").is_ok());
        assert!(check_with(&open, &UserInfo::anonymous(), Method::POST, "/openid/v1/jwks").is_err());
        let status = check(&UserInfo::anonymous(), Method::GET, "/metrics").unwrap_err().to_status();
        assert_eq!(status["message"], "forbidden: User \"system:anonymous\" cannot get path \"/metrics\"");
    }
}
