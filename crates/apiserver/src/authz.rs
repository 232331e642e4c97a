//! Request authorization: the node authorizer (for nodes) and then RBAC
//! decide on the parsed request (for the policy APIs, on the pod it asks
//! about: see [`authorize_policy`]), and only an allowed request becomes an
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
use crate::request::{ParsedRequest, PolicyQuery};
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

    /// The policy API request as it was authorized, if this is one.
    pub fn policy(&self) -> Option<&PolicyQuery> {
        match &self.0 {
            ParsedRequest::Policy(p) => p.query.as_ref().ok(),
            ParsedRequest::Resource(_) | ParsedRequest::NonResource(_) => None,
        }
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
    if let ParsedRequest::Policy(p) = &request {
        // Parameters that do not name a pod leave nothing to authorize: the
        // 400 naming the bad one, whoever asks (it tells nothing about the cluster).
        let query = p.query.as_ref().map_err(Clone::clone)?;
        authorize_policy(policy, nodes, user, query)?;
        return Ok(Authorized(request));
    }
    let node_selector = match &request {
        ParsedRequest::Resource(r) => r.options.as_ref().ok().and_then(|o| o.list.fields.required_value("spec.nodeName")),
        ParsedRequest::Policy(_) | ParsedRequest::NonResource(_) => None,
    };
    let attrs = request.attributes();
    let reason = match decide(policy, nodes, user, &attrs, node_selector) {
        Verdict::Allow(_) => return Ok(Authorized(request)),
        Verdict::Deny(reason) => reason,
    };
    if let ParsedRequest::NonResource(n) = &request
        && config.anonymous_oidc_discovery
        && n.verb == "get"
        && is_oidc_path(&n.path)
    {
        return Ok(Authorized(request));
    }
    Err(forbidden_because(user, &attrs, &reason))
}

/// The policy APIs are authorized per pod, never on their path: the inbound
/// policy for a token bound to exactly that pod (what its proxy holds), and
/// all three for a user RBAC lets `list servers.policy.linkerd.io` in the
/// pod's namespace (explain, who-can-reach and the dashboard are for people:
/// a pod's token gets no exception there). A denial is kube's 403 for that
/// RBAC question; the inbound one says who else it is served to.
fn authorize_policy(policy: &PolicyCache, nodes: &NodeGraph, user: &UserInfo, query: &PolicyQuery) -> Result<(), ApiError> {
    if let PolicyQuery::Inbound { namespace, pod, .. } = query
        && bound_to(user, namespace, pod)
    {
        return Ok(());
    }
    let attrs = query.attributes();
    match decide(policy, nodes, user, &attrs, None) {
        Verdict::Allow(_) => Ok(()),
        Verdict::Deny(_) => Err(match query {
            PolicyQuery::Inbound { pod, .. } => forbidden_because(
                user,
                &attrs,
                &format!("the inbound policy of pod \"{pod}\" is served to a token bound to that pod or to users who may list servers"),
            ),
            PolicyQuery::Explain(_) | PolicyQuery::WhoCanReach { .. } => forbidden(user, &attrs),
        }),
    }
}

/// Whether `user` holds a token bound to `namespace/pod`: a ServiceAccount of
/// that namespace whose token names that one pod and no other.
fn bound_to(user: &UserInfo, namespace: &str, pod: &str) -> bool {
    let sa_namespace = user.username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')).map(|(ns, _)| ns);
    let pod_names = user.extra.get(tessera_authn::token::EXTRA_POD_NAME);
    sa_namespace == Some(namespace) && pod_names.is_some_and(|names| names.len() == 1 && names[0] == pod)
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

    fn bound(namespace: &str, pod: &str) -> UserInfo {
        UserInfo {
            username: format!("system:serviceaccount:{namespace}:db"),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
            extra: [(tessera_authn::token::EXTRA_POD_NAME.to_owned(), vec![pod.to_owned()])].into(),
            ..Default::default()
        }
    }

    /// The policy APIs are decided on the pod the parsed query names, and the
    /// proof carries that reading: never on the path, never on a later value.
    #[test]
    fn policy_apis_are_decided_on_the_parsed_pod() {
        let check = |user: &UserInfo, method: Method, path: &str, query: &str| {
            authorize(&AuthzConfig::default(), &policy(), &crate::node::graph::node_graph(), user, parse(&method, path, Some(query)).unwrap())
        };
        let inbound = crate::policy::PATH;
        let proof = check(&bound("shop", "db-0"), Method::GET, inbound, "namespace=shop&pod=db-0&pod=db-1").unwrap();
        assert_eq!(proof.policy(), Some(&PolicyQuery::Inbound { namespace: "shop".into(), pod: "db-0".into(), watch: false }));
        let status = check(&bound("shop", "db-0"), Method::GET, inbound, "namespace=shop&pod=db-1&pod=db-0").unwrap_err().to_status();
        assert_eq!(status["message"], "servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:db\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\": the inbound policy of pod \"db-1\" is served to a token bound to that pod or to users who may list servers");
        // Explain is not the proxy's: its own pod's token is refused, without a reason.
        let status = check(&bound("shop", "db-0"), Method::GET, crate::policy::EXPLAIN_PATH, "namespace=shop&pod=db-0&port=80&from=unauthenticated").unwrap_err().to_status();
        assert_eq!(status["message"], "servers.policy.linkerd.io is forbidden: User \"system:serviceaccount:shop:db\" cannot list resource \"servers\" in API group \"policy.linkerd.io\" in the namespace \"shop\"");
        // Bad parameters: the 400, whoever asks; no proof exists for them.
        let err = check(&UserInfo::anonymous(), Method::GET, crate::policy::WHO_CAN_REACH_PATH, "namespace=shop&pod=db-0").unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (400, "the port parameter is required"));
        // Another verb is a plain path, denied as one.
        let status = check(&bound("shop", "db-0"), Method::DELETE, inbound, "namespace=shop&pod=db-0").unwrap_err().to_status();
        assert_eq!(status["message"], "forbidden: User \"system:serviceaccount:shop:db\" cannot delete path \"/tessera/v1/policy/inbound\"");
        let admin = UserInfo { username: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
        assert_eq!(check(&admin, Method::DELETE, inbound, "namespace=shop&pod=db-0").unwrap().policy(), None, "no policy request to run");
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
