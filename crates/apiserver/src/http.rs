//! The HTTP surface: one router, three layers (observe → authenticate →
//! authorize), discovery and health handlers, and one resource handler that
//! speaks the Kubernetes REST conventions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tessera_api::deletion::DeleteOptions;
use tessera_api::patch::Patch;
use tessera_api::registry::cached::ListBody;
use tessera_api::registry::{WriteOptions, WriteScope};
use tessera_api::resource::ResourceInfo;
use tessera_api::{ApiError, Registry};
use tessera_authn::UserInfo;
use tokio::time::Instant;

use crate::discovery;
use crate::metrics::Metrics;
use crate::access_review::AccessReview;
use crate::authz::Authorized;
use crate::request::{self, Options, ParsedRequest, Target, Verb};
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

/// Shared state of all handlers: a handle to [`Shared`]. The middleware
/// layers and extractors each take a copy for every request (`State<AppState>`),
/// so a copy must be one reference count, not a copy of every field's handles
/// (a profile of TokenReview and SAR under load put the field-by-field copy
/// and drop at about 13 % of the server's CPU; BENCHMARKS.md, issue 14).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler shares, behind [`AppState`].
pub struct Shared {
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
    /// The encrypting store layer, when encryption at rest is configured.
    pub encryption: Option<Arc<tessera_encryption::EncryptedStore>>,
    /// Which objects each node may touch (the node authorizer's graph).
    pub nodes: crate::node::graph::NodeGraph,
    /// Signs node client certificates.
    pub node_certificates: Arc<crate::node::certificates::NodeCertificates>,
    /// Services, EndpointSlices and Pods for the destination API.
    pub destinations: crate::destinations::MeshCache,
    /// How the destination API names identities.
    pub identity_naming: crate::destinations::IdentityNaming,
    /// What the expiry timeline reads besides the store.
    pub expiry: Arc<crate::expiry::Settings>,
    /// The policy kinds, Pods and Namespaces for the inbound policy API.
    pub inbound_policy: crate::policy::InboundPolicy,
}

impl Shared {
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
            if resource.plural == "pods" {
                // A node's next request (its pod's token) is authorized on the graph.
                self.nodes.caught_up(revision).await;
            }
        } else if resource.group == tessera_policy::resources::GROUP {
            // The next Server written is checked against this one (policy::admission).
            self.inbound_policy.cache.caught_up(revision).await;
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
        .route("/tessera/v1/rbac/rules", axum::routing::post(rbac_rules))
        .route(crate::destinations::PATH, get(crate::destinations::handler))
        .route(crate::expiry::PATH, get(crate::expiry::handler))
        .route(crate::policy::PATH, get(crate::policy::handler))
        .route(crate::policy::EXPLAIN_PATH, get(crate::policy::handler))
        .route(crate::policy::WHO_CAN_REACH_PATH, get(crate::policy::handler))
        .route("/tessera/v1/encryption/rewrite", axum::routing::post(encryption_rewrite))
        .route(crate::node::certificates::CLIENT_CERTIFICATE_PATH, axum::routing::post(crate::node::certificates::client_certificate))
        .route("/openapi/v2", get(|_authorized: Authorized, headers: HeaderMap| async move { crate::openapi_v2::respond(&headers) }))
        .route("/openapi/v3", get(|| async { json_response(StatusCode::OK, crate::openapi::index()) }))
        .route("/openapi/v3/{*path}", get(openapi_document))
        .fallback(resource_request)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
        // Added after the layers, so outside them: static files anyone may
        // fetch; the page's data calls go through the layers like any client's.
        .merge(crate::ui::routes())
}

/// Metric labels come from fixed sets only: arbitrary paths must not create series.
fn metric_labels(parsed: &ParsedRequest) -> (&'static str, &'static str) {
    match parsed {
        ParsedRequest::Resource(r) => (r.verb.as_str(), r.kind.map_or("other", |k| k.plural)),
        ParsedRequest::Policy(p) => (if p.verb == "get" { "get" } else { "other" }, ""),
        ParsedRequest::NonResource(n) => {
            let verb = match n.verb.as_str() {
                "get" => "get",
                "post" => "post",
                "put" => "put",
                _ => "other",
            };
            (verb, "")
        }
    }
}

