//! The status conditions kube's namespace controller keeps on a terminating
//! namespace (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`
//! and the three failure conditions, in kube's order, with its messages).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Condition types, in the order kube's controller writes them, with their
/// "ok" reason and message.
const CONDITIONS: [(&str, &str, &str); 5] = [
    ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered", "All resources successfully discovered"),
    ("NamespaceDeletionGroupVersionParsingFailure", "ParsedGroupVersions", "All legacy kube types successfully parsed"),
    ("NamespaceDeletionContentFailure", "ContentDeleted", "All content successfully deleted, may be waiting on finalization"),
    ("NamespaceContentRemaining", "ContentRemoved", "All content successfully removed"),
    ("NamespaceFinalizersRemaining", "ContentHasNoFinalizers", "All content-preserving finalizers finished"),
];

/// What is left in a terminating namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Remaining {
    /// `resource.group` (`configmaps.` for core) → objects left.
    pub(crate) resources: BTreeMap<String, usize>,
    /// Finalizer → objects it holds.
    pub(crate) finalizers: BTreeMap<String, usize>,
}

impl Remaining {
    pub(crate) fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// The failing conditions for `remaining`: (type, reason, message).
fn failing(remaining: &Remaining) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    if !remaining.resources.is_empty() {
        let mut items: Vec<String> = remaining.resources.iter().map(|(r, n)| format!("{r} has {n} resource instances")).collect();
        items.sort();
        out.push(("NamespaceContentRemaining", "SomeResourcesRemain", format!("Some resources are remaining: {}", items.join(", "))));
    }
    if !remaining.finalizers.is_empty() {
        let mut items: Vec<String> = remaining.finalizers.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect();
        items.sort();
        out.push((
            "NamespaceFinalizersRemaining",
            "SomeFinalizersRemain",
            format!("Some content in the namespace has finalizers remaining: {}", items.join(", ")),
        ));
    }
    out
}

/// kube's `updateConditions`: sets every condition type on `namespace`'s
/// status (failing or ok), keeping `lastTransitionTime` unless the status
/// flips. Returns whether anything changed.
pub(crate) fn update(namespace: &mut Value, remaining: &Remaining, now: &str) -> bool {
    let failing = failing(remaining);
    let Some(map) = namespace.as_object_mut() else { return false };
    let status = map.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else { return false };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else { return false };
    let mut changed = false;
    for (ty, ok_reason, ok_message) in CONDITIONS {
        let (want_status, reason, message) = match failing.iter().find(|(t, ..)| *t == ty) {
            Some((_, reason, message)) => ("True", *reason, message.clone()),
            None => ("False", ok_reason, ok_message.to_owned()),
        };
        match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(ty)) {
            None => {
                list.push(json!({"type": ty, "status": want_status, "lastTransitionTime": now, "reason": reason, "message": message}));
                changed = true;
            }
            Some(c) => {
                let same = c.get("status").and_then(Value::as_str) == Some(want_status)
                    && c.get("reason").and_then(Value::as_str) == Some(reason)
                    && c.get("message").and_then(Value::as_str) == Some(message.as_str());
                if !same {
                    if c.get("status").and_then(Value::as_str) != Some(want_status) {
                        c["lastTransitionTime"] = json!(now);
                    }
                    c["status"] = json!(want_status);
                    c["reason"] = json!(reason);
                    c["message"] = json!(message);
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_transitions_follow_kube() {
        let mut ns = json!({"metadata": {"name": "t"}, "status": {"phase": "Terminating"}});
        let remaining = Remaining {
            resources: BTreeMap::from([("configmaps.".to_owned(), 1), ("roles.rbac.authorization.k8s.io".to_owned(), 2)]),
            finalizers: BTreeMap::from([("example.com/hold".to_owned(), 1)]),
        };
        assert!(update(&mut ns, &remaining, "T1"));
        let conditions = ns["status"]["conditions"].as_array().unwrap().clone();
        assert_eq!(conditions.len(), 5);
        assert_eq!(conditions[0], json!({"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "lastTransitionTime": "T1", "reason": "ResourcesDiscovered", "message": "All resources successfully discovered"}));
        assert_eq!(conditions[3]["message"], "Some resources are remaining: configmaps. has 1 resource instances, roles.rbac.authorization.k8s.io has 2 resource instances");
        assert_eq!(conditions[4]["message"], "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances");
        assert_eq!(conditions[4]["status"], "True");
        assert!(!update(&mut ns, &remaining, "T2"), "nothing changed");
        assert!(update(&mut ns, &Remaining::default(), "T3"));
        assert_eq!(ns["status"]["conditions"][4], json!({"type": "NamespaceFinalizersRemaining", "status": "False", "lastTransitionTime": "T3", "reason": "ContentHasNoFinalizers", "message": "All content-preserving finalizers finished"}));
        assert_eq!(ns["status"]["conditions"][0]["lastTransitionTime"], "T1");
    }
}
