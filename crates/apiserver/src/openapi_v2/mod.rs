//! The OpenAPI v2 document (`/openapi/v2`), in JSON and in gnostic protobuf.
//!
//! kubectl's client-side validation (`kubectl apply|create -f`, which is on by
//! default) reads it for every object whose kind does not advertise
//! server-side `fieldValidation` in OpenAPI v3 — `kind: List` files and kinds
//! the server does not serve — and asks for it in protobuf only
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`). Without
//! it, kubectl refuses the whole file.
//!
//! The document is built once from the same schemars schemas as OpenAPI v3
//! (`crate::openapi`), rewritten into Swagger 2.0's shape: definitions under
//! `#/definitions/` named as Kubernetes names them
//! (`io.k8s.api.core.v1.ConfigMap`), `$ref` with a sibling description
//! instead of a one-element `allOf`, int-or-string as `type: string, format:
//! int-or-string`, and each served kind's definition tagged with
//! `x-kubernetes-group-version-kind`. The protobuf form is converted from that
//! JSON, as kube-openapi does (`ToProtoBinary`), so the two never disagree.
//!
//! Served as kube-openapi serves it: the first acceptable media type of the
//! `Accept` header (by q-value), `Vary: Accept`, one quoted `Etag` (upper-case
//! hex SHA-512 of the JSON form) for both forms, `Last-Modified`, 304 for a
//! matching `If-None-Match`, and 406 with an empty body when neither form is
//! acceptable.

pub mod gnostic;

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prost::Message as _;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use tessera_api::resource::RESOURCES;

/// The JSON media type.
pub const JSON: &str = "application/json";
/// The protobuf media type clients ask for (kube-openapi calls it deprecated but serves it).
pub const PROTOBUF_REQUESTED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The protobuf media type kube-openapi answers with.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const V3_PREFIX: &str = "#/components/schemas/";
const V2_PREFIX: &str = "#/definitions/";

/// The document in both forms, with its validators.
pub struct Document {
    /// The Swagger 2.0 JSON.
    pub json: Bytes,
    /// The gnostic `openapi.v2.Document` message.
    pub protobuf: Bytes,
    /// The quoted ETag.
    pub etag: HeaderValue,
    /// When this process built it (HTTP date), as kube's `lastModified`.
    pub last_modified: HeaderValue,
    modified_at: std::time::SystemTime,
}

/// The document (built on first use).
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let value = swagger();
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        let protobuf = Bytes::from(to_protobuf(&value).encode_to_vec());
        let digest = ring::digest::digest(&ring::digest::SHA512, &json);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        // Second precision: HTTP dates have no more, and If-Modified-Since compares them.
        let now = std::time::SystemTime::now();
        let modified_at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default());
        Document {
            json,
            protobuf,
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified_at))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            modified_at,
        }
    })
}

