//! Parses a request path and method into what it is about, the way
//! kube-apiserver's RequestInfoFactory does: verb, group, version, namespace,
//! resource, subresource and name. Authorization and metrics read this.

use http::Method;

/// What a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// True for `/api/...` and `/apis/...` resource paths.
    pub is_resource_request: bool,
    /// The URL path.
    pub path: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete,
    /// deletecollection; for non-resource requests the lower-case HTTP method.
    pub verb: String,
    /// API group (`""` = core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace, if namespaced.
    pub namespace: Option<String>,
    /// Resource plural.
    pub resource: String,
    /// Subresource (`status`, `token`).
    pub subresource: String,
    /// Object name.
    pub name: String,
}

/// Parses a request. `watch_param` is whether `?watch=true|1` was given.
pub fn parse(method: &Method, path: &str, watch_param: bool) -> RequestInfo {
    let mut info = RequestInfo { path: path.to_owned(), verb: method.as_str().to_lowercase(), ..Default::default() };
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", version, rest @ ..] => {
            info.api_version = (*version).to_owned();
            rest
        }
        ["apis", group, version, rest @ ..] => {
            info.api_group = (*group).to_owned();
            info.api_version = (*version).to_owned();
            rest
        }
        _ => return info,
    };
    if rest.is_empty() {
        // Discovery of a group version is not a resource request.
        return info;
    }
    info.is_resource_request = true;
    let mut rest = rest;
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest = &rest[1..];
    }
    match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !matches!(tail, ["status"] | ["finalize"]) => {
            info.namespace = Some((*ns).to_owned());
            let mut it = tail.iter();
            info.resource = it.next().map(|s| (*s).to_owned()).unwrap_or_default();
            info.name = it.next().map(|s| (*s).to_owned()).unwrap_or_default();
            info.subresource = it.next().map(|s| (*s).to_owned()).unwrap_or_default();
        }
        [resource, tail @ ..] => {
            info.resource = (*resource).to_owned();
            let mut it = tail.iter();
            info.name = it.next().map(|s| (*s).to_owned()).unwrap_or_default();
            info.subresource = it.next().map(|s| (*s).to_owned()).unwrap_or_default();
            // A namespace object is its own namespace (kube-apiserver sets it so).
            if info.resource == "namespaces" && !info.name.is_empty() {
                info.namespace = Some(info.name.clone());
            }
        }
        [] => {}
    }
    info.verb = match *method {
        Method::GET | Method::HEAD if watch_prefix || watch_param => "watch",
        Method::GET | Method::HEAD if info.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if info.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_owned();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_object_with_subresource() {
        let i = parse(&Method::POST, "/api/v1/namespaces/api/serviceaccounts/api/token", false);
        assert!(i.is_resource_request);
        assert_eq!((i.verb.as_str(), i.namespace.as_deref(), i.resource.as_str(), i.name.as_str(), i.subresource.as_str()),
            ("create", Some("api"), "serviceaccounts", "api", "token"));
    }

    #[test]
    fn list_watch_and_cluster_scope() {
        assert_eq!(parse(&Method::GET, "/api/v1/namespaces/default/pods", false).verb, "list");
        assert_eq!(parse(&Method::GET, "/api/v1/namespaces/default/pods", true).verb, "watch");
        assert_eq!(parse(&Method::GET, "/api/v1/watch/namespaces/default/pods", false).verb, "watch");
        let i = parse(&Method::GET, "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", false);
        assert_eq!((i.api_group.as_str(), i.resource.as_str(), i.name.as_str(), i.namespace), ("rbac.authorization.k8s.io", "clusterroles", "admin", None));
    }

    #[test]
    fn namespaces_are_their_own_namespace() {
        let i = parse(&Method::DELETE, "/api/v1/namespaces/foo", false);
        assert_eq!((i.verb.as_str(), i.resource.as_str(), i.name.as_str(), i.namespace.as_deref()), ("delete", "namespaces", "foo", Some("foo")));
        let i = parse(&Method::PUT, "/api/v1/namespaces/foo/finalize", false);
        assert_eq!((i.resource.as_str(), i.subresource.as_str()), ("namespaces", "finalize"));
    }

    #[test]
    fn non_resource_paths() {
        let i = parse(&Method::GET, "/version", false);
        assert!(!i.is_resource_request);
        assert_eq!(i.verb, "get");
        assert!(!parse(&Method::GET, "/apis/authentication.k8s.io/v1", false).is_resource_request);
    }
}
