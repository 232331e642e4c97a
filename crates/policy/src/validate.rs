//! Admission checks for the policy kinds: what Linkerd's CRD schemas
//! (required fields, `oneOf`, enums, patterns) and its admission webhook
//! (`policy-controller/src/admission.rs`) refuse, as kube-style field causes
//! so the API server answers 422 naming the field. Webhook refusals keep
//! Linkerd's wording as the cause's detail.
//!
//! Also the CRD defaults ([`default_object`]): Server `proxyProtocol` and
//! (v1beta3) `accessPolicy`, HTTPRoute match and parentRef defaults.

use std::str::FromStr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::resources::{
    ACCESS_POLICIES, AuthorizationPolicySpec, GROUP, HttpRouteSpec, LabelSelector, MeshTlsAuthenticationSpec, NamespacedTargetRef,
    Network, NetworkAuthenticationSpec, PROXY_PROTOCOLS, Port, ServerAuthorizationSpec, ServerSpec,
};

/// One field error, rendered as kube-apiserver renders `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported` or `FieldValueForbidden`.
    pub reason: &'static str,
    /// The field path, e.g. `spec.port`.
    pub field: String,
    /// The message, e.g. `Invalid value: 0: must be between 1 and 65535, inclusive`.
    pub message: String,
}

impl Cause {
    fn required(field: &str, detail: &str) -> Self {
        let message = if detail.is_empty() { "Required value".to_owned() } else { format!("Required value: {detail}") };
        Cause { reason: "FieldValueRequired", field: field.to_owned(), message }
    }

    fn invalid(field: &str, value: impl Into<Value>, detail: &str) -> Self {
        Cause { reason: "FieldValueInvalid", field: field.to_owned(), message: format!("Invalid value: {}: {detail}", value.into()) }
    }

    fn not_supported(field: &str, value: &str, supported: &[&str]) -> Self {
        let list = supported.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        Cause { reason: "FieldValueNotSupported", field: field.to_owned(), message: format!("Unsupported value: {}: supported values: {list}", json!(value)) }
    }

    fn forbidden(field: &str, detail: &str) -> Self {
        Cause { reason: "FieldValueForbidden", field: field.to_owned(), message: format!("Forbidden: {detail}") }
    }
}

/// The message kube's CRD validation gives a failed `oneOf`.
const ONE_OF_NONE: &str = "must validate one and only one schema (oneOf). Found none valid";
const ONE_OF_MANY: &str = "must validate one and only one schema (oneOf). Found 2 valid alternatives";
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const IDENTITY_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Checks a policy object of `kind` in API `version`, created in `namespace`.
/// An empty result means it is admitted.
pub fn validate(kind: &str, version: &str, namespace: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(spec) = obj.get("spec").filter(|s| !s.is_null()) else {
        causes.push(Cause::required("spec", ""));
        return causes;
    };
    match kind {
        "Server" => with_spec(spec, &mut causes, |s: ServerSpec, c| server(version, spec, &s, c)),
        "ServerAuthorization" => with_spec(spec, &mut causes, |s: ServerAuthorizationSpec, c| server_authorization(spec, &s, c)),
        "AuthorizationPolicy" => with_spec(spec, &mut causes, |s: AuthorizationPolicySpec, c| authorization_policy(namespace, spec, &s, c)),
        "MeshTLSAuthentication" => with_spec(spec, &mut causes, |s: MeshTlsAuthenticationSpec, c| mesh_tls_authentication(spec, &s, c)),
        "NetworkAuthentication" => with_spec(spec, &mut causes, |s: NetworkAuthenticationSpec, c| network_authentication(spec, &s, c)),
        "HTTPRoute" => with_spec(spec, &mut causes, |s: HttpRouteSpec, c| http_route(&s, c)),
        _ => {}
    }
    causes
}

/// The name of the validating webhook Linkerd's policy controller serves
/// (its denials carry it in kube-apiserver's message).
pub const POLICY_WEBHOOK: &str = "linkerd-policy-validator.linkerd.io";
/// Linkerd's denial of a Server that selects what another one does.
pub const IDENTICAL_SERVER: &str = "identical server spec already exists";

