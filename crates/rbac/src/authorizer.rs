//! Decisions with reasons, rules reviews, explanations and who-can, over a [`Policy`].

use std::collections::BTreeSet;

use serde::Serialize;
use tessera_authn::{MASTERS_GROUP, UserInfo};

use crate::policy::{Binding, Policy};
use crate::rule::{PolicyRule, Request};

/// Proof that a request is allowed. Only this module builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    reason: String,
}

impl Allowed {
    /// `RBAC: allowed by …`, or empty for the privileged group.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the reason.
    Allow(Allowed),
    /// No rule allows it (RBAC gives no reason for a denial).
    Deny,
}

impl Decision {
    /// Whether allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

fn reason(binding: &Binding, user: &UserInfo) -> String {
    format!(
        "RBAC: allowed by {} of {} \"{}\" to {}",
        binding.describe(),
        binding.role_ref.kind,
        binding.role_ref.name,
        binding.matched_subject(user).unwrap_or_default()
    )
}

/// Decides a request. Members of `system:masters` are always allowed (as
/// kube-apiserver's privileged-group authorizer does), with an empty reason.
pub fn authorize(policy: &Policy, user: &UserInfo, req: &Request) -> Decision {
    if user.in_group(MASTERS_GROUP) {
        return Decision::Allow(Allowed { reason: String::new() });
    }
    for binding in policy.bindings_for(user, &req.namespace) {
        if policy.rules_of(&binding).iter().any(|rule| rule.allows(req)) {
            return Decision::Allow(Allowed { reason: reason(&binding, user) });
        }
    }
    Decision::Deny
}

/// Every rule `user` holds in `namespace` (cluster-wide rules included; `""`:
/// only cluster-wide), in binding order.
pub fn rules_for(policy: &Policy, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    if user.in_group(MASTERS_GROUP) {
        rules.push(PolicyRule { verbs: vec!["*".into()], api_groups: vec!["*".into()], resources: vec!["*".into()], ..Default::default() });
        rules.push(PolicyRule { verbs: vec!["*".into()], non_resource_urls: vec!["*".into()], ..Default::default() });
    }
    for binding in policy.bindings_for(user, namespace) {
        rules.extend(policy.rules_of(&binding).iter().cloned());
    }
    rules
}

/// One binding/rule pair in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    /// `ClusterRoleBinding "x"` / `RoleBinding "x/ns"`.
    pub binding: String,
    /// `ClusterRole "r"` / `Role "r"`.
    pub role: String,
    /// The subject of the binding that matched the user.
    pub subject: String,
    /// The rule, compact form.
    pub rule: String,
    /// Why it does not apply (near misses only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// The answer of `tessera rbac explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Allowed or not.
    pub allowed: bool,
    /// The reason kube-apiserver would give.
    pub reason: String,
    /// Every binding and rule that allows the request.
    pub matches: Vec<RuleMatch>,
    /// For a denial: the rules that came closest, and why they do not apply.
    pub near_misses: Vec<RuleMatch>,
}

fn role_desc(binding: &Binding) -> String {
    format!("{} \"{}\"", binding.role_ref.kind, binding.role_ref.name)
}

/// Explains a decision: all matching rules, or the nearest misses.
pub fn explain(policy: &Policy, user: &UserInfo, req: &Request, max_misses: usize) -> Explanation {
    let decision = authorize(policy, user, req);
    let mut matches = Vec::new();
    let mut misses: Vec<(usize, RuleMatch)> = Vec::new();
    for binding in policy.bindings_for(user, &req.namespace) {
        let subject = binding.matched_subject(user).unwrap_or_default();
        if policy.role_of(&binding).is_none() {
            misses.push((0, RuleMatch { binding: binding.describe(), role: role_desc(&binding), subject, rule: String::new(), why_not: Some("the referenced role does not exist".into()) }));
            continue;
        }
        for rule in policy.rules_of(&binding) {
            let entry = RuleMatch { binding: binding.describe(), role: role_desc(&binding), subject: subject.clone(), rule: rule.compact_string(), why_not: rule.mismatch(req) };
            if entry.why_not.is_none() {
                matches.push(entry);
            } else {
                misses.push((rule.closeness(req), entry));
            }
        }
    }
    // Bindings for this user in other namespaces are the classic near miss.
    if !req.namespace.is_empty() {
        for binding in policy.all_bindings().filter(|b| b.namespace.as_deref().is_some_and(|ns| ns != req.namespace)) {
            if let Some(subject) = binding.matched_subject(user)
                && policy.rules_of(binding).iter().any(|r| r.allows(&Request { namespace: binding.namespace.clone().unwrap_or_default(), ..req.clone() }))
            {
                let ns = binding.namespace.clone().unwrap_or_default();
                misses.push((5, RuleMatch { binding: binding.describe(), role: role_desc(binding), subject, rule: String::new(), why_not: Some(format!("would allow it, but only in namespace {ns:?}")) }));
            }
        }
    }
    let (allowed, reason) = match &decision {
        Decision::Allow(a) if a.reason().is_empty() => (true, format!("allowed: member of the privileged group {MASTERS_GROUP}")),
        Decision::Allow(a) => (true, a.reason().to_owned()),
        Decision::Deny => (false, "no RBAC rule allows it".to_owned()),
    };
    let near_misses = if allowed {
        Vec::new()
    } else {
        misses.sort_by_key(|m| std::cmp::Reverse(m.0));
        misses.into_iter().take(max_misses).map(|(_, m)| m).collect()
    };
    Explanation { allowed, reason, matches, near_misses }
}

/// One answer of who-can.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Grant {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// Name (`ns/name` for ServiceAccounts).
    pub name: String,
    /// Through which binding.
    pub binding: String,
    /// Of which role.
    pub role: String,
}

/// Every subject allowed to make `req`, with the binding that allows it.
/// `system:masters` is always included (privileged group).
pub fn who_can(policy: &Policy, req: &Request) -> Vec<Grant> {
    let mut out: BTreeSet<Grant> = BTreeSet::new();
    out.insert(Grant { kind: "Group".into(), name: MASTERS_GROUP.into(), binding: "(privileged group)".into(), role: "-".into() });
    for binding in policy.all_bindings() {
        let in_scope = match &binding.namespace {
            None => true,
            Some(ns) => !req.namespace.is_empty() && *ns == req.namespace,
        };
        if !in_scope || !policy.rules_of(binding).iter().any(|r| r.allows(req)) {
            continue;
        }
        for s in &binding.subjects {
            let name = if s.kind == "ServiceAccount" {
                let ns = if s.namespace.is_empty() { binding.namespace.clone().unwrap_or_default() } else { s.namespace.clone() };
                format!("{ns}/{}", s.name)
            } else {
                s.name.clone()
            };
            out.insert(Grant { kind: s.kind.clone(), name, binding: binding.describe(), role: role_desc(binding) });
        }
    }
    out.into_iter().collect()
}

/// The aggregated rules of an aggregating ClusterRole: the union, in role-name
/// order, of the rules of every other ClusterRole whose labels match a selector.
pub fn aggregated_rules(policy: &Policy, role_name: &str) -> Option<Vec<PolicyRule>> {
    let role = policy.cluster_role(role_name)?;
    let selectors = role.aggregation.as_ref()?;
    let mut sources: Vec<_> = policy
        .cluster_roles()
        .filter(|r| r.name != role.name)
        .filter(|r| selectors.iter().any(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| r.labels.get(k) == Some(v))))
        .collect();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for source in sources {
        for rule in &source.rules {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}
