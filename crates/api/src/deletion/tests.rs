use serde_json::json;

use super::*;
use crate::resource::{CORE_CONFIGMAPS, CORE_NAMESPACES, CORE_SECRETS, CORE_SERVICEACCOUNTS, RBAC_ROLES};

const NOW: &str = "2026-12-05T23:00:00Z";

fn cm(finalizers: &[&str]) -> Value {
    let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}});
    if !finalizers.is_empty() {
        obj["metadata"]["finalizers"] = json!(finalizers);
    }
    obj
}

#[test]
fn invalid_propagation_policy_is_kubes_422() {
    let err = DeleteOptions::from_body(&json!({"propagationPolicy": "Bogus"})).unwrap_err();
    let status = err.to_status();
    assert_eq!(status["code"], 422);
    assert_eq!(
        status["message"],
        "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Bogus\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
    );
    assert_eq!(status["details"], json!({"group": "meta.k8s.io", "kind": "DeleteOptions", "causes": [{
        "reason": "FieldValueNotSupported",
        "message": "Unsupported value: \"Bogus\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"",
        "field": "propagationPolicy"}]}));
    let both = DeleteOptions::from_query(Some("Orphan"), Some("true"), false).unwrap_err();
    assert_eq!(both.message, "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Invalid value: \"Orphan\": orphanDependents and deletionPropagation cannot be both set");
    assert_eq!(DeleteOptions::from_query(None, Some("nope"), false).unwrap_err().code, 400);
    assert_eq!(DeleteOptions::from_body(&json!({"propagationPolicy": 3})).unwrap_err().code, 400);
}

#[test]
fn options_decode_from_body_and_query() {
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground", "preconditions": {"uid": "u1"}, "dryRun": ["All"]});
    let opts = DeleteOptions::from_body(&body).unwrap();
    assert_eq!(opts.propagation, Some(Propagation::Foreground));
    assert_eq!(opts.preconditions.uid.as_deref(), Some("u1"));
    assert!(opts.dry_run);
    let q = DeleteOptions::from_query(None, Some("false"), false).unwrap();
    assert_eq!(q.orphan_dependents, Some(false));
    assert!(q.accepted_when_pending());
}

#[test]
fn background_without_finalizers_deletes_now() {
    assert_eq!(plan(&cm(&[]), &DeleteOptions::default(), NOW), Plan::DeleteNow);
    assert_eq!(plan(&cm(&[]), &DeleteOptions::propagate(Propagation::Background), NOW), Plan::DeleteNow);
}