/// Linkerd's cross-object admission of a Server (the policy controller's
/// `Validate for ServerSpec`): it is refused when another Server of its
/// namespace (another name: an update of itself is fine) has the same
/// `port` and the same `podSelector`. As Linkerd, a port number and the
/// name of that port are not matched up, and selectors that merely overlap
/// are let through; `matchLabels: {}` and no `matchLabels` are the same. A
/// Server without `podSelector` (it selects external workloads) conflicts
/// with none. Answers the name of the first such Server.
pub fn conflicting_server<'a>(name: &str, spec: &ServerSpec, others: impl IntoIterator<Item = (&'a str, &'a ServerSpec)>) -> Option<&'a str> {
    let selector = spec.pod_selector.as_ref().map(normalised)?;
    others.into_iter().find_map(|(other_name, other)| {
        let same = other_name != name && other.port == spec.port && other.pod_selector.as_ref().map(normalised).as_ref() == Some(&selector);
        same.then_some(other_name)
    })
}

/// A selector with empty `matchLabels` / `matchExpressions` written as absent.
fn normalised(selector: &LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: selector.match_labels.clone().filter(|m| !m.is_empty()),
        match_expressions: selector.match_expressions.clone().filter(|e| !e.is_empty()),
    }
}

/// The spec is already normalised through its typed struct, so this decode
/// only fails on a corrupt stored object; that is reported, not panicked on.
fn with_spec<T: DeserializeOwned>(spec: &Value, causes: &mut Vec<Cause>, check: impl FnOnce(T, &mut Vec<Cause>)) {
    match serde_json::from_value::<T>(spec.clone()) {
        Ok(typed) => check(typed, causes),
        Err(e) => causes.push(Cause::invalid("spec", "object", &e.to_string())),
    }
}

