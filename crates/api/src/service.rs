//! Services as kube-apiserver 1.32 keeps them: defaulting (`type`,
//! `sessionAffinity`, port protocol and `targetPort`, IP families, traffic
//! policy), validation with kube's messages, and the `kubectl get svc` row.
//! Cluster IPs are allocated by [`crate::service_ips`].
//!
//! tessera has no node ports and no load balancers: `NodePort` and
//! `LoadBalancer` Services are refused (a Service of those types would promise
//! ports nothing opens), `ClusterIP` (with `None` for headless) and
//! `ExternalName` are served. One IP family (IPv4), as a single-stack cluster.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::status::{StatusCause, field};
use crate::validation;

/// `spec.clusterIP` of a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const TYPES: &[&str] = &["ClusterIP", "ExternalName"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];
const FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];

const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const VALID_IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

/// kube's SetDefaults_Service plus the IP-family defaults its REST layer
/// fills in (for a single-stack IPv4 cluster), and `clusterIPs` kept in step
/// with `clusterIP` as its strategy does for clients that set only one.
pub fn default_service(map: &mut Map<String, Value>) {
    let selector_set = map.get("spec").and_then(|s| s.get("selector")).and_then(Value::as_object).is_some_and(|s| !s.is_empty());
    let spec = object_at(map, "spec");
    // Go's `omitempty`: zero values (as protobuf bodies carry them) are not part of the object.
    for key in ["publishNotReadyAddresses", "healthCheckNodePort", "loadBalancerIP", "externalName", "externalTrafficPolicy"] {
        if matches!(spec.get(key), Some(Value::Bool(false) | Value::Null)) || spec.get(key).is_some_and(|v| v == &json!(0) || v == &json!("")) {
            spec.remove(key);
        }
    }
    spec.entry("type").or_insert_with(|| json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert_with(|| json!("None"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            if port.get("nodePort").is_some_and(|n| n == &json!(0)) {
                port.remove("nodePort");
            }
            if port.get("name").is_some_and(|n| n == &json!("")) {
                port.remove("name");
            }
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            let number = port.get("port").cloned().unwrap_or(json!(0));
            let unset = match port.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                Some(_) => false,
            };
            if unset {
                port.insert("targetPort".into(), number);
            }
        }
    }
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if ty == "ExternalName" {
        // kube drops what only a cluster IP has (a Service changed to ExternalName).
        if spec.get("clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
            for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"] {
                spec.remove(key);
            }
        }
        return;
    }
    let ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !ip.is_empty() && spec.get("clusterIPs").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        spec.insert("clusterIPs".into(), json!([ip]));
    }
    let headless = ip == CLUSTER_IP_NONE;
    spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
    // kube: a headless Service without selector may take every family the cluster has.
    let policy = if headless && !selector_set { "RequireDualStack" } else { "SingleStack" };
    spec.entry("ipFamilyPolicy").or_insert_with(|| json!(policy));
    spec.entry("internalTrafficPolicy").or_insert_with(|| json!("Cluster"));
    let status = object_at(map, "status");
    status.entry("loadBalancer").or_insert_with(|| json!({}));
}

/// What the registry keeps of an update: kube's `normalizeClusterIPs` for a
/// client that sent no `clusterIPs` (an old client, or a patch of other
/// fields) or changed only `clusterIP`.
pub fn normalize_update(new: &mut Value, old: &Value) {
    let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
    let old_ips = old.pointer("/spec/clusterIPs").cloned().unwrap_or(Value::Null);
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let new_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or_default().to_owned();
    let new_ips = spec.get("clusterIPs").cloned().unwrap_or(Value::Null);
    let no_ips = new_ips.as_array().is_none_or(Vec::is_empty);
    if old_ips.as_array().is_some_and(|a| !a.is_empty()) && no_ips && old_ip == new_ip {
        spec.insert("clusterIPs".into(), old_ips.clone());
    }
    if old_ip != new_ip && new_ips == old_ips {
        if new_ip.is_empty() {
            spec.remove("clusterIPs");
        } else {
            spec.insert("clusterIPs".into(), json!([new_ip]));
        }
    }
}

fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        // Made an object just above.
        _ => unreachable!("slot is an object"),
    }
}

/// kube's `NameIsDNS1035Label` (Service names become DNS labels).
pub fn name_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        errs.push(DNS1035_LABEL_MSG.to_owned());
    }
    errs
}

