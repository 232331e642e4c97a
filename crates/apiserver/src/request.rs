//! The one parse of every request. The path and query are read here and only
//! here, into a [`ParsedRequest`]; the authorizer decides on that value and
//! the handlers execute it, so the two can never read a request differently.
//!
//! The rules are kube-apiserver's (`RequestInfoFactory` and the query
//! parameter codec):
//! - the path is percent-decoded once, as Go's `URL.Path`; an invalid escape
//!   is a 400 before anything else runs;
//! - the query is parsed as Go's `url.ParseQuery` (pairs with `;` or a bad
//!   escape are dropped) and a singular parameter means its FIRST value;
//! - `watch` is true unless absent, `0` or `false`;
//! - a GET of a collection is a list, or a watch with `watch`; a list or
//!   watch whose field selector pins `metadata.name` is authorized as that
//!   name (so `resourceNames` rules apply) and the same selector filters it;
//! - a watch of a named object (`/watch/…/NAME`) is a watch of the collection
//!   with the selector `metadata.name=NAME`, never wider;
//! - a GET of an object is a get, whatever `watch` says;
//! - a POST to an object's path, or a PUT/PATCH of a collection, is 405;
//! - a GET of a policy API (`/tessera/v1/policy/…`) is parsed into the pod
//!   it asks about ([`PolicyRequest`]), which is what it is authorized on.

use std::time::Duration;

use http::Method;
use tessera_api::registry::ListParams;
use tessera_api::resource::{self, ResourceInfo};
use tessera_api::selector::{FieldSelector, LabelSelector};
use tessera_api::{ApiError, kinds};

mod policy;
pub use policy::{ExplainQuery, PolicyQuery, PolicyRequest, RequestSpec, UNAUTHENTICATED};

