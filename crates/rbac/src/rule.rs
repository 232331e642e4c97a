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

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    format!("[{}]", quoted.join(" "))
}

// === impl PolicyRule ===

impl PolicyRule {
    fn verb_matches(&self, verb: &str) -> bool {
        has_all(&self.verbs) || has(&self.verbs, verb)
    }

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
        self.non_resource_urls
            .iter()
            .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, req: &Request) -> bool {
        if !self.verb_matches(&req.verb) {
            return false;
        }
        if !req.resource_request {
            return self.url_matches(&req.path);
        }
        (has_all(&self.api_groups) || has(&self.api_groups, &req.api_group))
            && self.resource_matches(&req.resource, &req.subresource)
            && (self.resource_names.is_empty() || has(&self.resource_names, &req.name))
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
        if !(has_all(&self.api_groups) || has(&self.api_groups, &req.api_group)) {
            return Some(format!("API group {:?} not in {}", req.api_group, go_quote_list(&self.api_groups)));
        }
        if !self.resource_matches(&req.resource, &req.subresource) {
            let r = if req.subresource.is_empty() { req.resource.clone() } else { format!("{}/{}", req.resource, req.subresource) };
            return Some(format!("resource {r:?} not in {}", go_quote_list(&self.resources)));
        }
        if !(self.resource_names.is_empty() || has(&self.resource_names, &req.name)) {
            return Some(format!("name {:?} not in resourceNames {}", req.name, go_quote_list(&self.resource_names)));
        }
        None
    }

    /// How many of the five checks the request passes (to rank near misses).
    pub fn closeness(&self, req: &Request) -> usize {
        let mut score = usize::from(self.verb_matches(&req.verb));
        if req.resource_request && !self.resources.is_empty() {
            score += usize::from(has_all(&self.api_groups) || has(&self.api_groups, &req.api_group));
            score += usize::from(self.resource_matches(&req.resource, &req.subresource));
            score += usize::from(self.resource_names.is_empty() || has(&self.resource_names, &req.name));
        } else if !req.resource_request && !self.non_resource_urls.is_empty() {
            score += 3 * usize::from(self.url_matches(&req.path));
        }
        score
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

    /// Splits into rules of one verb, group, resource and name (or one verb and URL).
    fn atoms(&self) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        for verb in &self.verbs {
            for url in &self.non_resource_urls {
                out.push(PolicyRule { verbs: vec![verb.clone()], non_resource_urls: vec![url.clone()], ..Default::default() });
            }
            for group in &self.api_groups {
                for resource in &self.resources {
                    let names: Vec<Option<&String>> =
                        if self.resource_names.is_empty() { vec![None] } else { self.resource_names.iter().map(Some).collect() };
                    for name in names {
                        out.push(PolicyRule {
                            verbs: vec![verb.clone()],
                            api_groups: vec![group.clone()],
                            resources: vec![resource.clone()],
                            resource_names: name.into_iter().cloned().collect(),
                            non_resource_urls: Vec::new(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Whether this (owner's) rule grants everything `atom` (a single-valued rule) does.
    fn covers_atom(&self, atom: &PolicyRule) -> bool {
        let verb = &atom.verbs[0];
        if !(has_all(&self.verbs) || has(&self.verbs, verb)) {
            return false;
        }
        if let Some(url) = atom.non_resource_urls.first() {
            return self.non_resource_urls.iter().any(|u| u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p)));
        }
        let (group, resource) = (&atom.api_groups[0], &atom.resources[0]);
        let group_ok = has_all(&self.api_groups) || has(&self.api_groups, group);
        let resource_ok = has_all(&self.resources)
            || has(&self.resources, resource)
            || resource.split_once('/').is_some_and(|(base, sub)| {
                has(&self.resources, &format!("*/{sub}")) || has(&self.resources, &format!("{base}/*"))
            });
        let names_ok = self.resource_names.is_empty() || atom.resource_names.first().is_some_and(|n| has(&self.resource_names, n));
        group_ok && resource_ok && names_ok
    }
}

/// The parts of `requested` that no rule in `owned` covers, compacted and as
/// kube-apiserver prints them (sorted compact strings). Empty: fully covered.
pub fn uncovered(owned: &[PolicyRule], requested: &[PolicyRule]) -> Vec<String> {
    let mut missing: Vec<PolicyRule> = Vec::new();
    for rule in requested {
        for atom in rule.atoms() {
            if !owned.iter().any(|o| o.covers_atom(&atom)) && !missing.contains(&atom) {
                missing.push(atom);
            }
        }
    }
    // Compact: simple resource rules (one group, one resource, no names) that differ only in verbs merge.
    let mut compacted: Vec<PolicyRule> = Vec::new();
    for atom in missing {
        let simple = atom.resource_names.is_empty() && atom.non_resource_urls.is_empty();
        if simple
            && let Some(existing) = compacted.iter_mut().find(|c| {
                c.resource_names.is_empty() && c.non_resource_urls.is_empty() && c.api_groups == atom.api_groups && c.resources == atom.resources
            })
        {
            existing.verbs.extend(atom.verbs);
            continue;
        }
        compacted.push(atom);
    }
    let mut out: Vec<String> = compacted.iter().map(PolicyRule::compact_string).collect();
    out.sort();
    out.dedup();
    out
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

    #[test]
    fn uncovered_prints_like_kube_apiserver() {
        let owned = vec![rule(&["create", "get"], &["rbac.authorization.k8s.io"], &["roles"], &[])];
        let wanted = vec![rule(&["get"], &[""], &["secrets"], &[])];
        assert_eq!(uncovered(&owned, &wanted), vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#]);
        let admin = vec![
            rule(&["*"], &["*"], &["*"], &[]),
            PolicyRule { verbs: vec!["*".into()], non_resource_urls: vec!["*".into()], ..Default::default() },
        ];
        assert_eq!(
            uncovered(&[], &admin),
            vec![r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#, r#"{NonResourceURLs:["*"], Verbs:["*"]}"#]
        );
        assert!(uncovered(&admin, &wanted).is_empty());
        // Verbs of one resource merge; names stay separate.
        let want = vec![rule(&["get", "list"], &[""], &["pods"], &[])];
        assert_eq!(uncovered(&[], &want), vec![r#"{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}"#]);
        let names = vec![rule(&["get"], &[""], &["secrets"], &["a"])];
        assert!(uncovered(&[rule(&["get"], &[""], &["secrets"], &[])], &names).is_empty());
        assert!(!uncovered(&names, &[rule(&["get"], &[""], &["secrets"], &[])]).is_empty());
    }
}