#[test]
fn foreground_and_orphan_add_their_finalizer_and_mark_deleting() {
    let Plan::Update(next) = plan(&cm(&[]), &DeleteOptions::propagate(Propagation::Foreground), NOW) else { panic!("no update") };
    assert_eq!(next["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert_eq!(next["metadata"]["deletionTimestamp"], NOW);
    assert_eq!(next["metadata"]["deletionGracePeriodSeconds"], 0);
    let Plan::Update(next) = plan(&cm(&["example.com/keep"]), &DeleteOptions::propagate(Propagation::Orphan), NOW) else { panic!() };
    assert_eq!(next["metadata"]["finalizers"], json!(["example.com/keep", "orphan"]));
    // Legacy orphanDependents=true is Orphan; false is Background.
    let legacy = DeleteOptions { orphan_dependents: Some(true), ..DeleteOptions::default() };
    assert!(matches!(plan(&cm(&[]), &legacy, NOW), Plan::Update(n) if n["metadata"]["finalizers"] == json!(["orphan"])));
    let legacy = DeleteOptions { orphan_dependents: Some(false), ..DeleteOptions::default() };
    assert_eq!(plan(&cm(&[]), &legacy, NOW), Plan::DeleteNow);
}

#[test]
fn finalizers_hold_the_object_and_a_second_delete_changes_nothing() {
    let Plan::Update(first) = plan(&cm(&["example.com/keep"]), &DeleteOptions::default(), NOW) else { panic!() };
    assert_eq!(first["metadata"]["finalizers"], json!(["example.com/keep"]));
    assert_eq!(plan(&first, &DeleteOptions::default(), "2030-01-01T00:00:00Z"), Plan::Keep);
    // Background on an object held only by foregroundDeletion drops it and deletes.
    let Plan::Update(fg) = plan(&cm(&[]), &DeleteOptions::propagate(Propagation::Foreground), NOW) else { panic!() };
    assert_eq!(plan(&fg, &DeleteOptions::propagate(Propagation::Background), NOW), Plan::DeleteNow);
}

#[test]
fn namespaces_terminate_first_then_follow_spec_finalizers() {
    let ns = json!({"metadata": {"name": "t", "uid": "n"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    let Plan::Update(term) = plan_namespace(&ns, &DeleteOptions::default(), NOW) else { panic!() };
    assert_eq!(term["status"]["phase"], "Terminating");
    assert_eq!(term["metadata"]["deletionTimestamp"], NOW);
    assert!(term["metadata"].get("finalizers").is_none());
    assert_eq!(plan_namespace(&term, &DeleteOptions::default(), NOW), Plan::Keep);
    let mut finalized = term.clone();
    finalized["spec"]["finalizers"] = json!([]);
    assert_eq!(plan_namespace(&finalized, &DeleteOptions::default(), NOW), Plan::DeleteNow);
    let Plan::Update(fg) = plan_namespace(&ns, &DeleteOptions::propagate(Propagation::Foreground), NOW) else { panic!() };
    assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
}

#[test]
fn update_removing_last_finalizer_deletes() {
    let Plan::Update(deleting) = plan(&cm(&["a.io/x"]), &DeleteOptions::default(), NOW) else { panic!() };
    assert!(should_delete_during_update(&CORE_CONFIGMAPS, &deleting, &cm(&[])));
    assert!(!should_delete_during_update(&CORE_CONFIGMAPS, &deleting, &deleting));
    assert!(!should_delete_during_update(&CORE_CONFIGMAPS, &cm(&["a.io/x"]), &cm(&[])));
    let ns = json!({"metadata": {"name": "t", "deletionTimestamp": NOW}, "spec": {"finalizers": ["kubernetes"]}});
    assert!(!should_delete_during_update(&CORE_NAMESPACES, &ns, &ns));
}

#[test]
fn delete_answers_per_kind() {
    let gone = Deletion::Deleted(cm(&[]));
    assert_eq!(
        gone.response_body(&CORE_CONFIGMAPS),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": "x", "kind": "configmaps", "uid": "u1"}})
    );
    assert_eq!(gone.response_body(&RBAC_ROLES)["details"]["group"], "rbac.authorization.k8s.io");
    assert_eq!(gone.response_body(&CORE_SERVICEACCOUNTS), cm(&[]));
    assert!(returns_deleted_object(&CORE_NAMESPACES) && !returns_deleted_object(&CORE_SECRETS));
    assert_eq!(Deletion::Pending(cm(&["a"])).response_body(&CORE_SECRETS), cm(&["a"]));
}

#[test]
fn preconditions_name_the_kind() {
    let pre = Preconditions { uid: Some("other".into()), resource_version: None };
    let err = check_preconditions(&CORE_SECRETS, "x", &cm(&[]), &pre).unwrap_err();
    assert_eq!(err.message, "Operation cannot be fulfilled on Secret \"x\": the UID in the precondition (other) does not match the UID in record (u1). The object might have been deleted and then recreated");
    assert_eq!(err.to_status()["details"], json!({"name": "x", "kind": "Secret"}));
    let pre = Preconditions { uid: None, resource_version: Some("3".into()) };
    let err = check_preconditions(&RBAC_ROLES, "x", &cm(&[]), &pre).unwrap_err();
    assert_eq!(err.message, "Operation cannot be fulfilled on Role.rbac.authorization.k8s.io \"x\": the ResourceVersion in the precondition (3) does not match the ResourceVersion in record (7). The object might have been modified");
}
