//! The HTTP surface: one router, three layers (observe → authenticate →
//! authorize), discovery and health handlers, and one resource handler that
//! speaks the Kubernetes REST conventions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tessera_api::patch::Patch;
use tessera_api::registry::{ListParams, Preconditions, WriteOptions, WriteScope};
use tessera_api::resource::{self, ResourceInfo};
use tessera_api::selector::{FieldSelector, LabelSelector};
use tessera_api::{ApiError, Registry, kinds};
use tessera_authn::UserInfo;
use tokio::time::Instant;

use crate::discovery;
use crate::metrics::Metrics;
use crate::request_info::{self, RequestInfo};
use crate::response::{Failure, HandlerResult, json_response, json_with_type};
use crate::table;

/// Request bodies larger than this are refused with 413 (kube-apiserver's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The identity the TLS layer established for a connection.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No client certificate was presented.
    None,
    /// A verified client certificate mapped to a user.
    Certificate(Arc<UserInfo>),
    /// A client certificate was presented but does not map to a user.
    Invalid,
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The object registry.
    pub registry: Registry,
    /// Request metrics.
    pub metrics: Metrics,
    /// Set once bootstrap is done (served by `/readyz`).
    pub ready: Arc<AtomicBool>,
    /// `host:port` advertised in `/api`.
    pub server_address: String,
    /// ServiceAccount token issuing and review.
    pub tokens: crate::tokens::TokenState,
    /// Authorization settings.
    pub authz: crate::authz::AuthzConfig,
    /// The RBAC policy.
    pub rbac: crate::rbac::PolicyCache,
}

impl AppState {
    /// After a write, waits until the caches that authentication and
    /// authorization read have seen it: a client's own RBAC or ServiceAccount
    /// change takes effect for its next request.
    async fn caught_up(&self, resource: &ResourceInfo, written: &Value) {
        let Some(revision) = written.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|rv| rv.parse().ok())
        else {
            return;
        };
        if resource.group == "rbac.authorization.k8s.io" {
            self.rbac.caught_up(revision).await;
        } else if resource.group.is_empty() && matches!(resource.plural, "serviceaccounts" | "pods" | "secrets") {
            self.tokens.objects.caught_up(revision).await;
        }
    }
}

/// Builds the router with all layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/.well-known/openid-configuration", get(|State(state): State<AppState>| async move {
            json_response(StatusCode::OK, &state.tokens.openid_configuration())
        }))
        .route("/openid/v1/jwks", get(|State(state): State<AppState>| async move {
            json_with_type(StatusCode::OK, &state.tokens.jwks(), "application/jwk-set+json")
        }))
        .route("/api", get(core_versions))
        .route("/apis", get(group_list))
        .route("/api/{version}", get(core_resources))
        .route("/apis/{group}", get(group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/tessera/v1/rbac/explain", axum::routing::post(rbac_explain))
        .route("/tessera/v1/rbac/who-can", axum::routing::post(rbac_who_can))
        .route("/openapi/v3", get(|| async { json_response(StatusCode::OK, crate::openapi::index()) }))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .fallback(resource_request)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| kv.split_once('=').is_some_and(|(k, v)| k == name && (v == "true" || v == "1")))
    })
}

/// `metadata.name` pinned by a `fieldSelector` of exactly that one requirement.
fn field_selector_name(query: &str) -> Option<String> {
    let (_, raw) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "fieldSelector")?;
    let (field, value) = raw.split_once("==").or_else(|| raw.split_once('='))?;
    (field.trim() == "metadata.name" && !value.contains(',') && !field.contains('!')).then(|| value.trim().to_owned())
}