/// kube's `IsValidPortName` (an IANA service name).
pub fn port_name_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters".to_owned());
    }
    if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned());
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens".to_owned());
    }
    if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_owned());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_owned());
    }
    errs
}

/// Go's `%#v` of a `[]string`.
fn go_strings(list: &[String]) -> String {
    let items = list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    format!("[]string{{{items}}}")
}

fn raw_invalid(path: &str, shown: &str, detail: &str) -> StatusCause {
    StatusCause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {shown}: {detail}"), field: path.into() }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_owned()).collect()).unwrap_or_default()
}

/// kube's ValidateService (and ValidateServiceUpdate with `old`), for the
/// fields tessera serves. Field paths and messages are kube's.
pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<StatusCause>) {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if !name.is_empty() {
        validation::push_invalid(causes, "metadata.name", name, name_errors(name));
    }
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or_default();
    let cluster_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or_default();
    let cluster_ips = strings(spec.get("clusterIPs"));
    let headless = cluster_ips.len() == 1 && cluster_ips[0] == CLUSTER_IP_NONE || cluster_ip == CLUSTER_IP_NONE;
    let ports = spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(field::required("spec.ports", ""));
    }
    if ty == "ExternalName" {
        if !cluster_ip.is_empty() {
            causes.push(field::forbidden("spec.clusterIP", "may not be set for ExternalName services"));
        }
        match spec.get("externalName").and_then(Value::as_str).unwrap_or_default() {
            "" => causes.push(field::required("spec.externalName", "")),
            external => validation::push_invalid(causes, "spec.externalName", external, validation::dns1123_subdomain(external.trim_end_matches('.'))),
        }
    }
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let pname = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && pname.is_empty() {
            causes.push(field::required(&format!("{path}.name"), ""));
        } else if !pname.is_empty() {
            validation::push_invalid(causes, &format!("{path}.name"), pname, validation::dns1123_label(pname));
            if !names.insert(pname.to_owned()) {
                causes.push(duplicate(&format!("{path}.name"), &format!("{pname:?}")));
            }
        }
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(field::invalid(&format!("{path}.port"), &json!(number), PORT_RANGE_MSG));
        }
        let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or_default();
        if protocol.is_empty() {
            causes.push(field::required(&format!("{path}.protocol"), ""));
        } else if !PROTOCOLS.contains(&protocol) {
            causes.push(field::not_supported(&format!("{path}.protocol"), &json!(protocol), PROTOCOLS));
        }
        match port.get("targetPort") {
            Some(Value::Number(n)) => {
                let target = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&target) {
                    causes.push(field::invalid(&format!("{path}.targetPort"), &json!(target), PORT_RANGE_MSG));
                }
            }
            Some(Value::String(s)) => validation::push_invalid(causes, &format!("{path}.targetPort"), s, port_name_errors(s)),
            _ => {}
        }
        if port.get("nodePort").and_then(Value::as_i64).is_some_and(|n| n != 0) && ty == "ClusterIP" {
            causes.push(field::forbidden(&format!("{path}.nodePort"), "may not be used when `type` is 'ClusterIP'"));
        }
        if !keys.insert((protocol.to_owned(), number)) {
            let shown = format!(
                "core.ServicePort{{Name:\"\", Protocol:{protocol:?}, AppProtocol:(*string)(nil), Port:{number}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}"
            );
            causes.push(duplicate(&path, &shown));
        }
    }
    if let Some(selector) = spec.get("selector").and_then(Value::as_object) {
        for (k, v) in selector {
            validation::push_invalid(causes, "spec.selector", k, validation::qualified_name(k));
            let v = v.as_str().unwrap_or_default();
            validation::push_invalid(causes, "spec.selector", v, validation::label_value(v));
        }
    }
    match spec.get("sessionAffinity").and_then(Value::as_str).unwrap_or_default() {
        "" => causes.push(field::required("spec.sessionAffinity", "")),
        a if !AFFINITIES.contains(&a) => causes.push(field::not_supported("spec.sessionAffinity", &json!(a), AFFINITIES)),
        _ => {}
    }
    match ty {
        "" => causes.push(field::required("spec.type", "")),
        t if !TYPES.contains(&t) => causes.push(field::not_supported("spec.type", &json!(t), TYPES)),
        _ => {}
    }
    if let Some(policy) = spec.get("internalTrafficPolicy").and_then(Value::as_str)
        && !TRAFFIC_POLICIES.contains(&policy)
    {
        causes.push(field::not_supported("spec.internalTrafficPolicy", &json!(policy), TRAFFIC_POLICIES));
    }
    if ty != "ExternalName" {
        validate_cluster_ips(&spec, cluster_ip, &cluster_ips, causes);
    }
    if let Some(old) = old {
        validate_update(obj, old, causes);
    }
}