/// Parses the request (the only place its path and query are read), runs it
/// and records metrics.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Go's server refuses a path it cannot decode before anything else runs.
    let parsed = match request::parse(req.method(), req.uri().path(), req.uri().query()) {
        Ok(parsed) => parsed,
        Err(invalid) => return Failure(invalid.into()).into_response(),
    };
    let (verb, resource) = metric_labels(&parsed);
    req.extensions_mut().insert(parsed);
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

/// Replaces the parsed request with the authorizer's verdict on it: an
/// [`Authorized`] request for the handler, or the 403.
async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let (Some(user), Some(parsed)) = (req.extensions().get::<Arc<UserInfo>>().cloned(), req.extensions_mut().remove::<ParsedRequest>())
    else {
        tracing::error!("authorize ran without authentication or a parsed request");
        return Failure(ApiError::internal("authorization failed")).into_response();
    };
    match crate::authz::authorize(&state.authz, &state.rbac, &state.nodes, &user, parsed) {
        Ok(authorized) => {
            req.extensions_mut().insert(authorized);
            next.run(req).await
        }
        Err(err) => {
            tracing::debug!(user = %user.username, message = %err.message, "forbidden");
            Failure(err).into_response()
        }
    }
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

/// The segments of the authorized path of a non-resource request (the
/// discovery and OpenAPI handlers read their parameters from the request as
/// it was authorized, like every handler).
fn authorized_segments(authorized: &Authorized) -> Vec<&str> {
    match authorized.request() {
        ParsedRequest::NonResource(n) => n.path.split('/').filter(|s| !s.is_empty()).collect(),
        ParsedRequest::Resource(_) | ParsedRequest::Policy(_) => Vec::new(),
    }
}

async fn core_resources(authorized: Authorized) -> HandlerResult {
    let ["api", version] = authorized_segments(&authorized)[..] else { return Err(ApiError::no_such_resource().into()) };
    let list = discovery::resource_list("", version).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &list))
}

async fn group(authorized: Authorized) -> HandlerResult {
    let ["apis", group] = authorized_segments(&authorized)[..] else { return Err(ApiError::no_such_resource().into()) };
    let doc = discovery::group(group).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &doc))
}

async fn group_resources(authorized: Authorized) -> HandlerResult {
    let ["apis", group, version] = authorized_segments(&authorized)[..] else { return Err(ApiError::no_such_resource().into()) };
    let list = discovery::resource_list(group, version).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, &list))
}

/// Re-encrypts every covered object with the current key (after a key
/// rotation). Only callers allowed to POST this path (cluster admins) get here.
async fn encryption_rewrite(State(state): State<AppState>, _authorized: Authorized) -> HandlerResult {
    let Some(encrypted) = &state.encryption else {
        return Err(ApiError::bad_request("encryption at rest is not configured (--encryption-provider-config)").into());
    };
    let report = encrypted.rewrite(&["/registry/"]).await.map_err(|e| ApiError::internal(format!("rewrite: {e}")))?;
    tracing::info!(rewritten = report.rewritten, current = report.current, "encryption rewrite");
    Ok(json_response(StatusCode::OK, &json!({"rewritten": report.rewritten, "current": report.current})))
}

async fn rbac_explain(State(state): State<AppState>, _authorized: Authorized, body: Body) -> HandlerResult {
    let query = rbac_query::<crate::rbac::RbacQuery>(body).await?;
    Ok(json_response(StatusCode::OK, &crate::rbac::explain(&state.rbac, &query)?))
}

async fn rbac_who_can(State(state): State<AppState>, _authorized: Authorized, body: Body) -> HandlerResult {
    let query = rbac_query::<crate::rbac::RbacQuery>(body).await?;
    Ok(json_response(StatusCode::OK, &crate::rbac::who_can(&state.rbac, &query)?))
}

async fn rbac_rules(State(state): State<AppState>, _authorized: Authorized, body: Body) -> HandlerResult {
    let query = rbac_query::<crate::rbac::RulesQuery>(body).await?;
    Ok(json_response(StatusCode::OK, &crate::rbac::rules(&state.rbac, &query)))
}

/// The JSON body of a `/tessera/v1/rbac/*` question, bounded like every
/// other body; a malformed one is a 400 Status, as kube words decode errors.
async fn rbac_query<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the request body is not a valid query: {e}")))
}