/// Builds the Swagger 2.0 document.
fn swagger() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    for resource in RESOURCES.iter().copied() {
        let reference = (resource.schema)(&mut generator);
        let schema_ref = reference.get("$ref").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut v3_paths = Map::new();
        crate::openapi::paths_for(resource, &schema_ref, &mut v3_paths);
        for (path, item) in v3_paths {
            paths.insert(path, path_item(item));
        }
        kinds.push((schema_ref, resource));
    }
    let mut definitions: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    tessera_api::openapi_ext::annotate(&mut definitions);
    for (name, schema) in &mut definitions {
        to_v2_schema(schema);
        if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
            // kube publishes Quantity as a plain string.
            if let Some(o) = schema.as_object_mut() {
                o.remove("format");
            }
        }
    }
    for (schema_ref, resource) in kinds {
        let name = schema_ref.strip_prefix(V3_PREFIX).unwrap_or_default();
        if let Some(Value::Object(schema)) = definitions.get_mut(name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": resource.group, "kind": resource.kind, "version": resource.version}]),
            );
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

/// Rewrites a schemars (OpenAPI 3) schema into Swagger 2.0's form, in place.
fn to_v2_schema(schema: &mut Value) {
    let Some(o) = schema.as_object_mut() else { return };
    // `{"allOf": [{"$ref": R}], "description": D}` is how OpenAPI 3 puts a
    // description beside a reference; Swagger 2.0 (and kube) write `$ref` beside it.
    if let Some(Value::Array(all_of)) = o.get("allOf")
        && let [only] = all_of.as_slice()
        && let Some(reference) = only.get("$ref").cloned()
    {
        o.remove("allOf");
        o.insert("$ref".into(), reference);
    }
    if let Some(Value::String(reference)) = o.get_mut("$ref")
        && let Some(name) = reference.strip_prefix(V3_PREFIX)
    {
        *reference = format!("{V2_PREFIX}{name}");
    }
    if o.remove("x-kubernetes-int-or-string") == Some(Value::Bool(true)) && !o.contains_key("type") {
        o.insert("type".into(), json!("string"));
        o.insert("format".into(), json!("int-or-string"));
    }
    if let Some(Value::Object(properties)) = o.get_mut("properties") {
        properties.values_mut().for_each(to_v2_schema);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = o.get_mut(key) {
            to_v2_schema(sub);
        }
    }
    if let Some(Value::Array(all_of)) = o.get_mut("allOf") {
        all_of.iter_mut().for_each(to_v2_schema);
    }
}

/// Turns an OpenAPI 3 path item (from `crate::openapi`) into a Swagger 2.0 one.
fn path_item(item: Value) -> Value {
    let Value::Object(ops) = item else { return item };
    let mut out = Map::new();
    for (method, op) in ops {
        out.insert(method, operation(op));
    }
    Value::Object(out)
}

fn operation(op: Value) -> Value {
    let Value::Object(mut op) = op else { return op };
    let mut parameters: Vec<Value> = Vec::new();
    if let Some(Value::Object(body)) = op.remove("requestBody") {
        let consumes: Vec<&String> = body.get("content").and_then(Value::as_object).map(|c| c.keys().collect()).unwrap_or_default();
        let schema = body.get("content").and_then(Value::as_object).and_then(|c| c.values().next()).and_then(|c| c.get("schema")).cloned();
        op.insert("consumes".into(), json!(consumes));
        let mut schema = schema.unwrap_or_else(|| json!({}));
        to_v2_schema(&mut schema);
        parameters.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
    }
    if let Some(Value::Array(params)) = op.remove("parameters") {
        for mut p in params {
            if let Some(o) = p.as_object_mut()
                && let Some(Value::Object(schema)) = o.remove("schema")
            {
                o.extend(schema);
            }
            parameters.push(p);
        }
    }
    if let Some(Value::Object(responses)) = op.remove("responses") {
        let mut out = Map::new();
        for (code, response) in responses {
            let mut schema = response.pointer("/content/application~1json/schema").cloned();
            if let Some(s) = &mut schema {
                to_v2_schema(s);
            }
            let description = response.get("description").cloned().unwrap_or_else(|| json!("OK"));
            let mut r = json!({"description": description});
            if let Some(s) = schema {
                r["schema"] = s;
            }
            out.insert(code, r);
        }
        op.insert("responses".into(), Value::Object(out));
    }
    op.insert("parameters".into(), Value::Array(parameters));
    op.insert("produces".into(), json!(["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]));
    op.insert("schemes".into(), json!(["https"]));
    Value::Object(op)
}

// === JSON → gnostic protobuf ===

fn text(o: &Map<String, Value>, key: &str) -> String {
    o.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn strings(o: &Map<String, Value>, key: &str) -> Vec<String> {
    o.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
}

fn extensions(o: &Map<String, Value>) -> Vec<gnostic::NamedAny> {
    o.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| gnostic::NamedAny {
            name: k.clone(),
            // gnostic keeps extension values as YAML text; JSON is valid YAML.
            value: Some(gnostic::Any { yaml: v.to_string() }),
        })
        .collect()
}

/// The gnostic form of the Swagger JSON.
fn to_protobuf(doc: &Value) -> gnostic::Document {
    let empty = Map::new();
    let o = doc.as_object().unwrap_or(&empty);
    let info = o.get("info").and_then(Value::as_object).unwrap_or(&empty);
    let paths = o.get("paths").and_then(Value::as_object).unwrap_or(&empty);
    let definitions = o.get("definitions").and_then(Value::as_object).unwrap_or(&empty);
    gnostic::Document {
        swagger: text(o, "swagger"),
        info: Some(gnostic::Info { title: text(info, "title"), version: text(info, "version") }),
        consumes: Vec::new(),
        produces: Vec::new(),
        paths: Some(gnostic::Paths {
            path: paths.iter().map(|(name, item)| gnostic::NamedPathItem { name: name.clone(), value: Some(to_path_item(item)) }).collect(),
        }),
        definitions: Some(gnostic::Definitions {
            additional_properties: definitions
                .iter()
                .map(|(name, schema)| gnostic::NamedSchema { name: name.clone(), value: Some(to_schema(schema)) })
                .collect(),
        }),
    }
}

fn to_path_item(item: &Value) -> gnostic::PathItem {
    let op = |m: &str| item.get(m).map(to_operation);
    gnostic::PathItem { get: op("get"), put: op("put"), post: op("post"), delete: op("delete"), patch: op("patch"), parameters: Vec::new() }
}

fn to_operation(op: &Value) -> gnostic::Operation {
    let empty = Map::new();
    let o = op.as_object().unwrap_or(&empty);
    let responses = o.get("responses").and_then(Value::as_object).unwrap_or(&empty);
    gnostic::Operation {
        tags: strings(o, "tags"),
        description: text(o, "description"),
        operation_id: text(o, "operationId"),
        produces: strings(o, "produces"),
        consumes: strings(o, "consumes"),
        parameters: o.get("parameters").and_then(Value::as_array).map(|ps| ps.iter().map(to_parameter).collect()).unwrap_or_default(),
        responses: Some(gnostic::Responses {
            response_code: responses
                .iter()
                .map(|(code, r)| gnostic::NamedResponseValue {
                    name: code.clone(),
                    value: Some(gnostic::ResponseValue {
                        response: Some(gnostic::Response {
                            description: r.get("description").and_then(Value::as_str).unwrap_or_default().to_owned(),
                            schema: r.get("schema").map(|s| gnostic::SchemaItem { schema: Some(to_schema(s)) }),
                        }),
                    }),
                })
                .collect(),
        }),
        schemes: strings(o, "schemes"),
        vendor_extension: extensions(o),
    }
}

fn to_parameter(p: &Value) -> gnostic::ParametersItem {
    let empty = Map::new();
    let o = p.as_object().unwrap_or(&empty);
    let required = o.get("required").and_then(Value::as_bool).unwrap_or_default();
    let unique_items = o.get("uniqueItems").and_then(Value::as_bool).unwrap_or_default();
    let parameter = match o.get("in").and_then(Value::as_str) {
        Some("body") => gnostic::Parameter {
            body_parameter: Some(gnostic::BodyParameter {
                description: text(o, "description"),
                name: text(o, "name"),
                r#in: "body".into(),
                required,
                schema: o.get("schema").map(to_schema),
            }),
            non_body_parameter: None,
        },
        Some("path") => gnostic::Parameter {
            body_parameter: None,
            non_body_parameter: Some(gnostic::NonBodyParameter {
                query_parameter_sub_schema: None,
                path_parameter_sub_schema: Some(gnostic::PathParameterSubSchema {
                    required,
                    r#in: "path".into(),
                    description: text(o, "description"),
                    name: text(o, "name"),
                    r#type: text(o, "type"),
                    unique_items,
                }),
            }),
        },
        _ => gnostic::Parameter {
            body_parameter: None,
            non_body_parameter: Some(gnostic::NonBodyParameter {
                query_parameter_sub_schema: Some(gnostic::QueryParameterSubSchema {
                    required,
                    r#in: "query".into(),
                    description: text(o, "description"),
                    name: text(o, "name"),
                    r#type: text(o, "type"),
                    unique_items,
                }),
                path_parameter_sub_schema: None,
            }),
        },
    };
    gnostic::ParametersItem { parameter: Some(parameter) }
}

fn to_schema(schema: &Value) -> gnostic::Schema {
    let empty = Map::new();
    let o = schema.as_object().unwrap_or(&empty);
    let additional_properties = o.get("additionalProperties").map(|a| {
        Box::new(match a {
            Value::Bool(b) => gnostic::AdditionalPropertiesItem { schema: None, boolean: Some(*b) },
            other => gnostic::AdditionalPropertiesItem { schema: Some(to_schema(other)), boolean: None },
        })
    });
    gnostic::Schema {
        xref: text(o, "$ref"),
        format: text(o, "format"),
        description: text(o, "description"),
        required: strings(o, "required"),
        additional_properties,
        r#type: o.get("type").and_then(Value::as_str).map(|t| gnostic::TypeItem { value: vec![t.to_owned()] }),
        items: o.get("items").map(|i| gnostic::ItemsItem { schema: vec![to_schema(i)] }),
        all_of: o.get("allOf").and_then(Value::as_array).map(|a| a.iter().map(to_schema).collect()).unwrap_or_default(),
        properties: o.get("properties").and_then(Value::as_object).map(|p| gnostic::Properties {
            additional_properties: p.iter().map(|(name, s)| gnostic::NamedSchema { name: name.clone(), value: Some(to_schema(s)) }).collect(),
        }),
        vendor_extension: extensions(o),
    }
}

// === serving ===

/// Which form of the document an `Accept` header picks, kube-openapi's way:
/// clauses by descending q (ties: specific before wildcard, then in order),
/// each tried against JSON, then protobuf.
fn negotiate(accept: &str) -> Option<(&'static str, bool)> {
    let accept = if accept.trim().is_empty() { "*/*" } else { accept };
    let mut clauses: Vec<(f32, u8, usize, &str, &str)> = Vec::new();
    for (index, clause) in accept.split(',').enumerate() {
        let mut parts = clause.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let (ty, sub) = media.split_once('/').unwrap_or((media, ""));
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim() == "q"
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if q <= 0.0 {
            continue;
        }
        let specificity = u8::from(ty != "*") + u8::from(sub != "*");
        clauses.push((q, specificity, index, ty.trim(), sub.trim()));
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let offered: [(&str, &'static str, bool); 3] = [
        ("json", JSON, false),
        ("com.github.proto-openapi.spec.v2@v1.0+protobuf", PROTOBUF, true),
        ("com.github.proto-openapi.spec.v2.v1.0+protobuf", PROTOBUF, true),
    ];
    for (_, _, _, ty, sub) in clauses {
        for (offer, content_type, protobuf) in offered {
            if (ty == "application" || ty == "*") && (sub == offer || sub == "*") {
                return Some((content_type, protobuf));
            }
        }
    }
    None
}

/// Whether `If-None-Match` (or, without it, `If-Modified-Since`) says the
/// client's copy is current, as Go's `http.ServeContent` decides.
fn not_modified(headers: &HeaderMap, doc: &Document) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let etag = doc.etag.to_str().unwrap_or_default();
        return inm.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| doc.modified_at <= since)
}

/// `GET /openapi/v2`.
pub fn respond(headers: &HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut response = Response::new(Body::empty());
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    let Some((content_type, protobuf)) = negotiate(accept) else {
        *response.status_mut() = StatusCode::NOT_ACCEPTABLE;
        return response;
    };
    let doc = document();
    let h = response.headers_mut();
    h.insert(header::ETAG, doc.etag.clone());
    h.insert(header::LAST_MODIFIED, doc.last_modified.clone());
    if not_modified(headers, doc) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    *response.body_mut() = Body::from(if protobuf { doc.protobuf.clone() } else { doc.json.clone() });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_kube_openapi() {
        assert_eq!(negotiate(""), Some((JSON, false)));
        assert_eq!(negotiate("*/*"), Some((JSON, false)));
        assert_eq!(negotiate("application/json"), Some((JSON, false)));
        assert_eq!(negotiate(PROTOBUF_REQUESTED), Some((PROTOBUF, true)));
        assert_eq!(negotiate(&format!("{PROTOBUF_REQUESTED}, application/json")), Some((PROTOBUF, true)));
        assert_eq!(negotiate(&format!("application/json;q=0.5, {PROTOBUF}")), Some((PROTOBUF, true)));
        assert_eq!(negotiate("text/html"), None);
        assert_eq!(negotiate("application/json;q=0"), None);
    }

    #[test]
    fn definitions_are_swagger_2_with_group_version_kinds() {
        let doc = swagger();
        let cm = &doc["definitions"]["io.k8s.api.core.v1.ConfigMap"];
        assert_eq!(cm["x-kubernetes-group-version-kind"], json!([{"group": "", "kind": "ConfigMap", "version": "v1"}]));
        assert_eq!(cm["properties"]["metadata"]["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
        assert!(cm["properties"]["metadata"].get("allOf").is_none());
        let role = &doc["definitions"]["io.k8s.api.rbac.v1.Role"];
        assert_eq!(role["x-kubernetes-group-version-kind"][0]["group"], "rbac.authorization.k8s.io");
        let text = serde_json::to_string(&doc).expect("json");
        assert!(!text.contains("#/components/schemas/"), "every reference points into #/definitions/");
        assert_eq!(doc["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"], "int-or-string");
        let post = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps"]["post"];
        assert_eq!(post["parameters"][0]["in"], "body");
        assert_eq!(post["responses"]["200"]["schema"]["$ref"], "#/definitions/io.k8s.api.core.v1.ConfigMap");
        let containers = &doc["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        for (key, value) in json!({"x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map", "x-kubernetes-patch-merge-key": "name", "x-kubernetes-patch-strategy": "merge"}).as_object().expect("object") {
            assert_eq!(&containers[key], value, "{key}");
        }
    }

    #[test]
    fn protobuf_decodes_to_the_same_definitions() {
        let doc = document();
        let decoded = gnostic::Document::decode(doc.protobuf.as_ref()).expect("decodes");
        assert_eq!(decoded.swagger, "2.0");
        let defs = decoded.definitions.expect("definitions").additional_properties;
        let cm = defs.iter().find(|d| d.name == "io.k8s.api.core.v1.ConfigMap").and_then(|d| d.value.clone()).expect("ConfigMap");
        let gvk = cm.vendor_extension.iter().find(|e| e.name == "x-kubernetes-group-version-kind").expect("gvk");
        let yaml: Value = serde_json::from_str(&gvk.value.as_ref().expect("value").yaml).expect("json is yaml");
        assert_eq!(yaml, json!([{"group": "", "kind": "ConfigMap", "version": "v1"}]));
        let props = cm.properties.expect("properties").additional_properties;
        let data = props.iter().find(|p| p.name == "data").and_then(|p| p.value.clone()).expect("data");
        assert_eq!(data.r#type.expect("type").value, vec!["object"]);
        assert!(data.additional_properties.and_then(|a| a.schema).is_some());
        assert!(doc.etag.to_str().expect("etag").len() == 130, "quoted SHA-512 hex");
    }

    #[test]
    fn conditional_requests_get_304() {
        let doc = document();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, doc.etag.clone());
        assert_eq!(respond(&headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(respond(&headers).status(), StatusCode::OK);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
        assert_eq!(respond(&headers).status(), StatusCode::NOT_ACCEPTABLE);
    }
}