/// Parses the request info, runs the request and records metrics.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut info = request_info::parse(req.method(), req.uri().path(), query_flag(req.uri().query(), "watch"));
    // Like kube-apiserver: a list/watch pinned to one name by a field selector is
    // authorized as that name, so resourceNames rules apply to `get -w`.
    if matches!(info.verb.as_str(), "list" | "watch")
        && let Some(name) = req.uri().query().and_then(field_selector_name)
    {
        info.name = name;
    }
    // Metrics labels come from fixed sets only: arbitrary paths must not create series.
    let resource = match resource::lookup(&info.api_group, &info.api_version, &info.resource) {
        Some(r) if info.is_resource_request => r.plural,
        _ if info.is_resource_request => "other",
        _ => "",
    };
    let verb: &'static str = match info.verb.as_str() {
        "get" => "get",
        "list" => "list",
        "watch" => "watch",
        "create" => "create",
        "update" => "update",
        "patch" => "patch",
        "delete" => "delete",
        "deletecollection" => "deletecollection",
        "post" => "post",
        "put" => "put",
        _ => "other",
    };
    req.extensions_mut().insert(info);
    let response = next.run(req).await;
    state.metrics.observe(verb, resource, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// Establishes the user: client certificate, else a bearer token (ServiceAccount
/// tokens, bound or legacy), else anonymous. A credential that is presented but
/// does not authenticate is 401, never anonymous.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerIdentity>().cloned().unwrap_or(PeerIdentity::None);
    let user = match peer {
        PeerIdentity::Certificate(user) => user,
        PeerIdentity::Invalid => return Failure(ApiError::unauthorized()).into_response(),
        PeerIdentity::None => match req.headers().get(header::AUTHORIZATION) {
            None => Arc::new(UserInfo::anonymous()),
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .unwrap_or_default();
                match (!token.is_empty()).then(|| state.tokens.authenticate_bearer(token)).flatten() {
                    Some(user) => Arc::new(user),
                    None => return Failure(ApiError::unauthorized()).into_response(),
                }
            }
        },
    };
    let user = match crate::rbac::impersonate(&state.rbac, &user, req.headers()) {
        Ok(Some(impersonated)) => Arc::new(impersonated),
        Ok(None) => user,
        Err(e) => return Failure(e).into_response(),
    };
    req.extensions_mut().insert(user);
    next.run(req).await
}

async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (Some(user), Some(info)) = (req.extensions().get::<Arc<UserInfo>>(), req.extensions().get::<RequestInfo>()) else {
        tracing::error!("authorize ran without authentication");
        return Failure(ApiError::internal("authorization failed")).into_response();
    };
    if let Err(err) = crate::authz::authorize(&state.authz, &state.rbac, user, info) {
        tracing::debug!(user = %user.username, verb = %info.verb, path = %info.path, "forbidden");
        return Failure(err).into_response();
    }
    next.run(req).await
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "[-]bootstrap not finished\nreadyz check failed").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.encode()).into_response()
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json")
}

async fn core_versions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        return json_with_type(StatusCode::OK, &discovery::aggregated(true), discovery::AGGREGATED_V2);
    }
    json_response(StatusCode::OK, &discovery::core_versions(&state.server_address))
}

async fn group_list(headers: HeaderMap) -> Response {
    if discovery::wants_aggregated(accept(&headers)) {
        return json_with_type(StatusCode::OK, &discovery::aggregated(false), discovery::AGGREGATED_V2);
    }
    json_response(StatusCode::OK, &discovery::group_list())
}

async fn core_resources(Path(version): Path<String>) -> HandlerResult {
    let list = discovery::resource_list("", &version).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &list))
}

async fn group(Path(group): Path<String>) -> HandlerResult {
    let doc = discovery::group(&group).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &doc))
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> HandlerResult {
    let list = discovery::resource_list(&group, &version).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &list))
}

async fn rbac_explain(State(state): State<AppState>, axum::Json(query): axum::Json<crate::rbac::RbacQuery>) -> Response {
    json_response(StatusCode::OK, &crate::rbac::explain(&state.rbac, &query))
}

async fn rbac_who_can(State(state): State<AppState>, axum::Json(query): axum::Json<crate::rbac::RbacQuery>) -> Response {
    json_response(StatusCode::OK, &crate::rbac::who_can(&state.rbac, &query))
}

async fn openapi_document(Path(path): Path<String>) -> HandlerResult {
    let doc = crate::openapi::group_version(&path).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, doc))
}