/// A request's query, parsed as Go's `url.ParseQuery`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string. Pairs Go drops (a `;` in the pair, a bad
    /// percent escape) are dropped; so are pairs that are not UTF-8.
    pub fn parse(raw: &str) -> Self {
        let mut pairs = Vec::new();
        for pair in raw.split('&') {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if let (Some(key), Some(value)) = (query_unescape(key), query_unescape(value)) {
                pairs.push((key, value));
            }
        }
        Self(pairs)
    }

    /// The first value of a parameter: what kube-apiserver's codec reads for
    /// a singular field.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a parameter (for list-valued ones such as `dryRun`).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as kube decodes it: false only when absent, `0`
    /// or `false` (any case); anything else, the empty string included, is true.
    pub fn flag(&self, name: &str) -> bool {
        self.first(name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Go's percent-decoding: `%XX` → byte, and `+` → space in a query. None on
/// an invalid escape or a result that is not UTF-8.
fn unescape(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = hex(*bytes.get(i + 1)?)?;
                let low = hex(*bytes.get(i + 2)?)?;
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_unescape(s: &str) -> Option<String> {
    unescape(s, true)
}

/// A Kubernetes verb of a resource request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object (or a subresource).
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch`, or under `/watch/`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb as RBAC names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// What a resource request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `…/{resource}`.
    Collection,
    /// `…/{resource}/{name}`.
    Object(String),
    /// `…/{resource}/{name}/{subresource}`.
    Subresource(String, String),
}

/// The options a resource request carries, decoded from the query. What the
/// handler runs with; nothing else of the query reaches it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Selectors and paging of list, watch and deletecollection. For a list
    /// or watch authorized as one name, the field selector pins that name.
    pub list: ListParams,
    /// `timeoutSeconds` of a watch.
    pub timeout: Option<Duration>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation=Strict`.
    pub strict: bool,
    /// `includeObject` of Table output.
    pub include_object: String,
    /// `propagationPolicy` and `orphanDependents` of a delete, as sent:
    /// kube-apiserver reads (and validates) them only when the DELETE has no body.
    pub delete_query: (Option<String>, Option<String>),
    /// `fieldManager` of a write.
    pub field_manager: Option<String>,
    /// `force` of a patch (`None` when absent).
    pub force: Option<bool>,
}

/// A request for an API resource, parsed.
#[derive(Debug, Clone)]
pub struct ResourceRequest {
    /// The verb.
    pub verb: Verb,
    /// API group (`""` = core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace from the path (a namespace object is in itself).
    pub namespace: Option<String>,
    /// Resource plural from the path.
    pub resource: String,
    /// Collection, object or subresource.
    pub target: Target,
    /// The one name the request is limited to: the path's, or for a list or
    /// watch of a collection the name its field selector pins. Authorization
    /// checks `resourceNames` against it.
    pub name: Option<String>,
    /// The served kind, if the group, version and resource exist.
    pub kind: Option<&'static ResourceInfo>,
    /// The decoded options, or why they are invalid. kube-apiserver
    /// authorizes first and reports a bad query after, so the error waits
    /// here for the handler.
    pub options: Result<Options, ApiError>,
    /// The path after `pods/NAME/proxy` (`/` when none), for kube's pods/proxy.
    pub proxy_path: Option<String>,
}

impl ResourceRequest {
    /// The subresource, if any.
    pub fn subresource(&self) -> Option<&str> {
        match &self.target {
            Target::Subresource(_, sub) => Some(sub),
            _ => None,
        }
    }
}

/// A request for a path that is not an API resource (discovery, health, OIDC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonResourceRequest {
    /// The lower-case HTTP method, as kube-apiserver's authorizer sees it.
    pub verb: String,
    /// The decoded path.
    pub path: String,
    /// The raw query, for the few non-resource handlers that take parameters
    /// (the authorizer decides on verb and path alone).
    pub query: Option<String>,
}

/// Every request, parsed once.
#[derive(Debug, Clone)]
pub enum ParsedRequest {
    /// `/api/v1/…` and `/apis/G/V/…` below the group version.
    Resource(Box<ResourceRequest>),
    /// A GET of one of the policy APIs (`/tessera/v1/policy/…`), whose
    /// parameters name what it is authorized on.
    Policy(Box<PolicyRequest>),
    /// Anything else.
    NonResource(NonResourceRequest),
}

impl ParsedRequest {
    /// The verb RBAC decides on.
    pub fn verb(&self) -> &str {
        match self {
            Self::Resource(r) => r.verb.as_str(),
            Self::Policy(p) => match &p.query {
                Ok(_) => "list",
                Err(_) => &p.verb,
            },
            Self::NonResource(n) => &n.verb,
        }
    }

    /// The attributes the authorizer decides on.
    pub fn attributes(&self) -> tessera_rbac::Request {
        match self {
            Self::Resource(r) => tessera_rbac::Request {
                resource_request: true,
                verb: r.verb.as_str().to_owned(),
                namespace: r.namespace.clone().unwrap_or_default(),
                api_group: r.group.clone(),
                resource: r.resource.clone(),
                subresource: r.subresource().unwrap_or_default().to_owned(),
                name: r.name.clone().unwrap_or_default(),
                path: String::new(),
            },
            Self::Policy(p) => match &p.query {
                Ok(query) => query.attributes(),
                Err(_) => tessera_rbac::Request { verb: p.verb.clone(), path: p.path.clone(), ..Default::default() },
            },
            Self::NonResource(n) => tessera_rbac::Request { verb: n.verb.clone(), path: n.path.clone(), ..Default::default() },
        }
    }
}

/// A path Go would refuse to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL escape in path")]
pub struct InvalidPath;

impl From<InvalidPath> for ApiError {
    fn from(_: InvalidPath) -> Self {
        ApiError::bad_request("invalid URL escape in path")
    }
}

/// kube's `path.IsValidPathSegmentName`: a name taken from a field selector
/// must be usable as a path segment.
fn valid_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// Parses a request from its method, raw path and raw query.
pub fn parse(method: &Method, raw_path: &str, raw_query: Option<&str>) -> Result<ParsedRequest, InvalidPath> {
    let path = unescape(raw_path, false).ok_or(InvalidPath)?;
    if let Some(policy) = policy::parse(method, &path, raw_query) {
        return Ok(ParsedRequest::Policy(Box::new(policy)));
    }
    let non_resource = || ParsedRequest::NonResource(NonResourceRequest { verb: method.as_str().to_ascii_lowercase(), path: path.clone(), query: raw_query.map(str::to_owned) });
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Ok(non_resource()),
    };
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    // `/namespaces/{ns}/{resource}/…`, unless what follows the namespace is
    // one of its own subresources.
    let (namespace, parts): (Option<&str>, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !matches!(tail, ["status"] | ["finalize"]) => (Some(*ns), tail),
        parts => (None, parts),
    };
    let Some((resource_name, parts)) = parts.split_first() else { return Ok(non_resource()) };
    let target = match parts {
        [] => Target::Collection,
        [name] => Target::Object((*name).to_owned()),
        [name, sub] => Target::Subresource((*name).to_owned(), (*sub).to_owned()),
        // Deeper paths exist nowhere but under `pods/NAME/proxy/`; elsewhere
        // authorized as the subresource, then 404.
        [name, sub, ..] => Target::Subresource((*name).to_owned(), (*sub).to_owned()),
    };
    // kube's `pods/proxy` forwards the rest of the path (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`).
    let proxy_path = match parts {
        [_, "proxy", rest @ ..] if *resource_name == "pods" && namespace.is_some() => Some(format!("/{}", rest.join("/"))),
        _ => None,
    };
    let extra_segments = parts.len() > 2 && proxy_path.is_none();
    let query = Query::parse(raw_query.unwrap_or_default());
    let kind = resource::lookup(group, version, resource_name);
    let is_get = matches!(*method, Method::GET | Method::HEAD);
    let verb = match (method, &target) {
        // Under `/watch/` the verb is watch whatever the method, as in
        // kube-apiserver; only a GET of a collection or an object is served.
        // A named watch is a watch of the collection limited to that name.
        _ if watch_prefix => Verb::Watch,
        (&Method::GET | &Method::HEAD, Target::Collection) if query.flag("watch") => Verb::Watch,
        (&Method::GET | &Method::HEAD, Target::Collection) => Verb::List,
        (&Method::GET | &Method::HEAD, _) => Verb::Get,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, _) => Verb::Update,
        (&Method::PATCH, _) => Verb::Patch,
        (&Method::DELETE, Target::Collection) => Verb::DeleteCollection,
        (&Method::DELETE, _) => Verb::Delete,
        // Other methods are refused before anything else (kube-apiserver has no route for them).
        _ => return Ok(non_resource()),
    };
    let path_name = match &target {
        Target::Collection => None,
        Target::Object(name) | Target::Subresource(name, _) => Some(name.clone()),
    };
    // A namespace object is its own namespace (kube-apiserver sets it so).
    let namespace = match (namespace, resource_name, &path_name) {
        (Some(ns), _, _) => Some(ns.to_owned()),
        (None, &"namespaces", Some(name)) => Some(name.clone()),
        _ => None,
    };
    let mut options = decode_options(&query, kind, verb);
    let mut name = path_name;
    if let Ok(opts) = &mut options {
        match (&verb, &target) {
            (Verb::List | Verb::Watch, Target::Collection) => {
                name = opts.list.fields.required_name().filter(|n| valid_path_segment(n)).map(str::to_owned);
            }
            (Verb::Watch, Target::Object(object)) => {
                if opts.list.fields.is_empty() {
                    opts.list.fields = FieldSelector::name_equals(object);
                } else if opts.list.fields.required_name() != Some(object.as_str()) {
                    options = Err(ApiError::bad_request("fieldSelector metadata.name doesn't match requested name"));
                }
            }
            _ => {}
        }
    }
    let no_route = extra_segments || (verb == Verb::Watch && matches!(target, Target::Subresource(..)));
    let wrong_method = (watch_prefix && !is_get)
        || matches!((verb, &target), (Verb::Create, Target::Object(_)) | (Verb::Update | Verb::Patch, Target::Collection));
    if no_route {
        options = Err(ApiError::no_such_resource());
    } else if wrong_method {
        options = Err(ApiError::method_not_allowed());
    }
    Ok(ParsedRequest::Resource(Box::new(ResourceRequest {
        verb,
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: (*resource_name).to_owned(),
        target,
        name,
        kind,
        options,
        proxy_path,
    })))
}

