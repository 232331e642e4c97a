//! The escalation check: do the rules a user holds cover the rules they ask
//! to grant, and if not, what does kube-apiserver list as missing?
//!
//! kube-apiserver (`Covers` in `policy_comparator.go`) breaks every requested
//! rule into atoms of one verb, API group, resource and name (or one verb and
//! non-resource URL) and tests each atom against the held rules with
//! [`PolicyRule::covers`]. The atoms are the cross product of the rule's
//! lists: one rule of 18 verbs, groups, resources and names is 104,976 atoms,
//! and lists ten times longer give ten thousand times more.
//!
//! This module answers the same question without that product. Within one
//! dimension, values that the same held rules cover and the same requested
//! rules list behave alike, so they form a *class*. The search walks the
//! dimensions (groups, resources, names, then verbs; or URLs, then verbs)
//! class by class, carrying the requested rules still in play and the held
//! rules still covering, and remembers every state it has counted. An atom is
//! uncovered when no held rule is left; a held rule that covers every value
//! of the remaining dimensions settles a whole subtree at once. The work is
//! bounded by the number of classes, which is at most the number of distinct
//! values and usually far smaller, never by the number of atoms.
//!
//! No method is polynomial in every case (covering a product of sets with a
//! union of products is the orthogonal-vectors problem in disguise), so a
//! step budget bounds the search. A request that exceeds it is refused
//! ([`NotCovered::TooComplex`]), never allowed; it takes held rules written
//! to split the requested values in many different ways to get there.
//!
//! The answer lists what kube-apiserver lists: its `CompactRules` merges the
//! verbs of uncovered atoms with the same group, resource and name (keeping
//! their order and repeats), and it prints each rule's `CompactString`, sorted
//! and without duplicates. Sorted compact strings order by group, then
//! resource, then named before unnamed, then name (each compared as Go
//! quotes it), and resource rules before URL rules, so the first lines can be
//! produced in order without producing the rest. [`Limits`] caps how many are
//! shown; the rest are counted.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use crate::rule::{PolicyRule, go_quote};

/// Bounds on the work of one check and on the size of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most uncovered rules listed; the rest are counted.
    pub max_lines: usize,
    /// Most bytes of listed rules (a line that would pass it is not shown).
    pub max_bytes: usize,
    /// Most search steps (one step: one class tried in one state, or one
    /// value marked by a held `*/sub` or URL prefix), besides four per value
    /// the request lists (see [`check`]).
    pub max_steps: u64,
}

impl Default for Limits {
    /// 100 lines, 32 KiB, 100,000 steps. Issue 12's 18⁴ rule against a
    /// namespace admin takes under 500 steps (under 1 ms); the budget ends
    /// the worst case known in about 50 ms (`cargo bench --bench escalation`).
    fn default() -> Self {
        Self { max_lines: 100, max_bytes: 32 * 1024, max_steps: 100_000 }
    }
}

/// Why the held rules do not cover the requested ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCovered {
    /// Some requested permissions are not held.
    #[error("attempting to grant RBAC permissions not currently held")]
    Missing(Missing),
    /// Deciding would take more than [`Limits::max_steps`]; refused undecided.
    #[error("the requested rules are too complex to compare with the rules held")]
    TooComplex,
}

/// The uncovered permissions, as kube-apiserver prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    shown: Vec<String>,
    omitted: u64,
}

impl Missing {
    /// The first uncovered rules in kube-apiserver's order, as it prints them.
    pub fn shown(&self) -> &[String] {
        &self.shown
    }

    /// How many more uncovered rules there are.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    /// The lines of the error message: the shown rules and, when some are
    /// left out, a last line counting them.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.shown.clone();
        match self.omitted {
            0 => {}
            1 => lines.push("(and 1 more rule not shown)".to_owned()),
            n => lines.push(format!("(and {n} more rules not shown)")),
        }
        lines
    }
}