/// Sets the defaults Linkerd's CRD schemas declare, for `kind` in `version`.
pub fn default_object(kind: &str, version: &str, obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    match kind {
        "Server" => {
            spec.entry("proxyProtocol").or_insert_with(|| json!("unknown"));
            if version == "v1beta3" {
                spec.entry("accessPolicy").or_insert_with(|| json!("deny"));
            }
        }
        "HTTPRoute" => {
            for parent in spec.get_mut("parentRefs").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut) {
                parent.entry("group").or_insert_with(|| json!(GROUP));
                parent.entry("kind").or_insert_with(|| json!("Gateway"));
            }
            let rules = spec.entry("rules").or_insert_with(|| json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]));
            for rule in rules.as_array_mut().into_iter().flatten().filter_map(Value::as_object_mut) {
                let matches = rule.entry("matches").or_insert_with(|| json!([{"path": {"type": "PathPrefix", "value": "/"}}]));
                for m in matches.as_array_mut().into_iter().flatten().filter_map(Value::as_object_mut) {
                    let path = m.entry("path").or_insert_with(|| json!({}));
                    if let Some(path) = path.as_object_mut() {
                        path.entry("type").or_insert_with(|| json!("PathPrefix"));
                        path.entry("value").or_insert_with(|| json!("/"));
                    }
                    for list in ["headers", "queryParams"] {
                        for h in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut) {
                            h.entry("type").or_insert_with(|| json!("Exact"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

// === Server ===

fn server(version: &str, raw: &Value, spec: &ServerSpec, causes: &mut Vec<Cause>) {
    match raw.get("port") {
        None | Some(Value::Null) => causes.push(Cause::required("spec.port", "")),
        Some(_) => port(&spec.port, causes),
    }
    let pods = spec.pod_selector.is_some();
    let workloads = spec.external_workload_selector.is_some();
    match version {
        "v1alpha1" | "v1beta1" if !pods => causes.push(Cause::required("spec.podSelector", "")),
        "v1alpha1" | "v1beta1" => {}
        _ if pods && workloads => causes.push(Cause::invalid("spec", "object", ONE_OF_MANY)),
        _ if !pods && !workloads => causes.push(Cause::invalid("spec", "object", ONE_OF_NONE)),
        _ => {}
    }
    if let Some(s) = &spec.pod_selector {
        label_selector("spec.podSelector", s, causes);
    }
    if let Some(s) = &spec.external_workload_selector {
        label_selector("spec.externalWorkloadSelector", s, causes);
    }
    if let Some(p) = spec.proxy_protocol.as_deref().filter(|p| !PROXY_PROTOCOLS.contains(p)) {
        causes.push(Cause::not_supported("spec.proxyProtocol", p, PROXY_PROTOCOLS));
    }
    if let Some(p) = spec.access_policy.as_deref().filter(|p| !ACCESS_POLICIES.contains(p)) {
        causes.push(Cause::not_supported("spec.accessPolicy", p, ACCESS_POLICIES));
    }
}

fn port(port: &Port, causes: &mut Vec<Cause>) {
    match port {
        Port::Number(n) if !(1..=65535).contains(n) => {
            causes.push(Cause::invalid("spec.port", *n, "must be between 1 and 65535, inclusive"));
        }
        Port::Number(_) => {}
        Port::Name(name) => {
            for detail in port_name(name) {
                causes.push(Cause::invalid("spec.port", name.as_str(), detail));
            }
        }
    }
}

/// kube's `IsValidPortName` (an IANA_SVC_NAME, RFC 6335).
pub fn port_name(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

// === label selectors (kube's ValidateLabelSelector) ===

const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

fn label_selector(path: &str, selector: &LabelSelector, causes: &mut Vec<Cause>) {
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                causes.push(Cause::required(&format!("{at}.values"), "must be specified when `operator` is 'In' or 'NotIn'"));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                causes.push(Cause::forbidden(&format!("{at}.values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            "" => causes.push(Cause::required(&format!("{at}.operator"), "")),
            other => causes.push(Cause::not_supported(&format!("{at}.operator"), other, OPERATORS)),
        }
        for detail in qualified_name(&req.key) {
            causes.push(Cause::invalid(&format!("{at}.key"), req.key.as_str(), &detail));
        }
    }
    for (k, v) in selector.match_labels.iter().flatten() {
        for detail in qualified_name(k) {
            causes.push(Cause::invalid(&format!("{path}.matchLabels"), k.as_str(), &detail));
        }
        for detail in label_value(v) {
            causes.push(Cause::invalid(&format!("{path}.matchLabels"), v.as_str(), &detail));
        }
    }
}

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// kube's `IsQualifiedName` (label keys).
fn qualified_name(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else if !is_dns_subdomain(prefix) {
            errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    }
    if !name.is_empty() && !is_name_part(name) {
        errs.push(QUALIFIED_NAME_MSG.to_owned());
    }
    errs
}

/// kube's `IsValidLabelValue`.
fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_name_part(value) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

// === networks and identities ===

/// A CIDR as Linkerd parses it: a network, or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    IpNet::from_str(s).ok().or_else(|| std::net::IpAddr::from_str(s).ok().map(IpNet::from))
}

fn networks(path: &str, nets: &[Network], causes: &mut Vec<Cause>) {
    for (i, net) in nets.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(cidr) = parse_net(&net.cidr) else {
            causes.push(Cause::invalid(&format!("{at}.cidr"), net.cidr.as_str(), "must be a valid CIDR or IP address"));
            continue;
        };
        for (j, except) in net.except.iter().flatten().enumerate() {
            let field = format!("{at}.except[{j}]");
            let Some(ex) = parse_net(except) else {
                causes.push(Cause::invalid(&field, except.as_str(), "must be a valid CIDR or IP address"));
                continue;
            };
            // Linkerd's admission messages.
            if ex.contains(&cidr) {
                causes.push(Cause::invalid(&field, except.as_str(), &format!("cidr '{cidr}' is completely negated by exception '{ex}'")));
            } else if !cidr.contains(&ex) {
                causes.push(Cause::invalid(&field, except.as_str(), &format!("cidr '{cidr}' does not include exception '{ex}'")));
            }
        }
    }
}

/// An identity pattern: `*`, `*.suffix` or a DNS-like name (Linkerd's CRD
/// pattern: the first label may be `*`).
pub fn identity_is_valid(id: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    let mut labels = id.split('.');
    labels.next().is_some_and(|first| first == "*" || label(first)) && labels.all(label)
}

fn identities(path: &str, ids: &[String], causes: &mut Vec<Cause>) {
    for (i, id) in ids.iter().enumerate() {
        if !identity_is_valid(id) {
            let field = format!("{path}[{i}]");
            causes.push(Cause::invalid(&field, id.as_str(), &format!("{field} in body should match '{IDENTITY_PATTERN}'")));
        }
    }
}

fn dns_label_field(path: &str, value: &str, causes: &mut Vec<Cause>) {
    if !is_dns_label(value) {
        causes.push(Cause::invalid(path, value, &format!("{path} in body should match '{DNS_LABEL_PATTERN}'")));
    }
}

// === ServerAuthorization ===

fn server_authorization(raw: &Value, spec: &ServerAuthorizationSpec, causes: &mut Vec<Cause>) {
    if raw.get("server").is_none() {
        causes.push(Cause::required("spec.server", ""));
    } else {
        match (&spec.server.name, &spec.server.selector) {
            (Some(_), Some(_)) => causes.push(Cause::invalid("spec.server", "object", ONE_OF_MANY)),
            (None, None) => causes.push(Cause::invalid("spec.server", "object", ONE_OF_NONE)),
            (Some(name), None) => dns_label_field("spec.server.name", name, causes),
            (None, Some(selector)) => label_selector("spec.server.selector", selector, causes),
        }
    }
    if raw.get("client").is_none() {
        causes.push(Cause::required("spec.client", ""));
        return;
    }
    let client = &spec.client;
    let unauthenticated = client.unauthenticated.unwrap_or(false);
    match &client.mesh_tls {
        // Linkerd's admission messages.
        Some(_) if unauthenticated => {
            causes.push(Cause::invalid("spec.client.unauthenticated", true, "`unauthenticated` must be false if `mesh_tls` is specified"));
        }
        Some(mtls) => {
            let ids = mtls.identities.as_deref().unwrap_or_default();
            let sas = mtls.service_accounts.as_deref().unwrap_or_default();
            if mtls.unauthenticated_tls.unwrap_or(false) && ids.len() + sas.len() > 0 {
                causes.push(Cause::invalid(
                    "spec.client.meshTLS.unauthenticatedTLS",
                    true,
                    "`unauthenticatedTLS` be false if any `identities` or `service_accounts` is specified",
                ));
            }
            if !mtls.unauthenticated_tls.unwrap_or(false) && ids.is_empty() && sas.is_empty() {
                causes.push(Cause::required("spec.client.meshTLS", "one of identities, serviceAccounts or unauthenticatedTLS must be set"));
            }
            identities("spec.client.meshTLS.identities", ids, causes);
            for (i, sa) in sas.iter().enumerate() {
                let at = format!("spec.client.meshTLS.serviceAccounts[{i}]");
                if sa.name.is_empty() {
                    causes.push(Cause::required(&format!("{at}.name"), ""));
                } else {
                    dns_label_field(&format!("{at}.name"), &sa.name, causes);
                }
                if let Some(ns) = &sa.namespace {
                    dns_label_field(&format!("{at}.namespace"), ns, causes);
                }
            }
        }
        None if !unauthenticated => {
            causes.push(Cause::required("spec.client", "an authorization must name its clients: meshTLS or unauthenticated: true"));
        }
        None => {}
    }
    networks("spec.client.networks", client.networks.as_deref().unwrap_or_default(), causes);
}

// === AuthorizationPolicy ===

/// Whether a reference names `kind` in `group` (`""` for core; `core` is accepted as core too).
fn targets(group: Option<&str>, kind: &str, want_group: &str, want_kind: &str) -> bool {
    let group = match group.unwrap_or_default() {
        "core" => "",
        g => g,
    };
    group.eq_ignore_ascii_case(want_group) && kind.eq_ignore_ascii_case(want_kind)
}

/// `Kind` for core, `Kind.group` otherwise (kube's canonical form).
fn canonical_kind(group: Option<&str>, kind: &str) -> String {
    match group.filter(|g| !g.is_empty() && *g != "core") {
        Some(g) => format!("{kind}.{g}"),
        None => kind.to_owned(),
    }
}

fn authorization_policy(namespace: &str, raw: &Value, spec: &AuthorizationPolicySpec, causes: &mut Vec<Cause>) {
    let target = &spec.target_ref;
    if raw.get("targetRef").is_none() {
        causes.push(Cause::required("spec.targetRef", ""));
    } else {
        if target.kind.is_empty() {
            causes.push(Cause::required("spec.targetRef.kind", ""));
        }
        if target.name.is_empty() {
            causes.push(Cause::required("spec.targetRef.name", ""));
        }
        let group = target.group.as_deref();
        let kind = target.kind.as_str();
        if targets(group, kind, "", "Namespace") {
            if !target.name.is_empty() && target.name != namespace {
                causes.push(Cause::invalid("spec.targetRef.name", target.name.as_str(), &format!("cannot target another namespace: {}", target.name)));
            }
        } else if !kind.is_empty()
            && !targets(group, kind, GROUP, "Server")
            && !targets(group, kind, GROUP, "HTTPRoute")
            && !targets(group, kind, "gateway.networking.k8s.io", "HTTPRoute")
            && !targets(group, kind, "gateway.networking.k8s.io", "GRPCRoute")
        {
            causes.push(Cause::invalid("spec.targetRef.kind", kind, &format!("invalid targetRef kind: {}", canonical_kind(group, kind))));
        }
    }
    if raw.get("requiredAuthenticationRefs").is_none() {
        causes.push(Cause::required("spec.requiredAuthenticationRefs", ""));
        return;
    }
    let refs = &spec.required_authentication_refs;
    let count = |g: &str, k: &str| refs.iter().filter(|r| targets(r.group.as_deref(), &r.kind, g, k)).count();
    let (mtls, sas, nets) = (count(GROUP, "MeshTLSAuthentication"), count("", "ServiceAccount"), count(GROUP, "NetworkAuthentication"));
    let path = "spec.requiredAuthenticationRefs";
    // Linkerd's admission messages, in its order.
    if mtls > 1 {
        causes.push(Cause::forbidden(path, "only a single MeshTLSAuthentication may be set"));
    } else if sas > 1 {
        causes.push(Cause::forbidden(path, "only a single ServiceAccount may be set"));
    } else if mtls + sas > 1 {
        causes.push(Cause::forbidden(path, "a MeshTLSAuthentication and ServiceAccount may not be set together"));
    } else if nets > 1 {
        causes.push(Cause::forbidden(path, "only a single NetworkAuthentication may be set"));
    }
    for (i, r) in refs.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let known = targets(r.group.as_deref(), &r.kind, GROUP, "MeshTLSAuthentication")
            || targets(r.group.as_deref(), &r.kind, GROUP, "NetworkAuthentication")
            || targets(r.group.as_deref(), &r.kind, "", "ServiceAccount");
        if r.kind.is_empty() {
            causes.push(Cause::required(&format!("{at}.kind"), ""));
        } else if !known {
            let kind = canonical_kind(r.group.as_deref(), &r.kind);
            causes.push(Cause::invalid(&format!("{at}.kind"), r.kind.as_str(), &format!("unsupported authentication kind(s): {kind}")));
        }
        if r.name.as_deref().is_none_or(str::is_empty) {
            causes.push(Cause::required(&format!("{at}.name"), ""));
        }
    }
}

// === MeshTLSAuthentication ===

fn mesh_tls_authentication(raw: &Value, spec: &MeshTlsAuthenticationSpec, causes: &mut Vec<Cause>) {
    match (raw.get("identities").is_some(), raw.get("identityRefs").is_some()) {
        (true, true) => causes.push(Cause::invalid("spec", "object", ONE_OF_MANY)),
        (false, false) => causes.push(Cause::invalid("spec", "object", ONE_OF_NONE)),
        _ => {}
    }
    let ids = spec.identities.as_deref().unwrap_or_default();
    if spec.identities.is_some() && ids.is_empty() {
        causes.push(Cause::invalid("spec.identities", json!([]), "spec.identities in body should have at least 1 items"));
    }
    for (i, id) in ids.iter().enumerate() {
        if !identity_is_valid(id) {
            // Linkerd's admission message: "id {id} is invalid: ...".
            causes.push(Cause::invalid(&format!("spec.identities[{i}]"), id.as_str(), &format!("id {id} is invalid: must be '*', '*.' followed by a DNS name, or a DNS name")));
        }
    }
    let refs = spec.identity_refs.as_deref().unwrap_or_default();
    if spec.identity_refs.is_some() && refs.is_empty() {
        causes.push(Cause::invalid("spec.identityRefs", json!([]), "spec.identityRefs in body should have at least 1 items"));
    }
    for (i, r) in refs.iter().enumerate() {
        identity_ref(&format!("spec.identityRefs[{i}]"), r, causes);
    }
}

fn identity_ref(at: &str, r: &NamespacedTargetRef, causes: &mut Vec<Cause>) {
    if r.kind.is_empty() {
        causes.push(Cause::required(&format!("{at}.kind"), ""));
    } else if targets(r.group.as_deref(), &r.kind, "", "Namespace") {
        if r.namespace.is_some() {
            causes.push(Cause::forbidden(&format!("{at}.namespace"), "Namespace identity_ref is cluster-scoped and cannot have a namespace"));
        }
    } else if !targets(r.group.as_deref(), &r.kind, "", "ServiceAccount") {
        let kind = canonical_kind(r.group.as_deref(), &r.kind);
        causes.push(Cause::invalid(&format!("{at}.kind"), r.kind.as_str(), &format!("invalid identity target kind: {kind}")));
    }
}

// === NetworkAuthentication ===

fn network_authentication(raw: &Value, spec: &NetworkAuthenticationSpec, causes: &mut Vec<Cause>) {
    if raw.get("networks").is_none() {
        causes.push(Cause::required("spec.networks", ""));
    } else if spec.networks.is_empty() {
        causes.push(Cause::required("spec.networks", "at least one network must be specified"));
    }
    networks("spec.networks", &spec.networks, causes);
}

// === HTTPRoute ===

fn http_route(spec: &HttpRouteSpec, causes: &mut Vec<Cause>) {
    for (i, parent) in spec.parent_refs.iter().flatten().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if parent.name.is_empty() {
            causes.push(Cause::required(&format!("{at}.name"), ""));
        }
        if let Some(port) = parent.port.filter(|p| !(1..=65535).contains(p)) {
            causes.push(Cause::invalid(&format!("{at}.port"), port, "must be between 1 and 65535, inclusive"));
        }
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            if let Some(path) = &m.path {
                let ty = path.type_.as_deref().unwrap_or("PathPrefix");
                let value = path.value.as_deref().unwrap_or("/");
                match ty {
                    "Exact" | "PathPrefix" if !value.starts_with('/') => {
                        causes.push(Cause::invalid(&format!("{at}.path.value"), value, "must be an absolute path"));
                    }
                    "Exact" | "PathPrefix" | "RegularExpression" => {}
                    other => causes.push(Cause::not_supported(&format!("{at}.path.type"), other, &["Exact", "PathPrefix", "RegularExpression"])),
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                let hat = format!("{at}.headers[{k}]");
                if h.name.is_empty() || !h.name.bytes().all(is_tchar) {
                    causes.push(Cause::invalid(&format!("{hat}.name"), h.name.as_str(), "must be a valid HTTP header name"));
                }
                if let Some(t) = h.type_.as_deref().filter(|t| !["Exact", "RegularExpression"].contains(t)) {
                    causes.push(Cause::not_supported(&format!("{hat}.type"), t, &["Exact", "RegularExpression"]));
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                let qat = format!("{at}.queryParams[{k}]");
                if q.name.is_empty() {
                    causes.push(Cause::required(&format!("{qat}.name"), ""));
                }
                if let Some(t) = q.type_.as_deref().filter(|t| !["Exact", "RegularExpression"].contains(t)) {
                    causes.push(Cause::not_supported(&format!("{qat}.type"), t, &["Exact", "RegularExpression"]));
                }
            }
            if let Some(method) = m.method.as_deref().filter(|m| !HTTP_METHODS.contains(m)) {
                causes.push(Cause::not_supported(&format!("{at}.method"), method, HTTP_METHODS));
            }
        }
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].filters[{j}]");
            let types = ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect"];
            let present = match f.type_.as_str() {
                "RequestHeaderModifier" => f.request_header_modifier.is_some(),
                "ResponseHeaderModifier" => f.response_header_modifier.is_some(),
                "RequestRedirect" => f.request_redirect.is_some(),
                other => {
                    causes.push(Cause::not_supported(&format!("{at}.type"), other, &types));
                    true
                }
            };
            if !present {
                let field = format!("{}{}", f.type_[..1].to_ascii_lowercase(), &f.type_[1..]);
                causes.push(Cause::required(&format!("{at}.{field}"), &format!("must be set when type is {}", f.type_)));
            }
        }
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
