//! Decoding of Kubernetes protobuf request bodies
//! (`application/vnd.kubernetes.protobuf`) into JSON objects.
//!
//! kubectl's typed clients (`kubectl create namespace|serviceaccount|secret|
//! configmap|token|role…`, `kubectl auth can-i`, `kubectl auth whoami`) send
//! their bodies as protobuf and never fall back to JSON, so the server must read
//! them. Responses are always JSON (clients accept it).
//!
//! The wire format is the `k8s\0` magic followed by a `runtime.Unknown`
//! envelope whose `raw` field holds the object's message. Messages are decoded
//! with small schema tables (field number → JSON name and type) for exactly the
//! kinds tessera accepts; field numbers are those of Kubernetes'
//! `generated.proto` files. Unknown fields are skipped, malformed input is an
//! error, never a panic.

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
}

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Time,
    Msg(&'static [Field]),
    StrMap,
    BytesMap,
    /// `map<string, ExtraValue>` where ExtraValue is `repeated string items = 1` (JSON: array).
    StrListMap,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    tag: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: false }
}

const fn list(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field { tag, name, ty, repeated: true }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    list(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    list(14, "finalizers", Ty::Str),
];
const META: Field = f(1, "metadata", Ty::Msg(OBJECT_META));
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
const NAMESPACE: &[Field] = &[
    META,
    f(2, "spec", Ty::Msg(&[list(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Msg(&[f(1, "phase", Ty::Str)])),
];
const SERVICE_ACCOUNT: &[Field] = &[
    META,
    list(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    list(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];
const SECRET: &[Field] = &[
    META,
    f(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::StrMap),
    f(5, "immutable", Ty::Bool),
];
const CONFIG_MAP: &[Field] =
    &[META, f(2, "data", Ty::StrMap), f(3, "binaryData", Ty::BytesMap), f(4, "immutable", Ty::Bool)];
const BOUND_OBJECT_REFERENCE: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiVersion", Ty::Str), f(3, "name", Ty::Str), f(4, "uid", Ty::Str)];
const TOKEN_REQUEST: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            list(1, "audiences", Ty::Str),
            f(3, "boundObjectRef", Ty::Msg(BOUND_OBJECT_REFERENCE)),
            f(4, "expirationSeconds", Ty::Int),
        ]),
    ),
];
const TOKEN_REVIEW: &[Field] = &[META, f(2, "spec", Ty::Msg(&[f(1, "token", Ty::Str), list(2, "audiences", Ty::Str)]))];
const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", Ty::StrMap),
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
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
            f(3, "user", Ty::Str),
            list(4, "groups", Ty::Str),
            f(5, "extra", Ty::StrListMap),
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
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
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
    f(3, "aggregationRule", Ty::Msg(&[list(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))])),
];
const SUBJECT: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiGroup", Ty::Str), f(3, "name", Ty::Str), f(4, "namespace", Ty::Str)];
const ROLE_REF: &[Field] = &[f(1, "apiGroup", Ty::Str), f(2, "kind", Ty::Str), f(3, "name", Ty::Str)];
const ROLE_BINDING: &[Field] = &[META, list(2, "subjects", Ty::Msg(SUBJECT)), f(3, "roleRef", Ty::Msg(ROLE_REF))];
const DELETE_OPTIONS: &[Field] = &[
    f(1, "gracePeriodSeconds", Ty::Int),
    f(2, "preconditions", Ty::Msg(&[f(1, "uid", Ty::Str), f(2, "resourceVersion", Ty::Str)])),
    f(3, "orphanDependents", Ty::Bool),
    f(4, "propagationPolicy", Ty::Str),
    list(5, "dryRun", Ty::Str),
];

fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("meta.k8s.io/v1" | "v1", "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    })
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

fn time(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut r = Reader { buf: bytes };
    let mut seconds = 0i64;
    while let Some((tag, v)) = r.next()? {
        if let (1, WireValue::Varint(s)) = (tag, v) {
            seconds = s as i64;
        }
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| ProtobufError::Malformed("time out of range"))?;
    Ok(Value::String(ts.to_string()))
}

fn scalar(ty: Ty, value: WireValue<'_>) -> Result<Option<Value>, ProtobufError> {
    Ok(Some(match (ty, value) {
        (Ty::Str, WireValue::Bytes(b)) => Value::String(utf8(b)?),
        (Ty::Int, WireValue::Varint(v)) => Value::from(v as i64),
        (Ty::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
        (Ty::Time, WireValue::Bytes(b)) => time(b)?,
        (Ty::Msg(schema), WireValue::Bytes(b)) => Value::Object(message(b, schema)?),
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
                // Go's protobuf encoder writes non-pointer fields even when empty;
                // its JSON encoder omits them (`omitempty`). Match the JSON form.
                if !field.repeated && (v == Value::String(String::new()) || (matches!(ty, Ty::Int) && v == 0)) {
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

/// Decodes a `k8s\0`-prefixed protobuf body into a JSON object with apiVersion and kind.
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
    let schema = schema(&api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut object = message(raw, schema)?;
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
