//! The structured-merge schema of a kind: its shape from the k8s-openapi
//! JSON schema (structs, maps, lists, scalars), with list and map types from
//! [`super::relations`] and atomic structs from [`ATOMIC_STRUCTS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

use crate::resource::ResourceInfo;

/// How a list or map merges, where it is not an atomic list or a granular map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `x-kubernetes-list-type: map`: items keyed by these fields.
    Map(&'static [&'static str]),
    /// `x-kubernetes-list-type: set`: scalar items, each owned on its own.
    Set,
    /// `x-kubernetes-map-type: atomic` on a map.
    AtomicMap,
}

/// The list or map type kube gives field `field` of definition `def`, if it is
/// not an atomic list or a granular map.
pub fn relation(def: &str, field: &str) -> Option<Relation> {
    super::relations::RELATIONS.iter().find(|(t, f, _)| *t == def && *f == field).map(|(_, _, r)| *r)
}

/// Whether kube marks definition `def` `x-kubernetes-map-type: atomic`.
pub fn is_atomic_struct(def: &str) -> bool {
    ATOMIC_STRUCTS.contains(&def)
}

/// Structs kube marks `x-kubernetes-map-type: atomic` (`+structType=atomic`)
/// that the served kinds reach: references and selectors, replaced whole.
/// Hand-kept from kube's OpenAPI (k8s-openapi does not carry this marker).
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
];

/// Defaults of list map keys that items may omit (kube's schema `default:`).
const KEY_DEFAULTS: &[(&str, &str)] = &[("protocol", "TCP")];

/// The default of a map key field an item omits, if it has one.
pub fn key_default(field: &str) -> Option<Value> {
    KEY_DEFAULTS.iter().find(|(k, _)| *k == field).map(|(_, v)| Value::String((*v).to_owned()))
}

/// One kind's schema.
#[derive(Debug)]
pub struct Schema {
    root: Value,
    defs: Map<String, Value>,
}

/// A schema node, classified.
#[derive(Debug, Clone, Copy)]
pub enum Ty<'s> {
    /// A leaf value.
    Scalar,
    /// A struct: named fields.
    Struct {
        /// Its definition name, for the relations table.
        def: Option<&'s str>,
        /// Its fields' schemas.
        props: &'s Map<String, Value>,
        /// Replaced whole (`x-kubernetes-map-type: atomic`).
        atomic: bool,
    },
    /// A map of string keys to `elem`.
    Map {
        /// The values' schema.
        elem: &'s Value,
        /// Replaced whole.
        atomic: bool,
    },
    /// A list of `elem`.
    List {
        /// The items' schema.
        elem: &'s Value,
        /// Its list type; `None` is atomic.
        relation: Option<Relation>,
    },
    /// No schema (`RawExtension`, unknown fields): maps are granular, lists atomic.
    Untyped,
}

static CACHE: OnceLock<Mutex<HashMap<String, Arc<Schema>>>> = OnceLock::new();

impl Schema {
    /// The schema of `resource`, built once per kind.
    pub fn of(resource: &ResourceInfo) -> Arc<Schema> {
        let key = format!("{}/{}", resource.api_version(), resource.kind);
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(key)
            .or_insert_with(|| {
                let mut generator = schemars::SchemaGenerator::default();
                let root = (resource.schema)(&mut generator).to_value();
                let defs = generator.definitions().clone();
                Arc::new(Schema { root, defs })
            })
            .clone()
    }

    /// The root node.
    pub fn root(&self) -> Ty<'_> {
        self.classify(&self.root, None)
    }

    fn resolve<'s>(&'s self, node: &'s Value) -> (Option<&'s str>, &'s Value) {
        let mut node = node;
        let mut def = None;
        for _ in 0..8 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else { break };
            let name = reference.rsplit('/').next().unwrap_or_default();
            match self.defs.get(name) {
                Some(target) => {
                    def = Some(name);
                    node = target;
                }
                None => break,
            }
        }
        (def, node)
    }

    /// Classifies a node; `relation` is the table's entry for the field holding it.
    pub fn classify<'s>(&'s self, node: &'s Value, relation: Option<Relation>) -> Ty<'s> {
        let (def, node) = self.resolve(node);
        match node.get("type").and_then(Value::as_str) {
            Some("object") => {
                if let Some(props) = node.get("properties").and_then(Value::as_object) {
                    Ty::Struct { def, props, atomic: def.is_some_and(|d| ATOMIC_STRUCTS.contains(&d)) }
                } else if let Some(elem) = node.get("additionalProperties").filter(|v| v.is_object()) {
                    Ty::Map { elem, atomic: relation == Some(Relation::AtomicMap) }
                } else {
                    Ty::Untyped
                }
            }
            Some("array") => match node.get("items") {
                Some(elem) => Ty::List { elem, relation },
                None => Ty::Untyped,
            },
            Some(_) => Ty::Scalar,
            None if node.get("x-kubernetes-int-or-string").is_some() => Ty::Scalar,
            None => Ty::Untyped,
        }
    }

    /// The type of field `name` of a struct.
    pub fn field<'s>(&'s self, def: Option<&str>, props: &'s Map<String, Value>, name: &str) -> Ty<'s> {
        let Some(node) = props.get(name) else { return Ty::Untyped };
        let relation = def.and_then(|d| relation(d, name));
        self.classify(node, relation)
    }

    /// The required fields of definition `def`.
    pub fn required(&self, def: &str) -> Vec<&str> {
        self.defs
            .get(def)
            .and_then(|d| d.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The type of the elements of a map or list.
    pub fn elem<'s>(&'s self, elem: &'s Value) -> Ty<'s> {
        self.classify(elem, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CORE_PODS, RBAC_ROLES};

    #[test]
    fn pod_containers_are_keyed_by_name_and_rules_atomic() {
        let schema = Schema::of(&CORE_PODS);
        let Ty::Struct { def, props, .. } = schema.root() else { panic!("pod is a struct") };
        let Ty::Struct { def: sdef, props: sprops, .. } = schema.field(def, props, "spec") else { panic!("spec") };
        let Ty::List { relation, elem } = schema.field(sdef, sprops, "containers") else { panic!("containers") };
        assert_eq!(relation, Some(Relation::Map(&["name"])));
        let Ty::Struct { def: cdef, props: cprops, .. } = schema.elem(elem) else { panic!("container") };
        assert!(matches!(schema.field(cdef, cprops, "ports"), Ty::List { relation: Some(Relation::Map(&["containerPort", "protocol"])), .. }));
        assert!(matches!(schema.field(cdef, cprops, "args"), Ty::List { relation: None, .. }));
        assert!(matches!(schema.field(sdef, sprops, "nodeSelector"), Ty::Map { atomic: true, .. }));
        let schema = Schema::of(&RBAC_ROLES);
        let Ty::Struct { def, props, .. } = schema.root() else { panic!("role is a struct") };
        assert!(matches!(schema.field(def, props, "rules"), Ty::List { relation: None, .. }));
    }
}