/// Checks that `held` covers `requested` as kube-apiserver's `Covers` does.
///
/// The search may take [`Limits::max_steps`] steps, plus four for each value
/// the requested rules list: however many small rules a request holds, it
/// costs about what its atoms would, and is never refused for its length.
pub fn check(held: &[PolicyRule], requested: &[PolicyRule], limits: &Limits) -> Result<(), NotCovered> {
    let listed: usize = requested
        .iter()
        .map(|r| r.verbs.len() + r.api_groups.len() + r.resources.len() + r.resource_names.len() + r.non_resource_urls.len())
        .sum();
    let budget = Budget(Cell::new(limits.max_steps.saturating_add(4u64.saturating_mul(listed as u64))));
    // The same rule held twice (one role, many bindings) covers nothing more.
    let mut seen = HashSet::new();
    let held: Vec<&PolicyRule> = held.iter().filter(|rule| seen.insert(*rule)).collect();
    let spaces = Spaces::new(&held, requested, &budget)?;
    let all_held = Set::range(held.len());

    let resource_dims = [&spaces.groups, &spaces.resources, &spaces.names, &spaces.verbs];
    let mut resources = Search::new(&resource_dims, 3, &budget);
    let resource_lines = resources.count(0, &spaces.resource_rules, &all_held)?;
    let url_dims = [&spaces.urls, &spaces.verbs];
    let mut urls = Search::new(&url_dims, 2, &budget);
    let url_lines = urls.count(0, &spaces.url_rules, &all_held)?;
    if resource_lines == 0 && url_lines == 0 {
        return Ok(());
    }

    // Resource rules print before URL rules ("{APIGroups…" < "{NonResourceURLs…").
    let mut out = Output { shown: Vec::new(), bytes: 0, limits, full: false };
    resources.walk(0, &spaces.resource_rules, &all_held, &mut Vec::new(), &mut |key, rules, held| {
        out.offer(|max| spaces.resource_line(requested, key, rules, held, max))
    })?;
    urls.walk(0, &spaces.url_rules, &all_held, &mut Vec::new(), &mut |key, _, _| out.offer(|max| url_line(key, max)))?;

    let total = resource_lines.saturating_add(url_lines);
    let omitted = total.saturating_sub(out.shown.len() as u64);
    Err(NotCovered::Missing(Missing { shown: out.shown, omitted }))
}

/// The lines shown so far, within [`Limits`].
struct Output<'l> {
    shown: Vec<String>,
    bytes: usize,
    limits: &'l Limits,
    full: bool,
}

impl Output<'_> {
    /// Adds the line `render` builds within the bytes left (None: it does not
    /// fit). Returns whether to go on.
    fn offer(&mut self, render: impl FnOnce(usize) -> Option<String>) -> bool {
        if self.full || self.shown.len() >= self.limits.max_lines {
            self.full = true;
            return false;
        }
        match render(self.limits.max_bytes.saturating_sub(self.bytes)) {
            Some(line) => {
                self.bytes += line.len() + 1;
                self.shown.push(line);
                true
            }
            None => {
                // Later lines would be out of kube-apiserver's order without it.
                self.full = true;
                false
            }
        }
    }
}

// === values, classes and dimensions ===

/// A value of one dimension; None is "no resourceNames" (names only).
type Value<'a> = Option<&'a str>;

/// A set of rule indexes (held or requested), sorted. Sparse, so that the
/// requested rules listing each value take memory in proportion to the
/// request, however many rules it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Set(Vec<u32>);

impl Set {
    /// `0..len`.
    fn range(len: usize) -> Self {
        Self((0..len).filter_map(|i| u32::try_from(i).ok()).collect())
    }

