//! The resource table: every kind tessera serves, with what discovery says about it.

use serde_json::Value;

use crate::decode::{self, DecodeFn};

/// A subresource shown in discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// e.g. `token`, `status`.
    pub name: &'static str,
    /// Group of the kind the subresource takes and returns.
    pub group: &'static str,
    /// Version of that kind.
    pub version: &'static str,
    /// That kind.
    pub kind: &'static str,
    /// Verbs it supports.
    pub verbs: &'static [&'static str],
}

/// How a resource is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Objects live in the store under `/registry/{plural}/…`.
    Stored,
    /// Create-only reviews (TokenReview, SubjectAccessReview…): answered, never stored.
    Virtual,
}

/// One resource of one group/version.
#[derive(Debug, Clone, Copy)]
pub struct ResourceInfo {
    /// API group (`""` for core).
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// Kind, e.g. `ServiceAccount`.
    pub kind: &'static str,
    /// Lower-case plural used in URLs, e.g. `serviceaccounts`.
    pub plural: &'static str,
    /// Lower-case singular.
    pub singular: &'static str,
    /// Namespace-scoped or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Supported verbs, sorted as kube-apiserver lists them.
    pub verbs: &'static [&'static str],
    /// Subresources shown in discovery.
    pub subresources: &'static [Subresource],
    /// Stored or virtual.
    pub storage: Storage,
    /// Normalises a decoded body through the typed k8s-openapi struct.
    pub decode: DecodeFn,
    /// storageVersionHash shown in classic discovery (stored kinds only).
    pub storage_version_hash: &'static str,
    /// Registers the kind's JSON schema (for OpenAPI) and returns a reference to it.
    pub schema: SchemaFn,
}

/// Produces a kind's schema reference from the typed k8s-openapi struct.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// The [`SchemaFn`] of a typed struct.
pub fn schema_of<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

const CRUD_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// `v1` namespaces.
pub static CORE_NAMESPACES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    verbs: &["create", "delete", "get", "list", "patch", "update", "watch"],
    subresources: &[
        Subresource { name: "finalize", group: "", version: "", kind: "Namespace", verbs: &["update"] },
        Subresource { name: "status", group: "", version: "", kind: "Namespace", verbs: &["get", "patch", "update"] },
    ],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::Namespace>,
    schema: schema_of::<k8s_openapi::api::core::v1::Namespace>,
    storage_version_hash: "Q3oi5N2YM8M=",
};

/// `v1` serviceaccounts.
pub static CORE_SERVICEACCOUNTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[Subresource {
        name: "token",
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenRequest",
        verbs: &["create"],
    }],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::ServiceAccount>,
    schema: schema_of::<k8s_openapi::api::core::v1::ServiceAccount>,
    storage_version_hash: "pbx9ZvyFpBE=",
};

/// `v1` secrets.
pub static CORE_SECRETS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::Secret>,
    schema: schema_of::<k8s_openapi::api::core::v1::Secret>,
    storage_version_hash: "S6u1pOWzb84=",
};

/// `v1` configmaps.
pub static CORE_CONFIGMAPS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::ConfigMap>,
    schema: schema_of::<k8s_openapi::api::core::v1::ConfigMap>,
    storage_version_hash: "qFsyl6wFWjQ=",
};

/// `v1` pods.
pub static CORE_PODS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    verbs: CRUD_VERBS,
    subresources: &[
        // Served for GET of a meshed pod's proxy admin /metrics and /trust only (apiserver `pod_proxy`).
        Subresource { name: "proxy", group: "", version: "", kind: "PodProxyOptions", verbs: &["create", "delete", "get", "patch", "update"] },
        Subresource { name: "status", group: "", version: "", kind: "Pod", verbs: &["get", "patch", "update"] },
    ],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::Pod>,
    schema: schema_of::<k8s_openapi::api::core::v1::Pod>,
    storage_version_hash: "xPOwRZ+Yhw8=",
};

/// `v1` nodes (cluster-scoped; a node agent registers its own).
pub static CORE_NODES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[Subresource { name: "status", group: "", version: "", kind: "Node", verbs: &["get", "patch", "update"] }],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::Node>,
    schema: schema_of::<k8s_openapi::api::core::v1::Node>,
    storage_version_hash: "XwShjMxG9Fs=",
};

/// `v1` events.
pub static CORE_EVENTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[],
    storage: Storage::Stored,
    decode: decode::event,
    schema: schema_of::<k8s_openapi::api::core::v1::Event>,
    storage_version_hash: "r2yiGXH7wu8=",
};

