use serde_json::{Value, json};

use super::*;
use crate::resource::{CORE_CONFIGMAPS, RBAC_ROLES};

fn writer(manager: &str) -> Writer<'_> {
    Writer { manager, part: Part::Object, now: "2026-01-01T00:00:00Z" }
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data})
}

#[test]
fn apply_creates_and_owns_the_config_fields() {
    let live = json!({"metadata": {"name": "c", "namespace": "default"}});
    let out = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"key": "1"})), false).unwrap();
    assert_eq!(out["data"], json!({"key": "1"}));
    assert_eq!(
        out["metadata"]["managedFields"],
        json!([{"manager": "a", "operation": "Apply", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:key": {}}}}])
    );
}

#[test]
fn a_second_applier_conflicts_then_forces_ownership_away() {
    let live = json!({"metadata": {"name": "c", "namespace": "default"}});
    let live = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"key": "1"})), false).unwrap();
    let err = apply(&CORE_CONFIGMAPS, &writer("b"), &live, &cm(json!({"key": "2"})), false).unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(err.message, r#"Apply failed with 1 conflict: conflict with "a": .data.key"#);
    let causes = &err.details.as_ref().unwrap().causes;
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].message, r#"conflict with "a""#);
    assert_eq!(causes[0].field, ".data.key");
    // The same value is shared ownership, not a conflict.
    let shared = apply(&CORE_CONFIGMAPS, &writer("b"), &live, &cm(json!({"key": "1"})), false).unwrap();
    assert_eq!(shared["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    let forced = apply(&CORE_CONFIGMAPS, &writer("b"), &live, &cm(json!({"key": "2"})), true).unwrap();
    assert_eq!(forced["data"]["key"], "2");
    let managers: Vec<&str> = forced["metadata"]["managedFields"].as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(managers, ["b"]);
}

#[test]
fn update_managers_conflict_with_their_api_version_and_several_conflicts_are_listed() {
    let mut created = cm(json!({"x": "1", "y": "2"}));
    record_update(&CORE_CONFIGMAPS, &writer("kubectl-create"), None, None, &mut created).unwrap();
    // kube: the new `data` map itself is the creator's too (".").
    assert_eq!(created["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:data": {".": {}, "f:x": {}, "f:y": {}}}));
    let err = apply(&CORE_CONFIGMAPS, &writer("a"), &created, &cm(json!({"x": "9", "y": "9"})), false).unwrap_err();
    assert_eq!(err.message, "Apply failed with 2 conflicts: conflicts with \"kubectl-create\" using v1:\n- .data.x\n- .data.y");
}

#[test]
fn fields_dropped_from_the_config_are_removed_unless_someone_else_owns_them() {
    let live = json!({"metadata": {"name": "c", "namespace": "default"}});
    let live = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"k1": "1", "k2": "2"})), false).unwrap();
    let out = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"k1": "1"})), false).unwrap();
    assert_eq!(out["data"], json!({"k1": "1"}));
    let out = apply(&CORE_CONFIGMAPS, &writer("a"), &out, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}), false).unwrap();
    assert_eq!(out.get("data"), None, "{out}");
    // Shared with b: stays when a drops it.
    let live = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"k1": "1", "k2": "2"})), false).unwrap();
    let live = apply(&CORE_CONFIGMAPS, &writer("b"), &live, &cm(json!({"k2": "2"})), false).unwrap();
    let out = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"k1": "1"})), false).unwrap();
    assert_eq!(out["data"], json!({"k1": "1", "k2": "2"}));
}

#[test]
fn rbac_rules_are_atomic() {
    let role = |rules: Value| json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rules": rules});
    let live = json!({"metadata": {"name": "r", "namespace": "default"}});
    let live = apply(&RBAC_ROLES, &writer("a"), &live, &role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])), false).unwrap();
    assert_eq!(live["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:rules": {}}));
    let err = apply(&RBAC_ROLES, &writer("b"), &live, &role(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])), false).unwrap_err();
    assert_eq!(err.message, r#"Apply failed with 1 conflict: conflict with "a": .rules"#);
}

#[test]
fn a_no_op_apply_keeps_the_object_and_its_time() {
    let live = json!({"metadata": {"name": "c", "namespace": "default"}});
    let live = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"key": "1"})), false).unwrap();
    let later = Writer { now: "2027-01-01T00:00:00Z", ..writer("a") };
    assert_eq!(apply(&CORE_CONFIGMAPS, &later, &live, &cm(json!({"key": "1"})), false).unwrap(), live);
}