    /// Adds `i`, which is not below any member (members are added in order).
    fn push(&mut self, i: usize) {
        let Ok(i) = u32::try_from(i) else { return };
        if self.0.last().is_none_or(|&last| last < i) {
            self.0.push(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().map(|&i| i as usize)
    }

    fn and(&self, other: &Self) -> Self {
        let (small, large) = if self.0.len() <= other.0.len() { (self, other) } else { (other, self) };
        if small.0.len().saturating_mul(8) < large.0.len() {
            // Very unequal sizes (all rules in play against one class's):
            // look each small member up rather than walk the large set.
            return Self(small.0.iter().copied().filter(|x| large.0.binary_search(x).is_ok()).collect());
        }
        let (mut a, mut b) = (small.0.iter().peekable(), large.0.iter().peekable());
        let mut out = Vec::new();
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            match x.cmp(&y) {
                std::cmp::Ordering::Less => {
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    out.push(x);
                    a.next();
                    b.next();
                }
            }
        }
        Self(out)
    }

    /// The members that are also in `a` or in `b`.
    fn and_either(&self, a: &Self, b: &Self) -> Self {
        match (self.and(a), b.is_empty()) {
            (in_a, true) => in_a,
            (in_a, false) => in_a.or(&self.and(b)),
        }
    }

    fn or(&self, other: &Self) -> Self {
        if other.is_empty() {
            return self.clone();
        }
        let mut out: Vec<u32> = self.0.iter().chain(&other.0).copied().collect();
        out.sort_unstable();
        out.dedup();
        Self(out)
    }

    fn intersects(&self, other: &Self) -> bool {
        let (small, large) = if self.0.len() <= other.0.len() { (self, other) } else { (other, self) };
        small.0.iter().any(|x| large.0.binary_search(x).is_ok())
    }
}

/// Values that the same held rules cover and the same requested rules list.
#[derive(Debug)]
struct Class {
    /// Held rules that cover these values by naming them (besides the
    /// dimension's [`Dimension::everywhere`]).
    held: Set,
    /// Requested rules that list these values.
    rules: Set,
    /// How many values.
    size: u64,
}

/// One dimension of the atoms, its values grouped into classes.
#[derive(Debug)]
struct Dimension<'a> {
    classes: Vec<Class>,
    class_of: HashMap<Value<'a>, usize>,
    /// Every value with its class, in the order kube-apiserver prints them.
    ordered: Vec<(Value<'a>, usize)>,
    /// The classes of each requested rule's values.
    by_rule: Vec<Vec<usize>>,
    /// Held rules that cover any value here (`*`, or no names): kept once
    /// rather than with every value.
    everywhere: Set,
    /// Held rules that cover every value of this dimension.
    universal: Set,
}

impl<'a> Dimension<'a> {
    /// The classes any of `rules` lists.
    fn candidates(&self, rules: &Set) -> Vec<usize> {
        if let [only] = rules.0.as_slice() {
            return self.by_rule.get(*only as usize).cloned().unwrap_or_default();
        }
        let mut all: Vec<usize> = rules.iter().flat_map(|r| self.by_rule.get(r).into_iter().flatten().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Of `held`, the rules that also cover the values of class `c`.
    fn still_covering(&self, held: &Set, c: &Class) -> Set {
        held.and_either(&c.held, &self.everywhere)
    }

    /// Whether any of `held` covers `value` (false if it is not a value here).
    fn covers(&self, held: &Set, value: Value<'a>) -> bool {
        let named = self.class_of.get(&value).and_then(|&c| self.classes.get(c)).is_some_and(|c| held.intersects(&c.held));
        named || held.intersects(&self.everywhere)
    }
}

/// The distinct values of one dimension while its classes are being found.
struct Values<'a> {
    list: Vec<Value<'a>>,
    index: HashMap<Value<'a>, usize>,
    rules: Vec<Set>,
    held: Vec<Set>,
    everywhere: Set,
}

impl<'a> Values<'a> {
    /// The values that the `active` requested rules list in one dimension.
    fn collect(requested: &'a [PolicyRule], active: &Set, values_of: impl Fn(&'a PolicyRule) -> Vec<Value<'a>>) -> Self {
        let mut values = Self { list: Vec::new(), index: HashMap::new(), rules: Vec::new(), held: Vec::new(), everywhere: Set::default() };
        for i in active.iter() {
            let Some(rule) = requested.get(i) else { continue };
            for value in values_of(rule) {
                let at = *values.index.entry(value).or_insert_with(|| {
                    values.list.push(value);
                    values.rules.push(Set::default());
                    values.held.push(Set::default());
                    values.list.len() - 1
                });
                values.rules[at].push(i);
            }
        }
        values
    }

    /// Records that held rule `h` covers `value`, if it is one of ours.
    /// (Held rules are recorded in order.)
    fn covered(&mut self, value: Value<'_>, h: usize) {
        if let Some(&at) = self.index.get(&value) {
            self.held[at].push(h);
        }
    }

    /// Records that held rule `h` covers every value.
    fn all_covered(&mut self, h: usize) {
        self.everywhere.push(h);
    }