/// `v1` services: stored, with cluster IPs allocated from the server's
/// service range (see [`crate::service`] and [`crate::service_ips`]).
pub static CORE_SERVICES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    verbs: CRUD_VERBS,
    subresources: &[Subresource { name: "status", group: "", version: "", kind: "Service", verbs: &["get", "patch", "update"] }],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::core::v1::Service>,
    schema: schema_of::<k8s_openapi::api::core::v1::Service>,
    storage_version_hash: "0/CO1lhkEBI=",
};

/// `discovery.k8s.io/v1` endpointslices (filled by the endpointslice controller).
pub static DISCOVERY_ENDPOINTSLICES: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[],
    storage: Storage::Stored,
    decode: decode::typed::<k8s_openapi::api::discovery::v1::EndpointSlice>,
    schema: schema_of::<k8s_openapi::api::discovery::v1::EndpointSlice>,
    storage_version_hash: "Nx3SIv6I0mE=",
};

/// `coordination.k8s.io/v1` leases (node heartbeats live in `kube-node-lease`).
pub static COORDINATION_LEASES: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    verbs: CRUD_VERBS,
    subresources: &[],
    storage: Storage::Stored,
    decode: decode::lease,
    schema: schema_of::<k8s_openapi::api::coordination::v1::Lease>,
    storage_version_hash: "/sY7hl8ol1U=",
};

/// A create-only review kind in `group/v1`.
macro_rules! review {
    ($name:ident, $group:literal, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal, $ty:ty) => {
        #[doc = concat!("`", $group, "/v1` ", $plural, " (create-only, never stored).")]
        pub static $name: ResourceInfo = ResourceInfo {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[],
            categories: &[],
            verbs: &["create"],
            subresources: &[],
            storage: Storage::Virtual,
            decode: decode::typed::<$ty>,
            schema: schema_of::<$ty>,
            storage_version_hash: "",
        };
    };
}

review!(AUTHN_TOKENREVIEWS, "authentication.k8s.io", "TokenReview", "tokenreviews", "tokenreview", false, k8s_openapi::api::authentication::v1::TokenReview);
review!(AUTHN_SELFSUBJECTREVIEWS, "authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", false, k8s_openapi::api::authentication::v1::SelfSubjectReview);