/// Query parameters of resource requests.
struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn write_options(&self) -> Result<WriteOptions, ApiError> {
        let dry_run = match self.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!("Invalid dry run value: {other:?}: supported values: \"All\"")));
            }
        };
        let strict = match self.get("fieldValidation") {
            None | Some("") | Some("Ignore") | Some("Warn") => false,
            Some("Strict") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
                )));
            }
        };
        Ok(WriteOptions { dry_run, strict, ..WriteOptions::default() })
    }

    fn list_params(&self, resource: &ResourceInfo) -> Result<ListParams, ApiError> {
        let limit = match self.get("limit") {
            None | Some("") => 0,
            Some(raw) => raw.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid limit: {raw:?}")))?.max(0) as usize,
        };
        Ok(ListParams {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or_default(), kinds::selectable_fields(resource))?,
            limit,
            continue_token: self.get("continue").filter(|c| !c.is_empty()).map(str::to_owned),
            resource_version: self.get("resourceVersion").map(str::to_owned),
        })
    }
}

/// Decodes a request body by its Content-Type: JSON, or Kubernetes protobuf
/// (which kubectl's typed clients send).
fn decode_body(headers: &HeaderMap, body: &Bytes, kind: &str) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if content_type.starts_with(tessera_api::protobuf::MEDIA_TYPE) {
        return tessera_api::protobuf::decode(body).map_err(|e| match e {
            tessera_api::protobuf::ProtobufError::UnknownKind { .. } => ApiError::unsupported_media_type(content_type),
            other => ApiError::bad_request(format!("the object provided is unrecognized (must be of type {kind}): {other}")),
        });
    }
    decode_json(body, kind)
}

fn decode_json(body: &Bytes, kind: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let preview: String = String::from_utf8_lossy(&body[..body.len().min(30)]).into_owned();
        // Go's decoder words a truncated body this way; clients match on it.
        let why = if e.is_eof() { "unexpected end of JSON input".to_owned() } else { e.to_string() };
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: {why} ({preview} ...)"
        ))
    })
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| ApiError::too_large(MAX_BODY_BYTES))
}