    /// Groups the values into classes.
    fn classify(self) -> Dimension<'a> {
        let mut classes: Vec<Class> = Vec::new();
        let mut class_ids: HashMap<(Set, Set), usize> = HashMap::new();
        let mut class_of = HashMap::with_capacity(self.list.len());
        let mut named_everywhere: Option<Set> = None;
        for ((value, rules), held) in self.list.iter().zip(self.rules).zip(self.held) {
            named_everywhere = Some(named_everywhere.map_or_else(|| held.clone(), |all| all.and(&held)));
            let id = *class_ids.entry((held.clone(), rules.clone())).or_insert_with(|| {
                classes.push(Class { held, rules, size: 0 });
                classes.len() - 1
            });
            classes[id].size += 1;
            class_of.insert(*value, id);
        }
        let mut by_rule: Vec<Vec<usize>> = Vec::new();
        for (id, class) in classes.iter().enumerate() {
            for r in class.rules.iter() {
                if by_rule.len() <= r {
                    by_rule.resize_with(r + 1, Vec::new);
                }
                by_rule[r].push(id);
            }
        }
        let mut ordered: Vec<(Value<'a>, usize)> = self.list.iter().map(|v| (*v, class_of[v])).collect();
        ordered.sort_by_cached_key(|(v, _)| print_key(*v));
        let universal = named_everywhere.map_or_else(|| self.everywhere.clone(), |named| named.or(&self.everywhere));
        Dimension { classes, class_of, ordered, by_rule, universal, everywhere: self.everywhere }
    }
}

/// Sorts values as their compact strings sort: Go quotes each, and the
/// closing quote (never inside a quoted value) ends the comparison. For
/// names, a named rule ("ResourceNames:…") sorts before an unnamed one ("Verbs:…").
fn print_key(value: Value<'_>) -> (bool, String) {
    match value {
        Some(v) => (false, go_quote(v).split_off(1)),
        None => (true, String::new()),
    }
}

/// The five dimensions of one check, and which requested rules make atoms.
struct Spaces<'a> {
    verbs: Dimension<'a>,
    groups: Dimension<'a>,
    resources: Dimension<'a>,
    names: Dimension<'a>,
    urls: Dimension<'a>,
    /// Requested rules with verbs, groups and resources.
    resource_rules: Set,
    /// Requested rules with verbs and URLs.
    url_rules: Set,
}

fn strs(list: &[String]) -> Vec<Value<'_>> {
    list.iter().map(|s| Some(s.as_str())).collect()
}

