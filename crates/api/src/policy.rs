//! Linkerd's policy kinds (`policy.linkerd.io`, typed in `tessera-policy`)
//! in the resource table: one [`ResourceInfo`] per served version, all of a
//! kind sharing one storage (the key has no version; reads rewrite
//! `apiVersion`, see `registry::in_version`), with the CRDs' printer
//! columns, defaults and admission checks.

use std::borrow::Cow;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde_json::{Value, json};
use tessera_policy::resources as policy;

use crate::decode;
use crate::kinds::Column;
use crate::resource::{ResourceInfo, Storage, schema_of};
use crate::status::StatusCause;

/// The API group.
pub const GROUP: &str = policy::GROUP;

type Server = policy::Server<ObjectMeta>;
type ServerAuthorization = policy::ServerAuthorization<ObjectMeta>;
type AuthorizationPolicy = policy::AuthorizationPolicy<ObjectMeta>;
type MeshTlsAuthentication = policy::MeshTlsAuthentication<ObjectMeta>;
type NetworkAuthentication = policy::NetworkAuthentication<ObjectMeta>;
type HttpRoute = policy::HttpRoute<ObjectMeta>;

/// Names one kind's schema in one version (`io.linkerd.policy.v1beta3.Server`).
pub trait SchemaName {
    /// The OpenAPI definition name.
    const NAME: &'static str;
    /// The top-level description (`kubectl explain KIND`).
    const DESCRIPTION: &'static str;
}

/// A kind's typed struct under a per-version schema name: the versions
/// share one struct but OpenAPI needs one definition per group/version/kind.
pub struct Versioned<N, T>(PhantomData<(N, T)>);

impl<N: SchemaName, T: JsonSchema> JsonSchema for Versioned<N, T> {
    fn schema_name() -> Cow<'static, str> {
        N::NAME.into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = T::json_schema(generator);
        schema.insert("description".into(), json!(N::DESCRIPTION));
        schema
    }
}

const CRUD_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

macro_rules! policy_kind {
    ($name:ident, $marker:ident, $version:literal, $kind:literal, $plural:literal, $singular:literal, $short:expr, $hash:literal, $ty:ty, $desc:literal) => {
        #[doc = concat!("Schema name of `policy.linkerd.io/", $version, "` ", $kind, ".")]
        pub struct $marker;
        impl SchemaName for $marker {
            const NAME: &'static str = concat!("io.linkerd.policy.", $version, ".", $kind);
            const DESCRIPTION: &'static str = $desc;
        }
        #[doc = concat!("`policy.linkerd.io/", $version, "` ", $plural, ".")]
        pub static $name: ResourceInfo = ResourceInfo {
            group: GROUP,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: true,
            short_names: $short,
            categories: &[],
            verbs: CRUD_VERBS,
            subresources: &[],
            storage: Storage::Stored,
            decode: decode::typed::<$ty>,
            schema: schema_of::<Versioned<$marker, $ty>>,
            storage_version_hash: $hash,
        };
    };
}


macro_rules! server {
    ($name:ident, $marker:ident, $version:literal) => {
        policy_kind!($name, $marker, $version, "Server", "servers", "server", &["srv"], "XU/0K3gMRm0=", Server, "Server selects a port on a set of pods in the same namespace; once a Server selects a pod's port, traffic to it is denied unless an authorization allows it.");
    };
}
macro_rules! saz {
    ($name:ident, $marker:ident, $version:literal) => {
        policy_kind!($name, $marker, $version, "ServerAuthorization", "serverauthorizations", "serverauthorization", &["saz", "serverauthz", "srvauthz"], "RJT1h+0juMY=", ServerAuthorization, "ServerAuthorization authorizes clients to communicate with Linkerd-proxied servers.");
    };
}
macro_rules! httproute {
    ($name:ident, $marker:ident, $version:literal) => {
        policy_kind!($name, $marker, $version, "HTTPRoute", "httproutes", "httproute", &[], "KqUexDwXrfA=", HttpRoute, "HTTPRoute provides a way to route HTTP requests. This includes the capability to match requests by hostname, path, header, or query param.");
    };
}

server!(SERVERS_V1BETA3, ServerV1beta3, "v1beta3");
server!(SERVERS_V1BETA2, ServerV1beta2, "v1beta2");
server!(SERVERS_V1BETA1, ServerV1beta1, "v1beta1");
server!(SERVERS_V1ALPHA1, ServerV1alpha1, "v1alpha1");
saz!(SERVERAUTHORIZATIONS_V1BETA1, ServerAuthorizationV1beta1, "v1beta1");
saz!(SERVERAUTHORIZATIONS_V1ALPHA1, ServerAuthorizationV1alpha1, "v1alpha1");
policy_kind!(
    AUTHORIZATIONPOLICIES_V1ALPHA1, AuthorizationPolicyV1alpha1, "v1alpha1", "AuthorizationPolicy", "authorizationpolicies", "authorizationpolicy",
    &["authzpolicy"], "k/GxEy5eU4Q=", AuthorizationPolicy,
    "AuthorizationPolicy authorizes clients to communicate with Linkerd-proxied server resources: its targetRef (a Server, an HTTPRoute or a Namespace) is reached only by clients satisfying all of its requiredAuthenticationRefs."
);
policy_kind!(
    MESHTLSAUTHENTICATIONS_V1ALPHA1, MeshTlsAuthenticationV1alpha1, "v1alpha1", "MeshTLSAuthentication", "meshtlsauthentications", "meshtlsauthentication",
    &["meshtlsauthn"], "w2YQUxJ5Aas=", MeshTlsAuthentication,
    "MeshTLSAuthentication defines a list of authenticated client IDs to be referenced by an AuthorizationPolicy. If a client connection has the mutually-authenticated identity that matches ANY of the provided identities, the connection is considered authenticated."
);
policy_kind!(
    NETWORKAUTHENTICATIONS_V1ALPHA1, NetworkAuthenticationV1alpha1, "v1alpha1", "NetworkAuthentication", "networkauthentications", "networkauthentication",
    &["netauthn", "networkauthn"], "Nl1D5mvJJgs=", NetworkAuthentication,
    "NetworkAuthentication defines a list of authenticated client networks to be referenced by an AuthorizationPolicy. If a client connection originates from ANY of the provided networks, the connection is considered authenticated."
);
httproute!(HTTPROUTES_V1BETA3, HttpRouteV1beta3, "v1beta3");
httproute!(HTTPROUTES_V1BETA2, HttpRouteV1beta2, "v1beta2");
httproute!(HTTPROUTES_V1BETA1, HttpRouteV1beta1, "v1beta1");
httproute!(HTTPROUTES_V1ALPHA1, HttpRouteV1alpha1, "v1alpha1");

