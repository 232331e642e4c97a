//! Linkerd's policy kinds in group `policy.linkerd.io`, typed as Linkerd's
//! CRDs (`charts/linkerd-crds/templates/policy/*.yaml`, Linkerd 2.16+) name
//! their fields.
//!
//! | kind | versions served (storage version last) | short names |
//! |---|---|---|
//! | Server | v1alpha1 (deprecated), v1beta1 (deprecated), v1beta2, **v1beta3** | srv |
//! | ServerAuthorization | v1alpha1 (deprecated), **v1beta1** | saz, serverauthz, srvauthz |
//! | AuthorizationPolicy | **v1alpha1** | authzpolicy |
//! | MeshTLSAuthentication | **v1alpha1** | meshtlsauthn |
//! | NetworkAuthentication | **v1alpha1** | netauthn, networkauthn |
//! | HTTPRoute | v1alpha1, v1beta1, v1beta2, **v1beta3** | — |
//!
//! One struct serves every version of a kind: the later versions only add
//! optional fields (Server v1beta2 `externalWorkloadSelector`, v1beta3
//! `accessPolicy`; HTTPRoute v1beta2 `backendRefs`, v1beta3 `timeouts`) and
//! Linkerd's CRDs convert between versions with strategy `None` (same
//! fields, only `apiVersion` changes), so no field mapping is needed.
//!
//! Objects are [`Object`]s, generic over the metadata type so that the API
//! server can decode through k8s-openapi's `ObjectMeta` while other readers
//! (the policy compiler) use the light [`Metadata`]. Every optional field is
//! an `Option` so an object round-trips in its exact wire form; what is
//! required or well-formed is checked by [`crate::validate`], which gives
//! field-named errors instead of decode errors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every kind here.
pub const GROUP: &str = "policy.linkerd.io";

/// Versions served for each kind, oldest first; the last is the storage version.
pub mod versions {
    /// `servers.policy.linkerd.io`.
    pub const SERVER: &[&str] = &["v1alpha1", "v1beta1", "v1beta2", "v1beta3"];
    /// `serverauthorizations.policy.linkerd.io`.
    pub const SERVER_AUTHORIZATION: &[&str] = &["v1alpha1", "v1beta1"];
    /// `authorizationpolicies.policy.linkerd.io`.
    pub const AUTHORIZATION_POLICY: &[&str] = &["v1alpha1"];
    /// `meshtlsauthentications.policy.linkerd.io`.
    pub const MESH_TLS_AUTHENTICATION: &[&str] = &["v1alpha1"];
    /// `networkauthentications.policy.linkerd.io`.
    pub const NETWORK_AUTHENTICATION: &[&str] = &["v1alpha1"];
    /// `httproutes.policy.linkerd.io`.
    pub const HTTP_ROUTE: &[&str] = &["v1alpha1", "v1beta1", "v1beta2", "v1beta3"];
}

/// A policy object: `apiVersion`, `kind`, `metadata`, `spec` and (HTTPRoute only) `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "M: Deserialize<'de> + Default, S: Deserialize<'de> + Default, St: Deserialize<'de>")
)]
#[schemars(bound = "M: JsonSchema + Default + Serialize, S: JsonSchema + Default + Serialize, St: JsonSchema")]
pub struct Object<M, S, St = NoStatus> {
    /// `policy.linkerd.io/VERSION`.
    #[serde(default)]
    pub api_version: String,
    /// The kind.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: M,
    /// What the object asks for.
    #[serde(default)]
    pub spec: S,
    /// Written by Linkerd's policy controller (HTTPRoute only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<St>,
}

/// The status of a kind that has none: never present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NoStatus {}

/// The metadata fields policy evaluation reads (other fields are ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Object namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (ServerAuthorization `server.selector` selects Servers by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Resource version (for change detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// `policy.linkerd.io` Server.
pub type Server<M = Metadata> = Object<M, ServerSpec>;
/// `policy.linkerd.io` ServerAuthorization.
pub type ServerAuthorization<M = Metadata> = Object<M, ServerAuthorizationSpec>;
/// `policy.linkerd.io` AuthorizationPolicy.
pub type AuthorizationPolicy<M = Metadata> = Object<M, AuthorizationPolicySpec>;
/// `policy.linkerd.io` MeshTLSAuthentication.
pub type MeshTlsAuthentication<M = Metadata> = Object<M, MeshTlsAuthenticationSpec>;
/// `policy.linkerd.io` NetworkAuthentication.
pub type NetworkAuthentication<M = Metadata> = Object<M, NetworkAuthenticationSpec>;
/// `policy.linkerd.io` HTTPRoute.
pub type HttpRoute<M = Metadata> = Object<M, HttpRouteSpec, HttpRouteStatus>;