impl<'a> Spaces<'a> {
    /// The dimensions, with each value's covering held rules found from the
    /// held rules' side. Marks that one held entry makes on many values (a
    /// held `*/sub` or URL prefix) are paid for from the budget.
    fn new(held: &[&PolicyRule], requested: &'a [PolicyRule], budget: &Budget) -> Result<Self, NotCovered> {
        let makes = |f: fn(&PolicyRule) -> bool| {
            let mut set = Set::default();
            for (i, _) in requested.iter().enumerate().filter(|(_, r)| f(r)) {
                set.push(i);
            }
            set
        };
        let resource_rules = makes(|r| !r.verbs.is_empty() && !r.api_groups.is_empty() && !r.resources.is_empty());
        let url_rules = makes(|r| !r.verbs.is_empty() && !r.non_resource_urls.is_empty());
        let any_rule = resource_rules.or(&url_rules);

        let mut verbs = Values::collect(requested, &any_rule, |r| strs(&r.verbs));
        let mut groups = Values::collect(requested, &resource_rules, |r| strs(&r.api_groups));
        let mut resources = Values::collect(requested, &resource_rules, |r| strs(&r.resources));
        let mut names = Values::collect(requested, &resource_rules, |r| {
            if r.resource_names.is_empty() { vec![None] } else { strs(&r.resource_names) }
        });
        let mut urls = Values::collect(requested, &url_rules, |r| strs(&r.non_resource_urls));

        // `base/sub` resources by `sub`, for held `*/sub`.
        let mut by_subresource: HashMap<&str, Vec<usize>> = HashMap::new();
        for (at, value) in resources.list.iter().enumerate() {
            if let Some((_, sub)) = value.and_then(|v| v.split_once('/')) {
                by_subresource.entry(sub).or_default().push(at);
            }
        }
        // URLs in byte order, for held prefixes.
        let mut sorted_urls: Vec<(&str, usize)> = urls.list.iter().enumerate().filter_map(|(at, v)| v.map(|v| (v, at))).collect();
        sorted_urls.sort_unstable();

        for (h, rule) in held.iter().enumerate() {
            mark_literal_or_all(&mut verbs, &rule.verbs, h);
            mark_literal_or_all(&mut groups, &rule.api_groups, h);
            mark_literal_or_all(&mut resources, &rule.resources, h);
            for sub in rule.resources.iter().filter_map(|r| r.strip_prefix("*/")) {
                let matching = by_subresource.get(sub).map(Vec::as_slice).unwrap_or_default();
                budget.spend(matching.len())?;
                for &at in matching {
                    resources.held[at].push(h);
                }
            }
            if rule.resource_names.is_empty() {
                names.all_covered(h);
            } else {
                for name in &rule.resource_names {
                    names.covered(Some(name), h);
                }
                // kube's `ruleCovers`: a URL atom has no names, so only a held
                // rule without names covers it.
                continue;
            }
            for pattern in &rule.non_resource_urls {
                if pattern == "*" {
                    urls.all_covered(h);
                    continue;
                }
                urls.covered(Some(pattern), h);
                if let Some(prefix) = pattern.strip_suffix('*').map(|p| p.trim_end_matches('*')) {
                    let start = sorted_urls.partition_point(|(u, _)| *u < prefix);
                    let matching: Vec<usize> = sorted_urls[start..].iter().take_while(|(u, _)| u.starts_with(prefix)).map(|(_, at)| *at).collect();
                    budget.spend(matching.len())?;
                    for at in matching {
                        urls.held[at].push(h);
                    }
                }
            }
        }
        Ok(Self {
            verbs: verbs.classify(),
            groups: groups.classify(),
            resources: resources.classify(),
            names: names.classify(),
            urls: urls.classify(),
            resource_rules,
            url_rules,
        })
    }

