//! The `x-kubernetes-*` extensions kube's OpenAPI documents carry on list and
//! map fields and on atomic structs, taken from the tables the server itself
//! merges by: strategic merge ([`crate::patch::PATCH_STRATEGIES`]) and
//! structured merge ([`crate::apply::schema`]). kubectl's client-side apply
//! reads the patch strategy from these documents; without it every list is
//! replaced whole.

use serde_json::{Map, Value, json};

use crate::apply::schema::{Relation, is_atomic_struct, relation};
use crate::patch::PATCH_STRATEGIES;

/// Adds the extensions to every definition in `definitions` (named as kube
/// names them, e.g. `io.k8s.api.core.v1.PodSpec`), in place.
pub fn annotate(definitions: &mut Map<String, Value>) {
    for (def, schema) in definitions.iter_mut() {
        let Some(schema) = schema.as_object_mut() else { continue };
        if is_atomic_struct(def) {
            schema.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
        let Some(Value::Object(props)) = schema.get_mut("properties") else { continue };
        for (field, prop) in props.iter_mut() {
            let Some(prop) = prop.as_object_mut() else { continue };
            prop.extend(field_extensions(def, field));
        }
    }
}

/// The extensions of field `field` of definition `def`.
fn field_extensions(def: &str, field: &str) -> Map<String, Value> {
    let mut ext = Map::new();
    match relation(def, field) {
        Some(Relation::Map(keys)) => {
            ext.insert("x-kubernetes-list-map-keys".into(), json!(keys));
            ext.insert("x-kubernetes-list-type".into(), json!("map"));
        }
        Some(Relation::Set) => {
            ext.insert("x-kubernetes-list-type".into(), json!("set"));
        }
        Some(Relation::AtomicMap) => {
            ext.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
        None => {}
    }
    if let Some((_, _, key, strategy)) = PATCH_STRATEGIES.iter().find(|(d, f, _, _)| *d == def && *f == field) {
        if let Some(key) = key {
            ext.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
        ext.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
    }
    ext
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_containers_carry_kubes_extensions() {
        let mut defs = Map::new();
        defs.insert(
            "io.k8s.api.core.v1.PodSpec".into(),
            json!({"properties": {"containers": {"type": "array"}, "hostname": {"type": "string"}}}),
        );
        annotate(&mut defs);
        let spec = &defs["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(
            spec["containers"],
            json!({
                "type": "array",
                "x-kubernetes-list-map-keys": ["name"],
                "x-kubernetes-list-type": "map",
                "x-kubernetes-patch-merge-key": "name",
                "x-kubernetes-patch-strategy": "merge",
            })
        );
        assert_eq!(spec["hostname"], json!({"type": "string"}));
    }
}