/// Every `/api/v1/…` and `/apis/G/V/…` resource path.
async fn resource_request(
    State(state): State<AppState>,
    Extension(info): Extension<RequestInfo>,
    Extension(user): Extension<Arc<UserInfo>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> HandlerResult {
    if !info.is_resource_request {
        return Err(ApiError::no_such_resource().into());
    }
    let resource = resource::lookup(&info.api_group, &info.api_version, &info.resource).ok_or_else(ApiError::no_such_resource)?;
    let params = Params(query);
    // Cluster-scoped kinds are not served under a namespace. The one exception is
    // a namespace object itself (`/namespaces/{n}[/status|/finalize]`), which
    // request parsing files under namespace {n}; `/namespaces/{a}/namespaces/{b}`
    // must not reach namespace {b} with permissions granted in {a}.
    let namespace = if resource.namespaced { info.namespace.as_deref() } else { None };
    let namespace_itself = resource.plural == "namespaces" && info.namespace.as_deref() == Some(info.name.as_str());
    if !resource.namespaced && info.namespace.is_some() && !namespace_itself {
        return Err(ApiError::no_such_resource().into());
    }
    if resource.namespaced && namespace.is_none() && !matches!(info.verb.as_str(), "list" | "watch") {
        return Err(ApiError::no_such_resource().into());
    }
    if resource.plural == "serviceaccounts" && info.subresource == "token" {
        if info.verb != "create" {
            return Err(ApiError::method_not_supported(resource, &info.verb).into());
        }
        let body = decode_body(&headers, &read_body(body).await?, "TokenRequest")?;
        let ns = namespace.unwrap_or_default();
        return state.tokens.token_request(&state.registry, ns, &info.name, body).await;
    }
    if let tessera_api::resource::Storage::Virtual = resource.storage {
        if info.verb != "create" {
            return Err(ApiError::method_not_supported(resource, &info.verb).into());
        }
        let options = params.write_options()?;
        let body = decode_body(&headers, &read_body(body).await?, resource.kind)?;
        let body = state.registry.normalise(resource, body, options.strict)?;
        return match resource.plural {
            "tokenreviews" => state.tokens.token_review(body),
            "selfsubjectreviews" => crate::tokens::self_subject_review(&user),
            plural if resource.group == "authorization.k8s.io" => crate::rbac::access_review(&state.rbac, &user, plural, namespace, body),
            _ => Err(ApiError::no_such_resource().into()),
        };
    }
    let verbs = match info.subresource.as_str() {
        "" => resource.verbs,
        sub => match resource.subresources.iter().find(|s| s.name == sub && s.group.is_empty()) {
            Some(s) => s.verbs,
            None => return Err(ApiError::no_such_resource().into()),
        },
    };
    if !verbs.contains(&info.verb.as_str()) {
        return Err(ApiError::method_not_supported(resource, &info.verb).into());
    }
    let registry = &state.registry;
    let name = info.name.as_str();
    let write_options = || -> Result<WriteOptions, ApiError> {
        let mut options = params.write_options()?;
        options.admit = crate::rbac::escalation_check(&state.rbac, &user, resource);
        options.scope = match info.subresource.as_str() {
            "status" => WriteScope::Status,
            "finalize" => WriteScope::Finalizers,
            _ => WriteScope::Object,
        };
        Ok(options)
    };
    let accept = accept(&headers).to_owned();
    match info.verb.as_str() {
        "get" => {
            let obj = registry.get(resource, namespace, name).await?;
            if table::wants_table(&accept) {
                let t = table::table(resource, std::slice::from_ref(&obj), json!({}), params.get("includeObject").unwrap_or_default());
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        "list" => {
            let list = registry.list(resource, namespace, &params.list_params(resource)?).await?;
            if table::wants_table(&accept) {
                let items = list.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let meta = list.get("metadata").cloned().unwrap_or_default();
                let t = table::table(resource, items, meta, params.get("includeObject").unwrap_or_default());
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        "watch" => {
            let list = params.list_params(resource)?;
            crate::watch::serve(&state, resource, namespace, &list, &accept, params.get("timeoutSeconds"), params.get("includeObject")).await
        }
        "create" => {
            let options = write_options()?;
            let body = decode_body(&headers, &read_body(body).await?, resource.kind)?;
            let obj = registry.create(resource, namespace, body, options).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "update" => {
            let options = write_options()?;
            let body = decode_body(&headers, &read_body(body).await?, resource.kind)?;
            let obj = registry.update(resource, namespace, name, body, options).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::OK, &obj))
        }
        "patch" => {
            let options = write_options()?;
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let patch = Patch::decode(content_type, &read_body(body).await?)?;
            let obj = registry.patch(resource, namespace, name, &patch, options).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::OK, &obj))
        }
        "delete" => {
            let body = read_body(body).await?;
            let (preconditions, dry_run_body) = delete_options(&headers, &body)?;
            let mut options = params.write_options()?;
            options.dry_run |= dry_run_body;
            let obj = registry.delete(resource, namespace, name, &preconditions, options).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::OK, &obj))
        }
        "deletecollection" => {
            let options = params.write_options()?;
            let list = registry.delete_collection(resource, namespace, &params.list_params(resource)?, options).await?;
            state.caught_up(resource, &list).await;
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::method_not_supported(resource, &info.verb).into()),
    }
}

/// Reads `DeleteOptions` (preconditions and dryRun) from a DELETE body.
fn delete_options(headers: &HeaderMap, body: &Bytes) -> Result<(Preconditions, bool), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Preconditions::default(), false));
    }
    let opts: Value = decode_body(headers, body, "DeleteOptions")?;
    let pre = opts.get("preconditions");
    let field = |f: &str| pre.and_then(|p| p.get(f)).and_then(Value::as_str).map(str::to_owned);
    let dry_run = opts.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok((Preconditions { uid: field("uid"), resource_version: field("resourceVersion") }, dry_run))
}