async fn openapi_document(authorized: Authorized) -> HandlerResult {
    let path = match authorized.request() {
        ParsedRequest::NonResource(n) => n.path.strip_prefix("/openapi/v3/").unwrap_or_default(),
        ParsedRequest::Resource(_) | ParsedRequest::Policy(_) => "",
    };
    let doc = crate::openapi::group_version(path).ok_or_else(ApiError::no_such_resource)?;
    Ok(json_response(StatusCode::OK, doc))
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

/// The body of a create-only kind (a review), to be decoded once.
struct TypedBody<'a> {
    registry: &'a Registry,
    resource: &'static ResourceInfo,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    strict: bool,
}

impl TypedBody<'_> {
    /// The body as its kind's struct `T`. JSON goes straight into `T` when
    /// that decode takes it ([`tessera_api::decode::typed_json`]): reviews
    /// are the hot path, and a `Value` on the way costs about a sixth of the
    /// server's CPU under SubjectAccessReview load (BENCHMARKS.md). Any
    /// other body goes the generic way ([`Self::decode_value`]), so every
    /// refusal keeps its wording.
    fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !is_protobuf(self.headers)
            && let Some(typed) = tessera_api::decode::typed_json(self.body, self.strict)
        {
            return Ok(typed);
        }
        // Normalising went through `T` itself: only a bug fails here.
        serde_json::from_value(self.decode_value()?).map_err(|e| ApiError::internal(format!("a normalised {} does not decode: {e}", self.resource.kind)))
    }

    /// The body decoded by its Content-Type and normalised through its kind's struct.
    fn decode_value(&self) -> Result<Value, ApiError> {
        self.registry.normalise(self.resource, decode_body(self.headers, self.body, self.resource.kind)?, self.strict)
    }
}

/// Whether a request body is Kubernetes protobuf; any other is read as JSON.
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with(tessera_api::protobuf::MEDIA_TYPE))
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

/// Reads a request body of at most [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    read_body_limited(body, MAX_BODY_BYTES).await
}

/// Reads a request body of at most `limit` bytes: a longer one is 413; one
/// that breaks off (or misses the serve layer's deadline, which then answers
/// 504 instead) is 400.
pub(crate) async fn read_body_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        if err.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