// === shared pieces ===

/// A Kubernetes label selector (`matchLabels` and `matchExpressions` are ANDed; empty selects all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[serde(default)]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[serde(default)]
    pub operator: String,
    /// Values for `In`/`NotIn`; must be empty for `Exists`/`DoesNotExist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// A port by number or by name (`x-kubernetes-int-or-string`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    /// A port number (validated to 1..=65535).
    Number(i64),
    /// A container port name (validated as an IANA_SVC_NAME).
    Name(String),
}

impl Default for Port {
    fn default() -> Self {
        Port::Number(0)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Number(n) => write!(f, "{n}"),
            Port::Name(s) => f.write_str(s),
        }
    }
}

impl JsonSchema for Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "io.linkerd.policy.Port".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // As kube publishes IntOrString (`kubectl explain` shows <IntOrString>).
        schemars::json_schema!({
            "description": "IntOrString is a type that can hold an int32 or a string.  When used in JSON or YAML marshalling and unmarshalling, it produces or consumes the inner type.  This allows you to have, for example, a JSON field that can accept a name or number.",
            "type": "string",
            "format": "int-or-string",
        })
    }
}

/// A client network: a CIDR minus exceptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// The CIDR of the network to be authorized (an address alone is a /32 or /128).
    #[serde(default)]
    pub cidr: String,
    /// IP networks/addresses not to be included in `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// A reference to a resource in the object's own namespace (AuthorizationPolicy `targetRef`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalTargetRef {
    /// Group of the referent; empty is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the referent.
    #[serde(default)]
    pub kind: String,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
}

/// A reference to a resource, optionally in another namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedTargetRef {
    /// Group of the referent; empty is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the referent.
    #[serde(default)]
    pub kind: String,
    /// Name of the referent. Required except in MeshTLSAuthentication
    /// `identityRefs`, where unset means every object of the kind (e.g. every
    /// ServiceAccount in the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the referent; unset is the local namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// === Server ===

/// Selects a port on a set of pods in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Selects pods in the same namespace. The result of matchLabels and
    /// matchExpressions are ANDed. Selects all if empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Selects ExternalWorkloads in the same namespace (v1beta2+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_workload_selector: Option<LabelSelector>,
    /// A port name or number. Must exist in a pod spec.
    #[serde(default)]
    pub port: Port,
    /// Configures protocol discovery for inbound connections: `unknown`
    /// (default), `HTTP/1`, `HTTP/2`, `gRPC`, `opaque` or `TLS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// Default access policy to apply when the traffic doesn't match any of
    /// the policy rules (v1beta3; defaults to `deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
}

/// `proxyProtocol` values Linkerd accepts.
pub const PROXY_PROTOCOLS: &[&str] = &["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"];

/// `accessPolicy` values Linkerd accepts (its default inbound policies).
pub const ACCESS_POLICIES: &[&str] =
    &["all-unauthenticated", "all-authenticated", "cluster-authenticated", "cluster-unauthenticated", "deny", "audit"];

// === ServerAuthorization ===

/// Authorizes clients to communicate with Linkerd-proxied servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerAuthorizationSpec {
    /// Identifies servers in the same namespace for which this authorization
    /// applies. Only one of `name` or `selector` may be specified.
    #[serde(default)]
    pub server: ServerSelector,
    /// Describes clients authorized to access a server.
    #[serde(default)]
    pub client: Client,
}

/// ServerAuthorization `server`: by name or by label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSelector {
    /// References a `Server` instance by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label query over servers on which this authorization applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// ServerAuthorization `client`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// Limits the client IP addresses to which this authorization applies.
    /// If unset, the server chooses a default (the cluster networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<Network>>,
    /// Authorizes unauthenticated clients to access a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
    /// Authorizes mutually-authenticated clients.
    #[serde(default, rename = "meshTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
}

/// ServerAuthorization `client.meshTLS`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshTls {
    /// Indicates that no client identity is required for communication.
    #[serde(default, rename = "unauthenticatedTLS", skip_serializing_if = "Option::is_none")]
    pub unauthenticated_tls: Option<bool>,
    /// Authorizes clients with the provided proxy identity strings (as
    /// provided via mTLS). The `*` prefix matches all identities in a domain;
    /// `*` alone matches every authenticated client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
    /// Authorizes clients with the provided proxy identity service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<ServiceAccountRef>>,
}

/// A ServiceAccount by name (and namespace; unset is the authorization's namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// The ServiceAccount's name.
    #[serde(default)]
    pub name: String,
    /// The ServiceAccount's namespace. If unset, the authorization's namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// === AuthorizationPolicy ===

