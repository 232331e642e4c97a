//! RBAC in the server: a watch-fed policy cache, request authorization,
//! impersonation, escalation prevention, the rules review and the explain /
//! who-can API. Access reviews are in [`crate::access_review`].

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tessera_api::registry::Admit;
use tessera_api::resource::{RBAC_CLUSTERROLEBINDINGS, RBAC_CLUSTERROLES, RBAC_ROLEBINDINGS, RBAC_ROLES, ResourceInfo};
use tessera_api::ApiError;
use tessera_authn::{AUTHENTICATED_GROUP, UserInfo};
use tessera_rbac::authorizer::{self, Decision};
use tessera_rbac::escalation::{self, NotCovered};
use tessera_rbac::rule::{go_quote, go_quote_list};
use tessera_rbac::policy::{Binding, Role};
use tessera_rbac::{Policy, PolicyRule, Request};

use crate::reflector::Reflector;
use crate::response::{HandlerResult, json_response};

/// The policy, kept current from the store (reads may be one watch event stale).
pub type PolicyCache = Reflector<Policy>;

/// A cache following Roles, ClusterRoles and their bindings.
pub fn policy_cache() -> PolicyCache {
    let prefixes = [&RBAC_CLUSTERROLES, &RBAC_ROLES, &RBAC_CLUSTERROLEBINDINGS, &RBAC_ROLEBINDINGS].iter().map(|r| r.key_prefix(None)).collect();
    Reflector::new(prefixes, apply)
}