/// Every `/api/v1/…` and `/apis/G/V/…` resource path: executes exactly the
/// request the authorizer allowed. Failures are `Status` objects in the
/// encoding the client prefers (protobuf when it asks for it).
async fn resource_request(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    authorized: Authorized,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A policy API spelled with percent escapes is that API once decoded (as Go
    // reads paths): it runs as authorized, never as a path the router missed.
    if let ParsedRequest::Policy(_) = authorized.request() {
        return crate::policy::handler(State(state), authorized).await.into_response();
    }
    let errors = crate::negotiate::encoding(accept(&headers), true).unwrap_or(crate::negotiate::Encoding::Json);
    match execute(&state, user, authorized, headers, body).await {
        Ok(response) => response,
        Err(Failure(err)) => crate::response::failure_in(err, errors),
    }
}

/// The encoding of a get, list or watch response of `resource`.
fn response_encoding(resource: &ResourceInfo, accept: &str) -> Result<crate::negotiate::Encoding, ApiError> {
    crate::negotiate::encoding(accept, tessera_api::protobuf::encodes(&resource.api_version(), resource.kind))
}

async fn execute(state: &AppState, user: Arc<UserInfo>, authorized: Authorized, headers: HeaderMap, body: Body) -> HandlerResult {
    let ParsedRequest::Resource(request) = authorized.request() else {
        return Err(ApiError::no_such_resource().into());
    };
    let resource = request.kind.ok_or_else(ApiError::no_such_resource)?;
    let options = request.options.clone()?;
    let (name, subresource) = match &request.target {
        Target::Collection => ("", None),
        Target::Object(name) => (name.as_str(), None),
        Target::Subresource(name, sub) => (name.as_str(), Some(sub.as_str())),
    };
    // Cluster-scoped kinds are not served under a namespace. The one exception is
    // a namespace object itself (`/namespaces/{n}[/status|/finalize]`), which
    // request parsing files under namespace {n}; `/namespaces/{a}/namespaces/{b}`
    // must not reach namespace {b} with permissions granted in {a}.
    let namespace = if resource.namespaced { request.namespace.as_deref() } else { None };
    let namespace_itself = resource.plural == "namespaces" && request.namespace.as_deref() == Some(name);
    if !resource.namespaced && request.namespace.is_some() && !namespace_itself {
        return Err(ApiError::no_such_resource().into());
    }
    let verb = request.verb;
    if resource.namespaced && namespace.is_none() && !matches!(verb, Verb::List | Verb::Watch) {
        return Err(ApiError::no_such_resource().into());
    }
    if resource.plural == "serviceaccounts" && subresource == Some("token") {
        if verb != Verb::Create {
            return Err(ApiError::method_not_supported(resource, verb.as_str()).into());
        }
        let body = decode_body(&headers, &read_body(body).await?, "TokenRequest")?;
        let ns = namespace.unwrap_or_default();
        let node = crate::node::identify(&user);
        return state.tokens.token_request(&state.registry, &node, ns, name, body).await;
    }
    if resource.plural == "pods" && subresource == Some("proxy") {
        let ns = namespace.unwrap_or_default();
        return Ok(crate::pod_proxy::serve(&state.registry, &user.username, resource, ns, name, request.proxy_path.as_deref(), verb).await?);
    }
    let write_options =
        WriteOptions { dry_run: options.dry_run, strict: options.strict, admit_delete: delete_admission(&user), ..WriteOptions::default() };
    if let tessera_api::resource::Storage::Virtual = resource.storage {
        if verb != Verb::Create || request.target != Target::Collection {
            return Err(ApiError::method_not_supported(resource, verb.as_str()).into());
        }
        let body = read_body(body).await?;
        let typed = TypedBody { registry: &state.registry, resource, headers: &headers, body: &body, strict: write_options.strict };
        return match (resource.group, resource.plural) {
            ("authentication.k8s.io", "tokenreviews") => state.tokens.token_review(typed.decode()?),
            ("authentication.k8s.io", "selfsubjectreviews") => {
                // The body asks nothing, but a malformed one is refused as kube refuses it.
                typed.decode_value()?;
                crate::tokens::self_subject_review(&user)
            }
            ("authorization.k8s.io", plural) => {
                let review = match plural {
                    "subjectaccessreviews" => AccessReview::Subject(typed.decode()?),
                    "localsubjectaccessreviews" => AccessReview::Local(typed.decode()?),
                    "selfsubjectaccessreviews" => AccessReview::Own(typed.decode()?),
                    "selfsubjectrulesreviews" => return crate::rbac::rules_review(&state.rbac, &user, typed.decode_value()?),
                    _ => return Err(ApiError::no_such_resource().into()),
                };
                crate::access_review::answer(&state.rbac, &state.nodes, &user, namespace, &review)
            }
            _ => Err(ApiError::no_such_resource().into()),
        };
    }
    let verbs = match subresource {
        None => resource.verbs,
        Some(sub) => match resource.subresources.iter().find(|s| s.name == sub && s.group.is_empty()) {
            Some(s) => s.verbs,
            None => return Err(ApiError::no_such_resource().into()),
        },
    };
    if !verbs.contains(&verb.as_str()) {
        return Err(ApiError::method_not_supported(resource, verb.as_str()).into());
    }
    let registry = &state.registry;
    let scope = match subresource {
        Some("status") => WriteScope::Status,
        Some("finalize") => WriteScope::Finalizers,
        _ => WriteScope::Object,
    };
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let field_manager = options.field_manager.clone().filter(|m| !m.is_empty());
    let admitted = || WriteOptions {
        admit: admission(state, &user, resource, scope),
        mutate_create: Some(crate::admission::service_account::mutate_create()),
        scope,
        field_manager: Some(field_manager.clone().unwrap_or_else(|| tessera_api::apply::manager_from_user_agent(user_agent))),
        force: options.force == Some(true),
        ..write_options.clone()
    };
    let accept = accept(&headers).to_owned();
    let include_object = options.include_object.as_str();
    match verb {
        Verb::Get => {
            let obj = registry.get_body(resource, namespace, name, options.list.resource_version.as_deref()).await?;
            if table::wants_table(&accept) {
                let t = table::table(resource, std::slice::from_ref(&obj.to_value()?), json!({}), include_object);
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(crate::response::encoded_object(&obj, response_encoding(resource, &accept)?)?)
        }
        Verb::List => {
            let list = registry.list_body(resource, namespace, &options.list).await?;
            let list = match list {
                // Composed from the items' cached JSON: nothing re-encoded.
                ListBody::Cached(list) if !table::wants_table(&accept) => {
                    return Ok(crate::response::cached_list(&list, response_encoding(resource, &accept)?));
                }
                other => other.into_value(resource),
            };
            if table::wants_table(&accept) {
                let items = list.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let meta = list.get("metadata").cloned().unwrap_or_default();
                let t = table::table(resource, items, meta, include_object);
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(crate::response::encoded(StatusCode::OK, &list, response_encoding(resource, &accept)?))
        }
        Verb::Watch => {
            let encoding = if table::wants_table(&accept) { crate::negotiate::Encoding::Json } else { response_encoding(resource, &accept)? };
            let format = crate::watch::Format::negotiate(&accept, encoding, include_object);
            crate::watch::serve(state, resource, namespace, &options.list, format, options.timeout).await
        }
        Verb::Create => {
            check_field_manager("CreateOptions", field_manager.as_deref())?;
            let body = decode_body(&headers, &read_body(body).await?, resource.kind)?;
            let obj = registry.create(resource, namespace, body, admitted()).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        Verb::Update => {
            check_field_manager("UpdateOptions", field_manager.as_deref())?;
            let body = decode_body(&headers, &read_body(body).await?, resource.kind)?;
            let mut write = admitted();
            if tessera_api::kinds::allows_create_on_update(resource) {
                let attrs = tessera_rbac::Request { verb: "create".into(), ..authorized.request().attributes() };
                write.admit = authorize_create_on_update(state, &user, attrs, write.admit.take());
            }
            let (obj, created) = registry.update_or_create(resource, namespace, name, body, write).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &obj))
        }
        Verb::Patch => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let patch = Patch::decode(content_type, &read_body(body).await?)?;
            check_patch_options(&patch, field_manager.as_deref(), options.force)?;
            if let Patch::Apply(config) = &patch {
                // An apply that creates the object answers 201, as kube-apiserver does.
                let (obj, created) = registry.apply(resource, namespace, name, config, admitted()).await?;
                state.caught_up(resource, &obj).await;
                return Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &obj));
            }
            let obj = registry.patch(resource, namespace, name, &patch, admitted()).await?;
            state.caught_up(resource, &obj).await;
            Ok(json_response(StatusCode::OK, &obj))
        }
        Verb::Delete => {
            let body = read_body(body).await?;
            let delete = delete_options(&headers, &body, &options)?;
            let mut write_options = write_options;
            write_options.dry_run |= delete.dry_run;
            let deletion = registry.delete_with(resource, namespace, name, &delete, write_options).await?;
            state.caught_up(resource, deletion.object()).await;
            // kube answers 202 only for a pending delete asked with `orphanDependents: false`.
            let pending = matches!(deletion, tessera_api::deletion::Deletion::Pending(_));
            let code = if pending && delete.accepted_when_pending() { StatusCode::ACCEPTED } else { StatusCode::OK };
            Ok(json_response(code, &deletion.response_body(resource)))
        }
        Verb::DeleteCollection => {
            let body = read_body(body).await?;
            let delete = delete_options(&headers, &body, &options)?;
            let mut write_options = write_options;
            write_options.dry_run |= delete.dry_run;
            let list = registry.delete_collection_with(resource, namespace, &options.list, &delete, write_options).await?;
            state.caught_up(resource, &list).await;
            Ok(json_response(StatusCode::OK, &list))
        }
    }
}

