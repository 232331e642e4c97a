//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`): request bodies
//! decoded into JSON objects, and JSON objects, lists and `Status` errors
//! encoded for responses.
//!
//! kubectl's typed clients (`kubectl create namespace|serviceaccount|secret|
//! configmap|token|role…`, `kubectl auth can-i`, `kubectl auth whoami`) send
//! their bodies as protobuf and never fall back to JSON, so the server must read
//! them; client-go asks for protobuf responses for built-in kinds.
//!
//! The wire format is the `k8s\0` magic followed by a `runtime.Unknown`
//! envelope whose `raw` field holds the object's message. Messages go through
//! small schema tables (field number → JSON name and type), one table for both
//! directions, for exactly the kinds tessera encodes; field numbers are those
//! of Kubernetes' `generated.proto` files. Decoding skips unknown fields;
//! malformed input is an error, never a panic.
//!
//! Encoding writes what Go's generated marshallers write: fields in field-number
//! order, map entries sorted by key, and every non-pointer field (strings,
//! numbers, bools, embedded messages) even when empty, so the bytes equal
//! kube-apiserver's. A JSON field the table does not know is an error
//! ([`ProtobufError::Unencodable`]) rather than silently dropped: the caller
//! answers JSON instead.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The bytes are not valid protobuf (truncated, bad varint, bad wire type, bad UTF-8).
    #[error("invalid protobuf: {0}")]
    Malformed(&'static str),
    /// The envelope names a kind this server does not decode.
    #[error("no protobuf schema for {api_version}, Kind={kind}")]
    UnknownKind {
        /// apiVersion from the envelope.
        api_version: String,
        /// kind from the envelope.
        kind: String,
    },
    /// The object holds something its table cannot carry (a field it does not
    /// know, or a value of the wrong JSON type): encoding it would lose data.
    #[error("cannot encode as protobuf: {0}")]
    Unencodable(String),
}

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    /// `metav1.Time`: RFC 3339 seconds in JSON, `Timestamp{seconds, nanos}` on the wire.
    Time,
    /// `metav1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    Msg(&'static [Field]),
    StrMap,
    BytesMap,
    /// `map<string, ExtraValue>` where ExtraValue is `repeated string items = 1` (JSON: array).
    StrListMap,
    /// `metav1.FieldsV1`: any JSON value, carried as its JSON text in `raw = 1`.
    RawJson,
    /// `intstr.IntOrString{type = 1, intVal = 2, strVal = 3}`: a number or a string in JSON (decoded only).
    IntOrString,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    tag: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A Go value (not pointer) field: written even when empty.
    always: bool,
}

/// A Go value field (string, number, bool, embedded struct): always written.
const fn f(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: false, always: true }
}

/// A Go pointer field: written only when set.
const fn opt(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: false, always: false }
}

const fn list(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: true, always: false }
}

