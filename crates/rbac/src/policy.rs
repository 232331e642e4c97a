//! The policy: Roles, ClusterRoles and their bindings, indexed by subject so
//! that a decision looks only at the bindings that name the user, their groups
//! or their ServiceAccount. Updated one object at a time from watch events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tessera_authn::UserInfo;

use crate::rule::PolicyRule;

/// `roleRef` of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoleRef {
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// Role name.
    pub name: String,
}

/// One subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (ServiceAccounts).
    #[serde(default)]
    pub namespace: String,
}

/// A RoleBinding (namespace set) or ClusterRoleBinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Binding name.
    pub name: String,
    /// Namespace for RoleBindings; None for ClusterRoleBindings.
    pub namespace: Option<String>,
    /// The role it grants.
    pub role_ref: RoleRef,
    /// Who it grants it to.
    pub subjects: Vec<Subject>,
}

/// A Role (namespace set) or ClusterRole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Name.
    pub name: String,
    /// Namespace for Roles.
    pub namespace: Option<String>,
    /// Rules.
    pub rules: Vec<PolicyRule>,
    /// Labels (aggregation selects on them).
    pub labels: BTreeMap<String, String>,
    /// `aggregationRule.clusterRoleSelectors[].matchLabels` (ClusterRoles only).
    pub aggregation: Option<Vec<BTreeMap<String, String>>>,
}

/// Who a binding subject stands for, as an index key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKey {
    /// A user name.
    User(String),
    /// A group name.
    Group(String),
    /// A ServiceAccount (namespace, name).
    ServiceAccount(String, String),
}

/// Identifies a binding: (namespace or "" for cluster, name).
pub type BindingId = (String, String);

/// The index. Cheap to read; writers replace single objects.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    cluster_roles: HashMap<String, Arc<Role>>,
    roles: HashMap<(String, String), Arc<Role>>,
    bindings: HashMap<BindingId, Arc<Binding>>,
    by_subject: HashMap<SubjectKey, BTreeMap<BindingId, Arc<Binding>>>,
}

/// Why an object could not be read into the policy.
#[derive(Debug, thiserror::Error)]
#[error("malformed RBAC object: {0}")]
pub struct MalformedObject(String);

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
        .unwrap_or_default()
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

// === impl Role / Binding ===

impl Role {
    /// Reads a Role or ClusterRole object.
    pub fn from_object(obj: &Value) -> Result<Self, MalformedObject> {
        let name = meta(obj, "name").ok_or_else(|| MalformedObject("no name".into()))?;
        let rules: Vec<PolicyRule> = serde_json::from_value(obj.get("rules").cloned().unwrap_or(Value::Array(vec![])))
            .map_err(|e| MalformedObject(e.to_string()))?;
        // Any aggregationRule makes the role aggregating, even with no selectors
        // (then it aggregates nothing and its rules are emptied).
        let aggregation = obj.get("aggregationRule").filter(|a| !a.is_null()).map(|rule| {
            rule.get("clusterRoleSelectors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|s| {
                    s.get("matchLabels")
                        .and_then(Value::as_object)
                        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
                        .unwrap_or_default()
                })
                .collect()
        });
        Ok(Self { name, namespace: meta(obj, "namespace"), rules, labels: labels(obj), aggregation })
    }
}

impl Binding {
    /// Reads a RoleBinding or ClusterRoleBinding object.
    pub fn from_object(obj: &Value) -> Result<Self, MalformedObject> {
        let name = meta(obj, "name").ok_or_else(|| MalformedObject("no name".into()))?;
        let role_ref: RoleRef =
            serde_json::from_value(obj.get("roleRef").cloned().unwrap_or_default()).map_err(|e| MalformedObject(e.to_string()))?;
        let subjects: Vec<Subject> = serde_json::from_value(obj.get("subjects").cloned().unwrap_or(Value::Array(vec![])))
            .map_err(|e| MalformedObject(e.to_string()))?;
        Ok(Self { name, namespace: meta(obj, "namespace"), role_ref, subjects })
    }

    fn id(&self) -> BindingId {
        (self.namespace.clone().unwrap_or_default(), self.name.clone())
    }