fn apply(policy: &mut Policy, key: &str, value: Option<&[u8]>) {
    let Some(rest) = key.strip_prefix("/registry/rbac.authorization.k8s.io/") else { return };
    let mut parts = rest.split('/');
    let (Some(kind), Some(a)) = (parts.next(), parts.next()) else { return };
    let b = parts.next();
    let obj: Option<Value> = value.and_then(|v| serde_json::from_slice(v).ok());
    let result = match (kind, obj, b) {
        ("clusterroles", Some(o), _) => Role::from_object(&o).map(|r| policy.put_cluster_role(r)),
        ("roles", Some(o), _) => Role::from_object(&o).map(|r| policy.put_role(r)),
        ("clusterrolebindings" | "rolebindings", Some(o), _) => Binding::from_object(&o).map(|b| policy.put_binding(b)),
        ("clusterroles", None, _) => {
            policy.remove_cluster_role(a);
            Ok(())
        }
        ("roles", None, Some(name)) => {
            policy.remove_role(a, name);
            Ok(())
        }
        ("clusterrolebindings", None, _) => {
            policy.remove_binding("", a);
            Ok(())
        }
        ("rolebindings", None, Some(name)) => {
            policy.remove_binding(a, name);
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(key, error = %e, "ignoring malformed RBAC object");
    }
}

impl Reflector<Policy> {
    /// Decides a request.
    pub fn authorize(&self, user: &UserInfo, req: &Request) -> Decision {
        self.read(|p| authorizer::authorize(p, user, req))
    }
}

/// A resource request for checks the server makes itself (impersonate, bind, escalate).
fn resource_request(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Request {
    Request {
        resource_request: true,
        verb: verb.into(),
        namespace: namespace.into(),
        api_group: group.into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn impersonation_denied(requester: &UserInfo, req: &Request) -> ApiError {
    crate::authz::forbidden(requester, req)
}

/// Refuses an `Impersonate-*` header that does not decode. Skipping it
/// instead would run the request as the caller, which the caller did not ask for.
fn undecodable(header: &str, part: &str) -> ApiError {
    ApiError::bad_request(format!("invalid {header} header: the {part} is not valid UTF-8"))
}

/// The values of one `Impersonate-*` header. kube-apiserver takes header
/// values as bytes, so non-ASCII UTF-8 names work there and here; bytes that
/// are not UTF-8 cannot name anyone and are refused.
fn impersonation_values(headers: &HeaderMap, name: &str, header: &str) -> Result<Vec<String>, ApiError> {
    headers.get_all(name).iter().map(|v| String::from_utf8(v.as_bytes().to_vec()).map_err(|_| undecodable(header, "value"))).collect()
}

/// `Impersonate-Extra-KEY` headers: KEY percent-unescaped, with every value.
fn impersonation_extra(headers: &HeaderMap) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let Some(escaped) = name.as_str().strip_prefix("impersonate-extra-") else { continue };
        let header = format!("Impersonate-Extra-{escaped}");
        let key = String::from_utf8(path_unescape(escaped)).map_err(|_| undecodable(&header, "key, unescaped,"))?;
        let value = String::from_utf8(value.as_bytes().to_vec()).map_err(|_| undecodable(&header, "value"))?;
        extra.entry(key).or_default().push(value);
    }
    Ok(extra)
}

/// Applies `Impersonate-*` headers: returns the user to act as, or None when
/// there are none. Every impersonated attribute needs the `impersonate` verb.
/// A header that does not decode is a 400, before anything else is decided.
pub fn impersonate(policy: &PolicyCache, requester: &UserInfo, headers: &HeaderMap) -> Result<Option<UserInfo>, ApiError> {
    let users = impersonation_values(headers, "impersonate-user", "Impersonate-User")?;
    let groups = impersonation_values(headers, "impersonate-group", "Impersonate-Group")?;
    let uids = impersonation_values(headers, "impersonate-uid", "Impersonate-Uid")?;
    let extra = impersonation_extra(headers)?;
    if users.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || !extra.is_empty() {
            return Err(ApiError::internal("requested impersonation of groups, uid or extra without a user"));
        }
        return Ok(None);
    }
    if users.len() > 1 {
        return Err(ApiError::bad_request("only one Impersonate-User header may be given"));
    }
    let username = users[0].clone();
    let check = |req: Request| -> Result<(), ApiError> {
        if policy.authorize(requester, &req).is_allowed() { Ok(()) } else { Err(impersonation_denied(requester, &req)) }
    };
    let mut implied_groups = Vec::new();
    if let Some((ns, name)) = username.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        check(resource_request("impersonate", "", "serviceaccounts", ns, name))?;
        implied_groups = vec!["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{ns}")];
    } else {
        check(resource_request("impersonate", "", "users", "", &username))?;
    }
    for g in &groups {
        check(resource_request("impersonate", "", "groups", "", g))?;
    }
    for u in &uids {
        check(resource_request("impersonate", "authentication.k8s.io", "uids", "", u))?;
    }
    for (key, vals) in &extra {
        for v in vals {
            check(Request { subresource: key.clone(), ..resource_request("impersonate", "authentication.k8s.io", "userextras", "", v) })?;
        }
    }
    let mut all_groups = groups;
    for g in implied_groups {
        if !all_groups.contains(&g) {
            all_groups.push(g);
        }
    }
    if username != tessera_authn::ANONYMOUS_USER && !all_groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        all_groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    Ok(Some(UserInfo { username, uid: uids.into_iter().next().unwrap_or_default(), groups: all_groups, extra }))
}

/// Go's `url.PathUnescape`, as kube-apiserver unescapes extra keys: `%XX`
/// decoded; on a malformed escape, the key as it was.
fn path_unescape(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => return bytes.to_vec(),
        }
    }
    out
}

/// The rules of a Role or ClusterRole being written. Rules that do not read
/// as PolicyRules are refused, never taken as no rules (which would pass).
fn rules_of_object(obj: &Value) -> Result<Vec<PolicyRule>, ApiError> {
    match obj.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(rules) => serde_json::from_value(rules.clone()).map_err(|e| ApiError::bad_request(format!("invalid rules: {e}"))),
    }
}

fn escalation_error(resource: &ResourceInfo, name: &str, user: &UserInfo, why: &NotCovered) -> ApiError {
    let detail = match why {
        NotCovered::Missing(missing) => format!("is attempting to grant RBAC permissions not currently held:\n{}", missing.lines().join("\n")),
        NotCovered::TooComplex => {
            "is attempting to grant RBAC permissions too numerous to compare with those currently held; split them into smaller rules".to_owned()
        }
    };
    ApiError::forbidden(
        resource.plural,
        resource.group,
        name,
        format!(
            "{} {} is forbidden: user {} (groups={}) {detail}",
            resource.qualified_plural(),
            go_quote(name),
            go_quote(&user.username),
            go_quote_list(&user.groups),
        ),
    )
}

