//! `meta.k8s.io/v1` Table responses for `kubectl get`.

use serde_json::{Value, json};
use tessera_api::ResourceInfo;
use tessera_api::kinds::{columns, row_cells};

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|t| t.contains("as=Table"))
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_default(),
    })
}

/// A Table of `objects`; `include_object` is the `includeObject` parameter (`None`, `Metadata` (default) or `Object`).
pub fn table(resource: &ResourceInfo, objects: &[Value], list_metadata: Value, include_object: &str) -> Value {
    let now = jiff::Timestamp::now();
    let column_definitions: Vec<Value> = columns(resource)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => partial_metadata(o),
            };
            json!({"cells": row_cells(resource, o, now), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}
