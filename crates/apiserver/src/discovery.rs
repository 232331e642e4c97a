//! API discovery, classic (`/api`, `/apis`, `/api/v1`, `/apis/G/V`) and
//! aggregated (`apidiscovery.k8s.io/v2`, which kubectl 1.32 asks for first).

use serde_json::{Value, json};
use tessera_api::resource::{RESOURCES, ResourceInfo, group_versions, versions_of};

/// The media type of aggregated discovery documents.
pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.contains("g=apidiscovery.k8s.io") && first.contains("v=v2") && !first.contains("v=v2beta1")
    }) || accept.split(',').any(|t| t.contains("g=apidiscovery.k8s.io") && t.contains("v=v2;"))
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-tessera.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// A group's entry: every version served, the first (kube's highest
/// version priority) preferred.
fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> =
        versions_of(group).into_iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// The named groups served, in discovery order.
fn named_groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// `/apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = named_groups().into_iter().map(group_entry).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}` (None when the group is not served).
pub fn group(group: &str) -> Option<Value> {
    let g = named_groups().into_iter().find(|g| *g == group)?;
    let mut entry = group_entry(g);
    if let Some(map) = entry.as_object_mut() {
        map.insert("kind".into(), json!("APIGroup"));
        map.insert("apiVersion".into(), json!("v1"));
    }
    Some(entry)
}

fn resources_of(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    RESOURCES.iter().copied().filter(move |r| r.group == group && r.version == version)
}

/// `/api/v1` or `/apis/{group}/{version}` (None when not served).
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resources_of(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if let Some(map) = entry.as_object_mut() {
            if !r.short_names.is_empty() {
                map.insert("shortNames".into(), json!(r.short_names));
            }
            if !r.categories.is_empty() {
                map.insert("categories".into(), json!(r.categories));
            }
            if !r.storage_version_hash.is_empty() {
                map.insert("storageVersionHash".into(), json!(r.storage_version_hash));
            }
        }
        resources.push(entry);
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, sub.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": sub.kind,
                "verbs": sub.verbs,
            });
            if let Some(map) = entry.as_object_mut()
                && !sub.group.is_empty()
            {
                map.insert("group".into(), json!(sub.group));
                map.insert("version".into(), json!(sub.version));
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn aggregated_version(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = resources_of(group, version)
        .map(|r| {
            let mut entry = json!({
                "resource": r.plural,
                "responseKind": {"group": "", "version": "", "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if let Some(map) = entry.as_object_mut() {
                if !r.short_names.is_empty() {
                    map.insert("shortNames".into(), json!(r.short_names));
                }
                if !r.categories.is_empty() {
                    map.insert("categories".into(), json!(r.categories));
                }
                if !r.subresources.is_empty() {
                    let subs: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|s| {
                            json!({
                                "subresource": s.name,
                                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                                "verbs": s.verbs,
                            })
                        })
                        .collect();
                    map.insert("subresources".into(), json!(subs));
                }
            }
            entry
        })
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

fn aggregated_group(group: &str) -> Value {
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    let versions: Vec<Value> = versions_of(group).into_iter().map(|v| aggregated_version(group, v)).collect();
    json!({"metadata": metadata, "versions": versions})
}

/// Aggregated discovery for `/api` (core) or `/apis` (named groups).
pub fn aggregated(core: bool) -> Value {
    let groups = if core { vec![""] } else { named_groups() };
    let items: Vec<Value> = groups.into_iter().map(aggregated_group).collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list_matches_reference_shape() {
        let list = resource_list("", "v1").expect("core served");
        let sa = list["resources"].as_array().expect("array").iter().find(|r| r["name"] == "serviceaccounts").expect("sa");
        assert_eq!(sa, &json!({
            "name": "serviceaccounts", "singularName": "serviceaccount", "namespaced": true, "kind": "ServiceAccount",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": ["sa"], "storageVersionHash": "pbx9ZvyFpBE="
        }));
        let token = list["resources"].as_array().expect("array").iter().find(|r| r["name"] == "serviceaccounts/token").expect("token");
        assert_eq!(token["group"], "authentication.k8s.io");
        assert_eq!(token["kind"], "TokenRequest");
    }

    #[test]
    fn aggregated_core_has_scopes() {
        let doc = aggregated(true);
        let resources = doc["items"][0]["versions"][0]["resources"].as_array().expect("resources");
        let ns = resources.iter().find(|r| r["resource"] == "namespaces").expect("namespaces");
        assert_eq!(ns["scope"], "Cluster");
        assert_eq!(doc["items"][0]["versions"][0]["freshness"], "Current");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(!wants_aggregated("application/json"));
    }
}