#[test]
fn updates_take_fields_from_appliers_and_reset_clears() {
    let live = json!({"metadata": {"name": "c", "namespace": "default"}});
    let live = apply(&CORE_CONFIGMAPS, &writer("a"), &live, &cm(json!({"key": "1", "other": "x"})), false).unwrap();
    let mut next = live.clone();
    next["data"]["key"] = json!("2");
    let client = next["metadata"]["managedFields"].clone();
    record_update(&CORE_CONFIGMAPS, &writer("kubectl-edit"), Some(&live), Some(&client), &mut next).unwrap();
    let entries = next["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(entries[0]["fieldsV1"], json!({"f:data": {"f:other": {}}}));
    assert_eq!(entries[1]["manager"], "kubectl-edit");
    assert_eq!(entries[1]["operation"], "Update");
    assert_eq!(entries[1]["fieldsV1"], json!({"f:data": {"f:key": {}}}));
    let mut cleared = next.clone();
    record_update(&CORE_CONFIGMAPS, &writer("kubectl-patch"), Some(&next), Some(&json!([{}])), &mut cleared).unwrap();
    assert_eq!(cleared["metadata"].get("managedFields"), None);
}

#[test]
fn user_agent_prefix_names_the_manager() {
    assert_eq!(manager_from_user_agent("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"), "kubectl");
    assert_eq!(manager_from_user_agent("curl/8.5.0"), "curl");
}

#[test]
fn long_keyed_lists_apply_and_prune_in_linear_time() {
    use crate::resource::CORE_SERVICEACCOUNTS;
    let sa = |n: usize, from: usize| {
        let secrets: Vec<Value> = (from..from + n).map(|i| json!({"name": format!("s{i}")})).collect();
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}, "secrets": secrets})
    };
    let live = json!({"metadata": {"name": "robot", "namespace": "default"}});
    let started = std::time::Instant::now();
    let live = apply(&CORE_SERVICEACCOUNTS, &writer("a"), &live, &sa(20_000, 0), false).unwrap();
    let out = apply(&CORE_SERVICEACCOUNTS, &writer("a"), &live, &sa(10, 50_000), false).unwrap();
    assert_eq!(out["secrets"].as_array().map(Vec::len), Some(10));
    let mut next = out.clone();
    next["secrets"] = sa(20_000, 0)["secrets"].clone();
    record_update(&CORE_SERVICEACCOUNTS, &writer("u"), Some(&out), None, &mut next).unwrap();
    // Minutes if quadratic; well under that in a debug build.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn hostile_configs_are_refused_without_panics() {
    use crate::resource::CORE_PODS;
    let live = json!({"metadata": {"name": "p", "namespace": "default"}});
    for config in [
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"image": "x"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "a"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "nope"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [1, 2]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": []}}),
    ] {
        let err = apply(&CORE_PODS, &writer("a"), &live, &config, false).unwrap_err();
        assert_eq!(err.code, 400, "{config}: {err:?}");
    }
    // Garbage managedFields in a stored object are ignored, not trusted.
    let mut bad = live.clone();
    bad["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"q:": 1}}]);
    assert!(apply(&CORE_PODS, &writer("a"), &bad, &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"a": "b"}}}), false).is_ok());
}

/// kube's encoding order: operation, then the second of `time`, then manager;
/// so two managers writing in the same second are ordered by name.
#[test]
fn entries_are_ordered_by_operation_then_second_then_manager() {
    let entry = |manager: &str, operation: &str, time: &str| {
        json!({"manager": manager, "operation": operation, "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:x": {}}}})
    };
    let managed = json!([
        entry("kubectl", "Apply", "2026-01-01T00:00:01Z"),
        entry("b", "Apply", "2026-01-01T00:00:02Z"),
        entry("z", "Apply", "2026-01-01T00:00:01Z"),
        entry("a-update", "Update", "2026-01-01T00:00:00Z"),
    ]);
    let order = |managed: &Value| -> Vec<String> {
        let entries = decode(Some(managed)).expect("decodes");
        encode(entries).as_array().expect("array").iter().map(|e| e["manager"].as_str().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(order(&managed), ["kubectl", "z", "b", "a-update"]);
    // The same second: by name.
    let same = json!([entry("kubectl", "Apply", "2026-01-01T00:00:01.9Z"), entry("b", "Apply", "2026-01-01T00:00:01Z")]);
    assert_eq!(order(&same), ["b", "kubectl"]);
}