/// kube-apiserver's `ConfirmNoEscalation`: whether `held` covers `wanted`.
/// The check is bounded (see [`escalation::Limits`]) but can still take tens
/// of milliseconds on hostile input, and it runs inside the registry's
/// synchronous admission call on an async worker: on the multi-threaded
/// runtime, the worker's other tasks move to another thread meanwhile, so no
/// other request waits for it.
fn confirm_no_escalation(held: &[PolicyRule], wanted: &[PolicyRule]) -> Result<(), NotCovered> {
    let run = || escalation::check(held, wanted, &escalation::Limits::default());
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// Escalation prevention for writes of Roles, ClusterRoles and bindings, as an
/// admission check for the registry. None for other kinds.
pub fn escalation_check(policy: &PolicyCache, user: &Arc<UserInfo>, resource: &ResourceInfo) -> Option<Admit> {
    if resource.group != "rbac.authorization.k8s.io" {
        return None;
    }
    let policy = policy.clone();
    let user = user.clone();
    Some(Arc::new(move |resource: &ResourceInfo, _old: Option<&Value>, new: &Value| {
        let name = new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let namespace = new.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        match resource.plural {
            "roles" | "clusterroles" => {
                if policy.authorize(&user, &resource_request("escalate", resource.group, resource.plural, namespace, name)).is_allowed() {
                    return Ok(());
                }
                // An aggregation rule pulls in the rules of other roles, chosen by
                // labels anyone who may write ClusterRoles can set: like
                // kube-apiserver, only `escalate` (checked above) allows it.
                if resource.plural == "clusterroles" && new.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    return Err(ApiError::forbidden(
                        resource.plural,
                        resource.group,
                        name,
                        format!("{} \"{name}\" is forbidden: must have cluster-admin privileges to use the aggregationRule", resource.qualified_plural()),
                    ));
                }
                let held = policy.read(|p| authorizer::rules_for(p, &user, namespace));
                confirm_no_escalation(&held, &rules_of_object(new)?).map_err(|why| escalation_error(resource, name, &user, &why))
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_kind = new.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or_default();
                let role_name = new.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
                let (role_resource, role_ns) = if role_kind == "Role" { ("roles", namespace) } else { ("clusterroles", "") };
                let bind = resource_request("bind", resource.group, role_resource, if resource.plural == "rolebindings" { namespace } else { "" }, role_name);
                if policy.authorize(&user, &bind).is_allowed() {
                    return Ok(());
                }
                let (held, wanted) = policy.read(|p| {
                    let wanted = if role_kind == "Role" { p.role(role_ns, role_name) } else { p.cluster_role(role_name) };
                    (authorizer::rules_for(p, &user, namespace), wanted.map(|r| r.rules.clone()))
                });
                let Some(wanted) = wanted else {
                    return Err(ApiError::not_found(if role_kind == "Role" { &RBAC_ROLES } else { &RBAC_CLUSTERROLES }, role_name));
                };
                confirm_no_escalation(&held, &wanted).map_err(|why| escalation_error(resource, name, &user, &why))
            }
            _ => Ok(()),
        }
    }))
}

/// `selfsubjectrulesreviews`: the RBAC rules that hold for the requester in
/// a namespace (the node authorizer's are not listed, as in kube).
pub fn rules_review(policy: &PolicyCache, requester: &UserInfo, mut body: Value) -> HandlerResult {
    // The spec is echoed back: taken out of the body, not copied.
    let spec = body.get_mut("spec").map_or_else(|| json!({}), Value::take);
    let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or_default();
    let mut rules = policy.read(|p| authorizer::rules_for(p, requester, namespace));
    // The same rule reached through several bindings (or roles) is listed once.
    let mut seen = Vec::with_capacity(rules.len());
    rules.retain(|rule| {
        if seen.contains(rule) {
            return false;
        }
        seen.push(rule.clone());
        true
    });
    let (resource, non_resource): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r| r.non_resource_urls.is_empty());
    let resource_rules: Vec<Value> = resource
        .into_iter()
        .map(|r| {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            v
        })
        .collect();
    let non_resource_rules: Vec<Value> =
        non_resource.into_iter().map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls})).collect();
    let out = json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false},
    });
    Ok(json_response(StatusCode::CREATED, &out))
}