/// kube's `ValidateFieldManager`: at most 128 printable characters.
fn field_manager_causes(field_manager: Option<&str>) -> Vec<tessera_api::status::StatusCause> {
    let mut causes = Vec::new();
    let Some(m) = field_manager else { return causes };
    if m.len() > 128 {
        causes.push(tessera_api::status::field::too_long("fieldManager", 128));
    }
    for (i, c) in m.chars().enumerate() {
        if c.is_control() {
            causes.push(tessera_api::status::field::invalid(
                "fieldManager",
                &json!(m),
                &format!("invalid character U+{:04X} (at position {i})", u32::from(c)),
            ));
        }
    }
    causes
}

fn check_field_manager(options_kind: &str, field_manager: Option<&str>) -> Result<(), ApiError> {
    let causes = field_manager_causes(field_manager);
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(options_kind, "meta.k8s.io", "", causes)) }
}

/// kube's `ValidatePatchOptions`: apply needs a field manager; only apply takes `force`.
fn check_patch_options(patch: &Patch, field_manager: Option<&str>, force: Option<bool>) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if patch.is_apply() {
        if field_manager.is_none() {
            causes.push(tessera_api::status::field::required("fieldManager", "is required for apply patch"));
        }
    } else if force.is_some() {
        causes.push(tessera_api::status::field::forbidden("force", "may not be specified for non-apply patch"));
    }
    causes.extend(field_manager_causes(field_manager));
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid("PatchOptions", "meta.k8s.io", "", causes)) }
}