/// Whether `resource` is one of the policy kinds.
pub fn is_policy(resource: &ResourceInfo) -> bool {
    resource.group == GROUP
}

/// Applies the CRD defaults.
pub fn default_object(resource: &ResourceInfo, obj: &mut Value) {
    tessera_policy::validate::default_object(resource.kind, resource.version, obj);
}

/// The admission checks, as 422 causes.
pub fn validate(resource: &ResourceInfo, obj: &Value, causes: &mut Vec<StatusCause>) {
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let found = tessera_policy::validate::validate(resource.kind, resource.version, namespace, obj);
    causes.extend(found.into_iter().map(|c| StatusCause { reason: c.reason.into(), message: c.message, field: c.field }));
}

/// The CRD's `additionalPrinterColumns` after NAME; a version without any
/// gets the CRD default, Age.
fn printer_columns(resource: &ResourceInfo) -> &'static [(&'static str, &'static str, &'static str, &'static str)] {
    // (name, type, description, JSON pointer)
    const PORT: (&str, &str, &str, &str) = ("Port", "string", "The port the server is listening on", "/spec/port");
    const PROTOCOL: (&str, &str, &str, &str) = ("Protocol", "string", "The protocol of the server", "/spec/proxyProtocol");
    const ACCESS: (&str, &str, &str, &str) =
        ("Access Policy", "string", "The default access policy applied when the traffic doesn't match any of the policy rules", "/spec/accessPolicy");
    const AGE: (&str, &str, &str, &str) = ("Age", "date", "", "/metadata/creationTimestamp");
    match (resource.kind, resource.version) {
        ("Server", "v1beta3") => &[PORT, PROTOCOL, ACCESS],
        ("Server", "v1beta1" | "v1beta2") => &[PORT, PROTOCOL],
        ("ServerAuthorization", "v1beta1") => &[("Server", "string", "The server that this grants access to", "/spec/server/name")],
        ("HTTPRoute", _) => &[("Hostnames", "string", "", "/spec/hostnames"), AGE],
        _ => &[AGE],
    }
}

/// Table columns for `kubectl get`.
pub fn columns(resource: &ResourceInfo) -> Vec<Column> {
    let name = Column { name: "Name", type_: "string", format: "name", description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", priority: 0 };
    let mut out = vec![name];
    out.extend(printer_columns(resource).iter().map(|(name, type_, description, _)| Column { name, type_, format: "", description, priority: 0 }));
    out
}

/// One table row's cells: as kube's CRD table convertor renders them
/// (`date` as an age, other values as printed, missing as null).
pub fn row_cells(resource: &ResourceInfo, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
    for (_, type_, _, pointer) in printer_columns(resource) {
        let cell = match (obj.pointer(pointer), *type_) {
            (None | Some(Value::Null), _) => Value::Null,
            (Some(Value::String(t)), "date") => match t.parse::<jiff::Timestamp>() {
                Ok(t) => json!(crate::kinds::human_age(now.as_second() - t.as_second())),
                Err(_) => json!("<invalid>"),
            },
            (Some(Value::String(s)), _) => json!(s),
            (Some(other), _) => json!(other.to_string()),
        };
        cells.push(cell);
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_rows_show_port_and_protocol() {
        let obj = json!({"metadata": {"name": "web-http"}, "spec": {"port": 8080, "proxyProtocol": "HTTP/1", "accessPolicy": "deny"}});
        let now = jiff::Timestamp::now();
        assert_eq!(row_cells(&SERVERS_V1BETA3, &obj, now), [json!("web-http"), json!("8080"), json!("HTTP/1"), json!("deny")]);
        assert_eq!(row_cells(&SERVERS_V1BETA1, &obj, now), [json!("web-http"), json!("8080"), json!("HTTP/1")]);
        let names: Vec<_> = columns(&SERVERS_V1BETA3).iter().map(|c| c.name).collect();
        assert_eq!(names, ["Name", "Port", "Protocol", "Access Policy"]);
        let names: Vec<_> = columns(&MESHTLSAUTHENTICATIONS_V1ALPHA1).iter().map(|c| c.name).collect();
        assert_eq!(names, ["Name", "Age"]);
    }

    #[test]
    fn every_version_decodes_through_the_typed_struct() {
        for r in crate::resource::RESOURCES.iter().filter(|r| is_policy(r)) {
            let body = json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}, "spec": {}, "bogus": 1});
            let out = r.decode(body.clone(), false).expect("decodes");
            assert_eq!(out["apiVersion"], json!(r.api_version()));
            assert!(out.get("bogus").is_none());
            assert!(r.decode(body, true).is_err(), "strict refuses unknown fields");
        }
    }
}