review!(AUTHZ_SUBJECTACCESSREVIEWS, "authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", false, k8s_openapi::api::authorization::v1::SubjectAccessReview);
review!(AUTHZ_LOCALSUBJECTACCESSREVIEWS, "authorization.k8s.io", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", true, k8s_openapi::api::authorization::v1::LocalSubjectAccessReview);
review!(AUTHZ_SELFSUBJECTACCESSREVIEWS, "authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", false, k8s_openapi::api::authorization::v1::SelfSubjectAccessReview);
review!(AUTHZ_SELFSUBJECTRULESREVIEWS, "authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", false, k8s_openapi::api::authorization::v1::SelfSubjectRulesReview);

/// An RBAC kind in `rbac.authorization.k8s.io/v1`.
macro_rules! rbac {
    ($name:ident, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal, $hash:literal, $ty:ty) => {
        #[doc = concat!("`rbac.authorization.k8s.io/v1` ", $plural, ".")]
        pub static $name: ResourceInfo = ResourceInfo {
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[],
            categories: &[],
            verbs: CRUD_VERBS,
            subresources: &[],
            storage: Storage::Stored,
            decode: decode::typed::<$ty>,
            schema: schema_of::<$ty>,
            storage_version_hash: $hash,
        };
    };
}

rbac!(RBAC_CLUSTERROLEBINDINGS, "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, "48tpQ8gZHFc=", k8s_openapi::api::rbac::v1::ClusterRoleBinding);
rbac!(RBAC_CLUSTERROLES, "ClusterRole", "clusterroles", "clusterrole", false, "bYE5ZWDrJ44=", k8s_openapi::api::rbac::v1::ClusterRole);
rbac!(RBAC_ROLEBINDINGS, "RoleBinding", "rolebindings", "rolebinding", true, "eGsCzGH6b1g=", k8s_openapi::api::rbac::v1::RoleBinding);
rbac!(RBAC_ROLES, "Role", "roles", "role", true, "7FuwZcIIItM=", k8s_openapi::api::rbac::v1::Role);

/// Every resource tessera serves, in discovery order: groups in kube-apiserver's
/// order, sorted by plural within a group version.
pub static RESOURCES: &[&ResourceInfo] = &[
    &CORE_CONFIGMAPS,
    &CORE_EVENTS,
    &CORE_NAMESPACES,
    &CORE_NODES,
    &CORE_PODS,
    &CORE_SECRETS,
    &CORE_SERVICEACCOUNTS,
    &CORE_SERVICES,
    &AUTHN_SELFSUBJECTREVIEWS,
    &AUTHN_TOKENREVIEWS,
    &AUTHZ_LOCALSUBJECTACCESSREVIEWS,
    &AUTHZ_SELFSUBJECTACCESSREVIEWS,
    &AUTHZ_SELFSUBJECTRULESREVIEWS,
    &AUTHZ_SUBJECTACCESSREVIEWS,
    &RBAC_CLUSTERROLEBINDINGS,
    &RBAC_CLUSTERROLES,
    &RBAC_ROLEBINDINGS,
    &RBAC_ROLES,
    &COORDINATION_LEASES,
    &DISCOVERY_ENDPOINTSLICES,
    // policy.linkerd.io: versions by kube's version priority, then plural.
    &crate::policy::HTTPROUTES_V1BETA3,
    &crate::policy::SERVERS_V1BETA3,
    &crate::policy::HTTPROUTES_V1BETA2,
    &crate::policy::SERVERS_V1BETA2,
    &crate::policy::HTTPROUTES_V1BETA1,
    &crate::policy::SERVERAUTHORIZATIONS_V1BETA1,
    &crate::policy::SERVERS_V1BETA1,
    &crate::policy::AUTHORIZATIONPOLICIES_V1ALPHA1,
    &crate::policy::HTTPROUTES_V1ALPHA1,
    &crate::policy::MESHTLSAUTHENTICATIONS_V1ALPHA1,
    &crate::policy::NETWORKAUTHENTICATIONS_V1ALPHA1,
    &crate::policy::SERVERAUTHORIZATIONS_V1ALPHA1,
    &crate::policy::SERVERS_V1ALPHA1,
];

// === impl ResourceInfo ===

impl ResourceInfo {
    /// `serviceaccounts` for core, `roles.rbac.authorization.k8s.io` otherwise
    /// (the form kube-apiserver uses in messages).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether another version of this kind is served (over the same storage).
    pub fn has_other_versions(&self) -> bool {
        // Asked on every read and write: the few kinds served in several
        // versions are found once, instead of comparing the names of every
        // resource each time.
        static SEVERAL_VERSIONS: std::sync::OnceLock<Vec<&'static ResourceInfo>> = std::sync::OnceLock::new();
        let several = SEVERAL_VERSIONS.get_or_init(|| {
            RESOURCES.iter().copied().filter(|r| RESOURCES.iter().any(|o| o.group == r.group && o.plural == r.plural && o.version != r.version)).collect()
        });
        // A kind served in one version has no other: it is not in the list.
        several.iter().any(|r| r.group == self.group && r.plural == self.plural && r.version != self.version)
    }

    /// Whether the verb is listed.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The store key prefix for a list in `namespace` (or cluster-wide).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.storage_prefix(), ns),
            _ => format!("/registry/{}/", self.storage_prefix()),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.key_prefix(namespace), name)
    }

    fn storage_prefix(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}/{}", self.group, self.plural) }
    }

    /// Typed normalisation of a decoded body, for stored kinds.
    pub fn decode(&self, body: Value, strict: bool) -> Result<Value, decode::DecodeError> {
        (self.decode)(body, strict)
    }
}

/// Finds a resource by group, version and plural.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The versions of `group` served, preferred first.
pub fn versions_of(group: &str) -> Vec<&'static str> {
    group_versions().into_iter().filter(|(g, _)| *g == group).map(|(_, v)| v).collect()
}

/// The distinct `(group, version)` pairs served, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_has_other_versions_exactly_when_another_is_served() {
        let mut several = 0;
        for resource in RESOURCES {
            let others = RESOURCES.iter().filter(|r| r.group == resource.group && r.plural == resource.plural && r.version != resource.version).count();
            assert_eq!(resource.has_other_versions(), others > 0, "{}/{} {}", resource.group, resource.version, resource.plural);
            several += usize::from(others > 0);
        }
        assert!(several >= 2, "the policy.linkerd.io kinds are served in several versions");
        assert!(!CORE_SERVICEACCOUNTS.has_other_versions());
    }
}