/// Decodes the query options the handlers use, first value of each.
fn decode_options(query: &Query, kind: Option<&'static ResourceInfo>, verb: Verb) -> Result<Options, ApiError> {
    let dry_run = query.all("dryRun").try_fold(false, |dry, value| match value {
        "All" => Ok(true),
        "" => Ok(dry),
        other => Err(ApiError::bad_request(format!("Invalid dry run value: {other:?}: supported values: \"All\""))),
    })?;
    let strict = match query.first("fieldValidation") {
        None | Some("" | "Ignore" | "Warn") => false,
        Some("Strict") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}")));
        }
    };
    let limit = match query.first("limit") {
        None | Some("") => 0,
        Some(raw) => raw.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid limit: {raw:?}")))?.max(0),
    };
    let timeout = match query.first("timeoutSeconds") {
        None | Some("") => None,
        Some(raw) => Some(Duration::from_secs(
            raw.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {raw:?}")))?.max(0).unsigned_abs(),
        )),
    };
    let collection = matches!(verb, Verb::List | Verb::Watch | Verb::DeleteCollection);
    let list = if collection {
        let fields = query.first("fieldSelector").unwrap_or_default();
        let allowed = kind.map(kinds::selectable_fields).unwrap_or_default();
        let params = ListParams {
            labels: LabelSelector::parse(query.first("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(fields, allowed)?,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            continue_token: query.first("continue").filter(|c| !c.is_empty()).map(str::to_owned),
            resource_version: query.first("resourceVersion").map(str::to_owned),
            resource_version_match: query.first("resourceVersionMatch").filter(|m| !m.is_empty()).map(str::to_owned),
            allow_watch_bookmarks: query.flag("allowWatchBookmarks"),
            send_initial_events: query.first("sendInitialEvents").map(|_| query.flag("sendInitialEvents")),
        };
        validate_list_options(&params, verb)?;
        params
    } else if verb == Verb::Get {
        // A get's resourceVersion decides whether the watch cache serves it.
        ListParams { resource_version: query.first("resourceVersion").map(str::to_owned), ..ListParams::default() }
    } else {
        ListParams::default()
    };
    let delete_query = (query.first("propagationPolicy").map(str::to_owned), query.first("orphanDependents").map(str::to_owned));
    let force = match query.first("force") {
        None => None,
        Some("true" | "1" | "True" | "TRUE" | "t" | "T") => Some(true),
        Some("false" | "0" | "False" | "FALSE" | "f" | "F" | "") => Some(false),
        Some(other) => return Err(ApiError::bad_request(format!("invalid force: {other:?}"))),
    };
    Ok(Options {
        list,
        timeout,
        dry_run,
        strict,
        include_object: query.first("includeObject").unwrap_or_default().to_owned(),
        field_manager: query.first("fieldManager").map(str::to_owned),
        force,
        delete_query,
    })
}

/// kube-apiserver's `ValidateListOptions` (1.32, WatchList enabled): 422
/// `ListOptions.meta.k8s.io "" is invalid: …` for combinations of
/// `resourceVersionMatch`, `continue` and `sendInitialEvents` it refuses.
fn validate_list_options(params: &ListParams, verb: Verb) -> Result<(), ApiError> {
    use tessera_api::status::field;
    const MATCH: &str = "resourceVersionMatch";
    let mut causes = Vec::new();
    let rvm = params.resource_version_match.as_deref();
    let rv = params.resource_version.as_deref().unwrap_or_default();
    match verb {
        Verb::Watch => {
            if params.send_initial_events.is_some() && rvm != Some("NotOlderThan") {
                causes.push(field::forbidden(MATCH, "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
            }
            if let Some(rvm) = rvm {
                if params.send_initial_events.is_none() {
                    causes.push(field::forbidden(MATCH, "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
                }
                if rvm != "NotOlderThan" {
                    causes.push(field::not_supported(MATCH, &serde_json::json!(rvm), &["NotOlderThan"]));
                }
                if params.continue_token.is_some() {
                    causes.push(field::forbidden(MATCH, "resourceVersionMatch is forbidden when continue is provided"));
                }
            }
        }
        Verb::List => {
            if let Some(rvm) = rvm {
                if rv.is_empty() {
                    causes.push(field::forbidden(MATCH, "resourceVersionMatch is forbidden unless resourceVersion is provided"));
                }
                if params.continue_token.is_some() {
                    causes.push(field::forbidden(MATCH, "resourceVersionMatch is forbidden when continue is provided"));
                }
                if rvm != "Exact" && rvm != "NotOlderThan" {
                    causes.push(field::not_supported(MATCH, &serde_json::json!(rvm), &["Exact", "NotOlderThan", ""]));
                }
                if rvm == "Exact" && rv == "0" {
                    causes.push(field::forbidden(MATCH, "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
                }
            }
            if params.send_initial_events.is_some() {
                causes.push(field::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", causes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_options_are_validated_as_kube_validates_them() {
        let message = |path: &str, query: &str| resource(Method::GET, path, Some(query)).options.unwrap_err().message;
        let cms = "/api/v1/namespaces/a/configmaps";
        assert_eq!(
            message(cms, "watch=1&sendInitialEvents=true&allowWatchBookmarks=true"),
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
        );
        assert_eq!(
            message(cms, "watch=1&resourceVersionMatch=Exact&resourceVersion=5"),
            "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided, resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"]"
        );
        assert_eq!(
            message(cms, "resourceVersionMatch=Exact"),
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
        );
        assert_eq!(
            message(cms, "resourceVersionMatch=Exact&resourceVersion=0"),
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
        );
        assert_eq!(
            message(cms, "sendInitialEvents=true"),
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
        );
        let err = resource(Method::GET, cms, Some("resourceVersionMatch=Newest&resourceVersion=3")).options.unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(err.message, "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Unsupported value: \"Newest\": supported values: \"Exact\", \"NotOlderThan\", \"\"");
        let ok = resource(Method::GET, cms, Some("watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=1"));
        let list = ok.options.expect("valid").list;
        assert_eq!((list.send_initial_events, list.allow_watch_bookmarks), (Some(true), true));
    }

    fn resource(method: Method, path: &str, query: Option<&str>) -> ResourceRequest {
        match parse(&method, path, query).expect("parses") {
            ParsedRequest::Resource(r) => *r,
            other => panic!("not a resource request: {other:?}"),
        }
    }

    fn summary(r: &ResourceRequest) -> (&'static str, Option<&str>, &str, Option<&str>, Option<&str>) {
        (r.verb.as_str(), r.namespace.as_deref(), r.resource.as_str(), r.name.as_deref(), r.subresource())
    }

    #[test]
    fn go_query_semantics() {
        let q = Query::parse("a=1&a=2&b=x%2By+z&c;d=1&e=%zz&f&=g&h=%C3%A9");
        assert_eq!(q.first("a"), Some("1"));
        assert_eq!(q.all("a").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(q.first("b"), Some("x+y z"));
        assert_eq!(q.first("c"), None, "a pair with ';' is dropped");
        assert_eq!(q.first("e"), None, "a bad escape drops the pair");
        assert_eq!(q.first("f"), Some(""));
        assert_eq!(q.first(""), Some("g"));
        assert_eq!(q.first("h"), Some("é"));
        assert!(Query::parse("watch").flag("watch"));
        assert!(Query::parse("watch=").flag("watch"));
        assert!(Query::parse("watch=yes").flag("watch"));
        assert!(!Query::parse("watch=0").flag("watch"));
        assert!(!Query::parse("watch=FALSE").flag("watch"));
        assert!(!Query::parse("watch=false&watch=true").flag("watch"));
        assert!(!Query::parse("").flag("watch"));
    }

    #[test]
    fn pods_proxy_paths_as_kube_apiserver_reads_them() {
        // `get pods/proxy` named NAME:PORT (RBAC resourceNames see the port too), the rest of the path kept.
        let r = resource(Method::GET, "/api/v1/namespaces/api/pods/api-0:4191/proxy/metrics", None);
        assert_eq!(summary(&r), ("get", Some("api"), "pods", Some("api-0:4191"), Some("proxy")));
        assert_eq!(r.proxy_path.as_deref(), Some("/metrics"));
        assert!(r.options.is_ok());
        let r = resource(Method::GET, "/api/v1/namespaces/api/pods/api-0:4191/proxy", None);
        assert_eq!(r.proxy_path.as_deref(), Some("/"));
        assert_eq!(resource(Method::POST, "/api/v1/namespaces/api/pods/api-0:4191/proxy/a/b", None).proxy_path.as_deref(), Some("/a/b"));
        // Deeper paths under any other subresource are still no route.
        let r = resource(Method::GET, "/api/v1/namespaces/api/pods/api-0/status/x", None);
        assert_eq!((r.proxy_path.as_deref(), r.options.unwrap_err().code), (None, 404));
        let r = resource(Method::GET, "/api/v1/namespaces/api/services/s/proxy/x", None);
        assert_eq!((r.proxy_path.as_deref(), r.options.unwrap_err().code), (None, 404));
    }

    #[test]
    fn paths_as_kube_apiserver_reads_them() {
        let r = resource(Method::POST, "/api/v1/namespaces/api/serviceaccounts/api/token", None);
        assert_eq!(summary(&r), ("create", Some("api"), "serviceaccounts", Some("api"), Some("token")));
        assert!(r.options.is_ok());
        let r = resource(Method::GET, "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", None);
        assert_eq!((r.group.as_str(), summary(&r)), ("rbac.authorization.k8s.io", ("get", None, "clusterroles", Some("admin"), None)));
        let r = resource(Method::DELETE, "/api/v1/namespaces/foo", None);
        assert_eq!(summary(&r), ("delete", Some("foo"), "namespaces", Some("foo"), None));
        let r = resource(Method::PUT, "/api/v1/namespaces/foo/finalize", None);
        assert_eq!(summary(&r), ("update", Some("foo"), "namespaces", Some("foo"), Some("finalize")));
        assert_eq!(resource(Method::DELETE, "/api/v1/namespaces/a/pods", None).verb, Verb::DeleteCollection);
        // Percent-decoded once, as Go does.
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets/mi%6Ee", None);
        assert_eq!(r.name.as_deref(), Some("mine"));
        assert!(parse(&Method::GET, "/api/v1/namespaces/a/secrets/%zz", None).is_err());
    }

    #[test]
    fn non_resource_paths() {
        for path in ["/version", "/api", "/api/v1", "/apis/authentication.k8s.io/v1", "/openid/v1/jwks"] {
            let ParsedRequest::NonResource(n) = parse(&Method::GET, path, None).unwrap() else { panic!("{path}") };
            assert_eq!((n.verb.as_str(), n.path.as_str()), ("get", path));
        }
    }

    #[test]
    fn repeated_field_selectors_mean_the_first() {
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets", Some("fieldSelector=metadata.name%3Dmine&fieldSelector="));
        assert_eq!(summary(&r), ("list", Some("a"), "secrets", Some("mine"), None));
        assert_eq!(r.options.unwrap().list.fields.required_name(), Some("mine"));
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets", Some("fieldSelector=&fieldSelector=metadata.name%3Dmine"));
        assert_eq!(r.name, None, "the first, empty, selector wins: a list of everything, authorized as such");
        assert!(r.options.unwrap().list.fields.is_empty());
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets", Some("watch=1&fieldSelector=metadata.name%3Dmine&watch=0"));
        assert_eq!(summary(&r), ("watch", Some("a"), "secrets", Some("mine"), None));
    }

    #[test]
    fn named_watches_never_widen() {
        let r = resource(Method::GET, "/api/v1/watch/namespaces/a/secrets/mine", None);
        assert_eq!(summary(&r), ("watch", Some("a"), "secrets", Some("mine"), None));
        assert_eq!(r.options.unwrap().list.fields, FieldSelector::name_equals("mine"));
        let r = resource(Method::GET, "/api/v1/watch/namespaces/a", None);
        assert_eq!(summary(&r), ("watch", Some("a"), "namespaces", Some("a"), None));
        assert_eq!(r.options.unwrap().list.fields, FieldSelector::name_equals("a"));
        let r = resource(Method::GET, "/api/v1/watch/namespaces/a/secrets/mine", Some("fieldSelector=metadata.name%3Dother"));
        assert_eq!(r.options.unwrap_err().message, "fieldSelector metadata.name doesn't match requested name");
        // `?watch=1` on an object is a get of it, as in kube-apiserver.
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets/mine", Some("watch=1"));
        assert_eq!(summary(&r), ("get", Some("a"), "secrets", Some("mine"), None));
    }

    #[test]
    fn writes_to_the_wrong_path_are_405() {
        let r = resource(Method::POST, "/api/v1/namespaces/a/configmaps/allowed", None);
        assert_eq!(summary(&r), ("create", Some("a"), "configmaps", Some("allowed"), None));
        assert_eq!(r.options.unwrap_err().code, 405);
        for method in [Method::PUT, Method::PATCH] {
            assert_eq!(resource(method, "/api/v1/namespaces/a/configmaps", None).options.unwrap_err().code, 405);
        }
        assert_eq!(resource(Method::GET, "/api/v1/namespaces/a/pods/x/status/y", None).options.unwrap_err().code, 404);
        // Under /watch/ every method is a watch; only GET is served.
        let r = resource(Method::POST, "/api/v1/watch/namespaces/a/configmaps", None);
        assert_eq!((r.verb, r.options.unwrap_err().code), (Verb::Watch, 405));
        let r = resource(Method::GET, "/api/v1/watch/namespaces/a/secrets/mine/status", None);
        assert_eq!((r.verb, r.options.unwrap_err().code), (Verb::Watch, 404));
    }

    #[test]
    fn bad_options_wait_for_the_handler_and_pin_nothing() {
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets", Some("fieldSelector=metadata.name%3Dmine&limit=x"));
        assert_eq!(r.name, None);
        assert_eq!(r.options.unwrap_err().code, 400);
        let r = resource(Method::GET, "/api/v1/namespaces/a/secrets", Some("fieldSelector=metadata.name%3D.."));
        assert_eq!(r.name, None, "not a valid path segment: not a name");
    }
}