/// A map field (entries only).
const fn map(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: false, always: false }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    opt(6, "controller", Ty::Bool),
    opt(7, "blockOwnerDeletion", Ty::Bool),
];
const MANAGED_FIELDS_ENTRY: &[Field] = &[
    f(1, "manager", Ty::Str),
    f(2, "operation", Ty::Str),
    f(3, "apiVersion", Ty::Str),
    opt(4, "time", Ty::Time),
    f(6, "fieldsType", Ty::Str),
    opt(7, "fieldsV1", Ty::RawJson),
    f(8, "subresource", Ty::Str),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(4, "selfLink", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    opt(9, "deletionTimestamp", Ty::Time),
    opt(10, "deletionGracePeriodSeconds", Ty::Int),
    map(11, "labels", Ty::StrMap),
    map(12, "annotations", Ty::StrMap),
    list(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    list(14, "finalizers", Ty::Str),
    list(17, "managedFields", Ty::Msg(MANAGED_FIELDS_ENTRY)),
];
const META: Field = f(1, "metadata", Ty::Msg(OBJECT_META));
const LIST_META: &[Field] = &[
    f(1, "selfLink", Ty::Str),
    f(2, "resourceVersion", Ty::Str),
    f(3, "continue", Ty::Str),
    opt(4, "remainingItemCount", Ty::Int),
];
const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];
const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Ty::Str)];
const NAMESPACE_CONDITION: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "status", Ty::Str),
    f(4, "lastTransitionTime", Ty::Time),
    f(5, "reason", Ty::Str),
    f(6, "message", Ty::Str),
];
const NAMESPACE: &[Field] = &[
    META,
    f(2, "spec", Ty::Msg(&[list(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Msg(&[f(1, "phase", Ty::Str), list(2, "conditions", Ty::Msg(NAMESPACE_CONDITION))])),
];
const SERVICE_ACCOUNT: &[Field] = &[
    META,
    list(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    list(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    opt(4, "automountServiceAccountToken", Ty::Bool),
];
const SECRET: &[Field] = &[
    META,
    map(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    map(4, "stringData", Ty::StrMap),
    opt(5, "immutable", Ty::Bool),
];
const CONFIG_MAP: &[Field] =
    &[META, map(2, "data", Ty::StrMap), map(3, "binaryData", Ty::BytesMap), opt(4, "immutable", Ty::Bool)];
const BOUND_OBJECT_REFERENCE: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiVersion", Ty::Str), f(3, "name", Ty::Str), f(4, "uid", Ty::Str)];
const TOKEN_REQUEST: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            list(1, "audiences", Ty::Str),
            opt(3, "boundObjectRef", Ty::Msg(BOUND_OBJECT_REFERENCE)),
            opt(4, "expirationSeconds", Ty::Int),
        ]),
    ),
];
const TOKEN_REVIEW: &[Field] = &[META, f(2, "spec", Ty::Msg(&[f(1, "token", Ty::Str), list(2, "audiences", Ty::Str)]))];
const LABEL_SELECTOR: &[Field] = &[
    map(1, "matchLabels", Ty::StrMap),
    list(
        2,
        "matchExpressions",
        Ty::Msg(&[f(1, "key", Ty::Str), f(2, "operator", Ty::Str), list(3, "values", Ty::Str)]),
    ),
];
const RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];
const NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];
const SUBJECT_ACCESS_REVIEW: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            opt(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            opt(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
            f(3, "user", Ty::Str),
            list(4, "groups", Ty::Str),
            map(5, "extra", Ty::StrListMap),
            f(6, "uid", Ty::Str),
        ]),
    ),
];
const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            opt(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            opt(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];
const SELF_SUBJECT_RULES_REVIEW: &[Field] = &[META, f(2, "spec", Ty::Msg(&[f(1, "namespace", Ty::Str)]))];
const SELF_SUBJECT_REVIEW: &[Field] = &[META];
const POLICY_RULE: &[Field] = &[
    list(1, "verbs", Ty::Str),
    list(2, "apiGroups", Ty::Str),
    list(3, "resources", Ty::Str),
    list(4, "resourceNames", Ty::Str),
    list(5, "nonResourceURLs", Ty::Str),
];
const ROLE: &[Field] = &[META, list(2, "rules", Ty::Msg(POLICY_RULE))];
const CLUSTER_ROLE: &[Field] = &[
    META,
    list(2, "rules", Ty::Msg(POLICY_RULE)),
    opt(3, "aggregationRule", Ty::Msg(&[list(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))])),
];
const SUBJECT: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiGroup", Ty::Str), f(3, "name", Ty::Str), f(4, "namespace", Ty::Str)];
const ROLE_REF: &[Field] = &[f(1, "apiGroup", Ty::Str), f(2, "kind", Ty::Str), f(3, "name", Ty::Str)];
const ROLE_BINDING: &[Field] = &[META, list(2, "subjects", Ty::Msg(SUBJECT)), f(3, "roleRef", Ty::Msg(ROLE_REF))];
const LEASE: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            opt(1, "holderIdentity", Ty::Str),
            opt(2, "leaseDurationSeconds", Ty::Int),
            opt(3, "acquireTime", Ty::MicroTime),
            opt(4, "renewTime", Ty::MicroTime),
            opt(5, "leaseTransitions", Ty::Int),
            opt(6, "strategy", Ty::Str),
            opt(7, "preferredHolder", Ty::Str),
        ]),
    ),
];
const DELETE_OPTIONS: &[Field] = &[
    opt(1, "gracePeriodSeconds", Ty::Int),
    opt(2, "preconditions", Ty::Msg(&[opt(1, "uid", Ty::Str), opt(2, "resourceVersion", Ty::Str)])),
    opt(3, "orphanDependents", Ty::Bool),
    opt(4, "propagationPolicy", Ty::Str),
    list(5, "dryRun", Ty::Str),
];
const STATUS_CAUSE: &[Field] = &[f(1, "reason", Ty::Str), f(2, "message", Ty::Str), f(3, "field", Ty::Str)];
const STATUS: &[Field] = &[
    f(1, "metadata", Ty::Msg(LIST_META)),
    f(2, "status", Ty::Str),
    f(3, "message", Ty::Str),
    f(4, "reason", Ty::Str),
    opt(
        5,
        "details",
        Ty::Msg(&[
            f(1, "name", Ty::Str),
            f(2, "group", Ty::Str),
            f(3, "kind", Ty::Str),
            list(4, "causes", Ty::Msg(STATUS_CAUSE)),
            f(5, "retryAfterSeconds", Ty::Int),
            f(6, "uid", Ty::Str),
        ]),
    ),
    f(6, "code", Ty::Int),
];