fn duplicate(path: &str, shown: &str) -> StatusCause {
    StatusCause { reason: "FieldValueDuplicate".into(), message: format!("Duplicate value: {shown}"), field: path.into() }
}

/// kube's `ValidateServiceClusterIPsRelatedFields`, single-stack IPv4.
fn validate_cluster_ips(spec: &Value, cluster_ip: &str, cluster_ips: &[String], causes: &mut Vec<StatusCause>) {
    if !cluster_ip.is_empty() {
        if cluster_ips.is_empty() {
            causes.push(field::required("spec.clusterIPs", ""));
        } else if cluster_ips[0] != cluster_ip {
            causes.push(raw_invalid("spec.clusterIPs", &go_strings(cluster_ips), "first value must match `clusterIP`"));
        }
    } else if !cluster_ips.is_empty() {
        causes.push(raw_invalid("spec.clusterIPs", &go_strings(cluster_ips), "must be empty when `clusterIP` is not specified"));
    }
    for (i, family) in strings(spec.get("ipFamilies")).iter().enumerate() {
        if !["IPv4", "IPv6"].contains(&family.as_str()) {
            causes.push(field::not_supported(&format!("spec.ipFamilies[{i}]"), &json!(family), &["IPv4", "IPv6"]));
        } else if family != "IPv4" {
            causes.push(field::invalid(&format!("spec.ipFamilies[{i}]"), &json!(family), "not configured on this cluster"));
        }
    }
    if let Some(policy) = spec.get("ipFamilyPolicy").and_then(Value::as_str) {
        if !FAMILY_POLICIES.contains(&policy) {
            causes.push(field::not_supported("spec.ipFamilyPolicy", &json!(policy), FAMILY_POLICIES));
        } else if policy == "RequireDualStack" && cluster_ip != CLUSTER_IP_NONE {
            causes.push(field::invalid("spec.ipFamilyPolicy", &json!(policy), "this cluster is not configured for dual-stack services"));
        }
    }
    for (i, ip) in cluster_ips.iter().enumerate() {
        if i == 0 && ip == CLUSTER_IP_NONE {
            if cluster_ips.len() > 1 {
                causes.push(raw_invalid("spec.clusterIPs", &go_strings(cluster_ips), "'None' must be the first and only value"));
            }
            continue;
        }
        if ip.parse::<IpAddr>().is_err() {
            causes.push(field::invalid(&format!("spec.clusterIPs[{i}]"), &json!(ip), VALID_IP_MSG));
        } else if ip.parse::<std::net::Ipv4Addr>().is_err() {
            causes.push(field::invalid(&format!("spec.clusterIPs[{i}]"), &json!(ip), "expected an IPv4 value as indicated by `ipFamilies[0]`"));
        }
    }
    if cluster_ips.len() > 1 && !cluster_ips.iter().any(|ip| ip == CLUSTER_IP_NONE) {
        causes.push(raw_invalid("spec.clusterIPs", &go_strings(cluster_ips), "may specify no more than one IP for each IP family"));
    }
}

/// kube's `validateUpgradeDowngradeClusterIPs`: the cluster IP is immutable.
fn validate_update(obj: &Value, old: &Value, causes: &mut Vec<StatusCause>) {
    let ty = |v: &Value| v.pointer("/spec/type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if ty(obj) == "ExternalName" || ty(old) == "ExternalName" {
        return;
    }
    let (new_ips, old_ips) = (strings(obj.pointer("/spec/clusterIPs")), strings(old.pointer("/spec/clusterIPs")));
    let headless = |ips: &[String]| ips.len() == 1 && ips[0] == CLUSTER_IP_NONE;
    if headless(&new_ips) && headless(&old_ips) {
        return;
    }
    let shown = go_strings(&new_ips);
    if new_ips.is_empty() && !old_ips.is_empty() {
        causes.push(raw_invalid("spec.clusterIPs[0]", &shown, "primary clusterIP can not be unset"));
    } else if !old_ips.is_empty() && new_ips.first() != old_ips.first() {
        causes.push(raw_invalid("spec.clusterIPs[0]", &shown, "may not change once set"));
    }
}