/// The body of `POST /apis/tessera.dev/v1alpha1/rbac/explain` and `…/who-can`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct RbacQuery {
    /// The user to explain for (explain only). `system:serviceaccount:NS:NAME` implies its groups.
    #[serde(default)]
    pub user: String,
    /// Extra groups of the user.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Verb.
    pub verb: String,
    /// Resource (plural, optionally `resource/subresource`), or a non-resource path starting with `/`.
    pub resource: String,
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Object name.
    #[serde(default)]
    pub name: String,
}

impl RbacQuery {
    fn request(&self) -> Request {
        if self.resource.starts_with('/') {
            return Request { verb: self.verb.clone(), path: self.resource.clone(), ..Default::default() };
        }
        let (resource, sub) = self.resource.split_once('/').unwrap_or((&self.resource, ""));
        Request {
            resource_request: true,
            verb: self.verb.clone(),
            namespace: self.namespace.clone(),
            api_group: self.group.clone(),
            resource: resource.to_owned(),
            subresource: sub.to_owned(),
            name: self.name.clone(),
            path: String::new(),
        }
    }

    fn subject(&self) -> UserInfo {
        let mut groups = self.groups.clone();
        if let Some((ns, _)) = self.user.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
            for g in ["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{ns}")] {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        if self.user != tessera_authn::ANONYMOUS_USER && !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        UserInfo { username: self.user.clone(), groups, ..Default::default() }
    }
}

/// `tessera rbac explain` over the API, for the resource as discovery names it.
pub fn explain(policy: &PolicyCache, query: &RbacQuery) -> Result<Value, ApiError> {
    let query = resolve_resource(query)?;
    let explanation = policy.read(|p| authorizer::explain(p, &query.subject(), &query.request(), 5));
    Ok(serde_json::to_value(explanation).unwrap_or_default())
}

/// The body of `POST /tessera/v1/rbac/rules`: whose permissions, where.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct RulesQuery {
    /// The user: a name, or `system:serviceaccount:NS:NAME` (which implies its groups).
    pub user: String,
    /// Extra groups of the user.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Namespace (empty: cluster-wide grants only).
    #[serde(default)]
    pub namespace: String,
}

/// The effective permissions of any subject in a namespace, binding by
/// binding: what SelfSubjectRulesReview answers for oneself (which cannot
/// ask about someone else), with where each rule comes from.
pub fn rules(policy: &PolicyCache, query: &RulesQuery) -> Value {
    let subject = RbacQuery { user: query.user.clone(), groups: query.groups.clone(), ..RbacQuery::default() }.subject();
    policy.read(|p| {
        let bindings: Vec<Value> = p
            .bindings_for(&subject, &query.namespace)
            .iter()
            .map(|b| {
                let rules: Vec<String> = p.rules_of(b).iter().map(PolicyRule::compact_string).collect();
                json!({
                    "binding": b.describe(),
                    "role": format!("{} {}", b.role_ref.kind, go_quote(&b.role_ref.name)),
                    "subject": b.matched_subject(&subject).unwrap_or_default(),
                    "roleFound": p.role_of(b).is_some(),
                    "rules": rules,
                })
            })
            .collect();
        json!({"user": subject.username, "groups": subject.groups, "namespace": query.namespace, "bindings": bindings})
    })
}

/// `tessera rbac who-can` over the API, for the resource as discovery names it.
pub fn who_can(policy: &PolicyCache, query: &RbacQuery) -> Result<Value, ApiError> {
    let query = resolve_resource(query)?;
    let grants = policy.read(|p| authorizer::who_can(p, &query.request()));
    Ok(json!({"grants": grants}))
}

