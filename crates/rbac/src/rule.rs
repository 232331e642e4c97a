//! Policy rules: matching a request, covering another rule (escalation), and
//! kube-apiserver's compact text form.

use serde::{Deserialize, Serialize};

/// One RBAC `PolicyRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs, or `*`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` = core), or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*`, `*/subresource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource URLs; a trailing `*` matches a prefix.
    #[serde(default, rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// What a request asks to do (kube-apiserver's authorizer attributes, minus the user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// True for API resource requests, false for non-resource paths.
    pub resource_request: bool,
    /// Verb.
    pub verb: String,
    /// Namespace (`""` = cluster scope).
    pub namespace: String,
    /// API group.
    pub api_group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Object name.
    pub name: String,
    /// URL path (non-resource requests).
    pub path: String,
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == item)
}

fn has_all(list: &[String]) -> bool {
    has(list, "*")
}

/// Go's `%q` of a string (`strconv.Quote`), as kube-apiserver prints names in
/// messages. Exact for ASCII and Latin-1; beyond that, Go's `unicode.IsPrint`
/// is approximated (controls, spaces other than U+0020, format characters,
/// private use and noncharacters are escaped).
pub fn go_quote(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if go_printable(c) => out.push(c),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

fn go_printable(c: char) -> bool {
    let r = u32::from(c);
    if r <= 0xff {
        return (0x20..=0x7e).contains(&r) || ((0xa1..=0xff).contains(&r) && r != 0xad);
    }
    let format_or_private = matches!(r,
        0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x206f
        | 0xe000..=0xf8ff | 0xfeff | 0xfff9..=0xfffb | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..);
    let noncharacter = (0xfdd0..=0xfdef).contains(&r) || r & 0xfffe == 0xfffe;
    !(c.is_control() || c.is_whitespace() || format_or_private || noncharacter)
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Whether a non-resource URL pattern matches a path: `*`, exact, or a prefix
/// ending in `*` (all trailing stars trimmed, as Go's `strings.TrimRight`).
/// kube-apiserver uses the same test to authorize a path and to decide whether
/// a held URL covers a requested one.
fn url_pattern_matches(pattern: &str, path: &str) -> bool {
    pattern == path || (pattern.ends_with('*') && path.starts_with(pattern.trim_end_matches('*')))
}

/// kube-apiserver's `Covers` tests one dimension at a time (`ruleCovers` in
/// `policy_comparator.go`); these are those tests, for one held rule and one
/// requested value. A requested value is a literal: `*` or `*/sub` in a
/// requested rule is covered only by the same literal (or `*`) held.
mod covers {
    use super::{has, has_all};

    /// Verbs: `*` or the verb itself.
    pub(crate) fn verb(held: &[String], verb: &str) -> bool {
        has_all(held) || has(held, verb)
    }

    /// API groups: `*` or the group itself.
    pub(crate) fn group(held: &[String], group: &str) -> bool {
        has_all(held) || has(held, group)
    }

    /// Resources (`resourceCoversAll`): `*`, the resource itself, or, for
    /// `base/sub`, a held `*/sub`. A held `base/*` covers nothing but the
    /// literal `base/*`: kube-apiserver's authorizer does not read it as a
    /// wildcard either.
    pub(crate) fn resource(held: &[String], resource: &str) -> bool {
        has_all(held)
            || has(held, resource)
            || resource.split_once('/').is_some_and(|(_, sub)| held.iter().any(|h| h.strip_prefix("*/") == Some(sub)))
    }

    /// Resource names: a held rule without names covers every name and none;
    /// one with names covers exactly those.
    pub(crate) fn name(held: &[String], name: Option<&str>) -> bool {
        held.is_empty() || name.is_some_and(|n| has(held, n))
    }

    /// Non-resource URLs: exact, or a held prefix ending in `*`.
    pub(crate) fn url(held: &[String], url: &str) -> bool {
        held.iter().any(|h| super::url_pattern_matches(h, url))
    }
}

// === impl PolicyRule ===

impl PolicyRule {
    fn verb_matches(&self, verb: &str) -> bool {
        covers::verb(&self.verbs, verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        covers::group(&self.api_groups, group)
    }

    fn name_matches(&self, name: &str) -> bool {
        covers::name(&self.resource_names, Some(name))
    }

    /// kube-apiserver's `ResourceMatches`: `*`, `resource[/subresource]`
    /// exactly, or `*/subresource`. (Not [`covers::resource`]: an access
    /// review may name `pods/exec` as its resource with no subresource, and
    /// then only a literal `pods/exec` matches.)
    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        let combined;
        let requested = if subresource.is_empty() {
            resource
        } else {
            combined = format!("{resource}/{subresource}");
            &combined
        };
        self.resources.iter().any(|r| {
            r == "*"
                || r == requested
                || (!subresource.is_empty() && r.strip_prefix("*/").is_some_and(|sub| sub == subresource))
        })
    }

    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| url_pattern_matches(u, path))
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, req: &Request) -> bool {
        if !self.verb_matches(&req.verb) {
            return false;
        }
        if !req.resource_request {
            return self.url_matches(&req.path);
        }
        self.group_matches(&req.api_group) && self.resource_matches(&req.resource, &req.subresource) && self.name_matches(&req.name)
    }

    /// Why this rule does not allow the request (for `tessera rbac explain`), or None if it does.
    pub fn mismatch(&self, req: &Request) -> Option<String> {
        if !self.verb_matches(&req.verb) {
            return Some(format!("verb {:?} not in {}", req.verb, go_quote_list(&self.verbs)));
        }
        if !req.resource_request {
            if self.non_resource_urls.is_empty() {
                return Some("rule is for resources, the request is a non-resource URL".into());
            }
            return (!self.url_matches(&req.path)).then(|| format!("path {:?} not in {}", req.path, go_quote_list(&self.non_resource_urls)));
        }
        if self.resources.is_empty() {
            return Some("rule is for non-resource URLs, the request is for a resource".into());
        }
        if !self.group_matches(&req.api_group) {
            return Some(format!("API group {:?} not in {}", req.api_group, go_quote_list(&self.api_groups)));
        }
        if !self.resource_matches(&req.resource, &req.subresource) {
            let r = if req.subresource.is_empty() { req.resource.clone() } else { format!("{}/{}", req.resource, req.subresource) };
            return Some(format!("resource {r:?} not in {}", go_quote_list(&self.resources)));
        }
        if !self.name_matches(&req.name) {
            return Some(format!("name {:?} not in resourceNames {}", req.name, go_quote_list(&self.resource_names)));
        }
        None
    }

    /// How many of the five checks the request passes (to rank near misses).
    pub fn closeness(&self, req: &Request) -> usize {
        let mut score = usize::from(self.verb_matches(&req.verb));
        if req.resource_request && !self.resources.is_empty() {
            score += usize::from(self.group_matches(&req.api_group));
            score += usize::from(self.resource_matches(&req.resource, &req.subresource));
            score += usize::from(self.name_matches(&req.name));
        } else if !req.resource_request && !self.non_resource_urls.is_empty() {
            score += 3 * usize::from(self.url_matches(&req.path));
        }
        score
    }

    /// Whether this (held) rule alone grants everything `other` grants:
    /// kube-apiserver's `ruleCovers`, which its escalation check applies to
    /// each single-valued atom of a requested rule. Every verb, group,
    /// resource, name and URL of `other` must be covered; a rule without
    /// names is covered only by a rule without names.
    pub fn covers(&self, other: &PolicyRule) -> bool {
        let names = if other.resource_names.is_empty() {
            covers::name(&self.resource_names, None)
        } else {
            other.resource_names.iter().all(|n| covers::name(&self.resource_names, Some(n)))
        };
        other.verbs.iter().all(|v| covers::verb(&self.verbs, v))
            && other.api_groups.iter().all(|g| covers::group(&self.api_groups, g))
            && other.resources.iter().all(|r| covers::resource(&self.resources, r))
            && other.non_resource_urls.iter().all(|u| covers::url(&self.non_resource_urls, u))
            && names
    }

    /// kube-apiserver's compact string, e.g. `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
    pub fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", go_quote_list(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", go_quote_list(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", go_quote_list(&self.non_resource_urls)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", go_quote_list(&self.resource_names)));
        }
        if !self.verbs.is_empty() {
            parts.push(format!("Verbs:{}", go_quote_list(&self.verbs)));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        PolicyRule { verbs: v(verbs), api_groups: v(groups), resources: v(resources), resource_names: v(names), non_resource_urls: vec![] }
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Request {
        Request { resource_request: true, verb: verb.into(), api_group: group.into(), resource: resource.into(), subresource: sub.into(), name: name.into(), ..Default::default() }
    }

    #[test]
    fn matching_rules() {
        let r = rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]);
        assert!(r.allows(&req("get", "", "pods", "", "x")));
        assert!(r.allows(&req("get", "", "pods", "log", "x")));
        assert!(!r.allows(&req("get", "", "pods", "exec", "x")));
        assert!(!r.allows(&req("delete", "", "pods", "", "x")));
        assert!(!r.allows(&req("get", "apps", "pods", "", "x")));
        let named = rule(&["get"], &[""], &["secrets"], &["a"]);
        assert!(named.allows(&req("get", "", "secrets", "", "a")));
        assert!(!named.allows(&req("get", "", "secrets", "", "b")));
        assert!(!named.allows(&req("get", "", "secrets", "", "")));
        let sub = rule(&["create"], &[""], &["*/token"], &[]);
        assert!(sub.allows(&req("create", "", "serviceaccounts", "token", "api")));
        assert!(!sub.allows(&req("create", "", "serviceaccounts", "", "api")));
        let wild = rule(&["*"], &["*"], &["*"], &[]);
        assert!(wild.allows(&req("escalate", "rbac.authorization.k8s.io", "roles", "", "")));
    }

    #[test]
    fn non_resource_urls() {
        let r = PolicyRule { verbs: vec!["get".into()], non_resource_urls: vec!["/healthz".into(), "/api/*".into()], ..Default::default() };
        let nr = |p: &str| Request { verb: "get".into(), path: p.into(), ..Default::default() };
        assert!(r.allows(&nr("/healthz")));
        assert!(r.allows(&nr("/api/v1")));
        assert!(!r.allows(&nr("/api")));
        assert!(!r.allows(&nr("/metrics")));
    }

    /// The single-valued rule a concrete request asks for, as kube's escalation
    /// check breaks a requested rule down.
    fn atom_of(req: &Request) -> PolicyRule {
        let one = |s: &str| vec![s.to_owned()];
        if !req.resource_request {
            return PolicyRule { verbs: one(&req.verb), non_resource_urls: one(&req.path), ..Default::default() };
        }
        let resource = if req.subresource.is_empty() { req.resource.clone() } else { format!("{}/{}", req.resource, req.subresource) };
        PolicyRule {
            verbs: one(&req.verb),
            api_groups: one(&req.api_group),
            resources: vec![resource],
            resource_names: if req.name.is_empty() { vec![] } else { one(&req.name) },
            non_resource_urls: vec![],
        }
    }

    /// kube-apiserver's authorizer (`RuleAllows`) and its escalation check
    /// (`ruleCovers`) agree: a held rule covers the atom of a concrete request
    /// exactly when it allows that request. So whatever the escalation check
    /// lets a user grant, the authorizer already lets them do.
    #[test]
    fn authorizer_and_escalation_check_agree() {
        let held = [
            rule(&["create"], &[""], &["serviceaccounts/*"], &[]),
            rule(&["create"], &[""], &["pods/*"], &[]),
            rule(&["create"], &[""], &["*/token"], &[]),
            rule(&["create", "get"], &[""], &["*/exec", "pods"], &[]),
            rule(&["*"], &["apps"], &["deployments", "deployments/scale"], &[]),
            rule(&["get"], &["*"], &["*"], &[]),
            rule(&["get", "update"], &[""], &["secrets", "configmaps/status"], &["mine"]),
            rule(&["*"], &["*"], &["*"], &[]),
            rule(&["impersonate"], &[""], &["serviceaccounts"], &[]),
        ];
        let urls = [
            PolicyRule { verbs: vec!["get".into()], non_resource_urls: vec!["/api/*".into(), "/healthz".into()], ..Default::default() },
            PolicyRule { verbs: vec!["*".into()], non_resource_urls: vec!["*".into()], ..Default::default() },
            PolicyRule { verbs: vec!["get".into()], non_resource_urls: vec!["/metrics**".into()], ..Default::default() },
        ];
        let requests = [
            req("create", "", "serviceaccounts", "token", "api"),
            req("create", "", "serviceaccounts", "token", ""),
            req("create", "", "serviceaccounts", "", ""),
            req("create", "", "serviceaccounts", "*", ""),
            req("create", "", "pods", "exec", "web"),
            req("create", "", "pods", "attach", ""),
            req("create", "", "pods", "*", ""),
            req("get", "", "pods", "exec", ""),
            req("get", "", "pods", "", "web"),
            req("delete", "", "pods", "", "web"),
            req("patch", "apps", "deployments", "scale", "web"),
            req("patch", "apps", "deployments", "status", "web"),
            req("get", "batch", "jobs", "status", ""),
            req("get", "", "secrets", "", "mine"),
            req("get", "", "secrets", "", "theirs"),
            req("list", "", "secrets", "", ""),
            req("update", "", "configmaps", "status", "mine"),
            req("update", "", "configmaps", "", "mine"),
            req("impersonate", "", "serviceaccounts", "", "default"),
            req("escalate", "rbac.authorization.k8s.io", "roles", "", ""),
        ];
        let paths = ["/api", "/api/", "/api/v1", "/healthz", "/healthz/ready", "/metrics", "/metricsx", "/version"];
        let mut checked = 0;
        for h in &held {
            for r in &requests {
                assert_eq!(h.covers(&atom_of(r)), h.allows(r), "held {} and request {r:?}", h.compact_string());
                checked += 1;
            }
        }
        for h in &urls {
            for verb in ["get", "post"] {
                for path in paths {
                    let r = Request { verb: verb.into(), path: path.into(), ..Default::default() };
                    assert_eq!(h.covers(&atom_of(&r)), h.allows(&r), "held {} and request {r:?}", h.compact_string());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, held.len() * requests.len() + urls.len() * 2 * paths.len());
        // The cases of issue 12: neither reads `base/*` as a wildcard; both read `*/sub` as one.
        let sa_star = &held[0];
        assert!(!sa_star.allows(&requests[0]) && !sa_star.covers(&atom_of(&requests[0])));
        let pods_star = &held[1];
        assert!(!pods_star.allows(&requests[4]) && !pods_star.covers(&atom_of(&requests[4])));
        let any_token = &held[2];
        assert!(any_token.allows(&requests[0]) && any_token.covers(&atom_of(&requests[0])));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(go_quote("tab\there\nnew\u{7}\u{1}\u{7f}"), r#""tab\there\nnew\a\x01\x7f""#);
        assert_eq!(go_quote("héllo ☃"), "\"héllo ☃\"");
        assert_eq!(go_quote("\u{85}\u{a0}\u{ad}\u{200b}\u{feff}"), r#""\u0085\u00a0\u00ad\u200b\ufeff""#);
        assert_eq!(go_quote("\u{f0000}"), r#""\U000f0000""#);
        assert_eq!(go_quote_list(&["a".into(), "".into()]), r#"["a" ""]"#);
    }
}