/// `kubectl get svc` cells after NAME: TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S)
/// (then AGE and, wide, SELECTOR), as kube's `printService`.
pub fn row(obj: &Value) -> (Value, Value, Value, Value, Value) {
    let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or_default();
    let cluster_ip = obj.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("<none>");
    let mut external: Vec<String> = strings(obj.pointer("/spec/externalIPs"));
    if ty == "ExternalName" {
        external = vec![obj.pointer("/spec/externalName").and_then(Value::as_str).unwrap_or_default().to_owned()];
    }
    let external = if external.is_empty() { "<none>".to_owned() } else { external.join(",") };
    let ports: Vec<String> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n > 0) {
                Some(node) => format!("{port}:{node}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_owned() } else { ports.join(",") };
    let selector = obj.pointer("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty()).map_or_else(
        || "<none>".to_owned(),
        |s| {
            let mut pairs: Vec<String> = s.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
            pairs.sort();
            pairs.join(",")
        },
    );
    (json!(ty), json!(cluster_ip), json!(external), json!(ports), json!(selector))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(mut svc: Value) -> Value {
        if let Some(map) = svc.as_object_mut() {
            default_service(map);
        }
        svc
    }

    fn messages(svc: &Value, old: Option<&Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate(svc, old, &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn defaults_as_kube_returns_them() {
        let svc = defaulted(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 81, "targetPort": "http"}]}}));
        assert_eq!(svc["spec"], json!({
            "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "selector": {"app": "web"}, "sessionAffinity": "None", "type": "ClusterIP",
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}, {"port": 81, "protocol": "TCP", "targetPort": "http"}],
        }));
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));
        let headless = defaulted(json!({"spec": {"clusterIP": "None"}}));
        assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
        let external = defaulted(json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}));
        assert!(external["spec"].get("ipFamilies").is_none());
    }

    #[test]
    fn port_rules_as_kube() {
        let svc = defaulted(json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"port": 0}, {"name": "a", "port": 80, "protocol": "FOO", "targetPort": "Bad_Name"}, {"name": "a", "port": 80, "targetPort": 70000}]}}));
        assert_eq!(messages(&svc, None), [
            "spec.ports[0].name: Required value",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[1].protocol: Unsupported value: \"FOO\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.ports[1].targetPort: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            "spec.ports[2].name: Duplicate value: \"a\"",
            "spec.ports[2].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ]);
        let dup = defaulted(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}}));
        assert_eq!(messages(&dup, None), ["spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}"]);
        let none = defaulted(json!({"metadata": {"name": "web"}, "spec": {}}));
        assert_eq!(messages(&none, None), ["spec.ports: Required value"]);
        let bad_name = defaulted(json!({"metadata": {"name": "1web"}, "spec": {"clusterIP": "None"}}));
        assert_eq!(messages(&bad_name, None), [format!("metadata.name: Invalid value: \"1web\": {DNS1035_LABEL_MSG}")]);
    }

    #[test]
    fn cluster_ip_is_immutable() {
        let old = defaulted(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}));
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.96.0.10");
        normalize_update(&mut new, &old);
        assert_eq!(messages(&new, Some(&old)), ["spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.10\"}: may not change once set"]);
        let mut patched = old.clone();
        patched["spec"].as_object_mut().unwrap().remove("clusterIPs");
        normalize_update(&mut patched, &old);
        assert!(messages(&patched, Some(&old)).is_empty());
        let mut bad = old.clone();
        bad["spec"]["clusterIP"] = json!("nope");
        bad["spec"]["clusterIPs"] = json!(["nope"]);
        assert_eq!(messages(&bad, None), [format!("spec.clusterIPs[0]: Invalid value: \"nope\": {VALID_IP_MSG}")]);
    }

    #[test]
    fn rows_like_kubectl() {
        let svc = defaulted(json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 8081}, {"port": 53, "protocol": "UDP"}]}}));
        assert_eq!(row(&svc), (json!("ClusterIP"), json!("10.96.0.9"), json!("<none>"), json!("8081/TCP,53/UDP"), json!("<none>")));
    }
}
