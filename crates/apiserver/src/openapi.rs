//! OpenAPI v3 documents (`/openapi/v3` and `/openapi/v3/{api/v1|apis/G/V}`).
//!
//! kubectl reads them for `kubectl explain`, and `kubectl apply`/`create`
//! look for the `fieldValidation` parameter on each kind's PATCH operation to
//! decide on server-side field validation. Schemas come from k8s-openapi's
//! generated JSON schemas, so field descriptions match Kubernetes.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use tessera_api::resource::{RESOURCES, ResourceInfo, Storage, group_versions};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(resource: &ResourceInfo, action: &str, schema_ref: &str, params: Vec<Value>) -> Value {
    let verb = match action {
        "get" => "read",
        "list" => "list",
        "post" => "create",
        "put" => "replace",
        "patch" => "patch",
        "delete" => "delete",
        "deletecollection" => "deletecollection",
        other => other,
    };
    let mut op = json!({
        "description": format!("{verb} {}", resource.kind),
        "operationId": format!("{verb}{}", resource.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": resource.group, "version": resource.version, "kind": resource.kind},
    });
    if matches!(action, "post" | "put" | "patch") {
        let content_types: &[&str] = if action == "patch" {
            &["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"]
        } else {
            &["application/json"]
        };
        let content: Map<String, Value> =
            content_types.iter().map(|c| ((*c).to_owned(), json!({"schema": {"$ref": schema_ref}}))).collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        query_param("dryRun", "When present, indicates that modifications should not be persisted. Valid values: All"),
        query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values: Ignore, Warn, Strict"),
    ]
}

pub(crate) fn paths_for(resource: &ResourceInfo, schema_ref: &str, paths: &mut Map<String, Value>) {
    let base = format!("/{}", gv_path(resource.group, resource.version));
    let collection = if resource.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", resource.plural)
    } else {
        format!("{base}/{}", resource.plural)
    };
    let item = format!("{collection}/{{name}}");
    let mut coll = Map::new();
    let mut one = Map::new();
    if resource.supports("list") {
        coll.insert("get".into(), operation(resource, "list", schema_ref, vec![query_param("labelSelector", "A selector to restrict the list of returned objects by their labels.")]));
    }
    if resource.supports("create") {
        coll.insert("post".into(), operation(resource, "post", schema_ref, write_params()));
    }
    if resource.storage == Storage::Virtual {
        // kubectl decides between server-side field validation and its own
        // (against the OpenAPI v2 document, `crate::openapi_v2`) by looking
        // for `fieldValidation` on a PATCH operation of the kind.
        // Reviews are create-only: this operation documents that POST honours
        // `fieldValidation`; PATCH itself answers 405.
        let mut op = operation(resource, "patch", schema_ref, write_params());
        op["description"] = json!(format!("{} is create-only; PATCH answers 405 Method Not Allowed. Listed so clients see that fieldValidation is supported.", resource.kind));
        coll.insert("patch".into(), op);
    }
    if resource.supports("deletecollection") {
        coll.insert("delete".into(), operation(resource, "deletecollection", schema_ref, vec![]));
    }
    if resource.supports("get") {
        one.insert("get".into(), operation(resource, "get", schema_ref, vec![]));
    }
    if resource.supports("update") {
        one.insert("put".into(), operation(resource, "put", schema_ref, write_params()));
    }
    if resource.supports("patch") {
        let mut params = write_params();
        params.push(query_param("force", "Force is going to \"force\" Apply requests."));
        one.insert("patch".into(), operation(resource, "patch", schema_ref, params));
    }
    if resource.supports("delete") {
        one.insert("delete".into(), operation(resource, "delete", schema_ref, vec![query_param("dryRun", "Valid values: All")]));
    }
    if !coll.is_empty() {
        paths.insert(collection, Value::Object(coll));
    }
    if !one.is_empty() {
        paths.insert(item, Value::Object(one));
    }
}

fn document(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    for resource in RESOURCES.iter().copied().filter(|r| r.group == group && r.version == version) {
        let reference = (resource.schema)(&mut generator);
        let schema_ref = reference.get("$ref").and_then(Value::as_str).unwrap_or_default().to_owned();
        paths_for(resource, &schema_ref, &mut paths);
        kinds.push((schema_ref, resource));
    }
    let mut schemas = generator.take_definitions(true);
    tessera_api::openapi_ext::annotate(&mut schemas);
    for (schema_ref, resource) in kinds {
        let name = schema_ref.rsplit('/').next().unwrap_or_default();
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": resource.group, "version": resource.version, "kind": resource.kind}]),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

struct Documents {
    index: Value,
    by_path: BTreeMap<String, Value>,
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut by_path = BTreeMap::new();
        let mut index = Map::new();
        for (group, version) in group_versions() {
            let path = gv_path(group, version);
            let doc = document(group, version);
            // A content hash lets clients cache documents; this one changes with the binary.
            let hash = format!("{:016X}", fnv1a(doc.to_string().as_bytes()));
            index.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
            by_path.insert(path, doc);
        }
        Documents { index: json!({"paths": index}), by_path }
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// `/openapi/v3`.
pub fn index() -> &'static Value {
    &documents().index
}

/// `/openapi/v3/{path}` where path is `api/v1` or `apis/G/V`.
pub fn group_version(path: &str) -> Option<&'static Value> {
    documents().by_path.get(path.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_core_v1() {
        let url = index()["paths"]["api/v1"]["serverRelativeURL"].as_str().expect("url");
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
    }

    #[test]
    fn service_account_patch_supports_field_validation() {
        let doc = group_version("api/v1").expect("core doc");
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/serviceaccounts/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "ServiceAccount");
        assert!(patch["parameters"].as_array().expect("params").iter().any(|p| p["name"] == "fieldValidation"));
        let schema = &doc["components"]["schemas"]["io.k8s.api.core.v1.ServiceAccount"];
        assert_eq!(schema["properties"]["secrets"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(schema["x-kubernetes-group-version-kind"][0]["kind"], "ServiceAccount");
        assert!(schema["properties"]["metadata"]["allOf"][0]["$ref"].as_str().is_some_and(|r| r.ends_with("ObjectMeta")));
    }

    #[test]
    fn pod_containers_carry_patch_and_list_extensions() {
        let doc = group_version("api/v1").expect("core doc");
        let containers = &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        for (key, value) in json!({"x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map", "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"}).as_object().expect("object") {
            assert_eq!(&containers[key], value, "{key}");
        }
    }
}