/// Resolves the query's resource through the served kinds, as kubectl's
/// RESTMapper does for `kubectl auth can-i`: a plural, singular or short
/// name, in the query's group when it names one, else in any group, the
/// core group first (`tokenreviews` is `tokenreviews.authentication.k8s.io`,
/// `sa` is `serviceaccounts`). An unknown resource, or one that several
/// groups serve, none of them core, is a 400 that says so: an answer about
/// a resource nobody serves would be silently empty. Paths (`/healthz`) and
/// `*` pass through unchanged.
fn resolve_resource(query: &RbacQuery) -> Result<RbacQuery, ApiError> {
    if query.resource.starts_with('/') || query.resource.is_empty() {
        return Ok(query.clone());
    }
    let (name, sub) = match query.resource.split_once('/') {
        Some((name, sub)) => (name, Some(sub)),
        None => (query.resource.as_str(), None),
    };
    if name == "*" {
        return Ok(query.clone());
    }
    let wanted = name.to_ascii_lowercase();
    let mut found: Vec<&'static tessera_api::ResourceInfo> = Vec::new();
    for r in tessera_api::resource::RESOURCES.iter().copied() {
        let names = r.plural == wanted || r.singular == wanted || r.short_names.contains(&wanted.as_str());
        let group = query.group.is_empty() || query.group == "*" || r.group == query.group;
        if names && group && !found.iter().any(|f| f.group == r.group && f.plural == r.plural) {
            found.push(r);
        }
    }
    let asked = if query.group.is_empty() { name.to_owned() } else { format!("{name}.{}", query.group) };
    let chosen = match found.as_slice() {
        [] => return Err(ApiError::bad_request(format!("the server doesn't have a resource type \"{asked}\""))),
        [one] => *one,
        many => match many.iter().find(|r| r.group.is_empty()) {
            Some(core) => *core,
            None => {
                let names: Vec<String> = many.iter().map(|r| format!("{}.{}", r.plural, r.group)).collect();
                return Err(ApiError::bad_request(format!(
                    "resource type \"{asked}\" is ambiguous: it matches {}; name one as RESOURCE.GROUP",
                    names.join(", ")
                )));
            }
        },
    };
    let mut resolved = query.clone();
    resolved.resource = match sub {
        Some(sub) => format!("{}/{sub}", chosen.plural),
        None => chosen.plural.to_owned(),
    };
    if query.group != "*" {
        resolved.group = chosen.group.to_owned();
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(resource: &str, group: &str) -> Result<(String, String), String> {
        let query = RbacQuery { verb: "create".into(), resource: resource.into(), group: group.into(), ..RbacQuery::default() };
        resolve_resource(&query).map(|q| (q.resource, q.group)).map_err(|e| e.message)
    }

    #[test]
    fn resources_resolve_through_discovery_as_kubectl_resolves_them() {
        let pair = |r: &str, g: &str| Ok((r.to_owned(), g.to_owned()));
        assert_eq!(resolved("tokenreviews", ""), pair("tokenreviews", "authentication.k8s.io"));
        assert_eq!(resolved("tokenreview", ""), pair("tokenreviews", "authentication.k8s.io"));
        assert_eq!(resolved("tokenreviews", "authentication.k8s.io"), pair("tokenreviews", "authentication.k8s.io"));
        assert_eq!(resolved("sa", ""), pair("serviceaccounts", ""));
        assert_eq!(resolved("ServiceAccount", ""), pair("serviceaccounts", ""));
        assert_eq!(resolved("serviceaccounts/token", ""), pair("serviceaccounts/token", ""));
        assert_eq!(resolved("clusterroles", ""), pair("clusterroles", "rbac.authorization.k8s.io"));
        assert_eq!(resolved("*", ""), pair("*", ""));
        assert_eq!(resolved("/healthz", ""), pair("/healthz", ""));
        assert_eq!(resolved("deployments", "").unwrap_err(), "the server doesn't have a resource type \"deployments\"");
        assert_eq!(
            resolved("tokenreviews", "rbac.authorization.k8s.io").unwrap_err(),
            "the server doesn't have a resource type \"tokenreviews.rbac.authorization.k8s.io\""
        );
    }

    #[test]
    fn unescaping_of_extra_keys() {
        assert_eq!(path_unescape("scopes"), b"scopes");
        assert_eq!(path_unescape("example.com%2fteam"), b"example.com/team");
        // A malformed escape leaves the key as it was (Go's PathUnescape errs; kube keeps the key).
        assert_eq!(path_unescape("a%2fb%zz"), b"a%2fb%zz");
        assert_eq!(path_unescape("a%2"), b"a%2");
        assert_eq!(path_unescape("%ff"), [0xff]);
    }
}