/// The admission checks of a create or update by `user`: RBAC escalation
/// prevention, then NodeRestriction for nodes, then Linkerd's policy
/// webhook for Servers.
fn admission(state: &AppState, user: &Arc<UserInfo>, resource: &'static ResourceInfo, scope: WriteScope) -> Option<tessera_api::registry::Admit> {
    let mut checks: Vec<tessera_api::registry::Admit> = Vec::new();
    checks.extend(crate::rbac::escalation_check(&state.rbac, user, resource));
    if crate::node::identify(user) != crate::node::NodeIdentity::NotANode {
        let user = user.clone();
        checks.push(Arc::new(move |resource: &ResourceInfo, old: Option<&Value>, new: &Value| {
            crate::node::admission::admit_write(&crate::node::identify(&user), resource, scope, old, new)
        }));
    }
    if crate::policy::admission::applies_to(resource) && scope == WriteScope::Object {
        checks.push(crate::policy::admission::admission(state.inbound_policy.cache.clone()));
    }
    match checks.len() {
        0 => None,
        1 => checks.pop(),
        _ => Some(Arc::new(move |resource: &ResourceInfo, old: Option<&Value>, new: &Value| {
            checks.iter().try_for_each(|check| check(resource, old, new))
        })),
    }
}

/// kube's `withAuthorization` on a PUT that creates: the user must also be
/// allowed to `create` (`attrs`), checked when the object turns out not to
/// exist (admission of a create is the one called without an old object);
/// refused with `NewForbidden(resource, name, reason)`.
fn authorize_create_on_update(
    state: &AppState,
    user: &Arc<UserInfo>,
    attrs: tessera_rbac::Request,
    admit: Option<tessera_api::registry::Admit>,
) -> Option<tessera_api::registry::Admit> {
    let verdict = crate::authz::decide(&state.rbac, &state.nodes, user, &attrs, None);
    Some(Arc::new(move |resource: &ResourceInfo, old: Option<&Value>, new: &Value| {
        if old.is_none()
            && let crate::authz::Verdict::Deny(reason) = &verdict
        {
            let qualified = if attrs.api_group.is_empty() { attrs.resource.clone() } else { format!("{}.{}", attrs.resource, attrs.api_group) };
            let message = format!("{qualified} {:?} is forbidden: {reason}", attrs.name);
            return Err(ApiError::forbidden(&attrs.resource, &attrs.api_group, &attrs.name, message));
        }
        match &admit {
            Some(check) => check(resource, old, new),
            None => Ok(()),
        }
    }))
}

/// The admission check of a delete by `user`: NodeRestriction for nodes.
fn delete_admission(user: &Arc<UserInfo>) -> Option<tessera_api::registry::AdmitDelete> {
    if crate::node::identify(user) == crate::node::NodeIdentity::NotANode {
        return None;
    }
    let user = user.clone();
    Some(Arc::new(move |resource: &ResourceInfo, current: &Value| {
        crate::node::admission::admit_delete(&crate::node::identify(&user), resource, current)
    }))
}

/// Reads `DeleteOptions` from a DELETE body, or from the query when there is
/// no body (kube-apiserver reads one or the other, never both).
fn delete_options(headers: &HeaderMap, body: &Bytes, options: &Options) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let (propagation, orphan) = &options.delete_query;
        return DeleteOptions::from_query(propagation.as_deref(), orphan.as_deref(), false);
    }
    let opts: Value = decode_body(headers, body, "DeleteOptions")?;
    DeleteOptions::from_body(&opts)
}
