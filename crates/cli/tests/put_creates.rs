//! PUT to a missing object, as kube-apiserver 1.32 answers it: kinds whose
//! strategy has `AllowCreateOnUpdate() == true` (Leases, core Events, the RBAC
//! kinds) are created (201); the others (e.g. ConfigMaps) answer 404. And a
//! Lease's `MicroTime` without six fractional digits is refused, as kube's
//! `MicroTime.UnmarshalJSON` (Go's `time.Parse(RFC3339Micro, …)`) does.

mod support;

use support::{Server, json};

fn put(server: &Server, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, out) = server.curl_admin("PUT", path, &["-H", "Content-Type: application/json", "--data-binary", body]);
    (code, json(&out))
}

#[test]
fn put_creates_a_missing_lease_but_not_a_missing_configmap() {
    let server = Server::start();
    let lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/leader";
    let body = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"leader"},"spec":{"holderIdentity":"a","leaseDurationSeconds":15}}"#;
    let (code, created) = put(&server, lease, body);
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["holderIdentity"], "a");
    assert_eq!(created["metadata"]["namespace"], "default");
    // Once it exists, a PUT without a resourceVersion is refused (Leases
    // do not allow unconditional updates) and one with it updates: 200.
    let (code, _) = put(&server, lease, &body.replace(r#""a""#, r#""b""#));
    assert_eq!(code, 422);
    let rv = created["metadata"]["resourceVersion"].as_str().expect("resourceVersion");
    let next = body.replace(r#""a""#, r#""b""#).replace(r#""name":"leader""#, &format!(r#""name":"leader","resourceVersion":"{rv}""#));
    let (code, updated) = put(&server, lease, &next);
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["spec"]["holderIdentity"], "b");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    let role = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/reader";
    let (code, out) = put(&server, role, r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"reader"},"rules":[]}"#);
    assert_eq!(code, 201, "{out}");

    let cm = "/api/v1/namespaces/default/configmaps/missing";
    let (code, status) = put(&server, cm, r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"missing"},"data":{"a":"1"}}"#);
    assert_eq!(code, 404, "{status}");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["message"], r#"configmaps "missing" not found"#);
    assert_eq!(server.curl_admin("GET", cm, &[]).0, 404);

    // Creating by PUT also needs `create` (kube's withAuthorization): a
    // ServiceAccount that may only get and update Leases is refused.
    server.kubectl_ok(&["create", "sa", "renewer"]);
    server.kubectl_ok(&["create", "role", "renew", "--verb=get,update", "--resource=leases.coordination.k8s.io"]);
    server.kubectl_ok(&["create", "rolebinding", "renew", "--role=renew", "--serviceaccount=default:renewer"]);
    let token = server.kubectl_ok(&["create", "token", "renewer"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let other = "/apis/coordination.k8s.io/v1/namespaces/default/leases/other";
    let (code, out) = server.curl("PUT", other, &["-H", &bearer, "-H", "Content-Type: application/json", "--data-binary", &body.replace("leader", "other")]);
    let status = json(&out);
    assert_eq!((code, status["reason"].as_str()), (403, Some("Forbidden")), "{out}");
    assert_eq!(status["message"], r#"leases.coordination.k8s.io "other" is forbidden: "#);
    assert_eq!(server.curl_admin("GET", other, &[]).0, 404);
    // Updating the existing one is allowed.
    let current = json(&server.curl_admin("GET", lease, &[]).1);
    let (code, out) = server.curl("PUT", lease, &["-H", &bearer, "-H", "Content-Type: application/json", "--data-binary", &current.to_string()]);
    assert_eq!(code, 200, "{out}");
}

#[test]
fn a_micro_time_without_microseconds_is_refused_as_kube_does() {
    let server = Server::start();
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let body = |renew: &str| {
        format!(r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"l"}},"spec":{{"holderIdentity":"a","renewTime":"{renew}"}}}}"#)
    };
    let (code, out) = server.curl_admin("POST", leases, &["-H", "Content-Type: application/json", "--data-binary", &body("2026-12-05T23:00:02Z")]);
    let status = json(&out);
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")), "{out}");
    assert_eq!(
        status["message"],
        r#"Lease in version "v1" cannot be handled as a Lease: parsing time "2026-12-05T23:00:02Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000""#
    );
    let (code, out) = server.curl_admin("POST", leases, &["-H", "Content-Type: application/json", "--data-binary", &body("2026-12-05T23:00:02.000001Z")]);
    assert_eq!(code, 201, "{out}");
    assert_eq!(json(&out)["spec"]["renewTime"], "2026-12-05T23:00:02.000001Z");
}
