//! EndpointSlices (`discovery.k8s.io/v1`): kube's validation of
//! `addressType`, endpoints and ports, and the `kubectl get endpointslices` row.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

use crate::status::{StatusCause, field};
use crate::validation;

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 20000;
const MAX_ADDRESSES: usize = 100;

fn too_many(path: &str, have: usize, max: usize) -> StatusCause {
    StatusCause { reason: "FieldValueTooMany".into(), message: format!("Too many: {have}: must have at most {max} items"), field: path.into() }
}

/// kube's ValidateEndpointSlice (and ValidateEndpointSliceUpdate with `old`).
pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<StatusCause>) {
    let address_type = obj.get("addressType").and_then(Value::as_str).unwrap_or_default();
    match address_type {
        "" => causes.push(field::required("addressType", "")),
        t if !ADDRESS_TYPES.contains(&t) => causes.push(field::not_supported("addressType", &json!(t), ADDRESS_TYPES)),
        _ => {}
    }
    let endpoints = obj.get("endpoints").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if endpoints.len() > MAX_ENDPOINTS {
        causes.push(too_many("endpoints", endpoints.len(), MAX_ENDPOINTS));
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let addresses = endpoint.get("addresses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if addresses.is_empty() {
            causes.push(field::required(&format!("{path}.addresses"), "must contain at least 1 address"));
        } else if addresses.len() > MAX_ADDRESSES {
            causes.push(too_many(&format!("{path}.addresses"), addresses.len(), MAX_ADDRESSES));
        }
        for (j, address) in addresses.iter().enumerate() {
            let address = address.as_str().unwrap_or_default();
            let apath = format!("{path}.addresses[{j}]");
            match address_type {
                "IPv4" if address.parse::<Ipv4Addr>().is_err() => causes.push(field::invalid(&apath, &json!(address), "must be a valid IPv4 address")),
                "IPv6" if address.parse::<Ipv6Addr>().is_err() => causes.push(field::invalid(&apath, &json!(address), "must be a valid IPv6 address")),
                "FQDN" => validation::push_invalid(causes, &apath, address, validation::dns1123_subdomain(address)),
                _ => {}
            }
        }
        if let Some(node) = endpoint.get("nodeName").and_then(Value::as_str) {
            validation::push_invalid(causes, &format!("{path}.nodeName"), node, validation::dns1123_subdomain(node));
        }
        if let Some(hostname) = endpoint.get("hostname").and_then(Value::as_str) {
            validation::push_invalid(causes, &format!("{path}.hostname"), hostname, validation::dns1123_label(hostname));
        }
    }
    let ports = obj.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if ports.len() > MAX_PORTS {
        causes.push(too_many("ports", ports.len(), MAX_PORTS));
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if !name.is_empty() {
            validation::push_invalid(causes, &format!("{path}.name"), name, validation::dns1123_label(name));
        }
        if !names.insert(name.to_owned()) {
            causes.push(StatusCause { reason: "FieldValueDuplicate".into(), message: format!("Duplicate value: {name:?}"), field: format!("{path}.name") });
        }
        match port.get("protocol").and_then(Value::as_str) {
            None => causes.push(field::required(&format!("{path}.protocol"), "")),
            Some(p) if !PROTOCOLS.contains(&p) => causes.push(field::not_supported(&format!("{path}.protocol"), &json!(p), PROTOCOLS)),
            Some(_) => {}
        }
        if let Some(number) = port.get("port").and_then(Value::as_i64)
            && !(1..=65535).contains(&number)
        {
            causes.push(field::invalid(&format!("{path}.port"), &json!(number), "must be between 1 and 65535, inclusive"));
        }
    }
    if let Some(old_type) = old.and_then(|o| o.get("addressType")).and_then(Value::as_str)
        && old_type != address_type
    {
        causes.push(field::invalid("addressType", &json!(address_type), "field is immutable"));
    }
}

/// kube's EndpointSlice defaults: port protocol TCP, port name "".
pub fn default_slice(obj: &mut serde_json::Map<String, Value>) {
    if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            port.entry("name").or_insert_with(|| json!(""));
        }
    }
}

/// `kubectl get endpointslices` cells after NAME: ADDRESSTYPE, PORTS,
/// ENDPOINTS (then AGE), as kube's `printEndpointSlice`: at most three
/// endpoint addresses, then `+ N more...`; `<unset>` when there are none.
pub fn row(obj: &Value) -> (Value, Value, Value) {
    let address_type = obj.get("addressType").cloned().unwrap_or(json!(""));
    let ports: Vec<String> = obj
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| p.get("port").and_then(Value::as_i64).map_or_else(|| "<unset>".to_owned(), |n| n.to_string()))
        .collect();
    let ports = if ports.is_empty() { "<unset>".to_owned() } else { ports.join(",") };
    let addresses: Vec<&str> = obj
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| e.get("addresses").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str))
        .collect();
    let endpoints = match addresses.len() {
        0 => "<unset>".to_owned(),
        n if n > 3 => format!("{} + {} more...", addresses[..3].join(","), n - 3),
        _ => addresses.join(","),
    };
    (address_type, json!(ports), json!(endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, old, &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn validates_as_kube() {
        let slice = json!({"addressType": "IPv4", "endpoints": [{"addresses": []}, {"addresses": ["1.2.3.x"]}],
            "ports": [{"name": "a", "protocol": "TCP", "port": 0}, {"name": "a", "protocol": "FOO"}]});
        assert_eq!(messages(&slice, None), [
            "endpoints[0].addresses: Required value: must contain at least 1 address",
            "endpoints[1].addresses[0]: Invalid value: \"1.2.3.x\": must be a valid IPv4 address",
            "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "ports[1].name: Duplicate value: \"a\"",
            "ports[1].protocol: Unsupported value: \"FOO\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ]);
        assert_eq!(messages(&json!({}), None), ["addressType: Required value"]);
        let old = json!({"addressType": "IPv6"});
        assert_eq!(messages(&json!({"addressType": "IPv4"}), Some(&old)), ["addressType: Invalid value: \"IPv4\": field is immutable"]);
    }

    #[test]
    fn rows_like_kubectl() {
        let slice = json!({"addressType": "IPv4", "ports": [{"port": 8081}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        assert_eq!(row(&slice), (json!("IPv4"), json!("8081"), json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")));
        assert_eq!(row(&json!({"addressType": "IPv4", "endpoints": []})), (json!("IPv4"), json!("<unset>"), json!("<unset>")));
    }
}