    fn keys(&self) -> Vec<SubjectKey> {
        self.subjects
            .iter()
            .filter_map(|s| match s.kind.as_str() {
                "User" => Some(SubjectKey::User(s.name.clone())),
                "Group" => Some(SubjectKey::Group(s.name.clone())),
                "ServiceAccount" => {
                    // A RoleBinding's ServiceAccount subject without a namespace means the binding's.
                    let ns = if s.namespace.is_empty() { self.namespace.clone().unwrap_or_default() } else { s.namespace.clone() };
                    Some(SubjectKey::ServiceAccount(ns, s.name.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The `to ServiceAccount "name/ns"` part of a reason, for the subject that matched `user`.
    pub fn matched_subject(&self, user: &UserInfo) -> Option<String> {
        let keys = user_keys(user);
        self.subjects.iter().zip(self.keys()).find(|(_, k)| keys.contains(k)).map(|(s, k)| match k {
            // kube's describeSubject: NAME/NAMESPACE.
            SubjectKey::ServiceAccount(ns, name) => format!("ServiceAccount \"{name}/{ns}\""),
            _ => format!("{} \"{}\"", s.kind, s.name),
        })
    }

    /// `ClusterRoleBinding "x"` or `RoleBinding "x/ns"`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("RoleBinding \"{}/{ns}\"", self.name),
            None => format!("ClusterRoleBinding \"{}\"", self.name),
        }
    }
}

/// The index keys a user matches.
pub fn user_keys(user: &UserInfo) -> Vec<SubjectKey> {
    let mut keys = vec![SubjectKey::User(user.username.clone())];
    keys.extend(user.groups.iter().map(|g| SubjectKey::Group(g.clone())));
    if let Some(rest) = user.username.strip_prefix("system:serviceaccount:")
        && let Some((ns, name)) = rest.split_once(':')
    {
        keys.push(SubjectKey::ServiceAccount(ns.to_owned(), name.to_owned()));
    }
    keys
}

// === impl Policy ===

impl Policy {
    /// Adds or replaces a ClusterRole.
    pub fn put_cluster_role(&mut self, role: Role) {
        self.cluster_roles.insert(role.name.clone(), Arc::new(role));
    }

    /// Removes a ClusterRole.
    pub fn remove_cluster_role(&mut self, name: &str) {
        self.cluster_roles.remove(name);
    }

    /// Adds or replaces a Role.
    pub fn put_role(&mut self, role: Role) {
        let key = (role.namespace.clone().unwrap_or_default(), role.name.clone());
        self.roles.insert(key, Arc::new(role));
    }

    /// Removes a Role.
    pub fn remove_role(&mut self, namespace: &str, name: &str) {
        self.roles.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Adds or replaces a binding.
    pub fn put_binding(&mut self, binding: Binding) {
        let id = binding.id();
        self.remove_binding(&id.0, &id.1);
        let binding = Arc::new(binding);
        for key in binding.keys() {
            self.by_subject.entry(key).or_default().insert(id.clone(), binding.clone());
        }
        self.bindings.insert(id, binding);
    }

    /// Removes a binding (`namespace` "" for ClusterRoleBindings).
    pub fn remove_binding(&mut self, namespace: &str, name: &str) {
        let id = (namespace.to_owned(), name.to_owned());
        if let Some(old) = self.bindings.remove(&id) {
            for key in old.keys() {
                if let Some(set) = self.by_subject.get_mut(&key) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_subject.remove(&key);
                    }
                }
            }
        }
    }

    /// The rules a binding grants (its role's; empty if the role does not exist).
    pub fn rules_of(&self, binding: &Binding) -> &[PolicyRule] {
        let role = match binding.role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&binding.role_ref.name),
            "Role" => binding.namespace.as_ref().and_then(|ns| self.roles.get(&(ns.clone(), binding.role_ref.name.clone()))),
            _ => None,
        };
        role.map(|r| r.rules.as_slice()).unwrap_or_default()
    }

    /// The role a binding refers to.
    pub fn role_of(&self, binding: &Binding) -> Option<&Arc<Role>> {
        match binding.role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&binding.role_ref.name),
            "Role" => binding.namespace.as_ref().and_then(|ns| self.roles.get(&(ns.clone(), binding.role_ref.name.clone()))),
            _ => None,
        }
    }

    /// Bindings that apply to `user` for a request in `namespace` (`""` = cluster
    /// scope): ClusterRoleBindings first, then RoleBindings of that namespace,
    /// each group sorted by name.
    pub fn bindings_for(&self, user: &UserInfo, namespace: &str) -> Vec<Arc<Binding>> {
        // A handful of bindings per request: sorted vectors, not ordered maps
        // (every authorization runs this).
        let mut cluster: Vec<(&BindingId, &Arc<Binding>)> = Vec::new();
        let mut local: Vec<(&BindingId, &Arc<Binding>)> = Vec::new();
        for key in user_keys(user) {
            for (id, binding) in self.by_subject.get(&key).into_iter().flatten() {
                match &binding.namespace {
                    None => cluster.push((id, binding)),
                    Some(ns) if !namespace.is_empty() && ns == namespace => local.push((id, binding)),
                    Some(_) => {}
                }
            }
        }
        for group in [&mut cluster, &mut local] {
            group.sort_unstable_by(|a, b| a.0.cmp(b.0));
            // A binding naming the user and one of its groups is listed once.
            group.dedup_by(|a, b| a.0 == b.0);
        }
        cluster.into_iter().chain(local).map(|(_, binding)| Arc::clone(binding)).collect()
    }

    /// Every binding (for who-can).
    pub fn all_bindings(&self) -> impl Iterator<Item = &Arc<Binding>> {
        self.bindings.values()
    }

    /// Every ClusterRole (for aggregation).
    pub fn cluster_roles(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.cluster_roles.values()
    }

    /// A ClusterRole by name.
    pub fn cluster_role(&self, name: &str) -> Option<&Arc<Role>> {
        self.cluster_roles.get(name)
    }

    /// A Role by namespace and name.
    pub fn role(&self, namespace: &str, name: &str) -> Option<&Arc<Role>> {
        self.roles.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Number of bindings.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }
}