/// Authorizes clients to communicate with Linkerd-proxied server resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The resource the policy applies to: a Server, an HTTPRoute or a Namespace.
    #[serde(default)]
    pub target_ref: LocalTargetRef,
    /// Authentications that must ALL be satisfied for the authorization to
    /// apply (MeshTLSAuthentication, NetworkAuthentication, ServiceAccount).
    /// If any referred object cannot be found, the authorization is ignored.
    #[serde(default)]
    pub required_authentication_refs: Vec<NamespacedTargetRef>,
}

// === MeshTLSAuthentication ===

/// A list of authenticated client IDs to be referenced by an AuthorizationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    /// Proxy identity strings (`*` prefix matches a domain; `*` every authenticated client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
    /// References to ServiceAccounts (or `kind: Namespace`) whose identities match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_refs: Option<Vec<NamespacedTargetRef>>,
}

// === NetworkAuthentication ===

/// A list of client networks to be referenced by an AuthorizationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAuthenticationSpec {
    /// The networks; a client from ANY of them is authenticated.
    #[serde(default)]
    pub networks: Vec<Network>,
}

// === HTTPRoute ===

/// Routes HTTP requests to a Server by path, header, query parameter and method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The resources the route attaches to (in Linkerd: a Server, or a Service for outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_refs: Option<Vec<ParentReference>>,
    /// Hostnames matched against the Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnames: Option<Vec<String>>,
    /// HTTP matchers, filters and actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<HttpRouteRule>>,
}

/// A route's parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Group of the referent (defaults to `policy.linkerd.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the referent (`Server`, or `Service` with group `core`/empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the referent; unset is the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
    /// A section within the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// One rule: matches, filters, backends and timeouts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Conditions ORed together; empty matches every request (as `PathPrefix /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<HttpRouteMatch>>,
    /// Processing steps for matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<HttpRouteFilter>>,
    /// Where matching requests are sent (outbound routes; v1beta2+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<HttpBackendRef>>,
    /// Request timeouts (v1beta3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// Conditions on a request, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Request headers, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<HttpHeaderMatch>>,
    /// Query parameters, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<Vec<HttpQueryParamMatch>>,
    /// The request method (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The path to match (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Header name (case-insensitive).
    #[serde(default)]
    pub name: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
}

/// A query parameter match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpQueryParamMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Parameter name.
    #[serde(default)]
    pub name: String,
    /// Parameter value.
    #[serde(default)]
    pub value: String,
}

/// A filter: header modifiers or a redirect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or `RequestRedirect`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HttpHeaderFilter>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HttpHeaderFilter>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<HttpRequestRedirectFilter>,
}

/// Header modifications.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderFilter {
    /// Headers to overwrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HttpHeader>>,
    /// Headers to append to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HttpHeader>>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<String>>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
}

/// A redirect response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestRedirectFilter {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Hostname for the Location header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    /// Port for the Location header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// 301 or 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
}

/// A path rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// For `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// A backend of an outbound route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// Group of the referent (core when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the referent (`Service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
    /// Namespace of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Relative share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Filters for this backend only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<HttpRouteFilter>>,
}

/// Rule timeouts (Gateway API durations such as `10s`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Timeout for the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Timeout for each request to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// HTTPRoute status, as written by a route controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteStatus {
    /// Per-parent status.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// One parent's view of the route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent.
    #[serde(default)]
    pub parent_ref: ParentReference,
    /// The controller that wrote this status.
    #[serde(default)]
    pub controller_name: String,
    /// Conditions (`Accepted`, ...), as metav1.Condition objects.
    #[serde(default)]
    pub conditions: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_round_trips_in_wire_form() {
        let v = serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
            "metadata": {"name": "web-http", "namespace": "emojivoto"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": "http", "proxyProtocol": "HTTP/1"},
        });
        let s: Server = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.spec.port, Port::Name("http".into()));
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let n: Server = serde_json::from_value(serde_json::json!({"spec": {"port": 8080}})).unwrap();
        assert_eq!(n.spec.port, Port::Number(8080));
    }

    #[test]
    fn server_authorization_keeps_mesh_tls_spelling() {
        let v = serde_json::json!({
            "apiVersion": "policy.linkerd.io/v1beta1", "kind": "ServerAuthorization",
            "metadata": {"name": "a"},
            "spec": {"server": {"name": "web"}, "client": {"meshTLS": {"serviceAccounts": [{"name": "web"}]}}},
        });
        let s: ServerAuthorization = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.spec.client.mesh_tls.as_ref().unwrap().service_accounts.as_ref().unwrap()[0].name, "web");
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }
}