/// `v1.Service` as `kubectl create service` sends it (requests only: not a response kind).
const SERVICE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            list(
                1,
                "ports",
                Ty::Msg(&[
                    f(1, "name", Ty::Str),
                    f(2, "protocol", Ty::Str),
                    f(3, "port", Ty::Int),
                    f(4, "targetPort", Ty::IntOrString),
                    f(5, "nodePort", Ty::Int),
                    opt(6, "appProtocol", Ty::Str),
                ]),
            ),
            map(2, "selector", Ty::StrMap),
            f(3, "clusterIP", Ty::Str),
            f(4, "type", Ty::Str),
            list(5, "externalIPs", Ty::Str),
            f(7, "sessionAffinity", Ty::Str),
            f(8, "loadBalancerIP", Ty::Str),
            list(9, "loadBalancerSourceRanges", Ty::Str),
            f(10, "externalName", Ty::Str),
            f(11, "externalTrafficPolicy", Ty::Str),
            f(12, "healthCheckNodePort", Ty::Int),
            f(13, "publishNotReadyAddresses", Ty::Bool),
            opt(17, "ipFamilyPolicy", Ty::Str),
            list(18, "clusterIPs", Ty::Str),
            list(19, "ipFamilies", Ty::Str),
            opt(20, "allocateLoadBalancerNodePorts", Ty::Bool),
            opt(21, "loadBalancerClass", Ty::Str),
            opt(22, "internalTrafficPolicy", Ty::Str),
            opt(23, "trafficDistribution", Ty::Str),
        ]),
    ),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Service") => SERVICE,
        ("v1", "Status") => STATUS,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("coordination.k8s.io/v1", "Lease") => LEASE,
        ("meta.k8s.io/v1" | "v1", "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    })
}

/// Kinds whose objects (and lists) are encoded for responses: the stored kinds
/// with a complete table. The reviews' tables cover their requests only.
const RESPONSE_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("coordination.k8s.io/v1", "Lease"),
];

/// Whether responses of this kind can be protobuf (its lists too).
pub fn encodes(api_version: &str, kind: &str) -> bool {
    RESPONSE_KINDS.contains(&(api_version, kind))
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    buf: &'a [u8],
}