    /// `{APIGroups:["g"], Resources:["r"], [ResourceNames:["n"], ]Verbs:[…]}`
    /// for the uncovered key `[g, r, n]`, its verbs merged as kube's
    /// `CompactRules` merges them: in atom order, repeats kept. None if longer
    /// than `max` bytes.
    fn resource_line(&self, requested: &[PolicyRule], key: &[Value<'_>], rules: &Set, held: &Set, max: usize) -> Option<String> {
        let &[Some(group), Some(resource), name] = key else { return None };
        let count = |list: &[String], value: &str| list.iter().filter(|x| x.as_str() == value).count();
        let mut line = format!("{{APIGroups:[{}], Resources:[{}], ", go_quote(group), go_quote(resource));
        if let Some(name) = name {
            line.push_str(&format!("ResourceNames:[{}], ", go_quote(name)));
        }
        line.push_str("Verbs:[");
        let mut first = true;
        for rule in rules.iter().filter_map(|i| requested.get(i)) {
            let uncovered: Vec<String> = rule.verbs.iter().filter(|v| !self.verbs.covers(held, Some(v))).map(|v| go_quote(v)).collect();
            if uncovered.is_empty() {
                continue;
            }
            // Atoms come group by group, resource by resource, verb by verb,
            // name by name: a repeated group or resource repeats the verbs,
            // a repeated name repeats each verb.
            let rounds = count(&rule.api_groups, group) * count(&rule.resources, resource);
            let each = name.map_or(1, |n| count(&rule.resource_names, n));
            for _ in 0..rounds {
                for verb in &uncovered {
                    for _ in 0..each {
                        if !first {
                            line.push(' ');
                        }
                        first = false;
                        line.push_str(verb);
                        if line.len() + 2 > max {
                            return None;
                        }
                    }
                }
            }
        }
        line.push_str("]}");
        Some(line)
    }
}

/// A held list covers its literal values, or all with `*`.
fn mark_literal_or_all(values: &mut Values<'_>, held: &[String], h: usize) {
    if held.iter().any(|v| v == "*") {
        values.all_covered(h);
    } else {
        for v in held {
            values.covered(Some(v), h);
        }
    }
}

/// `{NonResourceURLs:["u"], Verbs:["v"]}` for the uncovered key `[u, v]`.
fn url_line(key: &[Value<'_>], max: usize) -> Option<String> {
    let &[Some(url), Some(verb)] = key else { return None };
    let line = format!("{{NonResourceURLs:[{}], Verbs:[{}]}}", go_quote(url), go_quote(verb));
    (line.len() <= max).then_some(line)
}

// === the search ===

/// Steps left, shared by everything one check does beyond reading its input.
struct Budget(Cell<u64>);

impl Budget {
    fn spend(&self, steps: usize) -> Result<(), NotCovered> {
        let left = self.0.get().checked_sub(steps as u64).ok_or(NotCovered::TooComplex)?;
        self.0.set(left);
        Ok(())
    }
}

/// Counted states: (level, requested rules in play, held rules covering).
type Memo = HashMap<(usize, Set, Set), u64>;

/// A search over one space: its dimensions, of which the first `key_len`
/// make a printed rule (the rest, the verbs, are merged into it).
struct Search<'s, 'a> {
    dims: &'s [&'s Dimension<'a>],
    key_len: usize,
    /// Held rules that cover every value of every dimension from a level on.
    universal_from: Vec<Set>,
    memo: Memo,
    budget: &'s Budget,
}

impl<'s, 'a> Search<'s, 'a> {
    fn new(dims: &'s [&'s Dimension<'a>], key_len: usize, budget: &'s Budget) -> Self {
        let mut universal_from = vec![Set::default(); dims.len()];
        let mut below: Option<Set> = None;
        for (level, dim) in dims.iter().enumerate().rev() {
            let here = below.map_or_else(|| dim.universal.clone(), |below| below.and(&dim.universal));
            universal_from[level] = here.clone();
            below = Some(here);
        }
        Self { dims, key_len, universal_from, memo: Memo::new(), budget }
    }

    /// How many distinct uncovered keys lie below this state (for the verb
    /// level: 1 if any verb is uncovered, else 0).
    fn count(&mut self, level: usize, rules: &Set, held: &Set) -> Result<u64, NotCovered> {
        let Some(&dim) = self.dims.get(level) else {
            return Ok(u64::from(held.is_empty()));
        };
        if self.universal_from.get(level).is_some_and(|u| held.intersects(u)) {
            return Ok(0);
        }
        if level >= self.key_len && held.is_empty() {
            // Every rule in play lists a value in each remaining dimension.
            return Ok(1);
        }
        let state = (level, rules.clone(), held.clone());
        if let Some(&n) = self.memo.get(&state) {
            return Ok(n);
        }
        let mut total = 0u64;
        for c in dim.candidates(rules) {
            self.budget.spend(1)?;
            let Some(class) = dim.classes.get(c) else { continue };
            let rules_below = rules.and(&class.rules);
            if rules_below.is_empty() {
                continue;
            }
            let below = self.count(level + 1, &rules_below, &dim.still_covering(held, class))?;
            if level < self.key_len {
                total = total.saturating_add(class.size.saturating_mul(below));
            } else if below > 0 {
                total = 1;
                break;
            }
        }
        self.memo.insert(state, total);
        Ok(total)
    }

    /// Calls `emit` with each uncovered key, in print order, until it returns false.
    fn walk(
        &mut self,
        level: usize,
        rules: &Set,
        held: &Set,
        key: &mut Vec<Value<'a>>,
        emit: &mut dyn FnMut(&[Value<'a>], &Set, &Set) -> bool,
    ) -> Result<bool, NotCovered> {
        let Some(&dim) = self.dims.get(level) else { return Ok(true) };
        let mut below: HashMap<usize, (Set, Set)> = HashMap::new();
        for c in dim.candidates(rules) {
            let Some(class) = dim.classes.get(c) else { continue };
            let rules_below = rules.and(&class.rules);
            if rules_below.is_empty() {
                continue;
            }
            let held_below = dim.still_covering(held, class);
            if self.count(level + 1, &rules_below, &held_below)? > 0 {
                below.insert(c, (rules_below, held_below));
            }
        }
        for (value, class) in &dim.ordered {
            let Some((rules_below, held_below)) = below.get(class) else { continue };
            key.push(*value);
            let go_on = if level + 1 == self.key_len {
                emit(key, rules_below, held_below)
            } else {
                self.walk(level + 1, rules_below, held_below, key, emit)?
            };
            key.pop();
            if !go_on {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
