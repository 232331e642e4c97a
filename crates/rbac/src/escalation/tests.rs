use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use tessera_authn::UserInfo;

use super::*;
use crate::authorizer::rules_for;
use crate::policy::{Binding, Role};
use crate::{Policy, bootstrap};

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
    let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    PolicyRule { verbs: v(verbs), api_groups: v(groups), resources: v(resources), resource_names: v(names), non_resource_urls: vec![] }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    PolicyRule { verbs: v(verbs), non_resource_urls: v(urls), ..Default::default() }
}

const UNLIMITED: Limits = Limits { max_lines: usize::MAX, max_bytes: usize::MAX, max_steps: u64::MAX };

/// Every uncovered line, or empty when covered.
fn uncovered(held: &[PolicyRule], requested: &[PolicyRule]) -> Vec<String> {
    match check(held, requested, &UNLIMITED) {
        Ok(()) => Vec::new(),
        Err(NotCovered::Missing(m)) => {
            assert_eq!(m.omitted(), 0);
            m.shown().to_vec()
        }
        Err(NotCovered::TooComplex) => panic!("no budget was set"),
    }
}

/// kube-apiserver's algorithm, literally: `BreakdownRule`, `ruleCovers` per
/// atom, `CompactRules`, then the sorted set of `CompactString`s.
fn kube_uncovered(held: &[PolicyRule], requested: &[PolicyRule]) -> Vec<String> {
    let one = |s: &String| vec![s.clone()];
    let mut atoms = Vec::new();
    for r in requested {
        for g in &r.api_groups {
            for res in &r.resources {
                for v in &r.verbs {
                    let atom = PolicyRule { verbs: one(v), api_groups: one(g), resources: one(res), ..Default::default() };
                    if r.resource_names.is_empty() {
                        atoms.push(atom);
                    } else {
                        atoms.extend(r.resource_names.iter().map(|n| PolicyRule { resource_names: one(n), ..atom.clone() }));
                    }
                }
            }
        }
        for u in &r.non_resource_urls {
            for v in &r.verbs {
                atoms.push(PolicyRule { verbs: one(v), non_resource_urls: one(u), ..Default::default() });
            }
        }
    }
    let missing = atoms.into_iter().filter(|a| !held.iter().any(|h| h.covers(a)));
    let mut simple: HashMap<(String, String, Option<String>), PolicyRule> = HashMap::new();
    let mut compacted = Vec::new();
    for m in missing {
        if m.non_resource_urls.is_empty() && m.api_groups.len() == 1 && m.resources.len() == 1 && m.resource_names.len() <= 1 {
            let key = (m.api_groups[0].clone(), m.resources[0].clone(), m.resource_names.first().cloned());
            match simple.get_mut(&key) {
                Some(existing) => existing.verbs.extend(m.verbs),
                None => {
                    simple.insert(key, m);
                }
            }
        } else {
            compacted.push(m);
        }
    }
    let lines: BTreeSet<String> = compacted.iter().chain(simple.values()).map(PolicyRule::compact_string).collect();
    lines.into_iter().collect()
}

fn namespace_admin() -> Vec<PolicyRule> {
    let mut p = Policy::default();
    for r in bootstrap::cluster_roles() {
        p.put_cluster_role(Role::from_object(&r).unwrap());
    }
    for b in bootstrap::cluster_role_bindings() {
        p.put_binding(Binding::from_object(&b).unwrap());
    }
    p.put_binding(
        Binding::from_object(&json!({"metadata": {"name": "boss", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "admin"}, "subjects": [{"kind": "User", "name": "boss"}]}))
        .unwrap(),
    );
    let boss = UserInfo { username: "boss".into(), groups: vec!["system:authenticated".into()], ..Default::default() };
    rules_for(&p, &boss, "team")
}