enum WireValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if n > self.buf.len() {
            return Err(ProtobufError::Malformed("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, WireValue<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                WireValue::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed("length overflow"))?;
                WireValue::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                WireValue::Fixed
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ProtobufError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| ProtobufError::Malformed("string is not UTF-8"))
}

/// Decodes a `map<string, V>` entry: key = 1, value = 2.
fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), ProtobufError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    while let Some((tag, v)) = r.next()? {
        match (tag, v) {
            (1, WireValue::Bytes(b)) => key = utf8(b)?,
            (2, WireValue::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(bytes: &[u8], micro: bool) -> Result<Value, ProtobufError> {
    let mut r = Reader { buf: bytes };
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while let Some((tag, v)) = r.next()? {
        match (tag, v) {
            (1, WireValue::Varint(s)) => seconds = s as i64,
            (2, WireValue::Varint(n)) => nanos = n as i64,
            _ => {}
        }
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| ProtobufError::Malformed("time out of range"))?;
    if !micro {
        return Ok(Value::String(ts.to_string()));
    }
    // Go's MicroTime layout: always six fractional digits.
    let whole = ts.to_string();
    let micros = nanos.clamp(0, 999_999_999) / 1000;
    Ok(Value::String(format!("{}.{micros:06}Z", whole.trim_end_matches('Z'))))
}

fn scalar(ty: Ty, value: WireValue<'_>) -> Result<Option<Value>, ProtobufError> {
    Ok(Some(match (ty, value) {
        (Ty::Str, WireValue::Bytes(b)) => Value::String(utf8(b)?),
        (Ty::Int, WireValue::Varint(v)) => Value::from(v as i64),
        (Ty::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
        // Go writes an unset (zero) time as an empty message.
        (Ty::Time | Ty::MicroTime, WireValue::Bytes([])) => return Ok(None),
        (Ty::Time, WireValue::Bytes(b)) => time(b, false)?,
        (Ty::MicroTime, WireValue::Bytes(b)) => time(b, true)?,
        (Ty::Msg(schema), WireValue::Bytes(b)) => Value::Object(message(b, schema)?),
        (Ty::IntOrString, WireValue::Bytes(b)) => {
            let mut r = Reader { buf: b };
            let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
            while let Some((tag, v)) = r.next()? {
                match (tag, v) {
                    (1, WireValue::Varint(t)) => is_string = t == 1,
                    (2, WireValue::Varint(n)) => int = i64::from(n as i32),
                    (3, WireValue::Bytes(s)) => string = utf8(s)?,
                    _ => {}
                }
            }
            if is_string { Value::String(string) } else { Value::from(int) }
        }
        (Ty::RawJson, WireValue::Bytes(b)) => {
            let mut r = Reader { buf: b };
            let mut raw: &[u8] = b"{}";
            while let Some((tag, v)) = r.next()? {
                if let (1, WireValue::Bytes(bytes)) = (tag, v) {
                    raw = bytes;
                }
            }
            serde_json::from_slice(raw).map_err(|_| ProtobufError::Malformed("fieldsV1 is not JSON"))?
        }
        _ => return Ok(None),
    }))
}

fn message(bytes: &[u8], schema: &[Field]) -> Result<Map<String, Value>, ProtobufError> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((tag, value)) = r.next()? {
        let Some(field) = schema.iter().find(|fl| fl.tag == tag) else { continue };
        match (field.ty, value) {
            (Ty::StrMap | Ty::BytesMap | Ty::StrListMap, WireValue::Bytes(b)) => {
                let (key, raw) = map_entry(b)?;
                let v = match field.ty {
                    Ty::StrMap => Value::String(utf8(raw)?),
                    Ty::BytesMap => Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
                    _ => {
                        let mut items = Vec::new();
                        let mut er = Reader { buf: raw };
                        while let Some((t, v)) = er.next()? {
                            if let (1, WireValue::Bytes(s)) = (t, v) {
                                items.push(Value::String(utf8(s)?));
                            }
                        }
                        Value::Array(items)
                    }
                };
                if let Value::Object(m) = out.entry(field.name).or_insert_with(|| Value::Object(Map::new())) {
                    m.insert(key, v);
                }
            }
            (ty, value) => {
                let Some(v) = scalar(ty, value)? else { continue };
                // Go's protobuf encoder writes value (non-pointer) fields even
                // when empty; its JSON encoder omits them (`omitempty`). Match
                // the JSON form. A pointer field's zero is a value (`leaseTransitions: 0`).
                if field.always && (v == Value::String(String::new()) || (matches!(ty, Ty::Int) && v == 0)) {
                    continue;
                }
                if field.repeated {
                    if let Value::Array(a) = out.entry(field.name).or_insert_with(|| Value::Array(Vec::new())) {
                        a.push(v);
                    }
                } else {
                    out.insert(field.name.to_owned(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body (an object, or a list of a kind
/// served as protobuf) into a JSON object with apiVersion and kind.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::Malformed("missing k8s protobuf magic"))?;
    let mut r = Reader { buf: envelope };
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) = (String::new(), String::new(), &[]);
    while let Some((tag, value)) = r.next()? {
        match (tag, value) {
            (1, WireValue::Bytes(type_meta)) => {
                let mut tr = Reader { buf: type_meta };
                while let Some((t, v)) = tr.next()? {
                    match (t, v) {
                        (1, WireValue::Bytes(b)) => api_version = utf8(b)?,
                        (2, WireValue::Bytes(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, WireValue::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    if let Some(item_schema) = kind.strip_suffix("List").filter(|k| encodes(&api_version, k)).and_then(|k| schema(&api_version, k)) {
        let mut list = message(raw, &[f(1, "metadata", Ty::Msg(LIST_META)), list(2, "items", Ty::Msg(item_schema))])?;
        list.entry("items").or_insert_with(|| Value::Array(Vec::new()));
        list.insert("apiVersion".into(), Value::String(api_version));
        list.insert("kind".into(), Value::String(kind));
        return Ok(Value::Object(list));
    }
    let schema = schema(&api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut object = message(raw, schema)?;
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

/// Decodes one watch frame's `WatchEvent` (without its 4-byte length) into
/// its type and object: the inverse of [`encode_watch_event`].
pub fn decode_watch_event(event: &[u8]) -> Result<(String, Value), ProtobufError> {
    let mut r = Reader { buf: event };
    let (mut type_, mut object) = (String::new(), None);
    while let Some((tag, value)) = r.next()? {
        match (tag, value) {
            (1, WireValue::Bytes(t)) => type_ = utf8(t)?,
            (2, WireValue::Bytes(ext)) => {
                let mut er = Reader { buf: ext };
                while let Some((t, v)) = er.next()? {
                    if let (1, WireValue::Bytes(raw)) = (t, v) {
                        object = Some(decode(raw)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((type_, object.ok_or(ProtobufError::Malformed("watch event without an object"))?))
}

// === encoding ===

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u64, wire_type: u64) {
    put_varint(out, tag << 3 | wire_type);
}

fn put_bytes(out: &mut Vec<u8>, tag: u64, bytes: &[u8]) {
    put_key(out, tag, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn unencodable(field: &Field, what: &str) -> ProtobufError {
    ProtobufError::Unencodable(format!("field {:?}: {what}", field.name))
}

/// `Timestamp{seconds = 1, nanos = 2}`, both always written (Go value fields).
/// `metav1.Time` drops the fraction (its `ProtoTime` writes nanos 0);
/// `MicroTime` keeps it.
fn put_time(out: &mut Vec<u8>, field: &Field, text: &str, micro: bool) -> Result<(), ProtobufError> {
    let ts: jiff::Timestamp = text.parse().map_err(|_| unencodable(field, "not an RFC 3339 time"))?;
    let mut raw = Vec::with_capacity(12);
    put_key(&mut raw, 1, 0);
    put_varint(&mut raw, ts.as_second() as u64);
    put_key(&mut raw, 2, 0);
    put_varint(&mut raw, if micro { i64::from(ts.subsec_nanosecond()) as u64 } else { 0 });
    put_bytes(out, field.tag, &raw);
    Ok(())
}

/// One (non-repeated) value of `field`.
fn put_value(out: &mut Vec<u8>, field: &Field, value: &Value) -> Result<(), ProtobufError> {
    match (field.ty, value) {
        (Ty::Str, Value::String(s)) => put_bytes(out, field.tag, s.as_bytes()),
        (Ty::Int, Value::Number(n)) => {
            let v = n.as_i64().ok_or_else(|| unencodable(field, "not an integer"))?;
            put_key(out, field.tag, 0);
            // Negative numbers are sign-extended to 64 bits, as Go writes int32 and int64.
            put_varint(out, v as u64);
        }
        (Ty::Bool, Value::Bool(b)) => {
            put_key(out, field.tag, 0);
            put_varint(out, u64::from(*b));
        }
        (Ty::Time, Value::String(s)) => put_time(out, field, s, false)?,
        (Ty::MicroTime, Value::String(s)) => put_time(out, field, s, true)?,
        (Ty::Msg(schema), Value::Object(o)) => put_bytes(out, field.tag, &message_bytes(o, schema, &[])?),
        (Ty::RawJson, v) => {
            let mut raw = Vec::new();
            put_bytes(&mut raw, 1, &serde_json::to_vec(v).unwrap_or_default());
            put_bytes(out, field.tag, &raw);
        }
        _ => return Err(unencodable(field, "unexpected JSON type")),
    }
    Ok(())
}

/// A map field: one `{key = 1, value = 2}` entry per key, sorted by key as Go does.
fn put_map(out: &mut Vec<u8>, field: &Field, value: &Value) -> Result<(), ProtobufError> {
    let Value::Object(entries) = value else { return Err(unencodable(field, "not an object")) };
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    for key in keys {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, key.as_bytes());
        match (field.ty, &entries[key.as_str()]) {
            (Ty::StrMap, Value::String(s)) => put_bytes(&mut entry, 2, s.as_bytes()),
            (Ty::BytesMap, Value::String(s)) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| unencodable(field, "not base64"))?;
                put_bytes(&mut entry, 2, &bytes);
            }
            (Ty::StrListMap, Value::Array(items)) => {
                let mut list = Vec::new();
                for item in items {
                    let s = item.as_str().ok_or_else(|| unencodable(field, "not a string list"))?;
                    put_bytes(&mut list, 1, s.as_bytes());
                }
                put_bytes(&mut entry, 2, &list);
            }
            _ => return Err(unencodable(field, "unexpected map value")),
        }
        put_bytes(out, field.tag, &entry);
    }
    Ok(())
}

/// The zero value Go writes for an unset value field.
fn put_zero(out: &mut Vec<u8>, field: &Field) -> Result<(), ProtobufError> {
    match field.ty {
        Ty::Str | Ty::Time | Ty::MicroTime => put_bytes(out, field.tag, &[]),
        Ty::Int | Ty::Bool => {
            put_key(out, field.tag, 0);
            put_varint(out, 0);
        }
        Ty::Msg(schema) => put_bytes(out, field.tag, &message_bytes(&Map::new(), schema, &[])?),
        Ty::StrMap | Ty::BytesMap | Ty::StrListMap | Ty::RawJson | Ty::IntOrString => {}
    }
    Ok(())
}

/// Encodes `object` with `schema`; keys in `skip` (the type meta of a
/// top-level object) are not part of the message.
fn message_bytes(object: &Map<String, Value>, schema: &[Field], skip: &[&str]) -> Result<Vec<u8>, ProtobufError> {
    if let Some(unknown) = object.keys().find(|k| !skip.contains(&k.as_str()) && !schema.iter().any(|f| f.name == k.as_str())) {
        return Err(ProtobufError::Unencodable(format!("unknown field {unknown:?}")));
    }
    let mut out = Vec::new();
    for field in schema {
        match object.get(field.name).filter(|v| !v.is_null()) {
            None if field.always => put_zero(&mut out, field)?,
            None => {}
            Some(value) if field.repeated => {
                let Value::Array(items) = value else { return Err(unencodable(field, "not a list")) };
                for item in items {
                    put_value(&mut out, field, item)?;
                }
            }
            Some(value) if matches!(field.ty, Ty::StrMap | Ty::BytesMap | Ty::StrListMap) => put_map(&mut out, field, value)?,
            Some(value) => put_value(&mut out, field, value)?,
        }
    }
    Ok(out)
}

/// The `k8s\0` + `runtime.Unknown{typeMeta, raw, contentEncoding, contentType}`
/// envelope (the last two empty, as kube-apiserver writes them).
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(raw.len() + type_meta.len() + 16);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, raw);
    put_bytes(&mut out, 3, &[]);
    put_bytes(&mut out, 4, &[]);
    out
}

/// Encodes an object, a `…List` of one, or a `Status` into a protobuf body.
pub fn encode(object: &Value) -> Result<Vec<u8>, ProtobufError> {
    let Value::Object(o) = object else { return Err(ProtobufError::Unencodable("not an object".into())) };
    let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let item_kind = kind.strip_suffix("List").filter(|k| encodes(api_version, k));
    let raw = if let Some(item_kind) = item_kind {
        let item_schema = schema(api_version, item_kind).ok_or_else(|| ProtobufError::Unencodable(kind.into()))?;
        if let Some(unknown) = o.keys().find(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "items")) {
            return Err(ProtobufError::Unencodable(format!("unknown field {unknown:?}")));
        }
        let mut raw = Vec::new();
        let meta = o.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        put_bytes(&mut raw, 1, &message_bytes(&meta, LIST_META, &[])?);
        for item in o.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let Value::Object(item) = item else { return Err(ProtobufError::Unencodable("list item".into())) };
            put_bytes(&mut raw, 2, &message_bytes(item, item_schema, &["apiVersion", "kind"])?);
        }
        raw
    } else if encodes(api_version, kind) || (api_version, kind) == ("v1", "Status") {
        let schema = schema(api_version, kind).ok_or_else(|| ProtobufError::Unencodable(kind.into()))?;
        message_bytes(o, schema, &["apiVersion", "kind"])?
    } else {
        return Err(ProtobufError::UnknownKind { api_version: api_version.into(), kind: kind.into() });
    };
    Ok(envelope(api_version, kind, &raw))
}

/// An object's protobuf body, and where in it lies its message: what a list
/// carries as an item. The watch cache encodes each object once and serves
/// gets, watch events and list items from these bytes.
pub fn encode_object(object: &Value) -> Result<(Vec<u8>, std::ops::Range<usize>), ProtobufError> {
    let Value::Object(o) = object else { return Err(ProtobufError::Unencodable("not an object".into())) };
    let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if !encodes(api_version, kind) {
        return Err(ProtobufError::UnknownKind { api_version: api_version.into(), kind: kind.into() });
    }
    let schema = schema(api_version, kind).ok_or_else(|| ProtobufError::Unencodable(kind.into()))?;
    let raw = message_bytes(o, schema, &["apiVersion", "kind"])?;
    let body = envelope(api_version, kind, &raw);
    // The envelope ends with the message (field 2) and two empty fields
    // (contentEncoding, contentType: a key byte and a zero length each).
    let end = body.len() - 4;
    Ok((body, end - raw.len()..end))
}

/// A `…List` body at `resource_version` composed from its items' messages
/// (see [`encode_object`]): the same bytes [`encode`] writes for the list.
pub fn encode_list(api_version: &str, list_kind: &str, resource_version: &str, items: &[&[u8]]) -> Result<Vec<u8>, ProtobufError> {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(resource_version.into()));
    let mut raw = Vec::with_capacity(items.iter().map(|i| i.len() + 6).sum::<usize>() + 32);
    put_bytes(&mut raw, 1, &message_bytes(&meta, LIST_META, &[])?);
    for item in items {
        put_bytes(&mut raw, 2, item);
    }
    Ok(envelope(api_version, list_kind, &raw))
}

/// One frame of a protobuf watch stream (`;stream=watch`): a 4-byte big-endian
/// length, then a `metav1.WatchEvent{type = 1, object = 2}` whose object is a
/// `runtime.RawExtension{raw = 1}` holding the object's protobuf body.
pub fn encode_watch_event(type_: &str, object: &Value) -> Result<Vec<u8>, ProtobufError> {
    watch_frame(type_, &encode(object)?)
}

/// [`encode_watch_event`] around an object's already encoded protobuf body
/// (the watch cache encodes each object once for all its watchers).
pub fn watch_frame(type_: &str, body: &[u8]) -> Result<Vec<u8>, ProtobufError> {
    let mut raw_extension = Vec::with_capacity(body.len() + 6);
    put_bytes(&mut raw_extension, 1, body);
    let mut event = Vec::with_capacity(raw_extension.len() + type_.len() + 8);
    put_bytes(&mut event, 1, type_.as_bytes());
    put_bytes(&mut event, 2, &raw_extension);
    let len = u32::try_from(event.len()).map_err(|_| ProtobufError::Unencodable("event too large".into()))?;
    let mut frame = Vec::with_capacity(event.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&event);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_composed_from_cached_items_are_the_lists_encode_writes() {
        let sa = |name: &str, rv: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": "u"}});
        let (a, b) = (sa("a", "5"), sa("b", "7"));
        let (body_a, msg_a) = encode_object(&a).expect("a");
        let (body_b, msg_b) = encode_object(&b).expect("b");
        assert_eq!(body_a, encode(&a).expect("encode a"));
        let list = json!({"apiVersion": "v1", "kind": "ServiceAccountList", "metadata": {"resourceVersion": "9"}, "items": [a, b]});
        let composed = encode_list("v1", "ServiceAccountList", "9", &[&body_a[msg_a], &body_b[msg_b]]).expect("compose");
        assert_eq!(composed, encode(&list).expect("encode list"));
    }

    /// Minimal protobuf encoder for tests.
    fn field(tag: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(tag << 3 | 2);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = field(1, api_version.as_bytes());
        type_meta.extend(field(2, kind.as_bytes()));
        let mut body = MAGIC.to_vec();
        body.extend(field(1, &type_meta));
        body.extend(field(2, raw));
        body
    }

    #[test]
    fn decodes_a_service_account_with_labels() {
        let mut label = field(1, b"app");
        label.extend(field(2, b"web"));
        let mut meta = field(1, b"api");
        meta.extend(field(3, b"ns1"));
        meta.extend(field(11, &label));
        let mut raw = field(1, &meta);
        raw.extend(varint(4 << 3));
        raw.extend(varint(0));
        let obj = decode(&envelope("v1", "ServiceAccount", &raw)).expect("decodes");
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "api", "namespace": "ns1", "labels": {"app": "web"}}, "automountServiceAccountToken": false})
        );
    }

    #[test]
    fn decodes_a_token_request() {
        let mut spec = field(1, b"data-store");
        spec.extend(varint(4 << 3));
        spec.extend(varint(600));
        let raw = field(2, &spec);
        let obj = decode(&envelope("authentication.k8s.io/v1", "TokenRequest", &raw)).expect("decodes");
        assert_eq!(obj["spec"], json!({"audiences": ["data-store"], "expirationSeconds": 600}));
    }

    #[test]
    fn secret_bytes_become_base64() {
        let mut entry = field(1, b"k");
        entry.extend(field(2, b"hello"));
        let raw = field(2, &entry);
        let obj = decode(&envelope("v1", "Secret", &raw)).expect("decodes");
        assert_eq!(obj["data"]["k"], "aGVsbG8=");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"nope").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(&envelope("v1", "Pod", b"")).is_err());
        // Every prefix of a valid body either decodes or errors.
        let mut meta = field(1, b"api");
        meta.extend(field(12, &field(1, b"k")));
        let body = envelope("v1", "ServiceAccount", &field(1, &meta));
        for n in 0..body.len() {
            let _ = decode(&body[..n]);
        }
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;
    use serde_json::json;

    /// A ConfigMap as kube-apiserver 1.32 writes it, byte by byte (gogo's
    /// generated marshallers: fields in tag order, every value field of
    /// ObjectMeta present even when empty, map entries sorted by key,
    /// `Timestamp{seconds, nanos}` both written, the envelope's empty
    /// contentEncoding and contentType at the end).
    #[test]
    fn config_map_golden_bytes() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns", "uid": "u", "resourceVersion": "7", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "data": {"b": "2", "a": "1"},
        });
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &b"k8s\0"[..],
            &[0x0a, 0x0f, 0x0a, 0x02], b"v1", &[0x12, 0x09], b"ConfigMap",     // typeMeta
            &[0x12, 48],                                                       // raw: ConfigMap, 48 bytes
            &[0x0a, 30],                                                       //   metadata, 30 bytes
            &[0x0a, 0x02], b"cm",                                              //     name
            &[0x12, 0x00],                                                     //     generateName ""
            &[0x1a, 0x02], b"ns",                                              //     namespace
            &[0x22, 0x00],                                                     //     selfLink ""
            &[0x2a, 0x01], b"u",                                               //     uid
            &[0x32, 0x01], b"7",                                               //     resourceVersion
            &[0x38, 0x00],                                                     //     generation 0
            &[0x42, 0x08, 0x08, 0x80, 0x81, 0xc8, 0xac, 0x06, 0x10, 0x00],     //     creationTimestamp 1704067200 s, 0 ns
            &[0x12, 0x06, 0x0a, 0x01], b"a", &[0x12, 0x01], b"1",              //   data["a"]
            &[0x12, 0x06, 0x0a, 0x01], b"b", &[0x12, 0x01], b"2",              //   data["b"]
            &[0x1a, 0x00, 0x22, 0x00],                                         // contentEncoding, contentType
        ]
        .concat();
        assert_eq!(encode(&cm).expect("encodes"), expected);
    }

    fn meta(name: &str, namespace: Option<&str>) -> Value {
        let mut m = json!({
            "name": name, "uid": "0f0e0d0c-0000-4000-8000-000000000001", "resourceVersion": "42",
            "creationTimestamp": "2026-12-05T23:00:00Z", "labels": {"app": "web", "tier": "a"},
            "annotations": {"note": "x"}, "finalizers": ["example.com/f"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "o1", "controller": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": "2026-12-05T23:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}, "f:k": {}}}}],
        });
        if let Some(ns) = namespace {
            m["namespace"] = json!(ns);
        }
        m
    }

    /// Every kind served as protobuf: encode, decode with the request decoder,
    /// and get the same JSON back.
    #[test]
    fn every_response_kind_round_trips() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta("ns1", None), "spec": {"finalizers": ["kubernetes"]},
                   "status": {"phase": "Active", "conditions": [{"type": "NamespaceDeletionContentFailure", "status": "False", "lastTransitionTime": "2026-12-05T23:00:01Z", "reason": "R", "message": "m"}]}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("sa", Some("ns1")), "secrets": [{"name": "s1", "namespace": "ns1"}],
                   "imagePullSecrets": [{"name": "pull"}], "automountServiceAccountToken": false}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("s", Some("ns1")), "type": "Opaque", "data": {"k": "AAEC/w=="}, "immutable": true}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("c", Some("ns1")), "data": {"k": "v"}, "binaryData": {"b": "aGk="}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("r", Some("ns1")),
                   "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta("cr", None),
                   "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("rb", Some("ns1")),
                   "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns1"}], "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta("crb", None),
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}], "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cr"}}),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta("node-a", Some("kube-node-lease")),
                   "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40, "renewTime": "2026-12-05T23:00:02.123456Z", "acquireTime": "2026-12-05T23:00:00.000000Z", "leaseTransitions": 0}}),
            json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": "configmaps \"x\" not found", "reason": "NotFound",
                   "details": {"name": "x", "kind": "configmaps", "causes": [{"reason": "FieldValueInvalid", "message": "bad", "field": "metadata.name"}]}, "code": 404}),
        ];
        for object in objects {
            let bytes = encode(&object).unwrap_or_else(|e| panic!("{}: {e}", object["kind"]));
            let back = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", object["kind"]));
            assert_eq!(back, object, "{}", object["kind"]);
        }
    }

    #[test]
    fn lists_carry_list_meta_and_items() {
        let sa_list = json!({
            "apiVersion": "v1", "kind": "ServiceAccountList",
            "metadata": {"resourceVersion": "9", "continue": "tok", "remainingItemCount": 3},
            "items": [
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a", "namespace": "n"}},
                {"metadata": {"name": "b", "namespace": "n"}},
            ],
        });
        let bytes = encode(&sa_list).expect("encodes");
        assert_eq!(
            decode(&bytes).expect("decodes"),
            json!({"apiVersion": "v1", "kind": "ServiceAccountList",
                   "metadata": {"resourceVersion": "9", "continue": "tok", "remainingItemCount": 3},
                   "items": [{"metadata": {"name": "a", "namespace": "n"}}, {"metadata": {"name": "b", "namespace": "n"}}]})
        );
        let empty = json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "3"}, "items": []});
        assert_eq!(decode(&encode(&empty).expect("encodes")).expect("decodes"), empty);
    }

    #[test]
    fn watch_frames_are_length_prefixed_watch_events() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let frame = encode_watch_event("ADDED", &cm).expect("encodes");
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_watch_event(&frame[4..]).expect("decodes"), ("ADDED".to_owned(), cm));
    }

    #[test]
    fn what_a_table_cannot_carry_is_refused_not_dropped() {
        let extra = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "surprise": 1});
        assert_eq!(encode(&extra), Err(ProtobufError::Unencodable("unknown field \"surprise\"".into())));
        let wrong = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}});
        assert!(matches!(encode(&wrong), Err(ProtobufError::Unencodable(_))));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert!(matches!(encode(&pod), Err(ProtobufError::UnknownKind { .. })));
        assert!(!encodes("v1", "Pod") && encodes("v1", "ConfigMap"));
    }

    #[test]
    fn tables_are_in_field_number_order() {
        fn check(schema: &[Field]) {
            assert!(schema.windows(2).all(|w| w[0].tag < w[1].tag), "{:?}", schema.iter().map(|f| f.name).collect::<Vec<_>>());
            for field in schema {
                if let Ty::Msg(inner) = field.ty {
                    check(inner);
                }
            }
        }
        for (api_version, kind) in RESPONSE_KINDS.iter().chain(&[("v1", "Status")]) {
            check(schema(api_version, kind).expect("schema"));
        }
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_and_mutated_bodies_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seed = MAGIC.to_vec();
        // A valid envelope for a ServiceAccount with labels, as the starting point of mutations.
        seed.extend_from_slice(&[0x0a, 0x14, 0x0a, 0x02, b'v', b'1', 0x12, 0x0e]);
        seed.extend_from_slice(b"ServiceAccount");
        seed.extend_from_slice(&[0x12, 0x0b, 0x0a, 0x09, 0x0a, 0x03, b'a', b'p', b'i', 0x1a, 0x02, b'n', b's']);
        assert!(decode(&seed).is_ok());
        for _ in 0..20_000 {
            let mut body = seed.clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() as usize) % body.len();
                match rng.next() % 3 {
                    0 => body[i] = rng.next() as u8,
                    1 => body.truncate(i.max(4)),
                    _ => body.insert(i, rng.next() as u8),
                }
            }
            let _ = decode(&body);
            let random: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
            let _ = decode(&[MAGIC, &random].concat());
        }
    }
}