/// The 632-byte Role of issue 12: one rule, 18 verbs × 18 groups × 18 resources × 18 names.
fn rule_18_4() -> PolicyRule {
    let verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate", "approve", "sign", "use", "proxy", "attest", "mint", "nuke"];
    let groups = ["", "apps", "batch", "policy", "extensions", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "storage.k8s.io", "certificates.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "node.k8s.io", "example.com"];
    let resources = ["pods", "secrets", "configmaps", "serviceaccounts", "serviceaccounts/token", "pods/exec", "deployments", "roles", "rolebindings", "jobs", "leases", "services", "events", "ingresses", "nodes", "clusterroles", "widgets", "namespaces"];
    let names: Vec<String> = (0..18).map(|i| format!("n{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    rule(&verbs, &groups, &resources, &names)
}

#[test]
fn uncovered_prints_like_kube_apiserver() {
    let owned = vec![rule(&["create", "get"], &["rbac.authorization.k8s.io"], &["roles"], &[])];
    let wanted = vec![rule(&["get"], &[""], &["secrets"], &[])];
    assert_eq!(uncovered(&owned, &wanted), vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#]);
    let admin = vec![rule(&["*"], &["*"], &["*"], &[]), urls(&["*"], &["*"])];
    assert_eq!(uncovered(&[], &admin), vec![r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#, r#"{NonResourceURLs:["*"], Verbs:["*"]}"#]);
    assert!(uncovered(&admin, &wanted).is_empty());
    // Verbs of one group, resource and name merge, in order, repeats kept.
    let want = vec![rule(&["get", "list"], &[""], &["pods"], &[]), rule(&["watch", "get"], &[""], &["pods"], &[])];
    assert_eq!(uncovered(&[], &want), vec![r#"{APIGroups:[""], Resources:["pods"], Verbs:["get" "list" "watch" "get"]}"#]);
    let names = vec![rule(&["get", "list"], &[""], &["secrets"], &["b", "a"])];
    assert_eq!(
        uncovered(&[], &names),
        vec![
            r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["a"], Verbs:["get" "list"]}"#,
            r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["b"], Verbs:["get" "list"]}"#
        ]
    );
    assert!(uncovered(&[rule(&["get", "list"], &[""], &["secrets"], &[])], &names).is_empty());
    assert_eq!(
        uncovered(&names, &[rule(&["get"], &[""], &["secrets"], &[])]),
        vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#]
    );
    // The reference responses of kube-apiserver 1.32 (/work/shared/reference/rbac/escalation-*.txt).
    let cluster_admin = vec![rule(&["*"], &["*"], &["*"], &[]), urls(&["*"], &["*"])];
    let lim = vec![rule(&["create", "get", "list"], &["rbac.authorization.k8s.io"], &["roles", "rolebindings"], &[])];
    assert_eq!(uncovered(&lim, &cluster_admin).join("\n"), "{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}");
}

#[test]
fn subresource_wildcards_cover_as_in_kube_apiserver() {
    let token = vec![rule(&["create"], &[""], &["serviceaccounts/token"], &[])];
    let exec = vec![rule(&["create"], &[""], &["pods/exec"], &[])];
    let token_line = r#"{APIGroups:[""], Resources:["serviceaccounts/token"], Verbs:["create"]}"#;
    assert_eq!(uncovered(&[rule(&["create"], &[""], &["serviceaccounts/*"], &[])], &token), vec![token_line]);
    assert_eq!(uncovered(&[rule(&["create"], &[""], &["pods/*"], &[])], &exec), vec![r#"{APIGroups:[""], Resources:["pods/exec"], Verbs:["create"]}"#]);
    assert!(uncovered(&[rule(&["create"], &[""], &["*/token"], &[])], &token).is_empty());
    assert!(uncovered(&[rule(&["create"], &[""], &["*"], &[])], &token).is_empty());
    // A requested `*/token` or `pods/*` is a literal: only the same literal (or `*`) covers it.
    assert!(uncovered(&[rule(&["create"], &[""], &["*/token"], &[])], &[rule(&["create"], &[""], &["*/token"], &[])]).is_empty());
    assert_eq!(
        uncovered(&[rule(&["create"], &[""], &["serviceaccounts/token"], &[])], &[rule(&["create"], &[""], &["*/token"], &[])]),
        vec![r#"{APIGroups:[""], Resources:["*/token"], Verbs:["create"]}"#]
    );
    assert!(uncovered(&[rule(&["create"], &[""], &["pods/*"], &[])], &[rule(&["create"], &[""], &["pods/*"], &[])]).is_empty());
    assert!(!uncovered(&[rule(&["create"], &[""], &["pods"], &[])], &exec).is_empty());
}

#[test]
fn non_resource_urls_and_names() {
    let held = vec![urls(&["get"], &["/api/*", "/healthz"]), rule(&["get"], &[""], &["secrets"], &["a"])];
    assert!(uncovered(&held, &[urls(&["get"], &["/api/v1", "/api/", "/healthz"])]).is_empty());
    assert_eq!(
        uncovered(&held, &[urls(&["get", "post"], &["/healthz", "/api", "/api/v1"])]),
        vec![
            r#"{NonResourceURLs:["/api"], Verbs:["get"]}"#,
            r#"{NonResourceURLs:["/api"], Verbs:["post"]}"#,
            r#"{NonResourceURLs:["/api/v1"], Verbs:["post"]}"#,
            r#"{NonResourceURLs:["/healthz"], Verbs:["post"]}"#,
        ]
    );
    // A held rule with names covers no URL (kube's `ruleCovers`).
    let named_urls = PolicyRule { resource_names: vec!["x".into()], ..urls(&["get"], &["*"]) };
    assert_eq!(uncovered(&[named_urls], &[urls(&["get"], &["/x"])]), vec![r#"{NonResourceURLs:["/x"], Verbs:["get"]}"#]);
    assert!(uncovered(&held, &[rule(&["get"], &[""], &["secrets"], &["a", "a"])]).is_empty());
    assert_eq!(
        uncovered(&held, &[rule(&["get"], &[""], &["secrets"], &["b", "a", "b"])]),
        vec![r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["b"], Verbs:["get" "get"]}"#]
    );
}

/// Repeated values repeat verbs exactly as kube's breakdown and merge do.
#[test]
fn repeats_follow_kube_apiserver() {
    let held = vec![rule(&["get"], &["*"], &["*"], &[])];
    for requested in [
        vec![rule(&["get", "list", "list"], &["", ""], &["pods"], &[])],
        vec![rule(&["get", "list"], &[""], &["pods", "pods"], &["a", "a", "b"])],
        vec![rule(&["list"], &[""], &["pods"], &[]), rule(&["list", "watch"], &["", "apps"], &["pods"], &[])],
        vec![urls(&["post", "post"], &["/a", "/a"]), urls(&["post"], &["/a"])],
    ] {
        assert_eq!(uncovered(&held, &requested), kube_uncovered(&held, &requested), "{requested:?}");
    }
}

/// A small deterministic generator (xorshift), so the comparison needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick(&mut self, from: &[&str], max: usize) -> Vec<String> {
        (0..self.below(max + 1)).map(|_| from[self.below(from.len())].to_owned()).collect()
    }

    fn rule(&mut self, wild: bool) -> PolicyRule {
        let star: &[&str] = if wild { &["*"] } else { &[] };
        let with = |base: &[&'static str]| -> Vec<&'static str> { base.iter().chain(star).copied().collect() };
        let verbs = with(&["get", "list", "create"]);
        let groups = with(&["", "apps", "x\"y"]);
        let resources = with(&["pods", "pods/exec", "pods/*", "*/exec", "sa/token", "*/token", "a/b/c", "*/b/c", "pod"]);
        let names: &[&str] = &["a", "b", "", "é"];
        let urls: &[&str] = &["/a", "/a/b", "/a*", "/a/**", "*", "/", "/ab"];
        let mut r = PolicyRule {
            verbs: self.pick(&verbs, 3),
            api_groups: self.pick(&groups, 2),
            resources: self.pick(&resources, 3),
            resource_names: if self.below(2) == 0 { vec![] } else { self.pick(names, 3) },
            non_resource_urls: vec![],
        };
        if self.below(3) == 0 {
            r.non_resource_urls = self.pick(urls, 3);
            if self.below(2) == 0 {
                r.api_groups.clear();
                r.resources.clear();
                r.resource_names.clear();
            }
        }
        r
    }
}

#[test]
fn agrees_with_kube_apiserver_on_random_rules() {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut escalations = 0;
    for case in 0..3000 {
        let held: Vec<PolicyRule> = (0..rng.below(6)).map(|_| rng.rule(true)).collect();
        let requested: Vec<PolicyRule> = (0..1 + rng.below(4)).map(|_| rng.rule(case % 3 == 0)).collect();
        let expected = kube_uncovered(&held, &requested);
        assert_eq!(uncovered(&held, &requested), expected, "case {case}: held {held:?} requested {requested:?}");
        escalations += usize::from(!expected.is_empty());
        // With a cap, the shown lines are the first of kube's, and the rest are counted.
        if expected.len() > 2 {
            let Err(NotCovered::Missing(m)) = check(&held, &requested, &Limits { max_lines: 2, ..UNLIMITED }) else {
                panic!("case {case} is covered")
            };
            assert_eq!(m.shown(), &expected[..2]);
            assert_eq!(m.omitted(), expected.len() as u64 - 2);
        }
    }
    // The generator exercises both outcomes.
    assert!((500..2900).contains(&escalations), "{escalations} escalations");
}

#[test]
fn the_18_4_rule_is_answered_like_kube_apiserver_within_the_cap() {
    let held = namespace_admin();
    let wanted = vec![rule_18_4()];
    let expected = kube_uncovered(&held, &wanted);
    let Err(NotCovered::Missing(missing)) = check(&held, &wanted, &Limits::default()) else { panic!("covered") };
    assert_eq!(missing.shown().len(), 100);
    assert_eq!(missing.shown(), &expected[..100]);
    assert_eq!(missing.omitted(), expected.len() as u64 - 100);
    assert_eq!(missing.shown()[0], r#"{APIGroups:[""], Resources:["clusterroles"], ResourceNames:["n00"], Verbs:["get" "list" "watch" "create" "update" "patch" "delete" "deletecollection" "escalate" "bind" "impersonate" "approve" "sign" "use" "proxy" "attest" "mint" "nuke"]}"#);
    let lines = missing.lines();
    assert_eq!(lines.len(), 101);
    assert_eq!(lines[100], format!("(and {} more rules not shown)", expected.len() - 100));
    assert!(lines.iter().map(|l| l.len() + 1).sum::<usize>() < 32 * 1024);
}

#[test]
fn the_byte_cap_keeps_kube_order() {
    let wanted = vec![rule_18_4()];
    let Err(NotCovered::Missing(missing)) = check(&[], &wanted, &Limits { max_bytes: 1000, ..Limits::default() }) else { panic!("covered") };
    let expected = kube_uncovered(&[], &wanted);
    let shown = missing.shown().len();
    assert!((1..10).contains(&shown), "{shown}");
    assert_eq!(missing.shown(), &expected[..shown]);
    assert_eq!(missing.omitted(), (18 * 18 * 18 - shown) as u64);
    assert!(missing.shown().iter().map(|l| l.len() + 1).sum::<usize>() <= 1000);
    // A first line longer than the cap is counted, not shown.
    let Err(NotCovered::Missing(missing)) = check(&[], &wanted, &Limits { max_bytes: 50, ..Limits::default() }) else { panic!("covered") };
    assert_eq!((missing.shown().len(), missing.omitted()), (0, 18 * 18 * 18));
    assert_eq!(missing.lines(), vec!["(and 5832 more rules not shown)"]);
}

/// Held rules that each split the requested values differently defeat the
/// classes; the budget refuses such a request instead of working on.
#[test]
fn an_exhausted_budget_refuses() {
    let values: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
    let pick = |bit: usize| -> Vec<String> { values.iter().enumerate().filter(|(i, _)| i >> bit & 1 == 1).map(|(_, v)| v.clone()).collect() };
    let held: Vec<PolicyRule> = (0..6)
        .map(|bit| PolicyRule { verbs: pick(bit), api_groups: pick((bit + 1) % 6), resources: pick((bit + 2) % 6), ..Default::default() })
        .collect();
    let wanted = vec![PolicyRule { verbs: values.clone(), api_groups: values.clone(), resources: values.clone(), ..Default::default() }];
    assert_eq!(check(&held, &wanted, &Limits { max_steps: 1_000, ..Limits::default() }), Err(NotCovered::TooComplex));
    // With the default budget it is decided, and agrees with kube.
    let Err(NotCovered::Missing(m)) = check(&held, &wanted, &Limits::default()) else { panic!("covered") };
    let kube = kube_uncovered(&held, &wanted);
    // Long lines: the 32 KiB cap is reached before 100 lines.
    let shown = m.shown().len();
    assert!((50..100).contains(&shown), "{shown}");
    assert_eq!(m.shown(), &kube[..shown]);
    assert_eq!(m.omitted(), (kube.len() - shown) as u64);
}

#[test]
fn a_cluster_admin_grants_anything_at_once() {
    let held = vec![rule(&["*"], &["*"], &["*"], &[]), urls(&["*"], &["*"])];
    let wide: Vec<String> = (0..2000).map(|i| format!("x{i}")).collect();
    let wanted = vec![
        PolicyRule { verbs: wide.clone(), api_groups: wide.clone(), resources: wide.clone(), resource_names: wide.clone(), non_resource_urls: wide },
    ];
    assert_eq!(check(&held, &wanted, &Limits { max_steps: 10, ..Limits::default() }), Ok(()));
}

/// A long list of small rules costs about what its atoms do: never refused
/// for its length, even with no budget beyond what the request lists.
#[test]
fn many_small_rules_cost_what_their_atoms_cost() {
    let held = namespace_admin();
    let wanted: Vec<PolicyRule> = (0..20_000).map(|i| rule(&["get"], &[""], &[&format!("r{i}")], &[])).collect();
    let Err(NotCovered::Missing(m)) = check(&held, &wanted, &Limits { max_steps: 0, ..Limits::default() }) else { panic!("covered") };
    assert_eq!(m.omitted(), 19_900);
    let mut covered = wanted.clone();
    covered.iter_mut().for_each(|r| r.resources = vec!["pods".into()]);
    assert_eq!(check(&held, &covered, &Limits { max_steps: 0, ..Limits::default() }), Ok(()));
}

/// Held `*/sub` rules mark every requested `x/sub`; those marks are paid for too.
#[test]
fn held_subresource_wildcards_are_paid_for() {
    let held: Vec<PolicyRule> = (0..1000).map(|i| rule(&[&format!("v{i}")], &[""], &["*/x"], &[])).collect();
    let resources: Vec<String> = (0..1000).map(|i| format!("r{i}/x")).collect();
    let wanted = vec![PolicyRule { verbs: vec!["get".into()], api_groups: vec!["".into()], resources, ..Default::default() }];
    assert_eq!(check(&held, &wanted, &Limits::default()), Err(NotCovered::TooComplex));
    assert_eq!(uncovered(&held[..10], &wanted[..]).len(), 1000);
}


